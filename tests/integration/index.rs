//! `curate influence index` / `query`: scores from a stored gradient index equal a full
//! `curate influence` run's; shards, the top K, stale or foreign indexes.

use serde_json::Value;

use crate::test::Test;

/// Twelve training rows and four queries from the bundled query set, and the bundled model.
fn setup() -> (Test, String) {
    let queries = crate::model::fixture("math_code_queries.jsonl");
    let model = crate::model::fixture("tiny-lm").display().to_string();
    let lines: Vec<String> = std::fs::read_to_string(&queries)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let test = Test::new()
        .file("train.jsonl", lines[..12].join("\n") + "\n")
        .file("query.jsonl", lines[12..16].join("\n") + "\n");
    (test, model)
}

fn rows(test: &mut Test, name: &str) -> Vec<Value> {
    test.args(["convert", name, "--out", "-"])
        .run()
        .success()
        .json_lines()
}

/// The largest score difference relative to each query's largest score, after checking both
/// tables list the same pairs in the same order with the same ranks.
fn difference(want: &[Value], got: &[Value]) -> f64 {
    assert_eq!(want.len(), got.len());
    let mut largest = std::collections::HashMap::new();
    for row in want {
        let entry = largest.entry(row["query_id"].to_string()).or_insert(0f64);
        *entry = entry.max(row["score"].as_f64().unwrap().abs());
    }
    let mut worst = 0f64;
    for (w, g) in want.iter().zip(got) {
        for key in ["query_id", "train_id", "rank", "domain", "difficulty"] {
            assert_eq!(w[key], g[key], "{key}: {w} vs {g}");
        }
        let (a, b) = (w["score"].as_f64().unwrap(), g["score"].as_f64().unwrap());
        worst = worst.max((a - b).abs() / largest[&w["query_id"].to_string()]);
    }
    worst
}

#[test]
fn index_queries_equal_full_runs_and_shards_combine() {
    let (mut test, model) = setup();
    let gradients = |test: &mut Test, extra: &[&str]| {
        test.args([
            "--model",
            &model,
            "--train",
            "train.jsonl",
            "--batch-size",
            "5",
        ])
        .args(extra);
    };
    // f64 end to end: the index agrees with the full run to 1e-10.
    test.arg("influence");
    gradients(&mut test, &["--dtype", "f64", "--save-factors", "factors"]);
    test.args(["--query", "query.jsonl", "--out", "full.parquet"]);
    test.run().success();
    test.args(["influence", "index"]);
    gradients(&mut test, &["--dtype", "f64", "--factors", "factors"]);
    test.args(["--store-dtype", "f64", "--out", "idx64"]);
    test.run().success();
    let queried = test
        .args(["influence", "query", "--index", "idx64", "--model", &model])
        .args([
            "--query",
            "query.jsonl",
            "--dtype",
            "f64",
            "--out",
            "q64.parquet",
        ])
        .run()
        .success();
    assert!(
        queried
            .stderr
            .contains("scored 12 indexed training examples against 4 queries"),
        "{}",
        queried.stderr
    );
    let full = rows(&mut test, "full.parquet");
    let error = difference(&full, &rows(&mut test, "q64.parquet"));
    assert!(error < 1e-10, "f64 index: {error:e}");

    // f32 (the default), fitting its own EK-FAC factors: 1e-5 of each query's largest score.
    test.arg("influence");
    gradients(&mut test, &[]);
    test.args(["--query", "query.jsonl", "--out", "full32.parquet"]);
    test.run().success();
    test.args(["influence", "index"]);
    gradients(&mut test, &["--out", "idx"]);
    test.run().success();
    let manifest: Value = serde_json::from_slice(&test.read("idx/manifest.json")).unwrap();
    assert_eq!(manifest["rows"], 12);
    assert_eq!(manifest["dtype"], "f32");
    let dim = manifest["dim"].as_u64().unwrap();
    assert_eq!(
        std::fs::metadata(test.path("idx/gradients.bin"))
            .unwrap()
            .len(),
        12 * dim * 4
    );
    let query = |test: &mut Test, index: &[&str], out: &str, extra: &[&str]| {
        test.args(["influence", "query", "--model", &model]);
        for dir in index {
            test.args(["--index", dir]);
        }
        test.args(["--query", "query.jsonl", "--out", out])
            .args(extra);
        test.run()
    };
    query(&mut test, &["idx"], "q.parquet", &[]).success();
    let full32 = rows(&mut test, "full32.parquet");
    let error = difference(&full32, &rows(&mut test, "q.parquet"));
    assert!(error < 1e-5, "f32 index: {error:e}");

    // --top K: each query's ranks 1 to K of the full table.
    query(&mut test, &["idx"], "top.parquet", &["--top", "3"]).success();
    let top = rows(&mut test, "top.parquet");
    let first3: Vec<&Value> = full32
        .iter()
        .filter(|r| r["rank"].as_u64().unwrap() <= 3)
        .collect();
    assert_eq!(top.len(), 4 * 3);
    for row in &top {
        let twin = first3
            .iter()
            .find(|r| r["query_id"] == row["query_id"] && r["rank"] == row["rank"])
            .unwrap();
        assert_eq!(twin["train_id"], row["train_id"]);
    }

    // Sharded: two index shards against the merged factors, given in any order, score as the
    // whole index does; a missing shard is refused.
    test.args(["influence", "index"]);
    gradients(&mut test, &["--factors", "factors", "--dtype", "f64"]);
    test.args(["--store-dtype", "f64", "--shard", "1/2", "--out", "idx-1"]);
    test.run().success();
    test.env("CURATE_SHARD", "0/2");
    test.args(["influence", "index"]);
    gradients(&mut test, &["--factors", "factors", "--dtype", "f64"]);
    test.args(["--store-dtype", "f64", "--shard", "auto", "--out", "idx-0"]);
    test.run().success();
    query(
        &mut test,
        &["idx-1", "idx-0"],
        "sharded.parquet",
        &["--dtype", "f64"],
    )
    .success();
    let error = difference(&full, &rows(&mut test, "sharded.parquet"));
    assert!(error < 1e-10, "sharded index: {error:e}");
    query(
        &mut test,
        &["idx-1"],
        "missing.parquet",
        &["--dtype", "f64"],
    )
    .invalid("shards missing: 0/2");
    assert!(!test.path("missing.parquet").exists());
    // A re-submitted finished shard is skipped; another build's is refused.
    test.args(["influence", "index"]);
    gradients(&mut test, &["--factors", "factors", "--dtype", "f64"]);
    let skipped = test
        .args([
            "--store-dtype",
            "f64",
            "--shard",
            "1/2",
            "--skip-done",
            "--out",
            "idx-1",
        ])
        .run()
        .success();
    assert!(
        skipped.stderr.contains("shard 1/2 is done: idx-1 holds it"),
        "{}",
        skipped.stderr
    );
    test.args(["influence", "index"]);
    gradients(&mut test, &["--factors", "factors", "--dtype", "f64"]);
    test.args(["--shard", "1/2", "--skip-done", "--out", "idx-1"]);
    test.run()
        .invalid("idx-1: holds shard 1/2 of another index, not shard 1/2 of this index");
}

#[test]
fn projected_and_half_precision_indexes_score_like_their_runs() {
    let (mut test, model) = setup();
    let common = [
        "--model",
        &model,
        "--train",
        "train.jsonl",
        "--project",
        "kron:8,8",
    ];
    test.arg("influence").args(common);
    test.args(["--query", "query.jsonl", "--out", "full.parquet"]);
    test.run().success();
    test.args(["influence", "index"]).args(common);
    test.args(["--out", "idx"]);
    test.run().success();
    let manifest: Value = serde_json::from_slice(&test.read("idx/manifest.json")).unwrap();
    // Six modules of 8 x 8 after projection.
    assert_eq!(manifest["dim"], 6 * 64);
    assert_eq!(manifest["projection"], "kron:8,8");
    test.args(["influence", "query", "--index", "idx", "--model", &model]);
    test.args(["--query", "query.jsonl", "--out", "q.parquet"]);
    test.run().success();
    let full = rows(&mut test, "full.parquet");
    let error = difference(&full, &rows(&mut test, "q.parquet"));
    assert!(error < 1e-5, "projected index: {error:e}");

    // f16 halves the bytes; scores move by about its precision.
    test.args(["influence", "index"]).args(common);
    test.args(["--store-dtype", "f16", "--out", "idx16"]);
    test.run().success();
    assert_eq!(
        std::fs::metadata(test.path("idx16/gradients.bin"))
            .unwrap()
            .len(),
        12 * 6 * 64 * 2
    );
    test.args(["influence", "query", "--index", "idx16", "--model", &model]);
    test.args(["--query", "query.jsonl", "--out", "q16.jsonl"]);
    test.run().success();
    let half = test.read_lines("q16.jsonl");
    let mut largest = std::collections::HashMap::new();
    for row in &full {
        let entry = largest.entry(row["query_id"].to_string()).or_insert(0f64);
        *entry = entry.max(row["score"].as_f64().unwrap().abs());
    }
    for (w, g) in full.iter().zip(&half) {
        assert_eq!(w["train_id"], g["train_id"]);
        let (a, b) = (w["score"].as_f64().unwrap(), g["score"].as_f64().unwrap());
        assert!((a - b).abs() <= 1e-2 * largest[&w["query_id"].to_string()]);
    }
}

#[test]
fn a_foreign_or_damaged_index_is_refused() {
    let (mut test, model) = setup();
    test.args([
        "influence",
        "index",
        "--model",
        &model,
        "--train",
        "train.jsonl",
    ]);
    test.args(["--precond", "identity", "--out", "idx"]);
    test.run().success();
    // Another model (the tied-embedding fixture) is not the one the index was built with.
    let other = crate::model::fixture("tiny-llama-tied")
        .display()
        .to_string();
    test.args(["influence", "query", "--index", "idx", "--model", &other]);
    test.args(["--query", "query.jsonl", "--out", "q.parquet"]);
    test.run().invalid("idx: was built with another model");
    assert!(!test.path("q.parquet").exists());
    // A cut-off matrix.
    let bytes = test.read("idx/gradients.bin");
    std::fs::write(test.path("idx/gradients.bin"), &bytes[..bytes.len() - 4]).unwrap();
    test.args(["influence", "query", "--index", "idx", "--model", &model]);
    test.args(["--query", "query.jsonl", "--out", "q.parquet"]);
    test.run().invalid("truncated or not this index's file");
    assert!(!test.path("q.parquet").exists());
    // Not an index at all.
    test.args(["influence", "query", "--index", ".", "--model", &model]);
    test.args(["--query", "query.jsonl", "--out", "q.parquet"]);
    test.run().invalid("not a gradient index");
    // An index over an existing directory needs --force, and --shard needs factors.
    test.args([
        "influence",
        "index",
        "--model",
        &model,
        "--train",
        "train.jsonl",
    ]);
    test.args(["--precond", "identity", "--out", "idx"]);
    test.run().invalid("already exists");
    test.args([
        "influence",
        "index",
        "--model",
        &model,
        "--train",
        "train.jsonl",
    ]);
    test.args(["--shard", "0/2", "--out", "idx2"]);
    test.run()
        .invalid("--shard indexes one part of the training rows");
    assert!(!test.path("idx2").exists());
}
