//! The training report: printed for people, written as JSON for machines.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::data::{skipped_by_kind, TrainingData};
use super::fit::EvalTimes;
use crate::model::artifact::{Kernel, Metrics, ModelArtifact, TrainParams};

/// Seconds per phase of a training job.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PhaseSeconds {
    /// Reading (and for raw rows, preprocessing) the data.
    pub data: f64,
    /// The final fit.
    pub train: f64,
    /// Cross-validation and hold-out evaluation.
    pub evaluate: f64,
}

/// What a training job did and how good the model is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainReport {
    /// The model name.
    pub model: String,
    /// The published version, or None for a dry run.
    pub version: Option<u64>,
    /// The `training_jobs` row.
    pub job_id: i64,
    /// The features, in order.
    pub features: Vec<String>,
    /// Hyperparameters.
    pub params: TrainParams,
    /// Evaluation figures.
    pub metrics: Metrics,
    /// Where the data came from.
    pub data_source: String,
    /// SHA-256 of the training data.
    pub data_fingerprint: String,
    /// Raw rows left out, by reason.
    pub skipped_rows: BTreeMap<String, usize>,
    /// Time per phase.
    pub seconds: PhaseSeconds,
    /// The hyperparameter search that chose the parameters, when one ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<super::search::Search>,
    /// Where the HTML report with the figures was written (None: not written).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html_report: Option<String>,
}

impl TrainReport {
    /// The report of a finished job.
    pub fn new(
        artifact: &ModelArtifact,
        version: Option<u64>,
        data: &TrainingData,
        data_seconds: f64,
        times: EvalTimes,
        job_id: i64,
    ) -> Self {
        Self {
            model: artifact.name.clone(),
            version,
            job_id,
            features: artifact
                .spec
                .feature_names()
                .into_iter()
                .map(String::from)
                .collect(),
            params: artifact.params.clone(),
            metrics: artifact.metrics.clone(),
            data_source: artifact.data_source.clone(),
            data_fingerprint: artifact.data_fingerprint.clone(),
            skipped_rows: skipped_by_kind(&data.skipped),
            seconds: PhaseSeconds {
                data: data_seconds,
                train: times.train_seconds,
                evaluate: times.eval_seconds,
            },
            search: None,
            html_report: None,
        }
    }
}

impl fmt::Display for TrainReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.metrics;
        let p = &self.params;
        match self.version {
            Some(v) => writeln!(
                f,
                "model {} version {v} (training job {})",
                self.model, self.job_id
            )?,
            None => writeln!(
                f,
                "model {} (dry run, not published; training job {})",
                self.model, self.job_id
            )?,
        }
        writeln!(
            f,
            "  data       {} rows from {}",
            m.train_rows, self.data_source
        )?;
        for (kind, n) in &self.skipped_rows {
            writeln!(f, "             {n} rows left out: {kind}")?;
        }
        writeln!(f, "  features   {}", self.features.join(", "))?;
        let kernel = match p.kernel_width {
            Some(w) if p.kernel == Kernel::Gaussian => format!("gaussian (width {w})"),
            _ => p.kernel.to_string(),
        };
        writeln!(
            f,
            "  svm        {kernel}, C {}, class weights fake {} real {}, {} support vectors",
            p.c, p.class_weights.0, p.class_weights.1, m.support_vectors
        )?;
        let folds: Vec<String> = m
            .cv_fold_accuracy
            .iter()
            .map(|a| format!("{:.2}", a * 100.0))
            .collect();
        writeln!(
            f,
            "  cv         {:.2}% accuracy over {} folds ({})",
            m.cv_accuracy * 100.0,
            p.folds,
            folds.join(" ")
        )?;
        writeln!(
            f,
            "  hold-out   {:.2}% accuracy, precision {:.3}, recall {:.3}, F1 {:.3} on {} rows",
            m.holdout_accuracy * 100.0,
            m.precision,
            m.recall,
            m.f1,
            m.holdout_rows
        )?;
        writeln!(
            f,
            "  confusion  truth fake: {:>4} fake {:>4} real",
            m.confusion[0][0], m.confusion[0][1]
        )?;
        writeln!(
            f,
            "             truth real: {:>4} fake {:>4} real",
            m.confusion[1][0], m.confusion[1][1]
        )?;
        writeln!(f, "  data hash  {}", self.data_fingerprint)?;
        write!(
            f,
            "  time       data {:.2}s, evaluate {:.2}s, final fit {:.2}s",
            self.seconds.data, self.seconds.evaluate, self.seconds.train
        )
    }
}
