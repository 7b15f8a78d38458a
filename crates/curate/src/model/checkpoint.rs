//! Training checkpoints: the model, the optimizer state and the step, in one directory
//! written atomically, with a fingerprint of everything a resumed run must agree with.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use sha2::{Digest, Sha256};
use tokenizers::Tokenizer;

use super::LanguageModel;
use super::encode::Encoding;
use super::train::{TrainSettings, Trainer};
use crate::error::InputError;
use crate::table::OutputDir;

const TRAINER_STATE: &str = "trainer.json";
const OPTIMIZER_STATE: &str = "optimizer.bpk";
const MODEL: &str = "model";

/// The checkpoint was made by a run with other data, settings, model or encoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the checkpoint in {dir} was made with other data or settings")]
pub struct CheckpointMismatch {
    pub dir: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct TrainerState {
    step: usize,
    fingerprint: String,
}

/// One run's checkpoint directory.
pub struct Checkpoint {
    pub dir: PathBuf,
    /// What the run's data and settings hash to.
    pub fingerprint: String,
}

impl Checkpoint {
    /// Whether `dir` holds a checkpoint to resume from.
    pub fn exists(dir: &Path) -> bool {
        dir.join(TRAINER_STATE).is_file()
    }

    /// The model saved in the checkpoint in `dir`.
    pub fn model_dir(dir: &Path) -> PathBuf {
        dir.join(MODEL)
    }

    /// Write the model, the optimizer state and the step, replacing an earlier checkpoint
    /// only once the new one is complete.
    pub fn save(&self, lm: &LanguageModel, trainer: &Trainer) -> Result<()> {
        let staged = OutputDir::create(&self.dir, true)?;
        let model_dir = staged.path().join(MODEL);
        std::fs::create_dir(&model_dir)
            .with_context(|| format!("cannot create {}", model_dir.display()))?;
        lm.save(&model_dir, &[])?;
        trainer.save_optimizer(&staged.path().join(OPTIMIZER_STATE))?;
        let state = TrainerState {
            step: trainer.step,
            fingerprint: self.fingerprint.clone(),
        };
        std::fs::write(
            staged.path().join(TRAINER_STATE),
            serde_json::to_string_pretty(&state)?,
        )?;
        staged.commit()
    }

    /// Continue `trainer` from the checkpoint: its optimizer state and step. A checkpoint of
    /// another run is a [`CheckpointMismatch`].
    pub fn restore(&self, trainer: &mut Trainer) -> Result<()> {
        let path = self.dir.join(TRAINER_STATE);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let state: TrainerState = serde_json::from_str(&text).map_err(|e| {
            InputError::new(
                path.display().to_string(),
                format!("not a trainer state: {e}"),
            )
        })?;
        if state.fingerprint != self.fingerprint {
            return Err(CheckpointMismatch {
                dir: self.dir.display().to_string(),
            }
            .into());
        }
        trainer.load_optimizer(&self.dir.join(OPTIMIZER_STATE))?;
        trainer.step = state.step;
        Ok(())
    }

    /// Remove the checkpoint (a finished run no longer needs it).
    pub fn remove(&self) -> Result<()> {
        if self.dir.exists() {
            std::fs::remove_dir_all(&self.dir)
                .with_context(|| format!("cannot remove {}", self.dir.display()))?;
        }
        Ok(())
    }
}

/// What a checkpoint must agree with to be resumed: data, settings, model shape, tokenizer,
/// and how rows became sequences (chat template, system message, length limit).
pub fn fingerprint(
    data_sha256: &str,
    settings: &TrainSettings,
    lm: &LanguageModel,
    tok: &Tokenizer,
    encoding: &Encoding,
    weights: Option<&[f64]>,
) -> String {
    let mut hash = Sha256::new();
    if let Some(weights) = weights {
        hash.update(b"weights\0");
        for w in weights {
            hash.update(w.to_le_bytes());
        }
    }
    hash.update(data_sha256.as_bytes());
    hash.update(format!("{settings:?}").as_bytes());
    hash.update(lm.config.to_json().as_bytes());
    hash.update(tok.to_string(false).unwrap_or_default().as_bytes());
    if let Some(template) = encoding.chat {
        hash.update(b"chat template\0");
        hash.update(template.source().as_bytes());
        hash.update(encoding.system.unwrap_or_default().as_bytes());
    }
    format!("{:x}", hash.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::train::{RunEnd, StopPlan, run_steps};
    use crate::model::{Architecture, LmConfig, Sequence};
    use burn::tensor::{DType, Device};

    fn tiny_lm() -> LanguageModel {
        let mut config = LmConfig::new(Architecture::Llama, 16, 8, 16, 1, 2, 1);
        config.max_position_embeddings = 16;
        LanguageModel::init(config, None, 0, &Device::flex(), DType::F32, true).unwrap()
    }

    fn data() -> Vec<Sequence> {
        (0..6)
            .map(|i| Sequence::prompt_response(&[1, 2 + i % 3], &[4 + i % 5, 9]))
            .collect()
    }

    fn settings() -> TrainSettings {
        TrainSettings {
            epochs: 2,
            batch_size: 2,
            warmup_steps: 1,
            ..TrainSettings::default()
        }
    }

    #[test]
    fn a_run_stops_checkpoints_and_resumes_only_with_its_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let sequences = data();
        let lengths: Vec<usize> = sequences.iter().map(Sequence::len).collect();
        let checkpoint = Checkpoint {
            dir: dir.path().join("run.checkpoint"),
            fingerprint: "abc".into(),
        };
        let mut lm = tiny_lm();
        let mut trainer = Trainer::new(settings(), lengths.clone());
        let mut seen = Vec::new();
        let plan = StopPlan {
            checkpoint_every: None,
            stop_after: Some(2),
        };
        let run = run_steps(
            &mut lm,
            &mut trainer,
            &sequences,
            &checkpoint,
            plan,
            &mut |r| seen.push(r.step),
            &|| false,
        )
        .unwrap();
        assert_eq!((run.end, run.steps), (RunEnd::StoppedAfter, 2));
        assert_eq!(seen, [1, 2]);
        assert!(run.last_loss.is_finite() && run.tokens > 0);
        assert!(Checkpoint::exists(&checkpoint.dir));
        assert!(
            Checkpoint::model_dir(&checkpoint.dir)
                .join("config.json")
                .is_file()
        );

        let mut resumed = Trainer::new(settings(), lengths.clone());
        checkpoint.restore(&mut resumed).unwrap();
        assert_eq!(resumed.step, 2);
        let other = Checkpoint {
            fingerprint: "other".into(),
            ..checkpoint
        };
        let err = other
            .restore(&mut Trainer::new(settings(), lengths))
            .unwrap_err();
        assert!(err.downcast_ref::<CheckpointMismatch>().is_some());

        // Interrupted before the first step: the checkpoint holds step 2 still.
        let run = run_steps(
            &mut lm,
            &mut resumed,
            &sequences,
            &other,
            StopPlan::default(),
            &mut |_| {},
            &|| true,
        )
        .unwrap();
        assert_eq!((run.end, run.steps), (RunEnd::Interrupted, 0));
        other.remove().unwrap();
        assert!(!other.dir.exists());
    }
}
