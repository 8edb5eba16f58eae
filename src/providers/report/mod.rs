//! `providers report`: each provider judged by numbers, from the stored data and the traffic,
//! never from the fixtures' known answers.
//!
//! - **coverage**: of the notes seen in traffic (the worker's `enrichment_coverage` rows per
//!   provider) and of the notes in the training data (their documents looked up now), the
//!   share each provider can enrich and the share none can;
//! - **agreement**: for notes two providers both cover, their canonical values compared
//!   feature by feature against the spec's tolerance, and the notes that disagree most;
//! - **freshness**: the age of each provider's last delivery and of its current documents;
//! - **API performance**: request latency percentiles and error rate of the HTTP deliveries
//!   (`provider_requests`), against a latency budget per provider;
//! - **serving**: the worker's enrichment latency (its `/metrics`) and the predictions per
//!   issuer and label (`prediction_aggregates`).
//!
//! [`gather`] asks the databases (one scan of the current documents, a few aggregate queries);
//! [`stats`] is the arithmetic; [`text`] and [`html`] present one [`ProviderReport`], which is
//! also the JSON form.

pub mod gather;
pub mod html;
pub mod model;
pub mod stats;
pub mod text;

pub use gather::{gather, ReportError, ReportOptions};
pub use model::{
    ApiPerformance, Coverage, CoverageShares, DeliveryAge, FeatureAgreement, Freshness,
    PairAgreement, PredictionGroup, ProviderReport, Serving, StageLatency,
    DEFAULT_LATENCY_BUDGET_MS,
};
pub use stats::{DifferenceSummary, Differences, Disagreement};

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use chrono::Utc;
    use std::collections::BTreeMap;

    /// A small report as `gather` would make it: two providers, traffic, one disagreement.
    pub(crate) fn sample() -> ProviderReport {
        let now = Utc::now();
        let shares = |total, a, l, none| CoverageShares {
            total,
            per_provider: BTreeMap::from([("aurum".into(), a), ("lumen".into(), l)]),
            none,
            note: "sample".into(),
        };
        let summary = Differences {
            signed: vec![0.0, 0.0, 0.3, -0.02],
        }
        .summary(0.01);
        ProviderReport {
            generated_at: now,
            since: now - chrono::TimeDelta::hours(24),
            spec: "banknote".into(),
            model: "banknote".into(),
            providers: vec!["aurum".into(), "lumen".into()],
            coverage: Coverage {
                traffic: shares(100, 70, 45, 2),
                training: shares(2000, 1390, 900, 10),
            },
            agreement: vec![PairAgreement {
                providers: ["aurum".into(), "lumen".into()],
                notes_both: 4,
                features: vec![FeatureAgreement {
                    feature: "entropy".into(),
                    summary,
                }],
                differences: vec![vec![0.0, 0.0, 0.3, -0.02]],
            }],
            disagreements: vec![Disagreement {
                note: "SN-000007".into(),
                providers: ["aurum".into(), "lumen".into()],
                feature: "entropy".into(),
                values: [1.3, 1.0],
                tolerances_apart: 30.0,
            }],
            freshness: vec![Freshness {
                provider: "aurum".into(),
                last_delivery: Some(DeliveryAge {
                    delivery_id: "aurum-1".into(),
                    finished_at: now,
                    age_hours: 3.0,
                    status: "succeeded".into(),
                }),
                last_attempt_problem: Some("delivery aurum-2 failed: page 2 is not JSON".into()),
                documents: 1430,
                documents_dated: 148,
                median_document_age_hours: Some(3.0),
                oldest_document_age_hours: Some(3.0),
            }],
            api: vec![ApiPerformance {
                provider: "aurum".into(),
                requests: 12,
                errors: 2,
                error_rate: 2.0 / 12.0,
                p50_ms: 40.0,
                p95_ms: 300.0,
                p99_ms: 900.0,
                budget_ms: 250.0,
                within_budget: false,
            }],
            serving: Serving {
                enrichment_latency: vec![StageLatency {
                    stage: "enrich.mongo".into(),
                    batches: 25,
                    p50_ms: 2.5,
                    p95_ms: 9.0,
                    p99_ms: 9.8,
                }],
                enrichment_latency_note: None,
                predictions: vec![PredictionGroup {
                    issuer: "GB-BOE".into(),
                    label: "real".into(),
                    predictions: 40,
                    mean_score: 1.2,
                }],
            },
        }
    }

    #[test]
    fn the_tables_name_every_section_and_verdict() {
        let text = text::render(&sample());
        for needle in [
            "traffic covered",
            "70.0 %",
            "no provider",
            "agreement aurum vs lumen (4 notes both cover",
            "SN-000007",
            "30 tolerances apart",
            "aurum-1 (succeeded)",
            "last attempt: delivery aurum-2 failed",
            "p95 OVER budget",
            "enrich.mongo",
            "GB-BOE",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from\n{text}");
        }
    }

    #[test]
    fn the_html_page_holds_each_figure_and_table() {
        let page = html::html(&sample()).unwrap();
        for id in [
            "coverage",
            "agreement-aurum-lumen-entropy",
            "agreement-aurum-lumen",
            "disagreements",
            "freshness",
            "api-latency",
            "serving-latency",
            "serving-predictions",
        ] {
            assert!(page.contains(&format!("id=\"{id}\"")), "{id} missing");
        }
        assert_eq!(
            page.matches("<svg").count(),
            4,
            "coverage, entropy, freshness, API"
        );
        let json = serde_json::to_value(sample()).unwrap();
        assert_eq!(json["api"][0]["within_budget"], false);
        assert!(json["agreement"][0].get("differences").is_none());
    }
}
