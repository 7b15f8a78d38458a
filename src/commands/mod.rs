//! One file per subcommand: read inputs, call the library, write outputs.

mod convert;
mod docs;
mod eval;
mod influence;
mod inspect;
mod llm;
mod rephrase;
mod reveal;
mod reweight;
mod train;

use std::io::Write;

use anyhow::Result;

use crate::ExitStatus;
use crate::cli::Command;
use crate::printer::Printer;
use curate::table::Provenance;

/// What every command gets besides its own arguments.
pub struct Context {
    pub printer: Printer,
    pub seed: u64,
    /// The full command line, recorded in provenance.
    pub argv: Vec<String>,
}

impl Context {
    /// Provenance for an output of this run; commands add their inputs.
    pub fn provenance(&self) -> Provenance {
        // Credentials in a URL (`--base-url https://user:key@host`) never reach a file.
        let argv = self
            .argv
            .iter()
            .map(|arg| curate::text::redact_credentials(arg))
            .collect();
        Provenance::new(argv, self.seed)
    }
}

/// Most sequences `--batch-size auto` puts in one batch: larger batches are not faster on CPUs
/// (the bundled influence job took 1.5 times as long with 64 rows per batch as with 8) and pad
/// more.
const MOST_AUTO_BATCH: usize = 16;

/// The tokens of the longest sequence.
pub fn longest(sequences: &[curate::model::Sequence]) -> usize {
    sequences.iter().map(|s| s.len()).max().unwrap_or(0)
}

/// The most labelled tokens of one sequence (what the LM head scores).
pub fn most_labelled(sequences: &[curate::model::Sequence]) -> usize {
    sequences.iter().map(|s| s.loss_tokens()).max().unwrap_or(0)
}

/// What [`plan_batches`] chose.
pub struct BatchPlan {
    pub size: usize,
    pub estimated_peak: u128,
    /// The memory budget in bytes, when known.
    pub budget: Option<u128>,
}

/// The batch a model run over `rows` sequences of up to `longest` tokens uses, and its
/// estimated peak memory. `--batch-size N` is refused (exit
/// 2, with both numbers) when its estimate exceeds `--memory-budget`; `auto` takes the largest
/// batch within it (at most 16 and the row count) and says which on stderr.
pub fn plan_batches(
    footprint: &curate::model::budget::Footprint,
    rows: usize,
    longest: usize,
    requested: crate::cli::BatchSize,
    budget: curate::model::budget::MemoryBudget,
    printer: &Printer,
) -> Result<BatchPlan> {
    use curate::model::budget::{self, bytes};
    use std::io::Write;
    let (rows, longest) = (rows.max(1), longest.max(1));
    let limit = budget.resolve(budget::available_memory());
    let batch = match requested {
        crate::cli::BatchSize::Fixed(n) => n.min(rows),
        crate::cli::BatchSize::Auto => {
            let most = MOST_AUTO_BATCH.min(rows);
            let Some((limit, said)) = &limit else {
                return Err(curate::error::usage(
                    "--batch-size auto needs a memory budget, and this system does not say how much memory is available: give --memory-budget as a size (12GiB)",
                ));
            };
            let Some(batch) = footprint.largest_batch(longest, most, *limit) else {
                return Err(curate::error::usage(format!(
                    "{}; lower --max-length or raise --memory-budget",
                    budget::check_batch(footprint, 1, longest, Some(&(*limit, said.clone())))
                        .expect_err("one sequence does not fit")
                )));
            };
            let estimate = footprint.bytes(batch, longest);
            writeln!(
                printer.stderr(),
                "batch size {batch} (auto: estimated peak memory {} for sequences of up to {longest} tokens, within {said})",
                bytes(estimate)
            )?;
            return Ok(BatchPlan {
                size: batch,
                estimated_peak: estimate,
                budget: Some(*limit),
            });
        }
    };
    let estimated_peak =
        budget::check_batch(footprint, batch, longest, limit.as_ref()).map_err(|e| {
            curate::error::usage(format!(
                "{e}; lower --batch-size or --max-length, or raise --memory-budget"
            ))
        })?;
    Ok(BatchPlan {
        size: batch,
        estimated_peak,
        budget: limit.map(|(bytes, _)| bytes),
    })
}

/// The compute device `--device` names (a usage error when this build lacks it).
pub fn device(spec: &str) -> Result<burn::tensor::Device> {
    spec.parse::<curate::model::DeviceSpec>()
        .map_err(curate::error::usage)?
        .device()
        .map_err(curate::error::usage)
}

/// The part `--shard` names (`I/N`, or `auto` / `auto/N` from a scheduler's environment, then
/// said on stderr); all rows without it.
pub fn shard(spec: Option<&str>, printer: &Printer) -> Result<curate::table::Shard> {
    let Some(spec) = spec else {
        return Ok(curate::table::Shard::WHOLE);
    };
    let resolved = curate::table::Shard::parse(spec, |name| std::env::var(name).ok())
        .map_err(|err| curate::error::usage(format!("--shard {spec}: {err}")))?;
    if let Some(from) = &resolved.from {
        writeln!(
            printer.stderr(),
            "shard {} (--shard {spec}: {from})",
            resolved.shard
        )?;
    }
    Ok(resolved.shard)
}

/// An output directory may only be replaced with `--force`; checked before any work.
pub fn refuse_existing(path: &std::path::Path, force: bool) -> Result<()> {
    if path.exists() && !force {
        return Err(curate::error::OutputExists::directory(path.display().to_string()).into());
    }
    Ok(())
}

/// `PATH.<suffix>` beside `PATH` (where a run keeps its checkpoint).
pub fn sibling(path: &std::path::Path, suffix: &str) -> std::path::PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{suffix}"));
    path.with_file_name(name)
}

/// The chat template `--chat-template` names: auto, none, or a file.
pub fn template_choice(args: &crate::cli::ChatArgs) -> Result<curate::model::TemplateChoice> {
    let spec = args.chat_template.as_str();
    curate::model::TemplateChoice::from_spec(spec).map_err(|e| {
        curate::error::usage(format!(
            "--chat-template {spec}: cannot read the template: {e}"
        ))
    })
}

/// The flags encoding messages advise changing.
pub const ENCODE_HINTS: curate::model::encode::EncodeHints<'static> =
    curate::model::encode::EncodeHints {
        max_length: "--max-length",
        system: "--system",
        chat_template: "--chat-template",
    };

/// How `--prompt-col`, `--response-col`, the chat flags and `--max-length` encode the rows of
/// `file`.
pub fn encoding<'a>(
    text: &'a crate::cli::TextArgs,
    file: &'a str,
    chat: Option<&'a curate::model::ChatTemplate>,
) -> curate::model::encode::Encoding<'a> {
    curate::model::encode::Encoding {
        file,
        prompt_col: &text.prompt_col,
        response_col: &text.response_col,
        messages_col: &text.chat.messages_col,
        max_length: text.max_length,
        chat,
        system: text.chat.system.as_deref(),
        skip_long: false,
        hints: ENCODE_HINTS,
    }
}

/// The text columns `--prompt-col`, `--response-col` and `--messages-col` name.
pub fn text_columns(text: &crate::cli::TextArgs) -> curate::model::encode::TextColumns<'_> {
    curate::model::encode::TextColumns {
        prompt: curate::table::ColumnRole::new(&text.prompt_col, "--prompt-col"),
        response: curate::table::ColumnRole::new(&text.response_col, "--response-col"),
        messages_col: &text.chat.messages_col,
    }
}

pub fn dispatch(command: Command, context: &Context) -> Result<ExitStatus> {
    match command {
        Command::Inspect(args) => inspect::run(args, context),
        Command::Convert(args) => convert::run(args, context),
        Command::Reweight(args) => reweight::run(args, context),
        Command::Train(args) => train::run(args, context),
        Command::Eval(args) => eval::run(*args, context),
        Command::Influence(args) => influence::run(args, context),
        Command::Reveal(args) => reveal::run(*args, context),
        Command::Rephrase(args) => rephrase::run(args, context),
        Command::Completions(args) => docs::completions(args, context),
        Command::Man(args) => docs::man(args, context),
    }
}
