//! Quick per-column statistics for `inspect`: null counts, min/max of ordered columns, most
//! frequent values of categorical ones.

use polars::prelude::*;
use serde::Serialize;

const COUNT_COLUMN: &str = "__curate_count";

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ColumnSummary {
    pub name: String,
    pub dtype: String,
    pub nulls: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distinct: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top: Option<Vec<ValueCount>>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ValueCount {
    pub value: serde_json::Value,
    pub count: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ordered,
    Categorical,
    Other,
}

fn kind_of(dtype: &DataType) -> Kind {
    if dtype.is_primitive_numeric() || dtype.is_temporal() {
        Kind::Ordered
    } else if matches!(dtype, DataType::String | DataType::Boolean) {
        Kind::Categorical
    } else {
        Kind::Other
    }
}

/// Summarise every column of `frame`. One pass computes nulls, min/max and distinct counts;
/// each categorical column then gets a grouped count for its `top_k` values (ties by value).
pub fn summarize(
    frame: LazyFrame,
    schema: &Schema,
    top_k: usize,
) -> PolarsResult<Vec<ColumnSummary>> {
    if schema.is_empty() {
        return Ok(Vec::new());
    }
    let mut exprs = Vec::new();
    for (index, (name, dtype)) in schema.iter().enumerate() {
        let column = col(name.clone());
        exprs.push(column.clone().null_count().alias(format!("{index}_nulls")));
        match kind_of(dtype) {
            Kind::Ordered => {
                exprs.push(column.clone().min().alias(format!("{index}_min")));
                exprs.push(column.max().alias(format!("{index}_max")));
            }
            Kind::Categorical => {
                exprs.push(
                    column
                        .drop_nulls()
                        .n_unique()
                        .alias(format!("{index}_distinct")),
                );
            }
            Kind::Other => {}
        }
    }
    let stats = frame.clone().select(exprs).collect()?;
    let scalar = |key: String| -> PolarsResult<AnyValue<'static>> {
        Ok(stats.column(&key)?.get(0)?.into_static())
    };

    let mut summaries = Vec::with_capacity(schema.len());
    for (index, (name, dtype)) in schema.iter().enumerate() {
        let nulls = scalar(format!("{index}_nulls"))?
            .extract::<u64>()
            .unwrap_or(0);
        let mut summary = ColumnSummary {
            name: name.to_string(),
            dtype: dtype.to_string(),
            nulls,
            min: None,
            max: None,
            distinct: None,
            top: None,
        };
        match kind_of(dtype) {
            Kind::Ordered => {
                summary.min = Some(to_json(&scalar(format!("{index}_min"))?));
                summary.max = Some(to_json(&scalar(format!("{index}_max"))?));
            }
            Kind::Categorical => {
                summary.distinct = scalar(format!("{index}_distinct"))?.extract::<u64>();
                summary.top = Some(top_values(frame.clone(), name, top_k)?);
            }
            Kind::Other => {}
        }
        summaries.push(summary);
    }
    Ok(summaries)
}

fn top_values(frame: LazyFrame, name: &str, top_k: usize) -> PolarsResult<Vec<ValueCount>> {
    let counts = frame
        .select([col(name)])
        .filter(col(name).is_not_null())
        .group_by([col(name)])
        .agg([len().alias(COUNT_COLUMN)])
        .sort_by_exprs(
            [col(COUNT_COLUMN), col(name)],
            SortMultipleOptions::default().with_order_descending_multi([true, false]),
        )
        .limit(top_k as IdxSize)
        .collect()?;
    let values = counts.column(name)?;
    let tallies = counts.column(COUNT_COLUMN)?;
    (0..counts.height())
        .map(|row| {
            Ok(ValueCount {
                value: to_json(&values.get(row)?),
                count: tallies.get(row)?.extract::<u64>().unwrap_or(0),
            })
        })
        .collect()
}

/// A cell as JSON: numbers stay numbers (non-finite floats become null), temporal values
/// their usual text form.
pub(crate) fn to_json(value: &AnyValue) -> serde_json::Value {
    use serde_json::Value;
    match value {
        AnyValue::Null => Value::Null,
        AnyValue::Boolean(b) => Value::Bool(*b),
        AnyValue::String(s) => Value::String(s.to_string()),
        AnyValue::StringOwned(s) => Value::String(s.to_string()),
        AnyValue::Float32(f) => {
            serde_json::Number::from_f64(*f as f64).map_or(Value::Null, Value::Number)
        }
        AnyValue::Float64(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        other if other.dtype().is_integer() => {
            if let Some(v) = other.extract::<i64>() {
                Value::from(v)
            } else if let Some(v) = other.extract::<u64>() {
                Value::from(v)
            } else {
                Value::String(other.to_string())
            }
        }
        other => Value::String(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summarises_numeric_text_and_nested_columns() {
        let frame = df!(
            "x" => [Some(3i64), None, Some(-1), Some(7)],
            "s" => [Some("b"), Some("a"), Some("b"), None],
            "f" => [0.5f64, f64::NAN, 2.0, 1.0],
        )
        .unwrap();
        let summaries = summarize(frame.clone().lazy(), frame.schema(), 5).unwrap();
        let x = &summaries[0];
        assert_eq!(
            (x.nulls, x.min.clone(), x.max.clone()),
            (1, Some(serde_json::json!(-1)), Some(serde_json::json!(7)))
        );
        let s = &summaries[1];
        assert_eq!(s.nulls, 1);
        assert_eq!(s.distinct, Some(2));
        assert_eq!(
            s.top.as_ref().unwrap(),
            &vec![
                ValueCount {
                    value: serde_json::json!("b"),
                    count: 2
                },
                ValueCount {
                    value: serde_json::json!("a"),
                    count: 1
                },
            ]
        );
        assert_eq!(summaries[2].min, Some(serde_json::json!(0.5)));
    }

    #[test]
    fn ties_in_top_values_break_by_value() {
        let frame = df!("s" => ["z", "y", "x", "y", "z", "x"]).unwrap();
        let summaries = summarize(frame.clone().lazy(), frame.schema(), 2).unwrap();
        let top: Vec<_> = summaries[0]
            .top
            .as_ref()
            .unwrap()
            .iter()
            .map(|v| v.value.clone())
            .collect();
        assert_eq!(top, vec![serde_json::json!("x"), serde_json::json!("y")]);
    }
}
