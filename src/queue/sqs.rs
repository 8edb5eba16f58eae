//! The queue seam over `aws-sdk-sqs`. Every call is bounded by the SDK's operation timeout (set
//! where the client is built, in `startup`).

use std::collections::HashMap;

use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
    MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName,
    SendMessageBatchRequestEntry,
};
use aws_sdk_sqs::Client;

use super::seam::{EntryFailures, Message, Outgoing, Queue, QueueError};
use crate::bundle::compression::CONTENT_ENCODING_ATTRIBUTE;
use crate::instruments;

/// SQS bills each started 64 KiB chunk of a request's payload as one request
/// (<https://aws.amazon.com/sqs/pricing/>).
pub const BILLING_CHUNK_BYTES: usize = 64 * 1024;

/// The requests SQS bills for one call whose messages (bodies and attributes) come to
/// `payload_bytes`: one per started 64 KiB chunk, and one for a call that carries none.
pub fn billed_requests(payload_bytes: usize) -> u64 {
    payload_bytes.div_ceil(BILLING_CHUNK_BYTES).max(1) as u64
}

/// What a queue's RedrivePolicy says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedrivePolicy {
    /// The name of the dead-letter queue SQS moves messages to.
    pub dead_letter_queue: Option<String>,
    /// After how many receives SQS moves a message there.
    pub max_receive_count: Option<u32>,
}

/// One SQS queue.
#[derive(Debug, Clone)]
pub struct SqsQueue {
    client: Client,
    url: String,
}

impl SqsQueue {
    /// A queue by URL, or by name (resolved with GetQueueUrl).
    pub async fn resolve(client: Client, url_or_name: &str) -> Result<Self, QueueError> {
        let url = if url_or_name.contains("://") {
            url_or_name.to_owned()
        } else {
            instruments::sqs_request("GetQueueUrl", 1);
            client
                .get_queue_url()
                .queue_name(url_or_name)
                .send()
                .await
                .map_err(|e| error("GetQueueUrl", url_or_name, e))?
                .queue_url
                .unwrap_or_default()
        };
        Ok(Self { client, url })
    }

    /// The queue URL (also [`Queue::url`]).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A queue attribute (VisibilityTimeout, RedrivePolicy...).
    pub async fn attribute(&self, name: QueueAttributeName) -> Result<Option<String>, QueueError> {
        instruments::sqs_request("GetQueueAttributes", 1);
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(name.clone())
            .send()
            .await
            .map_err(|e| error("GetQueueAttributes", &self.url, e))?;
        Ok(out.attributes.and_then(|mut a| a.remove(&name)))
    }

    /// Receives up to `max` messages with every message attribute, hidden for `visibility_secs`
    /// (None: the queue's own visibility timeout).
    async fn receive_with(
        &self,
        max: i32,
        wait_secs: i32,
        visibility_secs: Option<i32>,
        attempt_id: Option<&str>,
    ) -> Result<Vec<Message>, QueueError> {
        // SQS refuses the attempt id on a standard queue (and some emulators refuse it there).
        let attempt_id = attempt_id.filter(|_| self.is_fifo()).map(str::to_owned);
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(max)
            .wait_time_seconds(wait_secs)
            .set_visibility_timeout(visibility_secs)
            .set_receive_request_attempt_id(attempt_id)
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
            .send()
            .await;
        // Billed by what came back; a failed call is one request.
        let payload = out
            .as_ref()
            .map_or(0, |o| o.messages().iter().map(received_size).sum::<usize>());
        instruments::sqs_request("ReceiveMessage", billed_requests(payload));
        let out = out.map_err(|e| error("ReceiveMessage", &self.url, e))?;
        Ok(out
            .messages
            .unwrap_or_default()
            .into_iter()
            .map(received)
            .collect())
    }

    /// The queue's RedrivePolicy, read in one call (empty when it has none).
    pub async fn redrive_policy(&self) -> Result<RedrivePolicy, QueueError> {
        let policy = self.attribute(QueueAttributeName::RedrivePolicy).await?;
        let policy: serde_json::Value = policy
            .and_then(|p| serde_json::from_str(&p).ok())
            .unwrap_or_default();
        Ok(RedrivePolicy {
            dead_letter_queue: policy["deadLetterTargetArn"]
                .as_str()
                .and_then(|arn| arn.rsplit(':').next())
                .map(str::to_owned),
            max_receive_count: match &policy["maxReceiveCount"] {
                serde_json::Value::Number(n) => n.as_u64(),
                serde_json::Value::String(s) => s.parse().ok(),
                _ => None,
            }
            .and_then(|n| u32::try_from(n).ok()),
        })
    }
}

impl Queue for SqsQueue {
    fn url(&self) -> &str {
        SqsQueue::url(self)
    }

    async fn receive(&self, max: i32, wait_secs: i32) -> Result<Vec<Message>, QueueError> {
        self.receive_with(max, wait_secs, None, None).await
    }

    async fn receive_attempt(
        &self,
        max: i32,
        wait_secs: i32,
        attempt_id: &str,
    ) -> Result<Vec<Message>, QueueError> {
        self.receive_with(max, wait_secs, None, Some(attempt_id))
            .await
    }

    async fn receive_hidden_for(
        &self,
        max: i32,
        wait_secs: i32,
        visibility_secs: i32,
    ) -> Result<Vec<Message>, QueueError> {
        self.receive_with(max, wait_secs, Some(visibility_secs), None)
            .await
    }

    async fn send_batch(&self, messages: &[Outgoing]) -> Result<EntryFailures, QueueError> {
        let entries = messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let attrs: HashMap<String, MessageAttributeValue> = m
                    .attributes
                    .iter()
                    // SQS refuses empty attribute values; an empty value says nothing anyway.
                    .filter(|(_, v)| !v.is_empty())
                    .map(|(k, v)| (k.clone(), string_attribute(v)))
                    .chain(
                        m.number_attributes
                            .iter()
                            .map(|(k, v)| (k.clone(), number_attribute(v))),
                    )
                    .collect();
                SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(&m.body)
                    .set_message_attributes((!attrs.is_empty()).then_some(attrs))
                    .set_message_deduplication_id(m.dedup_id.clone())
                    .set_message_group_id(m.group_id.clone())
                    .build()
                    .expect("id and body are set")
            })
            .collect();
        let payload = messages.iter().map(Outgoing::size).sum();
        instruments::sqs_request("SendMessageBatch", billed_requests(payload));
        let out = self
            .client
            .send_message_batch()
            .queue_url(&self.url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| error("SendMessageBatch", &self.url, e))?;
        Ok(failed_entries(
            out.failed().iter().map(|f| (f.id(), f.code(), f.message())),
        ))
    }

    async fn delete_batch(&self, receipts: &[&str]) -> Result<EntryFailures, QueueError> {
        let entries = receipts
            .iter()
            .enumerate()
            .map(|(i, r)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(*r)
                    .build()
                    .expect("set")
            })
            .collect();
        instruments::sqs_request("DeleteMessageBatch", 1);
        let out = self
            .client
            .delete_message_batch()
            .queue_url(&self.url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| error("DeleteMessageBatch", &self.url, e))?;
        Ok(failed_entries(
            out.failed().iter().map(|f| (f.id(), f.code(), f.message())),
        ))
    }

    async fn change_visibility(
        &self,
        receipts: &[&str],
        seconds: i32,
    ) -> Result<EntryFailures, QueueError> {
        let entries = receipts
            .iter()
            .enumerate()
            .map(|(i, r)| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(*r)
                    .visibility_timeout(seconds)
                    .build()
                    .expect("set")
            })
            .collect();
        instruments::sqs_request("ChangeMessageVisibilityBatch", 1);
        let out = self
            .client
            .change_message_visibility_batch()
            .queue_url(&self.url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| error("ChangeMessageVisibilityBatch", &self.url, e))?;
        Ok(failed_entries(
            out.failed().iter().map(|f| (f.id(), f.code(), f.message())),
        ))
    }

    async fn depth(&self) -> Result<Option<u64>, QueueError> {
        let visible = self
            .attribute(QueueAttributeName::ApproximateNumberOfMessages)
            .await?;
        Ok(visible.and_then(|v| v.parse().ok()))
    }
}

/// A received SQS message on the seam: String and Number attributes kept, the names of the
/// Binary ones noted.
fn received(m: aws_sdk_sqs::types::Message) -> Message {
    let system = m.attributes.unwrap_or_default();
    let number = |k: MessageSystemAttributeName| system.get(&k).and_then(|v| v.parse().ok());
    let mut attributes = Vec::new();
    let mut number_attributes = Vec::new();
    let mut other_attributes = Vec::new();
    for (name, value) in m.message_attributes.unwrap_or_default() {
        match value.string_value {
            Some(v) if value.data_type.starts_with("String") => attributes.push((name, v)),
            Some(v) if value.data_type.starts_with("Number") => number_attributes.push((name, v)),
            _ => other_attributes.push(name),
        }
    }
    attributes.sort();
    number_attributes.sort();
    other_attributes.sort();
    Message {
        message_id: m.message_id.unwrap_or_default(),
        receipt_handle: m.receipt_handle.unwrap_or_default(),
        body: m.body.unwrap_or_default(),
        content_encoding: attributes
            .iter()
            .find(|(k, _)| k == CONTENT_ENCODING_ATTRIBUTE)
            .map(|(_, v)| v.clone()),
        sent_timestamp_ms: number(MessageSystemAttributeName::SentTimestamp),
        receive_count: number(MessageSystemAttributeName::ApproximateReceiveCount).unwrap_or(1)
            as u32,
        group_id: system
            .get(&MessageSystemAttributeName::MessageGroupId)
            .cloned(),
        attributes,
        number_attributes,
        other_attributes,
    }
}

/// A received message's size as SQS counts it: the body, and each attribute's name, data type
/// and value.
fn received_size(m: &aws_sdk_sqs::types::Message) -> usize {
    let attributes = m.message_attributes.iter().flatten().map(|(name, value)| {
        name.len()
            + value.data_type.len()
            + value.string_value.as_ref().map_or(0, String::len)
            + value.binary_value.as_ref().map_or(0, |b| b.as_ref().len())
    });
    m.body.as_ref().map_or(0, String::len) + attributes.sum::<usize>()
}

/// A string attribute; characters SQS refuses (control characters) become U+FFFD, so an
/// attribute echoing bad input can never make the whole send fail.
fn string_attribute(value: &str) -> MessageAttributeValue {
    let allowed = |c: char| matches!(c, '\t' | '\n' | '\r' | ' '..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..);
    let clean: String = value
        .chars()
        .map(|c| if allowed(c) { c } else { '\u{FFFD}' })
        .collect();
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(clean)
        .build()
        .expect("data type is set")
}

/// A Number attribute (a custom type label such as `Number.int` is not kept).
fn number_attribute(value: &str) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type("Number")
        .string_value(value)
        .build()
        .expect("data type is set")
}

fn failed_entries<'a>(
    failed: impl Iterator<Item = (&'a str, &'a str, Option<&'a str>)>,
) -> Vec<(usize, String)> {
    failed
        .filter_map(|(id, code, message)| {
            Some((
                id.parse().ok()?,
                format!("{code}: {}", message.unwrap_or_default()),
            ))
        })
        .collect()
}

fn error<E>(op: &'static str, queue: &str, e: SdkError<E>) -> QueueError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    QueueError {
        op,
        queue: queue.to_owned(),
        retryable: is_retryable(&e),
        source: Box::new(e),
    }
}

/// Whether a failed call may be made again as it was: no answer came (the connection failed,
/// the call timed out, the answer could not be read), or SQS answered that it was throttling
/// or failing itself. A refusal of the request (a missing queue, a bad parameter) is not.
fn is_retryable<E: ProvideErrorMetadata>(e: &SdkError<E>) -> bool {
    match e {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(service) => {
            let throttled = service.err().code().is_some_and(|code| {
                code.contains("Throttl") || code.contains("Unavailable") || code == "InternalError"
            });
            throttled || service.raw().status().is_server_error()
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_sqs::config::http::HttpResponse;
    use aws_sdk_sqs::error::ErrorMetadata;
    use aws_sdk_sqs::operation::receive_message::ReceiveMessageError;

    fn answered(status: u16, code: &str) -> SdkError<ReceiveMessageError> {
        let err = ReceiveMessageError::generic(ErrorMetadata::builder().code(code).build());
        let raw = HttpResponse::new(status.try_into().unwrap(), "".into());
        SdkError::service_error(err, raw)
    }

    #[test]
    fn each_started_64_kib_chunk_is_billed_as_one_request() {
        assert_eq!(billed_requests(0), 1, "an empty receive is still billed");
        assert_eq!(billed_requests(1), 1);
        assert_eq!(billed_requests(64 * 1024), 1);
        assert_eq!(billed_requests(64 * 1024 + 1), 2);
        assert_eq!(billed_requests(256 * 1024), 4);
        assert_eq!(billed_requests(1024 * 1024), 16);
    }

    #[test]
    fn a_received_size_counts_the_body_and_every_attribute() {
        let m = aws_sdk_sqs::types::Message::builder()
            .body("0123456789")
            .message_attributes("bundle_id", string_attribute("b-1"))
            .message_attributes("ExtendedPayloadSize", number_attribute("42"))
            .build();
        let expected = 10 + ("bundle_id".len() + 6 + 3) + ("ExtendedPayloadSize".len() + 6 + 2);
        assert_eq!(received_size(&m), expected);
        assert_eq!(
            received_size(&aws_sdk_sqs::types::Message::builder().build()),
            0
        );
    }

    #[test]
    fn a_failure_on_the_way_is_retryable_and_a_refusal_is_not() {
        assert!(is_retryable(
            &SdkError::<ReceiveMessageError>::timeout_error("slow")
        ));
        assert!(is_retryable(&answered(500, "InternalError")));
        assert!(is_retryable(&answered(400, "ThrottlingException")));
        assert!(is_retryable(&answered(503, "ServiceUnavailable")));
        // SQS refuses an attempt id it no longer honours: a new attempt, not the same again.
        assert!(!is_retryable(&answered(400, "InvalidParameterValue")));
        assert!(!is_retryable(&answered(400, "QueueDoesNotExist")));
        let error = error("ReceiveMessage", "q.fifo", answered(500, "InternalError"));
        assert!(error.retryable);
    }
}
