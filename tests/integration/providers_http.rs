//! A provider's HTTP JSON API as a delivery (issue 14, item 4): a real HTTP server on
//! 127.0.0.1 inside the test serves the fixture documents page by page, as a normal, a slow, a
//! flaky, a malformed and a broken provider would; ingest talks to it over a socket and writes
//! to the real PostgreSQL and MongoDB-wire server, each test on its own databases.

use crate::common;

use ml_pipeline::providers::report::{self, stats::quantile, ReportOptions};

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use ml_pipeline::providers::ingest::IngestError;
use ml_pipeline::providers::request::Outcome;
use ml_pipeline::providers::{
    DeliverySource, DocumentStore, HttpApi, Ingest, IngestOptions, IngestRequest, IngestSummary,
    Ledger, Paging, RequestPolicy, Silent, SourceClients, Status,
};
use ml_pipeline::spec::PipelineSpec;
use mongodb::bson::{doc, Document};
use serde_json::{json, Value};

/// Documents per page served.
const PAGE_SIZE: usize = 250;

/// How the test provider behaves.
#[derive(Debug, Clone, Copy)]
enum Behaviour {
    /// Answers every page at once.
    Normal,
    /// Waits `delay` before answering each of the first `requests` requests.
    Slow { delay: Duration, requests: usize },
    /// 503 to the first request, 429 with `Retry-After: 0` to the second, then answers.
    Flaky,
    /// Answers page 2 with truncated JSON.
    Malformed,
    /// Always `status`.
    Failing { status: StatusCode },
}

/// The provider's state: its documents, its behaviour, the requests it was sent.
struct Provider {
    documents: Vec<Value>,
    behaviour: Behaviour,
    requests: AtomicUsize,
}

/// A provider serving the default fixtures' `provider_scans` at `http://127.0.0.1:<port>/scans`
/// in both paging styles (`?cursor=` offsets and `?page=` numbers). Returns its base URL.
async fn serve(behaviour: Behaviour) -> (String, Arc<Provider>) {
    let provider = Arc::new(Provider {
        documents: common::default_fixtures().provider_scans.clone(),
        behaviour,
        requests: AtomicUsize::new(0),
    });
    let app = axum::Router::new()
        .route("/scans", axum::routing::get(page))
        .with_state(provider.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/scans"), provider)
}

async fn page(State(provider): State<Arc<Provider>>, uri: Uri) -> Response {
    let n = provider.requests.fetch_add(1, Ordering::SeqCst);
    let query: HashMap<&str, &str> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .collect();
    let number = |name| query.get(name).and_then(|v| v.parse::<usize>().ok());
    let (start, page_number) = match (number("cursor"), number("page")) {
        (_, Some(page)) => ((page - 1) * PAGE_SIZE, page),
        (cursor, None) => {
            let start = cursor.unwrap_or(0);
            (start, start / PAGE_SIZE + 1)
        }
    };
    match provider.behaviour {
        Behaviour::Normal => {}
        Behaviour::Slow { delay, requests } => {
            if n < requests {
                tokio::time::sleep(delay).await;
            }
        }
        Behaviour::Flaky if n == 0 => {
            return (StatusCode::SERVICE_UNAVAILABLE, "warming up").into_response()
        }
        Behaviour::Flaky if n == 1 => {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", "0")],
                "slow down",
            )
                .into_response()
        }
        Behaviour::Flaky => {}
        Behaviour::Malformed if page_number == 2 => {
            return (StatusCode::OK, "{\"documents\": [{\"note_id\": \"SN-0").into_response()
        }
        Behaviour::Malformed => {}
        Behaviour::Failing { status } => return (status, "down").into_response(),
    }
    let all = &provider.documents;
    let end = (start + PAGE_SIZE).min(all.len());
    let documents = all.get(start.min(all.len())..end).unwrap_or(&[]);
    let next = (end < all.len()).then(|| end.to_string());
    axum::Json(json!({"documents": documents, "next": next})).into_response()
}

/// A quick policy for tests: no rate limit, short backoffs.
fn policy(timeout: Duration, max_attempts: u32) -> RequestPolicy {
    RequestPolicy {
        rate_per_sec: None,
        timeout,
        max_attempts,
        backoff_base: Duration::from_millis(10),
        backoff_max: Duration::from_millis(100),
        ..RequestPolicy::default()
    }
}

fn cursor_api(url: &str, policy: RequestPolicy) -> DeliverySource {
    DeliverySource::Http(HttpApi {
        policy,
        ..HttpApi::new(url)
    })
}

/// One test's databases and the systems ingest uses.
struct Env {
    spec: PipelineSpec,
    mongo: mongodb::Database,
    store: DocumentStore,
    ledger: Ledger,
    _db: common::TestDb,
}

impl Env {
    async fn new() -> Self {
        let db = common::TestDb::new().await;
        let mongo = common::mongo_db().await;
        let spec = PipelineSpec::banknote();
        ml_pipeline::mongo::ensure_indexes(&mongo, &spec)
            .await
            .unwrap();
        let store = DocumentStore::new(mongo.clone(), spec.documents.as_ref().unwrap());
        store.ensure_indexes().await.unwrap();
        Self {
            spec,
            mongo,
            store,
            ledger: Ledger::new(db.pool.clone()),
            _db: db,
        }
    }

    async fn ingest(&self, source: DeliverySource) -> Result<IngestSummary, IngestError> {
        let request = IngestRequest {
            provider: "aurum".into(),
            source,
            format: None,
            delivery_id: None,
        };
        Ingest {
            spec: &self.spec,
            store: &self.store,
            ledger: &self.ledger,
            clients: &SourceClients::default(),
            progress: &Silent,
        }
        .run(&request, IngestOptions::default())
        .await
    }

    /// Every current document, by `_id`.
    async fn current(&self) -> HashMap<String, Document> {
        self.mongo
            .collection::<Document>("provider_scans")
            .find(doc! {})
            .await
            .unwrap()
            .try_collect::<Vec<_>>()
            .await
            .unwrap()
            .into_iter()
            .map(|d| (d.get_str("_id").unwrap().to_owned(), d))
            .collect()
    }

    /// The failed delivery named by an ingest error, with its recorded requests.
    async fn failed(&self, error: &IngestError) -> (String, Vec<(u32, u32, Option<u16>, Outcome)>) {
        let IngestError::Fetch { delivery_id, .. } = error else {
            panic!("expected a fetch error, got {error}");
        };
        let row = self.ledger.get(delivery_id).await.unwrap().unwrap();
        assert_eq!(row.status, Status::Failed);
        let requests = self.ledger.requests(delivery_id).await.unwrap();
        let brief = requests
            .iter()
            .map(|r| (r.page, r.attempt, r.status, r.outcome))
            .collect();
        (row.error.unwrap(), brief)
    }
}

/// The fixture file loaded as a file delivery, for the counts an API delivery must match.
async fn file_counts() -> IngestSummary {
    let env = Env::new().await;
    let path = ml_pipeline::fixtures::files::default_dir().join("provider_scans.jsonl");
    env.ingest(DeliverySource::File(path)).await.unwrap()
}

fn pages() -> u32 {
    common::default_fixtures()
        .provider_scans
        .len()
        .div_ceil(PAGE_SIZE) as u32
}

#[tokio::test]
async fn a_paged_api_loads_like_the_file_in_both_paging_styles() {
    let file = file_counts().await;
    let (url, provider) = serve(Behaviour::Normal).await;
    let paced = RequestPolicy {
        rate_per_sec: Some(200.0),
        ..policy(Duration::from_secs(10), 3)
    };

    let env = Env::new().await;
    let by_cursor = env.ingest(cursor_api(&url, paced)).await.unwrap();
    assert_eq!(by_cursor.status, Status::Succeeded);
    assert_eq!(by_cursor.counts, file.counts);
    assert_eq!(env.current().await.len() as u64, file.counts.inserted);
    assert_eq!(by_cursor.requests.len() as u32, pages());
    assert!(by_cursor
        .requests
        .iter()
        .all(|r| r.attempt == 1 && r.outcome == Outcome::Ok && r.status == Some(200)));
    let recorded = env.ledger.requests(&by_cursor.delivery_id).await.unwrap();
    assert_eq!(recorded.len(), by_cursor.requests.len());
    assert!(recorded[1].url.ends_with(&format!("?cursor={PAGE_SIZE}")));
    let row = env
        .ledger
        .get(&by_cursor.delivery_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.source, url);

    // The same documents again, page by page number: the same content, so nothing changes.
    let by_page = DeliverySource::Http(HttpApi {
        paging: Paging::Page {
            page_param: "page".into(),
        },
        policy: paced,
        ..HttpApi::new(&url)
    });
    let again = env.ingest(by_page.clone()).await.unwrap();
    assert_eq!(again.status, Status::Unchanged);
    assert_eq!(
        again.same_as.as_deref(),
        Some(by_cursor.delivery_id.as_str())
    );
    // Page paging ends on the first empty page: one request more than there are pages.
    assert_eq!(again.requests.len() as u32, pages() + 1);

    let fresh = Env::new().await;
    let paged = fresh.ingest(by_page).await.unwrap();
    assert_eq!(paged.status, Status::Succeeded);
    assert_eq!(paged.counts, file.counts);
    assert_eq!(
        provider.requests.load(Ordering::SeqCst) as u32,
        pages() + 2 * (pages() + 1)
    );
}

#[tokio::test]
async fn a_slow_provider_times_out_and_is_retried_or_answers_within_the_timeout() {
    let file = file_counts().await;

    // Every page takes 200 ms, the timeout is 10 s: each page answers on its first attempt.
    let (url, _) = serve(Behaviour::Slow {
        delay: Duration::from_millis(200),
        requests: usize::MAX,
    })
    .await;
    let env = Env::new().await;
    let patient = env
        .ingest(cursor_api(&url, policy(Duration::from_secs(10), 2)))
        .await
        .unwrap();
    assert_eq!(patient.counts, file.counts);
    assert!(patient
        .requests
        .iter()
        .all(|r| r.attempt == 1 && r.outcome == Outcome::Ok));

    // The first request takes 30 s and the timeout is 300 ms: it times out, the retry answers.
    let (url, _) = serve(Behaviour::Slow {
        delay: Duration::from_secs(30),
        requests: 1,
    })
    .await;
    let env = Env::new().await;
    let retried = env
        .ingest(cursor_api(&url, policy(Duration::from_millis(300), 3)))
        .await
        .unwrap();
    assert_eq!(retried.status, Status::Succeeded);
    assert_eq!(retried.counts, file.counts);
    let first_page: Vec<(u32, Outcome, Option<u16>)> = retried
        .requests
        .iter()
        .filter(|r| r.page == 1)
        .map(|r| (r.attempt, r.outcome, r.status))
        .collect();
    assert_eq!(
        first_page,
        vec![(1, Outcome::Timeout, None), (2, Outcome::Ok, Some(200))]
    );
    assert_eq!(retried.requests.len() as u32, pages() + 1);

    // Always slower than the timeout: the attempts run out and the delivery fails, empty.
    let (url, _) = serve(Behaviour::Slow {
        delay: Duration::from_secs(30),
        requests: usize::MAX,
    })
    .await;
    let env = Env::new().await;
    let error = env
        .ingest(cursor_api(&url, policy(Duration::from_millis(200), 2)))
        .await
        .unwrap_err();
    let (reason, requests) = env.failed(&error).await;
    assert!(
        reason.contains("page 1") && reason.contains("gave up after 2 attempts"),
        "{reason}"
    );
    assert_eq!(
        requests,
        vec![
            (1, 1, None, Outcome::Timeout),
            (1, 2, None, Outcome::Timeout)
        ]
    );
    assert!(env.current().await.is_empty());
}

#[tokio::test]
async fn a_provider_that_fails_a_few_times_then_answers_is_loaded_with_the_retries_recorded() {
    let file = file_counts().await;
    let (url, _) = serve(Behaviour::Flaky).await;
    let env = Env::new().await;
    let summary = env
        .ingest(cursor_api(&url, policy(Duration::from_secs(10), 3)))
        .await
        .unwrap();
    assert_eq!(summary.status, Status::Succeeded);
    assert_eq!(summary.counts, file.counts);
    let recorded = env.ledger.requests(&summary.delivery_id).await.unwrap();
    let first_page: Vec<(u32, Option<u16>, Outcome)> = recorded
        .iter()
        .filter(|r| r.page == 1)
        .map(|r| (r.attempt, r.status, r.outcome))
        .collect();
    assert_eq!(
        first_page,
        vec![
            (1, Some(503), Outcome::Status),
            (2, Some(429), Outcome::Status),
            (3, Some(200), Outcome::Ok),
        ]
    );
    assert!(recorded[0].error.as_deref().unwrap().contains("503"));
    assert_eq!(recorded.len() as u32, pages() + 2);

    // The provider report's API section reads the same requests back.
    let mut options =
        ReportOptions::since(chrono::Utc::now() - chrono::TimeDelta::hours(1), "banknote");
    options.latency_budgets.insert("aurum".into(), 60_000.0);
    let report = report::gather(&env.spec, &env._db.pool, &env.mongo, &options)
        .await
        .unwrap();
    let [api] = &report.api[..] else {
        panic!("one provider with requests: {:?}", report.api);
    };
    assert_eq!(api.provider, "aurum");
    assert_eq!(api.requests, u64::from(pages() + 2));
    assert_eq!(api.errors, 2);
    assert!((api.error_rate - 2.0 / f64::from(pages() + 2)).abs() < 1e-12);
    let mut latencies: Vec<f64> = recorded.iter().map(|r| r.latency_ms).collect();
    for (got, q) in [(api.p50_ms, 0.5), (api.p95_ms, 0.95), (api.p99_ms, 0.99)] {
        let want = quantile(&mut latencies, q).unwrap();
        assert!((got - want).abs() < 1e-6, "p{q}: {got} vs {want}");
    }
    assert!(api.within_budget && api.budget_ms == 60_000.0);
    options
        .latency_budgets
        .insert("aurum".into(), api.p95_ms / 2.0);
    let report = report::gather(&env.spec, &env._db.pool, &env.mongo, &options)
        .await
        .unwrap();
    assert!(!report.api[0].within_budget, "{:?}", report.api[0]);
}

#[tokio::test]
async fn a_page_of_malformed_json_fails_the_delivery_and_changes_nothing() {
    let env = Env::new().await;
    let path = ml_pipeline::fixtures::files::default_dir().join("provider_update_aurum.jsonl");
    env.ingest(DeliverySource::File(path)).await.unwrap();
    let before = env.current().await;
    assert!(!before.is_empty());

    let (url, _) = serve(Behaviour::Malformed).await;
    let error = env
        .ingest(cursor_api(&url, policy(Duration::from_secs(10), 3)))
        .await
        .unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains(&format!("page 2 ({url}?cursor={PAGE_SIZE})"))
            && text.contains("invalid JSON")
            && text.contains("nothing was written"),
        "{text}"
    );
    let (reason, requests) = env.failed(&error).await;
    assert!(
        reason.contains("page 2") && reason.contains("invalid JSON"),
        "{reason}"
    );
    assert_eq!(
        requests,
        vec![
            (1, 1, Some(200), Outcome::Ok),
            (2, 1, Some(200), Outcome::Malformed)
        ],
        "a malformed page is not asked again"
    );
    assert_eq!(env.current().await, before);
}

#[tokio::test]
async fn a_provider_that_always_fails_gets_bounded_attempts_then_a_failed_delivery() {
    let env = Env::new().await;
    let (url, provider) = serve(Behaviour::Failing {
        status: StatusCode::SERVICE_UNAVAILABLE,
    })
    .await;
    let error = env
        .ingest(cursor_api(&url, policy(Duration::from_secs(10), 4)))
        .await
        .unwrap_err();
    let (reason, requests) = env.failed(&error).await;
    assert!(
        reason.contains("gave up after 4 attempts") && reason.contains("HTTP 503"),
        "{reason}"
    );
    assert_eq!(requests.len(), 4);
    assert!(requests.iter().all(|&(page, _, status, outcome)| page == 1
        && status == Some(503)
        && outcome == Outcome::Status));
    assert_eq!(provider.requests.load(Ordering::SeqCst), 4);
    assert!(env.current().await.is_empty());

    // A 4xx other than 429 is not retried.
    let (url, provider) = serve(Behaviour::Failing {
        status: StatusCode::NOT_FOUND,
    })
    .await;
    let error = env
        .ingest(cursor_api(&url, policy(Duration::from_secs(10), 4)))
        .await
        .unwrap_err();
    let (reason, requests) = env.failed(&error).await;
    assert!(reason.contains("HTTP 404, not retried"), "{reason}");
    assert_eq!(requests, vec![(1, 1, Some(404), Outcome::Status)]);
    assert_eq!(provider.requests.load(Ordering::SeqCst), 1);
}
