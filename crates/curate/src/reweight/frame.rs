//! Reweighting a table: its groups, scores and id order read from columns, the rule applied,
//! and the weighted (or resampled) table and audit built for writing.

use std::collections::HashMap;
use std::str::FromStr;

use anyhow::Result;
use polars::prelude::*;

use super::{
    Adjustment, AuditRow, Binning, CapError, Direction, Groups, LevelError, MeanScores, Preserve,
    ScoreJoinError, TargetError, rank_by,
};
use crate::error::InputError;
use crate::table::{self, ColumnRole, Expected};

/// Applied to whichever of these domains the data has, when no direction is given.
pub(crate) const DEFAULT_DIRECTIONS: [(&str, Direction); 2] =
    [("math", Direction::Hard), ("code", Direction::Easy)];

/// `DOMAIN=hard` or `DOMAIN=easy`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainDirection {
    pub domain: String,
    pub direction: Direction,
}

impl FromStr for DomainDirection {
    type Err = String;

    fn from_str(pair: &str) -> Result<Self, String> {
        let (domain, end) = pair
            .split_once('=')
            .ok_or("expected DOMAIN=hard or DOMAIN=easy")?;
        let direction = match end.trim() {
            "hard" => Direction::Hard,
            "easy" => Direction::Easy,
            other => return Err(format!("'{other}' is not hard or easy")),
        };
        Ok(DomainDirection {
            domain: domain.trim().to_string(),
            direction,
        })
    }
}

/// `DOMAIN=p1,...,pK`: level proportions, easiest level first.
#[derive(Debug, Clone, PartialEq)]
pub struct DomainTarget {
    pub domain: String,
    pub shares: Vec<f64>,
}

impl FromStr for DomainTarget {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        let (domain, list) = spec.split_once('=').ok_or("expected DOMAIN=p1,...,pK")?;
        let shares = list
            .split(',')
            .map(|p| p.trim().parse::<f64>())
            .collect::<Result<Vec<f64>, _>>()
            .map_err(|_| "proportions must be numbers".to_string())?;
        Ok(DomainTarget {
            domain: domain.trim().to_string(),
            shares,
        })
    }
}

/// A direction or target names a domain no row has.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("names domain '{name}', which no row has (domains: {known})")]
pub struct UnknownDomain {
    pub name: String,
    /// The domains present, comma-separated.
    pub known: String,
}

/// How a rule's weights come about.
#[derive(Debug, Clone, PartialEq)]
pub enum Rule {
    /// Mirror each domain's level histogram toward its direction, or set it to a target.
    Flip {
        /// None: [`DEFAULT_DIRECTIONS`] for the domains present.
        directions: Option<Vec<DomainDirection>>,
        targets: Vec<DomainTarget>,
        /// Temper each domain's new histogram until its effective sample size is at least
        /// this fraction of its rows.
        min_ess: Option<f64>,
    },
    /// Groups weighted by exp(tau * z) of their mean score.
    Influence { scores: Vec<f64>, tau: f64 },
    /// The control for `Influence`: a seeded random z per group.
    Random { seed: u64, tau: f64 },
    /// Keep the top fraction of rows by score (ties by id order), per domain or overall.
    TopK {
        scores: Vec<f64>,
        fraction: f64,
        per_domain: bool,
        /// Each row's position in id order.
        tie_rank: Vec<usize>,
    },
}

/// Why a rule cannot weight these groups.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RuleError {
    #[error("direction {0}")]
    Direction(UnknownDomain),
    #[error("target {0}")]
    TargetDomain(UnknownDomain),
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error(transparent)]
    Cap(#[from] CapError),
}

/// The weights of every row, and what the flip rule did to each domain (empty otherwise).
#[derive(Debug, Clone, PartialEq)]
pub struct Weighed {
    pub weights: Vec<f64>,
    pub adjustments: Vec<Adjustment>,
}

/// Apply `rule`, then `cap` the weights (flip keeps each domain's size; the others keep
/// what `preserve` says).
pub fn weigh(
    groups: &Groups,
    rule: &Rule,
    preserve: Preserve,
    cap: Option<f64>,
) -> Result<Weighed, RuleError> {
    let mut adjustments = Vec::new();
    let weights = match rule {
        Rule::Flip {
            directions,
            targets,
            min_ess,
        } => {
            let directions =
                resolve_directions(groups, directions.as_deref()).map_err(RuleError::Direction)?;
            let mut by_domain = HashMap::new();
            for target in targets {
                let d = domain_position(groups, &target.domain).map_err(RuleError::TargetDomain)?;
                by_domain.insert(d, target.shares.clone());
            }
            let (weights, done) = super::flip(groups, &directions, &by_domain, *min_ess)?;
            adjustments = done;
            weights
        }
        Rule::Influence { scores, tau } => super::from_group_scores(groups, scores, *tau, preserve),
        Rule::Random { seed, tau } => {
            let scores = super::random_group_scores(groups, *seed);
            super::from_group_scores(groups, &scores, *tau, preserve)
        }
        Rule::TopK {
            scores,
            fraction,
            per_domain,
            tie_rank,
        } => super::top_fraction(
            scores,
            *fraction,
            per_domain.then_some(&groups.domain[..]),
            tie_rank,
        ),
    };
    let weights = match cap {
        Some(cap) => {
            let preserve = match rule {
                Rule::Flip { .. } => Preserve::Domain,
                _ => preserve,
            };
            super::cap(&weights, &groups.domain, preserve, cap)?
        }
        None => weights,
    };
    Ok(Weighed {
        weights,
        adjustments,
    })
}

fn domain_position(groups: &Groups, name: &str) -> Result<usize, UnknownDomain> {
    groups
        .domain_names
        .iter()
        .position(|d| d == name)
        .ok_or_else(|| UnknownDomain {
            name: name.to_string(),
            known: groups.domain_names.join(", "),
        })
}

/// Directions by domain index: the given ones, or the defaults for the domains present.
fn resolve_directions(
    groups: &Groups,
    given: Option<&[DomainDirection]>,
) -> Result<HashMap<usize, Direction>, UnknownDomain> {
    let mut directions = HashMap::new();
    match given {
        None => {
            for (name, direction) in DEFAULT_DIRECTIONS {
                if let Ok(d) = domain_position(groups, name) {
                    directions.insert(d, direction);
                }
            }
        }
        Some(given) => {
            for pair in given {
                directions.insert(domain_position(groups, &pair.domain)?, pair.direction);
            }
        }
    }
    Ok(directions)
}

/// Where a table's domain and difficulty are, and whether they may be absent.
pub struct GroupColumns<'a> {
    pub domain: ColumnRole<'a>,
    pub difficulty: ColumnRole<'a>,
    /// Without the columns all rows form one group (top-k needs neither).
    pub optional: bool,
    /// The domain column is needed even when optional (top-k per domain).
    pub need_domain: bool,
    pub binning: Binning,
    /// What to do about a fractional difficulty (the caller's words for asking for bins).
    pub binning_hint: &'a str,
}

/// Domain and difficulty level of every row.
pub fn read_groups(frame: &DataFrame, file: &str, columns: &GroupColumns) -> Result<Groups> {
    let absent = |role: ColumnRole| frame.column(role.name).is_err();
    let (names, domain) = if columns.optional && !columns.need_domain && absent(columns.domain) {
        (vec!["all".to_string()], vec![0; frame.height()])
    } else {
        domains(frame, file, columns.domain)?
    };
    let difficulty = if columns.optional && absent(columns.difficulty) {
        vec![0.0; frame.height()]
    } else {
        table::number_column(frame, file, columns.difficulty, "difficulty")?
    };
    super::assign(names, domain, &difficulty, columns.binning).map_err(|err| {
        let row = match err {
            LevelError::NotFinite { row, .. } | LevelError::NotWhole { row, .. } => row,
        };
        let message = match err {
            LevelError::NotWhole { .. } => format!("{err}; {}", columns.binning_hint),
            LevelError::NotFinite { .. } => err.to_string(),
        };
        InputError::new(file, message)
            .column(columns.difficulty.name)
            .row(row + 1)
            .into()
    })
}

/// Domain index per row, domains numbered in order of first appearance.
fn domains(frame: &DataFrame, file: &str, role: ColumnRole) -> Result<(Vec<String>, Vec<usize>)> {
    let column = table::require_type(frame, file, role, Expected::Id)?;
    let text = column.cast(&DataType::String)?;
    let mut names: Vec<String> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut domain = Vec::with_capacity(frame.height());
    for (row, value) in text.str()?.iter().enumerate() {
        let value = value.ok_or_else(|| {
            InputError::new(file, "domain is null")
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

/// Each row's mean score over queries from a score table (`train_id`, `score`[, `query_id`]),
/// joined on `ids`. `scores_role` names what gave the score table, for hints.
pub fn joined_scores(
    ids: (&str, &Column),
    file: &str,
    scores: &DataFrame,
    scores_file: &str,
    scores_hint: &str,
) -> Result<Vec<f64>> {
    table::require_rows(scores, scores_file)?;
    let train_role = ColumnRole::new("train_id", scores_hint);
    table::require_type(scores, scores_file, train_role, Expected::Id)?;
    let values = table::number_column(
        scores,
        scores_file,
        ColumnRole::new("score", scores_hint),
        "score",
    )?;
    let train_ids = scores.column("train_id")?.cast(&DataType::String)?;
    let train_ids: Vec<Option<&str>> = train_ids.str()?.iter().collect();
    let query_ids = match scores.column("query_id") {
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
        InputError::new(scores_file, e.to_string())
            .column("train_id")
            .row(row + 1)
    })?;
    let (id_name, ids) = ids;
    let ids = ids.cast(&DataType::String)?;
    let ids: Vec<Option<&str>> = ids.str()?.iter().collect();
    Ok(means.lookup(&ids).map_err(|e| match e {
        ScoreJoinError::Missing { row, id } => {
            InputError::new(file, format!("id {id} has no score in {scores_file}"))
                .column(id_name)
                .row(row + 1)
        }
        ScoreJoinError::NullId { row } => InputError::new(file, e.to_string()).row(row + 1),
    })?)
}

/// Each row's position when rows are sorted by id (integers numerically, text bytewise), so
/// ties are broken by id.
pub fn id_order(ids: &Column) -> PolarsResult<Vec<usize>> {
    Ok(if ids.dtype().is_integer() {
        let ids = ids.cast(&DataType::Int64)?;
        rank_by(&ids.i64()?.iter().collect::<Vec<_>>())
    } else {
        let ids = ids.cast(&DataType::String)?;
        rank_by(&ids.str()?.iter().collect::<Vec<_>>())
    })
}

/// The table with its weights: `weight_name` added, or each row repeated `copies` times.
pub fn weighted_frame(
    frame: &DataFrame,
    weights: &[f64],
    copies: Option<&[u32]>,
    weight_name: &str,
) -> PolarsResult<DataFrame> {
    match copies {
        Some(copies) => {
            let rows: Vec<IdxSize> = copies
                .iter()
                .enumerate()
                .flat_map(|(i, &c)| std::iter::repeat_n(i as IdxSize, c as usize))
                .collect();
            frame.take(&IdxCa::from_vec("rows".into(), rows))
        }
        None => {
            let mut with_weight = frame.clone();
            with_weight.with_column(Column::new(weight_name.into(), weights))?;
            Ok(with_weight)
        }
    }
}

/// The before/after audit (domain x level) as a table.
pub fn audit_frame(rows: &[AuditRow]) -> PolarsResult<DataFrame> {
    // Whole-number difficulties (ratings, step counts) stay integers; an empty level is null.
    let whole = rows
        .iter()
        .flat_map(|r| [r.difficulty_min, r.difficulty_max])
        .filter(|v| v.is_finite())
        .all(|v| v.fract() == 0.0 && v.abs() < 9e15);
    let finite = |v: f64| Some(v).filter(|v| v.is_finite());
    let mut frame = df!(
        "domain" => rows.iter().map(|r| r.domain.clone()).collect::<Vec<_>>(),
        "level" => rows.iter().map(|r| r.level as u32).collect::<Vec<_>>(),
        "difficulty_min" => rows.iter().map(|r| finite(r.difficulty_min)).collect::<Vec<_>>(),
        "difficulty_max" => rows.iter().map(|r| finite(r.difficulty_max)).collect::<Vec<_>>(),
        "rows" => rows.iter().map(|r| r.rows as u64).collect::<Vec<_>>(),
        "share_before" => rows.iter().map(|r| r.share_before).collect::<Vec<_>>(),
        "share_after" => rows.iter().map(|r| r.share_after).collect::<Vec<_>>(),
        "mean_weight" => rows.iter().map(|r| r.mean_weight).collect::<Vec<_>>(),
        "rows_after" => rows.iter().map(|r| r.rows_after).collect::<Vec<_>>(),
        "domain_ess" => rows.iter().map(|r| r.domain_ess).collect::<Vec<_>>(),
    )?;
    if whole {
        for name in ["difficulty_min", "difficulty_max"] {
            let ints = frame.column(name)?.cast(&DataType::Int64)?;
            frame.with_column(ints)?;
        }
    }
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn columns(optional: bool) -> GroupColumns<'static> {
        GroupColumns {
            domain: ColumnRole::new("domain", "the domain"),
            difficulty: ColumnRole::new("difficulty", "the difficulty"),
            optional,
            need_domain: false,
            binning: Binning::Ordinal,
            binning_hint: "bin it",
        }
    }

    fn table() -> DataFrame {
        df!(
            "id" => [3i64, 1, 2, 4],
            "domain" => ["math", "math", "code", "code"],
            "difficulty" => [1.0, 2.0, 1.0, 2.0],
        )
        .unwrap()
    }

    #[test]
    fn directions_and_targets_parse() {
        let pair: DomainDirection = " math = hard".parse().unwrap();
        assert_eq!(
            (pair.domain.as_str(), pair.direction),
            ("math", Direction::Hard)
        );
        assert!("math".parse::<DomainDirection>().is_err());
        assert!(
            "math=up"
                .parse::<DomainDirection>()
                .unwrap_err()
                .contains("hard or easy")
        );
        let target: DomainTarget = "code=1, 3".parse().unwrap();
        assert_eq!(target.shares, [1.0, 3.0]);
        assert!("code=a,b".parse::<DomainTarget>().is_err());
    }

    #[test]
    fn groups_come_from_the_columns_or_form_one_group() {
        let groups = read_groups(&table(), "t", &columns(false)).unwrap();
        assert_eq!(groups.domain_names, ["math", "code"]);
        assert_eq!(groups.level, [0, 1, 0, 1]);
        let bare = df!("id" => [1i64, 2]).unwrap();
        let one = read_groups(&bare, "t", &columns(true)).unwrap();
        assert_eq!(one.domain_names, ["all"]);
        assert!(read_groups(&bare, "t", &columns(false)).is_err());
        let fractional = df!("domain" => ["a"], "difficulty" => [1.5]).unwrap();
        let err = read_groups(&fractional, "t", &columns(false)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "t: column 'difficulty', row 1: difficulty 1.5 is not a whole number; bin it"
        );
    }

    #[test]
    fn rules_weigh_groups_and_name_unknown_domains() {
        let groups = read_groups(&table(), "t", &columns(false)).unwrap();
        let flip = Rule::Flip {
            directions: None,
            targets: vec!["code=0,1".parse().unwrap()],
            min_ess: None,
        };
        let weighed = weigh(&groups, &flip, Preserve::Domain, None).unwrap();
        assert_eq!(weighed.adjustments.len(), 2);
        assert_eq!(
            weighed.adjustments[1],
            Adjustment::Targeted { strength: 1.0 }
        );
        assert_eq!(&weighed.weights[2..], [0.0, 2.0]);
        let unknown = Rule::Flip {
            directions: Some(vec!["physics=hard".parse().unwrap()]),
            targets: Vec::new(),
            min_ess: None,
        };
        let err = weigh(&groups, &unknown, Preserve::Domain, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "direction names domain 'physics', which no row has (domains: math, code)"
        );
        let top = Rule::TopK {
            scores: vec![0.5, 0.5, 0.1, 0.9],
            fraction: 0.5,
            per_domain: false,
            tie_rank: id_order(table().column("id").unwrap()).unwrap(),
        };
        // The tie between rows 0 and 1 goes to the smaller id (row 1).
        let weighed = weigh(&groups, &top, Preserve::Overall, None).unwrap();
        assert_eq!(weighed.weights, [0.0, 1.0, 0.0, 1.0]);
        assert!(matches!(
            weigh(&groups, &flip, Preserve::Domain, Some(0.5)),
            Err(RuleError::Cap(_))
        ));
    }

    #[test]
    fn scores_join_on_ids_and_outputs_carry_weights() {
        let frame = table();
        let scores = df!(
            "query_id" => ["q1", "q2", "q1", "q1", "q1"],
            "train_id" => ["1", "1", "2", "3", "4"],
            "score" => [1.0, 3.0, 0.5, -1.0, 0.0],
        )
        .unwrap();
        let ids = frame.column("id").unwrap();
        let joined = joined_scores(("id", ids), "t", &scores, "s", "the scores").unwrap();
        assert_eq!(joined, [-1.0, 2.0, 0.5, 0.0]);
        let partial = scores.slice(0, 3);
        let err = joined_scores(("id", ids), "t", &partial, "s", "the scores").unwrap_err();
        assert_eq!(
            err.to_string(),
            "t: column 'id', row 1: id 3 has no score in s"
        );

        let weighted = weighted_frame(&frame, &[1.0, 0.0, 2.0, 1.0], None, "w").unwrap();
        assert_eq!(
            weighted.column("w").unwrap().f64().unwrap().get(2),
            Some(2.0)
        );
        let copies = weighted_frame(&frame, &[], Some(&[0, 2, 1, 0]), "w").unwrap();
        let ids: Vec<i64> = copies
            .column("id")
            .unwrap()
            .i64()
            .unwrap()
            .into_no_null_iter()
            .collect();
        assert_eq!(ids, [1, 1, 2]);
    }
}
