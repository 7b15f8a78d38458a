//! Difficulty levels: each row's domain and its 0-based level within that domain.

use std::fmt;

/// How difficulty values become ordered levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binning {
    /// Every distinct (whole-number) value present in a domain is one level.
    Ordinal,
    /// K quantile bins per domain. Without ties, the edges are numpy's default (linearly
    /// interpolated) quantiles and a value on an edge falls in the lower bin. With ties, each
    /// edge moves to the boundary between distinct values nearest its quantile, so no level is
    /// empty and equal values share a level; a domain with fewer than K distinct values gets
    /// one level per value.
    Quantiles(usize),
}

/// Rows grouped by domain and difficulty level.
#[derive(Debug, Clone, PartialEq)]
pub struct Groups {
    pub domain_names: Vec<String>,
    /// Domain index per row.
    pub domain: Vec<usize>,
    /// 0-based level per row, within its domain.
    pub level: Vec<usize>,
    /// Per domain, per level: the smallest and largest difficulty in it (NaN when empty).
    pub level_ranges: Vec<Vec<(f64, f64)>>,
    /// Per domain, per level: the mean difficulty of its rows (NaN when empty).
    pub level_means: Vec<Vec<f64>>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum LevelError {
    /// A difficulty that is NaN or infinite, at this row (0-based).
    NotFinite { row: usize, value: f64 },
    /// Ordinal binning needs whole numbers; this row (0-based) has a fraction.
    NotWhole { row: usize, value: f64 },
}

impl fmt::Display for LevelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LevelError::NotFinite { value, .. } => {
                write!(f, "difficulty {value} is not a finite number")
            }
            LevelError::NotWhole { value, .. } => {
                write!(f, "difficulty {value} is not a whole number")
            }
        }
    }
}

impl Groups {
    pub fn rows(&self) -> usize {
        self.domain.len()
    }

    pub fn domains(&self) -> usize {
        self.domain_names.len()
    }

    pub(crate) fn levels_in(&self, domain: usize) -> usize {
        self.level_ranges[domain].len()
    }

    /// Row counts per domain, per level.
    pub fn counts(&self) -> Vec<Vec<usize>> {
        let mut counts: Vec<Vec<usize>> = (0..self.domains())
            .map(|d| vec![0; self.levels_in(d)])
            .collect();
        for (&d, &k) in self.domain.iter().zip(&self.level) {
            counts[d][k] += 1;
        }
        counts
    }

    /// Mean difficulty per domain, every row counted with its weight.
    pub fn mean_difficulty(&self, weights: &[f64]) -> Vec<f64> {
        self.mass(weights)
            .iter()
            .zip(&self.level_means)
            .map(|(mass, means)| histogram_mean(mass, means))
            .collect()
    }

    /// Sum of `weights` per domain, per level.
    pub fn mass(&self, weights: &[f64]) -> Vec<Vec<f64>> {
        let mut mass: Vec<Vec<f64>> = (0..self.domains())
            .map(|d| vec![0.0; self.levels_in(d)])
            .collect();
        for ((&d, &k), &w) in self.domain.iter().zip(&self.level).zip(weights) {
            mass[d][k] += w;
        }
        mass
    }
}

/// Mean difficulty of a level histogram (shares or masses, any total): levels weighted by
/// their mass, empty levels (NaN means) skipped.
pub(crate) fn histogram_mean(mass: &[f64], level_means: &[f64]) -> f64 {
    let (sum, total) = mass
        .iter()
        .zip(level_means)
        .filter(|(m, _)| **m > 0.0)
        .fold((0.0, 0.0), |(sum, total), (m, mean)| {
            (sum + m * mean, total + m)
        });
    sum / total
}

/// Assign levels per domain. `domain` holds each row's domain index into `domain_names`.
pub(crate) fn assign(
    domain_names: Vec<String>,
    domain: Vec<usize>,
    difficulty: &[f64],
    binning: Binning,
) -> Result<Groups, LevelError> {
    for (row, &value) in difficulty.iter().enumerate() {
        if !value.is_finite() {
            return Err(LevelError::NotFinite { row, value });
        }
        if binning == Binning::Ordinal && value.fract() != 0.0 {
            return Err(LevelError::NotWhole { row, value });
        }
    }
    let mut level = vec![0usize; difficulty.len()];
    let mut level_ranges = Vec::with_capacity(domain_names.len());
    let mut level_means = Vec::with_capacity(domain_names.len());
    for d in 0..domain_names.len() {
        let rows: Vec<usize> = (0..domain.len()).filter(|&i| domain[i] == d).collect();
        let mut values: Vec<f64> = rows.iter().map(|&i| difficulty[i]).collect();
        values.sort_by(f64::total_cmp);
        let levels = match binning {
            Binning::Ordinal => {
                values.dedup();
                for &i in &rows {
                    level[i] = values.partition_point(|&v| v < difficulty[i]);
                }
                values.len()
            }
            Binning::Quantiles(k) => {
                let (distinct, ends) = quantile_levels(&values, k);
                for &i in &rows {
                    let value = distinct.partition_point(|&v| v < difficulty[i]);
                    level[i] = ends.partition_point(|&end| end <= value);
                }
                ends.len()
            }
        };
        let mut ranges = vec![(f64::NAN, f64::NAN); levels];
        let mut sums = vec![(0.0, 0usize); levels];
        for &i in &rows {
            let (lo, hi) = &mut ranges[level[i]];
            let v = difficulty[i];
            *lo = if lo.is_nan() { v } else { lo.min(v) };
            *hi = if hi.is_nan() { v } else { hi.max(v) };
            sums[level[i]].0 += v;
            sums[level[i]].1 += 1;
        }
        level_ranges.push(ranges);
        level_means.push(
            sums.iter()
                .map(|&(sum, n)| if n > 0 { sum / n as f64 } else { f64::NAN })
                .collect(),
        );
    }
    Ok(Groups {
        domain_names,
        domain,
        level,
        level_ranges,
        level_means,
    })
}

/// The distinct values of `sorted` and, for `k` quantile levels, the end (exclusive) of each
/// level as an index into them. The j-th edge aims at numpy's linear-interpolation quantile
/// j/k, where the rows below it number floor((n-1)j/k) + 1; it is put at the boundary between
/// distinct values whose count of rows below comes nearest that, leaving at least one distinct
/// value for every level after it. Without ties some boundary hits the count exactly, so the
/// levels are numpy's.
fn quantile_levels(sorted: &[f64], k: usize) -> (Vec<f64>, Vec<usize>) {
    let mut distinct: Vec<f64> = Vec::new();
    let mut below = vec![0usize];
    for &v in sorted {
        if distinct.last() != Some(&v) {
            distinct.push(v);
            below.push(*below.last().expect("starts with 0"));
        }
        *below.last_mut().expect("pushed") += 1;
    }
    let m = distinct.len();
    if m <= k {
        return (distinct, (1..=m).collect());
    }
    let n = sorted.len();
    let mut ends = Vec::with_capacity(k);
    let mut previous = 0;
    for j in 1..k {
        let wanted = (n - 1) * j / k + 1;
        let end = (previous + 1..=m - (k - j))
            .min_by_key(|&end| below[end].abs_diff(wanted))
            .expect("m > k leaves room for every level");
        ends.push(end);
        previous = end;
    }
    ends.push(m);
    (distinct, ends)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinal_levels_are_distinct_values_per_domain() {
        let names = vec!["math".to_string(), "code".to_string()];
        let groups = assign(
            names,
            vec![0, 0, 1, 0, 1],
            &[3.0, 1.0, 8.0, 3.0, 2.0],
            Binning::Ordinal,
        )
        .unwrap();
        assert_eq!(groups.level, vec![1, 0, 1, 1, 0]);
        assert_eq!(groups.level_ranges[0], vec![(1.0, 1.0), (3.0, 3.0)]);
        assert_eq!(groups.counts(), vec![vec![1, 2], vec![1, 1]]);
    }

    #[test]
    fn quantile_bins_follow_linear_interpolation() {
        // numpy.quantile([1..8], [0.25, 0.5, 0.75]) = [2.75, 4.5, 6.25]
        let values: Vec<f64> = (1..=8).map(f64::from).collect();
        let groups = assign(vec!["d".into()], vec![0; 8], &values, Binning::Quantiles(4)).unwrap();
        assert_eq!(groups.level, vec![0, 0, 1, 1, 2, 2, 3, 3]);
        // A value on an edge goes to the lower bin.
        let groups = assign(
            vec!["d".into()],
            vec![0; 3],
            &[1.0, 2.0, 3.0],
            Binning::Quantiles(2),
        )
        .unwrap();
        assert_eq!(groups.level, vec![0, 0, 1]);
    }

    #[test]
    fn tied_quantile_bins_are_never_empty() {
        // Skewed ratings as in real data: 81% one value. Four bins keep four levels, edges at
        // distinct values; numpy's edges (all 8) would leave two levels empty.
        let mut values = Vec::new();
        for (value, count) in [
            (2.0, 3),
            (3.0, 4),
            (4.0, 2),
            (5.0, 8),
            (6.0, 23),
            (7.0, 431),
        ] {
            values.extend(std::iter::repeat_n(value, count));
        }
        values.extend(std::iter::repeat_n(8.0, 2224));
        values.extend(std::iter::repeat_n(9.0, 55));
        let n = values.len();
        let groups = assign(
            vec!["code".into()],
            vec![0; n],
            &values,
            Binning::Quantiles(4),
        )
        .unwrap();
        assert_eq!(groups.counts(), vec![vec![40, 431, 2224, 55]]);
        assert_eq!(
            groups.level_ranges[0],
            vec![(2.0, 6.0), (7.0, 7.0), (8.0, 8.0), (9.0, 9.0)]
        );
        assert!((groups.level_means[0][0] - 204.0 / 40.0).abs() < 1e-12);
        // Fewer distinct values than bins: one level each.
        let groups = assign(
            vec!["d".into()],
            vec![0; 5],
            &[1.0, 1.0, 2.0, 2.0, 2.0],
            Binning::Quantiles(4),
        )
        .unwrap();
        assert_eq!(groups.counts(), vec![vec![2, 3]]);
        // Without ties, numpy's bins: [1..10] in 4 -> edges 3.25, 5.5, 7.75.
        let values: Vec<f64> = (1..=10).map(f64::from).collect();
        let groups = assign(
            vec!["d".into()],
            vec![0; 10],
            &values,
            Binning::Quantiles(4),
        )
        .unwrap();
        assert_eq!(groups.level, vec![0, 0, 0, 1, 1, 2, 2, 3, 3, 3]);
    }

    #[test]
    fn fractions_need_bins_and_nan_is_refused() {
        let err = assign(vec!["d".into()], vec![0, 0], &[1.0, 2.5], Binning::Ordinal).unwrap_err();
        assert_eq!(err, LevelError::NotWhole { row: 1, value: 2.5 });
        let err = assign(
            vec!["d".into()],
            vec![0],
            &[f64::NAN],
            Binning::Quantiles(3),
        )
        .unwrap_err();
        assert!(matches!(err, LevelError::NotFinite { row: 0, .. }));
    }
}
