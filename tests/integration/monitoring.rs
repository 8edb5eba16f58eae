//! Watching the model in production, on the real services: shifted traffic raises the PSI of
//! the served features over its threshold and starts a retrain that records drift as its
//! reason; a shadow model scores the traffic beside production without touching the answers,
//! its predictions logged beside the served ones record by record, and one that cannot load
//! leaves production as it was.

use crate::common;

use common::harness::{fixture_bundles, TestWorker};

use std::sync::Arc;
use std::time::Duration;

use ml_pipeline::bundle::compression::ContentEncoding;
use ml_pipeline::learning::feedback;
use ml_pipeline::learning::prediction_log::{self, PredictionLog};
use ml_pipeline::learning::retrain::{retrain, RetrainOptions, RetrainOutcome, Trigger};
use ml_pipeline::monitor::shadow::Shadow;
use ml_pipeline::monitor::{Interval, Monitor, MonitorConfig};
use ml_pipeline::worker::Hooks;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

fn config() -> MonitorConfig {
    MonitorConfig {
        interval: Duration::from_secs(3600),
        drift_window: Duration::from_secs(600),
        drift_min_records: 100,
        psi_threshold: 0.2,
        emf_namespace: None,
        worker: "test".into(),
    }
}

/// The fixture bundles with every request value of `column` multiplied by `factor`.
fn scaled(column: &str, factor: f64) -> Vec<Value> {
    let mut bundles = fixture_bundles();
    for b in &mut bundles {
        let Some(cols) = b["columns"].as_array() else {
            continue;
        };
        let Some(j) = cols.iter().position(|c| c == column) else {
            continue;
        };
        for row in b["rows"].as_array_mut().unwrap() {
            if let Some(v) = row[j].as_f64() {
                row[j] = (v * factor).into();
            }
        }
    }
    bundles
}

/// Runs the worker over `bundles` until every one is answered.
async fn answer(t: &TestWorker, monitor: &Arc<Monitor>, bundles: &[Value]) -> Vec<Value> {
    answer_logged(t, monitor, None, bundles).await
}

/// [`answer`], keeping the predictions in `log`.
async fn answer_logged(
    t: &TestWorker,
    monitor: &Arc<Monitor>,
    log: Option<PredictionLog>,
    bundles: &[Value],
) -> Vec<Value> {
    let worker = t.worker_with(t.config(), Hooks::default(), log, Some(monitor.clone()));
    let token = CancellationToken::new();
    let running = tokio::spawn(Arc::clone(&worker).run(token.clone()));
    t.send_json(bundles, ContentEncoding::Identity).await;
    let outputs = t.outputs(bundles.len()).await;
    token.cancel();
    running.await.unwrap();
    outputs
}

async fn report(monitor: &Monitor, t: &TestWorker) -> Interval {
    monitor.report(&t.holder.current()).await
}

#[tokio::test]
async fn shifted_traffic_raises_the_psi_over_its_threshold_and_starts_a_retrain_for_drift() {
    let t = TestWorker::new(30).await;
    let pool = t.loaded.db.pool.clone();
    let served = t.holder.current();
    assert!(
        served.artifact.training_stats.is_some(),
        "the model carries its training statistics"
    );

    // Traffic like the training data: no feature drifts.
    let monitor = Arc::new(Monitor::new(config(), "banknote", None, Some(pool.clone())));
    answer(&t, &monitor, &fixture_bundles()).await;
    let calm = report(&monitor, &t).await.drift.expect("enough records");
    assert!(calm.rows >= 100, "{} records in the window", calm.rows);
    for f in &calm.features {
        assert!(
            f.psi < 0.2,
            "{} drifted on unshifted traffic: {f:?}",
            f.feature
        );
    }

    // The same notes with a variance three times as large, in a fresh window: it drifts.
    let monitor = Arc::new(Monitor::new(config(), "banknote", None, Some(pool.clone())));
    answer(&t, &monitor, &scaled("variance", 3.0)).await;
    let shifted = report(&monitor, &t).await.drift.expect("enough records");
    let variance = shifted
        .features
        .iter()
        .find(|f| f.feature == "variance")
        .unwrap();
    assert!(variance.psi > 0.2, "variance tripled: {variance:?}");
    assert!(variance.out_of_range > 0.05, "{variance:?}");
    let entropy = shifted
        .features
        .iter()
        .find(|f| f.feature == "entropy")
        .unwrap();
    assert!(entropy.psi < 0.2, "entropy was not touched: {entropy:?}");

    // The figures reached PostgreSQL, one row per feature.
    let (rows, over): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE psi > 0.2) FROM drift_observations WHERE model_name = 'banknote'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(rows, 8, "two intervals of four features");
    assert!(over >= 1);

    // Drift that stays over the threshold for the configured time starts a retrain.
    let mut opts = RetrainOptions {
        model: "banknote".into(),
        alias: "production".into(),
        base_dataset: Some("default".into()),
        feedback_dataset: "feedback".into(),
        min_new_examples: 500,
        max_hours: 1000.0,
        drift_minutes: 10.0,
        drift_threshold: 0.2,
        challenger_alias: Some("challenger".into()),
        force: false,
        margin: 0.005,
        gate_share: 0.2,
        search: None,
        kernel_cache_bytes: 64 << 20,
        html_report: None,
    };
    // Over the threshold for less than ten minutes: not yet.
    let outcome = retrain(&opts, &pool, &t.loaded.enricher, &t.registry)
        .await
        .unwrap();
    assert!(
        matches!(outcome, RetrainOutcome::NotDue { .. }),
        "{outcome}"
    );
    // A second interval still shifted, and a span the two observations cover.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    report(&monitor, &t).await;
    opts.drift_minutes = 1.0 / 60.0;
    let outcome = retrain(&opts, &pool, &t.loaded.enricher, &t.registry)
        .await
        .unwrap();
    let RetrainOutcome::Ran(ran) = &outcome else {
        panic!("sustained drift starts a retrain: {outcome}");
    };
    let Trigger::Drift { feature, psi, .. } = &ran.trigger else {
        panic!("the trigger is drift: {:?}", ran.trigger);
    };
    assert_eq!(feature, "variance");
    assert!(*psi > 0.2);
    let (reason, drift_feature): (String, String) = sqlx::query_as(
        "SELECT trigger->>'reason', trigger->>'feature' FROM training_jobs WHERE job_id = $1",
    )
    .bind(ran.train.job_id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (reason.as_str(), drift_feature.as_str()),
        ("drift", "variance")
    );
    assert!(outcome.to_string().contains("drift: feature variance"));

    // The challenger it trained carries its own training statistics; if it was not promoted,
    // the challenger alias names it, for the workers to shadow-score.
    let challenger = ran.decision.challenger_version;
    let artifact = t.registry.load("banknote", challenger).await.unwrap();
    assert!(artifact.training_stats.is_some());
    if !ran.decision.promoted {
        let alias = t.registry.alias("banknote", "challenger").await.unwrap();
        assert_eq!(alias.unwrap().record.version, challenger);
    }

    // `models compare` reads it all back, as tables and as a page with the PSI chart.
    let since = chrono::Utc::now() - chrono::TimeDelta::hours(1);
    let comparison = ml_pipeline::commands::compare::read(&pool, "banknote", since, 0.2)
        .await
        .unwrap();
    let text = comparison.to_string();
    assert!(
        text.contains("variance") && text.contains("drifted"),
        "{text}"
    );
    let page = std::env::temp_dir().join(format!("compare-{}.html", common::suffix()));
    ml_pipeline::commands::compare::write_html(&page, &comparison).unwrap();
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains("id=\"psi\"") && html.contains("<svg"));
    let _ = std::fs::remove_file(page);
}

#[tokio::test]
async fn a_shadow_model_scores_the_traffic_beside_production_without_touching_the_answers() {
    let t = TestWorker::new(30).await;
    let pool = t.loaded.db.pool.clone();
    let production = t.holder.current().version;
    // The challenger: a linear model of the same data, under its own alias.
    let (report_, _) = ml_pipeline::train::train(
        &common::train_options("linear", false),
        &pool,
        &t.loaded.enricher,
        Some(&t.registry),
    )
    .await
    .unwrap();
    let challenger = report_.version.unwrap();
    t.registry
        .set_alias("banknote", "challenger", challenger, "promote")
        .await
        .unwrap();
    let shadow = Arc::new(Shadow::new(
        t.registry.clone(),
        "banknote",
        "challenger",
        1.0,
    ));
    assert_eq!(shadow.load().await.unwrap(), challenger);
    let monitor = Arc::new(Monitor::new(
        config(),
        "banknote",
        Some(shadow.clone()),
        Some(pool.clone()),
    ));
    let log = prediction_log::start(pool.clone(), ml_pipeline::learning::LogMode::All, 30);
    let outputs = answer_logged(&t, &monitor, Some(log.clone()), &fixture_bundles()).await;
    for o in outputs.iter().filter(|o| o.get("bundle_id").is_some()) {
        assert_eq!(
            o["model_version"],
            production.to_string(),
            "answers carry the production result only: {o}"
        );
    }
    // The shadow jobs run on blocking threads: wait until each has been tallied.
    let mut tally = ml_pipeline::monitor::shadow::Tally::default();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let records: u64 = outputs
        .iter()
        .map(|o| {
            o["rows"]
                .as_array()
                .map_or_else(|| o["output"].as_array().unwrap().len(), Vec::len) as u64
        })
        .sum();
    loop {
        let interval = report(&monitor, &t).await;
        for ((served, shadowed), t) in interval.shadow {
            assert_eq!((served, shadowed), (production, challenger));
            tally.records += t.records;
            tally.agreed += t.agreed;
            tally.skipped += t.skipped;
            tally.failures += t.failures;
            tally.score_diff_sum += t.score_diff_sum;
        }
        if tally.records + tally.skipped + tally.failures >= records
            || std::time::Instant::now() > deadline
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(tally.records > 0, "{tally:?}");
    assert_eq!(tally.failures, 0);
    let agreement = tally.agreement().unwrap();
    assert!(
        agreement > 0.8 && agreement <= 1.0,
        "a linear and a Gaussian model of the same notes mostly agree: {tally:?}"
    );
    assert!(tally.score_diff_sum > 0.0, "they are different models");
    let (stored, agreed): (i64, i64) = sqlx::query_as(
        "SELECT COALESCE(sum(records), 0)::int8, COALESCE(sum(agreed), 0)::int8 FROM shadow_observations WHERE shadow_alias = 'challenger'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (stored as u64, agreed as u64),
        (tally.records, tally.agreed)
    );
    // Record by record: every scored record is logged with the shadow's prediction beside the
    // served one (a skipped batch's records are logged without it).
    let closing = tokio::time::Instant::now() + Duration::from_secs(30);
    let written = log.close(closing).await.expect("the log writer finished");
    assert_eq!(written.failed, 0);
    let (logged, shadowed, versions, same_class, diff_sum, ratio): (
        i64,
        i64,
        i64,
        i64,
        Option<f64>,
        Option<f64>,
    ) = sqlx::query_as(
        "SELECT count(*), count(shadow_version), count(DISTINCT shadow_version), \
                count(*) FILTER (WHERE shadow_class = class), \
                sum(abs(shadow_score - score)), min(shadow_latency_ratio) \
         FROM prediction_log",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(logged as u64, written.written);
    assert_eq!(
        (shadowed as u64, same_class as u64),
        (tally.records, tally.agreed),
        "the log holds what the tally counted: {tally:?}"
    );
    assert_eq!(logged - shadowed, tally.skipped as i64);
    assert_eq!(versions, 1);
    let diff_sum = diff_sum.unwrap();
    assert!(
        (diff_sum - tally.score_diff_sum).abs() < 1e-6 * tally.score_diff_sum.max(1.0),
        "score differences: logged {diff_sum}, tallied {}",
        tally.score_diff_sum
    );
    assert!(ratio.is_some_and(|r| r > 0.0), "latency ratio {ratio:?}");
    let (version,): (i64,) = sqlx::query_as(
        "SELECT shadow_version FROM prediction_log WHERE shadow_version IS NOT NULL LIMIT 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(version as u64, challenger);
    // Feedback that every served prediction was right: `models compare` judges both versions
    // on those records, the served one right on all, the shadow on those it agreed on.
    let bundles: Vec<(String, Vec<String>)> = sqlx::query_as(
        "SELECT bundle_id, array_agg(record_id) FROM prediction_log \
         WHERE shadow_version IS NOT NULL GROUP BY bundle_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut labelled = 0;
    for (bundle, records) in &bundles {
        let body = serde_json::json!({
            "batch_id": bundle,
            "subjects": records,
            "ratings": vec![1; records.len()],
        });
        let feedback = feedback::parse(body.to_string().as_bytes()).unwrap();
        let origin = feedback::Origin {
            message_id: bundle,
            sent_at: chrono::Utc::now(),
        };
        let applied = feedback::apply(&pool, "feedback", &feedback, &origin)
            .await
            .unwrap();
        labelled += applied.added;
    }
    let since = chrono::Utc::now() - chrono::Duration::hours(1);
    let compared = ml_pipeline::commands::compare::read(&pool, "banknote", since, 0.2)
        .await
        .unwrap();
    let [judged] = compared.judged.as_slice() else {
        panic!("one served/shadow pair: {:?}", compared.judged);
    };
    assert_eq!(
        (judged.version as u64, judged.shadow_version as u64),
        (production, challenger)
    );
    assert_eq!(judged.records as usize, labelled);
    assert_eq!(
        judged.served_right, judged.records,
        "every rating said right"
    );
    if labelled as u64 == tally.records {
        assert_eq!(judged.shadow_right as u64, tally.agreed);
    }
    assert!(compared.to_string().contains("shadow accuracy"));

    // A shadow alias that names nothing: production answers as before, nothing is shadowed.
    let missing = Arc::new(Shadow::new(t.registry.clone(), "banknote", "nobody", 1.0));
    assert!(missing.load().await.is_err());
    let monitor = Arc::new(Monitor::new(config(), "banknote", Some(missing), None));
    let outputs = answer(&t, &monitor, &fixture_bundles()).await;
    assert_eq!(outputs.len(), fixture_bundles().len());
    assert!(report(&monitor, &t).await.shadow.is_empty());
}
