//! Fits run side by side: a pool of scoped threads takes the jobs in order, and the calling
//! thread hears of each one as it finishes (to show progress) before getting every result back
//! in job order.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

/// Runs `job(i)` for every `i` in `0..jobs` on up to `threads` threads. `on_done(i, &result)`
/// is called on this thread as each job finishes, in the order they finish. Returns the results
/// in job order.
pub fn run<T: Send>(
    jobs: usize,
    threads: usize,
    job: impl Fn(usize) -> T + Sync,
    mut on_done: impl FnMut(usize, &T),
) -> Vec<T> {
    let mut results: Vec<Option<T>> = (0..jobs).map(|_| None).collect();
    let next = AtomicUsize::new(0);
    let (done_tx, done_rx) = mpsc::channel::<(usize, T)>();
    std::thread::scope(|scope| {
        for _ in 0..threads.clamp(1, jobs.max(1)) {
            let done_tx = done_tx.clone();
            let (job, next) = (&job, &next);
            scope.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= jobs {
                    return;
                }
                if done_tx.send((i, job(i))).is_err() {
                    return;
                }
            });
        }
        drop(done_tx);
        for (i, result) in done_rx {
            on_done(i, &result);
            results[i] = Some(result);
        }
    });
    results
        .into_iter()
        .map(|r| r.expect("every job ran"))
        .collect()
}

/// The cores to fit on.
pub fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_job_runs_once_and_results_come_back_in_job_order() {
        let mut finished = Vec::new();
        let out = run(17, 3, |i| i * i, |i, r| finished.push((i, *r)));
        assert_eq!(out, (0..17).map(|i| i * i).collect::<Vec<_>>());
        finished.sort_unstable();
        assert_eq!(finished, (0..17).map(|i| (i, i * i)).collect::<Vec<_>>());
        assert!(run(0, 2, |i| i, |_, _| {}).is_empty());
    }
}
