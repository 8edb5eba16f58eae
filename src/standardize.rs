//! Standardize: business rules that turn a raw request row into clean keys and numbers.
//!
//! Free text (issuer names) is folded by the spec's rules so that "Federal Reserve",
//! "federal  reserve " and "ＦＥＤＥＲＡＬ ＲＥＳＥＲＶＥ" meet the same alias. Numbers are checked to be
//! finite numbers, never strings that look like numbers. A row that breaks a rule becomes a
//! per-record error; nothing here panics on input.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::BuildHasher;

use hashbrown::HashTable;
use unicode_normalization::UnicodeNormalization;

use crate::bundle::table::{CellRef, Row};
use crate::bundle::validate::ColumnIndex;

use crate::record::{RecordError, RecordErrorKind, Stage};
use crate::spec::{PipelineSpec, TextRule};

/// The longest key (note id, scanner, issuer text) accepted, in characters.
pub const MAX_KEY_CHARS: usize = 256;

/// A hash map keyed by short strings, with a fast non-cryptographic hasher: keys come from one
/// batch in hand, and the maps live only as long as it.
pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The distinct standardized keys of one column over a batch, each with a dense id.
///
/// Folding runs once per distinct raw text, not once per record, and the distinct keys are
/// exactly what enrichment asks its source for.
#[derive(Debug)]
pub struct KeyTable<'b> {
    column: &'b str,
    rules: Option<&'b [TextRule]>,
    /// Raw text -> its key id, or why it cannot be a key; found by the raw text's hash.
    by_raw: HashTable<(&'b str, Result<u32, RecordError>)>,
    /// The ids of `keys`, found by the key's hash (different raw texts can fold to one key);
    /// the key text itself is stored once, in `keys`.
    by_key: HashTable<u32>,
    hasher: foldhash::fast::RandomState,
    keys: Vec<String>,
}

impl<'b> KeyTable<'b> {
    /// An empty table for `column`, folded by the spec's rules for it.
    pub fn new(spec: &'b PipelineSpec, column: &'b str) -> Self {
        Self {
            column,
            rules: spec.rules_for(column),
            by_raw: HashTable::new(),
            by_key: HashTable::new(),
            hasher: foldhash::fast::RandomState::default(),
            keys: Vec::new(),
        }
    }

    /// Room for `keys` distinct raw texts and keys without growing.
    fn reserve(&mut self, keys: usize) {
        let (table, hasher) = (&self.keys, &self.hasher);
        self.by_raw.reserve(keys, |(raw, _)| hasher.hash_one(*raw));
        self.by_key
            .reserve(keys, |&id| hasher.hash_one(table[id as usize].as_str()));
        self.keys.reserve(keys);
    }

    /// The id of a cell's standardized key, or why the cell cannot be a key.
    pub fn intern(&mut self, cell: CellRef<'b>) -> Result<u32, RecordError> {
        let CellRef::Text(raw) = cell else {
            return Err(RecordError::new(
                Stage::Standardize,
                RecordErrorKind::NotText {
                    column: self.column.to_string(),
                },
                format!(
                    "{} must be a text value, got {}",
                    self.column,
                    cell.describe()
                ),
            ));
        };
        let hash = self.hasher.hash_one(raw);
        if let Some((_, known)) = self.by_raw.find(hash, |(r, _)| *r == raw) {
            return known.clone();
        }
        let id = standard_key(self.column, self.rules, raw).map(|key| {
            // Without rules the key is the raw text, and so is its hash.
            let key_hash = match self.rules {
                None => hash,
                Some(_) => self.hasher.hash_one(key.as_str()),
            };
            self.id_of(key, key_hash)
        });
        let hasher = &self.hasher;
        self.by_raw
            .insert_unique(hash, (raw, id.clone()), |(r, _)| hasher.hash_one(*r));
        id
    }

    /// The id of a standardized key whose hash is `hash`, new or already seen.
    fn id_of(&mut self, key: String, hash: u64) -> u32 {
        let keys = &self.keys;
        if let Some(&id) = self.by_key.find(hash, |&id| keys[id as usize] == key) {
            return id;
        }
        let id = self.keys.len() as u32;
        let (keys, hasher) = (&self.keys, &self.hasher);
        self.by_key
            .insert_unique(hash, id, |&id| hasher.hash_one(keys[id as usize].as_str()));
        self.keys.push(key);
        id
    }

    /// The standardized keys, indexed by id.
    pub fn keys(&self) -> &[String] {
        &self.keys
    }

    /// The standardized key of an id.
    pub fn key(&self, id: u32) -> &str {
        &self.keys[id as usize]
    }
}

/// A batch's records after standardization: key ids and request numbers, stored flat.
#[derive(Debug)]
pub struct StandardBatch<'b> {
    /// One key table per spec lookup, in the spec's lookup order.
    pub lookups: Vec<KeyTable<'b>>,
    /// The provider-document keys, when the spec has documents.
    pub documents: Option<KeyTable<'b>>,
    /// Per record: its lookup key ids, then its document key id.
    key_ids: Vec<u32>,
    /// Per record: one value per feature (NaN for features not read from the request).
    values: Vec<f64>,
    key_stride: usize,
    value_stride: usize,
    /// Records standardized so far.
    len: u32,
}

/// One standardized record of a [`StandardBatch`].
#[derive(Debug, Clone, Copy)]
pub struct StandardRecord<'a> {
    /// One key id per lookup of the spec, in the spec's lookup order.
    pub lookup_keys: &'a [u32],
    /// The provider-document key id, when the spec has documents.
    pub doc_key: Option<u32>,
    /// One value per feature: the request's number for request roads, NaN for the others.
    pub request_values: &'a [f64],
}

/// A standardized record's place in its [`StandardBatch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordIndex(u32);

impl<'b> StandardBatch<'b> {
    /// An empty batch for `spec`.
    pub fn new(spec: &'b PipelineSpec) -> Self {
        let lookups: Vec<KeyTable<'b>> = spec
            .lookups
            .iter()
            .map(|l| KeyTable::new(spec, &l.key_from))
            .collect();
        let documents = spec
            .documents
            .as_ref()
            .map(|d| KeyTable::new(spec, &d.key_from));
        Self {
            key_stride: lookups.len() + usize::from(documents.is_some()),
            value_stride: spec.features.len(),
            lookups,
            documents,
            key_ids: Vec::new(),
            values: Vec::new(),
            len: 0,
        }
    }

    /// An empty batch for `spec` with room for `records` records. The provider-document keys
    /// (one note per record, mostly distinct) get room for as many keys; the lookups' keys (a
    /// few scanners and issuers) grow as they come.
    pub fn with_capacity(spec: &'b PipelineSpec, records: usize) -> Self {
        let mut batch = Self::new(spec);
        if let Some(documents) = &mut batch.documents {
            documents.reserve(records);
        }
        batch.key_ids.reserve(records * batch.key_stride);
        batch.values.reserve(records * batch.value_stride);
        batch
    }

    /// Standardizes one row whose columns are laid out as `index` says.
    pub fn standardize_row(
        &mut self,
        index: &ColumnIndex,
        row: Row<'b>,
    ) -> Result<RecordIndex, RecordError> {
        let (keys_at, values_at) = (self.key_ids.len(), self.values.len());
        if let Err(e) = self.push_row(index, row) {
            self.key_ids.truncate(keys_at);
            self.values.truncate(values_at);
            return Err(e);
        }
        self.len += 1;
        Ok(RecordIndex(self.len - 1))
    }

    fn push_row(&mut self, index: &ColumnIndex, row: Row<'b>) -> Result<(), RecordError> {
        for (table, &i) in self.lookups.iter_mut().zip(&index.lookup_keys) {
            self.key_ids.push(table.intern(row.get(i))?);
        }
        if let (Some(table), Some(i)) = (&mut self.documents, index.doc_key) {
            self.key_ids.push(table.intern(row.get(i))?);
        }
        for slot in &index.features {
            self.values.push(match slot {
                Some((i, col)) => number_cell(col, row.get(*i))?,
                None => f64::NAN,
            });
        }
        Ok(())
    }

    /// A standardized record.
    pub fn record(&self, r: RecordIndex) -> StandardRecord<'_> {
        let r = r.0 as usize;
        let keys = &self.key_ids[r * self.key_stride..(r + 1) * self.key_stride];
        let n_lookups = self.lookups.len();
        StandardRecord {
            lookup_keys: &keys[..n_lookups],
            doc_key: keys.get(n_lookups).copied(),
            request_values: &self.values[r * self.value_stride..(r + 1) * self.value_stride],
        }
    }
}

/// A raw text's standardized key: folded by the rules, non-empty and not too long.
fn standard_key(
    column: &str,
    rules: Option<&[TextRule]>,
    raw: &str,
) -> Result<String, RecordError> {
    let key = match rules {
        Some(rules) => fold(raw, rules),
        None => raw.to_owned(),
    };
    if key.is_empty() {
        return Err(RecordError::new(
            Stage::Standardize,
            RecordErrorKind::Empty {
                column: column.to_owned(),
            },
            format!("{column} is empty"),
        ));
    }
    // Printable ASCII (most keys) holds neither a control character nor U+FFFD, and its length
    // in characters is its length in bytes: one pass over the bytes answers every check below.
    if key.len() <= MAX_KEY_CHARS && key.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Ok(key);
    }
    // PostgreSQL refuses NUL in text and no reference key holds a control character: such a
    // key is the record's own problem, never the source's (one record must not fail a batch).
    if let Some((at, c)) = key.chars().enumerate().find(|(_, c)| c.is_control()) {
        return Err(RecordError::new(
            Stage::Standardize,
            RecordErrorKind::ControlCharacter {
                column: column.to_owned(),
            },
            format!(
                "{column} contains the control character U+{:04X} at character {}; a key must be printable text",
                u32::from(c),
                at + 1
            ),
        ));
    }
    // A lone UTF-16 surrogate reaches here as U+FFFD (see bundle::decode): no source can hold
    // what the producer meant, so the record is refused, not looked up as a different key.
    if let Some(at) = key.chars().position(|c| c == char::REPLACEMENT_CHARACTER) {
        return Err(RecordError::new(
            Stage::Standardize,
            RecordErrorKind::NotUnicode {
                column: column.to_owned(),
            },
            format!(
                "{column} is not valid Unicode text at character {} (a lone UTF-16 surrogate such as \\ud800, or U+FFFD); send the key as valid UTF-8",
                at + 1
            ),
        ));
    }
    if key.len() > MAX_KEY_CHARS && key.chars().count() > MAX_KEY_CHARS {
        return Err(RecordError::new(
            Stage::Standardize,
            RecordErrorKind::TooLong {
                column: column.to_owned(),
            },
            format!("{column} is longer than {MAX_KEY_CHARS} characters"),
        ));
    }
    Ok(key)
}

/// Reads a finite number from a cell, with a reason a person can act on when it is not one.
pub fn number_cell(column: &str, cell: CellRef<'_>) -> Result<f64, RecordError> {
    match cell.as_f64() {
        Some(v) if v.is_finite() => Ok(v),
        _ => Err(RecordError::new(
            Stage::Standardize,
            RecordErrorKind::NotFinite {
                column: column.to_owned(),
            },
            format!("{column} must be a finite number, got {}", cell.describe()),
        )),
    }
}

/// Applies text rules in order.
pub fn fold(text: &str, rules: &[TextRule]) -> String {
    // Each rule allocates only when it changes the text: most keys are already clean.
    let mut out: Cow<'_, str> = Cow::Borrowed(text);
    for rule in rules {
        let changed: Option<String> = match rule {
            TextRule::Nfkc => (!out.is_ascii()).then(|| out.nfkc().collect()),
            TextRule::Lowercase if out.is_ascii() => out
                .bytes()
                .any(|b| b.is_ascii_uppercase())
                .then(|| out.to_ascii_lowercase()),
            TextRule::Lowercase => Some(out.to_lowercase()),
            TextRule::Trim => {
                out = match out {
                    Cow::Borrowed(s) => Cow::Borrowed(s.trim()),
                    Cow::Owned(s) if s.trim().len() == s.len() => Cow::Owned(s),
                    Cow::Owned(s) => Cow::Owned(s.trim().to_owned()),
                };
                None
            }
            TextRule::CollapseWhitespace => {
                needs_collapse(&out).then(|| out.split_whitespace().collect::<Vec<_>>().join(" "))
            }
            TextRule::StripPunctuation => out
                .contains(['.', ',', '\''])
                .then(|| out.replace(['.', ',', '\''], "")),
        };
        if let Some(changed) = changed {
            out = Cow::Owned(changed);
        }
    }
    out.into_owned()
}

/// Whether collapsing whitespace would change the text: whitespace at an end, whitespace other
/// than a plain space, or two whitespace characters in a row.
fn needs_collapse(text: &str) -> bool {
    let mut previous_space = true;
    for c in text.chars() {
        if c.is_whitespace() {
            if previous_space || c != ' ' {
                return true;
            }
            previous_space = true;
        } else {
            previous_space = false;
        }
    }
    previous_space && !text.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::Table;
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
        assert_eq!(fold("  banque  de\tfrance ", &rules), "banque de france");
        assert_eq!(fold("BANQUE DE FRANCE", &rules), "banque de france");
        assert_eq!(fold("ÉCU Bank", &rules), "écu bank");
        assert_eq!(fold("clean key", &rules), "clean key");
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
        let table = Table::from(vec![
            vec![
                json!(8.5),
                json!("carried"),
                json!(" SN-000001 "),
                json!("r-1"),
                json!(3621.6),
                json!("FRB"),
                json!(" SC-07"),
            ],
            vec![
                json!(1),
                json!("x"),
                json!("SN-000001"),
                json!("r-2"),
                json!(2),
                json!("Federal Reserve Bank"),
                json!("sc-07 "),
            ],
        ]);
        let mut batch = StandardBatch::new(&spec);
        let r = batch.standardize_row(&index, table.row(0)).unwrap();
        let r2 = batch.standardize_row(&index, table.row(1)).unwrap();
        let rec = batch.record(r);
        let keys = |rec: &StandardRecord| {
            (
                batch.lookups[0].key(rec.lookup_keys[0]).to_owned(),
                batch.lookups[1].key(rec.lookup_keys[1]).to_owned(),
                batch
                    .documents
                    .as_ref()
                    .unwrap()
                    .key(rec.doc_key.unwrap())
                    .to_owned(),
            )
        };
        assert_eq!(
            keys(&rec),
            ("sc-07".into(), "frb".into(), "SN-000001".into())
        );
        assert_eq!(rec.request_values[..2], [3621.6, 8.5]);
        assert!(rec.request_values[2].is_nan() && rec.request_values[3].is_nan());
        // Keys are interned: the second record shares the scanner and the note.
        let rec2 = batch.record(r2);
        assert_eq!(rec2.lookup_keys[0], rec.lookup_keys[0]);
        assert_eq!(rec2.doc_key, rec.doc_key);
        assert_eq!(batch.lookups[0].keys(), ["sc-07"]);
        assert_eq!(batch.lookups[1].keys().len(), 2);
        assert_eq!(rec2.request_values[..2], [2.0, 1.0]);
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
        let table = Table::from(vec![vec![
            json!("NaN"),
            json!("3.2"),
            json!(null),
            json!({"$gt": 0}),
            json!([1]),
        ]]);
        for cell in table.row(0).iter() {
            let err = number_cell("variance", cell).unwrap_err();
            assert_eq!(err.stage, Stage::Standardize);
            assert!(
                err.reason.starts_with("variance must be a finite number"),
                "{err}"
            );
        }
        assert_eq!(number_cell("variance", CellRef::Float(-2.5)).unwrap(), -2.5);
        assert_eq!(
            number_cell("variance", table.row(0).get(3))
                .unwrap_err()
                .reason,
            "variance must be a finite number, got an object"
        );
    }

    #[test]
    fn operator_objects_never_become_keys() {
        let spec = PipelineSpec::banknote();
        let table = Table::from(vec![vec![json!({"$ne": null}), json!("  "), json!("ok")]]);
        let mut notes = KeyTable::new(&spec, "note");
        assert_eq!(
            notes.intern(table.row(0).get(1)).unwrap_err().to_string(),
            "standardize: note is empty"
        );
        assert_eq!(notes.intern(table.row(0).get(2)).unwrap(), 0);
        let err = notes.intern(table.row(0).get(0)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "standardize: note must be a text value, got an object"
        );
    }

    #[test]
    fn a_key_that_was_not_valid_unicode_is_refused_per_record() {
        let err = standard_key("scanner", None, "sc-\u{FFFD}01").unwrap_err();
        assert_eq!(
            err.kind,
            RecordErrorKind::NotUnicode {
                column: "scanner".into()
            }
        );
        assert!(err.reason.contains("at character 4"), "{}", err.reason);
    }

    #[test]
    fn keys_with_control_characters_are_refused_per_record_with_the_character_named() {
        let spec = PipelineSpec::banknote();
        let table = Table::from(vec![vec![
            json!("sc-01\u{0000}"),
            json!("SN-0\n1"),
            json!("sc-01"),
        ]]);
        let mut scanners = KeyTable::new(&spec, "scanner");
        let err = scanners.intern(table.row(0).get(0)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "standardize: scanner contains the control character U+0000 at character 6; a key must be printable text"
        );
        assert_eq!(
            err.kind(),
            "standardize: scanner contains the control character"
        );
        let mut notes = KeyTable::new(&spec, "note");
        assert!(notes.intern(table.row(0).get(1)).is_err());
        assert_eq!(
            scanners.intern(table.row(0).get(2)).unwrap(),
            0,
            "a clean key still passes"
        );
    }
}
