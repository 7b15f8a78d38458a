//! Every command's Parquet and Arrow outputs load in pandas (through pyarrow), list-of-string
//! columns included. Runs where `CURATE_PYTHON` (or `python3`) imports pandas and pyarrow;
//! skipped with a note elsewhere, and a failure where `CURATE_REQUIRE_PANDAS` is set (CI
//! installs both).

use std::path::Path;
use std::process::Command;

use crate::model::fixture;
use crate::test::Test;

const READ_ALL: &str = r#"
import sys, json
import pandas as pd, pyarrow as pa, pyarrow.parquet as pq, pyarrow.ipc as ipc
report = {}
for path in sys.argv[1:]:
    if path.endswith(".parquet"):
        table = pq.read_table(path)
        frame = pd.read_parquet(path)
    else:
        table = ipc.open_file(path).read_all()
        frame = table.to_pandas()
    assert len(frame) == table.num_rows, path
    # Every cell converts to a Python value, nested lists too.
    frame.to_dict("records")
    report[path.rsplit("/", 1)[-1]] = {
        "rows": table.num_rows,
        "types": {f.name: str(f.type) for f in table.schema},
    }
print(json.dumps(report))
"#;

#[test]
fn every_parquet_output_loads_in_pandas() {
    let Some(python) =
        crate::test::python_importing("pandas, pyarrow", Some("CURATE_REQUIRE_PANDAS"))
    else {
        return;
    };
    let mix = fixture("math_code_mix.parquet");
    let queries = fixture("math_code_queries.jsonl");
    let mut test = Test::new().file(
        "tags.jsonl",
        "{\"id\": 1, \"tags\": [\"a\", \"b\"], \"text\": \"x\"}\n\
         {\"id\": 2, \"tags\": [], \"text\": \"y\"}\n",
    );
    let mut outputs: Vec<&str> = Vec::new();
    test.args(["convert", "tags.jsonl", "--out", "convert.parquet"])
        .run()
        .success();
    test.args(["convert", "tags.jsonl", "--out", "convert.arrow"])
        .run()
        .success();
    outputs.extend(["convert.parquet", "convert.arrow"]);

    test.args(["influence", "--model"])
        .arg(fixture("tiny-lm"))
        .arg("--train")
        .arg(&queries)
        .arg("--query")
        .arg(&queries)
        .args([
            "--max-length",
            "256",
            "--precond",
            "identity",
            "--granularity",
            "token",
            "--out",
            "scores.parquet",
            "--summary",
            "summary.parquet",
        ])
        .run()
        .success();
    outputs.extend([
        "scores.parquet",
        "scores.tokens.parquet",
        "scores.segments.parquet",
        "summary.parquet",
    ]);
    // A gradient index's rows, and query scores (all pairs, and the top K) against it.
    test.args(["influence", "index", "--model"])
        .arg(fixture("tiny-lm"))
        .arg("--train")
        .arg(&queries)
        .args([
            "--max-length",
            "256",
            "--precond",
            "identity",
            "--out",
            "idx",
        ])
        .run()
        .success();
    for (out, extra) in [("query.parquet", None), ("top.arrow", Some("2"))] {
        test.args(["influence", "query", "--index", "idx", "--model"])
            .arg(fixture("tiny-lm"))
            .arg("--query")
            .arg(&queries)
            .args(["--max-length", "256", "--out", out]);
        if let Some(k) = extra {
            test.args(["--top", k]);
        }
        test.run().success();
    }
    outputs.extend(["idx/rows.parquet", "query.parquet", "top.arrow"]);

    test.arg("reweight")
        .arg(&mix)
        .args(["--out", "reweight.parquet", "--report", "audit.parquet"])
        .run()
        .success();
    test.arg("reweight")
        .arg(&mix)
        .args(["--out", "resampled.parquet", "--materialize"])
        .run()
        .success();
    outputs.extend(["reweight.parquet", "audit.parquet", "resampled.parquet"]);

    // String classes give list<string> columns (missing labels, suggestions).
    let test = test
        .file(
            "labels.jsonl",
            "{\"id\": \"a\", \"label\": \"cat\"}\n{\"id\": \"b\", \"label\": \"dog\"}\n\
             {\"id\": \"c\", \"label\": \"dog\"}\n{\"id\": \"d\", \"label\": \"cat\"}\n",
        )
        .file(
            "probs.jsonl",
            "{\"id\": \"a\", \"probs\": [0.9, 0.1]}\n{\"id\": \"b\", \"probs\": [0.45, 0.55]}\n\
             {\"id\": \"c\", \"probs\": [0.95, 0.05]}\n{\"id\": \"d\", \"probs\": [0.8, 0.2]}\n",
        );
    let mut test = test;
    test.args([
        "reveal",
        "--labels",
        "labels.jsonl",
        "--source",
        "m=probs.jsonl",
        "--classes",
        "cat,dog",
        "--out",
        "reveal.parquet",
    ])
    .run()
    .success();
    let multilabel = fixture("reveal/multilabel.parquet").display().to_string();
    test.args(["reveal", "--labels", &multilabel, "--source"])
        .arg(format!("ovr={multilabel}:mlprobs"))
        .args(["--out", "multilabel.parquet"])
        .run()
        .success();
    outputs.extend(["reveal.parquet", "multilabel.parquet"]);

    let traces = fixture("rephrase/r1_traces.jsonl");
    for format in ["completion", "messages", "sharegpt", "turns"] {
        let out = format!("rephrase-{format}.parquet");
        test.arg("rephrase")
            .arg(&traces)
            .args(["--format", format, "--out", &out])
            .args(["--rejects", &format!("rejects-{format}.parquet")])
            .run()
            .success();
    }
    let rephrased: Vec<String> = ["completion", "messages", "sharegpt", "turns"]
        .iter()
        .flat_map(|f| {
            [
                format!("rephrase-{f}.parquet"),
                format!("rejects-{f}.parquet"),
            ]
        })
        .collect();

    let paths: Vec<String> = outputs
        .iter()
        .map(|s| s.to_string())
        .chain(rephrased)
        .map(|name| test.path(&name).display().to_string())
        .collect();
    for path in &paths {
        assert!(Path::new(path).is_file(), "{path} was not written");
    }
    let output = Command::new(&python)
        .arg("-c")
        .arg(READ_ALL)
        .args(&paths)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "pandas could not read an output:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    // The nested string columns pandas used to fail on are plain large strings now.
    let types = &report["rephrase-messages.parquet"]["types"];
    assert!(
        types["messages"].as_str().unwrap().contains("large_string"),
        "{types}"
    );
    assert!(
        !report.to_string().contains("string_view"),
        "string views left: {report}"
    );
}
