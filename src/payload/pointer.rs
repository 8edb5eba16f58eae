//! The Extended Client's wire format: the pointer body and the size attribute (docs/contract.md
//! section 8), as AWS's Java, Python, Go and .NET clients write and read them.

use serde_json::Value;

use crate::queue::{Message, Outgoing};

/// The pointer class the current clients write.
pub const POINTER_CLASS: &str = "software.amazon.payloadoffloading.PayloadS3Pointer";
/// The pointer class of the first Java client, still read.
pub const LEGACY_POINTER_CLASS: &str = "com.amazon.sqs.javamessaging.MessageS3Pointer";
/// The Number attribute that marks an offloaded message and gives the payload's size in bytes.
pub const SIZE_ATTRIBUTE: &str = "ExtendedPayloadSize";
/// The legacy name of [`SIZE_ATTRIBUTE`], still read.
pub const LEGACY_SIZE_ATTRIBUTE: &str = "SQSLargePayloadSize";

/// Where an offloaded payload is: an S3 bucket and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadPointer {
    /// The bucket (`s3BucketName`).
    pub bucket: String,
    /// The key (`s3Key`).
    pub key: String,
}

impl std::fmt::Display for PayloadPointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

impl PayloadPointer {
    /// The pointer a message carries, if it is an offloaded one: the body is a pointer of
    /// either class, and it is one whether or not the size attribute came with it (a producer
    /// that offloads always sets it; a body of this shape is never a bundle). `Err` when the
    /// message has the size attribute but its body is not a pointer.
    pub fn of(message: &Message) -> Result<Option<Self>, String> {
        let marked = declared_size(message).is_some();
        match Self::parse(&message.body) {
            Some(pointer) => Ok(Some(pointer)),
            None if marked => Err(format!(
                "the message has the {SIZE_ATTRIBUTE} attribute of an Extended Client message, but its body is not a pointer [\"{POINTER_CLASS}\", {{\"s3BucketName\": ..., \"s3Key\": ...}}]"
            )),
            None => Ok(None),
        }
    }

    /// Reads a pointer body: `[class, {"s3BucketName": ..., "s3Key": ...}]` with either class.
    pub fn parse(body: &str) -> Option<Self> {
        // A bundle is a JSON object: only a body opening an array can be a pointer.
        if !body.trim_start().starts_with('[') {
            return None;
        }
        let value: Value = serde_json::from_str(body).ok()?;
        let [class, location] = value.as_array()?.as_slice() else {
            return None;
        };
        if !matches!(class.as_str()?, POINTER_CLASS | LEGACY_POINTER_CLASS) {
            return None;
        }
        let field = |name: &str| {
            location
                .get(name)?
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        Some(Self {
            bucket: field("s3BucketName")?,
            key: field("s3Key")?,
        })
    }

    /// The pointer body, in the current class.
    pub fn body(&self) -> String {
        serde_json::json!([POINTER_CLASS, {"s3BucketName": self.bucket, "s3Key": self.key}])
            .to_string()
    }

    /// `outgoing` sent as a pointer to its body, now stored here: the body becomes the pointer
    /// and the size attribute is added; its other attributes (`content-encoding`, `bundle_id`)
    /// stay, and apply to the payload.
    pub fn into_message(&self, mut outgoing: Outgoing) -> Outgoing {
        let size = outgoing.body.len();
        outgoing.body = self.body();
        outgoing
            .number_attributes
            .push((SIZE_ATTRIBUTE.to_owned(), size.to_string()));
        outgoing
    }
}

/// The payload size the message declares, from either attribute name.
pub fn declared_size(message: &Message) -> Option<&str> {
    message
        .number_attribute(SIZE_ATTRIBUTE)
        .or_else(|| message.number_attribute(LEGACY_SIZE_ATTRIBUTE))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(body: &str, numbers: &[(&str, &str)]) -> Message {
        Message {
            number_attributes: numbers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..Message::received("m-1", body)
        }
    }

    #[test]
    fn both_pointer_classes_and_both_size_attributes_are_read() {
        // As the Python client writes it (json.dumps: spaces after separators).
        let python = r#"["software.amazon.payloadoffloading.PayloadS3Pointer", {"s3BucketName": "b", "s3Key": "k-1"}]"#;
        let legacy = r#"["com.amazon.sqs.javamessaging.MessageS3Pointer",{"s3BucketName":"b","s3Key":"p/k-2"}]"#;
        let m = message(python, &[("ExtendedPayloadSize", "300000")]);
        let p = PayloadPointer::of(&m).unwrap().unwrap();
        assert_eq!((p.bucket.as_str(), p.key.as_str()), ("b", "k-1"));
        assert_eq!(declared_size(&m), Some("300000"));
        let m = message(legacy, &[("SQSLargePayloadSize", "7")]);
        assert_eq!(PayloadPointer::of(&m).unwrap().unwrap().key, "p/k-2");
        assert_eq!(declared_size(&m), Some("7"));
    }

    #[test]
    fn bundles_and_other_arrays_are_not_pointers_and_a_marked_non_pointer_is_an_error() {
        for body in [
            r#"{"bundle_id": "b", "columns": [], "rows": []}"#,
            r#"["some.other.Class", {"s3BucketName": "b", "s3Key": "k"}]"#,
            r#"["software.amazon.payloadoffloading.PayloadS3Pointer", {"s3BucketName": "b"}]"#,
            r#"["software.amazon.payloadoffloading.PayloadS3Pointer", {"s3BucketName": "", "s3Key": "k"}]"#,
            "[1, 2, 3]",
            "not json",
        ] {
            assert_eq!(PayloadPointer::of(&message(body, &[])), Ok(None), "{body}");
        }
        let why = PayloadPointer::of(&message("{}", &[("ExtendedPayloadSize", "9")])).unwrap_err();
        assert!(why.contains("ExtendedPayloadSize"), "{why}");
    }

    #[test]
    fn a_written_pointer_reads_back_and_carries_the_size_as_a_number() {
        let p = PayloadPointer {
            bucket: "payloads".into(),
            key: "answers/1f0c".into(),
        };
        let out = p.into_message(Outgoing {
            body: "x".repeat(2_000_000),
            attributes: vec![("content-encoding".into(), "gzip".into())],
            number_attributes: Vec::new(),
            dedup_id: None,
            group_id: None,
        });
        assert_eq!(
            out.body,
            r#"["software.amazon.payloadoffloading.PayloadS3Pointer",{"s3BucketName":"payloads","s3Key":"answers/1f0c"}]"#
        );
        assert_eq!(
            out.number_attributes,
            [("ExtendedPayloadSize".to_owned(), "2000000".to_owned())]
        );
        assert_eq!(
            out.attributes.len(),
            1,
            "content-encoding applies to the payload"
        );
        assert_eq!(PayloadPointer::parse(&out.body), Some(p));
    }
}
