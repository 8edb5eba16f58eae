//! The demo's learning loop. The first model is trained on the predecessor's first labelling:
//! a tenth of the notes, three labels in ten of them wrong. After the answers, users' feedback
//! in the predecessor's format (`{batch_id, subjects, ratings}`, 1 where the answer was right,
//! 0 where it was wrong) goes to the feedback queue; the worker joins it with its prediction log
//! into labelled examples; `retrain` trains a challenger on the first labels plus the feedback,
//! scores both on the same held-out rows and promotes the challenger only if it is better; the
//! running worker then answers with it, without a restart.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use ml_pipeline::db::PgPool;
use serde_json::{json, Value};

use ml_pipeline::fixtures::FixtureSet;
use ml_pipeline::learning::retrain::{RetrainOptions, RetrainOutcome};
use ml_pipeline::model::holder::ModelHolder;
use ml_pipeline::queue::{Outgoing, Queue, SqsQueue};
use ml_pipeline::settings::Settings;

/// The dataset of the first labelling.
pub const FIRST_LABELS: &str = "first-labels";

/// Writes the first labelling into `training_examples`: a tenth of `from`'s notes, three
/// labels in ten flipped ([`ml_pipeline::fixtures::load::noisy_labelling`]). Returns (rows,
/// flipped).
pub async fn first_labels(pool: &PgPool, from: &str) -> anyhow::Result<(i64, i64)> {
    ml_pipeline::fixtures::load::noisy_labelling(pool, from, FIRST_LABELS)
        .await
        .context("writing the demo's first labelling")
}

/// Feedback on the v1 answers in the predecessor's format: per bundle, its record ids and 1
/// where the answer agrees with the note's true class, 0 where not. Returns the messages and
/// (records rated, rated wrong).
fn ratings(set: &FixtureSet, answers: &[Value]) -> (Vec<Value>, usize, usize) {
    let truth: HashMap<&str, u8> = set
        .notes
        .iter()
        .map(|n| (n.note_id.as_str(), n.label))
        .collect();
    let (mut rated, mut wrong) = (0, 0);
    let mut messages = Vec::new();
    for a in answers {
        let Some(rows) = a.get("rows").and_then(Value::as_array) else {
            continue;
        };
        let mut subjects = Vec::new();
        let mut marks = Vec::new();
        for row in rows {
            let Some(id) = row[0].as_str() else { continue };
            let Some(label) = set
                .expectations
                .get(id)
                .and_then(|e| truth.get(e.note_id.as_str()))
            else {
                continue;
            };
            let right = (row[1] == "real") == (*label == 1);
            subjects.push(id.to_owned());
            marks.push(u8::from(right));
            rated += 1;
            wrong += usize::from(!right);
        }
        messages.push(json!({"batch_id": a["bundle_id"], "subjects": subjects, "ratings": marks}));
    }
    (messages, rated, wrong)
}

/// What the loop needs of the running demo.
pub struct Running<'a> {
    /// The settings the worker runs with (its feedback queue among them).
    pub settings: &'a Settings,
    /// The database.
    pub pool: &'a PgPool,
    /// The worker's model holder.
    pub holder: &'a ModelHolder,
    /// The input queue, for the bundles sent after the switch.
    pub input: &'a SqsQueue,
    /// The output queue.
    pub output: &'a SqsQueue,
    /// When the demo started: predictions logged before are an earlier run's.
    pub started: chrono::DateTime<chrono::Utc>,
}

/// Steps 6 to 9 of the demo.
pub async fn run(
    r: &Running<'_>,
    set: &FixtureSet,
    answers: &[Value],
    bundles: &[Value],
) -> anyhow::Result<()> {
    let name = r.settings.feedback_queue.as_deref().context(
        "no feedback queue (ML_PIPELINE_FEEDBACK_QUEUE): run localstack/up.sh, which deploys it",
    )?;
    let sqs = ml_pipeline::startup::sqs(Duration::from_secs(30)).await;
    let queue = SqsQueue::resolve(sqs, name).await?;
    let (messages, rated, wrong) = ratings(set, answers);
    // The log is written behind the answers: wait until it holds them, as users' feedback,
    // minutes later, would find it.
    let ids: Vec<String> = messages
        .iter()
        .filter_map(|m| m["batch_id"].as_str().map(str::to_owned))
        .collect();
    let logged_by = Instant::now() + Duration::from_secs(30);
    while ml_pipeline::learning::prediction_log::logged_records(r.pool, &ids, r.started).await?
        < rated as i64
    {
        anyhow::ensure!(
            Instant::now() < logged_by,
            "the prediction log did not hold the {rated} answers within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sent_at = chrono::Utc::now();
    for chunk in messages.chunks(10) {
        let out: Vec<Outgoing> = chunk
            .iter()
            .map(|m| Outgoing {
                body: m.to_string(),
                attributes: Vec::new(),
                number_attributes: Vec::new(),
                dedup_id: None,
                group_id: None,
            })
            .collect();
        let failed = queue.send_batch(&out).await?;
        anyhow::ensure!(failed.is_empty(), "feedback not accepted: {failed:?}");
    }
    println!(
        "6. feedback sent in the predecessor's format: {} messages rating {rated} answers, {wrong} of them wrong (rating 0)",
        messages.len()
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let applied = loop {
        let since = sent_at - chrono::TimeDelta::seconds(5);
        let totals = ml_pipeline::learning::feedback::totals(r.pool, since).await?;
        if totals.messages >= messages.len() as i64 {
            break totals;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the worker applied {} of {} feedback messages within 60 s",
            totals.messages,
            messages.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!(
        "7. the worker applied the feedback: {} examples written to dataset {} with their provenance ({} of them relabelled), {} unchanged, {} with no logged prediction",
        applied.added + applied.changed,
        r.settings.feedback_dataset,
        applied.changed,
        applied.unchanged,
        applied.not_logged + applied.ambiguous
    );
    let opts = RetrainOptions {
        drift_minutes: 0.0,
        challenger_alias: None,
        ..ml_pipeline::commands::learning::retrain_options(r.settings)
    };
    let mut outcome = ml_pipeline::commands::learning::run(r.settings, &opts).await?;
    println!("8. ml-pipeline retrain:");
    if let RetrainOutcome::NotDue { .. } = outcome {
        // An earlier demo on this stack already turned the same answers into examples.
        print!("   {outcome}");
        println!("   so: ml-pipeline retrain --force");
        let forced = RetrainOptions {
            force: true,
            ..opts
        };
        outcome = ml_pipeline::commands::learning::run(r.settings, &forced).await?;
    }
    for line in outcome.to_string().lines() {
        println!("   {line}");
    }
    let RetrainOutcome::Ran(ran) = &outcome else {
        anyhow::bail!("retrain did not run: {outcome}");
    };
    let version = ran.decision.challenger_version;
    anyhow::ensure!(
        ran.decision.promoted,
        "the challenger was not promoted: {}",
        ran.decision.reason
    );
    let switched = Instant::now();
    while r.holder.current().version != version {
        anyhow::ensure!(
            switched.elapsed() < Duration::from_secs(60),
            "the worker did not switch to version {version} within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let again = &bundles[..2.min(bundles.len())];
    let answers = super::send_and_read(r, again).await?;
    let versions: Vec<String> = answers
        .iter()
        .filter_map(|a| {
            a.get("model_version")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .collect();
    println!(
        "9. the running worker switched to version {version} after {:.1}s without a restart: {} bundles sent again were answered by version {}",
        switched.elapsed().as_secs_f64(),
        answers.len(),
        versions.join(", ")
    );
    Ok(())
}
