//! The model registry in S3 (CONTRACT.md section 6).
//!
//! - `models/<name>/versions/<n>/model.json`: one immutable artifact per version. Numbers are
//!   taken with a conditional write (`If-None-Match: *`), so two publishers never share one.
//! - `models/<name>/aliases/<alias>`: a small JSON record naming a version. The bucket's object
//!   versioning keeps every write of it: that history is what `rollback` reads.

use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::artifact::{ArtifactError, ModelArtifact};

/// How many times a publisher retries after losing a version number to another publisher.
const PUBLISH_ATTEMPTS: u32 = 32;

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
    /// S3 refused or could not be reached; retrying later may help.
    #[error("S3 {op} on s3://{bucket}/{key} failed: {message}")]
    S3 {
        /// The operation.
        op: &'static str,
        /// The bucket.
        bucket: String,
        /// The key or prefix.
        key: String,
        /// The SDK's error with its cause chain.
        message: String,
    },
    /// The object does not exist.
    #[error("s3://{bucket}/{key} does not exist")]
    NotFound {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
    },
    /// The artifact exists but cannot be served.
    #[error("model {name} version {version}: {source}")]
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

/// The registry over one bucket.
#[derive(Debug, Clone)]
pub struct Registry {
    s3: Client,
    bucket: String,
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
    /// A registry in `bucket`.
    pub fn new(s3: Client, bucket: impl Into<String>) -> Self {
        Self {
            s3,
            bucket: bucket.into(),
        }
    }

    /// The bucket name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    fn s3_error<E>(&self, op: &'static str, key: &str, e: E) -> RegistryError
    where
        E: std::error::Error + 'static,
    {
        RegistryError::S3 {
            op,
            bucket: self.bucket.clone(),
            key: key.to_owned(),
            message: DisplayErrorContext(e).to_string(),
        }
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
            self.s3
                .put_object()
                .bucket(&self.bucket)
                .key(&key)
                .content_type("application/json")
                .if_none_match("*")
                .body(ByteStream::from(artifact.to_json()))
                .send()
                .await
                .map_err(|e| self.s3_error("PutObject", &key, e))?;
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
        let put = self
            .s3
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .if_none_match("*")
            .body(ByteStream::from(who().into_bytes()))
            .send()
            .await;
        let ours = match put {
            Ok(out) => out.version_id().map(str::to_owned),
            Err(e)
                if matches!(
                    e.code(),
                    Some("PreconditionFailed" | "ConditionalRequestConflict")
                ) =>
            {
                return Ok(false)
            }
            Err(e) => return Err(self.s3_error("PutObject", &key, e)),
        };
        let Some(ours) = ours else { return Ok(true) };
        let listed = self
            .s3
            .list_object_versions()
            .bucket(&self.bucket)
            .prefix(&key)
            .send()
            .await
            .map_err(|e| self.s3_error("ListObjectVersions", &key, e))?;
        // Listed newest first: the last version of the key is the first claim.
        let first = listed
            .versions()
            .iter()
            .filter(|v| v.key() == Some(key.as_str()))
            .filter_map(|v| v.version_id())
            .next_back();
        if first == Some(ours.as_str()) {
            return Ok(true);
        }
        self.s3
            .delete_object()
            .bucket(&self.bucket)
            .key(&key)
            .version_id(&ours)
            .send()
            .await
            .map_err(|e| self.s3_error("DeleteObject", &key, e))?;
        Ok(false)
    }

    /// Every published version number of a model, ascending.
    pub async fn versions(&self, name: &str) -> Result<Vec<u64>, RegistryError> {
        let prefix = format!("models/{name}/versions/");
        let mut versions = Vec::new();
        let mut pages = self
            .s3
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&prefix)
            .delimiter("/")
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.s3_error("ListObjectsV2", &prefix, e))?;
            versions.extend(page.common_prefixes().iter().filter_map(|p| {
                p.prefix()?
                    .strip_prefix(&prefix)?
                    .trim_end_matches('/')
                    .parse::<u64>()
                    .ok()
            }));
        }
        versions.sort_unstable();
        Ok(versions)
    }

    /// Every alias of a model with the version it points at, by alias name.
    pub async fn aliases(&self, name: &str) -> Result<Vec<(String, u64)>, RegistryError> {
        let prefix = format!("models/{name}/aliases/");
        let page = self
            .s3
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&prefix)
            .send()
            .await
            .map_err(|e| self.s3_error("ListObjectsV2", &prefix, e))?;
        let mut out = Vec::new();
        for alias in page
            .contents()
            .iter()
            .filter_map(|o| o.key()?.strip_prefix(&prefix))
        {
            if let Some(state) = self.alias(name, alias).await? {
                out.push((alias.to_owned(), state.record.version));
            }
        }
        Ok(out)
    }

    /// The raw bytes of a version's artifact.
    pub async fn artifact_bytes(&self, name: &str, version: u64) -> Result<Vec<u8>, RegistryError> {
        self.get(&version_key(name, version), None).await
    }

    /// Loads and validates a version.
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
                "s3://{}/{} holds model '{}', not '{name}'",
                self.bucket,
                version_key(name, version),
                artifact.name
            )));
        }
        Ok(artifact)
    }

    async fn get(&self, key: &str, version_id: Option<&str>) -> Result<Vec<u8>, RegistryError> {
        let out = self
            .s3
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .set_version_id(version_id.map(str::to_owned))
            .send()
            .await;
        match out {
            Ok(out) => Ok(out
                .body
                .collect()
                .await
                .map_err(|e| self.s3_error("GetObject", key, e))?
                .to_vec()),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => {
                Err(RegistryError::NotFound {
                    bucket: self.bucket.clone(),
                    key: key.to_owned(),
                })
            }
            Err(e) => Err(self.s3_error("GetObject", key, e)),
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
        let out = self
            .s3
            .get_object()
            .bucket(&self.bucket)
            .key(&key)
            .set_if_none_match(etag.map(str::to_owned))
            .send()
            .await;
        let out = match out {
            Ok(out) => out,
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 304) => {
                return Ok(AliasPoll::Unchanged)
            }
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => {
                return Err(RegistryError::NotFound {
                    bucket: self.bucket.clone(),
                    key,
                });
            }
            Err(e) => return Err(self.s3_error("GetObject", &key, e)),
        };
        let etag = out.e_tag().unwrap_or_default().to_owned();
        let bytes = out
            .body
            .collect()
            .await
            .map_err(|e| self.s3_error("GetObject", &key, e))?
            .to_vec();
        let record = parse_alias(&self.bucket, &key, &bytes)?;
        Ok(AliasPoll::Changed(AliasState { record, etag }))
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
        self.s3
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .content_type("application/json")
            .body(ByteStream::from(
                serde_json::to_vec(&record).expect("alias records serialize"),
            ))
            .send()
            .await
            .map_err(|e| self.s3_error("PutObject", &key, e))?;
        Ok(record)
    }

    /// Every write of an alias, oldest first, from the bucket's object versions.
    pub async fn alias_history(
        &self,
        name: &str,
        alias: &str,
    ) -> Result<Vec<AliasRecord>, RegistryError> {
        let key = alias_key(name, alias);
        let mut entries = Vec::new();
        let mut req = self
            .s3
            .list_object_versions()
            .bucket(&self.bucket)
            .prefix(&key);
        loop {
            let page = req
                .clone()
                .send()
                .await
                .map_err(|e| self.s3_error("ListObjectVersions", &key, e))?;
            entries.extend(
                page.versions()
                    .iter()
                    .filter(|v| v.key() == Some(key.as_str()))
                    .filter_map(|v| {
                        Some((v.last_modified().copied()?, v.version_id()?.to_owned()))
                    }),
            );
            match (
                page.is_truncated(),
                page.next_key_marker(),
                page.next_version_id_marker(),
            ) {
                (Some(true), Some(k), Some(v)) => req = req.key_marker(k).version_id_marker(v),
                _ => break,
            }
        }
        entries.sort_by_key(|e| e.0);
        let mut records = Vec::with_capacity(entries.len());
        for (_, version_id) in entries {
            let bytes = self.get(&key, Some(&version_id)).await?;
            records.push(parse_alias(&self.bucket, &key, &bytes)?);
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

fn parse_alias(bucket: &str, key: &str, bytes: &[u8]) -> Result<AliasRecord, RegistryError> {
    serde_json::from_slice(bytes).map_err(|e| {
        RegistryError::Invalid(format!("s3://{bucket}/{key} is not an alias record: {e}"))
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
