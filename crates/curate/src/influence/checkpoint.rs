//! Progress of a long influence run (factor fits, scores, index builds), saved every few
//! minutes and when a stop is requested, so that a pre-empted run continues from its last
//! saved batch instead of starting over.
//!
//! A checkpoint is a directory with a marker file and one safetensors file per pass (`f64`
//! arrays, the pass's header in the metadata), each replaced atomically; an index build also
//! keeps its `gradients.bin` there while it grows. Every header carries the run's fingerprint,
//! so progress of another run is never mixed in.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};

use crate::error::InputError;
use crate::model::checkpoint::{CheckpointMismatch, CheckpointPlace};

/// The file that marks a directory as an influence checkpoint curate wrote; a finished run
/// removes only directories that carry it.
const MARKER: &str = ".curate-checkpoint";
const MARKER_TEXT: &str =
    "Progress of an interrupted curate influence run; removed when the run finishes.\n";
const HEADER_KEY: &str = "curate.progress";
const PASS_EXT: &str = "safetensors";
/// The index rows written so far (an index build's checkpoint only).
pub const GRADIENTS_FILE: &str = super::index::GRADIENTS_FILE;

/// The passes a run saves, in the order they run; each is one file in the checkpoint.
pub const PASSES: [&str; 5] = ["covariances", "lambdas", "factors", "scores", "index"];

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Header {
    fingerprint: String,
    pass: String,
    /// Batches of the pass done, in the pass's fixed batch order.
    batches: usize,
    /// Rows those batches held (for progress).
    rows: usize,
    /// The batch size the batches were cut with.
    batch_size: usize,
    complete: bool,
    #[serde(default)]
    names: Vec<String>,
}

/// One pass's saved progress: `batches` of its batches are done, and `arrays` hold what they
/// added up to (sums, scores), exactly as they were in memory.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PassState {
    pub batches: usize,
    pub rows: usize,
    pub complete: bool,
    /// Names the arrays do not carry in order (the tracked modules).
    pub names: Vec<String>,
    pub arrays: Vec<(String, Vec<usize>, Vec<f64>)>,
}

impl PassState {
    /// The array named `name`, if saved.
    pub fn array(&self, name: &str) -> Option<(&[usize], &[f64])> {
        self.arrays
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, shape, values)| (shape.as_slice(), values.as_slice()))
    }
}

/// The checkpoint of one run: where it lives, what the run hashes to, and when to save next.
pub struct RunCheckpoint {
    dir: PathBuf,
    fingerprint: String,
    batch_size: usize,
    every: Duration,
    last_save: Instant,
    /// Passes loaded from an earlier run (on `--resume`), by name.
    loaded: HashMap<String, PassState>,
}

impl RunCheckpoint {
    /// A checkpoint at `dir` for a run hashing to `fingerprint`, cutting batches of
    /// `batch_size`, saved every `every` (and when a stop is requested). Nothing is written
    /// until the first save.
    pub fn new(dir: &Path, fingerprint: String, batch_size: usize, every: Duration) -> Self {
        RunCheckpoint {
            dir: dir.to_path_buf(),
            fingerprint,
            batch_size,
            every,
            last_save: Instant::now(),
            loaded: HashMap::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether `dir` is a checkpoint curate wrote (it carries the marker).
    pub fn recognised(dir: &Path) -> bool {
        dir.is_dir() && dir.join(MARKER).is_file()
    }

    /// Whether `dir` holds saved progress of some run.
    pub fn exists(dir: &Path) -> bool {
        RunCheckpoint::recognised(dir)
            && PASSES
                .iter()
                .any(|pass| dir.join(format!("{pass}.{PASS_EXT}")).is_file())
    }

    /// Check that `dir` can hold the checkpoint of a run writing `out` (see
    /// [`crate::model::checkpoint::check_place`]).
    pub fn check_place(dir: &Path, out: &Path) -> Result<(), CheckpointPlace> {
        crate::model::checkpoint::check_place(dir, out, RunCheckpoint::recognised)
    }

    fn replaceable(dir: &Path) -> bool {
        crate::model::checkpoint::replaceable(dir, RunCheckpoint::recognised)
    }

    /// Read every saved pass, for a resumed run. A pass saved by another run (other data,
    /// settings or model) is a [`CheckpointMismatch`]; a batch size other than this run's is
    /// one too, unless `adopt_batch_size` (the batch size was chosen automatically), when the
    /// saved one is taken and returned.
    pub fn load(&mut self, adopt_batch_size: bool) -> Result<Option<usize>> {
        let mut adopted = None;
        for pass in PASSES {
            let path = self.pass_path(pass);
            if !path.is_file() {
                continue;
            }
            let bytes =
                std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            let (header, state) = decode(&bytes).map_err(|reason| {
                InputError::new(
                    path.display().to_string(),
                    format!("not a curate checkpoint: {reason}"),
                )
            })?;
            if header.fingerprint != self.fingerprint || header.pass != pass {
                return Err(CheckpointMismatch {
                    dir: self.dir.display().to_string(),
                }
                .into());
            }
            if header.batch_size != self.batch_size {
                if !adopt_batch_size || adopted.is_some_and(|b| b != header.batch_size) {
                    return Err(CheckpointMismatch {
                        dir: self.dir.display().to_string(),
                    }
                    .into());
                }
                adopted = Some(header.batch_size);
            }
            self.loaded.insert(pass.to_string(), state);
        }
        if let Some(batch_size) = adopted {
            self.batch_size = batch_size;
        }
        Ok(adopted)
    }

    /// What an earlier run saved of `pass`, handed over once.
    pub fn take(&mut self, pass: &str) -> Option<PassState> {
        self.loaded.remove(pass)
    }

    /// Rows of `pass` an earlier run finished (0 when nothing was saved), without taking it.
    pub fn rows_done(&self, pass: &str) -> usize {
        self.loaded.get(pass).map_or(0, |s| s.rows)
    }

    /// Whether a saved `pass` is complete.
    pub fn complete(&self, pass: &str) -> bool {
        self.loaded.get(pass).is_some_and(|s| s.complete)
    }

    /// Whether to save now: the interval has passed since the last save, or a stop was
    /// requested (the pass stops right after).
    pub fn due(&self) -> bool {
        self.last_save.elapsed() >= self.every || crate::interrupt::requested()
    }

    /// Where a checkpoint file of this run lives (an index build's `gradients.bin`), creating
    /// the directory with its marker when needed.
    pub fn file(&self, name: &str) -> Result<PathBuf> {
        self.prepare()?;
        Ok(self.dir.join(name))
    }

    fn prepare(&self) -> Result<()> {
        if !RunCheckpoint::replaceable(&self.dir) {
            return Err(CheckpointPlace::Foreign(self.dir.display().to_string()).into());
        }
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        let marker = self.dir.join(MARKER);
        if !marker.is_file() {
            std::fs::write(&marker, MARKER_TEXT)
                .with_context(|| format!("cannot write {}", marker.display()))?;
        }
        Ok(())
    }

    fn pass_path(&self, pass: &str) -> PathBuf {
        self.dir.join(format!("{pass}.{PASS_EXT}"))
    }

    /// Save `state` as `pass`'s progress, replacing the earlier save only once the new one is
    /// on disk.
    pub fn save(&mut self, pass: &str, state: &PassState) -> Result<()> {
        debug_assert!(PASSES.contains(&pass), "unknown pass {pass}");
        self.prepare()?;
        let header = Header {
            fingerprint: self.fingerprint.clone(),
            pass: pass.to_string(),
            batches: state.batches,
            rows: state.rows,
            batch_size: self.batch_size,
            complete: state.complete,
            names: state.names.clone(),
        };
        let bytes = encode(&header, &state.arrays)?;
        let path = self.pass_path(pass);
        let staged = self.dir.join(format!(".{pass}.{PASS_EXT}.partial"));
        {
            use std::io::Write;
            let mut file = std::fs::File::create(&staged)
                .with_context(|| format!("cannot write {}", staged.display()))?;
            file.write_all(&bytes)
                .and_then(|()| file.sync_all())
                .with_context(|| format!("cannot write {}", staged.display()))?;
        }
        std::fs::rename(&staged, &path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        self.last_save = Instant::now();
        Ok(())
    }

    /// Delete `pass`'s saved progress (superseded by a later pass's save).
    pub fn discard(&mut self, pass: &str) -> Result<()> {
        self.loaded.remove(pass);
        if !RunCheckpoint::recognised(&self.dir) {
            return Ok(());
        }
        let path = self.pass_path(pass);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("cannot remove {}", path.display()))
            }
            _ => Ok(()),
        }
    }

    /// Save `pass` when [`RunCheckpoint::due`]; `state` is built only then.
    pub fn save_if_due(&mut self, pass: &str, state: impl FnOnce() -> PassState) -> Result<()> {
        if self.due() {
            self.save(pass, &state())?;
        }
        Ok(())
    }

    /// Remove the checkpoint (the run finished): only a directory that carries the marker,
    /// and in it only what a checkpoint holds; the directory itself goes when nothing else is
    /// left in it.
    pub fn remove(&self) -> Result<()> {
        if !RunCheckpoint::recognised(&self.dir) {
            return Ok(());
        }
        let mut names: Vec<String> = PASSES
            .iter()
            .flat_map(|p| {
                [
                    format!("{p}.{PASS_EXT}"),
                    format!(".{p}.{PASS_EXT}.partial"),
                ]
            })
            .collect();
        names.push(GRADIENTS_FILE.to_string());
        names.push(MARKER.to_string());
        for name in names {
            let path = self.dir.join(name);
            if std::fs::symlink_metadata(&path).is_ok() {
                std::fs::remove_file(&path)
                    .with_context(|| format!("cannot remove {}", path.display()))?;
            }
        }
        // Fails, leaving the directory, when anything else is in it.
        let _ = std::fs::remove_dir(&self.dir);
        Ok(())
    }
}

fn encode(header: &Header, arrays: &[(String, Vec<usize>, Vec<f64>)]) -> Result<Vec<u8>> {
    let bytes: Vec<Vec<u8>> = arrays
        .iter()
        .map(|(_, _, values)| values.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let views = arrays
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), data)| {
            TensorView::new(Dtype::F64, shape.clone(), data).map(|view| (name.clone(), view))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let metadata = HashMap::from([(
        HEADER_KEY.to_string(),
        serde_json::to_string(header).expect("headers serialise"),
    )]);
    Ok(safetensors::serialize(views, Some(metadata))?)
}

fn decode(bytes: &[u8]) -> Result<(Header, PassState), String> {
    let (_, metadata) = SafeTensors::read_metadata(bytes).map_err(|e| e.to_string())?;
    let text = metadata
        .metadata()
        .as_ref()
        .and_then(|m| m.get(HEADER_KEY))
        .ok_or_else(|| format!("no {HEADER_KEY} header"))?;
    let header: Header = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let tensors = SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
    let mut arrays = Vec::new();
    for (name, view) in tensors.tensors() {
        if view.dtype() != Dtype::F64 {
            return Err(format!("{name} is not f64"));
        }
        let values = view
            .data()
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        arrays.push((name, view.shape().to_vec(), values));
    }
    arrays.sort_by(|a, b| a.0.cmp(&b.0));
    let state = PassState {
        batches: header.batches,
        rows: header.rows,
        complete: header.complete,
        names: header.names.clone(),
        arrays,
    };
    Ok((header, state))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(batches: usize) -> PassState {
        PassState {
            batches,
            rows: batches * 4,
            complete: false,
            names: vec!["m".into()],
            arrays: vec![
                ("a".into(), vec![2, 2], vec![1.0, -0.1, 1e-300, f64::MAX]),
                ("b".into(), vec![3], vec![0.1 + 0.2, 2.0, 3.0]),
            ],
        }
    }

    #[test]
    fn a_saved_pass_comes_back_exactly_and_only_to_the_same_run() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("out.checkpoint");
        let mut checkpoint = RunCheckpoint::new(&dir, "run-a".into(), 8, Duration::ZERO);
        assert!(!RunCheckpoint::exists(&dir));
        checkpoint.save("scores", &state(3)).unwrap();
        checkpoint.save("scores", &state(5)).unwrap();
        assert!(RunCheckpoint::exists(&dir));

        let mut resumed = RunCheckpoint::new(&dir, "run-a".into(), 8, Duration::ZERO);
        assert_eq!(resumed.load(false).unwrap(), None);
        assert_eq!(resumed.rows_done("scores"), 20);
        assert_eq!(resumed.take("scores"), Some(state(5)));
        assert_eq!(resumed.take("scores"), None);

        let mut other = RunCheckpoint::new(&dir, "run-b".into(), 8, Duration::ZERO);
        assert!(other.load(false).unwrap_err().is::<CheckpointMismatch>());
        let mut other_batches = RunCheckpoint::new(&dir, "run-a".into(), 4, Duration::ZERO);
        assert!(other_batches.load(false).is_err());
        let mut auto = RunCheckpoint::new(&dir, "run-a".into(), 4, Duration::ZERO);
        assert_eq!(auto.load(true).unwrap(), Some(8));
    }

    #[test]
    fn removal_takes_only_what_the_checkpoint_wrote() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("c");
        let mut checkpoint = RunCheckpoint::new(&dir, "run".into(), 1, Duration::ZERO);
        checkpoint.save("factors", &state(1)).unwrap();
        std::fs::write(checkpoint.file(GRADIENTS_FILE).unwrap(), b"rows").unwrap();
        std::fs::write(dir.join("notes.txt"), b"mine").unwrap();
        checkpoint.remove().unwrap();
        assert!(dir.join("notes.txt").is_file());
        assert!(!dir.join(GRADIENTS_FILE).exists());
        assert!(!RunCheckpoint::recognised(&dir));
        std::fs::remove_file(dir.join("notes.txt")).unwrap();
        checkpoint.save("factors", &state(1)).unwrap();
        checkpoint.remove().unwrap();
        assert!(!dir.exists());

        // A directory of someone else's files is never written to or removed from, even
        // where it holds a file named like a pass.
        let foreign = root.path().join("foreign");
        std::fs::create_dir(&foreign).unwrap();
        std::fs::write(foreign.join("x"), b"x").unwrap();
        std::fs::write(foreign.join("lambdas.safetensors"), b"mine").unwrap();
        let mut misplaced = RunCheckpoint::new(&foreign, "run".into(), 1, Duration::ZERO);
        assert!(misplaced.save("scores", &state(1)).is_err());
        misplaced.discard("lambdas").unwrap();
        misplaced.remove().unwrap();
        assert_eq!(
            std::fs::read(foreign.join("lambdas.safetensors")).unwrap(),
            b"mine"
        );
        assert!(foreign.join("x").is_file());
        assert!(RunCheckpoint::check_place(&foreign, &root.path().join("out")).is_err());
        assert!(
            RunCheckpoint::check_place(&root.path().join("out/c"), &root.path().join("out"))
                .is_err()
        );
    }
}
