//! Multi-label confident learning as cleanlab 2.9.0 does it
//! (`cleanlab.multilabel_classification`): every class is its own binary problem with
//! probabilities `[1 - p_k, p_k]`, and a row has an issue when any of its classes does.

use super::Probabilities;
use super::confident::{FilterBy, FilterOptions, find_label_issues};
use super::numeric::smallest;
use super::quality::{QualityMethod, quality_score};

/// Weight of the next-lower class score in cleanlab's exponential moving average.
const EMA_ALPHA: f64 = 0.8;

/// Per row, whether each class is among its labels.
pub fn presence(labels: &[Vec<usize>], classes: usize) -> Vec<Vec<bool>> {
    labels
        .iter()
        .map(|set| {
            let mut row = vec![false; classes];
            for &k in set {
                row[k] = true;
            }
            row
        })
        .collect()
}

/// Class `k` as a binary problem: labels 0/1 and probabilities `[1 - p, p]`.
fn binary_problem(
    present: &[Vec<bool>],
    probs: &Probabilities,
    k: usize,
) -> (Vec<usize>, Probabilities) {
    let labels: Vec<usize> = present.iter().map(|row| usize::from(row[k])).collect();
    let mut values = Vec::with_capacity(2 * labels.len());
    for i in 0..labels.len() {
        let p = probs.get(i, k);
        values.push(1.0 - p);
        values.push(p);
    }
    (labels, Probabilities::new(2, values))
}

/// The per-class flags (row x class) of the binary problems.
pub(crate) fn class_issues(
    labels: &[Vec<usize>],
    probs: &Probabilities,
    options: FilterOptions,
) -> Vec<Vec<bool>> {
    let classes = probs.classes();
    let present = presence(labels, classes);
    let columns: Vec<Vec<bool>> = (0..classes)
        .map(|k| {
            let (binary, pair) = binary_problem(&present, probs, k);
            find_label_issues(&binary, &pair, options)
        })
        .collect();
    (0..labels.len())
        .map(|row| columns.iter().map(|column| column[row]).collect())
        .collect()
}

/// `cleanlab.multilabel_classification.filter.find_label_issues`: one flag per row.
pub fn find_multilabel_issues(
    labels: &[Vec<usize>],
    probs: &Probabilities,
    options: FilterOptions,
) -> Vec<bool> {
    match options.filter_by {
        FilterBy::LowSelfConfidence | FilterBy::LowNormalizedMargin => {
            // As many rows as confident learning flags, lowest aggregated quality first (the
            // aggregate uses self-confidence per class in both modes, as cleanlab does).
            let confident = FilterOptions {
                filter_by: FilterBy::ConfidentLearning,
                ..options
            };
            let count = find_multilabel_issues(labels, probs, confident)
                .iter()
                .filter(|&&f| f)
                .count();
            let scores = multilabel_quality(labels, probs, QualityMethod::SelfConfidence);
            let mut flags = vec![false; labels.len()];
            for i in smallest(&scores, count).chosen {
                flags[i] = true;
            }
            flags
        }
        _ => class_issues(labels, probs, options)
            .into_iter()
            .map(|row| row.into_iter().any(|f| f))
            .collect(),
    }
}

/// Per-class binary quality scores, row x class.
pub(crate) fn class_quality(
    labels: &[Vec<usize>],
    probs: &Probabilities,
    method: QualityMethod,
) -> Vec<Vec<f64>> {
    let classes = probs.classes();
    let present = presence(labels, classes);
    present
        .iter()
        .enumerate()
        .map(|(i, row)| {
            (0..classes)
                .map(|k| {
                    let p = probs.get(i, k);
                    quality_score(&[1.0 - p, p], usize::from(row[k]), method)
                })
                .collect()
        })
        .collect()
}

/// `cleanlab.multilabel_classification.rank.get_label_quality_scores`: class scores sorted
/// high to low, folded by an exponential moving average (alpha 0.8) so the worst class weighs
/// most.
pub fn multilabel_quality(
    labels: &[Vec<usize>],
    probs: &Probabilities,
    method: QualityMethod,
) -> Vec<f64> {
    class_quality(labels, probs, method)
        .into_iter()
        .map(|mut scores| {
            scores.sort_by(|a, b| b.total_cmp(a));
            let mut ema = scores[0];
            for &s in &scores[1..] {
                ema = EMA_ALPHA * s + (1.0 - EMA_ALPHA) * ema;
            }
            ema
        })
        .collect()
}
