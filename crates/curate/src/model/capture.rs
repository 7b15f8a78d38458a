//! Per-example gradient capture for tracked `Linear` layers by the zero-probe method.
//!
//! burn keeps no gradient for intermediate tensors and has no vmap. A tracked layer adds a
//! zero leaf tensor that requires grad to its output `y` and keeps its input `a`. One backward
//! pass of the summed per-sequence loss then yields `g = dL/dy` for every example at once (the
//! examples of a batch share no terms), and the per-example weight gradient is
//! `sum_t g_t a_t^T` (with a 1 appended to `a` for a bias).

use burn::tensor::{Gradients, Tensor};
use regex::Regex;

/// The default tracked modules, as in Infra and kronfluence's LM examples.
pub const DEFAULT_TRACKED: &str = r"mlp\.(gate|up|down)_proj";

/// Collects inputs and probes of the layers whose name matches a pattern during one forward.
pub struct Capture {
    pattern: Option<Regex>,
    layers: Vec<ProbedLayer>,
}

struct ProbedLayer {
    name: String,
    has_bias: bool,
    input: Tensor<3>,
    probe: Tensor<3>,
}

/// A tracked layer's per-token inputs `a` `[B, T, in]` and output gradients `g` `[B, T, out]`.
#[derive(Debug, Clone)]
pub struct LayerActivations {
    pub name: String,
    pub has_bias: bool,
    pub inputs: Tensor<3>,
    pub output_grads: Tensor<3>,
}

impl Capture {
    /// Track nothing (plain forward).
    pub fn none() -> Self {
        Capture {
            pattern: None,
            layers: Vec::new(),
        }
    }

    /// Track every `Linear` whose Hugging Face name contains a match of `pattern`.
    pub fn tracking(pattern: Regex) -> Self {
        Capture {
            pattern: Some(pattern),
            layers: Vec::new(),
        }
    }

    /// No layer was tracked during the forward pass.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    pub(crate) fn tracks(&self, name: &str) -> bool {
        self.pattern.as_ref().is_some_and(|p| p.is_match(name))
    }

    /// Called by every `Linear` with its input and output; returns the output to use.
    pub(crate) fn observe(
        &mut self,
        name: &str,
        has_bias: bool,
        input: Tensor<3>,
        output: Tensor<3>,
    ) -> Tensor<3> {
        if !self.tracks(name) {
            return output;
        }
        let probe = Tensor::zeros(output.dims(), (&output.device(), output.dtype())).require_grad();
        self.layers.push(ProbedLayer {
            name: name.to_string(),
            has_bias,
            input: input.detach(),
            probe: probe.clone(),
        });
        output + probe
    }

    /// After `backward`, each tracked layer's `a` and `g`, in forward order. Tensors leave the
    /// autodiff graph.
    pub fn into_activations(self, grads: &Gradients) -> Vec<LayerActivations> {
        self.layers
            .into_iter()
            .map(|layer| {
                let output_grads = layer
                    .probe
                    .grad(grads)
                    .unwrap_or_else(|| layer.probe.zeros_like().inner());
                LayerActivations {
                    name: layer.name,
                    has_bias: layer.has_bias,
                    inputs: layer.input.inner(),
                    output_grads,
                }
            })
            .collect()
    }
}

impl LayerActivations {
    /// Inputs with a column of ones appended when the layer has a bias, `[B, T, in(+1)]`.
    pub(crate) fn augmented_inputs(&self) -> Tensor<3> {
        if !self.has_bias {
            return self.inputs.clone();
        }
        let [b, t, _] = self.inputs.dims();
        let ones = Tensor::ones([b, t, 1], (&self.inputs.device(), self.inputs.dtype()));
        Tensor::cat(vec![self.inputs.clone(), ones], 2)
    }

    /// Per-example gradient of the layer's weight (and bias, as the last column):
    /// `G_n = sum_t g_t a_t^T`, `[B, out, in(+1)]`. Materialises B x out x in; influence
    /// contracts `g` and `a` directly instead where it can.
    pub fn per_example_weight_grads(&self) -> Tensor<3> {
        self.output_grads
            .clone()
            .swap_dims(1, 2)
            .matmul(self.augmented_inputs())
    }
}
