//! `ml-pipeline-tools bench`: the end-to-end load generator.
//!
//! It sends N bundles of M fixture requests (so enrichment does real PostgreSQL and MongoDB
//! round trips) to a worker's input queue, paced or as fast as possible, reads the answers back,
//! and reports records per second, bundle latency from send to the answer's arrival (p50, p95,
//! p99, max), the worker's CPU seconds per 1 000 records and its peak RSS; from the worker's
//! own `/metrics`, its SQS requests per 1 000 bundles (by kind) with their cost at list price
//! and its database round trips per 1 000 records; and the CPU seconds per 1 000 records of
//! each local service (LocalStack, PostgreSQL, the MongoDB-wire server) over the same run.
//!
//! Before that it measures the emulator's own ceiling on the same kind of queues, the same
//! message sizes, sender and reader: the *drain* ceiling is a consumer that receives and
//! deletes without working; the *relay* ceiling also sends one output per input, as the worker
//! does. The worker's throughput is printed as a fraction of the relay ceiling.
//!
//! By default it creates its own queues and starts `ml-pipeline worker` on them as a child
//! process (so it can read its CPU time and RSS from `/proc`, and time its cold start to the
//! first answer); `--external` uses the configured queues and a worker already running there.

pub mod calls;
pub mod chaos;
pub mod load;
pub mod process;
pub mod services;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use aws_sdk_sqs::types::{MessageAttributeValue, QueueAttributeName, SendMessageBatchRequestEntry};
use serde::Serialize;

use load::Tally;
use ml_pipeline::bundle::compression::ContentEncoding;
use ml_pipeline::queue::SqsQueue;
use ml_pipeline::settings::Settings;

/// Options of `bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// The largest SQS message, in bytes: send batches are chunked within it (the same
    /// variable as the worker's).
    #[arg(long, env = "ML_PIPELINE_MAX_MESSAGE_BYTES", default_value_t = ml_pipeline::queue::MAX_SQS_MESSAGE_BYTES)]
    pub max_message_bytes: usize,
    /// Bundles per run.
    #[arg(long, default_value_t = 200)]
    pub bundles: usize,
    /// Records per bundle.
    #[arg(long, default_value_t = 100)]
    pub records: usize,
    /// Send at this many records per second, one bundle at a time; default: as fast as possible.
    #[arg(long, value_name = "RECORDS_PER_S")]
    pub rate: Option<f64>,
    /// Runs of each measurement; medians and ranges are reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Concurrent batch senders when sending as fast as possible.
    #[arg(long, default_value_t = 4)]
    pub senders: usize,
    /// Encoding of the bundles sent.
    #[arg(long, value_enum, default_value = "identity")]
    pub encoding: crate::EncodingArg,
    /// The fixture set whose requests fill the bundles (loaded into the databases).
    #[arg(long, default_value = "fixtures/default")]
    pub fixtures: PathBuf,
    /// Skip measuring the emulator's ceiling.
    #[arg(long)]
    pub skip_ceiling: bool,
    /// Seconds the reader keeps reading after every bundle of a worker run has one answer, so
    /// that late duplicates are counted (not part of the measured time).
    #[arg(long, default_value_t = 3)]
    pub settle_secs: u64,
    /// Use the configured queues and a worker already running on them instead of starting one.
    #[arg(long)]
    pub external: bool,
    /// With --external: the worker's process id, to read its CPU time and RSS.
    #[arg(long)]
    pub worker_pid: Option<u32>,
    /// With --external: the worker's `/metrics` URL, to read its stage times and its SQS
    /// requests and database round trips per run.
    #[arg(long, value_name = "URL")]
    pub metrics_url: Option<String>,
    /// The directory of the local services' PID files (`localstack/lib.sh`'s `$RUN_DIR`,
    /// which `localstack/with-env.sh` exports), to read their CPU time over each worker run.
    /// PostgreSQL's postmaster is found under /var/lib/postgresql.
    #[arg(long, env = "RUN_DIR", default_value = ".local/run")]
    pub services_run_dir: PathBuf,
    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
}

/// Figures of one kind of run, over all runs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Series {
    /// Records per second, per run.
    pub records_per_s: Vec<f64>,
    /// Latency quantiles per run, in milliseconds: p50, p95, p99, max.
    pub latency_ms: Vec<[f64; 4]>,
    /// Worker CPU seconds per 1 000 records, per run (when known).
    pub cpu_s_per_1000: Vec<f64>,
    /// Bundles sent, answered, duplicated, lost, summed over runs.
    pub sent: usize,
    /// See `sent`.
    pub answered: usize,
    /// See `sent`.
    pub duplicated: usize,
    /// See `sent`.
    pub lost: usize,
}

impl Series {
    fn add(&mut self, records: usize, seconds: f64, tally: &Tally) {
        self.records_per_s.push(records as f64 / seconds.max(1e-9));
        if let (Some(p50), Some(p95), Some(p99), Some(max)) = (
            tally.quantile(0.5),
            tally.quantile(0.95),
            tally.quantile(0.99),
            tally.quantile(1.0),
        ) {
            self.latency_ms.push([p50, p95, p99, max]);
        }
        self.sent += tally.sent;
        self.answered += tally.answered;
        self.duplicated += tally.duplicated;
        self.lost += tally.lost;
    }
}

/// The worker's outside calls per worker run, from its `/metrics` before and after each run,
/// and the local services' CPU over the same runs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Calls {
    /// SQS requests per 1 000 bundles sent, per run, by kind (API action); `total` sums them.
    pub sqs_per_1000_bundles: BTreeMap<String, Vec<f64>>,
    /// Billable SQS requests (one per started 64 KiB of payload) per 1 000 bundles, per run.
    pub sqs_billable_per_1000_bundles: Vec<f64>,
    /// The worker's SQS cost in US dollars per million bundles at list price, per run
    /// (billable requests; the load generator's own sends and reads are not counted).
    pub sqs_usd_per_million_bundles: Vec<f64>,
    /// S3 requests per 1 000 bundles, per run (all kinds).
    pub s3_per_1000_bundles: Vec<f64>,
    /// Database round trips per 1 000 records, per run, by source (postgres, mongo).
    pub db_round_trips_per_1000_records: BTreeMap<String, Vec<f64>>,
    /// CPU seconds per 1 000 records of each local service's process tree over the worker
    /// runs, per run, by service (localstack, postgresql, mongo). The services are shared:
    /// anything else using them meanwhile is counted too.
    pub service_cpu_s_per_1000: BTreeMap<String, Vec<f64>>,
    /// The same over the relay ceiling runs (no database is used there).
    pub relay_service_cpu_s_per_1000: BTreeMap<String, Vec<f64>>,
}

impl Calls {
    /// One worker run of `bundles` bundles and `records` records that made the calls `run`.
    fn add(&mut self, bundles: usize, records: usize, run: &calls::Counters, usd_per_million: f64) {
        for (kind, n) in calls::per_1000_with_total(&run.sqs, bundles) {
            self.sqs_per_1000_bundles.entry(kind).or_default().push(n);
        }
        // `+ 0.0`: an empty sum of f64 is -0.0, printed as such.
        let per_1000 = |n: f64, units: usize| n / units.max(1) as f64 * 1000.0 + 0.0;
        let billable = per_1000(run.sqs_billable.values().sum(), bundles);
        self.sqs_billable_per_1000_bundles.push(billable);
        self.sqs_usd_per_million_bundles
            .push(calls::usd_per_million_bundles(billable, usd_per_million));
        self.s3_per_1000_bundles
            .push(per_1000(run.s3.values().sum(), bundles));
        for (source, n) in &run.db {
            self.db_round_trips_per_1000_records
                .entry(source.clone())
                .or_default()
                .push(per_1000(*n, records));
        }
    }
}

/// The CPU each service used between `before` and now, per 1 000 `records`, added to `into`.
fn add_service_cpu(
    into: &mut BTreeMap<String, Vec<f64>>,
    found: &[services::Service],
    before: &[Option<Duration>],
    records: usize,
) {
    for ((service, before), after) in found.iter().zip(before).zip(services::cpu_times(found)) {
        if let (Some(before), Some(after)) = (before, after) {
            let used = after.saturating_sub(*before).as_secs_f64();
            into.entry(service.name.to_owned())
                .or_default()
                .push(used / records.max(1) as f64 * 1000.0);
        }
    }
}

/// The worker's call counters now, or None (said why) when its `/metrics` cannot be read.
async fn worker_counters(metrics_url: Option<&str>) -> Option<calls::Counters> {
    let url = metrics_url?;
    match ml_pipeline::http::request("GET", url, None, Duration::from_secs(5)).await {
        Ok(reply) => Some(calls::Counters::read(&reply.body)),
        Err(e) => {
            println!("worker metrics not read: {e:#}");
            None
        }
    }
}

/// The whole report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Bundles per run.
    pub bundles: usize,
    /// Records per bundle.
    pub records: usize,
    /// Records per second sent, or None for as fast as possible.
    pub rate: Option<f64>,
    /// Receive-and-delete ceiling of the emulator.
    pub drain: Series,
    /// Receive-send-delete ceiling of the emulator.
    pub relay: Series,
    /// The worker.
    pub worker: Series,
    /// Seconds from starting the worker process to the first answer.
    pub cold_start_s: Option<f64>,
    /// The worker's peak RSS in MiB.
    pub peak_rss_mib: Option<f64>,
    /// Mean milliseconds per batch of each stage the worker times, from its own `/metrics`
    /// (a worker the bench started; all runs together): what each number is made of.
    pub stage_ms: BTreeMap<String, f64>,
    /// Batches the worker processed, with the mean records per batch.
    pub batches: Option<(u64, f64)>,
    /// The SQS list price the cost figures use, US dollars per million requests (standard or
    /// FIFO, from the input queue's name).
    pub sqs_usd_per_million_requests: f64,
    /// The worker's outside calls and the local services' CPU, per worker run.
    pub calls: Calls,
}

/// Median, min and max of a series.
pub fn median_range(values: &[f64]) -> Option<(f64, f64, f64)> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    Some((v[v.len() / 2], v[0], v[v.len() - 1]))
}

/// Runs the benchmark and prints its report.
pub async fn run(settings: &Settings, args: &BenchArgs) -> anyhow::Result<Report> {
    let set = ml_pipeline::fixtures::read_set(&args.fixtures)
        .with_context(|| format!("reading the fixtures in {}", args.fixtures.display()))?;
    let sdk = ml_pipeline::aws::sdk_config(Duration::from_secs(30)).await;
    let sqs = ml_pipeline::aws::sqs(&sdk);
    let run_id = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let mut report = Report {
        bundles: args.bundles,
        records: args.records,
        rate: args.rate,
        ..Report::default()
    };
    let mut created = Vec::new();
    let mut metrics_url = args.metrics_url.clone();
    let found = services::find(&args.services_run_dir);
    println!(
        "services charged their CPU: {}",
        found
            .iter()
            .map(|s| format!("{} (pid {})", s.name, s.pid))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let outcome = async {
        if !args.skip_ceiling {
            for r in 0..args.runs {
                // Fresh queues per run: nothing of an earlier run can linger in them.
                // Drain and relay on separate queues: a long poll the drain consumer abandoned
                // when it stopped can still take messages on the server side.
                let din =
                    create_queue(&sqs, &format!("{run_id}-c{r}drain"), "30", &mut created).await?;
                let cin =
                    create_queue(&sqs, &format!("{run_id}-c{r}in"), "30", &mut created).await?;
                let cout =
                    create_queue(&sqs, &format!("{run_id}-c{r}out"), "30", &mut created).await?;
                let bundles = load::bundles(
                    &set,
                    args.bundles,
                    args.records,
                    &format!("{run_id}-d{r}"),
                    ContentEncoding::from(args.encoding),
                );
                let (seconds, tally) = ceiling(&sqs, &din, None, &bundles, args, settings).await?;
                report
                    .drain
                    .add(bundles.len() * args.records, seconds, &tally);
                let bundles = load::bundles(
                    &set,
                    args.bundles,
                    args.records,
                    &format!("{run_id}-r{r}"),
                    ContentEncoding::from(args.encoding),
                );
                let service_cpu = services::cpu_times(&found);
                let (seconds, tally) =
                    ceiling(&sqs, &cin, Some(&cout), &bundles, args, settings).await?;
                report
                    .relay
                    .add(bundles.len() * args.records, seconds, &tally);
                add_service_cpu(
                    &mut report.calls.relay_service_cpu_s_per_1000,
                    &found,
                    &service_cpu,
                    bundles.len() * args.records,
                );
                println!(
                    "ceiling run {}: drain {:.0} rec/s, relay {:.0} rec/s",
                    r + 1,
                    report.drain.records_per_s[r],
                    report.relay.records_per_s[r]
                );
            }
        }
        let (input, output, mut child) = if args.external {
            let need = |v: &Option<String>, var: &str| {
                v.clone().with_context(|| format!("--external needs {var}"))
            };
            let input = SqsQueue::resolve(
                sqs.clone(),
                &need(&settings.input_queue, "ML_PIPELINE_INPUT_QUEUE")?,
            )
            .await?;
            let output = SqsQueue::resolve(
                sqs.clone(),
                &need(&settings.output_queue, "ML_PIPELINE_OUTPUT_QUEUE")?,
            )
            .await?;
            (input, output, None)
        } else {
            let input = create_queue(&sqs, &format!("{run_id}-in"), "30", &mut created).await?;
            let output = create_queue(&sqs, &format!("{run_id}-out"), "30", &mut created).await?;
            // Cold start: a bundle waits on the queue before the worker process exists.
            let warm = load::bundles(
                &set,
                1,
                args.records,
                &format!("{run_id}-warm"),
                ContentEncoding::from(args.encoding),
            );
            let times = load::send(
                &input,
                &warm,
                ContentEncoding::from(args.encoding),
                None,
                1,
                args.max_message_bytes,
            )
            .await?;
            let started = Instant::now();
            let addr = free_loopback_addr()?;
            let child = spawn_worker(&input, &output, &addr)?;
            metrics_url = Some(format!("http://{addr}/metrics"));
            let arrivals = load::collect(
                &sqs,
                output.url(),
                &[warm[0].bundle_id.clone()],
                &load::ReadPlan::new(1, Duration::from_secs(60)),
            )
            .await;
            let tally = Tally::new(&times.lock().await.clone(), &arrivals);
            anyhow::ensure!(
                tally.answered == 1,
                "the worker did not answer its first bundle within 60 s; see its log"
            );
            report.cold_start_s = arrivals
                .last
                .map(|t| t.duration_since(started).as_secs_f64());
            (input, output, Some(child))
        };
        let pid = child
            .as_ref()
            .map(std::process::Child::id)
            .or(args.worker_pid);
        report.sqs_usd_per_million_requests = calls::usd_per_million_requests(input.url());
        for r in 0..args.runs {
            let bundles = load::bundles(
                &set,
                args.bundles,
                args.records,
                &format!("{run_id}-w{r}"),
                ContentEncoding::from(args.encoding),
            );
            let cpu_before = pid.map(process::cpu_time).transpose()?;
            let counters_before = worker_counters(metrics_url.as_deref()).await;
            let service_cpu = services::cpu_times(&found);
            let (seconds, tally) = measure(&sqs, &input, &output, &bundles, args).await?;
            let records = bundles.len() * args.records;
            report.worker.add(records, seconds, &tally);
            add_service_cpu(
                &mut report.calls.service_cpu_s_per_1000,
                &found,
                &service_cpu,
                records,
            );
            let counters_after = worker_counters(metrics_url.as_deref()).await;
            if let (Some(before), Some(after)) = (counters_before, counters_after) {
                report.calls.add(
                    bundles.len(),
                    records,
                    &after.since(&before),
                    report.sqs_usd_per_million_requests,
                );
            }
            if let (Some(pid), Some(before)) = (pid, cpu_before) {
                let used = process::cpu_time(pid)?.saturating_sub(before);
                report
                    .worker
                    .cpu_s_per_1000
                    .push(used.as_secs_f64() / records as f64 * 1000.0);
            }
            println!(
                "worker run {}: {:.0} rec/s, {} of {} bundles answered, {} duplicated",
                r + 1,
                report.worker.records_per_s[r],
                tally.answered,
                tally.sent,
                tally.duplicated
            );
        }
        if let Some(pid) = pid {
            report.peak_rss_mib = Some(process::peak_rss(pid)? as f64 / (1 << 20) as f64);
        }
        if let Some(url) = &metrics_url {
            match ml_pipeline::http::request("GET", url, None, Duration::from_secs(5)).await {
                Ok(reply) => (report.stage_ms, report.batches) = stage_means(&reply.body),
                Err(e) => println!("worker metrics not read: {e:#}"),
            }
        }
        if let Some(child) = child.as_mut() {
            stop(child);
        }
        anyhow::Ok(())
    }
    .await;
    for url in created {
        let _ = sqs.delete_queue().queue_url(url).send().await;
    }
    outcome?;
    print(&report);
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report)
}

/// Creates a queue with this visibility timeout (seconds) and remembers its URL in `created`.
pub(crate) async fn create_queue(
    sqs: &aws_sdk_sqs::Client,
    name: &str,
    visibility_secs: &str,
    created: &mut Vec<String>,
) -> anyhow::Result<SqsQueue> {
    let url = sqs
        .create_queue()
        .queue_name(name)
        .attributes(QueueAttributeName::VisibilityTimeout, visibility_secs)
        .send()
        .await
        .with_context(|| format!("creating queue {name}"))?
        .queue_url
        .context("CreateQueue returned no URL")?;
    created.push(url.clone());
    Ok(SqsQueue::resolve(sqs.clone(), &url).await?)
}

fn spawn_worker(
    input: &SqsQueue,
    output: &SqsQueue,
    metrics_addr: &str,
) -> anyhow::Result<std::process::Child> {
    let log = std::env::temp_dir().join(format!(
        "ml-pipeline-bench-worker-{}.log",
        std::process::id()
    ));
    let env = [
        ("ML_PIPELINE_INPUT_QUEUE", input.url().to_owned()),
        ("ML_PIPELINE_OUTPUT_QUEUE", output.url().to_owned()),
        ("ML_PIPELINE_HTTP_ADDR", metrics_addr.to_owned()),
    ];
    spawn_worker_with(&env, &log)
}

/// A free loopback address for the worker's `/metrics`.
fn free_loopback_addr() -> anyhow::Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.to_string())
}

/// Mean milliseconds per batch of each timed stage, and (batches, mean records per batch), read
/// from the worker's Prometheus text.
pub fn stage_means(metrics: &str) -> (BTreeMap<String, f64>, Option<(u64, f64)>) {
    let mut sums: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    let mut batch = (None, None);
    for line in metrics.lines() {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let stage = |prefix: &str| {
            name.strip_prefix(prefix)
                .and_then(|rest| rest.strip_prefix("{stage=\""))
                .and_then(|rest| rest.strip_suffix("\"}"))
                .map(str::to_owned)
        };
        if let Some(stage) = stage("ml_pipeline_stage_seconds_sum") {
            sums.entry(stage).or_default().0 = value;
        } else if let Some(stage) = stage("ml_pipeline_stage_seconds_count") {
            sums.entry(stage).or_default().1 = value;
        } else if name == "ml_pipeline_batch_records_sum" {
            batch.0 = Some(value);
        } else if name == "ml_pipeline_batch_records_count" {
            batch.1 = Some(value);
        }
    }
    let means = sums
        .into_iter()
        .filter(|(_, (_, count))| *count > 0.0)
        .map(|(stage, (sum, count))| (stage, sum / count * 1e3))
        .collect();
    let batches = match batch {
        (Some(sum), Some(count)) if count > 0.0 => Some((count as u64, sum / count)),
        _ => None,
    };
    (means, batches)
}

/// The `ml-pipeline` binary: `ML_PIPELINE_BIN`, or the one built beside this tool (`cargo
/// build --release --workspace` builds both into the same directory).
pub fn worker_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("ML_PIPELINE_BIN") {
        return Ok(PathBuf::from(path));
    }
    let me = std::env::current_exe().context("locating this tool's binary")?;
    let beside = me.with_file_name(format!("ml-pipeline{}", std::env::consts::EXE_SUFFIX));
    anyhow::ensure!(
        beside.exists(),
        "{} does not exist: build the worker with `cargo build --release --workspace`, or set ML_PIPELINE_BIN",
        beside.display()
    );
    Ok(beside)
}

/// Starts `ml-pipeline worker` with the environment plus `env`, its HTTP endpoints off unless
/// `env` sets `ML_PIPELINE_HTTP_ADDR`, logging to `log`.
pub(crate) fn spawn_worker_with(
    env: &[(&str, String)],
    log: &std::path::Path,
) -> anyhow::Result<std::process::Child> {
    let exe = worker_binary()?;
    let child = std::process::Command::new(exe)
        .arg("worker")
        .env("ML_PIPELINE_HTTP_ADDR", "off")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .spawn()
        .context("starting ml-pipeline worker")?;
    println!(
        "worker started (pid {}), log: {}",
        child.id(),
        log.display()
    );
    Ok(child)
}

/// SIGTERM, then wait for the drain.
pub(crate) fn stop(child: &mut std::process::Child) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let _ = child.wait();
}

/// Sends `bundles` to the worker and reads its answers: (seconds from first send to last
/// answer, tally).
async fn measure(
    sqs: &aws_sdk_sqs::Client,
    input: &SqsQueue,
    output: &SqsQueue,
    bundles: &[load::Prepared],
    args: &BenchArgs,
) -> anyhow::Result<(f64, Tally)> {
    let ids: Vec<String> = bundles.iter().map(|b| b.bundle_id.clone()).collect();
    let started = Instant::now();
    let plan = load::ReadPlan::new(2, Duration::from_secs(30))
        .settle(Duration::from_secs(args.settle_secs));
    let reader = load::collect(sqs, output.url(), &ids, &plan);
    let sender = load::send(
        input,
        bundles,
        ContentEncoding::from(args.encoding),
        args.rate,
        args.senders,
        args.max_message_bytes,
    );
    let (arrivals, times) = tokio::join!(reader, sender);
    let times = times?.lock().await.clone();
    let tally = Tally::new(&times, &arrivals);
    let end = arrivals.last.unwrap_or_else(Instant::now);
    Ok((end.duration_since(started).as_secs_f64(), tally))
}

/// The emulator's ceiling: a consumer with the worker's receive settings that receives and
/// deletes (drain, `relay` None) or also sends one output per input to `relay` (relay).
async fn ceiling(
    sqs: &aws_sdk_sqs::Client,
    input: &SqsQueue,
    relay: Option<&SqsQueue>,
    bundles: &[load::Prepared],
    args: &BenchArgs,
    settings: &Settings,
) -> anyhow::Result<(f64, Tally)> {
    let total = bundles.len();
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let last_delete = Arc::new(tokio::sync::Mutex::new(None::<Instant>));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut consumers = tokio::task::JoinSet::new();
    for _ in 0..settings.pollers.max(1) {
        let (sqs, input, relay) = (
            sqs.clone(),
            input.url().to_owned(),
            relay.map(|q| q.url().to_owned()),
        );
        let (done, last_delete, stop) = (Arc::clone(&done), Arc::clone(&last_delete), stop.clone());
        let max = settings.receive_max.clamp(1, 10);
        consumers.spawn(async move {
            while !stop.is_cancelled() {
                let received = tokio::select! {
                    () = stop.cancelled() => return,
                    r = sqs.receive_message().queue_url(&input).max_number_of_messages(max).wait_time_seconds(1).message_attribute_names("All").send() => r,
                };
                let Ok(out) = received else { continue };
                let messages = out.messages.unwrap_or_default();
                if messages.is_empty() {
                    continue;
                }
                if let Some(relay) = &relay {
                    let entries: Vec<SendMessageBatchRequestEntry> = messages
                        .iter()
                        .enumerate()
                        .filter_map(|(i, m)| {
                            let attrs: HashMap<String, MessageAttributeValue> = m.message_attributes.clone().unwrap_or_default();
                            SendMessageBatchRequestEntry::builder()
                                .id(i.to_string())
                                .message_body(m.body.clone().unwrap_or_default())
                                .set_message_attributes(Some(attrs))
                                .build()
                                .ok()
                        })
                        .collect();
                    let _ = sqs.send_message_batch().queue_url(relay).set_entries(Some(entries)).send().await;
                }
                let entries: Vec<_> = messages
                    .iter()
                    .enumerate()
                    .filter_map(|(i, m)| {
                        aws_sdk_sqs::types::DeleteMessageBatchRequestEntry::builder()
                            .id(i.to_string())
                            .set_receipt_handle(m.receipt_handle.clone())
                            .build()
                            .ok()
                    })
                    .collect();
                if sqs.delete_message_batch().queue_url(&input).set_entries(Some(entries)).send().await.is_ok() {
                    done.fetch_add(messages.len(), std::sync::atomic::Ordering::Relaxed);
                    *last_delete.lock().await = Some(Instant::now());
                }
            }
        });
    }
    let started = Instant::now();
    let result = match relay {
        Some(out) => {
            let ids: Vec<String> = bundles.iter().map(|b| b.bundle_id.clone()).collect();
            let plan = load::ReadPlan::new(2, Duration::from_secs(30));
            let reader = load::collect(sqs, out.url(), &ids, &plan);
            let sender = load::send(
                input,
                bundles,
                ContentEncoding::from(args.encoding),
                args.rate,
                args.senders,
                args.max_message_bytes,
            );
            let (arrivals, times) = tokio::join!(reader, sender);
            let tally = Tally::new(&times?.lock().await.clone(), &arrivals);
            let end = arrivals.last.unwrap_or_else(Instant::now);
            (end.duration_since(started).as_secs_f64(), tally)
        }
        None => {
            let times = load::send(
                input,
                bundles,
                ContentEncoding::from(args.encoding),
                args.rate,
                args.senders,
                args.max_message_bytes,
            )
            .await?;
            let deadline = Instant::now() + Duration::from_secs(60);
            while done.load(std::sync::atomic::Ordering::Relaxed) < total
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let end = last_delete.lock().await.unwrap_or_else(Instant::now);
            // Drained messages have no answers: every one counts as answered when deleted.
            let times = times.lock().await.clone();
            let arrivals = load::Arrivals {
                by_bundle: times.keys().map(|id| (id.clone(), vec![end])).collect(),
                last: Some(end),
                ..load::Arrivals::default()
            };
            let mut tally = Tally::new(&times, &arrivals);
            tally.latencies_ms.clear();
            (end.duration_since(started).as_secs_f64(), tally)
        }
    };
    stop.cancel();
    while consumers.join_next().await.is_some() {}
    Ok(result)
}

/// One line of the report: the label in a column of its own, then the value.
fn line(label: &str, value: impl std::fmt::Display) {
    println!("  {label:<23} {value}");
}

fn print(report: &Report) {
    let fmt = |v: &[f64], unit: &str| match median_range(v) {
        Some((m, lo, hi)) => format!("{m:.0} {unit} (range {lo:.0}-{hi:.0})"),
        None => "n/a".to_owned(),
    };
    println!();
    println!(
        "bench: {} bundles x {} records per run, {}",
        report.bundles,
        report.records,
        report
            .rate
            .map_or("as fast as possible".to_owned(), |r| format!(
                "paced at {r:.0} records/s"
            ))
    );
    let records_per_s = |series: &Series| fmt(&series.records_per_s, "records/s");
    line("emulator drain ceiling", records_per_s(&report.drain));
    line("emulator relay ceiling", records_per_s(&report.relay));
    line("worker", records_per_s(&report.worker));
    if let (Some((w, _, _)), Some((r, _, _))) = (
        median_range(&report.worker.records_per_s),
        median_range(&report.relay.records_per_s),
    ) {
        line("worker / relay ceiling", format!("{:.0}%", 100.0 * w / r));
    }
    for (name, series) in [("relay", &report.relay), ("worker", &report.worker)] {
        let column = |i: usize| series.latency_ms.iter().map(|q| q[i]).collect::<Vec<_>>();
        if let (Some(p50), Some(p95), Some(p99), Some(max)) = (
            median_range(&column(0)),
            median_range(&column(1)),
            median_range(&column(2)),
            median_range(&column(3)),
        ) {
            line(
                &format!("{name} latency ms"),
                format!(
                    "p50 {:.1}  p95 {:.1}  p99 {:.1}  max {:.1}  (medians over runs; p99 range {:.1}-{:.1})",
                    p50.0, p95.0, p99.0, max.0, p99.1, p99.2
                ),
            );
        }
    }
    if let Some((m, lo, hi)) = median_range(&report.worker.cpu_s_per_1000) {
        line(
            "worker CPU",
            format!("{m:.5} s per 1000 records (range {lo:.5}-{hi:.5})"),
        );
    }
    print_calls(report);
    if let Some(rss) = report.peak_rss_mib {
        line("worker peak RSS", format!("{rss:.1} MiB"));
    }
    if let Some(c) = report.cold_start_s {
        line("cold start to 1st answer", format!("{c:.2} s"));
    }
    if let Some((batches, records)) = report.batches {
        let with_cold_start = if report.cold_start_s.is_some() {
            ", cold-start bundle included"
        } else {
            ""
        };
        line(
            "worker batches",
            format!("{batches} (mean {records:.0} records per batch{with_cold_start})"),
        );
    }
    if !report.stage_ms.is_empty() {
        let stages: Vec<String> = report
            .stage_ms
            .iter()
            .map(|(stage, ms)| format!("{stage} {ms:.2}"))
            .collect();
        line("worker ms per batch", stages.join(", "));
    }
    line(
        "bundles",
        format!(
            "{} sent, {} answered, {} duplicated, {} lost",
            report.worker.sent,
            report.worker.answered,
            report.worker.duplicated,
            report.worker.lost
        ),
    );
}

/// The per-run figures of [`Calls`]: medians and ranges.
fn print_calls(report: &Report) {
    let fmt = |v: &[f64], digits: usize| match median_range(v) {
        Some((m, lo, hi)) => format!("{m:.digits$} ({lo:.digits$}-{hi:.digits$})"),
        None => "n/a".to_owned(),
    };
    let by = |map: &BTreeMap<String, Vec<f64>>, digits: usize| {
        map.iter()
            .map(|(k, v)| format!("{k} {}", fmt(v, digits)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let c = &report.calls;
    if let Some(total) = c.sqs_per_1000_bundles.get("total") {
        let kinds: BTreeMap<String, Vec<f64>> = c
            .sqs_per_1000_bundles
            .iter()
            .filter(|(k, _)| *k != "total")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        line(
            "worker SQS requests",
            format!("{} per 1000 bundles: {}", fmt(total, 0), by(&kinds, 1)),
        );
        line(
            "worker SQS billable",
            format!(
                "{} per 1000 bundles, ${} per million bundles at ${:.2} per million requests",
                fmt(&c.sqs_billable_per_1000_bundles, 0),
                fmt(&c.sqs_usd_per_million_bundles, 3),
                report.sqs_usd_per_million_requests
            ),
        );
        line(
            "worker S3 requests",
            format!("{} per 1000 bundles", fmt(&c.s3_per_1000_bundles, 1)),
        );
    }
    let per_1000 = |label: &str, unit: &str, map: &BTreeMap<String, Vec<f64>>, digits: usize| {
        if !map.is_empty() {
            line(
                label,
                format!("{unit}per 1000 records: {}", by(map, digits)),
            );
        }
    };
    per_1000(
        "worker DB round trips",
        "",
        &c.db_round_trips_per_1000_records,
        1,
    );
    per_1000(
        "service CPU, worker runs",
        "s ",
        &c.service_cpu_s_per_1000,
        4,
    );
    per_1000(
        "service CPU, relay runs",
        "s ",
        &c.relay_service_cpu_s_per_1000,
        4,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_means_come_from_prometheus_sums_and_counts() {
        let text = "# TYPE ml_pipeline_stage_seconds summary\n\
            ml_pipeline_stage_seconds{stage=\"send\",quantile=\"0.5\"} 0.004\n\
            ml_pipeline_stage_seconds_sum{stage=\"send\"} 0.12\n\
            ml_pipeline_stage_seconds_count{stage=\"send\"} 20\n\
            ml_pipeline_stage_seconds_sum{stage=\"idle\"} 0\n\
            ml_pipeline_stage_seconds_count{stage=\"idle\"} 0\n\
            ml_pipeline_batch_records_sum 2000\n\
            ml_pipeline_batch_records_count 20\n";
        let (means, batches) = stage_means(text);
        assert_eq!(means.len(), 1);
        assert!((means["send"] - 6.0).abs() < 1e-9);
        assert_eq!(batches, Some((20, 100.0)));
    }
}
