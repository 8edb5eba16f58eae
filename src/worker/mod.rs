//! The worker: pollers long-poll the input queue, a batcher gathers the bundles in hand into one
//! batch, and [`Worker::process`] (the "one step", in [`step`]) answers it. The loop here owns
//! concurrency, back-off and shutdown.
//!
//! Memory is bounded: the pollers hand messages over a bounded channel, and at most
//! `max_concurrent_batches` batches are processed at once. Messages stay invisible to other
//! workers from receipt until their step returns: a heartbeat starts at the poller.

pub mod aggregates;
pub mod health;
pub mod heartbeat;
pub mod protection;
pub mod step;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use sqlx::PgPool;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::bundle::{ContentEncoding, Limits};
use crate::enrich::{DocumentSource, Enricher, ReferenceSource};
use crate::model::holder::ModelHolder;
use crate::queue::SqsQueue;
use health::{InFlight, WorkerState};
use heartbeat::Heartbeat;
pub use step::{decode_all, Received, StepReport};

/// How the worker receives, batches, retries and stops.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Messages per receive call (1..=10).
    pub receive_max: i32,
    /// Long-poll wait per receive call, in seconds (0..=20).
    pub wait_secs: i32,
    /// Concurrent pollers.
    pub pollers: usize,
    /// Most records in one batch.
    pub max_batch_records: usize,
    /// How long the batcher waits for more bundles after the first one when none is in hand.
    /// Zero (the default) waits only while every batch slot is busy: batches grow with the
    /// load, and a lone bundle is not held back.
    pub max_batch_wait: Duration,
    /// Batches processed at once.
    pub max_concurrent_batches: usize,
    /// The visibility the heartbeat keeps extending to, in seconds.
    pub visibility_timeout_secs: i32,
    /// The heartbeat period as a fraction of the visibility timeout.
    pub heartbeat_fraction: f64,
    /// How long shutdown waits for batches in hand.
    pub drain_timeout: Duration,
    /// `/health` fails when no receive returned and no batch finished for this long.
    pub stall_timeout: Duration,
    /// The encoding of answers.
    pub output_encoding: ContentEncoding,
    /// Decoding limits.
    pub limits: Limits,
    /// Attempts per batch call before its entries are left for redelivery.
    pub send_attempts: u32,
    /// First back-off delay.
    pub backoff_base: Duration,
    /// Longest back-off delay.
    pub backoff_max: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            receive_max: 10,
            wait_secs: 20,
            pollers: 2,
            max_batch_records: 2_500,
            max_batch_wait: Duration::ZERO,
            max_concurrent_batches: 4,
            visibility_timeout_secs: 60,
            heartbeat_fraction: 0.5,
            drain_timeout: Duration::from_secs(25),
            stall_timeout: Duration::from_secs(120),
            output_encoding: ContentEncoding::Identity,
            limits: Limits::default(),
            send_attempts: 5,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
        }
    }
}

/// A future a test hook returns.
pub type HookFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Points where tests can slow the worker down; production leaves them empty.
#[derive(Clone, Default)]
pub struct Hooks {
    /// Runs after prediction, before answers are sent.
    pub before_send: Option<Arc<dyn Fn() -> HookFuture + Send + Sync>>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("before_send", &self.before_send.is_some())
            .finish()
    }
}

/// Everything the worker talks to.
#[derive(Debug)]
pub struct Worker<R, D> {
    /// The input queue.
    pub input: SqsQueue,
    /// The output queue.
    pub output: SqsQueue,
    /// The input's dead-letter queue, for unreadable bundles.
    pub dlq: Option<SqsQueue>,
    /// Enrichment sources.
    pub enricher: Enricher<R, D>,
    /// The served model.
    pub models: Arc<ModelHolder>,
    /// Where prediction aggregates go; None disables them.
    pub aggregates: Option<PgPool>,
    /// Behaviour.
    pub config: WorkerConfig,
    /// Test hooks.
    pub hooks: Hooks,
    /// Progress and messages in hand, for health and task protection.
    pub state: Arc<WorkerState>,
}

/// Messages received by one poll, kept visible by their heartbeat until their step returns.
#[derive(Debug)]
struct InHand {
    messages: Vec<crate::queue::Message>,
    heartbeat: Heartbeat,
    in_flight: InFlight,
}

/// The bundles gathered for one batch, with the guards that keep them visible and counted as
/// in hand until its step returns.
#[derive(Default)]
struct Gathered {
    batch: Vec<Received>,
    held: Vec<(Heartbeat, InFlight)>,
    records: usize,
    decoding: Duration,
}

impl Gathered {
    /// Decodes one poll's messages into the batch.
    fn add(&mut self, more: InHand, limits: &Limits) {
        let started = Instant::now();
        let decoded = decode_all(more.messages, limits);
        self.decoding += started.elapsed();
        self.records += decoded.iter().map(Received::records).sum::<usize>();
        self.batch.extend(decoded);
        self.held.push((more.heartbeat, more.in_flight));
    }

    /// Adds what the pollers already handed over, up to `max` records; with a deadline, also
    /// waits until then for more.
    async fn take_in_hand(
        &mut self,
        rx: &mut mpsc::Receiver<InHand>,
        max: usize,
        limits: &Limits,
        deadline: Option<tokio::time::Instant>,
    ) {
        while self.records < max {
            let more = match (rx.try_recv(), deadline) {
                (Ok(more), _) => Some(more),
                (Err(_), Some(deadline)) if tokio::time::Instant::now() < deadline => {
                    tokio::time::timeout_at(deadline, rx.recv())
                        .await
                        .ok()
                        .flatten()
                }
                (Err(_), _) => None,
            };
            let Some(more) = more else { break };
            self.add(more, limits);
        }
    }
}

/// What a whole run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunSummary {
    /// Batches processed.
    pub batches: usize,
    /// Messages handled.
    pub messages: usize,
    /// Answers accepted.
    pub answered: usize,
    /// Messages dead-lettered.
    pub dead_lettered: usize,
    /// Messages left for redelivery.
    pub left: usize,
    /// Whether shutdown finished within the drain timeout.
    pub drained: bool,
}

/// Exponential back-off with full jitter.
pub fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    let cap = base.saturating_mul(1u32 << attempt.min(16)).min(max);
    cap.mul_f64(rand::rng().random_range(0.5..=1.0))
}

impl<R, D> Worker<R, D>
where
    R: ReferenceSource + 'static,
    D: DocumentSource + 'static,
{
    /// Runs until `shutdown` is cancelled, then drains what it holds within the drain timeout.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) -> RunSummary {
        let (tx, rx) = mpsc::channel::<InHand>(self.config.pollers.max(1) * 2);
        let mut pollers = JoinSet::new();
        for n in 0..self.config.pollers.max(1) {
            pollers.spawn(Arc::clone(&self).poll(n, tx.clone(), shutdown.clone()));
        }
        drop(tx);
        let batcher = tokio::spawn(Arc::clone(&self).batch_loop(rx));
        shutdown.cancelled().await;
        tracing::info!(
            drain_timeout_s = self.config.drain_timeout.as_secs_f64(),
            "shutting down: receiving stopped, draining batches in hand"
        );
        let deadline = Instant::now() + self.config.drain_timeout;
        while pollers.join_next().await.is_some() {}
        let abort = batcher.abort_handle();
        match tokio::time::timeout_at(deadline.into(), batcher).await {
            Ok(Ok(mut summary)) => {
                summary.drained = true;
                tracing::info!(?summary, "worker stopped");
                summary
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "batch loop failed");
                RunSummary::default()
            }
            Err(_) => {
                abort.abort();
                tracing::warn!(
                    "drain timeout reached: unfinished batches stay on the queue for redelivery"
                );
                RunSummary {
                    drained: false,
                    ..RunSummary::default()
                }
            }
        }
    }

    async fn poll(
        self: Arc<Self>,
        n: usize,
        tx: mpsc::Sender<InHand>,
        shutdown: CancellationToken,
    ) {
        let mut failures = 0;
        loop {
            let started = Instant::now();
            let received = tokio::select! {
                // Cancelling drops the in-flight long poll instead of waiting it out.
                () = shutdown.cancelled() => return,
                r = self.input.receive(self.config.receive_max, self.config.wait_secs) => r,
            };
            self.state.beat();
            match received {
                Ok(messages) if messages.is_empty() => {
                    failures = 0;
                    crate::instruments::received(0, started.elapsed());
                }
                Ok(messages) => {
                    failures = 0;
                    crate::instruments::received(messages.len(), started.elapsed());
                    let in_flight = self.state.hold(messages.len());
                    // Visibility is kept from receipt on: messages may wait behind a slow batch.
                    let receipts = messages.iter().map(|m| m.receipt_handle.clone()).collect();
                    let heartbeat = Heartbeat::start(
                        self.input.clone(),
                        receipts,
                        self.config.visibility_timeout_secs,
                        self.config.heartbeat_fraction,
                    );
                    // Messages in hand are always handed over, even during shutdown.
                    if tx
                        .send(InHand {
                            messages,
                            heartbeat,
                            in_flight,
                        })
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Err(e) => {
                    let delay =
                        backoff(failures, self.config.backoff_base, self.config.backoff_max);
                    failures += 1;
                    crate::instruments::receive_failed();
                    tracing::warn!(poller = n, error = %e, retry_in_ms = delay.as_millis() as u64, "receive failed");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// Gathers received messages into batches and processes them, at most
    /// `max_concurrent_batches` at once; ends when the pollers are gone and all is processed.
    async fn batch_loop(self: Arc<Self>, mut rx: mpsc::Receiver<InHand>) -> RunSummary {
        let permits = Arc::new(Semaphore::new(self.config.max_concurrent_batches.max(1)));
        let mut running: JoinSet<StepReport> = JoinSet::new();
        let mut summary = RunSummary::default();
        let mut failures = 0u32;
        loop {
            // Finished batches are accounted as soon as they finish, not when the next arrives.
            let first = tokio::select! {
                Some(done) = running.join_next(), if !running.is_empty() => {
                    failures = self.account(&mut summary, done, failures);
                    continue;
                }
                received = rx.recv() => match received {
                    Some(first) => first,
                    None => break,
                },
            };
            let limits = &self.config.limits;
            let max = self.config.max_batch_records;
            let mut gathered = Gathered::default();
            gathered.add(first, limits);
            // What is already in hand, then (if configured) a short wait for more.
            let deadline = tokio::time::Instant::now() + self.config.max_batch_wait;
            gathered
                .take_in_hand(&mut rx, max, limits, Some(deadline))
                .await;
            // While every batch slot is busy, keep gathering: batches grow with the load and
            // a lone bundle at low load starts at once.
            let permit = loop {
                if let Ok(permit) = Arc::clone(&permits).try_acquire_owned() {
                    break permit;
                }
                tokio::select! {
                    permit = Arc::clone(&permits).acquire_owned() => {
                        break permit.expect("the semaphore is never closed");
                    }
                    Some(more) = rx.recv(), if gathered.records < max => gathered.add(more, limits),
                }
            };
            // A slot is free: take what arrived meanwhile too.
            gathered.take_in_hand(&mut rx, max, limits, None).await;
            crate::instruments::decoded(gathered.decoding);
            while let Some(done) = running.try_join_next() {
                failures = self.account(&mut summary, done, failures);
            }
            if failures > 0 {
                let delay = backoff(
                    failures - 1,
                    self.config.backoff_base,
                    self.config.backoff_max,
                );
                tracing::info!(
                    retry_in_ms = delay.as_millis() as u64,
                    "backing off after a dependency failure"
                );
                tokio::time::sleep(delay).await;
            }
            let worker = Arc::clone(&self);
            running.spawn(async move {
                let report = worker.process(gathered.batch).await;
                drop((permit, gathered.held));
                report
            });
        }
        while let Some(done) = running.join_next().await {
            self.account(&mut summary, done, 0);
        }
        summary
    }

    fn account(
        &self,
        summary: &mut RunSummary,
        done: Result<StepReport, tokio::task::JoinError>,
        failures: u32,
    ) -> u32 {
        self.state.beat();
        let Ok(report) = done else {
            tracing::error!("a batch task panicked; its messages stay on the queue for redelivery");
            return failures + 1;
        };
        crate::instruments::step(&report);
        summary.batches += 1;
        summary.messages += report.messages;
        summary.answered += report.answered;
        summary.dead_lettered += report.dead_lettered;
        summary.left += report.left;
        tracing::info!(
            model_version = report.model_version,
            messages = report.messages,
            records = report.records,
            predicted = report.predicted,
            record_errors = report.record_errors,
            answered = report.answered,
            dead_lettered = report.dead_lettered,
            left = report.left,
            "batch done"
        );
        if report.retryable.is_some() {
            failures + 1
        } else {
            0
        }
    }
}

/// The production worker: real PostgreSQL and MongoDB sources.
pub type ProductionWorker = Worker<
    crate::enrich::cache::CachedReference<crate::enrich::postgres::PgReference>,
    crate::enrich::mongo::MongoDocuments,
>;

/// Builds the worker from settings: connections, queues, the model holder.
pub async fn build(settings: &crate::settings::Settings) -> anyhow::Result<ProductionWorker> {
    use anyhow::Context;

    let pool = crate::db::connect(&settings.database_url, settings.database_max_connections)
        .await
        .context("connecting to PostgreSQL")?;
    if settings.migrate_on_start {
        crate::db::migrate(&pool)
            .await
            .context("applying migrations")?;
    }
    let enricher = crate::cli::enricher(settings, &pool).await?;
    let enricher = Enricher {
        reference: crate::enrich::cache::CachedReference::new(
            enricher.reference,
            Duration::from_secs(settings.reference_cache_secs),
        ),
        documents: enricher.documents,
    };
    // Above the long-poll wait, so a receive can never hang (aws-sdk-rust#1094).
    let sdk = crate::aws::sdk_config(Duration::from_secs(
        settings.wait_secs.clamp(0, 20) as u64 + 10,
    ))
    .await;
    let sqs = crate::aws::sqs(&sdk);
    let need = |v: &Option<String>, var: &str| {
        v.clone()
            .with_context(|| format!("set {var} (a queue URL or name)"))
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
    let dlq = match &settings.input_dlq {
        Some(q) => Some(SqsQueue::resolve(sqs.clone(), q).await?),
        None => input.dead_letter_queue().await?,
    };
    let visibility = input
        .attribute(aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout)
        .await?
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let registry = crate::cli::registry(settings).await?;
    let source = match settings.model_version {
        Some(v) => crate::model::holder::ModelSource::Pinned(v),
        None => crate::model::holder::ModelSource::Alias(settings.model_alias.clone()),
    };
    let models = Arc::new(ModelHolder::load(registry, &settings.model_name, source).await?);
    Ok(Worker {
        input,
        output,
        dlq,
        enricher,
        models,
        aggregates: settings.aggregates.then_some(pool),
        config: settings.worker_config(visibility),
        hooks: Hooks::default(),
        state: Arc::default(),
    })
}

/// What runs beside a built worker's loops.
#[derive(Debug)]
pub struct ServeOptions {
    /// How often the model alias is polled.
    pub poll: Duration,
    /// Where `/metrics`, `/health` and `/ready` are served; None serves nothing.
    pub http: Option<tokio::net::TcpListener>,
    /// The Prometheus recorder's handle, for `/metrics`.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// The ECS agent URI, when task scale-in protection is on.
    pub task_protection: Option<String>,
}

/// Runs a built worker, its model polling, HTTP endpoints and task protection until
/// `shutdown` is cancelled and what was in hand is drained.
pub async fn serve(
    worker: ProductionWorker,
    options: ServeOptions,
    shutdown: CancellationToken,
) -> RunSummary {
    let worker = Arc::new(worker);
    // Side tasks outlive `shutdown`: health answers during the drain.
    let side = CancellationToken::new();
    tokio::spawn(Arc::clone(&worker.models).run(options.poll, shutdown.clone()));
    let http_addr = options.http.as_ref().and_then(|l| l.local_addr().ok());
    if let Some(listener) = options.http {
        let router = crate::http::router(Arc::clone(&worker), options.metrics);
        let stop = side.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::http::serve(listener, router, stop).await {
                tracing::error!(error = %e, "HTTP endpoints stopped; /metrics, /health and /ready no longer answer");
            }
        });
    }
    if let Some(agent) = options.task_protection {
        tokio::spawn(protection::run(
            agent,
            Arc::clone(&worker.state),
            side.clone(),
        ));
    }
    tracing::info!(
        input = worker.input.url(),
        output = worker.output.url(),
        dlq = worker.dlq.as_ref().map(SqsQueue::url),
        visibility_s = worker.config.visibility_timeout_secs,
        model_version = worker.models.current().version,
        http = http_addr.map(|a| a.to_string()),
        "worker started"
    );
    let summary = worker.run(shutdown).await;
    side.cancel();
    summary
}

/// Builds the worker from settings and runs it until SIGTERM or SIGINT.
pub async fn start(settings: &crate::settings::Settings) -> anyhow::Result<RunSummary> {
    use anyhow::Context;

    let http = match settings.http_addr()? {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!(
                "binding the HTTP endpoints to {addr} (ML_PIPELINE_HTTP_ADDR; `off` disables them)"
            )
        })?),
        None => None,
    };
    // Installed before the model loads, so the model gauge is recorded.
    let metrics = match &http {
        Some(_) => Some(crate::instruments::install()?),
        None => None,
    };
    if let Some(handle) = metrics.clone() {
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_secs(5));
            loop {
                ticker.tick().await;
                handle.run_upkeep();
            }
        });
    }
    let task_protection = match (settings.task_protection, std::env::var("ECS_AGENT_URI")) {
        (true, Ok(uri)) => Some(uri),
        (true, Err(_)) => {
            tracing::warn!("ML_PIPELINE_TASK_PROTECTION is set but ECS_AGENT_URI is not (not on ECS?); task protection is off");
            None
        }
        (false, _) => None,
    };
    let worker = build(settings).await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    let options = ServeOptions {
        poll: Duration::from_secs(settings.model_poll_secs.max(1)),
        http,
        metrics,
        task_protection,
    };
    Ok(serve(worker, options, shutdown).await)
}

/// Cancels `token` on SIGTERM (how ECS stops a task) or SIGINT.
pub async fn stop_on_signal(token: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received"),
        () = term => tracing::info!("SIGTERM received"),
    }
    token.cancel();
}
