//! The one step and the heartbeat, driven through queue failures with the in-memory queue,
//! sources and model store: partial `SendMessageBatch` and `DeleteMessageBatch` failures, a
//! failed dead-letter send, a failed visibility change. (The same flow against LocalStack is in
//! `tests/integration/worker.rs`.)

mod batching;
mod fifo;
mod pacing;

use std::sync::Arc;
use std::time::Duration;

use super::config::{Hooks, WorkerConfig};
use super::heartbeat::Heartbeat;
use super::service::Worker;
use super::step::decode_all;
use crate::enrich::cache::CachedReference;
use crate::enrich::memory::{MemoryDocuments, MemoryReference};
use crate::enrich::{Enricher, ReferenceSource};
use crate::model::artifact::test_artifact;
use crate::model::holder::{ModelHolder, ModelSource};
use crate::model::memory_store::MemoryStore;
use crate::model::registry::Registry;
use crate::queue::memory::{Fault, MemoryQueue, Op};
use crate::queue::Queue;

type TestWorker = Worker<MemoryReference, MemoryDocuments, MemoryQueue>;

/// The test model, published to an in-memory registry and served from its `production` alias.
async fn holder() -> Arc<ModelHolder> {
    let registry = Registry::with_store(Arc::new(MemoryStore::new("models")));
    let v = registry.publish(&mut test_artifact()).await.unwrap();
    registry
        .set_alias("banknote", "production", v, "promote")
        .await
        .unwrap();
    let source = ModelSource::Alias("production".into());
    Arc::new(
        ModelHolder::load(registry, "banknote", source)
            .await
            .unwrap(),
    )
}

async fn worker(send_attempts: u32) -> TestWorker {
    worker_with(send_attempts, MemoryReference::default()).await
}

async fn worker_with(send_attempts: u32, reference: MemoryReference) -> TestWorker {
    worker_on(send_attempts, reference, MemoryDocuments::default()).await
}

async fn worker_on<R: ReferenceSource>(
    send_attempts: u32,
    reference: R,
    documents: MemoryDocuments,
) -> Worker<R, MemoryDocuments, MemoryQueue> {
    Worker {
        input: MemoryQueue::new("memory://input"),
        output: MemoryQueue::new("memory://output"),
        dlq: Some(MemoryQueue::new("memory://input-dlq")),
        payloads: None,
        enricher: Enricher {
            reference,
            documents,
        },
        models: holder().await,
        aggregates: None,
        prediction_log: None,
        monitor: None,
        feedback: None,
        config: WorkerConfig {
            send_attempts,
            ..WorkerConfig::default()
        },
        hooks: Hooks::default(),
        state: Arc::default(),
    }
}

/// A seed-format bundle: complete feature vectors, no enrichment.
fn seed_bundle(id: &str) -> String {
    serde_json::json!({
        "batch_id": id,
        "subjects": ["a", "b"],
        "features": [[1.2, 1.1, 1.3, 1.0], [-1.2, -1.1, -1.3, -1.0]],
    })
    .to_string()
}

/// Pushes bodies to the input, receives them all, and runs one step on them.
async fn step_on<R: ReferenceSource>(
    w: &Worker<R, MemoryDocuments, MemoryQueue>,
    bodies: &[String],
) -> super::StepReport {
    for body in bodies {
        w.input.push(body.clone(), None);
    }
    let messages = w.input.receive(10, 0).await.unwrap();
    assert_eq!(messages.len(), bodies.len());
    w.process(decode_all(messages, &w.config.limits)).await
}

/// A worker with `pollers` pollers on 20 s long polls, changed by `tune`, running until the
/// token is cancelled.
async fn running(
    pollers: usize,
    tune: impl FnOnce(&mut TestWorker),
) -> (
    Arc<TestWorker>,
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<super::RunSummary>,
) {
    let mut w = worker(2).await;
    w.config.pollers = pollers;
    w.config.wait_secs = 20;
    tune(&mut w);
    let w = Arc::new(w);
    let token = tokio_util::sync::CancellationToken::new();
    let run = tokio::spawn(Arc::clone(&w).run(token.clone()));
    (w, token, run)
}

fn answered_ids(q: &MemoryQueue) -> Vec<String> {
    let mut ids: Vec<String> = q
        .accepted()
        .iter()
        .map(|m| {
            let v: serde_json::Value = serde_json::from_str(&m.body).unwrap();
            v["batch_id"].as_str().unwrap().to_owned()
        })
        .collect();
    ids.sort();
    ids
}

#[tokio::test(start_paused = true)]
async fn an_answer_refused_once_is_sent_again_alone_and_every_input_is_deleted() {
    let w = worker(5).await;
    w.output.fail_next(Fault::Entries(Op::Send, vec![1]));
    let report = step_on(
        &w,
        &[seed_bundle("b-0"), seed_bundle("b-1"), seed_bundle("b-2")],
    )
    .await;
    assert_eq!((report.answered, report.deleted, report.left), (3, 3, 0));
    assert_eq!(answered_ids(&w.output), ["b-0", "b-1", "b-2"]);
    assert_eq!(
        w.output.calls(Op::Send),
        2,
        "one batch call, then entry 1 alone"
    );
    assert_eq!(w.input.in_flight(), 0);
    let labels: serde_json::Value = serde_json::from_str(&w.output.accepted()[0].body).unwrap();
    assert_eq!(labels["output"], serde_json::json!(["real", "fake"]));
}

#[tokio::test(start_paused = true)]
async fn an_answer_refused_on_every_attempt_leaves_only_its_input_for_redelivery() {
    let w = worker(2).await;
    w.output.fail_next(Fault::Entries(Op::Send, vec![1]));
    w.output.fail_next(Fault::Entries(Op::Send, vec![0]));
    let report = step_on(
        &w,
        &[seed_bundle("b-0"), seed_bundle("b-1"), seed_bundle("b-2")],
    )
    .await;
    assert_eq!((report.answered, report.deleted, report.left), (2, 2, 1));
    assert_eq!(answered_ids(&w.output), ["b-0", "b-2"]);
    assert_eq!(
        w.input.in_flight(),
        1,
        "b-1's input is neither answered nor deleted"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_delete_entry_is_retried_and_a_delete_that_never_succeeds_is_counted_as_left() {
    let w = worker(5).await;
    w.input.fail_next(Fault::Entries(Op::Delete, vec![0]));
    let report = step_on(&w, &[seed_bundle("b-0"), seed_bundle("b-1")]).await;
    assert_eq!((report.answered, report.deleted, report.left), (2, 2, 0));
    assert_eq!(w.input.calls(Op::Delete), 2);

    let w = worker(2).await;
    w.input.fail_next(Fault::Call(Op::Delete));
    w.input.fail_next(Fault::Call(Op::Delete));
    let report = step_on(&w, &[seed_bundle("b-0"), seed_bundle("b-1")]).await;
    assert_eq!(report.answered, 2, "the answers were accepted");
    assert_eq!(
        (report.deleted, report.left),
        (0, 2),
        "SQS will redeliver both"
    );
    assert_eq!(w.input.in_flight(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_failed_dead_letter_send_keeps_the_bad_message_and_still_answers_the_good_ones() {
    let w = worker(2).await;
    let dlq = w.dlq.clone().unwrap();
    dlq.fail_next(Fault::Call(Op::Send));
    dlq.fail_next(Fault::Call(Op::Send));
    let report = step_on(&w, &["not json".to_owned(), seed_bundle("b-1")]).await;
    assert_eq!(report.answered, 1);
    assert_eq!(report.dead_lettered, 0);
    assert_eq!(
        report.left, 1,
        "the unreadable message stays for a later try"
    );
    assert!(dlq.accepted().is_empty());
    assert_eq!(w.input.in_flight(), 1);

    let w = worker(2).await;
    let report = step_on(&w, &["not json".to_owned()]).await;
    assert_eq!(
        (report.dead_lettered, report.deleted, report.left),
        (1, 1, 0)
    );
    let copy = &w.dlq.as_ref().unwrap().accepted()[0];
    assert_eq!(copy.body, "not json");
    assert!(copy
        .attributes
        .iter()
        .any(|(k, v)| k == "error-stage" && v == "decode"));
}

#[tokio::test(start_paused = true)]
async fn the_heartbeat_keeps_beating_after_a_failed_visibility_change() {
    let q = MemoryQueue::new("memory://input");
    q.push("x", None);
    let receipt = q.receive(1, 0).await.unwrap().remove(0).receipt_handle;
    q.fail_next(Fault::Call(Op::ChangeVisibility));
    q.fail_next(Fault::Entries(Op::ChangeVisibility, vec![0]));
    let heartbeat = Heartbeat::start(q.clone(), vec![receipt.clone()], 10, 0.5);
    tokio::time::sleep(Duration::from_secs(16)).await;
    drop(heartbeat);
    assert_eq!(
        q.calls(Op::ChangeVisibility),
        3,
        "a beat every 5 s, failures included"
    );
    assert_eq!(
        q.visibility_changes(),
        [(receipt, 10)],
        "the third beat went through"
    );
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(
        q.calls(Op::ChangeVisibility),
        3,
        "no beat after the batch let go"
    );
}

/// A v1 bundle of one record: its scanner and issuer need PostgreSQL.
fn request_bundle(id: &str) -> String {
    serde_json::json!({
        "bundle_id": id,
        "columns": ["id", "note", "issuer", "scanner", "variance", "skewness"],
        "rows": [["r-1", "SN-000001", "FRB", "sc-01", 1.0, 2.0]],
    })
    .to_string()
}

#[tokio::test(start_paused = true)]
async fn a_bundle_held_back_by_an_outage_on_max_receives_is_dead_lettered_with_its_reason() {
    let mut w = worker_with(2, MemoryReference::down()).await;
    w.config.max_receives = 2;
    let report = step_on(&w, &[request_bundle("b-held")]).await;
    assert!(report.retryable.is_some());
    assert_eq!(
        (report.left, report.dead_lettered),
        (1, 0),
        "first receive: left"
    );
    let dlq = w.dlq.clone().unwrap();
    assert!(dlq.accepted().is_empty());

    // Its visibility runs out; the second receive meets the same outage.
    let receipts = w.input.in_flight_receipts();
    assert_eq!(receipts.len(), 1, "held, not deleted");
    w.input.change_visibility(&[&receipts[0]], 0).await.unwrap();
    let messages = w.input.receive(10, 0).await.unwrap();
    assert_eq!(messages[0].receive_count, 2);
    let report = w.process(decode_all(messages, &w.config.limits)).await;
    assert_eq!(
        (report.left, report.dead_lettered, report.deleted),
        (0, 1, 1)
    );
    let copy = &dlq.accepted()[0];
    let attribute = |name: &str| {
        copy.attributes
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(attribute("error-stage"), Some("enrich"));
    assert_eq!(attribute("receive-count"), Some("2"));
    assert_eq!(attribute("bundle_id"), Some("b-held"));
    assert!(
        attribute("error-reason")
            .unwrap()
            .starts_with("left unanswered on 2 receives because postgres was unavailable"),
        "{copy:?}"
    );
    assert_eq!(w.input.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_drain_ends_at_its_deadline_even_when_a_source_never_answers() {
    let stalled = MemoryDocuments {
        stalled: true,
        ..MemoryDocuments::default()
    };
    let mut w = worker_on(2, MemoryReference::default(), stalled).await;
    w.config.drain_timeout = Duration::from_secs(5);
    w.config.wait_secs = 1;
    let w = Arc::new(w);
    w.input.push(request_bundle("b-stuck"), None);
    let token = tokio_util::sync::CancellationToken::new();
    let run = tokio::spawn(Arc::clone(&w).run(token.clone()));
    while w.input.in_flight() == 0 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The batch is stuck on MongoDB; SIGTERM arrives.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stopped_at = tokio::time::Instant::now();
    token.cancel();
    let summary = run.await.unwrap();
    let took = stopped_at.elapsed();
    assert!(!summary.drained);
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(6),
        "the drain took {took:?}"
    );
    assert!(
        w.input.deleted().is_empty(),
        "nothing deleted: SQS redelivers it"
    );
    assert!(w.output.accepted().is_empty());
}

fn request_bundle_with(id: &str, scanner: &str) -> String {
    serde_json::json!({
        "bundle_id": id,
        "columns": ["id", "note", "issuer", "scanner", "variance", "skewness"],
        "rows": [["r-1", "SN-000001", "FRB", scanner, 1.0, 2.0]],
    })
    .to_string()
}

fn answered_bundle_ids(q: &MemoryQueue) -> Vec<String> {
    q.accepted()
        .iter()
        .map(|m| {
            let v: serde_json::Value = serde_json::from_str(&m.body).unwrap();
            v["bundle_id"]
                .as_str()
                .unwrap_or_else(|| v["batch_id"].as_str().unwrap())
                .to_owned()
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn during_an_outage_the_cache_answers_what_it_can_and_held_bundles_go_as_soon_as_it_returns()
{
    let postgres = MemoryReference::default();
    let cached = CachedReference::new(postgres.clone(), Duration::from_secs(60));
    let w = Arc::new(worker_on(2, cached, MemoryDocuments::default()).await);
    // The cache learns sc-01 and FRB.
    step_on(&w, &[request_bundle_with("b-warm", "sc-01")]).await;
    postgres.set_down(true);
    let back_at = Duration::from_secs(3);
    let (w2, pg) = (Arc::clone(&w), postgres.clone());
    let watcher = tokio::spawn(async move {
        tokio::time::sleep(back_at).await;
        let before = answered_bundle_ids(&w2.output);
        pg.set_down(false);
        before
    });
    let started = tokio::time::Instant::now();
    let report = step_on(
        &w,
        &[
            request_bundle_with("b-cached", "sc-01"),
            seed_bundle("s-no-enrichment"),
            request_bundle_with("b-new-scanner", "sc-77"),
        ],
    )
    .await;
    let took = started.elapsed();
    let before_return = watcher.await.unwrap();
    assert_eq!(
        before_return,
        ["b-warm", "b-cached", "s-no-enrichment"],
        "answered while PostgreSQL was down"
    );
    assert_eq!(
        answered_bundle_ids(&w.output),
        ["b-warm", "b-cached", "s-no-enrichment", "b-new-scanner"]
    );
    assert!(
        took >= back_at && took <= back_at + Duration::from_millis(1_100),
        "the held bundle was answered {:?} after PostgreSQL returned",
        took.saturating_sub(back_at)
    );
    assert_eq!(
        (report.answered, report.left, report.dead_lettered),
        (3, 0, 0)
    );
    assert!(report.retryable.is_none());
    // The held bundle was never answered as an unknown scanner while the source was down.
    let last: serde_json::Value =
        serde_json::from_str(&w.output.accepted().last().unwrap().body).unwrap();
    assert!(!last.to_string().contains("unavailable"), "{last}");
}

#[tokio::test(start_paused = true)]
async fn held_bundles_are_let_go_at_once_when_the_worker_stops() {
    let w = worker_with(2, MemoryReference::down()).await;
    let (state, stop_after) = (Arc::clone(&w.state), Duration::from_secs(2));
    tokio::spawn(async move {
        tokio::time::sleep(stop_after).await;
        state.stopping.cancel();
    });
    let started = tokio::time::Instant::now();
    let report = step_on(&w, &[request_bundle("b-held")]).await;
    assert!(started.elapsed() < stop_after + Duration::from_millis(100));
    assert_eq!(
        (report.left, report.dead_lettered, report.answered),
        (1, 0, 0)
    );
    assert!(w.output.accepted().is_empty());
    assert!(w.input.deleted().is_empty(), "left for another worker");
}

/// Offloads each body to the memory store and pushes its Extended Client pointer, as the
/// clients send it, then receives them and reads their payloads as the poller does.
async fn step_on_pointers(
    w: &TestWorker,
    store: &crate::payload::memory::MemoryPayloads,
    bodies: &[(&str, Option<String>)],
) -> super::StepReport {
    use crate::payload::pointer::PayloadPointer;
    let outgoing: Vec<crate::queue::Outgoing> = bodies
        .iter()
        .map(|(key, body)| {
            let pointer = PayloadPointer {
                bucket: "producer".into(),
                key: (*key).into(),
            };
            if let Some(body) = body {
                store.insert(&pointer, body.clone());
            }
            pointer.into_message(crate::queue::Outgoing {
                body: body.clone().unwrap_or_else(|| "gone".into()),
                attributes: Vec::new(),
                number_attributes: Vec::new(),
                dedup_id: None,
                group_id: None,
            })
        })
        .collect();
    w.input.send_batch(&outgoing).await.unwrap();
    let messages = w.input.receive(10, 0).await.unwrap();
    let limits = w.config.limits;
    let fetched =
        crate::payload::fetch_all(w.payloads.as_ref(), &messages, limits.max_body_bytes).await;
    let batch = messages
        .into_iter()
        .zip(fetched)
        .map(|(m, f)| super::Received::decode_fetched(m, f, &limits))
        .collect();
    w.process(batch).await
}

fn with_payloads(
    mut w: TestWorker,
    store: &crate::payload::memory::MemoryPayloads,
    bucket: Option<&str>,
) -> TestWorker {
    w.payloads = Some(crate::payload::Payloads::new(
        Arc::new(store.clone()),
        crate::payload::PayloadConfig {
            bucket: bucket.map(str::to_owned),
            prefix: "answers/".into(),
            threshold_bytes: None,
            delete_inputs: false,
        },
    ));
    w
}

#[tokio::test(start_paused = true)]
async fn a_pointer_is_answered_from_its_payload_and_a_missing_payload_is_dead_lettered_intact() {
    let store = crate::payload::memory::MemoryPayloads::default();
    let w = with_payloads(worker(3).await, &store, None);
    let report = step_on_pointers(
        &w,
        &store,
        &[("in/1", Some(seed_bundle("b-big"))), ("in/2", None)],
    )
    .await;
    assert_eq!(
        (report.answered, report.dead_lettered, report.deleted),
        (1, 1, 2)
    );
    assert_eq!(answered_ids(&w.output), ["b-big"]);
    assert_eq!(store.len(), 1, "the input payload is kept by default");
    let dead = &w.dlq.as_ref().unwrap().accepted()[0];
    let pointer = crate::payload::pointer::PayloadPointer::parse(&dead.body).unwrap();
    assert_eq!(
        pointer.key, "in/2",
        "the copy is the pointer, so it can be redriven"
    );
    assert_eq!(
        dead.number_attributes,
        [("ExtendedPayloadSize".to_owned(), "4".to_owned())]
    );
    let reason = &dead
        .attributes
        .iter()
        .find(|(k, _)| k == "error-reason")
        .unwrap()
        .1;
    assert!(
        reason.contains("s3://producer/in/2") && reason.contains("does not exist"),
        "{reason}"
    );
    assert_eq!(w.input.in_flight(), 0, "nothing loops");
}

#[tokio::test(start_paused = true)]
async fn an_answer_over_the_threshold_goes_through_s3_and_is_not_refused() {
    let store = crate::payload::memory::MemoryPayloads::default();
    let mut w = with_payloads(worker(3).await, &store, Some("answers-bucket"));
    // Below any answer in every encoding: this one goes through S3.
    let threshold = 60;
    w.payloads.as_mut().unwrap().config.threshold_bytes = Some(threshold);
    let report = step_on(&w, &[seed_bundle("b-0")]).await;
    assert_eq!((report.answered, report.dead_lettered), (1, 0));
    let sent = &w.output.accepted()[0];
    let pointer = crate::payload::pointer::PayloadPointer::parse(&sent.body)
        .unwrap_or_else(|| panic!("not a pointer: {}", sent.body));
    assert_eq!(pointer.bucket, "answers-bucket");
    assert!(pointer.key.starts_with("answers/"), "{}", pointer.key);
    let payload = store.object(&pointer).unwrap();
    let answer: serde_json::Value = serde_json::from_str(&payload).unwrap();
    assert_eq!(answer["batch_id"], "b-0", "the configured encoding (plain)");
    assert_eq!(
        sent.number_attributes,
        [("ExtendedPayloadSize".to_owned(), payload.len().to_string())]
    );
    // Without a bucket the same answer is refused, with its sizes, as before.
    let store = crate::payload::memory::MemoryPayloads::default();
    let mut w = with_payloads(worker(3).await, &store, None);
    w.payloads.as_mut().unwrap().config.threshold_bytes = Some(threshold);
    let report = step_on(&w, &[seed_bundle("b-0")]).await;
    assert_eq!((report.answered, report.dead_lettered), (0, 1));
    let dead = &w.dlq.as_ref().unwrap().accepted()[0];
    let reason = &dead
        .attributes
        .iter()
        .find(|(k, _)| k == "error-reason")
        .unwrap()
        .1;
    assert!(reason.contains("ML_PIPELINE_PAYLOAD_BUCKET"), "{reason}");
}

#[tokio::test(start_paused = true)]
async fn an_answered_input_payload_is_deleted_only_when_configured_and_its_input_is_gone() {
    let store = crate::payload::memory::MemoryPayloads::default();
    let mut w = with_payloads(worker(2).await, &store, None);
    w.payloads.as_mut().unwrap().config.delete_inputs = true;
    // The first input's delete never succeeds: it comes back, and its payload must be there.
    w.input.fail_next(Fault::Entries(Op::Delete, vec![0]));
    w.input.fail_next(Fault::Entries(Op::Delete, vec![0]));
    let body = Some(seed_bundle("b-0"));
    let report = step_on_pointers(&w, &store, &[("in/0", body.clone())]).await;
    assert_eq!((report.answered, report.deleted, report.left), (1, 0, 1));
    assert_eq!(store.len(), 1, "kept for the redelivery");
    let report = step_on_pointers(&w, &store, &[("in/1", body)]).await;
    assert_eq!((report.answered, report.deleted), (1, 1));
    assert_eq!(
        store.len(),
        1,
        "in/1 deleted once answered; in/0 still there"
    );
    assert!(store
        .object(&crate::payload::pointer::PayloadPointer {
            bucket: "producer".into(),
            key: "in/0".into(),
        })
        .is_some());
}
