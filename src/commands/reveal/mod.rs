//! `curate reveal`: label issues and missing labels by consensus of prediction sources.

mod inputs;
mod outputs;

use std::borrow::Cow;
use std::collections::BTreeSet;

use anyhow::Result;
use burn::tensor::Device;

use self::inputs::{
    ClassValue, Classes, Labels, Predictions, Source, SourceKind, SourceSpec, label_indices,
    read_embeddings, read_labels, read_source,
};
use super::Context;
use crate::ExitStatus;
use crate::cli::{ProbeArg, RevealArgs};
use crate::error::usage;
use crate::interrupt;
use crate::model::probe::{ProbeKind, ProbeSettings, out_of_fold_probabilities};
use crate::reveal::confident::issue_counts;
use crate::reveal::crowdlab::{Annotations, Consensus, crowdlab};
use crate::reveal::decide::{DecisionOptions, Detector, IssueType, decide, mean_distribution};
use crate::reveal::knn::{Embeddings, KnnOptions, knn_vote};
use crate::reveal::multilabel::{find_multilabel_issues, multilabel_quality};
use crate::reveal::{
    FilterBy, FilterOptions, Probabilities, QualityMethod, find_label_issues, quality_scores,
};
use crate::table::{Format, Input, Output};

/// Flags checked and parsed before any file is read.
struct Settings {
    filter: FilterOptions,
    quality: QualityMethod,
    detectors: Option<Vec<Detector>>,
    fail_on: Vec<IssueType>,
}

fn settings(args: &RevealArgs) -> Result<Settings> {
    let filter_by = FilterBy::parse(&args.filter_by).ok_or_else(|| {
        let names: Vec<&str> = FilterBy::ALL.iter().map(|f| f.name()).collect();
        usage(format!(
            "--filter-by {}: expected one of {}",
            args.filter_by,
            names.join(", ")
        ))
    })?;
    let quality = QualityMethod::parse(&args.quality_method).ok_or_else(|| {
        usage(format!(
            "--quality-method {}: expected self_confidence, normalized_margin or \
             confidence_weighted_entropy",
            args.quality_method
        ))
    })?;
    let detectors = match &args.detectors {
        None => None,
        Some(names) => {
            let mut chosen = Vec::new();
            for name in names {
                let d = Detector::parse(name.trim()).ok_or_else(|| {
                    usage(format!(
                        "--detectors {name}: expected cl, knn, vote or probe"
                    ))
                })?;
                if !chosen.contains(&d) {
                    chosen.push(d);
                }
            }
            if chosen.is_empty() {
                return Err(usage("--detectors names no detector"));
            }
            chosen.sort();
            Some(chosen)
        }
    };
    let fail_on = match &args.fail_on {
        None => Vec::new(),
        Some(names) => names
            .iter()
            .map(|name| match IssueType::parse(name.trim()) {
                Some(IssueType::None) | None => Err(usage(format!(
                    "--fail-on {name}: expected noisy, missing or ambiguous"
                ))),
                Some(t) => Ok(t),
            })
            .collect::<Result<_>>()?,
    };
    let unit = |flag: &str, value: Option<f64>| -> Result<()> {
        match value {
            Some(v) if !(0.0..=1.0).contains(&v) => {
                Err(usage(format!("{flag} {v} is not in [0, 1]")))
            }
            _ => Ok(()),
        }
    };
    unit("--max-issue-rate", args.max_issue_rate)?;
    unit("--max-missing-rate", args.max_missing_rate)?;
    unit("--tau", args.tau)?;
    unit("--confidence", Some(args.confidence))?;
    unit("--missing-threshold", args.missing_threshold)?;
    unit("--frac-noise", Some(args.frac_noise))?;
    if !(args.knn_sample > 0.0 && args.knn_sample <= 1.0) {
        return Err(usage(format!(
            "--knn-sample {} is not in (0, 1]",
            args.knn_sample
        )));
    }
    if args.knn_k == 0 || args.knn_rounds == 0 {
        return Err(usage("--knn-k and --knn-rounds must be at least 1"));
    }
    if args.folds < 2 {
        return Err(usage(format!("--folds {} must be at least 2", args.folds)));
    }
    if args.summary.as_deref() == Some(args.out.as_str()) {
        return Err(usage("--summary and --out name the same file"));
    }
    Ok(Settings {
        filter: FilterOptions {
            filter_by,
            frac_noise: args.frac_noise,
            min_examples_per_class: args.min_examples_per_class,
        },
        quality,
        detectors,
        fail_on,
    })
}

pub fn run(args: RevealArgs, context: &Context) -> Result<ExitStatus> {
    let started = std::time::Instant::now();
    let stage = |name: &str| tracing::debug!("{name}: {:.3} s", started.elapsed().as_secs_f64());
    let settings = settings(&args)?;
    let specs: Vec<SourceSpec> = args
        .sources
        .iter()
        .map(|s| SourceSpec::parse(s).map_err(usage))
        .collect::<Result<_>>()?;
    for (i, spec) in specs.iter().enumerate() {
        if specs[..i].iter().any(|s| s.name == spec.name) {
            return Err(usage(format!(
                "--source name '{}' is used twice",
                spec.name
            )));
        }
    }
    let output = Output::create(&args.out, None, args.force)?;
    let summary_output = match &args.summary {
        Some(path) => Some(Output::create(path, Some(Format::Jsonl), args.force)?),
        None => None,
    };

    let labels_input = Input::open(&args.labels, None)?;
    // Content hashes for provenance take a while on large inputs: compute them meanwhile.
    let digests = digest_in_background(&args, &labels_input);
    let labels = read_labels(
        &labels_input,
        &args.id_col,
        &args.label_col,
        &args.labels_col,
    )?;
    stage("read labels");
    let mut sources = Vec::new();
    for spec in specs {
        interrupt::check()?;
        sources.push(read_source(
            spec,
            &labels,
            &args.id_col,
            &args.probs_prefix,
        )?);
    }
    stage("read labels and sources");
    let classes = class_order(&args, &labels, &sources)?;
    let label_column = if labels.multi_label {
        &args.labels_col
    } else {
        &args.label_col
    };
    let given = label_indices(&labels, &classes, label_column)?;
    check_kinds(&labels, &sources)?;
    let embeddings = match &args.embeddings {
        Some(path) => Some(read_embeddings(path, &labels, &args.id_col, &args.emb_col)?),
        None => None,
    };

    stage("classes and embeddings");
    let detectors = choose_detectors(&args, &settings, &labels, &sources, embeddings.is_some())?;
    let min_detectors = match args.min_detectors {
        Some(0) => return Err(usage("--min-detectors must be at least 1")),
        Some(m) if m > detectors.len() => {
            return Err(usage(format!(
                "--min-detectors {m}, but only {} detectors run",
                detectors.len()
            )));
        }
        Some(m) => m,
        None => detectors.len() / 2 + 1,
    };
    let k = classes.len();
    let single: Vec<usize> = given.iter().map(|g| g[0]).collect();

    // The probe first: its probabilities can stand in for missing probability sources, and it
    // votes like a source.
    let probe = if args.probe.is_some() {
        let (dim, values) = embeddings
            .as_ref()
            .expect("checked: --probe needs embeddings");
        let bar = context.printer.progress_bar(args.folds as u64, "probe");
        let probe_settings = ProbeSettings {
            kind: match args.probe.unwrap_or(ProbeArg::Logreg) {
                ProbeArg::Logreg => ProbeKind::Logistic,
                ProbeArg::Mlp => ProbeKind::Mlp {
                    hidden: args.probe_hidden,
                },
            },
            folds: args.folds,
            epochs: args.probe_epochs,
            seed: context.seed,
            ..ProbeSettings::default()
        };
        let probs = out_of_fold_probabilities(
            values,
            *dim,
            &single,
            k,
            probe_settings,
            &Device::flex(),
            &mut |_| bar.inc(1),
        )?;
        bar.finish_and_clear();
        Some(Probabilities::new(k, probs))
    } else {
        None
    };
    interrupt::check()?;

    let source_probs: Vec<&Probabilities> = sources
        .iter()
        .filter_map(|s| match &s.predictions {
            Predictions::Probabilities(p) => Some(p),
            _ => None,
        })
        .collect();
    // Borrowed where there is one set of probabilities: large inputs are never copied.
    let model_probs: Option<Cow<Probabilities>> = match source_probs.len() {
        0 => probe.as_ref().map(Cow::Borrowed),
        1 => Some(Cow::Borrowed(source_probs[0])),
        _ => Some(Cow::Owned(mean_distribution(&source_probs))),
    };

    let mut flags: Vec<(Detector, Vec<bool>)> = Vec::new();
    let mut distributions: Vec<Probabilities> = Vec::new();
    let mut consensus: Option<VoteResult> = None;
    for &detector in &detectors {
        interrupt::check()?;
        let spinner = context.printer.spinner(detector.name());
        match detector {
            Detector::Cl => {
                let probs = model_probs
                    .as_ref()
                    .expect("checked: cl needs probabilities");
                let fired = if labels.multi_label {
                    find_multilabel_issues(&given, probs, settings.filter)
                } else {
                    find_label_issues(&single, probs, settings.filter)
                };
                flags.push((Detector::Cl, fired));
            }
            Detector::Probe => {
                let probs = probe.as_ref().expect("probe ran");
                flags.push((
                    Detector::Probe,
                    find_label_issues(&single, probs, settings.filter),
                ));
            }
            Detector::Knn => {
                let (dim, values) = embeddings.as_ref().expect("checked: knn needs embeddings");
                let options = KnnOptions {
                    k: args.knn_k,
                    rounds: args.knn_rounds,
                    sample: args.knn_sample,
                    seed: context.seed,
                };
                let vote = knn_vote(&Embeddings::new(*dim, values.clone()), &given, k, options);
                flags.push((Detector::Knn, vote.issue));
                distributions.push(vote.votes);
            }
            Detector::Vote => {
                let result = vote(
                    &labels,
                    &sources,
                    probe.as_ref(),
                    model_probs.as_deref(),
                    &given,
                    &classes,
                    context.seed,
                )?;
                flags.push((Detector::Vote, result.fired.clone()));
                distributions.push(result.posterior.clone());
                consensus = Some(result);
            }
        }
        spinner.finish_and_clear();
        stage(detector.name());
    }
    interrupt::check()?;

    // The consensus distribution: the vote's posterior (which already holds the sources and
    // the probabilities as its prior), else the probabilities; plus the kNN votes; plus the
    // probe when it is not already inside the vote or the probabilities.
    let mut parts: Vec<&Probabilities> = Vec::new();
    if consensus.is_none()
        && let Some(p) = model_probs.as_deref()
    {
        parts.push(p);
    }
    parts.extend(distributions.iter());
    if let Some(p) = &probe
        && consensus.is_none()
        && !source_probs.is_empty()
    {
        parts.push(p);
    }
    let soft: Cow<Probabilities> = match parts.as_slice() {
        [one] => Cow::Borrowed(*one),
        _ => Cow::Owned(mean_distribution(&parts)),
    };
    let quality_basis: &Probabilities = model_probs.as_deref().unwrap_or(&soft);
    let quality = if labels.multi_label {
        multilabel_quality(&given, quality_basis, settings.quality)
    } else {
        quality_scores(&single, quality_basis, settings.quality)
    };
    let missing_threshold =
        args.missing_threshold
            .unwrap_or(if labels.multi_label { 0.5 } else { 0.3 });
    let decisions = decide(
        &given,
        &flags,
        &soft,
        DecisionOptions {
            min_detectors,
            tau: args.tau,
            confidence: args.confidence,
            missing_threshold,
            multi_label: labels.multi_label,
        },
    );
    let counts = match (&model_probs, labels.multi_label) {
        (Some(probs), false) => Some(issue_counts(&single, probs)),
        _ => None,
    };

    stage("decide");
    let report = outputs::Report {
        args: &args,
        labels: &labels,
        classes: &classes,
        given: &given,
        sources: &sources,
        detectors: &detectors,
        min_detectors,
        flags: &flags,
        soft: &soft,
        quality: &quality,
        decisions: &decisions,
        consensus: consensus.as_ref().map(|c| &c.weights),
        counts,
        filter: settings.filter,
    };
    let gate = report.gate(&settings.fail_on);
    let mut provenance = context.provenance();
    for digest in digests.join().expect("digest thread")? {
        provenance.add_input(digest);
    }
    stage("provenance");
    let frame = report.frame()?;
    output.write_frame(&frame, Some(&provenance))?;
    stage("write");
    if let Some(summary_output) = summary_output {
        let json = report.summary_json(&gate);
        let mut bytes = serde_json::to_vec_pretty(&json)?;
        bytes.push(b'\n');
        summary_output.write_document(&bytes)?;
    }
    report.print(&context.printer, &gate)?;
    Ok(if gate.failures.is_empty() {
        ExitStatus::Success
    } else {
        ExitStatus::GateFailed
    })
}

/// Hash every distinct input file on a thread of its own.
fn digest_in_background(
    args: &RevealArgs,
    labels: &Input,
) -> std::thread::JoinHandle<Result<Vec<crate::table::InputDigest>>> {
    let mut paths = vec![args.labels.clone()];
    for spec in &args.sources {
        if let Ok(spec) = SourceSpec::parse(spec) {
            paths.push(spec.path);
        }
    }
    paths.extend(args.embeddings.clone());
    let labels = labels.clone();
    std::thread::spawn(move || {
        let mut seen = BTreeSet::new();
        let mut digests = vec![labels.digest()?];
        seen.insert(paths[0].clone());
        for path in &paths[1..] {
            if seen.insert(path.clone()) {
                digests.push(Input::open(path, None)?.digest()?);
            }
        }
        Ok(digests)
    })
}

/// Class order from --classes, the labels, the hard/set predictions and the probability width.
fn class_order(args: &RevealArgs, labels: &Labels, sources: &[Source]) -> Result<Classes> {
    let mut seen: BTreeSet<ClassValue> = labels.values.iter().flatten().cloned().collect();
    let mut width: Option<(usize, &str)> = None;
    for source in sources {
        match &source.predictions {
            Predictions::Probabilities(p) => match width {
                Some((w, other)) if w != p.classes() => {
                    return Err(usage(format!(
                        "class-order mismatch: source '{}' has {} classes, source '{other}' has {w}",
                        source.spec.name,
                        p.classes()
                    )));
                }
                _ => width = Some((p.classes(), &source.spec.name)),
            },
            Predictions::Hard(values) => seen.extend(values.iter().flatten().cloned()),
            Predictions::Set(values) => seen.extend(values.iter().flatten().flatten().cloned()),
        }
    }
    let mixed = seen.iter().any(|v| matches!(v, ClassValue::Int(_)))
        && seen.iter().any(|v| matches!(v, ClassValue::Text(_)));
    if mixed && args.classes.is_none() {
        return Err(usage(
            "classes are written both as integers and as strings; name them with --classes",
        ));
    }
    Classes::settle(args.classes.as_deref(), &seen, width.map(|(w, _)| w))
}

/// Source kinds must fit the labels: presence scores for multi-label, class probabilities
/// for single-label.
fn check_kinds(labels: &Labels, sources: &[Source]) -> Result<()> {
    for source in sources {
        let kind = source.spec.kind;
        if labels.multi_label && kind == SourceKind::Probs {
            return Err(usage(format!(
                "source '{}' is probs, but the labels are lists: multi-label sources are \
                 mlprobs, hard or set",
                source.spec.name
            )));
        }
        if !labels.multi_label && kind == SourceKind::MlProbs {
            return Err(usage(format!(
                "source '{}' is mlprobs (per-class presence), but each row has one label; use probs",
                source.spec.name
            )));
        }
    }
    Ok(())
}

fn choose_detectors(
    args: &RevealArgs,
    settings: &Settings,
    labels: &Labels,
    sources: &[Source],
    has_embeddings: bool,
) -> Result<Vec<Detector>> {
    let has_probs = sources.iter().any(|s| s.spec.kind.is_probabilities());
    let annotators = sources.len() + usize::from(args.probe.is_some());
    let detectors = match &settings.detectors {
        Some(d) => d.clone(),
        None => {
            let mut d = Vec::new();
            if has_probs || args.probe.is_some() {
                d.push(Detector::Cl);
            }
            if has_embeddings {
                d.push(Detector::Knn);
            }
            if annotators >= 2 {
                d.push(Detector::Vote);
            }
            if args.probe.is_some() {
                d.push(Detector::Probe);
            }
            d
        }
    };
    if detectors.is_empty() {
        return Err(usage(
            "nothing to detect with: give a probability --source, --embeddings, or two sources",
        ));
    }
    for d in &detectors {
        match d {
            Detector::Cl if !has_probs && args.probe.is_none() => {
                return Err(usage(
                    "the cl detector needs a probs/mlprobs --source (or --probe)",
                ));
            }
            Detector::Knn | Detector::Probe if !has_embeddings => {
                return Err(usage(format!(
                    "the {} detector needs --embeddings",
                    d.name()
                )));
            }
            Detector::Probe if labels.multi_label => {
                return Err(usage("the probe detector supports single-label data only"));
            }
            Detector::Vote if annotators < 2 => {
                return Err(usage(
                    "the vote detector needs at least two sources (the probe counts as one)",
                ));
            }
            _ => {}
        }
    }
    if detectors.contains(&Detector::Probe) && args.probe.is_none() {
        return Err(usage("the probe detector needs --probe logreg|mlp"));
    }
    if args.probe.is_some() && !has_embeddings {
        return Err(usage("--probe needs --embeddings"));
    }
    if args.probe.is_some() && labels.multi_label {
        return Err(usage("--probe supports single-label data only"));
    }
    Ok(detectors)
}

/// The vote's outcome.
pub struct VoteResult {
    pub fired: Vec<bool>,
    /// Single-label: the CROWDLAB posterior. Multi-label: per-class presence.
    pub posterior: Probabilities,
    pub weights: outputs::VoteWeights,
}

/// CROWDLAB over the sources (and the probe): each an annotator. Single-label: one vote over
/// the classes. Multi-label: one binary vote per class on presence.
fn vote(
    labels: &Labels,
    sources: &[Source],
    probe: Option<&Probabilities>,
    prior: Option<&Probabilities>,
    given: &[Vec<usize>],
    classes: &Classes,
    seed: u64,
) -> Result<VoteResult> {
    let n = given.len();
    let k = classes.len();
    let mut names: Vec<String> = sources.iter().map(|s| s.spec.name.clone()).collect();
    if probe.is_some() {
        names.push("probe".to_string());
    }
    let lookup = |source: &str, value: &ClassValue, row: usize| -> Result<usize> {
        classes.lookup(value).ok_or_else(|| {
            usage(format!(
                "source '{source}': unknown class '{}' for id {} (classes: {})",
                match value {
                    ClassValue::Int(v) => v.to_string(),
                    ClassValue::Text(v) => v.clone(),
                },
                labels.ids[row],
                classes.names.join(", ")
            ))
        })
    };
    if !labels.multi_label {
        let annotators = names.len();
        let mut annotations = vec![None; n * annotators];
        for (a, source) in sources.iter().enumerate() {
            for i in 0..n {
                annotations[i * annotators + a] = match &source.predictions {
                    Predictions::Probabilities(p) => Some(crate::reveal::numeric::argmax(p.row(i))),
                    Predictions::Hard(v) => match &v[i] {
                        Some(value) => Some(lookup(&source.spec.name, value, i)?),
                        None => None,
                    },
                    // A set votes only when it names a single class.
                    Predictions::Set(v) => match v[i].as_deref() {
                        Some([one]) => Some(lookup(&source.spec.name, one, i)?),
                        _ => None,
                    },
                };
            }
        }
        if let Some(p) = probe {
            for i in 0..n {
                annotations[i * annotators + annotators - 1] =
                    Some(crate::reveal::numeric::argmax(p.row(i)));
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
        let result: Consensus =
            crowdlab(&annotations, prior, seed).map_err(|e| usage(format!("vote: {e}")))?;
        let fired = (0..n).map(|i| result.label[i] != given[i][0]).collect();
        return Ok(VoteResult {
            fired,
            weights: outputs::VoteWeights {
                names,
                model_weight: vec![result.model_weight],
                annotator_weights: vec![result.annotator_weights.clone()],
                annotator_quality: vec![result.annotator_quality.clone()],
                agreement: vec![result.agreement_with_consensus.clone()],
            },
            posterior: result.posterior,
        });
    }
    // Multi-label: a binary vote per class.
    let annotators = sources.len();
    let mut presence = vec![0.0f64; n * k];
    let mut fired = vec![false; n];
    let mut weights = outputs::VoteWeights {
        names,
        model_weight: Vec::new(),
        annotator_weights: Vec::new(),
        annotator_quality: Vec::new(),
        agreement: Vec::new(),
    };
    for c in 0..k {
        let mut annotations = vec![None; n * annotators];
        for (a, source) in sources.iter().enumerate() {
            for i in 0..n {
                annotations[i * annotators + a] = match &source.predictions {
                    Predictions::Probabilities(p) => Some(usize::from(p.get(i, c) >= 0.5)),
                    Predictions::Hard(v) => match &v[i] {
                        Some(value) => Some(usize::from(lookup(&source.spec.name, value, i)? == c)),
                        None => None,
                    },
                    Predictions::Set(v) => match &v[i] {
                        Some(set) => {
                            let mut has = false;
                            for value in set {
                                has |= lookup(&source.spec.name, value, i)? == c;
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
        let result = crowdlab(&annotations, &Probabilities::new(2, binary_prior), seed)
            .map_err(|e| usage(format!("vote on class '{}': {e}", classes.names[c])))?;
        for i in 0..n {
            presence[i * k + c] = result.posterior.get(i, 1);
            let present = given[i].contains(&c);
            if (result.label[i] == 1) != present {
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
