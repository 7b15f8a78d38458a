//! `curate rephrase`: long chain-of-thought traces into MinD multi-turn form.

mod llm;

use std::io::Write;

use anyhow::Result;
use serde_json::Value;

use super::Context;
use crate::ExitStatus;
use crate::cli::{RecordFormatArg, RephraseArgs, RephraseModeArg};
use curate::error::{InputError, usage};
use curate::rephrase::records::{
    self, RecordFormat, Stats, Trace, TraceColumns, read_traces, reject_record,
};
use curate::rephrase::units::{Markers, UnitOptions};
use curate::rephrase::{Rejection, Rephrased, Settings, rephrase_rules};
use curate::table::{self, ColumnRole, Format, Input, Output, Provenance, Shard, Staged};

pub fn run(args: RephraseArgs, context: &Context) -> Result<ExitStatus> {
    check_flags(&args)?;
    llm::check_flags(&args)?;
    let shard = crate::commands::shard(args.shard.as_deref(), &context.printer)?;
    let settings = settings(&args)?;
    let input = Input::open(&args.input, None)?;
    if args.llm.dry_run {
        let traces = traces(&input, &args, shard)?;
        llm::dry_run(&traces, &settings, &args, context)?;
        return Ok(ExitStatus::Success);
    }
    let out = args
        .out
        .clone()
        .expect("clap requires --out without --dry-run");
    table::require_distinct(&[
        ("--out", out.as_str()),
        ("--rejects", args.rejects.as_deref().unwrap_or("-")),
        ("--stats", args.stats.as_deref().unwrap_or("-")),
    ])?;
    let output = Output::create(&out, None, args.force)?;
    let rejects_output = match &args.rejects {
        Some(path) => Some(Output::create(path, None, args.force)?),
        None => None,
    };
    let stats_output = match &args.stats {
        Some(path) => Some(Output::create(path, Some(Format::Jsonl), args.force)?),
        None => None,
    };
    let traces = traces(&input, &args, shard)?;

    let (outcomes, journal, llm_report) = match args.mode {
        RephraseModeArg::Rules => (rephrase_all_rules(&traces, &settings, context)?, None, None),
        RephraseModeArg::LlmBoundaries | RephraseModeArg::LlmRewrite => {
            let run = llm::rephrase(&traces, &settings, &args, context)?;
            (run.outcomes, run.journal, Some(run.report))
        }
    };
    let Sorted {
        records,
        rejected,
        stats,
    } = sort_outcomes(&traces, outcomes, &args);

    let mut provenance = context.provenance();
    provenance.add_input(input.digest()?);
    if let Some(path) = &args.markers {
        provenance.add_input(Input::open(path, Some(Format::Jsonl))?.digest()?);
    }
    let mut staged = vec![stage_records(output, &records, &provenance)?];
    if let Some(rejects) = rejects_output {
        staged.push(stage_records(rejects, &rejected, &provenance)?);
    }
    let mut summary = stats.json(traces.len(), &settings.markers.version);
    if let Some(report) = &llm_report {
        summary["llm"] = report.clone();
    }
    if let Some(stats_output) = stats_output {
        let mut bytes = serde_json::to_vec_pretty(&summary)?;
        bytes.push(b'\n');
        staged.push(stats_output.stage_document(&bytes)?);
    }
    table::commit_all(staged)?;
    // Every output is in place: the run's journal is no longer needed.
    if let Some(journal) = journal {
        journal.remove()?;
    }
    print_stats(&stats, context, traces.len(), &args, llm_report.as_ref())?;
    Ok(ExitStatus::Success)
}

/// Flag values clap cannot check alone.
fn check_flags(args: &RephraseArgs) -> Result<()> {
    if args.max_units == Some(0) {
        return Err(usage("--max-units must be at least 1"));
    }
    Ok(())
}

/// The segmentation settings: `--markers` (or the bundled list) and the unit flags.
fn settings(args: &RephraseArgs) -> Result<Settings> {
    let markers = match &args.markers {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| InputError::new(path, format!("cannot read: {e}")))?;
            Markers::parse(&text).map_err(|e| InputError::new(path, e))?
        }
        None => Markers::bundled(),
    };
    Ok(Settings {
        markers,
        units: UnitOptions {
            min_unit_chars: args.min_unit_chars,
            max_units: args.max_units,
        },
        think_tags: !args.no_think_tags,
        require_correct: args.require_correct,
    })
}

/// The output records, the rejects and the statistics of a run's outcomes.
struct Sorted {
    records: Vec<Value>,
    rejected: Vec<Value>,
    stats: Stats,
}

fn sort_outcomes(
    traces: &[Trace],
    outcomes: Vec<Result<Rephrased, Rejection>>,
    args: &RephraseArgs,
) -> Sorted {
    let mut sorted = Sorted {
        records: Vec::new(),
        rejected: Vec::new(),
        stats: Stats::default(),
    };
    for (trace, outcome) in traces.iter().zip(outcomes) {
        match outcome {
            Ok(done) => {
                sorted.stats.add(&done, trace.reference.is_some());
                sorted.records.extend(records::records(
                    trace,
                    &done,
                    record_format(args.format),
                    &args.continue_prompt,
                ));
            }
            Err(Rejection { reason, detail }) => {
                *sorted.stats.rejects.entry(reason).or_default() += 1;
                sorted
                    .rejected
                    .push(reject_record(trace, reason, detail.as_deref()));
            }
        }
    }
    sorted
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
        outcomes.push(rephrase_rules(
            &trace.response,
            trace.reference.as_deref(),
            settings,
        ));
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(outcomes)
}

/// The traces of `shard`, in the columns the flags name.
fn traces(input: &Input, args: &RephraseArgs, shard: Shard) -> Result<Vec<Trace>> {
    let columns = TraceColumns {
        id: ColumnRole::new(args.id_col.as_deref().unwrap_or("id"), "--id-col"),
        id_explicit: args.id_col.is_some(),
        question: ColumnRole::new(&args.question_col, "--question-col"),
        response: ColumnRole::new(&args.response_col, "--response-col"),
        reference: &args.reference_col,
    };
    read_traces(input, &columns, shard)
}

fn record_format(arg: RecordFormatArg) -> RecordFormat {
    match arg {
        RecordFormatArg::Completion => RecordFormat::Completion,
        RecordFormatArg::Messages => RecordFormat::Messages,
        RecordFormatArg::Sharegpt => RecordFormat::Sharegpt,
        RecordFormatArg::Turns => RecordFormat::Turns,
    }
}

/// Records written in the output's format with provenance, staged to be put in place with
/// the run's other outputs.
fn stage_records(output: Output, records: &[Value], provenance: &Provenance) -> Result<Staged> {
    let frame = records::records_frame(output.label(), records)?;
    output.stage_frame(&frame, Some(provenance))
}

/// The run's summary on stderr.
fn print_stats(
    stats: &Stats,
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
        stats.accepted,
        mean(&stats.units),
        mean(&stats.before),
        mean(&stats.after)
    )?;
    if stats.with_reference > 0 {
        let first = stats.first_correct.get(&1).copied().unwrap_or(0);
        writeln!(
            err,
            "with a reference: {} records, first answer already correct in {:.1}%, never correct in {}",
            stats.with_reference,
            100.0 * first as f64 / stats.with_reference as f64,
            stats.never_correct
        )?;
    }
    if !stats.rejects.is_empty() {
        let parts: Vec<String> = stats
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
    if let Some(out) = args.out.as_deref().filter(|out| *out != "-") {
        writeln!(err, "wrote {out}")?;
    }
    Ok(())
}
