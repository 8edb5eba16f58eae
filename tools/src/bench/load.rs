//! The load side shared by `bench` and the fault runs: bundles made from the fixture requests,
//! a sender (paced or as fast as possible) that stamps each bundle's send time, and a reader
//! that collects answers by `bundle_id` and counts answered, duplicated and lost bundles.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_sqs::Client;
use futures::StreamExt;
use tokio::sync::Mutex;

use ml_pipeline::bundle::compression::{compress, ContentEncoding, CONTENT_ENCODING_ATTRIBUTE};
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
    let columns = set.bundles[0].columns.clone();
    let rows: Vec<Vec<serde_json::Value>> = set
        .bundles
        .iter()
        .flat_map(|b| b.rows.iter().map(|r| r.to_values()))
        .collect();
    let mut next = 0;
    (0..count)
        .map(|i| {
            let bundle = RequestBundle {
                bundle_id: format!("{run}-{i:06}"),
                model: None,
                columns: columns.clone(),
                rows: (0..records)
                    .map(|_| {
                        let row = rows[next % rows.len()].clone();
                        next += 1;
                        row
                    })
                    .collect::<Vec<_>>()
                    .into(),
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
            let accepted = send_all(queue, messages, &Retry::default()).await;
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

/// What the reader saw.
#[derive(Debug, Clone, Default)]
pub struct Arrivals {
    /// Per bundle id: when each copy of its answer arrived.
    pub by_bundle: HashMap<String, Vec<Instant>>,
    /// The last arrival of an expected bundle.
    pub last: Option<Instant>,
}

/// Reads answers from `queue` (deleting them) until every id in `expected` arrived, or no new
/// answer came for `idle`. `readers` concurrent long-pollers.
pub async fn collect(
    client: &Client,
    queue: &str,
    expected: &[String],
    readers: usize,
    idle: Duration,
) -> Arrivals {
    let state = Arc::new(Mutex::new((Arrivals::default(), Instant::now())));
    let wanted: Arc<std::collections::HashSet<String>> =
        Arc::new(expected.iter().cloned().collect());
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..readers.max(1) {
        let (client, queue, state, wanted) = (
            client.clone(),
            queue.to_owned(),
            Arc::clone(&state),
            Arc::clone(&wanted),
        );
        tasks.spawn(async move {
            loop {
                {
                    let s = state.lock().await;
                    let answered = wanted
                        .iter()
                        .filter(|id| s.0.by_bundle.contains_key(*id))
                        .count();
                    if answered == wanted.len() || s.1.elapsed() > idle {
                        return;
                    }
                }
                let Ok(out) = client
                    .receive_message()
                    .queue_url(&queue)
                    .max_number_of_messages(10)
                    .wait_time_seconds(1)
                    .message_attribute_names(BUNDLE_ID_ATTRIBUTE)
                    .send()
                    .await
                else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                let now = Instant::now();
                let messages = out.messages.unwrap_or_default();
                if messages.is_empty() {
                    continue;
                }
                {
                    let mut s = state.lock().await;
                    for m in &messages {
                        let id = m
                            .message_attributes
                            .as_ref()
                            .and_then(|a| a.get(BUNDLE_ID_ATTRIBUTE))
                            .and_then(|v| v.string_value.clone())
                            .unwrap_or_default();
                        if wanted.contains(&id) {
                            s.0.last = Some(now);
                        }
                        s.0.by_bundle.entry(id).or_default().push(now);
                    }
                    s.1 = now;
                }
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
                    .queue_url(&queue)
                    .set_entries(Some(entries))
                    .send()
                    .await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let s = state.lock().await;
    s.0.clone()
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
    /// Bundles never answered.
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
        let mut duplicated = 0;
        for (id, at) in sent {
            if let Some(copies) = arrivals.by_bundle.get(id) {
                duplicated += copies.len() - 1;
                let first = copies.iter().min().expect("at least one");
                latencies_ms.push(first.saturating_duration_since(*at).as_secs_f64() * 1e3);
            }
        }
        latencies_ms.sort_by(f64::total_cmp);
        let answered = latencies_ms.len();
        Self {
            sent: sent.len(),
            answered,
            duplicated,
            lost: sent.len() - answered,
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
        let t = Tally::new(&sent, &arrivals);
        assert_eq!(
            (t.sent, t.answered, t.duplicated, t.lost, t.unexpected),
            (4, 3, 1, 1, 1)
        );
        assert_eq!(t.quantile(0.5).map(f64::round), Some(20.0));
        assert_eq!(t.quantile(1.0).map(f64::round), Some(30.0));
    }
}
