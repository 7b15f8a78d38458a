//! The burn model wrapper: a Llama-family causal LM loaded from and saved to Hugging Face
//! layout, its tokenizer, training, and per-example gradient capture.

pub mod batch;
pub mod capture;
pub mod config;
pub mod device;
pub mod lm;
pub mod probe;
pub mod tokenizer;
pub mod train;
pub mod weights;

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context as _, Result};
use burn::tensor::{DType, Device, Tensor};
use regex::Regex;
use tokenizers::Tokenizer;

pub use batch::{IGNORE_INDEX, Padding, Sequence, TokenBatch};
pub use capture::{Capture, DEFAULT_TRACKED, LayerActivations};
pub use config::{Architecture, LmConfig};
pub use device::DeviceSpec;
pub use lm::CausalLm;

use crate::error::InputError;
use weights::TensorSource;

pub const CONFIG_FILE: &str = "config.json";
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// How to load a model directory.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    pub dtype: DType,
    /// Parameters require gradients (training). Otherwise the model is frozen and only capture
    /// probes are differentiated.
    pub trainable: bool,
    /// Initialise missing tensors and ignore unused ones instead of failing.
    pub allow_partial: bool,
    pub seed: u64,
}

impl LoadOptions {
    pub fn inference(device: &Device, dtype: DType) -> Self {
        LoadOptions {
            device: device.clone(),
            dtype,
            trainable: false,
            allow_partial: false,
            seed: 0,
        }
    }
}

/// A causal LM with its configuration and (optional) tokenizer.
#[derive(Debug)]
pub struct LanguageModel {
    pub config: LmConfig,
    pub model: CausalLm,
    pub tokenizer: Option<Tokenizer>,
}

impl LanguageModel {
    /// Load `config.json`, the safetensors weights and `tokenizer.json` (if present).
    pub fn load(dir: &Path, options: &LoadOptions) -> Result<Self> {
        if !dir.is_dir() {
            return Err(InputError::new(
                dir.display().to_string(),
                "model directory does not exist",
            )
            .into());
        }
        let config_path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&config_path).map_err(|e| {
            InputError::new(
                config_path.display().to_string(),
                format!("cannot read: {e}"),
            )
        })?;
        let config = LmConfig::from_json(&text)
            .map_err(|message| InputError::new(config_path.display().to_string(), message))?;
        let tokenizer = read_tokenizer(dir, &config)?;
        let stored = weights::read_checkpoint(dir)?;
        let device = autodiff_device(&options.device);
        let source = TensorSource::checkpoint(
            lm::tensor_specs(&config),
            stored,
            dir,
            options.allow_partial,
            config.tie_word_embeddings,
            &device,
            options.dtype,
        )?
        .seeded(options.seed, config.initializer_range);
        LanguageModel::build(config, tokenizer, source, options.trainable)
    }

    /// A freshly initialised model (transformers' initialisation, seeded).
    pub fn init(
        config: LmConfig,
        tokenizer: Option<Tokenizer>,
        seed: u64,
        device: &Device,
        dtype: DType,
        trainable: bool,
    ) -> Result<Self> {
        let device = autodiff_device(device);
        let source = TensorSource::init(
            lm::tensor_specs(&config),
            config.initializer_range,
            seed,
            &device,
            dtype,
        );
        LanguageModel::build(config, tokenizer, source, trainable)
    }

    fn build(
        config: LmConfig,
        tokenizer: Option<Tokenizer>,
        mut source: TensorSource,
        trainable: bool,
    ) -> Result<Self> {
        if !trainable {
            source = source.frozen();
        }
        let model = CausalLm::build(&config, &mut source)?;
        Ok(LanguageModel {
            config,
            model,
            tokenizer,
        })
    }

    /// Write `config.json`, `model.safetensors` (float32) and `tokenizer.json` into `dir`,
    /// which must exist; `metadata` goes into the safetensors header (provenance). Callers
    /// write to a temporary directory and rename it into place.
    pub fn save(&self, dir: &Path, metadata: &[(String, String)]) -> Result<()> {
        std::fs::write(dir.join(CONFIG_FILE), self.config.to_json())
            .with_context(|| format!("cannot write {}", dir.join(CONFIG_FILE).display()))?;
        let shapes: HashMap<String, Vec<usize>> = lm::tensor_specs(&self.config)
            .into_iter()
            .map(|s| (s.name, s.shape))
            .collect();
        let bytes = weights::to_safetensors(self.model.named_tensors(), &shapes, metadata)?;
        std::fs::write(dir.join(weights::SINGLE_FILE), bytes).with_context(|| {
            format!("cannot write {}", dir.join(weights::SINGLE_FILE).display())
        })?;
        if let Some(tokenizer) = &self.tokenizer {
            tokenizer
                .save(dir.join(TOKENIZER_FILE), true)
                .map_err(|e| anyhow::anyhow!("cannot write tokenizer.json: {e}"))?;
        }
        Ok(())
    }

    /// The token used to pad batches: `pad_token_id`, else `eos_token_id`, else 0 (padded
    /// positions are masked, so any id works).
    pub fn pad_id(&self) -> i64 {
        self.config
            .pad_token_id
            .or(self.config.eos_token_id)
            .unwrap_or(0) as i64
    }

    /// Logits `[B, T, vocab]`.
    pub fn logits(&self, batch: &TokenBatch) -> Tensor<3> {
        self.model.forward(batch, &mut Capture::none())
    }

    /// Summed next-token loss of each sequence.
    pub fn sequence_losses(&self, batch: &TokenBatch) -> Vec<f64> {
        let logits = self.logits(batch);
        tensor_to_f64(self.model.sequence_losses(logits, batch).detach())
    }

    /// One forward and one backward pass: each sequence's summed loss and, for every `Linear`
    /// matching `tracked`, the per-token inputs and output gradients of every example.
    pub fn capture(
        &self,
        batch: &TokenBatch,
        tracked: &Regex,
    ) -> Result<(Vec<f64>, Vec<LayerActivations>)> {
        self.capture_with(batch, tracked, None)
    }

    /// As `capture`, but the loss scores labels drawn from the model's own predictive
    /// distribution (the true Fisher's sampling) at every position that carries a label; row
    /// `b` draws from the stream `seeds[b]`.
    pub fn capture_sampled(
        &self,
        batch: &TokenBatch,
        tracked: &Regex,
        seeds: &[u64],
    ) -> Result<(Vec<f64>, Vec<LayerActivations>)> {
        self.capture_with(batch, tracked, Some(seeds))
    }

    fn capture_with(
        &self,
        batch: &TokenBatch,
        tracked: &Regex,
        sample_seeds: Option<&[u64]>,
    ) -> Result<(Vec<f64>, Vec<LayerActivations>)> {
        let mut capture = Capture::tracking(tracked.clone());
        let logits = self.model.forward(batch, &mut capture);
        let losses = match sample_seeds {
            None => self.model.sequence_losses(logits, batch),
            Some(seeds) => {
                let sampled = sample_labels(&logits, batch, seeds);
                self.model.sequence_losses(logits, &sampled)
            }
        };
        if capture.is_empty() {
            anyhow::bail!(crate::error::UsageError(format!(
                "no module matches '{tracked}' (modules are named like model.layers.0.mlp.up_proj)"
            )));
        }
        let grads = losses.clone().sum().backward();
        let activations = capture.into_activations(&grads);
        Ok((tensor_to_f64(losses.detach()), activations))
    }
}

/// A copy of `batch` whose labels are drawn from softmax(logits) wherever a label is used
/// (label t+1 is scored by the logits at t).
fn sample_labels(logits: &Tensor<3>, batch: &TokenBatch, seeds: &[u64]) -> TokenBatch {
    let [b, t, v] = logits.dims();
    let values = tensor_to_f64(logits.clone().detach());
    let mut sampled = batch.clone();
    for row in 0..b {
        let mut rng = crate::rng::SplitMix64::new(seeds[row]);
        for position in 1..t {
            let index = row * t + position;
            if batch.labels[index] == IGNORE_INDEX {
                continue;
            }
            let scores = &values[(row * t + position - 1) * v..(row * t + position) * v];
            let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let total: f64 = scores.iter().map(|s| (s - max).exp()).sum();
            let mut target = rng.next_f64() * total;
            let mut choice = v - 1;
            for (token, s) in scores.iter().enumerate() {
                target -= (s - max).exp();
                if target < 0.0 {
                    choice = token;
                    break;
                }
            }
            sampled.labels[index] = choice as i64;
        }
    }
    sampled
}

/// Gradient capture needs an autodiff device; frozen parameters keep plain use cheap.
fn autodiff_device(device: &Device) -> Device {
    if device.is_autodiff() {
        device.clone()
    } else {
        device.clone().autodiff()
    }
}

fn read_tokenizer(dir: &Path, config: &LmConfig) -> Result<Option<Tokenizer>> {
    let path = dir.join(TOKENIZER_FILE);
    if !path.is_file() {
        return Ok(None);
    }
    let file = path.display().to_string();
    let tokenizer = Tokenizer::from_file(&path)
        .map_err(|e| InputError::new(file.clone(), format!("not a tokenizer: {e}")))?;
    let size = tokenizer.get_vocab_size(true);
    if size > config.vocab_size {
        return Err(InputError::new(
            file,
            format!(
                "vocab size mismatch: the tokenizer has {size} tokens but config.json's vocab_size is {}",
                config.vocab_size
            ),
        )
        .into());
    }
    Ok(Some(tokenizer))
}

/// Host copy of any float tensor as f64.
pub fn tensor_to_f64<const D: usize>(tensor: Tensor<D>) -> Vec<f64> {
    tensor
        .into_data()
        .convert::<f64>()
        .try_into_vec::<f64>()
        .expect("a float tensor converts to f64")
}
