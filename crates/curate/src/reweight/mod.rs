//! Dataset reweighting (Infra): the difficulty flip, influence-driven group weights and top-k
//! selection, with capping, resampling and a before/after audit. No file I/O here: `frame`
//! works on tables already read.

pub mod audit;
pub mod frame;
pub mod levels;
pub mod resample;
pub mod rules;
pub mod scores;

pub use audit::{AuditRow, audit};
pub use levels::{Binning, Groups, LevelError, assign};
pub use resample::systematic;
pub use rules::{
    Adjustment, CapError, Direction, Preserve, TargetError, cap, flip, from_group_scores,
    random_group_scores, rescale, top_fraction,
};
pub use scores::{MeanScores, ScoreJoinError, rank_by};
