//! Token sequences and padded batches in the Hugging Face convention: `labels` has the length
//! of `input_ids`, -100 marks positions without loss, and the shift happens inside the loss.

/// Label value that takes a position out of the loss.
pub(crate) const IGNORE_INDEX: i64 = -100;

/// One example: token ids and labels of equal length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sequence {
    pub input_ids: Vec<i64>,
    pub labels: Vec<i64>,
}

impl Sequence {
    /// Prompt then response; loss on the response tokens only.
    pub fn prompt_response(prompt: &[u32], response: &[u32]) -> Self {
        let input_ids: Vec<i64> = prompt.iter().chain(response).map(|&t| t as i64).collect();
        let labels = std::iter::repeat_n(IGNORE_INDEX, prompt.len())
            .chain(response.iter().map(|&t| t as i64))
            .collect();
        Sequence { input_ids, labels }
    }

    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    /// Keep the first `max_len` tokens.
    pub fn truncate(&mut self, max_len: usize) {
        self.input_ids.truncate(max_len);
        self.labels.truncate(max_len);
    }

    /// Tokens that carry loss after the shift (a label at position 0 predicts nothing).
    pub fn loss_tokens(&self) -> usize {
        self.labels
            .iter()
            .skip(1)
            .filter(|&&l| l != IGNORE_INDEX)
            .count()
    }
}

/// Which side padding goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    Right,
    Left,
}

/// A padded batch, row-major `[batch, seq]`.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBatch {
    pub batch: usize,
    pub seq: usize,
    pub input_ids: Vec<i64>,
    pub labels: Vec<i64>,
    pub attention_mask: Vec<bool>,
}

impl TokenBatch {
    /// Pad to the longest sequence with `pad_id` (labels -100, mask false).
    pub fn pad(sequences: &[&Sequence], pad_id: i64, padding: Padding) -> Self {
        let batch = sequences.len();
        let seq = sequences.iter().map(|s| s.len()).max().unwrap_or(0);
        let mut input_ids = Vec::with_capacity(batch * seq);
        let mut labels = Vec::with_capacity(batch * seq);
        let mut attention_mask = Vec::with_capacity(batch * seq);
        for s in sequences {
            let pad = seq - s.len();
            let real = s
                .input_ids
                .iter()
                .zip(&s.labels)
                .map(|(&id, &l)| (id, l, true));
            let padding_tokens = std::iter::repeat_n((pad_id, IGNORE_INDEX, false), pad);
            let row: Vec<(i64, i64, bool)> = match padding {
                Padding::Right => real.chain(padding_tokens).collect(),
                Padding::Left => padding_tokens.chain(real).collect(),
            };
            for (id, label, mask) in row {
                input_ids.push(id);
                labels.push(label);
                attention_mask.push(mask);
            }
        }
        TokenBatch {
            batch,
            seq,
            input_ids,
            labels,
            attention_mask,
        }
    }

    /// Rotary positions: each row counts its real tokens from 0, so a left-padded row sees the
    /// same positions as the unpadded sequence.
    pub fn positions(&self) -> Vec<i64> {
        let mut positions = Vec::with_capacity(self.batch * self.seq);
        for row in self.attention_mask.chunks(self.seq.max(1)) {
            let mut next = 0i64;
            for &real in row {
                positions.push(if real { next } else { next.max(0) });
                if real {
                    next += 1;
                }
            }
        }
        positions
    }

    /// Targets `[B, T-1]` (label at t+1, 0 where ignored) and their weights (1 or 0).
    pub(crate) fn shifted_targets(&self) -> (Vec<i64>, Vec<f64>) {
        let t = self.seq;
        let mut targets = Vec::with_capacity(self.batch * t.saturating_sub(1));
        let mut weights = Vec::with_capacity(targets.capacity());
        for row in self.labels.chunks(t.max(1)) {
            for &label in &row[1..] {
                let used = label != IGNORE_INDEX;
                targets.push(if used { label } else { 0 });
                weights.push(if used { 1.0 } else { 0.0 });
            }
        }
        (targets, weights)
    }

    /// Number of (batch row, position) pairs that carry loss.
    pub fn loss_tokens(&self) -> usize {
        self.shifted_targets()
            .1
            .iter()
            .filter(|&&w| w > 0.0)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_and_shifts() {
        let a = Sequence::prompt_response(&[5, 6], &[7, 8]);
        let b = Sequence::prompt_response(&[9], &[10]);
        assert_eq!(a.labels, vec![-100, -100, 7, 8]);
        assert_eq!(a.loss_tokens(), 2);
        let right = TokenBatch::pad(&[&a, &b], 0, Padding::Right);
        assert_eq!(right.input_ids, vec![5, 6, 7, 8, 9, 10, 0, 0]);
        assert_eq!(right.positions(), vec![0, 1, 2, 3, 0, 1, 2, 2]);
        let (targets, weights) = right.shifted_targets();
        assert_eq!(targets, vec![0, 7, 8, 10, 0, 0]);
        assert_eq!(weights, vec![0.0, 1.0, 1.0, 1.0, 0.0, 0.0]);
        let left = TokenBatch::pad(&[&a, &b], 0, Padding::Left);
        assert_eq!(left.input_ids, vec![5, 6, 7, 8, 0, 0, 9, 10]);
        assert_eq!(left.positions()[4..], [0, 0, 0, 1]);
        assert_eq!(left.loss_tokens(), 3);
    }
}
