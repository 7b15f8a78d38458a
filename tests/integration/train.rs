//! `curate train`: determinism, checkpoint and resume, reloading in curate and transformers,
//! and its invalid inputs.

use std::path::Path;
use std::process::Command;

use burn::tensor::DType;
use curate::model::train::{TrainSettings, Trainer};
use curate::model::{LanguageModel, LoadOptions, Padding, Sequence, TokenBatch, tensor_to_f64};

use crate::model::{read_tensor, test_device};
use crate::test::Test;

/// 40 GSM8K-style problems: short enough to train on in a test.
pub(crate) fn problems() -> String {
    format!(
        "{}/fixtures/gsm_symbolic_40.jsonl",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// A small, fast training run on the problems; more flags may follow.
pub(crate) fn train_args(out: &str) -> Vec<String> {
    [
        "train",
        &problems(),
        "--out",
        out,
        "--prompt-col",
        "question",
        "--response-col",
        "answer_cot",
        "--vocab-size",
        "512",
        "--hidden-size",
        "32",
        "--intermediate-size",
        "64",
        "--max-positions",
        "512",
        "--batch-size",
        "4",
        "--steps",
        "6",
        "--warmup",
        "2",
        "--lr",
        "0.005",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(
        // The same runs on LibTorch when scripts/test-tch.sh names a device.
        std::env::var("CURATE_TEST_DEVICE")
            .ok()
            .filter(|d| !d.is_empty())
            .into_iter()
            .flat_map(|d| ["--device".to_string(), d]),
    )
    .collect()
}

/// Every tensor of a saved model, by name.
pub(crate) fn tensors(dir: &Path) -> Vec<(String, Vec<f64>)> {
    let file = dir.join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    let parsed = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = parsed.names().into_iter().map(String::from).collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let values = read_tensor(&file, &name).0;
            (name, values)
        })
        .collect()
}

#[test]
fn training_is_deterministic_and_lowers_the_loss() {
    let mut test = Test::new();
    let mut first = train_args("a");
    let steps = first.iter().position(|a| a == "--steps").unwrap() + 1;
    first[steps] = "12".into();
    let outcome = test.args(&first).run().success();
    assert!(outcome.stdout.is_empty(), "stdout carries data only");
    assert!(
        outcome.stderr.contains("trained 12 steps"),
        "{}",
        outcome.stderr
    );
    let mut second = first.clone();
    second[3] = "b".into();
    test.args(&second).run().success();
    assert_eq!(tensors(&test.path("a")), tensors(&test.path("b")));
    for name in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(test.path("a").join(name).is_file(), "{name}");
    }
    let mut other_seed = first.clone();
    other_seed[3] = "c".into();
    other_seed.extend(["--seed".to_string(), "1".to_string()]);
    test.args(&other_seed).run().success();
    assert_ne!(tensors(&test.path("a")), tensors(&test.path("c")));

    // Training lowered the loss on the training data, against the untrained start.
    let options = LoadOptions::inference(&test_device(), DType::F32);
    let trained = LanguageModel::load(&test.path("a"), &options).unwrap();
    let tokenizer = trained.tokenizer.clone().unwrap();
    let start = LanguageModel::init(
        trained.config.clone(),
        None,
        0,
        &test_device(),
        DType::F32,
        false,
    )
    .unwrap();
    let sequence = curate::model::tokenizer::prompt_response(
        &tokenizer,
        "A baker sells 12 cakes a day. How many in 5 days?",
        "The baker sells 12 * 5 = 60 cakes.\n#### 60",
        trained.config.eos_token_id,
    )
    .unwrap();
    let batch = TokenBatch::pad(&[&sequence], 0, Padding::Right);
    let before = start.sequence_losses(&batch)[0];
    let after = trained.sequence_losses(&batch)[0];
    assert!(after < before - 1.0, "loss {before} -> {after}");
}

#[test]
fn resumed_training_equals_an_uninterrupted_run() {
    let mut test = Test::new();
    test.args(train_args("whole")).run().success();

    let mut part = train_args("resumed");
    part.extend(["--stop-after".to_string(), "4".to_string()]);
    let outcome = test.args(&part).run().success();
    assert!(
        outcome.stderr.contains("stopped after 4 steps"),
        "{}",
        outcome.stderr
    );
    assert!(!test.path("resumed").exists());
    assert!(test.path("resumed.checkpoint/trainer.json").is_file());

    let mut rest = train_args("resumed");
    rest.push("--resume".into());
    let outcome = test.args(&rest).run().success();
    assert!(
        outcome.stderr.contains("resuming at step 4"),
        "{}",
        outcome.stderr
    );
    assert!(
        !test.path("resumed.checkpoint").exists(),
        "checkpoint removed at the end"
    );
    assert_eq!(tensors(&test.path("whole")), tensors(&test.path("resumed")));

    // A checkpoint refuses to continue a run with other settings.
    let mut part = train_args("other");
    part.extend(["--stop-after".to_string(), "2".to_string()]);
    test.args(&part).run().success();
    let mut changed = train_args("other");
    let lr = changed.iter().position(|a| a == "--lr").unwrap() + 1;
    changed[lr] = "0.01".into();
    changed.push("--resume".into());
    test.args(&changed)
        .run()
        .invalid("made with other data or flags");
}

#[test]
fn saved_model_reloads_with_identical_logits() {
    // Train a few steps in process, as `curate train` does, then save and reload.
    let device = test_device();
    let options = LoadOptions {
        trainable: true,
        ..LoadOptions::inference(&device, DType::F32)
    };
    let mut lm = LanguageModel::load(&crate::model::fixture("tiny-llama-tied"), &options).unwrap();
    let sequences: Vec<Sequence> = (0..6)
        .map(|n| {
            let ids: Vec<i64> = (0..12 + n)
                .map(|i| (i * 37 + n * 11) as i64 % 512)
                .collect();
            Sequence {
                labels: ids.clone(),
                input_ids: ids,
            }
        })
        .collect();
    let settings = TrainSettings {
        max_steps: Some(3),
        batch_size: 2,
        warmup_steps: 1,
        ..TrainSettings::default()
    };
    let mut trainer = Trainer::new(settings, sequences.iter().map(Sequence::len).collect());
    let mut model = lm.model.clone();
    while !trainer.is_done() {
        model = trainer.train_step(&lm, model, &sequences).0;
    }
    lm.model = model;

    let batch = TokenBatch::pad(&[&sequences[5]], 0, Padding::Right);
    let dir = tempfile::tempdir().unwrap();
    lm.save(dir.path(), &[]).unwrap();
    let back =
        LanguageModel::load(dir.path(), &LoadOptions::inference(&device, DType::F32)).unwrap();
    assert_eq!(back.config, lm.config);
    let trained = tensor_to_f64(lm.logits(&batch));
    assert_eq!(trained, tensor_to_f64(back.logits(&batch)));
    let original = LanguageModel::load(
        &crate::model::fixture("tiny-llama-tied"),
        &LoadOptions::inference(&device, DType::F32),
    )
    .unwrap();
    assert_ne!(
        trained,
        tensor_to_f64(original.logits(&batch)),
        "training changed the model"
    );
}

#[test]
fn trained_model_loads_in_transformers_with_the_same_logits() {
    let Some(python) = crate::test::python_importing("torch, transformers", None) else {
        return;
    };
    let mut test = Test::new();
    let mut args = train_args("model");
    args.extend(["--arch".to_string(), "qwen2".to_string()]);
    test.args(&args).run().success();
    let dir = test.path("model");
    let script = r#"
import json, sys
import torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
ids = torch.tensor([json.loads(sys.argv[2])])
with torch.no_grad():
    print(json.dumps(model(input_ids=ids).logits[0].flatten().tolist()))
"#;
    let ids: Vec<i64> = (0..24).map(|i| (i * 53 % 500) as i64).collect();
    let output = Command::new(&python)
        .args([
            "-c",
            script,
            dir.to_str().unwrap(),
            &serde_json::to_string(&ids).unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let theirs: Vec<f64> = serde_json::from_slice(
        output
            .stdout
            .rsplit(|&b| b == b'\n')
            .find(|l| !l.is_empty())
            .unwrap(),
    )
    .unwrap();
    let lm =
        LanguageModel::load(&dir, &LoadOptions::inference(&test_device(), DType::F32)).unwrap();
    let sequence = Sequence {
        labels: ids.clone(),
        input_ids: ids,
    };
    let ours = tensor_to_f64(lm.logits(&TokenBatch::pad(&[&sequence], 0, Padding::Right)));
    assert_eq!(ours.len(), theirs.len());
    let diff = ours
        .iter()
        .zip(&theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(diff < 1e-4, "max |logit difference| {diff:e}");
}

#[test]
fn invalid_training_inputs_fail_cleanly() {
    let table = "prompt,response\nWhat is 2+2?,four\nName a colour.,\"\"\n";
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "train",
                "data.csv",
                "--out",
                "m",
                "--response-col",
                "answer",
            ],
            "column 'answer': not found",
        ),
        (
            vec!["train", "data.csv", "--out", "m"],
            "column 'response', row 2: empty response",
        ),
        (
            vec!["train", "null.csv", "--out", "m"],
            "column 'response', row 2: missing text",
        ),
        (
            vec!["train", "long.csv", "--out", "m", "--max-positions", "16"],
            "more than the model's 16 positions",
        ),
        (
            vec![
                "train",
                "long.csv",
                "--out",
                "m",
                "--max-length",
                "64",
                "--max-positions",
                "16",
            ],
            "--max-length 64 exceeds the model's 16 positions",
        ),
        (
            vec!["train", "ok.csv", "--out", "existing"],
            "existing already exists",
        ),
        (
            vec!["train", "ok.csv", "--out", "m", "--resume"],
            "no checkpoint in m.checkpoint",
        ),
        (
            vec!["train", "ok.csv", "--out", "m", "--device", "gpu"],
            "unknown device 'gpu'",
        ),
        (
            vec!["train", "ok.csv", "--out", "m", "--heads", "3"],
            "--hidden-size 64 must split",
        ),
    ];
    let long_prompt = "word ".repeat(40);
    for (args, needle) in cases {
        let mut test = Test::new()
            .file("data.csv", table)
            .file(
                "null.csv",
                "prompt,response\nWhat is 2+2?,four\nName a colour.,\n",
            )
            .file("ok.csv", "prompt,response\nWhat is 2+2?,four\n")
            .file("long.csv", format!("prompt,response\n{long_prompt},four\n"))
            .file("existing/keep.txt", "mine");
        test.args(&args).run().invalid(needle);
        assert!(!test.path("m").exists(), "{args:?} left an output");
        assert_eq!(test.read("existing/keep.txt"), b"mine");
        let leftovers: Vec<String> = test
            .entries()
            .into_iter()
            .filter(|e| e.contains("curate-tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}

#[test]
fn continuing_a_model_with_more_layers_needs_allow_partial() {
    let source = crate::model::fixture("tiny-lm");
    let mut test = Test::new();
    for name in ["model.safetensors", "tokenizer.json"] {
        let bytes = std::fs::read(source.join(name)).unwrap();
        test = test.file(&format!("deeper/{name}"), bytes);
    }
    let config = std::fs::read_to_string(source.join("config.json")).unwrap();
    assert!(config.contains("\"num_hidden_layers\": 2"));
    let test = test.file(
        "deeper/config.json",
        config.replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 3"),
    );
    let mut test = test;
    let args = [
        "train",
        &problems(),
        "--model",
        "deeper",
        "--out",
        "m",
        "--prompt-col",
        "question",
        "--response-col",
        "answer_cot",
        "--steps",
        "1",
        "--batch-size",
        "2",
    ];
    test.args(args)
        .run()
        .invalid("missing tensor(s): model.layers.2");
    assert!(!test.path("m").exists());
    test.args(args).arg("--allow-partial").run().success();
    let trained = LanguageModel::load(
        &test.path("m"),
        &LoadOptions::inference(&test_device(), DType::F32),
    )
    .unwrap();
    assert_eq!(trained.config.num_layers, 3);
}

#[test]
fn ctrl_c_leaves_a_checkpoint_that_resumes_to_the_same_model() {
    use std::process::Stdio;

    let mut test = Test::new();
    let with_steps = |out: &str| {
        let mut args = train_args(out);
        let steps = args.iter().position(|a| a == "--steps").unwrap() + 1;
        args[steps] = "40".into();
        args
    };
    let child = crate::test::curate_command(&test.path(""))
        .args(with_steps("m"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (code, stderr) =
        crate::test::interrupt_once_staged(&test, child, std::time::Duration::from_millis(300));
    assert_eq!(code, Some(130), "{stderr}");
    assert!(stderr.contains("checkpoint in m.checkpoint"), "{stderr}");
    assert!(stderr.ends_with("curate: interrupted\n"), "{stderr}");
    assert_eq!(
        test.entries(),
        ["m.checkpoint"],
        "only the checkpoint is left"
    );

    let mut resume = with_steps("m");
    resume.push("--resume".into());
    test.args(&resume).run().success();
    test.args(with_steps("whole")).run().success();
    assert_eq!(tensors(&test.path("m")), tensors(&test.path("whole")));
}

#[test]
fn weights_do_not_depend_on_the_thread_count() {
    let test = Test::new();
    for threads in ["1", "3"] {
        let mut args = train_args(&format!("t{threads}"));
        for (flag, value) in [
            ("--hidden-size", "128"),
            ("--intermediate-size", "256"),
            ("--steps", "2"),
        ] {
            let at = args.iter().position(|a| a == flag).unwrap() + 1;
            args[at] = value.into();
        }
        let outcome = crate::test::curate_command(&test.path(""))
            .args(&args)
            .env("RAYON_NUM_THREADS", threads)
            .output()
            .unwrap();
        assert!(
            outcome.status.success(),
            "{}",
            String::from_utf8_lossy(&outcome.stderr)
        );
    }
    assert_eq!(tensors(&test.path("t1")), tensors(&test.path("t3")));
}

/// Whole-number weights train exactly as the rows repeated that many times: one step over a
/// batch holding every row, from the same model, gives the same weights (to rounding).
#[test]
fn weighted_rows_train_as_repeated_rows() {
    let row = |id: u32, prompt: &str, response: &str, weight: f64| {
        format!(
            "{}\n",
            serde_json::json!({"id": id, "prompt": prompt, "response": response, "w": weight})
        )
    };
    let a = ("What is 2 + 3?", "2 + 3 = 5.\n#### 5");
    let b = ("def f(x): return x * 4\nWhat is f(2)?", "f(2) = 8");
    let c = ("Name a colour.", "Blue.");
    let weighted = [
        row(0, a.0, a.1, 2.0),
        row(1, b.0, b.1, 1.0),
        row(2, c.0, c.1, 0.0),
    ]
    .concat();
    let repeated = [
        row(0, a.0, a.1, 1.0),
        row(1, a.0, a.1, 1.0),
        row(2, b.0, b.1, 1.0),
    ]
    .concat();
    let mut test = Test::new()
        .file("weighted.jsonl", weighted)
        .file("repeated.jsonl", repeated);
    let model = format!("{}/fixtures/tiny-lm", env!("CARGO_MANIFEST_DIR"));
    for (input, out, extra) in [
        ("weighted.jsonl", "w", vec!["--weight-col", "w"]),
        ("repeated.jsonl", "r", vec![]),
    ] {
        let outcome = test
            .args(["train", input, "--out", out, "--model", &model])
            .args(["--steps", "1", "--batch-size", "8", "--warmup", "0"])
            .args(extra)
            .run()
            .success();
        if out == "w" {
            assert!(
                outcome
                    .stderr
                    .contains("losses weighted by 'w' (total 3.000); 1 rows of weight 0 left out"),
                "{}",
                outcome.stderr
            );
        }
    }
    let (weighted, repeated) = (tensors(&test.path("w")), tensors(&test.path("r")));
    let original = tensors(Path::new(&model));
    let mut largest = 0f64;
    for ((name, w), ((_, r), (_, o))) in weighted.iter().zip(repeated.iter().zip(&original)) {
        assert_ne!(w, o, "{name} did not train");
        for (x, y) in w.iter().zip(r) {
            largest = largest.max((x - y).abs());
        }
    }
    // In f32 a batch of two rows (one weighted twice) and a batch of three round differently,
    // and AdamW's first step divides by the gradient's own size, so a parameter whose gradient
    // is near zero can move by a sizeable fraction of --lr (1e-3) on rounding alone. Weights
    // that were ignored would change the update of many parameters by up to 2 x --lr.
    assert!(largest < 1e-5, "largest difference {largest:e}");
}

#[test]
fn bad_weights_fail_cleanly() {
    let rows = |weights: [&str; 2]| {
        format!(
            "{{\"prompt\": \"a\", \"response\": \"b\", \"w\": {}}}\n{{\"prompt\": \"c\", \"response\": \"d\", \"w\": {}}}\n",
            weights[0], weights[1]
        )
    };
    let mut test = Test::new()
        .file("negative.jsonl", rows(["1.0", "-0.5"]))
        .file("zero.jsonl", rows(["0", "0"]))
        .file("null.jsonl", rows(["1.0", "null"]))
        .file("text.jsonl", rows(["\"x\"", "\"y\""]));
    for (file, needle) in [
        (
            "negative.jsonl",
            "negative.jsonl: column 'w', row 2: weight -0.5 is not a finite non-negative number",
        ),
        (
            "zero.jsonl",
            "zero.jsonl: column 'w': every weight is 0: nothing to train on",
        ),
        (
            "null.jsonl",
            "null.jsonl: column 'w', row 2: weight is null",
        ),
        ("text.jsonl", "text.jsonl: column 'w'"),
        ("zero.jsonl", "column 'weight'"),
    ] {
        let column = if needle.contains("'weight'") {
            "weight"
        } else {
            "w"
        };
        test.args([
            "train",
            file,
            "--out",
            "m",
            "--weight-col",
            column,
            "--vocab-size",
            "300",
        ])
        .run()
        .invalid(needle);
        assert!(!test.path("m").exists());
    }
}

/// Rows whose prompt fills all of --max-length stop a run with advice, or with --skip-long are
/// left out by table row (weights follow their rows).
#[test]
fn skip_long_leaves_out_rows_whose_prompt_fills_the_limit() {
    let mut test = Test::new();
    let mut args = train_args("m");
    args.extend(["--max-length".to_string(), "100".to_string()]);
    test.args(&args)
        .run()
        .invalid("no response token is left (raise --max-length");
    let out = test.args(&args).arg("--skip-long").run().success();
    assert!(
        out.stderr
            .contains("whose prompt fills --max-length 100 (--skip-long): rows 2, 4, "),
        "{}",
        out.stderr
    );
    // Weights: row 2's long prompt is left out with its weight; row 3 (weight 0) was already.
    let long = "word ".repeat(200);
    let rows = format!(
        "{{\"prompt\": \"1+1?\", \"response\": \"2\", \"w\": 1}}\n\
         {{\"prompt\": \"{long}\", \"response\": \"x\", \"w\": 5}}\n\
         {{\"prompt\": \"2+2?\", \"response\": \"4\", \"w\": 0}}\n\
         {{\"prompt\": \"3+3?\", \"response\": \"6\", \"w\": 1}}\n"
    );
    let mut test = Test::new().file("rows.jsonl", rows);
    let out = test
        .args(["train", "rows.jsonl", "--out", "w", "--weight-col", "w"])
        .args([
            "--vocab-size",
            "300",
            "--hidden-size",
            "16",
            "--intermediate-size",
            "32",
        ])
        .args([
            "--layers",
            "1",
            "--heads",
            "2",
            "--kv-heads",
            "1",
            "--steps",
            "2",
        ])
        .args(["--max-positions", "64", "--max-length", "32", "--skip-long"])
        .run()
        .success();
    assert!(
        out.stderr
            .contains("left out 1 row whose prompt fills --max-length 32 (--skip-long): row 2"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("on 2 sequences"), "{}", out.stderr);
}
