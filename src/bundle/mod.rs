//! Bundles: the messages on the queues (CONTRACT.md sections 1, 2 and 4).
//!
//! [`decode`] turns a message body and its `content-encoding` attribute into a checked
//! [`InputBundle`] or a [`DecodeError`] that sends it to the dead-letter queue; [`encode`] writes
//! the answer. Compression lives in [`compression`].

pub mod compression;
pub mod decode;
pub mod encode;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use compression::ContentEncoding;
pub use decode::{decode, DecodeError, Limits};
pub use encode::Answer;

/// A v1 request bundle: many records in compact array form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestBundle {
    /// The bundle's idempotency key, 1..=128 printable characters.
    pub bundle_id: String,
    /// The model name; the worker's configured model when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Request field names, in row order.
    pub columns: Vec<String>,
    /// One array of `columns.len()` values per record.
    pub rows: Vec<Vec<Value>>,
}

/// The predecessor's format: complete canonical feature vectors, no enrichment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeedBundle {
    /// The predecessor's bundle id.
    pub batch_id: String,
    /// One label per feature vector, echoed back.
    pub subjects: Vec<Value>,
    /// Canonical feature vectors in the model's feature order.
    pub features: Vec<Vec<f64>>,
}

/// The answer to a [`SeedBundle`], in the predecessor's format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeedAnswer {
    /// The request's `batch_id`.
    pub batch_id: String,
    /// The request's `subjects`.
    pub subjects: Vec<Value>,
    /// The request's `features`.
    pub input: Vec<Vec<f64>>,
    /// `"real"` or `"fake"` per feature vector.
    pub output: Vec<String>,
}

/// The answer to a [`RequestBundle`] (CONTRACT.md section 2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputBundle {
    /// The request's `bundle_id`.
    pub bundle_id: String,
    /// The model name.
    pub model: String,
    /// The model version that produced every row of this bundle.
    pub model_version: String,
    /// Output column names: `id`, `label`, `score`, then reported lookup values (`issuer`).
    pub columns: Vec<String>,
    /// One row per predicted record.
    pub rows: Vec<Vec<Value>>,
    /// `[id, "stage: reason"]` per record that could not be predicted.
    pub errors: Vec<(String, String)>,
    /// Milliseconds spent per stage, for this bundle's batch.
    pub timing_ms: BTreeMap<String, f64>,
}

/// A bundle as read from the queue, in either format.
#[derive(Debug, Clone, PartialEq)]
pub enum InputBundle {
    /// The v1 format.
    Request(RequestBundle),
    /// The predecessor's seed format.
    Seed(SeedBundle),
}

impl InputBundle {
    /// The bundle's id in either format.
    pub fn id(&self) -> &str {
        match self {
            InputBundle::Request(b) => &b.bundle_id,
            InputBundle::Seed(b) => &b.batch_id,
        }
    }

    /// How many records it holds.
    pub fn len(&self) -> usize {
        match self {
            InputBundle::Request(b) => b.rows.len(),
            InputBundle::Seed(b) => b.features.len(),
        }
    }

    /// Whether it holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
