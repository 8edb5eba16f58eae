//! The receive attempt id of one poller (SQS's `ReceiveRequestAttemptId`, FIFO queues only): a
//! new id for each receive that got an answer, the same id again after a receive that failed on
//! the way. A receive whose answer was lost may still have taken messages; asked again with its
//! id, SQS returns those same messages instead of leaving them in flight, and their message
//! groups blocked, until their visibility timeout runs out.

use super::seam::{Message, QueueError};

/// One poller's current receive attempt id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiveAttempt {
    id: String,
}

impl Default for ReceiveAttempt {
    fn default() -> Self {
        Self::new()
    }
}

impl ReceiveAttempt {
    /// A fresh attempt.
    pub fn new() -> Self {
        Self {
            id: uuid::Uuid::new_v4().to_string(),
        }
    }

    /// The id to send with the next receive.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Takes note of a receive's outcome: an answer (messages or none) or a refusal ends the
    /// attempt; a failure on the way (no answer, throttling, a server error) keeps it, so the
    /// retry asks for the same messages.
    pub fn after(&mut self, result: &Result<Vec<Message>, QueueError>) {
        let retry_same = matches!(result, Err(e) if e.retryable);
        if !retry_same {
            *self = Self::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(retryable: bool) -> Result<Vec<Message>, QueueError> {
        Err(QueueError {
            op: "ReceiveMessage",
            queue: "q.fifo".into(),
            source: "x".into(),
            retryable,
        })
    }

    #[test]
    fn an_attempt_is_kept_only_across_failures_on_the_way() {
        let mut attempt = ReceiveAttempt::new();
        let first = attempt.id().to_owned();
        attempt.after(&failure(true));
        assert_eq!(attempt.id(), first, "a lost answer is asked for again");
        attempt.after(&Ok(Vec::new()));
        let second = attempt.id().to_owned();
        assert_ne!(second, first, "an answer ends the attempt");
        attempt.after(&failure(false));
        assert_ne!(attempt.id(), second, "a refusal ends it too");
    }
}
