//! REVEAL end to end on joined inputs: which detectors run, the probe, confident learning,
//! the kNN and source votes, the consensus distribution, the decision per row and the gate.
//!
//! Inputs are already aligned with the label rows; reading and joining files is the caller's
//! job, and so is naming the flags in messages.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fmt;

use burn::tensor::Device;

use super::classes::{ClassOrderError, ClassValue, Classes};
use super::confident::issue_counts;
use super::crowdlab::{Annotations, VoteError, crowdlab_where_predicted};
use super::decide::{DecisionOptions, Detector, IssueType, RowDecision, decide, mean_distribution};
use super::knn::{Embeddings, KnnOptions, knn_vote};
use super::multilabel::{find_multilabel_issues, multilabel_quality};
use super::numeric::argmax;
use super::{FilterOptions, Probabilities, QualityMethod, label_issues, quality_scores};
use crate::error::Interrupted;
use crate::model::probe::{ProbeKind, ProbeSettings, out_of_fold_probabilities};

/// What a prediction source holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// Class probabilities (rows sum to 1).
    Probs,
    /// Independent per-class presence scores (multi-label).
    MlProbs,
    /// One predicted class.
    Hard,
    /// A set of predicted classes.
    Set,
}

impl SourceKind {
    pub const ALL: [SourceKind; 4] = [
        SourceKind::Probs,
        SourceKind::MlProbs,
        SourceKind::Hard,
        SourceKind::Set,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SourceKind::Probs => "probs",
            SourceKind::MlProbs => "mlprobs",
            SourceKind::Hard => "hard",
            SourceKind::Set => "set",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<SourceKind> {
        SourceKind::ALL.into_iter().find(|k| k.name() == name)
    }

    pub(crate) fn is_probabilities(self) -> bool {
        matches!(self, SourceKind::Probs | SourceKind::MlProbs)
    }
}

/// A source's predictions, aligned with the label rows.
#[derive(Debug, Clone)]
pub enum Predictions {
    /// N x K; every label row is covered.
    Probabilities(Probabilities),
    /// One class per row, or none where the source has no row for that label.
    Hard(Vec<Option<ClassValue>>),
    Set(Vec<Option<Vec<ClassValue>>>),
}

/// One prediction source (a model, an annotator).
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub kind: SourceKind,
    pub predictions: Predictions,
    /// Label rows this source has a row for.
    pub covered: usize,
}

/// What a detector or the probe needs and was not given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    /// A probability (or presence) source, or the probe.
    Probabilities,
    Embeddings,
    /// Two annotators (the probe counts as one).
    TwoSources,
    /// A probe kind, for the probe detector.
    Probe,
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Requirement::Probabilities => "a probability source or a probe",
            Requirement::Embeddings => "embeddings",
            Requirement::TwoSources => "at least two sources (the probe counts as one)",
            Requirement::Probe => "a probe",
        })
    }
}

/// Why REVEAL cannot run on these inputs and settings.
#[derive(Debug, thiserror::Error)]
pub enum RevealError {
    #[error(transparent)]
    ClassOrder(#[from] ClassOrderError),
    #[error(
        "class-order mismatch: source '{source_name}' has {width} classes, source '{other}' has {other_width}"
    )]
    SourceWidths {
        source_name: String,
        width: usize,
        other: String,
        other_width: usize,
    },
    #[error("classes are written both as integers and as strings; name them")]
    MixedClasses,
    #[error("source '{source_name}' is {kind}, which does not fit {} labels", if *.multi_label { "multi-label" } else { "single-label" })]
    KindMismatch {
        source_name: String,
        kind: &'static str,
        multi_label: bool,
    },
    #[error("nothing to detect with: no probabilities, no embeddings and fewer than two sources")]
    NothingToDetect,
    #[error("the {detector} detector needs {needs}")]
    DetectorNeeds {
        detector: &'static str,
        needs: Requirement,
    },
    #[error("the probe needs {0}")]
    ProbeNeeds(Requirement),
    #[error("the probe supports single-label data only")]
    ProbeMultiLabel,
    #[error("at least one detector must fire for an issue")]
    NoMinimum,
    #[error("{wanted} detectors must fire, but only {run} run")]
    MinimumAboveRun { wanted: usize, run: usize },
    #[error("source '{source_name}': unknown class '{value}' in label row {row}")]
    UnknownClass {
        source_name: String,
        value: ClassValue,
        /// 0-based label row.
        row: usize,
    },
    #[error("vote{}: {error}", .class.as_ref().map(|c| format!(" on class '{c}'")).unwrap_or_default())]
    Vote {
        class: Option<String>,
        error: VoteError,
    },
    #[error(transparent)]
    Interrupted(#[from] Interrupted),
    /// Training the probe failed (a runtime failure, not bad input).
    #[error("probe: {0:#}")]
    Probe(anyhow::Error),
}

/// How the probe is trained.
#[derive(Debug, Clone, Copy)]
pub struct ProbeOptions {
    pub kind: ProbeKind,
    pub folds: usize,
    pub epochs: usize,
}

/// Everything REVEAL decides with, already checked for range.
#[derive(Debug, Clone)]
pub struct RevealSettings {
    pub filter: FilterOptions,
    pub quality: QualityMethod,
    /// Detectors asked for; `None` chooses from the inputs.
    pub detectors: Option<Vec<Detector>>,
    pub probe: Option<ProbeOptions>,
    pub knn: KnnOptions,
    /// Detectors that must fire for an issue; `None` is a majority of those run.
    pub min_detectors: Option<usize>,
    pub tau: Option<f64>,
    pub confidence: f64,
    /// `None`: 0.3, or 0.5 for multi-label presence.
    pub missing_threshold: Option<f64>,
    pub seed: u64,
}

/// The joined inputs: given labels as class indices, sources and embeddings aligned with them.
pub struct RevealInputs<'a> {
    pub given: &'a [Vec<usize>],
    pub multi_label: bool,
    pub classes: &'a Classes,
    pub sources: &'a [Source],
    /// Row-major, `dim` values per label row.
    pub embeddings: Option<(usize, &'a [f32])>,
}

/// Progress of a run, for bars and spinners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevealEvent {
    ProbeFoldDone,
    DetectorStarted(Detector),
    DetectorDone(Detector),
}

/// The vote's weights (one entry per vote: one for single-label data, one per class for
/// multi-label data).
#[derive(Debug, Clone)]
pub struct VoteWeights {
    pub names: Vec<String>,
    pub model_weight: Vec<f64>,
    pub annotator_weights: Vec<Vec<f64>>,
    pub annotator_quality: Vec<Vec<f64>>,
    pub agreement: Vec<Vec<f64>>,
}

/// What REVEAL found.
pub struct Detection<'a> {
    pub detectors: Vec<Detector>,
    pub min_detectors: usize,
    /// Per detector, the rows it flagged.
    pub flags: Vec<(Detector, Vec<bool>)>,
    /// The consensus distribution (class probabilities, or presence for multi-label data);
    /// borrowed from the one source that makes it, so large inputs are not copied.
    pub soft: Cow<'a, Probabilities>,
    /// The label-quality score of each row.
    pub quality: Vec<f64>,
    pub decisions: Vec<RowDecision>,
    pub vote: Option<VoteWeights>,
    /// `num_label_issues` (off_diagonal, off_diagonal_calibrated), single-label only.
    pub counts: Option<(usize, usize)>,
    /// Per confident-learning detector (single-label data), how many of its flagged rows were
    /// chosen among rows tied at a cut-off (earlier rows first).
    pub flagged_from_ties: Vec<(Detector, usize)>,
}

/// The class order from the names given, the labels, the hard/set predictions and the
/// probability sources' width.
pub fn class_order(
    names: Option<&[String]>,
    labels: &[Vec<ClassValue>],
    sources: &[Source],
) -> Result<Classes, RevealError> {
    let mut seen: BTreeSet<ClassValue> = labels.iter().flatten().cloned().collect();
    let mut width: Option<(usize, &str)> = None;
    for source in sources {
        match &source.predictions {
            Predictions::Probabilities(p) => match width {
                Some((w, other)) if w != p.classes() => {
                    return Err(RevealError::SourceWidths {
                        source_name: source.name.clone(),
                        width: p.classes(),
                        other: other.to_string(),
                        other_width: w,
                    });
                }
                _ => width = Some((p.classes(), &source.name)),
            },
            Predictions::Hard(values) => seen.extend(values.iter().flatten().cloned()),
            Predictions::Set(values) => seen.extend(values.iter().flatten().flatten().cloned()),
        }
    }
    let mixed = seen.iter().any(|v| matches!(v, ClassValue::Int(_)))
        && seen.iter().any(|v| matches!(v, ClassValue::Text(_)));
    if mixed && names.is_none() {
        return Err(RevealError::MixedClasses);
    }
    Ok(Classes::settle(names, &seen, width.map(|(w, _)| w))?)
}

/// Source kinds must fit the labels: presence scores for multi-label, class probabilities
/// for single-label.
pub fn check_kinds(multi_label: bool, sources: &[Source]) -> Result<(), RevealError> {
    for source in sources {
        let wrong = if multi_label {
            source.kind == SourceKind::Probs
        } else {
            source.kind == SourceKind::MlProbs
        };
        if wrong {
            return Err(RevealError::KindMismatch {
                source_name: source.name.clone(),
                kind: source.kind.name(),
                multi_label,
            });
        }
    }
    Ok(())
}

/// The detectors to run: those asked for, checked against the inputs, or by default cl with
/// probabilities, knn with embeddings, vote with two annotators, probe with a probe.
pub(crate) fn choose_detectors(
    requested: Option<&[Detector]>,
    probe: bool,
    multi_label: bool,
    sources: &[Source],
    has_embeddings: bool,
) -> Result<Vec<Detector>, RevealError> {
    let has_probs = sources.iter().any(|s| s.kind.is_probabilities());
    let annotators = sources.len() + usize::from(probe);
    let detectors = match requested {
        Some(d) => {
            let mut chosen: Vec<Detector> = d.to_vec();
            chosen.sort();
            chosen.dedup();
            chosen
        }
        None => {
            let mut d = Vec::new();
            if has_probs || probe {
                d.push(Detector::Cl);
            }
            if has_embeddings {
                d.push(Detector::Knn);
            }
            if annotators >= 2 {
                d.push(Detector::Vote);
            }
            if probe {
                d.push(Detector::Probe);
            }
            d
        }
    };
    if detectors.is_empty() {
        return Err(RevealError::NothingToDetect);
    }
    let needs = |detector: Detector, needs| RevealError::DetectorNeeds {
        detector: detector.name(),
        needs,
    };
    for &d in &detectors {
        match d {
            Detector::Cl if !has_probs && !probe => {
                return Err(needs(d, Requirement::Probabilities));
            }
            Detector::Knn | Detector::Probe if !has_embeddings => {
                return Err(needs(d, Requirement::Embeddings));
            }
            Detector::Vote if annotators < 2 => return Err(needs(d, Requirement::TwoSources)),
            Detector::Probe if !probe => return Err(needs(d, Requirement::Probe)),
            _ => {}
        }
    }
    if probe && !has_embeddings {
        return Err(RevealError::ProbeNeeds(Requirement::Embeddings));
    }
    if probe && multi_label {
        return Err(RevealError::ProbeMultiLabel);
    }
    Ok(detectors)
}

/// Detectors that must fire: the number asked for, else a majority of those run.
pub fn min_detectors(requested: Option<usize>, run: usize) -> Result<usize, RevealError> {
    match requested {
        Some(0) => Err(RevealError::NoMinimum),
        Some(wanted) if wanted > run => Err(RevealError::MinimumAboveRun { wanted, run }),
        Some(wanted) => Ok(wanted),
        None => Ok(run / 2 + 1),
    }
}

/// Run REVEAL: detectors, consensus and the decision for every row.
pub fn detect<'a>(
    inputs: &RevealInputs<'a>,
    settings: &RevealSettings,
    device: &Device,
    on_event: &mut dyn FnMut(RevealEvent),
    interrupted: &dyn Fn() -> bool,
) -> Result<Detection<'a>, RevealError> {
    let check = || {
        if interrupted() {
            Err(RevealError::Interrupted(Interrupted))
        } else {
            Ok(())
        }
    };
    let detectors = choose_detectors(
        settings.detectors.as_deref(),
        settings.probe.is_some(),
        inputs.multi_label,
        inputs.sources,
        inputs.embeddings.is_some(),
    )?;
    let min_detectors = min_detectors(settings.min_detectors, detectors.len())?;
    let k = inputs.classes.len();
    let single: Vec<usize> = inputs.given.iter().map(|g| g[0]).collect();

    // The probe first: its probabilities can stand in for missing probability sources, and it
    // votes like a source.
    let probe = match (settings.probe, inputs.embeddings) {
        (Some(options), Some((dim, values))) => {
            let probe_settings = ProbeSettings {
                kind: options.kind,
                folds: options.folds,
                epochs: options.epochs,
                seed: settings.seed,
                ..ProbeSettings::default()
            };
            let probs = out_of_fold_probabilities(
                values,
                dim,
                &single,
                k,
                probe_settings,
                device,
                &mut |_| on_event(RevealEvent::ProbeFoldDone),
            )
            .map_err(|e| match e.downcast::<Interrupted>() {
                Ok(interrupted) => RevealError::Interrupted(interrupted),
                Err(e) => RevealError::Probe(e),
            })?;
            Some(Probabilities::new(k, probs))
        }
        _ => None,
    };
    check()?;

    let source_probs: Vec<&'a Probabilities> = inputs
        .sources
        .iter()
        .filter_map(|s| match &s.predictions {
            Predictions::Probabilities(p) => Some(p),
            _ => None,
        })
        .collect();
    let mut model_probs: Option<Cow<'a, Probabilities>> = match source_probs.len() {
        0 => probe.clone().map(Cow::Owned),
        1 => Some(Cow::Borrowed(source_probs[0])),
        _ => Some(Cow::Owned(mean_distribution(&source_probs))),
    };

    let mut flags: Vec<(Detector, Vec<bool>)> = Vec::new();
    let mut flagged_from_ties: Vec<(Detector, usize)> = Vec::new();
    let mut distributions: Vec<Probabilities> = Vec::new();
    let mut vote_result: Option<VoteResult> = None;
    for &detector in &detectors {
        check()?;
        on_event(RevealEvent::DetectorStarted(detector));
        match detector {
            Detector::Cl => {
                let probs = model_probs
                    .as_ref()
                    .expect("checked: cl needs probabilities");
                let fired = if inputs.multi_label {
                    find_multilabel_issues(inputs.given, probs, settings.filter)
                } else {
                    let issues = label_issues(&single, probs, settings.filter);
                    flagged_from_ties.push((Detector::Cl, issues.flagged_from_ties()));
                    issues.flags
                };
                flags.push((Detector::Cl, fired));
            }
            Detector::Probe => {
                let probs = probe.as_ref().expect("checked: the probe ran");
                let issues = label_issues(&single, probs, settings.filter);
                flagged_from_ties.push((Detector::Probe, issues.flagged_from_ties()));
                flags.push((Detector::Probe, issues.flags));
            }
            Detector::Knn => {
                let (dim, values) = inputs.embeddings.expect("checked: knn needs embeddings");
                let vote = knn_vote(
                    &Embeddings::new(dim, values.to_vec()),
                    inputs.given,
                    k,
                    settings.knn,
                );
                flags.push((Detector::Knn, vote.issue));
                distributions.push(vote.votes);
            }
            Detector::Vote => {
                let result = vote(
                    inputs,
                    probe.as_ref(),
                    model_probs.as_deref(),
                    settings.seed,
                )?;
                flags.push((Detector::Vote, result.fired.clone()));
                distributions.push(result.posterior.clone());
                vote_result = Some(result);
            }
        }
        on_event(RevealEvent::DetectorDone(detector));
    }
    check()?;

    let counts = match (&model_probs, inputs.multi_label) {
        (Some(probs), false) => Some(issue_counts(&single, probs)),
        _ => None,
    };

    // The consensus distribution: the vote's posterior (which already holds the sources and
    // the probabilities as its prior), else the probabilities; plus the kNN votes; plus the
    // probe when it is not already inside the vote or the probabilities. A single part is
    // moved, not copied.
    let model_in_soft = vote_result.is_none() && model_probs.is_some();
    let probe_in_soft = probe.is_some() && vote_result.is_none() && !source_probs.is_empty();
    let soft: Cow<'a, Probabilities> = match (model_in_soft, distributions.len(), probe_in_soft) {
        (true, 0, false) => model_probs.take().expect("checked: model probabilities"),
        (false, 1, false) => Cow::Owned(distributions.pop().expect("one distribution")),
        _ => {
            let mut parts: Vec<&Probabilities> = Vec::new();
            if model_in_soft {
                parts.extend(model_probs.as_deref());
            }
            parts.extend(distributions.iter());
            if probe_in_soft {
                parts.extend(probe.as_ref());
            }
            Cow::Owned(mean_distribution(&parts))
        }
    };
    // Quality scores are on the model probabilities where there are any (they may have been
    // moved into `soft` above).
    let quality_basis: &Probabilities = model_probs.as_deref().unwrap_or(&soft);
    let quality = if inputs.multi_label {
        multilabel_quality(inputs.given, quality_basis, settings.quality)
    } else {
        quality_scores(&single, quality_basis, settings.quality)
    };
    let missing_threshold =
        settings
            .missing_threshold
            .unwrap_or(if inputs.multi_label { 0.5 } else { 0.3 });
    let decisions = decide(
        inputs.given,
        &flags,
        &soft,
        DecisionOptions {
            min_detectors,
            tau: settings.tau,
            confidence: settings.confidence,
            missing_threshold,
            multi_label: inputs.multi_label,
        },
    );
    Ok(Detection {
        detectors,
        min_detectors,
        flags,
        soft,
        quality,
        decisions,
        vote: vote_result.map(|v| v.weights),
        counts,
        flagged_from_ties,
    })
}

/// The vote's outcome.
struct VoteResult {
    fired: Vec<bool>,
    /// Single-label: the CROWDLAB posterior. Multi-label: per-class presence.
    posterior: Probabilities,
    weights: VoteWeights,
}

/// CROWDLAB over the sources (and the probe): each an annotator. Single-label: one vote over
/// the classes. Multi-label: one binary vote per class on presence.
fn vote(
    inputs: &RevealInputs,
    probe: Option<&Probabilities>,
    prior: Option<&Probabilities>,
    seed: u64,
) -> Result<VoteResult, RevealError> {
    let RevealInputs {
        given,
        classes,
        sources,
        ..
    } = *inputs;
    let n = given.len();
    let k = classes.len();
    let mut names: Vec<String> = sources.iter().map(|s| s.name.clone()).collect();
    if probe.is_some() {
        names.push("probe".to_string());
    }
    let lookup = |source: &Source, value: &ClassValue, row: usize| {
        classes
            .lookup(value)
            .ok_or_else(|| RevealError::UnknownClass {
                source_name: source.name.clone(),
                value: value.clone(),
                row,
            })
    };
    let mut weights = VoteWeights {
        names,
        model_weight: Vec::new(),
        annotator_weights: Vec::new(),
        annotator_quality: Vec::new(),
        agreement: Vec::new(),
    };
    if !inputs.multi_label {
        let annotators = weights.names.len();
        let mut annotations = vec![None; n * annotators];
        for (a, source) in sources.iter().enumerate() {
            for i in 0..n {
                annotations[i * annotators + a] = match &source.predictions {
                    Predictions::Probabilities(p) => Some(argmax(p.row(i))),
                    Predictions::Hard(v) => match &v[i] {
                        Some(value) => Some(lookup(source, value, i)?),
                        None => None,
                    },
                    // A set votes only when it names a single class.
                    Predictions::Set(v) => match v[i].as_deref() {
                        Some([one]) => Some(lookup(source, one, i)?),
                        _ => None,
                    },
                };
            }
        }
        if let Some(p) = probe {
            for i in 0..n {
                annotations[i * annotators + annotators - 1] = Some(argmax(p.row(i)));
            }
        }
        let uniform;
        let prior = match prior {
            Some(p) => p,
            None => {
                uniform = Probabilities::new(k, vec![1.0 / k as f64; n * k]);
                &uniform
            }
        };
        let annotations = Annotations {
            annotators,
            labels: annotations,
        };
        let (label, posterior, result) = crowdlab_where_predicted(&annotations, prior, seed)
            .map_err(|error| RevealError::Vote { class: None, error })?;
        let fired = (0..n)
            .map(|i| label[i].is_some_and(|l| l != given[i][0]))
            .collect();
        weights.model_weight.push(result.model_weight);
        weights.annotator_weights.push(result.annotator_weights);
        weights.annotator_quality.push(result.annotator_quality);
        weights.agreement.push(result.agreement_with_consensus);
        return Ok(VoteResult {
            fired,
            posterior,
            weights,
        });
    }
    // Multi-label: a binary vote per class.
    let annotators = sources.len();
    let mut presence = vec![0.0f64; n * k];
    let mut fired = vec![false; n];
    for c in 0..k {
        let mut annotations = vec![None; n * annotators];
        for (a, source) in sources.iter().enumerate() {
            for i in 0..n {
                annotations[i * annotators + a] = match &source.predictions {
                    Predictions::Probabilities(p) => Some(usize::from(p.get(i, c) >= 0.5)),
                    Predictions::Hard(v) => match &v[i] {
                        Some(value) => Some(usize::from(lookup(source, value, i)? == c)),
                        None => None,
                    },
                    Predictions::Set(v) => match &v[i] {
                        Some(set) => {
                            let mut has = false;
                            for value in set {
                                has |= lookup(source, value, i)? == c;
                            }
                            Some(usize::from(has))
                        }
                        None => None,
                    },
                };
            }
        }
        let binary_prior: Vec<f64> = (0..n)
            .flat_map(|i| {
                let p = prior.map_or(0.5, |p| p.get(i, c));
                [1.0 - p, p]
            })
            .collect();
        let annotations = Annotations {
            annotators,
            labels: annotations,
        };
        let (label, posterior, result) =
            crowdlab_where_predicted(&annotations, &Probabilities::new(2, binary_prior), seed)
                .map_err(|error| RevealError::Vote {
                    class: Some(classes.names[c].clone()),
                    error,
                })?;
        for i in 0..n {
            presence[i * k + c] = posterior.get(i, 1);
            let present = given[i].contains(&c);
            if label[i].is_some_and(|l| (l == 1) != present) {
                fired[i] = true;
            }
        }
        weights.model_weight.push(result.model_weight);
        weights.annotator_weights.push(result.annotator_weights);
        weights.annotator_quality.push(result.annotator_quality);
        weights.agreement.push(result.agreement_with_consensus);
    }
    Ok(VoteResult {
        fired,
        posterior: Probabilities::new(k, presence),
        weights,
    })
}

/// The limits of `reveal`'s quality gate.
#[derive(Debug, Clone, Default)]
pub struct GateLimits {
    pub max_issue_rate: Option<f64>,
    pub max_missing_rate: Option<f64>,
    /// Issue types no row may have.
    pub fail_on: Vec<IssueType>,
}

/// A limit the data broke.
#[derive(Debug, Clone, PartialEq)]
pub enum GateFailure {
    IssueRate { rate: f64, max: f64 },
    MissingRate { rate: f64, max: f64 },
    IssueType { issue_type: IssueType, rows: usize },
}

/// The gate's verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct Gate {
    /// Share of rows that are label issues.
    pub issue_rate: f64,
    /// Share of rows with at least one missing label.
    pub missing_rate: f64,
    pub failures: Vec<GateFailure>,
}

/// Check the decisions against the limits.
pub fn gate(decisions: &[RowDecision], limits: &GateLimits) -> Gate {
    let n = decisions.len().max(1) as f64;
    let issues = decisions.iter().filter(|d| d.is_issue).count();
    let with_missing = decisions.iter().filter(|d| !d.missing.is_empty()).count();
    let issue_rate = issues as f64 / n;
    let missing_rate = with_missing as f64 / n;
    let mut failures = Vec::new();
    if let Some(max) = limits.max_issue_rate
        && issue_rate > max
    {
        failures.push(GateFailure::IssueRate {
            rate: issue_rate,
            max,
        });
    }
    if let Some(max) = limits.max_missing_rate
        && missing_rate > max
    {
        failures.push(GateFailure::MissingRate {
            rate: missing_rate,
            max,
        });
    }
    for &issue_type in &limits.fail_on {
        let rows = decisions
            .iter()
            .filter(|d| d.issue_type == issue_type)
            .count();
        if rows > 0 {
            failures.push(GateFailure::IssueType { issue_type, rows });
        }
    }
    Gate {
        issue_rate,
        missing_rate,
        failures,
    }
}

/// Per class: how its rows were decided.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct ClassTally {
    /// Rows labelled with the class.
    pub rows: usize,
    pub issues: usize,
    pub noisy: usize,
    pub missing: usize,
    pub ambiguous: usize,
    /// Noisy rows of other classes whose suggestion is this class.
    pub suggested_into: usize,
    /// Rows where this class is missing from the labels.
    pub missing_from: usize,
}

/// Tally the decisions per class.
pub(crate) fn class_tallies(
    given: &[Vec<usize>],
    decisions: &[RowDecision],
    classes: usize,
) -> Vec<ClassTally> {
    let mut tally = vec![ClassTally::default(); classes];
    for (given, decision) in given.iter().zip(decisions) {
        for &k in given {
            let t = &mut tally[k];
            t.rows += 1;
            t.issues += usize::from(decision.is_issue);
            match decision.issue_type {
                IssueType::Noisy => t.noisy += 1,
                IssueType::Missing => t.missing += 1,
                IssueType::Ambiguous => t.ambiguous += 1,
                IssueType::None => {}
            }
        }
        if decision.issue_type == IssueType::Noisy
            && let Some(suggested) = &decision.suggested
        {
            for &k in suggested.iter().filter(|k| !given.contains(k)) {
                tally[k].suggested_into += 1;
            }
        }
        for &k in &decision.missing {
            tally[k].missing_from += 1;
        }
    }
    tally
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reveal::FilterBy;

    fn probs_source(name: &str, rows: &[[f64; 2]]) -> Source {
        Source {
            name: name.into(),
            kind: SourceKind::Probs,
            predictions: Predictions::Probabilities(
                Probabilities::from_rows(rows.iter().map(|r| r.to_vec()).collect()).unwrap(),
            ),
            covered: rows.len(),
        }
    }

    fn hard_source(name: &str, labels: &[Option<i64>]) -> Source {
        Source {
            name: name.into(),
            kind: SourceKind::Hard,
            predictions: Predictions::Hard(labels.iter().map(|l| l.map(ClassValue::Int)).collect()),
            covered: labels.iter().flatten().count(),
        }
    }

    fn settings() -> RevealSettings {
        RevealSettings {
            filter: FilterOptions {
                filter_by: FilterBy::PruneByNoiseRate,
                frac_noise: 1.0,
                min_examples_per_class: 1,
            },
            quality: QualityMethod::SelfConfidence,
            detectors: None,
            probe: None,
            knn: KnnOptions {
                k: 3,
                rounds: 2,
                sample: 0.9,
                seed: 0,
            },
            min_detectors: None,
            tau: None,
            confidence: 0.5,
            missing_threshold: None,
            seed: 0,
        }
    }

    fn int_classes(k: i64) -> Classes {
        let seen = (0..k).map(ClassValue::Int).collect();
        Classes::settle(None, &seen, None).unwrap()
    }

    #[test]
    fn default_detectors_follow_the_inputs() {
        let one = [probs_source("m", &[[0.9, 0.1]])];
        let two = [
            probs_source("m", &[[0.9, 0.1]]),
            hard_source("h", &[Some(0)]),
        ];
        assert_eq!(
            choose_detectors(None, false, false, &one, false).unwrap(),
            [Detector::Cl]
        );
        assert_eq!(
            choose_detectors(None, false, false, &two, true).unwrap(),
            [Detector::Cl, Detector::Knn, Detector::Vote]
        );
        // The probe is an annotator and a source of probabilities.
        let hard = [hard_source("h", &[Some(0)])];
        assert_eq!(
            choose_detectors(None, true, false, &hard, true).unwrap(),
            [Detector::Cl, Detector::Knn, Detector::Vote, Detector::Probe]
        );
        let asked = [Detector::Vote, Detector::Cl, Detector::Cl];
        assert_eq!(
            choose_detectors(Some(&asked), false, false, &two, false).unwrap(),
            [Detector::Cl, Detector::Vote]
        );
    }

    #[test]
    fn detectors_without_what_they_need_are_refused() {
        let one = [probs_source("m", &[[0.9, 0.1]])];
        let hard = [hard_source("h", &[Some(0)])];
        let refused = |asked: &[Detector], probe, multi, sources: &[Source], emb| {
            choose_detectors(Some(asked), probe, multi, sources, emb).unwrap_err()
        };
        assert!(matches!(
            refused(&[Detector::Knn], false, false, &one, false),
            RevealError::DetectorNeeds {
                detector: "knn",
                needs: Requirement::Embeddings
            }
        ));
        assert!(matches!(
            refused(&[Detector::Vote], false, false, &one, false),
            RevealError::DetectorNeeds {
                needs: Requirement::TwoSources,
                ..
            }
        ));
        assert!(matches!(
            refused(&[Detector::Cl], false, false, &hard, false),
            RevealError::DetectorNeeds {
                needs: Requirement::Probabilities,
                ..
            }
        ));
        assert!(matches!(
            refused(&[Detector::Probe], false, false, &one, true),
            RevealError::DetectorNeeds {
                needs: Requirement::Probe,
                ..
            }
        ));
        assert!(matches!(
            choose_detectors(None, true, true, &one, true).unwrap_err(),
            RevealError::ProbeMultiLabel
        ));
        assert!(matches!(
            choose_detectors(None, false, false, &hard, false).unwrap_err(),
            RevealError::NothingToDetect
        ));
        assert_eq!(min_detectors(None, 4).unwrap(), 3);
        assert!(matches!(
            min_detectors(Some(5), 4),
            Err(RevealError::MinimumAboveRun { wanted: 5, run: 4 })
        ));
    }

    #[test]
    fn the_class_order_joins_labels_and_sources() {
        let labels = vec![vec![ClassValue::Int(0)], vec![ClassValue::Int(1)]];
        let sources = [hard_source("h", &[Some(2), None])];
        assert_eq!(
            class_order(None, &labels, &sources).unwrap().names,
            ["0", "1", "2"]
        );
        let wide = [
            probs_source("a", &[[0.5, 0.5]]),
            Source {
                predictions: Predictions::Probabilities(Probabilities::new(3, vec![0.2; 3])),
                ..probs_source("b", &[[0.5, 0.5]])
            },
        ];
        assert!(matches!(
            class_order(None, &labels, &wide),
            Err(RevealError::SourceWidths {
                width: 3,
                other_width: 2,
                ..
            })
        ));
        let mixed = vec![vec![ClassValue::Int(0)], vec![ClassValue::Text("b".into())]];
        assert!(matches!(
            class_order(None, &mixed, &[]),
            Err(RevealError::MixedClasses)
        ));
        assert!(check_kinds(true, &[probs_source("m", &[[1.0, 0.0]])]).is_err());
        assert!(check_kinds(false, &[probs_source("m", &[[1.0, 0.0]])]).is_ok());
    }

    /// Two confident models that agree against the given label of row 0, and a hard
    /// annotator that agrees with them: cl and the vote both fire there and nowhere else.
    #[test]
    fn detection_flags_the_row_the_sources_agree_is_wrong() {
        let given: Vec<Vec<usize>> = vec![vec![0], vec![1], vec![0], vec![1], vec![0], vec![1]];
        let rows = [
            [0.05, 0.95],
            [0.1, 0.9],
            [0.9, 0.1],
            [0.2, 0.8],
            [0.85, 0.15],
            [0.1, 0.9],
        ];
        let sources = [
            probs_source("a", &rows),
            hard_source("h", &[Some(1), Some(1), Some(0), Some(1), Some(0), Some(1)]),
        ];
        let classes = int_classes(2);
        let inputs = RevealInputs {
            given: &given,
            multi_label: false,
            classes: &classes,
            sources: &sources,
            embeddings: None,
        };
        let mut events = Vec::new();
        let detection = detect(
            &inputs,
            &settings(),
            &Device::flex(),
            &mut |e| events.push(e),
            &|| false,
        )
        .unwrap();
        assert_eq!(detection.detectors, [Detector::Cl, Detector::Vote]);
        assert_eq!(detection.min_detectors, 2);
        let issues: Vec<bool> = detection.decisions.iter().map(|d| d.is_issue).collect();
        assert_eq!(issues, [true, false, false, false, false, false]);
        assert_eq!(detection.decisions[0].suggested, Some(vec![1]));
        assert_eq!(detection.vote.as_ref().unwrap().names, ["a", "h"]);
        assert_eq!(events.len(), 4);
        // The soft label is the vote's posterior: rows are distributions.
        for i in 0..given.len() {
            let sum: f64 = detection.soft.row(i).iter().sum();
            assert!((sum - 1.0).abs() < 1e-9);
        }
        let verdict = gate(
            &detection.decisions,
            &GateLimits {
                max_issue_rate: Some(0.1),
                max_missing_rate: None,
                fail_on: vec![IssueType::Noisy],
            },
        );
        assert_eq!(verdict.failures.len(), 2);
        let tallies = class_tallies(&given, &detection.decisions, 2);
        assert_eq!((tallies[0].rows, tallies[0].noisy), (3, 1));
        assert_eq!(tallies[1].suggested_into, 1);
        assert!((verdict.issue_rate - 1.0 / 6.0).abs() < 1e-12);
    }

    #[test]
    fn unknown_classes_in_a_vote_name_the_source_and_row() {
        let given: Vec<Vec<usize>> = vec![vec![0], vec![1]];
        let sources = [
            probs_source("a", &[[0.9, 0.1], [0.2, 0.8]]),
            hard_source("h", &[Some(0), Some(7)]),
        ];
        let classes = int_classes(2);
        let inputs = RevealInputs {
            given: &given,
            multi_label: false,
            classes: &classes,
            sources: &sources,
            embeddings: None,
        };
        let err = detect(&inputs, &settings(), &Device::flex(), &mut |_| {}, &|| {
            false
        })
        .err()
        .unwrap();
        assert!(matches!(
            err,
            RevealError::UnknownClass { ref source_name, row: 1, .. } if source_name == "h"
        ));
        let stopped = detect(&inputs, &settings(), &Device::flex(), &mut |_| {}, &|| true);
        assert!(matches!(
            stopped.err().unwrap(),
            RevealError::Interrupted(_)
        ));
    }
}
