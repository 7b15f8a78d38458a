//! Passes over a `GradientSource`: fitting factors, building query gradients, scoring.

use std::ops::Range;

use anyhow::{Result, bail};
use faer::Mat;

use super::{
    Damping, FactorSet, Fisher, GradientSource, ModulePreconditioner, ModuleStacks, Preconditioner,
    Projection, QueryGradients, ScoreMatrix, Stage, TokenScores, score_examples, score_tokens,
};

/// How a pass walks the data.
pub struct PassOptions<'a> {
    pub batch_size: usize,
    /// Batches captured at once, side by side (at most the rayon threads; 1: one at a time).
    /// Results do not depend on it; memory grows with it. Above 1 the source's model must have
    /// frozen weights (loaded for inference): trainable weights join every batch's backward
    /// pass into one graph, which the first backward consumes.
    pub in_flight: usize,
    pub projection: Option<Projection>,
    /// EK-FAC keeps the first pass's stacks up to this many bytes, so its second pass need
    /// not run the model again (0: always rerun).
    pub cache_bytes: usize,
    /// Called after each batch with the number of examples it held; an error stops the pass
    /// (Ctrl-C).
    pub on_batch: &'a mut dyn FnMut(usize) -> Result<()>,
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

/// Capture every batch of `rows` (projected), hand it to `visit` with its rows, then report
/// progress: the one loop every pass runs.
///
/// Up to `options.in_flight` batches are captured side by side, one per rayon thread (burn's
/// element-wise kernels use one core, so a second batch keeps the other busy), and visited one
/// at a time in order: the
/// batches are cut the same way whatever the thread count and sums are added in the same
/// order, so factors and scores do not depend on the number of threads.
fn each_batch(
    source: &dyn GradientSource,
    rows: Range<usize>,
    fisher: Fisher,
    options: &mut PassOptions,
    mut visit: impl FnMut(&[usize], Vec<ModuleStacks>) -> Result<()>,
) -> Result<()> {
    use rayon::prelude::*;
    let batches = batches(source, rows, options.batch_size);
    let projection = options.projection;
    let in_flight = options.in_flight.min(rayon::current_num_threads()).max(1);
    for group in batches.chunks(in_flight) {
        let captured: Vec<Result<Vec<ModuleStacks>>> = group
            .par_iter()
            .map(|batch| capture(source, batch, fisher, projection))
            .collect();
        for (batch, stacks) in group.iter().zip(captured) {
            visit(batch, stacks?)?;
        }
        // One report per group: its batches finished together.
        (options.on_batch)(group.iter().map(Vec::len).sum())?;
    }
    Ok(())
}

/// First pass: token covariances of `rows`.
pub fn fit_covariances(
    source: &dyn GradientSource,
    rows: Range<usize>,
    fisher: Fisher,
    preconditioner: Preconditioner,
    options: &mut PassOptions,
) -> Result<FactorSet> {
    let mut factors = FactorSet::new(preconditioner, Stage::Covariance);
    each_batch(source, rows, fisher, options, |_, stacks| {
        factors.add_covariances(&stacks)
    })?;
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
    let bases = covariances.map(FactorSet::eigenbases).transpose()?;
    let mut factors = FactorSet::new(preconditioner, Stage::Lambda);
    each_batch(source, rows, fisher, options, |_, stacks| {
        if let Some(covariances) = covariances {
            check_modules(covariances, &stacks)?;
        }
        factors.add_lambdas(&stacks, bases.as_deref())
    })?;
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
        // The covariance pass keeps its stacks while they fit the budget; EK-FAC's second pass
        // then rotates those instead of running the model again.
        let mut kept: Option<Vec<Vec<CachedStacks>>> = Some(Vec::new());
        let mut used = 0usize;
        let mut covariances = FactorSet::new(preconditioner, Stage::Covariance);
        let budget = options.cache_bytes;
        each_batch(source, rows.clone(), fisher, options, |_, stacks| {
            covariances.add_covariances(&stacks)?;
            if let Some(cache) = &mut kept {
                let cached: Vec<CachedStacks> = stacks.iter().map(CachedStacks::new).collect();
                used += cached.iter().map(CachedStacks::bytes).sum::<usize>();
                if used <= budget {
                    cache.push(cached);
                } else {
                    kept = None;
                }
            }
            Ok(())
        })?;
        factors.merge(&covariances)?;
        let lambdas = match kept {
            Some(cache) => {
                let bases = factors.eigenbases()?;
                let mut lambdas = FactorSet::new(preconditioner, Stage::Lambda);
                for cached in cache {
                    let stacks: Vec<ModuleStacks> =
                        cached.iter().map(CachedStacks::restore).collect();
                    lambdas.add_lambdas(&stacks, Some(&bases))?;
                    (options.on_batch)(stacks.first().map_or(0, |s| s.examples.len()))?;
                }
                lambdas
            }
            None => fit_lambdas(
                source,
                rows,
                fisher,
                preconditioner,
                Some(&factors),
                options,
            )?,
        };
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
    let mut gradients: Vec<Vec<Option<Mat<f64>>>> = Vec::new();
    each_batch(source, rows, Fisher::Empirical, options, |batch, stacks| {
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
        for (layer, stack) in gradients.iter_mut().zip(&stacks) {
            for (example, &row) in stack.examples.iter().zip(batch) {
                let gradient = example.weight_grad();
                let slot = match aggregate {
                    QueryAggregate::None => &mut layer[row - first],
                    QueryAggregate::Sum | QueryAggregate::Mean => &mut layer[0],
                };
                match slot {
                    Some(sum) => *sum += gradient,
                    None => *slot = Some(gradient),
                }
            }
        }
        Ok(())
    })?;
    let mut gradients: Vec<Vec<Mat<f64>>> = gradients
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
                *gradient = &*gradient * faer::Scale(1.0 / total as f64);
            }
        }
    }
    let preconditioners = preconditioners(factors, damping, names.len())?;
    Ok(QueryGradients::new(names, gradients, &preconditioners))
}

/// Each tracked module's preconditioner from `factors` (`modules` of them for identity, which
/// has no per-module factors).
fn preconditioners(
    factors: &FactorSet,
    damping: Damping,
    modules: usize,
) -> Result<Vec<ModulePreconditioner>> {
    if factors.preconditioner == Preconditioner::Identity {
        return Ok(vec![ModulePreconditioner::Identity; modules]);
    }
    factors
        .modules
        .iter()
        .map(|m| ModulePreconditioner::build(factors.preconditioner, m, damping))
        .collect()
}

/// Each example of `rows` as one flat vector: per tracked module in order, its weight
/// gradient preconditioned by `factors` (damped, as for scoring) and laid out row-major
/// (`out x in`). Handed to `sink` batch by batch in row order, with the modules as
/// `(name, out, in)`; only one batch is held at a time.
pub fn preconditioned_gradients(
    source: &dyn GradientSource,
    rows: Range<usize>,
    factors: &FactorSet,
    damping: Damping,
    options: &mut PassOptions,
    mut sink: impl FnMut(&[(String, usize, usize)], &[usize], Vec<Vec<f64>>) -> Result<()>,
) -> Result<()> {
    let mut preconditioners: Option<Vec<ModulePreconditioner>> = None;
    let mut modules: Vec<(String, usize, usize)> = Vec::new();
    each_batch(source, rows, Fisher::Empirical, options, |batch, stacks| {
        check_modules(factors, &stacks)?;
        if preconditioners.is_none() {
            modules = stacks
                .iter()
                .map(|s| (s.name.clone(), s.out_dim(), s.in_dim()))
                .collect();
            preconditioners = Some(self::preconditioners(factors, damping, stacks.len())?);
        }
        let preconditioners = preconditioners.as_ref().expect("built above");
        let dim: usize = modules.iter().map(|(_, o, i)| o * i).sum();
        let mut vectors = vec![Vec::with_capacity(dim); batch.len()];
        for (stack, preconditioner) in stacks.iter().zip(preconditioners) {
            for (vector, example) in vectors.iter_mut().zip(&stack.examples) {
                let gradient = preconditioner.apply(&example.weight_grad());
                for o in 0..gradient.nrows() {
                    vector.extend((0..gradient.ncols()).map(|i| gradient[(o, i)]));
                }
            }
        }
        sink(&modules, batch, vectors)
    })
}

/// Scores of one batch of training examples, handed to the caller in order.
pub struct BatchScores {
    /// The rows of the batch, in the order of its columns.
    pub rows: Vec<usize>,
    pub examples: ScoreMatrix,
    /// Per example, when token scores were asked for.
    pub tokens: Option<Vec<TokenScores>>,
}

/// Score `rows` of the training source against `queries`, batch by batch.
pub fn score(
    source: &dyn GradientSource,
    rows: Range<usize>,
    queries: &QueryGradients,
    with_tokens: bool,
    options: &mut PassOptions,
    mut sink: impl FnMut(BatchScores) -> Result<()>,
) -> Result<()> {
    each_batch(source, rows, Fisher::Empirical, options, |batch, stacks| {
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
        sink(BatchScores {
            rows: batch.to_vec(),
            examples,
            tokens,
        })
    })
}
