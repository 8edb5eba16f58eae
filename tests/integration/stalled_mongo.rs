//! A MongoDB server that stops answering while the worker drains: the worker still exits at its
//! drain deadline, and the bundles it held stay on the queue for redelivery.
//!
//! The worker reaches the real MongoDB server through a TCP relay that the test can stall:
//! connections stay open and no byte passes, which is how a hung server or a network partition
//! looks to a client (no error, no answer). The lookup's own timeout is set far beyond the drain
//! timeout, so only the drain deadline can end the wait.

use crate::common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::harness::{fixture_bundles, messages_on, TestWorker};
use ml_pipeline::bundle::compression::ContentEncoding;
use ml_pipeline::enrich::mongo::MongoDocuments;
use ml_pipeline::enrich::source::LookupLimits;
use ml_pipeline::enrich::Enricher;
use ml_pipeline::worker::{Hooks, Worker, WorkerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A TCP relay to `upstream` that passes nothing while `stalled` is set.
struct Relay {
    addr: SocketAddr,
    stalled: Arc<AtomicBool>,
}

impl Relay {
    async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stalled = Arc::new(AtomicBool::new(false));
        let gate = Arc::clone(&stalled);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(pipe(client_read, server_write, Arc::clone(&gate)));
                tokio::spawn(pipe(server_read, client_write, Arc::clone(&gate)));
            }
        });
        Self { addr, stalled }
    }
}

async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, stalled: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while stalled.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// `host:port` of a `mongodb://host:port/...` URI.
fn host_port(uri: &str) -> String {
    let rest = uri.trim_start_matches("mongodb://");
    let rest = rest.rsplit('@').next().unwrap_or(rest);
    rest.split(['/', '?']).next().unwrap().to_owned()
}

#[tokio::test]
async fn the_drain_ends_at_its_deadline_while_mongodb_stops_answering_and_nothing_is_lost() {
    let t = TestWorker::new(30).await;
    let relay = Relay::start(host_port(&common::mongodb_uri())).await;
    let relayed = ml_pipeline::mongo::connect(
        &format!("mongodb://{}/?directConnection=true", relay.addr).into(),
        t.loaded.mongo.name(),
    )
    .await
    .unwrap();
    let drain = Duration::from_secs(5);
    let worker = Arc::new(Worker {
        input: t.input.clone(),
        output: t.output.clone(),
        dlq: t.input_dlq(),
        payloads: None,
        enricher: Enricher {
            reference: t.loaded.enricher.reference.clone(),
            documents: MongoDocuments::new(relayed).with_limits(LookupLimits {
                timeout: Duration::from_secs(120),
                ..LookupLimits::default()
            }),
        },
        models: t.holder.clone(),
        aggregates: None,
        prediction_log: None,
        monitor: None,
        feedback: None,
        config: WorkerConfig {
            drain_timeout: drain,
            ..t.config()
        },
        hooks: Hooks::default(),
        state: Arc::default(),
    });
    let token = CancellationToken::new();
    let run = tokio::spawn(Arc::clone(&worker).run(token.clone()));

    // The relay works: two bundles are answered through it.
    let bundles = fixture_bundles();
    t.send_json(&bundles[..2], ContentEncoding::Identity).await;
    assert_eq!(t.outputs(2).await.len(), 2);

    // MongoDB stops answering; three more bundles arrive and the worker takes them.
    relay.stalled.store(true, Ordering::SeqCst);
    t.send_json(&bundles[2..5], ContentEncoding::Identity).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while worker.state.in_flight() < 3 {
        assert!(
            Instant::now() < deadline,
            "the worker never took the bundles"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    // SIGTERM: the batch is stuck in a MongoDB find that will not return.
    let stopped_at = Instant::now();
    token.cancel();
    let summary = tokio::time::timeout(drain * 3, run)
        .await
        .expect("the worker exits")
        .unwrap();
    let took = stopped_at.elapsed();
    relay.stalled.store(false, Ordering::SeqCst);
    assert!(
        !summary.drained,
        "the stuck batch was abandoned: {summary:?}"
    );
    assert!(
        took >= drain - Duration::from_millis(500) && took < drain + Duration::from_millis(1500),
        "the worker exited {took:?} after SIGTERM, with a drain timeout of {drain:?}"
    );
    assert_eq!(
        messages_on(&t.input).await,
        3,
        "the held bundles stay on the queue, undeleted, for redelivery"
    );
}
