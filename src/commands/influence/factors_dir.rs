//! A factor directory on disk: `factors.safetensors` (see `influence::store` for its
//! contents), written atomically.

use std::path::Path;

use anyhow::{Context as _, Result};

use curate::error::InputError;
use curate::influence::FactorSet;
use curate::influence::store::{self, FACTORS_FILE, FactorMeta};
use curate::table::OutputDir;

/// Write a factor directory atomically.
pub fn save(
    dir: &Path,
    factors: &FactorSet,
    meta: &FactorMeta,
    provenance: &[(String, String)],
    force: bool,
) -> Result<()> {
    let output = OutputDir::create(dir, force)?;
    let bytes = store::encode(factors, meta, provenance)?;
    let path = output.path().join(FACTORS_FILE);
    std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    output.commit()
}

/// Read a factor directory written by `save`.
pub fn load(dir: &Path) -> Result<(FactorSet, FactorMeta)> {
    let path = dir.join(FACTORS_FILE);
    let file = path.display().to_string();
    let bytes = std::fs::read(&path)
        .map_err(|e| InputError::new(file.clone(), format!("cannot read factors: {e}")))?;
    Ok(store::decode(&bytes).map_err(|e| InputError::new(file, e.to_string()))?)
}
