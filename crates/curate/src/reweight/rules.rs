//! The reweighting rules. Each returns one weight per row; weights average 1 over whatever
//! they preserve (a domain, or the whole table), so the weighted size equals the row count.

use std::collections::HashMap;
use std::fmt;

use super::levels::Groups;

/// Which end of the difficulty scale a domain should lean toward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Hard,
    Easy,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Hard => "hard",
            Direction::Easy => "easy",
        })
    }
}

/// What the flip rule did to one domain.
#[derive(Debug, Clone, PartialEq)]
pub enum Adjustment {
    /// No direction or target: weights stay 1.
    Untouched,
    /// The level histogram was mirrored toward `Direction`.
    Mirrored(Direction),
    /// Mirroring would have moved mass the other way (or nowhere): weights stay 1.
    AlreadyLeaning(Direction),
    /// Explicit level proportions were applied.
    Targeted,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TargetError {
    /// The target lists `given` proportions but the domain has `levels` levels.
    WrongLength {
        domain: String,
        given: usize,
        levels: usize,
    },
    /// A proportion is negative or not finite, or all are zero.
    Invalid { domain: String, detail: String },
    /// Mass was asked for a level no row is in (only possible with quantile bins).
    EmptyLevel { domain: String, level: usize },
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetError::WrongLength {
                domain,
                given,
                levels,
            } => write!(
                f,
                "the target for domain '{domain}' gives {given} proportions but the domain has \
                 {levels} difficulty levels"
            ),
            TargetError::Invalid { domain, detail } => {
                write!(f, "the target for domain '{domain}': {detail}")
            }
            TargetError::EmptyLevel { domain, level } => write!(
                f,
                "the target for domain '{domain}' puts mass on level {} but no row of the domain \
                 is in it",
                level + 1
            ),
        }
    }
}

/// Per domain: mirror the level histogram toward its direction when that moves mass the
/// requested way, or apply explicit target proportions; other domains keep weight 1.
pub fn flip(
    groups: &Groups,
    directions: &HashMap<usize, Direction>,
    targets: &HashMap<usize, Vec<f64>>,
) -> Result<(Vec<f64>, Vec<Adjustment>), TargetError> {
    let counts = groups.counts();
    let mut shares_wanted: Vec<Option<Vec<f64>>> = vec![None; groups.domains()];
    let mut adjustments = vec![Adjustment::Untouched; groups.domains()];
    for d in 0..groups.domains() {
        let name = &groups.domain_names[d];
        let total: usize = counts[d].iter().sum();
        if total == 0 {
            continue;
        }
        let current: Vec<f64> = counts[d].iter().map(|&c| c as f64 / total as f64).collect();
        if let Some(target) = targets.get(&d) {
            shares_wanted[d] = Some(normalise_target(name, target, &counts[d])?);
            adjustments[d] = Adjustment::Targeted;
        } else if let Some(&direction) = directions.get(&d) {
            let mut mirrored: Vec<f64> = current.iter().rev().copied().collect();
            // Quantile bins can be empty; mass mirrored onto them has no rows to carry it.
            for (share, &count) in mirrored.iter_mut().zip(&counts[d]) {
                if count == 0 {
                    *share = 0.0;
                }
            }
            let sum: f64 = mirrored.iter().sum();
            mirrored.iter_mut().for_each(|s| *s /= sum);
            let shift = mean_level(&mirrored) - mean_level(&current);
            let moves_right_way = match direction {
                Direction::Hard => shift > 1e-12,
                Direction::Easy => shift < -1e-12,
            };
            if moves_right_way {
                shares_wanted[d] = Some(mirrored);
                adjustments[d] = Adjustment::Mirrored(direction);
            } else {
                adjustments[d] = Adjustment::AlreadyLeaning(direction);
            }
        }
    }
    let weights = (0..groups.rows())
        .map(|i| {
            let (d, k) = (groups.domain[i], groups.level[i]);
            match &shares_wanted[d] {
                Some(shares) => {
                    let total: usize = counts[d].iter().sum();
                    shares[k] * total as f64 / counts[d][k] as f64
                }
                None => 1.0,
            }
        })
        .collect();
    Ok((weights, adjustments))
}

fn mean_level(shares: &[f64]) -> f64 {
    shares.iter().enumerate().map(|(k, s)| k as f64 * s).sum()
}

fn normalise_target(
    domain: &str,
    target: &[f64],
    counts: &[usize],
) -> Result<Vec<f64>, TargetError> {
    if target.len() != counts.len() {
        return Err(TargetError::WrongLength {
            domain: domain.to_string(),
            given: target.len(),
            levels: counts.len(),
        });
    }
    if let Some(bad) = target.iter().find(|p| !p.is_finite() || **p < 0.0) {
        return Err(TargetError::Invalid {
            domain: domain.to_string(),
            detail: format!("proportion {bad} is not a non-negative number"),
        });
    }
    let sum: f64 = target.iter().sum();
    if sum <= 0.0 {
        return Err(TargetError::Invalid {
            domain: domain.to_string(),
            detail: "proportions sum to 0".to_string(),
        });
    }
    if let Some(level) = (0..counts.len()).find(|&k| counts[k] == 0 && target[k] > 0.0) {
        return Err(TargetError::EmptyLevel {
            domain: domain.to_string(),
            level,
        });
    }
    Ok(target.iter().map(|p| p / sum).collect())
}

/// Whose total the weights keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preserve {
    Domain,
    Overall,
}

/// Influence-driven weights: each (domain, level) group gets `exp(tau * z)` where z is its mean
/// score standardised across groups; then weights are scaled so each domain's (or the whole
/// table's) weighted size equals its row count.
pub(crate) fn from_group_scores(
    groups: &Groups,
    scores: &[f64],
    tau: f64,
    preserve: Preserve,
) -> Vec<f64> {
    let counts = groups.counts();
    let sums = groups.mass(scores);
    let means: Vec<(usize, usize, f64)> = (0..groups.domains())
        .flat_map(|d| (0..groups.levels_in(d)).map(move |k| (d, k)))
        .filter(|&(d, k)| counts[d][k] > 0)
        .map(|(d, k)| (d, k, sums[d][k] / counts[d][k] as f64))
        .collect();
    let n = means.len() as f64;
    let mean = means.iter().map(|m| m.2).sum::<f64>() / n;
    let std = (means.iter().map(|m| (m.2 - mean).powi(2)).sum::<f64>() / n).sqrt();
    let mut group_weight: Vec<Vec<f64>> = counts.iter().map(|c| vec![1.0; c.len()]).collect();
    for &(d, k, m) in &means {
        let z = if std > 0.0 { (m - mean) / std } else { 0.0 };
        group_weight[d][k] = (tau * z).exp();
    }
    let raw: Vec<f64> = (0..groups.rows())
        .map(|i| group_weight[groups.domain[i]][groups.level[i]])
        .collect();
    rescale(&raw, &groups.domain, preserve)
}

/// A random score per (domain, level) group, standard normal and seeded, given to each of its
/// rows: with [`from_group_scores`] the random control of influence-driven weights (the same
/// exp(tau * z) spread, assigned to groups at random).
pub(crate) fn random_group_scores(groups: &Groups, seed: u64) -> Vec<f64> {
    let mut rng = crate::rng::SplitMix64::new(seed);
    let draws: Vec<Vec<f64>> = (0..groups.domains())
        .map(|d| (0..groups.levels_in(d)).map(|_| rng.normal()).collect())
        .collect();
    (0..groups.rows())
        .map(|i| draws[groups.domain[i]][groups.level[i]])
        .collect()
}

/// Row indices grouped by key, groups in key order.
pub(crate) fn partition(keys: &[usize]) -> Vec<Vec<usize>> {
    let mut sets: Vec<Vec<usize>> = Vec::new();
    for (row, &key) in keys.iter().enumerate() {
        if sets.len() <= key {
            sets.resize_with(key + 1, Vec::new);
        }
        sets[key].push(row);
    }
    sets.retain(|rows| !rows.is_empty());
    sets
}

fn preserved_sets(domain: &[usize], preserve: Preserve) -> Vec<Vec<usize>> {
    match preserve {
        Preserve::Domain => partition(domain),
        Preserve::Overall => vec![(0..domain.len()).collect()],
    }
}

/// Scale weights so each preserved set averages 1.
pub(crate) fn rescale(weights: &[f64], domain: &[usize], preserve: Preserve) -> Vec<f64> {
    let mut out = vec![0.0; weights.len()];
    for rows in preserved_sets(domain, preserve) {
        let sum: f64 = rows.iter().map(|&i| weights[i]).sum();
        for &i in &rows {
            out[i] = if sum > 0.0 {
                weights[i] * rows.len() as f64 / sum
            } else {
                0.0
            };
        }
    }
    out
}

/// LESS-style selection: weight 1 for the top `fraction` of rows by score (per domain when
/// `per_domain` is given), 0 for the rest. Ties go to the row with the smaller `tie_rank`
/// (its position in id order).
pub(crate) fn top_fraction(
    scores: &[f64],
    fraction: f64,
    per_domain: Option<&[usize]>,
    tie_rank: &[usize],
) -> Vec<f64> {
    let mut weights = vec![0.0; scores.len()];
    let sets = match per_domain {
        Some(domain) => partition(domain),
        None => vec![(0..scores.len()).collect()],
    };
    for mut rows in sets {
        let keep = ((fraction * rows.len() as f64).round() as usize)
            .clamp(usize::from(fraction > 0.0), rows.len());
        rows.sort_by(|&a, &b| {
            scores[b]
                .total_cmp(&scores[a])
                .then(tie_rank[a].cmp(&tie_rank[b]))
        });
        for &i in rows.iter().take(keep) {
            weights[i] = 1.0;
        }
    }
    weights
}

impl std::error::Error for TargetError {}

#[derive(Debug, Clone, PartialEq)]
pub struct CapError {
    pub cap: f64,
    pub mean: f64,
}

impl fmt::Display for CapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cap {} is below the mean weight {} it must preserve; a cap of at least {} is needed",
            self.cap, self.mean, self.mean
        )
    }
}

impl std::error::Error for CapError {}

/// Clip weights at `cap` and give the clipped mass back to the uncapped rows of the same
/// preserved set, repeating until none exceeds the cap (water-filling), so totals hold.
pub fn cap(
    weights: &[f64],
    domain: &[usize],
    preserve: Preserve,
    cap: f64,
) -> Result<Vec<f64>, CapError> {
    let mut out = weights.to_vec();
    for rows in preserved_sets(domain, preserve) {
        let total: f64 = rows.iter().map(|&i| weights[i]).sum();
        let mean = total / rows.len() as f64;
        if cap < mean * (1.0 - 1e-12) {
            return Err(CapError { cap, mean });
        }
        let mut capped = vec![false; rows.len()];
        loop {
            let capped_mass = capped.iter().filter(|&&c| c).count() as f64 * cap;
            let free_mass: f64 = rows
                .iter()
                .zip(&capped)
                .filter(|(_, c)| !**c)
                .map(|(&i, _)| weights[i])
                .sum();
            let scale = if free_mass > 0.0 {
                (total - capped_mass) / free_mass
            } else {
                0.0
            };
            let mut changed = false;
            for (j, &i) in rows.iter().enumerate() {
                if capped[j] {
                    out[i] = cap;
                } else {
                    out[i] = weights[i] * scale;
                    if out[i] > cap * (1.0 + 1e-12) {
                        capped[j] = true;
                        changed = true;
                    }
                }
            }
            if !changed {
                break;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reweight::levels::{Binning, assign};

    fn math_and_code() -> Groups {
        // math: levels 1,2,3 with counts 3,2,1 (easy-heavy); code: levels 1,2 with counts 1,3.
        let domain = vec![0, 0, 0, 0, 0, 0, 1, 1, 1, 1];
        let difficulty = [1.0, 1.0, 1.0, 2.0, 2.0, 3.0, 1.0, 2.0, 2.0, 2.0];
        assign(
            vec!["math".into(), "code".into()],
            domain,
            &difficulty,
            Binning::Ordinal,
        )
        .unwrap()
    }

    fn domain_totals(groups: &Groups, weights: &[f64]) -> Vec<f64> {
        groups
            .mass(weights)
            .iter()
            .map(|m| m.iter().sum())
            .collect()
    }

    #[test]
    fn flip_mirrors_toward_the_requested_end() {
        let groups = math_and_code();
        let directions = HashMap::from([(0, Direction::Hard), (1, Direction::Easy)]);
        let (weights, adjustments) = flip(&groups, &directions, &HashMap::new()).unwrap();
        assert_eq!(
            adjustments,
            vec![
                Adjustment::Mirrored(Direction::Hard),
                Adjustment::Mirrored(Direction::Easy)
            ]
        );
        let mass = groups.mass(&weights);
        // math shares 3/6,2/6,1/6 become 1/6,2/6,3/6; code 1/4,3/4 becomes 3/4,1/4.
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert!(close(mass[0][0], 1.0) && close(mass[0][1], 2.0) && close(mass[0][2], 3.0));
        assert!(close(mass[1][0], 3.0) && close(mass[1][1], 1.0));
        assert_eq!(domain_totals(&groups, &weights), vec![6.0, 4.0]);
    }

    #[test]
    fn flip_leaves_a_domain_already_leaning_the_right_way() {
        let groups = math_and_code();
        let directions = HashMap::from([(0, Direction::Easy), (1, Direction::Hard)]);
        let (weights, adjustments) = flip(&groups, &directions, &HashMap::new()).unwrap();
        assert_eq!(
            adjustments,
            vec![
                Adjustment::AlreadyLeaning(Direction::Easy),
                Adjustment::AlreadyLeaning(Direction::Hard)
            ]
        );
        assert!(weights.iter().all(|&w| w == 1.0));
    }

    #[test]
    fn targets_give_exact_proportions() {
        let groups = math_and_code();
        let targets = HashMap::from([(0, vec![1.0, 1.0, 2.0])]);
        let (weights, adjustments) = flip(&groups, &HashMap::new(), &targets).unwrap();
        assert_eq!(adjustments[0], Adjustment::Targeted);
        let mass = groups.mass(&weights);
        for (got, want) in mass[0].iter().zip([1.5, 1.5, 3.0]) {
            assert!((got - want).abs() < 1e-12);
        }
        let err = flip(&groups, &HashMap::new(), &HashMap::from([(1, vec![1.0])])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the target for domain 'code' gives 1 proportions but the domain has 2 difficulty levels"
        );
        let err = flip(
            &groups,
            &HashMap::new(),
            &HashMap::from([(1, vec![-1.0, 2.0])]),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "the target for domain 'code': proportion -1 is not a non-negative number"
        );
    }

    #[test]
    fn group_scores_favour_helpful_groups_and_keep_totals() {
        let groups = math_and_code();
        let scores = [1.0, 1.0, 1.0, -1.0, -1.0, 3.0, 0.0, 0.0, 0.0, 0.0];
        let weights = from_group_scores(&groups, &scores, 1.0, Preserve::Domain);
        assert!(weights[5] > weights[0] && weights[0] > weights[3]);
        let totals = domain_totals(&groups, &weights);
        assert!((totals[0] - 6.0).abs() < 1e-9 && (totals[1] - 4.0).abs() < 1e-9);
        let flat = from_group_scores(&groups, &[2.0; 10], 1.0, Preserve::Overall);
        assert!(flat.iter().all(|&w| (w - 1.0).abs() < 1e-12));
    }

    #[test]
    fn top_fraction_breaks_ties_by_id_order() {
        let in_order = [0, 1, 2, 3];
        let weights = top_fraction(&[0.5, 0.9, 0.5, 0.1], 0.5, None, &in_order);
        assert_eq!(weights, vec![1.0, 1.0, 0.0, 0.0]);
        let weights = top_fraction(&[0.5, 0.9, 0.5, 0.1], 0.5, None, &[3, 0, 1, 2]);
        assert_eq!(weights, vec![0.0, 1.0, 1.0, 0.0]);
        let weights = top_fraction(&[0.5, 0.9, 0.5, 0.1], 0.5, Some(&[0, 0, 1, 1]), &in_order);
        assert_eq!(weights, vec![0.0, 1.0, 1.0, 0.0]);
        assert_eq!(
            top_fraction(&[1.0, 2.0, 3.0], 0.01, None, &in_order[..3]),
            vec![0.0, 0.0, 1.0]
        );
    }

    #[test]
    fn cap_water_fills_and_keeps_totals() {
        let weights = [4.0, 1.0, 0.5, 0.5, 0.0];
        let capped = cap(&weights, &[0; 5], Preserve::Overall, 2.0).unwrap();
        assert!((capped.iter().sum::<f64>() - 6.0).abs() < 1e-12);
        assert!(capped.iter().all(|&w| w <= 2.0 + 1e-12));
        assert_eq!(capped[0], 2.0);
        // The freed mass goes to the others in proportion: 1, 0.5, 0.5 scaled by 2 -> 2, 1, 1.
        assert!((capped[1] - 2.0).abs() < 1e-12 && (capped[2] - 1.0).abs() < 1e-12);
        let err = cap(&weights, &[0; 5], Preserve::Overall, 1.0).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cap 1 is below the mean weight 1.2")
        );
    }
}
