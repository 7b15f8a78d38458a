//! Scoring: preconditioned query gradients contracted with training gradients, per example or
//! per token. Token scores `s_t = g_t^T P_q a_t` sum to the example score `<P_q, sum_t g_t a_t^T>`.

use faer::Mat;

use super::{ExampleStack, ModulePreconditioner, ModuleStacks};

/// One layer's preconditioned query gradients `P_q` `[out, in]`, held once: column q of
/// `columns` is `P_q` in column-major order (`k = i * out + o`), which is also how faer lays
/// out a weight gradient, so both contractions read it without another copy.
#[derive(Debug, Clone)]
struct PreconditionedLayer {
    out_dim: usize,
    in_dim: usize,
    /// `[out*in, M]`.
    columns: Mat<f64>,
}

impl PreconditionedLayer {
    /// `P_q` as an `[out, in]` matrix.
    fn query(&self, q: usize) -> faer::MatRef<'_, f64> {
        faer::MatRef::from_column_major_slice(
            self.columns.col_as_slice(q),
            self.out_dim,
            self.in_dim,
        )
    }
}

/// Column `b` of `into` = `gradient` `[out, in]` in column-major order.
fn put_column(into: &mut Mat<f64>, b: usize, gradient: faer::MatRef<'_, f64>) {
    let rows = gradient.nrows();
    let column = into.col_as_slice_mut(b);
    for i in 0..gradient.ncols() {
        let target = &mut column[i * rows..(i + 1) * rows];
        for (o, value) in target.iter_mut().enumerate() {
            *value = gradient[(o, i)];
        }
    }
}

/// One query's gradient of one layer before preconditioning: a single query keeps its token
/// stacks (the preconditioner may rotate those more cheaply than the formed gradient), an
/// aggregate of several is summed into the weight gradient.
#[derive(Debug, Clone)]
pub enum QueryGradient {
    Stack(ExampleStack),
    Formed(Mat<f64>),
}

impl QueryGradient {
    fn precondition(&self, preconditioner: &ModulePreconditioner) -> Mat<f64> {
        match self {
            QueryGradient::Stack(example) => preconditioner.apply_stack(example),
            QueryGradient::Formed(gradient) => preconditioner.apply(gradient),
        }
    }
}

/// Preconditioned gradients of every query (or of one aggregated query), per layer.
#[derive(Debug, Clone)]
pub struct QueryGradients {
    pub names: Vec<String>,
    pub count: usize,
    layers: Vec<PreconditionedLayer>,
}

impl QueryGradients {
    /// From raw per-query gradients `[layer][query]` and each layer's preconditioner.
    pub fn new(
        names: Vec<String>,
        gradients: Vec<Vec<QueryGradient>>,
        preconditioners: &[ModulePreconditioner],
    ) -> QueryGradients {
        use rayon::prelude::*;
        let count = gradients.first().map_or(0, Vec::len);
        // The layers are preconditioned side by side over the pool (faer runs each product
        // on one thread), each in order: nothing depends on the thread count.
        let layers = gradients
            .into_par_iter()
            .zip(preconditioners)
            .map(|(per_query, preconditioner)| {
                let preconditioned: Vec<Mat<f64>> = per_query
                    .iter()
                    .map(|g| g.precondition(preconditioner))
                    .collect();
                let (out_dim, in_dim) = preconditioned
                    .first()
                    .map_or((0, 0), |p| (p.nrows(), p.ncols()));
                let mut columns = Mat::<f64>::zeros(out_dim * in_dim, count);
                for (q, p) in preconditioned.iter().enumerate() {
                    put_column(&mut columns, q, p.as_ref());
                }
                PreconditionedLayer {
                    out_dim,
                    in_dim,
                    columns,
                }
            })
            .collect();
        QueryGradients {
            names,
            count,
            layers,
        }
    }
}

impl QueryGradients {
    /// The memory the preconditioned gradients hold.
    pub fn bytes(&self) -> u128 {
        self.layers
            .iter()
            .map(|l| (l.columns.nrows() * l.columns.ncols() * 8) as u128)
            .sum()
    }

    /// Every query's (preconditioned) gradient as one row, `[M, sum of out x in]`: the layers
    /// in order, each row-major, as a gradient index lays out training examples.
    pub fn concatenated(&self) -> Mat<f64> {
        let dim: usize = self.layers.iter().map(|l| l.columns.nrows()).sum();
        let mut all = Mat::<f64>::zeros(self.count, dim);
        let mut offset = 0;
        for layer in &self.layers {
            for q in 0..self.count {
                let p = layer.query(q);
                for o in 0..layer.out_dim {
                    for i in 0..layer.in_dim {
                        all[(q, offset + o * layer.in_dim + i)] = p[(o, i)];
                    }
                }
            }
            offset += layer.columns.nrows();
        }
        all
    }
}

/// Scores of a batch of examples: `per_layer[l]` is `[M, B]`.
#[derive(Debug, Clone)]
pub struct ScoreMatrix {
    pub per_layer: Vec<Mat<f64>>,
}

impl ScoreMatrix {
    /// Summed over layers, `[M, B]`.
    pub fn total(&self) -> Mat<f64> {
        sum_layers(&self.per_layer)
    }
}

/// Example-level scores of one batch: each example's weight gradient is formed once and
/// contracted with every query in one product.
pub(crate) fn score_examples(queries: &QueryGradients, stacks: &[ModuleStacks]) -> ScoreMatrix {
    let per_layer = queries
        .layers
        .iter()
        .zip(stacks)
        .map(|(layer, stack)| {
            let mut gradients = Mat::<f64>::zeros(layer.columns.nrows(), stack.examples.len());
            for (b, example) in stack.examples.iter().enumerate() {
                // The weight gradient `G^T A` written straight into its column.
                let column = faer::MatMut::from_column_major_slice_mut(
                    gradients.col_as_slice_mut(b),
                    layer.out_dim,
                    layer.in_dim,
                );
                faer::linalg::matmul::matmul(
                    column,
                    faer::Accum::Replace,
                    example.output_grads.transpose(),
                    example.inputs.as_ref(),
                    1.0,
                    faer::Par::Seq,
                );
            }
            layer.columns.transpose() * gradients
        })
        .collect();
    ScoreMatrix { per_layer }
}

/// Token-level scores of one example: per layer `[M, T]`, `s[q, t] = g_t^T P_q a_t`.
pub struct TokenScores {
    pub per_layer: Vec<Mat<f64>>,
}

impl TokenScores {
    /// Summed over layers, `[M, T]`.
    pub fn total(&self) -> Mat<f64> {
        sum_layers(&self.per_layer)
    }
}

/// Token scores of example `b` of a batch.
pub(crate) fn score_tokens(
    queries: &QueryGradients,
    stacks: &[ModuleStacks],
    b: usize,
) -> TokenScores {
    let per_layer = queries
        .layers
        .iter()
        .zip(stacks)
        .map(|(layer, stack)| token_scores(layer, &stack.examples[b], queries.count))
        .collect();
    TokenScores { per_layer }
}

fn token_scores(layer: &PreconditionedLayer, example: &ExampleStack, queries: usize) -> Mat<f64> {
    let mut scores = Mat::<f64>::zeros(queries, example.tokens());
    for q in 0..queries {
        // [T, in]: row t holds (P_q^T g_t).
        let projected = &example.output_grads * layer.query(q);
        for t in 0..example.tokens() {
            let mut sum = 0.0;
            for i in 0..layer.in_dim {
                sum += projected[(t, i)] * example.inputs[(t, i)];
            }
            scores[(q, t)] = sum;
        }
    }
    scores
}

fn sum_layers(layers: &[Mat<f64>]) -> Mat<f64> {
    let mut layers = layers.iter();
    let mut total = layers.next().cloned().unwrap_or_else(|| Mat::zeros(0, 0));
    for layer in layers {
        total += layer;
    }
    total
}
