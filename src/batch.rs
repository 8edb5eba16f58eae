//! Batch: the records of every bundle in hand become one canonical feature matrix, and the
//! model's decision values are split back into one answer per bundle.
//!
//! [`prepare`] standardizes each record, asks each enrichment source once for the whole batch,
//! and normalizes the records that survived into the matrix rows. Records that failed a stage
//! leave the matrix and keep their error. Training calls the same [`prepare`], so the model is
//! fitted on exactly the features the worker will build.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use ndarray::Array2;
use smallvec::SmallVec;

use crate::bundle::{
    Answer, CellRef, DecodeError, InputBundle, OutputBundle, OutputRow, SeedAnswer,
};
use crate::enrich::{DocumentSource, Enricher, Enrichment, ReferenceSource, SourceError};
use crate::model::class_name;
use crate::normalize::Normalizer;
use crate::record::RecordError;
use crate::spec::{PipelineSpec, Road};
use crate::standardize::{cell_description, ColumnIndex, RecordIndex, StandardBatch};

/// What became of one record of a bundle.
#[derive(Debug, Clone, PartialEq)]
pub enum Slot {
    /// It reached the model as this matrix row.
    Row {
        /// The record's matrix row.
        matrix_row: usize,
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
    /// Reported lookup values (e.g. the issuer code), `reported_columns` per matrix row.
    pub reported: Vec<Arc<str>>,
    /// How many reported values each matrix row has.
    pub reported_columns: usize,
    /// PostgreSQL coverage.
    pub postgres: Coverage,
    /// MongoDB coverage.
    pub mongo: Coverage,
    /// Milliseconds per stage: standardize, enrich (both sources, concurrently),
    /// enrich.postgres, enrich.mongo, normalize.
    pub timing_ms: BTreeMap<String, f64>,
}

impl PreparedBatch {
    /// The reported lookup values of a matrix row, in spec order.
    pub fn reported(&self, matrix_row: usize) -> &[Arc<str>] {
        let n = self.reported_columns;
        &self.reported[matrix_row * n..(matrix_row + 1) * n]
    }
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
    let mut standard = StandardBatch::new(spec);
    let staged: Vec<Result<Staged, DecodeError>> = bundles
        .iter()
        .map(|b| stage_bundle(spec, b, &mut standard))
        .collect();
    let t_standardize = ms_since(started);

    let started = Instant::now();
    let (enrichment, t_postgres, t_mongo) = enrich(spec, &standard, enricher).await?;
    let t_enrich = ms_since(started);

    let started = Instant::now();
    let mut out = Assembly::new(spec, &standard, &enrichment, bundles);
    let plans = staged
        .into_iter()
        .zip(bundles)
        .map(|(s, bundle)| s.map(|s| out.plan(s, bundle)))
        .collect();
    let Assembly {
        cells,
        rows,
        reported,
        reported_columns,
        postgres,
        mongo,
        ..
    } = out;
    debug_assert_eq!(reported.len(), rows * reported_columns);
    let matrix =
        Array2::from_shape_vec((rows, spec.features.len()), cells).expect("rows x features cells");
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
        reported,
        reported_columns,
        postgres,
        mongo,
        timing_ms,
    })
}

/// Normalization of a batch's records into the matrix, with coverage and reported values.
struct Assembly<'a, 'e> {
    standard: &'a StandardBatch<'a>,
    normalizer: Normalizer<'e>,
    /// Per lookup key id, per reported lookup: the value as shared text (made once per key).
    reported_values: Vec<Vec<Arc<str>>>,
    /// Per document key id: whether any provider had a document.
    doc_found: Vec<bool>,
    n_features: usize,
    cells: Vec<f64>,
    rows: usize,
    reported: Vec<Arc<str>>,
    reported_columns: usize,
    /// The reported value of rows that have none (seed rows).
    no_value: Arc<str>,
    postgres: Coverage,
    mongo: Coverage,
}

impl<'a, 'e> Assembly<'a, 'e> {
    fn new(
        spec: &PipelineSpec,
        standard: &'a StandardBatch<'a>,
        enrichment: &'e Enrichment,
        bundles: &[InputBundle],
    ) -> Self {
        let normalizer = Normalizer::new(spec, standard, enrichment);
        let reported_lookups: Vec<usize> = normalizer.reported_lookups().collect();
        let reported_values = reported_lookups
            .iter()
            .map(|&l| {
                (0..standard.lookups[l].keys().len() as u32)
                    .map(|key| Arc::from(normalizer.lookup_value(l, key).unwrap_or_default()))
                    .collect()
            })
            .collect();
        let doc_found = standard
            .documents
            .as_ref()
            .map(|t| {
                t.keys()
                    .iter()
                    .map(|k| enrichment.documents.contains_key(k))
                    .collect()
            })
            .unwrap_or_default();
        let n_features = spec.features.len();
        let total: usize = bundles.iter().map(InputBundle::len).sum();
        Self {
            standard,
            normalizer,
            reported_values,
            doc_found,
            n_features,
            cells: Vec::with_capacity(total * n_features),
            rows: 0,
            reported: Vec::with_capacity(total * reported_lookups.len()),
            reported_columns: reported_lookups.len(),
            no_value: Arc::from(""),
            postgres: Coverage::default(),
            mongo: Coverage::default(),
        }
    }

    fn plan(&mut self, staged: Staged, bundle: &InputBundle) -> BundlePlan {
        let slots = staged
            .records
            .into_iter()
            .map(|rec| match rec {
                Input::Seed(i) => {
                    let InputBundle::Seed(seed) = bundle else {
                        unreachable!("seed records come from seed bundles")
                    };
                    self.cells.extend_from_slice(&seed.features[i]);
                    // Seed rows report nothing; keep one entry per reported column anyway.
                    for _ in 0..self.reported_columns {
                        self.reported.push(Arc::clone(&self.no_value));
                    }
                    self.next_row()
                }
                Input::Request(Err(e)) => Slot::Failed(e),
                Input::Request(Ok(r)) => self.request(r),
            })
            .collect();
        BundlePlan {
            ids: staged.ids,
            slots,
        }
    }

    fn request(&mut self, r: RecordIndex) -> Slot {
        let rec = self.standard.record(r);
        self.count_coverage(&rec);
        let start = self.cells.len();
        self.cells.resize(start + self.n_features, 0.0);
        match self.normalizer.normalize(&rec, &mut self.cells[start..]) {
            Ok(()) => {
                for (values, lookup) in self
                    .reported_values
                    .iter()
                    .zip(self.normalizer.reported_lookups())
                {
                    self.reported
                        .push(values[rec.lookup_keys[lookup] as usize].clone());
                }
                self.next_row()
            }
            Err(e) => {
                self.cells.truncate(start);
                Slot::Failed(e)
            }
        }
    }

    fn next_row(&mut self) -> Slot {
        self.rows += 1;
        Slot::Row {
            matrix_row: self.rows - 1,
        }
    }

    fn count_coverage(&mut self, rec: &crate::standardize::StandardRecord<'_>) {
        if !rec.lookup_keys.is_empty() {
            if self.normalizer.all_lookups_found(rec) {
                self.postgres.hits += 1
            } else {
                self.postgres.misses += 1
            }
        }
        if let Some(key) = rec.doc_key {
            if self.doc_found[key as usize] {
                self.mongo.hits += 1
            } else {
                self.mongo.misses += 1
            }
        }
    }
}

/// The answers of a predicted batch, one per input bundle, in input order.
pub fn answers(
    spec: &PipelineSpec,
    bundles: &[InputBundle],
    mut prepared: PreparedBatch,
    scores: &[f64],
    model_version: &str,
    timing_ms: &BTreeMap<String, f64>,
) -> Vec<Result<Answer, DecodeError>> {
    let mut columns: Vec<String> = ["id", "label", "score"].map(String::from).to_vec();
    columns.extend(spec.lookups.iter().filter_map(|l| l.output_column.clone()));
    // The plans are consumed: record ids move into the answers.
    let plans = std::mem::take(&mut prepared.plans);
    let reported = |row: usize| {
        prepared
            .reported(row)
            .iter()
            .cloned()
            .collect::<SmallVec<_>>()
    };
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
                            Slot::Row { matrix_row } => class_name(scores[*matrix_row]).to_owned(),
                            Slot::Failed(_) => unreachable!("seed records cannot fail"),
                        })
                        .collect(),
                }),
                InputBundle::Request(req) => {
                    let mut rows = Vec::with_capacity(plan.ids.len());
                    let mut errors = Vec::new();
                    for (id, slot) in plan.ids.into_iter().zip(plan.slots) {
                        match slot {
                            Slot::Row { matrix_row } => {
                                let score = scores[matrix_row];
                                rows.push(OutputRow {
                                    id,
                                    label: class_name(score).into(),
                                    score,
                                    reported: reported(matrix_row),
                                });
                            }
                            Slot::Failed(e) => errors.push((id, e.to_string())),
                        }
                    }
                    Answer::Request(OutputBundle {
                        bundle_id: req.bundle_id.clone(),
                        model: spec.name.clone(),
                        model_version: model_version.to_owned(),
                        columns: columns.clone(),
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
    Request(Result<RecordIndex, RecordError>),
    /// A seed bundle's feature vector, by index.
    Seed(usize),
}

struct Staged {
    ids: Vec<String>,
    records: Vec<Input>,
}

fn stage_bundle<'b>(
    spec: &PipelineSpec,
    bundle: &'b InputBundle,
    standard: &mut StandardBatch<'b>,
) -> Result<Staged, DecodeError> {
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
            Ok(Staged {
                ids: seed
                    .subjects
                    .iter()
                    .map(|s| s.as_str().map_or_else(|| s.to_string(), str::to_owned))
                    .collect(),
                records: (0..seed.features.len()).map(Input::Seed).collect(),
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
            let mut ids = Vec::with_capacity(req.rows.len());
            let mut records = Vec::with_capacity(req.rows.len());
            for (i, row) in req.rows.iter().enumerate() {
                let id = row.get(index.id);
                ids.push(record_id(id).ok_or_else(|| {
                    refuse(format!(
                        "row {i} has no usable id ({}); every row needs a text or integer id",
                        cell_description(id)
                    ))
                })?);
                records.push(Input::Request(standard.standardize_row(&index, row)));
            }
            Ok(Staged { ids, records })
        }
    }
}

fn record_id(cell: CellRef<'_>) -> Option<String> {
    match cell {
        CellRef::Text(s) if !s.is_empty() => Some(s.to_owned()),
        CellRef::Int(n) => Some(n.to_string()),
        CellRef::UInt(n) => Some(n.to_string()),
        _ => None,
    }
}

/// One round trip per source: every distinct key of the batch at once, both sources together.
async fn enrich<R: ReferenceSource, D: DocumentSource>(
    spec: &PipelineSpec,
    standard: &StandardBatch<'_>,
    enricher: &Enricher<R, D>,
) -> Result<Enriched, SourceError> {
    let lookup_keys: Vec<&[String]> = standard.lookups.iter().map(|t| t.keys()).collect();
    let doc_keys: &[String] = standard
        .documents
        .as_ref()
        .map(|t| t.keys())
        .unwrap_or_default();
    let paths = document_paths(spec);
    let reference = async {
        let started = Instant::now();
        let found = if lookup_keys.iter().all(|k| k.is_empty()) {
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
                enricher.documents.fetch(docs, &paths, doc_keys).await?
            }
            _ => Default::default(),
        };
        Ok((found, ms_since(started)))
    };
    let ((lookups, t_postgres), (documents, t_mongo)) = tokio::try_join!(reference, documents)?;
    Ok((Enrichment { lookups, documents }, t_postgres, t_mongo))
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

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}
