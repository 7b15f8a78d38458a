//! `curate train`: train or continue a small causal LM on prompt/response text.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Result;
use burn::tensor::DType;
use tokenizers::Tokenizer;

use super::Context;
use crate::ExitStatus;
use crate::cli::BatchSize;
use crate::cli::{ArchArg, TrainArgs};
use curate::error::{InputError, Interrupted, usage};
use curate::interrupt;
use curate::model::budget::{Footprint, PassKind};
use curate::model::checkpoint::{self, Checkpoint, CheckpointMismatch, CheckpointPlace};
use curate::model::config::{ConfigSource, fresh_config};
use curate::model::encode::{Encoded, TextRows};
use curate::model::train::{LossWeights, RunEnd, StopPlan, TrainSettings, Trainer, run_steps};
use curate::model::{
    Architecture, LanguageModel, LoadOptions, Sequence, TemplateChoice, tokenizer,
};
use curate::table::{self, Input, OutputDir};

pub fn run(args: TrainArgs, context: &Context) -> Result<ExitStatus> {
    check_flags(&args)?;
    let out = PathBuf::from(&args.out);
    let checkpoint_dir = args
        .checkpoint_dir
        .as_ref()
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::commands::sibling(&out, "checkpoint"));
    check_checkpoint_dir(&args, &checkpoint_dir, &out)?;
    let output = OutputDir::create(&out, args.force)?;

    let input = Input::open(&args.input, args.input_format.map(Into::into))?;
    let (rows, mut weights) = read_rows(&input, &args)?;
    let template_choice = crate::commands::template_choice(&args.text.chat)?;

    let mut lm = starting_model(&args, &rows, &checkpoint_dir, context)?;
    // A template given on the command line is saved with the model, so influence and later
    // runs render rows the same way.
    if let TemplateChoice::Given(text) = &template_choice {
        lm.chat_template = Some(text.clone());
    }
    let chat = lm.chat_template(&template_choice)?;
    let Some(tok) = lm.tokenizer.clone() else {
        return Err(usage(format!(
            "{}: the model has no tokenizer.json; give one with --tokenizer",
            args.model.as_deref().unwrap_or("model")
        )));
    };

    let mut encoding = crate::commands::encoding(&args.text, input.label(), chat.as_ref());
    encoding.skip_long = args.skip_long;
    let Encoded {
        sequences,
        truncated,
        skipped,
    } = encoding.encode_rows(&lm, &tok, &rows)?;
    if !skipped.is_empty() {
        if sequences.is_empty() {
            return Err(usage(format!(
                "{}: every row's prompt fills --max-length {}; nothing is left to train on",
                input.label(),
                args.text.max_length.unwrap_or_default()
            )));
        }
        left_out_long(&skipped, weights.as_mut(), input.label(), &args, context)?;
    }
    let footprint = footprint(&lm, &args, &sequences);
    super::plan_batches(
        &footprint,
        sequences.len(),
        super::longest(&sequences),
        BatchSize::Fixed(args.batch_size),
        args.memory_budget,
        &context.printer,
    )?;
    let settings = train_settings(&args, context.seed);
    let digest = input.digest()?;
    let checkpoint = Checkpoint {
        fingerprint: checkpoint::fingerprint(
            &digest.sha256,
            &settings,
            &lm,
            &tok,
            &encoding,
            weights.as_ref().map(|w| w.values.as_slice()),
        ),
        dir: checkpoint_dir,
    };
    let mut trainer = Trainer::new(settings, sequences.iter().map(Sequence::len).collect());
    if let Some(weights) = &weights {
        trainer = trainer.with_weights(weights.values.clone());
    }
    if args.resume {
        checkpoint.restore(&mut trainer).map_err(|err| {
            match err.downcast_ref::<CheckpointMismatch>() {
                Some(mismatch) => usage(format!(
                    "--resume: the checkpoint in {} was made with other data or flags",
                    mismatch.dir
                )),
                None => err,
            }
        })?;
        if trainer.is_done() {
            return Err(usage(format!(
                "--resume: the checkpoint in {} is at step {} of {}: nothing is left to train",
                checkpoint.dir.display(),
                trainer.step,
                trainer.total_steps()
            )));
        }
    }

    let mut provenance = context.provenance();
    provenance.add_input(digest);
    report_start(
        &args,
        &lm,
        &trainer,
        &sequences,
        weights.as_ref(),
        truncated,
        context,
    )?;
    train_and_save(
        &args,
        lm,
        trainer,
        &sequences,
        &checkpoint,
        output,
        &provenance,
        context,
    )
}

/// The model training starts from: the checkpoint (`--resume`), `--model`, or a fresh one
/// shaped by `--config` or the shape flags with a tokenizer given or trained on the rows.
fn starting_model(
    args: &TrainArgs,
    rows: &TextRows,
    checkpoint_dir: &Path,
    context: &Context,
) -> Result<LanguageModel> {
    let device = super::device(&args.device)?;
    let dtype = DType::from(args.dtype);
    let options = LoadOptions {
        trainable: true,
        ..LoadOptions::inference(&device, dtype)
    };
    Ok(if args.resume {
        LanguageModel::load(&Checkpoint::model_dir(checkpoint_dir), &options)?
    } else if let Some(dir) = &args.model {
        let options = LoadOptions {
            allow_partial: args.allow_partial,
            seed: context.seed,
            ..options.clone()
        };
        let mut lm = LanguageModel::load(Path::new(dir), &options)?;
        if let Some(path) = &args.tokenizer {
            lm.tokenizer = Some(read_tokenizer(path)?);
        }
        lm
    } else {
        let tokenizer = match &args.tokenizer {
            Some(path) => read_tokenizer(path)?,
            None => tokenizer::train_byte_level_bpe(rows.texts(), args.vocab_size)?,
        };
        let config = fresh_config(&config_source(args), &tokenizer)?;
        let eos = config.eos_token_id.and_then(|id| tokenizer.id_to_token(id));
        let mut lm =
            LanguageModel::init(config, Some(tokenizer), context.seed, &device, dtype, true)?;
        lm.special_tokens.eos = eos;
        lm
    })
}

/// Run the steps with a progress bar, then save the model (or stop with a checkpoint).
#[allow(clippy::too_many_arguments)]
fn train_and_save(
    args: &TrainArgs,
    mut lm: LanguageModel,
    mut trainer: Trainer,
    sequences: &[Sequence],
    checkpoint: &Checkpoint,
    output: OutputDir,
    provenance: &curate::table::Provenance,
    context: &Context,
) -> Result<ExitStatus> {
    let total = trainer.total_steps();
    let mut err = context.printer.stderr();
    let estimated_peak = footprint(&lm, args, sequences).bytes(
        args.batch_size.min(sequences.len()),
        super::longest(sequences),
    );
    let mut bar = context
        .printer
        .model_progress(total, "steps", "train", Some(estimated_peak))
        .resumed_at(trainer.step);
    let started = Instant::now();
    let mut tokens_seen = 0usize;
    let mut on_step = |report: &curate::model::train::StepReport| {
        tokens_seen += report.tokens;
        let rate = tokens_seen as f64 / started.elapsed().as_secs_f64().max(1e-9);
        bar.set_message(format!("loss {:.4}, {:.0} tok/s", report.loss, rate));
        bar.inc(1);
        tracing::debug!(
            step = report.step,
            loss = report.loss,
            tokens = report.tokens,
            lr = report.learning_rate,
            grad_norm = report.grad_norm,
            "step"
        );
    };
    let plan = StopPlan {
        checkpoint_every: args.checkpoint_every,
        stop_after: args.stop_after,
    };
    // The first step's start, for timing steps apart from loading and saving (`-vv`).
    tracing::debug!(steps = total, "training starts");
    let run = run_steps(
        &mut lm,
        &mut trainer,
        sequences,
        checkpoint,
        plan,
        &mut on_step,
        &interrupt::requested,
    )?;
    let resume_hint = format!(
        "checkpoint in {} (continue with --resume)",
        checkpoint.dir.display()
    );
    match run.end {
        RunEnd::Interrupted => {
            bar.abandon();
            writeln!(err, "stopped at step {}; {resume_hint}", trainer.step)?;
            return Err(Interrupted.into());
        }
        RunEnd::StoppedAfter => {
            bar.finish_and_clear();
            writeln!(
                err,
                "stopped after {} steps (step {} of {total}); {resume_hint}",
                run.steps, trainer.step
            )?;
            return Ok(ExitStatus::Success);
        }
        RunEnd::Finished => bar.finish_and_clear(),
    }
    lm.save(output.path(), &provenance.key_values())?;
    output.commit()?;
    checkpoint.remove()?;
    let seconds = started.elapsed().as_secs_f64();
    writeln!(
        err,
        "trained {} steps in {seconds:.1}s ({:.0} tokens/s), last loss {:.4}; wrote {}",
        run.steps,
        run.tokens as f64 / seconds.max(1e-9),
        run.last_loss,
        args.out
    )?;
    Ok(ExitStatus::Success)
}

/// The training settings the flags give.
/// How a training run over `sequences` holds memory.
fn footprint(lm: &LanguageModel, args: &TrainArgs, sequences: &[Sequence]) -> Footprint {
    Footprint::new(&lm.config, DType::from(args.dtype).size(), PassKind::Train)
        .fused_kernels(lm.runs_fused_kernels())
        .labelled(super::most_labelled(sequences))
}

fn train_settings(args: &TrainArgs, seed: u64) -> TrainSettings {
    TrainSettings {
        epochs: args.epochs,
        max_steps: args.steps,
        batch_size: args.batch_size,
        learning_rate: args.lr,
        warmup_steps: args.warmup,
        schedule: args.schedule.into(),
        weight_decay: args.weight_decay,
        grad_clip: (args.grad_clip > 0.0).then_some(args.grad_clip),
        seed,
        ..TrainSettings::default()
    }
}

/// Rows `--skip-long` left out: their weights go too, and stderr says which table rows.
fn left_out_long(
    skipped: &[usize],
    weights: Option<&mut LossWeights>,
    file: &str,
    args: &TrainArgs,
    context: &Context,
) -> Result<()> {
    // Skipped indices count the rows kept after weight 0; map them back to table rows.
    let table_rows: Vec<usize> = match &weights {
        Some(w) => w
            .keep
            .iter()
            .enumerate()
            .filter(|(_, keep)| **keep)
            .map(|(i, _)| i)
            .collect(),
        None => (0..=skipped.last().copied().unwrap_or(0)).collect(),
    };
    if let Some(weights) = weights {
        let mut index = 0;
        weights.values.retain(|_| {
            let keep = skipped.binary_search(&index).is_err();
            index += 1;
            keep
        });
    }
    let shown: Vec<String> = skipped
        .iter()
        .take(10)
        .map(|&i| (table_rows[i] + 1).to_string())
        .collect();
    writeln!(
        context.printer.stderr(),
        "{file}: left out {} whose prompt fills --max-length {} (--skip-long): row{} {}{}",
        curate::text::count(skipped.len(), "row", "rows"),
        args.text.max_length.unwrap_or_default(),
        if skipped.len() == 1 { "" } else { "s" },
        shown.join(", "),
        if skipped.len() > shown.len() {
            ", ..."
        } else {
            ""
        }
    )?;
    Ok(())
}

/// What is about to be trained, on stderr.
fn report_start(
    args: &TrainArgs,
    lm: &LanguageModel,
    trainer: &Trainer,
    sequences: &[Sequence],
    weights: Option<&LossWeights>,
    truncated: usize,
    context: &Context,
) -> Result<()> {
    let total = trainer.total_steps();
    let mut err = context.printer.stderr();
    writeln!(
        err,
        "training {} ({} parameters) on {} sequences: {} steps{}",
        lm.config.architecture.model_type(),
        lm.config.parameter_count(),
        sequences.len(),
        total,
        if trainer.step > 0 {
            format!(", resuming at step {}", trainer.step)
        } else {
            String::new()
        }
    )?;

    if let (Some(name), Some(weights)) = (&args.weight_col, weights) {
        writeln!(
            err,
            "losses weighted by '{name}' (total {:.3}){}",
            weights.values.iter().sum::<f64>(),
            if weights.left_out() > 0 {
                format!("; {} rows of weight 0 left out", weights.left_out())
            } else {
                String::new()
            }
        )?;
    }
    if truncated > 0 {
        writeln!(
            err,
            "cut {truncated} of {} rows to --max-length {} tokens",
            sequences.len(),
            args.text.max_length.unwrap_or_default()
        )?;
    }
    Ok(())
}

fn check_flags(args: &TrainArgs) -> Result<()> {
    let positive = [
        ("--batch-size", args.batch_size),
        ("--vocab-size", args.vocab_size),
        ("--hidden-size", args.hidden_size),
        ("--intermediate-size", args.intermediate_size),
        ("--layers", args.layers),
        ("--heads", args.heads),
        ("--kv-heads", args.kv_heads),
        ("--max-positions", args.max_positions),
    ];
    for (flag, value) in positive {
        if value == 0 {
            return Err(usage(format!("{flag} must be positive")));
        }
    }
    if args.steps == Some(0) || (args.steps.is_none() && args.epochs == 0) {
        return Err(usage(
            "nothing to train: --epochs and --steps must be positive",
        ));
    }
    if !(args.lr > 0.0 && args.lr.is_finite()) {
        return Err(usage("--lr must be a positive number"));
    }
    if args.checkpoint_every == Some(0) || args.stop_after == Some(0) {
        return Err(usage(
            "--checkpoint-every and --stop-after must be positive",
        ));
    }
    if args.config.is_none() && args.model.is_none() {
        if !args.hidden_size.is_multiple_of(args.heads)
            || !(args.hidden_size / args.heads).is_multiple_of(2)
        {
            return Err(usage(format!(
                "--hidden-size {} must split into --heads {} heads of even size",
                args.hidden_size, args.heads
            )));
        }
        if !args.heads.is_multiple_of(args.kv_heads) {
            return Err(usage("--heads must be a multiple of --kv-heads"));
        }
    }
    Ok(())
}

/// The checkpoint directory must never put a user's files at risk: not the output or inside
/// it, not a directory of other files; an interrupted run's checkpoint is continued with
/// `--resume` or replaced only with `--force`.
fn check_checkpoint_dir(args: &TrainArgs, dir: &Path, out: &Path) -> Result<()> {
    Checkpoint::check_place(dir, out).map_err(|err| match err {
        CheckpointPlace::OverlapsOutput { .. } => usage(format!(
            "--checkpoint-dir {} is --out {} or overlaps it; give the checkpoint a directory of its own",
            dir.display(),
            out.display()
        )),
        CheckpointPlace::Foreign(_) => usage(format!(
            "--checkpoint-dir {}: {err}; name a new or empty directory",
            dir.display()
        )),
    })?;
    let exists = Checkpoint::exists(dir);
    if args.resume && !exists {
        return Err(usage(format!(
            "--resume: no checkpoint in {} (it is written on Ctrl-C, SIGTERM, --stop-after and --checkpoint-every)",
            dir.display()
        )));
    }
    if !args.resume && exists && !args.force {
        let step = Checkpoint::step(dir)
            .map(|s| format!(" (step {s})"))
            .unwrap_or_default();
        return Err(usage(format!(
            "{}: an interrupted run's checkpoint{step} is here; pass --resume to continue it, or --force to start over",
            dir.display()
        )));
    }
    Ok(())
}

fn read_tokenizer(path: &str) -> Result<Tokenizer> {
    Tokenizer::from_file(path)
        .map_err(|e| InputError::new(path, format!("not a tokenizer: {e}")).into())
}

/// The text rows and, with `--weight-col`, their weights; rows of weight 0 are left out.
fn read_rows(input: &Input, args: &TrainArgs) -> Result<(TextRows, Option<LossWeights>)> {
    let frame = input.read()?;
    let label = input.label();
    table::require_rows(&frame, label)?;
    let rows = TextRows::read(&frame, label, &crate::commands::text_columns(&args.text))?;
    let Some(name) = &args.weight_col else {
        return Ok((rows, None));
    };
    let weights = LossWeights::read(&frame, label, table::ColumnRole::new(name, "--weight-col"))?;
    Ok((rows.select(&weights.keep), Some(weights)))
}

/// A fresh model's shape: `--config`, or the shape flags.
fn config_source(args: &TrainArgs) -> ConfigSource<'_> {
    match &args.config {
        Some(path) => ConfigSource::File(path),
        None => ConfigSource::Shape {
            architecture: match args.arch {
                ArchArg::Llama => Architecture::Llama,
                ArchArg::Qwen2 => Architecture::Qwen2,
            },
            hidden_size: args.hidden_size,
            intermediate_size: args.intermediate_size,
            layers: args.layers,
            heads: args.heads,
            kv_heads: args.kv_heads,
            max_positions: args.max_positions,
            tie_embeddings: args.tie_embeddings,
        },
    }
}
