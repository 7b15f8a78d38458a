//! The burn model wrapper: a Llama-family causal LM loaded from and saved to Hugging Face
//! layout, its tokenizer, training, and per-example gradient capture.

pub mod batch;
pub mod budget;
pub mod capture;
pub mod chat;
pub mod checkpoint;
pub mod config;
pub mod device;
pub mod encode;
pub(crate) mod from_gguf;
pub mod fused;
pub mod generate;
pub mod gguf;
pub mod inspect;
mod kernels;
pub mod lm;
pub mod probe;
pub mod tokenizer;
pub mod train;
pub mod weights;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use burn::tensor::{DType, Device, Tensor};
use regex::Regex;
use tokenizers::Tokenizer;

pub(crate) use batch::IGNORE_INDEX;
pub use batch::{Padding, Sequence, TokenBatch};
pub use budget::ModelTooLarge;
pub(crate) use capture::LayerActivations;
pub use capture::{Capture, DEFAULT_TRACKED};
pub(crate) use chat::SpecialTokenText;
pub use chat::{ChatTemplate, Message};
pub use config::{Architecture, LmConfig};
pub use device::DeviceSpec;
pub(crate) use lm::CausalLm;
pub use weights::{MismatchKind, TensorMismatch};

use crate::error::InputError;
use weights::TensorSource;

pub(crate) const CONFIG_FILE: &str = "config.json";
pub(crate) const TOKENIZER_FILE: &str = "tokenizer.json";
pub(crate) const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
/// Where transformers (4.43 and later) keeps a model's chat template.
pub(crate) const CHAT_TEMPLATE_FILE: &str = "chat_template.jinja";
const CHAT_TEMPLATE_JSON: &str = "chat_template.json";

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

/// A chat template as the model carries it (compiled when a command uses it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateText {
    pub text: String,
    /// Where it was found, for error messages.
    pub origin: String,
}

/// A causal LM with its configuration, tokenizer and chat template (both optional).
#[derive(Debug)]
pub struct LanguageModel {
    pub config: LmConfig,
    pub model: CausalLm,
    pub tokenizer: Option<Tokenizer>,
    /// Why there is no tokenizer, when the model has a vocabulary curate does not rebuild.
    pub tokenizer_note: Option<String>,
    pub chat_template: Option<TemplateText>,
    /// The special token texts a chat template refers to.
    pub special_tokens: SpecialTokenText,
}

/// Refuse, before any tensor is allocated, a model whose shape asks for more values than its
/// weight files hold (unless missing tensors may be initialised) or more memory than there is.
fn check_fits(
    config: &LmConfig,
    stored: &std::collections::BTreeMap<String, weights::StoredTensor>,
    options: &LoadOptions,
) -> Result<u128, ModelTooLarge> {
    let values = stored
        .values()
        .map(|t| {
            t.shape
                .iter()
                .fold(1u128, |n, &d| n.saturating_mul(d as u128))
        })
        .fold(0u128, u128::saturating_add);
    budget::check_model(
        config,
        (!options.allow_partial).then_some(values),
        options.dtype.size(),
        options.trainable,
    )
}

/// True when `path` is a GGUF file: by its magic bytes, or by its `.gguf` extension (so an
/// empty or damaged one is reported as a bad GGUF file, not as an unknown table format).
pub fn is_gguf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    let named = path
        .extension()
        .is_some_and(|ext| ext.eq_ignore_ascii_case("gguf"));
    path.is_file()
        && (named
            || std::fs::File::open(path)
                .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
                .is_ok()
                && &magic == b"GGUF")
}

/// The files a model is made of (for content hashes): a GGUF file, or a directory's
/// config.json and weight files.
pub fn model_files(path: &Path) -> Result<Vec<PathBuf>> {
    if is_gguf(path) {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = vec![path.join(CONFIG_FILE)];
    files.extend(weights::checkpoint_files(path)?);
    Ok(files)
}

impl LanguageModel {
    /// Whether its passes run the fused row kernels (flex in f32), which hold less memory
    /// than the composed operations.
    pub fn runs_fused_kernels(&self) -> bool {
        let weights = self.model.embed_tokens.val();
        fused::applies(&weights.device(), weights.dtype())
    }
}

impl LanguageModel {
    /// Load a model directory in Hugging Face layout (`config.json`, the safetensors weights,
    /// `tokenizer.json` and the chat template when present) or a GGUF file.
    pub fn load(path: &Path, options: &LoadOptions) -> Result<Self> {
        if is_gguf(path) {
            return LanguageModel::load_gguf(path, options);
        }
        let dir = path;
        if !dir.is_dir() {
            let message = if dir.exists() {
                "not a model directory or a GGUF file"
            } else {
                "model directory does not exist"
            };
            return Err(InputError::new(dir.display().to_string(), message).into());
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
        check_fits(&config, &stored, options)
            .map_err(|e| InputError::new(config_path.display().to_string(), e.to_string()))?;
        let device = autodiff_device(&options.device);
        let source = TensorSource::checkpoint(
            lm::tensor_specs(&config),
            stored,
            dir,
            CONFIG_FILE,
            options.allow_partial,
            config.tie_word_embeddings,
            &device,
            options.dtype,
        )?
        .seeded(options.seed, config.initializer_range);
        let mut lm = LanguageModel::build(config, tokenizer, source, options.trainable)?;
        lm.chat_template = read_chat_template(dir)?;
        lm.special_tokens = read_special_tokens(dir)?;
        Ok(lm)
    }

    /// The chat template a model directory carries, without loading the model.
    pub(crate) fn template_of_dir(dir: &Path) -> Result<Option<TemplateText>> {
        read_chat_template(dir)
    }

    /// A GGUF file: configuration from its metadata, dequantised weights, the embedded
    /// tokenizer and chat template.
    fn load_gguf(path: &Path, options: &LoadOptions) -> Result<Self> {
        let file = gguf::GgufFile::open(path)?;
        let config = from_gguf::config(&file)?;
        let tokenizer = from_gguf::tokenizer(&file)?;
        let stored = from_gguf::read_weights(&file, &config)?;
        check_fits(&config, &stored, options)
            .map_err(|e| InputError::new(file.label(), e.to_string()))?;
        let device = autodiff_device(&options.device);
        let source = TensorSource::checkpoint(
            lm::tensor_specs(&config),
            stored,
            path,
            "the GGUF metadata",
            options.allow_partial,
            config.tie_word_embeddings,
            &device,
            options.dtype,
        )?
        .seeded(options.seed, config.initializer_range);
        let tokenizer_note = tokenizer.is_none().then(|| match from_gguf::tokenizer_kind(&file) {
            "none" => "the GGUF file has no tokenizer".to_string(),
            kind => format!(
                "its tokenizer kind '{kind}' is not one curate rebuilds (only byte-level BPE, 'gpt2')"
            ),
        });
        let mut lm = LanguageModel::build(config, tokenizer, source, options.trainable)?;
        lm.tokenizer_note = tokenizer_note;
        lm.chat_template = from_gguf::chat_template(&file).map(|text| TemplateText {
            text,
            origin: format!("{} (tokenizer.chat_template)", file.label()),
        });
        lm.special_tokens = from_gguf::special_tokens(&file);
        Ok(lm)
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
        budget::check_model(&config, None, dtype.size(), trainable)?;
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
            tokenizer_note: None,
            chat_template: None,
            special_tokens: SpecialTokenText::default(),
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
            let path = dir.join(TOKENIZER_CONFIG_FILE);
            std::fs::write(&path, self.tokenizer_config(tokenizer))
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        if let Some(template) = &self.chat_template {
            let path = dir.join(CHAT_TEMPLATE_FILE);
            std::fs::write(&path, &template.text)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(())
    }

    /// `tokenizer_config.json`: the special tokens by text, and the plain fast-tokenizer class
    /// so transformers does not swap in a model-specific one with other defaults.
    fn tokenizer_config(&self, tokenizer: &Tokenizer) -> String {
        let by_id = |id: Option<u32>| id.and_then(|id| tokenizer.id_to_token(id));
        let special = &self.special_tokens;
        let entries = [
            (
                "bos_token",
                special
                    .bos
                    .clone()
                    .or_else(|| by_id(self.config.bos_token_id)),
            ),
            (
                "eos_token",
                special
                    .eos
                    .clone()
                    .or_else(|| by_id(self.config.eos_token_id)),
            ),
            ("unk_token", special.unk.clone()),
            (
                "pad_token",
                special
                    .pad
                    .clone()
                    .or_else(|| by_id(self.config.pad_token_id)),
            ),
        ];
        let mut map = serde_json::Map::new();
        map.insert("tokenizer_class".into(), "PreTrainedTokenizerFast".into());
        map.insert("add_bos_token".into(), false.into());
        map.insert("add_eos_token".into(), false.into());
        for (key, value) in entries {
            map.insert(
                key.into(),
                value.map_or(serde_json::Value::Null, Into::into),
            );
        }
        map.insert(
            "model_max_length".into(),
            self.config.max_position_embeddings.into(),
        );
        let mut text = serde_json::to_string_pretty(&serde_json::Value::Object(map))
            .expect("a JSON object serialises");
        text.push('\n');
        text
    }

    /// The chat template to use: the model's own (`Auto`), none, or one given as text; compiled
    /// with the model's special tokens. Errors name where the template came from.
    pub fn chat_template(&self, choice: &TemplateChoice) -> Result<Option<ChatTemplate>> {
        let text = match choice {
            TemplateChoice::None => return Ok(None),
            TemplateChoice::Auto => match &self.chat_template {
                Some(text) => text.clone(),
                None => return Ok(None),
            },
            TemplateChoice::Given(text) => text.clone(),
        };
        let origin = text.origin.clone();
        ChatTemplate::new(text.text, self.special_tokens.clone())
            .map(|template| Some(template.with_origin(origin)))
            .map_err(|e| {
                InputError::new(
                    text.origin,
                    format!("the chat template does not compile: {e}"),
                )
                .into()
            })
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
        let losses = self.model.forward_losses(batch, &mut Capture::none());
        tensor_to_f64(losses.detach())
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
    pub(crate) fn capture_sampled(
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
        let hidden = self.model.hidden(batch, &mut capture);
        let scored = lm::ScoredPositions::of(batch);
        let logits = self.model.scored_logits(hidden, &scored);
        let losses = match sample_seeds {
            None => self.model.scored_losses(logits, &scored, &scored.targets),
            Some(seeds) => {
                let sampled = sample_labels(&logits, &scored, seeds);
                self.model.scored_losses(logits, &scored, &sampled)
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

/// Labels drawn from softmax(logits) at every scored position (`logits` holds one row per
/// position, row-major); batch row `b` draws its positions in order from the stream
/// `seeds[b]`, so the draws do not depend on how rows are batched.
fn sample_labels(logits: &Tensor<2>, scored: &lm::ScoredPositions, seeds: &[u64]) -> Vec<i64> {
    let [n, v] = logits.dims();
    let values = tensor_to_f64(logits.clone().detach());
    let mut labels = Vec::with_capacity(n);
    let mut rng = None;
    let mut current = usize::MAX;
    for (i, &row) in scored.row.iter().enumerate() {
        if row != current {
            current = row;
            rng = Some(crate::rng::SplitMix64::new(seeds[row]));
        }
        let rng = rng.as_mut().expect("set for the row");
        let scores = &values[i * v..(i + 1) * v];
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
        labels.push(choice as i64);
    }
    labels
}

/// Gradient capture needs an autodiff device; frozen parameters keep plain use cheap.
fn autodiff_device(device: &Device) -> Device {
    if device.is_autodiff() {
        device.clone()
    } else {
        device.clone().autodiff()
    }
}

/// Which chat template a command uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateChoice {
    /// The model's own, when it has one.
    Auto,
    None,
    Given(TemplateText),
}

impl TemplateChoice {
    /// `auto`, `none`, or a Jinja template file (read here; the error is the file's).
    pub fn from_spec(spec: &str) -> std::io::Result<TemplateChoice> {
        Ok(match spec {
            "auto" => TemplateChoice::Auto,
            "none" => TemplateChoice::None,
            path => TemplateChoice::Given(TemplateText {
                text: std::fs::read_to_string(path)?,
                origin: path.to_string(),
            }),
        })
    }
}

/// A JSON file of a model directory, when present.
fn read_json(path: &Path) -> Result<Option<serde_json::Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let label = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| InputError::new(label.clone(), format!("cannot read: {e}")))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| InputError::new(label, format!("not JSON: {e}")).into())
}

/// The chat template of a model directory: `chat_template.jinja`, `chat_template.json`, or the
/// `chat_template` of `tokenizer_config.json` (a string, or a list of named templates of which
/// "default" is taken).
fn read_chat_template(dir: &Path) -> Result<Option<TemplateText>> {
    let jinja = dir.join(CHAT_TEMPLATE_FILE);
    if jinja.is_file() {
        let origin = jinja.display().to_string();
        let text = std::fs::read_to_string(&jinja)
            .map_err(|e| InputError::new(origin.clone(), format!("cannot read: {e}")))?;
        return Ok(Some(TemplateText { text, origin }));
    }
    for file in [CHAT_TEMPLATE_JSON, TOKENIZER_CONFIG_FILE] {
        let path = dir.join(file);
        let Some(json) = read_json(&path)? else {
            continue;
        };
        let origin = format!("{} (chat_template)", path.display());
        match json.get("chat_template") {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::String(text)) => {
                return Ok(Some(TemplateText {
                    text: text.clone(),
                    origin,
                }));
            }
            Some(serde_json::Value::Array(named)) => {
                let default = named.iter().find(|t| t["name"] == "default");
                if let Some(text) = default.and_then(|t| t["template"].as_str()) {
                    return Ok(Some(TemplateText {
                        text: text.to_string(),
                        origin,
                    }));
                }
            }
            Some(_) => {
                return Err(InputError::new(origin, "chat_template is not a string").into());
            }
        }
    }
    Ok(None)
}

/// bos/eos/unk/pad token texts from `tokenizer_config.json` (strings or `{"content": ...}`).
fn read_special_tokens(dir: &Path) -> Result<SpecialTokenText> {
    let Some(json) = read_json(&dir.join(TOKENIZER_CONFIG_FILE))? else {
        return Ok(SpecialTokenText::default());
    };
    let text = |key: &str| match json.get(key) {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Object(o)) => o
            .get("content")
            .and_then(|c| c.as_str())
            .map(str::to_string),
        _ => None,
    };
    Ok(SpecialTokenText {
        bos: text("bos_token"),
        eos: text("eos_token"),
        unk: text("unk_token"),
        pad: text("pad_token"),
    })
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

/// The summed next-token loss of each sequence (input order), computed in batches of
/// `batch_size` rows of similar length, right-padded with `pad_id`; `on_batch` runs after each
/// batch with its row count (progress, Ctrl-C).
///
/// Batches run side by side, one per rayon thread: burn's element-wise kernels (exponentials,
/// norms, activations) use one core, so a second batch in flight keeps the other busy. The
/// batches are cut the same way whatever the thread count and each is computed as it would be
/// alone, so the losses do not depend on the number of threads.
pub fn batched_losses(
    model: &CausalLm,
    pad_id: i64,
    sequences: &[Sequence],
    batch_size: usize,
    on_batch: &mut (dyn FnMut(usize) -> Result<()> + Send),
) -> Result<Vec<f64>> {
    use rayon::prelude::*;
    let mut order: Vec<usize> = (0..sequences.len()).collect();
    order.sort_by_key(|&i| (sequences[i].len(), i));
    let chunks: Vec<&[usize]> = order.chunks(batch_size.max(1)).collect();
    let on_batch = std::sync::Mutex::new(on_batch);
    let values = chunks
        .par_iter()
        .map(|chunk| {
            let batch: Vec<&Sequence> = chunk.iter().map(|&i| &sequences[i]).collect();
            let batch = TokenBatch::pad(&batch, pad_id, Padding::Right);
            let values = tensor_to_f64(model.forward_losses(&batch, &mut Capture::none()).detach());
            (on_batch.lock().expect("progress callback"))(chunk.len())?;
            Ok(values)
        })
        .collect::<Result<Vec<Vec<f64>>>>()?;
    let mut losses = vec![0.0; sequences.len()];
    for (chunk, values) in chunks.iter().zip(values) {
        for (&row, loss) in chunk.iter().zip(values) {
            losses[row] = loss;
        }
    }
    Ok(losses)
}

/// How many batches [`batched_losses`] may hold in memory at once.
pub fn batches_in_flight(batches: usize) -> usize {
    rayon::current_num_threads().min(batches).max(1)
}

/// Host copy of any float tensor as f64.
pub fn tensor_to_f64<const D: usize>(tensor: Tensor<D>) -> Vec<f64> {
    tensor
        .into_data()
        .convert::<f64>()
        .try_into_vec::<f64>()
        .expect("a float tensor converts to f64")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_choices_name_the_model_s_none_or_a_file() {
        assert_eq!(
            TemplateChoice::from_spec("auto").unwrap(),
            TemplateChoice::Auto
        );
        assert_eq!(
            TemplateChoice::from_spec("none").unwrap(),
            TemplateChoice::None
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jinja");
        std::fs::write(&path, "{{ messages }}").unwrap();
        let spec = path.to_str().unwrap();
        let TemplateChoice::Given(text) = TemplateChoice::from_spec(spec).unwrap() else {
            panic!("a file is a given template");
        };
        assert_eq!(
            (text.text.as_str(), text.origin.as_str()),
            ("{{ messages }}", spec)
        );
        assert!(TemplateChoice::from_spec("/no/such/template.jinja").is_err());
    }

    /// A tiny model whose parameters take gradients, and a right-padded batch whose rows carry
    /// loss on part of their tokens only.
    fn tiny_batch() -> (LanguageModel, TokenBatch) {
        let mut config = LmConfig::new(Architecture::Llama, 32, 16, 24, 2, 2, 1);
        config.max_position_embeddings = 32;
        let lm = LanguageModel::init(config, None, 3, &Device::flex(), DType::F32, true).unwrap();
        let rows = [
            Sequence::prompt_response(&[1, 2, 3, 4], &[5, 6]),
            Sequence::prompt_response(&[7], &[8, 9, 10, 11, 12]),
            Sequence::prompt_response(&[13, 14], &[]),
        ];
        let refs: Vec<&Sequence> = rows.iter().collect();
        (lm, TokenBatch::pad(&refs, 0, Padding::Right))
    }

    #[test]
    fn losses_at_scored_positions_equal_the_full_logits_losses_and_gradients() {
        let (lm, batch) = tiny_batch();
        let full = lm
            .model
            .sequence_losses(lm.model.forward(&batch, &mut Capture::none()), &batch);
        let scored = lm.model.forward_losses(&batch, &mut Capture::none());
        let (full_values, scored_values) = (
            tensor_to_f64(full.clone().detach()),
            tensor_to_f64(scored.clone().detach()),
        );
        assert_eq!(scored_values[2], 0.0, "a row without labels has no loss");
        for (a, b) in full_values.iter().zip(&scored_values) {
            assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0), "{a} vs {b}");
        }
        let full_grads = full.sum().backward();
        let scored_grads = scored.sum().backward();
        let embedding = lm.model.embed_tokens.val();
        let a = tensor_to_f64(embedding.grad(&full_grads).unwrap());
        let b = tensor_to_f64(embedding.grad(&scored_grads).unwrap());
        let scale = a.iter().fold(0f64, |m, v| m.max(v.abs()));
        let largest = a
            .iter()
            .zip(&b)
            .fold(0f64, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            scale > 0.0 && largest <= 1e-5 * scale,
            "{largest} of {scale}"
        );
    }

    #[test]
    fn the_fused_kernels_give_the_composed_model_s_losses_and_gradients() {
        let (lm, right) = tiny_batch();
        let rows = [
            Sequence::prompt_response(&[1, 2, 3, 4], &[5, 6]),
            Sequence::prompt_response(&[7], &[8, 9]),
        ];
        let refs: Vec<&Sequence> = rows.iter().collect();
        // Left padding: the first queries of the short row see no key at all.
        let left = TokenBatch::pad(&refs, 0, Padding::Left);
        let m = &lm.model;
        let run = |batch: &TokenBatch| {
            let losses = m.forward_losses(batch, &mut Capture::none());
            let grads = losses.clone().sum().backward();
            let layer = &m.layers[1];
            let mut out = vec![tensor_to_f64(losses.detach())];
            for weight in [
                m.embed_tokens.val(),
                layer.self_attn.q_proj.weight.val(),
                layer.self_attn.k_proj.weight.val(),
                layer.mlp.gate_proj.weight.val(),
                layer.mlp.up_proj.weight.val(),
            ] {
                out.push(tensor_to_f64(weight.grad(&grads).unwrap()));
            }
            for weight in [
                m.layers[0].input_layernorm.weight.val(),
                layer.post_attention_layernorm.weight.val(),
                m.norm.weight.val(),
            ] {
                out.push(tensor_to_f64(weight.grad(&grads).unwrap()));
            }
            out
        };
        for batch in [&right, &left] {
            let fused = run(batch);
            let composed = fused::with_composed_ops(|| run(batch));
            for (i, (a, b)) in fused.iter().zip(&composed).enumerate() {
                let scale = b.iter().fold(0f64, |m, v| m.max(v.abs()));
                let largest = a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((x - y).abs()));
                assert!(
                    scale > 0.0 && largest <= 2e-5 * scale,
                    "tensor {i}: {largest} of {scale}"
                );
            }
        }
    }

    #[test]
    fn sampled_labels_do_not_depend_on_the_batching() {
        let (lm, batch) = tiny_batch();
        let scored = lm::ScoredPositions::of(&batch);
        let hidden = lm.model.hidden(&batch, &mut Capture::none());
        let logits = lm.model.scored_logits(hidden, &scored);
        let together = sample_labels(&logits, &scored, &[11, 12, 13]);
        assert_eq!(together.len(), 7);
        // The second row alone, with its own seed, draws what it drew beside the others.
        let alone = TokenBatch::pad(
            &[&Sequence::prompt_response(&[7], &[8, 9, 10, 11, 12])],
            0,
            Padding::Right,
        );
        let scored_alone = lm::ScoredPositions::of(&alone);
        let hidden = lm.model.hidden(&alone, &mut Capture::none());
        let logits = lm.model.scored_logits(hidden, &scored_alone);
        assert_eq!(sample_labels(&logits, &scored_alone, &[12]), together[2..]);
    }
}
