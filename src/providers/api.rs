//! A provider's HTTP JSON API as a delivery: its pages fetched one at a time ([`super::request`]
//! paces, bounds and retries each GET) and their documents spooled as JSON lines to a temporary
//! file, which both passes of ingest then read like any file delivery.
//!
//! Why a spool rather than fetching twice: the API is asked once (its rate limit and latency
//! are paid once, and the recorded requests are one run's), the two passes are guaranteed to
//! see the same documents (an API's pages can shift between two walks), and memory stays
//! bounded by one page. The content hash is the spool's: the documents as compact JSON lines,
//! so the same documents delivered again are `unchanged`.

use std::fmt;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::request::{RequestError, RequestPolicy, RequestRecord, Requester};

/// Where an HTTP source's documents are and how to walk its pages.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpApi {
    /// The first page's URL (`http://`); page or cursor parameters are appended to its query.
    pub url: String,
    /// How the next page is asked for.
    pub paging: Paging,
    /// The field of a page holding its array of documents (dots for nested fields); default
    /// `documents`. A page that is itself a JSON array is the documents.
    pub documents_field: String,
    /// Pacing, timeouts and retries.
    pub policy: RequestPolicy,
}

/// How the pages of an API follow each other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Paging {
    /// Each page names the next one's cursor; the last has none.
    Cursor {
        /// The page's field holding the next cursor (dots for nested fields); default `next`.
        /// Absent, null or "" ends the delivery.
        next_field: String,
        /// The query parameter the cursor is sent back in; default `cursor`.
        cursor_param: String,
    },
    /// Pages numbered from 1; the first empty page ends the delivery.
    Page {
        /// The query parameter carrying the number; default `page`.
        page_param: String,
    },
}

impl HttpApi {
    /// An API at `url` with the default field names, cursor paging and the default policy.
    pub fn new(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            paging: Paging::Cursor {
                next_field: "next".into(),
                cursor_param: "cursor".into(),
            },
            documents_field: "documents".into(),
            policy: RequestPolicy::default(),
        }
    }
}

impl fmt::Display for HttpApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

/// Why an API delivery could not be fetched whole; nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// A page could not be had (refused, or every attempt failed).
    #[error(transparent)]
    Request(#[from] RequestError),
    /// A page came back but is not a page of documents.
    #[error("page {page} ({url}) is not a page of documents: {reason}")]
    Malformed {
        page: u32,
        url: String,
        reason: String,
    },
    /// A cursor page named the cursor it was fetched with: it would never end.
    #[error("page {page} ({url}) names its own cursor {cursor:?} as the next one")]
    CursorLoop {
        page: u32,
        url: String,
        cursor: String,
    },
    /// The spool file could not be written.
    #[error("writing the spool file {path}: {error}")]
    Spool {
        path: String,
        #[source]
        error: io::Error,
    },
}

/// The documents of a fetched delivery as JSON lines in a temporary file, removed on drop.
#[derive(Debug)]
pub struct Spool {
    path: PathBuf,
}

impl Spool {
    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What fetching an API delivery gave: the spool or why not, and every request either way.
#[derive(Debug)]
pub struct Fetched {
    /// The spooled documents, or the reason there are none.
    pub result: Result<Spool, FetchError>,
    /// Every attempt of every page, in order.
    pub requests: Vec<RequestRecord>,
}

/// Fetches every page of `api` into a spool in the system's temporary directory; `on_page` is
/// told each page's document count.
pub async fn fetch(api: &HttpApi, mut on_page: impl FnMut(u64)) -> Fetched {
    let mut requester = Requester::new(api.policy);
    let path = std::env::temp_dir().join(format!(
        "ml-pipeline-spool-{}.jsonl",
        uuid::Uuid::new_v4().simple()
    ));
    let result = walk(api, &mut requester, &path, &mut on_page).await;
    Fetched {
        result: result
            .map(|()| Spool { path: path.clone() })
            .inspect_err(|_| {
                let _ = std::fs::remove_file(&path);
            }),
        requests: requester.into_records(),
    }
}

async fn walk(
    api: &HttpApi,
    requester: &mut Requester,
    path: &Path,
    on_page: &mut impl FnMut(u64),
) -> Result<(), FetchError> {
    let spool_error = |error| FetchError::Spool {
        path: path.display().to_string(),
        error,
    };
    // Writes are small and buffered; the pages' waits dominate, so they stay on this task.
    let mut out = BufWriter::new(std::fs::File::create(path).map_err(spool_error)?);
    let mut page = 1u32;
    let mut url = match &api.paging {
        Paging::Cursor { .. } => api.url.clone(),
        Paging::Page { page_param } => with_query(&api.url, page_param, "1"),
    };
    loop {
        let got = requester.get(page, &url).await?;
        let parsed = parse_page(&got.body, &api.documents_field, &api.paging);
        let (documents, next) = match parsed {
            Ok(parsed) => parsed,
            Err(reason) => {
                requester.mark_malformed(got.record, &reason);
                return Err(FetchError::Malformed { page, url, reason });
            }
        };
        for document in &documents {
            serde_json::to_writer(&mut out, document).map_err(|e| spool_error(e.into()))?;
            out.write_all(b"\n").map_err(spool_error)?;
        }
        on_page(documents.len() as u64);
        let next_url = match (&api.paging, next) {
            (Paging::Page { .. }, _) if documents.is_empty() => None,
            (Paging::Page { page_param }, _) => {
                Some(with_query(&api.url, page_param, &(page + 1).to_string()))
            }
            (Paging::Cursor { cursor_param, .. }, Some(cursor)) => {
                let next_url = with_query(&api.url, cursor_param, &cursor);
                if next_url == url {
                    return Err(FetchError::CursorLoop { page, url, cursor });
                }
                Some(next_url)
            }
            (Paging::Cursor { .. }, None) => None,
        };
        match next_url {
            Some(next_url) => url = next_url,
            None => break,
        }
        page += 1;
    }
    out.flush().map_err(spool_error)?;
    out.into_inner()
        .map_err(|e| spool_error(e.into_error()))?
        .sync_all()
        .map_err(spool_error)
}

/// A page's documents and, for cursor paging, the next cursor; or why it is not a page.
pub fn parse_page(
    body: &[u8],
    documents_field: &str,
    paging: &Paging,
) -> Result<(Vec<Value>, Option<String>), String> {
    let mut page: Value = serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
    let next = match paging {
        Paging::Page { .. } => None,
        Paging::Cursor { next_field, .. } => match page.pointer(&pointer(next_field)) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(_) => return Err(format!("field '{next_field}' is not a string or number")),
        },
    };
    // Taken out of the page, not copied: a page is held once.
    let documents = match &mut page {
        Value::Array(documents) => std::mem::take(documents),
        _ => match page.pointer_mut(&pointer(documents_field)).map(Value::take) {
            Some(Value::Array(documents)) => documents,
            Some(_) => return Err(format!("field '{documents_field}' is not an array")),
            None => return Err(format!("no field '{documents_field}' with the documents")),
        },
    };
    Ok((documents, next))
}

/// A dotted field path as a JSON pointer (`data.items` -> `/data/items`).
fn pointer(path: &str) -> String {
    path.split('.')
        .map(|name| format!("/{}", name.replace('~', "~0").replace('/', "~1")))
        .collect()
}

/// `url` with `name=value` added to its query (the value percent-encoded).
pub fn with_query(url: &str, name: &str, value: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    let mut out = format!("{url}{separator}{name}=");
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cursor() -> Paging {
        HttpApi::new("http://x").paging
    }

    #[test]
    fn a_page_gives_its_documents_and_next_cursor() {
        let body = json!({"documents": [{"note_id": "SN-1"}], "next": "abc"}).to_string();
        let (docs, next) = parse_page(body.as_bytes(), "documents", &cursor()).unwrap();
        assert_eq!(docs, vec![json!({"note_id": "SN-1"})]);
        assert_eq!(next.as_deref(), Some("abc"));
        let last = json!({"data": {"items": []}, "next": null}).to_string();
        let (docs, next) = parse_page(last.as_bytes(), "data.items", &cursor()).unwrap();
        assert!(docs.is_empty() && next.is_none());
        let bare = parse_page(b"[{\"a\":1}]", "documents", &cursor()).unwrap();
        assert_eq!(bare.0.len(), 1);
    }

    #[test]
    fn a_malformed_page_says_why() {
        let bad = parse_page(b"{\"documents\": [", "documents", &cursor()).unwrap_err();
        assert!(bad.starts_with("invalid JSON: EOF"), "{bad}");
        let missing = parse_page(b"{\"items\": []}", "documents", &cursor()).unwrap_err();
        assert_eq!(missing, "no field 'documents' with the documents");
    }

    #[test]
    fn query_parameters_are_appended_and_encoded() {
        assert_eq!(with_query("http://h/p", "page", "2"), "http://h/p?page=2");
        assert_eq!(
            with_query("http://h/p?key=1", "cursor", "a b/c=="),
            "http://h/p?key=1&cursor=a%20b%2Fc%3D%3D"
        );
    }
}
