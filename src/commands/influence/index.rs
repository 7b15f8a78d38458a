//! `curate influence index` and `curate influence query`: every training row's preconditioned
//! gradient stored once (`curate::influence::index`), then any number of query sets scored
//! against it with only their own gradients.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context as _, Result};
use regex::Regex;

use super::{
    estimated_peak, gradient_run, load_complete_factors, load_model, preconditioner, provenance_of,
    read_queries, with_progress,
};
use crate::ExitStatus;
use crate::cli::{CacheSize, IndexArgs, PrecondArg, QueryAggArg, QueryArgs, StoreDtypeArg};
use crate::commands::Context;
use curate::error::{InputError, usage};
use curate::influence::checkpoint::{GRADIENTS_FILE, PassState, RunCheckpoint};
use curate::influence::examples::Examples;
use curate::influence::index::{
    self, GradientIndex, IndexManifest, IndexWriter, ROWS_FILE, StoreDtype,
};
use curate::influence::report::{self, Collected, QueryLabels, Report, Tables};
use curate::influence::run::{GradientRun, sequences_digest};
use curate::influence::segment::Segmenter;
use curate::influence::store::{self, FACTORS_FILE};
use curate::influence::{
    Damping, Done, FactorSet, Fisher, Preconditioner, Projection, QueryAggregate, Stage, Walk,
};
use curate::model::Sequence;
use curate::table::{self, Input, InputDigest, Output, OutputDir, Shard, ShardRecord};

pub fn build(args: IndexArgs, context: &Context) -> Result<ExitStatus> {
    let out = Path::new(&args.out);
    let shard = crate::commands::shard(args.gradients.shard.as_deref(), &context.printer)?;
    let identity = args.precond == Some(PrecondArg::Identity);
    if shard.count > 1 && args.factors.is_none() && !identity {
        return Err(usage(
            "--shard indexes one part of the training rows against factors of all of them: fit them first (fit-factors, merge-factors) and pass --factors",
        ));
    }
    let done_before = args.gradients.skip_done && !args.force && out.exists();
    if !done_before {
        crate::commands::refuse_existing(out, args.force)?;
    }
    let mut setup = super::setup(&args.gradients, context, None, shard)?;
    let mut checkpoint = match done_before {
        true => None,
        false => {
            let fingerprint = table::settings_digest([
                ("command", "index".to_string()),
                ("factors", factors_source(&args, &setup)?),
                ("damping", format!("{:?}", args.damping)),
                ("dtype", format!("{:?}", args.store_dtype)),
                ("seed", context.seed.to_string()),
            ]);
            super::checkpoint::open(
                &args.gradients,
                &args.out,
                fingerprint,
                &mut setup,
                args.force,
                &context.printer,
            )?
        }
    };
    let started = Instant::now();
    let (factors, factors_digest, fitted_now) =
        index_factors(&args, &setup, checkpoint.as_mut(), context)?;
    let fitted = started.elapsed().as_secs_f64();
    let dtype = match args.store_dtype {
        StoreDtypeArg::F32 => StoreDtype::F32,
        StoreDtypeArg::F16 => StoreDtype::F16,
        StoreDtypeArg::F64 => StoreDtype::F64,
    };
    let mut manifest = IndexManifest {
        format: IndexManifest::new_format(),
        rows: setup.rows().len(),
        dim: 0,
        dtype,
        modules: Vec::new(),
        model: setup.model_digest.clone(),
        train: setup.train.digest.sha256.clone(),
        tokens: sequences_digest(&setup.train.sequences),
        preconditioner: factors.preconditioner.name().to_string(),
        factors: factors_digest,
        damping: format!("{:?}", args.damping),
        projection: setup.projection.map(|p| p.to_string()),
        seed: context.seed,
        max_length: setup.max_length,
        shard: None,
    };
    manifest.shard = setup.shard_record(build_digest(&manifest, &setup));
    if done_before {
        return skip_done(out, &manifest, &setup, context);
    }

    let staging = OutputDir::create(out, args.force)?;
    let rows = setup.rows().len();
    let mut checkpoint = checkpoint.expect("opened for a directory output");
    let (writer, modules, done) = start_index(&mut checkpoint, dtype, rows)?;
    let mut progress = IndexProgress {
        writer,
        modules,
        fitted: fitted_now.then_some(&factors),
    };
    let first = setup.rows().start;
    let mut save = |progress: &mut IndexProgress,
                    checkpoint: Option<&mut RunCheckpoint>,
                    done: Done|
     -> Result<()> {
        match checkpoint {
            Some(checkpoint) if checkpoint.due() => progress.save(checkpoint, done, rows),
            _ => Ok(()),
        }
    };
    let walk = Walk {
        skip: done.batches,
        state: &mut progress,
        cached: None,
        save: Some(&mut save),
    };
    let size = super::PassSize::new(rows, setup.pass_work()).resumed(done.rows);
    let built = with_progress(
        &context.printer,
        "index",
        size,
        estimated_peak(&setup),
        |on_batch| {
            setup.index(
                &factors,
                args.damping,
                on_batch,
                Some(&mut checkpoint),
                walk,
                |progress, names, batch, vectors| {
                    if progress.modules.is_empty() {
                        progress.modules = names.to_vec();
                    }
                    batch.iter().zip(&vectors).try_for_each(|(&row, vector)| {
                        progress.writer.write_row(row - first, vector)
                    })
                },
            )
        },
    );
    super::checkpoint::on_stop(built, Some(&checkpoint), &context.printer)?;
    let IndexProgress {
        writer, modules, ..
    } = progress;
    let (written, dim) = writer.finish()?;
    debug_assert_eq!(written, rows);
    move_file(
        &checkpoint.file(GRADIENTS_FILE)?,
        &staging.path().join(GRADIENTS_FILE),
    )?;
    manifest.dim = dim;
    manifest.modules = modules;
    let provenance = provenance_of(&setup, context, None);
    let rows_path = staging.path().join(ROWS_FILE);
    Output::create(&rows_path.display().to_string(), None, false)?
        .write_frame(&setup.train.carried_frame(setup.rows())?, Some(&provenance))?;
    index::write_manifest(staging.path(), &manifest)?;
    staging.commit()?;
    checkpoint.remove()?;
    writeln!(
        context.printer.stderr(),
        "indexed {rows} training examples{} ({} modules, {dim} values per row, {} bytes per row in {}): factors {fitted:.1}s, gradients {:.1}s; wrote {}",
        manifest
            .shard
            .as_ref()
            .map_or(String::new(), |s| format!(" (shard {})", s.shard)),
        manifest.modules.len(),
        manifest.row_bytes(),
        dtype.name(),
        started.elapsed().as_secs_f64() - fitted,
        out.display()
    )?;
    Ok(ExitStatus::Success)
}

/// The factors the index is preconditioned with, and their digest: from `--factors` (the
/// file's sha256), none for identity, or fitted here on every training row.
/// The index's factors (with what the manifest records of them, and whether this run fitted
/// them): `--factors`, none for identity, those the checkpoint kept, or a fit on every row.
fn index_factors(
    args: &IndexArgs,
    setup: &GradientRun,
    checkpoint: Option<&mut RunCheckpoint>,
    context: &Context,
) -> Result<(FactorSet, String, bool)> {
    if let Some(dir) = &args.factors {
        let set = load_complete_factors(dir, args.precond, setup)?;
        let path = Path::new(dir).join(FACTORS_FILE);
        let digest = InputDigest::of_file(path.display().to_string(), &path)?.sha256;
        return Ok((set, digest, false));
    }
    let wanted = args
        .precond
        .map(preconditioner)
        .unwrap_or(Preconditioner::Ekfac);
    if wanted == Preconditioner::Identity {
        return Ok((
            FactorSet::new(Preconditioner::Identity, Stage::Complete),
            "none".to_string(),
            false,
        ));
    }
    let (set, fitted_now) = super::fit_or_resume(setup, wanted, checkpoint, context)?;
    let digest = format!("fitted:{}", store::covariance_digest(&set));
    Ok((set, digest, fitted_now))
}

/// What the index's factors come from, before any fit: the `--factors` file's digest, or
/// everything the fit on this run's rows depends on.
fn factors_source(args: &IndexArgs, setup: &GradientRun) -> Result<String> {
    Ok(match &args.factors {
        Some(dir) => {
            let path = Path::new(dir).join(FACTORS_FILE);
            InputDigest::of_file(path.display().to_string(), &path)?.sha256
        }
        None => {
            let wanted = args
                .precond
                .map(preconditioner)
                .unwrap_or(Preconditioner::Ekfac);
            format!("fit {}", super::fit_digest(setup, wanted))
        }
    })
}

/// The index rows written so far, the tracked modules, and factors this run fitted that
/// the first save keeps (see `GradientRun::score`).
struct IndexProgress<'a> {
    writer: IndexWriter,
    modules: Modules,
    fitted: Option<&'a FactorSet>,
}

impl IndexProgress<'_> {
    /// Flush the rows to disk, then record them: a save never claims a row the file lacks.
    fn save(&mut self, checkpoint: &mut RunCheckpoint, done: Done, rows: usize) -> Result<()> {
        if let Some(factors) = self.fitted.take() {
            curate::influence::run::save_fitted(checkpoint, factors, rows)?;
        }
        let (written, dim) = self.writer.progress()?;
        let m = self.modules.len();
        let state = PassState {
            batches: done.batches,
            rows: done.rows,
            complete: false,
            names: self
                .modules
                .iter()
                .map(|(name, _, _)| name.clone())
                .collect(),
            arrays: vec![
                (
                    "written".to_string(),
                    vec![written.len()],
                    written.iter().map(|&w| f64::from(u8::from(w))).collect(),
                ),
                (
                    "dim".to_string(),
                    vec![1],
                    vec![dim.map_or(-1.0, |d| d as f64)],
                ),
                (
                    "module_shapes".to_string(),
                    vec![m, 2],
                    self.modules
                        .iter()
                        .flat_map(|&(_, o, i)| [o as f64, i as f64])
                        .collect(),
                ),
            ],
        };
        checkpoint.save("index", &state)
    }
}

/// Each tracked module's name, output and input size.
type Modules = Vec<(String, usize, usize)>;

/// The index writer, the modules and how far the pass is: continuing what
/// the checkpoint saved, or a new file in it.
fn start_index(
    checkpoint: &mut RunCheckpoint,
    dtype: StoreDtype,
    rows: usize,
) -> Result<(IndexWriter, Modules, Done)> {
    let path = checkpoint.file(GRADIENTS_FILE)?;
    let Some(state) = checkpoint.take("index") else {
        let start = Done {
            batches: 0,
            rows: 0,
        };
        return Ok((IndexWriter::create(&path, dtype, rows)?, Vec::new(), start));
    };
    let unusable = || {
        usage(format!(
            "--resume: {} does not hold this index's progress; --force starts over",
            checkpoint.dir().display()
        ))
    };
    let (_, written) = state.array("written").ok_or_else(unusable)?;
    let (_, dim) = state.array("dim").ok_or_else(unusable)?;
    let (_, shapes) = state.array("module_shapes").ok_or_else(unusable)?;
    if written.len() != rows || shapes.len() != 2 * state.names.len() {
        return Err(unusable());
    }
    let written: Vec<bool> = written.iter().map(|&w| w != 0.0).collect();
    let dim = (dim[0] >= 0.0).then_some(dim[0] as usize);
    let modules = state
        .names
        .iter()
        .zip(shapes.chunks(2))
        .map(|(name, shape)| (name.clone(), shape[0] as usize, shape[1] as usize))
        .collect();
    let writer = IndexWriter::resume(&path, dtype, written, dim)?;
    let done = Done {
        batches: state.batches,
        rows: state.rows,
    };
    Ok((writer, modules, done))
}

/// Move `from` to `to`: a rename, or a copy where they lie on different file systems.
fn move_file(from: &Path, to: &Path) -> Result<()> {
    if std::fs::rename(from, to).is_ok() {
        return Ok(());
    }
    std::fs::copy(from, to)
        .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    std::fs::remove_file(from).with_context(|| format!("cannot remove {}", from.display()))
}

fn build_digest(manifest: &IndexManifest, setup: &GradientRun) -> String {
    table::settings_digest([
        ("model", manifest.model.clone()),
        ("train", manifest.train.clone()),
        ("tokens", manifest.tokens.clone()),
        ("preconditioner", manifest.preconditioner.clone()),
        ("factors", manifest.factors.clone()),
        ("damping", manifest.damping.clone()),
        ("projection", format!("{:?}", manifest.projection)),
        ("seed", manifest.seed.to_string()),
        ("max length", format!("{:?}", manifest.max_length)),
        ("dtype", manifest.dtype.name().to_string()),
        ("modules", setup.tracked.as_str().to_string()),
    ])
}

/// `--skip-done` found the index directory there: exit 0 when it is this shard of this build,
/// complete; refuse anything else, keeping it.
fn skip_done(
    out: &Path,
    manifest: &IndexManifest,
    setup: &GradientRun,
    context: &Context,
) -> Result<ExitStatus> {
    let held = GradientIndex::open(out).ok().map(|index| index.manifest);
    let record = manifest
        .shard
        .as_ref()
        .expect("--skip-done requires --shard");
    match held {
        Some(held) if held.shard.as_ref() == Some(record) && held.rows == manifest.rows => {
            writeln!(
                context.printer.stderr(),
                "shard {} is done: {} holds it (--skip-done)",
                setup.shard,
                out.display()
            )?;
            Ok(ExitStatus::Success)
        }
        held => {
            let what = match held.and_then(|h| h.shard) {
                Some(other) if other.run == record.run => format!("shard {}", other.shard),
                Some(other) => format!("shard {} of another index", other.shard),
                None => "no shard of this index".to_string(),
            };
            Err(usage(format!(
                "{}: holds {what}, not shard {} of this index (--skip-done keeps only a finished shard); --force replaces it",
                out.display(),
                setup.shard
            )))
        }
    }
}

/// The index directories given, opened and put in shard order (each records its shard), and
/// the training rows' carried columns in that order.
fn open_parts(dirs: &[String]) -> Result<(Vec<GradientIndex>, Examples)> {
    let mut parts = dirs
        .iter()
        .map(|dir| GradientIndex::open(Path::new(dir)))
        .collect::<Result<Vec<_>>>()?;
    if parts.len() > 1 || parts[0].manifest.shard.is_some() {
        let records: Vec<(&str, Option<&ShardRecord>)> = parts
            .iter()
            .map(|p| (p.dir.as_str(), p.manifest.shard.as_ref()))
            .collect();
        let order = table::order_shards(&records).map_err(|err| usage(err.to_string()))?;
        let mut slots: Vec<Option<GradientIndex>> = parts.into_iter().map(Some).collect();
        parts = order
            .iter()
            .map(|&i| slots[i].take().expect("each once"))
            .collect();
    }
    let mut frame: Option<polars::prelude::DataFrame> = None;
    for part in &parts {
        let path = Path::new(&part.dir).join(ROWS_FILE).display().to_string();
        let rows = Input::open(&path, None)?.read()?;
        if rows.height() != part.manifest.rows {
            return Err(InputError::new(
                path,
                format!(
                    "holds {} rows, the index {}",
                    rows.height(),
                    part.manifest.rows
                ),
            )
            .into());
        }
        match &mut frame {
            None => frame = Some(rows),
            Some(all) => {
                all.vstack_mut(&rows)?;
            }
        }
    }
    let first = &parts[0];
    let digest = InputDigest::of_file(
        first.dir.clone(),
        &Path::new(&first.dir).join(index::MANIFEST_FILE),
    )?;
    let train = Examples::from_carried(&first.dir, digest, &frame.expect("one part at least"))?;
    Ok((parts, train))
}

pub fn query(args: QueryArgs, context: &Context) -> Result<ExitStatus> {
    let output = Output::create(&args.out, None, args.force)?;
    let summary_path = args.summary.as_deref().unwrap_or("-");
    table::require_distinct(&[("--out", args.out.as_str()), ("--summary", summary_path)])?;
    let summary = args
        .summary
        .as_deref()
        .map(|path| Output::create(path, None, args.force))
        .transpose()?;
    let (parts, train) = open_parts(&args.index)?;
    let manifest = parts[0].manifest.clone();
    let model = load_model(&args.lm, context)?;
    if model.digest != manifest.model {
        return Err(InputError::new(
            args.index[0].as_str(),
            format!(
                "was built with another model (sha256 {}); --model {} is sha256 {}",
                &manifest.model[..manifest.model.len().min(12)],
                args.lm.model.as_deref().unwrap_or(""),
                &model.digest[..model.digest.len().min(12)]
            ),
        )
        .into());
    }
    // The modules the index holds, exactly, and its projection.
    let names: Vec<String> = manifest
        .modules
        .iter()
        .map(|(name, _, _)| regex::escape(name))
        .collect();
    let tracked = Regex::new(&format!("^(?:{})$", names.join("|")))?;
    let projection = manifest
        .projection
        .as_deref()
        .map(|spec| {
            spec.parse::<Projection>()
                .map(|p| Projection {
                    seed: manifest.seed,
                    ..p
                })
                .map_err(|err| usage(format!("{}: projection {spec:?}: {err}", args.index[0])))
        })
        .transpose()?;
    let (query, query_rows) = read_queries(
        &args.query,
        &args.correct_col,
        &args.lm,
        (&model.lm, model.chat.as_ref()),
        &train,
        context,
    )?;
    let kept: Vec<Sequence> = query_rows
        .iter()
        .map(|&i| query.sequences[i].clone())
        .collect();
    let sizing = (kept.len(), crate::commands::longest(&kept));
    let run = gradient_run(
        model,
        &args.lm,
        tracked,
        projection,
        Fisher::Empirical,
        Shard::WHOLE,
        CacheSize::Mib(0),
        train,
        sizing,
        context,
    )?;
    let aggregate = match args.query_agg {
        QueryAggArg::None => QueryAggregate::None,
        QueryAggArg::Mean => QueryAggregate::Mean,
        QueryAggArg::Sum => QueryAggregate::Sum,
    };
    let started = Instant::now();
    let identity = FactorSet::new(Preconditioner::Identity, Stage::Complete);
    let queries = with_progress(
        &context.printer,
        "queries",
        super::PassSize::new(kept.len(), run.query_work(&kept)),
        estimated_peak(&run),
        |on_batch| run.query_gradients(&kept, &identity, Damping::Heuristic, aggregate, on_batch),
    )?;
    let matrix = queries.concatenated();
    let stored: Vec<&str> = manifest.modules.iter().map(|m| m.0.as_str()).collect();
    if queries.names != stored || matrix.ncols() != manifest.dim {
        return Err(usage(format!(
            "{}: holds modules {} ({} values per row), but the model's are {} ({} values): not an index of this model",
            args.index[0],
            stored.join(", "),
            manifest.dim,
            queries.names.join(", "),
            matrix.ncols()
        )));
    }
    let gradients = started.elapsed().as_secs_f64();
    let labels = QueryLabels::new(&query, &query_rows, aggregate)?;
    let segmenter = Segmenter::Paragraph;
    let tables = Tables {
        train: &run.train,
        query: &labels,
        tokenizer: None,
        segmenter: &segmenter,
        per_module: false,
        ranked: true,
    };
    let total = run.train.len();
    let (frame, summary_frame) = match args.top {
        Some(k) => {
            let picks = index::score_top(&parts, &matrix, k);
            (report::picked_scores_frame(&tables, &picks)?, None)
        }
        None => {
            let all = index::score_all(&parts, &matrix);
            let mut collected =
                Collected::new(queries.count, queries.names.clone(), 0..total, false);
            for (q, scores) in collected.examples.iter_mut().enumerate() {
                for (n, score) in scores.iter_mut().enumerate() {
                    *score = all[(q, n)];
                }
            }
            let report = Report::new(&collected, &tables);
            let summary_frame = summary.as_ref().map(|_| report.summary()).transpose()?;
            (report.scores()?, summary_frame)
        }
    };
    let scored = started.elapsed().as_secs_f64() - gradients;
    let mut provenance = context.provenance();
    for digest in &run.model_inputs {
        provenance.add_input(digest.clone());
    }
    for part in &parts {
        let path = Path::new(&part.dir).join(index::MANIFEST_FILE);
        provenance.add_input(InputDigest::of_file(path.display().to_string(), &path)?);
    }
    provenance.add_input(query.digest.clone());
    let mut staged = vec![output.stage_frame(&frame, Some(&provenance))?];
    if let (Some(output), Some(frame)) = (summary, summary_frame) {
        staged.push(output.stage_frame(&frame, Some(&provenance))?);
    }
    table::commit_all(staged)?;
    writeln!(
        context.printer.stderr(),
        "scored {total} indexed training examples against {}{}: query gradients {gradients:.1}s, scores {scored:.1}s; wrote {}",
        match aggregate {
            QueryAggregate::None => format!("{} queries", queries.count),
            QueryAggregate::Mean => format!("the mean of {} queries", kept.len()),
            QueryAggregate::Sum => format!("the sum of {} queries", kept.len()),
        },
        args.top
            .map_or(String::new(), |k| format!(" (top {k} per query)")),
        args.out
    )?;
    Ok(ExitStatus::Success)
}
