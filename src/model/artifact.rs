//! The model artifact: one immutable, self-contained JSON document per version.
//!
//! Its `format` field is read first, so a worker can still read old formats and refuses, with a
//! clear error, a format newer than it knows. Floats round-trip bit for bit (serde_json's
//! `float_roundtrip`), so a loaded model predicts exactly as the model it was saved from.
//!
//! [`ModelArtifact::validate`] is what every load and every promote runs: the spec, then every
//! shape and number of the scaler and SVM ([`super::checks`]), the training parameters against
//! the SVM, the reference set recomputed, and a smoke prediction on the spec's example row.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use linfa_preprocessing::linear_scaling::LinearScaler;
use linfa_svm::Svm;
use ndarray::Array2;
use serde::{Deserialize, Serialize};

use super::checks::{self, FieldError, FittedKernel, ReferenceSet};
use super::classifier::Classifier;
use super::stats::TrainingStats;
use crate::spec::{PipelineSpec, SpecError};

/// The artifact format this build writes.
pub const ARTIFACT_FORMAT: u32 = 1;

/// The largest `model.json` read by default: 16 MiB (`ML_PIPELINE_MODEL_MAX_BYTES`). `train`
/// keeps one coefficient per support vector (and, for the Gaussian kernel, the vector): the
/// fixture model (2 000 rows, 158 support vectors) is a few kB, a Gaussian model of 100 000
/// fixture rows (2 722 support vectors) about 300 kB, a linear model of a million rows (44 000
/// coefficients, 4 weights) about 1 MB.
pub const DEFAULT_MAX_ARTIFACT_BYTES: u64 = 16 << 20;

/// The SVM kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kernel {
    /// `x . x'`.
    Linear,
    /// `exp(-|x - x'|^2 / width)`.
    Gaussian,
}

impl Kernel {
    /// The name used on the command line and in the artifact.
    pub fn as_str(self) -> &'static str {
        match self {
            Kernel::Linear => "linear",
            Kernel::Gaussian => "gaussian",
        }
    }
}

impl std::fmt::Display for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Kernel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "linear" => Ok(Kernel::Linear),
            "gaussian" => Ok(Kernel::Gaussian),
            other => Err(format!("unknown kernel '{other}': use linear or gaussian")),
        }
    }
}

/// Training hyperparameters, kept in the artifact for comparison and retraining.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainParams {
    /// The kernel.
    pub kernel: Kernel,
    /// The Gaussian kernel width `eps` in exp(-|x-x'|^2/eps) (= 1/gamma); absent for linear.
    pub kernel_width: Option<f64>,
    /// The penalty C.
    pub c: f64,
    /// Class weights multiplying C: (fake, real).
    pub class_weights: (f64, f64),
    /// The solver's stopping tolerance: the largest violation of the optimality conditions
    /// left (libsvm's and liblinear's `eps`).
    pub tolerance: f64,
    /// Cross-validation folds.
    pub folds: usize,
    /// The seed of the fold and hold-out split.
    pub seed: u64,
}

/// The Gaussian kernel width used unless told otherwise.
pub const DEFAULT_KERNEL_WIDTH: f64 = 4.0;

impl Default for TrainParams {
    /// The defaults of `train` and the demo: a Gaussian kernel of width 4, C = 10, equal class
    /// weights, libsvm's tolerance 1e-3 (linfa's own 1e-7 is far slower), 5 folds, seed 42.
    fn default() -> Self {
        Self {
            kernel: Kernel::Gaussian,
            kernel_width: Some(DEFAULT_KERNEL_WIDTH),
            c: 10.0,
            class_weights: (1.0, 1.0),
            tolerance: 1e-3,
            folds: 5,
            seed: 42,
        }
    }
}

impl TrainParams {
    /// The defaults with another kernel (and the default width when it is Gaussian).
    pub fn with_kernel(kernel: Kernel) -> Self {
        Self {
            kernel,
            kernel_width: (kernel == Kernel::Gaussian).then_some(DEFAULT_KERNEL_WIDTH),
            ..Self::default()
        }
    }
}

/// Evaluation figures of a trained model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Metrics {
    /// Mean accuracy over the cross-validation folds.
    pub cv_accuracy: f64,
    /// Per-fold accuracies.
    pub cv_fold_accuracy: Vec<f64>,
    /// Accuracy on the held-out split.
    pub holdout_accuracy: f64,
    /// Precision of class "real" on the held-out split.
    pub precision: f64,
    /// Recall of class "real" on the held-out split.
    pub recall: f64,
    /// F1 of class "real" on the held-out split.
    pub f1: f64,
    /// Held-out confusion matrix `[[tn, fp], [fn, tp]]` (rows: truth fake, real).
    pub confusion: [[u64; 2]; 2],
    /// Support vectors of the final model.
    pub support_vectors: usize,
    /// Rows the final model was fitted on.
    pub train_rows: usize,
    /// Rows held out for evaluation.
    pub holdout_rows: usize,
}

/// One model version, complete.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelArtifact {
    /// The serialization format ([`ARTIFACT_FORMAT`]).
    pub format: u32,
    /// The model name (`banknote`).
    pub name: String,
    /// The registry version, assigned at publish (None before).
    pub version: Option<u64>,
    /// The preprocessing the model was trained with.
    pub spec: PipelineSpec,
    /// The fitted scaler.
    pub scaler: LinearScaler<f64>,
    /// The fitted SVM.
    pub svm: Svm<f64, bool>,
    /// Class index -> name: 0 = "fake", 1 = "real".
    pub class_names: BTreeMap<u8, String>,
    /// Hyperparameters.
    pub params: TrainParams,
    /// Evaluation figures.
    pub metrics: Metrics,
    /// SHA-256 of the training data (features and labels, in order).
    pub data_fingerprint: String,
    /// Where the training data came from.
    pub data_source: String,
    /// The crate version that trained it.
    pub crate_version: String,
    /// When it was trained.
    pub created_at: DateTime<Utc>,
    /// Hold-out rows with their decision values, recomputed at every load and promote. Absent
    /// in versions written before reference sets existed: those are served with a warning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<ReferenceSet>,
    /// Each feature's statistics on the training data, which drift is measured against.
    /// Absent in versions written before they existed: those serve without drift figures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training_stats: Option<TrainingStats>,
}

/// Why an artifact cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// Not JSON, or not an artifact.
    #[error("model artifact is unreadable")]
    Unreadable(#[from] serde_json::Error),
    /// Written by a newer build.
    #[error("model artifact format {found} is newer than this build reads (up to {ARTIFACT_FORMAT}); upgrade the worker")]
    FutureFormat {
        /// The format found.
        found: u32,
    },
    /// Its spec is inconsistent.
    #[error("model artifact's pipeline spec is invalid")]
    Spec(#[from] SpecError),
    /// `model.json` is larger than the worker reads.
    #[error("model.json is {size} bytes or more, over the limit of {limit} bytes (ML_PIPELINE_MODEL_MAX_BYTES); train writes far smaller artifacts: check what was uploaded, or raise the limit if the model really is this large")]
    TooLarge {
        /// Its size (Content-Length), or the bytes read when the limit was crossed.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A field disagrees with the spec or with another field, or the reference set's decision
    /// values are not what the model computes.
    #[error("model artifact is inconsistent: {0}. This is not what train writes (the file was edited or damaged): publish a retrained version (ml-pipeline train) and promote that, or keep the alias on a version that loads")]
    Field(FieldError),
    /// The smoke prediction fails.
    #[error("model artifact is inconsistent: {0}")]
    Inconsistent(String),
}

impl From<FieldError> for ArtifactError {
    /// The field error is the whole message, not a cause: it is said once.
    fn from(e: FieldError) -> Self {
        ArtifactError::Field(e)
    }
}

#[derive(Deserialize)]
struct FormatProbe {
    format: u32,
}

impl ModelArtifact {
    /// Serializes to the stored JSON form.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("artifacts serialize")
    }

    /// Reads any known format and validates the result.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ArtifactError> {
        let probe: FormatProbe = serde_json::from_slice(bytes)?;
        let artifact: ModelArtifact = match probe.format {
            1 => serde_json::from_slice(bytes)?,
            found => return Err(ArtifactError::FutureFormat { found }),
        };
        artifact.validate()?;
        Ok(artifact)
    }

    /// The scaler and SVM as a classifier.
    pub fn classifier(&self) -> Classifier {
        Classifier::new(self.scaler.clone(), self.svm.clone())
    }

    /// Checks everything a served version needs (docs/contract.md section 6): the spec, every
    /// shape and number of the scaler and SVM against the spec and each other, the training
    /// parameters against the SVM, the reference set when there is one, and a smoke prediction
    /// on the spec's example row.
    pub fn validate(&self) -> Result<(), ArtifactError> {
        self.spec.validate()?;
        let n = self.spec.features.len();
        checks::scaler(n, &self.scaler)?;
        let fitted = checks::svm(n, &self.svm)?;
        self.check_params(fitted)?;
        let classifier = self.classifier();
        if let Some(reference) = &self.reference {
            checks::reference(n, reference, &classifier)?;
        }
        if let Some(stats) = &self.training_stats {
            stats.check(&self.spec.feature_names())?;
        }
        let example = Array2::from_shape_vec((1, n), self.spec.example_features.clone())
            .map_err(|e| ArtifactError::Inconsistent(e.to_string()))?;
        let score =
            std::panic::catch_unwind(|| classifier.decision_values(example)).map_err(|_| {
                ArtifactError::Inconsistent(
                    "the SVM's shape does not match the spec's features".into(),
                )
            })?;
        if !score[0].is_finite() {
            return Err(ArtifactError::Inconsistent(format!(
                "smoke prediction on the example row gave {}",
                score[0]
            )));
        }
        Ok(())
    }

    /// The kernel and width recorded in `params` are the ones the SVM computes.
    fn check_params(&self, fitted: FittedKernel) -> Result<(), FieldError> {
        let (kernel, width) = match fitted {
            FittedKernel::Linear => (Kernel::Linear, None),
            FittedKernel::Gaussian { width } => (Kernel::Gaussian, Some(width)),
        };
        if self.params.kernel != kernel {
            return Err(FieldError {
                field: "params.kernel".into(),
                expected: format!("{kernel} (the kernel in svm.kernel_method)"),
                found: self.params.kernel.to_string(),
            });
        }
        if width.is_some() && self.params.kernel_width != width {
            let show = |w: Option<f64>| w.map_or("none".to_owned(), |w| w.to_string());
            return Err(FieldError {
                field: "params.kernel_width".into(),
                expected: format!("{} (the width in svm.kernel_method.Gaussian)", show(width)),
                found: show(self.params.kernel_width),
            });
        }
        Ok(())
    }
}

/// A small linear model of the banknote spec, fitted on two separable blobs of four features:
/// vectors near (1, 1, 1, 1) are "real", near (-1, -1, -1, -1) "fake". For unit tests.
#[cfg(test)]
pub(crate) fn test_artifact() -> ModelArtifact {
    test_artifact_with(Kernel::Linear)
}

/// [`test_artifact`] with another kernel; its reference set is the first 8 rows.
#[cfg(test)]
pub(crate) fn test_artifact_with(kernel: Kernel) -> ModelArtifact {
    let n = 60;
    let x = ndarray::Array2::from_shape_fn((n, 4), |(i, j)| {
        let sign = if i % 2 == 0 { 1.0 } else { -1.0 };
        sign * (1.0 + (i * 7 + j * 3) as f64 % 5.0 / 10.0)
    });
    let y: Vec<bool> = (0..n).map(|i| i % 2 == 0).collect();
    let params = TrainParams {
        folds: 2,
        ..TrainParams::with_kernel(kernel)
    };
    let classifier = crate::train::fit::fit(&x, &y, &params).expect("separable data fits");
    let reference = ReferenceSet::compute(&classifier, x.slice(ndarray::s![..8, ..]).to_owned());
    let training_stats =
        TrainingStats::compute(&PipelineSpec::banknote().feature_names(), x.view());
    ModelArtifact {
        format: ARTIFACT_FORMAT,
        name: "banknote".into(),
        version: None,
        spec: PipelineSpec::banknote(),
        scaler: classifier.scaler,
        svm: classifier.svm,
        class_names: [(0, "fake".to_owned()), (1, "real".to_owned())].into(),
        params,
        metrics: Default::default(),
        data_fingerprint: "sha256:unit-test".into(),
        data_source: "unit test".into(),
        crate_version: env!("CARGO_PKG_VERSION").into(),
        created_at: chrono::Utc::now(),
        reference: Some(reference),
        training_stats: Some(training_stats),
    }
}
