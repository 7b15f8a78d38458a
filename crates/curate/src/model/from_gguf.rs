//! A Llama-family causal LM from a GGUF file: the configuration from llama.cpp's metadata, the
//! weights dequantised and renamed to Hugging Face's key map (q/k rows un-interleaved), and the
//! embedded byte-level BPE rebuilt as a `tokenizers` tokenizer the way transformers' GGUF loader
//! builds it, so token ids agree.

use std::collections::BTreeMap;

use safetensors::Dtype;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use super::chat::SpecialTokenText;
use super::config::{Architecture, LmConfig};
use super::gguf::{GgufFile, MetaValue, hf_name, unpermute_rows};
use super::weights::StoredTensor;
use crate::error::InputError;

/// llama.cpp's token types.
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

/// The architecture a GGUF file states, among those curate runs.
fn architecture(file: &GgufFile) -> Result<(Architecture, String), InputError> {
    let bad = |message: String| InputError::new(file.label(), message);
    let name = file
        .get("general.architecture")
        .and_then(MetaValue::as_str)
        .ok_or_else(|| bad("no general.architecture in the metadata".into()))?;
    let architecture = match name {
        "llama" => Architecture::Llama,
        "qwen2" => Architecture::Qwen2,
        other => {
            return Err(bad(format!(
                "architecture '{other}' is not supported (curate runs llama and qwen2)"
            )));
        }
    };
    Ok((architecture, name.to_string()))
}

/// The model configuration from `{arch}.*` and `tokenizer.ggml.*` metadata, with llama.cpp's
/// defaults where a key may be absent.
pub(crate) fn config(file: &GgufFile) -> Result<LmConfig, InputError> {
    let bad = |message: String| InputError::new(file.label(), message);
    let (architecture, arch) = architecture(file)?;
    let key = |name: &str| format!("{arch}.{name}");
    let int = |name: &str| -> Result<usize, InputError> {
        file.get(&key(name))
            .and_then(MetaValue::as_u64)
            .map(|v| v as usize)
            .ok_or_else(|| {
                bad(format!(
                    "metadata '{}' missing or not an integer",
                    key(name)
                ))
            })
    };
    let opt_int = |name: &str| file.get(&key(name)).and_then(MetaValue::as_u64);
    let float = |name: &str, default: f64| {
        file.get(&key(name))
            .and_then(MetaValue::as_f64)
            .unwrap_or(default)
    };
    if let Some(kind) = file
        .get(&key("rope.scaling.type"))
        .and_then(MetaValue::as_str)
        && kind != "none"
    {
        return Err(bad(format!(
            "rope scaling '{kind}' is not supported (only unscaled rotary embeddings)"
        )));
    }
    if file.tensor("rope_freqs.weight").is_some() {
        return Err(bad(
            "tensor 'rope_freqs.weight' (scaled rotary frequencies) is not supported".into(),
        ));
    }
    let hidden_size = int("embedding_length")?;
    let num_heads = int("attention.head_count")?;
    let num_kv_heads = opt_int("attention.head_count_kv").map_or(num_heads, |v| v as usize);
    if num_heads == 0 || num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
        return Err(bad(format!(
            "{} ({num_heads}) must be a positive multiple of {} ({num_kv_heads})",
            key("attention.head_count"),
            key("attention.head_count_kv")
        )));
    }
    let head_dim = opt_int("attention.key_length")
        .or_else(|| opt_int("rope.dimension_count"))
        .map_or(hidden_size / num_heads, |v| v as usize);
    if head_dim == 0 || head_dim % 2 != 0 {
        return Err(bad(format!(
            "head size {head_dim} must be even and positive"
        )));
    }
    let tokens = file
        .get("tokenizer.ggml.tokens")
        .and_then(MetaValue::as_array)
        .map(<[MetaValue]>::len);
    let vocab_size = match opt_int("vocab_size") {
        Some(v) => v as usize,
        None => match file.tensor("token_embd.weight") {
            Some(embedding) => embedding.dims.get(1).copied().unwrap_or(0) as usize,
            None => tokens.unwrap_or(0),
        },
    };
    let token = |name: &str| {
        file.get(&format!("tokenizer.ggml.{name}"))
            .and_then(MetaValue::as_u64)
            .map(|v| v as u32)
    };
    let has_bias = |name: &str| file.tensor(&format!("blk.0.{name}.bias")).is_some();
    let mut config = LmConfig::new(
        architecture,
        vocab_size,
        hidden_size,
        int("feed_forward_length")?,
        int("block_count")?,
        num_heads,
        num_kv_heads,
    );
    config.head_dim = head_dim;
    config.rms_norm_eps = float("attention.layer_norm_rms_epsilon", 1e-5);
    config.rope_theta = float("rope.freq_base", 10000.0);
    config.max_position_embeddings = opt_int("context_length").map_or(2048, |v| v as usize);
    config.tie_word_embeddings = file.tensor("output.weight").is_none();
    config.qkv_bias = architecture == Architecture::Qwen2 || has_bias("attn_q");
    config.o_bias = architecture == Architecture::Llama && has_bias("attn_output");
    config.bos_token_id = token("bos_token_id");
    config.eos_token_id = token("eos_token_id");
    config.pad_token_id = token("padding_token_id");
    if config.vocab_size == 0 || config.hidden_size == 0 || config.num_layers == 0 {
        return Err(bad(
            "vocabulary, embedding length and block count must be positive".into(),
        ));
    }
    config.check_values().map_err(bad)?;
    Ok(config)
}

/// Every tensor, dequantised to f32 and named as Hugging Face names it. A tensor the Llama
/// family does not have is kept under its llama.cpp name, so the key-map check reports it.
pub(crate) fn read_weights(
    file: &GgufFile,
    config: &LmConfig,
) -> Result<BTreeMap<String, StoredTensor>, InputError> {
    let (architecture, _) = architecture(file)?;
    let mut tensors = BTreeMap::new();
    for info in &file.tensors {
        let mut values = file.read_f32(info)?;
        let shape = info.shape();
        let name = hf_name(&info.name).unwrap_or_else(|| info.name.clone());
        // llama.cpp's converter interleaves q and k of Llama (not of Qwen2) for its rope.
        if architecture == Architecture::Llama {
            let heads = if name.contains("self_attn.q_proj") {
                Some(config.num_heads)
            } else if name.contains("self_attn.k_proj") {
                Some(config.num_kv_heads)
            } else {
                None
            };
            if let Some(heads) = heads {
                let row_len = if shape.len() == 2 { shape[1] } else { 1 };
                if shape[0] % (2 * heads) != 0 {
                    return Err(InputError::new(
                        file.label(),
                        format!(
                            "tensor '{}' has {} rows, not a whole number of rotary pairs for \
                             {heads} heads",
                            info.name, shape[0]
                        ),
                    ));
                }
                values = unpermute_rows(&values, heads, row_len);
            }
        }
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        tensors.insert(
            name,
            StoredTensor {
                dtype: Dtype::F32,
                shape,
                bytes,
                file: file.path.clone(),
            },
        );
    }
    Ok(tensors)
}

/// `tokenizer.ggml.tokens` as strings.
fn token_list(file: &GgufFile) -> Option<Vec<String>> {
    let items = file.get("tokenizer.ggml.tokens")?.as_array()?;
    items
        .iter()
        .map(|v| v.as_str().map(str::to_string))
        .collect()
}

/// The bos/eos/unk/pad token texts (for chat templates).
pub(crate) fn special_tokens(file: &GgufFile) -> SpecialTokenText {
    let tokens = token_list(file).unwrap_or_default();
    let text = |name: &str| {
        file.get(&format!("tokenizer.ggml.{name}"))
            .and_then(MetaValue::as_u64)
            .and_then(|id| tokens.get(id as usize).cloned())
    };
    SpecialTokenText {
        bos: text("bos_token_id"),
        eos: text("eos_token_id"),
        unk: text("unknown_token_id"),
        pad: text("padding_token_id"),
    }
}

/// The chat template the file carries, if any.
pub(crate) fn chat_template(file: &GgufFile) -> Option<String> {
    file.get("tokenizer.chat_template")
        .and_then(MetaValue::as_str)
        .map(str::to_string)
}

/// `tokenizer.ggml.model`: "gpt2" (byte-level BPE), "llama" (sentencepiece), ...
pub(crate) fn tokenizer_kind(file: &GgufFile) -> &str {
    file.get("tokenizer.ggml.model")
        .and_then(MetaValue::as_str)
        .unwrap_or("none")
}

/// The embedded tokenizer: byte-level BPE is rebuilt; other kinds give `None`.
pub(crate) fn tokenizer(file: &GgufFile) -> Result<Option<Tokenizer>, InputError> {
    let bad = |message: String| InputError::new(file.label(), message);
    if tokenizer_kind(file) != "gpt2" {
        return Ok(None);
    }
    let tokens = token_list(file)
        .ok_or_else(|| bad("tokenizer.ggml.tokens missing or not a list of strings".into()))?;
    let merges = file
        .get("tokenizer.ggml.merges")
        .and_then(MetaValue::as_array)
        .ok_or_else(|| bad("tokenizer.ggml.merges missing for a BPE tokenizer".into()))?;
    let types: Vec<i64> = file
        .get("tokenizer.ggml.token_type")
        .and_then(MetaValue::as_array)
        .map(|items| items.iter().map(|v| v.as_i64().unwrap_or(1)).collect())
        .unwrap_or_default();

    // Tokens are spelled in GPT-2's byte alphabet; one that is not (a raw special token) is
    // respelled byte by byte, as transformers does.
    let alphabet = byte_alphabet();
    let spelled = |token: &str| token.chars().all(|c| alphabet.contains(&c));
    let mut vocab = Vocab::default();
    for (id, token) in tokens.iter().enumerate() {
        let key = if spelled(token) {
            token.clone()
        } else {
            token
                .bytes()
                .map(|b| alphabet[b as usize])
                .collect::<String>()
        };
        vocab.insert(key, id as u32);
    }
    let mut pairs = Vec::with_capacity(merges.len());
    for (index, merge) in merges.iter().enumerate() {
        let pair = merge
            .as_str()
            .and_then(|m| m.split_once(' '))
            .ok_or_else(|| bad(format!("tokenizer.ggml.merges entry {index} is not 'a b'")))?;
        pairs.push((pair.0.to_string(), pair.1.to_string()));
    }
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, pairs)
        .build()
        .map_err(|e| bad(format!("cannot build the BPE tokenizer: {e}")))?;
    let mut tokenizer = Tokenizer::new(bpe);
    let pre = file
        .get("tokenizer.ggml.pre")
        .and_then(MetaValue::as_str)
        .unwrap_or("default");
    match split_pattern(pre) {
        Some(pattern) => {
            let split = Split::new(
                SplitPattern::Regex(pattern.to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| bad(format!("pre-tokenizer '{pre}': {e}")))?;
            tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![
                split.into(),
                ByteLevel::new(false, true, false).into(),
            ])));
        }
        None => {
            tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        }
    }
    tokenizer.with_decoder(Some(ByteLevel::default()));
    // Control tokens stay whole as special tokens (one spelled outside the byte alphabet is a
    // mislabel and is left out); user-defined ones stay whole as plain added tokens.
    let control: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(token, kind)| **kind == CONTROL && spelled(token))
        .map(|(token, _)| AddedToken::from(token.clone(), true).normalized(false))
        .collect();
    tokenizer
        .add_special_tokens(control)
        .map_err(|e| bad(format!("cannot add the special tokens: {e}")))?;
    let user: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, kind)| **kind == USER_DEFINED)
        .map(|(token, _)| AddedToken::from(token.clone(), false).normalized(false))
        .collect();
    tokenizer
        .add_tokens(user)
        .map_err(|e| bad(format!("cannot add the user-defined tokens: {e}")))?;
    Ok(Some(tokenizer))
}

/// The split regex of llama.cpp's named pre-tokenizers that differ from GPT-2's (the ones
/// transformers' GGUF loader knows); None means GPT-2's own byte-level split.
fn split_pattern(pre: &str) -> Option<&'static str> {
    const LLAMA3: &str = concat!(
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}",
        r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    );
    const QWEN2: &str = concat!(
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}",
        r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    );
    match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "dbrx" | "smaug-bpe" => Some(LLAMA3),
        "qwen2" | "deepseek-r1-qwen" | "megrez" => Some(QWEN2),
        _ => None,
    }
}

/// GPT-2's byte alphabet: byte b is spelled `alphabet[b]` (printable bytes as themselves, the
/// rest shifted past 255).
fn byte_alphabet() -> Vec<char> {
    let printable =
        |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut shifted = 0;
    (0u32..256)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).expect("a Latin-1 code point")
            } else {
                shifted += 1;
                char::from_u32(255 + shifted).expect("a code point past Latin-1")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_alphabet_is_gpt2s() {
        let alphabet = byte_alphabet();
        assert_eq!(alphabet[b'a' as usize], 'a');
        // Space is the 33rd non-printable byte: U+0120, 'Ġ'.
        assert_eq!(alphabet[b' ' as usize], 'Ġ');
        assert_eq!(alphabet[b'\n' as usize], 'Ċ');
        let distinct: std::collections::HashSet<char> = alphabet.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
    }
}
