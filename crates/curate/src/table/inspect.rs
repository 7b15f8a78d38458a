//! What `inspect` reports of a data file: schema, row count, provenance, metadata and
//! per-column statistics.

use std::io::Write;

use anyhow::Result;
use serde::Serialize;

use super::{ColumnSummary, Input, InputDigest, Provenance, ShardRecord, summarize};
use crate::error::InputError;
use crate::text::{Align, clip, shell_words, text_table};

/// Keys polars and arrow write for their own use; not shown as user metadata.
const INTERNAL_KEYS: [&str; 2] = ["ARROW:schema", "pandas"];

#[derive(Debug, Serialize)]
pub struct FileReport {
    pub path: String,
    pub format: String,
    pub rows: usize,
    pub columns: Vec<ColumnReport>,
    pub provenance: Option<ProvenanceReport>,
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum ColumnReport {
    Schema { name: String, dtype: String },
    Summary(ColumnSummary),
}

/// The provenance an output carries.
#[derive(Debug, Serialize)]
pub struct ProvenanceReport {
    pub version: String,
    pub command: Vec<String>,
    pub inputs: Vec<InputDigest>,
    pub seed: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard: Option<ShardRecord>,
}

impl From<Provenance> for ProvenanceReport {
    fn from(p: Provenance) -> Self {
        ProvenanceReport {
            version: p.version,
            command: p.command,
            inputs: p.inputs,
            seed: p.seed,
            shard: p.shard,
        }
    }
}

/// Schema, row count, provenance, other key-value metadata and, with `top`, per-column
/// statistics with each categorical column's `top` most frequent values.
pub fn inspect_file(input: &Input, top: Option<usize>) -> Result<FileReport> {
    let schema = input.schema()?;
    let rows = input.row_count()?;
    let pairs = input.key_value_metadata()?;
    let provenance =
        Provenance::from_key_values(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .map(ProvenanceReport::from);
    let metadata = pairs
        .into_iter()
        .filter(|(key, _)| !key.starts_with("curate.") && !INTERNAL_KEYS.contains(&key.as_str()))
        .map(|(key, value)| (key, serde_json::Value::String(value)))
        .collect();
    let columns = match top {
        None => schema
            .iter()
            .map(|(name, dtype)| ColumnReport::Schema {
                name: name.to_string(),
                dtype: dtype.to_string(),
            })
            .collect(),
        Some(top) => summarize(input.scan()?, &schema, top)
            .map_err(|err| InputError::new(input.label(), err.to_string()))?
            .into_iter()
            .map(ColumnReport::Summary)
            .collect(),
    };
    Ok(FileReport {
        path: input.label().to_string(),
        format: input.format().to_string(),
        rows,
        columns,
        provenance,
        metadata,
    })
}

/// The provenance lines of a report.
pub(crate) fn write_provenance(
    out: &mut impl Write,
    provenance: &Option<ProvenanceReport>,
) -> std::io::Result<()> {
    match provenance {
        Some(p) => {
            writeln!(out, "  provenance  curate {} (seed {})", p.version, p.seed)?;
            writeln!(out, "    command   {}", shell_words(&p.command))?;
            for input in &p.inputs {
                writeln!(
                    out,
                    "    input     {} ({} bytes, sha256 {})",
                    input.path, input.bytes, input.sha256
                )?;
            }
            if let Some(record) = &p.shard {
                writeln!(
                    out,
                    "    shard     {} (rows {}..{} of {}, split by {}; run {})",
                    record.shard,
                    record.rows[0],
                    record.rows[1],
                    record.of_rows,
                    record.split,
                    &record.run[..record.run.len().min(12)]
                )?;
            }
        }
        None => writeln!(out, "  provenance  none (not written by curate)")?,
    }
    Ok(())
}

/// The report as text for people.
pub fn write_text(out: &mut impl Write, report: &FileReport) -> std::io::Result<()> {
    writeln!(out, "{}", report.path)?;
    writeln!(out, "  format      {}", report.format)?;
    writeln!(out, "  rows        {}", report.rows)?;
    writeln!(out, "  columns     {}", report.columns.len())?;
    write_provenance(out, &report.provenance)?;
    for (key, value) in &report.metadata {
        let value = value.as_str().unwrap_or_default();
        writeln!(out, "  metadata    {key} = {}", clip(value, 60))?;
    }
    writeln!(out)?;

    let rows: Vec<Vec<String>> = report
        .columns
        .iter()
        .map(|column| match column {
            ColumnReport::Schema { name, dtype } => {
                vec![name.clone(), dtype.clone(), String::new(), String::new()]
            }
            ColumnReport::Summary(summary) => vec![
                summary.name.clone(),
                summary.dtype.clone(),
                summary.nulls.to_string(),
                describe(summary),
            ],
        })
        .collect();
    let align = [Align::Left, Align::Left, Align::Right, Align::Left];
    for line in text_table(&["column", "type", "nulls", "summary"], &rows, &align) {
        writeln!(out, "  {line}")?;
    }
    Ok(())
}

fn describe(summary: &ColumnSummary) -> String {
    if let (Some(min), Some(max)) = (&summary.min, &summary.max) {
        return format!("min {}  max {}", show(min), show(max));
    }
    if let Some(top) = &summary.top {
        let values: Vec<String> = top
            .iter()
            .map(|v| format!("{} ×{}", show(&v.value), v.count))
            .collect();
        let distinct = summary.distinct.unwrap_or(0);
        if top.first().is_some_and(|v| v.count == 1) {
            return format!("{distinct} distinct (all)");
        }
        return format!("{distinct} distinct; top {}", values.join(", "));
    }
    String::new()
}

fn show(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(text) => format!("{:?}", clip(text, 32)),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::Output;
    use polars::prelude::*;

    #[test]
    fn reports_rows_provenance_metadata_and_statistics() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        let path = path.to_str().unwrap();
        let frame = df!("id" => [1i64, 2, 3], "kind" => ["a", "b", "a"]).unwrap();
        let provenance = Provenance::new(vec!["curate".into(), "test".into()], 7);
        Output::create(path, None, false)
            .unwrap()
            .write_frame(&frame, Some(&provenance))
            .unwrap();
        let input = Input::open(path, None).unwrap();

        let report = inspect_file(&input, Some(1)).unwrap();
        assert_eq!((report.rows, report.format.as_str()), (3, "parquet"));
        assert_eq!(report.provenance.as_ref().unwrap().seed, 7);
        assert_eq!(
            report.provenance.as_ref().unwrap().command,
            ["curate", "test"]
        );
        // curate's own keys are shown as provenance, not as other metadata.
        assert!(report.metadata.keys().all(|k| !k.starts_with("curate.")));
        let ColumnReport::Summary(kind) = &report.columns[1] else {
            panic!("statistics asked for");
        };
        assert_eq!(kind.top.as_ref().unwrap()[0].count, 2);

        let mut text = Vec::new();
        write_text(&mut text, &report).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains("  rows        3\n"), "{text}");
        assert!(text.contains("    command   curate test"), "{text}");
        assert!(text.contains("2 distinct"), "{text}");

        let schema_only = inspect_file(&input, None).unwrap();
        assert!(matches!(
            &schema_only.columns[0],
            ColumnReport::Schema { name, .. } if name == "id"
        ));
    }
}
