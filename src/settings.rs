//! Typed configuration: defaults, then an optional JSON file, then environment variables.
//!
//! Every field can be set by environment variable, so an ECS task definition can set
//! everything: `ML_PIPELINE_<FIELD>` (e.g. `ML_PIPELINE_MODEL_ALIAS=candidate`), plus the
//! conventional `DATABASE_URL`, `MONGODB_URI` and `MONGODB_DATABASE`. AWS clients take their
//! endpoint, region and credentials from the SDK's own chain (`AWS_ENDPOINT_URL`, `AWS_REGION`...).

use std::path::Path;
use std::time::Duration;

use figment::providers::{Env, Format, Json};
use figment::Figment;
use secrecy::SecretString;
use serde::Deserialize;

use crate::bundle::{ContentEncoding, Limits};
use crate::learning::LogMode;
use crate::worker::WorkerConfig;

/// All settings of every command.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// PostgreSQL URL (`DATABASE_URL`). Default: the local services' database.
    pub database_url: SecretString,
    /// MongoDB URI (`MONGODB_URI`). Default `mongodb://127.0.0.1:27017`.
    pub mongodb_uri: SecretString,
    /// MongoDB database holding the provider documents (`MONGODB_DATABASE`). Default `ml_pipeline`.
    pub mongodb_database: String,
    /// The S3 bucket of the model registry. No default: required by model commands.
    pub model_bucket: Option<String>,
    /// The model name served and trained. Default `banknote`.
    pub model_name: String,
    /// The alias the worker serves. Default `production`.
    pub model_alias: String,
    /// Serve exactly this version and never reload (disables alias polling). Default: unset.
    pub model_version: Option<u64>,
    /// How often the alias is polled for a new version, in seconds. Default 10.
    pub model_poll_secs: u64,
    /// The largest `model.json` read, in bytes; a larger version is refused before it is read
    /// whole. Default 16 MiB.
    pub model_max_bytes: u64,
    /// Input queue URL or name. No default: required by the worker and `send`.
    pub input_queue: Option<String>,
    /// Output queue URL or name. No default: required by the worker.
    pub output_queue: Option<String>,
    /// Input dead-letter queue URL or name; read from the input queue's RedrivePolicy when unset.
    pub input_dlq: Option<String>,
    /// Apply the PostgreSQL migrations when the worker starts. Default false.
    pub migrate_on_start: bool,
    /// Largest PostgreSQL pool, in connections. Default 8.
    pub database_max_connections: u32,
    /// Messages per receive call, 1..=10. Default 10.
    pub receive_max: i32,
    /// Long-poll wait per receive call, in seconds, 0..=20. Default 20.
    pub wait_secs: i32,
    /// Concurrent long-pollers. Default 2.
    pub pollers: usize,
    /// Empty receives in a row after which one poller fewer long-polls, down to one; the first
    /// receive that returns messages brings every poller back at once. 0 keeps every poller
    /// polling. Default 3.
    pub idle_empty_receives: u32,
    /// Back-pressure: visible messages on the output queue (ApproximateNumberOfMessages) above
    /// which polling slows, then pauses, until the output's consumers catch up. 0 turns it off.
    /// Default 50000.
    pub output_backlog_max: u64,
    /// How often the output queue's visible messages are measured, in seconds, while messages
    /// arrive or the backlog holds polling back (an idle worker makes no such call). Default 15.
    pub output_backlog_check_secs: u64,
    /// Back-pressure: the enrichment stage's time per batch (a moving mean, the latest batch
    /// weighing half), in milliseconds, above which polling slows, then pauses. 0 turns it off.
    /// Default 2000.
    pub enrich_budget_ms: u64,
    /// Back-pressure: how long every batch slot may stay busy, no batch finishing, before
    /// polling slows, then pauses, in seconds. 0 turns it off. Default 20.
    pub slots_full_max_secs: u64,
    /// While back-pressure slows polling, one poller receives, waiting this long before each
    /// receive, in milliseconds. Default 1000.
    pub slow_poll_delay_ms: u64,
    /// A back-pressure condition that has held this long pauses polling, in seconds; an
    /// enrichment time measured longer ago than this is forgotten. Default 10.
    pub pause_after_secs: u64,
    /// Most records in one batch. Default 2500.
    pub max_batch_records: usize,
    /// How long to wait for more bundles after the first when none is in hand, in milliseconds.
    /// Default 0: a batch takes what is in hand, and keeps gathering only while every batch slot
    /// is busy, so batches grow with the load and a lone bundle is not held back.
    pub max_batch_wait_ms: u64,
    /// Adaptive batching, in milliseconds: while bundles arrive faster than two per this budget
    /// (a moving mean of the gaps between them) and faster than batches of one would be served
    /// (a batch's service time at least the gap between them), one poller
    /// receives, waiting before each receive so that one receive of up to ten gathers several
    /// bundles, none waiting much longer than the budget; bundles served before the next one
    /// comes and slower arrivals are never held. 0 turns it off. Default 50.
    pub batch_latency_budget_ms: u64,
    /// How long an answered input's delete may wait for others, in milliseconds, so that
    /// deletes go ten to a `DeleteMessageBatch` call instead of one call per batch (standard
    /// queues; FIFO inputs and inputs with an S3 payload are deleted at once). Once the oldest
    /// has waited this long, the next batch's own delete takes every waiting one along; without
    /// a next batch they go at twice the delay. Pending deletes are made before the worker
    /// stops. Default 200; 0 deletes with each batch (BENCHMARKS.md, "Deferred deletes").
    pub delete_delay_ms: u64,
    /// Batches processed at once. Default 4 (with 2500 records each, at most 10 000 records in
    /// batches at once).
    pub max_concurrent_batches: usize,
    /// Visibility the heartbeat keeps extending to, in seconds; default: the queue's own.
    pub visibility_timeout_secs: Option<i32>,
    /// Heartbeat period as a fraction of the visibility timeout. Default 0.5.
    pub heartbeat_fraction: f64,
    /// Dead-letter a message, with its reason, when it is left for redelivery on this many
    /// receives; below the queue's maxReceiveCount (the worker lowers it to maxReceiveCount - 1
    /// when it is not). 0 turns it off. Default 4.
    pub max_receives: u32,
    /// How long a batch holds the bundles that wait for a source that is down (PostgreSQL keys
    /// not in the cache, MongoDB documents), trying again about every second, before it leaves
    /// them for redelivery (visible again 5 s later), in seconds. Default 30.
    pub outage_hold_secs: u64,
    /// How long SIGTERM waits for batches in hand, in seconds. Default 25 (ECS stops at 30).
    pub drain_timeout_secs: u64,
    /// Encoding of answers: identity, gzip or zstd. Default identity.
    pub output_encoding: ContentEncoding,
    /// The largest message the queues accept, body and message attributes together, in bytes:
    /// answers, dead-letter copies, redriven bundles and send batches stay within it. Default
    /// 1048576 (1 MiB, SQS's limit since August 2025); lower it for a queue whose
    /// MaximumMessageSize is smaller, or an emulator that enforces the old 256 KiB.
    pub max_message_bytes: usize,
    /// Largest decoded body, in bytes; also the largest Extended Client payload read from S3
    /// (refused from its Content-Length before it is read). Default 16 MiB.
    pub max_body_bytes: usize,
    /// The S3 bucket answers too large for one message (in every encoding) are written to, and
    /// sent as Extended Client pointers. Default: unset, such answers are dead-lettered with
    /// their size. Pointer messages are read from whatever bucket they name, set or not.
    pub payload_bucket: Option<String>,
    /// The key prefix of the answers written to the payload bucket, before a random UUID.
    /// Default `answers/`.
    pub payload_prefix: String,
    /// An answer whose message is larger than this in every encoding, in bytes, goes through
    /// S3; never above `max_message_bytes`. Default: unset, the message size limit.
    pub payload_threshold_bytes: Option<usize>,
    /// Delete an input's payload from S3 once its answer is accepted. Default false: with SNS
    /// fan-out several queues' messages point to one object, and the bucket's lifecycle rule
    /// expires payloads anyway.
    pub delete_input_payloads: bool,
    /// Most rows per bundle. Default 10000.
    pub max_rows: usize,
    /// Longest string value in a row, in characters. Default 1024.
    pub max_string_chars: usize,
    /// Most values in one bundle's rows, nested values included; checked while the body is
    /// read, so it bounds a decoded bundle's memory (16 bytes a value). Default 500000.
    pub max_cells: usize,
    /// Most columns of a bundle, and values in one row. Default 256.
    pub max_columns: usize,
    /// Most values (cells) in one batch: the batcher stops adding bundles to a batch once it
    /// holds this many, before it decodes the next message. Default 250000.
    pub max_batch_cells: usize,
    /// Upsert prediction aggregates into PostgreSQL after each batch. Default true.
    pub aggregates: bool,
    /// How long the worker reuses a PostgreSQL reference value (a scanner's unit, an issuer
    /// alias) before asking again, in seconds; 0 asks on every batch. Default 60.
    pub reference_cache_secs: u64,
    /// How long one PostgreSQL or MongoDB lookup may take before the source counts as
    /// unavailable (the batch is left for redelivery), in seconds. Keep it below the drain
    /// timeout. Default 10.
    pub source_timeout_secs: u64,
    /// The most keys one PostgreSQL `= ANY` or MongoDB `$in` carries; a batch with more distinct
    /// keys is looked up in chunks, one round trip each, up to `lookup_concurrency` at once.
    /// Default 500 (chosen from the lookup curve in BENCHMARKS.md).
    pub lookup_chunk_keys: usize,
    /// The most PostgreSQL statements, and separately the most MongoDB `find`s, the worker has
    /// in flight at once over every batch it processes; more wait their turn. Default 4 (chosen
    /// from the lookup curve in BENCHMARKS.md).
    pub lookup_concurrency: usize,
    /// Address S3 buckets by path (`endpoint/bucket/key`), as S3 emulators need. Default false.
    pub s3_force_path_style: bool,
    /// Where the worker serves `/metrics`, `/health` and `/ready`, or `off`. Default `0.0.0.0:9090`.
    pub http_addr: String,
    /// `/health` fails when the receive and batch loops made no progress for this long, in
    /// seconds. Default 120.
    pub stall_timeout_secs: u64,
    /// Turn on ECS task scale-in protection while messages are in hand (needs `ECS_AGENT_URI`,
    /// which ECS sets). Default false.
    pub task_protection: bool,
    /// Which predictions the worker logs to PostgreSQL (`prediction_log`), for feedback and
    /// audit: `off`, `sampled:<fraction>` (that share of the bundles, chosen by a hash of the
    /// bundle id) or `all`. Default off.
    pub prediction_log: LogMode,
    /// Days of the prediction log kept besides today; older day partitions are dropped.
    /// Default 30.
    pub prediction_log_retention_days: u32,
    /// Feedback queue URL or name: the worker consumes it beside its pollers, and
    /// `ml-pipeline feedback` drains it. Default: unset (no feedback consumed).
    pub feedback_queue: Option<String>,
    /// The feedback queue's dead-letter queue, for malformed feedback; read from the feedback
    /// queue's RedrivePolicy when unset.
    pub feedback_dlq: Option<String>,
    /// The `training_examples` dataset feedback is written to, and `retrain` reads. Default
    /// `feedback`.
    pub feedback_dataset: String,
    /// `retrain` runs when this many feedback examples were labelled since the last retrain.
    /// Default 500.
    pub retrain_min_new_examples: u64,
    /// `retrain` runs when the last retrain (or the champion's training) is this many hours old,
    /// whatever the feedback. Default 168 (a week).
    pub retrain_max_hours: f64,
    /// How much more accurate on the shared held-out rows the challenger must be for `retrain`
    /// to promote it, as a fraction (0.005 = half a point). Default 0.005.
    pub retrain_margin: f64,
    /// The dataset the champion was trained on, which `retrain` trains on with the feedback;
    /// default: read from the champion's `data_source` (`postgres:training_examples/<dataset>`).
    pub retrain_base_dataset: Option<String>,
    /// `retrain` runs when one served feature's PSI has stayed over `drift_psi_threshold` for
    /// this many minutes since the last retrain (read from `drift_observations`); 0 turns the
    /// drift trigger off. Default 60.
    pub retrain_drift_minutes: f64,
    /// A second alias of the model (`challenger`, say) whose version scores
    /// `shadow_fraction` of each batch beside the served one; answers carry the served result
    /// only. Default: unset (no shadow scoring).
    pub shadow_alias: Option<String>,
    /// The share of bundles shadow-scored, chosen by a hash of the bundle id. Default 0.1.
    pub shadow_fraction: f64,
    /// How often the worker reports drift and shadow figures (gauges, EMF lines,
    /// `drift_observations` and `shadow_observations`), in seconds. Default 60.
    pub monitor_interval_secs: u64,
    /// The span of the rolling window of served features that drift is measured over, in
    /// seconds. Default 900.
    pub drift_window_secs: u64,
    /// Fewer records than this in the drift window report no drift figures. Default 200.
    pub drift_min_records: u64,
    /// A feature whose PSI is over this has drifted: logged, and the retrain trigger's
    /// threshold. Default 0.2.
    pub drift_psi_threshold: f64,
    /// The CloudWatch namespace of the Embedded Metric Format lines the worker writes to
    /// stdout each monitor interval (the awslogs driver turns them into metrics). Default:
    /// unset (no EMF lines); the ECS template sets `MlPipeline`.
    pub emf_namespace: Option<String>,
}

impl Default for Settings {
    /// The worker's defaults come from [`WorkerConfig::default`] and [`Limits::default`], so
    /// each is written once.
    fn default() -> Self {
        let worker = WorkerConfig::default();
        let limits = Limits::default();
        Self {
            database_url: "postgres://ml_pipeline:ml_pipeline@127.0.0.1:5432/ml_pipeline".into(),
            mongodb_uri: "mongodb://127.0.0.1:27017".into(),
            mongodb_database: "ml_pipeline".into(),
            model_bucket: None,
            model_name: "banknote".into(),
            model_alias: "production".into(),
            model_version: None,
            model_poll_secs: 10,
            model_max_bytes: crate::model::DEFAULT_MAX_ARTIFACT_BYTES,
            input_queue: None,
            output_queue: None,
            input_dlq: None,
            migrate_on_start: false,
            database_max_connections: 8,
            s3_force_path_style: false,
            receive_max: worker.receive_max,
            wait_secs: worker.wait_secs,
            pollers: worker.pollers,
            idle_empty_receives: worker.pacing.idle_empty_receives,
            output_backlog_max: worker.pacing.output_backlog_max.unwrap_or(0),
            output_backlog_check_secs: worker.pacing.output_backlog_check.as_secs(),
            enrich_budget_ms: worker
                .pacing
                .enrich_budget
                .map_or(0, |d| d.as_millis() as u64),
            slots_full_max_secs: worker.pacing.slots_full_max.map_or(0, |d| d.as_secs()),
            slow_poll_delay_ms: worker.pacing.slow_delay.as_millis() as u64,
            pause_after_secs: worker.pacing.pause_after.as_secs(),
            max_batch_records: worker.max_batch_records,
            max_batch_wait_ms: worker.max_batch_wait.as_millis() as u64,
            batch_latency_budget_ms: worker.batch_latency_budget.as_millis() as u64,
            delete_delay_ms: worker.delete_delay.as_millis() as u64,
            max_concurrent_batches: worker.max_concurrent_batches,
            visibility_timeout_secs: None,
            heartbeat_fraction: worker.heartbeat_fraction,
            max_receives: worker.max_receives,
            outage_hold_secs: worker.outage_hold.as_secs(),
            drain_timeout_secs: worker.drain_timeout.as_secs(),
            output_encoding: worker.output_encoding,
            max_message_bytes: worker.max_message_bytes,
            max_body_bytes: limits.max_body_bytes,
            payload_bucket: None,
            payload_prefix: "answers/".into(),
            payload_threshold_bytes: None,
            delete_input_payloads: false,
            max_rows: limits.max_rows,
            max_string_chars: limits.max_string_chars,
            max_cells: limits.max_cells,
            max_columns: limits.max_columns,
            max_batch_cells: worker.max_batch_cells,
            aggregates: true,
            reference_cache_secs: 60,
            source_timeout_secs: crate::enrich::source::DEFAULT_SOURCE_TIMEOUT.as_secs(),
            lookup_chunk_keys: crate::enrich::source::DEFAULT_CHUNK_KEYS,
            lookup_concurrency: crate::enrich::source::DEFAULT_LOOKUP_CONCURRENCY,
            http_addr: DEFAULT_HTTP_ADDR.into(),
            stall_timeout_secs: worker.stall_timeout.as_secs(),
            task_protection: false,
            prediction_log: LogMode::Off,
            prediction_log_retention_days: 30,
            feedback_queue: None,
            feedback_dlq: None,
            feedback_dataset: "feedback".into(),
            retrain_min_new_examples: 500,
            retrain_max_hours: 168.0,
            retrain_margin: 0.005,
            retrain_base_dataset: None,
            retrain_drift_minutes: 60.0,
            shadow_alias: None,
            shadow_fraction: 0.1,
            monitor_interval_secs: 60,
            drift_window_secs: 900,
            drift_min_records: 200,
            drift_psi_threshold: 0.2,
            emf_namespace: None,
        }
    }
}

/// Where the worker serves its HTTP endpoints unless told otherwise.
pub const DEFAULT_HTTP_ADDR: &str = "0.0.0.0:9090";

/// `ML_PIPELINE_*` variables read by the `localstack/` scripts, the CLI and the tools (`BIN`:
/// the worker binary `bench` and `chaos` start), not settings fields.
const SCRIPT_VARIABLES: &[&str] = &[
    "config",
    "state_dir",
    "cache_dir",
    "stack",
    "mongo_server",
    "output_dlq",
    "external_services",
    "start_timeout",
    "python",
    "pg_version",
    "bin",
];

impl Settings {
    /// Defaults, then `file` (JSON) if given, then the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, Box<figment::Error>> {
        // Missing fields take `Settings::default()` through `#[serde(default)]`.
        let mut figment = Figment::new();
        if let Some(file) = file {
            figment = figment.merge(Json::file_exact(file));
        }
        figment
            .merge(Env::raw().only(&["database_url", "mongodb_uri", "mongodb_database"]))
            .merge(Env::prefixed("ML_PIPELINE_").ignore(SCRIPT_VARIABLES))
            .extract()
            .map_err(Box::new)
    }

    /// Fewer pollers on an idle queue, and back-pressure; a limit of 0 turns its condition off.
    pub fn pacing(&self) -> crate::worker::PacingConfig {
        let off_at_zero = |v: u64| (v > 0).then_some(v);
        crate::worker::PacingConfig {
            idle_empty_receives: self.idle_empty_receives,
            output_backlog_max: off_at_zero(self.output_backlog_max),
            output_backlog_check: Duration::from_secs(self.output_backlog_check_secs.max(1)),
            enrich_budget: off_at_zero(self.enrich_budget_ms).map(Duration::from_millis),
            slots_full_max: off_at_zero(self.slots_full_max_secs).map(Duration::from_secs),
            slow_delay: Duration::from_millis(self.slow_poll_delay_ms),
            pause_after: Duration::from_secs(self.pause_after_secs),
        }
    }

    /// The decoding limits.
    pub fn limits(&self) -> Limits {
        Limits {
            max_body_bytes: self.max_body_bytes,
            max_rows: self.max_rows,
            max_string_chars: self.max_string_chars,
            max_cells: self.max_cells,
            max_columns: self.max_columns,
        }
    }

    /// How the worker writes and deletes Extended Client payloads.
    pub fn payload_config(&self) -> crate::payload::PayloadConfig {
        crate::payload::PayloadConfig {
            bucket: self.payload_bucket.clone().filter(|b| !b.is_empty()),
            prefix: self.payload_prefix.clone(),
            threshold_bytes: self.payload_threshold_bytes,
            delete_inputs: self.delete_input_payloads,
        }
    }

    /// The address of the worker's HTTP endpoints; None when set to `off`.
    pub fn http_addr(&self) -> anyhow::Result<Option<std::net::SocketAddr>> {
        if self.http_addr.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        self.http_addr.parse().map(Some).map_err(|e| {
            anyhow::anyhow!(
                "ML_PIPELINE_HTTP_ADDR={:?} is not an address like 0.0.0.0:9090 (or off): {e}",
                self.http_addr
            )
        })
    }

    /// The model bucket, or an error saying how to set it.
    pub fn require_bucket(&self) -> anyhow::Result<&str> {
        self.model_bucket.as_deref().ok_or_else(|| {
            anyhow::anyhow!(
                "no model bucket: set ML_PIPELINE_MODEL_BUCKET (the stack output ModelBucketName)"
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn the_pacing_defaults_are_the_workers_and_zero_turns_a_condition_off() {
        assert_eq!(Settings::default().pacing(), WorkerConfig::default().pacing);
        let off = Settings {
            output_backlog_max: 0,
            enrich_budget_ms: 0,
            slots_full_max_secs: 0,
            ..Settings::default()
        };
        let p = off.pacing();
        assert_eq!(
            (p.output_backlog_max, p.enrich_budget, p.slots_full_max),
            (None, None, None)
        );
    }

    #[test]
    fn secrets_never_print() {
        let s = Settings::default();
        let shown = format!("{s:?}");
        assert!(!shown.contains("ml_pipeline:ml_pipeline"), "{shown}");
        assert!(s.database_url.expose_secret().starts_with("postgres://"));
    }

    #[test]
    fn a_file_fills_fields_and_unknown_fields_are_refused() {
        let dir = std::env::temp_dir().join(format!("settings-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.json");
        std::fs::write(
            &good,
            r#"{"model_alias": "candidate", "model_poll_secs": 3}"#,
        )
        .unwrap();
        let s = Settings::load(Some(&good)).unwrap();
        assert_eq!(
            (s.model_alias.as_str(), s.model_poll_secs),
            ("candidate", 3)
        );
        let bad = dir.join("bad.json");
        std::fs::write(&bad, r#"{"model_alais": "candidate"}"#).unwrap();
        let err = Settings::load(Some(&bad)).unwrap_err().to_string();
        assert!(err.contains("model_alais"), "{err}");
    }
}
