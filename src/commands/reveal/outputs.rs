//! What `curate reveal` writes: the per-id table, the JSON summary, the text summary on
//! stderr, and the gate verdict.

use std::io::Write;

use anyhow::Result;
use polars::prelude::*;
use serde_json::{Value, json};

use crate::cli::RevealArgs;
use crate::printer::{Align, Printer, text_table};
use curate::reveal::classes::Classes;
use curate::reveal::decide::IssueType;
use curate::reveal::detect::{Detection, Gate, GateFailure, Source, class_tallies};
use curate::reveal::inputs::{Labels, SourceSpec};

pub struct Report<'a> {
    pub args: &'a RevealArgs,
    pub labels: &'a Labels,
    pub classes: &'a Classes,
    pub given: &'a [Vec<usize>],
    pub specs: &'a [SourceSpec],
    pub sources: &'a [Source],
    pub detection: &'a Detection<'a>,
    pub gate: &'a Gate,
}

/// A gate failure as the flags that set its limit name it.
fn failure_message(failure: &GateFailure) -> String {
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

impl Report<'_> {
    fn rows(&self) -> usize {
        self.given.len()
    }

    fn issues(&self) -> usize {
        self.detection
            .decisions
            .iter()
            .filter(|d| d.is_issue)
            .count()
    }

    fn with_missing(&self) -> usize {
        self.detection
            .decisions
            .iter()
            .filter(|d| !d.missing.is_empty())
            .count()
    }

    fn of_type(&self, t: IssueType) -> usize {
        self.detection
            .decisions
            .iter()
            .filter(|d| d.issue_type == t)
            .count()
    }

    /// The per-id table.
    pub fn frame(&self) -> Result<DataFrame> {
        let n = self.rows();
        let k = self.classes.len();
        let mut columns: Vec<Column> = vec![
            self.labels.id_column.clone(),
            self.labels.label_column.clone(),
            Column::new(
                "is_label_issue".into(),
                self.detection
                    .decisions
                    .iter()
                    .map(|d| d.is_issue)
                    .collect::<Vec<_>>(),
            ),
            Column::new(
                "issue_type".into(),
                self.detection
                    .decisions
                    .iter()
                    .map(|d| d.issue_type.name())
                    .collect::<Vec<_>>(),
            ),
        ];
        if self.labels.multi_label {
            columns.push(
                self.class_lists(
                    "suggested_labels",
                    self.detection
                        .decisions
                        .iter()
                        .map(|d| d.suggested.as_deref()),
                ),
            );
        } else {
            let suggested = self
                .detection
                .decisions
                .iter()
                .map(|d| d.suggested.as_ref().map(|s| s[0]));
            columns.push(self.class_column("suggested_label", suggested));
        }
        columns.push(
            self.class_lists(
                "missing_labels",
                self.detection
                    .decisions
                    .iter()
                    .map(|d| Some(d.missing.as_slice())),
            ),
        );
        columns.push(Column::new(
            "p_given".into(),
            self.detection
                .decisions
                .iter()
                .map(|d| d.p_given)
                .collect::<Vec<_>>(),
        ));
        columns.push(Column::new("quality".into(), &self.detection.quality));
        if !self.args.no_soft_label {
            let mut builder = ListPrimitiveChunkedBuilder::<Float64Type>::new(
                "soft_label".into(),
                n,
                n * k,
                DataType::Float64,
            );
            for i in 0..n {
                builder.append_slice(self.detection.soft.row(i));
            }
            columns.push(builder.finish().into_column());
        }
        // Comma-joined rather than a list: pandas cannot convert Arrow lists of string views.
        let joined: Vec<String> = (0..1usize << self.detection.flags.len())
            .map(|mask| {
                let names: Vec<&str> = self
                    .detection
                    .flags
                    .iter()
                    .enumerate()
                    .filter(|(b, _)| mask & (1 << b) != 0)
                    .map(|(_, (d, _))| d.name())
                    .collect();
                names.join(",")
            })
            .collect();
        let fired: Vec<&str> = (0..n)
            .map(|i| {
                let mask = self
                    .detection
                    .flags
                    .iter()
                    .enumerate()
                    .fold(0usize, |m, (b, (_, f))| m | (usize::from(f[i]) << b));
                joined[mask].as_str()
            })
            .collect();
        columns.push(Column::new("detectors".into(), fired));
        for (detector, flags) in &self.detection.flags {
            columns.push(Column::new(
                format!("{}_issue", detector.name()).into(),
                flags,
            ));
        }
        Ok(DataFrame::new_infer_height(columns)?)
    }

    /// One class per row, written as the labels write classes.
    fn class_column(&self, name: &str, values: impl Iterator<Item = Option<usize>>) -> Column {
        if self.classes.integer {
            let v: Vec<Option<i64>> = values.map(|k| k.map(|k| k as i64)).collect();
            Column::new(name.into(), v)
        } else {
            let v: Vec<Option<&str>> = values
                .map(|k| k.map(|k| self.classes.names[k].as_str()))
                .collect();
            Column::new(name.into(), v)
        }
    }

    /// A list of classes per row.
    fn class_lists<'s>(
        &self,
        name: &str,
        values: impl Iterator<Item = Option<&'s [usize]>>,
    ) -> Column {
        let n = self.rows();
        if self.classes.integer {
            let mut builder =
                ListPrimitiveChunkedBuilder::<Int64Type>::new(name.into(), n, n, DataType::Int64);
            for row in values {
                match row {
                    Some(set) => {
                        let v: Vec<i64> = set.iter().map(|&k| k as i64).collect();
                        builder.append_slice(&v);
                    }
                    None => builder.append_null(),
                }
            }
            builder.finish().into_column()
        } else {
            let mut builder = ListStringChunkedBuilder::new(name.into(), n, n);
            for row in values {
                match row {
                    Some(set) => builder
                        .append_values_iter(set.iter().map(|&k| self.classes.names[k].as_str())),
                    None => builder.append_null(),
                }
            }
            builder.finish().into_column()
        }
    }

    fn tallies(&self) -> Vec<curate::reveal::detect::ClassTally> {
        class_tallies(self.given, &self.detection.decisions, self.classes.len())
    }

    pub fn summary_json(&self) -> Value {
        let gate = self.gate;
        let failures: Vec<String> = gate.failures.iter().map(failure_message).collect();
        let n = self.rows();
        let per_class: Vec<Value> = self
            .tallies()
            .iter()
            .zip(&self.classes.names)
            .map(|(t, name)| {
                json!({
                    "class": name,
                    "rows": t.rows,
                    "issues": t.issues,
                    "issue_rate": if t.rows == 0 { 0.0 } else { t.issues as f64 / t.rows as f64 },
                    "noisy": t.noisy,
                    "missing": t.missing,
                    "ambiguous": t.ambiguous,
                    "suggested_into": t.suggested_into,
                    "missing_from": t.missing_from,
                })
            })
            .collect();
        let detectors: Value = self
            .detection
            .flags
            .iter()
            .map(|(d, f)| {
                (
                    d.name().to_string(),
                    json!(f.iter().filter(|&&x| x).count()),
                )
            })
            .collect::<serde_json::Map<_, _>>()
            .into();
        let sources: Vec<Value> = self
            .specs
            .iter()
            .zip(self.sources)
            .map(|(spec, s)| {
                json!({
                    "name": s.name,
                    "path": spec.path,
                    "kind": s.kind.name(),
                    "rows_covered": s.covered,
                })
            })
            .collect();
        let vote = self.detection.vote.as_ref().map(|w| {
            json!({
                "annotators": w.names,
                "model_weight": w.model_weight,
                "annotator_weight": w.annotator_weights,
                "annotator_quality": w.annotator_quality,
                "agreement_with_consensus": w.agreement,
            })
        });
        json!({
            "rows": n,
            "classes": self.classes.names,
            "multi_label": self.labels.multi_label,
            "detectors_run": self.detection.detectors.iter().map(|d| d.name()).collect::<Vec<_>>(),
            "min_detectors": self.detection.min_detectors,
            "filter_by": curate::reveal::FilterBy::from(self.args.filter_by).name(),
            "issues": self.issues(),
            "issue_rate": gate.issue_rate,
            "rows_with_missing_labels": self.with_missing(),
            "missing_rate": gate.missing_rate,
            "by_type": {
                "none": self.of_type(IssueType::None),
                "noisy": self.of_type(IssueType::Noisy),
                "missing": self.of_type(IssueType::Missing),
                "ambiguous": self.of_type(IssueType::Ambiguous),
            },
            "detector_flags": detectors,
            "num_label_issues": self.detection.counts.map(|(off, calibrated)| json!({
                "off_diagonal": off,
                "off_diagonal_calibrated": calibrated,
            })),
            "per_class": per_class,
            "sources": sources,
            "vote": vote,
            "gate": {
                "passed": gate.failures.is_empty(),
                "failures": failures,
            },
        })
    }

    /// The human summary on stderr.
    pub fn print(&self, printer: &Printer) -> Result<()> {
        let gate = self.gate;
        let mut err = printer.stderr();
        let n = self.rows();
        let detectors: Vec<String> = self
            .detection
            .flags
            .iter()
            .map(|(d, f)| format!("{} {}", d.name(), f.iter().filter(|&&x| x).count()))
            .collect();
        writeln!(
            err,
            "{} of {n} rows are label issues ({:.2}%; at least {} of: {}); {} with missing labels",
            self.issues(),
            100.0 * gate.issue_rate,
            self.detection.min_detectors,
            detectors.join(", "),
            self.with_missing()
        )?;
        let rows: Vec<Vec<String>> = self
            .tallies()
            .iter()
            .zip(&self.classes.names)
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
        if let Some(w) = &self.detection.vote
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
        if self.args.out != "-" {
            writeln!(err, "wrote {n} rows to {}", self.args.out)?;
        }
        for failure in &gate.failures {
            writeln!(err, "gate failed: {}", failure_message(failure))?;
        }
        Ok(())
    }
}
