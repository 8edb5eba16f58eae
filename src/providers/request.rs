//! One GET to a provider's HTTP API the way ingest makes it: spaced by a rate limit, bounded by
//! a timeout, retried with exponential backoff and jitter when retrying can help (a timeout, a
//! connection error, 429, 5xx; `Retry-After` honoured), and every attempt recorded for the
//! provider's latency and error numbers (`provider_requests`, migration 0005).
//!
//! Plain `http://` only: the project has no HTTP TLS client (the TLS stacks it carries belong
//! to the AWS SDK, sqlx and the MongoDB driver).

use std::time::Duration;

use axum::http::header;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use http_body_util::{BodyExt, Empty, Limited};
use rand::Rng;
use serde::Serialize;
use tokio::time::Instant;

/// How requests are paced, bounded and retried.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestPolicy {
    /// Requests per second at most (every attempt counts); None: no limit.
    pub rate_per_sec: Option<f64>,
    /// One attempt's limit, connecting and reading the whole body included.
    pub timeout: Duration,
    /// Attempts per page at most, the first included (at least 1).
    pub max_attempts: u32,
    /// The first backoff; each retry doubles it, up to `backoff_max`, then jitter takes a
    /// random 50 to 100 % of it.
    pub backoff_base: Duration,
    /// The longest wait between attempts, `Retry-After` included.
    pub backoff_max: Duration,
    /// A page body larger than this is an error (pages are held in memory one at a time).
    pub max_page_bytes: usize,
}

impl Default for RequestPolicy {
    fn default() -> Self {
        Self {
            rate_per_sec: Some(5.0),
            timeout: Duration::from_secs(30),
            max_attempts: 5,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            max_page_bytes: 64 << 20,
        }
    }
}

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A 2xx answer with its whole body.
    Ok,
    /// An answer with another status (see `status`).
    Status,
    /// No whole answer within the timeout.
    Timeout,
    /// Connecting, sending or reading failed.
    Connection,
    /// A 2xx answer whose body is not the page the source expects (bad JSON, no documents).
    Malformed,
}

impl Outcome {
    /// The name stored in `provider_requests.outcome`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Status => "status",
            Self::Timeout => "timeout",
            Self::Connection => "connection",
            Self::Malformed => "malformed",
        }
    }

    /// The outcome named by [`Self::as_str`] (an unknown name reads as a connection error).
    pub fn parse(text: &str) -> Self {
        match text {
            "ok" => Self::Ok,
            "status" => Self::Status,
            "timeout" => Self::Timeout,
            "malformed" => Self::Malformed,
            _ => Self::Connection,
        }
    }
}

/// One attempt of one page request, as recorded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RequestRecord {
    /// The page's number in the delivery, from 1.
    pub page: u32,
    /// The URL asked for.
    pub url: String,
    /// The attempt's number for this page, from 1.
    pub attempt: u32,
    /// When it was sent.
    pub started_at: DateTime<Utc>,
    /// From sending to the whole body (or the failure), in milliseconds.
    pub latency_ms: f64,
    /// The HTTP status, when there was an answer.
    pub status: Option<u16>,
    /// How it ended.
    pub outcome: Outcome,
    /// What went wrong, when something did.
    pub error: Option<String>,
}

/// A page's body once an attempt succeeded.
#[derive(Debug)]
pub struct Page {
    /// The body.
    pub body: Bytes,
    /// Index of the successful attempt's record, to mark it malformed if its body is not a page.
    pub record: usize,
}

/// Why a page could not be had.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RequestError {
    /// Not a URL this client can ask (not `http://`, no host).
    #[error("{url}: {reason}")]
    BadUrl { url: String, reason: String },
    /// A 4xx other than 429: asking again will not help.
    #[error("page {page} ({url}): HTTP {status}, not retried: {body}")]
    Refused {
        page: u32,
        url: String,
        status: u16,
        body: String,
    },
    /// Every attempt failed with something retryable.
    #[error("page {page} ({url}): gave up after {attempts} attempts; the last: {last}")]
    Exhausted {
        page: u32,
        url: String,
        attempts: u32,
        last: String,
    },
}

/// Makes the requests of one delivery: keeps the pacing and the records.
#[derive(Debug)]
pub struct Requester {
    policy: RequestPolicy,
    next_allowed: Option<Instant>,
    records: Vec<RequestRecord>,
}

/// One attempt's result before the retry decision.
enum Attempt {
    Answer {
        status: u16,
        retry_after: Option<Duration>,
        body: Bytes,
    },
    Failed {
        outcome: Outcome,
        error: String,
    },
}

impl Requester {
    /// A requester with no requests made yet.
    pub fn new(policy: RequestPolicy) -> Self {
        Self {
            policy,
            next_allowed: None,
            records: Vec::new(),
        }
    }

    /// Every attempt so far, in order.
    pub fn records(&self) -> &[RequestRecord] {
        &self.records
    }

    /// Takes the records (for the ledger).
    pub fn into_records(self) -> Vec<RequestRecord> {
        self.records
    }

    /// Marks a successful attempt's body as not a page.
    pub fn mark_malformed(&mut self, record: usize, error: &str) {
        if let Some(r) = self.records.get_mut(record) {
            r.outcome = Outcome::Malformed;
            r.error = Some(error.to_owned());
        }
    }

    /// GETs page `page` at `url`, retrying as the policy says.
    pub async fn get(&mut self, page: u32, url: &str) -> Result<Page, RequestError> {
        let uri = parse_http(url)?;
        let max_attempts = self.policy.max_attempts.max(1);
        for attempt in 1..=max_attempts {
            self.pace().await;
            let started_at = Utc::now();
            let started = Instant::now();
            let result = tokio::time::timeout(self.policy.timeout, self.once(&uri)).await;
            let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
            let result = result.unwrap_or_else(|_| Attempt::Failed {
                outcome: Outcome::Timeout,
                error: format!("no whole answer within {:?}", self.policy.timeout),
            });
            let mut record = RequestRecord {
                page,
                url: url.to_owned(),
                attempt,
                started_at,
                latency_ms,
                status: None,
                outcome: Outcome::Ok,
                error: None,
            };
            let (error, retry_after) = match result {
                Attempt::Answer { status, body, .. } if (200..300).contains(&status) => {
                    record.status = Some(status);
                    self.records.push(record);
                    return Ok(Page {
                        body,
                        record: self.records.len() - 1,
                    });
                }
                Attempt::Answer {
                    status,
                    retry_after,
                    body,
                } => {
                    let text = crate::text::truncate_chars(&String::from_utf8_lossy(&body), 200);
                    record.status = Some(status);
                    record.outcome = Outcome::Status;
                    record.error = Some(format!("HTTP {status}: {text}"));
                    self.records.push(record);
                    if !retryable(status) {
                        return Err(RequestError::Refused {
                            page,
                            url: url.to_owned(),
                            status,
                            body: text,
                        });
                    }
                    (format!("HTTP {status}: {text}"), retry_after)
                }
                Attempt::Failed { outcome, error } => {
                    record.outcome = outcome;
                    record.error = Some(error.clone());
                    self.records.push(record);
                    (error, None)
                }
            };
            if attempt == max_attempts {
                return Err(RequestError::Exhausted {
                    page,
                    url: url.to_owned(),
                    attempts: attempt,
                    last: error,
                });
            }
            tracing::warn!(page, attempt, %url, %error, "provider request failed; retrying");
            let wait = retry_after
                .map(|d| d.min(self.policy.backoff_max))
                .unwrap_or_else(|| backoff(&self.policy, attempt));
            tokio::time::sleep(wait).await;
        }
        unreachable!("the loop returns on its last attempt")
    }

    /// Waits until the rate limit allows the next request.
    async fn pace(&mut self) {
        let Some(rate) = self.policy.rate_per_sec.filter(|r| *r > 0.0) else {
            return;
        };
        if let Some(at) = self.next_allowed {
            tokio::time::sleep_until(at).await;
        }
        self.next_allowed = Some(Instant::now() + Duration::from_secs_f64(1.0 / rate));
    }

    /// One attempt: connect, send, read the whole body (up to the page limit).
    async fn once(&self, uri: &hyper::Uri) -> Attempt {
        let failed = |outcome, error: String| Attempt::Failed { outcome, error };
        let host = uri.host().unwrap_or_default().to_owned();
        let port = uri.port_u16().unwrap_or(80);
        let stream = match tokio::net::TcpStream::connect((host.as_str(), port)).await {
            Ok(stream) => stream,
            Err(e) => return failed(Outcome::Connection, format!("connecting: {e}")),
        };
        let io = hyper_util::rt::TokioIo::new(stream);
        let (mut sender, connection) = match hyper::client::conn::http1::handshake(io).await {
            Ok(pair) => pair,
            Err(e) => return failed(Outcome::Connection, format!("handshake: {e}")),
        };
        let driver = tokio::spawn(connection);
        let request = hyper::Request::builder()
            .method("GET")
            .uri(uri.path_and_query().map_or("/", |p| p.as_str()))
            .header(header::HOST, format!("{host}:{port}"))
            .header(header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .expect("a GET with a parsed URI is a valid request");
        let attempt = match sender.send_request(request).await {
            Ok(response) => {
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get(header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| retry_after(v, Utc::now()));
                let limited = Limited::new(response.into_body(), self.policy.max_page_bytes);
                match limited.collect().await {
                    Ok(body) => Attempt::Answer {
                        status,
                        retry_after,
                        body: body.to_bytes(),
                    },
                    Err(e) => failed(Outcome::Connection, format!("reading the body: {e}")),
                }
            }
            Err(e) => failed(Outcome::Connection, format!("sending: {e}")),
        };
        driver.abort();
        attempt
    }
}

/// A `Retry-After` value: seconds, or an HTTP date (a date in the past is no wait).
fn retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = DateTime::parse_from_rfc2822(value).ok()?;
    Some(
        (at.with_timezone(&Utc) - now)
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

/// Statuses worth asking again: 429 and 5xx.
fn retryable(status: u16) -> bool {
    status == 429 || status >= 500
}

/// The wait after failed attempt `attempt` (from 1): base * 2^(attempt-1), capped, then a
/// random 50 to 100 % of it, so that clients that failed together do not retry together.
pub fn backoff(policy: &RequestPolicy, attempt: u32) -> Duration {
    let doubled = policy
        .backoff_base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let capped = doubled.min(policy.backoff_max);
    capped.mul_f64(rand::rng().random_range(0.5..=1.0))
}

/// A URL this client can GET: `http://host[:port]/path?query`.
fn parse_http(url: &str) -> Result<hyper::Uri, RequestError> {
    let bad = |reason: &str| RequestError::BadUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let uri: hyper::Uri = url.parse().map_err(|_| bad("not a URL"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(bad(
                "https:// is not supported yet (no TLS HTTP client is built in); use http://",
            ))
        }
        _ => return Err(bad("only http:// URLs are supported")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("the URL has no host"));
    }
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let policy = RequestPolicy {
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_millis(1000),
            ..RequestPolicy::default()
        };
        for _ in 0..50 {
            let first = backoff(&policy, 1);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let third = backoff(&policy, 3);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
            let late = backoff(&policy, 30);
            assert!(late >= Duration::from_millis(500) && late <= Duration::from_millis(1000));
        }
    }

    #[test]
    fn retry_after_is_seconds_or_an_http_date() {
        let now = DateTime::parse_from_rfc2822("Tue, 01 Dec 2026 06:00:00 GMT")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        assert_eq!(
            retry_after("Tue, 01 Dec 2026 06:00:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            retry_after("Tue, 01 Dec 2026 05:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("soon", now), None);
    }

    #[test]
    fn only_429_and_5xx_are_retried() {
        assert!(retryable(429) && retryable(500) && retryable(503));
        assert!(!retryable(400) && !retryable(404) && !retryable(401));
    }

    #[test]
    fn only_plain_http_urls_are_asked() {
        assert!(parse_http("http://127.0.0.1:8080/scans").is_ok());
        let https = parse_http("https://api.example.com/scans").unwrap_err();
        assert!(https.to_string().contains("https:// is not supported"));
        assert!(parse_http("ftp://x/y").is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_limit_spaces_requests() {
        let mut requester = Requester::new(RequestPolicy {
            rate_per_sec: Some(4.0),
            ..RequestPolicy::default()
        });
        let start = Instant::now();
        for _ in 0..3 {
            requester.pace().await;
        }
        assert_eq!(start.elapsed(), Duration::from_millis(500));
    }
}
