//! Provider data: deliveries of third-party provider documents loaded into MongoDB with their
//! history kept, recorded in a PostgreSQL ledger, and undone when a delivery was wrong. The
//! worker keeps reading the current documents exactly as before (one `$in` per batch); the
//! fields this module adds (`_version`, `_delivery`, `_content`, `_replaces`) are not projected.
//!
//! One file per job:
//! - [`source`]: where a delivery is (a file, an `s3://` object) and its rows as a stream;
//! - [`read`]: bytes to numbered rows (JSON lines or CSV, gzip by magic bytes), hashed;
//! - [`check`]: one row against the provider's shape in the spec, and its stored content;
//! - [`store`]: the current and history collections in MongoDB, written in batches;
//! - [`ledger`]: the `provider_deliveries` table and the per-provider lock;
//! - [`ingest`]: the two passes of one delivery; [`rollback`]: undoing one.

pub mod check;
pub mod ingest;
pub mod ledger;
pub mod read;
pub mod rollback;
pub mod source;
pub mod store;

pub use check::{ProviderShape, Refusal};
pub use ingest::{Ingest, IngestError, IngestOptions, IngestRequest, IngestSummary};
pub use ledger::{Counts, Delivery, Ledger, Status};
pub use read::Format;
pub use rollback::{Rollback, RollbackError, RollbackSummary};
pub use source::{DeliverySource, SourceClients};
pub use store::DocumentStore;

/// The stages a progress display shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// Pass 1: reading and checking every row.
    Check,
    /// Pass 2: writing the accepted rows.
    Write,
    /// Restoring a delivery's documents.
    Rollback,
}

/// Where an ingest or rollback reports how far it got (a progress bar, log lines, nothing).
pub trait Progress: Send + Sync {
    /// A pass starts; `total` rows when known.
    fn start(&self, pass: Pass, total: Option<u64>);
    /// `rows` more rows are done.
    fn advance(&self, rows: u64);
    /// The pass ended.
    fn finish(&self);
}

/// Reports nothing (tests, library callers).
#[derive(Debug, Clone, Copy, Default)]
pub struct Silent;

impl Progress for Silent {
    fn start(&self, _: Pass, _: Option<u64>) {}
    fn advance(&self, _: u64) {}
    fn finish(&self) {}
}
