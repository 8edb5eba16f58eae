//! The registry and the model holder over the in-memory store: version numbers, aliases,
//! rollback, hot reload by conditional reads, and every broken version refused at load and at
//! promote. (The same against S3 in LocalStack is in `tests/integration/registry.rs`.)

use std::sync::Arc;

use serde_json::Value;

use super::artifact::{test_artifact, test_artifact_with, ArtifactError, Kernel, ModelArtifact};
use super::checks::{FieldError, REFERENCE_TOLERANCE};
use super::holder::{ModelHolder, ModelSource, PollOutcome};
use super::memory_store::MemoryStore;
use super::registry::{version_key, Registry, RegistryError};
use super::store::{ModelStore, Put};
use crate::commands::models::promote;

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

// --- A broken model is never served (issue 12, item 8) ---------------------------------------

/// The JSON path of a Gaussian artifact's support vectors (ndarray's serde form:
/// `{"v": 1, "dim": [rows, cols], "data": [...]}`).
const SUPPORT: &str = "/svm/sep_hyperplane/WeightedCombination";

/// The stored JSON of `artifact` as version 2, after `edit`.
fn edited(artifact: &ModelArtifact, edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut json: Value = serde_json::from_slice(&artifact.to_json()).unwrap();
    json["version"] = 2.into();
    edit(&mut json);
    serde_json::to_vec(&json).unwrap()
}

/// Rewrites the support vectors as `rows` vectors `cols` wide: the original values where
/// there are some, 0.5 beyond.
fn reshape_support(json: &mut Value, rows: usize, cols: usize) {
    let support = json.pointer_mut(SUPPORT).unwrap();
    let width = support["dim"][1].as_u64().unwrap() as usize;
    let data: Vec<f64> = serde_json::from_value(support["data"].clone()).unwrap();
    let reshaped: Vec<f64> = (0..rows)
        .flat_map(|r| (0..cols).map(move |c| (r, c)))
        .map(|(r, c)| if c < width { data[r * width + c] } else { 0.5 })
        .collect();
    support["dim"] = serde_json::json!([rows, cols]);
    support["data"] = serde_json::json!(reshaped);
}

fn support_rows(artifact: &ModelArtifact) -> usize {
    let json: Value = serde_json::from_slice(&artifact.to_json()).unwrap();
    json.pointer(SUPPORT).unwrap()["dim"][0].as_u64().unwrap() as usize
}

/// The field a load refused, or a panic naming what else happened.
fn refused_field(err: &RegistryError) -> &FieldError {
    match err {
        RegistryError::Artifact {
            source: ArtifactError::Field(field),
            ..
        } => field,
        other => panic!("expected a refused field, got: {other}"),
    }
}

/// The operator's path: `good` is published and served as version 1; `bytes` is uploaded by
/// hand as version 2; `models promote` is tried, then the alias is pointed at it by hand. Checks
/// that promote refused it and left the alias, and that the holder kept serving version 1 and
/// counted the failure; returns the holder's error.
async fn uploaded_by_hand(good: ModelArtifact, bytes: Vec<u8>) -> RegistryError {
    let (registry, store) = registry();
    let v1 = registry.publish(&mut good.clone()).await.unwrap();
    registry
        .set_alias("banknote", "production", v1, "promote")
        .await
        .unwrap();
    let holder = ModelHolder::load(
        registry.clone(),
        "banknote",
        ModelSource::Alias("production".into()),
    )
    .await
    .unwrap();
    store
        .put(&version_key("banknote", 2), bytes, true)
        .await
        .unwrap();

    let promoted = promote(&registry, "banknote", 2, "production", false).await;
    let err = promoted.expect_err("promote refuses the version");
    let message = format!("{err:#}");
    assert!(
        message.contains("refusing to promote banknote version 2"),
        "{message}"
    );
    let alias = registry.alias("banknote", "production").await.unwrap();
    assert_eq!(alias.unwrap().record.version, v1, "promote left the alias");

    registry
        .set_alias("banknote", "production", 2, "promote")
        .await
        .unwrap();
    let err = holder.poll_once().await.unwrap_err();
    assert_eq!(
        holder.current().version,
        v1,
        "the old version keeps serving"
    );
    assert_eq!((holder.failures(), holder.refused().await), (1, Some(2)));
    err
}

#[tokio::test]
async fn support_vectors_narrower_than_the_spec_are_refused() {
    let good = test_artifact_with(Kernel::Gaussian);
    let rows = support_rows(&good);
    let bytes = edited(&good, |json| reshape_support(json, rows, 3));
    let err = uploaded_by_hand(good, bytes).await;
    let field = refused_field(&err);
    assert_eq!(field.field, "svm.sep_hyperplane.WeightedCombination");
    assert_eq!(
        (field.expected.as_str(), field.found.as_str()),
        (
            "support vectors 4 values wide (one per feature in the spec)",
            "3 values wide"
        )
    );
    let message = crate::text::error_chain(&err);
    for part in [
        "model banknote version 2 cannot be served: model artifact is inconsistent: svm.sep_hyperplane.WeightedCombination: expected",
        "publish a retrained version",
    ] {
        assert!(message.contains(part), "{part:?} in {message}");
    }
    assert_eq!(
        message.matches("WeightedCombination").count(),
        1,
        "said once: {message}"
    );
}

#[tokio::test]
async fn fewer_support_vectors_than_coefficients_are_refused() {
    let good = test_artifact_with(Kernel::Gaussian);
    let rows = support_rows(&good);
    assert!(rows >= 2, "the test model has {rows} support vectors");
    let bytes = edited(&good, |json| reshape_support(json, rows - 1, 4));
    let err = uploaded_by_hand(good, bytes).await;
    let field = refused_field(&err);
    assert_eq!(field.field, "svm.sep_hyperplane.WeightedCombination");
    assert!(
        field
            .expected
            .starts_with(&format!("{rows} support vectors (one per coefficient")),
        "{field}"
    );
    assert_eq!(field.found, (rows - 1).to_string());
}

#[tokio::test]
async fn support_vectors_wider_than_the_spec_are_refused() {
    let good = test_artifact_with(Kernel::Gaussian);
    let rows = support_rows(&good);
    let bytes = edited(&good, |json| reshape_support(json, rows, 5));
    let err = uploaded_by_hand(good, bytes).await;
    let field = refused_field(&err);
    assert_eq!(field.field, "svm.sep_hyperplane.WeightedCombination");
    assert_eq!(field.found, "5 values wide");
}

#[tokio::test]
async fn linear_weights_that_do_not_match_the_spec_are_refused() {
    let good = test_artifact();
    let bytes = edited(&good, |json| {
        let weights = json.pointer_mut("/svm/sep_hyperplane/Linear").unwrap();
        weights["dim"] = serde_json::json!([3]);
        weights["data"].as_array_mut().unwrap().pop();
    });
    let err = uploaded_by_hand(good, bytes).await;
    let field = refused_field(&err);
    assert_eq!(
        (field.field.as_str(), field.found.as_str()),
        ("svm.sep_hyperplane.Linear", "3")
    );
}

#[tokio::test]
async fn a_gaussian_width_of_zero_or_below_is_refused() {
    for width in [0.0, -4.0] {
        let good = test_artifact_with(Kernel::Gaussian);
        let bytes = edited(&good, |json| {
            json["svm"]["kernel_method"] = serde_json::json!({ "Gaussian": width });
        });
        let err = uploaded_by_hand(good, bytes).await;
        let field = refused_field(&err);
        assert_eq!(field.field, "svm.kernel_method.Gaussian");
        assert_eq!(field.found, width.to_string());
    }
}

#[test]
fn non_finite_coefficients_offsets_and_widths_are_refused() {
    let good = test_artifact_with(Kernel::Gaussian);
    good.validate().unwrap();
    type Break = fn(&mut ModelArtifact);
    let cases: [(&str, Break); 3] = [
        ("svm.alpha[3]", |a| a.svm.alpha[3] = f64::NAN),
        ("svm.rho", |a| a.svm.rho = f64::INFINITY),
        ("reference.rows[1][2]", |a| {
            a.reference.as_mut().unwrap().rows[1][2] = f64::NAN
        }),
    ];
    for (field, break_it) in cases {
        let mut broken = good.clone();
        break_it(&mut broken);
        match broken.validate() {
            Err(ArtifactError::Field(f)) => {
                assert_eq!(f.field, field);
                assert_eq!(f.expected, "a finite number");
            }
            other => panic!("{field}: {other:?}"),
        }
    }
    // JSON has no NaN or infinity: a number out of f64's range does not even parse.
    let too_big = edited(&good, |json| json["svm"]["rho"] = serde_json::json!(1.0));
    let too_big = String::from_utf8(too_big)
        .unwrap()
        .replace("\"rho\":1.0", "\"rho\":1e999");
    assert!(matches!(
        ModelArtifact::from_json(too_big.as_bytes()),
        Err(ArtifactError::Unreadable(_))
    ));
}

#[tokio::test]
async fn a_model_json_over_the_size_limit_is_refused() {
    let (registry, _) = registry();
    let v1 = registry.publish(&mut test_artifact()).await.unwrap();
    let size = registry.artifact_bytes("banknote", v1).await.unwrap().len() as u64;
    let limited = registry.clone().with_max_artifact_bytes(size - 1);
    match limited.load("banknote", v1).await {
        Err(RegistryError::Artifact {
            source: ArtifactError::TooLarge { size: s, limit },
            ..
        }) => assert_eq!((s, limit), (size, size - 1)),
        other => panic!("{other:?}"),
    }
    let err = crate::text::error_chain(&limited.load("banknote", v1).await.unwrap_err());
    assert!(err.contains("ML_PIPELINE_MODEL_MAX_BYTES"), "{err}");
    let exact = registry.with_max_artifact_bytes(size);
    assert!(
        exact.load("banknote", v1).await.is_ok(),
        "the limit is inclusive"
    );
}

#[tokio::test]
async fn a_reference_set_that_disagrees_is_refused_even_when_every_shape_is_right() {
    let good = test_artifact_with(Kernel::Gaussian);
    // One support vector value edited: every shape stays right, the decision values move.
    let moved_support = edited(&good, |json| {
        let data = &mut json.pointer_mut(SUPPORT).unwrap()["data"][0];
        *data = (data.as_f64().unwrap() * 1.5 + 0.5).into();
    });
    let err = uploaded_by_hand(good.clone(), moved_support).await;
    let field = refused_field(&err);
    assert!(
        field.field.starts_with("reference.decision_values["),
        "{field}"
    );
    assert!(field.found.contains("reference rows disagree"), "{field}");

    // A recorded value off by more than the tolerance.
    let recorded = good.reference.as_ref().unwrap().decision_values[5];
    let off = recorded + 10.0 * REFERENCE_TOLERANCE * recorded.abs().max(1.0);
    let moved_value = edited(&good, |json| {
        json["reference"]["decision_values"][5] = off.into();
    });
    let err = uploaded_by_hand(good.clone(), moved_value).await;
    assert_eq!(refused_field(&err).field, "reference.decision_values[5]");

    // Within the tolerance is accepted.
    let mut close = good;
    let reference = close.reference.as_mut().unwrap();
    reference.decision_values[5] += 0.1 * REFERENCE_TOLERANCE;
    close.validate().unwrap();
}

#[tokio::test]
async fn a_version_without_a_reference_set_is_accepted_with_a_warning() {
    let (registry, store) = registry();
    let old = edited(&test_artifact_with(Kernel::Gaussian), |json| {
        json.as_object_mut().unwrap().remove("reference");
    });
    store
        .put(&version_key("banknote", 2), old, true)
        .await
        .unwrap();
    assert_eq!(registry.load("banknote", 2).await.unwrap().reference, None);
    let out = promote(&registry, "banknote", 2, "production", false)
        .await
        .unwrap();
    assert!(
        out.contains("warning: version 2 has no reference set"),
        "{out}"
    );
}

#[tokio::test]
async fn a_refused_version_is_counted_and_logged_once_and_a_new_promotion_is_tried_again() {
    let (registry, store) = registry();
    let (v1, holder) = served(&registry).await;
    let bad = edited(&test_artifact(), |json| {
        json["svm"]["rho"] = serde_json::json!("not a number");
    });
    store
        .put(&version_key("banknote", 2), bad, true)
        .await
        .unwrap();
    registry
        .set_alias("banknote", "production", 2, "promote")
        .await
        .unwrap();
    assert!(holder.poll_once().await.is_err());
    let bodies = store.bodies_read();
    for _ in 0..3 {
        assert_eq!(holder.poll_once().await.unwrap(), PollOutcome::Unchanged);
    }
    assert_eq!(
        store.bodies_read(),
        bodies,
        "the refused version is not read again"
    );
    assert_eq!((holder.failures(), holder.refused().await), (1, Some(2)));

    // Promoting it again is a new decision: it is tried, and refused, once more.
    registry
        .set_alias("banknote", "production", 2, "promote")
        .await
        .unwrap();
    assert!(holder.poll_once().await.is_err());
    assert_eq!(holder.failures(), 2);

    // A good version is swapped in, and nothing is refused any more.
    let v3 = registry.publish(&mut test_artifact()).await.unwrap();
    registry
        .set_alias("banknote", "production", v3, "promote")
        .await
        .unwrap();
    assert_eq!(
        holder.poll_once().await.unwrap(),
        PollOutcome::Swapped { from: v1, to: v3 }
    );
    assert_eq!(holder.refused().await, None);
}
