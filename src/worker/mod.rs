//! The worker: pollers long-poll the input queue, a batcher gathers the bundles in hand into one
//! batch, and [`Worker::process`] (the "one step", in [`step`]) answers it. The loop here owns
//! concurrency, back-off and shutdown.
//!
//! Memory is bounded: the pollers hand messages over a bounded channel, and at most
//! `max_concurrent_batches` batches are processed at once. Messages stay invisible to other
//! workers from receipt until their step returns: a heartbeat starts at the poller.

pub mod aggregates;
pub mod heartbeat;
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
    /// How long the batcher waits for more bundles after the first one.
    pub max_batch_wait: Duration,
    /// Batches processed at once.
    pub max_concurrent_batches: usize,
    /// The visibility the heartbeat keeps extending to, in seconds.
    pub visibility_timeout_secs: i32,
    /// The heartbeat period as a fraction of the visibility timeout.
    pub heartbeat_fraction: f64,
    /// How long shutdown waits for batches in hand.
    pub drain_timeout: Duration,
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
            max_batch_records: 5_000,
            max_batch_wait: Duration::from_millis(10),
            max_concurrent_batches: 2,
            visibility_timeout_secs: 60,
            heartbeat_fraction: 0.5,
            drain_timeout: Duration::from_secs(25),
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
}

/// Messages received by one poll, kept visible by their heartbeat until their step returns.
#[derive(Debug)]
struct InHand {
    messages: Vec<crate::queue::Message>,
    heartbeat: Heartbeat,
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
            let received = tokio::select! {
                // Cancelling drops the in-flight long poll instead of waiting it out.
                () = shutdown.cancelled() => return,
                r = self.input.receive(self.config.receive_max, self.config.wait_secs) => r,
            };
            match received {
                Ok(messages) if messages.is_empty() => failures = 0,
                Ok(messages) => {
                    failures = 0;
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
        while let Some(first) = rx.recv().await {
            let mut batch = decode_all(first.messages, &self.config.limits);
            let mut heartbeats = vec![first.heartbeat];
            let deadline = tokio::time::Instant::now() + self.config.max_batch_wait;
            while batch.iter().map(Received::records).sum::<usize>() < self.config.max_batch_records
            {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(more)) => {
                        batch.extend(decode_all(more.messages, &self.config.limits));
                        heartbeats.push(more.heartbeat);
                    }
                    _ => break,
                }
            }
            let permit = Arc::clone(&permits)
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
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
                let report = worker.process(batch).await;
                drop((permit, heartbeats));
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
        let Ok(report) = done else {
            tracing::error!("a batch task panicked; its messages stay on the queue for redelivery");
            return failures + 1;
        };
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
pub type ProductionWorker =
    Worker<crate::enrich::postgres::PgReference, crate::enrich::mongo::MongoDocuments>;

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
    })
}

/// Runs a built worker, and its model polling, until `shutdown` is cancelled.
pub async fn serve(
    worker: ProductionWorker,
    poll: Duration,
    shutdown: CancellationToken,
) -> RunSummary {
    tokio::spawn(Arc::clone(&worker.models).run(poll, shutdown.clone()));
    tracing::info!(
        input = worker.input.url(),
        output = worker.output.url(),
        dlq = worker.dlq.as_ref().map(SqsQueue::url),
        visibility_s = worker.config.visibility_timeout_secs,
        model_version = worker.models.current().version,
        "worker started"
    );
    Arc::new(worker).run(shutdown).await
}

/// Builds the worker from settings and runs it until SIGTERM or SIGINT.
pub async fn start(settings: &crate::settings::Settings) -> anyhow::Result<RunSummary> {
    let worker = build(settings).await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    Ok(serve(
        worker,
        Duration::from_secs(settings.model_poll_secs.max(1)),
        shutdown,
    )
    .await)
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
