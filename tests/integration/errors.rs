//! Every class of invalid input: a one-line message naming file, column and row, exit 2, and
//! no output file (nor a stray temporary one) left behind.

use crate::test::Test;

const ROWS: &str = "{\"id\": 1, \"score\": 0.5, \"name\": \"a\"}\n\
                    {\"id\": 2, \"score\": 1.5, \"name\": \"b\"}\n\
                    {\"id\": 1, \"score\": 2.5, \"name\": \"c\"}\n";

/// Run `convert INPUT --out out.parquet EXTRA...` and check the failure left nothing behind.
#[track_caller]
fn convert_fails(mut test: Test, input: &str, extra: &[&str], needle: &str) {
    let before = test.entries();
    test.args(["convert", input, "--out", "out.parquet"])
        .args(extra)
        .run()
        .invalid(needle);
    assert_eq!(test.entries(), before, "a failed run changed the directory");
}

#[test]
fn missing_file() {
    convert_fails(
        Test::new(),
        "nope.jsonl",
        &[],
        "curate: nope.jsonl: file not found",
    );
}

#[test]
fn unknown_input_extension() {
    let test = Test::new().file("data.xlsx", "x");
    convert_fails(
        test,
        "data.xlsx",
        &[],
        "data.xlsx: unknown extension '.xlsx'",
    );
    let test = Test::new().file("data.json", "[]");
    convert_fails(test, "data.json", &[], "JSON Lines files end in .jsonl");
}

#[test]
fn unknown_output_extension() {
    let mut test = Test::new().file("in.jsonl", ROWS);
    test.args(["convert", "in.jsonl", "--out", "out.txt"])
        .run()
        .invalid("out.txt: unknown extension '.txt'");
    assert_eq!(test.entries(), ["in.jsonl"]);
}

#[test]
fn corrupt_parquet() {
    let test = Test::new().file("bad.parquet", b"PAR1 this is not really parquet at all");
    convert_fails(
        test,
        "bad.parquet",
        &[],
        "bad.parquet: cannot read as parquet",
    );
}

#[test]
fn truncated_parquet() {
    let mut test = Test::new().file("in.jsonl", ROWS);
    test.args(["convert", "in.jsonl", "--out", "whole.parquet"])
        .run()
        .success();
    let bytes = test.read("whole.parquet");
    let test = test.file("cut.parquet", &bytes[..bytes.len() / 2]);
    convert_fails(
        test,
        "cut.parquet",
        &[],
        "cut.parquet: cannot read as parquet",
    );
}

#[test]
fn invalid_json_line_names_the_row() {
    let test = Test::new().file("in.jsonl", "{\"a\": 1}\n{\"a\": 2}\n{\"a\": oops}\n");
    convert_fails(test, "in.jsonl", &[], "in.jsonl, row 3: invalid JSON");
}

#[test]
fn malformed_csv_names_the_row() {
    let test = Test::new().file("in.csv", "a,b\n1,2\n3,4,5\n6,7\n");
    convert_fails(
        test,
        "in.csv",
        &[],
        "in.csv, row 2: 3 fields, but the header has 2",
    );
    let test = Test::new().file("in.csv", "a,b\n1,2\n3,\"open\n");
    convert_fails(
        test,
        "in.csv",
        &[],
        "in.csv, row 2: a quoted field is never closed",
    );
}

#[test]
fn missing_column() {
    let test = Test::new().file("in.jsonl", ROWS);
    convert_fails(
        test,
        "in.jsonl",
        &["--columns", "id,label"],
        "in.jsonl: column 'label': not found (columns: id, score, name)",
    );
    let test = Test::new().file("in.jsonl", ROWS);
    convert_fails(
        test,
        "in.jsonl",
        &["--id-col", "uid"],
        "in.jsonl: column 'uid': not found (columns: id, score, name); name another with --id-col",
    );
}

#[test]
fn mistyped_column() {
    let test = Test::new().file("in.jsonl", ROWS);
    convert_fails(
        test,
        "in.jsonl",
        &["--id-col", "score"],
        "in.jsonl: column 'score': expected integer or string ids, found f64",
    );
}

#[test]
fn duplicate_ids() {
    let test = Test::new().file("in.jsonl", ROWS);
    convert_fails(
        test,
        "in.jsonl",
        &["--id-col", "id"],
        "in.jsonl: column 'id', row 3: duplicate id 1 (first seen at row 1)",
    );
    let csv = "id,text\nx,1\ny,2\nz,3\ny,4\n";
    let test = Test::new().file("in.csv", csv);
    convert_fails(
        test,
        "in.csv",
        &["--id-col", "id"],
        "in.csv: column 'id', row 4: duplicate id \"y\" (first seen at row 2)",
    );
}

#[test]
fn empty_inputs() {
    let test = Test::new().file("empty.jsonl", "");
    convert_fails(test, "empty.jsonl", &[], "empty.jsonl: file is empty");
    let test = Test::new().file("header.csv", "id,name\n");
    convert_fails(test, "header.csv", &[], "header.csv: no rows");
    let mut test = Test::new();
    test.args(["convert", "-", "--out", "out.parquet"])
        .stdin("\n")
        .run()
        .invalid("<stdin>: input is empty");
    assert!(test.entries().is_empty());
}

#[test]
fn existing_output_is_untouched_without_force() {
    let mut test = Test::new()
        .file("in.jsonl", ROWS)
        .file("out.parquet", "precious");
    test.args(["convert", "in.jsonl", "--out", "out.parquet"])
        .run()
        .invalid("out.parquet: already exists; pass --force to replace it");
    assert_eq!(test.read("out.parquet"), b"precious");
    assert_eq!(test.entries(), ["in.jsonl", "out.parquet"]);
}

/// CSV holds no lists or structs: they are written as JSON text, which pandas reads back with
/// `json.loads`.
#[test]
fn nested_columns_go_to_csv_as_json_text() {
    let mut test = Test::new().file(
        "in.jsonl",
        "{\"id\": 1, \"toks\": [1, 2], \"meta\": {\"src\": \"a, b\"}}\n{\"id\": 2, \"toks\": null, \"meta\": {\"src\": null}}\n",
    );
    test.args(["convert", "in.jsonl", "--out", "out.csv"])
        .run()
        .success();
    let text = String::from_utf8(test.read("out.csv")).unwrap();
    assert_eq!(
        text,
        "id,toks,meta\n1,\"[1,2]\",\"{\"\"src\"\":\"\"a, b\"\"}\"\n2,,\"{\"\"src\"\":null}\"\n"
    );
}

#[test]
fn missing_output_directory() {
    let mut test = Test::new().file("in.jsonl", ROWS);
    test.args(["convert", "in.jsonl", "--out", "no/such/dir/out.parquet"])
        .run()
        .invalid("directory 'no/such/dir' does not exist");
    assert_eq!(test.entries(), ["in.jsonl"]);
}

#[test]
fn inspect_reports_bad_files_too() {
    Test::new()
        .file("bad.parquet", "not parquet")
        .args(["inspect", "bad.parquet"])
        .run()
        .invalid("bad.parquet: cannot read as parquet");
    Test::new()
        .args(["inspect", "missing.csv"])
        .run()
        .invalid("missing.csv: file not found");
}
