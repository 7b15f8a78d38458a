//! Score tables of sharded runs put back together: concatenated in query order (queries in
//! order of first appearance, shard order within a query) and ranked per query, as one
//! unsharded run would have written them.

use std::collections::HashMap;

use anyhow::Result;
use polars::prelude::*;

/// The same (query, training example) pair in two shards: the shards overlap.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "query {query:?}, training example {train:?} appears twice (rows {first_row} and {row} of the concatenation): overlapping shards"
)]
pub struct OverlappingShards {
    pub query: String,
    pub train: String,
    /// 1-based rows of the concatenation.
    pub first_row: usize,
    pub row: usize,
}

/// The merged table and how many queries it holds.
#[derive(Debug)]
pub struct MergedScores {
    pub frame: DataFrame,
    pub queries: usize,
}

/// Concatenate `shards` (columns `query_id`, `train_id`, `score`, each with the same schema),
/// order the rows query-major and set `rank` (1 = highest score within its query; ties keep
/// the order). Fails with [`OverlappingShards`] when a pair appears twice.
pub fn merge_score_shards(shards: &[DataFrame]) -> Result<MergedScores> {
    let mut merged = shards
        .first()
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no score tables to merge"))?;
    for frame in &shards[1..] {
        merged.vstack_mut(frame)?;
    }
    merged.rechunk_mut();

    let queries = merged.column("query_id")?.cast(&DataType::String)?;
    let queries = queries.str()?;
    let trains = merged.column("train_id")?.cast(&DataType::String)?;
    let trains = trains.str()?;
    let mut query_index: HashMap<&str, u32> = HashMap::new();
    let mut seen: HashMap<(&str, &str), usize> = HashMap::new();
    let mut keys = Vec::with_capacity(merged.height());
    for row in 0..merged.height() {
        let (query, train) = (
            queries.get(row).unwrap_or(""),
            trains.get(row).unwrap_or(""),
        );
        let next = query_index.len() as u32;
        let q_index = *query_index.entry(query).or_insert(next);
        if let Some(first) = seen.insert((query, train), row) {
            return Err(OverlappingShards {
                query: query.to_string(),
                train: train.to_string(),
                first_row: first + 1,
                row: row + 1,
            }
            .into());
        }
        keys.push((q_index, row as u32));
    }
    keys.sort();
    let order: Vec<IdxSize> = keys.iter().map(|&(_, row)| row as IdxSize).collect();
    let mut sorted = merged.take(&IdxCa::from_vec("".into(), order))?;

    let scores = sorted.column("score")?.cast(&DataType::Float64)?;
    let scores: Vec<f64> = scores
        .f64()?
        .iter()
        .map(|v| v.unwrap_or(f64::NAN))
        .collect();
    let query_of: Vec<u32> = keys.iter().map(|&(q, _)| q).collect();
    let ranks = Column::new(
        "rank".into(),
        ranks_within(&query_of, &scores)
            .into_iter()
            .map(Some)
            .collect::<Vec<Option<u32>>>(),
    );
    if sorted.column("rank").is_ok() {
        sorted.replace("rank", ranks)?;
    } else {
        sorted.with_column(ranks)?;
    }
    Ok(MergedScores {
        frame: sorted,
        queries: query_index.len(),
    })
}

/// Ranks within each run of equal `query` values, as an unsharded run ranks each query's
/// scores ([`super::report::ranks`]).
fn ranks_within(query: &[u32], scores: &[f64]) -> Vec<u32> {
    let mut rank = Vec::with_capacity(scores.len());
    let mut start = 0;
    for run in query.chunk_by(|a, b| a == b) {
        rank.extend(super::report::ranks(&scores[start..start + run.len()]));
        start += run.len();
    }
    rank
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(queries: &[&str], trains: &[i64], scores: &[f64]) -> DataFrame {
        df!(
            "query_id" => queries,
            "train_id" => trains,
            "score" => scores,
        )
        .unwrap()
    }

    #[test]
    fn shards_merge_query_major_and_rank_per_query() {
        // Shard 0 holds training rows 0-1, shard 1 rows 2-3, each for queries a and b.
        let first = shard(&["a", "a", "b", "b"], &[0, 1, 0, 1], &[0.5, 2.0, 1.0, -1.0]);
        let second = shard(&["a", "a", "b", "b"], &[2, 3, 2, 3], &[3.0, 0.5, 0.0, 5.0]);
        let merged = merge_score_shards(&[first, second]).unwrap();
        assert_eq!(merged.queries, 2);
        let frame = merged.frame;
        let column = |name: &str| {
            frame
                .column(name)
                .unwrap()
                .cast(&DataType::Float64)
                .unwrap()
                .f64()
                .unwrap()
                .into_no_null_iter()
                .collect::<Vec<f64>>()
        };
        assert_eq!(column("train_id"), [0.0, 1.0, 2.0, 3.0, 0.0, 1.0, 2.0, 3.0]);
        assert_eq!(column("score"), [0.5, 2.0, 3.0, 0.5, 1.0, -1.0, 0.0, 5.0]);
        // Ties keep the order: the two 0.5s of query a rank 3 then 4.
        assert_eq!(column("rank"), [3.0, 2.0, 1.0, 4.0, 2.0, 4.0, 3.0, 1.0]);
    }

    #[test]
    fn an_existing_rank_column_is_replaced() {
        let with_rank = shard(&["q"], &[7], &[1.0])
            .hstack(&[Column::new("rank".into(), [9u32])])
            .unwrap();
        let merged = merge_score_shards(&[with_rank]).unwrap();
        let rank = merged.frame.column("rank").unwrap();
        assert_eq!(rank.u32().unwrap().get(0), Some(1));
        assert_eq!(merged.frame.width(), 4);
    }

    #[test]
    fn overlapping_shards_are_refused() {
        let first = shard(&["a", "a"], &[0, 1], &[1.0, 2.0]);
        let second = shard(&["a"], &[1], &[2.0]);
        let err = merge_score_shards(&[first, second]).unwrap_err();
        let overlap = err.downcast_ref::<OverlappingShards>().unwrap();
        assert_eq!((overlap.first_row, overlap.row), (2, 3));
        assert!(err.to_string().contains("appears twice"));
    }
}
