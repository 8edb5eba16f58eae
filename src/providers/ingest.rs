//! One delivery loaded for one provider, in two streaming passes over its source.
//!
//! - An HTTP API source is first fetched whole into a spool file ([`super::api`]), and both
//!   passes read the spool. A page that cannot be had or is not a page of documents fails the
//!   delivery here, with nothing written. Its requests are recorded under the delivery either way.
//! - Pass 1 reads everything and writes nothing: the content hash, the rows, every row's
//!   check, duplicate keys (kept as 64-bit hashes, not strings), the refused rows (all counted,
//!   the first few kept with their reason). A delivery that cannot be read whole (a truncated
//!   gzip stream, wrong CSV columns, an I/O error) fails here, with nothing written.
//! - Between the passes the ledger decides: content already delivered is `unchanged`; a
//!   delivery of this content that crashed or failed while writing is resumed under its id.
//! - Pass 2 reads again and writes the accepted rows in batches: per batch one query for the
//!   current documents, at most one for history version numbers, then the replaced versions
//!   into history and the new versions into the current collection, in that order, so a crash
//!   at any instant loses no version. A document whose content did not change, or that this
//!   delivery already wrote (a resumed run), is not written again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use mongodb::bson::{doc, Bson, Document};

use super::api::{fetch, FetchError, Spool};
use super::check::{
    check_row, stored_content_hash, Accepted, ProviderShape, Refusal, UnknownProvider,
};
use super::ledger::{Counts, Kind, Ledger, NewDelivery, Outcome, RefusedRow, Status};
use super::progress::{Pass, Progress};
use super::read::{ContentDigest, Format, ReadError};
use super::request::RequestRecord;
use super::source::{DeliverySource, SourceClients};
use super::store::{version_of, DocumentStore, Shelf, StoreError};
use crate::spec::PipelineSpec;

/// One delivery to load.
#[derive(Debug, Clone)]
pub struct IngestRequest {
    /// The provider, as named in the spec.
    pub provider: String,
    /// Where the rows are.
    pub source: DeliverySource,
    /// The rows' format; None: from the source's name.
    pub format: Option<Format>,
    /// The delivery's id; None: `<provider>-<UTC time>-<random>`.
    pub delivery_id: Option<String>,
}

/// How to load.
#[derive(Debug, Clone, Copy)]
pub struct IngestOptions {
    /// Documents per batch (one round trip per collection per batch).
    pub batch_docs: usize,
    /// Refused rows kept with their reason for the report and the ledger (all are counted).
    pub refused_sample: usize,
    /// Stop pass 2 after this many batches, leaving the delivery `running`, as a crash would:
    /// for tests of resumption.
    pub stop_after_batches: Option<usize>,
}

impl Default for IngestOptions {
    fn default() -> Self {
        Self {
            batch_docs: 1000,
            refused_sample: 100,
            stop_after_batches: None,
        }
    }
}

/// What an ingest did.
#[derive(Debug, Clone, PartialEq)]
pub struct IngestSummary {
    /// The delivery's id in the ledger.
    pub delivery_id: String,
    /// `succeeded`, `unchanged`, or `running` when stopped by [`IngestOptions::stop_after_batches`].
    pub status: Status,
    /// For an unchanged delivery: the earlier delivery of the same content.
    pub same_as: Option<String>,
    /// True when an unfinished delivery of the same content was completed.
    pub resumed: bool,
    /// `sha256:<hex>` of the source's bytes.
    pub content_hash: String,
    /// Bytes read per pass.
    pub bytes: u64,
    /// The counts.
    pub counts: Counts,
    /// The first refused rows, by line.
    pub refused_sample: Vec<RefusedRow>,
    /// Every refused row counted by the kind of its reason ([`Refusal::kind`]).
    pub refused_by_kind: BTreeMap<&'static str, u64>,
    /// Wall time of both passes.
    pub elapsed: Duration,
    /// For an HTTP source: every request made, retries included (also in `provider_requests`).
    pub requests: Vec<RequestRecord>,
}

impl IngestSummary {
    /// Accepted rows per second of wall time, both passes included.
    pub fn documents_per_second(&self) -> f64 {
        self.counts.accepted as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Why an ingest did not finish; every variant after the lock says which delivery it was,
/// and its ledger row says `failed` with the same words.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The provider is not in the spec.
    #[error(transparent)]
    UnknownProvider(#[from] UnknownProvider),
    /// Another ingest or rollback of this provider is running.
    #[error(
        "another ingest or rollback of provider {provider} is running; try again when it ends"
    )]
    Busy { provider: String },
    /// The delivery id given names another delivery.
    #[error("delivery id {delivery_id} is already used by another delivery")]
    IdTaken { delivery_id: String },
    /// An HTTP source's pages could not be fetched whole: nothing was written.
    #[error("delivery {delivery_id} failed, nothing was written: {error}")]
    Fetch {
        delivery_id: String,
        #[source]
        error: FetchError,
    },
    /// The source could not be read whole: nothing was written.
    #[error("delivery {delivery_id} failed, nothing was written: {error}")]
    Read {
        delivery_id: String,
        #[source]
        error: ReadError,
    },
    /// MongoDB failed while writing: run the same delivery again to resume it.
    #[error("delivery {delivery_id} failed while writing (run it again to resume): {error}")]
    Store {
        delivery_id: String,
        #[source]
        error: StoreError,
    },
    /// The ledger could not be read or written.
    #[error("the deliveries ledger (PostgreSQL): {0}")]
    Ledger(#[from] sqlx::Error),
}

/// The systems an ingest uses.
pub struct Ingest<'a> {
    /// The pipeline spec giving providers and their shapes.
    pub spec: &'a PipelineSpec,
    /// The MongoDB documents.
    pub store: &'a DocumentStore,
    /// The PostgreSQL ledger.
    pub ledger: &'a Ledger,
    /// Clients for the sources.
    pub clients: &'a SourceClients,
    /// Where progress goes.
    pub progress: &'a dyn Progress,
}

impl Ingest<'_> {
    /// Loads one delivery; see the module doc for the order of things.
    pub async fn run(
        &self,
        request: &IngestRequest,
        options: IngestOptions,
    ) -> Result<IngestSummary, IngestError> {
        let started = Instant::now();
        let started_at = Utc::now();
        let provisional = request
            .delivery_id
            .clone()
            .unwrap_or_else(|| new_delivery_id(&request.provider, started_at));
        let shape = match ProviderShape::from_spec(self.spec, &request.provider) {
            Ok(shape) => shape,
            Err(unknown) => {
                self.failed_early(request, &provisional, started_at, &unknown.to_string())
                    .await?;
                return Err(unknown.into());
            }
        };
        let Some(format) = request.format.or_else(|| request.source.format_from_name()) else {
            let error = ReadError::UnknownFormat {
                source_name: request.source.to_string(),
            };
            self.failed_early(request, &provisional, started_at, &error.to_string())
                .await?;
            return Err(IngestError::Read {
                delivery_id: provisional,
                error,
            });
        };
        let Some(lock) = self.ledger.lock_provider(&shape.provider).await? else {
            return Err(IngestError::Busy {
                provider: shape.provider,
            });
        };
        let early = Early {
            delivery_id: &provisional,
            started_at,
        };
        let result = self.locked(request, format, &shape, options, early).await;
        lock.release().await;
        let mut summary = result?;
        summary.elapsed = started.elapsed();
        Ok(summary)
    }

    /// Under the provider's lock: an HTTP source fetched into its spool, pass 1, then the rest;
    /// an HTTP source's requests recorded under the delivery however it ended.
    async fn locked(
        &self,
        request: &IngestRequest,
        format: Format,
        shape: &ProviderShape,
        options: IngestOptions,
        early: Early<'_>,
    ) -> Result<IngestSummary, IngestError> {
        // An HTTP source is read from its spool, which lives until both passes are done.
        let (spooled, requests) = match &request.source {
            DeliverySource::Http(api) => {
                self.progress.start(Pass::Fetch, None);
                let fetched = fetch(api, |documents| self.progress.advance(documents)).await;
                self.progress.finish();
                match fetched.result {
                    Ok(spool) => (
                        Some((spooled_request(request, &spool), spool)),
                        fetched.requests,
                    ),
                    Err(error) => {
                        let id = early.delivery_id;
                        self.failed_early(request, id, early.started_at, &error.to_string())
                            .await?;
                        self.ledger
                            .record_requests(id, &shape.provider, &fetched.requests)
                            .await?;
                        return Err(IngestError::Fetch {
                            delivery_id: id.to_owned(),
                            error,
                        });
                    }
                }
            }
            _ => (None, Vec::new()),
        };
        let (request, format) = match &spooled {
            Some((spooled, _)) => (spooled, Format::Jsonl),
            None => (request, format),
        };
        let result = match scan(self, request, format, shape, options).await {
            Ok(scan) => {
                self.write(request, format, shape, options, scan, early.started_at)
                    .await
            }
            Err(error) => {
                let id = early.delivery_id;
                self.failed_early(request, id, early.started_at, &error.to_string())
                    .await?;
                Err(IngestError::Read {
                    delivery_id: id.to_owned(),
                    error,
                })
            }
        };
        if let Ok(IngestSummary { delivery_id, .. })
        | Err(IngestError::Read { delivery_id, .. } | IngestError::Store { delivery_id, .. }) =
            &result
        {
            self.ledger
                .record_requests(delivery_id, &shape.provider, &requests)
                .await?;
        }
        result.map(|summary| IngestSummary {
            requests,
            ..summary
        })
    }

    /// The ledger row of a delivery that failed before its first pass ended: nothing written.
    async fn failed_early(
        &self,
        request: &IngestRequest,
        delivery_id: &str,
        started_at: DateTime<Utc>,
        error: &str,
    ) -> Result<(), IngestError> {
        let source = request.source.to_string();
        let row = NewDelivery {
            delivery_id,
            provider: &request.provider,
            kind: Kind::Ingest,
            source: &source,
            content_hash: None,
            status: Status::Failed,
            started_at,
            rolls_back: None,
        };
        self.ledger.insert(&row).await?;
        let outcome = Outcome {
            status: Status::Failed,
            content_hash: None,
            counts: Counts::default(),
            refused_sample: &[],
            error: Some(error),
        };
        self.ledger.finish(delivery_id, &outcome).await?;
        Ok(())
    }

    /// Everything after pass 1: the ledger's decision, then pass 2.
    async fn write(
        &self,
        request: &IngestRequest,
        format: Format,
        shape: &ProviderShape,
        options: IngestOptions,
        scan: Scan,
        started_at: DateTime<Utc>,
    ) -> Result<IngestSummary, IngestError> {
        let hash = scan.digest.hash.clone();
        let mut summary = IngestSummary {
            delivery_id: String::new(),
            status: Status::Running,
            same_as: None,
            resumed: false,
            content_hash: hash.clone(),
            bytes: scan.digest.bytes,
            counts: scan.counts,
            refused_sample: scan.sample.clone(),
            refused_by_kind: scan.by_kind.clone(),
            elapsed: Duration::ZERO,
            requests: Vec::new(),
        };
        let source_name = request.source.to_string();
        if let Some(earlier) = self.ledger.succeeded_with(&shape.provider, &hash).await? {
            summary.status = Status::Unchanged;
            summary.same_as = Some(earlier.delivery_id.clone());
            summary.counts.unchanged = summary.counts.accepted;
            summary.delivery_id = match &request.delivery_id {
                Some(id) if *id == earlier.delivery_id => earlier.delivery_id,
                requested => {
                    let id = requested
                        .clone()
                        .unwrap_or_else(|| new_delivery_id(&shape.provider, started_at));
                    self.insert(
                        &id,
                        shape,
                        &source_name,
                        &hash,
                        Status::Unchanged,
                        started_at,
                    )
                    .await?;
                    self.ledger.finish(&id, &summary.outcome(None)).await?;
                    id
                }
            };
            return Ok(summary);
        }
        if let Some(unfinished) = self.ledger.unfinished_with(&shape.provider, &hash).await? {
            summary.delivery_id = unfinished.delivery_id;
            summary.resumed = true;
            self.ledger.resume(&summary.delivery_id).await?;
        } else {
            summary.delivery_id = request
                .delivery_id
                .clone()
                .unwrap_or_else(|| new_delivery_id(&shape.provider, started_at));
            self.insert(
                &summary.delivery_id,
                shape,
                &source_name,
                &hash,
                Status::Running,
                started_at,
            )
            .await?;
        }
        // The refused rows are known before anything is written: a crash leaves them recorded.
        self.ledger
            .finish(&summary.delivery_id, &summary.outcome(None))
            .await?;
        let written = self
            .pass_two(request, format, shape, options, &scan, &summary.delivery_id)
            .await;
        match written {
            Ok((counts, finished)) => {
                summary.counts = counts;
                summary.status = if finished {
                    Status::Succeeded
                } else {
                    Status::Running
                };
                self.ledger
                    .finish(&summary.delivery_id, &summary.outcome(None))
                    .await?;
                Ok(summary)
            }
            Err((counts, error)) => {
                summary.counts = counts;
                summary.status = Status::Failed;
                let error = match error {
                    PassTwoError::Read(error) => IngestError::Read {
                        delivery_id: summary.delivery_id.clone(),
                        error,
                    },
                    PassTwoError::Store(error) => IngestError::Store {
                        delivery_id: summary.delivery_id.clone(),
                        error,
                    },
                };
                let text = error.to_string();
                self.ledger
                    .finish(&summary.delivery_id, &summary.outcome(Some(&text)))
                    .await?;
                Err(error)
            }
        }
    }

    async fn insert(
        &self,
        delivery_id: &str,
        shape: &ProviderShape,
        source: &str,
        hash: &str,
        status: Status,
        started_at: DateTime<Utc>,
    ) -> Result<(), IngestError> {
        let row = NewDelivery {
            delivery_id,
            provider: &shape.provider,
            kind: Kind::Ingest,
            source,
            content_hash: Some(hash),
            status,
            started_at,
            rolls_back: None,
        };
        self.ledger.insert(&row).await.map_err(|e| match &e {
            sqlx::Error::Database(db) if db.is_unique_violation() => IngestError::IdTaken {
                delivery_id: delivery_id.to_owned(),
            },
            _ => IngestError::Ledger(e),
        })
    }

    /// Pass 2: the accepted rows written in batches. Returns the counts and whether the
    /// source was read to its end (false when stopped by the test hook).
    async fn pass_two(
        &self,
        request: &IngestRequest,
        format: Format,
        shape: &ProviderShape,
        options: IngestOptions,
        scan: &Scan,
        delivery_id: &str,
    ) -> Result<(Counts, bool), (Counts, PassTwoError)> {
        let mut counts = Counts {
            unchanged: 0,
            updated: 0,
            inserted: 0,
            ..scan.counts
        };
        let fail = |counts: Counts| move |e: PassTwoError| (counts, e);
        let mut rows = request
            .source
            .rows(self.clients, format, shape)
            .await
            .map_err(|e| fail(counts)(PassTwoError::Read(e)))?;
        self.progress.start(Pass::Write, Some(scan.counts.rows));
        let mut batch = Vec::with_capacity(options.batch_docs);
        let mut batches = 0;
        let mut read = 0;
        while let Some(row) = rows.next().await {
            read += 1;
            let Ok(accepted) = row.value.and_then(|v| check_row(shape, v)) else {
                continue;
            };
            if scan.duplicates.contains(&key_hash(&accepted.key)) {
                continue;
            }
            batch.push(accepted);
            if batch.len() >= options.batch_docs.max(1) {
                let done = std::mem::take(&mut batch);
                self.apply(shape, delivery_id, done, &mut counts)
                    .await
                    .map_err(|e| fail(counts)(PassTwoError::Store(e)))?;
                self.progress.advance(read);
                read = 0;
                batches += 1;
                if options.stop_after_batches == Some(batches) {
                    self.progress.finish();
                    return Ok((counts, false));
                }
            }
        }
        self.apply(shape, delivery_id, batch, &mut counts)
            .await
            .map_err(|e| fail(counts)(PassTwoError::Store(e)))?;
        self.progress.advance(read);
        self.progress.finish();
        let digest = rows
            .finish()
            .await
            .map_err(|e| fail(counts)(PassTwoError::Read(e)))?;
        if digest != scan.digest {
            let changed = ReadError::Changed {
                source_name: request.source.to_string(),
                first: scan.digest.hash.clone(),
                second: digest.hash,
            };
            return Err((counts, PassTwoError::Read(changed)));
        }
        Ok((counts, true))
    }

    /// One batch: read what is there, plan, write history, then current.
    async fn apply(
        &self,
        shape: &ProviderShape,
        delivery_id: &str,
        batch: Vec<Accepted>,
        counts: &mut Counts,
    ) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = batch.iter().map(|a| shape.document_id(&a.key)).collect();
        let current = self.store.by_ids(Shelf::Current, &ids).await?;
        let new_keys: Vec<String> = batch
            .iter()
            .filter(|a| !current.contains_key(&shape.document_id(&a.key)))
            .map(|a| a.key.clone())
            .collect();
        let highest = self
            .store
            .highest_history_versions(&shape.provider, &new_keys)
            .await?;
        let plan = plan_batch(shape, delivery_id, Utc::now(), batch, &current, &highest);
        self.store.put(Shelf::History, plan.history).await?;
        self.store.put(Shelf::Current, plan.current).await?;
        counts.unchanged += plan.unchanged;
        counts.updated += plan.updated;
        counts.inserted += plan.inserted;
        Ok(())
    }
}

impl IngestSummary {
    fn outcome<'a>(&'a self, error: Option<&'a str>) -> Outcome<'a> {
        Outcome {
            status: self.status,
            content_hash: Some(&self.content_hash),
            counts: self.counts,
            refused_sample: &self.refused_sample,
            error,
        }
    }
}

enum PassTwoError {
    Read(ReadError),
    Store(StoreError),
}

/// The delivery id and start time a delivery that fails before its first pass ends is
/// recorded under.
#[derive(Debug, Clone, Copy)]
struct Early<'a> {
    delivery_id: &'a str,
    started_at: DateTime<Utc>,
}

/// What pass 1 found.
#[derive(Debug, Clone)]
struct Scan {
    digest: ContentDigest,
    /// rows, accepted and refused.
    counts: Counts,
    /// The first refused rows, by line.
    sample: Vec<RefusedRow>,
    /// Every refused row counted by the kind of its reason.
    by_kind: BTreeMap<&'static str, u64>,
    /// Hashes of the keys that appear more than once (every occurrence is refused).
    duplicates: HashSet<u64>,
}

/// Pass 1: read everything, check everything, write nothing.
async fn scan(
    ingest: &Ingest<'_>,
    request: &IngestRequest,
    format: Format,
    shape: &ProviderShape,
    options: IngestOptions,
) -> Result<Scan, ReadError> {
    let mut rows = request.source.rows(ingest.clients, format, shape).await?;
    ingest.progress.start(Pass::Check, None);
    let mut counts = Counts::default();
    let mut sample = Vec::new();
    let mut by_kind = BTreeMap::new();
    let mut refuse = |counts: &mut Counts, line: u64, reason: &Refusal| {
        counts.refused += 1;
        *by_kind.entry(reason.kind()).or_insert(0) += 1;
        if sample.len() < options.refused_sample {
            sample.push(RefusedRow {
                line,
                reason: reason.to_string(),
            });
        }
    };
    // Key hash -> the line it was first seen on. 16 bytes per key, not the key itself.
    let mut first_lines: HashMap<u64, u64> = HashMap::new();
    let mut duplicates = HashSet::new();
    let mut since_progress = 0;
    while let Some(row) = rows.next().await {
        counts.rows += 1;
        since_progress += 1;
        if since_progress == 10_000 {
            ingest.progress.advance(since_progress);
            since_progress = 0;
        }
        let accepted = match row.value.and_then(|v| check_row(shape, v)) {
            Ok(accepted) => accepted,
            Err(refusal) => {
                refuse(&mut counts, row.line, &refusal);
                continue;
            }
        };
        let hash = key_hash(&accepted.key);
        match first_lines.get(&hash) {
            None => {
                first_lines.insert(hash, row.line);
            }
            Some(&first) => {
                let twice = |other_line| Refusal::DuplicateKey {
                    key: accepted.key.clone(),
                    other_line,
                };
                if duplicates.insert(hash) {
                    // The first occurrence was counted as accepted: it is refused too.
                    refuse(&mut counts, first, &twice(row.line));
                }
                refuse(&mut counts, row.line, &twice(first));
            }
        }
    }
    ingest.progress.advance(since_progress);
    ingest.progress.finish();
    let digest = rows.finish().await?;
    counts.accepted = counts.rows - counts.refused;
    sample.sort_by_key(|r| r.line);
    Ok(Scan {
        digest,
        counts,
        sample,
        by_kind,
        duplicates,
    })
}

/// The request that reads an HTTP source's spool (named by the API's URL); the spool must
/// outlive it.
fn spooled_request(request: &IngestRequest, spool: &Spool) -> IngestRequest {
    IngestRequest {
        source: DeliverySource::Spooled {
            origin: request.source.to_string(),
            path: spool.path().to_owned(),
        },
        format: Some(Format::Jsonl),
        ..request.clone()
    }
}

/// A key's 64-bit hash (SipHash with fixed keys: the same in both passes). Two different keys
/// with the same hash would both be refused as duplicates: about one chance in 10^9 for a
/// delivery of 200 000 keys.
fn key_hash(key: &str) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    key.hash(&mut hasher);
    hasher.finish()
}

/// A new delivery id: `<provider>-<UTC time>-<6 random hex digits>`.
pub fn new_delivery_id(provider: &str, at: DateTime<Utc>) -> String {
    let random = &uuid::Uuid::new_v4().simple().to_string()[..6];
    format!("{provider}-{}-{random}", at.format("%Y%m%dT%H%M%SZ"))
}

/// The writes of one batch, decided from what the store holds.
#[derive(Debug, Default, PartialEq)]
pub struct BatchPlan {
    /// Replaced versions, to be written to history first.
    pub history: Vec<Document>,
    /// New current versions.
    pub current: Vec<Document>,
    /// Rows equal to their current document.
    pub unchanged: u64,
    /// Rows that replace a current document (including ones this delivery already replaced).
    pub updated: u64,
    /// Rows for keys with no current document (including ones this delivery already inserted).
    pub inserted: u64,
}

/// Decides each accepted row's fate against the current documents (by `_id`) and the highest
/// history version of keys without one.
pub fn plan_batch(
    shape: &ProviderShape,
    delivery_id: &str,
    now: DateTime<Utc>,
    batch: Vec<Accepted>,
    current: &HashMap<String, Document>,
    highest_history: &HashMap<String, i64>,
) -> BatchPlan {
    let mut plan = BatchPlan::default();
    for accepted in batch {
        let id = shape.document_id(&accepted.key);
        let Some(existing) = current.get(&id) else {
            let version = highest_history.get(&accepted.key).map_or(1, |v| v + 1);
            plan.current
                .push(stored(&id, accepted, version, delivery_id, None));
            plan.inserted += 1;
            continue;
        };
        if existing.get_str("_delivery") == Ok(delivery_id) {
            // Written by this delivery before a crash: count it as it was counted then.
            if existing.contains_key("_replaces") {
                plan.updated += 1;
            } else {
                plan.inserted += 1;
            }
            continue;
        }
        if stored_content_hash(existing) == accepted.content_hash {
            plan.unchanged += 1;
            continue;
        }
        let version = version_of(existing).unwrap_or(1);
        plan.history.push(archived(
            shape,
            &accepted.key,
            existing,
            version,
            delivery_id,
            now,
        ));
        plan.current.push(stored(
            &id,
            accepted,
            version + 1,
            delivery_id,
            Some(version),
        ));
        plan.updated += 1;
    }
    plan
}

/// A current document as stored: `_id` first, the content, then the store's fields.
pub(super) fn stored(
    id: &str,
    accepted: Accepted,
    version: i64,
    delivery_id: &str,
    replaces: Option<i64>,
) -> Document {
    let mut doc = doc! {"_id": id};
    doc.extend(accepted.content);
    doc.insert("_version", version);
    doc.insert("_delivery", delivery_id);
    doc.insert("_content", accepted.content_hash);
    if let Some(previous) = replaces {
        doc.insert("_replaces", previous);
    }
    doc
}

/// A replaced version as kept in history: `_id` `provider:key:version`, everything it had,
/// the content hash made explicit, and who replaced it when.
pub(super) fn archived(
    shape: &ProviderShape,
    key: &str,
    existing: &Document,
    version: i64,
    replaced_by: &str,
    now: DateTime<Utc>,
) -> Document {
    let mut doc = doc! {"_id": format!("{}:{version}", shape.document_id(key))};
    for (k, v) in existing {
        if k != "_id" {
            doc.insert(k.clone(), v.clone());
        }
    }
    doc.insert("_version", version);
    doc.insert("_content", stored_content_hash(existing));
    doc.insert("_replaced_by", replaced_by);
    doc.insert(
        "_replaced_at",
        Bson::DateTime(mongodb::bson::DateTime::from_millis(now.timestamp_millis())),
    );
    doc
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn shape() -> ProviderShape {
        ProviderShape::from_spec(&PipelineSpec::banknote(), "aurum").unwrap()
    }

    fn row(key: &str, kurtosis: f64) -> Accepted {
        check_row(
            &shape(),
            json!({"note_id": key, "scan": {"kurtosis": kurtosis, "entropy": 0.5}}),
        )
        .unwrap()
    }

    #[test]
    fn a_batch_inserts_updates_and_skips_by_content() {
        let now = Utc::now();
        let first = plan_batch(
            &shape(),
            "d1",
            now,
            vec![row("SN-1", 1.0), row("SN-2", 2.0)],
            &HashMap::new(),
            &HashMap::from([("SN-2".to_owned(), 4)]),
        );
        assert_eq!((first.inserted, first.updated, first.unchanged), (2, 0, 0));
        assert!(first.history.is_empty());
        assert_eq!(first.current[0].get_i64("_version").unwrap(), 1);
        assert_eq!(
            first.current[1].get_i64("_version").unwrap(),
            5,
            "a key inserted again continues its history's numbering"
        );
        let current: HashMap<String, Document> = first
            .current
            .iter()
            .map(|d| (d.get_str("_id").unwrap().to_owned(), d.clone()))
            .collect();

        let second = plan_batch(
            &shape(),
            "d2",
            now,
            vec![row("SN-1", 1.0), row("SN-2", 3.0)],
            &current,
            &HashMap::new(),
        );
        assert_eq!(
            (second.inserted, second.updated, second.unchanged),
            (0, 1, 1)
        );
        let old = &second.history[0];
        assert_eq!(old.get_str("_id").unwrap(), "aurum:SN-2:5");
        assert_eq!(old.get_str("_delivery").unwrap(), "d1");
        assert_eq!(old.get_str("_replaced_by").unwrap(), "d2");
        let new = &second.current[0];
        assert_eq!(new.get_i64("_version").unwrap(), 6);
        assert_eq!(new.get_i64("_replaces").unwrap(), 5);
        assert_eq!(
            new.get_document("scan")
                .unwrap()
                .get_f64("kurtosis")
                .unwrap(),
            3.0
        );

        // A resumed d2 finds SN-2 already written by itself: counted, not written again.
        let mut after = current.clone();
        after.insert("aurum:SN-2".into(), new.clone());
        let resumed = plan_batch(
            &shape(),
            "d2",
            now,
            vec![row("SN-1", 1.0), row("SN-2", 3.0)],
            &after,
            &HashMap::new(),
        );
        assert_eq!(
            (resumed.inserted, resumed.updated, resumed.unchanged),
            (0, 1, 1)
        );
        assert!(resumed.history.is_empty() && resumed.current.is_empty());
    }

    #[test]
    fn a_document_from_before_versioning_counts_as_version_1() {
        let mut legacy = doc! {"_id": "aurum:SN-1"};
        legacy.extend(row("SN-1", 1.0).content);
        let current = HashMap::from([("aurum:SN-1".to_owned(), legacy)]);
        let same = plan_batch(
            &shape(),
            "d",
            Utc::now(),
            vec![row("SN-1", 1.0)],
            &current,
            &HashMap::new(),
        );
        assert_eq!(
            same.unchanged, 1,
            "equal content without _content is unchanged"
        );
        let changed = plan_batch(
            &shape(),
            "d",
            Utc::now(),
            vec![row("SN-1", 9.0)],
            &current,
            &HashMap::new(),
        );
        assert_eq!(changed.history[0].get_str("_id").unwrap(), "aurum:SN-1:1");
        assert_eq!(changed.current[0].get_i64("_version").unwrap(), 2);
    }
}
