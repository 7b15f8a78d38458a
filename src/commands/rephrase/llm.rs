//! The LLM modes of `curate rephrase`: plan one request per record that needs one, answer
//! what the journal and the cache already hold, send the rest from a pool of workers within
//! the budgets, journal every answer as it arrives, then turn the answers into records.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Result, anyhow};
use serde_json::{Value, json};

use crate::cli::{RephraseArgs, RephraseModeArg};
use crate::commands::Context;
use curate::error::{Interrupted, usage};
use curate::interrupt;
use curate::rephrase::ask::{Asker, Job, ask_all};
use curate::rephrase::cache::{CacheError, ReplyCache};
use curate::rephrase::client::{Budget, ChatClient, ClientSettings, Exhausted, chat_endpoint};
use curate::rephrase::journal::{self, Answer, Journal, JournalConflict};
use curate::rephrase::plan::{self, LlmMode, Plan, jobs};
use curate::rephrase::records::Trace;
use curate::rephrase::{DriftLimit, Rejection, Rephrased, Settings};

/// The API key variable read when `--api-key-env` is not given.
const DEFAULT_KEY_ENV: &str = "OPENAI_API_KEY";

/// The endpoint, model and key of the run, from the flags.
struct Endpoint {
    url: String,
    model: String,
    api_key: Option<String>,
}

fn endpoint(args: &RephraseArgs) -> Result<Endpoint> {
    let mode = llm_mode(args.mode).name();
    let base = args
        .base_url
        .as_deref()
        .ok_or_else(|| usage(format!("--mode {mode} needs --base-url (the endpoint)")))?;
    let url = chat_endpoint(base).map_err(|e| usage(format!("--base-url {e}")))?;
    let model = args.model.clone().ok_or_else(|| {
        usage(format!(
            "--mode {mode} needs --model (the name the endpoint serves)"
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

fn llm_mode(mode: RephraseModeArg) -> LlmMode {
    match mode {
        RephraseModeArg::LlmBoundaries => LlmMode::Boundaries,
        RephraseModeArg::LlmRewrite => LlmMode::Rewrite,
        RephraseModeArg::Rules => unreachable!("rules mode asks no LLM"),
    }
}

/// The run's plans, for the endpoint the flags name.
fn plans(traces: &[Trace], settings: &Settings, args: &RephraseArgs, ep: &Endpoint) -> Vec<Plan> {
    plan::plan(
        traces,
        settings,
        llm_mode(args.mode),
        (&ep.model, &ep.url),
        args.max_tokens,
    )
}

/// Check the LLM flags before anything is read or written.
pub fn check_flags(args: &RephraseArgs) -> Result<()> {
    let llm = args.mode != RephraseModeArg::Rules;
    if !llm {
        let given = [
            (args.base_url.is_some(), "--base-url"),
            (args.model.is_some(), "--model"),
            (args.cache_dir.is_some(), "--cache-dir"),
            (args.resume, "--resume"),
            (args.dry_run, "--dry-run"),
            (args.max_requests.is_some(), "--max-requests"),
            (args.max_total_tokens.is_some(), "--max-total-tokens"),
            (args.max_tokens.is_some(), "--max-tokens"),
        ];
        if let Some((_, flag)) = given.iter().find(|(set, _)| *set) {
            return Err(usage(format!(
                "{flag} is for the LLM modes (--mode llm-boundaries or llm-rewrite)"
            )));
        }
        return Ok(());
    }
    endpoint(args)?;
    if args.concurrency == 0 {
        return Err(usage("--concurrency must be at least 1"));
    }
    if args.max_tokens == Some(0) {
        return Err(usage("--max-tokens must be at least 1"));
    }
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        return Err(usage("--timeout must be a positive number of seconds"));
    }
    if !(0.0..=1.0).contains(&args.max_drift) {
        return Err(usage("--max-drift must be between 0 and 1"));
    }
    if args.resume && out_path(args) == "-" {
        return Err(usage(
            "--resume needs --out FILE: the journal it continues lives beside the output",
        ));
    }
    Ok(())
}

/// The outcome of the LLM modes, ready for the common output path.
pub struct LlmRun {
    pub outcomes: Vec<Result<Rephrased, Rejection>>,
    /// Removed once the outputs are written.
    pub journal: Option<Journal>,
    /// The `llm` part of the statistics.
    pub report: Value,
}

/// Rephrase every trace in an LLM mode.
pub fn rephrase(
    traces: &[Trace],
    settings: &Settings,
    args: &RephraseArgs,
    context: &Context,
) -> Result<LlmRun> {
    let ep = endpoint(args)?;
    let plans = plans(traces, settings, args, &ep);
    let (mut journal, mut answers) = open_journal(args, &plans)?;
    let from_journal = answers.len();
    let pending: Vec<&Job> = jobs(&plans)
        .filter(|job| !answers.contains_key(&job.row))
        .collect();
    // Without --cache-dir the run still keeps every reply as it arrives, beside its journal,
    // so a resumed run replays what it got (an unusable reply and its re-ask included).
    let cache = match (&args.cache_dir, &journal) {
        (Some(dir), _) => Some(open_cache(dir)?),
        (None, Some(journal)) => Some(ReplyCache::open_private(&journal.replies(), !args.resume)?),
        (None, None) => None,
    };
    let client = ChatClient::new(ClientSettings {
        endpoint: ep.url.clone(),
        api_key: ep.api_key.clone(),
        timeout: Duration::from_secs_f64(args.timeout),
        max_retries: args.max_retries,
        seed: context.seed,
    });
    let asked = jobs(&plans).count();
    // Records this run asks about (the journal answered the others).
    let asking = pending.len();
    let budget = Budget::new(args.max_requests, args.max_total_tokens);
    let stop = AtomicBool::new(false);
    let worker = Asker {
        client: &client,
        budget: &budget,
        cache: cache.as_ref(),
        parse_retries: args.parse_retries,
        stop: &stop,
    };
    let bar = context.printer.progress_bar(pending.len() as u64, "asking");
    let collected = ask_all(
        &pending,
        &worker,
        args.concurrency,
        journal.as_mut(),
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
    answers.extend(collected.answers);

    let kept = match &journal {
        Some(journal) => format!(
            "{} of {asked} answers are kept in {} (run again with --resume to continue)",
            answers.len(),
            journal.path().display()
        ),
        None => "no journal is kept when writing to stdout; --cache-dir keeps replies".to_string(),
    };
    if interrupt::check().is_err() {
        return Err(anyhow::Error::new(Interrupted).context(format!("stopped: {kept}")));
    }
    if let Some(message) = collected.fatal.or(collected.halted.map(budget_message)) {
        return Err(anyhow!("{message}; {kept}"));
    }

    let drift = DriftLimit {
        max: args.max_drift,
        name: "--max-drift",
    };
    let outcomes = plan::settle_all(plans, traces, answers, settings, drift);
    let (requests, tokens) = budget.used();
    let report = json!({
        "mode": llm_mode(args.mode).name(),
        "model": ep.model,
        "endpoint": curate::text::redact_credentials(&ep.url),
        "served_model": client.other_model(),
        "records_asked": asking,
        "without_request": traces.len() - asked,
        "from_journal": from_journal,
        "cache_hits": collected.cache_hits,
        "requests": requests,
        "retries": client.retries(),
        "repairs": collected.repairs,
        "tokens": tokens,
    });
    Ok(LlmRun {
        outcomes,
        journal,
        report,
    })
}

/// `--out`, or `-` (stdout) for a dry run that names none.
fn out_path(args: &RephraseArgs) -> &str {
    args.out.as_deref().unwrap_or("-")
}

/// The journal beside `--out` (none when writing to stdout) and the answers it already holds
/// for these plans.
fn open_journal(
    args: &RephraseArgs,
    plans: &[Plan],
) -> Result<(Option<Journal>, HashMap<usize, Answer>)> {
    if out_path(args) == "-" {
        return Ok((None, HashMap::new()));
    }
    let fingerprint = plan::fingerprint(llm_mode(args.mode), plans);
    let (journal, mut entries) = Journal::open(
        &journal::path_for(out_path(args)),
        &fingerprint,
        args.resume,
        args.force,
    )
    .map_err(journal_error)?;
    let mut answers = HashMap::new();
    for job in jobs(plans) {
        if let Some((key, answer)) = entries.remove(&job.row)
            && key == job.key
        {
            answers.insert(job.row, answer);
        }
    }
    Ok((Some(journal), answers))
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

fn open_cache(dir: &str) -> Result<ReplyCache> {
    ReplyCache::open(dir).map_err(|e| match e {
        CacheError::NotADirectory(_) => usage(format!("--cache-dir {e}")),
        CacheError::Create(..) => anyhow::Error::new(e).context("--cache-dir"),
    })
}

/// `--dry-run`: what the run would send, as JSON on stdout; nothing is sent or written.
pub fn dry_run(
    traces: &[Trace],
    settings: &Settings,
    args: &RephraseArgs,
    context: &Context,
) -> Result<()> {
    let ep = endpoint(args)?;
    let plans = plans(traces, settings, args, &ep);
    let entries = if args.resume {
        Journal::peek(
            &journal::path_for(out_path(args)),
            &plan::fingerprint(llm_mode(args.mode), &plans),
        )
        .map_err(journal_error)?
    } else {
        HashMap::new()
    };
    let cache = match &args.cache_dir {
        Some(dir) if std::path::Path::new(dir).is_dir() => Some(open_cache(dir)?),
        _ => None,
    };
    let estimate = plan::estimate(&plans, &entries, cache.as_ref());
    let shown_endpoint = curate::text::redact_credentials(&ep.url);
    let run = plan::DryRun {
        mode: llm_mode(args.mode),
        model: &ep.model,
        endpoint: &shown_endpoint,
        records: traces.len(),
        max_requests: args.max_requests,
        max_total_tokens: args.max_total_tokens,
    };
    let mut out = context.printer.stdout();
    writeln!(out, "{}", estimate.json(&run))?;
    out.flush()?;
    writeln!(context.printer.stderr(), "{}", estimate.text(&run))?;
    Ok(())
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
    }
}
