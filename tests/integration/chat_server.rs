//! A chat-completions server for the LLM-mode tests, started inside the test process on a
//! loopback port: plain HTTP/1.1 with keep-alive, speaking the `/v1/chat/completions`
//! protocol as vLLM or llama.cpp's server do.
//!
//! Its "model" is simple and deterministic: for a boundaries request it ends a unit at every
//! paragraph that states an answer ("answer is", `\boxed`), for a rewrite request it writes
//! those units back in `<think>` form. Directives in a question inject trouble, on the first
//! request for that question unless said otherwise: `#429` (with `Retry-After: 0`), `#429-wait`
//! (`Retry-After: 1`), `#500`, `#slow` (replies after 2.5 s), `#drop` (closes the connection
//! without a reply), `#garbage` (every reply's content is prose), `#garbage-once`, `#html` (a
//! non-JSON 200), `#400` (every request refused), `#401` (every request unauthorised),
//! `#drift` and `#wrong-answer` (rewrites that stray). Paths under `/old/` redirect; other
//! paths than `/v1/chat/completions` are 404.
//!
//! For `reveal ask` it is a labeller: asked a row's classes, it names the classes whose names
//! appear in the row's text (or in an image's bytes after the PNG signature), as JSON when
//! `response_format` asks for it, else in prose; asked yes/no for a class, it says whether the
//! class appears, with log-probabilities (0.8 for its answer) when asked for them. Directives
//! in the row: `#say:A+B` (names A and B instead), `#prose` (prose even when JSON is asked
//! for), `#no-logprobs`, and the ones above.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// One request the server received.
#[derive(Debug, Clone)]
pub struct Logged {
    pub path: String,
    pub body: Value,
    pub authorization: Option<String>,
    pub at: Instant,
}

impl Logged {
    /// The question the request is about.
    pub fn question(&self) -> String {
        question_of(&self.body)
    }
}

#[derive(Default)]
struct State {
    log: Vec<Logged>,
    /// Requests seen per question, this one included.
    attempts: HashMap<String, usize>,
}

pub struct ChatServer {
    port: u16,
    state: Arc<Mutex<State>>,
    /// Delay before every reply (to make runs long enough to interrupt).
    delay: Arc<Mutex<Duration>>,
}

impl ChatServer {
    pub fn start() -> ChatServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State::default()));
        let delay = Arc::new(Mutex::new(Duration::ZERO));
        let (s, d) = (state.clone(), delay.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (s, d) = (s.clone(), d.clone());
                std::thread::spawn(move || serve(stream, &s, &d));
            }
        });
        ChatServer { port, state, delay }
    }

    /// The base URL as a user would pass it.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn set_delay(&self, delay: Duration) {
        *self.delay.lock().unwrap() = delay;
    }

    pub fn requests(&self) -> Vec<Logged> {
        self.state.lock().unwrap().log.clone()
    }

    /// Requests received per question.
    pub fn counts(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for logged in self.requests() {
            *counts.entry(logged.question()).or_default() += 1;
        }
        counts
    }
}

fn question_of(body: &Value) -> String {
    let system = body["messages"][0]["content"].as_str().unwrap_or_default();
    if system.starts_with("You label") || system.starts_with("You answer questions") {
        let subject = subject_of(body);
        // A yes/no request is its own question: the row and the class.
        return match quoted_class(&user_text(body)) {
            Some(class) if system.starts_with("You answer") => format!("{subject} ?{class}"),
            _ => subject,
        };
    }
    let user = body["messages"][1]["content"].as_str().unwrap_or_default();
    let rest = user.strip_prefix("Question:\n").unwrap_or(user);
    rest.split("\n\n").next().unwrap_or_default().to_string()
}

/// The user message's text (the text parts of a multi-part content).
fn user_text(body: &Value) -> String {
    let content = &body["messages"][1]["content"];
    match content.as_array() {
        Some(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        None => content.as_str().unwrap_or_default().to_string(),
    }
}

/// What a labelling request is about: the text after `Text:` (its first paragraph), or what an
/// image holds: the bytes after a PNG signature of a data URL, or the URL itself.
fn subject_of(body: &Value) -> String {
    use base64::Engine as _;
    for part in body["messages"][1]["content"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let Some(url) = part["image_url"]["url"].as_str() else {
            continue;
        };
        let Some((head, data)) = url.split_once(";base64,") else {
            return url.to_string();
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data)
            .unwrap_or_default();
        let payload = bytes.get(8..).unwrap_or_default();
        return format!("{head} {}", String::from_utf8_lossy(payload));
    }
    let text = user_text(body);
    let rest = text.strip_prefix("Text:\n").unwrap_or(&text);
    rest.split("\n\n").next().unwrap_or_default().to_string()
}

fn quoted_class(text: &str) -> Option<String> {
    let start = text.find('"')? + 1;
    let end = start + text[start..].find('"')?;
    Some(text[start..end].to_string())
}

/// The classes a labelling request offers (its `Classes:` line).
fn offered_classes(body: &Value) -> Vec<String> {
    user_text(body)
        .lines()
        .find_map(|l| l.strip_prefix("Classes: "))
        .map(|l| l.split(", ").map(str::to_string).collect())
        .unwrap_or_default()
}

/// Whether `class` is a word of `subject`.
fn shows(subject: &str, class: &str) -> bool {
    subject
        .to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .any(|w| w == class.to_lowercase())
}

/// The labeller's reply content (and log-probabilities) for a `reveal ask` request.
fn label_answer(body: &Value, question: &str) -> (String, Option<Value>) {
    let system = body["messages"][0]["content"].as_str().unwrap_or_default();
    let subject = subject_of(body);
    let has = |directive: &str| question.split_whitespace().any(|w| w == directive);
    if system.starts_with("You answer") {
        let class = quoted_class(&user_text(body)).unwrap_or_default();
        let yes = shows(&subject, &class);
        let (chosen, other) = if yes { ("Yes", "No") } else { ("No", "Yes") };
        let logprobs = (body["logprobs"] == true && !has("#no-logprobs")).then(|| {
            json!({"content": [{"token": chosen, "logprob": 0.8f64.ln(), "top_logprobs": [
                {"token": chosen, "logprob": 0.8f64.ln()},
                {"token": other, "logprob": 0.2f64.ln()},
            ]}]})
        });
        return (chosen.to_string(), logprobs);
    }
    let named: Vec<String> = match question
        .split_whitespace()
        .find_map(|w| w.strip_prefix("#say:"))
    {
        Some(said) => said.split('+').map(str::to_string).collect(),
        None => offered_classes(body)
            .into_iter()
            .filter(|c| shows(&subject, c))
            .collect(),
    };
    let content = if has("#garbage") {
        "I am not sure what this is.".to_string()
    } else if body["response_format"]["type"] == "json_object" && !has("#prose") {
        json!({"classes": named}).to_string()
    } else if named.is_empty() {
        "None of them.".to_string()
    } else {
        format!("I can see: {}.", named.join(" and "))
    };
    (content, None)
}

/// Serve requests on one connection until the client closes it.
fn serve(stream: TcpStream, state: &Mutex<State>, delay: &Mutex<Duration>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_string();
        let mut length = 0usize;
        let mut authorization = None;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').unwrap_or((line, ""));
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().unwrap_or(0),
                "authorization" => authorization = Some(value.trim().to_string()),
                _ => {}
            }
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let question = question_of(&body);
        let attempt = {
            let mut state = state.lock().unwrap();
            state.log.push(Logged {
                path: path.clone(),
                body: body.clone(),
                authorization,
                at: Instant::now(),
            });
            let n = state.attempts.entry(question.clone()).or_default();
            *n += 1;
            *n
        };
        std::thread::sleep(*delay.lock().unwrap());
        let Some(reply) = reply(&path, &body, &question, attempt) else {
            // #drop: no reply at all.
            return;
        };
        if writer
            .write_all(&reply)
            .and_then(|()| writer.flush())
            .is_err()
        {
            return;
        }
    }
}

/// The raw HTTP response to a request, or none to drop the connection.
fn reply(path: &str, body: &Value, question: &str, attempt: usize) -> Option<Vec<u8>> {
    let first = attempt == 1;
    let has = |directive: &str| question.split_whitespace().any(|w| w == directive);
    if path.starts_with("/old/") {
        let location = format!("http://{}/v1/chat/completions", "127.0.0.1");
        return Some(response(301, &[("Location", &location)], ""));
    }
    if path != "/v1/chat/completions" {
        return Some(response(
            404,
            &[],
            r#"{"error": {"message": "no such route"}}"#,
        ));
    }
    if has("#401") {
        return Some(response(
            401,
            &[],
            r#"{"error": {"message": "invalid api key"}}"#,
        ));
    }
    if has("#400") {
        return Some(response(
            400,
            &[],
            r#"{"error": {"message": "this model's maximum context length is 8 tokens"}}"#,
        ));
    }
    if first && has("#429") {
        return Some(response(
            429,
            &[("Retry-After", "0")],
            r#"{"error": "slow down"}"#,
        ));
    }
    if first && has("#429-wait") {
        return Some(response(
            429,
            &[("Retry-After", "1")],
            r#"{"error": "slow down"}"#,
        ));
    }
    if first && has("#500") {
        return Some(response(500, &[], "internal error"));
    }
    if first && has("#drop") {
        return None;
    }
    if first && has("#slow") {
        std::thread::sleep(Duration::from_millis(2500));
    }
    if first && has("#html") {
        return Some(response(200, &[], "<html>gateway</html>"));
    }
    let system = body["messages"][0]["content"].as_str().unwrap_or_default();
    let user = body["messages"][1]["content"].as_str().unwrap_or_default();
    let mut logprobs = None;
    let content = if system.starts_with("You label") || system.starts_with("You answer questions") {
        let (content, lp) = label_answer(body, question);
        logprobs = lp;
        content
    } else if has("#garbage") || (first && has("#garbage-once")) {
        "I think the units end at the second paragraph.".to_string()
    } else if system.starts_with("You split") {
        boundaries_answer(user)
    } else {
        rewrite_answer(user, has("#drift"), has("#wrong-answer"))
    };
    // #loop: a model that repeats itself until the token limit, unless asked to be brief.
    let messages = body["messages"].as_array().map_or(0, Vec::len);
    let (content, finish) = if has("#loop") && messages == 2 {
        ("1, 2, 1, 2, 1, 2".repeat(8), "length")
    } else {
        (content, "stop")
    };
    let prompt_tokens = body.to_string().len() / 4;
    let completion_tokens = content.len() / 4;
    let completion = json!({
        "id": format!("chatcmpl-{attempt}"),
        "object": "chat.completion",
        // A server with one model answers as it whatever was asked for.
        "model": if body["model"] == "not-the-served-model" { json!("/models/served.gguf") } else { body["model"].clone() },
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish, "logprobs": logprobs}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens},
    });
    Some(response(200, &[], &completion.to_string()))
}

fn response(status: u16, headers: &[(&str, &str)], body: &str) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        301 => "Moved Permanently",
        401 => "Unauthorized",
        404 => "Not Found",
        429 => "Too Many Requests",
        _ => "Internal Server Error",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(body);
    out.into_bytes()
}

fn states_answer(text: &str) -> bool {
    let lower = text.to_lowercase();
    lower.contains("answer is") || lower.contains("\\boxed")
}

/// The value a paragraph states: boxed content, or what follows "answer is" up to the full stop.
fn stated_value(text: &str) -> Option<String> {
    if let Some(at) = text.rfind("\\boxed{") {
        let rest = &text[at + 7..];
        return rest.find('}').map(|end| rest[..end].to_string());
    }
    let lower = text.to_lowercase();
    let at = lower.rfind("answer is ")?;
    let rest = &text[at + "answer is ".len()..];
    Some(
        rest.trim_end_matches('.')
            .split(". ")
            .next()?
            .trim_end_matches('.')
            .to_string(),
    )
}

/// `{"ends": [...]}`: every numbered paragraph that states an answer, and the last.
fn boundaries_answer(user: &str) -> String {
    let mut paragraphs: Vec<String> = Vec::new();
    for line in user.lines() {
        if let Some(rest) = line.strip_prefix('[')
            && let Some((n, text)) = rest.split_once("] ")
            && n.parse::<usize>() == Ok(paragraphs.len() + 1)
        {
            paragraphs.push(text.to_string());
        } else if let Some(last) = paragraphs.last_mut()
            && !line.is_empty()
        {
            last.push('\n');
            last.push_str(line);
        }
    }
    let count = paragraphs.len();
    let ends: Vec<usize> = paragraphs
        .iter()
        .enumerate()
        .filter(|(i, p)| states_answer(p) || i + 1 == count)
        .map(|(i, _)| i + 1)
        .collect();
    json!({"ends": ends}).to_string()
}

/// The reasoning in units, each closed by the answer it states, the last by the final answer.
fn rewrite_answer(user: &str, drift: bool, wrong: bool) -> String {
    let reasoning = user
        .split_once("Reasoning:\n")
        .map_or("", |(_, r)| r)
        .split("\n\nFinal answer:\n")
        .next()
        .unwrap_or_default();
    let final_value = user
        .split_once("\n\nFinal answer:\n")
        .and_then(|(_, f)| stated_value(f).or_else(|| Some(f.trim().to_string())));
    let mut units: Vec<(Vec<&str>, Option<String>)> = vec![(Vec::new(), None)];
    for paragraph in reasoning.split("\n\n") {
        let last = units.last_mut().unwrap();
        last.0.push(paragraph);
        if states_answer(paragraph) {
            last.1 = stated_value(paragraph);
            units.push((Vec::new(), None));
        }
    }
    if units.last().unwrap().0.is_empty() {
        units.pop();
    } else if units.len() > 1 {
        let tail = units.pop().unwrap();
        units.last_mut().unwrap().0.extend(tail.0);
    }
    let count = units.len();
    let mut out = Vec::new();
    for (i, (paragraphs, value)) in units.into_iter().enumerate() {
        let mut thinking = paragraphs.join("\n\n");
        if drift {
            thinking = "Entirely different words about something else here.".to_string();
        }
        let value = if i + 1 == count {
            if wrong {
                Some("999".to_string())
            } else {
                final_value.clone().or(value)
            }
        } else {
            value
        };
        out.push(format!(
            "<think>\n{thinking}\n</think>\n\nThe answer is {}.",
            value.unwrap_or_else(|| "unknown".to_string())
        ));
    }
    out.join("\n\n")
}
