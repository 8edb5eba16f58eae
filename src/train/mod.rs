//! Training: read labelled rows, preprocess them with the worker's own stages, fit and
//! evaluate, record the job in PostgreSQL and publish the model as a new registry version.
//!
//! The fits run on a blocking thread ([`fit`], [`search`]), watched from the async side: a
//! [`control::Control`] cancels them when the run is stopped (Ctrl-C), [`progress`] shows them.
//! [`report`] is the text and JSON report, [`figures`] the HTML one.

pub mod control;
pub mod data;
pub mod figures;
pub mod fit;
pub mod parallel;
pub mod progress;
pub mod report;
pub mod search;
pub mod solver;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use anyhow::Context;
use sqlx::PgPool;

use crate::enrich::{DocumentSource, Enricher, ReferenceSource};
use crate::model::artifact::{Metrics, ModelArtifact, TrainParams, ARTIFACT_FORMAT};
use crate::model::checks::ReferenceSet;
use crate::model::registry::Registry;
use crate::model::stats::TrainingStats;
use crate::model::Classifier;
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
    /// Rows already read and preprocessed (a retraining run's share of its datasets).
    Loaded(Box<TrainingData>),
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
    /// Write the HTML report with the figures here; None: no HTML report.
    pub html_report: Option<PathBuf>,
    /// What started a retraining job ([`crate::learning::retrain`]), recorded with it; None
    /// for a `train` job.
    pub trigger: Option<serde_json::Value>,
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
        DataSource::Loaded(data) => Ok((**data).clone()),
    }
}

/// Runs a whole training job: data, fit, evaluation, job row, publish, reports. Returns the
/// report and the artifact as published (with its version set).
pub async fn train<R: ReferenceSource, D: DocumentSource>(
    opts: &TrainOptions,
    pool: &PgPool,
    enricher: &Enricher<R, D>,
    registry: Option<&Registry>,
) -> anyhow::Result<(TrainReport, ModelArtifact)> {
    train_until(opts, pool, enricher, registry, std::future::pending()).await
}

/// [`train`], stopped when `stop` finishes while the fits run (the `train` command passes
/// SIGINT/SIGTERM). `stop` yields what stopped the run, for the job row's reason. The fits then
/// return [`fit::FitError::Cancelled`] at their next check, the job is marked failed, nothing
/// is published and the error names the signal and the fits done.
pub async fn train_until<R: ReferenceSource, D: DocumentSource>(
    opts: &TrainOptions,
    pool: &PgPool,
    enricher: &Enricher<R, D>,
    registry: Option<&Registry>,
    stop: impl Future<Output = String>,
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
    let data = Arc::new(data);
    let control = control::Control::new().with_kernel_cache(opts.kernel_cache_bytes);
    let progress = Arc::new(progress::Progress::new(
        data.y.len(),
        fits_in_run(&opts.params, opts.search.as_ref()),
        control.clone(),
    ));
    let start_fits = || {
        let (data, params, grid) = (data.clone(), opts.params.clone(), opts.search.clone());
        let (control, progress) = (control.clone(), progress.clone());
        tokio::task::spawn_blocking(move || {
            fit_all(&data, &params, grid.as_ref(), &control, &progress)
        })
    };
    let (joined, stopped_by) = watch(stop, &control, &progress, start_fits).await;
    progress.finish();
    let fitted = match joined {
        Ok(fitted) => fitted,
        Err(e) => {
            let reason = format!("a fit panicked: {e}");
            record_failure(pool, job_id, &reason).await;
            anyhow::bail!(reason);
        }
    };
    if let Some(found) = &fitted.search {
        eprint!("{found}");
        record_search(pool, job_id, found, &fitted.params).await?;
    }
    let (classifier, metrics, times, holdout) = match (fitted.result, stopped_by) {
        // Whether or not the fits noticed in time, a stopped run publishes nothing.
        (_, Some(signal)) => {
            let (done, total) = progress.fits();
            let reason = format!("cancelled by {signal} after {done} of {total} fits");
            record_failure(pool, job_id, &reason).await;
            anyhow::bail!("training job {job_id} {reason}");
        }
        (Ok(v), None) => v,
        (Err(e), None) => {
            record_failure(pool, job_id, &e.to_string()).await;
            return Err(e.into());
        }
    };
    let params = fitted.params;
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
        training_stats: Some(TrainingStats::compute(
            &opts.spec.feature_names(),
            data.x.view(),
        )),
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
    report.search = fitted.search;
    if let Some(path) = &opts.html_report {
        // The model is published by now: a report that cannot be written costs a warning,
        // not the job.
        match figures::write_html(path, &report, &holdout) {
            Ok(()) => {
                let written = std::path::absolute(path).unwrap_or_else(|_| path.clone());
                report.html_report = Some(written.display().to_string());
            }
            Err(e) => tracing::warn!(job_id, error = %e, "the HTML report was not written"),
        }
    }
    record_finish(pool, job_id, &report).await?;
    Ok((report, artifact))
}

/// What the fits of a run produced.
struct Fitted {
    /// The search, when one ran and finished.
    search: Option<search::Search>,
    /// The parameters trained with: the search's best, or the options'.
    params: TrainParams,
    /// The final model, its metrics and timings, and the hold-out scores.
    result: Result<(Classifier, Metrics, fit::EvalTimes, fit::Holdout), fit::FitError>,
}

/// The search (when asked for), then cross-validation, hold-out and final fit, on this thread.
fn fit_all(
    data: &TrainingData,
    params: &TrainParams,
    grid: Option<&search::Grid>,
    control: &control::Control,
    progress: &progress::Progress,
) -> Fitted {
    let (x, y) = (&data.x, data.y.as_slice());
    let mut searched = None;
    let mut params = params.clone();
    if let Some(grid) = grid {
        let threads = std::thread::available_parallelism().map_or(1, usize::from);
        match search::search(
            x,
            y,
            &params,
            grid,
            threads,
            control,
            &mut progress.phase(0),
        ) {
            Ok(found) => {
                params = found.best_params(&params);
                searched = Some(found);
            }
            Err(e) => {
                return Fitted {
                    search: None,
                    params,
                    result: Err(e),
                }
            }
        }
    }
    let offset = progress.fits().0;
    let result = fit::train_and_evaluate(x, y, &params, control, &mut progress.phase(offset));
    Fitted {
        search: searched,
        params,
        result,
    }
}

/// The fits a run makes: the search's candidates x folds, then the folds, hold-out and final.
fn fits_in_run(params: &TrainParams, grid: Option<&search::Grid>) -> usize {
    let k = params.folds.max(2);
    let searched = grid.map_or(0, |g| search::candidates(params, g).len() * k);
    searched + k + 2
}

/// Starts the fits and waits for them, ticking the progress display once a second; when
/// `stop` finishes first, cancels `control` and goes on waiting for the fits to return. Returns
/// the fits' outcome and what stopped them, if anything did.
async fn watch<T>(
    stop: impl Future<Output = String>,
    control: &control::Control,
    progress: &progress::Progress,
    start: impl FnOnce() -> tokio::task::JoinHandle<T>,
) -> (Result<T, tokio::task::JoinError>, Option<String>) {
    let mut stop = std::pin::pin!(stop);
    let mut stopped_by = None;
    // Polled once before the fits start, so a signal handler behind `stop` is in place by then.
    if let Poll::Ready(signal) = futures::poll!(stop.as_mut()) {
        control.cancel();
        progress.stopping(&signal);
        stopped_by = Some(signal);
    }
    let mut fits = start();
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            joined = &mut fits => return (joined, stopped_by),
            signal = &mut stop, if stopped_by.is_none() => {
                control.cancel();
                progress.stopping(&signal);
                stopped_by = Some(signal);
            }
            _ = ticks.tick() => {
                progress.tick(Instant::now());
            }
        }
    }
}

async fn record_start(
    pool: &PgPool,
    opts: &TrainOptions,
    data: &TrainingData,
    fingerprint: &str,
) -> anyhow::Result<i64> {
    let (id,): (i64,) = sqlx::query_as(
        "INSERT INTO training_jobs (model_name, status, data_source, data_fingerprint, rows, params, kind, trigger) \
         VALUES ($1, 'running', $2, $3, $4, $5, $6, $7) RETURNING job_id",
    )
    .bind(&opts.spec.name)
    .bind(&data.source)
    .bind(fingerprint)
    .bind(data.y.len() as i64)
    .bind(serde_json::to_value(&opts.params)?)
    .bind(if opts.trigger.is_some() { "retrain" } else { "train" })
    .bind(&opts.trigger)
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
         train_seconds = $6, eval_seconds = $7, report_path = $8, finished_at = now() \
         WHERE job_id = $1",
    )
    .bind(job_id)
    .bind(if report.version.is_some() { "succeeded" } else { "dry_run" })
    .bind(report.version.map(|v| v as i64))
    .bind(serde_json::to_value(&report.metrics)?)
    .bind(report.seconds.data)
    .bind(report.seconds.train)
    .bind(report.seconds.evaluate)
    .bind(&report.html_report)
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
