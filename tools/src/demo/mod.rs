//! `ml-pipeline-tools demo`: the whole job end to end on the local services, with a summary a person can check.
//!
//! Fixtures loaded, a model trained and promoted, the worker started, the fixture bundles sent,
//! the answers read back, and a summary printed: records, errors by reason, time per stage, and
//! whether the predictions agree with the model's predictions on the canonical features. Then
//! the learning loop ([`learning`]): feedback in the predecessor's format, `retrain`, and the
//! worker switching to the promoted version. Then the model watch ([`watch`]): shifted traffic
//! raising the PSI, a retrain for drift, its challenger shadow-scored. Then the data side: a provider's second delivery
//! ingested, and the provider report's summary table printed, its HTML and JSON written.

mod learning;
mod watch;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use ndarray::Array2;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use ml_pipeline::bundle::compression::{decompress, ContentEncoding};
use ml_pipeline::fixtures::FixtureSet;
use ml_pipeline::model::artifact::TrainParams;
use ml_pipeline::model::holder::LoadedModel;
use ml_pipeline::queue::Queue;
use ml_pipeline::settings::Settings;

/// Runs the demo: `prepare` loads, trains and promotes; then the worker answers the fixtures.
pub async fn run(
    settings: &Settings,
    fixtures_dir: &Path,
    report_dir: &Path,
) -> anyhow::Result<()> {
    let demo_started = chrono::Utc::now();
    let set = ml_pipeline::fixtures::read_set(fixtures_dir)?;
    let registry = ml_pipeline::startup::registry(settings).await?;
    let pool = ml_pipeline::startup::postgres_migrated(settings, 4).await?;
    let enricher = ml_pipeline::startup::enricher(settings, &pool).await?;
    let mongo = ml_pipeline::startup::mongo(settings).await?;
    let spec = ml_pipeline::spec::PipelineSpec::banknote();
    let loaded = ml_pipeline::fixtures::load::load(&set, &spec, &pool, &mongo, "default").await?;
    println!(
        "1. fixtures loaded: {} reference rows, {} training examples, {} provider documents",
        loaded.reference_rows, loaded.training_rows, loaded.documents
    );

    let (first, flipped) = learning::first_labels(&pool, "default").await?;
    let opts = ml_pipeline::train::TrainOptions {
        spec,
        source: ml_pipeline::train::DataSource::Postgres {
            dataset: learning::FIRST_LABELS.into(),
        },
        params: TrainParams::default(),
        kernel_cache_bytes: ml_pipeline::train::control::DEFAULT_KERNEL_CACHE_BYTES,
        dry_run: false,
        search: None,
        html_report: None,
        trigger: None,
    };
    let (report, _) = ml_pipeline::train::train(&opts, &pool, &enricher, Some(&registry)).await?;
    let version = report.version.expect("published");
    ml_pipeline::commands::models::promote(
        &registry,
        &settings.model_name,
        version,
        &settings.model_alias,
        false,
    )
    .await?;
    println!(
        "2. model trained on the first labelling ({first} notes, {flipped} labels wrong) and promoted: version {version}, CV accuracy {:.2}%, {} support vectors",
        report.metrics.cv_accuracy * 100.0,
        report.metrics.support_vectors
    );

    // Every prediction logged, for the feedback; the alias polled every second.
    let mut settings = settings.clone();
    settings.prediction_log = ml_pipeline::learning::LogMode::All;
    settings.model_poll_secs = 1;
    // Drift and shadow figures every 2 s instead of every minute, every bundle shadowed.
    settings.monitor_interval_secs = 2;
    settings.drift_min_records = 100;
    settings.shadow_alias = Some(watch::CHALLENGER.into());
    settings.shadow_fraction = 1.0;
    let settings = &settings;
    let worker = ml_pipeline::startup::build_worker(settings).await?;
    let model = worker.models.current();
    let holder = worker.models.clone();
    let output = worker.output.clone();
    let input = worker.input.clone();
    let shutdown = CancellationToken::new();
    // /metrics on a free local port, so that the provider report reads the worker's latency.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let metrics_url = format!("http://{}/metrics", listener.local_addr()?);
    let options = ml_pipeline::startup::ServeOptions {
        poll: Duration::from_secs(settings.model_poll_secs.max(1)),
        http: Some(listener),
        metrics: Some(ml_pipeline::instruments::install()?),
        task_protection: None,
    };
    let running = tokio::spawn(ml_pipeline::startup::serve(
        worker,
        options,
        shutdown.clone().cancelled_owned(),
    ));
    println!("3. worker started on {}", input.url());

    let bundles = ml_pipeline::commands::send::read_bundles(fixtures_dir)?;
    let started = Instant::now();
    let sent = send_gzip(&input, &bundles, settings.max_message_bytes).await?;
    println!("4. sent {sent} bundles (gzip) to the input queue");
    let wanted = bundle_ids(&bundles);
    let answers = read_answers(&output, &wanted, Duration::from_secs(120)).await;
    let elapsed = started.elapsed();
    let answers = match answers {
        Ok(answers) => answers,
        Err(e) => {
            shutdown.cancel();
            running.await?;
            return Err(e);
        }
    };
    println!(
        "5. {} of {} bundles answered in {:.2}s",
        answers.len(),
        wanted.len(),
        elapsed.as_secs_f64(),
    );
    print!("{}", summarize(&set, &answers, &model));
    let data_side = async {
        anyhow::ensure!(
            answers.len() == wanted.len(),
            "{} bundles were not answered within 120 s",
            wanted.len() - answers.len()
        );
        let running = learning::Running {
            settings,
            pool: &pool,
            holder: &holder,
            input: &input,
            output: &output,
            started: demo_started,
        };
        learning::run(&running, &set, &answers, &bundles).await?;
        watch::run(&running, &bundles, report_dir).await?;
        provider_delivery(settings, fixtures_dir).await?;
        provider_report(settings, demo_started, &metrics_url, report_dir).await
    }
    .await;
    shutdown.cancel();
    let summary = running.await?;
    println!("13. worker stopped (drained: {})", summary.drained);
    data_side
}

/// The provider report over the demo's traffic: its summary table printed, the whole report
/// written as HTML and JSON, as `ml-pipeline providers report --html --json` does it.
async fn provider_report(
    settings: &Settings,
    since: chrono::DateTime<chrono::Utc>,
    metrics_url: &str,
    report_dir: &Path,
) -> anyhow::Result<()> {
    use ml_pipeline::providers::report;
    let spec = ml_pipeline::spec::PipelineSpec::banknote();
    let pool = ml_pipeline::startup::postgres_migrated(settings, 2).await?;
    let mongo = ml_pipeline::startup::mongo(settings).await?;
    let mut options = report::ReportOptions::since(since, &settings.model_name);
    options.metrics_url = Some(metrics_url.to_owned());
    let r = report::gather(&spec, &pool, &mongo, &options).await?;
    std::fs::create_dir_all(report_dir)?;
    let (html, json) = (
        report_dir.join("providers.html"),
        report_dir.join("providers.json"),
    );
    report::html::write_html(&html, &r)?;
    std::fs::write(&json, serde_json::to_string_pretty(&r)?)?;
    println!("12. provider report over the demo's traffic (ml-pipeline providers report):");
    for line in report::text::summary(&r).lines() {
        println!("   {line}");
    }
    if let Some(pair) = r.agreement.first() {
        for f in &pair.features {
            if let Some(s) = &f.summary {
                println!(
                    "   {} vs {} on {}: {} notes both cover, {} beyond {} (median |diff| {}, p95 {})",
                    pair.providers[0],
                    pair.providers[1],
                    f.feature,
                    s.notes,
                    s.beyond_tolerance,
                    report::text::short(s.tolerance),
                    report::text::short(s.median_abs),
                    report::text::short(s.p95_abs)
                );
            }
        }
    }
    for l in &r.serving.enrichment_latency {
        println!(
            "   worker {} latency: p50 {} ms, p95 {} ms over {} batches",
            l.stage,
            report::text::short(l.p50_ms),
            report::text::short(l.p95_ms),
            l.batches
        );
    }
    println!(
        "   HTML report: {}  JSON: {}",
        html.display(),
        json.display()
    );
    Ok(())
}

/// The data side: a provider's second delivery (updated documents and new notes) ingested with
/// its history kept, as `ml-pipeline providers ingest` does it.
async fn provider_delivery(settings: &Settings, fixtures_dir: &Path) -> anyhow::Result<()> {
    let path = fixtures_dir.join(ml_pipeline::fixtures::files::PROVIDER_UPDATE_FILE);
    let job = ml_pipeline::commands::providers::IngestJob {
        provider: "aurum".into(),
        source: ml_pipeline::providers::DeliverySource::File(path.clone()),
        format: None,
        delivery_id: None,
        batch_docs: ml_pipeline::providers::DEFAULT_BATCH_DOCS,
    };
    let summary = ml_pipeline::commands::providers::ingest(settings, job).await?;
    println!("11. provider aurum's second delivery ({}):", path.display());
    for line in summary.lines() {
        println!("   {line}");
    }
    Ok(())
}

/// Sends `bundles` gzip-compressed to `input`; how many were sent.
async fn send_gzip(
    input: &ml_pipeline::queue::SqsQueue,
    bundles: &[Value],
    max_message_bytes: usize,
) -> anyhow::Result<usize> {
    ml_pipeline::commands::send::send(
        input,
        bundles,
        ContentEncoding::Gzip,
        None,
        max_message_bytes,
    )
    .await
}

/// The bundle ids of `bundles` (`bundle_id`, or the predecessor's `batch_id`).
fn bundle_ids(bundles: &[Value]) -> HashSet<String> {
    bundles
        .iter()
        .filter_map(|b| {
            b.get("bundle_id")
                .or(b.get("batch_id"))?
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

/// Sends `bundles` to the running worker and waits (at most a minute) for their answers.
async fn send_and_read(r: &learning::Running<'_>, bundles: &[Value]) -> anyhow::Result<Vec<Value>> {
    send_gzip(r.input, bundles, r.settings.max_message_bytes).await?;
    read_answers(r.output, &bundle_ids(bundles), Duration::from_secs(60)).await
}

/// Reads (and deletes) answers until every wanted bundle id has one, ignoring others.
async fn read_answers(
    output: &ml_pipeline::queue::SqsQueue,
    wanted: &HashSet<String>,
    timeout: Duration,
) -> anyhow::Result<Vec<Value>> {
    let deadline = Instant::now() + timeout;
    let mut answers: HashMap<String, Value> = HashMap::new();
    while answers.len() < wanted.len() && Instant::now() < deadline {
        let messages = output.receive(10, 1).await?;
        let receipts: Vec<&str> = messages.iter().map(|m| m.receipt_handle.as_str()).collect();
        for m in &messages {
            let enc: ContentEncoding = m
                .content_encoding
                .as_deref()
                .unwrap_or("")
                .parse()
                .unwrap_or_default();
            let Ok(body) = decompress(enc, &m.body, 64 << 20) else {
                continue;
            };
            let Ok(value) = serde_json::from_slice::<Value>(&body) else {
                continue;
            };
            if let Some(id) = value
                .get("bundle_id")
                .or(value.get("batch_id"))
                .and_then(Value::as_str)
            {
                if wanted.contains(id) {
                    answers.insert(id.to_owned(), value);
                }
            }
        }
        if !receipts.is_empty() {
            output.delete_batch(&receipts).await?;
        }
    }
    Ok(answers.into_values().collect())
}

/// The demo's summary table.
fn summarize(set: &FixtureSet, answers: &[Value], model: &LoadedModel) -> String {
    let notes: HashMap<&str, &ml_pipeline::fixtures::Note> =
        set.notes.iter().map(|n| (n.note_id.as_str(), n)).collect();
    let (mut records, mut predicted, mut agree, mut planted_ok) = (0usize, 0usize, 0usize, 0usize);
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut timing: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    for a in answers {
        if let Some(output) = a.get("output").and_then(Value::as_array) {
            records += output.len();
            predicted += output.len();
            continue;
        }
        for (stage, ms) in a["timing_ms"].as_object().into_iter().flatten() {
            let e = timing.entry(stage.clone()).or_default();
            e.0 += ms.as_f64().unwrap_or(0.0);
            e.1 += 1;
        }
        for row in a["rows"].as_array().into_iter().flatten() {
            records += 1;
            predicted += 1;
            let Some(exp) = row[0].as_str().and_then(|id| set.expectations.get(id)) else {
                continue;
            };
            let Some(note) = notes.get(exp.note_id.as_str()) else {
                continue;
            };
            let canonical =
                Array2::from_shape_vec((1, 4), note.features().to_vec()).expect("4 features");
            let want = model.classifier.decision_values(canonical)[0];
            if (row[2].as_f64().unwrap_or(f64::NAN) - want).abs() < 1e-9 {
                agree += 1;
            }
        }
        for err in a["errors"].as_array().into_iter().flatten() {
            records += 1;
            let reason = err[1].as_str().unwrap_or_default();
            *reasons
                .entry(ml_pipeline::record::reason_kind(reason))
                .or_default() += 1;
            let planted = err[0]
                .as_str()
                .and_then(|id| set.expectations.get(id))
                .and_then(|e| e.error.as_deref());
            if planted.is_some_and(|p| reason.contains(p)) {
                planted_ok += 1;
            }
        }
    }
    let errors: usize = reasons.values().sum();
    let mut out = format!("\nsummary (model version {})\n  records    {records}: {predicted} predicted, {errors} per-record errors\n", model.version);
    for (kind, n) in &reasons {
        out.push_str(&format!("             {n:>4}  {kind}\n"));
    }
    out.push_str(&format!("  planted    {planted_ok} of {errors} errors are the planted bad records with the expected reason\n"));
    out.push_str(&format!(
        "  agreement  {agree} of {} v1 predictions equal the model's prediction on the canonical features (|diff| < 1e-9)\n",
        predicted - set.seed_bundles.iter().map(|b| b.features.len()).sum::<usize>()
    ));
    out.push_str("  batch ms  ");
    for (stage, (sum, n)) in &timing {
        out.push_str(&format!(" {stage} {:.2} ms,", sum / *n as f64));
    }
    out.pop();
    out.push('\n');
    out
}
