//! Decoding: a message body and its `content-encoding` attribute become a checked bundle.
//!
//! Everything that makes a bundle unreadable as a whole (not JSON, a wrong shape, a limit
//! exceeded) is a [`DecodeError`]: retrying cannot help, so the worker dead-letters it at once.
//! Problems of single records are left to the later stages, which answer them per record.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;

use super::compression::{decompress, ContentEncoding};
use super::message::{InputBundle, RequestBundle, SeedBundle};
use super::table::{CellRef, LenientRows, Table};
use crate::text::truncate_chars;

/// Size limits on what a bundle may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest body after decompression, in bytes (default 16 MiB).
    pub max_body_bytes: usize,
    /// Most rows per bundle (default 10 000).
    pub max_rows: usize,
    /// Longest string value in a row or a column name, in characters (default 1 024).
    pub max_string_chars: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 16 << 20,
            max_rows: 10_000,
            max_string_chars: 1024,
        }
    }
}

/// The longest bundle id, in characters (docs/contract.md section 1).
pub const MAX_BUNDLE_ID_CHARS: usize = 128;

/// Why a bundle cannot be read; it goes to the dead-letter queue with this reason.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{reason}")]
pub struct DecodeError {
    /// The bundle id, when it could be read.
    pub bundle_id: Option<String>,
    /// What is wrong and where, in words a person can act on.
    pub reason: String,
}

impl DecodeError {
    fn new(bundle_id: Option<&str>, reason: impl Into<String>) -> Self {
        Self {
            bundle_id: bundle_id.map(|id| truncate_chars(id, MAX_BUNDLE_ID_CHARS)),
            reason: reason.into(),
        }
    }
}

/// Decodes one message body.
pub fn decode(
    body: &str,
    content_encoding: Option<&str>,
    limits: &Limits,
) -> Result<InputBundle, DecodeError> {
    let encoding: ContentEncoding = content_encoding
        .unwrap_or("")
        .parse()
        .map_err(|e: String| DecodeError::new(None, e))?;
    if body.len() > limits.max_body_bytes {
        return Err(DecodeError::new(
            None,
            format!(
                "body is {} bytes, more than the limit of {}",
                body.len(),
                limits.max_body_bytes
            ),
        ));
    }
    let json =
        decompress(encoding, body, limits.max_body_bytes).map_err(|e| DecodeError::new(None, e))?;
    let body = Body::read(&json).map_err(|e| {
        let what = if e.is_data() {
            "a JSON object"
        } else {
            "valid JSON"
        };
        DecodeError::new(None, format!("body is not {what}: {e}"))
    })?;
    if body.bundle_id.is_some() {
        request_bundle(body, limits).map(InputBundle::Request)
    } else if body.batch_id.is_some() {
        seed_bundle(body, limits).map(InputBundle::Seed)
    } else {
        Err(DecodeError::new(
            None,
            "body has neither 'bundle_id' (v1 format) nor 'batch_id' (seed format)",
        ))
    }
}

/// The fields of a body in either format. The rows of a v1 bundle go straight into a compact
/// [`Table`]; the few other fields are small `Value`s, checked below with the bundle's own words.
#[derive(Default)]
struct Body {
    bundle_id: Option<Value>,
    model: Option<Value>,
    columns: Option<Value>,
    /// `Some(None)`: present but not an array.
    rows: Option<Option<Table>>,
    batch_id: Option<Value>,
    subjects: Option<Value>,
    features: Option<Value>,
}

impl Body {
    fn read(json: &[u8]) -> Result<Self, serde_json::Error> {
        let mut de = serde_json::Deserializer::from_slice(json);
        let body = de.deserialize_map(BodyVisitor)?;
        de.end()?;
        Ok(body)
    }
}

struct BodyVisitor;

impl<'de> Visitor<'de> for BodyVisitor {
    type Value = Body;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Body, A::Error> {
        use serde::de::Error;
        let mut body = Body::default();
        // A key given twice is refused: keeping either copy would silently drop the other's
        // records or id.
        fn once<T, E: Error>(slot: &mut Option<T>, name: &'static str, value: T) -> Result<(), E> {
            if slot.is_some() {
                return Err(E::duplicate_field(name));
            }
            *slot = Some(value);
            Ok(())
        }
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            match key.as_ref() {
                "rows" => once(&mut body.rows, "rows", map.next_value_seed(LenientRows)?)?,
                "bundle_id" => once(&mut body.bundle_id, "bundle_id", map.next_value()?)?,
                "model" => once(&mut body.model, "model", map.next_value()?)?,
                "columns" => once(&mut body.columns, "columns", map.next_value()?)?,
                "batch_id" => once(&mut body.batch_id, "batch_id", map.next_value()?)?,
                "subjects" => once(&mut body.subjects, "subjects", map.next_value()?)?,
                "features" => once(&mut body.features, "features", map.next_value()?)?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(body)
    }
}

fn bundle_id(value: Option<Value>, field: &str) -> Result<String, DecodeError> {
    let Some(Value::String(id)) = value else {
        return Err(DecodeError::new(
            None,
            format!("'{field}' must be a string"),
        ));
    };
    let chars = id.chars().count();
    if chars == 0 || chars > MAX_BUNDLE_ID_CHARS {
        return Err(DecodeError::new(
            Some(&id),
            format!("'{field}' has {chars} characters; it must have 1 to {MAX_BUNDLE_ID_CHARS}"),
        ));
    }
    if id.chars().any(char::is_control) {
        return Err(DecodeError::new(
            Some(&id),
            format!("'{field}' contains control characters"),
        ));
    }
    if let Some(c) = id.chars().find(|&c| crate::text::is_invisible(c)) {
        return Err(DecodeError::new(
            Some(&id),
            format!(
                "'{field}' contains the invisible character U+{:04X} (zero-width or bidirectional); an id must be printable, so that it reads as what it is",
                u32::from(c)
            ),
        ));
    }
    Ok(id)
}

fn request_bundle(body: Body, limits: &Limits) -> Result<RequestBundle, DecodeError> {
    let id = bundle_id(body.bundle_id, "bundle_id")?;
    let err = |reason: String| DecodeError::new(Some(&id), reason);
    let model = match body.model {
        None | Some(Value::Null) => None,
        Some(Value::String(m)) if m.chars().count() <= 128 => Some(m),
        Some(_) => {
            return Err(err(
                "'model' must be a string of at most 128 characters".into()
            ))
        }
    };
    let columns = string_list(body.columns, "columns", limits).map_err(err)?;
    if columns.is_empty() {
        return Err(err("'columns' is empty".into()));
    }
    if let Some(dup) = columns
        .iter()
        .enumerate()
        .find(|(i, c)| columns[..*i].contains(c))
    {
        return Err(err(format!("column '{}' appears twice", dup.1)));
    }
    let rows = match body.rows {
        Some(Some(rows)) => rows,
        Some(None) => return Err(err("'rows' must be an array of rows".into())),
        None => return Err(err("'rows' is missing".into())),
    };
    check_row_count(rows.len(), limits).map_err(err)?;
    check_rows(&rows, columns.len(), limits).map_err(err)?;
    Ok(RequestBundle {
        bundle_id: id,
        model,
        columns,
        rows,
    })
}

fn seed_bundle(body: Body, limits: &Limits) -> Result<SeedBundle, DecodeError> {
    let id = bundle_id(body.batch_id, "batch_id")?;
    let err = |reason: String| DecodeError::new(Some(&id), reason);
    let subjects = match body.subjects {
        Some(Value::Array(s)) => s,
        _ => return Err(err("'subjects' must be an array".into())),
    };
    let Some(Value::Array(rows)) = body.features else {
        return Err(err("'features' must be an array of feature vectors".into()));
    };
    check_row_count(rows.len(), limits).map_err(err)?;
    if subjects.len() != rows.len() {
        return Err(err(format!(
            "{} subjects for {} feature vectors",
            subjects.len(),
            rows.len()
        )));
    }
    let features = rows
        .into_iter()
        .enumerate()
        .map(|(i, row)| seed_row(i, row))
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    if let Some(w) = features.first().map(Vec::len) {
        if let Some(i) = features.iter().position(|r| r.len() != w) {
            return Err(err(format!(
                "feature vector {i} has {} values, the first has {w}",
                features[i].len()
            )));
        }
    }
    Ok(SeedBundle {
        batch_id: id,
        subjects,
        features,
    })
}

fn check_row_count(rows: usize, limits: &Limits) -> Result<(), String> {
    if rows > limits.max_rows {
        return Err(format!(
            "{rows} rows, more than the limit of {}",
            limits.max_rows
        ));
    }
    Ok(())
}

fn string_list(value: Option<Value>, field: &str, limits: &Limits) -> Result<Vec<String>, String> {
    let Some(Value::Array(items)) = value else {
        return Err(format!("'{field}' must be an array of strings"));
    };
    items
        .into_iter()
        .map(|v| match v {
            Value::String(s) if s.chars().count() <= limits.max_string_chars => Ok(s),
            Value::String(_) => Err(format!(
                "a name in '{field}' is longer than {} characters",
                limits.max_string_chars
            )),
            _ => Err(format!("'{field}' must hold only strings")),
        })
        .collect()
}

/// Every row is an array of `width` cells with no text longer than the limit; the first row
/// that is not is named.
fn check_rows(rows: &Table, width: usize, limits: &Limits) -> Result<(), String> {
    for (i, row) in rows.iter().enumerate() {
        if rows.first_non_array_row() == Some(i) {
            return Err(format!("row {i} is not an array"));
        }
        if row.len() != width {
            return Err(format!(
                "row {i} has {} values for {width} columns",
                row.len()
            ));
        }
        let too_long = |s: &str| {
            s.len() > limits.max_string_chars && s.chars().count() > limits.max_string_chars
        };
        if row
            .iter()
            .any(|c| matches!(c, CellRef::Text(s) if too_long(s)))
        {
            return Err(format!(
                "row {i} holds a text value longer than {} characters",
                limits.max_string_chars
            ));
        }
    }
    Ok(())
}

fn seed_row(i: usize, row: Value) -> Result<Vec<f64>, String> {
    let Value::Array(cells) = row else {
        return Err(format!("feature vector {i} is not an array"));
    };
    cells
        .iter()
        .map(|c| {
            c.as_f64().filter(|v| v.is_finite()).ok_or_else(|| {
                format!(
                    "feature vector {i} holds {}, not a finite number",
                    crate::text::describe(c)
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::compression::compress;
    use serde_json::json;

    fn v1() -> Value {
        json!({"bundle_id": "b-1", "model": "banknote",
               "columns": ["id", "note", "variance"],
               "rows": [["r-1", "SN-1", 1.5], ["r-2", "SN-2", -0.25]]})
    }

    fn reason(body: &str, enc: Option<&str>) -> String {
        decode(body, enc, &Limits::default()).unwrap_err().reason
    }

    #[test]
    fn a_v1_bundle_decodes_in_every_encoding() {
        let json = v1().to_string();
        for enc in [
            ContentEncoding::Identity,
            ContentEncoding::Gzip,
            ContentEncoding::Zstd,
        ] {
            let body = compress(enc, json.as_bytes());
            let InputBundle::Request(b) =
                decode(&body, enc.attribute(), &Limits::default()).unwrap()
            else {
                panic!("not a request bundle")
            };
            assert_eq!(b.bundle_id, "b-1");
            assert_eq!(b.rows.row(1).get(2).as_f64(), Some(-0.25));
        }
    }

    #[test]
    fn the_seed_format_decodes() {
        let body = r#"{"batch_id": "f38b", "subjects": ["dollar", "yen"],
                       "features": [[-2.1668, 1.5933, 0.045122, -1.678], [1, 2, 3, 4]]}"#;
        let InputBundle::Seed(b) = decode(body, None, &Limits::default()).unwrap() else {
            panic!("not a seed bundle")
        };
        assert_eq!(b.features[1], [1.0, 2.0, 3.0, 4.0]);
    }

    #[test]
    fn shape_errors_name_the_row() {
        let mut b = v1();
        b["rows"][1] = json!(["r-2", "SN-2"]);
        assert_eq!(
            reason(&b.to_string(), None),
            "row 1 has 2 values for 3 columns"
        );
        let mut b = v1();
        b["rows"] = json!("many");
        assert_eq!(
            reason(&b.to_string(), None),
            "'rows' must be an array of rows"
        );
    }

    #[test]
    fn limits_are_enforced() {
        let limits = Limits {
            max_rows: 1,
            ..Limits::default()
        };
        let err = decode(&v1().to_string(), None, &limits).unwrap_err();
        assert_eq!(err.reason, "2 rows, more than the limit of 1");
        assert_eq!(err.bundle_id.as_deref(), Some("b-1"));

        let mut b = v1();
        b["bundle_id"] = json!("x".repeat(10_000));
        let err = decode(&b.to_string(), None, &Limits::default()).unwrap_err();
        assert!(err.reason.contains("10000 characters"), "{}", err.reason);
        assert_eq!(
            err.bundle_id.unwrap().chars().count(),
            MAX_BUNDLE_ID_CHARS + 1
        );

        let mut b = v1();
        b["rows"][0][1] = json!("n".repeat(5000));
        assert!(reason(&b.to_string(), None).contains("longer than 1024"));
    }

    #[test]
    fn unreadable_bodies_are_errors() {
        assert!(reason("not json", None).starts_with("body is not valid JSON"));
        assert!(reason("[1,2]", None).starts_with("body is not a JSON object"));
        assert!(reason("{\"a\":NaN}", None).starts_with("body is not valid JSON"));
        assert!(reason(&v1().to_string(), Some("br")).contains("'br'"));
        assert!(reason(&v1().to_string(), Some("gzip")).contains("base64"));
        let nested = format!("{}{}", "[".repeat(300), "]".repeat(300));
        let body = format!(r#"{{"bundle_id":"b","columns":["id"],"rows":[[{nested}]]}}"#);
        assert!(reason(&body, None).contains("recursion limit"));
    }

    #[test]
    fn a_key_given_twice_is_refused_rather_than_one_copy_dropped() {
        let body = r#"{"bundle_id": "b", "columns": ["id"], "rows": [["r-1"]], "rows": [["r-2"]]}"#;
        let why = reason(body, None);
        assert!(why.contains("duplicate field `rows`"), "{why}");
        let body = r#"{"bundle_id": "a", "bundle_id": "b", "columns": ["id"], "rows": []}"#;
        assert!(reason(body, None).contains("duplicate field `bundle_id`"));
    }

    #[test]
    fn an_id_with_invisible_characters_is_not_printable() {
        for id in ["\u{200B}\u{200B}", "b-1\u{202E}", "\u{FEFF}b"] {
            let mut b = v1();
            b["bundle_id"] = json!(id);
            let why = reason(&b.to_string(), None);
            assert!(why.contains("invisible character U+"), "{id:?}: {why}");
        }
    }
}
