//! The tables an influence run produces: example scores, tokens, segments and the
//! cross-domain summary, built from the scores gathered over its batches.

use std::collections::{BTreeMap, HashSet};
use std::ops::Range;

use faer::Mat;
use polars::prelude::*;
use tokenizers::Tokenizer;

use super::checkpoint::PassState;
use super::examples::{Examples, is_response, take};
use super::segment::{self, Segmenter};
use super::{BatchScores, QueryAggregate};

/// What the tables are built from besides the scores.
pub struct Tables<'a> {
    pub train: &'a Examples,
    pub query: &'a QueryLabels,
    /// Decodes token texts (empty without one).
    pub tokenizer: Option<&'a Tokenizer>,
    pub segmenter: &'a Segmenter,
    pub per_module: bool,
    /// Rank within each query (not for one shard's partial rows).
    pub ranked: bool,
}

/// The query side of the output: ids (or `mean`/`sum`) and domains.
pub struct QueryLabels {
    pub ids: Column,
    pub domains: Vec<String>,
}

impl QueryLabels {
    pub fn new(
        query: &Examples,
        rows: &[usize],
        aggregate: QueryAggregate,
    ) -> PolarsResult<QueryLabels> {
        let name = match aggregate {
            QueryAggregate::None => {
                let rows: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
                let domains = match &query.domain {
                    Some((_, d)) => rows.iter().map(|&r| d[r as usize].clone()).collect(),
                    None => vec!["all".to_string(); rows.len()],
                };
                return Ok(QueryLabels {
                    ids: query.ids_of(&rows)?,
                    domains,
                });
            }
            QueryAggregate::Mean => "mean",
            QueryAggregate::Sum => "sum",
        };
        Ok(QueryLabels {
            ids: Column::new("query_id".into(), [name]),
            domains: vec!["all".to_string()],
        })
    }
}

/// Scores gathered over the batches of one run.
pub struct Collected {
    pub queries: usize,
    pub modules: Vec<String>,
    pub rows: Range<usize>,
    /// `[q][local row]`, summed over modules.
    pub examples: Vec<Vec<f64>>,
    /// `[module][q][local row]`.
    pub per_module: Vec<Vec<Vec<f64>>>,
    /// Per local row, `[M, T]` summed over modules.
    pub tokens: Option<Vec<Mat<f64>>>,
}

impl Collected {
    pub fn new(queries: usize, modules: Vec<String>, rows: Range<usize>, tokens: bool) -> Self {
        let n = rows.len();
        Collected {
            queries,
            per_module: vec![vec![vec![0.0; n]; queries]; modules.len()],
            modules,
            examples: vec![vec![0.0; n]; queries],
            tokens: tokens.then(|| vec![Mat::zeros(0, 0); n]),
            rows,
        }
    }

    pub fn add(&mut self, batch: BatchScores) {
        let total = batch.examples.total();
        for (b, &row) in batch.rows.iter().enumerate() {
            let local = row - self.rows.start;
            for q in 0..self.queries {
                self.examples[q][local] = total[(q, b)];
                for (m, layer) in batch.examples.per_layer.iter().enumerate() {
                    self.per_module[m][q][local] = layer[(q, b)];
                }
            }
        }
        if let (Some(tokens), Some(batch_tokens)) = (&mut self.tokens, batch.tokens) {
            for (&row, scores) in batch.rows.iter().zip(batch_tokens) {
                tokens[row - self.rows.start] = scores.total();
            }
        }
    }

    /// These scores as a checkpoint's pass state, after `done` of the pass.
    pub fn to_state(&self, done: super::Done) -> PassState {
        let n = self.rows.len();
        let mut arrays = vec![
            (
                "examples".to_string(),
                vec![self.queries, n],
                self.examples.concat(),
            ),
            (
                "per_module".to_string(),
                vec![self.modules.len(), self.queries, n],
                self.per_module
                    .iter()
                    .flatten()
                    .flatten()
                    .copied()
                    .collect(),
            ),
        ];
        if let Some(tokens) = &self.tokens {
            let shapes: Vec<f64> = tokens
                .iter()
                .flat_map(|m| [m.nrows() as f64, m.ncols() as f64])
                .collect();
            let values: Vec<f64> = tokens
                .iter()
                .flat_map(|m| {
                    (0..m.nrows()).flat_map(move |i| (0..m.ncols()).map(move |j| m[(i, j)]))
                })
                .collect();
            arrays.push(("token_shapes".to_string(), vec![n, 2], shapes));
            arrays.push(("tokens".to_string(), vec![values.len()], values));
        }
        PassState {
            batches: done.batches,
            rows: done.rows,
            complete: false,
            names: self.modules.clone(),
            arrays,
        }
    }

    /// Scores a checkpoint saved with [`Collected::to_state`] for the same run; `None` when
    /// its arrays do not fit this run's shape.
    pub fn from_state(
        queries: usize,
        modules: Vec<String>,
        rows: Range<usize>,
        tokens: bool,
        state: &PassState,
    ) -> Option<Self> {
        let n = rows.len();
        let mut collected = Collected::new(queries, modules, rows, tokens);
        if state.names != collected.modules {
            return None;
        }
        let (shape, values) = state.array("examples")?;
        if shape != [queries, n] {
            return None;
        }
        for (q, chunk) in values.chunks(n.max(1)).enumerate().take(queries) {
            collected.examples[q].copy_from_slice(chunk);
        }
        let (shape, values) = state.array("per_module")?;
        if shape != [collected.modules.len(), queries, n] {
            return None;
        }
        for (i, chunk) in values
            .chunks(n.max(1))
            .enumerate()
            .take(queries * collected.modules.len())
        {
            collected.per_module[i / queries][i % queries].copy_from_slice(chunk);
        }
        if let Some(tokens) = &mut collected.tokens {
            let (shape, shapes) = state.array("token_shapes")?;
            let (_, values) = state.array("tokens")?;
            if shape != [n, 2] {
                return None;
            }
            let mut offset = 0;
            for (row, size) in tokens.iter_mut().zip(shapes.chunks(2)) {
                let (r, c) = (size[0] as usize, size[1] as usize);
                let part = values.get(offset..offset + r * c)?;
                *row = Mat::from_fn(r, c, |i, j| part[i * c + j]);
                offset += r * c;
            }
        }
        Some(collected)
    }

    /// The mean over queries of each local row's score.
    pub(crate) fn mean_over_queries(&self, totals: &[Vec<f64>]) -> Vec<f64> {
        let n = self.rows.len();
        (0..n)
            .map(|i| totals.iter().map(|q| q[i]).sum::<f64>() / self.queries.max(1) as f64)
            .collect()
    }
}

/// One training example's tokens and segments.
pub(crate) struct Pieces {
    /// Per token: decoded text, whether it carries loss, segment index.
    token_text: Vec<String>,
    response: Vec<bool>,
    token_segment: Vec<usize>,
    /// Per segment: kind, token range (positions), text.
    segments: Vec<(String, Range<usize>, String)>,
    /// `[q][segment]` sums of token scores.
    segment_scores: Vec<Vec<f64>>,
}

fn pieces_of(collected: &Collected, tables: &Tables) -> Vec<Pieces> {
    let tokens = collected.tokens.as_ref().expect("token scores");
    collected
        .rows
        .clone()
        .zip(tokens)
        .map(|(row, scores)| {
            let sequence = &tables.train.sequences[row];
            let token_text: Vec<String> = sequence
                .input_ids
                .iter()
                .map(|&id| match tables.tokenizer {
                    Some(tok) => tok.decode(&[id as u32], false).unwrap_or_default(),
                    None => String::new(),
                })
                .collect();
            let response = is_response(sequence);
            // The response text is the concatenation of its tokens' texts.
            let mut text = String::new();
            let mut starts = Vec::new();
            for (t, piece) in token_text.iter().enumerate() {
                if response[t] {
                    starts.push(text.len());
                    text.push_str(piece);
                }
            }
            let answer = tables
                .train
                .answers
                .as_ref()
                .and_then(|a| a[row].as_deref());
            let mut found = tables.segmenter.split(&text, answer);
            // Response tokens whose text is empty (no tokenizer to decode them, or special
            // tokens only) still need a segment: the whole response.
            if found.is_empty() && !starts.is_empty() {
                found.push(segment::Segment {
                    bytes: 0..text.len(),
                    kind: "response",
                });
            }
            let of_response = segment::assign(&starts, &found);
            // Segment 0 holds the prompt; a non-response token after the response began stays
            // with the segment before it.
            let mut token_segment = Vec::with_capacity(token_text.len());
            let (mut next, mut current) = (0, 0);
            for &is_response in &response {
                if is_response {
                    current = of_response[next] + 1;
                    next += 1;
                }
                token_segment.push(current);
            }
            let mut segments = vec![("prompt".to_string(), 0..0, String::new())];
            segments.extend(
                found
                    .iter()
                    .map(|s| (s.kind.to_string(), 0..0, String::new())),
            );
            for (t, &s) in token_segment.iter().enumerate() {
                let range = &mut segments[s].1;
                if range.start == range.end {
                    *range = t..t + 1;
                } else {
                    range.end = t + 1;
                }
                segments[s].2.push_str(&token_text[t]);
            }
            let segment_scores = (0..collected.queries)
                .map(|q| {
                    let mut sums = vec![0.0; segments.len()];
                    for (t, &s) in token_segment.iter().enumerate() {
                        sums[s] += scores[(q, t)];
                    }
                    sums
                })
                .collect();
            Pieces {
                token_text,
                response,
                token_segment,
                segments,
                segment_scores,
            }
        })
        .collect()
}

/// With token scores, each example's score is the sum of its segments' (which are sums of
/// their tokens'), so the three tables agree.
fn example_totals_from_segments(collected: &Collected, pieces: &[Pieces]) -> Vec<Vec<f64>> {
    (0..collected.queries)
        .map(|q| {
            pieces
                .iter()
                .map(|p| p.segment_scores[q].iter().sum())
                .collect()
        })
        .collect()
}

/// `[q repeated per row]` and `[rows repeated per query]` indices.
fn pair_indices(queries: usize, rows: &Range<usize>) -> (Vec<u32>, Vec<u32>) {
    let mut q_index = Vec::with_capacity(queries * rows.len());
    let mut n_index = Vec::with_capacity(queries * rows.len());
    for q in 0..queries {
        for n in rows.clone() {
            q_index.push(q as u32);
            n_index.push(n as u32);
        }
    }
    (q_index, n_index)
}

fn named(column: Column, name: &str) -> Column {
    let mut column = column;
    column.rename(name.into());
    column
}

fn query_ids(tables: &Tables, q_index: &[u32]) -> PolarsResult<Column> {
    Ok(named(take(&tables.query.ids, q_index)?, "query_id"))
}

/// Rank 1 = most helpful (highest score) among one query's scores; ties keep row order.
pub(crate) fn ranks(scores: &[f64]) -> Vec<u32> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut rank = vec![0u32; scores.len()];
    for (position, &i) in order.iter().enumerate() {
        rank[i] = position as u32 + 1;
    }
    rank
}

fn scores_frame(
    collected: &Collected,
    tables: &Tables,
    totals: &[Vec<f64>],
) -> PolarsResult<DataFrame> {
    let (q_index, n_index) = pair_indices(collected.queries, &collected.rows);
    let mut columns = vec![
        query_ids(tables, &q_index)?,
        named(take(&tables.train.ids, &n_index)?, "train_id"),
        Column::new("score".into(), totals.concat()),
    ];
    let rank: Vec<Option<u32>> = if tables.ranked {
        totals.iter().flat_map(|q| ranks(q)).map(Some).collect()
    } else {
        vec![None; q_index.len()]
    };
    columns.push(Column::new("rank".into(), rank));
    for (name, carried) in [
        ("domain", &tables.train.domain),
        ("difficulty", &tables.train.difficulty),
    ] {
        if let Some((column, _)) = carried {
            columns.push(named(take(column, &n_index)?, name));
        }
    }
    if tables.per_module {
        for (name, scores) in collected.modules.iter().zip(&collected.per_module) {
            columns.push(Column::new(format!("score.{name}").into(), scores.concat()));
        }
    }
    DataFrame::new_infer_height(columns)
}

/// Scores of chosen training rows per query, `picks[q]` = (row of `tables.train`, score) best
/// first: query_id, train_id, score, rank (1 to K in that order), domain, difficulty.
pub fn picked_scores_frame(
    tables: &Tables,
    picks: &[Vec<(usize, f64)>],
) -> PolarsResult<DataFrame> {
    let (mut q_index, mut n_index, mut score, mut rank) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (q, picked) in picks.iter().enumerate() {
        for (position, &(row, value)) in picked.iter().enumerate() {
            q_index.push(q as u32);
            n_index.push(row as u32);
            score.push(value);
            rank.push(position as u32 + 1);
        }
    }
    let mut columns = vec![
        query_ids(tables, &q_index)?,
        named(take(&tables.train.ids, &n_index)?, "train_id"),
        Column::new("score".into(), score),
        Column::new("rank".into(), rank),
    ];
    for (name, carried) in [
        ("domain", &tables.train.domain),
        ("difficulty", &tables.train.difficulty),
    ] {
        if let Some((column, _)) = carried {
            columns.push(named(take(column, &n_index)?, name));
        }
    }
    DataFrame::new_infer_height(columns)
}

fn segments_frame(
    collected: &Collected,
    tables: &Tables,
    pieces: &[Pieces],
) -> PolarsResult<DataFrame> {
    let (mut q_index, mut n_index) = (Vec::new(), Vec::new());
    let (mut index, mut kind, mut start, mut end, mut text, mut score) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for q in 0..collected.queries {
        for (row, p) in collected.rows.clone().zip(pieces) {
            for (s, (k, range, t)) in p.segments.iter().enumerate() {
                if range.is_empty() {
                    continue;
                }
                q_index.push(q as u32);
                n_index.push(row as u32);
                index.push(s as u32);
                kind.push(k.clone());
                start.push(range.start as u32);
                end.push(range.end as u32);
                text.push(t.clone());
                score.push(p.segment_scores[q][s]);
            }
        }
    }
    DataFrame::new_infer_height(vec![
        query_ids(tables, &q_index)?,
        named(take(&tables.train.ids, &n_index)?, "train_id"),
        Column::new("segment".into(), index),
        Column::new("kind".into(), kind),
        Column::new("start".into(), start),
        Column::new("end".into(), end),
        Column::new("text".into(), text),
        Column::new("score".into(), score),
    ])
}

fn tokens_frame(
    collected: &Collected,
    tables: &Tables,
    pieces: &[Pieces],
) -> PolarsResult<DataFrame> {
    let tokens = collected.tokens.as_ref().expect("token scores");
    let (mut q_index, mut n_index) = (Vec::new(), Vec::new());
    let (mut position, mut token_id, mut token, mut response, mut segment, mut score) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for q in 0..collected.queries {
        for ((row, p), scores) in collected.rows.clone().zip(pieces).zip(tokens) {
            let sequence = &tables.train.sequences[row];
            for t in 0..sequence.len() {
                q_index.push(q as u32);
                n_index.push(row as u32);
                position.push(t as u32);
                token_id.push(sequence.input_ids[t]);
                token.push(p.token_text[t].clone());
                response.push(p.response[t]);
                segment.push(p.token_segment[t] as u32);
                score.push(scores[(q, t)]);
            }
        }
    }
    DataFrame::new_infer_height(vec![
        query_ids(tables, &q_index)?,
        named(take(&tables.train.ids, &n_index)?, "train_id"),
        Column::new("position".into(), position),
        Column::new("token_id".into(), token_id),
        Column::new("token".into(), token),
        Column::new("response".into(), response),
        Column::new("segment".into(), segment),
        Column::new("score".into(), score),
    ])
}

/// Infra's cross-domain view: per query domain x training domain x difficulty, the mean
/// score and the share of positive (helpful) pairs.
fn summary_frame(
    collected: &Collected,
    tables: &Tables,
    totals: &[Vec<f64>],
) -> PolarsResult<DataFrame> {
    let label = |carried: &Option<(Column, Vec<String>)>, row: usize| {
        carried
            .as_ref()
            .map_or("all".to_string(), |(_, v)| v[row].clone())
    };
    #[derive(Default)]
    struct Group {
        examples: usize,
        pairs: usize,
        sum: f64,
        positive: usize,
    }
    let mut groups: BTreeMap<(String, String, String), Group> = BTreeMap::new();
    let mut counted: HashSet<(String, String, String, usize)> = HashSet::new();
    for (q, scores) in totals.iter().enumerate() {
        let query_domain = tables.query.domains[q].clone();
        for (i, row) in collected.rows.clone().enumerate() {
            let key = (
                query_domain.clone(),
                label(&tables.train.domain, row),
                label(&tables.train.difficulty, row),
            );
            if counted.insert((key.0.clone(), key.1.clone(), key.2.clone(), row)) {
                groups.entry(key.clone()).or_default().examples += 1;
            }
            let group = groups.entry(key).or_default();
            group.pairs += 1;
            group.sum += scores[i];
            group.positive += usize::from(scores[i] > 0.0);
        }
    }
    let mut keys: Vec<&(String, String, String)> = groups.keys().collect();
    // Numeric difficulties in numeric order.
    keys.sort_by(|a, b| {
        (&a.0, &a.1).cmp(&(&b.0, &b.1)).then_with(|| {
            match (a.2.parse::<f64>(), b.2.parse::<f64>()) {
                (Ok(x), Ok(y)) => x.total_cmp(&y),
                _ => a.2.cmp(&b.2),
            }
        })
    });
    let texts = |pick: fn(&(String, String, String)) -> &String| -> Vec<String> {
        keys.iter().map(|k| pick(k).clone()).collect()
    };
    let counts = |pick: fn(&Group) -> usize| -> Vec<u64> {
        keys.iter().map(|k| pick(&groups[*k]) as u64).collect()
    };
    let ratios =
        |pick: fn(&Group) -> f64| -> Vec<f64> { keys.iter().map(|k| pick(&groups[*k])).collect() };
    DataFrame::new_infer_height(vec![
        Column::new("query_domain".into(), texts(|k| &k.0)),
        Column::new("train_domain".into(), texts(|k| &k.1)),
        Column::new("train_difficulty".into(), texts(|k| &k.2)),
        Column::new("examples".into(), counts(|g| g.examples)),
        Column::new("pairs".into(), counts(|g| g.pairs)),
        Column::new("mean_score".into(), ratios(|g| g.sum / g.pairs as f64)),
        Column::new(
            "positive_share".into(),
            ratios(|g| g.positive as f64 / g.pairs as f64),
        ),
        Column::new("total_score".into(), ratios(|g| g.sum)),
    ])
}

/// Every table of one run, built from its gathered scores.
pub struct Report<'a> {
    collected: &'a Collected,
    tables: &'a Tables<'a>,
    /// Tokens and segments per training row, when token scores were gathered.
    pieces: Option<Vec<Pieces>>,
    /// `[q][local row]` example scores; with token scores, the sums of their segments'.
    totals: Vec<Vec<f64>>,
}

impl<'a> Report<'a> {
    pub fn new(collected: &'a Collected, tables: &'a Tables<'a>) -> Self {
        let pieces = collected
            .tokens
            .as_ref()
            .map(|_| pieces_of(collected, tables));
        let totals = match &pieces {
            Some(pieces) => example_totals_from_segments(collected, pieces),
            None => collected.examples.clone(),
        };
        Report {
            collected,
            tables,
            pieces,
            totals,
        }
    }

    /// One row per (query, training example): score, rank, carried columns, per-module scores.
    pub fn scores(&self) -> PolarsResult<DataFrame> {
        scores_frame(self.collected, self.tables, &self.totals)
    }

    /// One row per (query, non-empty segment), when token scores were gathered.
    pub fn segments(&self) -> PolarsResult<Option<DataFrame>> {
        self.pieces
            .as_ref()
            .map(|pieces| segments_frame(self.collected, self.tables, pieces))
            .transpose()
    }

    /// One row per (query, token), when token scores were gathered.
    pub fn tokens(&self) -> PolarsResult<Option<DataFrame>> {
        self.pieces
            .as_ref()
            .map(|pieces| tokens_frame(self.collected, self.tables, pieces))
            .transpose()
    }

    /// Per query domain x training domain x difficulty: mean score and share of helpful pairs.
    pub fn summary(&self) -> PolarsResult<DataFrame> {
        summary_frame(self.collected, self.tables, &self.totals)
    }
}

/// One training example in a most helpful / most harmful list.
#[derive(Debug, Clone, PartialEq)]
pub struct TopRow {
    pub id: String,
    /// The mean score over queries.
    pub score: f64,
    pub difficulty: String,
    /// The first 60 characters of the response, whitespace collapsed.
    pub preview: String,
}

/// The K most helpful and most harmful training examples of one domain.
#[derive(Debug, Clone, PartialEq)]
pub struct DomainTop {
    pub domain: String,
    pub helpful: Vec<TopRow>,
    pub harmful: Vec<TopRow>,
}

/// The per-domain tops as text: a heading per list, an aligned table of id, score,
/// difficulty and response preview, a blank line after each domain.
pub fn top_text(tops: &[DomainTop]) -> Vec<String> {
    use crate::text::{Align, text_table};
    let header = ["id", "score", "difficulty", "response"];
    let align = [Align::Left, Align::Right, Align::Right, Align::Left];
    let mut lines = Vec::new();
    for top in tops {
        for (title, picked, none) in [
            (
                "most helpful",
                &top.helpful,
                "no helpful rows (no positive mean score)",
            ),
            (
                "most harmful",
                &top.harmful,
                "no harmful rows (no negative mean score)",
            ),
        ] {
            lines.push(format!("{}: {title}", top.domain));
            if picked.is_empty() {
                lines.push(format!("  {none}"));
                continue;
            }
            let cells: Vec<Vec<String>> = picked
                .iter()
                .map(|row| {
                    vec![
                        row.id.clone(),
                        format!("{:.4e}", row.score),
                        row.difficulty.clone(),
                        row.preview.clone(),
                    ]
                })
                .collect();
            lines.extend(
                text_table(&header, &cells, &align)
                    .into_iter()
                    .map(|line| format!("  {line}")),
            );
        }
        lines.push(String::new());
    }
    lines
}

/// Per training domain (sorted), the K most helpful and most harmful examples by their mean
/// score over queries; ties keep row order.
pub fn top_by_domain(
    collected: &Collected,
    train: &Examples,
    k: usize,
) -> PolarsResult<Vec<DomainTop>> {
    let mean = collected.mean_over_queries(&collected.examples);
    let rows: Vec<usize> = collected.rows.clone().collect();
    let ids = train.ids.cast(&DataType::String)?;
    let ids = ids.str()?;
    let domain_of = |row: usize| {
        train
            .domain
            .as_ref()
            .map_or("all".to_string(), |(_, d)| d[row].clone())
    };
    let top_row = |i: usize| {
        let row = rows[i];
        let preview: String = train
            .responses
            .as_ref()
            .map(|r| r[row].split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
            .chars()
            .take(60)
            .collect();
        TopRow {
            id: ids.get(row).unwrap_or("").to_string(),
            score: mean[i],
            difficulty: train
                .difficulty
                .as_ref()
                .map_or(String::new(), |(_, d)| d[row].clone()),
            preview,
        }
    };
    let mut domains: Vec<String> = rows.iter().map(|&r| domain_of(r)).collect();
    domains.sort();
    domains.dedup();
    Ok(domains
        .into_iter()
        .map(|domain| {
            let mut members: Vec<usize> = (0..rows.len())
                .filter(|&i| domain_of(rows[i]) == domain)
                .collect();
            members.sort_by(|&a, &b| mean[b].total_cmp(&mean[a]).then(a.cmp(&b)));
            DomainTop {
                // Only a positive mean helps and only a negative one harms: a small domain
                // must not list its weakest helpers as harmful.
                helpful: members
                    .iter()
                    .copied()
                    .filter(|&i| mean[i] > 0.0)
                    .take(k)
                    .map(top_row)
                    .collect(),
                harmful: members
                    .iter()
                    .rev()
                    .copied()
                    .filter(|&i| mean[i] < 0.0)
                    .take(k)
                    .map(top_row)
                    .collect(),
                domain,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{IGNORE_INDEX, Sequence};

    /// Two training rows of the "math" and "code" domains; the second has a 3-token response.
    fn train() -> Examples {
        let sequence = |prompt: usize, response: usize| {
            let input_ids: Vec<i64> = (0..(prompt + response) as i64).collect();
            let labels = (0..prompt + response)
                .map(|t| if t < prompt { IGNORE_INDEX } else { t as i64 })
                .collect();
            Sequence { input_ids, labels }
        };
        let text = |values: [&str; 2]| {
            Some((
                Column::new("x".into(), values),
                values.iter().map(|v| v.to_string()).collect(),
            ))
        };
        Examples {
            domain: text(["math", "code"]),
            difficulty: text(["1", "2"]),
            responses: Some(vec!["first   answer".into(), "second".into()]),
            ..Examples::bare(
                "train.jsonl",
                Column::new("id".into(), ["a", "b"]),
                vec![sequence(1, 2), sequence(1, 3)],
            )
        }
    }

    fn queries(count: usize) -> QueryLabels {
        QueryLabels {
            ids: Column::new("query_id".into(), (0..count as u32).collect::<Vec<_>>()),
            domains: vec!["math".to_string(); count],
        }
    }

    fn batch(
        rows: Vec<usize>,
        per_layer: Vec<Mat<f64>>,
        tokens: Option<Vec<Mat<f64>>>,
    ) -> BatchScores {
        BatchScores {
            rows,
            examples: crate::influence::ScoreMatrix { per_layer },
            tokens: tokens.map(|t| {
                t.into_iter()
                    .map(|m| crate::influence::TokenScores { per_layer: vec![m] })
                    .collect()
            }),
        }
    }

    #[test]
    fn gathers_batches_and_ranks_per_query() {
        let train = train();
        let query = queries(2);
        let mut collected = Collected::new(2, vec!["l0".into(), "l1".into()], 0..2, false);
        // Two modules whose sums are q0: [1, 3], q1: [-2, -1].
        let l0 = Mat::from_fn(2, 2, |q, b| [[0.5, 1.0], [-1.0, -0.5]][q][b]);
        let l1 = Mat::from_fn(2, 2, |q, b| [[0.5, 2.0], [-1.0, -0.5]][q][b]);
        collected.add(batch(vec![0, 1], vec![l0, l1], None));
        let segmenter: Segmenter = "paragraph".parse().unwrap();
        let tables = Tables {
            train: &train,
            query: &query,
            tokenizer: None,
            segmenter: &segmenter,
            per_module: true,
            ranked: true,
        };
        let report = Report::new(&collected, &tables);
        let frame = report.scores().unwrap();
        let score: Vec<f64> = frame
            .column("score")
            .unwrap()
            .f64()
            .unwrap()
            .into_no_null_iter()
            .collect();
        assert_eq!(score, vec![1.0, 3.0, -2.0, -1.0]);
        let rank: Vec<u32> = frame
            .column("rank")
            .unwrap()
            .u32()
            .unwrap()
            .into_no_null_iter()
            .collect();
        assert_eq!(rank, vec![2, 1, 2, 1]);
        assert!(frame.column("score.l1").is_ok());
        assert!(frame.column("domain").is_ok());
        assert!(report.segments().unwrap().is_none());
        assert_eq!(
            collected.mean_over_queries(&collected.examples),
            vec![-0.5, 1.0]
        );

        let summary = report.summary().unwrap();
        // query domain math x (code, 2) and (math, 1), in that order.
        let train_domain: Vec<&str> = summary
            .column("train_domain")
            .unwrap()
            .str()
            .unwrap()
            .iter()
            .map(Option::unwrap)
            .collect();
        assert_eq!(train_domain, vec!["code", "math"]);
        let positive: Vec<f64> = summary
            .column("positive_share")
            .unwrap()
            .f64()
            .unwrap()
            .into_no_null_iter()
            .collect();
        assert_eq!(positive, vec![0.5, 0.5]);
        let examples: Vec<u64> = summary
            .column("examples")
            .unwrap()
            .u64()
            .unwrap()
            .into_no_null_iter()
            .collect();
        assert_eq!(examples, vec![1, 1]);
    }

    #[test]
    fn segment_and_example_scores_are_sums_of_token_scores() {
        let train = train();
        let query = queries(1);
        let mut collected = Collected::new(1, vec!["l0".into()], 1..2, true);
        // Row 1: prompt token then three response tokens.
        let tokens = Mat::from_fn(1, 4, |_, t| [10.0, 1.0, 2.0, 4.0][t]);
        collected.add(batch(
            vec![1],
            vec![Mat::from_fn(1, 1, |_, _| 99.0)],
            Some(vec![tokens]),
        ));
        let segmenter: Segmenter = "paragraph".parse().unwrap();
        let tables = Tables {
            train: &train,
            query: &query,
            tokenizer: None,
            segmenter: &segmenter,
            per_module: false,
            ranked: false,
        };
        let report = Report::new(&collected, &tables);
        let scores = report.scores().unwrap();
        // The example score is the tokens' sum, not the separately gathered 99.
        assert_eq!(
            scores.column("score").unwrap().f64().unwrap().get(0),
            Some(17.0)
        );
        assert_eq!(scores.column("rank").unwrap().null_count(), 1);
        let segments = report.segments().unwrap().unwrap();
        let kind: Vec<&str> = segments
            .column("kind")
            .unwrap()
            .str()
            .unwrap()
            .iter()
            .map(Option::unwrap)
            .collect();
        assert_eq!(kind[0], "prompt");
        let score: Vec<f64> = segments
            .column("score")
            .unwrap()
            .f64()
            .unwrap()
            .into_no_null_iter()
            .collect();
        assert_eq!(score.iter().sum::<f64>(), 17.0);
        assert_eq!(score[0], 10.0);
        let tokens = report.tokens().unwrap().unwrap();
        assert_eq!(tokens.height(), 4);
        let response: Vec<bool> = tokens
            .column("response")
            .unwrap()
            .bool()
            .unwrap()
            .iter()
            .map(Option::unwrap)
            .collect();
        assert_eq!(response, vec![false, true, true, true]);
    }

    #[test]
    fn top_lists_per_domain_by_mean_score() {
        let train = train();
        let mut collected = Collected::new(1, vec!["l0".into()], 0..2, false);
        collected.add(batch(
            vec![0, 1],
            vec![Mat::from_fn(1, 2, |_, b| [0.5, -2.0][b])],
            None,
        ));
        let top = top_by_domain(&collected, &train, 1).unwrap();
        assert_eq!(top.len(), 2);
        assert_eq!(top[0].domain, "code");
        // A negative mean is never listed as helpful, nor a positive one as harmful.
        assert!(top[0].helpful.is_empty());
        assert_eq!(top[0].harmful[0].id, "b");
        assert_eq!(top[0].harmful[0].score, -2.0);
        assert_eq!(top[1].domain, "math");
        assert_eq!(top[1].helpful[0].preview, "first answer");
        assert_eq!(top[1].helpful[0].difficulty, "1");
        assert!(top[1].harmful.is_empty());
        let text = top_text(&top);
        assert_eq!(text[0], "code: most helpful");
        assert_eq!(text[1], "  no helpful rows (no positive mean score)");
        assert_eq!(text[2], "code: most harmful");
        assert!(text[3].starts_with("  id") && text[3].ends_with("response"));
        assert!(text[4].starts_with("  b ") && text[4].contains("-2.0000e0"));
        assert!(text.contains(&"  no harmful rows (no negative mean score)".to_string()));
        assert_eq!(text.iter().filter(|l| l.is_empty()).count(), 2);
    }
}
