//! Sequential minimal optimization for the C-SVC dual, the algorithm of libsvm (Fan, Chen and
//! Lin, 2005): second-order working-set selection, shrinking, and kernel columns computed on
//! demand into a bounded cache, so memory is O(n·d) plus the cache budget instead of n².
//!
//! The dual: minimize ½αᵀQα − Σα subject to 0 ≤ αᵢ ≤ Cᵢ and Σyᵢαᵢ = 0, with
//! Qᵢⱼ = yᵢyⱼK(xᵢ, xⱼ). Rows are permuted as they are shrunk, so every per-row array here is in
//! solver order; `order[t]` is the original row of position `t`.

use ndarray::ArrayView2;

use super::cache::ColumnCache;
use super::dual::SolverError;
use super::dual::{KernelFn, Solution};
use crate::train::control::Control;

/// libsvm's stand-in for a non-positive curvature.
const TAU: f64 = 1e-12;

/// How often (in iterations) the solver shrinks, counts progress and checks for cancellation.
const CHECK_EVERY: usize = 1000;

/// Where a coefficient sits in its box.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bound {
    Lower,
    Upper,
    Free,
}

/// What the solver needs besides the data.
#[derive(Debug, Clone, Copy)]
pub struct SmoParams {
    /// The stopping tolerance on the maximal KKT violation (libsvm's `eps`, 1e-3).
    pub tolerance: f64,
    /// The kernel-column cache budget, in bytes.
    pub cache_bytes: u64,
    /// Whether to shrink (always on outside tests that compare both ways).
    pub shrinking: bool,
}

struct Smo<'a> {
    kernel: KernelFn,
    width: usize,
    /// Rows in solver order, row-major.
    rows: Vec<f64>,
    y: Vec<f64>,
    alpha: Vec<f64>,
    bound: Vec<Bound>,
    cap: Vec<f64>,
    /// The gradient Qα − 1 (over the active rows it is always exact).
    grad: Vec<f64>,
    /// Σ over upper-bound j of Cⱼ·Qᵢⱼ: rebuilds the gradient of shrunk rows.
    grad_bar: Vec<f64>,
    /// Qᵢᵢ.
    diag: Vec<f64>,
    order: Vec<usize>,
    active: usize,
    cache: ColumnCache,
    params: SmoParams,
    unshrunk: bool,
    control: &'a Control,
}

/// Solves the dual for rows `x` (already scaled) with classes `y` (true = +1) and per-class
/// bounds `(c_pos, c_neg)`.
pub fn solve(
    x: ArrayView2<f64>,
    y: &[bool],
    bounds: (f64, f64),
    kernel: KernelFn,
    params: SmoParams,
    control: &Control,
) -> Result<Solution, SolverError> {
    if control.is_cancelled() {
        return Err(SolverError::Cancelled);
    }
    let n = y.len();
    let width = x.ncols();
    let rows: Vec<f64> = x.iter().copied().collect();
    let y: Vec<f64> = y.iter().map(|&c| if c { 1.0 } else { -1.0 }).collect();
    let cap: Vec<f64> = y
        .iter()
        .map(|&s| if s > 0.0 { bounds.0 } else { bounds.1 })
        .collect();
    let diag = (0..n)
        .map(|i| {
            let r = &rows[i * width..(i + 1) * width];
            kernel.eval(r, r)
        })
        .collect();
    let mut smo = Smo {
        kernel,
        width,
        rows,
        y,
        alpha: vec![0.0; n],
        bound: vec![Bound::Lower; n],
        cap,
        grad: vec![-1.0; n],
        grad_bar: vec![0.0; n],
        diag,
        order: (0..n).collect(),
        active: n,
        cache: ColumnCache::new(n, params.cache_bytes),
        params,
        unshrunk: false,
        control,
    };
    let (iterations, converged) = smo.run()?;
    Ok(smo.solution(iterations, converged))
}

impl Smo<'_> {
    fn len(&self) -> usize {
        self.y.len()
    }

    /// Makes column `i` of Q hold its first `len` entries (never evicting `keep`).
    fn load_column(&mut self, i: usize, len: usize, keep: Option<usize>) {
        let filled = self.cache.prepare(i, len, keep);
        if filled >= len {
            return;
        }
        let (kernel, width, yi) = (self.kernel, self.width, self.y[i]);
        let xi = &self.rows[i * width..(i + 1) * width];
        let column = &mut self.cache.column_mut(i)[filled..len];
        for (t, q) in column.iter_mut().enumerate() {
            let j = filled + t;
            let xj = &self.rows[j * width..(j + 1) * width];
            *q = (yi * self.y[j] * kernel.eval(xi, xj)) as f32;
        }
    }

    fn set_bound(&mut self, i: usize) {
        self.bound[i] = if self.alpha[i] >= self.cap[i] {
            Bound::Upper
        } else if self.alpha[i] <= 0.0 {
            Bound::Lower
        } else {
            Bound::Free
        };
    }

    /// The main loop; returns the iterations run and whether the tolerance was reached.
    fn run(&mut self) -> Result<(usize, bool), SolverError> {
        let n = self.len();
        let max_iterations = (100 * n).max(10_000_000);
        let mut counter = CHECK_EVERY.min(n) + 1;
        let mut iterations = 0;
        let mut converged = false;
        let mut counted = 0;
        while iterations < max_iterations {
            counter -= 1;
            if counter == 0 {
                counter = CHECK_EVERY.min(n);
                if self.params.shrinking {
                    self.shrink();
                }
                self.control.add_iterations((iterations - counted) as u64);
                counted = iterations;
                if self.control.is_cancelled() {
                    return Err(SolverError::Cancelled);
                }
            }
            let pair = match self.select_pair() {
                Some(pair) => pair,
                None => {
                    // Optimal on the active rows: bring the shrunk ones back and check again.
                    self.reconstruct_gradient();
                    self.active = n;
                    match self.select_pair() {
                        Some(pair) => {
                            counter = 1;
                            pair
                        }
                        None => {
                            converged = true;
                            break;
                        }
                    }
                }
            };
            iterations += 1;
            self.step(pair.0, pair.1);
        }
        self.control.add_iterations((iterations - counted) as u64);
        if self.active < n {
            self.reconstruct_gradient();
            self.active = n;
        }
        Ok((iterations, converged))
    }

    /// The pair that most decreases the objective to second order, or None when the maximal
    /// violation is below the tolerance.
    fn select_pair(&mut self) -> Option<(usize, usize)> {
        let mut gmax = f64::NEG_INFINITY;
        let mut first = None;
        for t in 0..self.active {
            let violation = -self.y[t] * self.grad[t];
            let movable = if self.y[t] > 0.0 {
                self.bound[t] != Bound::Upper
            } else {
                self.bound[t] != Bound::Lower
            };
            if movable && violation >= gmax {
                gmax = violation;
                first = Some(t);
            }
        }
        let i = first?;
        self.load_column(i, self.active, None);
        let qi = self.cache.column(i);
        let mut gmax2 = f64::NEG_INFINITY;
        let mut best = None;
        let mut best_gain = f64::INFINITY;
        for (j, q) in qi[..self.active].iter().enumerate() {
            let movable = if self.y[j] > 0.0 {
                self.bound[j] != Bound::Lower
            } else {
                self.bound[j] != Bound::Upper
            };
            if !movable {
                continue;
            }
            let yg = self.y[j] * self.grad[j];
            gmax2 = gmax2.max(yg);
            let diff = gmax + yg;
            if diff > 0.0 {
                let curvature =
                    self.diag[i] + self.diag[j] - 2.0 * self.y[i] * self.y[j] * f64::from(*q);
                let gain = -diff * diff / if curvature > 0.0 { curvature } else { TAU };
                if gain <= best_gain {
                    best_gain = gain;
                    best = Some(j);
                }
            }
        }
        if gmax + gmax2 < self.params.tolerance {
            return None;
        }
        best.map(|j| (i, j))
    }

    /// Moves αᵢ and αⱼ to the optimum of the pair, inside their boxes, and updates the gradient.
    fn step(&mut self, i: usize, j: usize) {
        let active = self.active;
        self.load_column(i, active, None);
        self.load_column(j, active, Some(i));
        let (ci, cj) = (self.cap[i], self.cap[j]);
        let (old_i, old_j) = (self.alpha[i], self.alpha[j]);
        let qij = f64::from(self.cache.column(i)[j]);
        let (mut ai, mut aj) = (old_i, old_j);
        if self.y[i] != self.y[j] {
            let curvature = positive(self.diag[i] + self.diag[j] + 2.0 * qij);
            let delta = (-self.grad[i] - self.grad[j]) / curvature;
            let diff = ai - aj;
            ai += delta;
            aj += delta;
            if diff > 0.0 {
                if aj < 0.0 {
                    aj = 0.0;
                    ai = diff;
                }
            } else if ai < 0.0 {
                ai = 0.0;
                aj = -diff;
            }
            if diff > ci - cj {
                if ai > ci {
                    ai = ci;
                    aj = ci - diff;
                }
            } else if aj > cj {
                aj = cj;
                ai = cj + diff;
            }
        } else {
            let curvature = positive(self.diag[i] + self.diag[j] - 2.0 * qij);
            let delta = (self.grad[i] - self.grad[j]) / curvature;
            let sum = ai + aj;
            ai -= delta;
            aj += delta;
            if sum > ci {
                if ai > ci {
                    ai = ci;
                    aj = sum - ci;
                }
            } else if aj < 0.0 {
                aj = 0.0;
                ai = sum;
            }
            if sum > cj {
                if aj > cj {
                    aj = cj;
                    ai = sum - cj;
                }
            } else if ai < 0.0 {
                ai = 0.0;
                aj = sum;
            }
        }
        self.alpha[i] = ai;
        self.alpha[j] = aj;
        let (di, dj) = (ai - old_i, aj - old_j);
        {
            let (qi, qj) = (self.cache.column(i), self.cache.column(j));
            for (t, g) in self.grad[..active].iter_mut().enumerate() {
                *g += f64::from(qi[t]) * di + f64::from(qj[t]) * dj;
            }
        }
        let (was_i, was_j) = (self.bound[i], self.bound[j]);
        self.set_bound(i);
        self.set_bound(j);
        self.update_grad_bar(i, was_i, None);
        self.update_grad_bar(j, was_j, Some(i));
    }

    /// Keeps `grad_bar` in step when row `i` entered or left its upper bound.
    fn update_grad_bar(&mut self, i: usize, was: Bound, keep: Option<usize>) {
        let now = self.bound[i];
        if (was == Bound::Upper) == (now == Bound::Upper) {
            return;
        }
        let n = self.len();
        self.load_column(i, n, keep);
        let sign = if now == Bound::Upper { 1.0 } else { -1.0 };
        let c = sign * self.cap[i];
        let qi = self.cache.column(i);
        for (g, q) in self.grad_bar.iter_mut().zip(qi) {
            *g += c * f64::from(*q);
        }
    }

    /// The gradient of the shrunk rows, rebuilt from `grad_bar` and the free coefficients.
    fn reconstruct_gradient(&mut self) {
        let n = self.len();
        if self.active == n {
            return;
        }
        for t in self.active..n {
            self.grad[t] = self.grad_bar[t] - 1.0;
        }
        let free: Vec<usize> = (0..self.active)
            .filter(|&i| self.bound[i] == Bound::Free)
            .collect();
        if free.is_empty() {
            return;
        }
        if !self.unshrunk {
            tracing::debug!(
                free = free.len(),
                shrunk = n - self.active,
                "SMO: rebuilding the gradient of shrunk rows"
            );
        }
        // Row by row over the shrunk ones: K(x_t, x_i) for every free i, no cache needed.
        let (kernel, width) = (self.kernel, self.width);
        for t in self.active..n {
            let xt = &self.rows[t * width..(t + 1) * width];
            let mut sum = 0.0;
            for &i in &free {
                let xi = &self.rows[i * width..(i + 1) * width];
                sum += self.alpha[i] * self.y[i] * kernel.eval(xi, xt);
            }
            self.grad[t] += self.y[t] * sum;
        }
    }

    fn be_shrunk(&self, i: usize, gmax1: f64, gmax2: f64) -> bool {
        match self.bound[i] {
            Bound::Upper if self.y[i] > 0.0 => -self.grad[i] > gmax1,
            Bound::Upper => -self.grad[i] > gmax2,
            Bound::Lower if self.y[i] > 0.0 => self.grad[i] > gmax2,
            Bound::Lower => self.grad[i] > gmax1,
            Bound::Free => false,
        }
    }

    /// Sets aside the rows that are at a bound and will very likely stay there.
    fn shrink(&mut self) {
        let (mut gmax1, mut gmax2) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
        for t in 0..self.active {
            let (up, low) = if self.y[t] > 0.0 {
                (self.bound[t] != Bound::Upper, self.bound[t] != Bound::Lower)
            } else {
                (self.bound[t] != Bound::Lower, self.bound[t] != Bound::Upper)
            };
            let yg = self.y[t] * self.grad[t];
            if up {
                gmax1 = gmax1.max(-yg);
            }
            if low {
                gmax2 = gmax2.max(yg);
            }
        }
        if !self.unshrunk && gmax1 + gmax2 <= self.params.tolerance * 10.0 {
            self.unshrunk = true;
            self.reconstruct_gradient();
            self.active = self.len();
        }
        let mut t = 0;
        while t < self.active {
            if self.be_shrunk(t, gmax1, gmax2) {
                self.active -= 1;
                while self.active > t {
                    if !self.be_shrunk(self.active, gmax1, gmax2) {
                        self.swap(t, self.active);
                        break;
                    }
                    self.active -= 1;
                }
            }
            t += 1;
        }
    }

    fn swap(&mut self, i: usize, j: usize) {
        self.cache.swap_rows(i, j);
        for t in 0..self.width {
            self.rows.swap(i * self.width + t, j * self.width + t);
        }
        self.y.swap(i, j);
        self.alpha.swap(i, j);
        self.bound.swap(i, j);
        self.cap.swap(i, j);
        self.grad.swap(i, j);
        self.grad_bar.swap(i, j);
        self.diag.swap(i, j);
        self.order.swap(i, j);
    }

    /// The offset ρ (libsvm's: the mean of yᵢGᵢ over free rows, else the middle of the
    /// feasible interval) and the coefficients back in the original row order.
    fn solution(&self, iterations: usize, converged: bool) -> Solution {
        let (mut upper, mut lower) = (f64::INFINITY, f64::NEG_INFINITY);
        let (mut free_sum, mut free) = (0.0, 0usize);
        for i in 0..self.len() {
            let yg = self.y[i] * self.grad[i];
            match (self.bound[i], self.y[i] > 0.0) {
                (Bound::Upper, false) | (Bound::Lower, true) => upper = upper.min(yg),
                (Bound::Upper, true) | (Bound::Lower, false) => lower = lower.max(yg),
                (Bound::Free, _) => {
                    free += 1;
                    free_sum += yg;
                }
            }
        }
        let rho = if free > 0 {
            free_sum / free as f64
        } else {
            (upper + lower) / 2.0
        };
        let objective = (0..self.len())
            .map(|i| self.alpha[i] * (self.grad[i] - 1.0))
            .sum::<f64>()
            / 2.0;
        let mut signed = vec![0.0; self.len()];
        for (t, &original) in self.order.iter().enumerate() {
            signed[original] = self.y[t] * self.alpha[t];
        }
        Solution {
            signed_alpha: signed,
            rho,
            iterations,
            objective,
            converged,
        }
    }
}

fn positive(curvature: f64) -> f64 {
    if curvature > 0.0 {
        curvature
    } else {
        TAU
    }
}
