//! The columnar data layer: every command reads and writes tables through here.

mod format;
pub mod inspect;
mod output_dir;
mod provenance;
mod read;
mod shard;
mod summary;
mod validate;
mod write;

pub use format::Format;
pub use output_dir::OutputDir;
pub use provenance::{InputDigest, Provenance, hex};
pub use read::{Input, digest_in_background};
pub use shard::{Shard, ShardError};
pub use summary::{ColumnSummary, ValueCount, summarize, to_json};
pub use validate::{
    ColumnRole, Expected, PROBABILITY_SUM_TOLERANCE, id_column, missing_column, number_column,
    probability_problem, require_column, require_rows, require_type, require_unique_ids,
};
pub use write::{DEFAULT_BATCH_ROWS, Output, TableWriter};
