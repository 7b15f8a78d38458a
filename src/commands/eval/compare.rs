//! `curate eval compare`: arms (reweighting rules, say) evaluated once per seed, side by side,
//! with a gate on the gain of one arm over another.

use std::io::Write;

use anyhow::Result;
use polars::prelude::*;

use crate::ExitStatus;
use crate::cli::CompareArgs;
use crate::commands::Context;
use crate::printer::{Align, text_table};
use curate::error::{InputError, usage};
use curate::eval::{Arm, ArmStats, arm_stats, gains};
use curate::table::{self, ColumnRole, Input, Output};

pub fn run(args: CompareArgs, context: &Context) -> Result<ExitStatus> {
    let output = Output::create(&args.out, None, args.force)?;
    let mut arms = Vec::new();
    let mut provenance = context.provenance();
    for spec in &args.arms {
        let (name, files) = spec
            .split_once('=')
            .filter(|(name, files)| !name.is_empty() && !files.is_empty())
            .ok_or_else(|| usage(format!("arm {spec:?}: expected NAME=FILE[,FILE...]")))?;
        if arms.iter().any(|a: &Arm| a.name == name) {
            return Err(usage(format!("arm '{name}' is given twice")));
        }
        let mut runs = Vec::new();
        for file in files.split(',') {
            let input = Input::open(file, None)?;
            runs.push(domain_losses(&input, &args.domain_col)?);
            provenance.add_input(input.digest()?);
        }
        arms.push(Arm {
            name: name.to_string(),
            runs,
        });
    }
    for arm in [&args.candidate, &args.control].into_iter().flatten() {
        if !arms.iter().any(|a| &a.name == arm) {
            return Err(usage(format!(
                "--candidate/--control '{arm}' is not an arm"
            )));
        }
    }
    let stats: Vec<ArmStats> = arms.iter().flat_map(arm_stats).collect();
    let gains = match (&args.candidate, &args.control) {
        (Some(candidate), Some(control)) => Some(gains(&stats, candidate, control)),
        _ => None,
    };
    output.write_frame(&frame(&stats, gains.as_ref(), &args)?, Some(&provenance))?;

    let mut err = context.printer.stderr();
    write_text(&mut err, &stats)?;
    let Some(gains) = gains else {
        return Ok(ExitStatus::Success);
    };
    let (candidate, control) = (
        args.candidate.as_deref().unwrap_or_default(),
        args.control.as_deref().unwrap_or_default(),
    );
    for (domain, gain) in &gains {
        writeln!(
            err,
            "{domain}: {candidate} is {gain:+.4} below {control} in mean loss"
        )?;
    }
    let overall = gains.iter().find(|(d, _)| d == "all").map_or(0.0, |g| g.1);
    if overall < args.min_gain {
        writeln!(
            err,
            "gate failed: the gain of {candidate} over {control} is {overall:+.4}, below --min-gain {}",
            args.min_gain
        )?;
        return Ok(ExitStatus::GateFailed);
    }
    writeln!(
        err,
        "gate passed: gain {overall:+.4} >= --min-gain {}",
        args.min_gain
    )?;
    Ok(ExitStatus::Success)
}

/// Summed `loss` and `loss_tokens` of an eval output per domain (in order of first
/// appearance) and over all rows.
fn domain_losses(input: &Input, domain_col: &str) -> Result<Vec<(String, f64, f64)>> {
    let frame = input.read()?;
    let file = input.label();
    table::require_rows(&frame, file)?;
    let role = |name: &'static str| ColumnRole::new(name, name);
    let losses = table::number_column(&frame, file, role("loss"), "loss")?;
    let tokens = table::number_column(&frame, file, role("loss_tokens"), "loss_tokens")?;
    let domains: Vec<String> = match frame.column(domain_col) {
        Ok(column) => column
            .cast(&DataType::String)?
            .str()?
            .iter()
            .map(|v| v.unwrap_or("").to_string())
            .collect(),
        Err(_) => vec![String::new(); frame.height()],
    };
    let mut out: Vec<(String, f64, f64)> = Vec::new();
    for ((domain, loss), tokens) in domains.iter().zip(&losses).zip(&tokens) {
        if domain.is_empty() {
            continue;
        }
        match out.iter_mut().find(|(d, _, _)| d == domain) {
            Some(entry) => {
                entry.1 += loss;
                entry.2 += tokens;
            }
            None => out.push((domain.clone(), *loss, *tokens)),
        }
    }
    let total_tokens: f64 = tokens.iter().sum();
    if total_tokens <= 0.0 {
        return Err(InputError::new(file, "no row carries loss tokens")
            .column("loss_tokens")
            .into());
    }
    out.push(("all".to_string(), losses.iter().sum(), total_tokens));
    Ok(out)
}

fn frame(
    stats: &[ArmStats],
    gains: Option<&Vec<(String, f64)>>,
    args: &CompareArgs,
) -> Result<DataFrame> {
    let gain: Vec<Option<f64>> = stats
        .iter()
        .map(|s| {
            (Some(&s.arm) == args.candidate.as_ref())
                .then(|| {
                    gains.and_then(|g| g.iter().find(|(d, _)| *d == s.domain).map(|(_, v)| *v))
                })
                .flatten()
        })
        .collect();
    Ok(DataFrame::new(
        stats.len(),
        vec![
            Column::new(
                "arm".into(),
                stats.iter().map(|s| s.arm.clone()).collect::<Vec<_>>(),
            ),
            Column::new(
                "domain".into(),
                stats.iter().map(|s| s.domain.clone()).collect::<Vec<_>>(),
            ),
            Column::new(
                "runs".into(),
                stats.iter().map(|s| s.runs as u32).collect::<Vec<_>>(),
            ),
            Column::new(
                "mean_loss".into(),
                stats.iter().map(|s| s.mean).collect::<Vec<_>>(),
            ),
            Column::new(
                "std_loss".into(),
                stats.iter().map(|s| s.std).collect::<Vec<_>>(),
            ),
            Column::new(
                "min_loss".into(),
                stats.iter().map(|s| s.min).collect::<Vec<_>>(),
            ),
            Column::new(
                "max_loss".into(),
                stats.iter().map(|s| s.max).collect::<Vec<_>>(),
            ),
            Column::new("gain_over_control".into(), gain),
        ],
    )?)
}

fn write_text(out: &mut impl Write, stats: &[ArmStats]) -> Result<()> {
    let rows: Vec<Vec<String>> = stats
        .iter()
        .map(|s| {
            vec![
                s.arm.clone(),
                s.domain.clone(),
                s.runs.to_string(),
                format!("{:.4}", s.mean),
                s.std.map_or("-".into(), |v| format!("{v:.4}")),
            ]
        })
        .collect();
    let align = [
        Align::Left,
        Align::Left,
        Align::Right,
        Align::Right,
        Align::Right,
    ];
    for line in text_table(
        &["arm", "domain", "runs", "mean loss", "std"],
        &rows,
        &align,
    ) {
        writeln!(out, "{line}")?;
    }
    Ok(())
}
