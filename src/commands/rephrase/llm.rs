//! The LLM modes of `curate rephrase`: plan one request per record that needs one, answer
//! what the journal and the cache already hold, send the rest from a pool of workers within
//! the budgets, journal every answer as it arrives, then turn the answers into records.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Result, anyhow};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::Trace;
use crate::cli::{RephraseArgs, RephraseModeArg};
use crate::commands::Context;
use curate::error::{Interrupted, usage};
use curate::interrupt;
use curate::rephrase::ask::{Asker, Expect, Job, ask_all, cached_content};
use curate::rephrase::boundaries::{self, boundaries_request, parse_ends};
use curate::rephrase::cache::{CacheError, ReplyCache};
use curate::rephrase::chat::{ReplyError, cache_key, estimate_prompt_tokens};
use curate::rephrase::client::{Budget, ChatClient, ClientSettings, chat_endpoint};
use curate::rephrase::journal::{self, Answer, Journal, JournalConflict};
use curate::rephrase::rewrite::{self, parse_units, rewrite_request};
use curate::rephrase::units::paragraphs;
use curate::rephrase::{
    Reject, Rejection, Rephrased, Settings, rephrase_at_ends, rephrase_rewritten, trace_parts,
};
use curate::table::hex;

/// The API key variable read when `--api-key-env` is not given.
const DEFAULT_KEY_ENV: &str = "OPENAI_API_KEY";

/// Each record is settled without asking (rejected up front, or a one-paragraph thinking
/// that is one unit whatever a model says), or needs a request.
enum Plan {
    Settled(Result<Rephrased, Rejection>),
    Ask(Job),
}

/// The endpoint, model and key of the run, from the flags.
struct Endpoint {
    url: String,
    model: String,
    api_key: Option<String>,
}

fn endpoint(args: &RephraseArgs) -> Result<Endpoint> {
    let mode = mode_name(args.mode);
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

fn mode_name(mode: RephraseModeArg) -> &'static str {
    match mode {
        RephraseModeArg::Rules => "rules",
        RephraseModeArg::LlmBoundaries => "llm-boundaries",
        RephraseModeArg::LlmRewrite => "llm-rewrite",
    }
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
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        return Err(usage("--timeout must be a positive number of seconds"));
    }
    if !(0.0..=1.0).contains(&args.max_drift) {
        return Err(usage("--max-drift must be between 0 and 1"));
    }
    if args.resume && args.out == "-" {
        return Err(usage(
            "--resume needs --out FILE: the journal it continues lives beside the output",
        ));
    }
    Ok(())
}

fn plan(traces: &[Trace], settings: &Settings, mode: RephraseModeArg, ep: &Endpoint) -> Vec<Plan> {
    traces
        .iter()
        .enumerate()
        .map(|(row, trace)| {
            let reference = trace.reference.as_deref();
            let parts = match trace_parts(&trace.response, reference, settings) {
                Ok(parts) => parts,
                Err(reason) => return Plan::Settled(Err(reason.into())),
            };
            let thinking = &trace.response[parts.thinking.clone()];
            let ranges = paragraphs(thinking);
            let (body, reply_estimate, expect) = match mode {
                RephraseModeArg::LlmBoundaries => {
                    if ranges.len() == 1 {
                        return Plan::Settled(
                            rephrase_at_ends(&trace.response, reference, settings, &[0])
                                .map_err(Into::into),
                        );
                    }
                    let texts: Vec<&str> = ranges.iter().map(|r| &thinking[r.clone()]).collect();
                    (
                        boundaries_request(&ep.model, &trace.question, &texts),
                        boundaries::estimate_reply_tokens(ranges.len()),
                        Expect::Ends {
                            paragraphs: ranges.len(),
                        },
                    )
                }
                RephraseModeArg::LlmRewrite => {
                    let final_text = parts.final_text.clone().map(|r| &trace.response[r]);
                    (
                        rewrite_request(&ep.model, &trace.question, thinking, final_text),
                        rewrite::estimate_reply_tokens(thinking, ranges.len()),
                        Expect::Units,
                    )
                }
                RephraseModeArg::Rules => unreachable!("rules mode asks no LLM"),
            };
            Plan::Ask(Job {
                row,
                key: cache_key(&ep.url, &body),
                body,
                reply_estimate,
                expect,
            })
        })
        .collect()
}

/// Names the run's requests: the journal is continued only by the same ones.
fn fingerprint(mode: RephraseModeArg, plans: &[Plan]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(mode_name(mode).as_bytes());
    for job in jobs(plans) {
        hasher.update(format!("\n{}:{}", job.row, job.key).as_bytes());
    }
    hex(&hasher.finalize())
}

fn jobs(plans: &[Plan]) -> impl Iterator<Item = &Job> {
    plans.iter().filter_map(|p| match p {
        Plan::Ask(job) => Some(job),
        Plan::Settled(_) => None,
    })
}

/// A cached reply for `job` that is still usable.
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
    let plans = plan(traces, settings, args.mode, &ep);
    let fingerprint = fingerprint(args.mode, &plans);
    let (mut journal, mut entries) = if args.out == "-" {
        (None, HashMap::new())
    } else {
        let (journal, entries) = Journal::open(
            &journal::path_for(&args.out),
            &fingerprint,
            args.resume,
            args.force,
        )
        .map_err(journal_error)?;
        (Some(journal), entries)
    };
    let mut answers: HashMap<usize, Answer> = HashMap::new();
    for job in jobs(&plans) {
        if let Some((key, answer)) = entries.remove(&job.row)
            && key == job.key
        {
            answers.insert(job.row, answer);
        }
    }
    let from_journal = answers.len();
    let pending: Vec<&Job> = jobs(&plans)
        .filter(|job| !answers.contains_key(&job.row))
        .collect();
    let cache = args.cache_dir.as_deref().map(open_cache).transpose()?;
    let client = ChatClient::new(ClientSettings {
        endpoint: ep.url.clone(),
        api_key: ep.api_key.clone(),
        timeout: Duration::from_secs_f64(args.timeout),
        max_retries: args.max_retries,
        seed: context.seed,
    });
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

    let asked = jobs(&plans).count();
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
    if let Some(message) = collected.fatal.or(collected.halted) {
        return Err(anyhow!("{message}; {kept}"));
    }

    let mut outcomes = Vec::with_capacity(plans.len());
    for (plan, trace) in plans.into_iter().zip(traces) {
        outcomes.push(match plan {
            Plan::Settled(outcome) => outcome,
            Plan::Ask(job) => {
                let answer = answers
                    .remove(&job.row)
                    .expect("every job is answered when no stop was asked");
                settle(trace, &job, answer, settings, args.max_drift)
            }
        });
    }
    let (requests, tokens) = budget.used();
    let report = json!({
        "mode": mode_name(args.mode),
        "model": ep.model,
        "endpoint": ep.url,
        "records_asked": asked,
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

/// A record from the model's answer.
fn settle(
    trace: &Trace,
    job: &Job,
    answer: Answer,
    settings: &Settings,
    max_drift: f64,
) -> Result<Rephrased, Rejection> {
    let content = match answer {
        Answer::Content(content) => content,
        Answer::Rejected { reason, detail } => return Err(Rejection { reason, detail }),
    };
    let unusable = |err: ReplyError| Rejection {
        reason: Reject::UnusableReply,
        detail: Some(err.to_string()),
    };
    let reference = trace.reference.as_deref();
    match job.expect {
        Expect::Ends { paragraphs } => {
            let ends = parse_ends(&content, paragraphs).map_err(unusable)?;
            rephrase_at_ends(&trace.response, reference, settings, &ends).map_err(Into::into)
        }
        Expect::Units => {
            let units = parse_units(&content).map_err(unusable)?;
            rephrase_rewritten(&trace.response, reference, settings, &units, max_drift)
        }
    }
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
    let plans = plan(traces, settings, args.mode, &ep);
    let entries = if args.resume {
        Journal::peek(
            &journal::path_for(&args.out),
            &fingerprint(args.mode, &plans),
        )
        .map_err(journal_error)?
    } else {
        HashMap::new()
    };
    let cache = match &args.cache_dir {
        Some(dir) if std::path::Path::new(dir).is_dir() => Some(open_cache(dir)?),
        _ => None,
    };
    let (mut from_journal, mut cached, mut requests) = (0u64, 0u64, 0u64);
    let (mut prompt, mut completion) = (0u64, 0u64);
    for job in jobs(&plans) {
        if entries
            .get(&job.row)
            .is_some_and(|(key, _)| *key == job.key)
        {
            from_journal += 1;
        } else if cached_content(cache.as_ref(), job).is_some() {
            cached += 1;
        } else {
            requests += 1;
            prompt += estimate_prompt_tokens(&job.body);
            completion += job.reply_estimate;
        }
    }
    let total = prompt + completion;
    let within = args.max_requests.is_none_or(|max| requests <= max)
        && args.max_total_tokens.is_none_or(|max| total <= max);
    let asked = jobs(&plans).count();
    let estimate = json!({
        "mode": mode_name(args.mode),
        "model": ep.model,
        "endpoint": ep.url,
        "records": traces.len(),
        "without_request": traces.len() - asked,
        "from_journal": from_journal,
        "cached": cached,
        "requests": requests,
        "estimated_prompt_tokens": prompt,
        "estimated_completion_tokens": completion,
        "estimated_total_tokens": total,
        "max_requests": args.max_requests,
        "max_total_tokens": args.max_total_tokens,
        "within_budget": within,
    });
    let mut out = context.printer.stdout();
    writeln!(out, "{estimate}")?;
    out.flush()?;
    writeln!(
        context.printer.stderr(),
        "dry run: {requests} requests of {} records ({} need none, {from_journal} in the journal, \
         {cached} cached), about {total} tokens ({prompt} prompt + {completion} completion, \
         at 4 bytes a token){}; nothing was sent",
        traces.len(),
        traces.len() - asked,
        if within { "" } else { "; over the budget" }
    )?;
    Ok(())
}
