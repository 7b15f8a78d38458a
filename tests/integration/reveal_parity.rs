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

pub fn load(name: &str) -> Reference {
    let path = reference(&format!("cleanlab/{name}.parquet"));
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
    Reference {
        frame,
        labels,
        probs: Probabilities::new(classes, values),
        meta,
    }
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
    let r = load(name);
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
#[cfg_attr(
    no_shared_reference,
    ignore = "needs ../shared/reference beside the checkout"
)]
fn cifar10_flags_scores_and_counts_equal_cleanlab() {
    check("labelerrors_cifar10");
}

#[test]
#[cfg_attr(
    no_shared_reference,
    ignore = "needs ../shared/reference beside the checkout"
)]
fn mnist_flags_scores_and_counts_equal_cleanlab() {
    check("labelerrors_mnist");
}

#[test]
#[cfg_attr(
    no_shared_reference,
    ignore = "needs ../shared/reference beside the checkout"
)]
fn synthetic_100k_flags_scores_and_counts_equal_cleanlab() {
    check("synthetic_N100k_K10");
}

pub fn read_fixture(name: &str) -> DataFrame {
    let path = crate::model::fixture(&format!("reveal/{name}"));
    ParquetReader::new(File::open(path).unwrap())
        .finish()
        .unwrap()
}

fn f64_column(frame: &DataFrame, name: &str) -> Vec<f64> {
    frame
        .column(name)
        .unwrap()
        .cast(&DataType::Float64)
        .unwrap()
        .f64()
        .unwrap()
        .into_no_null_iter()
        .collect()
}

fn list_rows<T: Copy>(
    frame: &DataFrame,
    name: &str,
    cast: DataType,
    get: fn(&Series) -> Vec<T>,
) -> Vec<Vec<T>> {
    let column = frame
        .column(name)
        .unwrap()
        .cast(&DataType::List(Box::new(cast)))
        .unwrap();
    column
        .list()
        .unwrap()
        .amortized_iter()
        .map(|row| get(row.unwrap().as_ref()))
        .collect()
}

fn f64_rows(frame: &DataFrame, name: &str) -> Vec<Vec<f64>> {
    list_rows(frame, name, DataType::Float64, |s| {
        s.f64().unwrap().into_no_null_iter().collect()
    })
}

fn usize_rows(frame: &DataFrame, name: &str) -> Vec<Vec<usize>> {
    list_rows(frame, name, DataType::Int64, |s| {
        s.i64()
            .unwrap()
            .into_no_null_iter()
            .map(|v| v as usize)
            .collect()
    })
}

fn assert_close(a: f64, b: f64, what: &str) {
    assert!(
        (a - b).abs() <= 1e-9 * b.abs().max(1.0),
        "{what}: {a} vs {b}"
    );
}

/// numpy's argsort order on ties, recorded by `scripts/make-reveal-reference`.
#[test]
fn argsort_follows_numpy_on_ties() {
    let path = crate::model::fixture("reveal/argsort_ties.json");
    let cases: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    for case in cases["cases"].as_array().unwrap() {
        let values: Vec<f64> = serde_json::from_value(case["values"].clone()).unwrap();
        let order: Vec<usize> = serde_json::from_value(case["order"].clone()).unwrap();
        assert_eq!(
            curate::reveal::numeric::argsort(&values),
            order,
            "{values:?}"
        );
    }
}

/// Multi-label flags and quality scores against cleanlab's multi-label module.
#[test]
fn multilabel_flags_and_scores_equal_cleanlab() {
    use curate::reveal::multilabel::{find_multilabel_issues, multilabel_quality};
    let frame = read_fixture("multilabel.parquet");
    let labels = usize_rows(&frame, "labels");
    let columns: Vec<Vec<f64>> = (0..6)
        .map(|k| f64_column(&frame, &format!("p{k}")))
        .collect();
    let values: Vec<f64> = (0..labels.len())
        .flat_map(|i| columns.iter().map(move |c| c[i]))
        .collect();
    let probs = Probabilities::new(6, values);
    for filter_by in FilterBy::ALL {
        let options = FilterOptions {
            filter_by,
            ..FilterOptions::default()
        };
        let flags = find_multilabel_issues(&labels, &probs, options);
        let expected = bool_column(&frame, &format!("cl_{}", filter_by.name()));
        let differing = (0..flags.len())
            .filter(|&i| flags[i] != expected[i])
            .count();
        assert_eq!(differing, 0, "{}", filter_by.name());
    }
    for method in QualityMethod::ALL {
        let scores = multilabel_quality(&labels, &probs, method);
        let expected = f64_column(&frame, &format!("q_{}", method.name()));
        for (i, (a, b)) in scores.iter().zip(&expected).enumerate() {
            assert_close(*a, *b, &format!("{} row {i}", method.name()));
        }
    }
}

/// CROWDLAB (best_quality consensus, crowdlab weights) against
/// `get_label_quality_multiannotator` on four digits models.
#[test]
fn crowdlab_equals_cleanlab_multiannotator() {
    use curate::reveal::crowdlab::{Annotations, crowdlab};
    let sources = read_fixture("digits_sources.parquet");
    let expected = read_fixture("crowdlab_digits.parquet");
    let meta: serde_json::Value = serde_json::from_slice(
        &std::fs::read(crate::model::fixture("reveal/crowdlab_digits.json")).unwrap(),
    )
    .unwrap();
    let models = ["logreg", "knn", "rf", "svc"];
    let probs: Vec<Vec<Vec<f64>>> = models
        .iter()
        .map(|m| f64_rows(&sources, &format!("p_{m}")))
        .collect();
    let n = probs[0].len();
    let mut prior = Vec::with_capacity(n * 10);
    let mut labels = Vec::with_capacity(n * 4);
    for i in 0..n {
        let rows: Vec<&[f64]> = probs.iter().map(|p| p[i].as_slice()).collect();
        prior
            .extend((0..10).map(|k| (((rows[0][k] + rows[1][k]) + rows[2][k]) + rows[3][k]) / 4.0));
        for p in &probs {
            labels.push(Some(curate::reveal::numeric::argmax(&p[i])));
        }
    }
    let annotations = Annotations {
        annotators: 4,
        labels,
    };
    let consensus = crowdlab(&annotations, &Probabilities::new(10, prior), 0).unwrap();
    let want_label: Vec<usize> = f64_column(&expected, "consensus_label")
        .into_iter()
        .map(|v| v as usize)
        .collect();
    assert_eq!(consensus.label, want_label);
    let quality = f64_column(&expected, "consensus_quality_score");
    let agreement = f64_column(&expected, "annotator_agreement");
    let posterior = f64_rows(&expected, "posterior");
    for i in 0..n {
        assert_close(consensus.quality[i], quality[i], "quality");
        assert_close(consensus.agreement[i], agreement[i], "agreement");
        for (k, want) in posterior[i].iter().enumerate() {
            assert_close(consensus.posterior.get(i, k), *want, "posterior");
        }
    }
    assert_close(
        consensus.model_weight,
        meta["model_weight"].as_f64().unwrap(),
        "model weight",
    );
    for (key, got) in [
        ("annotator_weight", &consensus.annotator_weights),
        ("annotator_quality", &consensus.annotator_quality),
        (
            "agreement_with_consensus",
            &consensus.agreement_with_consensus,
        ),
    ] {
        let want: Vec<f64> = serde_json::from_value(meta[key].clone()).unwrap();
        for (a, b) in got.iter().zip(&want) {
            assert_close(*a, *b, key);
        }
    }
}

/// The CROWDLAB reference on the digits sources.
pub struct CrowdlabExpected {
    pub label: Vec<usize>,
    pub posterior: Vec<Vec<f64>>,
    pub model_weight: f64,
}

pub fn crowdlab_expected() -> CrowdlabExpected {
    let expected = read_fixture("crowdlab_digits.parquet");
    let meta: serde_json::Value = serde_json::from_slice(
        &std::fs::read(crate::model::fixture("reveal/crowdlab_digits.json")).unwrap(),
    )
    .unwrap();
    CrowdlabExpected {
        label: f64_column(&expected, "consensus_label")
            .into_iter()
            .map(|v| v as usize)
            .collect(),
        posterior: f64_rows(&expected, "posterior"),
        model_weight: meta["model_weight"].as_f64().unwrap(),
    }
}

/// Which digits labels were flipped.
pub fn flipped() -> Vec<bool> {
    bool_column(&read_fixture("digits_sources.parquet"), "is_flipped")
}
