//! `ml-pipeline`: an SQS worker that answers bundles of banknote-inspection requests with SVM
//! predictions, after standardizing, enriching (PostgreSQL, MongoDB) and normalizing them.
//! The message formats, delivery guarantees and error reasons are in `docs/contract.md`.
//!
//! # Layout
//!
//! The stages follow the data, which flows one way:
//! [`queue`] -> [`bundle`] (decode, validate) -> [`standardize`] -> [`enrich`] -> [`normalize`]
//! -> [`batch`] -> [`model`] -> [`bundle`] (answers, encode) -> [`queue`].
//!
//! - [`queue`]: the queue seam (receive, send a batch, delete a batch, change visibility), over
//!   SQS or in memory, delivery on top of it (batch limits, FIFO ids, per-entry retries), and
//!   what a dead-lettered copy carries.
//! - [`bundle`]: message formats (v1 and seed), compression, decoding with limits, validation
//!   against the spec; answers and their encoding.
//! - [`standardize`]: business rules on request values (text folding, finite numbers).
//! - [`enrich`]: one PostgreSQL and one MongoDB round trip per batch, behind narrow seams.
//! - [`normalize`]: every feature in canonical units, written into its matrix row.
//! - [`batch`]: many bundles -> one canonical feature matrix, with each record's fate.
//! - [`model`]: the fitted scaler and SVM, their versioned artifact, the registry over a model
//!   store (S3 or memory), and the holder that hot-swaps promoted versions.
//! - [`payload`]: bodies too large for one message, through S3 in the SQS Extended Client's
//!   format (pointer and `ExtendedPayloadSize`), read for inputs and written for answers.
//! - [`worker`]: the one step, the loop around it, heartbeat, health, endpoints, aggregates.
//! - [`monitor`]: watching the served model: drift of the served features against the
//!   training statistics stored with it, and shadow scoring of a challenger beside it.
//! - [`learning`]: the learning loop: the prediction log, feedback turned into labelled
//!   examples, and retraining that promotes only a better model.
//! - [`train`]: training with the worker's own preprocessing, evaluation, publishing, the
//!   reports (text, JSON, HTML figures), progress and Ctrl-C.
//!
//! Beside the stages:
//! - [`spec`]: the declarative pipeline spec; [`record`]: per-record errors with their stage;
//!   [`text`]: bounded descriptions for messages; [`sample`]: stable sampling by key.
//! - [`fixtures`]: the banknote fixture files, read and loaded.
//! - [`providers`]: provider deliveries (files, S3 objects, HTTP APIs) into MongoDB with their
//!   history, the deliveries ledger and API request records in PostgreSQL, rollback (what puts
//!   the documents [`enrich`] reads in place), and each provider's quality report.
//! - [`instruments`]: every Prometheus metric; [`telemetry`]: logs; [`figure`]: self-contained
//!   HTML pages of plotters figures (the training and provider reports).
//! - [`aws`], [`db`], [`mongo`], [`http`]: the outside systems' clients.
//! - [`settings`]: typed configuration from environment variables.
//!
//! Entry points, above everything else:
//! - [`startup`]: the wiring: clients, enricher, registry, model holder, the worker and its
//!   side tasks.
//! - [`commands`]: what each operator command does; [`cli`]: the command line, mapped to them.
//!
//! The load generator, chaos runner, fixture generator and demo are not here: they live in the
//! `ml-pipeline-tools` crate (`tools/`) and use only this library's public API.

pub mod aws;
pub mod batch;
pub mod bundle;
pub mod cli;
pub mod commands;
pub mod db;
pub mod enrich;
pub mod figure;
pub mod fixtures;
pub mod http;
pub mod instruments;
pub mod learning;
pub mod model;
pub mod mongo;
pub mod monitor;
pub mod normalize;
pub mod payload;
pub mod providers;
pub mod queue;
pub mod record;
pub mod sample;
pub mod settings;
pub mod spec;
pub mod standardize;
pub mod startup;
pub mod telemetry;
pub mod text;
pub mod train;
pub mod worker;
