//! What the worker's loops share with the health endpoints and task protection: when they last
//! made progress, how many messages are in hand, and the pace the pollers keep.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant as LoopInstant;

use super::deletes::DeferredDeletes;
use super::pacing::Pace;

/// What the worker's loops share with the health endpoints and task protection.
#[derive(Debug)]
pub struct WorkerState {
    /// Cancelled when shutdown starts: held bundles are let go at once.
    pub stopping: tokio_util::sync::CancellationToken,
    /// How the pollers receive now ([`super::governor`] sets it); paused until a run starts.
    pub pace: watch::Sender<Pace>,
    /// Deletes of answered inputs waiting to go ten to a call, while a run's flusher runs.
    pub deletes: Arc<DeferredDeletes>,
    started: LoopInstant,
    last_beat_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Default for WorkerState {
    fn default() -> Self {
        Self {
            stopping: tokio_util::sync::CancellationToken::new(),
            pace: watch::Sender::new(Pace::Paused),
            deletes: Arc::default(),
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

impl InFlight {
    /// Splits off `n` of the messages (at most all), to be released on their own.
    pub fn split_off(&mut self, n: usize) -> Self {
        let n = n.min(self.n);
        self.n -= n;
        InFlight {
            state: Arc::clone(&self.state),
            n,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let now = self.state.in_flight.fetch_sub(self.n, Ordering::Relaxed) - self.n;
        crate::instruments::in_flight(now);
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
