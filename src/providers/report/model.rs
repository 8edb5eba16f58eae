//! The report's shape: what [`super::gather`] fills in, [`super::text`] and [`super::html`]
//! present, and `--json` writes as is.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::stats::{DifferenceSummary, Disagreement};

/// The latency budget of a provider's API when none is given for it, in milliseconds.
pub const DEFAULT_LATENCY_BUDGET_MS: f64 = 1000.0;

/// The whole report; serialized as is for `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct ProviderReport {
    /// When it was made.
    pub generated_at: DateTime<Utc>,
    /// The start of the window: traffic, requests and predictions since then.
    pub since: DateTime<Utc>,
    /// The pipeline spec whose providers and tolerances are used.
    pub spec: String,
    /// The model whose traffic is counted.
    pub model: String,
    /// The providers in the spec's order of preference.
    pub providers: Vec<String>,
    /// Coverage of the traffic and of the training data.
    pub coverage: Coverage,
    /// Per pair of providers, per feature: how far apart their values are.
    pub agreement: Vec<PairAgreement>,
    /// The notes that disagree most, largest first.
    pub disagreements: Vec<Disagreement>,
    /// Per provider: deliveries and documents by age.
    pub freshness: Vec<Freshness>,
    /// Per provider with recorded API requests in the window.
    pub api: Vec<ApiPerformance>,
    /// What the worker saw while serving.
    pub serving: Serving,
}

/// Coverage from two angles.
#[derive(Debug, Clone, Serialize)]
pub struct Coverage {
    /// Records the worker looked up in the window.
    pub traffic: CoverageShares,
    /// The notes of the training data, looked up now.
    pub training: CoverageShares,
}

/// How many of some notes each provider can enrich.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CoverageShares {
    /// Records (traffic) or distinct notes (training data) counted.
    pub total: u64,
    /// Per provider (spec order): how many it can enrich (its document alone gives every
    /// document feature a finite number).
    pub per_provider: BTreeMap<String, u64>,
    /// How many no provider can enrich.
    pub none: u64,
    /// What was counted, or why nothing was (no traffic in the window, no training data).
    pub note: String,
}

impl CoverageShares {
    /// `count / total`, 0 without a total.
    pub fn share(&self, count: u64) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            count as f64 / self.total as f64
        }
    }
}

/// Two providers compared on the notes both cover.
#[derive(Debug, Clone, Serialize)]
pub struct PairAgreement {
    /// The two providers, in the spec's order of preference.
    pub providers: [String; 2],
    /// Notes both have a document for.
    pub notes_both: u64,
    /// Per document feature: the summary (`None` when no note had both values).
    pub features: Vec<FeatureAgreement>,
    /// Signed differences (first minus second) per feature, for the figures; not serialized.
    #[serde(skip)]
    pub differences: Vec<Vec<f64>>,
}

/// One feature's agreement.
#[derive(Debug, Clone, Serialize)]
pub struct FeatureAgreement {
    /// The feature.
    pub feature: String,
    /// The numbers; `None` when no note had both values.
    pub summary: Option<DifferenceSummary>,
}

/// How fresh one provider's data is.
#[derive(Debug, Clone, Serialize)]
pub struct Freshness {
    /// The provider.
    pub provider: String,
    /// Its last delivery that changed or confirmed the store (succeeded or unchanged).
    pub last_delivery: Option<DeliveryAge>,
    /// Its last delivery of any status, when that one failed or still runs.
    pub last_attempt_problem: Option<String>,
    /// Current documents.
    pub documents: u64,
    /// Current documents written by a recorded delivery, with their age.
    pub documents_dated: u64,
    /// Median age of the dated documents, in hours.
    pub median_document_age_hours: Option<f64>,
    /// Age of the oldest dated document, in hours.
    pub oldest_document_age_hours: Option<f64>,
}

/// A delivery and how long ago it finished.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryAge {
    /// Its id.
    pub delivery_id: String,
    /// When it finished.
    pub finished_at: DateTime<Utc>,
    /// Hours since then.
    pub age_hours: f64,
    /// Its status.
    pub status: String,
}

/// One provider's API, from its recorded requests.
#[derive(Debug, Clone, Serialize)]
pub struct ApiPerformance {
    /// The provider.
    pub provider: String,
    /// Requests (every attempt of every page).
    pub requests: u64,
    /// Requests that did not answer a page (status, timeout, connection, malformed).
    pub errors: u64,
    /// `errors / requests`.
    pub error_rate: f64,
    /// Latency percentiles in milliseconds.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// The budget the p95 is held against.
    pub budget_ms: f64,
    /// Whether the p95 is within the budget.
    pub within_budget: bool,
}

/// What the worker saw.
#[derive(Debug, Clone, Serialize)]
pub struct Serving {
    /// Enrichment latency per stage from the worker's `/metrics` (since it started).
    pub enrichment_latency: Vec<StageLatency>,
    /// Why there is no enrichment latency, when there is none.
    pub enrichment_latency_note: Option<String>,
    /// Predictions per issuer and label in the window, most first.
    pub predictions: Vec<PredictionGroup>,
}

/// One stage's latency from a histogram.
#[derive(Debug, Clone, Serialize)]
pub struct StageLatency {
    /// `enrich`, `enrich.postgres` or `enrich.mongo`.
    pub stage: String,
    /// Batches observed.
    pub batches: u64,
    /// Percentiles in milliseconds, interpolated within the histogram's buckets.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
}

/// Predictions of one issuer and label.
#[derive(Debug, Clone, Serialize)]
pub struct PredictionGroup {
    /// The issuer code (`-` when the record reported none).
    pub issuer: String,
    /// The label.
    pub label: String,
    /// How many.
    pub predictions: u64,
    /// Their mean decision score.
    pub mean_score: f64,
}
