//! curate's library: the columnar data layer, the model wrapper, and the algorithms of each
//! command (influence, reveal, rephrase, reweight). Nothing here parses flags; functions take
//! plain settings and data and return typed results, which the `curate` binary words and
//! writes.

pub mod error;
pub mod eval;
pub mod influence;
pub mod interrupt;
pub mod llm;
pub mod model;
pub mod rephrase;
pub mod reveal;
pub mod reweight;
pub mod rng;
pub mod table;
pub mod text;
