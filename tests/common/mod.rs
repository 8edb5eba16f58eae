//! The test environment: every test gets its own randomly named PostgreSQL database, MongoDB
//! database, S3 bucket and SQS queues on the real local services (`make up`), so tests never
//! share state and run in parallel.
#![allow(dead_code)]

pub mod harness;

use std::sync::OnceLock;
use std::time::Duration;

use aws_sdk_s3::types::{BucketVersioningStatus, VersioningConfiguration};
use ml_pipeline::enrich::mongo::MongoDocuments;
use ml_pipeline::enrich::postgres::PgReference;
use ml_pipeline::enrich::Enricher;
use ml_pipeline::fixtures::{self, FixtureSet};
use ml_pipeline::model::registry::Registry;
use ml_pipeline::spec::PipelineSpec;
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;

/// A short random suffix for resource names.
pub fn suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// The admin URL of the local PostgreSQL (the project role may create databases).
pub fn database_url() -> String {
    env_or(
        "DATABASE_URL",
        "postgres://ml_pipeline:ml_pipeline@127.0.0.1:5432/ml_pipeline",
    )
}

/// The local MongoDB URI.
pub fn mongodb_uri() -> String {
    env_or("MONGODB_URI", "mongodb://127.0.0.1:27017")
}

/// The default fixture set, read once.
pub fn default_fixtures() -> &'static FixtureSet {
    static SET: OnceLock<FixtureSet> = OnceLock::new();
    SET.get_or_init(|| {
        fixtures::read_set(&fixtures::files::default_dir()).expect("fixtures/default is readable")
    })
}

/// AWS SDK config for the local endpoint (from AWS_ENDPOINT_URL), with test defaults.
pub async fn aws() -> aws_config::SdkConfig {
    for (k, v) in [
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
    ] {
        if std::env::var(k).is_err() {
            // Tests run in one process; setting the same defaults from several threads is benign.
            unsafe { std::env::set_var(k, v) };
        }
    }
    if std::env::var("AWS_ENDPOINT_URL").is_err() {
        unsafe { std::env::set_var("AWS_ENDPOINT_URL", "http://127.0.0.1:4566") };
    }
    ml_pipeline::aws::sdk_config(Duration::from_secs(30)).await
}

/// A fresh PostgreSQL database with the migrations applied.
pub struct TestDb {
    pub pool: PgPool,
    pub name: String,
    pub url: SecretString,
}

impl TestDb {
    pub async fn new() -> Self {
        let admin = PgPool::connect(&database_url())
            .await
            .expect("PostgreSQL is up (make up)");
        let name = format!("test_{}", suffix());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .expect("create database");
        let base = database_url();
        let url = format!(
            "{}/{name}",
            &base[..base.rfind('/').expect("a database URL has a path")]
        );
        let pool = ml_pipeline::db::connect(&url.clone().into(), 8)
            .await
            .expect("connect to the test database");
        ml_pipeline::db::migrate(&pool)
            .await
            .expect("migrations apply");
        Self {
            pool,
            name,
            url: url.into(),
        }
    }
}

/// A fresh MongoDB database.
pub async fn mongo_db() -> mongodb::Database {
    let name = format!("test_{}", suffix());
    ml_pipeline::mongo::connect(&mongodb_uri().into(), &name)
        .await
        .expect("MongoDB is up (make up)")
}

/// A PostgreSQL database and a MongoDB database loaded with the default fixtures.
pub struct Loaded {
    pub db: TestDb,
    pub mongo: mongodb::Database,
    pub enricher: Enricher<PgReference, MongoDocuments>,
}

impl Loaded {
    pub async fn new() -> Self {
        let db = TestDb::new().await;
        let mongo = mongo_db().await;
        fixtures::load::load(
            default_fixtures(),
            &PipelineSpec::banknote(),
            &db.pool,
            &mongo,
            "default",
        )
        .await
        .expect("fixtures load");
        let enricher = Enricher {
            reference: PgReference::new(db.pool.clone()),
            documents: MongoDocuments::new(mongo.clone()),
        };
        Self {
            db,
            mongo,
            enricher,
        }
    }

    pub fn mongo_uri(&self) -> SecretString {
        mongodb_uri().into()
    }
}

/// A fresh versioned S3 bucket.
pub async fn bucket() -> (aws_sdk_s3::Client, String) {
    let s3 = ml_pipeline::aws::s3(&aws().await, true);
    let name = format!("test-{}", suffix());
    s3.create_bucket()
        .bucket(&name)
        .send()
        .await
        .expect("LocalStack S3 is up (make up)");
    s3.put_bucket_versioning()
        .bucket(&name)
        .versioning_configuration(
            VersioningConfiguration::builder()
                .status(BucketVersioningStatus::Enabled)
                .build(),
        )
        .send()
        .await
        .expect("enable versioning");
    (s3, name)
}

/// A registry in a fresh bucket.
pub async fn registry() -> Registry {
    let (s3, name) = bucket().await;
    Registry::new(s3, name)
}

/// Reads a secret for a test assertion.
pub fn expose(s: &SecretString) -> &str {
    s.expose_secret()
}

/// Training options on the loaded default dataset.
pub fn train_options(kernel: &str, dry_run: bool) -> ml_pipeline::train::TrainOptions {
    ml_pipeline::train::TrainOptions {
        spec: PipelineSpec::banknote(),
        source: ml_pipeline::train::DataSource::Postgres {
            dataset: "default".into(),
        },
        params: params(kernel),
        kernel_cache_bytes: 256 << 20,
        dry_run,
        search: None,
        html_report: None,
        trigger: None,
    }
}

/// The CLI's default hyperparameters for a kernel.
pub fn params(kernel: &str) -> ml_pipeline::model::artifact::TrainParams {
    ml_pipeline::model::artifact::TrainParams::with_kernel(kernel.parse().unwrap())
}

/// A Gaussian model fitted once per test binary on the default notes' canonical features.
pub fn fixture_artifact() -> ml_pipeline::model::ModelArtifact {
    static ARTIFACT: OnceLock<ml_pipeline::model::ModelArtifact> = OnceLock::new();
    ARTIFACT
        .get_or_init(|| {
            let set = default_fixtures();
            let x = ndarray::Array2::from_shape_vec(
                (set.notes.len(), 4),
                set.notes.iter().flat_map(|n| n.features()).collect(),
            )
            .unwrap();
            let y: Vec<bool> = set.notes.iter().map(|n| n.label == 1).collect();
            let mut p = params("gaussian");
            p.folds = 2;
            let (classifier, metrics, _, _) = ml_pipeline::train::fit::train_and_evaluate(
                &x,
                &y,
                &p,
                &ml_pipeline::train::control::Control::new(),
                &mut |_, _, _| {},
            )
            .unwrap();
            let reference = ml_pipeline::model::ReferenceSet::compute(
                &classifier,
                ml_pipeline::train::fit::reference_rows(&x, &y, &p),
            );
            ml_pipeline::model::ModelArtifact {
                format: ml_pipeline::model::ARTIFACT_FORMAT,
                name: "banknote".into(),
                version: None,
                spec: PipelineSpec::banknote(),
                scaler: classifier.scaler,
                svm: classifier.svm,
                class_names: [(0, "fake".to_owned()), (1, "real".to_owned())].into(),
                params: p,
                metrics,
                data_fingerprint: "sha256:test".into(),
                data_source: "fixtures/default/notes.csv".into(),
                crate_version: env!("CARGO_PKG_VERSION").into(),
                created_at: chrono::Utc::now(),
                reference: Some(reference),
                training_stats: Some(ml_pipeline::model::TrainingStats::compute(
                    &PipelineSpec::banknote().feature_names(),
                    x.view(),
                )),
            }
        })
        .clone()
}

/// Publishes the fixture model and points `production` at it.
pub async fn published(registry: &Registry) -> (u64, ml_pipeline::model::ModelArtifact) {
    let mut artifact = fixture_artifact();
    let v = registry.publish(&mut artifact).await.unwrap();
    registry
        .set_alias("banknote", "production", v, "promote")
        .await
        .unwrap();
    (v, artifact)
}
