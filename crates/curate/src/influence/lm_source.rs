//! The causal LM as a gradient source: right-padded batches of token sequences, the summed
//! next-token loss of each sequence, its tracked linear layers.

use anyhow::Result;
use regex::Regex;

use super::{Fisher, GradientSource, ModuleStacks, Precision, stacks_from_activations};
use crate::model::{IGNORE_INDEX, LanguageModel, Padding, Sequence, TokenBatch};
use crate::rng::SplitMix64;

pub struct LmSource<'a> {
    pub model: &'a LanguageModel,
    pub sequences: &'a [Sequence],
    pub tracked: &'a Regex,
}

impl GradientSource for LmSource<'_> {
    fn len(&self) -> usize {
        self.sequences.len()
    }

    fn length(&self, row: usize) -> usize {
        self.sequences[row].len()
    }

    /// Every row runs padded to the batch's longest; projections, attention and the head
    /// weigh as they do for sharding.
    fn batch_work(&self, rows: &[usize]) -> u64 {
        let longest = rows.iter().map(|&row| self.length(row)).max().unwrap_or(0);
        rows.iter()
            .map(|&row| {
                let labels = &self.sequences[row].labels;
                let labelled = labels.iter().filter(|&&l| l != IGNORE_INDEX).count();
                crate::model::budget::sequence_work(&self.model.config, longest, labelled)
            })
            .fold(0u64, u64::saturating_add)
    }

    fn precision(&self) -> Precision {
        if self.model.model.dtype() == burn::tensor::DType::F64 {
            Precision::Double
        } else {
            Precision::Single
        }
    }

    fn trainable(&self) -> bool {
        self.model.model.embed_tokens.val().is_require_grad()
    }

    fn capture(&self, rows: &[usize], fisher: Fisher) -> Result<Vec<ModuleStacks>> {
        let sequences: Vec<&Sequence> = rows.iter().map(|&row| &self.sequences[row]).collect();
        let lengths: Vec<usize> = sequences.iter().map(|s| s.len()).collect();
        let batch = TokenBatch::pad(&sequences, self.model.pad_id(), Padding::Right);
        let (_, activations) = match fisher {
            Fisher::Empirical => self.model.capture(&batch, self.tracked)?,
            Fisher::Sampled { seed } => {
                // One stream per example, so the draws do not depend on batching or sharding.
                let seeds: Vec<u64> = rows
                    .iter()
                    .map(|&row| SplitMix64::new(seed ^ (row as u64).rotate_left(32)).next_u64())
                    .collect();
                self.model.capture_sampled(&batch, self.tracked, &seeds)?
            }
        };
        Ok(stacks_from_activations(activations, &lengths))
    }
}
