//! Drift: how far the canonical features the worker served over a rolling window have moved
//! from the training data, measured against the statistics stored with the model version
//! ([`TrainingStats`]).
//!
//! Per feature: the population stability index over the training quantile bins,
//! `PSI = sum((served - trained) * ln(served / trained))`, and the share of served values
//! outside the training range. A PSI under 0.1 is usually read as no shift, 0.1 to 0.2 as a
//! moderate one, over 0.2 as a shift worth acting on.
//!
//! The window is a ring of slices (a fifteenth of the window each): a batch's counts are added
//! to the newest slice, and a slice older than the window is dropped whole, so an observation
//! costs one bin search per value and the window's memory is fixed.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use ndarray::ArrayView2;

use crate::model::TrainingStats;

/// Slices per window.
const SLICES: u32 = 15;

/// A share below this counts as this, so an empty bin gives a large but finite PSI.
const SHARE_FLOOR: f64 = 1e-4;

/// The population stability index of `counts` against the `expected` shares.
pub fn psi(expected: &[f64], counts: &[u64]) -> f64 {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return 0.0;
    }
    expected
        .iter()
        .zip(counts)
        .map(|(&e, &c)| {
            let e = e.max(SHARE_FLOOR);
            let a = (c as f64 / total as f64).max(SHARE_FLOOR);
            (a - e) * (a / e).ln()
        })
        .sum()
}

/// One batch's values, binned: per feature, the count in each training bin and the count out of
/// the training range.
#[derive(Debug, Clone, PartialEq)]
pub struct Counts {
    /// Rows counted.
    pub rows: u64,
    /// Per feature, per bin.
    pub bins: Vec<Vec<u64>>,
    /// Per feature.
    pub out_of_range: Vec<u64>,
}

impl Counts {
    /// Nothing counted yet, shaped for `stats`.
    pub fn empty(stats: &TrainingStats) -> Self {
        Self {
            rows: 0,
            bins: stats
                .features
                .iter()
                .map(|f| vec![0; f.shares.len()])
                .collect(),
            out_of_range: vec![0; stats.features.len()],
        }
    }

    /// The counts of the canonical rows `x` (one column per feature, in the spec's order).
    pub fn of(stats: &TrainingStats, x: ArrayView2<f64>) -> Self {
        let mut counts = Self::empty(stats);
        counts.rows = x.nrows() as u64;
        for (j, f) in stats.features.iter().enumerate().take(x.ncols()) {
            let (bins, out) = (&mut counts.bins[j], &mut counts.out_of_range[j]);
            for &v in x.column(j) {
                bins[f.bin(v)] += 1;
                *out += u64::from(f.out_of_range(v));
            }
        }
        counts
    }

    fn add(&mut self, other: &Counts) {
        self.rows += other.rows;
        for (mine, theirs) in self.bins.iter_mut().zip(&other.bins) {
            for (m, t) in mine.iter_mut().zip(theirs) {
                *m += t;
            }
        }
        for (m, t) in self.out_of_range.iter_mut().zip(&other.out_of_range) {
            *m += t;
        }
    }
}

/// One feature's drift over the window.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureDrift {
    /// The feature.
    pub feature: String,
    /// Its population stability index.
    pub psi: f64,
    /// The share of its values outside the training range.
    pub out_of_range: f64,
}

/// What the window holds for one model version.
#[derive(Debug, Clone, PartialEq)]
pub struct Drift {
    /// The model version whose training statistics the figures are against.
    pub version: u64,
    /// Rows in the window.
    pub rows: u64,
    /// Per feature, in the spec's order.
    pub features: Vec<FeatureDrift>,
}

/// The rolling window of served features, for one model version at a time: when the served
/// version changes, the window starts again (its statistics are another version's).
#[derive(Debug)]
pub struct DriftWindow {
    slice: Duration,
    version: Option<u64>,
    slices: VecDeque<(Instant, Counts)>,
}

impl DriftWindow {
    /// A window of `span`.
    pub fn new(span: Duration) -> Self {
        Self {
            slice: (span / SLICES).max(Duration::from_millis(1)),
            version: None,
            slices: VecDeque::new(),
        }
    }

    /// Adds one batch's counts, served by `version`, at `now`.
    pub fn add(&mut self, version: u64, counts: Counts, now: Instant) {
        if self.version != Some(version) {
            self.version = Some(version);
            self.slices.clear();
        }
        self.expire(now);
        match self.slices.back_mut() {
            Some((started, slice)) if now.duration_since(*started) < self.slice => {
                slice.add(&counts)
            }
            _ => self.slices.push_back((now, counts)),
        }
    }

    /// The window's figures at `now`, against `stats` (the served version's); None when
    /// nothing of that version was served within the window.
    pub fn drift(&mut self, version: u64, stats: &TrainingStats, now: Instant) -> Option<Drift> {
        self.expire(now);
        if self.version != Some(version) || self.slices.is_empty() {
            return None;
        }
        let mut total = Counts::empty(stats);
        for (_, slice) in &self.slices {
            total.add(slice);
        }
        let features = stats
            .features
            .iter()
            .zip(total.bins.iter().zip(&total.out_of_range))
            .map(|(f, (bins, &out))| FeatureDrift {
                feature: f.name.clone(),
                psi: psi(&f.shares, bins),
                out_of_range: out as f64 / total.rows.max(1) as f64,
            })
            .collect();
        Some(Drift {
            version,
            rows: total.rows,
            features,
        })
    }

    fn expire(&mut self, now: Instant) {
        let span = self.slice * SLICES;
        while let Some((started, _)) = self.slices.front() {
            if now.duration_since(*started) < span {
                break;
            }
            self.slices.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    fn training() -> (TrainingStats, Array2<f64>) {
        // Two features: a uniform ramp, and its mirror.
        let x = Array2::from_shape_fn((2000, 2), |(i, j)| {
            let v = (i % 1000) as f64 / 1000.0;
            if j == 0 {
                v
            } else {
                1.0 - v
            }
        });
        (TrainingStats::compute(&["a", "b"], x.view()), x)
    }

    #[test]
    fn the_training_data_itself_has_no_drift_and_a_shifted_copy_has_a_large_psi() {
        let (stats, x) = training();
        let same = Counts::of(&stats, x.view());
        assert!(psi(&stats.features[0].shares, &same.bins[0]) < 1e-9);
        assert_eq!(same.out_of_range, vec![0, 0]);

        let shifted = &x + 0.5;
        let counts = Counts::of(&stats, shifted.view());
        let moved = psi(&stats.features[0].shares, &counts.bins[0]);
        assert!(moved > 0.2, "psi {moved}");
        // Half of the shifted values lie above the training maximum.
        assert!((counts.out_of_range[0] as f64 / 2000.0 - 0.5).abs() < 0.01);
    }

    #[test]
    fn a_small_shift_gives_a_small_psi_and_a_large_one_a_larger() {
        let (stats, x) = training();
        let psi_of = |d: f64| {
            let c = Counts::of(&stats, (&x + d).view());
            psi(&stats.features[0].shares, &c.bins[0])
        };
        let (small, large) = (psi_of(0.02), psi_of(0.2));
        assert!(small < 0.1, "small shift psi {small}");
        assert!(large > small && large > 0.2, "large shift psi {large}");
    }

    #[test]
    fn the_window_forgets_what_is_older_than_its_span_and_restarts_on_a_new_version() {
        let (stats, x) = training();
        let mut w = DriftWindow::new(Duration::from_secs(150));
        let t0 = Instant::now();
        w.add(1, Counts::of(&stats, (&x + 0.5).view()), t0);
        let early = w.drift(1, &stats, t0).unwrap();
        assert!(early.features[0].psi > 0.2);
        assert_eq!(early.rows, 2000);

        // Past the span, only the later, unshifted rows remain.
        let later = t0 + Duration::from_secs(151);
        w.add(1, Counts::of(&stats, x.view()), later);
        let now = w.drift(1, &stats, later).unwrap();
        assert_eq!(now.rows, 2000);
        assert!(now.features[0].psi < 1e-9);

        // Another version's rows restart the window; asking for the old version gives nothing.
        w.add(2, Counts::of(&stats, x.view()), later);
        assert!(w.drift(1, &stats, later).is_none());
        assert_eq!(w.drift(2, &stats, later).unwrap().rows, 2000);
        assert!(w
            .drift(2, &stats, later + Duration::from_secs(200))
            .is_none());
    }
}
