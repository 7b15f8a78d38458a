//! `curate influence validate`: retrain on random subsets and on rows with the most helpful
//! removed, to check how well a score file predicts what training does.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use burn::tensor::DType;
use serde_json::json;

use crate::ExitStatus;
use crate::cli::ValidateArgs;
use crate::commands::Context;
use curate::error::usage;
use curate::influence::examples::{self, Examples};
use curate::influence::retrain::{
    Objective, RetrainPlan, ScoreCheck, check_json, check_scores, checks_frame, mean,
};
use curate::influence::validate::retrain_and_measure;
use curate::interrupt;
use curate::model::train::{TrainSettings, Trainer};
use curate::model::{LanguageModel, LoadOptions, batched_losses};
use curate::table::{Format, Input, Output};

pub fn run(args: ValidateArgs, context: &Context) -> Result<ExitStatus> {
    check_flags(&args)?;
    let fractions = &args.remove.0;
    curate::table::require_distinct(&[
        ("--out", args.out.as_str()),
        ("--summary", args.summary.as_deref().unwrap_or("-")),
    ])?;
    let output = Output::create(&args.out, None, args.force)?;
    // A JSON document, whatever the extension.
    let summary_output = match &args.summary {
        Some(path) => Some(Output::create(path, Some(Format::Jsonl), args.force)?),
        None => None,
    };
    let (base, train, query) = load_inputs(&args)?;
    let score_files = read_score_files(&args.scores, &train, &query)?;

    let settings = retrain_settings(&args, context.seed);
    let objectives: Vec<&Objective> = score_files.iter().map(|(o, _)| o).collect();
    let plan = RetrainPlan::new(
        train.len(),
        args.alpha,
        args.subsets,
        args.random_controls,
        fractions,
        &objectives,
        context.seed,
    );
    let mut err = context.printer.stderr();
    let started = Instant::now();
    let losses = retrain_all(
        &plan,
        &base,
        &train,
        &query,
        &settings,
        args.batch_size,
        context,
    )?;
    let base_losses = batched_losses(
        &base.model,
        base.pad_id(),
        &query.sequences,
        args.batch_size,
        &mut |_| Ok(()),
    )?;

    let checks: Vec<ScoreCheck> = objectives
        .iter()
        .enumerate()
        .map(|(file, objective)| check_scores(&plan, file, objective, &losses, &base_losses))
        .collect();
    for ((_, input), check) in score_files.iter().zip(&checks) {
        print_check(&mut err, input.label(), check)?;
    }
    let full = mean(&losses[plan.full_run]);
    writeln!(
        err,
        "mean query loss: base {:.4}, retrained on all rows {full:.4}",
        mean(&base_losses)
    )?;

    let mut provenance = context.provenance();
    for examples in [&train, &query] {
        provenance.add_input(examples.digest.clone());
    }
    for (_, input) in &score_files {
        provenance.add_input(input.digest()?);
    }
    let files: Vec<(&str, &Objective, &ScoreCheck)> = score_files
        .iter()
        .zip(&checks)
        .map(|((objective, input), check)| (input.label(), objective, check))
        .collect();
    let mut staged = vec![output.stage_frame(&checks_frame(&files)?, Some(&provenance))?];
    if let Some(summary_output) = summary_output {
        let report = json!({
            "scores": files.iter().map(|(file, objective, check)| check_json(file, objective, check)).collect::<Vec<_>>(),
            "subsets": plan.subsets,
            "alpha": args.alpha,
            "subset_rows": plan.subset_rows(),
            "train_rows": train.len(),
            "queries": query.len(),
            "base_loss": mean(&base_losses),
            "full_data_loss": full,
            "training": training_json(&args, context.seed),
            "seconds": started.elapsed().as_secs_f64(),
        });
        let mut text = serde_json::to_string(&report)?;
        text.push('\n');
        staged.push(summary_output.stage_document(text.as_bytes())?);
    }
    curate::table::commit_all(staged)?;
    Ok(ExitStatus::Success)
}

/// The base model (trainable) and the training and query examples it encodes.
fn load_inputs(args: &ValidateArgs) -> Result<(LanguageModel, Examples, Examples)> {
    let device = crate::commands::device(&args.device)?;
    let base = LanguageModel::load(
        Path::new(&args.model),
        &LoadOptions {
            trainable: true,
            ..LoadOptions::inference(&device, DType::from(args.dtype))
        },
    )?;
    let chat = base.chat_template(&crate::commands::template_choice(&args.text.chat)?)?;
    let options = super::read_options(args.id_col.as_deref(), &args.text, chat.as_ref());
    let train = examples::read(&args.train, &base, &options)?;
    let query = examples::read(&args.query, &base, &options)?;
    Ok((base, train, query))
}

/// How every retraining run trains.
fn retrain_settings(args: &ValidateArgs, seed: u64) -> TrainSettings {
    TrainSettings {
        epochs: args.epochs,
        batch_size: args.batch_size,
        learning_rate: args.lr,
        warmup_steps: args.warmup,
        schedule: args.schedule.into(),
        seed,
        ..TrainSettings::default()
    }
}

/// The training settings as the summary records them.
fn training_json(args: &ValidateArgs, seed: u64) -> serde_json::Value {
    json!({
        "epochs": args.epochs, "lr": args.lr, "warmup": args.warmup,
        "schedule": format!("{:?}", args.schedule).to_lowercase(),
        "batch_size": args.batch_size, "seed": seed,
    })
}

/// Each `--scores` file as the objective it predicts; all must predict the same one.
fn read_score_files(
    paths: &[String],
    train: &Examples,
    query: &Examples,
) -> Result<Vec<(Objective, Input)>> {
    let mut score_files = Vec::with_capacity(paths.len());
    for path in paths {
        let input = Input::open(path, None)?;
        let objective = Objective::read(&input.read()?, input.label(), train, query)?;
        if let Some((first, _)) = score_files.first() {
            let first: &Objective = first;
            if first.names != objective.names {
                return Err(usage(format!(
                    "{path}: scores a different objective than {} (queries or aggregation differ)",
                    paths[0]
                )));
            }
        }
        score_files.push((objective, input));
    }
    Ok(score_files)
}

/// Every run of the plan retrained from `base`, each run's per-query losses measured, with a
/// progress bar over all their steps.
fn retrain_all(
    plan: &RetrainPlan,
    base: &LanguageModel,
    train: &Examples,
    query: &Examples,
    settings: &TrainSettings,
    batch_size: usize,
    context: &Context,
) -> Result<Vec<Vec<f64>>> {
    let steps_of = |rows: usize| Trainer::new(settings.clone(), vec![1; rows]).total_steps() as u64;
    let total: u64 = plan.runs.iter().map(|r| steps_of(r.len())).sum();
    let mut err = context.printer.stderr();
    writeln!(
        err,
        "retraining {} times ({} subsets of {} rows, all rows, {} removal runs): {total} steps",
        plan.runs.len(),
        plan.subsets,
        plan.subset_rows(),
        plan.runs.len() - plan.subsets - 1
    )?;
    let bar = context.printer.progress_bar(total, "retrain");
    let mut on_step = || -> Result<()> {
        bar.inc(1);
        interrupt::check()?;
        Ok(())
    };
    let mut losses: Vec<Vec<f64>> = Vec::with_capacity(plan.runs.len());
    for rows in &plan.runs {
        losses.push(retrain_and_measure(
            base,
            &train.sequences,
            rows,
            &query.sequences,
            settings,
            batch_size,
            &mut on_step,
        )?);
    }
    bar.finish_and_clear();
    Ok(losses)
}

/// One score file's correlation and removal controls on stderr.
fn print_check(err: &mut impl Write, file: &str, check: &ScoreCheck) -> Result<()> {
    writeln!(
        err,
        "{file}: LDS {:.3} ± {:.3} (standard error) over {} queries",
        check.mean_lds,
        check.standard_error,
        check.defined()
    )?;
    for control in &check.controls {
        writeln!(
            err,
            "  remove {:.0}%: most helpful -> loss {:.4}, random -> {:.4}",
            control["fraction"].as_f64().unwrap_or(0.0) * 100.0,
            control["top_removed_loss"].as_f64().unwrap_or(f64::NAN),
            control["random_removed_loss"].as_f64().unwrap_or(f64::NAN),
        )?;
    }
    Ok(())
}

/// Check the flags a parser cannot.
fn check_flags(args: &ValidateArgs) -> Result<()> {
    if args.subsets < 2 {
        return Err(usage(
            "--subsets must be at least 2 (a rank correlation needs two)",
        ));
    }
    if !(args.alpha > 0.0 && args.alpha < 1.0) {
        return Err(usage(format!("--alpha {} is not in (0, 1)", args.alpha)));
    }
    if args.batch_size == 0 || args.epochs == 0 {
        return Err(usage("--batch-size and --epochs must be positive"));
    }
    if !(args.lr > 0.0 && args.lr.is_finite()) {
        return Err(usage("--lr must be a positive number"));
    }
    Ok(())
}
