//! `curate train`: train or continue a small causal LM on prompt/response text.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, Result};
use burn::tensor::DType;
use sha2::{Digest, Sha256};
use tokenizers::Tokenizer;

use super::Context;
use super::output_dir::OutputDir;
use crate::ExitStatus;
use crate::cli::{ArchArg, TrainArgs};
use curate::error::{InputError, Interrupted, usage};
use curate::interrupt;
use curate::model::encode::{self as sequences, TextRows};
use curate::model::train::{TrainSettings, Trainer};
use curate::model::{
    Architecture, LanguageModel, LmConfig, LoadOptions, Sequence, TemplateChoice, tokenizer,
};
use curate::table::{self, Input};

const TRAINER_STATE: &str = "trainer.json";
const OPTIMIZER_STATE: &str = "optimizer.bpk";
const CHECKPOINT_MODEL: &str = "model";

pub fn run(args: TrainArgs, context: &Context) -> Result<ExitStatus> {
    check_flags(&args)?;
    let device = super::device(&args.device)?;
    let dtype = DType::from(args.dtype);
    let out = PathBuf::from(&args.out);
    let checkpoint_dir = args
        .checkpoint_dir
        .as_ref()
        .map(PathBuf::from)
        .unwrap_or_else(|| sibling(&out, "checkpoint"));
    let output = OutputDir::create(&out, args.force)?;
    if args.resume && !checkpoint_dir.join(TRAINER_STATE).is_file() {
        return Err(usage(format!(
            "--resume: no checkpoint in {} (it is written on Ctrl-C, --stop-after and --checkpoint-every)",
            checkpoint_dir.display()
        )));
    }

    let input = Input::open(&args.input, args.input_format.map(Into::into))?;
    let (rows, weights) = read_rows(&input, &args)?;
    let template_choice = crate::commands::template_choice(&args.text.chat)?;

    // The starting model: a checkpoint, a model directory, or a fresh one.
    let options = LoadOptions {
        trainable: true,
        ..LoadOptions::inference(&device, dtype)
    };
    let mut lm = if args.resume {
        LanguageModel::load(&checkpoint_dir.join(CHECKPOINT_MODEL), &options)?
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
        let config = initial_config(&args, &tokenizer)?;
        let eos = config.eos_token_id.and_then(|id| tokenizer.id_to_token(id));
        let mut lm =
            LanguageModel::init(config, Some(tokenizer), context.seed, &device, dtype, true)?;
        lm.special_tokens.eos = eos;
        lm
    };
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

    let encoding = crate::commands::encoding(&args.text, input.label(), chat.as_ref());
    let (sequences, truncated) = encoding.encode_rows(&lm, &tok, &rows)?;
    let settings = TrainSettings {
        epochs: args.epochs,
        max_steps: args.steps,
        batch_size: args.batch_size,
        learning_rate: args.lr,
        warmup_steps: args.warmup,
        schedule: args.schedule.into(),
        weight_decay: args.weight_decay,
        grad_clip: (args.grad_clip > 0.0).then_some(args.grad_clip),
        seed: context.seed,
        ..TrainSettings::default()
    };
    let digest = input.digest()?;
    let fingerprint = fingerprint(
        &digest.sha256,
        &settings,
        &lm,
        &tok,
        &encoding,
        weights.as_ref().map(|w| w.values.as_slice()),
    );
    let mut trainer = Trainer::new(settings, sequences.iter().map(Sequence::len).collect());
    if let Some(weights) = &weights {
        trainer = trainer.with_weights(weights.values.clone());
    }
    if args.resume {
        resume(&mut trainer, &checkpoint_dir, &fingerprint)?;
    }

    let mut provenance = context.provenance();
    provenance.add_input(digest);
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

    if let (Some(name), Some(weights)) = (&args.weight_col, &weights) {
        writeln!(
            err,
            "losses weighted by '{name}' (total {:.3}){}",
            weights.values.iter().sum::<f64>(),
            if weights.left_out > 0 {
                format!("; {} rows of weight 0 left out", weights.left_out)
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
    let bar = context.printer.progress_bar(total as u64, "train");
    bar.set_position(trainer.step as u64);
    let started = Instant::now();
    let (mut tokens_seen, mut last_loss, mut steps_this_run) = (0usize, f64::NAN, 0usize);
    let mut model = lm.model.clone();
    while !trainer.is_done() {
        if interrupt::check().is_err() {
            lm.model = model;
            save_checkpoint(&lm, &trainer, &checkpoint_dir, &fingerprint)?;
            bar.abandon();
            writeln!(
                err,
                "stopped at step {}; checkpoint in {} (continue with --resume)",
                trainer.step,
                checkpoint_dir.display()
            )?;
            return Err(Interrupted.into());
        }
        let (next, report) = trainer.train_step(&lm, model, &sequences);
        model = next;
        if !report.loss.is_finite() {
            return Err(anyhow::anyhow!(
                "loss became {} at step {}; lower --lr",
                report.loss,
                report.step
            ));
        }
        tokens_seen += report.tokens;
        last_loss = report.loss;
        steps_this_run += 1;
        let rate = tokens_seen as f64 / started.elapsed().as_secs_f64().max(1e-9);
        bar.set_message(format!("loss {:.4}, {:.0} tok/s", report.loss, rate));
        bar.inc(1);
        tracing::debug!(
            step = report.step,
            loss = report.loss,
            lr = report.learning_rate,
            grad_norm = report.grad_norm,
            "step"
        );
        let periodic = args
            .checkpoint_every
            .is_some_and(|every| trainer.step % every == 0 && !trainer.is_done());
        let stopping = args.stop_after == Some(steps_this_run) && !trainer.is_done();
        if periodic || stopping {
            lm.model = model.clone();
            save_checkpoint(&lm, &trainer, &checkpoint_dir, &fingerprint)?;
        }
        if stopping {
            bar.finish_and_clear();
            writeln!(
                err,
                "stopped after {steps_this_run} steps (step {} of {total}); checkpoint in {} (continue with --resume)",
                trainer.step,
                checkpoint_dir.display()
            )?;
            return Ok(ExitStatus::Success);
        }
    }
    bar.finish_and_clear();
    lm.model = model;

    lm.save(output.path(), &provenance.key_values())?;
    output.commit()?;
    if checkpoint_dir.exists() {
        std::fs::remove_dir_all(&checkpoint_dir)
            .with_context(|| format!("cannot remove {}", checkpoint_dir.display()))?;
    }
    let seconds = started.elapsed().as_secs_f64();
    writeln!(
        err,
        "trained {steps_this_run} steps in {seconds:.1}s ({:.0} tokens/s), last loss {last_loss:.4}; wrote {}",
        tokens_seen as f64 / seconds.max(1e-9),
        out.display()
    )?;
    Ok(ExitStatus::Success)
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
        if args.hidden_size % args.heads != 0 || (args.hidden_size / args.heads) % 2 != 0 {
            return Err(usage(format!(
                "--hidden-size {} must split into --heads {} heads of even size",
                args.hidden_size, args.heads
            )));
        }
        if args.heads % args.kv_heads != 0 {
            return Err(usage("--heads must be a multiple of --kv-heads"));
        }
    }
    Ok(())
}

/// `DIR.<suffix>` beside `DIR`.
fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{suffix}"));
    dir.with_file_name(name)
}

fn read_tokenizer(path: &str) -> Result<Tokenizer> {
    Tokenizer::from_file(path)
        .map_err(|e| InputError::new(path, format!("not a tokenizer: {e}")).into())
}

/// `--weight-col`'s weights of the rows kept, and how many rows weighed 0.
struct RowWeights {
    values: Vec<f64>,
    left_out: usize,
}

/// The text rows and, with `--weight-col`, their weights; rows of weight 0 are left out.
fn read_rows(input: &Input, args: &TrainArgs) -> Result<(TextRows, Option<RowWeights>)> {
    let frame = input.read()?;
    let label = input.label();
    table::require_rows(&frame, label)?;
    let rows = TextRows::read(&frame, label, &crate::commands::text_columns(&args.text))?;
    let Some(name) = &args.weight_col else {
        return Ok((rows, None));
    };
    let role = table::ColumnRole::new(name, "--weight-col");
    let weights = table::number_column(&frame, label, role, "weight")?;
    if let Some(row) = weights.iter().position(|w| !w.is_finite() || *w < 0.0) {
        return Err(InputError::new(
            label,
            format!(
                "weight {} is not a finite non-negative number",
                weights[row]
            ),
        )
        .column(name.as_str())
        .row(row + 1)
        .into());
    }
    let keep: Vec<bool> = weights.iter().map(|&w| w > 0.0).collect();
    if !keep.contains(&true) {
        return Err(
            InputError::new(label, "every weight is 0: nothing to train on")
                .column(name.as_str())
                .into(),
        );
    }
    let values: Vec<f64> = weights.into_iter().filter(|&w| w > 0.0).collect();
    let left_out = keep.len() - values.len();
    Ok((rows.select(&keep), Some(RowWeights { values, left_out })))
}

fn initial_config(args: &TrainArgs, tokenizer: &Tokenizer) -> Result<LmConfig> {
    let vocab = tokenizer.get_vocab_size(true);
    let end_of_text = tokenizer.token_to_id(tokenizer::END_OF_TEXT);
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| InputError::new(path.as_str(), format!("cannot read: {e}")))?;
            let config =
                LmConfig::from_json(&text).map_err(|m| InputError::new(path.as_str(), m))?;
            if config.vocab_size < vocab {
                return Err(InputError::new(
                    path.as_str(),
                    format!(
                        "vocab size mismatch: vocab_size {} is smaller than the tokenizer's {vocab} tokens",
                        config.vocab_size
                    ),
                )
                .into());
            }
            config
        }
        None => {
            let architecture = match args.arch {
                ArchArg::Llama => Architecture::Llama,
                ArchArg::Qwen2 => Architecture::Qwen2,
            };
            let mut config = LmConfig::new(
                architecture,
                vocab,
                args.hidden_size,
                args.intermediate_size,
                args.layers,
                args.heads,
                args.kv_heads,
            );
            config.max_position_embeddings = args.max_positions;
            config.tie_word_embeddings = args.tie_embeddings;
            config
        }
    };
    if config.eos_token_id.is_none() {
        config.eos_token_id = end_of_text;
    }
    if config.pad_token_id.is_none() {
        config.pad_token_id = config.eos_token_id;
    }
    Ok(config)
}

/// What a checkpoint must agree with to be resumed: data, settings, model shape, tokenizer,
/// and how rows became sequences (chat template, system message, length limit).
fn fingerprint(
    data_sha256: &str,
    settings: &TrainSettings,
    lm: &LanguageModel,
    tok: &Tokenizer,
    encoding: &sequences::Encoding,
    weights: Option<&[f64]>,
) -> String {
    let mut hash = Sha256::new();
    if let Some(weights) = weights {
        hash.update(b"weights\0");
        for w in weights {
            hash.update(w.to_le_bytes());
        }
    }
    hash.update(data_sha256.as_bytes());
    hash.update(format!("{settings:?}").as_bytes());
    hash.update(lm.config.to_json().as_bytes());
    hash.update(tok.to_string(false).unwrap_or_default().as_bytes());
    if let Some(template) = encoding.chat {
        hash.update(b"chat template\0");
        hash.update(template.source().as_bytes());
        hash.update(encoding.system.unwrap_or_default().as_bytes());
    }
    format!("{:x}", hash.finalize())
}

#[derive(serde::Serialize, serde::Deserialize)]
struct TrainerState {
    step: usize,
    fingerprint: String,
}

fn save_checkpoint(
    lm: &LanguageModel,
    trainer: &Trainer,
    dir: &Path,
    fingerprint: &str,
) -> Result<()> {
    let staged = OutputDir::create(dir, true)?;
    let model_dir = staged.path().join(CHECKPOINT_MODEL);
    std::fs::create_dir(&model_dir)
        .with_context(|| format!("cannot create {}", model_dir.display()))?;
    lm.save(&model_dir, &[])?;
    trainer.save_optimizer(&staged.path().join(OPTIMIZER_STATE))?;
    let state = TrainerState {
        step: trainer.step,
        fingerprint: fingerprint.to_string(),
    };
    std::fs::write(
        staged.path().join(TRAINER_STATE),
        serde_json::to_string_pretty(&serde_json::json!(state))?,
    )?;
    staged.commit()
}

fn resume(trainer: &mut Trainer, dir: &Path, fingerprint: &str) -> Result<()> {
    let path = dir.join(TRAINER_STATE);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let state: TrainerState = serde_json::from_str(&text).map_err(|e| {
        InputError::new(
            path.display().to_string(),
            format!("not a trainer state: {e}"),
        )
    })?;
    if state.fingerprint != fingerprint {
        return Err(usage(format!(
            "--resume: the checkpoint in {} was made with other data or flags",
            dir.display()
        )));
    }
    trainer.load_optimizer(&dir.join(OPTIMIZER_STATE))?;
    trainer.step = state.step;
    Ok(())
}
