//! One measurement, in a process of its own: load the rows, fit once, print a JSON line.
//!
//! `train-bench` runs every fit in a fresh child (`train-bench one ...`) so the peak RSS it
//! reads belongs to that fit alone: an earlier, larger fit in the same process would otherwise
//! hold the high-water mark, and memory the allocator kept would hide a smaller fit's growth.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use ml_pipeline::spec::PipelineSpec;
use ml_pipeline::train::data::LABEL_COLUMN;
use ml_pipeline::train::fit;

use super::rows::read_prefix;
use super::FitArgs;
use crate::bench::process::{reset_own_peak_rss, status_kib};

const OWN_STATUS: &str = "/proc/self/status";

/// Options of the hidden `train-bench one`.
#[derive(Debug, Clone, clap::Args)]
pub struct OneArgs {
    /// The canonical CSV (notes.csv layout).
    #[arg(long)]
    pub csv: PathBuf,
    /// Fit on the first this many rows.
    #[arg(long)]
    pub rows: usize,
    /// The column holding the class.
    #[arg(long, default_value = LABEL_COLUMN)]
    pub label_column: String,
    /// Kernel, C and width.
    #[command(flatten)]
    pub fit: FitArgs,
}

/// What one fit measured: the child's JSON line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Rows fitted.
    pub rows: usize,
    /// Kernel name.
    pub kernel: String,
    /// The penalty C.
    pub c: f64,
    /// The Gaussian width; absent for linear.
    pub width: Option<f64>,
    /// Wall-clock seconds of `fit::fit` alone (scaler and SVM), not the loading.
    pub seconds: f64,
    /// Support vectors of the fitted model.
    pub support_vectors: usize,
    /// VmRSS after loading the rows, before the fit: the process and its data.
    pub rss_before_fit_kib: u64,
    /// VmHWM after loading, before it was reset: the loading's own peak.
    pub load_peak_kib: u64,
    /// VmHWM after the fit. When `peak_reset`, the mark was reset after loading, so this is
    /// the highest RSS during the fit (data included); otherwise the whole process's peak.
    pub fit_peak_kib: u64,
    /// Whether the kernel accepted the reset of the peak before the fit.
    pub peak_reset: bool,
}

/// Loads, fits and measures; the caller prints the sample as one JSON line.
pub fn measure(args: &OneArgs) -> anyhow::Result<Sample> {
    let spec = PipelineSpec::banknote();
    let rows = read_prefix(&args.csv, &spec, &args.label_column, Some(args.rows))?;
    let load_peak_kib = status_kib(OWN_STATUS, "VmHWM")?;
    let rss_before_fit_kib = status_kib(OWN_STATUS, "VmRSS")?;
    let peak_reset = reset_own_peak_rss();
    let params = args.fit.params();
    let started = Instant::now();
    let model = fit::fit(&rows.x, &rows.y, &params)
        .with_context(|| format!("fitting {} rows", args.rows))?;
    let seconds = started.elapsed().as_secs_f64();
    let fit_peak_kib = status_kib(OWN_STATUS, "VmHWM")?;
    Ok(Sample {
        rows: args.rows,
        kernel: params.kernel.to_string(),
        c: params.c,
        width: params.kernel_width,
        seconds,
        support_vectors: model.svm.nsupport(),
        rss_before_fit_kib,
        load_peak_kib,
        fit_peak_kib,
        peak_reset,
    })
}

/// The sample in a child's standard output: its last line that is a JSON object. (Logs go to
/// stderr, but a library may still print; anything else on stdout is skipped.)
pub fn parse_sample(stdout: &str) -> anyhow::Result<Sample> {
    stdout
        .lines()
        .rev()
        .map(str::trim)
        .filter(|l| l.starts_with('{'))
        .find_map(|l| serde_json::from_str(l).ok())
        .with_context(|| {
            format!(
                "no measurement line in the child's output: {:?}",
                stdout.chars().take(400).collect::<String>()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = r#"{"rows":2000,"kernel":"gaussian","c":10.0,"width":4.0,"seconds":0.52,"support_vectors":158,"rss_before_fit_kib":9000,"load_peak_kib":9100,"fit_peak_kib":70000,"peak_reset":true}"#;

    #[test]
    fn the_last_json_line_is_the_sample_and_other_output_is_skipped() {
        let out = format!("solver says hello\n{{not json\n{LINE}\n\n");
        let s = parse_sample(&out).unwrap();
        assert_eq!(s.rows, 2000);
        assert_eq!(s.kernel, "gaussian");
        assert_eq!(s.width, Some(4.0));
        assert_eq!(s.support_vectors, 158);
        assert_eq!((s.rss_before_fit_kib, s.fit_peak_kib), (9000, 70_000));
        assert!(s.peak_reset);
    }

    #[test]
    fn a_sample_round_trips_and_linear_has_no_width() {
        let line = LINE.replace(r#""width":4.0"#, r#""width":null"#);
        let s = parse_sample(&line).unwrap();
        assert_eq!(s.width, None);
        assert_eq!(
            parse_sample(&serde_json::to_string(&s).unwrap()).unwrap(),
            s
        );
    }

    #[test]
    fn output_without_a_sample_is_an_error_that_shows_it() {
        let err = parse_sample("thread 'main' panicked\n").unwrap_err();
        assert!(err.to_string().contains("panicked"), "{err}");
    }
}
