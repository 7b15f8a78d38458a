//! Token stacks: a tracked layer's per-token inputs and output gradients, one matrix pair per
//! example, in f64.

use faer::Mat;

use crate::model::{LayerActivations, tensor_to_f64};

/// One example's rows for one layer: `inputs` `[T, in(+1 for a bias)]`, `output_grads`
/// `[T, out]`, row t = token t of the sequence.
#[derive(Debug, Clone)]
pub struct ExampleStack {
    pub inputs: Mat<f64>,
    pub output_grads: Mat<f64>,
}

impl ExampleStack {
    pub fn tokens(&self) -> usize {
        self.inputs.nrows()
    }

    /// The example's weight gradient `sum_t g_t a_t^T` `[out, in]`.
    pub(crate) fn weight_grad(&self) -> Mat<f64> {
        self.output_grads.transpose() * &self.inputs
    }
}

/// One tracked layer's stacks for a batch of examples.
#[derive(Debug, Clone)]
pub struct ModuleStacks {
    pub name: String,
    pub examples: Vec<ExampleStack>,
}

impl ModuleStacks {
    pub fn in_dim(&self) -> usize {
        self.examples.first().map_or(0, |e| e.inputs.ncols())
    }

    pub fn out_dim(&self) -> usize {
        self.examples.first().map_or(0, |e| e.output_grads.ncols())
    }
}

/// Split captured activations of a right-padded batch into per-example stacks; example `b`
/// keeps its first `lengths[b]` positions (padding carries no loss and is not counted, as
/// kronfluence does with an attention mask). A bias appends a column of ones to `a`.
pub fn stacks_from_activations(
    activations: Vec<LayerActivations>,
    lengths: &[usize],
) -> Vec<ModuleStacks> {
    activations
        .into_iter()
        .map(|layer| {
            let [batch, seq, in_dim] = layer.inputs.dims();
            let out_dim = layer.output_grads.dims()[2];
            assert_eq!(batch, lengths.len(), "one length per batch row");
            let inputs = tensor_to_f64(layer.inputs);
            let grads = tensor_to_f64(layer.output_grads);
            let bias = usize::from(layer.has_bias);
            let examples = lengths
                .iter()
                .enumerate()
                .map(|(b, &len)| {
                    let a = |t: usize, i: usize| {
                        if i == in_dim {
                            1.0
                        } else {
                            inputs[(b * seq + t) * in_dim + i]
                        }
                    };
                    let g = |t: usize, o: usize| grads[(b * seq + t) * out_dim + o];
                    ExampleStack {
                        inputs: Mat::from_fn(len, in_dim + bias, a),
                        output_grads: Mat::from_fn(len, out_dim, g),
                    }
                })
                .collect();
            ModuleStacks {
                name: layer.name,
                examples,
            }
        })
        .collect()
}
