//! The documentation's examples that use only bundled files run as written: every fenced block
//! opened with "```sh runnable" in README.md and docs/*.md runs under `bash -euo pipefail` in
//! a fresh directory where `fixtures`, `scripts` and `examples` are the repository's and
//! `curate` is the binary under test. A block that fails, or a file that loses its last
//! runnable block, fails the test, so the docs cannot drift from the tool.

use std::path::{Path, PathBuf};
use std::process::Command;

/// One runnable block: where it is and what it says.
struct Example {
    file: String,
    line: usize,
    script: String,
}

fn examples(path: &Path) -> Vec<Example> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut found = Vec::new();
    let mut open: Option<(usize, String)> = None;
    for (n, line) in text.lines().enumerate() {
        match &mut open {
            None if line.trim_end() == "```sh runnable" => open = Some((n + 1, String::new())),
            None => {}
            Some(_) if line.starts_with("```") => {
                let (line, script) = open.take().unwrap();
                found.push(Example {
                    file: path.file_name().unwrap().to_string_lossy().into_owned(),
                    line,
                    script,
                });
            }
            Some((_, script)) => {
                script.push_str(line);
                script.push('\n');
            }
        }
    }
    assert!(
        open.is_none(),
        "{}: an unclosed runnable block",
        path.display()
    );
    found
}

/// The files whose runnable examples are run, and how many each must have (a block that loses
/// its marker fails the test instead of silently leaving the suite).
const FILES: [(&str, usize); 5] = [
    ("README.md", 2),
    ("docs/convert.md", 1),
    ("docs/inspect.md", 1),
    ("docs/rephrase.md", 1),
    ("docs/reveal.md", 1),
];

#[test]
fn runnable_examples_in_the_docs_run_as_written() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bin_dir = PathBuf::from(env!("CARGO_BIN_EXE_curate"))
        .parent()
        .unwrap()
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for (file, expected) in FILES {
        let found = examples(&root.join(file));
        assert_eq!(found.len(), expected, "{file}: runnable blocks");
        for example in found {
            let dir = tempfile::tempdir().unwrap();
            for linked in ["fixtures", "scripts", "examples"] {
                std::os::unix::fs::symlink(root.join(linked), dir.path().join(linked)).unwrap();
            }
            let output = Command::new("bash")
                .args(["-euo", "pipefail", "-c", &example.script])
                .current_dir(dir.path())
                .env("PATH", &path)
                .env_remove("OPENAI_API_KEY")
                .env_remove("RUST_LOG")
                .output()
                .unwrap();
            assert!(
                output.status.success(),
                "{}:{}: the example failed ({}):\n{}\nstderr:\n{}",
                example.file,
                example.line,
                output.status,
                example.script,
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}
