//! The classifier: the scaler fitted at training time and the SVM, scoring canonical feature
//! matrices in one call.

use linfa::traits::Transformer;
use linfa_preprocessing::linear_scaling::LinearScaler;
use linfa_svm::Svm;
use ndarray::{Array2, ArrayView1};

use super::compiled::Compiled;

/// The class name of a decision value: positive (and zero) is class 1, "real".
pub fn class_name(score: f64) -> &'static str {
    if score >= 0.0 {
        "real"
    } else {
        "fake"
    }
}

/// The fitted scaler and SVM, ready to score canonical feature matrices.
#[derive(Debug, Clone, PartialEq)]
pub struct Classifier {
    /// Standardizes canonical features as at training time.
    pub scaler: LinearScaler<f64>,
    /// The SVM; its decision value is `weighted_sum - rho`.
    pub svm: Svm<f64, bool>,
    /// Both, compiled for the hot path.
    compiled: Compiled,
}

impl Classifier {
    /// A classifier from a fitted scaler and SVM; compiles them once.
    pub fn new(scaler: LinearScaler<f64>, svm: Svm<f64, bool>) -> Self {
        let compiled = Compiled::new(&scaler, &svm);
        Self {
            scaler,
            svm,
            compiled,
        }
    }

    /// Decision values (signed distances, positive = real) for a canonical feature matrix.
    pub fn decision_values(&self, canonical: Array2<f64>) -> Vec<f64> {
        let mut out = Vec::with_capacity(canonical.nrows());
        if self
            .compiled
            .decision_values(canonical.view(), &mut out)
            .is_some()
        {
            return out;
        }
        self.linfa_decision_values(canonical)
    }

    /// Decision values through linfa itself (scaler transform, then `weighted_sum - rho`): the
    /// reference the compiled form is held to.
    pub fn linfa_decision_values(&self, canonical: Array2<f64>) -> Vec<f64> {
        let scaled = self.scaler.transform(canonical);
        scaled
            .outer_iter()
            .map(|row| self.decision_value(row))
            .collect()
    }

    /// The decision value of one already-scaled row, through linfa.
    pub fn decision_value(&self, scaled: ArrayView1<f64>) -> f64 {
        self.svm.weighted_sum(&scaled) - self.svm.rho
    }

    /// Whether a compiled fast path serves predictions (false: linfa's own path).
    pub fn is_compiled(&self) -> bool {
        !matches!(self.compiled, Compiled::Fallback)
    }

    /// How many features it expects.
    pub fn n_features(&self) -> usize {
        self.scaler.offsets().len()
    }
}
