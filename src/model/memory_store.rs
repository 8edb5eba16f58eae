//! A model store in memory, for unit tests of the registry and the model holder: versioned keys,
//! conditional writes and ETag-conditional reads, as a versioned S3 bucket behaves.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use futures::FutureExt;

use super::store::{Got, Listing, ModelStore, ObjectVersion, Put, StoreError};

#[derive(Debug, Clone)]
struct Stored {
    version_id: String,
    bytes: Vec<u8>,
    written_ms: i64,
}

#[derive(Debug, Default)]
struct State {
    /// Key -> its versions, oldest first.
    objects: BTreeMap<String, Vec<Stored>>,
    writes: u64,
    gets: u64,
}

/// An in-memory store; clones share the same objects.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    bucket: String,
    location: String,
    state: Arc<Mutex<State>>,
}

impl MemoryStore {
    /// An empty store named `bucket`.
    pub fn new(bucket: &str) -> Self {
        Self {
            bucket: bucket.to_owned(),
            location: format!("memory://{bucket}"),
            state: Arc::default(),
        }
    }

    /// How many reads returned a body (conditional reads answered `NotModified` do not count).
    pub fn bodies_read(&self) -> u64 {
        self.lock().gets
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .expect("no test panics while holding the store")
    }

    fn not_found(&self, key: &str) -> StoreError {
        StoreError::NotFound {
            location: self.location.clone(),
            key: key.to_owned(),
        }
    }
}

fn etag(stored: &Stored) -> String {
    format!("\"{}\"", stored.version_id)
}

impl ModelStore for MemoryStore {
    fn location(&self) -> &str {
        &self.location
    }

    fn bucket(&self) -> &str {
        &self.bucket
    }

    fn get<'a>(
        &'a self,
        key: &'a str,
        version_id: Option<&'a str>,
        if_none_match: Option<&'a str>,
        max_bytes: u64,
    ) -> BoxFuture<'a, Result<Got, StoreError>> {
        async move {
            let mut state = self.lock();
            let versions = state.objects.get(key).ok_or_else(|| self.not_found(key))?;
            let stored = match version_id {
                Some(id) => versions.iter().find(|v| v.version_id == id),
                None => versions.last(),
            }
            .ok_or_else(|| self.not_found(key))?
            .clone();
            if if_none_match == Some(etag(&stored).as_str()) {
                return Ok(Got::NotModified);
            }
            if stored.bytes.len() as u64 > max_bytes {
                return Err(StoreError::TooLarge {
                    location: self.location.clone(),
                    key: key.to_owned(),
                    size: stored.bytes.len() as u64,
                    limit: max_bytes,
                });
            }
            state.gets += 1;
            Ok(Got::Object {
                etag: etag(&stored),
                bytes: stored.bytes,
            })
        }
        .boxed()
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        body: Vec<u8>,
        if_absent: bool,
    ) -> BoxFuture<'a, Result<Put, StoreError>> {
        async move {
            let mut state = self.lock();
            if if_absent && state.objects.get(key).is_some_and(|v| !v.is_empty()) {
                return Ok(Put::Exists);
            }
            state.writes += 1;
            let stored = Stored {
                version_id: format!("v{}", state.writes),
                bytes: body,
                written_ms: chrono::Utc::now().timestamp_millis(),
            };
            let id = stored.version_id.clone();
            state
                .objects
                .entry(key.to_owned())
                .or_default()
                .push(stored);
            Ok(Put::Written(Some(id)))
        }
        .boxed()
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
        delimiter: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Listing, StoreError>> {
        async move {
            let state = self.lock();
            let mut listing = Listing::default();
            let live = state
                .objects
                .iter()
                .filter(|(k, v)| k.starts_with(prefix) && !v.is_empty());
            for (key, _) in live {
                let rest = &key[prefix.len()..];
                match delimiter.and_then(|d| rest.find(d).map(|at| (d, at))) {
                    Some((d, at)) => {
                        let folder = format!("{prefix}{}{d}", &rest[..at]);
                        if listing.folders.last() != Some(&folder) {
                            listing.folders.push(folder);
                        }
                    }
                    None => listing.keys.push(key.clone()),
                }
            }
            Ok(listing)
        }
        .boxed()
    }

    fn versions<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Vec<ObjectVersion>, StoreError>> {
        async move {
            let state = self.lock();
            Ok(state
                .objects
                .get(key)
                .map(|versions| {
                    versions
                        .iter()
                        .map(|v| ObjectVersion {
                            version_id: v.version_id.clone(),
                            last_modified_ms: v.written_ms,
                        })
                        .collect()
                })
                .unwrap_or_default())
        }
        .boxed()
    }

    fn delete_version<'a>(
        &'a self,
        key: &'a str,
        version_id: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let mut state = self.lock();
            if let Some(versions) = state.objects.get_mut(key) {
                versions.retain(|v| v.version_id != version_id);
            }
            Ok(())
        }
        .boxed()
    }
}
