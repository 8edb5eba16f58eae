//! A queue in memory, for unit tests of everything above the seam: it keeps messages, hands
//! them out with receipt handles, and fails the calls or entries a test plans, so the worker's
//! handling of partial `SendMessageBatch` and `DeleteMessageBatch` failures, a failed
//! dead-letter send or a failed visibility change can be driven without a server.
//!
//! A URL ending in `.fifo` makes it a FIFO queue, modelled as SQS documents one: a message
//! group's messages are handed out in the order sent, none while another of its group is in
//! flight (one receive may return several of a group, in order), and a receive repeated with
//! the same attempt id returns the same messages while none of them was deleted or made
//! visible. A visibility set above zero runs out on tokio's clock (checked at each receive); a
//! message received and never given a visibility stays in flight until a test releases it. A
//! long poll of an empty queue returns when a producer pushes a message, or when its wait ends.

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
    /// The call takes effect but its answer is lost on the way: the caller gets a retryable
    /// error. Only for [`Op::Receive`]: the messages are in flight, and the caller does not
    /// know them.
    AnswerLost(Op),
}

impl Fault {
    fn op(&self) -> Op {
        match self {
            Fault::Call(op) | Fault::Entries(op, _) | Fault::AnswerLost(op) => *op,
        }
    }
}

/// What a planned fault does to the call about to be made.
#[derive(Debug, Default)]
struct Planned {
    /// Entries that fail.
    failing: Vec<usize>,
    /// The call's answer is lost.
    answer_lost: bool,
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
    /// The order sent, which a FIFO queue keeps within a group.
    seq: u64,
}

/// A message received and neither deleted nor visible again.
#[derive(Debug, Clone)]
struct Held {
    stored: Stored,
    /// When it becomes visible again, once a visibility was set; `None` until then.
    visible_at: Option<tokio::time::Instant>,
}

#[derive(Debug, Default)]
struct State {
    visible: VecDeque<Stored>,
    in_flight: HashMap<String, Held>,
    /// Receive attempt id -> the receipt handles that receive handed out.
    attempts: HashMap<String, Vec<String>>,
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
    /// Wakes the long polls waiting on an empty queue when a producer pushes a message.
    arrived: Arc<tokio::sync::Notify>,
}

impl MemoryQueue {
    /// An empty queue; a URL ending in `.fifo` makes it a FIFO queue.
    pub fn new(url: &str) -> Self {
        Self {
            url: Arc::from(url),
            state: Arc::default(),
            arrived: Arc::default(),
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
        let seq = state.next;
        state.visible.push_back(Stored {
            message_id: message_id.clone(),
            body: body.into(),
            attributes: attributes.to_vec(),
            number_attributes: Vec::new(),
            group_id: group_id.map(str::to_owned),
            receive_count: 0,
            seq,
        });
        drop(state);
        self.arrived.notify_waiters();
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

    /// Counts the call and takes its planned fault: Err for a whole-call failure, else what
    /// fails.
    fn begin(&self, op: Op) -> Result<Planned, QueueError> {
        let mut state = self.lock();
        *state.calls.entry(op).or_default() += 1;
        let Some(at) = state.faults.iter().position(|f| f.op() == op) else {
            return Ok(Planned::default());
        };
        match state.faults.remove(at) {
            Fault::Call(_) => Err(self.unreachable(op, "the queue could not be reached")),
            Fault::Entries(_, failing) => Ok(Planned {
                failing,
                answer_lost: false,
            }),
            Fault::AnswerLost(_) => Ok(Planned {
                failing: Vec::new(),
                answer_lost: true,
            }),
        }
    }

    fn unreachable(&self, op: Op, why: &str) -> QueueError {
        QueueError {
            op: match op {
                Op::Receive => "ReceiveMessage",
                Op::Send => "SendMessageBatch",
                Op::Delete => "DeleteMessageBatch",
                Op::ChangeVisibility => "ChangeMessageVisibilityBatch",
            },
            queue: self.url.to_string(),
            source: format!("planned failure: {why}").into(),
            retryable: true,
        }
    }

    /// Receives, with an attempt id on a FIFO queue.
    async fn receive_as(
        &self,
        max: i32,
        wait_secs: i32,
        attempt_id: Option<&str>,
    ) -> Result<Vec<Message>, QueueError> {
        let planned = self.begin(Op::Receive)?;
        let attempt_id = attempt_id.filter(|_| self.is_fifo());
        if let Some(again) = attempt_id.and_then(|id| self.lock().repeat(id)) {
            return Ok(again);
        }
        // A long poll of an empty queue waits until a producer pushes a message or its wait
        // ends, as SQS's does (tests run on a paused clock).
        let deadline =
            tokio::time::Instant::now() + std::time::Duration::from_secs(wait_secs.max(0) as u64);
        loop {
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            if wait_secs <= 0 || self.lock().available(self.is_fifo()) > 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                break;
            }
        }
        let mut state = self.lock();
        let out = state.take(max.max(1) as usize, self.is_fifo());
        if let Some(id) = attempt_id {
            let receipts = out.iter().map(|m| m.receipt_handle.clone()).collect();
            state.attempts.insert(id.to_owned(), receipts);
        }
        drop(state);
        if planned.answer_lost {
            return Err(self.unreachable(Op::Receive, "the answer was lost on the way"));
        }
        Ok(out)
    }
}

impl State {
    /// Messages whose visibility ran out become visible again (on a FIFO queue, in the order
    /// sent).
    fn expire(&mut self, fifo: bool) {
        let now = tokio::time::Instant::now();
        let expired: Vec<String> = self
            .in_flight
            .iter()
            .filter(|(_, held)| held.visible_at.is_some_and(|at| at <= now))
            .map(|(receipt, _)| receipt.clone())
            .collect();
        for receipt in expired {
            if let Some(held) = self.in_flight.remove(&receipt) {
                self.make_visible(held.stored, fifo);
            }
        }
    }

    fn make_visible(&mut self, stored: Stored, fifo: bool) {
        if fifo {
            let at = self.visible.partition_point(|m| m.seq < stored.seq);
            self.visible.insert(at, stored);
        } else {
            self.visible.push_back(stored);
        }
    }

    /// The groups with a message in flight: a FIFO queue hands out none of their messages.
    fn locked_groups(&self) -> std::collections::HashSet<String> {
        self.in_flight
            .values()
            .filter_map(|held| held.stored.group_id.clone())
            .collect()
    }

    /// How many messages a receive could take now.
    fn available(&mut self, fifo: bool) -> usize {
        self.expire(fifo);
        let locked = if fifo {
            self.locked_groups()
        } else {
            Default::default()
        };
        self.visible
            .iter()
            .filter(|m| m.group_id.as_ref().is_none_or(|g| !locked.contains(g)))
            .count()
    }

    /// Takes up to `max` messages: in order, skipping the groups in flight on a FIFO queue.
    fn take(&mut self, max: usize, fifo: bool) -> Vec<Message> {
        self.expire(fifo);
        let locked = if fifo {
            self.locked_groups()
        } else {
            Default::default()
        };
        let mut out = Vec::new();
        let mut kept = VecDeque::new();
        while let Some(mut stored) = self.visible.pop_front() {
            let blocked = stored.group_id.as_ref().is_some_and(|g| locked.contains(g));
            if out.len() >= max || blocked {
                kept.push_back(stored);
                continue;
            }
            stored.receive_count += 1;
            self.next += 1;
            let receipt = format!("{}#{}", stored.message_id, self.next);
            out.push(message(&stored, &receipt));
            self.in_flight.insert(
                receipt,
                Held {
                    stored,
                    visible_at: None,
                },
            );
        }
        self.visible = kept;
        out
    }

    /// The messages an earlier receive with this attempt id handed out, if all are still in
    /// flight as it left them.
    fn repeat(&mut self, attempt_id: &str) -> Option<Vec<Message>> {
        let receipts = self.attempts.get(attempt_id)?;
        receipts
            .iter()
            .map(|r| {
                let held = self.in_flight.get(r)?;
                held.visible_at.is_none().then(|| message(&held.stored, r))
            })
            .collect()
    }
}

/// A stored message as a receive hands it out.
fn message(stored: &Stored, receipt: &str) -> Message {
    Message {
        message_id: stored.message_id.clone(),
        receipt_handle: receipt.to_owned(),
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
        self.receive_as(max, wait_secs, None).await
    }

    async fn receive_attempt(
        &self,
        max: i32,
        wait_secs: i32,
        attempt_id: &str,
    ) -> Result<Vec<Message>, QueueError> {
        self.receive_as(max, wait_secs, Some(attempt_id)).await
    }

    async fn send_batch(&self, messages: &[Outgoing]) -> Result<EntryFailures, QueueError> {
        let failing = self.begin(Op::Send)?.failing;
        let mut state = self.lock();
        for (i, m) in messages.iter().enumerate() {
            if failing.contains(&i) {
                continue;
            }
            state.next += 1;
            let message_id = format!("m-{}", state.next);
            let seq = state.next;
            state.visible.push_back(Stored {
                message_id,
                body: m.body.clone(),
                attributes: m.attributes.clone(),
                number_attributes: m.number_attributes.clone(),
                group_id: m.group_id.clone(),
                receive_count: 0,
                seq,
            });
            state.accepted.push(m.clone());
        }
        Ok(entry_failures(&failing, messages.len(), "InternalError"))
    }

    async fn delete_batch(&self, receipts: &[&str]) -> Result<EntryFailures, QueueError> {
        let failing = self.begin(Op::Delete)?.failing;
        let mut state = self.lock();
        let mut failed = entry_failures(&failing, receipts.len(), "InternalError");
        for (i, receipt) in receipts.iter().enumerate() {
            if failing.contains(&i) {
                continue;
            }
            match state.in_flight.remove(*receipt) {
                Some(held) => state.deleted.push(held.stored.message_id),
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
        let failing = self.begin(Op::ChangeVisibility)?.failing;
        let fifo = self.is_fifo();
        let mut state = self.lock();
        for (i, receipt) in receipts.iter().enumerate() {
            if failing.contains(&i) {
                continue;
            }
            state.visibility.push(((*receipt).to_owned(), seconds));
            if seconds == 0 {
                if let Some(held) = state.in_flight.remove(*receipt) {
                    state.make_visible(held.stored, fifo);
                }
            } else if let Some(held) = state.in_flight.get_mut(*receipt) {
                let after = std::time::Duration::from_secs(seconds.max(0) as u64);
                held.visible_at = Some(tokio::time::Instant::now() + after);
            }
        }
        Ok(entry_failures(&failing, receipts.len(), "InternalError"))
    }

    async fn depth(&self) -> Result<Option<u64>, QueueError> {
        let fifo = self.is_fifo();
        let mut state = self.lock();
        state.expire(fifo);
        Ok(Some(state.visible.len() as u64))
    }
}
