//! The run's pace on the in-memory queues and tokio's paused clock: fewer receive calls on an
//! idle queue and every poller back at the first message; polling paused by an output backlog
//! and by batch slots full for too long, and resumed by itself when they end. (The output
//! backlog against LocalStack is in `tests/integration/back_pressure.rs`.)

use std::sync::Arc;
use std::time::Duration;

use super::{running, seed_bundle, TestWorker};
use crate::queue::memory::{MemoryQueue, Op};
use crate::queue::Queue;
use crate::worker::{HookFuture, Pace, PacingConfig};

const HOUR: Duration = Duration::from_secs(3600);

/// Waits (on the paused clock) until the pace is one `wanted` accepts; false after `within`.
async fn pace_becomes(w: &TestWorker, wanted: impl Fn(&Pace) -> bool, within: Duration) -> bool {
    let mut pace = w.state.pace.subscribe();
    let reached = tokio::time::timeout(within, pace.wait_for(wanted)).await;
    reached.is_ok()
}

fn paused(pace: &Pace) -> bool {
    *pace == Pace::Paused
}

/// Polling again, with however many pollers the idle streak leaves.
fn polling(pace: &Pace) -> bool {
    matches!(pace, Pace::Polling { .. })
}

/// Long enough for the long polls made before a pause to end.
const LONG_POLL_ENDS: Duration = Duration::from_secs(25);

/// Receive calls an idle hour costs with these pacing rules.
async fn receives_per_idle_hour(pacing: PacingConfig) -> usize {
    let (w, token, run) = running(4, |w| w.config.pacing = pacing).await;
    tokio::time::sleep(HOUR).await;
    let calls = w.input.calls(Op::Receive);
    token.cancel();
    run.await.unwrap();
    calls
}

/// Takes every visible message off a queue, as its consumers would.
async fn consume(q: &MemoryQueue) {
    loop {
        let got = q.receive(10, 0).await.unwrap();
        if got.is_empty() {
            return;
        }
        let receipts: Vec<&str> = got.iter().map(|m| m.receipt_handle.as_str()).collect();
        assert!(q.delete_batch(&receipts).await.unwrap().is_empty());
    }
}

#[tokio::test(start_paused = true)]
async fn an_idle_hour_costs_one_pollers_receives_instead_of_four() {
    let before = receives_per_idle_hour(PacingConfig {
        idle_empty_receives: 0,
        ..PacingConfig::default()
    })
    .await;
    let after = receives_per_idle_hour(PacingConfig::default()).await;
    // 20 s long polls: 180 an hour per poller. Before: 4 pollers all the hour.
    assert!((720..=724).contains(&before), "before: {before}");
    // After: 3 empty receives per poller parked, so a few more than one poller's 180.
    assert!((180..=190).contains(&after), "after: {after}");
}

#[tokio::test(start_paused = true)]
async fn every_poller_is_back_at_the_first_message_after_an_idle_spell() {
    let (w, token, run) = running(4, |_| {}).await;
    assert!(pace_becomes(&w, |p| *p == Pace::Polling { pollers: 1 }, HOUR).await);
    let parked_at = w.input.calls(Op::Receive);
    tokio::time::sleep(Duration::from_secs(200)).await;
    let calls = w.input.calls(Op::Receive);
    assert!(
        (9..=11).contains(&(calls - parked_at)),
        "one poller, one 20 s poll after another (the window starts within one): {}",
        calls - parked_at
    );
    let mut pace = w.state.pace.subscribe();
    w.input.push(seed_bundle("b-1"), None);
    // The one poller's long poll returns the message, and every poller polls again at once.
    tokio::time::timeout(
        Duration::from_secs(21),
        pace.wait_for(|p| *p == Pace::Polling { pollers: 4 }),
    )
    .await
    .expect("all four pollers are back")
    .unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(
        w.input.calls(Op::Receive) >= calls + 4,
        "the three parked pollers receive at once, and the one that got the message again"
    );
    while w.output.accepted().is_empty() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    token.cancel();
    assert_eq!(run.await.unwrap().answered, 1);
}

#[tokio::test(start_paused = true)]
async fn an_output_backlog_pauses_polling_and_its_drain_resumes_it() {
    let pacing = PacingConfig {
        output_backlog_max: Some(3),
        output_backlog_check: Duration::from_secs(1),
        slow_delay: Duration::from_millis(500),
        pause_after: Duration::from_secs(2),
        ..PacingConfig::default()
    };
    let (w, token, run) = running(4, |w| {
        w.config.pacing = pacing;
        // The output's consumers are behind: 5 answers wait.
        for i in 0..5 {
            w.output.push(format!("earlier answer {i}"), None);
        }
    })
    .await;
    assert!(pace_becomes(&w, paused, Duration::from_secs(5)).await);
    // A long poll made before the pause still returns what it finds: let those end.
    tokio::time::sleep(LONG_POLL_ENDS).await;
    w.input.push(seed_bundle("b-1"), None);
    let calls = w.input.calls(Op::Receive);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(w.input.visible(), 1, "the bundle waits on the queue");
    assert_eq!(w.input.calls(Op::Receive), calls, "no receive while paused");
    assert!(w.output.accepted().is_empty());
    consume(&w.output).await;
    assert!(pace_becomes(&w, polling, Duration::from_secs(3)).await);
    while w.output.accepted().is_empty() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    token.cancel();
    assert_eq!(run.await.unwrap().answered, 1);
}

#[tokio::test(start_paused = true)]
async fn slots_busy_past_their_limit_pause_polling_until_a_batch_finishes() {
    let pacing = PacingConfig {
        slots_full_max: Some(Duration::from_secs(5)),
        pause_after: Duration::from_secs(2),
        ..PacingConfig::default()
    };
    let (w, token, run) = running(4, |w| {
        w.config.pacing = pacing;
        w.config.max_concurrent_batches = 1;
        // Each batch takes 60 s to send its answers.
        w.hooks.before_send = Some(Arc::new(|| -> HookFuture {
            Box::pin(tokio::time::sleep(Duration::from_secs(60)))
        }));
        w.input.push(seed_bundle("b-1"), None);
    })
    .await;
    assert!(pace_becomes(&w, paused, Duration::from_secs(10)).await);
    tokio::time::sleep(LONG_POLL_ENDS).await;
    w.input.push(seed_bundle("b-2"), None);
    let calls = w.input.calls(Op::Receive);
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(
        w.input.visible(),
        1,
        "b-2 waits on the queue while b-1's batch runs"
    );
    assert_eq!(w.input.calls(Op::Receive), calls, "no receive while paused");
    assert!(pace_becomes(&w, polling, Duration::from_secs(40)).await);
    while w.output.accepted().len() < 2 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    token.cancel();
    assert_eq!(run.await.unwrap().answered, 2);
}
