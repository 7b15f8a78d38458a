//! GGUF models against gguf-py and transformers: dequantised blocks, logits, the rebuilt
//! tokenizer and chat template, and what the binary says of GGUF files (inspect, errors,
//! influence).

use std::path::Path;

use burn::tensor::DType;
use curate::model::gguf::GgufFile;
use curate::model::{Message, TemplateChoice};

use crate::chat::assert_encodes_as;
use crate::model::{fixture, load, logits_of, max_abs_diff, read_rows, read_tensor};
use crate::test::Test;

#[test]
fn dequantises_every_supported_type_like_gguf_py() {
    let file = GgufFile::open(&fixture("gguf/quants.gguf")).unwrap();
    let reference = fixture("gguf/reference.safetensors");
    let mut checked = 0;
    for info in &file.tensors {
        let kind = info.name.trim_end_matches(".weight");
        if kind == "q5_k" {
            let err = file.read_f32(info).unwrap_err().to_string();
            assert!(
                err.contains("quants.gguf")
                    && err.contains("'q5_k.weight'")
                    && err.contains("Q5_K"),
                "{err}"
            );
            continue;
        }
        let ours: Vec<f64> = file
            .read_f32(info)
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect();
        let (want, shape) = read_tensor(&reference, &format!("dequantized.{kind}"));
        assert_eq!(shape, info.shape(), "{kind}");
        // The same f32 operations in the same order: equal to the bit.
        assert_eq!(ours, want, "{kind}");
        checked += 1;
    }
    assert_eq!(checked, 8);
}

#[test]
fn tiny_gguf_logits_match_transformers_and_the_safetensors_model() {
    let reference = fixture("gguf/reference.safetensors");
    let rows = read_rows(&reference, "input_ids");
    let from_dir = logits_of(&load(&fixture("tiny-lm"), DType::F32), rows.clone());
    for kind in ["f32", "q8_0"] {
        let lm = load(&fixture(&format!("gguf/tiny-lm-{kind}.gguf")), DType::F32);
        let ours = logits_of(&lm, rows.clone());
        let (want, _) = read_tensor(&reference, &format!("logits.{kind}"));
        let diff = max_abs_diff(&ours, &want);
        eprintln!("{kind}: max |logit difference| {diff:e}");
        assert!(diff < 1e-4, "{kind}: max |logit difference| {diff:e}");
        if kind == "f32" {
            // Unquantised, the GGUF holds exactly the directory's weights.
            assert_eq!(ours, from_dir);
        }
    }
}

/// A Qwen2 (biases, untied Q8_0 head, F16 matrices, no rotary interleave) as transformers
/// loads it; without a tokenizer it takes token id rows, and text rows say why not.
#[test]
fn qwen2_gguf_matches_transformers_and_needs_token_ids() {
    let reference = fixture("gguf/reference.safetensors");
    let gguf = fixture("gguf/tiny-qwen2-f16.gguf");
    let lm = load(&gguf, DType::F32);
    assert!(lm.config.qkv_bias && !lm.config.tie_word_embeddings);
    assert!(lm.tokenizer.is_none());
    let rows = read_rows(&reference, "qwen2.input_ids");
    let ours = logits_of(&lm, rows.clone());
    let (want, _) = read_tensor(&reference, "logits.qwen2");
    let diff = max_abs_diff(&ours, &want);
    assert!(diff < 1e-4, "max |logit difference| {diff:e}");

    let ids_rows: String = rows
        .iter()
        .enumerate()
        .map(|(i, ids)| {
            let labels: Vec<i64> = ids
                .iter()
                .enumerate()
                .map(|(t, &id)| if t < 3 { -100 } else { id })
                .collect();
            format!(
                "{}\n",
                serde_json::json!({"id": i, "input_ids": ids, "labels": labels})
            )
        })
        .collect();
    let mut test = Test::new().file("ids.jsonl", ids_rows);
    test.args(["influence", "--model"])
        .arg(&gguf)
        .args([
            "--train",
            "ids.jsonl",
            "--query",
            "ids.jsonl",
            "--out",
            "s.jsonl",
        ])
        .run()
        .success();
    assert_eq!(test.read_lines("s.jsonl").len(), 4);
    test.args(["influence", "--model"])
        .arg(&gguf)
        .arg("--train")
        .arg(fixture("math_code_queries.jsonl"))
        .args(["--query", "ids.jsonl", "--out", "t.jsonl"])
        .run()
        .invalid("text rows need the model's tokenizer, but the GGUF file has no tokenizer");
}

#[test]
fn gguf_tokenizer_and_chat_template_match_transformers() {
    let lm = load(&fixture("gguf/tiny-lm-f32.gguf"), DType::F32);
    let tokenizer = lm.tokenizer.as_ref().expect("a byte-level BPE");
    let template = lm.chat_template(&TemplateChoice::Auto).unwrap().unwrap();
    let chat: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("gguf/chat.json")).unwrap()).unwrap();
    assert_eq!(template.source(), chat["template"].as_str().unwrap());
    for row in chat["rows"].as_array().unwrap() {
        let messages: Vec<Message> = row["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| Message::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
            .collect();
        assert_encodes_as(tokenizer, &template, &messages, row);
    }
}

#[test]
fn inspect_describes_a_gguf_file() {
    let mut test = Test::new();
    let model = fixture("gguf/tiny-lm-q8_0.gguf");
    let out = test.args(["inspect"]).arg(&model).run().success();
    for needle in [
        "format      gguf (llama)",
        "Q8_0 ×15",
        "F32 ×5",
        "2 layers, hidden 64, MLP 128, 4 heads / 2 kv heads of 16",
        "2048 tokens, gpt2 (pre-tokenizer default)",
        "chat        template of",
        "general.name = curate tiny-lm",
    ] {
        assert!(out.stdout.contains(needle), "{needle}: {}", out.stdout);
    }
    let out = test.args(["inspect", "--json"]).arg(&model).run().success();
    let report: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(report["format"], "gguf");
    assert_eq!(report["vocab_size"], 2048);
    assert_eq!(report["tensor_types"]["Q8_0"], 15);
    assert_eq!(report["gguf"]["metadata"]["llama.block_count"], 2);
    assert_eq!(
        report["gguf"]["metadata"]["tokenizer.ggml.tokens"]["length"],
        2048
    );
}

/// The tiny F32 model with `edit` applied to its bytes.
fn edited_model(test: &Test, name: &str, edit: impl FnOnce(&mut Vec<u8>)) -> String {
    let mut bytes = std::fs::read(fixture("gguf/tiny-lm-f32.gguf")).unwrap();
    edit(&mut bytes);
    std::fs::write(test.path(name), bytes).unwrap();
    name.to_string()
}

fn find(bytes: &[u8], needle: &[u8]) -> usize {
    bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("needle in file")
}

#[test]
fn unreadable_gguf_files_fail_with_the_file_and_tensor_named() {
    let mut test = Test::new();
    let train = fixture("math_code_queries.jsonl");
    let run = |test: &mut Test, model: &str, needle: &str| {
        test.args(["influence", "--model", model, "--train"])
            .arg(&train)
            .arg("--query")
            .arg(&train)
            .args(["--out", "scores.parquet", "--max-length", "64"])
            .run()
            .invalid(needle);
        assert!(!test.path("scores.parquet").exists());
    };
    // An architecture curate does not run.
    let arch = edited_model(&test, "bloom.gguf", |bytes| {
        let at = find(bytes, b"general.architecture") + "general.architecture".len() + 4 + 8;
        bytes[at..at + 5].copy_from_slice(b"bloom");
    });
    run(
        &mut test,
        &arch,
        "bloom.gguf: architecture 'bloom' is not supported (curate runs llama and qwen2)",
    );
    // A tensor in a quantisation curate does not read (the type field follows the name,
    // the dimension count and two dimensions).
    let quant = edited_model(&test, "q5.gguf", |bytes| {
        let name = b"blk.0.ffn_up.weight";
        let at = find(bytes, name) + name.len() + 4 + 16;
        bytes[at..at + 4].copy_from_slice(&13u32.to_le_bytes());
    });
    run(
        &mut test,
        &quant,
        "q5.gguf: tensor 'blk.0.ffn_up.weight' has type Q5_K",
    );
    // Cut short inside the tensor data.
    let cut = edited_model(&test, "cut.gguf", |bytes| bytes.truncate(bytes.len() - 100));
    run(
        &mut test,
        &cut,
        "cut.gguf: tensor 'output_norm.weight' runs past the end",
    );
    // Not a GGUF file and not a directory.
    std::fs::write(test.path("model.bin"), b"GGML and more").unwrap();
    run(
        &mut test,
        "model.bin",
        "model.bin: not a model directory or a GGUF file",
    );
}

/// Example scores of the bundled queries against the first training rows.
fn scores_with(test: &mut Test, model: &Path, extra: &[&str], out: &str) -> Vec<f64> {
    let train = fixture("math_code_queries.jsonl");
    test.args(["influence", "--model"])
        .arg(model)
        .arg("--train")
        .arg(&train)
        .arg("--query")
        .arg(&train)
        .args(["--max-length", "256", "--precond", "kfac", "--out", out])
        .args(extra)
        .run()
        .success();
    let frame = curate::table::Input::open(test.path(out).to_str().unwrap(), None)
        .unwrap()
        .read()
        .unwrap();
    frame
        .column("score")
        .unwrap()
        .f64()
        .unwrap()
        .into_no_null_iter()
        .collect()
}

#[test]
fn influence_on_a_gguf_model_uses_its_chat_template() {
    let mut test = Test::new();
    let gguf = fixture("gguf/tiny-lm-f32.gguf");
    // Without the template the GGUF is the bundled model: the same scores.
    let dir_scores = scores_with(&mut test, &fixture("tiny-lm"), &[], "dir.parquet");
    let plain = scores_with(
        &mut test,
        &gguf,
        &["--chat-template", "none"],
        "plain.parquet",
    );
    assert_eq!(plain, dir_scores);
    // With it (auto) the rows are conversations and the scores change.
    let chat = scores_with(&mut test, &gguf, &[], "chat.parquet");
    assert_eq!(chat.len(), plain.len());
    assert_ne!(chat, plain);
    let system = scores_with(
        &mut test,
        &gguf,
        &["--system", "Be brief."],
        "system.parquet",
    );
    assert_ne!(system, chat);
    // A template file works on the directory model as on the GGUF with its own template.
    let chat_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("gguf/chat.json")).unwrap()).unwrap();
    let template = test.path("template.jinja");
    std::fs::write(&template, chat_json["template"].as_str().unwrap()).unwrap();
    let from_file = scores_with(
        &mut test,
        &fixture("tiny-lm"),
        &["--chat-template", template.to_str().unwrap()],
        "file.parquet",
    );
    assert_eq!(from_file.len(), chat.len());
    // The GGUF's template names <|endoftext|> as its eos, the directory model none: the
    // rendered text is the same, so are the scores.
    assert_eq!(from_file, chat);
}
