//! Asking an OpenAI-compatible chat-completions endpoint for many records, as a batch job
//! needs it: a client with retries, backoff and budgets ([`client`]), the protocol's replies
//! and re-asks ([`chat`]), a reply cache ([`cache`]), a journal an interrupted run resumes
//! from ([`journal`]), and a pool of workers that ties them together ([`ask`]). `rephrase`'s
//! LLM modes and `reveal ask` share it.

pub mod ask;
pub mod cache;
pub mod chat;
pub mod client;
pub mod estimate;
pub mod journal;

/// Why the endpoint gave no usable answer for a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Refusal {
    /// The reply could not be used, also after asking again.
    UnusableReply,
    /// The endpoint refused the request for this record (400, 413, 422: too long, say).
    RequestRejected,
}

impl Refusal {
    pub const ALL: [Refusal; 2] = [Refusal::UnusableReply, Refusal::RequestRejected];

    pub fn code(self) -> &'static str {
        match self {
            Refusal::UnusableReply => "unusable_reply",
            Refusal::RequestRejected => "request_rejected",
        }
    }

    pub(crate) fn from_code(code: &str) -> Option<Refusal> {
        Refusal::ALL.into_iter().find(|r| r.code() == code)
    }
}
