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
