//! `curate influence merge-scores`: the score files of `--shard` runs, checked and merged
//! (`curate::influence::score_shards`) into what one unsharded run would have written.

use std::io::Write;

use anyhow::Result;
use polars::prelude::*;

use crate::ExitStatus;
use crate::cli::MergeScoresArgs;
use crate::commands::Context;
use curate::error::{InputError, usage};
use curate::influence::score_shards::{OverlappingShards, merge_score_shards};
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
        if let Some(first) = frames.first().map(|f: &DataFrame| f.schema())
            && frame.schema() != first
        {
            return Err(usage(format!(
                "{file}: its columns differ from {}'s (not shards of one run)",
                args.inputs[0]
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
        "merged {} score files ({rows} rows, {} queries); wrote {}",
        args.inputs.len(),
        merged.queries,
        args.out
    )?;
    Ok(ExitStatus::Success)
}
