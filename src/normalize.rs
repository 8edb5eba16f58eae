//! Normalize: every feature of a record in canonical units, written into its matrix row.
//!
//! This is where the three roads meet: request values converted from the scanner's unit,
//! lookup values, and provider document fields converted from the provider's unit. A reference
//! that enrichment did not find becomes a per-record error here, naming the key. The scaler
//! fitted at training time is applied afterwards, to the whole matrix, by the model.

use crate::enrich::{DocumentsByKey, Enrichment, FieldValue, ProviderDoc};
use crate::record::{RecordError, RecordErrorKind, Stage};
use crate::spec::{FeatureSpec, PipelineSpec, Road, UnitSource};
use crate::standardize::{StandardBatch, StandardRecord};
use crate::text::visible;

/// Everything normalization needs for one batch, worked out once per distinct key: each
/// lookup's value or the error for an unknown key, each note's preferred provider document,
/// each feature's unit factor or value. Normalizing a record is then a few indexed reads.
#[derive(Debug)]
pub struct Normalizer<'e> {
    /// Per lookup, per key id: the looked-up value, or why the key is unknown.
    lookups: Vec<Vec<Result<&'e str, RecordError>>>,
    /// By document key id: every provider's document MongoDB answered with (none for a key it
    /// has no document for, was down for or refused).
    found: &'e DocumentsByKey,
    /// Per document key id: the preferred provider's document, or why there is none.
    documents: Vec<Result<&'e ProviderDoc, RecordError>>,
    /// How each document feature reads each provider's document.
    reads: DocumentReads<'e>,
    /// Per feature, how its canonical value is made.
    features: Vec<FeaturePlan>,
    /// The lookups whose values are reported in the output, in spec order.
    reported: Vec<usize>,
    /// The feature names, for errors.
    names: Vec<String>,
}

/// How one feature's canonical value is made for a record.
#[derive(Debug)]
enum FeaturePlan {
    /// The request's number times a factor fixed by the spec.
    RequestFixed(Result<f64, RecordError>),
    /// The request's number times the factor of the unit a lookup names, per key id.
    RequestPerKey {
        lookup: usize,
        factors: Vec<Result<f64, RecordError>>,
    },
    /// A lookup's value, converted, per key id.
    Lookup {
        lookup: usize,
        values: Vec<Result<f64, RecordError>>,
    },
    /// A provider document field, converted, per document key id.
    Document(Vec<Result<f64, RecordError>>),
}

impl<'e> Normalizer<'e> {
    /// Resolves every distinct key of `batch` against what enrichment found.
    pub fn new(
        spec: &'e PipelineSpec,
        batch: &StandardBatch<'_>,
        enrichment: &'e Enrichment,
    ) -> Self {
        let lookups: Vec<Vec<Result<&'e str, RecordError>>> = spec
            .lookups
            .iter()
            .zip(&batch.lookups)
            .enumerate()
            .map(|(i, (l, table))| {
                table
                    .keys()
                    .iter()
                    .map(|key| {
                        if enrichment.unavailable.lookup(i, key) {
                            return Err(unavailable(
                                Stage::EnrichPostgres,
                                &l.name,
                                key,
                                enrichment,
                            ));
                        }
                        if let Some(answer) = enrichment.refused.lookup(i, key) {
                            return Err(refused(Stage::EnrichPostgres, &l.name, key, answer));
                        }
                        enrichment
                            .lookups
                            .get(i)
                            .and_then(|m| m.get(key))
                            .map(String::as_str)
                            .ok_or_else(|| {
                                RecordError::new(
                                    Stage::EnrichPostgres,
                                    RecordErrorKind::UnknownKey {
                                        lookup: l.name.clone(),
                                    },
                                    format!(
                                        "unknown {} '{key}': no row in {} has {} = '{key}'",
                                        l.name,
                                        l.table,
                                        l.key_column,
                                        key = visible(key)
                                    ),
                                )
                            })
                    })
                    .collect()
            })
            .collect();
        let doc_keys = batch
            .documents
            .as_ref()
            .map(|t| t.keys())
            .unwrap_or_default();
        let found = &enrichment.documents;
        let documents: Vec<Result<&'e ProviderDoc, RecordError>> = match &spec.documents {
            Some(docs) => doc_keys
                .iter()
                .zip(0..)
                .map(|(key, id)| preferred_doc(&docs.providers, key, found.of(id), enrichment))
                .collect(),
            None => Vec::new(),
        };
        let reads = DocumentReads::new(spec);
        let features = spec
            .features
            .iter()
            .enumerate()
            .map(|(i, feature)| {
                plan_feature(
                    spec,
                    batch,
                    (i, feature),
                    &reads,
                    &lookups,
                    &documents,
                    doc_keys,
                )
            })
            .collect();
        let reported = spec
            .lookups
            .iter()
            .enumerate()
            .filter(|(_, l)| l.output_column.is_some())
            .map(|(i, _)| i)
            .collect();
        Self {
            lookups,
            found,
            documents,
            reads,
            features,
            reported,
            names: spec.features.iter().map(|f| f.name.clone()).collect(),
        }
    }

    /// Writes a record's canonical features into `row`, or names the first thing missing.
    pub fn normalize(&self, rec: &StandardRecord<'_>, row: &mut [f64]) -> Result<(), RecordError> {
        for (values, &key) in self.lookups.iter().zip(rec.lookup_keys) {
            if let Err(e) = &values[key as usize] {
                return Err(e.clone());
            }
        }
        if let Some(key) = rec.doc_key {
            if let Err(e) = &self.documents[key as usize] {
                return Err(e.clone());
            }
        }
        for (i, plan) in self.features.iter().enumerate() {
            let value = match plan {
                FeaturePlan::RequestFixed(factor) => {
                    rec.request_values[i] * factor.as_ref().map_err(Clone::clone)?
                }
                FeaturePlan::RequestPerKey { lookup, factors } => {
                    let factor = &factors[rec.lookup_keys[*lookup] as usize];
                    rec.request_values[i] * factor.as_ref().map_err(Clone::clone)?
                }
                FeaturePlan::Lookup { lookup, values } => {
                    values[rec.lookup_keys[*lookup] as usize].clone()?
                }
                FeaturePlan::Document(values) => {
                    let key = rec
                        .doc_key
                        .expect("a validated spec with document roads has documents");
                    values[key as usize].clone()?
                }
            };
            // A finite value times a unit factor can still overflow (1e308 in milli units): it
            // is the record's error, never a NaN or infinite score for the whole batch to carry.
            if !value.is_finite() {
                return Err(RecordError::new(
                    Stage::Normalize,
                    RecordErrorKind::Overflow {
                        feature: self.names[i].clone(),
                    },
                    format!(
                        "{} overflows in canonical units (it becomes {value}); the value is out of any real range",
                        self.names[i]
                    ),
                ));
            }
            row[i] = value;
        }
        Ok(())
    }

    /// The lookups whose values are reported in the output, in spec order.
    pub fn reported_lookups(&self) -> impl Iterator<Item = usize> + '_ {
        self.reported.iter().copied()
    }

    /// The value lookup `lookup` found for key id `key`, if the key is known.
    pub fn lookup_value(&self, lookup: usize, key: u32) -> Option<&'e str> {
        self.lookups[lookup][key as usize].as_ref().ok().copied()
    }

    /// The documents MongoDB answered with for document key id `key` (none when it was down
    /// or refused the key).
    pub fn found(&self, key: u32) -> &'e [ProviderDoc] {
        self.found.of(key)
    }

    /// Whether `doc` alone gives every document feature a value: [`provider_can_enrich`],
    /// with the spec's reads resolved once per batch.
    pub fn can_enrich(&self, doc: &ProviderDoc) -> bool {
        self.reads.can_enrich(doc)
    }

    /// Whether every lookup of the record found its key.
    pub fn all_lookups_found(&self, rec: &StandardRecord<'_>) -> bool {
        self.lookups
            .iter()
            .zip(rec.lookup_keys)
            .all(|(values, &key)| values[key as usize].is_ok())
    }
}

/// Works out one feature for every distinct key it depends on.
fn plan_feature(
    spec: &PipelineSpec,
    batch: &StandardBatch<'_>,
    (index, feature): (usize, &crate::spec::FeatureSpec),
    reads: &DocumentReads<'_>,
    lookups: &[Vec<Result<&str, RecordError>>],
    documents: &[Result<&ProviderDoc, RecordError>],
    doc_keys: &[String],
) -> FeaturePlan {
    let lookup_index = |name: &str| {
        spec.lookups
            .iter()
            .position(|x| x.name == name)
            .expect("validated spec")
    };
    match &feature.road {
        Road::Request {
            column,
            unit: UnitSource::Fixed(unit),
        } => FeaturePlan::RequestFixed(factor(spec, unit, || {
            (column.clone(), format!("{column} is in"))
        })),
        Road::Request {
            column,
            unit: UnitSource::FromLookup(name),
        } => {
            let lookup = lookup_index(name);
            let factors = lookups[lookup]
                .iter()
                .zip(batch.lookups[lookup].keys())
                .map(|(value, key)| match value {
                    Ok(unit) => factor(spec, unit, || {
                        (
                            name.to_string(),
                            format!("{name} '{key}' reports {column} in"),
                        )
                    }),
                    Err(e) => Err(e.clone()),
                })
                .collect();
            FeaturePlan::RequestPerKey { lookup, factors }
        }
        Road::Lookup { lookup: name, unit } => {
            let lookup = lookup_index(name);
            let values = lookups[lookup]
                .iter()
                .zip(batch.lookups[lookup].keys())
                .map(|(value, key)| {
                    let text = value.as_ref().map_err(Clone::clone)?;
                    let v: f64 = text
                        .parse()
                        .ok()
                        .filter(|v: &f64| v.is_finite())
                        .ok_or_else(|| {
                            RecordError::new(
                                Stage::EnrichPostgres,
                                RecordErrorKind::BadReferenceValue {
                                    lookup: name.to_string(),
                                },
                                format!("{name} value '{text}' for '{key}' is not a finite number"),
                            )
                        })?;
                    Ok(v * factor(spec, unit, || {
                        (format!("lookup {name}"), format!("lookup {name} is in"))
                    })?)
                })
                .collect();
            FeaturePlan::Lookup { lookup, values }
        }
        Road::Document { providers, .. } => FeaturePlan::Document(
            documents
                .iter()
                .zip(doc_keys)
                .map(|(doc, key)| {
                    let doc = doc.as_ref().map_err(Clone::clone)?;
                    // The resolved read, and the slow road only to word what is missing.
                    match reads.value(index, doc) {
                        Some(v) => Ok(v),
                        None => document_value(spec, &feature.name, providers, doc, key),
                    }
                })
                .collect(),
        ),
    }
}

/// A feature's value from the preferred provider's document, converted to canonical units.
fn document_value(
    spec: &PipelineSpec,
    feature: &str,
    providers: &std::collections::BTreeMap<String, crate::spec::ProviderField>,
    doc: &ProviderDoc,
    key: &str,
) -> Result<f64, RecordError> {
    let Some(field) = providers.get(&*doc.provider) else {
        return Err(RecordError::new(
            Stage::EnrichMongo,
            RecordErrorKind::NoFieldForFeature {
                provider: doc.provider.to_string(),
            },
            format!(
                "provider {} has no field for {feature} (note '{key}')",
                doc.provider
            ),
        ));
    };
    let v = match doc.field(&field.path) {
        Some(FieldValue::Number(v)) => *v,
        Some(FieldValue::NotANumber(what)) => {
            return Err(RecordError::new(
                Stage::EnrichMongo,
                RecordErrorKind::FieldNotANumber {
                    provider: doc.provider.to_string(),
                },
                format!(
                    "provider {} field {} of note '{key}' holds {what}, not a finite number",
                    doc.provider, field.path
                ),
            ))
        }
        None => {
            return Err(RecordError::new(
                Stage::EnrichMongo,
                RecordErrorKind::MissingField {
                    provider: doc.provider.to_string(),
                },
                format!(
                    "provider {} document for note '{key}' has no field {}",
                    doc.provider, field.path
                ),
            ))
        }
    };
    Ok(v * factor(spec, &field.unit, || {
        let of = format!("provider {} field {}", doc.provider, field.path);
        (of.clone(), format!("{of} is in"))
    })?)
}

/// A document feature's canonical value from one provider's document: its field, a finite
/// number, times its unit's factor. `None` when the provider has no field for the feature, the
/// document lacks it or holds something else, or the unit is unknown, or the feature is not
/// read from documents. The quiet twin of the conversion [`Normalizer`] does, for counting
/// and comparing providers (`providers report`, per-provider coverage).
pub fn provider_value(
    spec: &PipelineSpec,
    feature: &FeatureSpec,
    doc: &ProviderDoc,
) -> Option<f64> {
    DocumentRead::of(spec, feature, &doc.provider)?.value(doc)
}

/// How one document feature reads one provider's documents: the field's path and the factor
/// of its unit.
#[derive(Debug, Clone, Copy)]
struct DocumentRead<'s> {
    path: &'s str,
    factor: f64,
}

impl<'s> DocumentRead<'s> {
    /// None when the feature is not read from documents, the provider has no field for it,
    /// or the field's unit is unknown.
    fn of(spec: &'s PipelineSpec, feature: &'s FeatureSpec, provider: &str) -> Option<Self> {
        let Road::Document { providers, .. } = &feature.road else {
            return None;
        };
        let field = providers.get(provider)?;
        Some(Self {
            path: &field.path,
            factor: *spec.units.get(&field.unit)?,
        })
    }

    /// The field's canonical value in `doc`, when it is a finite number there.
    fn value(&self, doc: &ProviderDoc) -> Option<f64> {
        match doc.field(self.path) {
            Some(FieldValue::Number(v)) => Some(v * self.factor),
            _ => None,
        }
    }
}

/// Every [`DocumentRead`] of a spec, resolved once per batch instead of once per document
/// and feature (each a search of the spec's maps by provider and unit name).
#[derive(Debug)]
struct DocumentReads<'s> {
    /// The spec's providers, in its order of preference.
    providers: &'s [String],
    /// Per feature of the spec, per provider: its read (None for features not read from
    /// documents).
    reads: Vec<Option<DocumentRead<'s>>>,
    /// The features read from documents.
    document_features: Vec<usize>,
}

impl<'s> DocumentReads<'s> {
    fn new(spec: &'s PipelineSpec) -> Self {
        let providers = spec
            .documents
            .as_ref()
            .map_or(&[][..], |d| d.providers.as_slice());
        Self {
            providers,
            reads: spec
                .features
                .iter()
                .flat_map(|f| providers.iter().map(move |p| DocumentRead::of(spec, f, p)))
                .collect(),
            document_features: spec
                .features
                .iter()
                .enumerate()
                .filter(|(_, f)| matches!(f.road, Road::Document { .. }))
                .map(|(i, _)| i)
                .collect(),
        }
    }

    /// Feature `feature`'s canonical value in `doc` ([`provider_value`]).
    fn value(&self, feature: usize, doc: &ProviderDoc) -> Option<f64> {
        let p = self.providers.iter().position(|p| doc.is_from(p))?;
        self.reads[feature * self.providers.len() + p]?.value(doc)
    }

    /// [`provider_can_enrich`].
    fn can_enrich(&self, doc: &ProviderDoc) -> bool {
        self.document_features
            .iter()
            .all(|&f| self.value(f, doc).is_some())
    }
}

/// Whether `doc` alone gives every document feature of `spec` a value: the provider can
/// enrich this note. A note that only such providers cover is one the worker answers.
pub fn provider_can_enrich(spec: &PipelineSpec, doc: &ProviderDoc) -> bool {
    spec.features
        .iter()
        .all(|f| !matches!(f.road, Road::Document { .. }) || provider_value(spec, f, doc).is_some())
}

/// The error of a record whose key the source refused while answering the rest of the batch.
fn refused(stage: Stage, what: &str, key: &str, answer: &str) -> RecordError {
    let source = match stage {
        Stage::EnrichPostgres => "PostgreSQL",
        _ => "MongoDB",
    };
    RecordError::new(
        stage,
        RecordErrorKind::SourceRefused {
            what: what.to_owned(),
        },
        format!(
            "{source} refused to look up {what} '{}': {}",
            visible(&crate::text::truncate_chars(key, 64)),
            crate::text::truncate_chars(answer, 300)
        ),
    )
}

/// The error of a record whose key could not be asked because its source was down. Such a
/// record is never answered: the worker holds its bundle and tries again (docs/contract.md
/// section 6).
fn unavailable(stage: Stage, what: &str, key: &str, enrichment: &Enrichment) -> RecordError {
    let (source, name) = match stage {
        Stage::EnrichPostgres => ("PostgreSQL", "postgres"),
        _ => ("MongoDB", "mongo"),
    };
    RecordError::new(
        stage,
        RecordErrorKind::SourceUnavailable { source: name },
        format!(
            "{source} was unavailable to look up {what} '{}': {}",
            visible(&crate::text::truncate_chars(key, 64)),
            crate::text::truncate_chars(enrichment.unavailable.reason(name), 300)
        ),
    )
}

/// The document of the first provider, in the spec's preference order, that has one.
fn preferred_doc<'e>(
    providers: &[String],
    key: &str,
    docs: &'e [ProviderDoc],
    enrichment: &Enrichment,
) -> Result<&'e ProviderDoc, RecordError> {
    if enrichment.unavailable.documents.contains(key) {
        return Err(unavailable(Stage::EnrichMongo, "note", key, enrichment));
    }
    if let Some(answer) = enrichment.refused.documents.get(key) {
        return Err(refused(Stage::EnrichMongo, "note", key, answer));
    }
    providers
        .iter()
        .find_map(|p| docs.iter().find(|d| d.is_from(p)))
        .ok_or_else(|| {
            RecordError::new(
                Stage::EnrichMongo,
                RecordErrorKind::UnknownNote,
                format!(
                    "unknown note '{}': no provider has a scan document for it",
                    visible(key)
                ),
            )
        })
}

/// The factor of `unit`; `who` names what reports in it: (its kind for counting, the words
/// that start the reason).
fn factor(
    spec: &PipelineSpec,
    unit: &str,
    who: impl FnOnce() -> (String, String),
) -> Result<f64, RecordError> {
    spec.units.get(unit).copied().ok_or_else(|| {
        let known: Vec<&str> = spec.units.keys().map(String::as_str).collect();
        let (of, words) = who();
        RecordError::new(
            Stage::Normalize,
            RecordErrorKind::UnknownUnit { of },
            format!(
                "{words} unit '{unit}', which pipeline spec {} does not know (it knows {}); add the unit to the spec or fix the reference data",
                spec.name,
                known.join(", ")
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::validate::ColumnIndex;
    use crate::bundle::Table;
    use serde_json::json;
    use std::collections::HashMap;

    /// The provider documents of the tests' notes, by note.
    fn provider_docs() -> HashMap<String, Vec<ProviderDoc>> {
        HashMap::from([
            (
                "SN-1".to_owned(),
                vec![
                    ProviderDoc {
                        provider: "lumen".into(),
                        fields: smallvec::smallvec![
                            ("wavelet.curt_centi".into(), FieldValue::Number(-280.73)),
                            ("wavelet.ent_milli".into(), FieldValue::Number(-446.99)),
                        ],
                    },
                    ProviderDoc {
                        provider: "aurum".into(),
                        fields: smallvec::smallvec![
                            ("scan.kurtosis".into(), FieldValue::Number(-2.8073)),
                            ("scan.entropy".into(), FieldValue::Number(-0.44699)),
                        ],
                    },
                ],
            ),
            (
                "SN-2".to_owned(),
                vec![ProviderDoc {
                    provider: "lumen".into(),
                    fields: smallvec::smallvec![(
                        "wavelet.ent_milli".into(),
                        FieldValue::Number(-446.99)
                    )],
                }],
            ),
        ])
    }

    /// What enrichment finds for `batch`: two scanners, one issuer and [`provider_docs`].
    fn enrichment(batch: &StandardBatch<'_>) -> Enrichment {
        let scanners = HashMap::from([
            ("sc-01".to_owned(), "milli".to_owned()),
            ("sc-13".to_owned(), "micro".to_owned()),
        ]);
        let issuers = HashMap::from([("frb".to_owned(), "US-FED".to_owned())]);
        let notes = batch
            .documents
            .as_ref()
            .map(|t| t.keys())
            .unwrap_or_default();
        Enrichment {
            lookups: vec![scanners, issuers],
            documents: DocumentsByKey::of_keys(notes, &provider_docs()),
            refused: Default::default(),
            unavailable: Default::default(),
        }
    }

    /// Standardizes one request row and normalizes it against [`enrichment`].
    fn run(
        scanner: &str,
        issuer: &str,
        note: &str,
    ) -> Result<(Vec<f64>, Vec<String>), RecordError> {
        let spec = PipelineSpec::banknote();
        let columns: Vec<String> = ["id", "note", "issuer", "scanner", "variance", "skewness"]
            .map(String::from)
            .to_vec();
        let table = Table::from(vec![vec![
            json!("r-1"),
            json!(note),
            json!(issuer),
            json!(scanner),
            json!(3621.6),
            json!(8666.1),
        ]]);
        let index = ColumnIndex::new(&spec, &columns).unwrap();
        let mut batch = StandardBatch::new(&spec);
        let r = batch.standardize_row(&index, table.row(0)).unwrap();
        let enrichment = enrichment(&batch);
        let normalizer = Normalizer::new(&spec, &batch, &enrichment);
        let rec = batch.record(r);
        let mut row = vec![0.0; 4];
        normalizer.normalize(&rec, &mut row)?;
        let reported = normalizer
            .reported_lookups()
            .map(|l| enrichment.lookups[l][batch.lookups[l].key(rec.lookup_keys[l])].clone())
            .collect();
        Ok((row, reported))
    }

    #[test]
    fn provider_values_are_converted_and_only_complete_documents_can_enrich() {
        let spec = PipelineSpec::banknote();
        let docs = provider_docs();
        let [lumen, aurum] = &docs["SN-1"][..] else {
            unreachable!()
        };
        let curtosis = &spec.features[2];
        let lumen_value = provider_value(&spec, curtosis, lumen).unwrap();
        assert!((lumen_value - -2.8073).abs() < 1e-12, "{lumen_value}");
        assert_eq!(provider_value(&spec, curtosis, aurum), Some(-2.8073));
        // A request feature is not read from documents.
        assert_eq!(provider_value(&spec, &spec.features[0], aurum), None);
        assert!(provider_can_enrich(&spec, lumen) && provider_can_enrich(&spec, aurum));
        // SN-2's lumen document lacks the curtosis field.
        let partial = &docs["SN-2"][0];
        assert_eq!(provider_value(&spec, curtosis, partial), None);
        assert!(!provider_can_enrich(&spec, partial));
        // The reads resolved once per batch answer as the spec's maps searched each time.
        let reads = DocumentReads::new(&spec);
        for doc in [lumen, aurum, partial] {
            assert_eq!(reads.can_enrich(doc), provider_can_enrich(&spec, doc));
            for (i, feature) in spec.features.iter().enumerate() {
                assert_eq!(reads.value(i, doc), provider_value(&spec, feature, doc));
            }
        }
    }

    #[test]
    fn three_roads_meet_in_canonical_units() {
        let (row, reported) = run("sc-01", "frb", "SN-1").unwrap();
        let expected = [3.6216, 8.6661, -2.8073, -0.44699];
        for (got, want) in row.iter().zip(expected) {
            assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        }
        // aurum is preferred over lumen even when lumen's document comes first.
        assert_eq!(row[2], -2.8073);
        assert_eq!(reported, ["US-FED"]);
    }

    #[test]
    fn each_missing_reference_names_its_key() {
        let err = run("sc-99", "frb", "SN-1").unwrap_err();
        assert_eq!(
            err.to_string(),
            "enrich.postgres: unknown scanner 'sc-99': no row in scanners has scanner_id = 'sc-99'"
        );
        let err = run("sc-01", "bank of atlantis", "SN-1").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("enrich.postgres: unknown issuer 'bank of atlantis'"),
            "{err}"
        );
        let err = run("sc-01", "frb", "SN-404").unwrap_err();
        assert_eq!(
            err.to_string(),
            "enrich.mongo: unknown note 'SN-404': no provider has a scan document for it"
        );
        let err = run("sc-01", "frb", "SN-2").unwrap_err();
        assert_eq!(
            err.to_string(),
            "enrich.mongo: provider lumen document for note 'SN-2' has no field wavelet.curt_centi"
        );
    }

    #[test]
    fn a_unit_the_spec_does_not_know_is_a_record_error() {
        let err = run("sc-13", "frb", "SN-1").unwrap_err();
        assert_eq!(err.stage, Stage::Normalize);
        assert!(err.reason.starts_with("scanner 'sc-13' reports variance in unit 'micro', which pipeline spec banknote does not know"), "{err}");
    }

    #[test]
    fn a_value_that_overflows_in_canonical_units_is_a_record_error_not_a_nan() {
        let mut spec = PipelineSpec::banknote();
        *spec.units.get_mut("milli").unwrap() = 1e10;
        let columns: Vec<String> = ["id", "note", "issuer", "scanner", "variance", "skewness"]
            .map(String::from)
            .to_vec();
        let table = Table::from(vec![vec![
            json!("r-1"),
            json!("SN-1"),
            json!("frb"),
            json!("sc-01"),
            json!(1e308),
            json!(1.0),
        ]]);
        let index = ColumnIndex::new(&spec, &columns).unwrap();
        let mut batch = StandardBatch::new(&spec);
        let r = batch.standardize_row(&index, table.row(0)).unwrap();
        let enrichment = enrichment(&batch);
        let normalizer = Normalizer::new(&spec, &batch, &enrichment);
        let err = normalizer
            .normalize(&batch.record(r), &mut [0.0; 4])
            .unwrap_err();
        assert_eq!(err.kind(), "normalize: variance overflows");
        assert!(err.reason.contains("becomes inf"), "{err}");
    }
}
