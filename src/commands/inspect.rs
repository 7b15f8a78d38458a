//! `curate inspect`: what is in a data file, for people (text) and machines (`--json`).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use super::Context;
use crate::ExitStatus;
use crate::cli::InspectArgs;
use crate::printer::{Align, text_table};
use curate::error::InputError;
use curate::model::{self, LmConfig};
use curate::table::{self, ColumnSummary, Input, InputDigest, Provenance};

/// Keys polars and arrow write for their own use; not shown as user metadata.
const INTERNAL_KEYS: [&str; 2] = ["ARROW:schema", "pandas"];

#[derive(Serialize)]
struct FileReport {
    path: String,
    format: String,
    rows: usize,
    columns: Vec<ColumnReport>,
    provenance: Option<ProvenanceReport>,
    metadata: serde_json::Map<String, serde_json::Value>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum ColumnReport {
    Schema { name: String, dtype: String },
    Summary(ColumnSummary),
}

#[derive(Serialize)]
struct ProvenanceReport {
    version: String,
    command: Vec<String>,
    inputs: Vec<InputDigest>,
    seed: u64,
}

pub fn run(args: InspectArgs, context: &Context) -> Result<ExitStatus> {
    let format = args.input_format.map(Into::into);
    let mut stdout = context.printer.stdout();
    for (index, path) in args.files.iter().enumerate() {
        if index > 0 && !args.json {
            writeln!(stdout)?;
        }
        if Path::new(path).is_dir() {
            let report = inspect_model(Path::new(path))?;
            emit(&mut stdout, args.json, &report, write_model_text)?;
        } else if model::is_gguf(Path::new(path)) {
            let report = inspect_gguf(Path::new(path))?;
            emit(&mut stdout, args.json, &report, write_model_text)?;
        } else {
            let input = Input::open(path, format)?;
            let report = inspect(&input, &args, context)?;
            emit(&mut stdout, args.json, &report, write_text)?;
        }
    }
    stdout.flush()?;
    Ok(ExitStatus::Success)
}

/// One report: a JSON line, or the text form.
fn emit<R: Serialize, W: Write>(
    out: &mut W,
    json: bool,
    report: &R,
    write_text: fn(&mut W, &R) -> std::io::Result<()>,
) -> Result<()> {
    if json {
        serde_json::to_writer(&mut *out, report)?;
        writeln!(out)?;
    } else {
        write_text(out, report)?;
    }
    Ok(())
}

fn inspect(input: &Input, args: &InspectArgs, context: &Context) -> Result<FileReport> {
    let spinner = context.printer.spinner("inspecting");
    spinner.set_message(input.label().to_string());
    let schema = input.schema()?;
    let rows = input.row_count()?;
    let pairs = input.key_value_metadata()?;
    let provenance =
        Provenance::from_key_values(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))).map(|p| {
            ProvenanceReport {
                version: p.version,
                command: p.command,
                inputs: p.inputs,
                seed: p.seed,
            }
        });
    let metadata = pairs
        .into_iter()
        .filter(|(key, _)| !key.starts_with("curate.") && !INTERNAL_KEYS.contains(&key.as_str()))
        .map(|(key, value)| (key, serde_json::Value::String(value)))
        .collect();
    let columns = if args.no_stats {
        schema
            .iter()
            .map(|(name, dtype)| ColumnReport::Schema {
                name: name.to_string(),
                dtype: dtype.to_string(),
            })
            .collect()
    } else {
        let summaries = table::summarize(input.scan()?, &schema, args.top)
            .map_err(|err| curate::error::InputError::new(input.label(), err.to_string()))?;
        summaries.into_iter().map(ColumnReport::Summary).collect()
    };
    spinner.finish_and_clear();
    Ok(FileReport {
        path: input.label().to_string(),
        format: input.format().to_string(),
        rows,
        columns,
        provenance,
        metadata,
    })
}

/// A model directory or GGUF file: its architecture, size, tokenizer, chat template and
/// provenance.
#[derive(Serialize)]
struct ModelReport {
    path: String,
    format: &'static str,
    model_type: String,
    parameters: usize,
    tensors: usize,
    dtypes: Vec<String>,
    /// Tensors per stored type (quantisation, for GGUF).
    tensor_types: BTreeMap<String, usize>,
    files: usize,
    #[serde(flatten)]
    shape: ModelShape,
    tokenizer_tokens: Option<usize>,
    /// What kind of tokenizer (GGUF: llama.cpp's tokenizer model and pre-tokenizer).
    tokenizer_kind: Option<String>,
    /// Characters of the chat template, when the model has one.
    chat_template_chars: Option<usize>,
    provenance: Option<ProvenanceReport>,
    /// GGUF only: the file version and its metadata (long arrays cut to their first items).
    #[serde(skip_serializing_if = "Option::is_none")]
    gguf: Option<serde_json::Value>,
}

/// The architecture's numbers, as `config.json` (or a GGUF's metadata) gives them.
#[derive(Serialize)]
struct ModelShape {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    max_position_embeddings: usize,
    rope_theta: f64,
    tied_embeddings: bool,
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

fn inspect_model(dir: &Path) -> Result<ModelReport> {
    let config_path = dir.join(model::CONFIG_FILE);
    let label = config_path.display().to_string();
    let text = std::fs::read_to_string(&config_path).map_err(|e| {
        InputError::new(
            label.clone(),
            format!("cannot read ({e}); a model directory needs one"),
        )
    })?;
    let config = LmConfig::from_json(&text).map_err(|m| InputError::new(label, m))?;
    let header = model::weights::read_header(dir)?;
    let tokenizer_path = dir.join(model::TOKENIZER_FILE);
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
    let lm_template = model::LanguageModel::template_of_dir(dir)?;
    let provenance = Provenance::from_key_values(
        header
            .metadata
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str())),
    )
    .map(|p| ProvenanceReport {
        version: p.version,
        command: p.command,
        inputs: p.inputs,
        seed: p.seed,
    });
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
fn inspect_gguf(path: &Path) -> Result<ModelReport> {
    use model::{from_gguf, gguf};
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
        parameters: file.tensors.iter().map(|t| t.elements() as usize).sum(),
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

fn write_model_text(out: &mut impl Write, report: &ModelReport) -> std::io::Result<()> {
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

fn write_provenance(
    out: &mut impl Write,
    provenance: &Option<ProvenanceReport>,
) -> std::io::Result<()> {
    match provenance {
        Some(p) => {
            writeln!(out, "  provenance  curate {} (seed {})", p.version, p.seed)?;
            writeln!(out, "    command   {}", shell_words(&p.command))?;
            for input in &p.inputs {
                writeln!(
                    out,
                    "    input     {} ({} bytes, sha256 {})",
                    input.path, input.bytes, input.sha256
                )?;
            }
        }
        None => writeln!(out, "  provenance  none (not written by curate)")?,
    }
    Ok(())
}

fn write_text(out: &mut impl Write, report: &FileReport) -> std::io::Result<()> {
    writeln!(out, "{}", report.path)?;
    writeln!(out, "  format      {}", report.format)?;
    writeln!(out, "  rows        {}", report.rows)?;
    writeln!(out, "  columns     {}", report.columns.len())?;
    write_provenance(out, &report.provenance)?;
    for (key, value) in &report.metadata {
        let value = value.as_str().unwrap_or_default();
        writeln!(out, "  metadata    {key} = {}", clip(value, 60))?;
    }
    writeln!(out)?;

    let rows: Vec<Vec<String>> = report
        .columns
        .iter()
        .map(|column| match column {
            ColumnReport::Schema { name, dtype } => {
                vec![name.clone(), dtype.clone(), String::new(), String::new()]
            }
            ColumnReport::Summary(summary) => vec![
                summary.name.clone(),
                summary.dtype.clone(),
                summary.nulls.to_string(),
                describe(summary),
            ],
        })
        .collect();
    let align = [Align::Left, Align::Left, Align::Right, Align::Left];
    for line in text_table(&["column", "type", "nulls", "summary"], &rows, &align) {
        writeln!(out, "  {line}")?;
    }
    Ok(())
}

fn describe(summary: &ColumnSummary) -> String {
    if let (Some(min), Some(max)) = (&summary.min, &summary.max) {
        return format!("min {}  max {}", show(min), show(max));
    }
    if let Some(top) = &summary.top {
        let values: Vec<String> = top
            .iter()
            .map(|v| format!("{} ×{}", show(&v.value), v.count))
            .collect();
        let distinct = summary.distinct.unwrap_or(0);
        if top.first().is_some_and(|v| v.count == 1) {
            return format!("{distinct} distinct (all)");
        }
        return format!("{distinct} distinct; top {}", values.join(", "));
    }
    String::new()
}

fn show(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(text) => format!("{:?}", clip(text, 32)),
        other => other.to_string(),
    }
}

fn clip(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        text.to_string()
    } else {
        let kept: String = text.chars().take(max_chars - 1).collect();
        format!("{kept}…")
    }
}

/// Quote arguments only where a shell would need it, so the line can be pasted back.
fn shell_words(args: &[String]) -> String {
    args.iter()
        .map(|arg| {
            let plain = !arg.is_empty()
                && arg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-./=:,@+%".contains(c));
            if plain {
                arg.clone()
            } else {
                format!("'{}'", arg.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words_quote_only_when_needed() {
        let args = ["curate", "convert", "a b.csv", "it's", "--out=x.parquet"].map(String::from);
        assert_eq!(
            shell_words(&args),
            r"curate convert 'a b.csv' 'it'\''s' --out=x.parquet"
        );
    }

    #[test]
    fn clip_marks_cut_text() {
        assert_eq!(clip("abcdef", 4), "abc…");
        assert_eq!(clip("abc", 4), "abc");
    }
}
