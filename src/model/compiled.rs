//! The fitted scaler and SVM compiled, once at load, into the fastest form that gives the same
//! decision values: the hot path never re-derives anything per row.
//!
//! - Linear kernel: the scaler is affine per feature, so `w · scale(x) - rho` folds into one
//!   weight vector and one bias: `w' · x + b'`, one dot product per row.
//! - Gaussian kernel: the support vectors whose alpha linfa counts (|alpha| > 100 ε) are kept
//!   with their alphas, contiguous; each row is scaled once (no scaled matrix is allocated)
//!   and `exp(-‖x - sv‖² / width)` is summed over them.
//! - Anything else falls back to linfa's own `weighted_sum`.
//!
//! linfa-svm exposes neither the hyperplane nor the support vectors, only its serde form, so
//! they are read from that. A unit test holds the compiled values to linfa's within 1e-9.

use linfa::traits::Transformer;
use linfa_preprocessing::linear_scaling::LinearScaler;
use linfa_svm::Svm;
use ndarray::{Array1, Array2, ArrayView1, ArrayView2};
use serde::Deserialize;

/// linfa's threshold on a coefficient: a support vector counts when its |alpha| is above it,
/// and support vectors are paired, in order, with the coefficients above it.
pub(crate) const SUPPORT_THRESHOLD: f64 = 100.0 * f64::EPSILON;

/// The SVM's serde form: the fields the decision value needs (also what the artifact's checks
/// read, in `super::checks`).
#[derive(Deserialize)]
pub(crate) struct SvmParts {
    /// One coefficient per training row; those above [`SUPPORT_THRESHOLD`] belong to a support
    /// vector.
    pub(crate) alpha: Vec<f64>,
    /// The offset subtracted from the weighted sum.
    pub(crate) rho: f64,
    /// The kernel.
    pub(crate) kernel_method: KernelMethod,
    /// The weights (linear) or the support vectors (any other kernel).
    pub(crate) sep_hyperplane: Hyperplane,
}

/// linfa's kernel, by its serde name.
#[derive(Deserialize)]
pub(crate) enum KernelMethod {
    /// `exp(-|x - x'|^2 / width)`.
    Gaussian(f64),
    /// `x . x'`.
    Linear,
    /// Never written by `train`.
    #[allow(dead_code)]
    Polynomial(f64, f64),
}

/// linfa's separating hyperplane, by its serde name.
#[derive(Deserialize)]
pub(crate) enum Hyperplane {
    /// One weight per feature.
    Linear(Array1<f64>),
    /// The support vectors, one per row.
    WeightedCombination(Array2<f64>),
}

impl SvmParts {
    /// The parts of a fitted SVM, read through its serde form; None when the form is not
    /// linfa-svm 0.8's.
    pub(crate) fn of(svm: &Svm<f64, bool>) -> Option<Self> {
        serde_json::to_value(svm)
            .ok()
            .and_then(|v| serde_json::from_value(v).ok())
    }
}

/// A decision function ready for the hot path.
#[derive(Debug, Clone, PartialEq)]
pub enum Compiled {
    /// `weights · x + bias` on canonical (unscaled) features.
    Linear {
        /// Per-feature weights with the scaler folded in.
        weights: Vec<f64>,
        /// The bias with the scaler and rho folded in.
        bias: f64,
    },
    /// `Σ alpha_i exp(-‖scale(x) - sv_i‖² / width) - rho`.
    Gaussian {
        /// Per-feature scaling `x * mul + add`.
        mul: Vec<f64>,
        /// See `mul`.
        add: Vec<f64>,
        /// Support vectors (scaled space), one per row, matched to `alphas`.
        support: Array2<f64>,
        /// Their coefficients.
        alphas: Vec<f64>,
        /// The kernel width (linfa's Gaussian `eps`).
        width: f64,
        /// The SVM's offset.
        rho: f64,
    },
    /// No faster form known: use linfa.
    Fallback,
}

impl Compiled {
    /// Compiles a fitted scaler and SVM; `Fallback` when the SVM's form is not understood.
    pub fn new(scaler: &LinearScaler<f64>, svm: &Svm<f64, bool>) -> Self {
        let Some(parts) = SvmParts::of(svm) else {
            return Self::Fallback;
        };
        let n = scaler.offsets().len();
        // The scaler is affine per column: scale(x) = x * mul + add. Read both off two rows.
        let probe = scaler.transform(Array2::from_shape_fn((2, n), |(r, _)| r as f64));
        let add: Vec<f64> = probe.row(0).to_vec();
        let mul: Vec<f64> = probe
            .row(1)
            .iter()
            .zip(&add)
            .map(|(one, zero)| one - zero)
            .collect();
        match (parts.kernel_method, parts.sep_hyperplane) {
            (KernelMethod::Linear, Hyperplane::Linear(w)) if w.len() == n => {
                let weights = w.iter().zip(&mul).map(|(w, m)| w * m).collect();
                let bias = w.iter().zip(&add).map(|(w, a)| w * a).sum::<f64>() - parts.rho;
                Self::Linear { weights, bias }
            }
            (KernelMethod::Gaussian(width), Hyperplane::WeightedCombination(support))
                if support.ncols() == n =>
            {
                // linfa pairs support vectors with the alphas above its threshold, in order.
                let alphas: Vec<f64> = parts
                    .alpha
                    .iter()
                    .copied()
                    .filter(|a| a.abs() > SUPPORT_THRESHOLD)
                    .take(support.nrows())
                    .collect();
                let support = support
                    .slice(ndarray::s![..alphas.len(), ..])
                    .as_standard_layout()
                    .into_owned();
                Self::Gaussian {
                    mul,
                    add,
                    support,
                    alphas,
                    width,
                    rho: parts.rho,
                }
            }
            _ => Self::Fallback,
        }
    }

    /// Decision values of canonical rows, appended to `out`; None when this is `Fallback`.
    pub fn decision_values(&self, canonical: ArrayView2<f64>, out: &mut Vec<f64>) -> Option<()> {
        match self {
            Self::Linear { weights, bias } => {
                out.extend(canonical.outer_iter().map(|row| dot(row, weights) + bias));
            }
            Self::Gaussian {
                mul,
                add,
                support,
                alphas,
                width,
                rho,
            } => {
                let n = mul.len();
                let mut scaled = vec![0.0; n];
                let support = support.as_slice().expect("standard layout");
                for row in canonical.outer_iter() {
                    for (j, s) in scaled.iter_mut().enumerate() {
                        *s = row[j] * mul[j] + add[j];
                    }
                    let mut sum = 0.0;
                    for (sv, alpha) in support.chunks_exact(n).zip(alphas) {
                        let d2: f64 = sv.iter().zip(&scaled).map(|(a, b)| (a - b) * (a - b)).sum();
                        sum += (-d2 / width).exp() * alpha;
                    }
                    out.push(sum - rho);
                }
            }
            Self::Fallback => return None,
        }
        Some(())
    }
}

fn dot(row: ArrayView1<f64>, weights: &[f64]) -> f64 {
    match row.as_slice() {
        Some(r) => r.iter().zip(weights).map(|(x, w)| x * w).sum(),
        None => row.iter().zip(weights).map(|(x, w)| x * w).sum(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::artifact::TrainParams;
    use rand::{Rng, SeedableRng};

    /// Two noisy classes in 4 features on very different scales, like raw banknote features.
    fn data(rows: usize, seed: u64) -> (Array2<f64>, Vec<bool>) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let y: Vec<bool> = (0..rows).map(|i| i % 2 == 0).collect();
        let x = Array2::from_shape_fn((rows, 4), |(r, c)| {
            let shift = if y[r] { 1.0 } else { -1.0 };
            (shift + rng.random_range(-1.5..1.5)) * 10f64.powi(c as i32) + 3.0
        });
        (x, y)
    }

    fn params(kernel: &str) -> TrainParams {
        TrainParams {
            seed: 1,
            ..TrainParams::with_kernel(kernel.parse().unwrap())
        }
    }

    #[test]
    fn compiled_values_match_linfa_for_both_kernels() {
        let (x, y) = data(300, 7);
        let (probe, _) = data(500, 8);
        for kernel in ["linear", "gaussian"] {
            let classifier = crate::train::fit::fit(&x, &y, &params(kernel)).unwrap();
            assert!(classifier.is_compiled(), "{kernel} is compiled");
            let fast = classifier.decision_values(probe.clone());
            let reference = classifier.linfa_decision_values(probe.clone());
            assert_eq!(fast.len(), reference.len());
            for (f, r) in fast.iter().zip(&reference) {
                assert!((f - r).abs() < 1e-9, "{kernel}: {f} vs linfa {r}");
            }
            assert!(
                reference.iter().any(|v| *v > 0.0) && reference.iter().any(|v| *v < 0.0),
                "{kernel}: both classes predicted, so the comparison means something"
            );
        }
    }
}
