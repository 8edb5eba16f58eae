//! How far an ingest or rollback got, for a progress bar, log lines, or nothing.

/// The stages a progress display shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// Before pass 1, for an HTTP source: fetching its pages into the spool file.
    Fetch,
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
