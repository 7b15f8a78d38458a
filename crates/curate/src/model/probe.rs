//! A probe classifier on fixed embeddings (logistic regression or a one-hidden-layer MLP),
//! trained with burn under stratified K-fold so every row gets probabilities from a model that
//! never saw it: cleanlab's recipe for out-of-sample `pred_probs`.

use anyhow::Result;
use burn::module::{Module, Param};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::activation::{log_softmax, relu, softmax};
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::tensor_to_f64;
use crate::rng::SplitMix64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    /// Multinomial logistic regression.
    Logistic,
    /// One ReLU hidden layer.
    Mlp { hidden: usize },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ProbeSettings {
    pub kind: ProbeKind,
    pub folds: usize,
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    /// Decoupled weight decay (AdamW), the probe's regulariser.
    pub weight_decay: f64,
    pub seed: u64,
}

impl Default for ProbeSettings {
    fn default() -> Self {
        ProbeSettings {
            kind: ProbeKind::Logistic,
            folds: 5,
            epochs: 30,
            batch_size: 256,
            learning_rate: 1e-2,
            weight_decay: 1e-2,
            seed: 0,
        }
    }
}

#[derive(Module, Debug)]
struct ProbeNet {
    hidden_weight: Option<Param<Tensor<2>>>,
    hidden_bias: Option<Param<Tensor<1>>>,
    weight: Param<Tensor<2>>,
    bias: Param<Tensor<1>>,
}

impl ProbeNet {
    fn new(kind: ProbeKind, inputs: usize, classes: usize, seed: u64, device: &Device) -> Self {
        let mut rng = SplitMix64::new(seed);
        // Uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)), as PyTorch's Linear.
        let mut uniform = |rows: usize, cols: usize| {
            let bound = 1.0 / (rows as f64).sqrt();
            let values: Vec<f32> = (0..rows * cols)
                .map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32)
                .collect();
            Param::from_tensor(Tensor::<2>::from_data(
                TensorData::new(values, [rows, cols]),
                device,
            ))
        };
        let zeros = |n: usize| Param::from_tensor(Tensor::<1>::zeros([n], device));
        match kind {
            ProbeKind::Logistic => ProbeNet {
                hidden_weight: None,
                hidden_bias: None,
                weight: uniform(inputs, classes),
                bias: zeros(classes),
            },
            ProbeKind::Mlp { hidden } => ProbeNet {
                hidden_weight: Some(uniform(inputs, hidden)),
                hidden_bias: Some(zeros(hidden)),
                weight: uniform(hidden, classes),
                bias: zeros(classes),
            },
        }
    }

    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let x = match (&self.hidden_weight, &self.hidden_bias) {
            (Some(w), Some(b)) => relu(x.matmul(w.val()) + b.val().unsqueeze_dim(0)),
            _ => x,
        };
        x.matmul(self.weight.val()) + self.bias.val().unsqueeze_dim(0)
    }
}

/// Fold of every row: within each class, rows are shuffled (seeded) and dealt round-robin, so
/// every fold holds each class in proportion.
pub(crate) fn stratified_folds(labels: &[usize], folds: usize, seed: u64) -> Vec<usize> {
    let classes = labels.iter().max().map_or(0, |&m| m + 1);
    let mut fold = vec![0; labels.len()];
    let mut rng = SplitMix64::new(seed);
    let mut offset = 0;
    for k in 0..classes {
        let mut rows: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == k).collect();
        rng.shuffle(&mut rows);
        for (position, &row) in rows.iter().enumerate() {
            fold[row] = (offset + position) % folds;
        }
        // Continue the deal where this class stopped, so small classes do not all land in
        // fold 0.
        offset = (offset + rows.len()) % folds;
    }
    fold
}

/// Out-of-fold class probabilities (row-major N x K) of a probe trained on `features`
/// (row-major N x D). `on_fold` is called after each fold.
pub(crate) fn out_of_fold_probabilities(
    features: &[f32],
    dim: usize,
    labels: &[usize],
    classes: usize,
    settings: ProbeSettings,
    device: &Device,
    on_fold: &mut dyn FnMut(usize),
) -> Result<Vec<f64>> {
    let n = labels.len();
    anyhow::ensure!(
        features.len() == n * dim,
        "features and labels differ in rows"
    );
    anyhow::ensure!(settings.folds >= 2, "the probe needs at least 2 folds");
    let device = if device.is_autodiff() {
        device.clone()
    } else {
        device.clone().autodiff()
    };
    let fold = stratified_folds(labels, settings.folds, settings.seed);
    let mut probabilities = vec![0.0f64; n * classes];
    for f in 0..settings.folds {
        let train: Vec<usize> = (0..n).filter(|&i| fold[i] != f).collect();
        let test: Vec<usize> = (0..n).filter(|&i| fold[i] == f).collect();
        if test.is_empty() {
            on_fold(f);
            continue;
        }
        let (mean, scale) = standardizer(features, dim, &train);
        let standardized = |rows: &[usize]| -> Vec<f32> {
            let mut out = Vec::with_capacity(rows.len() * dim);
            for &i in rows {
                let row = &features[i * dim..(i + 1) * dim];
                out.extend((0..dim).map(|d| (row[d] - mean[d]) / scale[d]));
            }
            out
        };
        let seed = settings.seed.wrapping_add(f as u64 + 1);
        let mut model = ProbeNet::new(settings.kind, dim, classes, seed, &device);
        let mut optimizer = AdamWConfig::new()
            .with_weight_decay(settings.weight_decay as f32)
            .init();
        let mut rng = SplitMix64::new(seed ^ 0x5EED);
        let mut order = train.clone();
        for _ in 0..settings.epochs {
            crate::interrupt::check()?;
            rng.shuffle(&mut order);
            for batch in order.chunks(settings.batch_size.max(1)) {
                let x = Tensor::<2>::from_data(
                    TensorData::new(standardized(batch), [batch.len(), dim]),
                    &device,
                );
                let targets: Vec<i64> = batch.iter().map(|&i| labels[i] as i64).collect();
                let targets = Tensor::<2, Int>::from_data(
                    TensorData::new(targets, [batch.len(), 1]),
                    &device,
                );
                let log_probs = log_softmax(model.forward(x), 1);
                let loss = log_probs.gather(1, targets).mean().neg();
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                model = optimizer.step(settings.learning_rate, model, grads);
            }
        }
        let x = Tensor::<2>::from_data(
            TensorData::new(standardized(&test), [test.len(), dim]),
            &device,
        );
        let predicted = tensor_to_f64(softmax(model.forward(x), 1).detach());
        for (position, &row) in test.iter().enumerate() {
            let values = &predicted[position * classes..(position + 1) * classes];
            // f32 softmax rows sum to 1 within ~1e-7; renormalise in f64.
            let total: f64 = values.iter().sum();
            for (k, &v) in values.iter().enumerate() {
                probabilities[row * classes + k] = v / total;
            }
        }
        on_fold(f);
    }
    Ok(probabilities)
}

/// Per-feature mean and standard deviation over `rows` (a constant feature scales by 1).
fn standardizer(features: &[f32], dim: usize, rows: &[usize]) -> (Vec<f32>, Vec<f32>) {
    let mut sum = vec![0.0f64; dim];
    let mut squares = vec![0.0f64; dim];
    for &i in rows {
        for (d, &x) in features[i * dim..(i + 1) * dim].iter().enumerate() {
            sum[d] += x as f64;
            squares[d] += (x as f64) * (x as f64);
        }
    }
    let n = rows.len().max(1) as f64;
    let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
    let scale = squares
        .iter()
        .zip(&mean)
        .map(|(q, m)| {
            let variance = (q / n - m * m).max(0.0);
            if variance > 1e-12 {
                variance.sqrt() as f32
            } else {
                1.0
            }
        })
        .collect();
    (mean.iter().map(|&m| m as f32).collect(), scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_are_stratified() {
        let labels: Vec<usize> = (0..100).map(|i| usize::from(i % 10 == 0)).collect();
        let fold = stratified_folds(&labels, 5, 3);
        for f in 0..5 {
            let minority = (0..100).filter(|&i| fold[i] == f && labels[i] == 1).count();
            let total = (0..100).filter(|&i| fold[i] == f).count();
            assert_eq!(minority, 2);
            assert_eq!(total, 20);
        }
    }

    #[test]
    fn logistic_probe_separates_clusters_out_of_fold() {
        let mut rng = SplitMix64::new(9);
        let mut features = Vec::new();
        let mut labels = Vec::new();
        for i in 0..150 {
            let k = i % 3;
            for d in 0..4 {
                let centre = if d == k { 3.0 } else { 0.0 };
                features.push((centre + rng.normal()) as f32);
            }
            labels.push(k);
        }
        let settings = ProbeSettings {
            epochs: 40,
            batch_size: 32,
            ..ProbeSettings::default()
        };
        let mut folds = 0;
        let probs = out_of_fold_probabilities(
            &features,
            4,
            &labels,
            3,
            settings,
            &Device::flex(),
            &mut |_| folds += 1,
        )
        .unwrap();
        assert_eq!(folds, 5);
        let correct = (0..150)
            .filter(|&i| {
                let row = &probs[i * 3..i * 3 + 3];
                crate::reveal::numeric::argmax(row) == labels[i]
            })
            .count();
        assert!(correct >= 140, "{correct} of 150");
        for row in probs.chunks(3) {
            assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        }
    }
}
