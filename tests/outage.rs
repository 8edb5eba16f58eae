//! PostgreSQL stopped for a few seconds mid-run: nothing is lost, `/ready` turns false and true
//! again, `/health` stays true, and the worker recovers by itself. This stops the shared
//! PostgreSQL server, so it is its own test binary (cargo runs test binaries one at a time)
//! with one test.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use common::harness::{fixture_bundles, TestWorker};
use ml_pipeline::bundle::compression::ContentEncoding;
use ml_pipeline::worker::{Hooks, WorkerConfig};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

async fn get(url: &str) -> (u16, Value) {
    let reply = ml_pipeline::http::request("GET", url, None, Duration::from_secs(10))
        .await
        .unwrap();
    (reply.status, serde_json::from_str(&reply.body).unwrap())
}

/// Stops or starts the shared PostgreSQL server without blocking the test's runtime: the worker
/// runs on it too, and `start` waits about 3 s for the server, longer than half the visibility
/// timeout, so a blocking call here starved the heartbeat and let held bundles be received and
/// answered a second time.
async fn postgres(action: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("localstack/postgres.sh");
    let status = tokio::process::Command::new(script)
        .arg(action)
        .status()
        .await
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
    let worker = t.worker(config, Hooks::default());
    let token = CancellationToken::new();
    let handle = tokio::spawn(worker.clone().run(token.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(ml_pipeline::worker::endpoints::serve(
        listener,
        ml_pipeline::worker::endpoints::router(worker, None),
        token.clone(),
    ));
    assert_eq!(get(&format!("{base}/ready")).await.0, 200);

    let bundles: Vec<Value> = fixture_bundles();
    t.send_json(&bundles[..5], ContentEncoding::Identity).await;
    let mut outs = t.outputs(5).await;

    postgres("stop").await;
    t.send_json(&bundles[5..], ContentEncoding::Identity).await;
    let (status, ready) = get(&format!("{base}/ready")).await;
    assert_eq!(status, 503, "not ready while PostgreSQL is down: {ready}");
    assert_eq!(ready["checks"]["postgres"]["ok"], false, "{ready}");
    assert_eq!(ready["checks"]["mongo"]["ok"], true, "{ready}");
    let (status, live) = get(&format!("{base}/health")).await;
    assert_eq!(
        status, 200,
        "a dependency outage is not a liveness failure: {live}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    postgres("start").await;

    let deadline = Instant::now() + Duration::from_secs(30);
    while get(&format!("{base}/ready")).await.0 != 200 {
        assert!(
            Instant::now() < deadline,
            "not ready again after PostgreSQL returned"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Delivery is at least once (docs/contract.md section 3): an answer may come twice, so
    // answers are read until every bundle has one, not until as many answers as bundles came.
    let answered = |outs: &[Value]| -> BTreeSet<String> {
        outs.iter()
            .map(|o| {
                o.get("bundle_id")
                    .or(o.get("batch_id"))
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let missing = bundles.len() - answered(&outs).len();
        if missing == 0 || Instant::now() > deadline {
            break;
        }
        outs.extend(t.outputs(missing).await);
    }
    token.cancel();
    let summary = handle.await.unwrap();
    let ids = answered(&outs);
    assert_eq!(
        ids.len(),
        bundles.len(),
        "every bundle answered after PostgreSQL returned"
    );
    // Held bundles stay invisible while their heartbeat extends them, so none is received, and
    // answered, a second time. Delivery allows a repeat; this path does not cause one.
    assert_eq!(
        outs.len(),
        ids.len(),
        "a bundle held through the outage was answered twice: {} answers for {} bundles",
        outs.len(),
        ids.len()
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
