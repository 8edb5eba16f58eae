//! The model store over `aws-sdk-s3`: a bucket with object versioning, conditional writes
//! (`If-None-Match: *`) and conditional reads (an unchanged ETag answers 304, no body). Reads
//! are bounded: an object over the caller's limit is refused from its Content-Length before the
//! body is read, and the body is read chunk by chunk, stopping as soon as it crosses the limit.

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use futures::future::BoxFuture;
use futures::FutureExt;

use super::store::{Got, Listing, ModelStore, ObjectVersion, Put, StoreError};

/// One S3 bucket.
#[derive(Debug, Clone)]
pub struct S3Store {
    s3: Client,
    bucket: String,
    location: String,
}

impl S3Store {
    /// The store in `bucket`.
    pub fn new(s3: Client, bucket: impl Into<String>) -> Self {
        let bucket = bucket.into();
        Self {
            s3,
            location: format!("s3://{bucket}"),
            bucket,
        }
    }

    fn failed<E>(&self, op: &'static str, key: &str, e: E) -> StoreError
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        StoreError::Failed {
            op,
            location: self.location.clone(),
            key: key.to_owned(),
            source: Box::new(e),
        }
    }

    fn not_found(&self, key: &str) -> StoreError {
        StoreError::NotFound {
            location: self.location.clone(),
            key: key.to_owned(),
        }
    }

    fn too_large(&self, key: &str, size: u64, limit: u64) -> StoreError {
        StoreError::TooLarge {
            location: self.location.clone(),
            key: key.to_owned(),
            size,
            limit,
        }
    }

    async fn get_object(
        &self,
        key: &str,
        version_id: Option<&str>,
        if_none_match: Option<&str>,
        max_bytes: u64,
    ) -> Result<Got, StoreError> {
        crate::instruments::s3_request("GetObject");
        let out = self
            .s3
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .set_version_id(version_id.map(str::to_owned))
            .set_if_none_match(if_none_match.map(str::to_owned))
            .send()
            .await;
        let out = match out {
            Ok(out) => out,
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 304) => {
                return Ok(Got::NotModified)
            }
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => {
                return Err(self.not_found(key))
            }
            Err(e) => return Err(self.failed("GetObject", key, e)),
        };
        let etag = out.e_tag().unwrap_or_default().to_owned();
        let announced = out.content_length().and_then(|n| u64::try_from(n).ok());
        if let Some(size) = announced.filter(|&size| size > max_bytes) {
            return Err(self.too_large(key, size, max_bytes));
        }
        // The announced size is trusted for the allocation only up to the limit, and the reading
        // stops at the limit whatever was announced.
        let capacity = announced.unwrap_or(0).min(max_bytes);
        let mut bytes = Vec::with_capacity(usize::try_from(capacity).unwrap_or(0));
        let mut body = out.body;
        while let Some(chunk) = body
            .try_next()
            .await
            .map_err(|e| self.failed("GetObject", key, e))?
        {
            let size = (bytes.len() + chunk.len()) as u64;
            if size > max_bytes {
                return Err(self.too_large(key, size, max_bytes));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(Got::Object { bytes, etag })
    }

    async fn put_object(
        &self,
        key: &str,
        body: Vec<u8>,
        if_absent: bool,
    ) -> Result<Put, StoreError> {
        crate::instruments::s3_request("PutObject");
        let put = self
            .s3
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/json")
            .set_if_none_match(if_absent.then(|| "*".to_owned()))
            .body(ByteStream::from(body))
            .send()
            .await;
        match put {
            Ok(out) => Ok(Put::Written(out.version_id().map(str::to_owned))),
            Err(e)
                if if_absent
                    && matches!(
                        e.code(),
                        Some("PreconditionFailed" | "ConditionalRequestConflict")
                    ) =>
            {
                Ok(Put::Exists)
            }
            Err(e) => Err(self.failed("PutObject", key, e)),
        }
    }

    async fn list_keys(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
    ) -> Result<Listing, StoreError> {
        let mut listing = Listing::default();
        let mut pages = self
            .s3
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .set_delimiter(delimiter.map(str::to_owned))
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            crate::instruments::s3_request("ListObjectsV2");
            let page = page.map_err(|e| self.failed("ListObjectsV2", prefix, e))?;
            listing.keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_owned)),
            );
            listing.folders.extend(
                page.common_prefixes()
                    .iter()
                    .filter_map(|p| p.prefix().map(str::to_owned)),
            );
        }
        Ok(listing)
    }

    async fn list_versions(&self, key: &str) -> Result<Vec<ObjectVersion>, StoreError> {
        let mut versions = Vec::new();
        let mut req = self
            .s3
            .list_object_versions()
            .bucket(&self.bucket)
            .prefix(key);
        loop {
            crate::instruments::s3_request("ListObjectVersions");
            let page = req
                .clone()
                .send()
                .await
                .map_err(|e| self.failed("ListObjectVersions", key, e))?;
            versions.extend(
                page.versions()
                    .iter()
                    .filter(|v| v.key() == Some(key))
                    .filter_map(|v| {
                        Some(ObjectVersion {
                            version_id: v.version_id()?.to_owned(),
                            last_modified_ms: v
                                .last_modified()
                                .and_then(|t| t.to_millis().ok())
                                .unwrap_or_default(),
                        })
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
        // S3 lists the versions of a key newest first.
        versions.reverse();
        Ok(versions)
    }

    async fn delete_object_version(&self, key: &str, version_id: &str) -> Result<(), StoreError> {
        crate::instruments::s3_request("DeleteObject");
        self.s3
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .version_id(version_id)
            .send()
            .await
            .map_err(|e| self.failed("DeleteObject", key, e))?;
        Ok(())
    }
}

impl ModelStore for S3Store {
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
        self.get_object(key, version_id, if_none_match, max_bytes)
            .boxed()
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        body: Vec<u8>,
        if_absent: bool,
    ) -> BoxFuture<'a, Result<Put, StoreError>> {
        self.put_object(key, body, if_absent).boxed()
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
        delimiter: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Listing, StoreError>> {
        self.list_keys(prefix, delimiter).boxed()
    }

    fn versions<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Vec<ObjectVersion>, StoreError>> {
        self.list_versions(key).boxed()
    }

    fn delete_version<'a>(
        &'a self,
        key: &'a str,
        version_id: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.delete_object_version(key, version_id).boxed()
    }
}
