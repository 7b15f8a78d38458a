//! A factor directory: `factors.safetensors` with the sums and counts in f64, and what they were
//! fitted for (preconditioner, stage, shard, model, modules, projection, labels) in its header.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context as _, Result};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::commands::output_dir::OutputDir;
use crate::error::InputError;
use crate::influence::{FactorSet, Preconditioner, Stage};

pub const FACTORS_FILE: &str = "factors.safetensors";
const META_KEY: &str = "curate.factors";

/// What a factor set was fitted for; two sets combine only when these agree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FactorMeta {
    pub preconditioner: String,
    pub stage: String,
    /// `empirical` or `sampled:SEED`.
    pub fisher: String,
    pub projection: Option<String>,
    /// Tracked modules in order: name, in (with bias column), out.
    pub modules: Vec<(String, usize, usize)>,
    /// sha256 of the model's config and weights.
    pub model: String,
    /// sha256 of the training table.
    pub train: String,
    /// `I/N` for one shard's partial sums; absent once complete or merged.
    pub shard: Option<String>,
    /// For eigenvalue sums: the digest of the covariances whose eigenvectors rotated them.
    pub covariance: Option<String>,
}

impl FactorMeta {
    /// Fitted the same way (preconditioner, labels, projection, modules, model, data), so the
    /// sums can be added up.
    pub fn same_fit(&self, other: &FactorMeta) -> bool {
        self.preconditioner == other.preconditioner
            && self.fisher == other.fisher
            && self.projection == other.projection
            && self.modules == other.modules
            && self.model == other.model
            && self.train == other.train
    }
}

/// Write a factor directory atomically.
pub fn save(
    dir: &Path,
    factors: &FactorSet,
    meta: &FactorMeta,
    provenance: &[(String, String)],
    force: bool,
) -> Result<()> {
    let output = OutputDir::create(dir, force)?;
    let arrays = factors.to_arrays();
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = arrays
        .into_iter()
        .map(|(name, shape, values)| {
            let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            (name, shape, bytes)
        })
        .collect();
    let views: Vec<(String, TensorView)> = bytes
        .iter()
        .map(|(name, shape, data)| {
            let view = TensorView::new(Dtype::F64, shape.clone(), data).expect("consistent shape");
            (name.clone(), view)
        })
        .collect();
    let mut metadata: HashMap<String, String> = provenance.iter().cloned().collect();
    metadata.insert(META_KEY.to_string(), serde_json::to_string(meta)?);
    let serialized = safetensors::serialize(views, Some(metadata))?;
    let path = output.path().join(FACTORS_FILE);
    std::fs::write(&path, serialized)
        .with_context(|| format!("cannot write {}", path.display()))?;
    output.commit()
}

/// Read a factor directory written by `save`.
pub fn load(dir: &Path) -> Result<(FactorSet, FactorMeta)> {
    let path = dir.join(FACTORS_FILE);
    let file = path.display().to_string();
    let bytes = std::fs::read(&path)
        .map_err(|e| InputError::new(file.clone(), format!("cannot read factors: {e}")))?;
    let (_, header) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| InputError::new(file.clone(), format!("not a safetensors file: {e}")))?;
    let meta: FactorMeta = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(META_KEY))
        .ok_or_else(|| {
            InputError::new(
                file.clone(),
                format!("no {META_KEY} header: not written by curate influence"),
            )
        })
        .and_then(|text| {
            serde_json::from_str(text)
                .map_err(|e| InputError::new(file.clone(), format!("bad {META_KEY} header: {e}")))
        })?;
    let tensors = SafeTensors::deserialize(&bytes)
        .map_err(|e| InputError::new(file.clone(), format!("not a safetensors file: {e}")))?;
    let preconditioner = Preconditioner::parse(&meta.preconditioner).ok_or_else(|| {
        InputError::new(
            file.clone(),
            format!("unknown preconditioner {:?}", meta.preconditioner),
        )
    })?;
    let stage = Stage::parse(&meta.stage)
        .ok_or_else(|| InputError::new(file.clone(), format!("unknown stage {:?}", meta.stage)))?;
    let set = FactorSet::from_arrays(preconditioner, stage, &meta.modules, |name| {
        let view = tensors.tensor(name).ok()?;
        if view.dtype() != Dtype::F64 {
            return None;
        }
        let values = view
            .data()
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        Some((view.shape().to_vec(), values))
    })
    .map_err(|e| InputError::new(file.clone(), e.to_string()))?;
    Ok((set, meta))
}

/// A digest of a factor set's covariance sums, tying eigenvalue shards to the covariances
/// whose eigenvectors rotated them.
pub fn covariance_digest(factors: &FactorSet) -> String {
    let mut hash = Sha256::new();
    for (name, _, values) in factors.to_arrays() {
        if name.ends_with("covariance_sum") || name.ends_with(".tokens") {
            hash.update(name.as_bytes());
            for v in values {
                hash.update(v.to_le_bytes());
            }
        }
    }
    format!("{:x}", hash.finalize())
}
