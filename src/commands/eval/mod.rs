//! `curate eval`: each row's loss on its response (the summed token loss influence attributes),
//! per-domain summaries, and with `--generate` greedy answers checked against references.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use burn::tensor::DType;
use polars::prelude::*;
use tokenizers::Tokenizer;

mod compare;

use super::Context;
use crate::ExitStatus;
use crate::cli::{EvalAction, EvalArgs};
use crate::printer::{Align, text_table};
use curate::error::{InputError, usage};
use curate::eval::{RowResult, SummaryRow, summarize};
use curate::interrupt;
use curate::model::encode::{self as sequences, Encoding, TextRows};
use curate::model::generate::greedy;
use curate::model::{IGNORE_INDEX, LanguageModel, LoadOptions, Sequence, batched_losses};
use curate::rephrase::answer::{Target, explicit_answer};
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
    if args.batch_size == 0 {
        return Err(usage("--batch-size must be positive"));
    }
    if args.generate && args.max_new_tokens == 0 {
        return Err(usage("--max-new-tokens must be positive"));
    }
    let input = Input::open(&data, None)?;
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
    let rows = read_rows(&frame, &encoding, &lm, &args)?;
    let references = if args.generate {
        Some(reference_column(&frame, &file, &args.reference_col)?)
    } else {
        None
    };

    let started = Instant::now();
    let mut results = vec![RowResult::default(); frame.height()];
    if let Some(sequences) = &rows.sequences {
        let losses = row_losses(&lm, sequences, args.batch_size, context)?;
        for (result, (sequence, loss)) in results.iter_mut().zip(sequences.iter().zip(losses)) {
            result.loss = Some((loss, sequence.loss_tokens()));
        }
    }
    if let Some(references) = &references {
        let tok = lm
            .tokenizer
            .as_ref()
            .expect("checked when reading the rows");
        generate(
            &lm,
            tok,
            &rows.prompts,
            references,
            &args,
            &mut results,
            context,
        )?;
    }
    let seconds = started.elapsed().as_secs_f64();

    let domains = domain_names(&frame, &args.domain_col)?;
    let summary = summarize(&results, domains.as_deref(), args.generate);
    let mut provenance = context.provenance();
    provenance.add_input(input.digest()?);
    for path in curate::model::model_files(Path::new(&model))? {
        provenance.add_input(table::InputDigest::of_file(
            path.display().to_string(),
            &path,
        )?);
    }
    let out_frame = with_results(frame, &results, args.generate)?;
    output.write_frame(&out_frame, Some(&provenance))?;
    if let Some(summary_output) = summary_output {
        summary_output.write_frame(&summary_frame(&summary, args.generate)?, Some(&provenance))?;
    }

    let mut err = context.printer.stderr();
    if rows.truncated > 0 {
        writeln!(err, "{file}: cut {} rows to --max-length", rows.truncated)?;
    }
    write_summary(&mut err, &summary, args.generate)?;
    writeln!(
        err,
        "evaluated {} rows in {seconds:.1}s; wrote {out}",
        results.len()
    )?;
    Ok(ExitStatus::Success)
}

/// Sequences to score (absent when the rows have no response) and generation prompts.
struct Rows {
    sequences: Option<Vec<Sequence>>,
    prompts: Vec<Vec<i64>>,
    truncated: usize,
}

fn read_rows(
    frame: &DataFrame,
    encoding: &Encoding,
    lm: &LanguageModel,
    args: &EvalArgs,
) -> Result<Rows> {
    let file = encoding.file;
    let has = |name: &str| frame.column(name).is_ok();
    if has("input_ids") {
        let input_ids = sequences::id_list_column(frame, file, "input_ids")?;
        let labels = sequences::id_list_column(frame, file, "labels")?;
        let (sequences, truncated) = encoding.encode_ids(lm, input_ids, labels)?;
        // The prompt of an id row is what precedes its first label.
        let prompts = sequences
            .iter()
            .map(|s| {
                let first = s.labels.iter().skip(1).position(|&l| l != IGNORE_INDEX);
                s.input_ids[..first.map_or(s.len(), |p| p + 1)].to_vec()
            })
            .collect();
        return Ok(Rows {
            sequences: Some(sequences),
            prompts,
            truncated,
        });
    }
    let tok = sequences::require_tokenizer(lm, file)?;
    let columns = crate::commands::text_columns(&args.text);
    // Generation alone needs no response.
    let answers_only = args.generate && !has(encoding.messages_col) && !has(encoding.response_col);
    let text_rows = if answers_only {
        let prompts = sequences::text_column(frame, file, encoding.prompt_col, "--prompt-col")?;
        TextRows::PromptResponse {
            responses: vec![String::new(); prompts.len()],
            prompts,
        }
    } else {
        TextRows::read(frame, file, &columns)?
    };
    let (sequences, truncated) = if answers_only {
        (None, 0)
    } else {
        let (sequences, truncated) = encoding.encode_rows(lm, tok, &text_rows)?;
        (Some(sequences), truncated)
    };
    let prompts = if args.generate {
        encoding.encode_prompts(tok, &text_rows)?
    } else {
        Vec::new()
    };
    Ok(Rows {
        sequences,
        prompts,
        truncated,
    })
}

/// The reference answers, as text (numbers are read as their decimal text); null is None.
fn reference_column(frame: &DataFrame, file: &str, name: &str) -> Result<Vec<Option<String>>> {
    let column = frame.column(name).map_err(|_| {
        usage(format!(
            "{file}: --generate needs the reference answer column '{name}' (name it with \
             --reference-col)"
        ))
    })?;
    let text = column
        .cast(&DataType::String)
        .map_err(|e| InputError::new(file, e.to_string()).column(name))?;
    Ok(text.str()?.iter().map(|v| v.map(str::to_string)).collect())
}

/// The summed response loss of each sequence, in batches of similar length.
fn row_losses(
    lm: &LanguageModel,
    sequences: &[Sequence],
    batch_size: usize,
    context: &Context,
) -> Result<Vec<f64>> {
    let bar = context.printer.progress_bar(sequences.len() as u64, "loss");
    let losses = batched_losses(&lm.model, lm.pad_id(), sequences, batch_size, &mut |rows| {
        bar.inc(rows as u64);
        Ok(interrupt::check()?)
    })?;
    bar.finish_and_clear();
    Ok(losses)
}

/// Greedy answers, their extracted final answers, and the verdict against each reference.
fn generate(
    lm: &LanguageModel,
    tok: &Tokenizer,
    prompts: &[Vec<i64>],
    references: &[Option<String>],
    args: &EvalArgs,
    results: &mut [RowResult],
    context: &Context,
) -> Result<()> {
    let positions = lm.config.max_position_embeddings;
    for (index, prompt) in prompts.iter().enumerate() {
        if prompt.len() + args.max_new_tokens > positions {
            return Err(InputError::new(
                args.data.as_deref().unwrap_or_default(),
                format!(
                    "a prompt of {} tokens and --max-new-tokens {} exceed the model's {positions} \
                     positions",
                    prompt.len(),
                    args.max_new_tokens
                ),
            )
            .row(index + 1)
            .into());
        }
    }
    // Decoding stops at the end-of-text token and at any special token (the template's
    // end-of-turn marker).
    let mut stop: Vec<i64> = tok
        .get_added_tokens_decoder()
        .into_iter()
        .filter(|(_, token)| token.special)
        .map(|(id, _)| id as i64)
        .collect();
    stop.extend(lm.config.eos_token_id.map(i64::from));
    let mut order: Vec<usize> = (0..prompts.len()).collect();
    order.sort_by_key(|&i| (prompts[i].len(), i));
    let bar = context
        .printer
        .progress_bar(prompts.len() as u64, "generate");
    for chunk in order.chunks(args.batch_size) {
        interrupt::check()?;
        let batch: Vec<Vec<i64>> = chunk.iter().map(|&i| prompts[i].clone()).collect();
        for (&row, generated) in chunk
            .iter()
            .zip(greedy(lm, &batch, args.max_new_tokens, &stop))
        {
            let text = tok
                .decode(&generated.tokens, true)
                .map_err(|e| anyhow::anyhow!("cannot decode a generation: {e}"))?;
            let predicted = explicit_answer(&text).map(|found| found.text);
            let result = &mut results[row];
            result.correct = references[row].as_deref().map(|reference| {
                predicted
                    .as_deref()
                    .is_some_and(|p| Target::new(reference).matches(p))
            });
            result.predicted = predicted;
            result.generation = Some(text);
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(())
}

/// The domain of each row as text, when the table has the column.
fn domain_names(frame: &DataFrame, name: &str) -> Result<Option<Vec<String>>> {
    let Ok(column) = frame.column(name) else {
        return Ok(None);
    };
    let text = column.cast(&DataType::String)?;
    Ok(Some(
        text.str()?
            .iter()
            .map(|v| v.unwrap_or("").to_string())
            .collect(),
    ))
}

fn with_results(mut frame: DataFrame, results: &[RowResult], generated: bool) -> Result<DataFrame> {
    let loss: Vec<Option<f64>> = results.iter().map(|r| r.loss.map(|(l, _)| l)).collect();
    let tokens: Vec<Option<u32>> = results
        .iter()
        .map(|r| r.loss.map(|(_, t)| t as u32))
        .collect();
    let mean: Vec<Option<f64>> = results
        .iter()
        .map(|r| r.loss.and_then(|(l, t)| (t > 0).then(|| l / t as f64)))
        .collect();
    let mut columns = vec![
        Column::new("loss".into(), loss),
        Column::new("loss_tokens".into(), tokens),
        Column::new("mean_loss".into(), mean),
    ];
    if generated {
        let text = |f: fn(&RowResult) -> Option<String>| -> Vec<Option<String>> {
            results.iter().map(f).collect()
        };
        columns.push(Column::new(
            "generation".into(),
            text(|r| r.generation.clone()),
        ));
        columns.push(Column::new(
            "predicted_answer".into(),
            text(|r| r.predicted.clone()),
        ));
        let correct: Vec<Option<bool>> = results.iter().map(|r| r.correct).collect();
        columns.push(Column::new("correct".into(), correct));
    }
    for column in columns {
        frame.with_column(column)?;
    }
    Ok(frame)
}

fn summary_frame(summary: &[SummaryRow], generated: bool) -> Result<DataFrame> {
    let mut columns = vec![
        Column::new(
            "domain".into(),
            summary.iter().map(|r| r.domain.clone()).collect::<Vec<_>>(),
        ),
        Column::new(
            "rows".into(),
            summary.iter().map(|r| r.rows as u64).collect::<Vec<_>>(),
        ),
        Column::new(
            "loss_tokens".into(),
            summary
                .iter()
                .map(|r| r.loss_tokens as u64)
                .collect::<Vec<_>>(),
        ),
        Column::new(
            "mean_loss".into(),
            summary.iter().map(|r| r.mean_loss).collect::<Vec<_>>(),
        ),
    ];
    if generated {
        columns.push(Column::new(
            "checked".into(),
            summary.iter().map(|r| r.checked as u64).collect::<Vec<_>>(),
        ));
        columns.push(Column::new(
            "correct".into(),
            summary.iter().map(|r| r.correct as u64).collect::<Vec<_>>(),
        ));
        columns.push(Column::new(
            "accuracy".into(),
            summary
                .iter()
                .map(|r| (r.checked > 0).then(|| r.correct as f64 / r.checked as f64))
                .collect::<Vec<_>>(),
        ));
    }
    Ok(DataFrame::new(summary.len(), columns)?)
}

fn write_summary(out: &mut impl Write, summary: &[SummaryRow], generated: bool) -> Result<()> {
    let mut header = vec!["domain", "rows", "loss tokens", "mean loss"];
    if generated {
        header.push("correct");
    }
    let rows: Vec<Vec<String>> = summary
        .iter()
        .map(|r| {
            let mut row = vec![
                r.domain.clone(),
                r.rows.to_string(),
                r.loss_tokens.to_string(),
                r.mean_loss.map_or("-".into(), |l| format!("{l:.4}")),
            ];
            if generated {
                row.push(if r.checked > 0 {
                    format!("{}/{}", r.correct, r.checked)
                } else {
                    "-".into()
                });
            }
            row
        })
        .collect();
    let mut align = vec![Align::Left, Align::Right, Align::Right, Align::Right];
    if generated {
        align.push(Align::Right);
    }
    for line in text_table(&header, &rows, &align) {
        writeln!(out, "{line}")?;
    }
    Ok(())
}
