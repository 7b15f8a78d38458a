//! Shards `I/N`: which contiguous slice of the rows one of N parallel jobs handles. Slices
//! concatenated in shard order give back the whole table.

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
    #[error("expected I/N (0-based I) or auto")]
    Malformed,
    #[error("the shard count must be at least 1")]
    NoShards,
    #[error("shards are numbered from 0 to {}", .count - 1)]
    OutOfRange { index: usize, count: usize },
    #[error(
        "needs SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT (run it as a Slurm array job, or give I/N)"
    )]
    NotAnArrayJob,
    #[error("{name}={value:?} is not a number")]
    NotANumber { name: String, value: String },
    #[error("SLURM_ARRAY_TASK_ID {id} is below SLURM_ARRAY_TASK_MIN {min}")]
    BelowMin { id: usize, min: usize },
}

impl Shard {
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    /// Parse `I/N`, or `auto` from a Slurm array job's environment (`lookup` reads a
    /// variable): the index is `SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN` (0 when the min is
    /// unset), the count `SLURM_ARRAY_TASK_COUNT`.
    pub fn parse(spec: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<Shard, ShardError> {
        if spec != "auto" {
            return spec.parse();
        }
        let number = |name: &str| -> Result<Option<usize>, ShardError> {
            lookup(name)
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
        let (Some(id), Some(count)) = (
            number("SLURM_ARRAY_TASK_ID")?,
            number("SLURM_ARRAY_TASK_COUNT")?,
        ) else {
            return Err(ShardError::NotAnArrayJob);
        };
        let min = number("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
        let index = id
            .checked_sub(min)
            .ok_or(ShardError::BelowMin { id, min })?;
        Shard::new(index, count)
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
    fn parses_explicit_and_slurm_shards() {
        assert_eq!(
            "2/8".parse::<Shard>().unwrap(),
            Shard { index: 2, count: 8 }
        );
        let err = "8/8".parse::<Shard>().unwrap_err();
        assert_eq!(err, ShardError::OutOfRange { index: 8, count: 8 });
        assert_eq!(err.to_string(), "shards are numbered from 0 to 7");
        assert_eq!("x".parse::<Shard>(), Err(ShardError::Malformed));
        assert_eq!("1/0".parse::<Shard>(), Err(ShardError::NoShards));
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        const SLURM: [(&str, &str); 3] = [
            ("SLURM_ARRAY_TASK_ID", "5"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
            ("SLURM_ARRAY_TASK_MIN", "3"),
        ];
        assert_eq!(
            Shard::parse("auto", env(&SLURM)).unwrap(),
            Shard { index: 2, count: 4 }
        );
        assert_eq!(
            Shard::parse("auto", env(&[])),
            Err(ShardError::NotAnArrayJob)
        );
        assert_eq!(
            Shard::parse(
                "auto",
                env(&[
                    ("SLURM_ARRAY_TASK_ID", "2"),
                    ("SLURM_ARRAY_TASK_COUNT", "x")
                ])
            ),
            Err(ShardError::NotANumber {
                name: "SLURM_ARRAY_TASK_COUNT".into(),
                value: "x".into()
            })
        );
        assert_eq!(
            Shard::parse(
                "auto",
                env(&[
                    ("SLURM_ARRAY_TASK_ID", "1"),
                    ("SLURM_ARRAY_TASK_COUNT", "4"),
                    ("SLURM_ARRAY_TASK_MIN", "2")
                ])
            ),
            Err(ShardError::BelowMin { id: 1, min: 2 })
        );
    }
}
