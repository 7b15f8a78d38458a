//! `curate reweight`: difficulty flip, influence-driven weights, top-k selection.

use std::collections::HashMap;
use std::io::Write;

use anyhow::Result;
use polars::prelude::*;

use super::Context;
use crate::ExitStatus;
use crate::cli::{PreserveArg, ReweightArgs, RuleArg};
use crate::printer::{Align, text_table};
use curate::error::{InputError, usage};
use curate::reweight::{
    self, Adjustment, AuditRow, Binning, Direction, Groups, MeanScores, Preserve, ScoreJoinError,
    rank_by,
};
use curate::table::{self, ColumnRole, Expected, Input, Output};

/// Applied to whichever of these domains the data has, when --direction is not given.
const DEFAULT_DIRECTIONS: [(&str, Direction); 2] =
    [("math", Direction::Hard), ("code", Direction::Easy)];

pub fn run(args: ReweightArgs, context: &Context) -> Result<ExitStatus> {
    check_flags(&args)?;
    let input = Input::open(&args.input, args.input_format.map(Into::into))?;
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

    let groups = groups(&frame, label, &args)?;
    let preserve = match args.preserve {
        PreserveArg::Domain => Preserve::Domain,
        PreserveArg::Overall => Preserve::Overall,
    };
    let mut notes = Vec::new();
    let weights = match args.rule {
        RuleArg::Flip => {
            let directions = directions(&args, &groups, label)?;
            let targets = targets(&args, &groups, label)?;
            let (weights, adjustments) =
                reweight::flip(&groups, &directions, &targets).map_err(|e| usage(e.to_string()))?;
            for (name, adjustment) in groups.domain_names.iter().zip(adjustments) {
                notes.push(match adjustment {
                    Adjustment::Untouched => format!("{name}: unchanged (no direction or target)"),
                    Adjustment::Mirrored(d) => format!("{name}: level histogram mirrored toward {d}"),
                    Adjustment::AlreadyLeaning(d) => {
                        format!("{name}: unchanged (already leaning {d}; mirroring would move mass away)")
                    }
                    Adjustment::Targeted => format!("{name}: set to the --target proportions"),
                });
            }
            weights
        }
        RuleArg::Influence => {
            let scores = scores(&frame, &input, scores_input.as_ref(), &args)?;
            notes.push(format!(
                "groups weighted by exp({} * z) of mean score; totals kept per {}",
                args.tau,
                if preserve == Preserve::Domain {
                    "domain"
                } else {
                    "table"
                }
            ));
            reweight::from_group_scores(&groups, &scores, args.tau, preserve)
        }
        RuleArg::Random => {
            notes.push(format!(
                "groups weighted by exp({} * z) of a random z per group (seed {}); totals kept per {}",
                args.tau,
                context.seed,
                if preserve == Preserve::Domain {
                    "domain"
                } else {
                    "table"
                }
            ));
            let scores = reweight::random_group_scores(&groups, context.seed);
            reweight::from_group_scores(&groups, &scores, args.tau, preserve)
        }
        RuleArg::Topk => {
            let scores = scores(&frame, &input, scores_input.as_ref(), &args)?;
            let fraction = args.fraction.expect("checked in check_flags");
            notes.push(format!(
                "kept the top {:.1}% by score{}",
                fraction * 100.0,
                if args.per_domain {
                    " within each domain"
                } else {
                    ""
                }
            ));
            let tie_rank = id_order(&frame, label, &args)?;
            reweight::top_fraction(
                &scores,
                fraction,
                args.per_domain.then_some(&groups.domain[..]),
                &tie_rank,
            )
        }
    };
    let weights = match args.cap {
        Some(cap) => {
            let preserve = if args.rule == RuleArg::Flip {
                Preserve::Domain
            } else {
                preserve
            };
            reweight::cap(&weights, &groups.domain, preserve, cap)
                .map_err(|e| usage(e.to_string()))?
        }
        None => weights,
    };
    let copies = args
        .materialize
        .then(|| reweight::systematic(&weights, &groups.domain, context.seed));

    let out_frame = match &copies {
        Some(copies) => {
            let rows: Vec<IdxSize> = copies
                .iter()
                .enumerate()
                .flat_map(|(i, &c)| std::iter::repeat_n(i as IdxSize, c as usize))
                .collect();
            frame.take(&IdxCa::from_vec("rows".into(), rows))?
        }
        None => {
            let mut with_weight = frame.clone();
            with_weight.with_column(Column::new(args.weight_name.as_str().into(), &weights))?;
            with_weight
        }
    };

    let mut provenance = context.provenance();
    provenance.add_input(input.digest()?);
    if let Some(scores_input) = &scores_input {
        provenance.add_input(scores_input.digest()?);
    }
    let audit = reweight::audit(&groups, &weights, copies.as_deref());
    output.write_frame(&out_frame, Some(&provenance))?;
    if let Some(report) = report {
        report.write_frame(&audit_frame(&audit)?, Some(&provenance))?;
    }

    let mut stderr = context.printer.stderr();
    for note in &notes {
        writeln!(stderr, "{note}")?;
    }
    write_audit(&mut stderr, &audit)?;
    if args.out != "-" {
        writeln!(stderr, "wrote {} rows to {}", out_frame.height(), args.out)?;
    }
    Ok(ExitStatus::Success)
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
    if args.rule != RuleArg::Flip && (args.direction.is_some() || !args.target.is_empty()) {
        return Err(usage("--direction and --target apply only to --rule flip"));
    }
    if args.report.as_deref() == Some(args.out.as_str()) {
        return Err(usage("--report and --out name the same file"));
    }
    Ok(())
}

/// Domain and difficulty level of every row. Top-k needs neither column: without them all
/// rows form one group (and the audit one line).
fn groups(frame: &DataFrame, label: &str, args: &ReweightArgs) -> Result<Groups> {
    let optional = args.rule == RuleArg::Topk;
    let domain_role = ColumnRole::new(&args.domain_col, "--domain-col");
    let (names, domain) = if optional && !args.per_domain && frame.column(&args.domain_col).is_err()
    {
        (vec!["all".to_string()], vec![0; frame.height()])
    } else {
        domains(frame, label, domain_role)?
    };
    let difficulty_role = ColumnRole::new(&args.difficulty_col, "--difficulty-col");
    let difficulty = if optional && frame.column(&args.difficulty_col).is_err() {
        vec![0.0; frame.height()]
    } else {
        table::number_column(frame, label, difficulty_role, "difficulty")?
    };
    let binning = args
        .bins
        .map_or(Binning::Ordinal, |k| Binning::Quantiles(k as usize));
    reweight::assign(names, domain, &difficulty, binning).map_err(|err| {
        let row = match err {
            reweight::LevelError::NotFinite { row, .. }
            | reweight::LevelError::NotWhole { row, .. } => row,
        };
        InputError::new(label, err.to_string())
            .column(&args.difficulty_col)
            .row(row + 1)
            .into()
    })
}

/// Domain index per row, domains numbered in order of first appearance.
fn domains(frame: &DataFrame, label: &str, role: ColumnRole) -> Result<(Vec<String>, Vec<usize>)> {
    let column = table::require_type(frame, label, role, Expected::Id)?;
    let text = column.cast(&DataType::String)?;
    let mut names: Vec<String> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut domain = Vec::with_capacity(frame.height());
    for (row, value) in text.str()?.iter().enumerate() {
        let value = value.ok_or_else(|| {
            InputError::new(label, "domain is null")
                .column(role.name)
                .row(row + 1)
        })?;
        let next = index.len();
        let d = *index.entry(value.to_string()).or_insert_with(|| {
            names.push(value.to_string());
            next
        });
        domain.push(d);
    }
    Ok((names, domain))
}

fn directions(
    args: &ReweightArgs,
    groups: &Groups,
    label: &str,
) -> Result<HashMap<usize, Direction>> {
    let position = |name: &str| groups.domain_names.iter().position(|d| d == name);
    let mut directions = HashMap::new();
    let Some(pairs) = &args.direction else {
        for (name, direction) in DEFAULT_DIRECTIONS {
            if let Some(d) = position(name) {
                directions.insert(d, direction);
            }
        }
        return Ok(directions);
    };
    for pair in pairs {
        let (name, end) = pair.split_once('=').ok_or_else(|| {
            usage(format!(
                "--direction {pair:?}: expected DOMAIN=hard or DOMAIN=easy"
            ))
        })?;
        let direction = match end.trim() {
            "hard" => Direction::Hard,
            "easy" => Direction::Easy,
            other => {
                return Err(usage(format!(
                    "--direction {name}={other}: expected hard or easy"
                )));
            }
        };
        let d = position(name.trim())
            .ok_or_else(|| absent_domain(label, args, groups, "--direction", name))?;
        directions.insert(d, direction);
    }
    Ok(directions)
}

fn targets(args: &ReweightArgs, groups: &Groups, label: &str) -> Result<HashMap<usize, Vec<f64>>> {
    let mut targets = HashMap::new();
    for spec in &args.target {
        let (name, list) = spec
            .split_once('=')
            .ok_or_else(|| usage(format!("--target {spec:?}: expected DOMAIN=p1,...,pK")))?;
        let shares = list
            .split(',')
            .map(|p| p.trim().parse::<f64>())
            .collect::<Result<Vec<f64>, _>>()
            .map_err(|_| usage(format!("--target {spec:?}: proportions must be numbers")))?;
        let d = groups
            .domain_names
            .iter()
            .position(|n| n == name.trim())
            .ok_or_else(|| absent_domain(label, args, groups, "--target", name))?;
        targets.insert(d, shares);
    }
    Ok(targets)
}

fn absent_domain(
    label: &str,
    args: &ReweightArgs,
    groups: &Groups,
    flag: &str,
    name: &str,
) -> anyhow::Error {
    InputError::new(
        label,
        format!(
            "{flag} names domain '{}', which no row has (domains: {})",
            name.trim(),
            groups.domain_names.join(", ")
        ),
    )
    .column(&args.domain_col)
    .into()
}

/// Each row's score: from the `--scores` file (mean over queries, joined on ids) or from the
/// input's score column.
fn scores(
    frame: &DataFrame,
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
    let scores_label = scores_input.label();
    let table = scores_input.read()?;
    table::require_rows(&table, scores_label)?;
    let train_role = ColumnRole::new("train_id", "--scores");
    table::require_type(&table, scores_label, train_role, Expected::Id)?;
    let values = table::number_column(
        &table,
        scores_label,
        ColumnRole::new("score", "--scores"),
        "score",
    )?;
    let train_ids = table.column("train_id")?.cast(&DataType::String)?;
    let train_ids: Vec<Option<&str>> = train_ids.str()?.iter().collect();
    let query_ids = match table.column("query_id") {
        Ok(query) => Some(query.cast(&DataType::String)?),
        Err(_) => None,
    };
    let query_ids: Option<Vec<Option<&str>>> = match &query_ids {
        Some(q) => Some(q.str()?.iter().collect()),
        None => None,
    };
    let means = MeanScores::from_rows(&train_ids, query_ids.as_deref(), &values).map_err(|e| {
        let row = match e {
            ScoreJoinError::NullId { row } | ScoreJoinError::Missing { row, .. } => row,
        };
        InputError::new(scores_label, e.to_string())
            .column("train_id")
            .row(row + 1)
    })?;

    let (id_name, ids) = ids(frame, label, args)?;
    let ids = ids.cast(&DataType::String)?;
    let ids: Vec<Option<&str>> = ids.str()?.iter().collect();
    Ok(means.lookup(&ids).map_err(|e| match e {
        ScoreJoinError::Missing { row, id } => {
            InputError::new(label, format!("id {id} has no score in {scores_label}"))
                .column(id_name)
                .row(row + 1)
        }
        ScoreJoinError::NullId { row } => InputError::new(label, e.to_string()).row(row + 1),
    })?)
}

/// The id column's name and values: `--id-col`, else `id`, else the row index.
fn ids<'a>(frame: &DataFrame, label: &str, args: &'a ReweightArgs) -> Result<(&'a str, Column)> {
    let name = args.id_col.as_deref().unwrap_or("id");
    let role = ColumnRole::new(name, "--id-col");
    Ok((
        name,
        table::id_column(frame, label, role, args.id_col.is_some())?,
    ))
}

/// Each row's position when rows are sorted by id (integers numerically, text bytewise), so
/// ties are broken by id as every command does.
fn id_order(frame: &DataFrame, label: &str, args: &ReweightArgs) -> Result<Vec<usize>> {
    let (_, ids) = ids(frame, label, args)?;
    Ok(if ids.dtype().is_integer() {
        let ids = ids.cast(&DataType::Int64)?;
        rank_by(&ids.i64()?.iter().collect::<Vec<_>>())
    } else {
        let ids = ids.cast(&DataType::String)?;
        rank_by(&ids.str()?.iter().collect::<Vec<_>>())
    })
}

fn audit_frame(rows: &[AuditRow]) -> Result<DataFrame> {
    Ok(df!(
        "domain" => rows.iter().map(|r| r.domain.clone()).collect::<Vec<_>>(),
        "level" => rows.iter().map(|r| r.level as u32).collect::<Vec<_>>(),
        "difficulty_min" => rows.iter().map(|r| r.difficulty_min).collect::<Vec<_>>(),
        "difficulty_max" => rows.iter().map(|r| r.difficulty_max).collect::<Vec<_>>(),
        "rows" => rows.iter().map(|r| r.rows as u64).collect::<Vec<_>>(),
        "share_before" => rows.iter().map(|r| r.share_before).collect::<Vec<_>>(),
        "share_after" => rows.iter().map(|r| r.share_after).collect::<Vec<_>>(),
        "mean_weight" => rows.iter().map(|r| r.mean_weight).collect::<Vec<_>>(),
        "rows_after" => rows.iter().map(|r| r.rows_after).collect::<Vec<_>>(),
    )?)
}

fn write_audit(out: &mut impl Write, rows: &[AuditRow]) -> std::io::Result<()> {
    let materialized = rows.iter().any(|r| r.rows_after.is_some());
    let mut header = vec![
        "domain",
        "level",
        "difficulty",
        "rows",
        "before",
        "after",
        "weight",
    ];
    if materialized {
        header.push("rows after");
    }
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let range = if r.difficulty_min == r.difficulty_max || r.rows == 0 {
                format_number(r.difficulty_min)
            } else {
                format!(
                    "{}–{}",
                    format_number(r.difficulty_min),
                    format_number(r.difficulty_max)
                )
            };
            let mut cells = vec![
                r.domain.clone(),
                r.level.to_string(),
                range,
                r.rows.to_string(),
                format!("{:.1}%", r.share_before * 100.0),
                format!("{:.1}%", r.share_after * 100.0),
                format!("{:.3}", r.mean_weight),
            ];
            if let Some(after) = r.rows_after {
                cells.push(after.to_string());
            }
            cells
        })
        .collect();
    let mut align = vec![Align::Right; header.len()];
    align[0] = Align::Left;
    for line in text_table(&header, &body, &align) {
        writeln!(out, "{line}")?;
    }
    Ok(())
}

fn format_number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value:.3}")
    }
}
