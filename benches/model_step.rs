//! Forward + backward throughput of the causal LM on the flex backend, in tokens per second.
//!
//! `model_step [ITERS] [BATCH] [SEQ]` builds a ~9.4M-parameter Llama shape (vocab 4096,
//! hidden 256, 10 layers, 8 heads / 4 kv heads, MLP 688) with random weights and times the
//! summed next-token loss and its backward pass over random token batches. Thread count:
//! `RAYON_NUM_THREADS`. `scripts/bench-model` runs this beside the same step in PyTorch.

use std::time::Instant;

use burn::tensor::{DType, Device};
use curate::model::{Architecture, LanguageModel, LmConfig, Padding, Sequence, TokenBatch};
use curate::rng::SplitMix64;

pub fn bench_config() -> LmConfig {
    let mut config = LmConfig::new(Architecture::Llama, 4096, 256, 688, 10, 8, 4);
    config.max_position_embeddings = 512;
    config
}

fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .map(|a| a.parse().expect("numeric arguments"))
        .collect();
    let iters = args.first().copied().unwrap_or(5);
    let batch_size = args.get(1).copied().unwrap_or(8);
    let seq = args.get(2).copied().unwrap_or(128);

    let config = bench_config();
    let params = config.parameter_count();
    let lm = LanguageModel::init(config.clone(), None, 0, &Device::flex(), DType::F32, true)?;
    let mut rng = SplitMix64::new(1);
    let sequences: Vec<Sequence> = (0..batch_size)
        .map(|_| {
            let ids: Vec<i64> = (0..seq)
                .map(|_| (rng.next_u64() % config.vocab_size as u64) as i64)
                .collect();
            Sequence {
                labels: ids.clone(),
                input_ids: ids,
            }
        })
        .collect();
    let refs: Vec<&Sequence> = sequences.iter().collect();
    let batch = TokenBatch::pad(&refs, 0, Padding::Right);
    let step = || {
        let loss = lm
            .model
            .forward_losses(&batch, &mut curate::model::Capture::none())
            .sum();
        let grads = loss.backward();
        // Read one gradient back so the work is not deferred past the timer.
        let g = lm.model.layers[0]
            .mlp
            .down_proj
            .weight
            .val()
            .grad(&grads)
            .unwrap();
        g.sum().into_scalar::<f32>()
    };
    step();
    let start = Instant::now();
    for _ in 0..iters {
        step();
    }
    let seconds = start.elapsed().as_secs_f64() / iters as f64;
    let tokens = (batch_size * seq) as f64;
    println!(
        "curate-flex params={params} batch={batch_size} seq={seq} threads={} step_s={seconds:.4} tokens_per_s={:.1}",
        std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all".into()),
        tokens / seconds
    );
    Ok(())
}
