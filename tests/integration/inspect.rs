//! `curate inspect`: provenance, schema, counts and statistics.

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::test::Test;

const ROWS: &str = "{\"id\": 1, \"score\": 0.5, \"split\": \"train\", \"toks\": [1]}\n\
                    {\"id\": 2, \"score\": null, \"split\": \"test\", \"toks\": [2, 3]}\n\
                    {\"id\": 3, \"score\": -1.5, \"split\": \"train\", \"toks\": null}\n";

#[test]
fn json_shows_provenance_of_curate_outputs() {
    let mut test = Test::new().file("in.jsonl", ROWS);
    let sha = Sha256::digest(ROWS.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    for out in ["out.parquet", "out.arrow"] {
        test.args(["--seed", "7", "convert", "in.jsonl", "--out", out])
            .run()
            .success();
        let report = test
            .args(["inspect", out, "--json"])
            .run()
            .success()
            .json_lines();
        assert_eq!(report.len(), 1);
        let provenance = &report[0]["provenance"];
        assert_eq!(provenance["version"], env!("CARGO_PKG_VERSION"), "{out}");
        assert_eq!(provenance["seed"], 7, "{out}");
        assert_eq!(
            provenance["command"],
            json!(["curate", "--seed", "7", "convert", "in.jsonl", "--out", out])
        );
        assert_eq!(
            provenance["inputs"],
            json!([{"path": "in.jsonl", "sha256": sha, "bytes": ROWS.len()}])
        );
    }
}

#[test]
fn json_reports_rows_schema_and_statistics() {
    let mut test = Test::new().file("in.jsonl", ROWS);
    test.args(["convert", "in.jsonl", "--out", "t.parquet"])
        .run()
        .success();
    let reports = test
        .args(["inspect", "t.parquet", "in.jsonl", "--json"])
        .run()
        .success()
        .json_lines();
    assert_eq!(reports.len(), 2, "one object per file");
    for report in &reports {
        assert_eq!(report["rows"], 3);
        let columns = report["columns"].as_array().unwrap();
        assert_eq!(
            columns[0],
            json!({"name": "id", "dtype": "i64", "nulls": 0, "min": 1, "max": 3})
        );
        assert_eq!(columns[1]["nulls"], 1);
        assert_eq!(
            (&columns[1]["min"], &columns[1]["max"]),
            (&json!(-1.5), &json!(0.5))
        );
        assert_eq!(columns[2]["distinct"], 2);
        assert_eq!(
            columns[2]["top"],
            json!([{"value": "train", "count": 2}, {"value": "test", "count": 1}])
        );
        assert_eq!(
            columns[3],
            json!({"name": "toks", "dtype": "list[i64]", "nulls": 1})
        );
    }
    assert_eq!(reports[0]["format"], "parquet");
    assert_eq!(reports[1]["format"], "jsonl");
    assert_eq!(reports[1]["provenance"], serde_json::Value::Null);
}

#[test]
fn text_report_for_people() {
    let mut test = Test::new().file("in.jsonl", ROWS);
    test.args(["convert", "in.jsonl", "--out", "t.parquet"])
        .run()
        .success();
    let out = test.args(["inspect", "t.parquet"]).run().success();
    let text = out.stdout;
    assert!(text.starts_with("t.parquet\n"), "{text}");
    assert!(text.contains("  rows        3\n"), "{text}");
    assert!(
        text.contains("    command   curate convert in.jsonl --out t.parquet\n"),
        "{text}"
    );
    assert!(text.contains("min -1.5  max 0.5"), "{text}");
    assert!(
        text.contains("2 distinct; top \"train\" ×2, \"test\" ×1"),
        "{text}"
    );
    assert!(out.stderr.is_empty(), "{}", out.stderr);
}

#[test]
fn stdin_and_format_override() {
    let out = Test::new()
        .file("data.txt", "a,b\n1,x\n2,y\n")
        .args(["inspect", "data.txt", "--input-format", "csv", "--json"])
        .run()
        .success();
    assert_eq!(out.json_lines()[0]["rows"], 2);
    let out = Test::new()
        .args(["inspect", "-", "--json"])
        .stdin(ROWS)
        .run()
        .success();
    assert_eq!(out.json_lines()[0]["path"], "<stdin>");
    assert_eq!(out.json_lines()[0]["rows"], 3);
}

#[test]
fn model_directories_show_architecture_size_and_provenance() {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures");
    let mut test = Test::new().file("empty/readme.txt", "not a model");
    let report = test
        .args([
            "inspect",
            "--json",
            &format!("{fixtures}/tiny-lm"),
            &format!("{fixtures}/tiny-llama-tied"),
        ])
        .run()
        .success()
        .json_lines();
    assert_eq!(report.len(), 2);
    let tiny = &report[0];
    assert_eq!(tiny["format"], "model");
    assert_eq!(tiny["model_type"], "llama");
    assert_eq!(tiny["layers"], 2);
    assert_eq!(tiny["tied_embeddings"], true);
    assert_eq!(tiny["tokenizer_tokens"], tiny["vocab_size"]);
    // Tied embeddings are stored once: 2048 x 64 + 2 x 36,992 (layers) + 64 (final norm).
    assert_eq!(tiny["parameters"], 205_120);
    let command = tiny["provenance"]["command"].as_array().unwrap();
    assert_eq!(command[1], "train");
    assert_eq!(report[1]["provenance"], serde_json::Value::Null);
    assert_eq!(report[1]["rope_theta"], 500000.0);

    let text = test
        .args(["inspect", &format!("{fixtures}/tiny-lm")])
        .run()
        .success()
        .stdout;
    assert!(text.contains("format      model (llama)"), "{text}");
    assert!(
        text.contains("205120 in 20 tensors (F32 ×20), 1 file"),
        "{text}"
    );

    test.args(["inspect", "empty"])
        .run()
        .invalid("config.json: cannot read");
}
