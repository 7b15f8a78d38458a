//! `curate rephrase` through the binary: hand-written R1 traces that exercise every marker and
//! merge rule, byte-exact reconstruction on the CHAMP solutions, output formats, rejects.

use serde_json::Value;

use crate::model::fixture;
use crate::test::Test;

pub fn jsonl(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Every accepted record's unit spans, then its final answer, put the response back together
/// (less the think tags), in order and without gaps.
pub fn assert_rebuilds(inputs: &[Value], turns: &[Value], think_tags: bool) -> usize {
    let mut accepted = 0;
    for input in inputs {
        let units: Vec<&Value> = turns.iter().filter(|t| t["id"] == input["id"]).collect();
        if units.is_empty() {
            continue;
        }
        accepted += 1;
        let response = input["response"].as_str().unwrap();
        let mut rebuilt = String::new();
        let mut at = units[0]["span_start"].as_u64().unwrap() as usize;
        for unit in &units {
            let (start, end) = (
                unit["span_start"].as_u64().unwrap() as usize,
                unit["span_end"].as_u64().unwrap() as usize,
            );
            assert_eq!(start, at, "{}: gap before unit", input["id"]);
            assert_eq!(
                unit["thinking"].as_str().unwrap(),
                response[start..end].trim()
            );
            rebuilt.push_str(&response[start..end]);
            at = end;
        }
        let final_start = units[0]["final_start"].as_u64().unwrap() as usize;
        if think_tags {
            let close = response.find("</think>").unwrap();
            assert_eq!(at, close, "{}", input["id"]);
            assert_eq!(final_start, close + "</think>".len());
            let open = response.find("<think>").map_or(0, |o| o + "<think>".len());
            assert_eq!(units[0]["span_start"].as_u64().unwrap() as usize, open);
        } else {
            assert_eq!(units[0]["span_start"], 0);
            assert_eq!(at, final_start, "{}", input["id"]);
            rebuilt.push_str(&response[final_start..]);
            assert_eq!(rebuilt, response, "{}", input["id"]);
        }
        // The last unit closes with the original final answer text; a one-paragraph solution
        // has none apart from its own answer, which is then rendered like the others.
        let last = units.last().unwrap()["answer"].as_str().unwrap();
        if final_start < response.len() {
            assert_eq!(last, response[final_start..].trim());
        } else {
            assert!(last.starts_with("The answer is $\\boxed{"), "{last}");
        }
    }
    accepted
}

#[test]
fn r1_traces_follow_the_marker_and_merge_rules() {
    let path = fixture("rephrase/r1_traces.jsonl");
    let inputs = jsonl(&path);
    let mut test = Test::new();
    test.args([
        "rephrase",
        path.to_str().unwrap(),
        "--out",
        "t.jsonl",
        "--format",
        "turns",
    ])
    .args(["--rejects", "r.jsonl", "--stats", "s.json"])
    .run()
    .success();
    let turns = test.read_lines("t.jsonl");
    let rejects = test.read_lines("r.jsonl");
    for input in &inputs {
        let id = &input["id"];
        let units = turns.iter().filter(|t| &t["id"] == id).count();
        match input.get("expect_reject") {
            Some(reason) => {
                assert_eq!(units, 0, "{id}");
                let reject = rejects.iter().find(|r| &r["id"] == id).expect("in rejects");
                assert_eq!(&reject["reason"], reason, "{id}");
                assert_eq!(reject["response"], input["response"]);
            }
            None => assert_eq!(
                units as u64,
                input["expect_units"].as_u64().unwrap(),
                "{id}"
            ),
        }
    }
    assert_eq!(assert_rebuilds(&inputs, &turns, true), 9);
    // Intermediate answers are boxed; the last keeps the original final answer text.
    let first = &turns[0];
    assert_eq!(first["answer"], "The answer is $\\boxed{42}$.");
    let stats: Value = serde_json::from_slice(&test.read("s.json")).unwrap();
    assert_eq!(stats["accepted"], 9);
    assert_eq!(stats["rejects_by_reason"]["no_think_tags"], 1);
    // --require-correct rejects the wrong final answer, and only it among the accepted.
    test.args([
        "rephrase",
        path.to_str().unwrap(),
        "--out",
        "c.jsonl",
        "--require-correct",
    ])
    .args(["--rejects", "cr.jsonl"])
    .run()
    .success();
    let rejects = test.read_lines("cr.jsonl");
    let incorrect: Vec<&Value> = rejects
        .iter()
        .filter(|r| r["reason"] == "incorrect")
        .collect();
    assert_eq!(incorrect.len(), 1);
    assert_eq!(incorrect[0]["id"], "incorrect-final");
}

/// Solutions in numbered steps that state their result in the closing step, in the forms a
/// model writes them: each is accepted with the value it states, whatever the reference (the
/// reference only sets `correct`); one with no conclusion and one whose conclusion has no value
/// are rejected with a detail saying which, and the end of the response.
#[test]
fn numbered_steps_state_their_results() {
    let path = fixture("rephrase/numbered_steps.jsonl");
    let inputs = jsonl(&path);
    let mut test = Test::new();
    let run = |test: &mut Test, input: &str, out: &str, rejects: &str| {
        test.args(["rephrase", input, "--no-think-tags", "--format", "turns"])
            .args(["--out", out, "--rejects", rejects])
            .run()
            .success();
    };
    run(&mut test, path.to_str().unwrap(), "t.jsonl", "r.jsonl");
    let turns = test.read_lines("t.jsonl");
    let rejects = test.read_lines("r.jsonl");
    assert_eq!(assert_rebuilds(&inputs, &turns, false), inputs.len() - 2);
    for input in &inputs {
        let id = &input["id"];
        if let Some(reason) = input.get("expect_reject") {
            let reject = rejects.iter().find(|r| &r["id"] == id).expect("rejected");
            assert_eq!(&reject["reason"], reason, "{id}");
            let detail = reject["detail"].as_str().unwrap();
            assert!(
                detail.starts_with(input["expect_detail"].as_str().unwrap()),
                "{id}: {detail}"
            );
            let response = input["response"].as_str().unwrap();
            let tail = reject["tail"].as_str().unwrap();
            assert!(response.ends_with(tail) && !tail.is_empty(), "{id}");
            continue;
        }
        let last = turns.iter().rfind(|t| &t["id"] == id).expect("accepted");
        assert_eq!(last["answer_value"], input["expect_value"], "{id}");
        assert_eq!(
            last["correct"],
            input.get("expect_correct").cloned().unwrap_or(Value::Null),
            "{id}"
        );
    }
    // Without references the same records are accepted with the same values.
    let unreferenced: String = inputs
        .iter()
        .map(|input| {
            let mut row = input.clone();
            row.as_object_mut().unwrap().remove("reference");
            format!("{row}\n")
        })
        .collect();
    let mut bare = Test::new().file("bare.jsonl", unreferenced);
    run(&mut bare, "bare.jsonl", "t.jsonl", "r.jsonl");
    let values = |turns: &[Value]| -> Vec<(Value, Value)> {
        turns
            .iter()
            .map(|t| (t["id"].clone(), t["answer_value"].clone()))
            .collect()
    };
    assert_eq!(values(&bare.read_lines("t.jsonl")), values(&turns));
}

/// The acceptance run: all 1,080 CHAMP model solutions (plain text): every accepted
/// record rebuilds its original text exactly.
#[test]
#[cfg_attr(no_shared_data, ignore = "needs ../shared/data beside the checkout")]
fn champ_solutions_rebuild_exactly() {
    let data = crate::model::reference("../data/champ_solutions_0shot.jsonl");
    let prefix = "Solve the following problem. Make sure to show your work before giving the final answer.\n\n";
    let inputs: Vec<Value> = std::fs::read_to_string(data)
        .unwrap()
        .lines()
        .map(|l| {
            let row: Value = serde_json::from_str(l).unwrap();
            let user = row["messages"][1]["text"].as_str().unwrap();
            serde_json::json!({
                "id": format!("{}/{}", row["problem_id"].as_str().unwrap(), row["model"].as_str().unwrap()),
                "question": user.strip_prefix(prefix).unwrap_or(user),
                "response": row["solution"],
                "reference": row["reference_answer"],
            })
        })
        .collect();
    assert_eq!(inputs.len(), 1080);
    let body: String = inputs.iter().map(|v| format!("{v}\n")).collect();
    let mut test = Test::new().file("champ.jsonl", body);
    test.args([
        "rephrase",
        "champ.jsonl",
        "--no-think-tags",
        "--format",
        "turns",
    ])
    .args([
        "--out",
        "t.jsonl",
        "--rejects",
        "r.jsonl",
        "--stats",
        "s.json",
    ])
    .run()
    .success();
    let turns = test.read_lines("t.jsonl");
    let accepted = assert_rebuilds(&inputs, &turns, false);
    let rejects = test.read_lines("r.jsonl");
    // Nothing is dropped silently.
    assert_eq!(accepted + rejects.len(), 1080);
    let stats: Value = serde_json::from_slice(&test.read("s.json")).unwrap();
    assert_eq!(stats["accepted"].as_u64().unwrap() as usize, accepted);
    assert!(accepted > 1000, "{accepted}");
}

/// The same CHAMP solutions written as one paragraph of steps (blank lines removed), so the
/// closing step is the only place the result is stated: of the solutions whose reference is a
/// number, at least 95% must be accepted, each with the value its last step states; every
/// accepted record still rebuilds its text exactly.
#[test]
#[cfg_attr(no_shared_data, ignore = "needs ../shared/data beside the checkout")]
fn champ_solutions_as_one_paragraph_keep_their_stated_results() {
    let data = crate::model::reference("../data/champ_solutions_0shot.jsonl");
    let inputs: Vec<Value> = std::fs::read_to_string(data)
        .unwrap()
        .lines()
        .map(|l| {
            let row: Value = serde_json::from_str(l).unwrap();
            let solution = row["solution"].as_str().unwrap().trim();
            let lines: Vec<&str> = solution.lines().filter(|l| !l.trim().is_empty()).collect();
            serde_json::json!({
                "id": format!("{}/{}", row["problem_id"].as_str().unwrap(), row["model"].as_str().unwrap()),
                "question": "q",
                "response": lines.join("\n"),
                "reference": row["reference_answer"],
            })
        })
        .collect();
    let body: String = inputs.iter().map(|v| format!("{v}\n")).collect();
    let mut test = Test::new().file("flat.jsonl", body);
    test.args([
        "rephrase",
        "flat.jsonl",
        "--no-think-tags",
        "--format",
        "turns",
    ])
    .args(["--out", "t.jsonl", "--rejects", "r.jsonl"])
    .run()
    .success();
    let turns = test.read_lines("t.jsonl");
    assert_rebuilds(&inputs, &turns, false);
    let accepted: std::collections::HashSet<&Value> = turns.iter().map(|t| &t["id"]).collect();
    let numeric: Vec<&Value> = inputs
        .iter()
        .filter(|i| {
            let r = i["reference"].as_str().unwrap().replace(',', "");
            r.trim().parse::<f64>().is_ok()
        })
        .collect();
    let kept = numeric
        .iter()
        .filter(|i| accepted.contains(&i["id"]))
        .count();
    assert!(
        kept * 100 >= numeric.len() * 95,
        "{kept} of {} numeric-answer solutions accepted",
        numeric.len()
    );
    // Every reject says what was missing and shows the end of the solution.
    for reject in test.read_lines("r.jsonl") {
        assert_eq!(reject["reason"], "no_final_answer");
        let detail = reject["detail"].as_str().unwrap();
        assert!(
            detail.starts_with("no conclusion") || detail.starts_with("the closing step"),
            "{detail}"
        );
        assert!(reject["tail"].as_str().unwrap().chars().count() <= 200);
    }
}

#[test]
fn formats_shape_the_records() {
    let path = fixture("rephrase/r1_traces.jsonl");
    let path = path.to_str().unwrap();
    let mut test = Test::new();
    for (format, out) in [
        ("completion", "c.jsonl"),
        ("messages", "m.parquet"),
        ("messages", "m.jsonl"),
        ("sharegpt", "g.jsonl"),
    ] {
        test.args(["rephrase", path, "--out", out, "--format", format])
            .run()
            .success();
    }
    let completion = &test.read_lines("c.jsonl")[0];
    assert_eq!(completion["id"], "switch-and-check");
    assert_eq!(completion["prompt"], "What is 6 times 7, halved?");
    let text = completion["completion"].as_str().unwrap();
    assert!(text.starts_with("<think>\nFirst, 6 * 7 = 42"));
    assert!(text.ends_with("</think>\n\nThe answer is $\\boxed{21}$."));
    let messages = &test.read_lines("m.jsonl")[0]["messages"];
    let roles: Vec<&str> = messages
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(
        roles,
        [
            "user",
            "assistant",
            "user",
            "assistant",
            "user",
            "assistant"
        ]
    );
    assert_eq!(messages[2]["content"], "Continue.");
    let conversations = &test.read_lines("g.jsonl")[0]["conversations"];
    assert_eq!(conversations[1]["from"], "gpt");
    assert!(test.path("m.parquet").exists());
}

#[test]
fn invalid_input_exits_2_without_output() {
    let mut test = Test::new().file("a.jsonl", "{\"question\": \"q\", \"text\": \"t\"}\n");
    test.args(["rephrase", "a.jsonl", "--out", "o.jsonl"])
        .run()
        .invalid("column 'response'");
    assert!(!test.path("o.jsonl").exists());
    let mut test = Test::new()
        .file("a.jsonl", "{\"question\": \"q\", \"response\": \"t\"}\n")
        .file("m.txt", "maybe\tx\n");
    test.args([
        "rephrase",
        "a.jsonl",
        "--out",
        "o.jsonl",
        "--markers",
        "m.txt",
    ])
    .run()
    .invalid("m.txt: line 1: unknown marker kind 'maybe'");
    assert!(!test.path("o.jsonl").exists());
}

#[test]
fn shards_concatenate_to_the_whole_run() {
    let path = fixture("rephrase/r1_traces.jsonl");
    let path = path.to_str().unwrap();
    let mut test = Test::new();
    let run = |test: &mut Test, extra: &[&str], out: &str, rejects: &str| {
        test.args(["rephrase", path, "--format", "turns", "--out", out])
            .args(["--rejects", rejects])
            .args(extra)
            .run()
            .success();
    };
    run(&mut test, &[], "whole.jsonl", "whole-r.jsonl");
    let (mut turns, mut rejects) = (Vec::new(), Vec::new());
    for i in 0..3 {
        let (out, r) = (format!("s{i}.jsonl"), format!("s{i}-r.jsonl"));
        run(&mut test, &["--shard", &format!("{i}/3")], &out, &r);
        turns.extend(test.read_lines(&out));
        rejects.extend(test.read_lines(&r));
    }
    assert_eq!(turns, test.read_lines("whole.jsonl"));
    assert_eq!(rejects, test.read_lines("whole-r.jsonl"));
    test.args(["rephrase", path, "--out", "x.jsonl", "--shard", "3/3"])
        .run()
        .invalid("shards are numbered from 0 to 2");
}
