//! Shards `I/N`: which contiguous slice of the rows one of N parallel jobs handles. Slices
//! concatenated in shard order give back the whole table. `auto` reads the shard from a
//! scheduler's environment: Slurm arrays, Kubernetes Indexed Jobs, or `CURATE_SHARD`.

use std::fmt;
use std::ops::Range;
use std::str::FromStr;

/// Shard `index` (0-based) of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

/// Why a shard spec names no shard. The messages leave out the flag; callers name it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    #[error("expected I/N (0-based I), auto or auto/N")]
    Malformed,
    #[error("the shard count must be at least 1")]
    NoShards,
    #[error("shards are numbered from 0 to {}", .count - 1)]
    OutOfRange { index: usize, count: usize },
    #[error(
        "found no shard in the environment: SLURM_ARRAY_TASK_ID (Slurm arrays), JOB_COMPLETION_INDEX (Kubernetes Indexed Jobs) or CURATE_SHARD=I/N; or give I/N"
    )]
    NoScheduler,
    #[error("{name}={value:?} is not a number")]
    NotANumber { name: String, value: String },
    #[error("CURATE_SHARD={0:?} is not I/N")]
    BadEnvironment(String),
    #[error("CURATE_SHARD={value:?} disagrees with the count {count} given to auto/{count}")]
    CountDisagrees { value: String, count: usize },
    #[error(
        "task {id} is not below the shard count {count}: array task ids are the shard indices, 0 to {}",
        .count - 1
    )]
    TaskOutOfRange { id: usize, count: usize },
    #[error(
        "the Slurm array starts at task {min}, not 0 (a re-submitted part of an array?): shards are task ids from 0; give the count with auto/N"
    )]
    ArrayNotFromZero { min: usize },
    #[error(
        "the Slurm array is stepped (:{step}): shards are task ids 0 to N-1; submit --array=0-<N-1> or give the count with auto/N"
    )]
    SteppedArray { step: usize },
    #[error(
        "the Slurm array holds {count} tasks between 0 and {max} (a list, or a re-submitted part of an array?): give the count with auto/N"
    )]
    ArrayWithGaps { count: usize, max: usize },
    #[error(
        "SLURM_ARRAY_TASK_ID is set but neither SLURM_ARRAY_TASK_MAX nor SLURM_ARRAY_TASK_COUNT: give the count with auto/N"
    )]
    NoArrayCount,
    #[error(
        "JOB_COMPLETION_INDEX gives the index only: give the count with auto/N (the Job's completions) or CURATE_SHARD_COUNT"
    )]
    NoIndexedJobCount,
}

/// A shard and, when `auto` found it, where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub shard: Shard,
    /// The variables it was read from, as `NAME=value` (none for an explicit `I/N`).
    pub from: Option<String>,
}

impl Shard {
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    /// Parse `I/N`, or `auto` / `auto/N` from a scheduler's environment (`lookup` reads a
    /// variable), tried in this order:
    /// - `CURATE_SHARD=I/N`;
    /// - a Slurm array: the shard index is `SLURM_ARRAY_TASK_ID` itself, so a re-submitted
    ///   task (`sbatch --array=2`) is still shard 2. The count is N from `auto/N`, or else the
    ///   array's `SLURM_ARRAY_TASK_MAX + 1`, accepted only for an array that starts at 0,
    ///   has no step and no gaps (anything else is refused rather than guessed);
    /// - a Kubernetes Indexed Job: `JOB_COMPLETION_INDEX`, with the count from `auto/N` or
    ///   `CURATE_SHARD_COUNT`.
    pub fn parse(
        spec: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Resolved, ShardError> {
        let given_count = match spec.strip_prefix("auto") {
            None => {
                return spec.parse().map(|shard| Resolved { shard, from: None });
            }
            Some("") => None,
            Some(rest) => {
                let count: usize = rest
                    .strip_prefix('/')
                    .and_then(|n| n.trim().parse().ok())
                    .ok_or(ShardError::Malformed)?;
                if count == 0 {
                    return Err(ShardError::NoShards);
                }
                Some(count)
            }
        };
        let number = |name: &str| -> Result<Option<usize>, ShardError> {
            lookup(name)
                .filter(|value| !value.trim().is_empty())
                .map(|value| {
                    value
                        .trim()
                        .parse::<usize>()
                        .map_err(|_| ShardError::NotANumber {
                            name: name.to_string(),
                            value,
                        })
                })
                .transpose()
        };
        let by_task = |id: usize, count: usize, from: String| {
            Shard::new(id, count)
                .map(|shard| Resolved {
                    shard,
                    from: Some(from),
                })
                .map_err(|_| ShardError::TaskOutOfRange { id, count })
        };

        if let Some(value) = lookup("CURATE_SHARD").filter(|v| !v.trim().is_empty()) {
            let shard: Shard = value
                .parse()
                .map_err(|_| ShardError::BadEnvironment(value.clone()))?;
            if let Some(count) = given_count
                && count != shard.count
            {
                return Err(ShardError::CountDisagrees { value, count });
            }
            return Ok(Resolved {
                shard,
                from: Some(format!("CURATE_SHARD={}", value.trim())),
            });
        }
        if let Some(id) = number("SLURM_ARRAY_TASK_ID")? {
            let from = format!("SLURM_ARRAY_TASK_ID={id}");
            if let Some(count) = given_count {
                return by_task(id, count, from);
            }
            let min = number("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            let step = number("SLURM_ARRAY_TASK_STEP")?.unwrap_or(1);
            let tasks = number("SLURM_ARRAY_TASK_COUNT")?;
            if min != 0 {
                return Err(ShardError::ArrayNotFromZero { min });
            }
            if step > 1 {
                return Err(ShardError::SteppedArray { step });
            }
            let count = match (number("SLURM_ARRAY_TASK_MAX")?, tasks) {
                (Some(max), Some(tasks)) if tasks != max + 1 => {
                    return Err(ShardError::ArrayWithGaps { count: tasks, max });
                }
                (Some(max), _) => max + 1,
                (None, Some(tasks)) => tasks,
                (None, None) => return Err(ShardError::NoArrayCount),
            };
            return by_task(id, count, format!("{from} of an array 0-{}", count - 1));
        }
        if let Some(index) = number("JOB_COMPLETION_INDEX")? {
            let from = format!("JOB_COMPLETION_INDEX={index}");
            let count = match given_count {
                Some(count) => count,
                None => number("CURATE_SHARD_COUNT")?.ok_or(ShardError::NoIndexedJobCount)?,
            };
            return by_task(index, count, from);
        }
        Err(ShardError::NoScheduler)
    }

    pub fn new(index: usize, count: usize) -> Result<Shard, ShardError> {
        if count == 0 {
            return Err(ShardError::NoShards);
        }
        if index >= count {
            return Err(ShardError::OutOfRange { index, count });
        }
        Ok(Shard { index, count })
    }

    /// The rows of `total` this shard covers: contiguous, sizes differing by at most one.
    pub fn rows(&self, total: usize) -> Range<usize> {
        let bound = |i: usize| ((total as u128 * i as u128) / self.count as u128) as usize;
        bound(self.index)..bound(self.index + 1)
    }

    /// The rows this shard covers when row `i` costs `weights[i]` (its tokens): contiguous,
    /// cut where the running total comes nearest to k/N of the whole, so the shards of a
    /// table sorted by length take about the same time. Depends on the weights alone; all
    /// zero weights split by rows.
    pub fn rows_by_weight(&self, weights: &[u64]) -> Range<usize> {
        let total: u128 = weights.iter().map(|&w| w as u128).sum();
        if total == 0 {
            return self.rows(weights.len());
        }
        let count = self.count as u128;
        // Cuts k = index and index + 1, each at the row boundary whose prefix sum is nearest
        // to total * k / count (compared scaled by count to stay in integers).
        let cut = |k: usize| -> usize {
            if k == 0 {
                return 0;
            }
            if k == self.count {
                return weights.len();
            }
            let target = total * k as u128;
            let mut prefix = 0u128;
            for (i, &w) in weights.iter().enumerate() {
                let next = prefix + w as u128;
                if next * count >= target {
                    // Between boundary i (prefix) and i + 1 (next): the nearer one, ties low.
                    let below = target - prefix * count;
                    let above = next * count - target;
                    return if below <= above { i } else { i + 1 };
                }
                prefix = next;
            }
            weights.len()
        };
        cut(self.index)..cut(self.index + 1)
    }
}

impl FromStr for Shard {
    type Err = ShardError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let parsed = spec
            .split_once('/')
            .and_then(|(i, n)| Some((i.trim().parse().ok()?, n.trim().parse().ok()?)));
        match parsed {
            Some((index, count)) => Shard::new(index, count),
            None => Err(ShardError::Malformed),
        }
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// Why the outputs of `--shard` runs do not make one whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoverError {
    #[error("nothing to merge")]
    Empty,
    #[error(
        "{0} records no shard: not the output of a --shard run (shard outputs are Parquet or Arrow files, which record it)"
    )]
    NotAShard(String),
    #[error("{0}: bad shard {1:?}")]
    BadShard(String, String),
    #[error(
        "{0} and {1} are shards of different runs (model, data, queries, factors or settings differ)"
    )]
    DifferentRuns(String, String),
    #[error("{0} and {1} are both shard {2}")]
    Repeated(String, String, String),
    #[error("{0} is shard {1} but {2} is shard {3}")]
    Counts(String, String, String, String),
    #[error("shards missing: {}", .0.join(", "))]
    Missing(Vec<String>),
    #[error("{0} ends at row {1} but {2} starts at row {3}: the shards do not tile the table")]
    Gap(String, usize, String, usize),
}

/// Check that `records` (each named by its file) are the N shards of one run, each once, and
/// return their positions in shard order.
pub fn order_shards(
    records: &[(&str, Option<&super::ShardRecord>)],
) -> Result<Vec<usize>, CoverError> {
    let (first_name, _) = records.first().ok_or(CoverError::Empty)?;
    let mut parsed: Vec<(Shard, &super::ShardRecord)> = Vec::with_capacity(records.len());
    for &(name, record) in records {
        let record = record.ok_or_else(|| CoverError::NotAShard(name.to_string()))?;
        let shard: Shard = record
            .shard
            .parse()
            .map_err(|_| CoverError::BadShard(name.to_string(), record.shard.clone()))?;
        if let Some((_, first)) = parsed.first()
            && (first.run != record.run
                || first.split != record.split
                || first.of_rows != record.of_rows)
        {
            return Err(CoverError::DifferentRuns(
                name.to_string(),
                first_name.to_string(),
            ));
        }
        parsed.push((shard, record));
    }
    for (i, (shard, _)) in parsed.iter().enumerate() {
        let name = records[i].0;
        if let Some(j) = parsed[..i].iter().position(|(s, _)| s.index == shard.index) {
            return Err(CoverError::Repeated(
                name.to_string(),
                records[j].0.to_string(),
                shard.to_string(),
            ));
        }
        if let Some(j) = parsed[..i].iter().position(|(s, _)| s.count != shard.count) {
            return Err(CoverError::Counts(
                name.to_string(),
                shard.to_string(),
                records[j].0.to_string(),
                parsed[j].0.to_string(),
            ));
        }
    }
    let count = parsed[0].0.count;
    if parsed.len() != count {
        let missing = (0..count)
            .filter(|i| !parsed.iter().any(|(s, _)| s.index == *i))
            .map(|i| format!("{i}/{count}"))
            .collect();
        return Err(CoverError::Missing(missing));
    }
    let mut order: Vec<usize> = (0..parsed.len()).collect();
    order.sort_by_key(|&i| parsed[i].0.index);
    let mut end = (first_name.to_string(), 0);
    for (position, &i) in order.iter().enumerate() {
        let rows = parsed[i].1.rows;
        if rows[0] != end.1 {
            let previous = if position == 0 {
                "the table".to_string()
            } else {
                end.0.clone()
            };
            return Err(CoverError::Gap(
                previous,
                end.1,
                records[i].0.to_string(),
                rows[0],
            ));
        }
        end = (records[i].0.to_string(), rows[1]);
    }
    if end.1 != parsed[0].1.of_rows {
        return Err(CoverError::Gap(
            end.0,
            end.1,
            "the table".to_string(),
            parsed[0].1.of_rows,
        ));
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_tile_the_rows() {
        for total in [0, 1, 7, 10, 1001] {
            for count in 1..=6 {
                let mut next = 0;
                for index in 0..count {
                    let rows = Shard::new(index, count).unwrap().rows(total);
                    assert_eq!(rows.start, next);
                    assert!(rows.len() <= total / count + 1);
                    next = rows.end;
                }
                assert_eq!(next, total);
            }
        }
        assert_eq!(Shard::WHOLE.rows(5), 0..5);
    }

    #[test]
    fn weighted_shards_tile_the_rows_and_balance_the_weight() {
        // A table sorted by length: 90 short rows, then 10 long ones.
        let weights: Vec<u64> = (0..100).map(|i| if i < 90 { 10 } else { 500 }).collect();
        let total: u64 = weights.iter().sum();
        for count in 1..=5 {
            let mut next = 0;
            for index in 0..count {
                let rows = Shard::new(index, count).unwrap().rows_by_weight(&weights);
                assert_eq!(rows.start, next);
                next = rows.end;
                let weight: u64 = weights[rows].iter().sum();
                let share = total as f64 / count as f64;
                // Off by at most one row's weight.
                assert!(
                    (weight as f64 - share).abs() <= 500.0,
                    "{index}/{count}: {weight}"
                );
            }
            assert_eq!(next, weights.len());
        }
        // By rows, shard 0 of 2 would hold 50 short rows (500 tokens of 5,900).
        let first = Shard::new(0, 2).unwrap().rows_by_weight(&weights);
        assert_eq!(first, 0..94);
        assert_eq!(Shard::new(1, 3).unwrap().rows_by_weight(&[0, 0, 0]), 1..2);
        assert_eq!(Shard::new(2, 3).unwrap().rows_by_weight(&[]), 0..0);
        assert_eq!(Shard::new(3, 4).unwrap().rows_by_weight(&[7]), 1..1);
    }

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name: &str| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    fn resolve(spec: &str, vars: &[(&str, &str)]) -> Result<Shard, ShardError> {
        Shard::parse(spec, env(vars)).map(|r| r.shard)
    }

    fn slurm(
        id: &str,
        min: &str,
        max: &str,
        step: &str,
        count: &str,
    ) -> Vec<(&'static str, String)> {
        vec![
            ("SLURM_ARRAY_TASK_ID", id.to_string()),
            ("SLURM_ARRAY_TASK_MIN", min.to_string()),
            ("SLURM_ARRAY_TASK_MAX", max.to_string()),
            ("SLURM_ARRAY_TASK_STEP", step.to_string()),
            ("SLURM_ARRAY_TASK_COUNT", count.to_string()),
        ]
    }

    fn with<'a>(vars: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
        vars.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }

    #[test]
    fn parses_explicit_shards() {
        assert_eq!(
            "2/8".parse::<Shard>().unwrap(),
            Shard { index: 2, count: 8 }
        );
        let err = "8/8".parse::<Shard>().unwrap_err();
        assert_eq!(err, ShardError::OutOfRange { index: 8, count: 8 });
        assert_eq!(err.to_string(), "shards are numbered from 0 to 7");
        assert_eq!("x".parse::<Shard>(), Err(ShardError::Malformed));
        assert_eq!("1/0".parse::<Shard>(), Err(ShardError::NoShards));
        let explicit = Shard::parse("1/3", env(&[("SLURM_ARRAY_TASK_ID", "2")])).unwrap();
        assert_eq!(explicit.from, None);
        assert_eq!(resolve("auto/x", &[]), Err(ShardError::Malformed));
        assert_eq!(resolve("auto/0", &[]), Err(ShardError::NoShards));
        assert_eq!(resolve("autox", &[]), Err(ShardError::Malformed));
    }

    #[test]
    fn reads_a_whole_slurm_array() {
        let array = slurm("2", "0", "3", "1", "4");
        let resolved = Shard::parse("auto", env(&with(&array))).unwrap();
        assert_eq!(resolved.shard, Shard { index: 2, count: 4 });
        assert_eq!(
            resolved.from.as_deref(),
            Some("SLURM_ARRAY_TASK_ID=2 of an array 0-3")
        );
        // Older Slurm without MAX: the count.
        let vars = [
            ("SLURM_ARRAY_TASK_ID", "1"),
            ("SLURM_ARRAY_TASK_COUNT", "2"),
        ];
        assert_eq!(resolve("auto", &vars), Ok(Shard { index: 1, count: 2 }));
        assert_eq!(
            resolve("auto", &[("SLURM_ARRAY_TASK_ID", "1")]),
            Err(ShardError::NoArrayCount)
        );
        assert_eq!(
            resolve("auto", &[("SLURM_ARRAY_TASK_ID", "x")]),
            Err(ShardError::NotANumber {
                name: "SLURM_ARRAY_TASK_ID".into(),
                value: "x".into()
            })
        );
    }

    #[test]
    fn refuses_slurm_arrays_it_would_have_to_guess() {
        // `sbatch --array=2`, re-submitting one failed task of 0-3: MIN = MAX = 2, COUNT = 1.
        let resubmitted = slurm("2", "2", "2", "1", "1");
        let err = resolve("auto", &with(&resubmitted)).unwrap_err();
        assert_eq!(err, ShardError::ArrayNotFromZero { min: 2 });
        assert!(err.to_string().contains("auto/N"), "{err}");
        // With the count given, the task id is the shard.
        assert_eq!(
            resolve("auto/4", &with(&resubmitted)),
            Ok(Shard { index: 2, count: 4 })
        );
        // `--array=0-6:2`.
        let stepped = slurm("4", "0", "6", "2", "4");
        let err = resolve("auto", &with(&stepped)).unwrap_err();
        assert_eq!(err, ShardError::SteppedArray { step: 2 });
        assert!(err.to_string().contains("stepped (:2)"), "{err}");
        // `--array=0,3`: a list with gaps.
        let list = slurm("3", "0", "3", "1", "2");
        assert_eq!(
            resolve("auto", &with(&list)),
            Err(ShardError::ArrayWithGaps { count: 2, max: 3 })
        );
        // A 1-based array with the count given: task 4 is not a shard of 4.
        let one_based = slurm("4", "1", "4", "1", "4");
        let err = resolve("auto/4", &with(&one_based)).unwrap_err();
        assert_eq!(err, ShardError::TaskOutOfRange { id: 4, count: 4 });
        assert!(err.to_string().contains("0 to 3"), "{err}");
    }

    #[test]
    fn reads_kubernetes_indexed_jobs_and_curate_shard() {
        let k8s = [("JOB_COMPLETION_INDEX", "3")];
        assert_eq!(resolve("auto/5", &k8s), Ok(Shard { index: 3, count: 5 }));
        assert_eq!(resolve("auto", &k8s), Err(ShardError::NoIndexedJobCount));
        let with_count = [("JOB_COMPLETION_INDEX", "3"), ("CURATE_SHARD_COUNT", "4")];
        let resolved = Shard::parse("auto", env(&with_count)).unwrap();
        assert_eq!(resolved.shard, Shard { index: 3, count: 4 });
        assert_eq!(resolved.from.as_deref(), Some("JOB_COMPLETION_INDEX=3"));
        assert_eq!(
            resolve("auto/3", &k8s),
            Err(ShardError::TaskOutOfRange { id: 3, count: 3 })
        );

        // CURATE_SHARD comes first and must agree with a given count.
        let generic = [("CURATE_SHARD", "1/2"), ("JOB_COMPLETION_INDEX", "0")];
        assert_eq!(resolve("auto", &generic), Ok(Shard { index: 1, count: 2 }));
        assert_eq!(
            resolve("auto/2", &generic),
            Ok(Shard { index: 1, count: 2 })
        );
        assert_eq!(
            resolve("auto/3", &generic),
            Err(ShardError::CountDisagrees {
                value: "1/2".into(),
                count: 3
            })
        );
        assert_eq!(
            resolve("auto", &[("CURATE_SHARD", "2")]),
            Err(ShardError::BadEnvironment("2".into()))
        );
        assert_eq!(resolve("auto", &[]), Err(ShardError::NoScheduler));
    }

    fn record(shard: &str, rows: [usize; 2], run: &str) -> super::super::ShardRecord {
        super::super::ShardRecord {
            shard: shard.into(),
            rows,
            of_rows: 10,
            split: "tokens".into(),
            run: run.into(),
        }
    }

    #[test]
    fn shard_outputs_are_put_in_order_and_checked() {
        let (a, b, c) = (
            record("0/3", [0, 4], "r"),
            record("1/3", [4, 7], "r"),
            record("2/3", [7, 10], "r"),
        );
        // Given out of order, returned in shard order.
        let order = order_shards(&[("c", Some(&c)), ("a", Some(&a)), ("b", Some(&b))]).unwrap();
        assert_eq!(order, [1, 2, 0]);

        let err = order_shards(&[("a", Some(&a)), ("c", Some(&c))]).unwrap_err();
        assert_eq!(err, CoverError::Missing(vec!["1/3".into()]));
        assert_eq!(err.to_string(), "shards missing: 1/3");
        let err = order_shards(&[("a", Some(&a)), ("a2", Some(&a)), ("b", Some(&b))]);
        assert_eq!(
            err,
            Err(CoverError::Repeated("a2".into(), "a".into(), "0/3".into()))
        );
        let other = record("1/3", [4, 7], "other factors");
        let err = order_shards(&[("a", Some(&a)), ("x", Some(&other)), ("c", Some(&c))]);
        assert_eq!(err, Err(CoverError::DifferentRuns("x".into(), "a".into())));
        let err = order_shards(&[("a", Some(&a)), ("plain.csv", None)]).unwrap_err();
        assert_eq!(err, CoverError::NotAShard("plain.csv".into()));
        assert!(err.to_string().contains("Parquet or Arrow"), "{err}");
        let four = record("1/4", [4, 7], "r");
        let err = order_shards(&[("a", Some(&a)), ("four", Some(&four))]);
        assert_eq!(
            err,
            Err(CoverError::Counts(
                "four".into(),
                "1/4".into(),
                "a".into(),
                "0/3".into()
            ))
        );
        let shifted = record("1/3", [5, 7], "r");
        let err = order_shards(&[("a", Some(&a)), ("s", Some(&shifted)), ("c", Some(&c))]);
        assert_eq!(err, Err(CoverError::Gap("a".into(), 4, "s".into(), 5)));
        assert_eq!(order_shards(&[]), Err(CoverError::Empty));
    }
}
