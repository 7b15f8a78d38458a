//! `curate eval`: row losses against transformers' logits and the loss influence uses, greedy
//! answers and their verdicts, summaries, and invalid input.

use burn::tensor::DType;
use curate::model::DEFAULT_TRACKED;
use regex::Regex;

use crate::influence::{ids_table, qwen2_reference, sequences};
use crate::model::{fixture, load, read_rows, read_tensor};
use crate::test::Test;

/// Summed next-token cross-entropy of each query row from transformers' logits.
fn reference_losses(fixture: &std::path::Path) -> Vec<f64> {
    let (logits, shape) = read_tensor(fixture, "query_logits");
    let labels = read_rows(fixture, "query_labels");
    let (t, v) = (shape[1], shape[2]);
    labels
        .iter()
        .enumerate()
        .map(|(row, labels)| {
            (1..t)
                .filter(|&pos| labels[pos] != -100)
                .map(|pos| {
                    let at = &logits[(row * t + pos - 1) * v..(row * t + pos) * v];
                    let max = at.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let lse = max + at.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
                    lse - at[labels[pos] as usize]
                })
                .sum()
        })
        .collect()
}

#[test]
#[cfg_attr(
    no_shared_reference,
    ignore = "needs ../shared/reference beside the checkout"
)]
fn row_losses_equal_transformers_and_the_loss_influence_attributes() {
    let (model, fixture) = qwen2_reference();
    let mut test = Test::new().file("q.jsonl", ids_table(&fixture, "query"));
    test.args(["eval", "--model"])
        .arg(&model)
        .args(["--data", "q.jsonl", "--out", "e.jsonl", "--dtype", "f64"])
        .args(["--summary", "s.csv"])
        .run()
        .success();
    let rows = test.read_lines("e.jsonl");
    let ours: Vec<f64> = rows.iter().map(|r| r["loss"].as_f64().unwrap()).collect();
    let want = reference_losses(&fixture);
    for (row, (a, b)) in ours.iter().zip(&want).enumerate() {
        assert!((a - b).abs() < 1e-5 * b.abs(), "row {row}: {a} vs {b}");
    }
    // Influence's per-example loss comes from the gradient capture pass: the same numbers.
    let lm = load(&model, DType::F64);
    let seqs = sequences(&fixture, "query");
    let refs: Vec<&_> = seqs.iter().collect();
    let batch = curate::model::TokenBatch::pad(&refs, 0, curate::model::Padding::Right);
    let (captured, _) = lm
        .capture(&batch, &Regex::new(DEFAULT_TRACKED).unwrap())
        .unwrap();
    for (a, b) in ours.iter().zip(&captured) {
        assert!((a - b).abs() <= 1e-12 * b.abs(), "{a} vs {b}");
    }
    for (row, seq) in rows.iter().zip(&seqs) {
        let tokens = row["loss_tokens"].as_u64().unwrap() as usize;
        assert_eq!(tokens, seq.loss_tokens());
        let mean = row["mean_loss"].as_f64().unwrap();
        assert!((mean - row["loss"].as_f64().unwrap() / tokens as f64).abs() < 1e-12);
    }
    assert_eq!(rows[0]["domain"], "even");
    let summary = String::from_utf8(test.read("s.csv")).unwrap();
    let lines: Vec<&str> = summary.lines().collect();
    assert_eq!(lines[0], "domain,rows,loss_tokens,mean_loss");
    assert!(
        lines[1].starts_with("even,2,") && lines[3].starts_with("all,4,"),
        "{summary}"
    );
}

#[test]
fn generated_answers_are_checked_against_references() {
    // A reference the tiny model will not produce for the math rows; code rows have none.
    let mut test = Test::new();
    test.args(["eval", "--model"])
        .arg(fixture("gguf/tiny-lm-f32.gguf"))
        .arg("--data")
        .arg(fixture("math_code_queries.jsonl"))
        .args(["--out", "e.parquet", "--summary", "s.jsonl", "--generate"])
        .args(["--reference-col", "answer", "--max-new-tokens", "24"])
        .args(["--max-length", "1024"])
        .run()
        .success();
    let frame = curate::table::Input::open(test.path("e.parquet").to_str().unwrap(), None)
        .unwrap()
        .read()
        .unwrap();
    // Every input column is kept, the results follow.
    let names: Vec<String> = frame
        .get_column_names()
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(
        names,
        [
            "id",
            "domain",
            "prompt",
            "response",
            "answer",
            "loss",
            "loss_tokens",
            "mean_loss",
            "generation",
            "predicted_answer",
            "correct"
        ]
    );
    let correct = frame.column("correct").unwrap().bool().unwrap();
    let domain = frame.column("domain").unwrap().str().unwrap();
    for (verdict, domain) in correct.iter().zip(domain.iter()) {
        match domain.unwrap() {
            "code" => assert_eq!(verdict, None, "no reference, no verdict"),
            _ => assert!(verdict.is_some()),
        }
    }
    let generations = frame.column("generation").unwrap().str().unwrap();
    assert!(generations.iter().all(|g| g.is_some()));
    let summary = test.read_lines("s.jsonl");
    assert_eq!(summary.last().unwrap()["domain"], "all");
    assert_eq!(summary.last().unwrap()["checked"], 8);

    // Influence reads the verdicts: here no query is correct.
    test.args(["influence", "--model"])
        .arg(fixture("gguf/tiny-lm-f32.gguf"))
        .arg("--train")
        .arg(fixture("math_code_queries.jsonl"))
        .args([
            "--query",
            "e.parquet",
            "--out",
            "scores.jsonl",
            "--max-length",
            "1024",
        ])
        .run()
        .invalid("no query row is marked correct in 'correct'");
}

#[test]
fn influence_leaves_out_queries_without_a_correct_verdict() {
    let queries = std::fs::read_to_string(fixture("math_code_queries.jsonl")).unwrap();
    let marked: String = queries
        .lines()
        .take(3)
        .zip(["true", "null", "false"])
        .map(|(line, verdict)| {
            let mut row: serde_json::Value = serde_json::from_str(line).unwrap();
            row["correct"] = serde_json::from_str(verdict).unwrap();
            format!("{row}\n")
        })
        .collect();
    let mut test = Test::new().file("q.jsonl", marked);
    let out = test
        .args(["influence", "--model"])
        .arg(fixture("tiny-lm"))
        .args([
            "--train", "q.jsonl", "--query", "q.jsonl", "--out", "s.jsonl",
        ])
        .args(["--precond", "identity", "--max-length", "1024"])
        .run()
        .success();
    assert!(
        out.stderr.contains(
            "1 of 3 queries marked correct in 'correct' (1 without a verdict are left out)"
        ),
        "{}",
        out.stderr
    );
    let rows = test.read_lines("s.jsonl");
    assert!(rows.iter().all(|r| r["query_id"] == "qmath-0"));
}

/// `--generate` on rows with no reference column: answers are generated and `correct` is null,
/// as the docs' table says, with a note on stderr.
#[test]
fn generation_needs_no_reference() {
    let mut test = Test::new().file(
        "prompts.jsonl",
        "{\"prompt\": \"What is 2+2?\"}\n{\"prompt\": \"What is 3+3?\"}\n",
    );
    let out = test
        .args(["eval", "--model"])
        .arg(fixture("tiny-lm"))
        .args(["--data", "prompts.jsonl", "--out", "g.jsonl", "--generate"])
        .args(["--max-new-tokens", "4"])
        .run()
        .success();
    assert!(
        out.stderr.contains("no 'reference' column"),
        "{}",
        out.stderr
    );
    let rows = test.read_lines("g.jsonl");
    assert_eq!(rows.len(), 2);
    for row in &rows {
        assert!(row["generation"].is_string());
        assert!(row["correct"].is_null());
    }
}

#[test]
fn invalid_evaluations_fail_cleanly() {
    let data = fixture("math_code_queries.jsonl");
    let mut test = Test::new();
    let model = fixture("tiny-lm");
    let mut fails = |extra: &[&str], needle: &str| {
        test.args(["eval", "--model"])
            .arg(&model)
            .arg("--data")
            .arg(&data)
            .args(["--out", "e.jsonl", "--max-length", "1024"])
            .args(extra)
            .run()
            .invalid(needle);
        assert!(!test.path("e.jsonl").exists());
    };
    fails(
        &["--generate", "--reference-col", "missing"],
        "no reference answer column 'missing' (--reference-col)",
    );
    fails(&["--batch-size", "0"], "is not a positive number or `auto`");
    fails(
        &[
            "--generate",
            "--reference-col",
            "answer",
            "--max-new-tokens",
            "1000",
        ],
        "row 1: a prompt of",
    );
    fails(&["--response-col", "missing"], "column 'missing'");
}

/// One eval output: rows of (domain, loss, loss_tokens).
fn eval_rows(rows: &[(&str, f64, u32)]) -> String {
    rows.iter()
        .map(|(d, l, t)| {
            format!(
                "{}\n",
                serde_json::json!({"domain": d, "loss": l, "loss_tokens": t})
            )
        })
        .collect()
}

#[test]
fn compare_reports_arms_over_seeds_and_gates_on_the_gain() {
    let mut test = Test::new()
        .file(
            "i0.jsonl",
            eval_rows(&[("math", 10.0, 5), ("code", 6.0, 3)]),
        )
        .file(
            "i1.jsonl",
            eval_rows(&[("math", 12.0, 4), ("code", 9.0, 3)]),
        )
        .file(
            "r0.jsonl",
            eval_rows(&[("math", 16.0, 4), ("code", 9.0, 3)]),
        )
        .file(
            "r1.jsonl",
            eval_rows(&[("math", 15.0, 5), ("code", 12.0, 3)]),
        );
    let arms = ["influence=i0.jsonl,i1.jsonl", "random=r0.jsonl,r1.jsonl"];
    let out = test
        .args(["eval", "compare"])
        .args(arms)
        .args([
            "--out",
            "t.jsonl",
            "--candidate",
            "influence",
            "--control",
            "random",
        ])
        .run()
        .success();
    assert!(out.stderr.contains("gate passed"), "{}", out.stderr);
    let table = test.read_lines("t.jsonl");
    let row = |arm: &str, domain: &str| {
        table
            .iter()
            .find(|r| r["arm"] == arm && r["domain"] == domain)
            .unwrap()
            .clone()
    };
    // Per run token means: influence math 2.0 and 3.0, random math 4.0 and 3.0.
    assert_eq!(row("influence", "math")["mean_loss"], 2.5);
    assert_eq!(row("random", "math")["mean_loss"], 3.5);
    assert_eq!(row("influence", "math")["gain_over_control"], 1.0);
    assert_eq!(
        row("random", "math")["gain_over_control"],
        serde_json::Value::Null
    );
    // all: influence (16/8, 21/7) = (2, 3); random (25/7, 27/8).
    let all = row("influence", "all");
    assert_eq!(all["runs"], 2);
    assert!((all["mean_loss"].as_f64().unwrap() - 2.5).abs() < 1e-12);
    // The gate fails (exit 1, table still written) when the gain must be larger.
    let out = test
        .args(["eval", "compare"])
        .args(arms)
        .args([
            "--out",
            "t2.jsonl",
            "--candidate",
            "influence",
            "--control",
            "random",
        ])
        .args(["--min-gain", "5"])
        .run();
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("gate failed"));
    assert!(test.path("t2.jsonl").exists());
    test.args(["eval", "compare", "influence=i0.jsonl", "--out", "x.jsonl"])
        .args(["--candidate", "influence", "--control", "nope"])
        .run()
        .invalid("--candidate/--control 'nope' is not an arm");
    test.args(["eval", "compare", "influence", "--out", "x.jsonl"])
        .run()
        .invalid("expected NAME=FILE[,FILE...]");
}
