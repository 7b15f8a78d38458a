//! Safetensors checkpoints in Hugging Face layout: one `model.safetensors` or shards listed by
//! `model.safetensors.index.json`, read against the model's key map ([`super::lm::tensor_specs`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use burn::module::Param;
use burn::tensor::{DType, Device, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};

use super::lm::{CausalLm, Init, TensorSpec};
use crate::error::InputError;
use crate::rng::SplitMix64;

pub(crate) const SINGLE_FILE: &str = "model.safetensors";
pub(crate) const INDEX_FILE: &str = "model.safetensors.index.json";

/// A checkpoint whose tensors do not match the model's key map one to one (invalid input,
/// unless the caller allows a partial load).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: {count} {kind}: {names}")]
pub struct TensorMismatch {
    pub origin: String,
    pub kind: MismatchKind,
    pub count: usize,
    /// The first few names, then how many more.
    pub names: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MismatchKind {
    /// The model needs tensors the checkpoint lacks.
    Missing,
    /// The checkpoint has tensors the model does not use.
    Unused,
}

impl std::fmt::Display for MismatchKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MismatchKind::Missing => "missing tensor(s)",
            MismatchKind::Unused => "tensor(s) the model does not use",
        })
    }
}

/// A tensor read from a checkpoint, still in its stored dtype.
#[derive(Debug, Clone)]
pub struct StoredTensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
    /// The file it came from, for error messages.
    pub file: PathBuf,
}

impl StoredTensor {
    /// Values widened to f64 (f16, bf16, f32 and f64 are accepted).
    pub(crate) fn to_f64(&self, name: &str) -> Result<Vec<f64>> {
        let b = &self.bytes;
        Ok(match self.dtype {
            Dtype::F32 => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
                .collect(),
            Dtype::F64 => b
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect(),
            Dtype::F16 => b
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64())
                .collect(),
            Dtype::BF16 => b
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f64())
                .collect(),
            other => {
                return Err(InputError::new(
                    self.file.display().to_string(),
                    format!("tensor '{name}' has dtype {other:?}; expected a float type"),
                )
                .into());
            }
        })
    }
}

/// The safetensors files of a model directory: the single file, or the shards its index names.
pub(crate) fn checkpoint_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join(SINGLE_FILE);
    let index = dir.join(INDEX_FILE);
    if single.is_file() {
        Ok(vec![single])
    } else if index.is_file() {
        shard_files(&index)
    } else {
        Err(InputError::new(
            dir.display().to_string(),
            format!("no {SINGLE_FILE} or {INDEX_FILE} in the model directory"),
        )
        .into())
    }
}

/// Every tensor of a checkpoint directory by name.
pub(crate) fn read_checkpoint(dir: &Path) -> Result<BTreeMap<String, StoredTensor>> {
    let files = checkpoint_files(dir)?;
    let mut tensors = BTreeMap::new();
    for file in files {
        let bytes =
            std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
        let parsed = SafeTensors::deserialize(&bytes).map_err(|e| {
            InputError::new(
                file.display().to_string(),
                format!("not a safetensors file: {e}"),
            )
        })?;
        for (name, view) in parsed.iter() {
            tensors.insert(
                name.to_string(),
                StoredTensor {
                    dtype: view.dtype(),
                    shape: view.shape().to_vec(),
                    bytes: view.data().to_vec(),
                    file: file.clone(),
                },
            );
        }
    }
    Ok(tensors)
}

/// The distinct shard files an index names, in order of first mention.
fn shard_files(index: &Path) -> Result<Vec<PathBuf>> {
    let file = index.display().to_string();
    let text = std::fs::read_to_string(index).with_context(|| format!("cannot read {file}"))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| InputError::new(file.clone(), format!("not JSON: {e}")))?;
    let map = value
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| InputError::new(file.clone(), "no \"weight_map\" object"))?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut files: Vec<PathBuf> = Vec::new();
    for (tensor, shard) in map {
        let shard = shard.as_str().ok_or_else(|| {
            InputError::new(
                file.clone(),
                format!("weight_map entry '{tensor}' is not a file name"),
            )
        })?;
        let path = dir.join(shard);
        if !files.contains(&path) {
            if !path.is_file() {
                bail!(InputError::new(
                    file.clone(),
                    format!("shard '{shard}' (holding '{tensor}') does not exist")
                ));
            }
            files.push(path);
        }
    }
    Ok(files)
}

/// Where the model's tensors come from: a checkpoint, or the seeded initialiser of
/// transformers' `_init_weights` (normal(0, initializer_range) matrices, unit norms, zero
/// biases). With `allow_partial`, tensors a checkpoint lacks are initialised and extra ones
/// ignored; otherwise both are errors.
pub struct TensorSource {
    specs: HashMap<String, (usize, TensorSpec)>,
    stored: BTreeMap<String, StoredTensor>,
    rng: SplitMix64,
    std: f64,
    device: Device,
    dtype: DType,
    trainable: bool,
}

impl TensorSource {
    /// Random initialisation of every tensor.
    pub fn init(
        specs: Vec<TensorSpec>,
        std: f64,
        seed: u64,
        device: &Device,
        dtype: DType,
    ) -> Self {
        TensorSource::from_parts(specs, BTreeMap::new(), std, seed, device, dtype)
    }

    /// A checkpoint checked against the key map: shapes must agree, and unless
    /// `allow_partial` every expected tensor must be present and every stored one used.
    /// `config_origin` names where the expected shapes come from, for the error message.
    #[allow(clippy::too_many_arguments)]
    pub fn checkpoint(
        specs: Vec<TensorSpec>,
        mut stored: BTreeMap<String, StoredTensor>,
        origin: &Path,
        config_origin: &str,
        allow_partial: bool,
        tied_embeddings: bool,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let origin = origin.display().to_string();
        // transformers may keep a tied head's copy in the file; the embedding is what counts.
        if tied_embeddings {
            stored.remove("lm_head.weight");
        }
        for spec in &specs {
            if let Some(tensor) = stored.get(&spec.name)
                && tensor.shape != spec.shape
            {
                bail!(InputError::new(
                    tensor.file.display().to_string(),
                    format!(
                        "tensor '{}' has shape {:?} but {config_origin} implies {:?}",
                        spec.name, tensor.shape, spec.shape
                    )
                ));
            }
        }
        if !allow_partial {
            let expected: HashSet<&str> = specs.iter().map(|s| s.name.as_str()).collect();
            let missing: Vec<&str> = specs
                .iter()
                .map(|s| s.name.as_str())
                .filter(|name| !stored.contains_key(*name))
                .collect();
            let unused: Vec<&str> = stored
                .keys()
                .map(String::as_str)
                .filter(|name| !expected.contains(name))
                .collect();
            for (names, kind) in [
                (missing, MismatchKind::Missing),
                (unused, MismatchKind::Unused),
            ] {
                if !names.is_empty() {
                    bail!(TensorMismatch {
                        origin,
                        kind,
                        count: names.len(),
                        names: name_list(&names),
                    });
                }
            }
        }
        Ok(TensorSource::from_parts(
            specs, stored, 0.02, 0, device, dtype,
        ))
    }

    fn from_parts(
        specs: Vec<TensorSpec>,
        stored: BTreeMap<String, StoredTensor>,
        std: f64,
        seed: u64,
        device: &Device,
        dtype: DType,
    ) -> Self {
        TensorSource {
            specs: specs
                .into_iter()
                .enumerate()
                .map(|(i, s)| (s.name.clone(), (i, s)))
                .collect(),
            stored,
            rng: SplitMix64::new(seed),
            std,
            device: device.clone(),
            dtype,
            trainable: device.is_autodiff(),
        }
    }

    /// Seed and std of the initialiser for tensors a partial checkpoint lacks.
    pub fn seeded(mut self, seed: u64, std: f64) -> Self {
        self.rng = SplitMix64::new(seed);
        self.std = std;
        self
    }

    /// Parameters will not require gradients even on an autodiff device (gradient capture
    /// needs only the probes).
    pub(crate) fn frozen(mut self) -> Self {
        self.trainable = false;
        self
    }

    /// The parameter of the key map named `name`.
    pub(crate) fn param<const D: usize>(&mut self, name: &str) -> Result<Param<Tensor<D>>> {
        let (index, spec) = self
            .specs
            .get(name)
            .cloned()
            .with_context(|| format!("'{name}' is not in the model's key map"))?;
        let values = match self.stored.remove(name) {
            Some(tensor) => {
                let values = tensor.to_f64(name)?;
                // A corrupt or hostile file would otherwise load and give NaN losses.
                if let Some(at) = values.iter().position(|v| !v.is_finite()) {
                    bail!(InputError::new(
                        tensor.file.display().to_string(),
                        format!(
                            "tensor '{name}' holds a non-finite value ({}) at index {at}",
                            values[at]
                        )
                    ));
                }
                values
            }
            None => self.initial_values(&spec),
        };
        let shape: [usize; D] = spec
            .shape
            .clone()
            .try_into()
            .map_err(|_| anyhow::anyhow!("'{name}' is not {D}-dimensional"))?;
        let mut tensor =
            Tensor::<D>::from_data(TensorData::new(values, shape), (&self.device, self.dtype));
        if self.trainable {
            tensor = tensor.require_grad();
        }
        Ok(Param::initialized(CausalLm::param_id(index), tensor))
    }

    fn initial_values(&mut self, spec: &TensorSpec) -> Vec<f64> {
        let n: usize = spec.shape.iter().product();
        match spec.init {
            Init::Zeros => vec![0.0; n],
            Init::Ones => vec![1.0; n],
            Init::Normal => (0..n).map(|_| self.rng.normal() * self.std).collect(),
        }
    }
}

fn name_list(names: &[&str]) -> String {
    const SHOWN: usize = 4;
    let mut text = names
        .iter()
        .take(SHOWN)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        text.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    text
}

/// Serialise named tensors as float32 safetensors (transformers' default save dtype).
/// 1-d tensors arrive as `[1, n]` and are written as `[n]` when `shapes` says so.
pub(crate) fn to_safetensors(
    tensors: Vec<(String, Tensor<2>)>,
    shapes: &HashMap<String, Vec<usize>>,
    metadata: &[(String, String)],
) -> Result<Vec<u8>> {
    let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::with_capacity(tensors.len());
    for (name, tensor) in tensors {
        let shape = shapes
            .get(&name)
            .cloned()
            .unwrap_or_else(|| tensor.dims().to_vec());
        let values = tensor
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("cannot read tensor '{name}': {e:?}"))?;
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        owned.push((name, shape, bytes));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = owned
        .iter()
        .map(|(name, shape, bytes)| {
            safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), bytes)
                .map(|view| (name.clone(), view))
        })
        .collect::<Result<_, _>>()?;
    let mut metadata: HashMap<String, String> = metadata.iter().cloned().collect();
    metadata.insert("format".to_string(), "pt".to_string());
    Ok(safetensors::serialize(views, Some(metadata))?)
}

/// What a checkpoint's headers say, without reading the tensor data.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct CheckpointHeader {
    pub files: Vec<PathBuf>,
    /// Name, stored dtype, shape.
    pub tensors: Vec<(String, String, Vec<usize>)>,
    /// `__metadata__` entries of every file (provenance, format).
    pub metadata: BTreeMap<String, String>,
}

impl CheckpointHeader {
    pub(crate) fn parameter_count(&self) -> usize {
        self.tensors
            .iter()
            .map(|(_, _, shape)| shape.iter().product::<usize>())
            .sum()
    }
}

/// Read only the JSON headers of a model directory's safetensors file(s).
pub(crate) fn read_header(dir: &Path) -> Result<CheckpointHeader> {
    let files = checkpoint_files(dir)?;
    let mut header = CheckpointHeader::default();
    for file in &files {
        let label = file.display().to_string();
        let bad = |message: String| InputError::new(label.clone(), message);
        let mut reader =
            std::fs::File::open(file).with_context(|| format!("cannot read {label}"))?;
        let mut size = [0u8; 8];
        std::io::Read::read_exact(&mut reader, &mut size)
            .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let size = u64::from_le_bytes(size);
        if size > 100 << 20 {
            bail!(bad(format!(
                "not a safetensors file: header of {size} bytes"
            )));
        }
        let mut json = vec![0u8; size as usize];
        std::io::Read::read_exact(&mut reader, &mut json)
            .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let value: serde_json::Value = serde_json::from_slice(&json)
            .map_err(|e| bad(format!("not a safetensors header: {e}")))?;
        let entries = value
            .as_object()
            .ok_or_else(|| bad("not a safetensors header".into()))?;
        for (name, entry) in entries {
            if name == "__metadata__" {
                for (key, v) in entry.as_object().into_iter().flatten() {
                    header
                        .metadata
                        .insert(key.clone(), v.as_str().unwrap_or_default().to_string());
                }
                continue;
            }
            let dtype = entry["dtype"].as_str().unwrap_or("?").to_string();
            let shape = entry["shape"]
                .as_array()
                .map(|dims| {
                    dims.iter()
                        .filter_map(|d| d.as_u64())
                        .map(|d| d as usize)
                        .collect()
                })
                .unwrap_or_default();
            header.tensors.push((name.clone(), dtype, shape));
        }
    }
    header.tensors.sort();
    header.files = files;
    Ok(header)
}
