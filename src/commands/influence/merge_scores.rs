//! `curate influence merge-scores`: the score files of `--shard` runs, concatenated in query
//! order and ranked per query, as one unsharded run would have written them.

use std::collections::HashMap;
use std::io::Write;

use anyhow::Result;
use polars::prelude::*;

use crate::ExitStatus;
use crate::cli::MergeScoresArgs;
use crate::commands::Context;
use curate::error::{InputError, usage};
use curate::table::{self, ColumnRole, Expected, Input, Output};

pub fn run(args: MergeScoresArgs, context: &Context) -> Result<ExitStatus> {
    let output = Output::create(&args.out, None, args.force)?;
    let mut provenance = context.provenance();
    let mut frames = Vec::with_capacity(args.inputs.len());
    for path in &args.inputs {
        let input = Input::open(path, None)?;
        let frame = input.read()?;
        let file = input.label();
        for (name, expected) in [
            ("query_id", Expected::Id),
            ("train_id", Expected::Id),
            ("score", Expected::Number),
        ] {
            table::require_type(&frame, file, ColumnRole::new(name, name), expected)?;
        }
        if let Some(first) = frames.first().map(|f: &DataFrame| f.schema()) {
            if frame.schema() != first {
                return Err(usage(format!(
                    "{file}: its columns differ from {}'s (not shards of one run)",
                    args.inputs[0]
                )));
            }
        }
        provenance.add_input(input.digest()?);
        frames.push(frame);
    }
    let mut merged = frames[0].clone();
    for frame in &frames[1..] {
        merged.vstack_mut(frame)?;
    }
    merged.rechunk_mut();

    // Query-major order (queries in order of first appearance), shard order within a query.
    let queries = merged.column("query_id")?.cast(&DataType::String)?;
    let queries = queries.str()?;
    let trains = merged.column("train_id")?.cast(&DataType::String)?;
    let trains = trains.str()?;
    let mut query_index: HashMap<&str, u32> = HashMap::new();
    let mut seen: HashMap<(&str, &str), usize> = HashMap::new();
    let mut keys = Vec::with_capacity(merged.height());
    for row in 0..merged.height() {
        let (q, t) = (
            queries.get(row).unwrap_or(""),
            trains.get(row).unwrap_or(""),
        );
        let next = query_index.len() as u32;
        let q_index = *query_index.entry(q).or_insert(next);
        if let Some(first) = seen.insert((q, t), row) {
            return Err(InputError::new(
                "merge-scores",
                format!("query {q:?}, training example {t:?} appears twice (rows {} and {} of the concatenation): overlapping shards", first + 1, row + 1),
            )
            .into());
        }
        keys.push((q_index, row as u32));
    }
    keys.sort();
    let order: Vec<u32> = keys.iter().map(|&(_, row)| row).collect();
    let mut sorted = merged.take(&IdxCa::from_vec(
        "".into(),
        order.iter().map(|&r| r as IdxSize).collect(),
    ))?;

    // Rank 1 = highest score within each query; ties keep the order.
    let scores = sorted.column("score")?.cast(&DataType::Float64)?;
    let scores: Vec<f64> = scores
        .f64()?
        .iter()
        .map(|v| v.unwrap_or(f64::NAN))
        .collect();
    let mut rank = vec![0u32; scores.len()];
    let mut start = 0;
    while start < keys.len() {
        let q = keys[start].0;
        let end = keys[start..]
            .iter()
            .position(|k| k.0 != q)
            .map_or(keys.len(), |p| start + p);
        let mut members: Vec<usize> = (start..end).collect();
        members.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
        for (position, &i) in members.iter().enumerate() {
            rank[i] = position as u32 + 1;
        }
        start = end;
    }
    let ranks = Column::new(
        "rank".into(),
        rank.into_iter().map(Some).collect::<Vec<Option<u32>>>(),
    );
    if sorted.column("rank").is_ok() {
        sorted.replace("rank", ranks)?;
    } else {
        sorted.with_column(ranks)?;
    }
    let rows = sorted.height();
    output.write_frame(&sorted, Some(&provenance))?;
    writeln!(
        context.printer.stderr(),
        "merged {} score files ({rows} rows, {} queries); wrote {}",
        args.inputs.len(),
        query_index.len(),
        args.out
    )?;
    Ok(ExitStatus::Success)
}
