//! The `curate` command line: flags ([`cli`]) to typed settings, the library (`curate`) to
//! compute, tables out ([`commands`]); [`run`] parses, dispatches and maps errors to exit codes.

pub mod cli;
pub mod commands;
pub mod messages;
pub mod printer;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::Parser;

use crate::cli::Cli;
use crate::printer::{Printer, Verbosity};
use curate::error::{ErrorClass, classify};

/// How a run ended; each maps to one exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// 0: the command did what was asked.
    Success,
    /// 1: a quality gate failed; outputs were still written.
    GateFailed,
    /// 2: bad usage or invalid input; nothing was written.
    InvalidInput,
    /// 3: a runtime failure (I/O, model, endpoint).
    Failure,
    /// 130: stopped by Ctrl-C (SIGINT) after cleaning up.
    Interrupted,
    /// 143: stopped by SIGTERM (`timeout`, Slurm, Kubernetes) after cleaning up.
    Terminated,
}

impl ExitStatus {
    pub fn code(self) -> u8 {
        match self {
            ExitStatus::Success => 0,
            ExitStatus::GateFailed => 1,
            ExitStatus::InvalidInput => 2,
            ExitStatus::Failure => 3,
            ExitStatus::Interrupted => 130,
            ExitStatus::Terminated => 143,
        }
    }

    /// Classify an error by the kinds in its chain.
    pub fn of_error(err: &anyhow::Error) -> ExitStatus {
        match classify(err) {
            ErrorClass::BrokenPipe => ExitStatus::Success,
            ErrorClass::Interrupted if curate::interrupt::signal() == Some(SIGTERM) => {
                ExitStatus::Terminated
            }
            ErrorClass::Interrupted => ExitStatus::Interrupted,
            ErrorClass::InvalidInput => ExitStatus::InvalidInput,
            ErrorClass::Runtime => ExitStatus::Failure,
        }
    }
}

impl From<ExitStatus> for ExitCode {
    fn from(status: ExitStatus) -> Self {
        ExitCode::from(status.code())
    }
}

/// Run curate with the process's arguments.
pub fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    // Read from the raw arguments: the tuning must happen before any thread starts.
    tune_allocator(names_libtorch_device(&args));
    run(args).into()
}

/// Whether the command line asks for a LibTorch device (`--device tch-cpu`, `tch-cuda:N`).
fn names_libtorch_device(args: &[OsString]) -> bool {
    let is_libtorch = |value: &str| value.starts_with("tch");
    args.iter().enumerate().any(|(i, arg)| {
        let arg = arg.to_string_lossy();
        match arg.strip_prefix("--device") {
            Some("") => args
                .get(i + 1)
                .is_some_and(|next| is_libtorch(&next.to_string_lossy())),
            Some(rest) => rest.strip_prefix('=').is_some_and(is_libtorch),
            None => false,
        }
    })
}

/// The model's forward and backward passes allocate and free tensors of many megabytes per
/// layer. glibc's defaults serve the largest from fresh mmaps, give a shrinking heap top back
/// to the kernel and let every thread grow arenas of its own that it trims again, so each pass
/// page-faults its memory in anew (a fifth to a third of a pass went to the kernel zeroing
/// pages). Keep every block on one heap that is never trimmed: freed memory is reused, and the
/// resident size stays at the run's peak, which is what the memory estimate promises anyway.
///
/// LibTorch's tensors fragment such a heap (a SmolLM2 eval of 64 rows on one thread held
/// 11.5 GiB), and even glibc's defaults, whose mmap threshold rises to the largest block
/// freed, let its heap grow with every batch (7.8 GiB). With LibTorch, blocks of 1 MiB and
/// more are mmapped at a fixed threshold instead: the same eval held 1.6 GiB, in 62 s instead
/// of 74 s. Larger thresholds fragment less slowly; training steps pay for the page faults
/// (docs/benchmarks.md).
fn tune_allocator(libtorch: bool) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it runs before any thread starts.
    unsafe {
        if libtorch {
            // Setting the threshold also stops glibc from raising it.
            libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
            return;
        }
        // One arena: the worker threads' own arenas are small heaps that glibc trims and
        // unmaps as their tensors come and go.
        libc::mallopt(libc::M_ARENA_MAX, 1);
        // No block is served by mmap (glibc caps the mmap threshold at 32 MiB, and a logits
        // block is larger), and -1, read as the largest size, means the heap is never trimmed.
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, -1);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = libtorch;
}

/// Parse `args` (program name first), run the command, print any error once on stderr and
/// return the exit status.
pub fn run(args: Vec<OsString>) -> ExitStatus {
    // Provenance records the command as typed, with the program named `curate` rather than
    // by the path it happened to be installed at.
    let argv: Vec<String> = std::iter::once("curate".to_string())
        .chain(
            args.iter()
                .skip(1)
                .map(|arg| arg.to_string_lossy().into_owned()),
        )
        .collect();
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(err) if err.use_stderr() => {
            eprintln!("curate: {}", usage_line(&err));
            return ExitStatus::InvalidInput;
        }
        Err(help_or_version) => {
            let _ = help_or_version.print();
            return ExitStatus::Success;
        }
    };

    let verbosity = if cli.global.quiet {
        Verbosity::Quiet
    } else {
        match cli.global.verbose {
            0 => Verbosity::Normal,
            1 => Verbosity::Verbose,
            _ => Verbosity::Debug,
        }
    };
    init_logging(verbosity);
    install_interrupt_handler();

    let context = commands::Context {
        printer: Printer::new(verbosity, !cli.global.no_progress),
        seed: cli.global.seed,
        argv,
    };
    match commands::dispatch(cli.command, &context) {
        Ok(status) => status,
        Err(err) => {
            let status = ExitStatus::of_error(&err);
            if !matches!(status, ExitStatus::Success) {
                eprintln!("curate: {}", messages::error_line(&err));
            }
            status
        }
    }
}

const SIGINT: i32 = 2;
const SIGTERM: i32 = 15;

/// Ctrl-C (SIGINT) and SIGTERM, which `timeout`, Slurm and Kubernetes send before killing: the
/// first asks the running command to stop at its next safe point (the library checks
/// [`curate::interrupt`]; train writes a checkpoint, temporary outputs are removed); a second
/// exits at once. The signals are received on a thread of their own, so the handler does no
/// more than the signal-safe minimum. Failure to install (a host program that owns the
/// signals) only leaves the default behaviour.
fn install_interrupt_handler() {
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) else {
        return;
    };
    std::thread::spawn(move || {
        for signal in signals.forever() {
            if curate::interrupt::request_by(signal) {
                std::process::exit(128 + signal);
            }
            let (name, again) = if signal == SIGTERM {
                ("terminate signal", "another to abort")
            } else {
                ("Ctrl-C", "Ctrl-C again to abort")
            };
            eprintln!("curate: {name} received; stopping after the current step ({again})");
        }
    });
}

/// clap's message for a command line it cannot parse, on one line like every other error:
/// the problem and the accepted values, without the usage block and the help pointer.
fn usage_line(err: &clap::Error) -> String {
    let rendered = err.render().to_string();
    let mut line = String::new();
    for part in rendered.lines().map(str::trim) {
        if part.is_empty() || part.starts_with("Usage:") || part.starts_with("For more information")
        {
            continue;
        }
        if !line.is_empty() {
            // A heading ending in ':' runs on into its list.
            line.push_str(if line.ends_with(':') { " " } else { "; " });
        }
        line.push_str(part);
    }
    line.strip_prefix("error: ").unwrap_or(&line).to_string()
}

fn init_logging(verbosity: Verbosity) {
    use tracing_subscriber::EnvFilter;

    let default = match verbosity {
        Verbosity::Quiet => "error",
        Verbosity::Normal => "warn",
        Verbosity::Verbose => "info",
        Verbosity::Debug => "debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Colour codes only on a terminal: a log file (a scheduler's) gets plain text.
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(terminal)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<OsString> {
        line.split_whitespace().map(OsString::from).collect()
    }

    #[test]
    fn libtorch_devices_are_found_in_either_spelling() {
        assert!(names_libtorch_device(&args("curate eval --device tch-cpu")));
        assert!(names_libtorch_device(&args(
            "curate train x --device=tch-cuda:1"
        )));
        assert!(!names_libtorch_device(&args("curate eval --device flex")));
        assert!(!names_libtorch_device(&args("curate eval --device")));
        assert!(!names_libtorch_device(&args(
            "curate eval --devices tch-cpu"
        )));
        assert!(!names_libtorch_device(&args(
            "curate eval --data tch-cpu.jsonl"
        )));
    }
}
