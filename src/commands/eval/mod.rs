//! `curate eval`: each row's loss on its response (the summed token loss influence attributes),
//! per-domain summaries, and with `--generate` greedy answers checked against references.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use burn::tensor::DType;
use polars::prelude::*;

mod compare;

use super::Context;
use crate::ExitStatus;
use crate::cli::{EvalAction, EvalArgs};
use curate::error::{InputError, usage};
use curate::eval::{self, RowResult, summarize};
use curate::interrupt;
use curate::model::budget::{Footprint, PassKind};
use curate::model::{LanguageModel, LoadOptions, Sequence, batched_losses};
use curate::table::{self, Input, Output};

pub fn run(args: EvalArgs, context: &Context) -> Result<ExitStatus> {
    match args.action {
        Some(EvalAction::Compare(compare)) => compare::run(compare, context),
        None => evaluate(args, context),
    }
}

fn evaluate(args: EvalArgs, context: &Context) -> Result<ExitStatus> {
    let model = args.model.clone().expect("clap requires --model");
    let data = args.data.clone().expect("clap requires --data");
    let out = args.out.clone().expect("clap requires --out");
    if args.generate && args.max_new_tokens == 0 {
        return Err(usage("--max-new-tokens must be positive"));
    }
    let input = Input::open(&data, None)?;
    curate::table::require_distinct(&[
        ("--out", out.as_str()),
        ("--summary", args.summary.as_deref().unwrap_or("-")),
    ])?;
    let output = Output::create(&out, None, args.force)?;
    let summary_output = match &args.summary {
        Some(path) => Some(Output::create(path, None, args.force)?),
        None => None,
    };
    let device = super::device(&args.device)?;
    let dtype = DType::from(args.dtype);
    let lm = LanguageModel::load(Path::new(&model), &LoadOptions::inference(&device, dtype))?;
    let chat = lm.chat_template(&crate::commands::template_choice(&args.text.chat)?)?;
    let frame = input.read()?;
    let file = input.label().to_string();
    table::require_rows(&frame, &file)?;
    let encoding = crate::commands::encoding(&args.text, &file, chat.as_ref());
    let rows = eval::read_rows(
        &frame,
        &encoding,
        &crate::commands::text_columns(&args.text),
        &lm,
        args.generate,
    )?;
    let references = if args.generate {
        Some(reference_column(
            &frame,
            &file,
            args.reference_col.as_deref(),
            &context.printer,
        )?)
    } else {
        None
    };

    let started = Instant::now();
    let mut results = vec![RowResult::default(); frame.height()];
    // Loss batches run side by side, one per thread (batched_losses).
    // Generation holds one prompt and its answer so far; the loss pass one row.
    let (count, longest, labelled) = match &rows.sequences {
        Some(sequences) => (
            sequences.len(),
            super::longest(sequences),
            super::most_labelled(sequences),
        ),
        None => (rows.prompts.len(), 0, 0),
    };
    // Decoding scores the last position of each row.
    let labelled = labelled.max(usize::from(args.generate));
    let footprint = Footprint::new(&lm.config, dtype.size(), PassKind::Forward)
        .fused_kernels(lm.runs_fused_kernels())
        .labelled(labelled)
        .in_flight(curate::model::batches_in_flight(usize::MAX));
    let longest_answer = match args.generate {
        true => rows.prompts.iter().map(Vec::len).max().unwrap_or(0) + args.max_new_tokens,
        false => 0,
    };
    let plan = super::plan_batches(
        &footprint,
        count,
        longest.max(longest_answer),
        args.batch_size,
        args.memory_budget,
        &context.printer,
    )?;
    let (batch_size, estimate) = (plan.size, plan.estimated_peak);
    let generation = eval::Generation {
        file: &file,
        max_new_tokens: args.max_new_tokens,
        batch_size,
        max_new_tokens_hint: "--max-new-tokens",
    };
    if references.is_some() {
        eval::check_prompts(&lm, &rows.prompts, &generation)?;
    }
    if let Some(sequences) = &rows.sequences {
        let losses = row_losses(&lm, sequences, batch_size, estimate, context)?;
        for (result, (sequence, loss)) in results.iter_mut().zip(sequences.iter().zip(losses)) {
            result.loss = Some((loss, sequence.loss_tokens()));
        }
    }
    if let Some(references) = &references {
        generate_answers(
            &lm,
            &rows.prompts,
            references,
            &generation,
            &mut results,
            estimate,
            context,
        )?;
    }
    let seconds = started.elapsed().as_secs_f64();

    let domains = eval::domain_names(&frame, &args.domain_col)?;
    let summary = summarize(&results, domains.as_deref(), args.generate);
    let provenance = provenance(context, &input, Path::new(&model))?;
    let out_frame = eval::with_results(frame, &results, args.generate)?;
    let mut staged = vec![output.stage_frame(&out_frame, Some(&provenance))?];
    if let Some(summary_output) = summary_output {
        staged.push(summary_output.stage_frame(
            &eval::summary_frame(&summary, args.generate)?,
            Some(&provenance),
        )?);
    }
    curate::table::commit_all(staged)?;

    let mut err = context.printer.stderr();
    if rows.truncated > 0 {
        writeln!(err, "{file}: cut {} rows to --max-length", rows.truncated)?;
    }
    eval::write_summary_text(&mut err, &summary, args.generate)?;
    writeln!(
        err,
        "evaluated {} in {seconds:.1}s; wrote {out}",
        curate::text::count(results.len(), "row", "rows")
    )?;
    Ok(ExitStatus::Success)
}

/// The reference column --generate reads unless --reference-col names another.
const DEFAULT_REFERENCE_COL: &str = "reference";

/// The reference answers, as text (numbers are read as their decimal text); null is None.
/// Without the default column every reference is None (answers are still generated); a column
/// named with `--reference-col` must exist.
fn reference_column(
    frame: &DataFrame,
    file: &str,
    named: Option<&str>,
    printer: &crate::printer::Printer,
) -> Result<Vec<Option<String>>> {
    let name = named.unwrap_or(DEFAULT_REFERENCE_COL);
    let Ok(column) = frame.column(name) else {
        if named.is_some() {
            return Err(usage(format!(
                "{file}: no reference answer column '{name}' (--reference-col)"
            )));
        }
        writeln!(
            printer.stderr(),
            "{file}: no '{name}' column: answers are generated, `correct` is left null \
             (--reference-col names the column)"
        )?;
        return Ok(vec![None; frame.height()]);
    };
    let text = column
        .cast(&DataType::String)
        .map_err(|e| InputError::new(file, e.to_string()).column(name))?;
    Ok(text.str()?.iter().map(|v| v.map(str::to_string)).collect())
}

/// Greedy answers to `prompts`, checked against `references` into `results`, with a bar.
fn generate_answers(
    lm: &LanguageModel,
    prompts: &[Vec<i64>],
    references: &[Option<String>],
    generation: &eval::Generation,
    results: &mut [RowResult],
    estimated_peak: u128,
    context: &Context,
) -> Result<()> {
    let tok = lm
        .tokenizer
        .as_ref()
        .expect("checked when reading the rows");
    let mut bar =
        context
            .printer
            .model_progress(prompts.len(), "rows", "generate", Some(estimated_peak));
    eval::generate_answers(
        lm,
        tok,
        prompts,
        references,
        generation,
        results,
        &mut |n| {
            bar.inc(n);
            Ok(interrupt::check()?)
        },
    )?;
    bar.finish_and_clear();
    Ok(())
}

/// The data file and every file of the model.
fn provenance(context: &Context, input: &Input, model: &Path) -> Result<table::Provenance> {
    let mut provenance = context.provenance();
    provenance.add_input(input.digest()?);
    for path in curate::model::model_files(model)? {
        provenance.add_input(table::InputDigest::of_file(
            path.display().to_string(),
            &path,
        )?);
    }
    Ok(provenance)
}

/// The summed response loss of each sequence, in batches of similar length.
fn row_losses(
    lm: &LanguageModel,
    sequences: &[Sequence],
    batch_size: usize,
    estimated_peak: u128,
    context: &Context,
) -> Result<Vec<f64>> {
    let mut bar =
        context
            .printer
            .model_progress(sequences.len(), "rows", "loss", Some(estimated_peak));
    let losses = batched_losses(&lm.model, lm.pad_id(), sequences, batch_size, &mut |rows| {
        bar.inc(rows);
        Ok(interrupt::check()?)
    })?;
    bar.finish_and_clear();
    Ok(losses)
}
