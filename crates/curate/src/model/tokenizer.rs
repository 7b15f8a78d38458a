//! `tokenizer.json` through the tokenizers crate: load, encode prompt/response pairs, and train
//! a byte-level BPE when a model has none.

use std::collections::HashSet;

use anyhow::Result;
use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainer};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

use super::batch::Sequence;

/// The end-of-text token a trained tokenizer gets; also used for padding.
pub(crate) const END_OF_TEXT: &str = "<|endoftext|>";

/// Token ids of `text` with no special tokens added.
pub fn encode(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>, String> {
    tokenizer
        .encode(text, false)
        .map(|e| e.get_ids().to_vec())
        .map_err(|e| e.to_string())
}

/// A training sequence: prompt tokens without loss, response tokens (and `eos`, when the model
/// has one) with loss.
pub fn prompt_response(
    tokenizer: &Tokenizer,
    prompt: &str,
    response: &str,
    eos: Option<u32>,
) -> Result<Sequence, String> {
    let prompt = encode(tokenizer, prompt)?;
    let mut response = encode(tokenizer, response)?;
    response.extend(eos);
    Ok(Sequence::prompt_response(&prompt, &response))
}

/// Train a byte-level BPE (GPT-2 style: every byte is a base token, so any text encodes)
/// with `vocab_size` entries including [`END_OF_TEXT`].
pub fn train_byte_level_bpe<'a>(
    texts: impl Iterator<Item = &'a str> + Send,
    vocab_size: usize,
) -> Result<Tokenizer> {
    // The trainer reserves room for the whole vocabulary up front, but each merge joins two
    // tokens of the text, so no more than the 256 bytes, the end-of-text token and one merge
    // per byte of text can ever be made: a larger request is cut to that.
    let texts: Vec<&str> = texts.collect();
    let text_bytes: usize = texts.iter().map(|t| t.len()).fold(0, usize::saturating_add);
    let vocab_size = vocab_size.min(text_bytes.saturating_add(257));
    let mut tokenizer = Tokenizer::new(BPE::default());
    tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tokenizer.with_decoder(Some(ByteLevel::new(false, true, true)));
    let alphabet: HashSet<char> = ByteLevel::alphabet().into_iter().collect();
    let mut trainer: TrainerWrapper = BpeTrainer::builder()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(vec![AddedToken::from(END_OF_TEXT, true)])
        .initial_alphabet(alphabet)
        .build()
        .into();
    tokenizer
        .train(&mut trainer, texts.into_iter())
        .map_err(|e| anyhow::anyhow!("tokenizer training failed: {e}"))?;
    Ok(tokenizer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trained_tokenizer_round_trips_any_text_and_is_deterministic() {
        let corpus = [
            "def add(a, b):\n    return a + b\n",
            "Natalia sold 48 clips in April and half as many in May.",
            "The answer is 72.",
        ];
        let corpus: Vec<&str> = corpus.iter().cycle().take(30).copied().collect();
        let first = train_byte_level_bpe(corpus.iter().copied(), 300).unwrap();
        let second = train_byte_level_bpe(corpus.iter().copied(), 300).unwrap();
        assert_eq!(
            first.to_string(false).unwrap(),
            second.to_string(false).unwrap()
        );
        assert!(first.token_to_id(END_OF_TEXT).is_some());
        let text = "Ünïcode → 42, unseen words";
        let ids = encode(&first, text).unwrap();
        assert_eq!(first.decode(&ids, false).unwrap(), text);
        let seq = prompt_response(&first, "Q: 1+1?", " 2", Some(0)).unwrap();
        assert_eq!(seq.input_ids.last(), Some(&0));
        assert!(seq.labels.iter().take_while(|&&l| l == -100).count() >= 1);
    }
}
