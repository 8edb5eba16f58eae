//! The enricher: both sources of a batch, asked once each, concurrently.

use std::time::Instant;

use super::source::{DocumentSource, Enrichment, ReferenceSource, SourceError};
use crate::spec::PipelineSpec;
use crate::standardize::StandardBatch;

/// Both sources a batch is enriched from.
#[derive(Debug, Clone)]
pub struct Enricher<R, D> {
    /// PostgreSQL reference data.
    pub reference: R,
    /// MongoDB provider documents.
    pub documents: D,
}

impl<R: ReferenceSource, D: DocumentSource> Enricher<R, D> {
    /// One round trip per source: every distinct key of the batch at once, both sources
    /// together. Returns what they found and the milliseconds each took (they run
    /// concurrently).
    pub async fn enrich(
        &self,
        spec: &PipelineSpec,
        standard: &StandardBatch<'_>,
    ) -> Result<(Enrichment, f64, f64), SourceError> {
        let lookup_keys: Vec<&[String]> = standard.lookups.iter().map(|t| t.keys()).collect();
        let doc_keys: &[String] = standard
            .documents
            .as_ref()
            .map(|t| t.keys())
            .unwrap_or_default();
        let paths = spec.document_paths();
        let reference = async {
            let started = Instant::now();
            let found = if lookup_keys.iter().all(|k| k.is_empty()) {
                vec![Default::default(); spec.lookups.len()]
            } else {
                self.reference.fetch(&spec.lookups, &lookup_keys).await?
            };
            Ok::<_, SourceError>((found, ms_since(started)))
        };
        let documents = async {
            let started = Instant::now();
            let found = match &spec.documents {
                Some(docs) if !doc_keys.is_empty() => {
                    self.documents.fetch(docs, &paths, doc_keys).await?
                }
                _ => Default::default(),
            };
            Ok((found, ms_since(started)))
        };
        let ((lookups, t_postgres), (documents, t_mongo)) = tokio::try_join!(reference, documents)?;
        Ok((Enrichment { lookups, documents }, t_postgres, t_mongo))
    }
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}
