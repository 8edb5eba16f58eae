//! Where a delivery comes from, and its rows as an async stream: the bytes are read and parsed
//! on a blocking thread ([`super::read`]) and handed over through a bounded channel, so at most
//! a few thousand rows are in memory whatever the delivery's size.
//!
//! A source is one variant of [`DeliverySource`]; each produces the same [`RowStream`]. An HTTP
//! API ([`super::api`]) is fetched into a spool file first and read from there, as
//! [`DeliverySource::Spooled`].

use std::fmt;
use std::io::{self, Read};
use std::path::PathBuf;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::api::HttpApi;
use super::check::ProviderShape;
use super::read::{read_rows, ContentDigest, Format, ReadError, Row};

/// Rows waiting between the reading thread and the writer.
const ROWS_IN_FLIGHT: usize = 2048;

/// Chunks of an S3 body waiting for the reading thread.
const CHUNKS_IN_FLIGHT: usize = 8;

/// One delivery's location.
#[derive(Debug, Clone, PartialEq)]
pub enum DeliverySource {
    /// A local file.
    File(PathBuf),
    /// An S3 object (`s3://bucket/key`).
    S3 {
        /// The bucket.
        bucket: String,
        /// The object key.
        key: String,
    },
    /// A provider's HTTP JSON API (`http://...`), walked page by page.
    Http(HttpApi),
    /// An HTTP API's documents as fetched into a local spool file (JSON lines); named by the
    /// API's URL.
    Spooled {
        /// The API's URL.
        origin: String,
        /// The spool file.
        path: PathBuf,
    },
}

/// The clients the sources need; a source whose client is missing cannot be read.
#[derive(Debug, Clone, Default)]
pub struct SourceClients {
    /// For `s3://` sources.
    pub s3: Option<aws_sdk_s3::Client>,
}

impl DeliverySource {
    /// `s3://bucket/key`, `http(s)://...` (an API with the default paging) or a local path.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.starts_with("http://") || text.starts_with("https://") {
            return Ok(Self::Http(HttpApi::new(text)));
        }
        match text.strip_prefix("s3://") {
            Some(rest) => match rest.split_once('/') {
                Some((bucket, key)) if !bucket.is_empty() && !key.is_empty() => Ok(Self::S3 {
                    bucket: bucket.to_owned(),
                    key: key.to_owned(),
                }),
                _ => Err(format!("{text} is not s3://bucket/key")),
            },
            None => Ok(Self::File(PathBuf::from(text))),
        }
    }

    /// The format the source's name says, if any.
    pub fn format_from_name(&self) -> Option<Format> {
        match self {
            Self::File(path) => Format::from_name(&path.to_string_lossy()),
            Self::S3 { key, .. } => Format::from_name(key),
            Self::Http(_) | Self::Spooled { .. } => Some(Format::Jsonl),
        }
    }

    /// Opens the source and starts reading its rows in `format` for `shape`.
    pub async fn rows(
        &self,
        clients: &SourceClients,
        format: Format,
        shape: &ProviderShape,
    ) -> Result<RowStream, ReadError> {
        let name = self.to_string();
        let io_error = |error: io::Error| ReadError::Io {
            source_name: name.clone(),
            error,
        };
        let raw: Box<dyn Read + Send> = match self {
            Self::File(path) | Self::Spooled { path, .. } => {
                Box::new(std::fs::File::open(path).map_err(io_error)?)
            }
            Self::Http(_) => {
                return Err(io_error(io::Error::other(
                    "an HTTP source is read from its spool file once fetched",
                )))
            }
            Self::S3 { bucket, key } => {
                let s3 = clients
                    .s3
                    .as_ref()
                    .ok_or_else(|| io_error(io::Error::other("no S3 client was configured")))?;
                let object = s3
                    .get_object()
                    .bucket(bucket)
                    .key(key)
                    .send()
                    .await
                    .map_err(|e| {
                        io_error(io::Error::other(
                            aws_sdk_s3::error::DisplayErrorContext(e).to_string(),
                        ))
                    })?;
                Box::new(spawn_body(object.body))
            }
        };
        Ok(RowStream::spawn(raw, name, format, shape.clone()))
    }
}

impl fmt::Display for DeliverySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "{}", path.display()),
            Self::S3 { bucket, key } => write!(f, "s3://{bucket}/{key}"),
            Self::Http(api) => write!(f, "{api}"),
            Self::Spooled { origin, .. } => f.write_str(origin),
        }
    }
}

/// A delivery's rows, read on a blocking thread.
#[derive(Debug)]
pub struct RowStream {
    rows: mpsc::Receiver<Row>,
    reader: JoinHandle<Result<ContentDigest, ReadError>>,
    source_name: String,
}

impl RowStream {
    /// Starts reading `raw` on a blocking thread.
    pub fn spawn(
        raw: Box<dyn Read + Send>,
        source_name: String,
        format: Format,
        shape: ProviderShape,
    ) -> Self {
        let (tx, rows) = mpsc::channel(ROWS_IN_FLIGHT);
        let name = source_name.clone();
        let reader = tokio::task::spawn_blocking(move || {
            read_rows(raw, &name, format, &shape, |row| {
                match tx.blocking_send(row) {
                    Ok(()) => std::ops::ControlFlow::Continue(()),
                    // The consumer stopped listening: stop reading.
                    Err(_) => std::ops::ControlFlow::Break(()),
                }
            })
        });
        Self {
            rows,
            reader,
            source_name,
        }
    }

    /// The next row, or None at the end (or when the read failed: [`Self::finish`] says).
    pub async fn next(&mut self) -> Option<Row> {
        self.rows.recv().await
    }

    /// Waits for the reader: the digest of the whole delivery, or why it could not be read.
    pub async fn finish(self) -> Result<ContentDigest, ReadError> {
        drop(self.rows);
        self.reader.await.map_err(|_| ReadError::Stopped {
            source_name: self.source_name,
        })?
    }
}

/// An S3 body as a blocking reader: an async task pulls its chunks into a bounded channel.
fn spawn_body(mut body: aws_sdk_s3::primitives::ByteStream) -> ChannelReader {
    let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
    tokio::spawn(async move {
        loop {
            let chunk = match body.try_next().await {
                Ok(Some(chunk)) => Ok(chunk),
                Ok(None) => return,
                Err(e) => Err(io::Error::other(e)),
            };
            let failed = chunk.is_err();
            if tx.send(chunk).await.is_err() || failed {
                return;
            }
        }
    });
    ChannelReader {
        chunks: rx,
        current: Bytes::new(),
    }
}

/// Reads bytes that arrive through a channel (used only on a blocking thread).
struct ChannelReader {
    chunks: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.chunks.blocking_recv() {
                Some(chunk) => self.current = chunk?,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse_from_the_command_line() {
        assert_eq!(
            DeliverySource::parse("s3://drops/aurum/2026-12-01.jsonl.gz").unwrap(),
            DeliverySource::S3 {
                bucket: "drops".into(),
                key: "aurum/2026-12-01.jsonl.gz".into()
            }
        );
        assert!(DeliverySource::parse("s3://drops").is_err());
        let file = DeliverySource::parse("fixtures/default/provider_scans.jsonl").unwrap();
        assert_eq!(file.format_from_name(), Some(Format::Jsonl));
        assert_eq!(file.to_string(), "fixtures/default/provider_scans.jsonl");
        let api = DeliverySource::parse("http://127.0.0.1:8080/scans?since=2026").unwrap();
        assert_eq!(
            api,
            DeliverySource::Http(HttpApi::new("http://127.0.0.1:8080/scans?since=2026"))
        );
        assert_eq!(api.format_from_name(), Some(Format::Jsonl));
    }
}
