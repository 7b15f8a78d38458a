//! Preconditioners: how `(H + damping)^-1` is applied to a query gradient, per layer.

use std::sync::Arc;

use anyhow::{Result, bail};
use faer::Mat;

use super::ModuleFactors;
use super::factors::Eigenbasis;

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

/// One layer's ready-to-apply inverse.
#[derive(Debug, Clone)]
pub enum ModulePreconditioner {
    Identity,
    /// Elementwise `1 / (Lambda + damping)`.
    Diagonal {
        inverse: Mat<f64>,
    },
    /// `Q_G ((Q_G^T X Q_A) / (Lambda + damping)) Q_A^T`, with the eigenvectors shared with
    /// the factors they came from.
    Eigen {
        basis: Arc<Eigenbasis>,
        inverse: Mat<f64>,
    },
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
    ) -> Result<ModulePreconditioner> {
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
                    basis,
                }
            }
            Preconditioner::Ekfac => {
                let basis = factors.eigenbasis()?;
                ModulePreconditioner::Eigen {
                    inverse: invert(factors.lambda_mean()?)?,
                    basis,
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
            ModulePreconditioner::Eigen { basis, inverse } => {
                let (q_a, q_g) = (&basis.q_a, &basis.q_g);
                let rotated = q_g.transpose() * gradient * q_a;
                let scaled = Mat::from_fn(rotated.nrows(), rotated.ncols(), |i, j| {
                    rotated[(i, j)] * inverse[(i, j)]
                });
                q_g * scaled * q_a.transpose()
            }
        }
    }
}
