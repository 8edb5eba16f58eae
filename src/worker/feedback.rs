//! The feedback queue's consumer: each message is read ([`learning::feedback::parse`]), joined
//! with the prediction log and written as training examples ([`learning::feedback::apply`]),
//! then deleted. Malformed feedback goes to the feedback dead-letter queue with its reason;
//! feedback that PostgreSQL could not take stays on the queue for redelivery.
//!
//! The worker runs one consumer beside its pollers when `ML_PIPELINE_FEEDBACK_QUEUE` is set, so
//! feedback is consumed by as many tasks as serve traffic; `ml-pipeline feedback` drains the
//! queue once, for a schedule or by hand.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::dead_letter::dead_letter_copy;
use crate::bundle::compression::decompress;
use crate::bundle::{ContentEncoding, DecodeError};
use crate::learning::feedback::{self, Applied, ApplyError, Origin};
use crate::queue::delivery::{backoff, Retry};
use crate::queue::{delete_all, send_all, Message, Queue};

/// The stage named on a dead-lettered feedback message.
pub const FEEDBACK_STAGE: &str = "feedback";

/// What the consumer needs.
#[derive(Debug, Clone)]
pub struct FeedbackConsumer<Q> {
    /// The feedback queue.
    pub queue: Q,
    /// Its dead-letter queue, for malformed feedback.
    pub dlq: Option<Q>,
    /// Where the prediction log and the training examples are.
    pub pool: PgPool,
    /// The dataset feedback examples go to.
    pub dataset: String,
    /// The largest decoded body, in bytes.
    pub max_body_bytes: usize,
    /// The largest message the dead-letter queue takes.
    pub max_message_bytes: usize,
    /// How failed sends and deletes are retried.
    pub retry: Retry,
}

/// What the consumer did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct FeedbackReport {
    /// Messages received.
    pub messages: usize,
    /// Messages applied and deleted.
    pub applied: usize,
    /// Malformed messages sent to the dead-letter queue.
    pub dead_lettered: usize,
    /// Messages left for redelivery (PostgreSQL did not answer, or a send or delete failed).
    pub left: usize,
    /// Their items, summed.
    pub items: Applied,
}

impl FeedbackReport {
    fn add(&mut self, other: FeedbackReport) {
        self.messages += other.messages;
        self.applied += other.applied;
        self.dead_lettered += other.dead_lettered;
        self.left += other.left;
        add_items(&mut self.items, &other.items);
    }
}

fn add_items(sum: &mut Applied, a: &Applied) {
    sum.items += a.items;
    sum.added += a.added;
    sum.changed += a.changed;
    sum.unchanged += a.unchanged;
    sum.not_logged += a.not_logged;
    sum.ambiguous += a.ambiguous;
    for id in &a.unmatched {
        if sum.unmatched.len() < 100 {
            sum.unmatched.push(id.clone());
        }
    }
}

impl std::fmt::Display for FeedbackReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let i = &self.items;
        write!(
            f,
            "{} feedback messages: {} applied, {} dead-lettered, {} left for redelivery; {} items: {} examples added, {} changed, {} unchanged, {} with no logged prediction, {} ambiguous",
            self.messages, self.applied, self.dead_lettered, self.left, i.items, i.added, i.changed, i.unchanged, i.not_logged, i.ambiguous
        )
    }
}

impl<Q: Queue> FeedbackConsumer<Q> {
    /// Handles received feedback messages.
    pub async fn handle(&self, messages: Vec<Message>) -> FeedbackReport {
        let mut report = FeedbackReport {
            messages: messages.len(),
            ..FeedbackReport::default()
        };
        let mut done: Vec<&str> = Vec::new();
        let mut refused: Vec<(&Message, String)> = Vec::new();
        for m in &messages {
            let parsed = self.read(m);
            let outcome = match parsed {
                Ok(fb) => feedback::apply(&self.pool, &self.dataset, &fb, &origin(m))
                    .await
                    .map(|a| (fb, a)),
                Err(reason) => Err(ApplyError::Refused(reason)),
            };
            match outcome {
                Ok((fb, applied)) => {
                    tracing::info!(
                        message_id = %m.message_id,
                        bundle_id = %crate::text::truncate_chars(&fb.bundle_id, 200),
                        format = fb.format(),
                        items = applied.items,
                        added = applied.added,
                        changed = applied.changed,
                        unchanged = applied.unchanged,
                        not_logged = applied.not_logged,
                        ambiguous = applied.ambiguous,
                        "feedback applied"
                    );
                    record_items(&applied);
                    add_items(&mut report.items, &applied);
                    done.push(&m.receipt_handle);
                    crate::instruments::feedback_message("applied");
                }
                Err(ApplyError::Refused(reason)) => refused.push((m, reason)),
                Err(ApplyError::Database(e)) => {
                    tracing::warn!(message_id = %m.message_id, error = %crate::text::error_chain(&e), "feedback not applied: PostgreSQL did not answer; it stays on the queue for redelivery");
                    crate::instruments::feedback_message("retried");
                    report.left += 1;
                }
            }
        }
        let deleted = delete_all(&self.queue, &done, &self.retry).await;
        report.applied += deleted;
        report.left += done.len() - deleted;
        self.dead_letter(refused, &mut report).await;
        report
    }

    /// The message's feedback, decompressed and parsed; or why it is malformed.
    fn read(&self, m: &Message) -> Result<feedback::Feedback, String> {
        let encoding: ContentEncoding = m.content_encoding.as_deref().unwrap_or("").parse()?;
        let body = decompress(encoding, &m.body, self.max_body_bytes)?;
        feedback::parse(&body)
    }

    async fn dead_letter(&self, refused: Vec<(&Message, String)>, report: &mut FeedbackReport) {
        if refused.is_empty() {
            return;
        }
        for (m, reason) in &refused {
            tracing::warn!(message_id = %m.message_id, reason, "malformed feedback; sending it to the feedback dead-letter queue");
        }
        let Some(dlq) = &self.dlq else {
            tracing::error!(count = refused.len(), "malformed feedback but no feedback dead-letter queue (ML_PIPELINE_FEEDBACK_DLQ); it stays on the queue");
            report.left += refused.len();
            return;
        };
        let copies = refused
            .iter()
            .map(|(m, reason)| {
                let e = DecodeError {
                    bundle_id: None,
                    reason: reason.clone(),
                };
                dead_letter_copy(m, &e, FEEDBACK_STAGE, self.max_message_bytes)
            })
            .collect();
        let accepted = send_all(dlq, copies, self.max_message_bytes, &self.retry).await;
        let receipts: Vec<&str> = accepted
            .iter()
            .map(|&i| refused[i].0.receipt_handle.as_str())
            .collect();
        let deleted = delete_all(&self.queue, &receipts, &self.retry).await;
        report.dead_lettered += deleted;
        report.left += refused.len() - deleted;
        for _ in 0..deleted {
            crate::instruments::feedback_message("dead_lettered");
        }
    }

    /// Receives and handles feedback until `stop`, long-polling `wait_secs` at a time.
    pub async fn run(&self, wait_secs: i32, stop: CancellationToken) -> FeedbackReport {
        let mut report = FeedbackReport::default();
        let mut failures = 0;
        loop {
            let received = tokio::select! {
                () = stop.cancelled() => return report,
                r = self.queue.receive(10, wait_secs) => r,
            };
            match received {
                Ok(messages) if messages.is_empty() => failures = 0,
                Ok(messages) => {
                    failures = 0;
                    report.add(self.handle(messages).await);
                }
                Err(e) => {
                    let delay = backoff(failures, Duration::from_secs(1), Duration::from_secs(30));
                    failures += 1;
                    tracing::warn!(queue = self.queue.url(), error = %crate::text::error_chain(&e), retry_in_s = delay.as_secs_f64(), "feedback receive failed");
                    tokio::select! {
                        () = stop.cancelled() => return report,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// Receives and handles feedback until a receive waiting `wait_secs` comes back empty.
    pub async fn drain(&self, wait_secs: i32) -> Result<FeedbackReport, crate::queue::QueueError> {
        let mut report = FeedbackReport::default();
        loop {
            let messages = self.queue.receive(10, wait_secs).await?;
            if messages.is_empty() {
                return Ok(report);
            }
            report.add(self.handle(messages).await);
        }
    }
}

fn origin(m: &Message) -> Origin<'_> {
    let sent_at = m
        .sent_timestamp_ms
        .and_then(|ms| DateTime::<Utc>::from_timestamp_millis(ms as i64))
        .unwrap_or_else(Utc::now);
    Origin {
        message_id: &m.message_id,
        sent_at,
    }
}

fn record_items(a: &Applied) {
    for (result, n) in [
        ("added", a.added),
        ("changed", a.changed),
        ("unchanged", a.unchanged),
        ("not_logged", a.not_logged),
        ("ambiguous", a.ambiguous),
    ] {
        crate::instruments::feedback_items(result, n as u64);
    }
}
