//! `curate influence`: score training examples (and their segments and tokens) by their
//! influence on query examples; `fit-factors` and `merge-factors` for sharded factor fitting.

mod checkpoint;
mod index;
mod merge_scores;
mod outputs;
mod validate;

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use burn::tensor::DType;
use regex::Regex;

use super::Context;
use crate::ExitStatus;
use crate::cli::{
    CacheSize, FisherArg, FitFactorsArgs, GradientArgs, GranularityArg, InfluenceAction,
    InfluenceArgs, MergeFactorsArgs, ModelArgs, PrecondArg, QueryAggArg, TextArgs,
};
use crate::printer::Printer;
use curate::error::{InputError, usage};
use curate::influence::checkpoint::RunCheckpoint;
use curate::influence::examples::{self, Examples, ReadOptions};
use curate::influence::report;
use curate::influence::run::{GradientRun, OnBatch, fitted_in, model_digest, sequences_digest};
use curate::influence::segment::Segmenter;
use curate::influence::store::{self, FACTORS_FILE, FactorMeta, StoredFactors};
use curate::influence::{
    Advance, FactorSet, Fisher, Preconditioner, Projection, QueryAggregate, Stage,
};
use curate::interrupt;
use curate::model::budget::{Footprint, PassKind, bytes};
use curate::model::{ChatTemplate, LanguageModel, LoadOptions, Sequence};
use curate::table::{ColumnRole, Format, InputDigest, Shard};

pub fn run(args: Box<InfluenceArgs>, context: &Context) -> Result<ExitStatus> {
    let args = *args;
    match args.action {
        Some(InfluenceAction::FitFactors(fit)) => fit_factors(*fit, context),
        Some(InfluenceAction::MergeFactors(merge)) => merge_factors(merge, context),
        Some(InfluenceAction::MergeScores(merge)) => merge_scores::run(merge, context),
        Some(InfluenceAction::Validate(validate)) => validate::run(*validate, context),
        Some(InfluenceAction::Index(build)) => index::build(*build, context),
        Some(InfluenceAction::Query(query)) => index::query(*query, context),
        None => score(args, context),
    }
}

fn preconditioner(arg: PrecondArg) -> Preconditioner {
    match arg {
        PrecondArg::Identity => Preconditioner::Identity,
        PrecondArg::Diagonal => Preconditioner::Diagonal,
        PrecondArg::Kfac => Preconditioner::Kfac,
        PrecondArg::Ekfac => Preconditioner::Ekfac,
    }
}

/// A model loaded by the model flags, with what provenance and row reading need.
struct LoadedModel {
    lm: LanguageModel,
    /// sha256 over the model's files, and each file's digest.
    digest: String,
    inputs: Vec<InputDigest>,
    chat: Option<ChatTemplate>,
}

fn load_model(args: &ModelArgs, context: &Context) -> Result<LoadedModel> {
    let device = crate::commands::device(&args.device)?;
    let model_dir = Path::new(args.model.as_deref().expect("clap requires --model"));
    let lm = LanguageModel::load(
        model_dir,
        &LoadOptions {
            allow_partial: args.allow_partial,
            seed: context.seed,
            ..LoadOptions::inference(&device, DType::from(args.dtype))
        },
    )?;
    let (digest, inputs) = model_digest(model_dir)?;
    let chat = lm.chat_template(&crate::commands::template_choice(&args.text.chat)?)?;
    Ok(LoadedModel {
        lm,
        digest,
        inputs,
        chat,
    })
}

/// A gradient run of `model` over `train`: the batch size (`--batch-size`, or the largest the
/// memory budget holds for `(rows, longest)`, the rows the run will pass and the longest of
/// them) and how many batches go side by side.
#[allow(clippy::too_many_arguments)]
fn gradient_run(
    model: LoadedModel,
    args: &ModelArgs,
    tracked: Regex,
    projection: Option<Projection>,
    fisher: Fisher,
    shard: Shard,
    cache: CacheSize,
    train: Examples,
    (rows, longest): (usize, usize),
    context: &Context,
) -> Result<GradientRun> {
    // A capped cache is planned for like any other fixed memory; `auto` takes what the
    // batches leave.
    let capped = match cache {
        CacheSize::Mib(mib) => mib << 20,
        CacheSize::Auto => 0,
    };
    let footprint = footprint(&model.lm, &tracked, capped, &train.sequences);
    let plan = crate::commands::plan_batches(
        &footprint,
        rows,
        longest,
        args.batch_size,
        args.memory_budget,
        &context.printer,
    )?;
    let batch_size = plan.size;
    // As many batches side by side as there are threads and the budget holds.
    let in_flight = footprint.most_in_flight(
        batch_size,
        longest,
        curate::model::batches_in_flight(usize::MAX),
        plan.budget.unwrap_or(u128::MAX),
    );
    let mut run = GradientRun {
        lm: model.lm,
        model_digest: model.digest,
        model_inputs: model.inputs,
        tracked,
        projection,
        fisher,
        shard,
        max_length: args.text.max_length,
        batch_size,
        in_flight,
        cache_bytes: capped,
        chat: model.chat,
        train,
    };
    if cache == CacheSize::Auto {
        let needed = stack_cache_bytes(&run);
        let batches = footprint.in_flight(in_flight).bytes(batch_size, longest);
        run.cache_bytes = match plan.budget {
            Some(limit) if batches.saturating_add(needed as u128) <= limit => needed,
            // Keeping only part of the stacks saves nothing: the second pass reruns the
            // model as soon as they outgrow the cache.
            Some(_) => 0,
            None => DEFAULT_CACHE_BYTES,
        };
    }
    Ok(run)
}

/// The stack cache when no memory budget is known.
const DEFAULT_CACHE_BYTES: usize = 1 << 30;

/// What EK-FAC's first pass would keep of the run's rows: per token, each tracked layer's
/// input and output gradient (projected when asked), as f32 unless the model computes in f64.
fn stack_cache_bytes(run: &GradientRun) -> usize {
    let value = if run.lm.model.dtype() == DType::F64 {
        8
    } else {
        4
    };
    let per_token: usize = run
        .lm
        .model
        .linears()
        .into_iter()
        .filter(|linear| run.tracked.is_match(&linear.name))
        .map(|linear| {
            let [outputs, inputs] = linear.weight.dims();
            let inputs = inputs + usize::from(linear.bias.is_some());
            match run.projection {
                Some(p) => p.in_rank.min(inputs) + p.out_rank.min(outputs),
                None => inputs + outputs,
            }
        })
        .sum();
    let tokens: usize = run
        .rows()
        .map(|i| run.train.sequences[i].input_ids.len())
        .sum();
    let stacks = per_token * value * tokens;
    // Room for the per-example bookkeeping.
    stacks + stacks / 64 + (1 << 20)
}

/// The gradient flags as a run on `shard`: the model loaded, the training rows read and
/// encoded.
fn setup(
    args: &GradientArgs,
    context: &Context,
    answer_col: Option<&str>,
    shard: Shard,
) -> Result<GradientRun> {
    let tracked = Regex::new(&args.modules)
        .map_err(|e| usage(format!("--modules {:?}: {e}", args.modules)))?;
    let projection = args.project.map(|p| Projection {
        seed: context.seed,
        ..p
    });
    let fisher = match args.fisher {
        FisherArg::Empirical => Fisher::Empirical,
        FisherArg::Sampled => Fisher::Sampled { seed: context.seed },
    };
    let model = load_model(&args.lm, context)?;
    let options = ReadOptions {
        answer_col,
        ..read_options(
            args.lm.id_col.as_deref(),
            &args.lm.text,
            model.chat.as_ref(),
        )
    };
    let train = examples::read(
        args.train.as_deref().expect("clap requires --train"),
        &model.lm,
        &options,
    )?;
    let sizing = (
        train.sequences.len(),
        crate::commands::longest(&train.sequences),
    );
    gradient_run(
        model,
        &args.lm,
        tracked,
        projection,
        fisher,
        shard,
        args.cache_mib,
        train,
        sizing,
        context,
    )
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

/// What a gradient run holds in memory: the model's backward pass, the inputs and output
/// gradients of the tracked layers for every token, and the factors with EK-FAC's cache.
fn footprint(
    lm: &LanguageModel,
    tracked: &Regex,
    cache_bytes: usize,
    sequences: &[Sequence],
) -> Footprint {
    let value = lm.model.dtype().size() as u128;
    let (mut per_token, mut factors) = (0u128, 0u128);
    for linear in lm.model.linears() {
        if tracked.is_match(&linear.name) {
            let [outputs, inputs] = linear.weight.dims().map(|d| d as u128 + 1);
            per_token += (inputs + outputs) * value;
            // Covariances and eigenvectors of both sides, and eigenvalues, in f64.
            factors += (2 * (inputs * inputs + outputs * outputs) + inputs * outputs) * 8;
        }
    }
    Footprint::new(&lm.config, value as usize, PassKind::Gradient)
        .fused_kernels(lm.runs_fused_kernels())
        .labelled(crate::commands::most_labelled(sequences))
        .plus_per_token(per_token)
        .plus_fixed(factors + cache_bytes as u128)
}

/// The estimated peak memory of the run's batches.
fn estimated_peak(run: &GradientRun) -> u128 {
    footprint(&run.lm, &run.tracked, 0, &run.train.sequences)
        .in_flight(run.in_flight)
        .bytes(
            run.batch_size.min(run.train.sequences.len()),
            crate::commands::longest(&run.train.sequences),
        )
}

/// How big a pass is, for its progress: rows and model work (padded tokens), each as (done
/// before this run, total).
#[derive(Debug, Clone, Copy)]
struct PassSize {
    rows: (usize, usize),
    work: (u64, u64),
}

impl PassSize {
    fn new(rows: usize, work: u64) -> Self {
        PassSize {
            rows: (0, rows),
            work: (0, work),
        }
    }

    /// Resumed with `done` rows done before; their work is taken as the same share.
    fn resumed(self, done: usize) -> Self {
        let (_, rows) = self.rows;
        let (_, work) = self.work;
        let share = done as f64 / rows.max(1) as f64;
        PassSize {
            rows: (done, rows),
            work: ((work as f64 * share) as u64, work),
        }
    }
}

/// Run one pass with progress on stderr (a bar on a terminal, plain lines in a log, the
/// estimate line after the first batch, from the work done rather than the rows, since rows
/// run shortest first) and a Ctrl-C check after every batch.
fn with_progress<T>(
    printer: &Printer,
    label: &str,
    size: PassSize,
    estimated_peak: u128,
    pass: impl FnOnce(OnBatch) -> Result<T>,
) -> Result<T> {
    let mut bar = printer
        .model_progress(size.rows.1, "rows", label, Some(estimated_peak))
        .resumed_at(size.rows.0)
        .with_work(size.work.1, size.work.0);
    let mut on_batch = |advance: Advance| {
        bar.advance(advance.rows, advance.work);
        interrupt::check()?;
        Ok(())
    };
    let result = pass(&mut on_batch)?;
    bar.finish_and_clear();
    Ok(result)
}

/// Fit what `preconditioner` needs on the run's rows, with a progress bar, saving progress
/// to `checkpoint` and continuing what it holds.
fn fit(
    run: &GradientRun,
    preconditioner: Preconditioner,
    covariance: Option<&FactorSet>,
    checkpoint: Option<&mut RunCheckpoint>,
    context: &Context,
) -> Result<FactorSet> {
    let total = run.fit_passes(preconditioner, covariance.is_some());
    let peak = estimated_peak(run) + run.cache_bytes as u128;
    // Two passes over the rows: the covariances, then the eigenvalues.
    let both_passes = total > run.rows().len();
    let needed = if both_passes {
        stack_cache_bytes(run)
    } else {
        0
    };
    if run.cache_bytes < needed {
        writeln!(
            context.printer.stderr(),
            "factors: EK-FAC's second pass runs the model again: keeping the first pass's stacks needs {}, more than {} (--cache-mib, --memory-budget)",
            bytes(needed as u128),
            if run.cache_bytes == 0 {
                "the memory left".to_string()
            } else {
                bytes(run.cache_bytes as u128)
            }
        )?;
    }
    let done = checkpoint
        .as_deref()
        .map_or(0, |c| c.rows_done("covariances") + c.rows_done("lambdas"));
    // A second pass over kept stacks runs no model.
    let model_passes = if both_passes && run.cache_bytes < needed {
        2
    } else {
        1
    };
    let size = PassSize::new(total, model_passes * run.pass_work()).resumed(done);
    with_progress(&context.printer, "factors", size, peak, |on_batch| {
        run.fit(preconditioner, covariance, on_batch, checkpoint)
    })
}

fn provenance_of(
    run: &GradientRun,
    context: &Context,
    extra: Option<&Examples>,
) -> curate::table::Provenance {
    let mut provenance = context.provenance();
    run.add_inputs(&mut provenance, extra);
    provenance
}

/// Factors fitted elsewhere must be for this model, labels and projection.
fn check_compatible(
    dir: &str,
    meta: &FactorMeta,
    run: &GradientRun,
    preconditioner: Preconditioner,
) -> Result<()> {
    match run.mismatch(meta, preconditioner) {
        Some(mismatch) => Err(InputError::new(format!("{dir}/{FACTORS_FILE}"), mismatch).into()),
        None => Ok(()),
    }
}

fn fit_factors(args: FitFactorsArgs, context: &Context) -> Result<ExitStatus> {
    let preconditioner = preconditioner(args.precond);
    if preconditioner == Preconditioner::Identity {
        return Err(usage("--precond identity needs no factors"));
    }
    let out = Path::new(&args.out);
    let shard = crate::commands::shard(args.gradients.shard.as_deref(), &context.printer)?;
    let done_before = args.gradients.skip_done && !args.force && out.exists();
    if !done_before {
        crate::commands::refuse_existing(out, args.force)?;
    }
    let mut setup = setup(&args.gradients, context, None, shard)?;
    let covariance = match &args.covariance {
        None => None,
        Some(dir) => {
            if preconditioner != Preconditioner::Ekfac {
                return Err(usage(
                    "--covariance is EK-FAC's second pass; use it with --precond ekfac",
                ));
            }
            let (set, meta) = store::load_dir(Path::new(dir))?;
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
    let covariance_digest = covariance.as_ref().map(store::covariance_digest);
    if done_before {
        let stage = setup.fit_stage(preconditioner, covariance.is_some());
        let stored = store::load_dir(out).ok().map(|(_, meta)| meta);
        return match stored {
            Some(meta) if setup.fitted_as(&meta, stage, covariance_digest.as_deref()) => {
                writeln!(
                    context.printer.stderr(),
                    "shard {} is done: {} holds its {} factors (--skip-done)",
                    setup.shard,
                    out.display(),
                    stage.name()
                )?;
                Ok(ExitStatus::Success)
            }
            _ => Err(usage(format!(
                "{}: exists but is not shard {}'s {} factors of this fit (--skip-done keeps only a finished shard); --force replaces it",
                out.display(),
                setup.shard,
                stage.name()
            ))),
        };
    }
    let fingerprint = curate::table::settings_digest([
        ("command", "fit-factors".to_string()),
        ("fit", fit_digest(&setup, preconditioner)),
        ("covariance", format!("{covariance_digest:?}")),
    ]);
    let mut checkpoint = checkpoint::open(
        &args.gradients,
        &args.out,
        fingerprint,
        &mut setup,
        args.force,
        &context.printer,
    )?;
    let started = Instant::now();
    let fitted = fit(
        &setup,
        preconditioner,
        covariance.as_ref(),
        checkpoint.as_mut(),
        context,
    );
    let factors = checkpoint::on_stop(fitted, checkpoint.as_ref(), &context.printer)?;
    let meta = setup.meta(&factors, covariance_digest);
    let provenance = provenance_of(&setup, context, None);
    store::save_dir(out, &factors, &meta, &provenance.key_values(), args.force)?;
    if let Some(checkpoint) = &checkpoint {
        checkpoint.remove()?;
    }
    writeln!(
        context.printer.stderr(),
        "fitted {} factors ({}{}) on {} examples in {:.1}s; wrote {}",
        preconditioner.name(),
        factors.stage.name(),
        meta.shard
            .as_ref()
            .map_or(String::new(), |s| format!(", shard {s}")),
        setup.rows().len(),
        started.elapsed().as_secs_f64(),
        out.display()
    )?;
    Ok(ExitStatus::Success)
}

/// A digest of everything a fit's sums depend on besides the batch size (kept with the
/// checkpoint): model, rows as tokens, labels, modules, projection, shard, preconditioner.
fn fit_digest(run: &GradientRun, preconditioner: Preconditioner) -> String {
    curate::table::settings_digest([
        ("model", run.model_digest.clone()),
        ("train", run.train.digest.sha256.clone()),
        ("train tokens", sequences_digest(&run.train.sequences)),
        ("modules", run.tracked.as_str().to_string()),
        ("projection", format!("{:?}", run.projection)),
        ("fisher", format!("{:?}", run.fisher)),
        ("max length", format!("{:?}", run.max_length)),
        ("shard", run.shard.to_string()),
        ("precond", preconditioner.name().to_string()),
    ])
}

fn merge_factors(args: MergeFactorsArgs, context: &Context) -> Result<ExitStatus> {
    let out = Path::new(&args.out);
    crate::commands::refuse_existing(out, args.force)?;
    let mut loaded = Vec::new();
    for dir in &args.inputs {
        let (set, meta) = store::load_dir(Path::new(dir))?;
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
    store::save_dir(out, &merged, &meta, &provenance.key_values(), args.force)?;
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
    let aggregate = match args.query_agg {
        QueryAggArg::None => QueryAggregate::None,
        QueryAggArg::Mean => QueryAggregate::Mean,
        QueryAggArg::Sum => QueryAggregate::Sum,
    };
    let out = args.out.clone().expect("clap requires --out");
    let shard = crate::commands::shard(args.gradients.shard.as_deref(), &context.printer)?;
    if shard.count > 1 && args.factors.is_none() && args.precond != Some(PrecondArg::Identity) {
        return Err(usage(
            "--shard scores one part of the training rows against factors of all of them: fit them first (fit-factors, merge-factors) and pass --factors",
        ));
    }
    let paths = outputs::paths(&out, &args)?;
    if shard.count > 1 {
        for (flag, path) in &paths {
            let format = Format::from_path(Path::new(path));
            if !matches!(format, Some(Format::Parquet | Format::Ipc)) {
                return Err(usage(format!(
                    "{flag} {path}: a --shard output records which shard of which run it holds, for merge-scores and --skip-done; write it as .parquet or .arrow"
                )));
            }
        }
    }
    let done_before = args.gradients.skip_done
        && !args.force
        && paths.iter().any(|(_, path)| Path::new(path).exists());
    let outputs = match done_before {
        true => None,
        false => Some(outputs::Outputs::create(&out, &args, &paths)?),
    };
    let segmenting = args.granularity != GranularityArg::Example;
    let mut setup = setup(
        &args.gradients,
        context,
        segmenting.then_some(args.answer_col.as_str()),
        shard,
    )?;
    if matches!(args.segmenter, Segmenter::Answer) && segmenting && setup.train.answers.is_none() {
        return Err(usage(format!(
            "{}: --segmenter answer needs the reference answer column '{}' (name it with --answer-col)",
            setup.train.file, args.answer_col
        )));
    }
    let (query, query_rows) = read_queries(
        args.query.as_deref().expect("clap requires --query"),
        &args.correct_col,
        &args.gradients.lm,
        (&setup.lm, setup.chat.as_ref()),
        &setup.train,
        context,
    )?;
    let kept: Vec<Sequence> = query_rows
        .iter()
        .map(|&i| query.sequences[i].clone())
        .collect();
    let run_digest = score_run_digest(&args, &setup, &query, &kept, aggregate, context)?;
    let mut provenance = provenance_of(&setup, context, Some(&query));
    provenance.shard = setup.shard_record(run_digest.clone());
    let Some(outputs) = outputs else {
        return skip_done_scores(&paths, &provenance, &setup, context);
    };
    let fingerprint = curate::table::settings_digest([
        ("command", "influence".to_string()),
        ("run", run_digest),
        ("shard", setup.shard.to_string()),
    ]);
    let mut checkpoint = checkpoint::open(
        &args.gradients,
        &out,
        fingerprint,
        &mut setup,
        args.force,
        &context.printer,
    )?;

    let started = Instant::now();
    let (factors, fitted_now) = score_factors(&args, &setup, checkpoint.as_mut(), context)?;
    let fitted = started.elapsed().as_secs_f64();
    // Query gradients, preconditioned once; then this shard's training rows against them.
    let peak = estimated_peak(&setup);
    let size = PassSize::new(kept.len(), setup.query_work(&kept));
    let queries = with_progress(&context.printer, "queries", size, peak, |on_batch| {
        setup.query_gradients(&kept, &factors, args.damping, aggregate, on_batch)
    })?;
    let rows = setup.rows().len();
    let done = checkpoint.as_ref().map_or(0, |c| c.rows_done("scores"));
    let size = PassSize::new(rows, setup.pass_work()).resumed(done);
    let peak = peak.saturating_add(queries.bytes());
    let collected = with_progress(&context.printer, "scores", size, peak, |on_batch| {
        setup.score(
            &queries,
            segmenting,
            on_batch,
            checkpoint.as_mut(),
            fitted_now.then_some(&factors),
        )
    });
    let collected = checkpoint::on_stop(collected, checkpoint.as_ref(), &context.printer)?;
    let scored = started.elapsed().as_secs_f64() - fitted;

    let query_labels = report::QueryLabels::new(&query, &query_rows, aggregate)?;
    let written = outputs.write(
        &collected,
        &report::Tables {
            train: &setup.train,
            query: &query_labels,
            tokenizer: setup.lm.tokenizer.as_ref(),
            segmenter: &args.segmenter,
            per_module: args.per_module,
            ranked: setup.shard.count == 1,
        },
        &provenance,
    )?;
    if let Some(checkpoint) = &checkpoint {
        checkpoint.remove()?;
    }
    writeln!(
        context.printer.stderr(),
        "scored {rows} training examples against {} (precond {}, {} modules): factors {fitted:.1}s, scores {scored:.1}s; wrote {}",
        match aggregate {
            QueryAggregate::None => format!("{} queries", queries.count),
            QueryAggregate::Mean => format!("the mean of {} queries", kept.len()),
            QueryAggregate::Sum => format!("the sum of {} queries", kept.len()),
        },
        factors.preconditioner.name(),
        queries.names.len(),
        written.join(", ")
    )?;
    if let Some(k) = args.top {
        outputs::print_top(&context.printer, &collected, &setup.train, k, out == "-")?;
    }
    Ok(ExitStatus::Success)
}

/// A digest of everything the score shards of one run share: the model, the training and
/// query rows scored (`kept`) as tokens (text columns, chat template and --max-length included), the factors
/// and every setting that changes a score or a column.
fn score_run_digest(
    args: &InfluenceArgs,
    setup: &GradientRun,
    query: &Examples,
    kept: &[Sequence],
    aggregate: QueryAggregate,
    context: &Context,
) -> Result<String> {
    let factors = match &args.factors {
        Some(dir) => {
            let path = Path::new(dir).join(FACTORS_FILE);
            InputDigest::of_file(path.display().to_string(), &path)?.sha256
        }
        None => "none".to_string(),
    };
    Ok(curate::table::settings_digest([
        ("model", setup.model_digest.clone()),
        ("train", setup.train.digest.sha256.clone()),
        ("train tokens", sequences_digest(&setup.train.sequences)),
        ("query", query.digest.sha256.clone()),
        ("query tokens", sequences_digest(kept)),
        ("factors", factors),
        ("precond", format!("{:?}", args.precond)),
        ("damping", format!("{:?}", args.damping)),
        ("query agg", format!("{aggregate:?}")),
        ("modules", setup.tracked.as_str().to_string()),
        ("projection", format!("{:?}", setup.projection)),
        ("fisher", format!("{:?}", setup.fisher)),
        ("granularity", format!("{:?}", args.granularity)),
        ("segmenter", format!("{:?}", args.segmenter)),
        ("per module", args.per_module.to_string()),
        ("id col", format!("{:?}", args.gradients.lm.id_col)),
        ("seed", context.seed.to_string()),
    ]))
}

/// `--skip-done` found this run's outputs already there: exit 0 when every one is this shard
/// of this run, complete; refuse anything else (the user's files stay as they are).
fn skip_done_scores(
    paths: &[(&'static str, String)],
    provenance: &curate::table::Provenance,
    setup: &GradientRun,
    context: &Context,
) -> Result<ExitStatus> {
    let record = provenance
        .shard
        .as_ref()
        .expect("--skip-done requires --shard");
    for (flag, path) in paths {
        let held = curate::table::Input::open(path, None)
            .ok()
            .and_then(|input| input.provenance().ok().flatten())
            .and_then(|p| p.shard);
        if held.as_ref() != Some(record) {
            let what = match held {
                Some(other) if other.run == record.run => format!("shard {}", other.shard),
                Some(other) => format!("shard {} of another run", other.shard),
                None if Path::new(path).exists() => "no shard of this run".to_string(),
                None => "nothing".to_string(),
            };
            return Err(usage(format!(
                "{flag} {path}: holds {what}, not shard {} of this run (--skip-done keeps only a finished shard's outputs); --force replaces them",
                setup.shard
            )));
        }
    }
    writeln!(
        context.printer.stderr(),
        "shard {} is done: {} hold{} it (--skip-done)",
        setup.shard,
        paths
            .iter()
            .map(|(_, p)| p.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        if paths.len() == 1 { "s" } else { "" }
    )?;
    Ok(ExitStatus::Success)
}

/// The query table and the rows scored against: every row, or those marked correct (checked
/// before any factor is fitted).
fn read_queries(
    path: &str,
    correct_col: &str,
    args: &ModelArgs,
    (lm, chat): (&LanguageModel, Option<&ChatTemplate>),
    train: &Examples,
    context: &Context,
) -> Result<(Examples, Vec<usize>)> {
    let query_options = ReadOptions {
        correct: Some(ColumnRole::new(correct_col, "--correct-col")),
        ..read_options(args.id_col.as_deref(), &args.text, chat)
    };
    let query = examples::read(path, lm, &query_options)?;
    let mut err = context.printer.stderr();
    for examples in [train, &query] {
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
    let query_rows: Vec<usize> = match &query.correct {
        Some(flags) => (0..query.len()).filter(|&i| flags[i]).collect(),
        None => (0..query.len()).collect(),
    };
    if query_rows.is_empty() {
        return Err(InputError::new(
            query.file.as_str(),
            format!("no query row is marked correct in '{correct_col}'"),
        )
        .column(correct_col)
        .into());
    }
    if query.correct.is_some() {
        let unknown = match query.correct_unknown {
            0 => String::new(),
            n => format!(" ({n} without a verdict are left out)"),
        };
        writeln!(
            err,
            "{}: {} of {} queries marked correct in '{correct_col}'{unknown}",
            query.file,
            query_rows.len(),
            query.len(),
        )?;
    }
    Ok((query, query_rows))
}

/// Finished factors from `--factors DIR`, for this run's model, labels and projection (and
/// `precond`, when given): complete, not one shard's partial sums.
fn load_complete_factors(
    dir: &str,
    precond: Option<PrecondArg>,
    setup: &GradientRun,
) -> Result<FactorSet> {
    let (set, meta) = store::load_dir(Path::new(dir))?;
    let wanted = precond.map(preconditioner).unwrap_or(set.preconditioner);
    check_compatible(dir, &meta, setup, wanted)?;
    if set.stage != Stage::Complete || meta.shard.is_some() {
        return Err(usage(format!(
            "{dir}: holds {} factors{}; finish them with fit-factors/merge-factors first",
            meta.stage,
            meta.shard
                .map_or(String::new(), |s| format!(" of shard {s}"))
        )));
    }
    Ok(set)
}

/// The factors scores are preconditioned with: reused from `--factors`, or fitted on every
/// training row (then there is no shard; a resumed run takes them from its checkpoint) and
/// kept with `--save-factors`. True with factors fitted by this run.
fn score_factors(
    args: &InfluenceArgs,
    setup: &GradientRun,
    checkpoint: Option<&mut RunCheckpoint>,
    context: &Context,
) -> Result<(FactorSet, bool)> {
    if let Some(dir) = &args.factors {
        return Ok((load_complete_factors(dir, args.precond, setup)?, false));
    }
    let wanted = args
        .precond
        .map(preconditioner)
        .unwrap_or(Preconditioner::Ekfac);
    let (set, fitted_now) = fit_or_resume(setup, wanted, checkpoint, context)?;
    if let Some(dir) = &args.save_factors {
        let meta = setup.meta(&set, None);
        let provenance = provenance_of(setup, context, None);
        store::save_dir(
            Path::new(dir),
            &set,
            &meta,
            &provenance.key_values(),
            args.force,
        )?;
    }
    Ok((set, fitted_now))
}

/// Factors of `wanted` on every row of the run: none for identity, those a checkpoint kept,
/// or a fit (continuing the checkpoint's sums). True when this run fitted them.
fn fit_or_resume(
    setup: &GradientRun,
    wanted: Preconditioner,
    mut checkpoint: Option<&mut RunCheckpoint>,
    context: &Context,
) -> Result<(FactorSet, bool)> {
    if wanted == Preconditioner::Identity {
        return Ok((FactorSet::new(wanted, Stage::Complete), false));
    }
    if let Some(kept) = checkpoint.as_deref_mut()
        && let Some(set) = fitted_in(kept, wanted)?
    {
        return Ok((set, false));
    }
    let fitted = fit(setup, wanted, None, checkpoint.as_deref_mut(), context);
    let set = checkpoint::on_stop(fitted, checkpoint.as_deref(), &context.printer)?;
    Ok((set, true))
}
