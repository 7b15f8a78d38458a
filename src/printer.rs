//! Where output goes: data on stdout, messages and progress on stderr.

use std::io::{self, IsTerminal, Write};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How chatty the command is on stderr. Data on stdout is never affected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verbosity {
    Quiet,
    Normal,
    Verbose,
    Debug,
}

#[derive(Debug, Clone, Copy)]
pub struct Printer {
    verbosity: Verbosity,
    progress: bool,
}

impl Printer {
    pub fn new(verbosity: Verbosity, progress: bool) -> Self {
        Printer {
            verbosity,
            progress,
        }
    }

    pub fn verbosity(&self) -> Verbosity {
        self.verbosity
    }

    /// Human-readable messages (summaries, hints). Silent under `--quiet`.
    pub fn stderr(&self) -> MessageWriter {
        MessageWriter {
            enabled: self.verbosity != Verbosity::Quiet,
        }
    }

    /// The data stream. Buffered; callers flush when done.
    pub fn stdout(&self) -> io::BufWriter<io::Stdout> {
        io::BufWriter::new(io::stdout())
    }

    /// A progress bar over `len` steps, drawn on stderr only when it is a terminal and
    /// neither `--quiet` nor `--no-progress` was given; otherwise a hidden bar.
    pub fn progress_bar(&self, len: u64, label: &str) -> ProgressBar {
        if !self.draws_progress() {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>12} [{bar:30}] {human_pos}/{human_len} {per_sec} eta {eta} {msg}",
            )
            .expect("valid progress template")
            .progress_chars("=> "),
        );
        bar.set_prefix(label.to_string());
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    }

    /// A spinner for work of unknown length, with the same drawing rules.
    pub fn spinner(&self, label: &str) -> ProgressBar {
        if !self.draws_progress() {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{prefix:>12} {spinner} {elapsed} {msg}")
                .expect("valid spinner template"),
        );
        bar.set_prefix(label.to_string());
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    }

    fn draws_progress(&self) -> bool {
        self.progress && self.verbosity != Verbosity::Quiet && io::stderr().is_terminal()
    }
}

/// Writes to stderr unless messages are switched off. Errors writing to stderr are ignored:
/// a closed stderr must not turn a successful run into a failure.
pub struct MessageWriter {
    enabled: bool,
}

impl Write for MessageWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.enabled {
            let _ = io::stderr().write_all(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.enabled {
            let _ = io::stderr().flush();
        }
        Ok(())
    }
}
