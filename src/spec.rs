//! The pipeline spec: declarative data that says which request columns a model needs, the
//! ordered feature list, where each feature comes from (its *road*), the unit conversions and the
//! standardization rules.
//!
//! The same spec drives training and inference, and it travels inside the model artifact, so a
//! model always meets its features exactly as it was trained on them. Adding a feature from an
//! existing source is a spec change and a retrain, never a code change.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A complete, declarative description of one model's preprocessing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    /// The model name this spec belongs to (e.g. `banknote`).
    pub name: String,
    /// The request column that identifies a record in the output (`id`).
    pub id_column: String,
    /// Standardization rules applied to free-text request columns before lookups.
    #[serde(default)]
    pub standardize: Vec<StandardizeRule>,
    /// Unit code -> factor that converts a value in that unit to canonical units.
    pub units: BTreeMap<String, f64>,
    /// Keyed lookups in PostgreSQL reference tables, all fetched in one round trip per batch.
    #[serde(default)]
    pub lookups: Vec<LookupSpec>,
    /// The third-party provider documents in MongoDB, fetched with one `$in` per batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub documents: Option<DocumentSpec>,
    /// The model's features, in matrix column order.
    pub features: Vec<FeatureSpec>,
    /// A canonical feature vector used as a smoke test when a model is loaded.
    pub example_features: Vec<f64>,
}

/// A rule set that turns a free-text column into a lookup key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StandardizeRule {
    /// The request column to standardize.
    pub column: String,
    /// The text rules applied in order.
    pub rules: Vec<TextRule>,
}

/// One text-folding business rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TextRule {
    /// Unicode NFKC normalization (full-width letters, ligatures, compatibility forms).
    Nfkc,
    /// Unicode lowercase.
    Lowercase,
    /// Remove leading and trailing whitespace.
    Trim,
    /// Replace every run of whitespace by one space.
    CollapseWhitespace,
    /// Drop `.`, `,` and `'` (e.g. "Federal Reserve Bank." and "Fed. Reserve").
    StripPunctuation,
}

/// A lookup of one value per key in a PostgreSQL reference table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LookupSpec {
    /// The lookup's name, used by features and by error messages.
    pub name: String,
    /// The reference table (a plain SQL identifier).
    pub table: String,
    /// The table's key column (a plain SQL identifier).
    pub key_column: String,
    /// The column whose value the lookup returns (a plain SQL identifier).
    pub value_column: String,
    /// The request column whose (standardized) value is the key.
    pub key_from: String,
    /// Output column carrying the looked-up value, if the value is reported (e.g. `issuer`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_column: Option<String>,
}

/// Where provider documents live and how a record finds its document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocumentSpec {
    /// The MongoDB collection.
    pub collection: String,
    /// The document field holding the record key (e.g. `note_id`).
    pub key_field: String,
    /// The request column whose value is the key (e.g. `note`).
    pub key_from: String,
    /// The document field naming the provider.
    pub provider_field: String,
    /// Providers in order of preference: the first one with a document for a key wins.
    pub providers: Vec<String>,
}

/// One model feature and its road.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureSpec {
    /// The feature's canonical name (`variance`).
    pub name: String,
    /// Where the value comes from and how it is converted.
    pub road: Road,
}

impl FeatureSpec {
    /// The agreement tolerance of a feature (canonical units): the spec's, or the default;
    /// `None` for a feature that is not read from provider documents.
    pub fn agreement_tolerance(&self) -> Option<f64> {
        match &self.road {
            Road::Document {
                agreement_tolerance,
                ..
            } => Some(agreement_tolerance.unwrap_or(DEFAULT_AGREEMENT_TOLERANCE)),
            _ => None,
        }
    }
}

/// The road a feature takes into the matrix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Road {
    /// A number in the request row, in a unit given by a lookup (the scanner's unit) or fixed.
    Request {
        /// The request column.
        column: String,
        /// How the value's unit is known.
        unit: UnitSource,
    },
    /// A number read from a PostgreSQL lookup's value, in a fixed unit.
    Lookup {
        /// The lookup's name.
        lookup: String,
        /// The unit the stored value is in.
        unit: String,
    },
    /// A number in the provider document; each provider names its own field and unit.
    Document {
        /// Provider name -> its field.
        providers: BTreeMap<String, ProviderField>,
        /// Two providers agree on this feature when their canonical values differ by at most
        /// this much (`providers report`); [`DEFAULT_AGREEMENT_TOLERANCE`] when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        agreement_tolerance: Option<f64>,
    },
}

/// The agreement tolerance of a document feature whose spec names none, in canonical units.
pub const DEFAULT_AGREEMENT_TOLERANCE: f64 = 0.01;

/// How the unit of a request value is known.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum UnitSource {
    /// Always this unit.
    Fixed(String),
    /// The value of this lookup (e.g. the scanner's unit) names the unit.
    FromLookup(String),
}

/// A provider's field for one feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderField {
    /// Dotted path inside the provider's document (`scan.kurtosis`).
    pub path: String,
    /// The unit the provider reports the field in.
    pub unit: String,
}

/// A spec that cannot be used, with what is wrong in it.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SpecError {
    /// A name that becomes part of SQL is not a plain identifier.
    #[error("spec {spec}: '{name}' is not a plain SQL identifier (letters, digits, '_')")]
    BadIdentifier { spec: String, name: String },
    /// A feature refers to a lookup, unit or provider the spec does not declare.
    #[error("spec {spec}: feature '{feature}' refers to unknown {what} '{name}'")]
    UnknownReference {
        spec: String,
        feature: String,
        what: &'static str,
        name: String,
    },
    /// Two features share a name, or the spec has none.
    #[error("spec {spec}: {reason}")]
    Invalid { spec: String, reason: String },
}

impl PipelineSpec {
    /// The spec of the banknote fixture domain (docs/contract.md section 5).
    pub fn banknote() -> Self {
        serde_json::from_str(include_str!("banknote_spec.json")).expect("built-in spec parses")
    }

    /// Every document field path the spec's features read, sorted, each once.
    pub fn document_paths(&self) -> Vec<String> {
        let mut paths: Vec<String> = self
            .features
            .iter()
            .filter_map(|f| match &f.road {
                Road::Document { providers, .. } => {
                    Some(providers.values().map(|p| p.path.clone()))
                }
                _ => None,
            })
            .flatten()
            .collect();
        paths.sort();
        paths.dedup();
        paths
    }

    /// Feature names in matrix column order.
    pub fn feature_names(&self) -> Vec<&str> {
        self.features.iter().map(|f| f.name.as_str()).collect()
    }

    /// The request columns this spec reads: the id, lookup keys, document key and request features.
    pub fn request_columns(&self) -> Vec<&str> {
        let mut cols = vec![self.id_column.as_str()];
        let lookups = self.lookups.iter().map(|l| l.key_from.as_str());
        let documents = self.documents.iter().map(|d| d.key_from.as_str());
        let features = self.features.iter().filter_map(|f| match &f.road {
            Road::Request { column, .. } => Some(column.as_str()),
            _ => None,
        });
        for c in lookups.chain(documents).chain(features) {
            if !cols.contains(&c) {
                cols.push(c);
            }
        }
        cols
    }

    /// A copy of the spec keeping only the named features, in the given order.
    pub fn with_features(&self, names: &[&str]) -> Result<Self, SpecError> {
        let mut spec = self.clone();
        let mut picked = Vec::with_capacity(names.len());
        let mut example = Vec::with_capacity(names.len());
        for name in names {
            let idx = self
                .features
                .iter()
                .position(|f| f.name == *name)
                .ok_or_else(|| SpecError::Invalid {
                    spec: self.name.clone(),
                    reason: format!("no feature named '{name}'"),
                })?;
            picked.push(self.features[idx].clone());
            example.push(self.example_features[idx]);
        }
        spec.features = picked;
        spec.example_features = example;
        spec.validate()?;
        Ok(spec)
    }

    /// Checks internal consistency; a worker refuses a model whose spec fails this.
    pub fn validate(&self) -> Result<(), SpecError> {
        let invalid = |reason: String| SpecError::Invalid {
            spec: self.name.clone(),
            reason,
        };
        if self.features.is_empty() {
            return Err(invalid("it has no features".into()));
        }
        if self.example_features.len() != self.features.len() {
            return Err(invalid(format!(
                "example_features has {} values for {} features",
                self.example_features.len(),
                self.features.len()
            )));
        }
        for (i, f) in self.features.iter().enumerate() {
            if self.features[..i].iter().any(|g| g.name == f.name) {
                return Err(invalid(format!("feature '{}' appears twice", f.name)));
            }
        }
        for (unit, factor) in &self.units {
            if !factor.is_finite() || *factor == 0.0 {
                return Err(invalid(format!("unit '{unit}' has factor {factor}")));
            }
        }
        for l in &self.lookups {
            for name in [&l.table, &l.key_column, &l.value_column] {
                if !is_sql_identifier(name) {
                    return Err(SpecError::BadIdentifier {
                        spec: self.name.clone(),
                        name: name.clone(),
                    });
                }
            }
        }
        for f in &self.features {
            self.validate_road(f)?;
        }
        Ok(())
    }

    fn validate_road(&self, f: &FeatureSpec) -> Result<(), SpecError> {
        let unknown = |what: &'static str, name: &str| SpecError::UnknownReference {
            spec: self.name.clone(),
            feature: f.name.clone(),
            what,
            name: name.to_owned(),
        };
        match &f.road {
            Road::Request { unit, .. } => match unit {
                UnitSource::Fixed(u) if !self.units.contains_key(u) => Err(unknown("unit", u)),
                UnitSource::FromLookup(l) if self.lookup(l).is_none() => Err(unknown("lookup", l)),
                _ => Ok(()),
            },
            Road::Lookup { lookup, unit } => {
                if self.lookup(lookup).is_none() {
                    Err(unknown("lookup", lookup))
                } else if !self.units.contains_key(unit) {
                    Err(unknown("unit", unit))
                } else {
                    Ok(())
                }
            }
            Road::Document {
                providers,
                agreement_tolerance,
            } => {
                if let Some(t) = agreement_tolerance.filter(|t| !(t.is_finite() && *t >= 0.0)) {
                    return Err(SpecError::Invalid {
                        spec: self.name.clone(),
                        reason: format!(
                            "feature '{}': agreement_tolerance {t} is not a finite number >= 0",
                            f.name
                        ),
                    });
                }
                let Some(docs) = &self.documents else {
                    return Err(unknown("documents section", "documents"));
                };
                for (provider, field) in providers {
                    if !docs.providers.contains(provider) {
                        return Err(unknown("provider", provider));
                    }
                    if !self.units.contains_key(&field.unit) {
                        return Err(unknown("unit", &field.unit));
                    }
                }
                Ok(())
            }
        }
    }

    /// The lookup with this name.
    pub fn lookup(&self, name: &str) -> Option<&LookupSpec> {
        self.lookups.iter().find(|l| l.name == name)
    }

    /// The standardization rules for a request column, if any.
    pub fn rules_for(&self, column: &str) -> Option<&[TextRule]> {
        self.standardize
            .iter()
            .find(|r| r.column == column)
            .map(|r| r.rules.as_slice())
    }
}

fn is_sql_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 63
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_spec_is_valid_and_in_canonical_order() {
        let spec = PipelineSpec::banknote();
        spec.validate().unwrap();
        assert_eq!(
            spec.feature_names(),
            ["variance", "skewness", "curtosis", "entropy"]
        );
        assert_eq!(
            spec.request_columns(),
            ["id", "scanner", "issuer", "note", "variance", "skewness"]
        );
    }

    #[test]
    fn a_reduced_feature_list_keeps_the_chosen_order_and_example() {
        let spec = PipelineSpec::banknote();
        let reduced = spec.with_features(&["entropy", "variance"]).unwrap();
        assert_eq!(reduced.feature_names(), ["entropy", "variance"]);
        assert_eq!(
            reduced.example_features,
            [spec.example_features[3], spec.example_features[0]]
        );
        assert!(spec.with_features(&["colour"]).is_err());
    }

    #[test]
    fn sql_identifiers_are_checked() {
        let mut spec = PipelineSpec::banknote();
        spec.lookups[0].table = "scanners; drop table x".into();
        assert!(matches!(
            spec.validate(),
            Err(SpecError::BadIdentifier { .. })
        ));
    }

    #[test]
    fn a_feature_with_an_undeclared_unit_is_refused() {
        let mut spec = PipelineSpec::banknote();
        if let Road::Document { providers, .. } = &mut spec.features[2].road {
            providers.values_mut().next().unwrap().unit = "furlong".into();
        }
        assert!(matches!(
            spec.validate(),
            Err(SpecError::UnknownReference { what: "unit", .. })
        ));
    }
}
