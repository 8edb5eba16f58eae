//! Batch: the records of every bundle in hand become one canonical feature matrix, and the
//! model's decision values are split back into one answer per bundle.
//!
//! [`prepare`] standardizes each record, asks each enrichment source once for the whole batch,
//! and normalizes the records that survived into the matrix rows. Records that failed a stage
//! leave the matrix and keep their error. Training calls the same [`prepare`], so the model is
//! fitted on exactly the features the worker will build.

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use ndarray::Array2;
use serde_json::Value;

use crate::bundle::{Answer, DecodeError, InputBundle, OutputBundle, SeedAnswer};
use crate::enrich::{DocumentSource, Enricher, Enrichment, ReferenceSource, SourceError};
use crate::model::class_name;
use crate::record::RecordError;
use crate::spec::{PipelineSpec, Road};
use crate::standardize::{describe, standardize_row, ColumnIndex, StandardRecord};

/// What became of one record of a bundle.
#[derive(Debug, Clone, PartialEq)]
pub enum Slot {
    /// It reached the model as this matrix row, with its reported lookup values.
    Row {
        /// The record's matrix row.
        matrix_row: usize,
        /// Reported lookup values (e.g. the issuer code), in spec order.
        reported: Vec<String>,
    },
    /// It failed a stage.
    Failed(RecordError),
}

/// One bundle's records, mapped to matrix rows or errors.
#[derive(Debug, Clone, PartialEq)]
pub struct BundlePlan {
    /// The record ids, in row order.
    pub ids: Vec<String>,
    /// The outcome of each record, in row order.
    pub slots: Vec<Slot>,
}

/// Hits and misses of one enrichment source over a batch, counted per record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Coverage {
    /// Records the source had data for.
    pub hits: u64,
    /// Records it had no data for.
    pub misses: u64,
}

/// A batch ready for the model.
#[derive(Debug)]
pub struct PreparedBatch {
    /// Canonical features (before scaling), one row per record that reached the model.
    pub matrix: Array2<f64>,
    /// Per input bundle: its plan, or why the whole bundle is refused.
    pub plans: Vec<Result<BundlePlan, DecodeError>>,
    /// PostgreSQL coverage.
    pub postgres: Coverage,
    /// MongoDB coverage.
    pub mongo: Coverage,
    /// Milliseconds per stage: standardize, enrich (both sources, concurrently),
    /// enrich.postgres, enrich.mongo, normalize.
    pub timing_ms: BTreeMap<String, f64>,
}

/// Enrichment, and the milliseconds each source took (they run concurrently).
type Enriched = (Enrichment, f64, f64);

/// Standardizes, enriches and normalizes a batch of bundles into one matrix.
/// Fails only when a source is unavailable: then nothing is answered and the batch is retried.
pub async fn prepare<R: ReferenceSource, D: DocumentSource>(
    spec: &PipelineSpec,
    bundles: &[InputBundle],
    enricher: &Enricher<R, D>,
) -> Result<PreparedBatch, SourceError> {
    let started = Instant::now();
    let standardized: Vec<Result<Standardized, DecodeError>> = bundles
        .iter()
        .map(|b| standardize_bundle(spec, b))
        .collect();
    let t_standardize = ms_since(started);

    let started = Instant::now();
    let (enrichment, t_postgres, t_mongo) = enrich(spec, &standardized, enricher).await?;
    let t_enrich = ms_since(started);

    let started = Instant::now();
    let n_features = spec.features.len();
    let total: usize = bundles.iter().map(InputBundle::len).sum();
    let mut cells = Vec::with_capacity(total * n_features);
    let mut postgres = Coverage::default();
    let mut mongo = Coverage::default();
    let mut rows = 0;
    let plans = standardized
        .into_iter()
        .map(|s| {
            s.map(|s| {
                let slots = s
                    .records
                    .into_iter()
                    .map(|rec| {
                        let rec = match rec {
                            Input::Seed(features) => {
                                cells.extend_from_slice(&features);
                                rows += 1;
                                return Slot::Row {
                                    matrix_row: rows - 1,
                                    reported: Vec::new(),
                                };
                            }
                            Input::Request(Err(e)) => return Slot::Failed(e),
                            Input::Request(Ok(rec)) => rec,
                        };
                        count_coverage(spec, &rec, &enrichment, &mut postgres, &mut mongo);
                        let start = cells.len();
                        cells.resize(start + n_features, 0.0);
                        match crate::normalize::normalize_record(
                            spec,
                            &rec,
                            &enrichment,
                            &mut cells[start..],
                        ) {
                            Ok(reported) => {
                                rows += 1;
                                Slot::Row {
                                    matrix_row: rows - 1,
                                    reported,
                                }
                            }
                            Err(e) => {
                                cells.truncate(start);
                                Slot::Failed(e)
                            }
                        }
                    })
                    .collect();
                BundlePlan { ids: s.ids, slots }
            })
        })
        .collect();
    let matrix = Array2::from_shape_vec((rows, n_features), cells).expect("rows x features cells");
    let timing_ms = BTreeMap::from([
        ("standardize".to_owned(), t_standardize),
        ("enrich".to_owned(), t_enrich),
        ("enrich.postgres".to_owned(), t_postgres),
        ("enrich.mongo".to_owned(), t_mongo),
        ("normalize".to_owned(), ms_since(started)),
    ]);
    Ok(PreparedBatch {
        matrix,
        plans,
        postgres,
        mongo,
        timing_ms,
    })
}

/// The answers of a predicted batch, one per input bundle, in input order.
pub fn answers(
    spec: &PipelineSpec,
    bundles: &[InputBundle],
    plans: Vec<Result<BundlePlan, DecodeError>>,
    scores: &[f64],
    model_version: &str,
    timing_ms: &BTreeMap<String, f64>,
) -> Vec<Result<Answer, DecodeError>> {
    let reported_columns: Vec<String> = spec
        .lookups
        .iter()
        .filter_map(|l| l.output_column.clone())
        .collect();
    bundles
        .iter()
        .zip(plans)
        .map(|(bundle, plan)| {
            let plan = plan?;
            Ok(match bundle {
                InputBundle::Seed(seed) => Answer::Seed(SeedAnswer {
                    batch_id: seed.batch_id.clone(),
                    subjects: seed.subjects.clone(),
                    input: seed.features.clone(),
                    output: plan
                        .slots
                        .iter()
                        .map(|s| match s {
                            Slot::Row { matrix_row, .. } => {
                                class_name(scores[*matrix_row]).to_owned()
                            }
                            Slot::Failed(_) => unreachable!("seed records cannot fail"),
                        })
                        .collect(),
                }),
                InputBundle::Request(req) => {
                    let mut rows = Vec::with_capacity(plan.ids.len());
                    let mut errors = Vec::new();
                    for (id, slot) in plan.ids.into_iter().zip(plan.slots) {
                        match slot {
                            Slot::Row {
                                matrix_row,
                                reported,
                            } => {
                                let score = scores[matrix_row];
                                let mut row = vec![
                                    Value::from(id),
                                    Value::from(class_name(score)),
                                    Value::from(score),
                                ];
                                row.extend(reported.into_iter().map(Value::from));
                                rows.push(row);
                            }
                            Slot::Failed(e) => errors.push((id, e.to_string())),
                        }
                    }
                    let mut columns: Vec<String> =
                        ["id", "label", "score"].map(String::from).to_vec();
                    columns.extend(reported_columns.iter().cloned());
                    Answer::Request(OutputBundle {
                        bundle_id: req.bundle_id.clone(),
                        model: spec.name.clone(),
                        model_version: model_version.to_owned(),
                        columns,
                        rows,
                        errors,
                        timing_ms: timing_ms.clone(),
                    })
                }
            })
        })
        .collect()
}

/// One record's input to normalization.
enum Input {
    Request(Result<StandardRecord, RecordError>),
    Seed(Vec<f64>),
}

struct Standardized {
    ids: Vec<String>,
    records: Vec<Input>,
}

fn standardize_bundle(
    spec: &PipelineSpec,
    bundle: &InputBundle,
) -> Result<Standardized, DecodeError> {
    let refuse = |reason: String| DecodeError {
        bundle_id: Some(bundle.id().to_owned()),
        reason,
    };
    match bundle {
        InputBundle::Seed(seed) => {
            let n = spec.features.len();
            if let Some(row) = seed.features.iter().find(|r| r.len() != n) {
                return Err(refuse(format!(
                    "seed feature vectors have {} values; model {} takes {n} features ({})",
                    row.len(),
                    spec.name,
                    spec.feature_names().join(", ")
                )));
            }
            Ok(Standardized {
                ids: seed
                    .subjects
                    .iter()
                    .map(|s| s.as_str().map_or_else(|| s.to_string(), str::to_owned))
                    .collect(),
                records: seed
                    .features
                    .iter()
                    .map(|f| Input::Seed(f.clone()))
                    .collect(),
            })
        }
        InputBundle::Request(req) => {
            if let Some(model) = req.model.as_deref().filter(|m| *m != spec.name) {
                return Err(refuse(format!(
                    "model '{model}' is not served by this worker (it serves {})",
                    spec.name
                )));
            }
            let index = ColumnIndex::new(spec, &req.columns).map_err(refuse)?;
            let id_col = req
                .columns
                .iter()
                .position(|c| *c == spec.id_column)
                .expect("ColumnIndex checked the id");
            let ids = req
                .rows
                .iter()
                .enumerate()
                .map(|(i, row)| {
                    record_id(&row[id_col]).ok_or_else(|| {
                        refuse(format!(
                            "row {i} has no usable id ({}); every row needs a text or integer id",
                            describe(&row[id_col])
                        ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let records = req
                .rows
                .iter()
                .map(|row| Input::Request(standardize_row(spec, &index, row)))
                .collect();
            Ok(Standardized { ids, records })
        }
    }
}

fn record_id(cell: &Value) -> Option<String> {
    match cell {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

/// One round trip per source: every distinct key of the batch at once, both sources together.
async fn enrich<R: ReferenceSource, D: DocumentSource>(
    spec: &PipelineSpec,
    standardized: &[Result<Standardized, DecodeError>],
    enricher: &Enricher<R, D>,
) -> Result<Enriched, SourceError> {
    let records = || {
        standardized
            .iter()
            .flatten()
            .flat_map(|s| &s.records)
            .filter_map(|r| match r {
                Input::Request(Ok(rec)) => Some(rec),
                _ => None,
            })
    };
    let lookup_keys: Vec<Vec<String>> = (0..spec.lookups.len())
        .map(|i| distinct(records().map(|r| r.lookup_keys[i].as_str())))
        .collect();
    let doc_keys = distinct(records().filter_map(|r| r.doc_key.as_deref()));
    let paths = document_paths(spec);
    let reference = async {
        let started = Instant::now();
        let found = if lookup_keys.iter().all(Vec::is_empty) {
            vec![Default::default(); spec.lookups.len()]
        } else {
            enricher
                .reference
                .fetch(&spec.lookups, &lookup_keys)
                .await?
        };
        Ok::<_, SourceError>((found, ms_since(started)))
    };
    let documents = async {
        let started = Instant::now();
        let found = match &spec.documents {
            Some(docs) if !doc_keys.is_empty() => {
                enricher.documents.fetch(docs, &paths, &doc_keys).await?
            }
            _ => Default::default(),
        };
        Ok((found, ms_since(started)))
    };
    let ((lookups, t_postgres), (documents, t_mongo)) = tokio::try_join!(reference, documents)?;
    Ok((Enrichment { lookups, documents }, t_postgres, t_mongo))
}

fn distinct<'a>(keys: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut seen = HashSet::new();
    keys.filter(|k| seen.insert(*k))
        .map(str::to_owned)
        .collect()
}

/// Every document field path the spec's features read.
pub fn document_paths(spec: &PipelineSpec) -> Vec<String> {
    let mut paths: Vec<String> = spec
        .features
        .iter()
        .filter_map(|f| match &f.road {
            Road::Document { providers } => Some(providers.values().map(|p| p.path.clone())),
            _ => None,
        })
        .flatten()
        .collect();
    paths.sort();
    paths.dedup();
    paths
}

fn count_coverage(
    spec: &PipelineSpec,
    rec: &StandardRecord,
    e: &Enrichment,
    pg: &mut Coverage,
    mongo: &mut Coverage,
) {
    if !spec.lookups.is_empty() {
        let found = rec
            .lookup_keys
            .iter()
            .enumerate()
            .all(|(i, k)| e.lookups.get(i).is_some_and(|m| m.contains_key(k)));
        if found {
            pg.hits += 1
        } else {
            pg.misses += 1
        }
    }
    if let Some(key) = &rec.doc_key {
        if e.documents.contains_key(key) {
            mongo.hits += 1
        } else {
            mongo.misses += 1
        }
    }
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}
