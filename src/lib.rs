//! `ml-pipeline`: an SQS worker that answers bundles of banknote-inspection requests with SVM
//! predictions, after standardizing, enriching (PostgreSQL, MongoDB) and normalizing them.
//!
//! # Layout
//!
//! The modules follow the data, which flows one way:
//! queue -> [`bundle`] decoding -> [`standardize`] -> [`enrich`] -> [`normalize`] -> [`batch`]
//! -> [`model`] -> [`bundle`] encoding -> queue.
//!
//! - [`bundle`]: message formats (v1 and seed), compression, decoding with limits, encoding.
//! - [`spec`]: the declarative pipeline spec: features, their roads, units, rules.
//! - [`standardize`]: business rules on request values (text folding, finite numbers).
//! - [`enrich`]: one PostgreSQL and one MongoDB round trip per batch, behind narrow seams.
//! - [`normalize`]: every feature in canonical units, written into its matrix row.
//! - [`batch`]: many bundles -> one matrix -> one answer per bundle.
//! - [`record`]: per-record errors, with their stage.
//! - [`queue`]: the SQS seam (receive, batch send/delete, visibility).
//! - [`worker`]: the main job: pollers, batching, the one step, heartbeat, shutdown, aggregates,
//!   liveness and readiness, ECS task protection.
//! - [`http`]: `/metrics`, `/health`, `/ready`, and the small client `healthcheck` uses.
//! - [`instruments`]: every Prometheus metric, named and recorded in one place.
//! - [`telemetry`]: logs (JSON lines off a terminal).
//! - [`train`]: training with the worker's own preprocessing, evaluation, publishing.
//! - [`aws`]: SDK clients from the default chain.
//! - [`model`]: the fitted scaler and SVM and their versioned artifact.
//! - [`db`]: the PostgreSQL pool and migrations; [`mongo`]: the MongoDB client and indexes.
//! - [`fixtures`]: the deterministic banknote domain generator and loader.
//! - [`settings`]: typed configuration from environment variables.
//! - [`cli`]: the command line.
//! - [`bench`]: the end-to-end load generator (`ml-pipeline bench`) and its emulator ceiling.

pub mod aws;
pub mod batch;
pub mod bench;
pub mod bundle;
pub mod cli;
pub mod db;
pub mod demo;
pub mod enrich;
pub mod fixtures;
pub mod http;
pub mod instruments;
pub mod model;
pub mod mongo;
pub mod normalize;
pub mod queue;
pub mod record;
pub mod send;
pub mod settings;
pub mod spec;
pub mod standardize;
pub mod telemetry;
pub mod train;
pub mod worker;
