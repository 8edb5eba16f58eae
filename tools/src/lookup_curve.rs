//! `ml-pipeline-tools lookup-curve`: what an enrichment lookup costs the database servers, per
//! key, against the keys one query carries and the queries in flight at once.
//!
//! For each cell (keys per query × concurrent queries) it runs the worker's own sources,
//! `MongoDocuments` (`$in`) and `PgReference` (`= ANY`), over the loaded fixture set
//! (`ml-pipeline fixtures load`): `concurrency` tasks each send their share of the cell's queries
//! one after another, until about `--keys` keys were asked, and the server's CPU time (utime +
//! stime of its process tree in `/proc`, found as `bench` finds it) and the wall time are read
//! around it. Each cell is run `--runs` times; medians and ranges are reported.
//!
//! The MongoDB keys are the fixture notes, taken in turn; a query that needs more keys than
//! there are notes is filled with serial numbers no note has (they cost an index probe, no
//! document): the documents per key column shows it. PostgreSQL's keys are the fixture
//! scanners and issuer aliases, half each, filled the same way with absent keys (a batch
//! carries few distinct ones, so most of a large statement is absent keys either way).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::future::try_join_all;
use serde::Serialize;

use ml_pipeline::enrich::mongo::MongoDocuments;
use ml_pipeline::enrich::postgres::PgReference;
use ml_pipeline::enrich::source::LookupLimits;
use ml_pipeline::enrich::{DocumentSource, ReferenceSource};
use ml_pipeline::fixtures::FixtureSet;
use ml_pipeline::settings::Settings;
use ml_pipeline::spec::PipelineSpec;

use crate::bench::{median_range, services};

/// Options of `lookup-curve`.
#[derive(Debug, Clone, clap::Args)]
pub struct LookupCurveArgs {
    /// Keys per query, one cell column each.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "100,250,500,1000,2000,4000"
    )]
    pub keys_per_query: Vec<usize>,
    /// Queries in flight at once, one cell row each.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    pub concurrency: Vec<usize>,
    /// Keys asked per cell and run (rounded up to whole queries, a multiple of the concurrency).
    #[arg(long, default_value_t = 48_000)]
    pub keys: usize,
    /// Runs of each cell; medians and ranges are reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Which sources: mongo, postgres or both.
    #[arg(long, value_delimiter = ',', default_value = "mongo,postgres")]
    pub sources: Vec<String>,
    /// The fixture set loaded into the databases (its notes, scanners and aliases are the keys).
    #[arg(long, default_value = "fixtures/default")]
    pub fixtures: PathBuf,
    /// The directory of the local services' PID files (`localstack/lib.sh`'s `$RUN_DIR`).
    #[arg(long, env = "RUN_DIR", default_value = ".local/run")]
    pub services_run_dir: PathBuf,
    /// Also write the curve as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
}

/// One run of one cell.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CellRun {
    /// The server's CPU time over the run, per key asked, in microseconds.
    pub server_cpu_us_per_key: f64,
    /// The run's wall time per key asked, in microseconds.
    pub wall_us_per_key: f64,
    /// Keys asked per second of wall time.
    pub keys_per_s: f64,
    /// Documents (MongoDB) or rows (PostgreSQL) answered per key asked.
    pub answers_per_key: f64,
}

/// One cell of the curve: its runs and their medians and ranges.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Cell {
    /// `mongo` or `postgres`.
    pub source: String,
    /// Keys in each query.
    pub keys_per_query: usize,
    /// Queries in flight at once.
    pub concurrency: usize,
    /// Queries per run.
    pub queries: usize,
    /// Keys in each query that no row or document has (the fixtures ran out of real ones).
    pub absent_keys_per_query: usize,
    /// Each run's figures.
    pub runs: Vec<CellRun>,
    /// Median, lowest, highest server CPU µs per key.
    pub server_cpu_us_per_key: Option<(f64, f64, f64)>,
    /// Median, lowest, highest wall µs per key.
    pub wall_us_per_key: Option<(f64, f64, f64)>,
    /// Median, lowest, highest keys per second.
    pub keys_per_s: Option<(f64, f64, f64)>,
}

/// The whole curve.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Curve {
    /// Keys asked per cell and run, as requested.
    pub keys: usize,
    /// Runs per cell.
    pub runs: usize,
    /// Every cell, MongoDB first.
    pub cells: Vec<Cell>,
}

/// Runs the curve, prints its table and writes the JSON report.
pub async fn run(settings: &Settings, args: &LookupCurveArgs) -> anyhow::Result<Curve> {
    let set = ml_pipeline::fixtures::read_set(&args.fixtures)
        .with_context(|| format!("reading the fixtures in {}", args.fixtures.display()))?;
    let spec = PipelineSpec::banknote();
    let found = services::find(&args.services_run_dir);
    let most = args.concurrency.iter().copied().max().unwrap_or(1) as u32;
    let pool = ml_pipeline::startup::postgres(settings, most.max(1)).await?;
    let mongo = ml_pipeline::startup::mongo(settings).await?;
    let mut curve = Curve {
        keys: args.keys,
        runs: args.runs,
        ..Curve::default()
    };
    for source in &args.sources {
        let service = match source.as_str() {
            "mongo" => "mongo",
            "postgres" => "postgresql",
            other => anyhow::bail!("unknown source {other}: mongo or postgres"),
        };
        let service = found
            .iter()
            .find(|s| s.name == service)
            .cloned()
            .with_context(|| format!("no {service} process found from its PID file"))?;
        for &concurrency in &args.concurrency {
            for &keys_per_query in &args.keys_per_query {
                let plan = Plan::new(keys_per_query, concurrency, args.keys);
                let mut cell = Cell {
                    source: source.clone(),
                    keys_per_query,
                    concurrency: plan.concurrency,
                    queries: plan.queries,
                    ..Cell::default()
                };
                let limits = LookupLimits {
                    timeout: Duration::from_secs(120),
                    chunk_keys: keys_per_query.max(1),
                    concurrency: plan.concurrency,
                };
                for run in 0..=args.runs {
                    let before = services::cpu_times(std::slice::from_ref(&service))[0];
                    let started = Instant::now();
                    let (answers, absent) = match source.as_str() {
                        "mongo" => {
                            let docs = MongoDocuments::new(mongo.clone()).with_limits(limits);
                            mongo_run(&docs, &spec, &set, &plan).await?
                        }
                        _ => {
                            let reference = PgReference::new(pool.clone()).with_limits(limits);
                            postgres_run(&reference, &spec, &set, &plan).await?
                        }
                    };
                    let wall = started.elapsed().as_secs_f64();
                    let after = services::cpu_times(std::slice::from_ref(&service))[0];
                    cell.absent_keys_per_query = absent;
                    // The first run warms the connections and the server's caches.
                    if run == 0 {
                        continue;
                    }
                    let keys = plan.keys() as f64;
                    let cpu = match (before, after) {
                        (Some(b), Some(a)) => a.saturating_sub(b).as_secs_f64(),
                        _ => anyhow::bail!("{} (pid {}) is gone", service.name, service.pid),
                    };
                    cell.runs.push(CellRun {
                        server_cpu_us_per_key: cpu * 1e6 / keys,
                        wall_us_per_key: wall * 1e6 / keys,
                        keys_per_s: keys / wall.max(1e-9),
                        answers_per_key: answers as f64 / keys,
                    });
                }
                let pick = |f: fn(&CellRun) -> f64| {
                    median_range(&cell.runs.iter().map(f).collect::<Vec<_>>())
                };
                cell.server_cpu_us_per_key = pick(|r| r.server_cpu_us_per_key);
                cell.wall_us_per_key = pick(|r| r.wall_us_per_key);
                cell.keys_per_s = pick(|r| r.keys_per_s);
                print_cell(&cell);
                curve.cells.push(cell);
            }
        }
    }
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_string_pretty(&curve)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(curve)
}

/// How one cell's run is divided: `concurrency` tasks of `per_task` queries each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Keys in each query.
    pub keys_per_query: usize,
    /// Tasks, each with one query in flight.
    pub concurrency: usize,
    /// Queries in all.
    pub queries: usize,
}

impl Plan {
    /// Enough whole queries to ask at least `keys` keys, the same number for each task.
    pub fn new(keys_per_query: usize, concurrency: usize, keys: usize) -> Self {
        let (k, c) = (keys_per_query.max(1), concurrency.max(1));
        let per_task = keys.div_ceil(k).div_ceil(c).max(1);
        Self {
            keys_per_query: k,
            concurrency: c,
            queries: per_task * c,
        }
    }

    /// Keys asked in all.
    pub fn keys(&self) -> usize {
        self.queries * self.keys_per_query
    }

    /// The queries of task `task`, by their index over the whole run.
    pub fn queries_of(&self, task: usize) -> impl Iterator<Item = usize> {
        (task..self.queries).step_by(self.concurrency)
    }
}

/// The keys of query `query`: `known` taken in turn from where the previous query stopped
/// (never one twice in a query), then keys no row has (`<absent>-<n>`) when a query needs more
/// than there are. Returns the keys and how many are absent.
pub fn query_keys(
    known: &[String],
    keys_per_query: usize,
    query: usize,
    absent: &str,
) -> (Vec<String>, usize) {
    let real = keys_per_query.min(known.len());
    let start = if known.is_empty() {
        0
    } else {
        (query * real) % known.len()
    };
    let mut keys: Vec<String> = known
        .iter()
        .cycle()
        .skip(start)
        .take(real)
        .cloned()
        .collect();
    let missing = keys_per_query - real;
    keys.extend((0..missing).map(|n| format!("{absent}-{n}")));
    (keys, missing)
}

/// One run of MongoDB `$in` finds; the documents answered and the absent keys per query.
async fn mongo_run(
    docs: &MongoDocuments,
    spec: &PipelineSpec,
    set: &FixtureSet,
    plan: &Plan,
) -> anyhow::Result<(usize, usize)> {
    let doc_spec = spec
        .documents
        .as_ref()
        .context("the banknote spec has provider documents")?;
    let paths = spec.document_paths();
    let notes: Vec<String> = set.notes.iter().map(|n| n.note_id.clone()).collect();
    let tasks = (0..plan.concurrency).map(|task| {
        let (paths, notes) = (&paths, &notes);
        async move {
            let (mut answers, mut absent) = (0, 0);
            for query in plan.queries_of(task) {
                let (keys, missing) = query_keys(notes, plan.keys_per_query, query, "SN-ABSENT");
                let found = docs.fetch(doc_spec, paths, &keys).await?;
                answers += found.len();
                absent = missing;
            }
            Ok::<_, anyhow::Error>((answers, absent))
        }
    });
    fold(try_join_all(tasks).await?)
}

/// One run of PostgreSQL `= ANY` statements; the rows answered and the absent keys per query.
async fn postgres_run(
    reference: &PgReference,
    spec: &PipelineSpec,
    set: &FixtureSet,
    plan: &Plan,
) -> anyhow::Result<(usize, usize)> {
    let r = &set.reference;
    let known: [Vec<String>; 2] = [
        r.scanners.iter().map(|s| s.scanner_id.clone()).collect(),
        r.issuer_aliases
            .iter()
            .map(|a| a.alias_key.clone())
            .collect(),
    ];
    anyhow::ensure!(
        spec.lookups.len() == known.len(),
        "the banknote spec has two lookups"
    );
    let halves = [plan.keys_per_query / 2, plan.keys_per_query.div_ceil(2)];
    let tasks = (0..plan.concurrency).map(|task| {
        let known = &known;
        async move {
            let (mut answers, mut absent) = (0, 0);
            for query in plan.queries_of(task) {
                let (a, missing_a) = query_keys(&known[0], halves[0], query, "sc-absent");
                let (b, missing_b) = query_keys(&known[1], halves[1], query, "alias-absent");
                let found = reference.fetch(&spec.lookups, &[&a, &b]).await?;
                answers += found.iter().map(|m| m.len()).sum::<usize>();
                absent = missing_a + missing_b;
            }
            Ok::<_, anyhow::Error>((answers, absent))
        }
    });
    fold(try_join_all(tasks).await?)
}

/// The tasks' answers summed, and the absent keys per query.
fn fold(tasks: Vec<(usize, usize)>) -> anyhow::Result<(usize, usize)> {
    Ok(tasks
        .iter()
        .fold((0, 0), |(answers, _), &(a, absent)| (answers + a, absent)))
}

fn print_cell(cell: &Cell) {
    let show = |m: Option<(f64, f64, f64)>, digits: usize| match m {
        Some((med, lo, hi)) => format!("{med:.digits$} ({lo:.digits$}-{hi:.digits$})"),
        None => "-".to_owned(),
    };
    let answers = cell
        .runs
        .first()
        .map_or("-".to_owned(), |r| format!("{:.2}", r.answers_per_key));
    println!(
        "{:<8} {:>5} keys/query x{} ({} queries, {} absent keys each, {} answers/key): server CPU {} us/key, wall {} us/key, {} keys/s",
        cell.source,
        cell.keys_per_query,
        cell.concurrency,
        cell.queries,
        cell.absent_keys_per_query,
        answers,
        show(cell.server_cpu_us_per_key, 2),
        show(cell.wall_us_per_key, 2),
        show(cell.keys_per_s, 0),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_asks_at_least_the_keys_in_whole_queries_shared_evenly() {
        let p = Plan::new(1_000, 4, 48_000);
        assert_eq!((p.queries, p.keys()), (48, 48_000));
        let p = Plan::new(4_000, 4, 48_000);
        assert_eq!((p.queries, p.keys()), (12, 48_000));
        let p = Plan::new(2_000, 4, 48_000);
        assert_eq!(p.queries, 24);
        let p = Plan::new(250, 1, 1_000);
        assert_eq!(p.queries, 4);
        let p = Plan::new(4_000, 4, 1_000);
        assert_eq!(p.queries, 4, "at least one query per task");
        let mut all: Vec<usize> = (0..p.concurrency).flat_map(|t| p.queries_of(t)).collect();
        all.sort();
        assert_eq!(all, (0..p.queries).collect::<Vec<_>>(), "each query once");
    }

    #[test]
    fn a_query_takes_known_keys_in_turn_then_absent_ones() {
        let known: Vec<String> = (0..5).map(|i| format!("k{i}")).collect();
        let (keys, absent) = query_keys(&known, 3, 0, "x");
        assert_eq!(
            (keys, absent),
            (vec!["k0".into(), "k1".into(), "k2".into()], 0)
        );
        let (keys, _) = query_keys(&known, 3, 1, "x");
        assert_eq!(keys, ["k3", "k4", "k0"], "wraps around");
        let (keys, absent) = query_keys(&known, 7, 2, "x");
        assert_eq!(absent, 2);
        assert_eq!(keys, ["k0", "k1", "k2", "k3", "k4", "x-0", "x-1"]);
        let (keys, absent) = query_keys(&[], 2, 9, "x");
        assert_eq!((keys, absent), (vec!["x-0".into(), "x-1".into()], 2));
    }
}
