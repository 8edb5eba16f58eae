//! The solvers against linfa-svm's own solver, against the KKT conditions of the problem they
//! solve, and against themselves with the cache and shrinking taken away.

use linfa::dataset::Dataset;
use linfa::traits::Fit;
use ndarray::{Array1, Array2};
use rand::{Rng, SeedableRng};

use super::*;

/// Two overlapping classes in 4 standardized-like features: some rows end up inside the
/// margin or on the wrong side, so every kind of coefficient (zero, free, at C) occurs.
fn data(rows: usize, seed: u64) -> (Array2<f64>, Vec<bool>) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let y: Vec<bool> = (0..rows).map(|i| i % 3 != 0).collect();
    let x = Array2::from_shape_fn((rows, 4), |(r, c)| {
        let centre = if y[r] { 0.7 } else { -0.7 };
        let curve = if c == 1 { 0.5 * (r as f64).sin() } else { 0.0 };
        centre * (1.0 + c as f64 * 0.3) + curve + rng.random_range(-1.3..1.3)
    });
    (x, y)
}

fn params(kernel: Kernel, c: f64, tolerance: f64) -> TrainParams {
    TrainParams {
        c,
        tolerance,
        ..TrainParams::with_kernel(kernel)
    }
}

fn decisions(svm: &Svm<f64, bool>, x: &Array2<f64>) -> Vec<f64> {
    x.outer_iter()
        .map(|r| svm.weighted_sum(&r) - svm.rho)
        .collect()
}

fn smo_params(cache_bytes: u64, shrinking: bool) -> smo::SmoParams {
    smo::SmoParams {
        tolerance: 1e-6,
        cache_bytes,
        shrinking,
    }
}

/// Every row's margin yᵢf(xᵢ) against its coefficient: ≥ 1 at zero, ≤ 1 at C, = 1 between,
/// within `slack`.
fn assert_kkt(solution: &Solution, y: &[bool], margins: &[f64], cap: f64, slack: f64) {
    let mut kinds = [0usize; 3];
    for (i, (&a, &m)) in solution.signed_alpha.iter().zip(margins).enumerate() {
        let a = a.abs();
        let ok = if a <= 1e-12 {
            kinds[0] += 1;
            m >= 1.0 - slack
        } else if a >= cap - 1e-12 {
            kinds[2] += 1;
            m <= 1.0 + slack
        } else {
            kinds[1] += 1;
            (m - 1.0).abs() <= slack
        };
        assert!(ok, "row {i} (class {}): alpha {a}, margin {m}", y[i]);
    }
    assert!(
        kinds.iter().all(|&k| k > 0),
        "zero, free and bound coefficients all occur: {kinds:?}"
    );
}

#[test]
fn the_gaussian_solver_meets_the_kkt_conditions_and_matches_linfa() {
    let (x, y) = data(400, 1);
    let kernel = KernelFn::Gaussian { width: 2.0 };
    let control = Control::new();
    let solution = smo::solve(
        x.view(),
        &y,
        (1.0, 1.0),
        kernel,
        smo_params(1 << 20, true),
        &control,
    )
    .unwrap();
    assert!(solution.converged);
    let svm = gaussian_svm(x.view(), &solution, 2.0).unwrap();
    let ours = decisions(&svm, &x);
    let margins: Vec<f64> = ours
        .iter()
        .zip(&y)
        .map(|(f, &c)| if c { *f } else { -f })
        .collect();
    assert_kkt(&solution, &y, &margins, 1.0, 1e-4);

    let theirs = Svm::<f64, bool>::params()
        .pos_neg_weights(1.0, 1.0)
        .eps(1e-6)
        .gaussian_kernel(2.0)
        .fit(&Dataset::new(x.clone(), Array1::from_vec(y.clone())))
        .unwrap();
    let reference = decisions(&theirs, &x);
    for (a, b) in ours.iter().zip(&reference) {
        assert!((a - b).abs() < 1e-3, "ours {a}, linfa {b}");
    }
    assert_eq!(svm.nsupport(), theirs.nsupport());
}

#[test]
fn a_two_column_cache_and_no_shrinking_reach_the_same_solution() {
    let (x, y) = data(300, 2);
    let kernel = KernelFn::Gaussian { width: 1.0 };
    let control = Control::new();
    let solve = |cache, shrinking| {
        smo::solve(
            x.view(),
            &y,
            (2.0, 1.0),
            kernel,
            smo_params(cache, shrinking),
            &control,
        )
        .unwrap()
    };
    let roomy = solve(1 << 24, true);
    for other in [solve(0, true), solve(1 << 24, false)] {
        assert!(
            (other.rho - roomy.rho).abs() < 1e-4,
            "{} vs {}",
            other.rho,
            roomy.rho
        );
        assert!((other.objective - roomy.objective).abs() < 1e-5 * roomy.objective.abs());
        for (a, b) in other.signed_alpha.iter().zip(&roomy.signed_alpha) {
            assert!((a - b).abs() < 1e-3, "{a} vs {b}");
        }
    }
}

#[test]
fn the_linear_solver_meets_the_kkt_conditions_with_its_bias_feature() {
    let (x, y) = data(1000, 3);
    let fit = linear::solve(x.view(), &y, (1.0, 1.0), 1e-3, 7, &Control::new()).unwrap();
    assert!(fit.solution.converged);
    let svm = linear_svm(&fit.weights, &fit.solution).unwrap();
    let margins: Vec<f64> = decisions(&svm, &x)
        .iter()
        .zip(&y)
        .map(|(f, &c)| if c { *f } else { -f })
        .collect();
    // It stops at liblinear's tolerance, whatever it is asked for.
    assert_kkt(&fit.solution, &y, &margins, 1.0, linear::LINEAR_TOLERANCE);
}

#[test]
fn the_linear_solver_agrees_with_linfa_on_nearly_every_row() {
    let (x, y) = data(600, 4);
    let ours = fit_svm(
        x.view(),
        &y,
        &params(Kernel::Linear, 1.0, 1e-4),
        &Control::new(),
    )
    .unwrap()
    .0;
    let theirs = Svm::<f64, bool>::params()
        .pos_neg_weights(1.0, 1.0)
        .eps(1e-6)
        .linear_kernel()
        .fit(&Dataset::new(x.clone(), Array1::from_vec(y.clone())))
        .unwrap();
    let (a, b) = (decisions(&ours, &x), decisions(&theirs, &x));
    let agree = a
        .iter()
        .zip(&b)
        .filter(|(p, q)| (**p >= 0.0) == (**q >= 0.0))
        .count();
    // The offset is regularized here and not in linfa's (libsvm's) problem: labels may differ
    // only on rows right at the boundary.
    assert!(
        agree * 1000 >= 995 * a.len(),
        "{agree} of {} agree",
        a.len()
    );
}

#[test]
fn a_cancelled_control_stops_both_solvers() {
    let (x, y) = data(200, 5);
    let control = Control::new();
    control.cancel();
    for kernel in [Kernel::Linear, Kernel::Gaussian] {
        let result = fit_svm(x.view(), &y, &params(kernel, 1.0, 1e-3), &control);
        assert!(matches!(result, Err(SolverError::Cancelled)), "{kernel}");
    }
}

#[test]
fn progress_is_counted_in_the_control() {
    let (x, y) = data(3000, 6);
    let control = Control::new();
    fit_svm(
        x.view(),
        &y,
        &params(Kernel::Gaussian, 10.0, 1e-3),
        &control,
    )
    .unwrap();
    assert!(control.iterations() > 0);
    fit_svm(x.view(), &y, &params(Kernel::Linear, 1.0, 1e-3), &control).unwrap();
    assert!(control.chunks() > 0, "passes of the linear solver");
}
