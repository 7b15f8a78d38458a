//! Integration tests: drive the built `curate` binary on files in a temporary directory.

mod chat_server;
mod cli;
mod cli_reference;
mod convert;
mod errors;
mod influence;
mod inspect;
mod model;
mod rephrase;
mod rephrase_llm;
mod reveal;
mod reveal_parity;
mod reweight;
mod test;
mod train;
