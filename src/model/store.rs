//! The model-store seam: the few object-store calls the registry makes. [`super::s3_store`]
//! implements it over `aws-sdk-s3` (a versioned bucket), [`super::memory_store`] in memory for
//! unit tests. Methods return boxed futures so the registry can hold any store as a trait
//! object.

use futures::future::BoxFuture;

/// What a read found.
#[derive(Debug, Clone, PartialEq)]
pub enum Got {
    /// The object's bytes and its ETag.
    Object {
        /// The body.
        bytes: Vec<u8>,
        /// The ETag, for a later conditional read.
        etag: String,
    },
    /// The ETag given still matches: no body was sent.
    NotModified,
}

/// What a conditional write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Put {
    /// Written; the new object version's id, when the store keeps versions.
    Written(Option<String>),
    /// The key already existed and the write asked for an absent key: nothing was written.
    Exists,
}

/// One stored version of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectVersion {
    /// The version's id.
    pub version_id: String,
    /// When it was written, in milliseconds since the epoch.
    pub last_modified_ms: i64,
}

/// What a listing found under a prefix.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// Keys directly under the prefix (all keys when no delimiter was given).
    pub keys: Vec<String>,
    /// With a delimiter: the distinct "folders" (prefix + next part + delimiter).
    pub folders: Vec<String>,
}

/// A store call that failed; `NotFound` and `TooLarge` are answers, `Failed` may pass on retry.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The key (or that version of it) does not exist.
    #[error("{location}/{key} does not exist")]
    NotFound {
        /// The store, e.g. `s3://bucket`.
        location: String,
        /// The key.
        key: String,
    },
    /// The object is larger than the read allows; no more of it than the limit was read.
    #[error("{location}/{key} is {size} bytes or more, over the limit of {limit} bytes")]
    TooLarge {
        /// The store, e.g. `s3://bucket`.
        location: String,
        /// The key.
        key: String,
        /// Its size when the store announced it, else the bytes read when the limit was crossed.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The call failed: the store refused it or could not be reached.
    #[error("{op} on {location}/{key} failed")]
    Failed {
        /// The operation (`GetObject`, `PutObject`...).
        op: &'static str,
        /// The store, e.g. `s3://bucket`.
        location: String,
        /// The key or prefix.
        key: String,
        /// What the client reported, with its causes.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// An object store with versioned keys and conditional requests.
pub trait ModelStore: Send + Sync + std::fmt::Debug {
    /// Where it is, for messages: `s3://bucket`.
    fn location(&self) -> &str;

    /// The bucket (or namespace) name.
    fn bucket(&self) -> &str;

    /// Reads a key, or one version of it; with `if_none_match`, answers `NotModified` while the
    /// ETag still matches. An object over `max_bytes` is refused with `TooLarge`, from its
    /// announced size before the body is read, or as soon as the bytes read cross the limit.
    fn get<'a>(
        &'a self,
        key: &'a str,
        version_id: Option<&'a str>,
        if_none_match: Option<&'a str>,
        max_bytes: u64,
    ) -> BoxFuture<'a, Result<Got, StoreError>>;

    /// Writes a key; with `if_absent`, only when it does not exist yet.
    fn put<'a>(
        &'a self,
        key: &'a str,
        body: Vec<u8>,
        if_absent: bool,
    ) -> BoxFuture<'a, Result<Put, StoreError>>;

    /// The keys under a prefix; with a delimiter, also the folders below it.
    fn list<'a>(
        &'a self,
        prefix: &'a str,
        delimiter: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Listing, StoreError>>;

    /// Every stored version of one key, oldest first.
    fn versions<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Vec<ObjectVersion>, StoreError>>;

    /// Deletes one version of a key.
    fn delete_version<'a>(
        &'a self,
        key: &'a str,
        version_id: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
}
