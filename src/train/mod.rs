//! Training: read labelled rows, preprocess them with the worker's own stages, fit and
//! evaluate, record the job in PostgreSQL and publish the model as a new registry version.

pub mod control;
pub mod data;
pub mod fit;
pub mod report;
pub mod search;
pub mod solver;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use sqlx::PgPool;

use crate::enrich::{DocumentSource, Enricher, ReferenceSource};
use crate::model::artifact::{ModelArtifact, TrainParams, ARTIFACT_FORMAT};
use crate::model::checks::ReferenceSet;
use crate::model::registry::Registry;
use crate::spec::PipelineSpec;
use data::{Form, TrainingData};
pub use report::TrainReport;

/// Where training rows come from.
#[derive(Debug, Clone)]
pub enum DataSource {
    /// The `training_examples` table, one dataset (canonical form).
    Postgres {
        /// The dataset name.
        dataset: String,
    },
    /// A CSV, JSON or JSON-lines file.
    File {
        /// The file.
        path: PathBuf,
        /// Canonical or raw rows.
        form: Form,
        /// The column holding the class (`label`; the predecessor's CSV says `class`).
        label_column: String,
    },
}

/// Everything a training run needs besides its connections.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// The spec to train for (its feature list decides the model's features).
    pub spec: PipelineSpec,
    /// The rows.
    pub source: DataSource,
    /// Hyperparameters.
    pub params: TrainParams,
    /// The kernel-column cache of a Gaussian fit, in bytes (split between parallel fits).
    pub kernel_cache_bytes: u64,
    /// Fit and evaluate but publish nothing.
    pub dry_run: bool,
    /// Search this grid first and train with the best candidate.
    pub search: Option<search::Grid>,
}

/// Reads the rows of a source.
pub async fn load_data<R: ReferenceSource, D: DocumentSource>(
    spec: &PipelineSpec,
    source: &DataSource,
    pool: &PgPool,
    enricher: &Enricher<R, D>,
) -> anyhow::Result<TrainingData> {
    match source {
        DataSource::Postgres { dataset } => {
            let rows = data::postgres_rows(pool, dataset).await?;
            data::canonical(
                spec,
                &rows,
                &format!("postgres:training_examples/{dataset}"),
                data::LABEL_COLUMN,
            )
        }
        DataSource::File {
            path,
            form,
            label_column,
        } => {
            let rows = data::read_rows(path)?;
            let name = format!("file:{}", path.display());
            match form {
                Form::Canonical => data::canonical(spec, &rows, &name, label_column),
                Form::Raw => data::raw(spec, &rows, &name, enricher, label_column).await,
            }
        }
    }
}

/// Runs a whole training job: data, fit, evaluation, job row, publish. Returns the report and
/// the artifact as published (with its version set).
pub async fn train<R: ReferenceSource, D: DocumentSource>(
    opts: &TrainOptions,
    pool: &PgPool,
    enricher: &Enricher<R, D>,
    registry: Option<&Registry>,
) -> anyhow::Result<(TrainReport, ModelArtifact)> {
    opts.spec.validate()?;
    let started = Instant::now();
    let data = load_data(&opts.spec, &opts.source, pool, enricher).await?;
    let data_seconds = started.elapsed().as_secs_f64();
    let fingerprint = data.fingerprint(&opts.spec);
    if !data.skipped.is_empty() {
        tracing::warn!(
            skipped = data.skipped.len(),
            kept = data.y.len(),
            "raw rows refused by preprocessing were left out"
        );
    }

    let job_id = record_start(pool, opts, &data, &fingerprint).await?;
    let control = control::Control::new().with_kernel_cache(opts.kernel_cache_bytes);
    let mut progress = progress_reporter(data.y.len());
    let (params, searched) = match &opts.search {
        None => (opts.params.clone(), None),
        Some(grid) => {
            let threads = std::thread::available_parallelism().map_or(1, usize::from);
            match search::search(
                &data.x,
                &data.y,
                &opts.params,
                grid,
                threads,
                &control,
                &mut progress,
            ) {
                Ok(found) => {
                    eprint!("{found}");
                    let best = found.best_params(&opts.params);
                    record_search(pool, job_id, &found, &best).await?;
                    (best, Some(found))
                }
                Err(e) => {
                    record_failure(pool, job_id, &e.to_string()).await;
                    return Err(e.into());
                }
            }
        }
    };
    let fitted = fit::train_and_evaluate(&data.x, &data.y, &params, &control, &mut progress);
    let (classifier, metrics, times) = match fitted {
        Ok(v) => v,
        Err(e) => {
            record_failure(pool, job_id, &e.to_string()).await;
            return Err(e.into());
        }
    };
    let reference =
        ReferenceSet::compute(&classifier, fit::reference_rows(&data.x, &data.y, &params));
    let mut artifact = ModelArtifact {
        format: ARTIFACT_FORMAT,
        name: opts.spec.name.clone(),
        version: None,
        spec: opts.spec.clone(),
        scaler: classifier.scaler,
        svm: classifier.svm,
        class_names: [(0, "fake".to_owned()), (1, "real".to_owned())].into(),
        params: params.clone(),
        metrics,
        data_fingerprint: fingerprint,
        data_source: data.source.clone(),
        crate_version: env!("CARGO_PKG_VERSION").to_owned(),
        created_at: chrono::Utc::now(),
        reference: Some(reference),
    };
    artifact
        .validate()
        .context("the freshly trained model does not validate")?;
    let version = match (opts.dry_run, registry) {
        (false, Some(registry)) => Some(registry.publish(&mut artifact).await?),
        (false, None) => anyhow::bail!(
            "no model registry to publish to: set ML_PIPELINE_MODEL_BUCKET or pass --dry-run"
        ),
        (true, _) => None,
    };
    let mut report = TrainReport::new(&artifact, version, &data, data_seconds, times, job_id);
    report.search = searched;
    record_finish(pool, job_id, &report).await?;
    Ok((report, artifact))
}

/// A progress bar on a terminal, plain progress lines otherwise.
fn progress_reporter(rows: usize) -> impl FnMut(usize, usize, &str) {
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} fits  {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar
    });
    move |done, total, what| match &bar {
        Some(bar) => {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
            bar.set_message(what.to_owned());
            if done == total {
                bar.finish_and_clear();
            }
        }
        None => eprintln!("train: {done}/{total} fits done ({what}, {rows} rows)"),
    }
}

async fn record_start(
    pool: &PgPool,
    opts: &TrainOptions,
    data: &TrainingData,
    fingerprint: &str,
) -> anyhow::Result<i64> {
    let (id,): (i64,) = sqlx::query_as(
        "INSERT INTO training_jobs (model_name, status, data_source, data_fingerprint, rows, params) \
         VALUES ($1, 'running', $2, $3, $4, $5) RETURNING job_id",
    )
    .bind(&opts.spec.name)
    .bind(&data.source)
    .bind(fingerprint)
    .bind(data.y.len() as i64)
    .bind(serde_json::to_value(&opts.params)?)
    .fetch_one(pool)
    .await
    .context("recording the training job in training_jobs")?;
    Ok(id)
}

/// Records the search, and the parameters it chose as the job's parameters.
async fn record_search(
    pool: &PgPool,
    job_id: i64,
    found: &search::Search,
    chosen: &TrainParams,
) -> anyhow::Result<()> {
    sqlx::query("UPDATE training_jobs SET search = $2, params = $3 WHERE job_id = $1")
        .bind(job_id)
        .bind(serde_json::to_value(found)?)
        .bind(serde_json::to_value(chosen)?)
        .execute(pool)
        .await
        .context("recording the search in training_jobs")?;
    Ok(())
}

async fn record_finish(pool: &PgPool, job_id: i64, report: &TrainReport) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE training_jobs SET status = $2, model_version = $3, metrics = $4, data_seconds = $5, \
         train_seconds = $6, eval_seconds = $7, finished_at = now() WHERE job_id = $1",
    )
    .bind(job_id)
    .bind(if report.version.is_some() { "succeeded" } else { "dry_run" })
    .bind(report.version.map(|v| v as i64))
    .bind(serde_json::to_value(&report.metrics)?)
    .bind(report.seconds.data)
    .bind(report.seconds.train)
    .bind(report.seconds.evaluate)
    .execute(pool)
    .await
    .context("updating the training job")?;
    Ok(())
}

async fn record_failure(pool: &PgPool, job_id: i64, error: &str) {
    let result = sqlx::query("UPDATE training_jobs SET status = 'failed', error = $2, finished_at = now() WHERE job_id = $1")
        .bind(job_id)
        .bind(error)
        .execute(pool)
        .await;
    if let Err(e) = result {
        tracing::warn!(job_id, error = %e, "could not mark the training job failed");
    }
}
