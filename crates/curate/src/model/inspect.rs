//! What `inspect` reports of a model: architecture, size, tensor types, tokenizer, chat
//! template and provenance, read from headers only (no tensor data).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use super::{LmConfig, from_gguf, gguf};
use crate::error::InputError;
use crate::table::Provenance;
use crate::table::inspect::{ProvenanceReport, write_provenance};
use crate::text::clip;

/// A model directory or GGUF file: its architecture, size, tokenizer, chat template and
/// provenance.
#[derive(Debug, Serialize)]
pub struct ModelReport {
    pub path: String,
    pub format: &'static str,
    pub model_type: String,
    pub parameters: usize,
    pub tensors: usize,
    pub dtypes: Vec<String>,
    /// Tensors per stored type (quantisation, for GGUF).
    pub tensor_types: BTreeMap<String, usize>,
    pub files: usize,
    #[serde(flatten)]
    pub shape: ModelShape,
    pub tokenizer_tokens: Option<usize>,
    /// What kind of tokenizer (GGUF: llama.cpp's tokenizer model and pre-tokenizer).
    pub tokenizer_kind: Option<String>,
    /// Characters of the chat template, when the model has one.
    pub chat_template_chars: Option<usize>,
    pub provenance: Option<ProvenanceReport>,
    /// GGUF only: the file version and its metadata (long arrays cut to their first items).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gguf: Option<serde_json::Value>,
}

/// The architecture's numbers, as `config.json` (or a GGUF's metadata) gives them.
#[derive(Debug, Serialize)]
pub struct ModelShape {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub rope_theta: f64,
    pub tied_embeddings: bool,
}

impl From<&LmConfig> for ModelShape {
    fn from(config: &LmConfig) -> Self {
        ModelShape {
            vocab_size: config.vocab_size,
            hidden_size: config.hidden_size,
            intermediate_size: config.intermediate_size,
            layers: config.num_layers,
            heads: config.num_heads,
            kv_heads: config.num_kv_heads,
            head_dim: config.head_dim,
            max_position_embeddings: config.max_position_embeddings,
            rope_theta: config.rope_theta,
            tied_embeddings: config.tie_word_embeddings,
        }
    }
}

/// A model directory in Hugging Face layout: config, weights header and tokenizer.
pub fn inspect_dir(dir: &Path) -> Result<ModelReport> {
    let config_path = dir.join(super::CONFIG_FILE);
    let label = config_path.display().to_string();
    let text = std::fs::read_to_string(&config_path).map_err(|e| {
        InputError::new(
            label.clone(),
            format!("cannot read ({e}); a model directory needs one"),
        )
    })?;
    let config = LmConfig::from_json(&text).map_err(|m| InputError::new(label, m))?;
    let header = super::weights::read_header(dir)?;
    let tokenizer_path = dir.join(super::TOKENIZER_FILE);
    let tokenizer_tokens = if tokenizer_path.is_file() {
        let tokenizer = tokenizers::Tokenizer::from_file(&tokenizer_path).map_err(|e| {
            InputError::new(
                tokenizer_path.display().to_string(),
                format!("not a tokenizer: {e}"),
            )
        })?;
        Some(tokenizer.get_vocab_size(true))
    } else {
        None
    };
    let mut tensor_types = BTreeMap::new();
    for (_, dtype, _) in &header.tensors {
        *tensor_types.entry(dtype.clone()).or_insert(0) += 1;
    }
    let dtypes = tensor_types.keys().cloned().collect();
    let lm_template = super::LanguageModel::template_of_dir(dir)?;
    let provenance = Provenance::from_key_values(
        header
            .metadata
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str())),
    )
    .map(ProvenanceReport::from);
    Ok(ModelReport {
        path: dir.display().to_string(),
        format: "model",
        model_type: config.architecture.model_type().to_string(),
        parameters: header.parameter_count(),
        tensors: header.tensors.len(),
        dtypes,
        tensor_types,
        files: header.files.len(),
        shape: ModelShape::from(&config),
        tokenizer_tokens,
        tokenizer_kind: tokenizer_tokens.map(|_| "tokenizer.json".to_string()),
        chat_template_chars: lm_template.map(|t| t.text.chars().count()),
        provenance,
        gguf: None,
    })
}

/// A GGUF file, from its header alone (no tensor data is read).
pub fn inspect_gguf(path: &Path) -> Result<ModelReport> {
    let file = gguf::GgufFile::open(path)?;
    let config = from_gguf::config(&file)?;
    let mut tensor_types = BTreeMap::new();
    for tensor in &file.tensors {
        *tensor_types
            .entry(tensor.ggml_type.name().to_string())
            .or_insert(0) += 1;
    }
    let tokens = file
        .get("tokenizer.ggml.tokens")
        .and_then(gguf::MetaValue::as_array)
        .map(<[gguf::MetaValue]>::len);
    let pre = file
        .get("tokenizer.ggml.pre")
        .and_then(gguf::MetaValue::as_str)
        .unwrap_or("default");
    let metadata: serde_json::Map<String, serde_json::Value> = file
        .metadata
        .iter()
        .map(|(key, value)| (key.clone(), value.to_json(8)))
        .collect();
    Ok(ModelReport {
        path: path.display().to_string(),
        format: "gguf",
        model_type: config.architecture.model_type().to_string(),
        parameters: file
            .tensors
            .iter()
            .map(|t| t.elements().unwrap_or(u64::MAX))
            .fold(0u64, u64::saturating_add) as usize,
        tensors: file.tensors.len(),
        dtypes: tensor_types.keys().cloned().collect(),
        tensor_types,
        files: 1,
        shape: ModelShape::from(&config),
        tokenizer_tokens: tokens,
        tokenizer_kind: tokens
            .map(|_| format!("{} (pre-tokenizer {pre})", from_gguf::tokenizer_kind(&file))),
        chat_template_chars: from_gguf::chat_template(&file).map(|t| t.chars().count()),
        provenance: None,
        gguf: Some(serde_json::json!({"version": file.version, "metadata": metadata})),
    })
}

/// The report as text for people.
pub fn write_text(out: &mut impl Write, report: &ModelReport) -> std::io::Result<()> {
    writeln!(out, "{}", report.path)?;
    writeln!(
        out,
        "  format      {} ({})",
        report.format, report.model_type
    )?;
    let types: Vec<String> = report
        .tensor_types
        .iter()
        .map(|(dtype, count)| format!("{dtype} ×{count}"))
        .collect();
    writeln!(
        out,
        "  parameters  {} in {} tensors ({}), {} file{}",
        report.parameters,
        report.tensors,
        types.join(", "),
        report.files,
        if report.files == 1 { "" } else { "s" }
    )?;
    writeln!(
        out,
        "  shape       {} layers, hidden {}, MLP {}, {} heads / {} kv heads of {}",
        report.shape.layers,
        report.shape.hidden_size,
        report.shape.intermediate_size,
        report.shape.heads,
        report.shape.kv_heads,
        report.shape.head_dim
    )?;
    writeln!(
        out,
        "  vocabulary  {}{}",
        report.shape.vocab_size,
        if report.shape.tied_embeddings {
            ", tied embeddings"
        } else {
            ""
        }
    )?;
    writeln!(
        out,
        "  positions   {} (rope_theta {})",
        report.shape.max_position_embeddings, report.shape.rope_theta
    )?;
    match (report.tokenizer_tokens, &report.tokenizer_kind) {
        (Some(n), Some(kind)) if report.format == "gguf" => {
            writeln!(out, "  tokenizer   {n} tokens, {kind}")?
        }
        (Some(n), _) => writeln!(out, "  tokenizer   {n} tokens")?,
        (None, _) => writeln!(out, "  tokenizer   none")?,
    }
    match report.chat_template_chars {
        Some(n) => writeln!(out, "  chat        template of {n} characters")?,
        None => writeln!(out, "  chat        no template")?,
    }
    if let Some(gguf) = &report.gguf {
        writeln!(out, "  gguf        version {}", gguf["version"])?;
        for (key, value) in gguf["metadata"].as_object().into_iter().flatten() {
            if key.starts_with("tokenizer.ggml.") || key == "tokenizer.chat_template" {
                continue;
            }
            let text = match value {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            writeln!(out, "  metadata    {key} = {}", clip(&text, 60))?;
        }
        return Ok(());
    }
    write_provenance(out, &report.provenance)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures")
            .join(name)
    }

    #[test]
    fn a_model_directory_reports_its_shape_and_tokenizer() {
        let report = inspect_dir(&fixture("tiny-lm")).unwrap();
        assert_eq!(report.format, "model");
        assert!(report.parameters > 0);
        assert_eq!(report.tensors, report.tensor_types.values().sum::<usize>());
        assert_eq!(report.tokenizer_kind.as_deref(), Some("tokenizer.json"));
        assert!(report.gguf.is_none());
        let mut text = Vec::new();
        write_text(&mut text, &report).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains("format      model (llama)"), "{text}");
        let json = serde_json::to_value(&report).unwrap();
        // The shape is flattened into the report.
        assert!(json["hidden_size"].as_u64().unwrap() > 0);
    }

    #[test]
    fn a_gguf_file_reports_its_header_and_quantisation() {
        let report = inspect_gguf(&fixture("gguf/tiny-lm-q8_0.gguf")).unwrap();
        assert_eq!(report.format, "gguf");
        assert_eq!(report.files, 1);
        assert!(
            report
                .tensor_types
                .keys()
                .any(|t| t.eq_ignore_ascii_case("q8_0"))
        );
        assert!(report.gguf.as_ref().unwrap()["metadata"].is_object());
    }

    #[test]
    fn a_directory_without_config_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = inspect_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("config.json"), "{err}");
    }
}
