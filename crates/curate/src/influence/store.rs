//! Stored factor sets: the bytes of `factors.safetensors` (sums and counts in f64, the
//! eigenbases a fit computed from them, and what they were fitted for in its header) and the
//! rules by which shards merge into one set.
//!
//! Only bytes in and out here; the command reads and writes the directory.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{FactorSet, Preconditioner, Stage};
use crate::error::InputError;
use crate::table::{OutputDir, Shard};

/// The file a factor directory holds.
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
    /// sha256 of the training rows as token sequences (absent in older files).
    #[serde(default)]
    pub tokens: Option<String>,
    /// `--max-length` the rows were cut to, if any.
    #[serde(default)]
    pub max_length: Option<usize>,
    /// `I/N` for one shard's partial sums; absent once complete or merged.
    pub shard: Option<String>,
    /// For eigenvalue sums: the digest of the covariances whose eigenvectors rotated them.
    pub covariance: Option<String>,
}

/// A way two fits can differ so that one cannot stand in for the other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// What differs: "for" (the preconditioner), "on model", "with projection", ...
    pub what: &'static str,
    pub stored: String,
    pub wanted: String,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the factors were fitted {} {}, this run uses {}",
            self.what, self.stored, self.wanted
        )
    }
}

impl FactorMeta {
    /// Fitted the same way (preconditioner, labels, projection, modules, model, data), so the
    /// sums can be added up.
    pub(crate) fn same_fit(&self, other: &FactorMeta) -> bool {
        self.preconditioner == other.preconditioner
            && self.fisher == other.fisher
            && self.projection == other.projection
            && self.modules == other.modules
            && self.model == other.model
            && self.train == other.train
            && self.tokens == other.tokens
            && self.max_length == other.max_length
    }

    /// The first way these stored factors do not fit `run` (modules and data may differ:
    /// scores are taken on other rows with the same model).
    pub fn mismatch(&self, run: &RunFit) -> Option<Mismatch> {
        let differs = |what, stored: &str, wanted: &str| {
            (stored != wanted).then(|| Mismatch {
                what,
                stored: stored.to_string(),
                wanted: wanted.to_string(),
            })
        };
        let short = |digest: &str| format!("sha256 {}", &digest[..digest.len().min(12)]);
        differs("for", &self.preconditioner, run.preconditioner)
            .or_else(|| differs("on model", &short(&self.model), &short(run.model)))
            .or_else(|| {
                differs(
                    "with projection",
                    self.projection.as_deref().unwrap_or("none"),
                    run.projection.unwrap_or("none"),
                )
            })
            .or_else(|| differs("with Fisher labels", &self.fisher, run.fisher))
            .or_else(|| {
                let limit = |n: Option<usize>| n.map_or("none".to_string(), |n| n.to_string());
                differs(
                    "with --max-length",
                    &limit(self.max_length),
                    &limit(run.max_length),
                )
            })
    }
}

/// How a run takes its gradients, to check stored factors against.
#[derive(Debug, Clone, Copy)]
pub struct RunFit<'a> {
    pub preconditioner: &'a str,
    /// sha256 of the model's files.
    pub model: &'a str,
    pub projection: Option<&'a str>,
    /// `empirical` or `sampled:SEED`.
    pub fisher: &'a str,
    pub max_length: Option<usize>,
}

/// Why stored factors cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum StoreError {
    #[error("not a safetensors file: {0}")]
    NotSafetensors(String),
    #[error("no {META_KEY} header: not written by curate influence")]
    NoHeader,
    #[error("bad {META_KEY} header: {0}")]
    BadHeader(String),
    #[error("unknown preconditioner {0:?}")]
    UnknownPreconditioner(String),
    #[error("unknown stage {0:?}")]
    UnknownStage(String),
    #[error("{0}")]
    Arrays(String),
}

/// The bytes of `factors.safetensors`: every sum in f64, the meta and `provenance` in the
/// header.
pub fn encode(
    factors: &FactorSet,
    meta: &FactorMeta,
    provenance: &[(String, String)],
) -> Result<Vec<u8>, safetensors::SafeTensorError> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = factors
        .to_arrays()
        .into_iter()
        .chain(factors.basis_arrays())
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
    metadata.insert(
        META_KEY.to_string(),
        serde_json::to_string(meta).expect("the meta serialises"),
    );
    safetensors::serialize(views, Some(metadata))
}

/// Read what `encode` wrote.
pub(crate) fn decode(bytes: &[u8]) -> Result<(FactorSet, FactorMeta), StoreError> {
    let not_safetensors =
        |e: safetensors::SafeTensorError| StoreError::NotSafetensors(e.to_string());
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(not_safetensors)?;
    let text = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(META_KEY))
        .ok_or(StoreError::NoHeader)?;
    let meta: FactorMeta =
        serde_json::from_str(text).map_err(|e| StoreError::BadHeader(e.to_string()))?;
    let tensors = SafeTensors::deserialize(bytes).map_err(not_safetensors)?;
    let preconditioner = Preconditioner::parse(&meta.preconditioner)
        .ok_or_else(|| StoreError::UnknownPreconditioner(meta.preconditioner.clone()))?;
    let stage =
        Stage::parse(&meta.stage).ok_or_else(|| StoreError::UnknownStage(meta.stage.clone()))?;
    let array = |name: &str| {
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
    };
    let set = FactorSet::from_arrays(preconditioner, stage, &meta.modules, array)
        .map_err(|e| StoreError::Arrays(e.to_string()))?;
    set.keep_stored_bases(array);
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

/// One stored set to merge, named by where it came from.
pub struct StoredFactors<'a> {
    pub name: &'a str,
    pub set: FactorSet,
    pub meta: FactorMeta,
}

/// Why shards do not merge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    #[error("nothing to merge")]
    Empty,
    #[error(
        "{0} and {1} were fitted differently (preconditioner, labels, projection, modules, model, training data or --max-length differ)"
    )]
    DifferentFits(String, String),
    #[error("{0} is not a shard (already complete or merged)")]
    NotAShard(String),
    #[error("{0}: bad shard {1:?}")]
    BadShard(String, String),
    #[error("{0} and {1} are both shard {2}")]
    Repeated(String, String, String),
    #[error("{0} is shard {1} but {2} is shard {3}")]
    Counts(String, String, String, String),
    #[error("shards missing: {}", .0.join(", "))]
    Missing(Vec<String>),
    #[error(
        "merging eigenvalue shards needs the one merged covariance directory they were rotated by among the inputs"
    )]
    NoCovariance,
    #[error("{0} was rotated by other covariances than {1}")]
    OtherCovariance(String, String),
    #[error("{0}")]
    Sums(String),
}

/// Add up the shards of one fit: covariance shards into covariances (or complete factors
/// where one pass suffices), or EK-FAC eigenvalue shards plus the merged covariances they were
/// rotated by into complete factors. Every shard index must appear exactly once.
pub fn merge(parts: &[StoredFactors]) -> Result<(FactorSet, FactorMeta), MergeError> {
    let first = parts.first().ok_or(MergeError::Empty)?;
    for part in &parts[1..] {
        if !part.meta.same_fit(&first.meta) {
            return Err(MergeError::DifferentFits(
                part.name.to_string(),
                first.name.to_string(),
            ));
        }
    }
    // Eigenvalue shards are added to the covariances they were rotated by (given once).
    let (lambda, base): (Vec<&StoredFactors>, Vec<&StoredFactors>) = parts
        .iter()
        .partition(|p| p.meta.stage == Stage::Lambda.name());
    let mut shards = if lambda.is_empty() {
        base.clone()
    } else {
        lambda
    };
    check_shard_cover(&shards)?;
    // Added in shard order, so the merged sums do not depend on the order the parts were
    // given in (f64 addition is not associative).
    shards.sort_by_key(|part| {
        part.meta
            .shard
            .as_deref()
            .and_then(|s| s.parse::<Shard>().ok())
            .map_or(0, |s| s.index)
    });
    let lambda: Vec<&StoredFactors> = if shards[0].meta.stage == Stage::Lambda.name() {
        shards.clone()
    } else {
        Vec::new()
    };
    let mut merged = FactorSet::new(shards[0].set.preconditioner, Stage::Complete);
    let sums = |e: anyhow::Error| MergeError::Sums(e.to_string());
    let mut covariance_digest_of_base = None;
    if !lambda.is_empty() {
        let [covariance] = base.as_slice() else {
            return Err(MergeError::NoCovariance);
        };
        let digest = covariance_digest(&covariance.set);
        for part in &lambda {
            if part.meta.covariance.as_deref() != Some(digest.as_str()) {
                return Err(MergeError::OtherCovariance(
                    part.name.to_string(),
                    covariance.name.to_string(),
                ));
            }
        }
        merged.merge(&covariance.set).map_err(sums)?;
        covariance_digest_of_base = Some(digest);
    }
    for part in &shards {
        merged.merge(&part.set).map_err(sums)?;
    }
    merged.stage = if lambda.is_empty() && shards[0].meta.stage == Stage::Covariance.name() {
        Stage::Covariance
    } else {
        Stage::Complete
    };
    let meta = FactorMeta {
        stage: merged.stage.name().to_string(),
        shard: None,
        covariance: covariance_digest_of_base.filter(|_| merged.stage != Stage::Complete),
        ..first.meta.clone()
    };
    Ok((merged, meta))
}

/// The shards of one stage: the same count, each index exactly once.
fn check_shard_cover(shards: &[&StoredFactors]) -> Result<(), MergeError> {
    let mut seen: Vec<(Shard, &str)> = Vec::new();
    for part in shards {
        let Some(spec) = &part.meta.shard else {
            return Err(MergeError::NotAShard(part.name.to_string()));
        };
        let shard: Shard = spec
            .parse()
            .map_err(|_| MergeError::BadShard(part.name.to_string(), spec.clone()))?;
        if let Some((_, other)) = seen.iter().find(|(s, _)| s.index == shard.index) {
            return Err(MergeError::Repeated(
                part.name.to_string(),
                other.to_string(),
                shard.to_string(),
            ));
        }
        if let Some((s, other)) = seen.iter().find(|(s, _)| s.count != shard.count) {
            return Err(MergeError::Counts(
                part.name.to_string(),
                shard.to_string(),
                other.to_string(),
                s.to_string(),
            ));
        }
        seen.push((shard, part.name));
    }
    let count = seen[0].0.count;
    if seen.len() != count {
        let missing = (0..count)
            .filter(|i| !seen.iter().any(|(s, _)| s.index == *i))
            .map(|i| format!("{i}/{count}"))
            .collect();
        return Err(MergeError::Missing(missing));
    }
    Ok(())
}

/// A factor directory on disk: `factors.safetensors`, written atomically.
/// Write a factor directory atomically.
pub fn save_dir(
    dir: &Path,
    factors: &FactorSet,
    meta: &FactorMeta,
    provenance: &[(String, String)],
    force: bool,
) -> anyhow::Result<()> {
    let output = OutputDir::create(dir, force)?;
    let bytes = encode(factors, meta, provenance)?;
    let path = output.path().join(FACTORS_FILE);
    std::fs::write(&path, bytes)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    output.commit()
}

/// Read a factor directory written by `save_dir`.
pub fn load_dir(dir: &Path) -> anyhow::Result<(FactorSet, FactorMeta)> {
    let path = dir.join(FACTORS_FILE);
    let file = path.display().to_string();
    let bytes = std::fs::read(&path)
        .map_err(|e| InputError::new(file.clone(), format!("cannot read factors: {e}")))?;
    Ok(decode(&bytes).map_err(|e| InputError::new(file, e.to_string()))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-module set with covariance sums filled with `value` (and eigenvalue sums when
    /// `lambda`).
    fn set(stage: Stage, value: f64, lambda: bool) -> FactorSet {
        let modules = [("m".to_string(), 2, 3)];
        FactorSet::from_arrays(Preconditioner::Ekfac, stage, &modules, |name| {
            let stat = name.strip_prefix("m.").unwrap();
            match stat {
                "activation_covariance_sum" if !lambda => Some((vec![2, 2], vec![value; 4])),
                "gradient_covariance_sum" if !lambda => Some((vec![3, 3], vec![value; 9])),
                "tokens" if !lambda => Some((vec![1], vec![10.0])),
                "lambda_sum" if lambda => Some((vec![3, 2], vec![value; 6])),
                "examples" if lambda => Some((vec![1], vec![4.0])),
                _ => None,
            }
        })
        .unwrap()
    }

    fn meta(stage: Stage, shard: Option<&str>) -> FactorMeta {
        FactorMeta {
            preconditioner: "ekfac".into(),
            stage: stage.name().into(),
            fisher: "empirical".into(),
            projection: None,
            modules: vec![("m".into(), 2, 3)],
            model: "a".repeat(64),
            train: "b".repeat(64),
            tokens: Some("c".repeat(64)),
            max_length: None,
            shard: shard.map(str::to_string),
            covariance: None,
        }
    }

    #[test]
    fn factor_directories_round_trip_and_refuse_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("factors");
        let written = set(Stage::Covariance, 0.5, false);
        let stage_meta = meta(Stage::Covariance, Some("0/2"));
        save_dir(&path, &written, &stage_meta, &[], false).unwrap();
        let (read, read_meta) = load_dir(&path).unwrap();
        assert_eq!(read_meta, stage_meta);
        assert_eq!(read.stage, Stage::Covariance);
        assert!(save_dir(&path, &written, &stage_meta, &[], false).is_err());
        save_dir(&path, &written, &stage_meta, &[], true).unwrap();
        let err = load_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("cannot read factors"), "{err}");
    }

    fn part<'a>(name: &'a str, stage: Stage, value: f64, shard: &str) -> StoredFactors<'a> {
        StoredFactors {
            name,
            set: set(stage, value, stage == Stage::Lambda),
            meta: meta(stage, Some(shard)),
        }
    }

    #[test]
    fn merged_sums_do_not_depend_on_the_order_of_the_parts() {
        // Values whose f64 sum depends on the order of addition.
        let parts = [
            part("a", Stage::Covariance, 1e16, "0/3"),
            part("b", Stage::Covariance, 1.0, "1/3"),
            part("c", Stage::Covariance, -1e16, "2/3"),
        ];
        let sums = |order: [usize; 3]| {
            let given: Vec<StoredFactors> = order
                .iter()
                .map(|&i| StoredFactors {
                    name: parts[i].name,
                    set: parts[i].set.clone(),
                    meta: parts[i].meta.clone(),
                })
                .collect();
            merge(&given).unwrap().0.to_arrays()
        };
        assert_ne!((1e16 + -1e16) + 1.0, (1e16 + 1.0) + -1e16);
        let want = sums([0, 1, 2]);
        assert_eq!(sums([2, 0, 1]), want);
        assert_eq!(sums([1, 2, 0]), want);
    }

    #[test]
    fn encoded_factors_decode_to_the_same_sums_and_meta() {
        let factors = set(Stage::Covariance, 1.5, false);
        let stored = meta(Stage::Covariance, Some("0/2"));
        let bytes = encode(&factors, &stored, &[("curate.seed".into(), "0".into())]).unwrap();
        let (back, back_meta) = decode(&bytes).unwrap();
        assert_eq!(back.modules, factors.modules);
        assert_eq!(back_meta, stored);
        assert!(matches!(
            decode(b"not safetensors"),
            Err(StoreError::NotSafetensors(_))
        ));
    }

    #[test]
    fn covariance_shards_add_up() {
        let parts = [
            part("s0", Stage::Covariance, 1.0, "0/2"),
            part("s1", Stage::Covariance, 2.0, "1/2"),
        ];
        let (merged, merged_meta) = merge(&parts).unwrap();
        assert_eq!(merged.stage, Stage::Covariance);
        let m = &merged.modules[0];
        assert_eq!(m.activation_sum.as_ref().unwrap()[(0, 1)], 3.0);
        assert_eq!(m.tokens, 20.0);
        assert_eq!(merged_meta.shard, None);
        assert_eq!(merged_meta.stage, "covariance");
    }

    #[test]
    fn eigenvalue_shards_join_the_covariances_that_rotated_them() {
        let covariances = StoredFactors {
            name: "cov",
            set: set(Stage::Covariance, 1.0, false),
            meta: meta(Stage::Covariance, None),
        };
        let digest = covariance_digest(&covariances.set);
        let mut shards = [
            part("l0", Stage::Lambda, 0.5, "0/2"),
            part("l1", Stage::Lambda, 0.25, "1/2"),
        ];
        for shard in &mut shards {
            shard.meta.covariance = Some(digest.clone());
        }
        let [l0, l1] = shards;
        let (merged, merged_meta) = merge(&[covariances, l0, l1]).unwrap();
        assert_eq!(merged.stage, Stage::Complete);
        let m = &merged.modules[0];
        assert_eq!(m.lambda_sum.as_ref().unwrap()[(2, 1)], 0.75);
        assert_eq!(m.examples, 8.0);
        assert_eq!(m.tokens, 10.0);
        assert_eq!(merged_meta.covariance, None);

        let lone = [part("l0", Stage::Lambda, 0.5, "0/1")];
        assert_eq!(merge(&lone).unwrap_err(), MergeError::NoCovariance);
    }

    #[test]
    fn shards_must_cover_every_index_once() {
        let missing = [part("s0", Stage::Covariance, 1.0, "0/3")];
        assert_eq!(
            merge(&missing).unwrap_err(),
            MergeError::Missing(vec!["1/3".into(), "2/3".into()])
        );
        let twice = [
            part("a", Stage::Covariance, 1.0, "0/2"),
            part("b", Stage::Covariance, 1.0, "0/2"),
        ];
        assert_eq!(
            merge(&twice).unwrap_err().to_string(),
            "b and a are both shard 0/2"
        );
        let mut other = part("b", Stage::Covariance, 1.0, "1/2");
        other.meta.model = "c".repeat(64);
        let differ = [part("a", Stage::Covariance, 1.0, "0/2"), other];
        assert!(matches!(
            merge(&differ).unwrap_err(),
            MergeError::DifferentFits(..)
        ));
        // Rows cut to another --max-length are other data.
        let mut cut = part("b", Stage::Covariance, 1.0, "1/2");
        cut.meta.max_length = Some(64);
        let differ = [part("a", Stage::Covariance, 1.0, "0/2"), cut];
        assert!(matches!(
            merge(&differ).unwrap_err(),
            MergeError::DifferentFits(..)
        ));
        let whole = [StoredFactors {
            name: "w",
            set: set(Stage::Complete, 1.0, false),
            meta: meta(Stage::Complete, None),
        }];
        assert_eq!(
            merge(&whole).unwrap_err(),
            MergeError::NotAShard("w".into())
        );
    }

    #[test]
    fn a_mismatch_names_what_differs() {
        let stored = meta(Stage::Complete, None);
        let model = "a".repeat(64);
        let mut run = RunFit {
            preconditioner: "ekfac",
            model: &model,
            projection: None,
            fisher: "empirical",
            max_length: None,
        };
        assert_eq!(stored.mismatch(&run), None);
        run.max_length = Some(512);
        assert_eq!(
            stored.mismatch(&run).unwrap().to_string(),
            "the factors were fitted with --max-length none, this run uses 512"
        );
        run.max_length = None;
        run.projection = Some("kron:4,4");
        assert_eq!(
            stored.mismatch(&run).unwrap().to_string(),
            "the factors were fitted with projection none, this run uses kron:4,4"
        );
        let other = "f".repeat(64);
        run.model = &other;
        assert_eq!(
            stored.mismatch(&run).unwrap().to_string(),
            "the factors were fitted on model sha256 aaaaaaaaaaaa, this run uses sha256 ffffffffffff"
        );
    }
}
