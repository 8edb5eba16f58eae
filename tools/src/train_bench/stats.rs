//! Medians, ranges and growth between sizes: the arithmetic of the training benchmark.

use serde::Serialize;

/// The median and range of repeated measurements.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    /// The middle value; the mean of the two middle values for an even count.
    pub median: f64,
    /// The smallest value.
    pub min: f64,
    /// The largest value.
    pub max: f64,
}

impl Spread {
    /// The spread of `values`; `None` when there are none or one is NaN.
    pub fn of(values: &[f64]) -> Option<Self> {
        if values.is_empty() || values.iter().any(|v| v.is_nan()) {
            return None;
        }
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let mid = sorted.len() / 2;
        let median = if sorted.len().is_multiple_of(2) {
            (sorted[mid - 1] + sorted[mid]) / 2.0
        } else {
            sorted[mid]
        };
        Some(Self {
            median,
            min: sorted[0],
            max: sorted[sorted.len() - 1],
        })
    }
}

/// One size's figures, as the growth table compares them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SizeFigures {
    /// Training rows.
    pub rows: usize,
    /// Median fit seconds.
    pub seconds: f64,
    /// Peak RSS during the fit, MiB.
    pub peak_mib: f64,
    /// RSS before the fit (process and data), MiB.
    pub before_mib: f64,
}

/// How time and memory grew from one size to the next.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Growth {
    /// The smaller size.
    pub from_rows: usize,
    /// The larger size.
    pub to_rows: usize,
    /// to_rows / from_rows.
    pub rows_ratio: f64,
    /// Ratio of median fit seconds.
    pub time_ratio: f64,
    /// Ratio of peak RSS.
    pub peak_ratio: f64,
    /// Ratio of the fit's own share (peak minus RSS before the fit).
    pub fit_share_ratio: f64,
    /// k in time ~ rows^k between the two sizes (1 linear, 2 quadratic).
    pub time_exponent: f64,
    /// k in fit share ~ rows^k between the two sizes.
    pub fit_share_exponent: f64,
}

/// Growth between each pair of consecutive sizes (sorted by rows).
pub fn growth(sizes: &[SizeFigures]) -> Vec<Growth> {
    let mut sorted = sizes.to_vec();
    sorted.sort_by_key(|s| s.rows);
    sorted
        .windows(2)
        .filter(|w| w[0].rows > 0 && w[1].rows > w[0].rows)
        .map(|w| {
            let (a, b) = (w[0], w[1]);
            let rows_ratio = b.rows as f64 / a.rows as f64;
            let share = |s: SizeFigures| (s.peak_mib - s.before_mib).max(0.0);
            let fit_share_ratio = share(b) / share(a);
            let exponent = |r: f64| r.ln() / rows_ratio.ln();
            Growth {
                from_rows: a.rows,
                to_rows: b.rows,
                rows_ratio,
                time_ratio: b.seconds / a.seconds,
                peak_ratio: b.peak_mib / a.peak_mib,
                fit_share_ratio,
                time_exponent: exponent(b.seconds / a.seconds),
                fit_share_exponent: exponent(fit_share_ratio),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_min_max_of_odd_and_even_counts() {
        let odd = Spread::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((odd.median, odd.min, odd.max), (2.0, 1.0, 3.0));
        let even = Spread::of(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!((even.median, even.min, even.max), (2.5, 1.0, 4.0));
        assert_eq!(Spread::of(&[7.5]).unwrap().median, 7.5);
        assert!(Spread::of(&[]).is_none());
        assert!(Spread::of(&[1.0, f64::NAN]).is_none());
    }

    fn size(rows: usize, seconds: f64, peak_mib: f64, before_mib: f64) -> SizeFigures {
        SizeFigures {
            rows,
            seconds,
            peak_mib,
            before_mib,
        }
    }

    #[test]
    fn quadratic_time_and_linear_memory_show_as_exponents_two_and_one() {
        // Given out of order: growth is between consecutive sizes.
        let g = growth(&[
            size(20_000, 40.0, 30.0, 10.0),
            size(10_000, 10.0, 20.0, 10.0),
            size(40_000, 160.0, 50.0, 10.0),
        ]);
        assert_eq!(g.len(), 2);
        assert_eq!((g[0].from_rows, g[0].to_rows), (10_000, 20_000));
        assert_eq!(g[0].rows_ratio, 2.0);
        assert_eq!(g[0].time_ratio, 4.0);
        assert_eq!(g[0].peak_ratio, 1.5);
        assert_eq!(g[0].fit_share_ratio, 2.0);
        assert!((g[0].time_exponent - 2.0).abs() < 1e-12);
        assert!((g[0].fit_share_exponent - 1.0).abs() < 1e-12);
        assert!((g[1].time_exponent - 2.0).abs() < 1e-12);
        assert_eq!(g[1].fit_share_ratio, 2.0);
    }

    #[test]
    fn one_size_has_no_growth() {
        assert!(growth(&[size(10, 1.0, 1.0, 0.5)]).is_empty());
    }
}
