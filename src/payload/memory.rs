//! Payloads in memory, for unit tests of the worker's reading and writing of pointers.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use futures::FutureExt;

use super::pointer::PayloadPointer;
use super::store::{PayloadError, PayloadStore};

/// An in-memory payload store; clones share the same objects.
#[derive(Debug, Clone, Default)]
pub struct MemoryPayloads {
    objects: Arc<Mutex<BTreeMap<(String, String), String>>>,
}

impl MemoryPayloads {
    /// Stores an object as a producer would.
    pub fn insert(&self, pointer: &PayloadPointer, body: impl Into<String>) {
        self.lock()
            .insert((pointer.bucket.clone(), pointer.key.clone()), body.into());
    }

    /// The object at `pointer`, if any.
    pub fn object(&self, pointer: &PayloadPointer) -> Option<String> {
        self.lock()
            .get(&(pointer.bucket.clone(), pointer.key.clone()))
            .cloned()
    }

    /// How many objects it holds.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), String>> {
        self.objects
            .lock()
            .expect("no test panics while holding the store")
    }
}

impl PayloadStore for MemoryPayloads {
    fn get<'a>(
        &'a self,
        pointer: &'a PayloadPointer,
        max_bytes: u64,
    ) -> BoxFuture<'a, Result<String, PayloadError>> {
        let found = self.object(pointer);
        async move {
            let body = found.ok_or_else(|| PayloadError::NotFound(pointer.clone()))?;
            if body.len() as u64 > max_bytes {
                return Err(PayloadError::TooLarge {
                    pointer: pointer.clone(),
                    size: body.len() as u64,
                    limit: max_bytes,
                });
            }
            Ok(body)
        }
        .boxed()
    }

    fn put<'a>(
        &'a self,
        pointer: &'a PayloadPointer,
        body: String,
    ) -> BoxFuture<'a, Result<(), PayloadError>> {
        self.insert(pointer, body);
        async { Ok(()) }.boxed()
    }

    fn delete<'a>(
        &'a self,
        pointer: &'a PayloadPointer,
    ) -> BoxFuture<'a, Result<(), PayloadError>> {
        self.lock()
            .remove(&(pointer.bucket.clone(), pointer.key.clone()));
        async { Ok(()) }.boxed()
    }
}
