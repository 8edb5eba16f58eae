//! The provider report as one self-contained HTML page: tables for every section and figures
//! drawn by plotters. Figure ids: `coverage`; `agreement-<a>-<b>-<feature>` per pair of
//! providers and document feature (the distribution of their differences); `freshness`;
//! `api-latency` when requests were recorded.

use std::path::Path;

use plotters::prelude::*;

use super::model::{CoverageShares, PairAgreement, ProviderReport};
use super::text::{age, short};
use crate::figure::{
    draw, figure, page_end, page_head, table, write, Drawn, FigureError, HEIGHT, WIDTH,
};

/// Bins of the difference histograms.
const DIFFERENCE_BINS: usize = 40;

/// Bar colours: the traffic, the training data, and a third series.
const BLUE: RGBColor = RGBColor(67, 147, 195);
const ORANGE: RGBColor = RGBColor(214, 96, 77);
const GREY: RGBColor = RGBColor(120, 120, 120);

/// The whole page.
pub fn html(r: &ProviderReport) -> Result<String, FigureError> {
    let mut out = String::new();
    page_head(
        &mut out,
        &format!("Provider report: {}", r.spec),
        &[
            (
                "generated",
                r.generated_at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            ),
            (
                "window",
                format!("since {}", r.since.format("%Y-%m-%d %H:%M UTC")),
            ),
            ("model", r.model.clone()),
            ("providers (preference order)", r.providers.join(", ")),
        ],
    );
    coverage(&mut out, r)?;
    for pair in &r.agreement {
        agreement(&mut out, pair)?;
    }
    if !r.disagreements.is_empty() {
        let rows: Vec<Vec<String>> = r
            .disagreements
            .iter()
            .map(|d| {
                vec![
                    d.note.clone(),
                    d.feature.clone(),
                    format!("{} {}", d.providers[0], short(d.values[0])),
                    format!("{} {}", d.providers[1], short(d.values[1])),
                    format!("{:.0}", d.tolerances_apart),
                ]
            })
            .collect();
        table(
            &mut out,
            "disagreements",
            "Notes that disagree most",
            &[
                "note",
                "feature",
                "first provider",
                "second provider",
                "tolerances apart",
            ],
            &rows,
        );
    }
    freshness(&mut out, r)?;
    api(&mut out, r)?;
    serving(&mut out, r);
    page_end(&mut out);
    Ok(out)
}

/// Draws the page and writes it to `path`.
pub fn write_html(path: &Path, r: &ProviderReport) -> Result<(), FigureError> {
    write(path, &html(r)?)
}

fn coverage(out: &mut String, r: &ProviderReport) -> Result<(), FigureError> {
    let (traffic, training) = (&r.coverage.traffic, &r.coverage.training);
    let mut names: Vec<String> = r.providers.clone();
    names.push("no provider".into());
    let values = |c: &CoverageShares| -> Vec<f64> {
        r.providers
            .iter()
            .map(|p| c.share(c.per_provider.get(p).copied().unwrap_or(0)))
            .chain([c.share(c.none)])
            .collect()
    };
    let (a, b) = (values(traffic), values(training));
    let svg = draw("coverage", |svg| {
        grouped_bars(
            svg,
            &names,
            &[("traffic", &a, BLUE), ("training data", &b, ORANGE)],
            "share of notes",
            true,
        )
    })?;
    figure(
        out,
        "coverage",
        "Coverage: the share of notes each provider can enrich",
        &svg,
        &format!(
            "Traffic: {} {}. Training data: {} {}. A provider can enrich a note when its \
             document alone gives every document feature a finite number.",
            traffic.total, traffic.note, training.total, training.note
        ),
    );
    Ok(())
}

fn agreement(out: &mut String, pair: &PairAgreement) -> Result<(), FigureError> {
    let [a, b] = &pair.providers;
    let mut rows = Vec::new();
    for (f, diffs) in pair.features.iter().zip(&pair.differences) {
        let Some(s) = &f.summary else {
            continue;
        };
        rows.push(vec![
            f.feature.clone(),
            s.notes.to_string(),
            short(s.median_abs),
            short(s.p95_abs),
            short(s.max_abs),
            short(s.tolerance),
            format!("{} ({:.1} %)", s.beyond_tolerance, s.beyond_share * 100.0),
        ]);
        let id = format!("agreement-{a}-{b}-{}", f.feature);
        let svg = draw("agreement", |svg| histogram(svg, diffs, s.tolerance))?;
        figure(
            out,
            &id,
            &format!("{}: {a} minus {b}", f.feature),
            &svg,
            &format!(
                "{} notes both providers give {} for, in canonical units; dashed lines at \
                 ± the tolerance {}. {} of them ({:.1} %) lie beyond it.",
                s.notes,
                f.feature,
                short(s.tolerance),
                s.beyond_tolerance,
                s.beyond_share * 100.0
            ),
        );
    }
    table(
        out,
        &format!("agreement-{a}-{b}"),
        &format!(
            "Agreement of {a} and {b} ({} notes both cover)",
            pair.notes_both
        ),
        &[
            "feature",
            "notes",
            "median |diff|",
            "p95 |diff|",
            "max |diff|",
            "tolerance",
            "beyond",
        ],
        &rows,
    );
    Ok(())
}

fn freshness(out: &mut String, r: &ProviderReport) -> Result<(), FigureError> {
    let names: Vec<String> = r.freshness.iter().map(|f| f.provider.clone()).collect();
    let last: Vec<f64> = r
        .freshness
        .iter()
        .map(|f| f.last_delivery.as_ref().map_or(0.0, |d| d.age_hours))
        .collect();
    let median: Vec<f64> = r
        .freshness
        .iter()
        .map(|f| f.median_document_age_hours.unwrap_or(0.0))
        .collect();
    let oldest: Vec<f64> = r
        .freshness
        .iter()
        .map(|f| f.oldest_document_age_hours.unwrap_or(0.0))
        .collect();
    let svg = draw("freshness", |svg| {
        grouped_bars(
            svg,
            &names,
            &[
                ("last delivery", &last, BLUE),
                ("median document", &median, ORANGE),
                ("oldest document", &oldest, GREY),
            ],
            "age (hours)",
            false,
        )
    })?;
    figure(
        out,
        "freshness",
        "Freshness: age of the last delivery and of the current documents",
        &svg,
        "Hours since the provider's last succeeded or unchanged delivery, and since the \
         deliveries that wrote its current documents (documents loaded without a recorded \
         delivery are left out).",
    );
    let rows = r
        .freshness
        .iter()
        .map(|f| {
            vec![
                f.provider.clone(),
                f.last_delivery.as_ref().map_or_else(
                    || "none".into(),
                    |d| format!("{} ({})", d.delivery_id, d.status),
                ),
                f.last_delivery
                    .as_ref()
                    .map_or_else(|| "-".into(), |d| age(d.age_hours)),
                f.documents.to_string(),
                f.documents_dated.to_string(),
                f.median_document_age_hours.map_or_else(|| "-".into(), age),
                f.oldest_document_age_hours.map_or_else(|| "-".into(), age),
                f.last_attempt_problem.clone().unwrap_or_default(),
            ]
        })
        .collect::<Vec<_>>();
    table(
        out,
        "freshness-table",
        "Deliveries and documents",
        &[
            "provider",
            "last delivery",
            "age",
            "documents",
            "dated",
            "median age",
            "oldest",
            "last attempt",
        ],
        &rows,
    );
    Ok(())
}

fn api(out: &mut String, r: &ProviderReport) -> Result<(), FigureError> {
    if r.api.is_empty() {
        table(
            out,
            "api",
            "API performance: no HTTP requests recorded in the window",
            &[],
            &[],
        );
        return Ok(());
    }
    let names: Vec<String> = r.api.iter().map(|a| a.provider.clone()).collect();
    let p50: Vec<f64> = r.api.iter().map(|a| a.p50_ms).collect();
    let p95: Vec<f64> = r.api.iter().map(|a| a.p95_ms).collect();
    let p99: Vec<f64> = r.api.iter().map(|a| a.p99_ms).collect();
    let svg = draw("api-latency", |svg| {
        grouped_bars(
            svg,
            &names,
            &[
                ("p50", &p50, BLUE),
                ("p95", &p95, ORANGE),
                ("p99", &p99, GREY),
            ],
            "latency (ms)",
            false,
        )
    })?;
    figure(
        out,
        "api-latency",
        "API performance: request latency per provider",
        &svg,
        "Every recorded attempt of every page of the HTTP deliveries in the window \
         (provider_requests), failed attempts included.",
    );
    let rows = r
        .api
        .iter()
        .map(|a| {
            vec![
                a.provider.clone(),
                a.requests.to_string(),
                a.errors.to_string(),
                format!("{:.1} %", a.error_rate * 100.0),
                short(a.p50_ms),
                short(a.p95_ms),
                short(a.p99_ms),
                short(a.budget_ms),
                if a.within_budget { "within" } else { "OVER" }.to_owned(),
            ]
        })
        .collect::<Vec<_>>();
    table(
        out,
        "api-table",
        "API requests against the latency budget (p95)",
        &[
            "provider",
            "requests",
            "errors",
            "error rate",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "budget ms",
            "p95",
        ],
        &rows,
    );
    Ok(())
}

fn serving(out: &mut String, r: &ProviderReport) {
    let s = &r.serving;
    let rows = s
        .enrichment_latency
        .iter()
        .map(|l| {
            vec![
                l.stage.clone(),
                l.batches.to_string(),
                short(l.p50_ms),
                short(l.p95_ms),
                short(l.p99_ms),
            ]
        })
        .collect::<Vec<_>>();
    let title = match &s.enrichment_latency_note {
        Some(note) => format!("Serving: enrichment latency ({note})"),
        None => "Serving: enrichment latency per batch (worker /metrics, since it started)".into(),
    };
    table(
        out,
        "serving-latency",
        &title,
        &["stage", "batches", "p50 ms", "p95 ms", "p99 ms"],
        &rows,
    );
    let rows = s
        .predictions
        .iter()
        .map(|p| {
            vec![
                p.issuer.clone(),
                p.label.clone(),
                p.predictions.to_string(),
                format!("{:+.3}", p.mean_score),
            ]
        })
        .collect::<Vec<_>>();
    table(
        out,
        "serving-predictions",
        "Serving: predictions per issuer and label in the window",
        &["issuer", "label", "predictions", "mean score"],
        &rows,
    );
}

/// Bars of several series side by side per category; `shares` labels the axis in percent.
fn grouped_bars(
    svg: &mut String,
    names: &[String],
    series: &[(&str, &[f64], RGBColor)],
    y_desc: &str,
    shares: bool,
) -> Drawn {
    let root = SVGBackend::with_string(svg, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let n = names.len().max(1);
    let top = series
        .iter()
        .flat_map(|s| s.1.iter().copied())
        .fold(0.0f64, f64::max);
    let top = if shares {
        1.0
    } else if top > 0.0 {
        top * 1.15
    } else {
        1.0
    };
    let mut chart = ChartBuilder::on(&root)
        .margin(20)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..n as f64, 0.0..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(2 * n + 1)
        .x_label_formatter(&|v| {
            let centre = v - v.floor();
            if (centre - 0.5).abs() < 1e-9 {
                names.get(v.floor() as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|v| {
            if shares {
                format!("{:.0}%", v * 100.0)
            } else {
                short(*v)
            }
        })
        .y_desc(y_desc)
        .draw()?;
    let width = 0.8 / series.len().max(1) as f64;
    for (k, (label, values, colour)) in series.iter().enumerate() {
        let colour = *colour;
        chart
            .draw_series(values.iter().enumerate().map(|(i, &v)| {
                let x = i as f64 + 0.1 + k as f64 * width;
                Rectangle::new([(x, 0.0), (x + width * 0.9, v)], colour.mix(0.85).filled())
            }))?
            .label(*label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], colour.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// The distribution of signed differences, with the tolerance marked.
fn histogram(svg: &mut String, diffs: &[f64], tolerance: f64) -> Drawn {
    let root = SVGBackend::with_string(svg, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let reach = diffs
        .iter()
        .fold(tolerance * 2.0, |m, d| m.max(d.abs()))
        .max(f64::EPSILON);
    let (lo, hi) = (-reach, reach);
    let width = (hi - lo) / DIFFERENCE_BINS as f64;
    let mut bins = [0u32; DIFFERENCE_BINS];
    for d in diffs {
        bins[(((d - lo) / width) as usize).min(DIFFERENCE_BINS - 1)] += 1;
    }
    let top = bins.iter().copied().max().unwrap_or(0).max(1);
    let mut chart = ChartBuilder::on(&root)
        .margin(20)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(lo..hi, 0u32..top + top / 10 + 1)?;
    chart
        .configure_mesh()
        .x_desc("difference (canonical units)")
        .y_desc("notes")
        .x_label_formatter(&|v| short(*v))
        .draw()?;
    chart.draw_series(bins.iter().enumerate().map(|(i, &n)| {
        let x = lo + i as f64 * width;
        Rectangle::new([(x, 0), (x + width, n)], BLUE.mix(0.8).filled())
    }))?;
    for t in [-tolerance, tolerance] {
        chart.draw_series(DashedLineSeries::new(
            [(t, 0), (t, top + top / 10)],
            5,
            4,
            ORANGE.stroke_width(2),
        ))?;
    }
    root.present()?;
    Ok(())
}
