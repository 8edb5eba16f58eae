//! FIFO input queues, driven with the in-memory FIFO queue (which hands out a message group's
//! messages in order and none while another of its group is in flight): each group's answers
//! in the order received, different groups in one batch, a failed bundle holding back only its
//! own group, and a receive whose answer was lost asked for again with its attempt id.

use std::sync::Arc;
use std::time::Duration;

use super::{holder, request_bundle, seed_bundle};
use crate::enrich::memory::{MemoryDocuments, MemoryReference};
use crate::enrich::Enricher;
use crate::queue::memory::{Fault, MemoryQueue, Op};
use crate::queue::{Outgoing, Queue};
use crate::worker::step::decode_all;
use crate::worker::{Hooks, Worker, WorkerConfig};

type FifoWorker = Worker<MemoryReference, MemoryDocuments, MemoryQueue>;

async fn fifo_worker(send_attempts: u32, reference: MemoryReference) -> FifoWorker {
    Worker {
        input: MemoryQueue::new("memory://input.fifo"),
        output: MemoryQueue::new("memory://output.fifo"),
        dlq: Some(MemoryQueue::new("memory://input-dlq.fifo")),
        payloads: None,
        enricher: Enricher {
            reference,
            documents: MemoryDocuments::default(),
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

/// Pushes (group, body) pairs in order.
fn push(q: &MemoryQueue, bundles: &[(&str, String)]) {
    for (group, body) in bundles {
        q.push_with(body.clone(), &[], Some(group));
    }
}

/// The bundle (or batch) id of an answer.
fn answer_id(m: &Outgoing) -> String {
    let v: serde_json::Value = serde_json::from_str(&m.body).unwrap();
    v["bundle_id"]
        .as_str()
        .or(v["batch_id"].as_str())
        .unwrap()
        .to_owned()
}

/// The answers accepted, as (group, id), in the order accepted.
fn answers(q: &MemoryQueue) -> Vec<(String, String)> {
    q.accepted()
        .iter()
        .map(|m| (m.group_id.clone().unwrap(), answer_id(m)))
        .collect()
}

/// The ids answered in one group, in the order accepted.
fn group(q: &MemoryQueue, group: &str) -> Vec<String> {
    answers(q)
        .into_iter()
        .filter(|(g, _)| g == group)
        .map(|(_, id)| id)
        .collect()
}

fn interleaved() -> Vec<(&'static str, String)> {
    vec![
        ("A", seed_bundle("a1")),
        ("B", seed_bundle("b1")),
        ("A", seed_bundle("a2")),
        ("C", seed_bundle("c1")),
        ("B", seed_bundle("b2")),
        ("A", seed_bundle("a3")),
    ]
}

#[tokio::test(start_paused = true)]
async fn several_groups_share_one_batch_and_each_groups_answers_keep_their_order() {
    let w = fifo_worker(2, MemoryReference::default()).await;
    push(&w.input, &interleaved());
    let messages = w.input.receive(10, 0).await.unwrap();
    assert_eq!(
        messages.len(),
        6,
        "one receive hands out several of a group"
    );
    let report = w.process(decode_all(messages, &w.config.limits)).await;
    assert_eq!((report.answered, report.deleted, report.left), (6, 6, 0));
    assert_eq!(group(&w.output, "A"), ["a1", "a2", "a3"]);
    assert_eq!(group(&w.output, "B"), ["b1", "b2"]);
    assert_eq!(group(&w.output, "C"), ["c1"]);
    // One message per group per call: three calls for group A's three, the others sharing them.
    assert_eq!(w.output.calls(Op::Send), 3);
    for m in w.output.accepted() {
        assert_eq!(m.dedup_id.as_deref(), Some(answer_id(&m).as_str()));
    }
}

#[tokio::test(start_paused = true)]
async fn an_answer_refused_stops_only_its_group_and_its_later_bundles_stay_for_redelivery() {
    let w = fifo_worker(2, MemoryReference::default()).await;
    push(&w.input, &interleaved());
    // The second call carries a2 and b2 (a3 waits for a2): a2 is refused on both attempts.
    w.output.fail_next(Fault::Entries(Op::Send, vec![]));
    w.output.fail_next(Fault::Entries(Op::Send, vec![0]));
    w.output.fail_next(Fault::Entries(Op::Send, vec![0]));
    let messages = w.input.receive(10, 0).await.unwrap();
    let report = w.process(decode_all(messages, &w.config.limits)).await;
    assert_eq!(
        group(&w.output, "A"),
        ["a1"],
        "a3 is not answered ahead of a2"
    );
    assert_eq!(group(&w.output, "B"), ["b1", "b2"]);
    assert_eq!(group(&w.output, "C"), ["c1"]);
    assert_eq!((report.answered, report.deleted, report.left), (4, 4, 2));
    assert_eq!(
        w.input.in_flight(),
        2,
        "a2 and a3 are neither answered nor deleted"
    );
}

#[tokio::test(start_paused = true)]
async fn a_held_bundle_holds_back_its_groups_later_ones_which_come_back_with_it() {
    let postgres = MemoryReference::down();
    let mut w = fifo_worker(2, postgres.clone()).await;
    w.config.outage_hold = Duration::from_secs(3);
    // a1 needs PostgreSQL; a2 and the B bundles need no enrichment.
    push(
        &w.input,
        &[
            ("A", request_bundle("a1")),
            ("B", seed_bundle("b1")),
            ("A", seed_bundle("a2")),
            ("B", seed_bundle("b2")),
        ],
    );
    let messages = w.input.receive(10, 0).await.unwrap();
    let receipts: Vec<String> = messages.iter().map(|m| m.receipt_handle.clone()).collect();
    let report = w.process(decode_all(messages, &w.config.limits)).await;
    assert_eq!(
        answers(&w.output),
        [("B".into(), "b1".into()), ("B".into(), "b2".into())],
        "group B goes on; a2 is not answered ahead of a1"
    );
    assert_eq!((report.answered, report.left), (2, 2));
    assert_eq!(
        w.input.visibility_changes(),
        [(receipts[0].clone(), 5), (receipts[2].clone(), 5)],
        "a2 comes back with a1, not before it"
    );

    // PostgreSQL returns; group A comes back whole, in order, and is answered in order.
    postgres.set_down(false);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let again = w.input.receive(10, 0).await.unwrap();
    let ids: Vec<&str> = again.iter().map(|m| m.message_id.as_str()).collect();
    assert_eq!(ids, ["m-1", "m-3"]);
    let report = w.process(decode_all(again, &w.config.limits)).await;
    assert_eq!(report.answered, 2);
    assert_eq!(group(&w.output, "A"), ["a1", "a2"]);
}

#[tokio::test(start_paused = true)]
async fn while_a_held_bundle_waits_in_hand_its_groups_later_ones_wait_with_it() {
    let postgres = MemoryReference::down();
    let w = fifo_worker(2, postgres.clone()).await;
    push(
        &w.input,
        &[
            ("A", request_bundle("a1")),
            ("A", seed_bundle("a2")),
            ("B", seed_bundle("b1")),
        ],
    );
    let pg = postgres.clone();
    let output = w.output.clone();
    let watcher = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = answers(&output);
        pg.set_down(false);
        before
    });
    let messages = w.input.receive(10, 0).await.unwrap();
    let report = w.process(decode_all(messages, &w.config.limits)).await;
    assert_eq!(
        watcher.await.unwrap(),
        [("B".into(), "b1".into())],
        "while PostgreSQL was down only group B was answered"
    );
    assert_eq!(group(&w.output, "A"), ["a1", "a2"]);
    assert_eq!((report.answered, report.left), (3, 0));
}

#[tokio::test(start_paused = true)]
async fn a_receive_whose_answer_was_lost_is_asked_again_with_its_attempt_id() {
    let mut w = fifo_worker(2, MemoryReference::default()).await;
    w.config.pollers = 1;
    w.config.wait_secs = 1;
    let w = Arc::new(w);
    push(
        &w.input,
        &[("A", seed_bundle("a1")), ("A", seed_bundle("a2"))],
    );
    // The first receive takes both messages, but its answer never reaches the worker.
    w.input.fail_next(Fault::AnswerLost(Op::Receive));
    let token = tokio_util::sync::CancellationToken::new();
    let run = tokio::spawn(Arc::clone(&w).run(token.clone()));
    let answered = tokio::time::timeout(Duration::from_secs(20), async {
        while w.output.accepted().len() < 2 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    token.cancel();
    run.await.unwrap();
    assert!(
        answered.is_ok(),
        "the retried receive got the lost messages back (without the attempt id they would stay in flight, and group A blocked, until their visibility ran out)"
    );
    assert_eq!(group(&w.output, "A"), ["a1", "a2"]);
    assert_eq!(w.input.deleted(), ["m-1", "m-2"]);
}
