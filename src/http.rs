//! The worker's HTTP side: `/metrics` (Prometheus text), `/health` (liveness) and `/ready`
//! (readiness), served with axum; and the small HTTP/1 client that `ml-pipeline healthcheck`
//! and ECS task protection use (the image has no curl).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

use crate::enrich::{DocumentSource, ReferenceSource};
use crate::worker::Worker;

struct AppState<R, D> {
    worker: Arc<Worker<R, D>>,
    metrics: Option<PrometheusHandle>,
}

impl<R, D> Clone for AppState<R, D> {
    fn clone(&self) -> Self {
        Self {
            worker: Arc::clone(&self.worker),
            metrics: self.metrics.clone(),
        }
    }
}

/// The routes: `/metrics`, `/health`, `/ready`.
pub fn router<R, D>(worker: Arc<Worker<R, D>>, metrics: Option<PrometheusHandle>) -> Router
where
    R: ReferenceSource + 'static,
    D: DocumentSource + 'static,
{
    Router::new()
        .route("/metrics", get(metrics_text::<R, D>))
        .route("/health", get(health::<R, D>))
        .route("/ready", get(ready::<R, D>))
        .with_state(AppState { worker, metrics })
}

/// Serves `router` on `listener` until `stop` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    stop: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
}

async fn metrics_text<R, D>(State(state): State<AppState<R, D>>) -> Response {
    match &state.metrics {
        Some(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            "no metrics recorder in this process (library use)",
        )
            .into_response(),
    }
}

async fn health<R: ReferenceSource, D: DocumentSource>(
    State(state): State<AppState<R, D>>,
) -> Response {
    let live = state.worker.liveness();
    let status = if live.alive {
        StatusCode::OK
    } else {
        tracing::warn!(
            since_progress_s = live.since_progress_s,
            in_flight = live.in_flight,
            "liveness check failed: no receive or batch finished within the stall timeout"
        );
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(live)).into_response()
}

async fn ready<R: ReferenceSource, D: DocumentSource>(
    State(state): State<AppState<R, D>>,
) -> Response {
    let readiness = state.worker.readiness().await;
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        let failed: Vec<String> = readiness
            .checks
            .iter()
            .filter(|(_, c)| !c.ok)
            .map(|(name, c)| format!("{name}: {}", c.detail))
            .collect();
        tracing::warn!(failed = failed.join("; "), "readiness check failed");
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(readiness)).into_response()
}

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
