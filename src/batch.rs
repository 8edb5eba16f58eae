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

use crate::bundle::decode::DecodeError;
use crate::bundle::message::InputBundle;
use crate::bundle::validate::{validate, Validated};
use crate::enrich::{DocumentSource, Enricher, Enrichment, ReferenceSource};
use crate::normalize::Normalizer;
use crate::record::{RecordError, RecordErrorKind};
use crate::spec::PipelineSpec;
use crate::standardize::{RecordIndex, StandardBatch};

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

/// What each enrichment source and provider could serve over a batch, counted per record.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchCoverage {
    /// PostgreSQL: records whose every lookup was found.
    pub postgres: Coverage,
    /// MongoDB: records some provider had a document for.
    pub mongo: Coverage,
    /// Per provider, in the spec's order of preference: records whose note that provider's
    /// document alone could enrich (every document feature a finite number). Keys MongoDB did
    /// not answer for (down, or refused the key) are not counted.
    pub providers: Vec<(String, Coverage)>,
    /// Records whose note some provider can enrich (hits) or none can (misses), counted like
    /// `providers`.
    pub any_provider: Coverage,
}

/// The provider name of the `any_provider` coverage in the `enrichment_coverage` table.
pub const ANY_PROVIDER: &str = "*";

impl Coverage {
    /// Counts one record: a hit or a miss.
    pub fn count(&mut self, hit: bool) {
        if hit {
            self.hits += 1
        } else {
            self.misses += 1
        }
    }
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
    /// What each source and provider could serve.
    pub coverage: BatchCoverage,
    /// Milliseconds per stage: standardize, enrich (both sources, concurrently),
    /// enrich.postgres, enrich.mongo, normalize.
    pub timing_ms: BTreeMap<String, f64>,
    /// Each source that was down, with what its client reported; the records that needed it
    /// failed with [`RecordErrorKind::SourceUnavailable`].
    pub outages: Vec<(&'static str, String)>,
}

impl PreparedBatch {
    /// Per bundle: whether one of its records waits for a source that was down. Such a bundle
    /// is held and tried again, never answered in part.
    pub fn waiting(&self) -> Vec<bool> {
        self.plans
            .iter()
            .map(|plan| {
                plan.as_ref().is_ok_and(|plan| {
                    plan.slots.iter().any(|slot| {
                        matches!(slot, Slot::Failed(e) if matches!(e.kind, RecordErrorKind::SourceUnavailable { .. }))
                    })
                })
            })
            .collect()
    }

    /// The first source that was down (`postgres` or `mongo`) and what its client reported.
    pub fn outage(&self) -> Option<(&'static str, String)> {
        self.outages.first().cloned()
    }

    /// The reported lookup values of a matrix row, in spec order.
    pub fn reported(&self, matrix_row: usize) -> &[Arc<str>] {
        let n = self.reported_columns;
        &self.reported[matrix_row * n..(matrix_row + 1) * n]
    }
}

/// Standardizes, enriches and normalizes a batch of bundles into one matrix. A source that is
/// down fails only the records that need it, with [`RecordErrorKind::SourceUnavailable`]
/// (see [`PreparedBatch::waiting`]).
pub async fn prepare<R: ReferenceSource, D: DocumentSource>(
    spec: &PipelineSpec,
    bundles: &[InputBundle],
    enricher: &Enricher<R, D>,
) -> PreparedBatch {
    let started = Instant::now();
    let records = bundles.iter().map(InputBundle::len).sum();
    let mut standard = StandardBatch::with_capacity(spec, records);
    let staged: Vec<Result<Staged, DecodeError>> = bundles
        .iter()
        .map(|b| stage_bundle(spec, b, &mut standard))
        .collect();
    let t_standardize = ms_since(started);

    let started = Instant::now();
    let (enrichment, t_postgres, t_mongo) = enricher.enrich(spec, &standard).await;
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
        providers,
        any_provider,
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
    PreparedBatch {
        matrix,
        plans,
        reported,
        reported_columns,
        coverage: BatchCoverage {
            postgres,
            mongo,
            providers: spec
                .documents
                .iter()
                .flat_map(|d| d.providers.iter().cloned())
                .zip(providers)
                .collect(),
            any_provider,
        },
        timing_ms,
        outages: enrichment.unavailable.outages.clone(),
    }
}

/// Normalization of a batch's records into the matrix, with coverage and reported values.
struct Assembly<'a, 'e> {
    standard: &'a StandardBatch<'a>,
    normalizer: Normalizer<'e>,
    /// Per lookup key id, per reported lookup: the value as shared text (made once per key).
    reported_values: Vec<Vec<Arc<str>>>,
    /// Per document key id: per provider (spec order), whether its document can enrich the
    /// note; `None` for a key MongoDB did not answer for.
    provider_found: Vec<Option<Vec<bool>>>,
    n_features: usize,
    cells: Vec<f64>,
    rows: usize,
    reported: Vec<Arc<str>>,
    reported_columns: usize,
    /// The reported value of rows that have none (seed rows).
    no_value: Arc<str>,
    postgres: Coverage,
    mongo: Coverage,
    providers: Vec<Coverage>,
    any_provider: Coverage,
}

impl<'a, 'e> Assembly<'a, 'e> {
    fn new(
        spec: &'e PipelineSpec,
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
        let provider_found = provider_coverage(spec, standard, enrichment, &normalizer);
        let n_features = spec.features.len();
        let total: usize = bundles.iter().map(InputBundle::len).sum();
        Self {
            standard,
            normalizer,
            reported_values,
            provider_found,
            n_features,
            cells: Vec::with_capacity(total * n_features),
            rows: 0,
            reported: Vec::with_capacity(total * reported_lookups.len()),
            reported_columns: reported_lookups.len(),
            no_value: Arc::from(""),
            postgres: Coverage::default(),
            mongo: Coverage::default(),
            providers: vec![
                Coverage::default();
                spec.documents.as_ref().map_or(0, |d| d.providers.len())
            ],
            any_provider: Coverage::default(),
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
            self.postgres.count(self.normalizer.all_lookups_found(rec));
        }
        if let Some(key) = rec.doc_key {
            self.mongo.count(!self.normalizer.found(key).is_empty());
            if let Some(found) = &self.provider_found[key as usize] {
                for (coverage, &can) in self.providers.iter_mut().zip(found) {
                    coverage.count(can);
                }
                self.any_provider.count(found.contains(&true));
            }
        }
    }
}

/// Per document key id, per provider in the spec's order: whether that provider's document
/// alone can enrich the note (`None` for a key MongoDB was down for or refused).
fn provider_coverage(
    spec: &PipelineSpec,
    standard: &StandardBatch<'_>,
    enrichment: &Enrichment,
    normalizer: &Normalizer<'_>,
) -> Vec<Option<Vec<bool>>> {
    let (Some(docs), Some(table)) = (&spec.documents, &standard.documents) else {
        return Vec::new();
    };
    table
        .keys()
        .iter()
        .zip(0..)
        .map(|(key, id)| {
            if enrichment.unavailable.documents.contains(key.as_str())
                || enrichment.refused.documents.contains_key(key.as_str())
            {
                return None;
            }
            let found = normalizer.found(id);
            Some(
                docs.providers
                    .iter()
                    .map(|p| {
                        found
                            .iter()
                            .find(|d| d.is_from(p))
                            .is_some_and(|d| normalizer.can_enrich(d))
                    })
                    .collect(),
            )
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
    let Validated { ids, columns } = validate(spec, bundle)?;
    let records = match (bundle, columns) {
        (InputBundle::Request(req), Some(index)) => req
            .rows
            .iter()
            .map(|row| Input::Request(standard.standardize_row(&index, row)))
            .collect(),
        _ => (0..bundle.len()).map(Input::Seed).collect(),
    };
    Ok(Staged { ids, records })
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}
