//! Large payloads through S3, in the SQS Extended Client's format (docs/contract.md section 8),
//! so that the Java, Python, Go and .NET clients' producers and consumers work unchanged.
//!
//! - [`pointer`]: the wire format: the pointer body and the `ExtendedPayloadSize` attribute.
//! - [`store`]: the seam (get, put, delete one object); [`s3`] over `aws-sdk-s3`, [`memory`]
//!   for unit tests.
//!
//! [`Payloads`] is what the worker holds: it reads the payload of each pointer message it
//! receives (bounded by the body limit), writes answers too large for one message and sends
//! pointers to them, and, when configured, deletes an input's payload once it is answered.

pub mod memory;
pub mod pointer;
pub mod s3;
pub mod store;

use std::sync::Arc;

use crate::queue::{Message, Outgoing};
use pointer::PayloadPointer;
use store::{PayloadError, PayloadStore};

/// How the worker writes and deletes payloads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PayloadConfig {
    /// The bucket answers too large for one message are written to; None refuses such answers
    /// (dead-lettered with their size), as before large payloads were supported.
    pub bucket: Option<String>,
    /// The key prefix of written payloads (`answers/`), before a random UUID.
    pub prefix: String,
    /// An answer whose message is larger than this in every encoding, in bytes, is written to S3;
    /// never above the message size limit. None: the message size limit.
    pub threshold_bytes: Option<usize>,
    /// Delete an input's payload once its answer is accepted. Off by default: with SNS fan-out
    /// several queues' messages point to one object.
    pub delete_inputs: bool,
}

/// The payload store and how it is used.
#[derive(Debug, Clone)]
pub struct Payloads {
    /// Where payloads are read, written and deleted.
    pub store: Arc<dyn PayloadStore>,
    /// How.
    pub config: PayloadConfig,
}

/// What a received message's payload is: `None` for an ordinary message, else the offloaded
/// body as text, or why it could not be read.
pub type Fetched = Option<Result<String, PayloadError>>;

impl Payloads {
    /// A store used as configured.
    pub fn new(store: Arc<dyn PayloadStore>, config: PayloadConfig) -> Self {
        Self { store, config }
    }

    /// The largest answer message sent inline, in bytes, under the message size limit.
    pub fn inline_limit(&self, max_message_bytes: usize) -> usize {
        self.config
            .threshold_bytes
            .map_or(max_message_bytes, |t| t.min(max_message_bytes))
    }

    /// Writes `outgoing`'s body under the configured bucket and prefix and returns the pointer
    /// message to send instead; None when no bucket is configured.
    pub async fn offload(&self, outgoing: Outgoing) -> Option<Result<Outgoing, PayloadError>> {
        let bucket = self.config.bucket.clone()?;
        let pointer = PayloadPointer {
            bucket,
            key: format!("{}{}", self.config.prefix, uuid::Uuid::new_v4()),
        };
        let written = self.store.put(&pointer, outgoing.body.clone()).await;
        Some(written.map(|()| pointer.into_message(outgoing)))
    }

    /// Deletes the payloads of answered inputs, when configured; a failure is logged, not
    /// retried (the object is only left behind, for the bucket's lifecycle rule).
    pub async fn delete_answered<'a>(&self, messages: impl IntoIterator<Item = &'a Message>) {
        if !self.config.delete_inputs {
            return;
        }
        let pointers: Vec<PayloadPointer> = messages
            .into_iter()
            .filter_map(|m| PayloadPointer::of(m).ok().flatten())
            .collect();
        let deletes = pointers.iter().map(|p| self.store.delete(p));
        for result in futures::future::join_all(deletes).await {
            if let Err(e) = result {
                tracing::warn!(error = %crate::text::error_chain(&e), "answered input's payload not deleted");
            }
        }
    }
}

/// Reads the payload of each pointer message among `messages`, at once, each within
/// `max_bytes`; `payloads` None (a worker without a store) refuses pointers.
pub async fn fetch_all(
    payloads: Option<&Payloads>,
    messages: &[Message],
    max_bytes: usize,
) -> Vec<Fetched> {
    let fetches = messages.iter().map(|m| async move {
        let pointer = match PayloadPointer::of(m) {
            Ok(Some(pointer)) => pointer,
            Ok(None) => return None,
            Err(why) => return Some(Err(PayloadError::Malformed(why))),
        };
        let Some(payloads) = payloads else {
            return Some(Err(PayloadError::NotConfigured(pointer)));
        };
        Some(payloads.store.get(&pointer, max_bytes as u64).await)
    });
    futures::future::join_all(fetches).await
}

#[cfg(test)]
mod tests {
    use super::memory::MemoryPayloads;
    use super::*;

    fn message(body: &str) -> Message {
        Message {
            number_attributes: vec![(pointer::SIZE_ATTRIBUTE.into(), "5".into())],
            ..Message::received("m-1", body)
        }
    }

    fn at(key: &str) -> PayloadPointer {
        PayloadPointer {
            bucket: "in".into(),
            key: key.into(),
        }
    }

    #[tokio::test]
    async fn payloads_are_read_within_the_body_limit_and_a_missing_one_is_not_found() {
        let memory = MemoryPayloads::default();
        memory.insert(&at("small"), "{\"a\":1}");
        memory.insert(&at("big"), "x".repeat(100));
        let payloads = Payloads::new(Arc::new(memory), PayloadConfig::default());
        let messages = [
            message(&at("small").body()),
            message(&at("big").body()),
            message(&at("gone").body()),
            Message {
                number_attributes: Vec::new(),
                ..message("{\"bundle_id\": \"b\"}")
            },
        ];
        let fetched = fetch_all(Some(&payloads), &messages, 50).await;
        assert_eq!(fetched[0].as_ref().unwrap().as_ref().unwrap(), "{\"a\":1}");
        let too_large = fetched[1].as_ref().unwrap().as_ref().unwrap_err();
        assert!(matches!(
            too_large,
            PayloadError::TooLarge {
                size: 100,
                limit: 50,
                ..
            }
        ));
        let gone = fetched[2].as_ref().unwrap().as_ref().unwrap_err();
        assert!(matches!(gone, PayloadError::NotFound(_)) && !gone.is_retryable());
        assert!(gone.to_string().contains("s3://in/gone"), "{gone}");
        assert!(fetched[3].is_none(), "an ordinary message has no payload");
        let without = fetch_all(None, &messages[..1], 50).await;
        assert!(matches!(
            without[0],
            Some(Err(PayloadError::NotConfigured(_)))
        ));
    }

    #[tokio::test]
    async fn an_offloaded_answer_is_a_pointer_to_its_body_under_the_prefix() {
        let memory = MemoryPayloads::default();
        let config = PayloadConfig {
            bucket: Some("out".into()),
            prefix: "answers/".into(),
            threshold_bytes: Some(10_000_000),
            delete_inputs: true,
        };
        let payloads = Payloads::new(Arc::new(memory.clone()), config);
        assert_eq!(
            payloads.inline_limit(1 << 20),
            1 << 20,
            "never above the limit"
        );
        let outgoing = Outgoing {
            body: "answer".repeat(10),
            attributes: Vec::new(),
            number_attributes: Vec::new(),
            dedup_id: Some("b".into()),
            group_id: None,
        };
        let sent = payloads.offload(outgoing).await.unwrap().unwrap();
        let pointer = PayloadPointer::parse(&sent.body).unwrap();
        assert!(pointer.key.starts_with("answers/") && pointer.bucket == "out");
        assert_eq!(memory.object(&pointer).unwrap(), "answer".repeat(10));
        assert_eq!(sent.dedup_id.as_deref(), Some("b"));
        // Deleting after the answer: the pointer message's object goes.
        let input = message(&sent.body);
        payloads.delete_answered([&input]).await;
        assert!(memory.is_empty());
        let off = Payloads::new(Arc::new(memory), PayloadConfig::default());
        assert!(
            off.offload(sent).await.is_none(),
            "no bucket: not offloaded"
        );
    }
}
