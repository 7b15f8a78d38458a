//! `curate inspect`: what a data file or a model holds, as text or JSON lines.

use std::io::Write;
use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use super::Context;
use crate::ExitStatus;
use crate::cli::InspectArgs;
use curate::model;
use curate::model::inspect::{self as model_inspect, inspect_dir, inspect_gguf};
use curate::table::Input;
use curate::table::inspect::{self as file_inspect, inspect_file};

pub fn run(args: InspectArgs, context: &Context) -> Result<ExitStatus> {
    let format = args.input_format.map(Into::into);
    let mut stdout = context.printer.stdout();
    for (index, path) in args.files.iter().enumerate() {
        if index > 0 && !args.json {
            writeln!(stdout)?;
        }
        if Path::new(path).is_dir() {
            let report = inspect_dir(Path::new(path))?;
            emit(&mut stdout, args.json, &report, model_inspect::write_text)?;
        } else if model::is_gguf(Path::new(path)) {
            let report = inspect_gguf(Path::new(path))?;
            emit(&mut stdout, args.json, &report, model_inspect::write_text)?;
        } else {
            let input = Input::open(path, format)?;
            let spinner = context.printer.spinner("inspecting");
            spinner.set_message(input.label().to_string());
            let report = inspect_file(&input, (!args.no_stats).then_some(args.top))?;
            spinner.finish_and_clear();
            emit(&mut stdout, args.json, &report, file_inspect::write_text)?;
        }
    }
    stdout.flush()?;
    Ok(ExitStatus::Success)
}

/// One report: a JSON line, or the text form.
fn emit<R: Serialize, W: Write>(
    out: &mut W,
    json: bool,
    report: &R,
    write_text: fn(&mut W, &R) -> std::io::Result<()>,
) -> Result<()> {
    if json {
        serde_json::to_writer(&mut *out, report)?;
        writeln!(out)?;
    } else {
        write_text(out, report)?;
    }
    Ok(())
}
