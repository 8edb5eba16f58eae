//! The enricher: both sources of a batch, asked once each, concurrently. When a source answers
//! with an error that is not an outage, the keys at fault are found by asking again in halves,
//! so one bad key never holds back the rest of the batch.

use std::collections::HashMap;
use std::time::Instant;

use super::source::{
    DocumentSource, DocumentsByKey, Enrichment, ReferenceSource, Refused, SourceError, Unavailable,
};
use crate::spec::{DocumentSpec, LookupSpec, PipelineSpec};
use crate::standardize::StandardBatch;

/// Both sources a batch is enriched from.
#[derive(Debug, Clone)]
pub struct Enricher<R, D> {
    /// PostgreSQL reference data.
    pub reference: R,
    /// MongoDB provider documents.
    pub documents: D,
}

/// Reference values per lookup, and the keys refused per lookup.
type LookupAnswer = (Vec<HashMap<String, String>>, Vec<HashMap<String, String>>);

/// Documents by key id, and the keys refused.
type DocumentAnswer = (DocumentsByKey, HashMap<String, String>);

impl<R: ReferenceSource, D: DocumentSource> Enricher<R, D> {
    /// One call per source: every distinct key of the batch at once (the source asks them in
    /// chunks, one round trip each), both sources together. Returns what they found and the milliseconds each took (they run
    /// concurrently). A source that is down does not fail the batch: what its keys need is
    /// marked unavailable (PostgreSQL's cache still answers what it holds), so every record
    /// that needs nothing from it can be answered.
    pub async fn enrich(
        &self,
        spec: &PipelineSpec,
        standard: &StandardBatch<'_>,
    ) -> (Enrichment, f64, f64) {
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
                let none = vec![HashMap::new(); spec.lookups.len()];
                Ok((none.clone(), none))
            } else {
                self.lookups(&spec.lookups, &lookup_keys).await
            };
            (found, ms_since(started))
        };
        let documents = async {
            let started = Instant::now();
            let found = match &spec.documents {
                Some(docs) if !doc_keys.is_empty() => {
                    self.provider_documents(docs, &paths, doc_keys).await
                }
                _ => Ok(Default::default()),
            };
            (found, ms_since(started))
        };
        let ((lookups, t_postgres), (documents, t_mongo)) = tokio::join!(reference, documents);
        let mut unavailable = Unavailable {
            lookups: vec![Default::default(); spec.lookups.len()],
            ..Unavailable::default()
        };
        let (lookups, refused_lookups) = lookups.unwrap_or_else(|e| {
            let known = self.reference.known(&spec.lookups, &lookup_keys);
            let mut found = vec![HashMap::new(); spec.lookups.len()];
            for (l, keys) in lookup_keys.iter().enumerate() {
                for key in keys.iter() {
                    match known.get(l).and_then(|k| k.get(key)) {
                        Some(Some(value)) => {
                            found[l].insert(key.clone(), value.clone());
                        }
                        Some(None) => {}
                        None => {
                            unavailable.lookups[l].insert(key.clone());
                        }
                    }
                }
            }
            outage(&mut unavailable, &e);
            (found, vec![HashMap::new(); spec.lookups.len()])
        });
        let (documents, refused_documents) = documents.unwrap_or_else(|e| {
            unavailable.documents = doc_keys.iter().cloned().collect();
            outage(&mut unavailable, &e);
            Default::default()
        });
        let enrichment = Enrichment {
            lookups,
            documents,
            refused: Refused {
                lookups: refused_lookups,
                documents: refused_documents,
            },
            unavailable,
        };
        (enrichment, t_postgres, t_mongo)
    }

    /// The reference values of every key; on an error that is not an outage, the keys at fault.
    async fn lookups(
        &self,
        lookups: &[LookupSpec],
        keys: &[&[String]],
    ) -> Result<LookupAnswer, SourceError> {
        let first = match self.reference.fetch(lookups, keys).await {
            Ok(found) => return Ok((found, vec![HashMap::new(); lookups.len()])),
            Err(e) if e.is_outage() => return Err(e),
            Err(e) => e,
        };
        let pairs: Vec<(usize, &String)> = keys
            .iter()
            .enumerate()
            .flat_map(|(l, keys)| keys.iter().map(move |k| (l, k)))
            .collect();
        warn_isolating(&first, pairs.len());
        let mut found = vec![HashMap::new(); lookups.len()];
        let mut refused = vec![HashMap::new(); lookups.len()];
        // The whole set failed already: start from its halves.
        let mut parts = halves(&pairs, 0);
        while let Some((offset, part)) = parts.pop() {
            let mut asked = vec![Vec::new(); lookups.len()];
            for &(l, k) in part {
                asked[l].push(k.clone());
            }
            let asked: Vec<&[String]> = asked.iter().map(Vec::as_slice).collect();
            match self.reference.fetch(lookups, &asked).await {
                Ok(answer) => {
                    for (into, from) in found.iter_mut().zip(answer) {
                        into.extend(from);
                    }
                }
                Err(e) if e.is_outage() => return Err(e),
                Err(e) if part.len() == 1 => {
                    let (l, k) = part[0];
                    refused[l].insert(k.clone(), crate::text::error_chain(&e));
                }
                Err(_) => parts.extend(halves(part, offset)),
            }
        }
        // Every key refused alone: the source refuses everything, which is no key's fault.
        if refused.iter().map(HashMap::len).sum::<usize>() == pairs.len() {
            return Err(first);
        }
        Ok((found, refused))
    }

    /// The documents of every key; on an error that is not an outage, the keys at fault.
    async fn provider_documents(
        &self,
        spec: &DocumentSpec,
        paths: &[String],
        keys: &[String],
    ) -> Result<DocumentAnswer, SourceError> {
        let first = match self.documents.fetch(spec, paths, keys).await {
            Ok(found) => return Ok((found, HashMap::new())),
            Err(e) if e.is_outage() => return Err(e),
            Err(e) => e,
        };
        warn_isolating(&first, keys.len());
        let mut found = Vec::new();
        let mut refused = HashMap::new();
        // Each part with the place of its first key in `keys`.
        let mut parts = halves(keys, 0);
        while let Some((offset, part)) = parts.pop() {
            match self.documents.fetch(spec, paths, part).await {
                Ok(answer) => found.extend(answer.into_found(offset as u32)),
                Err(e) if e.is_outage() => return Err(e),
                Err(e) if part.len() == 1 => {
                    refused.insert(part[0].clone(), crate::text::error_chain(&e));
                }
                Err(_) => parts.extend(halves(part, offset)),
            }
        }
        if refused.len() == keys.len() {
            return Err(first);
        }
        Ok((DocumentsByKey::group(keys.len(), found), refused))
    }
}

/// A failed set's two halves, each with the place of its first element, given the set's
/// (a single key is its own half: it is asked alone once more, so its own answer is what its
/// record reports).
fn halves<T>(set: &[T], offset: usize) -> Vec<(usize, &[T])> {
    if set.len() < 2 {
        return vec![(offset, set)];
    }
    let (a, b) = set.split_at(set.len() / 2);
    vec![(offset, a), (offset + a.len(), b)]
}

/// Notes a source that is down: its name and what its client said.
fn outage(unavailable: &mut Unavailable, e: &SourceError) {
    unavailable
        .outages
        .push((e.source_name(), crate::text::error_chain(e)));
}

fn warn_isolating(e: &SourceError, keys: usize) {
    tracing::warn!(
        source = e.source_name(),
        error = %crate::text::error_chain(e),
        keys,
        "the source refused a batch lookup while reachable; asking again in halves to find the keys at fault"
    );
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    use super::*;
    use crate::enrich::memory::{MemoryDocuments, MemoryReference};

    fn enricher(refuse: &[&str], down: bool) -> Enricher<MemoryReference, MemoryDocuments> {
        let scanners = ["sc-01", "sc-02", "sc-03", "sc-04", "sc-05"]
            .map(|k| (k.to_owned(), "milli".to_owned()));
        Enricher {
            reference: MemoryReference {
                tables: HashMap::from([("scanners".to_owned(), HashMap::from(scanners))]),
                refuse: refuse.iter().map(|k| (*k).to_owned()).collect(),
                down: Arc::new(down.into()),
                ..Default::default()
            },
            documents: MemoryDocuments::default(),
        }
    }

    fn keys(list: &[&str]) -> Vec<String> {
        list.iter().map(|k| (*k).to_owned()).collect()
    }

    #[tokio::test]
    async fn a_key_the_source_refuses_is_found_and_every_other_key_is_answered() {
        let e = enricher(&["sc-bad"], false);
        let lookups = &PipelineSpec::banknote().lookups[..1];
        let asked = keys(&[
            "sc-01", "sc-02", "sc-bad", "sc-03", "sc-04", "sc-05", "sc-99",
        ]);
        let (found, refused) = e.lookups(lookups, &[&asked]).await.unwrap();
        assert_eq!(found[0].len(), 5, "every known key answered: {found:?}");
        assert_eq!(refused[0].keys().collect::<Vec<_>>(), ["sc-bad"]);
        assert!(
            refused[0]["sc-bad"].contains("invalid byte sequence"),
            "{refused:?}"
        );
        let calls = e.reference.calls.load(Ordering::SeqCst);
        assert!(
            calls <= 1 + 2 * 3,
            "bisection, not one call per key: {calls} calls"
        );
    }

    #[tokio::test]
    async fn an_outage_holds_the_batch_back_and_so_does_a_source_that_refuses_every_key() {
        let lookups = &PipelineSpec::banknote().lookups[..1];
        let asked = keys(&["sc-01", "sc-02"]);
        let down = enricher(&[], true);
        let err = down.lookups(lookups, &[&asked]).await.unwrap_err();
        assert!(err.is_outage());
        assert_eq!(
            down.reference.calls.load(Ordering::SeqCst),
            1,
            "no bisection on an outage"
        );
        let refuses_all = enricher(&["sc-01", "sc-02"], false);
        assert!(refuses_all.lookups(lookups, &[&asked]).await.is_err());
    }
}
