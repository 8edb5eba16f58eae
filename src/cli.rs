//! The command line: one subcommand per job, each with its own `--help`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::enrich::mongo::MongoDocuments;
use crate::enrich::postgres::PgReference;
use crate::fixtures::{self, GenerateOptions};
use crate::model::artifact::TrainParams;
use crate::model::registry::Registry;
use crate::settings::Settings;
use crate::spec::PipelineSpec;
use crate::train::{DataSource, TrainOptions};

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
    /// Generate the deterministic banknote fixture domain, or load it into PostgreSQL and MongoDB.
    #[command(subcommand)]
    Fixtures(FixturesCommand),
    /// Train scaler + SVM with the worker's own preprocessing, evaluate, and publish a new version.
    Train(TrainArgs),
    /// List, inspect, promote, roll back and compare model versions in the S3 registry.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Run the worker: long-poll the input queue, answer every bundle, until SIGTERM/SIGINT.
    /// Serves /metrics, /health and /ready on ML_PIPELINE_HTTP_ADDR (default 0.0.0.0:9090).
    Worker,
    /// Ask a running worker's /health (or /ready) and exit 0 when it answers 200: the container
    /// image's HEALTHCHECK. Prints the answer.
    Healthcheck(HealthcheckArgs),
    /// Publish bundles to the input queue (the fixtures' bundles, or a .json/.jsonl file).
    Send(SendArgs),
    /// Load generator: send N bundles of M fixture requests to a worker (started on its own
    /// queues, or --external), read the answers back, and report records/s, latency
    /// p50/p95/p99/max, worker CPU per 1000 records and peak RSS, beside the emulator's ceiling.
    Bench(crate::bench::BenchArgs),
    /// Fault runs under load (kill9, outage, sigterm, poison) on their own queues and worker
    /// processes; prints bundles sent, answered, duplicated and lost.
    Chaos(crate::bench::chaos::ChaosArgs),
    /// Run the whole job on the local services: load fixtures, train and promote a model, start
    /// the worker, send the fixture bundles, read the answers back, print a summary.
    /// (`make demo` starts the services and deploys the stack first.)
    Demo(DemoArgs),
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

/// Fixture subcommands.
#[derive(Debug, Subcommand)]
pub enum FixturesCommand {
    /// Generate a fixture set from a seed; the same seed always gives the same bytes.
    Generate(GenerateArgs),
    /// Load a fixture set into PostgreSQL (reference rows, training examples) and MongoDB
    /// (provider documents). Loading twice leaves the same data as loading once.
    Load(LoadArgs),
}

/// Options of `fixtures generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// RNG seed.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// How many notes (and requests) to draw.
    #[arg(long, default_value_t = 2000)]
    pub notes: usize,
    /// Records per request bundle.
    #[arg(long, default_value_t = 100)]
    pub bundle_size: usize,
    /// How many seed-format bundles to write.
    #[arg(long, default_value_t = 5)]
    pub seed_bundles: usize,
    /// Output directory.
    #[arg(long, default_value = "fixtures/default")]
    pub out: PathBuf,
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
    /// A pipeline spec JSON file; default: the built-in banknote spec.
    #[arg(long, value_name = "FILE")]
    pub spec: Option<PathBuf>,
    /// Keep only these features, in this order (comma-separated), e.g. variance,skewness.
    #[arg(long, value_delimiter = ',')]
    pub features: Vec<String>,
    /// SVM kernel.
    #[arg(long, value_parser = ["gaussian", "linear"], default_value = "gaussian")]
    pub kernel: String,
    /// Gaussian kernel width eps in exp(-|x-x'|^2/eps); eps = 1/gamma.
    #[arg(long, default_value_t = 4.0)]
    pub kernel_width: f64,
    /// Penalty C.
    #[arg(long, default_value_t = 10.0)]
    pub c: f64,
    /// Class weights multiplying C, as FAKE,REAL.
    #[arg(long, value_delimiter = ',', num_args = 2, default_values_t = [1.0, 1.0])]
    pub class_weights: Vec<f64>,
    /// SMO stopping tolerance (libsvm's default 1e-3; linfa's own 1e-7 is far slower).
    #[arg(long, default_value_t = 1e-3)]
    pub tolerance: f64,
    /// Cross-validation folds.
    #[arg(long, default_value_t = 5)]
    pub folds: usize,
    /// Seed of the folds and the hold-out split.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Refuse data whose n x n kernel matrix exceeds this many GiB.
    #[arg(long, default_value_t = 4.0)]
    pub kernel_budget_gib: f64,
    /// Write the JSON report here.
    #[arg(long, default_value = "train-report.json")]
    pub report: PathBuf,
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

/// Options of `demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// The fixture directory to use.
    #[arg(long, default_value = "fixtures/default")]
    pub fixtures: PathBuf,
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = Settings::load(cli.config.as_deref()).context("reading settings")?;
    match cli.command {
        Command::Migrate => {
            crate::db::connect_migrated(&settings.database_url, 2).await?;
            let mongo =
                crate::mongo::connect(&settings.mongodb_uri, &settings.mongodb_database).await?;
            crate::mongo::ensure_indexes(&mongo, &PipelineSpec::banknote())
                .await
                .context("creating MongoDB indexes")?;
            println!("PostgreSQL migrations applied; MongoDB indexes in place");
            Ok(())
        }
        Command::Fixtures(FixturesCommand::Generate(args)) => generate(&args),
        Command::Fixtures(FixturesCommand::Load(args)) => load(&settings, &args).await,
        Command::Train(args) => train(&settings, &args).await,
        Command::Models(cmd) => crate::model::commands::run(&settings, cmd).await,
        Command::Worker => {
            let summary = crate::worker::start(&settings).await?;
            anyhow::ensure!(
                summary.drained,
                "drain timeout reached; unfinished bundles were left for redelivery"
            );
            Ok(())
        }
        Command::Healthcheck(args) => healthcheck(&settings, &args).await,
        Command::Send(args) => send(&settings, &args).await,
        Command::Bench(args) => crate::bench::run(&settings, &args).await.map(drop),
        Command::Chaos(args) => {
            let tally = crate::bench::chaos::run(&args).await?;
            anyhow::ensure!(tally.lost == 0, "{} bundles lost", tally.lost);
            Ok(())
        }
        Command::Demo(args) => demo(&settings, &args).await,
    }
}

async fn healthcheck(settings: &Settings, args: &HealthcheckArgs) -> anyhow::Result<()> {
    let base = match &args.url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => {
            let addr = settings.http_addr()?.context(
                "ML_PIPELINE_HTTP_ADDR is off: the worker serves no health endpoint to ask",
            )?;
            format!("http://127.0.0.1:{}", addr.port())
        }
    };
    let url = format!("{base}/{}", if args.ready { "ready" } else { "health" });
    let reply = crate::http::request(
        "GET",
        &url,
        None,
        std::time::Duration::from_secs(args.timeout_secs.max(1)),
    )
    .await?;
    println!("{}", reply.body);
    anyhow::ensure!(
        reply.status == 200,
        "{url} answered {}: the worker is not {}",
        reply.status,
        if args.ready { "ready" } else { "healthy" }
    );
    Ok(())
}

fn generate(args: &GenerateArgs) -> anyhow::Result<()> {
    let opts = GenerateOptions {
        seed: args.seed,
        notes: args.notes,
        bundle_size: args.bundle_size,
        seed_bundles: args.seed_bundles,
    };
    let set = fixtures::generate(&PipelineSpec::banknote(), &opts);
    fixtures::write_set(&set, &args.out)?;
    let planted = set
        .expectations
        .values()
        .filter(|e| e.error.is_some())
        .count();
    println!(
        "wrote {} notes, {} provider documents, {} bundles ({} planted bad records), {} seed bundles, {} poison cases to {}",
        set.notes.len(),
        set.provider_scans.len(),
        set.bundles.len(),
        planted,
        set.seed_bundles.len(),
        set.poison.len(),
        args.out.display()
    );
    Ok(())
}

async fn load(settings: &Settings, args: &LoadArgs) -> anyhow::Result<()> {
    let set = fixtures::read_set(&args.dir)?;
    let spec = PipelineSpec::banknote();
    let pool = crate::db::connect(&settings.database_url, 2)
        .await
        .context("connecting to PostgreSQL")?;
    if args.migrate {
        crate::db::migrate(&pool)
            .await
            .context("applying migrations")?;
    }
    let mongo = crate::mongo::connect(&settings.mongodb_uri, &settings.mongodb_database).await?;
    let report = fixtures::load::load(&set, &spec, &pool, &mongo, &args.dataset).await?;
    println!(
        "loaded {} reference rows and {} training examples into PostgreSQL, {} provider documents into MongoDB database {}",
        report.reference_rows, report.training_rows, report.documents, settings.mongodb_database
    );
    Ok(())
}

async fn demo(settings: &Settings, args: &DemoArgs) -> anyhow::Result<()> {
    crate::demo::run(settings, &args.fixtures).await
}

/// Connects the enrichment sources named by the settings.
pub async fn enricher(
    settings: &Settings,
    pool: &sqlx::PgPool,
) -> anyhow::Result<crate::enrich::Enricher<PgReference, MongoDocuments>> {
    let mongo = crate::mongo::connect(&settings.mongodb_uri, &settings.mongodb_database)
        .await
        .context("connecting to MongoDB")?;
    Ok(crate::enrich::Enricher {
        reference: PgReference::new(pool.clone()),
        documents: MongoDocuments::new(mongo),
    })
}

/// The model registry named by the settings.
pub async fn registry(settings: &Settings) -> anyhow::Result<Registry> {
    let config = crate::aws::sdk_config(std::time::Duration::from_secs(30)).await;
    Ok(Registry::new(
        crate::aws::s3(&config, settings.s3_force_path_style),
        settings.require_bucket()?,
    ))
}

async fn train(settings: &Settings, args: &TrainArgs) -> anyhow::Result<()> {
    let mut spec = match &args.spec {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("{} is not a pipeline spec", path.display()))?
        }
        None => PipelineSpec::banknote(),
    };
    if !args.features.is_empty() {
        let names: Vec<&str> = args.features.iter().map(String::as_str).collect();
        spec = spec.with_features(&names)?;
    }
    let source = match args.data.as_str() {
        "postgres" => DataSource::Postgres {
            dataset: args.dataset.clone(),
        },
        path => DataSource::File {
            path: PathBuf::from(path),
            form: args.form,
        },
    };
    let params = TrainParams {
        kernel: args.kernel.clone(),
        kernel_width: (args.kernel == "gaussian").then_some(args.kernel_width),
        c: args.c,
        class_weights: (args.class_weights[0], args.class_weights[1]),
        tolerance: args.tolerance,
        folds: args.folds,
        seed: args.seed,
    };
    let opts = TrainOptions {
        spec,
        source,
        params,
        kernel_budget_bytes: (args.kernel_budget_gib * f64::from(1u32 << 30)) as u64,
        dry_run: args.dry_run,
    };
    let pool = crate::db::connect_migrated(&settings.database_url, 2).await?;
    let enricher = enricher(settings, &pool).await?;
    let registry = if args.dry_run {
        None
    } else {
        Some(registry(settings).await?)
    };
    let (report, _) = crate::train::train(&opts, &pool, &enricher, registry.as_ref()).await?;
    println!("{report}");
    std::fs::write(&args.report, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", args.report.display()))?;
    println!("  report     {}", args.report.display());
    Ok(())
}

async fn send(settings: &Settings, args: &SendArgs) -> anyhow::Result<()> {
    let bundles = crate::send::read_bundles(&args.from)?;
    let sdk = crate::aws::sdk_config(std::time::Duration::from_secs(30)).await;
    let queue_name = settings
        .input_queue
        .as_deref()
        .context("set ML_PIPELINE_INPUT_QUEUE (a queue URL or name)")?;
    let queue = crate::queue::SqsQueue::resolve(crate::aws::sqs(&sdk), queue_name).await?;
    let mut total = 0;
    for round in 0..args.repeat.max(1) {
        let batch: Vec<serde_json::Value> = if round == 0 {
            bundles.clone()
        } else {
            bundles
                .iter()
                .map(|b| crate::send::with_fresh_id(b, round))
                .collect()
        };
        total += crate::send::send(&queue, &batch, args.encoding.into(), args.rate).await?;
    }
    println!("sent {total} bundles to {}", queue.url());
    Ok(())
}
