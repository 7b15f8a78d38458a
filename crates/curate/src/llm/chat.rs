//! The chat-completions protocol as the callers share it: reading a reply, asking again after
//! an unusable one, the content address of a request, and token estimates.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::table::hex;

/// Why a reply could not be used (the request is asked again for these).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyError {
    /// Not a chat-completions response, or no message content.
    NotCompletion(String),
    /// Cut off at the token limit (`finish_reason: length`).
    CutOff,
    /// The content is not the JSON asked for.
    NotJson(String),
    /// The content is not what the caller asked for: `what` names the kind of answer ("unit
    /// ends", "classes"), `detail` what is wrong with it.
    Invalid { what: &'static str, detail: String },
}

impl std::fmt::Display for ReplyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplyError::NotCompletion(m) => write!(f, "not a chat completion: {m}"),
            ReplyError::CutOff => write!(
                f,
                "the reply was cut off at the token limit (finish_reason length)"
            ),
            ReplyError::NotJson(m) => write!(f, "reply is not the JSON asked for: {m}"),
            ReplyError::Invalid { what, detail } => write!(f, "unusable {what}: {detail}"),
        }
    }
}

/// The message content of a chat-completions response body.
pub fn completion_content(body: &str) -> Result<String, ReplyError> {
    let value: Value =
        serde_json::from_str(body).map_err(|e| ReplyError::NotCompletion(e.to_string()))?;
    let choice = &value["choices"][0];
    if choice["finish_reason"] == "length" {
        return Err(ReplyError::CutOff);
    }
    choice["message"]["content"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| ReplyError::NotCompletion("no choices[0].message.content".to_string()))
}

/// Token usage reported by the server, (prompt, completion), if any. A server that reports
/// only `total_tokens` has them all counted as prompt tokens.
pub(crate) fn reported_usage(body: &str) -> Option<(u64, u64)> {
    let value: Value = serde_json::from_str(body).ok()?;
    let usage = &value["usage"];
    match (
        usage["prompt_tokens"].as_u64(),
        usage["completion_tokens"].as_u64(),
    ) {
        (Some(prompt), Some(completion)) => Some((prompt, completion)),
        _ => usage["total_tokens"].as_u64().map(|total| (total, 0)),
    }
}

/// The request again, with the unusable reply and what was wrong with it, so the model can
/// correct itself. A cut-off reply is not quoted (it may be a loop that fills the context):
/// the request asks for a shorter reply and allows twice the tokens, so it is never the same
/// request again. A reply without content is not quoted either.
pub(crate) fn with_repair(body: &Value, content: Option<&str>, problem: &ReplyError) -> Value {
    let mut repaired = body.clone();
    if *problem == ReplyError::CutOff {
        if let Some(bound) = repaired["max_tokens"].as_u64() {
            repaired["max_tokens"] = bound.saturating_mul(2).into();
        }
        if let Some(messages) = repaired["messages"].as_array_mut() {
            messages.push(json!({
                "role": "user",
                "content": "Your last reply was cut off at the token limit before it was \
                            complete. Reply again with only what was asked for, in exactly \
                            the format asked for, as briefly as it allows.",
            }));
        }
        return repaired;
    }
    if let (Some(content), Some(messages)) = (content, repaired["messages"].as_array_mut()) {
        messages.push(json!({"role": "assistant", "content": content}));
        messages.push(json!({
            "role": "user",
            "content": format!(
                "That reply cannot be used ({problem}). Reply again in exactly the format \
                 asked for, and nothing else."
            ),
        }));
    }
    repaired
}

/// The cache address of a request: SHA-256 of the endpoint and the exact body.
pub fn cache_key(endpoint: &str, body: &Value) -> String {
    let mut hasher = Sha256::new();
    hasher.update(endpoint.as_bytes());
    hasher.update([0u8]);
    hasher.update(body.to_string().as_bytes());
    hex(&hasher.finalize())
}

/// A rough token count for budgets and `--dry-run` before a server reports usage: one token
/// per four bytes, rounded up.
pub fn estimate_tokens(text: &str) -> u64 {
    (text.len() as u64).div_ceil(4)
}

/// What an image part is counted as before a server reports usage: LLaVA-1.5's 576 patches
/// (other models take more or fewer; the server's count replaces the estimate once known).
pub const IMAGE_TOKENS: u64 = 576;

/// Estimated prompt tokens of a request: its messages' text and images, and a few tokens of
/// framing each.
pub(crate) fn estimate_prompt_tokens(body: &Value) -> u64 {
    let content_tokens = |content: &Value| match content {
        Value::String(text) => estimate_tokens(text),
        Value::Array(parts) => parts
            .iter()
            .map(|part| match part["type"].as_str() {
                Some("text") => part["text"].as_str().map_or(0, estimate_tokens),
                Some("image_url") => IMAGE_TOKENS,
                _ => 0,
            })
            .sum(),
        _ => 0,
    };
    body["messages"].as_array().map_or(0, |messages| {
        messages
            .iter()
            .map(|m| 4 + content_tokens(&m["content"]))
            .sum()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_read_or_say_why() {
        let ok = r#"{"choices":[{"message":{"role":"assistant","content":"{\"ends\": [2, 4]}"}}],"usage":{"total_tokens":57}}"#;
        assert_eq!(completion_content(ok).unwrap(), "{\"ends\": [2, 4]}");
        assert_eq!(reported_usage(ok), Some((57, 0)));
        let split = r#"{"usage":{"prompt_tokens":40,"completion_tokens":17,"total_tokens":57}}"#;
        assert_eq!(reported_usage(split), Some((40, 17)));
        let cut =
            r#"{"choices":[{"message":{"content":"{\"ends\": [2"},"finish_reason":"length"}]}"#;
        assert!(matches!(completion_content(cut), Err(ReplyError::CutOff)));
        // A cut reply is asked again shorter with a larger bound: never the same request.
        let request = json!({"messages": [{"role": "user", "content": "cut"}], "max_tokens": 300});
        let again = with_repair(&request, Some("{\"ends\": [2"), &ReplyError::CutOff);
        assert_ne!(again, request);
        assert_eq!(again["max_tokens"], 600);
        let messages = again["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 2, "the cut reply is not quoted");
        assert!(messages[1]["content"].as_str().unwrap().contains("cut off"));
        for bad in [
            "{}",
            "<html>",
            r#"{"choices":[{"message":{"content":null}}]}"#,
        ] {
            assert!(matches!(
                completion_content(bad),
                Err(ReplyError::NotCompletion(_))
            ));
        }
    }

    #[test]
    fn repair_quotes_the_reply_and_the_problem() {
        let body = json!({"model": "m", "messages": [{"role": "user", "content": "q"}]});
        let problem = ReplyError::NotJson("expected value".to_string());
        let repaired = with_repair(&body, Some("nope"), &problem);
        let messages = repaired["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 3);
        assert_eq!(messages[1]["content"], "nope");
        assert!(
            messages[2]["content"]
                .as_str()
                .unwrap()
                .contains("expected value")
        );
        assert_eq!(with_repair(&body, None, &problem), body);
    }

    #[test]
    fn keys_are_stable_and_estimates_count_messages() {
        let body = json!({"model": "m", "messages": [{"role": "user", "content": "abcde"}]});
        assert_eq!(cache_key("http://x", &body), cache_key("http://x", &body));
        assert_ne!(cache_key("http://x", &body), cache_key("http://y", &body));
        assert_eq!(cache_key("http://x", &body).len(), 64);
        assert_eq!(estimate_tokens("abcde"), 2);
        assert_eq!(estimate_prompt_tokens(&body), 6);
        let with_image = json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "abcde"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        ]}]});
        assert_eq!(estimate_prompt_tokens(&with_image), 6 + IMAGE_TOKENS);
    }
}
