//! The LLM modes' plan: which records need a request (and what it says), which are settled
//! without one, what a dry run would send, and records from the answers.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use super::ask::{Expect, Job, cached_content};
use super::boundaries::{self, boundaries_request, parse_ends};
use super::cache::ReplyCache;
use super::chat::{ReplyError, cache_key, estimate_prompt_tokens};
use super::journal::{Answer, Entry};
use super::records::Trace;
use super::rewrite::{self, parse_units, rewrite_request};
use super::units::paragraphs;
use super::{
    DriftLimit, Reject, Rejection, Rephrased, Settings, rephrase_at_ends, rephrase_rewritten,
    trace_parts,
};
use crate::table::hex;

/// What the model is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LlmMode {
    /// Where the units end, by paragraph; the text stays the trace's own.
    Boundaries,
    /// The thinking rewritten into units.
    Rewrite,
}

impl LlmMode {
    pub fn name(self) -> &'static str {
        match self {
            LlmMode::Boundaries => "llm-boundaries",
            LlmMode::Rewrite => "llm-rewrite",
        }
    }
}

/// Each record is settled without asking (rejected up front, or a one-paragraph thinking
/// that is one unit whatever a model says), or needs a request.
pub enum Plan {
    Settled(Result<Rephrased, Rejection>),
    Ask(Job),
}

/// One plan per trace, requests addressed to `model` at `url` (the cache key includes it),
/// each reply bounded by `max_tokens` (default: [`reply_bound`] of its expected size).
pub fn plan(
    traces: &[Trace],
    settings: &Settings,
    mode: LlmMode,
    (model, url): (&str, &str),
    max_tokens: Option<u64>,
) -> Vec<Plan> {
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
                LlmMode::Boundaries => {
                    if ranges.len() == 1 {
                        return Plan::Settled(rephrase_at_ends(
                            &trace.response,
                            reference,
                            settings,
                            &[0],
                        ));
                    }
                    let texts: Vec<&str> = ranges.iter().map(|r| &thinking[r.clone()]).collect();
                    (
                        boundaries_request(model, &trace.question, &texts),
                        boundaries::estimate_reply_tokens(ranges.len()),
                        Expect::Ends {
                            paragraphs: ranges.len(),
                        },
                    )
                }
                LlmMode::Rewrite => {
                    let final_text = parts.final_text.clone().map(|r| &trace.response[r]);
                    (
                        rewrite_request(model, &trace.question, thinking, final_text),
                        rewrite::estimate_reply_tokens(thinking, ranges.len()),
                        Expect::Units,
                    )
                }
            };
            let mut body = body;
            body["max_tokens"] = max_tokens
                .unwrap_or_else(|| reply_bound(reply_estimate))
                .into();
            Plan::Ask(Job {
                row,
                key: cache_key(url, &body),
                body,
                reply_estimate,
                expect,
            })
        })
        .collect()
}

/// The default `max_tokens` of a request whose reply is expected to take `estimate` tokens:
/// room for twice that, and never under 256, so an honest reply fits and a looping one stops.
pub fn reply_bound(estimate: u64) -> u64 {
    estimate.saturating_mul(2).saturating_add(64).max(256)
}

/// Names the run's requests: the journal is continued only by the same ones.
pub fn fingerprint(mode: LlmMode, plans: &[Plan]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(mode.name().as_bytes());
    for job in jobs(plans) {
        hasher.update(format!("\n{}:{}", job.row, job.key).as_bytes());
    }
    hex(&hasher.finalize())
}

/// The plans that need a request.
pub fn jobs(plans: &[Plan]) -> impl Iterator<Item = &Job> {
    plans.iter().filter_map(|p| match p {
        Plan::Ask(job) => Some(job),
        Plan::Settled(_) => None,
    })
}

/// Every trace's outcome: settled ones as planned, asked ones from their answers (all must be
/// there).
pub fn settle_all(
    plans: Vec<Plan>,
    traces: &[Trace],
    mut answers: HashMap<usize, Answer>,
    settings: &Settings,
    drift: DriftLimit,
) -> Vec<Result<Rephrased, Rejection>> {
    plans
        .into_iter()
        .zip(traces)
        .map(|(plan, trace)| match plan {
            Plan::Settled(outcome) => outcome,
            Plan::Ask(job) => {
                let answer = answers
                    .remove(&job.row)
                    .expect("every job is answered when no stop was asked");
                settle(trace, &job, answer, settings, drift)
            }
        })
        .collect()
}

/// A record from the model's answer.
fn settle(
    trace: &Trace,
    job: &Job,
    answer: Answer,
    settings: &Settings,
    drift: DriftLimit,
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
            rephrase_at_ends(&trace.response, reference, settings, &ends)
        }
        Expect::Units => {
            let units = parse_units(&content).map_err(unusable)?;
            rephrase_rewritten(&trace.response, reference, settings, &units, drift)
        }
    }
}

/// What a run would send, counted before sending anything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Estimate {
    /// Records that need a request.
    pub asked: u64,
    pub from_journal: u64,
    pub cached: u64,
    pub requests: u64,
    /// Tokens, at 4 bytes a token.
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// Who a dry run would have asked, for its report.
#[derive(Debug, Clone, Copy)]
pub struct DryRun<'a> {
    pub mode: LlmMode,
    pub model: &'a str,
    pub endpoint: &'a str,
    /// Records in the input (asked or not).
    pub records: usize,
    pub max_requests: Option<u64>,
    pub max_total_tokens: Option<u64>,
}

impl Estimate {
    pub fn total_tokens(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }

    /// Whether the run fits both budgets (`None` is no limit).
    pub fn within(&self, max_requests: Option<u64>, max_total_tokens: Option<u64>) -> bool {
        max_requests.is_none_or(|max| self.requests <= max)
            && max_total_tokens.is_none_or(|max| self.total_tokens() <= max)
    }

    /// The dry run's report, one JSON document.
    pub fn json(&self, run: &DryRun) -> serde_json::Value {
        serde_json::json!({
            "mode": run.mode.name(),
            "model": run.model,
            "endpoint": run.endpoint,
            "records": run.records,
            "without_request": run.records as u64 - self.asked,
            "from_journal": self.from_journal,
            "cached": self.cached,
            "requests": self.requests,
            "estimated_prompt_tokens": self.prompt_tokens,
            "estimated_completion_tokens": self.completion_tokens,
            "estimated_total_tokens": self.total_tokens(),
            "max_requests": run.max_requests,
            "max_total_tokens": run.max_total_tokens,
            "within_budget": self.within(run.max_requests, run.max_total_tokens),
        })
    }

    /// The dry run's one-line account for people.
    pub fn text(&self, run: &DryRun) -> String {
        format!(
            "dry run: {} requests of {} records ({} need none, {} in the journal, {} cached), \
             about {} tokens ({} prompt + {} completion, at 4 bytes a token){}; nothing was sent",
            self.requests,
            run.records,
            run.records as u64 - self.asked,
            self.from_journal,
            self.cached,
            self.total_tokens(),
            self.prompt_tokens,
            self.completion_tokens,
            if self.within(run.max_requests, run.max_total_tokens) {
                ""
            } else {
                "; over the budget"
            }
        )
    }
}

/// Count the requests `plans` would send given the journal's `entries` and the `cache`.
pub fn estimate(
    plans: &[Plan],
    entries: &HashMap<usize, Entry>,
    cache: Option<&ReplyCache>,
) -> Estimate {
    let mut estimate = Estimate::default();
    for job in jobs(plans) {
        estimate.asked += 1;
        if entries
            .get(&job.row)
            .is_some_and(|(key, _)| *key == job.key)
        {
            estimate.from_journal += 1;
        } else if cached_content(cache, job).is_some() {
            estimate.cached += 1;
        } else {
            estimate.requests += 1;
            estimate.prompt_tokens += estimate_prompt_tokens(&job.body);
            estimate.completion_tokens += job.reply_estimate;
        }
    }
    estimate
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rephrase::units::{Markers, UnitOptions};
    use serde_json::json;

    const ANY_DRIFT: DriftLimit<'static> = DriftLimit {
        max: 1.0,
        name: "max",
    };

    fn settings() -> Settings {
        Settings {
            markers: Markers::bundled(),
            units: UnitOptions::default(),
            think_tags: true,
            require_correct: false,
        }
    }

    fn trace(response: &str) -> Trace {
        Trace {
            id: json!(0),
            question: "What is 6 * 7?".into(),
            response: response.into(),
            reference: Some("42".into()),
        }
    }

    fn traces() -> Vec<Trace> {
        vec![
            trace("no tags at all"),
            trace("<think>6 * 7 = 42.</think>\n\nThe answer is 42."),
            trace(
                "<think>First, 6 * 6 = 36.\n\nThen add 6: 42.\n\nCheck: 42 / 7 = 6.</think>\n\nThe answer is 42.",
            ),
        ]
    }

    #[test]
    fn only_records_with_several_paragraphs_are_asked() {
        let traces = traces();
        let plans = plan(
            &traces,
            &settings(),
            LlmMode::Boundaries,
            ("m", "http://x/v1/chat"),
            None,
        );
        assert!(matches!(&plans[0], Plan::Settled(Err(r)) if r.reason == Reject::NoThinkTags));
        assert!(matches!(&plans[1], Plan::Settled(Ok(_))));
        let asked: Vec<&Job> = jobs(&plans).collect();
        assert_eq!(asked.len(), 1);
        assert_eq!(asked[0].row, 2);
        assert!(matches!(asked[0].expect, Expect::Ends { paragraphs: 3 }));
        assert_eq!(asked[0].body["model"], "m");
        // Every request bounds its reply.
        let bound = reply_bound(asked[0].reply_estimate);
        assert!(bound >= 256);
        assert_eq!(asked[0].body["max_tokens"], bound);
        let capped = plan(
            &traces,
            &settings(),
            LlmMode::Boundaries,
            ("m", "http://x/v1/chat"),
            Some(40),
        );
        let capped: Vec<&Job> = jobs(&capped).collect();
        assert_eq!(capped[0].body["max_tokens"], 40);
        assert_ne!(capped[0].key, asked[0].key);
        // The journal is continued only by the same requests in the same mode.
        let again = plan(
            &traces,
            &settings(),
            LlmMode::Boundaries,
            ("m", "http://x/v1/chat"),
            None,
        );
        assert_eq!(
            fingerprint(LlmMode::Boundaries, &plans),
            fingerprint(LlmMode::Boundaries, &again)
        );
        let other = plan(
            &traces,
            &settings(),
            LlmMode::Boundaries,
            ("n", "http://x/v1/chat"),
            None,
        );
        assert_ne!(
            fingerprint(LlmMode::Boundaries, &plans),
            fingerprint(LlmMode::Boundaries, &other)
        );
        let rewrite = plan(
            &traces,
            &settings(),
            LlmMode::Rewrite,
            ("m", "http://x/v1/chat"),
            None,
        );
        assert_eq!(jobs(&rewrite).count(), 2);
    }

    #[test]
    fn answers_become_records_and_estimates_count_what_is_left() {
        let traces = traces();
        let plans = plan(
            &traces,
            &settings(),
            LlmMode::Boundaries,
            ("m", "http://x/v1/chat"),
            None,
        );
        let key = jobs(&plans).next().unwrap().key.clone();
        let none = estimate(&plans, &HashMap::new(), None);
        assert_eq!((none.asked, none.requests, none.from_journal), (1, 1, 0));
        assert!(none.prompt_tokens > 0 && none.completion_tokens > 0);
        let journaled = HashMap::from([(2, (key, Answer::Content(String::new())))]);
        let some = estimate(&plans, &journaled, None);
        assert_eq!((some.requests, some.from_journal), (0, 1));
        let run = DryRun {
            mode: LlmMode::Boundaries,
            model: "m",
            endpoint: "http://x/v1/chat",
            records: traces.len(),
            max_requests: Some(0),
            max_total_tokens: None,
        };
        assert!(!none.within(run.max_requests, None) && some.within(run.max_requests, None));
        let report = none.json(&run);
        assert_eq!(report["without_request"], 2);
        assert_eq!(report["within_budget"], false);
        assert_eq!(report["estimated_total_tokens"], none.total_tokens());
        assert!(
            none.text(&run)
                .ends_with("; over the budget; nothing was sent")
        );
        assert!(
            some.text(&run)
                .starts_with("dry run: 0 requests of 3 records (2 need none, 1 in")
        );

        let answers = HashMap::from([(2, Answer::Content("{\"ends\": [2, 3]}".into()))]);
        let outcomes = settle_all(plans, &traces, answers, &settings(), ANY_DRIFT);
        assert_eq!(outcomes.len(), 3);
        assert_eq!(outcomes[2].as_ref().unwrap().units.len(), 2);

        let plans = plan(
            &traces,
            &settings(),
            LlmMode::Boundaries,
            ("m", "http://x/v1/chat"),
            None,
        );
        let garbled = HashMap::from([(2, Answer::Content("no json".into()))]);
        let outcomes = settle_all(plans, &traces, garbled, &settings(), ANY_DRIFT);
        assert_eq!(
            outcomes[2].as_ref().unwrap_err().reason,
            Reject::UnusableReply
        );
    }
}
