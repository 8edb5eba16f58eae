//! A queue in memory, for unit tests of everything above the seam: it keeps messages, hands
//! them out with receipt handles, and fails the calls or entries a test plans, so the worker's
//! handling of partial `SendMessageBatch` and `DeleteMessageBatch` failures, a failed
//! dead-letter send or a failed visibility change can be driven without a server.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use super::seam::{EntryFailures, Message, Outgoing, Queue, QueueError};

/// A queue operation, for planning failures and counting calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// `receive`.
    Receive,
    /// `send_batch`.
    Send,
    /// `delete_batch`.
    Delete,
    /// `change_visibility`.
    ChangeVisibility,
}

/// A planned failure of the next call of one operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The whole call fails (as when SQS cannot be reached).
    Call(Op),
    /// These entries of the call fail (by index in the call); the others succeed.
    Entries(Op, Vec<usize>),
}

impl Fault {
    fn op(&self) -> Op {
        match self {
            Fault::Call(op) | Fault::Entries(op, _) => *op,
        }
    }
}

/// A stored message.
#[derive(Debug, Clone)]
struct Stored {
    message_id: String,
    body: String,
    attributes: Vec<(String, String)>,
    number_attributes: Vec<(String, String)>,
    group_id: Option<String>,
    receive_count: u32,
}

#[derive(Debug, Default)]
struct State {
    visible: VecDeque<Stored>,
    in_flight: HashMap<String, Stored>,
    accepted: Vec<Outgoing>,
    deleted: Vec<String>,
    visibility: Vec<(String, i32)>,
    faults: Vec<Fault>,
    calls: BTreeMap<Op, usize>,
    next: u64,
}

/// An in-memory queue; clones share the same messages.
#[derive(Debug, Clone)]
pub struct MemoryQueue {
    url: Arc<str>,
    state: Arc<Mutex<State>>,
}

impl MemoryQueue {
    /// An empty queue; a URL ending in `.fifo` makes it a FIFO queue.
    pub fn new(url: &str) -> Self {
        Self {
            url: Arc::from(url),
            state: Arc::default(),
        }
    }

    /// Enqueues a message as a producer would, with an optional `content-encoding`.
    pub fn push(&self, body: impl Into<String>, content_encoding: Option<&str>) -> String {
        let attributes: Vec<(String, String)> = content_encoding
            .map(|e| {
                (
                    crate::bundle::compression::CONTENT_ENCODING_ATTRIBUTE.to_owned(),
                    e.to_owned(),
                )
            })
            .into_iter()
            .collect();
        self.push_with(body, &attributes, None)
    }

    /// Enqueues a message with String attributes and, on a FIFO queue, a message group.
    pub fn push_with(
        &self,
        body: impl Into<String>,
        attributes: &[(String, String)],
        group_id: Option<&str>,
    ) -> String {
        let mut state = self.lock();
        state.next += 1;
        let message_id = format!("m-{}", state.next);
        state.visible.push_back(Stored {
            message_id: message_id.clone(),
            body: body.into(),
            attributes: attributes.to_vec(),
            number_attributes: Vec::new(),
            group_id: group_id.map(str::to_owned),
            receive_count: 0,
        });
        message_id
    }

    /// How many messages are visible now.
    pub fn visible(&self) -> usize {
        self.lock().visible.len()
    }

    /// Plans a failure of the next call of its operation; faults are used in the order planned.
    pub fn fail_next(&self, fault: Fault) {
        self.lock().faults.push(fault);
    }

    /// Every message a `send_batch` accepted, in order.
    pub fn accepted(&self) -> Vec<Outgoing> {
        self.lock().accepted.clone()
    }

    /// The message ids deleted, in order.
    pub fn deleted(&self) -> Vec<String> {
        self.lock().deleted.clone()
    }

    /// Visibility changes accepted: (receipt handle, seconds).
    pub fn visibility_changes(&self) -> Vec<(String, i32)> {
        self.lock().visibility.clone()
    }

    /// Messages received and neither deleted nor made visible again.
    pub fn in_flight(&self) -> usize {
        self.lock().in_flight.len()
    }

    /// The receipt handles of the messages in flight.
    pub fn in_flight_receipts(&self) -> Vec<String> {
        self.lock().in_flight.keys().cloned().collect()
    }

    /// How many calls of an operation were made.
    pub fn calls(&self, op: Op) -> usize {
        self.lock().calls.get(&op).copied().unwrap_or(0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .expect("no test panics while holding the queue")
    }

    /// Counts the call and takes its planned fault: Err for a whole-call failure, else the
    /// entries that fail.
    fn begin(&self, op: Op) -> Result<Vec<usize>, QueueError> {
        let mut state = self.lock();
        *state.calls.entry(op).or_default() += 1;
        let Some(at) = state.faults.iter().position(|f| f.op() == op) else {
            return Ok(Vec::new());
        };
        match state.faults.remove(at) {
            Fault::Call(_) => Err(QueueError {
                op: match op {
                    Op::Receive => "ReceiveMessage",
                    Op::Send => "SendMessageBatch",
                    Op::Delete => "DeleteMessageBatch",
                    Op::ChangeVisibility => "ChangeMessageVisibilityBatch",
                },
                queue: self.url.to_string(),
                source: "planned failure: the queue could not be reached".into(),
            }),
            Fault::Entries(_, entries) => Ok(entries),
        }
    }
}

fn entry_failures(failing: &[usize], len: usize, code: &str) -> EntryFailures {
    failing
        .iter()
        .filter(|&&i| i < len)
        .map(|&i| (i, format!("{code}: planned failure")))
        .collect()
}

impl Queue for MemoryQueue {
    fn url(&self) -> &str {
        &self.url
    }

    async fn receive(&self, max: i32, wait_secs: i32) -> Result<Vec<Message>, QueueError> {
        self.begin(Op::Receive)?;
        // A long poll of an empty queue waits, as SQS's does (tests run on a paused clock).
        if self.lock().visible.is_empty() && wait_secs > 0 {
            tokio::time::sleep(std::time::Duration::from_secs(wait_secs as u64)).await;
        }
        let mut state = self.lock();
        let mut out = Vec::new();
        while out.len() < max.max(1) as usize {
            let Some(mut stored) = state.visible.pop_front() else {
                break;
            };
            stored.receive_count += 1;
            state.next += 1;
            let receipt = format!("{}#{}", stored.message_id, state.next);
            out.push(Message {
                message_id: stored.message_id.clone(),
                receipt_handle: receipt.clone(),
                body: stored.body.clone(),
                content_encoding: stored
                    .attributes
                    .iter()
                    .find(|(k, _)| k == crate::bundle::compression::CONTENT_ENCODING_ATTRIBUTE)
                    .map(|(_, v)| v.clone()),
                sent_timestamp_ms: None,
                receive_count: stored.receive_count,
                group_id: stored.group_id.clone(),
                attributes: stored.attributes.clone(),
                number_attributes: stored.number_attributes.clone(),
                other_attributes: Vec::new(),
            });
            state.in_flight.insert(receipt, stored);
        }
        Ok(out)
    }

    async fn send_batch(&self, messages: &[Outgoing]) -> Result<EntryFailures, QueueError> {
        let failing = self.begin(Op::Send)?;
        let mut state = self.lock();
        for (i, m) in messages.iter().enumerate() {
            if failing.contains(&i) {
                continue;
            }
            state.next += 1;
            let message_id = format!("m-{}", state.next);
            state.visible.push_back(Stored {
                message_id,
                body: m.body.clone(),
                attributes: m.attributes.clone(),
                number_attributes: m.number_attributes.clone(),
                group_id: m.group_id.clone(),
                receive_count: 0,
            });
            state.accepted.push(m.clone());
        }
        Ok(entry_failures(&failing, messages.len(), "InternalError"))
    }

    async fn delete_batch(&self, receipts: &[&str]) -> Result<EntryFailures, QueueError> {
        let failing = self.begin(Op::Delete)?;
        let mut state = self.lock();
        let mut failed = entry_failures(&failing, receipts.len(), "InternalError");
        for (i, receipt) in receipts.iter().enumerate() {
            if failing.contains(&i) {
                continue;
            }
            match state.in_flight.remove(*receipt) {
                Some(stored) => state.deleted.push(stored.message_id),
                None => failed.push((i, "ReceiptHandleIsInvalid: not in flight".into())),
            }
        }
        Ok(failed)
    }

    async fn change_visibility(
        &self,
        receipts: &[&str],
        seconds: i32,
    ) -> Result<EntryFailures, QueueError> {
        let failing = self.begin(Op::ChangeVisibility)?;
        let mut state = self.lock();
        for (i, receipt) in receipts.iter().enumerate() {
            if failing.contains(&i) {
                continue;
            }
            state.visibility.push(((*receipt).to_owned(), seconds));
            if seconds == 0 {
                if let Some(stored) = state.in_flight.remove(*receipt) {
                    state.visible.push_back(stored);
                }
            }
        }
        Ok(entry_failures(&failing, receipts.len(), "InternalError"))
    }

    async fn depth(&self) -> Result<Option<u64>, QueueError> {
        Ok(Some(self.lock().visible.len() as u64))
    }
}
