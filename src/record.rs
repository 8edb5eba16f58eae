//! What happened to one record: the stage that stopped it and why, in words a person can act on.

use std::fmt;

/// The pipeline stage a per-record error comes from; it prefixes the reason in the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    /// Reading the row's values (a row too short or too long, an unreadable id).
    Decode,
    /// Business rules on the request's own values.
    Standardize,
    /// A PostgreSQL reference lookup (scanner, issuer).
    EnrichPostgres,
    /// A MongoDB provider document.
    EnrichMongo,
    /// Unit conversion into canonical units.
    Normalize,
}

impl Stage {
    /// The stage name as it appears in output errors and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Decode => "decode",
            Stage::Standardize => "standardize",
            Stage::EnrichPostgres => "enrich.postgres",
            Stage::EnrichMongo => "enrich.mongo",
            Stage::Normalize => "normalize",
        }
    }
}

/// A per-record failure: it lands in the bundle's `errors`, never fails the bundle.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}: {reason}", stage.as_str())]
pub struct RecordError {
    /// The stage that refused the record.
    pub stage: Stage,
    /// What is wrong, naming the key or column involved.
    pub reason: String,
}

impl RecordError {
    /// A record error from a stage and a reason.
    pub fn new(stage: Stage, reason: impl Into<String>) -> Self {
        Self {
            stage,
            reason: reason.into(),
        }
    }

    /// A short reason class for metrics and summaries (`enrich.mongo: unknown note`).
    pub fn kind(&self) -> String {
        reason_kind(&self.to_string())
    }
}

/// The class of a `"stage: reason"` text: the stage and the reason's first words before any
/// quoted key or number (`enrich.postgres: unknown scanner`).
pub fn reason_kind(text: &str) -> String {
    let (stage, reason) = text.split_once(": ").unwrap_or(("", text));
    let head: Vec<&str> = reason
        .split(['\'', '"', ':', ','])
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .filter(|w| !w.chars().any(|c| c.is_ascii_digit()))
        .take(6)
        .collect();
    if stage.is_empty() {
        head.join(" ")
    } else {
        format!("{stage}: {}", head.join(" "))
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_drop_keys_and_keep_the_words() {
        let e = RecordError::new(
            Stage::EnrichMongo,
            "unknown note 'SN-912345': no provider has a scan document for it",
        );
        assert_eq!(e.kind(), "enrich.mongo: unknown note");
        assert_eq!(
            reason_kind("normalize: scanner 'sc-13' reports variance in unit 'micro'"),
            "normalize: scanner"
        );
        assert_eq!(
            reason_kind("standardize: variance must be a finite number, got the text"),
            "standardize: variance must be a finite number"
        );
    }
}
