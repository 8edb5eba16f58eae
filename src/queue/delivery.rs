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
    messages: Vec<Outgoing>,
    max_message_bytes: usize,
    retry: &Retry,
) -> Vec<usize> {
    let prepared = prepare(queue, messages);
    let all: Vec<usize> = (0..prepared.len()).collect();
    let mut accepted = send_indexes(queue, &prepared, &all, max_message_bytes, retry).await;
    accepted.sort_unstable();
    accepted
}

/// Sends messages so that those of one message group (their `group_id`, even when the queue is
/// a standard one) are accepted in the order given, and none is accepted after an earlier one
/// of its group was not: each call carries at most one message per group (different groups
/// share calls), and a group's next message goes only once the one before was accepted. A group
/// whose message is still refused after the retries stops there: its later messages are not
/// sent. Messages without a group are each their own. Returns the indexes accepted, in order.
///
/// The price of the order: a group's messages take one call each, so a batch of ten messages
/// of one group makes ten calls where [`send_all`] makes one.
pub async fn send_in_group_order<Q: Queue>(
    queue: &Q,
    messages: Vec<Outgoing>,
    max_message_bytes: usize,
    retry: &Retry,
) -> Vec<usize> {
    // The order key is taken before `prepare` drops the group ids of a standard queue.
    let groups: Vec<Option<String>> = messages.iter().map(|m| m.group_id.clone()).collect();
    let prepared = prepare(queue, messages);
    let mut pending = group_queues(&groups);
    let mut accepted = Vec::new();
    loop {
        // The first unsent message of every group still going, in the order given.
        let mut wave: Vec<usize> = pending.iter().filter_map(|g| g.front().copied()).collect();
        if wave.is_empty() {
            break;
        }
        wave.sort_unstable();
        let sent = send_indexes(queue, &prepared, &wave, max_message_bytes, retry).await;
        for group in &mut pending {
            let Some(&first) = group.front() else {
                continue;
            };
            if sent.contains(&first) {
                group.pop_front();
            } else if wave.contains(&first) {
                tracing::warn!(
                    queue = queue.url(),
                    held = group.len() - 1,
                    "a message of a group was not accepted; the group's later messages are not sent ahead of it and stay for redelivery"
                );
                group.clear();
            }
        }
        accepted.extend(sent);
    }
    accepted.sort_unstable();
    accepted
}

/// The indexes of each message group, in order; a message without a group is a group alone.
fn group_queues(groups: &[Option<String>]) -> Vec<std::collections::VecDeque<usize>> {
    let mut by_group: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let mut queues: Vec<std::collections::VecDeque<usize>> = Vec::new();
    for (i, group) in groups.iter().enumerate() {
        let slot = match group {
            Some(g) => *by_group.entry(g.as_str()).or_insert_with(|| {
                queues.push(Default::default());
                queues.len() - 1
            }),
            None => {
                queues.push(Default::default());
                queues.len() - 1
            }
        };
        queues[slot].push_back(i);
    }
    queues
}

/// FIFO ids made valid on a FIFO queue, dropped on a standard one.
fn prepare<Q: Queue>(queue: &Q, mut messages: Vec<Outgoing>) -> Vec<Outgoing> {
    let fifo = queue.is_fifo();
    for m in &mut messages {
        m.dedup_id = m.dedup_id.take().filter(|_| fifo).map(|id| fifo_id(&id));
        m.group_id = m.group_id.take().filter(|_| fifo).map(|id| fifo_id(&id));
    }
    messages
}

/// Sends the messages at `indexes`, chunked and retried; returns the indexes accepted.
async fn send_indexes<Q: Queue>(
    queue: &Q,
    prepared: &[Outgoing],
    indexes: &[usize],
    max_message_bytes: usize,
    retry: &Retry,
) -> Vec<usize> {
    let mut accepted = Vec::new();
    for chunk in chunks(prepared, indexes, MAX_BATCH_ENTRIES, max_message_bytes) {
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

/// The messages at `indexes`, in groups of at most `max_entries` messages and `max_bytes` of
/// bodies and attributes.
fn chunks(
    messages: &[Outgoing],
    indexes: &[usize],
    max_entries: usize,
    max_bytes: usize,
) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut bytes = 0;
    for &i in indexes {
        let size = messages[i].size();
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
        let all = |m: &[Outgoing]| (0..m.len()).collect::<Vec<_>>();
        let c = chunks(&msgs, &all(&msgs), 10, 1 << 20);
        assert_eq!(c.iter().map(Vec::len).collect::<Vec<_>>(), [10, 10, 5]);
        let big: Vec<Outgoing> = (0..4).map(|_| out(100_000)).collect();
        let c = chunks(&big, &all(&big), 10, 256 * 1024);
        assert_eq!(c.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2]);
        // SQS's limit today: the same four fit one call.
        let c = chunks(&big, &all(&big), 10, crate::queue::MAX_SQS_MESSAGE_BYTES);
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
