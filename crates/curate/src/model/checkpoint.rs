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
/// The file that marks a directory as a checkpoint curate wrote, so a finished run deletes
/// only what it recognises.
const MARKER: &str = ".curate-checkpoint";
const MARKER_TEXT: &str =
    "A training checkpoint written by curate train; removed when the run finishes.\n";
/// Every entry a checkpoint directory holds.
const ENTRIES: [&str; 4] = [MARKER, TRAINER_STATE, OPTIMIZER_STATE, MODEL];

/// A checkpoint directory that cannot be used without risking a user's files.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointPlace {
    /// The checkpoint directory is the model output, or inside it, or holds it.
    #[error("checkpoint directory {checkpoint} overlaps the output {out}")]
    OverlapsOutput { checkpoint: String, out: String },
    /// An existing, non-empty directory (or a file) that is not a curate checkpoint.
    #[error("{0} holds files that are not a curate checkpoint; it is never written to or removed")]
    Foreign(String),
}

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
        Checkpoint::recognised(dir) && dir.join(TRAINER_STATE).is_file()
    }

    /// Whether `dir` is a directory curate wrote as a checkpoint: it carries the marker, or
    /// (checkpoints of earlier versions) holds the trainer state and nothing but checkpoint
    /// entries.
    pub fn recognised(dir: &Path) -> bool {
        if !dir.is_dir() {
            return false;
        }
        if dir.join(MARKER).is_file() {
            return true;
        }
        let Ok(entries) = std::fs::read_dir(dir) else {
            return false;
        };
        let names: Vec<String> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.iter().any(|n| n == TRAINER_STATE)
            && names.iter().all(|n| ENTRIES.contains(&n.as_str()))
    }

    /// Check that `dir` can hold the checkpoint of a run writing its model to `out`: it must
    /// not be `out`, lie inside it or contain it, and where it exists it must be a curate
    /// checkpoint or an empty directory.
    pub fn check_place(dir: &Path, out: &Path) -> Result<(), CheckpointPlace> {
        check_place(dir, out, Checkpoint::recognised)
    }

    fn replaceable(dir: &Path) -> bool {
        replaceable(dir, Checkpoint::recognised)
    }

    /// The model saved in the checkpoint in `dir`.
    pub fn model_dir(dir: &Path) -> PathBuf {
        dir.join(MODEL)
    }

    /// Write the model, the optimizer state and the step, replacing an earlier checkpoint
    /// only once the new one is complete.
    pub fn save(&self, lm: &LanguageModel, trainer: &Trainer) -> Result<()> {
        // Only a checkpoint (or an empty directory) is ever replaced, whatever appeared there
        // since the run started.
        if !Checkpoint::replaceable(&self.dir) {
            return Err(CheckpointPlace::Foreign(self.dir.display().to_string()).into());
        }
        let staged = OutputDir::create(&self.dir, true)?;
        std::fs::write(staged.path().join(MARKER), MARKER_TEXT)
            .with_context(|| format!("cannot write {}", self.dir.display()))?;
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

    /// The step the checkpoint in `dir` reached, when it holds one.
    pub fn step(dir: &Path) -> Option<usize> {
        let text = std::fs::read_to_string(dir.join(TRAINER_STATE)).ok()?;
        serde_json::from_str::<TrainerState>(&text)
            .ok()
            .map(|s| s.step)
    }

    /// Remove the checkpoint (a finished run no longer needs it): only a directory curate
    /// recognises as its checkpoint, and in it only the entries a checkpoint has; the directory
    /// itself goes when nothing else is left in it.
    pub fn remove(&self) -> Result<()> {
        if !Checkpoint::recognised(&self.dir) {
            return Ok(());
        }
        for name in ENTRIES {
            let path = self.dir.join(name);
            let removed = match std::fs::symlink_metadata(&path) {
                Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(&path),
                Ok(_) => std::fs::remove_file(&path),
                Err(_) => continue,
            };
            removed.with_context(|| format!("cannot remove {}", path.display()))?;
        }
        // Fails, leaving the directory, when anything else is in it.
        let _ = std::fs::remove_dir(&self.dir);
        Ok(())
    }
}

/// Check that `dir` can hold a checkpoint of a run writing `out`: not `out`, not inside it
/// or holding it, and where it exists, one `recognised` as curate's or an empty directory.
pub(crate) fn check_place(
    dir: &Path,
    out: &Path,
    recognised: fn(&Path) -> bool,
) -> Result<(), CheckpointPlace> {
    use crate::table::place::is_within;
    if is_within(dir, out) || is_within(out, dir) {
        return Err(CheckpointPlace::OverlapsOutput {
            checkpoint: dir.display().to_string(),
            out: out.display().to_string(),
        });
    }
    if replaceable(dir, recognised) {
        Ok(())
    } else {
        Err(CheckpointPlace::Foreign(dir.display().to_string()))
    }
}

/// Whether a checkpoint may be written at `dir`: nothing is there, an empty directory, or a
/// checkpoint curate wrote (`recognised`).
pub(crate) fn replaceable(dir: &Path, recognised: fn(&Path) -> bool) -> bool {
    std::fs::symlink_metadata(dir).is_err()
        || recognised(dir)
        || (dir.is_dir() && std::fs::read_dir(dir).is_ok_and(|mut e| e.next().is_none()))
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

    #[test]
    fn only_recognised_checkpoints_are_written_over_or_removed() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("model");
        let user = dir.path().join("mine");
        std::fs::create_dir(&user).unwrap();
        std::fs::write(user.join("notes.txt"), b"keep").unwrap();
        assert!(matches!(
            Checkpoint::check_place(&user, &out),
            Err(CheckpointPlace::Foreign(_))
        ));
        for overlapping in [out.clone(), out.join("ckpt"), dir.path().to_path_buf()] {
            assert!(matches!(
                Checkpoint::check_place(&overlapping, &out),
                Err(CheckpointPlace::OverlapsOutput { .. })
            ));
        }
        let fresh = dir.path().join("model.checkpoint");
        Checkpoint::check_place(&fresh, &out).unwrap();
        std::fs::create_dir(&fresh).unwrap();
        Checkpoint::check_place(&fresh, &out).unwrap();

        // Removing a user's directory as a checkpoint does nothing; saving over it fails.
        let theirs = Checkpoint {
            dir: user.clone(),
            fingerprint: "f".into(),
        };
        theirs.remove().unwrap();
        assert!(user.join("notes.txt").is_file());
        let lm = tiny_lm();
        let trainer = Trainer::new(settings(), vec![4; 6]);
        assert!(theirs.save(&lm, &trainer).is_err());
        assert!(user.join("notes.txt").is_file());

        // A saved checkpoint is recognised, and its removal leaves a file a user added.
        let ours = Checkpoint {
            dir: fresh.clone(),
            fingerprint: "f".into(),
        };
        ours.save(&lm, &trainer).unwrap();
        assert!(Checkpoint::recognised(&fresh) && Checkpoint::exists(&fresh));
        assert_eq!(Checkpoint::step(&fresh), Some(0));
        Checkpoint::check_place(&fresh, &out).unwrap();
        std::fs::write(fresh.join("added.txt"), b"x").unwrap();
        ours.remove().unwrap();
        assert!(fresh.join("added.txt").is_file());
        assert!(!fresh.join(TRAINER_STATE).exists());
        std::fs::remove_file(fresh.join("added.txt")).unwrap();
        ours.save(&lm, &trainer).unwrap();
        ours.remove().unwrap();
        assert!(!fresh.exists());
    }
}
