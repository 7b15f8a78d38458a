//! The command line: global flags and one `Args` struct per command.

use clap::{Args, Parser, Subcommand, ValueEnum};

use curate::model::train::Schedule;
use curate::reveal::decide::{Detector, IssueType};
use curate::reveal::{FilterBy, QualityMethod};
use curate::table::Format;

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
#[command(next_help_heading = "Global options")]
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
    /// Show format, schema, row count, provenance and per-column statistics of data files,
    /// or the architecture, size, tokenizer and provenance of model directories.
    Inspect(InspectArgs),
    /// Convert a table between Parquet, JSON Lines, CSV and Arrow IPC, optionally checking
    /// ids and selecting columns or rows.
    Convert(ConvertArgs),
    /// Reweight a training mix by difficulty (the flip), by influence scores, or keep the top
    /// fraction by score; write weights or a resampled table, and a before/after audit.
    Reweight(ReweightArgs),
    /// Train a small Llama-family causal LM (or continue training one) on prompt/response
    /// text, with loss on the response tokens; saved in Hugging Face layout.
    Train(TrainArgs),
    /// Evaluate a causal LM on rows: each row's loss on its response (the loss influence
    /// attributes), per-domain summaries, and with --generate greedy answers checked against a
    /// reference (a `correct` column influence reads).
    Eval(Box<EvalArgs>),
    /// Attribute a causal LM's performance on query examples to its training examples,
    /// reasoning segments and tokens with influence functions (identity, diagonal, K-FAC,
    /// EK-FAC), kronfluence's conventions.
    Influence(Box<InfluenceArgs>),
    /// Find label errors and missing labels by consensus of prediction sources: confident
    /// learning exactly as cleanlab, kNN votes on embeddings, a CROWDLAB vote of the sources,
    /// an embedding probe; soft labels, suggestions, and a CI gate.
    Reveal(Box<RevealArgs>),
    /// Rephrase long chain-of-thought traces into MinD multi-turn form: `<think>unit</think>
    /// answer` repeated, each unit ending in an intermediate answer; validated, with rejects
    /// and statistics.
    Rephrase(RephraseArgs),
    /// Print a shell completion script to stdout (bash: `curate completions bash >
    /// ~/.local/share/bash-completion/completions/curate`).
    Completions(CompletionsArgs),
    /// Print the man page of curate, or of one command, as roff to stdout (`curate man
    /// influence > curate-influence.1`).
    Man(ManArgs),
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete in.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// The command whose page to print (`influence`, `influence index`, ...); none: curate's
    /// own page.
    #[arg(value_name = "COMMAND", num_args = 0..)]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RephraseArgs {
    /// Input table of traces ('-' reads stdin).
    #[arg(value_name = "INPUT")]
    pub input: String,

    /// Output: the rephrased records in --format shape (not needed with --dry-run).
    #[arg(
        short,
        long,
        value_name = "FILE",
        required_unless_present = "dry_run",
        help_heading = "Output"
    )]
    pub out: Option<String>,

    /// Records that could not be rephrased, with a reason code (otherwise only counted).
    #[arg(long, value_name = "FILE", help_heading = "Output")]
    pub rejects: Option<String>,

    /// Statistics as JSON: units per example, characters to the first answer before and after,
    /// first correct unit, rejects by reason.
    #[arg(long, value_name = "FILE", help_heading = "Output")]
    pub stats: Option<String>,

    /// How units are found: by rules (offline, deterministic), or by an LLM behind an
    /// OpenAI-compatible endpoint that names unit ends or rewrites the trace.
    #[arg(long, value_enum, default_value = "rules", help_heading = "Method")]
    pub mode: RephraseModeArg,

    /// Shape of the output records.
    #[arg(
        long,
        value_enum,
        default_value = "completion",
        help_heading = "Output"
    )]
    pub format: RecordFormatArg,

    /// Column of unique ids [default: id, else the row index].
    #[arg(long, value_name = "COLUMN", help_heading = "Inputs")]
    pub id_col: Option<String>,

    /// Column with the question (the prompt).
    #[arg(
        long,
        default_value = "question",
        value_name = "COLUMN",
        help_heading = "Inputs"
    )]
    pub question_col: String,

    /// Column with the trace.
    #[arg(
        long,
        default_value = "response",
        value_name = "COLUMN",
        help_heading = "Inputs"
    )]
    pub response_col: String,

    /// Column with the reference answer (used where present).
    #[arg(
        long,
        default_value = "reference",
        value_name = "COLUMN",
        help_heading = "Inputs"
    )]
    pub reference_col: String,

    /// Traces are plain multi-step solutions, not `<think>...</think> answer`.
    #[arg(long, help_heading = "Inputs")]
    pub no_think_tags: bool,

    /// Marker file (KIND<TAB>PHRASE lines) instead of the bundled one.
    #[arg(long, value_name = "FILE", help_heading = "Method")]
    pub markers: Option<String>,

    /// Units shorter than this many characters join the next one.
    #[arg(long, default_value_t = 0, value_name = "N", help_heading = "Method")]
    pub min_unit_chars: usize,

    /// At most this many units per record (the rest join the last).
    #[arg(long, value_name = "N", help_heading = "Method")]
    pub max_units: Option<usize>,

    /// Reject records whose final answer differs from the reference (or that have none).
    #[arg(long, help_heading = "Method")]
    pub require_correct: bool,

    /// The user turn between units in the messages and sharegpt formats.
    #[arg(
        long,
        default_value = "Continue.",
        value_name = "TEXT",
        help_heading = "Method"
    )]
    pub continue_prompt: String,

    /// Rephrase only shard I of N of the traces (0-based; contiguous rows, so the outputs of
    /// all shards concatenate to the whole run's), or `auto` / `auto/N` from a scheduler (a
    /// Slurm array's task id, JOB_COMPLETION_INDEX, CURATE_SHARD=I/N). Ids default to the row
    /// index in the whole input.
    #[arg(long, value_name = "I/N|auto|auto/N", help_heading = "Inputs")]
    pub shard: Option<String>,

    /// Replace existing output files (and start over, discarding an interrupted run's
    /// journal, unless --resume).
    #[arg(long, help_heading = "Output")]
    pub force: bool,

    #[command(flatten)]
    pub llm: EndpointArgs,

    /// llm-rewrite: reject a rewrite whose thinking differs from the original by more than
    /// this share of words (1 - 2 * common / total, in order).
    #[arg(
        long,
        default_value_t = 0.3,
        value_name = "SHARE",
        help_heading = "Method"
    )]
    pub max_drift: f64,
}

/// Where and how an LLM run asks: the endpoint, its limits, the cache, the journal and the
/// budgets (rephrase's LLM modes, reveal ask).
#[derive(Debug, Args)]
pub struct EndpointArgs {
    /// The endpoint's base URL as OpenAI clients take it (http://localhost:8000/v1);
    /// '/chat/completions' is appended ('/v1/chat/completions' to a bare host:port).
    #[arg(long, value_name = "URL", help_heading = "LLM endpoint")]
    pub base_url: Option<String>,

    /// The model name sent in each request (reveal ask: several, comma-separated, ask in turn).
    #[arg(long, value_name = "NAME", help_heading = "LLM endpoint")]
    pub model: Option<String>,

    /// Environment variable holding the API key, sent as a bearer token [default:
    /// OPENAI_API_KEY when set; local servers need none].
    #[arg(long, value_name = "VAR", help_heading = "LLM endpoint")]
    pub api_key_env: Option<String>,

    /// Requests in flight at once.
    #[arg(
        long,
        default_value_t = 4,
        value_name = "N",
        help_heading = "LLM endpoint"
    )]
    pub concurrency: usize,

    /// Retries of a request after 408, 409, 429, 5xx or a connection error (jittered
    /// exponential backoff, or the server's Retry-After).
    #[arg(
        long,
        default_value_t = 5,
        value_name = "N",
        help_heading = "LLM endpoint"
    )]
    pub max_retries: u32,

    /// Times an unusable reply (not the JSON or form asked for) is asked again, quoting the
    /// problem, before the record is rejected as unusable_reply.
    #[arg(
        long,
        default_value_t = 2,
        value_name = "N",
        help_heading = "LLM endpoint"
    )]
    pub parse_retries: u32,

    /// Most tokens one reply may take (`max_tokens` in every request) [default: twice the
    /// expected reply, at least 256]. A reply cut off at it is asked again once shorter, with
    /// twice the bound: a model that loops stops there instead of filling its context.
    #[arg(long, value_name = "N", help_heading = "LLM endpoint")]
    pub max_tokens: Option<u64>,

    /// Seconds one request may take, connection to last byte; then it is retried.
    #[arg(
        long,
        default_value_t = 120.0,
        value_name = "SECONDS",
        help_heading = "LLM endpoint"
    )]
    pub timeout: f64,

    /// Keep every usable reply in DIR, addressed by a hash of the endpoint and the request;
    /// a request found there is not sent again.
    #[arg(long, value_name = "DIR", help_heading = "LLM endpoint")]
    pub cache_dir: Option<String>,

    /// Continue an interrupted or budget-stopped run from its journal (OUT.curate-journal),
    /// asking only for the records it lacks; starts afresh when there is none.
    #[arg(long, help_heading = "LLM endpoint")]
    pub resume: bool,

    /// Send at most N requests in this run (retries count); the run then stops, keeping its
    /// journal for --resume.
    #[arg(long, value_name = "N", help_heading = "LLM endpoint")]
    pub max_requests: Option<u64>,

    /// Use at most N tokens in this run (as the server reports them; estimated before
    /// sending); the run then stops, keeping its journal for --resume.
    #[arg(long, value_name = "N", help_heading = "LLM endpoint")]
    pub max_total_tokens: Option<u64>,

    /// Prices per million tokens, prompt and completion (any currency): the run counts its
    /// cost, and --dry-run estimates it.
    #[arg(
        long,
        value_delimiter = ',',
        num_args = 1,
        value_name = "PROMPT,COMPLETION",
        help_heading = "LLM endpoint"
    )]
    pub price_per_mtok: Vec<f64>,

    /// Spend at most this much in this run, at --price-per-mtok (each request is reserved at
    /// the higher price before sending, settled at the server's usage); the run then stops,
    /// keeping its journal for --resume.
    #[arg(long, value_name = "AMOUNT", help_heading = "LLM endpoint")]
    pub max_cost: Option<f64>,

    /// Print the requests and tokens the run would need (JSON on stdout) and stop: nothing
    /// is sent or written.
    #[arg(long, help_heading = "LLM endpoint")]
    pub dry_run: bool,
}

#[derive(Debug, Subcommand)]
pub enum RevealAction {
    /// Ask a vision-language or language model behind an OpenAI-compatible endpoint which
    /// classes each row shows (REVEAL's first step); the answers are a `set` source (and with
    /// --scores yes-no an `mlprobs` source) for `curate reveal`.
    Ask(Box<RevealAskArgs>),
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("subject").required(true).args(["text_col", "image_col"]))]
pub struct RevealAskArgs {
    /// Input table of rows to ask about ('-' reads stdin).
    #[arg(value_name = "INPUT")]
    pub input: String,

    /// Output: id, pred (list of classes), raw (the answer), unmatched (names that are no
    /// class), and with --scores yes-no probs (per-class presence, in --classes order). With
    /// several --model names, put `{model}` in the path: one file per model.
    #[arg(
        short,
        long,
        value_name = "FILE",
        required_unless_present = "dry_run",
        help_heading = "Output"
    )]
    pub out: Option<String>,

    /// Rows the model gave no usable answer for, with a reason code and detail.
    #[arg(long, value_name = "FILE", help_heading = "Output")]
    pub rejects: Option<String>,

    /// The classes to ask about, in the order `reveal --classes` is given.
    #[arg(
        long,
        required = true,
        value_delimiter = ',',
        value_name = "A,B,...",
        help_heading = "Method"
    )]
    pub classes: Vec<String>,

    /// Column with each row's text.
    #[arg(long, value_name = "COLUMN", help_heading = "Inputs")]
    pub text_col: Option<String>,

    /// Column with each row's image: a file path (relative to --image-root), an http(s) or
    /// data URL, or the image's bytes (a binary column). PNG, JPEG and WebP, checked by their
    /// first bytes.
    #[arg(long, value_name = "COLUMN", help_heading = "Inputs")]
    pub image_col: Option<String>,

    /// Where relative image paths start [default: the input file's directory].
    #[arg(long, value_name = "DIR", help_heading = "Inputs")]
    pub image_root: Option<String>,

    /// Largest image sent, in bytes.
    #[arg(long, default_value_t = 20 << 20, value_name = "BYTES", help_heading = "Inputs")]
    pub max_image_bytes: u64,

    /// Column of unique ids [default: id, else the row index].
    #[arg(long, value_name = "COLUMN", help_heading = "Inputs")]
    pub id_col: Option<String>,

    /// What each row is asked: every class it shows (select all that apply), or the single
    /// best class.
    #[arg(long, value_enum, default_value = "all", help_heading = "Method")]
    pub question: AskQuestionArg,

    /// Also score each class: one yes/no request per row and class, the presence score being
    /// P(yes) / (P(yes) + P(no)) from the first token's log-probabilities.
    #[arg(long, value_enum, value_name = "KIND", help_heading = "Method")]
    pub scores: Option<AskScoresArg>,

    /// The question's text instead of the built-in one: `{classes}` is replaced by the class
    /// list, `{text}` by the row's text (placed before the question when absent), `{subject}`
    /// by `text` or `image`.
    #[arg(long, value_name = "FILE", help_heading = "Method")]
    pub prompt: Option<String>,

    /// Other names the answers may use, one class per line: `CLASS: alias, alias` (lines
    /// starting with # are comments).
    #[arg(long, value_name = "FILE", help_heading = "Method")]
    pub aliases: Option<String>,

    /// Do not ask for a JSON reply (`response_format`), for servers that refuse it; answers
    /// are still read from JSON or prose.
    #[arg(long, help_heading = "Method")]
    pub no_json_format: bool,

    /// Ask only shard I of N of the rows (0-based, contiguous), or `auto` / `auto/N` from a
    /// scheduler; the outputs of all shards concatenate.
    #[arg(long, value_name = "I/N|auto|auto/N", help_heading = "Inputs")]
    pub shard: Option<String>,

    /// Replace existing output files (and start over, discarding an interrupted run's
    /// journal, unless --resume).
    #[arg(long, help_heading = "Output")]
    pub force: bool,

    #[command(flatten)]
    pub llm: EndpointArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AskQuestionArg {
    /// Every class the row shows; none is an answer too.
    All,
    /// Exactly one class.
    Single,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AskScoresArg {
    /// One yes/no question per class, scored by the log-probabilities of yes and no.
    YesNo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RephraseModeArg {
    /// Paragraphs opening with switch/check markers, a unit closed at the first stated answer.
    Rules,
    /// The LLM names the paragraphs that end units; the text is cut from the original bytes,
    /// so it cannot drift.
    LlmBoundaries,
    /// The LLM rewrites the trace into units itself; checked for drift and the final answer.
    LlmRewrite,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RecordFormatArg {
    /// {id, prompt, completion}: every unit rendered in one completion (chat templates of R1
    /// and Qwen3 drop thinking from assistant messages, so this is the safe default).
    Completion,
    /// {id, messages: [{role, content}, ...]}: one assistant turn per unit.
    Messages,
    /// {id, conversations: [{from, value}, ...]}.
    Sharegpt,
    /// One row per unit, with its span in the trace, answer and correctness.
    Turns,
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
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct RevealArgs {
    #[command(subcommand)]
    pub action: Option<RevealAction>,

    /// The given labels: `id` (default: the row index) and `label` (integer or string class),
    /// or `labels` (a list of classes, multi-label).
    #[arg(long, required = true, value_name = "FILE", help_heading = "Inputs")]
    pub labels: Option<String>,

    /// A prediction source, NAME=PATH[:KIND[:COLUMN]] (repeatable). KIND: probs (class
    /// probabilities: a list column, default `probs`, or wide columns `p0..pK-1`), mlprobs
    /// (independent per-class presence, same layout), hard (one class, default column `pred`),
    /// set (a list of classes, default column `pred`). Rows join the labels on the id column.
    #[arg(
        long = "source",
        value_name = "NAME=PATH[:KIND[:COLUMN]]",
        help_heading = "Inputs"
    )]
    pub sources: Vec<curate::reveal::inputs::SourceSpec>,

    /// Embeddings for the kNN vote and the probe: id and a list column `emb`.
    #[arg(long, value_name = "FILE", help_heading = "Inputs")]
    pub embeddings: Option<String>,

    /// Output: one row per id (see docs/reveal.md for the columns).
    #[arg(
        short,
        long,
        required = true,
        value_name = "FILE",
        help_heading = "Output"
    )]
    pub out: Option<String>,

    /// Also write a JSON summary: rates per class, detectors, source weights, gate result.
    #[arg(long, value_name = "FILE", help_heading = "Output")]
    pub summary: Option<String>,

    /// Id column in every input.
    #[arg(
        long,
        default_value = "id",
        value_name = "COLUMN",
        help_heading = "Inputs"
    )]
    pub id_col: String,

    /// Column of single labels.
    #[arg(
        long,
        default_value = "label",
        value_name = "COLUMN",
        help_heading = "Inputs"
    )]
    pub label_col: String,

    /// Column of label lists (multi-label); used when present and --label-col is not.
    #[arg(
        long,
        default_value = "labels",
        value_name = "COLUMN",
        help_heading = "Inputs"
    )]
    pub labels_col: String,

    /// Prefix of wide probability columns when a source has no list column: numbered (`p0`,
    /// `p1`, ...) or named by class (`--probs-prefix p_` for `p_bird`, `p_cat`, matched to the
    /// label values).
    #[arg(
        long,
        default_value = "p",
        value_name = "PREFIX",
        help_heading = "Inputs"
    )]
    pub probs_prefix: String,

    /// Wide probability columns named outright, in class order (the --classes order, else the
    /// sorted label values); for every probability source without its own :COLUMN.
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "A,B,...",
        help_heading = "Inputs"
    )]
    pub probs_cols: Option<Vec<String>>,

    /// Column of the embedding vectors.
    #[arg(
        long,
        default_value = "emb",
        value_name = "COLUMN",
        help_heading = "Inputs"
    )]
    pub emb_col: String,

    /// Class names in order (probability column k is class k) [default: 0..K-1 for integer
    /// labels, else the sorted union of the classes seen].
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "CLASS,...",
        help_heading = "Inputs"
    )]
    pub classes: Option<Vec<String>>,

    /// Detectors to run [default: cl; vote with two or more sources; knn with --embeddings;
    /// probe with --probe].
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        value_name = "cl,knn,vote,probe",
        help_heading = "Detectors"
    )]
    pub detectors: Option<Vec<DetectorArg>>,

    /// Which rows confident learning flags (cleanlab's filter_by).
    #[arg(
        long,
        value_enum,
        default_value = "prune_by_noise_rate",
        value_name = "MODE",
        help_heading = "Detectors"
    )]
    pub filter_by: FilterByArg,

    /// Share of the estimated noise the prune modes remove.
    #[arg(
        long,
        default_value_t = 1.0,
        value_name = "F",
        help_heading = "Detectors"
    )]
    pub frac_noise: f64,

    /// Classes with at most this many examples are not pruned.
    #[arg(
        long,
        default_value_t = 1,
        value_name = "N",
        help_heading = "Detectors"
    )]
    pub min_examples_per_class: usize,

    /// Label-quality score in the `quality` column (cleanlab's get_label_quality_scores).
    #[arg(
        long,
        value_enum,
        default_value = "self_confidence",
        value_name = "METHOD",
        help_heading = "Detectors"
    )]
    pub quality_method: QualityMethodArg,

    /// Detectors that must fire for a label issue [default: a majority of those run].
    #[arg(long, value_name = "N", help_heading = "Decision")]
    pub min_detectors: Option<usize>,

    /// Also require the consensus probability of the given label to be below TAU.
    #[arg(long, value_name = "TAU", help_heading = "Decision")]
    pub tau: Option<f64>,

    /// Consensus probability another class needs to be suggested (else the issue is
    /// ambiguous).
    #[arg(
        long,
        default_value_t = 0.5,
        value_name = "P",
        help_heading = "Decision"
    )]
    pub confidence: f64,

    /// Consensus probability from which another class also applies [default: 0.3; 0.5 for
    /// multi-label presence].
    #[arg(long, value_name = "P", help_heading = "Decision")]
    pub missing_threshold: Option<f64>,

    /// kNN: neighbours per row.
    #[arg(
        long,
        default_value_t = 10,
        value_name = "K",
        help_heading = "Detectors"
    )]
    pub knn_k: usize,

    /// kNN: subsampling rounds.
    #[arg(
        long,
        default_value_t = 5,
        value_name = "N",
        help_heading = "Detectors"
    )]
    pub knn_rounds: usize,

    /// kNN: share of rows kept per round.
    #[arg(
        long,
        default_value_t = 0.9,
        value_name = "F",
        help_heading = "Detectors"
    )]
    pub knn_sample: f64,

    /// Train a probe on the embeddings (out-of-fold probabilities; adds the probe detector).
    #[arg(long, value_enum, value_name = "KIND", help_heading = "Detectors")]
    pub probe: Option<ProbeArg>,

    /// Probe: stratified folds.
    #[arg(
        long,
        default_value_t = 5,
        value_name = "K",
        help_heading = "Detectors"
    )]
    pub folds: usize,

    /// Probe: training epochs per fold.
    #[arg(
        long,
        default_value_t = 30,
        value_name = "N",
        help_heading = "Detectors"
    )]
    pub probe_epochs: usize,

    /// Probe: hidden units of the MLP.
    #[arg(
        long,
        default_value_t = 128,
        value_name = "N",
        help_heading = "Detectors"
    )]
    pub probe_hidden: usize,

    /// Gate: exit 1 (after writing outputs) when more than this share of rows are label
    /// issues.
    #[arg(long, value_name = "RATE", help_heading = "Gate")]
    pub max_issue_rate: Option<f64>,

    /// Gate: exit 1 when more than this share of rows have missing labels.
    #[arg(long, value_name = "RATE", help_heading = "Gate")]
    pub max_missing_rate: Option<f64>,

    /// Gate: exit 1 when any row has one of these issue types.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        value_name = "TYPE,...",
        help_heading = "Gate"
    )]
    pub fail_on: Option<Vec<IssueTypeArg>>,

    /// Leave the soft_label column out (it holds K numbers per row).
    #[arg(long, help_heading = "Output")]
    pub no_soft_label: bool,

    /// Replace existing output files.
    #[arg(long, help_heading = "Output")]
    pub force: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DetectorArg {
    /// Confident learning on the probability sources (their mean when several).
    Cl,
    /// Votes of the nearest neighbours in embedding space.
    Knn,
    /// CROWDLAB consensus of the sources (and the probe) as annotators.
    Vote,
    /// Confident learning on the probe's out-of-fold probabilities.
    Probe,
}

impl From<DetectorArg> for Detector {
    fn from(value: DetectorArg) -> Self {
        match value {
            DetectorArg::Cl => Detector::Cl,
            DetectorArg::Knn => Detector::Knn,
            DetectorArg::Vote => Detector::Vote,
            DetectorArg::Probe => Detector::Probe,
        }
    }
}

/// cleanlab's `filter_by` modes, spelled as cleanlab spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum FilterByArg {
    PruneByNoiseRate,
    PruneByClass,
    Both,
    ConfidentLearning,
    PredictedNeqGiven,
    LowSelfConfidence,
    LowNormalizedMargin,
}

impl From<FilterByArg> for FilterBy {
    fn from(value: FilterByArg) -> Self {
        match value {
            FilterByArg::PruneByNoiseRate => FilterBy::PruneByNoiseRate,
            FilterByArg::PruneByClass => FilterBy::PruneByClass,
            FilterByArg::Both => FilterBy::Both,
            FilterByArg::ConfidentLearning => FilterBy::ConfidentLearning,
            FilterByArg::PredictedNeqGiven => FilterBy::PredictedNeqGiven,
            FilterByArg::LowSelfConfidence => FilterBy::LowSelfConfidence,
            FilterByArg::LowNormalizedMargin => FilterBy::LowNormalizedMargin,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum QualityMethodArg {
    /// The probability of the given label.
    SelfConfidence,
    /// (p_given - max_other + 1) / 2.
    NormalizedMargin,
    /// log(h / p_given + 1) / max(h / p_given, 1e-6), h the normalised entropy.
    ConfidenceWeightedEntropy,
}

impl From<QualityMethodArg> for QualityMethod {
    fn from(value: QualityMethodArg) -> Self {
        match value {
            QualityMethodArg::SelfConfidence => QualityMethod::SelfConfidence,
            QualityMethodArg::NormalizedMargin => QualityMethod::NormalizedMargin,
            QualityMethodArg::ConfidenceWeightedEntropy => QualityMethod::ConfidenceWeightedEntropy,
        }
    }
}

/// The issue types a gate can fail on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IssueTypeArg {
    /// The label is wrong and the consensus names another.
    Noisy,
    /// Other classes apply too.
    Missing,
    /// The label is doubted, no other class is confident enough.
    Ambiguous,
}

impl From<IssueTypeArg> for IssueType {
    fn from(value: IssueTypeArg) -> Self {
        match value {
            IssueTypeArg::Noisy => IssueType::Noisy,
            IssueTypeArg::Missing => IssueType::Missing,
            IssueTypeArg::Ambiguous => IssueType::Ambiguous,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProbeArg {
    /// Multinomial logistic regression.
    Logreg,
    /// One hidden ReLU layer (--probe-hidden units).
    Mlp,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Files to inspect ('-' reads stdin), or model directories.
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
    /// whole), or `auto` / `auto/N` from a scheduler (a Slurm array's task id,
    /// JOB_COMPLETION_INDEX, CURATE_SHARD=I/N).
    #[arg(long, value_name = "I/N|auto|auto/N")]
    pub shard: Option<String>,

    /// Refuse a JSON Lines column whose values are of several JSON types (numbers and text,
    /// say) instead of writing them all as text with a warning.
    #[arg(long)]
    pub strict_types: bool,

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
    /// The control for `influence`: groups weighted by exp(tau * z) of a random z per group
    /// (standard normal, seeded by --seed).
    Random,
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
    pub direction: Option<Vec<curate::reweight::frame::DomainDirection>>,

    /// Explicit level proportions for a domain, easiest level first, as DOMAIN=p1,...,pK
    /// (normalised to sum to 1; repeat for several domains). Overrides --direction there.
    #[arg(long, value_name = "DOMAIN=P1,...,PK")]
    pub target: Vec<curate::reweight::frame::DomainTarget>,

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

    /// Keep each flipped domain's effective sample size ((sum w)^2 / sum w^2) at least this
    /// fraction of its rows: the new histogram is tempered toward the old until it holds
    /// (--rule flip).
    #[arg(long, value_name = "FRACTION")]
    pub min_ess: Option<f64>,

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

/// The model architectures `curate train` can build from scratch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ArchArg {
    Llama,
    Qwen2,
}

/// Learning-rate schedules after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScheduleArg {
    Constant,
    Linear,
    Cosine,
}

/// Floating-point precision of model computation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DtypeArg {
    F32,
    F64,
}

impl From<ScheduleArg> for Schedule {
    fn from(value: ScheduleArg) -> Self {
        match value {
            ScheduleArg::Constant => Schedule::Constant,
            ScheduleArg::Linear => Schedule::Linear,
            ScheduleArg::Cosine => Schedule::Cosine,
        }
    }
}

impl From<DtypeArg> for burn::tensor::DType {
    fn from(value: DtypeArg) -> Self {
        match value {
            DtypeArg::F32 => burn::tensor::DType::F32,
            DtypeArg::F64 => burn::tensor::DType::F64,
        }
    }
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("start").args(["config", "model"])))]
pub struct TrainArgs {
    /// Training table with prompt and response text columns ('-' reads stdin).
    #[arg(value_name = "INPUT")]
    pub input: String,

    /// Output model directory (config.json, model.safetensors, tokenizer.json).
    #[arg(short, long, value_name = "DIR", help_heading = "Output")]
    pub out: String,

    /// Start from a Hugging Face config.json (random weights) instead of the shape flags.
    #[arg(long, value_name = "FILE", help_heading = "Model")]
    pub config: Option<String>,

    /// Continue training a model (its weights, tokenizer and chat template): a directory in
    /// Hugging Face layout or a llama.cpp GGUF file.
    #[arg(long, value_name = "DIR|FILE.gguf", help_heading = "Model")]
    pub model: Option<String>,

    /// With --model: initialise tensors the checkpoint lacks and ignore ones the model does
    /// not use, instead of failing.
    #[arg(long, requires = "model", help_heading = "Model")]
    pub allow_partial: bool,

    /// Use this tokenizer.json instead of training a byte-level BPE on the input.
    #[arg(long, value_name = "FILE", help_heading = "Model")]
    pub tokenizer: Option<String>,

    /// Vocabulary size of the trained tokenizer (and of the model built from flags).
    #[arg(long, default_value_t = 1024, value_name = "N", help_heading = "Model")]
    pub vocab_size: usize,

    /// Architecture when building from flags.
    #[arg(long, value_enum, default_value = "llama", help_heading = "Model")]
    pub arch: ArchArg,

    /// Hidden size when building from flags.
    #[arg(long, default_value_t = 64, value_name = "N", help_heading = "Model")]
    pub hidden_size: usize,

    /// MLP intermediate size when building from flags.
    #[arg(long, default_value_t = 128, value_name = "N", help_heading = "Model")]
    pub intermediate_size: usize,

    /// Decoder layers when building from flags.
    #[arg(long, default_value_t = 2, value_name = "N", help_heading = "Model")]
    pub layers: usize,

    /// Attention heads when building from flags.
    #[arg(long, default_value_t = 4, value_name = "N", help_heading = "Model")]
    pub heads: usize,

    /// Key/value heads (grouped-query attention) when building from flags.
    #[arg(long, default_value_t = 2, value_name = "N", help_heading = "Model")]
    pub kv_heads: usize,

    /// Maximum sequence length (positions) when building from flags.
    #[arg(long, default_value_t = 512, value_name = "N", help_heading = "Model")]
    pub max_positions: usize,

    /// Tie the output projection to the token embeddings when building from flags.
    #[arg(long, help_heading = "Model")]
    pub tie_embeddings: bool,

    #[command(flatten)]
    pub text: TextArgs,

    /// Leave out rows whose prompt fills all of --max-length (no response token would be
    /// left to train on) instead of failing on the first; says how many.
    #[arg(long, requires = "max_length", help_heading = "Inputs")]
    pub skip_long: bool,

    /// Per-row loss weights, such as `curate reweight` writes: a row's loss counts w times
    /// (resampling the rows by weight, in expectation); rows of weight 0 are left out.
    #[arg(long, value_name = "COLUMN", help_heading = "Inputs")]
    pub weight_col: Option<String>,

    /// Passes over the data.
    #[arg(long, default_value_t = 3, value_name = "N", help_heading = "Training")]
    pub epochs: usize,

    /// Total optimizer steps instead of --epochs.
    #[arg(long, value_name = "N", help_heading = "Training")]
    pub steps: Option<usize>,

    /// Sequences per batch (batches group sequences of similar length). A fixed number: the
    /// batch is part of the optimisation, so it is not chosen by memory.
    #[arg(long, default_value_t = 8, value_name = "N", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..), help_heading = "Training")]
    pub batch_size: usize,

    /// Memory the run may plan for: a share of the available memory (80%) or a size (12GiB).
    /// A batch whose estimate exceeds it is refused before any work.
    #[arg(
        long,
        default_value = "80%",
        value_name = "SIZE",
        help_heading = "Training"
    )]
    pub memory_budget: curate::model::budget::MemoryBudget,

    /// Peak learning rate (AdamW).
    #[arg(
        long,
        default_value_t = 1e-3,
        value_name = "LR",
        help_heading = "Training"
    )]
    pub lr: f64,

    /// Linear warmup steps.
    #[arg(
        long,
        default_value_t = 10,
        value_name = "N",
        help_heading = "Training"
    )]
    pub warmup: usize,

    /// Decay after warmup, to zero at the last step.
    #[arg(long, value_enum, default_value = "cosine", help_heading = "Training")]
    pub schedule: ScheduleArg,

    /// AdamW decoupled weight decay.
    #[arg(
        long,
        default_value_t = 0.01,
        value_name = "W",
        help_heading = "Training"
    )]
    pub weight_decay: f64,

    /// Clip the global gradient norm to this value (0 disables).
    #[arg(
        long,
        default_value_t = 1.0,
        value_name = "NORM",
        help_heading = "Training"
    )]
    pub grad_clip: f64,

    /// Write a checkpoint every N steps (always on Ctrl-C and at --stop-after).
    #[arg(long, value_name = "N", help_heading = "Long runs")]
    pub checkpoint_every: Option<usize>,

    /// Checkpoint directory [default: OUT.checkpoint].
    #[arg(long, value_name = "DIR", help_heading = "Long runs")]
    pub checkpoint_dir: Option<String>,

    /// Continue from the checkpoint of an earlier run with the same data and flags.
    #[arg(long, help_heading = "Long runs")]
    pub resume: bool,

    /// Stop after N steps of this run, leaving a checkpoint for --resume (for jobs with a
    /// wall-time limit).
    #[arg(long, value_name = "N", help_heading = "Long runs")]
    pub stop_after: Option<usize>,

    /// Compute device: flex (pure-Rust CPU), tch-cpu or tch-cuda:N (builds with --features tch).
    #[arg(
        long,
        default_value = "flex",
        value_name = "DEVICE",
        help_heading = "Model"
    )]
    pub device: String,

    /// Compute precision (weights are saved as float32).
    #[arg(long, value_enum, default_value = "f32", help_heading = "Model")]
    pub dtype: DtypeArg,

    /// Replace an existing output directory.
    #[arg(long, help_heading = "Output")]
    pub force: bool,

    /// Input format, when the extension does not say.
    #[arg(long, value_enum, value_name = "FORMAT", help_heading = "Inputs")]
    pub input_format: Option<FormatArg>,
}

/// How text rows become token sequences.
#[derive(Debug, Args)]
pub struct TextArgs {
    /// Prompt text column (no loss).
    #[arg(
        long,
        default_value = "prompt",
        value_name = "NAME",
        help_heading = "Inputs"
    )]
    pub prompt_col: String,

    /// Response text column (the loss is on its tokens and the end-of-text token).
    #[arg(
        long,
        default_value = "response",
        value_name = "NAME",
        help_heading = "Inputs"
    )]
    pub response_col: String,

    #[command(flatten)]
    pub chat: ChatArgs,

    /// Cut sequences longer than N tokens to their first N (prompt first, then as much of
    /// the response as fits). Without it a row longer than the model's positions is an error.
    #[arg(long, value_name = "N", help_heading = "Inputs")]
    pub max_length: Option<usize>,
}

/// How text rows become token sequences for a chat model.
#[derive(Debug, Args)]
pub struct ChatArgs {
    /// Chat template for text rows: auto (the model's own, when it has one), none (prompt,
    /// response and the end-of-text token), or a Jinja template file. With a template the loss
    /// is on the assistant messages (and the end-of-turn token after each) only.
    #[arg(
        long,
        default_value = "auto",
        value_name = "auto|none|FILE",
        help_heading = "Inputs"
    )]
    pub chat_template: String,

    /// System message put first in every conversation that has none (needs a chat template).
    #[arg(long, value_name = "TEXT", help_heading = "Inputs")]
    pub system: Option<String>,

    /// Column of whole conversations, lists of {role, content} messages (used when present;
    /// needs a chat template).
    #[arg(
        long,
        default_value = "messages",
        value_name = "NAME",
        help_heading = "Inputs"
    )]
    pub messages_col: String,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct EvalArgs {
    #[command(subcommand)]
    pub action: Option<EvalAction>,

    /// Model: a directory in Hugging Face layout or a llama.cpp GGUF file.
    #[arg(
        long,
        required = true,
        value_name = "DIR|FILE.gguf",
        help_heading = "Model"
    )]
    pub model: Option<String>,

    /// Rows to evaluate: prompt/response text, conversations or input_ids/labels lists; every
    /// column is kept in the output.
    #[arg(long, required = true, value_name = "FILE", help_heading = "Inputs")]
    pub data: Option<String>,

    /// The rows with `loss`, `loss_tokens`, `mean_loss` (and `generation`, `predicted_answer`,
    /// `correct` with --generate) added.
    #[arg(
        short,
        long,
        required = true,
        value_name = "FILE",
        help_heading = "Output"
    )]
    pub out: Option<String>,

    /// Per domain and overall: rows, loss tokens, mean token loss, and accuracy with --generate.
    #[arg(long, value_name = "FILE", help_heading = "Output")]
    pub summary: Option<String>,

    #[command(flatten)]
    pub text: TextArgs,

    /// Domain column the summary groups by (when present).
    #[arg(
        long,
        default_value = "domain",
        value_name = "NAME",
        help_heading = "Inputs"
    )]
    pub domain_col: String,

    /// Also answer each prompt by greedy decoding, extract the final answer (\boxed{}, "the
    /// answer is", "#### N") and check it against --reference-col.
    #[arg(long, help_heading = "Generation")]
    pub generate: bool,

    /// Most tokens generated per row (decoding also stops at the end-of-text or end-of-turn
    /// token).
    #[arg(
        long,
        default_value_t = 256,
        value_name = "N",
        help_heading = "Generation"
    )]
    pub max_new_tokens: usize,

    /// Reference answer column for --generate (a null reference gives a null verdict; without
    /// the column, answers are generated and every verdict is null) [default: reference].
    #[arg(long, value_name = "NAME", help_heading = "Generation")]
    pub reference_col: Option<String>,

    /// Rows per forward pass (and per decoding batch), or `auto`: the largest batch (at most
    /// 16) whose estimated peak memory stays within --memory-budget.
    #[arg(
        long,
        default_value = "8",
        value_name = "N|auto",
        help_heading = "Model"
    )]
    pub batch_size: BatchSize,

    /// Memory the run may plan for: a share of the available memory (80%) or a size (12GiB).
    /// A batch whose estimate exceeds it is refused before any work.
    #[arg(
        long,
        default_value = "80%",
        value_name = "SIZE",
        help_heading = "Model"
    )]
    pub memory_budget: curate::model::budget::MemoryBudget,

    /// Compute device: flex (pure-Rust CPU), tch-cpu or tch-cuda:N (builds with --features tch).
    #[arg(
        long,
        default_value = "flex",
        value_name = "DEVICE",
        help_heading = "Model"
    )]
    pub device: String,

    /// Model compute precision.
    #[arg(long, value_enum, default_value = "f32", help_heading = "Model")]
    pub dtype: DtypeArg,

    /// Replace existing outputs.
    #[arg(long, help_heading = "Output")]
    pub force: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PrecondArg {
    Identity,
    Diagonal,
    Kfac,
    Ekfac,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FisherArg {
    /// The data's own labels.
    Empirical,
    /// Labels drawn from the model's predictions (seeded).
    Sampled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum QueryAggArg {
    /// One score per query.
    None,
    /// The mean query gradient: influence on the mean query log-likelihood (Infra).
    Mean,
    /// The summed query gradient (kronfluence's aggregate_query_gradients).
    Sum,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GranularityArg {
    Example,
    Segment,
    Token,
}

/// The model, the examples and how their gradients are taken: shared by scoring, factor
/// fitting and index building.
#[derive(Debug, Args)]
pub struct GradientArgs {
    #[command(flatten)]
    pub lm: ModelArgs,

    /// Training table: prompt/response text or input_ids/labels lists, optional id, domain,
    /// difficulty.
    #[arg(long, required = true, value_name = "FILE", help_heading = "Inputs")]
    pub train: Option<String>,

    /// Tracked linear layers: a regex searched in module names like model.layers.0.mlp.up_proj.
    #[arg(
        long,
        default_value = r"mlp\.(gate|up|down)_proj",
        value_name = "REGEX",
        help_heading = "Method"
    )]
    pub modules: String,

    /// Labels behind the factors.
    #[arg(long, value_enum, default_value = "empirical", help_heading = "Method")]
    pub fisher: FisherArg,

    /// Kronecker projection of each layer's gradient space to R_IN x R_OUT (kron:R_IN,R_OUT),
    /// seeded by --seed, module and side.
    #[arg(long, value_name = "kron:R_IN,R_OUT", help_heading = "Method")]
    pub project: Option<curate::influence::Projection>,

    /// Memory EK-FAC may use to keep the first pass's per-token inputs and gradients, so its
    /// second pass does not run the model again: `auto` keeps them when they fit in
    /// --memory-budget beside the batches, a number of MiB caps them (0 always reruns it).
    #[arg(
        long,
        default_value = "auto",
        value_name = "MIB|auto",
        help_heading = "Method"
    )]
    pub cache_mib: CacheSize,

    /// Process shard I of N (0-based) of the training rows: contiguous rows holding about
    /// 1/N of the work (each row's forward pass from its length). `auto` reads it from a
    /// scheduler (a Slurm array's task id, a Kubernetes Indexed Job's JOB_COMPLETION_INDEX,
    /// or CURATE_SHARD=I/N); `auto/N` gives the count, so a re-submitted task still knows it.
    #[arg(long, value_name = "I/N|auto|auto/N", help_heading = "Long runs")]
    pub shard: Option<String>,

    /// With --shard: when this shard's complete output of the same run (model, data,
    /// factors, settings) is already there, say so and exit 0, so re-submitting a whole
    /// array finishes only what is missing.
    #[arg(long, requires = "shard", help_heading = "Long runs")]
    pub skip_done: bool,

    /// Continue from the progress an interrupted run of the same command, data and settings
    /// saved in the checkpoint directory. Without one the run starts from the beginning, so a
    /// job script can always pass it.
    #[arg(long, help_heading = "Long runs")]
    pub resume: bool,

    /// Save progress (factor sums, scores or index rows so far) every SECONDS, and always on
    /// Ctrl-C or SIGTERM, so a stopped run loses at most that much work.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 300,
        help_heading = "Long runs"
    )]
    pub checkpoint_every: u64,

    /// Where progress is saved [default: OUT.checkpoint beside --out]. Removed when the run
    /// finishes; never a directory of other files.
    #[arg(long, value_name = "DIR", help_heading = "Long runs")]
    pub checkpoint_dir: Option<String>,
}

/// The model and how rows are read and batched through it: shared by every command that
/// takes gradients (influence, its factors and index, and index queries).
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// Model: a directory in Hugging Face layout (config.json, model.safetensors,
    /// tokenizer.json, chat template) or a llama.cpp GGUF file.
    #[arg(
        long,
        required = true,
        value_name = "DIR|FILE.gguf",
        help_heading = "Model"
    )]
    pub model: Option<String>,

    /// Id column (default: `id` when present, else the row index).
    #[arg(long, value_name = "NAME", help_heading = "Inputs")]
    pub id_col: Option<String>,

    #[command(flatten)]
    pub text: TextArgs,

    /// Examples per forward/backward pass, or `auto`: the largest batch (at most 16) whose
    /// estimated peak memory stays within --memory-budget.
    #[arg(
        long,
        default_value = "8",
        value_name = "N|auto",
        help_heading = "Model"
    )]
    pub batch_size: BatchSize,

    /// Memory the run may plan for: a share of the available memory (80%) or a size (12GiB).
    /// A batch whose estimate exceeds it is refused before any work.
    #[arg(
        long,
        default_value = "80%",
        value_name = "SIZE",
        help_heading = "Model"
    )]
    pub memory_budget: curate::model::budget::MemoryBudget,

    /// Compute device: flex (pure-Rust CPU), tch-cpu or tch-cuda:N (builds with --features tch).
    #[arg(
        long,
        default_value = "flex",
        value_name = "DEVICE",
        help_heading = "Model"
    )]
    pub device: String,

    /// Model compute precision (factors and scores are always accumulated in f64).
    #[arg(long, value_enum, default_value = "f32", help_heading = "Model")]
    pub dtype: DtypeArg,

    /// Initialise tensors the checkpoint lacks and ignore unused ones instead of failing.
    #[arg(long, help_heading = "Model")]
    pub allow_partial: bool,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct InfluenceArgs {
    #[command(subcommand)]
    pub action: Option<InfluenceAction>,

    #[command(flatten)]
    pub gradients: GradientArgs,

    /// Query table (same columns as the training table; optional `correct`).
    #[arg(long, required = true, value_name = "FILE", help_heading = "Inputs")]
    pub query: Option<String>,

    /// Example scores: query_id, train_id, score, rank (and domain, difficulty, per-module).
    #[arg(
        short,
        long,
        required = true,
        value_name = "FILE",
        help_heading = "Output"
    )]
    pub out: Option<String>,

    /// Preconditioner [default: ekfac, or the one --factors were fitted for].
    #[arg(long, value_enum, help_heading = "Method")]
    pub precond: Option<PrecondArg>,

    /// Damping added to every eigenvalue: a number, or `heuristic` (0.1 x the mean eigenvalue
    /// per layer).
    #[arg(
        long,
        default_value = "heuristic",
        value_name = "LAMBDA",
        help_heading = "Method"
    )]
    pub damping: curate::influence::Damping,

    /// Reuse factors from `fit-factors`, `merge-factors` or --save-factors.
    #[arg(long, value_name = "DIR", help_heading = "Method")]
    pub factors: Option<String>,

    /// Also save the fitted factors (reusable with --factors).
    #[arg(
        long,
        value_name = "DIR",
        conflicts_with = "factors",
        help_heading = "Output"
    )]
    pub save_factors: Option<String>,

    /// Score per query, or against the mean (or summed) query gradient.
    #[arg(long, value_enum, default_value = "none", help_heading = "Method")]
    pub query_agg: QueryAggArg,

    /// Boolean query column: only rows where it is true count (Infra's correctly answered
    /// queries); used when present.
    #[arg(
        long,
        default_value = "correct",
        value_name = "NAME",
        help_heading = "Inputs"
    )]
    pub correct_col: String,

    /// Also attribute to segments or tokens (their scores sum to the example score).
    #[arg(long, value_enum, default_value = "example", help_heading = "Method")]
    pub granularity: GranularityArg,

    /// How responses are cut into segments: paragraph, sentence, step, answer, regex:PATTERN.
    #[arg(
        long,
        default_value = "paragraph",
        value_name = "SEGMENTER",
        help_heading = "Method"
    )]
    pub segmenter: curate::influence::segment::Segmenter,

    /// Reference answer column for `--segmenter answer`.
    #[arg(
        long,
        default_value = "answer",
        value_name = "NAME",
        help_heading = "Inputs"
    )]
    pub answer_col: String,

    /// Token table [default: OUT with .tokens before the extension] (--granularity token).
    #[arg(long, value_name = "FILE", help_heading = "Output")]
    pub tokens: Option<String>,

    /// Segment table [default: OUT with .segments before the extension] (--granularity segment
    /// or token).
    #[arg(long, value_name = "FILE", help_heading = "Output")]
    pub segments: Option<String>,

    /// Summary by query domain x training domain x difficulty: mean score, share positive.
    #[arg(long, value_name = "FILE", help_heading = "Output")]
    pub summary: Option<String>,

    /// Add one score column per tracked module.
    #[arg(long, help_heading = "Output")]
    pub per_module: bool,

    /// Print the K most helpful (positive) and most harmful (negative) training examples per
    /// domain, by the mean over queries: on stdout, or on stderr with --out -.
    #[arg(long, value_name = "K", help_heading = "Output")]
    pub top: Option<usize>,

    /// Replace existing outputs.
    #[arg(long, help_heading = "Output")]
    pub force: bool,
}

#[derive(Debug, Subcommand)]
pub enum InfluenceAction {
    /// Fit the preconditioner's factors on the training rows (or one shard of them) and save
    /// them as sums plus counts, so shards add up with merge-factors.
    FitFactors(Box<FitFactorsArgs>),
    /// Add up factor shards into one factor directory.
    MergeFactors(MergeFactorsArgs),
    /// Concatenate the score files of --shard runs in query order and rank each query's
    /// training examples, as one unsharded run writes them.
    MergeScores(MergeScoresArgs),
    /// Build a gradient index: every training row's preconditioned gradient (optionally
    /// projected) stored once, so new query sets are scored without the training rows'
    /// gradients (`influence query`).
    Index(Box<IndexArgs>),
    /// Score a query set against a gradient index: only the queries' gradients are computed,
    /// then one dot product per training row, streamed over the index on all cores.
    Query(Box<QueryArgs>),
    /// Check scores by retraining: the linear datamodeling score (Spearman, over random
    /// subsets of the training rows, between the summed scores and the query loss after
    /// training on the subset), and removal controls (drop the most helpful rows or as many
    /// random ones, retrain, compare the query loss).
    Validate(Box<ValidateArgs>),
}

#[derive(Debug, Args)]
pub struct IndexArgs {
    #[command(flatten)]
    pub gradients: GradientArgs,

    /// Index directory to write (gradients.bin, rows.parquet, manifest.json).
    #[arg(short, long, value_name = "DIR", help_heading = "Output")]
    pub out: String,

    /// Preconditioner applied to the stored gradients [default: ekfac, or the one --factors
    /// were fitted for].
    #[arg(long, value_enum, help_heading = "Method")]
    pub precond: Option<PrecondArg>,

    /// Damping added to every eigenvalue: a number, or `heuristic` (0.1 x the mean eigenvalue
    /// per layer).
    #[arg(
        long,
        default_value = "heuristic",
        value_name = "LAMBDA",
        help_heading = "Method"
    )]
    pub damping: curate::influence::Damping,

    /// Factors from `fit-factors` / `merge-factors` (needed with --shard, unless --precond
    /// identity); without them they are fitted on the training rows first.
    #[arg(long, value_name = "DIR", help_heading = "Method")]
    pub factors: Option<String>,

    /// How the gradients are stored: f32, f16 (half the size, scores to about 1e-3) or f64
    /// (twice the size, for f64 runs whose scores must match to 1e-10).
    #[arg(long, value_enum, default_value = "f32", help_heading = "Output")]
    pub store_dtype: StoreDtypeArg,

    /// Replace an existing index directory.
    #[arg(long, help_heading = "Output")]
    pub force: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreDtypeArg {
    F32,
    F16,
    F64,
}

#[derive(Debug, Args)]
pub struct QueryArgs {
    /// Index directory from `influence index`; for a sharded index, every shard (in any
    /// order).
    #[arg(long, required = true, value_name = "DIR", help_heading = "Inputs")]
    pub index: Vec<String>,

    #[command(flatten)]
    pub lm: ModelArgs,

    /// Query table (prompt/response text or input_ids/labels; optional `correct`).
    #[arg(long, value_name = "FILE", help_heading = "Inputs")]
    pub query: String,

    /// Scores: query_id, train_id, score, rank (and the training rows' domain, difficulty).
    #[arg(short, long, value_name = "FILE", help_heading = "Output")]
    pub out: String,

    /// Keep only the K highest-scoring training rows per query (ranks 1 to K), found while
    /// streaming over the index instead of holding every pair.
    #[arg(long, value_name = "K", help_heading = "Output")]
    pub top: Option<usize>,

    /// Score per query, or against the mean (or summed) query gradient.
    #[arg(long, value_enum, default_value = "none", help_heading = "Method")]
    pub query_agg: QueryAggArg,

    /// Boolean query column: only rows where it is true count; used when present.
    #[arg(
        long,
        default_value = "correct",
        value_name = "NAME",
        help_heading = "Inputs"
    )]
    pub correct_col: String,

    /// Summary by query domain x training domain x difficulty (not with --top).
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with = "top",
        help_heading = "Output"
    )]
    pub summary: Option<String>,

    /// Replace existing outputs.
    #[arg(long, help_heading = "Output")]
    pub force: bool,
}

#[derive(Debug, Subcommand)]
pub enum EvalAction {
    /// Compare arms (say reweighting rules), each evaluated once per seed: per arm and domain
    /// the mean token loss over seeds with its spread, and a gate on the gain of one arm over
    /// another.
    Compare(CompareArgs),
}

#[derive(Debug, Args)]
pub struct CompareArgs {
    /// An arm: NAME=FILE[,FILE...], `curate eval` outputs of that arm (one file per seed).
    #[arg(required = true, value_name = "NAME=FILE[,FILE...]")]
    pub arms: Vec<String>,

    /// Per arm and domain (and `all`): runs, mean token loss over the runs, its standard
    /// deviation, minimum and maximum, and the gain over --control.
    #[arg(short, long, value_name = "FILE")]
    pub out: String,

    /// Domain column of the eval outputs (when present).
    #[arg(long, default_value = "domain", value_name = "NAME")]
    pub domain_col: String,

    /// The arm expected to do better (lower loss) than --control.
    #[arg(long, requires = "control", value_name = "ARM")]
    pub candidate: Option<String>,

    /// The arm --candidate is held against (a random control).
    #[arg(long, requires = "candidate", value_name = "ARM")]
    pub control: Option<String>,

    /// Gate: exit 1 (outputs still written) unless the candidate's mean loss over all rows is
    /// at least this much below the control's.
    #[arg(
        long,
        default_value_t = 0.0,
        value_name = "G",
        allow_negative_numbers = true
    )]
    pub min_gain: f64,

    /// Replace an existing output.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The model every retraining starts from: a directory or a GGUF file.
    #[arg(long, value_name = "DIR|FILE.gguf")]
    pub model: String,

    /// The training rows the scores are for (as given to influence).
    #[arg(long, value_name = "FILE")]
    pub train: String,

    /// The query rows the scores are for (as given to influence).
    #[arg(long, value_name = "FILE")]
    pub query: String,

    /// Influence scores of those rows (`curate influence --out`): query_id, train_id, score;
    /// per query, or one `mean` / `sum` objective. Repeat to compare several (say EK-FAC and
    /// identity) on the same retrainings.
    #[arg(long, required = true, value_name = "FILE")]
    pub scores: Vec<String>,

    /// Per score file and query: its LDS over the subsets and its losses after retraining.
    #[arg(short, long, value_name = "FILE")]
    pub out: String,

    /// JSON report: per score file the mean LDS with its standard error and the removal
    /// controls; the losses of the base model and of retraining on all rows; settings.
    #[arg(long, value_name = "FILE")]
    pub summary: Option<String>,

    /// Random training subsets to retrain on.
    #[arg(long, default_value_t = 16, value_name = "K")]
    pub subsets: usize,

    /// Share of the training rows in each subset.
    #[arg(long, default_value_t = 0.5, value_name = "ALPHA")]
    pub alpha: f64,

    /// Removal controls: fractions of the rows to drop (the most helpful by mean score, and
    /// as many random rows) before retraining; `none` skips them.
    #[arg(long, default_value = "0.1,0.3", value_name = "F,...")]
    pub remove: curate::influence::retrain::RemoveFractions,

    /// Random removals per fraction.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub random_controls: usize,

    /// Passes over each subset.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub epochs: usize,

    /// Learning rate (AdamW, after --warmup, then --schedule).
    #[arg(long, default_value_t = 1e-3, value_name = "LR")]
    pub lr: f64,

    /// Linear warmup steps.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub warmup: usize,

    /// Decay after warmup.
    #[arg(long, value_enum, default_value = "constant")]
    pub schedule: ScheduleArg,

    /// Sequences per training batch (and per loss batch).
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub batch_size: usize,

    /// Id column (default: `id` when present, else the row index).
    #[arg(long, value_name = "NAME")]
    pub id_col: Option<String>,

    #[command(flatten)]
    pub text: TextArgs,

    /// Compute device: flex (pure-Rust CPU), tch-cpu or tch-cuda:N (builds with --features tch).
    #[arg(long, default_value = "flex", value_name = "DEVICE")]
    pub device: String,

    /// Compute precision.
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: DtypeArg,

    /// Replace existing outputs.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct FitFactorsArgs {
    #[command(flatten)]
    pub gradients: GradientArgs,

    /// Factor directory to write.
    #[arg(short, long, value_name = "DIR", help_heading = "Output")]
    pub out: String,

    /// Preconditioner the factors are for.
    #[arg(long, value_enum, default_value = "ekfac", help_heading = "Method")]
    pub precond: PrecondArg,

    /// EK-FAC's second pass: the merged covariances of every shard, whose eigenvectors rotate
    /// this shard's gradients. Without it a sharded EK-FAC fit writes covariances only.
    #[arg(long, value_name = "DIR", help_heading = "Method")]
    pub covariance: Option<String>,

    /// Replace an existing output directory.
    #[arg(long, help_heading = "Output")]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct MergeFactorsArgs {
    /// Factor directories from fit-factors (all shards of one stage, optionally with the
    /// merged covariances they were rotated by).
    #[arg(required = true, value_name = "DIR")]
    pub inputs: Vec<String>,

    /// Merged factor directory.
    #[arg(short, long, value_name = "DIR")]
    pub out: String,

    /// Replace an existing output directory.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct MergeScoresArgs {
    /// Score files of `curate influence --shard` runs (Parquet or Arrow), in any order: each
    /// records its shard, and every shard of one run must be there exactly once.
    #[arg(required = true, value_name = "FILE")]
    pub inputs: Vec<String>,

    /// Merged, ranked scores.
    #[arg(short, long, value_name = "FILE")]
    pub out: String,

    /// Replace an existing output.
    #[arg(long)]
    pub force: bool,
}

/// `--cache-mib`: a cap in MiB, or `auto`, all of the stacks when the memory budget holds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheSize {
    Mib(usize),
    Auto,
}

impl std::str::FromStr for CacheSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text == "auto" {
            return Ok(CacheSize::Auto);
        }
        text.parse::<usize>()
            .map(CacheSize::Mib)
            .map_err(|_| format!("{text:?} is not a number of MiB or `auto`"))
    }
}

/// `--batch-size`: a number of sequences, or `auto`, the largest batch within the memory budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchSize {
    Fixed(usize),
    Auto,
}

impl std::str::FromStr for BatchSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text == "auto" {
            return Ok(BatchSize::Auto);
        }
        match text.parse::<usize>() {
            Ok(n) if n > 0 => Ok(BatchSize::Fixed(n)),
            _ => Err(format!("{text:?} is not a positive number or `auto`")),
        }
    }
}
