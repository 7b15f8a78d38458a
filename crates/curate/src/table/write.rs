//! Writing tables without ever leaving a half-written or clobbered file behind.
//!
//! An [`Output`] is opened before the work starts, so a refused target (one that exists and
//! may not be replaced, a missing directory) fails fast. Data goes to a temporary file beside the target
//! and is renamed into place only by [`TableWriter::finish`]; dropping the writer on any error
//! or Ctrl-C removes the temporary file and leaves whatever was there untouched.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use indicatif::ProgressBar;
use polars::prelude::*;
use tempfile::TempPath;

use super::format::{Format, unknown_extension_message};
use super::provenance::Provenance;
use crate::error::{OutputExists, UsageError, usage};
use crate::interrupt;

/// Rows per batch when a whole frame is written: bounds the memory the encoders hold and
/// gives Parquet row groups of a sensible size.
pub const DEFAULT_BATCH_ROWS: usize = 128 * 1024;

/// Where a command's table goes: a file (atomically) or stdout.
pub struct Output {
    label: String,
    format: Format,
    sink: Sink,
}

enum Sink {
    Stdout,
    File {
        file: File,
        temp: TempPath,
        target: PathBuf,
        force: bool,
    },
}

impl Output {
    /// Prepare `path` (or `-` for stdout, JSON Lines unless `format` says otherwise). Refuses
    /// an existing file unless `force`, and a path whose format cannot be told.
    pub fn create(path: &str, format: Option<Format>, force: bool) -> Result<Output> {
        if path == "-" {
            return Ok(Output {
                label: "<stdout>".to_string(),
                format: format.unwrap_or(Format::Jsonl),
                sink: Sink::Stdout,
            });
        }
        let target = PathBuf::from(path);
        let format = match format {
            Some(format) => format,
            None => Format::from_path(&target)
                .ok_or_else(|| usage(format!("{path}: {}", unknown_extension_message(&target))))?,
        };
        if target.is_dir() {
            bail!(UsageError(format!(
                "{path}: is a directory, expected a file path"
            )));
        }
        if target.exists() && !force {
            bail!(OutputExists::file(path));
        }
        let dir = match target.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dir.is_dir() {
            bail!(UsageError(format!(
                "{path}: directory '{}' does not exist",
                dir.display()
            )));
        }
        let (file, temp) = temp_file_beside(&target, &dir)
            .with_context(|| {
                format!(
                    "{path}: cannot create a temporary file in '{}'",
                    dir.display()
                )
            })?
            .into_parts();
        Ok(Output {
            label: path.to_string(),
            format,
            sink: Sink::File {
                file,
                temp,
                target,
                force,
            },
        })
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// Start writing batches of `schema`. Provenance goes into the file's key-value metadata
    /// where the format has any (Parquet, IPC).
    pub fn writer(self, schema: &Schema, provenance: Option<&Provenance>) -> Result<TableWriter> {
        // CSV holds no nested values: list and struct columns are written as JSON text.
        let json_columns: Vec<PlSmallStr> = if self.format.holds_nested() {
            Vec::new()
        } else {
            schema
                .iter()
                .filter(|(_, dtype)| dtype.is_nested())
                .map(|(name, _)| name.clone())
                .collect()
        };
        let written_schema: Schema = schema
            .iter()
            .map(|(name, dtype)| {
                let dtype = if json_columns.contains(name) {
                    DataType::String
                } else {
                    dtype.clone()
                };
                Field::new(name.clone(), dtype)
            })
            .collect();
        let stream: Box<dyn Write + Send> = match &self.sink {
            Sink::Stdout => Box::new(io::stdout()),
            Sink::File { file, .. } => Box::new(
                file.try_clone()
                    .with_context(|| format!("{}: cannot write", self.label))?,
            ),
        };
        let key_values = provenance.map(Provenance::key_values).unwrap_or_default();
        let encoder = match self.format {
            Format::Parquet => {
                let metadata = (!key_values.is_empty())
                    .then(|| KeyValueMetadata::from_static(key_values.clone()));
                Encoder::Parquet(Box::new(compat_parquet_writer(stream, schema, metadata)?))
            }
            Format::Ipc => {
                let arrow_schema = schema.to_arrow(COMPAT);
                let fields =
                    polars_arrow::io::ipc::write::default_ipc_fields(arrow_schema.iter_values());
                let mut writer = IpcWriter::new(stream)
                    .with_compat_level(COMPAT)
                    .batched(schema, fields)?;
                if !key_values.is_empty() {
                    writer.set_custom_metadata(key_values.clone());
                }
                Encoder::Ipc(writer)
            }
            Format::Csv => Encoder::Csv(CsvWriter::new(stream).batched(&written_schema)?),
            Format::Jsonl => Encoder::Jsonl(polars::io::json::BatchedWriter::new(stream)),
        };
        Ok(TableWriter {
            output: self,
            encoder,
            schema: schema.clone(),
            json_columns,
            rows: 0,
        })
    }

    /// Write a whole frame in bounded batches and commit it.
    pub fn write_frame(self, frame: &DataFrame, provenance: Option<&Provenance>) -> Result<u64> {
        let rows = frame.height() as u64;
        self.stage_frame(frame, provenance)?.commit()?;
        Ok(rows)
    }

    /// Write a whole frame, flushed to disk but not yet in place: a run with several outputs
    /// stages them all, then puts them in place together with [`commit_all`].
    pub fn stage_frame(self, frame: &DataFrame, provenance: Option<&Provenance>) -> Result<Staged> {
        let mut writer = self.writer(frame.schema(), provenance)?;
        writer.write_frame(frame, &ProgressBar::hidden())?;
        writer.stage()
    }

    /// Write a whole non-table document (a JSON report) and commit it the same way.
    pub fn write_document(self, bytes: &[u8]) -> Result<()> {
        self.stage_document(bytes)?.commit()
    }

    /// A whole non-table document, staged as by [`Output::stage_frame`].
    pub fn stage_document(self, bytes: &[u8]) -> Result<Staged> {
        interrupt::check()?;
        match &self.sink {
            Sink::Stdout => io::stdout()
                .write_all(bytes)
                .context("<stdout>: cannot write")?,
            Sink::File { file, .. } => (&*file)
                .write_all(bytes)
                .with_context(|| format!("{}: cannot write", self.label))?,
        }
        Staged::of(self.sink, self.label)
    }
}

/// An output written in full and flushed to disk, not yet renamed into place; dropped, its
/// temporary file is removed.
pub struct Staged {
    label: String,
    sink: Sink,
}

impl Staged {
    fn of(sink: Sink, label: String) -> Result<Staged> {
        if let Sink::File { file, .. } = &sink {
            file.sync_all()
                .with_context(|| format!("{label}: cannot flush to disk"))?;
        }
        Ok(Staged { label, sink })
    }

    /// Put this one output in place.
    pub fn commit(self) -> Result<()> {
        commit_all(vec![self])
    }
}

/// Put every staged output of a run in place, or none: nothing is renamed before all are
/// written (so a full disk or an error on a later output leaves every earlier file as it was),
/// a target that appeared meanwhile is refused before any rename, and a rename that fails
/// midway puts back what the earlier ones replaced.
pub fn commit_all(staged: Vec<Staged>) -> Result<()> {
    interrupt::check()?;
    let mut files = Vec::new();
    for output in staged {
        match output.sink {
            Sink::Stdout => io::stdout().flush().context("<stdout>: cannot write")?,
            Sink::File {
                file,
                temp,
                target,
                force,
            } => {
                drop(file);
                if !force && std::fs::symlink_metadata(&target).is_ok() {
                    bail!(OutputExists::file(&output.label));
                }
                files.push((output.label, temp, target, force));
            }
        }
    }
    // The files each rename replaces, kept (as hard links) until every rename has succeeded.
    // Where the file system has no hard links there is nothing to put back on a failure, as
    // with a single output.
    let backups: Vec<Option<TempPath>> = files
        .iter()
        .map(|(_, _, target, force)| {
            if !*force || !target.is_file() {
                return None;
            }
            let dir = target.parent().filter(|p| !p.as_os_str().is_empty());
            tempfile::Builder::new()
                .prefix(&super::place::temp_prefix(target))
                .suffix(&format!("{}.old", super::place::TEMP_SUFFIX))
                .make_in(dir.unwrap_or(Path::new(".")), |path| {
                    std::fs::hard_link(target, path)
                })
                .ok()
                .map(|kept| kept.into_temp_path())
        })
        .collect();
    let mut placed: Vec<(&PathBuf, &Option<TempPath>)> = Vec::new();
    for ((label, temp, target, force), backup) in files.iter().zip(&backups) {
        let result = if *force {
            std::fs::rename(temp, target)
        } else {
            // Another process may have created the target meanwhile; never replace it.
            super::output_dir::rename_no_replace(temp, target)
        };
        if let Err(err) = result {
            for (target, backup) in placed.iter().rev() {
                let _ = match backup {
                    Some(backup) => std::fs::rename(backup, target),
                    None => std::fs::remove_file(target),
                };
            }
            if err.kind() == io::ErrorKind::AlreadyExists {
                bail!(OutputExists::file(label));
            }
            return Err(anyhow::Error::new(err)
                .context(format!("{label}: cannot move the finished file into place")));
        }
        placed.push((target, backup));
    }
    drop(placed);
    for (_, temp, _, _) in files {
        // Renamed away already: nothing is left for the guard to remove.
        let _ = temp.keep();
    }
    Ok(())
}

/// The Arrow layout of written files: the oldest level writes plain large strings and binaries
/// instead of views, which pyarrow converts to pandas everywhere (views inside lists it cannot).
const COMPAT: CompatLevel = CompatLevel::oldest();

type ParquetBatches = polars::io::parquet::write::BatchedWriter<Box<dyn Write + Send>>;

/// A batched Parquet writer whose file schema is at [`COMPAT`] (polars' own picks the newest),
/// with polars' default settings: zstd, statistics, format version 1.
fn compat_parquet_writer(
    stream: Box<dyn Write + Send>,
    schema: &Schema,
    metadata: Option<KeyValueMetadata>,
) -> PolarsResult<ParquetBatches> {
    use polars::io::parquet::write::{StatisticsOptions, get_encodings};
    use polars_parquet::write::{CompressionOptions, FileWriter, Version, WriteOptions};
    let arrow_schema = schema.to_arrow(COMPAT);
    let options = WriteOptions {
        statistics: StatisticsOptions::default(),
        version: Version::V1,
        compression: CompressionOptions::Zstd(None),
        data_page_size: None,
    };
    let encodings = get_encodings(&arrow_schema);
    let writer = FileWriter::try_new(stream, arrow_schema, options)?;
    Ok(ParquetBatches::new(
        std::sync::Mutex::new(writer),
        encodings,
        options,
        true,
        metadata,
    ))
}

/// One batch as row groups at [`COMPAT`].
fn write_compat_parquet(writer: &mut ParquetBatches, batch: &DataFrame) -> PolarsResult<()> {
    use polars_parquet::write::RowGroupIterator;
    let file_writer = writer.get_writer().lock().expect("writer lock");
    let schema = file_writer.schema().clone();
    let options = file_writer.options();
    drop(file_writer);
    let encodings = polars::io::parquet::write::get_encodings(&schema);
    let chunks = batch
        .iter_chunks(COMPAT, true)
        .filter(|chunk| !chunk.is_empty())
        .map(Ok);
    let groups = RowGroupIterator::try_new(chunks, &schema, options, encodings)?
        .collect::<PolarsResult<Vec<_>>>()?;
    writer.write_row_groups(groups)
}

/// Create the temporary file in the target's directory (so the final rename never crosses
/// file systems), named after the target, host and process so a stray one is recognisable;
/// strays of dead runs for the same target are removed first.
fn temp_file_beside(target: &Path, dir: &Path) -> io::Result<tempfile::NamedTempFile> {
    super::place::remove_stale_temps(target);
    let prefix = super::place::temp_prefix(target);
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(super::place::TEMP_SUFFIX);
    // Created with 0666 so the umask decides, as for any file a user's program writes.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    builder.tempfile_in(dir)
}

fn write_error(err: PolarsError, label: &str) -> anyhow::Error {
    anyhow::Error::new(err).context(format!("{label}: cannot write"))
}

enum Encoder {
    // Boxed: the Parquet writer's state is several times the others'.
    Parquet(Box<polars::io::parquet::write::BatchedWriter<Box<dyn Write + Send>>>),
    Ipc(polars::io::ipc::BatchedWriter<Box<dyn Write + Send>>),
    Csv(polars::io::csv::write::BatchedWriter<Box<dyn Write + Send>>),
    Jsonl(polars::io::json::BatchedWriter<Box<dyn Write + Send>>),
}

/// Writes batches of one schema; nothing appears at the target until [`finish`].
///
/// [`finish`]: TableWriter::finish
pub struct TableWriter {
    output: Output,
    encoder: Encoder,
    schema: Schema,
    /// Nested columns written as JSON text (CSV).
    json_columns: Vec<PlSmallStr>,
    rows: u64,
}

/// A cell as JSON, lists and structs included (for CSV's JSON text columns).
fn cell_json(value: &AnyValue) -> serde_json::Value {
    use serde_json::Value;
    match value {
        AnyValue::List(series) => Value::Array(series.iter().map(|v| cell_json(&v)).collect()),
        AnyValue::Struct(_, _, fields) => Value::Object(
            fields
                .iter()
                .zip(value._iter_struct_av())
                .map(|(field, v)| (field.name().to_string(), cell_json(&v)))
                .collect(),
        ),
        AnyValue::StructOwned(payload) => Value::Object(
            payload
                .1
                .iter()
                .zip(&payload.0)
                .map(|(field, v)| (field.name().to_string(), cell_json(v)))
                .collect(),
        ),
        other => super::summary::to_json(other),
    }
}

impl TableWriter {
    /// Append one batch. Checks for Ctrl-C first so a stop never commits partial output.
    pub fn write_batch(&mut self, batch: &DataFrame) -> Result<()> {
        interrupt::check()?;
        if batch.schema().as_ref() != &self.schema {
            bail!(
                "{}: batch schema {:?} differs from the output schema {:?}",
                self.output.label,
                batch.schema(),
                self.schema
            );
        }
        let mut batch = batch.clone();
        for name in &self.json_columns {
            let column = batch.column(name)?.as_materialized_series().clone();
            let text: StringChunked = column
                .iter()
                .map(|value| match value {
                    AnyValue::Null => None,
                    value => Some(cell_json(&value).to_string()),
                })
                .collect();
            batch.with_column(text.with_name(name.clone()).into_column())?;
        }
        batch.align_chunks();
        let written = match &mut self.encoder {
            Encoder::Parquet(w) => write_compat_parquet(w, &batch),
            Encoder::Ipc(w) => w.write_batch(&batch),
            Encoder::Csv(w) => w.write_batch(&batch),
            Encoder::Jsonl(w) => w.write_batch(&batch),
        };
        written.map_err(|err| write_error(err, &self.output.label))?;
        self.rows += batch.height() as u64;
        Ok(())
    }

    /// Append a frame in slices of [`DEFAULT_BATCH_ROWS`], advancing `progress` by rows.
    pub fn write_frame(&mut self, frame: &DataFrame, progress: &ProgressBar) -> Result<()> {
        if frame.height() == 0 {
            return Ok(());
        }
        let mut offset = 0;
        while offset < frame.height() {
            let len = DEFAULT_BATCH_ROWS.min(frame.height() - offset);
            self.write_batch(&frame.slice(offset as i64, len))?;
            progress.inc(len as u64);
            offset += len;
        }
        Ok(())
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Write the footer, flush to disk and rename into place. Returns the rows written.
    pub fn finish(self) -> Result<u64> {
        let rows = self.rows;
        self.stage()?.commit()?;
        Ok(rows)
    }

    /// Write the footer and flush to disk, leaving the file to be put in place by
    /// [`commit_all`] with the run's other outputs.
    pub fn stage(mut self) -> Result<Staged> {
        interrupt::check()?;
        let label = self.output.label.clone();
        let closed = match &mut self.encoder {
            Encoder::Parquet(w) => w.finish().map(|_| ()),
            Encoder::Ipc(w) => w.finish(),
            Encoder::Csv(w) => w.finish(),
            Encoder::Jsonl(_) => Ok(()),
        };
        closed.map_err(|err| write_error(err, &label))?;
        // The encoder owns a clone of the file handle; drop it before the rename.
        drop(self.encoder);
        Staged::of(self.output.sink, label)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn staged(path: &Path, text: &str, force: bool) -> Staged {
        let output = Output::create(path.to_str().unwrap(), None, force).unwrap();
        output.stage_document(text.as_bytes()).unwrap()
    }

    #[test]
    fn staged_outputs_are_placed_together_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
        std::fs::write(&a, "old a\n").unwrap();
        // b appears after staging: neither output is placed, a keeps its old text.
        let first = staged(&a, "new a\n", true);
        let second = staged(&b, "new b\n", false);
        std::fs::write(&b, "someone else's\n").unwrap();
        let err = commit_all(vec![first, second]).unwrap_err();
        assert!(err.downcast_ref::<OutputExists>().is_some(), "{err:#}");
        assert_eq!(std::fs::read_to_string(&a).unwrap(), "old a\n");
        assert_eq!(std::fs::read_to_string(&b).unwrap(), "someone else's\n");
        // Nothing of the run is left beside them.
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["a.jsonl", "b.jsonl"]);

        // Both placed, the forced one replacing its old file.
        std::fs::remove_file(&b).unwrap();
        commit_all(vec![
            staged(&a, "new a\n", true),
            staged(&b, "new b\n", false),
        ])
        .unwrap();
        assert_eq!(std::fs::read_to_string(&a).unwrap(), "new a\n");
        assert_eq!(std::fs::read_to_string(&b).unwrap(), "new b\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);

        // A rename that fails after an earlier one succeeded puts the earlier file back.
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let first = staged(
            &a, "newer a
", true,
        );
        let second = staged(
            &sub.join("c.jsonl"),
            "c
",
            false,
        );
        std::fs::remove_dir_all(&sub).unwrap();
        let err = commit_all(vec![first, second]).unwrap_err();
        assert!(format!("{err:#}").contains("c.jsonl"), "{err:#}");
        assert_eq!(
            std::fs::read_to_string(&a).unwrap(),
            "new a
"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }
}
