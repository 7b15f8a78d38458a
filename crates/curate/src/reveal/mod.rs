//! Label-issue detection (REVEAL): confident learning exactly as cleanlab 2.9.0, kNN consensus
//! on embeddings, source-vote consensus (CROWDLAB) and the decision that combines them.
//!
//! Everything here works on plain rows: labels as class indices, probabilities as a row-major
//! matrix, sources aligned with the label rows; `inputs` reads and joins the tables they come from.

pub mod ask;
pub mod classes;
pub mod confident;
pub mod crowdlab;
pub mod decide;
pub mod detect;
pub mod inputs;
pub mod knn;
pub mod multilabel;
pub mod numeric;
pub mod quality;
pub mod report;

pub use confident::{
    FilterBy, FilterOptions, IssueCount, LabelIssues, confident_joint, find_label_issues,
    label_issues, num_label_issues,
};
pub use quality::{QualityMethod, quality_scores};

/// N x K class probabilities, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Probabilities {
    classes: usize,
    values: Vec<f64>,
}

impl Probabilities {
    /// `values` holds `values.len() / classes` rows of `classes` numbers.
    pub fn new(classes: usize, values: Vec<f64>) -> Probabilities {
        assert!(
            classes > 0 && values.len().is_multiple_of(classes),
            "ragged matrix"
        );
        Probabilities { classes, values }
    }

    /// Test data as rows; `None` when they are ragged or empty.
    #[cfg(test)]
    pub(crate) fn from_rows(rows: Vec<Vec<f64>>) -> Option<Probabilities> {
        let classes = rows.first()?.len();
        if classes == 0 || rows.iter().any(|r| r.len() != classes) {
            return None;
        }
        Some(Probabilities::new(classes, rows.concat()))
    }

    pub fn classes(&self) -> usize {
        self.classes
    }

    pub fn len(&self) -> usize {
        self.values.len() / self.classes
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    #[inline]
    pub fn row(&self, i: usize) -> &[f64] {
        &self.values[i * self.classes..(i + 1) * self.classes]
    }

    #[inline]
    pub fn get(&self, i: usize, k: usize) -> f64 {
        self.values[i * self.classes + k]
    }

    pub fn values(&self) -> &[f64] {
        &self.values
    }
}
