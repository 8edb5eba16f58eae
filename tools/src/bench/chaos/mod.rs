//! `ml-pipeline-tools chaos`: fault runs under load, each ending in counts of bundles sent, answered,
//! duplicated (listed by `bundle_id`) and lost. Each run gets its own queues and starts its own
//! worker processes. The reader keeps reading for a settle period after every bundle has an
//! answer, so that a late duplicate (a redelivered message answered again) is counted too.
//!
//! - `kill9`: SIGKILL the worker at random moments while a load runs, restarting it each time.
//! - `kill9-workers`: the same with several workers on one queue, a random one killed each time.
//! - `outage`: stop PostgreSQL, then MongoDB, for a while each during a paced load, with the
//!   local services' scripts; reports, per service, the time from its return to the next answer
//!   and to the answers of all the bundles it held back (median and max).
//! - `sigterm`: SIGTERM during load; reports the drain time, then a second worker finishes the
//!   rest and the messages it saw redelivered (receive count above 1) are counted.
//! - `poison`: the fixture poison corpus mixed into good traffic; each case is checked on its
//!   own ([`poison`]), the good traffic must all be answered, and the worker process must still
//!   be the same one at the end.
//! - `wide`: wide gzip bundles up to the body-size limit in one burst with a few normal ones;
//!   reports the worker's peak RSS and where each bundle went ([`wide`]).

pub mod poison;
pub mod wide;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::Context;
use aws_sdk_sqs::types::MessageAttributeValue;
use rand::Rng;

use super::load::{self, Prepared, ReadPlan, SendTimes, Tally};
use super::{create_queue, spawn_worker_with, stop};
use ml_pipeline::bundle::compression::ContentEncoding;
use ml_pipeline::fixtures::FixtureSet;
use ml_pipeline::queue::SqsQueue;

/// The fault to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// SIGKILL the worker repeatedly during load, restarting it each time.
    Kill9,
    /// Several workers (--workers) on one queue; SIGKILL a random one repeatedly during load,
    /// restarting it each time.
    Kill9Workers,
    /// Stop PostgreSQL, then MongoDB, during a paced load.
    Outage,
    /// SIGTERM during load: drain time and redeliveries.
    Sigterm,
    /// The poison corpus mixed into good traffic, each case checked.
    Poison,
    /// Wide gzip bundles up to the body-size limit in one burst: peak RSS, and each bundle
    /// answered or dead-lettered with a reason.
    Wide,
}

/// Options of `chaos`.
#[derive(Debug, Clone, clap::Args)]
pub struct ChaosArgs {
    /// The fault to inject.
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// Bundles of the load (for `wide`: the normal bundles sent beside the wide ones).
    #[arg(long, default_value_t = 500)]
    pub bundles: usize,
    /// Records per bundle.
    #[arg(long, default_value_t = 100)]
    pub records: usize,
    /// Send rate in records per second (kill9, kill9-workers and outage).
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    /// kill9, kill9-workers: how many kills at least.
    #[arg(long, default_value_t = 10)]
    pub kills: usize,
    /// kill9-workers: worker processes on the queue.
    #[arg(long, default_value_t = 3)]
    pub workers: usize,
    /// outage: seconds each service stays down.
    #[arg(long, default_value_t = 15)]
    pub down_secs: u64,
    /// outage: every Nth bundle has one record with an issuer never seen before, which no
    /// cache can answer while PostgreSQL is down (0: none).
    #[arg(long, default_value_t = 10)]
    pub unseen_every: usize,
    /// wide: how many wide bundles.
    #[arg(long, default_value_t = 10)]
    pub wide: usize,
    /// wide: numeric columns added to each wide row, beside the model's own.
    #[arg(long, default_value_t = 800)]
    pub wide_columns: usize,
    /// wide: the worker's body-size limit in bytes; each wide bundle decompresses to at most
    /// this (the same variable as the worker's).
    #[arg(long, env = "ML_PIPELINE_MAX_BODY_BYTES", default_value_t = 16 << 20)]
    pub max_body_bytes: usize,
    /// wide: the largest SQS message, in bytes; each wide bundle's compressed body fits one
    /// (the same variable as the worker's).
    #[arg(long, env = "ML_PIPELINE_MAX_MESSAGE_BYTES", default_value_t = ml_pipeline::queue::MAX_SQS_MESSAGE_BYTES)]
    pub max_message_bytes: usize,
    /// wide: the worker's rows-per-bundle limit (the same variable as the worker's).
    #[arg(long, env = "ML_PIPELINE_MAX_ROWS", default_value_t = 10_000)]
    pub max_rows: usize,
    /// wide: fail when the worker's peak RSS is above this many MiB (default: the task memory
    /// of infra/worker-service.yaml).
    #[arg(long, default_value_t = 1024)]
    pub rss_bound_mib: u64,
    /// The queues' visibility timeout in seconds (how soon a killed worker's messages return).
    #[arg(long, default_value_t = 10)]
    pub visibility_secs: u32,
    /// Seconds the reader keeps reading after every bundle has an answer, to count late
    /// duplicates. Default: the visibility timeout + 5 s, the longest a message abandoned by a
    /// killed worker can take to be answered again.
    #[arg(long)]
    pub settle_secs: Option<u64>,
    /// The fixture set whose requests fill the bundles (loaded into the databases).
    #[arg(long, default_value = "fixtures/default")]
    pub fixtures: PathBuf,
    /// outage: the directory of the local services' scripts (`postgres.sh`, `mongo.sh`).
    /// `localstack/with-env.sh` exports it as LOCALSTACK_DIR, so running through a checkout's
    /// `with-env.sh` uses that checkout's scripts and its service state, whatever the current
    /// directory (a git worktree, for one).
    #[arg(long, env = "LOCALSTACK_DIR", default_value = "localstack")]
    pub services_dir: PathBuf,
}

impl ChaosArgs {
    fn settle(&self) -> Duration {
        Duration::from_secs(
            self.settle_secs
                .unwrap_or(u64::from(self.visibility_secs) + 5),
        )
    }
}

/// One run's queues, worker environment and load.
pub struct Run<'a> {
    /// The options.
    pub args: &'a ChaosArgs,
    /// The fixture set.
    pub set: FixtureSet,
    /// The SQS client.
    pub sqs: aws_sdk_sqs::Client,
    /// Names this run's queues and worker logs.
    pub run_id: String,
    /// The workers' input queue.
    pub input: SqsQueue,
    /// Their output queue.
    pub output: SqsQueue,
    /// Their dead-letter queue.
    pub dlq: SqsQueue,
    /// The workers' environment on top of this process's.
    pub env: Vec<(&'static str, String)>,
    /// The bundles of the load.
    pub bundles: Vec<Prepared>,
}

impl Run<'_> {
    /// The load's bundle ids.
    pub fn ids(&self) -> Vec<String> {
        self.bundles.iter().map(|b| b.bundle_id.clone()).collect()
    }

    /// The reader's plan: give up after a long silence, settle after the last answer.
    pub fn plan(&self) -> ReadPlan {
        let idle = Duration::from_secs(u64::from(self.args.visibility_secs) * 3 + 30);
        ReadPlan::new(2, idle).settle(self.args.settle())
    }

    /// Starts worker `name` of this run.
    pub fn spawn(&self, name: &str) -> anyhow::Result<Child> {
        spawn_worker_with(&self.env, &worker_log(&self.run_id, name))
    }

    /// Reads the load's answers with [`Run::plan`].
    async fn read_answers(&self) -> load::Arrivals {
        load::collect(&self.sqs, self.output.url(), &self.ids(), &self.plan()).await
    }

    /// Sends the load at the configured rate.
    async fn send_paced(&self) -> anyhow::Result<SendTimes> {
        let rate = Some(self.args.rate);
        load::send(
            &self.input,
            &self.bundles,
            ContentEncoding::Identity,
            rate,
            1,
            self.args.max_message_bytes,
        )
        .await
    }
}

/// What a scenario found: its counts, and each check it failed beyond them.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Bundles sent, answered, duplicated, lost.
    pub tally: Tally,
    /// Each failed check, in words; empty when all held.
    pub failures: Vec<String>,
}

impl From<Tally> for Outcome {
    fn from(tally: Tally) -> Self {
        Self {
            tally,
            failures: Vec::new(),
        }
    }
}

/// Runs one scenario and prints its counts; fails when a scenario's own check failed (a lost
/// bundle is for the caller to judge).
pub async fn run(args: &ChaosArgs) -> anyhow::Result<Tally> {
    let set = ml_pipeline::fixtures::read_set(&args.fixtures)
        .with_context(|| format!("reading the fixtures in {}", args.fixtures.display()))?;
    let sdk = ml_pipeline::aws::sdk_config(Duration::from_secs(30)).await;
    let sqs = ml_pipeline::aws::sqs(&sdk);
    let run_id = format!("chaos-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let mut created = Vec::new();
    let outcome = async {
        let vis = args.visibility_secs.to_string();
        let dlq = create_queue(&sqs, &format!("{run_id}-dlq"), &vis, &mut created).await?;
        let input = create_queue(&sqs, &format!("{run_id}-in"), &vis, &mut created).await?;
        let output = create_queue(&sqs, &format!("{run_id}-out"), &vis, &mut created).await?;
        let env = vec![
            ("ML_PIPELINE_INPUT_QUEUE", input.url().to_owned()),
            ("ML_PIPELINE_OUTPUT_QUEUE", output.url().to_owned()),
            ("ML_PIPELINE_INPUT_DLQ", dlq.url().to_owned()),
            ("ML_PIPELINE_WAIT_SECS", "2".to_owned()),
        ];
        let bundles = match args.scenario {
            Scenario::Outage => unseen_issuer_bundles(&set, args, &run_id),
            _ => load::bundles(
                &set,
                args.bundles,
                args.records,
                &run_id,
                ContentEncoding::Identity,
            ),
        };
        println!(
            "chaos {:?}: {} bundles x {} records, run {run_id}, settle {} s",
            args.scenario,
            bundles.len(),
            args.records,
            args.settle().as_secs()
        );
        let run = Run {
            args,
            set,
            sqs: sqs.clone(),
            run_id: run_id.clone(),
            input,
            output,
            dlq,
            env,
            bundles,
        };
        match args.scenario {
            Scenario::Kill9 => kill_under_load(&run, 1).await.map(Outcome::from),
            Scenario::Kill9Workers => {
                anyhow::ensure!(args.workers >= 2, "kill9-workers needs --workers 2 or more");
                kill_under_load(&run, args.workers).await.map(Outcome::from)
            }
            Scenario::Outage => outage(&run).await.map(Outcome::from),
            Scenario::Sigterm => sigterm(&run).await.map(Outcome::from),
            Scenario::Poison => poison::run(&run).await,
            Scenario::Wide => wide::run(&run).await,
        }
    }
    .await;
    for url in created {
        let _ = sqs.delete_queue().queue_url(url).send().await;
    }
    let Outcome { tally, failures } = outcome?;
    print_tally(&tally);
    anyhow::ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(tally)
}

/// Sends each message (body, string attributes) on its own and returns SQS's message id for
/// each, in order: the worker's dead-letter copy names it as `source-message-id`.
pub async fn send_tracked(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    messages: &[(String, Vec<(String, String)>)],
) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::with_capacity(messages.len());
    for (body, attributes) in messages {
        let mut request = sqs.send_message().queue_url(queue_url).message_body(body);
        for (name, value) in attributes {
            let value = MessageAttributeValue::builder()
                .data_type("String")
                .string_value(value)
                .build()?;
            request = request.message_attributes(name, value);
        }
        let sent = request.send().await.context("sending a message")?;
        ids.push(
            sent.message_id
                .context("SendMessage returned no message id")?,
        );
    }
    Ok(ids)
}

fn print_tally(tally: &Tally) {
    println!(
        "  bundles: {} sent, {} answered, {} dead-lettered with a reason, {} duplicated ({} of them during the settle period), {} lost",
        tally.sent, tally.answered, tally.dead_lettered, tally.duplicated, tally.late_duplicates, tally.lost
    );
    for (id, copies) in &tally.duplicates {
        println!("  duplicated: {id} answered {copies} times");
    }
}

/// kill9 (one worker) and kill9-workers: SIGKILL a random worker at random moments while the
/// paced load runs, restarting it each time, until the load is sent and enough kills were made.
async fn kill_under_load(run: &Run<'_>, workers: usize) -> anyhow::Result<Tally> {
    let mut slots = (0..workers)
        .map(|w| run.spawn(&format!("{w}-0")))
        .collect::<anyhow::Result<Vec<Child>>>()?;
    let reader = run.read_answers();
    let records: usize = run.bundles.iter().map(|b| b.records).sum();
    let load_secs = records as f64 / run.args.rate;
    let killer = async {
        let mut kills = 0;
        let mut restarts = vec![0usize; workers];
        let started = Instant::now();
        while kills < run.args.kills || started.elapsed().as_secs_f64() < load_secs {
            let (wait, w) = {
                let mut rng = rand::rng();
                (rng.random_range(300..2500), rng.random_range(0..workers))
            };
            tokio::time::sleep(Duration::from_millis(wait)).await;
            let pid = slots[w].id();
            let _ = slots[w].kill();
            let _ = slots[w].wait();
            kills += 1;
            restarts[w] += 1;
            println!(
                "  kill -9 #{kills}: worker {w} (pid {pid}) after {:.1} s; restarting",
                started.elapsed().as_secs_f64()
            );
            slots[w] = run.spawn(&format!("{w}-{}", restarts[w]))?;
        }
        anyhow::Ok((kills, restarts))
    };
    let (arrivals, times, killed) = tokio::join!(reader, run.send_paced(), killer);
    let tally = Tally::new(&times?.lock().await.clone(), &arrivals);
    for worker in &mut slots {
        stop(worker);
    }
    let (kills, restarts) = killed?;
    println!("  {kills} kills over {workers} worker(s); kills per worker: {restarts:?}");
    Ok(tally)
}

/// The load of the outage run: every `unseen_every`th bundle has one record whose issuer no
/// run has sent before, so no cache holds it.
fn unseen_issuer_bundles(set: &FixtureSet, args: &ChaosArgs, run_id: &str) -> Vec<Prepared> {
    let every = args.unseen_every;
    load::bundles_with(
        set,
        args.bundles,
        args.records,
        run_id,
        ContentEncoding::Identity,
        |i, columns, rows| {
            let issuer = columns.iter().position(|c| c == "issuer");
            if let (true, Some(col), Some(row)) =
                (every > 0 && i % every == 0, issuer, rows.first_mut())
            {
                row[col] = serde_json::Value::String(format!("Issuer {run_id} {i}"));
            }
        },
    )
}

/// When a service was stopped and when it was back.
struct Downtime {
    service: &'static str,
    stopped: Instant,
    back: Instant,
}

/// outage: PostgreSQL, then MongoDB, stopped for `down_secs` each during a paced load.
async fn outage(run: &Run<'_>) -> anyhow::Result<Tally> {
    let mut worker = run.spawn("0")?;
    let reader = run.read_answers();
    let faults = async {
        let mut downtimes: Vec<Downtime> = Vec::new();
        let started = Instant::now();
        for service in ["postgres", "mongo"] {
            tokio::time::sleep(Duration::from_secs(5)).await;
            service_script(&run.args.services_dir, service, "stop")?;
            let stopped = Instant::now();
            let since = match downtimes.last() {
                Some(d) => format!(
                    "{:.1} s after {} returned",
                    secs(stopped, d.back),
                    d.service
                ),
                None => format!("{:.1} s into the load", secs(stopped, started)),
            };
            println!("  {service} stopped, {since}");
            tokio::time::sleep(Duration::from_secs(run.args.down_secs)).await;
            service_script(&run.args.services_dir, service, "start")?;
            let back = Instant::now();
            println!("  {service} back");
            downtimes.push(Downtime {
                service,
                stopped,
                back,
            });
        }
        anyhow::Ok(downtimes)
    };
    let (arrivals, times, downtimes) = tokio::join!(reader, run.send_paced(), faults);
    let times = times?.lock().await.clone();
    let tally = Tally::new(&times, &arrivals);
    stop(&mut worker);
    for d in downtimes? {
        report_recovery(&d, &times, &arrivals);
    }
    Ok(tally)
}

/// The first answer after a service's return, and how long the bundles it held took.
fn report_recovery(d: &Downtime, sent: &HashMap<String, Instant>, arrivals: &load::Arrivals) {
    let service = d.service;
    let next = arrivals
        .by_bundle
        .values()
        .flatten()
        .filter(|t| **t > d.back)
        .min();
    match next {
        Some(t) => println!(
            "  {service}: first answer {:.2} s after it returned",
            secs(*t, d.back)
        ),
        None => println!("  {service}: no answer after it returned"),
    }
    let held = held_delays(d.back, sent, arrivals);
    let answered_while_down = sent
        .keys()
        .filter_map(|id| arrivals.by_bundle.get(id)?.iter().min())
        .filter(|first| **first > d.stopped && **first <= d.back)
        .count();
    println!(
        "  {service}: down {:.1} s; {answered_while_down} bundles answered while it was down",
        secs(d.back, d.stopped)
    );
    let total = held.delays.len() + held.unanswered;
    let within = held.delays.iter().filter(|d| **d <= 5.0).count();
    match super::median_range(&held.delays) {
        Some((median, _, max)) => println!(
            "  {service}: {total} bundles held at its return; {} answered, the last {max:.2} s after it returned (median {median:.2} s, max {max:.2} s); {within} of {total} within 5 s; {} never answered",
            held.delays.len(),
            held.unanswered
        ),
        None => println!("  {service}: {total} bundles held at its return, {} never answered", held.unanswered),
    }
}

/// Bundles sent before `back` and not answered by then.
#[derive(Debug, Default, PartialEq)]
struct Held {
    /// Seconds from `back` to each one's first answer.
    delays: Vec<f64>,
    /// Those never answered.
    unanswered: usize,
}

fn held_delays(back: Instant, sent: &HashMap<String, Instant>, arrivals: &load::Arrivals) -> Held {
    let mut held = Held::default();
    for id in sent.iter().filter(|(_, at)| **at < back).map(|(id, _)| id) {
        match arrivals.by_bundle.get(id).and_then(|c| c.iter().min()) {
            Some(first) if *first > back => held.delays.push(secs(*first, back)),
            Some(_) => {}
            None => held.unanswered += 1,
        }
    }
    held
}

fn secs(later: Instant, earlier: Instant) -> f64 {
    later.saturating_duration_since(earlier).as_secs_f64()
}

/// sigterm: SIGTERM 3 s into a burst; a second worker finishes the rest.
async fn sigterm(run: &Run<'_>) -> anyhow::Result<Tally> {
    let mut first = run.spawn("0")?;
    let reader = run.read_answers();
    let sender = load::send(
        &run.input,
        &run.bundles,
        ContentEncoding::Identity,
        None,
        4,
        run.args.max_message_bytes,
    );
    let term = async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let at = Instant::now();
        stop(&mut first);
        let status = first
            .try_wait()
            .ok()
            .flatten()
            .map_or("?".into(), |s| s.to_string());
        println!(
            "  SIGTERM: worker exited after {:.2} s ({status})",
            at.elapsed().as_secs_f64()
        );
        run.spawn("1")
    };
    let (arrivals, times, second) = tokio::join!(reader, sender, term);
    let mut second = second?;
    let tally = Tally::new(&times?.lock().await.clone(), &arrivals);
    stop(&mut second);
    let redelivered = redelivered(&worker_log(&run.run_id, "1"))?;
    println!("  messages the second worker saw redelivered: {redelivered}");
    Ok(tally)
}

/// Runs `<dir>/<service>.sh <action>` (the local services' scripts).
fn service_script(dir: &Path, service: &str, action: &str) -> anyhow::Result<()> {
    let script = dir.join(format!("{service}.sh"));
    let status = std::process::Command::new(&script)
        .arg(action)
        .stdout(std::process::Stdio::null())
        .status()
        .with_context(|| {
            format!(
                "running {} (run chaos from the repository root, through localstack/with-env.sh, or pass --services-dir)",
                script.display()
            )
        })?;
    anyhow::ensure!(status.success(), "{} {action} failed", script.display());
    Ok(())
}

/// The log file of worker `n` of run `run_id`.
pub fn worker_log(run_id: &str, n: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{run_id}-worker-{n}.log"))
}

/// Answered bundles whose message had been received before (receive_count above 1).
fn redelivered(log: &Path) -> anyhow::Result<usize> {
    let text =
        std::fs::read_to_string(log).with_context(|| format!("reading {}", log.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| {
            l["message"] == "bundle answered" && l["receive_count"].as_u64().unwrap_or(1) > 1
        })
        .count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_bundles_are_those_sent_before_the_return_and_answered_after_it() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let back = at(10_000);
        let sent: HashMap<String, Instant> = [
            ("early", 0),
            ("held", 1_000),
            ("late", 11_000),
            ("lost", 2_000),
        ]
        .into_iter()
        .map(|(id, ms)| (id.to_owned(), at(ms)))
        .collect();
        let mut arrivals = load::Arrivals::default();
        for (id, ms) in [
            ("early", 500),
            ("held", 12_500),
            ("held", 13_000),
            ("late", 11_100),
        ] {
            arrivals
                .by_bundle
                .entry(id.to_owned())
                .or_default()
                .push(at(ms));
        }
        let held = held_delays(back, &sent, &arrivals);
        assert_eq!(held.unanswered, 1);
        assert_eq!(held.delays.len(), 1);
        assert!((held.delays[0] - 2.5).abs() < 1e-9, "{:?}", held.delays);
    }

    #[test]
    fn the_outage_load_plants_an_unseen_issuer_in_every_nth_bundle() {
        let set =
            ml_pipeline::fixtures::read_set(&ml_pipeline::fixtures::files::default_dir()).unwrap();
        let args = <ChaosArgs as clap::FromArgMatches>::from_arg_matches(
            &<ChaosArgs as clap::Args>::augment_args(clap::Command::new("t")).get_matches_from([
                "t",
                "outage",
                "--bundles",
                "20",
                "--records",
                "5",
                "--unseen-every",
                "10",
            ]),
        )
        .unwrap();
        let bundles = unseen_issuer_bundles(&set, &args, "run-x");
        let planted: Vec<usize> = bundles
            .iter()
            .enumerate()
            .filter(|(_, b)| b.body.contains("Issuer run-x"))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(planted, vec![0, 10]);
        assert_eq!(bundles[10].body.matches("Issuer run-x 10").count(), 1);
    }
}
