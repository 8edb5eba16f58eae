//! PostgreSQL stopped for a few seconds mid-run: nothing is lost, and the worker recovers by
//! itself. This stops the shared PostgreSQL server, so it is its own test binary (cargo runs
//! test binaries one at a time) with one test.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::harness::{fixture_bundles, TestWorker};
use ml_pipeline::bundle::compression::ContentEncoding;
use ml_pipeline::worker::{Hooks, WorkerConfig};
use serde_json::Value;

fn postgres(action: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("localstack/postgres.sh");
    let status = Command::new(script)
        .arg(action)
        .status()
        .expect("localstack/postgres.sh runs");
    assert!(status.success(), "localstack/postgres.sh {action} failed");
}

#[tokio::test]
async fn postgres_stopped_mid_run_loses_nothing_and_the_worker_recovers() {
    let t = TestWorker::new(5).await;
    let config = WorkerConfig {
        visibility_timeout_secs: 5,
        backoff_max: Duration::from_millis(500),
        ..t.config()
    };
    let (token, handle) = t.spawn(config, Hooks::default());
    let bundles: Vec<Value> = fixture_bundles();
    t.send_json(&bundles[..5], ContentEncoding::Identity).await;
    let mut outs = t.outputs(5).await;

    postgres("stop");
    t.send_json(&bundles[5..], ContentEncoding::Identity).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    postgres("start");

    outs.extend(t.outputs(bundles.len() - 5).await);
    token.cancel();
    let summary = handle.await.unwrap();
    let ids: BTreeSet<&str> = outs
        .iter()
        .map(|o| {
            o.get("bundle_id")
                .or(o.get("batch_id"))
                .unwrap()
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(
        ids.len(),
        bundles.len(),
        "every bundle answered after PostgreSQL returned"
    );
    assert_eq!(summary.dead_lettered, 0, "an outage dead-letters nothing");
    // A record is never turned into an error because its source was down.
    for o in &outs {
        for e in o["errors"].as_array().into_iter().flatten() {
            let reason = e[1].as_str().unwrap();
            assert!(
                !reason.contains("failed") && !reason.contains("PostgreSQL"),
                "outage leaked into a record error: {reason}"
            );
        }
    }
}
