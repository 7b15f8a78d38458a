//! Confident learning against cleanlab 2.9.0's own outputs (`../shared/reference/cleanlab/`):
//! every `filter_by` mode flags exactly cleanlab's rows, the quality scores agree to 1e-9,
//! `num_label_issues` and the calibrated confident joint are equal.

use std::fs::File;

use curate::reveal::{
    FilterBy, FilterOptions, IssueCount, Probabilities, QualityMethod, confident_joint,
    find_label_issues, num_label_issues, quality_scores,
};
use polars::prelude::*;

use crate::model::reference;

pub struct Reference {
    pub frame: DataFrame,
    pub labels: Vec<usize>,
    pub probs: Probabilities,
    pub meta: serde_json::Value,
}

pub fn load(name: &str) -> Option<Reference> {
    let path = reference(&format!("cleanlab/{name}.parquet"))?;
    let frame = ParquetReader::new(File::open(&path).unwrap())
        .finish()
        .unwrap();
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path.with_extension("json")).unwrap()).unwrap();
    let labels: Vec<usize> = frame
        .column("label")
        .unwrap()
        .cast(&DataType::Int64)
        .unwrap()
        .i64()
        .unwrap()
        .into_no_null_iter()
        .map(|v| v as usize)
        .collect();
    let classes = meta["k"].as_u64().unwrap() as usize;
    let columns: Vec<Vec<f64>> = (0..classes)
        .map(|k| {
            frame
                .column(&format!("p{k}"))
                .unwrap()
                .f64()
                .unwrap()
                .into_no_null_iter()
                .collect()
        })
        .collect();
    let mut values = Vec::with_capacity(labels.len() * classes);
    for i in 0..labels.len() {
        values.extend(columns.iter().map(|c| c[i]));
    }
    Some(Reference {
        frame,
        labels,
        probs: Probabilities::new(classes, values),
        meta,
    })
}

pub fn bool_column(frame: &DataFrame, name: &str) -> Vec<bool> {
    frame
        .column(name)
        .unwrap()
        .bool()
        .unwrap()
        .iter()
        .map(|v| v.unwrap())
        .collect()
}

fn check(name: &str) {
    let Some(r) = load(name) else { return };
    for filter_by in FilterBy::ALL {
        let options = FilterOptions {
            filter_by,
            ..FilterOptions::default()
        };
        let flags = find_label_issues(&r.labels, &r.probs, options);
        let expected = bool_column(&r.frame, &format!("cl_{}", filter_by.name()));
        let differing: Vec<usize> = (0..flags.len())
            .filter(|&i| flags[i] != expected[i])
            .collect();
        assert!(
            differing.is_empty(),
            "{name} {}: {} rows differ, first {:?}",
            filter_by.name(),
            differing.len(),
            &differing[..differing.len().min(10)]
        );
        let count = flags.iter().filter(|&&f| f).count() as u64;
        assert_eq!(
            count,
            r.meta["flag_counts"][filter_by.name()].as_u64().unwrap()
        );
    }
    for method in QualityMethod::ALL {
        let scores = quality_scores(&r.labels, &r.probs, method);
        let expected: Vec<f64> = r
            .frame
            .column(&format!("q_{}", method.name()))
            .unwrap()
            .f64()
            .unwrap()
            .into_no_null_iter()
            .collect();
        for (i, (a, b)) in scores.iter().zip(&expected).enumerate() {
            assert!(
                (a - b).abs() <= 1e-9 * b.abs().max(1.0),
                "{name} {} row {i}: {a} vs {b}",
                method.name()
            );
        }
    }
    assert_eq!(
        num_label_issues(&r.labels, &r.probs, IssueCount::OffDiagonal) as u64,
        r.meta["num_label_issues_off_diagonal"].as_u64().unwrap()
    );
    assert_eq!(
        num_label_issues(&r.labels, &r.probs, IssueCount::OffDiagonalCalibrated) as u64,
        r.meta["num_label_issues_off_diagonal_calibrated"]
            .as_u64()
            .unwrap()
    );
    let joint = confident_joint(&r.labels, &r.probs, true).joint.rows();
    let expected: Vec<Vec<i64>> =
        serde_json::from_value(r.meta["confident_joint_calibrated"].clone()).unwrap();
    assert_eq!(joint, expected);
}

#[test]
fn cifar10_flags_scores_and_counts_equal_cleanlab() {
    check("labelerrors_cifar10");
}

#[test]
fn mnist_flags_scores_and_counts_equal_cleanlab() {
    check("labelerrors_mnist");
}

#[test]
fn synthetic_100k_flags_scores_and_counts_equal_cleanlab() {
    check("synthetic_N100k_K10");
}
