//! Undoing one ingest: every current document that delivery wrote goes back to the version it
//! replaced (from history), or is removed when the delivery had inserted it. A document that a
//! later delivery changed again is left alone and counted. The rollback is a delivery of its
//! own in the ledger, and what it replaces goes to history like any other write, so a rollback
//! loses nothing either. It works in batches and can be run again after a crash: documents it
//! already restored no longer carry the undone delivery's id.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::Utc;
use mongodb::bson::Document;

use super::check::{ProviderShape, UnknownProvider};
use super::ingest::{archived, new_delivery_id};
use super::ledger::{Counts, Kind, Ledger, NewDelivery, Outcome, Status};
use super::progress::{Pass, Progress};
use super::store::{integer, version_of, DocumentStore, Shelf, StoreError};
use crate::spec::PipelineSpec;

/// What a rollback did.
#[derive(Debug, Clone, PartialEq)]
pub struct RollbackSummary {
    /// The rollback's own delivery id.
    pub delivery_id: String,
    /// The delivery undone.
    pub rolled_back: String,
    /// Its provider.
    pub provider: String,
    /// True when an unfinished rollback of the same delivery was completed.
    pub resumed: bool,
    /// rows: documents found; updated: restored; removed; changed_since.
    pub counts: Counts,
    /// Wall time.
    pub elapsed: Duration,
}

/// Why a rollback was refused or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    /// No delivery has this id.
    #[error("no delivery {0} in the ledger (see `providers deliveries`)")]
    NotFound(String),
    /// The delivery was already undone.
    #[error("delivery {delivery_id} was already rolled back by {by}; ingest its source again to redo it")]
    AlreadyRolledBack { delivery_id: String, by: String },
    /// The delivery is itself a rollback.
    #[error(
        "delivery {0} is a rollback; to redo what it undid, ingest that delivery's source again"
    )]
    IsRollback(String),
    /// The delivery wrote nothing.
    #[error("delivery {delivery_id} wrote nothing ({why}); there is nothing to roll back")]
    WroteNothing { delivery_id: String, why: String },
    /// The provider is no longer in the spec.
    #[error(transparent)]
    UnknownProvider(#[from] UnknownProvider),
    /// Another ingest or rollback of this provider is running.
    #[error(
        "another ingest or rollback of provider {provider} is running; try again when it ends"
    )]
    Busy { provider: String },
    /// A version the delivery replaced is not in history.
    #[error("rollback {delivery_id}: the version {missing} that {document} replaced is not in history; nothing more was changed")]
    MissingHistory {
        delivery_id: String,
        document: String,
        missing: String,
    },
    /// MongoDB failed: run the rollback again to finish it.
    #[error("rollback {delivery_id} failed while writing (run it again to finish it): {error}")]
    Store {
        delivery_id: String,
        #[source]
        error: StoreError,
    },
    /// The ledger could not be read or written.
    #[error("the deliveries ledger (PostgreSQL): {0}")]
    Ledger(#[from] sqlx::Error),
}

/// The systems a rollback uses.
pub struct Rollback<'a> {
    /// The pipeline spec.
    pub spec: &'a PipelineSpec,
    /// The MongoDB documents.
    pub store: &'a DocumentStore,
    /// The PostgreSQL ledger.
    pub ledger: &'a Ledger,
    /// Where progress goes.
    pub progress: &'a dyn Progress,
}

impl Rollback<'_> {
    /// Undoes `target`, `batch_docs` documents per round trip.
    pub async fn run(
        &self,
        target: &str,
        batch_docs: usize,
    ) -> Result<RollbackSummary, RollbackError> {
        let started = Instant::now();
        let delivery = self
            .ledger
            .get(target)
            .await?
            .ok_or_else(|| RollbackError::NotFound(target.to_owned()))?;
        if delivery.kind == Kind::Rollback {
            return Err(RollbackError::IsRollback(target.to_owned()));
        }
        if let Some(by) = delivery.rolled_back_by {
            return Err(RollbackError::AlreadyRolledBack {
                delivery_id: target.to_owned(),
                by,
            });
        }
        let nothing = |why: &str| RollbackError::WroteNothing {
            delivery_id: target.to_owned(),
            why: why.to_owned(),
        };
        match delivery.status {
            Status::Unchanged => return Err(nothing("its content was already delivered")),
            Status::Failed if delivery.content_hash.is_none() => {
                return Err(nothing("it failed before writing"))
            }
            _ => {}
        }
        let shape = ProviderShape::from_spec(self.spec, &delivery.provider)?;
        let Some(lock) = self.ledger.lock_provider(&shape.provider).await? else {
            return Err(RollbackError::Busy {
                provider: shape.provider,
            });
        };
        let result = self.undo(&shape, target, batch_docs).await;
        lock.release().await;
        let mut summary = result?;
        summary.elapsed = started.elapsed();
        Ok(summary)
    }

    async fn undo(
        &self,
        shape: &ProviderShape,
        target: &str,
        batch_docs: usize,
    ) -> Result<RollbackSummary, RollbackError> {
        let (delivery_id, resumed, mut counts) =
            match self.ledger.unfinished_rollback_of(target).await? {
                Some(unfinished) => {
                    self.ledger.resume(&unfinished.delivery_id).await?;
                    (unfinished.delivery_id, true, unfinished.counts)
                }
                None => {
                    let started_at = Utc::now();
                    let id = new_delivery_id(&format!("{}-rollback", shape.provider), started_at);
                    let source = format!("rollback of {target}");
                    self.ledger
                        .insert(&NewDelivery {
                            delivery_id: &id,
                            provider: &shape.provider,
                            kind: Kind::Rollback,
                            source: &source,
                            content_hash: None,
                            status: Status::Running,
                            started_at,
                            rolls_back: Some(target),
                        })
                        .await?;
                    (id, false, Counts::default())
                }
            };
        self.progress.start(Pass::Rollback, None);
        let outcome = self
            .batches(shape, target, &delivery_id, batch_docs, &mut counts)
            .await;
        self.progress.finish();
        let record = |status, error: Option<String>, counts| {
            let ledger = self.ledger;
            let id = delivery_id.clone();
            async move {
                ledger
                    .finish(
                        &id,
                        &Outcome {
                            status,
                            content_hash: None,
                            counts,
                            refused_sample: &[],
                            error: error.as_deref(),
                        },
                    )
                    .await
            }
        };
        if let Err(error) = outcome {
            record(Status::Failed, Some(error.to_string()), counts).await?;
            return Err(error);
        }
        counts.changed_since = self
            .store
            .replaced_since(&shape.provider, target, &delivery_id)
            .await
            .map_err(|error| RollbackError::Store {
                delivery_id: delivery_id.clone(),
                error,
            })?;
        counts.accepted = counts.rows;
        record(Status::Succeeded, None, counts).await?;
        self.ledger.mark_rolled_back(target, &delivery_id).await?;
        Ok(RollbackSummary {
            delivery_id,
            rolled_back: target.to_owned(),
            provider: shape.provider.clone(),
            resumed,
            counts,
            elapsed: Duration::ZERO,
        })
    }

    /// Restores or removes `target`'s documents, one batch at a time, until none is left.
    async fn batches(
        &self,
        shape: &ProviderShape,
        target: &str,
        delivery_id: &str,
        batch_docs: usize,
        counts: &mut Counts,
    ) -> Result<(), RollbackError> {
        let store_error = |error| RollbackError::Store {
            delivery_id: delivery_id.to_owned(),
            error,
        };
        let mut previous_first: Option<String> = None;
        loop {
            let docs = self
                .store
                .written_by(&shape.provider, target, batch_docs.max(1))
                .await
                .map_err(store_error)?;
            let Some(first) = docs.first().and_then(|d| d.get_str("_id").ok()) else {
                return Ok(());
            };
            if previous_first.as_deref() == Some(first) {
                // The last batch's writes did not take: stop rather than loop.
                return Err(store_error(StoreError::Statements {
                    operation: "update",
                    collection: "current documents".into(),
                    failed: docs.len(),
                    first: format!("{first} still carries _delivery {target}"),
                }));
            }
            previous_first = Some(first.to_owned());
            let wanted: Vec<String> = docs
                .iter()
                .filter_map(|d| {
                    Some(format!(
                        "{}:{}",
                        d.get_str("_id").ok()?,
                        integer(d, "_replaces")?
                    ))
                })
                .collect();
            let history = self
                .store
                .by_ids(Shelf::History, &wanted)
                .await
                .map_err(store_error)?;
            let plan = plan_undo(shape, delivery_id, &docs, &history)?;
            self.store
                .put(Shelf::History, plan.history)
                .await
                .map_err(store_error)?;
            self.store
                .put(Shelf::Current, plan.restored)
                .await
                .map_err(store_error)?;
            self.store
                .remove(Shelf::Current, plan.removed)
                .await
                .map_err(store_error)?;
            counts.rows += docs.len() as u64;
            counts.updated += plan.restored_count;
            counts.removed += plan.removed_count;
            self.progress.advance(docs.len() as u64);
            let running = Outcome {
                status: Status::Running,
                content_hash: None,
                counts: *counts,
                refused_sample: &[],
                error: None,
            };
            self.ledger.finish(delivery_id, &running).await?;
        }
    }
}

/// The writes that undo one batch.
#[derive(Debug, Default)]
struct UndoPlan {
    history: Vec<Document>,
    restored: Vec<Document>,
    removed: Vec<(String, i64)>,
    restored_count: u64,
    removed_count: u64,
}

fn plan_undo(
    shape: &ProviderShape,
    delivery_id: &str,
    docs: &[Document],
    history: &HashMap<String, Document>,
) -> Result<UndoPlan, RollbackError> {
    let now = Utc::now();
    let mut plan = UndoPlan::default();
    for doc in docs {
        let (Ok(id), Ok(key)) = (doc.get_str("_id"), doc.get_str(&shape.key_field)) else {
            continue;
        };
        let version = version_of(doc).unwrap_or(1);
        plan.history
            .push(archived(shape, key, doc, version, delivery_id, now));
        let Some(replaced) = integer(doc, "_replaces") else {
            plan.removed.push((id.to_owned(), version));
            plan.removed_count += 1;
            continue;
        };
        let wanted = format!("{id}:{replaced}");
        let Some(previous) = history.get(&wanted) else {
            return Err(RollbackError::MissingHistory {
                delivery_id: delivery_id.to_owned(),
                document: id.to_owned(),
                missing: wanted,
            });
        };
        let mut restored = mongodb::bson::doc! {"_id": id};
        for (k, v) in previous {
            if !matches!(
                k.as_str(),
                "_id" | "_version" | "_delivery" | "_replaces" | "_replaced_by" | "_replaced_at"
            ) {
                restored.insert(k.clone(), v.clone());
            }
        }
        restored.insert("_version", version + 1);
        restored.insert("_delivery", delivery_id);
        restored.insert("_replaces", version);
        plan.restored.push(restored);
        plan.restored_count += 1;
    }
    Ok(plan)
}
