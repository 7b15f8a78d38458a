//! What a run would send, counted before anything is sent (`--dry-run`).

use std::collections::HashMap;

use super::ask::{Exchange, Job, cached_content};
use super::cache::ReplyCache;
use super::chat::estimate_prompt_tokens;
use super::client::Prices;
use super::journal::Entry;

/// What a run would send, counted before sending anything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Estimate {
    /// Records that need a request.
    pub asked: u64,
    pub from_journal: u64,
    pub cached: u64,
    pub requests: u64,
    /// Tokens, at 4 bytes a token.
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// Who a dry run would have asked, for its report.
#[derive(Debug, Clone, Copy)]
pub struct DryRun<'a> {
    /// What the run asks for (a mode's name).
    pub mode: &'a str,
    pub model: &'a str,
    pub endpoint: &'a str,
    /// Records in the input (asked or not).
    pub records: usize,
    pub max_requests: Option<u64>,
    pub max_total_tokens: Option<u64>,
    /// Prices per million tokens, and the cost limit, when given.
    pub prices: Option<Prices>,
    pub max_cost: Option<f64>,
}

impl Estimate {
    pub fn total_tokens(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }

    /// The estimated cost at `prices`.
    pub fn cost(&self, prices: Prices) -> f64 {
        prices.of(self.prompt_tokens, self.completion_tokens)
    }

    /// Whether the run fits every budget (`None` is no limit).
    pub fn within(&self, run: &DryRun) -> bool {
        run.max_requests.is_none_or(|max| self.requests <= max)
            && run
                .max_total_tokens
                .is_none_or(|max| self.total_tokens() <= max)
            && match (run.prices, run.max_cost) {
                (Some(prices), Some(max)) => self.cost(prices) <= max,
                _ => true,
            }
    }

    /// The dry run's report, one JSON document.
    pub fn json(&self, run: &DryRun) -> serde_json::Value {
        serde_json::json!({
            "mode": run.mode,
            "model": run.model,
            "endpoint": run.endpoint,
            "records": run.records,
            "without_request": run.records as u64 - self.asked,
            "from_journal": self.from_journal,
            "cached": self.cached,
            "requests": self.requests,
            "estimated_prompt_tokens": self.prompt_tokens,
            "estimated_completion_tokens": self.completion_tokens,
            "estimated_total_tokens": self.total_tokens(),
            "max_requests": run.max_requests,
            "max_total_tokens": run.max_total_tokens,
            "estimated_cost": run.prices.map(|prices| self.cost(prices)),
            "max_cost": run.max_cost,
            "within_budget": self.within(run),
        })
    }

    /// The dry run's one-line account for people.
    pub fn text(&self, run: &DryRun) -> String {
        format!(
            "dry run: {} requests of {} records ({} need none, {} in the journal, {} cached), \
             about {} tokens ({} prompt + {} completion, at 4 bytes a token){}{}; nothing was sent",
            self.requests,
            run.records,
            run.records as u64 - self.asked,
            self.from_journal,
            self.cached,
            self.total_tokens(),
            self.prompt_tokens,
            self.completion_tokens,
            run.prices
                .map(|prices| format!(", costing about {:.4}", self.cost(prices)))
                .unwrap_or_default(),
            if self.within(run) {
                ""
            } else {
                "; over the budget"
            }
        )
    }
}

/// Count the requests `jobs` would send given the journal's `entries` and the `cache`.
pub fn estimate<'a, C: Exchange + 'a>(
    jobs: impl Iterator<Item = &'a Job<C>>,
    entries: &HashMap<usize, Entry>,
    cache: Option<&ReplyCache>,
) -> Estimate {
    let mut estimate = Estimate::default();
    for job in jobs {
        estimate.asked += 1;
        if entries
            .get(&job.row)
            .is_some_and(|(key, _)| *key == job.key)
        {
            estimate.from_journal += 1;
        } else if cached_content(cache, job).is_some() {
            estimate.cached += 1;
        } else {
            estimate.requests += 1;
            estimate.prompt_tokens += estimate_prompt_tokens(&job.body);
            estimate.completion_tokens += job.reply_estimate;
        }
    }
    estimate
}
