//! Liveness and readiness: what `/health` and `/ready` answer.
//!
//! Liveness is the worker's own loops making progress: each receive (empty or not) and each
//! finished batch is a beat, and `/health` fails after `stall_timeout` without one. Readiness
//! asks every dependency for real: PostgreSQL, MongoDB, the served model and both queues.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::service::Worker;
use crate::enrich::{DocumentSource, ReferenceSource};
use crate::queue::Queue;

/// How long one readiness check may take before it counts as failed.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// What `/health` answers.
#[derive(Debug, Clone, Serialize)]
pub struct Liveness {
    /// Whether the loops made progress within the stall timeout.
    pub alive: bool,
    /// Seconds since the last receive or finished batch.
    pub since_progress_s: f64,
    /// Messages in hand.
    pub in_flight: usize,
}

/// One dependency's answer.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// Whether it answered correctly in time.
    pub ok: bool,
    /// What it answered, or what went wrong.
    pub detail: String,
    /// How long it took, in milliseconds.
    pub ms: f64,
}

/// What `/ready` answers.
#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    /// Whether every check passed.
    pub ready: bool,
    /// Per dependency.
    pub checks: BTreeMap<&'static str, Check>,
}

impl<R: ReferenceSource, D: DocumentSource, Q: Queue> Worker<R, D, Q> {
    /// Whether the worker's loops are making progress.
    pub fn liveness(&self) -> Liveness {
        let since = self.state.since_beat();
        Liveness {
            alive: since <= self.config.stall_timeout,
            since_progress_s: since.as_secs_f64(),
            in_flight: self.state.in_flight(),
        }
    }

    /// Asks every dependency, concurrently, each within [`CHECK_TIMEOUT`].
    pub async fn readiness(&self) -> Readiness {
        let model = self.models.current();
        let model_check = Check {
            ok: true,
            detail: format!(
                "{} version {} ({} reloads, {} failed reloads)",
                model.artifact.spec.name,
                model.version,
                self.models.reloads(),
                self.models.failures()
            ),
            ms: 0.0,
        };
        let (postgres, mongo, input, output) = tokio::join!(
            timed(async {
                self.enricher.reference.ping().await?;
                Ok::<_, crate::enrich::SourceError>("SELECT 1 answered".to_owned())
            }),
            timed(async {
                self.enricher.documents.ping().await?;
                Ok::<_, crate::enrich::SourceError>("ping answered".to_owned())
            }),
            timed(queue_depth(&self.input)),
            timed(queue_depth(&self.output)),
        );
        let checks = BTreeMap::from([
            ("postgres", postgres),
            ("mongo", mongo),
            ("model", model_check),
            ("input_queue", input),
            ("output_queue", output),
        ]);
        Readiness {
            ready: checks.values().all(|c| c.ok),
            checks,
        }
    }
}

async fn queue_depth<Q: Queue>(queue: &Q) -> Result<String, String> {
    let visible = queue
        .depth()
        .await
        .map_err(|e| crate::text::error_chain(&e))?;
    Ok(format!(
        "{} reachable, about {} messages visible",
        queue.url(),
        visible.map_or_else(|| "?".to_owned(), |n| n.to_string())
    ))
}

async fn timed<F, E>(check: F) -> Check
where
    F: std::future::Future<Output = Result<String, E>>,
    E: std::fmt::Display,
{
    let started = Instant::now();
    let outcome = tokio::time::timeout(CHECK_TIMEOUT, check).await;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    match outcome {
        Ok(Ok(detail)) => Check {
            ok: true,
            detail,
            ms,
        },
        Ok(Err(e)) => Check {
            ok: false,
            detail: e.to_string(),
            ms,
        },
        Err(_) => Check {
            ok: false,
            detail: format!("no answer within {} s", CHECK_TIMEOUT.as_secs()),
            ms,
        },
    }
}
