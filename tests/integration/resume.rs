//! Long influence runs stopped partway (SIGTERM as a scheduler sends it, Ctrl-C) keep their
//! progress and `--resume` finishes them with exactly the outputs of an uninterrupted run:
//! scores with token and segment tables, a gradient index, fitted factors.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::model::fixture;
use crate::test::{Test, signal_when};

/// A table of 120 short rows (the GSM fixture three times over) and four queries, so a stop
/// lands partway through a pass of one-row batches.
fn setup() -> Test {
    let lines: Vec<String> = std::fs::read_to_string(fixture("gsm_symbolic_40.jsonl"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let train: Vec<&str> = (0..3)
        .flat_map(|_| lines.iter().map(String::as_str))
        .collect();
    Test::new()
        .file("train.jsonl", train.join("\n") + "\n")
        .file("query.jsonl", lines[..4].join("\n") + "\n")
}

fn gradient_args(command: &[&str], out: &str) -> Vec<String> {
    batched(command, out, "1")
}

fn batched(command: &[&str], out: &str, batch_size: &str) -> Vec<String> {
    let mut args: Vec<String> = command.iter().map(|s| s.to_string()).collect();
    args.extend([
        "--model".to_string(),
        fixture("tiny-lm").display().to_string(),
        "--train".to_string(),
        "train.jsonl".to_string(),
        "--prompt-col".to_string(),
        "question".to_string(),
        "--response-col".to_string(),
        "answer_cot".to_string(),
        "--batch-size".to_string(),
        batch_size.to_string(),
        "--out".to_string(),
        out.to_string(),
    ]);
    args
}

fn score_args(out: &str) -> Vec<String> {
    let mut args = gradient_args(&["influence"], out);
    args.extend(
        [
            "--query",
            "query.jsonl",
            "--granularity",
            "token",
            "--segmenter",
            "sentence",
        ]
        .map(String::from),
    );
    args
}

/// Run `args` with a checkpoint after every batch and send `signal` once the checkpoint holds
/// `file`; the run must have stopped partway, with `code`.
fn stop_when_saved(test: &Test, args: &[String], file: &str, signal: &str, code: i32) -> String {
    let child = crate::test::curate_command(&test.path(""))
        .args(args)
        .args(["--checkpoint-every", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let checkpoint = format!("{}.checkpoint", out_of(args));
    let saved = move |test: &Test| test.path(&checkpoint).join(file).is_file();
    let (got, stderr) = signal_when(test, child, saved, Duration::ZERO, signal);
    assert_eq!(got, Some(code), "the run was to stop partway: {stderr}");
    assert!(stderr.contains("continue with --resume"), "{stderr}");
    stderr
}

fn out_of(args: &[String]) -> String {
    let at = args.iter().position(|a| a == "--out").unwrap();
    args[at + 1].clone()
}

fn table(test: &mut Test, name: &str) -> Vec<serde_json::Value> {
    test.args(["convert", name, "--out", "-"])
        .run()
        .success()
        .json_lines()
}

/// Every tensor's name and bytes.
fn tensor_bytes(path: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let parsed = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<u8>)> = parsed
        .tensors()
        .into_iter()
        .map(|(name, view)| (name, view.data().to_vec()))
        .collect();
    tensors.sort();
    tensors
}

#[test]
fn scores_stopped_in_the_fit_and_in_the_scores_resume_to_the_same_tables() {
    let mut test = setup();
    test.args(score_args("full.parquet")).run().success();
    let part = score_args("part.parquet");

    // SIGTERM during EK-FAC's eigenvalue pass: the covariances are kept whole.
    stop_when_saved(&test, &part, "lambdas.safetensors", "TERM", 143);
    let mut left = test.entries();
    left.retain(|name| !name.starts_with("full.") && !name.ends_with(".jsonl"));
    assert_eq!(left, ["part.parquet.checkpoint"], "no partial output");
    // Ctrl-C while scoring, resumed: the fitted factors come from the checkpoint.
    let mut resumed = part.clone();
    resumed.push("--resume".to_string());
    let stderr = stop_when_saved(&test, &resumed, "scores.safetensors", "INT", 130);
    assert!(stderr.contains("--resume: continuing from"), "{stderr}");
    let stored = test.path("part.parquet.checkpoint");
    assert!(stored.join("factors.safetensors").is_file());
    assert!(!stored.join("lambdas.safetensors").exists(), "superseded");

    let outcome = test.args(&resumed).run().success();
    assert!(
        !outcome.stderr.contains("factors:"),
        "no fit: {}",
        outcome.stderr
    );
    assert!(!stored.exists(), "a finished run removes its checkpoint");
    for suffix in ["", ".tokens", ".segments"] {
        let want = table(&mut test, &format!("full{suffix}.parquet"));
        let got = table(&mut test, &format!("part{suffix}.parquet"));
        assert!(!want.is_empty());
        assert_eq!(want, got, "{suffix}");
    }
}

#[test]
fn an_index_build_and_a_factor_fit_resume_to_the_same_bytes() {
    let mut test = setup();
    let index = gradient_args(&["influence", "index", "--precond", "diagonal"], "idx");
    test.args(gradient_args(
        &["influence", "index", "--precond", "diagonal"],
        "idx-full",
    ))
    .run()
    .success();
    stop_when_saved(&test, &index, "index.safetensors", "TERM", 143);
    let mut resumed = index.clone();
    resumed.push("--resume".to_string());
    test.args(&resumed).run().success();
    assert_eq!(
        test.read("idx/gradients.bin"),
        test.read("idx-full/gradients.bin")
    );
    let manifest = |test: &Test, dir: &str| -> serde_json::Value {
        serde_json::from_slice(&test.read(&format!("{dir}/manifest.json"))).unwrap()
    };
    assert_eq!(manifest(&test, "idx"), manifest(&test, "idx-full"));
    assert!(!test.path("idx.checkpoint").exists());

    let fit = gradient_args(&["influence", "fit-factors"], "f");
    test.args(gradient_args(&["influence", "fit-factors"], "f-full"))
        .run()
        .success();
    stop_when_saved(&test, &fit, "covariances.safetensors", "TERM", 143);
    let mut resumed = fit.clone();
    resumed.push("--resume".to_string());
    test.args(&resumed).run().success();
    assert_eq!(
        tensor_bytes(&test.path("f/factors.safetensors")),
        tensor_bytes(&test.path("f-full/factors.safetensors"))
    );
}

#[test]
fn saved_progress_is_continued_only_when_asked_and_only_by_the_same_run() {
    let mut test = setup();
    let args = gradient_args(&["influence", "fit-factors"], "f");
    // Nothing saved yet: --resume starts from the beginning (a job script always passes it).
    let mut first = args.clone();
    first.push("--resume".to_string());
    let outcome = test.args(&first).run().success();
    assert!(
        outcome.stderr.contains("no progress saved in f.checkpoint"),
        "{}",
        outcome.stderr
    );
    std::fs::remove_dir_all(test.path("f")).unwrap();

    stop_when_saved(&test, &args, "covariances.safetensors", "TERM", 143);
    let saved = tensor_bytes(&test.path("f.checkpoint/covariances.safetensors"));
    // Without --resume the progress is neither used nor dropped.
    test.args(&args)
        .run()
        .invalid("f.checkpoint: an interrupted run's progress is here; pass --resume");
    // Another run's progress (other rows) is refused.
    let mut other = args.clone();
    other.extend(["--modules", r"mlp\.up_proj$", "--resume"].map(String::from));
    test.args(&other)
        .run()
        .invalid("was saved by a run with other data, settings or batch size");
    // Another batch size is refused; `auto` adopts the saved one.
    let mut batches = batched(&["influence", "fit-factors"], "f", "2");
    batches.push("--resume".to_string());
    test.args(&batches).run().invalid("or batch size");
    assert_eq!(
        tensor_bytes(&test.path("f.checkpoint/covariances.safetensors")),
        saved,
        "refused runs leave the progress as it was"
    );
    assert!(!test.path("f").exists());
    let mut auto = batched(&["influence", "fit-factors"], "f", "auto");
    auto.push("--resume".to_string());
    let outcome = test.args(&auto).run().success();
    assert!(
        outcome.stderr.contains("--resume: batches of 1"),
        "{}",
        outcome.stderr
    );
    assert!(!test.path("f.checkpoint").exists());

    // --force starts over, dropping the saved progress.
    std::fs::remove_dir_all(test.path("f")).unwrap();
    stop_when_saved(&test, &args, "covariances.safetensors", "TERM", 143);
    let mut force = args.clone();
    force.push("--force".to_string());
    test.args(&force).run().success();
    assert!(!test.path("f.checkpoint").exists());

    // A checkpoint directory of someone else's files is never used.
    std::fs::create_dir(test.path("mine")).unwrap();
    std::fs::write(test.path("mine/notes.txt"), "keep").unwrap();
    let mut foreign = gradient_args(&["influence", "fit-factors"], "g");
    foreign.extend(["--checkpoint-dir", "mine"].map(String::from));
    test.args(&foreign).run().invalid("--checkpoint-dir mine: ");
    assert_eq!(test.read("mine/notes.txt"), b"keep");
    // Scores on stdout have no place for progress unless one is named.
    let mut piped = gradient_args(&["influence"], "-");
    piped.extend(["--query", "query.jsonl", "--resume"].map(String::from));
    test.args(&piped).run().invalid("needs --checkpoint-dir");
}
