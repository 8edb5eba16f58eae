//! The provider documents in MongoDB, as ingest and rollback see them: the current documents
//! (the spec's collection, which the worker reads) and the versions they replaced
//! (`<collection>_history`). Every write is a batch: one `update` command carries up to
//! [`STATEMENTS_PER_COMMAND`] replace-or-insert statements, so a delivery costs one round trip
//! per batch, not one per document. No write depends on a transaction; the callers order their
//! writes so that a crash between two of them loses nothing (history before current).

use std::collections::HashMap;

use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::options::IndexOptions;
use mongodb::{Collection, Database, IndexModel};

use crate::spec::DocumentSpec;

/// Statements in one `update` or `delete` command.
pub const STATEMENTS_PER_COMMAND: usize = 1000;

/// Documents written per round trip unless told otherwise (`--batch-docs`).
pub const DEFAULT_BATCH_DOCS: usize = 1000;

/// Bytes of documents in one command, below MongoDB's 16 MiB command size; a larger document
/// goes alone.
const BYTES_PER_COMMAND: usize = 8 * 1024 * 1024;

/// A MongoDB operation of the store that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The server could not be reached or refused the command.
    #[error("MongoDB {operation} on {collection}: {error}")]
    Mongo {
        operation: &'static str,
        collection: String,
        #[source]
        error: Box<mongodb::error::Error>,
    },
    /// The command ran but some statements failed (e.g. a duplicate key).
    #[error("MongoDB {operation} on {collection}: {failed} statements failed, the first: {first}")]
    Statements {
        operation: &'static str,
        collection: String,
        failed: usize,
        first: String,
    },
}

/// Which of the two collections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shelf {
    /// The current documents, read by the worker.
    Current,
    /// Earlier versions.
    History,
}

/// The provider documents of one spec.
#[derive(Debug, Clone)]
pub struct DocumentStore {
    db: Database,
    current: Collection<Document>,
    history: Collection<Document>,
    key_field: String,
    provider_field: String,
}

impl DocumentStore {
    /// The store for the spec's documents in `db`.
    pub fn new(db: Database, spec: &DocumentSpec) -> Self {
        Self {
            current: db.collection(&spec.collection),
            history: db.collection(&format!("{}_history", spec.collection)),
            db,
            key_field: spec.key_field.clone(),
            provider_field: spec.provider_field.clone(),
        }
    }

    fn collection(&self, shelf: Shelf) -> &Collection<Document> {
        match shelf {
            Shelf::Current => &self.current,
            Shelf::History => &self.history,
        }
    }

    fn failed(
        &self,
        shelf: Shelf,
        operation: &'static str,
    ) -> impl FnOnce(mongodb::error::Error) -> StoreError + '_ {
        move |error| StoreError::Mongo {
            operation,
            collection: self.collection(shelf).name().to_owned(),
            error: Box::new(error),
        }
    }

    /// Removes every current and earlier version: the ground truth starts again (what
    /// `fixtures load` does before it loads a fixture set's documents).
    pub async fn clear(&self) -> Result<(), StoreError> {
        for shelf in [Shelf::Current, Shelf::History] {
            self.collection(shelf)
                .delete_many(doc! {})
                .await
                .map_err(self.failed(shelf, "delete"))?;
        }
        Ok(())
    }

    /// The indexes rollback and version numbering use (the worker's own index on key and
    /// provider is [`crate::mongo::ensure_indexes`]'s).
    pub async fn ensure_indexes(&self) -> Result<(), StoreError> {
        let by_delivery = || {
            IndexModel::builder()
                .keys(doc! {"_delivery": 1})
                .options(IndexOptions::builder().name("delivery".to_owned()).build())
                .build()
        };
        self.current
            .create_index(by_delivery())
            .await
            .map_err(self.failed(Shelf::Current, "createIndexes"))?;
        let versions = IndexModel::builder()
            .keys(doc! {self.key_field.as_str(): 1, self.provider_field.as_str(): 1, "_version": 1})
            .options(
                IndexOptions::builder()
                    .name("key_provider_version".to_owned())
                    .build(),
            )
            .build();
        self.history
            .create_indexes([versions, by_delivery()])
            .await
            .map_err(self.failed(Shelf::History, "createIndexes"))?;
        Ok(())
    }

    /// The documents with these `_id`s, by `_id`: one `$in` query.
    pub async fn by_ids(
        &self,
        shelf: Shelf,
        ids: &[String],
    ) -> Result<HashMap<String, Document>, StoreError> {
        let mut found = HashMap::with_capacity(ids.len());
        if ids.is_empty() {
            return Ok(found);
        }
        let docs: Vec<Document> = self
            .collection(shelf)
            .find(doc! {"_id": {"$in": ids}})
            .batch_size(ids.len().clamp(1, 10_000) as u32)
            .await
            .map_err(self.failed(shelf, "find"))?
            .try_collect()
            .await
            .map_err(self.failed(shelf, "find"))?;
        for d in docs {
            if let Ok(id) = d.get_str("_id") {
                found.insert(id.to_owned(), d);
            }
        }
        Ok(found)
    }

    /// The highest version in history of each of `provider`'s keys that has one: a key that is
    /// inserted again (after a rollback removed it) continues its numbering.
    pub async fn highest_history_versions(
        &self,
        provider: &str,
        keys: &[String],
    ) -> Result<HashMap<String, i64>, StoreError> {
        let mut highest: HashMap<String, i64> = HashMap::new();
        if keys.is_empty() {
            return Ok(highest);
        }
        let filter = doc! {
            self.key_field.as_str(): {"$in": keys},
            self.provider_field.as_str(): provider,
        };
        let mut cursor = self
            .history
            .find(filter)
            .projection(doc! {"_id": 0, self.key_field.as_str(): 1, "_version": 1})
            .await
            .map_err(self.failed(Shelf::History, "find"))?;
        while let Some(d) = cursor
            .try_next()
            .await
            .map_err(self.failed(Shelf::History, "find"))?
        {
            if let (Ok(key), Some(version)) = (d.get_str(&self.key_field), version_of(&d)) {
                let entry = highest.entry(key.to_owned()).or_insert(version);
                *entry = (*entry).max(version);
            }
        }
        Ok(highest)
    }

    /// Up to `limit` of `provider`'s current documents last written by `delivery`.
    pub async fn written_by(
        &self,
        provider: &str,
        delivery: &str,
        limit: usize,
    ) -> Result<Vec<Document>, StoreError> {
        self.current
            .find(doc! {"_delivery": delivery, self.provider_field.as_str(): provider})
            .limit(limit as i64)
            .batch_size(limit.clamp(1, 10_000) as u32)
            .await
            .map_err(self.failed(Shelf::Current, "find"))?
            .try_collect()
            .await
            .map_err(self.failed(Shelf::Current, "find"))
    }

    /// How many history versions of `provider` were written by `delivery` and later replaced by
    /// someone other than `except`.
    pub async fn replaced_since(
        &self,
        provider: &str,
        delivery: &str,
        except: &str,
    ) -> Result<u64, StoreError> {
        self.history
            .count_documents(doc! {
                "_delivery": delivery,
                self.provider_field.as_str(): provider,
                "_replaced_by": {"$ne": except},
            })
            .await
            .map_err(self.failed(Shelf::History, "count"))
    }

    /// Writes each document under its `_id`, replacing what is there or inserting it.
    pub async fn put(&self, shelf: Shelf, docs: Vec<Document>) -> Result<(), StoreError> {
        let statements = docs.into_iter().map(|d| {
            let id = d.get("_id").cloned().unwrap_or(Bson::Null);
            doc! {"q": {"_id": id}, "u": d, "upsert": true}
        });
        self.run_statements(shelf, "update", "updates", statements)
            .await
    }

    /// Deletes each (`_id`, `_version`) that is still there at that version.
    pub async fn remove(&self, shelf: Shelf, ids: Vec<(String, i64)>) -> Result<(), StoreError> {
        let statements = ids
            .into_iter()
            .map(|(id, version)| doc! {"q": {"_id": id, "_version": version}, "limit": 1});
        self.run_statements(shelf, "delete", "deletes", statements)
            .await
    }

    async fn run_statements(
        &self,
        shelf: Shelf,
        command: &'static str,
        field: &str,
        statements: impl Iterator<Item = Document>,
    ) -> Result<(), StoreError> {
        let mut batch: Vec<Document> = Vec::new();
        let mut bytes = 0;
        for statement in statements {
            let size = bson_len(&statement);
            if !batch.is_empty()
                && (batch.len() >= STATEMENTS_PER_COMMAND || bytes + size > BYTES_PER_COMMAND)
            {
                self.send(shelf, command, field, std::mem::take(&mut batch))
                    .await?;
                bytes = 0;
            }
            bytes += size;
            batch.push(statement);
        }
        if !batch.is_empty() {
            self.send(shelf, command, field, batch).await?;
        }
        Ok(())
    }

    async fn send(
        &self,
        shelf: Shelf,
        command: &'static str,
        field: &str,
        statements: Vec<Document>,
    ) -> Result<(), StoreError> {
        let collection = self.collection(shelf).name().to_owned();
        let reply = self
            .db
            .run_command(doc! {command: collection.as_str(), field: statements, "ordered": false})
            .await
            .map_err(self.failed(shelf, command))?;
        match reply.get_array("writeErrors") {
            Ok(errors) if !errors.is_empty() => Err(StoreError::Statements {
                operation: command,
                collection,
                failed: errors.len(),
                first: errors[0]
                    .as_document()
                    .and_then(|e| e.get_str("errmsg").ok())
                    .unwrap_or("no message")
                    .to_owned(),
            }),
            _ => Ok(()),
        }
    }
}

/// A stored document's `_version`; documents written before versioning count as version 1.
pub fn version_of(doc: &Document) -> Option<i64> {
    match doc.get("_version") {
        None => Some(1),
        Some(_) => integer(doc, "_version"),
    }
}

/// An integer field, whichever integer type the server returned it as.
pub fn integer(doc: &Document, field: &str) -> Option<i64> {
    match doc.get(field)? {
        Bson::Int32(v) => Some(i64::from(*v)),
        Bson::Int64(v) => Some(*v),
        Bson::Double(v) if v.fract() == 0.0 => Some(*v as i64),
        _ => None,
    }
}

fn bson_len(doc: &Document) -> usize {
    let mut bytes = Vec::new();
    doc.to_writer(&mut bytes).map_or(0, |()| bytes.len())
}
