//! The reweighting rules. Each returns one weight per row; weights average 1 over whatever
//! they preserve (a domain, or the whole table), so the weighted size equals the row count.

use std::collections::HashMap;
use std::fmt;

use super::levels::{Groups, histogram_mean};

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
    /// The level histogram moved toward its mirror image by `strength` (1: all the way; less
    /// when `--min-ess` tempered it).
    Mirrored { direction: Direction, strength: f64 },
    /// Mirroring would have moved the mean difficulty the other way (or nowhere): weights
    /// stay 1. The domain's mean difficulty, and what the mirrored histogram's would be.
    AlreadyLeaning {
        direction: Direction,
        mean: f64,
        mirrored_mean: f64,
    },
    /// Explicit level proportions were applied, by `strength` (1: exactly).
    Targeted { strength: f64 },
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

/// Per domain: mirror the level histogram toward its direction when that moves the mean
/// difficulty the requested way, or apply explicit target proportions; other domains keep
/// weight 1. With `min_ess` (a fraction of the domain's rows), a domain whose new histogram
/// would leave an effective sample size below it gets the histogram `(1 - t) p + t q` between
/// its own `p` and the new `q` instead, with the largest `t` that holds it: the mean still
/// moves the requested way, only less far.
pub fn flip(
    groups: &Groups,
    directions: &HashMap<usize, Direction>,
    targets: &HashMap<usize, Vec<f64>>,
    min_ess: Option<f64>,
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
        let wanted = if let Some(target) = targets.get(&d) {
            normalise_target(name, target, &counts[d])?
        } else if let Some(&direction) = directions.get(&d) {
            let mut mirrored: Vec<f64> = current.iter().rev().copied().collect();
            // Mass mirrored onto a level no row is in has no rows to carry it.
            for (share, &count) in mirrored.iter_mut().zip(&counts[d]) {
                if count == 0 {
                    *share = 0.0;
                }
            }
            let sum: f64 = mirrored.iter().sum();
            mirrored.iter_mut().for_each(|s| *s /= sum);
            let means = &groups.level_means[d];
            let (mean, mirrored_mean) = (
                histogram_mean(&current, means),
                histogram_mean(&mirrored, means),
            );
            let shift = mirrored_mean - mean;
            let tolerance = 1e-12 * mean.abs().max(1.0);
            let moves_right_way = match direction {
                Direction::Hard => shift > tolerance,
                Direction::Easy => shift < -tolerance,
            };
            if !moves_right_way {
                adjustments[d] = Adjustment::AlreadyLeaning {
                    direction,
                    mean,
                    mirrored_mean,
                };
                continue;
            }
            mirrored
        } else {
            continue;
        };
        let strength = min_ess.map_or(1.0, |f| tempering(&current, &wanted, &counts[d], f));
        adjustments[d] = match targets.contains_key(&d) {
            true => Adjustment::Targeted { strength },
            false => Adjustment::Mirrored {
                direction: directions[&d],
                strength,
            },
        };
        shares_wanted[d] = Some(
            current
                .iter()
                .zip(&wanted)
                .map(|(p, q)| (1.0 - strength) * p + strength * q)
                .collect(),
        );
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

/// The largest `t` in [0, 1] for which the histogram `(1 - t) p + t q` keeps an effective
/// sample size of at least `fraction` of the domain's `n` rows. Each row of level k weighs
/// `h_k n / c_k`, so ESS = 1 / sum_k h_k^2 / c_k; with `h = p + t (q - p)` and `p_k = c_k / n`
/// the cross term vanishes (the differences sum to 0), leaving 1 / (1/n + t^2 C) with
/// `C = sum_k (q_k - p_k)^2 / c_k`: solved exactly.
fn tempering(current: &[f64], wanted: &[f64], counts: &[usize], fraction: f64) -> f64 {
    let n: usize = counts.iter().sum();
    let spread: f64 = current
        .iter()
        .zip(wanted)
        .zip(counts)
        .filter(|(_, c)| **c > 0)
        .map(|((p, q), &c)| (q - p).powi(2) / c as f64)
        .sum();
    if spread <= 0.0 {
        return 1.0;
    }
    let room = (1.0 / fraction - 1.0) / (n as f64 * spread);
    room.sqrt().min(1.0)
}

/// Effective sample size of each domain's weights, `(sum w)^2 / sum w^2`: how many rows the
/// weighted domain is worth.
pub fn effective_sample_sizes(domain: &[usize], domains: usize, weights: &[f64]) -> Vec<f64> {
    let mut sums = vec![(0.0, 0.0); domains];
    for (&d, &w) in domain.iter().zip(weights) {
        sums[d].0 += w;
        sums[d].1 += w * w;
    }
    sums.iter()
        .map(|&(s, s2)| if s2 > 0.0 { s * s / s2 } else { 0.0 })
        .collect()
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
        let (weights, adjustments) = flip(&groups, &directions, &HashMap::new(), None).unwrap();
        assert_eq!(
            adjustments,
            vec![
                Adjustment::Mirrored {
                    direction: Direction::Hard,
                    strength: 1.0
                },
                Adjustment::Mirrored {
                    direction: Direction::Easy,
                    strength: 1.0
                }
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
        let (weights, adjustments) = flip(&groups, &directions, &HashMap::new(), None).unwrap();
        // math: mean difficulty 10/6, mirrored 14/6; code: 7/4, mirrored 5/4.
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        match &adjustments[..] {
            [
                Adjustment::AlreadyLeaning {
                    direction: Direction::Easy,
                    mean: m0,
                    mirrored_mean: r0,
                },
                Adjustment::AlreadyLeaning {
                    direction: Direction::Hard,
                    mean: m1,
                    mirrored_mean: r1,
                },
            ] => {
                assert!(close(*m0, 10.0 / 6.0) && close(*r0, 14.0 / 6.0));
                assert!(close(*m1, 7.0 / 4.0) && close(*r1, 5.0 / 4.0));
            }
            other => panic!("{other:?}"),
        }
        assert!(weights.iter().all(|&w| w == 1.0));
    }

    #[test]
    fn min_ess_tempers_the_flip_and_keeps_its_direction() {
        // Skewed: 90 rows at 8, 9 at 7, 1 at 2. Easy up mirrors 90% of the mass onto one row.
        let mut difficulty = vec![8.0; 90];
        difficulty.extend([7.0; 9]);
        difficulty.push(2.0);
        let groups = assign(
            vec!["code".into()],
            vec![0; 100],
            &difficulty,
            Binning::Ordinal,
        )
        .unwrap();
        let easy = HashMap::from([(0, Direction::Easy)]);
        let (full, _) = flip(&groups, &easy, &HashMap::new(), None).unwrap();
        let ess = |w: &[f64]| effective_sample_sizes(&groups.domain, 1, w)[0];
        assert!(ess(&full) < 2.0, "{}", ess(&full));
        let (tempered, adjustments) = flip(&groups, &easy, &HashMap::new(), Some(0.5)).unwrap();
        assert!((ess(&tempered) - 50.0).abs() < 1e-9, "{}", ess(&tempered));
        let Adjustment::Mirrored { strength, .. } = adjustments[0] else {
            panic!("{adjustments:?}")
        };
        assert!(strength > 0.0 && strength < 1.0);
        let ones = vec![1.0; 100];
        let means = |w: &[f64]| groups.mean_difficulty(w)[0];
        assert!(means(&full) < means(&tempered) && means(&tempered) < means(&ones));
        assert!((tempered.iter().sum::<f64>() - 100.0).abs() < 1e-9);
        // A flip that already holds the limit is not tempered.
        let (_, adjustments) = flip(&groups, &easy, &HashMap::new(), Some(0.001)).unwrap();
        assert_eq!(
            adjustments[0],
            Adjustment::Mirrored {
                direction: Direction::Easy,
                strength: 1.0
            }
        );
    }

    #[test]
    fn targets_give_exact_proportions() {
        let groups = math_and_code();
        let targets = HashMap::from([(0, vec![1.0, 1.0, 2.0])]);
        let (weights, adjustments) = flip(&groups, &HashMap::new(), &targets, None).unwrap();
        assert_eq!(adjustments[0], Adjustment::Targeted { strength: 1.0 });
        let mass = groups.mass(&weights);
        for (got, want) in mass[0].iter().zip([1.5, 1.5, 3.0]) {
            assert!((got - want).abs() < 1e-12);
        }
        let err = flip(
            &groups,
            &HashMap::new(),
            &HashMap::from([(1, vec![1.0])]),
            None,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "the target for domain 'code' gives 1 proportions but the domain has 2 difficulty levels"
        );
        let err = flip(
            &groups,
            &HashMap::new(),
            &HashMap::from([(1, vec![-1.0, 2.0])]),
            None,
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
