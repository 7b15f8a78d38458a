//! `curate influence`: score training examples (and their segments and tokens) by their
//! influence on query examples; `fit-factors` and `merge-factors` for sharded factor fitting.

mod factors_dir;
mod merge_scores;
mod outputs;
mod validate;

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use burn::tensor::DType;
use regex::Regex;
use sha2::{Digest, Sha256};

use super::Context;
use crate::ExitStatus;
use crate::cli::{
    FisherArg, FitFactorsArgs, GradientArgs, GranularityArg, InfluenceAction, InfluenceArgs,
    MergeFactorsArgs, PrecondArg, QueryAggArg, TextArgs,
};
use crate::printer::Printer;
use curate::error::InputError;
use curate::error::usage;
use curate::influence::examples::{self, Examples, ReadOptions};
use curate::influence::report;
use curate::influence::store::{self, FACTORS_FILE, FactorMeta, RunFit, StoredFactors};
use curate::influence::{
    self, Damping, FactorSet, Fisher, LmSource, PassOptions, Preconditioner, Projection,
    QueryAggregate, Stage, segment::Segmenter,
};
use curate::interrupt;
use curate::model::{self, ChatTemplate, LanguageModel, LoadOptions};
use curate::table::ColumnRole;
use curate::table::{InputDigest, Shard};

pub fn run(args: Box<InfluenceArgs>, context: &Context) -> Result<ExitStatus> {
    let args = *args;
    match args.action {
        Some(InfluenceAction::FitFactors(fit)) => fit_factors(*fit, context),
        Some(InfluenceAction::MergeFactors(merge)) => merge_factors(merge, context),
        Some(InfluenceAction::MergeScores(merge)) => merge_scores::run(merge, context),
        Some(InfluenceAction::Validate(validate)) => validate::run(*validate, context),
        None => score(args, context),
    }
}

/// The model, the training examples and how gradients are taken.
struct Setup {
    lm: LanguageModel,
    model_digest: String,
    model_inputs: Vec<InputDigest>,
    tracked: Regex,
    projection: Option<Projection>,
    fisher: Fisher,
    shard: Shard,
    batch_size: usize,
    cache_bytes: usize,
    /// The chat template text rows go through, if any.
    chat: Option<ChatTemplate>,
    train: Examples,
}

fn preconditioner(arg: PrecondArg) -> Preconditioner {
    match arg {
        PrecondArg::Identity => Preconditioner::Identity,
        PrecondArg::Diagonal => Preconditioner::Diagonal,
        PrecondArg::Kfac => Preconditioner::Kfac,
        PrecondArg::Ekfac => Preconditioner::Ekfac,
    }
}

fn setup(args: &GradientArgs, context: &Context, answer_col: Option<&str>) -> Result<Setup> {
    if args.batch_size == 0 {
        return Err(usage("--batch-size must be positive"));
    }
    let tracked = Regex::new(&args.modules)
        .map_err(|e| usage(format!("--modules {:?}: {e}", args.modules)))?;
    let projection = args
        .project
        .as_deref()
        .map(|spec| {
            spec.parse::<Projection>().map(|p| Projection {
                seed: context.seed,
                ..p
            })
        })
        .transpose()
        .map_err(usage)?;
    let shard = crate::commands::shard(args.shard.as_deref())?;
    let fisher = match args.fisher {
        FisherArg::Empirical => Fisher::Empirical,
        FisherArg::Sampled => Fisher::Sampled { seed: context.seed },
    };
    let device = crate::commands::device(&args.device)?;
    let dtype = DType::from(args.dtype);
    let model_dir = Path::new(args.model.as_deref().expect("clap requires --model"));
    let lm = LanguageModel::load(
        model_dir,
        &LoadOptions {
            allow_partial: args.allow_partial,
            seed: context.seed,
            ..LoadOptions::inference(&device, dtype)
        },
    )?;
    let (model_digest, model_inputs) = model_digest(model_dir)?;
    let chat = lm.chat_template(&crate::commands::template_choice(&args.text.chat)?)?;
    let options = ReadOptions {
        answer_col,
        ..read_options(args.id_col.as_deref(), &args.text, chat.as_ref())
    };
    let train = examples::read(
        args.train.as_deref().expect("clap requires --train"),
        &lm,
        &options,
    )?;
    Ok(Setup {
        lm,
        model_digest,
        model_inputs,
        tracked,
        projection,
        fisher,
        shard,
        batch_size: args.batch_size,
        cache_bytes: args.cache_mib << 20,
        chat,
        train,
    })
}

/// How `--id-col` and the text flags read training and query rows.
fn read_options<'a>(
    id_col: Option<&'a str>,
    text: &'a TextArgs,
    chat: Option<&'a ChatTemplate>,
) -> ReadOptions<'a> {
    ReadOptions {
        id: ColumnRole::new(id_col.unwrap_or("id"), "--id-col"),
        id_explicit: id_col.is_some(),
        text: crate::commands::text_columns(text),
        chat,
        system: text.chat.system.as_deref(),
        max_length: text.max_length,
        answer_col: None,
        correct: None,
        hints: crate::commands::ENCODE_HINTS,
    }
}

/// sha256 over the model's files (config and weights, or the GGUF file), and each file's
/// digest for provenance.
fn model_digest(path: &Path) -> Result<(String, Vec<InputDigest>)> {
    let files = model::model_files(path)?;
    let mut hash = Sha256::new();
    let mut digests = Vec::new();
    for file in files {
        let digest = InputDigest::of_file(file.display().to_string(), &file)?;
        hash.update(digest.sha256.as_bytes());
        digests.push(digest);
    }
    Ok((format!("{:x}", hash.finalize()), digests))
}

fn fisher_name(fisher: Fisher) -> String {
    match fisher {
        Fisher::Empirical => "empirical".to_string(),
        Fisher::Sampled { seed } => format!("sampled:{seed}"),
    }
}

/// Progress per pass: a bar on stderr (TTY only) and a Ctrl-C check after every batch.
fn pass<'a>(
    printer: &Printer,
    label: &str,
    total: usize,
    bar_slot: &'a mut Option<indicatif::ProgressBar>,
) -> impl FnMut(usize) -> Result<()> + 'a {
    let bar = printer.progress_bar(total as u64, label);
    *bar_slot = Some(bar.clone());
    move |n| {
        bar.inc(n as u64);
        interrupt::check()?;
        Ok(())
    }
}

/// Fit what `preconditioner` needs on `rows`: complete factors, or with sharding the partial
/// sums of one stage.
fn fit(
    setup: &Setup,
    preconditioner: Preconditioner,
    covariance: Option<&FactorSet>,
    context: &Context,
) -> Result<FactorSet> {
    let source = LmSource {
        model: &setup.lm,
        sequences: &setup.train.sequences,
        tracked: &setup.tracked,
    };
    let rows = setup.shard.rows(setup.train.len());
    let passes = if covariance.is_none() && preconditioner.two_passes() && setup.shard.count == 1 {
        2
    } else {
        1
    };
    let mut bar = None;
    let factors = {
        let mut on_batch = pass(&context.printer, "factors", passes * rows.len(), &mut bar);
        let mut options = PassOptions {
            batch_size: setup.batch_size,
            projection: setup.projection,
            cache_bytes: setup.cache_bytes,
            on_batch: &mut on_batch,
        };
        if let Some(covariance) = covariance {
            influence::fit_lambdas(
                &source,
                rows,
                setup.fisher,
                preconditioner,
                Some(covariance),
                &mut options,
            )?
        } else if preconditioner.two_passes() && setup.shard.count > 1 {
            influence::fit_covariances(&source, rows, setup.fisher, preconditioner, &mut options)?
        } else {
            influence::fit_factors(&source, rows, setup.fisher, preconditioner, &mut options)?
        }
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(factors)
}

fn meta_for(setup: &Setup, factors: &FactorSet, covariance: Option<String>) -> FactorMeta {
    FactorMeta {
        preconditioner: factors.preconditioner.name().to_string(),
        stage: factors.stage.name().to_string(),
        fisher: fisher_name(setup.fisher),
        projection: setup.projection.map(|p| p.to_string()),
        modules: factors
            .modules
            .iter()
            .map(|m| (m.name.clone(), m.in_dim, m.out_dim))
            .collect(),
        model: setup.model_digest.clone(),
        train: setup.train.digest.sha256.clone(),
        shard: (setup.shard.count > 1).then(|| setup.shard.to_string()),
        covariance,
    }
}

fn provenance_of(
    setup: &Setup,
    context: &Context,
    extra: Option<&Examples>,
) -> curate::table::Provenance {
    let mut provenance = context.provenance();
    for digest in &setup.model_inputs {
        provenance.add_input(digest.clone());
    }
    provenance.add_input(setup.train.digest.clone());
    if let Some(extra) = extra {
        provenance.add_input(extra.digest.clone());
    }
    provenance
}

fn fit_factors(args: FitFactorsArgs, context: &Context) -> Result<ExitStatus> {
    let preconditioner = preconditioner(args.precond);
    if preconditioner == Preconditioner::Identity {
        return Err(usage("--precond identity needs no factors"));
    }
    let out = Path::new(&args.out);
    crate::commands::refuse_existing(out, args.force)?;
    let setup = setup(&args.gradients, context, None)?;
    let covariance = match &args.covariance {
        None => None,
        Some(dir) => {
            if preconditioner != Preconditioner::Ekfac {
                return Err(usage(
                    "--covariance is EK-FAC's second pass; use it with --precond ekfac",
                ));
            }
            let (set, meta) = factors_dir::load(Path::new(dir))?;
            check_compatible(dir, &meta, &setup, preconditioner)?;
            if meta.shard.is_some() || set.modules.iter().any(|m| m.activation_sum.is_none()) {
                return Err(usage(format!(
                    "{dir}: --covariance needs the merged covariances of all shards (merge-factors), not {}",
                    meta.shard
                        .map_or("a set without covariances".to_string(), |s| format!(
                            "shard {s}"
                        ))
                )));
            }
            Some(set)
        }
    };
    let started = Instant::now();
    let factors = fit(&setup, preconditioner, covariance.as_ref(), context)?;
    let covariance_digest = covariance.as_ref().map(store::covariance_digest);
    let meta = meta_for(&setup, &factors, covariance_digest);
    let provenance = provenance_of(&setup, context, None);
    factors_dir::save(out, &factors, &meta, &provenance.key_values(), args.force)?;
    writeln!(
        context.printer.stderr(),
        "fitted {} factors ({}{}) on {} examples in {:.1}s; wrote {}",
        preconditioner.name(),
        factors.stage.name(),
        meta.shard
            .as_ref()
            .map_or(String::new(), |s| format!(", shard {s}")),
        setup.shard.rows(setup.train.len()).len(),
        started.elapsed().as_secs_f64(),
        out.display()
    )?;
    Ok(ExitStatus::Success)
}

/// Factors fitted elsewhere must be for this model, labels and projection.
fn check_compatible(
    dir: &str,
    meta: &FactorMeta,
    setup: &Setup,
    preconditioner: Preconditioner,
) -> Result<()> {
    let projection = setup.projection.map(|p| p.to_string());
    let fisher = fisher_name(setup.fisher);
    let run = RunFit {
        preconditioner: preconditioner.name(),
        model: &setup.model_digest,
        projection: projection.as_deref(),
        fisher: &fisher,
    };
    match meta.mismatch(&run) {
        Some(mismatch) => {
            Err(InputError::new(format!("{dir}/{FACTORS_FILE}"), mismatch.to_string()).into())
        }
        None => Ok(()),
    }
}

fn merge_factors(args: MergeFactorsArgs, context: &Context) -> Result<ExitStatus> {
    let out = Path::new(&args.out);
    crate::commands::refuse_existing(out, args.force)?;
    let mut loaded = Vec::new();
    for dir in &args.inputs {
        let (set, meta) = factors_dir::load(Path::new(dir))?;
        loaded.push(StoredFactors {
            name: dir.as_str(),
            set,
            meta,
        });
    }
    let (merged, meta) = store::merge(&loaded).map_err(|e| usage(e.to_string()))?;
    let mut provenance = context.provenance();
    for part in &loaded {
        let path = Path::new(part.name).join(FACTORS_FILE);
        provenance.add_input(InputDigest::of_file(path.display().to_string(), &path)?);
    }
    factors_dir::save(out, &merged, &meta, &provenance.key_values(), args.force)?;
    writeln!(
        context.printer.stderr(),
        "merged {} factor sets ({}); wrote {}",
        loaded.len(),
        merged.stage.name(),
        out.display()
    )?;
    Ok(ExitStatus::Success)
}

fn score(args: InfluenceArgs, context: &Context) -> Result<ExitStatus> {
    let damping: Damping = args.damping.parse().map_err(usage)?;
    let segmenter: Segmenter = args.segmenter.parse().map_err(usage)?;
    let aggregate = match args.query_agg {
        QueryAggArg::None => QueryAggregate::None,
        QueryAggArg::Mean => QueryAggregate::Mean,
        QueryAggArg::Sum => QueryAggregate::Sum,
    };
    let out = args.out.clone().expect("clap requires --out");
    let granularity = args.granularity;
    let outputs = outputs::Outputs::create(&out, &args)?;
    if args.gradients.shard.is_some()
        && args.factors.is_none()
        && args.precond != Some(PrecondArg::Identity)
    {
        return Err(usage(
            "--shard scores one part of the training rows against factors of all of them: fit them first (fit-factors, merge-factors) and pass --factors",
        ));
    }
    let segmenting = granularity != GranularityArg::Example;
    let setup = setup(
        &args.gradients,
        context,
        segmenting.then_some(args.answer_col.as_str()),
    )?;
    if matches!(segmenter, Segmenter::Answer) && segmenting && setup.train.answers.is_none() {
        return Err(usage(format!(
            "{}: --segmenter answer needs the reference answer column '{}' (name it with --answer-col)",
            setup.train.file, args.answer_col
        )));
    }
    let query_options = ReadOptions {
        correct: Some(ColumnRole::new(&args.correct_col, "--correct-col")),
        ..read_options(
            args.gradients.id_col.as_deref(),
            &args.gradients.text,
            setup.chat.as_ref(),
        )
    };
    let query = examples::read(
        args.query.as_deref().expect("clap requires --query"),
        &setup.lm,
        &query_options,
    )?;
    let mut err = context.printer.stderr();
    for examples in [&setup.train, &query] {
        if examples.truncated > 0 {
            writeln!(
                err,
                "{}: cut {} of {} rows to --max-length",
                examples.file,
                examples.truncated,
                examples.len()
            )?;
        }
    }
    // The queries scored against: every row, or those marked correct (checked before any
    // factor is fitted).
    let query_rows: Vec<usize> = match &query.correct {
        Some(flags) => (0..query.len()).filter(|&i| flags[i]).collect(),
        None => (0..query.len()).collect(),
    };
    if query_rows.is_empty() {
        return Err(curate::error::InputError::new(
            query.file.as_str(),
            format!("no query row is marked correct in '{}'", args.correct_col),
        )
        .column(args.correct_col.as_str())
        .into());
    }
    if query.correct.is_some() {
        writeln!(
            err,
            "{}: {} of {} queries marked correct in '{}'{}",
            query.file,
            query_rows.len(),
            query.len(),
            args.correct_col,
            if query.correct_unknown > 0 {
                format!(
                    " ({} without a verdict are left out)",
                    query.correct_unknown
                )
            } else {
                String::new()
            }
        )?;
    }
    let started = Instant::now();

    // Factors: reused, or fitted on every training row (then there is no shard).
    let factors = match &args.factors {
        Some(dir) => {
            let (set, meta) = factors_dir::load(Path::new(dir))?;
            let wanted = args
                .precond
                .map(preconditioner)
                .unwrap_or(set.preconditioner);
            check_compatible(dir, &meta, &setup, wanted)?;
            if set.stage != Stage::Complete || meta.shard.is_some() {
                return Err(usage(format!(
                    "{dir}: holds {} factors{}; finish them with fit-factors/merge-factors first",
                    meta.stage,
                    meta.shard
                        .map_or(String::new(), |s| format!(" of shard {s}"))
                )));
            }
            set
        }
        None => {
            let wanted = args
                .precond
                .map(preconditioner)
                .unwrap_or(Preconditioner::Ekfac);
            let set = if wanted == Preconditioner::Identity {
                FactorSet::new(wanted, Stage::Complete)
            } else {
                fit(&setup, wanted, None, context)?
            };
            if let Some(dir) = &args.save_factors {
                let meta = meta_for(&setup, &set, None);
                let provenance = provenance_of(&setup, context, None);
                factors_dir::save(
                    Path::new(dir),
                    &set,
                    &meta,
                    &provenance.key_values(),
                    args.force,
                )?;
            }
            set
        }
    };
    let fitted = started.elapsed().as_secs_f64();

    // Query gradients, preconditioned once.
    let kept: Vec<curate::model::Sequence> = query_rows
        .iter()
        .map(|&i| query.sequences[i].clone())
        .collect();
    let query_source = LmSource {
        model: &setup.lm,
        sequences: &kept,
        tracked: &setup.tracked,
    };
    let mut bar = None;
    let queries = {
        let mut on_batch = pass(&context.printer, "queries", kept.len(), &mut bar);
        let mut options = PassOptions {
            batch_size: setup.batch_size,
            projection: setup.projection,
            cache_bytes: 0,
            on_batch: &mut on_batch,
        };
        influence::query_gradients(
            &query_source,
            0..kept.len(),
            &factors,
            damping,
            aggregate,
            &mut options,
        )?
    };
    if let Some(bar) = bar.take() {
        bar.finish_and_clear();
    }

    // Training rows of this shard against every query.
    let rows = setup.shard.rows(setup.train.len());
    let train_source = LmSource {
        model: &setup.lm,
        sequences: &setup.train.sequences,
        tracked: &setup.tracked,
    };
    let mut collected = report::Collected::new(
        queries.count,
        queries.names.clone(),
        rows.clone(),
        granularity != GranularityArg::Example,
    );
    {
        let mut on_batch = pass(&context.printer, "scores", rows.len(), &mut bar);
        let mut options = PassOptions {
            batch_size: setup.batch_size,
            projection: setup.projection,
            cache_bytes: 0,
            on_batch: &mut on_batch,
        };
        influence::score(
            &train_source,
            rows.clone(),
            &queries,
            granularity != GranularityArg::Example,
            &mut options,
            |batch| {
                collected.add(batch);
                Ok(())
            },
        )?;
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let scored = started.elapsed().as_secs_f64() - fitted;

    let query_labels = report::QueryLabels::new(&query, &query_rows, aggregate)?;
    let provenance = provenance_of(&setup, context, Some(&query));
    let written = outputs.write(
        &collected,
        &report::Tables {
            train: &setup.train,
            query: &query_labels,
            tokenizer: setup.lm.tokenizer.as_ref(),
            segmenter: &segmenter,
            per_module: args.per_module,
            ranked: setup.shard.count == 1,
        },
        &provenance,
    )?;
    writeln!(
        err,
        "scored {} training examples against {} (precond {}, {} modules): factors {:.1}s, scores {:.1}s; wrote {}",
        rows.len(),
        match aggregate {
            QueryAggregate::None => format!("{} queries", queries.count),
            QueryAggregate::Mean => format!("the mean of {} queries", kept.len()),
            QueryAggregate::Sum => format!("the sum of {} queries", kept.len()),
        },
        factors.preconditioner.name(),
        queries.names.len(),
        fitted,
        scored,
        written.join(", ")
    )?;
    if let Some(k) = args.top {
        outputs::print_top(&context.printer, &collected, &setup.train, k)?;
    }
    Ok(ExitStatus::Success)
}
