//! One influence run over a model and its training examples: fitting factors, preconditioning
//! query gradients and scoring the training rows, each pass reporting its batches.

use std::ops::Range;
use std::path::Path;

use anyhow::Result;
use regex::Regex;
use sha2::{Digest, Sha256};

use super::checkpoint::RunCheckpoint;
use super::examples::Examples;
use super::report::Collected;
use super::store::{FactorMeta, RunFit};
use super::{
    Advance, Damping, Done, FactorSet, Fisher, LmSource, PassOptions, Preconditioner, Projection,
    QueryAggregate, QueryGradients, Stage, Walk,
};
use crate::model::{self, ChatTemplate, IGNORE_INDEX, LanguageModel, Sequence};
use crate::table::{InputDigest, Provenance, Shard, ShardRecord};

/// Called after each group of batches with what it held; an error stops the pass.
pub type OnBatch<'a> = &'a mut dyn FnMut(Advance) -> Result<()>;

/// The model, the training examples and how gradients are taken.
pub struct GradientRun {
    pub lm: LanguageModel,
    /// sha256 over the model's files.
    pub model_digest: String,
    /// Each model file's digest, for provenance.
    pub model_inputs: Vec<InputDigest>,
    /// Modules whose gradients count.
    pub tracked: Regex,
    pub projection: Option<Projection>,
    pub fisher: Fisher,
    /// The training rows this run fits or scores: one part of them, balanced by tokens.
    pub shard: Shard,
    /// `--max-length`, recorded with factors so fits on differently cut rows do not mix.
    pub max_length: Option<usize>,
    pub batch_size: usize,
    /// Batches captured at once (see `PassOptions::in_flight`).
    pub in_flight: usize,
    /// Memory EK-FAC may keep between its passes.
    pub cache_bytes: usize,
    /// The chat template text rows went through, if any.
    pub chat: Option<ChatTemplate>,
    pub train: Examples,
}

impl GradientRun {
    fn source<'a>(&'a self, sequences: &'a [Sequence]) -> LmSource<'a> {
        LmSource {
            model: &self.lm,
            sequences,
            tracked: &self.tracked,
        }
    }

    fn options<'a>(
        &self,
        cache_bytes: usize,
        on_batch: OnBatch<'a>,
        checkpoint: Option<&'a mut RunCheckpoint>,
    ) -> PassOptions<'a> {
        PassOptions {
            batch_size: self.batch_size,
            in_flight: self.in_flight,
            projection: self.projection,
            cache_bytes,
            on_batch,
            checkpoint,
        }
    }

    /// This run's training rows: contiguous, cut so that shards hold about the same work
    /// (each row's forward pass, from its tokens: projections grow with the length, attention
    /// with its square), so a table sorted by length still splits evenly.
    pub fn rows(&self) -> Range<usize> {
        let work: Vec<u64> = self
            .train
            .sequences
            .iter()
            .map(|s| {
                let labelled = s.labels.iter().filter(|&&l| l != IGNORE_INDEX).count();
                model::budget::sequence_work(&self.lm.config, s.input_ids.len(), labelled)
            })
            .collect();
        self.shard.rows_by_weight(&work)
    }

    /// What the output of a sharded run records: which rows of the training table it holds,
    /// and `run`, a digest of everything its sibling shards must share. `None` unsharded.
    pub fn shard_record(&self, run: String) -> Option<ShardRecord> {
        (self.shard.count > 1).then(|| {
            let rows = self.rows();
            ShardRecord {
                shard: self.shard.to_string(),
                rows: [rows.start, rows.end],
                of_rows: self.train.len(),
                split: "work".to_string(),
                run,
            }
        })
    }

    /// The padded tokens one pass over this run's rows runs through the model (see
    /// [`super::pass_work`]).
    pub fn pass_work(&self) -> u64 {
        super::pass_work(
            &self.source(&self.train.sequences),
            self.rows(),
            self.batch_size,
        )
    }

    /// The same for `queries`.
    pub fn query_work(&self, queries: &[Sequence]) -> u64 {
        super::pass_work(&self.source(queries), 0..queries.len(), self.batch_size)
    }

    /// Examples a fit of `preconditioner` passes over (two passes for EK-FAC and K-FAC on
    /// unsharded rows without given covariances).
    pub fn fit_passes(&self, preconditioner: Preconditioner, with_covariance: bool) -> usize {
        let passes = if !with_covariance && preconditioner.two_passes() && self.shard.count == 1 {
            2
        } else {
            1
        };
        passes * self.rows().len()
    }

    /// The stage [`GradientRun::fit`] leaves: eigenvalue sums against given covariances,
    /// covariances alone for a shard of a two-pass fit, complete factors otherwise.
    pub fn fit_stage(&self, preconditioner: Preconditioner, with_covariance: bool) -> Stage {
        if with_covariance {
            Stage::Lambda
        } else if preconditioner.two_passes() && self.shard.count > 1 {
            Stage::Covariance
        } else {
            Stage::Complete
        }
    }

    /// Whether stored factors are what this run's fit would write at `stage`: the same fit
    /// (model, data as tokens, labels, projection, tracked modules, --max-length), the same
    /// shard and the same covariances behind eigenvalue sums.
    pub fn fitted_as(&self, stored: &FactorMeta, stage: Stage, covariance: Option<&str>) -> bool {
        let tracked: Vec<&str> = self
            .lm
            .model
            .linears()
            .into_iter()
            .filter(|linear| self.tracked.is_match(&linear.name))
            .map(|linear| linear.name.as_str())
            .collect();
        let stored_modules: Vec<&str> = stored.modules.iter().map(|m| m.0.as_str()).collect();
        stored.stage == stage.name()
            && stored.fisher == fisher_name(self.fisher)
            && stored.projection == self.projection.map(|p| p.to_string())
            && stored.model == self.model_digest
            && stored.train == self.train.digest.sha256
            && stored.tokens.as_deref() == Some(sequences_digest(&self.train.sequences).as_str())
            && stored.max_length == self.max_length
            && stored.shard == (self.shard.count > 1).then(|| self.shard.to_string())
            && stored.covariance.as_deref() == covariance
            && stored_modules == tracked
    }

    /// Fit what `preconditioner` needs on this run's rows: complete factors, or with sharding
    /// the partial sums of one stage (covariances, or eigenvalue corrections against the
    /// merged `covariance`). With a checkpoint, the sums are saved as the passes go and a
    /// resumed fit continues from them.
    pub fn fit(
        &self,
        preconditioner: Preconditioner,
        covariance: Option<&FactorSet>,
        on_batch: OnBatch,
        checkpoint: Option<&mut RunCheckpoint>,
    ) -> Result<FactorSet> {
        let source = self.source(&self.train.sequences);
        let rows = self.rows();
        let mut options = self.options(self.cache_bytes, on_batch, checkpoint);
        if let Some(covariance) = covariance {
            super::fit_lambdas(
                &source,
                rows,
                self.fisher,
                preconditioner,
                Some(covariance),
                &mut options,
            )
        } else if preconditioner.two_passes() && self.shard.count > 1 {
            super::fit_covariances(&source, rows, self.fisher, preconditioner, &mut options)
        } else {
            super::fit_factors(&source, rows, self.fisher, preconditioner, &mut options)
        }
    }

    /// The gradients of `queries`, preconditioned once by `factors`.
    pub fn query_gradients(
        &self,
        queries: &[Sequence],
        factors: &FactorSet,
        damping: Damping,
        aggregate: QueryAggregate,
        on_batch: OnBatch,
    ) -> Result<QueryGradients> {
        let source = self.source(queries);
        let mut options = self.options(0, on_batch, None);
        super::query_gradients(
            &source,
            0..queries.len(),
            factors,
            damping,
            aggregate,
            &mut options,
        )
    }

    /// Score this run's training rows against `queries`, per example and, with `tokens`,
    /// per token. With a checkpoint, the scores so far are saved every few minutes and on a
    /// stop (with `fitted`, factors this run fitted, on the first save, so a resumed run need
    /// not fit them again), and a resumed run continues after the saved batches.
    pub fn score(
        &self,
        queries: &QueryGradients,
        tokens: bool,
        on_batch: OnBatch,
        mut checkpoint: Option<&mut RunCheckpoint>,
        mut fitted: Option<&FactorSet>,
    ) -> Result<Collected> {
        let rows = self.rows();
        let fresh = || Collected::new(queries.count, queries.names.clone(), rows.clone(), tokens);
        let (mut collected, skip) = match checkpoint.as_deref_mut().and_then(|c| c.take("scores")) {
            Some(state) => {
                let resumed = Collected::from_state(
                    queries.count,
                    queries.names.clone(),
                    rows.clone(),
                    tokens,
                    &state,
                )
                .ok_or_else(|| anyhow::anyhow!("the checkpoint's scores do not fit this run"))?;
                (resumed, state.batches)
            }
            None => (fresh(), 0),
        };
        let source = self.source(&self.train.sequences);
        let mut options = self.options(0, on_batch, checkpoint);
        let mut save = |collected: &mut Collected,
                        checkpoint: Option<&mut RunCheckpoint>,
                        done: Done|
         -> Result<()> {
            let Some(checkpoint) = checkpoint.filter(|c| c.due()) else {
                return Ok(());
            };
            if let Some(factors) = fitted.take() {
                save_fitted(checkpoint, factors, self.rows().len())?;
            }
            checkpoint.save("scores", &collected.to_state(done))
        };
        let walk = Walk {
            skip,
            state: &mut collected,
            cached: None,
            save: Some(&mut save),
        };
        super::score(
            &source,
            rows,
            queries,
            tokens,
            &mut options,
            walk,
            |collected, batch| {
                collected.add(batch);
                Ok(())
            },
        )?;
        Ok(collected)
    }

    /// This run's training rows as preconditioned gradient vectors (see
    /// [`super::preconditioned_gradients`]), batch by batch, into `walk`'s state.
    pub fn index<S>(
        &self,
        factors: &FactorSet,
        damping: Damping,
        on_batch: OnBatch,
        checkpoint: Option<&mut RunCheckpoint>,
        walk: Walk<S>,
        sink: impl FnMut(&mut S, &[(String, usize, usize)], &[usize], Vec<Vec<f64>>) -> Result<()>,
    ) -> Result<()> {
        let source = self.source(&self.train.sequences);
        let mut options = self.options(0, on_batch, checkpoint);
        super::preconditioned_gradients(
            &source,
            self.rows(),
            factors,
            damping,
            &mut options,
            walk,
            sink,
        )
    }

    /// What factors fitted by this run record about it.
    pub fn meta(&self, factors: &FactorSet, covariance: Option<String>) -> FactorMeta {
        FactorMeta {
            preconditioner: factors.preconditioner.name().to_string(),
            stage: factors.stage.name().to_string(),
            fisher: fisher_name(self.fisher),
            projection: self.projection.map(|p| p.to_string()),
            modules: factors
                .modules
                .iter()
                .map(|m| (m.name.clone(), m.in_dim, m.out_dim))
                .collect(),
            model: self.model_digest.clone(),
            train: self.train.digest.sha256.clone(),
            tokens: Some(sequences_digest(&self.train.sequences)),
            max_length: self.max_length,
            shard: (self.shard.count > 1).then(|| self.shard.to_string()),
            covariance,
        }
    }

    /// Why factors fitted elsewhere do not fit this run (other model, projection, Fisher or
    /// preconditioner), if they do not.
    pub fn mismatch(&self, meta: &FactorMeta, preconditioner: Preconditioner) -> Option<String> {
        let projection = self.projection.map(|p| p.to_string());
        let fisher = fisher_name(self.fisher);
        let run = RunFit {
            preconditioner: preconditioner.name(),
            model: &self.model_digest,
            projection: projection.as_deref(),
            fisher: &fisher,
            max_length: self.max_length,
        };
        meta.mismatch(&run).map(|m| m.to_string())
    }

    /// Add the model's and the training table's digests (and `extra`'s) to `provenance`.
    pub fn add_inputs(&self, provenance: &mut Provenance, extra: Option<&Examples>) {
        for digest in &self.model_inputs {
            provenance.add_input(digest.clone());
        }
        provenance.add_input(self.train.digest.clone());
        if let Some(extra) = extra {
            provenance.add_input(extra.digest.clone());
        }
    }
}

/// How factor metadata names a Fisher.
pub(crate) fn fisher_name(fisher: Fisher) -> String {
    match fisher {
        Fisher::Empirical => "empirical".to_string(),
        Fisher::Sampled { seed } => format!("sampled:{seed}"),
    }
}

/// Keep factors a run fitted in its checkpoint, complete, in place of the partial sums of
/// their passes, so a resumed run goes straight to what came after the fit.
pub fn save_fitted(checkpoint: &mut RunCheckpoint, factors: &FactorSet, rows: usize) -> Result<()> {
    checkpoint.save("factors", &factors.to_state(0, rows, true))?;
    checkpoint.discard("covariances")?;
    checkpoint.discard("lambdas")
}

/// The factors a checkpoint kept complete (see [`save_fitted`]), when it holds them.
pub fn fitted_in(
    checkpoint: &mut RunCheckpoint,
    preconditioner: Preconditioner,
) -> Result<Option<FactorSet>> {
    if !checkpoint.complete("factors") {
        return Ok(None);
    }
    let state = checkpoint.take("factors").expect("checked above");
    FactorSet::from_state(preconditioner, Stage::Complete, &state).map(Some)
}

/// sha256 over token sequences (ids and labels, with their lengths): what a table became
/// after its text columns, chat template and `--max-length` were applied.
pub fn sequences_digest(sequences: &[Sequence]) -> String {
    let mut hash = Sha256::new();
    for sequence in sequences {
        for values in [&sequence.input_ids, &sequence.labels] {
            hash.update((values.len() as u64).to_le_bytes());
            for v in values {
                hash.update(v.to_le_bytes());
            }
        }
    }
    format!("{:x}", hash.finalize())
}

/// sha256 over the model's files (config and weights, or the GGUF file), and each file's
/// digest for provenance.
pub fn model_digest(path: &Path) -> Result<(String, Vec<InputDigest>)> {
    let files = model::model_files(path)?;
    let mut hash = Sha256::new();
    let mut digests = Vec::new();
    for file in files {
        let digest = InputDigest::of_file(file.display().to_string(), &file)?;
        hash.update(digest.sha256.as_bytes());
        digests.push(digest);
    }
    Ok((format!("{:x}", hash.finalize()), digests))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Architecture, DEFAULT_TRACKED, LmConfig};
    use burn::tensor::{DType, Device};
    use polars::prelude::Column;

    fn run(shard: Shard) -> GradientRun {
        with_weights(shard, false)
    }

    /// Frozen weights, as commands load models for influence, unless `trainable`.
    fn with_weights(shard: Shard, trainable: bool) -> GradientRun {
        let mut config = LmConfig::new(Architecture::Llama, 16, 8, 16, 1, 2, 1);
        config.max_position_embeddings = 16;
        let lm =
            LanguageModel::init(config, None, 0, &Device::flex(), DType::F32, trainable).unwrap();
        let sequences: Vec<Sequence> = (0..5)
            .map(|i| Sequence::prompt_response(&[1, 2 + i % 3], &[4 + i % 5, 9]))
            .collect();
        let ids = Column::new("id".into(), (0..5u32).collect::<Vec<_>>());
        let train = Examples::bare("train", ids, sequences);
        GradientRun {
            lm,
            model_digest: "m".into(),
            model_inputs: Vec::new(),
            tracked: Regex::new(DEFAULT_TRACKED).unwrap(),
            projection: None,
            fisher: Fisher::Empirical,
            max_length: None,
            shard,
            batch_size: 2,
            in_flight: 2,
            cache_bytes: 1 << 20,
            chat: None,
            train,
        }
    }

    #[test]
    fn fits_preconditions_and_scores_every_row_of_the_shard() {
        let whole = run(Shard::WHOLE);
        assert_eq!(whole.fit_passes(Preconditioner::Ekfac, false), 10);
        assert_eq!(whole.fit_passes(Preconditioner::Diagonal, false), 5);
        let (mut rows, mut work) = (0, 0);
        let factors = whole
            .fit(
                Preconditioner::Ekfac,
                None,
                &mut |advance| {
                    rows += advance.rows;
                    work += advance.work;
                    Ok(())
                },
                None,
            )
            .unwrap();
        // Both passes count their rows; only the first runs the model (the second rotates the
        // kept stacks), and the work reported says so.
        assert_eq!(rows, 10);
        assert!(whole.pass_work() > 0);
        assert_eq!(work, whole.pass_work());
        assert_eq!(factors.stage, super::super::Stage::Complete);
        assert_eq!(factors.modules.len(), 3);
        let queries: Vec<Sequence> = whole.train.sequences[..2].to_vec();
        let gradients = whole
            .query_gradients(
                &queries,
                &factors,
                Damping::Heuristic,
                QueryAggregate::None,
                &mut |_| Ok(()),
            )
            .unwrap();
        assert_eq!(gradients.count, 2);
        let collected = whole
            .score(&gradients, true, &mut |_| Ok(()), None, None)
            .unwrap();
        assert_eq!(collected.rows, 0..5);
        assert_eq!(collected.examples.len(), 2);
        assert!(collected.examples[0].iter().all(|s| s.is_finite()));
        assert_eq!(collected.tokens.as_ref().unwrap().len(), 5);

        let meta = whole.meta(&factors, None);
        assert_eq!(
            (meta.fisher.as_str(), meta.shard.as_ref()),
            ("empirical", None)
        );
        assert!(whole.mismatch(&meta, Preconditioner::Ekfac).is_none());
        assert!(whole.mismatch(&meta, Preconditioner::Kfac).is_some());
        // A stop request from the batch callback ends the pass with its error.
        let stopped = whole.fit(
            Preconditioner::Diagonal,
            None,
            &mut |_| anyhow::bail!("stop"),
            None,
        );
        assert_eq!(stopped.unwrap_err().to_string(), "stop");
    }

    #[test]
    fn trainable_weights_run_one_batch_at_a_time_to_the_same_factors() {
        // Two batches side by side would build both backward passes on the trainable
        // weights' one graph, which deadlocked about one fit in twenty; the pass runs them one
        // at a time instead. Repeated, so a lost guard shows.
        let fit = |trainable: bool| {
            with_weights(Shard::WHOLE, trainable)
                .fit(Preconditioner::Ekfac, None, &mut |_| Ok(()), None)
                .unwrap()
                .to_arrays()
        };
        let frozen = fit(false);
        for _ in 0..10 {
            assert_eq!(fit(true), frozen);
        }
    }

    #[test]
    fn a_shard_fits_one_stage_on_its_rows() {
        let part = run(Shard { index: 1, count: 2 });
        assert_eq!(part.rows(), 2..5);
        assert_eq!(part.fit_passes(Preconditioner::Ekfac, false), 3);
        let factors = part
            .fit(Preconditioner::Ekfac, None, &mut |_| Ok(()), None)
            .unwrap();
        assert_eq!(factors.stage, super::super::Stage::Covariance);
        assert_eq!(part.meta(&factors, None).shard.as_deref(), Some("1/2"));
        assert_eq!(fisher_name(Fisher::Sampled { seed: 3 }), "sampled:3");
    }
}
