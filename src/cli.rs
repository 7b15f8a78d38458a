//! The command line: global flags and one `Args` struct per command.

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::table::Format;

#[derive(Debug, Parser)]
#[command(
    name = "curate",
    version,
    about = "Curate training and evaluation data and attribute model behaviour to it.",
    long_about = "Curate training and evaluation data and attribute model behaviour to it.\n\n\
        Tables are read and written as Parquet, JSON Lines, CSV or Arrow IPC, chosen by file \
        extension or a format flag; '-' is stdin/stdout (JSON Lines unless told otherwise). \
        Data goes to stdout, messages and progress to stderr.\n\n\
        Exit status: 0 success, 1 a quality gate failed (outputs still written), 2 usage error \
        or invalid input (nothing written), 3 runtime failure, 130 interrupted.",
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Print no messages or progress on stderr (errors still print).
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    /// More log output on stderr: -v for info, -vv for debug. RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Never draw progress bars (they are drawn only when stderr is a terminal anyway).
    #[arg(long, global = true)]
    pub no_progress: bool,

    /// Seed for every random choice; recorded in each output's provenance.
    #[arg(long, global = true, default_value_t = 0, value_name = "N")]
    pub seed: u64,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show format, schema, row count, provenance and per-column statistics of data files.
    Inspect(InspectArgs),
    /// Convert a table between Parquet, JSON Lines, CSV and Arrow IPC, optionally checking
    /// ids and selecting columns or rows.
    Convert(ConvertArgs),
}

/// The table formats, as flags name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    Parquet,
    Jsonl,
    Csv,
    Ipc,
}

impl From<FormatArg> for Format {
    fn from(value: FormatArg) -> Self {
        match value {
            FormatArg::Parquet => Format::Parquet,
            FormatArg::Jsonl => Format::Jsonl,
            FormatArg::Csv => Format::Csv,
            FormatArg::Ipc => Format::Ipc,
        }
    }
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Files to inspect ('-' reads stdin).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<String>,

    /// Read the files as this format instead of guessing from the extension.
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub input_format: Option<FormatArg>,

    /// Print one JSON object per file (JSON Lines) instead of text.
    #[arg(long)]
    pub json: bool,

    /// How many most frequent values to show for text and boolean columns.
    #[arg(long, default_value_t = 5, value_name = "K")]
    pub top: usize,

    /// Skip per-column statistics (reads only the footer or header where the format allows).
    #[arg(long)]
    pub no_stats: bool,
}

#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// Input table ('-' reads stdin).
    #[arg(value_name = "INPUT")]
    pub input: String,

    /// Output table ('-' writes stdout).
    #[arg(short, long, value_name = "FILE")]
    pub out: String,

    /// Read the input as this format instead of guessing from the extension.
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub input_format: Option<FormatArg>,

    /// Write the output as this format instead of guessing from the extension.
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub output_format: Option<FormatArg>,

    /// Check that this column holds unique, non-null integer or string ids.
    #[arg(long, value_name = "COLUMN")]
    pub id_col: Option<String>,

    /// Keep only these columns, in this order (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "COLUMNS")]
    pub columns: Vec<String>,

    /// Keep only the first N rows.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,

    /// Replace the output file if it exists.
    #[arg(long)]
    pub force: bool,
}

/// The command-line reference in Markdown, rendered from these definitions (docs/cli.md).
pub fn reference_markdown() -> String {
    use clap::CommandFactory;

    let mut root = Cli::command().term_width(100);
    root.build();
    let mut out = String::from(
        "# Command-line reference\n\n\
         Generated from the clap definitions in `src/cli.rs`; a test fails when this file drifts.\n\
         Regenerate with `CURATE_UPDATE_DOCS=1 cargo test --release --test integration cli_reference`.\n",
    );
    render_command(&mut out, &mut root, "curate");
    out
}

fn render_command(out: &mut String, command: &mut clap::Command, path: &str) {
    let help = command.render_long_help().to_string();
    out.push_str(&format!(
        "\n## `{path}`\n\n```text\n{}\n```\n",
        help.trim_end()
    ));
    let names: Vec<String> = command
        .get_subcommands()
        .filter(|sub| sub.get_name() != "help")
        .map(|sub| sub.get_name().to_string())
        .collect();
    for name in names {
        let sub = command
            .find_subcommand_mut(&name)
            .expect("listed subcommand");
        render_command(out, sub, &format!("{path} {name}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn definitions_are_consistent() {
        Cli::command().debug_assert();
    }
}
