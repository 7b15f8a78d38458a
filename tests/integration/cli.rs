//! Global conventions: exit codes, streams, broken pipes.

use std::io::Read;
use std::process::Stdio;

use crate::test::{Test, curate_command, interrupt_once_staged};

#[test]
fn usage_errors_exit_2() {
    let out = Test::new().args(["inspect", "--no-such-flag", "x"]).run();
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("--no-such-flag"));
    assert_eq!(Test::new().args(["frobnicate"]).run().code, 2);
    // clap's errors print on one line like the rest, with the accepted values.
    Test::new()
        .args(["reveal", "--labels", "l.jsonl", "--out", "o.jsonl", "--fail-on", "bad"])
        .run()
        .invalid("invalid value 'bad' for '--fail-on <TYPE,...>'; [possible values: noisy, missing, ambiguous]");
    Test::new()
        .args(["reveal", "--labels", "l.jsonl"])
        .run()
        .invalid("the following required arguments were not provided: --out <FILE>");
    assert_eq!(Test::new().run().code, 2);
}

#[test]
fn help_and_version_go_to_stdout() {
    let help = Test::new().arg("--help").run().success();
    assert!(help.stdout.contains("Usage: curate"));
    assert!(help.stderr.is_empty());
    let version = Test::new().arg("--version").run().success();
    assert_eq!(
        version.stdout.trim(),
        format!("curate {}", env!("CARGO_PKG_VERSION"))
    );
}

/// The option headings of a help text, in order, each with the flags listed under it.
fn help_sections(help: &str) -> Vec<(String, Vec<String>)> {
    let mut sections: Vec<(String, Vec<String>)> = Vec::new();
    for line in help.lines() {
        if !line.starts_with(' ') && line.ends_with(':') && !line.starts_with("Usage") {
            sections.push((line.trim_end_matches(':').to_string(), Vec::new()));
        } else if let Some((_, flags)) = sections.last_mut() {
            let item = line.trim_start();
            if line.starts_with("  ") && item.starts_with('-') {
                flags.push(item.split_whitespace().next().unwrap().to_string());
            }
        }
    }
    sections
}

#[test]
fn long_commands_group_their_options_under_headings() {
    for (command, headings) in [
        (
            vec!["influence"],
            vec!["Inputs", "Model", "Method", "Long runs", "Output"],
        ),
        (
            vec!["train"],
            vec!["Model", "Inputs", "Training", "Long runs", "Output"],
        ),
        (
            vec!["eval"],
            vec!["Model", "Inputs", "Output", "Generation"],
        ),
        (
            vec!["reveal"],
            vec!["Inputs", "Output", "Detectors", "Decision", "Gate"],
        ),
        (
            vec!["rephrase"],
            vec!["Output", "Method", "Inputs", "LLM endpoint"],
        ),
        (
            vec!["reveal", "ask"],
            vec!["Output", "Method", "Inputs", "LLM endpoint"],
        ),
    ] {
        let mut long = command.clone();
        long.push("--help");
        let help = Test::new().args(long).run().success().stdout;
        let sections = help_sections(&help);
        let names: Vec<&str> = sections.iter().map(|(name, _)| name.as_str()).collect();
        for heading in &headings {
            assert!(
                names.contains(heading),
                "{command:?} --help lacks {heading}: {names:?}"
            );
        }
        assert_eq!(names.last(), Some(&"Global options"), "{command:?}");
        // Only help and version are left under the plain heading.
        let (_, plain) = sections
            .iter()
            .find(|(name, _)| name == "Options")
            .expect("clap's own heading");
        assert!(
            plain.iter().all(|flag| flag == "-h," || flag == "-V,"),
            "{command:?}: {plain:?}"
        );
        let mut short = command.clone();
        short.push("-h");
        let brief = Test::new().args(short).run().success().stdout;
        // Flags documented in more than a line show only their first with -h.
        assert!(
            brief.lines().count() <= help.lines().count(),
            "{command:?}: -h is longer"
        );
        if ["influence", "reveal", "rephrase"].contains(&command[0]) {
            assert!(
                brief.lines().count() * 4 < help.lines().count() * 3,
                "{command:?}: -h is not shorter"
            );
        }
    }
}

#[test]
fn quiet_silences_messages_but_not_data() {
    let mut test = Test::new().file("in.jsonl", "{\"a\": 1}\n");
    let out = test
        .args(["convert", "in.jsonl", "--out", "o.csv", "-q"])
        .run()
        .success();
    assert!(out.stderr.is_empty(), "{}", out.stderr);
    let out = test.args(["-q", "inspect", "o.csv"]).run().success();
    assert!(out.stdout.contains("o.csv"));
}

#[test]
fn broken_pipe_is_success() {
    let rows: String = (0..50_000)
        .map(|i| format!("{{\"id\": {i}, \"text\": \"row number {i} with some padding\"}}\n"))
        .collect();
    let test = Test::new().file("big.jsonl", rows);
    let mut child = curate_command(&test.path(""))
        .args(["convert", "big.jsonl", "--out", "-"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 16];
    stdout.read_exact(&mut first).unwrap();
    drop(stdout);
    let output = child.wait_with_output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn ctrl_c_stops_cleanly_without_output() {
    let rows: String = (0..1_500_000)
        .map(|i| format!("{{\"id\": {i}, \"text\": \"row {i}\"}}\n"))
        .collect();
    let test = Test::new().file("big.jsonl", rows);
    let child = curate_command(&test.path(""))
        .args(["convert", "big.jsonl", "--out", "out.parquet"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (code, stderr) = interrupt_once_staged(&test, child, std::time::Duration::ZERO);
    assert_eq!(code, Some(130), "{stderr}");
    assert!(stderr.ends_with("curate: interrupted\n"), "{stderr}");
    assert_eq!(
        test.entries(),
        ["big.jsonl"],
        "no output and no temporary file"
    );
}

/// Shell completions for every shell clap_complete knows, generated from the flags themselves;
/// bash's parses.
#[test]
fn completions_cover_every_command() {
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let out = Test::new().args(["completions", shell]).run().success();
        assert!(out.stderr.is_empty(), "{shell}: {}", out.stderr);
        for word in ["influence", "rephrase", "--memory-budget"] {
            assert!(out.stdout.contains(word), "{shell} lacks {word}");
        }
        if shell == "bash" {
            let test = Test::new().file("curate.bash", out.stdout.as_bytes());
            let path = test.path("curate.bash");
            let check = std::process::Command::new("bash")
                .arg("-n")
                .arg(&path)
                .status();
            if let Ok(status) = check {
                assert!(status.success(), "the bash completion does not parse");
            }
        }
    }
    Test::new()
        .args(["completions", "tcsh"])
        .run()
        .invalid("invalid value 'tcsh'");
}

/// Man pages for curate and each command, as roff; groff renders them when it is installed.
#[test]
fn man_pages_for_curate_and_its_commands() {
    let top = Test::new().arg("man").run().success();
    assert!(top.stdout.contains(".TH curate 1"), "{}", top.stdout);
    assert!(top.stdout.contains("influence"));
    let page = Test::new()
        .args(["man", "influence", "index"])
        .run()
        .success();
    assert!(page.stdout.contains(".TH curate-influence-index 1"));
    assert!(page.stdout.contains("\\-\\-store\\-dtype"));
    if let Ok(mut groff) = std::process::Command::new("groff")
        .args(["-man", "-Tutf8"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        use std::io::Write;
        groff
            .stdin
            .take()
            .unwrap()
            .write_all(page.stdout.as_bytes())
            .unwrap();
        let rendered = groff.wait_with_output().unwrap();
        assert!(rendered.status.success());
        assert!(String::from_utf8_lossy(&rendered.stdout).contains("store"));
    }
    Test::new()
        .args(["man", "influence", "nope"])
        .run()
        .invalid("'curate-influence' has no command 'nope'");
}
