//! `healthcheck`: asks a running worker's `/health` (or `/ready`), as the image's HEALTHCHECK.

use std::time::Duration;

use anyhow::Context;

use crate::settings::Settings;

/// Asks the worker at `url` (default: this host, the port of `ML_PIPELINE_HTTP_ADDR`); returns
/// its answer when it is 200, an error naming what failed otherwise.
pub async fn check(
    settings: &Settings,
    ready: bool,
    url: Option<&str>,
    timeout_secs: u64,
) -> anyhow::Result<String> {
    let base = match url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => {
            let addr = settings.http_addr()?.context(
                "ML_PIPELINE_HTTP_ADDR is off: the worker serves no health endpoint to ask",
            )?;
            format!("http://127.0.0.1:{}", addr.port())
        }
    };
    let url = format!("{base}/{}", if ready { "ready" } else { "health" });
    let reply =
        crate::http::request("GET", &url, None, Duration::from_secs(timeout_secs.max(1))).await?;
    if reply.status != 200 {
        println!("{}", reply.body);
        anyhow::bail!(
            "{url} answered {}: the worker is not {}",
            reply.status,
            if ready { "ready" } else { "healthy" }
        );
    }
    Ok(reply.body)
}
