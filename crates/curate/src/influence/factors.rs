//! Factor statistics per tracked layer, kept as unnormalised sums plus counts so that shards
//! add up: covariances `sum_t a a^T`, `sum_t g g^T` over tokens (K-FAC, EK-FAC), and the
//! eigenvalue statistic `sum_n X_n^2` over examples, where `X_n` is the example's weight
//! gradient rotated into the covariances' eigenbases (EK-FAC) or as it is (diagonal).

use std::sync::{Arc, Mutex};

use anyhow::{Result, bail};
use faer::{Mat, Side};
use sha2::{Digest, Sha256};

use super::checkpoint::PassState;
use super::{ModuleStacks, Preconditioner, Rotation};

/// What a factor set holds so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Covariance sums only; EK-FAC still needs its eigenvalue pass.
    Covariance,
    /// Eigenvalue sums only (one shard of EK-FAC's second pass).
    Lambda,
    /// Everything the preconditioner needs.
    Complete,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Covariance => "covariance",
            Stage::Lambda => "lambda",
            Stage::Complete => "complete",
        }
    }

    pub fn parse(name: &str) -> Option<Stage> {
        [Stage::Covariance, Stage::Lambda, Stage::Complete]
            .into_iter()
            .find(|s| s.name() == name)
    }
}

/// One layer's sums. Shapes: activations `[in, in]`, gradients `[out, out]`, lambda `[out, in]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModuleFactors {
    pub name: String,
    pub in_dim: usize,
    pub out_dim: usize,
    pub activation_sum: Option<Mat<f64>>,
    pub gradient_sum: Option<Mat<f64>>,
    pub tokens: f64,
    pub lambda_sum: Option<Mat<f64>>,
    pub examples: f64,
    /// The eigenbasis last computed from the covariance sums, so the scoring that follows a
    /// fit in one run does not decompose them again.
    kept: KeptBasis,
}

/// An eigenbasis and the digest of the sums it was computed from: used only while the sums
/// still have that digest, so changing them (merging shards, adding batches) can never leave a
/// stale basis in use. A cache, not part of the factors' value: equal whatever it holds. A copy
/// starts with the same basis (shared, not recomputed) and keeps its own from then on.
#[derive(Debug, Default)]
struct KeptBasis(Mutex<Option<DigestedBasis>>);

/// A basis and the SHA-256 of the sums it was computed from.
type DigestedBasis = ([u8; 32], Arc<Eigenbasis>);

impl Clone for KeptBasis {
    fn clone(&self) -> Self {
        KeptBasis(Mutex::new(
            self.0.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        ))
    }
}

impl PartialEq for KeptBasis {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl ModuleFactors {
    fn empty(name: &str, in_dim: usize, out_dim: usize) -> Self {
        ModuleFactors {
            name: name.to_string(),
            in_dim,
            out_dim,
            activation_sum: None,
            gradient_sum: None,
            tokens: 0.0,
            lambda_sum: None,
            examples: 0.0,
            kept: KeptBasis::default(),
        }
    }

    /// SHA-256 of what the eigenbasis is computed from: the token count and both sums.
    fn covariance_digest(a: &Mat<f64>, g: &Mat<f64>, tokens: f64) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(tokens.to_le_bytes());
        let mut bytes = Vec::new();
        for sum in [a, g] {
            hasher.update((sum.nrows() as u64).to_le_bytes());
            for j in 0..sum.ncols() {
                bytes.clear();
                bytes.extend(sum.col_as_slice(j).iter().flat_map(|v| v.to_le_bytes()));
                hasher.update(&bytes);
            }
        }
        hasher.finalize().into()
    }

    /// `A = sum a a^T / N_tok`, `G = sum g g^T / N_tok`, eigendecomposed in f64; the basis last
    /// computed from the same sums when there is one.
    pub(crate) fn eigenbasis(&self) -> Result<Arc<Eigenbasis>> {
        let (Some(a), Some(g)) = (&self.activation_sum, &self.gradient_sum) else {
            bail!("{}: the factors hold no covariances", self.name);
        };
        let digest = Self::covariance_digest(a, g, self.tokens);
        let mut kept = self.kept.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((from, basis)) = kept.as_ref()
            && *from == digest
        {
            return Ok(basis.clone());
        }
        let basis = Arc::new(self.decompose()?);
        *kept = Some((digest, basis.clone()));
        Ok(basis)
    }

    /// The kept eigenbasis when it was computed from the sums as they are now.
    fn current_basis(&self) -> Option<Arc<Eigenbasis>> {
        let (Some(a), Some(g)) = (&self.activation_sum, &self.gradient_sum) else {
            return None;
        };
        let kept = self.kept.0.lock().unwrap_or_else(|e| e.into_inner());
        let (from, basis) = kept.as_ref()?;
        (*from == Self::covariance_digest(a, g, self.tokens)).then(|| basis.clone())
    }

    /// Keep `basis` as the eigenbasis of the sums as they are now.
    fn keep_basis(&self, basis: Eigenbasis) {
        if let (Some(a), Some(g)) = (&self.activation_sum, &self.gradient_sum) {
            let digest = Self::covariance_digest(a, g, self.tokens);
            *self.kept.0.lock().unwrap_or_else(|e| e.into_inner()) =
                Some((digest, Arc::new(basis)));
        }
    }

    fn decompose(&self) -> Result<Eigenbasis> {
        let (Some(a), Some(g)) = (&self.activation_sum, &self.gradient_sum) else {
            bail!("{}: the factors hold no covariances", self.name);
        };
        if self.tokens <= 0.0 {
            bail!("{}: the covariances were fitted on no tokens", self.name);
        }
        let decompose = |sum: &Mat<f64>, what: &str| -> Result<(Mat<f64>, Vec<f64>)> {
            let covariance = Mat::from_fn(sum.nrows(), sum.ncols(), |i, j| {
                // Symmetrise: the sums are symmetric up to rounding.
                0.5 * (sum[(i, j)] + sum[(j, i)]) / self.tokens
            });
            let eigen = covariance.self_adjoint_eigen(Side::Lower).map_err(|e| {
                anyhow::anyhow!(
                    "{}: eigendecomposition of the {what} covariance failed: {e:?}",
                    self.name
                )
            })?;
            let values = (0..sum.nrows()).map(|i| eigen.S()[i]).collect();
            Ok((eigen.U().to_owned(), values))
        };
        let (q_a, eig_a) = decompose(a, "activation")?;
        let (q_g, eig_g) = decompose(g, "gradient")?;
        Ok(Eigenbasis {
            q_a,
            eig_a,
            q_g,
            eig_g,
        })
    }

    /// The eigenvalue statistic's mean `sum / N_examples`.
    pub fn lambda_mean(&self) -> Result<Mat<f64>> {
        match &self.lambda_sum {
            Some(sum) if self.examples > 0.0 => {
                Ok(Mat::from_fn(sum.nrows(), sum.ncols(), |i, j| {
                    sum[(i, j)] / self.examples
                }))
            }
            _ => bail!("{}: the factors hold no eigenvalue statistics", self.name),
        }
    }
}

/// Eigenvectors (columns) and eigenvalues of one layer's two covariances.
#[derive(Debug, Clone)]
pub struct Eigenbasis {
    pub q_a: Mat<f64>,
    pub eig_a: Vec<f64>,
    pub q_g: Mat<f64>,
    pub eig_g: Vec<f64>,
}

/// The factors of every tracked layer, in capture order.
#[derive(Debug, Clone, PartialEq)]
pub struct FactorSet {
    pub preconditioner: Preconditioner,
    pub stage: Stage,
    pub modules: Vec<ModuleFactors>,
}

impl FactorSet {
    pub fn new(preconditioner: Preconditioner, stage: Stage) -> Self {
        FactorSet {
            preconditioner,
            stage,
            modules: Vec::new(),
        }
    }

    fn module_slots(&mut self, stacks: &[ModuleStacks]) -> Result<()> {
        if self.modules.is_empty() {
            self.modules = stacks
                .iter()
                .map(|s| ModuleFactors::empty(&s.name, s.in_dim(), s.out_dim()))
                .collect();
            return Ok(());
        }
        let same = self.modules.len() == stacks.len()
            && self.modules.iter().zip(stacks).all(|(m, s)| {
                m.name == s.name && m.in_dim == s.in_dim() && m.out_dim == s.out_dim()
            });
        if !same {
            bail!("the tracked modules changed between batches");
        }
        Ok(())
    }

    /// Add a batch's token covariances.
    pub(crate) fn add_covariances(&mut self, stacks: &[ModuleStacks]) -> Result<()> {
        self.module_slots(stacks)?;
        for (module, stack) in self.modules.iter_mut().zip(stacks) {
            let a_sum = module
                .activation_sum
                .get_or_insert_with(|| Mat::zeros(module.in_dim, module.in_dim));
            let g_sum = module
                .gradient_sum
                .get_or_insert_with(|| Mat::zeros(module.out_dim, module.out_dim));
            for example in &stack.examples {
                add_gram(a_sum, &example.inputs);
                add_gram(g_sum, &example.output_grads);
                module.tokens += example.tokens() as f64;
            }
        }
        Ok(())
    }

    /// Add a batch's eigenvalue statistics: EK-FAC rotates each example's gradient into
    /// `rotations`; the diagonal preconditioner squares it as it is.
    pub(crate) fn add_lambdas(
        &mut self,
        stacks: &[ModuleStacks],
        rotations: Option<&[Rotation]>,
    ) -> Result<()> {
        self.module_slots(stacks)?;
        for (index, (module, stack)) in self.modules.iter_mut().zip(stacks).enumerate() {
            let sum = module
                .lambda_sum
                .get_or_insert_with(|| Mat::zeros(module.out_dim, module.in_dim));
            for example in &stack.examples {
                let x = match rotations {
                    Some(rotations) => rotations[index].rotate_stack(example),
                    None => example.weight_grad(),
                };
                for j in 0..x.ncols() {
                    for i in 0..x.nrows() {
                        sum[(i, j)] += x[(i, j)] * x[(i, j)];
                    }
                }
                module.examples += 1.0;
            }
        }
        Ok(())
    }

    /// Add another factor set's sums (shards of the same fit).
    pub fn merge(&mut self, other: &FactorSet) -> Result<()> {
        if self.modules.is_empty() {
            self.modules = other.modules.clone();
            return Ok(());
        }
        if self.modules.len() != other.modules.len() {
            bail!("the factor sets track different modules");
        }
        for (mine, theirs) in self.modules.iter_mut().zip(&other.modules) {
            if mine.name != theirs.name
                || mine.in_dim != theirs.in_dim
                || mine.out_dim != theirs.out_dim
            {
                bail!(
                    "the factor sets track different modules ({} vs {})",
                    mine.name,
                    theirs.name
                );
            }
            add_optional(&mut mine.activation_sum, &theirs.activation_sum);
            add_optional(&mut mine.gradient_sum, &theirs.gradient_sum);
            add_optional(&mut mine.lambda_sum, &theirs.lambda_sum);
            mine.tokens += theirs.tokens;
            mine.examples += theirs.examples;
        }
        Ok(())
    }

    /// Every module's eigenbasis. faer decomposes on one thread, so the modules are spread
    /// over the thread pool (on SmolLM2's 90 MLP modules this is most of a short fit); each is
    /// computed alone, so the result does not depend on the thread count.
    pub(crate) fn eigenbases(&self) -> Result<Vec<Arc<Eigenbasis>>> {
        use rayon::prelude::*;
        // Largest first, so the last thread to finish is not left with the largest one.
        let mut order: Vec<usize> = (0..self.modules.len()).collect();
        order.sort_by_key(|&i| {
            let m = &self.modules[i];
            std::cmp::Reverse(m.in_dim.pow(3) + m.out_dim.pow(3))
        });
        let mut bases: Vec<(usize, Arc<Eigenbasis>)> = order
            .par_iter()
            .map(|&i| self.modules[i].eigenbasis().map(|b| (i, b)))
            .collect::<Result<_>>()?;
        bases.sort_by_key(|(i, _)| *i);
        Ok(bases.into_iter().map(|(_, b)| b).collect())
    }

    /// This set as a checkpoint's pass state, after `batches` batches holding `rows` rows.
    pub(crate) fn to_state(&self, batches: usize, rows: usize, complete: bool) -> PassState {
        PassState {
            batches,
            rows,
            complete,
            names: self.modules.iter().map(|m| m.name.clone()).collect(),
            arrays: self.to_arrays(),
        }
    }

    /// The set a checkpoint saved with [`FactorSet::to_state`]; the layer shapes come from
    /// the arrays themselves.
    pub(crate) fn from_state(
        preconditioner: Preconditioner,
        stage: Stage,
        state: &PassState,
    ) -> Result<FactorSet> {
        let modules = state
            .names
            .iter()
            .map(|name| {
                let shape = |stat: &str| state.array(&format!("{name}.{stat}")).map(|(s, _)| s);
                let (in_dim, out_dim) = match (
                    shape("activation_covariance_sum"),
                    shape("gradient_covariance_sum"),
                    shape("lambda_sum"),
                ) {
                    (_, _, Some(&[o, i])) => (i, o),
                    (Some(&[i, _]), Some(&[o, _]), None) => (i, o),
                    _ => bail!("the checkpoint holds no sums of {name}"),
                };
                Ok((name.clone(), in_dim, out_dim))
            })
            .collect::<Result<Vec<_>>>()?;
        FactorSet::from_arrays(preconditioner, stage, &modules, |key| {
            state
                .array(key)
                .map(|(shape, values)| (shape.to_vec(), values.to_vec()))
        })
    }

    /// Named arrays (row-major) for storage: `<module>.<stat>` with shapes; counts are 1-element.
    pub(crate) fn to_arrays(&self) -> Vec<(String, Vec<usize>, Vec<f64>)> {
        let mut arrays = Vec::new();
        for m in &self.modules {
            let mut push = |stat: &str, mat: &Option<Mat<f64>>| {
                if let Some(mat) = mat {
                    let values = (0..mat.nrows())
                        .flat_map(|i| (0..mat.ncols()).map(move |j| mat[(i, j)]))
                        .collect();
                    arrays.push((
                        format!("{}.{stat}", m.name),
                        vec![mat.nrows(), mat.ncols()],
                        values,
                    ));
                }
            };
            push("activation_covariance_sum", &m.activation_sum);
            push("gradient_covariance_sum", &m.gradient_sum);
            push("lambda_sum", &m.lambda_sum);
            if m.activation_sum.is_some() {
                arrays.push((format!("{}.tokens", m.name), vec![1], vec![m.tokens]));
            }
            if m.lambda_sum.is_some() {
                arrays.push((format!("{}.examples", m.name), vec![1], vec![m.examples]));
            }
        }
        arrays
    }

    /// The eigenbases computed from the sums as they are now (a fit's, for EK-FAC), as named
    /// arrays beside [`FactorSet::to_arrays`]: stored with the factors, so scoring from them does
    /// not decompose the covariances again.
    pub(crate) fn basis_arrays(&self) -> Vec<(String, Vec<usize>, Vec<f64>)> {
        let mut arrays = Vec::new();
        for m in &self.modules {
            let Some(basis) = m.current_basis() else {
                continue;
            };
            for (stat, vectors, values) in [
                ("activation", &basis.q_a, &basis.eig_a),
                ("gradient", &basis.q_g, &basis.eig_g),
            ] {
                let n = vectors.nrows();
                let flat = (0..n)
                    .flat_map(|i| (0..n).map(move |j| vectors[(i, j)]))
                    .collect();
                arrays.push((format!("{}.{stat}_eigenvectors", m.name), vec![n, n], flat));
                arrays.push((
                    format!("{}.{stat}_eigenvalues", m.name),
                    vec![n],
                    values.clone(),
                ));
            }
        }
        arrays
    }

    /// Take up the eigenbases [`FactorSet::basis_arrays`] stored, for the sums read with them.
    /// A module without them, or with arrays of the wrong shape, decomposes when asked.
    pub(crate) fn keep_stored_bases(
        &self,
        mut lookup: impl FnMut(&str) -> Option<(Vec<usize>, Vec<f64>)>,
    ) {
        for m in &self.modules {
            let mut side = |stat: &str, n: usize| -> Option<(Mat<f64>, Vec<f64>)> {
                let (shape, vectors) = lookup(&format!("{}.{stat}_eigenvectors", m.name))?;
                let (value_shape, values) = lookup(&format!("{}.{stat}_eigenvalues", m.name))?;
                let fits = shape == [n, n]
                    && vectors.len() == n * n
                    && value_shape == [n]
                    && values.len() == n
                    && vectors.iter().chain(&values).all(|v| v.is_finite());
                fits.then(|| (Mat::from_fn(n, n, |i, j| vectors[i * n + j]), values))
            };
            if let (Some((q_a, eig_a)), Some((q_g, eig_g))) =
                (side("activation", m.in_dim), side("gradient", m.out_dim))
            {
                m.keep_basis(Eigenbasis {
                    q_a,
                    eig_a,
                    q_g,
                    eig_g,
                });
            }
        }
    }

    /// Rebuild from named arrays; `modules` gives the order and the layer shapes `(in, out)`.
    pub(crate) fn from_arrays(
        preconditioner: Preconditioner,
        stage: Stage,
        modules: &[(String, usize, usize)],
        mut lookup: impl FnMut(&str) -> Option<(Vec<usize>, Vec<f64>)>,
    ) -> Result<FactorSet> {
        let mut set = FactorSet::new(preconditioner, stage);
        for (name, in_dim, out_dim) in modules {
            let mut m = ModuleFactors::empty(name, *in_dim, *out_dim);
            let mut matrix = |stat: &str, rows: usize, cols: usize| -> Result<Option<Mat<f64>>> {
                let key = format!("{name}.{stat}");
                let Some((shape, values)) = lookup(&key) else {
                    return Ok(None);
                };
                if shape != [rows, cols] || values.len() != rows * cols {
                    bail!("{key} has shape {shape:?}, expected [{rows}, {cols}]");
                }
                Ok(Some(Mat::from_fn(rows, cols, |i, j| values[i * cols + j])))
            };
            m.activation_sum = matrix("activation_covariance_sum", *in_dim, *in_dim)?;
            m.gradient_sum = matrix("gradient_covariance_sum", *out_dim, *out_dim)?;
            m.lambda_sum = matrix("lambda_sum", *out_dim, *in_dim)?;
            let mut count = |stat: &str| {
                lookup(&format!("{name}.{stat}")).and_then(|(_, v)| v.first().copied())
            };
            m.tokens = count("tokens").unwrap_or(0.0);
            m.examples = count("examples").unwrap_or(0.0);
            set.modules.push(m);
        }
        Ok(set)
    }
}

fn add_optional(mine: &mut Option<Mat<f64>>, theirs: &Option<Mat<f64>>) {
    match (mine.as_mut(), theirs) {
        (Some(m), Some(t)) => *m += t,
        (None, Some(t)) => *mine = Some(t.clone()),
        _ => {}
    }
}

/// `sum += x^T x` (x is `[T, d]`).
fn add_gram(sum: &mut Mat<f64>, x: &Mat<f64>) {
    faer::linalg::matmul::matmul(
        sum.as_mut(),
        faer::Accum::Add,
        x.transpose(),
        x.as_ref(),
        1.0,
        faer::Par::Seq,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module() -> ModuleFactors {
        let mut m = ModuleFactors::empty("m", 3, 2);
        m.activation_sum = Some(Mat::from_fn(3, 3, |i, j| {
            if i == j { (i + 1) as f64 } else { 0.1 }
        }));
        m.gradient_sum = Some(Mat::from_fn(2, 2, |i, j| {
            if i == j { 2.0 + i as f64 } else { 0.3 }
        }));
        m.tokens = 4.0;
        m
    }

    #[test]
    fn a_basis_is_reused_only_while_its_sums_are_unchanged() {
        let m = module();
        let first = m.eigenbasis().unwrap();
        assert!(Arc::ptr_eq(&first, &m.eigenbasis().unwrap()));
        // A copy with the same sums (a fit's factors handed to scoring) reuses it.
        assert!(Arc::ptr_eq(&first, &m.clone().eigenbasis().unwrap()));

        // A copy whose sums change gets its own, computed from the new sums.
        let mut changed = m.clone();
        changed.activation_sum.as_mut().unwrap()[(0, 0)] += 1.0;
        let fresh = changed.eigenbasis().unwrap();
        assert!(!Arc::ptr_eq(&first, &fresh));
        assert_eq!(fresh.eig_a, changed.decompose().unwrap().eig_a);
        assert_ne!(fresh.eig_a, first.eig_a);
        // More tokens, the same sums: the covariances halve.
        changed.tokens = 8.0;
        let halved = changed.eigenbasis().unwrap();
        for (h, f) in halved.eig_g.iter().zip(&fresh.eig_g) {
            assert!((h * 2.0 - f).abs() < 1e-12);
        }
        // The original keeps its own basis.
        assert_eq!(m.eigenbasis().unwrap().eig_a, first.eig_a);
    }

    #[test]
    fn stored_bases_are_taken_up_for_the_sums_stored_with_them() {
        let mut set = FactorSet::new(Preconditioner::Ekfac, Stage::Complete);
        set.modules.push(module());
        assert!(set.basis_arrays().is_empty(), "no basis computed yet");
        let computed = set.eigenbases().unwrap();
        let mut arrays = set.to_arrays();
        let bases = set.basis_arrays();
        assert_eq!(bases.len(), 4);
        // Mark the stored eigenvalues, to see which basis a reader uses.
        arrays.extend(bases.into_iter().map(|(name, shape, mut values)| {
            if name.ends_with("eigenvalues") {
                values.iter_mut().for_each(|v| *v *= 10.0);
            }
            (name, shape, values)
        }));
        let lookup = |key: &str| {
            arrays
                .iter()
                .find(|(name, _, _)| name == key)
                .map(|(_, shape, values)| (shape.clone(), values.clone()))
        };
        let modules = [("m".to_string(), 3, 2)];
        let read = FactorSet::from_arrays(Preconditioner::Ekfac, Stage::Complete, &modules, lookup)
            .unwrap();
        read.keep_stored_bases(lookup);
        let stored = read.modules[0].eigenbasis().unwrap();
        assert_eq!(stored.eig_a[0], computed[0].eig_a[0] * 10.0);
        assert_eq!(stored.q_g.nrows(), 2);
        // Sums changed after reading: the stored basis no longer applies.
        let mut changed = read.clone();
        changed.modules[0].tokens = 8.0;
        let fresh = changed.modules[0].eigenbasis().unwrap();
        assert!((fresh.eig_a[0] * 2.0 - computed[0].eig_a[0]).abs() < 1e-12);
        // Arrays of the wrong shape are not taken up.
        let wrong =
            FactorSet::from_arrays(Preconditioner::Ekfac, Stage::Complete, &modules, lookup)
                .unwrap();
        wrong.keep_stored_bases(|key: &str| {
            lookup(key).map(|(shape, mut values)| {
                values.pop();
                (shape, values)
            })
        });
        assert_eq!(
            wrong.modules[0].eigenbasis().unwrap().eig_a,
            computed[0].eig_a
        );
    }
}
