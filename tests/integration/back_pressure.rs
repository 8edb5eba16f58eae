//! Back-pressure against LocalStack: an output queue whose consumers are behind pauses the
//! worker's polling (the input's bundles stay on the queue), and draining it resumes polling
//! by itself, after which the bundles are answered.

use crate::common;

use std::time::Duration;

use common::harness::{fixture_bundles, TestWorker};
use ml_pipeline::bundle::compression::ContentEncoding;
use ml_pipeline::queue::{Outgoing, Queue};
use ml_pipeline::worker::{Hooks, Pace, PacingConfig, WorkerConfig};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// A message on the output queue that no consumer has read yet.
fn unread_answer(i: usize) -> Outgoing {
    Outgoing {
        body: format!("{{\"bundle_id\":\"earlier-{i}\"}}"),
        attributes: Vec::new(),
        number_attributes: Vec::new(),
        dedup_id: None,
        group_id: None,
    }
}

/// Waits until the pace is one `wanted` accepts; false after `within`.
async fn pace_becomes(
    pace: &mut tokio::sync::watch::Receiver<Pace>,
    wanted: impl Fn(&Pace) -> bool,
    within: Duration,
) -> bool {
    let reached = tokio::time::timeout(within, pace.wait_for(wanted)).await;
    reached.is_ok()
}

#[tokio::test]
async fn an_output_backlog_pauses_polling_and_draining_it_resumes_polling_by_itself() {
    let t = TestWorker::new(30).await;
    let unread: Vec<Outgoing> = (0..5).map(unread_answer).collect();
    assert!(t.output.send_batch(&unread).await.unwrap().is_empty());
    let config = WorkerConfig {
        pollers: 2,
        pacing: PacingConfig {
            output_backlog_max: Some(3),
            output_backlog_check: Duration::from_secs(1),
            slow_delay: Duration::from_millis(200),
            pause_after: Duration::from_secs(2),
            ..PacingConfig::default()
        },
        ..t.config()
    };
    let w = t.worker(config, Hooks::default());
    let mut pace = w.state.pace.subscribe();
    let token = CancellationToken::new();
    let run = tokio::spawn(std::sync::Arc::clone(&w).run(token.clone()));

    assert!(
        pace_becomes(&mut pace, |p| *p == Pace::Paused, Duration::from_secs(15)).await,
        "5 unread answers over a limit of 3 pause polling; the pace is {:?}",
        *pace.borrow()
    );
    // A long poll made before the pause still returns what it finds: let those (1 s here) end.
    // With a 2 s wait one bundle was received once, on a loaded machine (two builds beside
    // it); most likely a long poll LocalStack answered late.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let bundles: Vec<Value> = fixture_bundles().into_iter().take(3).collect();
    t.send_json(&bundles, ContentEncoding::Identity).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        t.input.depth().await.unwrap(),
        Some(3),
        "paused: the bundles stay visible on the input queue"
    );
    assert_eq!(
        t.output.depth().await.unwrap(),
        Some(5),
        "and nothing is answered"
    );
    assert_eq!(*pace.borrow(), Pace::Paused);

    // The consumers catch up.
    let earlier = t.drain(t.output.url(), 5, Duration::from_secs(30)).await;
    assert_eq!(earlier.len(), 5);
    assert!(
        pace_becomes(
            &mut pace,
            |p| matches!(p, Pace::Polling { .. }),
            Duration::from_secs(15)
        )
        .await,
        "polling resumes by itself; the pace is {:?}",
        *pace.borrow()
    );
    let answers = t.outputs(3).await;
    token.cancel();
    let summary = run.await.unwrap();
    let mut answered: Vec<&str> = answers
        .iter()
        .map(|a| a["bundle_id"].as_str().or(a["batch_id"].as_str()).unwrap())
        .collect();
    answered.sort();
    let mut sent: Vec<&str> = bundles
        .iter()
        .map(|b| b["bundle_id"].as_str().or(b["batch_id"].as_str()).unwrap())
        .collect();
    sent.sort();
    assert_eq!(answered, sent);
    assert_eq!(summary.answered, 3);
}
