//! Training and the S3 registry on the real services: train, publish, list, promote, load through
//! the holder, swap without restart, refuse corrupt and hand-edited artifacts, roll back, publish
//! concurrently.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use ml_pipeline::commands::models as commands;
use ml_pipeline::model::holder::{ModelHolder, ModelSource, PollOutcome};
use ml_pipeline::model::registry::version_key;
use ml_pipeline::model::registry::{Registry, RegistryError};
use ml_pipeline::model::{ArtifactError, ModelArtifact};
use ml_pipeline::spec::PipelineSpec;
use ndarray::Array2;

fn canonical_matrix() -> Array2<f64> {
    let set = common::default_fixtures();
    Array2::from_shape_vec(
        (set.notes.len(), 4),
        set.notes.iter().flat_map(|n| n.features()).collect(),
    )
    .unwrap()
}

#[tokio::test]
async fn train_publish_promote_and_serve_bit_for_bit() {
    let loaded = common::Loaded::new().await;
    let registry = common::registry().await;
    let html = std::env::temp_dir().join(format!("train-report-{}.html", common::suffix()));
    let mut opts = common::train_options("gaussian", false);
    opts.html_report = Some(html.clone());
    let (report, trained) =
        ml_pipeline::train::train(&opts, &loaded.db.pool, &loaded.enricher, Some(&registry))
            .await
            .unwrap();
    assert_eq!(report.version, Some(1));
    assert!(
        report.metrics.cv_accuracy >= 0.97,
        "Gaussian CV accuracy {}",
        report.metrics.cv_accuracy
    );
    let (linear, _) = ml_pipeline::train::train(
        &common::train_options("linear", true),
        &loaded.db.pool,
        &loaded.enricher,
        None,
    )
    .await
    .unwrap();
    assert_eq!(linear.version, None, "a dry run publishes nothing");
    assert!(
        report.metrics.cv_accuracy >= linear.metrics.cv_accuracy,
        "gaussian {} < linear {}",
        report.metrics.cv_accuracy,
        linear.metrics.cv_accuracy
    );

    let (status, rows, report_path): (String, i64, Option<String>) =
        sqlx::query_as("SELECT status, rows, report_path FROM training_jobs WHERE job_id = $1")
            .bind(report.job_id)
            .fetch_one(&loaded.db.pool)
            .await
            .unwrap();
    assert_eq!((status.as_str(), rows), ("succeeded", 2000));
    // The HTML report is where the job row and the JSON report say, with every figure.
    let report_path = report_path.expect("the job row names the HTML report");
    assert_eq!(report.html_report.as_deref(), Some(report_path.as_str()));
    assert_eq!(std::path::Path::new(&report_path), html.as_path());
    let page = std::fs::read_to_string(&report_path).unwrap();
    for id in [
        "confusion-matrix",
        "score-distribution",
        "roc-curve",
        "cv-folds",
    ] {
        assert!(page.contains(&format!("<figure id=\"{id}\">")), "{id}");
    }
    assert!(!page.contains("search-accuracy"), "no search ran");
    std::fs::remove_file(&html).unwrap();

    assert!(commands::list(&registry, "banknote")
        .await
        .unwrap()
        .contains("gaussian"));
    commands::promote(&registry, "banknote", 1, "production", true)
        .await
        .unwrap();
    let holder = ModelHolder::load(
        registry.clone(),
        "banknote",
        ModelSource::Alias("production".into()),
    )
    .await
    .unwrap();
    let served = holder.current();
    assert_eq!(served.version, 1);
    assert_eq!(
        served.artifact, trained,
        "the loaded artifact equals the trained one"
    );
    let x = canonical_matrix();
    let a = served.classifier.decision_values(x.clone());
    let b = trained.classifier().decision_values(x);
    assert!(
        a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()),
        "loaded predictions differ from in-memory ones"
    );
}

#[tokio::test]
async fn a_promotion_swaps_the_served_model_without_restart_and_rollback_undoes_it() {
    let registry = common::registry().await;
    let (v1, _) = common::published(&registry).await;
    let holder = Arc::new(
        ModelHolder::load(
            registry.clone(),
            "banknote",
            ModelSource::Alias("production".into()),
        )
        .await
        .unwrap(),
    );
    assert_eq!(holder.poll_once().await.unwrap(), PollOutcome::Unchanged);

    let mut second = common::fixture_artifact();
    let v2 = registry.publish(&mut second).await.unwrap();
    let in_flight = holder.current();
    commands::promote(&registry, "banknote", v2, "production", false)
        .await
        .unwrap();
    assert_eq!(
        holder.poll_once().await.unwrap(),
        PollOutcome::Swapped { from: v1, to: v2 }
    );
    assert_eq!(holder.current().version, v2);
    assert_eq!(
        in_flight.version, v1,
        "a batch keeps the model it started with"
    );
    assert_eq!(holder.reloads(), 1);

    let (from, to) = registry.rollback("banknote", "production").await.unwrap();
    assert_eq!((from, to), (v2, v1));
    assert_eq!(
        holder.poll_once().await.unwrap(),
        PollOutcome::Swapped { from: v2, to: v1 }
    );
    assert!(
        registry.rollback("banknote", "production").await.is_err(),
        "nothing before version 1"
    );
}

#[tokio::test]
async fn a_corrupt_version_is_refused_and_the_old_model_keeps_serving() {
    let registry = common::registry().await;
    let (v1, _) = common::published(&registry).await;
    let holder = ModelHolder::load(
        registry.clone(),
        "banknote",
        ModelSource::Alias("production".into()),
    )
    .await
    .unwrap();
    let (s3, bucket) = (common::aws().await, registry.bucket().to_owned());
    let s3 = ml_pipeline::aws::s3(&s3, true);
    let mut bad = common::fixture_artifact().to_json();
    bad.truncate(bad.len() / 2);
    s3.put_object()
        .bucket(&bucket)
        .key(version_key("banknote", 2))
        .body(ByteStream::from(bad))
        .send()
        .await
        .unwrap();

    let err = commands::promote(&registry, "banknote", 2, "production", false)
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("unreadable"), "{err:#}");
    // Even an alias moved by hand does not make the holder serve it.
    registry
        .set_alias("banknote", "production", 2, "promote")
        .await
        .unwrap();
    assert!(holder.poll_once().await.is_err());
    assert_eq!(holder.current().version, v1);
    assert_eq!(holder.failures(), 1);

    // A future format is refused with a message saying so.
    let mut future: serde_json::Value =
        serde_json::from_slice(&common::fixture_artifact().to_json()).unwrap();
    future["format"] = 99.into();
    let err = ModelArtifact::from_json(&serde_json::to_vec(&future).unwrap()).unwrap_err();
    assert!(err.to_string().contains("format 99 is newer"), "{err}");
}

/// `artifact`'s JSON as version `version` with its support vectors reshaped to `rows` x `cols`
/// (the original values, 0.5 beyond them), as an operator's hand edit would.
fn with_support(artifact: &ModelArtifact, version: u64, rows: usize, cols: usize) -> Vec<u8> {
    let mut json: serde_json::Value = serde_json::from_slice(&artifact.to_json()).unwrap();
    json["version"] = version.into();
    let support = json
        .pointer_mut("/svm/sep_hyperplane/WeightedCombination")
        .unwrap();
    let width = support["dim"][1].as_u64().unwrap() as usize;
    let data: Vec<f64> = serde_json::from_value(support["data"].clone()).unwrap();
    let reshaped: Vec<f64> = (0..rows * cols)
        .map(|i| (i / cols, i % cols))
        .map(|(r, c)| if c < width { data[r * width + c] } else { 0.5 })
        .collect();
    support["dim"] = serde_json::json!([rows, cols]);
    support["data"] = serde_json::json!(reshaped);
    serde_json::to_vec(&json).unwrap()
}

#[tokio::test]
async fn hand_edited_versions_are_refused_by_promote_and_never_served() {
    let registry = common::registry().await;
    let (v1, good) = common::published(&registry).await;
    let holder = ModelHolder::load(
        registry.clone(),
        "banknote",
        ModelSource::Alias("production".into()),
    )
    .await
    .unwrap();
    let x = canonical_matrix();
    let served_before = holder.current().classifier.decision_values(x.clone());
    let s3 = ml_pipeline::aws::s3(&common::aws().await, true);
    let bucket = registry.bucket().to_owned();
    let upload = |version: u64, body: Vec<u8>| {
        s3.put_object()
            .bucket(&bucket)
            .key(version_key("banknote", version))
            .body(ByteStream::from(body))
            .send()
    };
    let rows = good.metrics.support_vectors;
    upload(2, with_support(&good, 2, rows, 3)).await.unwrap();
    upload(3, with_support(&good, 3, 10, 4)).await.unwrap();

    // (version, what is expected, what was found)
    let refusals = [
        (
            2,
            "support vectors 4 values wide (one per feature in the spec)".to_owned(),
            "3 values wide",
        ),
        (
            3,
            format!("{rows} support vectors (one per coefficient in svm.alpha above"),
            "10",
        ),
    ];
    for (version, expected, found) in refusals {
        let err = commands::promote(&registry, "banknote", version, "production", false)
            .await
            .unwrap_err();
        let message = format!("{err:#}");
        for part in [
            format!("refusing to promote banknote version {version}"),
            format!("svm.sep_hyperplane.WeightedCombination: expected {expected}"),
            format!("found {found}. This is not what train writes"),
        ] {
            assert!(message.contains(&part), "{part:?} in {message}");
        }
        assert_eq!(
            message.matches("WeightedCombination").count(),
            1,
            "{message}"
        );
        let alias = registry.alias("banknote", "production").await.unwrap();
        assert_eq!(alias.unwrap().record.version, v1, "promote left the alias");
    }

    // Even an alias moved by hand does not make the holder serve it; the refusal is counted
    // once, and later polls (a 304 on the same alias write) do not try it again.
    registry
        .set_alias("banknote", "production", 2, "promote")
        .await
        .unwrap();
    let err = holder.poll_once().await.unwrap_err();
    assert!(err.to_string().contains("version 2"), "{err}");
    assert_eq!(holder.poll_once().await.unwrap(), PollOutcome::Unchanged);
    assert_eq!((holder.failures(), holder.refused().await), (1, Some(2)));
    let served = holder.current();
    assert_eq!(served.version, v1);
    let served_after = served.classifier.decision_values(x);
    assert!(
        served_before
            .iter()
            .zip(&served_after)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "version 1 keeps serving exactly as before"
    );
}

#[tokio::test]
async fn a_model_json_over_the_size_limit_is_refused_by_load_and_promote_on_s3() {
    let registry = common::registry().await;
    let (v1, _) = common::published(&registry).await;
    let size = registry.artifact_bytes("banknote", v1).await.unwrap().len() as u64;
    let s3 = ml_pipeline::aws::s3(&common::aws().await, true);
    let limited = Registry::new(s3, registry.bucket()).with_max_artifact_bytes(size - 1);
    match limited.load("banknote", v1).await {
        Err(RegistryError::Artifact {
            source: ArtifactError::TooLarge { size: found, limit },
            ..
        }) => assert_eq!((found, limit), (size, size - 1)),
        other => panic!("expected a size refusal, got {other:?}"),
    }
    assert!(
        commands::promote(&limited, "banknote", v1, "production", false)
            .await
            .is_err(),
        "promote refuses it too"
    );
}

#[tokio::test]
async fn concurrent_publishers_get_distinct_versions() {
    let registry = common::registry().await;
    let (mut a, mut b, mut c) = (
        common::fixture_artifact(),
        common::fixture_artifact(),
        common::fixture_artifact(),
    );
    let (ra, rb, rc) = tokio::join!(
        registry.publish(&mut a),
        registry.publish(&mut b),
        registry.publish(&mut c)
    );
    let mut versions = vec![ra.unwrap(), rb.unwrap(), rc.unwrap()];
    versions.sort_unstable();
    assert_eq!(versions, [1, 2, 3]);
    assert_eq!(registry.versions("banknote").await.unwrap(), [1, 2, 3]);
}

#[tokio::test]
async fn a_reduced_feature_list_needs_only_a_spec_change() {
    let loaded = common::Loaded::new().await;
    let mut opts = common::train_options("gaussian", true);
    opts.spec = opts
        .spec
        .with_features(&["variance", "skewness", "entropy"])
        .unwrap();
    let (report, artifact) =
        ml_pipeline::train::train(&opts, &loaded.db.pool, &loaded.enricher, None)
            .await
            .unwrap();
    assert_eq!(report.features, ["variance", "skewness", "entropy"]);
    assert_eq!(artifact.scaler.offsets().len(), 3);
    assert!(
        report.metrics.cv_accuracy > 0.85,
        "{}",
        report.metrics.cv_accuracy
    );
    // The worker's preprocessing builds the three-column matrix from the same spec.
    let bundles: Vec<_> = common::default_fixtures()
        .bundles
        .iter()
        .take(2)
        .cloned()
        .map(ml_pipeline::bundle::InputBundle::Request)
        .collect();
    let prepared = ml_pipeline::batch::prepare(&artifact.spec, &bundles, &loaded.enricher).await;
    assert_eq!(prepared.matrix.ncols(), 3);
    assert_eq!(
        artifact.classifier().decision_values(prepared.matrix).len(),
        prepared
            .plans
            .iter()
            .flatten()
            .flat_map(|p| &p.slots)
            .filter(|s| matches!(s, ml_pipeline::batch::Slot::Row { .. }))
            .count()
    );
}

#[tokio::test]
async fn raw_request_rows_train_through_the_worker_preprocessing() {
    let loaded = common::Loaded::new().await;
    let set = common::default_fixtures();
    let labels: std::collections::HashMap<&str, u8> = set
        .notes
        .iter()
        .map(|n| (n.note_id.as_str(), n.label))
        .collect();
    let dir = std::env::temp_dir().join(format!("raw-{}", common::suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("raw.jsonl");
    let mut lines = String::new();
    for b in &set.bundles {
        for row in b.rows.iter() {
            let mut obj: serde_json::Map<String, serde_json::Value> =
                b.columns.iter().cloned().zip(row.to_values()).collect();
            let note = set.expectations[row.get(0).as_str().unwrap()]
                .note_id
                .as_str();
            obj.insert("label".into(), labels[note].into());
            lines.push_str(&serde_json::Value::Object(obj).to_string());
            lines.push('\n');
        }
    }
    std::fs::write(&path, lines).unwrap();
    let mut opts = common::train_options("gaussian", true);
    opts.source = ml_pipeline::train::DataSource::File {
        path,
        form: ml_pipeline::train::data::Form::Raw,
        label_column: "label".into(),
    };
    let (report, _) = ml_pipeline::train::train(&opts, &loaded.db.pool, &loaded.enricher, None)
        .await
        .unwrap();
    let planted = set
        .expectations
        .values()
        .filter(|e| e.error.is_some())
        .count();
    assert_eq!(
        report.skipped_rows.values().sum::<usize>(),
        planted,
        "{:?}",
        report.skipped_rows
    );
    assert_eq!(report.metrics.train_rows, 2000 - planted);
    assert!(
        report.metrics.cv_accuracy >= 0.97,
        "{}",
        report.metrics.cv_accuracy
    );
}

/// A TCP path to LocalStack that the test can cut: while cut, connections to it are refused
/// (the listener is closed and open connections dropped), as when S3 is unreachable.
struct Cuttable {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Cuttable {
    async fn open(port: u16) -> Self {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let upstream = std::env::var("AWS_ENDPOINT_URL")
            .unwrap_or_else(|_| "http://127.0.0.1:4566".into())
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let task = tokio::spawn(async move {
            let mut links = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                let upstream = upstream.clone();
                links.spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
            }
        });
        Self { port, task }
    }

    /// Closes the listener and every open connection (aborting the task drops them all).
    fn cut(self) -> u16 {
        self.task.abort();
        self.port
    }
}

#[tokio::test]
async fn s3_unreachable_during_a_reload_keeps_the_old_model_serving() {
    let registry = common::registry().await;
    let (v1, _) = common::published(&registry).await;
    let path = Cuttable::open(0).await;
    let sdk = common::aws().await;
    let through_path = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&sdk)
            .endpoint_url(format!("http://127.0.0.1:{}", path.port))
            .force_path_style(true)
            .build(),
    );
    let holder = ModelHolder::load(
        Registry::new(through_path, registry.bucket()),
        "banknote",
        ModelSource::Alias("production".into()),
    )
    .await
    .unwrap();
    assert_eq!(holder.current().version, v1);

    let port = path.cut();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut second = common::fixture_artifact();
    let v2 = registry.publish(&mut second).await.unwrap();
    commands::promote(&registry, "banknote", v2, "production", false)
        .await
        .unwrap();
    let err = holder.poll_once().await.unwrap_err();
    assert_eq!(
        holder.current().version,
        v1,
        "the old model keeps serving: {err}"
    );
    assert_eq!(holder.failures(), 1);
    let features = PipelineSpec::banknote().example_features;
    let example = Array2::from_shape_vec((1, features.len()), features).unwrap();
    assert!(holder.current().classifier.decision_values(example)[0].is_finite());

    // S3 is back: the next poll picks the promoted version up.
    let _path = Cuttable::open(port).await;
    assert_eq!(
        holder.poll_once().await.unwrap(),
        PollOutcome::Swapped { from: v1, to: v2 }
    );
}
