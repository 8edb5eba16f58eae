//! What a dead-lettered copy carries (docs/contract.md, "What a dead-lettered copy carries"):
//! the attribute names the worker writes on the copies it sends to the input's dead-letter
//! queue, and the copy `dlq redrive` sends back to the input queue without them.

use super::delivery::fifo_id;
use super::seam::{Message, Outgoing};

/// The stage that refused the bundle (`decode`, `prepare`, `answer`, `enrich`).
pub const ERROR_STAGE_ATTRIBUTE: &str = "error-stage";
/// Why, in words a person can act on.
pub const ERROR_REASON_ATTRIBUTE: &str = "error-reason";
/// The SQS message id of the input message.
pub const SOURCE_MESSAGE_ID_ATTRIBUTE: &str = "source-message-id";
/// How many times SQS had delivered the input.
pub const RECEIVE_COUNT_ATTRIBUTE: &str = "receive-count";
/// A cut body: the original body's bytes.
pub const ORIGINAL_SIZE_ATTRIBUTE: &str = "original-size";
/// A cut body: the original body's lowercase hex SHA-256.
pub const ORIGINAL_SHA256_ATTRIBUTE: &str = "original-sha256";
/// A cut body: `true`.
pub const BODY_TRUNCATED_ATTRIBUTE: &str = "body-truncated";

/// Every attribute the worker adds to a dead-letter copy. A redrive drops them, so that a
/// bundle back on the input queue is not taken for a dead-letter copy (and, dead-lettered
/// again, carries only its new reason). `bundle_id` and `content-encoding` are not among them:
/// producers set those too, and the worker needs `content-encoding` to read the body.
pub const DEAD_LETTER_ATTRIBUTES: [&str; 7] = [
    ERROR_STAGE_ATTRIBUTE,
    ERROR_REASON_ATTRIBUTE,
    SOURCE_MESSAGE_ID_ATTRIBUTE,
    RECEIVE_COUNT_ATTRIBUTE,
    ORIGINAL_SIZE_ATTRIBUTE,
    ORIGINAL_SHA256_ATTRIBUTE,
    BODY_TRUNCATED_ATTRIBUTE,
];

/// Why a dead-lettered message cannot be copied back to the input queue unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotRedrivable {
    /// The worker cut the body to fit the dead-letter queue: the original is gone.
    #[error("its body was cut to fit the dead-letter queue (the original had {original_size} bytes, SHA-256 {original_sha256}): have the producer send the original again")]
    BodyTruncated {
        /// The original body's size, as the copy's attribute says.
        original_size: String,
        /// The original body's SHA-256, as the copy's attribute says.
        original_sha256: String,
    },
    /// It carries Binary attributes, which the queue seam does not copy.
    #[error("it carries Binary message attributes ({}), which a redrive cannot copy: move it with the SQS console's or the AWS CLI's redrive (start-message-move-task) instead", .0.join(", "))]
    OtherAttributes(Vec<String>),
    /// With the dead-letter attributes dropped, the copy is still over the size limit.
    #[error("it takes {size} bytes with its attributes, over the limit of {limit} (ML_PIPELINE_MAX_MESSAGE_BYTES)")]
    TooLarge {
        /// Body and kept attributes, as SQS counts them.
        size: usize,
        /// The limit.
        limit: usize,
    },
}

/// The message `dlq redrive` sends back to the input queue for a dead-lettered one: the same
/// body, String and Number attributes (an Extended Client pointer stays one), less [`DEAD_LETTER_ATTRIBUTES`]. On a FIFO input it keeps the
/// message's group (its message id when it has none) and takes a deduplication id derived from
/// the dead-letter message id, so a retried redrive of the same message is not sent twice.
pub fn redrive_copy(m: &Message, max_message_bytes: usize) -> Result<Outgoing, NotRedrivable> {
    if m.attribute(BODY_TRUNCATED_ATTRIBUTE) == Some("true") {
        let attribute = |name| m.attribute(name).unwrap_or("unknown").to_owned();
        return Err(NotRedrivable::BodyTruncated {
            original_size: attribute(ORIGINAL_SIZE_ATTRIBUTE),
            original_sha256: attribute(ORIGINAL_SHA256_ATTRIBUTE),
        });
    }
    if !m.other_attributes.is_empty() {
        return Err(NotRedrivable::OtherAttributes(m.other_attributes.clone()));
    }
    let copy = Outgoing {
        body: m.body.clone(),
        attributes: kept_attributes(&m.attributes),
        number_attributes: m.number_attributes.clone(),
        dedup_id: Some(fifo_id(&format!("redrive-{}", m.message_id))),
        group_id: Some(m.group_id.clone().unwrap_or_else(|| m.message_id.clone())),
    };
    match copy.size() {
        size if size > max_message_bytes => Err(NotRedrivable::TooLarge {
            size,
            limit: max_message_bytes,
        }),
        _ => Ok(copy),
    }
}

/// The attributes a redriven message keeps: all but the worker's dead-letter attributes.
pub fn kept_attributes(attributes: &[(String, String)]) -> Vec<(String, String)> {
    attributes
        .iter()
        .filter(|(name, _)| !DEAD_LETTER_ATTRIBUTES.contains(&name.as_str()))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dead_lettered(attributes: &[(&str, &str)]) -> Message {
        Message {
            content_encoding: Some("gzip".into()),
            sent_timestamp_ms: Some(1),
            receive_count: 2,
            attributes: attributes
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..Message::received("5fa2c1de-0000-4000-8000-000000000001", "H4sIAAAA")
        }
    }

    #[test]
    fn a_redriven_copy_keeps_body_and_producer_attributes_and_drops_the_dead_letter_ones() {
        let m = dead_lettered(&[
            ("bundle_id", "b-1"),
            ("content-encoding", "gzip"),
            ("error-reason", "not JSON"),
            ("error-stage", "decode"),
            ("receive-count", "1"),
            ("source-message-id", "m-0"),
            ("trace-id", "t-9"),
        ]);
        let copy = redrive_copy(&m, 1 << 20).unwrap();
        assert_eq!(copy.body, m.body);
        let names: Vec<&str> = copy.attributes.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["bundle_id", "content-encoding", "trace-id"]);
        assert_eq!(
            copy.dedup_id.as_deref(),
            Some("redrive-5fa2c1de-0000-4000-8000-000000000001")
        );
        assert_eq!(copy.group_id.as_deref(), Some(m.message_id.as_str()));
        let mut fifo = m.clone();
        fifo.group_id = Some("g-3".into());
        assert_eq!(
            redrive_copy(&fifo, 1 << 20).unwrap().group_id.as_deref(),
            Some("g-3"),
            "a FIFO message keeps its group"
        );
    }

    #[test]
    fn a_redriven_pointer_message_stays_a_pointer_with_its_number_attribute() {
        let mut m = dead_lettered(&[("error-stage", "decode")]);
        m.body = r#"["software.amazon.payloadoffloading.PayloadS3Pointer",{"s3BucketName":"b","s3Key":"k"}]"#.into();
        m.number_attributes = vec![("ExtendedPayloadSize".into(), "2000000".into())];
        let copy = redrive_copy(&m, 1 << 20).unwrap();
        assert_eq!(copy.body, m.body);
        assert_eq!(copy.number_attributes, m.number_attributes);
        assert!(copy.attributes.is_empty());
    }

    #[test]
    fn a_cut_body_a_typed_attribute_or_an_oversized_copy_is_not_redriven() {
        let cut = dead_lettered(&[
            ("body-truncated", "true"),
            ("original-size", "2000000"),
            ("original-sha256", "ab12"),
        ]);
        let why = redrive_copy(&cut, 1 << 20).unwrap_err().to_string();
        assert!(why.contains("2000000") && why.contains("ab12"), "{why}");
        let mut typed = dead_lettered(&[]);
        typed.other_attributes = vec!["signature".into()];
        let why = redrive_copy(&typed, 1 << 20).unwrap_err().to_string();
        assert!(why.contains("signature") && why.contains("Binary"), "{why}");
        let why = redrive_copy(&dead_lettered(&[("k", "v")]), 8)
            .unwrap_err()
            .to_string();
        assert!(why.contains("ML_PIPELINE_MAX_MESSAGE_BYTES"), "{why}");
    }
}
