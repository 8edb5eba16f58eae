//! The integration tests against the real local services, in one test binary: each file is a
//! module, and `common` gives every test its own databases, bucket and queues. One binary
//! instead of one per file: every file instantiates the same generic worker, clients and
//! drivers, and linking and optimizing them once instead of ten times is most of a cold build.
//!
//! `tests/outage.rs` stays a binary of its own: it stops and restarts PostgreSQL, which the
//! tests here must not see. `tests/architecture.rs` reads the sources only.

#[path = "../common/mod.rs"]
mod common;

mod back_pressure;
mod dlq;
mod extended_client;
mod fifo;
mod learning_loop;
mod monitoring;
mod operate;
mod providers;
mod providers_http;
mod providers_report;
mod registry;
mod services;
mod stalled_mongo;
mod train_command;
mod worker;
