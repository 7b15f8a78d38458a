//! Difficulty levels: each row's domain and its 0-based level within that domain.

use std::fmt;

/// How difficulty values become ordered levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binning {
    /// Every distinct (whole-number) value present in a domain is one level.
    Ordinal,
    /// K quantile bins per domain, edges interpolated linearly (as numpy's default quantile);
    /// a value on an edge falls in the lower bin.
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
                let edges: Vec<f64> = (1..k)
                    .map(|j| quantile(&values, j as f64 / k as f64))
                    .collect();
                for &i in &rows {
                    level[i] = edges.partition_point(|&e| e < difficulty[i]);
                }
                k
            }
        };
        let mut ranges = vec![(f64::NAN, f64::NAN); levels];
        for &i in &rows {
            let (lo, hi) = &mut ranges[level[i]];
            let v = difficulty[i];
            *lo = if lo.is_nan() { v } else { lo.min(v) };
            *hi = if hi.is_nan() { v } else { hi.max(v) };
        }
        level_ranges.push(ranges);
    }
    Ok(Groups {
        domain_names,
        domain,
        level,
        level_ranges,
    })
}

/// Linear-interpolation quantile of sorted values.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let position = q * (sorted.len() - 1) as f64;
    let lower = position.floor() as usize;
    let upper = position.ceil() as usize;
    let fraction = position - lower as f64;
    sorted[lower] + (sorted[upper] - sorted[lower]) * fraction
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
