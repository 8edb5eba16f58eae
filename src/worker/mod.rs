//! The worker: pollers long-poll the input queue, a batcher gathers the bundles in hand into one
//! batch, and the one step answers it.
//!
//! - [`service`]: the [`Worker`] and everything it talks to; [`config`]: how it behaves.
//! - [`step`]: the one step, [`Worker::process`], with its sub-steps; [`groups`]: the order
//!   of FIFO message groups within it.
//! - [`run`]: the loop around it (pollers, batching, back-off, drain); [`gather`]: a batch in
//!   hand; [`heartbeat`]: visibility kept while it is.
//! - [`pacing`]: how fast the pollers receive (fewer on an idle queue; slowed, then paused,
//!   under back-pressure), decided as plain values; [`batching`]: adaptive batching, one poller
//!   waiting before each receive while bundles arrive fast; [`governor`]: that pace shared by
//!   the loops, logged and measured.
//! - [`state`], [`health`], [`endpoints`]: progress, liveness and readiness, served over HTTP.
//! - [`protection`]: ECS task scale-in protection; [`aggregates`]: prediction counts per batch.

pub mod aggregates;
pub mod batching;
pub mod config;
pub mod dead_letter;
pub mod deletes;
pub mod endpoints;
pub mod feedback;
pub mod gather;
pub mod governor;
pub mod groups;
pub mod health;
pub mod heartbeat;
pub mod pacing;
pub mod protection;
pub mod run;
pub mod service;
pub mod state;
pub mod step;

#[cfg(test)]
mod tests;

pub use config::{HookFuture, Hooks, WorkerConfig};
pub use pacing::{Pace, PacingConfig, Pressure};
pub use run::RunSummary;
pub use service::Worker;
pub use step::{decode_all, Received, Retryable, StepReport};
