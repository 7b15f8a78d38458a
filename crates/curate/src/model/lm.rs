//! The Llama-family causal LM as transformers defines it (Llama, Qwen2): RMSNorm, rotary
//! embeddings, grouped-query attention, SwiGLU MLP.
//!
//! Modules are built from a [`TensorSource`] (a checkpoint or a seeded initialiser) by the
//! Hugging Face tensor names, and list the same names back for saving, so one naming scheme
//! covers loading, saving and the tracked-module regex.

use std::sync::Arc;

use burn::module::{Module, Param, ParamId};
use burn::tensor::activation::{log_softmax, silu, softmax};
use burn::tensor::{Bool, DType, Device, Int, Tensor, TensorData};

use super::batch::TokenBatch;
use super::capture::Capture;
use super::config::LmConfig;
use super::fused;
use super::weights::TensorSource;

/// How a parameter is initialised when training from scratch (transformers' `_init_weights`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Init {
    /// Normal(0, initializer_range).
    Normal,
    Zeros,
    Ones,
}

/// One tensor of the checkpoint: its Hugging Face name, shape and initialiser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
}

/// The checkpoint's key map: every tensor the model reads, in a fixed order (which also fixes
/// the parameter ids, so optimizer state survives a save and reload).
pub(crate) fn tensor_specs(config: &LmConfig) -> Vec<TensorSpec> {
    let h = config.hidden_size;
    let q = config.num_heads * config.head_dim;
    let kv = config.num_kv_heads * config.head_dim;
    let i = config.intermediate_size;
    let mut specs = Vec::new();
    let mut push =
        |name: String, shape: Vec<usize>, init: Init| specs.push(TensorSpec { name, shape, init });
    push(
        "model.embed_tokens.weight".into(),
        vec![config.vocab_size, h],
        Init::Normal,
    );
    for layer in 0..config.num_layers {
        let p = format!("model.layers.{layer}");
        let linears = [
            ("self_attn.q_proj", q, h, config.qkv_bias),
            ("self_attn.k_proj", kv, h, config.qkv_bias),
            ("self_attn.v_proj", kv, h, config.qkv_bias),
            ("self_attn.o_proj", h, q, config.o_bias),
            ("mlp.gate_proj", i, h, config.mlp_bias),
            ("mlp.up_proj", i, h, config.mlp_bias),
            ("mlp.down_proj", h, i, config.mlp_bias),
        ];
        push(format!("{p}.input_layernorm.weight"), vec![h], Init::Ones);
        for (name, out, inp, bias) in linears {
            push(format!("{p}.{name}.weight"), vec![out, inp], Init::Normal);
            if bias {
                push(format!("{p}.{name}.bias"), vec![out], Init::Zeros);
            }
        }
        push(
            format!("{p}.post_attention_layernorm.weight"),
            vec![h],
            Init::Ones,
        );
    }
    push("model.norm.weight".into(), vec![h], Init::Ones);
    if !config.tie_word_embeddings {
        push(
            "lm_head.weight".into(),
            vec![config.vocab_size, h],
            Init::Normal,
        );
    }
    specs
}

/// A linear layer in PyTorch layout (`weight` is out x in), named so it can be tracked.
#[derive(Module, Debug)]
pub struct Linear {
    pub name: String,
    pub weight: Param<Tensor<2>>,
    pub bias: Option<Param<Tensor<1>>>,
}

impl Linear {
    fn load(source: &mut TensorSource, name: &str, bias: bool) -> anyhow::Result<Self> {
        Ok(Linear {
            name: name.to_string(),
            weight: source.param(&format!("{name}.weight"))?,
            bias: if bias {
                Some(source.param(&format!("{name}.bias"))?)
            } else {
                None
            },
        })
    }

    pub(crate) fn out_features(&self) -> usize {
        self.weight.shape()[0]
    }

    /// `y = x W^T + b`; a tracked layer adds its zero probe to `y` and keeps `x`.
    pub fn forward(&self, input: Tensor<3>, capture: &mut Capture) -> Tensor<3> {
        let [batch, seq, features] = input.dims();
        let flat = input.clone().reshape([batch * seq, features]);
        let mut output = if fused::applies(&flat.device(), flat.dtype()) {
            fused::linear(flat, self.weight.val())
        } else {
            flat.matmul(self.weight.val().transpose())
        };
        if let Some(bias) = &self.bias {
            output = output + bias.val().unsqueeze_dim(0);
        }
        let output = output.reshape([batch, seq, self.out_features()]);
        capture.observe(&self.name, self.bias.is_some(), input, output)
    }

    fn tensors(&self, out: &mut Vec<(String, Tensor<2>)>) {
        out.push((format!("{}.weight", self.name), self.weight.val()));
        if let Some(bias) = &self.bias {
            out.push((format!("{}.bias", self.name), bias.val().unsqueeze_dim(0)));
        }
    }
}

/// RMSNorm as transformers computes it: `w * x / sqrt(mean(x^2) + eps)`.
#[derive(Module, Debug)]
pub struct RmsNorm {
    pub name: String,
    pub weight: Param<Tensor<1>>,
    pub eps: f64,
}

impl RmsNorm {
    fn load(source: &mut TensorSource, name: &str, eps: f64) -> anyhow::Result<Self> {
        Ok(RmsNorm {
            name: name.to_string(),
            weight: source.param(&format!("{name}.weight"))?,
            eps,
        })
    }

    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        if fused::applies(&x.device(), x.dtype()) {
            return fused::rms_norm(x, self.weight.val(), self.eps);
        }
        let rms = x.clone().square().mean_dim(2).add_scalar(self.eps).sqrt();
        (x / rms) * self.weight.val().unsqueeze_dim::<2>(0).unsqueeze_dim(0)
    }

    fn tensors(&self, out: &mut Vec<(String, Tensor<2>)>) {
        out.push((
            format!("{}.weight", self.name),
            self.weight.val().unsqueeze_dim(0),
        ));
    }
}

#[derive(Module, Debug)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

/// Per-batch tensors every layer shares: rotary tables and the attention mask.
pub(crate) struct LayerInputs {
    /// `[B, 1, T, head_dim]`, the halves repeated as transformers does.
    cos: Tensor<4>,
    sin: Tensor<4>,
    /// The same tables as `[B, T, head_dim]` values, for the fused rotary embedding.
    cos_rows: Arc<[f32]>,
    sin_rows: Arc<[f32]>,
    /// `[B, 1, T, T]`, true where a query may not see a key (future or padding).
    masked: Tensor<4, Bool>,
    /// The same mask as `[B, T, T]` values, for the fused softmax.
    masked_rows: Arc<[bool]>,
    /// Most negative finite value of the compute dtype: a fully masked row stays finite.
    mask_value: f64,
}

fn rotate_half(x: Tensor<4>) -> Tensor<4> {
    let half = x.dims()[3] / 2;
    let first = x.clone().narrow(3, 0, half);
    let second = x.narrow(3, half, half);
    Tensor::cat(vec![second.neg(), first], 3)
}

impl Attention {
    /// With `cache`, the keys and values of earlier tokens are read from it and this call's
    /// appended, so `x` holds only the new tokens.
    fn forward(
        &self,
        x: Tensor<3>,
        shared: &LayerInputs,
        capture: &mut Capture,
        cache: Option<&mut Option<(Tensor<4>, Tensor<4>)>>,
    ) -> Tensor<3> {
        let [batch, seq, _] = x.dims();
        // `[B, T, H, D]`, as the projection writes it.
        let heads = |t: Tensor<3>, n: usize| t.reshape([batch, seq, n, self.head_dim]);
        let q = heads(self.q_proj.forward(x.clone(), capture), self.num_heads);
        let k = heads(self.k_proj.forward(x.clone(), capture), self.num_kv_heads);
        let mut v = heads(self.v_proj.forward(x, capture), self.num_kv_heads).swap_dims(1, 2);

        // Rotated, as `[B, H, T, D]`.
        let (q, mut k) =
            if fused::applies(&q.device(), q.dtype()) && self.head_dim.is_multiple_of(2) {
                let (cos, sin) = (&shared.cos_rows, &shared.sin_rows);
                (
                    fused::rotary(q, cos.clone(), sin.clone()),
                    fused::rotary(k, cos.clone(), sin.clone()),
                )
            } else {
                let rotate = |t: Tensor<4>| {
                    let t = t.swap_dims(1, 2);
                    t.clone() * shared.cos.clone() + rotate_half(t) * shared.sin.clone()
                };
                (rotate(q), rotate(k))
            };
        if let Some(cache) = cache {
            if let Some((past_k, past_v)) = cache.take() {
                k = Tensor::cat(vec![past_k, k], 2);
                v = Tensor::cat(vec![past_v, v], 2);
            }
            *cache = Some((k.clone(), v.clone()));
        }
        let keys = k.dims()[2];
        // Grouped-query attention: query head `h` reads key/value head `h / group`. Heads are
        // stored group by group, so the `group` query heads of one key/value head are one
        // `[group * T, D]` block: one product per key/value head, no repeated keys or values.
        let group = self.num_heads / self.num_kv_heads;
        let kv_heads = self.num_kv_heads;
        let d = self.head_dim;
        let scale = 1.0 / (d as f64).sqrt();
        let scores = q
            .reshape([batch, kv_heads, group * seq, d])
            .matmul(k.swap_dims(2, 3))
            .reshape([batch, self.num_heads, seq, keys]);
        let weights = if fused::applies(&scores.device(), scores.dtype()) {
            fused::masked_softmax(scores, scale, shared.masked_rows.clone())
        } else {
            let scores = scores.mul_scalar(scale).mask_fill(
                shared
                    .masked
                    .clone()
                    .expand([batch, self.num_heads, seq, keys]),
                shared.mask_value,
            );
            softmax(scores, 3)
        };
        let context = weights
            .reshape([batch, kv_heads, group * seq, keys])
            .matmul(v)
            .reshape([batch, self.num_heads, seq, d])
            .swap_dims(1, 2)
            .reshape([batch, seq, self.num_heads * d]);
        self.o_proj.forward(context, capture)
    }
}

#[derive(Module, Debug)]
pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

impl Mlp {
    fn forward(&self, x: Tensor<3>, capture: &mut Capture) -> Tensor<3> {
        let gate = self.gate_proj.forward(x.clone(), capture);
        let up = self.up_proj.forward(x, capture);
        let hidden = if fused::applies(&gate.device(), gate.dtype()) {
            fused::swiglu(gate, up)
        } else {
            silu(gate) * up
        };
        self.down_proj.forward(hidden, capture)
    }
}

#[derive(Module, Debug)]
pub struct DecoderLayer {
    pub input_layernorm: RmsNorm,
    pub self_attn: Attention,
    pub post_attention_layernorm: RmsNorm,
    pub mlp: Mlp,
}

impl DecoderLayer {
    fn forward(
        &self,
        x: Tensor<3>,
        shared: &LayerInputs,
        capture: &mut Capture,
        cache: Option<&mut Option<(Tensor<4>, Tensor<4>)>>,
    ) -> Tensor<3> {
        let attended = self.self_attn.forward(
            self.input_layernorm.forward(x.clone()),
            shared,
            capture,
            cache,
        );
        let x = x + attended;
        let mlp = self
            .mlp
            .forward(self.post_attention_layernorm.forward(x.clone()), capture);
        x + mlp
    }
}

/// The keys and values of every layer for the tokens seen so far, so decoding feeds only the
/// new token each step.
pub(crate) struct KvCache {
    layers: Vec<Option<(Tensor<4>, Tensor<4>)>>,
    /// Per row: which cached positions are real tokens (false for left padding).
    key_mask: Vec<Vec<bool>>,
    /// Per row: the rotary position of its next real token.
    next_position: Vec<usize>,
}

impl KvCache {
    pub(crate) fn new(model: &CausalLm, rows: usize) -> Self {
        KvCache {
            layers: vec![None; model.layers.len()],
            key_mask: vec![Vec::new(); rows],
            next_position: vec![0; rows],
        }
    }

    pub(crate) fn rows(&self) -> usize {
        self.next_position.len()
    }
}

/// The positions of a batch whose next token carries a label (logits at `t` score the label
/// at `t + 1`), in row-major order.
pub(crate) struct ScoredPositions {
    /// `row * T + t` of each scored position.
    pub(crate) flat: Vec<i64>,
    /// The batch row of each.
    pub(crate) row: Vec<usize>,
    /// The label each scores.
    pub(crate) targets: Vec<i64>,
    /// Rows in the batch.
    pub(crate) rows: usize,
}

impl ScoredPositions {
    pub(crate) fn of(batch: &TokenBatch) -> Self {
        let t = batch.seq;
        let mut scored = ScoredPositions {
            flat: Vec::new(),
            row: Vec::new(),
            targets: Vec::new(),
            rows: batch.batch,
        };
        for row in 0..batch.batch {
            for position in 1..t {
                let label = batch.labels[row * t + position];
                if label != super::IGNORE_INDEX {
                    scored.flat.push((row * t + position - 1) as i64);
                    scored.row.push(row);
                    scored.targets.push(label);
                }
            }
        }
        scored
    }
}

/// The whole causal LM.
#[derive(Module, Debug)]
pub struct CausalLm {
    pub embed_tokens: Param<Tensor<2>>,
    pub layers: Vec<DecoderLayer>,
    pub norm: RmsNorm,
    /// `None` when the output projection is tied to the embeddings.
    pub lm_head: Option<Param<Tensor<2>>>,
    pub rope_theta: f64,
}

impl CausalLm {
    /// Build the model from a checkpoint or an initialiser; every tensor of
    /// [`tensor_specs`] is taken from `source`.
    pub fn build(config: &LmConfig, source: &mut TensorSource) -> anyhow::Result<Self> {
        let embed_tokens = source.param("model.embed_tokens.weight")?;
        let mut layers = Vec::with_capacity(config.num_layers);
        for layer in 0..config.num_layers {
            let p = format!("model.layers.{layer}");
            let linear = |source: &mut TensorSource, name: &str, bias: bool| {
                Linear::load(source, &format!("{p}.{name}"), bias)
            };
            layers.push(DecoderLayer {
                input_layernorm: RmsNorm::load(
                    source,
                    &format!("{p}.input_layernorm"),
                    config.rms_norm_eps,
                )?,
                self_attn: Attention {
                    q_proj: linear(source, "self_attn.q_proj", config.qkv_bias)?,
                    k_proj: linear(source, "self_attn.k_proj", config.qkv_bias)?,
                    v_proj: linear(source, "self_attn.v_proj", config.qkv_bias)?,
                    o_proj: linear(source, "self_attn.o_proj", config.o_bias)?,
                    num_heads: config.num_heads,
                    num_kv_heads: config.num_kv_heads,
                    head_dim: config.head_dim,
                },
                mlp: Mlp {
                    gate_proj: linear(source, "mlp.gate_proj", config.mlp_bias)?,
                    up_proj: linear(source, "mlp.up_proj", config.mlp_bias)?,
                    down_proj: linear(source, "mlp.down_proj", config.mlp_bias)?,
                },
                post_attention_layernorm: RmsNorm::load(
                    source,
                    &format!("{p}.post_attention_layernorm"),
                    config.rms_norm_eps,
                )?,
            });
        }
        let norm = RmsNorm::load(source, "model.norm", config.rms_norm_eps)?;
        let lm_head = if config.tie_word_embeddings {
            None
        } else {
            Some(source.param("lm_head.weight")?)
        };
        Ok(CausalLm {
            embed_tokens,
            layers,
            norm,
            lm_head,
            rope_theta: config.rope_theta,
        })
    }

    /// Every tensor under its Hugging Face name, 1-d tensors as `[1, n]` (the saver squeezes).
    pub(crate) fn named_tensors(&self) -> Vec<(String, Tensor<2>)> {
        let mut out = vec![(
            "model.embed_tokens.weight".to_string(),
            self.embed_tokens.val(),
        )];
        for layer in &self.layers {
            layer.input_layernorm.tensors(&mut out);
            let attn = &layer.self_attn;
            for linear in [&attn.q_proj, &attn.k_proj, &attn.v_proj, &attn.o_proj] {
                linear.tensors(&mut out);
            }
            layer.post_attention_layernorm.tensors(&mut out);
            for linear in [
                &layer.mlp.gate_proj,
                &layer.mlp.up_proj,
                &layer.mlp.down_proj,
            ] {
                linear.tensors(&mut out);
            }
        }
        self.norm.tensors(&mut out);
        if let Some(head) = &self.lm_head {
            out.push(("lm_head.weight".to_string(), head.val()));
        }
        out
    }

    /// Every `Linear` in forward order (the modules `--modules` can track).
    pub fn linears(&self) -> Vec<&Linear> {
        let mut out = Vec::new();
        for layer in &self.layers {
            let attn = &layer.self_attn;
            out.extend([&attn.q_proj, &attn.k_proj, &attn.v_proj, &attn.o_proj]);
            out.extend([
                &layer.mlp.gate_proj,
                &layer.mlp.up_proj,
                &layer.mlp.down_proj,
            ]);
        }
        out
    }

    pub fn device(&self) -> Device {
        self.embed_tokens.val().device()
    }

    pub fn dtype(&self) -> DType {
        self.embed_tokens.val().dtype()
    }

    pub fn vocab_size(&self) -> usize {
        self.embed_tokens.shape()[0]
    }

    /// Logits `[B, T, vocab]` for a right- or left-padded batch.
    pub fn forward(&self, batch: &TokenBatch, capture: &mut Capture) -> Tensor<3> {
        let x = self.hidden(batch, capture);
        self.project(x)
    }

    /// Summed next-token cross-entropy of each sequence `[B]`, as [`CausalLm::sequence_losses`]
    /// of [`CausalLm::forward`], but the final norm, the output projection and the log-softmax
    /// run only at the positions whose next token carries a label: prompt, system and padding
    /// positions never become `vocab`-wide rows. The gradient reaching every layer is the
    /// same, since positions without a label add nothing to the loss.
    pub fn forward_losses(&self, batch: &TokenBatch, capture: &mut Capture) -> Tensor<1> {
        let hidden = self.hidden(batch, capture);
        let scored = ScoredPositions::of(batch);
        let logits = self.scored_logits(hidden, &scored);
        self.scored_losses(logits, &scored, &scored.targets)
    }

    /// Logits `[N, vocab]` at the `N` scored positions of `hidden` (`[B, T, H]`, before the final
    /// norm, which is per position and so commutes with the selection).
    pub(crate) fn scored_logits(&self, hidden: Tensor<3>, scored: &ScoredPositions) -> Tensor<2> {
        let [b, t, h] = hidden.dims();
        let device = hidden.device();
        let n = scored.flat.len();
        if n == 0 {
            return Tensor::zeros([0, self.vocab_size()], (&device, hidden.dtype()));
        }
        let index = Tensor::<1, Int>::from_data(TensorData::new(scored.flat.clone(), [n]), &device);
        let rows = hidden
            .reshape([b * t, h])
            .select(0, index)
            .reshape([1, n, h]);
        let rows = self.norm.forward(rows).reshape([n, h]);
        if fused::applies(&rows.device(), rows.dtype()) {
            return fused::linear(rows, self.head());
        }
        rows.matmul(self.head().transpose())
    }

    /// Each sequence's summed loss `[B]` from the logits at its scored positions, for the
    /// given targets (the labels, or labels drawn from the model).
    pub(crate) fn scored_losses(
        &self,
        logits: Tensor<2>,
        scored: &ScoredPositions,
        targets: &[i64],
    ) -> Tensor<1> {
        let device = logits.device();
        let dtype = logits.dtype();
        let (b, n) = (scored.rows, scored.flat.len());
        if n == 0 {
            return Tensor::zeros([b], (&device, dtype));
        }
        // Per-sequence sums as one small product: a row's one-hot over its positions.
        let mut membership = vec![0.0f64; b * n];
        for (i, &row) in scored.row.iter().enumerate() {
            membership[row * n + i] = 1.0;
        }
        let membership =
            Tensor::<2>::from_data(TensorData::new(membership, [b, n]), (&device, dtype));
        if fused::applies(&device, dtype) {
            let losses = fused::cross_entropy(logits, targets.into());
            return membership.matmul(losses.reshape([n, 1])).reshape([b]);
        }
        let targets =
            Tensor::<2, Int>::from_data(TensorData::new(targets.to_vec(), [n, 1]), &device);
        let picked = log_softmax(logits, 1).gather(1, targets); // [N, 1]
        membership.matmul(picked).reshape([b]).neg()
    }

    /// Hidden states after the last decoder layer `[B, T, H]`, before the final norm.
    pub(crate) fn hidden(&self, batch: &TokenBatch, capture: &mut Capture) -> Tensor<3> {
        let device = self.device();
        let dtype = self.dtype();
        let (b, t) = (batch.batch, batch.seq);
        let positions: Vec<usize> = batch.positions().iter().map(|&p| p as usize).collect();
        let mut masked = Vec::with_capacity(b * t * t);
        for row in 0..b {
            for query in 0..t {
                for key in 0..t {
                    masked.push(key > query || !batch.attention_mask[row * t + key]);
                }
            }
        }
        let shared = self.layer_inputs(&positions, masked, [b, t, t], &device, dtype);
        let ids = Tensor::<2, Int>::from_data(
            TensorData::new(batch.input_ids.clone(), [batch.batch, batch.seq]),
            &device,
        );
        let mut x = burn::tensor::module::embedding(self.embed_tokens.val(), ids);
        for layer in &self.layers {
            x = layer.forward(x, &shared, capture, None);
        }
        x
    }

    /// Logits `[B, S, vocab]` of `S` new tokens per row (`ids`, row-major; `real` false for
    /// left padding) that follow the tokens `cache` holds, which they are appended to. Equal to
    /// the last `S` positions of [`CausalLm::forward`] over the whole sequences.
    pub(crate) fn forward_cached(
        &self,
        ids: &[i64],
        real: &[bool],
        cache: &mut KvCache,
    ) -> Tensor<3> {
        let device = self.device();
        let dtype = self.dtype();
        let b = cache.rows();
        let s = ids.len() / b.max(1);
        let past = cache.key_mask.first().map_or(0, Vec::len);
        let keys = past + s;
        let mut positions = Vec::with_capacity(b * s);
        for row in 0..b {
            for step in 0..s {
                let is_real = real[row * s + step];
                positions.push(cache.next_position[row]);
                cache.key_mask[row].push(is_real);
                if is_real {
                    cache.next_position[row] += 1;
                }
            }
        }
        let mut masked = Vec::with_capacity(b * s * keys);
        for row in 0..b {
            for step in 0..s {
                for key in 0..keys {
                    masked.push(key > past + step || !cache.key_mask[row][key]);
                }
            }
        }
        let shared = self.layer_inputs(&positions, masked, [b, s, keys], &device, dtype);
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids.to_vec(), [b, s]), &device);
        let mut x = burn::tensor::module::embedding(self.embed_tokens.val(), ids);
        for (layer, entry) in self.layers.iter().zip(cache.layers.iter_mut()) {
            x = layer.forward(x, &shared, &mut Capture::none(), Some(entry));
        }
        self.project(x)
    }

    /// The output projection `[vocab, hidden]`: its own weight, or the tied embedding.
    fn head(&self) -> Tensor<2> {
        match &self.lm_head {
            Some(head) => head.val(),
            None => self.embed_tokens.val(),
        }
    }

    /// The final norm and the output projection.
    fn project(&self, x: Tensor<3>) -> Tensor<3> {
        let x = self.norm.forward(x);
        let [b, t, h] = x.dims();
        x.reshape([b * t, h])
            .matmul(self.head().transpose())
            .reshape([b, t, self.vocab_size()])
    }

    /// Summed next-token cross-entropy of each sequence `[B]`: logits at t score labels at t+1,
    /// labels of -100 are skipped (transformers' shift, without its mean).
    pub fn sequence_losses(&self, logits: Tensor<3>, batch: &TokenBatch) -> Tensor<1> {
        let [b, t, v] = logits.dims();
        if t < 2 {
            return Tensor::zeros([b], (&logits.device(), logits.dtype()));
        }
        let device = logits.device();
        let (targets, weights) = batch.shifted_targets();
        let targets = Tensor::<3, Int>::from_data(TensorData::new(targets, [b, t - 1, 1]), &device);
        let weights = Tensor::<2>::from_data(
            TensorData::new(weights, [b, t - 1]),
            (&device, logits.dtype()),
        );
        let log_probs = log_softmax(logits.narrow(1, 0, t - 1), 2);
        debug_assert_eq!(log_probs.dims()[2], v);
        let picked = log_probs.gather(2, targets).reshape([b, t - 1]);
        (picked * weights).sum_dim(1).reshape([b]).neg()
    }

    /// Rotary tables for `positions` (`[B * T]`) and the attention mask `masked`
    /// (`[B * T * keys]`, true where a query may not see a key); `shape` is `[B, T, keys]`.
    fn layer_inputs(
        &self,
        positions: &[usize],
        masked: Vec<bool>,
        shape: [usize; 3],
        device: &Device,
        dtype: DType,
    ) -> LayerInputs {
        let head_dim = self.layers.first().map_or(2, |l| l.self_attn.head_dim);
        let [b, t, keys] = shape;
        // transformers computes the angles in float32: inv_freq, then position * inv_freq.
        let inv_freq: Vec<f32> = (0..head_dim / 2)
            .map(|i| (1.0 / self.rope_theta.powf((2 * i) as f64 / head_dim as f64)) as f32)
            .collect();
        // Rows share positions (0, 1, ... in every row of a batch): each is computed once.
        let mut rows: std::collections::HashMap<usize, (Vec<f32>, Vec<f32>)> = Default::default();
        let mut cos = Vec::with_capacity(b * t * head_dim);
        let mut sin = Vec::with_capacity(b * t * head_dim);
        for &position in positions {
            let (cos_row, sin_row) = rows.entry(position).or_insert_with(|| {
                let angles = || inv_freq.iter().map(|&f| position as f32 * f);
                (
                    angles().map(f32::cos).collect(),
                    angles().map(f32::sin).collect(),
                )
            });
            for _ in 0..2 {
                cos.extend_from_slice(cos_row);
                sin.extend_from_slice(sin_row);
            }
        }
        let table = |values: &[f32]| {
            let values: Vec<f64> = values.iter().map(|&v| v as f64).collect();
            Tensor::<4>::from_data(
                TensorData::new(values, [b, 1, t, head_dim]),
                (device, dtype),
            )
        };
        let mask_value = match dtype {
            DType::F64 => f64::MIN,
            DType::F16 => -65504.0,
            _ => f32::MIN as f64,
        };
        LayerInputs {
            cos: table(&cos),
            sin: table(&sin),
            cos_rows: cos.into(),
            sin_rows: sin.into(),
            masked_rows: masked.as_slice().into(),
            masked: Tensor::<4, Bool>::from_data(TensorData::new(masked, [b, 1, t, keys]), device),
            mask_value,
        }
    }

    /// Parameter ids follow the key map order, so optimizer state can be matched after reload.
    pub(crate) fn param_id(index: usize) -> ParamId {
        ParamId::from(index as u64 + 1)
    }
}
