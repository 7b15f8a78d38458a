//! The transport-free half of the LLM boundaries mode: the chat-completions request that asks a
//! model where units end, the parsing and checking of its reply, the units it implies, and the
//! content address a reply is cached under.
//!
//! The model sees numbered paragraphs and answers only with paragraph numbers, so the thinking
//! text cannot drift: units are cut from the original bytes.

use std::ops::Range;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Instructions for the boundaries request (part of the cache key, so a change re-asks).
pub const BOUNDARIES_PROMPT: &str = "You split a step-by-step solution into units for \
multi-turn training. Each unit must end at a paragraph where the solver states an answer \
(intermediate or final) to the question. Reply with JSON only: {\"ends\": [N, ...]}, the \
numbers of the paragraphs that end a unit, increasing, the last one being the last paragraph.";

/// The `/v1/chat/completions` body asking `model` where units end in `paragraphs`.
pub fn boundaries_request(model: &str, question: &str, paragraphs: &[&str]) -> Value {
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

/// Why a reply could not be used (the request may be retried for these).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyError {
    /// Not a chat-completions response, or no message content.
    NotCompletion(String),
    /// The content is not the JSON asked for.
    NotJson(String),
    /// Paragraph numbers out of range, not increasing, or not ending at the last paragraph.
    BadEnds(String),
}

impl std::fmt::Display for ReplyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplyError::NotCompletion(m) => write!(f, "not a chat completion: {m}"),
            ReplyError::NotJson(m) => write!(f, "reply is not the JSON asked for: {m}"),
            ReplyError::BadEnds(m) => write!(f, "unusable unit ends: {m}"),
        }
    }
}

/// The message content of a chat-completions response body.
pub fn completion_content(body: &str) -> Result<String, ReplyError> {
    let value: Value =
        serde_json::from_str(body).map_err(|e| ReplyError::NotCompletion(e.to_string()))?;
    value["choices"][0]["message"]["content"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| ReplyError::NotCompletion("no choices[0].message.content".to_string()))
}

/// Token usage reported by the server (`usage.total_tokens`), if any.
pub fn reported_tokens(body: &str) -> Option<u64> {
    let value: Value = serde_json::from_str(body).ok()?;
    value["usage"]["total_tokens"].as_u64()
}

/// Unit ends (0-based paragraph indices) from the model's content, checked against the
/// paragraph count. Code fences around the JSON are tolerated.
pub fn parse_ends(content: &str, paragraphs: usize) -> Result<Vec<usize>, ReplyError> {
    let trimmed = content.trim();
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
        let n = end
            .as_u64()
            .ok_or_else(|| ReplyError::BadEnds(format!("{end} is not a paragraph number")))?
            as usize;
        if n == 0 || n > paragraphs {
            return Err(ReplyError::BadEnds(format!(
                "paragraph {n} is outside 1..{paragraphs}"
            )));
        }
        if out.last().is_some_and(|&last| n - 1 <= last) {
            return Err(ReplyError::BadEnds(
                "numbers are not increasing".to_string(),
            ));
        }
        out.push(n - 1);
    }
    match out.last() {
        Some(&last) if last + 1 == paragraphs => Ok(out),
        _ => Err(ReplyError::BadEnds(format!(
            "the last unit must end at paragraph {paragraphs}"
        ))),
    }
}

/// Byte spans of the units the ends imply: each unit runs from the previous end to the end of
/// its last paragraph, so the spans cover the text exactly.
pub fn unit_spans(paragraphs: &[Range<usize>], ends: &[usize]) -> Vec<Range<usize>> {
    let mut spans = Vec::with_capacity(ends.len());
    let mut start = paragraphs.first().map_or(0, |p| p.start);
    for &end in ends {
        let stop = paragraphs[end].end;
        spans.push(start..stop);
        start = stop;
    }
    spans
}

/// The cache address of a request: SHA-256 of the endpoint and the exact body.
pub fn cache_key(base_url: &str, body: &Value) -> String {
    let mut hasher = Sha256::new();
    hasher.update(base_url.as_bytes());
    hasher.update([0u8]);
    hasher.update(body.to_string().as_bytes());
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A rough token count for budgets and `--dry-run` before a server reports usage: one token
/// per four bytes, rounded up.
pub fn estimate_tokens(text: &str) -> u64 {
    (text.len() as u64).div_ceil(4)
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
    }

    #[test]
    fn replies_parse_or_say_why() {
        let ok = r#"{"choices":[{"message":{"role":"assistant","content":"{\"ends\": [2, 4]}"}}],"usage":{"total_tokens":57}}"#;
        let content = completion_content(ok).unwrap();
        assert_eq!(parse_ends(&content, 4), Ok(vec![1, 3]));
        assert_eq!(reported_tokens(ok), Some(57));
        assert_eq!(parse_ends("```json\n{\"ends\": [1]}\n```", 1), Ok(vec![0]));
        let bad = [
            ("{\"ends\": [3, 2, 4]}", 4),
            ("{\"ends\": [0, 4]}", 4),
            ("{\"ends\": [2]}", 4),
            ("{\"ends\": [5]}", 4),
            ("{\"ends\": [\"2\"]}", 4),
        ];
        for (content, n) in bad {
            assert!(
                matches!(parse_ends(content, n), Err(ReplyError::BadEnds(_))),
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
        assert!(matches!(
            completion_content("{}"),
            Err(ReplyError::NotCompletion(_))
        ));
        assert!(matches!(
            completion_content("<html>"),
            Err(ReplyError::NotCompletion(_))
        ));
    }

    #[test]
    fn spans_cover_the_text_and_keys_are_stable() {
        let text = "a\n\nb\n\nc\n\nd";
        let paras = paragraphs(text);
        let spans = unit_spans(&paras, &[1, 3]);
        let joined: String = spans.iter().map(|s| &text[s.clone()]).collect();
        assert_eq!(joined, text);
        assert_eq!(&text[spans[0].clone()], "a\n\nb\n\n");
        let body = boundaries_request("m", "Q?", &["a"]);
        assert_eq!(cache_key("http://x", &body), cache_key("http://x", &body));
        assert_ne!(cache_key("http://x", &body), cache_key("http://y", &body));
        assert_eq!(cache_key("http://x", &body).len(), 64);
        assert_eq!(estimate_tokens("abcde"), 2);
    }
}
