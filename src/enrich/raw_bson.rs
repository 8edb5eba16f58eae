//! The elements of a BSON document, read straight from its bytes.
//!
//! `bson`'s `RawDocument::iter_elements` checks every element name for UTF-8 and wraps every
//! step in error context; reading a batch's provider documents that way took a quarter of the
//! in-process path (BENCHMARKS.md). Reading a provider document needs much less: each element's
//! type, its name as bytes (compared with the names asked for, which are UTF-8 themselves) and
//! its value's bytes. Every length is checked against the bytes there are, so a malformed
//! document ends the walk where it stops making sense; nothing is read past its end.

use mongodb::bson::spec::ElementType;

/// One element of a document.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Element<'d> {
    /// The BSON type byte.
    pub kind: u8,
    /// The element's name, as bytes (BSON names are UTF-8; nothing here checks it).
    pub name: &'d [u8],
    /// The value's bytes, exactly as long as its type says.
    value: &'d [u8],
}

/// An element's value, as far as a provider document's reader cares.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'d> {
    /// A BSON double.
    Double(f64),
    /// A BSON 32-bit integer.
    Int32(i32),
    /// A BSON 64-bit integer.
    Int64(i64),
    /// BSON null.
    Null,
    /// A BSON string's bytes (UTF-8 unless the document is corrupt).
    String(&'d [u8]),
    /// An embedded document.
    Document(Elements<'d>),
    /// Any other type.
    Other(Option<ElementType>),
}

impl<'d> Element<'d> {
    /// The element's value.
    pub fn value(&self) -> Value<'d> {
        let v = self.value;
        match self.kind {
            0x01 => Value::Double(f64::from_le_bytes(le_bytes(v))),
            0x10 => Value::Int32(i32::from_le_bytes(le_bytes(v))),
            0x12 => Value::Int64(i64::from_le_bytes(le_bytes(v))),
            0x0A => Value::Null,
            // Length prefix, the bytes, a terminating zero: `value_size` checked there are 5+.
            0x02 => Value::String(&v[4..v.len() - 1]),
            0x03 => Value::Document(Elements::of(v)),
            kind => Value::Other(ElementType::from(kind)),
        }
    }

    /// The value as text, when it is a string of valid UTF-8.
    pub fn text(&self) -> Option<&'d str> {
        match self.value() {
            Value::String(bytes) => std::str::from_utf8(bytes).ok(),
            _ => None,
        }
    }
}

/// The first `N` bytes of a value whose size `value_size` fixed at `N` or more.
fn le_bytes<const N: usize>(v: &[u8]) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(&v[..N]);
    out
}

/// The elements of one document, in order. The walk ends at the document's end or at the first
/// element whose type is unknown or whose size does not fit the bytes left.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Elements<'d> {
    rest: &'d [u8],
}

impl<'d> Elements<'d> {
    /// The elements of a whole document: its bytes, from the length prefix to the terminating
    /// zero. A document shorter than its declared length yields the elements that fit.
    pub fn of(document: &'d [u8]) -> Self {
        let declared = document
            .get(..4)
            .map_or(0, |b| i32::from_le_bytes(le_bytes(b)).max(0) as usize);
        let end = declared.min(document.len()).saturating_sub(1);
        Self {
            rest: document.get(4..end).unwrap_or_default(),
        }
    }

    fn split(rest: &'d [u8]) -> Option<(Element<'d>, &'d [u8])> {
        let (&kind, rest) = rest.split_first()?;
        let nul = rest.iter().position(|&b| b == 0)?;
        let (name, rest) = (&rest[..nul], &rest[nul + 1..]);
        let size = value_size(kind, rest)?;
        let value = rest.get(..size)?;
        Some((Element { kind, name, value }, &rest[size..]))
    }
}

impl<'d> Iterator for Elements<'d> {
    type Item = Element<'d>;

    fn next(&mut self) -> Option<Element<'d>> {
        match Self::split(self.rest) {
            Some((element, rest)) => {
                self.rest = rest;
                Some(element)
            }
            None => {
                self.rest = &[];
                None
            }
        }
    }
}

/// How many bytes a value of type `kind` takes at the start of `v` (the BSON specification's
/// sizes), or None for an unknown type or a length that cannot be right.
fn value_size(kind: u8, v: &[u8]) -> Option<usize> {
    let prefix = |at: usize| -> Option<usize> {
        let bytes = v.get(at..at + 4)?;
        usize::try_from(i32::from_le_bytes(le_bytes(bytes))).ok()
    };
    let cstring_end = |from: usize| Some(from + v.get(from..)?.iter().position(|&b| b == 0)? + 1);
    Some(match kind {
        // double, UTC datetime, timestamp, int64
        0x01 | 0x09 | 0x11 | 0x12 => 8,
        // string, JavaScript code, symbol: the length counts the terminating zero
        0x02 | 0x0D | 0x0E => 4 + prefix(0).filter(|&n| n >= 1)?,
        // document, array: the length counts itself and the terminating zero
        0x03 | 0x04 => prefix(0).filter(|&n| n >= 5)?,
        // code with scope: a total length, at least its own, a string's and a document's
        0x0F => prefix(0).filter(|&n| n >= 14)?,
        // binary: length, subtype, bytes
        0x05 => 5 + prefix(0)?,
        // undefined, null, min key, max key
        0x06 | 0x0A | 0xFF | 0x7F => 0,
        0x07 => 12,
        0x08 => 1,
        0x10 => 4,
        0x13 => 16,
        // regular expression: pattern and options, two C strings
        0x0B => cstring_end(cstring_end(0)?)?,
        // DB pointer: a string and an ObjectId
        0x0C => 4 + prefix(0).filter(|&n| n >= 1)? + 12,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use mongodb::bson::{doc, oid::ObjectId, Binary, Bson, RawDocumentBuf, Regex, Timestamp};

    use super::*;

    fn bytes(d: &mongodb::bson::Document) -> Vec<u8> {
        RawDocumentBuf::from_document(d).unwrap().into_bytes()
    }

    #[test]
    fn every_element_is_read_with_the_name_and_size_bson_gives_it() {
        let d = doc! {
            "d": 1.5, "s": "text", "o": {"k": 2_i32}, "a": [1_i32, "x"],
            "b": Binary { subtype: mongodb::bson::spec::BinarySubtype::Generic, bytes: vec![1, 2, 3] },
            "id": ObjectId::new(), "t": true, "dt": mongodb::bson::DateTime::now(), "n": Bson::Null,
            "re": Regex { pattern: "a.b".into(), options: "i".into() },
            "i": 7_i32, "ts": Timestamp { time: 1, increment: 2 }, "l": 9_i64,
            "u": Bson::Undefined, "min": Bson::MinKey, "max": Bson::MaxKey,
            "code": Bson::JavaScriptCode("f()".into()), "last": "end",
        };
        let raw = bytes(&d);
        let reference = RawDocumentBuf::from_bytes(raw.clone()).unwrap();
        let read: Vec<Element> = Elements::of(&raw).collect();
        let names: Vec<&str> = reference.iter().map(|e| e.unwrap().0).collect();
        assert_eq!(
            read.iter()
                .map(|e| std::str::from_utf8(e.name).unwrap())
                .collect::<Vec<_>>(),
            names
        );
        assert_eq!(read[0].value(), Value::Double(1.5));
        assert_eq!(read[1].text(), Some("text"));
        let Value::Document(inner) = read[2].value() else {
            panic!("{:?}", read[2])
        };
        assert_eq!(
            inner.map(|e| e.value()).collect::<Vec<_>>(),
            [Value::Int32(2)]
        );
        assert_eq!(read[8].value(), Value::Null);
        assert_eq!(read[10].value(), Value::Int32(7));
        assert_eq!(read[12].value(), Value::Int64(9));
        assert_eq!(read[6].value(), Value::Other(Some(ElementType::Boolean)));
        assert_eq!(read.last().unwrap().text(), Some("end"));
    }

    #[test]
    fn a_cut_or_corrupt_document_ends_the_walk_without_reading_past_its_bytes() {
        let raw = bytes(&doc! {"a": 1.0, "b": "long enough text", "c": 3_i32});
        // Every prefix of the document: never a panic, never an element past the cut.
        for cut in 0..raw.len() {
            let read: Vec<Element> = Elements::of(&raw[..cut]).collect();
            assert!(read.len() <= 3, "{cut}: {read:?}");
        }
        // A string whose length runs past the document's end.
        let mut bad = raw.clone();
        let at = bad.iter().position(|&b| b == b'b').unwrap() + 2;
        bad[at..at + 4].copy_from_slice(&1_000_i32.to_le_bytes());
        let names: Vec<&[u8]> = Elements::of(&bad).map(|e| e.name).collect();
        assert_eq!(names, [b"a".as_slice()]);
        // A negative length, an unknown type byte, a name with no end.
        bad[at..at + 4].copy_from_slice(&(-3_i32).to_le_bytes());
        assert_eq!(Elements::of(&bad).count(), 1);
        let mut unknown = raw.clone();
        unknown[4] = 0x42;
        assert_eq!(Elements::of(&unknown).count(), 0);
        assert_eq!(
            Elements::of(&[9, 0, 0, 0, 0x01, b'a', b'b', b'c', 0]).count(),
            0
        );
        assert_eq!(Elements::of(&[0xff, 0xff, 0xff, 0xff]).count(), 0);
    }
}
