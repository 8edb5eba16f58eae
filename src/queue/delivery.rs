//! Delivery on top of the queue seam, written once for every caller (the worker's answers,
//! dead letters, deletes and heartbeat, `send`, the load generator): calls split into batches
//! of at most 10 entries and the byte limit, FIFO ids made valid, and failed entries retried
//! alone with back-off.

use std::future::Future;
use std::time::Duration;

use rand::Rng;

use super::seam::{EntryFailures, Outgoing, Queue, QueueError};

/// Most entries in one SQS batch call.
pub const MAX_BATCH_ENTRIES: usize = 10;

/// How failed batch calls and entries are retried.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retry {
    /// Attempts per batch call before its entries are given up (left for redelivery).
    pub attempts: u32,
    /// First back-off delay.
    pub base: Duration,
    /// Longest back-off delay.
    pub max: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            attempts: 5,
            base: Duration::from_millis(100),
            max: Duration::from_secs(10),
        }
    }
}

impl Retry {
    /// The delay before retry number `attempt` (0-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        backoff(attempt, self.base, self.max)
    }
}

/// Exponential back-off with full jitter.
pub fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    let cap = base.saturating_mul(1u32 << attempt.min(16)).min(max);
    cap.mul_f64(rand::rng().random_range(0.5..=1.0))
}

/// Sends every message, in batches of at most 10 entries and `max_message_bytes` of bodies and
/// attributes (SQS limits a `SendMessageBatch` call's total payload to its message size limit,
/// the `max_message_bytes` setting), retrying failed entries alone; returns the indexes
/// accepted, in order. On a FIFO queue the dedup ids are made valid; on a standard queue dedup
/// and group ids are dropped.
pub async fn send_all<Q: Queue>(
    queue: &Q,
    mut messages: Vec<Outgoing>,
    max_message_bytes: usize,
    retry: &Retry,
) -> Vec<usize> {
    let fifo = queue.is_fifo();
    for m in &mut messages {
        m.dedup_id = m.dedup_id.take().filter(|_| fifo).map(|id| fifo_id(&id));
        m.group_id = m.group_id.take().filter(|_| fifo).map(|id| fifo_id(&id));
    }
    let prepared = messages;
    let mut accepted = Vec::new();
    for chunk in chunks(&prepared, MAX_BATCH_ENTRIES, max_message_bytes) {
        let size = chunk.len();
        let sent = retry_entries("send", chunk, retry, |idx| {
            let batch: Vec<Outgoing> = idx.iter().map(|&i| prepared[i].clone()).collect();
            async move { queue.send_batch(&batch).await }
        })
        .await;
        if sent.len() < size {
            tracing::error!(
                queue = queue.url(),
                unsent = size - sent.len(),
                "messages not accepted after retries; their inputs stay for redelivery"
            );
        }
        accepted.extend(sent);
    }
    accepted.sort_unstable();
    accepted
}

/// Deletes messages by receipt handle, retrying failed entries; returns how many were deleted.
pub async fn delete_all<Q: Queue>(queue: &Q, receipts: &[&str], retry: &Retry) -> usize {
    let mut deleted = 0;
    for start in (0..receipts.len()).step_by(MAX_BATCH_ENTRIES) {
        let chunk: Vec<usize> = (start..receipts.len().min(start + MAX_BATCH_ENTRIES)).collect();
        let size = chunk.len();
        let done = retry_entries("delete", chunk, retry, |idx| {
            let batch: Vec<&str> = idx.iter().map(|&i| receipts[i]).collect();
            async move { queue.delete_batch(&batch).await }
        })
        .await;
        if done.len() < size {
            tracing::warn!(
                queue = queue.url(),
                undeleted = size - done.len(),
                "inputs answered but not deleted; SQS will redeliver them and the output will repeat"
            );
        }
        deleted += done.len();
    }
    deleted
}

/// Sets the visibility of messages in batches of 10, once (the heartbeat calls again on its
/// next beat); returns how many were changed.
pub async fn change_visibility_all<Q: Queue>(
    queue: &Q,
    receipts: &[String],
    seconds: i32,
) -> usize {
    let mut changed = 0;
    for chunk in receipts.chunks(MAX_BATCH_ENTRIES) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        match queue.change_visibility(&refs, seconds).await {
            Ok(failed) => {
                if !failed.is_empty() {
                    tracing::warn!(
                        queue = queue.url(),
                        failed = failed.len(),
                        "visibility not changed for some messages"
                    );
                }
                changed += refs.len() - failed.len();
            }
            Err(e) => tracing::warn!(
                queue = queue.url(),
                error = %crate::text::error_chain(&e),
                "visibility change failed"
            ),
        }
    }
    changed
}

/// Calls a batch operation on `pending` entries, then again on only the entries that failed,
/// with back-off, up to `retry.attempts` times; returns the entries that succeeded.
async fn retry_entries<F, Fut>(
    what: &'static str,
    mut pending: Vec<usize>,
    retry: &Retry,
    mut call: F,
) -> Vec<usize>
where
    F: FnMut(&[usize]) -> Fut,
    Fut: Future<Output = Result<EntryFailures, QueueError>>,
{
    let mut done = Vec::with_capacity(pending.len());
    for attempt in 0..retry.attempts {
        match call(&pending).await {
            Ok(failed) => {
                let failed: Vec<(usize, String)> = failed
                    .into_iter()
                    .filter_map(|(i, reason)| Some((*pending.get(i)?, reason)))
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
            Err(e) => {
                tracing::warn!(what, error = %crate::text::error_chain(&e), attempt, "batch call failed")
            }
        }
        if pending.is_empty() {
            break;
        }
        tokio::time::sleep(retry.delay(attempt)).await;
    }
    done
}

/// The longest FIFO deduplication or group id.
const MAX_FIFO_ID_CHARS: usize = 128;

/// A valid FIFO deduplication or message group id for `bundle_id`: 1 to 128 printable ASCII
/// characters (no spaces) are kept as they are; anything else becomes its lowercase hex
/// SHA-256, the same for the same id.
pub fn fifo_id(bundle_id: &str) -> String {
    let valid = !bundle_id.is_empty()
        && bundle_id.len() <= MAX_FIFO_ID_CHARS
        && bundle_id.bytes().all(|b| b.is_ascii_graphic());
    if valid {
        bundle_id.to_owned()
    } else {
        use sha2::Digest;
        format!("{:x}", sha2::Sha256::digest(bundle_id.as_bytes()))
    }
}

/// Index groups of at most `max_entries` messages and `max_bytes` of bodies and attributes.
fn chunks(messages: &[Outgoing], max_entries: usize, max_bytes: usize) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut bytes = 0;
    for (i, m) in messages.iter().enumerate() {
        let size = m.size();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn out(n: usize) -> Outgoing {
        Outgoing {
            body: "x".repeat(n),
            attributes: vec![],
            number_attributes: vec![],
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
        // SQS's limit today: the same four fit one call.
        let c = chunks(&big, 10, crate::queue::MAX_SQS_MESSAGE_BYTES);
        assert_eq!(c.iter().map(Vec::len).collect::<Vec<_>>(), [4]);
    }

    #[test]
    fn fifo_ids_are_valid_for_fifo() {
        assert_eq!(fifo_id("b-1"), "b-1");
        for invalid in ["bundle with spaces é", "", "tab\there", &"x".repeat(129)] {
            let hashed = fifo_id(invalid);
            assert_eq!(hashed.len(), 64, "{invalid:?}");
            assert!(hashed.bytes().all(|b| b.is_ascii_hexdigit()));
        }
        assert_eq!(fifo_id(&"x".repeat(128)), "x".repeat(128));
    }
}
