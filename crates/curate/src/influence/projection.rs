//! Kronecker (LoGra-style) projection of a layer's gradient space: `a <- P_in a`,
//! `g <- P_out g`, so the weight gradient `g a^T` becomes `P_out (g a^T) P_in^T` and every later
//! formula runs unchanged on `R_OUT x R_IN` instead of `out x in`.

use std::str::FromStr;

use faer::Mat;

use super::ModuleStacks;
use crate::rng::SplitMix64;

/// Gaussian projections with entries of variance `1/R` (norms kept in expectation), one per
/// (seed, module, side), so every shard and every run draws the same matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Projection {
    pub in_rank: usize,
    pub out_rank: usize,
    pub seed: u64,
}

#[derive(Debug, Clone, Copy)]
enum Side {
    Input,
    Output,
}

impl FromStr for Projection {
    type Err = String;

    /// `kron:R_IN,R_OUT` (the seed is set separately).
    fn from_str(spec: &str) -> Result<Self, String> {
        let error = || "expected kron:R_IN,R_OUT with positive ranks".to_string();
        let ranks = spec.strip_prefix("kron:").ok_or_else(error)?;
        let (r_in, r_out) = ranks.split_once(',').ok_or_else(error)?;
        let parse = |r: &str| r.trim().parse::<usize>().ok().filter(|&r| r > 0);
        match (parse(r_in), parse(r_out)) {
            (Some(in_rank), Some(out_rank)) => Ok(Projection {
                in_rank,
                out_rank,
                seed: 0,
            }),
            _ => Err(error()),
        }
    }
}

impl std::fmt::Display for Projection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "kron:{},{}", self.in_rank, self.out_rank)
    }
}

impl Projection {
    /// Project every example's stacks of one layer in place.
    pub fn apply(&self, stacks: &mut ModuleStacks) {
        let in_dim = stacks.in_dim();
        let out_dim = stacks.out_dim();
        let p_in = self.matrix(&stacks.name, Side::Input, in_dim);
        let p_out = self.matrix(&stacks.name, Side::Output, out_dim);
        for example in &mut stacks.examples {
            example.inputs = &example.inputs * p_in.transpose();
            example.output_grads = &example.output_grads * p_out.transpose();
        }
    }

    /// `[R, dim]` for one module and side.
    fn matrix(&self, module: &str, side: Side, dim: usize) -> Mat<f64> {
        let (rank, tag) = match side {
            Side::Input => (self.in_rank, 0x1u64),
            Side::Output => (self.out_rank, 0x2u64),
        };
        let mut rng = SplitMix64::new(self.seed ^ fnv1a(module).rotate_left(7) ^ tag);
        let scale = 1.0 / (rank as f64).sqrt();
        let mut values = Vec::with_capacity(rank * dim);
        for _ in 0..rank * dim {
            values.push(rng.normal() * scale);
        }
        Mat::from_fn(rank, dim, |r, c| values[r * dim + c])
    }
}

/// A stable 64-bit hash of a module name (FNV-1a), independent of Rust's hasher.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ byte as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::influence::ExampleStack;

    #[test]
    fn parses_and_rejects_specs() {
        let p: Projection = "kron:8,16".parse().unwrap();
        assert_eq!((p.in_rank, p.out_rank), (8, 16));
        assert_eq!(p.to_string(), "kron:8,16");
        for bad in ["kron:0,4", "8,16", "kron:8", "kron:a,b"] {
            assert!(bad.parse::<Projection>().is_err(), "{bad}");
        }
    }

    #[test]
    fn projects_the_weight_gradient_kronecker_wise() {
        let example = ExampleStack {
            inputs: Mat::from_fn(3, 5, |t, i| (t * 5 + i) as f64 * 0.1 - 0.4),
            output_grads: Mat::from_fn(3, 4, |t, o| ((t + 1) * (o + 2)) as f64 * 0.05),
        };
        let dw = example.weight_grad();
        let mut stacks = ModuleStacks {
            name: "model.layers.0.mlp.up_proj".into(),
            examples: vec![example],
        };
        let projection = Projection {
            in_rank: 2,
            out_rank: 3,
            seed: 9,
        };
        projection.apply(&mut stacks);
        let p_in = projection.matrix(&stacks.name, Side::Input, 5);
        let p_out = projection.matrix(&stacks.name, Side::Output, 4);
        let expected = &p_out * &dw * p_in.transpose();
        let got = stacks.examples[0].weight_grad();
        assert_eq!((got.nrows(), got.ncols()), (3, 2));
        for r in 0..3 {
            for c in 0..2 {
                assert!((got[(r, c)] - expected[(r, c)]).abs() < 1e-12);
            }
        }
        // Another module draws other matrices; the same module the same ones.
        let other = projection.matrix("model.layers.1.mlp.up_proj", Side::Input, 5);
        assert_ne!(other[(0, 0)], p_in[(0, 0)]);
        assert_eq!(projection.matrix(&stacks.name, Side::Input, 5), p_in);
    }
}
