//! What a fitted scaler and SVM must satisfy before they serve (docs/contract.md section 6):
//! every shape against the spec's feature count and against each other, every number finite, a
//! Gaussian width above 0, and the version's reference set recomputed within
//! [`REFERENCE_TOLERANCE`].
//!
//! linfa checks none of this. Its kernel zips a support vector with the sample, so extra values
//! on either side are silently ignored; it pairs support vectors with coefficients by position,
//! so surplus coefficients are silently dropped. A hand-edited artifact would load and serve
//! wrong labels. Each refusal names the field as it is spelled in `model.json`.

use std::fmt::Display;

use linfa_preprocessing::linear_scaling::LinearScaler;
use linfa_svm::Svm;
use ndarray::Array2;
use serde::{Deserialize, Serialize};

use super::classifier::Classifier;
use super::compiled::{Hyperplane, KernelMethod, SvmParts, SUPPORT_THRESHOLD};

/// How many rows `train` keeps in a version's reference set.
pub const REFERENCE_ROWS: usize = 32;

/// How far a recomputed reference decision value may be from the recorded one, relative to the
/// larger of 1 and the recorded value's magnitude. The same build recomputes them bit for bit;
/// the compiled path and linfa's agree within 1e-9; a changed support vector, coefficient or
/// scaler moves them by far more.
pub const REFERENCE_TOLERANCE: f64 = 1e-6;

/// A field of the artifact that disagrees with the spec or with another field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: expected {expected}, found {found}")]
pub struct FieldError {
    /// The field as spelled in `model.json` (`svm.alpha[17]`).
    pub field: String,
    /// What the rest of the artifact needs it to be.
    pub expected: String,
    /// What it is.
    pub found: String,
}

fn field_error(
    field: impl Into<String>,
    expected: impl Display,
    found: impl Display,
) -> FieldError {
    FieldError {
        field: field.into(),
        expected: expected.to_string(),
        found: found.to_string(),
    }
}

/// Hold-out rows with the decision values the model gave them when it was trained. Load and
/// promote recompute them: a version whose scaler or SVM no longer computes what was trained is
/// refused, even when every shape is right.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReferenceSet {
    /// Canonical feature rows, one value per spec feature, in the spec's order.
    pub rows: Vec<Vec<f64>>,
    /// The decision value of each row, as computed at training time.
    pub decision_values: Vec<f64>,
}

impl ReferenceSet {
    /// The rows of `canonical` with the decision values `classifier` gives them.
    pub fn compute(classifier: &Classifier, canonical: Array2<f64>) -> Self {
        let rows = canonical.outer_iter().map(|row| row.to_vec()).collect();
        let decision_values = classifier.decision_values(canonical);
        Self {
            rows,
            decision_values,
        }
    }
}

/// The kernel a fitted SVM computes, as read from the SVM itself.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FittedKernel {
    /// A weight per feature.
    Linear,
    /// Support vectors and a width.
    Gaussian {
        /// The width (linfa's `eps`).
        width: f64,
    },
}

/// Checks the scaler: one finite offset and one finite scale per feature.
pub fn scaler(features: usize, scaler: &LinearScaler<f64>) -> Result<(), FieldError> {
    for (field, values) in [
        ("scaler.offsets", scaler.offsets()),
        ("scaler.scales", scaler.scales()),
    ] {
        if values.len() != features {
            return Err(field_error(
                field,
                format!("{features} values (one per feature in the spec)"),
                values.len(),
            ));
        }
        finite(field, values.iter())?;
    }
    Ok(())
}

/// Checks the SVM: finite coefficients and offset; linear weights, one per feature; or Gaussian
/// support vectors one value per feature wide, one per coefficient above linfa's threshold, with
/// a finite width above 0. Any other kernel is refused: `train` writes only these two.
pub fn svm(features: usize, svm: &Svm<f64, bool>) -> Result<FittedKernel, FieldError> {
    // Read from the SVM itself: its serde form turns NaN into null, which `SvmParts` cannot read.
    finite("svm.alpha", svm.alpha.iter())?;
    if !svm.rho.is_finite() {
        return Err(field_error("svm.rho", "a finite number", svm.rho));
    }
    let parts = SvmParts::of(svm).ok_or_else(|| {
        field_error(
            "svm",
            "linfa-svm 0.8's form, every number finite",
            "a form this build cannot read, or a NaN or infinite value in svm.kernel_method or svm.sep_hyperplane",
        )
    })?;
    match (parts.kernel_method, parts.sep_hyperplane) {
        (KernelMethod::Linear, Hyperplane::Linear(weights)) => {
            let field = "svm.sep_hyperplane.Linear";
            if weights.len() != features {
                return Err(field_error(
                    field,
                    format!("{features} weights (one per feature in the spec)"),
                    weights.len(),
                ));
            }
            finite(field, weights.iter())?;
            Ok(FittedKernel::Linear)
        }
        (KernelMethod::Gaussian(width), Hyperplane::WeightedCombination(support)) => {
            if !(width.is_finite() && width > 0.0) {
                return Err(field_error(
                    "svm.kernel_method.Gaussian",
                    "a finite kernel width above 0",
                    width,
                ));
            }
            support_vectors(features, &parts.alpha, &support)?;
            Ok(FittedKernel::Gaussian { width })
        }
        (kernel, hyperplane) => Err(field_error(
            "svm.kernel_method",
            "Linear with a Linear svm.sep_hyperplane, or Gaussian with a WeightedCombination (what train writes)",
            format!(
                "{} with a {} svm.sep_hyperplane",
                kernel_name(&kernel),
                hyperplane_name(&hyperplane)
            ),
        )),
    }
}

fn support_vectors(
    features: usize,
    alpha: &[f64],
    support: &Array2<f64>,
) -> Result<(), FieldError> {
    let field = "svm.sep_hyperplane.WeightedCombination";
    if support.ncols() != features {
        return Err(field_error(
            field,
            format!("support vectors {features} values wide (one per feature in the spec)"),
            format!("{} values wide", support.ncols()),
        ));
    }
    let coefficients = alpha.iter().filter(|a| a.abs() > SUPPORT_THRESHOLD).count();
    if support.nrows() != coefficients {
        return Err(field_error(
            field,
            format!(
                "{coefficients} support vectors (one per coefficient in svm.alpha above linfa's threshold {SUPPORT_THRESHOLD:e})"
            ),
            support.nrows(),
        ));
    }
    match support.indexed_iter().find(|(_, v)| !v.is_finite()) {
        Some(((row, col), v)) => Err(field_error(
            format!("{field} support vector {row} value {col}"),
            "a finite number",
            v,
        )),
        None => Ok(()),
    }
}

/// Checks a reference set's shape and numbers, then recomputes its decision values with
/// `classifier` (the compiled form that serves) and compares them within
/// [`REFERENCE_TOLERANCE`].
pub fn reference(
    features: usize,
    reference: &ReferenceSet,
    classifier: &Classifier,
) -> Result<(), FieldError> {
    let rows = reference.rows.len();
    if rows == 0 {
        return Err(field_error(
            "reference.rows",
            format!("at least one row (train writes up to {REFERENCE_ROWS})"),
            "none",
        ));
    }
    if reference.decision_values.len() != rows {
        return Err(field_error(
            "reference.decision_values",
            format!("{rows} values (one per row of reference.rows)"),
            reference.decision_values.len(),
        ));
    }
    for (i, row) in reference.rows.iter().enumerate() {
        let field = format!("reference.rows[{i}]");
        if row.len() != features {
            return Err(field_error(
                field,
                format!("{features} values (one per feature in the spec)"),
                row.len(),
            ));
        }
        finite(&field, row.iter())?;
    }
    finite(
        "reference.decision_values",
        reference.decision_values.iter(),
    )?;
    let matrix = Array2::from_shape_vec((rows, features), reference.rows.concat())
        .expect("every row was checked to be one value per feature wide");
    let recomputed = classifier.decision_values(matrix);
    let disagree: Vec<usize> = (0..rows)
        .filter(|&i| {
            let recorded = reference.decision_values[i];
            (recomputed[i] - recorded).abs() > REFERENCE_TOLERANCE * recorded.abs().max(1.0)
        })
        .collect();
    match disagree.first() {
        Some(&i) => Err(field_error(
            format!("reference.decision_values[{i}]"),
            format!(
                "{} (recorded at training; tolerance {REFERENCE_TOLERANCE:e} relative)",
                reference.decision_values[i]
            ),
            format!(
                "{} recomputed with this version's scaler and SVM ({} of {rows} reference rows disagree)",
                recomputed[i],
                disagree.len()
            ),
        )),
        None => Ok(()),
    }
}

/// The first value that is NaN or infinite, as `field[index]`.
fn finite<'a>(field: &str, values: impl Iterator<Item = &'a f64>) -> Result<(), FieldError> {
    match values.enumerate().find(|(_, v)| !v.is_finite()) {
        Some((i, v)) => Err(field_error(format!("{field}[{i}]"), "a finite number", v)),
        None => Ok(()),
    }
}

fn kernel_name(kernel: &KernelMethod) -> &'static str {
    match kernel {
        KernelMethod::Gaussian(_) => "Gaussian",
        KernelMethod::Linear => "Linear",
        KernelMethod::Polynomial(..) => "Polynomial",
    }
}

fn hyperplane_name(hyperplane: &Hyperplane) -> &'static str {
    match hyperplane {
        Hyperplane::Linear(_) => "Linear",
        Hyperplane::WeightedCombination(_) => "WeightedCombination",
    }
}
