//! Adaptive batching in a whole run, on the in-memory queues and tokio's paused clock: bundles
//! arriving faster than batches of one would be served make batches of several with fewer
//! receive calls than bundles; bundles served before the next one comes are never held; and a
//! lone bundle, cold or after a busy spell, is answered without waiting for company.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{running, seed_bundle, TestWorker};
use crate::queue::memory::Op;
use crate::worker::HookFuture;

/// A batch's service time in the runs that gather: the answers wait this long before they
/// are sent. At one bundle every 10 ms, batches of one would keep the worker busy 2.5 times
/// over.
const SERVICE: Duration = Duration::from_millis(25);
/// A batch's service time in the run that must not gather: busy a fifth of the time.
const CHEAP: Duration = Duration::from_millis(2);

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

/// One run of 200 bundles, one every 10 ms, each batch taking `service`: (batches, receive
/// calls, the time from the last push to its answer), after a lone bundle before and after.
async fn paced_run(budget: Duration, service: Duration) -> (usize, usize, Duration) {
    let (w, token, run) = running(2, |w| {
        w.config.batch_latency_budget = budget;
        w.hooks.before_send = Some(Arc::new(move || -> HookFuture {
            Box::pin(tokio::time::sleep(service))
        }));
    })
    .await;
    let cold = lone_bundle_latency(&w).await;
    assert!(cold <= service + Duration::from_millis(1), "cold: {cold:?}");
    let receives_before = w.input.calls(Op::Receive);
    let last_push = paced(&w, 200, Duration::from_millis(10)).await;
    answered(&w, 201).await;
    let tail = last_push.elapsed();
    let receives = w.input.calls(Op::Receive) - receives_before;
    // Quiet for a while: the long polls come back empty, and the arrivals measured slow down.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let after = lone_bundle_latency(&w).await;
    assert!(
        after <= service + Duration::from_millis(1),
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
    let (batches_off, receives_off, _) = paced_run(Duration::ZERO, SERVICE).await;
    let (batches, receives, tail) = paced_run(Duration::from_millis(50), SERVICE).await;
    // Without the budget, every bundle wakes a long poll and makes a batch of its own.
    assert!(batches_off >= 180, "off: {batches_off} batches");
    assert!(receives_off >= 180, "off: {receives_off} receives");
    // With it, one bundle every 10 ms is five in a 50 ms budget, and batches of five bring the
    // load (25 ms a batch over a 10 ms gap) back to a half: one receive of several, one batch
    // each (the first few receives, before a gap and a batch are measured, take one each).
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

#[tokio::test(start_paused = true)]
async fn bundles_served_before_the_next_comes_are_not_held_for_company() {
    // One bundle every 10 ms, five within the budget, but a batch takes 2 ms: gathering would
    // save calls at the cost of a wait nothing else makes.
    let (batches, receives, tail) = paced_run(Duration::from_millis(50), CHEAP).await;
    assert!(batches >= 180, "{batches} batches for 200 bundles");
    assert!(receives >= 180, "{receives} receives for 200 bundles");
    assert!(
        tail <= CHEAP + Duration::from_millis(2),
        "the last bundle's answer came {tail:?} after it"
    );
}
