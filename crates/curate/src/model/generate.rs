//! Greedy decoding with a key/value cache: prompts of one batch are left-padded, fed once, then
//! one token per step until each row emits a stop token or reaches the length limit.

use burn::tensor::Tensor;

use super::LanguageModel;
use super::lm::KvCache;

/// One row's decoded tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    /// New tokens, the stop token excluded.
    pub tokens: Vec<u32>,
    /// A stop token ended it (not the length limit).
    pub stopped: bool,
}

/// Greedy continuation of each prompt (token ids) by at most `max_new` tokens; a row stops at
/// the first token in `stop`. Ties between logits go to the lowest token id, as `argmax` does.
pub fn greedy(
    lm: &LanguageModel,
    prompts: &[Vec<i64>],
    max_new: usize,
    stop: &[i64],
) -> Vec<Generated> {
    let rows = prompts.len();
    let mut out: Vec<Generated> = (0..rows)
        .map(|_| Generated {
            tokens: Vec::new(),
            stopped: false,
        })
        .collect();
    if rows == 0 || max_new == 0 {
        return out;
    }
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let pad = lm.pad_id();
    let mut ids = Vec::with_capacity(rows * longest);
    let mut real = Vec::with_capacity(rows * longest);
    for prompt in prompts {
        let padding = longest - prompt.len();
        ids.extend(std::iter::repeat_n(pad, padding).chain(prompt.iter().copied()));
        real.extend(
            std::iter::repeat_n(false, padding).chain(std::iter::repeat_n(true, prompt.len())),
        );
    }
    let mut cache = KvCache::new(&lm.model, rows);
    let mut logits = lm.model.forward_cached(&ids, &real, &mut cache);
    let mut done = vec![false; rows];
    for step in 0..max_new {
        let next = last_argmax(logits);
        let mut step_ids = Vec::with_capacity(rows);
        let mut step_real = Vec::with_capacity(rows);
        for (row, &token) in next.iter().enumerate() {
            if done[row] {
                step_ids.push(pad);
                step_real.push(false);
                continue;
            }
            if stop.contains(&token) {
                done[row] = true;
                out[row].stopped = true;
            } else {
                out[row].tokens.push(token as u32);
            }
            step_ids.push(token);
            step_real.push(!done[row]);
        }
        if done.iter().all(|&d| d) || step + 1 == max_new {
            break;
        }
        logits = lm.model.forward_cached(&step_ids, &step_real, &mut cache);
    }
    out
}

/// The highest-scoring token at each row's last position (first one on ties).
fn last_argmax(logits: Tensor<3>) -> Vec<i64> {
    let [b, t, v] = logits.dims();
    let last = logits.narrow(1, t - 1, 1).reshape([b, v]);
    let values = super::tensor_to_f64(last);
    values
        .chunks(v)
        .map(|row| {
            let mut best = 0;
            for (token, &value) in row.iter().enumerate() {
                if value > row[best] {
                    best = token;
                }
            }
            best as i64
        })
        .collect()
}
