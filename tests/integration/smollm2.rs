//! The real SmolLM2-135M-Instruct (Q4_1 GGUF) against transformers and kronfluence:
//! logits, chat tokenisation and EK-FAC influence on chat-formatted math and code rows
//! (references in fixtures/smollm2, made by scripts/make-smollm2-reference).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::DType;
use curate::model::{LanguageModel, Message, TemplateChoice};

use crate::chat::assert_encodes_as;
use crate::influence::relative_error;
use crate::model::{fixture, load, logits_of, read_tensor};
use crate::test::Test;

const NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The model as `scripts/fetch-smollm2` leaves it: `$CURATE_SMOLLM2`, or the script's cache.
/// Absent, the test is skipped with a note, or fails where `CURATE_REQUIRE_SMOLLM2` is set
/// (CI fetches the model first).
pub fn smollm2() -> Option<PathBuf> {
    let path = match std::env::var_os("CURATE_SMOLLM2") {
        Some(path) => PathBuf::from(path),
        None => {
            let cache = std::env::var_os("CURATE_MODEL_CACHE")
                .map(PathBuf::from)
                .or_else(|| {
                    std::env::var_os("XDG_CACHE_HOME")
                        .map(|d| PathBuf::from(d).join("curate/models"))
                })
                .or_else(|| {
                    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/curate/models"))
                })?;
            cache.join(NAME)
        }
    };
    if path.is_file() {
        return Some(path);
    }
    assert!(
        std::env::var_os("CURATE_REQUIRE_SMOLLM2").is_none(),
        "{} is absent; run scripts/fetch-smollm2",
        path.display()
    );
    eprintln!(
        "skipped: {} is absent (scripts/fetch-smollm2 fetches it)",
        path.display()
    );
    None
}

/// Rows of a JSON Lines fixture by id.
fn rows(name: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(fixture(name))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn smollm2_logits_match_transformers() {
    let Some(model) = smollm2() else {
        return;
    };
    let reference = fixture("smollm2/reference.safetensors");
    // transformers ran in float32: its own rounding is 7.2e-5 here (what the f64 forward
    // pass differs from it by), so two float32 computations differ by up to 1.1e-4.
    for (dtype, tolerance) in [(DType::F64, 1e-4), (DType::F32, 2e-4)] {
        let lm = load(&model, dtype);
        logits_agree(&lm, &reference, dtype, tolerance);
    }
}

fn logits_agree(lm: &LanguageModel, reference: &Path, dtype: DType, tolerance: f64) {
    for i in 0..2 {
        let (ids, _) = read_tensor(reference, &format!("logits.{i}.input_ids"));
        let ids: Vec<i64> = ids.iter().map(|&v| v as i64).collect();
        let logits = logits_of(lm, vec![ids]);
        let vocab = lm.config.vocab_size;
        let positions = logits.len() / vocab;
        let (strided, shape) = read_tensor(reference, &format!("logits.{i}.strided"));
        assert_eq!(shape, vec![positions, vocab.div_ceil(32)]);
        let mut diff = 0f64;
        let (lse, _) = read_tensor(reference, &format!("logits.{i}.logsumexp"));
        let (argmax, _) = read_tensor(reference, &format!("logits.{i}.argmax"));
        for t in 0..positions {
            let row = &logits[t * vocab..(t + 1) * vocab];
            for (k, v) in row.iter().step_by(32).enumerate() {
                diff = diff.max((v - strided[t * shape[1] + k]).abs());
            }
            let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let ours = max + row.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
            diff = diff.max((ours - lse[t]).abs());
            let best = row
                .iter()
                .enumerate()
                .fold(
                    (0, f64::NEG_INFINITY),
                    |b, (k, &v)| if v > b.1 { (k, v) } else { b },
                );
            assert_eq!(best.0 as f64, argmax[t], "query {i}, position {t}");
        }
        eprintln!("{dtype:?} query {i}: {positions} positions, max |logit difference| {diff:e}");
        assert!(
            diff < tolerance,
            "{dtype:?} query {i}: max |logit difference| {diff:e}"
        );
    }
}

#[test]
fn smollm2_chat_tokens_match_transformers() {
    let Some(model) = smollm2() else {
        return;
    };
    let lm = load(&model, DType::F32);
    let tokenizer = lm.tokenizer.as_ref().expect("the GGUF's byte-level BPE");
    let template = lm.chat_template(&TemplateChoice::Auto).unwrap().unwrap();
    let by_id: HashMap<String, serde_json::Value> = rows("smollm2/train.jsonl")
        .into_iter()
        .chain(rows("smollm2/queries.jsonl"))
        .map(|r| (r["id"].as_str().unwrap().to_string(), r))
        .collect();
    let chat: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("smollm2/chat.json")).unwrap()).unwrap();
    let mut checked = 0;
    for expected in chat["rows"].as_array().unwrap() {
        let row = &by_id[expected["id"].as_str().unwrap()];
        let mut messages = vec![
            Message::new("user", row["prompt"].as_str().unwrap()),
            Message::new("assistant", row["response"].as_str().unwrap()),
        ];
        if let Some(system) = expected["system"].as_str() {
            messages.insert(0, Message::new("system", system));
        }
        assert_encodes_as(tokenizer, &template, &messages, expected);
        checked += 1;
    }
    assert_eq!(checked, 24);
}

/// The score table as `[query][train]` in the fixtures' row order.
fn score_matrix(test: &Test, file: &str) -> Vec<f64> {
    let frame = curate::table::Input::open(test.path(file).to_str().unwrap(), None)
        .unwrap()
        .read()
        .unwrap();
    let text = |name: &str| -> Vec<String> {
        frame
            .column(name)
            .unwrap()
            .str()
            .unwrap()
            .iter()
            .map(|v| v.unwrap().to_string())
            .collect()
    };
    let (queries, trains) = (text("query_id"), text("train_id"));
    let scores: Vec<f64> = frame
        .column("score")
        .unwrap()
        .f64()
        .unwrap()
        .into_no_null_iter()
        .collect();
    let position = |name: &str| -> HashMap<String, usize> {
        rows(name)
            .iter()
            .enumerate()
            .map(|(i, r)| (r["id"].as_str().unwrap().to_string(), i))
            .collect()
    };
    let (query_at, train_at) = (
        position("smollm2/queries.jsonl"),
        position("smollm2/train.jsonl"),
    );
    let mut matrix = vec![f64::NAN; query_at.len() * train_at.len()];
    for ((q, n), s) in queries.iter().zip(&trains).zip(scores) {
        matrix[query_at[q] * train_at.len() + train_at[n]] = s;
    }
    assert!(matrix.iter().all(|v| v.is_finite()));
    matrix
}

#[test]
fn smollm2_ekfac_matches_kronfluence_on_chat_rows() {
    let Some(model) = smollm2() else {
        return;
    };
    let reference = fixture("smollm2/reference.safetensors");
    let mut test = Test::new();
    let run = |test: &mut Test, damping: &str, factors: &[&str], out: &str| {
        test.args(["influence", "--model"])
            .arg(&model)
            .arg("--train")
            .arg(fixture("smollm2/train.jsonl"))
            .arg("--query")
            .arg(fixture("smollm2/queries.jsonl"))
            .args([
                "--chat-template",
                "auto",
                "--modules",
                r"model\.layers\.(0|15|29)\.mlp\.(gate|up|down)_proj$",
                "--precond",
                "ekfac",
                "--batch-size",
                "4",
                "--damping",
                damping,
                "--out",
                out,
            ])
            .args(factors)
            .run()
            .success();
    };
    // Fit once, score twice: a fixed damping and kronfluence's heuristic.
    run(
        &mut test,
        "1e-3",
        &["--save-factors", "factors"],
        "fixed.parquet",
    );
    run(
        &mut test,
        "heuristic",
        &["--factors", "factors"],
        "heuristic.parquet",
    );
    for (file, name) in [
        ("fixed.parquet", "scores_ekfac"),
        ("heuristic.parquet", "scores_ekfac_heuristic"),
    ] {
        let ours = score_matrix(&test, file);
        let (want, shape) = read_tensor(&reference, name);
        assert_eq!(shape, vec![4, 8]);
        let error = relative_error(&ours, &want);
        eprintln!("{name}: relative error {error:e}");
        assert!(error < 1e-3, "{name}: relative error {error:e}");
    }
}

#[test]
fn inspect_describes_smollm2() {
    let Some(model) = smollm2() else {
        return;
    };
    let out = Test::new().arg("inspect").arg(&model).run().success();
    for needle in [
        "format      gguf (llama)",
        "Q4_1 ×210",
        "30 layers, hidden 576, MLP 1536, 9 heads / 3 kv heads of 64",
        "49152, tied embeddings",
        "49152 tokens, gpt2 (pre-tokenizer smollm)",
        "general.name = Smollm2 135M 8k Lc100K Mix1 Ep2",
    ] {
        assert!(out.stdout.contains(needle), "{needle}: {}", out.stdout);
    }
}
