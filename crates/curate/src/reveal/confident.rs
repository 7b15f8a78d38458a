//! Confident learning with cleanlab 2.9.0's exact arithmetic: per-class thresholds, the
//! (calibrated) confident joint, every `filter_by` mode and `num_label_issues`.
//!
//! Every float step follows cleanlab's numpy expression in the same order (pairwise sums, round
//! half to even, truncating casts), so the flags are cleanlab's own, not an approximation of
//! them. One choice is ours: where a count of rows is cut from a sorted list and rows tie at
//! the cut, the earlier rows are taken (cleanlab takes numpy's sort order, which depends on the
//! CPU's sort kernel), and the rows chosen that way are reported.

use super::Probabilities;
use super::numeric::{
    Cut, argmax, argsort, pairwise_sum, pairwise_sum_by, round_half_even, smallest,
};
use super::quality::{QualityMethod, quality_scores};

/// cleanlab's `FLOATING_POINT_COMPARISON`.
const FUZZ: f64 = 1e-6;
/// Thresholds are clipped from below to this (`CONFIDENT_THRESHOLDS_LOWER_BOUND`).
const THRESHOLD_FLOOR: f64 = 2.0 * FUZZ;
/// Divisors are clipped from below to this (`TINY_VALUE`).
const TINY: f64 = 1e-100;
/// The threshold of a class no example is labelled with (nothing can be confident in it).
const ABSENT_CLASS_THRESHOLD: f64 = 2.0;

/// Which examples `find_label_issues` returns (cleanlab's `filter_by`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterBy {
    PruneByNoiseRate,
    PruneByClass,
    Both,
    ConfidentLearning,
    PredictedNeqGiven,
    LowSelfConfidence,
    LowNormalizedMargin,
}

impl FilterBy {
    pub const ALL: [FilterBy; 7] = [
        FilterBy::PruneByNoiseRate,
        FilterBy::PruneByClass,
        FilterBy::Both,
        FilterBy::ConfidentLearning,
        FilterBy::PredictedNeqGiven,
        FilterBy::LowSelfConfidence,
        FilterBy::LowNormalizedMargin,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FilterBy::PruneByNoiseRate => "prune_by_noise_rate",
            FilterBy::PruneByClass => "prune_by_class",
            FilterBy::Both => "both",
            FilterBy::ConfidentLearning => "confident_learning",
            FilterBy::PredictedNeqGiven => "predicted_neq_given",
            FilterBy::LowSelfConfidence => "low_self_confidence",
            FilterBy::LowNormalizedMargin => "low_normalized_margin",
        }
    }
}

/// How `num_label_issues` counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueCount {
    /// Off-diagonal examples of the confident joint, less those the model's argmax agrees with.
    OffDiagonal,
    /// `N * (1 - trace)` of the calibrated joint.
    OffDiagonalCalibrated,
}

/// Options of `find_label_issues` beyond the mode.
#[derive(Debug, Clone, Copy)]
pub struct FilterOptions {
    pub filter_by: FilterBy,
    /// Share of the estimated noise to prune (prune modes only).
    pub frac_noise: f64,
    /// Classes with at most this many examples are not pruned (prune modes only).
    pub min_examples_per_class: usize,
}

impl Default for FilterOptions {
    fn default() -> Self {
        FilterOptions {
            filter_by: FilterBy::PruneByNoiseRate,
            frac_noise: 1.0,
            min_examples_per_class: 1,
        }
    }
}

/// A K x K matrix of counts, row = given label, column = confident true label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountMatrix {
    pub classes: usize,
    pub counts: Vec<i64>,
}

impl CountMatrix {
    pub fn get(&self, given: usize, truth: usize) -> i64 {
        self.counts[given * self.classes + truth]
    }

    pub fn rows(&self) -> Vec<Vec<i64>> {
        self.counts
            .chunks(self.classes)
            .map(|row| row.to_vec())
            .collect()
    }
}

/// Examples per class (`value_counts_fill_missing_classes`).
pub(crate) fn label_counts(labels: &[usize], classes: usize) -> Vec<usize> {
    let mut counts = vec![0; classes];
    for &label in labels {
        counts[label] += 1;
    }
    counts
}

/// Per class, the mean probability of that class over the examples labelled with it.
pub(crate) fn confident_thresholds(labels: &[usize], probs: &Probabilities) -> Vec<f64> {
    let classes = probs.classes();
    let mut members: Vec<Vec<f64>> = vec![Vec::new(); classes];
    for (i, &label) in labels.iter().enumerate() {
        members[label].push(probs.get(i, label));
    }
    members
        .iter()
        .map(|values| {
            let threshold = if values.is_empty() {
                ABSENT_CLASS_THRESHOLD
            } else {
                pairwise_sum(values) / values.len() as f64
            };
            threshold.max(THRESHOLD_FLOOR)
        })
        .collect()
}

/// The confident joint and the rows off its diagonal (`compute_confident_joint`).
pub struct ConfidentJoint {
    pub joint: CountMatrix,
    /// Rows confidently in a class other than their label, ascending.
    pub off_diagonal: Vec<usize>,
}

pub fn confident_joint(labels: &[usize], probs: &Probabilities, calibrate: bool) -> ConfidentJoint {
    let classes = probs.classes();
    let cut: Vec<f64> = confident_thresholds(labels, probs)
        .iter()
        .map(|t| t - FUZZ)
        .collect();
    let mut counts = vec![0i64; classes * classes];
    let mut off_diagonal = Vec::new();
    for (i, &label) in labels.iter().enumerate() {
        let row = probs.row(i);
        let mut confident = 0;
        let mut first_confident = 0;
        for (k, &p) in row.iter().enumerate() {
            if p >= cut[k] {
                if confident == 0 {
                    first_confident = k;
                }
                confident += 1;
            }
        }
        if confident == 0 {
            continue;
        }
        let truth = if confident > 1 {
            argmax(row)
        } else {
            first_confident
        };
        counts[label * classes + truth] += 1;
        if truth != label {
            off_diagonal.push(i);
        }
    }
    for k in 0..classes {
        let diagonal = &mut counts[k * classes + k];
        *diagonal = (*diagonal).max(1);
    }
    let mut joint = CountMatrix { classes, counts };
    if calibrate {
        joint = calibrate_joint(&joint, &label_counts(labels, classes));
    }
    ConfidentJoint {
        joint,
        off_diagonal,
    }
}

/// Rescale rows to the label counts and the whole to N, then round keeping row totals
/// (`calibrate_confident_joint`).
pub(crate) fn calibrate_joint(joint: &CountMatrix, label_counts: &[usize]) -> CountMatrix {
    let k = joint.classes;
    let mut scaled = vec![0.0f64; k * k];
    for given in 0..k {
        let row_total: i64 = (0..k).map(|t| joint.get(given, t)).sum();
        let divisor = (row_total as f64).max(TINY);
        for truth in 0..k {
            scaled[given * k + truth] =
                joint.get(given, truth) as f64 / divisor * label_counts[given] as f64;
        }
    }
    let total = pairwise_sum(&scaled).max(TINY);
    let n: usize = label_counts.iter().sum();
    for value in scaled.iter_mut() {
        *value = *value / total * n as f64;
    }
    CountMatrix {
        classes: k,
        counts: round_preserving_row_totals(&scaled, k),
    }
}

/// Round each row to integers whose sum is the row's rounded sum (`round_preserving_sum`).
pub(crate) fn round_preserving_row_totals(values: &[f64], columns: usize) -> Vec<i64> {
    values
        .chunks(columns)
        .flat_map(round_preserving_sum)
        .collect()
}

fn round_preserving_sum(floats: &[f64]) -> Vec<i64> {
    let mut ints: Vec<f64> = floats.iter().map(|&x| round_half_even(x)).collect();
    let target = round_half_even(pairwise_sum(floats));
    let mut total = round_half_even(pairwise_sum(&ints));
    while (total - target).abs() > FUZZ {
        let diff = round_half_even(target - total);
        let step = if diff < 0.0 { -1.0 } else { 1.0 };
        let changes = (diff.abs() as usize).min(floats.len());
        let remainders: Vec<f64> = floats.iter().zip(&ints).map(|(f, i)| f - i).collect();
        let mut order = argsort(&remainders);
        if step > 0.0 {
            order.reverse();
        }
        for &i in order.iter().take(changes) {
            ints[i] += step;
        }
        total = round_half_even(pairwise_sum(&ints));
    }
    ints.iter().map(|&x| x as i64).collect()
}

/// The calibrated joint as probabilities (`estimate_joint` given a calibrated joint: cleanlab
/// calibrates it once more before normalising).
pub(crate) fn estimate_joint(calibrated: &CountMatrix, label_counts: &[usize]) -> Vec<f64> {
    let again = calibrate_joint(calibrated, label_counts);
    let total = (again.counts.iter().sum::<i64>() as f64).max(TINY);
    again.counts.iter().map(|&c| c as f64 / total).collect()
}

/// Both `num_label_issues` counts (off_diagonal, off_diagonal_calibrated) from one pass: the
/// calibrated joint is the raw joint calibrated, as in `compute_confident_joint`.
pub(crate) fn issue_counts(labels: &[usize], probs: &Probabilities) -> (usize, usize) {
    let classes = probs.classes();
    let raw = confident_joint(labels, probs, false);
    let off = raw
        .off_diagonal
        .iter()
        .filter(|&&i| !model_agrees(probs.row(i), labels[i]))
        .count();
    let counts = label_counts(labels, classes);
    let calibrated = calibrate_joint(&raw.joint, &counts);
    (off, calibrated_count(&calibrated, &counts, labels.len()))
}

fn calibrated_count(calibrated: &CountMatrix, counts: &[usize], n: usize) -> usize {
    let classes = calibrated.classes;
    let joint = estimate_joint(calibrated, counts);
    let trace = pairwise_sum_by(classes, &|k| joint[k * classes + k]);
    round_half_even((1.0 - trace) * n as f64).max(0.0) as usize
}

/// `num_label_issues` for one-label-per-example data.
pub fn num_label_issues(labels: &[usize], probs: &Probabilities, method: IssueCount) -> usize {
    match method {
        IssueCount::OffDiagonal => {
            let off = confident_joint(labels, probs, false).off_diagonal;
            off.into_iter()
                .filter(|&i| !model_agrees(probs.row(i), labels[i]))
                .count()
        }
        IssueCount::OffDiagonalCalibrated => {
            let classes = probs.classes();
            let counts = label_counts(labels, classes);
            let calibrated = confident_joint(labels, probs, true).joint;
            calibrated_count(&calibrated, &counts, labels.len())
        }
    }
}

/// The model's argmax is the given label once that label gets a 1e-6 head start
/// (`_reduce_issues`: such examples are never flagged).
fn model_agrees(row: &[f64], label: usize) -> bool {
    let boosted = row[label] + FUZZ;
    let mut best = 0;
    let mut best_value = if label == 0 { boosted } else { row[0] };
    for (k, &p) in row.iter().enumerate().skip(1) {
        let value = if k == label { boosted } else { p };
        if value > best_value {
            best = k;
            best_value = value;
        }
    }
    best == label
}

/// Label issues, and which flagged rows were picked from a tie at a cut-off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelIssues {
    pub flags: Vec<bool>,
    /// Rows chosen from values tied at a cut (a prune count, or the number of issues in the
    /// low-score modes) while other rows with that value were left out: another tie order
    /// (cleanlab's numpy sort) could have flagged one of those instead.
    pub tied: Vec<bool>,
}

impl LabelIssues {
    /// Flagged rows that were chosen among ties at a cut-off.
    pub fn flagged_from_ties(&self) -> usize {
        self.flags
            .iter()
            .zip(&self.tied)
            .filter(|&(&f, &t)| f && t)
            .count()
    }
}

/// `cleanlab.filter.find_label_issues` for one-label-per-example data: one flag per row.
pub fn find_label_issues(
    labels: &[usize],
    probs: &Probabilities,
    options: FilterOptions,
) -> Vec<bool> {
    label_issues(labels, probs, options).flags
}

/// [`find_label_issues`], with the rows chosen among ties at a cut-off named.
pub fn label_issues(
    labels: &[usize],
    probs: &Probabilities,
    options: FilterOptions,
) -> LabelIssues {
    let n = labels.len();
    let classes = probs.classes();
    let mut flags = vec![false; n];
    let mut tied = vec![false; n];
    match options.filter_by {
        FilterBy::LowSelfConfidence | FilterBy::LowNormalizedMargin => {
            let method = if options.filter_by == FilterBy::LowSelfConfidence {
                QualityMethod::SelfConfidence
            } else {
                QualityMethod::NormalizedMargin
            };
            let scores = quality_scores(labels, probs, method);
            let count = num_label_issues(labels, probs, IssueCount::OffDiagonal);
            let cut = smallest(&scores, count);
            for i in cut.chosen {
                flags[i] = true;
            }
            for i in cut.tied {
                tied[i] = true;
            }
            // cleanlab does not drop argmax-agreeing rows in these two modes.
            return LabelIssues { flags, tied };
        }
        FilterBy::ConfidentLearning => {
            for i in confident_joint(labels, probs, true).off_diagonal {
                flags[i] = true;
            }
        }
        FilterBy::PredictedNeqGiven => {
            for (i, flag) in flags.iter_mut().enumerate() {
                *flag = argmax(probs.row(i)) != labels[i];
            }
        }
        FilterBy::PruneByNoiseRate | FilterBy::PruneByClass | FilterBy::Both => {
            let joint = confident_joint(labels, probs, true).joint;
            let prune = prune_counts(&joint, options.min_examples_per_class, options.frac_noise);
            let members = class_members(labels, classes);
            let by_class = matches!(options.filter_by, FilterBy::PruneByClass | FilterBy::Both);
            let by_noise = matches!(
                options.filter_by,
                FilterBy::PruneByNoiseRate | FilterBy::Both
            );
            // Classes are independent: prune them in parallel.
            let pruned: Vec<(Cut, Cut)> = {
                use rayon::prelude::*;
                members
                    .par_iter()
                    .enumerate()
                    .map(|(k, rows)| {
                        if rows.len() <= options.min_examples_per_class {
                            return (Cut::default(), Cut::default());
                        }
                        let by_class_rows = if by_class {
                            prune_by_class(rows, probs, k, &prune)
                        } else {
                            Cut::default()
                        };
                        let by_noise_rows = if by_noise {
                            prune_by_noise_rate(rows, probs, k, &prune)
                        } else {
                            Cut::default()
                        };
                        (by_class_rows, by_noise_rows)
                    })
                    .collect()
            };
            let mut class_flags = vec![!by_class; n];
            let mut noise_flags = vec![!by_noise; n];
            for (by_class_rows, by_noise_rows) in pruned {
                for i in by_class_rows.chosen {
                    class_flags[i] = true;
                }
                for i in by_noise_rows.chosen {
                    noise_flags[i] = true;
                }
                for i in by_class_rows.tied.into_iter().chain(by_noise_rows.tied) {
                    tied[i] = true;
                }
            }
            for i in 0..n {
                flags[i] = class_flags[i] && noise_flags[i];
            }
        }
    }
    for (i, flag) in flags.iter_mut().enumerate() {
        if *flag && model_agrees(probs.row(i), labels[i]) {
            *flag = false;
        }
    }
    LabelIssues { flags, tied }
}

/// Rows of each class, ascending.
fn class_members(labels: &[usize], classes: usize) -> Vec<Vec<usize>> {
    let mut members = vec![Vec::new(); classes];
    for (i, &label) in labels.iter().enumerate() {
        members[label].push(i);
    }
    members
}

/// How many examples to prune per (true class, given class): the transposed calibrated joint
/// with at least `min_examples` kept per class and the noise scaled by `frac_noise`
/// (`_keep_at_least_n_per_class` and `_reduce_prune_counts`). Indexed `[truth][given]`.
fn prune_counts(joint: &CountMatrix, min_examples: usize, frac_noise: f64) -> Vec<Vec<i64>> {
    let k = joint.classes;
    // m[i][j] = joint[j][i]: columns of m are the given classes.
    let m = |i: usize, j: usize| joint.get(j, i) as f64;
    let mut counts = vec![vec![0.0f64; k]; k];
    for j in 0..k {
        let diagonal = m(j, j);
        let raised = diagonal.max(min_examples as f64);
        let nonzero = (0..k).filter(|&i| m(i, j) != 0.0).count() as f64;
        let spread = (raised - diagonal) / (nonzero - 1.0).max(1.0);
        for (i, row) in counts.iter_mut().enumerate() {
            let value = m(i, j) - spread;
            row[j] = if value < 0.0 { 0.0 } else { value };
        }
        counts[j][j] = raised;
    }
    // Scale the noise and move what was removed onto the diagonal, then truncate to integers.
    let mut scaled = counts.clone();
    for (i, row) in scaled.iter_mut().enumerate() {
        for (j, value) in row.iter_mut().enumerate() {
            if i != j {
                *value *= frac_noise;
            }
        }
    }
    for j in 0..k {
        let mut removed = 0.0;
        for i in 0..k {
            removed += counts[i][j] - scaled[i][j];
        }
        scaled[j][j] = counts[j][j] + removed;
    }
    scaled
        .iter()
        .map(|row| row.iter().map(|&v| v as i64).collect())
        .collect()
}

/// In class `k`, the rows with the lowest probability of `k`, as many as the class has beyond
/// its kept diagonal count (ties at the cut: earlier rows first).
fn prune_by_class(rows: &[usize], probs: &Probabilities, k: usize, prune: &[Vec<i64>]) -> Cut {
    let issues = rows.len() as i64 - prune[k][k];
    if issues < 1 {
        return Cut::default();
    }
    let own: Vec<f64> = rows.iter().map(|&i| probs.get(i, k)).collect();
    to_rows(smallest(&own, issues as usize), rows)
}

/// A cut over a class's positions, as table rows.
fn to_rows(cut: Cut, rows: &[usize]) -> Cut {
    Cut {
        chosen: cut.chosen.into_iter().map(|p| rows[p]).collect(),
        tied: cut.tied.into_iter().map(|p| rows[p]).collect(),
    }
}

/// In class `k`, for every other class `j` with a prune count, the rows with the largest
/// margin `p_j - p_k` (ties at the cut: earlier rows first).
///
/// Prune counts are usually small: those are found in one pass over the class's rows, keeping
/// a short sorted list per class `j` (rows in order, so an equal margin never displaces an
/// earlier row). Large counts take the margin column whole.
fn prune_by_noise_rate(rows: &[usize], probs: &Probabilities, k: usize, prune: &[Vec<i64>]) -> Cut {
    const FEW: usize = 32;
    let targets: Vec<(usize, usize)> = prune
        .iter()
        .enumerate()
        .filter(|&(j, row)| j != k && row[k] > 0)
        .map(|(j, row)| (j, row[k] as usize))
        .collect();
    // (class j, prune count) pairs, split by how many rows each prunes.
    type Targets = Vec<(usize, usize)>;
    let (few, many): (Targets, Targets) = targets.into_iter().partition(|&(_, m)| m <= FEW);
    let negated = |i: usize, j: usize| {
        let row = probs.row(i);
        -(row[j] - row[k])
    };
    let mut chosen = vec![false; rows.len()];
    let mut tied = vec![false; rows.len()];
    // One pass: the m smallest negated margins for every few-count class, and the smallest
    // value left out (a tie across the cut when it equals the cut). Inputs are finite (checked
    // on reading), so plain comparisons order them as numpy does.
    let classes = probs.classes();
    let mut want = vec![0usize; classes];
    for &(j, m) in &few {
        want[j] = m;
    }
    // The bar a margin must reach to matter: +inf while a list fills, then its last value;
    // -inf for classes not pruned here.
    let mut bar: Vec<f64> = (0..classes)
        .map(|j| {
            if want[j] > 0 {
                f64::INFINITY
            } else {
                f64::NEG_INFINITY
            }
        })
        .collect();
    let mut kept: Vec<Vec<(f64, usize)>> =
        want.iter().map(|&m| Vec::with_capacity(m + 1)).collect();
    let mut left_out = vec![f64::INFINITY; classes];
    for (pos, &i) in rows.iter().enumerate() {
        let row = probs.row(i);
        let own = row[k];
        for (j, &p) in row.iter().enumerate() {
            // -(p_j - p_k), bit for bit up to the sign of a zero.
            let x = own - p;
            let limit = bar[j];
            if x > limit {
                continue;
            }
            let m = want[j];
            let list = &mut kept[j];
            if list.len() == m && x == limit {
                left_out[j] = left_out[j].min(x);
                continue;
            }
            let at = list.partition_point(|&(y, _)| y <= x);
            list.insert(at, (x, pos));
            if list.len() > m {
                let (evicted, _) = list.pop().expect("over capacity");
                left_out[j] = left_out[j].min(evicted);
            }
            if list.len() == m {
                bar[j] = list[m - 1].0;
            }
        }
    }
    for &(j, _) in &few {
        let list = &kept[j];
        let cut = list[list.len() - 1].0;
        let straddles = left_out[j] == cut;
        for &(x, pos) in list {
            chosen[pos] = true;
            if straddles && x == cut {
                tied[pos] = true;
            }
        }
    }
    for (j, m) in many {
        let column: Vec<f64> = rows.iter().map(|&i| negated(i, j)).collect();
        let cut = smallest(&column, m);
        for pos in cut.chosen {
            chosen[pos] = true;
        }
        for pos in cut.tied {
            tied[pos] = true;
        }
    }
    let pick = |marks: &[bool]| -> Vec<usize> {
        rows.iter()
            .zip(marks)
            .filter(|&(_, &c)| c)
            .map(|(&i, _)| i)
            .collect()
    };
    Cut {
        chosen: pick(&chosen),
        tied: pick(&tied),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probs(rows: &[&[f64]]) -> Probabilities {
        Probabilities::from_rows(rows.iter().map(|r| r.to_vec()).collect()).unwrap()
    }

    #[test]
    fn round_preserving_sum_keeps_totals() {
        // 3 x 0.4 = 1.2 -> 1: one of the tied entries moves up (numpy's order on ties).
        assert_eq!(round_preserving_sum(&[0.4, 0.4, 0.4]), vec![0, 0, 1]);
        assert_eq!(round_preserving_sum(&[2.5, 0.5, 1.0]), vec![2, 1, 1]);
        assert_eq!(round_preserving_sum(&[1.6, 1.6, 1.8]), vec![1, 2, 2]);
    }

    /// Expected values printed by cleanlab 2.9.0 for the same arrays.
    #[test]
    fn small_case_matches_cleanlab() {
        let p = probs(&[
            &[0.9, 0.1, 0.0],
            &[0.8, 0.2, 0.0],
            &[0.2, 0.7, 0.1],
            &[0.1, 0.8, 0.1],
            &[0.7, 0.2, 0.1],
            &[0.1, 0.1, 0.8],
            &[0.0, 0.2, 0.8],
            &[0.1, 0.3, 0.6],
        ]);
        let labels = [0, 0, 1, 1, 1, 2, 2, 0];
        let t = confident_thresholds(&labels, &p);
        let expected = [0.6, 0.566_666_666_666_666_7, 0.8];
        for (a, b) in t.iter().zip(expected) {
            assert!((a - b).abs() < 1e-15);
        }
        let raw = confident_joint(&labels, &p, false);
        assert_eq!(raw.off_diagonal, vec![4]);
        assert_eq!(
            raw.joint.rows(),
            vec![vec![2, 0, 0], vec![1, 2, 0], vec![0, 0, 2]]
        );
        let calibrated = confident_joint(&labels, &p, true).joint;
        assert_eq!(
            calibrated.rows(),
            vec![vec![3, 0, 0], vec![1, 2, 0], vec![0, 0, 2]]
        );
        let expected = [
            (FilterBy::PruneByNoiseRate, vec![4]),
            (FilterBy::PruneByClass, vec![4]),
            (FilterBy::Both, vec![4]),
            (FilterBy::ConfidentLearning, vec![4]),
            (FilterBy::PredictedNeqGiven, vec![4, 7]),
            (FilterBy::LowSelfConfidence, vec![7]),
            // Rows 4 and 7 tie at normalised margin 0.25 for the one issue: the earlier row is
            // taken (cleanlab 2.9.0's numpy sort took 7 on an AVX2 machine).
            (FilterBy::LowNormalizedMargin, vec![4]),
        ];
        for (filter_by, rows) in expected {
            let options = FilterOptions {
                filter_by,
                ..FilterOptions::default()
            };
            let flags = find_label_issues(&labels, &p, options);
            let flagged: Vec<usize> = (0..flags.len()).filter(|&i| flags[i]).collect();
            assert_eq!(flagged, rows, "{}", filter_by.name());
        }
        // The tie is named; the other modes chose no row from a tie.
        for (filter_by, from_ties) in [
            (FilterBy::LowNormalizedMargin, 1),
            (FilterBy::LowSelfConfidence, 0),
            (FilterBy::Both, 0),
        ] {
            let options = FilterOptions {
                filter_by,
                ..FilterOptions::default()
            };
            let issues = label_issues(&labels, &p, options);
            assert_eq!(
                issues.flagged_from_ties(),
                from_ties,
                "{}",
                filter_by.name()
            );
        }
        let options = FilterOptions {
            filter_by: FilterBy::LowNormalizedMargin,
            ..FilterOptions::default()
        };
        assert!(label_issues(&labels, &p, options).tied[4]);
    }

    /// Rows tied at a cut-off: the earlier rows are taken, and the rows chosen that way are
    /// named. Four rows of class 0 give it exactly 0; two of them are confidently class 1, the
    /// other two split evenly and are confident in nothing, so fewer issues are counted than
    /// rows tie.
    #[test]
    fn ties_at_a_cut_go_to_the_earlier_rows() {
        let p = probs(&[
            &[0.9, 0.05, 0.05],
            &[0.0, 0.5, 0.5],
            &[0.8, 0.1, 0.1],
            &[0.0, 1.0, 0.0],
            &[0.0, 0.5, 0.5],
            &[0.0, 1.0, 0.0],
            &[0.05, 0.9, 0.05],
            &[0.1, 0.8, 0.1],
            &[0.05, 0.95, 0.0],
            &[0.05, 0.05, 0.9],
            &[0.1, 0.1, 0.8],
            &[0.0, 0.1, 0.9],
        ]);
        let labels = [0, 0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2];
        // (mode, flagged rows, how many of them were chosen among ties at a cut)
        let expected = [
            // The zero rows 1, 3, 4 of the four (1, 3, 4, 5) for three prune-by-class issues.
            (FilterBy::PruneByClass, vec![1, 3, 4], 3),
            // Rows 3 and 5 have the largest margin toward class 1; rows 1 and 4 tie toward
            // class 2, and the earlier is pruned.
            (FilterBy::PruneByNoiseRate, vec![1, 3, 5], 1),
            (FilterBy::Both, vec![1, 3], 2),
            (FilterBy::ConfidentLearning, vec![3, 5], 0),
            (FilterBy::PredictedNeqGiven, vec![1, 3, 4, 5], 0),
            // Two issues, four self-confidences of exactly 0: the first two rows.
            (FilterBy::LowSelfConfidence, vec![1, 3], 2),
            (FilterBy::LowNormalizedMargin, vec![3, 5], 0),
        ];
        for (filter_by, rows, from_ties) in expected {
            let options = FilterOptions {
                filter_by,
                ..FilterOptions::default()
            };
            let issues = label_issues(&labels, &p, options);
            let flagged: Vec<usize> = (0..12).filter(|&i| issues.flags[i]).collect();
            assert_eq!(flagged, rows, "{}", filter_by.name());
            assert_eq!(
                issues.flagged_from_ties(),
                from_ties,
                "{}",
                filter_by.name()
            );
        }
    }
}
