//! Provider data: deliveries of third-party provider documents loaded into MongoDB with their
//! history kept, recorded in a PostgreSQL ledger, and undone when a delivery was wrong. The
//! worker keeps reading the current documents exactly as before (one `$in` per batch); the
//! fields this module adds (`_version`, `_delivery`, `_content`, `_replaces`) are not projected.
//!
//! One file per job:
//! - [`source`]: where a delivery is (a file, an `s3://` object, an HTTP API) and its rows as a
//!   stream;
//! - [`api`]: an HTTP JSON API's pages walked and spooled to a file; [`request`]: one paced,
//!   timed, retried and recorded GET;
//! - [`read`]: bytes to numbered rows (JSON lines or CSV, gzip by magic bytes), hashed;
//! - [`check`]: one row against the provider's shape in the spec, and its stored content;
//! - [`store`]: the current and history collections in MongoDB, written in batches;
//! - [`ledger`]: the `provider_deliveries` table and the per-provider lock;
//! - [`ingest`]: the two passes of one delivery; [`rollback`]: undoing one;
//! - [`progress`]: where both report how far they got;
//! - [`report`]: each provider's quality numbers (coverage, agreement, freshness, API latency,
//!   serving), as tables, JSON and an HTML page.

pub mod api;
pub mod check;
pub mod ingest;
pub mod ledger;
pub mod progress;
pub mod read;
pub mod report;
pub mod request;
pub mod rollback;
pub mod source;
pub mod store;

pub use api::{FetchError, HttpApi, Paging};
pub use check::{ProviderShape, Refusal};
pub use ingest::{Ingest, IngestError, IngestOptions, IngestRequest, IngestSummary};
pub use ledger::{Counts, Delivery, Ledger, Status};
pub use progress::{Pass, Progress, Silent};
pub use read::Format;
pub use request::{RequestPolicy, RequestRecord};
pub use rollback::{Rollback, RollbackError, RollbackSummary};
pub use source::{DeliverySource, SourceClients};
pub use store::{DocumentStore, DEFAULT_BATCH_DOCS};
