//! `train`: the spec and data named on the command line, fitted, evaluated, recorded and
//! published (or not, with `--dry-run`).

use std::future::Future;
use std::path::PathBuf;

use anyhow::Context;

use crate::model::artifact::TrainParams;
use crate::settings::Settings;
use crate::spec::PipelineSpec;
use crate::train::{DataSource, TrainOptions};

/// One `train` run as asked for.
#[derive(Debug, Clone)]
pub struct TrainJob {
    /// The model name to publish under; None: the spec's.
    pub name: Option<String>,
    /// Search this grid first and train with the best candidate.
    pub search: Option<crate::train::search::Grid>,
    /// A pipeline spec JSON file; None: the built-in banknote spec.
    pub spec_file: Option<PathBuf>,
    /// Keep only these features, in this order; empty: all of the spec's.
    pub features: Vec<String>,
    /// Where the labelled rows come from.
    pub source: DataSource,
    /// Hyperparameters.
    pub params: TrainParams,
    /// Memory for kernel columns per Gaussian fit, in MiB.
    pub kernel_cache_mib: u64,
    /// Where the JSON report is written.
    pub report: PathBuf,
    /// Where the HTML report with the figures is written.
    pub html_report: PathBuf,
    /// Fit and evaluate, record the job, publish nothing.
    pub dry_run: bool,
}

/// Runs the job; returns the report text to print. When `stop` (SIGINT or SIGTERM, named by
/// its output) finishes while the fits run, training stops, the job is recorded as failed and
/// the error says why.
pub async fn train(
    settings: &Settings,
    job: TrainJob,
    stop: impl Future<Output = String>,
) -> anyhow::Result<String> {
    let mut spec = match &job.spec_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("{} is not a pipeline spec", path.display()))?
        }
        None => PipelineSpec::banknote(),
    };
    if let Some(name) = job.name {
        spec.name = name;
    }
    if !job.features.is_empty() {
        let names: Vec<&str> = job.features.iter().map(String::as_str).collect();
        spec = spec.with_features(&names)?;
    }
    let opts = TrainOptions {
        spec,
        source: job.source,
        params: job.params,
        kernel_cache_bytes: job.kernel_cache_mib << 20,
        dry_run: job.dry_run,
        search: job.search,
        html_report: Some(job.html_report),
        trigger: None,
    };
    let pool = crate::startup::postgres_migrated(settings, 2).await?;
    let enricher = crate::startup::enricher(settings, &pool).await?;
    let registry = if job.dry_run {
        None
    } else {
        Some(crate::startup::registry(settings).await?)
    };
    let (report, _) =
        crate::train::train_until(&opts, &pool, &enricher, registry.as_ref(), stop).await?;
    std::fs::write(&job.report, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", job.report.display()))?;
    let mut text = format!("{report}\n  report     {}", job.report.display());
    if let Some(html) = &report.html_report {
        text.push_str(&format!("\n  figures    {html}"));
    }
    Ok(text)
}
