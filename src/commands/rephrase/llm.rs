//! The LLM modes of `curate rephrase`: plan one request per record that needs one, answer
//! what the journal and the cache already hold, send the rest from a pool of workers within
//! the budgets, journal every answer as it arrives, then turn the answers into records.

use std::io::Write;

use anyhow::Result;
use serde_json::{Value, json};

use crate::cli::{RephraseArgs, RephraseModeArg};
use crate::commands::Context;
use crate::commands::llm::{self, Endpoint};
use curate::error::usage;
use curate::llm::ask::Job;
use curate::llm::estimate::{DryRun, estimate};
use curate::llm::journal::{Journal, JournalId};
use curate::rephrase::plan::{self, Expect, LlmMode, Plan, jobs};
use curate::rephrase::records::Trace;
use curate::rephrase::{DriftLimit, Rejection, Rephrased, Settings};

fn endpoint(args: &RephraseArgs) -> Result<Endpoint> {
    llm::endpoint(&args.llm, &format!("--mode {}", llm_mode(args.mode).name()))
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
        args.llm.max_tokens,
    )
}

/// Check the LLM flags before anything is read or written.
pub fn check_flags(args: &RephraseArgs) -> Result<()> {
    if args.mode == RephraseModeArg::Rules {
        if let Some(flag) = llm::given_flags(&args.llm).first() {
            return Err(usage(format!(
                "{flag} is for the LLM modes (--mode llm-boundaries or llm-rewrite)"
            )));
        }
        return Ok(());
    }
    endpoint(args)?;
    llm::check_limits(&args.llm)?;
    if !(0.0..=1.0).contains(&args.max_drift) {
        return Err(usage("--max-drift must be between 0 and 1"));
    }
    if args.llm.resume && out_path(args) == "-" {
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

/// The journal's identity for these plans.
fn journal_id<'a>(fingerprint: &'a str) -> JournalId<'a> {
    JournalId {
        command: "rephrase",
        fingerprint,
    }
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
    let fingerprint = plan::fingerprint(llm_mode(args.mode), &plans);
    let (mut journal, entries) = llm::open_journal(
        &args.llm,
        out_path(args),
        journal_id(&fingerprint),
        args.force,
    )?;
    let mut answers =
        llm::journaled_answers(entries, jobs(&plans).map(|j| (j.row, j.key.as_str())));
    let from_journal = answers.len();
    let pending: Vec<&Job<Expect>> = jobs(&plans)
        .filter(|job| !answers.contains_key(&job.row))
        .collect();
    let asked = jobs(&plans).count();
    // Records this run asks about (the journal answered the others).
    let asking = pending.len();
    let run = llm::ask_pending(&args.llm, &ep, &pending, asked, journal.as_mut(), context)?;
    answers.extend(run.answers);

    let drift = DriftLimit {
        max: args.max_drift,
        name: "--max-drift",
    };
    let outcomes = plan::settle_all(plans, traces, answers, settings, drift);
    let report = json!({
        "mode": llm_mode(args.mode).name(),
        "model": ep.model,
        "endpoint": curate::text::redact_credentials(&ep.url),
        "served_model": run.served_model,
        "records_asked": asking,
        "without_request": traces.len() - asked,
        "from_journal": from_journal,
        "cache_hits": run.cache_hits,
        "requests": run.requests,
        "retries": run.retries,
        "repairs": run.repairs,
        "tokens": run.tokens,
        "cost": run.cost,
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

/// `--dry-run`: what the run would send, as JSON on stdout; nothing is sent or written.
pub fn dry_run(
    traces: &[Trace],
    settings: &Settings,
    args: &RephraseArgs,
    context: &Context,
) -> Result<()> {
    let ep = endpoint(args)?;
    let plans = plans(traces, settings, args, &ep);
    let fingerprint = plan::fingerprint(llm_mode(args.mode), &plans);
    let entries = llm::peek_journal(&args.llm, out_path(args), journal_id(&fingerprint))?;
    let cache = llm::existing_cache(&args.llm)?;
    let estimate = estimate(jobs(&plans), &entries, cache.as_ref());
    let shown_endpoint = curate::text::redact_credentials(&ep.url);
    let run = DryRun {
        mode: llm_mode(args.mode).name(),
        model: &ep.model,
        endpoint: &shown_endpoint,
        records: traces.len(),
        max_requests: args.llm.max_requests,
        max_total_tokens: args.llm.max_total_tokens,
        prices: llm::prices(&args.llm)?,
        max_cost: args.llm.max_cost,
    };
    let mut out = context.printer.stdout();
    writeln!(out, "{}", estimate.json(&run))?;
    out.flush()?;
    writeln!(context.printer.stderr(), "{}", estimate.text(&run))?;
    Ok(())
}
