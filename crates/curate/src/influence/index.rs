//! A gradient index: every training example's preconditioned gradient over the tracked modules,
//! stored once as a contiguous row-major matrix, so that scoring a new query set needs only
//! the queries' own gradients and one dot product per training row (LoGra and bergson build
//! their indexes the same way).
//!
//! An index directory holds `gradients.bin` (`rows x dim` little-endian f32, f16 or f64, row-major,
//! memory-mapped when read), `rows.parquet` (the ids and carried columns of its training rows)
//! and `manifest.json` (what the gradients were computed from). Only bytes and matrices here;
//! the command reads and writes the tables.

use std::fs::File;
use std::ops::Range;
use std::path::Path;

use anyhow::{Context as _, Result};
use faer::Mat;
use serde::{Deserialize, Serialize};

use crate::error::InputError;
use crate::table::ShardRecord;

pub const MANIFEST_FILE: &str = "manifest.json";
pub const GRADIENTS_FILE: &str = "gradients.bin";
pub const ROWS_FILE: &str = "rows.parquet";
const FORMAT: &str = "curate-gradient-index/1";

/// How the gradients are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreDtype {
    F64,
    F32,
    F16,
}

impl StoreDtype {
    pub fn bytes(self) -> usize {
        match self {
            StoreDtype::F64 => 8,
            StoreDtype::F32 => 4,
            StoreDtype::F16 => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            StoreDtype::F64 => "f64",
            StoreDtype::F32 => "f32",
            StoreDtype::F16 => "f16",
        }
    }

    fn encode(self, values: &[f64], out: &mut Vec<u8>) {
        match self {
            StoreDtype::F64 => {
                for &v in values {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
            StoreDtype::F32 => {
                for &v in values {
                    out.extend_from_slice(&(v as f32).to_le_bytes());
                }
            }
            StoreDtype::F16 => {
                for &v in values {
                    out.extend_from_slice(&half::f16::from_f64(v).to_le_bytes());
                }
            }
        }
    }

    fn decode(self, bytes: &[u8], out: &mut [f64]) {
        match self {
            StoreDtype::F64 => {
                for (v, b) in out.iter_mut().zip(bytes.chunks_exact(8)) {
                    *v = f64::from_le_bytes(b.try_into().expect("8 bytes"));
                }
            }
            StoreDtype::F32 => {
                for (v, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *v = f32::from_le_bytes(b.try_into().expect("4 bytes")) as f64;
                }
            }
            StoreDtype::F16 => {
                for (v, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *v = half::f16::from_le_bytes(b.try_into().expect("2 bytes")).to_f64();
                }
            }
        }
    }
}

/// What an index was computed from. Two indexes (shards) combine only when everything but
/// `rows` and the shard agrees; a query checks its model against `model`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexManifest {
    pub format: String,
    /// Training rows in this index (or shard of one).
    pub rows: usize,
    /// Values per row: the sum of `out x in` over `modules`.
    pub dim: usize,
    pub dtype: StoreDtype,
    /// Tracked modules in storage order: name, out, in (projected sizes under a projection).
    pub modules: Vec<(String, usize, usize)>,
    /// sha256 over the model's files.
    pub model: String,
    /// sha256 of the training table, and of its rows as token sequences.
    pub train: String,
    pub tokens: String,
    /// The preconditioner applied, the factors file's sha256 (`none` for identity) and the
    /// damping.
    pub preconditioner: String,
    pub factors: String,
    pub damping: String,
    /// `kron:R_IN,R_OUT`, drawn from `seed`.
    pub projection: Option<String>,
    pub seed: u64,
    pub max_length: Option<usize>,
    /// For one shard of an index: which rows of the training table it holds.
    pub shard: Option<ShardRecord>,
}

impl IndexManifest {
    pub fn new_format() -> String {
        FORMAT.to_string()
    }

    /// Bytes of one stored row.
    pub fn row_bytes(&self) -> usize {
        self.dim * self.dtype.bytes()
    }
}

/// Writes the rows of an index to `gradients.bin` in a directory being built. Rows arrive in
/// any order (passes batch rows of similar length together) and each is written at its own
/// place, so the file is in table order without holding more than a batch.
pub struct IndexWriter {
    file: File,
    dtype: StoreDtype,
    rows: usize,
    dim: Option<usize>,
    written: Vec<bool>,
    buffer: Vec<u8>,
}

impl IndexWriter {
    /// A writer of `rows` rows to a new file at `path`.
    pub fn create(path: &Path, dtype: StoreDtype, rows: usize) -> Result<Self> {
        let file =
            File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(IndexWriter {
            file,
            dtype,
            rows,
            dim: None,
            written: vec![false; rows],
            buffer: Vec::new(),
        })
    }

    /// A writer continuing the file at `path`, whose rows marked in `written` (of `dim`
    /// values each) are already there (see [`IndexWriter::progress`]).
    pub fn resume(
        path: &Path,
        dtype: StoreDtype,
        written: Vec<bool>,
        dim: Option<usize>,
    ) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        if let Some(dim) = dim {
            let needed = written
                .iter()
                .rposition(|&w| w)
                .map_or(0, |last| (last as u64 + 1) * (dim * dtype.bytes()) as u64);
            let held = file.metadata()?.len();
            anyhow::ensure!(
                held >= needed,
                "{} holds {held} bytes, less than the {needed} of the rows saved as written",
                path.display()
            );
        }
        Ok(IndexWriter {
            file,
            dtype,
            rows: written.len(),
            dim,
            written,
            buffer: Vec::new(),
        })
    }

    /// Which rows are written and their length, once the file is flushed to disk: what a
    /// checkpoint keeps to resume the writer.
    pub fn progress(&self) -> Result<(Vec<bool>, Option<usize>)> {
        self.file
            .sync_all()
            .context("cannot flush the index to disk")?;
        Ok((self.written.clone(), self.dim))
    }

    /// Write row `row` (0-based within this index); every row has the first one's length.
    pub fn write_row(&mut self, row: usize, vector: &[f64]) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let dim = *self.dim.get_or_insert(vector.len());
        anyhow::ensure!(
            vector.len() == dim,
            "index row {row} has {} values, the first had {dim}",
            vector.len()
        );
        anyhow::ensure!(
            row < self.rows && !self.written[row],
            "index row {row} written twice or out of range"
        );
        self.buffer.clear();
        self.dtype.encode(vector, &mut self.buffer);
        let offset = (row as u64) * (self.buffer.len() as u64);
        self.file
            .write_all_at(&self.buffer, offset)
            .context("cannot write the index")?;
        self.written[row] = true;
        Ok(())
    }

    /// Check every row was written and flush to disk; returns (rows, dim).
    pub fn finish(self) -> Result<(usize, usize)> {
        if let Some(missing) = self.written.iter().position(|w| !w) {
            anyhow::bail!("index row {missing} was never written");
        }
        self.file
            .sync_all()
            .context("cannot flush the index to disk")?;
        Ok((self.rows, self.dim.unwrap_or(0)))
    }
}

/// Write `manifest.json` into a directory being built.
pub fn write_manifest(dir: &Path, manifest: &IndexManifest) -> Result<()> {
    let text = serde_json::to_string_pretty(manifest).expect("manifests serialise");
    std::fs::write(dir.join(MANIFEST_FILE), text + "\n").context("cannot write the manifest")
}

/// An index opened for reading: its manifest and its gradients, memory-mapped.
pub struct GradientIndex {
    pub dir: String,
    pub manifest: IndexManifest,
    map: memmap2::Mmap,
}

impl GradientIndex {
    /// Open `dir`, checking that it is an index and that its matrix has the size its manifest
    /// says (a truncated copy is refused, not read past).
    pub fn open(dir: &Path) -> Result<GradientIndex> {
        let name = dir.display().to_string();
        let manifest_path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&manifest_path).map_err(|err| {
            InputError::new(
                &name,
                format!("not a gradient index (no readable {MANIFEST_FILE}: {err})"),
            )
        })?;
        let manifest: IndexManifest = serde_json::from_str(&text).map_err(|err| {
            InputError::new(
                manifest_path.display().to_string(),
                format!("not a curate gradient index manifest: {err}"),
            )
        })?;
        if manifest.format != FORMAT {
            return Err(InputError::new(
                manifest_path.display().to_string(),
                format!(
                    "index format {:?}, this curate reads {FORMAT:?}",
                    manifest.format
                ),
            )
            .into());
        }
        let path = dir.join(GRADIENTS_FILE);
        let file = File::open(&path).map_err(|err| {
            InputError::new(path.display().to_string(), format!("cannot open: {err}"))
        })?;
        let expected = (manifest.rows as u128) * (manifest.row_bytes() as u128);
        let actual = file.metadata()?.len() as u128;
        if actual != expected {
            return Err(InputError::new(
                path.display().to_string(),
                format!(
                    "holds {actual} bytes, but the manifest's {} rows of {} {} values need {expected} (truncated or not this index's file)",
                    manifest.rows,
                    manifest.dim,
                    manifest.dtype.name()
                ),
            )
            .into());
        }
        // SAFETY: the file is only read; an index is not written in place once committed (it
        // is built in a staging directory and renamed), so the mapping does not change under us
        // unless someone edits the file by hand while a query runs.
        let map = unsafe { memmap2::Mmap::map(&file) }
            .with_context(|| format!("cannot map {}", path.display()))?;
        Ok(GradientIndex {
            dir: name,
            manifest,
            map,
        })
    }

    /// Rows `range` as f64, `[rows, dim]`.
    fn block(&self, range: Range<usize>) -> Mat<f64> {
        let dim = self.manifest.dim;
        let row_bytes = self.manifest.row_bytes();
        let mut block = Mat::<f64>::zeros(range.len(), dim);
        let mut values = vec![0.0; dim];
        for (r, row) in range.enumerate() {
            let bytes = &self.map[row * row_bytes..(row + 1) * row_bytes];
            self.manifest.dtype.decode(bytes, &mut values);
            for (k, &v) in values.iter().enumerate() {
                block[(r, k)] = v;
            }
        }
        block
    }
}

/// Rows per block: about 16 MiB of f64 values, so blocks in flight on every core stay small
/// whatever the width of a row.
fn block_rows(dim: usize) -> usize {
    ((16usize << 20) / (dim.max(1) * 8)).clamp(1, 4096)
}

/// The blocks of `parts` in order: (part, rows of the part, first global row).
fn blocks(parts: &[GradientIndex]) -> Vec<(usize, Range<usize>, usize)> {
    let mut blocks = Vec::new();
    let mut global = 0;
    for (p, part) in parts.iter().enumerate() {
        let step = block_rows(part.manifest.dim);
        let mut start = 0;
        while start < part.manifest.rows {
            let end = (start + step).min(part.manifest.rows);
            blocks.push((p, start..end, global + start));
            start = end;
        }
        global += part.manifest.rows;
    }
    blocks
}

/// `queries [M, dim] x block^T`, sequential inside (blocks run in parallel), so a score is the
/// same sum whatever the thread count.
fn block_scores(queries: &Mat<f64>, block: &Mat<f64>) -> Mat<f64> {
    let mut scores = Mat::<f64>::zeros(queries.nrows(), block.nrows());
    faer::linalg::matmul::matmul(
        scores.as_mut(),
        faer::Accum::Replace,
        queries.as_ref(),
        block.transpose(),
        1.0,
        faer::Par::Seq,
    );
    scores
}

/// Scores of every query (a row of `queries`, laid out as the index) against every row of
/// `parts` in order: `[M, N]`. Blocks of rows are read and scored on all cores.
pub fn score_all(parts: &[GradientIndex], queries: &Mat<f64>) -> Mat<f64> {
    use rayon::prelude::*;
    let total: usize = parts.iter().map(|p| p.manifest.rows).sum();
    let scored: Vec<(usize, Mat<f64>)> = blocks(parts)
        .into_par_iter()
        .map(|(p, range, first)| (first, block_scores(queries, &parts[p].block(range))))
        .collect();
    let mut all = Mat::<f64>::zeros(queries.nrows(), total);
    for (first, scores) in scored {
        all.submatrix_mut(0, first, scores.nrows(), scores.ncols())
            .copy_from(scores.as_ref());
    }
    all
}

/// The `k` highest scores per query over every row of `parts`, as (global row, score), best
/// first (ties by row), without holding the whole `[M, N]` matrix: each block keeps its own
/// best `k` per query, and blocks are merged.
pub fn score_top(parts: &[GradientIndex], queries: &Mat<f64>, k: usize) -> Vec<Vec<(usize, f64)>> {
    use rayon::prelude::*;
    let m = queries.nrows();
    blocks(parts)
        .into_par_iter()
        .map(|(p, range, first)| {
            let scores = block_scores(queries, &parts[p].block(range));
            (0..m)
                .map(|q| {
                    let row: Vec<(usize, f64)> = (0..scores.ncols())
                        .map(|c| (first + c, scores[(q, c)]))
                        .collect();
                    best(row, k)
                })
                .collect::<Vec<_>>()
        })
        .reduce(
            || vec![Vec::new(); m],
            |a, b| {
                a.into_iter()
                    .zip(b)
                    .map(|(mut x, y)| {
                        x.extend(y);
                        best(x, k)
                    })
                    .collect()
            },
        )
}

/// The `k` best of `candidates`: highest score first, ties by row; the order of the ranks of
/// a full scores table (`report::ranks`), so the top K are its ranks 1 to K.
fn best(mut candidates: Vec<(usize, f64)>, k: usize) -> Vec<(usize, f64)> {
    let order = |a: &(usize, f64), b: &(usize, f64)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if candidates.len() > k && k > 0 {
        candidates.select_nth_unstable_by(k - 1, order);
        candidates.truncate(k);
    } else if k == 0 {
        candidates.clear();
    }
    candidates.sort_by(order);
    candidates
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(rows: usize, dim: usize, dtype: StoreDtype) -> IndexManifest {
        IndexManifest {
            format: IndexManifest::new_format(),
            rows,
            dim,
            dtype,
            modules: vec![("m".into(), 1, dim)],
            model: "m".into(),
            train: "t".into(),
            tokens: "k".into(),
            preconditioner: "identity".into(),
            factors: "none".into(),
            damping: "heuristic".into(),
            projection: None,
            seed: 0,
            max_length: None,
            shard: None,
        }
    }

    fn write(dir: &Path, rows: &[Vec<f64>], dtype: StoreDtype) -> GradientIndex {
        let mut writer = IndexWriter::create(&dir.join(GRADIENTS_FILE), dtype, rows.len()).unwrap();
        // Out of order, as passes hand them over.
        for (r, row) in rows.iter().enumerate().rev() {
            writer.write_row(r, row).unwrap();
        }
        let (n, dim) = writer.finish().unwrap();
        write_manifest(dir, &manifest(n, dim, dtype)).unwrap();
        GradientIndex::open(dir).unwrap()
    }

    #[test]
    fn an_index_scores_every_row_and_keeps_the_top() {
        let dir = tempfile::tempdir().unwrap();
        let rows: Vec<Vec<f64>> = (0..10)
            .map(|r| vec![r as f64, 1.0, -(r as f64) / 2.0])
            .collect();
        let index = write(dir.path(), &rows, StoreDtype::F32);
        let queries = Mat::from_fn(2, 3, |q, k| [[1.0, 0.0, 0.0], [0.0, 2.0, 1.0]][q][k]);
        let parts = [index];
        let all = score_all(&parts, &queries);
        for (r, row) in rows.iter().enumerate() {
            assert_eq!(all[(0, r)], row[0]);
            assert_eq!(all[(1, r)], 2.0 * row[1] + row[2]);
        }
        let top = score_top(&parts, &queries, 3);
        assert_eq!(top[0], [(9, 9.0), (8, 8.0), (7, 7.0)]);
        // Query 1: 2 - r/2, best at row 0.
        assert_eq!(top[1], [(0, 2.0), (1, 1.5), (2, 1.0)]);
        assert_eq!(score_top(&parts, &queries, 20)[0].len(), 10);
    }

    #[test]
    fn ties_go_to_the_lower_row() {
        let picked = best(vec![(3, 1.0), (1, -2.0), (2, 1.0), (0, 0.5)], 3);
        assert_eq!(picked, [(2, 1.0), (3, 1.0), (0, 0.5)]);
        assert!(best(vec![(0, 1.0)], 0).is_empty());
    }

    #[test]
    fn f16_rows_round_to_half_precision() {
        let dir = tempfile::tempdir().unwrap();
        let index = write(dir.path(), &[vec![1.0 / 3.0, 1000.5]], StoreDtype::F16);
        let block = index.block(0..1);
        assert!((block[(0, 0)] - 1.0 / 3.0).abs() < 1e-3);
        assert_eq!(block[(0, 1)], 1000.5);
        assert_eq!(
            std::fs::metadata(dir.path().join(GRADIENTS_FILE))
                .unwrap()
                .len(),
            4
        );
    }

    #[test]
    fn a_truncated_or_foreign_index_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            &[vec![1.0, 2.0], vec![3.0, 4.0]],
            StoreDtype::F32,
        );
        let path = dir.path().join(GRADIENTS_FILE);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..12]).unwrap();
        let err = GradientIndex::open(dir.path()).err().unwrap().to_string();
        assert!(err.contains("holds 12 bytes"), "{err}");
        let empty = tempfile::tempdir().unwrap();
        let err = GradientIndex::open(empty.path()).err().unwrap().to_string();
        assert!(err.contains("not a gradient index"), "{err}");
        let mut writer =
            IndexWriter::create(&empty.path().join(GRADIENTS_FILE), StoreDtype::F32, 3).unwrap();
        writer.write_row(1, &[1.0, 2.0]).unwrap();
        assert!(writer.write_row(0, &[1.0]).is_err());
        assert!(writer.write_row(1, &[1.0, 2.0]).is_err());
        assert!(writer.write_row(3, &[1.0, 2.0]).is_err());
        let err = writer.finish().unwrap_err().to_string();
        assert_eq!(err, "index row 0 was never written");
    }

    #[test]
    fn blocks_cover_every_part_in_order() {
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let parts = [
            write(dirs[0].path(), &[vec![1.0], vec![2.0]], StoreDtype::F32),
            write(dirs[1].path(), &[vec![3.0]], StoreDtype::F32),
        ];
        let queries = Mat::from_fn(1, 1, |_, _| 1.0);
        let all = score_all(&parts, &queries);
        assert_eq!(
            (0..3).map(|c| all[(0, c)]).collect::<Vec<_>>(),
            [1.0, 2.0, 3.0]
        );
        assert_eq!(score_top(&parts, &queries, 1)[0], [(2, 3.0)]);
    }
}
