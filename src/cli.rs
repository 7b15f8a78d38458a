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
    /// Reweight a training mix by difficulty (the flip), by influence scores, or keep the top
    /// fraction by score; write weights or a resampled table, and a before/after audit.
    Reweight(ReweightArgs),
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

    /// Write only shard I of N (0-based; contiguous rows, shards concatenate back to the
    /// whole), or `auto` from SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT.
    #[arg(long, value_name = "I/N|auto")]
    pub shard: Option<String>,

    /// Replace the output file if it exists.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RuleArg {
    /// Mirror each domain's difficulty histogram toward its --direction, or apply --target.
    Flip,
    /// Weight (domain, level) groups by exp(tau * z) of their mean influence score.
    Influence,
    /// Keep the top --fraction of rows by score (weight 1), drop the rest (weight 0).
    Topk,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PreserveArg {
    /// Each domain keeps its weighted size.
    Domain,
    /// Only the whole table keeps its weighted size.
    Overall,
}

#[derive(Debug, Args)]
pub struct ReweightArgs {
    /// Input table ('-' reads stdin).
    #[arg(value_name = "INPUT")]
    pub input: String,

    /// Output: every input column plus the weight, in input order ('-' writes stdout).
    #[arg(short, long, value_name = "FILE")]
    pub out: String,

    /// Also write the before/after audit (domain x level) as a table.
    #[arg(long, value_name = "FILE")]
    pub report: Option<String>,

    /// The reweighting rule.
    #[arg(long, value_enum, default_value = "flip")]
    pub rule: RuleArg,

    /// Column naming each row's domain.
    #[arg(long, default_value = "domain", value_name = "COLUMN")]
    pub domain_col: String,

    /// Column with each row's difficulty (numeric; whole numbers are levels unless --bins).
    #[arg(long, default_value = "difficulty", value_name = "COLUMN")]
    pub difficulty_col: String,

    /// Column of unique row ids, to join --scores on [default: id, else the row index].
    #[arg(long, value_name = "COLUMN")]
    pub id_col: Option<String>,

    /// Column with each row's score, for --rule influence and topk without --scores.
    #[arg(long, alias = "by", default_value = "score", value_name = "COLUMN")]
    pub score_col: String,

    /// Scores from `curate influence` (train_id, score[, query_id]); the mean over queries
    /// (or the `mean` query rows) is each row's score.
    #[arg(long, value_name = "FILE")]
    pub scores: Option<String>,

    /// Which end each domain leans toward, as DOMAIN=hard|easy pairs [default:
    /// math=hard,code=easy, applied to those of the two present].
    #[arg(long, value_delimiter = ',', value_name = "DOMAIN=hard|easy")]
    pub direction: Option<Vec<String>>,

    /// Explicit level proportions for a domain, easiest level first, as DOMAIN=p1,...,pK
    /// (normalised to sum to 1; repeat for several domains). Overrides --direction there.
    #[arg(long, value_name = "DOMAIN=P1,...,PK")]
    pub target: Vec<String>,

    /// Bin a continuous difficulty into K quantile levels per domain.
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u16).range(2..))]
    pub bins: Option<u16>,

    /// Temperature of the influence rule: group weight exp(tau * z).
    #[arg(long, default_value_t = 1.0, value_name = "TAU")]
    pub tau: f64,

    /// Whose weighted size the influence rule and --cap preserve.
    #[arg(long, value_enum, default_value = "domain")]
    pub preserve: PreserveArg,

    /// Fraction of rows --rule topk keeps, in (0, 1].
    #[arg(long, value_name = "F")]
    pub fraction: Option<f64>,

    /// Apply --rule topk within each domain instead of over the whole table.
    #[arg(long)]
    pub per_domain: bool,

    /// Largest weight any row may get; the excess is spread over the others.
    #[arg(long, value_name = "W")]
    pub cap: Option<f64>,

    /// Write a resampled table (systematic resampling, seeded, whole copies) instead of
    /// weights.
    #[arg(long)]
    pub materialize: bool,

    /// Name of the weight column added to the output.
    #[arg(long, default_value = "weight", value_name = "NAME")]
    pub weight_name: String,

    /// Read the input as this format instead of guessing from the extension.
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub input_format: Option<FormatArg>,

    /// Write the output as this format instead of guessing from the extension.
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub output_format: Option<FormatArg>,

    /// Replace output files that exist.
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
