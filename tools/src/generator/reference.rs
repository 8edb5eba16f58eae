//! The banknote domain's reference data, hand-written because business reference data is:
//! units, scanners (one with a unit the spec does not know), issuers and their spellings.

use ml_pipeline::fixtures::{Issuer, IssuerAlias, ReferenceData, Scanner, Unit};
use ml_pipeline::spec::PipelineSpec;
use ml_pipeline::standardize::fold;

/// The scanner whose unit the spec does not know; requests through it get a per-record error.
pub const MICRO_SCANNER: &str = "sc-13";

const ISSUERS: &[(&str, &str, &[&str])] = &[
    (
        "US-FED",
        "Federal Reserve",
        &[
            "Federal Reserve",
            "FRB",
            "Federal Reserve Bank",
            "Fed",
            "Federal Reserve System",
        ],
    ),
    (
        "EU-ECB",
        "European Central Bank",
        &[
            "European Central Bank",
            "ECB",
            "EZB",
            "BCE",
            "Europäische Zentralbank",
        ],
    ),
    (
        "GB-BOE",
        "Bank of England",
        &["Bank of England", "BoE", "Old Lady of Threadneedle Street"],
    ),
    (
        "JP-BOJ",
        "Bank of Japan",
        &["Bank of Japan", "BOJ", "日本銀行", "Nippon Ginko"],
    ),
    (
        "CH-SNB",
        "Swiss National Bank",
        &[
            "Swiss National Bank",
            "SNB",
            "Schweizerische Nationalbank",
            "Banque nationale suisse",
        ],
    ),
    (
        "FR-BDF",
        "Banque de France",
        &["Banque de France", "BdF", "Banque de Fránce"],
    ),
];

/// The domain's reference data, with alias keys folded by the spec's issuer rules.
pub fn banknote(spec: &PipelineSpec) -> ReferenceData {
    let unit = |code: &str, description: &str, factor: f64| Unit {
        code: code.into(),
        description: description.into(),
        factor_to_canonical: factor,
    };
    let units = vec![
        unit("raw", "canonical wavelet units", 1.0),
        unit("centi", "hundredths: value x 100", 0.01),
        unit("milli", "thousandths: value x 1000", 0.001),
        unit("micro", "millionths: value x 1e6 (legacy firmware)", 1e-6),
    ];
    let branches = ["Zurich", "Frankfurt", "London", "Osaka", "Lyon", "Boston"];
    let mut scanners: Vec<Scanner> = (1..=12)
        .map(|i| Scanner {
            scanner_id: format!("sc-{i:02}"),
            unit_code: ["raw", "milli", "centi"][i % 3].into(),
            branch: branches[i % branches.len()].into(),
        })
        .collect();
    scanners.push(Scanner {
        scanner_id: MICRO_SCANNER.into(),
        unit_code: "micro".into(),
        branch: "Boston".into(),
    });
    let rules = spec.rules_for("issuer").unwrap_or(&[]);
    let issuers = ISSUERS
        .iter()
        .map(|(code, name, _)| Issuer {
            issuer_code: (*code).into(),
            name: (*name).into(),
        })
        .collect();
    let issuer_aliases = ISSUERS
        .iter()
        .flat_map(|(code, _, aliases)| {
            aliases.iter().map(move |a| IssuerAlias {
                alias: (*a).into(),
                alias_key: fold(a, rules),
                issuer_code: (*code).into(),
            })
        })
        .collect();
    ReferenceData {
        units,
        scanners,
        issuers,
        issuer_aliases,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn alias_keys_are_unique_and_name_one_issuer() {
        let data = banknote(&PipelineSpec::banknote());
        let mut seen: HashMap<&str, &str> = HashMap::new();
        for a in &data.issuer_aliases {
            if let Some(prev) = seen.insert(&a.alias_key, &a.issuer_code) {
                panic!(
                    "alias key {} names {prev} and {}",
                    a.alias_key, a.issuer_code
                );
            }
        }
        assert_eq!(seen["federal reserve bank"], "US-FED");
        assert_eq!(seen["日本銀行"], "JP-BOJ");
    }

    #[test]
    fn the_micro_unit_is_unknown_to_the_spec_on_purpose() {
        let spec = PipelineSpec::banknote();
        let data = banknote(&spec);
        assert!(data.factor("micro").is_some());
        assert!(!spec.units.contains_key("micro"));
        for u in ["raw", "centi", "milli"] {
            assert_eq!(data.factor(u), spec.units.get(u).copied());
        }
    }
}
