//! `ml-pipeline-tools chaos`: fault runs under load, each ending in counts of bundles sent, answered,
//! duplicated and lost. Each run gets its own queues and starts its own worker processes.
//!
//! - `kill9`: SIGKILL the worker at random moments while a load runs, restarting it each time.
//! - `outage`: stop PostgreSQL, then MongoDB, for a while each during a paced load, with the
//!   local services' scripts; reports the time from each service's return to the next answer.
//! - `sigterm`: SIGTERM during load; reports the drain time, then a second worker finishes the
//!   rest and the messages it saw redelivered (receive count above 1) are counted.
//! - `poison`: the fixture poison corpus mixed into good traffic; every case must land in the
//!   dead-letter queue or as per-record errors with its reason, the good traffic must all be
//!   answered, and the worker process must still be the same one at the end.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::Rng;

use super::load::{self, Tally};
use super::{create_queue, spawn_worker_with, stop};
use ml_pipeline::bundle::compression::ContentEncoding;
use ml_pipeline::fixtures::PoisonExpect;
use ml_pipeline::queue::{send_all, Outgoing, Retry, SqsQueue};

/// The fault to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// SIGKILL the worker repeatedly during load, restarting it each time.
    Kill9,
    /// Stop PostgreSQL, then MongoDB, during a paced load.
    Outage,
    /// SIGTERM during load: drain time and redeliveries.
    Sigterm,
    /// The poison corpus mixed into good traffic.
    Poison,
}

/// Options of `chaos`.
#[derive(Debug, Clone, clap::Args)]
pub struct ChaosArgs {
    /// The fault to inject.
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// Bundles of the load.
    #[arg(long, default_value_t = 500)]
    pub bundles: usize,
    /// Records per bundle.
    #[arg(long, default_value_t = 100)]
    pub records: usize,
    /// Send rate in records per second (kill9 and outage).
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    /// kill9: how many kills at least.
    #[arg(long, default_value_t = 10)]
    pub kills: usize,
    /// outage: seconds each service stays down.
    #[arg(long, default_value_t = 15)]
    pub down_secs: u64,
    /// The queues' visibility timeout in seconds (how soon a killed worker's messages return).
    #[arg(long, default_value_t = 10)]
    pub visibility_secs: u32,
    /// The fixture set whose requests fill the bundles (loaded into the databases).
    #[arg(long, default_value = "fixtures/default")]
    pub fixtures: PathBuf,
}

/// Runs one scenario and prints its counts.
pub async fn run(args: &ChaosArgs) -> anyhow::Result<Tally> {
    let set = ml_pipeline::fixtures::read_set(&args.fixtures)
        .with_context(|| format!("reading the fixtures in {}", args.fixtures.display()))?;
    let sdk = ml_pipeline::aws::sdk_config(Duration::from_secs(30)).await;
    let sqs = ml_pipeline::aws::sqs(&sdk);
    let run_id = format!("chaos-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let mut created = Vec::new();
    let vis = args.visibility_secs.to_string();
    let outcome = async {
        let dlq = create_queue(&sqs, &format!("{run_id}-dlq"), &vis, &mut created).await?;
        let input = create_queue(&sqs, &format!("{run_id}-in"), &vis, &mut created).await?;
        let output = create_queue(&sqs, &format!("{run_id}-out"), &vis, &mut created).await?;
        let env = [
            ("ML_PIPELINE_INPUT_QUEUE", input.url().to_owned()),
            ("ML_PIPELINE_OUTPUT_QUEUE", output.url().to_owned()),
            ("ML_PIPELINE_INPUT_DLQ", dlq.url().to_owned()),
            ("ML_PIPELINE_WAIT_SECS", "2".to_owned()),
        ];
        let bundles = load::bundles(&set, args.bundles, args.records, &run_id, ContentEncoding::Identity);
        let ids: Vec<String> = bundles.iter().map(|b| b.bundle_id.clone()).collect();
        let records = bundles.len() * args.records;
        println!("chaos {:?}: {} bundles x {} records ({records} records), run {run_id}", args.scenario, bundles.len(), args.records);
        let idle = Duration::from_secs(u64::from(args.visibility_secs) * 3 + 30);
        match args.scenario {
            Scenario::Kill9 => {
                let mut worker = spawn_worker_with(&env, &worker_log(&run_id, "0"))?;
                let reader = load::collect(&sqs, output.url(), &ids, 2, idle);
                let sender = load::send(&input, &bundles, ContentEncoding::Identity, Some(args.rate), 1);
                let load_secs = records as f64 / args.rate;
                let killer = async {
                    let mut kills = 0;
                    let started = Instant::now();
                    while kills < args.kills || started.elapsed().as_secs_f64() < load_secs {
                        let wait = rand::rng().random_range(300..2500);
                        tokio::time::sleep(Duration::from_millis(wait)).await;
                        let _ = worker.kill();
                        let _ = worker.wait();
                        kills += 1;
                        println!("  kill -9 #{kills} after {:.1} s; restarting", started.elapsed().as_secs_f64());
                        worker = spawn_worker_with(&env, &worker_log(&run_id, &kills.to_string()))?;
                    }
                    anyhow::Ok((kills, worker))
                };
                let (arrivals, times, killed) = tokio::join!(reader, sender, killer);
                let (kills, mut worker) = killed?;
                let tally = Tally::new(&times?.lock().await.clone(), &arrivals);
                stop(&mut worker);
                println!("  {kills} kills");
                Ok(tally)
            }
            Scenario::Outage => {
                let worker = spawn_worker_with(&env, &worker_log(&run_id, "0"))?;
                let reader = load::collect(&sqs, output.url(), &ids, 2, idle);
                let sender = load::send(&input, &bundles, ContentEncoding::Identity, Some(args.rate), 1);
                let faults = async {
                    let mut returns = Vec::new();
                    for service in ["postgres", "mongo"] {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        service_script(service, "stop")?;
                        println!("  {service} stopped");
                        tokio::time::sleep(Duration::from_secs(args.down_secs)).await;
                        service_script(service, "start")?;
                        println!("  {service} back");
                        returns.push((service, Instant::now()));
                    }
                    anyhow::Ok(returns)
                };
                let (arrivals, times, returns) = tokio::join!(reader, sender, faults);
                let tally = Tally::new(&times?.lock().await.clone(), &arrivals);
                for (service, back) in returns? {
                    let next = arrivals.by_bundle.values().flatten().filter(|t| **t > back).min();
                    match next {
                        Some(t) => println!("  {service}: first answer {:.2} s after it returned", t.duration_since(back).as_secs_f64()),
                        None => println!("  {service}: no answer after it returned"),
                    }
                }
                let mut worker = worker;
                stop(&mut worker);
                Ok(tally)
            }
            Scenario::Sigterm => {
                let mut first = spawn_worker_with(&env, &worker_log(&run_id, "0"))?;
                let reader = load::collect(&sqs, output.url(), &ids, 2, idle);
                let sender = load::send(&input, &bundles, ContentEncoding::Identity, None, 4);
                let term = async {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    let at = Instant::now();
                    stop(&mut first);
                    let drain = at.elapsed();
                    println!("  SIGTERM: worker exited after {:.2} s ({})", drain.as_secs_f64(), first.try_wait().ok().flatten().map_or("?".into(), |s| s.to_string()));
                    let second = spawn_worker_with(&env, &worker_log(&run_id, "1"))?;
                    anyhow::Ok(second)
                };
                let (arrivals, times, second) = tokio::join!(reader, sender, term);
                let mut second = second?;
                let tally = Tally::new(&times?.lock().await.clone(), &arrivals);
                stop(&mut second);
                let redelivered = redelivered(&worker_log(&run_id, "1"))?;
                println!("  messages the second worker saw redelivered: {redelivered}");
                Ok(tally)
            }
            Scenario::Poison => {
                let mut worker = spawn_worker_with(&env, &worker_log(&run_id, "0"))?;
                let pid = worker.id();
                let poison: Vec<Outgoing> = set
                    .poison
                    .iter()
                    .map(|c| Outgoing {
                        body: c.body.clone(),
                        attributes: c.content_encoding.iter().map(|e| ("content-encoding".to_owned(), e.clone())).collect(),
                        dedup_id: None,
                        group_id: None,
                    })
                    .collect();
                let reader = load::collect(&sqs, output.url(), &ids, 2, idle);
                let sender = async {
                    let half = bundles.len() / 2;
                    let times = load::send(&input, &bundles[..half], ContentEncoding::Identity, None, 2).await?;
                    let cases = poison.len();
                    let accepted = send_all(&input, poison, &Retry::default()).await;
                    anyhow::ensure!(accepted.len() == cases, "poison refused by SQS");
                    let rest = load::send(&input, &bundles[half..], ContentEncoding::Identity, None, 2).await?;
                    times.lock().await.extend(rest.lock().await.drain());
                    anyhow::Ok(times)
                };
                let (arrivals, times) = tokio::join!(reader, sender);
                let tally = Tally::new(&times?.lock().await.clone(), &arrivals);
                let expected_dead = set.poison.iter().filter(|c| matches!(c.expect, PoisonExpect::DeadLetter { .. })).count();
                let dead = count_messages(&sqs, &dlq, expected_dead, Duration::from_secs(30)).await;
                let answered_poison = set.poison.len() - expected_dead;
                let alive = worker.try_wait()?.is_none() && worker.id() == pid;
                println!("  poison: {} cases, {expected_dead} expected in the DLQ, {dead} there; {answered_poison} answered with per-record errors (checked by tests/worker.rs)", set.poison.len());
                println!("  worker process {pid} still running without restart: {alive}");
                stop(&mut worker);
                anyhow::ensure!(dead == expected_dead && alive, "poison run failed its checks");
                Ok(tally)
            }
        }
    }
    .await;
    for url in created {
        let _ = sqs.delete_queue().queue_url(url).send().await;
    }
    let tally = outcome?;
    println!(
        "  bundles: {} sent, {} answered, {} duplicated, {} lost",
        tally.sent, tally.answered, tally.duplicated, tally.lost
    );
    Ok(tally)
}

/// Runs `localstack/<service>.sh <action>` from the repository (local services only).
fn service_script(service: &str, action: &str) -> anyhow::Result<()> {
    let script = PathBuf::from(format!("localstack/{service}.sh"));
    let status = std::process::Command::new(&script)
        .arg(action)
        .stdout(std::process::Stdio::null())
        .status()
        .with_context(|| {
            format!(
                "running {} (run chaos from the repository root)",
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
fn redelivered(log: &std::path::Path) -> anyhow::Result<usize> {
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

/// Receives (and deletes) messages of `queue` until `n` arrived or `timeout` passed.
async fn count_messages(
    sqs: &aws_sdk_sqs::Client,
    queue: &SqsQueue,
    n: usize,
    timeout: Duration,
) -> usize {
    let deadline = Instant::now() + timeout;
    let mut seen: HashMap<String, ()> = HashMap::new();
    while seen.len() < n && Instant::now() < deadline {
        let Ok(out) = sqs
            .receive_message()
            .queue_url(queue.url())
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
        else {
            continue;
        };
        for m in out.messages.unwrap_or_default() {
            seen.insert(m.message_id.clone().unwrap_or_default(), ());
            let _ = sqs
                .delete_message()
                .queue_url(queue.url())
                .set_receipt_handle(m.receipt_handle)
                .send()
                .await;
        }
    }
    seen.len()
}
