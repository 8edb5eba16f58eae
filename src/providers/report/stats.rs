//! The arithmetic of the provider report, apart from any database: quantiles, the agreement of
//! two providers' values, the notes that disagree most, and quantiles read from a Prometheus
//! histogram.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use serde::Serialize;

/// The `q` quantile (0..=1) of `values`, linearly interpolated between the closest ranks (the
/// method PostgreSQL's `percentile_cont` uses). Sorts `values`; `None` when it is empty.
pub fn quantile(values: &mut [f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable_by(f64::total_cmp);
    Some(sorted_quantile(values, q))
}

/// [`quantile`] of values already sorted ascending.
pub fn sorted_quantile(sorted: &[f64], q: f64) -> f64 {
    let rank = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
}

/// Two providers' values of one feature, compared note by note.
#[derive(Debug, Clone, Default)]
pub struct Differences {
    /// `a - b` per note both providers give a value for, in canonical units.
    pub signed: Vec<f64>,
}

/// What [`Differences::summary`] reports for one pair of providers and one feature.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DifferenceSummary {
    /// Notes both providers give a value for.
    pub notes: u64,
    /// Median absolute difference.
    pub median_abs: f64,
    /// 95th percentile of the absolute difference.
    pub p95_abs: f64,
    /// Largest absolute difference.
    pub max_abs: f64,
    /// Notes whose absolute difference exceeds the tolerance.
    pub beyond_tolerance: u64,
    /// `beyond_tolerance / notes`.
    pub beyond_share: f64,
    /// The tolerance (canonical units).
    pub tolerance: f64,
}

impl Differences {
    /// The summary against `tolerance`; `None` when no note was compared.
    pub fn summary(&self, tolerance: f64) -> Option<DifferenceSummary> {
        let mut abs: Vec<f64> = self.signed.iter().map(|d| d.abs()).collect();
        if abs.is_empty() {
            return None;
        }
        abs.sort_unstable_by(f64::total_cmp);
        let beyond = abs.iter().filter(|d| **d > tolerance).count() as u64;
        Some(DifferenceSummary {
            notes: abs.len() as u64,
            median_abs: sorted_quantile(&abs, 0.5),
            p95_abs: sorted_quantile(&abs, 0.95),
            max_abs: abs[abs.len() - 1],
            beyond_tolerance: beyond,
            beyond_share: beyond as f64 / abs.len() as f64,
            tolerance,
        })
    }
}

/// One note on which two providers disagree, with its worst feature.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Disagreement {
    /// The note's key.
    pub note: String,
    /// The two providers, in the spec's order of preference.
    pub providers: [String; 2],
    /// The feature that differs most, relative to its tolerance.
    pub feature: String,
    /// Each provider's canonical value of that feature.
    pub values: [f64; 2],
    /// `|a - b| / tolerance` (how many tolerances apart).
    pub tolerances_apart: f64,
}

/// Heap entry ordered by `tolerances_apart`, smallest on top (a min-heap of the largest).
struct Ranked(Disagreement);

impl PartialEq for Ranked {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Ranked {}
impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed, so the heap's top is the smallest kept; ties broken by note, so the list
        // does not depend on the scan's order.
        other
            .0
            .tolerances_apart
            .total_cmp(&self.0.tolerances_apart)
            .then_with(|| self.0.note.cmp(&other.0.note))
    }
}

/// The `limit` notes that disagree most, kept in bounded memory while the notes stream by.
pub struct WorstNotes {
    limit: usize,
    heap: BinaryHeap<Ranked>,
}

impl WorstNotes {
    /// Keeps at most `limit` notes.
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            heap: BinaryHeap::with_capacity(limit + 1),
        }
    }

    /// Offers one note's disagreement; kept when it is among the `limit` largest so far.
    pub fn offer(&mut self, d: Disagreement) {
        if self.limit == 0 || d.tolerances_apart <= 1.0 {
            return;
        }
        self.heap.push(Ranked(d));
        if self.heap.len() > self.limit {
            self.heap.pop();
        }
    }

    /// The kept notes, largest disagreement first.
    pub fn into_sorted(self) -> Vec<Disagreement> {
        // `into_sorted_vec` is ascending by `Ord`, which is reversed: largest first.
        self.heap
            .into_sorted_vec()
            .into_iter()
            .map(|r| r.0)
            .collect()
    }
}

/// One labelled Prometheus histogram read from the text exposition format: cumulative
/// `(upper bound, count)` buckets, ending with `+Inf`.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    /// Cumulative counts by upper bound, ascending.
    pub buckets: Vec<(f64, f64)>,
}

impl Histogram {
    /// The histogram `name` whose labels include `label="value"`, from a `/metrics` page.
    /// `None` when the page has no such series.
    pub fn parse(page: &str, name: &str, label: (&str, &str)) -> Option<Self> {
        let prefix = format!("{name}_bucket{{");
        let wanted = format!("{}=\"{}\"", label.0, label.1);
        let mut buckets: Vec<(f64, f64)> = page
            .lines()
            .filter_map(|line| {
                let rest = line.strip_prefix(&prefix)?;
                let (labels, value) = rest.split_once("} ")?;
                if !labels.split(',').any(|l| l == wanted) {
                    return None;
                }
                let le = labels
                    .split(',')
                    .find_map(|l| l.strip_prefix("le=\""))?
                    .trim_end_matches('"');
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, value.trim().parse().ok()?))
            })
            .collect();
        if buckets.is_empty() {
            return None;
        }
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Some(Self { buckets })
    }

    /// Observations counted.
    pub fn count(&self) -> f64 {
        self.buckets.last().map_or(0.0, |b| b.1)
    }

    /// The `q` quantile, interpolated linearly inside its bucket as Prometheus'
    /// `histogram_quantile` does (the lowest bucket starts at 0; a quantile in the `+Inf` bucket
    /// is the highest finite bound). `None` without observations.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total <= 0.0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total;
        let mut below = (0.0, 0.0);
        for &(le, count) in &self.buckets {
            if count >= rank {
                if le.is_infinite() {
                    return Some(below.0);
                }
                let in_bucket = count - below.1;
                let share = if in_bucket > 0.0 {
                    (rank - below.1) / in_bucket
                } else {
                    1.0
                };
                return Some(below.0 + (le - below.0) * share);
            }
            below = (le, count);
        }
        Some(below.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_between_ranks() {
        let mut v = vec![4.0, 1.0, 3.0, 2.0];
        assert_eq!(quantile(&mut v, 0.5), Some(2.5));
        assert_eq!(quantile(&mut v, 0.0), Some(1.0));
        assert_eq!(quantile(&mut v, 1.0), Some(4.0));
        assert_eq!(quantile(&mut [], 0.5), None);
        assert_eq!(sorted_quantile(&[7.0], 0.95), 7.0);
    }

    #[test]
    fn differences_count_what_exceeds_the_tolerance() {
        let d = Differences {
            signed: vec![0.0, -0.005, 0.02, -0.5, 0.0],
        };
        let s = d.summary(0.01).unwrap();
        assert_eq!(s.notes, 5);
        assert_eq!(s.beyond_tolerance, 2);
        assert!((s.beyond_share - 0.4).abs() < 1e-12);
        assert_eq!(s.median_abs, 0.005);
        assert_eq!(s.max_abs, 0.5);
        assert!(Differences::default().summary(0.01).is_none());
    }

    fn note(name: &str, apart: f64) -> Disagreement {
        Disagreement {
            note: name.into(),
            providers: ["aurum".into(), "lumen".into()],
            feature: "entropy".into(),
            values: [0.0, apart],
            tolerances_apart: apart,
        }
    }

    #[test]
    fn the_worst_notes_are_kept_largest_first() {
        let mut worst = WorstNotes::new(2);
        for (n, apart) in [("a", 3.0), ("b", 50.0), ("c", 0.5), ("d", 7.0), ("e", 1.0)] {
            worst.offer(note(n, apart));
        }
        let kept: Vec<_> = worst.into_sorted().into_iter().map(|d| d.note).collect();
        assert_eq!(kept, ["b", "d"]);
        let mut none = WorstNotes::new(3);
        none.offer(note("within", 0.9));
        assert!(none.into_sorted().is_empty());
    }

    #[test]
    fn histogram_quantiles_follow_prometheus() {
        let page = "\
# TYPE ml_pipeline_stage_seconds histogram
ml_pipeline_stage_seconds_bucket{stage=\"enrich.mongo\",le=\"0.001\"} 0
ml_pipeline_stage_seconds_bucket{stage=\"enrich.mongo\",le=\"0.005\"} 50
ml_pipeline_stage_seconds_bucket{stage=\"enrich.mongo\",le=\"0.01\"} 90
ml_pipeline_stage_seconds_bucket{stage=\"enrich.mongo\",le=\"+Inf\"} 100
ml_pipeline_stage_seconds_bucket{stage=\"enrich\",le=\"+Inf\"} 7
ml_pipeline_stage_seconds_sum{stage=\"enrich.mongo\"} 0.6
";
        let h =
            Histogram::parse(page, "ml_pipeline_stage_seconds", ("stage", "enrich.mongo")).unwrap();
        assert_eq!(h.count(), 100.0);
        assert!((h.quantile(0.5).unwrap() - 0.005).abs() < 1e-12);
        assert!((h.quantile(0.7).unwrap() - 0.0075).abs() < 1e-12);
        // Beyond the last finite bound: that bound.
        assert_eq!(h.quantile(0.99), Some(0.01));
        assert!(Histogram::parse(page, "ml_pipeline_stage_seconds", ("stage", "x")).is_none());
    }
}
