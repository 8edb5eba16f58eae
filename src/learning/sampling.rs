//! Which bundles' predictions the worker logs.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

pub(crate) use crate::sample::unit_hash;

/// The prediction log's mode (`ML_PIPELINE_PREDICTION_LOG`).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum LogMode {
    /// Nothing is logged.
    #[default]
    Off,
    /// About this fraction of the bundles, all of their records: the choice is a hash of the
    /// bundle id, so a redelivered bundle is logged again or not at all, and feedback on a bundle
    /// finds all of its records or none.
    Sampled(f64),
    /// Every prediction.
    All,
}

impl LogMode {
    /// Whether the predictions of this bundle are logged.
    pub fn keeps(self, bundle_id: &str) -> bool {
        match self {
            LogMode::Off => false,
            LogMode::All => true,
            LogMode::Sampled(fraction) => unit_hash(bundle_id) < fraction,
        }
    }

    /// Whether anything is logged at all.
    pub fn is_on(self) -> bool {
        !matches!(self, LogMode::Off) && self != LogMode::Sampled(0.0)
    }
}

impl FromStr for LogMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        match s {
            "off" => return Ok(LogMode::Off),
            "all" => return Ok(LogMode::All),
            _ => {}
        }
        let fraction = s
            .strip_prefix("sampled:")
            .and_then(|f| f.parse::<f64>().ok())
            .filter(|f| (0.0..=1.0).contains(f));
        match fraction {
            Some(f) => Ok(LogMode::Sampled(f)),
            None => Err(format!(
                "prediction log mode {s:?} is not off, all or sampled:<fraction> with a fraction from 0 to 1 (e.g. sampled:0.1)"
            )),
        }
    }
}

impl fmt::Display for LogMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogMode::Off => f.write_str("off"),
            LogMode::All => f.write_str("all"),
            LogMode::Sampled(x) => write!(f, "sampled:{x}"),
        }
    }
}

impl<'de> Deserialize<'de> for LogMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_print_back() {
        for s in ["off", "all", "sampled:0.25"] {
            assert_eq!(s.parse::<LogMode>().unwrap().to_string(), s);
        }
        for bad in [
            "some",
            "sampled:",
            "sampled:1.5",
            "sampled:-0.1",
            "sampled:x",
        ] {
            let e = bad.parse::<LogMode>().unwrap_err();
            assert!(e.contains("sampled:<fraction>"), "{e}");
        }
    }

    #[test]
    fn sampling_keeps_about_the_fraction_and_always_the_same_bundles() {
        let mode = LogMode::Sampled(0.1);
        let ids: Vec<String> = (0..20_000).map(|i| format!("bundle-{i}")).collect();
        let kept = ids.iter().filter(|id| mode.keeps(id)).count();
        assert!(
            (1_800..2_200).contains(&kept),
            "{kept} of 20000 kept at 0.1"
        );
        for id in &ids[..100] {
            assert_eq!(mode.keeps(id), mode.keeps(id));
        }
        assert!(ids.iter().all(|id| LogMode::All.keeps(id)));
        assert!(!ids.iter().any(|id| LogMode::Off.keeps(id)));
        assert!(!ids.iter().any(|id| LogMode::Sampled(0.0).keeps(id)));
        assert!(!LogMode::Sampled(0.0).is_on());
    }
}
