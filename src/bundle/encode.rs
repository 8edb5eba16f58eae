//! Encoding: answers become message bodies in the configured compression.

use serde::Serialize;

use super::compression::{compress, ContentEncoding};
use super::{OutputBundle, SeedAnswer};

/// The answer to one input bundle, in the format of its request.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// The answer to a v1 bundle.
    Request(OutputBundle),
    /// The answer to a seed-format bundle.
    Seed(SeedAnswer),
}

impl Answer {
    /// The id of the bundle it answers.
    pub fn bundle_id(&self) -> &str {
        match self {
            Answer::Request(b) => &b.bundle_id,
            Answer::Seed(b) => &b.batch_id,
        }
    }

    /// Records it answers: predicted rows and errors.
    pub fn records(&self) -> usize {
        match self {
            Answer::Request(b) => b.rows.len() + b.errors.len(),
            Answer::Seed(b) => b.output.len(),
        }
    }

    /// Records answered with an error.
    pub fn errors(&self) -> usize {
        match self {
            Answer::Request(b) => b.errors.len(),
            Answer::Seed(_) => 0,
        }
    }

    /// The message body in the given encoding.
    pub fn encode(&self, encoding: ContentEncoding) -> String {
        match self {
            Answer::Request(b) => encode(b, encoding),
            Answer::Seed(b) => encode(b, encoding),
        }
    }
}

/// Serializes a value to JSON and compresses it.
pub fn encode<T: Serialize>(value: &T, encoding: ContentEncoding) -> String {
    let json = serde_json::to_vec(value).expect("answers serialize: finite floats, string keys");
    compress(encoding, &json)
}
