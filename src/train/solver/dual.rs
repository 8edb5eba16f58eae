//! The dual problem's shared vocabulary: the kernel, what a solver returns, and why it may not.

/// Why a solver returned no model.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SolverError {
    /// The run's control was cancelled.
    #[error("cancelled")]
    Cancelled,
    /// linfa-svm did not accept the solved model in its serde form.
    #[error("{0}")]
    Form(String),
}

/// A kernel function on two rows of the same width.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KernelFn {
    /// `x · x'`.
    Linear,
    /// `exp(-|x - x'|² / width)` (linfa's Gaussian `eps`).
    Gaussian {
        /// The width, > 0.
        width: f64,
    },
}

impl KernelFn {
    /// K(a, b).
    #[inline]
    pub fn eval(self, a: &[f64], b: &[f64]) -> f64 {
        match self {
            KernelFn::Linear => a.iter().zip(b).map(|(p, q)| p * q).sum(),
            KernelFn::Gaussian { width } => {
                let d2: f64 = a.iter().zip(b).map(|(p, q)| (p - q) * (p - q)).sum();
                (-d2 / width).exp()
            }
        }
    }
}

/// A solved dual: what linfa-svm keeps of a fit.
#[derive(Debug, Clone, PartialEq)]
pub struct Solution {
    /// yᵢ·αᵢ for every training row, in the original order.
    pub signed_alpha: Vec<f64>,
    /// The offset: the decision value is Σ yᵢαᵢK(xᵢ, x) − ρ.
    pub rho: f64,
    /// Solver iterations (SMO steps, or passes over the data for the linear solver).
    pub iterations: usize,
    /// The dual objective reached.
    pub objective: f64,
    /// Whether the tolerance was reached (false: it ran out of iterations).
    pub converged: bool,
}
