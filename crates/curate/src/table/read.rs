//! Reading tables: one entry point for files and stdin in every supported format.

use std::fs::File;
use std::io::{BufRead, Cursor, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use polars::io::mmap::MmapBytesReader;
use polars::prelude::*;

use super::format::{Format, unknown_extension_message};
use super::provenance::{InputDigest, Provenance};
use crate::error::InputError;

/// A table input named on the command line: a file or `-` for stdin.
#[derive(Debug, Clone)]
pub struct Input {
    label: String,
    source: Source,
    format: Format,
}

#[derive(Debug, Clone)]
enum Source {
    File(PathBuf),
    /// Stdin, read whole: it cannot be scanned twice or memory-mapped.
    Bytes(Arc<Vec<u8>>),
}

/// The format bytes on stdin are in: Parquet and Arrow IPC files open with magic bytes; anything
/// else is taken for JSON Lines (CSV on stdin needs `--input-format csv`).
fn sniff(bytes: &[u8]) -> Format {
    if bytes.starts_with(b"PAR1") {
        Format::Parquet
    } else if bytes.starts_with(b"ARROW1") {
        Format::Ipc
    } else {
        Format::Jsonl
    }
}

impl Input {
    /// Resolve `path` (or `-`) and its format: `format` when given, else the extension; stdin
    /// is Parquet or Arrow IPC when it starts with their magic bytes, else JSON Lines. Fails on a missing, empty or unrecognised file before any
    /// work is done.
    pub fn open(path: &str, format: Option<Format>) -> Result<Input, InputError> {
        if path == "-" {
            let mut bytes = Vec::new();
            std::io::stdin()
                .lock()
                .read_to_end(&mut bytes)
                .map_err(|err| InputError::new("<stdin>", format!("cannot read: {err}")))?;
            let format = format.unwrap_or_else(|| sniff(&bytes));
            return Self::from_bytes("<stdin>", bytes, format);
        }
        let file_path = PathBuf::from(path);
        let meta = std::fs::metadata(&file_path).map_err(|err| {
            let reason = match err.kind() {
                std::io::ErrorKind::NotFound => "file not found".to_string(),
                std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
                _ => format!("cannot open: {err}"),
            };
            InputError::new(path, reason)
        })?;
        if meta.is_dir() {
            return Err(InputError::new(path, "is a directory, expected a file"));
        }
        let format = match format {
            Some(format) => format,
            None => Format::from_path(&file_path)
                .ok_or_else(|| InputError::new(path, unknown_extension_message(&file_path)))?,
        };
        if meta.len() == 0 {
            return Err(InputError::new(path, "file is empty"));
        }
        Ok(Input {
            label: path.to_string(),
            source: Source::File(file_path),
            format,
        })
    }

    /// An input held in memory (stdin, or data a caller already has).
    pub(crate) fn from_bytes(
        label: &str,
        bytes: Vec<u8>,
        format: Format,
    ) -> Result<Input, InputError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(InputError::new(label, "input is empty"));
        }
        Ok(Input {
            label: label.to_string(),
            source: Source::Bytes(Arc::new(bytes)),
            format,
        })
    }

    /// The name used in messages: the path as given, or `<stdin>`.
    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn format(&self) -> Format {
        self.format
    }

    pub fn path(&self) -> Option<&Path> {
        match &self.source {
            Source::File(path) => Some(path),
            Source::Bytes(_) => None,
        }
    }

    /// A lazy scan, so commands read only the columns and rows they use.
    pub fn scan(&self) -> Result<LazyFrame, InputError> {
        let sources = match &self.source {
            Source::File(path) => {
                let file = File::open(path)
                    .map_err(|err| InputError::new(&self.label, format!("cannot open: {err}")))?;
                ScanSources::Files(Arc::from(vec![file]))
            }
            Source::Bytes(bytes) => {
                ScanSources::Buffers(Arc::from(vec![polars_buffer::Buffer::from(
                    bytes.as_ref().clone(),
                )]))
            }
        };
        let scanned = match self.format {
            // One opened file or buffer: there is no directory layout to read partitions from.
            Format::Parquet => LazyFrame::scan_parquet_sources(
                sources,
                ScanArgsParquet {
                    hive_options: HiveOptions::new_disabled(),
                    ..Default::default()
                },
            ),
            Format::Ipc => LazyFrame::scan_ipc_sources(
                sources,
                IpcScanOptions::default(),
                UnifiedScanArgs {
                    hive_options: HiveOptions::new_disabled(),
                    ..Default::default()
                },
            ),
            // Types are inferred from every row: a late value that does not fit the type
            // guessed from the first rows would otherwise fail mid-read.
            Format::Csv => LazyCsvReader::new_with_sources(sources)
                .with_infer_schema_length(None)
                .with_raise_if_empty(true)
                .finish(),
            Format::Jsonl => LazyJsonLineReader::new_with_sources(sources)
                .with_infer_schema_length(None)
                .finish(),
        };
        scanned.map_err(|err| self.read_error(&err))
    }

    /// Read the whole table.
    pub fn read(&self) -> Result<DataFrame, InputError> {
        self.collect(self.scan()?)
    }

    /// Run a query built on [`scan`](Input::scan), reporting failures against this input.
    pub fn collect(&self, query: LazyFrame) -> Result<DataFrame, InputError> {
        query.collect().map_err(|err| self.read_error(&err))
    }

    /// The table's schema, from the file footer or a sample where the format allows.
    pub fn schema(&self) -> Result<SchemaRef, InputError> {
        self.scan()?
            .collect_schema()
            .map_err(|err| self.read_error(&err))
    }

    /// Row count without reading the data where the format allows (Parquet, IPC footers).
    pub(crate) fn row_count(&self) -> Result<usize, InputError> {
        self.count(self.scan()?)
    }

    /// Rows a query built on [`scan`](Input::scan) yields, without materialising them.
    pub fn count(&self, query: LazyFrame) -> Result<usize, InputError> {
        let counted = self.collect(query.select([len().alias("rows")]))?;
        let value = counted
            .column("rows")
            .and_then(|c| c.get(0))
            .map_err(|err| self.read_error(&err))?;
        Ok(value.extract::<usize>().unwrap_or(0))
    }

    /// Hash of the input's bytes for provenance.
    pub fn digest(&self) -> Result<InputDigest, InputError> {
        match &self.source {
            Source::File(path) => InputDigest::of_file(&self.label, path)
                .map_err(|err| InputError::new(&self.label, format!("cannot read: {err}"))),
            Source::Bytes(bytes) => Ok(InputDigest::of_bytes("-", bytes)),
        }
    }

    /// The provenance a curate output carries; `None` for files without it (not written by
    /// curate, or CSV and JSON Lines).
    pub fn provenance(&self) -> Result<Option<Provenance>, InputError> {
        let pairs = self.key_value_metadata()?;
        Ok(Provenance::from_key_values(
            pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        ))
    }

    /// File-level key-value metadata (Parquet footer, IPC custom metadata). Empty for CSV and
    /// JSON Lines, which have none.
    pub(crate) fn key_value_metadata(&self) -> Result<Vec<(String, String)>, InputError> {
        match self.format {
            Format::Parquet => {
                let pairs = match &self.source {
                    Source::File(path) => parquet_metadata(self.open_file(path)?),
                    Source::Bytes(bytes) => parquet_metadata(Cursor::new(bytes.as_slice())),
                };
                pairs.map_err(|err| self.read_error(&err))
            }
            Format::Ipc => {
                let pairs = match &self.source {
                    Source::File(path) => ipc_metadata(self.open_file(path)?),
                    Source::Bytes(bytes) => ipc_metadata(Cursor::new(bytes.as_slice())),
                };
                pairs.map_err(|err| self.read_error(&err))
            }
            Format::Csv | Format::Jsonl => Ok(Vec::new()),
        }
    }

    fn open_file(&self, path: &Path) -> Result<File, InputError> {
        File::open(path).map_err(|err| InputError::new(&self.label, format!("cannot open: {err}")))
    }

    /// Turn a reader error into a one-line input error, pointing at the first bad row when
    /// the format lets us find it.
    fn read_error(&self, err: &PolarsError) -> InputError {
        let located = match self.format {
            Format::Jsonl => self.bytes().and_then(|b| locate_bad_json_line(&b)),
            Format::Csv => match self.bytes() {
                Some(bytes) => match locate_invalid_utf8(&bytes) {
                    // The header itself: no row to name.
                    Some((0, message)) => return InputError::new(&self.label, message),
                    Some(found) => Some(found),
                    None => locate_bad_csv_record(&bytes),
                },
                None => None,
            },
            Format::Parquet | Format::Ipc => None,
        };
        if let Some((row, message)) = located {
            return InputError::new(&self.label, message).row(row);
        }
        InputError::new(
            &self.label,
            format!("cannot read as {}: {}", self.format, polars_message(err)),
        )
    }

    /// The raw bytes, for locating an error after the reader failed.
    fn bytes(&self) -> Option<Vec<u8>> {
        match &self.source {
            Source::File(path) => std::fs::read(path).ok(),
            Source::Bytes(bytes) => Some(bytes.as_ref().clone()),
        }
    }
}

/// A JSON Lines column whose values are of more than one JSON type (a reader stores them all
/// as text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeMix {
    pub column: String,
    /// Each JSON type met, with the first (1-based) row that has it, in order of rows.
    pub first_rows: Vec<(&'static str, usize)>,
}

impl TypeMix {
    /// "number (row 1), string (row 2)".
    pub fn describe(&self) -> String {
        self.first_rows
            .iter()
            .map(|(kind, row)| format!("{kind} (row {row})"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn json_kind(value: &serde_json::Value) -> Option<&'static str> {
    use serde_json::Value;
    match value {
        Value::Null => None,
        Value::Bool(_) => Some("boolean"),
        Value::Number(_) => Some("number"),
        Value::String(_) => Some("string"),
        Value::Array(_) => Some("array"),
        Value::Object(_) => Some("object"),
    }
}

impl Input {
    /// For a JSON Lines input: which of `columns` hold values of more than one JSON type (nulls
    /// aside), with the first row of each type. One pass over the lines; other formats carry
    /// their types and give none.
    pub fn json_type_mixes(&self, columns: &[&str]) -> Result<Vec<TypeMix>, InputError> {
        if self.format != Format::Jsonl || columns.is_empty() {
            return Ok(Vec::new());
        }
        let reader: Box<dyn BufRead + '_> = match &self.source {
            Source::File(path) => Box::new(std::io::BufReader::new(self.open_file(path)?)),
            Source::Bytes(bytes) => Box::new(bytes.as_slice()),
        };
        let mut seen: Vec<Vec<(&'static str, usize)>> = vec![Vec::new(); columns.len()];
        let mut row = 0;
        for line in reader.lines() {
            let line =
                line.map_err(|err| InputError::new(&self.label, format!("cannot read: {err}")))?;
            if line.trim().is_empty() {
                continue;
            }
            row += 1;
            let Ok(serde_json::Value::Object(object)) = serde_json::from_str(&line) else {
                continue;
            };
            for (kinds, name) in seen.iter_mut().zip(columns) {
                if let Some(kind) = object.get(*name).and_then(json_kind)
                    && !kinds.iter().any(|(k, _)| *k == kind)
                {
                    kinds.push((kind, row));
                }
            }
        }
        Ok(columns
            .iter()
            .zip(seen)
            .filter(|(_, kinds)| kinds.len() > 1)
            .map(|(name, first_rows)| TypeMix {
                column: name.to_string(),
                first_rows,
            })
            .collect())
    }
}

/// The first line that is not a JSON object, as (1-based row, message). Blank lines are not rows.
fn locate_bad_json_line(bytes: &[u8]) -> Option<(usize, String)> {
    let mut row = 0;
    for line in bytes.split(|b| *b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        row += 1;
        match serde_json::from_slice::<serde_json::Value>(line) {
            Ok(serde_json::Value::Object(_)) => {}
            Ok(_) => return Some((row, "expected a JSON object per line".to_string())),
            Err(err) => return Some((row, format!("invalid JSON: {err}"))),
        }
    }
    None
}

/// The CSV record (0 for the header, then 1-based rows) holding the first byte that is not
/// UTF-8, with a message naming it.
fn locate_invalid_utf8(bytes: &[u8]) -> Option<(usize, String)> {
    let at = std::str::from_utf8(bytes).err()?.valid_up_to();
    let mut in_quotes = false;
    let mut record = 0;
    for &byte in &bytes[..at] {
        match byte {
            b'"' => in_quotes = !in_quotes,
            b'\n' if !in_quotes => record += 1,
            _ => {}
        }
    }
    let message = format!(
        "not valid UTF-8 (byte 0x{:02x} at offset {at}); curate reads UTF-8 text: convert the file (e.g. iconv -f latin1 -t utf-8)",
        bytes[at]
    );
    Some((record, message))
}

/// The first CSV record whose field count differs from the header's, or that opens a quote
/// it never closes, as (1-based row after the header, message).
fn locate_bad_csv_record(bytes: &[u8]) -> Option<(usize, String)> {
    let mut header_fields = None;
    let mut record = 0usize; // 0 is the header
    let mut fields = 1usize;
    let mut in_quotes = false;
    let mut empty = true;
    let mut end_record =
        |fields: usize, empty: bool, record: &mut usize| -> Option<(usize, String)> {
            if empty {
                return None;
            }
            let found = match header_fields {
                None => {
                    header_fields = Some(fields);
                    None
                }
                Some(expected) if expected != fields => Some((
                    *record,
                    format!("{fields} fields, but the header has {expected}"),
                )),
                Some(_) => None,
            };
            *record += 1;
            found
        };
    for &byte in bytes {
        match byte {
            b'"' => {
                in_quotes = !in_quotes;
                empty = false;
            }
            b',' if !in_quotes => {
                fields += 1;
                empty = false;
            }
            b'\n' if !in_quotes => {
                if let Some(found) = end_record(fields, empty, &mut record) {
                    return Some(found);
                }
                fields = 1;
                empty = true;
            }
            b'\r' if !in_quotes => {}
            _ => empty = false,
        }
    }
    if in_quotes {
        return Some((record, "a quoted field is never closed".to_string()));
    }
    end_record(fields, empty, &mut record)
}

fn parquet_metadata<R: MmapBytesReader>(reader: R) -> PolarsResult<Vec<(String, String)>> {
    let mut reader = ParquetReader::new(reader);
    let metadata = reader.get_metadata()?;
    Ok(metadata
        .key_value_metadata
        .iter()
        .flatten()
        .map(|kv| (kv.key.clone(), kv.value.clone().unwrap_or_default()))
        .collect())
}

/// IPC files keep metadata in two places: the footer (where curate writes provenance) and the
/// schema (where pyarrow writes `schema.metadata`). Both are read, footer first.
fn ipc_metadata<R: Read + std::io::Seek>(mut reader: R) -> PolarsResult<Vec<(String, String)>> {
    let metadata = polars_arrow::io::ipc::read::read_file_metadata(&mut reader)?;
    Ok([metadata.custom_metadata, metadata.custom_schema_metadata]
        .into_iter()
        .flatten()
        .flat_map(|pairs| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        })
        .collect())
}

/// Polars errors can carry a context stack and advice worded for its Python API over several
/// lines; keep the statement of what went wrong (and the underlying error, if given).
pub(crate) fn polars_message(err: &PolarsError) -> String {
    let text = err.to_string();
    let text = text
        .split("\n\nThis error occurred")
        .next()
        .unwrap_or(&text);
    let original = text
        .split_once("Original error:")
        .map(|(_, rest)| rest.trim().trim_matches('`').trim().to_string());
    let statement = text
        .split("You might want to try")
        .next()
        .unwrap_or(text)
        .split("Consider setting")
        .next()
        .unwrap_or(text);
    let mut message = crate::error::one_line(statement.trim());
    if let Some(original) = original.filter(|o| !o.is_empty()) {
        message.push_str(&format!(" ({})", crate::error::one_line(&original)));
    }
    message
}

/// Hash `first` and every distinct other path on a thread of its own (content hashes of large
/// inputs take a while; the caller reads meanwhile). The digests come in order, repeats once.
pub fn digest_in_background(
    first: Input,
    others: Vec<String>,
) -> std::thread::JoinHandle<anyhow::Result<Vec<super::InputDigest>>> {
    std::thread::spawn(move || {
        let mut seen = std::collections::BTreeSet::new();
        seen.insert(first.label().to_string());
        let mut digests = vec![first.digest()?];
        for path in others {
            if seen.insert(path.clone()) {
                digests.push(Input::open(&path, None)?.digest()?);
            }
        }
        Ok(digests)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn background_digests_come_in_order_once_each() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        };
        let a = write("a.csv", "x\n1\n");
        let b = write("b.csv", "x\n2\n");
        let first = Input::open(&a, None).unwrap();
        let digests = digest_in_background(first, vec![b.clone(), a.clone(), b.clone()])
            .join()
            .unwrap()
            .unwrap();
        assert_eq!(digests.len(), 2);
        assert_eq!(
            (digests[0].path.as_str(), digests[1].path.as_str()),
            (a.as_str(), b.as_str())
        );
        assert_ne!(digests[0].sha256, digests[1].sha256);
    }

    #[test]
    fn bad_csv_records_are_located() {
        assert_eq!(
            locate_bad_csv_record(b"a,b\n1,2\n3,4,5\n"),
            Some((2, "3 fields, but the header has 2".into()))
        );
        assert_eq!(
            locate_bad_csv_record(b"a,b\n1,2\n3,\"x\n"),
            Some((2, "a quoted field is never closed".into()))
        );
        assert_eq!(
            locate_bad_csv_record(b"a,b\r\n\"1,5\",2\r\n\r\n3,\"x\ny\"\n"),
            None
        );
        assert_eq!(
            locate_bad_csv_record(b"a,b\n1,2\n3"),
            Some((2, "1 fields, but the header has 2".into()))
        );
    }

    #[test]
    fn bad_json_lines_are_located() {
        assert_eq!(
            locate_bad_json_line(b"{}\n\n[1]\n"),
            Some((2, "expected a JSON object per line".into()))
        );
        assert!(
            locate_bad_json_line(b"{\"a\": 1}\n{\"a\": }\n")
                .unwrap()
                .1
                .starts_with("invalid JSON")
        );
        assert_eq!(locate_bad_json_line(b"{}\n{}"), None);
    }

    #[test]
    fn polars_messages_lose_python_advice() {
        let err = PolarsError::ComputeError(
            "could not parse `x` as dtype `i64` at column 'b' (column number 2)\n\n\
             You might want to try:\n- increasing `infer_schema_length`\n\n\
             Original error: ```invalid csv file\n\nField `x` is not properly escaped.```"
                .into(),
        );
        assert_eq!(
            polars_message(&err),
            "could not parse `x` as dtype `i64` at column 'b' (column number 2) \
             (invalid csv file; Field `x` is not properly escaped.)"
        );
        let err = PolarsError::ComputeError(
            "found more fields than defined in 'Schema'\n\nConsider setting 'truncate_ragged_lines=true'."
                .into(),
        );
        assert_eq!(
            polars_message(&err),
            "found more fields than defined in 'Schema'"
        );
    }
}
