//! `curate reweight`: difficulty flip, influence-driven weights, top-k selection.

use std::io::Write;

use anyhow::Result;

use super::Context;
use crate::ExitStatus;
use crate::cli::{PreserveArg, ReweightArgs, RuleArg};
use curate::error::{InputError, usage};
use curate::reweight::frame::{self, GroupColumns, Rule, RuleError};
use curate::reweight::levels::Groups;
use curate::reweight::{self, Adjustment, Binning, Preserve, TargetError};
use curate::table::{self, ColumnRole, Input, Output};

pub fn run(args: ReweightArgs, context: &Context) -> Result<ExitStatus> {
    check_flags(&args)?;
    let input = Input::open(&args.input, args.input_format.map(Into::into))?;
    curate::table::require_distinct(&[
        ("--out", args.out.as_str()),
        ("--report", args.report.as_deref().unwrap_or("-")),
    ])?;
    let output = Output::create(&args.out, args.output_format.map(Into::into), args.force)?;
    let report = match &args.report {
        Some(path) => Some(Output::create(path, None, args.force)?),
        None => None,
    };
    let scores_input = match &args.scores {
        Some(path) => Some(Input::open(path, None)?),
        None => None,
    };

    let frame = input.read()?;
    let label = input.label();
    table::require_rows(&frame, label)?;
    if !args.materialize && frame.column(&args.weight_name).is_ok() {
        return Err(usage(format!(
            "{label}: column '{}' already exists; name the new column with --weight-name",
            args.weight_name
        )));
    }
    let groups = frame::read_groups(
        &frame,
        label,
        &GroupColumns {
            domain: ColumnRole::new(&args.domain_col, "--domain-col"),
            difficulty: ColumnRole::new(&args.difficulty_col, "--difficulty-col"),
            optional: args.rule == RuleArg::Topk,
            need_domain: args.per_domain,
            binning: args
                .bins
                .map_or(Binning::Ordinal, |k| Binning::Quantiles(k as usize)),
            binning_hint: "pass --bins K to bin a continuous difficulty into K quantile levels",
        },
    )?;
    let preserve = match args.preserve {
        PreserveArg::Domain => Preserve::Domain,
        PreserveArg::Overall => Preserve::Overall,
    };
    let rule = rule(&args, &frame, &input, scores_input.as_ref(), context.seed)?;
    let weighed = frame::weigh(&groups, &rule, preserve, args.cap)
        .map_err(|err| rule_error(err, label, &args.domain_col))?;
    let weights = weighed.weights;
    let copies = args
        .materialize
        .then(|| reweight::systematic(&weights, &groups.domain, context.seed));
    let out_frame = frame::weighted_frame(&frame, &weights, copies.as_deref(), &args.weight_name)?;

    let mut provenance = context.provenance();
    provenance.add_input(input.digest()?);
    if let Some(scores_input) = &scores_input {
        provenance.add_input(scores_input.digest()?);
    }
    let audit = reweight::audit(&groups, &weights, copies.as_deref());
    let mut staged = vec![output.stage_frame(&out_frame, Some(&provenance))?];
    if let Some(report) = report {
        staged.push(report.stage_frame(&frame::audit_frame(&audit)?, Some(&provenance))?);
    }
    curate::table::commit_all(staged)?;

    let mut stderr = context.printer.stderr();
    for note in notes(&args, &rule, &groups.domain_names, &weighed.adjustments) {
        writeln!(stderr, "{note}")?;
    }
    reweight::audit::write_text(&mut stderr, &audit)?;
    for line in sample_sizes(&args, &groups, &weights) {
        writeln!(stderr, "{line}")?;
    }
    if args.out != "-" {
        writeln!(
            stderr,
            "wrote {} to {}",
            curate::text::count(out_frame.height(), "row", "rows"),
            args.out
        )?;
    }
    Ok(ExitStatus::Success)
}

/// The rule the flags ask for, with the scores it needs read.
fn rule(
    args: &ReweightArgs,
    frame: &polars::prelude::DataFrame,
    input: &Input,
    scores_input: Option<&Input>,
    seed: u64,
) -> Result<Rule> {
    Ok(match args.rule {
        RuleArg::Flip => Rule::Flip {
            directions: args.direction.clone(),
            targets: args.target.clone(),
            min_ess: args.min_ess,
        },
        RuleArg::Influence => Rule::Influence {
            scores: scores(frame, input, scores_input, args)?,
            tau: args.tau,
        },
        RuleArg::Random => Rule::Random {
            seed,
            tau: args.tau,
        },
        RuleArg::Topk => Rule::TopK {
            scores: scores(frame, input, scores_input, args)?,
            fraction: args.fraction.expect("checked in check_flags"),
            per_domain: args.per_domain,
            tie_rank: frame::id_order(&ids(frame, input.label(), args)?.1)?,
        },
    })
}

/// A rule's failure in the flags' terms.
fn rule_error(err: RuleError, label: &str, domain_col: &str) -> anyhow::Error {
    let unknown = |flag: &str, unknown: frame::UnknownDomain| {
        InputError::new(label, format!("{flag} {unknown}"))
            .column(domain_col)
            .into()
    };
    match err {
        RuleError::Direction(err) => unknown("--direction", err),
        RuleError::TargetDomain(err) => unknown("--target", err),
        RuleError::Target(TargetError::WrongLength {
            domain,
            given,
            levels,
        }) => usage(format!(
            "--target {domain} gives {given} proportions but domain '{domain}' has {levels} difficulty levels"
        )),
        RuleError::Target(TargetError::Invalid { domain, detail }) => {
            usage(format!("--target {domain}: {detail}"))
        }
        RuleError::Target(TargetError::EmptyLevel { domain, level }) => usage(format!(
            "--target {domain} puts mass on level {} but no row of domain '{domain}' is in it",
            level + 1
        )),
        RuleError::Cap(err) => usage(format!(
            "--cap {} is below the mean weight {} it must preserve; use a cap of at least {}",
            err.cap, err.mean, err.mean
        )),
    }
}

/// Below this share of a domain's rows, an effective sample size earns a warning.
const LOW_ESS: f64 = 0.1;

/// Per domain: how many rows the weighted domain is worth and where its mean difficulty went;
/// a warning where the weights hang on few rows.
fn sample_sizes(args: &ReweightArgs, groups: &Groups, weights: &[f64]) -> Vec<String> {
    if args.rule == RuleArg::Topk {
        return Vec::new();
    }
    let ess = reweight::effective_sample_sizes(&groups.domain, groups.domains(), weights);
    let before = groups.mean_difficulty(&vec![1.0; weights.len()]);
    let after = groups.mean_difficulty(weights);
    let counts = groups.counts();
    let mut lines = Vec::new();
    for (d, name) in groups.domain_names.iter().enumerate() {
        let rows: usize = counts[d].iter().sum();
        let share = ess[d] / rows as f64;
        lines.push(format!(
            "{name}: effective sample size {:.1} of {rows} rows ({:.1}%); mean difficulty {:.3} -> {:.3}",
            ess[d],
            share * 100.0,
            before[d],
            after[d]
        ));
        if share < LOW_ESS {
            let advice = match args.rule {
                RuleArg::Flip if args.min_ess.is_none() => {
                    "; --min-ess 0.25 tempers the flip until a quarter of the rows' worth remains"
                }
                RuleArg::Flip => "",
                _ => "; a smaller --tau or a --cap spreads it",
            };
            lines.push(format!(
                "warning: {name}: the weights hang on few rows (effective sample size {:.1}% of \
                 the domain, under {:.0}%){advice}",
                share * 100.0,
                LOW_ESS * 100.0
            ));
        }
    }
    lines
}

/// What the rule did, a line each, for stderr.
fn notes(
    args: &ReweightArgs,
    rule: &Rule,
    domain_names: &[String],
    adjustments: &[Adjustment],
) -> Vec<String> {
    let kept = match args.preserve {
        PreserveArg::Domain => "domain",
        PreserveArg::Overall => "table",
    };
    match rule {
        Rule::Flip { .. } => domain_names
            .iter()
            .zip(adjustments)
            .map(|(name, adjustment)| match adjustment {
                Adjustment::Untouched => format!("{name}: unchanged (no direction or target)"),
                Adjustment::Mirrored {
                    direction,
                    strength,
                } => format!(
                    "{name}: level histogram mirrored toward {direction}{}",
                    tempered(*strength)
                ),
                Adjustment::AlreadyLeaning {
                    direction,
                    mean,
                    mirrored_mean,
                } => format!(
                    "{name}: unchanged (mirroring its levels would move the mean difficulty \
                     {mean:.3} -> {mirrored_mean:.3}, away from {direction}; --target sets \
                     level proportions directly)"
                ),
                Adjustment::Targeted { strength } => format!(
                    "{name}: set to the --target proportions{}",
                    tempered(*strength)
                ),
            })
            .collect(),
        Rule::Influence { tau, .. } => vec![format!(
            "groups weighted by exp({tau} * z) of mean score; totals kept per {kept}"
        )],
        Rule::Random { seed, tau } => vec![format!(
            "groups weighted by exp({tau} * z) of a random z per group (seed {seed}); totals kept per {kept}"
        )],
        Rule::TopK {
            fraction,
            per_domain,
            ..
        } => vec![format!(
            "kept the top {:.1}% by score{}",
            fraction * 100.0,
            if *per_domain {
                " within each domain"
            } else {
                ""
            }
        )],
    }
}

/// How far `--min-ess` let a histogram move, in words ("" when all the way).
fn tempered(strength: f64) -> String {
    if strength >= 1.0 {
        String::new()
    } else {
        format!(
            ", tempered by --min-ess to {:.1}% of the way",
            strength * 100.0
        )
    }
}

fn check_flags(args: &ReweightArgs) -> Result<()> {
    if args.rule == RuleArg::Topk {
        match args.fraction {
            Some(f) if f > 0.0 && f <= 1.0 => {}
            Some(f) => return Err(usage(format!("--fraction {f} is not in (0, 1]"))),
            None => return Err(usage("--rule topk needs --fraction F")),
        }
        if args.cap.is_some() {
            return Err(usage(
                "--cap does not apply to --rule topk (weights are 0 or 1)",
            ));
        }
    } else if args.fraction.is_some() || args.per_domain {
        return Err(usage(
            "--fraction and --per-domain apply only to --rule topk",
        ));
    }
    if !args.tau.is_finite() {
        return Err(usage(format!("--tau {} is not a finite number", args.tau)));
    }
    if let Some(cap) = args.cap
        && !(cap.is_finite() && cap > 0.0)
    {
        return Err(usage(format!("--cap {cap} is not a positive number")));
    }
    if args.rule != RuleArg::Flip
        && (args.direction.is_some() || !args.target.is_empty() || args.min_ess.is_some())
    {
        return Err(usage(
            "--direction, --target and --min-ess apply only to --rule flip",
        ));
    }
    if let Some(f) = args.min_ess
        && !(f > 0.0 && f <= 1.0)
    {
        return Err(usage(format!("--min-ess {f} is not in (0, 1]")));
    }
    if args.report.as_deref() == Some(args.out.as_str()) {
        return Err(usage("--report and --out name the same file"));
    }
    Ok(())
}

/// Each row's score: from the `--scores` file (mean over queries, joined on ids) or from the
/// input's score column.
fn scores(
    frame: &polars::prelude::DataFrame,
    input: &Input,
    scores_input: Option<&Input>,
    args: &ReweightArgs,
) -> Result<Vec<f64>> {
    let label = input.label();
    let Some(scores_input) = scores_input else {
        return table::number_column(
            frame,
            label,
            ColumnRole::new(&args.score_col, "--score-col"),
            "score",
        );
    };
    let (id_name, ids) = ids(frame, label, args)?;
    frame::joined_scores(
        (id_name, &ids),
        label,
        &scores_input.read()?,
        scores_input.label(),
        "--scores takes the scores `curate influence` writes (train_id, score, query_id)",
    )
}

/// The id column's name and values: `--id-col`, else `id`, else the row index.
fn ids<'a>(
    frame: &polars::prelude::DataFrame,
    label: &str,
    args: &'a ReweightArgs,
) -> Result<(&'a str, polars::prelude::Column)> {
    let name = args.id_col.as_deref().unwrap_or("id");
    let role = ColumnRole::new(name, "--id-col");
    Ok((
        name,
        table::id_column(frame, label, role, args.id_col.is_some())?,
    ))
}
