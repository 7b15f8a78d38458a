//! `curate reveal`: label issues and missing labels by consensus of prediction sources.

mod ask;
mod outputs;

use anyhow::Result;
use burn::tensor::Device;

use super::Context;
use crate::ExitStatus;
use crate::cli::{ProbeArg, RevealAction, RevealArgs};
use curate::error::{Interrupted, usage};
use curate::interrupt;
use curate::model::probe::ProbeKind;
use curate::reveal::FilterOptions;
use curate::reveal::classes::{ClassOrderError, Classes};
use curate::reveal::detect::{
    Detection, GateLimits, ProbeOptions, Requirement, RevealError, RevealEvent, RevealInputs,
    RevealSettings, Source, check_kinds, class_order, detect, gate,
};
use curate::reveal::inputs::{
    Labels, RevealColumns, label_indices, read_embeddings, read_labels, read_source,
};
use curate::reveal::knn::KnnOptions;
use curate::reveal::report::Report;
use curate::table::{self, ColumnRole, Format, Input, Output};

/// The flags as REVEAL's settings and the gate's limits, range-checked before any file is
/// read.
fn settings(args: &RevealArgs, seed: u64) -> Result<(RevealSettings, GateLimits)> {
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
    if args.summary.is_some() && args.summary == args.out {
        return Err(usage("--summary and --out name the same file"));
    }
    let settings = RevealSettings {
        filter: FilterOptions {
            filter_by: args.filter_by.into(),
            frac_noise: args.frac_noise,
            min_examples_per_class: args.min_examples_per_class,
        },
        quality: args.quality_method.into(),
        detectors: args
            .detectors
            .as_ref()
            .map(|names| names.iter().map(|&d| d.into()).collect()),
        probe: args.probe.map(|kind| ProbeOptions {
            kind: match kind {
                ProbeArg::Logreg => ProbeKind::Logistic,
                ProbeArg::Mlp => ProbeKind::Mlp {
                    hidden: args.probe_hidden,
                },
            },
            folds: args.folds,
            epochs: args.probe_epochs,
        }),
        knn: KnnOptions {
            k: args.knn_k,
            rounds: args.knn_rounds,
            sample: args.knn_sample,
            seed,
        },
        min_detectors: args.min_detectors,
        tau: args.tau,
        confidence: args.confidence,
        missing_threshold: args.missing_threshold,
        seed,
    };
    let limits = GateLimits {
        max_issue_rate: args.max_issue_rate,
        max_missing_rate: args.max_missing_rate,
        fail_on: args.fail_on.iter().flatten().map(|&t| t.into()).collect(),
    };
    Ok((settings, limits))
}

pub fn run(args: RevealArgs, context: &Context) -> Result<ExitStatus> {
    if let Some(RevealAction::Ask(ask_args)) = args.action {
        return ask::run(*ask_args, context);
    }
    let out = args.out.clone().expect("clap requires --out");
    let labels = args.labels.clone().expect("clap requires --labels");
    let started = std::time::Instant::now();
    let stage = |name: &str| tracing::debug!("{name}: {:.3} s", started.elapsed().as_secs_f64());
    let (settings, limits) = settings(&args, context.seed)?;
    let specs = &args.sources;
    for (i, spec) in specs.iter().enumerate() {
        if specs[..i].iter().any(|s| s.name == spec.name) {
            return Err(usage(format!(
                "--source name '{}' is used twice",
                spec.name
            )));
        }
    }
    table::require_distinct(&[
        ("--out", out.as_str()),
        ("--summary", args.summary.as_deref().unwrap_or("-")),
    ])?;
    let output = Output::create(&out, None, args.force)?;
    let summary_output = match &args.summary {
        Some(path) => Some(Output::create(path, Some(Format::Jsonl), args.force)?),
        None => None,
    };

    let labels_input = Input::open(&labels, None)?;
    // Content hashes for provenance take a while on large inputs: compute them meanwhile.
    let others: Vec<String> = specs
        .iter()
        .map(|spec| spec.path.clone())
        .chain(args.embeddings.clone())
        .collect();
    let digests = table::digest_in_background(labels_input.clone(), others);
    let columns = RevealColumns {
        id: ColumnRole::new(&args.id_col, "--id-col"),
        label: ColumnRole::new(&args.label_col, "--label-col"),
        labels: ColumnRole::new(&args.labels_col, "--labels-col"),
        probs_prefix: ColumnRole::new(&args.probs_prefix, "--probs-prefix"),
        probs_cols: args.probs_cols.as_deref(),
        embedding: ColumnRole::new(&args.emb_col, "--emb-col"),
        source: "--source",
    };
    let ReadInputs {
        labels,
        sources,
        classes,
        given,
        embeddings,
    } = read_inputs(&args, &labels_input, &columns, &stage)?;

    let inputs = RevealInputs {
        given: &given,
        multi_label: labels.multi_label,
        classes: &classes,
        sources: &sources,
        embeddings: embeddings
            .as_ref()
            .map(|(dim, values)| (*dim, values.as_slice())),
    };
    let detection = detect_with_progress(&inputs, &settings, args.folds, context, &stage)
        .map_err(|e| flag_error(e, &labels, Some(&classes)))?;
    stage("decide");

    let verdict = gate(&detection.decisions, &limits);
    let report = Report {
        labels: &labels,
        classes: &classes,
        given: &given,
        specs,
        sources: &sources,
        detection: &detection,
        gate: &verdict,
        filter_by: args.filter_by.into(),
        soft_label: !args.no_soft_label,
    };
    let mut provenance = context.provenance();
    for digest in digests.join().expect("digest thread")? {
        provenance.add_input(digest);
    }
    stage("provenance");
    let frame = report.frame()?;
    let mut staged = vec![output.stage_frame(&frame, Some(&provenance))?];
    if let Some(summary_output) = summary_output {
        let mut bytes = serde_json::to_vec_pretty(&report.summary_json(outputs::failure_message))?;
        bytes.push(b'\n');
        staged.push(summary_output.stage_document(&bytes)?);
    }
    table::commit_all(staged)?;
    stage("write");
    outputs::print(&report, &out, &context.printer)?;
    Ok(if verdict.failures.is_empty() {
        ExitStatus::Success
    } else {
        ExitStatus::GateFailed
    })
}

/// Everything REVEAL reads, checked against the labels file.
struct ReadInputs {
    labels: Labels,
    sources: Vec<Source>,
    classes: Classes,
    /// Each row's given classes, as indices into `classes`.
    given: Vec<Vec<usize>>,
    /// Dimension and row-major values.
    embeddings: Option<(usize, Vec<f32>)>,
}

fn read_inputs(
    args: &RevealArgs,
    labels_input: &Input,
    columns: &RevealColumns,
    stage: &dyn Fn(&str),
) -> Result<ReadInputs> {
    let labels = read_labels(labels_input, columns)?;
    stage("read labels");
    let mut sources = Vec::new();
    let mut class_named = Vec::new();
    for spec in &args.sources {
        interrupt::check()?;
        let read = read_source(spec, &labels, columns)?;
        if let Some(column_classes) = read.column_classes {
            class_named.push((sources.len(), column_classes, spec.path.as_str()));
        }
        sources.push(read.source);
    }
    stage("read labels and sources");
    let classes = class_order(args.classes.as_deref(), &labels.values, &sources)
        .map_err(|e| flag_error(e, &labels, None))?;
    for (at, column_classes, path) in class_named {
        curate::reveal::inputs::order_by_class(
            &mut sources[at],
            &column_classes,
            &classes.names,
            path,
            &args.probs_prefix,
        )?;
    }
    let label_column = if labels.multi_label {
        &args.labels_col
    } else {
        &args.label_col
    };
    let given = label_indices(&labels, &classes, label_column)?;
    check_kinds(labels.multi_label, &sources).map_err(|e| flag_error(e, &labels, None))?;
    let embeddings = match &args.embeddings {
        Some(path) => Some(read_embeddings(path, &labels, columns)?),
        None => None,
    };
    stage("classes and embeddings");
    Ok(ReadInputs {
        labels,
        sources,
        classes,
        given,
        embeddings,
    })
}

/// Run the detectors with a bar over the probe's folds and a spinner per detector.
fn detect_with_progress<'a>(
    inputs: &RevealInputs<'a>,
    settings: &RevealSettings,
    folds: usize,
    context: &Context,
    stage: &dyn Fn(&str),
) -> Result<Detection<'a>, RevealError> {
    let bar = context.printer.progress_bar(folds as u64, "probe");
    let mut spinner = None;
    detect(
        inputs,
        settings,
        &Device::flex(),
        &mut |event| match event {
            RevealEvent::ProbeFoldDone => bar.inc(1),
            RevealEvent::DetectorStarted(detector) => {
                bar.finish_and_clear();
                spinner = Some(context.printer.spinner(detector.name()));
            }
            RevealEvent::DetectorDone(detector) => {
                if let Some(s) = spinner.take() {
                    s.finish_and_clear();
                }
                stage(detector.name());
            }
        },
        &interrupt::requested,
    )
}

/// REVEAL's errors, in the flags' terms: bad combinations are usage errors (exit 2), a
/// failed probe is a runtime failure.
fn flag_error(err: RevealError, labels: &Labels, classes: Option<&Classes>) -> anyhow::Error {
    use RevealError as E;
    let message = match err {
        E::Interrupted(_) => return Interrupted.into(),
        E::Probe(err) => return err,
        E::ClassOrder(ClassOrderError::Repeated(name)) => {
            format!("--classes names '{name}' twice")
        }
        E::ClassOrder(err @ ClassOrderError::Negative(_)) => {
            format!("{err} (or name them with --classes)")
        }
        E::ClassOrder(err @ ClassOrderError::Width { .. }) => {
            format!("{err}; name them in column order with --classes")
        }
        E::MixedClasses => {
            "classes are written both as integers and as strings; name them with --classes".into()
        }
        E::KindMismatch {
            source_name,
            multi_label: true,
            kind,
        } => format!(
            "source '{source_name}' is {kind}, but the labels are lists: multi-label sources \
             are mlprobs, hard or set"
        ),
        E::KindMismatch {
            source_name,
            multi_label: false,
            kind,
        } => format!(
            "source '{source_name}' is {kind} (per-class presence), but each row has one label; \
             use probs"
        ),
        E::NothingToDetect => {
            "nothing to detect with: give a probability --source, --embeddings, or two sources"
                .into()
        }
        E::DetectorNeeds { detector, needs } => match needs {
            Requirement::Probabilities => {
                format!("the {detector} detector needs a probs/mlprobs --source (or --probe)")
            }
            Requirement::Embeddings => format!("the {detector} detector needs --embeddings"),
            Requirement::TwoSources => format!("the {detector} detector needs {needs}"),
            Requirement::Probe => format!("the {detector} detector needs --probe logreg|mlp"),
        },
        E::ProbeNeeds(_) => "--probe needs --embeddings".into(),
        E::ProbeMultiLabel => "--probe supports single-label data only".into(),
        E::NoMinimum => "--min-detectors must be at least 1".into(),
        E::MinimumAboveRun { wanted, run } => {
            format!("--min-detectors {wanted}, but only {run} detectors run")
        }
        E::UnknownClass {
            source_name,
            value,
            row,
        } => format!(
            "source '{source_name}': unknown class '{value}' for id {} (classes: {})",
            labels.ids[row],
            classes.map(|c| c.names.join(", ")).unwrap_or_default()
        ),
        other => other.to_string(),
    };
    usage(message)
}
