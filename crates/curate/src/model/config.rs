//! The causal LM configuration, read from and written to a Hugging Face `config.json`.

use serde_json::{Map, Value, json};

/// Which member of the Llama family; decides where biases live and how `config.json` is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// `LlamaForCausalLM`: biases on all attention projections only with `attention_bias`,
    /// on the MLP only with `mlp_bias`.
    Llama,
    /// `Qwen2ForCausalLM`: biases on q, k and v; none on o or the MLP.
    Qwen2,
}

impl Architecture {
    pub fn model_type(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Qwen2 => "qwen2",
        }
    }

    fn class_name(self) -> &'static str {
        match self {
            Architecture::Llama => "LlamaForCausalLM",
            Architecture::Qwen2 => "Qwen2ForCausalLM",
        }
    }
}

/// Everything the forward pass needs, with transformers' defaults where a key may be absent.
#[derive(Debug, Clone, PartialEq)]
pub struct LmConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Biases on q, k, v (Qwen2 always; Llama with `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on o_proj (Llama with `attention_bias`).
    pub o_bias: bool,
    /// Biases on the MLP projections (Llama with `mlp_bias`).
    pub mlp_bias: bool,
    pub initializer_range: f64,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
}

impl LmConfig {
    /// A fresh config with transformers' defaults for everything but the shape.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        architecture: Architecture,
        vocab_size: usize,
        hidden_size: usize,
        intermediate_size: usize,
        num_layers: usize,
        num_heads: usize,
        num_kv_heads: usize,
    ) -> Self {
        LmConfig {
            architecture,
            vocab_size,
            hidden_size,
            intermediate_size,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim: hidden_size / num_heads.max(1),
            rms_norm_eps: 1e-6,
            rope_theta: 10000.0,
            max_position_embeddings: 2048,
            tie_word_embeddings: false,
            qkv_bias: architecture == Architecture::Qwen2,
            o_bias: false,
            mlp_bias: false,
            initializer_range: 0.02,
            bos_token_id: None,
            eos_token_id: None,
            pad_token_id: None,
        }
    }

    /// Parse a `config.json`. Errors are plain messages; the caller names the file.
    pub(crate) fn from_json(text: &str) -> Result<Self, String> {
        let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let map = value
            .as_object()
            .ok_or_else(|| "not a JSON object".to_string())?;
        let model_type = map
            .get("model_type")
            .and_then(Value::as_str)
            .ok_or_else(|| "no \"model_type\"".to_string())?;
        let architecture = match model_type {
            "llama" => Architecture::Llama,
            "qwen2" => Architecture::Qwen2,
            other => {
                return Err(format!(
                    "unsupported model_type \"{other}\" (supported: llama, qwen2)"
                ));
            }
        };
        let int = |key: &str| -> Result<usize, String> {
            map.get(key)
                .and_then(Value::as_u64)
                .map(|v| v as usize)
                .ok_or_else(|| format!("\"{key}\" missing or not a non-negative integer"))
        };
        // An optional key: absent or null is None, any other value must have the right type.
        let optional = |key: &str, what: &str, read: fn(&Value) -> Option<Value>| match map.get(key)
        {
            None | Some(Value::Null) => Ok(None),
            Some(v) => read(v)
                .map(Some)
                .ok_or_else(|| format!("\"{key}\" is not {what}")),
        };
        let opt_int = |key: &str| -> Result<Option<usize>, String> {
            let v = optional(key, "a non-negative integer", |v| {
                v.as_u64().map(Value::from)
            })?;
            Ok(v.and_then(|v| v.as_u64()).map(|v| v as usize))
        };
        let float = |key: &str, default: f64| -> Result<f64, String> {
            let v = optional(key, "a number", |v| v.as_f64().map(Value::from))?;
            Ok(v.and_then(|v| v.as_f64()).unwrap_or(default))
        };
        let flag = |key: &str, default: bool| -> Result<bool, String> {
            let v = optional(key, "true or false", |v| v.as_bool().map(Value::from))?;
            Ok(v.and_then(|v| v.as_bool()).unwrap_or(default))
        };
        // eos may be a list in newer configs; the first entry is the end-of-text token.
        let token = |key: &str| -> Option<u32> {
            match map.get(key) {
                Some(Value::Number(n)) => n.as_u64().map(|v| v as u32),
                Some(Value::Array(items)) => {
                    items.first().and_then(Value::as_u64).map(|v| v as u32)
                }
                _ => None,
            }
        };

        if let Some(act) = map.get("hidden_act").and_then(Value::as_str)
            && act != "silu"
        {
            return Err(format!("unsupported hidden_act \"{act}\" (only silu)"));
        }
        let rope = rope_settings(map)?;

        let hidden_size = int("hidden_size")?;
        let num_heads = int("num_attention_heads")?;
        let num_kv_heads = opt_int("num_key_value_heads")?.unwrap_or(num_heads);
        if num_heads == 0 || num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
            return Err(format!(
                "num_attention_heads ({num_heads}) must be a positive multiple of num_key_value_heads ({num_kv_heads})"
            ));
        }
        let head_dim = opt_int("head_dim")?.unwrap_or(hidden_size / num_heads);
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(format!("head_dim {head_dim} must be even and positive"));
        }
        let attention_bias = flag("attention_bias", false)?;
        let config = LmConfig {
            architecture,
            vocab_size: int("vocab_size")?,
            hidden_size,
            intermediate_size: int("intermediate_size")?,
            num_layers: int("num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: float("rms_norm_eps", 1e-6)?,
            rope_theta: rope,
            max_position_embeddings: opt_int("max_position_embeddings")?.unwrap_or(2048),
            tie_word_embeddings: flag("tie_word_embeddings", false)?,
            qkv_bias: match architecture {
                Architecture::Qwen2 => true,
                Architecture::Llama => attention_bias,
            },
            o_bias: architecture == Architecture::Llama && attention_bias,
            mlp_bias: architecture == Architecture::Llama && flag("mlp_bias", false)?,
            initializer_range: float("initializer_range", 0.02)?,
            bos_token_id: token("bos_token_id"),
            eos_token_id: token("eos_token_id"),
            pad_token_id: token("pad_token_id"),
        };
        if config.vocab_size == 0 || config.hidden_size == 0 || config.num_layers == 0 {
            return Err("vocab_size, hidden_size and num_hidden_layers must be positive".into());
        }
        config.check_values()?;
        Ok(config)
    }

    /// The values a forward pass divides by, exponentiates or indexes with must be usable:
    /// a corrupt file would otherwise load and give NaN losses or index past the vocabulary.
    pub(crate) fn check_values(&self) -> Result<(), String> {
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            return Err(format!(
                "rms_norm_eps {} must be a positive number",
                self.rms_norm_eps
            ));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 1.0) {
            return Err(format!(
                "rope_theta {} must be a number above 1",
                self.rope_theta
            ));
        }
        for (name, id) in [
            ("bos_token_id", self.bos_token_id),
            ("eos_token_id", self.eos_token_id),
            ("pad_token_id", self.pad_token_id),
        ] {
            if let Some(id) = id
                && id as usize >= self.vocab_size
            {
                return Err(format!(
                    "{name} {id} is outside the vocabulary of {} tokens",
                    self.vocab_size
                ));
            }
        }
        Ok(())
    }

    /// The `config.json` transformers reads back into the same model. Both rope spellings are
    /// written so transformers 4.x and 5.x agree.
    pub(crate) fn to_json(&self) -> String {
        let mut map = Map::new();
        map.insert(
            "architectures".into(),
            json!([self.architecture.class_name()]),
        );
        map.insert("model_type".into(), json!(self.architecture.model_type()));
        map.insert("vocab_size".into(), json!(self.vocab_size));
        map.insert("hidden_size".into(), json!(self.hidden_size));
        map.insert("intermediate_size".into(), json!(self.intermediate_size));
        map.insert("num_hidden_layers".into(), json!(self.num_layers));
        map.insert("num_attention_heads".into(), json!(self.num_heads));
        map.insert("num_key_value_heads".into(), json!(self.num_kv_heads));
        map.insert("head_dim".into(), json!(self.head_dim));
        map.insert("hidden_act".into(), json!("silu"));
        map.insert("rms_norm_eps".into(), json!(self.rms_norm_eps));
        map.insert("rope_theta".into(), json!(self.rope_theta));
        map.insert(
            "rope_parameters".into(),
            json!({"rope_theta": self.rope_theta, "rope_type": "default"}),
        );
        map.insert(
            "max_position_embeddings".into(),
            json!(self.max_position_embeddings),
        );
        map.insert(
            "tie_word_embeddings".into(),
            json!(self.tie_word_embeddings),
        );
        map.insert("initializer_range".into(), json!(self.initializer_range));
        if self.architecture == Architecture::Llama {
            map.insert("attention_bias".into(), json!(self.o_bias));
            map.insert("mlp_bias".into(), json!(self.mlp_bias));
        }
        map.insert("bos_token_id".into(), json!(self.bos_token_id));
        map.insert("eos_token_id".into(), json!(self.eos_token_id));
        map.insert("pad_token_id".into(), json!(self.pad_token_id));
        map.insert("torch_dtype".into(), json!("float32"));
        map.insert("use_cache".into(), json!(false));
        let mut text =
            serde_json::to_string_pretty(&Value::Object(map)).expect("config serialises");
        text.push('\n');
        text
    }

    /// Number of parameters, counting a tied embedding once.
    pub fn parameter_count(&self) -> usize {
        let h = self.hidden_size;
        let q = self.num_heads * self.head_dim;
        let kv = self.num_kv_heads * self.head_dim;
        let i = self.intermediate_size;
        let attention = h * q
            + 2 * h * kv
            + q * h
            + if self.qkv_bias { q + 2 * kv } else { 0 }
            + if self.o_bias { h } else { 0 };
        let mlp = 3 * h * i + if self.mlp_bias { 2 * i + h } else { 0 };
        let layer = attention + mlp + 2 * h;
        let embeddings = self.vocab_size * h * if self.tie_word_embeddings { 1 } else { 2 };
        embeddings + self.num_layers * layer + h
    }
}

/// `rope_theta` from transformers 4.x (top level) or 5.x (`rope_parameters`); scaled variants
/// (linear, dynamic, yarn, llama3) change the frequencies and are refused rather than ignored.
fn rope_settings(map: &Map<String, Value>) -> Result<f64, String> {
    let mut theta = None;
    for key in ["rope_parameters", "rope_scaling"] {
        if let Some(Value::Object(params)) = map.get(key) {
            if let Some(kind) = params
                .get("rope_type")
                .or_else(|| params.get("type"))
                .and_then(Value::as_str)
                && kind != "default"
            {
                return Err(format!("unsupported rope_type \"{kind}\" (only default)"));
            }
            if theta.is_none() {
                theta = params.get("rope_theta").and_then(Value::as_f64);
            }
        }
    }
    if let Some(top) = map.get("rope_theta").and_then(Value::as_f64) {
        theta = Some(top);
    }
    Ok(theta.unwrap_or(10000.0))
}

/// Where a fresh model's shape comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum ConfigSource<'a> {
    /// A `config.json` file.
    File(&'a str),
    /// These numbers, with transformers' defaults for the rest.
    Shape {
        architecture: Architecture,
        hidden_size: usize,
        intermediate_size: usize,
        layers: usize,
        heads: usize,
        kv_heads: usize,
        max_positions: usize,
        tie_embeddings: bool,
    },
}

/// The config of a fresh model for `tokenizer`: its vocabulary must fit, and the end-of-text
/// and padding tokens default to the tokenizer's end-of-text token.
pub fn fresh_config(
    source: &ConfigSource,
    tokenizer: &tokenizers::Tokenizer,
) -> anyhow::Result<LmConfig> {
    use crate::error::InputError;
    let vocab = tokenizer.get_vocab_size(true);
    let end_of_text = tokenizer.token_to_id(super::tokenizer::END_OF_TEXT);
    let mut config = match *source {
        ConfigSource::File(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| InputError::new(path, format!("cannot read: {e}")))?;
            let config = LmConfig::from_json(&text).map_err(|m| InputError::new(path, m))?;
            if config.vocab_size < vocab {
                return Err(InputError::new(
                    path,
                    format!(
                        "vocab size mismatch: vocab_size {} is smaller than the tokenizer's {vocab} tokens",
                        config.vocab_size
                    ),
                )
                .into());
            }
            config
        }
        ConfigSource::Shape {
            architecture,
            hidden_size,
            intermediate_size,
            layers,
            heads,
            kv_heads,
            max_positions,
            tie_embeddings,
        } => {
            let mut config = LmConfig::new(
                architecture,
                vocab,
                hidden_size,
                intermediate_size,
                layers,
                heads,
                kv_heads,
            );
            config.max_position_embeddings = max_positions;
            config.tie_word_embeddings = tie_embeddings;
            config
        }
    };
    if config.eos_token_id.is_none() {
        config.eos_token_id = end_of_text;
    }
    if config.pad_token_id.is_none() {
        config.pad_token_id = config.eos_token_id;
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_config_fits_the_tokenizer() {
        let texts = ["one two three", "two three four"];
        let tokenizer =
            crate::model::tokenizer::train_byte_level_bpe(texts.iter().copied(), 300).unwrap();
        let shape = ConfigSource::Shape {
            architecture: Architecture::Qwen2,
            hidden_size: 8,
            intermediate_size: 16,
            layers: 1,
            heads: 2,
            kv_heads: 1,
            max_positions: 32,
            tie_embeddings: true,
        };
        let config = fresh_config(&shape, &tokenizer).unwrap();
        assert_eq!(config.vocab_size, tokenizer.get_vocab_size(true));
        assert!(config.eos_token_id.is_some());
        assert_eq!(config.pad_token_id, config.eos_token_id);
        assert!(config.tie_word_embeddings && config.qkv_bias);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let small = LmConfig {
            vocab_size: 4,
            ..config
        };
        std::fs::write(&path, small.to_json()).unwrap();
        let err = fresh_config(&ConfigSource::File(path.to_str().unwrap()), &tokenizer)
            .unwrap_err()
            .to_string();
        assert!(err.contains("vocab size mismatch"), "{err}");
    }

    #[test]
    fn reads_rope_theta_from_either_spelling() {
        let base = r#""model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":2"#;
        let v4 = LmConfig::from_json(&format!("{{{base},\"rope_theta\":500000.0}}")).unwrap();
        assert_eq!(v4.rope_theta, 500000.0);
        let v5 = LmConfig::from_json(&format!(
            "{{{base},\"rope_parameters\":{{\"rope_theta\":1000.0,\"rope_type\":\"default\"}}}}"
        ))
        .unwrap();
        assert_eq!(v5.rope_theta, 1000.0);
        assert_eq!(v5.num_kv_heads, 2);
        assert_eq!(v5.head_dim, 4);
        let scaled = LmConfig::from_json(&format!(
            "{{{base},\"rope_scaling\":{{\"rope_type\":\"llama3\",\"factor\":8.0}}}}"
        ));
        assert!(scaled.unwrap_err().contains("llama3"));
    }

    #[test]
    fn refuses_other_architectures_and_round_trips() {
        let err = LmConfig::from_json(r#"{"model_type":"gpt2"}"#).unwrap_err();
        assert!(err.contains("unsupported model_type \"gpt2\""), "{err}");
        let mut config = LmConfig::new(Architecture::Llama, 100, 16, 32, 2, 4, 2);
        config.tie_word_embeddings = true;
        config.eos_token_id = Some(0);
        let back = LmConfig::from_json(&config.to_json()).unwrap();
        assert_eq!(back, config);
    }
}
