//! What a REVEAL run reports: the per-id table (decisions, soft labels, detector flags) and
//! the JSON summary (counts, per-class tallies, sources, vote weights, gate).

use std::io::Write;

use polars::prelude::*;
use serde_json::{Value, json};

use super::FilterBy;
use super::classes::Classes;
use super::decide::IssueType;
use super::detect::{ClassTally, Detection, Gate, GateFailure, Source, class_tallies};
use super::inputs::{Labels, SourceSpec};
use crate::text::{Align, text_table};

/// Everything one run decided, with what it was decided from.
pub struct Report<'a> {
    pub labels: &'a Labels,
    pub classes: &'a Classes,
    pub given: &'a [Vec<usize>],
    pub specs: &'a [SourceSpec],
    pub sources: &'a [Source],
    pub detection: &'a Detection<'a>,
    pub gate: &'a Gate,
    pub filter_by: FilterBy,
    /// Write the consensus distribution per row (`soft_label`).
    pub soft_label: bool,
}

impl Report<'_> {
    pub fn rows(&self) -> usize {
        self.given.len()
    }

    /// Rows that are label issues.
    pub fn issues(&self) -> usize {
        self.detection
            .decisions
            .iter()
            .filter(|d| d.is_issue)
            .count()
    }

    /// Rows with at least one missing label.
    pub(crate) fn with_missing(&self) -> usize {
        self.detection
            .decisions
            .iter()
            .filter(|d| !d.missing.is_empty())
            .count()
    }

    pub(crate) fn of_type(&self, t: IssueType) -> usize {
        self.detection
            .decisions
            .iter()
            .filter(|d| d.issue_type == t)
            .count()
    }

    /// The per-id table.
    pub fn frame(&self) -> PolarsResult<DataFrame> {
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
        if self.soft_label {
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
        DataFrame::new_infer_height(columns)
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

    /// Per class: rows, issues by type, suggestions into it and missing from it.
    pub(crate) fn tallies(&self) -> Vec<ClassTally> {
        class_tallies(self.given, &self.detection.decisions, self.classes.len())
    }

    /// The summary for people: counts, per-class tallies (the first 30 classes; `more`
    /// says where the rest are) and the vote's weights.
    pub fn write_text(&self, err: &mut impl Write, more: &str) -> std::io::Result<()> {
        let gate = self.gate;
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
            writeln!(err, "({} more classes {more})", rows.len() - shown)?;
        }
        for (detector, count) in &self.detection.flagged_from_ties {
            if *count > 0 {
                writeln!(
                    err,
                    "{}: {count} flagged rows were chosen among rows tied at a cut-off (the \
                     earlier rows; cleanlab's numpy sort may pick other rows of the tie)",
                    detector.name()
                )?;
            }
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
        Ok(())
    }

    /// The summary document; `describe` words each gate failure.
    pub fn summary_json(&self, describe: impl Fn(&GateFailure) -> String) -> Value {
        let gate = self.gate;
        let failures: Vec<String> = gate.failures.iter().map(describe).collect();
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
            "filter_by": self.filter_by.name(),
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
            "flagged_from_ties": self
                .detection
                .flagged_from_ties
                .iter()
                .map(|(d, n)| (d.name().to_string(), json!(n)))
                .collect::<serde_json::Map<_, _>>(),
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reveal::Probabilities;
    use crate::reveal::classes::ClassValue;
    use crate::reveal::detect::{
        GateLimits, Predictions, RevealInputs, RevealSettings, SourceKind, detect, gate,
    };
    use crate::reveal::inputs::{RevealColumns, read_labels};
    use crate::reveal::knn::KnnOptions;
    use crate::reveal::{FilterOptions, QualityMethod};
    use crate::table::{ColumnRole, Input};
    use burn::tensor::Device;

    /// Six labelled rows; a confident model and a hard annotator agree that row 0's label is
    /// wrong.
    #[test]
    fn the_table_and_summary_describe_each_decision() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("labels.csv");
        std::fs::write(&path, "id,label\nr0,0\nr1,1\nr2,0\nr3,1\nr4,0\nr5,1\n").unwrap();
        let input = Input::open(path.to_str().unwrap(), None).unwrap();
        let role = |name| ColumnRole::new(name, "");
        let columns = RevealColumns {
            id: role("id"),
            label: role("label"),
            labels: role("labels"),
            probs_prefix: role("p"),
            probs_cols: None,
            embedding: role("emb"),
            source: "",
        };
        let labels = read_labels(&input, &columns).unwrap();
        let given: Vec<Vec<usize>> = (0..6).map(|i| vec![i % 2]).collect();
        let rows = [
            [0.05, 0.95],
            [0.1, 0.9],
            [0.9, 0.1],
            [0.2, 0.8],
            [0.85, 0.15],
            [0.1, 0.9],
        ];
        let hard = [1, 1, 0, 1, 0, 1];
        let sources = vec![
            Source {
                name: "model".into(),
                kind: SourceKind::Probs,
                predictions: Predictions::Probabilities(
                    Probabilities::from_rows(rows.iter().map(|r| r.to_vec()).collect()).unwrap(),
                ),
                covered: 6,
            },
            Source {
                name: "annotator".into(),
                kind: SourceKind::Hard,
                predictions: Predictions::Hard(
                    hard.iter().map(|&l| Some(ClassValue::Int(l))).collect(),
                ),
                covered: 6,
            },
        ];
        let specs: Vec<SourceSpec> = sources
            .iter()
            .map(|s| SourceSpec {
                name: s.name.clone(),
                path: format!("{}.parquet", s.name),
                kind: s.kind,
                column: None,
            })
            .collect();
        let seen = (0..2).map(ClassValue::Int).collect();
        let classes = Classes::settle(None, &seen, None).unwrap();
        let settings = RevealSettings {
            filter: FilterOptions {
                filter_by: FilterBy::PruneByNoiseRate,
                frac_noise: 1.0,
                min_examples_per_class: 1,
            },
            quality: QualityMethod::SelfConfidence,
            detectors: None,
            probe: None,
            knn: KnnOptions {
                k: 3,
                rounds: 2,
                sample: 0.9,
                seed: 0,
            },
            min_detectors: None,
            tau: None,
            confidence: 0.5,
            missing_threshold: None,
            seed: 0,
        };
        let inputs = RevealInputs {
            given: &given,
            multi_label: false,
            classes: &classes,
            sources: &sources,
            embeddings: None,
        };
        let detection =
            detect(&inputs, &settings, &Device::flex(), &mut |_| {}, &|| false).unwrap();
        let verdict = gate(
            &detection.decisions,
            &GateLimits {
                max_issue_rate: Some(0.1),
                max_missing_rate: None,
                fail_on: Vec::new(),
            },
        );
        let report = Report {
            labels: &labels,
            classes: &classes,
            given: &given,
            specs: &specs,
            sources: &sources,
            detection: &detection,
            gate: &verdict,
            filter_by: FilterBy::PruneByNoiseRate,
            soft_label: true,
        };
        assert_eq!(
            (report.rows(), report.issues(), report.with_missing()),
            (6, 1, 0)
        );
        assert_eq!(report.of_type(IssueType::Noisy), 1);

        let frame = report.frame().unwrap();
        assert_eq!(frame.height(), 6);
        let issue: Vec<bool> = frame
            .column("is_label_issue")
            .unwrap()
            .bool()
            .unwrap()
            .iter()
            .map(Option::unwrap)
            .collect();
        assert_eq!(issue, [true, false, false, false, false, false]);
        let suggested = frame.column("suggested_label").unwrap().i64().unwrap();
        assert_eq!(suggested.get(0), Some(1));
        let fired = frame.column("detectors").unwrap().str().unwrap();
        assert_eq!(fired.get(0), Some("cl,vote"));
        assert_eq!(fired.get(1), Some(""));
        assert!(frame.column("soft_label").is_ok());
        assert!(frame.column("cl_issue").is_ok());

        let mut text = Vec::new();
        report.write_text(&mut text, "elsewhere").unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.starts_with("1 of 6 rows are label issues (16.67%"),
            "{text}"
        );
        assert!(text.contains("vote weights: prior"), "{text}");

        let summary = report.summary_json(|f| format!("failed: {f:?}"));
        assert_eq!(summary["rows"], 6);
        assert_eq!(summary["issues"], 1);
        assert_eq!(summary["by_type"]["noisy"], 1);
        assert_eq!(summary["filter_by"], "prune_by_noise_rate");
        assert_eq!(summary["sources"][1]["path"], "annotator.parquet");
        assert_eq!(summary["per_class"][1]["suggested_into"], 1);
        assert_eq!(summary["gate"]["passed"], false);
        assert!(
            summary["gate"]["failures"][0]
                .as_str()
                .unwrap()
                .starts_with("failed: IssueRate")
        );
    }
}
