//! What a model needs before it is built: its parameter count (checked arithmetic, since a
//! config or GGUF header is untrusted input), against the values its weight files hold and the
//! memory the machine has, so an absurd shape is refused with the numbers instead of growing
//! until the kernel kills the process.

use super::LmConfig;

/// A model (or one batch of it) that cannot fit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelTooLarge {
    /// The shape's sizes multiply past any real model.
    #[error("the model's shape is too large to count ({0})")]
    Overflow(String),
    /// The shape asks for far more parameters than the weight files hold values.
    #[error(
        "the configuration describes {} parameters, but the weights hold only {} values",
        count(*parameters),
        count(*stored)
    )]
    MoreThanStored { parameters: u128, stored: u128 },
    /// More memory than is available.
    #[error(
        "{what} needs about {} of memory, more than the {} available",
        bytes(*needed),
        bytes(*available as u128)
    )]
    Memory {
        what: String,
        needed: u128,
        available: u64,
    },
}

/// Parameters a shape may have beyond twice what its weight files hold before it is refused
/// outright.
const ALLOWED_EXTRA: u128 = 1 << 20;

/// The parameter count of `config` (a tied embedding once), or None when it overflows.
pub fn parameters(config: &LmConfig) -> Option<u128> {
    let n = |v: usize| v as u128;
    let h = n(config.hidden_size);
    let q = n(config.num_heads).checked_mul(n(config.head_dim))?;
    let kv = n(config.num_kv_heads).checked_mul(n(config.head_dim))?;
    let i = n(config.intermediate_size);
    let attention = h
        .checked_mul(q)?
        .checked_add(h.checked_mul(kv)?.checked_mul(2)?)?
        .checked_add(q.checked_mul(h)?)?
        .checked_add(if config.qkv_bias { q + 2 * kv } else { 0 })?
        .checked_add(if config.o_bias { h } else { 0 })?;
    let mlp = h
        .checked_mul(i)?
        .checked_mul(3)?
        .checked_add(if config.mlp_bias { 2 * i + h } else { 0 })?;
    let layer = attention.checked_add(mlp)?.checked_add(2 * h)?;
    let embeddings = n(config.vocab_size)
        .checked_mul(h)?
        .checked_mul(if config.tie_word_embeddings { 1 } else { 2 })?;
    embeddings
        .checked_add(n(config.num_layers).checked_mul(layer)?)?
        .checked_add(h)
}

/// Check a model about to be built: `stored` is how many values its weight files hold (None
/// when every tensor may be initialised, as with `allow_partial`), `bytes_per_value` the dtype
/// it is built in; training keeps gradients and two optimizer moments beside the weights.
pub fn check_model(
    config: &LmConfig,
    stored: Option<u128>,
    bytes_per_value: usize,
    trainable: bool,
) -> Result<u128, ModelTooLarge> {
    let parameters = parameters(config).ok_or_else(|| {
        ModelTooLarge::Overflow(format!(
            "{} layers of width {}, {} intermediate, vocabulary {}",
            config.num_layers, config.hidden_size, config.intermediate_size, config.vocab_size
        ))
    })?;
    // A shape a little larger than its weights (a layer added) is left to the tensor check,
    // which names the missing tensors; one far larger is refused here, before the key map of
    // its tensors is even built.
    if let Some(stored) = stored
        && parameters > stored.saturating_mul(2).saturating_add(ALLOWED_EXTRA)
    {
        return Err(ModelTooLarge::MoreThanStored { parameters, stored });
    }
    let copies: u128 = if trainable { 4 } else { 1 };
    let needed = parameters
        .saturating_mul(bytes_per_value as u128)
        .saturating_mul(copies);
    check_memory(
        needed,
        &format!(
            "a model of {} parameters{}",
            count(parameters),
            if trainable { " in training" } else { "" }
        ),
    )?;
    Ok(parameters)
}

/// The activations one forward and backward pass of `batch` sequences of `tokens` tokens keeps
/// (f32): per layer the attention's inputs, scores and outputs and the MLP's, plus the logits
/// and their gradient. An estimate for refusing the absurd, not a prediction.
pub fn batch_activation_bytes(config: &LmConfig, batch: usize, tokens: usize) -> u128 {
    let (b, t) = (batch as u128, tokens as u128);
    let per_token_layer = 12 * config.hidden_size as u128
        + 4 * config.intermediate_size as u128
        + 2 * config.num_heads as u128 * t;
    let per_token = (config.num_layers as u128)
        .saturating_mul(per_token_layer)
        .saturating_add(3 * config.vocab_size as u128);
    b.saturating_mul(t)
        .saturating_mul(per_token)
        .saturating_mul(4)
}

/// Refuse a run whose weights (with their gradients and optimizer moments when training) and
/// the activations of one batch of `batch` sequences of up to `longest` tokens need more memory
/// than is available. A rough estimate: it is there to refuse the absurd early, with numbers.
pub fn check_batches(
    config: &LmConfig,
    batch: usize,
    longest: usize,
    bytes_per_value: usize,
    training: bool,
) -> Result<(), ModelTooLarge> {
    let copies: u128 = if training { 4 } else { 1 };
    let weights = parameters(config)
        .unwrap_or(u128::MAX)
        .saturating_mul(copies * bytes_per_value as u128);
    check_memory(
        weights.saturating_add(batch_activation_bytes(config, batch, longest)),
        &format!("a batch of {batch} sequences of up to {longest} tokens"),
    )
}

/// Refuse `needed` bytes when the machine has less available.
pub fn check_memory(needed: u128, what: &str) -> Result<(), ModelTooLarge> {
    match available_memory() {
        Some(available) if needed > available as u128 => Err(ModelTooLarge::Memory {
            what: what.to_string(),
            needed,
            available,
        }),
        _ => Ok(()),
    }
}

/// Memory this process may still use: the kernel's estimate of available memory, lowered to a
/// cgroup (v2) limit where one is set (containers, Slurm jobs). None where neither is known.
pub fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok();
    let available = meminfo.as_deref().and_then(|text| {
        text.lines()
            .find_map(|line| line.strip_prefix("MemAvailable:"))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map(|kib| kib * 1024)
    });
    let cgroup = cgroup_headroom();
    match (available, cgroup) {
        (Some(a), Some(c)) => Some(a.min(c)),
        (a, c) => a.or(c),
    }
}

fn cgroup_headroom() -> Option<u64> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = own.lines().find_map(|line| line.strip_prefix("0::"))?;
    let dir = std::path::Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/'));
    let max = std::fs::read_to_string(dir.join("memory.max")).ok()?;
    let max: u64 = max.trim().parse().ok()?; // "max" means no limit
    let current: u64 = std::fs::read_to_string(dir.join("memory.current"))
        .ok()
        .and_then(|c| c.trim().parse().ok())
        .unwrap_or(0);
    Some(max.saturating_sub(current))
}

/// A count for people: 1.2e18, 135.0M, 4096.
fn count(n: u128) -> String {
    match n {
        n if n >= 1_000_000_000_000 => format!("{:.1e}", n as f64),
        n if n >= 1_000_000_000 => format!("{:.1}G", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.1}M", n as f64 / 1e6),
        n => n.to_string(),
    }
}

/// Bytes for people: 3.2 GiB, 1.1e12 TiB.
fn bytes(n: u128) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if value >= 1e6 {
        format!("{value:.1e} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Architecture;

    fn config(layers: usize, hidden: usize) -> LmConfig {
        LmConfig::new(Architecture::Llama, 100, hidden, 2 * hidden, layers, 2, 1)
    }

    #[test]
    fn counts_agree_with_the_model_and_overflow_is_caught() {
        let small = config(2, 16);
        assert_eq!(parameters(&small), Some(small.parameter_count() as u128));
        let mut absurd = config(usize::MAX / 2, usize::MAX / 4);
        absurd.head_dim = 8;
        assert_eq!(parameters(&absurd), None);
        assert!(matches!(
            check_model(&absurd, None, 4, false),
            Err(ModelTooLarge::Overflow(_))
        ));
    }

    #[test]
    fn a_shape_larger_than_its_weights_or_the_machine_is_refused() {
        let small = config(2, 16);
        let n = parameters(&small).unwrap();
        assert_eq!(check_model(&small, Some(n), 4, true), Ok(n));
        assert_eq!(check_model(&small, Some(n - 1), 4, false), Ok(n));
        let err = check_model(&small, Some(n / 4), 4, false);
        assert!(err.is_ok(), "small gaps are left to the tensor check");
        let big = config(2, 4096);
        let n = parameters(&big).unwrap();
        let err = check_model(&big, Some(n / 4), 4, false).unwrap_err();
        assert!(matches!(err, ModelTooLarge::MoreThanStored { .. }));
        assert!(err.to_string().contains("hold only"), "{err}");
        // A billion layers: no machine has the memory, with or without weights to compare.
        let huge = config(1_000_000_000, 576);
        if available_memory().is_some() {
            let err = check_model(&huge, None, 4, false).unwrap_err();
            assert!(matches!(err, ModelTooLarge::Memory { .. }), "{err}");
            assert!(err.to_string().contains("needs about"), "{err}");
        }
        assert!(batch_activation_bytes(&small, 8, 256) > 0);
        assert_eq!(check_batches(&small, 8, 256, 4, true), Ok(()));
        if available_memory().is_some() {
            // A SmolLM2-sized vocabulary over a million 100k-token rows in one batch.
            let mut wide = config(30, 576);
            wide.vocab_size = 49_152;
            let err = check_batches(&wide, 1_000_000, 100_000, 4, false).unwrap_err();
            assert!(
                err.to_string().contains("a batch of 1000000 sequences"),
                "{err}"
            );
        }
        assert_eq!(bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
        assert_eq!(count(135_000_000), "135.0M");
    }
}
