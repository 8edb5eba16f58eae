//! The `models` commands: what a data scientist runs to list, compare, promote and roll back
//! model versions. Each returns the text to print.

use std::fmt::Write as _;

use anyhow::Context;
use serde_json::Value;

use crate::model::artifact::ModelArtifact;
use crate::model::registry::Registry;

/// A table of versions with metrics and aliases.
pub async fn list(registry: &Registry, name: &str) -> anyhow::Result<String> {
    let versions = registry.versions(name).await?;
    let aliases = registry.aliases(name).await?;
    let mut out = format!(
        "{:>7}  {:<20}  {:<9}  {:>7}  {:>8}  {:>4}  {:>6}  aliases\n",
        "version", "created", "kernel", "cv acc", "hold-out", "SVs", "rows"
    );
    for v in versions {
        let names: Vec<&str> = aliases
            .iter()
            .filter(|(_, av)| *av == v)
            .map(|(a, _)| a.as_str())
            .collect();
        let line = match registry.load(name, v).await {
            Ok(a) => format!(
                "{v:>7}  {:<20}  {:<9}  {:>6.2}%  {:>7.2}%  {:>4}  {:>6}  {}",
                a.created_at.format("%Y-%m-%d %H:%M:%S"),
                a.params.kernel,
                a.metrics.cv_accuracy * 100.0,
                a.metrics.holdout_accuracy * 100.0,
                a.metrics.support_vectors,
                a.metrics.train_rows,
                names.join(",")
            ),
            Err(e) => format!(
                "{v:>7}  refused: {}  {}",
                crate::text::error_chain(&e),
                names.join(",")
            ),
        };
        writeln!(out, "{line}").expect("writing to a String");
    }
    Ok(out)
}

/// One version in full.
pub fn show(a: &ModelArtifact) -> String {
    let summary = serde_json::json!({
        "name": a.name,
        "version": a.version,
        "format": a.format,
        "created_at": a.created_at,
        "crate_version": a.crate_version,
        "data_source": a.data_source,
        "data_fingerprint": a.data_fingerprint,
        "class_names": a.class_names,
        "params": a.params,
        "metrics": a.metrics,
        "spec": a.spec,
        "reference_rows": a.reference.as_ref().map(|r| r.rows.len()),
    });
    serde_json::to_string_pretty(&summary).expect("serializable")
}

/// Validates a version (every check a worker runs before serving it, the reference set
/// recomputed included) and points the alias at it.
pub async fn promote(
    registry: &Registry,
    name: &str,
    version: u64,
    alias: &str,
    require_better: bool,
) -> anyhow::Result<String> {
    let candidate = registry
        .load(name, version)
        .await
        .with_context(|| format!("refusing to promote {name} version {version}"))?;
    if let Some(current) = registry.alias(name, alias).await? {
        if require_better && current.record.version != version {
            let serving = registry.load(name, current.record.version).await?;
            anyhow::ensure!(
                candidate.metrics.cv_accuracy >= serving.metrics.cv_accuracy,
                "refusing to promote {name} version {version}: its CV accuracy {:.2}% is below version {}'s {:.2}% on alias {alias} (use --force to promote anyway)",
                candidate.metrics.cv_accuracy * 100.0,
                current.record.version,
                serving.metrics.cv_accuracy * 100.0
            );
        }
    }
    registry.set_alias(name, alias, version, "promote").await?;
    let mut out = format!(
        "{name}: alias {alias} -> version {version} (CV accuracy {:.2}%)",
        candidate.metrics.cv_accuracy * 100.0
    );
    if candidate.reference.is_none() {
        write!(out, "\nwarning: version {version} has no reference set (it was written before they existed): its shapes were checked, its predictions could not be; retrain to get one")
            .expect("writing to a String");
    }
    Ok(out)
}

/// Metrics side by side, then every spec difference.
pub fn diff(a: &ModelArtifact, b: &ModelArtifact) -> String {
    let (va, vb) = (a.version.unwrap_or_default(), b.version.unwrap_or_default());
    let mut out = format!(
        "{:<18} {:>14} {:>14}\n",
        "",
        format!("version {va}"),
        format!("version {vb}")
    );
    let rows: [(&str, String, String); 8] = [
        (
            "kernel",
            a.params.kernel.to_string(),
            b.params.kernel.to_string(),
        ),
        ("C", a.params.c.to_string(), b.params.c.to_string()),
        (
            "cv accuracy",
            pct(a.metrics.cv_accuracy),
            pct(b.metrics.cv_accuracy),
        ),
        (
            "hold-out accuracy",
            pct(a.metrics.holdout_accuracy),
            pct(b.metrics.holdout_accuracy),
        ),
        (
            "F1",
            format!("{:.4}", a.metrics.f1),
            format!("{:.4}", b.metrics.f1),
        ),
        (
            "support vectors",
            a.metrics.support_vectors.to_string(),
            b.metrics.support_vectors.to_string(),
        ),
        (
            "training rows",
            a.metrics.train_rows.to_string(),
            b.metrics.train_rows.to_string(),
        ),
        (
            "data",
            short(&a.data_fingerprint),
            short(&b.data_fingerprint),
        ),
    ];
    for (label, x, y) in rows {
        let mark = if x == y { "" } else { "  *" };
        writeln!(out, "{label:<18} {x:>14} {y:>14}{mark}").expect("writing to a String");
    }
    let spec_a = serde_json::to_value(&a.spec).expect("serializable");
    let spec_b = serde_json::to_value(&b.spec).expect("serializable");
    let mut changes = Vec::new();
    json_diff("spec", &spec_a, &spec_b, &mut changes);
    if changes.is_empty() {
        out.push_str("spec: identical\n");
    } else {
        out.push_str("spec differences:\n");
        for c in changes {
            writeln!(out, "  {c}").expect("writing to a String");
        }
    }
    out
}

fn pct(v: f64) -> String {
    format!("{:.2}%", v * 100.0)
}

fn short(fingerprint: &str) -> String {
    fingerprint
        .trim_start_matches("sha256:")
        .chars()
        .take(12)
        .collect()
}

/// Paths where two JSON values differ, with both sides.
fn json_diff(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                json_diff(
                    &format!("{path}.{k}"),
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                json_diff(&format!("{path}[{i}]"), p, q, out);
            }
        }
        _ if a != b => out.push(format!("{path}: {a} -> {b}")),
        _ => {}
    }
}
