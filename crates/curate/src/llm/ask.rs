//! Asking an endpoint for a run's replies: one request per job, answered from the reply cache
//! when it can be, checked for what the caller needs and asked again with the problem quoted
//! while unusable; a pool of workers journals every answer as it arrives and
//! stops the run on a fatal answer, a spent budget or Ctrl-C.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

use super::Refusal;
use super::cache::ReplyCache;
use super::chat::{ReplyError, completion_content, estimate_prompt_tokens, with_repair};
use super::client::{Budget, CallError, ChatClient, Completion, Exhausted};
use super::journal::{Answer, Journal};
use crate::interrupt;

/// One kind of job's side of the exchange: what is sent, what a reply must hold to be usable,
/// and what of it the run keeps.
pub trait Exchange: Sync {
    /// The request to send for a planned body (or a re-ask of it). The planned body is what
    /// the cache key and the journal name; a job whose request is large (an image) plans a
    /// stand-in and builds the real request here, just before sending.
    fn body<'a>(&self, planned: &'a Value) -> Result<Cow<'a, Value>, String> {
        Ok(Cow::Borrowed(planned))
    }

    /// What to keep of a reply body (its message content, say), or why it cannot be used.
    fn accept(&self, body: &str) -> Result<String, ReplyError>;
}

/// The request for one record.
pub struct Job<C> {
    /// 0-based job index: the input row, or the request's index where a row needs several.
    pub row: usize,
    /// The cache key of the request.
    pub key: String,
    pub body: Value,
    /// Expected completion tokens.
    pub reply_estimate: u64,
    pub expect: C,
}

/// A usable reply the cache holds for `job`: what the run keeps of it.
pub fn cached_content<C: Exchange>(cache: Option<&ReplyCache>, job: &Job<C>) -> Option<String> {
    let body = cache?.get(&job.key)?;
    job.expect.accept(&body).ok()
}

/// The default `max_tokens` of a request whose reply is expected to take `estimate` tokens:
/// room for twice that, and never under 256, so an honest reply fits and a looping one stops.
pub fn reply_bound(estimate: u64) -> u64 {
    estimate.saturating_mul(2).saturating_add(64).max(256)
}

/// Names a run's requests (`kind` says what the run asks for): a journal is continued only by
/// the same ones.
pub fn fingerprint<'a, C: 'a>(kind: &str, jobs: impl Iterator<Item = &'a Job<C>>) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(kind.as_bytes());
    for job in jobs {
        hasher.update(format!("\n{}:{}", job.row, job.key).as_bytes());
    }
    crate::table::hex(&hasher.finalize())
}

/// What a worker got for one job.
pub enum Asked {
    Answer {
        answer: Answer,
        cached: bool,
        repairs: u64,
    },
    /// The endpoint cannot serve the run.
    Fatal(String),
    /// A budget is used up.
    Halted(Exhausted),
    /// Stopped before an answer (Ctrl-C, or a failure elsewhere).
    Stopped,
}

/// What sends one chat-completions request (the HTTP client, or a stand-in in tests).
pub trait Completer: Sync {
    fn complete(
        &self,
        body: &Value,
        estimate: u64,
        budget: &Budget,
        stop: &dyn Fn() -> bool,
    ) -> Result<Completion, CallError>;
}

impl Completer for ChatClient {
    fn complete(
        &self,
        body: &Value,
        estimate: u64,
        budget: &Budget,
        stop: &dyn Fn() -> bool,
    ) -> Result<Completion, CallError> {
        ChatClient::complete(self, body, estimate, budget, stop)
    }
}

/// Asks for jobs: from the cache, else from the endpoint, asking again with the problem quoted
/// while a reply is unusable (up to `parse_retries` times).
pub struct Asker<'a> {
    pub client: &'a dyn Completer,
    pub budget: &'a Budget,
    pub cache: Option<&'a ReplyCache>,
    pub parse_retries: u32,
    /// Set to stop every worker (a fatal answer, a budget, Ctrl-C).
    pub stop: &'a AtomicBool,
}

impl Asker<'_> {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst) || interrupt::requested()
    }

    pub fn ask<C: Exchange>(&self, job: &Job<C>) -> Asked {
        let mut body = job.body.clone();
        let mut key = job.key.clone();
        let mut repairs = 0;
        let mut sent = false;
        let mut problem: Option<ReplyError> = None;
        for _ in 0..=self.parse_retries {
            // Every request in the chain has its own cache entry: a replay walks the same
            // chain (an unusable reply, the re-ask quoting it, ...) without asking again.
            let reply = match self.cache.and_then(|cache| cache.get(&key)) {
                Some(reply) => reply,
                None => {
                    let estimate = estimate_prompt_tokens(&body) + job.reply_estimate;
                    let request = match job.expect.body(&body) {
                        Ok(request) => request,
                        Err(message) => return Asked::Fatal(message),
                    };
                    let completion =
                        match self
                            .client
                            .complete(&request, estimate, self.budget, &|| self.stopping())
                        {
                            Ok(completion) => completion,
                            Err(CallError::Refused { status, message }) => {
                                let refused = format!("HTTP {status}: {message}");
                                // A refused re-ask (often: the quoted reply overflowed the
                                // context) is not why the record failed; the unusable reply is.
                                let (reason, detail) = match &problem {
                                    Some(problem) => (
                                        Refusal::UnusableReply,
                                        format!("{problem}; asking again was refused: {refused}"),
                                    ),
                                    None => (Refusal::RequestRejected, refused),
                                };
                                return Asked::Answer {
                                    answer: Answer::Rejected {
                                        reason,
                                        detail: Some(detail),
                                    },
                                    cached: false,
                                    repairs,
                                };
                            }
                            Err(CallError::Failed(message)) => return Asked::Fatal(message),
                            Err(CallError::BudgetExhausted(message)) => {
                                return Asked::Halted(message);
                            }
                            Err(CallError::Stopped) => return Asked::Stopped,
                        };
                    sent = true;
                    if let Some(cache) = self.cache
                        && let Err(err) = cache.put(&key, &body, &completion.body)
                    {
                        tracing::warn!("reply cache: {err:#}");
                    }
                    completion.body
                }
            };
            match job.expect.accept(&reply) {
                Ok(content) => {
                    return Asked::Answer {
                        answer: Answer::Content(content),
                        cached: !sent,
                        repairs,
                    };
                }
                Err(err) => {
                    // Ask again from the original request, quoting the reply and its problem.
                    let content = completion_content(&reply).ok();
                    body = with_repair(&job.body, content.as_deref(), &err);
                    key = repair_key(&job.key, &body);
                    problem = Some(err);
                    repairs += 1;
                }
            }
        }
        Asked::Answer {
            answer: Answer::Rejected {
                reason: Refusal::UnusableReply,
                detail: problem.map(|p| p.to_string()),
            },
            cached: !sent,
            // The last unusable reply was not followed by another request.
            repairs: repairs - 1,
        }
    }
}

/// The cache key of a re-ask: the first request's key (which names the endpoint) and the
/// re-ask's own body.
fn repair_key(first: &str, body: &Value) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    hash.update(first.as_bytes());
    hash.update(b"\nrepair\n");
    hash.update(body.to_string().as_bytes());
    format!("{:x}", hash.finalize())
}

/// What the workers brought back.
#[derive(Debug, Default)]
pub struct Collected {
    pub answers: HashMap<usize, Answer>,
    pub cache_hits: u64,
    pub repairs: u64,
    /// Why the endpoint cannot serve the run (or the journal cannot be written).
    pub fatal: Option<String>,
    /// Which budget stopped the run.
    pub halted: Option<Exhausted>,
}

/// Ask for every pending job from `concurrency` workers, journaling each answer as it
/// arrives, until all are answered or something stops the run. Requests in flight when it
/// stops are finished and journaled.
pub fn ask_all<C: Exchange>(
    pending: &[&Job<C>],
    worker: &Asker,
    concurrency: usize,
    mut journal: Option<&mut Journal>,
    on_answer: &mut dyn FnMut(&Collected),
) -> Collected {
    let mut collected = Collected::default();
    let next = AtomicUsize::new(0);
    let keys: HashMap<usize, &str> = pending.iter().map(|j| (j.row, j.key.as_str())).collect();
    std::thread::scope(|scope| {
        let (sender, receiver) = mpsc::channel::<(usize, Asked)>();
        for _ in 0..concurrency.min(pending.len()) {
            let (sender, next) = (sender.clone(), &next);
            scope.spawn(move || {
                while !worker.stopping() {
                    let Some(job) = pending.get(next.fetch_add(1, Ordering::SeqCst)) else {
                        break;
                    };
                    if sender.send((job.row, worker.ask(job))).is_err() {
                        break;
                    }
                }
            });
        }
        drop(sender);
        loop {
            let (row, asked) = match receiver.recv_timeout(Duration::from_millis(100)) {
                Ok(received) => received,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if interrupt::requested() {
                        worker.stop.store(true, Ordering::SeqCst);
                    }
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            match asked {
                Asked::Answer {
                    answer,
                    cached,
                    repairs,
                } => {
                    if let Some(journal) = journal.as_deref_mut()
                        && let Err(err) = journal.append(row, keys[&row], &answer)
                    {
                        worker.stop.store(true, Ordering::SeqCst);
                        collected.fatal.get_or_insert(format!("{err:#}"));
                    }
                    collected.cache_hits += u64::from(cached);
                    collected.repairs += repairs;
                    collected.answers.insert(row, answer);
                    on_answer(&collected);
                }
                Asked::Fatal(message) => {
                    worker.stop.store(true, Ordering::SeqCst);
                    collected.fatal.get_or_insert(message);
                }
                Asked::Halted(message) => {
                    worker.stop.store(true, Ordering::SeqCst);
                    collected.halted.get_or_insert(message);
                }
                Asked::Stopped => {}
            }
        }
    });
    collected
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use serde_json::json;

    use super::*;

    /// Replies in a fixed order, recording every request body.
    struct Scripted {
        replies: Mutex<Vec<Result<String, CallError>>>,
        requests: Mutex<Vec<Value>>,
    }

    impl Scripted {
        fn new(replies: Vec<Result<String, CallError>>) -> Scripted {
            Scripted {
                replies: Mutex::new(replies.into_iter().rev().collect()),
                requests: Mutex::new(Vec::new()),
            }
        }
    }

    impl Completer for Scripted {
        fn complete(
            &self,
            body: &Value,
            _estimate: u64,
            _budget: &Budget,
            _stop: &dyn Fn() -> bool,
        ) -> Result<Completion, CallError> {
            self.requests.lock().unwrap().push(body.clone());
            // Past the script the endpoint is gone (a worker may ask once more before it
            // sees the stop).
            let reply = self.replies.lock().unwrap().pop();
            let reply = reply.unwrap_or_else(|| Err(CallError::Failed("no more replies".into())));
            reply.map(|body| Completion { body, tokens: 10 })
        }
    }

    fn completion(content: &str) -> Result<String, CallError> {
        Ok(
            json!({"choices": [{"message": {"content": content}, "finish_reason": "stop"}]})
                .to_string(),
        )
    }

    /// Usable: JSON with an `ends` array.
    struct Ends;

    impl Exchange for Ends {
        fn accept(&self, body: &str) -> Result<String, ReplyError> {
            let content = completion_content(body)?;
            let value: Value =
                serde_json::from_str(&content).map_err(|e| ReplyError::NotJson(e.to_string()))?;
            if !value["ends"].is_array() {
                return Err(ReplyError::Invalid {
                    what: "unit ends",
                    detail: "no ends".into(),
                });
            }
            Ok(content)
        }
    }

    fn job(row: usize) -> Job<Ends> {
        Job {
            row,
            key: format!("{row:02}").repeat(32),
            body: json!({"messages": [{"role": "user", "content": "cut"}]}),
            reply_estimate: 5,
            expect: Ends,
        }
    }

    fn ask(client: &Scripted, cache: Option<&ReplyCache>, retries: u32, job: &Job<Ends>) -> Asked {
        let budget = Budget::new(None, None);
        let stop = AtomicBool::new(false);
        let asker = Asker {
            client,
            budget: &budget,
            cache,
            parse_retries: retries,
            stop: &stop,
        };
        asker.ask(job)
    }

    #[test]
    fn an_unusable_reply_is_asked_again_with_the_problem_quoted() {
        let client = Scripted::new(vec![completion("sure!"), completion("{\"ends\": [2]}")]);
        let Asked::Answer {
            answer, repairs, ..
        } = ask(&client, None, 2, &job(0))
        else {
            panic!("expected an answer");
        };
        assert_eq!(answer, Answer::Content("{\"ends\": [2]}".into()));
        assert_eq!(repairs, 1);
        let requests = client.requests.lock().unwrap();
        let repaired = requests[1]["messages"].as_array().unwrap();
        assert_eq!(repaired.len(), 3);
        assert_eq!(repaired[1]["content"], "sure!");
    }

    #[test]
    fn replies_that_stay_unusable_or_are_refused_reject_the_record() {
        let client = Scripted::new(vec![completion("no"), completion("still no")]);
        let Asked::Answer {
            answer, repairs, ..
        } = ask(&client, None, 1, &job(0))
        else {
            panic!("expected an answer");
        };
        assert!(matches!(
            answer,
            Answer::Rejected {
                reason: Refusal::UnusableReply,
                ..
            }
        ));
        assert_eq!(repairs, 1);
        let refused = Scripted::new(vec![Err(CallError::Refused {
            status: 400,
            message: "too long".into(),
        })]);
        let Asked::Answer { answer, .. } = ask(&refused, None, 1, &job(0)) else {
            panic!("expected an answer");
        };
        assert_eq!(
            answer,
            Answer::Rejected {
                reason: Refusal::RequestRejected,
                detail: Some("HTTP 400: too long".into())
            }
        );
        let failed = Scripted::new(vec![Err(CallError::Failed("down".into()))]);
        assert!(matches!(ask(&failed, None, 1, &job(0)), Asked::Fatal(m) if m == "down"));
    }

    #[test]
    fn cached_replies_are_used_without_a_request() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ReplyCache::open(dir.path().to_str().unwrap()).unwrap();
        let job = job(3);
        cache
            .put(&job.key, &job.body, &completion("{\"ends\": [2]}").unwrap())
            .unwrap();
        let client = Scripted::new(Vec::new());
        assert!(matches!(
            ask(&client, Some(&cache), 0, &job),
            Asked::Answer { cached: true, .. }
        ));
        assert!(client.requests.lock().unwrap().is_empty());
    }

    #[test]
    fn a_refused_re_ask_reports_the_unusable_reply_behind_it() {
        let client = Scripted::new(vec![
            completion("sure!"),
            Err(CallError::Refused {
                status: 400,
                message: "the context overflowed".into(),
            }),
        ]);
        let Asked::Answer { answer, .. } = ask(&client, None, 2, &job(0)) else {
            panic!("expected an answer");
        };
        let Answer::Rejected { reason, detail } = answer else {
            panic!("expected a reject");
        };
        assert_eq!(reason, Refusal::UnusableReply);
        let detail = detail.unwrap();
        assert!(
            detail.ends_with("; asking again was refused: HTTP 400: the context overflowed"),
            "{detail}"
        );
    }

    #[test]
    fn each_request_of_a_re_ask_chain_is_cached_with_its_own_reply_and_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ReplyCache::open(dir.path().to_str().unwrap()).unwrap();
        let job = job(5);
        let first = Scripted::new(vec![completion("sure!"), completion("{\"ends\": [2]}")]);
        assert!(matches!(
            ask(&first, Some(&cache), 2, &job),
            Asked::Answer {
                cached: false,
                repairs: 1,
                ..
            }
        ));
        let sent = first.requests.lock().unwrap().clone();
        assert_eq!(sent.len(), 2);
        // The first request holds the unusable reply, the re-ask its own usable one.
        let entries: Vec<Value> = walk(dir.path())
            .iter()
            .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
            .collect();
        assert_eq!(entries.len(), 2);
        for entry in &entries {
            let reply = entry["response"].as_str().unwrap();
            let wanted = if entry["request"] == sent[0] {
                completion("sure!").unwrap()
            } else {
                assert_eq!(entry["request"], sent[1]);
                completion("{\"ends\": [2]}").unwrap()
            };
            assert_eq!(reply, wanted);
        }
        // A second run walks the chain from the cache and sends nothing.
        let replay = Scripted::new(Vec::new());
        let Asked::Answer { answer, cached, .. } = ask(&replay, Some(&cache), 2, &job) else {
            panic!("expected an answer");
        };
        assert_eq!(answer, Answer::Content("{\"ends\": [2]}".into()));
        assert!(cached);
        assert!(replay.requests.lock().unwrap().is_empty());
    }

    fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                files.extend(walk(&path));
            } else if path.extension().is_some_and(|e| e == "json") {
                files.push(path);
            }
        }
        files
    }

    #[test]
    fn workers_collect_every_answer_and_stop_on_a_fatal_one() {
        let jobs: Vec<Job<Ends>> = (0..4).map(job).collect();
        let pending: Vec<&Job<Ends>> = jobs.iter().collect();
        let budget = Budget::new(None, None);
        let run = |replies: Vec<Result<String, CallError>>, concurrency| {
            let client = Scripted::new(replies);
            let stop = AtomicBool::new(false);
            let asker = Asker {
                client: &client,
                budget: &budget,
                cache: None,
                parse_retries: 0,
                stop: &stop,
            };
            let mut seen = 0;
            let collected = ask_all(&pending, &asker, concurrency, None, &mut |_| seen += 1);
            (collected, seen)
        };
        let (all, seen) = run((0..4).map(|_| completion("{\"ends\": [1]}")).collect(), 2);
        assert_eq!((all.answers.len(), seen), (4, 4));
        assert!(all.fatal.is_none());
        // One worker: the failure on the second job stops the run before the rest.
        let replies = vec![
            completion("{\"ends\": [1]}"),
            Err(CallError::Failed("gone".into())),
        ];
        let (stopped, _) = run(replies, 1);
        assert_eq!(stopped.answers.len(), 1);
        assert_eq!(stopped.fatal.as_deref(), Some("gone"));
    }
}
