//! The tables `curate influence` writes: example scores, tokens, segments, the domain summary,
//! and the top/bottom report on stdout.

use std::collections::BTreeMap;
use std::io::Write;
use std::ops::Range;

use anyhow::Result;
use faer::Mat;
use polars::prelude::*;

use super::examples::{Examples, is_response, take};
use crate::cli::{GranularityArg, InfluenceArgs};
use crate::printer::{Align, Printer, text_table};
use curate::error::usage;
use curate::influence::segment::{self, Segmenter};
use curate::influence::{BatchScores, QueryAggregate};
use curate::model::LanguageModel;
use curate::table::{Output, Provenance};

/// The output files, opened (not yet written) before any work so a name clash fails early.
pub struct Outputs {
    scores: Output,
    tokens: Option<Output>,
    segments: Option<Output>,
    summary: Option<Output>,
}

/// `scores.parquet` -> `scores.<part>.parquet`.
fn beside(out: &str, part: &str, flag: &str) -> Result<String> {
    if out == "-" {
        return Err(usage(format!(
            "--out - writes scores to stdout; name the {part} file with {flag}"
        )));
    }
    let path = std::path::Path::new(out);
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    let name = match path.extension() {
        Some(ext) => format!("{stem}.{part}.{}", ext.to_string_lossy()),
        None => format!("{stem}.{part}"),
    };
    Ok(path.with_file_name(name).display().to_string())
}

impl Outputs {
    pub fn create(out: &str, args: &InfluenceArgs) -> Result<Outputs> {
        let tokens = match args.granularity {
            GranularityArg::Token => Some(match &args.tokens {
                Some(path) => path.clone(),
                None => beside(out, "tokens", "--tokens")?,
            }),
            _ => None,
        };
        let segments = match args.granularity {
            GranularityArg::Example => None,
            _ => Some(match &args.segments {
                Some(path) => path.clone(),
                None => beside(out, "segments", "--segments")?,
            }),
        };
        let open = |path: &str| Output::create(path, None, args.force);
        Ok(Outputs {
            scores: open(out)?,
            tokens: tokens.as_deref().map(open).transpose()?,
            segments: segments.as_deref().map(open).transpose()?,
            summary: args.summary.as_deref().map(open).transpose()?,
        })
    }

    /// Write every table; returns their names.
    pub fn write(
        self,
        collected: &Collected,
        tables: &Tables,
        provenance: &Provenance,
    ) -> Result<Vec<String>> {
        let mut written = Vec::new();
        let pieces = collected.tokens.as_ref().map(|_| pieces(collected, tables));
        let totals = match &pieces {
            Some(pieces) => example_totals_from_segments(collected, pieces),
            None => collected.examples.clone(),
        };
        let frame = scores_frame(collected, tables, &totals)?;
        written.push(self.scores.label().to_string());
        self.scores.write_frame(&frame, Some(provenance))?;
        if let (Some(output), Some(pieces)) = (self.segments, &pieces) {
            written.push(output.label().to_string());
            output.write_frame(
                &segments_frame(collected, tables, pieces)?,
                Some(provenance),
            )?;
        }
        if let (Some(output), Some(pieces)) = (self.tokens, &pieces) {
            written.push(output.label().to_string());
            output.write_frame(&tokens_frame(collected, tables, pieces)?, Some(provenance))?;
        }
        if let Some(output) = self.summary {
            written.push(output.label().to_string());
            output.write_frame(
                &summary_frame(collected, tables, &totals)?,
                Some(provenance),
            )?;
        }
        Ok(written)
    }
}

/// What the tables are built from besides the scores.
pub struct Tables<'a> {
    pub train: &'a Examples,
    pub query: &'a QueryLabels,
    pub lm: &'a LanguageModel,
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
    pub fn new(query: &Examples, rows: &[usize], aggregate: QueryAggregate) -> Result<QueryLabels> {
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

    /// The mean over queries of each local row's score.
    pub fn mean_over_queries(&self, totals: &[Vec<f64>]) -> Vec<f64> {
        let n = self.rows.len();
        (0..n)
            .map(|i| totals.iter().map(|q| q[i]).sum::<f64>() / self.queries.max(1) as f64)
            .collect()
    }
}

/// One training example's tokens and segments.
pub struct Pieces {
    /// Per token: decoded text, whether it carries loss, segment index.
    token_text: Vec<String>,
    response: Vec<bool>,
    token_segment: Vec<usize>,
    /// Per segment: kind, token range (positions), text.
    segments: Vec<(String, Range<usize>, String)>,
    /// `[q][segment]` sums of token scores.
    segment_scores: Vec<Vec<f64>>,
}

fn pieces(collected: &Collected, tables: &Tables) -> Vec<Pieces> {
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
                .map(|&id| match &tables.lm.tokenizer {
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
            let found = tables.segmenter.split(&text, answer);
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

fn query_ids(tables: &Tables, q_index: &[u32]) -> Result<Column> {
    Ok(named(take(&tables.query.ids, q_index)?, "query_id"))
}

/// Rank 1 = most helpful, per query; ties keep row order.
fn ranks(scores: &[f64]) -> Vec<u32> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut rank = vec![0u32; scores.len()];
    for (position, &i) in order.iter().enumerate() {
        rank[i] = position as u32 + 1;
    }
    rank
}

fn scores_frame(collected: &Collected, tables: &Tables, totals: &[Vec<f64>]) -> Result<DataFrame> {
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
    Ok(DataFrame::new_infer_height(columns)?)
}

fn segments_frame(collected: &Collected, tables: &Tables, pieces: &[Pieces]) -> Result<DataFrame> {
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
    Ok(DataFrame::new_infer_height(vec![
        query_ids(tables, &q_index)?,
        named(take(&tables.train.ids, &n_index)?, "train_id"),
        Column::new("segment".into(), index),
        Column::new("kind".into(), kind),
        Column::new("start".into(), start),
        Column::new("end".into(), end),
        Column::new("text".into(), text),
        Column::new("score".into(), score),
    ])?)
}

fn tokens_frame(collected: &Collected, tables: &Tables, pieces: &[Pieces]) -> Result<DataFrame> {
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
    Ok(DataFrame::new_infer_height(vec![
        query_ids(tables, &q_index)?,
        named(take(&tables.train.ids, &n_index)?, "train_id"),
        Column::new("position".into(), position),
        Column::new("token_id".into(), token_id),
        Column::new("token".into(), token),
        Column::new("response".into(), response),
        Column::new("segment".into(), segment),
        Column::new("score".into(), score),
    ])?)
}

/// Infra's cross-domain view: per query domain x training domain x difficulty, the mean
/// score and the share of positive (helpful) pairs.
fn summary_frame(collected: &Collected, tables: &Tables, totals: &[Vec<f64>]) -> Result<DataFrame> {
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
    let mut counted: std::collections::HashSet<(String, String, String, usize)> =
        Default::default();
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
    Ok(DataFrame::new_infer_height(vec![
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
    ])?)
}

/// The K most helpful and most harmful training examples per domain, by the mean score over
/// queries, as text tables on stdout.
pub fn print_top(
    printer: &Printer,
    collected: &Collected,
    train: &Examples,
    k: usize,
) -> Result<()> {
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
    let mut domains: Vec<String> = rows.iter().map(|&r| domain_of(r)).collect();
    domains.sort();
    domains.dedup();
    let mut out = printer.stdout();
    for domain in domains {
        let mut members: Vec<usize> = (0..rows.len())
            .filter(|&i| domain_of(rows[i]) == domain)
            .collect();
        members.sort_by(|&a, &b| mean[b].total_cmp(&mean[a]).then(a.cmp(&b)));
        let show = |picked: Vec<usize>| -> Vec<Vec<String>> {
            picked
                .into_iter()
                .map(|i| {
                    let row = rows[i];
                    let preview: String = train
                        .responses
                        .as_ref()
                        .map(|r| r[row].split_whitespace().collect::<Vec<_>>().join(" "))
                        .unwrap_or_default()
                        .chars()
                        .take(60)
                        .collect();
                    vec![
                        ids.get(row).unwrap_or("").to_string(),
                        format!("{:.4e}", mean[i]),
                        train
                            .difficulty
                            .as_ref()
                            .map_or(String::new(), |(_, d)| d[row].clone()),
                        preview,
                    ]
                })
                .collect()
        };
        let helpful: Vec<usize> = members.iter().copied().take(k).collect();
        let harmful: Vec<usize> = members.iter().rev().copied().take(k).collect();
        let header = ["id", "score", "difficulty", "response"];
        let align = [Align::Left, Align::Right, Align::Right, Align::Left];
        for (title, picked) in [("most helpful", helpful), ("most harmful", harmful)] {
            writeln!(out, "{domain}: {title}")?;
            for line in text_table(&header, &show(picked), &align) {
                writeln!(out, "  {line}")?;
            }
        }
        writeln!(out)?;
    }
    out.flush()?;
    Ok(())
}
