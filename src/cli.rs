//! The command line: one subcommand per job, each with its own `--help`. This module only
//! parses and maps each subcommand to its call in [`crate::commands`] or [`crate::startup`].

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::commands;
use crate::model::artifact::{Kernel, TrainParams, DEFAULT_KERNEL_WIDTH};
use crate::settings::Settings;
use crate::train::control::DEFAULT_KERNEL_CACHE_BYTES;
use crate::train::DataSource;

/// SQS ML pipeline worker: bundles of banknote-inspection requests in, SVM predictions out.
///
/// Settings come from environment variables (DATABASE_URL, MONGODB_URI, ML_PIPELINE_*; see the
/// README), optionally from a JSON file given with --config. AWS clients use the SDK's own
/// variables (AWS_ENDPOINT_URL, AWS_REGION, AWS_PROFILE...).
#[derive(Debug, Parser)]
#[command(name = "ml-pipeline", version, propagate_version = true)]
pub struct Cli {
    /// A JSON settings file; environment variables override its values.
    #[arg(long, global = true, env = "ML_PIPELINE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply the PostgreSQL schema migrations and create the MongoDB indexes (idempotent).
    Migrate,
    /// Load the deterministic banknote fixture domain into PostgreSQL and MongoDB.
    #[command(subcommand)]
    Fixtures(FixturesCommand),
    /// Train scaler + SVM with the worker's own preprocessing, evaluate, and publish a new version.
    /// Writes a text, JSON and HTML report. Ctrl-C (or SIGTERM) stops it between fits: the job
    /// is recorded as failed with the reason and nothing is published.
    Train(Box<TrainArgs>),
    /// List, inspect, promote, roll back and compare model versions in the S3 registry.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Run the worker: long-poll the input queue, answer every bundle, until SIGTERM/SIGINT.
    /// Serves /metrics, /health and /ready on ML_PIPELINE_HTTP_ADDR (default 0.0.0.0:9090).
    /// Reads SQS Extended Client pointers from S3; answers too large for one message go to
    /// ML_PIPELINE_PAYLOAD_BUCKET as pointers (README, "Large payloads").
    Worker,
    /// Ask a running worker's /health (or /ready) and exit 0 when it answers 200: the container
    /// image's HEALTHCHECK. Prints the answer.
    Healthcheck(HealthcheckArgs),
    /// Publish bundles to the input queue (the fixtures' bundles, or a .json/.jsonl file).
    Send(SendArgs),
    /// Provider data: load a delivery (keeping earlier versions), list deliveries, roll one back.
    ///
    /// Each delivery is recorded in PostgreSQL (provider_deliveries); earlier versions of the
    /// documents are kept in MongoDB (<collection>_history).
    #[command(subcommand)]
    Providers(ProvidersCommand),
    /// The input's dead-letter queue: list the bundles refused or moved there, and move them
    /// back to the input queue once the cause is fixed.
    ///
    /// The queues are the worker's: ML_PIPELINE_INPUT_QUEUE, and ML_PIPELINE_INPUT_DLQ or else
    /// the queue named by the input's RedrivePolicy; --input-queue and --dlq override them.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// The feedback queue: drain it into labelled examples (the worker does this continuously
    /// when ML_PIPELINE_FEEDBACK_QUEUE is set), or show what feedback added.
    ///
    /// Feedback comes in the predecessor's form {"batch_id", "subjects", "ratings"} (1: the
    /// prediction was right, 0: wrong) or as {"bundle_id", "labels": [[record id, class]]}. Each
    /// item is matched with the logged prediction (ML_PIPELINE_PREDICTION_LOG) and written to
    /// training_examples (dataset ML_PIPELINE_FEEDBACK_DATASET, default feedback) with its
    /// provenance; items with no logged prediction are counted, never guessed; malformed
    /// messages go to the feedback dead-letter queue with the reason.
    #[command(subcommand)]
    Feedback(FeedbackCommand),
    /// One retraining run, for a schedule (the EventBridge rule of infra/worker-service.yaml).
    ///
    /// Runs when ML_PIPELINE_RETRAIN_MIN_NEW_EXAMPLES feedback examples were labelled since the
    /// last retrain, or when that is ML_PIPELINE_RETRAIN_MAX_HOURS old (or with --force);
    /// otherwise says so and exits 0. Trains a challenger with the champion's parameters on its
    /// base dataset plus feedback, less a held-out share of each; scores champion and challenger
    /// on those same held-out rows; publishes the challenger and moves the alias to it only if
    /// its accuracy is higher by the margin and no class's recall falls. The trigger and the
    /// decision go into training_jobs. Never runs inside the worker.
    Retrain(Box<RetrainArgs>),
}

/// Feedback subcommands.
#[derive(Debug, Subcommand)]
pub enum FeedbackCommand {
    /// Consume the feedback queue until it is empty; prints what became of the items.
    Drain {
        /// Stop after a receive that waited this long (seconds, up to 20) found nothing.
        #[arg(long, default_value_t = 2)]
        wait_secs: i32,
    },
    /// Feedback applied over a window, the feedback dataset, and unmatched record ids.
    Status {
        /// The window (`90m`, `24h`, `7d`).
        #[arg(long, default_value = "24h", value_parser = parse_window)]
        since: chrono::TimeDelta,
    },
}

/// Options of `retrain`.
#[derive(Debug, Args)]
pub struct RetrainArgs {
    /// Run whatever the trigger says.
    #[arg(long)]
    pub force: bool,
    /// Run when this many feedback examples were labelled since the last retrain; default
    /// ML_PIPELINE_RETRAIN_MIN_NEW_EXAMPLES (500).
    #[arg(long)]
    pub min_new_examples: Option<u64>,
    /// Run when the last retrain is this many hours old; default ML_PIPELINE_RETRAIN_MAX_HOURS
    /// (168).
    #[arg(long)]
    pub max_hours: Option<f64>,
    /// How much more accurate the challenger must be on the held-out rows, as a fraction;
    /// default ML_PIPELINE_RETRAIN_MARGIN (0.005).
    #[arg(long)]
    pub margin: Option<f64>,
    /// The champion's dataset; default ML_PIPELINE_RETRAIN_BASE_DATASET, else the one the
    /// champion was trained on.
    #[arg(long)]
    pub base_dataset: Option<String>,
    /// The feedback dataset; default ML_PIPELINE_FEEDBACK_DATASET (feedback).
    #[arg(long)]
    pub feedback_dataset: Option<String>,
    /// Run when one served feature's PSI has stayed over ML_PIPELINE_DRIFT_PSI_THRESHOLD (0.2)
    /// for this many minutes since the last retrain (0: never); default
    /// ML_PIPELINE_RETRAIN_DRIFT_MINUTES (60).
    #[arg(long)]
    pub drift_minutes: Option<f64>,
    /// Point this alias at a challenger that is not promoted, so that workers shadow-score it;
    /// default ML_PIPELINE_SHADOW_ALIAS (unset: no alias moves).
    #[arg(long)]
    pub challenger_alias: Option<String>,
    /// The share of each dataset held out to compare champion and challenger.
    #[arg(long, default_value_t = crate::learning::retrain::DEFAULT_GATE_SHARE)]
    pub gate_share: f64,
    /// The alias whose version is the champion; default ML_PIPELINE_MODEL_ALIAS (production).
    #[arg(long)]
    pub alias: Option<String>,
    /// Search C (and the Gaussian width) for the challenger instead of the champion's values.
    #[arg(long)]
    pub search: bool,
    /// The C values of --search.
    #[arg(long, value_delimiter = ',', default_values_t = crate::train::search::Grid::default().c)]
    pub search_c: Vec<f64>,
    /// The Gaussian widths of --search.
    #[arg(long, value_delimiter = ',', default_values_t = crate::train::search::Grid::default().widths)]
    pub search_width: Vec<f64>,
    /// Memory for kernel columns per Gaussian fit, in MiB.
    #[arg(long, default_value_t = DEFAULT_KERNEL_CACHE_BYTES >> 20)]
    pub kernel_cache_mib: u64,
    /// Write the challenger's HTML training report here.
    #[arg(long, value_name = "PATH", default_value = "retrain-report.html")]
    pub html_report: PathBuf,
    /// Print the outcome as JSON (the decision as recorded in training_jobs) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Dead-letter queue subcommands.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead-lettered bundles: sent time, receive count, stage, bundle id and reason, as a
    /// table or JSON.
    ///
    /// Nothing is consumed, but each listed message is received: it is invisible to other
    /// consumers of the dead-letter queue for a moment (at most 30 s, until the list is made),
    /// and its receive count goes up by one. Messages that SQS's redrive policy moved carry no
    /// reason: they show stage `sqs` and "moved by SQS after N receives". On a FIFO dead-letter
    /// queue, SQS hands out one message per message group at a time, so only the first message
    /// of each group is listed.
    Inspect(InspectArgs),
    /// Move dead-lettered bundles back to the input queue (after a fix), keeping their body and
    /// attributes; the worker's dead-letter attributes (error-stage, error-reason,
    /// source-message-id, receive-count, and the cut-body ones) are dropped.
    ///
    /// Each message is sent to the input queue first and deleted from the dead-letter queue
    /// only once the input accepted it: a failed send leaves it where it was. On a FIFO input
    /// queue the message keeps its group, and its deduplication id is derived from its
    /// dead-letter message id. Messages whose body the worker cut to fit, or that carry Binary
    /// attributes, are skipped; Number attributes are kept, so an Extended Client pointer
    /// (body and ExtendedPayloadSize) goes back as it came. The messages not moved are invisible while the
    /// redrive runs (at most 120 s) and visible again when it ends. Prints a line per matched
    /// message and a summary (matched, moved, skipped, failed); exits non-zero when any
    /// failed.
    Redrive(RedriveArgs),
}

/// The queues of a `dlq` subcommand.
#[derive(Debug, Args)]
pub struct DlqQueueArgs {
    /// The input queue URL or name; default ML_PIPELINE_INPUT_QUEUE.
    #[arg(long, value_name = "QUEUE")]
    pub input_queue: Option<String>,
    /// The dead-letter queue URL or name; default ML_PIPELINE_INPUT_DLQ, else the input
    /// queue's RedrivePolicy target.
    #[arg(long, value_name = "QUEUE")]
    pub dlq: Option<String>,
}

/// Options of `dlq inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The queues.
    #[command(flatten)]
    pub queues: DlqQueueArgs,
    /// List at most this many messages.
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
    /// Print a JSON array (every field, the whole reason) instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Options of `dlq redrive`.
#[derive(Debug, Args)]
pub struct RedriveArgs {
    /// The queues.
    #[command(flatten)]
    pub queues: DlqQueueArgs,
    /// Move only messages whose reason matches: a case-insensitive regular expression, so plain
    /// text matches as a substring (text that is not a valid regex is taken literally). The
    /// messages SQS moved have the reason "moved by SQS after N receives".
    #[arg(long, value_name = "PATTERN")]
    pub reason: Option<String>,
    /// Move only messages of this stage (decode, prepare, answer, enrich, or sqs for the ones
    /// SQS's redrive policy moved).
    #[arg(long, value_name = "STAGE")]
    pub stage: Option<String>,
    /// Move at most this many matching messages.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Say what would be moved; move nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Provider-data subcommands.
#[derive(Debug, Subcommand)]
pub enum ProvidersCommand {
    /// Load one delivery for one provider into MongoDB, keeping the versions it replaces.
    ///
    /// Two passes over the source: the first checks every
    /// row and writes nothing (a truncated gzip or wrong CSV columns fail the delivery here),
    /// the second writes the accepted rows in batches. Refused rows are counted and listed with
    /// their line and reason. The same content twice is `unchanged`; running a delivery that
    /// crashed or failed while writing again completes it without writing anything twice.
    Ingest(IngestArgs),
    /// The deliveries ledger, newest first: status, counts, errors, rollbacks.
    Deliveries {
        /// Only this provider's deliveries.
        #[arg(long)]
        provider: Option<String>,
        /// At most this many rows.
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Undo one delivery: its documents go back to their previous versions.
    ///
    /// Restores the documents a delivery changed to their previous versions (and removes the
    /// ones it inserted); documents changed again by a later delivery are left alone. Recorded
    /// as a delivery of its own; a delivery is rolled back at most once.
    Rollback {
        /// The delivery to undo (from `providers deliveries`).
        #[arg(long)]
        delivery: String,
        /// Documents per write batch.
        #[arg(long, default_value_t = crate::providers::DEFAULT_BATCH_DOCS)]
        batch_docs: usize,
    },
    /// Each provider judged by numbers: coverage, agreement, freshness, API latency, serving.
    ///
    /// Coverage of the traffic (the worker's per-provider coverage rows in the window) and of
    /// the training data (its notes looked up now); agreement of providers on the notes both
    /// cover, per feature against the spec's agreement_tolerance (default 0.01 canonical
    /// units), with the notes that disagree most; the age of each provider's last delivery and
    /// of its documents; latency percentiles and error rate of recorded HTTP requests against
    /// a budget; the worker's enrichment latency (--metrics-url) and predictions per issuer and
    /// label. Prints tables; --json and --html write the same report as JSON and as a
    /// self-contained HTML page with figures.
    Report(ReportArgs),
}

/// Options of `providers report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The window: traffic, API requests and predictions of the last DURATION (`90m`, `24h`,
    /// `7d`).
    #[arg(long, default_value = "24h", value_parser = parse_window)]
    pub since: chrono::TimeDelta,
    /// Write the report as JSON to this file (`-` for standard output, instead of the tables).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write the report as a self-contained HTML page with figures to this file.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// Latency budget of a provider's API in milliseconds, held against the p95: `aurum=250`,
    /// or a bare number for every provider not named. Repeatable.
    #[arg(long = "latency-budget-ms", value_name = "[PROVIDER=]MS", value_parser = parse_budget)]
    pub latency_budgets: Vec<(Option<String>, f64)>,
    /// A running worker's metrics page, for the serving section's enrichment latency
    /// (e.g. http://127.0.0.1:9090/metrics).
    #[arg(long, value_name = "URL")]
    pub metrics_url: Option<String>,
    /// How many of the notes that disagree most to list.
    #[arg(long, default_value_t = 10)]
    pub disagreements: usize,
    /// Only this training dataset's notes for the training-data coverage (default: all).
    #[arg(long)]
    pub dataset: Option<String>,
}

/// `90m`, `24h`, `7d`: a window length.
fn parse_window(text: &str) -> Result<chrono::TimeDelta, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: i64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration like 90m, 24h or 7d"))?;
    match unit {
        "m" | "min" => Ok(chrono::TimeDelta::minutes(n)),
        "h" => Ok(chrono::TimeDelta::hours(n)),
        "d" => Ok(chrono::TimeDelta::days(n)),
        _ => Err(format!(
            "'{text}': the unit must be m, h or d (90m, 24h, 7d)"
        )),
    }
}

/// `aurum=250` or `250`.
fn parse_budget(text: &str) -> Result<(Option<String>, f64), String> {
    let (provider, ms) = match text.split_once('=') {
        Some((p, ms)) => (Some(p.trim().to_owned()), ms),
        None => (None, text),
    };
    match ms.trim().parse::<f64>() {
        Ok(ms) if ms.is_finite() && ms > 0.0 => Ok((provider, ms)),
        _ => Err(format!(
            "'{text}' is not a budget: give milliseconds above 0, as aurum=250 or 250"
        )),
    }
}

/// Options of `providers ingest`.
#[derive(Debug, Args)]
pub struct IngestArgs {
    /// The provider, as named in the pipeline spec (aurum, lumen). Rows naming another provider
    /// are refused.
    #[arg(long)]
    pub provider: String,
    /// A local file or s3://bucket/key; JSON lines or CSV (a header of dotted field paths),
    /// optionally gzip-compressed (recognized by its content). Or a provider's HTTP JSON API,
    /// http://HOST[:PORT]/PATH[?QUERY], walked page by page (see the API options below); its
    /// documents are fetched once into a temporary spool file that both passes read.
    #[arg(long, value_name = "PATH|s3://BUCKET/KEY|http://URL")]
    pub source: String,
    /// The format, when the name does not end in .jsonl/.json/.ndjson/.csv (before any .gz).
    /// Not used for an HTTP source, whose pages are JSON.
    #[arg(long, value_enum)]
    pub format: Option<crate::providers::Format>,
    /// The id to record the delivery under; default <provider>-<UTC time>-<random>.
    #[arg(long)]
    pub delivery_id: Option<String>,
    /// Documents per write batch (one round trip per collection per batch).
    #[arg(long, default_value_t = crate::providers::DEFAULT_BATCH_DOCS)]
    pub batch_docs: usize,
    /// HTTP API sources only.
    #[command(flatten)]
    pub api: ApiArgs,
}

/// How an HTTP API source is paged, paced and retried (`providers ingest --source http://...`).
#[derive(Debug, Args)]
#[command(next_help_heading = "HTTP API source")]
pub struct ApiArgs {
    /// cursor: each page's NEXT_FIELD names the next page's cursor, sent back as
    /// ?CURSOR_PARAM=...; absent, null or "" ends the delivery. page: ?PAGE_PARAM=1, 2, ...
    /// until a page with no documents.
    #[arg(long, value_enum, default_value_t = PageStyle::Cursor)]
    pub page_style: PageStyle,
    /// The page's field holding its array of documents (dots for nested fields: data.items).
    /// A page that is itself a JSON array is the documents.
    #[arg(long, default_value = "documents")]
    pub documents_field: String,
    /// Cursor paging: the page's field holding the next cursor (dots for nested fields).
    #[arg(long, default_value = "next")]
    pub next_field: String,
    /// Cursor paging: the query parameter the cursor is sent back in.
    #[arg(long, default_value = "cursor")]
    pub cursor_param: String,
    /// Page paging: the query parameter carrying the page number (from 1).
    #[arg(long, default_value = "page")]
    pub page_param: String,
    /// Requests per second at most, retries included; 0: no limit.
    #[arg(long, default_value_t = 5.0)]
    pub rate_per_sec: f64,
    /// Seconds one request may take, connecting and reading the whole page included; a
    /// request that takes longer is retried.
    #[arg(long, default_value_t = 30.0)]
    pub request_timeout_secs: f64,
    /// Attempts per page at most, the first included. Timeouts, connection errors, 429 and
    /// 5xx are retried after an exponential backoff with jitter (or the answer's Retry-After,
    /// seconds or an HTTP date); other 4xx are not retried. A page that fails every attempt
    /// fails the delivery, with nothing written.
    #[arg(long, default_value_t = 5)]
    pub max_attempts: u32,
    /// The first retry's backoff in milliseconds; it doubles per retry, up to
    /// --backoff-max-secs, and a random 50-100 % of it is waited.
    #[arg(long, default_value_t = 500)]
    pub backoff_base_ms: u64,
    /// The longest wait between two attempts in seconds, Retry-After included.
    #[arg(long, default_value_t = 30.0)]
    pub backoff_max_secs: f64,
}

/// How an HTTP API's pages follow each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PageStyle {
    /// Each page names the next page's cursor.
    Cursor,
    /// Pages numbered from 1 until an empty page.
    Page,
}

impl ApiArgs {
    /// The API settings these options give, for the URL `url`.
    pub fn http_api(&self, url: &str) -> anyhow::Result<crate::providers::HttpApi> {
        use crate::providers::{HttpApi, Paging, RequestPolicy};
        let seconds = |name: &str, value: f64| {
            anyhow::ensure!(
                value.is_finite() && value > 0.0,
                "{name} must be a positive number of seconds"
            );
            Ok(std::time::Duration::from_secs_f64(value))
        };
        Ok(HttpApi {
            url: url.to_owned(),
            paging: match self.page_style {
                PageStyle::Cursor => Paging::Cursor {
                    next_field: self.next_field.clone(),
                    cursor_param: self.cursor_param.clone(),
                },
                PageStyle::Page => Paging::Page {
                    page_param: self.page_param.clone(),
                },
            },
            documents_field: self.documents_field.clone(),
            policy: RequestPolicy {
                rate_per_sec: (self.rate_per_sec > 0.0).then_some(self.rate_per_sec),
                timeout: seconds("--request-timeout-secs", self.request_timeout_secs)?,
                max_attempts: self.max_attempts.max(1),
                backoff_base: std::time::Duration::from_millis(self.backoff_base_ms),
                backoff_max: seconds("--backoff-max-secs", self.backoff_max_secs)?,
                ..RequestPolicy::default()
            },
        })
    }
}

/// Options of `healthcheck`.
#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// Check readiness (PostgreSQL, MongoDB, model, queues) instead of liveness.
    #[arg(long)]
    pub ready: bool,
    /// The worker's base URL; default: http://127.0.0.1:<port of ML_PIPELINE_HTTP_ADDR>.
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// Seconds to wait for the answer (below the image HEALTHCHECK's 5 s timeout, so this
    /// command reports the failure itself).
    #[arg(long, default_value_t = 4)]
    pub timeout_secs: u64,
}

/// Fixture subcommands (`ml-pipeline-tools fixtures generate` writes a set).
#[derive(Debug, Subcommand)]
pub enum FixturesCommand {
    /// Load a fixture set into PostgreSQL (reference rows, training examples) and MongoDB
    /// (provider documents). Loading twice leaves the same data as loading once.
    Load(LoadArgs),
}

/// Options of `fixtures load`.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// The fixture directory to load.
    #[arg(long, default_value = "fixtures/default")]
    pub dir: PathBuf,
    /// The training dataset name the notes are stored under.
    #[arg(long, default_value = "default")]
    pub dataset: String,
    /// Apply migrations first.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub migrate: bool,
}

/// Options of `train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Training rows: `postgres` (the training_examples table) or a .csv/.json/.jsonl file.
    #[arg(long, default_value = "postgres")]
    pub data: String,
    /// Dataset name in training_examples (with --data postgres).
    #[arg(long, default_value = "default")]
    pub dataset: String,
    /// Form of file rows: canonical features by name, or raw request-shaped rows.
    #[arg(long, value_enum, default_value = "canonical")]
    pub form: crate::train::data::Form,
    /// The column of a file that holds the class (1/0, true/false or real/fake). The
    /// predecessor's CSV (`variance,skewness,curtosis,entropy,class`) needs `--label-column class`.
    #[arg(long, default_value = crate::train::data::LABEL_COLUMN)]
    pub label_column: String,
    /// Search C (and, for the Gaussian kernel, the width) by cross-validation on the same folds
    /// first, folds in parallel on every core; train with the best (ties go to the simpler
    /// model). The table is printed and recorded in the job row and the report.
    #[arg(long)]
    pub search: bool,
    /// The C values of --search.
    #[arg(long, value_delimiter = ',', default_values_t = crate::train::search::Grid::default().c)]
    pub search_c: Vec<f64>,
    /// The Gaussian widths of --search.
    #[arg(long, value_delimiter = ',', default_values_t = crate::train::search::Grid::default().widths)]
    pub search_width: Vec<f64>,
    /// Publish under this model name instead of the spec's (a second model from the same spec).
    /// The worker serves the name in ML_PIPELINE_MODEL_NAME.
    #[arg(long, env = "ML_PIPELINE_MODEL_NAME")]
    pub name: Option<String>,
    /// A pipeline spec JSON file; default: the built-in banknote spec.
    #[arg(long, value_name = "FILE")]
    pub spec: Option<PathBuf>,
    /// Keep only these features, in this order (comma-separated), e.g. variance,skewness.
    #[arg(long, value_delimiter = ',')]
    pub features: Vec<String>,
    /// SVM kernel: linear or gaussian.
    #[arg(long, default_value_t = TrainParams::default().kernel)]
    pub kernel: Kernel,
    /// Gaussian kernel width eps in exp(-|x-x'|^2/eps); eps = 1/gamma.
    #[arg(long, default_value_t = DEFAULT_KERNEL_WIDTH)]
    pub kernel_width: f64,
    /// Penalty C.
    #[arg(long, default_value_t = TrainParams::default().c)]
    pub c: f64,
    /// Class weights multiplying C, as FAKE,REAL.
    #[arg(long, value_delimiter = ',', num_args = 2, default_values_t = {
        let (fake, real) = TrainParams::default().class_weights;
        [fake, real]
    })]
    pub class_weights: Vec<f64>,
    /// SMO stopping tolerance (libsvm's default 1e-3; linfa's own 1e-7 is far slower).
    #[arg(long, default_value_t = TrainParams::default().tolerance)]
    pub tolerance: f64,
    /// Cross-validation folds.
    #[arg(long, default_value_t = TrainParams::default().folds)]
    pub folds: usize,
    /// Seed of the folds and the hold-out split.
    #[arg(long, default_value_t = TrainParams::default().seed)]
    pub seed: u64,
    /// Memory for kernel columns per Gaussian fit, in MiB (split between fits run in
    /// parallel): more makes large fits faster, never more accurate.
    #[arg(long, default_value_t = DEFAULT_KERNEL_CACHE_BYTES >> 20)]
    pub kernel_cache_mib: u64,
    /// Write the JSON report here.
    #[arg(long, default_value = "train-report.json")]
    pub report: PathBuf,
    /// Write the HTML report here: one self-contained file with the hold-out confusion matrix,
    /// decision scores per class, the ROC curve with its AUC, CV accuracy per fold and, after
    /// --search, accuracy against C and width. The job row records the path.
    #[arg(long, value_name = "PATH", default_value = "train-report.html")]
    pub html_report: PathBuf,
    /// Fit and evaluate, record the job, publish nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Registry subcommands.
#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Versions with their metrics and the aliases pointing at them.
    List {
        /// The model name; default from settings (banknote).
        #[arg(long)]
        name: Option<String>,
    },
    /// One version in full: spec, params, metrics, provenance.
    Show {
        /// The version number.
        version: u64,
        /// The model name; default from settings.
        #[arg(long)]
        name: Option<String>,
    },
    /// Point an alias at a version after loading and validating it.
    Promote {
        /// The model name.
        name: String,
        /// The version number.
        version: u64,
        /// The alias to move.
        #[arg(long, default_value = "production")]
        alias: String,
        /// Refuse a version whose CV accuracy is below the alias's current version.
        #[arg(long)]
        require_better: bool,
        /// Promote even when --require-better would refuse.
        #[arg(long)]
        force: bool,
    },
    /// Move an alias back to the version it pointed at before (from the alias object's history).
    Rollback {
        /// The model name.
        name: String,
        /// The alias to move back.
        #[arg(long, default_value = "production")]
        alias: String,
    },
    /// How the model fares in production over a window: drift of each served feature against
    /// the version's training data, shadow scoring of the challenger (agreement, score
    /// difference, time), from what the workers recorded, and both versions' accuracy on the
    /// shadowed records that feedback labelled.
    Compare {
        /// The window (`90m`, `24h`, `7d`).
        #[arg(long, default_value = "1h", value_parser = parse_window)]
        since: chrono::TimeDelta,
        /// Also write an HTML page with the PSI and the agreement over time here.
        #[arg(long, value_name = "PATH")]
        html: Option<PathBuf>,
        /// Print JSON (with the per-minute series) instead of the tables.
        #[arg(long)]
        json: bool,
        /// The model name; default from settings.
        #[arg(long)]
        name: Option<String>,
    },
    /// Metrics and spec differences between two versions.
    Diff {
        /// The first version.
        a: u64,
        /// The second version.
        b: u64,
        /// The model name; default from settings.
        #[arg(long)]
        name: Option<String>,
    },
}

/// Options of `send`.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// A fixture directory (sends bundles.jsonl and seed_bundles.jsonl) or a .json/.jsonl file.
    #[arg(long, default_value = "fixtures/default")]
    pub from: PathBuf,
    /// Body encoding.
    #[arg(long, value_enum, default_value = "identity")]
    pub encoding: EncodingArg,
    /// Bundles per second; unlimited when absent.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Send everything this many times (with fresh bundle ids after the first).
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
}

/// A body encoding on the command line.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum EncodingArg {
    /// Plain JSON.
    Identity,
    /// gzip + base64.
    Gzip,
    /// zstd + base64.
    Zstd,
}

impl From<EncodingArg> for crate::bundle::ContentEncoding {
    fn from(e: EncodingArg) -> Self {
        match e {
            EncodingArg::Identity => Self::Identity,
            EncodingArg::Gzip => Self::Gzip,
            EncodingArg::Zstd => Self::Zstd,
        }
    }
}

/// Runs a parsed command line; `shutdown` (SIGTERM or SIGINT, from main, naming the signal)
/// stops the worker, or cancels a training run.
pub async fn run(
    cli: Cli,
    shutdown: impl std::future::Future<Output = String>,
) -> anyhow::Result<()> {
    let settings = Settings::load(cli.config.as_deref()).context("reading settings")?;
    let output = match cli.command {
        Command::Migrate => commands::migrate::migrate(&settings).await?,
        Command::Fixtures(FixturesCommand::Load(args)) => {
            commands::fixtures::load(&settings, &args.dir, &args.dataset, args.migrate).await?
        }
        Command::Train(args) => train(&settings, *args, shutdown).await?,
        Command::Models(cmd) => models(&settings, cmd).await?,
        Command::Worker => {
            let summary = crate::startup::run_worker(&settings, async {
                shutdown.await;
            })
            .await?;
            anyhow::ensure!(
                summary.drained,
                "drain timeout reached; unfinished bundles were left for redelivery"
            );
            return Ok(());
        }
        Command::Healthcheck(args) => {
            commands::healthcheck::check(
                &settings,
                args.ready,
                args.url.as_deref(),
                args.timeout_secs,
            )
            .await?
        }
        Command::Send(args) => {
            commands::send::send_from(
                &settings,
                &args.from,
                args.encoding.into(),
                args.rate,
                args.repeat,
            )
            .await?
        }
        Command::Providers(cmd) => providers(&settings, cmd).await?,
        Command::Dlq(cmd) => dlq(&settings, cmd).await?,
        Command::Feedback(FeedbackCommand::Drain { wait_secs }) => {
            commands::learning::drain(&settings, wait_secs)
                .await?
                .to_string()
        }
        Command::Feedback(FeedbackCommand::Status { since }) => {
            commands::learning::status(&settings, chrono::Utc::now() - since).await?
        }
        Command::Retrain(args) => retrain(&settings, *args).await?,
    };
    println!("{}", output.trim_end());
    Ok(())
}

async fn dlq(settings: &Settings, cmd: DlqCommand) -> anyhow::Result<String> {
    match cmd {
        DlqCommand::Inspect(args) => {
            commands::dlq::inspect_command(
                settings,
                args.queues.input_queue.as_deref(),
                args.queues.dlq.as_deref(),
                args.limit,
                args.json,
            )
            .await
        }
        DlqCommand::Redrive(args) => {
            let options = commands::dlq::RedriveOptions {
                filter: commands::dlq::Filter {
                    reason: args.reason.as_deref().map(commands::dlq::Pattern::new),
                    stage: args.stage,
                },
                limit: args.limit,
                dry_run: args.dry_run,
                max_message_bytes: settings.max_message_bytes,
                retry: crate::queue::Retry::default(),
            };
            commands::dlq::redrive_command(
                settings,
                args.queues.input_queue.as_deref(),
                args.queues.dlq.as_deref(),
                options,
            )
            .await
        }
    }
}

async fn providers(settings: &Settings, cmd: ProvidersCommand) -> anyhow::Result<String> {
    match cmd {
        ProvidersCommand::Ingest(args) => {
            let source = match crate::providers::DeliverySource::parse(&args.source)
                .map_err(anyhow::Error::msg)?
            {
                crate::providers::DeliverySource::Http(api) => {
                    crate::providers::DeliverySource::Http(args.api.http_api(&api.url)?)
                }
                other => other,
            };
            let job = commands::providers::IngestJob {
                provider: args.provider,
                source,
                format: args.format,
                delivery_id: args.delivery_id,
                batch_docs: args.batch_docs,
            };
            commands::providers::ingest(settings, job).await
        }
        ProvidersCommand::Deliveries { provider, limit } => {
            commands::providers::deliveries(settings, provider.as_deref(), limit).await
        }
        ProvidersCommand::Rollback {
            delivery,
            batch_docs,
        } => commands::providers::rollback(settings, &delivery, batch_docs).await,
        ProvidersCommand::Report(args) => {
            let mut options = crate::providers::report::ReportOptions::since(
                chrono::Utc::now() - args.since,
                &settings.model_name,
            );
            for (provider, ms) in args.latency_budgets {
                match provider {
                    Some(p) => {
                        options.latency_budgets.insert(p, ms);
                    }
                    None => options.default_budget_ms = ms,
                }
            }
            options.metrics_url = args.metrics_url;
            options.disagreements = args.disagreements;
            options.dataset = args.dataset;
            commands::providers::report(
                settings,
                &options,
                args.json.as_deref(),
                args.html.as_deref(),
            )
            .await
        }
    }
}

async fn train(
    settings: &Settings,
    args: TrainArgs,
    stop: impl std::future::Future<Output = String>,
) -> anyhow::Result<String> {
    let source = match args.data.as_str() {
        "postgres" => DataSource::Postgres {
            dataset: args.dataset,
        },
        path => DataSource::File {
            path: PathBuf::from(path),
            form: args.form,
            label_column: args.label_column,
        },
    };
    let params = TrainParams {
        kernel: args.kernel,
        kernel_width: (args.kernel == Kernel::Gaussian).then_some(args.kernel_width),
        c: args.c,
        class_weights: (args.class_weights[0], args.class_weights[1]),
        tolerance: args.tolerance,
        folds: args.folds,
        seed: args.seed,
    };
    let search = args.search.then_some(crate::train::search::Grid {
        c: args.search_c,
        widths: args.search_width,
    });
    let job = commands::train::TrainJob {
        name: args.name,
        search,
        spec_file: args.spec,
        features: args.features,
        source,
        params,
        kernel_cache_mib: args.kernel_cache_mib,
        report: args.report,
        html_report: args.html_report,
        dry_run: args.dry_run,
    };
    commands::train::train(settings, job, stop).await
}

async fn retrain(settings: &Settings, args: RetrainArgs) -> anyhow::Result<String> {
    let defaults = commands::learning::retrain_options(settings);
    let opts = crate::learning::retrain::RetrainOptions {
        alias: args.alias.unwrap_or(defaults.alias.clone()),
        base_dataset: args.base_dataset.or(defaults.base_dataset.clone()),
        feedback_dataset: args
            .feedback_dataset
            .unwrap_or(defaults.feedback_dataset.clone()),
        min_new_examples: args.min_new_examples.unwrap_or(defaults.min_new_examples),
        max_hours: args.max_hours.unwrap_or(defaults.max_hours),
        drift_minutes: args.drift_minutes.unwrap_or(defaults.drift_minutes),
        challenger_alias: args.challenger_alias.or(defaults.challenger_alias.clone()),
        force: args.force,
        margin: args.margin.unwrap_or(defaults.margin),
        gate_share: args.gate_share.clamp(0.01, 0.9),
        search: args.search.then_some(crate::train::search::Grid {
            c: args.search_c,
            widths: args.search_width,
        }),
        kernel_cache_bytes: args.kernel_cache_mib << 20,
        html_report: Some(args.html_report),
        ..defaults
    };
    let outcome = commands::learning::run(settings, &opts).await?;
    Ok(if args.json {
        serde_json::to_string_pretty(&outcome)?
    } else {
        outcome.to_string()
    })
}

async fn models(settings: &Settings, cmd: ModelsCommand) -> anyhow::Result<String> {
    let registry = || crate::startup::registry(settings);
    let default_name = || settings.model_name.clone();
    Ok(match cmd {
        ModelsCommand::List { name } => {
            commands::models::list(&registry().await?, &name.unwrap_or_else(default_name)).await?
        }
        ModelsCommand::Show { version, name } => commands::models::show(
            &registry()
                .await?
                .load(&name.unwrap_or_else(default_name), version)
                .await?,
        ),
        ModelsCommand::Promote {
            name,
            version,
            alias,
            require_better,
            force,
        } => {
            let registry = registry().await?;
            commands::models::promote(&registry, &name, version, &alias, require_better && !force)
                .await?
        }
        ModelsCommand::Rollback { name, alias } => {
            let (from, to) = registry().await?.rollback(&name, &alias).await?;
            format!("{name}: alias {alias} rolled back from version {from} to version {to}")
        }
        ModelsCommand::Compare {
            since,
            html,
            json,
            name,
        } => {
            let name = name.unwrap_or_else(default_name);
            let since = chrono::Utc::now() - since;
            commands::compare::run(settings, &name, since, html.as_deref(), json).await?
        }
        ModelsCommand::Diff { a, b, name } => {
            let (registry, name) = (registry().await?, name.unwrap_or_else(default_name));
            commands::models::diff(
                &registry.load(&name, a).await?,
                &registry.load(&name, b).await?,
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_windows_and_budgets_parse_or_say_what_is_expected() {
        assert_eq!(parse_window("90m"), Ok(chrono::TimeDelta::minutes(90)));
        assert_eq!(parse_window("24h"), Ok(chrono::TimeDelta::hours(24)));
        assert_eq!(parse_window("7d"), Ok(chrono::TimeDelta::days(7)));
        assert!(parse_window("7w").unwrap_err().contains("m, h or d"));
        assert!(parse_window("h").unwrap_err().contains("90m, 24h or 7d"));
        assert_eq!(parse_budget("aurum=250"), Ok((Some("aurum".into()), 250.0)));
        assert_eq!(parse_budget("400"), Ok((None, 400.0)));
        assert!(parse_budget("aurum=-1").unwrap_err().contains("above 0"));
    }
}
