//! Error kinds that decide the exit status. Everything else is a runtime failure (exit 3).

use std::fmt;
use std::io;

/// Invalid input data: names the file and, where known, the column and first offending row.
/// Rows count from 1 and exclude any header line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputError {
    pub file: String,
    pub column: Option<String>,
    pub row: Option<usize>,
    pub message: String,
}

impl InputError {
    pub fn new(file: impl Into<String>, message: impl Into<String>) -> Self {
        InputError {
            file: file.into(),
            column: None,
            row: None,
            message: message.into(),
        }
    }

    pub fn column(mut self, column: impl Into<String>) -> Self {
        self.column = Some(column.into());
        self
    }

    /// `row` is 1-based.
    pub fn row(mut self, row: usize) -> Self {
        self.row = Some(row);
        self
    }
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(column) = &self.column {
            write!(f, ": column '{column}'")?;
        }
        if let Some(row) = self.row {
            write!(f, ", row {row}")?;
        }
        // Messages from parsers can span lines; the error stays on one line.
        write!(f, ": {}", one_line(&self.message))
    }
}

impl std::error::Error for InputError {}

/// A command line that cannot be acted on (bad flag value, output exists without `--force`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// The user pressed Ctrl-C and the command stopped cleanly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interrupted;

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

/// An output that already exists, and the caller did not allow replacing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputExists {
    pub path: String,
    pub kind: OutputKind,
}

/// What kind of output [`OutputExists`] refused to replace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    File,
    Directory,
}

impl OutputExists {
    pub fn file(path: impl Into<String>) -> Self {
        OutputExists {
            path: path.into(),
            kind: OutputKind::File,
        }
    }

    pub fn directory(path: impl Into<String>) -> Self {
        OutputExists {
            path: path.into(),
            kind: OutputKind::Directory,
        }
    }
}

impl fmt::Display for OutputExists {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            OutputKind::File => write!(f, "{}: already exists", self.path),
            OutputKind::Directory => write!(f, "{} already exists", self.path),
        }
    }
}

impl std::error::Error for OutputExists {}

/// How an error chain ends a run; the binary maps each to an exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// stdout was closed by its reader (`curate ... | head`): not a failure.
    BrokenPipe,
    Interrupted,
    /// Bad usage or invalid input: nothing was written.
    InvalidInput,
    /// Everything else: I/O, model, endpoint.
    Runtime,
}

/// Classify an error by the kinds in its chain: the first kind found from the outside in wins,
/// except that a broken pipe anywhere wins over all.
pub fn classify(err: &anyhow::Error) -> ErrorClass {
    if is_broken_pipe(err) {
        return ErrorClass::BrokenPipe;
    }
    for cause in err.chain() {
        if cause.is::<Interrupted>() {
            return ErrorClass::Interrupted;
        }
        if cause.is::<InputError>()
            || cause.is::<UsageError>()
            || cause.is::<OutputExists>()
            || cause.is::<crate::model::TensorMismatch>()
            || cause.is::<crate::model::checkpoint::CheckpointPlace>()
            || cause.is::<crate::model::ModelTooLarge>()
        {
            return ErrorClass::InvalidInput;
        }
    }
    ErrorClass::Runtime
}

/// Build an `anyhow::Error` carrying a [`UsageError`].
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(message.into()))
}

/// True when the error chain bottoms out in a closed pipe on stdout (`curate ... | head`).
pub(crate) fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        if let Some(io_err) = cause.downcast_ref::<io::Error>() {
            return io_err.kind() == io::ErrorKind::BrokenPipe;
        }
        // JSON written straight to stdout (`inspect --json | head -1`).
        if let Some(json_err) = cause.downcast_ref::<serde_json::Error>() {
            return json_err.io_error_kind() == Some(io::ErrorKind::BrokenPipe);
        }
        if let Some(polars_err) = cause.downcast_ref::<polars::error::PolarsError>() {
            if let polars::error::PolarsError::IO { error, .. } = polars_err {
                return error.kind() == io::ErrorKind::BrokenPipe;
            }
            return polars_err.to_string().contains("Broken pipe");
        }
        false
    })
}

/// Collapse whitespace runs containing newlines so a message prints on one line.
pub fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, line) in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .enumerate()
    {
        if i > 0 {
            out.push_str("; ");
        }
        out.push_str(line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_error_names_file_column_and_row() {
        let err = InputError::new("data.csv", "duplicate id 7 (first seen at row 2)")
            .column("id")
            .row(5);
        assert_eq!(
            err.to_string(),
            "data.csv: column 'id', row 5: duplicate id 7 (first seen at row 2)"
        );
        let bare = InputError::new("x.parquet", "file is empty");
        assert_eq!(bare.to_string(), "x.parquet: file is empty");
    }

    #[test]
    fn multi_line_messages_become_one_line() {
        let err = InputError::new("f.jsonl", "bad\n\n  things\nhere ");
        assert_eq!(err.to_string(), "f.jsonl: bad; things; here");
    }

    #[test]
    fn existing_outputs_are_invalid_input_through_context() {
        let err = anyhow::Error::new(OutputExists::file("o.csv")).context("writing");
        assert_eq!(classify(&err), ErrorClass::InvalidInput);
        assert_eq!(format!("{err:#}"), "writing: o.csv: already exists");
        let dir = OutputExists::directory("m");
        assert_eq!(dir.to_string(), "m already exists");
        assert_eq!(
            classify(&anyhow::Error::new(Interrupted).context("stopped")),
            ErrorClass::Interrupted
        );
        assert_eq!(classify(&anyhow::anyhow!("disk full")), ErrorClass::Runtime);
    }

    #[test]
    fn broken_pipe_is_found_through_context() {
        let io_err = io::Error::new(io::ErrorKind::BrokenPipe, "pipe");
        let err = anyhow::Error::new(io_err).context("writing stdout");
        assert!(is_broken_pipe(&err));
        assert!(!is_broken_pipe(&anyhow::anyhow!("other")));
        let json_err = serde_json::Error::io(io::Error::new(io::ErrorKind::BrokenPipe, "pipe"));
        assert!(is_broken_pipe(
            &anyhow::Error::new(json_err).context("report")
        ));
    }
}
