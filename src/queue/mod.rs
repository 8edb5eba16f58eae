//! The queues: a narrow seam ([`Queue`]: receive, send a batch, delete a batch, change
//! visibility), its SQS implementation, an in-memory one for unit tests, and the delivery rules
//! built once on top of it (batch limits, FIFO ids and group order, per-entry retries); a
//! poller's receive attempt id; and what a dead-lettered copy carries, written by the worker and
//! read back by `dlq inspect` and `dlq redrive`.

pub mod attempt;
pub mod dead_letter;
pub mod delivery;
pub mod memory;
pub mod seam;
pub mod sqs;

pub use attempt::ReceiveAttempt;
pub use delivery::{delete_all, send_all, send_in_group_order, Retry};
pub use memory::MemoryQueue;
pub use seam::{
    EntryFailures, Message, Outgoing, Queue, QueueError, BUNDLE_ID_ATTRIBUTE, MAX_SQS_MESSAGE_BYTES,
};
pub use sqs::{billed_requests, RedrivePolicy, SqsQueue, BILLING_CHUNK_BYTES};
