//! What `inspect` reports of a data file: schema, row count, provenance, metadata and
//! per-column statistics.

use anyhow::Result;
use serde::Serialize;

use super::{ColumnSummary, Input, InputDigest, Provenance, summarize};
use crate::error::InputError;

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
}

impl From<Provenance> for ProvenanceReport {
    fn from(p: Provenance) -> Self {
        ProvenanceReport {
            version: p.version,
            command: p.command,
            inputs: p.inputs,
            seed: p.seed,
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

        let schema_only = inspect_file(&input, None).unwrap();
        assert!(matches!(
            &schema_only.columns[0],
            ColumnReport::Schema { name, .. } if name == "id"
        ));
    }
}
