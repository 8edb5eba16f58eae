//! Cancellation and progress of long training work, shared between the fitting threads and
//! whoever watches them (the `train` command's progress display and its Ctrl-C handler).
//!
//! Solvers only bump counters and poll a flag; nothing calls back into them, so a fit pays a
//! relaxed atomic add per batch of iterations and nothing else.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

/// Shared by every fit of one training run. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Control {
    cancel: CancellationToken,
    iterations: Arc<AtomicU64>,
    chunks: Arc<AtomicU64>,
}

impl Control {
    /// A control nobody has cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks every fit using this control to stop at its next check.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Whether the run was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// The token behind [`Control::cancel`], for async code that waits on it.
    pub fn token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Counts solver iterations (summed over all fits running).
    pub fn add_iterations(&self, n: u64) {
        self.iterations.fetch_add(n, Ordering::Relaxed);
    }

    /// Solver iterations so far.
    pub fn iterations(&self) -> u64 {
        self.iterations.load(Ordering::Relaxed)
    }

    /// Counts solver chunks or passes finished (summed over all fits running).
    pub fn add_chunks(&self, n: u64) {
        self.chunks.fetch_add(n, Ordering::Relaxed);
    }

    /// Solver chunks or passes so far.
    pub fn chunks(&self) -> u64 {
        self.chunks.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_the_flag_and_the_counters() {
        let a = Control::new();
        let b = a.clone();
        b.add_iterations(5);
        b.add_chunks(1);
        assert_eq!((a.iterations(), a.chunks()), (5, 1));
        assert!(!a.is_cancelled());
        b.cancel();
        assert!(a.is_cancelled());
    }
}
