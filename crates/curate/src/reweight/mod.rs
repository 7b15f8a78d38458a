//! Dataset reweighting (Infra): the difficulty flip, influence-driven group weights and top-k
//! selection, with capping, resampling and a before/after audit. No file I/O here: `frame`
//! works on tables already read.

pub mod audit;
pub mod frame;
pub mod levels;
pub(crate) mod resample;
pub mod rules;
pub mod scores;

pub(crate) use audit::AuditRow;
pub use audit::audit;
pub use levels::Binning;
pub(crate) use levels::assign;
pub(crate) use levels::{Groups, LevelError};
pub use resample::systematic;
pub(crate) use rules::CapError;
pub use rules::{Adjustment, Direction, Preserve, TargetError, cap, effective_sample_sizes, flip};
pub(crate) use rules::{from_group_scores, random_group_scores, top_fraction};
pub(crate) use scores::rank_by;
pub(crate) use scores::{MeanScores, ScoreJoinError};
