//! The worker's HTTP endpoints: `/metrics` (Prometheus text), `/health` (liveness) and
//! `/ready` (readiness), served with axum.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

use super::service::Worker;
use crate::enrich::{DocumentSource, ReferenceSource};
use crate::queue::Queue;

struct AppState<R, D, Q> {
    worker: Arc<Worker<R, D, Q>>,
    metrics: Option<PrometheusHandle>,
}

impl<R, D, Q> Clone for AppState<R, D, Q> {
    fn clone(&self) -> Self {
        Self {
            worker: Arc::clone(&self.worker),
            metrics: self.metrics.clone(),
        }
    }
}

/// The routes: `/metrics`, `/health`, `/ready`.
pub fn router<R, D, Q>(worker: Arc<Worker<R, D, Q>>, metrics: Option<PrometheusHandle>) -> Router
where
    R: ReferenceSource + 'static,
    D: DocumentSource + 'static,
    Q: Queue + 'static,
{
    Router::new()
        .route("/metrics", get(metrics_text::<R, D, Q>))
        .route("/health", get(health::<R, D, Q>))
        .route("/ready", get(ready::<R, D, Q>))
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

async fn metrics_text<R, D, Q>(State(state): State<AppState<R, D, Q>>) -> Response {
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

async fn health<R: ReferenceSource, D: DocumentSource, Q: Queue>(
    State(state): State<AppState<R, D, Q>>,
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

async fn ready<R: ReferenceSource, D: DocumentSource, Q: Queue>(
    State(state): State<AppState<R, D, Q>>,
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
