//! How the worker receives, batches, retries and stops; and the test hooks.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::pacing::PacingConfig;
use crate::bundle::{ContentEncoding, Limits};
use crate::queue::Retry;

/// How the worker receives, batches, retries and stops.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Messages per receive call (1..=10).
    pub receive_max: i32,
    /// Long-poll wait per receive call, in seconds (0..=20).
    pub wait_secs: i32,
    /// Concurrent pollers.
    pub pollers: usize,
    /// Most records in one batch.
    pub max_batch_records: usize,
    /// Most values (cells) in one batch's records; the batcher checks it before it decodes the
    /// next message, so wide bundles make smaller batches.
    pub max_batch_cells: usize,
    /// How long the batcher waits for more bundles after the first one when none is in hand.
    /// Zero (the default) waits only while every batch slot is busy: batches grow with the
    /// load, and a lone bundle is not held back.
    pub max_batch_wait: Duration,
    /// Adaptive batching: while bundles arrive faster than two per this budget and faster than
    /// batches of one would be served (measured: [`super::batching`]), one poller receives,
    /// waiting before each receive so that a receive gathers several bundles, each waiting
    /// about this long at most; bundles served before the next one comes and slower arrivals
    /// are never held. Zero turns it off.
    pub batch_latency_budget: Duration,
    /// How long an answered input's delete may wait for others, so that deletes go ten to a
    /// call ([`super::deletes`]); zero deletes with each batch. Default 200 ms.
    pub delete_delay: Duration,
    /// Batches processed at once.
    pub max_concurrent_batches: usize,
    /// The visibility the heartbeat keeps extending to, in seconds.
    pub visibility_timeout_secs: i32,
    /// The heartbeat period as a fraction of the visibility timeout.
    pub heartbeat_fraction: f64,
    /// How long shutdown waits for batches in hand.
    pub drain_timeout: Duration,
    /// `/health` fails when no receive returned and no batch finished for this long.
    pub stall_timeout: Duration,
    /// The encoding of answers.
    pub output_encoding: ContentEncoding,
    /// The largest message the queues accept, body and attributes together, in bytes: answers
    /// are fitted under it (compressed, else refused), dead-letter copies cut to it, and send
    /// batches chunked by it. Default SQS's 1 MiB.
    pub max_message_bytes: usize,
    /// Decoding limits.
    pub limits: Limits,
    /// A message left for redelivery on this many receives is dead-lettered by the worker, with
    /// its reason, instead of going round again; keep it below the queue's `maxReceiveCount`,
    /// so SQS's redrive (which attaches no reason) stays the last resort. 0 turns it off.
    pub max_receives: u32,
    /// How long a batch holds bundles that wait for a source that is down, trying again about
    /// every second, before it leaves them for redelivery.
    pub outage_hold: Duration,
    /// Attempts per batch call before its entries are left for redelivery.
    pub send_attempts: u32,
    /// First back-off delay.
    pub backoff_base: Duration,
    /// Longest back-off delay.
    pub backoff_max: Duration,
    /// Fewer pollers on an idle queue; polling slowed, then paused, while the downstream
    /// cannot keep up.
    pub pacing: PacingConfig,
}

impl WorkerConfig {
    /// How failed queue calls are retried.
    pub fn retry(&self) -> Retry {
        Retry {
            attempts: self.send_attempts,
            base: self.backoff_base,
            max: self.backoff_max,
        }
    }

    /// The delay before retry number `attempt` of a failed batch or receive.
    pub fn backoff(&self, attempt: u32) -> Duration {
        self.retry().delay(attempt)
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            receive_max: 10,
            wait_secs: 20,
            pollers: 2,
            max_batch_records: 2_500,
            max_batch_cells: 250_000,
            max_batch_wait: Duration::ZERO,
            batch_latency_budget: Duration::from_millis(50),
            delete_delay: Duration::from_millis(200),
            max_concurrent_batches: 4,
            visibility_timeout_secs: 60,
            heartbeat_fraction: 0.5,
            drain_timeout: Duration::from_secs(25),
            stall_timeout: Duration::from_secs(120),
            output_encoding: ContentEncoding::Identity,
            max_message_bytes: crate::queue::MAX_SQS_MESSAGE_BYTES,
            limits: Limits::default(),
            max_receives: 4,
            outage_hold: Duration::from_secs(30),
            send_attempts: Retry::default().attempts,
            backoff_base: Retry::default().base,
            backoff_max: Retry::default().max,
            pacing: PacingConfig::default(),
        }
    }
}

/// A future a test hook returns.
pub type HookFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Points where tests can slow the worker down; production leaves them empty.
#[derive(Clone, Default)]
pub struct Hooks {
    /// Runs after prediction, before answers are sent.
    pub before_send: Option<Arc<dyn Fn() -> HookFuture + Send + Sync>>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("before_send", &self.before_send.is_some())
            .finish()
    }
}
