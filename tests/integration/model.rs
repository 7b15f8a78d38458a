//! The model wrapper against transformers: logits parity on reference models, per-example
//! gradients of one batched pass against one pass per example.

use std::path::{Path, PathBuf};

use burn::tensor::{DType, Device};
use curate::model::{
    DeviceSpec, LanguageModel, LoadOptions, Padding, Sequence, TokenBatch, tensor_to_f64,
};
use regex::Regex;
use safetensors::{Dtype, SafeTensors};

/// `../shared/reference/<rel>`. Tests that read it are ignored where the folder is absent
/// (`cfg(no_shared_reference)`, set by build.rs outside CI); in CI they fail here.
pub fn reference(rel: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/reference")
        .join(rel);
    assert!(
        path.exists(),
        "{} is absent: parity tests need the reference outputs beside the checkout",
        path.display()
    );
    path
}

pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(rel)
}

pub fn test_device() -> Device {
    DeviceSpec::from_env()
        .and_then(DeviceSpec::device)
        .expect("CURATE_TEST_DEVICE names a device this build has")
}

/// A tensor of a safetensors file as f64 values (integers widened) and its shape.
pub fn read_tensor(file: &Path, name: &str) -> (Vec<f64>, Vec<usize>) {
    let bytes = std::fs::read(file).unwrap();
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    let view = tensors.tensor(name).unwrap();
    let data = view.data();
    let values = match view.dtype() {
        Dtype::F64 => data
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect(),
        Dtype::I64 => data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect(),
        other => panic!("unexpected dtype {other:?}"),
    };
    (values, view.shape().to_vec())
}

/// Rows of an `[N, T]` id or label tensor.
pub fn read_rows(file: &Path, name: &str) -> Vec<Vec<i64>> {
    let (values, shape) = read_tensor(file, name);
    values
        .chunks(shape[1])
        .map(|row| row.iter().map(|&v| v as i64).collect())
        .collect()
}

pub fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// A model (directory or GGUF file) on the test device.
pub fn load(dir: &Path, dtype: DType) -> LanguageModel {
    LanguageModel::load(dir, &LoadOptions::inference(&test_device(), dtype)).unwrap()
}

/// Logits `[rows, positions, vocab]` of token id rows (right-padded with 0).
pub fn logits_of(lm: &LanguageModel, rows: Vec<Vec<i64>>) -> Vec<f64> {
    let sequences: Vec<Sequence> = rows
        .into_iter()
        .map(|ids| Sequence {
            labels: ids.clone(),
            input_ids: ids,
        })
        .collect();
    let refs: Vec<&Sequence> = sequences.iter().collect();
    tensor_to_f64(lm.logits(&TokenBatch::pad(&refs, 0, Padding::Right)))
}

/// Logits of the stored query ids against the stored transformers logits.
fn check_logits(model_dir: &Path, fixture: &Path, ids: &str, logits: &str, tolerance: f64) {
    let lm = load(model_dir, DType::F32);
    let rows = read_rows(fixture, ids);
    let (n, t) = (rows.len(), rows[0].len());
    let ours = logits_of(&lm, rows);
    let (expected, shape) = read_tensor(fixture, logits);
    assert_eq!(shape, vec![n, t, lm.config.vocab_size]);
    let diff = max_abs_diff(&ours, &expected);
    eprintln!("{}: max |logit difference| {diff:e}", model_dir.display());
    assert!(diff < tolerance, "max |logit difference| {diff:e}");
}

#[test]
#[cfg_attr(
    no_shared_reference,
    ignore = "needs ../shared/reference beside the checkout"
)]
fn qwen2_logits_match_transformers() {
    let dir = reference("kronfluence/tiny-qwen2");
    check_logits(
        &dir.join("model"),
        &dir.join("fixture.safetensors"),
        "query_input_ids",
        "query_logits",
        1e-4,
    );
}

#[test]
fn tied_llama_logits_match_transformers() {
    let dir = fixture("tiny-llama-tied");
    check_logits(
        &dir,
        &dir.join("reference.safetensors"),
        "input_ids",
        "logits",
        1e-4,
    );
}

/// Sequences of different lengths cut from the reference's training ids, so batches pad.
fn ragged_sequences(lengths: &[usize]) -> (PathBuf, Vec<Sequence>) {
    let dir = reference("kronfluence/tiny-qwen2");
    let fixture = dir.join("fixture.safetensors");
    let ids = read_rows(&fixture, "train_input_ids");
    let labels = read_rows(&fixture, "train_labels");
    let sequences = lengths
        .iter()
        .enumerate()
        .map(|(i, &len)| Sequence {
            input_ids: ids[i][..len].to_vec(),
            labels: labels[i][..len].to_vec(),
        })
        .collect();
    (dir.join("model"), sequences)
}

fn per_example_grads(
    lm: &LanguageModel,
    sequences: &[&Sequence],
    padding: Padding,
) -> Vec<Vec<f64>> {
    let batch = TokenBatch::pad(sequences, lm.pad_id(), padding);
    let tracked = Regex::new(curate::model::DEFAULT_TRACKED).unwrap();
    let (_, layers) = lm.capture(&batch, &tracked).unwrap();
    assert_eq!(layers.len(), 3 * lm.config.num_layers);
    // Per example, every tracked layer's weight gradient flattened one after another.
    let mut out = vec![Vec::new(); sequences.len()];
    for layer in layers {
        let grads = layer.per_example_weight_grads();
        let [b, o, i] = grads.dims();
        let values = tensor_to_f64(grads);
        for (n, chunk) in values.chunks(o * i).enumerate().take(b) {
            out[n].extend_from_slice(chunk);
        }
    }
    out
}

#[test]
#[cfg_attr(
    no_shared_reference,
    ignore = "needs ../shared/reference beside the checkout"
)]
fn batched_per_example_gradients_equal_one_pass_per_example() {
    let (model_dir, sequences) = ragged_sequences(&[16, 9, 12, 7, 16]);
    for dtype in [DType::F32, DType::F64] {
        let lm = load(&model_dir, dtype);
        let refs: Vec<&Sequence> = sequences.iter().collect();
        let singles: Vec<Vec<f64>> = refs
            .iter()
            .map(|s| per_example_grads(&lm, &[*s], Padding::Right).remove(0))
            .collect();
        let scale = singles.iter().flatten().fold(0.0f64, |m, v| m.max(v.abs()));
        let tolerance = if dtype == DType::F64 { 1e-12 } else { 1e-5 } * scale;
        for padding in [Padding::Right, Padding::Left] {
            let batched = per_example_grads(&lm, &refs, padding);
            for (n, (got, want)) in batched.iter().zip(&singles).enumerate() {
                let diff = max_abs_diff(got, want);
                assert!(
                    diff <= tolerance,
                    "{dtype:?} {padding:?} example {n}: {diff:e} > {tolerance:e}"
                );
            }
        }
    }
}

#[test]
#[cfg_attr(
    no_shared_reference,
    ignore = "needs ../shared/reference beside the checkout"
)]
fn probe_gradients_equal_the_weight_gradient_of_backprop() {
    let (model_dir, sequences) = ragged_sequences(&[16, 11]);
    let device = test_device();
    let options = LoadOptions {
        trainable: true,
        ..LoadOptions::inference(&device, DType::F64)
    };
    let lm = LanguageModel::load(&model_dir, &options).unwrap();
    let refs: Vec<&Sequence> = sequences.iter().collect();
    let batch = TokenBatch::pad(&refs, 0, Padding::Right);
    // Summed over the batch, the per-example gradients are the gradient of the summed loss.
    let probed = per_example_grads(&lm, &refs, Padding::Right);
    let logits = lm.logits(&batch);
    let grads = lm.model.sequence_losses(logits, &batch).sum().backward();
    let mut offset = 0;
    for linear in lm.model.linears() {
        if !linear.name.contains("mlp.") {
            continue;
        }
        let expected = tensor_to_f64(linear.weight.val().grad(&grads).unwrap());
        let n = expected.len();
        let summed: Vec<f64> = (0..n)
            .map(|k| probed.iter().map(|g| g[offset + k]).sum())
            .collect();
        let diff = max_abs_diff(&summed, &expected);
        assert!(diff < 1e-12, "{}: {diff:e}", linear.name);
        offset += n;
    }
}

#[test]
#[cfg_attr(
    no_shared_reference,
    ignore = "needs ../shared/reference beside the checkout"
)]
fn model_errors_name_the_file_and_the_problem() {
    let dir = reference("kronfluence/tiny-qwen2");
    let tmp = tempfile::tempdir().unwrap();
    let copy = |name: &str| {
        std::fs::copy(dir.join("model").join(name), tmp.path().join(name)).unwrap();
    };
    copy("model.safetensors");
    let config = std::fs::read_to_string(dir.join("model/config.json")).unwrap();
    let cases = [
        (
            config.replace("\"qwen2\"", "\"gpt2\""),
            "unsupported model_type \"gpt2\"",
        ),
        (
            config.replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 1"),
            "12 tensor(s) the model does not use: model.layers.1",
        ),
        (
            config.replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 3"),
            "missing tensor(s): model.layers.2",
        ),
        (
            config.replace("\"vocab_size\": 1000", "\"vocab_size\": 999"),
            "has shape [1000, 64] but config.json implies [999, 64]",
        ),
    ];
    for (text, needle) in cases {
        std::fs::write(tmp.path().join("config.json"), text).unwrap();
        let err = LanguageModel::load(
            tmp.path(),
            &LoadOptions::inference(&Device::flex(), DType::F32),
        )
        .unwrap_err();
        let message = format!("{err:#}");
        assert!(message.contains(needle), "{message}");
        assert_eq!(
            curate_cli::ExitStatus::of_error(&err),
            curate_cli::ExitStatus::InvalidInput
        );
    }
}

#[test]
fn bundled_model_loads_and_has_learned_the_mix() {
    let device = test_device();
    let lm = load(&fixture("tiny-lm"), DType::F32);
    let tokenizer = lm
        .tokenizer
        .clone()
        .expect("the bundled model has a tokenizer");
    assert!(tokenizer.get_vocab_size(true) <= lm.config.vocab_size);
    let untrained =
        LanguageModel::init(lm.config.clone(), None, 0, &device, DType::F32, false).unwrap();
    // GSM8K-style problems like the mix's math half.
    let text = std::fs::read_to_string(fixture("gsm_symbolic_40.jsonl")).unwrap();
    let sequences: Vec<Sequence> = text
        .lines()
        .take(8)
        .map(|line| {
            let row: serde_json::Value = serde_json::from_str(line).unwrap();
            curate::model::tokenizer::prompt_response(
                &tokenizer,
                row["question"].as_str().unwrap(),
                row["answer_cot"].as_str().unwrap(),
                lm.config.eos_token_id,
            )
            .unwrap()
        })
        .collect();
    let refs: Vec<&Sequence> = sequences.iter().collect();
    let batch = TokenBatch::pad(&refs, lm.pad_id(), Padding::Right);
    let tokens = batch.loss_tokens() as f64;
    let per_token = |m: &LanguageModel| m.sequence_losses(&batch).iter().sum::<f64>() / tokens;
    let (trained, start) = (per_token(&lm), per_token(&untrained));
    assert!(trained < start - 2.0, "loss per token {start} -> {trained}");
    assert!(trained < 5.5, "loss per token {trained}");
}

#[test]
fn sharded_checkpoints_load_like_single_files() {
    let source = fixture("tiny-llama-tied");
    let bytes = std::fs::read(source.join("model.safetensors")).unwrap();
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = tensors.names().into_iter().map(String::from).collect();
    names.sort();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(source.join("config.json"), dir.path().join("config.json")).unwrap();
    let mut weight_map = serde_json::Map::new();
    let halves = names.split_at(names.len() / 2);
    for (part, chunk) in [halves.0, halves.1].into_iter().enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", part + 1);
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = chunk
            .iter()
            .map(|name| (name.clone(), tensors.tensor(name).unwrap()))
            .collect();
        safetensors::serialize_to_file(views, None, &dir.path().join(&file)).unwrap();
        for name in chunk {
            weight_map.insert(name.clone(), file.clone().into());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();

    let ids: Vec<i64> = (0..10).map(|i| i * 41 % 512).collect();
    let sequence = Sequence {
        labels: ids.clone(),
        input_ids: ids,
    };
    let batch = TokenBatch::pad(&[&sequence], 0, Padding::Right);
    let single = load(&source, DType::F32);
    let sharded = load(dir.path(), DType::F32);
    assert_eq!(
        tensor_to_f64(single.logits(&batch)),
        tensor_to_f64(sharded.logits(&batch))
    );

    // A shard the index names but that is missing is an input error naming the index.
    std::fs::remove_file(dir.path().join("model-00002-of-00002.safetensors")).unwrap();
    let err = LanguageModel::load(
        dir.path(),
        &LoadOptions::inference(&Device::flex(), DType::F32),
    )
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("shard 'model-00002-of-00002.safetensors'"),
        "{err:#}"
    );
}

#[test]
fn a_tokenizer_larger_than_the_vocabulary_is_refused() {
    let source = fixture("tiny-lm");
    let dir = tempfile::tempdir().unwrap();
    for name in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(source.join(name), dir.path().join(name)).unwrap();
    }
    let config = std::fs::read_to_string(source.join("config.json")).unwrap();
    let vocab = format!(
        "\"vocab_size\": {}",
        load(&source, DType::F32).config.vocab_size
    );
    assert!(config.contains(&vocab), "{config}");
    std::fs::write(
        dir.path().join("config.json"),
        config.replace(&vocab, "\"vocab_size\": 1000"),
    )
    .unwrap();
    let err = LanguageModel::load(
        dir.path(),
        &LoadOptions::inference(&Device::flex(), DType::F32),
    )
    .unwrap_err();
    let message = format!("{err:#}");
    assert!(message.contains("tokenizer.json"), "{message}");
    assert!(message.contains("vocab size mismatch"), "{message}");
}

/// Greedy decoding through the key/value cache picks the tokens that running the whole
/// (left-padded) sequences through the model again at every step picks.
#[test]
fn cached_greedy_decoding_equals_full_forward_passes() {
    use curate::model::generate::greedy;
    let lm = load(&fixture("tiny-lm"), DType::F32);
    let prompts: Vec<Vec<i64>> = vec![
        vec![5, 17, 300, 42, 9, 111, 7],
        vec![88, 3],
        vec![1000, 20, 30, 40],
    ];
    let steps = 12;
    let generated = greedy(&lm, &prompts, steps, &[]);
    for (row, prompt) in prompts.iter().enumerate() {
        let mut sequence = prompt.clone();
        for step in 0..steps {
            let others: Vec<Sequence> = vec![Sequence {
                labels: sequence.clone(),
                input_ids: sequence.clone(),
            }];
            let refs: Vec<&Sequence> = others.iter().collect();
            let batch = TokenBatch::pad(&refs, lm.pad_id(), Padding::Left);
            let logits = tensor_to_f64(lm.logits(&batch));
            let vocab = lm.config.vocab_size;
            let last = &logits[logits.len() - vocab..];
            let best = (0..vocab).fold(0, |b, t| if last[t] > last[b] { t } else { b });
            assert_eq!(
                generated[row].tokens[step] as usize, best,
                "row {row}, step {step}"
            );
            sequence.push(best as i64);
        }
        assert!(!generated[row].stopped);
    }
    // A stop token ends a row at its first occurrence and is not kept.
    let tokens = &generated[0].tokens;
    let stop = tokens[5];
    let first = tokens.iter().position(|&t| t == stop).unwrap();
    let stopped = greedy(&lm, &prompts[..1], steps, &[stop as i64]);
    assert!(stopped[0].stopped);
    assert_eq!(stopped[0].tokens, tokens[..first]);
}
