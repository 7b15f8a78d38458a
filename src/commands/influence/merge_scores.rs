//! `curate influence merge-scores`: the score files of `--shard` runs, checked to be every
//! shard of one run exactly once (each file records which it is), put in shard order and
//! merged (`curate::influence::score_shards`) into what one unsharded run would have written.

use std::io::Write;

use anyhow::Result;
use polars::prelude::*;

use crate::ExitStatus;
use crate::cli::MergeScoresArgs;
use crate::commands::Context;
use curate::error::{InputError, usage};
use curate::influence::score_shards::{OverlappingShards, merge_score_shards};
use curate::table::{self, ColumnRole, Expected, Input, Output, ShardRecord, order_shards};

pub fn run(args: MergeScoresArgs, context: &Context) -> Result<ExitStatus> {
    let output = Output::create(&args.out, None, args.force)?;
    let mut provenance = context.provenance();
    let mut shards = Vec::with_capacity(args.inputs.len());
    for path in &args.inputs {
        let input = Input::open(path, None)?;
        let record = input.provenance()?.and_then(|p| p.shard);
        shards.push((input, record));
    }
    // Which shard each file is comes from the file, not from the order it was given in.
    let records: Vec<(&str, Option<&ShardRecord>)> = shards
        .iter()
        .map(|(input, record)| (input.label(), record.as_ref()))
        .collect();
    let order = order_shards(&records).map_err(|err| usage(err.to_string()))?;
    let mut frames = Vec::with_capacity(order.len());
    for &i in &order {
        let (input, _) = &shards[i];
        let frame = input.read()?;
        let file = input.label();
        for (name, expected) in [
            ("query_id", Expected::Id),
            ("train_id", Expected::Id),
            ("score", Expected::Number),
        ] {
            table::require_type(&frame, file, ColumnRole::new(name, name), expected)?;
        }
        if let Some(first) = frames.first().map(|f: &DataFrame| f.schema())
            && frame.schema() != first
        {
            return Err(usage(format!(
                "{file}: its columns differ from {}'s (not shards of one run)",
                shards[order[0]].0.label()
            )));
        }
        provenance.add_input(input.digest()?);
        frames.push(frame);
    }
    let merged = merge_score_shards(&frames).map_err(|err| {
        match err.downcast_ref::<OverlappingShards>() {
            Some(overlap) => InputError::new("merge-scores", overlap.to_string()).into(),
            None => err,
        }
    })?;
    let rows = merged.frame.height();
    output.write_frame(&merged.frame, Some(&provenance))?;
    writeln!(
        context.printer.stderr(),
        "merged {} score shards ({rows} rows, {} queries); wrote {}",
        args.inputs.len(),
        merged.queries,
        args.out
    )?;
    Ok(ExitStatus::Success)
}
