//! The model's row-wise steps as single kernels with their gradients written by hand: RMSNorm,
//! SwiGLU, rotary embeddings, the attention's scaled and masked softmax, and the cross-entropy of
//! the head's logits; and the linear layers' products written straight into their outputs.
//!
//! Composed from burn's tensor operations, each of these is a chain of element-wise operations
//! (RMSNorm alone is six), every link a full-size tensor that autodiff keeps for the backward
//! pass, and burn-flex runs element-wise operations on one thread. Here each step is one pass
//! over the rows, spread over the rayon pool in blocks of a fixed size, so every result is
//! computed in the same order whatever the thread count. Masked attention scores are skipped
//! instead of being exponentiated from the most negative float (libm's slow underflow path), and
//! the cross-entropy keeps one `[N, vocab]` tensor, the probabilities, which its backward pass
//! turns into the gradient in place.
//!
//! The kernels themselves are in [`super::kernels`]. Only the flex backend in f32 runs them
//! ([`applies`]); LibTorch and other dtypes run the composed operations, which stay the
//! reference the kernels are tested against.

#[cfg(test)]
use std::cell::Cell;
use std::sync::Arc;

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, Flex, backend_extension};
use burn::tensor::{DType, Device, Shape, Tensor, TensorData};

use super::kernels::{
    HeadShape, ScoreShape, cross_entropy_backward, cross_entropy_forward, masked_softmax_backward,
    masked_softmax_forward, rms_norm_backward, rms_norm_forward, rotary_backward, rotary_forward,
    swiglu_backward, swiglu_forward,
};

#[cfg(test)]
thread_local! {
    static COMPOSED_ONLY: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with the kernels switched off on this thread, so the composed operations run:
/// what tests compare the kernels against.
#[cfg(test)]
pub(crate) fn with_composed_ops<T>(f: impl FnOnce() -> T) -> T {
    let before = COMPOSED_ONLY.with(|c| c.replace(true));
    let out = f();
    COMPOSED_ONLY.with(|c| c.set(before));
    out
}

/// Whether the kernels run for a tensor: f32 on the flex backend (with or without autodiff).
pub(crate) fn applies(device: &Device, dtype: DType) -> bool {
    #[cfg(test)]
    if COMPOSED_ONLY.with(Cell::get) {
        return false;
    }
    dtype == DType::F32 && device.clone().without_autodiff() == Device::flex()
}

#[backend_extension(Flex, Autodiff)]
pub trait FusedOps: Backend {
    /// `w * x / sqrt(mean(x^2) + eps)` over the last dimension.
    fn fused_rms_norm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self>;

    /// `silu(gate) * up`.
    fn fused_swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self>;

    /// Softmax over the last dimension of `scale * scores` (`[B, H, T, K]`), where `masked`
    /// (`[B, T, K]`, shared by the heads) is true the weight is 0; a row with every key masked
    /// is uniform, as softmax over the most negative finite value gives.
    fn fused_masked_softmax(
        scores: FloatTensor<Self>,
        scale: f64,
        masked: Arc<[bool]>,
    ) -> FloatTensor<Self>;

    /// Rotary embeddings of `x` (`[B, T, H, D]`, as a projection writes it) with the tables
    /// `cos` and `sin` (`[B, T, D]`), returned as `[B, H, T, D]`, as attention reads it.
    fn fused_rotary(x: FloatTensor<Self>, cos: Arc<[f32]>, sin: Arc<[f32]>) -> FloatTensor<Self>;

    /// `-log softmax(logits)[target]` of each row of `logits` (`[N, V]`): `[N]`.
    fn fused_cross_entropy(logits: FloatTensor<Self>, targets: Arc<[i64]>) -> FloatTensor<Self>;

    /// `x W^T` for `x` `[M, K]` and `weight` `[N, K]`: `[M, N]`.
    fn fused_linear(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// [`FusedOps::fused_rms_norm`] on high-level tensors.
pub(crate) fn rms_norm<const D: usize>(x: Tensor<D>, weight: Tensor<1>, eps: f64) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::fused_rms_norm(
        x.into_dispatch(),
        weight.into_dispatch(),
        eps,
    ))
}

/// [`FusedOps::fused_swiglu`] on high-level tensors.
pub(crate) fn swiglu<const D: usize>(gate: Tensor<D>, up: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::fused_swiglu(
        gate.into_dispatch(),
        up.into_dispatch(),
    ))
}

/// [`FusedOps::fused_masked_softmax`] on high-level tensors.
pub(crate) fn masked_softmax(scores: Tensor<4>, scale: f64, masked: Arc<[bool]>) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::fused_masked_softmax(
        scores.into_dispatch(),
        scale,
        masked,
    ))
}

/// [`FusedOps::fused_rotary`] on high-level tensors.
pub(crate) fn rotary(x: Tensor<4>, cos: Arc<[f32]>, sin: Arc<[f32]>) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::fused_rotary(
        x.into_dispatch(),
        cos,
        sin,
    ))
}

/// [`FusedOps::fused_cross_entropy`] on high-level tensors.
pub(crate) fn cross_entropy(logits: Tensor<2>, targets: Arc<[i64]>) -> Tensor<1> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::fused_cross_entropy(
        logits.into_dispatch(),
        targets,
    ))
}

/// [`FusedOps::fused_linear`] on high-level tensors.
pub(crate) fn linear(x: Tensor<2>, weight: Tensor<2>) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::fused_linear(
        x.into_dispatch(),
        weight.into_dispatch(),
    ))
}

type FlexTensor = FloatTensor<Flex>;

fn dims(t: &FlexTensor) -> Vec<usize> {
    let shape = t.layout().shape();
    (0..shape.num_dims()).map(|i| shape[i]).collect()
}

/// `t` with its values dense in row-major order: the same buffer when it already is.
fn dense(t: &FlexTensor) -> FlexTensor {
    t.to_contiguous()
}

/// The f32 values of a tensor from [`dense`].
fn slice(t: &FlexTensor) -> &[f32] {
    t.storage::<f32>()
}

/// The f32 values of a tensor from [`dense`] to overwrite, copied first only when another
/// tensor shares the buffer.
fn slice_mut(t: &mut FlexTensor) -> &mut [f32] {
    t.storage_mut::<f32>()
}

fn tensor(values: Vec<f32>, dims: &[usize]) -> FlexTensor {
    Flex::float_from_data(
        TensorData::new(values, Shape::from(dims.to_vec())),
        &Default::default(),
    )
}

// ---------------------------------------------------------------------------------------------
// The forward passes on flex tensors, returning the output and what the backward pass keeps.

/// The output, and the dense input and each row's `1/rms` for the backward pass.
fn rms_norm_primitive(
    x: &FlexTensor,
    weight: &FlexTensor,
    eps: f64,
) -> (FlexTensor, FlexTensor, FlexTensor) {
    let x = dense(x);
    let weight = dense(weight);
    let dims = dims(&x);
    let width = *dims.last().expect("RMSNorm input has a last dimension");
    assert_eq!(
        slice(&weight).len(),
        width,
        "RMSNorm weight matches the last dimension"
    );
    let rows = slice(&x).len() / width.max(1);
    let mut out = vec![0.0f32; rows * width];
    let mut inv_rms = vec![0.0f32; rows];
    rms_norm_forward(
        slice(&x),
        slice(&weight),
        eps as f32,
        &mut out,
        &mut inv_rms,
    );
    (tensor(out, &dims), x, tensor(inv_rms, &[rows]))
}

/// The output, and the dense gate and up projection for the backward pass.
fn swiglu_primitive(gate: &FlexTensor, up: &FlexTensor) -> (FlexTensor, FlexTensor, FlexTensor) {
    let (gate, up) = (dense(gate), dense(up));
    let dims = dims(&gate);
    assert_eq!(dims, self::dims(&up), "SwiGLU's gate and up have one shape");
    let mut out = vec![0.0f32; slice(&gate).len()];
    swiglu_forward(slice(&gate), slice(&up), &mut out);
    (tensor(out, &dims), gate, up)
}

fn masked_softmax_primitive(scores: &FlexTensor, scale: f64, masked: &[bool]) -> FlexTensor {
    let scores = dense(scores);
    let dims = dims(&scores);
    let shape = ScoreShape::of(&dims);
    assert_eq!(
        masked.len(),
        shape.mask_len(),
        "the attention mask is [B, T, K]"
    );
    let mut out = vec![0.0f32; slice(&scores).len()];
    masked_softmax_forward(slice(&scores), shape, scale as f32, masked, &mut out);
    tensor(out, &dims)
}

fn rotary_primitive(x: &FlexTensor, cos: &[f32], sin: &[f32]) -> FlexTensor {
    let x = dense(x);
    let shape = HeadShape::of(&dims(&x));
    assert_eq!(cos.len(), shape.table_len(), "rotary tables are [B, T, D]");
    assert_eq!(sin.len(), shape.table_len(), "rotary tables are [B, T, D]");
    let mut out = vec![0.0f32; slice(&x).len()];
    rotary_forward(slice(&x), cos, sin, shape, &mut out);
    tensor(out, &[shape.batch, shape.heads, shape.seq, shape.dim])
}

/// The losses `[N]` and the softmax `[N, V]`, written over the logits when nothing else holds
/// them.
fn cross_entropy_primitive(logits: FlexTensor, targets: &[i64]) -> (FlexTensor, FlexTensor) {
    let mut probs = dense(&logits);
    drop(logits);
    let dims = dims(&probs);
    assert_eq!(dims.len(), 2, "cross-entropy logits are [N, V]");
    assert_eq!(dims[0], targets.len(), "one target per row of logits");
    let mut losses = vec![0.0f32; dims[0]];
    cross_entropy_forward(slice_mut(&mut probs), dims[1], targets, &mut losses);
    (tensor(losses, &[dims[0]]), probs)
}

/// A matrix operand: its values and the strides of its rows and columns.
struct Operand<'a> {
    values: &'a [f32],
    row_stride: isize,
    col_stride: isize,
}

impl<'a> Operand<'a> {
    /// A dense row-major matrix of `cols` columns.
    fn rows(values: &'a [f32], cols: usize) -> Self {
        Operand {
            values,
            row_stride: cols as isize,
            col_stride: 1,
        }
    }

    /// The transpose of a dense row-major matrix of `cols` columns.
    fn transposed(values: &'a [f32], cols: usize) -> Self {
        Operand {
            values,
            row_stride: 1,
            col_stride: cols as isize,
        }
    }
}

/// `a b` (`[m, k]` by `[k, n]`) written straight into a new row-major buffer. burn-flex's
/// product zero-fills its output and then copies it into an aligned allocation; the `gemm`
/// crate here (the one burn-flex calls, with the same work split) writes every element
/// without reading it, so the buffer is never filled first.
fn product(m: usize, n: usize, k: usize, a: Operand<'_>, b: Operand<'_>) -> Vec<f32> {
    assert!(
        a.values.len() >= m * k && b.values.len() >= k * n,
        "operand too small"
    );
    if k == 0 {
        return vec![0.0; m * n];
    }
    // As burn-flex: products under 192^3 multiply-adds stay on the calling thread.
    let parallelism = if m.saturating_mul(n).saturating_mul(k) >= 192 * 192 * 192 {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    let mut out: Vec<f32> = Vec::with_capacity(m * n);
    // SAFETY: the operands hold `m x k` and `k x n` values at the given strides (asserted
    // above for the dense layouts `Operand` builds); `out` has room for `m x n` values, and
    // with `read_dst` false gemm writes each of them without reading it (alpha is unused),
    // so all are initialised before the length is set.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.values.as_ptr(),
            a.col_stride,
            a.row_stride,
            b.values.as_ptr(),
            b.col_stride,
            b.row_stride,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
        out.set_len(m * n);
    }
    out
}

/// `x W^T`, and the dense `x` and `W` it read.
fn linear_primitive(x: &FlexTensor, weight: &FlexTensor) -> (FlexTensor, FlexTensor, FlexTensor) {
    let (x, weight) = (dense(x), dense(weight));
    let ([m, k], [n, kw]) = (dims2(&x), dims2(&weight));
    assert_eq!(k, kw, "linear: input width {k}, weight width {kw}");
    let out = product(
        m,
        n,
        k,
        Operand::rows(slice(&x), k),
        Operand::transposed(slice(&weight), k),
    );
    (tensor(out, &[m, n]), x, weight)
}

fn dims2(t: &FlexTensor) -> [usize; 2] {
    let dims = dims(t);
    assert_eq!(dims.len(), 2, "a matrix");
    [dims[0], dims[1]]
}

impl FusedOps for Flex {
    fn fused_rms_norm(x: FlexTensor, weight: FlexTensor, eps: f64) -> FlexTensor {
        rms_norm_primitive(&x, &weight, eps).0
    }

    fn fused_swiglu(gate: FlexTensor, up: FlexTensor) -> FlexTensor {
        swiglu_primitive(&gate, &up).0
    }

    fn fused_masked_softmax(scores: FlexTensor, scale: f64, masked: Arc<[bool]>) -> FlexTensor {
        masked_softmax_primitive(&scores, scale, &masked)
    }

    fn fused_rotary(x: FlexTensor, cos: Arc<[f32]>, sin: Arc<[f32]>) -> FlexTensor {
        rotary_primitive(&x, &cos, &sin)
    }

    fn fused_cross_entropy(logits: FlexTensor, targets: Arc<[i64]>) -> FlexTensor {
        cross_entropy_primitive(logits, &targets).0
    }

    fn fused_linear(x: FlexTensor, weight: FlexTensor) -> FlexTensor {
        linear_primitive(&x, &weight).0
    }
}

// ---------------------------------------------------------------------------------------------
// Autodiff: each operation records one node whose backward pass runs the kernel above.

#[derive(Debug)]
struct RmsNormBackward;

impl Backward<Flex, 2> for RmsNormBackward {
    /// The input, the weight and each row's `1/rms`.
    type State = (FlexTensor, FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x_node, weight_node] = ops.parents;
        let mut dx = dense(&grads.consume::<Flex>(&ops.node));
        let (x, weight, inv_rms) = ops.state;
        let mut dweight = weight_node
            .as_ref()
            .map(|_| vec![0.0f32; slice(&weight).len()]);
        rms_norm_backward(
            slice(&x),
            slice(&weight),
            slice(&inv_rms),
            slice_mut(&mut dx),
            dweight.as_deref_mut(),
        );
        if let (Some(node), Some(dweight)) = (weight_node, dweight) {
            let width = dweight.len();
            grads.register::<Flex>(node.id, tensor(dweight, &[width]));
        }
        if let Some(node) = x_node {
            grads.register::<Flex>(node.id, dx);
        }
    }
}

#[derive(Debug)]
struct SwigluBackward;

impl Backward<Flex, 2> for SwigluBackward {
    /// The gate and the up projection.
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [gate_node, up_node] = ops.parents;
        let grad = dense(&grads.consume::<Flex>(&ops.node));
        let (gate, up) = ops.state;
        // Each gradient starts as the output's.
        let mut dgate = gate_node.as_ref().map(|_| grad.clone());
        let mut dup = up_node.as_ref().map(|_| grad.clone());
        drop(grad);
        // Writing the first copies it out of the buffer the other still shares.
        let dgate_values = dgate.as_mut().map(slice_mut);
        let dup_values = dup.as_mut().map(slice_mut);
        swiglu_backward(slice(&gate), slice(&up), dgate_values, dup_values);
        if let (Some(node), Some(d)) = (gate_node, dgate) {
            grads.register::<Flex>(node.id, d);
        }
        if let (Some(node), Some(d)) = (up_node, dup) {
            grads.register::<Flex>(node.id, d);
        }
    }
}

#[derive(Debug)]
struct MaskedSoftmaxBackward;

impl Backward<Flex, 1> for MaskedSoftmaxBackward {
    /// The softmax's output, the scale and the mask.
    type State = (FlexTensor, f64, Arc<[bool]>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let (probs, scale, masked) = ops.state;
        if let Some(node) = node {
            let mut d = dense(&grad);
            drop(grad);
            let shape = ScoreShape::of(&dims(&d));
            masked_softmax_backward(
                slice(&probs),
                shape,
                scale as f32,
                &masked,
                slice_mut(&mut d),
            );
            grads.register::<Flex>(node.id, d);
        }
    }
}

#[derive(Debug)]
struct RotaryBackward;

impl Backward<Flex, 1> for RotaryBackward {
    /// The tables and the input's shape.
    type State = (Arc<[f32]>, Arc<[f32]>, [usize; 4]);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let dy = dense(&grads.consume::<Flex>(&ops.node));
        let (cos, sin, dims) = ops.state;
        if let Some(node) = node {
            let mut dx = vec![0.0f32; slice(&dy).len()];
            rotary_backward(slice(&dy), &cos, &sin, HeadShape::of(&dims), &mut dx);
            grads.register::<Flex>(node.id, tensor(dx, &dims));
        }
    }
}

#[derive(Debug)]
struct CrossEntropyBackward;

impl Backward<Flex, 1> for CrossEntropyBackward {
    /// The softmax of the logits and the targets.
    type State = (FlexTensor, Arc<[i64]>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let dloss = dense(&grads.consume::<Flex>(&ops.node));
        let (probs, targets) = ops.state;
        if let Some(node) = node {
            let mut d = dense(&probs);
            drop(probs);
            let vocab = dims(&d)[1];
            cross_entropy_backward(slice_mut(&mut d), vocab, &targets, slice(&dloss));
            grads.register::<Flex>(node.id, d);
        }
    }
}

#[derive(Debug)]
struct LinearBackward;

impl Backward<Flex, 2> for LinearBackward {
    /// The weight, and the input when the weight trains.
    type State = (FlexTensor, Option<FlexTensor>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x_node, weight_node] = ops.parents;
        let dy = dense(&grads.consume::<Flex>(&ops.node));
        let (weight, x) = ops.state;
        let ([m, n], [_, k]) = (dims2(&dy), dims2(&weight));
        if let (Some(node), Some(x)) = (weight_node, x) {
            // dW = dy^T x: [n, m] by [m, k].
            let dweight = product(
                n,
                k,
                m,
                Operand::transposed(slice(&dy), n),
                Operand::rows(slice(&x), k),
            );
            grads.register::<Flex>(node.id, tensor(dweight, &[n, k]));
        }
        if let Some(node) = x_node {
            // dx = dy W: [m, n] by [n, k].
            let dx = product(
                m,
                k,
                n,
                Operand::rows(slice(&dy), n),
                Operand::rows(slice(&weight), k),
            );
            grads.register::<Flex>(node.id, tensor(dx, &[m, k]));
        }
    }
}

impl<C: CheckpointStrategy> FusedOps for Autodiff<Flex, C> {
    fn fused_rms_norm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        match RmsNormBackward
            .prepare::<C>([x.node(), weight.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (out, x, inv_rms) = rms_norm_primitive(x.primitive(), weight.primitive(), eps);
                prep.finish((x, dense(weight.primitive()), inv_rms), out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(rms_norm_primitive(x.primitive(), weight.primitive(), eps).0)
            }
        }
    }

    fn fused_swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        match SwigluBackward
            .prepare::<C>([gate.node(), up.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (out, gate, up) = swiglu_primitive(gate.primitive(), up.primitive());
                prep.finish((gate, up), out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(swiglu_primitive(gate.primitive(), up.primitive()).0)
            }
        }
    }

    fn fused_masked_softmax(
        scores: FloatTensor<Self>,
        scale: f64,
        masked: Arc<[bool]>,
    ) -> FloatTensor<Self> {
        match MaskedSoftmaxBackward
            .prepare::<C>([scores.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let out = masked_softmax_primitive(scores.primitive(), scale, &masked);
                prep.finish((out.clone(), scale, masked), out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(masked_softmax_primitive(scores.primitive(), scale, &masked))
            }
        }
    }

    fn fused_rotary(x: FloatTensor<Self>, cos: Arc<[f32]>, sin: Arc<[f32]>) -> FloatTensor<Self> {
        match RotaryBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let out = rotary_primitive(x.primitive(), &cos, &sin);
                let d = dims(x.primitive());
                prep.finish((cos, sin, [d[0], d[1], d[2], d[3]]), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(rotary_primitive(x.primitive(), &cos, &sin)),
        }
    }

    fn fused_cross_entropy(logits: FloatTensor<Self>, targets: Arc<[i64]>) -> FloatTensor<Self> {
        match CrossEntropyBackward
            .prepare::<C>([logits.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (losses, probs) = cross_entropy_primitive(logits.into_primitive(), &targets);
                prep.finish((probs, targets), losses)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(cross_entropy_primitive(logits.into_primitive(), &targets).0)
            }
        }
    }

    fn fused_linear(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self> {
        let weight_trains = weight.is_tracked();
        match LinearBackward
            .prepare::<C>([x.node(), weight.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (out, x, weight) = linear_primitive(x.primitive(), weight.primitive());
                prep.finish((weight, weight_trains.then_some(x)), out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(linear_primitive(x.primitive(), weight.primitive()).0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::activation::{log_softmax, silu, softmax};
    use burn::tensor::{Bool, Int};

    use crate::rng::unit_interval;

    fn device() -> Device {
        Device::flex().autodiff()
    }

    /// Values in [-spread, spread) drawn from `seed`.
    fn random<const D: usize>(shape: [usize; D], seed: u64, spread: f64) -> Tensor<D> {
        let n = shape.iter().product::<usize>();
        let values: Vec<f32> = (0..n)
            .map(|i| ((unit_interval(seed, i as u64) * 2.0 - 1.0) * spread) as f32)
            .collect();
        Tensor::from_data(TensorData::new(values, shape), &device())
    }

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    fn assert_close<const D: usize>(what: &str, fused: Tensor<D>, composed: Tensor<D>, tol: f32) {
        let (a, b) = (values(fused), values(composed));
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!(
                (x - y).abs() <= tol * scale,
                "{what}[{i}]: fused {x} vs composed {y} (largest {scale})"
            );
        }
    }

    /// The output, the input gradients for the upstream gradient `upstream` of `f(inputs)` run
    /// fused and composed.
    fn both<const D: usize, const E: usize, const N: usize>(
        inputs: [Tensor<D>; N],
        upstream: Tensor<E>,
        f: impl Fn([Tensor<D>; N]) -> Tensor<E>,
    ) -> [(Tensor<E>, Vec<Tensor<D>>); 2] {
        let run = |composed: bool| {
            let leaves = inputs.clone().map(|t| t.detach().require_grad());
            let runs_fused = || applies(&leaves[0].device(), leaves[0].dtype());
            let out = if composed {
                with_composed_ops(|| {
                    assert!(!runs_fused());
                    f(leaves.clone())
                })
            } else {
                assert!(runs_fused());
                f(leaves.clone())
            };
            let grads = (out.clone() * upstream.clone()).sum().backward();
            let gradients = leaves.iter().map(|l| l.grad(&grads).unwrap()).collect();
            (out.detach(), gradients)
        };
        [run(false), run(true)]
    }

    fn rms_norm_any(x: Tensor<3>, weight: Tensor<1>, eps: f64) -> Tensor<3> {
        if applies(&x.device(), x.dtype()) {
            return rms_norm(x, weight, eps);
        }
        let rms = x.clone().square().mean_dim(2).add_scalar(eps).sqrt();
        (x / rms) * weight.unsqueeze_dim::<2>(0).unsqueeze_dim(0)
    }

    #[test]
    fn rms_norm_matches_the_composed_ops_and_their_gradients() {
        // 45 rows: two full blocks of 16 and a partial one; 37 wide: vector tails.
        let x = random([3, 15, 37], 1, 2.0);
        let weight = random([1, 1, 37], 2, 1.5);
        let upstream = random([3, 15, 37], 3, 1.0);
        let [fused, composed] = both([x, weight], upstream, |[x, w]| {
            rms_norm_any(x, w.reshape([37]), 1e-5)
        });
        assert_close("output", fused.0, composed.0, 1e-5);
        assert_close("dx", fused.1[0].clone(), composed.1[0].clone(), 1e-5);
        assert_close("dweight", fused.1[1].clone(), composed.1[1].clone(), 1e-5);
    }

    #[test]
    fn a_frozen_weight_gets_no_gradient_and_the_input_still_does() {
        let x = random([2, 4, 8], 4, 1.0).require_grad();
        let weight = random([8], 5, 1.0);
        let out = rms_norm(x.clone(), weight.clone(), 1e-6);
        let grads = out.sum().backward();
        assert!(weight.grad(&grads).is_none());
        assert!(x.grad(&grads).is_some());
    }

    #[test]
    fn swiglu_matches_the_composed_ops_and_their_gradients() {
        let gate = random([2, 9, 40], 6, 8.0);
        let up = random([2, 9, 40], 7, 2.0);
        let upstream = random([2, 9, 40], 8, 1.0);
        let [fused, composed] = both([gate, up], upstream, |[g, u]| {
            if applies(&g.device(), g.dtype()) {
                swiglu(g, u)
            } else {
                silu(g) * u
            }
        });
        assert_close("output", fused.0, composed.0, 1e-6);
        assert_close("dgate", fused.1[0].clone(), composed.1[0].clone(), 1e-6);
        assert_close("dup", fused.1[1].clone(), composed.1[1].clone(), 1e-6);
    }

    #[test]
    fn linear_matches_the_matmul_and_its_gradients() {
        // One product small enough for one thread, one large enough for gemm's split.
        for (m, k, n) in [(37, 23, 30), (200, 64, 700)] {
            let x = random([m, k], 11, 1.0);
            let weight = random([n, k], 12, 0.5);
            let upstream = random([m, n], 13, 1.0);
            let [fused, composed] = both([x, weight], upstream, |[x, w]| {
                if applies(&x.device(), x.dtype()) {
                    linear(x, w)
                } else {
                    x.matmul(w.transpose())
                }
            });
            assert_close("output", fused.0, composed.0, 1e-6);
            assert_close("dx", fused.1[0].clone(), composed.1[0].clone(), 1e-6);
            assert_close("dweight", fused.1[1].clone(), composed.1[1].clone(), 1e-6);
        }
    }

    #[test]
    fn a_frozen_linear_weight_gets_no_gradient() {
        let x = random([5, 8], 14, 1.0).require_grad();
        let weight = random([3, 8], 15, 1.0);
        let grads = linear(x.clone(), weight.clone()).sum().backward();
        assert!(weight.grad(&grads).is_none());
        let dx = x.grad(&grads).unwrap();
        // d/dx of sum(x W^T) is each row's sum of W's rows.
        let want = weight.sum_dim(0).expand([5, 8]);
        assert_close("dx", dx, want, 1e-6);
    }

    /// A causal mask over `[B, T, T]` with right padding in row 1 and a row whose first query
    /// sees nothing (left padding), so every kind of row appears.
    fn mask(b: usize, t: usize) -> Vec<bool> {
        let mut masked = Vec::new();
        for row in 0..b {
            for query in 0..t {
                for key in 0..t {
                    let padding = (row == 1 && key >= t - 2) || (row == 2 && key == 0);
                    masked.push(key > query || padding);
                }
            }
        }
        masked
    }

    #[test]
    fn masked_softmax_matches_the_composed_ops_and_their_gradients() {
        let (b, h, t) = (3, 2, 21);
        let masked = mask(b, t);
        let scores = random([b, h, t, t], 9, 12.0);
        let upstream = random([b, h, t, t], 10, 1.0);
        let scale = 0.125;
        let mask_tensor =
            Tensor::<4, Bool>::from_data(TensorData::new(masked.clone(), [b, 1, t, t]), &device());
        let rows: Arc<[bool]> = masked.into();
        let [fused, composed] = both([scores], upstream, |[s]| {
            if applies(&s.device(), s.dtype()) {
                masked_softmax(s, scale, rows.clone())
            } else {
                let s = s
                    .mul_scalar(scale)
                    .mask_fill(mask_tensor.clone().expand([b, h, t, t]), f32::MIN);
                softmax(s, 3)
            }
        });
        assert_close("weights", fused.0.clone(), composed.0, 1e-6);
        assert_close("dscores", fused.1[0].clone(), composed.1[0].clone(), 1e-5);
        // Row 2's first query sees no key: uniform, as softmax over equal values gives.
        let weights = values(fused.0);
        let first = &weights[2 * h * t * t..2 * h * t * t + t];
        assert!(first.iter().all(|&w| (w - 1.0 / t as f32).abs() < 1e-7));
    }

    #[test]
    fn rotary_matches_the_composed_ops_and_their_gradients() {
        let (b, t, h, d) = (2, 19, 3, 8);
        let x = random([b, t, h, d], 15, 3.0);
        let upstream = random([b, h, t, d], 16, 1.0);
        let table = |seed| {
            let n = b * t * d;
            (0..n)
                .map(|i| (unit_interval(seed, i as u64) * 2.0 - 1.0) as f32)
                .collect::<Vec<f32>>()
        };
        let (cos, sin) = (table(17), table(18));
        let as_tensor = |v: &[f32]| {
            Tensor::<4>::from_data(TensorData::new(v.to_vec(), [b, 1, t, d]), &device())
        };
        let (cos_t, sin_t) = (as_tensor(&cos), as_tensor(&sin));
        let (cos, sin): (Arc<[f32]>, Arc<[f32]>) = (cos.into(), sin.into());
        let [fused, composed] = both([x], upstream, |[x]| {
            if applies(&x.device(), x.dtype()) {
                rotary(x, cos.clone(), sin.clone())
            } else {
                let x = x.swap_dims(1, 2);
                let first = x.clone().narrow(3, 0, d / 2);
                let second = x.clone().narrow(3, d / 2, d / 2);
                let rotated = Tensor::cat(vec![second.neg(), first], 3);
                x * cos_t.clone() + rotated * sin_t.clone()
            }
        });
        assert_close("output", fused.0, composed.0, 1e-6);
        assert_close("dx", fused.1[0].clone(), composed.1[0].clone(), 1e-6);
    }

    #[test]
    fn cross_entropy_matches_log_softmax_and_its_gradient() {
        let (n, v) = (37, 300);
        let logits = random([n, v], 11, 30.0);
        let targets: Vec<i64> = (0..n as i64).map(|i| (i * 53) % v as i64).collect();
        let upstream = random([n], 12, 1.0);
        let arc: Arc<[i64]> = targets.clone().into();
        let index = Tensor::<2, Int>::from_data(TensorData::new(targets, [n, 1]), &device());
        let [fused, composed] = both([logits], upstream, |[l]| {
            if applies(&l.device(), l.dtype()) {
                cross_entropy(l, arc.clone())
            } else {
                log_softmax(l, 1)
                    .gather(1, index.clone())
                    .reshape([n])
                    .neg()
            }
        });
        assert_close("losses", fused.0, composed.0, 1e-6);
        assert_close("dlogits", fused.1[0].clone(), composed.1[0].clone(), 1e-6);
    }

    #[test]
    fn kernels_give_the_same_bits_on_any_number_of_threads() {
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let x = random([4, 50, 33], 13, 3.0).require_grad();
                let weight = random([33], 14, 1.0).require_grad();
                let normed = rms_norm(x.clone(), weight.clone(), 1e-6);
                let gated = swiglu(normed.clone(), normed.clone().mul_scalar(0.5));
                let grads = gated.clone().sum().backward();
                let mut out = values(gated);
                out.extend(values(x.grad(&grads).unwrap()));
                out.extend(values(weight.grad(&grads).unwrap()));
                out.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            })
        };
        assert_eq!(run(1), run(3));
    }

    #[test]
    fn the_kernels_run_without_autodiff_too() {
        let plain = Device::flex();
        let x = Tensor::<2>::from_data(TensorData::new(vec![3.0f32, 4.0], [1, 2]), &plain);
        let weight = Tensor::<1>::from_data(TensorData::new(vec![1.0f32, 2.0], [2]), &plain);
        let out = values(rms_norm(x, weight, 0.0));
        let rms = (12.5f32).sqrt();
        assert!((out[0] - 3.0 / rms).abs() < 1e-6 && (out[1] - 8.0 / rms).abs() < 1e-6);
        let logits = Tensor::<2>::from_data(TensorData::new(vec![0.0f32, 0.0], [1, 2]), &plain);
        let loss = values(cross_entropy(logits, vec![1i64].into()));
        assert!((loss[0] - std::f32::consts::LN_2).abs() < 1e-6);
    }
}
