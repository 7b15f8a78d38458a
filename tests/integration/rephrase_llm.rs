//! `curate rephrase --mode llm-boundaries|llm-rewrite` against a real HTTP server in this
//! process ([`ChatServer`]): success, retries, unusable replies, budgets, the journal and
//! `--resume` (after a budget stop and after Ctrl-C), the cache, `--dry-run`, endpoint
//! failures and rewrite's drift check.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};

use crate::chat_server::ChatServer;
use crate::model::fixture;
use crate::rephrase::{assert_rebuilds, jsonl};
use crate::test::{Test, interrupt_when, journal_lines};

/// A trace whose fourth paragraph only checks the work: the model ends units after the first
/// and third, and the check joins the last.
fn trace(i: usize, directives: &str) -> Value {
    json!({
        "id": format!("t{i}"),
        "question": format!("Problem {i}: double 3 + 4. {directives}").trim().to_string(),
        "response": format!(
            "<think>\nRecord {i}: 3 + 4 = 7, so the answer is 7.\n\nWait, the question asks \
             for double.\n\nDouble 7 is 14. So the answer is \\boxed{{14}}.\n\nLet me verify: \
             14 / 2 = 7.\n</think>\n\nThe answer is $\\boxed{{14}}$."
        ),
        "reference": "14",
    })
}

fn traces(directives: &[&str]) -> (Vec<Value>, String) {
    let rows: Vec<Value> = directives
        .iter()
        .enumerate()
        .map(|(i, d)| trace(i, d))
        .collect();
    let body = rows.iter().map(|r| format!("{r}\n")).collect();
    (rows, body)
}

/// `curate rephrase IN --mode MODE` against `server`, writing `out`.
fn rephrase(test: &mut Test, server: &ChatServer, mode: &str, input: &str, out: &str) {
    test.args(["rephrase", input, "--out", out, "--mode", mode])
        .args(["--base-url", &server.base_url(), "--model", "test-model"]);
}

#[test]
fn boundaries_mode_cuts_units_from_the_original_bytes() {
    let server = ChatServer::start();
    let path = fixture("rephrase/r1_traces.jsonl");
    let inputs = jsonl(&path);
    let mut test = Test::new();
    rephrase(
        &mut test,
        &server,
        "llm-boundaries",
        path.to_str().unwrap(),
        "t.jsonl",
    );
    test.args([
        "--format",
        "turns",
        "--rejects",
        "r.jsonl",
        "--stats",
        "s.json",
    ])
    .args(["--api-key-env", "CURATE_TEST_KEY"])
    .env("CURATE_TEST_KEY", "sk-test")
    .run()
    .success();
    let turns = test.read_lines("t.jsonl");
    // The same records as rules mode accepts, each rebuilt byte for byte from its spans.
    assert_eq!(assert_rebuilds(&inputs, &turns, true), 9);
    let rejects = test.read_lines("r.jsonl");
    let reasons: Vec<&str> = rejects
        .iter()
        .map(|r| r["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons,
        ["no_think_tags", "malformed_tags", "no_final_answer"]
    );
    // One request per record that needs one: none for those rejected up front, nor for
    // "incorrect-final", whose thinking is one paragraph and so one unit.
    let requests = server.requests();
    assert_eq!(requests.len(), 8);
    for logged in &requests {
        assert_eq!(logged.path, "/v1/chat/completions");
        assert_eq!(logged.body["model"], "test-model");
        assert_eq!(logged.body["temperature"], 0);
        assert_eq!(logged.authorization.as_deref(), Some("Bearer sk-test"));
    }
    assert!(server.counts().values().all(|&n| n == 1));
    // The model ended units at every stated answer: the first unit of the first trace closes
    // at "the answer is 42"; a check paragraph after the last answer joins the last unit.
    let first: Vec<&Value> = turns
        .iter()
        .filter(|t| t["id"] == "switch-and-check")
        .collect();
    assert_eq!(first[0]["answer"], "The answer is $\\boxed{42}$.");
    assert_eq!(
        first.last().unwrap()["answer"],
        "The answer is $\\boxed{21}$."
    );
    let stats: Value = serde_json::from_slice(&test.read("s.json")).unwrap();
    assert_eq!(stats["llm"]["requests"], 8);
    assert_eq!(stats["llm"]["retries"], 0);
    assert_eq!(stats["llm"]["records_asked"], 8);
    assert_eq!(stats["llm"]["without_request"], 4);
    assert_eq!(stats["llm"]["served_model"], Value::Null);
    assert!(stats["llm"]["tokens"].as_u64().unwrap() > 0);
    assert_eq!(stats["accepted"], 9);
    // A completed run leaves no journal.
    assert_eq!(journal_lines(&test, "t.jsonl"), 0);
}

#[test]
fn transient_failures_are_retried_until_they_pass() {
    let server = ChatServer::start();
    let (rows, body) = traces(&["#429", "#429-wait", "#500", "#slow", "#drop", "#html", ""]);
    let mut test = Test::new().file("in.jsonl", body);
    rephrase(&mut test, &server, "llm-boundaries", "in.jsonl", "o.jsonl");
    test.args(["--format", "turns", "--stats", "s.json", "--timeout", "1"])
        .args(["--max-retries", "3", "--concurrency", "3"])
        .run()
        .success();
    let turns = test.read_lines("o.jsonl");
    assert_eq!(assert_rebuilds(&rows, &turns, true), rows.len());
    let counts = server.counts();
    for row in &rows {
        let question = row["question"].as_str().unwrap();
        let expected = if question.contains('#') { 2 } else { 1 };
        assert_eq!(counts[question], expected, "{question}");
    }
    // Retry-After: 1 was honoured.
    let waited: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|l| l.question().contains("#429-wait"))
        .map(|l| l.at)
        .collect();
    assert!(waited[1] - waited[0] >= Duration::from_millis(950));
    let stats: Value = serde_json::from_slice(&test.read("s.json")).unwrap();
    // Five retries (429, 429, 500, a timeout, a dropped connection); the non-JSON 200 is an
    // unusable reply, asked again.
    assert_eq!(stats["llm"]["retries"], 5);
    assert_eq!(stats["llm"]["repairs"], 1);
    assert_eq!(stats["llm"]["requests"], 13);
}

#[test]
fn unusable_replies_are_asked_again_then_rejected() {
    let server = ChatServer::start();
    let (_, body) = traces(&["#garbage-once", "#garbage", "#400"]);
    let mut test = Test::new().file("in.jsonl", body);
    rephrase(&mut test, &server, "llm-boundaries", "in.jsonl", "o.jsonl");
    test.args(["--rejects", "r.jsonl", "--parse-retries", "1"])
        .run()
        .success();
    let out = test.read_lines("o.jsonl");
    assert_eq!(out.len(), 1);
    assert_eq!(out[0]["id"], "t0");
    // The second request quotes the unusable reply and says what was wrong with it.
    let repaired: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|l| l.question().contains("#garbage-once"))
        .collect();
    assert_eq!(repaired.len(), 2);
    let messages = repaired[1].body["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 4);
    assert_eq!(messages[2]["role"], "assistant");
    assert!(
        messages[3]["content"]
            .as_str()
            .unwrap()
            .contains("cannot be used")
    );
    let rejects = test.read_lines("r.jsonl");
    assert_eq!(rejects.len(), 2);
    assert_eq!(rejects[0]["id"], "t1");
    assert_eq!(rejects[0]["reason"], "unusable_reply");
    assert!(
        rejects[0]["detail"]
            .as_str()
            .unwrap()
            .contains("not the JSON asked for")
    );
    assert!(
        rejects[0]["response"]
            .as_str()
            .unwrap()
            .starts_with("<think>")
    );
    assert_eq!(rejects[1]["reason"], "request_rejected");
    assert!(
        rejects[1]["detail"]
            .as_str()
            .unwrap()
            .contains("HTTP 400: this model's maximum")
    );
    let counts = server.counts();
    let asked = |directive: &str| {
        counts
            .iter()
            .find(|(q, _)| q.ends_with(directive))
            .map(|(_, n)| *n)
    };
    assert_eq!(asked("#garbage"), Some(2));
    assert_eq!(asked("#400"), Some(1));
}

#[test]
fn a_spent_budget_stops_the_run_and_resume_finishes_it() {
    let server = ChatServer::start();
    let (rows, body) = traces(&[""; 10]);
    let mut test = Test::new().file("in.jsonl", body);
    rephrase(&mut test, &server, "llm-boundaries", "in.jsonl", "o.jsonl");
    let stopped = test
        .args(["--concurrency", "1", "--max-requests", "4"])
        .run();
    assert_eq!(stopped.code, 3, "{}", stopped.stderr);
    assert!(
        stopped.stderr.contains("--max-requests 4"),
        "{}",
        stopped.stderr
    );
    assert!(
        stopped.stderr.contains("4 of 10 answers are kept"),
        "{}",
        stopped.stderr
    );
    assert_eq!(stopped.stderr.trim_end().lines().count(), 1);
    assert!(!test.path("o.jsonl").exists());
    assert_eq!(journal_lines(&test, "o.jsonl"), 5);
    assert_eq!(server.requests().len(), 4);
    // Without --resume the journal is not silently dropped.
    rephrase(&mut test, &server, "llm-boundaries", "in.jsonl", "o.jsonl");
    test.run().invalid("pass --resume to continue it");
    rephrase(&mut test, &server, "llm-boundaries", "in.jsonl", "o.jsonl");
    test.args(["--resume", "--stats", "s.json"]).run().success();
    // Every record once, in input order; every question asked exactly once over both runs.
    let ids: Vec<Value> = test
        .read_lines("o.jsonl")
        .iter()
        .map(|r| r["id"].clone())
        .collect();
    let expected: Vec<Value> = rows.iter().map(|r| r["id"].clone()).collect();
    assert_eq!(ids, expected);
    assert_eq!(server.requests().len(), 10);
    assert!(server.counts().values().all(|&n| n == 1));
    let stats: Value = serde_json::from_slice(&test.read("s.json")).unwrap();
    assert_eq!(stats["llm"]["from_journal"], 4);
    assert_eq!(
        stats["llm"]["records_asked"], 6,
        "the journal answered the others"
    );
    assert_eq!(stats["llm"]["requests"], 6);
    assert_eq!(journal_lines(&test, "o.jsonl"), 0);
    // A token budget below one request's estimate sends nothing.
    let server = ChatServer::start();
    rephrase(&mut test, &server, "llm-boundaries", "in.jsonl", "p.jsonl");
    let stopped = test.args(["--max-total-tokens", "10"]).run();
    assert_eq!(stopped.code, 3);
    assert!(
        stopped.stderr.contains("--max-total-tokens 10"),
        "{}",
        stopped.stderr
    );
    assert!(server.requests().is_empty());
}

#[test]
fn ctrl_c_keeps_the_journal_and_resume_loses_nothing() {
    let server = ChatServer::start();
    server.set_delay(Duration::from_millis(100));
    let (rows, body) = traces(&[""; 30]);
    let mut test = Test::new().file("in.jsonl", body);
    rephrase(&mut test, &server, "llm-boundaries", "in.jsonl", "o.jsonl");
    test.args(["--concurrency", "2", "--format", "turns"]);
    let child = test
        .take_command()
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Once some answers are journaled, with many still to come.
    let answered = |test: &Test| journal_lines(test, "o.jsonl") >= 6;
    let (code, stderr) = interrupt_when(&test, child, answered, Duration::ZERO);
    assert_eq!(code, Some(130), "{stderr}");
    assert!(stderr.contains("--resume"), "{stderr}");
    assert!(!test.path("o.jsonl").exists());
    assert!(!test.entries().iter().any(|e| e.ends_with(".curate-tmp")));
    let kept = journal_lines(&test, "o.jsonl") - 1;
    assert!(kept < 30, "{kept}");
    rephrase(&mut test, &server, "llm-boundaries", "in.jsonl", "o.jsonl");
    test.args(["--concurrency", "2", "--format", "turns", "--resume"])
        .run()
        .success();
    let turns = test.read_lines("o.jsonl");
    assert_eq!(assert_rebuilds(&rows, &turns, true), 30);
    // Each record's units appear once, and each question was asked exactly once in all.
    let mut units: HashMap<String, usize> = HashMap::new();
    for turn in &turns {
        *units
            .entry(turn["id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert!(units.values().all(|&n| n == 3), "{units:?}");
    let counts = server.counts();
    assert_eq!(counts.len(), 30);
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");
}

#[test]
fn cached_replies_are_not_asked_again() {
    let server = ChatServer::start();
    let (_, body) = traces(&["", "", "", ""]);
    let mut test = Test::new().file("in.jsonl", body);
    for out in ["a.jsonl", "b.jsonl"] {
        rephrase(&mut test, &server, "llm-boundaries", "in.jsonl", out);
        test.args(["--cache-dir", "cache", "--stats", &format!("{out}.stats")])
            .run()
            .success();
    }
    assert_eq!(server.requests().len(), 4);
    assert_eq!(test.read("a.jsonl"), test.read("b.jsonl"));
    let stats: Value = serde_json::from_slice(&test.read("b.jsonl.stats")).unwrap();
    assert_eq!(stats["llm"]["cache_hits"], 4);
    assert_eq!(stats["llm"]["requests"], 0);
    // The dry run counts what the cache holds and sends nothing.
    rephrase(&mut test, &server, "llm-boundaries", "in.jsonl", "c.jsonl");
    let estimate = test
        .args(["--cache-dir", "cache", "--dry-run"])
        .run()
        .success();
    let estimate: Value = serde_json::from_str(estimate.stdout.trim()).unwrap();
    assert_eq!(estimate["cached"], 4);
    assert_eq!(estimate["requests"], 0);
    assert_eq!(server.requests().len(), 4);
}

#[test]
fn dry_run_estimates_requests_and_tokens_and_sends_nothing() {
    let server = ChatServer::start();
    let path = fixture("rephrase/r1_traces.jsonl");
    let mut test = Test::new();
    rephrase(
        &mut test,
        &server,
        "llm-rewrite",
        path.to_str().unwrap(),
        "o.jsonl",
    );
    let outcome = test
        .args(["--dry-run", "--max-total-tokens", "100"])
        .run()
        .success();
    let estimate: Value = serde_json::from_str(outcome.stdout.trim()).unwrap();
    assert_eq!(estimate["records"], 12);
    assert_eq!(estimate["without_request"], 3);
    assert_eq!(estimate["requests"], 9);
    let total = estimate["estimated_total_tokens"].as_u64().unwrap();
    assert_eq!(
        total,
        estimate["estimated_prompt_tokens"].as_u64().unwrap()
            + estimate["estimated_completion_tokens"].as_u64().unwrap()
    );
    assert!(total > 900, "{total}");
    assert_eq!(estimate["within_budget"], false);
    assert!(outcome.stderr.contains("nothing was sent"));
    assert!(server.requests().is_empty());
    assert_eq!(test.entries(), Vec::<String>::new());
}

#[test]
fn endpoint_failures_exit_3_with_one_line_and_no_output() {
    let server = ChatServer::start();
    let (_, body) = traces(&["#401"]);
    let mut test = Test::new().file("in.jsonl", body);
    rephrase(&mut test, &server, "llm-boundaries", "in.jsonl", "o.jsonl");
    let failed = test.run();
    assert_eq!(failed.code, 3, "{}", failed.stderr);
    assert!(
        failed.stderr.contains("HTTP 401: invalid api key"),
        "{}",
        failed.stderr
    );
    assert_eq!(failed.stderr.trim_end().lines().count(), 1);
    assert!(!test.path("o.jsonl").exists());
    // A wrong path and a redirect are reported, not followed.
    for (base, needle) in [
        (
            format!("http://127.0.0.1:{}/api", server.port()),
            "HTTP 404: no such route",
        ),
        (
            format!("http://127.0.0.1:{}/old/v1", server.port()),
            "HTTP 301: redirected to",
        ),
    ] {
        test.args([
            "rephrase",
            "in.jsonl",
            "--out",
            "q.jsonl",
            "--mode",
            "llm-boundaries",
        ])
        .args(["--base-url", &base, "--model", "m", "--force"]);
        let failed = test.run();
        assert_eq!(failed.code, 3, "{}", failed.stderr);
        assert!(failed.stderr.contains(needle), "{}", failed.stderr);
        assert!(!test.path("q.jsonl").exists());
    }
    // Nobody listening: connection errors are retried, then the run fails.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    test.args([
        "rephrase",
        "in.jsonl",
        "--out",
        "p.jsonl",
        "--mode",
        "llm-boundaries",
    ])
    .args([
        "--base-url",
        &format!("http://127.0.0.1:{port}"),
        "--model",
        "m",
    ])
    .args(["--max-retries", "1"]);
    let failed = test.run();
    assert_eq!(failed.code, 3, "{}", failed.stderr);
    assert!(
        failed.stderr.contains("after 2 attempts"),
        "{}",
        failed.stderr
    );
    assert!(!test.path("p.jsonl").exists());
}

#[test]
fn rewrite_mode_checks_drift_and_the_final_answer() {
    let server = ChatServer::start();
    let (_, body) = traces(&["", "#drift", "#wrong-answer"]);
    let mut test = Test::new().file("in.jsonl", body);
    rephrase(&mut test, &server, "llm-rewrite", "in.jsonl", "t.jsonl");
    test.args([
        "--format",
        "turns",
        "--rejects",
        "r.jsonl",
        "--stats",
        "s.json",
    ])
    .run()
    .success();
    let turns = test.read_lines("t.jsonl");
    // The check paragraph has no answer of its own: the rewrite keeps it in the last unit.
    assert_eq!(turns.len(), 2);
    assert_eq!(
        turns[0]["thinking"],
        "Record 0: 3 + 4 = 7, so the answer is 7."
    );
    assert_eq!(turns[0]["answer"], "The answer is $\\boxed{7}$.");
    assert_eq!(turns[1]["answer"], "The answer is $\\boxed{14}$.");
    assert_eq!(turns[1]["correct"], true);
    assert_eq!(turns[0]["drift"], 0.0);
    assert_eq!(turns[0]["span_start"], Value::Null);
    let rejects = test.read_lines("r.jsonl");
    let reasons: Vec<&str> = rejects
        .iter()
        .map(|r| r["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, ["drift", "answer_altered"]);
    assert!(
        rejects[0]["detail"]
            .as_str()
            .unwrap()
            .contains("--max-drift 0.3")
    );
    assert!(rejects[1]["detail"].as_str().unwrap().contains("\"999\""));
    // A looser drift limit lets the drifted rewrite through.
    rephrase(&mut test, &server, "llm-rewrite", "in.jsonl", "c.jsonl");
    test.args(["--max-drift", "1", "--rejects", "cr.jsonl"])
        .run()
        .success();
    let completions = test.read_lines("c.jsonl");
    assert_eq!(completions.len(), 2);
    let text = completions[0]["completion"].as_str().unwrap();
    assert!(text.starts_with("<think>\nRecord 0: 3 + 4 = 7"), "{text}");
    assert!(
        text.ends_with("</think>\n\nThe answer is $\\boxed{14}$."),
        "{text}"
    );
}

#[test]
fn llm_flags_are_checked_before_anything_happens() {
    let (_, body) = traces(&[""]);
    let mut test = Test::new().file("in.jsonl", body);
    let base = ["rephrase", "in.jsonl", "--out", "o.jsonl"];
    for (extra, needle) in [
        (
            vec!["--mode", "llm-boundaries", "--model", "m"],
            "needs --base-url",
        ),
        (
            vec!["--mode", "llm-rewrite", "--base-url", "http://h/v1"],
            "needs --model",
        ),
        (
            vec![
                "--mode",
                "llm-rewrite",
                "--base-url",
                "h:8000",
                "--model",
                "m",
            ],
            "http:// or https://",
        ),
        (
            vec!["--base-url", "http://h/v1"],
            "--base-url is for the LLM modes",
        ),
        (vec!["--dry-run"], "--dry-run is for the LLM modes"),
        (
            vec![
                "--mode",
                "llm-boundaries",
                "--base-url",
                "http://h",
                "--model",
                "m",
                "--api-key-env",
                "CURATE_NO_SUCH_VAR",
            ],
            "CURATE_NO_SUCH_VAR: the variable is not set",
        ),
        (
            vec![
                "--mode",
                "llm-boundaries",
                "--base-url",
                "http://h",
                "--model",
                "m",
                "--concurrency",
                "0",
            ],
            "--concurrency must be at least 1",
        ),
    ] {
        test.args(base).args(extra).run().invalid(needle);
    }
    test.args([
        "rephrase",
        "in.jsonl",
        "--out",
        "-",
        "--mode",
        "llm-boundaries",
    ])
    .args(["--base-url", "http://h", "--model", "m", "--resume"])
    .run()
    .invalid("--resume needs --out FILE");
    assert_eq!(test.entries(), ["in.jsonl"]);
}

#[test]
fn a_server_answering_as_another_model_is_flagged_once() {
    let server = ChatServer::start();
    let path = fixture("rephrase/r1_traces.jsonl");
    let mut test = Test::new();
    test.args(["rephrase", path.to_str().unwrap(), "--out", "o.jsonl"])
        .args(["--mode", "llm-boundaries", "--base-url", &server.base_url()])
        .args(["--model", "not-the-served-model", "--stats", "s.json"]);
    let outcome = test.run().success();
    let warned =
        "asked for model \"not-the-served-model\", the server answered as \"/models/served.gguf\"";
    assert_eq!(
        outcome.stderr.matches(warned).count(),
        1,
        "{}",
        outcome.stderr
    );
    let stats: Value = serde_json::from_slice(&test.read("s.json")).unwrap();
    assert_eq!(stats["llm"]["served_model"], "/models/served.gguf");
}

#[test]
fn a_reply_cut_at_the_token_limit_is_asked_again_shorter_not_resent() {
    let server = ChatServer::start();
    let (_, body) = traces(&["#loop"]);
    let mut test = Test::new().file("in.jsonl", body);
    rephrase(&mut test, &server, "llm-boundaries", "in.jsonl", "o.jsonl");
    test.args(["--max-tokens", "300"]).run().success();
    assert_eq!(test.read_lines("o.jsonl").len(), 1);
    let asked = server.requests();
    assert_eq!(asked.len(), 2);
    // Every request bounds its reply; the re-ask allows more and asks for brevity.
    assert_eq!(asked[0].body["max_tokens"], 300);
    assert_eq!(asked[1].body["max_tokens"], 600);
    let messages = asked[1].body["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 3, "the cut reply is not quoted back");
    assert!(messages[2]["content"].as_str().unwrap().contains("cut off"));
}

#[test]
fn replies_of_an_unfinished_re_ask_are_kept_and_replayed_on_resume() {
    let server = ChatServer::start();
    let (_, body) = traces(&["#garbage-once"]);
    let mut test = Test::new().file("in.jsonl", body);
    // The budget allows the first, unusable reply but not the re-ask.
    rephrase(&mut test, &server, "llm-boundaries", "in.jsonl", "o.jsonl");
    let stopped = test.args(["--max-requests", "1"]).run();
    assert_eq!(stopped.code, 3, "{}", stopped.stderr);
    assert!(test.path("o.jsonl.curate-replies").is_dir());
    rephrase(&mut test, &server, "llm-boundaries", "in.jsonl", "o.jsonl");
    test.arg("--resume").run().success();
    // The unusable reply came back from the run's own store: only the re-ask was sent.
    let asked = server.requests();
    assert_eq!(asked.len(), 2, "{asked:?}");
    assert_eq!(asked[1].body["messages"].as_array().unwrap().len(), 4);
    assert_eq!(test.read_lines("o.jsonl").len(), 1);
    // A finished run removes its journal and its replies.
    assert_eq!(test.entries(), ["in.jsonl", "o.jsonl"]);
}
