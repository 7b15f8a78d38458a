//! What `curate reveal` says: the text summary on stderr and the gate verdict, in the flags'
//! terms.

use std::io::Write;

use anyhow::Result;

use crate::printer::Printer;
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

/// The human summary on stderr, with where the output went and the gate's verdict.
pub fn print(report: &Report, out: &str, printer: &Printer) -> Result<()> {
    let mut err = printer.stderr();
    report.write_text(&mut err, "in --summary")?;
    if out != "-" {
        writeln!(
            err,
            "wrote {} to {out}",
            curate::text::count(report.rows(), "row", "rows")
        )?;
    }
    for failure in &report.gate.failures {
        writeln!(err, "gate failed: {}", failure_message(failure))?;
    }
    Ok(())
}
