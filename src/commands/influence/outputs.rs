//! The files `curate influence` writes, and its top/bottom report on stdout.

use std::io::Write;

use anyhow::Result;

use crate::cli::{GranularityArg, InfluenceArgs};
use crate::printer::Printer;
use curate::error::usage;
use curate::influence::examples::Examples;
use curate::influence::report::{self, Collected, Report};
use curate::table::{Output, Provenance};

/// The output files, opened (not yet written) before any work so a name clash fails early.
pub struct Outputs {
    scores: Output,
    tokens: Option<Output>,
    segments: Option<Output>,
    summary: Option<Output>,
}

/// `scores.parquet` -> `scores.<part>.parquet`.
fn beside(out: &str, part: &str, flag: &str) -> Result<String> {
    if out == "-" {
        return Err(usage(format!(
            "--out - writes scores to stdout; name the {part} file with {flag}"
        )));
    }
    let path = std::path::Path::new(out);
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    let name = match path.extension() {
        Some(ext) => format!("{stem}.{part}.{}", ext.to_string_lossy()),
        None => format!("{stem}.{part}"),
    };
    Ok(path.with_file_name(name).display().to_string())
}

/// The paths a run writes, each with the flag that names it: `--out` first, then `--segments`
/// and `--tokens` where the granularity writes them (beside `--out` unless named), and
/// `--summary`. Checked to be distinct.
pub fn paths(out: &str, args: &InfluenceArgs) -> Result<Vec<(&'static str, String)>> {
    let mut paths = vec![("--out", out.to_string())];
    if args.granularity != GranularityArg::Example {
        paths.push((
            "--segments",
            match &args.segments {
                Some(path) => path.clone(),
                None => beside(out, "segments", "--segments")?,
            },
        ));
    }
    if args.granularity == GranularityArg::Token {
        paths.push((
            "--tokens",
            match &args.tokens {
                Some(path) => path.clone(),
                None => beside(out, "tokens", "--tokens")?,
            },
        ));
    }
    if let Some(summary) = &args.summary {
        paths.push(("--summary", summary.clone()));
    }
    let named: Vec<(&str, &str)> = paths.iter().map(|(f, p)| (*f, p.as_str())).collect();
    curate::table::require_distinct(&named)?;
    Ok(paths)
}

impl Outputs {
    /// Open every output of [`paths`].
    pub fn create(out: &str, args: &InfluenceArgs, paths: &[(&str, String)]) -> Result<Outputs> {
        let open = |flag: &str| -> Result<Option<Output>> {
            paths
                .iter()
                .find(|(f, _)| *f == flag)
                .map(|(_, path)| Output::create(path, None, args.force))
                .transpose()
        };
        Ok(Outputs {
            scores: Output::create(out, None, args.force)?,
            tokens: open("--tokens")?,
            segments: open("--segments")?,
            summary: open("--summary")?,
        })
    }

    /// Write every table; returns their names.
    pub fn write(
        self,
        collected: &Collected,
        tables: &report::Tables,
        provenance: &Provenance,
    ) -> Result<Vec<String>> {
        let report = Report::new(collected, tables);
        let mut written = vec![self.scores.label().to_string()];
        let mut staged = vec![
            self.scores
                .stage_frame(&report.scores()?, Some(provenance))?,
        ];
        for (output, frame) in [
            (self.segments, report.segments()?),
            (self.tokens, report.tokens()?),
        ] {
            if let (Some(output), Some(frame)) = (output, frame) {
                written.push(output.label().to_string());
                staged.push(output.stage_frame(&frame, Some(provenance))?);
            }
        }
        if let Some(output) = self.summary {
            written.push(output.label().to_string());
            staged.push(output.stage_frame(&report.summary()?, Some(provenance))?);
        }
        curate::table::commit_all(staged)?;
        Ok(written)
    }
}

/// The K most helpful and most harmful training examples per domain, by the mean score over
/// queries, as text tables: on stdout, or on stderr when stdout carries the scores.
pub fn print_top(
    printer: &Printer,
    collected: &Collected,
    train: &Examples,
    k: usize,
    stdout_has_data: bool,
) -> Result<()> {
    let mut out: Box<dyn Write> = if stdout_has_data {
        Box::new(printer.stderr())
    } else {
        Box::new(printer.stdout())
    };
    for line in report::top_text(&report::top_by_domain(collected, train, k)?) {
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    Ok(())
}
