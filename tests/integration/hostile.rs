//! Hostile and unlucky conditions: a checkpoint directory that holds a user's files, model
//! files that claim absurd sizes or whose header values wrap, chat templates that never end,
//! a write that fails after an earlier output was staged, two names for one file, concurrent
//! runs, SIGTERM, stray temporary files of killed runs, closed pipes and credentials in URLs.
//! Every hostile file is written by the test.

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use burn::tensor::DType;
use curate::error::{ErrorClass, classify};
use curate::model::{LanguageModel, LoadOptions, Padding, Sequence, TokenBatch, tensor_to_f64};

use crate::model::{fixture, test_device};
use crate::test::{Test, signal_once_staged};
use crate::train::{tensors, train_args};

fn with_flag(mut args: Vec<String>, flag: &str, value: &str) -> Vec<String> {
    match args.iter().position(|a| a == flag) {
        Some(at) => args[at + 1] = value.to_string(),
        None => args.extend([flag.to_string(), value.to_string()]),
    }
    args
}

#[test]
fn a_checkpoint_directory_never_puts_a_users_files_at_risk() {
    let mut test = Test::new().file("mine/notes.txt", "keep me");
    // A directory of the user's: refused before any work, and left as it was.
    test.args(train_args("m"))
        .args(["--checkpoint-dir", "mine"])
        .run()
        .invalid("not a curate checkpoint");
    assert_eq!(test.read("mine/notes.txt"), b"keep me");
    // The output itself, or a directory inside it, or one that holds it.
    for dir in ["m", "./m", "m/ckpt", "."] {
        let out = test
            .args(train_args("m"))
            .args(["--checkpoint-dir", dir])
            .run();
        out.invalid("overlaps it");
    }
    assert!(!test.path("m").exists());
    assert_eq!(test.entries(), ["mine"]);

    // A finished run removes its own checkpoint, and only what it wrote there.
    let args = with_flag(train_args("m"), "--steps", "4");
    test.args(with_flag(args.clone(), "--stop-after", "2"))
        .run()
        .success();
    assert!(test.path("m.checkpoint/.curate-checkpoint").is_file());
    std::fs::write(test.path("m.checkpoint/mine.txt"), "added").unwrap();
    test.args(&args).arg("--resume").run().success();
    assert!(test.path("m/model.safetensors").is_file());
    assert_eq!(test.read("m.checkpoint/mine.txt"), b"added");
    assert!(!test.path("m.checkpoint/trainer.json").exists());
}

#[test]
fn an_interrupted_runs_checkpoint_is_resumed_or_replaced_only_when_asked() {
    let mut test = Test::new();
    let args = with_flag(train_args("m"), "--steps", "4");
    test.args(with_flag(args.clone(), "--stop-after", "2"))
        .run()
        .success();
    // Starting again without --resume would overwrite it: refused, and it is kept.
    test.args(&args)
        .run()
        .invalid("an interrupted run's checkpoint (step 2) is here; pass --resume to continue it, or --force to start over");
    assert!(test.path("m.checkpoint/trainer.json").is_file());

    // A checkpoint that already reached the end has nothing left to train: no model with a
    // NaN loss is written.
    let state = test.path("m.checkpoint/trainer.json");
    let text = std::fs::read_to_string(&state).unwrap();
    std::fs::write(&state, text.replace("\"step\": 2", "\"step\": 9")).unwrap();
    test.args(&args)
        .arg("--resume")
        .run()
        .invalid("is at step 9 of 4: nothing is left to train");
    assert!(!test.path("m").exists());

    // --force starts over and the run ends with the old checkpoint gone.
    test.args(&args).arg("--force").run().success();
    assert!(test.path("m/config.json").is_file());
    assert!(!test.path("m.checkpoint").exists());
}

#[test]
fn sigterm_stops_training_with_a_checkpoint_that_resumes() {
    let mut test = Test::new();
    let args = with_flag(train_args("m"), "--steps", "40");
    let child = crate::test::curate_command(&test.path(""))
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (code, stderr) = signal_once_staged(&test, child, Duration::from_millis(300), "TERM");
    assert_eq!(code, Some(143), "{stderr}");
    assert!(stderr.contains("terminate signal received"), "{stderr}");
    assert!(stderr.contains("checkpoint in m.checkpoint"), "{stderr}");
    assert_eq!(
        test.entries(),
        ["m.checkpoint"],
        "only the checkpoint is left"
    );
    test.args(&args).arg("--resume").run().success();
    test.args(with_flag(args, "--out", "whole")).run().success();
    assert_eq!(tensors(&test.path("m")), tensors(&test.path("whole")));
}

#[test]
fn sigterm_leaves_no_partial_output() {
    let test = Test::new();
    let child = crate::test::curate_command(&test.path(""))
        .args(["influence", "--model"])
        .arg(fixture("tiny-lm"))
        .arg("--train")
        .arg(fixture("math_code_mix.parquet"))
        .arg("--query")
        .arg(fixture("math_code_queries.jsonl"))
        .args(["--max-length", "1024", "--out", "scores.parquet"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (code, stderr) = signal_once_staged(&test, child, Duration::from_millis(500), "TERM");
    assert_eq!(code, Some(143), "{stderr}");
    // Only the progress saved for --resume, in a directory curate marks as its own.
    assert_eq!(test.entries(), ["scores.parquet.checkpoint"], "{stderr}");
    assert!(
        test.path("scores.parquet.checkpoint/.curate-checkpoint")
            .is_file()
    );
}

#[test]
fn absurd_model_sizes_are_refused_before_allocating() {
    let mut test = Test::new().file(
        "rows.jsonl",
        "{\"prompt\": \"1+1=\", \"response\": \"2\"}\n",
    );
    // A config.json claiming a billion layers beside the bundled weights.
    let config = std::fs::read_to_string(fixture("tiny-lm/config.json")).unwrap();
    let mut value: serde_json::Value = serde_json::from_str(&config).unwrap();
    value["num_hidden_layers"] = 1_000_000_000.into();
    let test_dir = test.path("huge");
    std::fs::create_dir(&test_dir).unwrap();
    std::fs::write(test_dir.join("config.json"), value.to_string()).unwrap();
    std::fs::copy(
        fixture("tiny-lm/model.safetensors"),
        test_dir.join("model.safetensors"),
    )
    .unwrap();
    std::fs::copy(
        fixture("tiny-lm/tokenizer.json"),
        test_dir.join("tokenizer.json"),
    )
    .unwrap();
    let started = Instant::now();
    test.args([
        "eval",
        "--model",
        "huge",
        "--data",
        "rows.jsonl",
        "--out",
        "e.jsonl",
    ])
    .run()
    .invalid("but the weights hold only");
    // The same claim in a GGUF header (llama.block_count).
    let mut gguf = std::fs::read(fixture("gguf/tiny-lm-f32.gguf")).unwrap();
    let at = find(&gguf, b"llama.block_count") + b"llama.block_count".len();
    assert_eq!(&gguf[at..at + 4], &4u32.to_le_bytes(), "a u32 value");
    gguf[at + 4..at + 8].copy_from_slice(&1_000_000_000u32.to_le_bytes());
    std::fs::write(test.path("huge.gguf"), &gguf).unwrap();
    test.args([
        "eval",
        "--model",
        "huge.gguf",
        "--data",
        "rows.jsonl",
        "--out",
        "e.jsonl",
    ])
    .run()
    .invalid("huge.gguf: the configuration describes");
    assert!(started.elapsed() < Duration::from_secs(30));

    // A fresh model wider than any machine: refused with the number, nothing left behind.
    let problems = crate::train::problems();
    test.args(["train", &problems, "--out", "m", "--prompt-col", "question"])
        .args(["--response-col", "answer_cot", "--vocab-size", "300"])
        .args([
            "--hidden-size",
            "1000000000",
            "--heads",
            "2",
            "--kv-heads",
            "2",
        ])
        .run()
        .invalid("needs about");
    // A vocabulary larger than the text can make is cut to what it can.
    let args = with_flag(train_args("v"), "--vocab-size", "1000000000000");
    test.args(with_flag(args, "--steps", "1")).run().success();
    assert!(
        test.entries()
            .iter()
            .all(|name| !name.ends_with(".curate-tmp")),
        "{:?}",
        test.entries()
    );
}

#[test]
fn gguf_header_values_that_wrap_are_refused() {
    let original = std::fs::read(fixture("gguf/tiny-lm-f32.gguf")).unwrap();
    let mut test = Test::new().file(
        "rows.jsonl",
        "{\"prompt\": \"1+1=\", \"response\": \"2\"}\n",
    );
    // The first metadata key's length (after magic, version and the two counts): 2^64 - 16.
    let mut long_key = original.clone();
    long_key[24..32].copy_from_slice(&(u64::MAX - 15).to_le_bytes());
    std::fs::write(test.path("long-key.gguf"), &long_key).unwrap();
    test.args(["inspect", "long-key.gguf"])
        .run()
        .invalid("truncated header");
    // A tensor offset that wraps past 2^64 onto the header.
    let mut wrapped = original.clone();
    let name = b"token_embd.weight";
    let at = rfind(&wrapped, name) + name.len();
    let dims = u32::from_le_bytes(wrapped[at..at + 4].try_into().unwrap()) as usize;
    let offset_at = at + 4 + 8 * dims + 4;
    let offset = u64::from_le_bytes(wrapped[offset_at..offset_at + 8].try_into().unwrap());
    let wrap = offset
        .wrapping_sub(4096)
        .wrapping_add(u64::MAX)
        .wrapping_add(1);
    wrapped[offset_at..offset_at + 8].copy_from_slice(&wrap.to_le_bytes());
    std::fs::write(test.path("wrapped.gguf"), &wrapped).unwrap();
    test.args([
        "eval",
        "--model",
        "wrapped.gguf",
        "--data",
        "rows.jsonl",
        "--out",
        "e.jsonl",
    ])
    .run()
    .invalid("token_embd.weight");
    assert!(!test.path("e.jsonl").exists());
}

fn find(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("needle in the file")
}

fn rfind(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .rposition(|w| w == needle)
        .expect("needle in the file")
}

/// A deterministic generator for the mutations (SplitMix64).
struct Mutator(u64);

impl Mutator {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// `bytes` with one change inside `bytes[..header]`: a random byte, an extreme 64-bit or
    /// 32-bit value written over a field, or the file cut short.
    fn mutate(&mut self, bytes: &[u8], header: usize) -> Vec<u8> {
        let mut out = bytes.to_vec();
        let at = self.below(header);
        match self.below(4) {
            0 => out[at] = self.next() as u8,
            1 => {
                let extremes = [u64::MAX, u64::MAX - 15, 1 << 63, 1 << 32, 0, 1 << 40];
                let value = extremes[self.below(extremes.len())].to_le_bytes();
                let end = (at + 8).min(out.len());
                out[at..end].copy_from_slice(&value[..end - at]);
            }
            2 => {
                let value = (self.next() as u32).to_le_bytes();
                let end = (at + 4).min(out.len());
                out[at..end].copy_from_slice(&value[..end - at]);
            }
            _ => out.truncate(at),
        }
        out
    }
}

/// Load `path` the way commands do; a load must fail as invalid input (exit 2) or give a model
/// whose logits are finite. Returns a description of anything else.
fn load_cleanly(path: &Path) -> Result<(), String> {
    let options = LoadOptions::inference(&test_device(), DType::F32);
    let loaded = std::panic::catch_unwind(AssertUnwindSafe(|| LanguageModel::load(path, &options)));
    match loaded {
        Err(_) => Err("panicked".into()),
        Ok(Err(err)) if classify(&err) == ErrorClass::InvalidInput => Ok(()),
        Ok(Err(err)) => Err(format!("not an input error: {err:#}")),
        Ok(Ok(lm)) => {
            let sequence = Sequence::prompt_response(&[1, 2], &[3]);
            let finite = std::panic::catch_unwind(AssertUnwindSafe(|| {
                let logits = lm.logits(&TokenBatch::pad(&[&sequence], lm.pad_id(), Padding::Right));
                tensor_to_f64(logits).iter().all(|v| v.is_finite())
            }));
            match finite {
                Ok(true) => Ok(()),
                Ok(false) => Err("loaded, with non-finite logits".into()),
                Err(_) => Err("loaded, then panicked in the forward pass".into()),
            }
        }
    }
}

#[test]
fn mutated_model_headers_load_correctly_or_fail_as_input_errors() {
    // Quiet the expected panics' default printing only if one happens; they fail the test.
    let dir = tempfile::tempdir().unwrap();
    let mut mutator = Mutator(23);
    let mut problems = Vec::new();
    let started = Instant::now();

    let gguf = std::fs::read(fixture("gguf/tiny-lm-q8_0.gguf")).unwrap();
    // The header (metadata and tensor table) ends where the first tensor's data begins.
    let header = curate::model::gguf::GgufFile::open(&fixture("gguf/tiny-lm-q8_0.gguf"))
        .unwrap()
        .data_start() as usize;
    let path = dir.path().join("model.gguf");
    for case in 0..2000 {
        let bytes = mutator.mutate(&gguf, header);
        std::fs::write(&path, &bytes).unwrap();
        let one = Instant::now();
        if let Err(problem) = load_cleanly(&path) {
            problems.push(format!("gguf case {case}: {problem}"));
        }
        assert!(
            one.elapsed() < Duration::from_secs(10),
            "gguf case {case} hung"
        );
    }

    let safetensors = std::fs::read(fixture("tiny-lm/model.safetensors")).unwrap();
    let header = 8 + u64::from_le_bytes(safetensors[..8].try_into().unwrap()) as usize;
    let model_dir = dir.path().join("model");
    std::fs::create_dir(&model_dir).unwrap();
    std::fs::copy(
        fixture("tiny-lm/config.json"),
        model_dir.join("config.json"),
    )
    .unwrap();
    for case in 0..1000 {
        let bytes = mutator.mutate(&safetensors, header);
        std::fs::write(model_dir.join("model.safetensors"), &bytes).unwrap();
        let one = Instant::now();
        if let Err(problem) = load_cleanly(&model_dir) {
            problems.push(format!("safetensors case {case}: {problem}"));
        }
        assert!(
            one.elapsed() < Duration::from_secs(10),
            "safetensors case {case} hung"
        );
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    eprintln!(
        "3000 mutated headers in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn a_chat_template_that_never_ends_is_stopped_and_named() {
    let looping =
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}";
    let mut test = Test::new().file("loop.jinja", looping).file(
        "rows.jsonl",
        "{\"prompt\": \"1+1=\", \"response\": \"2\"}\n",
    );
    let started = Instant::now();
    let out = test
        .args(["eval", "--model"])
        .arg(fixture("tiny-lm"))
        .args(["--data", "rows.jsonl", "--chat-template", "loop.jinja"])
        .args(["--out", "e.jsonl"])
        .run()
        .invalid("loop.jinja: the chat template failed: it ran past");
    assert!(
        out.stderr.contains("while rendering row 1 of rows.jsonl"),
        "{}",
        out.stderr
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(!test.path("e.jsonl").exists());
}

/// Run `curate ARGS` with a file size limit (RLIMIT_FSIZE, in KiB, with SIGXFSZ ignored), so a
/// write past it fails as a full disk would.
fn run_with_file_limit(test: &Test, kib: u64, args: &[&str]) -> crate::test::Outcome {
    let mut command = std::process::Command::new("bash");
    let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
    command
        .current_dir(test.path(""))
        .env_remove("RUST_LOG")
        .args([
            "-c",
            &format!(
                "trap '' XFSZ; ulimit -f {kib}; exec '{}' {}",
                env!("CARGO_BIN_EXE_curate"),
                quoted.join(" ")
            ),
        ]);
    let output = command.output().unwrap();
    crate::test::Outcome {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        stdout_bytes: output.stdout,
    }
}

#[test]
fn a_failed_later_output_leaves_every_earlier_one_as_it_was() {
    // One trace's answer is right; 300 are wrong and --require-correct rejects them, so the
    // rejects file is large and the output small.
    let trace = |id: String, reference: &str| {
        serde_json::json!({
            "id": id, "question": "What is 2 + 2?", "reference": reference,
            "response": format!(
                "<think>\n2 + 2 = 4, so the answer is 4. {}\n</think>\n\nThe answer is $\\boxed{{4}}$.",
                "Checked twice. ".repeat(20)
            ),
        })
        .to_string()
    };
    let mut rows = vec![trace("good".into(), "4")];
    rows.extend((0..300).map(|i| trace(format!("bad{i}"), "5")));
    let mut test = Test::new()
        .file("traces.jsonl", rows.join("\n") + "\n")
        .file("out.jsonl", "old output\n")
        .file("rejects.jsonl", "old rejects\n");
    let args = [
        "rephrase",
        "traces.jsonl",
        "--out",
        "out.jsonl",
        "--rejects",
        "rejects.jsonl",
        "--require-correct",
        "--force",
    ];
    let out = run_with_file_limit(&test, 16, &args);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(
        out.stderr.contains("rejects.jsonl: cannot write"),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.matches("os error").count(), 1, "{}", out.stderr);
    assert_eq!(test.read("out.jsonl"), b"old output\n");
    assert_eq!(test.read("rejects.jsonl"), b"old rejects\n");
    assert_eq!(
        test.entries(),
        ["out.jsonl", "rejects.jsonl", "traces.jsonl"]
    );
    // Without the limit the same run replaces both.
    test.args(args).run().success();
    assert_eq!(test.read_lines("out.jsonl").len(), 1);
    assert_eq!(test.read_lines("rejects.jsonl").len(), 300);
}

#[test]
fn one_file_named_two_ways_is_refused_before_any_work() {
    let mut test = Test::new().file("sub/keep", "").file("x.jsonl", "old\n");
    let mix = fixture("math_code_mix.parquet");
    for force in [false, true] {
        test.args(["reweight"]).arg(&mix).args([
            "--out",
            "x.jsonl",
            "--report",
            "./sub/../x.jsonl",
        ]);
        if force {
            test.arg("--force");
        }
        test.run()
            .invalid("--out x.jsonl and --report ./sub/../x.jsonl are the same file");
    }
    assert_eq!(test.read("x.jsonl"), b"old\n");
}

#[test]
fn two_concurrent_runs_never_both_write_one_model_directory() {
    let test = Test::new();
    let args = with_flag(train_args("m"), "--steps", "2");
    let spawn = || {
        crate::test::curate_command(&test.path(""))
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (first, second) = (spawn(), spawn());
    let codes: Vec<(i32, String)> = [first, second]
        .into_iter()
        .map(|child| {
            let out = child.wait_with_output().unwrap();
            (
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        })
        .collect();
    let mut exits: Vec<i32> = codes.iter().map(|(c, _)| *c).collect();
    exits.sort();
    assert_eq!(exits, [0, 2], "{codes:?}");
    let refused = &codes.iter().find(|(c, _)| *c == 2).unwrap().1;
    assert!(refused.contains("m already exists"), "{refused}");
    assert!(test.path("m/model.safetensors").is_file());
    assert!(
        test.entries().iter().all(|n| !n.ends_with(".curate-tmp")),
        "{:?}",
        test.entries()
    );
}

/// This host's name as curate writes it into temporary file names.
fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

#[test]
fn stray_temporaries_of_dead_runs_are_removed_and_live_ones_kept() {
    let dead = format!(".out.parquet.{}-999999999.Ab3dE9.curate-tmp", host());
    let foreign = ".out.parquet.notes.curate-tmp".to_string();
    // The test process itself is alive: its name stands for a run still writing.
    let live = format!(
        ".out.parquet.{}-{}.Xy7zQ1.curate-tmp",
        host(),
        std::process::id()
    );
    let mut test = Test::new()
        .file(&dead, "half-written")
        .file(&foreign, "not curate's")
        .file(&live, "still writing");
    test.args(["convert"])
        .arg(fixture("math_code_queries.jsonl"))
        .args(["--out", "out.parquet"])
        .run()
        .success();
    assert!(!test.path(&dead).exists());
    assert!(test.path(&foreign).exists());
    assert_eq!(test.read(&live), b"still writing");
}

#[test]
fn a_closed_pipe_ends_json_output_as_success() {
    use std::io::{BufRead, BufReader};
    let test = Test::new();
    let file = fixture("math_code_queries.jsonl");
    // Enough files that the JSON Lines outgrow the pipe's buffer.
    let mut child = crate::test::curate_command(&test.path(""))
        .args(["inspect", "--json"])
        .args(std::iter::repeat_n(&file, 400))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with('{'), "{first}");
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn logs_to_a_file_carry_no_colour_codes() {
    // A dead run's temporary file, whose removal is logged at info level.
    let mut test = Test::new().file(
        &format!(".q.parquet.{}-999999999.Ab3dE9.curate-tmp", host()),
        "",
    );
    let out = test
        .args(["-vv", "convert"])
        .arg(fixture("math_code_queries.jsonl"))
        .args(["--out", "q.parquet"])
        .run()
        .success();
    assert!(out.stderr.contains("INFO"), "{}", out.stderr);
    assert!(!out.stderr.contains('\u{1b}'), "{:?}", out.stderr);
}

#[test]
fn credentials_in_a_base_url_are_never_echoed_or_stored() {
    let server = crate::chat_server::ChatServer::start();
    let url = server
        .base_url()
        .replacen("http://", "http://user:hunter2secret@", 1);
    let mut test = Test::new();
    let traces = fixture("rephrase/r1_traces.jsonl");
    test.args(["rephrase"])
        .arg(&traces)
        .args([
            "--mode",
            "llm-boundaries",
            "--base-url",
            &url,
            "--model",
            "test-model",
        ])
        .args(["--out", "t.parquet", "--stats", "s.json"])
        .run()
        .success();
    for name in ["t.parquet", "s.json"] {
        let bytes = test.read(name);
        assert!(
            !bytes.windows(7).any(|w| w == b"hunter2"),
            "{name} holds the password"
        );
    }
    // A refused connection's error names the URL without its password.
    let dead = "http://user:hunter2secret@127.0.0.1:9/v1";
    let out = test
        .args(["rephrase"])
        .arg(&traces)
        .args([
            "--mode",
            "llm-boundaries",
            "--base-url",
            dead,
            "--model",
            "m",
        ])
        .args(["--out", "u.jsonl", "--max-retries", "0"])
        .run();
    assert_ne!(out.code, 0);
    assert!(!out.stderr.contains("hunter2"), "{}", out.stderr);
    assert!(out.stderr.contains("***@127.0.0.1"), "{}", out.stderr);
}

#[test]
fn small_input_faults_name_what_is_wrong() {
    let mut test = Test::new()
        .file("latin1.csv", b"id,text\n1,ok\n2,caf\xe9\n".as_slice())
        .file("empty.gguf", "");
    test.args(["convert", "latin1.csv", "--out", "x.jsonl"])
        .run()
        .invalid("latin1.csv, row 2: not valid UTF-8 (byte 0xe9");
    test.args(["inspect", "empty.gguf"])
        .run()
        .invalid("empty.gguf: not a GGUF file");
    // A dry run writes nothing, so it needs no --out.
    let out = test
        .args(["rephrase"])
        .arg(fixture("rephrase/r1_traces.jsonl"))
        .args([
            "--mode",
            "llm-boundaries",
            "--base-url",
            "http://127.0.0.1:9/v1",
        ])
        .args(["--model", "m", "--dry-run"])
        .run()
        .success();
    assert!(
        out.stderr.contains("requests") || out.stdout.contains("requests"),
        "{out:?}"
    );
    assert_eq!(test.entries(), ["empty.gguf", "latin1.csv"]);
}
