//! Adaptive batching in a whole run, on the in-memory queues and tokio's paused clock: bundles
//! arriving fast make batches of several with fewer receive calls than bundles, and a lone
//! bundle, cold or after a busy spell, is answered without waiting for company.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{running, seed_bundle, TestWorker};
use crate::queue::memory::Op;
use crate::worker::HookFuture;

/// A batch's service time in these runs: the answers wait this long before they are sent.
const SERVICE: Duration = Duration::from_millis(10);

/// Waits (on the paused clock, in 1 ms steps) until `answers` answers were sent.
async fn answered(w: &TestWorker, answers: usize) {
    while w.output.accepted().len() < answers {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Pushes `bundles` bundles one every `every`; the time the last was pushed.
async fn paced(w: &TestWorker, bundles: usize, every: Duration) -> Instant {
    for i in 0..bundles {
        tokio::time::sleep(every).await;
        w.input.push(seed_bundle(&format!("b-{i}")), None);
    }
    Instant::now()
}

/// A lone bundle pushed now: how long until its answer was sent.
async fn lone_bundle_latency(w: &TestWorker) -> Duration {
    let answers = w.output.accepted().len();
    let pushed = Instant::now();
    w.input.push(seed_bundle("lone"), None);
    answered(w, answers + 1).await;
    pushed.elapsed()
}

/// One run of 200 bundles, one every 10 ms: (batches, receive calls, the time from the last
/// push to its answer), after a lone bundle before and after.
async fn paced_run(budget: Duration) -> (usize, usize, Duration) {
    let (w, token, run) = running(2, |w| {
        w.config.batch_latency_budget = budget;
        w.hooks.before_send = Some(Arc::new(|| -> HookFuture {
            Box::pin(tokio::time::sleep(SERVICE))
        }));
    })
    .await;
    let cold = lone_bundle_latency(&w).await;
    assert!(cold <= SERVICE + Duration::from_millis(1), "cold: {cold:?}");
    let receives_before = w.input.calls(Op::Receive);
    let last_push = paced(&w, 200, Duration::from_millis(10)).await;
    answered(&w, 201).await;
    let tail = last_push.elapsed();
    let receives = w.input.calls(Op::Receive) - receives_before;
    // Quiet for a while: the long polls come back empty, and the arrivals measured slow down.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let after = lone_bundle_latency(&w).await;
    assert!(
        after <= SERVICE + Duration::from_millis(1),
        "after a busy spell: {after:?}"
    );
    token.cancel();
    let summary = run.await.unwrap();
    assert_eq!(summary.answered, 202);
    // The two lone bundles made a batch each.
    (summary.batches - 2, receives, tail)
}

#[tokio::test(start_paused = true)]
async fn bundles_arriving_fast_share_batches_and_receives_and_a_lone_bundle_does_not_wait() {
    let (batches_off, receives_off, _) = paced_run(Duration::ZERO).await;
    let (batches, receives, tail) = paced_run(Duration::from_millis(50)).await;
    // Without the budget, every bundle wakes a long poll and makes a batch of its own.
    assert!(batches_off >= 180, "off: {batches_off} batches");
    assert!(receives_off >= 180, "off: {receives_off} receives");
    // With it, one bundle every 10 ms is five in a 50 ms budget: one receive of several, one
    // batch each (the first few receives, before a gap is measured, take one each).
    assert!(batches <= 60, "adaptive: {batches} batches for 200 bundles");
    assert!(
        receives <= 70,
        "adaptive: {receives} receives for 200 bundles"
    );
    // The last bundle waited at most the budget for company, then its batch's service time.
    assert!(
        tail <= Duration::from_millis(50) + SERVICE + Duration::from_millis(2),
        "the last bundle's answer came {tail:?} after it"
    );
}
