//! The training loop: batches of similar length, AdamW with a warmup + decay schedule, global
//! gradient-norm clipping. Every step is a pure function of (seed, step), so a run resumed
//! from a checkpoint continues exactly as the uninterrupted run would have.

use std::path::Path;

use anyhow::Result;
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::Tensor;

use super::LanguageModel;
use super::batch::{Padding, Sequence, TokenBatch};
use super::lm::{CausalLm, tensor_specs};
use crate::rng::SplitMix64;

/// How the learning rate moves after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    Constant,
    Linear,
    Cosine,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TrainSettings {
    pub epochs: usize,
    /// Total optimizer steps; overrides `epochs` (cycling through epochs as needed).
    pub max_steps: Option<usize>,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub warmup_steps: usize,
    pub schedule: Schedule,
    pub weight_decay: f64,
    pub beta_1: f64,
    pub beta_2: f64,
    pub epsilon: f64,
    /// Global L2 norm the gradient is scaled down to (PyTorch's `clip_grad_norm_`).
    pub grad_clip: Option<f64>,
    pub seed: u64,
}

impl Default for TrainSettings {
    fn default() -> Self {
        TrainSettings {
            epochs: 3,
            max_steps: None,
            batch_size: 8,
            learning_rate: 1e-3,
            warmup_steps: 10,
            schedule: Schedule::Cosine,
            weight_decay: 0.01,
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-8,
            grad_clip: Some(1.0),
            seed: 0,
        }
    }
}

/// What one optimizer step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    pub step: usize,
    /// Mean next-token loss over the batch's response tokens (weighted, with weights).
    pub loss: f64,
    pub learning_rate: f64,
    /// Loss-carrying tokens in the batch.
    pub tokens: usize,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
}

pub struct Trainer {
    settings: TrainSettings,
    optimizer: ModuleOptimizer,
    lengths: Vec<usize>,
    /// Per-sequence loss weights; `None` weighs every sequence 1.
    weights: Option<Vec<f64>>,
    /// Optimizer steps done so far.
    pub step: usize,
}

impl Trainer {
    /// `lengths` are the token counts of the training sequences, in table order.
    pub fn new(settings: TrainSettings, lengths: Vec<usize>) -> Self {
        let optimizer = AdamWConfig::new()
            .with_beta_1(settings.beta_1 as f32)
            .with_beta_2(settings.beta_2 as f32)
            .with_epsilon(settings.epsilon as f32)
            .with_weight_decay(settings.weight_decay as f32)
            .init();
        Trainer {
            settings,
            optimizer,
            lengths,
            weights: None,
            step: 0,
        }
    }

    /// Weigh each sequence's loss (one positive weight per sequence, in table order): a batch's
    /// loss becomes `sum_i w_i L_i / sum_i w_i n_i` (`L_i` summed token loss, `n_i` its loss
    /// tokens), exactly the loss of the batch with sequence i repeated w_i times when the
    /// weights are whole numbers, so weighting equals resampling in expectation.
    pub fn with_weights(mut self, weights: Vec<f64>) -> Self {
        assert_eq!(weights.len(), self.lengths.len(), "one weight per sequence");
        self.weights = Some(weights);
        self
    }

    pub fn settings(&self) -> &TrainSettings {
        &self.settings
    }

    pub(crate) fn batches_per_epoch(&self) -> usize {
        self.lengths.len().div_ceil(self.settings.batch_size.max(1))
    }

    pub fn total_steps(&self) -> usize {
        self.settings
            .max_steps
            .unwrap_or(self.settings.epochs * self.batches_per_epoch())
    }

    pub fn is_done(&self) -> bool {
        self.step >= self.total_steps()
    }

    /// Row indices of the batch of global step `step`.
    pub(crate) fn batch_rows(&self, step: usize) -> Vec<usize> {
        let per_epoch = self.batches_per_epoch().max(1);
        let epoch = step / per_epoch;
        let batches = epoch_batches(
            &self.lengths,
            self.settings.batch_size,
            self.settings.seed,
            epoch as u64,
        );
        batches[step % per_epoch].clone()
    }

    /// Learning rate at `step`: linear warmup, then the schedule down to zero at the end.
    pub fn learning_rate(&self, step: usize) -> f64 {
        let s = &self.settings;
        if step < s.warmup_steps {
            return s.learning_rate * (step + 1) as f64 / s.warmup_steps as f64;
        }
        let decay_steps = self.total_steps().saturating_sub(s.warmup_steps).max(1);
        let progress = ((step - s.warmup_steps) as f64 / decay_steps as f64).min(1.0);
        match s.schedule {
            Schedule::Constant => s.learning_rate,
            Schedule::Linear => s.learning_rate * (1.0 - progress),
            Schedule::Cosine => {
                s.learning_rate * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }

    /// One optimizer step on the next batch; returns the updated model.
    pub fn train_step(
        &mut self,
        lm: &LanguageModel,
        model: CausalLm,
        sequences: &[Sequence],
    ) -> (CausalLm, StepReport) {
        let rows = self.batch_rows(self.step);
        let batch: Vec<&Sequence> = rows.iter().map(|&r| &sequences[r]).collect();
        let weights: Vec<f64> = match &self.weights {
            Some(weights) => rows.iter().map(|&r| weights[r]).collect(),
            None => vec![1.0; rows.len()],
        };
        let weighted_tokens: f64 = batch
            .iter()
            .zip(&weights)
            .map(|(s, w)| w * s.loss_tokens() as f64)
            .sum();
        let batch = TokenBatch::pad(&batch, lm.pad_id(), Padding::Right);
        let tokens = batch.loss_tokens().max(1);
        let losses = model.forward_losses(&batch, &mut super::Capture::none());
        let loss = if self.weights.is_some() {
            let w = Tensor::<1>::from_data(
                burn::tensor::TensorData::new(weights, [rows.len()]),
                (&losses.device(), losses.dtype()),
            );
            (losses * w)
                .sum()
                .div_scalar(weighted_tokens.max(f64::MIN_POSITIVE))
        } else {
            losses.sum().div_scalar(tokens as f64)
        };
        let loss_value = loss.clone().detach().into_scalar::<f64>();
        let grads = loss.backward();
        let mut grads = GradientsParams::from_grads(grads, &model);
        let grad_norm = clip_global_norm(&mut grads, &lm.config, self.settings.grad_clip);
        let learning_rate = self.learning_rate(self.step);
        let model = self.optimizer.step(learning_rate, model, grads);
        self.step += 1;
        (
            model,
            StepReport {
                step: self.step,
                loss: loss_value,
                learning_rate,
                tokens,
                grad_norm,
            },
        )
    }

    pub(crate) fn save_optimizer(&self, path: &Path) -> Result<()> {
        self.optimizer
            .save(path)
            .map_err(|e| anyhow::anyhow!("cannot write optimizer state {}: {e:?}", path.display()))
    }

    pub(crate) fn load_optimizer(&mut self, path: &Path) -> Result<()> {
        let fresh = std::mem::replace(&mut self.optimizer, AdamWConfig::new().init());
        self.optimizer = fresh.load(path).map_err(|e| {
            anyhow::anyhow!("cannot read optimizer state {}: {e:?}", path.display())
        })?;
        Ok(())
    }
}

/// When a run checkpoints and stops early.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StopPlan {
    /// Checkpoint every N steps.
    pub checkpoint_every: Option<usize>,
    /// Checkpoint and stop after N steps of this run.
    pub stop_after: Option<usize>,
}

/// How a run of steps ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// Every step is done; the model holds the trained weights.
    Finished,
    /// Stopped after the planned steps, checkpoint written.
    StoppedAfter,
    /// Stopped on request, checkpoint written.
    Interrupted,
}

/// What a run of steps did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunSummary {
    pub end: RunEnd,
    pub steps: usize,
    /// Loss-carrying tokens trained on.
    pub tokens: usize,
    pub last_loss: f64,
}

/// The loss stopped being a number.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("loss became {loss} at step {step}")]
pub struct Diverged {
    pub loss: f64,
    pub step: usize,
}

/// Train `lm` until the trainer is done, checkpointing as `plan` says and when `interrupted`
/// turns true (checked before each step). `on_step` sees every step's report.
pub fn run_steps(
    lm: &mut LanguageModel,
    trainer: &mut Trainer,
    sequences: &[Sequence],
    checkpoint: &super::checkpoint::Checkpoint,
    plan: StopPlan,
    on_step: &mut dyn FnMut(&StepReport),
    interrupted: &dyn Fn() -> bool,
) -> Result<RunSummary> {
    let mut summary = RunSummary {
        end: RunEnd::Finished,
        steps: 0,
        tokens: 0,
        last_loss: f64::NAN,
    };
    let mut model = lm.model.clone();
    while !trainer.is_done() {
        if interrupted() {
            lm.model = model;
            checkpoint.save(lm, trainer)?;
            summary.end = RunEnd::Interrupted;
            return Ok(summary);
        }
        let (next, report) = trainer.train_step(lm, model, sequences);
        model = next;
        if !report.loss.is_finite() {
            return Err(Diverged {
                loss: report.loss,
                step: report.step,
            }
            .into());
        }
        summary.steps += 1;
        summary.tokens += report.tokens;
        summary.last_loss = report.loss;
        on_step(&report);
        let periodic = plan
            .checkpoint_every
            .is_some_and(|every| trainer.step.is_multiple_of(every) && !trainer.is_done());
        let stopping = plan.stop_after == Some(summary.steps) && !trainer.is_done();
        if periodic || stopping {
            lm.model = model.clone();
            checkpoint.save(lm, trainer)?;
        }
        if stopping {
            summary.end = RunEnd::StoppedAfter;
            return Ok(summary);
        }
    }
    lm.model = model;
    Ok(summary)
}

/// Per-row loss weights read from a column: finite and non-negative; rows of weight 0 are
/// left out of training.
#[derive(Debug, Clone, PartialEq)]
pub struct LossWeights {
    /// The weights of the rows kept, in table order.
    pub values: Vec<f64>,
    /// Which rows are kept (weight above 0).
    pub keep: Vec<bool>,
}

impl LossWeights {
    pub fn read(
        frame: &polars::prelude::DataFrame,
        file: &str,
        role: crate::table::ColumnRole,
    ) -> Result<LossWeights> {
        use crate::error::InputError;
        let weights = crate::table::number_column(frame, file, role, "weight")?;
        if let Some(row) = weights.iter().position(|w| !w.is_finite() || *w < 0.0) {
            return Err(InputError::new(
                file,
                format!(
                    "weight {} is not a finite non-negative number",
                    weights[row]
                ),
            )
            .column(role.name)
            .row(row + 1)
            .into());
        }
        let keep: Vec<bool> = weights.iter().map(|&w| w > 0.0).collect();
        if !keep.contains(&true) {
            return Err(
                InputError::new(file, "every weight is 0: nothing to train on")
                    .column(role.name)
                    .into(),
            );
        }
        let values = weights.into_iter().filter(|&w| w > 0.0).collect();
        Ok(LossWeights { values, keep })
    }

    /// Rows of weight 0, left out.
    pub fn left_out(&self) -> usize {
        self.keep.len() - self.values.len()
    }
}

/// One epoch's batches: rows shuffled by (seed, epoch), grouped with rows of similar length
/// (a stable sort keeps the shuffled order within a length), cut into batches, and the batch
/// order shuffled again, so padding stays small and every epoch differs.
pub(crate) fn epoch_batches(
    lengths: &[usize],
    batch_size: usize,
    seed: u64,
    epoch: u64,
) -> Vec<Vec<usize>> {
    let mut rng = SplitMix64::new(seed ^ epoch.wrapping_mul(0xD1B5_4A32_D192_ED03));
    let mut rows: Vec<usize> = (0..lengths.len()).collect();
    rng.shuffle(&mut rows);
    rows.sort_by_key(|&r| lengths[r]);
    let mut batches: Vec<Vec<usize>> = rows
        .chunks(batch_size.max(1))
        .map(<[usize]>::to_vec)
        .collect();
    rng.shuffle(&mut batches);
    batches
}

/// Scale all gradients so their global L2 norm is at most `max_norm`; returns the norm before.
fn clip_global_norm(
    grads: &mut GradientsParams,
    config: &super::LmConfig,
    max_norm: Option<f64>,
) -> f64 {
    let specs = tensor_specs(config);
    let mut squares = 0.0;
    for (index, spec) in specs.iter().enumerate() {
        let id = CausalLm::param_id(index);
        squares += match spec.shape.len() {
            1 => grads
                .get::<1>(id)
                .map_or(0.0, |g| g.square().sum().into_scalar::<f64>()),
            _ => grads
                .get::<2>(id)
                .map_or(0.0, |g| g.square().sum().into_scalar::<f64>()),
        };
    }
    let norm = squares.sqrt();
    if let Some(max_norm) = max_norm
        && norm > max_norm
    {
        let scale = max_norm / (norm + 1e-6);
        for (index, spec) in specs.iter().enumerate() {
            let id = CausalLm::param_id(index);
            match spec.shape.len() {
                1 => rescale::<1>(grads, id, scale),
                _ => rescale::<2>(grads, id, scale),
            }
        }
    }
    norm
}

fn rescale<const D: usize>(grads: &mut GradientsParams, id: burn::module::ParamId, scale: f64) {
    if let Some(g) = grads.remove::<D>(id) {
        let scaled: Tensor<D> = g.mul_scalar(scale);
        grads.register(id, scaled);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_weights_keep_positive_rows_and_refuse_bad_ones() {
        use crate::table::ColumnRole;
        use polars::prelude::*;
        let role = ColumnRole::new("w", "the weights");
        let frame = df!("w" => [1.0, 0.0, 2.5]).unwrap();
        let weights = LossWeights::read(&frame, "t", role).unwrap();
        assert_eq!(weights.values, [1.0, 2.5]);
        assert_eq!(weights.keep, [true, false, true]);
        assert_eq!(weights.left_out(), 1);
        let negative = df!("w" => [1.0, -1.0]).unwrap();
        let err = LossWeights::read(&negative, "t", role)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("t: column 'w', row 2: weight -1"), "{err}");
        let zeros = df!("w" => [0.0]).unwrap();
        assert!(LossWeights::read(&zeros, "t", role).is_err());
    }

    #[test]
    fn epochs_cover_every_row_once_and_differ() {
        let lengths: Vec<usize> = (0..23).map(|i| 5 + (i * 7) % 11).collect();
        let first = epoch_batches(&lengths, 4, 1, 0);
        let second = epoch_batches(&lengths, 4, 1, 1);
        for batches in [&first, &second] {
            let mut rows: Vec<usize> = batches.iter().flatten().copied().collect();
            rows.sort();
            assert_eq!(rows, (0..23).collect::<Vec<_>>());
            assert_eq!(batches.len(), 6);
        }
        assert_ne!(first, second);
        assert_eq!(first, epoch_batches(&lengths, 4, 1, 0));
        // Length grouping: within a batch lengths are close.
        let spread: usize = first
            .iter()
            .map(|b| {
                let l: Vec<usize> = b.iter().map(|&r| lengths[r]).collect();
                l.iter().max().unwrap() - l.iter().min().unwrap()
            })
            .max()
            .unwrap();
        assert!(spread <= 3, "{spread}");
    }

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        let settings = TrainSettings {
            max_steps: Some(110),
            warmup_steps: 10,
            learning_rate: 1.0,
            ..TrainSettings::default()
        };
        let trainer = Trainer::new(settings, vec![3; 4]);
        assert!((trainer.learning_rate(0) - 0.1).abs() < 1e-12);
        assert!((trainer.learning_rate(9) - 1.0).abs() < 1e-12);
        assert!((trainer.learning_rate(10) - 1.0).abs() < 1e-12);
        assert!((trainer.learning_rate(60) - 0.5).abs() < 1e-12);
        assert!(trainer.learning_rate(109) < 0.001);
    }
}
