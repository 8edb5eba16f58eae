//! Fitting and evaluating: the scaler and SVM, stratified k-fold cross-validation and a
//! held-out split, all seeded.

use linfa::dataset::Dataset;
use linfa::traits::{Fit, Transformer};
use linfa_preprocessing::linear_scaling::LinearScaler;
use ndarray::{Array1, Array2, Axis};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::model::artifact::{Metrics, TrainParams};
use crate::model::checks::REFERENCE_ROWS;
use crate::model::Classifier;

use super::control::Control;
use super::parallel;
use super::solver;

/// The share of each class held out for evaluation.
const HOLDOUT_SHARE: f64 = 0.2;

/// Why a fit cannot run or failed.
#[derive(Debug, thiserror::Error)]
pub enum FitError {
    /// Too few rows, or one class only.
    #[error("cannot train: {0}")]
    Data(String),
    /// The scaler failed.
    #[error("fitting the scaler failed: {0}")]
    Scaler(#[from] linfa_preprocessing::PreprocessingError),
    /// The solved SVM could not be made into linfa-svm's model.
    #[error("the fitted SVM could not be built as linfa-svm's model: {0}")]
    Model(String),
    /// The run was cancelled (Ctrl-C) before this fit finished.
    #[error("training was cancelled")]
    Cancelled,
}

impl From<solver::SolverError> for FitError {
    fn from(e: solver::SolverError) -> Self {
        match e {
            solver::SolverError::Cancelled => FitError::Cancelled,
            solver::SolverError::Form(why) => FitError::Model(why),
        }
    }
}

/// Fits a scaler and an SVM on canonical features.
pub fn fit(x: &Array2<f64>, y: &[bool], params: &TrainParams) -> Result<Classifier, FitError> {
    fit_with(x, y, params, &Control::new())
}

/// [`fit`], stopping early with [`FitError::Cancelled`] once `control` is cancelled, and
/// counting its solver's progress there.
pub fn fit_with(
    x: &Array2<f64>,
    y: &[bool],
    params: &TrainParams,
    control: &Control,
) -> Result<Classifier, FitError> {
    if control.is_cancelled() {
        return Err(FitError::Cancelled);
    }
    let classes = (
        y.iter().filter(|v| **v).count(),
        y.iter().filter(|v| !**v).count(),
    );
    if classes.0 == 0 || classes.1 == 0 {
        return Err(FitError::Data(format!(
            "{} real and {} fake rows: both classes are needed",
            classes.0, classes.1
        )));
    }
    let targets = Array1::from_vec(y.to_vec());
    let dataset = Dataset::new(x.clone(), targets);
    let scaler = LinearScaler::standard().fit(&dataset)?;
    let scaled = scaler.transform(x.clone());
    let (svm, run) = solver::fit_svm(scaled.view(), y, params, control)?;
    tracing::debug!(
        solver = run.solver,
        iterations = run.iterations,
        converged = run.converged,
        support_vectors = run.support_vectors,
        rows = y.len(),
        "SVM fitted"
    );
    Ok(Classifier::new(scaler, svm))
}

/// Seeded stratified folds: `k` disjoint test index sets, each with the classes' shares.
pub fn stratified_folds(y: &[bool], k: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut folds = vec![Vec::new(); k];
    for class in [false, true] {
        let mut idx: Vec<usize> = (0..y.len()).filter(|&i| y[i] == class).collect();
        idx.shuffle(&mut rng);
        for (n, i) in idx.into_iter().enumerate() {
            folds[n % k].push(i);
        }
    }
    for f in &mut folds {
        f.sort_unstable();
    }
    folds
}

/// A seeded stratified split: (train, test) with about `test_share` of each class in test.
pub fn holdout_split(y: &[bool], test_share: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for class in [false, true] {
        let mut idx: Vec<usize> = (0..y.len()).filter(|&i| y[i] == class).collect();
        idx.shuffle(&mut rng);
        let n_test = ((idx.len() as f64) * test_share).round() as usize;
        test.extend_from_slice(&idx[..n_test]);
        train.extend_from_slice(&idx[n_test..]);
    }
    train.sort_unstable();
    test.sort_unstable();
    (train, test)
}

/// Up to [`REFERENCE_ROWS`] rows of the hold-out split, evenly spaced over it (both classes):
/// with the final model's decision values they are the version's reference set.
pub fn reference_rows(x: &Array2<f64>, y: &[bool], params: &TrainParams) -> Array2<f64> {
    let (_, test) = holdout_split(y, HOLDOUT_SHARE, params.seed);
    let step = test.len().div_ceil(REFERENCE_ROWS).max(1);
    let picked: Vec<usize> = test.iter().step_by(step).copied().collect();
    x.select(Axis(0), &picked)
}

/// Rows of `x` and `y` at `idx`.
pub fn take(x: &Array2<f64>, y: &[bool], idx: &[usize]) -> (Array2<f64>, Vec<bool>) {
    (x.select(Axis(0), idx), idx.iter().map(|&i| y[i]).collect())
}

/// Confusion matrix `[[tn, fp], [fn, tp]]` of predictions against truth.
pub fn confusion(truth: &[bool], predicted: &[bool]) -> [[u64; 2]; 2] {
    let mut m = [[0u64; 2]; 2];
    for (t, p) in truth.iter().zip(predicted) {
        m[usize::from(*t)][usize::from(*p)] += 1;
    }
    m
}

/// Accuracy, precision, recall and F1 of class "real" from a confusion matrix.
pub fn scores(m: &[[u64; 2]; 2]) -> (f64, f64, f64, f64) {
    let [[tn, fp], [fn_, tp]] = m.map(|r| r.map(|v| v as f64));
    let ratio = |a: f64, b: f64| if b == 0.0 { 0.0 } else { a / b };
    let precision = ratio(tp, tp + fp);
    let recall = ratio(tp, tp + fn_);
    (
        ratio(tp + tn, tp + tn + fp + fn_),
        precision,
        recall,
        ratio(2.0 * precision * recall, precision + recall),
    )
}

/// Predicted classes of a classifier on canonical features.
pub fn predict(model: &Classifier, x: &Array2<f64>) -> Vec<bool> {
    model
        .decision_values(x.clone())
        .into_iter()
        .map(|s| s >= 0.0)
        .collect()
}

/// The accuracy on fold `test` (sorted row indexes) of a model fitted on every other row.
pub fn fold_accuracy(
    x: &Array2<f64>,
    y: &[bool],
    test: &[usize],
    params: &TrainParams,
    control: &Control,
) -> Result<f64, FitError> {
    let train: Vec<usize> = (0..y.len())
        .filter(|j| test.binary_search(j).is_err())
        .collect();
    let (xt, yt) = take(x, y, &train);
    let (xv, yv) = take(x, y, test);
    let model = fit_with(&xt, &yt, params, control)?;
    Ok(scores(&confusion(&yv, &predict(&model, &xv))).0)
}

/// Cross-validates, evaluates on a hold-out split, and fits the final model on all rows.
/// `progress` is called after each fit with (done, total, what).
pub fn train_and_evaluate(
    x: &Array2<f64>,
    y: &[bool],
    params: &TrainParams,
    control: &Control,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<(Classifier, Metrics, EvalTimes, Holdout), FitError> {
    let k = params.folds.max(2);
    if y.len() < k * 2 {
        return Err(FitError::Data(format!(
            "{} rows are too few for {k}-fold cross-validation",
            y.len()
        )));
    }
    let total = k + 2;
    let started = std::time::Instant::now();
    let folds = stratified_folds(y, k, params.seed);
    // The k folds and the hold-out fit side by side, sharing the cache budget.
    let workers = parallel::threads().min(k + 1);
    let shared = control.with_kernel_cache(control.kernel_cache_bytes() / workers as u64);
    let mut done = 0;
    let evaluated = parallel::run(
        k + 1,
        workers,
        |i| match folds.get(i) {
            Some(test) => fold_accuracy(x, y, test, params, &shared).map(Evaluation::Fold),
            None => holdout_fit(x, y, params, &shared).map(Evaluation::Holdout),
        },
        |i, result: &Result<Evaluation, FitError>| {
            if result.is_ok() {
                done += 1;
                let what = if i < k {
                    format!("cross-validation fold {}/{k}", i + 1)
                } else {
                    "hold-out evaluation".to_owned()
                };
                progress(done, total, &what);
            }
        },
    );
    let mut fold_accuracies = Vec::with_capacity(k);
    let mut holdout = Holdout::default();
    for result in evaluated {
        match result? {
            Evaluation::Fold(accuracy) => fold_accuracies.push(accuracy),
            Evaluation::Holdout(h) => holdout = h,
        }
    }
    let m = confusion(&holdout.truth, &holdout.predicted());
    let (accuracy, precision, recall, f1) = scores(&m);
    let eval_seconds = started.elapsed().as_secs_f64();

    let started = std::time::Instant::now();
    let model = fit_with(x, y, params, control)?;
    progress(total, total, "final fit on all rows");
    let train_seconds = started.elapsed().as_secs_f64();
    let metrics = Metrics {
        cv_accuracy: fold_accuracies.iter().sum::<f64>() / k as f64,
        cv_fold_accuracy: fold_accuracies,
        holdout_accuracy: accuracy,
        precision,
        recall,
        f1,
        confusion: m,
        support_vectors: model.svm.nsupport(),
        train_rows: y.len(),
        holdout_rows: holdout.truth.len(),
    };
    Ok((
        model,
        metrics,
        EvalTimes {
            eval_seconds,
            train_seconds,
        },
        holdout,
    ))
}

/// One evaluation fit's outcome.
enum Evaluation {
    /// A cross-validation fold's accuracy.
    Fold(f64),
    /// The hold-out model's scores.
    Holdout(Holdout),
}

/// Fits on the training share of the hold-out split and scores the held-out rows.
fn holdout_fit(
    x: &Array2<f64>,
    y: &[bool],
    params: &TrainParams,
    control: &Control,
) -> Result<Holdout, FitError> {
    let (train, test) = holdout_split(y, HOLDOUT_SHARE, params.seed);
    let (xt, yt) = take(x, y, &train);
    let (xv, yv) = take(x, y, &test);
    let model = fit_with(&xt, &yt, params, control)?;
    Ok(Holdout {
        scores: model.decision_values(xv),
        truth: yv,
    })
}

/// The hold-out rows as the hold-out model scored them: the report draws its ROC curve and
/// score distributions from these.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Holdout {
    /// The true class of each hold-out row (true: real).
    pub truth: Vec<bool>,
    /// The hold-out model's decision value for each row; 0 and above predicts real.
    pub scores: Vec<f64>,
}

impl Holdout {
    /// The predicted classes, with the threshold [`predict`] uses.
    pub fn predicted(&self) -> Vec<bool> {
        self.scores.iter().map(|s| *s >= 0.0).collect()
    }
}

/// Seconds spent evaluating (CV and hold-out) and fitting the final model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalTimes {
    /// Cross-validation and hold-out.
    pub eval_seconds: f64,
    /// The final fit.
    pub train_seconds: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::artifact::Kernel;

    #[test]
    fn folds_are_disjoint_cover_everything_and_keep_class_shares() {
        let y: Vec<bool> = (0..103).map(|i| i % 3 == 0).collect();
        let folds = stratified_folds(&y, 5, 7);
        let mut all: Vec<usize> = folds.concat();
        all.sort_unstable();
        assert_eq!(all, (0..103).collect::<Vec<_>>());
        for f in &folds {
            let real = f.iter().filter(|&&i| y[i]).count();
            assert!((6..=7).contains(&real), "{real} real in a fold");
        }
        assert_eq!(folds, stratified_folds(&y, 5, 7), "seeded");
    }

    #[test]
    fn scores_from_a_confusion_matrix() {
        let m = confusion(&[true, true, false, false], &[true, false, false, true]);
        assert_eq!(m, [[1, 1], [1, 1]]);
        let (acc, p, r, f1) = scores(&m);
        assert_eq!((acc, p, r, f1), (0.5, 0.5, 0.5, 0.5));
    }

    /// Two noisy blobs, separable along the first feature.
    fn blobs(n: usize) -> (Array2<f64>, Vec<bool>) {
        let y: Vec<bool> = (0..n).map(|i| i % 2 == 0).collect();
        let x = Array2::from_shape_fn((n, 2), |(i, j)| {
            let noise = ((i * 7919 + j * 104_729) % 97) as f64 / 97.0 - 0.5;
            if j == 0 && y[i] {
                1.0 + noise
            } else {
                noise
            }
        });
        (x, y)
    }

    #[test]
    fn the_holdout_scores_are_the_confusion_matrix_s_source() {
        let (x, y) = blobs(60);
        let params = TrainParams {
            folds: 2,
            ..TrainParams::with_kernel(Kernel::Linear)
        };
        let (_, metrics, _, holdout) =
            train_and_evaluate(&x, &y, &params, &Control::new(), &mut |_, _, _| {}).unwrap();
        assert_eq!(holdout.truth.len(), metrics.holdout_rows);
        assert_eq!(holdout.scores.len(), metrics.holdout_rows);
        assert_eq!(
            confusion(&holdout.truth, &holdout.predicted()),
            metrics.confusion
        );
    }

    #[test]
    fn a_cancelled_control_stops_training() {
        let (x, y) = blobs(60);
        let params = TrainParams {
            folds: 3,
            ..TrainParams::with_kernel(Kernel::Linear)
        };
        let control = Control::new();
        control.cancel();
        let mut fits = 0;
        let before = train_and_evaluate(&x, &y, &params, &control, &mut |_, _, _| fits += 1);
        assert!(matches!(before, Err(FitError::Cancelled)), "{before:?}");
        assert_eq!(fits, 0);

        // Cancelled while running, after the second fit: evaluation fits already running on
        // other cores (or finished and not yet reported) still count, but the final fit, which
        // starts only after them all, never runs.
        let control = Control::new();
        let watcher = control.clone();
        let mut fits = 0;
        let during = train_and_evaluate(&x, &y, &params, &control, &mut |done, _, _| {
            fits = done;
            if done == 2 {
                watcher.cancel();
            }
        });
        assert!(matches!(during, Err(FitError::Cancelled)), "{during:?}");
        assert!(
            (2..5).contains(&fits),
            "{fits} fits done: the final fit never ran"
        );
    }

    #[test]
    fn one_class_is_refused() {
        let x = Array2::zeros((4, 2));
        let params = TrainParams {
            c: 1.0,
            folds: 2,
            seed: 1,
            ..TrainParams::with_kernel(Kernel::Linear)
        };
        assert!(matches!(
            fit(&x, &[true; 4], &params),
            Err(FitError::Data(_))
        ));
    }
}
