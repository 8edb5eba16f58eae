//! What the training data looked like, feature by feature, kept in the artifact so that the
//! worker can tell when what it serves has drifted away from it (`monitor::drift`).
//!
//! Each feature keeps its mean, standard deviation, range, and quantile bins: the inner edges
//! are the training data's deciles, and each bin's share of the training rows is counted with
//! the same rule the worker bins served values by ([`FeatureStats::bin`]), so a served
//! population identical to the training one has a population stability index of 0.

use ndarray::{ArrayView1, ArrayView2, Axis};
use serde::{Deserialize, Serialize};

use super::checks::FieldError;

/// Quantile bins per feature: deciles.
pub const BINS: usize = 10;

/// One feature of the training data, in canonical units.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureStats {
    /// The spec's feature name.
    pub name: String,
    /// Mean.
    pub mean: f64,
    /// Standard deviation (population).
    pub std: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Inner bin edges, strictly ascending: the training deciles, without repeats. A value `v`
    /// falls in bin `i` = the number of edges `<= v`.
    pub edges: Vec<f64>,
    /// Each bin's share of the training rows; `edges.len() + 1` of them, summing to 1.
    pub shares: Vec<f64>,
}

/// The training data's statistics, one entry per spec feature in the spec's order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingStats {
    /// Rows they were computed on.
    pub rows: usize,
    /// Per feature.
    pub features: Vec<FeatureStats>,
}

impl FeatureStats {
    /// The statistics of one column.
    pub fn compute(name: &str, column: ArrayView1<f64>) -> Self {
        let mut sorted: Vec<f64> = column.iter().copied().filter(|v| v.is_finite()).collect();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len().max(1) as f64;
        let mean = sorted.iter().sum::<f64>() / n;
        let var = sorted.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        let mut edges: Vec<f64> = (1..BINS)
            .filter_map(|q| sorted.get(q * sorted.len() / BINS).copied())
            .collect();
        edges.dedup();
        let mut stats = Self {
            name: name.to_owned(),
            mean,
            std: var.sqrt(),
            min: sorted.first().copied().unwrap_or(0.0),
            max: sorted.last().copied().unwrap_or(0.0),
            shares: vec![0.0; edges.len() + 1],
            edges,
        };
        for &v in &sorted {
            let bin = stats.bin(v);
            stats.shares[bin] += 1.0 / n;
        }
        stats
    }

    /// The bin a value falls in.
    pub fn bin(&self, v: f64) -> usize {
        self.edges.partition_point(|&e| e <= v)
    }

    /// Whether a value lies outside the training range (a value that is not a number does).
    pub fn out_of_range(&self, v: f64) -> bool {
        !(self.min..=self.max).contains(&v)
    }
}

impl TrainingStats {
    /// The statistics of every column of `x`, named by `names`.
    pub fn compute(names: &[&str], x: ArrayView2<f64>) -> Self {
        Self {
            rows: x.nrows(),
            features: names
                .iter()
                .zip(x.axis_iter(Axis(1)))
                .map(|(name, column)| FeatureStats::compute(name, column))
                .collect(),
        }
    }

    /// Checks them against the spec's feature names: one entry per feature, in order, with
    /// ascending finite edges and shares that sum to 1.
    pub fn check(&self, names: &[&str]) -> Result<(), FieldError> {
        let field = |i: usize, what: &str| format!("training_stats.features[{i}].{what}");
        if self.features.len() != names.len() {
            return Err(FieldError {
                field: "training_stats.features".into(),
                expected: format!("{} entries (the spec's features)", names.len()),
                found: self.features.len().to_string(),
            });
        }
        for (i, (f, name)) in self.features.iter().zip(names).enumerate() {
            if f.name != *name {
                return Err(FieldError {
                    field: field(i, "name"),
                    expected: (*name).to_owned(),
                    found: f.name.clone(),
                });
            }
            let ascending = f.edges.windows(2).all(|w| w[0] < w[1]);
            if !ascending || f.edges.iter().any(|e| !e.is_finite()) {
                return Err(FieldError {
                    field: field(i, "edges"),
                    expected: "finite and strictly ascending".into(),
                    found: format!("{:?}", f.edges),
                });
            }
            let sum: f64 = f.shares.iter().sum();
            if f.shares.len() != f.edges.len() + 1 || (sum - 1.0).abs() > 1e-6 {
                return Err(FieldError {
                    field: field(i, "shares"),
                    expected: format!("{} shares summing to 1", f.edges.len() + 1),
                    found: format!("{} summing to {sum}", f.shares.len()),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    #[test]
    fn deciles_split_a_uniform_column_in_ten_equal_shares() {
        let x = Array2::from_shape_fn((1000, 1), |(i, _)| i as f64);
        let stats = TrainingStats::compute(&["a"], x.view());
        let a = &stats.features[0];
        assert_eq!(a.edges.len(), 9);
        assert_eq!(a.edges[0], 100.0);
        for share in &a.shares {
            assert!((share - 0.1).abs() < 1e-9, "{:?}", a.shares);
        }
        assert_eq!((a.min, a.max), (0.0, 999.0));
        assert!((a.mean - 499.5).abs() < 1e-9);
        assert!(stats.check(&["a"]).is_ok());
    }

    #[test]
    fn a_column_with_few_values_keeps_distinct_edges_and_its_shares_still_sum_to_one() {
        let x = Array2::from_shape_fn((100, 1), |(i, _)| if i < 70 { 0.0 } else { 1.0 });
        let stats = TrainingStats::compute(&["flag"], x.view());
        let f = &stats.features[0];
        assert_eq!(f.edges, vec![0.0, 1.0]);
        assert_eq!(f.shares.len(), 3);
        assert!((f.shares[1] - 0.7).abs() < 1e-9 && (f.shares[2] - 0.3).abs() < 1e-9);
        assert!(stats.check(&["flag"]).is_ok());
    }

    #[test]
    fn stats_that_do_not_match_the_spec_are_refused_naming_the_field() {
        let x = Array2::from_shape_fn((50, 2), |(i, j)| (i * (j + 1)) as f64);
        let mut stats = TrainingStats::compute(&["a", "b"], x.view());
        assert!(stats.check(&["a"]).is_err());
        assert_eq!(
            stats.check(&["a", "c"]).unwrap_err().field,
            "training_stats.features[1].name"
        );
        stats.features[0].shares[0] += 0.5;
        assert_eq!(
            stats.check(&["a", "b"]).unwrap_err().field,
            "training_stats.features[0].shares"
        );
    }

    #[test]
    fn a_value_outside_the_training_range_or_not_a_number_is_out_of_range() {
        let x = Array2::from_shape_fn((10, 1), |(i, _)| i as f64);
        let f = &TrainingStats::compute(&["a"], x.view()).features[0];
        assert!(!f.out_of_range(0.0) && !f.out_of_range(9.0));
        assert!(f.out_of_range(-0.1) && f.out_of_range(9.5) && f.out_of_range(f64::NAN));
    }
}
