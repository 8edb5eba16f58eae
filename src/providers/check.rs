//! One delivered row checked against its provider's shape in the pipeline spec, and turned into
//! the document content that is stored: keys sorted at every depth, so that the same content
//! always gives the same bytes and the same content hash, whatever order the provider wrote.

use mongodb::bson::{Bson, Document};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::spec::{PipelineSpec, Road};

/// MongoDB's largest document (`maxBsonObjectSize`).
pub const MAX_DOCUMENT_BYTES: usize = 16 * 1024 * 1024;

/// Room kept below [`MAX_DOCUMENT_BYTES`] for the fields the store adds (`_id`, `_version`,
/// `_delivery`, `_content`, `_replaces`, and in history `_replaced_by`, `_replaced_at`).
const META_ALLOWANCE: usize = 1024;

/// Field names the store writes into every document; a delivered row may not carry them.
pub const RESERVED_FIELDS: [&str; 6] = [
    "_version",
    "_delivery",
    "_content",
    "_replaces",
    "_replaced_by",
    "_replaced_at",
];

/// What one provider's documents must hold, read from the pipeline spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderShape {
    /// The provider's name, as in the spec's `documents.providers`.
    pub provider: String,
    /// The document field holding the record key (`note_id`).
    pub key_field: String,
    /// The document field naming the provider (`provider`).
    pub provider_field: String,
    /// Every field this provider supplies for a feature: (feature name, dotted path).
    pub fields: Vec<(String, String)>,
}

/// A provider the spec does not name: refused before anything is read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("provider '{provider}' is not in spec {spec} (known: {known})")]
pub struct UnknownProvider {
    /// The name asked for.
    pub provider: String,
    /// The spec's name.
    pub spec: String,
    /// The providers the spec names, comma-separated.
    pub known: String,
}

impl ProviderShape {
    /// The shape of `provider`'s documents in `spec`.
    pub fn from_spec(spec: &PipelineSpec, provider: &str) -> Result<Self, UnknownProvider> {
        let unknown = |known: String| UnknownProvider {
            provider: provider.to_owned(),
            spec: spec.name.clone(),
            known,
        };
        let Some(docs) = &spec.documents else {
            return Err(unknown("none: the spec reads no provider documents".into()));
        };
        if !docs.providers.iter().any(|p| p == provider) {
            return Err(unknown(docs.providers.join(", ")));
        }
        let fields = spec
            .features
            .iter()
            .filter_map(|f| match &f.road {
                Road::Document { providers, .. } => providers
                    .get(provider)
                    .map(|field| (f.name.clone(), field.path.clone())),
                _ => None,
            })
            .collect();
        Ok(Self {
            provider: provider.to_owned(),
            key_field: docs.key_field.clone(),
            provider_field: docs.provider_field.clone(),
            fields,
        })
    }

    /// The current document's `_id` for a key: `provider:key`, as the fixtures have always used.
    pub fn document_id(&self, key: &str) -> String {
        format!("{}:{key}", self.provider)
    }

    /// Whether a dotted path is one of the feature fields (a CSV cell there is read as a number).
    pub fn is_feature_path(&self, path: &str) -> bool {
        self.fields.iter().any(|(_, p)| p == path)
    }
}

/// Why one row was refused; the row is counted, listed with its line, and never written.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    /// The line is not JSON (JSONL), or a CSV record could not be read.
    #[error("not a readable row: {0}")]
    Unreadable(String),
    /// The line is longer than the reader takes.
    #[error("the line is longer than {limit} bytes")]
    LineTooLong { limit: usize },
    /// The row is JSON but not an object.
    #[error("the row is not a JSON object")]
    NotAnObject,
    /// The key field is absent.
    #[error("no key field '{field}'")]
    MissingKey { field: String },
    /// The key field is there but not a non-empty string.
    #[error("key field '{field}' is {found}, not a non-empty string")]
    BadKey { field: String, found: String },
    /// The row names another provider than the delivery's.
    #[error("the row's '{field}' is {found:?}, but this delivery is for provider '{expected}'")]
    OtherProvider {
        field: String,
        found: String,
        expected: String,
    },
    /// The row carries an `_id` that is not the one the store gives its key.
    #[error("the row's _id {found} is not {expected}")]
    OtherId { found: String, expected: String },
    /// The row carries a field the store writes itself.
    #[error("field '{field}' is reserved for the store's versioning")]
    ReservedField { field: String },
    /// A field the provider supplies for a feature is absent.
    #[error("no field '{path}' (feature {feature})")]
    MissingField { feature: String, path: String },
    /// A feature field is not a number.
    #[error("field '{path}' is {found}, not a number")]
    NotANumber { path: String, found: String },
    /// A feature field is NaN or infinite (CSV can say `NaN` or `inf`; JSON cannot).
    #[error("field '{path}' is {text}, not a finite number")]
    NotFinite { path: String, text: String },
    /// A key starts with `$`: MongoDB would read it as an operator.
    #[error("key '{path}' starts with '$'")]
    DollarKey { path: String },
    /// A key contains a `.`: MongoDB would read it as a path.
    #[error("key '{path}' contains '.'")]
    DottedKey { path: String },
    /// The document would be larger than MongoDB takes.
    #[error("the document is {bytes} bytes of BSON, over the {limit} byte limit")]
    TooLarge { bytes: usize, limit: usize },
    /// The same key appears more than once in the delivery; every occurrence is refused,
    /// since nothing says which one is right.
    #[error("key {key:?} appears more than once in this delivery (also on line {other_line})")]
    DuplicateKey { key: String, other_line: u64 },
}

impl Refusal {
    /// The kind of refusal in a few words, for counts by reason.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unreadable(_) => "unreadable",
            Self::LineTooLong { .. } => "line too long",
            Self::NotAnObject => "not an object",
            Self::MissingKey { .. } | Self::BadKey { .. } => "bad key",
            Self::OtherProvider { .. } => "another provider's row",
            Self::OtherId { .. } => "wrong _id",
            Self::ReservedField { .. } => "reserved field",
            Self::MissingField { .. } => "missing field",
            Self::NotANumber { .. } => "not a number",
            Self::NotFinite { .. } => "NaN or infinite",
            Self::DollarKey { .. } => "'$' key",
            Self::DottedKey { .. } => "dotted key",
            Self::TooLarge { .. } => "over 16 MiB",
            Self::DuplicateKey { .. } => "duplicate key",
        }
    }
}

/// A row that passed every check: its key, the content to store, and the content's hash.
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    /// The record key (`SN-000001`).
    pub key: String,
    /// The document as stored, without `_id` and the store's fields, keys sorted.
    pub content: Document,
    /// `sha256` hex of `content`'s BSON bytes: equal content, equal hash.
    pub content_hash: String,
}

/// Checks one row of a delivery for `shape` and builds its stored content.
pub fn check_row(shape: &ProviderShape, row: Value) -> Result<Accepted, Refusal> {
    let Value::Object(mut map) = row else {
        return Err(Refusal::NotAnObject);
    };
    let key = match map.get(&shape.key_field) {
        None => {
            return Err(Refusal::MissingKey {
                field: shape.key_field.clone(),
            })
        }
        Some(Value::String(k)) if !k.is_empty() => k.clone(),
        Some(other) => {
            return Err(Refusal::BadKey {
                field: shape.key_field.clone(),
                found: describe(other),
            })
        }
    };
    match map.get(&shape.provider_field) {
        None => {
            map.insert(
                shape.provider_field.clone(),
                Value::String(shape.provider.clone()),
            );
        }
        Some(Value::String(p)) if *p == shape.provider => {}
        Some(other) => {
            return Err(Refusal::OtherProvider {
                field: shape.provider_field.clone(),
                found: match other {
                    Value::String(s) => s.clone(),
                    other => describe(other),
                },
                expected: shape.provider.clone(),
            })
        }
    }
    let id = shape.document_id(&key);
    if let Some(found) = map.remove("_id") {
        if found.as_str() != Some(id.as_str()) {
            return Err(Refusal::OtherId {
                found: found.to_string(),
                expected: id,
            });
        }
    }
    if let Some(field) = RESERVED_FIELDS.iter().find(|f| map.contains_key(**f)) {
        return Err(Refusal::ReservedField {
            field: (*field).to_owned(),
        });
    }
    for (feature, path) in &shape.fields {
        check_number(&map, feature, path)?;
    }
    let content = to_document(map, "")?;
    let bytes = content_bytes(&content);
    let size = bytes.len() + id.len() + META_ALLOWANCE;
    if size > MAX_DOCUMENT_BYTES {
        return Err(Refusal::TooLarge {
            bytes: bytes.len(),
            limit: MAX_DOCUMENT_BYTES - META_ALLOWANCE - id.len(),
        });
    }
    Ok(Accepted {
        key,
        content_hash: hex_sha256(&bytes),
        content,
    })
}

/// The content hash of a stored document (current or history): the hash its content had when
/// it was delivered. Documents written before versioning (by `fixtures load`) carry no
/// `_content`; theirs is computed the same way [`check_row`] computes it.
pub fn stored_content_hash(doc: &Document) -> String {
    if let Ok(hash) = doc.get_str("_content") {
        return hash.to_owned();
    }
    let mut content = Document::new();
    for (k, v) in doc {
        if k != "_id" && !RESERVED_FIELDS.contains(&k.as_str()) {
            content.insert(k.clone(), v.clone());
        }
    }
    hex_sha256(&content_bytes(&sorted(content)))
}

fn check_number(
    map: &serde_json::Map<String, Value>,
    feature: &str,
    path: &str,
) -> Result<(), Refusal> {
    let mut parts = path.split('.');
    let first = parts.next().unwrap_or_default();
    let mut current = map.get(first);
    for part in parts {
        current = current.and_then(|v| v.get(part));
    }
    match current {
        None => Err(Refusal::MissingField {
            feature: feature.to_owned(),
            path: path.to_owned(),
        }),
        // serde_json holds no NaN or infinity, so a JSON number is always finite.
        Some(Value::Number(_)) => Ok(()),
        Some(other) => Err(Refusal::NotANumber {
            path: path.to_owned(),
            found: describe(other),
        }),
    }
}

/// A JSON object as BSON with its keys sorted, refusing keys MongoDB would misread.
fn to_document(map: serde_json::Map<String, Value>, at: &str) -> Result<Document, Refusal> {
    let mut entries: Vec<(String, Value)> = map.into_iter().collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let mut doc = Document::new();
    for (key, value) in entries {
        let path = if at.is_empty() {
            key.clone()
        } else {
            format!("{at}.{key}")
        };
        if key.starts_with('$') {
            return Err(Refusal::DollarKey { path });
        }
        if key.contains('.') {
            return Err(Refusal::DottedKey { path });
        }
        let value = to_bson(value, &path)?;
        doc.insert(key, value);
    }
    Ok(doc)
}

fn to_bson(value: Value, path: &str) -> Result<Bson, Refusal> {
    Ok(match value {
        Value::Null => Bson::Null,
        Value::Bool(b) => Bson::Boolean(b),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Bson::Int64(i),
            (None, Some(f)) => Bson::Double(f),
            (None, None) => Bson::String(n.to_string()),
        },
        Value::String(s) => Bson::String(s),
        Value::Array(items) => Bson::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, v)| to_bson(v, &format!("{path}.{i}")))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Bson::Document(to_document(map, path)?),
    })
}

/// A stored document with its keys sorted at every depth, as [`to_document`] builds them.
fn sorted(doc: Document) -> Document {
    let mut entries: Vec<(String, Bson)> = doc.into_iter().collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    entries
        .into_iter()
        .map(|(k, v)| (k, sorted_bson(v)))
        .collect()
}

fn sorted_bson(value: Bson) -> Bson {
    match value {
        Bson::Document(d) => Bson::Document(sorted(d)),
        Bson::Array(items) => Bson::Array(items.into_iter().map(sorted_bson).collect()),
        // Integers read back from the server may be Int32; delivered ones are always Int64.
        Bson::Int32(i) => Bson::Int64(i64::from(i)),
        other => other,
    }
}

fn content_bytes(doc: &Document) -> Vec<u8> {
    let mut bytes = Vec::new();
    doc.to_writer(&mut bytes)
        .expect("writing BSON into memory cannot fail");
    bytes
}

fn hex_sha256(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A short description of a JSON value for a refusal ("the text \"abc\"", "null", "an object").
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the text {:?}", crate::text::truncate_chars(s, 32)),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn aurum() -> ProviderShape {
        ProviderShape::from_spec(&PipelineSpec::banknote(), "aurum").unwrap()
    }

    fn refusal(row: Value) -> Refusal {
        check_row(&aurum(), row).unwrap_err()
    }

    fn good() -> Value {
        json!({"note_id": "SN-1", "scan": {"kurtosis": 1.5, "entropy": -0.25}, "resolution_dpi": 600})
    }

    #[test]
    fn the_shape_comes_from_the_spec_and_an_unknown_provider_is_named() {
        let shape = aurum();
        assert_eq!(
            shape.fields,
            [
                ("curtosis".to_owned(), "scan.kurtosis".to_owned()),
                ("entropy".to_owned(), "scan.entropy".to_owned())
            ]
        );
        let err = ProviderShape::from_spec(&PipelineSpec::banknote(), "argent").unwrap_err();
        assert_eq!(
            err.to_string(),
            "provider 'argent' is not in spec banknote (known: aurum, lumen)"
        );
    }

    #[test]
    fn a_good_row_is_accepted_with_its_provider_and_sorted_keys() {
        let accepted = check_row(&aurum(), good()).unwrap();
        assert_eq!(accepted.key, "SN-1");
        assert_eq!(accepted.content.get_str("provider").unwrap(), "aurum");
        let keys: Vec<&String> = accepted.content.keys().collect();
        assert_eq!(keys, ["note_id", "provider", "resolution_dpi", "scan"]);
        // Order in the delivery does not change the content hash.
        let reordered: Value = serde_json::from_str(
            r#"{"scan": {"entropy": -0.25, "kurtosis": 1.5}, "resolution_dpi": 600, "provider": "aurum", "_id": "aurum:SN-1", "note_id": "SN-1"}"#,
        )
        .unwrap();
        assert_eq!(
            check_row(&aurum(), reordered).unwrap().content_hash,
            accepted.content_hash
        );
        let mut stored = accepted.content.clone();
        stored.insert("_id", "aurum:SN-1");
        stored.insert("_version", 3_i64);
        assert_eq!(
            stored_content_hash(&stored),
            accepted.content_hash,
            "a stored document without _content hashes like its delivered row"
        );
    }

    #[test]
    fn dollar_and_dotted_keys_are_refused_at_any_depth() {
        let mut row = good();
        row["scan"]["$where"] = json!(1);
        assert_eq!(
            refusal(row),
            Refusal::DollarKey {
                path: "scan.$where".into()
            }
        );
        let mut row = good();
        row["extra"] = json!([{"a.b": 1}]);
        assert_eq!(
            refusal(row),
            Refusal::DottedKey {
                path: "extra.0.a.b".into()
            }
        );
        let mut row = good();
        row["$set"] = json!({});
        assert!(matches!(refusal(row), Refusal::DollarKey { .. }));
    }

    #[test]
    fn missing_and_non_numeric_fields_name_their_path() {
        let mut row = good();
        row["scan"].as_object_mut().unwrap().remove("entropy");
        assert_eq!(
            refusal(row),
            Refusal::MissingField {
                feature: "entropy".into(),
                path: "scan.entropy".into()
            }
        );
        let mut row = good();
        row["scan"]["kurtosis"] = json!("1.5");
        assert_eq!(
            refusal(row).to_string(),
            "field 'scan.kurtosis' is the text \"1.5\", not a number"
        );
        let mut row = good();
        row["scan"]["kurtosis"] = Value::Null;
        assert!(matches!(refusal(row), Refusal::NotANumber { .. }));
    }

    #[test]
    fn json_cannot_carry_nan_or_infinity() {
        // No NaN literal, and an out-of-range number is not JSON at all: the reader refuses the
        // line as unreadable before it gets here (CSV's NaN and inf are refused by the reader).
        assert!(serde_json::from_str::<Value>(r#"{"x": NaN}"#).is_err());
        assert!(serde_json::from_str::<Value>(r#"{"x": 1e999}"#).is_err());
    }

    #[test]
    fn keys_ids_and_providers_must_be_right() {
        let mut row = good();
        row["note_id"] = json!(17);
        assert_eq!(
            refusal(row).to_string(),
            "key field 'note_id' is the number 17, not a non-empty string"
        );
        let mut row = good();
        row["note_id"] = json!("");
        assert!(matches!(refusal(row), Refusal::BadKey { .. }));
        let mut row = good();
        row.as_object_mut().unwrap().remove("note_id");
        assert!(matches!(refusal(row), Refusal::MissingKey { .. }));
        let mut row = good();
        row["provider"] = json!("lumen");
        assert_eq!(
            refusal(row).to_string(),
            "the row's 'provider' is \"lumen\", but this delivery is for provider 'aurum'"
        );
        let mut row = good();
        row["_id"] = json!("aurum:SN-2");
        assert!(matches!(refusal(row), Refusal::OtherId { .. }));
        let mut row = good();
        row["_version"] = json!(9);
        assert!(matches!(refusal(row), Refusal::ReservedField { .. }));
        assert_eq!(refusal(json!([1, 2])), Refusal::NotAnObject);
    }

    #[test]
    fn a_document_over_16_mib_is_refused() {
        let mut row = good();
        row["blob"] = json!("x".repeat(MAX_DOCUMENT_BYTES));
        assert!(
            matches!(refusal(row), Refusal::TooLarge { bytes, .. } if bytes > MAX_DOCUMENT_BYTES)
        );
        let mut row = good();
        row["blob"] = json!("x".repeat(MAX_DOCUMENT_BYTES - 4096));
        assert!(check_row(&aurum(), row).is_ok(), "just under the limit");
    }
}
