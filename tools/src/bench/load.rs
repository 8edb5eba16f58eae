//! The load side shared by `bench` and the fault runs: bundles made from the fixture requests,
//! a sender (paced or as fast as possible) that stamps each bundle's send time, and a reader
//! that collects answers by `bundle_id` and counts answered, duplicated and lost bundles.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::Message;
use aws_sdk_sqs::Client;
use futures::StreamExt;
use tokio::sync::Mutex;

use ml_pipeline::bundle::compression::{
    compress, decompress, ContentEncoding, CONTENT_ENCODING_ATTRIBUTE,
};
use ml_pipeline::bundle::RequestBundle;
use ml_pipeline::fixtures::FixtureSet;
use ml_pipeline::queue::{send_all, Outgoing, Retry, SqsQueue, BUNDLE_ID_ATTRIBUTE};

/// One bundle ready to send.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Its id.
    pub bundle_id: String,
    /// The encoded body.
    pub body: String,
    /// Records it holds.
    pub records: usize,
}

/// `count` bundles of `records` fixture requests each (cycling through them), ids prefixed by
/// `run`, so enrichment finds real reference rows and documents.
pub fn bundles(
    set: &FixtureSet,
    count: usize,
    records: usize,
    run: &str,
    encoding: ContentEncoding,
) -> Vec<Prepared> {
    bundles_with(set, count, records, run, encoding, |_, _, _| {})
}

/// [`bundles`], with `edit(i, columns, rows)` applied to bundle `i`'s rows before encoding.
pub fn bundles_with(
    set: &FixtureSet,
    count: usize,
    records: usize,
    run: &str,
    encoding: ContentEncoding,
    mut edit: impl FnMut(usize, &[String], &mut [Vec<serde_json::Value>]),
) -> Vec<Prepared> {
    let columns = set.bundles[0].columns.clone();
    let rows: Vec<Vec<serde_json::Value>> = set
        .bundles
        .iter()
        .flat_map(|b| b.rows.iter().map(|r| r.to_values()))
        .collect();
    let mut next = 0;
    (0..count)
        .map(|i| {
            let mut chosen: Vec<Vec<serde_json::Value>> = (0..records)
                .map(|_| {
                    let row = rows[next % rows.len()].clone();
                    next += 1;
                    row
                })
                .collect();
            edit(i, &columns, &mut chosen);
            let bundle = RequestBundle {
                bundle_id: format!("{run}-{i:06}"),
                model: None,
                columns: columns.clone(),
                rows: chosen.into(),
            };
            let json = serde_json::to_vec(&bundle).expect("bundles serialize");
            Prepared {
                bundle_id: bundle.bundle_id,
                body: compress(encoding, &json),
                records,
            }
        })
        .collect()
}

/// When each bundle was handed to SQS.
pub type SendTimes = Arc<Mutex<HashMap<String, Instant>>>;

/// Sends `bundles`: at `rate` records per second one bundle at a time, or (None) as fast as
/// possible in batches of 10 from `concurrency` senders. Returns the send times.
pub async fn send(
    queue: &SqsQueue,
    bundles: &[Prepared],
    encoding: ContentEncoding,
    rate: Option<f64>,
    concurrency: usize,
    max_message_bytes: usize,
) -> anyhow::Result<SendTimes> {
    let times: SendTimes = Arc::default();
    let outgoing = |p: &Prepared| Outgoing {
        body: p.body.clone(),
        attributes: encoding
            .attribute()
            .map(|a| (CONTENT_ENCODING_ATTRIBUTE.to_owned(), a.to_owned()))
            .into_iter()
            .chain([(BUNDLE_ID_ATTRIBUTE.to_owned(), p.bundle_id.clone())])
            .collect(),
        number_attributes: Vec::new(),
        dedup_id: None,
        group_id: None,
    };
    let batch = |chunk: Vec<&Prepared>| {
        let times = Arc::clone(&times);
        let messages: Vec<Outgoing> = chunk.iter().map(|p| outgoing(p)).collect();
        let ids: Vec<String> = chunk.iter().map(|p| p.bundle_id.clone()).collect();
        async move {
            let at = Instant::now();
            let count = messages.len();
            let accepted = send_all(queue, messages, max_message_bytes, &Retry::default()).await;
            anyhow::ensure!(
                accepted.len() == count,
                "SQS did not accept {} of {count} bundles after retries",
                count - accepted.len(),
            );
            let mut t = times.lock().await;
            for id in ids {
                t.insert(id, at);
            }
            Ok(())
        }
    };
    match rate.filter(|r| *r > 0.0) {
        None => {
            let chunks: Vec<Vec<&Prepared>> =
                bundles.chunks(10).map(|c| c.iter().collect()).collect();
            let results: Vec<anyhow::Result<()>> = futures::stream::iter(chunks)
                .map(batch)
                .buffer_unordered(concurrency.max(1))
                .collect()
                .await;
            results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
        }
        Some(rate) => {
            let started = tokio::time::Instant::now();
            let mut due_records = 0usize;
            let mut in_flight = futures::stream::FuturesUnordered::new();
            for p in bundles {
                tokio::time::sleep_until(
                    started + Duration::from_secs_f64(due_records as f64 / rate),
                )
                .await;
                due_records += p.records;
                in_flight.push(batch(vec![p]));
                // Reap finished sends without waiting, so a slow send never delays the schedule.
                while let Some(Some(r)) = futures::FutureExt::now_or_never(in_flight.next()) {
                    r?;
                }
            }
            while let Some(r) = in_flight.next().await {
                r?;
            }
        }
    }
    Ok(times)
}

/// How the reader reads, and when it stops.
#[derive(Debug, Clone)]
pub struct ReadPlan {
    /// Concurrent long-pollers.
    pub readers: usize,
    /// Give up when no message at all arrived for this long (some bundles are then lost).
    pub idle: Duration,
    /// Keep reading this long after every expected bundle was resolved, so that late duplicates
    /// (a redelivered message answered a second time) are counted too.
    pub settle: Duration,
    /// Also read this dead-letter queue: a bundle that lands there is resolved, not lost.
    pub dead_letter_queue: Option<String>,
    /// Bundle ids whose answer bodies are kept (to check what they say).
    pub keep_bodies: HashSet<String>,
    /// Bundle ids by SQS message id, for dead-letter copies that carry no `bundle_id` (the
    /// worker could not read it) but name their `source-message-id`.
    pub sources: HashMap<String, String>,
}

impl ReadPlan {
    /// `readers` pollers of the output queue only, no settle period, no bodies kept.
    pub fn new(readers: usize, idle: Duration) -> Self {
        Self {
            readers,
            idle,
            settle: Duration::ZERO,
            dead_letter_queue: None,
            keep_bodies: HashSet::new(),
            sources: HashMap::new(),
        }
    }

    /// The same plan with a settle period.
    pub fn settle(mut self, settle: Duration) -> Self {
        self.settle = settle;
        self
    }
}

/// One message of the dead-letter queue, with the attributes the worker puts on it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeadLetter {
    /// SQS's id of the input message it copies (`source-message-id`); a copy moved by SQS's own
    /// redrive has none, but keeps the input's message id as its own.
    pub source_message_id: Option<String>,
    /// Its own SQS message id.
    pub message_id: String,
    /// `bundle_id`, when the worker could read it.
    pub bundle_id: Option<String>,
    /// `error-stage`.
    pub stage: Option<String>,
    /// `error-reason`; None when SQS's redrive moved it without one.
    pub reason: Option<String>,
    /// When the reader received it.
    pub at: Option<Instant>,
}

impl DeadLetter {
    /// The input message it stands for: the worker's `source-message-id`, else its own id
    /// (which SQS's redrive keeps).
    pub fn source(&self) -> &str {
        self.source_message_id
            .as_deref()
            .unwrap_or(&self.message_id)
    }
}

/// An answer's body as received, with its `content-encoding` attribute.
#[derive(Debug, Clone, PartialEq)]
pub struct AnswerBody {
    /// The attribute, if any.
    pub content_encoding: Option<String>,
    /// The body.
    pub body: String,
}

impl AnswerBody {
    /// The answer as JSON, decompressed when it says so.
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        let encoding: ContentEncoding = self
            .content_encoding
            .as_deref()
            .unwrap_or("")
            .parse()
            .map_err(anyhow::Error::msg)?;
        let json = decompress(encoding, &self.body, 256 << 20).map_err(anyhow::Error::msg)?;
        Ok(serde_json::from_slice(&json)?)
    }
}

/// What the reader saw.
#[derive(Debug, Clone, Default)]
pub struct Arrivals {
    /// Per bundle id: when each copy of its answer arrived.
    pub by_bundle: HashMap<String, Vec<Instant>>,
    /// When the last expected bundle got its first answer.
    pub last: Option<Instant>,
    /// When every expected bundle was resolved (answered or dead-lettered); the settle period
    /// starts there. None if the reader gave up.
    pub complete: Option<Instant>,
    /// Every dead-letter copy read, in order of arrival.
    pub dead_letters: Vec<DeadLetter>,
    /// The first dead-letter copy of each bundle whose id is known (its `bundle_id`, or the
    /// bundle sent as its `source-message-id`).
    pub dead_by_bundle: HashMap<String, DeadLetter>,
    /// Answer bodies of the ids in [`ReadPlan::keep_bodies`], one per copy.
    pub bodies: HashMap<String, Vec<AnswerBody>>,
}

impl Arrivals {
    /// The bundle id a dead letter stands for, if known.
    fn dead_bundle_id(&self, letter: &DeadLetter, plan: &ReadPlan) -> Option<String> {
        letter
            .bundle_id
            .clone()
            .or_else(|| plan.sources.get(letter.source()).cloned())
    }
}

/// Shared by the reader tasks.
struct ReadState {
    arrivals: Arrivals,
    /// Expected ids not yet answered nor dead-lettered.
    pending: HashSet<String>,
    /// When any message last arrived.
    last_message: Instant,
}

impl ReadState {
    fn finished(&self, plan: &ReadPlan) -> bool {
        match self.arrivals.complete {
            Some(at) => at.elapsed() >= plan.settle,
            None => self.last_message.elapsed() > plan.idle,
        }
    }

    fn resolve(&mut self, id: &str, now: Instant) {
        if self.pending.remove(id) && self.pending.is_empty() {
            self.arrivals.complete = Some(now);
        }
    }
}

/// Reads answers from `queue` (deleting them) until every id in `expected` is answered, or
/// dead-lettered when the plan names a dead-letter queue, then for the plan's settle period;
/// or until no message came for the plan's idle time.
pub async fn collect(
    client: &Client,
    queue: &str,
    expected: &[String],
    plan: &ReadPlan,
) -> Arrivals {
    let now = Instant::now();
    let pending: HashSet<String> = expected.iter().cloned().collect();
    let complete = pending.is_empty().then_some(now);
    let state = Arc::new(Mutex::new(ReadState {
        arrivals: Arrivals {
            complete,
            ..Arrivals::default()
        },
        pending,
        last_message: now,
    }));
    let plan = Arc::new(plan.clone());
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..plan.readers.max(1) {
        let (client, queue, state, plan) = (
            client.clone(),
            queue.to_owned(),
            Arc::clone(&state),
            Arc::clone(&plan),
        );
        tasks.spawn(async move {
            while !state.lock().await.finished(&plan) {
                read_answers(&client, &queue, &state, &plan).await;
                if let Some(dlq) = &plan.dead_letter_queue {
                    read_dead_letters(&client, dlq, &state, &plan).await;
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let s = state.lock().await;
    s.arrivals.clone()
}

/// One long poll of the output queue.
async fn read_answers(client: &Client, queue: &str, state: &Mutex<ReadState>, plan: &ReadPlan) {
    let Some(messages) = receive(
        client,
        queue,
        1,
        &[BUNDLE_ID_ATTRIBUTE, CONTENT_ENCODING_ATTRIBUTE],
    )
    .await
    else {
        return;
    };
    let now = Instant::now();
    let mut s = state.lock().await;
    for m in &messages {
        let id = string_attribute(m, BUNDLE_ID_ATTRIBUTE).unwrap_or_default();
        let copies = s.arrivals.by_bundle.entry(id.clone()).or_default();
        copies.push(now);
        let first = copies.len() == 1;
        if first && s.pending.contains(&id) {
            s.arrivals.last = Some(now);
        }
        if plan.keep_bodies.contains(&id) {
            s.arrivals
                .bodies
                .entry(id.clone())
                .or_default()
                .push(AnswerBody {
                    content_encoding: string_attribute(m, CONTENT_ENCODING_ATTRIBUTE),
                    body: m.body.clone().unwrap_or_default(),
                });
        }
        s.resolve(&id, now);
    }
    s.last_message = now;
    drop(s);
    delete(client, queue, &messages).await;
}

/// One short poll of the dead-letter queue.
async fn read_dead_letters(client: &Client, dlq: &str, state: &Mutex<ReadState>, plan: &ReadPlan) {
    let Some(messages) = receive(client, dlq, 0, &["All"]).await else {
        return;
    };
    let now = Instant::now();
    let mut s = state.lock().await;
    for m in &messages {
        let letter = dead_letter(m, now);
        if let Some(id) = s.arrivals.dead_bundle_id(&letter, plan) {
            s.resolve(&id, now);
            s.arrivals
                .dead_by_bundle
                .entry(id)
                .or_insert_with(|| letter.clone());
        }
        s.arrivals.dead_letters.push(letter);
    }
    s.last_message = now;
    drop(s);
    delete(client, dlq, &messages).await;
}

/// Reads (and deletes) dead letters until `until` says enough or `timeout` passed.
pub async fn drain_dead_letters(
    client: &Client,
    dlq: &str,
    timeout: Duration,
    until: impl Fn(&[DeadLetter]) -> bool,
) -> Vec<DeadLetter> {
    let deadline = Instant::now() + timeout;
    let mut letters = Vec::new();
    while !until(&letters) && Instant::now() < deadline {
        let Some(messages) = receive(client, dlq, 1, &["All"]).await else {
            continue;
        };
        let now = Instant::now();
        letters.extend(messages.iter().map(|m| dead_letter(m, now)));
        delete(client, dlq, &messages).await;
    }
    letters
}

fn dead_letter(m: &Message, at: Instant) -> DeadLetter {
    DeadLetter {
        source_message_id: string_attribute(m, "source-message-id"),
        message_id: m.message_id.clone().unwrap_or_default(),
        bundle_id: string_attribute(m, BUNDLE_ID_ATTRIBUTE),
        stage: string_attribute(m, "error-stage"),
        reason: string_attribute(m, "error-reason"),
        at: Some(at),
    }
}

/// Up to 10 messages with these message attributes, or None (nothing, or a failed call after
/// a short pause).
async fn receive(
    client: &Client,
    queue: &str,
    wait_secs: i32,
    attributes: &[&str],
) -> Option<Vec<Message>> {
    let request = attributes.iter().fold(
        client
            .receive_message()
            .queue_url(queue)
            .max_number_of_messages(10)
            .wait_time_seconds(wait_secs),
        |r, a| r.message_attribute_names(*a),
    );
    match request.send().await {
        Ok(out) => out.messages.filter(|m| !m.is_empty()),
        Err(_) => {
            tokio::time::sleep(Duration::from_millis(200)).await;
            None
        }
    }
}

fn string_attribute(m: &Message, name: &str) -> Option<String> {
    m.message_attributes
        .as_ref()
        .and_then(|a| a.get(name))
        .and_then(|v| v.string_value.clone())
}

async fn delete(client: &Client, queue: &str, messages: &[Message]) {
    let entries: Vec<_> = messages
        .iter()
        .enumerate()
        .filter_map(|(i, m)| {
            aws_sdk_sqs::types::DeleteMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .set_receipt_handle(m.receipt_handle.clone())
                .build()
                .ok()
        })
        .collect();
    let _ = client
        .delete_message_batch()
        .queue_url(queue)
        .set_entries(Some(entries))
        .send()
        .await;
}

/// Answered, duplicated and lost bundles, and latencies, of one run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Tally {
    /// Bundles sent.
    pub sent: usize,
    /// Bundles answered at least once.
    pub answered: usize,
    /// Extra copies of answers (a bundle answered twice counts 1).
    pub duplicated: usize,
    /// Of `duplicated`, the copies that arrived after every bundle had been resolved, during
    /// the settle period: a reader that stopped at that moment would have missed them.
    pub late_duplicates: usize,
    /// The bundles answered more than once, by id, with their number of answers; sorted.
    pub duplicates: Vec<(String, usize)>,
    /// Bundles not answered but refused into the dead-letter queue with a reason: resolved,
    /// not lost (only counted when the reader read the dead-letter queue).
    pub dead_lettered: usize,
    /// Bundles neither answered nor dead-lettered with a reason.
    pub lost: usize,
    /// Answers to bundles this run did not send.
    pub unexpected: usize,
    /// Milliseconds from send to first answer, sorted.
    #[serde(skip)]
    pub latencies_ms: Vec<f64>,
}

impl Tally {
    /// Counts `arrivals` against what was sent.
    pub fn new(sent: &HashMap<String, Instant>, arrivals: &Arrivals) -> Self {
        let mut latencies_ms = Vec::new();
        let mut duplicates = Vec::new();
        let mut late_duplicates = 0;
        for (id, at) in sent {
            if let Some(copies) = arrivals.by_bundle.get(id) {
                if copies.len() > 1 {
                    duplicates.push((id.clone(), copies.len()));
                    late_duplicates += arrivals.complete.map_or(0, |complete| {
                        copies.iter().filter(|t| **t > complete).count()
                    });
                }
                let first = copies.iter().min().expect("at least one");
                latencies_ms.push(first.saturating_duration_since(*at).as_secs_f64() * 1e3);
            }
        }
        latencies_ms.sort_by(f64::total_cmp);
        duplicates.sort();
        let answered = latencies_ms.len();
        let dead_lettered = sent
            .keys()
            .filter(|id| !arrivals.by_bundle.contains_key(*id))
            .filter(|id| {
                arrivals
                    .dead_by_bundle
                    .get(*id)
                    .is_some_and(|d| d.reason.is_some())
            })
            .count();
        Self {
            sent: sent.len(),
            answered,
            duplicated: duplicates.iter().map(|(_, n)| n - 1).sum(),
            late_duplicates,
            duplicates,
            dead_lettered,
            lost: sent.len() - answered - dead_lettered,
            unexpected: arrivals
                .by_bundle
                .keys()
                .filter(|id| !sent.contains_key(*id))
                .count(),
            latencies_ms,
        }
    }

    /// The `q` quantile (0..=1) of the latencies, by nearest rank.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let n = self.latencies_ms.len();
        (n > 0).then(|| self.latencies_ms[((q * n as f64).ceil() as usize).clamp(1, n) - 1])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reader_keeps_reading_for_the_settle_period_after_the_last_bundle_is_resolved() {
        let t0 = Instant::now();
        let mut s = ReadState {
            arrivals: Arrivals::default(),
            pending: ["a", "b"].map(String::from).into(),
            last_message: t0,
        };
        let settling =
            ReadPlan::new(1, Duration::from_secs(3600)).settle(Duration::from_secs(3600));
        s.resolve("a", t0);
        s.resolve("stray", t0);
        s.resolve("a", t0);
        assert_eq!(s.arrivals.complete, None);
        assert!(!s.finished(&settling));
        s.resolve("b", t0);
        assert_eq!(s.arrivals.complete, Some(t0));
        assert!(!s.finished(&settling), "still within the settle period");
        assert!(s.finished(&settling.settle(Duration::ZERO)));
    }

    #[test]
    fn the_reader_gives_up_after_the_idle_time_without_resolving_everything() {
        let s = ReadState {
            arrivals: Arrivals::default(),
            pending: ["a"].map(String::from).into(),
            last_message: Instant::now() - Duration::from_secs(10),
        };
        assert!(s.finished(&ReadPlan::new(1, Duration::from_secs(5))));
        assert!(!s.finished(&ReadPlan::new(1, Duration::from_secs(60))));
    }

    #[test]
    fn tally_counts_answered_duplicated_lost_and_quantiles() {
        let t0 = Instant::now();
        let sent: HashMap<String, Instant> = (0..4).map(|i| (format!("b{i}"), t0)).collect();
        let mut arrivals = Arrivals::default();
        for (id, ms) in [("b0", 10), ("b1", 20), ("b1", 25), ("b2", 30), ("x", 5)] {
            arrivals
                .by_bundle
                .entry(id.to_owned())
                .or_default()
                .push(t0 + Duration::from_millis(ms));
        }
        arrivals.complete = Some(t0 + Duration::from_millis(22));
        let t = Tally::new(&sent, &arrivals);
        assert_eq!(
            (t.sent, t.answered, t.duplicated, t.lost, t.unexpected),
            (4, 3, 1, 1, 1)
        );
        assert_eq!(t.duplicates, vec![("b1".to_owned(), 2)]);
        assert_eq!(
            t.late_duplicates, 1,
            "b1's second copy came after completion"
        );
        assert_eq!(t.quantile(0.5).map(f64::round), Some(20.0));
        assert_eq!(t.quantile(1.0).map(f64::round), Some(30.0));
    }
}
