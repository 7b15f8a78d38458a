//! Integration tests: drive the built `curate` binary on files in a temporary directory.

mod cli;
mod cli_reference;
mod convert;
mod errors;
mod influence;
mod inspect;
mod model;
mod rephrase;
mod reveal;
mod reveal_parity;
mod reweight;
mod test;
mod train;
