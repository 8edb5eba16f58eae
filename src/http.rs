//! The small HTTP/1 client that `ml-pipeline healthcheck` and ECS task protection use (the
//! image has no curl). The worker's own endpoints are in `worker::endpoints`.

use std::time::Duration;

use anyhow::Context;
use axum::http::header;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};

/// A response read by [`request`].
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The HTTP status code.
    pub status: u16,
    /// The body, as text.
    pub body: String,
}

/// One HTTP/1.1 request to a plain `http://` URL, with an optional JSON body, within `timeout`.
pub async fn request(
    method: &str,
    url: &str,
    json: Option<String>,
    timeout: Duration,
) -> anyhow::Result<Reply> {
    tokio::time::timeout(timeout, request_inner(method, url, json))
        .await
        .with_context(|| format!("{method} {url}: no answer within {timeout:?}"))?
        .with_context(|| format!("{method} {url}"))
}

async fn request_inner(method: &str, url: &str, json: Option<String>) -> anyhow::Result<Reply> {
    let uri: hyper::Uri = url.parse().context("not a URL")?;
    anyhow::ensure!(
        uri.scheme_str() == Some("http"),
        "only http:// URLs are supported"
    );
    let host = uri.host().context("the URL has no host")?.to_owned();
    let port = uri.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .context("connecting")?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    let driver = tokio::spawn(connection);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut builder = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, format!("{host}:{port}"));
    if json.is_some() {
        builder = builder.header(header::CONTENT_TYPE, "application/json");
    }
    let request = builder.body(Full::new(Bytes::from(json.unwrap_or_default())))?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    driver.abort();
    Ok(Reply {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}
