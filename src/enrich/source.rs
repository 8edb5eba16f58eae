//! The enrichment seams: what a batch asks of PostgreSQL (reference values) and MongoDB
//! (provider documents), the values they answer with, and how they fail.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use crate::spec::{DocumentSpec, LookupSpec};

/// A value found in a provider document field.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    /// A finite number.
    Number(f64),
    /// Something else, described for the error message.
    NotANumber(String),
}

/// One provider's document for one key, reduced to the fields the spec reads.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderDoc {
    /// The provider's name.
    pub provider: String,
    /// Dotted path -> value, for the requested paths present in the document (the path text
    /// is shared by every document of a batch).
    pub fields: Vec<(Arc<str>, FieldValue)>,
}

impl ProviderDoc {
    /// The value at a dotted path, if the document has it.
    pub fn field(&self, path: &str) -> Option<&FieldValue> {
        self.fields
            .iter()
            .find(|(p, _)| &**p == path)
            .map(|(_, v)| v)
    }
}

/// Everything enrichment found for one batch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Enrichment {
    /// Per spec lookup (in spec order): key -> value.
    pub lookups: Vec<HashMap<String, String>>,
    /// Document key -> its providers' documents.
    pub documents: HashMap<String, Vec<ProviderDoc>>,
}

/// A source that could not answer; the batch is retried later, no record is failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// PostgreSQL failed or is unreachable.
    #[error("PostgreSQL reference lookup failed: {0}")]
    Postgres(#[from] sqlx::Error),
    /// MongoDB failed or is unreachable.
    #[error("MongoDB provider document lookup failed: {0}")]
    Mongo(#[from] mongodb::error::Error),
}

impl SourceError {
    /// The source that failed: `postgres` or `mongo`.
    pub fn source_name(&self) -> &'static str {
        match self {
            SourceError::Postgres(_) => "postgres",
            SourceError::Mongo(_) => "mongo",
        }
    }
}

/// PostgreSQL reference tables, asked once per batch.
pub trait ReferenceSource: Send + Sync {
    /// For each lookup, the values of the given keys; `keys[i]` belongs to `lookups[i]`.
    fn fetch(
        &self,
        lookups: &[LookupSpec],
        keys: &[&[String]],
    ) -> impl Future<Output = Result<Vec<HashMap<String, String>>, SourceError>> + Send;

    /// One cheap round trip that proves the source answers (readiness).
    fn ping(&self) -> impl Future<Output = Result<(), SourceError>> + Send;
}

/// Provider documents, asked once per batch.
pub trait DocumentSource: Send + Sync {
    /// The documents of the given keys, with only the given dotted paths read.
    fn fetch(
        &self,
        spec: &DocumentSpec,
        paths: &[String],
        keys: &[String],
    ) -> impl Future<Output = Result<HashMap<String, Vec<ProviderDoc>>, SourceError>> + Send;

    /// One cheap round trip that proves the source answers (readiness).
    fn ping(&self) -> impl Future<Output = Result<(), SourceError>> + Send;
}
