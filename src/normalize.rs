//! Normalize: every feature of a record in canonical units, written into its matrix row.
//!
//! This is where the three roads meet: request values converted from the scanner's unit,
//! lookup values, and provider document fields converted from the provider's unit. A reference
//! that enrichment did not find becomes a per-record error here, naming the key. The scaler
//! fitted at training time is applied afterwards, to the whole matrix, by the model.

use crate::enrich::{Enrichment, FieldValue, ProviderDoc};
use crate::record::{RecordError, Stage};
use crate::spec::{PipelineSpec, Road, UnitSource};
use crate::standardize::StandardRecord;

/// Writes a record's canonical features into `row`; returns the reported lookup values
/// (one per lookup with an `output_column`, in spec order).
pub fn normalize_record(
    spec: &PipelineSpec,
    rec: &StandardRecord,
    enrichment: &Enrichment,
    row: &mut [f64],
) -> Result<Vec<String>, RecordError> {
    let values = lookup_values(spec, rec, enrichment)?;
    let doc = match (&spec.documents, &rec.doc_key) {
        (Some(docs), Some(key)) => Some((
            key,
            preferred_doc(docs.providers.as_slice(), key, enrichment)?,
        )),
        _ => None,
    };
    for (i, feature) in spec.features.iter().enumerate() {
        row[i] = match &feature.road {
            Road::Request { column, unit } => {
                let unit = match unit {
                    UnitSource::Fixed(u) => u.as_str(),
                    UnitSource::FromLookup(l) => {
                        let idx = spec
                            .lookups
                            .iter()
                            .position(|x| &x.name == l)
                            .expect("validated spec");
                        values[idx]
                    }
                };
                let reporter =
                    || match unit_lookup_key(spec, unit_source_lookup(&feature.road), rec) {
                        Some((name, key)) => format!("{name} '{key}' reports {column} in"),
                        None => format!("{column} is in"),
                    };
                rec.request_values[i] * factor(spec, unit, reporter)?
            }
            Road::Lookup { lookup, unit } => {
                let idx = spec
                    .lookups
                    .iter()
                    .position(|x| &x.name == lookup)
                    .expect("validated spec");
                let text = values[idx];
                let v: f64 = text
                    .parse()
                    .ok()
                    .filter(|v: &f64| v.is_finite())
                    .ok_or_else(|| {
                        RecordError::new(
                            Stage::EnrichPostgres,
                            format!(
                                "{lookup} value '{text}' for '{}' is not a finite number",
                                rec.lookup_keys[idx]
                            ),
                        )
                    })?;
                v * factor(spec, unit, || format!("lookup {lookup} is in"))?
            }
            Road::Document { providers } => {
                let (key, doc) = doc
                    .as_ref()
                    .expect("a validated spec with document roads has documents");
                let Some(field) = providers.get(&doc.provider) else {
                    return Err(RecordError::new(
                        Stage::EnrichMongo,
                        format!(
                            "provider {} has no field for {} (note '{key}')",
                            doc.provider, feature.name
                        ),
                    ));
                };
                let v = match doc.field(&field.path) {
                    Some(FieldValue::Number(v)) => *v,
                    Some(FieldValue::NotANumber(what)) => {
                        return Err(RecordError::new(
                            Stage::EnrichMongo,
                            format!(
                            "provider {} field {} of note '{key}' holds {what}, not a finite number",
                            doc.provider, field.path
                        ),
                        ))
                    }
                    None => {
                        return Err(RecordError::new(
                            Stage::EnrichMongo,
                            format!(
                                "provider {} document for note '{key}' has no field {}",
                                doc.provider, field.path
                            ),
                        ))
                    }
                };
                v * factor(spec, &field.unit, || {
                    format!("provider {} field {} is in", doc.provider, field.path)
                })?
            }
        };
    }
    Ok(spec
        .lookups
        .iter()
        .zip(&values)
        .filter(|(l, _)| l.output_column.is_some())
        .map(|(_, v)| (*v).to_owned())
        .collect())
}

fn unit_source_lookup(road: &Road) -> Option<&str> {
    match road {
        Road::Request {
            unit: UnitSource::FromLookup(l),
            ..
        } => Some(l),
        _ => None,
    }
}

fn unit_lookup_key<'a>(
    spec: &'a PipelineSpec,
    lookup: Option<&'a str>,
    rec: &'a StandardRecord,
) -> Option<(&'a str, &'a str)> {
    let lookup = lookup?;
    let idx = spec.lookups.iter().position(|l| l.name == lookup)?;
    Some((lookup, rec.lookup_keys[idx].as_str()))
}

/// The value of every lookup for this record, or the first one missing.
fn lookup_values<'e>(
    spec: &PipelineSpec,
    rec: &StandardRecord,
    enrichment: &'e Enrichment,
) -> Result<Vec<&'e str>, RecordError> {
    spec.lookups
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let key = &rec.lookup_keys[i];
            enrichment
                .lookups
                .get(i)
                .and_then(|m| m.get(key))
                .map(String::as_str)
                .ok_or_else(|| {
                    RecordError::new(
                        Stage::EnrichPostgres,
                        format!(
                            "unknown {} '{key}': no row in {} has {} = '{key}'",
                            l.name, l.table, l.key_column
                        ),
                    )
                })
        })
        .collect()
}

/// The document of the first provider, in the spec's preference order, that has one.
fn preferred_doc<'e>(
    providers: &[String],
    key: &str,
    enrichment: &'e Enrichment,
) -> Result<&'e ProviderDoc, RecordError> {
    let docs = enrichment
        .documents
        .get(key)
        .map(Vec::as_slice)
        .unwrap_or_default();
    providers
        .iter()
        .find_map(|p| docs.iter().find(|d| &d.provider == p))
        .ok_or_else(|| {
            RecordError::new(
                Stage::EnrichMongo,
                format!("unknown note '{key}': no provider has a scan document for it"),
            )
        })
}

fn factor(
    spec: &PipelineSpec,
    unit: &str,
    who: impl FnOnce() -> String,
) -> Result<f64, RecordError> {
    spec.units.get(unit).copied().ok_or_else(|| {
        let known: Vec<&str> = spec.units.keys().map(String::as_str).collect();
        RecordError::new(
            Stage::Normalize,
            format!(
                "{} unit '{unit}', which pipeline spec {} does not know (it knows {}); add the unit to the spec or fix the reference data",
                who(),
                spec.name,
                known.join(", ")
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn record(scanner: &str, issuer: &str, note: &str) -> StandardRecord {
        StandardRecord {
            lookup_keys: vec![scanner.into(), issuer.into()],
            doc_key: Some(note.into()),
            request_values: vec![3621.6, 8666.1, f64::NAN, f64::NAN],
        }
    }

    fn enrichment() -> Enrichment {
        let scanners = HashMap::from([
            ("sc-01".to_owned(), "milli".to_owned()),
            ("sc-13".to_owned(), "micro".to_owned()),
        ]);
        let issuers = HashMap::from([("frb".to_owned(), "US-FED".to_owned())]);
        let docs = HashMap::from([
            (
                "SN-1".to_owned(),
                vec![
                    ProviderDoc {
                        provider: "lumen".into(),
                        fields: vec![
                            ("wavelet.curt_centi".into(), FieldValue::Number(-280.73)),
                            ("wavelet.ent_milli".into(), FieldValue::Number(-446.99)),
                        ],
                    },
                    ProviderDoc {
                        provider: "aurum".into(),
                        fields: vec![
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
                    fields: vec![("wavelet.ent_milli".into(), FieldValue::Number(-446.99))],
                }],
            ),
        ]);
        Enrichment {
            lookups: vec![scanners, issuers],
            documents: docs,
        }
    }

    fn run(rec: &StandardRecord) -> Result<(Vec<f64>, Vec<String>), RecordError> {
        let mut row = vec![0.0; 4];
        normalize_record(&PipelineSpec::banknote(), rec, &enrichment(), &mut row).map(|v| (row, v))
    }

    #[test]
    fn three_roads_meet_in_canonical_units() {
        let (row, reported) = run(&record("sc-01", "frb", "SN-1")).unwrap();
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
        let err = run(&record("sc-99", "frb", "SN-1")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "enrich.postgres: unknown scanner 'sc-99': no row in scanners has scanner_id = 'sc-99'"
        );
        let err = run(&record("sc-01", "bank of atlantis", "SN-1")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("enrich.postgres: unknown issuer 'bank of atlantis'"),
            "{err}"
        );
        let err = run(&record("sc-01", "frb", "SN-404")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "enrich.mongo: unknown note 'SN-404': no provider has a scan document for it"
        );
        let err = run(&record("sc-01", "frb", "SN-2")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "enrich.mongo: provider lumen document for note 'SN-2' has no field wavelet.curt_centi"
        );
    }

    #[test]
    fn a_unit_the_spec_does_not_know_is_a_record_error() {
        let err = run(&record("sc-13", "frb", "SN-1")).unwrap_err();
        assert_eq!(err.stage, Stage::Normalize);
        assert!(err.reason.starts_with("scanner 'sc-13' reports variance in unit 'micro', which pipeline spec banknote does not know"), "{err}");
    }
}
