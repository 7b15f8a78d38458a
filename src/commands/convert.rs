//! `curate convert`: move a table between formats, checking it on the way.

use std::io::Write;

use anyhow::Result;
use polars::prelude::*;

use super::Context;
use crate::ExitStatus;
use crate::cli::ConvertArgs;
use curate::error::InputError;
use curate::table::{self, ColumnRole, Input, Output, Shard};

pub fn run(args: ConvertArgs, context: &Context) -> Result<ExitStatus> {
    let shard = crate::commands::shard(args.shard.as_deref(), &context.printer)?;
    let input = Input::open(&args.input, args.input_format.map(Into::into))?;
    let output = Output::create(&args.out, args.output_format.map(Into::into), args.force)?;

    let mut query = input.scan()?;
    if !args.columns.is_empty() {
        let schema = input.schema()?;
        let present: Vec<&str> = schema.iter_names().map(|n| n.as_str()).collect();
        for name in &args.columns {
            if !schema.contains(name) {
                let role = ColumnRole::new(name, "--columns");
                return Err(table::missing_column(input.label(), role, &present).into());
            }
        }
        query = query.select(
            args.columns
                .iter()
                .map(|name| col(name.as_str()))
                .collect::<Vec<_>>(),
        );
    }
    if let Some(limit) = args.limit {
        query = query.limit(limit as IdxSize);
    }
    if shard != Shard::WHOLE {
        let total = input.count(query.clone())?;
        if total == 0 {
            return Err(InputError::new(input.label(), "no rows").into());
        }
        // A shard past the end of a small table is empty, which is fine for an array job.
        let rows = shard.rows(total);
        query = query.slice(rows.start as i64, rows.len() as IdxSize);
    }
    let spinner = context.printer.spinner("reading");
    let frame = input.collect(query)?;
    spinner.finish_and_clear();

    if shard == Shard::WHOLE {
        table::require_rows(&frame, input.label())?;
    }
    // JSON Lines values of several types in one column become text: say where, or refuse.
    let text_columns: Vec<&str> = frame
        .schema()
        .iter()
        .filter(|(_, dtype)| **dtype == DataType::String)
        .map(|(name, _)| name.as_str())
        .collect();
    for mix in input.json_type_mixes(&text_columns)? {
        if args.strict_types {
            let row = mix.first_rows[1].1;
            return Err(InputError::new(
                input.label(),
                format!(
                    "values of several JSON types: {} (--strict-types)",
                    mix.describe()
                ),
            )
            .column(&mix.column)
            .row(row)
            .into());
        }
        writeln!(
            context.printer.stderr(),
            "warning: {}: column '{}' mixes JSON types: {}; all written as text \
             (--strict-types refuses it)",
            input.label(),
            mix.column,
            mix.describe()
        )?;
    }
    if let Some(id_col) = &args.id_col {
        table::require_unique_ids(&frame, input.label(), ColumnRole::new(id_col, "--id-col"))?;
    }

    let mut provenance = context.provenance();
    provenance.add_input(input.digest()?);
    let label = output.label().to_string();
    let format = output.format();
    let mut writer = output.writer(frame.schema(), Some(&provenance))?;
    let bar = context
        .printer
        .progress_bar(frame.height() as u64, "writing");
    writer.write_frame(&frame, &bar)?;
    let rows = writer.finish()?;
    bar.finish_and_clear();

    if args.out != "-" {
        writeln!(
            context.printer.stderr(),
            "wrote {} to {label} ({format})",
            curate::text::count(rows as usize, "row", "rows")
        )?;
    }
    Ok(ExitStatus::Success)
}
