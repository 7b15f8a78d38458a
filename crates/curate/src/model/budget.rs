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
    /// More memory than the run's budget allows.
    #[error("{what} needs about {} of memory, more than {budget}", bytes(*needed))]
    OverBudget {
        what: String,
        needed: u128,
        budget: String,
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

/// The multiply-adds of one forward pass of a sequence of `tokens` tokens, `labelled` of them
/// scored by the LM head: every layer's projections per token, its attention scores and
/// weighted values per pair of positions (computed in full, masked after), and the head per
/// labelled token. What a row costs relative to another, for cutting shards that take about
/// the same time; the backward pass scales it by a constant. Saturates instead of
/// overflowing.
pub fn sequence_work(config: &LmConfig, tokens: usize, labelled: usize) -> u64 {
    let n = |v: usize| v as u128;
    let (h, t) = (n(config.hidden_size), n(tokens));
    let q = n(config.num_heads).saturating_mul(n(config.head_dim));
    let kv = n(config.num_kv_heads).saturating_mul(n(config.head_dim));
    let projections = h
        .saturating_mul(q.saturating_mul(2).saturating_add(kv.saturating_mul(2)))
        .saturating_add(
            h.saturating_mul(n(config.intermediate_size))
                .saturating_mul(3),
        );
    let per_layer = t
        .saturating_mul(projections)
        .saturating_add(t.saturating_mul(t).saturating_mul(q).saturating_mul(2));
    let head = n(labelled)
        .saturating_mul(n(config.vocab_size))
        .saturating_mul(h);
    let work = n(config.num_layers)
        .saturating_mul(per_layer)
        .saturating_add(head);
    work.min(u64::MAX as u128) as u64
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

/// How a pass over a batch holds memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassKind {
    /// Forward only (eval): one layer's activations live at a time, then the head's.
    Forward,
    /// Forward and backward without updating the weights (influence): every layer's
    /// activations are kept for the backward pass.
    Gradient,
    /// Training: as `Gradient`, with the weights' gradients and two optimizer moments.
    Train,
}

/// An estimate of a run's peak memory as a function of its batch: the weights (and what
/// training keeps beside them), what the run adds that does not depend on the batch (factors,
/// caches), and the activations of one batch. Calibrated on SmolLM2-135M (eval and influence at
/// 8 x 256 tokens, with the fused kernels and with the composed operations: within 25% of the
/// measured peak); an estimate for choosing a batch and refusing one that cannot fit, not a
/// promise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Footprint {
    fixed: u128,
    bytes_per_value: u128,
    layers: u128,
    pass: PassKind,
    hidden: u128,
    kv: u128,
    intermediate: u128,
    heads: u128,
    vocab: u128,
    /// The most tokens of one sequence the head scores (None: all of them).
    labelled: Option<u128>,
    /// The passes run the fused row kernels (flex in f32), which keep one tensor where the
    /// composed operations keep several.
    fused: bool,
    extra_per_token: u128,
    /// Batches held at once (passes that run batches side by side).
    in_flight: u128,
}

impl Footprint {
    pub fn new(config: &LmConfig, bytes_per_value: usize, pass: PassKind) -> Self {
        // Training keeps gradients and two optimizer moments beside the weights, and saving
        // holds one more copy (measured on SmolLM2: 4.4 GiB at the save against 2.8 GiB after
        // the first step).
        let copies: u128 = if pass == PassKind::Train { 5 } else { 1 };
        let bytes_per_value = bytes_per_value as u128;
        Footprint {
            fixed: parameters(config)
                .unwrap_or(u128::MAX)
                .saturating_mul(copies * bytes_per_value),
            bytes_per_value,
            layers: config.num_layers as u128,
            pass,
            hidden: config.hidden_size as u128,
            kv: (config.num_kv_heads as u128).saturating_mul(config.head_dim as u128),
            intermediate: config.intermediate_size as u128,
            heads: config.num_heads as u128,
            vocab: config.vocab_size as u128,
            labelled: None,
            fused: false,
            extra_per_token: 0,
            in_flight: 1,
        }
    }

    /// At most `tokens` tokens of a sequence carry a label: the head scores only those.
    pub fn labelled(mut self, tokens: usize) -> Self {
        self.labelled = Some(tokens as u128);
        self
    }

    /// Whether the passes run the fused row kernels.
    pub fn fused_kernels(mut self, fused: bool) -> Self {
        self.fused = fused;
        self
    }

    /// Values a layer holds per token beyond its attention probabilities, and how many
    /// copies of those probabilities (a row of `heads x tokens` per token).
    /// - Forward only: one layer at a time, its projections, MLP and scores in flight.
    /// - Backward to follow, fused kernels: what each layer's backward reads (both norms'
    ///   inputs, the queries, keys and values, the MLP's gate and up projections, one copy of
    ///   the probabilities); training also keeps every projection's input for its weight's
    ///   gradient.
    /// - Backward to follow, composed operations: each element-wise step keeps its own
    ///   output, about twice as much.
    fn per_token_layer(&self) -> (u128, u128) {
        let (h, kv, i) = (self.hidden, self.kv, self.intermediate);
        match (self.pass, self.fused) {
            (PassKind::Gradient, true) => (4 * h + 2 * kv + 2 * i, 1),
            (PassKind::Train, true) => (6 * h + 2 * kv + 3 * i, 1),
            (PassKind::Forward, _) | (_, false) => (12 * h + 4 * i, 2),
        }
    }

    /// Copies of a labelled token's vocabulary-wide row the head holds: the fused
    /// cross-entropy turns the logits into probabilities (and those into their gradient) in
    /// place, and a forward pass holds the logits and the probabilities at once; the composed
    /// log-softmax keeps the logits, their log-softmax and its gradient.
    fn head_copies(&self) -> u128 {
        match (self.pass, self.fused) {
            (PassKind::Forward, _) => 2,
            (_, true) => 1,
            (_, false) => 3,
        }
    }

    /// Add bytes that do not depend on the batch (factors, caches).
    pub fn plus_fixed(mut self, bytes: u128) -> Self {
        self.fixed = self.fixed.saturating_add(bytes);
        self
    }

    /// Add bytes kept for every token of a batch (the inputs and output gradients captured at
    /// tracked layers).
    pub fn plus_per_token(mut self, bytes: u128) -> Self {
        self.extra_per_token = self.extra_per_token.saturating_add(bytes);
        self
    }

    /// `batches` batches are held at once.
    pub fn in_flight(mut self, batches: usize) -> Self {
        self.in_flight = batches.max(1) as u128;
        self
    }

    /// The estimated peak of a batch of `batch` sequences padded to `tokens` tokens: per token
    /// and layer the attention's and MLP's inputs and outputs and a row of attention scores
    /// (all layers when a backward pass follows, one otherwise), and the head's logits with
    /// their softmax (and gradient) for the labelled tokens.
    pub fn bytes(&self, batch: usize, tokens: usize) -> u128 {
        let t = tokens as u128;
        let (per_layer, score_copies) = self.per_token_layer();
        let per_layer =
            per_layer.saturating_add(self.heads.saturating_mul(t).saturating_mul(score_copies));
        let layers = if self.pass == PassKind::Forward {
            1
        } else {
            self.layers
        };
        let per_token = layers
            .saturating_mul(per_layer)
            .saturating_mul(self.bytes_per_value)
            .saturating_add(self.extra_per_token);
        let labelled = self.labelled.map_or(t, |l| l.min(t));
        let head = labelled
            .saturating_mul(self.head_copies())
            .saturating_mul(self.vocab)
            .saturating_mul(self.bytes_per_value);
        let per_sequence = t.saturating_mul(per_token).saturating_add(head);
        (batch as u128)
            .saturating_mul(per_sequence)
            .saturating_mul(self.in_flight)
            .saturating_add(self.fixed)
    }

    /// The largest batch, at most `most`, whose estimate for sequences of `tokens` tokens stays
    /// within `budget` bytes; None when not even one sequence does.
    pub fn largest_batch(&self, tokens: usize, most: usize, budget: u128) -> Option<usize> {
        if most == 0 || self.bytes(1, tokens) > budget {
            return None;
        }
        // The estimate grows with the batch: the last size that fits, by bisection.
        let (mut fits, mut too_big) = (1usize, most + 1);
        while too_big - fits > 1 {
            let mid = fits + (too_big - fits) / 2;
            if self.bytes(mid, tokens) <= budget {
                fits = mid;
            } else {
                too_big = mid;
            }
        }
        Some(fits)
    }
}

impl Footprint {
    /// How many batches of `batch` sequences of `tokens` tokens, at most `most`, may be held at
    /// once within `budget` bytes (at least one).
    pub fn most_in_flight(&self, batch: usize, tokens: usize, most: usize, budget: u128) -> usize {
        (1..=most.max(1))
            .rev()
            .find(|&n| self.clone().in_flight(n).bytes(batch, tokens) <= budget)
            .unwrap_or(1)
    }
}

/// How much memory a run may plan for: a share of what is available, or a size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MemoryBudget {
    Share(f64),
    Bytes(u128),
}

/// A memory budget that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a memory size: give a share of the available memory (80%) or a size (12GiB, 512M, 1.5GB)"
)]
pub struct BadMemoryBudget(String);

impl std::str::FromStr for MemoryBudget {
    type Err = BadMemoryBudget;

    /// `80%`; `12GiB`, `12G` (binary, as Slurm's `--mem` reads it), `12GB` (decimal); plain
    /// bytes. K, M, G and T, each as `X`, `XiB` or `XB`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || BadMemoryBudget(text.to_string());
        let trimmed = text.trim();
        if let Some(share) = trimmed.strip_suffix('%') {
            let share: f64 = share.trim().parse().map_err(|_| bad())?;
            return if share > 0.0 && share <= 100.0 {
                Ok(MemoryBudget::Share(share / 100.0))
            } else {
                Err(bad())
            };
        }
        let split = trimmed
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(trimmed.len());
        let (number, unit) = trimmed.split_at(split);
        let number: f64 = number.parse().map_err(|_| bad())?;
        let unit = unit.trim().to_ascii_lowercase();
        let (prefix, decimal) = match unit.as_str() {
            "" | "b" => ("", false),
            u => match u.strip_suffix("ib") {
                Some(p) => (p, false),
                None => match u.strip_suffix('b') {
                    Some(p) => (p, true),
                    None => (u, false),
                },
            },
        };
        let power = ["", "k", "m", "g", "t"]
            .iter()
            .position(|p| *p == prefix)
            .ok_or_else(bad)?;
        let base: f64 = if decimal { 1000.0 } else { 1024.0 };
        let value = number * base.powi(power as i32);
        if !value.is_finite() || value < 1.0 {
            return Err(bad());
        }
        Ok(MemoryBudget::Bytes(value as u128))
    }
}

impl MemoryBudget {
    /// The budget in bytes given what is available (None: not known, so a share of it is no
    /// limit), and how to say it.
    pub fn resolve(self, available: Option<u64>) -> Option<(u128, String)> {
        match self {
            MemoryBudget::Bytes(n) => Some((n, format!("the memory budget of {}", bytes(n)))),
            MemoryBudget::Share(share) => available.map(|a| {
                let n = (a as f64 * share) as u128;
                (
                    n,
                    format!(
                        "the memory budget of {} ({}% of the {} available)",
                        bytes(n),
                        share * 100.0,
                        bytes(a as u128)
                    ),
                )
            }),
        }
    }
}

/// Refuse a batch whose estimated peak exceeds the budget, with both numbers; the estimate when
/// it fits.
pub fn check_batch(
    footprint: &Footprint,
    batch: usize,
    tokens: usize,
    budget: Option<&(u128, String)>,
) -> Result<u128, ModelTooLarge> {
    let needed = footprint.bytes(batch, tokens);
    match budget {
        Some((limit, said)) if needed > *limit => Err(ModelTooLarge::OverBudget {
            what: format!("a batch of {batch} sequences of up to {tokens} tokens"),
            needed,
            budget: said.clone(),
        }),
        _ => Ok(needed),
    }
}

/// The most memory this process has held so far (its peak resident set), where the system
/// reports it.
pub fn peak_resident() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kib * 1024)
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
pub fn bytes(n: u128) -> String {
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
        let fits = Footprint::new(&small, 4, PassKind::Train);
        let available = available_memory().map(|a| (a as u128, "available".to_string()));
        assert!(check_batch(&fits, 8, 256, available.as_ref()).is_ok());
        // A SmolLM2-sized vocabulary over a million 100k-token rows in one batch.
        let mut wide = config(30, 576);
        wide.vocab_size = 49_152;
        let limit = (64u128 << 30, "the memory budget of 64.0 GiB".to_string());
        let footprint = Footprint::new(&wide, 4, PassKind::Gradient);
        let err = check_batch(&footprint, 1_000_000, 100_000, Some(&limit)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "a batch of 1000000 sequences of up to 100000 tokens needs about 4.5e6 TiB of memory, more than the memory budget of 64.0 GiB"
        );
        assert_eq!(bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
        assert_eq!(count(135_000_000), "135.0M");
    }

    /// SmolLM2-135M's shape (untied weights counted once: tied).
    fn smollm2() -> LmConfig {
        let mut c = LmConfig::new(Architecture::Llama, 49_152, 576, 1536, 30, 9, 3);
        c.tie_word_embeddings = true;
        c
    }

    #[test]
    fn estimates_match_measured_peaks_and_grow_with_the_batch() {
        let c = smollm2();
        let mib = |b: u128| b as f64 / (1u64 << 20) as f64;
        // Composed operations, every position labelled, measured with /usr/bin/time at 8 x 256
        // tokens: eval 1,161 MiB, influence over 9 tracked MLP projections 6,513 MiB.
        let eval = Footprint::new(&c, 4, PassKind::Forward).bytes(8, 256);
        assert!((900.0..1500.0).contains(&mib(eval)), "{}", mib(eval));
        let tracked = 3 * (2 * (576 + 1 + 1536) + (1536 + 1 + 576)) as u128 * 4;
        let influence = Footprint::new(&c, 4, PassKind::Gradient).plus_per_token(tracked);
        let composed = influence.bytes(8, 256);
        assert!(
            (5000.0..8200.0).contains(&mib(composed)),
            "{}",
            mib(composed)
        );
        // Fused kernels, at most 171 labelled tokens a row (fixtures/smollm2's longest rows,
        // 8 x 256 tokens): eval 1,097 MiB; influence 2,842 MiB (9 projections, the 61 MiB of
        // one preconditioned query gradient and 430 MiB of factors put aside).
        let eval = Footprint::new(&c, 4, PassKind::Forward)
            .fused_kernels(true)
            .labelled(171)
            .bytes(8, 256);
        assert!(
            (1097.0..1097.0 * 1.25).contains(&mib(eval)),
            "{}",
            mib(eval)
        );
        let fused = influence.clone().fused_kernels(true).labelled(171);
        let gradient = fused.bytes(8, 256) + (61 << 20);
        assert!(
            (2842.0..2842.0 * 1.25).contains(&mib(gradient)),
            "{}",
            mib(gradient)
        );
        assert!(fused.bytes(8, 256) < influence.clone().fused_kernels(true).bytes(8, 256));
        let two = Footprint::new(&c, 4, PassKind::Forward).in_flight(2);
        let one = Footprint::new(&c, 4, PassKind::Forward);
        assert_eq!(
            two.bytes(8, 256) - two.bytes(0, 256),
            2 * (one.bytes(8, 256) - one.bytes(0, 256))
        );
        for fused in [false, true] {
            let train = Footprint::new(&c, 4, PassKind::Train).fused_kernels(fused);
            assert!(train.bytes(1, 256) < train.bytes(2, 256));
            assert!(train.bytes(2, 256) < train.bytes(2, 512));
            let gradient = Footprint::new(&c, 4, PassKind::Gradient).fused_kernels(fused);
            assert!(train.bytes(0, 256) > gradient.bytes(0, 256));
            assert!(train.bytes(8, 256) > gradient.bytes(8, 256));
        }
    }

    #[test]
    fn sequence_work_counts_projections_attention_and_the_head() {
        let config = smollm2();
        // SmolLM2-135M: 30 layers of 576 wide, 9 x 64 query and 3 x 64 key/value heads,
        // 1536 intermediate; 49,152 tokens in the vocabulary.
        let projections = 576 * (2 * 576 + 2 * 192) + 3 * 576 * 1536;
        assert_eq!(sequence_work(&config, 1, 0), 30 * (projections + 2 * 576));
        let head = 49_152 * 576;
        assert_eq!(
            sequence_work(&config, 256, 100),
            30 * (256 * projections + 2 * 256 * 256 * 576) + 100 * head
        );
        // Twice the length is more than twice the work (attention), never less.
        assert!(sequence_work(&config, 2048, 0) > 2 * sequence_work(&config, 1024, 0));
        let mut huge = config;
        huge.num_layers = usize::MAX;
        assert_eq!(sequence_work(&huge, usize::MAX, usize::MAX), u64::MAX);
    }

    #[test]
    fn the_largest_batch_is_the_last_that_fits() {
        let f = Footprint::new(&smollm2(), 4, PassKind::Gradient);
        let budget = f.bytes(13, 256);
        assert_eq!(f.largest_batch(256, 64, budget), Some(13));
        assert_eq!(f.largest_batch(256, 64, budget - 1), Some(12));
        assert_eq!(f.largest_batch(256, 5, budget), Some(5));
        assert_eq!(f.largest_batch(256, 64, f.bytes(1, 256) - 1), None);
        assert_eq!(f.largest_batch(256, 0, u128::MAX), None);
        assert_eq!(f.largest_batch(256, 64, u128::MAX), Some(64));
        let two = f.clone().in_flight(2).bytes(8, 256);
        assert_eq!(f.most_in_flight(8, 256, 4, two), 2);
        assert_eq!(f.most_in_flight(8, 256, 4, two - 1), 1);
        assert_eq!(f.most_in_flight(8, 256, 4, 0), 1);
    }

    #[test]
    fn memory_budgets_parse_as_shares_and_sizes() {
        let parse = |s: &str| s.parse::<MemoryBudget>();
        assert_eq!(parse("80%"), Ok(MemoryBudget::Share(0.8)));
        assert_eq!(parse("12GiB"), Ok(MemoryBudget::Bytes(12 << 30)));
        assert_eq!(parse("12G"), Ok(MemoryBudget::Bytes(12 << 30)));
        assert_eq!(parse("12gb"), Ok(MemoryBudget::Bytes(12_000_000_000)));
        assert_eq!(parse("1.5 GiB"), Ok(MemoryBudget::Bytes(3 << 29)));
        assert_eq!(parse("512M"), Ok(MemoryBudget::Bytes(512 << 20)));
        assert_eq!(parse("4096"), Ok(MemoryBudget::Bytes(4096)));
        for bad in ["", "0%", "120%", "lots", "12X", "-1G", "0", "GiB", "1e400"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        let share = MemoryBudget::Share(0.5).resolve(Some(8 << 30)).unwrap();
        assert_eq!(share.0, 4 << 30);
        assert_eq!(
            share.1,
            "the memory budget of 4.0 GiB (50% of the 8.0 GiB available)"
        );
        assert_eq!(MemoryBudget::Share(0.5).resolve(None), None);
        assert_eq!(MemoryBudget::Bytes(7).resolve(None).unwrap().0, 7);
    }
}
