//! f32 matrix products at SmolLM2-135M's shapes on the flex backend, in GFLOP/s, beside the
//! core's measured FMA peak.
//!
//! `gemm [BATCH] [SEQ]` (default 8 x 256) times every product one training or influence step
//! of SmolLM2-135M runs (hidden 576, MLP 1536, 9 heads of 64, vocabulary 49,152): the
//! projections as `[B*T, in] x [in, out]^T`, their two backward products, the attention
//! scores and context per head, and the LM head over the positions that carry a label (half
//! of them here). Thread count: `RAYON_NUM_THREADS`. The peak lines run independent fused
//! multiply-adds on every thread at once, with 256-bit (AVX2) and, where the CPU has them,
//! 512-bit (AVX-512) registers: what a kernel of each width can reach at most.

use std::hint::black_box;
use std::time::Instant;

use burn::tensor::{Device, Tensor, TensorData};

/// One product `[batch..] [m, k] x [k, n]`, `rhs_transposed` when the right side is stored
/// `[n, k]` (a weight as `Linear` keeps it).
struct Product {
    name: &'static str,
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
    rhs_transposed: bool,
}

fn products(rows: usize, seq: usize, batch: usize) -> Vec<Product> {
    let (hidden, mlp, vocab, heads, head_dim) = (576, 1536, 49_152, 9, 64);
    let p = |name, batch, m, k, n, rhs_transposed| Product {
        name,
        batch,
        m,
        k,
        n,
        rhs_transposed,
    };
    vec![
        p("q/o_proj x W^T", 1, rows, hidden, hidden, true),
        p("gate/up_proj x W^T", 1, rows, hidden, mlp, true),
        p("down_proj x W^T", 1, rows, mlp, hidden, true),
        p("down_proj dx = g W", 1, rows, hidden, mlp, false),
        p("down_proj dW = g^T x", 1, hidden, rows, mlp, false),
        p("attention q k^T", batch * heads, seq, head_dim, seq, true),
        p("attention w v", batch * heads, seq, seq, head_dim, false),
        p("LM head (labelled half)", 1, rows / 2, hidden, vocab, true),
    ]
}

fn random(shape: [usize; 3], seed: u64, device: &Device) -> Tensor<3> {
    let mut rng = curate::rng::SplitMix64::new(seed);
    let values: Vec<f32> = (0..shape.iter().product::<usize>())
        .map(|_| (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
        .collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// GFLOP/s of one product, timed over at least half a second after a warm-up.
fn measure(product: &Product, device: &Device) -> f64 {
    let lhs = random([product.batch, product.m, product.k], 1, device);
    let rhs_shape = if product.rhs_transposed {
        [product.batch, product.n, product.k]
    } else {
        [product.batch, product.k, product.n]
    };
    let rhs = random(rhs_shape, 2, device);
    let run = || {
        let rhs = if product.rhs_transposed {
            rhs.clone().swap_dims(1, 2)
        } else {
            rhs.clone()
        };
        let out = lhs.clone().matmul(rhs);
        // Reading one value back forces the product to run before the timer stops.
        black_box(out.slice([0..1, 0..1, 0..1]).into_scalar::<f32>());
    };
    run();
    let flops = 2.0 * (product.batch * product.m * product.k * product.n) as f64;
    let start = Instant::now();
    let mut runs = 0usize;
    while runs < 3 || start.elapsed().as_secs_f64() < 0.5 {
        run();
        runs += 1;
    }
    flops * runs as f64 / start.elapsed().as_secs_f64() / 1e9
}

/// Fused multiply-adds per second on this core with `lanes`-wide f32 registers: twelve
/// independent accumulator chains hide the FMA latency.
#[cfg(target_arch = "x86_64")]
mod peak {
    use std::arch::x86_64::*;
    use std::hint::black_box;
    use std::time::Instant;

    const CHAINS: usize = 12;
    const ROUNDS: usize = 20_000_000;

    #[target_feature(enable = "avx2,fma")]
    unsafe fn fma256(a: f32, b: f32) -> f32 {
        let mut acc: [__m256; CHAINS] = std::array::from_fn(|i| _mm256_set1_ps(i as f32));
        let a = _mm256_set1_ps(a);
        let b = _mm256_set1_ps(b);
        for _ in 0..ROUNDS {
            for x in acc.iter_mut() {
                *x = _mm256_fmadd_ps(*x, a, b);
            }
        }
        let mut sum = 0.0;
        for x in acc {
            let mut lanes = [0f32; 8];
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), x) };
            sum += lanes.iter().sum::<f32>();
        }
        sum
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn fma512(a: f32, b: f32) -> f32 {
        let mut acc: [__m512; CHAINS] = std::array::from_fn(|i| _mm512_set1_ps(i as f32));
        let a = _mm512_set1_ps(a);
        let b = _mm512_set1_ps(b);
        for _ in 0..ROUNDS {
            for x in acc.iter_mut() {
                *x = _mm512_fmadd_ps(*x, a, b);
            }
        }
        acc.iter().map(|x| _mm512_reduce_add_ps(*x)).sum()
    }

    /// GFLOP/s of `threads` copies of `kernel` running at once, one per thread.
    fn rate(lanes: usize, threads: usize, kernel: fn(f32, f32) -> f32) -> f64 {
        // Opaque operands and results: the compiler must run every call in full.
        black_box(kernel(black_box(0.999_999), black_box(1e-7)));
        let start = Instant::now();
        std::thread::scope(|scope| {
            for t in 0..threads {
                scope.spawn(move || black_box(kernel(black_box(0.999_998), black_box(t as f32))));
            }
        });
        let flops = 2.0 * (CHAINS * ROUNDS * lanes * threads) as f64;
        flops / start.elapsed().as_secs_f64() / 1e9
    }

    /// (label, GFLOP/s) for each register width this CPU runs, on `threads` threads at once.
    pub fn rates(threads: usize) -> Vec<(&'static str, f64)> {
        let mut out = Vec::new();
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            out.push((
                "AVX2 (8 lanes)",
                rate(8, threads, |a, b| unsafe { fma256(a, b) }),
            ));
        }
        if is_x86_feature_detected!("avx512f") {
            out.push((
                "AVX-512 (16 lanes)",
                rate(16, threads, |a, b| unsafe { fma512(a, b) }),
            ));
        }
        out
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod peak {
    pub fn rates(_threads: usize) -> Vec<(&'static str, f64)> {
        Vec::new()
    }
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .map(|a| a.parse().expect("numeric arguments"))
        .collect();
    let batch = args.first().copied().unwrap_or(8);
    let seq = args.get(1).copied().unwrap_or(256);
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    #[cfg(target_arch = "x86_64")]
    println!(
        "cpu: avx2={} avx512f={} threads={threads} batch={batch} seq={seq}",
        is_x86_feature_detected!("avx2"),
        is_x86_feature_detected!("avx512f"),
    );
    for (label, rate) in peak::rates(threads) {
        println!("FMA peak, {threads} thread(s), {label:<18} {rate:>7.1} GFLOP/s");
    }
    let device = Device::flex();
    for product in products(batch * seq, seq, batch) {
        let shape = format!(
            "{}[{}x{}]x[{}x{}]",
            if product.batch > 1 {
                format!("{}x", product.batch)
            } else {
                String::new()
            },
            product.m,
            product.k,
            product.k,
            product.n
        );
        println!(
            "{:<24} {:<26} {:>7.1} GFLOP/s",
            product.name,
            shape,
            measure(&product, &device)
        );
    }
}
