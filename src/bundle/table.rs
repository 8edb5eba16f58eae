//! The rows of a request bundle, held compactly: one flat vector of cells and one text arena
//! per bundle, instead of a `serde_json::Value` tree with a vector and a string allocation per
//! cell.
//!
//! Decoding appends every cell of every row to [`Table::cells`] and every text value to one
//! `String`, so a 1 000-record bundle costs a handful of allocations, not thousands. Cells keep
//! what the JSON said (null, boolean, integer, float, text); a nested array or object in a row
//! is kept as its JSON text, untouched and ignored by the model (docs/contract.md section 1).

use std::cell::{Cell as Slot, RefCell};
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::{Number, Value};

use crate::text::{describe, truncate_chars};

/// One cell of a row, as stored: text and nested JSON are byte ranges into the table's arena.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Cell {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Text { start: u32, end: u32 },
    Json { start: u32, end: u32 },
}

/// One cell of a row, as read: text borrows from the table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CellRef<'a> {
    /// `null`, or a cell past the end of a short row.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// An integer that fits `i64`.
    Int(i64),
    /// A positive integer beyond `i64`.
    UInt(u64),
    /// Any other JSON number.
    Float(f64),
    /// A string.
    Text(&'a str),
    /// A nested array or object, as JSON text.
    Json(&'a str),
}

impl<'a> CellRef<'a> {
    /// The cell as a number, if it is one (never parsed from text).
    pub fn as_f64(self) -> Option<f64> {
        match self {
            CellRef::Int(v) => Some(v as f64),
            CellRef::UInt(v) => Some(v as f64),
            CellRef::Float(v) => Some(v),
            _ => None,
        }
    }

    /// The cell as text, if it is a string.
    pub fn as_str(self) -> Option<&'a str> {
        match self {
            CellRef::Text(s) => Some(s),
            _ => None,
        }
    }

    /// A short description for error messages ([`describe`] of the value), without copying
    /// long text first.
    pub fn describe(self) -> String {
        match self {
            CellRef::Text(s) => {
                truncate_chars(&format!("the text {:?}", truncate_chars(s, 64)), 64)
            }
            CellRef::Json(s) if s.starts_with('[') => "an array".into(),
            CellRef::Json(_) => "an object".into(),
            other => describe(&other.to_value()),
        }
    }

    /// The cell as a JSON value (for error messages, tests and re-encoding; not the hot path).
    pub fn to_value(self) -> Value {
        match self {
            CellRef::Null => Value::Null,
            CellRef::Bool(b) => Value::Bool(b),
            CellRef::Int(v) => Value::from(v),
            CellRef::UInt(v) => Value::from(v),
            CellRef::Float(v) => Number::from_f64(v).map_or(Value::Null, Value::Number),
            CellRef::Text(s) => Value::String(s.to_owned()),
            CellRef::Json(s) => serde_json::from_str(s).unwrap_or(Value::Null),
        }
    }
}

/// The rows of a bundle: `len()` rows, each a run of cells.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table {
    cells: Vec<Cell>,
    /// Where each row ends in `cells`.
    row_ends: Vec<u32>,
    text: String,
    /// The first row that was not an array (decoding reports it; its cells are empty).
    not_array: Option<usize>,
}

/// One row of a [`Table`].
#[derive(Debug, Clone, Copy)]
pub struct Row<'a> {
    cells: &'a [Cell],
    text: &'a str,
}

impl<'a> Row<'a> {
    /// How many cells the row has.
    pub fn len(&self) -> usize {
        self.cells.len()
    }

    /// Whether the row has no cell.
    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    /// Cell `i`; a cell past the end reads as null rather than panicking.
    pub fn get(&self, i: usize) -> CellRef<'a> {
        let text = |start: u32, end: u32| &self.text[start as usize..end as usize];
        match self.cells.get(i) {
            None | Some(Cell::Null) => CellRef::Null,
            Some(Cell::Bool(b)) => CellRef::Bool(*b),
            Some(Cell::Int(v)) => CellRef::Int(*v),
            Some(Cell::UInt(v)) => CellRef::UInt(*v),
            Some(Cell::Float(v)) => CellRef::Float(*v),
            Some(Cell::Text { start, end }) => CellRef::Text(text(*start, *end)),
            Some(Cell::Json { start, end }) => CellRef::Json(text(*start, *end)),
        }
    }

    /// The cells in order.
    pub fn iter(&self) -> impl Iterator<Item = CellRef<'a>> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }

    /// The row as JSON values.
    pub fn to_values(&self) -> Vec<Value> {
        self.iter().map(CellRef::to_value).collect()
    }
}

impl Table {
    /// How many rows it holds.
    pub fn len(&self) -> usize {
        self.row_ends.len()
    }

    /// Whether it holds no row.
    pub fn is_empty(&self) -> bool {
        self.row_ends.is_empty()
    }

    /// How many cells all its rows hold.
    pub fn cells(&self) -> usize {
        self.cells.len()
    }

    /// Row `i`. Panics when `i >= len()`, like slice indexing.
    pub fn row(&self, i: usize) -> Row<'_> {
        let start = if i == 0 { 0 } else { self.row_ends[i - 1] };
        Row {
            cells: &self.cells[start as usize..self.row_ends[i] as usize],
            text: &self.text,
        }
    }

    /// The rows in order.
    pub fn iter(&self) -> impl Iterator<Item = Row<'_>> + '_ {
        (0..self.len()).map(|i| self.row(i))
    }

    /// The first row that was not an array, when decoding met one.
    pub fn first_non_array_row(&self) -> Option<usize> {
        self.not_array
    }

    /// Appends a row of JSON values.
    pub fn push_values(&mut self, row: &[Value]) {
        for v in row {
            let cell = match v {
                Value::Null => Cell::Null,
                Value::Bool(b) => Cell::Bool(*b),
                Value::Number(n) => number_cell(n),
                Value::String(s) => self.push_text(s, false),
                nested => self.push_text(&nested.to_string(), true),
            };
            self.cells.push(cell);
        }
        self.end_row();
    }

    fn push_text(&mut self, s: &str, json: bool) -> Cell {
        let start = self.text.len() as u32;
        self.text.push_str(s);
        let end = self.text.len() as u32;
        if json {
            Cell::Json { start, end }
        } else {
            Cell::Text { start, end }
        }
    }

    fn end_row(&mut self) {
        self.row_ends.push(self.cells.len() as u32);
    }
}

fn number_cell(n: &Number) -> Cell {
    if let Some(v) = n.as_i64() {
        Cell::Int(v)
    } else if let Some(v) = n.as_u64() {
        Cell::UInt(v)
    } else {
        Cell::Float(n.as_f64().unwrap_or(f64::NAN))
    }
}

impl From<Vec<Vec<Value>>> for Table {
    fn from(rows: Vec<Vec<Value>>) -> Self {
        let mut table = Table::default();
        for row in &rows {
            table.push_values(row);
        }
        table
    }
}

impl Serialize for Table {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.len()))?;
        for row in self.iter() {
            seq.serialize_element(&RowOut(row))?;
        }
        seq.end()
    }
}

struct RowOut<'a>(Row<'a>);

impl Serialize for RowOut<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for cell in self.0.iter() {
            match cell {
                CellRef::Null => seq.serialize_element(&())?,
                CellRef::Bool(b) => seq.serialize_element(&b)?,
                CellRef::Int(v) => seq.serialize_element(&v)?,
                CellRef::UInt(v) => seq.serialize_element(&v)?,
                CellRef::Float(v) => seq.serialize_element(&v)?,
                CellRef::Text(s) => seq.serialize_element(s)?,
                json @ CellRef::Json(_) => seq.serialize_element(&json.to_value())?,
            }
        }
        seq.end()
    }
}

/// Reads rows straight into the table. A row that is not an array is remembered, not an error,
/// so that decoding can name it; plain deserialization (fixture files) refuses it.
impl<'de> Deserialize<'de> for Table {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let cursor = Cursor::default();
        let table = deserializer.deserialize_seq(RowsVisitor {
            limits: TableLimits::NONE,
            cursor: &cursor,
        })?;
        match table.not_array {
            Some(i) => Err(de::Error::custom(format!("row {i} is not an array"))),
            None => Ok(table),
        }
    }
}

/// Limits on a table, checked while it is read: the memory a limit protects is never spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TableLimits {
    /// Most cells in all rows, nested values in a cell included.
    pub max_cells: usize,
    /// Most cells in one row.
    pub max_columns: usize,
}

impl TableLimits {
    /// No limit (fixture files, which are trusted).
    const NONE: Self = Self {
        max_cells: usize::MAX,
        max_columns: usize::MAX,
    };
}

/// Where reading the rows has got to: a JSON error in them can then name its row and cell, and a
/// limit met on the way is reported as itself rather than as a JSON error.
#[derive(Debug, Default)]
pub(crate) struct Cursor {
    at: Slot<Option<(usize, usize)>>,
    over_limit: RefCell<Option<String>>,
}

impl Cursor {
    /// The row and cell being read when reading stopped; `None` once the rows were read whole.
    pub fn at(&self) -> Option<(usize, usize)> {
        self.at.get()
    }

    /// The limit that stopped reading, in words.
    pub fn over_limit(&self) -> Option<String> {
        self.over_limit.borrow().clone()
    }

    /// Records why reading stops and returns the error that stops it.
    pub fn stop<E: de::Error>(&self, reason: String) -> E {
        let error = E::custom(&reason);
        *self.over_limit.borrow_mut() = Some(reason);
        error
    }
}

/// Decoding's entry point: like `Deserialize`, but a non-array row or a non-array `rows` is
/// reported to the caller (`Ok(None)` for the latter) with the bundle's own words, limits are
/// checked as cells arrive, and `cursor` tells where an error happened.
pub(crate) struct LenientRows<'c> {
    pub limits: TableLimits,
    pub cursor: &'c Cursor,
}

impl<'de> DeserializeSeed<'de> for LenientRows<'_> {
    type Value = Option<Table>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(ArrayOr(self))
    }
}

impl<'de> OnArray<'de> for LenientRows<'_> {
    type Value = Option<Table>;
    const EXPECTING: &'static str = "an array of rows";

    fn array<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        let rows = RowsVisitor {
            limits: self.limits,
            cursor: self.cursor,
        };
        rows.visit_seq(seq).map(Some)
    }

    fn otherwise() -> Self::Value {
        None
    }
}

/// What to make of a JSON array; any other value is skipped and answered with `otherwise`.
trait OnArray<'de>: Sized {
    type Value;
    const EXPECTING: &'static str;
    fn array<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error>;
    fn otherwise() -> Self::Value;
}

/// The visitor of an [`OnArray`]: arrays go to it, everything else is consumed and skipped.
struct ArrayOr<T>(T);

impl<'de, T: OnArray<'de>> Visitor<'de> for ArrayOr<T> {
    type Value = T::Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(T::EXPECTING)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<T::Value, A::Error> {
        self.0.array(seq)
    }

    fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<T::Value, A::Error> {
        IgnoredAny.visit_map(map).map(|_| T::otherwise())
    }

    fn visit_bool<E>(self, _: bool) -> Result<T::Value, E> {
        Ok(T::otherwise())
    }
    fn visit_i64<E>(self, _: i64) -> Result<T::Value, E> {
        Ok(T::otherwise())
    }
    fn visit_u64<E>(self, _: u64) -> Result<T::Value, E> {
        Ok(T::otherwise())
    }
    fn visit_f64<E>(self, _: f64) -> Result<T::Value, E> {
        Ok(T::otherwise())
    }
    fn visit_str<E>(self, _: &str) -> Result<T::Value, E> {
        Ok(T::otherwise())
    }
    fn visit_unit<E>(self) -> Result<T::Value, E> {
        Ok(T::otherwise())
    }
}

struct RowsVisitor<'c> {
    limits: TableLimits,
    cursor: &'c Cursor,
}

impl<'de> Visitor<'de> for RowsVisitor<'_> {
    type Value = Table;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of rows")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Table, A::Error> {
        let mut table = Table::default();
        let hint = seq.size_hint().unwrap_or(0).min(16_384);
        table.row_ends.reserve(hint);
        let left = Slot::new(self.limits.max_cells);
        loop {
            let index = table.len();
            self.cursor.at.set(Some((index, 0)));
            let row = RowSeed {
                table: &mut table,
                index,
                limits: self.limits,
                cursor: self.cursor,
                left: &left,
            };
            match seq.next_element_seed(row)? {
                None => break,
                Some(true) => {}
                Some(false) => {
                    table.not_array.get_or_insert(index);
                }
            }
            table.end_row();
        }
        self.cursor.at.set(None);
        Ok(table)
    }
}

/// One row: appends its cells; answers whether it was an array.
struct RowSeed<'t> {
    table: &'t mut Table,
    index: usize,
    limits: TableLimits,
    cursor: &'t Cursor,
    /// Cells the table may still take.
    left: &'t Slot<usize>,
}

impl<'de> DeserializeSeed<'de> for RowSeed<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_any(ArrayOr(self))
    }
}

impl<'de> OnArray<'de> for RowSeed<'_> {
    type Value = bool;
    const EXPECTING: &'static str = "a row (an array of values)";

    fn array<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        let row_start = self.table.cells.len();
        loop {
            let column = self.table.cells.len() - row_start;
            self.cursor.at.set(Some((self.index, column)));
            if column == self.limits.max_columns {
                if seq.next_element::<IgnoredAny>()?.is_none() {
                    break;
                }
                return Err(self.cursor.stop(format!(
                    "row {} has more than {} values, the limit of columns (ML_PIPELINE_MAX_COLUMNS)",
                    self.index, self.limits.max_columns
                )));
            }
            let nested = Bounded {
                left: self.left,
                cursor: self.cursor,
                what: "the rows hold",
                max: self.limits.max_cells,
                setting: "cells per bundle (ML_PIPELINE_MAX_CELLS)",
            };
            let seed = CellSeed {
                table: self.table,
                nested,
            };
            let Some(cell) = seq.next_element_seed(seed)? else {
                break;
            };
            nested.take()?;
            self.table.cells.push(cell);
        }
        Ok(true)
    }

    fn otherwise() -> bool {
        false
    }
}

/// One cell: text goes to the arena; nested JSON is kept as its text.
struct CellSeed<'t> {
    table: &'t mut Table,
    nested: Bounded<'t>,
}

impl<'de> DeserializeSeed<'de> for CellSeed<'_> {
    type Value = Cell;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Cell, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for CellSeed<'_> {
    type Value = Cell;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Cell, E> {
        Ok(Cell::Null)
    }
    fn visit_none<E>(self) -> Result<Cell, E> {
        Ok(Cell::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Cell, E> {
        Ok(Cell::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Cell, E> {
        Ok(Cell::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Cell, E> {
        Ok(i64::try_from(v).map_or(Cell::UInt(v), Cell::Int))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Cell, E> {
        Ok(Cell::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Cell, E> {
        Ok(self.table.push_text(v, false))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Cell, A::Error> {
        let v = self.nested.visit_seq(seq)?;
        Ok(self.table.push_text(&v.to_string(), true))
    }

    fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Cell, A::Error> {
        let v = self.nested.visit_map(map)?;
        Ok(self.table.push_text(&v.to_string(), true))
    }
}

/// A JSON value built as a `Value` while each element of its arrays and objects counts against
/// a budget: `[[0,0,0,…]]` in a cell is bounded like `[0,0,0,…]`, and so is a field read whole.
#[derive(Clone, Copy)]
pub(crate) struct Bounded<'t> {
    /// Elements it may still take.
    pub left: &'t Slot<usize>,
    /// Where the limit is reported.
    pub cursor: &'t Cursor,
    /// What holds the values, for the reason: `the rows hold`, `'columns' holds`.
    pub what: &'static str,
    /// The limit, for the reason.
    pub max: usize,
    /// The setting that raises it.
    pub setting: &'static str,
}

impl Bounded<'_> {
    /// Counts one more element, or stops reading at the limit.
    fn take<E: de::Error>(&self) -> Result<(), E> {
        match self.left.get().checked_sub(1) {
            Some(left) => {
                self.left.set(left);
                Ok(())
            }
            None => Err(self.cursor.stop(format!(
                "{} more than {} values, the limit of {}",
                self.what, self.max, self.setting
            ))),
        }
    }
}

impl<'de> DeserializeSeed<'de> for Bounded<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Bounded<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            self.take()?;
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(self)?;
            self.take()?;
            entries.insert(key, value);
        }
        Ok(Value::Object(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rows_round_trip_through_json() {
        let rows = json!([["r-1", "SN-1", 3621.6, 7, null, true],
                          ["r\"2", "é", -1e300, 18446744073709551615u64, {"$ne": null}, [1, [2]]]]);
        let table: Table = serde_json::from_value(rows.clone()).unwrap();
        assert_eq!(table.len(), 2);
        assert_eq!(table.row(1).get(0), CellRef::Text("r\"2"));
        assert_eq!(table.row(0).get(2).as_f64(), Some(3621.6));
        assert_eq!(table.row(0).get(3), CellRef::Int(7));
        assert_eq!(table.row(1).get(3), CellRef::UInt(u64::MAX));
        assert_eq!(table.row(1).get(9), CellRef::Null);
        assert_eq!(serde_json::to_value(&table).unwrap(), rows);
        let from_values = Table::from(serde_json::from_value::<Vec<Vec<Value>>>(rows).unwrap());
        assert_eq!(from_values, table);
    }

    #[test]
    fn a_row_that_is_not_an_array_is_named() {
        let err = serde_json::from_str::<Table>(r#"[["a"], {"b": 1}, 3]"#).unwrap_err();
        assert!(
            err.to_string().starts_with("row 1 is not an array"),
            "{err}"
        );
        let cursor = Cursor::default();
        let lenient = || LenientRows {
            limits: TableLimits::NONE,
            cursor: &cursor,
        };
        let lenient_table = lenient()
            .deserialize(&mut serde_json::Deserializer::from_str(r#"[["a"], 3, {}]"#))
            .unwrap()
            .unwrap();
        assert_eq!(lenient_table.first_non_array_row(), Some(1));
        assert_eq!(lenient_table.len(), 3);
        let not_rows = lenient()
            .deserialize(&mut serde_json::Deserializer::from_str(r#""many""#))
            .unwrap();
        assert!(not_rows.is_none());
    }

    #[test]
    fn long_text_is_cut_in_descriptions_on_a_char_boundary() {
        let long = "é".repeat(10_000);
        let d = describe(&serde_json::json!(long));
        assert!(d.chars().count() <= 66, "{}", d.chars().count());
        assert_eq!(CellRef::Text(&long).describe(), d);
    }
}
