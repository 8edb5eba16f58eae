//! Prometheus metrics: every instrument the worker exports is named, described and recorded
//! here, so one event's metrics come from one place (the place that logs it calls in here).
//!
//! The recorder is process-global ([`install`]); until it is installed every call is a no-op,
//! which is what library users and in-process tests get.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Messages received from the input queue.
pub const MESSAGES_RECEIVED: &str = "ml_pipeline_messages_received_total";
/// Input messages deleted (answered or dead-lettered).
pub const MESSAGES_DELETED: &str = "ml_pipeline_messages_deleted_total";
/// Input messages sent to the dead-letter queue.
pub const MESSAGES_DEAD_LETTERED: &str = "ml_pipeline_messages_dead_lettered_total";
/// Input messages left for SQS to redeliver.
pub const MESSAGES_LEFT: &str = "ml_pipeline_messages_left_total";
/// Records in readable bundles.
pub const RECORDS_IN: &str = "ml_pipeline_records_total";
/// Records the model predicted.
pub const RECORDS_PREDICTED: &str = "ml_pipeline_records_predicted_total";
/// Records answered with an error, by stage and reason.
pub const RECORD_ERRORS: &str = "ml_pipeline_record_errors_total";
/// Enrichment lookups per record, by source and result (hit or miss).
pub const ENRICHMENT: &str = "ml_pipeline_enrichment_lookups_total";
/// Per-record enrichment results per provider: whether its document alone could enrich the note.
pub const PROVIDER_ENRICHMENT: &str = "ml_pipeline_enrichment_provider_lookups_total";
/// Batches left for redelivery because a dependency did not answer.
pub const BATCHES_RETRIED: &str = "ml_pipeline_batches_retried_total";
/// Receive calls that returned, by result: `messages` or `empty`.
pub const RECEIVE_CALLS: &str = "ml_pipeline_receive_calls_total";
/// Pollers receiving now (fewer on an idle queue, one when slowed, none when paused).
pub const POLLERS: &str = "ml_pipeline_pollers_receiving";
/// 1 for the pace the pollers keep now (`polling`, `slowed`, `paused`), 0 for the others.
pub const POLLING_PACE: &str = "ml_pipeline_polling_pace";
/// 1 while a back-pressure condition holds (`output_backlog`, `enrich_latency`, `slots_full`).
pub const BACK_PRESSURE: &str = "ml_pipeline_back_pressure";
/// The output queue's visible messages, as last measured.
pub const OUTPUT_BACKLOG: &str = "ml_pipeline_output_backlog_messages";
/// SQS requests the worker made, answered or not, by kind (the API action: ReceiveMessage,
/// SendMessageBatch, DeleteMessageBatch, ChangeMessageVisibilityBatch, GetQueueAttributes,
/// GetQueueUrl).
pub const SQS_REQUESTS: &str = "ml_pipeline_sqs_requests_total";
/// The same requests as SQS bills them, by kind: each 64 KiB chunk of a request's payload is
/// one billed request.
pub const SQS_BILLABLE_REQUESTS: &str = "ml_pipeline_sqs_billable_requests_total";
/// S3 requests the worker made, answered or not, by kind (GetObject, PutObject, DeleteObject,
/// ListObjectsV2).
pub const S3_REQUESTS: &str = "ml_pipeline_s3_requests_total";
/// Round trips to the enrichment databases, by source (postgres, mongo): statements, finds,
/// the cursor's getMore calls and pings.
pub const DB_ROUND_TRIPS: &str = "ml_pipeline_db_round_trips_total";
/// Receive calls that failed.
pub const RECEIVE_ERRORS: &str = "ml_pipeline_receive_errors_total";
/// Model versions swapped in after start.
pub const MODEL_RELOADS: &str = "ml_pipeline_model_reloads_total";
/// Model reloads that failed (the old version kept serving), by cause: `refused` (once per alias
/// write naming a version that does not validate) or `unavailable` (the registry unreadable).
pub const MODEL_RELOAD_FAILURES: &str = "ml_pipeline_model_reload_failures_total";
/// Records per batch.
pub const BATCH_RECORDS: &str = "ml_pipeline_batch_records";
/// Seconds per stage.
pub const STAGE_SECONDS: &str = "ml_pipeline_stage_seconds";
/// Seconds from a bundle's SentTimestamp to its answer being accepted.
pub const BUNDLE_AGE_SECONDS: &str = "ml_pipeline_bundle_age_seconds";
/// Messages in hand.
pub const IN_FLIGHT: &str = "ml_pipeline_in_flight_messages";
/// Answered inputs whose deletes wait to go ten to a call (gauge).
pub const DELETES_PENDING: &str = "ml_pipeline_deletes_pending";
/// 1 for the model version in use, 0 for versions served before.
pub const MODEL_INFO: &str = "ml_pipeline_model_info";
/// Records of the prediction log, by result: written, dropped (the writer was behind), failed.
pub const PREDICTION_LOG: &str = "ml_pipeline_prediction_log_records_total";
/// Feedback messages, by result: applied, dead_lettered, retried (PostgreSQL did not answer).
pub const FEEDBACK_MESSAGES: &str = "ml_pipeline_feedback_messages_total";
/// Retraining runs that trained a challenger, by model and decision (promoted or kept).
pub const RETRAIN_DECISIONS: &str = "ml_pipeline_retrain_decisions_total";
/// Feedback items, by result: added, changed, unchanged, not_logged, ambiguous.
pub const FEEDBACK_ITEMS: &str = "ml_pipeline_feedback_items_total";

/// Records chosen for shadow scoring, by result: agreed, disagreed (the shadow model gave the
/// other class), failed, skipped (the previous batch was still scoring).
pub const SHADOW_RECORDS: &str = "ml_pipeline_shadow_records_total";
/// Seconds each model spent on the shadowed rows of a batch, by model: served, shadow.
pub const SHADOW_PREDICT_SECONDS: &str = "ml_pipeline_shadow_predict_seconds";
/// The share of shadowed records both models classed alike, over the last monitor interval.
pub const SHADOW_AGREEMENT: &str = "ml_pipeline_shadow_agreement_ratio";
/// The mean |shadow score - served score| over the last monitor interval.
pub const SHADOW_SCORE_DIFF: &str = "ml_pipeline_shadow_score_difference";
/// Shadow prediction time over served prediction time for the same records, last interval.
pub const SHADOW_LATENCY_RATIO: &str = "ml_pipeline_shadow_latency_ratio";
/// Population stability index of each served feature over the drift window, by feature.
pub const FEATURE_PSI: &str = "ml_pipeline_feature_psi";
/// Share of each served feature's values outside its training range over the drift window.
pub const FEATURE_OUT_OF_RANGE: &str = "ml_pipeline_feature_out_of_range_ratio";
/// Records in the drift window.
pub const DRIFT_WINDOW_RECORDS: &str = "ml_pipeline_drift_window_records";

const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0,
];
const RECORD_BUCKETS: &[f64] = &[
    1.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0,
];

/// Installs the process-wide Prometheus recorder once; later calls return the same handle.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(BATCH_RECORDS.into()), RECORD_BUCKETS)?
        .install_recorder()?;
    describe();
    Ok(HANDLE.get_or_init(|| handle).clone())
}

fn describe() {
    describe_counter!(MESSAGES_RECEIVED, "Messages received from the input queue.");
    describe_counter!(
        MESSAGES_DELETED,
        "Input messages deleted after their answer or dead-letter copy was accepted."
    );
    describe_counter!(
        MESSAGES_DEAD_LETTERED,
        "Unreadable input messages sent to the dead-letter queue."
    );
    describe_counter!(MESSAGES_LEFT, "Input messages left for SQS to redeliver.");
    describe_counter!(RECORDS_IN, "Records in readable bundles.");
    describe_counter!(RECORDS_PREDICTED, "Records the model predicted.");
    describe_counter!(
        RECORD_ERRORS,
        "Records answered with an error, by stage and reason."
    );
    describe_counter!(
        ENRICHMENT,
        "Per-record enrichment results, by source and result (hit or miss)."
    );
    describe_counter!(
        PROVIDER_ENRICHMENT,
        "Per-record results per provider: hit when its document alone could enrich the note."
    );
    describe_counter!(
        BATCHES_RETRIED,
        "Batches left for redelivery because PostgreSQL or MongoDB did not answer."
    );
    describe_counter!(RECEIVE_ERRORS, "ReceiveMessage calls that failed.");
    describe_counter!(
        SQS_REQUESTS,
        "SQS requests made, answered or not, by kind (API action)."
    );
    describe_counter!(
        SQS_BILLABLE_REQUESTS,
        "SQS requests as billed, by kind: each 64 KiB chunk of a request's payload (sent or received message bodies and attributes) is one request."
    );
    describe_counter!(
        S3_REQUESTS,
        "S3 requests made, answered or not, by kind (API action)."
    );
    describe_counter!(
        DB_ROUND_TRIPS,
        "Round trips to the enrichment databases, by source (postgres, mongo): statements, finds and their getMore calls, pings."
    );
    describe_counter!(
        RECEIVE_CALLS,
        "ReceiveMessage calls that returned, by result: messages or empty."
    );
    describe_gauge!(
        POLLERS,
        "Pollers receiving now: fewer than configured on an idle queue, one while polling is slowed, none while paused."
    );
    describe_gauge!(
        POLLING_PACE,
        "1 for the pace the pollers keep now (label pace: polling, slowed, paused), 0 for the others."
    );
    describe_gauge!(
        BACK_PRESSURE,
        "1 while a back-pressure condition holds polling back (label condition: output_backlog, enrich_latency, slots_full), else 0."
    );
    describe_gauge!(
        OUTPUT_BACKLOG,
        "The output queue's visible messages (ApproximateNumberOfMessages), as last measured."
    );
    describe_counter!(MODEL_RELOADS, "Model versions swapped in after start.");
    describe_counter!(
        MODEL_RELOAD_FAILURES,
        "Model reloads that failed, by cause: refused (a version that does not validate, once per alias write) or unavailable (the registry could not be read); the previous version kept serving."
    );
    describe_histogram!(BATCH_RECORDS, "Records per batch.");
    describe_histogram!(
        STAGE_SECONDS,
        metrics::Unit::Seconds,
        "Time per stage: receive_wait, decode, standardize, enrich, enrich.postgres, enrich.mongo, normalize, predict, send, delete, total."
    );
    describe_histogram!(
        BUNDLE_AGE_SECONDS,
        metrics::Unit::Seconds,
        "From the input message's SentTimestamp to its answer being accepted."
    );
    describe_gauge!(IN_FLIGHT, "Input messages in hand.");
    describe_gauge!(
        DELETES_PENDING,
        "Answered input messages whose deletes wait to go ten to a call."
    );
    describe_counter!(
        PREDICTION_LOG,
        "Records of the prediction log, by result: written, dropped (the writer was behind; the answers were sent), failed (PostgreSQL refused the write)."
    );
    describe_counter!(
        FEEDBACK_MESSAGES,
        "Feedback messages, by result: applied, dead_lettered (malformed), retried (PostgreSQL did not answer; left for redelivery)."
    );
    describe_counter!(
        FEEDBACK_ITEMS,
        "Feedback items, by result: added or changed (a training example), unchanged (repeated feedback), not_logged (no logged prediction matches), ambiguous (more than one does)."
    );
    describe_gauge!(
        MODEL_INFO,
        "1 for the model version in use (labels model, alias, version; alias is the served alias, pinned, or the shadow alias); 0 for versions served before."
    );
    describe_counter!(
        SHADOW_RECORDS,
        "Records chosen for shadow scoring, by result: agreed, disagreed (the shadow model gave the other class), failed (its prediction failed), skipped (the previous batch was still scoring)."
    );
    describe_histogram!(
        SHADOW_PREDICT_SECONDS,
        metrics::Unit::Seconds,
        "Seconds each model spent on a batch's shadowed rows, by model: served (its share of the batch call) and shadow."
    );
    describe_gauge!(
        SHADOW_AGREEMENT,
        "Share of shadowed records both models classed alike, over the last monitor interval."
    );
    describe_gauge!(
        SHADOW_SCORE_DIFF,
        "Mean absolute difference of shadow and served scores, over the last monitor interval."
    );
    describe_gauge!(
        SHADOW_LATENCY_RATIO,
        "Shadow prediction time over served prediction time for the same records, over the last monitor interval."
    );
    describe_gauge!(
        FEATURE_PSI,
        "Population stability index of each served feature over the drift window, against the served version's training data (by feature); over 0.2 is a shift worth acting on."
    );
    describe_gauge!(
        FEATURE_OUT_OF_RANGE,
        "Share of each served feature's values outside its training range over the drift window (by feature)."
    );
    describe_gauge!(DRIFT_WINDOW_RECORDS, "Records in the drift window.");
}

/// Messages in hand now.
pub fn in_flight(n: usize) {
    gauge!(IN_FLIGHT).set(n as f64);
}

/// Answered inputs whose deletes wait now.
pub fn deletes_pending(n: usize) {
    gauge!(DELETES_PENDING).set(n as f64);
}

/// One receive call returned `messages` after `wait`.
pub fn received(messages: usize, wait: Duration) {
    let result = if messages == 0 { "empty" } else { "messages" };
    counter!(RECEIVE_CALLS, "result" => result).increment(1);
    counter!(MESSAGES_RECEIVED).increment(messages as u64);
    histogram!(STAGE_SECONDS, "stage" => "receive_wait").record(wait.as_secs_f64());
}

/// The pollers keep `pace` now, `pollers` of them receiving.
pub fn pace(pace: &'static str, pollers: usize) {
    for state in ["polling", "slowed", "paused"] {
        gauge!(POLLING_PACE, "pace" => state).set(if state == pace { 1.0 } else { 0.0 });
    }
    gauge!(POLLERS).set(pollers as f64);
}

/// A back-pressure condition began (`holding`) or ended.
pub fn pressure(condition: &'static str, holding: bool) {
    gauge!(BACK_PRESSURE, "condition" => condition).set(if holding { 1.0 } else { 0.0 });
}

/// The output queue held `visible` visible messages when measured.
pub fn output_backlog(visible: u64) {
    gauge!(OUTPUT_BACKLOG).set(visible as f64);
}

/// One SQS request of `kind` (the API action) was made, carrying `billed` billable requests
/// (see [`crate::queue::billed_requests`]).
pub fn sqs_request(kind: &'static str, billed: u64) {
    counter!(SQS_REQUESTS, "kind" => kind).increment(1);
    counter!(SQS_BILLABLE_REQUESTS, "kind" => kind).increment(billed);
}

/// One S3 request of `kind` (the API action) was made.
pub fn s3_request(kind: &'static str) {
    counter!(S3_REQUESTS, "kind" => kind).increment(1);
}

/// `count` round trips to the enrichment database `source` (postgres, mongo) were made.
pub fn db_round_trips(source: &'static str, count: u64) {
    counter!(DB_ROUND_TRIPS, "source" => source).increment(count);
}

/// One receive call failed.
pub fn receive_failed() {
    counter!(RECEIVE_ERRORS).increment(1);
}

/// Decoding took `elapsed`.
pub fn decoded(elapsed: Duration) {
    histogram!(STAGE_SECONDS, "stage" => "decode").record(elapsed.as_secs_f64());
}

/// Input messages a step finished with: deleted, dead-lettered, left for redelivery.
pub fn messages_finished(deleted: usize, dead_lettered: usize, left: usize) {
    counter!(MESSAGES_DELETED).increment(deleted as u64);
    counter!(MESSAGES_DEAD_LETTERED).increment(dead_lettered as u64);
    counter!(MESSAGES_LEFT).increment(left as u64);
}

/// A batch was left for redelivery because a dependency did not answer.
pub fn batch_retried() {
    counter!(BATCHES_RETRIED).increment(1);
}

/// A batch of `records` was predicted, `predicted` of them by the model.
pub fn batch_predicted(records: usize, predicted: usize) {
    counter!(RECORDS_IN).increment(records as u64);
    counter!(RECORDS_PREDICTED).increment(predicted as u64);
    histogram!(BATCH_RECORDS).record(records as f64);
}

/// `count` records answered with an error of `kind` (`stage: reason words`).
pub fn record_errors(kind: &str, count: u64) {
    let (stage, reason) = kind.split_once(": ").unwrap_or(("", kind));
    counter!(RECORD_ERRORS, "stage" => stage.to_owned(), "reason" => reason.to_owned())
        .increment(count);
}

/// Per-record enrichment results of one source over a batch.
pub fn enrichment(source: &'static str, hits: u64, misses: u64) {
    counter!(ENRICHMENT, "source" => source, "result" => "hit").increment(hits);
    counter!(ENRICHMENT, "source" => source, "result" => "miss").increment(misses);
}

/// Per-record results of one provider over a batch: `hit` when its document alone could
/// enrich the note, `miss` otherwise.
pub fn provider_enrichment(provider: &str, hits: u64, misses: u64) {
    counter!(PROVIDER_ENRICHMENT, "provider" => provider.to_owned(), "result" => "hit")
        .increment(hits);
    counter!(PROVIDER_ENRICHMENT, "provider" => provider.to_owned(), "result" => "miss")
        .increment(misses);
}

/// One stage of a batch took `seconds`.
pub fn stage_time(stage: &str, seconds: f64) {
    histogram!(STAGE_SECONDS, "stage" => stage.to_owned()).record(seconds);
}

/// Seconds from each answered bundle's SentTimestamp to its answer being accepted.
pub fn bundle_ages(seconds: impl Iterator<Item = f64>) {
    let age = histogram!(BUNDLE_AGE_SECONDS);
    for s in seconds {
        age.record(s);
    }
}

/// `version` of model `name` serves from now on under `alias` (the served alias, `pinned`, or
/// the shadow alias); `previous` no longer does.
pub fn model_serving(name: &str, alias: &str, version: u64, previous: Option<u64>) {
    let info = |version: u64| gauge!(MODEL_INFO, "model" => name.to_owned(), "alias" => alias.to_owned(), "version" => version.to_string());
    if let Some(previous) = previous {
        counter!(MODEL_RELOADS).increment(1);
        info(previous).set(0.0);
    }
    info(version).set(1.0);
}

/// Records chosen for shadow scoring that ended as `result` without a comparison: `skipped`
/// (the previous batch was still scoring) or `failed` (the shadow model's prediction failed).
pub fn shadow_records(result: &'static str, count: u64) {
    counter!(SHADOW_RECORDS, "result" => result).increment(count);
}

/// One shadow-scored batch: records agreed, disagreed and unscorable, and each model's seconds.
pub fn shadow_scored(agreed: u64, disagreed: u64, failed: u64, served_s: f64, shadow_s: f64) {
    counter!(SHADOW_RECORDS, "result" => "agreed").increment(agreed);
    counter!(SHADOW_RECORDS, "result" => "disagreed").increment(disagreed);
    counter!(SHADOW_RECORDS, "result" => "failed").increment(failed);
    histogram!(SHADOW_PREDICT_SECONDS, "model" => "served").record(served_s);
    histogram!(SHADOW_PREDICT_SECONDS, "model" => "shadow").record(shadow_s);
}

/// The shadow figures of the last monitor interval, for the versions that served and shadowed.
pub fn shadow_interval(agreement: f64, mean_score_diff: f64, latency_ratio: Option<f64>) {
    gauge!(SHADOW_AGREEMENT).set(agreement);
    gauge!(SHADOW_SCORE_DIFF).set(mean_score_diff);
    if let Some(ratio) = latency_ratio {
        gauge!(SHADOW_LATENCY_RATIO).set(ratio);
    }
}

/// One feature's drift over the monitor's window, against model `version`'s training data.
pub fn feature_drift(feature: &str, psi: f64, out_of_range: f64) {
    gauge!(FEATURE_PSI, "feature" => feature.to_owned()).set(psi);
    gauge!(FEATURE_OUT_OF_RANGE, "feature" => feature.to_owned()).set(out_of_range);
}

/// Records in the drift window.
pub fn drift_window(records: u64) {
    gauge!(DRIFT_WINDOW_RECORDS).set(records as f64);
}

/// A model reload failed: `refused` or `unavailable`.
pub fn model_reload_failed(cause: &'static str) {
    counter!(MODEL_RELOAD_FAILURES, "cause" => cause).increment(1);
}

/// `records` of the prediction log ended as `result` (written, dropped, failed).
pub fn prediction_log(result: &'static str, records: usize) {
    counter!(PREDICTION_LOG, "result" => result).increment(records as u64);
}

/// One feedback message ended as `result` (applied, dead_lettered, retried).
pub fn feedback_message(result: &'static str) {
    counter!(FEEDBACK_MESSAGES, "result" => result).increment(1);
}

/// `count` feedback items ended as `result`.
pub fn feedback_items(result: &'static str, count: u64) {
    counter!(FEEDBACK_ITEMS, "result" => result).increment(count);
}

/// A retraining run of `model` decided: promote the challenger or keep the champion.
pub fn retrain_decision(model: &str, promoted: bool) {
    let decision = if promoted { "promoted" } else { "kept" };
    counter!(RETRAIN_DECISIONS, "model" => model.to_owned(), "decision" => decision).increment(1);
}
