//! `curate influence validate`: retrain on random subsets and on rows with the most helpful
//! removed, to check how well a score file predicts what training does.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use burn::tensor::DType;
use polars::prelude::*;
use serde_json::json;

use crate::ExitStatus;
use crate::cli::ValidateArgs;
use crate::commands::Context;
use curate::error::{InputError, usage};
use curate::influence::examples::{self, Examples};
use curate::influence::validate::{
    lds, mean_and_standard_error, most_helpful, random_sets, random_subsets, removal_count,
    retrain_and_measure,
};
use curate::interrupt;
use curate::model::train::{TrainSettings, Trainer};
use curate::model::{LanguageModel, LoadOptions, batched_losses};
use curate::table::{self, ColumnRole, Expected, Format, Input, Output};

pub fn run(args: ValidateArgs, context: &Context) -> Result<ExitStatus> {
    let fractions = check_flags(&args)?;
    let output = Output::create(&args.out, None, args.force)?;
    // A JSON document, whatever the extension.
    let summary_output = match &args.summary {
        Some(path) => Some(Output::create(path, Some(Format::Jsonl), args.force)?),
        None => None,
    };
    let device = crate::commands::device(&args.device)?;
    let dtype = DType::from(args.dtype);
    let base = LanguageModel::load(
        Path::new(&args.model),
        &LoadOptions {
            trainable: true,
            ..LoadOptions::inference(&device, dtype)
        },
    )?;
    let chat = base.chat_template(&crate::commands::template_choice(&args.text.chat)?)?;
    let options = super::read_options(args.id_col.as_deref(), &args.text, chat.as_ref());
    let train = examples::read(&args.train, &base, &options)?;
    let query = examples::read(&args.query, &base, &options)?;
    let mut score_files = Vec::with_capacity(args.scores.len());
    for path in &args.scores {
        let input = Input::open(path, None)?;
        let objective = read_scores(&input, &train, &query)?;
        if let Some((first, _)) = score_files.first() {
            let first: &Objective = first;
            if first.names != objective.names {
                return Err(usage(format!(
                    "{path}: scores a different objective than {} (queries or aggregation differ)",
                    args.scores[0]
                )));
            }
        }
        score_files.push((objective, input));
    }

    let settings = TrainSettings {
        epochs: args.epochs,
        batch_size: args.batch_size,
        learning_rate: args.lr,
        warmup_steps: args.warmup,
        schedule: args.schedule.into(),
        seed: context.seed,
        ..TrainSettings::default()
    };
    let n = train.len();
    let subsets = random_subsets(n, args.alpha, args.subsets, context.seed);
    let control_seeds: Vec<u64> = (0..args.random_controls as u64)
        .map(|i| context.seed.wrapping_add(1000 + i))
        .collect();
    let keep_all_but =
        |removed: &[usize]| -> Vec<usize> { (0..n).filter(|i| !removed.contains(i)).collect() };

    // Every retraining, each once: the subsets, all rows, the random removals of each fraction
    // (shared by the score files), and each score file's removal of its most helpful rows.
    let mut runs: Vec<Vec<usize>> = subsets.clone();
    let full_run = runs.len();
    runs.push((0..n).collect());
    let mut random_runs: Vec<Vec<usize>> = Vec::new();
    let mut top_runs: Vec<Vec<usize>> = vec![Vec::new(); score_files.len()];
    let mut removed_rows = Vec::new();
    for &fraction in &fractions {
        let count = removal_count(n, fraction);
        removed_rows.push(count);
        let mut this_random = Vec::new();
        for rows in random_sets(n, count, &control_seeds) {
            this_random.push(runs.len());
            runs.push(keep_all_but(&rows));
        }
        random_runs.push(this_random);
        for (file, (objective, _)) in score_files.iter().enumerate() {
            top_runs[file].push(runs.len());
            runs.push(keep_all_but(&most_helpful(&objective.scores, count)));
        }
    }
    let steps_of = |rows: usize| Trainer::new(settings.clone(), vec![1; rows]).total_steps() as u64;
    let total: u64 = runs.iter().map(|r| steps_of(r.len())).sum();
    let mut err = context.printer.stderr();
    writeln!(
        err,
        "retraining {} times ({} subsets of {} rows, all rows, {} removal runs): {total} steps",
        runs.len(),
        subsets.len(),
        subsets.first().map_or(0, Vec::len),
        runs.len() - subsets.len() - 1
    )?;
    let started = Instant::now();
    let bar = context.printer.progress_bar(total, "retrain");
    let mut on_step = || -> Result<()> {
        bar.inc(1);
        interrupt::check()?;
        Ok(())
    };
    let mut losses: Vec<Vec<f64>> = Vec::with_capacity(runs.len());
    for rows in &runs {
        losses.push(retrain_and_measure(
            &base,
            &train.sequences,
            rows,
            &query.sequences,
            &settings,
            args.batch_size,
            &mut on_step,
        )?);
    }
    bar.finish_and_clear();
    let base_losses = batched_losses(
        &base.model,
        base.pad_id(),
        &query.sequences,
        args.batch_size,
        &mut |_| Ok(()),
    )?;

    let mean_over = |values: &[f64]| values.iter().sum::<f64>() / values.len().max(1) as f64;
    let mut table = ValidationTable::default();
    let mut reports = Vec::new();
    for (file, (objective, input)) in score_files.iter().enumerate() {
        let outputs: Vec<Vec<f64>> = losses.iter().map(|l| objective.outputs(l)).collect();
        let per_query = lds(&objective.scores, &subsets, &outputs[..subsets.len()]);
        let valid: Vec<f64> = per_query.iter().flatten().copied().collect();
        let (mean_lds, standard_error) = mean_and_standard_error(&valid);
        let base_outputs = objective.outputs(&base_losses);
        for (q, name) in objective.names.iter().enumerate() {
            let subset_mean = mean_over(
                &outputs[..subsets.len()]
                    .iter()
                    .map(|o| o[q])
                    .collect::<Vec<_>>(),
            );
            table.push(
                input.label(),
                name,
                per_query[q],
                subset_mean,
                outputs[full_run][q],
                base_outputs[q],
            );
        }
        let controls: Vec<serde_json::Value> = fractions
            .iter()
            .enumerate()
            .map(|(i, fraction)| {
                let random: Vec<f64> = random_runs[i]
                    .iter()
                    .map(|&run| mean_over(&outputs[run]))
                    .collect();
                let (random_mean, random_se) = mean_and_standard_error(&random);
                json!({
                    "fraction": fraction,
                    "removed_rows": removed_rows[i],
                    "top_removed_loss": mean_over(&outputs[top_runs[file][i]]),
                    "random_removed_loss": finite(random_mean),
                    "random_removed_loss_standard_error": finite(random_se),
                    "random_removed_losses": random,
                })
            })
            .collect();
        writeln!(
            err,
            "{}: LDS {:.3} ± {:.3} (standard error) over {} queries",
            input.label(),
            mean_lds,
            standard_error,
            valid.len()
        )?;
        for control in &controls {
            writeln!(
                err,
                "  remove {:.0}%: most helpful -> loss {:.4}, random -> {:.4}",
                control["fraction"].as_f64().unwrap_or(0.0) * 100.0,
                control["top_removed_loss"].as_f64().unwrap_or(f64::NAN),
                control["random_removed_loss"].as_f64().unwrap_or(f64::NAN),
            )?;
        }
        reports.push(json!({
            "file": input.label(),
            "objective": objective.kind,
            "lds": {
                "mean": finite(mean_lds),
                "standard_error": finite(standard_error),
                "queries": valid.len(),
                "undefined": per_query.len() - valid.len(),
            },
            "controls": controls,
        }));
    }
    let full = mean_over(&losses[full_run]);
    writeln!(
        err,
        "mean query loss: base {:.4}, retrained on all rows {full:.4}",
        mean_over(&base_losses)
    )?;

    let mut provenance = context.provenance();
    for examples in [&train, &query] {
        provenance.add_input(examples.digest.clone());
    }
    for (_, input) in &score_files {
        provenance.add_input(input.digest()?);
    }
    output.write_frame(&table.frame()?, Some(&provenance))?;
    let report = json!({
        "scores": reports,
        "subsets": subsets.len(),
        "alpha": args.alpha,
        "subset_rows": subsets.first().map_or(0, Vec::len),
        "train_rows": n,
        "queries": query.len(),
        "base_loss": mean_over(&base_losses),
        "full_data_loss": full,
        "training": {
            "epochs": args.epochs, "lr": args.lr, "warmup": args.warmup,
            "schedule": format!("{:?}", args.schedule).to_lowercase(),
            "batch_size": args.batch_size, "seed": context.seed,
        },
        "seconds": started.elapsed().as_secs_f64(),
    });
    if let Some(summary_output) = summary_output {
        let mut text = serde_json::to_string(&report)?;
        text.push('\n');
        summary_output.write_document(text.as_bytes())?;
    }
    Ok(ExitStatus::Success)
}

/// The per-query rows of the output table.
#[derive(Default)]
struct ValidationTable {
    scores: Vec<String>,
    query: Vec<String>,
    lds: Vec<Option<f64>>,
    subset_loss: Vec<f64>,
    full_loss: Vec<f64>,
    base_loss: Vec<f64>,
}

impl ValidationTable {
    fn push(
        &mut self,
        file: &str,
        query: &str,
        lds: Option<f64>,
        subset: f64,
        full: f64,
        base: f64,
    ) {
        self.scores.push(file.to_string());
        self.query.push(query.to_string());
        self.lds.push(lds);
        self.subset_loss.push(subset);
        self.full_loss.push(full);
        self.base_loss.push(base);
    }

    fn frame(&self) -> Result<DataFrame> {
        Ok(DataFrame::new(
            self.scores.len(),
            vec![
                Column::new("scores".into(), self.scores.clone()),
                Column::new("query_id".into(), self.query.clone()),
                Column::new("lds".into(), self.lds.clone()),
                Column::new("mean_subset_loss".into(), self.subset_loss.clone()),
                Column::new("full_data_loss".into(), self.full_loss.clone()),
                Column::new("base_loss".into(), self.base_loss.clone()),
            ],
        )?)
    }
}

fn finite(value: f64) -> serde_json::Value {
    if value.is_finite() {
        json!(value)
    } else {
        serde_json::Value::Null
    }
}

/// The removal fractions, after checking every flag.
fn check_flags(args: &ValidateArgs) -> Result<Vec<f64>> {
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
    if args.remove == "none" {
        return Ok(Vec::new());
    }
    args.remove
        .split(',')
        .map(|part| match part.trim().parse::<f64>() {
            Ok(f) if f > 0.0 && f < 1.0 => Ok(f),
            _ => Err(usage(format!(
                "--remove {part:?}: expected fractions in (0, 1), or none"
            ))),
        })
        .collect()
}

/// What the scores predict: per query, or one aggregated objective.
struct Objective {
    /// Output names: query ids, or `mean` / `sum`.
    names: Vec<String>,
    kind: &'static str,
    /// `[output][train row]`.
    scores: Vec<Vec<f64>>,
}

impl Objective {
    /// The measured outputs from the per-query losses.
    fn outputs(&self, losses: &[f64]) -> Vec<f64> {
        match self.kind {
            "mean" => vec![losses.iter().sum::<f64>() / losses.len().max(1) as f64],
            "sum" => vec![losses.iter().sum()],
            _ => losses.to_vec(),
        }
    }
}

/// The score table as `[query][train]`, every (query, training row) pair present once.
fn read_scores(input: &Input, train: &Examples, query: &Examples) -> Result<Objective> {
    let frame = input.read()?;
    let file = input.label();
    table::require_rows(&frame, file)?;
    for (name, expected) in [
        ("query_id", Expected::Id),
        ("train_id", Expected::Id),
        ("score", Expected::Number),
    ] {
        table::require_type(&frame, file, ColumnRole::new(name, name), expected)?;
    }
    let ids = |column: &Column| -> Result<Vec<String>> {
        let text = column.cast(&DataType::String)?;
        Ok(text
            .str()?
            .iter()
            .map(|v| v.unwrap_or("").to_string())
            .collect())
    };
    let train_ids = ids(&train.ids)?;
    let query_ids = ids(&query.ids)?;
    let train_at: HashMap<&str, usize> = train_ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    let score_queries = ids(frame.column("query_id")?)?;
    let score_trains = ids(frame.column("train_id")?)?;
    let values = table::number_column(&frame, file, ColumnRole::new("score", "score"), "score")?;
    let aggregated = score_queries
        .first()
        .filter(|q| matches!(q.as_str(), "mean" | "sum"))
        .cloned();
    let (names, kind): (Vec<String>, &'static str) = match aggregated.as_deref() {
        Some("mean") => (vec!["mean".into()], "mean"),
        Some("sum") => (vec!["sum".into()], "sum"),
        _ => (query_ids.clone(), "per_query"),
    };
    let query_at: HashMap<&str, usize> = names
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    let mut scores = vec![vec![f64::NAN; train_ids.len()]; names.len()];
    for (row, ((q, t), v)) in score_queries
        .iter()
        .zip(&score_trains)
        .zip(values)
        .enumerate()
    {
        let bad = |message: String| InputError::new(file, message).row(row + 1);
        let &qi = query_at.get(q.as_str()).ok_or_else(|| {
            bad(format!("query '{q}' is not a row of {}", query.file)).column("query_id")
        })?;
        let &ti = train_at.get(t.as_str()).ok_or_else(|| {
            bad(format!("training row '{t}' is not in {}", train.file)).column("train_id")
        })?;
        if !scores[qi][ti].is_nan() {
            return Err(bad(format!("a second score for ({q}, {t})")).into());
        }
        scores[qi][ti] = v;
    }
    for (qi, row) in scores.iter().enumerate() {
        if let Some(ti) = row.iter().position(|v| v.is_nan()) {
            return Err(InputError::new(
                file,
                format!(
                    "no score for query '{}' and training row '{}' (scores must cover every pair)",
                    names[qi], train_ids[ti]
                ),
            )
            .into());
        }
    }
    Ok(Objective {
        names,
        kind,
        scores,
    })
}
