//! Passes over a `GradientSource`: fitting factors, building query gradients, scoring.

use std::collections::HashMap;
use std::ops::Range;

use anyhow::{Result, bail};
use faer::Mat;

use super::checkpoint::RunCheckpoint;
use super::{
    Damping, FactorSet, Fisher, GradientSource, ModulePreconditioner, ModuleStacks, Precision,
    Preconditioner, Projection, QueryGradient, QueryGradients, Rotation, ScoreMatrix, Stage,
    TokenScores, score_examples, score_tokens,
};

/// How a pass walks the data.
pub struct PassOptions<'a> {
    pub batch_size: usize,
    /// Batches captured at once, side by side (at most the rayon threads; 1: one at a time).
    /// Results do not depend on it; memory grows with it. A source with trainable weights
    /// runs one batch at a time whatever this says (see `GradientSource::trainable`).
    pub in_flight: usize,
    pub projection: Option<Projection>,
    /// EK-FAC keeps the first pass's stacks up to this many bytes, so its second pass need
    /// not run the model again (0: always rerun).
    pub cache_bytes: usize,
    /// Called after each group of batches with what it held; an error stops the pass
    /// (Ctrl-C).
    pub on_batch: &'a mut dyn FnMut(Advance) -> Result<()>,
    /// Saves a factor pass's sums every few minutes and on a stop, and holds what an earlier
    /// run saved (`--resume`). Score and index passes checkpoint through their callers.
    pub checkpoint: Option<&'a mut RunCheckpoint>,
}

/// How query gradients are combined before scoring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryAggregate {
    /// One score per query.
    None,
    /// The summed query gradient (kronfluence's `aggregate_query_gradients`).
    Sum,
    /// The mean query gradient: the influence on the mean query log-likelihood (Infra).
    Mean,
}

/// Batches of rows of similar length (shortest first), so little compute goes to padding.
/// Results are placed by row, so the order does not show in any output.
fn batches(source: &dyn GradientSource, rows: Range<usize>, batch_size: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = rows.collect();
    order.sort_by_key(|&row| source.length(row));
    order
        .chunks(batch_size.max(1))
        .map(<[usize]>::to_vec)
        .collect()
}

fn capture(
    source: &dyn GradientSource,
    rows: &[usize],
    fisher: Fisher,
    projection: Option<Projection>,
) -> Result<Vec<ModuleStacks>> {
    let mut stacks = source.capture(rows, fisher)?;
    if let Some(projection) = projection {
        for stack in &mut stacks {
            projection.apply(stack);
        }
    }
    Ok(stacks)
}

/// What a group of batches added to a pass: its rows, and the model work they took
/// (`GradientSource::batch_work`; 0 for batches whose stacks were kept from an earlier pass),
/// for time estimates: batches run shortest first, so rows alone underestimate what is left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advance {
    pub rows: usize,
    pub work: u64,
}

/// The work of capturing `rows` in batches of `batch_size`: what [`Advance::work`] adds up to
/// over a pass that runs the model on every batch.
pub fn pass_work(source: &dyn GradientSource, rows: Range<usize>, batch_size: usize) -> u64 {
    batches(source, rows, batch_size)
        .iter()
        .map(|batch| source.batch_work(batch))
        .sum()
}

/// How far a pass has come: its first `batches` batches, holding `rows` rows, are done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Done {
    pub batches: usize,
    pub rows: usize,
}

/// Called after each group of batches with the pass's state, the checkpoint and how far the
/// pass is, to save progress.
pub type SaveProgress<'w, S> =
    &'w mut dyn FnMut(&mut S, Option<&mut RunCheckpoint>, Done) -> Result<()>;

/// Where a pass starts and what it adds to: `skip` batches were done by an earlier run (their
/// results are already in `state`); `cached` hands back stacks kept from an earlier pass by
/// batch index, so those batches need no model run; `save` checkpoints `state`.
pub struct Walk<'w, S> {
    pub skip: usize,
    pub state: &'w mut S,
    pub cached: Option<&'w mut dyn FnMut(usize) -> Option<Vec<ModuleStacks>>>,
    pub save: Option<SaveProgress<'w, S>>,
}

impl<'w, S> Walk<'w, S> {
    /// From the first batch, into `state`, saving nothing.
    pub fn from_start(state: &'w mut S) -> Self {
        Walk {
            skip: 0,
            state,
            cached: None,
            save: None,
        }
    }
}

/// Capture every batch of `rows` (projected), hand it to `visit` with its rows, then report
/// progress: the one loop every pass runs.
///
/// Up to `options.in_flight` batches are captured side by side, one per rayon thread (burn's
/// element-wise kernels use one core, so a second batch keeps the other busy), and visited one
/// at a time in order: the batches are cut the same way whatever the thread count and sums are
/// added in the same order, so factors and scores do not depend on the number of threads.
/// After each group the walk's `save` sees the state and how far the pass is (to checkpoint
/// it); a resumed pass skips the batches an earlier run finished, so it ends with the same
/// sums.
fn each_batch<S>(
    source: &dyn GradientSource,
    rows: Range<usize>,
    fisher: Fisher,
    options: &mut PassOptions,
    walk: Walk<S>,
    mut visit: impl FnMut(&mut S, usize, &[usize], Vec<ModuleStacks>) -> Result<()>,
) -> Result<()> {
    use rayon::prelude::*;
    let Walk {
        skip,
        state,
        mut cached,
        mut save,
    } = walk;
    let batches = batches(source, rows, options.batch_size);
    let skip = skip.min(batches.len());
    let projection = options.projection;
    let in_flight = match source.trainable() {
        true => 1,
        false => options.in_flight.min(rayon::current_num_threads()).max(1),
    };
    let mut done = Done {
        batches: skip,
        rows: batches[..skip].iter().map(Vec::len).sum(),
    };
    let pending: Vec<usize> = (skip..batches.len()).collect();
    for group in pending.chunks(in_flight) {
        let mut stacks: Vec<Option<Vec<ModuleStacks>>> = group
            .iter()
            .map(|&index| cached.as_mut().and_then(|take| take(index)))
            .collect();
        let missing: Vec<usize> = (0..group.len()).filter(|&p| stacks[p].is_none()).collect();
        let capture_at = |&p: &usize| capture(source, &batches[group[p]], fisher, projection);
        // A lone batch runs on this thread: there is nothing to run beside it.
        let captured: Vec<Result<Vec<ModuleStacks>>> = match missing.len() {
            1 => missing.iter().map(capture_at).collect(),
            _ => missing.par_iter().map(capture_at).collect(),
        };
        let work: u64 = missing
            .iter()
            .map(|&p| source.batch_work(&batches[group[p]]))
            .fold(0u64, u64::saturating_add);
        for (&p, result) in missing.iter().zip(captured) {
            stacks[p] = Some(result?);
        }
        let mut rows_in_group = 0;
        for (&index, batch_stacks) in group.iter().zip(stacks) {
            let batch = &batches[index];
            visit(state, index, batch, batch_stacks.expect("captured above"))?;
            rows_in_group += batch.len();
        }
        done.batches = group[group.len() - 1] + 1;
        done.rows += rows_in_group;
        if let Some(save) = save.as_mut() {
            save(state, options.checkpoint.as_deref_mut(), done)?;
        }
        // One report per group: its batches finished together.
        (options.on_batch)(Advance {
            rows: rows_in_group,
            work,
        })?;
    }
    Ok(())
}

/// A factor pass's sums as an earlier run saved them under `pass` (with the batches they
/// cover and whether the pass was complete), or empty ones.
fn resumed_factors(
    checkpoint: Option<&mut RunCheckpoint>,
    pass: &str,
    preconditioner: Preconditioner,
    stage: Stage,
) -> Result<(FactorSet, usize, bool)> {
    match checkpoint.and_then(|c| c.take(pass)) {
        Some(state) => Ok((
            FactorSet::from_state(preconditioner, stage, &state)?,
            state.batches,
            state.complete,
        )),
        None => Ok((FactorSet::new(preconditioner, stage), 0, false)),
    }
}

/// Save a factor pass's partial sums when the checkpoint says it is time.
fn save_factors_if_due(
    checkpoint: Option<&mut RunCheckpoint>,
    pass: &str,
    factors: &FactorSet,
    done: Done,
) -> Result<()> {
    match checkpoint {
        Some(checkpoint) => {
            checkpoint.save_if_due(pass, || factors.to_state(done.batches, done.rows, false))
        }
        None => Ok(()),
    }
}

/// First pass: token covariances of `rows`.
pub fn fit_covariances(
    source: &dyn GradientSource,
    rows: Range<usize>,
    fisher: Fisher,
    preconditioner: Preconditioner,
    options: &mut PassOptions,
) -> Result<FactorSet> {
    let (mut factors, skip, _) = resumed_factors(
        options.checkpoint.as_deref_mut(),
        "covariances",
        preconditioner,
        Stage::Covariance,
    )?;
    let walk = Walk {
        skip,
        state: &mut factors,
        cached: None,
        save: Some(&mut |factors, checkpoint, done| {
            save_factors_if_due(checkpoint, "covariances", factors, done)
        }),
    };
    each_batch(
        source,
        rows,
        fisher,
        options,
        walk,
        |factors, _, _, stacks| factors.add_covariances(&stacks),
    )?;
    Ok(factors)
}

/// Eigenvalue statistics of `rows`: rotated into `covariances`' eigenbases for EK-FAC, as they
/// are for the diagonal preconditioner (then `covariances` is `None`).
pub fn fit_lambdas(
    source: &dyn GradientSource,
    rows: Range<usize>,
    fisher: Fisher,
    preconditioner: Preconditioner,
    covariances: Option<&FactorSet>,
    options: &mut PassOptions,
) -> Result<FactorSet> {
    let rotations = covariances
        .map(|c| rotations(c, source.precision()))
        .transpose()?;
    let (mut factors, skip, _) = resumed_factors(
        options.checkpoint.as_deref_mut(),
        "lambdas",
        preconditioner,
        Stage::Lambda,
    )?;
    let walk = Walk {
        skip,
        state: &mut factors,
        cached: None,
        save: Some(&mut |factors, checkpoint, done| {
            save_factors_if_due(checkpoint, "lambdas", factors, done)
        }),
    };
    each_batch(
        source,
        rows,
        fisher,
        options,
        walk,
        |factors, _, _, stacks| {
            if let Some(covariances) = covariances {
                check_modules(covariances, &stacks)?;
            }
            factors.add_lambdas(&stacks, rotations.as_deref())
        },
    )?;
    Ok(factors)
}

/// Everything `preconditioner` needs from `rows`, in one or two passes.
pub fn fit_factors(
    source: &dyn GradientSource,
    rows: Range<usize>,
    fisher: Fisher,
    preconditioner: Preconditioner,
    options: &mut PassOptions,
) -> Result<FactorSet> {
    let mut factors = FactorSet::new(preconditioner, Stage::Complete);
    if preconditioner.two_passes() {
        let (mut covariances, skip, complete) = resumed_factors(
            options.checkpoint.as_deref_mut(),
            "covariances",
            preconditioner,
            Stage::Covariance,
        )?;
        // The covariance pass keeps its stacks (by batch) while they fit the budget; EK-FAC's
        // second pass then rotates those instead of running the model again. A resumed pass
        // holds only the batches it ran itself; the second pass captures the others again.
        let mut kept: Option<HashMap<usize, Vec<CachedStacks>>> = Some(HashMap::new());
        if !complete {
            let mut used = 0usize;
            let budget = options.cache_bytes;
            let walk = Walk {
                skip,
                state: &mut covariances,
                cached: None,
                save: Some(&mut |covariances, checkpoint, done| {
                    save_factors_if_due(checkpoint, "covariances", covariances, done)
                }),
            };
            each_batch(
                source,
                rows.clone(),
                fisher,
                options,
                walk,
                |covariances, index, _, stacks| {
                    covariances.add_covariances(&stacks)?;
                    if let Some(cache) = &mut kept {
                        let cached: Vec<CachedStacks> =
                            stacks.iter().map(CachedStacks::new).collect();
                        used += cached.iter().map(CachedStacks::bytes).sum::<usize>();
                        if used <= budget {
                            cache.insert(index, cached);
                        } else {
                            kept = None;
                        }
                    }
                    Ok(())
                },
            )?;
        }
        factors.merge(&covariances)?;
        let started = std::time::Instant::now();
        let rotations = rotations(&factors, source.precision())?;
        tracing::debug!(
            "eigendecomposition of {} modules' covariances: {:.2} s",
            rotations.len(),
            started.elapsed().as_secs_f64()
        );
        let (mut lambdas, skip, _) = resumed_factors(
            options.checkpoint.as_deref_mut(),
            "lambdas",
            preconditioner,
            Stage::Lambda,
        )?;
        let rows_in_pass = rows.len();
        let mut covariances_saved = complete;
        let mut from_cache = |index: usize| -> Option<Vec<ModuleStacks>> {
            let cached = kept.as_mut()?.remove(&index)?;
            Some(cached.iter().map(CachedStacks::restore).collect())
        };
        let mut save = |lambdas: &mut FactorSet,
                        checkpoint: Option<&mut RunCheckpoint>,
                        done: Done|
         -> Result<()> {
            let Some(checkpoint) = checkpoint.filter(|c| c.due()) else {
                return Ok(());
            };
            // The finished covariances go into the first save of this pass, so a resumed
            // run starts from the eigenvalues.
            if !covariances_saved {
                checkpoint.save("covariances", &covariances.to_state(0, rows_in_pass, true))?;
                covariances_saved = true;
            }
            checkpoint.save("lambdas", &lambdas.to_state(done.batches, done.rows, false))
        };
        let walk = Walk {
            skip,
            state: &mut lambdas,
            cached: Some(&mut from_cache),
            save: Some(&mut save),
        };
        each_batch(
            source,
            rows,
            fisher,
            options,
            walk,
            |lambdas, _, _, stacks| {
                check_modules(&covariances, &stacks)?;
                lambdas.add_lambdas(&stacks, Some(&rotations))
            },
        )?;
        factors.merge(&lambdas)?;
    } else {
        if preconditioner.needs_covariance() {
            let covariances =
                fit_covariances(source, rows.clone(), fisher, preconditioner, options)?;
            factors.merge(&covariances)?;
        }
        if preconditioner.needs_lambda() {
            let lambdas = fit_lambdas(source, rows, fisher, preconditioner, None, options)?;
            factors.merge(&lambdas)?;
        }
    }
    factors.stage = Stage::Complete;
    Ok(factors)
}

/// One layer's stacks of a batch, kept between passes: as f32 when every value is one (the
/// model computed in f32), else as f64, so restoring is exact either way.
struct CachedStacks {
    name: String,
    examples: Vec<(CachedMatrix, CachedMatrix)>,
}

struct CachedMatrix {
    rows: usize,
    cols: usize,
    narrow: Option<Vec<f32>>,
    wide: Option<Vec<f64>>,
}

impl CachedMatrix {
    fn new(matrix: &Mat<f64>) -> Self {
        let values: Vec<f64> = (0..matrix.nrows())
            .flat_map(|i| (0..matrix.ncols()).map(move |j| matrix[(i, j)]))
            .collect();
        let exact = values.iter().all(|&v| (v as f32) as f64 == v);
        CachedMatrix {
            rows: matrix.nrows(),
            cols: matrix.ncols(),
            narrow: exact.then(|| values.iter().map(|&v| v as f32).collect()),
            wide: (!exact).then_some(values),
        }
    }

    fn bytes(&self) -> usize {
        self.narrow.as_ref().map_or(0, |v| v.len() * 4)
            + self.wide.as_ref().map_or(0, |v| v.len() * 8)
    }

    fn restore(&self) -> Mat<f64> {
        let cols = self.cols;
        match (&self.narrow, &self.wide) {
            (Some(values), _) => Mat::from_fn(self.rows, cols, |i, j| values[i * cols + j] as f64),
            (_, Some(values)) => Mat::from_fn(self.rows, cols, |i, j| values[i * cols + j]),
            _ => unreachable!("one of the two is set"),
        }
    }
}

impl CachedStacks {
    fn new(stacks: &ModuleStacks) -> Self {
        CachedStacks {
            name: stacks.name.clone(),
            examples: stacks
                .examples
                .iter()
                .map(|e| {
                    (
                        CachedMatrix::new(&e.inputs),
                        CachedMatrix::new(&e.output_grads),
                    )
                })
                .collect(),
        }
    }

    fn bytes(&self) -> usize {
        self.examples
            .iter()
            .map(|(a, g)| a.bytes() + g.bytes())
            .sum()
    }

    fn restore(&self) -> ModuleStacks {
        ModuleStacks {
            name: self.name.clone(),
            examples: self
                .examples
                .iter()
                .map(|(a, g)| super::ExampleStack {
                    inputs: a.restore(),
                    output_grads: g.restore(),
                })
                .collect(),
        }
    }
}

/// Factors fitted on other modules or another projection cannot precondition these.
fn check_modules(factors: &FactorSet, stacks: &[ModuleStacks]) -> Result<()> {
    if factors.modules.is_empty() {
        return Ok(());
    }
    let fitted: Vec<String> = factors
        .modules
        .iter()
        .map(|m| format!("{} [{}x{}]", m.name, m.out_dim, m.in_dim))
        .collect();
    let tracked: Vec<String> = stacks
        .iter()
        .map(|s| format!("{} [{}x{}]", s.name, s.out_dim(), s.in_dim()))
        .collect();
    if fitted != tracked {
        bail!(crate::error::UsageError(format!(
            "the factors were fitted on other modules ({}) than the ones tracked now ({})",
            fitted.join(", "),
            tracked.join(", ")
        )));
    }
    Ok(())
}

/// Preconditioned query gradients of `rows`.
pub fn query_gradients(
    source: &dyn GradientSource,
    rows: Range<usize>,
    factors: &FactorSet,
    damping: Damping,
    aggregate: QueryAggregate,
    options: &mut PassOptions,
) -> Result<QueryGradients> {
    let total = rows.len();
    let first = rows.start;
    let mut names: Vec<String> = Vec::new();
    // [layer][query slot]: one slot per query, or one for the aggregate.
    let mut gradients: Vec<Vec<Option<QueryGradient>>> = Vec::new();
    let visit = |_: &mut (), _: usize, batch: &[usize], stacks: Vec<ModuleStacks>| {
        check_modules(factors, &stacks)?;
        if names.is_empty() {
            names = stacks.iter().map(|s| s.name.clone()).collect();
            let slots = if aggregate == QueryAggregate::None {
                total
            } else {
                1
            };
            gradients = vec![vec![None; slots]; stacks.len()];
        }
        for (layer, stack) in gradients.iter_mut().zip(stacks) {
            for (example, &row) in stack.examples.into_iter().zip(batch) {
                match aggregate {
                    QueryAggregate::None => {
                        layer[row - first] = Some(QueryGradient::Stack(example));
                    }
                    QueryAggregate::Sum | QueryAggregate::Mean => {
                        let gradient = example.weight_grad();
                        match &mut layer[0] {
                            Some(QueryGradient::Formed(sum)) => *sum += gradient,
                            slot => *slot = Some(QueryGradient::Formed(gradient)),
                        }
                    }
                }
            }
        }
        Ok(())
    };
    each_batch(
        source,
        rows,
        Fisher::Empirical,
        options,
        Walk::from_start(&mut ()),
        visit,
    )?;
    let mut gradients: Vec<Vec<QueryGradient>> = gradients
        .into_iter()
        .map(|layer| {
            layer
                .into_iter()
                .map(|g| g.expect("every query captured"))
                .collect()
        })
        .collect();
    if aggregate == QueryAggregate::Mean && total > 0 {
        for layer in &mut gradients {
            for gradient in layer.iter_mut() {
                if let QueryGradient::Formed(sum) = gradient {
                    *sum = &*sum * faer::Scale(1.0 / total as f64);
                }
            }
        }
    }
    let preconditioners = preconditioners(factors, damping, names.len(), source.precision())?;
    let started = std::time::Instant::now();
    let preconditioned = QueryGradients::new(names, gradients, &preconditioners);
    tracing::debug!(
        "preconditioned {} query gradients of {} modules: {:.2} s",
        preconditioned.count,
        preconditioners.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(preconditioned)
}

/// Each module's eigenbasis of `covariances`, to rotate gradients of `precision` into.
fn rotations(covariances: &FactorSet, precision: Precision) -> Result<Vec<Rotation>> {
    Ok(covariances
        .eigenbases()?
        .into_iter()
        .map(|basis| Rotation::new(basis, precision))
        .collect())
}

/// Each tracked module's preconditioner from `factors` (`modules` of them for identity, which
/// has no per-module factors).
fn preconditioners(
    factors: &FactorSet,
    damping: Damping,
    modules: usize,
    precision: Precision,
) -> Result<Vec<ModulePreconditioner>> {
    if factors.preconditioner == Preconditioner::Identity {
        return Ok(vec![ModulePreconditioner::Identity; modules]);
    }
    // Each K-FAC and EK-FAC module eigendecomposes its covariances on one thread: spread
    // the modules over the pool (in order; each is built alone, so nothing depends on it).
    use rayon::prelude::*;
    let started = std::time::Instant::now();
    let built = factors
        .modules
        .par_iter()
        .map(|m| ModulePreconditioner::build(factors.preconditioner, m, damping, precision))
        .collect();
    tracing::debug!(
        "preconditioners of {} modules: {:.2} s",
        factors.modules.len(),
        started.elapsed().as_secs_f64()
    );
    built
}

/// Each example of `rows` as one flat vector: per tracked module in order, its weight
/// gradient preconditioned by `factors` (damped, as for scoring) and laid out row-major
/// (`out x in`). Handed to `sink` batch by batch with the modules as `(name, out, in)`; only
/// one batch is held at a time. `walk` lets the caller resume and checkpoint what its sink
/// wrote (see [`each_batch`]).
pub fn preconditioned_gradients<S>(
    source: &dyn GradientSource,
    rows: Range<usize>,
    factors: &FactorSet,
    damping: Damping,
    options: &mut PassOptions,
    walk: Walk<S>,
    mut sink: impl FnMut(&mut S, &[(String, usize, usize)], &[usize], Vec<Vec<f64>>) -> Result<()>,
) -> Result<()> {
    let mut preconditioners: Option<Vec<ModulePreconditioner>> = None;
    let mut modules: Vec<(String, usize, usize)> = Vec::new();
    let visit = |state: &mut S, _: usize, batch: &[usize], stacks: Vec<ModuleStacks>| {
        check_modules(factors, &stacks)?;
        if preconditioners.is_none() {
            modules = stacks
                .iter()
                .map(|s| (s.name.clone(), s.out_dim(), s.in_dim()))
                .collect();
            preconditioners = Some(self::preconditioners(
                factors,
                damping,
                stacks.len(),
                source.precision(),
            )?);
        }
        let preconditioners = preconditioners.as_ref().expect("built above");
        let dim: usize = modules.iter().map(|(_, o, i)| o * i).sum();
        let mut vectors = vec![Vec::with_capacity(dim); batch.len()];
        for (stack, preconditioner) in stacks.iter().zip(preconditioners) {
            for (vector, example) in vectors.iter_mut().zip(&stack.examples) {
                let gradient = preconditioner.apply_stack(example);
                for o in 0..gradient.nrows() {
                    vector.extend((0..gradient.ncols()).map(|i| gradient[(o, i)]));
                }
            }
        }
        sink(state, &modules, batch, vectors)
    };
    each_batch(source, rows, Fisher::Empirical, options, walk, visit)
}

/// Scores of one batch of training examples, handed to the caller in order.
pub struct BatchScores {
    /// The rows of the batch, in the order of its columns.
    pub rows: Vec<usize>,
    pub examples: ScoreMatrix,
    /// Per example, when token scores were asked for.
    pub tokens: Option<Vec<TokenScores>>,
}

/// Score `rows` of the training source against `queries`, batch by batch, into `walk`'s
/// state through `sink`; the walk's `save` may checkpoint that state (see [`each_batch`]).
pub fn score<S>(
    source: &dyn GradientSource,
    rows: Range<usize>,
    queries: &QueryGradients,
    with_tokens: bool,
    options: &mut PassOptions,
    walk: Walk<S>,
    mut sink: impl FnMut(&mut S, BatchScores) -> Result<()>,
) -> Result<()> {
    let visit = |state: &mut S, _: usize, batch: &[usize], stacks: Vec<ModuleStacks>| {
        let names: Vec<&str> = stacks.iter().map(|s| s.name.as_str()).collect();
        if names != queries.names.iter().map(String::as_str).collect::<Vec<_>>() {
            bail!("the training and query examples track different modules");
        }
        let tokens = with_tokens.then(|| {
            (0..batch.len())
                .map(|b| score_tokens(queries, &stacks, b))
                .collect()
        });
        let examples = score_examples(queries, &stacks);
        sink(
            state,
            BatchScores {
                rows: batch.to_vec(),
                examples,
                tokens,
            },
        )
    };
    each_batch(source, rows, Fisher::Empirical, options, walk, visit)
}
