//! Startup: the wiring. Everything that builds a client or connects two parts lives here: the
//! AWS, PostgreSQL and MongoDB clients, the enricher, the model registry and holder, the worker
//! and the tasks that run beside it. The commands and the tools call in here; the stages below
//! never do.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use aws_sdk_sqs::types::QueueAttributeName;
use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::enrich::cache::CachedReference;
use crate::enrich::mongo::MongoDocuments;
use crate::enrich::postgres::PgReference;
use crate::enrich::source::LookupLimits;
use crate::enrich::Enricher;
use crate::model::holder::{ModelHolder, ModelSource};
use crate::model::registry::Registry;
use crate::monitor::shadow::Shadow;
use crate::monitor::{Monitor, MonitorConfig};
use crate::payload::s3::S3Payloads;
use crate::payload::Payloads;
use crate::queue::{RedrivePolicy, SqsQueue};
use crate::settings::Settings;
use crate::worker::feedback::FeedbackConsumer;
use crate::worker::{Hooks, RunSummary, Worker, WorkerConfig};

/// The production worker: real queues, PostgreSQL (cached) and MongoDB sources.
pub type ProductionWorker = Worker<CachedReference<PgReference>, MongoDocuments>;

/// A PostgreSQL pool for the settings' database, with at most `max_connections`.
pub async fn postgres(settings: &Settings, max_connections: u32) -> anyhow::Result<PgPool> {
    crate::db::connect(&settings.database_url, max_connections)
        .await
        .context("connecting to PostgreSQL")
}

/// A PostgreSQL pool with the migrations applied.
pub async fn postgres_migrated(
    settings: &Settings,
    max_connections: u32,
) -> anyhow::Result<PgPool> {
    crate::db::connect_migrated(&settings.database_url, max_connections).await
}

/// The MongoDB database holding the provider documents.
pub async fn mongo(settings: &Settings) -> anyhow::Result<mongodb::Database> {
    crate::mongo::connect(&settings.mongodb_uri, &settings.mongodb_database)
        .await
        .context("connecting to MongoDB")
}

/// The enrichment sources named by the settings, uncached (training and tools).
pub async fn enricher(
    settings: &Settings,
    pool: &PgPool,
) -> anyhow::Result<Enricher<PgReference, MongoDocuments>> {
    let limits = LookupLimits {
        timeout: Duration::from_secs(settings.source_timeout_secs.max(1)),
        chunk_keys: settings.lookup_chunk_keys.max(1),
        concurrency: settings.lookup_concurrency.max(1),
    };
    Ok(Enricher {
        reference: PgReference::new(pool.clone()).with_limits(limits),
        documents: MongoDocuments::new(mongo(settings).await?).with_limits(limits),
    })
}

/// An SQS client whose calls end within `operation_timeout`.
pub async fn sqs(operation_timeout: Duration) -> aws_sdk_sqs::Client {
    crate::aws::sqs(&crate::aws::sdk_config(operation_timeout).await)
}

/// A queue by URL or name; `variable` names the setting, for the error.
pub async fn queue(
    sqs: &aws_sdk_sqs::Client,
    url_or_name: Option<&str>,
    variable: &str,
) -> anyhow::Result<SqsQueue> {
    let name = url_or_name.with_context(|| format!("set {variable} (a queue URL or name)"))?;
    Ok(SqsQueue::resolve(sqs.clone(), name).await?)
}

/// The input's dead-letter queue: `configured` (ML_PIPELINE_INPUT_DLQ) when set, else the queue
/// the input's RedrivePolicy names; None when neither names one. The worker and the `dlq`
/// commands resolve it the same way.
pub async fn input_dlq(
    sqs: &aws_sdk_sqs::Client,
    configured: Option<&str>,
    redrive: &RedrivePolicy,
) -> anyhow::Result<Option<SqsQueue>> {
    match configured.or(redrive.dead_letter_queue.as_deref()) {
        Some(q) => Ok(Some(SqsQueue::resolve(sqs.clone(), q).await?)),
        None => Ok(None),
    }
}

/// An S3 client for the settings (provider deliveries at `s3://` URLs); a call's first answer
/// must come within 60 s, the body then streams for as long as it takes.
pub async fn s3(settings: &Settings) -> aws_sdk_s3::Client {
    let config = crate::aws::sdk_config(Duration::from_secs(60)).await;
    crate::aws::s3(&config, settings.s3_force_path_style)
}

/// The model registry named by the settings.
pub async fn registry(settings: &Settings) -> anyhow::Result<Registry> {
    let config = crate::aws::sdk_config(Duration::from_secs(30)).await;
    Ok(Registry::new(
        crate::aws::s3(&config, settings.s3_force_path_style),
        settings.require_bucket()?,
    )
    .with_max_artifact_bytes(settings.model_max_bytes))
}

/// The worker's behaviour from the settings; `queue_visibility` is the input queue's own
/// visibility timeout. Out-of-range values are brought into range.
pub fn worker_config(settings: &Settings, queue_visibility: i32) -> WorkerConfig {
    let visibility_timeout_secs = settings.visibility_timeout_secs.unwrap_or(queue_visibility);
    // A deferred delete must land long before the message could be seen again: it waits at
    // most twice the delay, kept within a quarter of the visibility timeout.
    let delete_delay = Duration::from_millis(settings.delete_delay_ms)
        .min(Duration::from_secs(visibility_timeout_secs.max(0) as u64) / 8);
    WorkerConfig {
        receive_max: settings.receive_max.clamp(1, 10),
        wait_secs: settings.wait_secs.clamp(0, 20),
        pollers: settings.pollers.max(1),
        max_batch_records: settings.max_batch_records.max(1),
        max_batch_cells: settings.max_batch_cells.max(1),
        max_batch_wait: Duration::from_millis(settings.max_batch_wait_ms),
        batch_latency_budget: Duration::from_millis(settings.batch_latency_budget_ms),
        delete_delay,
        max_concurrent_batches: settings.max_concurrent_batches.max(1),
        visibility_timeout_secs,
        heartbeat_fraction: settings.heartbeat_fraction,
        drain_timeout: Duration::from_secs(settings.drain_timeout_secs),
        stall_timeout: Duration::from_secs(settings.stall_timeout_secs.max(1)),
        output_encoding: settings.output_encoding,
        max_message_bytes: settings.max_message_bytes.max(1024),
        limits: settings.limits(),
        max_receives: settings.max_receives,
        outage_hold: Duration::from_secs(settings.outage_hold_secs),
        pacing: settings.pacing(),
        ..WorkerConfig::default()
    }
}

/// Builds the worker from settings: connections, queues, the model holder.
pub async fn build_worker(settings: &Settings) -> anyhow::Result<ProductionWorker> {
    let pool = postgres(settings, settings.database_max_connections).await?;
    if settings.migrate_on_start {
        crate::db::migrate(&pool)
            .await
            .context("applying migrations")?;
    }
    let sources = enricher(settings, &pool).await?;
    let enricher = Enricher {
        reference: CachedReference::new(
            sources.reference,
            Duration::from_secs(settings.reference_cache_secs),
        ),
        documents: sources.documents,
    };
    // Above the long-poll wait, so a receive can never hang (aws-sdk-rust#1094).
    let sqs = sqs(Duration::from_secs(
        settings.wait_secs.clamp(0, 20) as u64 + 10,
    ))
    .await;
    let input = queue(
        &sqs,
        settings.input_queue.as_deref(),
        "ML_PIPELINE_INPUT_QUEUE",
    )
    .await?;
    let output = queue(
        &sqs,
        settings.output_queue.as_deref(),
        "ML_PIPELINE_OUTPUT_QUEUE",
    )
    .await?;
    let redrive = input.redrive_policy().await?;
    let dlq = input_dlq(&sqs, settings.input_dlq.as_deref(), &redrive).await?;
    let visibility = input
        .attribute(QueueAttributeName::VisibilityTimeout)
        .await?
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let mut config = worker_config(settings, visibility);
    if let Some(redrive) = redrive.max_receive_count {
        if config.max_receives >= redrive {
            let lowered = redrive.saturating_sub(1);
            tracing::warn!(
                max_receives = config.max_receives,
                queue_max_receive_count = redrive,
                using = lowered,
                "ML_PIPELINE_MAX_RECEIVES is not below the input queue's maxReceiveCount; lowered so the worker dead-letters with a reason before SQS's redrive"
            );
            config.max_receives = lowered;
        }
    }
    let source = match settings.model_version {
        Some(v) => ModelSource::Pinned(v),
        None => ModelSource::Alias(settings.model_alias.clone()),
    };
    let registry = registry(settings).await?;
    let models = Arc::new(ModelHolder::load(registry.clone(), &settings.model_name, source).await?);
    let monitor = Some(Arc::new(monitor(settings, registry, &pool)));
    let feedback = match &settings.feedback_queue {
        Some(name) => Some(feedback_consumer(settings, &sqs, name, &pool, &config).await?),
        None => None,
    };
    let prediction_log = settings.prediction_log.is_on().then(|| {
        crate::learning::prediction_log::start(
            pool.clone(),
            settings.prediction_log,
            settings.prediction_log_retention_days,
        )
    });
    let payloads = Payloads::new(
        Arc::new(S3Payloads::new(s3(settings).await)),
        settings.payload_config(),
    );
    Ok(Worker {
        input,
        output,
        dlq,
        payloads: Some(payloads),
        enricher,
        models,
        aggregates: settings.aggregates.then_some(pool),
        prediction_log,
        monitor,
        feedback,
        config,
        hooks: Hooks::default(),
        state: Arc::default(),
    })
}

/// The worker's monitor: drift of the served features, and shadow scoring when
/// `ML_PIPELINE_SHADOW_ALIAS` is set; its figures go to `pool` too.
pub fn monitor(settings: &Settings, registry: Registry, pool: &PgPool) -> Monitor {
    let shadow = settings.shadow_alias.as_deref().map(|alias| {
        Arc::new(Shadow::new(
            registry,
            &settings.model_name,
            alias,
            settings.shadow_fraction,
        ))
    });
    let config = MonitorConfig {
        interval: Duration::from_secs(settings.monitor_interval_secs.max(1)),
        drift_window: Duration::from_secs(settings.drift_window_secs.max(1)),
        drift_min_records: settings.drift_min_records,
        psi_threshold: settings.drift_psi_threshold,
        emf_namespace: settings.emf_namespace.clone().filter(|n| !n.is_empty()),
        worker: std::env::var("HOSTNAME").unwrap_or_else(|_| format!("pid-{}", std::process::id())),
    };
    Monitor::new(config, &settings.model_name, shadow, Some(pool.clone()))
}

/// The feedback queue's consumer: the queue named `name`, its dead-letter queue
/// (`ML_PIPELINE_FEEDBACK_DLQ`, or the queue's RedrivePolicy).
pub async fn feedback_consumer(
    settings: &Settings,
    sqs: &aws_sdk_sqs::Client,
    name: &str,
    pool: &PgPool,
    config: &WorkerConfig,
) -> anyhow::Result<FeedbackConsumer<SqsQueue>> {
    let queue = queue(sqs, Some(name), "ML_PIPELINE_FEEDBACK_QUEUE").await?;
    let redrive = queue.redrive_policy().await?;
    let dlq = input_dlq(sqs, settings.feedback_dlq.as_deref(), &redrive).await?;
    Ok(FeedbackConsumer {
        queue,
        dlq,
        pool: pool.clone(),
        dataset: settings.feedback_dataset.clone(),
        max_body_bytes: settings.max_body_bytes,
        max_message_bytes: config.max_message_bytes,
        retry: config.retry(),
    })
}

/// What runs beside a built worker's loops.
#[derive(Debug)]
pub struct ServeOptions {
    /// How often the model alias is polled.
    pub poll: Duration,
    /// Where `/metrics`, `/health` and `/ready` are served; None serves nothing.
    pub http: Option<tokio::net::TcpListener>,
    /// The Prometheus recorder's handle, for `/metrics` and its upkeep.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// The ECS agent URI, when task scale-in protection is on.
    pub task_protection: Option<String>,
}

/// Runs a built worker with its side tasks (model polling, HTTP endpoints, task protection,
/// metrics upkeep) until `shutdown` completes and what was in hand is drained; then stops the
/// side tasks and waits for them.
pub async fn serve(
    worker: ProductionWorker,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> RunSummary {
    let worker = Arc::new(worker);
    let stop_receiving = CancellationToken::new();
    // Side tasks outlive `stop_receiving`: health answers during the drain.
    let stop_side = CancellationToken::new();
    let mut side = JoinSet::new();
    side.spawn(Arc::clone(&worker.models).run(options.poll, stop_side.clone()));
    let http_addr = options.http.as_ref().and_then(|l| l.local_addr().ok());
    if let Some(listener) = options.http {
        let router = crate::worker::endpoints::router(Arc::clone(&worker), options.metrics.clone());
        let stop = stop_side.clone();
        side.spawn(async move {
            if let Err(e) = crate::worker::endpoints::serve(listener, router, stop).await {
                tracing::error!(error = %e, "HTTP endpoints stopped; /metrics, /health and /ready no longer answer");
            }
        });
    }
    if let Some(handle) = options.metrics {
        side.spawn(metrics_upkeep(handle, stop_side.clone()));
    }
    if let Some(monitor) = worker.monitor.clone() {
        if let Some(shadow) = monitor.shadow() {
            side.spawn(Arc::clone(shadow).run(options.poll, stop_side.clone()));
        }
        side.spawn(monitor.run(Arc::clone(&worker.models), stop_side.clone()));
    }
    if let Some(consumer) = worker.feedback.clone() {
        let stop = stop_side.clone();
        let wait = worker.config.wait_secs;
        side.spawn(async move {
            let report = consumer.run(wait, stop).await;
            tracing::info!(%report, "feedback consumer stopped");
        });
    }
    if let Some(agent) = options.task_protection {
        side.spawn(crate::worker::protection::run(
            agent,
            Arc::clone(&worker.state),
            stop_side.clone(),
        ));
    }
    tracing::info!(
        input = worker.input.url(),
        output = worker.output.url(),
        dlq = worker.dlq.as_ref().map(|q| q.url()),
        visibility_s = worker.config.visibility_timeout_secs,
        model_version = worker.models.current().version,
        http = http_addr.map(|a| a.to_string()),
        "worker started"
    );
    let running = tokio::spawn(Arc::clone(&worker).run(stop_receiving.clone()));
    shutdown.await;
    stop_receiving.cancel();
    let summary = running.await.unwrap_or_else(|e| {
        tracing::error!(error = %e, "the worker loop panicked; unfinished bundles stay on the queue");
        RunSummary::default()
    });
    if let Some(log) = &worker.prediction_log {
        let deadline = tokio::time::Instant::now() + worker.config.drain_timeout;
        if let Some(summary) = log.close(deadline).await {
            tracing::info!(?summary, "prediction log closed");
        }
    }
    stop_side.cancel();
    while let Some(done) = side.join_next().await {
        if let Err(e) = done {
            tracing::warn!(error = %e, "a side task ended abnormally");
        }
    }
    summary
}

/// Keeps the Prometheus histograms' windows current until `stop`.
async fn metrics_upkeep(
    handle: metrics_exporter_prometheus::PrometheusHandle,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => handle.run_upkeep(),
        }
    }
}

/// Builds the worker from settings and runs it until `shutdown` completes (main passes
/// [`shutdown_signal`]), then drains.
pub async fn run_worker(
    settings: &Settings,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<RunSummary> {
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
    let task_protection = match (settings.task_protection, std::env::var("ECS_AGENT_URI")) {
        (true, Ok(uri)) => Some(uri),
        (true, Err(_)) => {
            tracing::warn!("ML_PIPELINE_TASK_PROTECTION is set but ECS_AGENT_URI is not (not on ECS?); task protection is off");
            None
        }
        (false, _) => None,
    };
    let worker = build_worker(settings).await?;
    let options = ServeOptions {
        poll: Duration::from_secs(settings.model_poll_secs.max(1)),
        http,
        metrics,
        task_protection,
    };
    Ok(serve(worker, options, shutdown).await)
}

/// Completes on SIGTERM (how ECS stops a task) or SIGINT, naming the signal as a person reads it
/// (`Ctrl-C (SIGINT)`, `SIGTERM`).
pub async fn shutdown_signal() -> String {
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
    let signal = tokio::select! {
        _ = ctrl_c => {
            tracing::info!("SIGINT received");
            "Ctrl-C (SIGINT)"
        }
        () = term => {
            tracing::info!("SIGTERM received");
            "SIGTERM"
        }
    };
    signal.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deferred_delete_waits_at_most_a_quarter_of_the_visibility_timeout_twice_the_delay() {
        assert_eq!(
            worker_config(&Settings::default(), 30).delete_delay,
            Duration::from_millis(200),
            "on by default"
        );
        let off = Settings {
            delete_delay_ms: 0,
            ..Settings::default()
        };
        assert_eq!(worker_config(&off, 30).delete_delay, Duration::ZERO);
        assert_eq!(
            worker_config(&Settings::default(), 0).delete_delay,
            Duration::ZERO,
            "no visibility to spare: deleted with the batch"
        );
        let long = Settings {
            delete_delay_ms: 60_000,
            ..Settings::default()
        };
        assert_eq!(
            worker_config(&long, 30).delete_delay,
            Duration::from_millis(3_750),
            "an eighth of 30 s: twice that is a quarter"
        );
    }
}
