//! The LLM modes' plan: which records need a request (and what it says), which are settled
//! without one, what a dry run would send, and records from the answers.

use std::collections::HashMap;

use super::boundaries::{self, boundaries_request, parse_ends};
use super::records::Trace;
use super::rewrite::{self, parse_units, rewrite_request};
use super::units::paragraphs;
use super::{
    DriftLimit, Reject, Rejection, Rephrased, Settings, rephrase_at_ends, rephrase_rewritten,
    trace_parts,
};
use crate::llm::ask::{Exchange, Job, reply_bound};
use crate::llm::chat::{ReplyError, cache_key, completion_content};
use crate::llm::journal::Answer;

/// What a reply must hold to be usable.
#[derive(Debug, Clone, Copy)]
pub enum Expect {
    /// Unit ends among this many paragraphs.
    Ends { paragraphs: usize },
    /// Rewritten units.
    Units,
}

impl Exchange for Expect {
    fn accept(&self, body: &str) -> Result<String, ReplyError> {
        let content = completion_content(body)?;
        match self {
            Expect::Ends { paragraphs } => parse_ends(&content, *paragraphs).map(drop)?,
            Expect::Units => parse_units(&content).map(drop)?,
        }
        Ok(content)
    }
}

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
    Ask(Job<Expect>),
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

/// Names the run's requests: the journal is continued only by the same ones.
pub fn fingerprint(mode: LlmMode, plans: &[Plan]) -> String {
    crate::llm::ask::fingerprint(mode.name(), jobs(plans))
}

/// The plans that need a request.
pub fn jobs(plans: &[Plan]) -> impl Iterator<Item = &Job<Expect>> {
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
    job: &Job<Expect>,
    answer: Answer,
    settings: &Settings,
    drift: DriftLimit,
) -> Result<Rephrased, Rejection> {
    let content = match answer {
        Answer::Content(content) => content,
        Answer::Rejected { reason, detail } => {
            return Err(Rejection {
                reason: reason.into(),
                detail,
            });
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::estimate::{DryRun, estimate};
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
        let asked: Vec<&Job<Expect>> = jobs(&plans).collect();
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
        let capped: Vec<&Job<Expect>> = jobs(&capped).collect();
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
        let none = estimate(jobs(&plans), &HashMap::new(), None);
        assert_eq!((none.asked, none.requests, none.from_journal), (1, 1, 0));
        assert!(none.prompt_tokens > 0 && none.completion_tokens > 0);
        let journaled = HashMap::from([(2, (key, Answer::Content(String::new())))]);
        let some = estimate(jobs(&plans), &journaled, None);
        assert_eq!((some.requests, some.from_journal), (0, 1));
        let run = DryRun {
            mode: LlmMode::Boundaries.name(),
            model: "m",
            endpoint: "http://x/v1/chat",
            records: traces.len(),
            max_requests: Some(0),
            max_total_tokens: None,
            prices: None,
            max_cost: None,
        };
        assert!(!none.within(&run) && some.within(&run));
        let priced = DryRun {
            max_requests: None,
            prices: Some(crate::llm::client::Prices {
                prompt: 1e6,
                completion: 0.0,
            }),
            max_cost: Some(none.prompt_tokens as f64),
            ..run
        };
        assert!(none.within(&priced));
        assert_eq!(
            none.json(&priced)["estimated_cost"],
            none.prompt_tokens as f64
        );
        let tight = DryRun {
            max_cost: Some(none.prompt_tokens as f64 - 0.5),
            ..priced
        };
        assert!(!none.within(&tight));
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
