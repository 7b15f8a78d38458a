//! `curate inspect`: what a data file or a model holds, as text or JSON lines.

use std::io::Write;
use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use super::Context;
use crate::ExitStatus;
use crate::cli::InspectArgs;
use crate::printer::{Align, text_table};
use curate::model;
use curate::model::inspect::{ModelReport, inspect_dir, inspect_gguf};
use curate::table::inspect::{ColumnReport, FileReport, ProvenanceReport, inspect_file};
use curate::table::{ColumnSummary, Input};

pub fn run(args: InspectArgs, context: &Context) -> Result<ExitStatus> {
    let format = args.input_format.map(Into::into);
    let mut stdout = context.printer.stdout();
    for (index, path) in args.files.iter().enumerate() {
        if index > 0 && !args.json {
            writeln!(stdout)?;
        }
        if Path::new(path).is_dir() {
            let report = inspect_dir(Path::new(path))?;
            emit(&mut stdout, args.json, &report, write_model_text)?;
        } else if model::is_gguf(Path::new(path)) {
            let report = inspect_gguf(Path::new(path))?;
            emit(&mut stdout, args.json, &report, write_model_text)?;
        } else {
            let input = Input::open(path, format)?;
            let spinner = context.printer.spinner("inspecting");
            spinner.set_message(input.label().to_string());
            let report = inspect_file(&input, (!args.no_stats).then_some(args.top))?;
            spinner.finish_and_clear();
            emit(&mut stdout, args.json, &report, write_text)?;
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

fn write_model_text(out: &mut impl Write, report: &ModelReport) -> std::io::Result<()> {
    writeln!(out, "{}", report.path)?;
    writeln!(
        out,
        "  format      {} ({})",
        report.format, report.model_type
    )?;
    let types: Vec<String> = report
        .tensor_types
        .iter()
        .map(|(dtype, count)| format!("{dtype} ×{count}"))
        .collect();
    writeln!(
        out,
        "  parameters  {} in {} tensors ({}), {} file{}",
        report.parameters,
        report.tensors,
        types.join(", "),
        report.files,
        if report.files == 1 { "" } else { "s" }
    )?;
    writeln!(
        out,
        "  shape       {} layers, hidden {}, MLP {}, {} heads / {} kv heads of {}",
        report.shape.layers,
        report.shape.hidden_size,
        report.shape.intermediate_size,
        report.shape.heads,
        report.shape.kv_heads,
        report.shape.head_dim
    )?;
    writeln!(
        out,
        "  vocabulary  {}{}",
        report.shape.vocab_size,
        if report.shape.tied_embeddings {
            ", tied embeddings"
        } else {
            ""
        }
    )?;
    writeln!(
        out,
        "  positions   {} (rope_theta {})",
        report.shape.max_position_embeddings, report.shape.rope_theta
    )?;
    match (report.tokenizer_tokens, &report.tokenizer_kind) {
        (Some(n), Some(kind)) if report.format == "gguf" => {
            writeln!(out, "  tokenizer   {n} tokens, {kind}")?
        }
        (Some(n), _) => writeln!(out, "  tokenizer   {n} tokens")?,
        (None, _) => writeln!(out, "  tokenizer   none")?,
    }
    match report.chat_template_chars {
        Some(n) => writeln!(out, "  chat        template of {n} characters")?,
        None => writeln!(out, "  chat        no template")?,
    }
    if let Some(gguf) = &report.gguf {
        writeln!(out, "  gguf        version {}", gguf["version"])?;
        for (key, value) in gguf["metadata"].as_object().into_iter().flatten() {
            if key.starts_with("tokenizer.ggml.") || key == "tokenizer.chat_template" {
                continue;
            }
            let text = match value {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            writeln!(out, "  metadata    {key} = {}", clip(&text, 60))?;
        }
        return Ok(());
    }
    write_provenance(out, &report.provenance)
}

fn write_provenance(
    out: &mut impl Write,
    provenance: &Option<ProvenanceReport>,
) -> std::io::Result<()> {
    match provenance {
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
    Ok(())
}

fn write_text(out: &mut impl Write, report: &FileReport) -> std::io::Result<()> {
    writeln!(out, "{}", report.path)?;
    writeln!(out, "  format      {}", report.format)?;
    writeln!(out, "  rows        {}", report.rows)?;
    writeln!(out, "  columns     {}", report.columns.len())?;
    write_provenance(out, &report.provenance)?;
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
