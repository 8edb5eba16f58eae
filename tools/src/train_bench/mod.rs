//! `ml-pipeline-tools train-bench` and `train-compare`: the instruments of issue 13.
//!
//! `train-bench` times the final fit (`ml_pipeline::train::fit::fit` on all rows) at several
//! sizes and reads its peak RSS. Each fit runs in a child process of its own (this binary,
//! `train-bench one`, see [`one`]), which loads the rows, resets its peak-RSS mark, fits and
//! prints one JSON line; the parent repeats, takes medians and ranges, and prints a markdown
//! table and the growth between consecutive sizes.
//!
//! Layout:
//! - [`rows`]: the first N rows of a canonical CSV as a matrix, features in the spec's order;
//! - [`one`]: the child's measurement and its JSON line;
//! - [`stats`]: medians, ranges, growth ratios;
//! - [`compare`]: `train-compare`, our out-of-fold predictions and timings for the
//!   scikit-learn comparison in `tools/compare/`.

pub mod compare;
pub mod one;
pub mod rows;
pub mod stats;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use ml_pipeline::model::artifact::{Kernel, TrainParams, DEFAULT_KERNEL_WIDTH};
use ml_pipeline::spec::PipelineSpec;
use ml_pipeline::train::data::LABEL_COLUMN;

use one::{OneArgs, Sample};
use stats::{growth, Growth, SizeFigures, Spread};

/// Kernel, C and width of the fits measured.
#[derive(Debug, Clone, clap::Args)]
pub struct FitArgs {
    /// SVM kernel: linear or gaussian.
    #[arg(long, default_value = "linear")]
    pub kernel: Kernel,
    /// The penalty C; default 1 for linear and 10 for gaussian (issue 13's settings).
    #[arg(long)]
    pub c: Option<f64>,
    /// Gaussian width eps in exp(-|x-x'|^2/eps) (gamma = 1/eps); unused for linear.
    #[arg(long, default_value_t = DEFAULT_KERNEL_WIDTH)]
    pub width: f64,
}

impl FitArgs {
    /// `train`'s parameters with this kernel, C and width (tolerance 1e-3, equal weights).
    pub fn params(&self) -> TrainParams {
        let mut params = TrainParams::with_kernel(self.kernel);
        params.c = self.c.unwrap_or(match self.kernel {
            Kernel::Linear => 1.0,
            Kernel::Gaussian => 10.0,
        });
        if self.kernel == Kernel::Gaussian {
            params.kernel_width = Some(self.width);
        }
        params
    }
}

/// Options of `train-bench`.
#[derive(Debug, Clone, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct TrainBenchArgs {
    /// A canonical CSV (notes.csv layout); by default a set of the largest size is generated
    /// (seed 42) into --work-dir, or reused from there.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Where generated sets are kept between runs.
    #[arg(long, default_value = "target/train-bench")]
    pub work_dir: PathBuf,
    /// Training sizes: the first N rows of the CSV.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "10000,20000,50000,100000"
    )]
    pub rows: Vec<usize>,
    /// Fits per size; the table shows the median time and the range.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Kill a fit that runs longer than this many seconds; larger sizes are then skipped.
    #[arg(long, default_value_t = 1800)]
    pub timeout: u64,
    /// The column holding the class.
    #[arg(long, default_value = LABEL_COLUMN)]
    pub label_column: String,
    /// Also write the samples, summaries and growth as JSON here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Kernel, C and width.
    #[command(flatten)]
    pub fit: FitArgs,
    /// Internal: one measurement in this process (run by train-bench itself).
    #[command(subcommand)]
    pub internal: Option<Internal>,
}

/// The child's subcommand, hidden from the help.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Internal {
    /// Load, fit once and print one JSON line (a child of train-bench).
    #[command(hide = true)]
    One(OneArgs),
}

/// One size's measurements.
#[derive(Debug, Clone, Serialize)]
pub struct SizeResult {
    /// Training rows.
    pub rows: usize,
    /// Each fit's sample, in run order.
    pub samples: Vec<Sample>,
    /// Fit seconds over the samples.
    pub seconds: Option<Spread>,
    /// The highest peak RSS during a fit over the samples, MiB.
    pub peak_mib: Option<f64>,
    /// The median RSS before the fit, MiB.
    pub before_mib: Option<f64>,
    /// Why this size has fewer samples than asked for (a failed or skipped fit).
    pub error: Option<String>,
}

/// What `train-bench` measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// The CSV the rows came from.
    pub csv: PathBuf,
    /// Kernel name.
    pub kernel: String,
    /// The penalty C.
    pub c: f64,
    /// The Gaussian width; absent for linear.
    pub width: Option<f64>,
    /// Fits per size asked for.
    pub repeat: usize,
    /// Per size, in the order asked for.
    pub sizes: Vec<SizeResult>,
    /// Growth between consecutive measured sizes.
    pub growth: Vec<Growth>,
}

/// Runs `train-bench`: the hidden child measurement, or the whole benchmark.
pub async fn run(args: &TrainBenchArgs) -> anyhow::Result<()> {
    if let Some(Internal::One(one)) = &args.internal {
        let sample = one::measure(one)?;
        println!("{}", serde_json::to_string(&sample)?);
        return Ok(());
    }
    let report = bench(args).await?;
    println!("{}", render_table(&report));
    println!("{}", render_growth(&report.growth));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let failed: Vec<&SizeResult> = report.sizes.iter().filter(|s| s.error.is_some()).collect();
    anyhow::ensure!(
        failed.is_empty(),
        "{} of {} sizes were not measured in full (see the table)",
        failed.len(),
        report.sizes.len()
    );
    Ok(())
}

async fn bench(args: &TrainBenchArgs) -> anyhow::Result<BenchReport> {
    anyhow::ensure!(args.repeat > 0, "--repeat must be at least 1");
    let largest = args.rows.iter().copied().max().context("--rows is empty")?;
    let csv = match &args.csv {
        Some(path) => path.clone(),
        None => generated_csv(&args.work_dir, largest)?,
    };
    let params = args.fit.params();
    let mut sizes = Vec::new();
    let mut blocked: Option<String> = None;
    for &rows in &args.rows {
        let mut size = SizeResult {
            rows,
            samples: Vec::new(),
            seconds: None,
            peak_mib: None,
            before_mib: None,
            error: blocked.clone(),
        };
        for run in 1..=args.repeat {
            if size.error.is_some() {
                break;
            }
            eprintln!(
                "train-bench: {} rows, {} kernel, run {run}/{}",
                rows, params.kernel, args.repeat
            );
            match run_child(args, &csv, rows).await {
                Ok(sample) => size.samples.push(sample),
                Err(e) => {
                    size.error = Some(format!("{e:#}"));
                    // A larger set only fails slower or runs out of memory.
                    blocked = Some(format!("skipped: the fit on {rows} rows failed"));
                }
            }
        }
        summarize(&mut size);
        sizes.push(size);
    }
    let measured: Vec<SizeFigures> = sizes
        .iter()
        .filter_map(|s| {
            Some(SizeFigures {
                rows: s.rows,
                seconds: s.seconds?.median,
                peak_mib: s.peak_mib?,
                before_mib: s.before_mib?,
            })
        })
        .collect();
    Ok(BenchReport {
        csv,
        kernel: params.kernel.to_string(),
        c: params.c,
        width: params.kernel_width,
        repeat: args.repeat,
        growth: growth(&measured),
        sizes,
    })
}

/// The notes.csv of a seed-42 set of `notes` notes in `work_dir`, generated once.
fn generated_csv(work_dir: &Path, notes: usize) -> anyhow::Result<PathBuf> {
    let dir = work_dir.join(format!("notes-{notes}-seed-42"));
    let csv = dir.join("notes.csv");
    if dir.join("manifest.json").is_file() && csv.is_file() {
        return Ok(csv);
    }
    eprintln!(
        "train-bench: generating {notes} notes into {}",
        dir.display()
    );
    let opts = crate::generator::generate::GenerateOptions {
        notes,
        ..Default::default()
    };
    let set = crate::generator::generate::generate(&PipelineSpec::banknote(), &opts);
    ml_pipeline::fixtures::write_set(&set, &dir)?;
    Ok(csv)
}

async fn run_child(args: &TrainBenchArgs, csv: &Path, rows: usize) -> anyhow::Result<Sample> {
    let exe = std::env::current_exe().context("locating this binary")?;
    let fit = &args.fit;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("train-bench")
        .arg("one")
        .arg("--csv")
        .arg(csv)
        .args(["--rows", &rows.to_string()])
        .args(["--label-column", &args.label_column])
        .args(["--kernel", fit.kernel.as_str()])
        .args(["--width", &fit.width.to_string()])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    if let Some(c) = fit.c {
        cmd.args(["--c", &c.to_string()]);
    }
    let output = tokio::time::timeout(Duration::from_secs(args.timeout), cmd.output())
        .await
        .map_err(|_| anyhow::anyhow!("timed out after {} s (killed)", args.timeout))?
        .context("starting the measurement child")?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        anyhow::bail!(
            "the fit process ended with {}: {}",
            output.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        );
    }
    one::parse_sample(&String::from_utf8_lossy(&output.stdout))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn summarize(size: &mut SizeResult) {
    let seconds: Vec<f64> = size.samples.iter().map(|s| s.seconds).collect();
    let before: Vec<f64> = size
        .samples
        .iter()
        .map(|s| mib(s.rss_before_fit_kib))
        .collect();
    size.seconds = Spread::of(&seconds);
    size.before_mib = Spread::of(&before).map(|s| s.median);
    size.peak_mib = size
        .samples
        .iter()
        .map(|s| mib(s.fit_peak_kib))
        .reduce(f64::max);
}

/// The markdown table of sizes.
pub fn render_table(report: &BenchReport) -> String {
    let width = report.width.map_or("-".to_owned(), |w| w.to_string());
    let mut out = format!(
        "`train-bench` on {} ({} fits per size; peak RSS is the highest over the fits)\n\n\
         | rows | kernel | C | width | fit s (median) | fit s (min-max) | peak RSS MiB | RSS before fit MiB | support vectors |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|---:|\n",
        report.csv.display(),
        report.repeat
    );
    for s in &report.sizes {
        let head = format!(
            "| {} | {} | {} | {width} |",
            s.rows, report.kernel, report.c
        );
        match (s.seconds, s.peak_mib, s.before_mib) {
            (Some(t), Some(peak), Some(before)) => {
                let svs: Vec<usize> = s.samples.iter().map(|x| x.support_vectors).collect();
                let (lo, hi) = (svs.iter().min(), svs.iter().max());
                let sv = if lo == hi {
                    format!("{}", svs[0])
                } else {
                    format!("{}-{}", lo.unwrap_or(&0), hi.unwrap_or(&0))
                };
                out += &format!(
                    "{head} {:.3} | {:.3}-{:.3} | {peak:.1} | {before:.1} | {sv} |\n",
                    t.median, t.min, t.max
                );
            }
            _ => out += &format!("{head} failed | - | - | - | - |\n"),
        }
    }
    for s in report.sizes.iter().filter(|s| s.error.is_some()) {
        let error = s.error.as_deref().unwrap_or_default();
        out += &format!("\n{} rows: {error}\n", s.rows);
    }
    out
}

/// The markdown table of growth between consecutive sizes.
pub fn render_growth(growth: &[Growth]) -> String {
    if growth.is_empty() {
        return "(one size measured: no growth to show)\n".to_owned();
    }
    let mut out = String::from(
        "Growth between consecutive sizes (exponent k: grows as rows^k; the fit's share is peak RSS minus RSS before the fit)\n\n\
         | rows | rows x | fit time x | time k | peak RSS x | fit's share x | share k |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
    );
    for g in growth {
        out += &format!(
            "| {} -> {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |\n",
            g.from_rows,
            g.to_rows,
            g.rows_ratio,
            g.time_ratio,
            g.time_exponent,
            g.peak_ratio,
            g.fit_share_ratio,
            g.fit_share_exponent
        );
    }
    out
}
