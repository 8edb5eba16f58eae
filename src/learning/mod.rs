//! The learning loop: what keeps a model good after it is first trained.
//!
//! - [`sampling`]: which bundles' predictions are logged (`off`, `sampled:<fraction>`, `all`).
//! - [`prediction_log`]: the worker's log of what it predicted, written to PostgreSQL with COPY
//!   by a background task, off the answer's path, in day partitions dropped after a retention.
//! - [`feedback`]: feedback messages in the predecessor's and this project's formats, joined
//!   with the log and written to `training_examples` with their provenance. The feedback
//!   queue's consumer is the worker's (`crate::worker::feedback`), or `ml-pipeline feedback`.
//! - [`retrain`]: one retraining run: the trigger, a challenger trained on the base data plus
//!   feedback, champion and challenger scored on the same held-out rows, and the gate that
//!   promotes only a better model.

pub mod feedback;
pub mod prediction_log;
pub mod retrain;
pub mod sampling;

pub use sampling::LogMode;
