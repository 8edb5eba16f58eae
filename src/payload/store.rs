//! The payload-store seam: read, write and delete one object. [`super::s3::S3Payloads`]
//! implements it over `aws-sdk-s3`, [`super::memory::MemoryPayloads`] in memory for unit tests.
//! Boxed futures, so the worker holds any store as a trait object.

use futures::future::BoxFuture;

use super::pointer::PayloadPointer;

/// Why a payload could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    /// The object does not exist (deleted, expired, or never written): retrying cannot help.
    #[error("the Extended Client payload {0} does not exist: the pointer message cannot be read; send the bundle again")]
    NotFound(PayloadPointer),
    /// The object is over the body limit; no more of it than the limit was read.
    #[error("the Extended Client payload {pointer} is {size} bytes or more, more than the limit of {limit} (ML_PIPELINE_MAX_BODY_BYTES)")]
    TooLarge {
        /// Where it is.
        pointer: PayloadPointer,
        /// Its size as announced, else the bytes read when the limit was crossed.
        size: u64,
        /// The body limit.
        limit: u64,
    },
    /// The object is not UTF-8 text, as a message body must be.
    #[error("the Extended Client payload {0} is not UTF-8 text, as a message body must be")]
    NotText(PayloadPointer),
    /// The message has the size attribute of an offloaded message, but its body is no pointer.
    #[error("{0}")]
    Malformed(String),
    /// The worker has no payload store (unit tests; production always has one).
    #[error(
        "the message is an Extended Client pointer to {0}, but this worker reads no large payloads"
    )]
    NotConfigured(PayloadPointer),
    /// The call failed: S3 refused it or could not be reached; retrying may help.
    #[error("{op} of the Extended Client payload {pointer} failed")]
    Failed {
        /// `GetObject`, `PutObject` or `DeleteObject`.
        op: &'static str,
        /// Where.
        pointer: PayloadPointer,
        /// What the client reported, with its causes.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl PayloadError {
    /// Whether a later try may succeed (S3 unreachable or throttling), as opposed to an answer
    /// about the object itself.
    pub fn is_retryable(&self) -> bool {
        matches!(self, PayloadError::Failed { .. })
    }
}

/// An object store holding offloaded bodies.
pub trait PayloadStore: Send + Sync + std::fmt::Debug {
    /// Reads an object as text. One over `max_bytes` is refused with `TooLarge`, from its
    /// announced size before the body is read, or as soon as the bytes read cross the limit.
    fn get<'a>(
        &'a self,
        pointer: &'a PayloadPointer,
        max_bytes: u64,
    ) -> BoxFuture<'a, Result<String, PayloadError>>;

    /// Writes an object.
    fn put<'a>(
        &'a self,
        pointer: &'a PayloadPointer,
        body: String,
    ) -> BoxFuture<'a, Result<(), PayloadError>>;

    /// Deletes an object; deleting one that is gone succeeds.
    fn delete<'a>(&'a self, pointer: &'a PayloadPointer)
        -> BoxFuture<'a, Result<(), PayloadError>>;
}
