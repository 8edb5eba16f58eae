//! A delivery's bytes as a stream of numbered rows: JSON lines or CSV, gzip-compressed or not
//! (known by the magic bytes, not the name), hashed as they are read. Nothing here holds more
//! than one row: the caller gets each row as it is read and decides what to keep.
//!
//! Problems with one row (a line that is not JSON, a CSV record with too many cells, a `NaN`)
//! become that row's [`Refusal`]; problems with the delivery as a whole (a truncated gzip
//! stream, a CSV header without the provider's columns, an I/O error) end the read with a
//! [`ReadError`].

use std::cell::RefCell;
use std::io::{self, BufRead, BufReader, Read};
use std::ops::ControlFlow;
use std::rc::Rc;

use flate2::bufread::MultiGzDecoder;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::check::{ProviderShape, Refusal};

/// The longest JSON line read; a longer line is refused (and skipped) without being held.
pub const MAX_LINE_BYTES: usize = 64 * 1024 * 1024;

/// How a delivery's rows are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One JSON object per line.
    Jsonl,
    /// A header of dotted field paths (`note_id,scan.kurtosis,...`), then one row per record.
    Csv,
}

impl Format {
    /// The format a file name says (`.jsonl`, `.json`, `.ndjson`, `.csv`, each maybe `.gz`).
    pub fn from_name(name: &str) -> Option<Self> {
        let name = name.to_ascii_lowercase();
        let name = name.strip_suffix(".gz").unwrap_or(&name);
        if name.ends_with(".csv") {
            Some(Self::Csv)
        } else if [".jsonl", ".json", ".ndjson"]
            .iter()
            .any(|e| name.ends_with(e))
        {
            Some(Self::Jsonl)
        } else {
            None
        }
    }
}

/// One row of a delivery, numbered by the line it starts on.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// 1-based line in the (decompressed) delivery.
    pub line: u64,
    /// The row as JSON, or why it cannot be one.
    pub value: Result<Value, Refusal>,
}

/// What the whole delivery was, once read to its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentDigest {
    /// `sha256:<hex>` of the delivery's bytes as stored (before decompression).
    pub hash: String,
    /// How many bytes that was.
    pub bytes: u64,
}

/// A problem with the delivery as a whole: nothing of it is written.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The source could not be opened or read.
    #[error("reading {source_name}: {error}")]
    Io {
        source_name: String,
        #[source]
        error: io::Error,
    },
    /// The gzip stream ends early or is corrupt.
    #[error("{source_name}: the gzip stream is truncated or corrupt ({error})")]
    Gzip {
        source_name: String,
        #[source]
        error: io::Error,
    },
    /// The CSV header cannot be read or does not have the provider's columns.
    #[error("{source_name}: {reason}")]
    Columns { source_name: String, reason: String },
    /// The format could not be told from the name; `--format` says it.
    #[error("cannot tell the format of {source_name} from its name: give --format jsonl or csv")]
    UnknownFormat { source_name: String },
    /// The source changed between the two passes over it.
    #[error("{source_name} changed while it was read (first {first}, then {second})")]
    Changed {
        source_name: String,
        first: String,
        second: String,
    },
    /// The reading thread stopped without an answer (it panicked).
    #[error("reading {source_name}: the reader stopped unexpectedly")]
    Stopped { source_name: String },
}

/// Reads every row of `raw` (named `source_name` in errors) and hands each to `emit`, which
/// may stop the read early with `ControlFlow::Break`. Returns the digest of the bytes read,
/// which covers the whole delivery when the read was not stopped.
pub fn read_rows<R: Read>(
    raw: R,
    source_name: &str,
    format: Format,
    shape: &ProviderShape,
    mut emit: impl FnMut(Row) -> ControlFlow<()>,
) -> Result<ContentDigest, ReadError> {
    let hasher = Rc::new(RefCell::new((Sha256::new(), 0_u64)));
    let mut buffered = BufReader::with_capacity(
        256 * 1024,
        Hashing {
            inner: raw,
            state: Rc::clone(&hasher),
        },
    );
    let io_error = |error| ReadError::Io {
        source_name: source_name.to_owned(),
        error,
    };
    let gzip = buffered
        .fill_buf()
        .map_err(io_error)?
        .starts_with(&[0x1f, 0x8b]);
    let outcome = if gzip {
        let decoder = BufReader::with_capacity(256 * 1024, MultiGzDecoder::new(&mut buffered));
        read_format(decoder, format, shape, &mut emit).map_err(|e| match e {
            ReadError::Io { error, .. } => ReadError::Gzip {
                source_name: source_name.to_owned(),
                error,
            },
            other => other,
        })
    } else {
        read_format(&mut buffered, format, shape, &mut emit)
    };
    let stopped = match outcome.map_err(|e| named(e, source_name))? {
        ControlFlow::Break(()) => true,
        ControlFlow::Continue(()) => false,
    };
    if !stopped {
        // Bytes the parser did not need (a trailing newline after the gzip stream) still
        // belong to the delivery's content.
        io::copy(&mut buffered, &mut io::sink()).map_err(io_error)?;
    }
    drop(buffered);
    let (sha, bytes) = Rc::try_unwrap(hasher)
        .map(RefCell::into_inner)
        .unwrap_or_else(|shared| shared.borrow().clone());
    let hash: String = sha.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok(ContentDigest {
        hash: format!("sha256:{hash}"),
        bytes,
    })
}

fn named(error: ReadError, source_name: &str) -> ReadError {
    match error {
        ReadError::Io { error, .. } => ReadError::Io {
            source_name: source_name.to_owned(),
            error,
        },
        ReadError::Columns { reason, .. } => ReadError::Columns {
            source_name: source_name.to_owned(),
            reason,
        },
        other => other,
    }
}

fn read_format<B: BufRead>(
    input: B,
    format: Format,
    shape: &ProviderShape,
    emit: &mut impl FnMut(Row) -> ControlFlow<()>,
) -> Result<ControlFlow<()>, ReadError> {
    match format {
        Format::Jsonl => read_jsonl(input, emit),
        Format::Csv => read_csv(input, shape, emit),
    }
}

fn read_jsonl<B: BufRead>(
    mut input: B,
    emit: &mut impl FnMut(Row) -> ControlFlow<()>,
) -> Result<ControlFlow<()>, ReadError> {
    let io_error = |error| ReadError::Io {
        source_name: String::new(),
        error,
    };
    let mut line = Vec::new();
    let mut number = 0_u64;
    loop {
        line.clear();
        let read = (&mut input)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(io_error)?;
        if read == 0 {
            return Ok(ControlFlow::Continue(()));
        }
        number += 1;
        let value = if line.len() > MAX_LINE_BYTES && line.last() != Some(&b'\n') {
            skip_line(&mut input).map_err(io_error)?;
            Err(Refusal::LineTooLong {
                limit: MAX_LINE_BYTES,
            })
        } else if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        } else {
            serde_json::from_slice::<Value>(&line).map_err(|e| Refusal::Unreadable(e.to_string()))
        };
        if emit(Row {
            line: number,
            value,
        })
        .is_break()
        {
            return Ok(ControlFlow::Break(()));
        }
    }
}

/// Reads past the rest of an over-long line without keeping it.
fn skip_line<B: BufRead>(input: &mut B) -> io::Result<()> {
    loop {
        let buf = input.fill_buf()?;
        if buf.is_empty() {
            return Ok(());
        }
        if let Some(at) = buf.iter().position(|b| *b == b'\n') {
            input.consume(at + 1);
            return Ok(());
        }
        let n = buf.len();
        input.consume(n);
    }
}

fn read_csv<B: BufRead>(
    input: B,
    shape: &ProviderShape,
    emit: &mut impl FnMut(Row) -> ControlFlow<()>,
) -> Result<ControlFlow<()>, ReadError> {
    let mut reader = csv::ReaderBuilder::new().from_reader(input);
    let header = reader.byte_headers().map_err(csv_fatal)?.clone();
    let columns = csv_columns(&header, shape)?;
    let mut record = csv::ByteRecord::new();
    loop {
        let line = reader.position().line();
        let value = match reader.read_byte_record(&mut record) {
            Ok(false) => return Ok(ControlFlow::Continue(())),
            Ok(true) => csv_row(&columns, &record, shape),
            Err(e) if matches!(e.kind(), csv::ErrorKind::Io(_)) => return Err(csv_fatal(e)),
            Err(e) => Err(Refusal::Unreadable(e.to_string())),
        };
        let line = record.position().map_or(line, |p| p.line());
        if emit(Row { line, value }).is_break() {
            return Ok(ControlFlow::Break(()));
        }
    }
}

fn csv_fatal(error: csv::Error) -> ReadError {
    let text = error.to_string();
    match error.into_kind() {
        csv::ErrorKind::Io(error) => ReadError::Io {
            source_name: String::new(),
            error,
        },
        _ => ReadError::Columns {
            source_name: String::new(),
            reason: format!("unreadable CSV header: {text}"),
        },
    }
}

/// The header's columns as dotted paths, checked: the key and every feature field present,
/// no column twice, no column that is also the parent of another, no `$` or empty segment.
fn csv_columns(
    header: &csv::ByteRecord,
    shape: &ProviderShape,
) -> Result<Vec<Vec<String>>, ReadError> {
    let wrong = |reason: String| ReadError::Columns {
        source_name: String::new(),
        reason: format!("wrong CSV columns: {reason}"),
    };
    let mut names = Vec::with_capacity(header.len());
    for cell in header {
        let name = std::str::from_utf8(cell)
            .map_err(|_| wrong("a column name is not UTF-8".into()))?
            .trim()
            .to_owned();
        if name.split('.').any(|s| s.is_empty() || s.starts_with('$')) {
            return Err(wrong(format!("column {name:?} is not a field path")));
        }
        if names.contains(&name) {
            return Err(wrong(format!("column {name:?} appears twice")));
        }
        names.push(name);
    }
    for name in &names {
        if let Some(child) = names.iter().find(|n| n.starts_with(&format!("{name}."))) {
            return Err(wrong(format!(
                "column {name:?} is also the parent of {child:?}"
            )));
        }
    }
    let required = std::iter::once(&shape.key_field).chain(shape.fields.iter().map(|(_, p)| p));
    let missing: Vec<&str> = required
        .filter(|r| !names.contains(r))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Err(wrong(format!(
            "missing {} (found {})",
            missing.join(", "),
            names.join(", ")
        )));
    }
    Ok(names
        .iter()
        .map(|n| n.split('.').map(str::to_owned).collect())
        .collect())
}

/// One CSV record as a JSON object: feature cells as numbers, other cells as text; an empty
/// cell is an absent field.
fn csv_row(
    columns: &[Vec<String>],
    record: &csv::ByteRecord,
    shape: &ProviderShape,
) -> Result<Value, Refusal> {
    let mut row = Map::new();
    for (path, cell) in columns.iter().zip(record) {
        let text = std::str::from_utf8(cell)
            .map_err(|_| Refusal::Unreadable(format!("column {} is not UTF-8", path.join("."))))?
            .trim();
        if text.is_empty() {
            continue;
        }
        let dotted = path.join(".");
        let value = if shape.is_feature_path(&dotted) {
            match text.parse::<f64>() {
                Ok(v) if v.is_finite() => Value::from(v),
                Ok(_) => {
                    return Err(Refusal::NotFinite {
                        path: dotted,
                        text: text.to_owned(),
                    })
                }
                Err(_) => Value::String(text.to_owned()),
            }
        } else {
            Value::String(text.to_owned())
        };
        insert_at(&mut row, path, value);
    }
    Ok(Value::Object(row))
}

fn insert_at(map: &mut Map<String, Value>, path: &[String], value: Value) {
    let (last, parents) = path
        .split_last()
        .expect("a column has at least one segment");
    let mut at = map;
    for part in parents {
        let entry = at
            .entry(part.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        at = entry
            .as_object_mut()
            .expect("the header check keeps parents objects");
    }
    at.insert(last.clone(), value);
}

/// A reader that feeds every byte it reads into a SHA-256 and counts them.
struct Hashing<R> {
    inner: R,
    state: Rc<RefCell<(Sha256, u64)>>,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut state = self.state.borrow_mut();
        state.0.update(&buf[..n]);
        state.1 += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::PipelineSpec;
    use flate2::write::GzEncoder;
    use std::io::Write;

    fn aurum() -> ProviderShape {
        ProviderShape::from_spec(&PipelineSpec::banknote(), "aurum").unwrap()
    }

    fn rows(bytes: &[u8], format: Format) -> Result<(Vec<Row>, ContentDigest), ReadError> {
        let mut out = Vec::new();
        let digest = read_rows(bytes, "test", format, &aurum(), |r| {
            out.push(r);
            ControlFlow::Continue(())
        })?;
        Ok((out, digest))
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    const JSONL: &[u8] = b"{\"note_id\":\"SN-1\",\"scan\":{\"kurtosis\":1,\"entropy\":2}}\n\n{not json\n{\"note_id\":\"SN-2\",\"scan\":{\"kurtosis\":3,\"entropy\":4}}";

    #[test]
    fn jsonl_rows_are_numbered_by_line_and_blank_lines_skipped() {
        let (rows, digest) = rows(JSONL, Format::Jsonl).unwrap();
        assert_eq!(rows.iter().map(|r| r.line).collect::<Vec<_>>(), [1, 3, 4]);
        assert!(matches!(rows[1].value, Err(Refusal::Unreadable(_))));
        assert_eq!(rows[2].value.as_ref().unwrap()["note_id"], "SN-2");
        assert_eq!(digest.bytes, JSONL.len() as u64);
        assert!(digest.hash.starts_with("sha256:"));
    }

    #[test]
    fn gzip_is_known_by_its_magic_bytes_and_hashed_as_stored() {
        let compressed = gzip(JSONL);
        let (plain, plain_digest) = rows(JSONL, Format::Jsonl).unwrap();
        let (unzipped, digest) = rows(&compressed, Format::Jsonl).unwrap();
        assert_eq!(plain, unzipped);
        assert_eq!(digest.bytes, compressed.len() as u64);
        assert_ne!(digest.hash, plain_digest.hash);
    }

    #[test]
    fn a_truncated_gzip_stream_is_an_error_not_fewer_rows() {
        let big: Vec<u8> = (0..2000)
            .flat_map(|i| {
                format!("{{\"note_id\":\"SN-{i}\",\"scan\":{{\"kurtosis\":{i},\"entropy\":1}}}}\n")
                    .into_bytes()
            })
            .collect();
        let compressed = gzip(&big);
        let cut = &compressed[..compressed.len() * 2 / 3];
        let err = rows(cut, Format::Jsonl).unwrap_err();
        assert!(matches!(err, ReadError::Gzip { .. }), "{err}");
        assert!(err.to_string().contains("truncated"), "{err}");
        // Only the trailer missing: every row decodes, the stream is still incomplete.
        let no_trailer = &compressed[..compressed.len() - 4];
        assert!(matches!(
            rows(no_trailer, Format::Jsonl),
            Err(ReadError::Gzip { .. })
        ));
    }

    #[test]
    fn csv_cells_become_nested_fields_and_nan_or_inf_is_refused() {
        let csv = b"note_id,scan.kurtosis,scan.entropy,lab\nSN-1,1.5,-2,north\nSN-2,NaN,1,south\nSN-3,inf,1,x\nSN-4,abc,1,\nSN-5,1\n";
        let (rows, _) = rows(csv, Format::Csv).unwrap();
        assert_eq!(
            rows[0].value.as_ref().unwrap(),
            &serde_json::json!({"note_id": "SN-1", "scan": {"kurtosis": 1.5, "entropy": -2.0}, "lab": "north"})
        );
        assert_eq!(rows[0].line, 2);
        assert_eq!(
            rows[1].value,
            Err(Refusal::NotFinite {
                path: "scan.kurtosis".into(),
                text: "NaN".into()
            })
        );
        assert!(matches!(rows[2].value, Err(Refusal::NotFinite { .. })));
        assert_eq!(rows[3].value.as_ref().unwrap()["scan"]["kurtosis"], "abc");
        assert!(rows[3].value.as_ref().unwrap().get("lab").is_none());
        assert!(matches!(rows[4].value, Err(Refusal::Unreadable(_))));
        assert_eq!(rows[4].line, 6);
    }

    #[test]
    fn csv_with_wrong_columns_is_refused_whole() {
        for (csv, says) in [
            (
                &b"note_id,scan.kurtosis\nSN-1,1\n"[..],
                "missing scan.entropy",
            ),
            (b"id,scan.kurtosis,scan.entropy\n", "missing note_id"),
            (
                b"note_id,scan.kurtosis,scan.entropy,scan.entropy\n",
                "appears twice",
            ),
            (b"note_id,scan,scan.kurtosis,scan.entropy\n", "parent of"),
            (
                b"note_id,$x,scan.kurtosis,scan.entropy\n",
                "not a field path",
            ),
        ] {
            let err = rows(csv, Format::Csv).unwrap_err();
            assert!(matches!(err, ReadError::Columns { .. }), "{err}");
            assert!(err.to_string().contains(says), "{err} should say {says}");
        }
    }

    #[test]
    fn formats_follow_the_name() {
        assert_eq!(Format::from_name("a.jsonl.gz"), Some(Format::Jsonl));
        assert_eq!(Format::from_name("s3://b/x/A.CSV"), Some(Format::Csv));
        assert_eq!(Format::from_name("delivery.bin"), None);
    }
}
