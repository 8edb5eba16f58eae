//! Cancellation and progress of long training work, shared between the fitting threads and
//! whoever watches them (the `train` command's progress display and its Ctrl-C handler).
//!
//! Solvers only bump counters and poll a flag; nothing calls back into them, so a fit pays a
//! relaxed atomic add per batch of iterations and nothing else.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

/// The kernel-column cache of one Gaussian fit, unless told otherwise: 1 GiB.
pub const DEFAULT_KERNEL_CACHE_BYTES: u64 = 1 << 30;

/// Shared by every fit of one training run. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Control {
    cancel: CancellationToken,
    iterations: Arc<AtomicU64>,
    chunks: Arc<AtomicU64>,
    kernel_cache_bytes: u64,
}

impl Default for Control {
    fn default() -> Self {
        Self {
            cancel: CancellationToken::new(),
            iterations: Arc::default(),
            chunks: Arc::default(),
            kernel_cache_bytes: DEFAULT_KERNEL_CACHE_BYTES,
        }
    }
}

impl Control {
    /// A control nobody has cancelled, with the default kernel cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The same control (flag and counters shared) with each fit's kernel-column cache held
    /// to `bytes`: the memory bound of a Gaussian fit besides its data.
    pub fn with_kernel_cache(&self, bytes: u64) -> Self {
        Self {
            kernel_cache_bytes: bytes,
            ..self.clone()
        }
    }

    /// The kernel-column cache budget of one fit, in bytes.
    pub fn kernel_cache_bytes(&self) -> u64 {
        self.kernel_cache_bytes
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
