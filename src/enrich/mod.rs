//! Enrich: reference values from PostgreSQL and provider documents from MongoDB.
//!
//! Each source sits behind a one-method seam and is asked once per batch with every key the
//! batch needs (`= ANY($1)`, `$in`), never once per record; the source splits them into chunks
//! of `chunk_keys` and keeps at most `concurrency` chunks in flight over all batches
//! ([`source::LookupLimits`]). A source that is down marks the
//! keys it was asked for unavailable (the PostgreSQL cache still answers what it holds), so
//! only the bundles that need it are held and retried. A source that answers with an error while it stays reachable is asked
//! again in halves until the keys at fault are found: their records get a per-record error and
//! the rest of the batch goes on. A key that is simply absent becomes a per-record error later,
//! in normalize.

pub mod cache;
pub mod enricher;
pub mod memory;
pub mod mongo;
pub mod postgres;
pub mod raw_bson;
pub mod source;

pub use enricher::Enricher;
pub use source::{
    DocumentSource, DocumentsByKey, Enrichment, FieldValue, ProviderDoc, ReferenceSource, Refused,
    SourceError, Unavailable,
};
