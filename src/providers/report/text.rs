//! The provider report as the tables `providers report` prints.

use std::fmt::Write as _;

use super::model::{CoverageShares, ProviderReport};

/// Every section of the report as text tables.
pub fn render(r: &ProviderReport) -> String {
    let mut out = String::new();
    let hours = (r.generated_at - r.since).num_minutes() as f64 / 60.0;
    let _ = writeln!(
        out,
        "provider report: spec {}, model {}, traffic since {} ({}), providers in order of preference: {}",
        r.spec,
        r.model,
        r.since.format("%Y-%m-%d %H:%M UTC"),
        age(hours),
        r.providers.join(", ")
    );
    out.push('\n');
    out.push_str(&summary(r));
    agreement(&mut out, r);
    freshness(&mut out, r);
    api(&mut out, r);
    serving(&mut out, r);
    out
}

/// The summary table: per provider, coverage of the traffic and of the training data, the
/// share of shared notes beyond tolerance, the last delivery's age and the API's p95. What
/// `make demo` prints.
pub fn summary(r: &ProviderReport) -> String {
    let (traffic, training) = (&r.coverage.traffic, &r.coverage.training);
    let mut out = format!(
        "{:<12}  {:>16}  {:>16}  {:>16}  {:>13}  {:>13}\n",
        "provider",
        "traffic covered",
        "training covered",
        "beyond tolerance",
        "last delivery",
        "API p95"
    );
    for p in &r.providers {
        let beyond = r
            .agreement
            .iter()
            .filter(|a| a.providers.contains(p))
            .flat_map(|a| a.features.iter().filter_map(|f| f.summary.as_ref()))
            .map(|s| s.beyond_share)
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
        let last = r
            .freshness
            .iter()
            .find(|f| f.provider == *p)
            .and_then(|f| f.last_delivery.as_ref())
            .map_or_else(
                || "none".to_owned(),
                |d| format!("{} ago", age(d.age_hours)),
            );
        let api = r.api.iter().find(|a| a.provider == *p).map_or_else(
            || "-".to_owned(),
            |a| {
                format!(
                    "{} ms{}",
                    short(a.p95_ms),
                    if a.within_budget { "" } else { " (over)" }
                )
            },
        );
        let _ = writeln!(
            out,
            "{:<12}  {:>16}  {:>16}  {:>16}  {:>13}  {:>13}",
            p,
            share(traffic, traffic.per_provider.get(p).copied()),
            share(training, training.per_provider.get(p).copied()),
            beyond.map_or_else(|| "-".to_owned(), percent),
            last,
            api
        );
    }
    let _ = writeln!(
        out,
        "{:<12}  {:>16}  {:>16}",
        "no provider",
        share(traffic, Some(traffic.none)),
        share(training, Some(training.none)),
    );
    let _ = writeln!(
        out,
        "(traffic: {} {}; training: {} {})",
        traffic.total, traffic.note, training.total, training.note
    );
    out
}

fn share(c: &CoverageShares, n: Option<u64>) -> String {
    match n {
        Some(n) if c.total > 0 => percent(c.share(n)),
        _ => "-".to_owned(),
    }
}

fn percent(v: f64) -> String {
    format!("{:.1} %", v * 100.0)
}

/// A number of canonical units or milliseconds, short.
pub fn short(v: f64) -> String {
    if v == 0.0 {
        "0".to_owned()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

/// An age in hours, in the unit that reads best.
pub fn age(hours: f64) -> String {
    let minutes = hours * 60.0;
    if minutes < 1.0 {
        "under a minute".to_owned()
    } else if minutes < 90.0 {
        format!("{minutes:.0} min")
    } else if hours < 48.0 {
        format!("{hours:.1} h")
    } else {
        format!("{:.1} days", hours / 24.0)
    }
}

fn agreement(out: &mut String, r: &ProviderReport) {
    for pair in &r.agreement {
        let _ = writeln!(
            out,
            "\nagreement {} vs {} ({} notes both cover; canonical units, {} minus {})",
            pair.providers[0],
            pair.providers[1],
            pair.notes_both,
            pair.providers[0],
            pair.providers[1]
        );
        let _ = writeln!(
            out,
            "  {:<12}  {:>7}  {:>13}  {:>11}  {:>11}  {:>9}  beyond",
            "feature", "notes", "median |diff|", "p95 |diff|", "max |diff|", "tolerance"
        );
        for f in &pair.features {
            match &f.summary {
                Some(s) => {
                    let _ = writeln!(
                        out,
                        "  {:<12}  {:>7}  {:>13}  {:>11}  {:>11}  {:>9}  {} ({})",
                        f.feature,
                        s.notes,
                        short(s.median_abs),
                        short(s.p95_abs),
                        short(s.max_abs),
                        short(s.tolerance),
                        s.beyond_tolerance,
                        percent(s.beyond_share)
                    );
                }
                None => {
                    let _ = writeln!(out, "  {:<12}  no note with both values", f.feature);
                }
            }
        }
    }
    if !r.disagreements.is_empty() {
        let _ = writeln!(out, "\nnotes that disagree most");
        for d in &r.disagreements {
            let _ = writeln!(
                out,
                "  {:<14}  {:<10}  {} {}  {} {}  ({:.0} tolerances apart)",
                d.note,
                d.feature,
                d.providers[0],
                short(d.values[0]),
                d.providers[1],
                short(d.values[1]),
                d.tolerances_apart
            );
        }
    }
}

fn freshness(out: &mut String, r: &ProviderReport) {
    let _ = writeln!(
        out,
        "\nfreshness\n  {:<12}  {:<42}  {:>14}  {:>9}  {:>9}  {:>14}  {:>14}",
        "provider", "last delivery", "age", "documents", "dated", "median age", "oldest"
    );
    for f in &r.freshness {
        let (last, last_age) = match &f.last_delivery {
            Some(d) => (
                format!("{} ({})", d.delivery_id, d.status),
                age(d.age_hours),
            ),
            None => ("none recorded".to_owned(), "-".to_owned()),
        };
        let _ = writeln!(
            out,
            "  {:<12}  {:<42}  {:>14}  {:>9}  {:>9}  {:>14}  {:>14}",
            f.provider,
            last,
            last_age,
            f.documents,
            f.documents_dated,
            f.median_document_age_hours
                .map_or_else(|| "-".to_owned(), age),
            f.oldest_document_age_hours
                .map_or_else(|| "-".to_owned(), age),
        );
        if let Some(problem) = &f.last_attempt_problem {
            let _ = writeln!(out, "  {:<12}  last attempt: {problem}", "");
        }
    }
    let undated: u64 = r
        .freshness
        .iter()
        .map(|f| f.documents - f.documents_dated)
        .sum();
    if undated > 0 {
        let _ = writeln!(
            out,
            "  ({undated} documents were written without a recorded delivery, e.g. by `fixtures load`; they have no age)"
        );
    }
}

fn api(out: &mut String, r: &ProviderReport) {
    let _ = writeln!(
        out,
        "\nAPI performance (recorded HTTP requests since the window's start)"
    );
    if r.api.is_empty() {
        let _ = writeln!(out, "  no HTTP requests recorded in the window");
        return;
    }
    let _ = writeln!(
        out,
        "  {:<12}  {:>8}  {:>6}  {:>10}  {:>8}  {:>8}  {:>8}  {:>9}  verdict",
        "provider", "requests", "errors", "error rate", "p50 ms", "p95 ms", "p99 ms", "budget ms"
    );
    for a in &r.api {
        let _ = writeln!(
            out,
            "  {:<12}  {:>8}  {:>6}  {:>10}  {:>8}  {:>8}  {:>8}  {:>9}  {}",
            a.provider,
            a.requests,
            a.errors,
            percent(a.error_rate),
            short(a.p50_ms),
            short(a.p95_ms),
            short(a.p99_ms),
            short(a.budget_ms),
            if a.within_budget {
                "p95 within budget"
            } else {
                "p95 OVER budget"
            }
        );
    }
}

fn serving(out: &mut String, r: &ProviderReport) {
    let s = &r.serving;
    let _ = writeln!(
        out,
        "\nserving: enrichment latency (worker /metrics, since it started)"
    );
    if let Some(note) = &s.enrichment_latency_note {
        let _ = writeln!(out, "  {note}");
    }
    for l in &s.enrichment_latency {
        let _ = writeln!(
            out,
            "  {:<16}  {:>8} batches  p50 {} ms  p95 {} ms  p99 {} ms",
            l.stage,
            l.batches,
            short(l.p50_ms),
            short(l.p95_ms),
            short(l.p99_ms)
        );
    }
    let _ = writeln!(
        out,
        "\nserving: predictions per issuer and label in the window"
    );
    if s.predictions.is_empty() {
        let _ = writeln!(out, "  none recorded");
    }
    for p in &s.predictions {
        let _ = writeln!(
            out,
            "  {:<12}  {:<6}  {:>8}  mean score {:+.3}",
            p.issuer, p.label, p.predictions, p.mean_score
        );
    }
}
