//! The row kernels behind [`super::fused`], on plain slices.
//!
//! Each inner loop is compiled three times, for AVX-512, for AVX2 with FMA and for the build's
//! baseline, and the CPU picks one at run time (the binary stays portable, as burn's own kernels
//! do). The loops are written so the compiler can vectorize them: partial sums in independent
//! lanes, masks as selects, and an exponential of plain arithmetic instead of libm's scalar
//! `expf`. No loop contracts a multiply and an add into one rounding, so every version gives the
//! same bits. Work is spread over the rayon pool in blocks of a fixed number of rows, so sums
//! across rows come out the same whatever the thread count.

use rayon::prelude::*;

/// Rows per parallel task: enough work to pay for the hand-off, and a split that does not depend
/// on the thread count.
const ROWS_PER_TASK: usize = 16;

/// Elements per parallel task of the purely element-wise SwiGLU.
const ELEMENTS_PER_TASK: usize = 16 * 1024;

/// Independent partial sums per reduction: one AVX-512 register of f32.
const LANES: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    Avx512,
    Avx2,
    Baseline,
}

#[cfg(test)]
thread_local! {
    static FORCED: std::cell::Cell<Option<Level>> = const { std::cell::Cell::new(None) };
}

/// The widest instruction set this CPU offers of those the kernels are built for.
fn level() -> Level {
    #[cfg(test)]
    if let Some(forced) = FORCED.with(std::cell::Cell::get) {
        return forced;
    }
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
        {
            return Level::Avx512;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Level::Avx2;
        }
    }
    Level::Baseline
}

/// Defines `fn NAME(ARGS) -> RET` whose body is compiled for each [`Level`] and picked by the CPU.
macro_rules! per_level {
    ($(#[$meta:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                fn avx512($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                match level() {
                    // SAFETY: `level` found these instruction sets on this CPU.
                    Level::Avx512 => return unsafe { avx512($($arg),*) },
                    // SAFETY: as above.
                    Level::Avx2 => return unsafe { avx2($($arg),*) },
                    Level::Baseline => {}
                }
            }
            body($($arg),*)
        }
    };
}

/// `e^x` within 2 ulp for `x` in [-87, 88] (Cephes' `expf`: a degree-6 polynomial after
/// reducing by powers of two), in arithmetic that vectorizes. Below the range it gives
/// about 1e-38 instead of 0, above it e^88.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 in two parts, so `n * LN2_HI` is exact.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and taking away 1.5 * 2^23 rounds to the nearest integer in any instruction set.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.987_569_2e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = (p * r) * r + r + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    y * scale
}

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

per_level! {
    /// Dot product, in [`LANES`] partial sums.
    fn dot(a: &[f32], b: &[f32]) -> f32 {
        let mut acc = [0.0f32; LANES];
        let blocks = a.len() / LANES * LANES;
        for (x, y) in a[..blocks].chunks_exact(LANES).zip(b[..blocks].chunks_exact(LANES)) {
            for i in 0..LANES {
                acc[i] += x[i] * y[i];
            }
        }
        let mut sum = acc.iter().sum::<f32>();
        for (x, y) in a[blocks..].iter().zip(&b[blocks..]) {
            sum += x * y;
        }
        sum
    }
}

per_level! {
    /// `out = weight * x * inv_rms` for one row.
    fn scale_row(out: &mut [f32], x: &[f32], weight: &[f32], inv_rms: f32) {
        for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
            *o = w * (v * inv_rms);
        }
    }
}

/// RMSNorm of each row of `x` (`weight.len()` wide) into `out`, keeping each row's `1/rms`.
pub(crate) fn rms_norm_forward(
    x: &[f32],
    weight: &[f32],
    eps: f32,
    out: &mut [f32],
    inv_rms: &mut [f32],
) {
    let width = weight.len();
    out.par_chunks_mut(width * ROWS_PER_TASK)
        .zip(inv_rms.par_chunks_mut(ROWS_PER_TASK))
        .zip(x.par_chunks(width * ROWS_PER_TASK))
        .for_each(|((out, inv_rms), x)| {
            for ((out, r), x) in out
                .chunks_exact_mut(width)
                .zip(inv_rms.iter_mut())
                .zip(x.chunks_exact(width))
            {
                *r = 1.0 / (dot(x, x) / width as f32 + eps).sqrt();
                scale_row(out, x, weight, *r);
            }
        });
}

per_level! {
    /// One row of RMSNorm's backward pass: `dy` becomes `dx`, the weight's gradient is added to
    /// `dweight` when it is asked for (non-empty), `scaled` is scratch.
    fn rms_norm_backward_row(
        dy: &mut [f32],
        x: &[f32],
        weight: &[f32],
        r: f32,
        dweight: &mut [f32],
        scaled: &mut [f32],
    ) {
        for ((dw, &g), &v) in dweight.iter_mut().zip(dy.iter()).zip(x) {
            *dw += g * v * r;
        }
        for ((s, &g), &w) in scaled.iter_mut().zip(dy.iter()).zip(weight) {
            *s = g * w;
        }
        let c = dot(scaled, x) * r * r * r / x.len() as f32;
        for ((d, &s), &v) in dy.iter_mut().zip(scaled.iter()).zip(x) {
            *d = s * r - v * c;
        }
    }
}

/// RMSNorm's gradients: `dx` holds the output's gradient and becomes the input's; the weight's
/// gradient is summed over the rows into `dweight` when it is asked for.
pub(crate) fn rms_norm_backward(
    x: &[f32],
    weight: &[f32],
    inv_rms: &[f32],
    dx: &mut [f32],
    dweight: Option<&mut [f32]>,
) {
    let width = weight.len();
    let dweight_width = if dweight.is_some() { width } else { 0 };
    let partials: Vec<Vec<f32>> = dx
        .par_chunks_mut(width * ROWS_PER_TASK)
        .zip(x.par_chunks(width * ROWS_PER_TASK))
        .zip(inv_rms.par_chunks(ROWS_PER_TASK))
        .map(|((dx, x), inv_rms)| {
            let mut partial = vec![0.0f32; dweight_width];
            let mut scaled = vec![0.0f32; width];
            for ((dy, x), &r) in dx
                .chunks_exact_mut(width)
                .zip(x.chunks_exact(width))
                .zip(inv_rms)
            {
                rms_norm_backward_row(dy, x, weight, r, &mut partial, &mut scaled);
            }
            partial
        })
        .collect();
    if let Some(dweight) = dweight {
        dweight.fill(0.0);
        for partial in &partials {
            for (d, p) in dweight.iter_mut().zip(partial) {
                *d += p;
            }
        }
    }
}

per_level! {
    fn swiglu_block(gate: &[f32], up: &[f32], out: &mut [f32]) {
        for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
            *o = g * sigmoid(g) * u;
        }
    }
}

pub(crate) fn swiglu_forward(gate: &[f32], up: &[f32], out: &mut [f32]) {
    out.par_chunks_mut(ELEMENTS_PER_TASK)
        .zip(gate.par_chunks(ELEMENTS_PER_TASK))
        .zip(up.par_chunks(ELEMENTS_PER_TASK))
        .for_each(|((out, gate), up)| swiglu_block(gate, up, out));
}

per_level! {
    fn swiglu_backward_both(gate: &[f32], up: &[f32], dgate: &mut [f32], dup: &mut [f32]) {
        for (((dg, du), &g), &u) in dgate.iter_mut().zip(dup.iter_mut()).zip(gate).zip(up) {
            let s = sigmoid(g);
            let dy = *dg;
            *dg = dy * u * s * (1.0 + g * (1.0 - s));
            *du = dy * g * s;
        }
    }
}

per_level! {
    fn swiglu_backward_gate(gate: &[f32], up: &[f32], dgate: &mut [f32]) {
        for ((dg, &g), &u) in dgate.iter_mut().zip(gate).zip(up) {
            let s = sigmoid(g);
            *dg *= u * s * (1.0 + g * (1.0 - s));
        }
    }
}

per_level! {
    fn swiglu_backward_up(gate: &[f32], dup: &mut [f32]) {
        for (du, &g) in dup.iter_mut().zip(gate) {
            *du *= g * sigmoid(g);
        }
    }
}

/// SwiGLU's gradients: `dgate` and `dup` each hold the output's gradient and become the gate's
/// and the up projection's (or are left out when not asked for).
pub(crate) fn swiglu_backward(
    gate: &[f32],
    up: &[f32],
    dgate: Option<&mut [f32]>,
    dup: Option<&mut [f32]>,
) {
    match (dgate, dup) {
        (Some(dgate), Some(dup)) => dgate
            .par_chunks_mut(ELEMENTS_PER_TASK)
            .zip(dup.par_chunks_mut(ELEMENTS_PER_TASK))
            .zip(gate.par_chunks(ELEMENTS_PER_TASK))
            .zip(up.par_chunks(ELEMENTS_PER_TASK))
            .for_each(|(((dg, du), g), u)| swiglu_backward_both(g, u, dg, du)),
        (Some(dgate), None) => dgate
            .par_chunks_mut(ELEMENTS_PER_TASK)
            .zip(gate.par_chunks(ELEMENTS_PER_TASK))
            .zip(up.par_chunks(ELEMENTS_PER_TASK))
            .for_each(|((dg, g), u)| swiglu_backward_gate(g, u, dg)),
        (None, Some(dup)) => dup
            .par_chunks_mut(ELEMENTS_PER_TASK)
            .zip(gate.par_chunks(ELEMENTS_PER_TASK))
            .for_each(|(du, g)| swiglu_backward_up(g, du)),
        (None, None) => {}
    }
}

/// The `[B, H, T, K]` layout of attention scores and their `[B, T, K]` mask.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ScoreShape {
    pub(crate) batch: usize,
    pub(crate) heads: usize,
    pub(crate) queries: usize,
    pub(crate) keys: usize,
}

impl ScoreShape {
    pub(crate) fn of(dims: &[usize]) -> Self {
        assert_eq!(dims.len(), 4, "attention scores are [B, H, T, K]");
        ScoreShape {
            batch: dims[0],
            heads: dims[1],
            queries: dims[2],
            keys: dims[3],
        }
    }

    pub(crate) fn mask_len(&self) -> usize {
        self.batch * self.queries * self.keys
    }

    /// The mask row of score row `row` (rows counted over B, H and T).
    fn mask_row<'a>(&self, masked: &'a [bool], row: usize) -> &'a [bool] {
        let query = row % self.queries;
        let b = row / (self.queries * self.heads);
        let start = (b * self.queries + query) * self.keys;
        &masked[start..start + self.keys]
    }
}

/// The keys of a mask row up to its last visible one: under a causal mask the rest of the row
/// is masked and needs no work. `None` when no key is visible.
fn visible_prefix(mask: &[bool]) -> Option<usize> {
    mask.iter().rposition(|&m| !m).map(|last| last + 1)
}

per_level! {
    /// One row of the masked softmax: `out` gets the weights of `scale * scores`, 0 where masked,
    /// uniform when every key is masked.
    fn masked_softmax_row(out: &mut [f32], scores: &[f32], mask: &[bool], scale: f32) {
        let Some(end) = visible_prefix(mask) else {
            out.fill(1.0 / out.len() as f32);
            return;
        };
        let (out, hidden) = out.split_at_mut(end);
        hidden.fill(0.0);
        let (scores, mask) = (&scores[..end], &mask[..end]);
        let mut lanes = [f32::NEG_INFINITY; LANES];
        let blocks = end / LANES * LANES;
        for (s, m) in scores[..blocks].chunks_exact(LANES).zip(mask[..blocks].chunks_exact(LANES)) {
            for i in 0..LANES {
                let v = if m[i] { f32::NEG_INFINITY } else { s[i] * scale };
                lanes[i] = lanes[i].max(v);
            }
        }
        let mut max = lanes.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        for (&s, &m) in scores[blocks..].iter().zip(&mask[blocks..]) {
            if !m {
                max = max.max(s * scale);
            }
        }
        for ((o, &s), &m) in out.iter_mut().zip(scores).zip(mask) {
            let e = exp(s * scale - max);
            *o = if m { 0.0 } else { e };
        }
        let mut sums = [0.0f32; LANES];
        for o in out[..blocks].chunks_exact(LANES) {
            for i in 0..LANES {
                sums[i] += o[i];
            }
        }
        let sum = sums.iter().sum::<f32>() + out[blocks..].iter().sum::<f32>();
        let inv = 1.0 / sum;
        for o in out.iter_mut() {
            *o *= inv;
        }
    }
}

pub(crate) fn masked_softmax_forward(
    scores: &[f32],
    shape: ScoreShape,
    scale: f32,
    masked: &[bool],
    out: &mut [f32],
) {
    let keys = shape.keys;
    out.par_chunks_mut(keys * ROWS_PER_TASK)
        .zip(scores.par_chunks(keys * ROWS_PER_TASK))
        .enumerate()
        .for_each(|(task, (out, scores))| {
            for (i, (out, scores)) in out
                .chunks_exact_mut(keys)
                .zip(scores.chunks_exact(keys))
                .enumerate()
            {
                let mask = shape.mask_row(masked, task * ROWS_PER_TASK + i);
                masked_softmax_row(out, scores, mask, scale);
            }
        });
}

per_level! {
    fn masked_softmax_backward_row(d: &mut [f32], p: &[f32], mask: &[bool], scale: f32) {
        // Past the last visible key every weight is 0, and so is the gradient.
        let end = visible_prefix(mask).unwrap_or(0);
        let (d, hidden) = d.split_at_mut(end);
        hidden.fill(0.0);
        let (p, mask) = (&p[..end], &mask[..end]);
        let centre = dot(d, p);
        for ((d, &p), &m) in d.iter_mut().zip(p).zip(mask) {
            let g = scale * p * (*d - centre);
            *d = if m { 0.0 } else { g };
        }
    }
}

/// The scores' gradient in place of `dprobs`, from the softmax's output `probs`.
pub(crate) fn masked_softmax_backward(
    probs: &[f32],
    shape: ScoreShape,
    scale: f32,
    masked: &[bool],
    dprobs: &mut [f32],
) {
    let keys = shape.keys;
    dprobs
        .par_chunks_mut(keys * ROWS_PER_TASK)
        .zip(probs.par_chunks(keys * ROWS_PER_TASK))
        .enumerate()
        .for_each(|(task, (dprobs, probs))| {
            for (i, (d, p)) in dprobs
                .chunks_exact_mut(keys)
                .zip(probs.chunks_exact(keys))
                .enumerate()
            {
                let mask = shape.mask_row(masked, task * ROWS_PER_TASK + i);
                masked_softmax_backward_row(d, p, mask, scale);
            }
        });
}

/// The `[B, T, H, D]` layout of a projection's heads and its `[B, T, D]` rotary tables.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeadShape {
    pub(crate) batch: usize,
    pub(crate) seq: usize,
    pub(crate) heads: usize,
    pub(crate) dim: usize,
}

impl HeadShape {
    pub(crate) fn of(dims: &[usize]) -> Self {
        assert_eq!(dims.len(), 4, "heads are [B, T, H, D]");
        assert!(
            dims[3].is_multiple_of(2),
            "rotary embeddings need an even head dimension"
        );
        HeadShape {
            batch: dims[0],
            seq: dims[1],
            heads: dims[2],
            dim: dims[3],
        }
    }

    pub(crate) fn table_len(&self) -> usize {
        self.batch * self.seq * self.dim
    }
}

per_level! {
    /// `out = x * cos + rotate_half(x) * sin` for one head at one position, where
    /// `rotate_half(x) = [-x2, x1]`.
    fn rotary_row(out: &mut [f32], x: &[f32], cos: &[f32], sin: &[f32]) {
        let half = x.len() / 2;
        let (x1, x2) = x.split_at(half);
        let (out1, out2) = out.split_at_mut(half);
        let (c1, c2) = cos.split_at(half);
        let (s1, s2) = sin.split_at(half);
        for i in 0..half {
            out1[i] = x1[i] * c1[i] - x2[i] * s1[i];
            out2[i] = x2[i] * c2[i] + x1[i] * s2[i];
        }
    }
}

per_level! {
    /// The gradient of [`rotary_row`]: the rotation transposed.
    fn rotary_backward_row(dx: &mut [f32], dy: &[f32], cos: &[f32], sin: &[f32]) {
        let half = dy.len() / 2;
        let (dy1, dy2) = dy.split_at(half);
        let (dx1, dx2) = dx.split_at_mut(half);
        let (c1, c2) = cos.split_at(half);
        let (s1, s2) = sin.split_at(half);
        for i in 0..half {
            dx1[i] = dy1[i] * c1[i] + dy2[i] * s2[i];
            dx2[i] = dy2[i] * c2[i] - dy1[i] * s1[i];
        }
    }
}

/// Rotary embeddings of `x` (`[B, T, H, D]`, as the projection writes it) into `out`
/// (`[B, H, T, D]`, as attention reads it).
pub(crate) fn rotary_forward(
    x: &[f32],
    cos: &[f32],
    sin: &[f32],
    shape: HeadShape,
    out: &mut [f32],
) {
    let HeadShape {
        seq, heads, dim, ..
    } = shape;
    out.par_chunks_mut(seq * dim)
        .enumerate()
        .for_each(|(block, out)| {
            let (b, h) = (block / heads, block % heads);
            for (t, out) in out.chunks_exact_mut(dim).enumerate() {
                let row = b * seq + t;
                let from = (row * heads + h) * dim;
                let table = row * dim..(row + 1) * dim;
                rotary_row(out, &x[from..from + dim], &cos[table.clone()], &sin[table]);
            }
        });
}

/// The gradient of [`rotary_forward`]: `dy` is `[B, H, T, D]`, `dx` `[B, T, H, D]`.
pub(crate) fn rotary_backward(
    dy: &[f32],
    cos: &[f32],
    sin: &[f32],
    shape: HeadShape,
    dx: &mut [f32],
) {
    let HeadShape {
        seq, heads, dim, ..
    } = shape;
    dx.par_chunks_mut(heads * dim)
        .enumerate()
        .for_each(|(row, dx)| {
            let (b, t) = (row / seq, row % seq);
            let table = row * dim..(row + 1) * dim;
            for (h, dx) in dx.chunks_exact_mut(dim).enumerate() {
                let from = ((b * heads + h) * seq + t) * dim;
                rotary_backward_row(
                    dx,
                    &dy[from..from + dim],
                    &cos[table.clone()],
                    &sin[table.clone()],
                );
            }
        });
}

per_level! {
    /// One row of logits becomes its softmax; returns `log(sum(exp(row)))`.
    fn softmax_row_in_place(row: &mut [f32]) -> f64 {
        let mut lanes = [f32::NEG_INFINITY; LANES];
        let blocks = row.len() / LANES * LANES;
        for v in row[..blocks].chunks_exact(LANES) {
            for i in 0..LANES {
                lanes[i] = lanes[i].max(v[i]);
            }
        }
        let max = row[blocks..]
            .iter()
            .chain(lanes.iter())
            .fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        for v in row.iter_mut() {
            *v = exp(*v - max);
        }
        // The sum runs over the whole vocabulary: f64 keeps its rounding below f32's.
        let mut sums = [0.0f64; LANES];
        for v in row[..blocks].chunks_exact(LANES) {
            for i in 0..LANES {
                sums[i] += v[i] as f64;
            }
        }
        let sum = sums.iter().sum::<f64>() + row[blocks..].iter().map(|&v| v as f64).sum::<f64>();
        let inv = (1.0 / sum) as f32;
        for v in row.iter_mut() {
            *v *= inv;
        }
        sum.ln() + max as f64
    }
}

/// Each row's `-log softmax[target]` into `losses`, turning `logits` (`vocab` wide) into the
/// softmax in place.
pub(crate) fn cross_entropy_forward(
    logits: &mut [f32],
    vocab: usize,
    targets: &[i64],
    losses: &mut [f32],
) {
    logits
        .par_chunks_mut(vocab * ROWS_PER_TASK)
        .zip(losses.par_chunks_mut(ROWS_PER_TASK))
        .zip(targets.par_chunks(ROWS_PER_TASK))
        .for_each(|((logits, losses), targets)| {
            for ((row, loss), &target) in logits
                .chunks_exact_mut(vocab)
                .zip(losses.iter_mut())
                .zip(targets)
            {
                let target = usize::try_from(target)
                    .ok()
                    .filter(|&t| t < vocab)
                    .expect("cross-entropy targets are token ids of the vocabulary");
                let picked = row[target];
                let log_sum = softmax_row_in_place(row);
                *loss = (log_sum - picked as f64) as f32;
            }
        });
}

per_level! {
    fn scale_in_place(row: &mut [f32], factor: f32) {
        for v in row.iter_mut() {
            *v *= factor;
        }
    }
}

/// The logits' gradient in place of their softmax `probs`: `dloss * (probs - onehot(target))`.
pub(crate) fn cross_entropy_backward(
    probs: &mut [f32],
    vocab: usize,
    targets: &[i64],
    dloss: &[f32],
) {
    probs
        .par_chunks_mut(vocab * ROWS_PER_TASK)
        .zip(dloss.par_chunks(ROWS_PER_TASK))
        .zip(targets.par_chunks(ROWS_PER_TASK))
        .for_each(|((probs, dloss), targets)| {
            for ((row, &g), &target) in probs.chunks_exact_mut(vocab).zip(dloss).zip(targets) {
                row[target as usize] -= 1.0;
                scale_in_place(row, g);
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_level<T>(level: Level, f: impl FnOnce() -> T) -> T {
        FORCED.with(|c| c.set(Some(level)));
        let out = f();
        FORCED.with(|c| c.set(None));
        out
    }

    /// The levels this CPU can run.
    fn levels() -> Vec<Level> {
        let top = level();
        [Level::Avx512, Level::Avx2, Level::Baseline]
            .into_iter()
            .filter(|l| match top {
                Level::Avx512 => true,
                Level::Avx2 => *l != Level::Avx512,
                Level::Baseline => *l == Level::Baseline,
            })
            .collect()
    }

    #[test]
    fn exp_is_within_two_ulp_of_libm_over_the_range_softmax_uses() {
        let mut worst = 0.0f64;
        for i in 0..=200_000 {
            let x = -87.0 + 175.0 * i as f32 / 200_000.0;
            let (mine, libm) = (exp(x) as f64, (x as f64).exp());
            worst = worst.max((mine - libm).abs() / libm);
        }
        assert!(worst < 2.5e-7, "largest relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1000.0) < 1e-37 && exp(1000.0).is_finite());
    }

    #[test]
    fn every_instruction_set_gives_the_same_bits() {
        let values: Vec<f32> = (0..1000)
            .map(|i| ((i * 7919) % 1000) as f32 / 50.0 - 10.0)
            .collect();
        let mask: Vec<bool> = (0..1000).map(|i| i % 3 == 0).collect();
        let run = || {
            let mut out = vec![0.0f32; 1000];
            masked_softmax_row(&mut out, &values, &mask, 0.3);
            let mut row = values.clone();
            let lse = softmax_row_in_place(&mut row);
            let mut gated = vec![0.0f32; 1000];
            swiglu_block(&values, &row, &mut gated);
            out.extend(row);
            out.extend(gated);
            out.push(dot(&values, &values));
            out.push(lse as f32);
            out.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        };
        let levels = levels();
        let first = with_level(levels[0], run);
        for &level in &levels[1..] {
            assert_eq!(with_level(level, run), first, "{level:?}");
        }
    }
}
