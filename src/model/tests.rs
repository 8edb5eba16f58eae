//! The registry and the model holder over the in-memory store: version numbers, aliases,
//! rollback, and hot reload by conditional reads. (The same against S3 in LocalStack is in
//! `tests/registry.rs`.)

use std::sync::Arc;

use super::artifact::test_artifact;
use super::holder::{ModelHolder, ModelSource, PollOutcome};
use super::memory_store::MemoryStore;
use super::registry::{Registry, RegistryError};
use super::store::{ModelStore, Put};

fn registry() -> (Registry, MemoryStore) {
    let store = MemoryStore::new("models");
    (Registry::with_store(Arc::new(store.clone())), store)
}

/// Publishes the test model, promotes it, and serves it from `production`.
async fn served(registry: &Registry) -> (u64, ModelHolder) {
    let v1 = registry.publish(&mut test_artifact()).await.unwrap();
    registry
        .set_alias("banknote", "production", v1, "promote")
        .await
        .unwrap();
    let source = ModelSource::Alias("production".into());
    let holder = ModelHolder::load(registry.clone(), "banknote", source)
        .await
        .unwrap();
    (v1, holder)
}

#[tokio::test]
async fn versions_count_up_and_aliases_roll_back_through_their_history() {
    let (registry, _) = registry();
    let v1 = registry.publish(&mut test_artifact()).await.unwrap();
    let v2 = registry.publish(&mut test_artifact()).await.unwrap();
    assert_eq!((v1, v2), (1, 2));
    assert_eq!(registry.versions("banknote").await.unwrap(), [1, 2]);
    assert_eq!(registry.load("banknote", 2).await.unwrap().version, Some(2));
    registry
        .set_alias("banknote", "production", 1, "promote")
        .await
        .unwrap();
    registry
        .set_alias("banknote", "production", 2, "promote")
        .await
        .unwrap();
    assert_eq!(
        registry.aliases("banknote").await.unwrap(),
        [("production".to_owned(), 2)]
    );
    assert_eq!(
        registry.rollback("banknote", "production").await.unwrap(),
        (2, 1)
    );
    let err = registry
        .rollback("banknote", "production")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no earlier version"), "{err}");
    assert!(matches!(
        registry.load("banknote", 9).await,
        Err(RegistryError::NotFound { .. })
    ));
}

#[tokio::test]
async fn a_version_number_claimed_by_another_publisher_is_not_reused() {
    let (registry, store) = registry();
    // Another publisher holds the claim on version 1 without having written its artifact yet.
    let claim = "models/banknote/versions/1/.claim";
    assert!(matches!(
        store.put(claim, b"other".to_vec(), true).await.unwrap(),
        Put::Written(_)
    ));
    assert_eq!(
        store.put(claim, b"me".to_vec(), true).await.unwrap(),
        Put::Exists
    );
    assert_eq!(registry.publish(&mut test_artifact()).await.unwrap(), 2);
}

#[tokio::test]
async fn the_holder_swaps_in_a_promoted_version_and_reads_no_body_while_the_alias_is_unchanged() {
    let (registry, store) = registry();
    let (v1, holder) = served(&registry).await;
    assert_eq!(holder.current().version, v1);
    let bodies = store.bodies_read();
    assert_eq!(holder.poll_once().await.unwrap(), PollOutcome::Unchanged);
    assert_eq!(
        store.bodies_read(),
        bodies,
        "an unchanged alias costs no body"
    );

    let v2 = registry.publish(&mut test_artifact()).await.unwrap();
    registry
        .set_alias("banknote", "production", v2, "promote")
        .await
        .unwrap();
    assert_eq!(
        holder.poll_once().await.unwrap(),
        PollOutcome::Swapped { from: v1, to: v2 }
    );
    assert_eq!((holder.current().version, holder.reloads()), (v2, 1));
}

#[tokio::test]
async fn a_version_that_cannot_be_loaded_is_never_served() {
    let (registry, store) = registry();
    let (v1, holder) = served(&registry).await;
    let broken = "models/banknote/versions/2/model.json";
    store
        .put(broken, b"{\"format\": 1".to_vec(), true)
        .await
        .unwrap();
    registry
        .set_alias("banknote", "production", 2, "promote")
        .await
        .unwrap();
    assert!(holder.poll_once().await.is_err());
    assert_eq!((holder.current().version, holder.failures()), (v1, 1));
}
