//! Large payloads through S3 (docs/contract.md section 8), against LocalStack: the interop
//! round trip with AWS's own Python SQS Extended Client (`amazon-sqs-extended-client` from PyPI,
//! in the venv `tools/extended-client/venv.sh` installs), and pointers the worker cannot read.

use crate::common;

use common::harness::TestWorker;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::types::MessageAttributeValue;
use ml_pipeline::payload::pointer::{PayloadPointer, SIZE_ATTRIBUTE};
use ml_pipeline::payload::s3::S3Payloads;
use ml_pipeline::payload::{PayloadConfig, Payloads};
use ml_pipeline::worker::{Hooks, WorkerConfig};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// The message size limit of this test: the old SQS limit, which is also the Python client's
/// offloading threshold (its `DEFAULT_MESSAGE_SIZE_THRESHOLD`, not configurable in 1.0.1).
const LIMIT: usize = 262_144;

/// Runs the test's worker with payloads in `bucket`, until the token is cancelled.
fn spawn_with_payloads(
    t: &TestWorker,
    config: WorkerConfig,
    s3: aws_sdk_s3::Client,
    bucket: &str,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<ml_pipeline::worker::RunSummary>,
) {
    let Ok(mut worker) = Arc::try_unwrap(t.worker(config, Hooks::default())) else {
        panic!("a new worker is not shared yet");
    };
    worker.payloads = Some(Payloads::new(
        Arc::new(S3Payloads::new(s3)),
        PayloadConfig {
            bucket: Some(bucket.to_owned()),
            prefix: "answers/".into(),
            threshold_bytes: None,
            delete_inputs: false,
        },
    ));
    let token = CancellationToken::new();
    let handle = tokio::spawn(Arc::new(worker).run(token.clone()));
    (token, handle)
}

/// One request bundle of `rows` records, the fixture bundles' records over and over, each
/// with a random id: random ids do not compress, so its answer is larger than [`LIMIT`] in
/// every encoding.
fn large_bundle(rows: usize) -> Value {
    let set = common::default_fixtures();
    let first = serde_json::to_value(&set.bundles[0]).unwrap();
    let columns = first["columns"].clone();
    let records: Vec<Value> = set
        .bundles
        .iter()
        .map(|b| serde_json::to_value(b).unwrap())
        .filter(|b| b["columns"] == columns)
        .flat_map(|b| b["rows"].as_array().unwrap().clone())
        .collect();
    let rows: Vec<Value> = records
        .iter()
        .cycle()
        .take(rows)
        .map(|row| {
            let mut row = row.clone();
            row[0] = Value::String(uuid::Uuid::new_v4().simple().to_string());
            row
        })
        .collect();
    serde_json::json!({
        "bundle_id": format!("large-{}", common::suffix()),
        "model": "banknote",
        "columns": columns,
        "rows": rows,
    })
}

/// The interop test: AWS's Python client sends a bundle larger than the message size limit
/// (so it writes it to S3 and sends a pointer), the worker answers it with a pointer to an
/// answer too large for one message even compressed, and the Python client reads that answer
/// back through S3.
#[tokio::test]
async fn the_python_extended_client_sends_a_large_bundle_and_reads_the_large_answer_back() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let venv = std::process::Command::new(repo.join("tools/extended-client/venv.sh"))
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("tools/extended-client/venv.sh runs");
    assert!(
        venv.status.success(),
        "the extended-client venv could not be installed"
    );
    let python = String::from_utf8(venv.stdout).unwrap().trim().to_owned();

    let t = TestWorker::new(60).await;
    let (s3, bucket) = common::bucket().await;
    let config = WorkerConfig {
        max_message_bytes: LIMIT,
        ..t.config()
    };
    let (token, handle) = spawn_with_payloads(&t, config, s3.clone(), &bucket);

    let bundle = large_bundle(10_000);
    let body = bundle.to_string();
    assert!(body.len() > LIMIT, "{} bytes", body.len());
    let file = std::env::temp_dir().join(format!("ext-bundle-{}.json", common::suffix()));
    std::fs::write(&file, &body).unwrap();
    let run = tokio::process::Command::new(&python)
        .arg(repo.join("tools/extended-client/interop.py"))
        .args(["--input-queue", t.input.url()])
        .args(["--output-queue", t.output.url()])
        .args(["--bucket", &bucket])
        .arg("--bundle")
        .arg(&file)
        .stderr(std::process::Stdio::inherit())
        .output();
    let run = tokio::time::timeout(Duration::from_secs(240), run)
        .await
        .expect("the Python client finishes")
        .unwrap();
    std::fs::remove_file(&file).ok();
    token.cancel();
    let summary = handle.await.unwrap();
    assert!(run.status.success(), "the Python client got no answer");
    let report: Value = serde_json::from_slice(&run.stdout).unwrap();

    assert_eq!(report["bundle_id"], bundle["bundle_id"]);
    assert_eq!(
        report["rows"].as_u64().unwrap() + report["errors"].as_u64().unwrap(),
        10_000,
        "every record answered once: {report}"
    );
    assert!(report["rows"].as_u64().unwrap() > 9_000, "{report}");
    assert_eq!(report["answer_offloaded"], true, "{report}");
    assert!(
        report["answer_bytes"].as_u64().unwrap() > LIMIT as u64,
        "{report}"
    );
    assert_eq!((summary.answered, summary.dead_lettered), (1, 0));
    // The client's payload (a UUID key) and the worker's answer (under its prefix) are both
    // in the bucket: the input was offloaded by the client, and kept (deleting is off).
    let keys: Vec<String> = s3
        .list_objects_v2()
        .bucket(&bucket)
        .send()
        .await
        .unwrap()
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_owned))
        .collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert_eq!(
        keys.iter().filter(|k| k.starts_with("answers/")).count(),
        1,
        "{keys:?}"
    );
}

/// A pointer to a missing object, and one to an object over the body limit, are dead-lettered
/// once each with the reason, their copies still pointers with `ExtendedPayloadSize` (so a
/// redrive sends them as they came); neither goes round again.
#[tokio::test]
async fn a_pointer_to_a_missing_or_oversized_object_is_dead_lettered_intact_with_its_reason() {
    let t = TestWorker::new(30).await;
    let (s3, bucket) = common::bucket().await;
    let mut config = t.config();
    config.limits.max_body_bytes = 1_000;
    let big = PayloadPointer {
        bucket: bucket.clone(),
        key: "in/big".into(),
    };
    s3.put_object()
        .bucket(&bucket)
        .key(&big.key)
        .body("x".repeat(5_000).into_bytes().into())
        .send()
        .await
        .unwrap();
    let missing = PayloadPointer {
        bucket: bucket.clone(),
        key: "in/missing".into(),
    };
    for (pointer, size) in [(&missing, "400"), (&big, "5000")] {
        t.sqs
            .send_message()
            .queue_url(t.input.url())
            .message_body(pointer.body())
            .message_attributes(
                SIZE_ATTRIBUTE,
                MessageAttributeValue::builder()
                    .data_type("Number")
                    .string_value(size)
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .unwrap();
    }
    let (token, handle) = spawn_with_payloads(&t, config, s3, &bucket);
    let dead = t.drain_raw(t.dlq.url(), 2, Duration::from_secs(60)).await;
    token.cancel();
    let summary = handle.await.unwrap();
    assert_eq!(dead.len(), 2);
    assert_eq!((summary.dead_lettered, summary.answered), (2, 0));
    for (body, _, attrs) in &dead {
        let pointer = PayloadPointer::parse(body).expect("the copy is the pointer");
        let reason = &attrs["error-reason"];
        assert_eq!(attrs["error-stage"], "decode");
        if pointer == missing {
            assert_eq!(attrs[SIZE_ATTRIBUTE], "400");
            assert!(reason.contains("does not exist"), "{reason}");
        } else {
            assert_eq!(pointer, big);
            assert_eq!(attrs[SIZE_ATTRIBUTE], "5000");
            assert!(
                reason.contains("5000 bytes") && reason.contains("1000"),
                "{reason}"
            );
        }
    }
    let depth = t
        .input
        .attribute(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .await
        .unwrap();
    assert_eq!(
        depth.as_deref(),
        Some("0"),
        "nothing left in flight to loop"
    );
}
