//! What `curate reveal` says: the text summary on stderr and the gate verdict, in the flags'
//! terms.

use std::io::Write;

use anyhow::Result;

use crate::printer::{Align, Printer, text_table};
use curate::reveal::detect::GateFailure;
use curate::reveal::report::Report;

/// A gate failure as the flags that set its limit name it.
pub fn failure_message(failure: &GateFailure) -> String {
    match failure {
        GateFailure::IssueRate { rate, max } => {
            format!("issue rate {rate:.4} is above --max-issue-rate {max}")
        }
        GateFailure::MissingRate { rate, max } => {
            format!("missing-label rate {rate:.4} is above --max-missing-rate {max}")
        }
        GateFailure::IssueType { issue_type, rows } => {
            format!("{rows} rows are {} (--fail-on)", issue_type.name())
        }
    }
}

/// The human summary on stderr.
pub fn print(report: &Report, out: &str, printer: &Printer) -> Result<()> {
    let gate = report.gate;
    let mut err = printer.stderr();
    let n = report.rows();
    let detectors: Vec<String> = report
        .detection
        .flags
        .iter()
        .map(|(d, f)| format!("{} {}", d.name(), f.iter().filter(|&&x| x).count()))
        .collect();
    writeln!(
        err,
        "{} of {n} rows are label issues ({:.2}%; at least {} of: {}); {} with missing labels",
        report.issues(),
        100.0 * gate.issue_rate,
        report.detection.min_detectors,
        detectors.join(", "),
        report.with_missing()
    )?;
    let rows: Vec<Vec<String>> = report
        .tallies()
        .iter()
        .zip(&report.classes.names)
        .filter(|(t, _)| t.rows > 0 || t.suggested_into > 0)
        .map(|(t, name)| {
            vec![
                name.clone(),
                t.rows.to_string(),
                t.issues.to_string(),
                format!("{:.2}%", 100.0 * t.issues as f64 / (t.rows.max(1)) as f64),
                t.noisy.to_string(),
                t.ambiguous.to_string(),
                t.missing.to_string(),
                t.suggested_into.to_string(),
            ]
        })
        .collect();
    let shown = rows.len().min(30);
    for line in text_table(
        &[
            "class",
            "rows",
            "issues",
            "rate",
            "noisy",
            "ambiguous",
            "missing",
            "suggested_into",
        ],
        &rows[..shown],
        &[
            Align::Left,
            Align::Right,
            Align::Right,
            Align::Right,
            Align::Right,
            Align::Right,
            Align::Right,
            Align::Right,
        ],
    ) {
        writeln!(err, "{line}")?;
    }
    if rows.len() > shown {
        writeln!(err, "({} more classes in --summary)", rows.len() - shown)?;
    }
    if let Some(w) = &report.detection.vote
        && w.model_weight.len() == 1
    {
        let parts: Vec<String> = w
            .names
            .iter()
            .zip(&w.annotator_weights[0])
            .map(|(name, weight)| format!("{name} {weight:.3}"))
            .collect();
        writeln!(
            err,
            "vote weights: prior {:.3}, {}",
            w.model_weight[0],
            parts.join(", ")
        )?;
    }
    if out != "-" {
        writeln!(err, "wrote {n} rows to {}", out)?;
    }
    for failure in &gate.failures {
        writeln!(err, "gate failed: {}", failure_message(failure))?;
    }
    Ok(())
}
