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

/// What class of problem stopped a record, with the name it concerns (a column, a lookup, a
/// provider): the part of an error that metrics and summaries count by, without its key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RecordErrorKind {
    /// A key column holds something other than text.
    NotText {
        /// The column.
        column: String,
    },
    /// A key column is empty once standardized.
    Empty {
        /// The column.
        column: String,
    },
    /// A key column holds a control character (NUL, a line break...).
    ControlCharacter {
        /// The column.
        column: String,
    },
    /// A key column holds text that was not valid Unicode (a lone surrogate, U+FFFD).
    NotUnicode {
        /// The column.
        column: String,
    },
    /// A key column is longer than a key may be.
    TooLong {
        /// The column.
        column: String,
    },
    /// A number column holds something other than a finite number.
    NotFinite {
        /// The column.
        column: String,
    },
    /// No reference row has the record's key.
    UnknownKey {
        /// The lookup (`scanner`, `issuer`).
        lookup: String,
    },
    /// A reference value that should be a number is not one.
    BadReferenceValue {
        /// The lookup.
        lookup: String,
    },
    /// A provider document has no field for a feature the spec reads from it.
    NoFieldForFeature {
        /// The provider.
        provider: String,
    },
    /// A provider document's field holds something other than a finite number.
    FieldNotANumber {
        /// The provider.
        provider: String,
    },
    /// A provider document lacks a field the spec reads.
    MissingField {
        /// The provider.
        provider: String,
    },
    /// No provider has a document for the record's note.
    UnknownNote,
    /// The source answered the batch but refused this record's key.
    SourceRefused {
        /// What the key names (`scanner`, `note`...).
        what: String,
    },
    /// The source a key needs was down: the record waits for it (its bundle is held), it is
    /// never answered with this.
    SourceUnavailable {
        /// `postgres` or `mongo`.
        source: &'static str,
    },
    /// A feature is out of range once in canonical units (or once scaled for the model).
    Overflow {
        /// The feature.
        feature: String,
    },
    /// A value comes in a unit the spec does not know.
    UnknownUnit {
        /// What reports in that unit (`scanner`, a column, `lookup <name>`, a provider field).
        of: String,
    },
}

impl RecordErrorKind {
    /// The kind in words, e.g. `unknown scanner`, `variance must be a finite number`.
    pub fn label(&self) -> String {
        match self {
            Self::NotText { column } => format!("{column} must be a text value"),
            Self::Empty { column } => format!("{column} is empty"),
            Self::ControlCharacter { column } => {
                format!("{column} contains the control character")
            }
            Self::NotUnicode { column } => format!("{column} is not valid Unicode"),
            Self::TooLong { column } => format!("{column} is too long"),
            Self::NotFinite { column } => format!("{column} must be a finite number"),
            Self::UnknownKey { lookup } => format!("unknown {lookup}"),
            Self::BadReferenceValue { lookup } => format!("{lookup} value"),
            Self::NoFieldForFeature { provider } => format!("provider {provider} has no field for"),
            Self::FieldNotANumber { provider } => format!("provider {provider} field not a number"),
            Self::MissingField { provider } => format!("provider {provider} document for note"),
            Self::UnknownNote => "unknown note".to_owned(),
            Self::SourceRefused { what } => format!("{what} refused by the source"),
            Self::SourceUnavailable { source } => format!("{source} unavailable"),
            Self::UnknownUnit { of } => of.clone(),
            Self::Overflow { feature } => format!("{feature} overflows"),
        }
    }
}

/// A per-record failure: it lands in the bundle's `errors`, never fails the bundle.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}: {reason}", stage.as_str())]
pub struct RecordError {
    /// The stage that refused the record.
    pub stage: Stage,
    /// The class of problem, for counting.
    pub kind: RecordErrorKind,
    /// What is wrong, naming the key or column involved.
    pub reason: String,
}

impl RecordError {
    /// A record error from a stage, its kind and a reason.
    pub fn new(stage: Stage, kind: RecordErrorKind, reason: impl Into<String>) -> Self {
        Self {
            stage,
            kind,
            reason: reason.into(),
        }
    }

    /// The stage and kind for metrics and summaries (`enrich.mongo: unknown note`).
    pub fn kind(&self) -> String {
        format!("{}: {}", self.stage, self.kind.label())
    }
}

/// The class of a `"stage: reason"` text read back from an answer (the demo's summary, a
/// training report): the stage and the reason's first words before any quoted key or number
/// (`enrich.postgres: unknown scanner`). Errors in hand have [`RecordError::kind`].
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
            RecordErrorKind::UnknownNote,
            "unknown note 'SN-912345': no provider has a scan document for it",
        );
        assert_eq!(e.kind(), "enrich.mongo: unknown note");
        assert_eq!(
            reason_kind(&e.to_string()),
            e.kind(),
            "texts read back agree"
        );
        for e in [
            RecordError::new(
                Stage::EnrichPostgres,
                RecordErrorKind::UnknownKey {
                    lookup: "scanner".into(),
                },
                "unknown scanner 'sc-99': no row in scanners has scanner_id = 'sc-99'",
            ),
            RecordError::new(
                Stage::EnrichMongo,
                RecordErrorKind::MissingField {
                    provider: "aurum".into(),
                },
                "provider aurum document for note 'SN-000007' has no field scan.curtosis",
            ),
            RecordError::new(
                Stage::Normalize,
                RecordErrorKind::UnknownUnit {
                    of: "scanner".into(),
                },
                "scanner 'sc-13' reports variance in unit 'micro', which spec banknote does not know",
            ),
        ] {
            assert_eq!(reason_kind(&e.to_string()), e.kind());
        }
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
