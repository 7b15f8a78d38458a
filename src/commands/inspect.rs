//! `curate inspect`: what is in a data file, for people (text) and machines (`--json`).

use std::io::Write;

use anyhow::Result;
use serde::Serialize;

use super::Context;
use crate::ExitStatus;
use crate::cli::InspectArgs;
use crate::printer::{Align, text_table};
use crate::table::{self, ColumnSummary, Input, InputDigest, Provenance};

/// Keys polars and arrow write for their own use; not shown as user metadata.
const INTERNAL_KEYS: [&str; 2] = ["ARROW:schema", "pandas"];

#[derive(Serialize)]
struct FileReport {
    path: String,
    format: String,
    rows: usize,
    columns: Vec<ColumnReport>,
    provenance: Option<ProvenanceReport>,
    metadata: serde_json::Map<String, serde_json::Value>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum ColumnReport {
    Schema { name: String, dtype: String },
    Summary(ColumnSummary),
}

#[derive(Serialize)]
struct ProvenanceReport {
    version: String,
    command: Vec<String>,
    inputs: Vec<InputDigest>,
    seed: u64,
}

pub fn run(args: InspectArgs, context: &Context) -> Result<ExitStatus> {
    let format = args.input_format.map(Into::into);
    let mut stdout = context.printer.stdout();
    for (index, path) in args.files.iter().enumerate() {
        let input = Input::open(path, format)?;
        let report = inspect(&input, &args, context)?;
        if args.json {
            serde_json::to_writer(&mut stdout, &report)?;
            writeln!(stdout)?;
        } else {
            if index > 0 {
                writeln!(stdout)?;
            }
            write_text(&mut stdout, &report)?;
        }
    }
    stdout.flush()?;
    Ok(ExitStatus::Success)
}

fn inspect(input: &Input, args: &InspectArgs, context: &Context) -> Result<FileReport> {
    let spinner = context.printer.spinner("inspecting");
    spinner.set_message(input.label().to_string());
    let schema = input.schema()?;
    let rows = input.row_count()?;
    let pairs = input.key_value_metadata()?;
    let provenance =
        Provenance::from_key_values(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))).map(|p| {
            ProvenanceReport {
                version: p.version,
                command: p.command,
                inputs: p.inputs,
                seed: p.seed,
            }
        });
    let metadata = pairs
        .into_iter()
        .filter(|(key, _)| !key.starts_with("curate.") && !INTERNAL_KEYS.contains(&key.as_str()))
        .map(|(key, value)| (key, serde_json::Value::String(value)))
        .collect();
    let columns = if args.no_stats {
        schema
            .iter()
            .map(|(name, dtype)| ColumnReport::Schema {
                name: name.to_string(),
                dtype: dtype.to_string(),
            })
            .collect()
    } else {
        let summaries = table::summarize(input.scan()?, &schema, args.top)
            .map_err(|err| crate::error::InputError::new(input.label(), err.to_string()))?;
        summaries.into_iter().map(ColumnReport::Summary).collect()
    };
    spinner.finish_and_clear();
    Ok(FileReport {
        path: input.label().to_string(),
        format: input.format().to_string(),
        rows,
        columns,
        provenance,
        metadata,
    })
}

fn write_text(out: &mut impl Write, report: &FileReport) -> std::io::Result<()> {
    writeln!(out, "{}", report.path)?;
    writeln!(out, "  format      {}", report.format)?;
    writeln!(out, "  rows        {}", report.rows)?;
    writeln!(out, "  columns     {}", report.columns.len())?;
    match &report.provenance {
        Some(p) => {
            writeln!(out, "  provenance  curate {} (seed {})", p.version, p.seed)?;
            writeln!(out, "    command   {}", shell_words(&p.command))?;
            for input in &p.inputs {
                writeln!(
                    out,
                    "    input     {} ({} bytes, sha256 {})",
                    input.path, input.bytes, input.sha256
                )?;
            }
        }
        None => writeln!(out, "  provenance  none (not written by curate)")?,
    }
    for (key, value) in &report.metadata {
        let value = value.as_str().unwrap_or_default();
        writeln!(out, "  metadata    {key} = {}", clip(value, 60))?;
    }
    writeln!(out)?;

    let rows: Vec<Vec<String>> = report
        .columns
        .iter()
        .map(|column| match column {
            ColumnReport::Schema { name, dtype } => {
                vec![name.clone(), dtype.clone(), String::new(), String::new()]
            }
            ColumnReport::Summary(summary) => vec![
                summary.name.clone(),
                summary.dtype.clone(),
                summary.nulls.to_string(),
                describe(summary),
            ],
        })
        .collect();
    let align = [Align::Left, Align::Left, Align::Right, Align::Left];
    for line in text_table(&["column", "type", "nulls", "summary"], &rows, &align) {
        writeln!(out, "  {line}")?;
    }
    Ok(())
}

fn describe(summary: &ColumnSummary) -> String {
    if let (Some(min), Some(max)) = (&summary.min, &summary.max) {
        return format!("min {}  max {}", show(min), show(max));
    }
    if let Some(top) = &summary.top {
        let values: Vec<String> = top
            .iter()
            .map(|v| format!("{} ×{}", show(&v.value), v.count))
            .collect();
        let distinct = summary.distinct.unwrap_or(0);
        if top.first().is_some_and(|v| v.count == 1) {
            return format!("{distinct} distinct (all)");
        }
        return format!("{distinct} distinct; top {}", values.join(", "));
    }
    String::new()
}

fn show(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(text) => format!("{:?}", clip(text, 32)),
        other => other.to_string(),
    }
}

fn clip(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        text.to_string()
    } else {
        let kept: String = text.chars().take(max_chars - 1).collect();
        format!("{kept}…")
    }
}

/// Quote arguments only where a shell would need it, so the line can be pasted back.
fn shell_words(args: &[String]) -> String {
    args.iter()
        .map(|arg| {
            let plain = !arg.is_empty()
                && arg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-./=:,@+%".contains(c));
            if plain {
                arg.clone()
            } else {
                format!("'{}'", arg.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words_quote_only_when_needed() {
        let args = ["curate", "convert", "a b.csv", "it's", "--out=x.parquet"].map(String::from);
        assert_eq!(
            shell_words(&args),
            r"curate convert 'a b.csv' 'it'\''s' --out=x.parquet"
        );
    }

    #[test]
    fn clip_marks_cut_text() {
        assert_eq!(clip("abcdef", 4), "abc…");
        assert_eq!(clip("abc", 4), "abc");
    }
}
