//! The LLM boundaries mode: the chat-completions request that asks a model where units end,
//! the checking of its answer, and the units it implies.
//!
//! The model sees numbered paragraphs and answers only with paragraph numbers, so the thinking
//! text cannot drift: units are cut from the original bytes.

use std::ops::Range;

use serde_json::{Value, json};

use crate::llm::chat::{ReplyError, estimate_tokens};

/// Instructions for the boundaries request (part of the cache key, so a change re-asks).
pub(crate) const BOUNDARIES_PROMPT: &str = "You split a step-by-step solution into units for \
multi-turn training. Each unit must end at a paragraph where the solver states an answer \
(intermediate or final) to the question. Reply with JSON only: {\"ends\": [N, ...]}, the \
numbers of the paragraphs that end a unit, increasing, the last one being the last paragraph.";

/// The `/v1/chat/completions` body asking `model` where units end in `paragraphs`.
pub(crate) fn boundaries_request(model: &str, question: &str, paragraphs: &[&str]) -> Value {
    let mut numbered = String::new();
    for (i, p) in paragraphs.iter().enumerate() {
        numbered.push_str(&format!("[{}] {}\n\n", i + 1, p.trim()));
    }
    json!({
        "model": model,
        "temperature": 0,
        "response_format": {"type": "json_object"},
        "messages": [
            {"role": "system", "content": BOUNDARIES_PROMPT},
            {"role": "user", "content": format!("Question:\n{question}\n\nSolution paragraphs:\n\n{numbered}")},
        ],
    })
}

/// Estimated completion tokens of a boundaries reply: at worst every paragraph ends a unit.
pub(crate) fn estimate_reply_tokens(paragraphs: usize) -> u64 {
    let numbers: Vec<String> = (1..=paragraphs).map(|n| n.to_string()).collect();
    estimate_tokens(&format!("{{\"ends\": [{}]}}", numbers.join(", ")))
}

/// Unit ends (0-based paragraph indices) from the model's content, checked against the
/// paragraph count. Code fences around the JSON are tolerated, and so is a reasoning model's
/// own `<think>...</think>` before it (servers without a reasoning parser leave it in).
pub(crate) fn parse_ends(content: &str, paragraphs: usize) -> Result<Vec<usize>, ReplyError> {
    let mut trimmed = content.trim();
    if trimmed.starts_with("<think>")
        && let Some(close) = trimmed.rfind("</think>")
    {
        trimmed = trimmed[close + "</think>".len()..].trim();
    }
    let trimmed = trimmed
        .strip_prefix("```json")
        .or_else(|| trimmed.strip_prefix("```"))
        .map_or(trimmed, |rest| rest.trim_end().trim_end_matches("```"))
        .trim();
    let value: Value =
        serde_json::from_str(trimmed).map_err(|e| ReplyError::NotJson(e.to_string()))?;
    let ends = value["ends"]
        .as_array()
        .ok_or_else(|| ReplyError::NotJson("no \"ends\" array".to_string()))?;
    let mut out = Vec::with_capacity(ends.len());
    for end in ends {
        let n = end.as_u64().ok_or_else(|| ReplyError::Invalid {
            what: "unit ends",
            detail: format!("{end} is not a paragraph number"),
        })? as usize;
        if n == 0 || n > paragraphs {
            return Err(ReplyError::Invalid {
                what: "unit ends",
                detail: format!("paragraph {n} is outside 1..{paragraphs}"),
            });
        }
        if out.last().is_some_and(|&last| n - 1 <= last) {
            return Err(ReplyError::Invalid {
                what: "unit ends",
                detail: "numbers are not increasing".to_string(),
            });
        }
        out.push(n - 1);
    }
    match out.last() {
        Some(&last) if last + 1 == paragraphs => Ok(out),
        _ => Err(ReplyError::Invalid {
            what: "unit ends",
            detail: format!("the last unit must end at paragraph {paragraphs}"),
        }),
    }
}

/// Byte spans of the units the ends imply: each unit runs from the previous end to the end of
/// its last paragraph, so the spans cover the text exactly.
pub(crate) fn unit_spans(paragraphs: &[Range<usize>], ends: &[usize]) -> Vec<Range<usize>> {
    let mut spans = Vec::with_capacity(ends.len());
    let mut start = paragraphs.first().map_or(0, |p| p.start);
    for &end in ends {
        let stop = paragraphs[end].end;
        spans.push(start..stop);
        start = stop;
    }
    spans
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rephrase::units::paragraphs;

    #[test]
    fn request_numbers_paragraphs_and_pins_the_answer_format() {
        let body = boundaries_request("m", "Q?", &["a\n\n", "b"]);
        assert_eq!(body["model"], "m");
        assert_eq!(body["temperature"], 0);
        let user = body["messages"][1]["content"].as_str().unwrap();
        assert!(user.contains("[1] a\n\n[2] b"));
        assert_eq!(body["messages"][0]["content"], BOUNDARIES_PROMPT);
        assert_eq!(estimate_reply_tokens(2), 4);
    }

    #[test]
    fn ends_parse_or_say_why() {
        assert_eq!(parse_ends("{\"ends\": [2, 4]}", 4), Ok(vec![1, 3]));
        assert_eq!(parse_ends("```json\n{\"ends\": [1]}\n```", 1), Ok(vec![0]));
        assert_eq!(
            parse_ends(
                "<think>\nParagraph 2 answers.\n</think>\n\n{\"ends\": [2]}",
                2
            ),
            Ok(vec![1])
        );
        let bad = [
            ("{\"ends\": [3, 2, 4]}", 4),
            ("{\"ends\": [0, 4]}", 4),
            ("{\"ends\": [2]}", 4),
            ("{\"ends\": [5]}", 4),
            ("{\"ends\": [\"2\"]}", 4),
        ];
        for (content, n) in bad {
            assert!(
                matches!(
                    parse_ends(content, n),
                    Err(ReplyError::Invalid {
                        what: "unit ends",
                        ..
                    })
                ),
                "{content}"
            );
        }
        assert!(matches!(
            parse_ends("the ends are 2 and 4", 4),
            Err(ReplyError::NotJson(_))
        ));
        assert!(matches!(
            parse_ends("{\"units\": []}", 4),
            Err(ReplyError::NotJson(_))
        ));
    }

    #[test]
    fn spans_cover_the_text() {
        let text = "a\n\nb\n\nc\n\nd";
        let paras = paragraphs(text);
        let spans = unit_spans(&paras, &[1, 3]);
        let joined: String = spans.iter().map(|s| &text[s.clone()]).collect();
        assert_eq!(joined, text);
        assert_eq!(&text[spans[0].clone()], "a\n\nb\n\n");
    }
}
