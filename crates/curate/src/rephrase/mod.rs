//! Long chain-of-thought traces into MinD multi-turn form: `<think>unit</think> answer`
//! repeated, each unit ending in an intermediate answer (Zeng et al. 2025).
//!
//! Three ways to find the units: rules mode cuts the trace at paragraphs that open with switch
//! or check markers ([`units`]); boundaries mode lets an LLM say after which paragraphs units
//! end ([`boundaries`]), so the text is still cut from the original bytes; rewrite mode lets an
//! LLM write the units itself ([`rewrite`]), checked for drift. Every record is validated: the
//! units must put the thinking back together byte for byte (rules, boundaries), the final
//! answer must survive, the tags must be well formed, and with a reference the answer can be
//! required to be correct. A record that fails is rejected with a reason, never dropped.

pub mod answer;
pub mod boundaries;
pub mod conclusion;
pub mod plan;
pub mod records;
pub mod rewrite;
pub mod units;

use std::ops::Range;

use self::answer::{AnswerKind, Target, closing_answer, explicit_answer, implicit_answer};
use self::rewrite::RewrittenUnit;
use self::units::{MarkerKind, Markers, Segment, Unit, UnitOptions, close_units, units};

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
    /// The rendered last answer is not the original final answer (rewrite: the rewritten last
    /// answer is not the original's).
    AnswerAltered,
    /// `--require-correct` and the final answer differs from the reference.
    Incorrect,
    /// `--require-correct` and the row has no reference.
    NoReference,
    /// The LLM's reply could not be used, also after asking again.
    UnusableReply,
    /// The endpoint refused the request for this record (400, 413, 422: too long, say).
    RequestRejected,
    /// Rewrite mode: the rewritten thinking strays too far from the original.
    Drift,
}

impl Reject {
    pub const ALL: [Reject; 11] = [
        Reject::NoThinkTags,
        Reject::MalformedTags,
        Reject::EmptyThinking,
        Reject::NoFinalAnswer,
        Reject::ThinkingAltered,
        Reject::AnswerAltered,
        Reject::Incorrect,
        Reject::NoReference,
        Reject::UnusableReply,
        Reject::RequestRejected,
        Reject::Drift,
    ];

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
            Reject::UnusableReply => "unusable_reply",
            Reject::RequestRejected => "request_rejected",
            Reject::Drift => "drift",
        }
    }
}

/// A reject with what was wrong in words, where there is more to say than the reason.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub reason: Reject,
    pub detail: Option<String>,
}

impl From<crate::llm::Refusal> for Reject {
    fn from(refusal: crate::llm::Refusal) -> Self {
        match refusal {
            crate::llm::Refusal::UnusableReply => Reject::UnusableReply,
            crate::llm::Refusal::RequestRejected => Reject::RequestRejected,
        }
    }
}

impl From<Reject> for Rejection {
    fn from(reason: Reject) -> Self {
        Rejection {
            reason,
            detail: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub markers: Markers,
    pub units: UnitOptions,
    /// Traces are `<think>...</think> answer` (false: plain multi-step solutions).
    pub think_tags: bool,
    pub require_correct: bool,
}

/// One rephrased unit.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderedUnit {
    /// Byte span of the unit in the thinking (plain traces: in the response); none for
    /// rewritten units.
    pub span: Option<Range<usize>>,
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
    /// Rewrite mode: how far the rewritten thinking is from the original (0 = same words).
    pub drift: Option<f64>,
}

impl Rephrased {
    /// All units rendered, one after the other.
    pub fn completion(&self) -> String {
        let parts: Vec<String> = self.units.iter().map(RenderedUnit::render).collect();
        parts.join("\n\n")
    }
}

/// Split an R1-style response into thinking and final answer text.
pub(crate) fn split_trace(response: &str) -> Result<(Range<usize>, &str), Reject> {
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

/// Where the thinking and the final answer text are in a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TraceParts {
    pub thinking: Range<usize>,
    /// After `</think>`, or for a plain solution its last paragraph (its conclusion); none for
    /// a plain solution of one paragraph.
    pub final_text: Option<Range<usize>>,
}

/// The parts of a response, or why it cannot be rephrased at all. The checks every mode
/// makes before looking for units (the LLM modes before asking anything).
pub(crate) fn trace_parts(
    response: &str,
    reference: Option<&str>,
    settings: &Settings,
) -> Result<TraceParts, Reject> {
    let parts = if settings.think_tags {
        let (range, tail) = split_trace(response)?;
        let close_end = response.len() - tail.len();
        TraceParts {
            thinking: range,
            final_text: Some(close_end..response.len()),
        }
    } else {
        if response.contains(OPEN) || response.contains(CLOSE) {
            return Err(Reject::MalformedTags);
        }
        let paragraphs = units::paragraphs(response);
        match paragraphs.as_slice() {
            // Blank lines before a single paragraph do not make a second one.
            [.., last] if paragraphs.len() >= 2 && !response[..last.start].trim().is_empty() => {
                TraceParts {
                    thinking: 0..last.start,
                    final_text: Some(last.start..response.len()),
                }
            }
            _ => TraceParts {
                thinking: 0..response.len(),
                final_text: None,
            },
        }
    };
    if response[parts.thinking.clone()].trim().is_empty() {
        return Err(Reject::EmptyThinking);
    }
    if settings.require_correct && reference.is_none() {
        return Err(Reject::NoReference);
    }
    if let Some(range) = &parts.final_text
        && response[range.clone()].trim().is_empty()
    {
        return Err(Reject::NoFinalAnswer);
    }
    Ok(parts)
}

/// Rephrase one trace in rules mode.
pub fn rephrase_rules(
    response: &str,
    reference: Option<&str>,
    settings: &Settings,
) -> Result<Rephrased, Rejection> {
    let parts = trace_parts(response, reference, settings)?;
    let thinking = &response[parts.thinking.clone()];
    let found = units(thinking, &settings.markers, reference, settings.units);
    assemble(response, &parts, found, reference, settings)
}

/// Rephrase one trace at the unit ends an LLM gave (0-based paragraph indices of the
/// thinking, checked by [`boundaries::parse_ends`]). Each proposed unit is a segment: one
/// without an answer candidate joins the next, as in rules mode, so every unit still ends in
/// an answer.
pub(crate) fn rephrase_at_ends(
    response: &str,
    reference: Option<&str>,
    settings: &Settings,
    ends: &[usize],
) -> Result<Rephrased, Rejection> {
    let parts = trace_parts(response, reference, settings)?;
    let thinking = &response[parts.thinking.clone()];
    let paragraphs = units::paragraphs(thinking);
    if ends.last().is_none_or(|&last| last + 1 != paragraphs.len()) {
        return Err(Reject::ThinkingAltered.into());
    }
    let segments = boundaries::unit_spans(&paragraphs, ends)
        .into_iter()
        .map(|span| Segment {
            opened_by: settings.markers.opening(&thinking[span.clone()]),
            span,
        })
        .collect();
    let found = close_units(thinking, segments, reference, settings.units);
    assemble(response, &parts, found, reference, settings)
}

/// The final answer value of a trace: stated in its final text (else the text itself), or for
/// a plain one-paragraph solution, the answer it ends with; if it states none, why.
fn final_value(
    final_text: Option<&str>,
    last_answer: Option<&str>,
    reference: Option<&Target>,
    thinking: &str,
) -> Result<String, Rejection> {
    match final_text {
        Some(text) => {
            Ok(closing_answer(text, reference).map_or_else(|| text.to_string(), |f| f.text))
        }
        None => last_answer.map(str::to_string).ok_or_else(|| Rejection {
            reason: Reject::NoFinalAnswer,
            detail: Some(conclusion::missing_answer_detail(thinking)),
        }),
    }
}

/// The `--require-correct` rejection of a final answer that is not the reference.
fn incorrect(final_value: &str, reference: Option<&str>) -> Rejection {
    Rejection {
        reason: Reject::Incorrect,
        detail: Some(format!(
            "the final answer {final_value:?} is not the reference {:?}",
            reference.unwrap_or_default()
        )),
    }
}

/// An intermediate answer as rendered.
fn boxed_answer(value: &str) -> String {
    format!(
        "The answer is $\\boxed{{{}}}$.",
        value.trim().trim_matches('$')
    )
}

/// Units found in the thinking, validated and rendered.
fn assemble(
    response: &str,
    parts: &TraceParts,
    found: Vec<Unit>,
    reference: Option<&str>,
    settings: &Settings,
) -> Result<Rephrased, Rejection> {
    let thinking = &response[parts.thinking.clone()];
    let final_text = parts.final_text.clone().map(|r| response[r].trim());
    // The units must cover the thinking exactly, in order.
    let covered = found.first().map(|u| u.span.start) == Some(0)
        && found.last().map(|u| u.span.end) == Some(thinking.len())
        && found.windows(2).all(|w| w[0].span.end == w[1].span.start);
    if !covered {
        return Err(Reject::ThinkingAltered.into());
    }
    let target = reference.map(Target::new);
    let last_answer = found
        .last()
        .and_then(|u| u.answer.as_ref())
        .map(|a| a.text.as_str());
    let final_value = final_value(final_text, last_answer, target.as_ref(), thinking)?;
    let correct = |value: &str| target.as_ref().map(|t| t.matches(value));
    if settings.require_correct && correct(&final_value) != Some(true) {
        return Err(incorrect(&final_value, reference));
    }
    let count = found.len();
    let offset = parts.thinking.start;
    let rendered: Vec<RenderedUnit> = found
        .into_iter()
        .enumerate()
        .map(|(i, unit)| {
            let last = i + 1 == count;
            let (answer, value, kind) = match (&unit.answer, last, final_text) {
                // The last unit keeps the original final answer text.
                (_, true, Some(text)) => (text.to_string(), Some(final_value.clone()), None),
                (Some(found), _, _) => (
                    boxed_answer(&found.text),
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
                span: Some((unit.span.start + offset)..(unit.span.end + offset)),
                answer,
                value,
                answer_kind: kind,
                segments: unit.segments,
                opened_by: unit.opened_by,
            }
        })
        .collect();
    // Validation: the thinking back, byte for byte, and the final answer kept.
    let rebuilt: String = rendered
        .iter()
        .filter_map(|u| u.span.clone().map(|span| &response[span]))
        .collect();
    if rebuilt != thinking {
        return Err(Reject::ThinkingAltered.into());
    }
    Ok(finish(rendered, parts, thinking, final_text, None)?)
}

/// The checks every mode ends with, and the record's statistics.
fn finish(
    rendered: Vec<RenderedUnit>,
    parts: &TraceParts,
    thinking: &str,
    final_text: Option<&str>,
    drift: Option<f64>,
) -> Result<Rephrased, Reject> {
    if let Some(text) = final_text
        && rendered.last().map(|u| u.answer.as_str()) != Some(text)
    {
        return Err(Reject::AnswerAltered);
    }
    if rendered.iter().any(|u| {
        [&u.thinking, &u.answer]
            .iter()
            .any(|t| t.contains(OPEN) || t.contains(CLOSE))
    }) {
        return Err(Reject::MalformedTags);
    }
    // Reasoning characters before the first answer: all of the thinking in the original, the
    // first unit's in the rephrased trace (tags and separators not counted).
    let before = thinking.trim().chars().count();
    let after = rendered[0].thinking.chars().count();
    Ok(Rephrased {
        final_start: parts
            .final_text
            .as_ref()
            .map_or(parts.thinking.end, |r| r.start),
        first_correct_unit: rendered
            .iter()
            .position(|u| u.correct == Some(true))
            .map(|i| i + 1),
        chars_to_first_answer_before: before,
        chars_to_first_answer_after: after,
        units: rendered,
        drift,
    })
}

/// How far rewritten thinking may stray from the original ([`rewrite::drift`]), and what
/// names the limit in a rejection's detail (the caller's flag).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DriftLimit<'a> {
    pub max: f64,
    pub name: &'a str,
}

/// Rephrase one trace from units an LLM rewrote (parsed by [`rewrite::parse_units`]). The
/// rewritten thinking may differ from the original, but only by `limit.max`
/// ([`rewrite::drift`]); each unit's answer is taken from what the model wrote, and the last
/// one must state the original final answer, whose text then closes the record.
pub(crate) fn rephrase_rewritten(
    response: &str,
    reference: Option<&str>,
    settings: &Settings,
    rewritten: &[RewrittenUnit],
    limit: DriftLimit,
) -> Result<Rephrased, Rejection> {
    let parts = trace_parts(response, reference, settings)?;
    let thinking = &response[parts.thinking.clone()];
    let final_text = parts.final_text.clone().map(|r| response[r].trim());
    let Some(last) = rewritten.last() else {
        return Err(Reject::UnusableReply.into());
    };
    let drift = rewrite::drift(thinking, rewritten);
    if drift > limit.max {
        return Err(Rejection {
            reason: Reject::Drift,
            detail: Some(format!(
                "the rewritten thinking drifts {drift:.3} from the original ({} {})",
                limit.name, limit.max
            )),
        });
    }
    let target = reference.map(Target::new);
    let stated = |answer: &str| {
        explicit_answer(answer).map_or_else(
            || (answer.trim().to_string(), None),
            |f| (f.text, Some(f.kind)),
        )
    };
    // The original's own final answer: in its final text, else (a plain one-paragraph
    // solution) the answer its thinking states.
    let original_last = final_text
        .is_none()
        .then(|| closing_answer(thinking, target.as_ref()))
        .flatten()
        .map(|f| f.text);
    let final_value = final_value(
        final_text,
        original_last.as_deref(),
        target.as_ref(),
        thinking,
    )?;
    let (last_value, _) = stated(&last.answer);
    let kept = answer::equivalent(&last_value, &final_value)
        || final_text
            .is_some_and(|text| implicit_answer(text, &Target::new(&last_value)).is_some());
    if !kept {
        return Err(Rejection {
            reason: Reject::AnswerAltered,
            detail: Some(format!(
                "the rewrite ends in {last_value:?}, the original in {final_value:?}"
            )),
        });
    }
    let correct = |value: &str| target.as_ref().map(|t| t.matches(value));
    if settings.require_correct && correct(&final_value) != Some(true) {
        return Err(incorrect(&final_value, reference));
    }
    let count = rewritten.len();
    let rendered = rewritten
        .iter()
        .enumerate()
        .map(|(i, unit)| {
            let (value, kind) = stated(&unit.answer);
            let (answer, value, kind) = match final_text {
                Some(text) if i + 1 == count => (text.to_string(), final_value.clone(), None),
                _ => (boxed_answer(&value), value, kind),
            };
            RenderedUnit {
                span: None,
                thinking: unit.thinking.trim().to_string(),
                correct: correct(&value),
                answer,
                value: Some(value),
                answer_kind: kind,
                segments: 1,
                opened_by: settings.markers.opening(&unit.thinking),
            }
        })
        .collect();
    Ok(finish(rendered, &parts, thinking, final_text, Some(drift))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only the reason of a rejection.
    fn reason<T>(outcome: Result<T, Rejection>) -> Result<T, Reject> {
        outcome.map_err(|r| r.reason)
    }

    fn settings(think_tags: bool) -> Settings {
        Settings {
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
        let rebuilt: String = out
            .units
            .iter()
            .map(|u| &R1[u.span.clone().unwrap()])
            .collect();
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
            reason(rephrase_rules("no tags here", None, &s)),
            Err(Reject::NoThinkTags)
        );
        assert_eq!(
            reason(rephrase_rules("<think>a</think>b</think>", None, &s)),
            Err(Reject::MalformedTags)
        );
        assert_eq!(
            reason(rephrase_rules("<think> <think>x</think> y", None, &s)),
            Err(Reject::MalformedTags)
        );
        assert_eq!(
            reason(rephrase_rules("<think>  </think> 5", None, &s)),
            Err(Reject::EmptyThinking)
        );
        assert_eq!(
            reason(rephrase_rules("<think>x = 5</think>  ", None, &s)),
            Err(Reject::NoFinalAnswer)
        );
        let strict = Settings {
            require_correct: true,
            ..settings(true)
        };
        assert_eq!(
            reason(rephrase_rules(R1, Some("20"), &strict)),
            Err(Reject::Incorrect)
        );
        assert_eq!(
            reason(rephrase_rules(R1, None, &strict)),
            Err(Reject::NoReference)
        );
        assert!(rephrase_rules(R1, Some("21"), &strict).is_ok());
        let plain = settings(false);
        assert_eq!(
            reason(rephrase_rules("We compute things.", None, &plain)),
            Err(Reject::NoFinalAnswer)
        );
        // Leading blank lines: still one paragraph, answered in itself.
        let out = rephrase_rules("\n\nSo the answer is 3.", None, &plain).unwrap();
        assert_eq!(out.units[0].answer, "The answer is $\\boxed{3}$.");
    }

    #[test]
    fn llm_ends_are_segments_that_close_at_answers() {
        let s = settings(true);
        let (range, _) = split_trace(R1).unwrap();
        let rebuilt = |out: &Rephrased| -> String {
            out.units
                .iter()
                .map(|u| &R1[u.span.clone().unwrap()])
                .collect()
        };
        // Four paragraphs; units proposed after the second and the fourth.
        let out = rephrase_at_ends(R1, None, &s, &[1, 3]).unwrap();
        assert_eq!(out.units.len(), 2);
        assert!(out.units[0].thinking.ends_with("half of it."));
        assert_eq!(out.units[0].answer, "The answer is $\\boxed{42}$.");
        assert_eq!(rebuilt(&out), &R1[range.clone()]);
        // Every paragraph proposed: the answer-less "Wait" joins the next; with the reference,
        // the verification closes on its implicit 21.
        let out = rephrase_at_ends(R1, Some("21"), &s, &[0, 1, 2, 3]).unwrap();
        assert_eq!(out.units.len(), 3);
        assert!(out.units[1].thinking.starts_with("Wait"));
        assert_eq!(out.units[1].segments, 2);
        assert_eq!(rebuilt(&out), &R1[range]);
        assert_eq!(
            reason(rephrase_at_ends(R1, None, &s, &[1])),
            Err(Reject::ThinkingAltered)
        );
    }

    #[test]
    fn rewrites_keep_the_final_answer_within_the_drift_limit() {
        let s = settings(true);
        let limit = |max: f64| DriftLimit {
            max,
            name: "the limit",
        };
        let unit = |thinking: &str, answer: &str| RewrittenUnit {
            thinking: thinking.to_string(),
            answer: answer.to_string(),
        };
        let close = [
            unit(
                "First, 6 * 7 = 42, so the answer is 42.",
                "The answer is 42.",
            ),
            unit(
                "Wait, the question asks for half of it.\n\nHalf of 42 is 21. So the answer is \\boxed{21}.\n\nLet me verify: 21 * 2 = 42. Correct.",
                "The answer is \\boxed{21}.",
            ),
        ];
        let out = rephrase_rewritten(R1, Some("21"), &s, &close, limit(0.3)).unwrap();
        assert_eq!(out.drift, Some(0.0));
        assert_eq!(out.units[0].span, None);
        assert_eq!(out.units[0].answer, "The answer is $\\boxed{42}$.");
        assert_eq!(out.units[0].correct, Some(false));
        // The last unit closes with the original final answer text.
        assert_eq!(out.units[1].answer, "The answer is $\\boxed{21}$.");
        assert_eq!(out.first_correct_unit, Some(2));
        let loose = [unit("Six sevens, halved.", "The answer is 21.")];
        let err = rephrase_rewritten(R1, None, &s, &loose, limit(0.3)).unwrap_err();
        assert_eq!(err.reason, Reject::Drift);
        assert!(err.detail.unwrap().ends_with("(the limit 0.3)"));
        assert!(rephrase_rewritten(R1, None, &s, &loose, limit(1.0)).is_ok());
        let wrong = [unit("Six sevens, halved.", "The answer is 20.")];
        let err = rephrase_rewritten(R1, None, &s, &wrong, limit(1.0)).unwrap_err();
        assert_eq!(err.reason, Reject::AnswerAltered);
        assert_eq!(
            rephrase_rewritten(R1, None, &s, &[], limit(1.0))
                .unwrap_err()
                .reason,
            Reject::UnusableReply
        );
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
