//! The worker as an operator runs it: the real `ml-pipeline worker` binary as a child process on
//! its own queues, bucket and databases, with its HTTP endpoints on a free port. Checks that
//! `/metrics` counts what the run did, that `/health`, `/ready` and `ml-pipeline healthcheck`
//! answer, that every log line is JSON with one span per bundle, and that a real SIGTERM drains
//! and exits cleanly.

use crate::common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::harness::{fixture_bundles, TestWorker};
use ml_pipeline::bundle::compression::ContentEncoding;
use secrecy::ExposeSecret;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_ml-pipeline");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Running {
    child: Child,
    base: String,
    log: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

fn start_worker(t: &TestWorker) -> Running {
    let port = free_port();
    let log = std::env::temp_dir().join(format!("operate-{}.log", common::suffix()));
    let child = Command::new(BIN)
        .arg("worker")
        .env("DATABASE_URL", t.loaded.db.url.expose_secret())
        .env("MONGODB_URI", common::mongodb_uri())
        .env("MONGODB_DATABASE", t.loaded.mongo.name())
        .env("ML_PIPELINE_MODEL_BUCKET", t.registry.bucket())
        .env("ML_PIPELINE_S3_FORCE_PATH_STYLE", "true")
        .env("ML_PIPELINE_INPUT_QUEUE", t.input.url())
        .env("ML_PIPELINE_OUTPUT_QUEUE", t.output.url())
        .env("ML_PIPELINE_INPUT_DLQ", t.dlq.url())
        .env("ML_PIPELINE_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("ML_PIPELINE_WAIT_SECS", "1")
        // Deletes wait up to a second to go ten to a call: the metrics below must count them
        // as they are made, not as they are queued.
        .env("ML_PIPELINE_DELETE_DELAY_MS", "1000")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("the ml-pipeline binary starts");
    Running {
        child,
        base: format!("http://127.0.0.1:{port}"),
        log,
    }
}

async fn get(url: &str) -> ml_pipeline::http::Reply {
    ml_pipeline::http::request("GET", url, None, Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e:#}"))
}

/// Waits until `url` answers 200.
async fn until_ok(url: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(r) = ml_pipeline::http::request("GET", url, None, Duration::from_secs(5)).await {
            if r.status == 200 {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{url} did not answer 200 in time"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Prometheus text -> `name{labels}` -> value (labels as printed, sorted by the exporter).
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The sum of every sample of `name` whose labels contain all of `labels`.
fn total(samples: &HashMap<String, f64>, name: &str, labels: &[&str]) -> f64 {
    samples
        .iter()
        .filter(|(k, _)| {
            let metric = k.split('{').next().unwrap();
            metric == name && labels.iter().all(|l| k.contains(l))
        })
        .map(|(_, v)| v)
        .sum()
}

fn healthcheck(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("healthcheck")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[tokio::test]
async fn the_binary_serves_metrics_health_and_json_logs_and_drains_on_sigterm() {
    let t = TestWorker::new(30).await;
    let mut running = start_worker(&t);
    until_ok(&format!("{}/health", running.base), Duration::from_secs(60)).await;

    // The image's HEALTHCHECK command, both ways.
    let out = healthcheck(&["--url", &running.base]);
    assert!(out.status.success(), "{out:?}");
    let live: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(live["alive"], true);
    let out = healthcheck(&["--ready", "--url", &running.base]);
    assert!(out.status.success(), "{out:?}");
    let ready: Value = serde_json::from_slice(&out.stdout).unwrap();
    for check in ["postgres", "mongo", "model", "input_queue", "output_queue"] {
        assert_eq!(ready["checks"][check]["ok"], true, "{check}: {ready}");
    }
    // Nothing listens on this port: the command says so and fails.
    let out = healthcheck(&["--url", &format!("http://127.0.0.1:{}", free_port())]);
    assert!(!out.status.success());

    let bundles = fixture_bundles();
    t.send_json(&bundles, ContentEncoding::Gzip).await;
    let outs = t.outputs(bundles.len()).await;
    assert_eq!(outs.len(), bundles.len());
    let predicted: usize = outs
        .iter()
        .map(|o| {
            o.get("rows")
                .or(o.get("output"))
                .and_then(Value::as_array)
                .map_or(0, Vec::len)
        })
        .sum();
    let errors: usize = outs
        .iter()
        .map(|o| {
            o.get("errors")
                .and_then(Value::as_array)
                .map_or(0, Vec::len)
        })
        .sum();
    assert!(errors > 0, "the fixtures plant bad records");

    // Deletes follow sends, some of them up to ML_PIPELINE_DELETE_DELAY_MS later (they wait to
    // go ten to a call). A waiting delete is pending, not yet deleted: the two never add up to
    // more than the inputs.
    let n = bundles.len() as f64;
    let metrics_url = format!("{}/metrics", running.base);
    let deadline = Instant::now() + Duration::from_secs(20);
    let m = loop {
        let reply = get(&metrics_url).await;
        assert_eq!(reply.status, 200);
        let m = samples(&reply.body);
        let deleted = total(&m, "ml_pipeline_messages_deleted_total", &[]);
        let pending = total(&m, "ml_pipeline_deletes_pending", &[]);
        assert!(
            deleted + pending <= n,
            "{deleted} deleted and {pending} pending of {n} inputs"
        );
        if deleted >= n && pending == 0.0 || Instant::now() > deadline {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(total(&m, "ml_pipeline_messages_received_total", &[]), n);
    assert_eq!(total(&m, "ml_pipeline_messages_deleted_total", &[]), n);
    assert_eq!(
        total(&m, "ml_pipeline_messages_dead_lettered_total", &[]),
        0.0
    );
    assert_eq!(
        total(&m, "ml_pipeline_records_total", &[]),
        (predicted + errors) as f64
    );
    assert_eq!(
        total(&m, "ml_pipeline_records_predicted_total", &[]),
        predicted as f64
    );
    assert_eq!(
        total(&m, "ml_pipeline_record_errors_total", &[]),
        errors as f64
    );
    assert!(
        total(
            &m,
            "ml_pipeline_record_errors_total",
            &["stage=\"enrich.mongo\"", "reason=\"unknown note\""]
        ) > 0.0,
        "errors are labelled by stage and reason"
    );
    for source in ["postgres", "mongo"] {
        let hits = total(
            &m,
            "ml_pipeline_enrichment_lookups_total",
            &[&format!("source=\"{source}\""), "result=\"hit\""],
        );
        assert!(hits > 1000.0, "{source} hits: {hits}");
    }
    assert_eq!(total(&m, "ml_pipeline_bundle_age_seconds_count", &[]), n);
    for stage in [
        "receive_wait",
        "decode",
        "enrich.postgres",
        "enrich.mongo",
        "predict",
        "send",
        "delete",
    ] {
        let count = total(
            &m,
            "ml_pipeline_stage_seconds_count",
            &[&format!("stage=\"{stage}\"")],
        );
        assert!(count >= 1.0, "stage {stage} timed {count} times");
    }
    assert!(total(&m, "ml_pipeline_batch_records_count", &[]) >= 1.0);
    // Calls per bundle, counted where the real clients make them.
    let kind = |name: &str, kind: &str| total(&m, name, &[&format!("kind=\"{kind}\"")]);
    let sqs = |k: &str| kind("ml_pipeline_sqs_requests_total", k);
    assert!(sqs("ReceiveMessage") >= 1.0);
    // A batch call carries at most 10 entries.
    let batches_needed = (n / 10.0).ceil();
    assert!(sqs("SendMessageBatch") >= batches_needed, "{m:?}");
    assert!(sqs("DeleteMessageBatch") >= batches_needed, "{m:?}");
    // `--ready` above asked both queues.
    assert!(sqs("GetQueueAttributes") >= 2.0);
    for k in ["ReceiveMessage", "SendMessageBatch", "DeleteMessageBatch"] {
        let billed = kind("ml_pipeline_sqs_billable_requests_total", k);
        assert!(billed >= sqs(k), "{k}: {billed} billed of {} made", sqs(k));
    }
    for source in ["postgres", "mongo"] {
        let label = format!("source=\"{source}\"");
        let trips = total(&m, "ml_pipeline_db_round_trips_total", &[&label]);
        let lookups = total(&m, "ml_pipeline_enrichment_lookups_total", &[&label]);
        // One statement per batch, not per record (the `--ready` ping is one more).
        assert!(
            trips >= 2.0 && trips * 10.0 < lookups,
            "{source}: {trips} round trips for {lookups} lookups"
        );
    }
    assert_eq!(total(&m, "ml_pipeline_in_flight_messages", &[]), 0.0);
    let version = t.holder.current().version;
    assert_eq!(
        total(
            &m,
            "ml_pipeline_model_info",
            &[&format!("version=\"{version}\"")]
        ),
        1.0
    );

    // A real SIGTERM: the worker drains and exits 0.
    let pid = running.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = running.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "worker did not stop after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "worker exit after SIGTERM: {status}");

    // Every log line is JSON; every answered bundle logged once, in its own span.
    let log = std::fs::read_to_string(&running.log).unwrap();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let answered: Vec<&Value> = lines
        .iter()
        .filter(|l| l["message"] == "bundle answered")
        .collect();
    assert_eq!(answered.len(), bundles.len(), "one line per bundle");
    for line in &answered {
        let span = &line["span"];
        assert_eq!(span["name"], "bundle");
        assert!(span["bundle_id"].as_str().is_some_and(|s| !s.is_empty()));
        assert!(span["message_id"].as_str().is_some_and(|s| !s.is_empty()));
        assert_eq!(span["model_version"], version);
        assert!(span["records"].as_u64().is_some_and(|r| r > 0));
    }
    assert!(lines.iter().any(|l| l["message"] == "SIGTERM received"));
    assert!(lines.iter().any(|l| l["message"] == "worker stopped"));
    let password = "ml_pipeline:ml_pipeline";
    assert!(!log.contains(password), "a secret reached the log");
    let _ = std::fs::remove_file(&running.log);
}
