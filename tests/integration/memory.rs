//! Memory budgets, `--batch-size auto`, and the progress a scheduler's log gets.

use crate::model::fixture;
use crate::test::Test;

fn model() -> String {
    fixture("tiny-lm").display().to_string()
}

fn queries() -> String {
    fixture("math_code_queries.jsonl").display().to_string()
}

/// `curate eval` of the bundled queries with the bundled model, rows cut to 1024 tokens.
fn eval_queries(test: &mut Test) -> &mut Test {
    test.args(["eval", "--model", &model(), "--data", &queries()])
        .args(["--max-length", "1024"])
}

/// A batch whose estimate exceeds the budget fails before any work with both numbers, for
/// every command that runs the model, and leaves nothing behind.
#[test]
fn a_batch_over_the_memory_budget_is_refused_with_the_numbers() {
    let mut test = Test::new();
    let (model, queries) = (model(), queries());
    let common = ["--max-length", "1024", "--memory-budget", "1MiB"];
    test.args(["eval", "--model", &model, "--data", &queries, "--out", "e.jsonl"])
        .args(common)
        .run()
        .invalid("a batch of 8 sequences of up to 585 tokens needs about")
        .invalid("more than the memory budget of 1.0 MiB; lower --batch-size or --max-length, or raise --memory-budget");
    test.args([
        "influence",
        "--model",
        &model,
        "--train",
        &queries,
        "--query",
        &queries,
    ])
    .args(["--out", "s.jsonl"])
    .args(common)
    .run()
    .invalid("more than the memory budget of 1.0 MiB");
    test.args([
        "train", &queries, "--model", &model, "--out", "m", "--epochs", "1",
    ])
    .args(common)
    .run()
    .invalid("more than the memory budget of 1.0 MiB");
    // auto with a budget under one sequence says so.
    test.args([
        "eval", "--model", &model, "--data", &queries, "--out", "e.jsonl",
    ])
    .args([
        "--max-length",
        "1024",
        "--memory-budget",
        "1MiB",
        "--batch-size",
        "auto",
    ])
    .run()
    .invalid("a batch of 1 sequences of up to 585 tokens needs about");
    assert!(test.entries().is_empty(), "{:?}", test.entries());
    for (flag, value, needle) in [
        ("--memory-budget", "lots", "is not a memory size"),
        ("--memory-budget", "0%", "is not a memory size"),
        ("--batch-size", "0", "is not a positive number or `auto`"),
        ("--batch-size", "some", "is not a positive number or `auto`"),
    ] {
        test.args([
            "eval", "--model", &model, "--data", &queries, "--out", "e.jsonl",
        ])
        .args([flag, value])
        .run()
        .invalid(needle);
    }
}

/// `--batch-size auto` takes the largest batch within the budget (here a budget that holds a
/// few rows), says so, and gives the losses a fixed batch gives, up to f32 rounding.
#[test]
fn auto_batch_fits_the_budget_and_keeps_the_losses() {
    let mut test = Test::new();
    eval_queries(&mut test)
        .args(["--batch-size", "3", "--out", "fixed.jsonl"])
        .run()
        .success();
    let auto = eval_queries(&mut test)
        .args([
            "--batch-size",
            "auto",
            "--memory-budget",
            "60MiB",
            "--out",
            "auto.jsonl",
        ])
        .run()
        .success();
    let said = auto
        .stderr
        .lines()
        .find(|l| l.starts_with("batch size "))
        .unwrap_or_else(|| panic!("no batch size line:\n{}", auto.stderr));
    let batch: usize = said["batch size ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..8).contains(&batch), "{said}");
    assert!(
        said.contains("within the memory budget of 60.0 MiB"),
        "{said}"
    );
    let fixed = test.read_lines("fixed.jsonl");
    let auto = test.read_lines("auto.jsonl");
    assert_eq!(fixed.len(), auto.len());
    for (f, a) in fixed.iter().zip(&auto) {
        let (f, a) = (f["loss"].as_f64().unwrap(), a["loss"].as_f64().unwrap());
        assert!((f - a).abs() <= 1e-6 * f.abs(), "{f} vs {a}");
    }
}

/// Without a terminal, a model pass says after its first batch how long the rest will take and
/// how much memory it holds, then writes a plain progress line at the interval; `-q` silences
/// both.
#[test]
fn logs_get_an_estimate_and_plain_progress_lines() {
    let mut test = Test::new();
    let run = eval_queries(&mut test)
        .args(["--batch-size", "2", "--out", "e.jsonl"])
        .env("CURATE_PROGRESS_INTERVAL", "0.000001")
        .run()
        .success();
    let lines: Vec<&str> = run.stderr.lines().collect();
    let first: Vec<&&str> = lines
        .iter()
        .filter(|l| l.starts_with("loss: first 2 of 16 rows in "))
        .collect();
    assert_eq!(first.len(), 1, "{}", run.stderr);
    assert!(first[0].contains("for the rest"), "{}", first[0]);
    assert!(first[0].contains(", estimated "), "{}", first[0]);
    if cfg!(target_os = "linux") {
        assert!(first[0].contains("; peak memory "), "{}", first[0]);
    }
    let plain = lines
        .iter()
        .filter(|l| l.starts_with("loss: ") && l.contains("/16 rows, ") && l.ends_with(" left"))
        .count();
    assert!(plain >= 3, "{}", run.stderr);
    let quiet = eval_queries(&mut test)
        .arg("-q")
        .args(["--batch-size", "2", "--out", "q.jsonl"])
        .env("CURATE_PROGRESS_INTERVAL", "0.000001")
        .run()
        .success();
    assert_eq!(quiet.stderr, "");
}

/// `--cache-mib auto` keeps EK-FAC's first-pass stacks when the budget holds them, so the
/// second pass does not run the model; a cap that is too small says the model runs again.
/// Both fits give the same factors, byte for byte.
#[test]
fn the_stack_cache_fits_the_budget_and_says_when_the_model_runs_again() {
    let mut test = Test::new();
    let (model, queries) = (model(), queries());
    let fit = |test: &mut Test, out: &str, extra: &[&str]| {
        test.args(["influence", "fit-factors", "--model", &model])
            .args(["--train", &queries, "--max-length", "256", "--out", out])
            .args(["--memory-budget", "8GiB"])
            .args(extra)
            .run()
            .success()
            .stderr
    };
    let rerun =
        "factors: EK-FAC's second pass runs the model again: keeping the first pass's stacks needs";
    let kept = fit(&mut test, "auto", &[]);
    assert!(!kept.contains(rerun), "{kept}");
    let capped = fit(&mut test, "capped", &["--cache-mib", "0"]);
    assert!(
        capped.contains(rerun)
            && capped.contains("more than the memory left (--cache-mib, --memory-budget)"),
        "{capped}"
    );
    let small = fit(&mut test, "small", &["--cache-mib", "1"]);
    assert!(small.contains("more than 1.0 MiB"), "{small}");
    // The tensors, after the header (which records each run's command line).
    let factors = |dir: &str| {
        let file = test.read(&format!("{dir}/factors.safetensors"));
        let header = u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
        file[8 + header..].to_vec()
    };
    assert!(factors("auto") == factors("capped"), "factors differ");
    assert!(factors("auto") == factors("small"), "factors differ");
    test.args(["influence", "fit-factors", "--model", &model])
        .args(["--train", &queries, "--out", "bad", "--cache-mib", "lots"])
        .run()
        .invalid("\"lots\" is not a number of MiB or `auto`");
}
