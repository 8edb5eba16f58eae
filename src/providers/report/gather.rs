//! What the provider report asks of PostgreSQL, MongoDB and the worker's `/metrics`.
//!
//! MongoDB is read twice: the current documents once, in key order (agreement, document ages),
//! and the training data's notes in chunks of [`LOOKUP_CHUNK_KEYS`] through the worker's own
//! lookup (coverage of the training data). Memory grows with the notes two providers share
//! (a few numbers per note and feature), never with the documents' size.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use mongodb::bson::doc;
use mongodb::bson::raw::RawDocumentBuf;
use mongodb::Database;
use sqlx::PgPool;

use super::model::{
    ApiPerformance, Coverage, CoverageShares, DeliveryAge, FeatureAgreement, Freshness,
    PairAgreement, PredictionGroup, ProviderReport, Serving, StageLatency,
    DEFAULT_LATENCY_BUDGET_MS,
};
use super::stats::{Differences, Disagreement, Histogram, WorstNotes};
use crate::enrich::mongo::{FieldReader, MongoDocuments};
use crate::enrich::source::{DocumentSource, LookupLimits, ProviderDoc};
use crate::normalize::{provider_can_enrich, provider_value};
use crate::spec::{DocumentSpec, FeatureSpec, PipelineSpec};

/// Training notes looked up per `$in`.
pub const LOOKUP_CHUNK_KEYS: usize = 10_000;

/// How long one chunk's lookup may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(120);

/// How long the worker's `/metrics` may take to answer.
const METRICS_TIMEOUT: Duration = Duration::from_secs(5);

/// The stages whose latency the serving section reads.
const ENRICH_STAGES: [&str; 3] = ["enrich", "enrich.postgres", "enrich.mongo"];

/// Prediction groups (issuer, label) listed, most predictions first.
const PREDICTION_GROUPS: i64 = 50;

/// What the report covers and how it judges.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    /// Traffic, API requests and predictions from this instant on.
    pub since: DateTime<Utc>,
    /// The model whose traffic is counted.
    pub model: String,
    /// Latency budget per provider in milliseconds, held against the p95.
    pub latency_budgets: BTreeMap<String, f64>,
    /// The budget of a provider not in `latency_budgets`.
    pub default_budget_ms: f64,
    /// A running worker's `/metrics` URL, for the enrichment latency.
    pub metrics_url: Option<String>,
    /// How many of the most disagreeing notes to list.
    pub disagreements: usize,
    /// Only this training dataset (all of them when `None`).
    pub dataset: Option<String>,
}

impl ReportOptions {
    /// The options for a window of `since`, every other setting at its default.
    pub fn since(since: DateTime<Utc>, model: &str) -> Self {
        Self {
            since,
            model: model.to_owned(),
            latency_budgets: BTreeMap::new(),
            default_budget_ms: DEFAULT_LATENCY_BUDGET_MS,
            metrics_url: None,
            disagreements: 20,
            dataset: None,
        }
    }
}

/// Why the report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The spec reads nothing from provider documents.
    #[error("spec {0} has no documents section: there are no providers to report on")]
    NoProviders(String),
    /// A PostgreSQL query failed.
    #[error("PostgreSQL, reading {what}: {source}")]
    Postgres {
        /// What was being read.
        what: &'static str,
        /// The error.
        #[source]
        source: sqlx::Error,
    },
    /// A MongoDB read failed.
    #[error("MongoDB, reading {what}: {reason}")]
    Mongo {
        /// What was being read.
        what: &'static str,
        /// What the server or client said.
        reason: String,
    },
}

fn pg(what: &'static str) -> impl FnOnce(sqlx::Error) -> ReportError {
    move |source| ReportError::Postgres { what, source }
}

fn mongo(what: &'static str) -> impl FnOnce(mongodb::error::Error) -> ReportError {
    move |e| ReportError::Mongo {
        what,
        reason: e.to_string(),
    }
}

/// Makes the report of `spec`'s providers.
pub async fn gather(
    spec: &PipelineSpec,
    pool: &PgPool,
    db: &Database,
    options: &ReportOptions,
) -> Result<ProviderReport, ReportError> {
    let docs = spec
        .documents
        .as_ref()
        .ok_or_else(|| ReportError::NoProviders(spec.name.clone()))?;
    let now = Utc::now();
    let scan = scan_documents(spec, docs, db, options.disagreements).await?;
    let traffic = traffic_coverage(pool, docs, options).await?;
    let training = training_coverage(spec, docs, pool, db, options).await?;
    let freshness = freshness(pool, docs, &scan.by_delivery, now).await?;
    let api = api_performance(pool, docs, options).await?;
    let serving = serving(pool, options).await?;
    Ok(ProviderReport {
        generated_at: now,
        since: options.since,
        spec: spec.name.clone(),
        model: options.model.clone(),
        providers: docs.providers.clone(),
        coverage: Coverage { traffic, training },
        agreement: scan.agreement,
        disagreements: scan.worst.into_sorted(),
        freshness,
        api,
        serving,
    })
}

/// What one pass over the current documents yields.
struct Scan {
    agreement: Vec<PairAgreement>,
    worst: WorstNotes,
    /// Per provider: current documents per writing delivery (`None`: written without one).
    by_delivery: Vec<HashMap<Option<String>, u64>>,
}

/// The document features of the spec with their tolerances.
fn document_features(spec: &PipelineSpec) -> Vec<(&FeatureSpec, f64)> {
    spec.features
        .iter()
        .filter_map(|f| f.agreement_tolerance().map(|t| (f, t)))
        .collect()
}

/// The providers of each note compared pair by pair as the notes go by.
struct Comparison<'s> {
    spec: &'s PipelineSpec,
    /// The document features with their tolerances.
    features: Vec<(&'s FeatureSpec, f64)>,
    /// Every pair of provider indexes (a < b, the spec's order).
    pairs: Vec<(usize, usize)>,
    /// Per pair, what was found so far.
    agreement: Vec<PairAgreement>,
    worst: WorstNotes,
}

impl<'s> Comparison<'s> {
    fn new(spec: &'s PipelineSpec, providers: &[String], disagreements: usize) -> Self {
        let features = document_features(spec);
        let n = providers.len();
        let pairs: Vec<(usize, usize)> = (0..n)
            .flat_map(|a| (a + 1..n).map(move |b| (a, b)))
            .collect();
        let agreement = pairs
            .iter()
            .map(|&(a, b)| PairAgreement {
                providers: [providers[a].clone(), providers[b].clone()],
                notes_both: 0,
                features: Vec::new(),
                differences: vec![Vec::new(); features.len()],
            })
            .collect();
        Self {
            spec,
            features,
            pairs,
            agreement,
            worst: WorstNotes::new(disagreements),
        }
    }

    /// Compares one note's documents: (provider index, document).
    fn note(&mut self, note: &str, group: &[(usize, ProviderDoc)]) {
        if group.len() < 2 {
            return;
        }
        let of = |provider: usize| group.iter().find(|(p, _)| *p == provider).map(|(_, d)| d);
        for (pair, &(a, b)) in self.agreement.iter_mut().zip(&self.pairs) {
            let (Some(da), Some(db)) = (of(a), of(b)) else {
                continue;
            };
            pair.notes_both += 1;
            let mut most: Option<Disagreement> = None;
            for (i, (feature, tolerance)) in self.features.iter().enumerate() {
                let (Some(va), Some(vb)) = (
                    provider_value(self.spec, feature, da),
                    provider_value(self.spec, feature, db),
                ) else {
                    continue;
                };
                pair.differences[i].push(va - vb);
                let apart = (va - vb).abs() / tolerance.max(f64::EPSILON);
                if most.as_ref().is_none_or(|m| apart > m.tolerances_apart) {
                    most = Some(Disagreement {
                        note: note.to_owned(),
                        providers: pair.providers.clone(),
                        feature: feature.name.clone(),
                        values: [va, vb],
                        tolerances_apart: apart,
                    });
                }
            }
            if let Some(most) = most {
                self.worst.offer(most);
            }
        }
    }

    /// The summaries per pair and feature, and the notes that disagree most.
    fn finish(mut self) -> (Vec<PairAgreement>, WorstNotes) {
        for pair in &mut self.agreement {
            pair.features = self
                .features
                .iter()
                .zip(&pair.differences)
                .map(|((f, tolerance), signed)| FeatureAgreement {
                    feature: f.name.clone(),
                    summary: Differences {
                        signed: signed.clone(),
                    }
                    .summary(*tolerance),
                })
                .collect();
        }
        (self.agreement, self.worst)
    }
}

/// Reads every current document of the spec's providers once, in key order, comparing the
/// providers of each note as its documents go by.
async fn scan_documents(
    spec: &PipelineSpec,
    docs: &DocumentSpec,
    db: &Database,
    disagreements: usize,
) -> Result<Scan, ReportError> {
    let mut comparison = Comparison::new(spec, &docs.providers, disagreements);
    let mut by_delivery: Vec<HashMap<Option<String>, u64>> =
        vec![HashMap::new(); docs.providers.len()];
    let paths = spec.document_paths();
    let mut projection = doc! {"_id": 0, "_delivery": 1, docs.key_field.as_str(): 1, docs.provider_field.as_str(): 1};
    for p in &paths {
        projection.insert(p.as_str(), 1);
    }
    let mut cursor = db
        .collection::<RawDocumentBuf>(&docs.collection)
        .find(doc! {docs.provider_field.as_str(): {"$in": &docs.providers}})
        .projection(projection)
        .sort(doc! {docs.key_field.as_str(): 1, docs.provider_field.as_str(): 1})
        .batch_size(10_000)
        .await
        .map_err(mongo("the current provider documents"))?;
    let reader = FieldReader::new(docs, &paths);
    // The documents of the note being read: (provider index, document).
    let mut note = String::new();
    let mut group: Vec<(usize, ProviderDoc)> = Vec::with_capacity(docs.providers.len());
    while let Some(raw) = cursor
        .try_next()
        .await
        .map_err(mongo("the current provider documents"))?
    {
        let Some((key, doc)) = reader.read(&raw) else {
            continue;
        };
        let Some(provider) = docs.providers.iter().position(|p| doc.is_from(p)) else {
            continue;
        };
        let delivery = raw.get_str("_delivery").ok().map(str::to_owned);
        *by_delivery[provider].entry(delivery).or_default() += 1;
        if key != note {
            comparison.note(&note, &group);
            group.clear();
            key.clone_into(&mut note);
        }
        group.push((provider, doc));
    }
    comparison.note(&note, &group);
    let (agreement, worst) = comparison.finish();
    Ok(Scan {
        agreement,
        worst,
        by_delivery,
    })
}

/// Coverage of the traffic in the window, from the worker's per-provider coverage rows.
async fn traffic_coverage(
    pool: &PgPool,
    docs: &DocumentSpec,
    options: &ReportOptions,
) -> Result<CoverageShares, ReportError> {
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT provider, sum(hits)::int8, sum(misses)::int8 FROM enrichment_coverage \
         WHERE source = 'mongo' AND model_name = $1 AND minute >= date_trunc('minute', $2::timestamptz) \
         GROUP BY provider",
    )
    .bind(&options.model)
    .bind(options.since)
    .fetch_all(pool)
    .await
    .map_err(pg("the worker's enrichment coverage"))?;
    let row = |name: &str| rows.iter().find(|r| r.0 == name).map(|r| (r.1, r.2));
    let mut shares = CoverageShares::default();
    match row(crate::batch::ANY_PROVIDER) {
        Some((hits, misses)) if hits + misses > 0 => {
            shares.total = (hits + misses) as u64;
            shares.none = misses as u64;
            shares.note = format!(
                "records the worker enriched for model {} since {}",
                options.model,
                options.since.format("%Y-%m-%d %H:%M UTC")
            );
        }
        _ => {
            shares.note = format!(
                "no traffic recorded for model {} since {} (the worker records coverage when \
                 ML_PIPELINE_AGGREGATES is on)",
                options.model,
                options.since.format("%Y-%m-%d %H:%M UTC")
            );
        }
    }
    for p in &docs.providers {
        let hits = row(p).map_or(0, |r| r.0) as u64;
        shares.per_provider.insert(p.clone(), hits);
    }
    Ok(shares)
}

/// Coverage of the training data's notes, looked up now with the worker's own lookup. A
/// training example's note is its request's key column when it keeps its request, else its
/// example id (the fixture loader names examples by their note).
async fn training_coverage(
    spec: &PipelineSpec,
    docs: &DocumentSpec,
    pool: &PgPool,
    db: &Database,
    options: &ReportOptions,
) -> Result<CoverageShares, ReportError> {
    let notes: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT COALESCE(request->>$1, example_id) FROM training_examples \
         WHERE $2::text IS NULL OR dataset = $2",
    )
    .bind(&docs.key_from)
    .bind(&options.dataset)
    .fetch_all(pool)
    .await
    .map_err(pg("the training data's notes"))?;
    let mut shares = CoverageShares {
        total: notes.len() as u64,
        per_provider: docs.providers.iter().map(|p| (p.clone(), 0)).collect(),
        ..CoverageShares::default()
    };
    shares.note = match (&options.dataset, notes.is_empty()) {
        (_, true) => "no training examples".to_owned(),
        (Some(d), false) => format!("distinct notes of training dataset {d}"),
        (None, false) => "distinct notes of every training dataset".to_owned(),
    };
    let source = MongoDocuments::new(db.clone()).with_limits(LookupLimits {
        timeout: LOOKUP_TIMEOUT,
        chunk_keys: LOOKUP_CHUNK_KEYS,
        ..LookupLimits::default()
    });
    let paths = spec.document_paths();
    for chunk in notes.chunks(LOOKUP_CHUNK_KEYS) {
        let found = source
            .fetch(docs, &paths, chunk)
            .await
            .map_err(|e| ReportError::Mongo {
                what: "the training data's documents",
                reason: e.to_string(),
            })?;
        for place in 0..chunk.len() as u32 {
            let can: Vec<&str> = found
                .of(place)
                .iter()
                .filter(|d| provider_can_enrich(spec, d))
                .map(|d| &*d.provider)
                .collect();
            if can.is_empty() {
                shares.none += 1;
            }
            for p in can {
                if let Some(n) = shares.per_provider.get_mut(p) {
                    *n += 1;
                }
            }
        }
    }
    Ok(shares)
}

/// The age of each provider's last delivery and of its current documents.
async fn freshness(
    pool: &PgPool,
    docs: &DocumentSpec,
    by_delivery: &[HashMap<Option<String>, u64>],
    now: DateTime<Utc>,
) -> Result<Vec<Freshness>, ReportError> {
    let last: Vec<(String, String, DateTime<Utc>, String)> = sqlx::query_as(
        "SELECT DISTINCT ON (provider) provider, delivery_id, finished_at, status \
         FROM provider_deliveries \
         WHERE provider = ANY($1) AND status IN ('succeeded', 'unchanged') AND finished_at IS NOT NULL \
         ORDER BY provider, finished_at DESC",
    )
    .bind(&docs.providers)
    .fetch_all(pool)
    .await
    .map_err(pg("the last deliveries"))?;
    let attempts: Vec<(String, String, String, Option<String>)> = sqlx::query_as(
        "SELECT DISTINCT ON (provider) provider, delivery_id, status, error \
         FROM provider_deliveries WHERE provider = ANY($1) ORDER BY provider, started_at DESC",
    )
    .bind(&docs.providers)
    .fetch_all(pool)
    .await
    .map_err(pg("the last delivery attempts"))?;
    let ids: Vec<String> = by_delivery
        .iter()
        .flat_map(|m| m.keys().flatten().cloned())
        .collect();
    let finished: HashMap<String, DateTime<Utc>> = sqlx::query_as(
        "SELECT delivery_id, finished_at FROM provider_deliveries \
         WHERE delivery_id = ANY($1) AND finished_at IS NOT NULL",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await
    .map_err(pg("the documents' deliveries"))?
    .into_iter()
    .collect();
    let hours = |at: DateTime<Utc>| (now - at).num_milliseconds() as f64 / 3.6e6;
    Ok(docs
        .providers
        .iter()
        .zip(by_delivery)
        .map(|(provider, counts)| {
            // (age in hours, documents), oldest first.
            let mut ages: Vec<(f64, u64)> = counts
                .iter()
                .filter_map(|(d, n)| Some((hours(*finished.get(d.as_ref()?)?), *n)))
                .collect();
            ages.sort_by(|a, b| b.0.total_cmp(&a.0));
            let dated: u64 = ages.iter().map(|a| a.1).sum();
            Freshness {
                provider: provider.clone(),
                last_delivery: last.iter().find(|l| l.0 == *provider).map(|l| DeliveryAge {
                    delivery_id: l.1.clone(),
                    finished_at: l.2,
                    age_hours: hours(l.2),
                    status: l.3.clone(),
                }),
                last_attempt_problem: attempts
                    .iter()
                    .find(|a| a.0 == *provider && (a.2 == "failed" || a.2 == "running"))
                    .map(|a| match &a.3 {
                        Some(error) => format!("delivery {} {}: {error}", a.1, a.2),
                        None => format!("delivery {} is {}", a.1, a.2),
                    }),
                documents: counts.values().sum(),
                documents_dated: dated,
                median_document_age_hours: weighted_median(&ages, dated),
                oldest_document_age_hours: ages.first().map(|a| a.0),
            }
        })
        .collect())
}

/// The median of values given with their counts (`total` of them), sorted either way.
fn weighted_median(values: &[(f64, u64)], total: u64) -> Option<f64> {
    let half = total.div_ceil(2);
    let mut seen = 0;
    values.iter().find_map(|&(v, n)| {
        seen += n;
        (seen >= half && total > 0).then_some(v)
    })
}

/// Latency percentiles and error rate of each provider's recorded API requests.
async fn api_performance(
    pool: &PgPool,
    docs: &DocumentSpec,
    options: &ReportOptions,
) -> Result<Vec<ApiPerformance>, ReportError> {
    let rows: Vec<(String, i64, i64, f64, f64, f64)> = sqlx::query_as(
        "SELECT provider, count(*)::int8, count(*) FILTER (WHERE outcome <> 'ok')::int8, \
           percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms), \
           percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms), \
           percentile_cont(0.99) WITHIN GROUP (ORDER BY latency_ms) \
         FROM provider_requests WHERE provider = ANY($1) AND started_at >= $2 \
         GROUP BY provider ORDER BY provider",
    )
    .bind(&docs.providers)
    .bind(options.since)
    .fetch_all(pool)
    .await
    .map_err(pg("the providers' API requests"))?;
    Ok(rows
        .into_iter()
        .map(|(provider, requests, errors, p50, p95, p99)| {
            let budget = options
                .latency_budgets
                .get(&provider)
                .copied()
                .unwrap_or(options.default_budget_ms);
            ApiPerformance {
                provider,
                requests: requests as u64,
                errors: errors as u64,
                error_rate: errors as f64 / (requests.max(1)) as f64,
                p50_ms: p50,
                p95_ms: p95,
                p99_ms: p99,
                budget_ms: budget,
                within_budget: p95 <= budget,
            }
        })
        .collect())
}

/// The worker's enrichment latency and the predictions in the window.
async fn serving(pool: &PgPool, options: &ReportOptions) -> Result<Serving, ReportError> {
    let predictions = sqlx::query_as::<_, (String, String, i64, f64)>(
        "SELECT issuer_code, label, sum(predictions)::int8, (sum(score_sum) / sum(predictions))::float8 \
         FROM prediction_aggregates WHERE model_name = $1 AND minute >= date_trunc('minute', $2::timestamptz) \
         GROUP BY issuer_code, label ORDER BY 3 DESC, 1, 2 LIMIT $3",
    )
    .bind(&options.model)
    .bind(options.since)
    .bind(PREDICTION_GROUPS)
    .fetch_all(pool)
    .await
    .map_err(pg("the prediction aggregates"))?
    .into_iter()
    .map(|(issuer, label, n, mean)| PredictionGroup {
        issuer,
        label,
        predictions: n as u64,
        mean_score: mean,
    })
    .collect();
    let (enrichment_latency, enrichment_latency_note) = match &options.metrics_url {
        None => (
            Vec::new(),
            Some("no worker asked (give --metrics-url http://WORKER:9090/metrics)".to_owned()),
        ),
        Some(url) => match scrape(url).await {
            Ok(stages) if stages.is_empty() => (
                Vec::new(),
                Some(format!("{url} has no enrichment batches yet")),
            ),
            Ok(stages) => (stages, None),
            Err(e) => (Vec::new(), Some(format!("{url}: {e:#}"))),
        },
    };
    Ok(Serving {
        enrichment_latency,
        enrichment_latency_note,
        predictions,
    })
}

/// The enrichment stages' latency histograms from a worker's `/metrics`.
async fn scrape(url: &str) -> anyhow::Result<Vec<StageLatency>> {
    let reply = crate::http::request("GET", url, None, METRICS_TIMEOUT).await?;
    anyhow::ensure!(
        reply.status == 200,
        "answered HTTP {} instead of its metrics",
        reply.status
    );
    Ok(ENRICH_STAGES
        .iter()
        .filter_map(|stage| {
            let h = Histogram::parse(
                &reply.body,
                crate::instruments::STAGE_SECONDS,
                ("stage", stage),
            )?;
            let ms = |q| h.quantile(q).map(|s| s * 1e3);
            Some(StageLatency {
                stage: (*stage).to_owned(),
                batches: h.count() as u64,
                p50_ms: ms(0.5)?,
                p95_ms: ms(0.95)?,
                p99_ms: ms(0.99)?,
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_weighted_median_counts_documents() {
        // 3 documents 10 h old, 1 document 2 h old.
        assert_eq!(weighted_median(&[(10.0, 3), (2.0, 1)], 4), Some(10.0));
        assert_eq!(weighted_median(&[(10.0, 1), (2.0, 3)], 4), Some(2.0));
        assert_eq!(weighted_median(&[], 0), None);
    }
}
