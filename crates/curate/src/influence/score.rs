//! Scoring: preconditioned query gradients contracted with training gradients, per example or
//! per token. Token scores `s_t = g_t^T P_q a_t` sum to the example score `<P_q, sum_t g_t a_t^T>`.

use faer::Mat;

use super::{ExampleStack, ModulePreconditioner, ModuleStacks};

/// One layer's preconditioned query gradients `P_q` `[out, in]`, laid out for both contractions.
#[derive(Debug, Clone)]
struct PreconditionedLayer {
    in_dim: usize,
    /// `[M, out*in]`, row q = `P_q` flattened row-major.
    flat: Mat<f64>,
    /// `[out, M*in]` = `[P_1 | ... | P_M]`.
    wide: Mat<f64>,
}

/// Preconditioned gradients of every query (or of one aggregated query), per layer.
#[derive(Debug, Clone)]
pub struct QueryGradients {
    pub names: Vec<String>,
    pub count: usize,
    layers: Vec<PreconditionedLayer>,
}

impl QueryGradients {
    /// From raw per-query weight gradients `[layer][query]` and each layer's preconditioner.
    pub fn new(
        names: Vec<String>,
        gradients: Vec<Vec<Mat<f64>>>,
        preconditioners: &[ModulePreconditioner],
    ) -> QueryGradients {
        let count = gradients.first().map_or(0, Vec::len);
        let layers = gradients
            .into_iter()
            .zip(preconditioners)
            .map(|(per_query, preconditioner)| {
                let preconditioned: Vec<Mat<f64>> =
                    per_query.iter().map(|g| preconditioner.apply(g)).collect();
                let (out_dim, in_dim) = preconditioned
                    .first()
                    .map_or((0, 0), |p| (p.nrows(), p.ncols()));
                let flat = Mat::from_fn(count, out_dim * in_dim, |q, k| {
                    preconditioned[q][(k / in_dim, k % in_dim)]
                });
                let wide = Mat::from_fn(out_dim, count * in_dim, |o, k| {
                    preconditioned[k / in_dim][(o, k % in_dim)]
                });
                PreconditionedLayer { in_dim, flat, wide }
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
    /// Every query's (preconditioned) gradient as one row, `[M, sum of out x in]`: the layers
    /// in order, each row-major, as a gradient index lays out training examples.
    pub fn concatenated(&self) -> Mat<f64> {
        let dim: usize = self.layers.iter().map(|l| l.flat.ncols()).sum();
        let mut all = Mat::<f64>::zeros(self.count, dim);
        let mut offset = 0;
        for layer in &self.layers {
            let width = layer.flat.ncols();
            all.submatrix_mut(0, offset, self.count, width)
                .copy_from(layer.flat.as_ref());
            offset += width;
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
            let in_dim = layer.in_dim;
            let size = layer.flat.ncols();
            let mut flat = Mat::<f64>::zeros(size, stack.examples.len());
            for (b, example) in stack.examples.iter().enumerate() {
                let gradient = example.weight_grad();
                let mut column = flat.col_mut(b);
                for k in 0..size {
                    column[k] = gradient[(k / in_dim, k % in_dim)];
                }
            }
            &layer.flat * flat
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
    let in_dim = layer.in_dim;
    // [T, M*in]: row t holds (P_q^T g_t) for every q.
    let projected = &example.output_grads * &layer.wide;
    Mat::from_fn(queries, example.tokens(), |q, t| {
        let mut sum = 0.0;
        for i in 0..in_dim {
            sum += projected[(t, q * in_dim + i)] * example.inputs[(t, i)];
        }
        sum
    })
}

fn sum_layers(layers: &[Mat<f64>]) -> Mat<f64> {
    let mut layers = layers.iter();
    let mut total = layers.next().cloned().unwrap_or_else(|| Mat::zeros(0, 0));
    for layer in layers {
        total += layer;
    }
    total
}
