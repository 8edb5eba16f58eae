//! Standardize: business rules that turn a raw request row into clean keys and numbers.
//!
//! Free text (issuer names) is folded by the spec's rules so that "Federal Reserve",
//! "federal  reserve " and "ＦＥＤＥＲＡＬ ＲＥＳＥＲＶＥ" meet the same alias. Numbers are checked to be
//! finite numbers, never strings that look like numbers. A row that breaks a rule becomes a
//! per-record error; nothing here panics on input.

use serde_json::Value;
use unicode_normalization::UnicodeNormalization;

use crate::record::{RecordError, Stage};
use crate::spec::{PipelineSpec, Road, TextRule};

/// The longest key (note id, scanner, issuer text) accepted, in characters.
pub const MAX_KEY_CHARS: usize = 256;

/// A request row after standardization, ready for enrichment.
#[derive(Debug, Clone, PartialEq)]
pub struct StandardRecord {
    /// One standardized key per lookup of the spec, in the spec's lookup order.
    pub lookup_keys: Vec<String>,
    /// The standardized provider-document key, when the spec has documents.
    pub doc_key: Option<String>,
    /// One value per feature: the request's number for request roads, NaN for the others.
    pub request_values: Vec<f64>,
}

/// Where the columns a spec needs sit in one bundle's rows.
#[derive(Debug, Clone)]
pub struct ColumnIndex {
    lookup_keys: Vec<(usize, String)>,
    doc_key: Option<(usize, String)>,
    features: Vec<Option<(usize, String)>>,
}

impl ColumnIndex {
    /// Maps the spec's request columns to positions in `columns`; names the first one missing.
    pub fn new(spec: &PipelineSpec, columns: &[String]) -> Result<Self, String> {
        let find = |name: &str| {
            columns
                .iter()
                .position(|c| c == name)
                .map(|i| (i, name.to_owned()))
                .ok_or_else(|| {
                    format!(
                        "column '{name}' is missing; model {} needs columns {:?}",
                        spec.name,
                        spec.request_columns()
                    )
                })
        };
        find(&spec.id_column)?;
        let lookup_keys = spec
            .lookups
            .iter()
            .map(|l| find(&l.key_from))
            .collect::<Result<_, _>>()?;
        let doc_key = spec
            .documents
            .as_ref()
            .map(|d| find(&d.key_from))
            .transpose()?;
        let features = spec
            .features
            .iter()
            .map(|f| match &f.road {
                Road::Request { column, .. } => find(column).map(Some),
                _ => Ok(None),
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            lookup_keys,
            doc_key,
            features,
        })
    }
}

/// Standardizes one row whose columns are laid out as `index` says.
pub fn standardize_row(
    spec: &PipelineSpec,
    index: &ColumnIndex,
    row: &[Value],
) -> Result<StandardRecord, RecordError> {
    let lookup_keys = index
        .lookup_keys
        .iter()
        .map(|(i, col)| key_cell(spec, col, cell(row, *i)))
        .collect::<Result<_, _>>()?;
    let doc_key = index
        .doc_key
        .as_ref()
        .map(|(i, col)| key_cell(spec, col, cell(row, *i)))
        .transpose()?;
    let request_values = index
        .features
        .iter()
        .map(|slot| match slot {
            Some((i, col)) => number_cell(col, cell(row, *i)),
            None => Ok(f64::NAN),
        })
        .collect::<Result<_, _>>()?;
    Ok(StandardRecord {
        lookup_keys,
        doc_key,
        request_values,
    })
}

/// A row's cell; decoding guarantees the width, a short row reads as null rather than panicking.
fn cell(row: &[Value], i: usize) -> &Value {
    static NULL: Value = Value::Null;
    row.get(i).unwrap_or(&NULL)
}

fn key_cell(spec: &PipelineSpec, column: &str, cell: &Value) -> Result<String, RecordError> {
    let raw = match cell {
        Value::String(s) => s.as_str(),
        other => {
            return Err(RecordError::new(
                Stage::Standardize,
                format!("{column} must be a text value, got {}", describe(other)),
            ))
        }
    };
    let key = match spec.rules_for(column) {
        Some(rules) => fold(raw, rules),
        None => raw.to_owned(),
    };
    if key.is_empty() {
        return Err(RecordError::new(
            Stage::Standardize,
            format!("{column} is empty"),
        ));
    }
    if key.chars().count() > MAX_KEY_CHARS {
        return Err(RecordError::new(
            Stage::Standardize,
            format!("{column} is longer than {MAX_KEY_CHARS} characters"),
        ));
    }
    Ok(key)
}

/// Reads a finite number from a cell, with a reason a person can act on when it is not one.
pub fn number_cell(column: &str, cell: &Value) -> Result<f64, RecordError> {
    match cell.as_f64() {
        Some(v) if v.is_finite() => Ok(v),
        _ => Err(RecordError::new(
            Stage::Standardize,
            format!("{column} must be a finite number, got {}", describe(cell)),
        )),
    }
}

/// A short, bounded description of a JSON value for error messages.
pub fn describe(cell: &Value) -> String {
    let text = match cell {
        Value::Null => return "null".into(),
        Value::Bool(b) => return format!("the boolean {b}"),
        Value::Number(n) => return format!("the number {n}"),
        Value::String(s) => format!("the text {s:?}"),
        Value::Array(_) => return "an array".into(),
        Value::Object(_) => return "an object".into(),
    };
    truncate_chars(&text, 64)
}

/// Cuts text to at most `max` characters, marking the cut.
pub fn truncate_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Applies text rules in order.
pub fn fold(text: &str, rules: &[TextRule]) -> String {
    let mut out = text.to_owned();
    for rule in rules {
        out = match rule {
            TextRule::Nfkc => out.nfkc().collect(),
            TextRule::Lowercase => out.to_lowercase(),
            TextRule::Trim => out.trim().to_owned(),
            TextRule::CollapseWhitespace => out.split_whitespace().collect::<Vec<_>>().join(" "),
            TextRule::StripPunctuation => out.replace(['.', ',', '\''], ""),
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn issuer_rules() -> Vec<TextRule> {
        PipelineSpec::banknote()
            .rules_for("issuer")
            .unwrap()
            .to_vec()
    }

    #[test]
    fn issuer_variants_fold_to_one_key() {
        let rules = issuer_rules();
        for raw in [
            "Federal Reserve",
            "federal  reserve ",
            " FEDERAL\tRESERVE",
            "Ｆｅｄｅｒａｌ Ｒｅｓｅｒｖｅ",
            "Federal Reserve.",
            "Federal\u{00A0}Reserve",
        ] {
            assert_eq!(fold(raw, &rules), "federal reserve", "for {raw:?}");
        }
    }

    #[test]
    fn folding_keeps_letters_it_must_not_merge() {
        let rules = issuer_rules();
        assert_eq!(fold("Banque de France", &rules), "banque de france");
        assert_ne!(
            fold("Bank of Japan", &rules),
            fold("Bank of Jamaica", &rules)
        );
        // The ligature "ﬁ" becomes "fi" under NFKC, as a person would read it.
        assert_eq!(fold("Suomen Pankki ﬁ", &rules), "suomen pankki fi");
    }

    #[test]
    fn a_row_is_standardized_by_column_name_not_position() {
        let spec = PipelineSpec::banknote();
        let columns: Vec<String> = [
            "skewness", "extra", "note", "id", "variance", "issuer", "scanner",
        ]
        .map(String::from)
        .to_vec();
        let index = ColumnIndex::new(&spec, &columns).unwrap();
        let row = [
            json!(8.5),
            json!("carried"),
            json!(" SN-000001 "),
            json!("r-1"),
            json!(3621.6),
            json!("FRB"),
            json!(" SC-07"),
        ];
        let rec = standardize_row(&spec, &index, &row).unwrap();
        assert_eq!(rec.lookup_keys, ["sc-07", "frb"]);
        assert_eq!(rec.doc_key.as_deref(), Some("SN-000001"));
        assert_eq!(rec.request_values[..2], [3621.6, 8.5]);
        assert!(rec.request_values[2].is_nan() && rec.request_values[3].is_nan());
    }

    #[test]
    fn a_missing_column_is_named() {
        let spec = PipelineSpec::banknote();
        let columns: Vec<String> = ["id", "note", "issuer", "scanner", "variance"]
            .map(String::from)
            .to_vec();
        let err = ColumnIndex::new(&spec, &columns).unwrap_err();
        assert!(err.contains("'skewness' is missing"), "{err}");
    }

    #[test]
    fn strings_and_nulls_where_numbers_go_are_record_errors() {
        for cell in [
            json!("NaN"),
            json!("3.2"),
            json!(null),
            json!({"$gt": 0}),
            json!([1]),
        ] {
            let err = number_cell("variance", &cell).unwrap_err();
            assert_eq!(err.stage, Stage::Standardize);
            assert!(
                err.reason.starts_with("variance must be a finite number"),
                "{err}"
            );
        }
        assert_eq!(number_cell("variance", &json!(-2.5)).unwrap(), -2.5);
    }

    #[test]
    fn operator_objects_never_become_keys() {
        let spec = PipelineSpec::banknote();
        let err = key_cell(&spec, "note", &json!({"$ne": null})).unwrap_err();
        assert_eq!(
            err.to_string(),
            "standardize: note must be a text value, got an object"
        );
    }

    #[test]
    fn long_text_is_cut_in_descriptions_on_a_char_boundary() {
        let long = "é".repeat(10_000);
        let d = describe(&json!(long));
        assert!(d.chars().count() <= 66, "{}", d.chars().count());
    }
}
