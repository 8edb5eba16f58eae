//! The monitor's figures as CloudWatch Embedded Metric Format lines: JSON documents that the
//! task's awslogs driver ships to CloudWatch Logs, where they become metrics, with no agent and
//! no PutMetricData call (`ML_PIPELINE_EMF_NAMESPACE` turns them on).
//!
//! Per interval: one line per feature (dimensions Model, Feature: `FeaturePSI`,
//! `FeatureOutOfRange`), one per model (dimension Model: `DriftMaxPSI`, the largest feature PSI,
//! which the service template's alarm watches, and `DriftWindowRecords`), and, when a shadow
//! model scored, one per shadow alias (dimensions Model, ShadowAlias: `ShadowAgreement`,
//! `ShadowScoreDifference`, `ShadowLatencyRatio`, `ShadowRecords`). Versions are properties,
//! not dimensions, so a new version does not start new metrics.

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

use super::drift::Drift;
use super::shadow::Tally;

fn document(
    namespace: &str,
    at: DateTime<Utc>,
    dimensions: &[(&str, &str)],
    metrics: &[(&str, &str, f64)],
    properties: &[(&str, Value)],
) -> String {
    let mut doc = Map::new();
    doc.insert(
        "_aws".into(),
        json!({
            "Timestamp": at.timestamp_millis(),
            "CloudWatchMetrics": [{
                "Namespace": namespace,
                "Dimensions": [dimensions.iter().map(|(k, _)| *k).collect::<Vec<_>>()],
                "Metrics": metrics.iter().map(|(name, unit, _)| json!({"Name": name, "Unit": unit})).collect::<Vec<_>>(),
            }],
        }),
    );
    for (k, v) in dimensions {
        doc.insert((*k).into(), Value::from(*v));
    }
    for (name, _, v) in metrics {
        doc.insert((*name).into(), json!(v));
    }
    for (k, v) in properties {
        doc.insert((*k).into(), v.clone());
    }
    Value::Object(doc).to_string()
}

/// The drift lines of one interval.
pub fn drift_lines(namespace: &str, at: DateTime<Utc>, model: &str, drift: &Drift) -> Vec<String> {
    let version = [("ModelVersion", json!(drift.version))];
    let mut lines: Vec<String> = drift
        .features
        .iter()
        .map(|f| {
            document(
                namespace,
                at,
                &[("Model", model), ("Feature", &f.feature)],
                &[
                    ("FeaturePSI", "None", f.psi),
                    ("FeatureOutOfRange", "None", f.out_of_range),
                ],
                &version,
            )
        })
        .collect();
    let max = drift.features.iter().map(|f| f.psi).fold(0.0, f64::max);
    lines.push(document(
        namespace,
        at,
        &[("Model", model)],
        &[
            ("DriftMaxPSI", "None", max),
            ("DriftWindowRecords", "Count", drift.rows as f64),
        ],
        &version,
    ));
    lines
}

/// The shadow line of one interval, for one pair of versions.
pub fn shadow_line(
    namespace: &str,
    at: DateTime<Utc>,
    model: &str,
    alias: &str,
    (served, shadow): (u64, u64),
    tally: &Tally,
) -> String {
    let mut metrics = vec![("ShadowRecords", "Count", tally.records as f64)];
    if let Some(a) = tally.agreement() {
        metrics.push(("ShadowAgreement", "None", a));
    }
    if let Some(d) = tally.mean_score_diff() {
        metrics.push(("ShadowScoreDifference", "None", d));
    }
    if let Some(r) = tally.latency_ratio() {
        metrics.push(("ShadowLatencyRatio", "None", r));
    }
    document(
        namespace,
        at,
        &[("Model", model), ("ShadowAlias", alias)],
        &metrics,
        &[
            ("ModelVersion", json!(served)),
            ("ShadowVersion", json!(shadow)),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::drift::FeatureDrift;

    #[test]
    fn a_drift_line_is_an_emf_document_whose_metrics_and_dimensions_are_top_level_members() {
        let drift = Drift {
            version: 7,
            rows: 1200,
            features: vec![
                FeatureDrift {
                    feature: "variance".into(),
                    psi: 0.31,
                    out_of_range: 0.05,
                },
                FeatureDrift {
                    feature: "entropy".into(),
                    psi: 0.02,
                    out_of_range: 0.0,
                },
            ],
        };
        let at = DateTime::from_timestamp_millis(1_700_000_000_123).unwrap();
        let lines = drift_lines("MlPipeline", at, "banknote", &drift);
        assert_eq!(lines.len(), 3);
        let first: Value = serde_json::from_str(&lines[0]).unwrap();
        let spec = &first["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(first["_aws"]["Timestamp"], 1_700_000_000_123i64);
        assert_eq!(spec["Namespace"], "MlPipeline");
        assert_eq!(spec["Dimensions"], json!([["Model", "Feature"]]));
        assert_eq!(spec["Metrics"][0]["Name"], "FeaturePSI");
        assert_eq!(first["Feature"], "variance");
        assert_eq!(first["FeaturePSI"], 0.31);
        assert_eq!(first["ModelVersion"], 7);
        let last: Value = serde_json::from_str(&lines[2]).unwrap();
        assert_eq!(last["DriftMaxPSI"], 0.31);
        assert_eq!(
            last["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([["Model"]])
        );
    }

    #[test]
    fn a_shadow_line_carries_agreement_and_both_versions() {
        let mut tally = Tally::default();
        tally.compare(&[1.0, -1.0], &[1.5, 1.0]);
        tally.served_seconds = 0.002;
        tally.shadow_seconds = 0.003;
        let line = shadow_line(
            "MlPipeline",
            Utc::now(),
            "banknote",
            "challenger",
            (3, 4),
            &tally,
        );
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["ShadowAgreement"], 0.5);
        assert_eq!(v["ShadowRecords"], 2.0);
        assert!((v["ShadowLatencyRatio"].as_f64().unwrap() - 1.5).abs() < 1e-9);
        assert_eq!(
            (v["ModelVersion"].clone(), v["ShadowVersion"].clone()),
            (json!(3), json!(4))
        );
    }
}
