//! One step: decode, dead-letter what cannot be read, prepare one batch, predict it in one model
//! call, send one answer per bundle, and delete each input only after its answer was accepted.

use std::collections::BTreeMap;
use std::time::Instant;

use crate::batch::{answers, prepare, Coverage, Slot};
use crate::bundle::{decode, Answer, ContentEncoding, DecodeError, InputBundle};
use crate::enrich::{DocumentSource, ReferenceSource};
use crate::queue::{Message, Outgoing, SqsQueue, BUNDLE_ID_ATTRIBUTE};
use crate::standardize::truncate_chars;

use super::{aggregates, Worker};

/// A received message and what decoding made of it.
#[derive(Debug)]
pub struct Received {
    /// The SQS message.
    pub message: Message,
    /// The bundle, or why it cannot be read.
    pub bundle: Result<InputBundle, DecodeError>,
}

impl Received {
    /// Records it holds (0 when unreadable), for batch sizing.
    pub fn records(&self) -> usize {
        self.bundle.as_ref().map_or(0, InputBundle::len)
    }
}

/// What one step did; the loop uses it for back-off and the tests read it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepReport {
    /// Messages handled.
    pub messages: usize,
    /// Records in the readable bundles.
    pub records: usize,
    /// Records predicted.
    pub predicted: usize,
    /// Records answered with an error.
    pub record_errors: usize,
    /// Answers accepted by the output queue.
    pub answered: usize,
    /// Messages sent to the dead-letter queue.
    pub dead_lettered: usize,
    /// Input messages deleted.
    pub deleted: usize,
    /// Input messages left for SQS to redeliver.
    pub left: usize,
    /// The model version used.
    pub model_version: Option<u64>,
    /// A dependency that failed: the batch was left undeleted and the loop backs off.
    pub retryable: Option<String>,
    /// Milliseconds per stage.
    pub timing_ms: BTreeMap<String, f64>,
    /// Record errors by kind (`enrich.mongo: unknown note`).
    pub error_kinds: BTreeMap<String, u64>,
    /// PostgreSQL enrichment coverage.
    pub postgres: Coverage,
    /// MongoDB enrichment coverage.
    pub mongo: Coverage,
    /// Per answered bundle: milliseconds from its SentTimestamp to its answer being accepted.
    pub bundle_age_ms: Vec<f64>,
}

/// Decodes received messages with the worker's limits.
pub fn decode_all(messages: Vec<Message>, limits: &crate::bundle::Limits) -> Vec<Received> {
    messages
        .into_iter()
        .map(|message| {
            let bundle = decode(&message.body, message.content_encoding.as_deref(), limits);
            Received { message, bundle }
        })
        .collect()
}

impl<R: ReferenceSource, D: DocumentSource> Worker<R, D> {
    /// Processes one batch of received messages end to end.
    pub async fn process(&self, batch: Vec<Received>) -> StepReport {
        let started = Instant::now();
        let mut report = StepReport {
            messages: batch.len(),
            ..StepReport::default()
        };
        let (readable, unreadable): (Vec<_>, Vec<_>) =
            batch.into_iter().partition(|r| r.bundle.is_ok());
        let mut refused: Vec<(Message, DecodeError, &'static str)> = unreadable
            .into_iter()
            .map(|r| (r.message, r.bundle.expect_err("partitioned"), "decode"))
            .collect();
        let (messages, bundles): (Vec<Message>, Vec<InputBundle>) = readable
            .into_iter()
            .map(|r| (r.message, r.bundle.expect("partitioned")))
            .unzip();
        report.records = bundles.iter().map(InputBundle::len).sum();

        // One model for the whole batch, even if a new version is swapped in meanwhile.
        let model = self.models.current();
        report.model_version = Some(model.version);
        let spec = &model.artifact.spec;
        let mut prepared = match prepare(spec, &bundles, &self.enricher).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, messages = messages.len(), "enrichment source unavailable; batch left for redelivery");
                report.retryable = Some(e.to_string());
                report.left += messages.len();
                report.dead_lettered += self.dead_letter(refused, &mut report).await;
                return report;
            }
        };
        report.timing_ms.extend(prepared.timing_ms.clone());
        report.postgres = prepared.postgres;
        report.mongo = prepared.mongo;
        let t = Instant::now();
        let scores = model
            .classifier
            .decision_values(std::mem::take(&mut prepared.matrix));
        report.timing_ms.insert("predict".into(), ms(t));
        report.predicted = scores.len();
        let (postgres, mongo) = (prepared.postgres, prepared.mongo);
        for plan in prepared.plans.iter().flatten() {
            for slot in &plan.slots {
                if let Slot::Failed(e) = slot {
                    report.record_errors += 1;
                    *report.error_kinds.entry(e.kind()).or_default() += 1;
                }
            }
        }
        let mut timing = report.timing_ms.clone();
        timing.insert("total".into(), ms(started));
        let version = model.version.to_string();
        let results = answers(spec, &bundles, prepared, &scores, &version, &timing);

        let mut to_send: Vec<(Message, Answer)> = Vec::new();
        for (message, result) in messages.into_iter().zip(results) {
            match result {
                Ok(answer) => to_send.push((message, answer)),
                Err(e) => refused.push((message, e, "prepare")),
            }
        }
        report.dead_lettered += self.dead_letter(refused, &mut report).await;
        if let Some(hook) = &self.hooks.before_send {
            hook().await;
        }
        let t = Instant::now();
        let accepted = self.send_answers(&to_send).await;
        report.timing_ms.insert("send".into(), ms(t));
        report.answered = accepted.len();
        report.left += to_send.len() - accepted.len();
        let t = Instant::now();
        let receipts: Vec<&str> = accepted
            .iter()
            .map(|&i| to_send[i].0.receipt_handle.as_str())
            .collect();
        let deleted = self.delete(&receipts).await;
        report.deleted += deleted;
        report.left += receipts.len() - deleted;
        report.timing_ms.insert("delete".into(), ms(t));
        let now_ms = chrono::Utc::now().timestamp_millis() as f64;
        let mut accepted_iter = accepted.iter().peekable();
        for (i, (message, answer)) in to_send.iter().enumerate() {
            let span = bundle_span(message, answer.bundle_id(), model.version, answer.records());
            let _entered = span.enter();
            if accepted_iter.next_if_eq(&&i).is_some() {
                let age_ms = message.sent_timestamp_ms.map(|sent| now_ms - sent as f64);
                report.bundle_age_ms.extend(age_ms);
                tracing::info!(
                    errors = answer.errors(),
                    age_ms,
                    receive_count = message.receive_count,
                    "bundle answered"
                );
            } else {
                tracing::warn!("answer not accepted; the bundle stays on the queue for redelivery");
            }
        }
        if let Some(pool) = &self.aggregates {
            let answered: Vec<&Answer> = accepted.iter().map(|&i| &to_send[i].1).collect();
            if let Err(e) = aggregates::record(pool, &spec.name, &answered, postgres, mongo).await {
                tracing::warn!(error = %e, "prediction aggregates not recorded for this batch");
            }
        }
        report
    }

    /// Sends answers in batches of at most 10 entries and 256 KiB, retrying failed entries
    /// alone; returns the indexes accepted.
    async fn send_answers(&self, to_send: &[(Message, Answer)]) -> Vec<usize> {
        let fifo = self.output.is_fifo();
        let outgoing: Vec<Outgoing> = to_send
            .iter()
            .map(|(_, answer)| {
                let (body, encoding) = encode_within_limit(answer, self.config.output_encoding);
                let mut attributes = vec![(
                    BUNDLE_ID_ATTRIBUTE.to_owned(),
                    answer.bundle_id().to_owned(),
                )];
                if let Some(enc) = encoding.attribute() {
                    attributes.push((
                        crate::bundle::compression::CONTENT_ENCODING_ATTRIBUTE.to_owned(),
                        enc.to_owned(),
                    ));
                }
                Outgoing {
                    body,
                    attributes,
                    dedup_id: fifo.then(|| dedup_id(answer.bundle_id())),
                    group_id: fifo.then(|| answer.bundle_id().to_owned()),
                }
            })
            .collect();
        self.send_with_retries(&self.output, &outgoing).await
    }

    /// Sends messages, retrying per-entry failures; returns the indexes accepted.
    pub(crate) async fn send_with_retries(
        &self,
        queue: &SqsQueue,
        messages: &[Outgoing],
    ) -> Vec<usize> {
        let mut accepted = Vec::new();
        for chunk in chunks(messages, 10, 256 * 1024) {
            let size = chunk.len();
            let sent = self
                .retry_entries("send", chunk, |idx| {
                    let batch: Vec<Outgoing> = idx.iter().map(|&i| messages[i].clone()).collect();
                    async move { queue.send_batch(&batch).await }
                })
                .await;
            if sent.len() < size {
                tracing::error!(
                    queue = queue.url(),
                    unsent = size - sent.len(),
                    "answers not accepted after retries; their inputs stay for redelivery"
                );
            }
            accepted.extend(sent);
        }
        accepted.sort_unstable();
        accepted
    }

    /// Deletes input messages, retrying per-entry failures; returns how many were deleted.
    pub(crate) async fn delete(&self, receipts: &[&str]) -> usize {
        let mut deleted = 0;
        for start in (0..receipts.len()).step_by(10) {
            let chunk: Vec<usize> = (start..receipts.len().min(start + 10)).collect();
            let size = chunk.len();
            let done = self
                .retry_entries("delete", chunk, |idx| {
                    let batch: Vec<&str> = idx.iter().map(|&i| receipts[i]).collect();
                    async move { self.input.delete_batch(&batch).await }
                })
                .await;
            if done.len() < size {
                tracing::warn!(undeleted = size - done.len(), "inputs answered but not deleted; SQS will redeliver them and the output will repeat");
            }
            deleted += done.len();
        }
        deleted
    }

    /// Calls a batch operation on `pending` entries, then again on only the entries that failed,
    /// with back-off, up to `send_attempts` times; returns the entries that succeeded.
    async fn retry_entries<F, Fut>(
        &self,
        what: &'static str,
        mut pending: Vec<usize>,
        mut call: F,
    ) -> Vec<usize>
    where
        F: FnMut(&[usize]) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<(usize, String)>, crate::queue::QueueError>>,
    {
        let mut done = Vec::with_capacity(pending.len());
        for attempt in 0..self.config.send_attempts {
            match call(&pending).await {
                Ok(failed) => {
                    let failed: Vec<(usize, String)> = failed
                        .into_iter()
                        .map(|(i, reason)| (pending[i], reason))
                        .collect();
                    for (entry, reason) in &failed {
                        tracing::warn!(
                            what,
                            entry,
                            reason,
                            attempt,
                            "batch entry failed; retrying it alone"
                        );
                    }
                    done.extend(
                        pending
                            .iter()
                            .filter(|i| !failed.iter().any(|(f, _)| f == *i)),
                    );
                    pending = failed.into_iter().map(|(i, _)| i).collect();
                }
                Err(e) => tracing::warn!(what, error = %e, attempt, "batch call failed"),
            }
            if pending.is_empty() {
                break;
            }
            tokio::time::sleep(super::backoff(
                attempt,
                self.config.backoff_base,
                self.config.backoff_max,
            ))
            .await;
        }
        done
    }

    /// Sends unreadable bundles to the input's dead-letter queue with the reason, then deletes
    /// them: retrying cannot help. Returns how many were dead-lettered.
    async fn dead_letter(
        &self,
        refused: Vec<(Message, DecodeError, &'static str)>,
        report: &mut StepReport,
    ) -> usize {
        if refused.is_empty() {
            return 0;
        }
        let Some(dlq) = &self.dlq else {
            tracing::error!(count = refused.len(), "unreadable bundles but no dead-letter queue configured; they stay on the input queue");
            report.left += refused.len();
            return 0;
        };
        let outgoing: Vec<Outgoing> = refused
            .iter()
            .map(|(m, e, stage)| {
                let span = bundle_span(m, e.bundle_id.as_deref().unwrap_or("-"), self.models.current().version, 0);
                span.in_scope(|| tracing::warn!(stage, reason = %e.reason, "bundle refused; sending it to the dead-letter queue"));
                let mut attributes = vec![
                    ("error-stage".to_owned(), (*stage).to_owned()),
                    ("error-reason".to_owned(), truncate_chars(&e.reason, 1000)),
                    ("source-message-id".to_owned(), m.message_id.clone()),
                ];
                if let Some(id) = &e.bundle_id {
                    attributes.push((BUNDLE_ID_ATTRIBUTE.to_owned(), id.clone()));
                }
                if let Some(enc) = &m.content_encoding {
                    attributes.push((crate::bundle::compression::CONTENT_ENCODING_ATTRIBUTE.to_owned(), truncate_chars(enc, 64)));
                }
                Outgoing {
                    body: m.body.clone(),
                    attributes,
                    dedup_id: dlq.is_fifo().then(|| dedup_id(&m.message_id)),
                    group_id: dlq.is_fifo().then(|| "dead-letter".to_owned()),
                }
            })
            .collect();
        let accepted = self.send_with_retries(dlq, &outgoing).await;
        let receipts: Vec<&str> = accepted
            .iter()
            .map(|&i| refused[i].0.receipt_handle.as_str())
            .collect();
        let deleted = self.delete(&receipts).await;
        report.deleted += deleted;
        report.left += refused.len() - deleted;
        accepted.len()
    }
}

/// The span of one bundle: every log line about it carries these fields.
fn bundle_span(
    message: &Message,
    bundle_id: &str,
    model_version: u64,
    records: usize,
) -> tracing::Span {
    tracing::info_span!(
        "bundle",
        bundle_id = truncate_chars(bundle_id, 200),
        message_id = %message.message_id,
        model_version,
        records
    )
}

/// The largest SQS message body we send, in bytes: 256 KiB (LocalStack's and SQS's long-standing
/// limit) less room for attributes.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 - 4 * 1024;

/// Encodes an answer; a plain answer too large for one message is sent gzip-compressed instead
/// (consumers read all three forms, CONTRACT.md section 4).
fn encode_within_limit(answer: &Answer, configured: ContentEncoding) -> (String, ContentEncoding) {
    let body = answer.encode(configured);
    if body.len() <= MAX_MESSAGE_BYTES || configured != ContentEncoding::Identity {
        return (body, configured);
    }
    tracing::info!(
        bundle_id = answer.bundle_id(),
        bytes = body.len(),
        "answer too large for one plain message; sending it gzip-compressed"
    );
    (answer.encode(ContentEncoding::Gzip), ContentEncoding::Gzip)
}

/// FIFO deduplication ids allow 128 characters of a limited alphabet; bundle ids may hold more.
fn dedup_id(bundle_id: &str) -> String {
    let clean: String = bundle_id.chars().filter(|c| c.is_ascii_graphic()).collect();
    if clean.len() == bundle_id.len() && !clean.is_empty() {
        clean
    } else {
        use sha2::Digest;
        format!("{:x}", sha2::Sha256::digest(bundle_id.as_bytes()))
    }
}

/// Index groups of at most `max_entries` messages and `max_bytes` of bodies.
fn chunks(messages: &[Outgoing], max_entries: usize, max_bytes: usize) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut bytes = 0;
    for (i, m) in messages.iter().enumerate() {
        let size = m.body.len()
            + m.attributes
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>();
        match out.last_mut() {
            Some(last) if last.len() < max_entries && bytes + size <= max_bytes => {
                last.push(i);
                bytes += size;
            }
            _ => {
                out.push(vec![i]);
                bytes = size;
            }
        }
    }
    out
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(n: usize) -> Outgoing {
        Outgoing {
            body: "x".repeat(n),
            attributes: vec![],
            dedup_id: None,
            group_id: None,
        }
    }

    #[test]
    fn chunks_respect_count_and_size() {
        let msgs: Vec<Outgoing> = (0..25).map(|_| out(10)).collect();
        let c = chunks(&msgs, 10, 1 << 20);
        assert_eq!(c.iter().map(Vec::len).collect::<Vec<_>>(), [10, 10, 5]);
        let big: Vec<Outgoing> = (0..4).map(|_| out(100_000)).collect();
        let c = chunks(&big, 10, 256 * 1024);
        assert_eq!(c.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2]);
    }

    #[test]
    fn a_large_plain_answer_is_compressed_and_a_small_one_is_not() {
        let answer = |rows: usize| {
            Answer::Request(crate::bundle::OutputBundle {
                bundle_id: "b".into(),
                model: "banknote".into(),
                model_version: "1".into(),
                columns: vec!["id".into(), "label".into(), "score".into()],
                rows: (0..rows)
                    .map(|i| crate::bundle::OutputRow {
                        id: format!("r-{i:06}"),
                        label: "real".into(),
                        score: i as f64 * 0.123_456_789,
                        reported: Default::default(),
                    })
                    .collect(),
                errors: vec![],
                timing_ms: Default::default(),
            })
        };
        let (_, enc) = encode_within_limit(&answer(10), ContentEncoding::Identity);
        assert_eq!(enc, ContentEncoding::Identity);
        let big = answer(10_000);
        assert!(big.encode(ContentEncoding::Identity).len() > MAX_MESSAGE_BYTES);
        let (body, enc) = encode_within_limit(&big, ContentEncoding::Identity);
        assert_eq!(enc, ContentEncoding::Gzip);
        assert!(body.len() <= MAX_MESSAGE_BYTES, "{} bytes", body.len());
    }

    #[test]
    fn dedup_ids_are_valid_for_fifo() {
        assert_eq!(dedup_id("b-1"), "b-1");
        let hashed = dedup_id("bundle with spaces é");
        assert_eq!(hashed.len(), 64);
    }
}
