//! Source-vote consensus with CROWDLAB's weights and posterior, as cleanlab 2.9.0's
//! `get_label_quality_multiannotator` (consensus `best_quality`, quality `crowdlab`) computes
//! them. Each prediction source is an annotator; a prior (the mean of the probability sources)
//! plays the model.

use super::Probabilities;
use super::numeric::{argmax, pairwise_sum};
use crate::rng::SplitMix64;

/// Lower bound of weights and error rates (`CLIPPING_LOWER_BOUND`).
const CLIP: f64 = 1e-6;

/// Annotations: per row, per annotator, the class chosen (or none).
#[derive(Debug, Clone)]
pub struct Annotations {
    pub annotators: usize,
    /// Row-major `rows x annotators`.
    pub labels: Vec<Option<usize>>,
}

impl Annotations {
    pub fn rows(&self) -> usize {
        self.labels.len() / self.annotators.max(1)
    }

    #[inline]
    pub fn get(&self, row: usize, annotator: usize) -> Option<usize> {
        self.labels[row * self.annotators + annotator]
    }

    fn count(&self, row: usize) -> usize {
        (0..self.annotators)
            .filter(|&a| self.get(row, a).is_some())
            .count()
    }
}

/// Why CROWDLAB cannot run on these annotations (cleanlab's input checks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VoteError {
    TooFewAnnotators,
    /// A row no annotator labelled.
    Unlabelled(usize),
    /// An annotator that labelled nothing.
    Silent(usize),
    /// Every row has a single annotation.
    NoOverlap,
}

impl std::fmt::Display for VoteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VoteError::TooFewAnnotators => f.write_str("the vote needs at least two sources"),
            VoteError::Unlabelled(row) => {
                write!(f, "row {} has no prediction from any source", row + 1)
            }
            VoteError::Silent(a) => write!(f, "source {} predicts no row", a + 1),
            VoteError::NoOverlap => f.write_str("no row has predictions from two sources"),
        }
    }
}

/// The consensus and what it rests on.
#[derive(Debug, Clone)]
pub struct Consensus {
    pub label: Vec<usize>,
    /// CROWDLAB posterior `P(class | annotations, prior)`, row-major.
    pub posterior: Probabilities,
    /// Posterior probability of the consensus label (`consensus_quality_score`).
    pub quality: Vec<f64>,
    /// Share of the row's annotators that chose the consensus label.
    pub agreement: Vec<f64>,
    pub model_weight: f64,
    pub annotator_weights: Vec<f64>,
    /// Per annotator: CROWDLAB's `annotator_quality`.
    pub annotator_quality: Vec<f64>,
    /// Per annotator: share of its labels equal to the consensus.
    pub agreement_with_consensus: Vec<f64>,
}

/// Consensus (`best_quality`) with CROWDLAB weights; ties no rule settles are drawn with `seed`.
pub fn crowdlab(
    annotations: &Annotations,
    prior: &Probabilities,
    seed: u64,
) -> Result<Consensus, VoteError> {
    validate(annotations)?;
    let counts: Vec<usize> = (0..annotations.rows())
        .map(|i| annotations.count(i))
        .collect();
    let majority = majority_vote(annotations, prior, seed);
    let first = consensus_stats(annotations, prior, &counts, &majority);
    let label: Vec<usize> = (0..annotations.rows())
        .map(|i| {
            let row = first.posterior.row(i);
            let top = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            if row.iter().filter(|&&p| p == top).count() == 1 {
                argmax(row)
            } else {
                majority[i]
            }
        })
        .collect();
    let stats = consensus_stats(annotations, prior, &counts, &label);
    let quality: Vec<f64> = label
        .iter()
        .enumerate()
        .map(|(i, &l)| stats.posterior.get(i, l))
        .collect();
    let annotator_quality = annotator_quality(annotations, &stats, &label, &counts);
    let agreement_with_consensus = (0..annotations.annotators)
        .map(|a| {
            let (mut same, mut total) = (0usize, 0usize);
            for (i, &l) in label.iter().enumerate() {
                if let Some(x) = annotations.get(i, a) {
                    total += 1;
                    same += usize::from(x == l);
                }
            }
            same as f64 / total as f64
        })
        .collect();
    Ok(Consensus {
        label,
        posterior: stats.posterior,
        quality,
        agreement: stats.agreement,
        model_weight: stats.model_weight,
        annotator_weights: stats.annotator_weights,
        annotator_quality,
        agreement_with_consensus,
    })
}

/// The vote over rows some source predicts: CROWDLAB on those rows (exactly cleanlab's result
/// on them), while a row no source predicts keeps the prior as its posterior and has no
/// consensus label. cleanlab refuses such rows; a model asked about every row leaves some
/// unanswered (or answered with several classes), and those rows should not stop the rest.
pub fn crowdlab_where_predicted(
    annotations: &Annotations,
    prior: &Probabilities,
    seed: u64,
) -> Result<(Vec<Option<usize>>, Probabilities, Consensus), VoteError> {
    let rows = annotations.rows();
    let kept: Vec<usize> = (0..rows).filter(|&i| annotations.count(i) > 0).collect();
    if kept.len() == rows || kept.is_empty() {
        let consensus = crowdlab(annotations, prior, seed)?;
        let label = consensus.label.iter().map(|&l| Some(l)).collect();
        return Ok((label, consensus.posterior.clone(), consensus));
    }
    let k = prior.classes();
    let a = annotations.annotators;
    let subset = Annotations {
        annotators: a,
        labels: kept
            .iter()
            .flat_map(|&i| annotations.labels[i * a..(i + 1) * a].iter().copied())
            .collect(),
    };
    let subset_prior = Probabilities::new(
        k,
        kept.iter()
            .flat_map(|&i| prior.row(i).iter().copied())
            .collect(),
    );
    let consensus = crowdlab(&subset, &subset_prior, seed)?;
    let mut label = vec![None; rows];
    let mut posterior = prior.values().to_vec();
    for (j, &i) in kept.iter().enumerate() {
        label[i] = Some(consensus.label[j]);
        posterior[i * k..(i + 1) * k].copy_from_slice(consensus.posterior.row(j));
    }
    Ok((label, Probabilities::new(k, posterior), consensus))
}

fn validate(annotations: &Annotations) -> Result<(), VoteError> {
    if annotations.annotators < 2 {
        return Err(VoteError::TooFewAnnotators);
    }
    let rows = annotations.rows();
    if let Some(row) = (0..rows).find(|&i| annotations.count(i) == 0) {
        return Err(VoteError::Unlabelled(row));
    }
    if let Some(a) =
        (0..annotations.annotators).find(|&a| (0..rows).all(|i| annotations.get(i, a).is_none()))
    {
        return Err(VoteError::Silent(a));
    }
    if (0..rows).all(|i| annotations.count(i) == 1) {
        return Err(VoteError::NoOverlap);
    }
    Ok(())
}

/// `get_majority_vote_label`: the most chosen class; ties go to the higher prior, then the
/// rarer class overall, then the class chosen by annotators that agree more with the untied
/// majority, then a seeded draw.
pub(crate) fn majority_vote(
    annotations: &Annotations,
    prior: &Probabilities,
    seed: u64,
) -> Vec<usize> {
    let rows = annotations.rows();
    let classes = prior.classes();
    let mut votes = vec![0usize; rows * classes];
    for i in 0..rows {
        for a in 0..annotations.annotators {
            if let Some(k) = annotations.get(i, a) {
                votes[i * classes + k] += 1;
            }
        }
    }
    let mut label = vec![usize::MAX; rows];
    let mut tied: Vec<(usize, Vec<usize>)> = Vec::new();
    for i in 0..rows {
        let row = &votes[i * classes..(i + 1) * classes];
        let top = *row.iter().max().unwrap_or(&0);
        let modes: Vec<usize> = (0..classes).filter(|&k| row[k] == top).collect();
        if modes.len() == 1 {
            label[i] = modes[0];
        } else {
            tied.push((i, modes));
        }
    }
    let untied: Vec<usize> = (0..rows).filter(|&i| label[i] != usize::MAX).collect();
    // 1. the prior
    tied = keep_best(tied, &mut label, |i, k| prior.get(i, k), true);
    // 2. the class chosen least often overall
    if !tied.is_empty() {
        let mut frequency = vec![0usize; classes];
        for (j, v) in votes.iter().enumerate() {
            frequency[j % classes] += v;
        }
        tied = keep_best(tied, &mut label, |_, k| frequency[k] as f64, false);
    }
    // 3. annotators' agreement with the untied majority
    if !tied.is_empty() {
        let mut agreement: Vec<f64> = (0..annotations.annotators)
            .map(|a| {
                let (mut same, mut total) = (0usize, 0usize);
                for &i in &untied {
                    if let Some(x) = annotations.get(i, a) {
                        total += 1;
                        same += usize::from(x == label[i]);
                    }
                }
                if total == 0 {
                    f64::NAN
                } else {
                    same as f64 / total as f64
                }
            })
            .collect();
        let known: Vec<f64> = agreement.iter().copied().filter(|x| !x.is_nan()).collect();
        let average = pairwise_sum(&known) / known.len() as f64;
        for value in agreement.iter_mut().filter(|x| x.is_nan()) {
            *value = average;
        }
        tied = keep_best(
            tied,
            &mut label,
            |i, k| {
                let chosen: Vec<f64> = (0..annotations.annotators)
                    .filter(|&a| annotations.get(i, a) == Some(k))
                    .map(|a| agreement[a])
                    .collect();
                pairwise_sum(&chosen) / chosen.len() as f64
            },
            true,
        );
    }
    // 4. a seeded draw
    for (i, modes) in tied {
        let mut rng = SplitMix64::new(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        label[i] = modes[(rng.next_u64() % modes.len() as u64) as usize];
    }
    label
}

/// Settle ties by a score (highest or lowest wins); rows still tied are returned.
fn keep_best(
    tied: Vec<(usize, Vec<usize>)>,
    label: &mut [usize],
    score: impl Fn(usize, usize) -> f64,
    highest: bool,
) -> Vec<(usize, Vec<usize>)> {
    let mut still = Vec::new();
    for (i, modes) in tied {
        let scores: Vec<f64> = modes.iter().map(|&k| score(i, k)).collect();
        let best = if highest {
            scores.iter().copied().fold(f64::NEG_INFINITY, f64::max)
        } else {
            scores.iter().copied().fold(f64::INFINITY, f64::min)
        };
        let winners: Vec<usize> = modes
            .iter()
            .zip(&scores)
            .filter(|&(_, &s)| s == best)
            .map(|(&k, _)| k)
            .collect();
        if winners.len() == 1 {
            label[i] = winners[0];
        } else {
            still.push((i, winners));
        }
    }
    still
}

struct Stats {
    agreement: Vec<f64>,
    posterior: Probabilities,
    model_weight: f64,
    annotator_weights: Vec<f64>,
}

/// `_get_consensus_stats` with the `crowdlab` quality method.
fn consensus_stats(
    annotations: &Annotations,
    prior: &Probabilities,
    counts: &[usize],
    consensus: &[usize],
) -> Stats {
    let rows = annotations.rows();
    let classes = prior.classes();
    let annotators = annotations.annotators;
    let agreement: Vec<f64> = (0..rows)
        .map(|i| {
            let same = (0..annotators)
                .filter(|&a| annotations.get(i, a) == Some(consensus[i]))
                .count();
            same as f64 / counts[i] as f64
        })
        .collect();
    let multi: Vec<usize> = (0..rows).filter(|&i| counts[i] != 1).collect();
    let multi_agreement: Vec<f64> = multi.iter().map(|&i| agreement[i]).collect();
    let consensus_likelihood = pairwise_sum(&multi_agreement) / multi.len() as f64;
    let non_consensus_likelihood = (1.0 - consensus_likelihood) / (classes as f64 - 1.0);
    // Error of always answering the most common consensus class.
    let mut frequency = vec![0usize; classes];
    for &i in &multi {
        frequency[consensus[i]] += 1;
    }
    let common = frequency.iter().enumerate().fold(
        0,
        |best, (k, &f)| if f > frequency[best] { k } else { best },
    );
    let baseline_error = (multi.iter().filter(|&&i| consensus[i] != common).count() as f64
        / multi.len() as f64)
        .max(CLIP);
    let annotator_weights: Vec<f64> = annotator_agreement(annotations, counts)
        .iter()
        .map(|&agree| (1.0 - (1.0 - agree) / baseline_error).max(CLIP))
        .collect();
    let model_error = multi
        .iter()
        .filter(|&&i| argmax(prior.row(i)) != consensus[i])
        .count() as f64
        / multi.len() as f64;
    let counts_f: Vec<f64> = counts.iter().map(|&c| c as f64).collect();
    let mean_count = pairwise_sum(&counts_f) / rows as f64;
    let model_weight = (1.0 - model_error / baseline_error).max(CLIP) * mean_count.sqrt();
    let mut values = vec![0.0f64; rows * classes];
    for i in 0..rows {
        let mut annotation_weight = 0.0;
        for (a, &w) in annotator_weights.iter().enumerate() {
            if annotations.get(i, a).is_some() {
                annotation_weight += w;
            }
        }
        let total = annotation_weight + model_weight;
        for k in 0..classes {
            let mut value = prior.get(i, k) * model_weight;
            for (a, &w) in annotator_weights.iter().enumerate() {
                match annotations.get(i, a) {
                    Some(x) if x == k => value += w * consensus_likelihood,
                    Some(_) => value += w * non_consensus_likelihood,
                    None => {}
                }
            }
            values[i * classes + k] = value / total;
        }
    }
    Stats {
        agreement,
        posterior: Probabilities::new(classes, values),
        model_weight,
        annotator_weights,
    }
}

/// Per annotator, how often the other annotators of the same row chose the same class
/// (`_get_annotator_agreement_with_annotators`), averaged over rows weighted by their number of
/// other annotators.
fn annotator_agreement(annotations: &Annotations, counts: &[usize]) -> Vec<f64> {
    let rows = annotations.rows();
    let annotators = annotations.annotators;
    let mut agreement: Vec<f64> = (0..annotators)
        .map(|a| {
            let mine: Vec<usize> = (0..rows)
                .filter(|&i| annotations.get(i, a).is_some())
                .collect();
            let weights: Vec<f64> = mine.iter().map(|&i| counts[i] as f64 - 1.0).collect();
            if weights.iter().all(|&w| w == 0.0) {
                return f64::NAN;
            }
            let per_row: Vec<f64> = mine
                .iter()
                .map(|&i| {
                    if counts[i] <= 1 {
                        return 0.0;
                    }
                    let own = annotations.get(i, a);
                    let same = (0..annotators)
                        .filter(|&b| annotations.get(i, b) == own)
                        .count();
                    (same as f64 - 1.0) / (counts[i] as f64 - 1.0)
                })
                .collect();
            let weighted: Vec<f64> = per_row.iter().zip(&weights).map(|(v, w)| v * w).collect();
            pairwise_sum(&weighted) / pairwise_sum(&weights)
        })
        .collect();
    let known: Vec<f64> = agreement.iter().copied().filter(|x| !x.is_nan()).collect();
    if known.len() < agreement.len() {
        let average = pairwise_sum(&known) / known.len() as f64;
        for value in agreement.iter_mut().filter(|x| x.is_nan()) {
            *value = average;
        }
    }
    agreement
}

/// `_get_annotator_quality` (crowdlab): a blend of the mean posterior probability of each
/// annotator's labels and its agreement with the consensus, weighted by the model's weight.
fn annotator_quality(
    annotations: &Annotations,
    stats: &Stats,
    consensus: &[usize],
    counts: &[usize],
) -> Vec<f64> {
    let rows = annotations.rows();
    let annotators = annotations.annotators;
    let counts_f: Vec<f64> = counts.iter().map(|&c| c as f64).collect();
    let mean_count = pairwise_sum(&counts_f) / rows as f64;
    let share = mean_count / annotators as f64;
    let adjusted = pairwise_sum(&stats.annotator_weights) * share;
    let w = stats.model_weight / (stats.model_weight + adjusted);
    (0..annotators)
        .map(|a| {
            // np.nanmean over the column: missing rows count as zeros in the sum.
            let scores: Vec<f64> = (0..rows)
                .map(|i| {
                    annotations
                        .get(i, a)
                        .map_or(0.0, |k| stats.posterior.get(i, k))
                })
                .collect();
            let labelled = (0..rows)
                .filter(|&i| annotations.get(i, a).is_some())
                .count();
            let label_quality = pairwise_sum(&scores) / labelled as f64;
            let (mut same, mut total) = (0usize, 0usize);
            for i in (0..rows).filter(|&i| counts[i] != 1) {
                if let Some(k) = annotations.get(i, a) {
                    total += 1;
                    same += usize::from(k == consensus[i]);
                }
            }
            let agreement = if total == 0 {
                f64::NAN
            } else {
                same as f64 / total as f64
            };
            w * label_quality + (1.0 - w) * agreement
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_no_source_predicts_keep_the_prior_and_the_rest_vote_as_alone() {
        let rows: [[Option<usize>; 3]; 6] = [
            [Some(0), Some(0), Some(1)],
            [Some(1), Some(1), Some(1)],
            [None, None, None],
            [Some(0), None, Some(0)],
            [Some(1), Some(0), None],
            [Some(0), Some(0), Some(0)],
        ];
        let prior_rows = [
            [0.7, 0.3],
            [0.2, 0.8],
            [0.6, 0.4],
            [0.9, 0.1],
            [0.5, 0.5],
            [0.8, 0.2],
        ];
        let annotations = Annotations {
            annotators: 3,
            labels: rows.iter().flatten().copied().collect(),
        };
        let prior = Probabilities::new(2, prior_rows.iter().flatten().copied().collect());
        assert_eq!(
            crowdlab(&annotations, &prior, 0).unwrap_err(),
            VoteError::Unlabelled(2)
        );
        let (label, posterior, _) = crowdlab_where_predicted(&annotations, &prior, 0).unwrap();
        assert_eq!(label[2], None);
        assert_eq!(posterior.row(2), &[0.6, 0.4]);
        // The others: exactly CROWDLAB on the predicted rows alone.
        let kept = [0, 1, 3, 4, 5];
        let alone = crowdlab(
            &Annotations {
                annotators: 3,
                labels: kept.iter().flat_map(|&i| rows[i]).collect(),
            },
            &Probabilities::new(2, kept.iter().flat_map(|&i| prior_rows[i]).collect()),
            0,
        )
        .unwrap();
        for (j, &i) in kept.iter().enumerate() {
            assert_eq!(label[i], Some(alone.label[j]));
            assert_eq!(posterior.row(i), alone.posterior.row(j));
        }
        // Every row predicted: CROWDLAB itself.
        let full = Annotations {
            annotators: 3,
            labels: kept.iter().flat_map(|&i| rows[i]).collect(),
        };
        let full_prior = Probabilities::new(2, kept.iter().flat_map(|&i| prior_rows[i]).collect());
        let (label, _, _) = crowdlab_where_predicted(&full, &full_prior, 0).unwrap();
        assert_eq!(
            label,
            alone.label.iter().map(|&l| Some(l)).collect::<Vec<_>>()
        );
    }
}
