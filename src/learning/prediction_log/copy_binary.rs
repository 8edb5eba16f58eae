//! PostgreSQL's `COPY ... FROM STDIN (FORMAT binary)` stream (PostgreSQL's documentation,
//! "COPY", "Binary Format"): every value goes as its length and its bytes, numbers big-endian,
//! so neither side formats or parses text (the worker prints no float and escapes nothing,
//! PostgreSQL parses no `float8[]`).
//!
//! The stream is a header (the 11-byte signature, flags 0: no OIDs, header extension length 0),
//! then per row its field count (int16) and per field its length (int32) and its value, then a
//! trailer (the field count -1). The values of the types the prediction log uses:
//! `timestamptz` int64 microseconds since 2000-01-01 UTC; `text` its UTF-8 bytes; `smallint`,
//! `integer`, `bigint` int16, int32, int64; `double precision` the IEEE 754 bits; and a
//! `double precision[]` the number of dimensions, a has-nulls flag, the element type's OID, each
//! dimension's length and lower bound, then each element as a length and a value.
//!
//! It knows types, not tables: the prediction log says which values go in which order.

use chrono::{DateTime, Utc};

/// The first bytes of every binary COPY stream.
const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
/// `double precision`'s type OID, named in an array's header.
const FLOAT8_OID: i32 = 701;
/// Microseconds from the Unix epoch to PostgreSQL's, 2000-01-01 00:00 UTC.
const POSTGRES_EPOCH_MICROS: i64 = 946_684_800_000_000;
/// PostgreSQL's largest field (1 GiB less one byte); the int32 length could say more.
const MAX_FIELD_BYTES: usize = (1 << 30) - 1;

/// A value longer than a PostgreSQL field can be (the text format's `COPY` failed on it too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a value of {bytes} bytes is longer than a PostgreSQL field can be")]
pub struct FieldTooLong {
    /// The value's encoded length.
    pub bytes: usize,
}

/// A binary COPY stream being written into a buffer that its owner reuses.
pub struct CopyBinary<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> CopyBinary<'a> {
    /// Empties `out` (keeping its capacity) and writes the header.
    pub fn start(out: &'a mut Vec<u8>) -> Self {
        out.clear();
        out.extend_from_slice(SIGNATURE);
        out.extend_from_slice(&0_i32.to_be_bytes()); // flags: no OIDs
        out.extend_from_slice(&0_i32.to_be_bytes()); // no header extension
        Self { out }
    }

    /// Starts a row of `fields` values, reserving room for `bytes` more (a hint).
    pub fn row(&mut self, fields: i16, bytes: usize) {
        self.out.reserve(2 + bytes);
        self.out.extend_from_slice(&fields.to_be_bytes());
    }

    /// A `timestamptz`, to the microsecond (the column's own precision).
    pub fn timestamptz(&mut self, at: DateTime<Utc>) {
        // chrono's range (±262 000 years) is well inside an int64 of microseconds.
        let micros = at.timestamp_micros().saturating_sub(POSTGRES_EPOCH_MICROS);
        self.fixed(&micros.to_be_bytes());
    }

    /// A `text`, as its bytes: nothing to escape.
    pub fn text(&mut self, s: &str) -> Result<(), FieldTooLong> {
        let len = field_length(s.len())?;
        self.out.extend_from_slice(&len.to_be_bytes());
        self.out.extend_from_slice(s.as_bytes());
        Ok(())
    }

    /// A `smallint`.
    pub fn int2(&mut self, v: i16) {
        self.fixed(&v.to_be_bytes());
    }

    /// An `integer`.
    pub fn int4(&mut self, v: i32) {
        self.fixed(&v.to_be_bytes());
    }

    /// A `bigint`.
    pub fn int8(&mut self, v: i64) {
        self.fixed(&v.to_be_bytes());
    }

    /// A `double precision`: NaN, the infinities and -0 go as they are.
    pub fn float8(&mut self, v: f64) {
        self.fixed(&v.to_be_bytes());
    }

    /// A one-dimensional `double precision[]` with no nulls and lower bound 1 (what the text
    /// `{...}` gives); the empty array has no dimension, as PostgreSQL itself sends it.
    pub fn float8_array(&mut self, values: &[f64]) -> Result<(), FieldTooLong> {
        let header = if values.is_empty() { 12 } else { 20 };
        let bytes = values
            .len()
            .checked_mul(12)
            .and_then(|elements| elements.checked_add(header))
            .unwrap_or(usize::MAX);
        let len = field_length(bytes)?;
        self.out.reserve(4 + bytes);
        self.out.extend_from_slice(&len.to_be_bytes());
        let dimensions: i32 = if values.is_empty() { 0 } else { 1 };
        self.out.extend_from_slice(&dimensions.to_be_bytes());
        self.out.extend_from_slice(&0_i32.to_be_bytes()); // no nulls
        self.out.extend_from_slice(&FLOAT8_OID.to_be_bytes());
        if values.is_empty() {
            return Ok(());
        }
        // At most MAX_FIELD_BYTES / 12 elements: checked above.
        self.out
            .extend_from_slice(&(values.len() as i32).to_be_bytes());
        self.out.extend_from_slice(&1_i32.to_be_bytes()); // lower bound
        for v in values {
            self.fixed(&v.to_be_bytes());
        }
        Ok(())
    }

    /// A null, of any type.
    pub fn null(&mut self) {
        self.out.extend_from_slice(&(-1_i32).to_be_bytes());
    }

    /// Writes the trailer: the stream is whole.
    pub fn finish(self) {
        self.out.extend_from_slice(&(-1_i16).to_be_bytes());
    }

    /// A fixed-size value: its length, then its bytes.
    fn fixed<const N: usize>(&mut self, value: &[u8; N]) {
        self.out.extend_from_slice(&(N as i32).to_be_bytes());
        self.out.extend_from_slice(value);
    }
}

/// A field's int32 length, when PostgreSQL can hold that many bytes.
fn field_length(bytes: usize) -> Result<i32, FieldTooLong> {
    if bytes > MAX_FIELD_BYTES {
        return Err(FieldTooLong { bytes });
    }
    Ok(bytes as i32)
}

/// Reads a stream back by hand, as PostgreSQL's `COPY FROM` does: for tests.
#[cfg(test)]
pub(crate) struct Stream<'a>(pub &'a [u8]);

#[cfg(test)]
impl Stream<'_> {
    pub fn take(&mut self, n: usize) -> &[u8] {
        assert!(self.0.len() >= n, "{n} bytes wanted, {} left", self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }
    pub fn i16(&mut self) -> i16 {
        i16::from_be_bytes(self.take(2).try_into().unwrap())
    }
    pub fn i32(&mut self) -> i32 {
        i32::from_be_bytes(self.take(4).try_into().unwrap())
    }
    /// The header, checked.
    pub fn header(&mut self) {
        assert_eq!(self.take(11), b"PGCOPY\n\xff\r\n\0");
        assert_eq!((self.i32(), self.i32()), (0, 0), "flags, header extension");
    }
    /// One field: its length, then that many bytes.
    pub fn field(&mut self) -> Vec<u8> {
        let len = self.i32();
        assert!(len >= 0, "a value, not a null");
        self.take(len as usize).to_vec()
    }
    /// A null field.
    pub fn null(&mut self) {
        assert_eq!(self.i32(), -1, "a null");
    }
    pub fn i64_field(&mut self) -> i64 {
        i64::from_be_bytes(self.field().try_into().expect("8 bytes"))
    }
    pub fn f64_field(&mut self) -> f64 {
        f64::from_be_bytes(self.field().try_into().expect("8 bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_decode_by_hand_to_what_was_written() {
        let mut out = Vec::new();
        let at: DateTime<Utc> = "2026-12-01T10:00:00.123456Z".parse().unwrap();
        let mut copy = CopyBinary::start(&mut out);
        copy.row(7, 0);
        copy.timestamptz(at);
        copy.text("b\t1\\\né").unwrap();
        copy.int2(-2);
        copy.int4(4);
        copy.int8(1 << 40);
        copy.float8(-1.5);
        copy.float8_array(&[0.25, -3.0]).unwrap();
        copy.finish();

        let mut s = Stream(&out);
        s.header();
        assert_eq!(s.i16(), 7, "fields of the row");
        let since_2000 = at - "2000-01-01T00:00:00Z".parse::<DateTime<Utc>>().unwrap();
        assert_eq!(s.i64_field(), since_2000.num_microseconds().unwrap());
        // No escaping: a text goes as its bytes, tab, backslash, newline and all.
        assert_eq!(s.field(), "b\t1\\\né".as_bytes());
        assert_eq!(s.field(), (-2_i16).to_be_bytes());
        assert_eq!(s.field(), 4_i32.to_be_bytes());
        assert_eq!(s.i64_field(), 1 << 40);
        assert_eq!(s.f64_field(), -1.5);
        let array = s.field();
        let mut a = Stream(&array);
        assert_eq!(
            (a.i32(), a.i32(), a.i32()),
            (1, 0, 701),
            "dims, no nulls, float8"
        );
        assert_eq!((a.i32(), a.i32()), (2, 1), "length, lower bound");
        assert_eq!((a.f64_field(), a.f64_field()), (0.25, -3.0));
        assert!(a.0.is_empty(), "the array ends with its elements");
        assert_eq!(s.i16(), -1, "the trailer");
        assert!(s.0.is_empty(), "nothing after the trailer");
    }

    #[test]
    fn an_empty_array_has_no_dimension() {
        let mut out = Vec::new();
        let mut copy = CopyBinary::start(&mut out);
        copy.row(1, 0);
        copy.float8_array(&[]).unwrap();
        copy.finish();
        let mut s = Stream(&out);
        s.header();
        assert_eq!(s.i16(), 1);
        let array = s.field();
        let mut a = Stream(&array);
        assert_eq!((a.i32(), a.i32(), a.i32()), (0, 0, 701));
        assert!(a.0.is_empty());
        assert_eq!(s.i16(), -1);
    }

    #[test]
    fn the_buffer_is_reused_and_holds_only_the_last_stream() {
        let write = |out: &mut Vec<u8>, rows: usize| {
            let mut copy = CopyBinary::start(out);
            for _ in 0..rows {
                copy.row(1, 8);
                copy.float8(1.0);
            }
            copy.finish();
        };
        let mut alone = Vec::new();
        write(&mut alone, 1);
        let mut reused = Vec::new();
        write(&mut reused, 100);
        let capacity = reused.capacity();
        write(&mut reused, 1);
        assert_eq!(reused, alone);
        assert_eq!(reused.capacity(), capacity, "no new allocation");
    }

    #[test]
    fn a_field_longer_than_postgres_takes_is_refused_not_wrapped() {
        assert_eq!(field_length(MAX_FIELD_BYTES), Ok(MAX_FIELD_BYTES as i32));
        assert_eq!(
            field_length(MAX_FIELD_BYTES + 1),
            Err(FieldTooLong {
                bytes: MAX_FIELD_BYTES + 1
            })
        );
    }
}
