//! Influence scores joined onto the rows being reweighted: the mean score of each training id
//! over the queries, looked up per row.

use std::collections::HashMap;

/// Why scores cannot be joined.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ScoreJoinError {
    /// A score row without a training id (0-based row).
    #[error("id is null")]
    NullId { row: usize },
    /// A row being reweighted has no score (0-based row).
    #[error("id {id} has no score")]
    Missing { row: usize, id: String },
}

/// The mean score of every training id.
#[derive(Debug, Clone, Default)]
pub(crate) struct MeanScores {
    means: HashMap<String, f64>,
}

impl MeanScores {
    /// From score rows (`curate influence`'s output): per training id, the mean over its rows.
    /// Where rows against the aggregated query (`query_id` = `mean`) are present, only those
    /// count.
    pub(crate) fn from_rows(
        train_ids: &[Option<&str>],
        query_ids: Option<&[Option<&str>]>,
        scores: &[f64],
    ) -> Result<MeanScores, ScoreJoinError> {
        let is_mean = |row: usize| query_ids.is_some_and(|q| q[row] == Some("mean"));
        let only_mean = (0..train_ids.len()).any(is_mean);
        let mut sums: HashMap<&str, (f64, usize)> = HashMap::new();
        for (row, id) in train_ids.iter().enumerate() {
            if only_mean && !is_mean(row) {
                continue;
            }
            let id = id.ok_or(ScoreJoinError::NullId { row })?;
            let entry = sums.entry(id).or_insert((0.0, 0));
            entry.0 += scores[row];
            entry.1 += 1;
        }
        Ok(MeanScores {
            means: sums
                .into_iter()
                .map(|(id, (sum, n))| (id.to_string(), sum / n as f64))
                .collect(),
        })
    }

    /// The score of each row's id (a null id is the empty string).
    pub(crate) fn lookup(&self, ids: &[Option<&str>]) -> Result<Vec<f64>, ScoreJoinError> {
        ids.iter()
            .enumerate()
            .map(|(row, id)| {
                let id = id.unwrap_or_default();
                self.means
                    .get(id)
                    .copied()
                    .ok_or_else(|| ScoreJoinError::Missing {
                        row,
                        id: id.to_string(),
                    })
            })
            .collect()
    }
}

/// Each row's position when rows are sorted by `key` (ties keep row order), so ties elsewhere
/// can be broken by id.
pub(crate) fn rank_by<K: Ord>(keys: &[K]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_by(|&a, &b| keys[a].cmp(&keys[b]));
    let mut rank = vec![0; order.len()];
    for (position, &row) in order.iter().enumerate() {
        rank[row] = position;
    }
    rank
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_are_averaged_over_queries_per_training_id() {
        let train = [Some("a"), Some("b"), Some("a"), Some("b")];
        let query = [Some("q1"), Some("q1"), Some("q2"), Some("q2")];
        let means = MeanScores::from_rows(&train, Some(&query), &[1.0, 2.0, 3.0, 6.0]).unwrap();
        assert_eq!(means.lookup(&[Some("b"), Some("a")]).unwrap(), [4.0, 2.0]);
        assert_eq!(
            means.lookup(&[Some("c")]).unwrap_err(),
            ScoreJoinError::Missing {
                row: 0,
                id: "c".into()
            }
        );
    }

    #[test]
    fn aggregated_rows_win_over_per_query_rows() {
        let train = [Some("a"), Some("a"), Some("a")];
        let query = [Some("q1"), Some("mean"), Some("q2")];
        let means = MeanScores::from_rows(&train, Some(&query), &[1.0, 10.0, 3.0]).unwrap();
        assert_eq!(means.lookup(&[Some("a")]).unwrap(), [10.0]);
        let plain = MeanScores::from_rows(&train, None, &[1.0, 10.0, 4.0]).unwrap();
        assert_eq!(plain.lookup(&[Some("a")]).unwrap(), [5.0]);
        assert_eq!(
            MeanScores::from_rows(&[Some("a"), None], None, &[1.0, 2.0]).unwrap_err(),
            ScoreJoinError::NullId { row: 1 }
        );
    }

    #[test]
    fn ranks_follow_the_sorted_keys() {
        assert_eq!(rank_by(&[30, 10, 20]), [2, 0, 1]);
        assert_eq!(rank_by(&[Some("b"), None, Some("a")]), [2, 0, 1]);
    }
}
