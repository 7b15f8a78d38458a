//! The columnar data layer: every command reads and writes tables through here.

mod format;
pub mod inspect;
mod output_dir;
pub mod place;
mod provenance;
mod read;
mod shard;
mod summary;
mod validate;
mod write;

pub use format::Format;
pub use output_dir::OutputDir;
pub use place::require_distinct;
pub(crate) use provenance::hex;
pub use provenance::{InputDigest, Provenance, ShardRecord, settings_digest};
pub use read::{Input, TypeMix, digest_in_background};
pub use shard::{CoverError, Resolved, Shard, ShardError, order_shards};
pub(crate) use summary::ColumnSummary;
pub use summary::summarize;
pub(crate) use summary::to_json;
pub use validate::{
    ColumnRole, Expected, id_column, missing_column, number_column, require_rows, require_type,
    require_unique_ids,
};
pub(crate) use validate::{PROBABILITY_SUM_TOLERANCE, probability_problem};
pub use write::{DEFAULT_BATCH_ROWS, Output, Staged, commit_all};
