//! Influence functions (Infra, kronfluence's conventions): which training examples, segments
//! and tokens raise a model's performance on a query set.
//!
//! `score(q, n) = grad(L_q)^T (H + damping)^-1 grad(L_n)` over the tracked linear layers, with
//! `H` approximated per layer by a preconditioner (`identity`, `diagonal`, `kfac`, `ekfac`).
//! Positive means training on `n` lowers the query loss; no minus sign, no division by N.
//!
//! The engine works on token stacks (`ModuleStacks`): for each tracked layer and example, the
//! per-token inputs `a` and output gradients `g` of the summed sequence loss. Any model that can
//! produce them (`GradientSource`) can be attributed; `LmSource` adapts the causal LM.

pub mod checkpoint;
mod engine;
pub mod examples;
mod factors;
pub mod index;
mod lm_source;
mod precondition;
mod projection;
pub mod report;
pub mod retrain;
pub mod run;
mod score;
pub mod score_shards;
pub mod segment;
mod stacks;
pub mod store;
pub mod validate;

pub(crate) use engine::BatchScores;
pub use engine::{
    Advance, Done, PassOptions, QueryAggregate, SaveProgress, Walk, fit_covariances, fit_factors,
    fit_lambdas, pass_work, preconditioned_gradients, query_gradients, score,
};
pub(crate) use factors::ModuleFactors;
pub use factors::{FactorSet, Stage};
pub use lm_source::LmSource;
pub use precondition::{Damping, Precision, Preconditioner, UndampedZero};
pub(crate) use precondition::{ModulePreconditioner, Rotation};
pub use projection::Projection;
pub(crate) use score::{
    QueryGradient, QueryGradients, ScoreMatrix, TokenScores, score_examples, score_tokens,
};
pub(crate) use stacks::ExampleStack;
pub use stacks::{ModuleStacks, stacks_from_activations};

/// Which labels the loss behind the factors uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fisher {
    /// The data's own labels (kronfluence's `use_empirical_fisher=True`).
    Empirical,
    /// Labels drawn from the model's predictive distribution, seeded per example.
    Sampled { seed: u64 },
}

/// Anything that yields per-token layer inputs and output gradients for a set of examples.
/// Shared between threads: passes capture several batches at once.
pub trait GradientSource: Sync {
    /// Number of examples.
    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cost of one example (its token count), to batch examples of similar size.
    fn length(&self, _row: usize) -> usize {
        0
    }

    /// The tracked modules' stacks for examples `rows` (in that order), modules in a fixed
    /// order.
    fn capture(&self, rows: &[usize], fisher: Fisher) -> anyhow::Result<Vec<ModuleStacks>>;

    /// The relative cost of capturing `rows` as one batch, for time estimates: by default its
    /// padded tokens.
    fn batch_work(&self, rows: &[usize]) -> u64 {
        let longest = rows.iter().map(|&row| self.length(row)).max().unwrap_or(0);
        (rows.len() * longest) as u64
    }

    /// The precision the gradients are captured in; eigenbasis rotations run in it.
    fn precision(&self) -> Precision {
        Precision::Double
    }

    /// Whether captures share trainable weights: batches captured side by side then build
    /// their backward passes on the weights' one autodiff graph, which can deadlock, so they
    /// run one at a time.
    fn trainable(&self) -> bool {
        false
    }
}
