//! Round trips between every pair of formats, and through stdin/stdout, keep every value.

use serde_json::Value;

use crate::test::Test;

const FORMATS: [&str; 4] = ["parquet", "jsonl", "csv", "arrow"];

/// Scalars with the awkward cases: separators, quotes and newlines in text, unicode, empty
/// text, nulls in every column, integers beyond 2^53, extreme and subnormal floats.
const SCALARS: &str = r#"{"id": 1, "text": "plain", "score": 0.1, "flag": true}
{"id": -9007199254740993, "text": "comma, \"quote\" and\nnewline", "score": -1.2345678901234567e-300, "flag": false}
{"id": 3, "text": "ünïcødé → 数学 \t tab", "score": 1.7976931348623157e308, "flag": null}
{"id": 4, "text": null, "score": null, "flag": true}
{"id": 5, "text": "", "score": 5e-324, "flag": false}
{"id": 9223372036854775807, "text": "  padded  ", "score": 2.0, "flag": true}
"#;

/// Nested columns, which CSV cannot hold: empty and null lists, lists of text.
const NESTED: &str = r#"{"id": "a", "tokens": [1, 2, 3], "tags": ["x", "y, z"], "weight": 0.5}
{"id": "b", "tokens": [], "tags": null, "weight": 1.0}
{"id": "c", "tokens": [-5, 9223372036854775807], "tags": ["\"q\""], "weight": null}
"#;

fn parse_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Convert `source` into `via` then `to`, read the result back as JSON Lines on stdout and
/// compare it with the original rows.
fn round_trip(data: &str, formats: &[&str]) {
    let expected = parse_lines(data);
    let mut test = Test::new().file("base.jsonl", data);
    for via in formats {
        let first = format!("first.{via}");
        test.args(["convert", "base.jsonl", "--out", first.as_str(), "--force"])
            .run()
            .success();
        for to in formats {
            let second = format!("second_{via}.{to}");
            test.args([
                "convert",
                first.as_str(),
                "--out",
                second.as_str(),
                "--force",
            ])
            .run()
            .success();
            let back = test
                .args(["convert", second.as_str(), "--out", "-"])
                .run()
                .success();
            assert_eq!(back.json_lines(), expected, "{via} -> {to} changed values");
        }
    }
}

#[test]
fn scalars_survive_every_format_pair() {
    round_trip(SCALARS, &FORMATS);
}

#[test]
fn nested_values_survive_every_format_that_holds_them() {
    round_trip(NESTED, &["parquet", "jsonl", "arrow"]);
}

#[test]
fn stdin_to_stdout_in_every_format() {
    let expected = parse_lines(SCALARS);
    let mut test = Test::new().file("base.jsonl", SCALARS);
    for format in ["parquet", "jsonl", "csv", "ipc"] {
        let file = format!("t.{}", if format == "ipc" { "arrow" } else { format });
        test.args(["convert", "base.jsonl", "--out", file.as_str()])
            .run()
            .success();
        let bytes = test.read(&file);
        let piped = test
            .args(["convert", "-", "--out", "-"])
            .args(["--input-format", format, "--output-format", format])
            .stdin(bytes)
            .run()
            .success();
        let echoed = format!("echo.{}", if format == "ipc" { "arrow" } else { format });
        std::fs::write(test.path(&echoed), &piped.stdout_bytes).unwrap();
        let back = test
            .args(["convert", echoed.as_str(), "--out", "-"])
            .run()
            .success();
        assert_eq!(back.json_lines(), expected, "{format} through stdin/stdout");
    }
}

/// `cat x.parquet | curate inspect -`: Parquet and Arrow files on stdin are known by their magic
/// bytes, with no --input-format.
#[test]
fn stdin_parquet_and_arrow_are_recognised() {
    let expected = parse_lines(SCALARS);
    let mut test = Test::new().file("base.jsonl", SCALARS);
    for file in ["t.parquet", "t.arrow"] {
        test.args(["convert", "base.jsonl", "--out", file])
            .run()
            .success();
        let bytes = test.read(file);
        let out = test
            .args(["convert", "-", "--out", "-"])
            .stdin(bytes.clone())
            .run()
            .success();
        assert_eq!(out.json_lines(), expected, "{file} on stdin");
        let shown = test.args(["inspect", "-"]).stdin(bytes).run().success();
        assert!(shown.stdout.contains("rows"), "{}", shown.stdout);
    }
}

#[test]
fn stdin_defaults_to_json_lines() {
    let out = Test::new()
        .args(["convert", "-", "--out", "-"])
        .stdin(NESTED)
        .run()
        .success();
    assert_eq!(out.json_lines(), parse_lines(NESTED));
}

#[test]
fn column_order_and_selection() {
    let mut test = Test::new().file("base.jsonl", SCALARS);
    let out = test
        .args([
            "convert",
            "base.jsonl",
            "--out",
            "x.parquet",
            "--columns",
            "score,id",
        ])
        .run()
        .success();
    assert!(
        out.stderr.contains("wrote 6 rows to x.parquet"),
        "{}",
        out.stderr
    );
    let inspected = test
        .args(["inspect", "x.parquet", "--json", "--no-stats"])
        .run()
        .success();
    let names: Vec<String> = inspected.json_lines()[0]["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["score", "id"]);
}

#[test]
fn limit_keeps_first_rows() {
    let out = Test::new()
        .file("base.jsonl", SCALARS)
        .args(["convert", "base.jsonl", "--out", "-", "--limit", "2"])
        .run()
        .success();
    assert_eq!(out.json_lines(), parse_lines(SCALARS)[..2].to_vec());
}

#[test]
fn unique_ids_pass_the_id_check() {
    Test::new()
        .file("base.jsonl", NESTED)
        .args([
            "convert",
            "base.jsonl",
            "--out",
            "ok.parquet",
            "--id-col",
            "id",
        ])
        .run()
        .success();
}

#[test]
fn force_replaces_an_existing_output() {
    let mut test = Test::new()
        .file("base.jsonl", NESTED)
        .file("out.jsonl", "old contents\n");
    test.args(["convert", "base.jsonl", "--out", "out.jsonl", "--force"])
        .run()
        .success();
    assert_eq!(
        parse_lines(&String::from_utf8(test.read("out.jsonl")).unwrap()),
        parse_lines(NESTED)
    );
    assert_eq!(test.entries(), ["base.jsonl", "out.jsonl"]);
}

#[test]
fn shards_concatenate_to_the_whole() {
    let rows: String = (0..10).map(|i| format!("{{\"id\": {i}}}\n")).collect();
    let mut test = Test::new().file("in.jsonl", rows.as_str());
    let mut joined = Vec::new();
    for index in 0..4 {
        let shard = format!("{index}/4");
        let out = test
            .args([
                "convert",
                "in.jsonl",
                "--out",
                "-",
                "--shard",
                shard.as_str(),
            ])
            .run()
            .success();
        let part = out.json_lines();
        assert!(
            part.len() == 2 || part.len() == 3,
            "{shard}: {}",
            part.len()
        );
        joined.extend(part);
    }
    assert_eq!(joined, parse_lines(&rows));
    // More shards than rows: the extra shards are empty, not errors.
    let out = test
        .args(["convert", "in.jsonl", "--out", "-", "--shard", "0/12"])
        .run()
        .success();
    assert!(out.json_lines().is_empty());
}

#[test]
fn shard_auto_reads_slurm_array_variables() {
    let rows: String = (0..6).map(|i| format!("{{\"id\": {i}}}\n")).collect();
    let test = Test::new().file("in.jsonl", rows);
    let slurm = |spec: &str, id: &str, min: &str, max: &str| {
        crate::test::curate_command(&test.path(""))
            .args(["convert", "in.jsonl", "--out", "-", "--shard", spec])
            .env("SLURM_ARRAY_TASK_ID", id)
            .env("SLURM_ARRAY_TASK_MIN", min)
            .env("SLURM_ARRAY_TASK_MAX", max)
            .env("SLURM_ARRAY_TASK_COUNT", "1")
            .output()
            .unwrap()
    };
    // `sbatch --array=0-2`: task 1 is shard 1/3, and says so on stderr.
    let output = crate::test::curate_command(&test.path(""))
        .args(["convert", "in.jsonl", "--out", "-", "--shard", "auto"])
        .env("SLURM_ARRAY_TASK_ID", "1")
        .env("SLURM_ARRAY_TASK_MIN", "0")
        .env("SLURM_ARRAY_TASK_MAX", "2")
        .env("SLURM_ARRAY_TASK_COUNT", "3")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        "{\"id\":2}\n{\"id\":3}\n"
    );
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("shard 1/3 (--shard auto: SLURM_ARRAY_TASK_ID=1 of an array 0-2)"),
        "{stderr}"
    );
    // Re-submitted alone (`sbatch --array=2`), task 2 cannot tell the count: refused, not
    // the whole table; with the count given it is shard 2/3.
    let output = slurm("auto", "2", "2", "2");
    assert_eq!(output.status.code(), Some(2));
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("starts at task 2, not 0"), "{stderr}");
    let output = slurm("auto/3", "2", "2", "2");
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        "{\"id\":4}\n{\"id\":5}\n"
    );
    let mut test = test;
    test.args(["convert", "in.jsonl", "--out", "x.jsonl", "--shard", "3/3"])
        .run()
        .invalid("--shard 3/3: shards are numbered from 0 to 2");
}

/// A JSON Lines column with numbers and text is written as text with a warning naming the
/// first row of each type; --strict-types refuses it and writes nothing.
#[test]
fn mixed_json_types_are_named_or_refused() {
    let rows = "{\"a\": 1, \"b\": 1.5}\n{\"a\": \"two\", \"b\": 2}\n{\"a\": 3, \"b\": null}\n";
    let mut test = Test::new().file("mixed.jsonl", rows);
    let out = test
        .args(["convert", "mixed.jsonl", "--out", "m.jsonl"])
        .run()
        .success();
    assert!(
        out.stderr.contains(
            "warning: mixed.jsonl: column 'a' mixes JSON types: number (row 1), string (row 2)"
        ),
        "{}",
        out.stderr
    );
    // A column of ints and floats is one type (numbers): no word about it.
    assert!(!out.stderr.contains("column 'b'"), "{}", out.stderr);
    assert_eq!(test.read_lines("m.jsonl")[1]["a"], "two");
    test.args([
        "convert",
        "mixed.jsonl",
        "--out",
        "s.jsonl",
        "--strict-types",
    ])
    .run()
    .invalid("mixed.jsonl: column 'a', row 2: values of several JSON types");
    assert!(!test.path("s.jsonl").exists());
}
