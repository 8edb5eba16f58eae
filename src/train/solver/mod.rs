//! The SVM training solvers. linfa-svm's own solver precomputes the whole n×n kernel matrix
//! (8·n² bytes: 80 GB at 100 000 rows), so training solves the same dual problem here and hands
//! the result to linfa-svm as the model the worker serves:
//!
//! - the Gaussian kernel: SMO as in libsvm ([`smo`]), with kernel columns computed on demand
//!   into a cache of bounded size ([`cache`]);
//! - the linear kernel: dual coordinate descent as in liblinear ([`linear`]), O(n·d) per pass,
//!   which keeps a million rows in seconds.
//!
//! Options weighed, and why these: a cascade of linfa-svm fits on chunks merging support vectors
//! still builds an m² matrix per chunk and needs feedback passes to be exact; linfa's sparse
//! kernel is a k-nearest-neighbour approximation of a different problem; binding the C++
//! libsvm/liblinear libraries brings a C++ toolchain and unmaintained wrapper crates into the
//! build. Both solvers here are short, solve exactly the problem linfa-svm solves (same box, same
//! hinge loss; the linear one regularizes its offset, see [`linear`]) and are compared with
//! scikit-learn row by row (BENCHMARKS.md, "Training at scale").

pub mod cache;
pub mod dual;
pub mod linear;
pub mod smo;

pub use dual::{KernelFn, Solution, SolverError};

use linfa_svm::Svm;
use ndarray::{Array2, ArrayView2, Axis};
use serde_json::json;

use super::control::Control;
use crate::model::artifact::{Kernel, TrainParams};
use crate::model::compiled::SUPPORT_THRESHOLD;

/// What a fit did, for the log and the report.
#[derive(Debug, Clone, PartialEq)]
pub struct SolverRun {
    /// Which solver ran.
    pub solver: &'static str,
    /// Its iterations (steps or passes).
    pub iterations: usize,
    /// Whether it reached its tolerance.
    pub converged: bool,
    /// Support vectors.
    pub support_vectors: usize,
}

/// Fits an SVM on already-scaled rows and returns it as linfa-svm's model.
pub fn fit_svm(
    scaled: ArrayView2<f64>,
    y: &[bool],
    params: &TrainParams,
    control: &Control,
) -> Result<(Svm<f64, bool>, SolverRun), SolverError> {
    let (w_fake, w_real) = params.class_weights;
    let bounds = (params.c * w_real, params.c * w_fake);
    let (svm, solution, solver) = match (params.kernel, params.kernel_width) {
        (Kernel::Gaussian, Some(width)) => {
            let solution = smo::solve(
                scaled,
                y,
                bounds,
                KernelFn::Gaussian { width },
                smo::SmoParams {
                    tolerance: params.tolerance,
                    cache_bytes: control.kernel_cache_bytes(),
                    shrinking: true,
                },
                control,
            )?;
            let svm = gaussian_svm(scaled, &solution, width)?;
            (svm, solution, "smo")
        }
        _ => {
            let fit = linear::solve(scaled, y, bounds, params.tolerance, params.seed, control)?;
            let svm = linear_svm(&fit.weights, &fit.solution)?;
            (svm, fit.solution, "dual coordinate descent")
        }
    };
    let run = SolverRun {
        solver,
        iterations: solution.iterations,
        converged: solution.converged,
        support_vectors: svm.nsupport(),
    };
    if !run.converged {
        tracing::warn!(
            solver,
            iterations = run.iterations,
            "the SVM solver stopped at its iteration limit before reaching the tolerance"
        );
    }
    Ok((svm, run))
}

/// The coefficients linfa keeps: those above its threshold, with the rows they belong to.
fn support(solution: &Solution) -> (Vec<usize>, Vec<f64>) {
    solution
        .signed_alpha
        .iter()
        .enumerate()
        .filter(|(_, a)| a.abs() > SUPPORT_THRESHOLD)
        .map(|(i, a)| (i, *a))
        .unzip()
}

/// linfa-svm's Gaussian model: the support vectors and their coefficients.
fn gaussian_svm(
    scaled: ArrayView2<f64>,
    solution: &Solution,
    width: f64,
) -> Result<Svm<f64, bool>, SolverError> {
    let (rows, alpha) = support(solution);
    let vectors: Array2<f64> = scaled.select(Axis(0), &rows);
    linfa_form(
        solution,
        alpha,
        json!({ "Gaussian": width }),
        json!({ "WeightedCombination": array_json(vectors.dim(), vectors.iter()) }),
    )
}

/// linfa-svm's linear model: the weight vector (coefficients kept for `nsupport`).
fn linear_svm(weights: &[f64], solution: &Solution) -> Result<Svm<f64, bool>, SolverError> {
    let (_, alpha) = support(solution);
    linfa_form(
        solution,
        alpha,
        json!("Linear"),
        json!({ "Linear": { "v": 1, "dim": [weights.len()], "data": weights } }),
    )
}

fn array_json<'a>(dim: (usize, usize), data: impl Iterator<Item = &'a f64>) -> serde_json::Value {
    json!({ "v": 1, "dim": [dim.0, dim.1], "data": data.copied().collect::<Vec<f64>>() })
}

/// Builds the model through linfa-svm's serde form, the only constructor it exposes.
fn linfa_form(
    solution: &Solution,
    alpha: Vec<f64>,
    kernel_method: serde_json::Value,
    sep_hyperplane: serde_json::Value,
) -> Result<Svm<f64, bool>, SolverError> {
    let form = json!({
        "alpha": alpha,
        "rho": solution.rho,
        "r": null,
        "exit_reason": if solution.converged { "ReachedThreshold" } else { "ReachedIterations" },
        "iterations": solution.iterations,
        "obj": solution.objective,
        "kernel_method": kernel_method,
        "sep_hyperplane": sep_hyperplane,
        "probability_coeffs": null,
        "phantom": null,
    });
    serde_json::from_value(form).map_err(|e| {
        SolverError::Form(format!(
            "linfa-svm refused its serde form ({e}): this build's linfa-svm changed the form"
        ))
    })
}

#[cfg(test)]
mod tests;
