//! Decoding: a message body and its `content-encoding` attribute become a checked bundle.
//!
//! Everything that makes a bundle unreadable as a whole (not JSON, a wrong shape, a limit
//! exceeded) is a [`DecodeError`]: retrying cannot help, so the worker dead-letters it at once.
//! Problems of single records are left to the later stages, which answer them per record.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;

use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;

use super::compression::{decompress, ContentEncoding};
use super::message::{InputBundle, RequestBundle, SeedBundle};
use super::table::{Bounded, CellRef, Cursor, LenientRows, Table, TableLimits};
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
    /// Most values in a bundle's rows, nested values included (default 500 000): the memory a
    /// decoded bundle holds is bounded by this, not by its rows.
    pub max_cells: usize,
    /// Most columns, and values in a row (default 256).
    pub max_columns: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 16 << 20,
            max_rows: 10_000,
            max_string_chars: 1024,
            max_cells: 500_000,
            max_columns: 256,
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
    let json = mend_lone_surrogates(json);
    // A plain body that needed no mending is the message's own text, valid UTF-8 already.
    let text = (json.as_ptr() == body.as_ptr() && json.len() == body.len()).then_some(body);
    let seen = Seen::default();
    let body = Body::read(&json, text, limits, &seen).map_err(|e| seen.explain(&e))?;
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

/// JSON escapes text as UTF-16 code units, so `"\ud800"` is valid JSON to many producers, but a
/// lone surrogate is not a Unicode character and serde_json refuses the whole body for it. Each
/// lone one is rewritten to `\ufffd` (six bytes for six bytes, so positions in errors hold): the
/// body reads, and the one record whose key holds U+FFFD is refused on its own (a key must be
/// valid Unicode text) instead of the bundle.
fn mend_lone_surrogates(json: Cow<'_, [u8]>) -> Cow<'_, [u8]> {
    let lone = lone_surrogates(&json);
    if lone.is_empty() {
        return json;
    }
    let mut json = json.into_owned();
    for at in lone {
        json[at + 2..at + 6].copy_from_slice(b"fffd");
    }
    Cow::Owned(json)
}

/// Where each `\uXXXX` escape of a lone surrogate starts.
fn lone_surrogates(json: &[u8]) -> Vec<usize> {
    let unit = |at: usize| -> Option<u16> {
        let hex = json.get(at..at + 6)?.strip_prefix(b"\\u")?;
        if !hex.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        u16::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
    };
    let mut lone = Vec::new();
    let mut i = 0;
    while let Some(found) = json[i..].iter().position(|&b| b == b'\\') {
        let at = i + found;
        i = match unit(at) {
            Some(0xD800..=0xDBFF) if matches!(unit(at + 6), Some(0xDC00..=0xDFFF)) => at + 12,
            Some(0xD800..=0xDFFF) => {
                lone.push(at);
                at + 6
            }
            // Any other escape, `\\` included: skip it whole.
            _ => at + 2,
        };
    }
    lone
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
    /// Reads `json`; `text` is the same bytes when they are known to be UTF-8 already.
    fn read(
        json: &[u8],
        text: Option<&str>,
        limits: &Limits,
        seen: &Seen,
    ) -> Result<Self, serde_json::Error> {
        // Valid UTF-8 as a whole (every body an SQS message can carry), the text is not checked
        // again string by string; otherwise serde_json finds and names the bad bytes.
        match text.map_or_else(|| std::str::from_utf8(json), Ok) {
            Ok(text) => Self::read_from(serde_json::Deserializer::from_str(text), limits, seen),
            Err(_) => Self::read_from(serde_json::Deserializer::from_slice(json), limits, seen),
        }
    }

    fn read_from<'de, R: serde_json::de::Read<'de>>(
        mut de: serde_json::Deserializer<R>,
        limits: &Limits,
        seen: &Seen,
    ) -> Result<Self, serde_json::Error> {
        let body = de.deserialize_map(BodyVisitor { limits, seen })?;
        de.end()?;
        Ok(body)
    }
}

/// What reading a body had seen when it failed: the id and column names read so far, and where
/// in the rows it stopped. A refusal can then name the bundle, the row and the column.
#[derive(Default)]
struct Seen {
    bundle_id: RefCell<Option<String>>,
    columns: RefCell<Option<Vec<String>>>,
    rows: Cursor,
}

impl Seen {
    /// A refusal for a body that did not read, naming what can be named.
    fn explain(&self, e: &serde_json::Error) -> DecodeError {
        let id = self.bundle_id.borrow();
        let id = id.as_deref();
        if let Some(limit) = self.rows.over_limit() {
            return DecodeError::new(id, limit);
        }
        let what = if e.is_data() {
            "a JSON object"
        } else {
            "valid JSON"
        };
        let Some((row, cell)) = self.rows.at() else {
            return DecodeError::new(id, format!("body is not {what}: {e}"));
        };
        let column = match self.columns.borrow().as_ref().and_then(|c| c.get(cell)) {
            Some(name) => format!("column '{}' (value {cell})", crate::text::visible(name)),
            None => format!("value {cell}"),
        };
        let hint = if e.is_syntax() {
            "; JSON has no NaN or Infinity and its numbers stay within ±1.7e308: send null for a value that is missing or not a number"
        } else {
            ""
        };
        DecodeError::new(
            id,
            format!("body is not {what}: row {row}, {column}: {e}{hint}"),
        )
    }
}

struct BodyVisitor<'a> {
    limits: &'a Limits,
    seen: &'a Seen,
}

impl<'de> Visitor<'de> for BodyVisitor<'_> {
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
        // The seed format's fields share the cell budget of a v1 bundle's rows.
        let seed_left = std::cell::Cell::new(self.limits.max_cells);
        let seed_cells = |what| Bounded {
            left: &seed_left,
            cursor: &self.seen.rows,
            what,
            max: self.limits.max_cells,
            setting: "cells per bundle (ML_PIPELINE_MAX_CELLS)",
        };
        let rows = || LenientRows {
            limits: TableLimits {
                max_cells: self.limits.max_cells,
                max_columns: self.limits.max_columns,
            },
            cursor: &self.seen.rows,
        };
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            match key.as_ref() {
                "rows" => once(&mut body.rows, "rows", map.next_value_seed(rows())?)?,
                "bundle_id" => {
                    let id: Value = map.next_value()?;
                    if let Value::String(id) = &id {
                        *self.seen.bundle_id.borrow_mut() = Some(id.clone());
                    }
                    once(&mut body.bundle_id, "bundle_id", id)?;
                }
                "model" => once(&mut body.model, "model", map.next_value()?)?,
                "columns" => {
                    let left = std::cell::Cell::new(self.limits.max_columns);
                    let columns = map.next_value_seed(Bounded {
                        left: &left,
                        cursor: &self.seen.rows,
                        what: "'columns' holds",
                        max: self.limits.max_columns,
                        setting: "columns (ML_PIPELINE_MAX_COLUMNS)",
                    })?;
                    if let Value::Array(names) = &columns {
                        let names = names.iter().map(|n| n.as_str().unwrap_or("?").to_owned());
                        *self.seen.columns.borrow_mut() = Some(names.collect());
                    }
                    once(&mut body.columns, "columns", columns)?;
                }
                "batch_id" => once(&mut body.batch_id, "batch_id", map.next_value()?)?,
                "subjects" => once(
                    &mut body.subjects,
                    "subjects",
                    map.next_value_seed(seed_cells("'subjects' holds"))?,
                )?,
                "features" => once(
                    &mut body.features,
                    "features",
                    map.next_value_seed(seed_cells("'features' holds"))?,
                )?,
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
    if id.contains(char::REPLACEMENT_CHARACTER) {
        return Err(DecodeError::new(
            Some(&id),
            format!("'{field}' is not valid Unicode text (it holds a lone UTF-16 surrogate such as \\ud800, or U+FFFD); send the id as valid UTF-8"),
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

    #[test]
    fn a_lone_surrogate_becomes_u_fffd_and_a_valid_pair_is_kept() {
        let body = r#"{"bundle_id": "b", "columns": ["id", "note"],
                       "rows": [["r-1", "SN\ud800-1"], ["r-2", "\ud83d\ude00"], ["r-3", "\\ud800"], ["r-4", "x\udc00"]]}"#;
        let InputBundle::Request(b) = decode(body, None, &Limits::default()).unwrap() else {
            panic!("not a request bundle")
        };
        assert_eq!(b.rows.row(0).get(1), CellRef::Text("SN\u{FFFD}-1"));
        assert_eq!(b.rows.row(1).get(1), CellRef::Text("\u{1F600}"));
        assert_eq!(b.rows.row(2).get(1), CellRef::Text("\\ud800"));
        assert_eq!(b.rows.row(3).get(1), CellRef::Text("x\u{FFFD}"));
        let body = r#"{"bundle_id": "b\udbff", "columns": ["id"], "rows": []}"#;
        let why = reason(body, None);
        assert!(why.contains("not valid Unicode"), "{why}");
    }

    #[test]
    fn a_number_json_cannot_hold_names_its_row_and_column() {
        for bad in ["NaN", "Infinity", "-Infinity", "1e309"] {
            let body = format!(
                r#"{{"bundle_id": "b-7", "columns": ["id", "note", "variance"],
                    "rows": [["r-1", "SN-1", 1.5], ["r-2", "SN-2", {bad}]]}}"#
            );
            let err = decode(&body, None, &Limits::default()).unwrap_err();
            assert_eq!(err.bundle_id.as_deref(), Some("b-7"), "{bad}");
            assert!(
                err.reason.contains("row 1, column 'variance' (value 2)"),
                "{bad}: {}",
                err.reason
            );
            assert!(err.reason.contains("send null"), "{bad}: {}", err.reason);
        }
        // Columns after the rows: the value is named by its position only.
        let body = r#"{"bundle_id": "b", "rows": [["r-1", NaN]], "columns": ["id", "x"]}"#;
        assert!(reason(body, None).contains("row 0, value 1:"));
    }

    #[test]
    fn an_unreadable_body_still_names_its_bundle() {
        let body = r#"{"bundle_id": "b-9", "columns": ["id"], "rows": [["r-1"]"#;
        let err = decode(body, None, &Limits::default()).unwrap_err();
        assert_eq!(err.bundle_id.as_deref(), Some("b-9"));
    }

    #[test]
    fn cells_and_columns_are_limited_while_reading() {
        let limits = Limits {
            max_cells: 100,
            max_columns: 8,
            ..Limits::default()
        };
        let wide = |rows: usize, width: usize| {
            serde_json::json!({"bundle_id": "w", "columns": (0..width).map(|c| format!("c{c}")).collect::<Vec<_>>(),
                               "rows": vec![vec![0; width]; rows]})
            .to_string()
        };
        assert!(decode(&wide(12, 8), None, &limits).is_ok());
        let err = decode(&wide(13, 8), None, &limits).unwrap_err();
        assert_eq!(
            err.reason,
            "the rows hold more than 100 values, the limit of cells per bundle (ML_PIPELINE_MAX_CELLS)"
        );
        assert_eq!(err.bundle_id.as_deref(), Some("w"));
        let err = decode(&wide(1, 9), None, &limits).unwrap_err();
        assert!(
            err.reason.contains("'columns' holds more than 8 values"),
            "{}",
            err.reason
        );
        let body = r#"{"bundle_id": "w", "rows": [[0,0,0,0,0,0,0,0,0]], "columns": ["a"]}"#;
        assert!(
            reason_with(body, &limits).starts_with("row 0 has more than 8 values"),
            "{}",
            reason_with(body, &limits)
        );
        // A nested array counts its values: it cannot hide a wide row inside one cell.
        let nested = format!(
            r#"{{"bundle_id": "w", "columns": ["a"], "rows": [[[{}]]]}}"#,
            vec!["0"; 200].join(",")
        );
        assert!(reason_with(&nested, &limits).starts_with("the rows hold more than 100 values"));
        // The seed format shares the cell limit.
        let seed = serde_json::json!({"batch_id": "s", "subjects": ["a"], "features": vec![vec![0; 4]; 30]});
        assert!(reason_with(&seed.to_string(), &limits)
            .starts_with("'features' holds more than 100 values"));
    }

    fn reason_with(body: &str, limits: &Limits) -> String {
        decode(body, None, limits).unwrap_err().reason
    }
}
