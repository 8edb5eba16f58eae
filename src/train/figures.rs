//! The training report people look at: one self-contained HTML file whose figures are SVG drawn
//! by plotters and written inline, so it opens anywhere without scripts or other files.
//!
//! Figures, each a `<figure>` with a stable id: `confusion-matrix` and `score-distribution`
//! (hold-out), `roc-curve` (hold-out decision values, the AUC in its caption), `cv-folds`, and
//! after a search `search-accuracy` (mean CV accuracy against C, one line per width).

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::fit::Holdout;
use super::report::TrainReport;
use super::search::Search;
use crate::figure::{draw, figure, page_end, page_head, Drawn, FigureError, HEIGHT, WIDTH};
use crate::model::artifact::Kernel;

/// Bins of the score histograms.
const SCORE_BINS: usize = 30;
/// The two classes' colours, the same in every figure.
const FAKE: RGBColor = RGBColor(214, 96, 77);
const REAL: RGBColor = RGBColor(67, 147, 195);

/// The ROC curve of decision values against the truth: (false positive rate, true positive
/// rate) points from (0, 0) to (1, 1), one step per distinct score, tied scores taken together.
/// Empty when a class is missing.
pub fn roc_curve(truth: &[bool], scores: &[f64]) -> Vec<(f64, f64)> {
    let positives = truth.iter().filter(|t| **t).count() as f64;
    let negatives = truth.len() as f64 - positives;
    if positives == 0.0 || negatives == 0.0 {
        return Vec::new();
    }
    let mut ranked: Vec<(f64, bool)> = scores.iter().copied().zip(truth.iter().copied()).collect();
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
    let (mut tp, mut fp) = (0.0, 0.0);
    let mut points = vec![(0.0, 0.0)];
    for (i, (score, real)) in ranked.iter().enumerate() {
        if *real {
            tp += 1.0;
        } else {
            fp += 1.0;
        }
        // A point only after the last of a run of equal scores: a threshold cannot split ties.
        if ranked.get(i + 1).is_none_or(|next| next.0 != *score) {
            points.push((fp / negatives, tp / positives));
        }
    }
    points
}

/// The area under the ROC curve: the chance that a random real row scores above a random fake
/// one, ties counting half. None when a class is missing.
pub fn auc(truth: &[bool], scores: &[f64]) -> Option<f64> {
    let points = roc_curve(truth, scores);
    (!points.is_empty()).then(|| {
        points
            .windows(2)
            .map(|w| (w[1].0 - w[0].0) * (w[1].1 + w[0].1) / 2.0)
            .sum()
    })
}

/// The whole HTML report of a finished job.
pub fn html(report: &TrainReport, holdout: &Holdout) -> Result<String, FigureError> {
    let auc = auc(&holdout.truth, &holdout.scores);
    let m = &report.metrics;
    let mut out = String::new();
    head(&mut out, report);
    let rows = m.holdout_rows;
    figure(
        &mut out,
        "confusion-matrix",
        "Confusion matrix (hold-out)",
        &draw("confusion-matrix", |svg| {
            confusion_matrix(svg, &m.confusion)
        })?,
        &format!(
            "{rows} hold-out rows: {:.2}% accuracy, precision {:.3}, recall {:.3}, F1 {:.3} \
             (class real is the positive one).",
            m.holdout_accuracy * 100.0,
            m.precision,
            m.recall,
            m.f1
        ),
    );
    figure(
        &mut out,
        "score-distribution",
        "Decision scores per class (hold-out)",
        &draw("score-distribution", |svg| score_distribution(svg, holdout))?,
        "The hold-out model's decision value for each hold-out row, by true class; \
         0 and above is predicted real.",
    );
    let auc_text = auc.map_or_else(
        || "undefined (one class only)".into(),
        |a| format!("{a:.4}"),
    );
    figure(
        &mut out,
        "roc-curve",
        "ROC curve (hold-out)",
        &draw("roc-curve", |svg| roc(svg, holdout, auc))?,
        &format!(
            "AUC {auc_text}, from the hold-out model's decision values on {rows} rows \
             (real is positive)."
        ),
    );
    figure(
        &mut out,
        "cv-folds",
        "Cross-validation accuracy per fold",
        &draw("cv-folds", |svg| {
            cv_folds(svg, &m.cv_fold_accuracy, m.cv_accuracy)
        })?,
        &format!(
            "{} seeded stratified folds; mean {:.2}%.",
            m.cv_fold_accuracy.len(),
            m.cv_accuracy * 100.0
        ),
    );
    if let Some(search) = &report.search {
        let best = &search.candidates[search.best];
        figure(
            &mut out,
            "search-accuracy",
            "Search: CV accuracy against C and width",
            &draw("search-accuracy", |svg| search_accuracy(svg, search))?,
            &format!(
                "{} candidates x {} folds, the same folds for each; best C {}{}, {:.2}%.",
                search.candidates.len(),
                search.folds,
                best.c,
                best.kernel_width
                    .map_or_else(String::new, |w| format!(", width {w}")),
                best.mean_accuracy * 100.0
            ),
        );
    }
    page_end(&mut out);
    Ok(out)
}

/// Draws the report and writes it to `path`.
pub fn write_html(path: &Path, report: &TrainReport, holdout: &Holdout) -> Result<(), FigureError> {
    crate::figure::write(path, &html(report, holdout)?)
}

fn head(out: &mut String, report: &TrainReport) {
    let title = match report.version {
        Some(v) => format!("Training report: {} version {v}", report.model),
        None => format!("Training report: {} (dry run)", report.model),
    };
    let p = &report.params;
    let kernel = match p.kernel_width {
        Some(w) if p.kernel == Kernel::Gaussian => format!("gaussian, width {w}"),
        _ => p.kernel.to_string(),
    };
    let facts = [
        ("training job", report.job_id.to_string()),
        (
            "data",
            format!(
                "{} rows from {}",
                report.metrics.train_rows, report.data_source
            ),
        ),
        ("features", report.features.join(", ")),
        (
            "svm",
            format!(
                "{kernel}, C {}, {} support vectors",
                p.c, report.metrics.support_vectors
            ),
        ),
        ("data hash", report.data_fingerprint.clone()),
    ];
    page_head(out, &title, &facts);
}

fn confusion_matrix(svg: &mut String, m: &[[u64; 2]; 2]) -> Drawn {
    let root = SVGBackend::with_string(svg, (HEIGHT, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..2.0, 0.0..2.0)?;
    // Cell centres sit at 0.5 and 1.5; truth fake is the top row, as in the text report.
    let class_at = |v: &f64, top_is_fake: bool| match ((v * 2.0).round() as i64, top_is_fake) {
        (1, false) | (3, true) => "fake",
        (3, false) | (1, true) => "real",
        _ => "",
    };
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(5)
        .y_labels(5)
        .x_label_formatter(&|v| class_at(v, false).to_owned())
        .y_label_formatter(&|v| class_at(v, true).to_owned())
        .x_desc("predicted")
        .y_desc("truth")
        .draw()?;
    let most = m.iter().flatten().copied().max().unwrap_or(0).max(1) as f64;
    for (truth, row) in m.iter().enumerate() {
        for (predicted, &n) in row.iter().enumerate() {
            let (x, y) = (predicted as f64, 1.0 - truth as f64);
            let shade = n as f64 / most;
            chart.draw_series(std::iter::once(Rectangle::new(
                [(x, y), (x + 1.0, y + 1.0)],
                REAL.mix(0.1 + 0.8 * shade).filled(),
            )))?;
            let ink = if shade > 0.5 { &WHITE } else { &BLACK };
            let style = ("sans-serif", 28)
                .into_font()
                .color(ink)
                .pos(Pos::new(HPos::Center, VPos::Center));
            chart.draw_series(std::iter::once(Text::new(
                n.to_string(),
                (x + 0.5, y + 0.5),
                style,
            )))?;
        }
    }
    root.present()?;
    Ok(())
}

fn score_distribution(svg: &mut String, holdout: &Holdout) -> Drawn {
    let root = SVGBackend::with_string(svg, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let (lo, hi) = holdout
        .scores
        .iter()
        .fold((0.0f64, 0.0f64), |(lo, hi), s| (lo.min(*s), hi.max(*s)));
    let (lo, hi) = if hi - lo < 1e-9 {
        (lo - 1.0, hi + 1.0)
    } else {
        (lo, hi)
    };
    let width = (hi - lo) / SCORE_BINS as f64;
    let counts = |class: bool| {
        let mut bins = [0u32; SCORE_BINS];
        for (s, _) in holdout
            .scores
            .iter()
            .zip(&holdout.truth)
            .filter(|(_, t)| **t == class)
        {
            bins[(((s - lo) / width) as usize).min(SCORE_BINS - 1)] += 1;
        }
        bins
    };
    let (fake, real) = (counts(false), counts(true));
    let top = fake.iter().chain(&real).copied().max().unwrap_or(0).max(1);
    let mut chart = ChartBuilder::on(&root)
        .margin(20)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(lo..hi, 0u32..top + top / 10 + 1)?;
    chart
        .configure_mesh()
        .x_desc("decision value")
        .y_desc("rows")
        .draw()?;
    for (name, bins, color) in [("truth fake", fake, FAKE), ("truth real", real, REAL)] {
        let n: u32 = bins.iter().sum();
        chart
            .draw_series(bins.iter().enumerate().map(|(i, &count)| {
                let x = lo + i as f64 * width;
                Rectangle::new([(x, 0), (x + width, count)], color.mix(0.55).filled())
            }))?
            .label(format!("{name} ({n} rows)"))
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    chart.draw_series(LineSeries::new([(0.0, 0), (0.0, top)], BLACK))?;
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn roc(svg: &mut String, holdout: &Holdout, auc: Option<f64>) -> Drawn {
    let root = SVGBackend::with_string(svg, (HEIGHT + 60, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let caption = auc.map_or_else(|| "AUC undefined".into(), |a| format!("AUC {a:.4}"));
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 18))
        .margin(20)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..1.0, 0.0..1.0)?;
    chart
        .configure_mesh()
        .x_desc("false positive rate (fake called real)")
        .y_desc("true positive rate")
        .draw()?;
    chart.draw_series(LineSeries::new([(0.0, 0.0), (1.0, 1.0)], BLACK.mix(0.3)))?;
    chart.draw_series(LineSeries::new(
        roc_curve(&holdout.truth, &holdout.scores),
        REAL.stroke_width(2),
    ))?;
    root.present()?;
    Ok(())
}

fn cv_folds(svg: &mut String, folds: &[f64], mean: f64) -> Drawn {
    let root = SVGBackend::with_string(svg, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let k = folds.len().max(1);
    let low = folds.iter().copied().fold(1.0f64, f64::min);
    let floor = ((low - 0.02) * 50.0).floor() / 50.0;
    let floor = floor.clamp(0.0, 0.98);
    let mut chart = ChartBuilder::on(&root)
        .margin(20)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..k as f64, floor..1.0)?;
    // Bar i spans [i, i + 1]: its label sits at the centre, i + 0.5.
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(2 * k + 1)
        .x_label_formatter(&|v| {
            let centre = v - v.floor();
            if (centre - 0.5).abs() < 1e-9 {
                format!("{}", v.floor() as usize + 1)
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|v| format!("{:.1}%", v * 100.0))
        .x_desc("fold")
        .y_desc("accuracy")
        .draw()?;
    chart
        .draw_series(folds.iter().enumerate().map(|(i, &a)| {
            let x = i as f64;
            Rectangle::new([(x + 0.15, floor), (x + 0.85, a)], REAL.mix(0.8).filled())
        }))?
        .label("fold accuracy")
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], REAL.filled()));
    chart
        .draw_series(LineSeries::new(
            [(0.0, mean), (k as f64, mean)],
            FAKE.stroke_width(2),
        ))?
        .label(format!("mean {:.2}%", mean * 100.0))
        .legend(|(x, y)| PathElement::new([(x, y), (x + 12, y)], FAKE.stroke_width(2)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn search_accuracy(svg: &mut String, search: &Search) -> Drawn {
    let root = SVGBackend::with_string(svg, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let cs = || search.candidates.iter().map(|c| c.c);
    let (c_lo, c_hi) = (cs().fold(f64::INFINITY, f64::min), cs().fold(0.0, f64::max));
    let (c_lo, c_hi) = (c_lo / 2.0, c_hi * 2.0);
    let accuracies = || search.candidates.iter().map(|c| c.mean_accuracy);
    let low = accuracies().fold(1.0f64, f64::min);
    let floor = (((low - 0.02) * 50.0).floor() / 50.0).clamp(0.0, 0.98);
    let mut chart = ChartBuilder::on(&root)
        .margin(20)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((c_lo..c_hi).log_scale(), floor..1.0)?;
    chart
        .configure_mesh()
        .x_label_formatter(&|v| short_number(*v))
        .y_label_formatter(&|v| format!("{:.1}%", v * 100.0))
        .x_desc("C (log scale)")
        .y_desc("mean CV accuracy")
        .draw()?;
    let mut widths: Vec<Option<f64>> = Vec::new();
    for c in &search.candidates {
        if !widths.contains(&c.kernel_width) {
            widths.push(c.kernel_width);
        }
    }
    for (i, width) in widths.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let mut line: Vec<(f64, f64)> = search
            .candidates
            .iter()
            .filter(|c| c.kernel_width == *width)
            .map(|c| (c.c, c.mean_accuracy))
            .collect();
        line.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart.draw_series(line.iter().map(|p| Circle::new(*p, 3, color.filled())))?;
        chart
            .draw_series(LineSeries::new(line, color.stroke_width(2)))?
            .label(width.map_or_else(|| "linear".into(), |w| format!("width {w}")))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 12, y)], color.stroke_width(2)));
    }
    let best = &search.candidates[search.best];
    chart
        .draw_series(std::iter::once(Circle::new(
            (best.c, best.mean_accuracy),
            7,
            BLACK.stroke_width(2),
        )))?
        .label("best")
        .legend(|(x, y)| Circle::new((x + 6, y), 5, BLACK.stroke_width(2)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// A C value as a person writes it: 0.1, 1, 10, 100.
fn short_number(v: f64) -> String {
    let text = format!("{v:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use ndarray::Array2;

    use super::*;
    use crate::model::artifact::TrainParams;
    use crate::train::control::Control;
    use crate::train::fit::train_and_evaluate;
    use crate::train::report::PhaseSeconds;
    use crate::train::search::{search, Grid};

    #[test]
    fn auc_of_hand_made_rankings() {
        let truth = [false, false, true, true];
        assert_eq!(auc(&truth, &[0.1, 0.2, 0.3, 0.4]), Some(1.0), "perfect");
        assert_eq!(auc(&truth, &[0.4, 0.3, 0.2, 0.1]), Some(0.0), "reversed");
        assert_eq!(auc(&truth, &[0.5; 4]), Some(0.5), "all tied");
        // Of the four (real, fake) pairs two are ordered rightly, one wrongly, one tied.
        assert_eq!(auc(&truth, &[0.1, 0.3, 0.3, 0.2]), Some(0.625));
        assert_eq!(auc(&[true, true], &[0.1, 0.2]), None, "one class");
        assert_eq!(
            roc_curve(&truth, &[0.1, 0.2, 0.3, 0.4]),
            [(0.0, 0.0), (0.0, 0.5), (0.0, 1.0), (0.5, 1.0), (1.0, 1.0)]
        );
    }

    /// A small Gaussian model fitted on two noisy blobs, with its report and hold-out.
    fn fitted(searched: bool) -> (TrainReport, Holdout) {
        let n = 120;
        let y: Vec<bool> = (0..n).map(|i| i % 2 == 0).collect();
        let x = Array2::from_shape_fn((n, 2), |(i, j)| {
            let noise = ((i * 7919 + j * 104_729) % 97) as f64 / 97.0 - 0.5;
            if j == 0 && y[i] {
                0.8 + noise
            } else {
                noise
            }
        });
        let params = TrainParams {
            folds: 3,
            ..TrainParams::with_kernel(Kernel::Gaussian)
        };
        let control = Control::new();
        let (_, metrics, _, holdout) =
            train_and_evaluate(&x, &y, &params, &control, &mut |_, _, _| {}).unwrap();
        let grid = Grid {
            c: vec![0.1, 1.0, 10.0],
            widths: vec![1.0, 4.0],
        };
        let search = searched
            .then(|| search(&x, &y, &params, &grid, 2, &control, &mut |_, _, _| {}).unwrap());
        let report = TrainReport {
            model: "banknote <test>".into(),
            version: None,
            job_id: 7,
            features: vec!["variance".into(), "skewness".into()],
            params,
            metrics,
            data_source: "test blobs".into(),
            data_fingerprint: "sha256:test".into(),
            skipped_rows: BTreeMap::new(),
            seconds: PhaseSeconds {
                data: 0.0,
                train: 0.0,
                evaluate: 0.0,
            },
            search,
            html_report: None,
        };
        (report, holdout)
    }

    fn figure_ids(html: &str) -> Vec<&str> {
        html.split("<figure id=\"")
            .skip(1)
            .map(|rest| &rest[..rest.find('"').unwrap()])
            .collect()
    }

    #[test]
    fn the_html_report_holds_every_figure_and_the_search_only_after_one() {
        let dir = std::env::temp_dir().join(format!("figures-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("report.html");
        let (report, holdout) = fitted(false);
        write_html(&path, &report, &holdout).unwrap();
        let written = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            figure_ids(&written),
            [
                "confusion-matrix",
                "score-distribution",
                "roc-curve",
                "cv-folds"
            ]
        );
        // Every figure is an inline SVG drawing, and nothing is loaded from elsewhere.
        assert_eq!(written.matches("<svg").count(), 4);
        assert!(
            written.matches("<rect").count() >= 4,
            "drawn cells and bars"
        );
        assert!(!written.contains("<script") && !written.contains("src="));
        let auc = auc(&holdout.truth, &holdout.scores).unwrap();
        assert!(auc > 0.9, "{auc}");
        assert!(
            written.contains(&format!("<figcaption>AUC {auc:.4}, ")),
            "the AUC is in the ROC caption"
        );
        assert!(written.contains("banknote &lt;test&gt;"), "text is escaped");

        let (report, holdout) = fitted(true);
        let html = html(&report, &holdout).unwrap();
        assert_eq!(
            figure_ids(&html),
            [
                "confusion-matrix",
                "score-distribution",
                "roc-curve",
                "cv-folds",
                "search-accuracy"
            ]
        );
        for legend in ["width 1", "width 4", "best"] {
            assert!(html.contains(legend), "search legend names {legend}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
