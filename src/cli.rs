//! The command line: one subcommand per job, each with its own `--help`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::fixtures::{self, GenerateOptions};
use crate::settings::Settings;
use crate::spec::PipelineSpec;

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
    /// Apply the PostgreSQL schema migrations (idempotent).
    Migrate,
    /// Generate the deterministic banknote fixture domain, or load it into PostgreSQL and MongoDB.
    #[command(subcommand)]
    Fixtures(FixturesCommand),
    /// Set up the local job end to end and print what is where (run `make demo` to start services first).
    Demo(DemoArgs),
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
            let pool = crate::db::connect(&settings.database_url, 2).await.context("connecting to PostgreSQL")?;
            crate::db::migrate(&pool).await.context("applying migrations")?;
            println!("migrations applied");
            Ok(())
        }
        Command::Fixtures(FixturesCommand::Generate(args)) => generate(&args),
        Command::Fixtures(FixturesCommand::Load(args)) => load(&settings, &args).await,
        Command::Demo(args) => demo(&settings, &args).await,
    }
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
    let planted = set.expectations.values().filter(|e| e.error.is_some()).count();
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
    let pool = crate::db::connect(&settings.database_url, 2).await.context("connecting to PostgreSQL")?;
    if args.migrate {
        crate::db::migrate(&pool).await.context("applying migrations")?;
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
    load(settings, &LoadArgs { dir: args.fixtures.clone(), dataset: "default".into(), migrate: true }).await?;
    let show = |name: &str, v: &Option<String>| println!("  {name:<14} {}", v.as_deref().unwrap_or("(not set)"));
    println!("what is where:");
    show("input queue", &settings.input_queue);
    show("output queue", &settings.output_queue);
    show("input DLQ", &settings.input_dlq);
    show("model bucket", &settings.model_bucket);
    println!("  {:<14} {}", "fixtures", args.fixtures.display());
    println!("  {:<14} tables units, scanners, issuers, issuer_aliases, training_examples", "PostgreSQL");
    println!("  {:<14} database {}, collection provider_scans", "MongoDB", settings.mongodb_database);
    Ok(())
}
