//! Payloads over `aws-sdk-s3`. Reads are bounded as the model store's are: an object over the
//! limit is refused from its Content-Length before the body is read, and the body is read chunk
//! by chunk, stopping as soon as it crosses the limit.

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use futures::future::BoxFuture;
use futures::FutureExt;

use super::pointer::PayloadPointer;
use super::store::{PayloadError, PayloadStore};

/// Payloads in any bucket the worker's role may read (a pointer names its bucket).
#[derive(Debug, Clone)]
pub struct S3Payloads {
    s3: Client,
}

impl S3Payloads {
    /// The store over `s3`.
    pub fn new(s3: Client) -> Self {
        Self { s3 }
    }

    async fn get_text(
        &self,
        pointer: &PayloadPointer,
        max_bytes: u64,
    ) -> Result<String, PayloadError> {
        let failed = |e: Box<dyn std::error::Error + Send + Sync>| PayloadError::Failed {
            op: "GetObject",
            pointer: pointer.clone(),
            source: e,
        };
        let too_large = |size| PayloadError::TooLarge {
            pointer: pointer.clone(),
            size,
            limit: max_bytes,
        };
        crate::instruments::s3_request("GetObject");
        let out = match self
            .s3
            .get_object()
            .bucket(&pointer.bucket)
            .key(&pointer.key)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => {
                return Err(PayloadError::NotFound(pointer.clone()))
            }
            Err(e) => return Err(failed(Box::new(e))),
        };
        let announced = out.content_length().and_then(|n| u64::try_from(n).ok());
        if let Some(size) = announced.filter(|&size| size > max_bytes) {
            return Err(too_large(size));
        }
        // The announced size is trusted for the allocation only up to the limit, and the
        // reading stops at the limit whatever was announced.
        let capacity = announced.unwrap_or(0).min(max_bytes);
        let mut bytes = Vec::with_capacity(usize::try_from(capacity).unwrap_or(0));
        let mut body = out.body;
        while let Some(chunk) = body.try_next().await.map_err(|e| failed(Box::new(e)))? {
            let size = (bytes.len() + chunk.len()) as u64;
            if size > max_bytes {
                return Err(too_large(size));
            }
            bytes.extend_from_slice(&chunk);
        }
        String::from_utf8(bytes).map_err(|_| PayloadError::NotText(pointer.clone()))
    }
}

impl PayloadStore for S3Payloads {
    fn get<'a>(
        &'a self,
        pointer: &'a PayloadPointer,
        max_bytes: u64,
    ) -> BoxFuture<'a, Result<String, PayloadError>> {
        self.get_text(pointer, max_bytes).boxed()
    }

    fn put<'a>(
        &'a self,
        pointer: &'a PayloadPointer,
        body: String,
    ) -> BoxFuture<'a, Result<(), PayloadError>> {
        async move {
            crate::instruments::s3_request("PutObject");
            self.s3
                .put_object()
                .bucket(&pointer.bucket)
                .key(&pointer.key)
                .body(ByteStream::from(body.into_bytes()))
                .send()
                .await
                .map_err(|e| PayloadError::Failed {
                    op: "PutObject",
                    pointer: pointer.clone(),
                    source: Box::new(e),
                })?;
            Ok(())
        }
        .boxed()
    }

    fn delete<'a>(
        &'a self,
        pointer: &'a PayloadPointer,
    ) -> BoxFuture<'a, Result<(), PayloadError>> {
        async move {
            crate::instruments::s3_request("DeleteObject");
            self.s3
                .delete_object()
                .bucket(&pointer.bucket)
                .key(&pointer.key)
                .send()
                .await
                .map_err(|e| PayloadError::Failed {
                    op: "DeleteObject",
                    pointer: pointer.clone(),
                    source: Box::new(e),
                })?;
            Ok(())
        }
        .boxed()
    }
}
