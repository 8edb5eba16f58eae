//! `ml-pipeline models compare`: how the served model fares in production over a window, from
//! what the workers' monitors recorded: drift per feature against each version's training data,
//! and shadow scoring of the challenger beside the served version. Text tables, JSON, and an
//! HTML page with the PSI and the agreement over time.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use chrono::{DateTime, Utc};
use plotters::prelude::*;
use serde::Serialize;
use sqlx::PgPool;

use crate::figure::{
    draw, figure, page_end, page_head, table, write, Drawn, FigureError, HEIGHT, WIDTH,
};
use crate::monitor::store::{self, DriftPoint, DriftSummary, JudgedOnFeedback, ShadowSummary};

/// What `models compare` shows.
#[derive(Debug, Serialize)]
pub struct Comparison {
    /// The model.
    pub model: String,
    /// The window's start.
    pub since: DateTime<Utc>,
    /// The PSI over which a feature has drifted.
    pub threshold: f64,
    /// Per version and feature.
    pub drift: Vec<DriftSummary>,
    /// Per pair of served and shadow versions.
    pub shadow: Vec<ShadowSummary>,
    /// Per pair, both versions' accuracy on the shadowed records that feedback labelled.
    pub judged: Vec<JudgedOnFeedback>,
    /// PSI per feature per minute (HTML and JSON only).
    pub drift_series: Vec<DriftPoint>,
    /// Agreement per shadow version per minute (HTML and JSON only).
    pub shadow_series: Vec<(DateTime<Utc>, u64, f64)>,
}

/// `models compare`: reads the records of `model` since `since`, writes the HTML page to
/// `html` when asked, and returns the tables (or JSON).
pub async fn run(
    settings: &crate::settings::Settings,
    model: &str,
    since: DateTime<Utc>,
    html: Option<&Path>,
    json: bool,
) -> anyhow::Result<String> {
    let pool = crate::startup::postgres_migrated(settings, 2).await?;
    let comparison = read(&pool, model, since, settings.drift_psi_threshold).await?;
    let mut out = if json {
        serde_json::to_string_pretty(&comparison)?
    } else {
        comparison.to_string()
    };
    if let Some(path) = html {
        write_html(path, &comparison)?;
        if !json {
            let written = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
            let _ = write!(out, "\nHTML page: {}", written.display());
        }
    }
    Ok(out)
}

/// Reads the monitors' records of `model` since `since`.
pub async fn read(
    pool: &PgPool,
    model: &str,
    since: DateTime<Utc>,
    threshold: f64,
) -> Result<Comparison, sqlx::Error> {
    Ok(Comparison {
        model: model.to_owned(),
        since,
        threshold,
        drift: store::drift_summary(pool, model, since).await?,
        shadow: store::shadow_summary(pool, model, since).await?,
        judged: store::judged_on_feedback(pool, model, since).await?,
        drift_series: store::drift_series(pool, model, since).await?,
        shadow_series: store::shadow_series(pool, model, since).await?,
    })
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{:.1}%", v * 100.0))
}

fn num(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.3}"))
}

impl Comparison {
    fn drift_rows(&self) -> Vec<Vec<String>> {
        self.drift
            .iter()
            .map(|d| {
                let flag = if d.latest_psi > self.threshold {
                    " drifted"
                } else {
                    ""
                };
                vec![
                    d.version.to_string(),
                    d.feature.clone(),
                    d.observations.to_string(),
                    format!("{:.3}{flag}", d.latest_psi),
                    format!("{:.3}", d.max_psi),
                    format!("{:.3}", d.mean_psi),
                    pct(Some(d.mean_out_of_range)),
                ]
            })
            .collect()
    }

    fn shadow_rows(&self) -> Vec<Vec<String>> {
        self.shadow
            .iter()
            .map(|s| {
                let t = &s.tally;
                vec![
                    s.version.to_string(),
                    format!("{} ({})", s.shadow_version, s.alias),
                    t.records.to_string(),
                    pct(t.agreement()),
                    num(t.mean_score_diff()),
                    num(Some(t.score_diff_max)),
                    t.latency_ratio().map_or("-".into(), |r| format!("{r:.2}x")),
                    t.failures.to_string(),
                    t.skipped.to_string(),
                ]
            })
            .collect()
    }

    fn judged_rows(&self) -> Vec<Vec<String>> {
        self.judged
            .iter()
            .map(|j| {
                vec![
                    j.version.to_string(),
                    j.shadow_version.to_string(),
                    j.records.to_string(),
                    pct(j.served_accuracy()),
                    pct(j.shadow_accuracy()),
                ]
            })
            .collect()
    }
}

const JUDGED_HEAD: [&str; 5] = [
    "served",
    "shadow",
    "labelled records",
    "served accuracy",
    "shadow accuracy",
];

const DRIFT_HEAD: [&str; 7] = [
    "version",
    "feature",
    "intervals",
    "latest PSI",
    "max PSI",
    "mean PSI",
    "out of range",
];
const SHADOW_HEAD: [&str; 9] = [
    "served",
    "shadow (alias)",
    "records",
    "agreement",
    "mean |score diff|",
    "max |score diff|",
    "shadow time",
    "failed",
    "skipped",
];

fn text_table(out: &mut String, head: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |out: &mut String, cells: &mut dyn Iterator<Item = &str>| {
        let cells: Vec<String> = cells
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "  {}", cells.join("  ").trim_end());
    };
    line(out, &mut head.iter().copied());
    for row in rows {
        line(out, &mut row.iter().map(String::as_str));
    }
}

impl std::fmt::Display for Comparison {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "model {}, since {}",
            self.model,
            self.since.format("%Y-%m-%d %H:%M:%S UTC")
        );
        let _ = writeln!(
            out,
            "\ndrift per feature (PSI of the served features against the version's training data; over {} has drifted)",
            self.threshold
        );
        if self.drift.is_empty() {
            out.push_str("  none recorded: no worker reported drift in the window (a version trained before training statistics existed has none; a window with fewer than ML_PIPELINE_DRIFT_MIN_RECORDS records reports none)\n");
        } else {
            text_table(&mut out, &DRIFT_HEAD, &self.drift_rows());
        }
        out.push_str("\nshadow scoring (the same records scored by the served version and the shadow alias's)\n");
        if self.shadow.is_empty() {
            out.push_str("  none recorded: set ML_PIPELINE_SHADOW_ALIAS on the workers and point that alias at a version\n");
        } else {
            text_table(&mut out, &SHADOW_HEAD, &self.shadow_rows());
        }
        out.push_str("\nboth versions on the shadowed records that feedback labelled (prediction log joined with training_examples)\n");
        if self.judged.is_empty() {
            out.push_str("  none yet: no feedback for a logged record with a shadow prediction (both need ML_PIPELINE_PREDICTION_LOG to keep the shadowed bundles)\n");
        } else {
            text_table(&mut out, &JUDGED_HEAD, &self.judged_rows());
        }
        f.write_str(&out)
    }
}

/// Colours of the chart's lines, one per feature or shadow version.
const PALETTE: [RGBColor; 6] = [
    RGBColor(67, 147, 195),
    RGBColor(214, 96, 77),
    RGBColor(77, 175, 74),
    RGBColor(152, 78, 163),
    RGBColor(255, 127, 0),
    RGBColor(120, 120, 120),
];

/// Writes the comparison as an HTML page to `path`.
pub fn write_html(path: &Path, c: &Comparison) -> Result<(), FigureError> {
    let mut out = String::new();
    page_head(
        &mut out,
        &format!("Model in production: {}", c.model),
        &[
            (
                "window",
                format!("since {}", c.since.format("%Y-%m-%d %H:%M UTC")),
            ),
            ("drift threshold (PSI)", c.threshold.to_string()),
        ],
    );
    let mut psi: BTreeMap<String, Vec<(DateTime<Utc>, f64)>> = BTreeMap::new();
    for p in &c.drift_series {
        psi.entry(format!("{} (v{})", p.feature, p.version))
            .or_default()
            .push((p.at, p.psi));
    }
    let svg = draw("psi", |svg| {
        lines(svg, &psi, Some(c.threshold), "PSI", None)
    })?;
    figure(
        &mut out,
        "psi",
        "Drift: PSI of each served feature over time",
        &svg,
        "Population stability index of the worker's rolling window of served features against \
         the served version's training data, per minute (the largest among workers). The dashed \
         line is the threshold.",
    );
    table(
        &mut out,
        "drift-table",
        "Drift per feature",
        &DRIFT_HEAD,
        &c.drift_rows(),
    );
    let mut agreement: BTreeMap<String, Vec<(DateTime<Utc>, f64)>> = BTreeMap::new();
    for (at, version, a) in &c.shadow_series {
        agreement
            .entry(format!("shadow v{version}"))
            .or_default()
            .push((*at, *a));
    }
    let svg = draw("agreement", |svg| {
        lines(svg, &agreement, None, "agreement", Some((0.0, 1.0)))
    })?;
    figure(
        &mut out,
        "agreement",
        "Shadow scoring: agreement with the served version over time",
        &svg,
        "Share of the shadowed records to which the shadow version gave the served version's \
         class, per minute.",
    );
    table(
        &mut out,
        "shadow-table",
        "Shadow scoring",
        &SHADOW_HEAD,
        &c.shadow_rows(),
    );
    table(
        &mut out,
        "judged-table",
        "Both versions on the shadowed records that feedback labelled",
        &JUDGED_HEAD,
        &c.judged_rows(),
    );
    page_end(&mut out);
    write(path, &out)
}

/// Time series as lines, with an optional dashed threshold.
fn lines(
    svg: &mut String,
    series: &BTreeMap<String, Vec<(DateTime<Utc>, f64)>>,
    threshold: Option<f64>,
    y_desc: &str,
    y_range: Option<(f64, f64)>,
) -> Drawn {
    let root = SVGBackend::with_string(svg, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let points = series.values().flatten();
    let (mut t0, mut t1) = (i64::MAX, i64::MIN);
    let mut top = threshold.unwrap_or(0.0) * 1.5;
    for (at, v) in points {
        t0 = t0.min(at.timestamp());
        t1 = t1.max(at.timestamp());
        top = top.max(*v * 1.1);
    }
    if t0 > t1 {
        (t0, t1) = (0, 60);
    }
    let (t1, top) = (t1.max(t0 + 60), top.max(f64::EPSILON));
    let (lo, hi) = y_range.unwrap_or((0.0, top));
    let minutes = |t: i64| (t - t0) as f64 / 60.0;
    let mut chart = ChartBuilder::on(&root)
        .margin(20)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..minutes(t1), lo..hi)?;
    chart
        .configure_mesh()
        .x_desc("minutes into the window shown")
        .y_desc(y_desc)
        .draw()?;
    for (i, (name, points)) in series.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|(at, v)| (minutes(at.timestamp()), *v)),
                colour.stroke_width(2),
            ))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], colour.stroke_width(2)));
    }
    if let Some(t) = threshold {
        chart.draw_series(DashedLineSeries::new(
            [(0.0, t), (minutes(t1), t)],
            5,
            4,
            BLACK.stroke_width(1),
        ))?;
    }
    if !series.is_empty() {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}
