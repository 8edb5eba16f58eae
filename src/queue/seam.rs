//! The queue seam: the handful of calls the worker, the operator's commands and the tools make
//! on a queue. [`super::sqs::SqsQueue`] implements it over `aws-sdk-sqs`,
//! [`super::memory::MemoryQueue`] in memory for unit tests; [`super::delivery`] builds chunking,
//! FIFO ids and per-entry retries on top, once for both.

use std::future::Future;

/// The message attribute carrying the bundle id on outputs.
pub const BUNDLE_ID_ATTRIBUTE: &str = "bundle_id";

/// A message as received.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// SQS's message id.
    pub message_id: String,
    /// The handle to delete it or change its visibility.
    pub receipt_handle: String,
    /// The body as sent.
    pub body: String,
    /// The `content-encoding` attribute, if any.
    pub content_encoding: Option<String>,
    /// When it was first sent, in milliseconds since the epoch.
    pub sent_timestamp_ms: Option<u64>,
    /// How many times it has been received, this time included.
    pub receive_count: u32,
    /// FIFO queues: the message group it was sent in.
    pub group_id: Option<String>,
    /// Its String message attributes, as received (`content-encoding` among them).
    pub attributes: Vec<(String, String)>,
    /// Its Number message attributes, with their values as text (`ExtendedPayloadSize`).
    pub number_attributes: Vec<(String, String)>,
    /// The names of its Binary message attributes, which the seam does not carry: a copy made
    /// from this message would lose them.
    pub other_attributes: Vec<String>,
}

impl Message {
    /// A message as received once, with this body and id (its receipt handle `rh-{id}`) and
    /// nothing else: the base of the unit tests' messages.
    #[cfg(test)]
    pub(crate) fn received(id: &str, body: &str) -> Self {
        Self {
            message_id: id.into(),
            receipt_handle: format!("rh-{id}"),
            body: body.into(),
            content_encoding: None,
            sent_timestamp_ms: None,
            receive_count: 1,
            group_id: None,
            attributes: Vec::new(),
            number_attributes: Vec::new(),
            other_attributes: Vec::new(),
        }
    }

    /// The value of a String message attribute.
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The value of a Number message attribute, as text.
    pub fn number_attribute(&self, name: &str) -> Option<&str> {
        self.number_attributes
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A message to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// The body.
    pub body: String,
    /// String message attributes.
    pub attributes: Vec<(String, String)>,
    /// Number message attributes, their values as text (`ExtendedPayloadSize`).
    pub number_attributes: Vec<(String, String)>,
    /// FIFO queues: the deduplication key (the bundle id); [`super::delivery::send_all`] makes
    /// it a valid id on a FIFO queue and drops it on a standard one.
    pub dedup_id: Option<String>,
    /// FIFO queues: the message group; dropped on a standard queue.
    pub group_id: Option<String>,
}

/// The largest message SQS accepts today, body and message attributes together: 1 MiB (raised
/// from 256 KiB in August 2025). It is the default of the `max_message_bytes` setting
/// (`ML_PIPELINE_MAX_MESSAGE_BYTES`), which is lowered for a queue or emulator that enforces less.
pub const MAX_SQS_MESSAGE_BYTES: usize = 1024 * 1024;

impl Outgoing {
    /// Its size as SQS counts it: the body, and each attribute's name, data type and value.
    pub fn size(&self) -> usize {
        self.body.len()
            + self
                .attributes
                .iter()
                .map(|(k, v)| k.len() + "String".len() + v.len())
                .sum::<usize>()
            + self
                .number_attributes
                .iter()
                .map(|(k, v)| k.len() + "Number".len() + v.len())
                .sum::<usize>()
    }
}

/// Per-entry failures of one batch call: the entry's index in the call, and SQS's reason.
pub type EntryFailures = Vec<(usize, String)>;

/// A queue call that failed as a whole; the caller backs off and retries later.
#[derive(Debug, thiserror::Error)]
#[error("SQS {op} on {queue} failed")]
pub struct QueueError {
    /// The operation.
    pub op: &'static str,
    /// The queue URL.
    pub queue: String,
    /// What the client reported, with its own cause chain.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
    /// Whether the call may have failed on the way (no answer, a timeout, throttling, a server
    /// error) rather than being refused: the same call may be made again. A receive retried
    /// after such a failure reuses its `ReceiveRequestAttemptId` ([`super::ReceiveAttempt`]).
    pub retryable: bool,
}

/// One queue. Batch calls take at most 10 entries and report failures per entry.
pub trait Queue: Send + Sync {
    /// The queue URL, for logs and errors.
    fn url(&self) -> &str;

    /// Whether it is a FIFO queue (needs dedup and group ids).
    fn is_fifo(&self) -> bool {
        self.url().ends_with(".fifo")
    }

    /// Long-polls for up to `max` messages, waiting up to `wait_secs`.
    fn receive(
        &self,
        max: i32,
        wait_secs: i32,
    ) -> impl Future<Output = Result<Vec<Message>, QueueError>> + Send;

    /// Like [`Queue::receive`], with a receive attempt id: on a FIFO queue, a receive made again
    /// with the same id within 5 minutes returns the same messages and receipt handles (SQS's
    /// `ReceiveRequestAttemptId`), so that messages received by a call whose answer was lost are
    /// not left in flight, holding their message groups back, until their visibility runs out.
    /// Standard queues ignore the id.
    fn receive_attempt(
        &self,
        max: i32,
        wait_secs: i32,
        attempt_id: &str,
    ) -> impl Future<Output = Result<Vec<Message>, QueueError>> + Send {
        let _ = attempt_id;
        self.receive(max, wait_secs)
    }

    /// Like [`Queue::receive`], but the messages received stay invisible to other consumers for
    /// `visibility_secs` instead of the queue's own visibility timeout (`dlq inspect` hides
    /// them only briefly).
    fn receive_hidden_for(
        &self,
        max: i32,
        wait_secs: i32,
        visibility_secs: i32,
    ) -> impl Future<Output = Result<Vec<Message>, QueueError>> + Send {
        let _ = visibility_secs;
        self.receive(max, wait_secs)
    }

    /// Sends up to 10 messages.
    fn send_batch(
        &self,
        messages: &[Outgoing],
    ) -> impl Future<Output = Result<EntryFailures, QueueError>> + Send;

    /// Deletes up to 10 messages by receipt handle.
    fn delete_batch(
        &self,
        receipts: &[&str],
    ) -> impl Future<Output = Result<EntryFailures, QueueError>> + Send;

    /// Sets the visibility timeout of up to 10 messages, in seconds.
    fn change_visibility(
        &self,
        receipts: &[&str],
        seconds: i32,
    ) -> impl Future<Output = Result<EntryFailures, QueueError>> + Send;

    /// About how many messages are visible: one cheap call that proves the queue answers.
    fn depth(&self) -> impl Future<Output = Result<Option<u64>, QueueError>> + Send;
}
