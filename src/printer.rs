//! Where output goes: data on stdout, messages and progress on stderr.

use std::io::{self, IsTerminal, Write};
use std::time::{Duration, Instant};

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

    /// Progress of a model pass over `total` units (rows, steps): the bar of [`Printer::progress_bar`], one
    /// line once the first batch has run saying how long the pass will take and how much
    /// memory the run holds (against `estimated_peak`, the run's estimate), and where no bar is
    /// drawn because stderr is not a terminal (a scheduler's log), a plain line every
    /// `CURATE_PROGRESS_INTERVAL` seconds (default 60). Nothing under `--quiet`.
    pub fn model_progress(
        &self,
        total: usize,
        unit: &'static str,
        label: &str,
        estimated_peak: Option<u128>,
    ) -> Progress {
        let interval = std::env::var("CURATE_PROGRESS_INTERVAL")
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s > 0.0)
            .map_or(Duration::from_secs(60), Duration::from_secs_f64);
        let now = Instant::now();
        Progress {
            bar: self.progress_bar(total as u64, label),
            label: label.to_string(),
            unit,
            total,
            start: 0,
            done: 0,
            started: now,
            last_line: now,
            messages: self.stderr(),
            plain: self.progress && !io::stderr().is_terminal(),
            interval,
            estimated_peak,
            work: None,
        }
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

/// See [`Printer::model_progress`].
pub struct Progress {
    bar: ProgressBar,
    label: String,
    unit: &'static str,
    total: usize,
    /// Units done before this run (a resumed one).
    start: usize,
    done: usize,
    started: Instant,
    last_line: Instant,
    messages: MessageWriter,
    plain: bool,
    interval: Duration,
    estimated_peak: Option<u128>,
    /// Model work (padded tokens) of the whole pass, done before this run and done so far:
    /// time estimates follow it where rows are not all alike.
    work: Option<(u64, u64, u64)>,
}

impl Progress {
    /// Estimate the time left from `total` units of work (of which `done` were done before
    /// this run) reported by [`Progress::advance`], instead of from the units counted.
    pub fn with_work(mut self, total: u64, done: u64) -> Self {
        self.work = Some((total, done, done));
        self
    }

    /// `n` more units are done, taking `work` of the work (see [`Progress::with_work`]).
    pub fn advance(&mut self, n: usize, work: u64) {
        if let Some((_, _, done)) = &mut self.work {
            *done += work;
        }
        self.inc(n);
    }

    /// The pass resumes with `done` units already done.
    pub fn resumed_at(mut self, done: usize) -> Self {
        self.start = done;
        self.done = done;
        self.bar.set_position(done as u64);
        self
    }

    /// `n` more units are done.
    pub fn inc(&mut self, n: usize) {
        let first = self.done == self.start;
        self.done += n;
        self.bar.inc(n as u64);
        if self.done == self.start || self.done >= self.total {
            return;
        }
        let elapsed = self.started.elapsed();
        let share_left = match self.work {
            Some((total, start, done)) if done > start && total > done => {
                (total - done) as f64 / (done - start) as f64
            }
            Some((total, _, done)) if done >= total => 0.0,
            _ => (self.total - self.done) as f64 / (self.done - self.start) as f64,
        };
        let left = elapsed.mul_f64(share_left);
        if first {
            let memory = match (curate::model::budget::peak_resident(), self.estimated_peak) {
                (Some(peak), Some(estimate)) => format!(
                    "; peak memory {} so far, estimated {}",
                    bytes(peak as u128),
                    bytes(estimate)
                ),
                (Some(peak), None) => format!("; peak memory {} so far", bytes(peak as u128)),
                (None, Some(estimate)) => format!("; estimated peak memory {}", bytes(estimate)),
                (None, None) => String::new(),
            };
            self.line(format!(
                "{}: first {} of {} {} in {}; about {} for the rest{memory}",
                self.label,
                self.done - self.start,
                self.total - self.start,
                self.unit,
                duration(elapsed),
                duration(left),
            ));
        } else if self.plain && self.last_line.elapsed() >= self.interval {
            let rate = (self.done - self.start) as f64 / elapsed.as_secs_f64().max(1e-9);
            self.line(format!(
                "{}: {}/{} {}, {rate:.2} {}/s, {} elapsed, about {} left",
                self.label,
                self.done,
                self.total,
                self.unit,
                self.unit,
                duration(elapsed),
                duration(left),
            ));
        }
    }

    pub fn set_message(&self, message: String) {
        self.bar.set_message(message);
    }

    pub fn finish_and_clear(&self) {
        self.bar.finish_and_clear();
    }

    /// Leave the bar as it is (a stop with a checkpoint).
    pub fn abandon(&self) {
        self.bar.abandon();
    }

    fn line(&mut self, text: String) {
        self.last_line = Instant::now();
        let line = text + "\n";
        self.bar.suspend(|| {
            let _ = self.messages.write_all(line.as_bytes());
        });
    }
}

fn bytes(n: u128) -> String {
    curate::model::budget::bytes(n)
}

/// A duration for people: 42s, 3m 10s, 2h 05m.
fn duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 10.0 {
        return format!("{s:.1}s");
    }
    let s = s.round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
    }
}
