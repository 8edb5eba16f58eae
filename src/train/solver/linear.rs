//! Dual coordinate descent for the linear SVM (Hsieh, Chang, Lin, Keerthi and Sundararajan,
//! 2008: liblinear's `L2R_L1LOSS_SVC_DUAL`), with its shrinking.
//!
//! The same hinge loss and box as the kernel solver, but the weight vector is kept explicitly,
//! so one coefficient update costs O(d) and memory is the data plus O(n). The offset is learnt as
//! the weight of a constant feature of value [`BIAS_FEATURE`] (liblinear's bias term), so it is
//! regularized with the weights where libsvm's is not: the penalty on an offset b is b²/(2B²).

use ndarray::ArrayView2;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::dual::Solution;
use super::dual::SolverError;
use crate::train::control::Control;

/// The constant feature whose weight is the offset. At 1 (liblinear's default) the fixture data's
/// offset (about 9 on standardized features) is pulled towards 0 and labels near the boundary
/// move: 99.85 % agreement with scikit-learn's `SVC` at 2 000 rows. At 10 the penalty is a
/// hundredth: 99.95 % to 100 % agreement at 2 000 to 100 000 rows, the same support vector
/// counts within 1 %. At 100 the problem is so ill-conditioned that the solver stalls (70 times
/// slower, and worse labels).
pub const BIAS_FEATURE: f64 = 10.0;

/// Passes over the data before giving up (liblinear stops at 1 000; the report says when a fit
/// ran out).
const MAX_PASSES: usize = 10_000;

/// The loosest tolerance the linear solver stops at: liblinear's default for this solver. The
/// constant bias feature makes every pair of coordinates correlated, so the last free
/// coefficients converge slowly: on 100 000 fixture rows the projected-gradient gap is 0.11
/// after 2 000 passes and 0.02 after 10 000. At 0.1 the labels agree with scikit-learn's `SVC`
/// (libsvm at 1e-3) on 99.99 % to 100 % of out-of-fold rows (BENCHMARKS.md).
pub const LINEAR_TOLERANCE: f64 = 0.1;

/// A linear fit: the solution and the weights (without the bias feature).
#[derive(Debug, Clone)]
pub struct LinearFit {
    /// Coefficients, offset, passes (as iterations).
    pub solution: Solution,
    /// One weight per feature.
    pub weights: Vec<f64>,
}

/// Solves the dual for rows `x` (already scaled) with classes `y` (true = +1), per-class bounds
/// `(c_pos, c_neg)`, stopping when the projected gradient spans less than `tolerance` (at most
/// [`LINEAR_TOLERANCE`]). `seed` fixes the order rows are visited in.
pub fn solve(
    x: ArrayView2<f64>,
    y: &[bool],
    bounds: (f64, f64),
    tolerance: f64,
    seed: u64,
    control: &Control,
) -> Result<LinearFit, SolverError> {
    let (n, d) = x.dim();
    let tolerance = tolerance.max(LINEAR_TOLERANCE);
    let x = x.as_standard_layout();
    let rows = x.as_slice().expect("standard layout");
    let sign: Vec<f64> = y.iter().map(|&c| if c { 1.0 } else { -1.0 }).collect();
    let cap = |i: usize| if y[i] { bounds.0 } else { bounds.1 };
    let diag: Vec<f64> = rows
        .chunks_exact(d.max(1))
        .take(n)
        .map(|r| r.iter().map(|v| v * v).sum::<f64>() + BIAS_FEATURE * BIAS_FEATURE)
        .collect();
    let mut w = vec![0.0; d + 1];
    let mut alpha = vec![0.0; n];
    let mut index: Vec<usize> = (0..n).collect();
    let mut active = n;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut pg_max_old, mut pg_min_old) = (f64::INFINITY, f64::NEG_INFINITY);
    let mut passes = 0;
    let mut converged = false;
    while passes < MAX_PASSES {
        if control.is_cancelled() {
            return Err(SolverError::Cancelled);
        }
        let (mut pg_max, mut pg_min) = (f64::NEG_INFINITY, f64::INFINITY);
        index[..active].shuffle(&mut rng);
        let mut s = 0;
        while s < active {
            let i = index[s];
            let xi = &rows[i * d..(i + 1) * d];
            let margin = xi.iter().zip(&w).map(|(a, b)| a * b).sum::<f64>() + w[d] * BIAS_FEATURE;
            let g = sign[i] * margin - 1.0;
            let c = cap(i);
            let pg = if alpha[i] == 0.0 {
                if g > pg_max_old {
                    active -= 1;
                    index.swap(s, active);
                    continue;
                }
                g.min(0.0)
            } else if alpha[i] == c {
                if g < pg_min_old {
                    active -= 1;
                    index.swap(s, active);
                    continue;
                }
                g.max(0.0)
            } else {
                g
            };
            pg_max = pg_max.max(pg);
            pg_min = pg_min.min(pg);
            if pg.abs() > 1e-12 {
                let old = alpha[i];
                alpha[i] = (old - g / diag[i]).clamp(0.0, c);
                let step = (alpha[i] - old) * sign[i];
                for (wj, xj) in w.iter_mut().zip(xi) {
                    *wj += step * xj;
                }
                w[d] += step * BIAS_FEATURE;
            }
            s += 1;
        }
        passes += 1;
        control.add_chunks(1);
        control.add_iterations(active as u64);
        if pg_max - pg_min <= tolerance {
            if active == n {
                converged = true;
                break;
            }
            // Optimal on the rows left: check every row again before stopping.
            active = n;
            (pg_max_old, pg_min_old) = (f64::INFINITY, f64::NEG_INFINITY);
            continue;
        }
        pg_max_old = if pg_max <= 0.0 { f64::INFINITY } else { pg_max };
        pg_min_old = if pg_min >= 0.0 {
            f64::NEG_INFINITY
        } else {
            pg_min
        };
    }
    let objective = {
        let norm: f64 = w.iter().map(|v| v * v).sum();
        norm / 2.0 - alpha.iter().sum::<f64>()
    };
    let signed_alpha = alpha.iter().zip(&sign).map(|(a, s)| a * s).collect();
    Ok(LinearFit {
        solution: Solution {
            signed_alpha,
            rho: -w[d] * BIAS_FEATURE,
            iterations: passes,
            objective,
            converged,
        },
        weights: w[..d].to_vec(),
    })
}
