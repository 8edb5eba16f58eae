//! `ml-pipeline dlq inspect` and `dlq redrive` on LocalStack, on a worker's own queues: the
//! dead-lettered copies are real ones, written by the worker for poison bundles, and by SQS's
//! redrive policy for a good bundle whose consumer kept crashing. Inspect lists them without
//! consuming them; a dry run moves nothing; a reason or a stage moves only the matching ones,
//! without the dead-letter attributes; and the worker answers the good bundle redriven.

use crate::common;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::harness::{fixture_bundles, TestWorker};
use ml_pipeline::bundle::compression::{compress, ContentEncoding};
use ml_pipeline::commands::dlq::{inspect, DeadLetter};
use ml_pipeline::queue::{Outgoing, Queue, SqsQueue};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_ml-pipeline");

/// The input queue's maxReceiveCount, as `TestWorker` creates it.
const MAX_RECEIVE_COUNT: u32 = 10;

/// Runs `ml-pipeline dlq <args>` on the test's queues; returns stdout, or panics with stderr.
fn dlq_command(t: &TestWorker, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("dlq")
        .args(args)
        .args(["--input-queue", t.input.url()])
        .env_remove("ML_PIPELINE_INPUT_DLQ")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("the ml-pipeline binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "dlq {args:?} failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Plays a consumer that crashes on every delivery: receives the input's messages and never
/// deletes them, making them visible again at once, until SQS's redrive policy has moved them
/// all to the dead-letter queue.
async fn crash_until_moved(t: &TestWorker) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = t.input.receive(10, 1).await.unwrap();
        if got.is_empty() && t.input.depth().await.unwrap() == Some(0) {
            return;
        }
        let receipts: Vec<&str> = got.iter().map(|m| m.receipt_handle.as_str()).collect();
        if !receipts.is_empty() {
            t.input.change_visibility(&receipts, 0).await.unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "SQS did not move the message to the dead-letter queue"
        );
    }
}

/// Lists the dead-letter queue until it holds `n` messages.
async fn until_listed(dlq: &SqsQueue, n: usize) -> Vec<DeadLetter> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let listed = inspect(dlq, Some(MAX_RECEIVE_COUNT), 100).await.unwrap();
        if listed.len() >= n || Instant::now() > deadline {
            return listed;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn by_stage<'a>(listed: &'a [DeadLetter], stage: &str) -> Vec<&'a DeadLetter> {
    listed.iter().filter(|d| d.stage == stage).collect()
}

#[tokio::test]
async fn inspect_lists_real_dead_letters_and_redrive_moves_only_the_matching_ones_back() {
    let t = TestWorker::new(30).await;
    // A good bundle, gzip-compressed with a producer's attribute; its consumer keeps crashing,
    // so SQS's redrive policy moves it to the dead-letter queue, without a reason.
    let good = fixture_bundles().into_iter().next().unwrap();
    let good_id = good["bundle_id"].as_str().unwrap().to_owned();
    let body = compress(ContentEncoding::Gzip, good.to_string().as_bytes());
    let sent = t
        .input
        .send_batch(&[Outgoing {
            body: body.clone(),
            attributes: vec![
                ("content-encoding".into(), "gzip".into()),
                ("trace-id".into(), "t-42".into()),
            ],
            number_attributes: Vec::new(),
            dedup_id: None,
            group_id: None,
        }])
        .await
        .unwrap();
    assert!(sent.is_empty());
    crash_until_moved(&t).await;

    // Two poison bundles the worker dead-letters with their reasons.
    t.send(&[
        ("this is not JSON".to_owned(), None),
        (
            r#"{"bundle_id":"b-poison","columns":["id"],"rows":[["r-1", 2]]}"#.to_owned(),
            None,
        ),
    ])
    .await;
    let (stop, worker) = t.spawn(t.config(), Default::default());
    let listed = until_listed(&t.dlq, 3).await;
    stop.cancel();
    assert_eq!(worker.await.unwrap().dead_lettered, 2);

    // Inspect: every copy with its stage, reason, bundle id, receive count and sent time.
    assert_eq!(listed.len(), 3, "{listed:#?}");
    let moved = by_stage(&listed, "sqs");
    assert_eq!(moved.len(), 1, "{listed:#?}");
    assert!(moved[0].moved_by_sqs);
    assert_eq!(moved[0].reason, "moved by SQS after 10 receives");
    assert_eq!(moved[0].bundle_id.as_deref(), Some(good_id.as_str()));
    let refused = by_stage(&listed, "decode");
    assert_eq!(refused.len(), 2, "{listed:#?}");
    let not_json: Vec<_> = refused
        .iter()
        .filter(|d| d.reason.contains("not valid JSON"))
        .collect();
    assert_eq!(not_json.len(), 1, "{refused:#?}");
    assert!(refused
        .iter()
        .any(|d| d.bundle_id.as_deref() == Some("b-poison")));
    for d in &listed {
        assert!(d.receive_count >= 1 && d.sent_at.is_some(), "{d:?}");
    }

    // The CLI lists the same, as JSON, and listing consumed nothing.
    let json: Value = serde_json::from_str(&dlq_command(&t, &["inspect", "--json"])).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 3, "{json:#}");
    let table = dlq_command(&t, &["inspect"]);
    assert!(table.starts_with("3 dead-lettered messages in"), "{table}");
    assert!(table.contains("moved by SQS after 10 receives"), "{table}");

    // A dry run says what it would move and moves nothing.
    let dry = dlq_command(&t, &["redrive", "--dry-run"]);
    assert!(
        dry.contains("matched 3, moved 0, skipped 0, failed 0; dry run"),
        "{dry}"
    );
    assert_eq!(dry.matches("would move").count(), 3, "{dry}");
    assert_eq!(until_listed(&t.dlq, 3).await.len(), 3);
    assert!(t.input.receive(10, 1).await.unwrap().is_empty());

    // A reason moves only its match, without the worker's dead-letter attributes.
    let text = dlq_command(&t, &["redrive", "--reason", "NOT VALID json"]);
    assert!(
        text.contains("matched 1, moved 1, skipped 0, failed 0"),
        "{text}"
    );
    let back = t.drain_raw(t.input.url(), 1, Duration::from_secs(20)).await;
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].0, "this is not JSON");
    let no_dead_letter_attributes: HashMap<String, String> = HashMap::new();
    assert_eq!(back[0].2, no_dead_letter_attributes, "only the producer's");
    assert_eq!(until_listed(&t.dlq, 2).await.len(), 2);

    // The stage `sqs` moves the good bundle back, with its attributes, and the worker answers it.
    let text = dlq_command(&t, &["redrive", "--stage", "sqs"]);
    assert!(
        text.contains("matched 1, moved 1, skipped 0, failed 0"),
        "{text}"
    );
    let redriven = t.input.receive(1, 5).await.unwrap();
    assert_eq!(redriven.len(), 1);
    assert_eq!(redriven[0].body, body, "the body as first sent");
    assert_eq!(
        redriven[0].attributes,
        [
            ("content-encoding".to_owned(), "gzip".to_owned()),
            ("trace-id".to_owned(), "t-42".to_owned())
        ]
    );
    t.input
        .change_visibility(&[redriven[0].receipt_handle.as_str()], 0)
        .await
        .unwrap();
    let (stop, worker) = t.spawn(t.config(), Default::default());
    let answers = t.outputs(1).await;
    stop.cancel();
    let summary = worker.await.unwrap();
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0]["bundle_id"], good_id.as_str());
    assert_eq!(summary.dead_lettered, 0);
    let left = inspect(&t.dlq, Some(MAX_RECEIVE_COUNT), 100).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].bundle_id.as_deref(), Some("b-poison"));
}
