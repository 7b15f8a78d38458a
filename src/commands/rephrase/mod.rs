//! `curate rephrase`: traces into MinD multi-turn records, with rejects and statistics.

mod llm;

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::Result;
use polars::prelude::*;
use serde_json::{Value, json};

use super::Context;
use crate::ExitStatus;
use crate::cli::{RecordFormatArg, RephraseArgs, RephraseModeArg};
use curate::error::{InputError, usage};
use curate::rephrase::units::{Markers, UnitOptions};
use curate::rephrase::{Reject, Rejection, Rephrased, Settings, rephrase_rules};
use curate::table::{self, ColumnRole, Expected, Format, Input, Output, Shard};

/// One input row.
struct Trace {
    id: Value,
    question: String,
    response: String,
    reference: Option<String>,
}

pub fn run(args: RephraseArgs, context: &Context) -> Result<ExitStatus> {
    if args.max_units == Some(0) {
        return Err(usage("--max-units must be at least 1"));
    }
    let names = [Some(&args.out), args.rejects.as_ref(), args.stats.as_ref()];
    for (i, a) in names.iter().enumerate() {
        for b in &names[i + 1..] {
            if a.is_some() && a == b {
                return Err(usage(
                    "--out, --rejects and --stats must name different files",
                ));
            }
        }
    }
    llm::check_flags(&args)?;
    let shard = crate::commands::shard(args.shard.as_deref())?;
    let markers = match &args.markers {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| InputError::new(path, format!("cannot read: {e}")))?;
            Markers::parse(&text).map_err(|e| InputError::new(path, e))?
        }
        None => Markers::bundled(),
    };
    let settings = Settings {
        markers,
        units: UnitOptions {
            min_unit_chars: args.min_unit_chars,
            max_units: args.max_units,
        },
        think_tags: !args.no_think_tags,
        require_correct: args.require_correct,
    };
    let input = Input::open(&args.input, None)?;
    if args.dry_run {
        let traces = read_traces(&input, &args, shard)?;
        llm::dry_run(&traces, &settings, &args, context)?;
        return Ok(ExitStatus::Success);
    }
    let output = Output::create(&args.out, None, args.force)?;
    let rejects_output = match &args.rejects {
        Some(path) => Some(Output::create(path, None, args.force)?),
        None => None,
    };
    let stats_output = match &args.stats {
        Some(path) => Some(Output::create(path, Some(Format::Jsonl), args.force)?),
        None => None,
    };
    let traces = read_traces(&input, &args, shard)?;

    let (outcomes, journal, llm_report) = match args.mode {
        RephraseModeArg::Rules => (rephrase_all_rules(&traces, &settings, context)?, None, None),
        RephraseModeArg::LlmBoundaries | RephraseModeArg::LlmRewrite => {
            let run = llm::rephrase(&traces, &settings, &args, context)?;
            (run.outcomes, run.journal, Some(run.report))
        }
    };
    let mut records = Vec::new();
    let mut rejected = Vec::new();
    let mut stats = Stats::default();
    for (trace, outcome) in traces.iter().zip(outcomes) {
        match outcome {
            Ok(done) => {
                stats.add(&done, trace.reference.is_some());
                records.extend(shape(trace, &done, args.format, &args.continue_prompt));
            }
            Err(Rejection { reason, detail }) => {
                *stats.rejects.entry(reason).or_default() += 1;
                rejected.push(json!({
                    "id": trace.id,
                    "reason": reason.code(),
                    "detail": detail,
                    "question": trace.question,
                    "response": trace.response,
                    "reference": trace.reference,
                }));
            }
        }
    }

    let mut provenance = context.provenance();
    provenance.add_input(input.digest()?);
    if let Some(path) = &args.markers {
        provenance.add_input(Input::open(path, Some(Format::Jsonl))?.digest()?);
    }
    write_records(output, &records, &provenance)?;
    if let Some(rejects) = rejects_output {
        write_records(rejects, &rejected, &provenance)?;
    }
    let mut summary = stats.json(traces.len(), &settings.markers.version);
    if let Some(report) = &llm_report {
        summary["llm"] = report.clone();
    }
    if let Some(stats_output) = stats_output {
        let mut bytes = serde_json::to_vec_pretty(&summary)?;
        bytes.push(b'\n');
        stats_output.write_document(&bytes)?;
    }
    // Every output is in place: the run's journal is no longer needed.
    if let Some(journal) = journal {
        journal.remove()?;
    }
    stats.print(context, traces.len(), &args, llm_report.as_ref())?;
    Ok(ExitStatus::Success)
}

fn rephrase_all_rules(
    traces: &[Trace],
    settings: &Settings,
    context: &Context,
) -> Result<Vec<Result<Rephrased, Rejection>>> {
    let bar = context
        .printer
        .progress_bar(traces.len() as u64, "rephrasing");
    let mut outcomes = Vec::with_capacity(traces.len());
    for (i, trace) in traces.iter().enumerate() {
        if i % 256 == 0 {
            curate::interrupt::check()?;
        }
        outcomes.push(
            rephrase_rules(&trace.response, trace.reference.as_deref(), settings)
                .map_err(Rejection::from),
        );
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(outcomes)
}

/// The traces of `shard`, checked over the whole input (ids unique, no nulls).
fn read_traces(input: &Input, args: &RephraseArgs, shard: Shard) -> Result<Vec<Trace>> {
    let frame = input.read()?;
    let file = input.label();
    table::require_rows(&frame, file)?;
    let id_name = args.id_col.as_deref().unwrap_or("id");
    let ids = table::id_column(
        &frame,
        file,
        ColumnRole::new(id_name, "--id-col"),
        args.id_col.is_some(),
    )?;
    let ids: Vec<Value> = (0..frame.height())
        .map(|i| table::to_json(&ids.get(i).expect("in range")))
        .collect();
    let text = |name: &str, flag: &str| -> Result<Vec<Option<String>>> {
        let column =
            table::require_type(&frame, file, ColumnRole::new(name, flag), Expected::Text)?;
        Ok(column
            .str()
            .expect("checked")
            .iter()
            .map(|v| v.map(str::to_string))
            .collect())
    };
    let questions = text(&args.question_col, "--question-col")?;
    let responses = text(&args.response_col, "--response-col")?;
    let references = if frame.column(&args.reference_col).is_ok() {
        let column = frame.column(&args.reference_col)?;
        // Numeric references are fine: compare their text.
        let cast = column.cast(&DataType::String).map_err(|e| {
            InputError::new(file, e.to_string()).column(args.reference_col.as_str())
        })?;
        cast.str()
            .expect("cast")
            .iter()
            .map(|v| v.map(str::to_string))
            .collect()
    } else {
        vec![None; frame.height()]
    };
    let mut traces = Vec::with_capacity(frame.height());
    for (row, ((id, question), (response, reference))) in ids
        .into_iter()
        .zip(questions)
        .zip(responses.into_iter().zip(references))
        .enumerate()
    {
        let null = |column: &str| {
            InputError::new(file, "value is null")
                .column(column)
                .row(row + 1)
        };
        traces.push(Trace {
            id,
            question: question.ok_or_else(|| null(&args.question_col))?,
            response: response.ok_or_else(|| null(&args.response_col))?,
            reference: reference.filter(|r| !r.trim().is_empty()),
        });
    }
    let rows = shard.rows(traces.len());
    traces.truncate(rows.end);
    traces.drain(..rows.start);
    Ok(traces)
}

/// The output record(s) of one rephrased trace.
fn shape(
    trace: &Trace,
    done: &Rephrased,
    format: RecordFormatArg,
    continue_prompt: &str,
) -> Vec<Value> {
    match format {
        RecordFormatArg::Completion => vec![json!({
            "id": trace.id,
            "prompt": trace.question,
            "completion": done.completion(),
        })],
        RecordFormatArg::Messages => {
            let mut messages = vec![json!({"role": "user", "content": trace.question})];
            for (i, unit) in done.units.iter().enumerate() {
                if i > 0 {
                    messages.push(json!({"role": "user", "content": continue_prompt}));
                }
                messages.push(json!({"role": "assistant", "content": unit.render()}));
            }
            vec![json!({"id": trace.id, "messages": messages})]
        }
        RecordFormatArg::Sharegpt => {
            let mut turns = vec![json!({"from": "human", "value": trace.question})];
            for (i, unit) in done.units.iter().enumerate() {
                if i > 0 {
                    turns.push(json!({"from": "human", "value": continue_prompt}));
                }
                turns.push(json!({"from": "gpt", "value": unit.render()}));
            }
            vec![json!({"id": trace.id, "conversations": turns})]
        }
        RecordFormatArg::Turns => done
            .units
            .iter()
            .enumerate()
            .map(|(i, unit)| {
                let mut row = json!({
                    "id": trace.id,
                    "unit": i + 1,
                    "units": done.units.len(),
                    "span_start": unit.span.as_ref().map(|s| s.start),
                    "span_end": unit.span.as_ref().map(|s| s.end),
                    "final_start": done.final_start,
                    "segments": unit.segments,
                    "opened_by": unit.opened_by.map(|k| format!("{k:?}").to_lowercase()),
                    "thinking": unit.thinking,
                    "answer": unit.answer,
                    "answer_value": unit.value,
                    "answer_kind": unit.answer_kind.map(|k| format!("{k:?}").to_lowercase()),
                    "correct": unit.correct,
                });
                if let Some(drift) = done.drift {
                    row["drift"] = json!(drift);
                }
                row
            })
            .collect(),
    }
}

/// Records as a table: JSON Lines parsed by polars (nested lists of structs included), then
/// written in the output's format with provenance.
fn write_records(
    output: Output,
    records: &[Value],
    provenance: &curate::table::Provenance,
) -> Result<()> {
    let label = output.label().to_string();
    if records.is_empty() {
        // An empty table still needs a schema: a single id column.
        let frame = DataFrame::new_infer_height(vec![Column::new("id".into(), Vec::<i64>::new())])?;
        output.write_frame(&frame, Some(provenance))?;
        return Ok(());
    }
    let mut bytes = Vec::new();
    for record in records {
        serde_json::to_writer(&mut bytes, record)?;
        bytes.push(b'\n');
    }
    let frame = Input::from_bytes(&label, bytes, Format::Jsonl)?.read()?;
    output.write_frame(&frame, Some(provenance))?;
    Ok(())
}

#[derive(Default)]
struct Stats {
    accepted: usize,
    units: Vec<usize>,
    before: Vec<usize>,
    after: Vec<usize>,
    with_reference: usize,
    first_correct: BTreeMap<usize, usize>,
    never_correct: usize,
    rejects: BTreeMap<Reject, usize>,
    /// Rewrite mode: each accepted record's drift from its original thinking.
    drift: Vec<f64>,
}

impl Stats {
    fn add(&mut self, done: &Rephrased, has_reference: bool) {
        self.accepted += 1;
        self.units.push(done.units.len());
        self.before.push(done.chars_to_first_answer_before);
        self.after.push(done.chars_to_first_answer_after);
        self.drift.extend(done.drift);
        if has_reference {
            self.with_reference += 1;
            match done.first_correct_unit {
                Some(unit) => *self.first_correct.entry(unit).or_default() += 1,
                None => self.never_correct += 1,
            }
        }
    }

    fn json(&self, total: usize, markers_version: &str) -> Value {
        let mean = |v: &[usize]| {
            if v.is_empty() {
                0.0
            } else {
                v.iter().sum::<usize>() as f64 / v.len() as f64
            }
        };
        let median = |v: &[usize]| {
            let mut s = v.to_vec();
            s.sort_unstable();
            s.get(s.len() / 2).copied().unwrap_or(0)
        };
        let mut histogram: BTreeMap<usize, usize> = BTreeMap::new();
        for &u in &self.units {
            *histogram.entry(u).or_default() += 1;
        }
        let first_already = self.first_correct.get(&1).copied().unwrap_or(0);
        let mut summary = json!({
            "records": total,
            "accepted": self.accepted,
            "rejected": total - self.accepted,
            "rejects_by_reason": self.rejects.iter().map(|(r, n)| (r.code().to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
            "markers_version": markers_version,
            "units_per_example": {
                "mean": mean(&self.units),
                "median": median(&self.units),
                "histogram": histogram.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            },
            "chars_to_first_answer": {
                "before_mean": mean(&self.before),
                "after_mean": mean(&self.after),
                "before_median": median(&self.before),
                "after_median": median(&self.after),
            },
            "with_reference": self.with_reference,
            "first_correct_unit": self.first_correct.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "never_correct": self.never_correct,
            "first_answer_correct_share": if self.with_reference == 0 { Value::Null } else { json!(first_already as f64 / self.with_reference as f64) },
        });
        if !self.drift.is_empty() {
            let max = self.drift.iter().copied().fold(0.0, f64::max);
            summary["drift"] = json!({
                "mean": self.drift.iter().sum::<f64>() / self.drift.len() as f64,
                "max": max,
            });
        }
        summary
    }

    fn print(
        &self,
        context: &Context,
        total: usize,
        args: &RephraseArgs,
        llm: Option<&Value>,
    ) -> Result<()> {
        let mut err = context.printer.stderr();
        let mean = |v: &[usize]| v.iter().sum::<usize>() as f64 / v.len().max(1) as f64;
        writeln!(
            err,
            "rephrased {} of {total} records: {:.2} units each; characters to the first answer {:.0} -> {:.0} (mean)",
            self.accepted,
            mean(&self.units),
            mean(&self.before),
            mean(&self.after)
        )?;
        if self.with_reference > 0 {
            let first = self.first_correct.get(&1).copied().unwrap_or(0);
            writeln!(
                err,
                "with a reference: {} records, first answer already correct in {:.1}%, never correct in {}",
                self.with_reference,
                100.0 * first as f64 / self.with_reference as f64,
                self.never_correct
            )?;
        }
        if !self.rejects.is_empty() {
            let parts: Vec<String> = self
                .rejects
                .iter()
                .map(|(r, n)| format!("{} {n}", r.code()))
                .collect();
            let whereto = match &args.rejects {
                Some(path) => format!(" (in {path})"),
                None => " (name a --rejects file to keep them)".to_string(),
            };
            writeln!(err, "rejected: {}{whereto}", parts.join(", "))?;
        }
        if let Some(llm) = llm {
            writeln!(
                err,
                "asked {} for {} records: {} requests ({} retries, {} asked again after an unusable reply), {} cached, {} from the journal, {} tokens",
                llm["model"].as_str().unwrap_or_default(),
                llm["records_asked"],
                llm["requests"],
                llm["retries"],
                llm["repairs"],
                llm["cache_hits"],
                llm["from_journal"],
                llm["tokens"]
            )?;
        }
        if args.out != "-" {
            writeln!(err, "wrote {}", args.out)?;
        }
        Ok(())
    }
}
