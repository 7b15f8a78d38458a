//! Validating score files by retraining: what the scores predict (per query, or an aggregate),
//! the set of retraining runs (random subsets, all rows, removal controls), and the table and
//! report built from the losses those runs measured.

use std::collections::HashMap;
use std::str::FromStr;

use anyhow::Result;
use polars::prelude::*;
use serde_json::{Value, json};

use super::examples::Examples;
use super::validate::{
    lds, mean_and_standard_error, most_helpful, random_sets, random_subsets, removal_count,
};
use crate::error::InputError;
use crate::table::{self, ColumnRole, Expected};

/// Fractions of the training rows to remove before retraining (`none`: no removal controls).
#[derive(Debug, Clone, PartialEq)]
pub struct RemoveFractions(pub Vec<f64>);

impl FromStr for RemoveFractions {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text.trim() == "none" {
            return Ok(RemoveFractions(Vec::new()));
        }
        text.split(',')
            .map(|part| match part.trim().parse::<f64>() {
                Ok(f) if f > 0.0 && f < 1.0 => Ok(f),
                _ => Err(format!(
                    "{:?}: expected fractions in (0, 1), or none",
                    part.trim()
                )),
            })
            .collect::<Result<Vec<f64>, String>>()
            .map(RemoveFractions)
    }
}

/// What a score file predicts: per query, or one aggregated objective.
#[derive(Debug, Clone, PartialEq)]
pub struct Objective {
    /// Output names: query ids, or `mean` / `sum`.
    pub names: Vec<String>,
    pub kind: &'static str,
    /// `[output][train row]`.
    pub scores: Vec<Vec<f64>>,
}

impl Objective {
    /// The measured outputs from the per-query losses.
    pub fn outputs(&self, losses: &[f64]) -> Vec<f64> {
        match self.kind {
            "mean" => vec![losses.iter().sum::<f64>() / losses.len().max(1) as f64],
            "sum" => vec![losses.iter().sum()],
            _ => losses.to_vec(),
        }
    }

    /// A score table (`query_id`, `train_id`, `score`) as `[query][train]`: every (query,
    /// training row) pair present once.
    pub fn read(frame: &DataFrame, file: &str, train: &Examples, query: &Examples) -> Result<Self> {
        table::require_rows(frame, file)?;
        for (name, expected) in [
            ("query_id", Expected::Id),
            ("train_id", Expected::Id),
            ("score", Expected::Number),
        ] {
            table::require_type(frame, file, ColumnRole::new(name, name), expected)?;
        }
        let train_ids = id_texts(&train.ids)?;
        let train_at: HashMap<&str, usize> = train_ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.as_str(), i))
            .collect();
        let score_queries = id_texts(frame.column("query_id")?)?;
        let score_trains = id_texts(frame.column("train_id")?)?;
        let values = table::number_column(frame, file, ColumnRole::new("score", "score"), "score")?;
        let (names, kind): (Vec<String>, &'static str) =
            match score_queries.first().map(String::as_str) {
                Some("mean") => (vec!["mean".into()], "mean"),
                Some("sum") => (vec!["sum".into()], "sum"),
                _ => (id_texts(&query.ids)?, "per_query"),
            };
        let query_at: HashMap<&str, usize> = names
            .iter()
            .enumerate()
            .map(|(i, id)| (id.as_str(), i))
            .collect();
        let mut scores = vec![vec![f64::NAN; train_ids.len()]; names.len()];
        for (row, ((q, t), v)) in score_queries
            .iter()
            .zip(&score_trains)
            .zip(values)
            .enumerate()
        {
            let bad = |message: String| InputError::new(file, message).row(row + 1);
            let &qi = query_at.get(q.as_str()).ok_or_else(|| {
                bad(format!("query '{q}' is not a row of {}", query.file)).column("query_id")
            })?;
            let &ti = train_at.get(t.as_str()).ok_or_else(|| {
                bad(format!("training row '{t}' is not in {}", train.file)).column("train_id")
            })?;
            if !scores[qi][ti].is_nan() {
                return Err(bad(format!("a second score for ({q}, {t})")).into());
            }
            scores[qi][ti] = v;
        }
        for (qi, row) in scores.iter().enumerate() {
            if let Some(ti) = row.iter().position(|v| v.is_nan()) {
                return Err(InputError::new(
                    file,
                    format!(
                        "no score for query '{}' and training row '{}' (scores must cover every pair)",
                        names[qi], train_ids[ti]
                    ),
                )
                .into());
            }
        }
        Ok(Objective {
            names,
            kind,
            scores,
        })
    }
}

fn id_texts(column: &Column) -> PolarsResult<Vec<String>> {
    let text = column.cast(&DataType::String)?;
    Ok(text
        .str()?
        .iter()
        .map(|v| v.unwrap_or("").to_string())
        .collect())
}

/// Every retraining, each once: the subsets, all rows, the random removals of each fraction
/// (shared by the score files), and each score file's removal of its most helpful rows.
#[derive(Debug, Clone, PartialEq)]
pub struct RetrainPlan {
    /// The training rows of each run.
    pub runs: Vec<Vec<usize>>,
    /// Runs `0..subsets` are the random subsets.
    pub subsets: usize,
    /// The run on all rows.
    pub full_run: usize,
    pub fractions: Vec<f64>,
    /// Per fraction, the rows removed.
    pub removed_rows: Vec<usize>,
    /// Per fraction, the random-removal runs.
    pub random_runs: Vec<Vec<usize>>,
    /// Per score file, per fraction, the run without its most helpful rows.
    pub top_runs: Vec<Vec<usize>>,
}

impl RetrainPlan {
    /// `subsets` random subsets of `alpha` of `n` rows, and `controls` random removals per
    /// fraction, all seeded by `seed`.
    pub fn new(
        n: usize,
        alpha: f64,
        subsets: usize,
        controls: usize,
        fractions: &[f64],
        objectives: &[&Objective],
        seed: u64,
    ) -> Self {
        let mut runs = random_subsets(n, alpha, subsets, seed);
        let subsets = runs.len();
        let full_run = runs.len();
        runs.push((0..n).collect());
        let control_seeds: Vec<u64> = (0..controls as u64)
            .map(|i| seed.wrapping_add(1000 + i))
            .collect();
        let keep_all_but =
            |removed: &[usize]| -> Vec<usize> { (0..n).filter(|i| !removed.contains(i)).collect() };
        let mut random_runs = Vec::new();
        let mut top_runs = vec![Vec::new(); objectives.len()];
        let mut removed_rows = Vec::new();
        for &fraction in fractions {
            let count = removal_count(n, fraction);
            removed_rows.push(count);
            let mut this_random = Vec::new();
            for rows in random_sets(n, count, &control_seeds) {
                this_random.push(runs.len());
                runs.push(keep_all_but(&rows));
            }
            random_runs.push(this_random);
            for (file, objective) in objectives.iter().enumerate() {
                top_runs[file].push(runs.len());
                runs.push(keep_all_but(&most_helpful(&objective.scores, count)));
            }
        }
        RetrainPlan {
            runs,
            subsets,
            full_run,
            fractions: fractions.to_vec(),
            removed_rows,
            random_runs,
            top_runs,
        }
    }

    /// The subsets' row count (0 without subsets).
    pub fn subset_rows(&self) -> usize {
        self.runs[..self.subsets].first().map_or(0, Vec::len)
    }
}

/// How well one score file predicted the retrainings.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreCheck {
    /// Per output: the rank correlation over the subsets (none where undefined).
    pub per_query: Vec<Option<f64>>,
    pub mean_lds: f64,
    pub standard_error: f64,
    /// Per output: mean loss over the subsets, loss retrained on all rows, base model loss.
    pub subset_loss: Vec<f64>,
    pub full_loss: Vec<f64>,
    pub base_loss: Vec<f64>,
    /// Per fraction: the removal controls.
    pub controls: Vec<Value>,
}

impl ScoreCheck {
    /// Outputs with a defined correlation.
    pub fn defined(&self) -> usize {
        self.per_query.iter().flatten().count()
    }
}

/// The mean of `values` (0 for none).
pub fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

/// Check score file `file` (its index in the plan) against the per-query `losses` of every
/// run and of the base model.
pub fn check_scores(
    plan: &RetrainPlan,
    file: usize,
    objective: &Objective,
    losses: &[Vec<f64>],
    base_losses: &[f64],
) -> ScoreCheck {
    let outputs: Vec<Vec<f64>> = losses.iter().map(|l| objective.outputs(l)).collect();
    let subsets = &outputs[..plan.subsets];
    let per_query = lds(&objective.scores, &plan.runs[..plan.subsets], subsets);
    let valid: Vec<f64> = per_query.iter().flatten().copied().collect();
    let (mean_lds, standard_error) = mean_and_standard_error(&valid);
    let controls = plan
        .fractions
        .iter()
        .enumerate()
        .map(|(i, fraction)| {
            let random: Vec<f64> = plan.random_runs[i]
                .iter()
                .map(|&run| mean(&outputs[run]))
                .collect();
            let (random_mean, random_se) = mean_and_standard_error(&random);
            json!({
                "fraction": fraction,
                "removed_rows": plan.removed_rows[i],
                "top_removed_loss": mean(&outputs[plan.top_runs[file][i]]),
                "random_removed_loss": finite(random_mean),
                "random_removed_loss_standard_error": finite(random_se),
                "random_removed_losses": random,
            })
        })
        .collect();
    ScoreCheck {
        subset_loss: (0..objective.names.len())
            .map(|q| mean(&subsets.iter().map(|o| o[q]).collect::<Vec<_>>()))
            .collect(),
        full_loss: outputs[plan.full_run].clone(),
        base_loss: objective.outputs(base_losses),
        per_query,
        mean_lds,
        standard_error,
        controls,
    }
}

/// The per-query table over every score file.
pub fn checks_frame(files: &[(&str, &Objective, &ScoreCheck)]) -> PolarsResult<DataFrame> {
    let mut scores = Vec::new();
    let mut query = Vec::new();
    let (mut lds, mut subset, mut full, mut base) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (file, objective, check) in files {
        for (q, name) in objective.names.iter().enumerate() {
            scores.push(file.to_string());
            query.push(name.clone());
            lds.push(check.per_query[q]);
            subset.push(check.subset_loss[q]);
            full.push(check.full_loss[q]);
            base.push(check.base_loss[q]);
        }
    }
    DataFrame::new(
        scores.len(),
        vec![
            Column::new("scores".into(), scores),
            Column::new("query_id".into(), query),
            Column::new("lds".into(), lds),
            Column::new("mean_subset_loss".into(), subset),
            Column::new("full_data_loss".into(), full),
            Column::new("base_loss".into(), base),
        ],
    )
}

/// The summary part of one score file.
pub fn check_json(file: &str, objective: &Objective, check: &ScoreCheck) -> Value {
    json!({
        "file": file,
        "objective": objective.kind,
        "lds": {
            "mean": finite(check.mean_lds),
            "standard_error": finite(check.standard_error),
            "queries": check.defined(),
            "undefined": check.per_query.len() - check.defined(),
        },
        "controls": check.controls,
    })
}

/// A number, or null where it is not finite (JSON has no NaN).
pub fn finite(value: f64) -> Value {
    if value.is_finite() {
        json!(value)
    } else {
        Value::Null
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn examples(file: &str, ids: &[&str]) -> Examples {
        Examples::bare(file, Column::new("id".into(), ids), Vec::new())
    }

    #[test]
    fn removal_fractions_parse() {
        assert_eq!("0.1, 0.3".parse::<RemoveFractions>().unwrap().0, [0.1, 0.3]);
        assert!("none".parse::<RemoveFractions>().unwrap().0.is_empty());
        assert_eq!(
            "0.1,1".parse::<RemoveFractions>().unwrap_err(),
            "\"1\": expected fractions in (0, 1), or none"
        );
    }

    #[test]
    fn score_tables_must_cover_every_pair_once() {
        let train = examples("train", &["a", "b"]);
        let query = examples("query", &["q1", "q2"]);
        let frame = df!(
            "query_id" => ["q2", "q1", "q1", "q2"],
            "train_id" => ["a", "a", "b", "b"],
            "score" => [1.0, 2.0, 3.0, 4.0],
        )
        .unwrap();
        let objective = Objective::read(&frame, "s", &train, &query).unwrap();
        assert_eq!(objective.kind, "per_query");
        assert_eq!(objective.scores, [[2.0, 3.0], [1.0, 4.0]]);
        assert_eq!(objective.outputs(&[1.0, 3.0]), [1.0, 3.0]);

        let mean =
            df!("query_id" => ["mean", "mean"], "train_id" => ["b", "a"], "score" => [1.0, 2.0])
                .unwrap();
        let objective = Objective::read(&mean, "s", &train, &query).unwrap();
        assert_eq!(
            (objective.kind, objective.scores.clone()),
            ("mean", vec![vec![2.0, 1.0]])
        );
        assert_eq!(objective.outputs(&[1.0, 3.0]), [2.0]);

        let missing = frame.slice(0, 3);
        let err = Objective::read(&missing, "s", &train, &query)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no score for query 'q2' and training row 'b'"),
            "{err}"
        );
        let twice =
            df!("query_id" => ["mean", "mean"], "train_id" => ["a", "a"], "score" => [1.0, 2.0])
                .unwrap();
        let err = Objective::read(&twice, "s", &train, &query)
            .unwrap_err()
            .to_string();
        assert_eq!(err, "s, row 2: a second score for (mean, a)");
        let stranger = df!("query_id" => ["q9"], "train_id" => ["a"], "score" => [1.0]).unwrap();
        let err = Objective::read(&stranger, "s", &train, &query)
            .unwrap_err()
            .to_string();
        assert!(err.contains("query 'q9' is not a row of query"), "{err}");
    }

    #[test]
    fn a_plan_runs_each_retraining_once_and_checks_read_its_losses() {
        // Row 0 helps the query most (removing it raises the loss).
        let objective = Objective {
            names: vec!["q".into()],
            kind: "per_query",
            scores: vec![vec![3.0, 1.0, 0.5, 0.2, 0.1, 0.0]],
        };
        let plan = RetrainPlan::new(6, 0.5, 4, 2, &[0.2], &[&objective], 7);
        assert_eq!(plan.subsets, 4);
        assert_eq!(plan.subset_rows(), 3);
        assert_eq!(plan.runs[plan.full_run].len(), 6);
        assert_eq!(plan.removed_rows, [1]);
        assert_eq!(plan.random_runs[0].len(), 2);
        let top = &plan.runs[plan.top_runs[0][0]];
        assert!(!top.contains(&0) && top.len() == 5);
        assert_eq!(plan.runs.len(), 4 + 1 + 2 + 1);

        // A loss that falls with the scores of the rows trained on: the correlation is perfect.
        let losses: Vec<Vec<f64>> = plan
            .runs
            .iter()
            .map(|rows| vec![10.0 - rows.iter().map(|&r| objective.scores[0][r]).sum::<f64>()])
            .collect();
        let check = check_scores(&plan, 0, &objective, &losses, &[9.0]);
        assert_eq!(check.defined(), 1);
        assert!((check.per_query[0].unwrap() - 1.0).abs() < 1e-12);
        assert_eq!(check.base_loss, [9.0]);
        assert_eq!(check.full_loss, [10.0 - 4.8]);
        assert_eq!(check.controls[0]["removed_rows"], 1);
        let frame = checks_frame(&[("s", &objective, &check)]).unwrap();
        assert_eq!(frame.height(), 1);
        let summary = check_json("s", &objective, &check);
        assert_eq!(summary["lds"]["queries"], 1);
        assert_eq!(finite(f64::NAN), Value::Null);
    }
}
