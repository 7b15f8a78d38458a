//! A blocking client for OpenAI-compatible `/v1/chat/completions` endpoints (vLLM, llama.cpp
//! server, Ollama, hosted APIs), with the retry policy and budgets a batch job needs.
//!
//! Retried: 408, 409, 429 and 5xx replies and connection errors (timeouts included), with
//! jittered exponential backoff, or after the server's `Retry-After` when it sends one.
//! Refused for one record (400, 413, 422: a prompt too long, say): the caller rejects that
//! record. Anything else (401, 404, retries used up) means the endpoint cannot serve the run.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::chat::reported_usage;
use crate::rng::unit_interval;

/// First backoff, doubled per retry up to [`MAX_BACKOFF`], then scaled by a jitter in
/// [0.5, 1).
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A `Retry-After` longer than this is cut to it.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
/// Replies larger than this are an error rather than memory exhausted.
const MAX_REPLY_BYTES: u64 = 64 << 20;

/// The chat-completions URL for a base URL as OpenAI clients take it: `http://host:8000/v1`
/// gets `/chat/completions`; a bare `http://host:8000` gets `/v1/chat/completions`; a URL that
/// already ends in `/chat/completions` is used as it is.
pub fn chat_endpoint(base_url: &str) -> Result<String, String> {
    let trimmed = base_url.trim().trim_end_matches('/');
    let rest = trimmed
        .strip_prefix("http://")
        .or_else(|| trimmed.strip_prefix("https://"))
        .ok_or_else(|| format!("{base_url}: expected an http:// or https:// URL"))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(format!("{base_url}: no host"));
    }
    Ok(if trimmed.ends_with("/chat/completions") {
        trimmed.to_string()
    } else if !rest.contains('/') {
        format!("{trimmed}/v1/chat/completions")
    } else {
        format!("{trimmed}/chat/completions")
    })
}

#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// The full chat-completions URL ([`chat_endpoint`]).
    pub endpoint: String,
    /// Sent as `Authorization: Bearer KEY` when present.
    pub api_key: Option<String>,
    /// For one whole request, connection to last byte.
    pub timeout: Duration,
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// Seeds the backoff jitter.
    pub seed: u64,
}

/// Which budget does not allow another request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Exhausted {
    /// All `max` requests are sent.
    Requests { max: u64 },
    /// `used` tokens (spent and reserved) plus about `next` for the next request exceed `max`.
    Tokens { max: u64, used: u64, next: u64 },
    /// The cost so far (spent and reserved) plus about `next` for the next request exceeds
    /// `max`, at the prices given.
    Cost { max: f64, used: f64, next: f64 },
}

/// Prices per million tokens, prompt and completion (any currency).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prices {
    pub prompt: f64,
    pub completion: f64,
}

impl Prices {
    /// The cost of a reply's usage.
    pub fn of(self, prompt_tokens: u64, completion_tokens: u64) -> f64 {
        (prompt_tokens as f64 * self.prompt + completion_tokens as f64 * self.completion) / 1e6
    }

    /// The most `tokens` of either kind can cost: what an estimate is reserved at.
    fn at_most(self, tokens: u64) -> f64 {
        tokens as f64 * self.prompt.max(self.completion) / 1e6
    }
}

/// Request, token and cost limits shared by every worker of a run. Each attempt counts as a
/// request; tokens are the server's `usage` (the estimate when it reports none), and an
/// attempt is only sent while its estimate still fits. An estimate's cost is reserved at the
/// higher of the two prices, then settled at the reply's own prompt and completion tokens.
#[derive(Debug, Default)]
pub struct Budget {
    max_requests: Option<u64>,
    max_tokens: Option<u64>,
    cost: Option<(Prices, Option<f64>)>,
    state: Mutex<BudgetState>,
}

#[derive(Debug, Default, Clone, Copy)]
struct BudgetState {
    requests: u64,
    tokens: u64,
    /// Estimates of the attempts in flight.
    reserved: u64,
    cost: f64,
    reserved_cost: f64,
}

impl Budget {
    pub fn new(max_requests: Option<u64>, max_tokens: Option<u64>) -> Budget {
        Budget {
            max_requests,
            max_tokens,
            cost: None,
            state: Mutex::default(),
        }
    }

    /// Count the cost at `prices`, and stop at `max_cost` when given.
    pub fn with_cost(mut self, prices: Prices, max_cost: Option<f64>) -> Budget {
        self.cost = Some((prices, max_cost));
        self
    }

    fn admit(&self, estimate: u64) -> Result<(), CallError> {
        let mut state = self.state.lock().expect("budget lock");
        if let Some(max) = self.max_requests
            && state.requests >= max
        {
            return Err(CallError::BudgetExhausted(Exhausted::Requests { max }));
        }
        if let Some(max) = self.max_tokens
            && state.tokens + state.reserved + estimate > max
        {
            return Err(CallError::BudgetExhausted(Exhausted::Tokens {
                max,
                used: state.tokens + state.reserved,
                next: estimate,
            }));
        }
        let next_cost = self
            .cost
            .map_or(0.0, |(prices, _)| prices.at_most(estimate));
        if let Some((_, Some(max))) = self.cost
            && state.cost + state.reserved_cost + next_cost > max
        {
            return Err(CallError::BudgetExhausted(Exhausted::Cost {
                max,
                used: state.cost + state.reserved_cost,
                next: next_cost,
            }));
        }
        state.requests += 1;
        state.reserved += estimate;
        state.reserved_cost += next_cost;
        Ok(())
    }

    /// Settle an attempt: `usage` is the reply's (prompt, completion) tokens, `None` for an
    /// attempt that used none; a reply without usage is charged its estimate.
    fn settle(&self, estimate: u64, usage: Option<(u64, u64)>) {
        let mut state = self.state.lock().expect("budget lock");
        state.reserved -= estimate;
        if let Some((prices, _)) = self.cost {
            state.reserved_cost = (state.reserved_cost - prices.at_most(estimate)).max(0.0);
            state.cost += match usage {
                Some((prompt, completion)) => prices.of(prompt, completion),
                None => 0.0,
            };
        }
        state.tokens += usage.map_or(0, |(prompt, completion)| prompt + completion);
    }

    /// Requests sent and tokens used so far.
    pub fn used(&self) -> (u64, u64) {
        let state = self.state.lock().expect("budget lock");
        (state.requests, state.tokens)
    }

    /// The cost so far, when prices were given.
    pub fn cost(&self) -> Option<f64> {
        let state = self.state.lock().expect("budget lock");
        self.cost.map(|_| state.cost)
    }
}

/// Why a completion was not had.
#[derive(Debug, Clone, PartialEq)]
pub enum CallError {
    /// The endpoint refused this request (400, 413, 422); other records may still succeed.
    Refused { status: u16, message: String },
    /// The endpoint cannot serve the run: not retryable, or retries used up.
    Failed(String),
    /// A budget does not allow another request.
    BudgetExhausted(Exhausted),
    /// The caller asked to stop (Ctrl-C, or a failure elsewhere).
    Stopped,
}

/// A successful reply.
#[derive(Debug, Clone)]
pub struct Completion {
    pub body: String,
    /// Tokens charged to the budget for it.
    pub tokens: u64,
}

pub struct ChatClient {
    agent: ureq::Agent,
    settings: ClientSettings,
    retries: AtomicU64,
    backoffs: AtomicU64,
    /// The model a reply named instead of the one asked for, the first time one did.
    other_model: Mutex<Option<String>>,
}

/// What one attempt got back.
enum Attempt {
    Reply {
        status: u16,
        retry_after: Option<Duration>,
        /// Where a redirect points.
        location: Option<String>,
        body: String,
    },
    /// No reply: connection refused or dropped, timeout, unreadable response.
    Transport(String),
    /// A request that can never be sent (bad URL, TLS set-up).
    Unsendable(String),
}

impl ChatClient {
    pub fn new(settings: ClientSettings) -> ChatClient {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            // A redirect would turn the POST into a GET or drop its body: report it instead.
            .max_redirects(0)
            .max_redirects_will_error(false)
            .timeout_global(Some(settings.timeout))
            .user_agent(format!("curate/{}", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        ChatClient {
            agent,
            settings,
            retries: AtomicU64::new(0),
            backoffs: AtomicU64::new(0),
            other_model: Mutex::new(None),
        }
    }

    /// The model a reply named when it was not the one asked for (servers with one model
    /// answer as it whatever `--model` says), if any reply did.
    pub fn other_model(&self) -> Option<String> {
        self.other_model.lock().expect("not poisoned").clone()
    }

    /// Warn once when a reply names another model than `asked`.
    fn check_model(&self, asked: &Value, reply: &str) {
        let (Some(asked), Ok(reply)) = (asked.as_str(), serde_json::from_str::<Value>(reply))
        else {
            return;
        };
        let Some(served) = reply["model"].as_str() else {
            return;
        };
        // Servers often answer with the path or file a model was loaded from.
        let base = |name: &str| {
            let name = name.rsplit(['/', '\\']).next().unwrap_or(name);
            name.strip_suffix(".gguf").unwrap_or(name).to_lowercase()
        };
        if base(served) == base(asked) {
            return;
        }
        let mut other = self.other_model.lock().expect("not poisoned");
        if other.is_none() {
            tracing::warn!(
                "asked for model {asked:?}, the server answered as {served:?}: check --model"
            );
            *other = Some(served.to_string());
        }
    }

    /// Attempts that were retries (of every call so far).
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// `text` without the API key or URL credentials, for messages that quote a server.
    fn scrub(&self, text: String) -> String {
        let text = crate::text::redact_credentials(&text);
        match &self.settings.api_key {
            Some(key) if key.len() >= 4 => text.replace(key.as_str(), "***"),
            _ => text,
        }
    }

    /// POST `body`, retrying as the policy says. `estimate` is the request's expected token
    /// count, reserved against the budget while it is in flight. `stop` is polled before each
    /// attempt and during backoff.
    pub(crate) fn complete(
        &self,
        body: &Value,
        estimate: u64,
        budget: &Budget,
        stop: &dyn Fn() -> bool,
    ) -> Result<Completion, CallError> {
        let payload = body.to_string();
        let endpoint = &crate::text::redact_credentials(&self.settings.endpoint);
        let mut attempt = 0u32;
        loop {
            if stop() {
                return Err(CallError::Stopped);
            }
            budget.admit(estimate)?;
            let outcome = self.send(&payload);
            let (problem, retry_after) = match outcome {
                Attempt::Reply {
                    status,
                    body: reply,
                    ..
                } if (200..300).contains(&status) => {
                    self.check_model(&body["model"], &reply);
                    let body = reply;
                    // Without usage, the estimate is charged (as prompt tokens).
                    let usage = reported_usage(&body).unwrap_or((estimate, 0));
                    budget.settle(estimate, Some(usage));
                    return Ok(Completion {
                        body,
                        tokens: usage.0 + usage.1,
                    });
                }
                Attempt::Reply {
                    status,
                    retry_after,
                    location,
                    body,
                } => {
                    budget.settle(estimate, None);
                    let message = match location {
                        Some(to) if (300..400).contains(&status) => {
                            format!("redirected to {to}; give the final URL as the base URL")
                        }
                        _ => error_message(&body),
                    };
                    // An error body may echo the request's key back.
                    let message = self.scrub(message);
                    if matches!(status, 400 | 413 | 422) {
                        return Err(CallError::Refused { status, message });
                    }
                    if !retryable(status) {
                        return Err(CallError::Failed(format!(
                            "{endpoint}: HTTP {status}: {message}"
                        )));
                    }
                    (format!("HTTP {status}: {message}"), retry_after)
                }
                Attempt::Transport(message) => {
                    budget.settle(estimate, None);
                    (self.scrub(message), None)
                }
                Attempt::Unsendable(message) => {
                    budget.settle(estimate, None);
                    let message = self.scrub(message);
                    return Err(CallError::Failed(format!("{endpoint}: {message}")));
                }
            };
            if attempt >= self.settings.max_retries {
                let tries = attempt + 1;
                return Err(CallError::Failed(format!(
                    "{endpoint}: {problem} (after {tries} attempt{})",
                    if tries == 1 { "" } else { "s" }
                )));
            }
            let wait = retry_after.unwrap_or_else(|| self.backoff(attempt));
            tracing::info!(
                "{endpoint}: {problem}; retrying in {:.1} s",
                wait.as_secs_f64()
            );
            sleep_unless_stopped(wait, stop)?;
            self.retries.fetch_add(1, Ordering::Relaxed);
            attempt += 1;
        }
    }

    fn send(&self, payload: &str) -> Attempt {
        let mut request = self
            .agent
            .post(&self.settings.endpoint)
            .header("Content-Type", "application/json");
        if let Some(key) = &self.settings.api_key {
            request = request.header("Authorization", format!("Bearer {key}"));
        }
        let mut response = match request.send(payload) {
            Ok(response) => response,
            Err(err) => return classify(err),
        };
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let retry_after =
            header("retry-after").and_then(|v| parse_retry_after(&v, SystemTime::now()));
        let location = header("location");
        match response
            .body_mut()
            .with_config()
            .limit(MAX_REPLY_BYTES)
            .read_to_string()
        {
            Ok(body) => Attempt::Reply {
                status,
                retry_after,
                location,
                body,
            },
            Err(err) => match classify(err) {
                // A 200 whose body did not arrive is as good as no reply.
                Attempt::Unsendable(m) | Attempt::Transport(m) => {
                    Attempt::Transport(format!("reading the reply: {m}"))
                }
                reply => reply,
            },
        }
    }

    /// Exponential backoff with jitter, so workers that failed together do not retry together.
    fn backoff(&self, attempt: u32) -> Duration {
        let stream = self.backoffs.fetch_add(1, Ordering::Relaxed);
        let base = FIRST_BACKOFF
            .saturating_mul(1u32 << attempt.min(16))
            .min(MAX_BACKOFF);
        base.mul_f64(0.5 + 0.5 * unit_interval(self.settings.seed, stream))
    }
}

/// Status codes worth another attempt.
fn retryable(status: u16) -> bool {
    matches!(status, 408 | 409 | 429) || (500..600).contains(&status)
}

fn classify(err: ureq::Error) -> Attempt {
    use ureq::Error as E;
    match err {
        E::BadUri(_) | E::Http(_) | E::InvalidProxyUrl | E::Tls(_) | E::RedirectFailed => {
            Attempt::Unsendable(err.to_string())
        }
        // ureq names the timer that ran out ("timeout: global"); the user set --timeout.
        E::Timeout(_) => Attempt::Transport("no complete reply within --timeout".to_string()),
        other => Attempt::Transport(other.to_string()),
    }
}

/// The server's error message: OpenAI's `{"error": {"message"}}`, a plain `{"error": "..."}`,
/// else the start of the body.
fn error_message(body: &str) -> String {
    if let Ok(value) = serde_json::from_str::<Value>(body) {
        if let Some(m) = value["error"]["message"].as_str() {
            return m.to_string();
        }
        if let Some(m) = value["error"].as_str() {
            return m.to_string();
        }
    }
    let head: String = body.trim().chars().take(200).collect();
    if head.is_empty() {
        "(empty reply)".to_string()
    } else {
        crate::error::one_line(&head)
    }
}

/// Sleep `wait`, in short steps so a stop request is seen promptly.
fn sleep_unless_stopped(wait: Duration, stop: &dyn Fn() -> bool) -> Result<(), CallError> {
    let until = Instant::now() + wait;
    loop {
        if stop() {
            return Err(CallError::Stopped);
        }
        let now = Instant::now();
        if now >= until {
            return Ok(());
        }
        std::thread::sleep((until - now).min(Duration::from_millis(50)));
    }
}

/// `Retry-After` as seconds (`120`, also `1.5`) or an HTTP date, as a wait from `now`; capped
/// at five minutes.
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = match value.parse::<f64>() {
        Ok(seconds) if seconds.is_finite() && seconds >= 0.0 => Duration::from_secs_f64(seconds),
        Ok(_) => return None,
        Err(_) => http_date(value)?
            .duration_since(now)
            .unwrap_or(Duration::ZERO),
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the form HTTP servers send.
fn http_date(value: &str) -> Option<SystemTime> {
    let parts: Vec<&str> = value.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| m == month)? as i64 + 1;
    let day: i64 = day.parse().ok()?;
    let year: i64 = year.parse().ok()?;
    let hms: Vec<i64> = time
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let [h, m, s] = hms.as_slice() else {
        return None;
    };
    // Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let seconds = days * 86_400 + h * 3600 + m * 60 + s;
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_become_chat_endpoints() {
        for (base, endpoint) in [
            (
                "http://localhost:8000/v1",
                "http://localhost:8000/v1/chat/completions",
            ),
            (
                "http://localhost:8000/v1/",
                "http://localhost:8000/v1/chat/completions",
            ),
            (
                "http://localhost:8000",
                "http://localhost:8000/v1/chat/completions",
            ),
            (
                "https://api.example.com/openai/v1",
                "https://api.example.com/openai/v1/chat/completions",
            ),
            (
                "http://h/v1/chat/completions",
                "http://h/v1/chat/completions",
            ),
        ] {
            assert_eq!(chat_endpoint(base).unwrap(), endpoint);
        }
        assert!(chat_endpoint("localhost:8000").is_err());
        assert!(chat_endpoint("http://").is_err());
    }

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after("0.5", now),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sat, 05 Nov 1994 08:49:37 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("86400", now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("-1", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(UNIX_EPOCH));
        assert_eq!(
            http_date("Tue, 29 Feb 2000 12:00:00 GMT"),
            Some(UNIX_EPOCH + Duration::from_secs(951_825_600))
        );
    }

    #[test]
    fn budgets_admit_until_used_up() {
        let budget = Budget::new(Some(2), None);
        assert!(budget.admit(10).is_ok());
        budget.settle(10, Some((5, 2)));
        assert!(budget.admit(10).is_ok());
        assert!(matches!(
            budget.admit(10),
            Err(CallError::BudgetExhausted(Exhausted::Requests { max: 2 }))
        ));
        budget.settle(10, None);
        assert_eq!(budget.used(), (2, 7));
        // Tokens: in-flight estimates count until settled.
        let budget = Budget::new(None, Some(100));
        assert!(budget.admit(60).is_ok());
        assert!(matches!(
            budget.admit(60),
            Err(CallError::BudgetExhausted(Exhausted::Tokens {
                max: 100,
                used: 60,
                next: 60
            }))
        ));
        budget.settle(60, Some((20, 10)));
        assert!(budget.admit(60).is_ok());
        assert!(budget.admit(11).is_err());
        // Cost: an estimate is reserved at the higher price, settled at the reply's own.
        let prices = Prices {
            prompt: 1.0,
            completion: 4.0,
        };
        let budget = Budget::new(None, None).with_cost(prices, Some(0.001));
        assert!(budget.admit(200).is_ok()); // 0.0008 reserved
        assert!(matches!(
            budget.admit(100),
            Err(CallError::BudgetExhausted(Exhausted::Cost { .. }))
        ));
        budget.settle(200, Some((150, 50))); // 0.00035 spent
        assert!((budget.cost().unwrap() - 0.00035).abs() < 1e-15);
        assert!(budget.admit(100).is_ok());
        assert_eq!(Budget::new(None, None).cost(), None);
    }

    /// A client whose endpoint nothing answers (for what needs no server).
    fn offline_client() -> ChatClient {
        ChatClient::new(ClientSettings {
            endpoint: "http://127.0.0.1:9/v1/chat/completions".to_string(),
            api_key: None,
            timeout: Duration::from_secs(1),
            max_retries: 0,
            seed: 0,
        })
    }

    #[test]
    fn a_reply_from_another_model_is_noted_once() {
        let client = offline_client();
        let reply = |model: &str| serde_json::json!({"model": model}).to_string();
        // The same model under its file path, or with another case, is the same model.
        client.check_model(&Value::from("SmolLM2"), &reply("/models/smollm2.gguf"));
        client.check_model(&Value::from("test"), "not json");
        client.check_model(&Value::from("test"), "{}");
        assert_eq!(client.other_model(), None);
        client.check_model(&Value::from("llama-3-8b"), &reply("smollm2.gguf"));
        client.check_model(&Value::from("llama-3-8b"), &reply("qwen"));
        assert_eq!(client.other_model().as_deref(), Some("smollm2.gguf"));
    }

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let client = offline_client();
        for attempt in 0..8 {
            let wait = client.backoff(attempt);
            let base = FIRST_BACKOFF.saturating_mul(1 << attempt).min(MAX_BACKOFF);
            assert!(wait >= base / 2 && wait < base, "{attempt}: {wait:?}");
        }
        assert!(client.backoff(40) < MAX_BACKOFF);
    }
}
