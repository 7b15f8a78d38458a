//! `curate reveal` through the binary: cleanlab's flags end to end, the vote's posterior, the
//! multi-label path, the gate, determinism, and every class of invalid input.

use serde_json::Value;

use crate::model::{fixture, reference};
use crate::reveal_parity::{bool_column, load};
use crate::test::Test;

fn digits() -> String {
    fixture("reveal/digits_sources.parquet")
        .display()
        .to_string()
}

fn bools(rows: &[Value], field: &str) -> Vec<bool> {
    rows.iter().map(|r| r[field].as_bool().unwrap()).collect()
}

fn four_sources(test: &mut Test) -> &mut Test {
    let f = digits();
    test.args([
        "--labels".to_string(),
        f.clone(),
        "--source".to_string(),
        format!("logreg={f}:probs:p_logreg"),
        "--source".to_string(),
        format!("knn={f}:probs:p_knn"),
        "--source".to_string(),
        format!("rf={f}:probs:p_rf"),
        "--source".to_string(),
        format!("svc={f}:probs:p_svc"),
    ])
}

/// With `--detectors cl` alone, `is_label_issue` is cleanlab's `find_label_issues` for every
/// `--filter-by`, read from the reference file's own wide `p0..p9` columns.
#[test]
#[cfg_attr(
    no_shared_reference,
    ignore = "needs ../shared/reference beside the checkout"
)]
fn cl_alone_flags_exactly_cleanlabs_rows() {
    let path = reference("cleanlab/labelerrors_cifar10.parquet");
    let path = path.display().to_string();
    let r = load("labelerrors_cifar10");
    let mut test = Test::new();
    for mode in [
        "prune_by_noise_rate",
        "prune_by_class",
        "both",
        "confident_learning",
        "predicted_neq_given",
        "low_self_confidence",
        "low_normalized_margin",
    ] {
        let out = format!("{mode}.jsonl");
        test.args(["reveal", "--labels", &path, "--source"])
            .arg(format!("resnet={path}"))
            .args(["--detectors", "cl", "--filter-by", mode, "--out", &out])
            .args(["--quality-method", "normalized_margin", "--no-soft-label"])
            .run()
            .success();
        let rows = test.read_lines(&out);
        assert_eq!(
            bools(&rows, "is_label_issue"),
            bool_column(&r.frame, &format!("cl_{mode}")),
            "{mode}"
        );
        assert_eq!(bools(&rows, "cl_issue"), bools(&rows, "is_label_issue"));
        let expected = r
            .frame
            .column("q_normalized_margin")
            .unwrap()
            .f64()
            .unwrap()
            .clone();
        for (row, want) in rows.iter().zip(expected.into_no_null_iter()) {
            assert!((row["quality"].as_f64().unwrap() - want).abs() < 1e-12);
        }
    }
}

/// `--detectors vote` alone: the soft label is CROWDLAB's posterior (cleanlab's
/// `get_label_quality_multiannotator`), and the vote fires where its consensus differs from the
/// given label.
#[test]
fn vote_soft_label_is_cleanlabs_crowdlab_posterior() {
    let mut test = Test::new();
    test.arg("reveal");
    four_sources(&mut test)
        .args([
            "--detectors",
            "vote",
            "--out",
            "vote.jsonl",
            "--summary",
            "s.json",
        ])
        .run()
        .success();
    let rows = test.read_lines("vote.jsonl");
    let expected = crate::reveal_parity::crowdlab_expected();
    for (i, row) in rows.iter().enumerate() {
        let soft: Vec<f64> = serde_json::from_value(row["soft_label"].clone()).unwrap();
        for (a, b) in soft.iter().zip(&expected.posterior[i]) {
            assert!((a - b).abs() < 1e-9, "row {i}: {a} vs {b}");
        }
        let label = row["label"].as_u64().unwrap() as usize;
        assert_eq!(
            row["vote_issue"].as_bool().unwrap(),
            expected.label[i] != label
        );
    }
    let summary: Value = serde_json::from_slice(&test.read("s.json")).unwrap();
    let weight = summary["vote"]["model_weight"][0].as_f64().unwrap();
    assert!((weight - expected.model_weight).abs() < 1e-9);
    assert_eq!(summary["vote"]["annotators"][0], "logreg");
}

/// All four detectors on digits (four models, pixel features, a logistic probe): the consensus
/// is written with every column, fired detectors are named, and a rerun with the same seed is
/// byte-identical.
#[test]
fn consensus_of_four_detectors_is_complete_and_reproducible() {
    let mut test = Test::new();
    for out in ["a.jsonl", "b.jsonl"] {
        test.arg("reveal");
        four_sources(&mut test)
            .args([
                "--embeddings",
                &digits(),
                "--probe",
                "logreg",
                "--probe-epochs",
                "10",
            ])
            .args(["--out", out, "--seed", "3"])
            .run()
            .success();
    }
    assert_eq!(test.read("a.jsonl"), test.read("b.jsonl"));
    let rows = test.read_lines("a.jsonl");
    assert_eq!(rows.len(), 1797);
    let flipped = crate::reveal_parity::flipped();
    let mut hits = 0;
    let mut flagged = 0;
    for (row, &flip) in rows.iter().zip(&flipped) {
        for key in [
            "id",
            "label",
            "issue_type",
            "suggested_label",
            "missing_labels",
            "p_given",
            "quality",
            "soft_label",
            "detectors",
        ] {
            assert!(row.get(key).is_some(), "missing {key}");
        }
        let fired = row["detectors"].as_str().unwrap();
        let count = if fired.is_empty() {
            0
        } else {
            fired.split(',').count()
        };
        let issue = row["is_label_issue"].as_bool().unwrap();
        // Four detectors: a majority is three.
        assert_eq!(issue, count >= 3);
        for d in ["cl", "knn", "vote", "probe"] {
            assert_eq!(
                fired.split(',').any(|x| x == d),
                row[format!("{d}_issue")].as_bool().unwrap()
            );
        }
        match row["issue_type"].as_str().unwrap() {
            "noisy" => assert!(issue && row["suggested_label"].is_u64()),
            "ambiguous" => assert!(issue && row["suggested_label"].is_null()),
            "missing" => assert!(!issue && !row["missing_labels"].as_array().unwrap().is_empty()),
            "none" => assert!(!issue),
            other => panic!("issue type {other}"),
        }
        flagged += usize::from(issue);
        hits += usize::from(issue && flip);
    }
    // The injected flips are what the consensus finds (measured: precision 0.92, recall 0.94).
    assert!(
        hits as f64 / flagged as f64 > 0.85,
        "precision {hits}/{flagged}"
    );
    assert!(hits as f64 / 167.0 > 0.85, "recall {hits}/167");
}

/// Multi-label: lists of labels and an mlprobs source; `--detectors cl` is cleanlab's
/// multi-label `find_label_issues`, and missing labels are the absent classes the consensus
/// finds present.
#[test]
fn multi_label_flags_equal_cleanlab_and_name_missing_labels() {
    let path = fixture("reveal/multilabel.parquet").display().to_string();
    let frame = crate::reveal_parity::read_fixture("multilabel.parquet");
    let mut test = Test::new();
    test.args(["reveal", "--labels", &path, "--source"])
        .arg(format!("ovr={path}:mlprobs"))
        .args([
            "--detectors",
            "cl",
            "--filter-by",
            "both",
            "--out",
            "ml.jsonl",
        ])
        .run()
        .success();
    let rows = test.read_lines("ml.jsonl");
    assert_eq!(
        bools(&rows, "is_label_issue"),
        bool_column(&frame, "cl_both")
    );
    let mut missing = 0;
    for row in &rows {
        let given: Vec<u64> = serde_json::from_value(row["labels"].clone()).unwrap();
        let soft: Vec<f64> = serde_json::from_value(row["soft_label"].clone()).unwrap();
        for m in row["missing_labels"].as_array().unwrap() {
            let m = m.as_u64().unwrap();
            assert!(!given.contains(&m) && soft[m as usize] >= 0.5);
            missing += 1;
        }
    }
    assert!(missing > 0);
}

/// The gate: outputs are written, then exit 1 with the reason on stderr.
#[test]
fn gate_fails_after_writing_outputs() {
    let mut test = Test::new();
    test.arg("reveal");
    let out = four_sources(&mut test)
        .args([
            "--out",
            "o.parquet",
            "--summary",
            "s.json",
            "--max-issue-rate",
            "0.05",
        ])
        .args(["--fail-on", "ambiguous"])
        .run();
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("gate failed: issue rate"),
        "{}",
        out.stderr
    );
    assert!(test.path("o.parquet").exists());
    let summary: Value = serde_json::from_slice(&test.read("s.json")).unwrap();
    assert_eq!(summary["gate"]["passed"], false);
    // A loose gate passes.
    test.arg("reveal");
    four_sources(&mut test)
        .args(["--out", "p.parquet", "--max-issue-rate", "0.5"])
        .run()
        .success();
}

/// String classes from --classes map to probability columns in order; suggestions use names.
#[test]
fn string_classes_follow_the_given_order() {
    let names = "zero,one,two,three,four,five,six,seven,eight,nine";
    let mut labels = String::from("{\"id\": \"a\", \"label\": \"three\"}\n");
    labels.push_str("{\"id\": \"b\", \"label\": \"one\"}\n{\"id\": \"c\", \"label\": \"one\"}\n");
    let mut probs = String::new();
    for (id, hot) in [("a", 3), ("b", 1), ("c", 8)] {
        let mut p = vec![0.0; 10];
        p[hot] = 0.91;
        p[(hot + 1) % 10] = 0.09;
        probs.push_str(&format!("{{\"id\": \"{id}\", \"probs\": {p:?}}}\n"));
    }
    let mut test = Test::new().file("l.jsonl", labels).file("p.jsonl", probs);
    test.args([
        "reveal",
        "--labels",
        "l.jsonl",
        "--source",
        "m=p.jsonl",
        "--classes",
        names,
    ])
    .args([
        "--detectors",
        "cl",
        "--filter-by",
        "predicted_neq_given",
        "--out",
        "o.jsonl",
    ])
    .run()
    .success();
    let rows = test.read_lines("o.jsonl");
    assert_eq!(rows[2]["is_label_issue"], true);
    assert_eq!(rows[2]["suggested_label"], "eight");
    assert_eq!(rows[0]["is_label_issue"], false);
}

/// Every class of invalid input: exit 2, one line naming file, column and row, no output.
#[test]
fn invalid_inputs_exit_2_without_output() {
    let labels =
        "{\"id\": 1, \"label\": 0}\n{\"id\": 2, \"label\": 1}\n{\"id\": 3, \"label\": 1}\n";
    let good = "{\"id\": 1, \"probs\": [0.9, 0.1]}\n{\"id\": 2, \"probs\": [0.2, 0.8]}\n{\"id\": 3, \"probs\": [0.3, 0.7]}\n";
    let cases: Vec<(&str, String, Vec<&str>, &str)> = vec![
        (
            "unknown class",
            good.into(),
            vec!["--classes", "0,2"],
            "unknown class '1'",
        ),
        (
            "outside [0, 1]",
            good.replace("[0.3, 0.7]", "[-0.3, 1.3]"),
            vec![],
            "p.jsonl: column 'probs', row 3: probability -0.3 is not in [0, 1]",
        ),
        (
            "not summing to 1",
            good.replace("[0.3, 0.7]", "[0.3, 0.6]"),
            vec![],
            "row 3: probabilities sum to 0.8999999999999999, not 1",
        ),
        (
            "duplicate ids",
            good.replace("\"id\": 3", "\"id\": 2"),
            vec![],
            "p.jsonl: column 'id', row 3: duplicate id 2",
        ),
        (
            "no overlapping ids",
            good.replace("\"id\": 1", "\"id\": 7")
                .replace("\"id\": 2", "\"id\": 8")
                .replace("\"id\": 3", "\"id\": 9"),
            vec![],
            "shares no id with l.jsonl",
        ),
        (
            "partial probabilities",
            good.lines().take(2).collect::<Vec<_>>().join("\n"),
            vec![],
            "has no row for id 3",
        ),
        (
            "class-order mismatch",
            good.replace("[0.9, 0.1]", "[0.9, 0.1, 0.0]"),
            vec![],
            "2 probabilities, earlier rows have 3",
        ),
        (
            "width vs classes",
            good.into(),
            vec!["--classes", "a,b,c"],
            "class-order mismatch",
        ),
        (
            "string ids",
            good.replace("\"id\": 1", "\"id\": \"1\"")
                .replace("\"id\": 2", "\"id\": \"2\"")
                .replace("\"id\": 3", "\"id\": \"3\""),
            vec![],
            "ids are strings but l.jsonl has integers ids",
        ),
        (
            "bad filter",
            good.into(),
            vec!["--filter-by", "magic"],
            "invalid value 'magic' for '--filter-by <MODE>'; [possible values: prune_by_noise_rate,",
        ),
        (
            "knn without embeddings",
            good.into(),
            vec!["--detectors", "knn"],
            "needs --embeddings",
        ),
        (
            "vote with one source",
            good.into(),
            vec!["--detectors", "vote"],
            "at least two sources",
        ),
    ];
    for (what, probs, extra, needle) in cases {
        let mut test = Test::new().file("l.jsonl", labels).file("p.jsonl", probs);
        test.args([
            "reveal",
            "--labels",
            "l.jsonl",
            "--source",
            "m=p.jsonl",
            "--out",
            "o.parquet",
        ])
        .args(extra)
        .run()
        .invalid(needle);
        assert!(!test.path("o.parquet").exists(), "{what}: output written");
        assert_eq!(
            test.entries(),
            vec!["l.jsonl", "p.jsonl"],
            "{what}: stray files"
        );
    }
}

/// Several probability sources: `cl` runs on their mean (summed in the order given), and flags
/// exactly what cleanlab flags on that mean, for every `--filter-by`.
#[test]
fn cl_on_several_sources_is_cleanlab_on_their_mean() {
    let frame = crate::reveal_parity::read_fixture("digits_sources.parquet");
    let mut test = Test::new();
    for mode in ["prune_by_noise_rate", "both", "low_normalized_margin"] {
        let out = format!("{mode}.jsonl");
        test.arg("reveal");
        four_sources(&mut test)
            .args(["--detectors", "cl", "--filter-by", mode, "--out", &out])
            .run()
            .success();
        let rows = test.read_lines(&out);
        assert_eq!(
            bools(&rows, "is_label_issue"),
            bool_column(&frame, &format!("cl_mean_{mode}")),
            "{mode}"
        );
    }
}

/// Rows join on id whatever their order; ids the labels lack are ignored; a `hard` source may
/// cover only some ids.
#[test]
fn sources_join_on_id_in_any_order() {
    let labels =
        "{\"id\": 10, \"label\": 0}\n{\"id\": 11, \"label\": 1}\n{\"id\": 12, \"label\": 1}\n";
    let aligned = "{\"id\": 10, \"probs\": [0.9, 0.1]}\n{\"id\": 11, \"probs\": [0.2, 0.8]}\n{\"id\": 12, \"probs\": [0.7, 0.3]}\n";
    let shuffled = "{\"id\": 99, \"probs\": [0.5, 0.5]}\n{\"id\": 12, \"probs\": [0.7, 0.3]}\n{\"id\": 10, \"probs\": [0.9, 0.1]}\n{\"id\": 11, \"probs\": [0.2, 0.8]}\n";
    let hard = "{\"id\": 12, \"pred\": 0}\n";
    let mut test = Test::new()
        .file("l.jsonl", labels)
        .file("a.jsonl", aligned)
        .file("s.jsonl", shuffled)
        .file("h.jsonl", hard);
    for (source, out) in [("a.jsonl", "a.out.jsonl"), ("s.jsonl", "s.out.jsonl")] {
        test.args(["reveal", "--labels", "l.jsonl", "--source"])
            .arg(format!("m={source}"))
            .args(["--source", "h=h.jsonl:hard", "--out", out])
            .run()
            .success();
    }
    assert_eq!(test.read("a.out.jsonl"), test.read("s.out.jsonl"));
    let rows = test.read_lines("s.out.jsonl");
    assert_eq!(rows[2]["id"], 12);
    assert_eq!(rows[2]["vote_issue"], true);
    assert!((rows[0]["quality"].as_f64().unwrap() - 0.9).abs() < 1e-12);
}

/// Ctrl-C during the probe: exit 130, nothing written, no temporary file left.
#[test]
fn ctrl_c_leaves_nothing() {
    use std::process::Stdio;
    let test = Test::new();
    let f = digits();
    let child = crate::test::curate_command(test.path("").as_path())
        .args(["reveal", "--labels", &f, "--source"])
        .arg(format!("svc={f}:probs:p_svc"))
        .args([
            "--embeddings",
            &f,
            "--probe",
            "mlp",
            "--probe-epochs",
            "2000",
        ])
        .args(["--out", "o.parquet", "--summary", "s.json"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (code, stderr) =
        crate::test::interrupt_once_staged(&test, child, std::time::Duration::from_millis(300));
    assert_eq!(code, Some(130), "{stderr}");
    assert!(stderr.ends_with("curate: interrupted\n"), "{stderr}");
    assert!(test.entries().is_empty(), "{:?}", test.entries());
}

/// Results do not depend on the number of threads (kNN blocks, pruning per class, decisions
/// run in parallel).
#[test]
fn outputs_do_not_depend_on_the_thread_count() {
    let test = Test::new();
    let f = digits();
    for threads in ["1", "3"] {
        let status = crate::test::curate_command(test.path("").as_path())
            .env("RAYON_NUM_THREADS", threads)
            .args(["-q", "reveal", "--labels", &f])
            .arg("--source")
            .arg(format!("a={f}:probs:p_logreg"))
            .arg("--source")
            .arg(format!("b={f}:probs:p_rf"))
            .args(["--embeddings", &f, "--out", &format!("t{threads}.jsonl")])
            .status()
            .unwrap();
        assert!(status.success());
    }
    assert_eq!(test.read("t1.jsonl"), test.read("t3.jsonl"));
}

/// Rows tied at a cut-off: four rows of class 0 give it exactly 0 and only two issues are
/// counted, so which two is a tie order's choice. curate takes the earlier rows, whatever the
/// table's order, and says how many flagged rows came from a tie.
#[test]
fn ties_at_the_cut_off_go_by_row_order_and_are_counted() {
    let path = fixture("reveal/ties.csv");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    // The same rows with the tied class-0 rows in reverse order.
    lines[1..7].reverse();
    let mut test = Test::new().file("reversed.csv", format!("{}\n", lines.join("\n")));
    for (input, expected) in [
        (path.display().to_string(), ["b", "d"]),
        ("reversed.csv".to_string(), ["f", "e"]),
    ] {
        let out = test
            .args(["reveal", "--labels", &input, "--source"])
            .arg(format!("model={input}"))
            .args(["--detectors", "cl", "--filter-by", "low_self_confidence"])
            .args(["--out", "t.jsonl", "--summary", "s.json", "--force"])
            .run()
            .success();
        let flagged: Vec<String> = test
            .read_lines("t.jsonl")
            .iter()
            .filter(|r| r["is_label_issue"] == true)
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect();
        let mut want: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
        want.sort();
        let mut got = flagged.clone();
        got.sort();
        assert_eq!(got, want, "{input}");
        assert!(
            out.stderr
                .contains("cl: 2 flagged rows were chosen among rows tied at a cut-off"),
            "{}",
            out.stderr
        );
        let summary: Value = serde_json::from_slice(&test.read("s.json")).unwrap();
        assert_eq!(summary["flagged_from_ties"]["cl"], 2);
    }
    // A mode with no tie at its cut says nothing about ties.
    let out = test
        .args(["reveal", "--labels", path.to_str().unwrap(), "--source"])
        .arg(format!("model={}", path.display()))
        .args(["--detectors", "cl", "--filter-by", "confident_learning"])
        .args(["--out", "t.jsonl", "--summary", "s.json", "--force"])
        .run()
        .success();
    assert!(!out.stderr.contains("tied"), "{}", out.stderr);
    let summary: Value = serde_json::from_slice(&test.read("s.json")).unwrap();
    assert_eq!(summary["flagged_from_ties"]["cl"], 0);
}

/// Wide probability columns named by class (`p_bird`, `p_cat`, `p_dog`, in any column order)
/// with `--probs-prefix p_`, or named outright with `--probs-cols`, give what numbered columns
/// in class order give; a column naming no class is refused.
#[test]
fn probability_columns_named_by_class() {
    let classes = ["bird", "cat", "dog"];
    let (mut labels, mut named, mut numbered) = (String::new(), String::new(), String::new());
    for i in 0..30usize {
        let given = classes[i % 3];
        // The labelled class is likely, except every seventh row, which another class wins.
        let mut p = [0.1, 0.1, 0.1];
        p[if i % 7 == 0 { (i + 1) % 3 } else { i % 3 }] = 0.8;
        labels.push_str(&format!("{{\"id\": {i}, \"label\": \"{given}\"}}\n"));
        named.push_str(&format!(
            "{{\"id\": {i}, \"p_dog\": {}, \"p_bird\": {}, \"p_cat\": {}}}\n",
            p[2], p[0], p[1]
        ));
        numbered.push_str(&format!(
            "{{\"id\": {i}, \"p0\": {}, \"p1\": {}, \"p2\": {}}}\n",
            p[0], p[1], p[2]
        ));
    }
    let mut test = Test::new()
        .file("labels.jsonl", labels)
        .file("named.jsonl", named)
        .file("numbered.jsonl", numbered);
    let mut run = |source: &str, extra: &[&str], out: &str| {
        test.args(["reveal", "--labels", "labels.jsonl", "--source"])
            .arg(format!("m={source}"))
            .args(["--out", out])
            .args(extra)
            .run()
            .success();
    };
    run("numbered.jsonl", &[], "numbered-out.jsonl");
    run("named.jsonl", &["--probs-prefix", "p_"], "named-out.jsonl");
    run(
        "named.jsonl",
        &["--probs-cols", "p_bird,p_cat,p_dog"],
        "cols-out.jsonl",
    );
    let expected = test.read("numbered-out.jsonl");
    assert!(
        test.read_lines("numbered-out.jsonl")
            .iter()
            .any(|r| r["is_label_issue"] == true)
    );
    assert_eq!(test.read("named-out.jsonl"), expected);
    assert_eq!(test.read("cols-out.jsonl"), expected);
    test.args([
        "reveal",
        "--labels",
        "labels.jsonl",
        "--source",
        "m=named.jsonl",
    ])
    .args(["--probs-prefix", "p_", "--classes", "bird,cat,fish"])
    .args(["--out", "x.jsonl"])
    .run()
    .invalid("named.jsonl: column 'p_dog' names no class (classes: bird, cat, fish)");
    assert!(!test.path("x.jsonl").exists());
}
