//! What the commands that ask an LLM endpoint share: the endpoint from the flags, the
//! client, the journal beside the output and the reply store, and the wording of the ways a
//! run stops.

use std::collections::HashMap;
use std::time::Duration;

use std::sync::atomic::AtomicBool;

use anyhow::{Result, anyhow};

use crate::cli::EndpointArgs;
use crate::commands::Context;
use curate::error::{Interrupted, usage};
use curate::interrupt;
use curate::llm::ask::{Asker, Exchange, Job, ask_all};
use curate::llm::cache::{CacheError, ReplyCache};
use curate::llm::client::{Budget, ChatClient, ClientSettings, Exhausted, Prices, chat_endpoint};
use curate::llm::journal::{self, Answer, Journal, JournalConflict, JournalId};

/// The API key variable read when `--api-key-env` is not given.
const DEFAULT_KEY_ENV: &str = "OPENAI_API_KEY";

/// The endpoint, model and key of a run, from the flags.
pub struct Endpoint {
    pub url: String,
    pub model: String,
    pub api_key: Option<String>,
}

/// The endpoint the flags name; `what` says who needs it in errors (`--mode llm-rewrite`).
pub fn endpoint(args: &EndpointArgs, what: &str) -> Result<Endpoint> {
    let base = args
        .base_url
        .as_deref()
        .ok_or_else(|| usage(format!("{what} needs --base-url (the endpoint)")))?;
    let url = chat_endpoint(base).map_err(|e| usage(format!("--base-url {e}")))?;
    let model = args.model.clone().ok_or_else(|| {
        usage(format!(
            "{what} needs --model (the name the endpoint serves)"
        ))
    })?;
    let api_key = match &args.api_key_env {
        Some(var) => match std::env::var(var) {
            Ok(key) if !key.is_empty() => Some(key),
            _ => {
                return Err(usage(format!(
                    "--api-key-env {var}: the variable is not set"
                )));
            }
        },
        None => std::env::var(DEFAULT_KEY_ENV)
            .ok()
            .filter(|k| !k.is_empty()),
    };
    Ok(Endpoint {
        url,
        model,
        api_key,
    })
}

/// The endpoint flags' values that clap cannot check alone.
pub fn check_limits(args: &EndpointArgs) -> Result<()> {
    if args.concurrency == 0 {
        return Err(usage("--concurrency must be at least 1"));
    }
    if args.max_tokens == Some(0) {
        return Err(usage("--max-tokens must be at least 1"));
    }
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        return Err(usage("--timeout must be a positive number of seconds"));
    }
    prices(args)?;
    if let Some(max) = args.max_cost
        && !(max.is_finite() && max > 0.0)
    {
        return Err(usage("--max-cost must be a positive amount"));
    }
    Ok(())
}

/// `--price-per-mtok`, checked; `--max-cost` needs it.
pub fn prices(args: &EndpointArgs) -> Result<Option<Prices>> {
    let prices = match args.price_per_mtok.as_slice() {
        [] => None,
        &[prompt, completion]
            if [prompt, completion]
                .iter()
                .all(|p| p.is_finite() && *p >= 0.0) =>
        {
            Some(Prices { prompt, completion })
        }
        _ => {
            return Err(usage(
                "--price-per-mtok takes two prices, PROMPT,COMPLETION, per million tokens (0 or more)",
            ));
        }
    };
    if args.max_cost.is_some() && prices.is_none() {
        return Err(usage("--max-cost needs --price-per-mtok PROMPT,COMPLETION"));
    }
    Ok(prices)
}

/// The endpoint flags given, by name (for commands and modes that ask no LLM).
pub fn given_flags(args: &EndpointArgs) -> Vec<&'static str> {
    [
        (args.base_url.is_some(), "--base-url"),
        (args.model.is_some(), "--model"),
        (args.cache_dir.is_some(), "--cache-dir"),
        (args.resume, "--resume"),
        (args.dry_run, "--dry-run"),
        (args.max_requests.is_some(), "--max-requests"),
        (args.max_total_tokens.is_some(), "--max-total-tokens"),
        (args.max_tokens.is_some(), "--max-tokens"),
        (!args.price_per_mtok.is_empty(), "--price-per-mtok"),
        (args.max_cost.is_some(), "--max-cost"),
    ]
    .into_iter()
    .filter_map(|(set, flag)| set.then_some(flag))
    .collect()
}

fn client(args: &EndpointArgs, ep: &Endpoint, seed: u64) -> ChatClient {
    ChatClient::new(ClientSettings {
        endpoint: ep.url.clone(),
        api_key: ep.api_key.clone(),
        timeout: Duration::from_secs_f64(args.timeout),
        max_retries: args.max_retries,
        seed,
    })
}

/// The journal beside `out` (none when writing to stdout), and its entries by job.
pub fn open_journal(
    args: &EndpointArgs,
    out: &str,
    id: JournalId,
    force: bool,
) -> Result<(Option<Journal>, HashMap<usize, journal::Entry>)> {
    if out == "-" {
        return Ok((None, HashMap::new()));
    }
    let (journal, entries) =
        Journal::open(&journal::path_for(out), id, args.resume, force).map_err(journal_error)?;
    Ok((Some(journal), entries))
}

/// The answers of `entries` that belong to these jobs (same job index, same request).
pub fn journaled_answers<'a>(
    mut entries: HashMap<usize, journal::Entry>,
    jobs: impl Iterator<Item = (usize, &'a str)>,
) -> HashMap<usize, Answer> {
    let mut answers = HashMap::new();
    for (row, key) in jobs {
        if let Some((journaled, answer)) = entries.remove(&row)
            && journaled == key
        {
            answers.insert(row, answer);
        }
    }
    answers
}

/// The journal's entries without touching it, for `--dry-run --resume`.
pub fn peek_journal(
    args: &EndpointArgs,
    out: &str,
    id: JournalId,
) -> Result<HashMap<usize, journal::Entry>> {
    if !args.resume || out == "-" {
        return Ok(HashMap::new());
    }
    Journal::peek(&journal::path_for(out), id).map_err(journal_error)
}

/// A journal conflict, with the flags that resolve it.
fn journal_error(err: anyhow::Error) -> anyhow::Error {
    match err.downcast::<JournalConflict>() {
        Ok(conflict @ JournalConflict::Interrupted(_)) => usage(format!(
            "{conflict}; pass --resume to continue it, or --force to start over"
        )),
        Ok(conflict @ JournalConflict::OtherRun(_)) => usage(format!(
            "{conflict}; pass --force without --resume to start over"
        )),
        Err(err) => err,
    }
}

/// The run's reply cache: `--cache-dir`, else (with a journal) a private store beside the
/// journal, so a resumed run replays what it got (an unusable reply and its re-ask included).
fn reply_cache(args: &EndpointArgs, journal: Option<&Journal>) -> Result<Option<ReplyCache>> {
    Ok(match (&args.cache_dir, journal) {
        (Some(dir), _) => Some(open_cache(dir)?),
        (None, Some(journal)) => Some(ReplyCache::open_private(&journal.replies(), !args.resume)?),
        (None, None) => None,
    })
}

/// `--cache-dir` as it is, for a dry run (which creates nothing).
pub fn existing_cache(args: &EndpointArgs) -> Result<Option<ReplyCache>> {
    match &args.cache_dir {
        Some(dir) if std::path::Path::new(dir).is_dir() => Ok(Some(open_cache(dir)?)),
        _ => Ok(None),
    }
}

fn open_cache(dir: &str) -> Result<ReplyCache> {
    ReplyCache::open(dir).map_err(|e| match e {
        CacheError::NotADirectory(_) => usage(format!("--cache-dir {e}")),
        CacheError::Create(..) => anyhow::Error::new(e).context("--cache-dir"),
    })
}

/// What asking for a run's pending jobs brought.
pub struct Asked {
    pub answers: HashMap<usize, Answer>,
    pub cache_hits: u64,
    /// Re-asks after an unusable reply.
    pub repairs: u64,
    pub requests: u64,
    pub tokens: u64,
    pub retries: u64,
    /// What the run cost, at --price-per-mtok.
    pub cost: Option<f64>,
    /// The model the server answered as, when not the one asked for.
    pub served_model: Option<String>,
    pub seconds: f64,
}

/// Ask for `pending` (of `total` jobs, the others answered by the journal) from a pool of
/// workers within the budgets, journaling each answer as it arrives, with a progress bar.
/// A stop (Ctrl-C, a fatal reply, a spent budget) is an error that says where the answers
/// are kept.
pub fn ask_pending<C: Exchange>(
    args: &EndpointArgs,
    ep: &Endpoint,
    pending: &[&Job<C>],
    total: usize,
    mut journal: Option<&mut Journal>,
    context: &Context,
) -> Result<Asked> {
    let cache = reply_cache(args, journal.as_deref())?;
    let client = client(args, ep, context.seed);
    let mut budget = Budget::new(args.max_requests, args.max_total_tokens);
    if let Some(prices) = prices(args)? {
        budget = budget.with_cost(prices, args.max_cost);
    }
    let stop = AtomicBool::new(false);
    let worker = Asker {
        client: &client,
        budget: &budget,
        cache: cache.as_ref(),
        parse_retries: args.parse_retries,
        stop: &stop,
    };
    let bar = context.printer.progress_bar(pending.len() as u64, "asking");
    let started = std::time::Instant::now();
    let collected = ask_all(
        pending,
        &worker,
        args.concurrency,
        journal.as_deref_mut(),
        &mut |collected| {
            bar.inc(1);
            bar.set_message(format!(
                "{} requests, {} retries, {} cached",
                budget.used().0,
                client.retries(),
                collected.cache_hits
            ));
        },
    );
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let answered = total - pending.len() + collected.answers.len();
    let kept = kept_message(journal.as_deref(), answered, total);
    if interrupt::check().is_err() {
        return Err(anyhow::Error::new(Interrupted).context(format!("stopped: {kept}")));
    }
    if let Some(message) = collected.fatal.or(collected.halted.map(budget_message)) {
        return Err(anyhow!("{message}; {kept}"));
    }
    let (requests, tokens) = budget.used();
    Ok(Asked {
        answers: collected.answers,
        cache_hits: collected.cache_hits,
        repairs: collected.repairs,
        requests,
        tokens,
        retries: client.retries(),
        cost: budget.cost(),
        served_model: client.other_model(),
        seconds,
    })
}

/// Where the answers of a stopped run are kept, for its error message.
fn kept_message(journal: Option<&Journal>, answered: usize, asked: usize) -> String {
    match journal {
        Some(journal) => format!(
            "{answered} of {asked} answers are kept in {} (run again with --resume to continue)",
            journal.path().display()
        ),
        None => "no journal is kept when writing to stdout; --cache-dir keeps replies".to_string(),
    }
}

/// Which budget flag stopped the run.
fn budget_message(exhausted: Exhausted) -> String {
    match exhausted {
        Exhausted::Requests { max } => {
            format!("the request budget (--max-requests {max}) is used up")
        }
        Exhausted::Tokens { max, used, next } => format!(
            "the token budget (--max-total-tokens {max}) does not allow the next request \
             ({used} used, about {next} more)"
        ),
        Exhausted::Cost { max, used, next } => format!(
            "the cost budget (--max-cost {max}) does not allow the next request \
             ({used:.4} used, up to {next:.4} more)"
        ),
    }
}
