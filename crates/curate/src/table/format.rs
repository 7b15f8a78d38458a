//! The file formats every command reads and writes.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Parquet,
    Jsonl,
    Csv,
    Ipc,
}

impl Format {
    pub const ALL: [Format; 4] = [Format::Parquet, Format::Jsonl, Format::Csv, Format::Ipc];

    /// The format a path's extension names, if any.
    pub fn from_path(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "parquet" | "pq" => Some(Format::Parquet),
            "jsonl" | "ndjson" => Some(Format::Jsonl),
            "csv" => Some(Format::Csv),
            "arrow" | "ipc" | "feather" => Some(Format::Ipc),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Parquet => "parquet",
            Format::Jsonl => "jsonl",
            Format::Csv => "csv",
            Format::Ipc => "ipc",
        }
    }

    /// Whether the format can hold nested (list, struct) columns.
    pub(crate) fn holds_nested(self) -> bool {
        !matches!(self, Format::Csv)
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "parquet" | "pq" => Ok(Format::Parquet),
            "jsonl" | "ndjson" => Ok(Format::Jsonl),
            "csv" => Ok(Format::Csv),
            "ipc" | "arrow" | "feather" => Ok(Format::Ipc),
            other => Err(format!(
                "unknown format '{other}' (expected parquet, jsonl, csv or ipc)"
            )),
        }
    }
}

/// The message for a path whose extension names no supported format.
pub(crate) fn unknown_extension_message(path: &Path) -> String {
    match path.extension().and_then(|e| e.to_str()) {
        Some("json") => "unknown extension '.json': JSON Lines files end in .jsonl or .ndjson \
                         (or name the format with --input-format / --output-format)"
            .to_string(),
        Some(ext) => format!(
            "unknown extension '.{ext}': expected .parquet, .jsonl, .ndjson, .csv, .arrow or .ipc \
             (or name the format with --input-format / --output-format)"
        ),
        None => "no file extension: name the format with --input-format / --output-format \
                 (parquet, jsonl, csv or ipc)"
            .to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_map_to_formats() {
        assert_eq!(
            Format::from_path(Path::new("a/b.parquet")),
            Some(Format::Parquet)
        );
        assert_eq!(Format::from_path(Path::new("b.PQ")), Some(Format::Parquet));
        assert_eq!(
            Format::from_path(Path::new("b.ndjson")),
            Some(Format::Jsonl)
        );
        assert_eq!(Format::from_path(Path::new("b.csv")), Some(Format::Csv));
        assert_eq!(Format::from_path(Path::new("b.arrow")), Some(Format::Ipc));
        assert_eq!(Format::from_path(Path::new("b.json")), None);
        assert_eq!(Format::from_path(Path::new("b")), None);
    }

    #[test]
    fn names_parse_back() {
        for format in Format::ALL {
            assert_eq!(format.name().parse::<Format>().unwrap(), format);
        }
        assert!("xlsx".parse::<Format>().is_err());
    }
}
