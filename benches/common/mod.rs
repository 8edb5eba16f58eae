//! What every benchmark group shares: the default fixture set, the two fitted classifiers,
//! request bodies built from the fixture bundles, and enrichment sources that answer from memory.
//!
//! The in-memory sources stand in for PostgreSQL and MongoDB so that the benchmarks measure the
//! CPU path of a batch and nothing of the network. They answer exactly what the loaded fixtures
//! would: the same reference rows, the same provider documents, read field by field with the
//! MongoDB source's own [`FieldReader`].

use std::collections::HashMap;
use std::sync::OnceLock;

use mongodb::bson::raw::RawDocumentBuf;
use mongodb::bson::{Bson, Document};
use ndarray::Array2;
use serde_json::Value;
use tokio::runtime::Runtime;

use ml_pipeline::batch::prepare;
use ml_pipeline::bundle::answers;
use ml_pipeline::bundle::{encode::encode, Answer, ContentEncoding, InputBundle, RequestBundle};
use ml_pipeline::enrich::mongo::{FieldReader, KeyPlaces};
use ml_pipeline::enrich::{DocumentSource, DocumentsByKey, Enricher, ReferenceSource, SourceError};
use ml_pipeline::fixtures::{self, FixtureSet, ReferenceData};
use ml_pipeline::model::artifact::TrainParams;
use ml_pipeline::model::Classifier;
use ml_pipeline::spec::{DocumentSpec, LookupSpec, PipelineSpec};
use ml_pipeline::standardize::FastMap;

/// Everything the benchmarks read, built once per benchmark process.
pub struct Workload {
    /// The banknote spec the fixtures were generated for.
    pub spec: PipelineSpec,
    /// `fixtures/default`: 2 000 notes, 20 request bundles of 100 records.
    pub set: FixtureSet,
    /// Enrichment from memory (no network).
    pub enricher: Enricher<InMemoryReference, InMemoryDocuments>,
    /// A linear-kernel SVM fitted on the fixture notes.
    pub linear: Classifier,
    /// A Gaussian-kernel SVM fitted on the fixture notes (the CLI's default kernel).
    pub gaussian: Classifier,
}

/// The workload, read, fitted and checked on first use (a few seconds: the Gaussian fit
/// dominates).
pub fn workload() -> &'static Workload {
    static WORKLOAD: OnceLock<Workload> = OnceLock::new();
    WORKLOAD.get_or_init(|| {
        let w = Workload::load();
        w.check_against_expectations();
        w
    })
}

/// `prepare` is async only for its round trips; the in-memory sources never wait, so a
/// current-thread runtime drives it on the benchmark's own thread.
pub fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime")
}

impl Workload {
    fn load() -> Self {
        let spec = PipelineSpec::banknote();
        let set = fixtures::read_set(&fixtures::files::default_dir())
            .expect("fixtures/default is readable");
        let documents = spec
            .documents
            .as_ref()
            .expect("the banknote spec has documents");
        let enricher = Enricher {
            reference: InMemoryReference::new(&spec.lookups, &set.reference),
            documents: InMemoryDocuments::new(
                documents,
                &spec.document_paths(),
                &set.provider_scans,
            ),
        };
        let (x, y) = training_rows(&set);
        let fit = |kernel: &str| {
            ml_pipeline::train::fit::fit(&x, &y, &default_params(kernel))
                .unwrap_or_else(|e| panic!("the {kernel} fit on the fixture notes failed: {e}"))
        };
        Self {
            linear: fit("linear"),
            gaussian: fit("gaussian"),
            spec,
            set,
            enricher,
        }
    }

    /// The answers of a batch: prepare (in memory), decision values (Gaussian), answers.
    pub fn answers(&self, rt: &Runtime, bundles: Vec<InputBundle>) -> Vec<Answer> {
        self.answers_by(&self.gaussian, rt, bundles)
    }

    /// The answers of a batch: prepare (in memory), decision values of `model`, answers.
    pub fn answers_by(
        &self,
        model: &Classifier,
        rt: &Runtime,
        bundles: Vec<InputBundle>,
    ) -> Vec<Answer> {
        let mut prepared = rt.block_on(prepare(&self.spec, &bundles, &self.enricher));
        let scores = model.decision_values(std::mem::take(&mut prepared.matrix));
        let timing = prepared.timing_ms.clone();
        answers(&self.spec, &bundles, prepared, &scores, "bench", &timing)
            .into_iter()
            .map(|a| a.expect("fixture bundles are answered"))
            .collect()
    }

    /// Proves the in-memory sources answer as the loaded fixtures do: every request of every
    /// fixture bundle is predicted, or fails with the error `expectations.json` plants.
    fn check_against_expectations(&self) {
        let all = self.bundles(self.set.bundles.len());
        for answer in self.answers(&runtime(), all) {
            let Answer::Request(out) = answer else {
                panic!("a v1 bundle got a seed-format answer")
            };
            for row in &out.rows {
                let id = row.id.as_str();
                let planted = &self.set.expectations[id].error;
                assert!(
                    planted.is_none(),
                    "{id} was predicted, expected {planted:?}"
                );
            }
            for (id, reason) in &out.errors {
                let planted = self.set.expectations[id].error.as_deref();
                assert!(
                    planted.is_some_and(|p| reason.contains(p)),
                    "{id} failed with '{reason}', expected {planted:?}"
                );
            }
        }
    }

    /// The first `n` fixture bundles of 100 records, as the decoder returns them.
    pub fn bundles(&self, n: usize) -> Vec<InputBundle> {
        self.set.bundles[..n]
            .iter()
            .cloned()
            .map(InputBundle::Request)
            .collect()
    }

    /// One bundle holding the records of the first `n` fixture bundles.
    pub fn merged_bundle(&self, n: usize) -> RequestBundle {
        let parts = &self.set.bundles[..n];
        RequestBundle {
            bundle_id: format!("bench-{}-records", n * parts[0].rows.len()),
            model: parts[0].model.clone(),
            columns: parts[0].columns.clone(),
            rows: parts
                .iter()
                .flat_map(|b| b.rows.iter().map(|r| r.to_values()))
                .collect::<Vec<_>>()
                .into(),
        }
    }

    /// `rows` canonical feature rows: the fixture notes, repeated as often as needed.
    pub fn canonical_rows(&self, rows: usize) -> Array2<f64> {
        let cells = self
            .set
            .notes
            .iter()
            .cycle()
            .take(rows)
            .flat_map(|n| n.features())
            .collect();
        Array2::from_shape_vec((rows, self.spec.features.len()), cells).expect("rows x 4 cells")
    }
}

/// A message body as the queue would carry it.
pub fn body(bundle: &RequestBundle, encoding: ContentEncoding) -> String {
    encode(bundle, encoding)
}

/// The default `ml-pipeline train` hyperparameters for a kernel.
pub fn default_params(kernel: &str) -> TrainParams {
    TrainParams::with_kernel(kernel.parse().expect("linear or gaussian"))
}

/// The fixture notes as canonical training rows, the way `train` reads them.
fn training_rows(set: &FixtureSet) -> (Array2<f64>, Vec<bool>) {
    let x = Array2::from_shape_vec(
        (set.notes.len(), 4),
        set.notes.iter().flat_map(|n| n.features()).collect(),
    )
    .expect("notes x 4 cells");
    let y = set.notes.iter().map(|n| n.label == 1).collect();
    (x, y)
}

/// PostgreSQL reference lookups answered from the fixture reference rows, in memory.
pub struct InMemoryReference {
    /// (table, key column, value column) -> key -> value, for each lookup of the spec.
    tables: HashMap<(String, String, String), HashMap<String, String>>,
}

impl InMemoryReference {
    /// Indexes the reference rows each lookup reads. `ReferenceData` serializes as
    /// `{table: [row, ...]}` with the tables' column names, so a lookup reads it like SQL does.
    pub fn new(lookups: &[LookupSpec], reference: &ReferenceData) -> Self {
        let tables = serde_json::to_value(reference).expect("reference rows serialize");
        let index = |l: &LookupSpec| {
            let rows = tables[&l.table]
                .as_array()
                .expect("a table is an array of rows");
            rows.iter()
                .filter_map(|row| {
                    let text = |column: &str| row[column].as_str().map(str::to_owned);
                    Some((text(&l.key_column)?, text(&l.value_column)?))
                })
                .collect()
        };
        Self {
            tables: lookups.iter().map(|l| (table_key(l), index(l))).collect(),
        }
    }
}

fn table_key(l: &LookupSpec) -> (String, String, String) {
    (
        l.table.clone(),
        l.key_column.clone(),
        l.value_column.clone(),
    )
}

impl ReferenceSource for InMemoryReference {
    async fn fetch(
        &self,
        lookups: &[LookupSpec],
        keys: &[&[String]],
    ) -> Result<Vec<HashMap<String, String>>, SourceError> {
        Ok(lookups
            .iter()
            .zip(keys)
            .map(|(lookup, &keys)| {
                let table = &self.tables[&table_key(lookup)];
                keys.iter()
                    .filter_map(|k| table.get(k).map(|v| (k.clone(), v.clone())))
                    .collect()
            })
            .collect())
    }

    async fn ping(&self) -> Result<(), SourceError> {
        Ok(())
    }
}

/// MongoDB provider documents answered from the fixture documents, in memory.
pub struct InMemoryDocuments {
    /// Record key -> its providers' documents as BSON bytes, for the spec's providers only, each
    /// cut down to what the MongoDB source's projection asks the server for.
    by_key: FastMap<String, Vec<RawDocumentBuf>>,
}

impl InMemoryDocuments {
    /// Indexes the documents by the spec's key field, as the collection's index does, and
    /// projects each as the server answers the MongoDB source's `find`: the key, the provider
    /// and the requested `paths`, in the document's own field order, without `_id`.
    pub fn new(spec: &DocumentSpec, paths: &[String], scans: &[Value]) -> Self {
        let mut split: Vec<Vec<&str>> = paths.iter().map(|p| p.split('.').collect()).collect();
        split.push(vec![spec.key_field.as_str()]);
        split.push(vec![spec.provider_field.as_str()]);
        let kept: Vec<&[&str]> = split.iter().map(Vec::as_slice).collect();
        let mut by_key: FastMap<String, Vec<RawDocumentBuf>> = FastMap::default();
        for scan in scans {
            let doc = mongodb::bson::to_document(scan).expect("a provider scan is an object");
            let (Ok(key), Ok(provider)) = (
                doc.get_str(&spec.key_field),
                doc.get_str(&spec.provider_field),
            ) else {
                continue;
            };
            if spec.providers.iter().any(|p| p == provider) {
                let raw = RawDocumentBuf::from_document(&project(&doc, &kept))
                    .expect("a document encodes");
                by_key.entry(key.to_owned()).or_default().push(raw);
            }
        }
        Self { by_key }
    }
}

/// The part of `doc` an inclusion projection of these dotted paths (split at their dots)
/// keeps: every element on a path, in the document's order; a document on the way is cut down
/// the same way, a value that is not a document ends its path there.
fn project(doc: &Document, paths: &[&[&str]]) -> Document {
    let mut out = Document::new();
    for (name, value) in doc {
        let deeper: Vec<&[&str]> = paths
            .iter()
            .filter(|p| p.first() == Some(&name.as_str()))
            .map(|p| &p[1..])
            .collect();
        if deeper.is_empty() {
            continue;
        }
        match value {
            Bson::Document(inner) if deeper.iter().all(|p| !p.is_empty()) => {
                out.insert(name, project(inner, &deeper));
            }
            _ if deeper.iter().any(|p| p.is_empty()) => {
                out.insert(name, value.clone());
            }
            _ => {}
        }
    }
    out
}

impl DocumentSource for InMemoryDocuments {
    async fn fetch(
        &self,
        spec: &DocumentSpec,
        paths: &[String],
        keys: &[String],
    ) -> Result<DocumentsByKey, SourceError> {
        // The real source receives the documents as BSON bytes, reads them with
        // `FieldReader` and finds each one's key among those asked; here the same reading and
        // finding are all that is left.
        let reader = FieldReader::new(spec, paths);
        let places = KeyPlaces::new(keys);
        let mut found = Vec::with_capacity(keys.len() * spec.providers.len());
        for key in keys {
            for raw in self.by_key.get(key).into_iter().flatten() {
                if let Some((key, doc)) = reader.read(raw) {
                    found.extend(places.get(key).map(|place| (place, doc)));
                }
            }
        }
        Ok(DocumentsByKey::group(keys.len(), found))
    }

    async fn ping(&self) -> Result<(), SourceError> {
        Ok(())
    }
}
