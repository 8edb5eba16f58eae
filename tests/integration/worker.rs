//! The worker against the real services, each test on its own queues, bucket and databases.

use crate::common;

use common::harness::{fixture_bundles, messages_on, TestWorker};

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::QueueAttributeName;
use ml_pipeline::batch::{prepare, Slot};
use ml_pipeline::bundle::compression::ContentEncoding;
use ml_pipeline::bundle::InputBundle;
use ml_pipeline::fixtures::PoisonExpect;
use ml_pipeline::queue::Queue;
use ml_pipeline::spec::PipelineSpec;
use ml_pipeline::worker::{decode_all, Hooks, WorkerConfig};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// Every record exactly once; planted errors with their reasons; predictions equal the model's
/// on the canonical features; seed bundles answered in the predecessor's format.
#[tokio::test]
async fn every_record_is_answered_exactly_once_with_canonical_predictions() {
    let t = TestWorker::new(30).await;
    let set = common::default_fixtures();
    let (token, handle) = t.spawn(t.config(), Hooks::default());
    t.send_json(&fixture_bundles(), ContentEncoding::Identity)
        .await;
    let outputs = t.outputs(set.bundles.len() + set.seed_bundles.len()).await;
    token.cancel();
    assert!(handle.await.unwrap().drained);
    assert_eq!(outputs.len(), set.bundles.len() + set.seed_bundles.len());

    let model = t.holder.current();
    let notes: HashMap<&str, &ml_pipeline::fixtures::Note> =
        set.notes.iter().map(|n| (n.note_id.as_str(), n)).collect();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for out in outputs.iter().filter(|o| o.get("bundle_id").is_some()) {
        assert_eq!(out["model_version"], model.version.to_string());
        assert_eq!(
            out["columns"],
            serde_json::json!(["id", "label", "score", "issuer"])
        );
        for row in out["rows"].as_array().unwrap() {
            let id = row[0].as_str().unwrap();
            *seen.entry(id.to_owned()).or_default() += 1;
            let exp = &set.expectations[id];
            assert_eq!(exp.error, None, "{id} was planted bad but predicted");
            let note = notes[exp.note_id.as_str()];
            let want = model.classifier.decision_values(
                ndarray::Array2::from_shape_vec((1, 4), note.features().to_vec()).unwrap(),
            )[0];
            let got = row[2].as_f64().unwrap();
            assert!(
                (got - want).abs() < 1e-9,
                "{id}: score {got} vs canonical {want}"
            );
            assert_eq!(row[1], if want >= 0.0 { "real" } else { "fake" });
        }
        for err in out["errors"].as_array().unwrap() {
            let id = err[0].as_str().unwrap();
            *seen.entry(id.to_owned()).or_default() += 1;
            let want = set.expectations[id]
                .error
                .as_deref()
                .unwrap_or_else(|| panic!("{id} failed: {}", err[1]));
            assert!(
                err[1].as_str().unwrap().contains(want),
                "{id}: '{}' lacks '{want}'",
                err[1]
            );
        }
    }
    assert_eq!(seen.len(), set.expectations.len(), "every record appears");
    assert!(seen.values().all(|n| *n == 1), "no record appears twice");

    for seed in &set.seed_bundles {
        let out = outputs
            .iter()
            .find(|o| o["batch_id"] == seed.batch_id.as_str())
            .expect("seed bundle answered");
        assert_eq!(
            out["subjects"],
            serde_json::to_value(&seed.subjects).unwrap()
        );
        assert_eq!(out["input"], serde_json::to_value(&seed.features).unwrap());
        for (i, f) in seed.features.iter().enumerate() {
            let s = model
                .classifier
                .decision_values(ndarray::Array2::from_shape_vec((1, 4), f.clone()).unwrap())[0];
            assert_eq!(out["output"][i], if s >= 0.0 { "real" } else { "fake" });
        }
    }
    let (n,): (i64,) =
        sqlx::query_as("SELECT COALESCE(sum(predictions), 0)::int8 FROM prediction_aggregates")
            .fetch_one(&t.loaded.db.pool)
            .await
            .unwrap();
    assert_eq!(
        n as usize,
        seen.len()
            - set
                .expectations
                .values()
                .filter(|e| e.error.is_some())
                .count()
    );
}

#[tokio::test]
async fn rebuilt_features_equal_the_canonical_ones_for_the_whole_fixture_set() {
    let loaded = common::Loaded::new().await;
    let set = common::default_fixtures();
    // Seed bundles first: their rows take matrix rows too, and report nothing.
    let seeds = set.seed_bundles.len();
    let bundles: Vec<InputBundle> = set
        .seed_bundles
        .iter()
        .cloned()
        .map(InputBundle::Seed)
        .chain(set.bundles.iter().cloned().map(InputBundle::Request))
        .collect();
    let prepared = prepare(&PipelineSpec::banknote(), &bundles, &loaded.enricher).await;
    assert!(seeds > 0);
    for (seed, plan) in set.seed_bundles.iter().zip(&prepared.plans) {
        for (features, slot) in seed.features.iter().zip(&plan.as_ref().unwrap().slots) {
            let Slot::Row { matrix_row } = slot else {
                panic!("a seed record failed: {slot:?}")
            };
            assert_eq!(prepared.matrix.row(*matrix_row).to_vec(), *features);
            assert_eq!(&*prepared.reported(*matrix_row)[0], "");
        }
    }
    let mut checked = 0;
    for (bundle, plan) in set.bundles.iter().zip(&prepared.plans[seeds..]) {
        let plan = plan.as_ref().unwrap();
        for (row, slot) in bundle.rows.iter().zip(plan.slots.iter().cloned()) {
            let exp = &set.expectations[row.get(0).as_str().unwrap()];
            match (slot, &exp.error) {
                (Slot::Row { matrix_row }, None) => {
                    let note = set.notes.iter().find(|n| n.note_id == exp.note_id).unwrap();
                    for (got, want) in prepared.matrix.row(matrix_row).iter().zip(note.features()) {
                        assert!(
                            (got - want).abs() <= 1e-9 * want.abs().max(1.0),
                            "{}: {got} vs {want}",
                            exp.note_id
                        );
                    }
                    let reported: Vec<&str> =
                        prepared.reported(matrix_row).iter().map(|v| &**v).collect();
                    assert_eq!(reported, [note.issuer_code.as_str()]);
                    checked += 1;
                }
                (Slot::Failed(e), Some(want)) => {
                    assert!(e.to_string().contains(want.as_str()), "{e} lacks {want}")
                }
                (slot, want) => panic!("{}: {slot:?}, expected {want:?}", exp.note_id),
            }
        }
    }
    assert!(checked > 1900, "{checked}");
}

#[tokio::test]
async fn one_round_trip_per_source_per_batch() {
    let t = TestWorker::new(30).await;
    let worker = t.worker(t.config(), Hooks::default());
    t.send_json(&fixture_bundles()[..10], ContentEncoding::Identity)
        .await;
    let mut messages = Vec::new();
    while messages.len() < 10 {
        messages.extend(t.input.receive(10, 1).await.unwrap());
    }
    let report = worker
        .process(decode_all(messages, &worker.config.limits))
        .await;
    assert_eq!(
        (report.messages, report.answered, report.deleted),
        (10, 10, 10)
    );
    assert_eq!(report.records, 1000);
    assert_eq!(
        t.pg_calls.load(Ordering::SeqCst),
        1,
        "one PostgreSQL round trip for 1000 records"
    );
    assert_eq!(
        t.mongo_calls.load(Ordering::SeqCst),
        1,
        "one MongoDB round trip for 1000 records"
    );
}

#[tokio::test]
async fn gzip_and_zstd_bodies_both_ways() {
    for enc in [ContentEncoding::Gzip, ContentEncoding::Zstd] {
        let t = TestWorker::new(30).await;
        let (token, handle) = t.spawn(
            WorkerConfig {
                output_encoding: enc,
                ..t.config()
            },
            Hooks::default(),
        );
        t.send_json(&fixture_bundles()[..3], enc).await;
        let outs = t.drain(t.output.url(), 3, Duration::from_secs(30)).await;
        token.cancel();
        handle.await.unwrap();
        assert_eq!(outs.len(), 3, "{enc}");
        for (body, attrs) in outs {
            assert_eq!(
                attrs.get("content-encoding").map(String::as_str),
                enc.attribute()
            );
            assert_eq!(
                body["rows"].as_array().unwrap().len() + body["errors"].as_array().unwrap().len(),
                100
            );
            assert_eq!(attrs["bundle_id"], body["bundle_id"].as_str().unwrap());
        }
    }
}

#[tokio::test]
async fn every_poison_bundle_lands_where_it_should_and_good_traffic_flows() {
    let t = TestWorker::new(30).await;
    let set = common::default_fixtures();
    let (token, handle) = t.spawn(t.config(), Hooks::default());
    let mut bodies: Vec<(String, Option<&str>)> = set
        .poison
        .iter()
        .map(|c| (c.body.clone(), c.content_encoding.as_deref()))
        .collect();
    let good: Vec<Value> = fixture_bundles()[..3].to_vec();
    bodies.extend(good.iter().map(|b| (b.to_string(), None)));
    t.send(&bodies).await;
    let dead_expected = set
        .poison
        .iter()
        .filter(|c| matches!(c.expect, PoisonExpect::DeadLetter { .. }))
        .count();
    let answered_expected = set.poison.len() - dead_expected + good.len();
    let outs = t.outputs(answered_expected).await;
    let dead: Vec<(String, HashMap<String, String>)> = t
        .drain_raw(t.dlq.url(), dead_expected, Duration::from_secs(30))
        .await
        .into_iter()
        .map(|(raw, _, attrs)| (raw, attrs))
        .collect();
    token.cancel();
    let summary = handle.await.unwrap();

    for case in &set.poison {
        match &case.expect {
            PoisonExpect::DeadLetter { reason_contains } => {
                // The DLQ keeps the original body, so each case is found exactly.
                let (_, attrs) = dead
                    .iter()
                    .find(|(body, attrs)| {
                        body == &case.body
                            && attrs.get("content-encoding") == case.content_encoding.as_ref()
                    })
                    .unwrap_or_else(|| panic!("poison case {} is not in the DLQ", case.name));
                let reason = &attrs["error-reason"];
                assert!(
                    reason.contains(reason_contains.as_str()),
                    "poison case {}: reason '{reason}' lacks '{reason_contains}'",
                    case.name
                );
            }
            PoisonExpect::Answered { errors } => {
                let bundle_id = format!("poison-{}", case.name);
                let out = outs
                    .iter()
                    .find(|o| o["bundle_id"] == bundle_id.as_str())
                    .unwrap_or_else(|| panic!("{} not answered", case.name));
                assert_eq!(
                    out["rows"].as_array().unwrap().len() + out["errors"].as_array().unwrap().len(),
                    3 + errors.len()
                );
                for (id, want) in errors {
                    let got = out["errors"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .find(|e| e[0] == id.as_str())
                        .unwrap_or_else(|| panic!("{}: {id} not an error", case.name));
                    assert!(
                        got[1].as_str().unwrap().contains(want.as_str()),
                        "{}: {id}: '{}' lacks '{want}'",
                        case.name,
                        got[1]
                    );
                }
            }
        }
    }
    for (_, attrs) in &dead {
        assert!(attrs.contains_key("error-stage"));
    }
    assert_eq!(summary.dead_lettered, dead_expected);
    assert_eq!(outs.len(), answered_expected);
    assert_eq!(dead.len(), dead_expected);
}

#[tokio::test]
async fn a_slow_batch_keeps_its_visibility_and_is_answered_once() {
    let t = TestWorker::new(2).await;
    let hooks = Hooks {
        before_send: Some(Arc::new(|| {
            Box::pin(tokio::time::sleep(Duration::from_secs(6)))
        })),
    };
    let (token, handle) = t.spawn(
        WorkerConfig {
            visibility_timeout_secs: 2,
            heartbeat_fraction: 0.4,
            ..t.config()
        },
        hooks,
    );
    t.send_json(&fixture_bundles()[..1], ContentEncoding::Identity)
        .await;
    let outs = t.drain(t.output.url(), 2, Duration::from_secs(14)).await;
    token.cancel();
    handle.await.unwrap();
    assert_eq!(
        outs.len(),
        1,
        "a batch slower than the visibility timeout was answered {} times",
        outs.len()
    );
}

#[tokio::test]
async fn sigterm_under_load_drains_without_redelivery_or_duplicates() {
    let t = TestWorker::new(30).await;
    let bundles: Vec<Value> = (0..6)
        .flat_map(|r| {
            fixture_bundles()
                .iter()
                .map(move |b| ml_pipeline::commands::send::with_fresh_id(b, r + 1))
                .collect::<Vec<_>>()
        })
        .collect();
    t.send_json(&bundles, ContentEncoding::Identity).await;
    let (token, handle) = t.spawn(
        WorkerConfig {
            max_batch_records: 500,
            ..t.config()
        },
        Hooks::default(),
    );
    let first = t.drain(t.output.url(), 20, Duration::from_secs(30)).await;
    token.cancel();
    let summary = handle.await.unwrap();
    assert!(summary.drained, "drained within the timeout");
    assert_eq!(summary.left, 0, "nothing in hand was left undeleted");
    let (token, handle) = t.spawn(t.config(), Hooks::default());
    let rest = t
        .drain(
            t.output.url(),
            bundles.len() - first.len(),
            Duration::from_secs(60),
        )
        .await;
    token.cancel();
    handle.await.unwrap();
    let mut ids: Vec<String> = first
        .iter()
        .chain(&rest)
        .map(|(b, _)| {
            b.get("bundle_id")
                .or(b.get("batch_id"))
                .unwrap()
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let total = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), total, "an output was duplicated");
    assert_eq!(total, bundles.len(), "every bundle answered");
}

#[tokio::test]
async fn a_deleted_output_queue_deletes_nothing_and_everything_is_answered_after_it_returns() {
    let t = TestWorker::new(3).await;
    t.sqs
        .delete_queue()
        .queue_url(t.output.url())
        .send()
        .await
        .unwrap();
    let config = WorkerConfig {
        visibility_timeout_secs: 3,
        send_attempts: 2,
        backoff_base: Duration::from_millis(50),
        backoff_max: Duration::from_millis(200),
        ..t.config()
    };
    let (token, handle) = t.spawn(config, Hooks::default());
    t.send_json(&fixture_bundles()[..5], ContentEncoding::Identity)
        .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let visible = messages_on(&t.input).await;
    assert_eq!(visible, 5, "inputs were deleted without their outputs");
    t.sqs
        .create_queue()
        .queue_name(&t.output_name)
        .send()
        .await
        .unwrap();
    let outs = t.drain(t.output.url(), 5, Duration::from_secs(40)).await;
    token.cancel();
    handle.await.unwrap();
    let mut ids: Vec<&str> = outs
        .iter()
        .map(|(b, _)| {
            b.get("bundle_id")
                .or(b.get("batch_id"))
                .unwrap()
                .as_str()
                .unwrap()
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(
        ids.len(),
        5,
        "every bundle answered once the queue returned"
    );
}

#[tokio::test]
async fn a_model_promoted_under_load_shows_up_without_restart() {
    let t = TestWorker::new(30).await;
    let holder = t.holder.clone();
    let poller = CancellationToken::new();
    tokio::spawn(
        holder
            .clone()
            .run(Duration::from_millis(300), poller.clone()),
    );
    let (token, handle) = t.spawn(
        WorkerConfig {
            max_batch_records: 300,
            ..t.config()
        },
        Hooks::default(),
    );
    let bundles: Vec<Value> = fixture_bundles()[..20].to_vec();
    t.send_json(&bundles[..10], ContentEncoding::Identity).await;
    let mut outs = t.outputs(10).await;
    let mut second = common::fixture_artifact();
    let v2 = t.registry.publish(&mut second).await.unwrap();
    ml_pipeline::commands::models::promote(&t.registry, "banknote", v2, "production", false)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while holder.current().version != v2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    t.send_json(&bundles[10..], ContentEncoding::Identity).await;
    outs.extend(t.outputs(10).await);
    token.cancel();
    poller.cancel();
    let summary = handle.await.unwrap();
    assert_eq!(summary.left + summary.dead_lettered, 0, "no failed bundle");
    let versions: std::collections::BTreeSet<String> = outs
        .iter()
        .map(|o| o["model_version"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(versions.len(), 2, "both versions served: {versions:?}");
    assert!(versions.contains(&v2.to_string()));
}

/// A lone bundle starts a batch at once; bundles that arrive while every batch slot is busy are
/// gathered into the next batch, not one batch each.
#[tokio::test]
async fn bundles_arriving_while_every_slot_is_busy_share_the_next_batch() {
    let t = TestWorker::new(30).await;
    let (entered_tx, entered_rx) = tokio::sync::oneshot::channel::<()>();
    let entered = Arc::new(std::sync::Mutex::new(Some(entered_tx)));
    let release = Arc::new(tokio::sync::Notify::new());
    let hook_release = Arc::clone(&release);
    let hooks = Hooks {
        // The first batch holds the only slot until the test releases it.
        before_send: Some(Arc::new(move || {
            let first = entered.lock().unwrap().take();
            let release = Arc::clone(&hook_release);
            Box::pin(async move {
                if let Some(entered) = first {
                    let _ = entered.send(());
                    release.notified().await;
                }
            })
        })),
    };
    let (token, handle) = t.spawn(
        WorkerConfig {
            max_concurrent_batches: 1,
            ..t.config()
        },
        hooks,
    );
    let bundles: Vec<Value> = (0..7)
        .map(|r| ml_pipeline::commands::send::with_fresh_id(&fixture_bundles()[0], r + 1))
        .collect();
    t.send_json(&bundles[..1], ContentEncoding::Identity).await;
    tokio::time::timeout(Duration::from_secs(30), entered_rx)
        .await
        .expect("the first bundle started a batch on its own")
        .unwrap();
    t.send_json(&bundles[1..], ContentEncoding::Identity).await;
    // Wait until the worker holds all seven (SQS counts them in flight), plus a moment for the
    // pollers to hand them over.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let in_flight = t
            .input
            .attribute(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .await
            .unwrap();
        if in_flight.as_deref() == Some("7") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the worker never held all 7 bundles"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    release.notify_one();
    let outs = t.drain(t.output.url(), 7, Duration::from_secs(30)).await;
    token.cancel();
    let summary = handle.await.unwrap();
    assert_eq!(outs.len(), 7);
    assert_eq!(
        (summary.batches, summary.answered),
        (2, 7),
        "one batch for the first bundle, one for the six that waited"
    );
}

/// A record whose scanner ends in NUL (PostgreSQL refuses NUL in text) is that record's error,
/// not an outage: every good bundle of the same batch is answered on its first receive.
#[tokio::test]
async fn a_nul_in_one_key_fails_one_record_and_every_bundle_is_answered_first_time() {
    let t = TestWorker::new(30).await;
    let worker = t.worker(t.config(), Hooks::default());
    let mut bundles: Vec<Value> = fixture_bundles()[..5].to_vec();
    let bad_id = bundles[2]["rows"][0][0].as_str().unwrap().to_owned();
    bundles[2]["rows"][0][3] = Value::from("sc-01\u{0000}");
    t.send_json(&bundles, ContentEncoding::Identity).await;
    let mut messages = Vec::new();
    while messages.len() < 5 {
        messages.extend(t.input.receive(10, 1).await.unwrap());
    }
    assert!(messages.iter().all(|m| m.receive_count == 1));
    let report = worker
        .process(decode_all(messages, &worker.config.limits))
        .await;
    assert_eq!(report.retryable, None, "{report:?}");
    assert_eq!(
        (
            report.answered,
            report.deleted,
            report.left,
            report.dead_lettered
        ),
        (5, 5, 0, 0)
    );
    let answers = t.outputs(5).await;
    let bad = answers
        .iter()
        .find(|a| a["bundle_id"] == bundles[2]["bundle_id"])
        .expect("the bundle with the bad record is answered");
    let error = bad["errors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e[0] == bad_id.as_str())
        .expect("the bad record has its own error");
    assert!(
        error[1]
            .as_str()
            .unwrap()
            .contains("control character U+0000"),
        "{error}"
    );
}

#[tokio::test]
async fn answered_inputs_are_deleted_ten_to_a_call_and_a_graceful_stop_deletes_the_rest() {
    let t = TestWorker::new(3).await;
    let config = WorkerConfig {
        // Longer than the test: only whole sets of ten are deleted before the stop.
        delete_delay: Duration::from_secs(60),
        visibility_timeout_secs: 300,
        ..t.config()
    };
    let (token, handle) = t.spawn(config, Hooks::default());
    let bundles = &fixture_bundles()[..13];
    t.send_json(bundles, ContentEncoding::Identity).await;
    let outs = t.drain(t.output.url(), 13, Duration::from_secs(40)).await;
    assert_eq!(outs.len(), 13, "every bundle answered at once");
    assert_eq!(
        messages_on(&t.input).await,
        3,
        "ten inputs deleted in one call, three waiting for company"
    );
    token.cancel();
    handle.await.unwrap();
    assert_eq!(messages_on(&t.input).await, 0, "the stop deleted the three");
}
