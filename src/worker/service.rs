//! The worker: everything it talks to. Its one step is in [`super::step`], its loop in
//! [`super::run`], its health answers in [`super::health`].

use std::sync::Arc;

use sqlx::PgPool;

use super::config::{Hooks, WorkerConfig};
use super::feedback::FeedbackConsumer;
use super::state::WorkerState;
use crate::enrich::Enricher;
use crate::learning::prediction_log::PredictionLog;
use crate::model::holder::ModelHolder;
use crate::monitor::Monitor;
use crate::payload::Payloads;
use crate::queue::SqsQueue;

/// Everything the worker talks to.
#[derive(Debug)]
pub struct Worker<R, D, Q = SqsQueue> {
    /// The input queue.
    pub input: Q,
    /// The output queue.
    pub output: Q,
    /// The input's dead-letter queue, for unreadable bundles.
    pub dlq: Option<Q>,
    /// Where Extended Client payloads are read and written; None refuses pointer messages and
    /// answers too large for one message (unit tests).
    pub payloads: Option<Payloads>,
    /// Enrichment sources.
    pub enricher: Enricher<R, D>,
    /// The served model.
    pub models: Arc<ModelHolder>,
    /// Where prediction aggregates go; None disables them.
    pub aggregates: Option<PgPool>,
    /// Where logged predictions go (`ML_PIPELINE_PREDICTION_LOG`); None logs nothing.
    pub prediction_log: Option<PredictionLog>,
    /// Drift of the served features and shadow scoring; None watches nothing.
    pub monitor: Option<Arc<Monitor>>,
    /// The feedback queue's consumer, run beside the pollers; None when no feedback queue is
    /// configured.
    pub feedback: Option<FeedbackConsumer<Q>>,
    /// Behaviour.
    pub config: WorkerConfig,
    /// Test hooks.
    pub hooks: Hooks,
    /// Progress and messages in hand, for health and task protection.
    pub state: Arc<WorkerState>,
}
