//! `ml-pipeline-tools`: what developers run around the worker, not what ships in its image: the
//! load generator, the chaos runner, the fixture generator and the demo. Everything here uses
//! only the `ml_pipeline` library's public API.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use ml_pipeline::settings::Settings;
use ml_pipeline::spec::PipelineSpec;
use ml_pipeline_tools::{bench, demo, generator, lookup_curve, train_bench};

/// Developer tools for the ml-pipeline worker: load generator, chaos runs, fixture generator,
/// demo. Settings come from the same environment variables as the worker (see the README).
#[derive(Debug, Parser)]
#[command(name = "ml-pipeline-tools", version, propagate_version = true)]
struct Cli {
    /// A JSON settings file; environment variables override its values.
    #[arg(long, global = true, env = "ML_PIPELINE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Load generator: send N bundles of M fixture requests to a worker (the `ml-pipeline`
    /// binary beside this one, started on its own queues, or --external), read the answers
    /// back, and report records/s, latency p50/p95/p99/max, worker CPU per 1000 records and
    /// peak RSS, beside the emulator's ceiling; from the worker's /metrics, its SQS requests
    /// per 1000 bundles by kind and their list-price cost per million bundles, its database
    /// round trips per 1000 records; and the local services' CPU per 1000 records.
    Bench(bench::BenchArgs),
    /// Fault runs under load (kill9, kill9-workers, outage, sigterm, poison, wide) on their own
    /// queues and worker processes; prints bundles sent, answered, duplicated and lost, and
    /// fails when one is lost or a scenario's own check fails.
    Chaos(bench::chaos::ChaosArgs),
    /// Run the whole job on the local services: load fixtures, train and promote a model, start
    /// the worker, send the fixture bundles, read the answers back, print a summary.
    /// (`make demo` starts the services and deploys the stack first.)
    Demo(DemoArgs),
    /// The lookup curve (issue 18): the database servers' CPU and the wall time per key of the
    /// enrichment lookups (MongoDB `$in`, PostgreSQL `= ANY`) against keys per query and queries
    /// in flight, over the loaded fixtures; a table, and JSON with --report.
    LookupCurve(lookup_curve::LookupCurveArgs),
    /// The deterministic banknote fixture domain.
    #[command(subcommand)]
    Fixtures(FixturesCommand),
    /// Training benchmark (issue 13): time and peak RSS of the final fit at several sizes,
    /// each fit in a child process of its own; a markdown table and the growth between sizes.
    TrainBench(train_bench::TrainBenchArgs),
    /// Our side of the scikit-learn comparison: out-of-fold decisions on the library's seeded
    /// folds (oof.csv) and per-fold accuracy and full-fit time (ours.json); then run
    /// tools/compare/sklearn_compare.py on the same directory.
    TrainCompare(train_bench::compare::CompareArgs),
}

#[derive(Debug, Subcommand)]
enum FixturesCommand {
    /// Generate a fixture set from a seed; the same seed always gives the same bytes.
    Generate(GenerateArgs),
}

/// Options of `fixtures generate`.
#[derive(Debug, Args)]
struct GenerateArgs {
    /// RNG seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// How many notes (and requests) to draw.
    #[arg(long, default_value_t = 2000)]
    notes: usize,
    /// Records per request bundle.
    #[arg(long, default_value_t = 100)]
    bundle_size: usize,
    /// How many seed-format bundles to write.
    #[arg(long, default_value_t = 5)]
    seed_bundles: usize,
    /// Output directory.
    #[arg(long, default_value = "fixtures/default")]
    out: PathBuf,
}

/// Options of `demo`.
#[derive(Debug, Args)]
struct DemoArgs {
    /// The fixture directory to use.
    #[arg(long, default_value = "fixtures/default")]
    fixtures: PathBuf,
    /// Where the provider report's HTML and JSON are written.
    #[arg(long, default_value = ".local/demo")]
    report_dir: PathBuf,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    ml_pipeline::telemetry::init();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = Settings::load(cli.config.as_deref()).context("reading settings")?;
    match cli.command {
        Command::Bench(args) => bench::run(&settings, &args).await.map(drop),
        Command::Chaos(args) => {
            let tally = bench::chaos::run(&args).await?;
            anyhow::ensure!(tally.lost == 0, "{} bundles lost", tally.lost);
            Ok(())
        }
        Command::Demo(args) => demo::run(&settings, &args.fixtures, &args.report_dir).await,
        Command::Fixtures(FixturesCommand::Generate(args)) => generate(&args),
        Command::LookupCurve(args) => lookup_curve::run(&settings, &args).await.map(drop),
        Command::TrainBench(args) => train_bench::run(&args).await,
        Command::TrainCompare(args) => train_bench::compare::run(&args).map(drop),
    }
}

fn generate(args: &GenerateArgs) -> anyhow::Result<()> {
    let opts = generator::generate::GenerateOptions {
        seed: args.seed,
        notes: args.notes,
        bundle_size: args.bundle_size,
        seed_bundles: args.seed_bundles,
    };
    let set = generator::generate::generate(&PipelineSpec::banknote(), &opts);
    ml_pipeline::fixtures::write_set(&set, &args.out)?;
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
