//! The model registry (docs/contract.md section 6), in S3 or any [`ModelStore`].
//!
//! - `models/<name>/versions/<n>/model.json`: one immutable artifact per version. Numbers are
//!   taken with a conditional write (`If-None-Match: *`), so two publishers never share one.
//! - `models/<name>/aliases/<alias>`: a small JSON record naming a version. The bucket's object
//!   versioning keeps every write of it: that history is what `rollback` reads.

use std::sync::Arc;

use aws_sdk_s3::Client;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::artifact::{ArtifactError, ModelArtifact, DEFAULT_MAX_ARTIFACT_BYTES};
use super::s3_store::S3Store;
use super::store::{Got, ModelStore, Put, StoreError};

/// How many times a publisher retries after losing a version number to another publisher.
const PUBLISH_ATTEMPTS: u32 = 32;

/// The largest alias object read: a record is about 120 bytes.
const ALIAS_MAX_BYTES: u64 = 64 << 10;

/// What an alias object holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AliasRecord {
    /// The version the alias points at.
    pub version: u64,
    /// `promote` or `rollback`: rollback replays these to find the previous version.
    pub action: String,
    /// When the alias was written.
    pub at: DateTime<Utc>,
    /// Who wrote it (user@host), for the audit trail.
    pub by: String,
}

/// An alias read with its ETag, for conditional polling.
#[derive(Debug, Clone, PartialEq)]
pub struct AliasState {
    /// The record.
    pub record: AliasRecord,
    /// The object's ETag.
    pub etag: String,
}

/// Registry failures, naming the key involved.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The store refused or could not be reached; retrying later may help.
    #[error(transparent)]
    Store(StoreError),
    /// The object does not exist.
    #[error("{location}/{key} does not exist")]
    NotFound {
        /// The store, e.g. `s3://bucket`.
        location: String,
        /// The key.
        key: String,
    },
    /// The artifact exists but cannot be served.
    #[error("model {name} version {version} cannot be served")]
    Artifact {
        /// The model name.
        name: String,
        /// The version.
        version: u64,
        /// Why.
        source: ArtifactError,
    },
    /// Something else that a person must fix (bad alias JSON, nothing to roll back to).
    #[error("{0}")]
    Invalid(String),
}

impl RegistryError {
    /// Whether a version's load failed because of the version itself (it does not validate, is
    /// another model, or does not exist): loading it again cannot help, only pointing the alias
    /// at another version can.
    pub fn is_version_fault(&self) -> bool {
        matches!(
            self,
            RegistryError::Artifact { .. }
                | RegistryError::Invalid(_)
                | RegistryError::NotFound { .. }
        )
    }
}

impl From<StoreError> for RegistryError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { location, key } => RegistryError::NotFound { location, key },
            too_large @ StoreError::TooLarge { .. } => {
                RegistryError::Invalid(too_large.to_string())
            }
            other => RegistryError::Store(other),
        }
    }
}

/// The registry over one model store.
#[derive(Debug, Clone)]
pub struct Registry {
    store: Arc<dyn ModelStore>,
    /// The largest `model.json` read, in bytes.
    max_artifact_bytes: u64,
}

/// The key of a version's artifact.
pub fn version_key(name: &str, version: u64) -> String {
    format!("models/{name}/versions/{version}/model.json")
}

/// The key of an alias.
pub fn alias_key(name: &str, alias: &str) -> String {
    format!("models/{name}/aliases/{alias}")
}

impl Registry {
    /// A registry in an S3 bucket.
    pub fn new(s3: Client, bucket: impl Into<String>) -> Self {
        Self::with_store(Arc::new(S3Store::new(s3, bucket)))
    }

    /// A registry over any store (an in-memory one in unit tests).
    pub fn with_store(store: Arc<dyn ModelStore>) -> Self {
        Self {
            store,
            max_artifact_bytes: DEFAULT_MAX_ARTIFACT_BYTES,
        }
    }

    /// The same registry refusing any `model.json` over `limit` bytes (default
    /// [`DEFAULT_MAX_ARTIFACT_BYTES`]).
    pub fn with_max_artifact_bytes(self, limit: u64) -> Self {
        Self {
            max_artifact_bytes: limit,
            ..self
        }
    }

    /// The bucket name.
    pub fn bucket(&self) -> &str {
        self.store.bucket()
    }

    /// Publishes an artifact as the next version number and returns that number.
    pub async fn publish(&self, artifact: &mut ModelArtifact) -> Result<u64, RegistryError> {
        let mut next = self
            .versions(&artifact.name)
            .await?
            .last()
            .map_or(1, |v| v + 1);
        for _ in 0..PUBLISH_ATTEMPTS {
            if !self.claim(&artifact.name, next).await? {
                tracing::info!(model = %artifact.name, version = next, "version number taken by another publisher, trying the next");
                next += 1;
                continue;
            }
            artifact.version = Some(next);
            let key = version_key(&artifact.name, next);
            if self.store.put(&key, artifact.to_json(), true).await? == Put::Exists {
                return Err(RegistryError::Invalid(format!(
                    "{}/{key} already exists although this publisher holds its claim",
                    self.store.location()
                )));
            }
            return Ok(next);
        }
        Err(RegistryError::Invalid(format!(
            "could not take a version number for model {} after {PUBLISH_ATTEMPTS} attempts",
            artifact.name
        )))
    }

    /// Takes version number `n`: a conditional write of a claim object, then a check of the
    /// claim's object versions, where the oldest claim wins. S3 refuses the second conditional
    /// write outright; emulators that let a racing write through are caught by the check, and
    /// the loser removes its own claim.
    async fn claim(&self, name: &str, n: u64) -> Result<bool, RegistryError> {
        let key = format!("models/{name}/versions/{n}/.claim");
        let ours = match self.store.put(&key, who().into_bytes(), true).await? {
            Put::Exists => return Ok(false),
            Put::Written(None) => return Ok(true),
            Put::Written(Some(ours)) => ours,
        };
        let first = self.store.versions(&key).await?.into_iter().next();
        if first.is_some_and(|v| v.version_id == ours) {
            return Ok(true);
        }
        self.store.delete_version(&key, &ours).await?;
        Ok(false)
    }

    /// Every published version number of a model, ascending.
    pub async fn versions(&self, name: &str) -> Result<Vec<u64>, RegistryError> {
        let prefix = format!("models/{name}/versions/");
        let listing = self.store.list(&prefix, Some("/")).await?;
        let mut versions: Vec<u64> = listing
            .folders
            .iter()
            .filter_map(|p| p.strip_prefix(&prefix)?.trim_end_matches('/').parse().ok())
            .collect();
        versions.sort_unstable();
        Ok(versions)
    }

    /// Every alias of a model with the version it points at, by alias name.
    pub async fn aliases(&self, name: &str) -> Result<Vec<(String, u64)>, RegistryError> {
        let prefix = format!("models/{name}/aliases/");
        let listing = self.store.list(&prefix, None).await?;
        let mut out = Vec::new();
        for alias in listing.keys.iter().filter_map(|k| k.strip_prefix(&prefix)) {
            if let Some(state) = self.alias(name, alias).await? {
                out.push((alias.to_owned(), state.record.version));
            }
        }
        Ok(out)
    }

    /// The raw bytes of a version's artifact; refused, without reading it whole, when it is
    /// over the size limit.
    pub async fn artifact_bytes(&self, name: &str, version: u64) -> Result<Vec<u8>, RegistryError> {
        let key = version_key(name, version);
        match self
            .store
            .get(&key, None, None, self.max_artifact_bytes)
            .await
        {
            Ok(Got::Object { bytes, .. }) => Ok(bytes),
            Ok(Got::NotModified) => unreachable!("no ETag was given"),
            Err(StoreError::TooLarge { size, limit, .. }) => Err(RegistryError::Artifact {
                name: name.to_owned(),
                version,
                source: ArtifactError::TooLarge { size, limit },
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Loads a version and validates it (docs/contract.md section 6).
    pub async fn load(&self, name: &str, version: u64) -> Result<ModelArtifact, RegistryError> {
        let bytes = self.artifact_bytes(name, version).await?;
        let artifact =
            ModelArtifact::from_json(&bytes).map_err(|source| RegistryError::Artifact {
                name: name.to_owned(),
                version,
                source,
            })?;
        if artifact.name != name {
            return Err(RegistryError::Invalid(format!(
                "{}/{} holds model '{}', not '{name}'",
                self.store.location(),
                version_key(name, version),
                artifact.name
            )));
        }
        Ok(artifact)
    }

    /// One stored version of an alias object.
    async fn alias_bytes(&self, key: &str, version_id: &str) -> Result<Vec<u8>, RegistryError> {
        match self
            .store
            .get(key, Some(version_id), None, ALIAS_MAX_BYTES)
            .await?
        {
            Got::Object { bytes, .. } => Ok(bytes),
            Got::NotModified => unreachable!("no ETag was given"),
        }
    }

    /// The alias record, or `None` when the alias was never set.
    pub async fn alias(
        &self,
        name: &str,
        alias: &str,
    ) -> Result<Option<AliasState>, RegistryError> {
        match self.alias_if_changed(name, alias, None).await {
            Ok(AliasPoll::Changed(state)) => Ok(Some(state)),
            Ok(AliasPoll::Unchanged) => unreachable!("no ETag was given"),
            Err(RegistryError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads the alias unless its ETag is still `etag` (a conditional GET: 304 costs no body).
    pub async fn alias_if_changed(
        &self,
        name: &str,
        alias: &str,
        etag: Option<&str>,
    ) -> Result<AliasPoll, RegistryError> {
        let key = alias_key(name, alias);
        match self.store.get(&key, None, etag, ALIAS_MAX_BYTES).await? {
            Got::NotModified => Ok(AliasPoll::Unchanged),
            Got::Object { bytes, etag } => {
                let record = parse_alias(self.store.location(), &key, &bytes)?;
                Ok(AliasPoll::Changed(AliasState { record, etag }))
            }
        }
    }

    /// Points an alias at a version (the caller has validated it).
    pub async fn set_alias(
        &self,
        name: &str,
        alias: &str,
        version: u64,
        action: &str,
    ) -> Result<AliasRecord, RegistryError> {
        let key = alias_key(name, alias);
        let record = AliasRecord {
            version,
            action: action.to_owned(),
            at: Utc::now(),
            by: who(),
        };
        let body = serde_json::to_vec(&record).expect("alias records serialize");
        self.store.put(&key, body, false).await?;
        Ok(record)
    }

    /// Every write of an alias, oldest first, from the store's object versions.
    pub async fn alias_history(
        &self,
        name: &str,
        alias: &str,
    ) -> Result<Vec<AliasRecord>, RegistryError> {
        let key = alias_key(name, alias);
        let mut entries = self.store.versions(&key).await?;
        entries.sort_by_key(|v| v.last_modified_ms);
        let mut records = Vec::with_capacity(entries.len());
        for v in entries {
            let bytes = self.alias_bytes(&key, &v.version_id).await?;
            records.push(parse_alias(self.store.location(), &key, &bytes)?);
        }
        // Same-second writes share a LastModified; the records' own times order them.
        records.sort_by_key(|r| r.at);
        Ok(records)
    }

    /// Moves an alias back to the version it pointed at before the current one.
    pub async fn rollback(&self, name: &str, alias: &str) -> Result<(u64, u64), RegistryError> {
        let history = self.alias_history(name, alias).await?;
        let mut stack = replay(&history);
        let current = stack.pop().ok_or_else(|| {
            RegistryError::Invalid(format!("alias {alias} of model {name} was never set"))
        })?;
        let previous = *stack.last().ok_or_else(|| {
            RegistryError::Invalid(format!("alias {alias} of model {name} has no earlier version to roll back to (it is at {current})"))
        })?;
        self.set_alias(name, alias, previous, "rollback").await?;
        Ok((current, previous))
    }
}

/// The result of a conditional alias read.
#[derive(Debug, Clone, PartialEq)]
pub enum AliasPoll {
    /// The ETag still matches.
    Unchanged,
    /// The alias changed (or was read for the first time).
    Changed(AliasState),
}

/// Replays alias writes: a promote pushes its version, a rollback pops the current one.
/// The last element is the current version; the one before it is where a rollback goes.
pub fn replay(history: &[AliasRecord]) -> Vec<u64> {
    let mut stack = Vec::new();
    for r in history {
        if r.action == "rollback" {
            stack.pop();
            if stack.last() != Some(&r.version) {
                stack.push(r.version);
            }
        } else {
            stack.push(r.version);
        }
    }
    stack
}

fn parse_alias(location: &str, key: &str, bytes: &[u8]) -> Result<AliasRecord, RegistryError> {
    serde_json::from_slice(bytes).map_err(|e| {
        RegistryError::Invalid(format!("{location}/{key} is not an alias record: {e}"))
    })
}

fn who() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    format!("{user}@{host}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(version: u64, action: &str) -> AliasRecord {
        AliasRecord {
            version,
            action: action.into(),
            at: Utc::now(),
            by: "t".into(),
        }
    }

    #[test]
    fn rollbacks_walk_back_through_promotions() {
        let mut h = vec![rec(1, "promote"), rec(2, "promote"), rec(3, "promote")];
        assert_eq!(replay(&h), [1, 2, 3]);
        h.push(rec(2, "rollback"));
        assert_eq!(replay(&h), [1, 2]);
        h.push(rec(1, "rollback"));
        assert_eq!(replay(&h), [1]);
        h.push(rec(4, "promote"));
        assert_eq!(replay(&h), [1, 4]);
    }
}
