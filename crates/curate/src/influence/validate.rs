//! Validating attributions by retraining: the linear datamodeling score (LDS) and removal
//! controls.
//!
//! LDS (Park et al., TRAK): draw random subsets of the training rows, train on each, and
//! measure each query's loss. Influence predicts that a subset helps a query by the sum of its
//! rows' scores; the LDS of a query is the Spearman correlation, over the subsets, between that
//! sum and the negated measured loss (so 1 means the scores order the subsets exactly as
//! training does). Removal controls (as in bergson's and others' retraining checks) drop the
//! most helpful fraction of the rows and an equally large random fraction, retrain, and compare
//! the query loss.

use anyhow::Result;

use crate::model::train::{Diverged, TrainSettings, Trainer};
use crate::model::{LanguageModel, Sequence, batched_losses};
use crate::rng::SplitMix64;

/// `count` random subsets of `round(alpha * n)` rows each (sorted), drawn from `seed`.
pub(crate) fn random_subsets(n: usize, alpha: f64, count: usize, seed: u64) -> Vec<Vec<usize>> {
    let size = ((alpha * n as f64).round() as usize).clamp(1, n.max(1));
    (0..count)
        .map(|k| {
            let mut rng =
                SplitMix64::new(seed ^ (k as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut rows: Vec<usize> = (0..n).collect();
            rng.shuffle(&mut rows);
            rows.truncate(size);
            rows.sort_unstable();
            rows
        })
        .collect()
}

/// Ranks from 1, ties given their average rank.
fn ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0; values.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && values[order[end]] == values[order[start]] {
            end += 1;
        }
        let rank = (start + end + 1) as f64 / 2.0;
        for &i in &order[start..end] {
            ranks[i] = rank;
        }
        start = end;
    }
    ranks
}

/// Spearman's rank correlation (Pearson on average ranks); None when either side is constant
/// or shorter than 2.
pub(crate) fn spearman(a: &[f64], b: &[f64]) -> Option<f64> {
    assert_eq!(a.len(), b.len());
    if a.len() < 2 {
        return None;
    }
    let (ra, rb) = (ranks(a), ranks(b));
    let mean = (a.len() as f64 + 1.0) / 2.0;
    let (mut cov, mut va, mut vb) = (0.0, 0.0, 0.0);
    for (x, y) in ra.iter().zip(&rb) {
        cov += (x - mean) * (y - mean);
        va += (x - mean) * (x - mean);
        vb += (y - mean) * (y - mean);
    }
    (va > 0.0 && vb > 0.0).then(|| cov / (va * vb).sqrt())
}

/// Mean and standard error of the mean (sample standard deviation over sqrt(n)).
pub(crate) fn mean_and_standard_error(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    if values.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mean = values.iter().sum::<f64>() / n;
    if values.len() < 2 {
        return (mean, f64::NAN);
    }
    let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (variance / n).sqrt())
}

/// Per query (rows of `scores`, `[query][train]`), the LDS over the subsets: Spearman between
/// the subset's summed scores and its negated measured query loss (`losses[subset][query]`).
pub fn lds(scores: &[Vec<f64>], subsets: &[Vec<usize>], losses: &[Vec<f64>]) -> Vec<Option<f64>> {
    scores
        .iter()
        .enumerate()
        .map(|(q, row)| {
            let predicted: Vec<f64> = subsets
                .iter()
                .map(|subset| subset.iter().map(|&n| row[n]).sum())
                .collect();
            let measured: Vec<f64> = losses.iter().map(|l| -l[q]).collect();
            spearman(&predicted, &measured)
        })
        .collect()
}

/// How many of `n` rows a removal of `fraction` takes.
pub(crate) fn removal_count(n: usize, fraction: f64) -> usize {
    ((fraction * n as f64).round() as usize).min(n)
}

/// The `count` rows with the highest mean score over queries (`scores[query][row]`; ties by
/// row index).
pub(crate) fn most_helpful(scores: &[Vec<f64>], count: usize) -> Vec<usize> {
    let n = scores.first().map_or(0, Vec::len);
    let mean: Vec<f64> = (0..n)
        .map(|i| scores.iter().map(|row| row[i]).sum::<f64>() / scores.len().max(1) as f64)
        .collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| mean[b].total_cmp(&mean[a]).then(a.cmp(&b)));
    order.truncate(count.min(n));
    order
}

/// One random set of `count` of `n` rows per seed.
pub(crate) fn random_sets(n: usize, count: usize, seeds: &[u64]) -> Vec<Vec<usize>> {
    seeds
        .iter()
        .map(|&seed| {
            let mut rows: Vec<usize> = (0..n).collect();
            SplitMix64::new(seed).shuffle(&mut rows);
            rows.truncate(count.min(n));
            rows
        })
        .collect()
}

/// Train a copy of `base` on `rows` of `train` with `settings` (from the same starting point and
/// seed for every call, so only the data differs), then measure the summed loss of each query.
/// `on_step` runs after every optimizer step (progress, Ctrl-C).
pub fn retrain_and_measure(
    base: &LanguageModel,
    train: &[Sequence],
    rows: &[usize],
    queries: &[Sequence],
    settings: &TrainSettings,
    batch_size: usize,
    on_step: &mut dyn FnMut() -> Result<()>,
) -> Result<Vec<f64>> {
    let subset: Vec<Sequence> = rows.iter().map(|&r| train[r].clone()).collect();
    let mut trainer = Trainer::new(settings.clone(), subset.iter().map(Sequence::len).collect());
    let mut model = base.model.clone();
    while !trainer.is_done() {
        let (next, report) = trainer.train_step(base, model, &subset);
        model = next;
        if !report.loss.is_finite() {
            return Err(anyhow::Error::new(Diverged {
                loss: report.loss,
                step: trainer.step,
            })
            .context("retraining"));
        }
        on_step()?;
    }
    batched_losses(&model, base.pad_id(), queries, batch_size, &mut |_| Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spearman_uses_average_ranks() {
        assert_eq!(spearman(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]), Some(1.0));
        assert_eq!(spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]), Some(-1.0));
        assert_eq!(spearman(&[1.0, 1.0, 1.0], &[3.0, 2.0, 1.0]), None);
        // scipy 1.17.1's spearmanr on the same ties.
        let rho = spearman(&[1.0, 2.0, 2.0, 4.0], &[1.0, 3.0, 2.0, 4.0]).unwrap();
        assert!((rho - 0.9486832980505139).abs() < 1e-12, "{rho}");
        let a = [0.3, 0.1, 0.3, 0.9, 0.5, 0.5];
        let b = [2.0, 1.0, 2.0, 7.0, 4.0, 3.0];
        let rho = spearman(&a, &b).unwrap();
        assert!((rho - 0.985184366143778).abs() < 1e-12, "{rho}");
        assert_eq!(ranks(&[3.0, 1.0, 3.0, 2.0]), vec![3.5, 1.0, 3.5, 2.0]);
    }

    #[test]
    fn subsets_are_seeded_and_sized() {
        let a = random_subsets(10, 0.5, 4, 7);
        assert_eq!(a, random_subsets(10, 0.5, 4, 7));
        assert_ne!(a, random_subsets(10, 0.5, 4, 8));
        assert!(
            a.iter()
                .all(|s| s.len() == 5 && s.windows(2).all(|w| w[0] < w[1]))
        );
        assert_ne!(a[0], a[1]);
    }

    #[test]
    fn lds_is_one_when_summed_scores_order_the_losses() {
        // Row n lowers the query loss by scores[n]; the measured loss is exactly that.
        let scores = vec![vec![0.5, 2.0, -1.0, 0.1]];
        let subsets = vec![vec![0, 1], vec![2, 3], vec![1, 2], vec![0, 3]];
        let losses: Vec<Vec<f64>> = subsets
            .iter()
            .map(|s| vec![10.0 - s.iter().map(|&n| scores[0][n]).sum::<f64>()])
            .collect();
        assert_eq!(lds(&scores, &subsets, &losses), vec![Some(1.0)]);
        let (mean, se) = mean_and_standard_error(&[0.2, 0.4, 0.6]);
        assert!((mean - 0.4).abs() < 1e-12 && (se - 0.2 / 3f64.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn removal_takes_the_most_helpful_rows() {
        let scores = vec![vec![1.0, 5.0, 3.0, -2.0], vec![1.0, 3.0, 5.0, -2.0]];
        let count = removal_count(4, 0.5);
        assert_eq!(most_helpful(&scores, count), vec![1, 2]);
        let random = random_sets(4, count, &[1, 2]);
        assert_eq!(random.len(), 2);
        assert!(random.iter().all(|r| r.len() == 2));
    }
}
