//! Long chain-of-thought traces into MinD multi-turn form: `<think>unit</think> answer`
//! repeated, each unit ending in an intermediate answer (Zeng et al. 2025).
//!
//! Rules mode cuts the trace at paragraphs that open with switch or check markers and closes a
//! unit at the first segment that states an answer ([`units`]). Every record is validated: the
//! units must put the thinking back together byte for byte, the final answer must survive, the
//! tags must be well formed, and with a reference the answer can be required to be correct.
//! A record that fails is rejected with a reason, never dropped.

pub mod answer;
pub mod boundaries;
pub mod units;

use std::ops::Range;

use self::answer::{AnswerKind, explicit_answer};
use self::units::{MarkerKind, Markers, UnitOptions, units};

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";

/// Why a record was not rephrased.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reject {
    /// No `</think>` in a trace expected to have one.
    NoThinkTags,
    /// Several `</think>`, or think tags inside the thinking.
    MalformedTags,
    EmptyThinking,
    /// No final answer: nothing after `</think>`, or (plain traces) no answer stated anywhere.
    NoFinalAnswer,
    /// The units do not put the thinking back together (a guard; rules mode cannot cause it).
    ThinkingAltered,
    /// The rendered last answer is not the original final answer.
    AnswerAltered,
    /// `--require-correct` and the final answer differs from the reference.
    Incorrect,
    /// `--require-correct` and the row has no reference.
    NoReference,
}

impl Reject {
    pub fn code(self) -> &'static str {
        match self {
            Reject::NoThinkTags => "no_think_tags",
            Reject::MalformedTags => "malformed_tags",
            Reject::EmptyThinking => "empty_thinking",
            Reject::NoFinalAnswer => "no_final_answer",
            Reject::ThinkingAltered => "thinking_altered",
            Reject::AnswerAltered => "answer_altered",
            Reject::Incorrect => "incorrect",
            Reject::NoReference => "no_reference",
        }
    }
}

#[derive(Debug, Clone)]
pub struct RuleSettings {
    pub markers: Markers,
    pub units: UnitOptions,
    /// Traces are `<think>...</think> answer` (false: plain multi-step solutions).
    pub think_tags: bool,
    pub require_correct: bool,
}

/// One rephrased unit.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderedUnit {
    /// Byte span of the unit in the thinking (plain traces: in the response).
    pub span: Range<usize>,
    /// The unit's thinking, trimmed of the separators around it.
    pub thinking: String,
    /// The answer text closing the unit as rendered.
    pub answer: String,
    /// The answer value found (`None` for a last unit that carries the original final text).
    pub value: Option<String>,
    pub answer_kind: Option<AnswerKind>,
    pub segments: usize,
    pub opened_by: Option<MarkerKind>,
    /// Equivalent to the reference (when there is one).
    pub correct: Option<bool>,
}

impl RenderedUnit {
    /// `<think>\nunit\n</think>\n\nanswer`.
    pub fn render(&self) -> String {
        format!("{OPEN}\n{}\n{CLOSE}\n\n{}", self.thinking, self.answer)
    }
}

/// A rephrased record.
#[derive(Debug, Clone, PartialEq)]
pub struct Rephrased {
    pub units: Vec<RenderedUnit>,
    /// Where the final answer text starts in the response: the units' spans, then the response
    /// from here, rebuild it (less the `<think>` tags).
    pub final_start: usize,
    /// Characters before the first answer in the original trace, and in the rephrased one.
    pub chars_to_first_answer_before: usize,
    pub chars_to_first_answer_after: usize,
    /// 1-based index of the first unit whose answer equals the reference.
    pub first_correct_unit: Option<usize>,
}

impl Rephrased {
    /// All units rendered, one after the other.
    pub fn completion(&self) -> String {
        let parts: Vec<String> = self.units.iter().map(RenderedUnit::render).collect();
        parts.join("\n\n")
    }
}

/// Split an R1-style response into thinking and final answer text.
pub fn split_trace(response: &str) -> Result<(Range<usize>, &str), Reject> {
    let close = response.find(CLOSE).ok_or(Reject::NoThinkTags)?;
    if response[close + CLOSE.len()..].contains(CLOSE) {
        return Err(Reject::MalformedTags);
    }
    let lead = response[..close].len() - response[..close].trim_start().len();
    let start = if response[lead..].starts_with(OPEN) {
        lead + OPEN.len()
    } else {
        0
    };
    if response[start..close].contains(OPEN) {
        return Err(Reject::MalformedTags);
    }
    Ok((start..close, &response[close + CLOSE.len()..]))
}

/// Rephrase one trace in rules mode.
pub fn rephrase_rules(
    response: &str,
    reference: Option<&str>,
    settings: &RuleSettings,
) -> Result<Rephrased, Reject> {
    // The thinking, and the final answer text after it: after `</think>`, or for a plain
    // solution its last paragraph (its conclusion).
    let (thinking_range, final_range) = if settings.think_tags {
        let (range, tail) = split_trace(response)?;
        let close_end = response.len() - tail.len();
        (range, Some(close_end..response.len()))
    } else {
        if response.contains(OPEN) || response.contains(CLOSE) {
            return Err(Reject::MalformedTags);
        }
        let paragraphs = units::paragraphs(response);
        match paragraphs.as_slice() {
            // Blank lines before a single paragraph do not make a second one.
            [.., last] if paragraphs.len() >= 2 && !response[..last.start].trim().is_empty() => {
                (0..last.start, Some(last.start..response.len()))
            }
            _ => (0..response.len(), None),
        }
    };
    let final_text = final_range.clone().map(|r| response[r].trim());
    let thinking = &response[thinking_range.clone()];
    if thinking.trim().is_empty() {
        return Err(Reject::EmptyThinking);
    }
    if settings.require_correct && reference.is_none() {
        return Err(Reject::NoReference);
    }
    let found = units(thinking, &settings.markers, reference, settings.units);
    // The units must cover the thinking exactly, in order.
    let covered = found.first().map(|u| u.span.start) == Some(0)
        && found.last().map(|u| u.span.end) == Some(thinking.len())
        && found.windows(2).all(|w| w[0].span.end == w[1].span.start);
    if !covered {
        return Err(Reject::ThinkingAltered);
    }
    let final_value: Option<String> = match final_text {
        Some("") => return Err(Reject::NoFinalAnswer),
        Some(text) => Some(
            explicit_answer(text)
                .or_else(|| {
                    reference.and_then(|r| answer::implicit_answer(text, &answer::Target::new(r)))
                })
                .map_or_else(|| text.to_string(), |f| f.text),
        ),
        None => {
            let last = found.last().and_then(|u| u.answer.as_ref());
            Some(last.ok_or(Reject::NoFinalAnswer)?.text.clone())
        }
    };
    let target = reference.map(answer::Target::new);
    let correct = |value: &str| target.as_ref().map(|t| t.matches(value));
    if settings.require_correct && final_value.as_deref().and_then(correct) != Some(true) {
        return Err(Reject::Incorrect);
    }
    let count = found.len();
    let rendered: Vec<RenderedUnit> = found
        .into_iter()
        .enumerate()
        .map(|(i, unit)| {
            let last = i + 1 == count;
            let (answer, value, kind) = match (&unit.answer, last, final_text) {
                // The last unit keeps the original final answer text.
                (_, true, Some(text)) => (text.to_string(), final_value.clone(), None),
                (Some(found), _, _) => (
                    format!(
                        "The answer is $\\boxed{{{}}}$.",
                        found.text.trim().trim_matches('$')
                    ),
                    Some(found.text.clone()),
                    Some(found.kind),
                ),
                (None, _, _) => {
                    unreachable!("only a last unit has no answer, and plain traces end in one")
                }
            };
            RenderedUnit {
                thinking: thinking[unit.span.clone()].trim().to_string(),
                correct: value.as_deref().and_then(correct),
                span: (unit.span.start + thinking_range.start)
                    ..(unit.span.end + thinking_range.start),
                answer,
                value,
                answer_kind: kind,
                segments: unit.segments,
                opened_by: unit.opened_by,
            }
        })
        .collect();
    // Validation: the thinking back, byte for byte, and the final answer kept.
    let rebuilt: String = rendered.iter().map(|u| &response[u.span.clone()]).collect();
    if rebuilt != thinking {
        return Err(Reject::ThinkingAltered);
    }
    if let Some(text) = final_text
        && rendered.last().map(|u| u.answer.as_str()) != Some(text)
    {
        return Err(Reject::AnswerAltered);
    }
    if rendered
        .iter()
        .any(|u| u.thinking.contains(OPEN) || u.thinking.contains(CLOSE))
    {
        return Err(Reject::MalformedTags);
    }
    // Reasoning characters before the first answer: all of the thinking in the original, the
    // first unit's in the rephrased trace (tags and separators not counted).
    let before = thinking.trim().chars().count();
    let after = rendered[0].thinking.chars().count();
    Ok(Rephrased {
        final_start: final_range.map_or(response.len(), |r| r.start),
        first_correct_unit: rendered
            .iter()
            .position(|u| u.correct == Some(true))
            .map(|i| i + 1),
        chars_to_first_answer_before: before,
        chars_to_first_answer_after: after,
        units: rendered,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(think_tags: bool) -> RuleSettings {
        RuleSettings {
            markers: Markers::bundled(),
            units: UnitOptions::default(),
            think_tags,
            require_correct: false,
        }
    }

    const R1: &str = "<think>\nFirst, 6 * 7 = 42, so the answer is 42.\n\n\
Wait, the question asks for half of it.\n\nHalf of 42 is 21. So the answer is \\boxed{21}.\n\n\
Let me verify: 21 * 2 = 42. Correct.\n</think>\n\nThe answer is $\\boxed{21}$.";

    #[test]
    fn r1_trace_becomes_units_that_rebuild_it() {
        // Without a reference: two units (42, then 21; the check joins the last).
        let out = rephrase_rules(R1, None, &settings(true)).unwrap();
        assert_eq!(out.units.len(), 2);
        assert_eq!(out.units[0].answer, "The answer is $\\boxed{42}$.");
        assert_eq!(out.units[1].answer, "The answer is $\\boxed{21}$.");
        assert_eq!(out.units[1].correct, None);
        // With one, the verification's "21 * 2" is an implicit conclusion: a third unit, which
        // as the last carries the original final answer text.
        let out = rephrase_rules(R1, Some("21"), &settings(true)).unwrap();
        assert_eq!(out.units.len(), 3);
        assert_eq!(out.units[0].correct, Some(false));
        assert_eq!(out.units[1].correct, Some(true));
        assert_eq!(out.units[2].answer, "The answer is $\\boxed{21}$.");
        assert_eq!(out.first_correct_unit, Some(2));
        let (range, _) = split_trace(R1).unwrap();
        let rebuilt: String = out.units.iter().map(|u| &R1[u.span.clone()]).collect();
        assert_eq!(rebuilt, &R1[range]);
        let completion = out.completion();
        assert!(completion.starts_with("<think>\nFirst, 6 * 7 = 42"));
        assert_eq!(completion.matches("<think>").count(), 3);
        assert!(out.chars_to_first_answer_after < out.chars_to_first_answer_before);
    }

    #[test]
    fn rejects_name_their_reason() {
        let s = settings(true);
        assert_eq!(
            rephrase_rules("no tags here", None, &s),
            Err(Reject::NoThinkTags)
        );
        assert_eq!(
            rephrase_rules("<think>a</think>b</think>", None, &s),
            Err(Reject::MalformedTags)
        );
        assert_eq!(
            rephrase_rules("<think> <think>x</think> y", None, &s),
            Err(Reject::MalformedTags)
        );
        assert_eq!(
            rephrase_rules("<think>  </think> 5", None, &s),
            Err(Reject::EmptyThinking)
        );
        assert_eq!(
            rephrase_rules("<think>x = 5</think>  ", None, &s),
            Err(Reject::NoFinalAnswer)
        );
        let strict = RuleSettings {
            require_correct: true,
            ..settings(true)
        };
        assert_eq!(
            rephrase_rules(R1, Some("20"), &strict),
            Err(Reject::Incorrect)
        );
        assert_eq!(rephrase_rules(R1, None, &strict), Err(Reject::NoReference));
        assert!(rephrase_rules(R1, Some("21"), &strict).is_ok());
        let plain = settings(false);
        assert_eq!(
            rephrase_rules("We compute things.", None, &plain),
            Err(Reject::NoFinalAnswer)
        );
        // Leading blank lines: still one paragraph, answered in itself.
        let out = rephrase_rules("\n\nSo the answer is 3.", None, &plain).unwrap();
        assert_eq!(out.units[0].answer, "The answer is $\\boxed{3}$.");
    }

    #[test]
    fn plain_solutions_end_in_their_own_answer() {
        let text = "C(10, 5) = 252.\n\nSo, there are 252 such strings. The answer is 252.";
        let out = rephrase_rules(text, Some("252"), &settings(false)).unwrap();
        // The last paragraph is the solution's conclusion: the final answer text, kept as is.
        assert_eq!(out.units.len(), 1);
        assert_eq!(out.units[0].thinking, "C(10, 5) = 252.");
        assert_eq!(
            out.units[0].answer,
            "So, there are 252 such strings. The answer is 252."
        );
        assert_eq!(out.units[0].correct, Some(true));
        assert_eq!(&text[out.final_start..], out.units[0].answer);
    }
}
