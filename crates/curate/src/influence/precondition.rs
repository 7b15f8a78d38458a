//! Preconditioners: how `(H + damping)^-1` is applied to a query gradient, per layer.

use std::sync::Arc;

use anyhow::{Result, bail};
use faer::Mat;

use super::factors::Eigenbasis;
use super::{ExampleStack, ModuleFactors};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preconditioner {
    /// Plain gradient dot product.
    Identity,
    /// Diagonal empirical Fisher: mean over examples of the squared weight gradient.
    Diagonal,
    /// Kronecker-factored: eigenvalues `lambda_G lambda_A^T` in the covariances' eigenbases.
    Kfac,
    /// K-FAC's eigenbases with eigenvalues refitted per example (George et al., 2018).
    Ekfac,
}

impl Preconditioner {
    pub const ALL: [Preconditioner; 4] = [
        Preconditioner::Identity,
        Preconditioner::Diagonal,
        Preconditioner::Kfac,
        Preconditioner::Ekfac,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Preconditioner::Identity => "identity",
            Preconditioner::Diagonal => "diagonal",
            Preconditioner::Kfac => "kfac",
            Preconditioner::Ekfac => "ekfac",
        }
    }

    pub fn parse(name: &str) -> Option<Preconditioner> {
        Preconditioner::ALL.into_iter().find(|p| p.name() == name)
    }

    /// Needs the token covariances (first pass).
    pub(crate) fn needs_covariance(self) -> bool {
        matches!(self, Preconditioner::Kfac | Preconditioner::Ekfac)
    }

    /// Needs per-example eigenvalue statistics.
    pub(crate) fn needs_lambda(self) -> bool {
        matches!(self, Preconditioner::Diagonal | Preconditioner::Ekfac)
    }

    /// Needs a second pass over the data after the first (EK-FAC's rotation needs the
    /// covariances' eigenvectors).
    pub(crate) fn two_passes(self) -> bool {
        self == Preconditioner::Ekfac
    }
}

/// The damping added to every eigenvalue before inversion.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Damping {
    Fixed(f64),
    /// `0.1 x mean(eigenvalues)` per layer, as kronfluence's default.
    Heuristic,
}

impl std::str::FromStr for Damping {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text == "heuristic" {
            return Ok(Damping::Heuristic);
        }
        match text.parse::<f64>() {
            Ok(value) if value.is_finite() && value >= 0.0 => Ok(Damping::Fixed(value)),
            _ => Err("expected a non-negative number or 'heuristic'".to_string()),
        }
    }
}

impl Damping {
    fn value(self, eigenvalues: &Mat<f64>) -> f64 {
        match self {
            Damping::Fixed(value) => value,
            Damping::Heuristic => {
                let count = (eigenvalues.nrows() * eigenvalues.ncols()).max(1) as f64;
                let mut sum = 0.0;
                for j in 0..eigenvalues.ncols() {
                    for i in 0..eigenvalues.nrows() {
                        sum += eigenvalues[(i, j)];
                    }
                }
                0.1 * sum / count
            }
        }
    }
}

/// The precision the gradients were captured in: an f32 model's eigenbasis rotations run in
/// f32 (as kronfluence's default `precondition_dtype`), an f64 model's in f64. Factors and
/// their eigendecompositions are f64 either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    Single,
    Double,
}

/// One layer's ready-to-apply inverse.
#[derive(Debug, Clone)]
pub enum ModulePreconditioner {
    Identity,
    /// Elementwise `1 / (Lambda + damping)`.
    Diagonal {
        inverse: Mat<f64>,
    },
    /// `Q_G ((Q_G^T X Q_A) / (Lambda + damping)) Q_A^T`.
    Eigen {
        rotation: Rotation,
        inverse: Mat<f64>,
    },
}

/// A layer's eigenbasis (shared with the factors it came from), ready to rotate gradients in
/// the precision they were captured in.
#[derive(Debug, Clone)]
pub struct Rotation {
    basis: Arc<Eigenbasis>,
    /// `Q_G` and `Q_A` rounded to f32, where the rotations run in single precision.
    single: Option<(Mat<f32>, Mat<f32>)>,
}

impl Rotation {
    pub fn new(basis: Arc<Eigenbasis>, precision: Precision) -> Rotation {
        let single = match precision {
            Precision::Single => {
                Some((to_single(basis.q_g.as_ref()), to_single(basis.q_a.as_ref())))
            }
            Precision::Double => None,
        };
        Rotation { basis, single }
    }

    /// `Q_G^T DW Q_A` of one example's weight gradient `DW = G^T A`, from its token stacks.
    /// A short stack is rotated before it is contracted, `(G Q_G)^T (A Q_A)`:
    /// `T (O^2 + I^2 + O I)` multiply-adds against `T O I + O I (O + I)` for forming `DW` and
    /// rotating it (a third of the work for a 200-token example of a 576 x 1536 projection).
    pub fn rotate_stack(&self, example: &ExampleStack) -> Mat<f64> {
        let (grads, inputs) = (example.output_grads.as_ref(), example.inputs.as_ref());
        let stacks_first = rotate_stacks_first(example.tokens(), grads.ncols(), inputs.ncols());
        match &self.single {
            None if stacks_first => {
                let (q_g, q_a) = (&self.basis.q_g, &self.basis.q_a);
                (grads * q_g).transpose() * (inputs * q_a)
            }
            Some((q_g, q_a)) if stacks_first => {
                let rotated = (to_single(grads) * q_g).transpose() * (to_single(inputs) * q_a);
                to_double(&rotated)
            }
            _ => self.rotate(&example.weight_grad()),
        }
    }

    /// `Q_G^T X Q_A` of a formed `[out, in]` gradient.
    pub fn rotate(&self, gradient: &Mat<f64>) -> Mat<f64> {
        match &self.single {
            None => self.basis.q_g.transpose() * gradient * &self.basis.q_a,
            Some((q_g, q_a)) => to_double(&(q_g.transpose() * to_single(gradient.as_ref()) * q_a)),
        }
    }

    /// `Q_G X Q_A^T`: a rotated `[out, in]` matrix back in the weights' basis.
    fn rotate_back(&self, rotated: &Mat<f64>) -> Mat<f64> {
        match &self.single {
            None => &self.basis.q_g * rotated * self.basis.q_a.transpose(),
            Some((q_g, q_a)) => to_double(&(q_g * to_single(rotated.as_ref()) * q_a.transpose())),
        }
    }
}

/// Whether rotating `tokens` rows of output gradients and inputs costs less than forming the
/// `[out, in]` weight gradient and rotating it (multiply-adds of the two orders).
fn rotate_stacks_first(tokens: usize, out_dim: usize, in_dim: usize) -> bool {
    let (t, o, i) = (tokens as u128, out_dim as u128, in_dim as u128);
    t * (o * o + i * i + o * i) <= t * o * i + o * i * (o + i)
}

fn to_single(matrix: faer::MatRef<'_, f64>) -> Mat<f32> {
    Mat::from_fn(matrix.nrows(), matrix.ncols(), |i, j| matrix[(i, j)] as f32)
}

fn to_double(matrix: &Mat<f32>) -> Mat<f64> {
    Mat::from_fn(matrix.nrows(), matrix.ncols(), |i, j| {
        f64::from(matrix[(i, j)])
    })
}

/// A factor has eigenvalues of zero and the damping added none: the inverse does not exist.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{module}: damped eigenvalues of zero")]
pub struct UndampedZero {
    pub module: String,
}

impl ModulePreconditioner {
    pub fn build(
        preconditioner: Preconditioner,
        factors: &ModuleFactors,
        damping: Damping,
        precision: Precision,
    ) -> Result<ModulePreconditioner> {
        let rotation = |basis: Arc<Eigenbasis>| Rotation::new(basis, precision);
        let invert = |eigenvalues: Mat<f64>| -> Result<Mat<f64>> {
            let damping = damping.value(&eigenvalues);
            let inverse = Mat::from_fn(eigenvalues.nrows(), eigenvalues.ncols(), |i, j| {
                1.0 / (eigenvalues[(i, j)] + damping)
            });
            if inverse.col_iter().any(|c| c.iter().any(|v| !v.is_finite())) {
                bail!(UndampedZero {
                    module: factors.name.clone()
                });
            }
            Ok(inverse)
        };
        Ok(match preconditioner {
            Preconditioner::Identity => ModulePreconditioner::Identity,
            Preconditioner::Diagonal => ModulePreconditioner::Diagonal {
                inverse: invert(factors.lambda_mean()?)?,
            },
            Preconditioner::Kfac => {
                let basis = factors.eigenbasis()?;
                let eigenvalues = Mat::from_fn(basis.eig_g.len(), basis.eig_a.len(), |i, j| {
                    basis.eig_g[i] * basis.eig_a[j]
                });
                ModulePreconditioner::Eigen {
                    inverse: invert(eigenvalues)?,
                    rotation: rotation(basis),
                }
            }
            Preconditioner::Ekfac => {
                let basis = factors.eigenbasis()?;
                ModulePreconditioner::Eigen {
                    inverse: invert(factors.lambda_mean()?)?,
                    rotation: rotation(basis),
                }
            }
        })
    }

    /// Precondition a weight gradient `[out, in]`.
    pub fn apply(&self, gradient: &Mat<f64>) -> Mat<f64> {
        match self {
            ModulePreconditioner::Identity => gradient.clone(),
            ModulePreconditioner::Diagonal { inverse } => {
                Mat::from_fn(gradient.nrows(), gradient.ncols(), |i, j| {
                    gradient[(i, j)] * inverse[(i, j)]
                })
            }
            ModulePreconditioner::Eigen { rotation, inverse } => {
                rotation.rotate_back(&scale(rotation.rotate(gradient), inverse))
            }
        }
    }

    /// Precondition the weight gradient `sum_t g_t a_t^T` of one example given as its token
    /// stacks (see [`Rotation::rotate_stack`]). Equal to [`Self::apply`] of the formed
    /// gradient up to rounding.
    pub fn apply_stack(&self, example: &ExampleStack) -> Mat<f64> {
        match self {
            ModulePreconditioner::Eigen { rotation, inverse } => {
                rotation.rotate_back(&scale(rotation.rotate_stack(example), inverse))
            }
            _ => self.apply(&example.weight_grad()),
        }
    }
}

/// `rotated / (Lambda + damping)`, elementwise.
fn scale(mut rotated: Mat<f64>, inverse: &Mat<f64>) -> Mat<f64> {
    for j in 0..rotated.ncols() {
        for i in 0..rotated.nrows() {
            rotated[(i, j)] *= inverse[(i, j)];
        }
    }
    rotated
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;
    use faer::Side;

    fn random(rows: usize, cols: usize, seed: u64) -> Mat<f64> {
        let mut rng = SplitMix64::new(seed);
        Mat::from_fn(rows, cols, |_, _| rng.normal())
    }

    /// The eigenvectors of a random covariance, as a fit would have them.
    fn eigenvectors(n: usize, seed: u64) -> (Mat<f64>, Vec<f64>) {
        let x = random(2 * n, n, seed);
        let covariance = x.transpose() * &x;
        let eigen = covariance.self_adjoint_eigen(Side::Lower).unwrap();
        (eigen.U().to_owned(), (0..n).map(|i| eigen.S()[i]).collect())
    }

    fn eigen(out_dim: usize, in_dim: usize, precision: Precision) -> ModulePreconditioner {
        let (q_a, eig_a) = eigenvectors(in_dim, 1);
        let (q_g, eig_g) = eigenvectors(out_dim, 2);
        let basis = Arc::new(Eigenbasis {
            q_a,
            eig_a,
            q_g,
            eig_g,
        });
        let mut rng = SplitMix64::new(3);
        let inverse = Mat::from_fn(out_dim, in_dim, |_, _| 1.0 / (0.01 + rng.normal().abs()));
        ModulePreconditioner::Eigen {
            rotation: Rotation::new(basis, precision),
            inverse,
        }
    }

    fn example(tokens: usize, out_dim: usize, in_dim: usize) -> ExampleStack {
        ExampleStack {
            inputs: random(tokens, in_dim, 4),
            output_grads: random(tokens, out_dim, 5),
        }
    }

    /// Largest difference relative to the largest entry of `want`.
    fn relative(got: &Mat<f64>, want: &Mat<f64>) -> f64 {
        let mut worst: f64 = 0.0;
        let mut largest: f64 = 0.0;
        for j in 0..want.ncols() {
            for i in 0..want.nrows() {
                worst = worst.max((got[(i, j)] - want[(i, j)]).abs());
                largest = largest.max(want[(i, j)].abs());
            }
        }
        worst / largest
    }

    #[test]
    fn stacks_rotate_first_only_while_that_is_cheaper() {
        // A 576 x 1536 projection: a 200-token example rotates its stacks, a 1,000-token one
        // forms its gradient first.
        assert!(rotate_stacks_first(200, 576, 1536));
        assert!(!rotate_stacks_first(1000, 576, 1536));
        assert!(rotate_stacks_first(1, 3, 5));
    }

    #[test]
    fn a_stack_is_preconditioned_as_its_formed_gradient_in_either_order() {
        let (out_dim, in_dim) = (6, 9);
        let preconditioner = eigen(out_dim, in_dim, Precision::Double);
        for tokens in [2, 40] {
            let example = example(tokens, out_dim, in_dim);
            let short = rotate_stacks_first(tokens, out_dim, in_dim);
            assert_eq!(short, tokens == 2, "both orders are covered");
            let from_stack = preconditioner.apply_stack(&example);
            let from_formed = preconditioner.apply(&example.weight_grad());
            let error = relative(&from_stack, &from_formed);
            assert!(error < 1e-13, "{tokens} tokens: {error:e}");
        }
    }

    #[test]
    fn single_precision_rotations_stay_within_f32_rounding() {
        let (out_dim, in_dim) = (24, 40);
        let double = eigen(out_dim, in_dim, Precision::Double);
        let single = eigen(out_dim, in_dim, Precision::Single);
        for tokens in [3, 200] {
            let example = example(tokens, out_dim, in_dim);
            let want = double.apply_stack(&example);
            let got = single.apply_stack(&example);
            let error = relative(&got, &want);
            // Rounded (so the products really ran in f32), yet within f32's reach.
            assert!(error > 1e-10 && error < 1e-5, "{tokens} tokens: {error:e}");
            let error = relative(&single.apply(&example.weight_grad()), &want);
            assert!(
                error > 1e-10 && error < 1e-5,
                "formed, {tokens} tokens: {error:e}"
            );
        }
    }
}
