//! The fitted scaler and SVM compiled, once at load, into the fastest form that gives the same
//! decision values: the hot path never re-derives anything per row.
//!
//! - Linear kernel: the scaler is affine per feature, so `w · scale(x) - rho` folds into one
//!   weight vector and one bias: `w' · x + b'`, one dot product per row.
//! - Gaussian kernel: the support vectors whose alpha linfa counts (|alpha| > 100 ε) are kept
//!   with their alphas, stored feature by feature; each row is scaled once (no scaled matrix is
//!   allocated), its squared distances to every support vector are accumulated a feature at a
//!   time, `exp(-d² / width)` is taken of all of them by [`exp_nonpositive`] (branch-free, so the
//!   compiler vectorizes it, unlike libm's `exp`), and the results are summed against the alphas.
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
    Gaussian(Gaussian),
    /// No faster form known: use linfa.
    Fallback,
}

/// A Gaussian-kernel SVM with its scaler, laid out for [`gaussian_values`].
#[derive(Debug, Clone, PartialEq)]
pub struct Gaussian {
    /// Per-feature scaling `x * mul + add`.
    mul: Vec<f64>,
    /// See `mul`.
    add: Vec<f64>,
    /// Support vectors (scaled space) by feature: row j holds feature j of every support
    /// vector, in the order of `alphas`.
    support_by_feature: Array2<f64>,
    /// Their coefficients.
    alphas: Vec<f64>,
    /// The kernel width (linfa's Gaussian `eps`).
    width: f64,
    /// The SVM's offset.
    rho: f64,
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
                let support_by_feature = support
                    .slice(ndarray::s![..alphas.len(), ..])
                    .t()
                    .as_standard_layout()
                    .into_owned();
                Self::Gaussian(Gaussian {
                    mul,
                    add,
                    support_by_feature,
                    alphas,
                    width,
                    rho: parts.rho,
                })
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
            Self::Gaussian(model) => gaussian_values(model, canonical, out),
            Self::Fallback => return None,
        }
        Some(())
    }
}

/// The Gaussian decision values of canonical rows, appended to `out`.
///
/// Compiled three times, for the build's baseline CPU, AVX2 and AVX-512, and picked at run time
/// by what the CPU has. The code has no fused multiply-adds or reordered sums, so every version
/// gives the same bits.
#[multiversion::multiversion(targets("x86_64+avx+avx2+avx512f", "x86_64+avx+avx2"))]
fn gaussian_values(model: &Gaussian, canonical: ArrayView2<f64>, out: &mut Vec<f64>) {
    let scale = -1.0 / model.width;
    let mut kernel = vec![0.0; model.alphas.len()];
    for row in canonical.outer_iter() {
        kernel.fill(0.0);
        for (j, column) in model.support_by_feature.outer_iter().enumerate() {
            let x = row[j] * model.mul[j] + model.add[j];
            let column = column.to_slice().expect("standard layout");
            for (d2, sv) in kernel.iter_mut().zip(column) {
                let t = sv - x;
                *d2 += t * t;
            }
        }
        for k in kernel.iter_mut() {
            *k = exp_nonpositive(*k * scale);
        }
        out.push(weighted_sum(&kernel, &model.alphas) - model.rho);
    }
}

/// `Σ a_i b_i` in four interleaved partial sums, which the compiler can vectorize (a single
/// running sum cannot be reordered, so it is not).
#[inline(always)]
fn weighted_sum(a: &[f64], b: &[f64]) -> f64 {
    let mut lanes = [0.0; 4];
    let (a4, b4) = (a.chunks_exact(4), b.chunks_exact(4));
    let tail: f64 = a4
        .remainder()
        .iter()
        .zip(b4.remainder())
        .map(|(a, b)| a * b)
        .sum();
    for (a, b) in a4.zip(b4) {
        for l in 0..4 {
            lanes[l] += a[l] * b[l];
        }
    }
    (lanes[0] + lanes[2]) + (lanes[1] + lanes[3]) + tail
}

/// `e^x` for `x <= 0`, within a few units in the last place of libm's `exp`, without branches
/// or calls, so that a loop of it vectorizes.
///
/// `x = n ln 2 + r` with `n` the nearest integer to `x / ln 2` and `|r| <= ln 2 / 2`; `e^r` by its
/// Taylor series to `r^13 / 13!` (truncation error below 2e-16 relative); `2^n` built in the
/// exponent bits. Below -708 the result would be subnormal, and `e^-708` (3e-308) is returned
/// instead, which no sum of kernel values can tell from 0. NaN stays NaN.
#[inline(always)]
fn exp_nonpositive(x: f64) -> f64 {
    // 1.5 * 2^52: adding it rounds to the nearest integer, which then sits in the low bits.
    const ROUND: f64 = 6_755_399_441_055_744.0;
    // ln 2 split so that `n * LN2_HI` is exact for |n| < 2^20 (fdlibm's constants).
    const LN2_HI: f64 = 6.931_471_803_691_238e-1;
    const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
    // 1 / k! for k = 13 down to 2.
    const INV_FACTORIAL: [f64; 12] = [
        1.0 / 6_227_020_800.0,
        1.0 / 479_001_600.0,
        1.0 / 39_916_800.0,
        1.0 / 3_628_800.0,
        1.0 / 362_880.0,
        1.0 / 40_320.0,
        1.0 / 5_040.0,
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
    ];
    let x = if x < -708.0 { -708.0 } else { x };
    let shifted = x * std::f64::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let mut p = INV_FACTORIAL[0];
    for c in &INV_FACTORIAL[1..] {
        p = p * r + c;
    }
    let p = (p * r + 1.0) * r + 1.0;
    // n in -1022..=0, so n + 1023 is a normal exponent.
    let exponent = (shifted.to_bits() as i64 - ROUND.to_bits() as i64 + 1023) as u64;
    p * f64::from_bits(exponent << 52)
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
    fn exp_nonpositive_matches_libm() {
        let mut worst = 0.0f64;
        for i in 0..=200_000 {
            let x = -(i as f64) * 708.0 / 200_000.0;
            let (fast, libm) = (exp_nonpositive(x), x.exp());
            worst = worst.max(((fast - libm) / libm).abs());
        }
        assert!(worst < 1e-15, "worst relative error {worst:e}");
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert_eq!(exp_nonpositive(-0.0), 1.0);
        assert!(exp_nonpositive(-1e6) < 1e-300);
        assert!(exp_nonpositive(f64::NEG_INFINITY) < 1e-300);
        assert!(exp_nonpositive(f64::NAN).is_nan());
    }

    #[test]
    fn weighted_sum_covers_every_element() {
        for n in 0..11 {
            let a: Vec<f64> = (0..n).map(|i| i as f64 + 1.0).collect();
            let b: Vec<f64> = (0..n).map(|i| 2.0 * i as f64).collect();
            let plain: f64 = a.iter().zip(&b).map(|(a, b)| a * b).sum();
            assert_eq!(weighted_sum(&a, &b), plain, "{n} elements");
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
