//! The learning loop end to end on the real services: traffic answered and logged, feedback in
//! both formats (and malformed, unmatched and repeated feedback), `retrain` promoting a better
//! challenger, the worker switching to it without a restart, and the gate keeping the champion
//! when the challenger is no better.

use crate::common;

use common::harness::{fixture_bundles, TestWorker};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ml_pipeline::bundle::compression::ContentEncoding;
use ml_pipeline::learning::prediction_log;
use ml_pipeline::learning::retrain::{retrain, RetrainOptions, RetrainOutcome, Trigger};
use ml_pipeline::learning::LogMode;
use ml_pipeline::queue::{Outgoing, Queue, SqsQueue};
use ml_pipeline::worker::feedback::FeedbackConsumer;
use ml_pipeline::worker::Hooks;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// A weak champion: trained on a tenth of the notes, with three labels in ten of those flipped
/// (the predecessor's noisy first labelling). Published and made `production`.
async fn weak_champion(t: &TestWorker) -> u64 {
    let pool = &t.loaded.db.pool;
    sqlx::query(
        "INSERT INTO training_examples (dataset, example_id, label, features) \
         SELECT 'base', example_id, \
                CASE WHEN abs(hashtext(example_id || '/flip')) % 10 < 3 THEN 1 - label ELSE label END, \
                features \
         FROM training_examples WHERE dataset = 'default' AND abs(hashtext(example_id)) % 10 = 0",
    )
    .execute(pool)
    .await
    .unwrap();
    let mut opts = common::train_options("linear", false);
    opts.source = ml_pipeline::train::DataSource::Postgres {
        dataset: "base".into(),
    };
    let (report, _) = ml_pipeline::train::train(&opts, pool, &t.loaded.enricher, Some(&t.registry))
        .await
        .unwrap();
    let version = report.version.unwrap();
    t.registry
        .set_alias("banknote", "production", version, "promote")
        .await
        .unwrap();
    version
}

async fn feedback_queues(t: &TestWorker) -> (SqsQueue, SqsQueue) {
    let id = common::suffix();
    let mut queues = Vec::new();
    for name in [format!("fb-{id}"), format!("fb-{id}-dlq")] {
        let url = t
            .sqs
            .create_queue()
            .queue_name(name)
            .send()
            .await
            .unwrap()
            .queue_url
            .unwrap();
        queues.push(SqsQueue::resolve(t.sqs.clone(), &url).await.unwrap());
    }
    let dlq = queues.pop().unwrap();
    (queues.pop().unwrap(), dlq)
}

async fn send(queue: &SqsQueue, bodies: &[Value]) {
    for chunk in bodies.chunks(10) {
        let msgs: Vec<Outgoing> = chunk
            .iter()
            .map(|b| Outgoing {
                body: b.to_string(),
                attributes: Vec::new(),
                number_attributes: Vec::new(),
                dedup_id: None,
                group_id: None,
            })
            .collect();
        assert!(queue.send_batch(&msgs).await.unwrap().is_empty());
    }
}

async fn wait_for_version(holder: &ml_pipeline::model::holder::ModelHolder, version: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while holder.current().version != version {
        assert!(
            std::time::Instant::now() < deadline,
            "the worker still serves version {} instead of {version}",
            holder.current().version
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn feedback_retrains_a_better_model_and_the_worker_switches_to_it_without_a_restart() {
    let t = TestWorker::new(30).await;
    let set = common::default_fixtures();
    let pool = t.loaded.db.pool.clone();
    let champion = weak_champion(&t).await;
    let stop = CancellationToken::new();
    tokio::spawn(
        t.holder
            .clone()
            .run(Duration::from_millis(200), stop.clone()),
    );
    wait_for_version(&t.holder, champion).await;

    // Traffic, every prediction logged.
    let log = prediction_log::start(pool.clone(), LogMode::All, 30);
    let worker = t.worker_logging(t.config(), Hooks::default(), Some(log.clone()));
    let token = CancellationToken::new();
    let running = tokio::spawn(Arc::clone(&worker).run(token.clone()));
    t.send_json(&fixture_bundles(), ContentEncoding::Identity)
        .await;
    let outputs = t.outputs(set.bundles.len() + set.seed_bundles.len()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let written = log.close(deadline).await.expect("the log writer finishes");
    let predicted: usize = outputs
        .iter()
        .map(|o| {
            o["rows"]
                .as_array()
                .map_or_else(|| o["output"].as_array().unwrap().len(), Vec::len)
        })
        .sum();
    assert_eq!(
        written.written as usize, predicted,
        "every answered prediction is logged"
    );
    assert!(written.copies >= 1);
    let (partitions,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'prediction_log'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(
        partitions >= 2,
        "today's partition and tomorrow's exist ({partitions})"
    );

    // Feedback in the predecessor's format: 1 where the answer was right, 0 where wrong.
    let notes: HashMap<&str, u8> = set
        .notes
        .iter()
        .map(|n| (n.note_id.as_str(), n.label))
        .collect();
    let mut feedback = Vec::new();
    let mut wrong = 0;
    let mut rated = 0;
    for out in outputs.iter().filter(|o| o.get("bundle_id").is_some()) {
        assert_eq!(out["model_version"], champion.to_string());
        let rows = out["rows"].as_array().unwrap();
        let subjects: Vec<&str> = rows.iter().map(|r| r[0].as_str().unwrap()).collect();
        let ratings: Vec<u8> = rows
            .iter()
            .map(|r| {
                let truth = notes[set.expectations[r[0].as_str().unwrap()].note_id.as_str()];
                u8::from((r[1] == "real") == (truth == 1))
            })
            .collect();
        wrong += ratings.iter().filter(|r| **r == 0).count();
        rated += ratings.len();
        feedback
            .push(json!({"batch_id": out["bundle_id"], "subjects": subjects, "ratings": ratings}));
    }
    assert!(
        wrong > 20,
        "the weak champion is wrong on some of {rated} notes: {wrong}"
    );
    // This project's format, for two records of the first bundle, and a repeat of the first
    // message (idempotent).
    let first = &outputs
        .iter()
        .find(|o| o.get("bundle_id").is_some())
        .unwrap();
    let labelled: Vec<Value> = first["rows"].as_array().unwrap()[..2]
        .iter()
        .map(|r| {
            let truth = notes[set.expectations[r[0].as_str().unwrap()].note_id.as_str()];
            json!([r[0], if truth == 1 { "real" } else { "fake" }])
        })
        .collect();
    feedback.push(json!({"bundle_id": first["bundle_id"], "labels": labelled}));
    feedback.push(feedback[0].clone());
    // Unmatched (a bundle never predicted) and malformed feedback.
    feedback.push(json!({"batch_id": "never-sent", "subjects": ["x", "y"], "ratings": [1, 0]}));
    feedback.push(json!({"batch_id": "b", "subjects": ["x"], "ratings": [1, 0]}));

    let (queue, dlq) = feedback_queues(&t).await;
    send(&queue, &feedback).await;
    let consumer = FeedbackConsumer {
        queue,
        dlq: Some(dlq.clone()),
        pool: pool.clone(),
        dataset: "feedback".into(),
        max_body_bytes: 1 << 20,
        max_message_bytes: 1 << 20,
        retry: Default::default(),
    };
    let report = consumer.drain(1).await.unwrap();
    let first_items = feedback[0]["subjects"].as_array().unwrap().len();
    assert_eq!(report.messages, feedback.len(), "{report}");
    assert_eq!(report.dead_lettered, 1, "{report}");
    assert_eq!(report.applied, feedback.len() - 1, "{report}");
    assert_eq!(
        report.items.added, rated,
        "one example per rated record: {report}"
    );
    assert_eq!(report.items.not_logged, 2, "{report}");
    // The labels agree with the ratings, and the repeated message changes nothing.
    assert_eq!(report.items.unchanged, 2 + first_items, "{report}");
    let dead = t.drain(dlq.url(), 1, Duration::from_secs(10)).await;
    assert_eq!(dead[0].1["error-stage"], "feedback");
    assert!(
        dead[0].1["error-reason"].contains("1 subjects but 2 ratings"),
        "{:?}",
        dead[0].1
    );

    // Every example has its provenance; a rating of 0 flipped the predicted class.
    let (examples, flipped, with_provenance): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE label <> (provenance->>'predicted_class')::int2), \
                count(*) FILTER (WHERE provenance->>'model_version' = $1 AND provenance ? 'feedback_message_id') \
         FROM training_examples WHERE dataset = 'feedback'",
    )
    .bind(champion.to_string())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (
            examples as usize,
            flipped as usize,
            with_provenance as usize
        ),
        (rated, wrong, rated)
    );

    // Retrain: the challenger learns from the feedback, and only a better one is promoted.
    let opts = RetrainOptions {
        model: "banknote".into(),
        alias: "production".into(),
        base_dataset: None,
        feedback_dataset: "feedback".into(),
        min_new_examples: 500,
        max_hours: 1000.0,
        drift_minutes: 0.0,
        drift_threshold: 0.2,
        challenger_alias: None,
        force: false,
        margin: 0.005,
        gate_share: 0.2,
        search: None,
        kernel_cache_bytes: 64 << 20,
        html_report: None,
    };
    let outcome = retrain(&opts, &pool, &t.loaded.enricher, &t.registry)
        .await
        .unwrap();
    let RetrainOutcome::Ran(ran) = &outcome else {
        panic!("{rated} new examples start a retrain: {outcome}")
    };
    let d = &ran.decision;
    assert!(
        matches!(ran.trigger, Trigger::NewExamples { .. }),
        "{outcome}"
    );
    assert_eq!(d.champion_version, champion);
    assert_eq!(d.champion.rows, d.challenger.rows, "the same held-out rows");
    assert!(d.promoted, "{outcome}");
    assert!(
        d.challenger.accuracy > d.champion.accuracy + 0.005,
        "{outcome}"
    );
    let (kind, promoted, reason, status): (String, bool, String, String) = sqlx::query_as(
        "SELECT kind, (decision->>'promoted')::bool, trigger->>'reason', status FROM training_jobs WHERE job_id = $1",
    )
    .bind(ran.train.job_id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (kind.as_str(), promoted, reason.as_str(), status.as_str()),
        ("retrain", true, "new_examples", "succeeded")
    );
    let challenger = d.challenger_version;
    let alias = t
        .registry
        .alias("banknote", "production")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(alias.record.version, challenger);

    // The running worker switches to the challenger without a restart.
    wait_for_version(&t.holder, challenger).await;
    t.send_json(&fixture_bundles()[..2], ContentEncoding::Identity)
        .await;
    for out in t.outputs(2).await {
        assert_eq!(out["model_version"], challenger.to_string());
    }
    token.cancel();
    assert!(running.await.unwrap().drained);

    // Nothing new since: not due. Forced with no new feedback: the same data makes a challenger
    // no better than the champion, which is kept.
    let again = retrain(&opts, &pool, &t.loaded.enricher, &t.registry)
        .await
        .unwrap();
    assert!(matches!(again, RetrainOutcome::NotDue { .. }), "{again}");
    let forced = RetrainOptions {
        force: true,
        ..opts.clone()
    };
    let kept = retrain(&forced, &pool, &t.loaded.enricher, &t.registry)
        .await
        .unwrap();
    let RetrainOutcome::Ran(kept) = kept else {
        panic!("a forced retrain runs")
    };
    assert!(!kept.decision.promoted, "{}", kept.decision.reason);
    assert!(
        kept.decision.reason.contains("kept the champion"),
        "{}",
        kept.decision.reason
    );
    assert_eq!(kept.decision.champion_version, challenger);
    let alias = t
        .registry
        .alias("banknote", "production")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(alias.record.version, challenger, "the alias did not move");
    stop.cancel();
}

/// Every column of a logged row reads back from PostgreSQL as it was logged: the binary `COPY`
/// of each type, texts with the characters the text format had to escape, and the floats that
/// text could only name (NaN, the infinities, -0, a subnormal, the largest).
#[tokio::test]
async fn the_log_reads_back_from_postgres_exactly_as_logged() {
    use chrono::{DateTime, Utc};
    use prediction_log::{LogBatch, LoggedBundle, LoggedRecord, ModelFacts, ShadowPrediction};

    let db = common::TestDb::new().await;
    let log = prediction_log::start(db.pool.clone(), LogMode::All, 30);
    let predicted_at = DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).unwrap();
    let features = vec![
        0.1,
        -0.0,
        f64::MIN_POSITIVE / 4.0,
        f64::MAX,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
    ];
    let bundle_id = format!("b\t{}\\", common::suffix());
    let records = vec![
        LoggedRecord {
            record_id: "r-1\n\r é — 😀".into(),
            position: 0,
            class: 1,
            score: 0.1 + 0.2,
            features: features.clone(),
            shadow_row: Some(0),
            shadow: Some(ShadowPrediction {
                version: (1 << 40) + 1,
                class: 0,
                score: -0.0,
                latency_ratio: Some(f64::MIN_POSITIVE / 4.0),
            }),
        },
        LoggedRecord {
            record_id: "r-2".into(),
            position: 7,
            class: 0,
            score: -1e-300,
            features: Vec::new(),
            shadow_row: None,
            shadow: None,
        },
    ];
    let model = Arc::new(ModelFacts {
        name: "banknote\tv".into(),
        version: 1 << 40,
        features: vec!["a".into()],
        classes: vec!["fake".into(), "real".into()],
    });
    log.submit(LogBatch {
        model,
        predicted_at,
        bundles: vec![LoggedBundle {
            bundle_id: bundle_id.clone(),
            records: records.clone(),
        }],
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let summary = log.close(deadline).await.expect("the log writer finishes");
    assert_eq!((summary.written, summary.failed), (2, 0));

    type Row = (
        DateTime<Utc>,
        String,
        String,
        i32,
        String,
        i64,
        i16,
        f64,
        Vec<f64>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT predicted_at, bundle_id, record_id, position, model_name, model_version, class, \
                score, features \
         FROM prediction_log ORDER BY position",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 2);
    for (row, logged) in rows.iter().zip(&records) {
        let (at, bundle, record, position, name, version, class, score, got) = row;
        assert_eq!(*at, predicted_at);
        assert_eq!((bundle, record), (&bundle_id, &logged.record_id));
        assert_eq!(*position as u32, logged.position);
        assert_eq!((name.as_str(), *version), ("banknote\tv", 1_i64 << 40));
        assert_eq!(
            (*class, score.to_bits()),
            (logged.class, logged.score.to_bits())
        );
        let bits = |v: &[f64]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(got), bits(&logged.features), "{got:?}");
    }
    // The array is the one `{...}` gave: one dimension from 1, and the empty one has none.
    let (dims, empty): (Option<String>, Option<String>) = sqlx::query_as(
        "SELECT (SELECT array_dims(features) FROM prediction_log WHERE position = 0), \
                (SELECT array_dims(features) FROM prediction_log WHERE position = 7)",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((dims.as_deref(), empty), (Some("[1:7]"), None));
    // The shadow's prediction, beside the first record only.
    type Shadow = (Option<i64>, Option<i16>, Option<f64>, Option<f64>);
    let shadows: Vec<Shadow> = sqlx::query_as(
        "SELECT shadow_version, shadow_class, shadow_score, shadow_latency_ratio \
         FROM prediction_log ORDER BY position",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let (version, class, score, ratio) = shadows[0];
    assert_eq!((version, class), (Some((1 << 40) + 1), Some(0)));
    assert_eq!(score.map(f64::to_bits), Some((-0.0_f64).to_bits()));
    assert_eq!(ratio, Some(f64::MIN_POSITIVE / 4.0));
    assert_eq!(shadows[1], (None, None, None, None));
}
