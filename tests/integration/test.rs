//! A small fluent builder for running `curate` in a scratch directory.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tempfile::TempDir;

pub struct Test {
    dir: TempDir,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    stdin: Option<Vec<u8>>,
}

#[derive(Debug)]
pub struct Outcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub stdout_bytes: Vec<u8>,
}

impl Test {
    pub fn new() -> Self {
        Test {
            dir: tempfile::tempdir().expect("temp dir"),
            args: Vec::new(),
            envs: Vec::new(),
            stdin: None,
        }
    }

    /// Create a file (and its directories) in the scratch directory.
    pub fn file(self, name: &str, contents: impl AsRef<[u8]>) -> Self {
        let path = self.path(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(path, contents).unwrap();
        self
    }

    pub fn arg(&mut self, arg: impl Into<OsString>) -> &mut Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<I, S>(&mut self, args: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// An environment variable for the next run.
    pub fn env(&mut self, name: impl Into<OsString>, value: impl Into<OsString>) -> &mut Self {
        self.envs.push((name.into(), value.into()));
        self
    }

    pub fn stdin(&mut self, bytes: impl Into<Vec<u8>>) -> &mut Self {
        self.stdin = Some(bytes.into());
        self
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).unwrap_or_else(|e| panic!("read {name}: {e}"))
    }

    /// A JSON Lines file in the scratch directory, one value per line.
    pub fn read_lines(&self, name: &str) -> Vec<serde_json::Value> {
        String::from_utf8(self.read(name))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{name}: {e}: {l}")))
            .collect()
    }

    /// Names of every entry in the scratch directory, sorted (temporary files included).
    pub fn entries(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Run with the current arguments, then clear them so the same directory can be reused.
    pub fn run(&mut self) -> Outcome {
        let stdin = self.stdin.take();
        run_curate(self.take_command(), stdin.as_deref())
    }

    /// The command the current arguments and variables make, to spawn by hand; they are
    /// cleared as by [`Test::run`].
    pub fn take_command(&mut self) -> Command {
        let mut command = curate_command(self.dir.path());
        command.args(self.args.drain(..)).envs(self.envs.drain(..));
        command
    }
}

/// `CURATE_PYTHON` (else `python3`) when it can import `modules` (comma-separated). Otherwise
/// `None` with a note, or a failure where the variable `required_by` is set (CI sets it for
/// what it installs).
pub fn python_importing(modules: &str, required_by: Option<&str>) -> Option<String> {
    let python = std::env::var("CURATE_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let works = Command::new(&python)
        .args(["-c", &format!("import {modules}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if works {
        return Some(python);
    }
    if let Some(variable) = required_by {
        assert!(
            std::env::var_os(variable).is_none(),
            "{python} cannot import {modules}, and {variable} requires it"
        );
    }
    eprintln!("skipped: {python} cannot import {modules} (set CURATE_PYTHON to a Python that can)");
    None
}

/// Lines in the journal an LLM run keeps beside `out` (its header and one per answer); 0 when
/// there is none.
pub fn journal_lines(test: &Test, out: &str) -> usize {
    std::fs::read_to_string(test.path(&format!("{out}.curate-journal")))
        .map_or(0, |t| t.lines().count())
}

pub fn curate_command(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_curate"));
    // A key in the caller's environment must not reach the tests' endpoints.
    command
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .env_remove("OPENAI_API_KEY");
    command
}

fn run_curate(mut command: Command, stdin: Option<&[u8]>) -> Outcome {
    let mut child = command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn curate");
    if let Some(bytes) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        let bytes = bytes.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&bytes);
        });
    }
    let output = child.wait_with_output().expect("wait for curate");
    Outcome {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        stdout_bytes: output.stdout,
    }
}

impl Outcome {
    #[track_caller]
    pub fn success(self) -> Self {
        assert_eq!(self.code, 0, "expected success; stderr:\n{}", self.stderr);
        self
    }

    /// Exit 2 with exactly one line on stderr containing `needle`.
    #[track_caller]
    pub fn invalid(self, needle: &str) -> Self {
        assert_eq!(self.code, 2, "expected exit 2; stderr:\n{}", self.stderr);
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}:\n{}",
            self.stderr
        );
        assert_eq!(
            self.stderr.trim_end().lines().count(),
            1,
            "error should be one line:\n{}",
            self.stderr
        );
        self
    }

    /// stdout parsed as JSON Lines.
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }
}

/// Send Ctrl-C to `child` once its staged output (`*.curate-tmp`) shows that the handler is
/// installed and work has begun, `delay` after that; return its exit code and stderr.
pub fn interrupt_once_staged(
    test: &Test,
    child: std::process::Child,
    delay: std::time::Duration,
) -> (Option<i32>, String) {
    signal_once_staged(test, child, delay, "INT")
}

/// As [`interrupt_once_staged`], with `signal` (`INT`, `TERM`).
pub fn signal_once_staged(
    test: &Test,
    child: std::process::Child,
    delay: std::time::Duration,
    signal: &str,
) -> (Option<i32>, String) {
    let staged = |test: &Test| {
        test.entries()
            .iter()
            .any(|name| name.ends_with(".curate-tmp"))
    };
    signal_when(test, child, staged, delay, signal)
}

/// Send Ctrl-C to `child` `delay` after `ready` holds (within 30 s); return its exit code and
/// stderr.
pub fn interrupt_when(
    test: &Test,
    child: std::process::Child,
    ready: impl Fn(&Test) -> bool,
    delay: std::time::Duration,
) -> (Option<i32>, String) {
    signal_when(test, child, ready, delay, "INT")
}

/// Send `signal` (`INT`, `TERM`) to `child` `delay` after `ready` holds (within 30 s); return
/// its exit code and stderr.
pub fn signal_when(
    test: &Test,
    mut child: std::process::Child,
    ready: impl Fn(&Test) -> bool,
    delay: std::time::Duration,
    signal: &str,
) -> (Option<i32>, String) {
    use std::io::Read;
    let started = std::time::Instant::now();
    while !ready(test) {
        assert!(started.elapsed().as_secs() < 30, "never ready to interrupt");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    std::thread::sleep(delay);
    let killed = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (child.wait().unwrap().code(), stderr)
}
