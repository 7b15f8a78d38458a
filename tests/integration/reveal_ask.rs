//! `curate reveal ask` against the in-test chat server ([`ChatServer`]) as a labeller: text
//! and image rows, JSON and prose answers, aliases, yes/no scores, rejects, retries, the
//! journal after SIGINT and SIGKILL, budgets, the cache, several models, bad images, and the
//! answers read back as `curate reveal` sources.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};

use crate::chat_server::ChatServer;
use crate::test::{Test, interrupt_when, journal_lines};

/// A JSON Lines table of rows `r0`, `r1`, ... with these texts.
fn texts(texts: &[&str]) -> String {
    texts
        .iter()
        .enumerate()
        .map(|(i, t)| format!("{}\n", json!({"id": format!("r{i}"), "text": t})))
        .collect()
}

/// `curate reveal ask IN --text-col text --classes cat,dog,bird` against `server`.
fn ask(test: &mut Test, server: &ChatServer, input: &str, out: &str) {
    test.args([
        "reveal",
        "ask",
        input,
        "--out",
        out,
        "--classes",
        "cat,dog,bird",
    ])
    .args(["--base-url", &server.base_url(), "--model", "labeller"]);
}

fn by_id(rows: &[Value]) -> HashMap<String, Value> {
    rows.iter()
        .map(|r| (r["id"].as_str().unwrap().to_string(), r.clone()))
        .collect()
}

#[test]
fn text_rows_are_read_from_json_prose_and_aliases() {
    let server = ChatServer::start();
    let rows = [
        "a cat sat next to a dog",
        "a bird in a tree",
        "nothing here",
        "a cat #prose",
        "a pet #say:kitten",
        "two pets #say:dog+horse",
        "a thing #say:horse",
        "what is it #garbage",
    ];
    let mut test = Test::new()
        .file("in.jsonl", texts(&rows))
        .file("aliases.txt", "# other names\ncat: kitten, kitty\n");
    ask(&mut test, &server, "in.jsonl", "a.jsonl");
    let outcome = test
        .args(["--text-col", "text", "--aliases", "aliases.txt"])
        .args(["--rejects", "r.jsonl", "--parse-retries", "1"])
        .run()
        .success();
    let answers = by_id(&test.read_lines("a.jsonl"));
    let pred = |id: &str| answers[id]["pred"].clone();
    assert_eq!(pred("r0"), json!(["cat", "dog"]));
    assert_eq!(pred("r1"), json!(["bird"]));
    // None of the classes is an answer to "select all that apply".
    assert_eq!(pred("r2"), json!([]));
    assert_eq!(pred("r3"), json!(["cat"]));
    assert_eq!(answers["r3"]["raw"], "I can see: cat.");
    assert_eq!(pred("r4"), json!(["cat"]));
    assert_eq!(pred("r5"), json!(["dog"]));
    assert_eq!(answers["r5"]["unmatched"], json!(["horse"]));
    assert_eq!(answers.len(), 6);
    // Unusable answers are asked again once (--parse-retries 1), then rejected with why.
    let rejects = by_id(&test.read_lines("r.jsonl"));
    assert_eq!(rejects.len(), 2);
    for id in ["r6", "r7"] {
        assert_eq!(rejects[id]["reason"], "unusable_reply");
    }
    let detail = rejects["r6"]["detail"].as_str().unwrap();
    assert!(detail.contains("horse is not a class"), "{detail}");
    let counts = server.counts();
    assert_eq!(counts["a thing #say:horse"], 2);
    assert_eq!(counts["a cat sat next to a dog"], 1);
    // Every request asks for JSON, at temperature 0, with the classes and the row's text.
    for logged in server.requests() {
        assert_eq!(logged.body["response_format"]["type"], "json_object");
        assert_eq!(logged.body["temperature"], 0);
        assert!(logged.body["max_tokens"].as_u64().unwrap() >= 256);
    }
    let first = &server.requests()[0].body["messages"][1]["content"];
    assert!(first.as_str().unwrap().contains("Classes: cat, dog, bird"));
    assert!(
        outcome.stderr.contains("6 answered, 2 rejected"),
        "{}",
        outcome.stderr
    );
    assert!(!test.path("a.jsonl.curate-journal").exists());
    assert!(!test.path("a.jsonl.curate-replies").exists());
}

#[test]
fn answers_are_a_set_source_and_yes_no_scores_an_mlprobs_source_for_reveal() {
    let server = ChatServer::start();
    let animals = ["cat", "dog", "bird"];
    let rows: Vec<String> = (0..12)
        .map(|i| format!("photo {i}: a {}", animals[i % 3]))
        .collect();
    let rows: Vec<&str> = rows.iter().map(String::as_str).collect();
    // The given labels are right but for r3 (labelled dog, shows a cat).
    let labels: String = (0..12)
        .map(|i| {
            let label = if i == 3 { "dog" } else { animals[i % 3] };
            format!("{}\n", json!({"id": format!("r{i}"), "labels": [label]}))
        })
        .collect();
    let mut test = Test::new()
        .file("in.jsonl", texts(&rows))
        .file("labels.jsonl", labels);
    ask(&mut test, &server, "in.jsonl", "a.parquet");
    test.args(["--text-col", "text", "--scores", "yes-no"])
        .run()
        .success();
    // One classes request and one yes/no request per class for every row, each once.
    let counts = server.counts();
    assert_eq!(counts.len(), 12 * 4, "{counts:?}");
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");
    let yes_no: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|l| l.body["logprobs"] == true)
        .collect();
    assert_eq!(yes_no.len(), 36);
    assert!(
        yes_no
            .iter()
            .all(|l| l.body["top_logprobs"].as_u64() > Some(1))
    );
    test.args(["convert", "a.parquet", "--out", "a.jsonl"])
        .run()
        .success();
    let answers = by_id(&test.read_lines("a.jsonl"));
    assert_eq!(answers["r0"]["probs"], json!([0.8, 0.2, 0.2]));
    assert_eq!(answers["r2"]["probs"], json!([0.2, 0.2, 0.8]));
    // Both sources feed the consensus, and it finds the wrong label.
    test.args([
        "reveal",
        "--labels",
        "labels.jsonl",
        "--classes",
        "cat,dog,bird",
    ])
    .args([
        "--source",
        "lm=a.parquet:set",
        "--source",
        "lmp=a.parquet:mlprobs",
    ])
    .args(["--out", "issues.jsonl"])
    .run()
    .success();
    let issues = by_id(&test.read_lines("issues.jsonl"));
    assert_eq!(issues["r3"]["is_label_issue"], true, "{:?}", issues["r3"]);
    assert_eq!(issues["r3"]["suggested_labels"], json!(["cat"]));
    let flagged: Vec<&String> = issues
        .iter()
        .filter(|(_, r)| r["is_label_issue"] == true)
        .map(|(id, _)| id)
        .collect();
    assert_eq!(flagged, ["r3"]);
}

#[test]
fn yes_no_answers_without_log_probabilities_leave_the_scores_null() {
    let server = ChatServer::start();
    let mut test = Test::new().file("in.jsonl", texts(&["a cat", "a dog #no-logprobs"]));
    ask(&mut test, &server, "in.jsonl", "a.jsonl");
    let outcome = test
        .args(["--text-col", "text", "--scores", "yes-no"])
        .run()
        .success();
    let answers = by_id(&test.read_lines("a.jsonl"));
    assert_eq!(answers["r0"]["probs"], json!([0.8, 0.2, 0.2]));
    assert_eq!(answers["r1"]["probs"], Value::Null);
    assert_eq!(answers["r1"]["pred"], json!(["dog"]));
    assert!(
        outcome.stderr.contains("no log-probabilities for 1 of"),
        "{}",
        outcome.stderr
    );
}

/// A file that passes for a PNG: the signature, then what the test server reads as its
/// content.
fn png(content: &str) -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.extend_from_slice(content.as_bytes());
    bytes
}

#[test]
fn images_are_sent_as_data_urls_and_cached_by_digest() {
    let server = ChatServer::start();
    let table = [
        json!({"id": 1, "image": "img/a.png"}),
        json!({"id": 2, "image": "img/b.png"}),
        json!({"id": 3, "image": "https://example.org/photos/dog.jpg"}),
    ]
    .iter()
    .map(|r| format!("{r}\n"))
    .collect::<String>();
    let mut test = Test::new()
        .file("data/rows.jsonl", table)
        .file("data/img/a.png", png("a cat on a mat"))
        .file("data/img/b.png", png("a bird and a dog"));
    ask(&mut test, &server, "data/rows.jsonl", "a.jsonl");
    test.args(["--image-col", "image", "--cache-dir", "cache"])
        .run()
        .success();
    let answers = test.read_lines("a.jsonl");
    let preds: Vec<&Value> = answers.iter().map(|a| &a["pred"]).collect();
    assert_eq!(
        preds,
        [&json!(["cat"]), &json!(["dog", "bird"]), &json!(["dog"])]
    );
    let requests = server.requests();
    let url = |i: usize| {
        requests[i].body["messages"][1]["content"][1]["image_url"]["url"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let urls: Vec<String> = (0..3).map(url).collect();
    assert!(urls.iter().any(|u| u.starts_with("data:image/png;base64,")));
    assert!(urls.contains(&"https://example.org/photos/dog.jpg".to_string()));
    for logged in &requests {
        let text = logged.body["messages"][1]["content"][0]["text"]
            .as_str()
            .unwrap();
        assert!(text.contains("does the image show"), "{text}");
    }
    // The cache keeps the request with the image's digest, not its bytes; a second run asks
    // nothing.
    let entries = walk(&test.path("cache"));
    assert_eq!(entries.len(), 3);
    let stored: Vec<String> = entries
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    assert!(stored.iter().any(|e| e.contains("curate-image:sha256:")));
    assert!(!stored.iter().any(|e| e.contains("base64")));
    ask(&mut test, &server, "data/rows.jsonl", "b.jsonl");
    test.args(["--image-col", "image", "--cache-dir", "cache"])
        .run()
        .success();
    assert_eq!(server.requests().len(), 3);
    assert_eq!(test.read("a.jsonl"), test.read("b.jsonl"));
    // A changed image is a new request.
    std::fs::write(test.path("data/img/a.png"), png("a dog now")).unwrap();
    ask(&mut test, &server, "data/rows.jsonl", "c.jsonl");
    test.args(["--image-col", "image", "--cache-dir", "cache"])
        .run()
        .success();
    assert_eq!(server.requests().len(), 4);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else if path.extension().is_some_and(|e| e == "json") {
            files.push(path);
        }
    }
    files
}

#[test]
fn bad_images_stop_the_run_naming_the_row_before_anything_is_sent() {
    let server = ChatServer::start();
    let table = |image: &str| {
        format!(
            "{}\n{}\n",
            json!({"id": 1, "image": "ok.png"}),
            json!({"id": 2, "image": image})
        )
    };
    let mut test = Test::new()
        .file("ok.png", png("a cat"))
        .file("gif.png", b"GIF89a....")
        .file("big.png", png(&"x".repeat(2000)))
        .file("not-image.jsonl", table("gif.png"))
        .file("too-large.jsonl", table("big.png"))
        .file("missing.jsonl", table("nowhere.png"))
        .file("bad-url.jsonl", table("data:text/html;base64,AAAA"));
    for (input, needle) in [
        ("not-image.jsonl", "not a PNG, JPEG or WebP image"),
        ("too-large.jsonl", "over --max-image-bytes 1000"),
        ("missing.jsonl", "cannot read"),
        ("bad-url.jsonl", "not a PNG, JPEG or WebP image"),
    ] {
        ask(&mut test, &server, input, "a.jsonl");
        let outcome = test
            .args(["--image-col", "image", "--max-image-bytes", "1000"])
            .run()
            .invalid(needle);
        assert!(outcome.stderr.contains(input), "{}", outcome.stderr);
        assert!(outcome.stderr.contains("column 'image'") || outcome.stderr.contains("image"));
        assert!(outcome.stderr.contains("row 2"), "{}", outcome.stderr);
        assert!(!test.path("a.jsonl").exists());
    }
    assert!(server.requests().is_empty());
}

#[test]
fn refused_and_retried_requests_and_flag_errors() {
    let server = ChatServer::start();
    let mut test = Test::new().file(
        "in.jsonl",
        texts(&["a cat #429", "a dog #400", "a bird #500"]),
    );
    ask(&mut test, &server, "in.jsonl", "a.jsonl");
    test.args(["--text-col", "text", "--rejects", "r.jsonl"])
        .run()
        .success();
    let answers = by_id(&test.read_lines("a.jsonl"));
    assert_eq!(answers["r0"]["pred"], json!(["cat"]));
    assert_eq!(answers["r2"]["pred"], json!(["bird"]));
    let rejects = test.read_lines("r.jsonl");
    assert_eq!(rejects.len(), 1);
    assert_eq!(rejects[0]["reason"], "request_rejected");
    assert!(rejects[0]["detail"].as_str().unwrap().contains("HTTP 400"));
    // Flags checked before anything is read or sent.
    test.args([
        "reveal",
        "ask",
        "in.jsonl",
        "--out",
        "b.jsonl",
        "--classes",
        "cat",
    ])
    .args([
        "--base-url",
        &server.base_url(),
        "--model",
        "a,b",
        "--text-col",
        "text",
    ])
    .run()
    .invalid("put {model} in the path");
    for (extra, needle) in [
        (
            vec!["--text-col", "text", "--classes", "cat,cat"],
            "names cat twice",
        ),
        (vec!["--text-col", "nope"], "nope"),
        (
            vec!["--text-col", "text", "--prompt", "missing.txt"],
            "missing.txt",
        ),
        (
            vec!["--text-col", "text", "--concurrency", "0"],
            "--concurrency",
        ),
    ] {
        ask(&mut test, &server, "in.jsonl", "b.jsonl");
        test.args(extra).run().invalid(needle);
        assert!(!test.path("b.jsonl").exists());
    }
    std::fs::write(test.path("aliases.txt"), "cat: dog\n").unwrap();
    ask(&mut test, &server, "in.jsonl", "b.jsonl");
    test.args(["--text-col", "text", "--aliases", "aliases.txt"])
        .run()
        .invalid("aliases.txt");
}

#[test]
fn several_models_write_one_file_each_and_the_dry_run_counts_requests() {
    let server = ChatServer::start();
    let mut test = Test::new().file("in.jsonl", texts(&["a cat", "a dog"]));
    let estimate = test
        .args(["reveal", "ask", "in.jsonl", "--classes", "cat,dog,bird"])
        .args(["--base-url", &server.base_url(), "--model", "m1,m2"])
        .args(["--text-col", "text", "--scores", "yes-no", "--dry-run"])
        .run()
        .success();
    let reports = estimate.json_lines();
    assert_eq!(reports.len(), 2);
    assert_eq!(reports[0]["model"], "m1");
    assert_eq!(reports[1]["model"], "m2");
    assert_eq!(reports[0]["requests"], 8);
    assert_eq!(reports[0]["rows"], 2);
    assert!(server.requests().is_empty());
    assert_eq!(test.entries(), ["in.jsonl"]);
    test.args(["reveal", "ask", "in.jsonl", "--classes", "cat,dog,bird"])
        .args(["--base-url", &server.base_url(), "--model", "m1,m2"])
        .args(["--text-col", "text", "--out", "answers-{model}.jsonl"])
        .run()
        .success();
    for model in ["m1", "m2"] {
        let answers = test.read_lines(&format!("answers-{model}.jsonl"));
        assert_eq!(answers.len(), 2);
    }
    let models: Vec<Value> = server
        .requests()
        .iter()
        .map(|l| l.body["model"].clone())
        .collect();
    assert_eq!(models, ["m1", "m1", "m2", "m2"]);
    // A later model's existing output is refused before the first model is asked.
    std::fs::remove_file(test.path("answers-m1.jsonl")).unwrap();
    let kept = std::fs::read(test.path("answers-m2.jsonl")).unwrap();
    test.args(["reveal", "ask", "in.jsonl", "--classes", "cat,dog,bird"])
        .args(["--base-url", &server.base_url(), "--model", "m1,m2"])
        .args(["--text-col", "text", "--out", "answers-{model}.jsonl"])
        .run()
        .invalid("answers-m2.jsonl");
    assert_eq!(server.requests().len(), 4);
    assert!(!test.path("answers-m1.jsonl").exists());
    // The existing output it refused is left as it was.
    assert_eq!(std::fs::read(test.path("answers-m2.jsonl")).unwrap(), kept);
}

#[test]
fn a_budget_stop_and_sigint_and_sigkill_keep_answers_and_resume_asks_each_row_once() {
    let server = ChatServer::start();
    let rows: Vec<String> = (0..24).map(|i| format!("row {i} shows a cat")).collect();
    let refs: Vec<&str> = rows.iter().map(String::as_str).collect();
    let mut test = Test::new().file("in.jsonl", texts(&refs));
    // A budget stop keeps what was answered.
    ask(&mut test, &server, "in.jsonl", "a.jsonl");
    let stopped = test
        .args([
            "--text-col",
            "text",
            "--max-requests",
            "5",
            "--concurrency",
            "1",
        ])
        .run();
    assert_eq!(stopped.code, 3, "{}", stopped.stderr);
    assert!(
        stopped.stderr.contains("--max-requests 5"),
        "{}",
        stopped.stderr
    );
    assert_eq!(journal_lines(&test, "a.jsonl"), 6);
    assert!(!test.path("a.jsonl").exists());
    // The same requests read under other rules are another run: not continued.
    ask(&mut test, &server, "in.jsonl", "a.jsonl");
    test.args(["--text-col", "text", "--resume", "--question", "single"])
        .run()
        .invalid("written by a different run");
    assert_eq!(server.requests().len(), 5);
    // Ctrl-C while asking.
    server.set_delay(Duration::from_millis(60));
    ask(&mut test, &server, "in.jsonl", "a.jsonl");
    test.args(["--text-col", "text", "--resume", "--concurrency", "2"]);
    let child = test
        .take_command()
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (code, stderr) = interrupt_when(
        &test,
        child,
        |t| journal_lines(t, "a.jsonl") >= 9,
        Duration::ZERO,
    );
    assert_eq!(code, Some(130), "{stderr}");
    assert!(stderr.contains("--resume"), "{stderr}");
    let after_sigint = journal_lines(&test, "a.jsonl");
    assert!(after_sigint < 25, "{after_sigint}");
    // SIGKILL: no chance to clean up; the journal's complete lines survive.
    ask(&mut test, &server, "in.jsonl", "a.jsonl");
    test.args(["--text-col", "text", "--resume", "--concurrency", "2"]);
    let mut child = test
        .take_command()
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while journal_lines(&test, "a.jsonl") < after_sigint + 3 {
        assert!(started.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!test.path("a.jsonl").exists());
    server.set_delay(Duration::ZERO);
    ask(&mut test, &server, "in.jsonl", "a.jsonl");
    test.args(["--text-col", "text", "--resume"])
        .run()
        .success();
    let answers = test.read_lines("a.jsonl");
    assert_eq!(answers.len(), 24);
    assert!(answers.iter().all(|a| a["pred"] == json!(["cat"])));
    let ids: Vec<&str> = answers.iter().map(|a| a["id"].as_str().unwrap()).collect();
    let expected: Vec<String> = (0..24).map(|i| format!("r{i}")).collect();
    assert_eq!(ids, expected);
    // Every row was asked exactly once over the four runs (a request in flight at SIGKILL
    // may be asked twice: its answer never reached the journal).
    let counts = server.counts();
    assert_eq!(counts.len(), 24);
    let twice = counts.values().filter(|&&n| n == 2).count();
    assert!(counts.values().all(|&n| n <= 2) && twice <= 2, "{counts:?}");
    assert!(!test.path("a.jsonl.curate-journal").exists());
}

#[test]
fn image_bytes_in_a_binary_column_are_sent_and_the_answers_read_back_in_pandas() {
    let Some(python) =
        crate::test::python_importing("pandas, pyarrow", Some("CURATE_REQUIRE_PANDAS"))
    else {
        return;
    };
    let server = ChatServer::start();
    let test = Test::new();
    let script = r#"
import sys, pyarrow as pa, pyarrow.parquet as pq
sig = b"\x89PNG\r\n\x1a\n"
pq.write_table(pa.table({"id": [10, 11, 12],
    "image": [sig + b"a dog", sig + b"a cat and a bird", b"GIF89a not allowed"]}),
    sys.argv[1])
pq.write_table(pa.table({"id": [10, 11], "image": [sig + b"a dog", sig + b"a cat"]}), sys.argv[2])
"#;
    let made = std::process::Command::new(&python)
        .args(["-c", script])
        .arg(test.path("bad.parquet"))
        .arg(test.path("good.parquet"))
        .status()
        .unwrap();
    assert!(made.success());
    let mut test = test;
    ask(&mut test, &server, "bad.parquet", "a.parquet");
    test.args(["--image-col", "image"]).run().invalid("row 3");
    assert!(server.requests().is_empty());
    ask(&mut test, &server, "good.parquet", "a.parquet");
    test.args(["--image-col", "image", "--scores", "yes-no"])
        .run()
        .success();
    let url = server.requests()[0].body["messages"][1]["content"][1]["image_url"]["url"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(url.starts_with("data:image/png;base64,"), "{url}");
    let read = std::process::Command::new(&python)
        .args([
            "-c",
            "import sys, pandas as pd; a = pd.read_parquet(sys.argv[1]); \
             print(a.id.tolist(), [p.tolist() for p in a.pred], [p.tolist() for p in a.probs])",
        ])
        .arg(test.path("a.parquet"))
        .output()
        .unwrap();
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&read.stdout).trim(),
        "[10, 11] [['dog'], ['cat']] [[0.2, 0.8, 0.2], [0.8, 0.2, 0.2]]"
    );
}

#[test]
fn a_cost_budget_stops_the_run_at_the_prices_given_and_the_dry_run_prices_it() {
    let server = ChatServer::start();
    let rows: Vec<String> = (0..6).map(|i| format!("row {i}: a dog")).collect();
    let refs: Vec<&str> = rows.iter().map(String::as_str).collect();
    let mut test = Test::new().file("in.jsonl", texts(&refs));
    // 1 per thousand tokens: each request costs about 0.1.
    let priced = ["--price-per-mtok", "1000,1000"];
    ask(&mut test, &server, "in.jsonl", "a.jsonl");
    let estimate = test
        .args(["--text-col", "text", "--dry-run", "--max-cost", "0.2"])
        .args(priced)
        .run()
        .success();
    let estimate: Value = serde_json::from_str(estimate.stdout.trim()).unwrap();
    let cost = estimate["estimated_cost"].as_f64().unwrap();
    let tokens = estimate["estimated_total_tokens"].as_f64().unwrap();
    assert!((cost - tokens / 1000.0).abs() < 1e-9, "{estimate}");
    assert_eq!(estimate["within_budget"], false);
    ask(&mut test, &server, "in.jsonl", "a.jsonl");
    let stopped = test
        .args([
            "--text-col",
            "text",
            "--max-cost",
            "0.2",
            "--concurrency",
            "1",
        ])
        .args(priced)
        .run();
    assert_eq!(stopped.code, 3, "{}", stopped.stderr);
    assert!(
        stopped.stderr.contains("--max-cost 0.2"),
        "{}",
        stopped.stderr
    );
    let sent = server.requests().len();
    assert!((1..6).contains(&sent), "{sent}");
    ask(&mut test, &server, "in.jsonl", "a.jsonl");
    let done = test
        .args(["--text-col", "text", "--resume"])
        .args(priced)
        .run()
        .success();
    assert!(done.stderr.contains("cost: 0."), "{}", done.stderr);
    assert_eq!(server.requests().len(), 6);
    assert_eq!(test.read_lines("a.jsonl").len(), 6);
    ask(&mut test, &server, "in.jsonl", "b.jsonl");
    test.args(["--text-col", "text", "--max-cost", "1"])
        .run()
        .invalid("--max-cost needs --price-per-mtok");
    ask(&mut test, &server, "in.jsonl", "b.jsonl");
    test.args(["--text-col", "text", "--price-per-mtok", "1"])
        .run()
        .invalid("--price-per-mtok takes two prices");
}

#[test]
fn rows_no_model_answered_are_left_out_of_the_vote_not_an_error() {
    let server = ChatServer::start();
    let rows = [
        "photo 0: a cat",
        "photo 1: a dog",
        "photo 2: a bird",
        "photo 3: a cat",
        "photo 4: a dog",
        "photo 5: a bird #garbage",
        "photo 6: a cat and a dog",
        "photo 7: a bird",
    ];
    // Given labels: right but for r4 (labelled cat, shows a dog).
    let given = ["cat", "dog", "bird", "cat", "cat", "bird", "cat", "bird"];
    let labels: String = given
        .iter()
        .enumerate()
        .map(|(i, l)| format!("{}\n", json!({"id": format!("r{i}"), "label": l})))
        .collect();
    let mut test = Test::new()
        .file("in.jsonl", texts(&rows))
        .file("labels.jsonl", labels);
    test.args(["reveal", "ask", "in.jsonl", "--classes", "cat,dog,bird"])
        .args(["--base-url", &server.base_url(), "--model", "m1,m2"])
        .args(["--text-col", "text", "--out", "answers-{model}.jsonl"])
        .args(["--parse-retries", "0"])
        .run()
        .success();
    // r5 has no answer from either model, r6 two classes from both: no vote for them.
    test.args([
        "reveal",
        "--labels",
        "labels.jsonl",
        "--classes",
        "cat,dog,bird",
    ])
    .args([
        "--source",
        "m1=answers-m1.jsonl:set",
        "--source",
        "m2=answers-m2.jsonl:set",
    ])
    .args(["--out", "issues.jsonl"])
    .run()
    .success();
    let issues = by_id(&test.read_lines("issues.jsonl"));
    let flagged: Vec<&str> = (0..8)
        .map(|i| format!("r{i}"))
        .filter(|id| issues[id]["is_label_issue"] == true)
        .map(|id| if id == "r4" { "r4" } else { "other" })
        .collect();
    assert_eq!(flagged, ["r4"]);
    assert_eq!(issues["r4"]["suggested_label"], "dog");
    for id in ["r5", "r6"] {
        assert_eq!(issues[id]["vote_issue"], false, "{:?}", issues[id]);
    }
}

#[test]
fn answers_go_to_stdout_as_json_lines_with_messages_on_stderr() {
    let server = ChatServer::start();
    let mut test = Test::new().file("in.jsonl", texts(&["a cat", "a dog"]));
    let outcome = test
        .args([
            "reveal",
            "ask",
            "in.jsonl",
            "--out",
            "-",
            "--classes",
            "cat,dog",
        ])
        .args(["--base-url", &server.base_url(), "--model", "labeller"])
        .args(["--text-col", "text", "--quiet"])
        .run()
        .success();
    let answers = outcome.json_lines();
    assert_eq!(answers.len(), 2);
    assert_eq!(answers[1]["pred"], json!(["dog"]));
    assert!(!outcome.stderr.contains("wrote"), "{}", outcome.stderr);
    assert_eq!(test.entries(), ["in.jsonl"]);
}
