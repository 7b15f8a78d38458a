//! The decision per row: which detectors fired, whether that makes a label issue, what kind,
//! and what the consensus suggests instead.

use super::Probabilities;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Detector {
    /// Confident learning on the sources' probabilities.
    Cl,
    /// kNN vote on embeddings.
    Knn,
    /// CROWDLAB consensus of the sources.
    Vote,
    /// Confident learning on an embedding probe's out-of-fold probabilities.
    Probe,
}

impl Detector {
    pub const ALL: [Detector; 4] = [Detector::Cl, Detector::Knn, Detector::Vote, Detector::Probe];

    pub fn name(self) -> &'static str {
        match self {
            Detector::Cl => "cl",
            Detector::Knn => "knn",
            Detector::Vote => "vote",
            Detector::Probe => "probe",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IssueType {
    None,
    /// The label is wrong and the consensus confidently names another.
    Noisy,
    /// The label is kept, but other classes apply too.
    Missing,
    /// The label is doubted, but no other class is confident enough to suggest.
    Ambiguous,
}

impl IssueType {
    pub const ALL: [IssueType; 4] = [
        IssueType::None,
        IssueType::Noisy,
        IssueType::Missing,
        IssueType::Ambiguous,
    ];

    pub fn name(self) -> &'static str {
        match self {
            IssueType::None => "none",
            IssueType::Noisy => "noisy",
            IssueType::Missing => "missing",
            IssueType::Ambiguous => "ambiguous",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct DecisionOptions {
    /// Detectors that must fire for a label issue.
    pub min_detectors: usize,
    /// Also require the consensus probability of the given label to be below this.
    pub tau: Option<f64>,
    /// Consensus probability a class needs to be suggested.
    pub confidence: f64,
    /// Consensus probability (presence, for multi-label) from which a class counts as applying.
    pub missing_threshold: f64,
    pub multi_label: bool,
}

impl DecisionOptions {
    /// Enough detectors fired and, with `tau`, the consensus doubts the given label.
    fn is_issue(&self, fired: usize, p_given: f64) -> bool {
        fired >= self.min_detectors.max(1) && self.tau.is_none_or(|t| p_given < t)
    }
}

/// What was decided for one row.
#[derive(Debug, Clone, PartialEq)]
pub struct RowDecision {
    pub is_issue: bool,
    pub issue_type: IssueType,
    /// Single-label: the suggested class. Multi-label: the suggested set.
    pub suggested: Option<Vec<usize>>,
    pub missing: Vec<usize>,
    /// Consensus probability of the given label (multi-label: the lowest over the given set).
    pub p_given: f64,
    pub fired: Vec<Detector>,
}

/// Decide every row from the detectors' flags and the consensus distribution `soft` (class
/// probabilities, or per-class presence for multi-label data).
pub fn decide(
    labels: &[Vec<usize>],
    flags: &[(Detector, Vec<bool>)],
    soft: &Probabilities,
    options: DecisionOptions,
) -> Vec<RowDecision> {
    use rayon::prelude::*;
    labels
        .par_iter()
        .enumerate()
        .map(|(i, given)| {
            let fired: Vec<Detector> = flags
                .iter()
                .filter(|(_, f)| f[i])
                .map(|(d, _)| *d)
                .collect();
            let row = soft.row(i);
            if options.multi_label {
                decide_multi(given, row, fired, options)
            } else {
                decide_single(given[0], row, fired, options)
            }
        })
        .collect()
}

fn decide_single(
    given: usize,
    row: &[f64],
    fired: Vec<Detector>,
    options: DecisionOptions,
) -> RowDecision {
    let p_given = row[given];
    let is_issue = options.is_issue(fired.len(), p_given);
    let best = super::numeric::argmax(row);
    let t = options.missing_threshold;
    let missing: Vec<usize> = if !is_issue && p_given >= t {
        (0..row.len())
            .filter(|&k| k != given && row[k] >= t)
            .collect()
    } else {
        Vec::new()
    };
    let (issue_type, suggested) = if is_issue {
        if best != given && row[best] >= options.confidence {
            (IssueType::Noisy, Some(vec![best]))
        } else {
            (IssueType::Ambiguous, None)
        }
    } else if !missing.is_empty() {
        (IssueType::Missing, None)
    } else {
        (IssueType::None, None)
    };
    RowDecision {
        is_issue,
        issue_type,
        suggested,
        missing,
        p_given,
        fired,
    }
}

fn decide_multi(
    given: &[usize],
    row: &[f64],
    fired: Vec<Detector>,
    options: DecisionOptions,
) -> RowDecision {
    let t = options.missing_threshold;
    let p_given = given.iter().map(|&k| row[k]).fold(1.0, f64::min);
    let is_issue = options.is_issue(fired.len(), p_given);
    let missing: Vec<usize> = (0..row.len())
        .filter(|k| !given.contains(k) && row[*k] >= t)
        .collect();
    // Given classes the consensus confidently rejects.
    let wrong: Vec<usize> = given
        .iter()
        .copied()
        .filter(|&k| row[k] <= 1.0 - options.confidence)
        .collect();
    let suggested_set = || {
        let mut set: Vec<usize> = given
            .iter()
            .copied()
            .filter(|k| !wrong.contains(k))
            .chain(missing.iter().copied())
            .collect();
        set.sort_unstable();
        set
    };
    let (issue_type, suggested) = if is_issue && !wrong.is_empty() {
        (IssueType::Noisy, Some(suggested_set()))
    } else if !missing.is_empty() {
        (IssueType::Missing, Some(suggested_set()))
    } else if is_issue {
        (IssueType::Ambiguous, None)
    } else {
        (IssueType::None, None)
    };
    RowDecision {
        is_issue,
        issue_type,
        suggested,
        missing,
        p_given,
        fired,
    }
}

/// Mean of several distributions of the same shape, summed in the order given.
pub(crate) fn mean_distribution(parts: &[&Probabilities]) -> Probabilities {
    let first = parts[0];
    let mut values = first.values().to_vec();
    for part in &parts[1..] {
        for (v, p) in values.iter_mut().zip(part.values()) {
            *v += p;
        }
    }
    let count = parts.len() as f64;
    for v in values.iter_mut() {
        *v /= count;
    }
    Probabilities::new(first.classes(), values)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(multi_label: bool) -> DecisionOptions {
        DecisionOptions {
            min_detectors: 1,
            tau: None,
            confidence: 0.5,
            missing_threshold: if multi_label { 0.5 } else { 0.3 },
            multi_label,
        }
    }

    #[test]
    fn single_label_types() {
        let soft = Probabilities::from_rows(vec![
            vec![0.1, 0.8, 0.1],
            vec![0.4, 0.35, 0.25],
            vec![0.5, 0.45, 0.05],
            vec![0.9, 0.05, 0.05],
        ])
        .unwrap();
        let labels = vec![vec![0], vec![0], vec![0], vec![0]];
        let flags = vec![(Detector::Cl, vec![true, true, false, false])];
        let rows = decide(&labels, &flags, &soft, options(false));
        assert_eq!(rows[0].issue_type, IssueType::Noisy);
        assert_eq!(rows[0].suggested, Some(vec![1]));
        assert_eq!(rows[1].issue_type, IssueType::Ambiguous);
        assert_eq!(rows[2].issue_type, IssueType::Missing);
        assert_eq!(rows[2].missing, vec![1]);
        assert!(!rows[2].is_issue);
        assert_eq!(rows[3].issue_type, IssueType::None);
        // Two detectors required: one is not enough.
        let strict = DecisionOptions {
            min_detectors: 2,
            ..options(false)
        };
        assert!(!decide(&labels, &flags, &soft, strict)[0].is_issue);
        // tau keeps only rows whose label the consensus finds unlikely.
        let tau = DecisionOptions {
            tau: Some(0.2),
            ..options(false)
        };
        let rows = decide(&labels, &flags, &soft, tau);
        assert!(rows[0].is_issue && !rows[1].is_issue);
    }

    #[test]
    fn multi_label_types() {
        let soft = Probabilities::from_rows(vec![
            vec![0.9, 0.8, 0.1],
            vec![0.1, 0.9, 0.2],
            vec![0.9, 0.1, 0.1],
        ])
        .unwrap();
        let labels = vec![vec![0], vec![0, 1], vec![0]];
        let flags = vec![(Detector::Cl, vec![true, true, false])];
        let rows = decide(&labels, &flags, &soft, options(true));
        assert_eq!(rows[0].issue_type, IssueType::Missing);
        assert_eq!(rows[0].suggested, Some(vec![0, 1]));
        assert_eq!(rows[1].issue_type, IssueType::Noisy);
        assert_eq!(rows[1].suggested, Some(vec![1]));
        assert_eq!(rows[2].issue_type, IssueType::None);
        assert!((rows[1].p_given - 0.1).abs() < 1e-12);
    }
}
