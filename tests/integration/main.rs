//! Integration tests: drive the built `curate` binary on files in a temporary directory.

mod chat;
mod chat_server;
mod cli;
mod cli_reference;
mod convert;
mod doc_examples;
mod errors;
mod eval;
mod gguf;
mod hostile;
mod index;
mod influence;
mod inspect;
mod memory;
mod model;
mod pandas;
mod rephrase;
mod rephrase_llm;
mod resume;
mod reveal;
mod reveal_ask;
mod reveal_parity;
mod reweight;
mod smollm2;
mod test;
mod train;
