//! cleanlab's label-quality scores (`cleanlab.rank.get_label_quality_scores`): higher means the
//! given label is more likely right.

use super::Probabilities;

/// Values are clipped from below to this before dividing (`CLIPPING_LOWER_BOUND`).
const CLIP: f64 = 1e-6;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QualityMethod {
    /// The probability of the given label.
    SelfConfidence,
    /// `(p_given - max_other + 1) / 2`.
    NormalizedMargin,
    /// `log(h / p_given + 1) / max(h / p_given, 1e-6)` with `h` the normalised entropy.
    ConfidenceWeightedEntropy,
}

impl QualityMethod {
    pub const ALL: [QualityMethod; 3] = [
        QualityMethod::SelfConfidence,
        QualityMethod::NormalizedMargin,
        QualityMethod::ConfidenceWeightedEntropy,
    ];

    pub fn name(self) -> &'static str {
        match self {
            QualityMethod::SelfConfidence => "self_confidence",
            QualityMethod::NormalizedMargin => "normalized_margin",
            QualityMethod::ConfidenceWeightedEntropy => "confidence_weighted_entropy",
        }
    }
}

pub fn quality_scores(labels: &[usize], probs: &Probabilities, method: QualityMethod) -> Vec<f64> {
    labels
        .iter()
        .enumerate()
        .map(|(i, &label)| quality_score(probs.row(i), label, method))
        .collect()
}

pub(crate) fn quality_score(row: &[f64], label: usize, method: QualityMethod) -> f64 {
    let own = row[label];
    match method {
        QualityMethod::SelfConfidence => own,
        QualityMethod::NormalizedMargin => {
            let other = row
                .iter()
                .enumerate()
                .filter(|&(k, _)| k != label)
                .map(|(_, &p)| p)
                .fold(f64::NEG_INFINITY, f64::max);
            (own - other + 1.0) / 2.0
        }
        QualityMethod::ConfidenceWeightedEntropy => {
            let own = own.max(CLIP);
            let ratio = normalized_entropy(row) / own;
            (ratio + 1.0).ln() / ratio.max(CLIP)
        }
    }
}

/// Entropy divided by `log K`, with `0 log 0 = 0`.
fn normalized_entropy(row: &[f64]) -> f64 {
    let terms: Vec<f64> = row
        .iter()
        .map(|&p| if p == 0.0 { 0.0 } else { p * p.ln() })
        .collect();
    -super::numeric::pairwise_sum(&terms) / (row.len() as f64).ln()
}
