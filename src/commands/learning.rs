//! The learning loop's commands: `feedback drain` and `feedback status` (the feedback queue
//! and what it added), and `retrain` (one retraining run with its champion/challenger gate).

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};

use crate::learning::retrain::{retrain, RetrainOptions, RetrainOutcome};
use crate::settings::Settings;
use crate::worker::feedback::FeedbackReport;

/// `feedback drain`: consumes the feedback queue until a receive waiting `wait_secs` finds it
/// empty, like the worker's consumer does continuously.
pub async fn drain(settings: &Settings, wait_secs: i32) -> anyhow::Result<FeedbackReport> {
    let name = settings.feedback_queue.as_deref().context(
        "no feedback queue: set ML_PIPELINE_FEEDBACK_QUEUE (the stack output FeedbackQueueUrl)",
    )?;
    let pool = crate::startup::postgres_migrated(settings, 2).await?;
    let sqs = crate::startup::sqs(Duration::from_secs(wait_secs.clamp(0, 20) as u64 + 10)).await;
    let config = crate::startup::worker_config(settings, 30);
    let consumer = crate::startup::feedback_consumer(settings, &sqs, name, &pool, &config).await?;
    consumer
        .drain(wait_secs.clamp(0, 20))
        .await
        .context("receiving from the feedback queue")
}

/// `feedback status`: feedback messages applied since `since`, the feedback dataset, and what
/// has accrued towards the next retrain.
pub async fn status(settings: &Settings, since: DateTime<Utc>) -> anyhow::Result<String> {
    let pool = crate::startup::postgres_migrated(settings, 2).await?;
    let (messages, items, added, changed, unchanged, not_logged, ambiguous): (
        i64,
        i64,
        i64,
        i64,
        i64,
        i64,
        i64,
    ) = sqlx::query_as(
        "SELECT count(*), COALESCE(sum(items), 0)::int8, COALESCE(sum(added), 0)::int8, \
               COALESCE(sum(changed), 0)::int8, COALESCE(sum(unchanged), 0)::int8, \
               COALESCE(sum(not_logged), 0)::int8, COALESCE(sum(ambiguous), 0)::int8 \
             FROM feedback_messages WHERE received_at >= $1",
    )
    .bind(since)
    .fetch_one(&pool)
    .await
    .context("reading feedback_messages")?;
    let dataset = &settings.feedback_dataset;
    let (examples, real): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE label = 1) FROM training_examples WHERE dataset = $1",
    )
    .bind(dataset)
    .fetch_one(&pool)
    .await?;
    let (logged,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM prediction_log WHERE predicted_at >= $1")
            .bind(since)
            .fetch_one(&pool)
            .await?;
    let mut out = format!(
        "since {}: {logged} predictions logged; {messages} feedback messages with {items} items: {added} examples added, {changed} changed, {unchanged} unchanged, {not_logged} with no logged prediction, {ambiguous} ambiguous\n",
        since.format("%Y-%m-%d %H:%M UTC")
    );
    writeln!(
        out,
        "dataset {dataset}: {examples} examples ({real} real, {} fake)",
        examples - real
    )?;
    let unmatched: Vec<(String, Vec<String>)> = sqlx::query_as(
        "SELECT bundle_id, unmatched FROM feedback_messages \
         WHERE received_at >= $1 AND cardinality(unmatched) > 0 ORDER BY received_at DESC LIMIT 5",
    )
    .bind(since)
    .fetch_all(&pool)
    .await?;
    for (bundle, ids) in unmatched {
        let shown = ids.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
        let more = ids.len().saturating_sub(5);
        let more = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        writeln!(out, "  unmatched in bundle {bundle}: {shown}{more}")?;
    }
    Ok(out)
}

/// The options of a scheduled `retrain` run with no flags: every figure from the settings
/// (`ML_PIPELINE_RETRAIN_*`, the drift threshold, the shadow alias as the challenger's), the
/// champion's parameters instead of a search, the default kernel cache, no forcing, no report.
pub fn retrain_options(settings: &Settings) -> RetrainOptions {
    RetrainOptions {
        model: settings.model_name.clone(),
        alias: settings.model_alias.clone(),
        base_dataset: settings.retrain_base_dataset.clone(),
        feedback_dataset: settings.feedback_dataset.clone(),
        min_new_examples: settings.retrain_min_new_examples,
        max_hours: settings.retrain_max_hours,
        drift_minutes: settings.retrain_drift_minutes,
        drift_threshold: settings.drift_psi_threshold,
        challenger_alias: settings.shadow_alias.clone(),
        force: false,
        margin: settings.retrain_margin,
        gate_share: crate::learning::retrain::DEFAULT_GATE_SHARE,
        search: None,
        kernel_cache_bytes: crate::train::control::DEFAULT_KERNEL_CACHE_BYTES,
        html_report: None,
    }
}

/// `retrain`: one run; returns its outcome.
pub async fn run(settings: &Settings, opts: &RetrainOptions) -> anyhow::Result<RetrainOutcome> {
    let pool = crate::startup::postgres_migrated(settings, 4).await?;
    // Training from canonical datasets never looks anything up; the enricher is never used.
    let enricher = crate::startup::enricher(settings, &pool).await?;
    let registry = crate::startup::registry(settings).await?;
    retrain(opts, &pool, &enricher, &registry).await
}
