//! The messages on the queues: a v1 request bundle or a seed-format bundle in, one answer per
//! bundle out (docs/contract.md sections 1 and 2).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use smallvec::SmallVec;

use super::table::Table;

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
    /// One array of `columns.len()` values per record, held compactly.
    pub rows: Table,
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

/// The answer to a [`RequestBundle`] (docs/contract.md section 2).
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
    /// One row per predicted record: `[id, label, score, reported...]` on the wire.
    pub rows: Vec<OutputRow>,
    /// `[id, "stage: reason"]` per record that could not be predicted.
    pub errors: Vec<(String, String)>,
    /// Milliseconds spent per stage, for this bundle's batch.
    pub timing_ms: BTreeMap<String, f64>,
}

/// One predicted record of an answer. On the wire it is the array
/// `[id, label, score, reported values...]`, in the answer's `columns` order.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputRow {
    /// The request's record id.
    pub id: String,
    /// The class name (`real` or `fake`).
    pub label: Cow<'static, str>,
    /// The SVM decision value; positive means class 1.
    pub score: f64,
    /// Reported lookup values (e.g. the issuer code), shared across the rows of a batch.
    pub reported: SmallVec<[Arc<str>; 2]>,
}

impl OutputRow {
    /// The reported value of an output column, given the answer's columns.
    pub fn reported_value(&self, columns: &[String], name: &str) -> Option<&str> {
        let i = columns.iter().position(|c| c == name)?.checked_sub(3)?;
        self.reported.get(i).map(|v| &**v)
    }
}

impl Serialize for OutputRow {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = serializer.serialize_seq(Some(3 + self.reported.len()))?;
        seq.serialize_element(&self.id)?;
        seq.serialize_element(&self.label)?;
        seq.serialize_element(&self.score)?;
        for v in &self.reported {
            seq.serialize_element(&**v)?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for OutputRow {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RowVisitor;
        impl<'de> serde::de::Visitor<'de> for RowVisitor {
            type Value = OutputRow;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an output row [id, label, score, reported values...]")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<OutputRow, A::Error> {
                use serde::de::Error;
                let id = seq
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(0, &self))?;
                let label: String = seq
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(1, &self))?;
                let score = seq
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(2, &self))?;
                let mut reported = SmallVec::new();
                while let Some(v) = seq.next_element::<String>()? {
                    reported.push(Arc::from(v));
                }
                Ok(OutputRow {
                    id,
                    label: label.into(),
                    score,
                    reported,
                })
            }
        }
        deserializer.deserialize_seq(RowVisitor)
    }
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

    /// How many values its records hold (what its decoded form costs, about 16 bytes each).
    pub fn cells(&self) -> usize {
        match self {
            InputBundle::Request(b) => b.rows.cells(),
            InputBundle::Seed(b) => b.features.iter().map(Vec::len).sum(),
        }
    }
}
