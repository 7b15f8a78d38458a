//! The LLM rewrite mode: the model writes the units itself, in the
//! `<think>unit</think> answer` form, from the original trace. The wording may change, so the
//! rewrite is measured against the original ([`drift`]) and rejected past a limit.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use serde_json::{Value, json};

use crate::llm::chat::{ReplyError, estimate_tokens};

/// Instructions for the rewrite request (part of the cache key, so a change re-asks).
pub(crate) const REWRITE_PROMPT: &str = "You rewrite a reasoning trace into multi-turn form for \
training. Split the reasoning into units: each unit is a contiguous part of the original \
reasoning that ends where the solver reaches a candidate answer to the question (intermediate \
or final). Keep the solver's own words and order; do not add reasoning, do not drop steps. \
After each unit, state the answer it reached. Reply with the units only, in exactly this form \
and nothing else:\n\n<think>\nthe unit's reasoning\n</think>\n\nThe answer is ...\n\n<think>\n\
the next unit's reasoning\n</think>\n\nThe answer is ...\n\nThe last unit's answer is the \
solver's final answer.";

/// One unit as the model wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewrittenUnit {
    pub thinking: String,
    pub answer: String,
}

/// The `/v1/chat/completions` body asking `model` to rewrite `thinking` (and its final answer
/// text, when the trace has one) into units.
pub(crate) fn rewrite_request(
    model: &str,
    question: &str,
    thinking: &str,
    final_text: Option<&str>,
) -> Value {
    let mut user = format!("Question:\n{question}\n\nReasoning:\n{}", thinking.trim());
    if let Some(text) = final_text {
        user.push_str(&format!("\n\nFinal answer:\n{}", text.trim()));
    }
    json!({
        "model": model,
        "temperature": 0,
        "messages": [
            {"role": "system", "content": REWRITE_PROMPT},
            {"role": "user", "content": user},
        ],
    })
}

/// Estimated completion tokens of a rewrite: the thinking again, and an answer line per
/// paragraph at worst.
pub(crate) fn estimate_reply_tokens(thinking: &str, paragraphs: usize) -> u64 {
    estimate_tokens(thinking) + 16 * paragraphs as u64
}

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";

/// The units in a rewrite reply: `<think>...</think> answer` repeated, nothing before the
/// first, every unit with reasoning and an answer. Code fences around it are tolerated.
pub(crate) fn parse_units(content: &str) -> Result<Vec<RewrittenUnit>, ReplyError> {
    let mut rest = content.trim();
    if let Some(inner) = rest.strip_prefix("```") {
        // An opening fence may name a language; the closing one ends the reply.
        let inner = inner.split_once('\n').map_or("", |(_, body)| body);
        rest = inner.trim_end().trim_end_matches("```").trim();
    }
    let mut units = Vec::new();
    while !rest.is_empty() {
        let n = units.len() + 1;
        let Some(body) = rest.strip_prefix(OPEN) else {
            let head: String = rest.chars().take(40).collect();
            return Err(ReplyError::Invalid {
                what: "units",
                detail: format!("expected <think> to open unit {n}, found {head:?}"),
            });
        };
        let close = body.find(CLOSE).ok_or_else(|| ReplyError::Invalid {
            what: "units",
            detail: format!("unit {n} has no </think>"),
        })?;
        let thinking = &body[..close];
        if thinking.contains(OPEN) {
            return Err(ReplyError::Invalid {
                what: "units",
                detail: format!("unit {n} has a nested <think>"),
            });
        }
        let after = &body[close + CLOSE.len()..];
        let answer_end = after.find(OPEN).unwrap_or(after.len());
        let answer = after[..answer_end].trim();
        if thinking.trim().is_empty() {
            return Err(ReplyError::Invalid {
                what: "units",
                detail: format!("unit {n} has no reasoning"),
            });
        }
        if answer.is_empty() {
            return Err(ReplyError::Invalid {
                what: "units",
                detail: format!("unit {n} has no answer"),
            });
        }
        if answer.contains(CLOSE) {
            return Err(ReplyError::Invalid {
                what: "units",
                detail: format!("a stray </think> after unit {n}"),
            });
        }
        units.push(RewrittenUnit {
            thinking: thinking.trim().to_string(),
            answer: answer.to_string(),
        });
        rest = after[answer_end..].trim_start();
    }
    if units.is_empty() {
        return Err(ReplyError::Invalid {
            what: "units",
            detail: "no <think> units".to_string(),
        });
    }
    Ok(units)
}

/// How far the rewritten thinking is from the original, in words: 1 - 2 L / (m + n), where L
/// is the longest common subsequence of the two word sequences of lengths m and n (0: the
/// same words in the same order; 1: nothing in common). Whitespace and the split into units do
/// not count.
pub fn drift(original: &str, rewritten: &[RewrittenUnit]) -> f64 {
    let words = |text: &str| -> Vec<u64> {
        text.split_whitespace()
            .map(|w| {
                let mut hasher = DefaultHasher::new();
                w.hash(&mut hasher);
                hasher.finish()
            })
            .collect()
    };
    let a = words(original);
    let b: Vec<u64> = rewritten.iter().flat_map(|u| words(&u.thinking)).collect();
    if a.is_empty() && b.is_empty() {
        return 0.0;
    }
    1.0 - 2.0 * common_subsequence(&a, &b) as f64 / (a.len() + b.len()) as f64
}

/// Length of the longest common subsequence, in two rows of the dynamic programme.
fn common_subsequence(a: &[u64], b: &[u64]) -> usize {
    let (long, short) = if a.len() >= b.len() { (a, b) } else { (b, a) };
    let mut previous = vec![0u32; short.len() + 1];
    let mut current = vec![0u32; short.len() + 1];
    for x in long {
        for (j, y) in short.iter().enumerate() {
            current[j + 1] = if x == y {
                previous[j] + 1
            } else {
                current[j].max(previous[j + 1])
            };
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[short.len()] as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(thinking: &str, answer: &str) -> RewrittenUnit {
        RewrittenUnit {
            thinking: thinking.to_string(),
            answer: answer.to_string(),
        }
    }

    #[test]
    fn units_parse_or_say_why() {
        let reply = "<think>\n6 * 7 = 42.\n</think>\n\nThe answer is 42.\n\n<think>\nHalf: 21.\n</think>\n\nThe answer is $\\boxed{21}$.";
        assert_eq!(
            parse_units(reply).unwrap(),
            [
                unit("6 * 7 = 42.", "The answer is 42."),
                unit("Half: 21.", "The answer is $\\boxed{21}$.")
            ]
        );
        assert_eq!(
            parse_units(&format!("```text\n{reply}\n```"))
                .unwrap()
                .len(),
            2
        );
        for (bad, why) in [
            ("Sure! <think>a</think> 1", "expected <think>"),
            ("<think>a 1", "no </think>"),
            ("<think>a<think>b</think> 1", "nested"),
            ("<think>a</think>", "no answer"),
            ("<think> </think> 1", "no reasoning"),
            ("<think>a</think> 1 </think>", "stray"),
            ("", "no <think> units"),
        ] {
            match parse_units(bad) {
                Err(ReplyError::Invalid { detail: m, .. }) => {
                    assert!(m.contains(why), "{bad}: {m}")
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn drift_counts_words_kept_in_order() {
        let original = "First add 2 and 3 to get 5.\n\nThen double it: 10.";
        let same = [
            unit("First add 2 and 3 to get 5.", "5"),
            unit("Then double it: 10.", "10"),
        ];
        assert_eq!(drift(original, &same), 0.0);
        // Two of 12 words changed: L = 10, 1 - 20 / 24.
        let edited = [unit(
            "First add 2 and 3 to make 5. Then triple it: 10.",
            "10",
        )];
        assert!((drift(original, &edited) - (1.0 - 20.0 / 24.0)).abs() < 1e-12);
        let other = [unit("Something else entirely.", "x")];
        assert_eq!(drift(original, &other), 1.0);
        assert_eq!(common_subsequence(&[1, 2, 3, 4], &[2, 4, 9]), 2);
    }

    #[test]
    fn request_carries_the_trace() {
        let body = rewrite_request("m", "Q?", "  think  ", Some(" 42 "));
        let user = body["messages"][1]["content"].as_str().unwrap();
        assert_eq!(
            user,
            "Question:\nQ?\n\nReasoning:\nthink\n\nFinal answer:\n42"
        );
        assert_eq!(body["messages"][0]["content"], REWRITE_PROMPT);
    }
}
