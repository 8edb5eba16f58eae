//! `ml-pipeline-tools train-compare`: our side of the scikit-learn comparison.
//!
//! On the first N rows of a canonical CSV it cross-validates with the library's own seeded
//! stratified folds (`fit::stratified_folds`), fitting `fit::fit` on each fold's training rows
//! (the scaler is fitted inside, on those rows only), and writes:
//! - `oof.csv`: `row,fold,label,decision,predicted`, one line per row: its fold and our
//!   out-of-fold decision value and class (1 = real);
//! - `ours.json`: the settings, the feature order, per-fold and mean accuracy, and the time of
//!   a full fit on all N rows (median of `--repeat`).
//!
//! `tools/compare/sklearn_compare.py` then fits scikit-learn's `SVC` on the same folds.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;

use ml_pipeline::spec::PipelineSpec;
use ml_pipeline::train::data::LABEL_COLUMN;
use ml_pipeline::train::fit;

use super::rows::read_prefix;
use super::stats::Spread;
use super::FitArgs;

/// Options of `train-compare`.
#[derive(Debug, Clone, clap::Args)]
pub struct CompareArgs {
    /// A canonical CSV (notes.csv layout).
    #[arg(long)]
    pub csv: PathBuf,
    /// Use the first this many rows (default: all).
    #[arg(long)]
    pub rows: Option<usize>,
    /// Cross-validation folds.
    #[arg(long, default_value_t = 5)]
    pub folds: usize,
    /// The fold seed (as `train --seed`).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Full fits to time; default 5 up to 20 000 rows, 3 above.
    #[arg(long)]
    pub repeat: Option<usize>,
    /// The column holding the class.
    #[arg(long, default_value = LABEL_COLUMN)]
    pub label_column: String,
    /// Where oof.csv and ours.json are written (created).
    #[arg(long)]
    pub out: PathBuf,
    /// Kernel, C and width.
    #[command(flatten)]
    pub fit: FitArgs,
}

/// `ours.json`: what the Python side needs to fit the same thing, and our figures.
#[derive(Debug, Clone, Serialize)]
pub struct OurSide {
    /// The CSV the rows came from.
    pub csv: PathBuf,
    /// Rows used: the CSV's first `rows`.
    pub rows: usize,
    /// Feature columns in the order fitted (the spec's).
    pub features: Vec<String>,
    /// The class column (1 = real).
    pub label_column: String,
    /// `linear` or `gaussian`.
    pub kernel: String,
    /// The penalty C.
    pub c: f64,
    /// Gaussian width (gamma = 1/width); absent for linear.
    pub width: Option<f64>,
    /// The solver's stopping tolerance.
    pub tolerance: f64,
    /// Folds.
    pub folds: usize,
    /// Fold seed.
    pub seed: u64,
    /// Accuracy on each fold's rows of the model fitted on the others.
    pub fold_accuracy: Vec<f64>,
    /// Mean of `fold_accuracy`.
    pub cv_accuracy: f64,
    /// Full fits timed.
    pub repeats: usize,
    /// Seconds of each full fit on all rows (`fit::fit`, scaling included).
    pub fit_seconds: Vec<f64>,
    /// Median, min and max of `fit_seconds`.
    pub fit_spread: Spread,
    /// Support vectors of the full fit.
    pub support_vectors: usize,
}

/// Runs `train-compare`.
pub fn run(args: &CompareArgs) -> anyhow::Result<OurSide> {
    anyhow::ensure!(args.folds >= 2, "--folds must be at least 2");
    let spec = PipelineSpec::banknote();
    let data = read_prefix(&args.csv, &spec, &args.label_column, args.rows)?;
    let n = data.y.len();
    let params = args.fit.params();
    let folds = fit::stratified_folds(&data.y, args.folds, args.seed);
    let mut fold_of = vec![0usize; n];
    let mut decision = vec![f64::NAN; n];
    let mut fold_accuracy = Vec::with_capacity(folds.len());
    for (k, test) in folds.iter().enumerate() {
        let train: Vec<usize> = (0..n).filter(|j| test.binary_search(j).is_err()).collect();
        let (xt, yt) = fit::take(&data.x, &data.y, &train);
        let (xv, yv) = fit::take(&data.x, &data.y, test);
        let started = Instant::now();
        let model =
            fit::fit(&xt, &yt, &params).with_context(|| format!("fitting fold {}", k + 1))?;
        let values = model.decision_values(xv);
        let correct = values.iter().zip(&yv).filter(|(d, y)| (**d >= 0.0) == **y);
        fold_accuracy.push(correct.count() as f64 / yv.len() as f64);
        for (&i, v) in test.iter().zip(values) {
            fold_of[i] = k;
            decision[i] = v;
        }
        eprintln!(
            "train-compare: fold {}/{} accuracy {:.4} ({:.2} s)",
            k + 1,
            folds.len(),
            fold_accuracy[k],
            started.elapsed().as_secs_f64()
        );
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    write_oof(&args.out.join("oof.csv"), &fold_of, &data.y, &decision)?;

    let repeats = args
        .repeat
        .unwrap_or(if n <= 20_000 { 5 } else { 3 })
        .max(1);
    let mut fit_seconds = Vec::with_capacity(repeats);
    let mut support_vectors = 0;
    for _ in 0..repeats {
        let started = Instant::now();
        let model = fit::fit(&data.x, &data.y, &params).context("fitting all rows")?;
        fit_seconds.push(started.elapsed().as_secs_f64());
        support_vectors = model.svm.nsupport();
    }
    let side = OurSide {
        csv: args.csv.clone(),
        rows: n,
        features: spec.feature_names().into_iter().map(String::from).collect(),
        label_column: args.label_column.clone(),
        kernel: params.kernel.to_string(),
        c: params.c,
        width: params.kernel_width,
        tolerance: params.tolerance,
        folds: args.folds,
        seed: args.seed,
        cv_accuracy: fold_accuracy.iter().sum::<f64>() / fold_accuracy.len() as f64,
        fold_accuracy,
        repeats,
        fit_spread: Spread::of(&fit_seconds).context("no fit timed")?,
        fit_seconds,
        support_vectors,
    };
    let path = args.out.join("ours.json");
    std::fs::write(&path, serde_json::to_string_pretty(&side)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    eprintln!(
        "train-compare: {n} rows, CV accuracy {:.4}, full fit {:.3} s (median of {repeats}); wrote {}",
        side.cv_accuracy,
        side.fit_spread.median,
        args.out.display()
    );
    Ok(side)
}

fn write_oof(
    path: &std::path::Path,
    fold: &[usize],
    y: &[bool],
    decision: &[f64],
) -> anyhow::Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    writeln!(out, "row,fold,label,decision,predicted")?;
    for (i, ((k, label), d)) in fold.iter().zip(y).zip(decision).enumerate() {
        // `{:?}` prints the shortest text that reads back as the same f64.
        writeln!(
            out,
            "{i},{k},{},{d:?},{}",
            u8::from(*label),
            u8::from(*d >= 0.0)
        )?;
    }
    out.flush()?;
    Ok(())
}
