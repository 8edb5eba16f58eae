//! Liveness and readiness: what `/health` and `/ready` answer.
//!
//! Liveness is the worker's own loops making progress: each receive (empty or not) and each
//! finished batch is a beat, and `/health` fails after `stall_timeout` without one. Readiness
//! asks every dependency for real: PostgreSQL, MongoDB, the served model and both queues.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::time::Instant as LoopInstant;

use aws_sdk_sqs::types::QueueAttributeName;
use serde::Serialize;

use crate::enrich::{DocumentSource, ReferenceSource};
use crate::queue::SqsQueue;

use super::Worker;

/// How long one readiness check may take before it counts as failed.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// What the worker's loops share with the health endpoints and task protection.
#[derive(Debug)]
pub struct WorkerState {
    started: LoopInstant,
    last_beat_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Default for WorkerState {
    fn default() -> Self {
        Self {
            started: LoopInstant::now(),
            last_beat_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }
}

impl WorkerState {
    /// Records progress of a loop.
    pub fn beat(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        self.last_beat_ms.fetch_max(now, Ordering::Relaxed);
    }

    /// Time since the last beat (since start when there was none).
    pub fn since_beat(&self) -> Duration {
        let last = Duration::from_millis(self.last_beat_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }

    /// Messages received and not yet finished with (answered, dead-lettered or left).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts `n` messages as in hand until the returned guard is dropped.
    pub fn hold(self: &Arc<Self>, n: usize) -> InFlight {
        let now = self.in_flight.fetch_add(n, Ordering::Relaxed) + n;
        crate::instruments::in_flight(now);
        InFlight {
            state: Arc::clone(self),
            n,
        }
    }
}

/// Messages in hand; dropping it (their step returned, or its task panicked) releases them.
#[derive(Debug)]
pub struct InFlight {
    state: Arc<WorkerState>,
    n: usize,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let now = self.state.in_flight.fetch_sub(self.n, Ordering::Relaxed) - self.n;
        crate::instruments::in_flight(now);
    }
}

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

impl<R: ReferenceSource, D: DocumentSource> Worker<R, D> {
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

async fn queue_depth(queue: &SqsQueue) -> anyhow::Result<String> {
    let visible = queue
        .attribute(QueueAttributeName::ApproximateNumberOfMessages)
        .await?;
    Ok(format!(
        "{} reachable, about {} messages visible",
        queue.url(),
        visible.as_deref().unwrap_or("?")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_guards_release_on_drop() {
        let state = Arc::new(WorkerState::default());
        let a = state.hold(3);
        let b = state.hold(2);
        assert_eq!(state.in_flight(), 5);
        drop(a);
        assert_eq!(state.in_flight(), 2);
        drop(b);
        assert_eq!(state.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn progress_is_measured_from_the_last_beat() {
        let state = WorkerState::default();
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(state.since_beat(), Duration::from_secs(5));
        state.beat();
        assert_eq!(state.since_beat(), Duration::ZERO);
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(state.since_beat(), Duration::from_millis(1500));
    }
}
