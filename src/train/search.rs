//! Hyperparameter search: every candidate (C, and the width for the Gaussian kernel) is scored
//! by cross-validation on the same seeded folds as the training run, with the folds of all
//! candidates fitted in parallel on the available cores. The best mean accuracy wins; a tie
//! goes to the simpler model (linear before Gaussian, smaller C, wider kernel).

use std::time::Instant;

use ndarray::Array2;
use serde::{Deserialize, Serialize};

use super::control::Control;
use super::fit::{fold_accuracy, stratified_folds, FitError};
use super::parallel;
use crate::model::artifact::{Kernel, TrainParams};

/// One fold of one candidate: its accuracy and the seconds it took.
type FoldScore = Result<(f64, f64), FitError>;

/// The values tried.
#[derive(Debug, Clone, PartialEq)]
pub struct Grid {
    /// C values.
    pub c: Vec<f64>,
    /// Gaussian widths (ignored for the linear kernel).
    pub widths: Vec<f64>,
}

impl Default for Grid {
    fn default() -> Self {
        Self {
            c: vec![0.1, 1.0, 10.0, 100.0],
            widths: vec![0.5, 1.0, 2.0, 4.0, 8.0],
        }
    }
}

/// One candidate and how it scored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    /// The kernel.
    pub kernel: Kernel,
    /// C.
    pub c: f64,
    /// The Gaussian width.
    pub kernel_width: Option<f64>,
    /// Accuracy per fold.
    pub fold_accuracy: Vec<f64>,
    /// Mean accuracy over the folds.
    pub mean_accuracy: f64,
    /// Standard deviation of the fold accuracies.
    pub std_accuracy: f64,
    /// Seconds of fitting and scoring, summed over the folds.
    pub fit_seconds: f64,
}

/// A whole search: the candidates in grid order and the one picked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Search {
    /// Folds per candidate.
    pub folds: usize,
    /// Every candidate, in grid order.
    pub candidates: Vec<Candidate>,
    /// The index of the best candidate.
    pub best: usize,
    /// Wall-clock seconds of the whole search.
    pub seconds: f64,
}

impl Search {
    /// The parameters of the best candidate, on top of `base`.
    pub fn best_params(&self, base: &TrainParams) -> TrainParams {
        let best = &self.candidates[self.best];
        TrainParams {
            kernel: best.kernel,
            c: best.c,
            kernel_width: best.kernel_width,
            ..base.clone()
        }
    }
}

/// The candidates of a grid for `base`'s kernel, in grid order.
pub fn candidates(base: &TrainParams, grid: &Grid) -> Vec<TrainParams> {
    let widths: Vec<Option<f64>> = match base.kernel {
        Kernel::Linear => vec![None],
        Kernel::Gaussian => grid.widths.iter().map(|w| Some(*w)).collect(),
    };
    grid.c
        .iter()
        .flat_map(|&c| {
            widths.iter().map(move |&kernel_width| TrainParams {
                c,
                kernel_width,
                ..base.clone()
            })
        })
        .collect()
}

/// Scores every candidate on the same folds, `threads` fits at a time. `progress` is called
/// on this thread after each fit with (done, total, what).
pub fn search(
    x: &Array2<f64>,
    y: &[bool],
    base: &TrainParams,
    grid: &Grid,
    threads: usize,
    control: &Control,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<Search, FitError> {
    let started = Instant::now();
    let params = candidates(base, grid);
    if params.is_empty() {
        return Err(FitError::Data("the search grid is empty".into()));
    }
    let k = base.folds.max(2);
    let folds = stratified_folds(y, k, base.seed);
    let jobs: Vec<(usize, usize)> = (0..params.len())
        .flat_map(|c| (0..k).map(move |f| (c, f)))
        .collect();
    let workers = threads.clamp(1, jobs.len());
    // The cache budget is the run's, not each fit's.
    let control = &control.with_kernel_cache(control.kernel_cache_bytes() / workers as u64);
    let mut done = 0;
    let results = parallel::run(
        jobs.len(),
        workers,
        |i| {
            let (c, f) = jobs[i];
            let t = Instant::now();
            fold_accuracy(x, y, &folds[f], &params[c], control)
                .map(|accuracy| (accuracy, t.elapsed().as_secs_f64()))
        },
        // Progress counts fits done, not fits refused after a cancel.
        |i, scored: &FoldScore| {
            if scored.is_ok() {
                done += 1;
                let (c, f) = jobs[i];
                let p = &params[c];
                progress(
                    done,
                    jobs.len(),
                    &format!("search: C {} {} fold {}/{k}", p.c, width_text(p), f + 1),
                );
            }
        },
    );
    let mut scored = results.into_iter();
    let mut out = Vec::with_capacity(params.len());
    for p in &params {
        let mut fold_accuracy = Vec::with_capacity(k);
        let mut fit_seconds = 0.0;
        for _ in 0..k {
            let (accuracy, seconds) = scored.next().expect("k results per candidate")?;
            fold_accuracy.push(accuracy);
            fit_seconds += seconds;
        }
        let (mean, std) = mean_std(&fold_accuracy);
        out.push(Candidate {
            kernel: p.kernel,
            c: p.c,
            kernel_width: p.kernel_width,
            fold_accuracy,
            mean_accuracy: mean,
            std_accuracy: std,
            fit_seconds,
        });
    }
    let best = pick(&out);
    Ok(Search {
        folds: k,
        candidates: out,
        best,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The best mean accuracy; among equals (within 1e-9), the simplest candidate.
fn pick(candidates: &[Candidate]) -> usize {
    let top = candidates
        .iter()
        .map(|c| c.mean_accuracy)
        .fold(f64::NEG_INFINITY, f64::max);
    let simplicity = |c: &Candidate| {
        (
            u8::from(c.kernel == Kernel::Gaussian),
            c.c,
            // A wider Gaussian is the smoother model.
            -c.kernel_width.unwrap_or(0.0),
        )
    };
    (0..candidates.len())
        .filter(|&i| candidates[i].mean_accuracy >= top - 1e-9)
        .min_by(|&a, &b| {
            simplicity(&candidates[a])
                .partial_cmp(&simplicity(&candidates[b]))
                .expect("finite grid values")
        })
        .expect("at least one candidate")
}

fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

fn width_text(p: &TrainParams) -> String {
    p.kernel_width
        .map_or_else(String::new, |w| format!("width {w}"))
}

impl std::fmt::Display for Search {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "search: {} candidates x {} folds in {:.2}s (same folds for every candidate)",
            self.candidates.len(),
            self.folds,
            self.seconds
        )?;
        writeln!(
            f,
            "  {:>8}  {:>8}  {:>8}  {:>7}  {:>8}",
            "C", "width", "mean", "std", "fit s"
        )?;
        for (i, c) in self.candidates.iter().enumerate() {
            writeln!(
                f,
                "  {:>8}  {:>8}  {:>7.2}%  {:>6.2}%  {:>8.2}{}",
                c.c,
                c.kernel_width.map_or("-".into(), |w| w.to_string()),
                c.mean_accuracy * 100.0,
                c.std_accuracy * 100.0,
                c.fit_seconds,
                if i == self.best { "  <- best" } else { "" }
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(kernel: Kernel, c: f64, width: Option<f64>, mean: f64) -> Candidate {
        Candidate {
            kernel,
            c,
            kernel_width: width,
            fold_accuracy: vec![mean],
            mean_accuracy: mean,
            std_accuracy: 0.0,
            fit_seconds: 0.0,
        }
    }

    #[test]
    fn a_tie_goes_to_the_simpler_model() {
        let g = Kernel::Gaussian;
        let list = [
            candidate(g, 10.0, Some(1.0), 0.98),
            candidate(g, 1.0, Some(1.0), 0.98),
            candidate(g, 1.0, Some(4.0), 0.98),
            candidate(g, 100.0, Some(8.0), 0.97),
        ];
        assert_eq!(pick(&list), 2, "smaller C, then the wider kernel");
        let with_linear = [
            candidate(g, 0.1, Some(8.0), 0.9),
            candidate(Kernel::Linear, 100.0, None, 0.9),
        ];
        assert_eq!(pick(&with_linear), 1, "linear before Gaussian");
        let better = [
            candidate(Kernel::Linear, 1.0, None, 0.9),
            candidate(g, 100.0, Some(0.5), 0.95),
        ];
        assert_eq!(pick(&better), 1, "accuracy first");
    }

    #[test]
    fn every_candidate_is_scored_on_the_same_folds_in_parallel() {
        // Two blobs, separable along the first feature, with some overlap.
        let n = 120;
        let y: Vec<bool> = (0..n).map(|i| i % 2 == 0).collect();
        let x = Array2::from_shape_fn((n, 2), |(i, j)| {
            let noise = ((i * 7919 + j * 104_729) % 97) as f64 / 97.0 - 0.5;
            match j {
                0 if y[i] => 1.0 + noise,
                0 => -1.0 + noise,
                _ => noise * 3.0,
            }
        });
        let base = TrainParams {
            folds: 3,
            seed: 5,
            ..TrainParams::with_kernel(Kernel::Gaussian)
        };
        let grid = Grid {
            c: vec![0.1, 10.0],
            widths: vec![1.0, 4.0],
        };
        let mut calls = 0;
        let search = search(
            &x,
            &y,
            &base,
            &grid,
            2,
            &Control::new(),
            &mut |_, total, _| {
                calls += 1;
                assert_eq!(total, 12);
            },
        )
        .unwrap();
        assert_eq!(calls, 12, "one progress call per fit");
        assert_eq!(search.candidates.len(), 4);
        assert!(search.candidates.iter().all(|c| c.fold_accuracy.len() == 3));
        let best = &search.candidates[search.best];
        assert!(search
            .candidates
            .iter()
            .all(|c| c.mean_accuracy <= best.mean_accuracy));
        assert!(best.mean_accuracy > 0.8, "{search}");
        // The same folds as a plain run: a candidate's fold scores are reproducible alone.
        let again = fold_accuracy(
            &x,
            &y,
            &stratified_folds(&y, 3, 5)[0],
            &search.best_params(&base),
            &Control::new(),
        )
        .unwrap();
        assert_eq!(again, best.fold_accuracy[0]);
        let text = search.to_string();
        assert!(
            text.contains("<- best") && text.contains("4 candidates x 3 folds"),
            "{text}"
        );
    }
}
