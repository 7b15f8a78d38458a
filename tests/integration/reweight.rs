//! `curate reweight` on the bundled math + code mix, and its invalid inputs.

use std::collections::HashMap;

use serde_json::Value;

use crate::test::Test;

fn mix() -> String {
    format!(
        "{}/fixtures/math_code_mix.parquet",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// One field of every row, as numbers.
fn numbers(rows: &[Value], field: &str) -> Vec<f64> {
    rows.iter().map(|r| r[field].as_f64().unwrap()).collect()
}

/// Weighted and unweighted mean difficulty, and total weight, per domain.
fn domain_stats(rows: &[Value]) -> HashMap<String, (f64, f64, f64)> {
    let mut acc: HashMap<String, (f64, f64, f64, f64)> = HashMap::new();
    for row in rows {
        let e = acc
            .entry(row["domain"].as_str().unwrap().to_string())
            .or_default();
        let (d, w) = (
            row["difficulty"].as_f64().unwrap(),
            row["weight"].as_f64().unwrap(),
        );
        e.0 += d * w;
        e.1 += w;
        e.2 += d;
        e.3 += 1.0;
    }
    acc.into_iter()
        .map(|(k, (dw, w, d, n))| (k, (dw / w, d / n, w)))
        .collect()
}

#[test]
fn flip_makes_math_harder_and_code_easier_keeping_totals() {
    let mut test = Test::new();
    let out = test
        .args([
            "reweight",
            &mix(),
            "--out",
            "w.jsonl",
            "--report",
            "audit.jsonl",
        ])
        .run()
        .success();
    assert!(
        out.stderr
            .contains("math: level histogram mirrored toward hard"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("code: level histogram mirrored toward easy"),
        "{}",
        out.stderr
    );
    let rows = test.read_lines("w.jsonl");
    assert_eq!(rows.len(), 300);
    let stats = domain_stats(&rows);
    let (math_after, math_before, math_total) = stats["math"];
    let (code_after, code_before, code_total) = stats["code"];
    assert!(
        math_after > math_before + 1.0,
        "math {math_before} -> {math_after}"
    );
    assert!(
        code_after < code_before - 1.0,
        "code {code_before} -> {code_after}"
    );
    assert!((math_total - 150.0).abs() < 1e-9 && (code_total - 150.0).abs() < 1e-9);

    // Every input column, in order, and the input's row order.
    let original = test
        .args(["convert", &mix(), "--out", "-"])
        .run()
        .success()
        .json_lines();
    for (a, b) in original.iter().zip(&rows) {
        let mut b = b.clone();
        b.as_object_mut().unwrap().remove("weight");
        assert_eq!(a, &b);
    }
    let audit = test.read_lines("audit.jsonl");
    assert_eq!(audit.len(), 15, "7 math levels and 8 code levels");
    assert_eq!(audit[0]["domain"], "math");
    assert_eq!(audit[0]["difficulty_min"], 2.0);
}

#[test]
fn target_gives_the_requested_proportions_and_provenance() {
    let mut test = Test::new();
    test.args([
        "--seed",
        "3",
        "reweight",
        &mix(),
        "--out",
        "w.parquet",
        "--report",
        "audit.jsonl",
    ])
    .args(["--target", "math=4,1,1,1,1,1,1", "--direction", "code=easy"])
    .run()
    .success();
    let audit = test.read_lines("audit.jsonl");
    let math: Vec<f64> = audit
        .iter()
        .filter(|r| r["domain"] == "math")
        .map(|r| r["share_after"].as_f64().unwrap())
        .collect();
    let wanted = [0.4, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1];
    for (got, want) in math.iter().zip(wanted) {
        assert!((got - want).abs() < 1e-12, "{math:?}");
    }
    let report = test
        .args(["inspect", "w.parquet", "--json", "--no-stats"])
        .run()
        .success();
    let provenance = &report.json_lines()[0]["provenance"];
    assert_eq!(provenance["seed"], 3);
    assert_eq!(provenance["inputs"][0]["path"], mix());
}

#[test]
fn materialize_copies_match_weights() {
    let mut test = Test::new();
    test.args(["reweight", &mix(), "--out", "w.jsonl", "--cap", "5"])
        .run()
        .success();
    test.args([
        "reweight",
        &mix(),
        "--out",
        "m.jsonl",
        "--cap",
        "5",
        "--materialize",
    ])
    .run()
    .success();
    let weighted = test.read_lines("w.jsonl");
    let resampled = test.read_lines("m.jsonl");
    assert_eq!(resampled.len(), 300);
    let mut copies: HashMap<String, f64> = HashMap::new();
    for row in &resampled {
        *copies
            .entry(row["id"].as_str().unwrap().to_string())
            .or_default() += 1.0;
        assert!(row.get("weight").is_none());
    }
    let mut per_domain: HashMap<String, f64> = HashMap::new();
    for row in &weighted {
        let w = row["weight"].as_f64().unwrap();
        assert!(w <= 5.0 + 1e-9);
        let c = copies
            .get(row["id"].as_str().unwrap())
            .copied()
            .unwrap_or(0.0);
        assert!(
            c >= w.floor() && c <= w.ceil(),
            "{} weight {w} copies {c}",
            row["id"]
        );
        *per_domain
            .entry(row["domain"].as_str().unwrap().to_string())
            .or_default() += c;
    }
    assert_eq!(per_domain["math"], 150.0);
    assert_eq!(per_domain["code"], 150.0);
}

#[test]
fn influence_scores_weight_groups() {
    // Scores as `curate influence` writes them: two queries per training example.
    let ids: Vec<String> = (0..6).map(|i| format!("r{i}")).collect();
    let data: String = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            format!(
                "{{\"id\": \"{id}\", \"domain\": \"{}\", \"difficulty\": {}}}\n",
                if i < 4 { "math" } else { "code" },
                i % 2 + 1
            )
        })
        .collect();
    let scores: String = ids
        .iter()
        .enumerate()
        .flat_map(|(i, id)| {
            let s = if i % 2 == 1 { 1.0 } else { -1.0 };
            [0, 1].map(|q| {
                format!(
                    "{{\"query_id\": {q}, \"train_id\": \"{id}\", \"score\": {}}}\n",
                    s + q as f64
                )
            })
        })
        .collect();
    let mut test = Test::new()
        .file("train.jsonl", data)
        .file("scores.jsonl", scores);
    test.args([
        "reweight",
        "train.jsonl",
        "--rule",
        "influence",
        "--scores",
        "scores.jsonl",
        "--out",
        "w.jsonl",
    ])
    .run()
    .success();
    let rows = test.read_lines("w.jsonl");
    let w = numbers(&rows, "weight");
    assert!(w[1] > w[0] && w[5] > w[4]);
    assert!((w[..4].iter().sum::<f64>() - 4.0).abs() < 1e-9);
    assert!((w[4..].iter().sum::<f64>() - 2.0).abs() < 1e-9);

    let short = "{\"train_id\": \"r0\", \"score\": 1.0}\n";
    let mut test = test.file("short.jsonl", short);
    test.args([
        "reweight",
        "train.jsonl",
        "--rule",
        "influence",
        "--scores",
        "short.jsonl",
        "--out",
        "x.jsonl",
    ])
    .run()
    .invalid("train.jsonl: column 'id', row 2: id r1 has no score in short.jsonl");
}

#[test]
fn topk_keeps_the_best_fraction() {
    let data: String = (0..10)
        .map(|i| format!("{{\"id\": {i}, \"score\": {}}}\n", (i * 7) % 10))
        .collect();
    let mut test = Test::new().file("s.jsonl", data);
    test.args([
        "reweight",
        "s.jsonl",
        "--rule",
        "topk",
        "--fraction",
        "0.3",
        "--materialize",
        "--out",
        "top.jsonl",
    ])
    .run()
    .success();
    let ids: Vec<i64> = test
        .read_lines("top.jsonl")
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    // scores: 0,7,4,1,8,5,2,9,6,3 -> the top three are ids 7 (9), 4 (8), 1 (7), kept in input order.
    assert_eq!(ids, vec![1, 4, 7]);

    // Equal scores: the smaller id wins, wherever its row is.
    let tied = "{\"id\": \"b\", \"score\": 1}\n{\"id\": \"a\", \"score\": 1}\n{\"id\": \"c\", \"score\": 0}\n";
    let mut test = Test::new().file("t.jsonl", tied);
    let out = test
        .args([
            "reweight",
            "t.jsonl",
            "--rule",
            "topk",
            "--fraction",
            "0.34",
            "--out",
            "-",
        ])
        .run()
        .success();
    let weights = numbers(&out.json_lines(), "weight");
    assert_eq!(weights, vec![0.0, 1.0, 0.0]);
}

#[test]
fn invalid_inputs() {
    let rows =
        "{\"domain\": \"math\", \"difficulty\": 1}\n{\"domain\": \"code\", \"difficulty\": 2}\n";
    // (file, contents, extra arguments, expected message)
    let cases: [(&str, &str, &[&str], &str); 10] = [
        (
            "a.jsonl",
            "{\"difficulty\": 1}\n",
            &[],
            "a.jsonl: column 'domain': not found (columns: difficulty); name another with --domain-col",
        ),
        (
            "a.jsonl",
            "{\"domain\": \"math\"}\n",
            &[],
            "a.jsonl: column 'difficulty': not found (columns: domain); name another with --difficulty-col",
        ),
        (
            "a.csv",
            "domain,difficulty\nmath,1\nmath,2\ncode,hard\n",
            &[],
            "a.csv: column 'difficulty', row 3: expected numbers, found \"hard\"",
        ),
        (
            "a.csv",
            "domain,difficulty\nmath,1\nmath,NaN\n",
            &[],
            "a.csv: column 'difficulty', row 2: difficulty is NaN",
        ),
        (
            "a.jsonl",
            rows,
            &["--direction", "physics=hard"],
            "a.jsonl: column 'domain': --direction names domain 'physics', which no row has (domains: math, code)",
        ),
        (
            "a.jsonl",
            "{\"domain\": \"math\", \"difficulty\": 1.5}\n",
            &[],
            "row 1: difficulty 1.5 is not a whole number; pass --bins K",
        ),
        (
            "a.jsonl",
            rows,
            &["--target", "math=-1"],
            "--target math: proportion -1 is not a non-negative number",
        ),
        (
            "a.csv",
            "id,score\n1,0.5\n2,NaN\n",
            &["--rule", "topk", "--fraction", "0.5"],
            "a.csv: column 'score', row 2: score is NaN",
        ),
        (
            "a.jsonl",
            rows,
            &["--rule", "topk"],
            "--rule topk needs --fraction F",
        ),
        (
            "a.jsonl",
            rows,
            &["--cap", "0.5"],
            "--cap 0.5 is below the mean weight 1",
        ),
    ];
    for (file, contents, extra, needle) in cases {
        let mut test = Test::new().file(file, contents);
        test.args(["reweight", file])
            .args(extra)
            .args(["--out", "out.parquet"])
            .run()
            .invalid(needle);
        assert_eq!(test.entries(), [file], "{needle}");
    }
}

#[test]
fn continuous_difficulty_is_binned() {
    let data: String = (0..8)
        .map(|i| {
            format!(
                "{{\"domain\": \"math\", \"difficulty\": {}}}\n",
                0.1 + i as f64 * 0.25
            )
        })
        .collect();
    let mut test = Test::new().file("c.jsonl", data);
    test.args([
        "reweight",
        "c.jsonl",
        "--bins",
        "4",
        "--target",
        "math=0,0,0,1",
        "--out",
        "w.jsonl",
    ])
    .run()
    .success();
    let weights = numbers(&test.read_lines("w.jsonl"), "weight");
    assert_eq!(weights, vec![0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 4.0, 4.0]);
}

/// The random control: exp(tau * z) of a seeded random z per group, totals kept per domain.
#[test]
fn random_rule_is_seeded_and_keeps_domain_totals() {
    let mix = format!(
        "{}/fixtures/math_code_mix.parquet",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut test = Test::new();
    for (seed, out) in [("1", "a.jsonl"), ("1", "b.jsonl"), ("2", "c.jsonl")] {
        test.args([
            "--seed", seed, "reweight", &mix, "--rule", "random", "--out", out,
        ])
        .run()
        .success();
    }
    assert_eq!(test.read("a.jsonl"), test.read("b.jsonl"));
    assert_ne!(test.read("a.jsonl"), test.read("c.jsonl"));
    let rows = test.read_lines("a.jsonl");
    for domain in ["math", "code"] {
        let weights: Vec<f64> = rows
            .iter()
            .filter(|r| r["domain"] == domain)
            .map(|r| r["weight"].as_f64().unwrap())
            .collect();
        let total: f64 = weights.iter().sum();
        assert!(
            (total - weights.len() as f64).abs() < 1e-9,
            "{domain}: {total}"
        );
        assert!(weights.iter().any(|&w| (w - 1.0).abs() > 0.05));
    }
}

/// Ratings skewed as LLM-rated code tasks are (CodeIO's 2,750: 81% rated 8, 16% rated 7,
/// 0.7% rated 2-5): "easy code up" must lower the mean difficulty without hanging the weights
/// on a handful of rows.
#[test]
fn skewed_ratings_flip_easier_with_a_sample_size_to_show() {
    let histogram = [
        (2, 3),
        (3, 4),
        (4, 2),
        (5, 8),
        (6, 23),
        (7, 431),
        (8, 2224),
        (9, 55),
    ];
    let data: String = histogram
        .iter()
        .flat_map(|&(rating, count)| {
            std::iter::repeat_n(
                format!("{{\"domain\": \"code\", \"difficulty\": {rating}}}\n"),
                count,
            )
        })
        .collect();
    let mut test = Test::new().file("codeio.jsonl", data);
    let ess = |rows: &[Value]| {
        let w = numbers(rows, "weight");
        let sum: f64 = w.iter().sum();
        sum * sum / w.iter().map(|x| x * x).sum::<f64>()
    };
    let flip = |test: &mut Test, extra: &[&str]| {
        test.args(["reweight", "codeio.jsonl", "--direction", "code=easy"])
            .args(["--out", "w.jsonl", "--report", "audit.jsonl", "--force"])
            .args(extra)
            .run()
            .success()
            .stderr
    };

    // Mirroring the eight ratings moves 81% of the mass onto 4 rows: said, with the way out.
    let stderr = flip(&mut test, &[]);
    let rows = test.read_lines("w.jsonl");
    assert!(ess(&rows) < 10.0, "{}", ess(&rows));
    assert!(
        stderr.contains("warning: code: the weights hang on few rows")
            && stderr.contains("--min-ess"),
        "{stderr}"
    );
    let audit = test.read_lines("audit.jsonl");
    assert!((audit[0]["domain_ess"].as_f64().unwrap() - ess(&rows)).abs() < 1e-6);

    // --min-ess tempers it to exactly the asked share, still easier.
    let stderr = flip(&mut test, &["--min-ess", "0.25"]);
    let rows = test.read_lines("w.jsonl");
    assert!((ess(&rows) - 2750.0 * 0.25).abs() < 1e-6, "{}", ess(&rows));
    let (after, before, total) = domain_stats(&rows)["code"];
    assert!(after < before - 0.2, "{before} -> {after}");
    assert!((total - 2750.0).abs() < 1e-6);
    assert!(stderr.contains("tempered by --min-ess"), "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");

    // Quantile bins respect ties: four non-empty levels with edges at distinct ratings, and
    // mirroring them makes the mix easier.
    let stderr = flip(&mut test, &["--bins", "4"]);
    let audit = test.read_lines("audit.jsonl");
    let counts: Vec<u64> = audit.iter().map(|r| r["rows"].as_u64().unwrap()).collect();
    assert_eq!(counts, vec![40, 431, 2224, 55]);
    assert!(stderr.contains("mirrored toward easy"), "{stderr}");
    let (after, before, _) = domain_stats(&test.read_lines("w.jsonl"))["code"];
    assert!(after < before - 0.5, "{before} -> {after}");

    for (flags, message) in [
        (&["--min-ess", "0"][..], "--min-ess 0 is not in (0, 1]"),
        (
            &["--min-ess", "0.5", "--rule", "random"][..],
            "--min-ess apply only to --rule flip",
        ),
    ] {
        test.args(["reweight", "codeio.jsonl", "--out", "x.jsonl"])
            .args(flags)
            .run()
            .invalid(message);
        assert!(!test.path("x.jsonl").exists());
    }
}
