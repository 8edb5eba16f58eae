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
    /// Dotted path -> value, for the requested paths present in the document, in its order (the
    /// path text is shared by every document of a batch).
    pub fields: SmallVec<[(Arc<str>, FieldValue); 2]>,
}

impl ProviderDoc {
    /// The value at a dotted path, if the document has it.
    pub fn field(&self, path: &str) -> Option<&FieldValue> {
        self.fields
            .iter()
            .find(|(p, _)| same_name(p.as_bytes(), path.as_bytes()))
            .map(|(_, v)| v)
    }

    /// Whether the document is `provider`'s.
    #[inline]
    pub fn is_from(&self, provider: &str) -> bool {
        same_name(self.provider.as_bytes(), provider.as_bytes())
    }
}

/// Whether two names (of providers, paths, BSON elements) are the same. Names of the same
/// length usually differ in their first byte (`aurum` and `lumen`): that is checked before the
/// call a slice comparison makes.
#[inline]
pub(crate) fn same_name(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.first() == b.first() && a == b
}

/// The provider documents found for a list of distinct keys, by the place of each key in the
/// list: every key's documents side by side in one vector, in the order they were found.
///
/// Built once per batch from what the source read, with no allocation or hashing per key:
/// a batch's document keys already have ids ([`crate::standardize::KeyTable`]), and the
/// documents of key id `k` are [`DocumentsByKey::of`]`(k)`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DocumentsByKey {
    /// Every document, grouped by key.
    docs: Vec<ProviderDoc>,
    /// Where each key's documents start in `docs`, and, last, where the last key's end.
    starts: Vec<u32>,
}

impl DocumentsByKey {
    /// Groups `found`, each document with the place of its key in a list of `keys` keys.
    /// A key's documents keep the order they come in. A place past the list's end is a
    /// source's bug; its document is dropped.
    pub fn group(keys: usize, found: Vec<(u32, ProviderDoc)>) -> Self {
        // A counting sort: how many documents each key has, where its first goes, then each
        // document moved once into its key's next place.
        let in_list = |k: u32| (k as usize) < keys;
        let mut starts = vec![0u32; keys + 1];
        for &(k, _) in found.iter().filter(|(k, _)| in_list(*k)) {
            starts[k as usize + 1] += 1;
        }
        for i in 1..starts.len() {
            starts[i] += starts[i - 1];
        }
        let mut next = starts.clone();
        let mut slots: Vec<Option<ProviderDoc>> = Vec::new();
        slots.resize_with(starts[keys] as usize, || None);
        for (k, doc) in found.into_iter().filter(|(k, _)| in_list(*k)) {
            let at = &mut next[k as usize];
            slots[*at as usize] = Some(doc);
            *at += 1;
        }
        Self {
            docs: slots.into_iter().flatten().collect(),
            starts,
        }
    }

    /// The documents of `keys` in a map by key (an in-memory source's answer).
    pub fn of_keys(keys: &[String], by_key: &HashMap<String, Vec<ProviderDoc>>) -> Self {
        let found = keys
            .iter()
            .zip(0..)
            .flat_map(|(key, place)| {
                let docs = by_key.get(key).map(Vec::as_slice).unwrap_or_default();
                docs.iter().map(move |doc| (place, doc.clone()))
            })
            .collect();
        Self::group(keys.len(), found)
    }

    /// The documents of the key at place `key` in the list asked (none for a place past it).
    pub fn of(&self, key: u32) -> &[ProviderDoc] {
        let key = key as usize;
        match (self.starts.get(key), self.starts.get(key + 1)) {
            (Some(&start), Some(&end)) => &self.docs[start as usize..end as usize],
            _ => &[],
        }
    }

    /// Each key that has documents, by its place in the list asked, with them.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &[ProviderDoc])> {
        (0..self.starts.len().saturating_sub(1) as u32)
            .map(|k| (k, self.of(k)))
            .filter(|(_, docs)| !docs.is_empty())
    }

    /// How many keys have documents.
    pub fn keys_found(&self) -> usize {
        self.iter().count()
    }

    /// How many documents there are, over every key.
    pub fn len(&self) -> usize {
        self.docs.len()
    }

    /// Whether no key has a document.
    pub fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }

    /// Every document with its key's place, `offset` added to it: to merge the answers of
    /// parts of a list asked one at a time.
    pub fn into_found(self, offset: u32) -> impl Iterator<Item = (u32, ProviderDoc)> {
        let starts = self.starts;
        let mut key = 0usize;
        self.docs.into_iter().enumerate().map(move |(i, doc)| {
            while starts[key + 1] as usize <= i {
                key += 1;
            }
            (offset + key as u32, doc)
        })
    }
}

/// Everything enrichment found for one batch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Enrichment {
    /// Per spec lookup (in spec order): key -> value.
    pub lookups: Vec<HashMap<String, String>>,
    /// Each document key's providers' documents, by the key's id in the batch's
    /// document-key table.
    pub documents: DocumentsByKey,
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
    /// The documents of the given distinct keys, by each key's place in `keys`, with only
    /// the given dotted paths read.
    fn fetch(
        &self,
        spec: &DocumentSpec,
        paths: &[String],
        keys: &[String],
    ) -> impl Future<Output = Result<DocumentsByKey, SourceError>> + Send;

    /// One cheap round trip that proves the source answers (readiness).
    fn ping(&self) -> impl Future<Output = Result<(), SourceError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(provider: &str, value: f64) -> ProviderDoc {
        ProviderDoc {
            provider: provider.into(),
            fields: smallvec::smallvec![("scan.kurtosis".into(), FieldValue::Number(value))],
        }
    }

    #[test]
    fn documents_are_grouped_by_key_place_keeping_the_order_they_came_in() {
        // Four keys; key 1 has none; documents come in out of key order, as chunks answer.
        let found = vec![
            (2, doc("lumen", 1.0)),
            (0, doc("aurum", 2.0)),
            (2, doc("aurum", 3.0)),
            (3, doc("lumen", 4.0)),
            (0, doc("lumen", 5.0)),
            (9, doc("stray", 6.0)),
        ];
        let by_key = DocumentsByKey::group(4, found);
        assert_eq!(by_key.of(0), [doc("aurum", 2.0), doc("lumen", 5.0)]);
        assert!(by_key.of(1).is_empty());
        assert_eq!(by_key.of(2), [doc("lumen", 1.0), doc("aurum", 3.0)]);
        assert_eq!(by_key.of(3), [doc("lumen", 4.0)]);
        // A place past the list: no documents, and the stray one was dropped.
        assert!(by_key.of(4).is_empty() && by_key.of(9).is_empty());
        assert_eq!((by_key.len(), by_key.keys_found()), (5, 3));
        let places: Vec<u32> = by_key.iter().map(|(k, _)| k).collect();
        assert_eq!(places, [0, 2, 3]);
    }

    #[test]
    fn parts_asked_apart_merge_into_what_the_whole_list_answers() {
        let keys: Vec<String> = (0..6).map(|i| format!("SN-{i}")).collect();
        let by_name: HashMap<String, Vec<ProviderDoc>> = [
            ("SN-0", vec![doc("aurum", 0.0)]),
            ("SN-2", vec![doc("lumen", 2.0), doc("aurum", 2.5)]),
            ("SN-5", vec![doc("lumen", 5.0)]),
        ]
        .into_iter()
        .map(|(k, d)| (k.to_owned(), d))
        .collect();
        let whole = DocumentsByKey::of_keys(&keys, &by_name);
        let (a, b) = keys.split_at(3);
        let mut found: Vec<(u32, ProviderDoc)> = Vec::new();
        found.extend(DocumentsByKey::of_keys(b, &by_name).into_found(3));
        found.extend(DocumentsByKey::of_keys(a, &by_name).into_found(0));
        assert_eq!(DocumentsByKey::group(keys.len(), found), whole);
        assert_eq!(whole.of(2), &by_name["SN-2"][..]);
        assert!(DocumentsByKey::default().of(0).is_empty());
    }
}
