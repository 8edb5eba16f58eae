//! Enrichment sources in memory, for unit tests of the stages above them: reference values and
//! provider documents held in maps, answering exactly as the real sources do (absent keys are
//! simply missing), and counting their round trips.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use super::source::{DocumentSource, DocumentsByKey, ProviderDoc, ReferenceSource, SourceError};
use crate::spec::{DocumentSpec, LookupSpec};

/// Reference values by lookup table, then key.
#[derive(Debug, Clone, Default)]
pub struct MemoryReference {
    /// Table name -> key -> value.
    pub tables: HashMap<String, HashMap<String, String>>,
    /// Keys the source answers an error for (as PostgreSQL does for a value it cannot compare):
    /// a call asking for any of them fails as a whole.
    pub refuse: HashSet<String>,
    /// Whether the source is down: every call fails as an outage. Shared, so a test can bring
    /// it back while the worker holds a batch.
    pub down: Arc<AtomicBool>,
    /// Round trips made.
    pub calls: Arc<AtomicUsize>,
}

impl MemoryReference {
    /// A source that is down until [`MemoryReference::set_down`] brings it back.
    pub fn down() -> Self {
        let source = Self::default();
        source.set_down(true);
        source
    }

    /// Takes the source down or brings it back.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }
}

impl ReferenceSource for MemoryReference {
    async fn fetch(
        &self,
        lookups: &[LookupSpec],
        keys: &[&[String]],
    ) -> Result<Vec<HashMap<String, String>>, SourceError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(SourceError::Postgres(sqlx::Error::PoolTimedOut));
        }
        if let Some(bad) = keys
            .iter()
            .flat_map(|k| k.iter())
            .find(|k| self.refuse.contains(*k))
        {
            return Err(SourceError::Postgres(sqlx::Error::Protocol(format!(
                "invalid byte sequence for encoding \"UTF8\" in key {bad:?}"
            ))));
        }
        Ok(lookups
            .iter()
            .zip(keys)
            .map(|(lookup, keys)| {
                let table = self.tables.get(&lookup.table);
                keys.iter()
                    .filter_map(|k| Some((k.clone(), table?.get(k)?.clone())))
                    .collect()
            })
            .collect())
    }

    async fn ping(&self) -> Result<(), SourceError> {
        Ok(())
    }
}

/// Provider documents by key.
#[derive(Debug, Clone, Default)]
pub struct MemoryDocuments {
    /// Key -> its providers' documents.
    pub documents: HashMap<String, Vec<ProviderDoc>>,
    /// Whether the source stops answering: every call waits forever (a stalled server).
    pub stalled: bool,
    /// Round trips made.
    pub calls: Arc<AtomicUsize>,
}

impl DocumentSource for MemoryDocuments {
    async fn fetch(
        &self,
        _spec: &DocumentSpec,
        _paths: &[String],
        keys: &[String],
    ) -> Result<DocumentsByKey, SourceError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.stalled {
            std::future::pending::<()>().await;
        }
        Ok(DocumentsByKey::of_keys(keys, &self.documents))
    }

    async fn ping(&self) -> Result<(), SourceError> {
        Ok(())
    }
}
