//! A time-bounded cache in front of the reference source.
//!
//! Reference tables (scanners, issuer aliases) are small and change rarely, yet every batch
//! needs them. The cache answers the keys it saw within the last `ttl` and asks the source, in
//! one round trip as before, only for the rest. Unknown keys are cached too, so a stream of
//! records with an unknown scanner does not hit PostgreSQL on every batch; a key added to the
//! table is seen at the latest `ttl` later. A zero `ttl` turns the cache off.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::source::{ReferenceSource, SourceError};
use crate::spec::LookupSpec;
use crate::standardize::FastMap;

/// Most keys cached per lookup; past it the lookup's cache starts again empty.
pub const MAX_KEYS_PER_LOOKUP: usize = 100_000;

/// A [`ReferenceSource`] that remembers answers for `ttl`.
#[derive(Debug)]
pub struct CachedReference<R> {
    inner: R,
    ttl: Duration,
    /// Per lookup (by table, key and value column): key -> value (None: not in the table).
    entries: Mutex<HashMap<String, FastMap<String, Entry>>>,
}

#[derive(Debug, Clone)]
struct Entry {
    value: Option<String>,
    fetched: Instant,
}

impl<R> CachedReference<R> {
    /// A cache of `ttl` over `inner`; a zero `ttl` passes every call through.
    pub fn new(inner: R, ttl: Duration) -> Self {
        Self {
            inner,
            ttl,
            entries: Mutex::default(),
        }
    }

    /// The source behind the cache.
    pub fn inner(&self) -> &R {
        &self.inner
    }
}

fn lookup_id(l: &LookupSpec) -> String {
    format!("{}.{}->{}", l.table, l.key_column, l.value_column)
}

impl<R: ReferenceSource> ReferenceSource for CachedReference<R> {
    async fn fetch(
        &self,
        lookups: &[LookupSpec],
        keys: &[&[String]],
    ) -> Result<Vec<HashMap<String, String>>, SourceError> {
        if self.ttl.is_zero() {
            return self.inner.fetch(lookups, keys).await;
        }
        let ids: Vec<String> = lookups.iter().map(lookup_id).collect();
        let mut found = vec![HashMap::new(); lookups.len()];
        let mut missing: Vec<Vec<String>> = vec![Vec::new(); lookups.len()];
        {
            let entries = self
                .entries
                .lock()
                .expect("the cache lock is never poisoned");
            let now = Instant::now();
            for (i, keys) in keys.iter().enumerate() {
                let cached = entries.get(&ids[i]);
                for key in keys.iter() {
                    match cached.and_then(|c| c.get(key)) {
                        Some(e) if now.duration_since(e.fetched) < self.ttl => {
                            if let Some(v) = &e.value {
                                found[i].insert(key.clone(), v.clone());
                            }
                        }
                        _ => missing[i].push(key.clone()),
                    }
                }
            }
        }
        if missing.iter().all(Vec::is_empty) {
            return Ok(found);
        }
        let asked: Vec<&[String]> = missing.iter().map(Vec::as_slice).collect();
        let fetched = self.inner.fetch(lookups, &asked).await?;
        let now = Instant::now();
        let mut entries = self
            .entries
            .lock()
            .expect("the cache lock is never poisoned");
        for (i, (asked, answers)) in missing.into_iter().zip(fetched).enumerate() {
            let cache = entries.entry(ids[i].clone()).or_default();
            if cache.len() + asked.len() > MAX_KEYS_PER_LOOKUP {
                cache.clear();
            }
            for key in asked {
                let value = answers.get(&key).cloned();
                if let Some(v) = &value {
                    found[i].insert(key.clone(), v.clone());
                }
                cache.insert(
                    key,
                    Entry {
                        value,
                        fetched: now,
                    },
                );
            }
        }
        Ok(found)
    }

    async fn ping(&self) -> Result<(), SourceError> {
        self.inner.ping().await
    }

    /// Every cached entry, expired ones included: while PostgreSQL is down, a reference value
    /// seen minutes ago is better than holding back the record (reference tables change
    /// rarely), and it is what the worker answered with until then.
    fn known(
        &self,
        lookups: &[LookupSpec],
        keys: &[&[String]],
    ) -> Vec<HashMap<String, Option<String>>> {
        let entries = self
            .entries
            .lock()
            .expect("the cache lock is never poisoned");
        lookups
            .iter()
            .zip(keys)
            .map(|(lookup, keys)| {
                let Some(cached) = entries.get(&lookup_id(lookup)) else {
                    return HashMap::new();
                };
                keys.iter()
                    .filter_map(|k| cached.get(k).map(|e| (k.clone(), e.value.clone())))
                    .collect()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::PipelineSpec;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A reference table in memory that counts what it is asked.
    #[derive(Default)]
    struct Table {
        asked: AtomicUsize,
        keys_asked: AtomicUsize,
        rows: Mutex<HashMap<String, String>>,
    }

    impl ReferenceSource for Table {
        async fn fetch(
            &self,
            lookups: &[LookupSpec],
            keys: &[&[String]],
        ) -> Result<Vec<HashMap<String, String>>, SourceError> {
            self.asked.fetch_add(1, Ordering::SeqCst);
            let rows = self.rows.lock().unwrap();
            Ok(keys
                .iter()
                .take(lookups.len())
                .map(|keys| {
                    self.keys_asked.fetch_add(keys.len(), Ordering::SeqCst);
                    keys.iter()
                        .filter_map(|k| rows.get(k).map(|v| (k.clone(), v.clone())))
                        .collect()
                })
                .collect())
        }

        async fn ping(&self) -> Result<(), SourceError> {
            Ok(())
        }
    }

    fn keys(list: &[&str]) -> Vec<String> {
        list.iter().map(|k| k.to_string()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn known_and_unknown_keys_are_remembered_for_the_ttl() {
        let lookups = &PipelineSpec::banknote().lookups[..1];
        let table = Table::default();
        table
            .rows
            .lock()
            .unwrap()
            .insert("sc-01".into(), "milli".into());
        let cache = CachedReference::new(table, Duration::from_secs(60));
        let (a, b) = (keys(&["sc-01", "sc-99"]), keys(&["sc-01", "sc-02"]));

        let first = cache.fetch(lookups, &[&a]).await.unwrap();
        assert_eq!(first[0].get("sc-01").map(String::as_str), Some("milli"));
        assert!(!first[0].contains_key("sc-99"));
        let again = cache.fetch(lookups, &[&a]).await.unwrap();
        assert_eq!(again, first);
        assert_eq!(
            cache.inner().asked.load(Ordering::SeqCst),
            1,
            "answered from the cache"
        );

        // Only the new key is asked for.
        cache
            .inner()
            .rows
            .lock()
            .unwrap()
            .insert("sc-99".into(), "centi".into());
        cache.fetch(lookups, &[&b]).await.unwrap();
        assert_eq!(cache.inner().asked.load(Ordering::SeqCst), 2);
        assert_eq!(cache.inner().keys_asked.load(Ordering::SeqCst), 3);
        // sc-99 was unknown when cached: still unknown until the ttl passes, then seen.
        let cached = cache.fetch(lookups, &[&a]).await.unwrap();
        assert!(!cached[0].contains_key("sc-99"));
        tokio::time::advance(Duration::from_secs(61)).await;
        let fresh = cache.fetch(lookups, &[&a]).await.unwrap();
        assert_eq!(fresh[0].get("sc-99").map(String::as_str), Some("centi"));
        assert_eq!(cache.inner().asked.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_zero_ttl_passes_every_call_through() {
        let lookups = &PipelineSpec::banknote().lookups[..1];
        let cache = CachedReference::new(Table::default(), Duration::ZERO);
        let a = keys(&["sc-01"]);
        cache.fetch(lookups, &[&a]).await.unwrap();
        cache.fetch(lookups, &[&a]).await.unwrap();
        assert_eq!(cache.inner().asked.load(Ordering::SeqCst), 2);
    }
}
