//! The enrichment seams: what a batch asks of PostgreSQL (reference values) and MongoDB
//! (provider documents), the values they answer with, and how they fail.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use smallvec::SmallVec;

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
///
/// Read once per document of every batch, so it holds no allocation of its own in the usual
/// case: the provider's name and the paths are shared text, and up to two fields (what one
/// provider's document gives the banknote spec) are held inline.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderDoc {
    /// The provider's name.
    pub provider: Arc<str>,
    /// Dotted path -> value, for the requested paths present in the document (the path text
    /// is shared by every document of a batch).
    pub fields: SmallVec<[(Arc<str>, FieldValue); 2]>,
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
    /// Keys a source answered with an error for, while it answered the others.
    pub refused: Refused,
    /// Keys that could not be asked because their source was down.
    pub unavailable: Unavailable,
}

/// Keys a source could not be asked about because it was down (and, for PostgreSQL, the
/// reference cache did not hold them): their records are never answered as unknown; their
/// bundles are held and tried again until the source is back.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Unavailable {
    /// Per spec lookup (in spec order): keys neither PostgreSQL nor its cache answered.
    pub lookups: Vec<std::collections::HashSet<String>>,
    /// Document keys MongoDB was not asked about.
    pub documents: std::collections::HashSet<String>,
    /// Each source that was down, with what its client reported.
    pub outages: Vec<(&'static str, String)>,
}

impl Unavailable {
    /// Whether key `key` of lookup `lookup` could not be asked.
    pub fn lookup(&self, lookup: usize, key: &str) -> bool {
        self.lookups
            .get(lookup)
            .is_some_and(|keys| keys.contains(key))
    }

    /// What a down source reported, by its name (`postgres`, `mongo`).
    pub fn reason(&self, source: &str) -> &str {
        self.outages
            .iter()
            .find(|(name, _)| *name == source)
            .map_or("unavailable", |(_, reason)| reason.as_str())
    }
}

/// Keys a source refused: it stayed reachable and answered every other key of the batch, so
/// the key itself is at fault (its records get a per-record error; the batch goes on).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Refused {
    /// Per spec lookup (in spec order): key -> what PostgreSQL answered.
    pub lookups: Vec<HashMap<String, String>>,
    /// Document key -> what MongoDB answered.
    pub documents: HashMap<String, String>,
}

impl Refused {
    /// What the source answered for key `key` of lookup `lookup`, if it refused it.
    pub fn lookup(&self, lookup: usize, key: &str) -> Option<&str> {
        self.lookups.get(lookup)?.get(key).map(String::as_str)
    }
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
    /// The source did not answer within its operation timeout.
    #[error("{which} did not answer within {after:?}")]
    TimedOut {
        /// `postgres` or `mongo`.
        which: &'static str,
        /// The operation timeout.
        after: std::time::Duration,
    },
}

/// How long one lookup may take before the source counts as unavailable, unless configured.
pub const DEFAULT_SOURCE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The most keys one lookup statement carries, unless configured.
///
/// Chosen from the lookup curve in BENCHMARKS.md ("Lookups sized by measurement",
/// `ml-pipeline-tools lookup-curve`): the MongoDB-wire server's CPU per key is flat from 100 to
/// 1 000 keys per `$in` (about 25 µs) and rises by two thirds at 2 000 (about 41-46 µs), more
/// so with queries in flight beside it; PostgreSQL answers a statement of 1 000 keys or more
/// only after a fixed wait of about 45 ms, against 1-2 ms below. 500 keeps both sources at
/// their cheapest, and a batch's PostgreSQL keys (a few scanners and aliases) in one statement.
pub const DEFAULT_CHUNK_KEYS: usize = 500;

/// How many lookups one source runs at once, over every batch in flight, unless configured.
///
/// From the same curve: with 500 keys per query, 4 in flight cost the MongoDB-wire server no
/// more per key than 1 (about 25 µs) and answered the most keys per second; 4 is also the
/// worker's default of batches processed at once, so a batch's chunks of a burst's batches
/// wait for each other only beyond that.
pub const DEFAULT_LOOKUP_CONCURRENCY: usize = 4;

/// How much one lookup may carry and take, for either source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LookupLimits {
    /// Past this, the source counts as unavailable (an outage).
    pub timeout: std::time::Duration,
    /// The most keys in one statement or `$in`; more take one round trip per chunk.
    pub chunk_keys: usize,
    /// The most statements or `find`s one source has in flight at once, whichever batches they
    /// belong to: the chunks of a batch, and the batches processed concurrently, wait their turn
    /// beyond it.
    pub concurrency: usize,
}

impl Default for LookupLimits {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_SOURCE_TIMEOUT,
            chunk_keys: DEFAULT_CHUNK_KEYS,
            concurrency: DEFAULT_LOOKUP_CONCURRENCY,
        }
    }
}

/// The lookups a source lets run at once: a semaphore shared by every clone of the source.
#[derive(Debug, Clone)]
pub struct LookupGate(Arc<tokio::sync::Semaphore>);

impl LookupGate {
    /// A gate that lets `concurrency` lookups through at once (at least one).
    pub fn new(concurrency: usize) -> Self {
        Self(Arc::new(tokio::sync::Semaphore::new(concurrency.max(1))))
    }

    /// Waits for a turn; the lookup holds the permit until it has read its answer.
    pub async fn turn(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        // The semaphore is never closed, so this only waits.
        self.0.acquire().await.ok()
    }
}

/// Runs one source call within `after`; past it, the source counts as unavailable (an outage).
pub async fn within<T>(
    source: &'static str,
    after: std::time::Duration,
    call: impl std::future::Future<Output = Result<T, SourceError>>,
) -> Result<T, SourceError> {
    tokio::time::timeout(after, call)
        .await
        .unwrap_or(Err(SourceError::TimedOut {
            which: source,
            after,
        }))
}

impl SourceError {
    /// The source that failed: `postgres` or `mongo`.
    pub fn source_name(&self) -> &'static str {
        match self {
            SourceError::Postgres(_) => "postgres",
            SourceError::Mongo(_) => "mongo",
            SourceError::TimedOut { which, .. } => which,
        }
    }

    /// Whether the source could not be reached, did not answer in time, or said it is
    /// unavailable: retrying later can help. Any other error is an answer about what was asked
    /// (SQLSTATE class 22 data exceptions, a document over the size limit...), which the worker
    /// narrows down to the keys at fault instead of holding the batch back.
    pub fn is_outage(&self) -> bool {
        match self {
            SourceError::Postgres(e) => postgres_outage(e),
            SourceError::Mongo(e) => mongo_outage(e),
            SourceError::TimedOut { .. } => true,
        }
    }
}

fn postgres_outage(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        // Connection exceptions, insufficient resources, operator intervention (a shutdown,
        // a cancelled query), system errors: the server, not the data.
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| ["08", "53", "57", "58"].iter().any(|c| code.starts_with(c))),
        _ => false,
    }
}

fn mongo_outage(e: &mongodb::error::Error) -> bool {
    use mongodb::error::ErrorKind;
    match e.kind.as_ref() {
        ErrorKind::Io(_)
        | ErrorKind::ConnectionPoolCleared { .. }
        | ErrorKind::ServerSelection { .. }
        | ErrorKind::DnsResolve { .. }
        | ErrorKind::Shutdown => true,
        // Shutting down, stepped down, not primary, network timeouts, interrupted: the
        // server's state, not the data.
        ErrorKind::Command(c) => matches!(
            c.code,
            6 | 7 | 89 | 91 | 189 | 9001 | 10107 | 11600 | 11602 | 13435 | 13436
        ),
        _ => false,
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

    /// What is known of the keys without asking the source (a cache's entries, however old),
    /// per lookup: key -> value, `None` when the key is known to have no row. Used while the
    /// source is down, to answer every record that needs nothing else. Default: nothing.
    fn known(
        &self,
        lookups: &[LookupSpec],
        _keys: &[&[String]],
    ) -> Vec<HashMap<String, Option<String>>> {
        vec![HashMap::new(); lookups.len()]
    }
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
