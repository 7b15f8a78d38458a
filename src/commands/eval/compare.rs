//! `curate eval compare`: arms (reweighting rules, say) evaluated once per seed, side by side,
//! with a gate on the gain of one arm over another.

use std::io::Write;

use anyhow::Result;

use crate::ExitStatus;
use crate::cli::CompareArgs;
use crate::commands::Context;
use curate::error::usage;
use curate::eval::{self, Arm, ArmStats, arm_stats, gains};
use curate::table::{Input, Output};

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
            runs.push(eval::domain_losses(
                &input.read()?,
                input.label(),
                &args.domain_col,
            )?);
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
    let frame = eval::comparison_frame(&stats, gains.as_deref(), args.candidate.as_deref())?;
    output.write_frame(&frame, Some(&provenance))?;

    let mut err = context.printer.stderr();
    eval::write_comparison_text(&mut err, &stats)?;
    let Some(gains) = gains else {
        return Ok(ExitStatus::Success);
    };
    let (candidate, control) = (
        args.candidate.as_deref().unwrap_or_default(),
        args.control.as_deref().unwrap_or_default(),
    );
    for (domain, gain) in &gains {
        let side = if *gain >= 0.0 { "below" } else { "above" };
        writeln!(
            err,
            "{domain}: {candidate}'s mean loss is {:.4} {side} {control}'s (gain {gain:+.4})",
            gain.abs()
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
