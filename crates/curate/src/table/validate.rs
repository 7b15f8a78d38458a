//! Checks every command runs on its inputs, each failing with a one-line [`InputError`]
//! that names the file, the column and the first offending row.

use std::collections::HashMap;

use polars::prelude::*;

use crate::error::InputError;

/// A column a command needs, and the flag that names it (for the hint in messages).
#[derive(Debug, Clone, Copy)]
pub struct ColumnRole<'a> {
    pub name: &'a str,
    pub flag: &'a str,
}

impl<'a> ColumnRole<'a> {
    pub fn new(name: &'a str, flag: &'a str) -> Self {
        ColumnRole { name, flag }
    }
}

/// The kind of values a column must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    Integer,
    Number,
    Text,
    Boolean,
    /// Identifiers: integers or strings.
    Id,
    IntegerList,
    /// Strings or raw bytes (paths or URLs, or images themselves).
    TextOrBytes,
}

impl Expected {
    fn describe(self) -> &'static str {
        match self {
            Expected::Integer => "integers",
            Expected::Number => "numbers",
            Expected::Text => "strings",
            Expected::Boolean => "booleans",
            Expected::Id => "integer or string ids",
            Expected::IntegerList => "lists of integers",
            Expected::TextOrBytes => "strings or bytes",
        }
    }

    fn accepts(self, dtype: &DataType) -> bool {
        match self {
            Expected::Integer => dtype.is_integer(),
            Expected::Number => dtype.is_primitive_numeric(),
            Expected::Text => matches!(dtype, DataType::String),
            Expected::Boolean => matches!(dtype, DataType::Boolean),
            Expected::Id => dtype.is_integer() || matches!(dtype, DataType::String),
            Expected::TextOrBytes => matches!(dtype, DataType::String | DataType::Binary),
            Expected::IntegerList => {
                matches!(dtype, DataType::List(inner) if inner.is_integer() || inner.is_null())
            }
        }
    }
}

/// The input has at least one row.
pub fn require_rows(frame: &DataFrame, file: &str) -> Result<(), InputError> {
    if frame.height() == 0 {
        return Err(InputError::new(file, "no rows"));
    }
    Ok(())
}

/// The column exists.
pub(crate) fn require_column<'f>(
    frame: &'f DataFrame,
    file: &str,
    role: ColumnRole,
) -> Result<&'f Column, InputError> {
    frame.column(role.name).map_err(|_| {
        let names: Vec<&str> = frame
            .get_column_names()
            .iter()
            .map(|n| n.as_str())
            .collect();
        missing_column(file, role, &names)
    })
}

/// The error for a column that is not there, listing the columns that are. A role's flag
/// (`--id-col`) is advised as the way to name another column; a role whose columns are fixed
/// carries a sentence saying what the table must be instead.
pub fn missing_column(file: &str, role: ColumnRole, present: &[&str]) -> InputError {
    let advice = if role.flag.starts_with("--") && !role.flag.contains(' ') {
        format!("name another with {}", role.flag)
    } else {
        role.flag.to_string()
    };
    InputError::new(
        file,
        format!("not found (columns: {}); {advice}", present.join(", ")),
    )
    .column(role.name)
}

/// The column exists and holds `expected` values. When a text column should be numeric (CSV
/// inference falls back to text on one bad cell), the first cell that does not parse is named.
pub fn require_type<'f>(
    frame: &'f DataFrame,
    file: &str,
    role: ColumnRole,
    expected: Expected,
) -> Result<&'f Column, InputError> {
    let column = require_column(frame, file, role)?;
    let dtype = column.dtype();
    if expected.accepts(dtype) {
        return Ok(column);
    }
    let mistyped = InputError::new(
        file,
        format!("expected {}, found {dtype}", expected.describe()),
    )
    .column(role.name);
    if matches!(dtype, DataType::String) && matches!(expected, Expected::Integer | Expected::Number)
    {
        let values = column.str().expect("checked string type");
        for (index, value) in values.iter().enumerate() {
            let Some(text) = value else { continue };
            let parses = match expected {
                Expected::Integer => text.trim().parse::<i64>().is_ok(),
                _ => text.trim().parse::<f64>().is_ok(),
            };
            if !parses {
                return Err(InputError::new(
                    file,
                    format!("expected {}, found {text:?}", expected.describe()),
                )
                .column(role.name)
                .row(index + 1));
            }
        }
    }
    Err(mistyped)
}

/// The id column holds integers or strings, none null, none repeated.
/// A numeric column as f64, refusing nulls and NaN with the row named (`what` names the
/// value in the message).
pub fn number_column(
    frame: &DataFrame,
    file: &str,
    role: ColumnRole,
    what: &str,
) -> anyhow::Result<Vec<f64>> {
    let column = require_type(frame, file, role, Expected::Number)?;
    let values = column.cast(&DataType::Float64)?;
    values
        .f64()?
        .iter()
        .enumerate()
        .map(|(row, value)| match value {
            Some(v) if !v.is_nan() => Ok(v),
            Some(_) => Err(InputError::new(file, format!("{what} is NaN"))
                .column(role.name)
                .row(row + 1)
                .into()),
            None => Err(InputError::new(file, format!("{what} is null"))
                .column(role.name)
                .row(row + 1)
                .into()),
        })
        .collect()
}

pub fn require_unique_ids(
    frame: &DataFrame,
    file: &str,
    role: ColumnRole,
) -> Result<(), InputError> {
    let column = require_type(frame, file, role, Expected::Id)?;
    let null_row = |index: usize| {
        InputError::new(file, "id is null")
            .column(role.name)
            .row(index + 1)
    };
    let duplicate = |index: usize, first: usize, shown: String| {
        InputError::new(
            file,
            format!("duplicate id {shown} (first seen at row {})", first + 1),
        )
        .column(role.name)
        .row(index + 1)
    };
    if column.dtype().is_integer() {
        let values = column
            .cast(&DataType::Int64)
            .map_err(|e| InputError::new(file, e.to_string()).column(role.name))?;
        let mut seen: HashMap<i64, usize> = HashMap::with_capacity(values.len());
        for (index, value) in values.i64().expect("cast to i64").iter().enumerate() {
            let value = value.ok_or_else(|| null_row(index))?;
            if let Some(&first) = seen.get(&value) {
                return Err(duplicate(index, first, value.to_string()));
            }
            seen.insert(value, index);
        }
    } else {
        let mut seen: HashMap<&str, usize> = HashMap::with_capacity(column.len());
        for (index, value) in column.str().expect("checked string").iter().enumerate() {
            let value = value.ok_or_else(|| null_row(index))?;
            if let Some(&first) = seen.get(value) {
                return Err(duplicate(index, first, format!("{value:?}")));
            }
            seen.insert(value, index);
        }
    }
    Ok(())
}

/// The ids of a table's rows: the named column, checked unique and non-null, or, when the
/// column is absent and was not named explicitly, the row index (0-based) as `u64` ids.
pub fn id_column(
    frame: &DataFrame,
    file: &str,
    role: ColumnRole,
    explicit: bool,
) -> Result<Column, InputError> {
    if frame.column(role.name).is_err() && !explicit {
        let index: Vec<u64> = (0..frame.height() as u64).collect();
        return Ok(Column::new(role.name.into(), index));
    }
    require_unique_ids(frame, file, role)?;
    Ok(frame.column(role.name).expect("checked above").clone())
}

/// Probabilities must sum to 1 within this (the input check cleanlab users expect).
pub(crate) const PROBABILITY_SUM_TOLERANCE: f64 = 1e-3;

/// What is wrong with one row of probabilities, if anything: a value outside [0, 1] (NaN
/// included) or, with `must_sum`, a sum further than `tolerance` from 1.
pub(crate) fn probability_problem(row: &[f64], must_sum: bool, tolerance: f64) -> Option<String> {
    if let Some(v) = row
        .iter()
        .find(|v| !v.is_finite() || !(0.0..=1.0).contains(*v))
    {
        return Some(format!("probability {v} is not in [0, 1]"));
    }
    let sum: f64 = row.iter().sum();
    (must_sum && (sum - 1.0).abs() > tolerance)
        .then(|| format!("probabilities sum to {sum}, not 1 (tolerance {tolerance})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame() -> DataFrame {
        df!(
            "id" => [1i64, 2, 3, 2],
            "name" => ["a", "b", "c", "a"],
            "score" => ["1.5", "2", "x", "3"],
            "weight" => [0.5f64, 1.0, 1.5, 2.0],
        )
        .unwrap()
    }

    #[test]
    fn missing_column_lists_columns_and_flag() {
        let err =
            require_column(&frame(), "t.csv", ColumnRole::new("label", "--label-col")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "t.csv: column 'label': not found (columns: id, name, score, weight); \
             name another with --label-col"
        );
    }

    #[test]
    fn mistyped_text_column_names_first_bad_cell() {
        let err = require_type(
            &frame(),
            "t.csv",
            ColumnRole::new("score", "--score-col"),
            Expected::Number,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "t.csv: column 'score', row 3: expected numbers, found \"x\""
        );
        let err = require_type(
            &frame(),
            "t.csv",
            ColumnRole::new("weight", "-"),
            Expected::Id,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "t.csv: column 'weight': expected integer or string ids, found f64"
        );
    }

    #[test]
    fn duplicate_ids_name_both_rows() {
        let err =
            require_unique_ids(&frame(), "t.csv", ColumnRole::new("id", "--id-col")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "t.csv: column 'id', row 4: duplicate id 2 (first seen at row 2)"
        );
        let err =
            require_unique_ids(&frame(), "t.csv", ColumnRole::new("name", "--id-col")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "t.csv: column 'name', row 4: duplicate id \"a\" (first seen at row 1)"
        );
        let unique = df!("id" => ["x", "y"]).unwrap();
        require_unique_ids(&unique, "u", ColumnRole::new("id", "--id-col")).unwrap();
    }

    #[test]
    fn null_id_is_reported() {
        let frame = df!("id" => [Some(1i64), None]).unwrap();
        let err =
            require_unique_ids(&frame, "n.parquet", ColumnRole::new("id", "--id-col")).unwrap_err();
        assert_eq!(err.to_string(), "n.parquet: column 'id', row 2: id is null");
    }

    #[test]
    fn empty_frame_is_rejected() {
        let empty = df!("id" => Vec::<i64>::new()).unwrap();
        assert_eq!(
            require_rows(&empty, "e.jsonl").unwrap_err().to_string(),
            "e.jsonl: no rows"
        );
    }

    #[test]
    fn ids_fall_back_to_row_index_only_when_not_named() {
        let frame = df!("x" => [1.0f64, 2.0, 3.0]).unwrap();
        let ids = id_column(&frame, "f", ColumnRole::new("id", "--id-col"), false).unwrap();
        assert_eq!(ids.u64().unwrap().to_vec(), vec![Some(0), Some(1), Some(2)]);
        let err = id_column(&frame, "f", ColumnRole::new("id", "--id-col"), true).unwrap_err();
        assert!(err.to_string().starts_with("f: column 'id': not found"));
        let named = df!("id" => ["a", "b"]).unwrap();
        let ids = id_column(&named, "f", ColumnRole::new("id", "--id-col"), false).unwrap();
        assert_eq!(ids.str().unwrap().get(1), Some("b"));
    }

    #[test]
    fn probability_rows_are_checked_per_value_and_sum() {
        assert_eq!(probability_problem(&[0.25, 0.75], true, 1e-3), None);
        assert_eq!(
            probability_problem(&[0.5, -0.1], true, 1e-3).as_deref(),
            Some("probability -0.1 is not in [0, 1]")
        );
        assert_eq!(
            probability_problem(&[f64::NAN, 0.5], false, 1e-3).as_deref(),
            Some("probability NaN is not in [0, 1]")
        );
        assert_eq!(
            probability_problem(&[0.5, 0.49], true, 1e-3).as_deref(),
            Some("probabilities sum to 0.99, not 1 (tolerance 0.001)")
        );
        // Presence scores need not sum to 1.
        assert_eq!(probability_problem(&[0.9, 0.8], false, 1e-3), None);
    }
}
