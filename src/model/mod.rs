//! The model: the scaler fitted at training time and the SVM ([`classifier`], compiled for the
//! hot path in [`compiled`]), with the spec they were fitted for. [`artifact`] is its versioned
//! serialization and [`checks`] what it must satisfy before it serves, [`registry`] keeps
//! versions in a [`store`] (S3, or memory in tests), and [`holder`] serves the promoted version
//! with hot reload.

pub mod artifact;
pub mod checks;
pub mod classifier;
pub mod compiled;
pub mod holder;
pub mod memory_store;
pub mod registry;
pub mod s3_store;
pub mod stats;
pub mod store;

#[cfg(test)]
mod tests;

pub use artifact::{ArtifactError, ModelArtifact, ARTIFACT_FORMAT, DEFAULT_MAX_ARTIFACT_BYTES};
pub use checks::ReferenceSet;
pub use classifier::{class_name, Classifier};
pub use stats::{FeatureStats, TrainingStats};
