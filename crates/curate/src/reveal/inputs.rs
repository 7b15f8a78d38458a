//! Reading what REVEAL joins: the labels, the prediction sources and the embeddings, each
//! keyed by id and placed at the label rows, with every value checked on the way in.

use polars::prelude::PlHashMap;

use anyhow::Result;
use polars::prelude::*;

use crate::error::InputError;
use crate::reveal::Probabilities;
use crate::reveal::classes::{ClassValue, Classes};
use crate::reveal::detect::{Predictions, Source, SourceKind};
use crate::table::{self, ColumnRole, Expected, Input, PROBABILITY_SUM_TOLERANCE};

/// The columns REVEAL reads, each with what names it (a flag), for hints in messages.
#[derive(Debug, Clone, Copy)]
pub struct RevealColumns<'a> {
    pub id: ColumnRole<'a>,
    /// Single labels.
    pub label: ColumnRole<'a>,
    /// Label lists (multi-label).
    pub labels: ColumnRole<'a>,
    /// `name` is the prefix of wide probability columns (`p0`, `p1`, ... or `p_cat`,
    /// `p_dog`, ... by class name).
    pub probs_prefix: ColumnRole<'a>,
    /// Wide probability columns named outright, in class order (`--probs-cols`).
    pub probs_cols: Option<&'a [String]>,
    pub embedding: ColumnRole<'a>,
    /// What names a source's own columns.
    pub source: &'a str,
}

/// An id, as the labels file spells it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Id {
    Int(i64),
    Text(String),
}

impl std::fmt::Display for Id {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Id::Int(v) => write!(f, "{v}"),
            Id::Text(v) => write!(f, "{v:?}"),
        }
    }
}

/// Ids of a table's rows (the row index, from `offset`, when it has no id column).
fn read_ids(frame: &DataFrame, file: &str, role: ColumnRole, offset: usize) -> Result<Vec<Id>> {
    let id_col = role.name;
    if frame.column(id_col).is_err() {
        return Ok((offset..offset + frame.height())
            .map(|i| Id::Int(i as i64))
            .collect());
    }
    let column = table::require_type(frame, file, role, Expected::Id)?;
    int_or_text(column, file, id_col, "id", offset, Id::Int, Id::Text)
}

/// The values of an integer or string column (already type-checked), none null; rows are
/// reported from `offset`.
fn int_or_text<T>(
    column: &Column,
    file: &str,
    name: &str,
    what: &str,
    offset: usize,
    int: fn(i64) -> T,
    text: fn(String) -> T,
) -> Result<Vec<T>> {
    let null_at = |row: usize| {
        anyhow::Error::from(
            InputError::new(file, format!("{what} is null"))
                .column(name)
                .row(offset + row + 1),
        )
    };
    if column.dtype().is_integer() {
        let cast = column.cast(&DataType::Int64)?;
        cast.i64()
            .expect("cast")
            .iter()
            .enumerate()
            .map(|(r, v)| v.map(int).ok_or_else(|| null_at(r)))
            .collect()
    } else {
        column
            .str()
            .expect("checked string type")
            .iter()
            .enumerate()
            .map(|(r, v)| v.map(|s| text(s.to_string())).ok_or_else(|| null_at(r)))
            .collect()
    }
}

/// Ids must be unique; increasing ids are, without hashing.
fn check_unique(ids: &[Id], file: &str, id_col: &str) -> Result<()> {
    if ids.windows(2).all(|w| w[0] < w[1]) {
        return Ok(());
    }
    let mut seen: PlHashMap<&Id, usize> = PlHashMap::with_capacity(ids.len());
    for (row, id) in ids.iter().enumerate() {
        if let Some(first) = seen.insert(id, row) {
            return Err(InputError::new(
                file,
                format!("duplicate id {id} (first seen at row {})", first + 1),
            )
            .column(id_col)
            .row(row + 1)
            .into());
        }
    }
    Ok(())
}

/// The given labels, one row per id.
pub struct Labels {
    pub file: String,
    pub ids: Vec<Id>,
    /// The id column as read, for the output.
    pub id_column: Column,
    /// The label column as read (single or list), for the output.
    pub label_column: Column,
    /// Per row, the classes as written (one for single-label data).
    pub values: Vec<Vec<ClassValue>>,
    pub multi_label: bool,
    /// Row of each id, built on first use (aligned inputs never need it).
    index: std::sync::OnceLock<PlHashMap<Id, usize>>,
}

impl Labels {
    /// The label row of `id`, trying `hint` (the same row number) first.
    pub fn position(&self, id: &Id, hint: usize) -> Option<usize> {
        if self.ids.get(hint) == Some(id) {
            return Some(hint);
        }
        let index = self.index.get_or_init(|| {
            self.ids
                .iter()
                .cloned()
                .enumerate()
                .map(|(i, id)| (id, i))
                .collect()
        });
        index.get(id).copied()
    }
}

pub fn read_labels(input: &Input, columns: &RevealColumns) -> Result<Labels> {
    let (id_col, label_col, labels_col) =
        (columns.id.name, columns.label.name, columns.labels.name);
    let file = input.label().to_string();
    let schema = input.schema()?;
    let (name, multi_label) = if schema.contains(label_col) {
        (label_col, false)
    } else if schema.contains(labels_col) {
        (labels_col, true)
    } else {
        let present: Vec<&str> = schema.iter_names().map(|n| n.as_str()).collect();
        return Err(InputError::new(
            &file,
            format!(
                "no label column: expected '{label_col}' ({}) or '{labels_col}' ({}); columns: {}",
                columns.label.flag,
                columns.labels.flag,
                present.join(", ")
            ),
        )
        .into());
    };
    let mut wanted = vec![col(name)];
    if schema.contains(id_col) {
        wanted.push(col(id_col));
    }
    let frame = input.collect(input.scan()?.select(wanted))?;
    table::require_rows(&frame, &file)?;
    let ids = read_ids(&frame, &file, columns.id, 0)?;
    check_unique(&ids, &file, id_col)?;
    let id_column = match frame.column(id_col) {
        Ok(column) => column.clone(),
        Err(_) => Column::new(
            id_col.into(),
            (0..frame.height() as u64).collect::<Vec<_>>(),
        ),
    };
    let label_column = frame.column(name).expect("selected").clone();
    let values = if multi_label {
        class_lists(&label_column, &file, name, columns.labels.flag)?
    } else {
        class_values(&label_column, &file, name, columns.label.flag)?
            .into_iter()
            .map(|v| vec![v])
            .collect()
    };
    Ok(Labels {
        file,
        ids,
        id_column,
        label_column,
        values,
        multi_label,
        index: std::sync::OnceLock::new(),
    })
}

/// One class per row (integers or strings; no nulls).
fn class_values(column: &Column, file: &str, name: &str, flag: &str) -> Result<Vec<ClassValue>> {
    let role = ColumnRole::new(name, flag);
    let frame = DataFrame::new_infer_height(vec![column.clone()])?;
    let column = table::require_type(&frame, file, role, Expected::Id)?;
    int_or_text(
        column,
        file,
        name,
        "label",
        0,
        ClassValue::Int,
        ClassValue::Text,
    )
}

/// A list of classes per row.
fn class_lists(
    column: &Column,
    file: &str,
    name: &str,
    flag: &str,
) -> Result<Vec<Vec<ClassValue>>> {
    let DataType::List(inner) = column.dtype() else {
        return Err(InputError::new(
            file,
            format!(
                "expected lists of classes, found {} (see {flag})",
                column.dtype()
            ),
        )
        .column(name)
        .into());
    };
    let integer = inner.is_integer() || inner.is_null();
    if !integer && !matches!(**inner, DataType::String) {
        return Err(InputError::new(
            file,
            format!(
                "expected lists of integer or string classes, found {}",
                column.dtype()
            ),
        )
        .column(name)
        .into());
    }
    let target = if integer {
        DataType::Int64
    } else {
        DataType::String
    };
    let cast = column.cast(&DataType::List(Box::new(target)))?;
    let mut rows = Vec::with_capacity(cast.len());
    for (i, row) in cast.list().expect("cast").amortized_iter().enumerate() {
        let at = |message: &str| InputError::new(file, message).column(name).row(i + 1);
        let Some(row) = row else {
            return Err(at("list of classes is null").into());
        };
        let series = row.as_ref();
        let mut values: Vec<ClassValue> = if integer {
            series
                .i64()
                .expect("cast")
                .iter()
                .map(|v| v.map(ClassValue::Int))
                .collect::<Option<_>>()
                .ok_or_else(|| at("class is null"))?
        } else {
            series
                .str()
                .expect("cast")
                .iter()
                .map(|v| v.map(|s| ClassValue::Text(s.to_string())))
                .collect::<Option<_>>()
                .ok_or_else(|| at("class is null"))?
        };
        values.sort();
        values.dedup();
        rows.push(values);
    }
    Ok(rows)
}

/// A prediction source: its name, file, kind and (optionally) the column holding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceSpec {
    pub name: String,
    pub path: String,
    pub kind: SourceKind,
    pub column: Option<String>,
}

/// `NAME=PATH[:KIND[:COLUMN]]`.
impl std::str::FromStr for SourceSpec {
    type Err = String;

    fn from_str(spec: &str) -> Result<SourceSpec, String> {
        let (name, rest) = spec
            .split_once('=')
            .ok_or("expected NAME=PATH[:KIND[:COLUMN]]")?;
        if name.is_empty() || rest.is_empty() {
            return Err("expected NAME=PATH[:KIND[:COLUMN]]".into());
        }
        // KIND and COLUMN are split off the end only when KIND is a known kind, so paths may
        // hold colons.
        let mut parsed = (rest, SourceKind::Probs, None);
        if let Some((head, last)) = rest.rsplit_once(':') {
            if let Some(kind) = SourceKind::from_name(last) {
                parsed = (head, kind, None);
            } else if let Some((path, kind)) = head.rsplit_once(':')
                && let Some(kind) = SourceKind::from_name(kind)
            {
                parsed = (path, kind, Some(last.to_string()));
            }
        }
        let (path, kind, column) = parsed;
        Ok(SourceSpec {
            name: name.to_string(),
            path: path.to_string(),
            kind,
            column,
        })
    }
}

/// Label rows of source rows `offset..` with these ids: `positions[r]` is the label row of
/// source row `offset + r`, or `None` for ids the labels do not have.
fn align(
    ids: &[Id],
    offset: usize,
    file: &str,
    id_col: &str,
    labels: &Labels,
) -> Result<Vec<Option<usize>>> {
    let label_is_int = matches!(labels.ids.first(), Some(Id::Int(_)));
    if let Some(first) = ids.first()
        && matches!(first, Id::Int(_)) != label_is_int
    {
        let kind = |int: bool| if int { "integers" } else { "strings" };
        return Err(InputError::new(
            file,
            format!(
                "ids are {} but {} has {} ids",
                kind(!label_is_int),
                labels.file,
                kind(label_is_int)
            ),
        )
        .column(id_col)
        .into());
    }
    Ok(ids
        .iter()
        .enumerate()
        .map(|(r, id)| labels.position(id, offset + r))
        .collect())
}

fn require_overlap(
    positions: &[Option<usize>],
    file: &str,
    id_col: &str,
    labels: &Labels,
) -> Result<()> {
    if positions.iter().all(Option::is_none) {
        return Err(
            InputError::new(file, format!("shares no id with {}", labels.file))
                .column(id_col)
                .into(),
        );
    }
    Ok(())
}

/// The first label row no source row reaches, as an error.
fn require_cover(positions: &[Option<usize>], labels: &Labels, file: &str) -> Result<()> {
    let mut covered = vec![false; labels.ids.len()];
    for p in positions.iter().flatten() {
        covered[*p] = true;
    }
    if let Some(row) = covered.iter().position(|c| !c) {
        return Err(InputError::new(
            file,
            format!(
                "has no row for id {} ({} row {}); probability sources must cover every label",
                labels.ids[row],
                labels.file,
                row + 1
            ),
        )
        .into());
    }
    Ok(())
}

/// A source read, and for wide columns named by class (`p_cat`, `p_dog`), the class each
/// matrix column holds: [`order_by_class`] puts them in the class order once it is known.
pub struct ReadSource {
    pub source: Source,
    pub column_classes: Option<Vec<String>>,
}

pub fn read_source(
    spec: &SourceSpec,
    labels: &Labels,
    columns: &RevealColumns,
) -> Result<ReadSource> {
    let (id_col, probs_prefix) = (columns.id.name, columns.probs_prefix.name);
    let input = Input::open(&spec.path, None)?;
    let file = input.label().to_string();
    let schema = input.schema()?;
    let mut wanted: Vec<String> = Vec::new();
    if schema.contains(id_col) {
        wanted.push(id_col.to_string());
    }
    let mut column_classes = None;
    let value_columns = match spec.kind {
        SourceKind::Probs | SourceKind::MlProbs => {
            let list = spec.column.clone().unwrap_or_else(|| "probs".to_string());
            if let (None, Some(named)) = (&spec.column, columns.probs_cols) {
                if let Some(missing) = named.iter().find(|c| !schema.contains(c.as_str())) {
                    return Err(InputError::new(&file, "column not found (--probs-cols)")
                        .column(missing.clone())
                        .into());
                }
                named.to_vec()
            } else if schema.contains(&list) {
                vec![list]
            } else if spec.column.is_some() {
                return Err(InputError::new(&file, "column not found")
                    .column(list)
                    .into());
            } else if let Some(numbered) = wide_columns(&schema, probs_prefix) {
                numbered
            } else if let Some((names, classes)) = class_named_columns(&schema, probs_prefix) {
                column_classes = Some(classes);
                names
            } else {
                return Err(InputError::new(
                    &file,
                    format!(
                        "no probabilities: expected a list column 'probs' (or \
                         NAME=PATH:{}:COLUMN), columns {probs_prefix}0..{probs_prefix}K-1 or \
                         {probs_prefix}CLASS per class (--probs-prefix), or --probs-cols A,B,...",
                        spec.kind.name()
                    ),
                )
                .into());
            }
        }
        SourceKind::Hard | SourceKind::Set => {
            let column = spec.column.clone().unwrap_or_else(|| "pred".to_string());
            if !schema.contains(&column) {
                return Err(InputError::new(
                    &file,
                    format!(
                        "column not found (name it with NAME=PATH:{}:COLUMN)",
                        spec.kind.name()
                    ),
                )
                .column(column)
                .into());
            }
            vec![column]
        }
    };
    wanted.extend(value_columns.iter().cloned());
    let selection: Vec<Expr> = wanted.iter().map(|c| col(c.as_str())).collect();
    let n = labels.ids.len();
    if spec.kind.is_probabilities() {
        let must_sum = spec.kind == SourceKind::Probs;
        let mut matrix = Matrix::default();
        let mut ids = Vec::new();
        let mut positions = Vec::new();
        // Parquet is read a slice of rows at a time, so the decoded table never sits in
        // memory beside the whole matrix.
        let total = input.row_count()?;
        let step = if input.format() == crate::table::Format::Parquet {
            PARQUET_BATCH_ROWS
        } else {
            total.max(1)
        };
        for offset in (0..total).step_by(step) {
            crate::interrupt::check()?;
            let query = input.scan()?.select(selection.clone());
            let query = if step < total {
                query.slice(offset as i64, step as IdxSize)
            } else {
                query
            };
            let t = std::time::Instant::now();
            let frame = input.collect(query)?;
            tracing::trace!(
                "{file}: rows {offset}.. read in {:.3} s",
                t.elapsed().as_secs_f64()
            );
            let batch_ids = read_ids(&frame, &file, columns.id, offset)?;
            let batch_positions = align(&batch_ids, offset, &file, id_col, labels)?;
            fill_probabilities(
                &frame,
                &file,
                &value_columns,
                columns.probs_prefix.flag,
                &batch_positions,
                offset,
                n,
                must_sum,
                &mut matrix,
            )?;
            ids.extend(batch_ids);
            positions.extend(batch_positions);
            tracing::trace!(
                "{file}: rows {offset}.. placed in {:.3} s",
                t.elapsed().as_secs_f64()
            );
        }
        if ids.is_empty() {
            return Err(InputError::new(&file, "no rows").into());
        }
        check_unique(&ids, &file, id_col)?;
        require_overlap(&positions, &file, id_col, labels)?;
        require_cover(&positions, labels, &file)?;
        let covered = positions.iter().flatten().count();
        let probs = Probabilities::new(matrix.classes, matrix.values);
        return Ok(ReadSource {
            source: Source {
                name: spec.name.clone(),
                kind: spec.kind,
                predictions: Predictions::Probabilities(probs),
                covered,
            },
            column_classes,
        });
    }
    let frame = input.collect(input.scan()?.select(selection))?;
    table::require_rows(&frame, &file)?;
    let ids = read_ids(&frame, &file, columns.id, 0)?;
    check_unique(&ids, &file, id_col)?;
    let positions = align(&ids, 0, &file, id_col, labels)?;
    require_overlap(&positions, &file, id_col, labels)?;
    let covered = positions.iter().flatten().count();
    let column = frame.column(&value_columns[0])?;
    let predictions = if spec.kind == SourceKind::Hard {
        let values = class_values(column, &file, &value_columns[0], columns.source)?;
        let mut placed = vec![None; n];
        for (value, position) in values.into_iter().zip(&positions) {
            if let Some(p) = position {
                placed[*p] = Some(value);
            }
        }
        Predictions::Hard(placed)
    } else {
        let values = class_lists(column, &file, &value_columns[0], columns.source)?;
        let mut placed = vec![None; n];
        for (value, position) in values.into_iter().zip(&positions) {
            if let Some(p) = position {
                placed[*p] = Some(value);
            }
        }
        Predictions::Set(placed)
    };
    Ok(ReadSource {
        source: Source {
            name: spec.name.clone(),
            kind: spec.kind,
            predictions,
            covered,
        },
        column_classes: None,
    })
}

/// Wide columns named by class after the prefix (`p_bird`, `p_cat`, `p_dog`): at least two,
/// sorted by class name, with the names.
fn class_named_columns(schema: &Schema, prefix: &str) -> Option<(Vec<String>, Vec<String>)> {
    let mut named: Vec<(String, String)> = schema
        .iter()
        .filter(|(_, dtype)| dtype.is_primitive_numeric())
        .filter_map(|(name, _)| {
            let class = name.as_str().strip_prefix(prefix)?;
            (!class.is_empty()).then(|| (class.to_string(), name.to_string()))
        })
        .collect();
    if named.len() < 2 {
        return None;
    }
    named.sort();
    Some(named.into_iter().map(|(c, n)| (n, c)).unzip())
}

/// Put a source's class-named columns in the class order: column k of its matrix becomes the
/// probability of `class_names[k]`. Every class needs a column and every column a class.
pub fn order_by_class(
    source: &mut Source,
    column_classes: &[String],
    class_names: &[String],
    file: &str,
    prefix: &str,
) -> Result<()> {
    let Predictions::Probabilities(probs) = &source.predictions else {
        return Ok(());
    };
    if let Some(stray) = column_classes.iter().find(|c| !class_names.contains(c)) {
        return Err(InputError::new(
            file,
            format!(
                "column '{prefix}{stray}' names no class (classes: {})",
                class_names.join(", ")
            ),
        )
        .into());
    }
    let from: Vec<usize> = class_names
        .iter()
        .map(|class| {
            column_classes
                .iter()
                .position(|c| c == class)
                .ok_or_else(|| {
                    InputError::new(
                        file,
                        format!("no probability column '{prefix}{class}' for class '{class}'"),
                    )
                })
        })
        .collect::<Result<_, _>>()?;
    let k = probs.classes();
    let mut values = Vec::with_capacity(probs.values().len());
    for i in 0..probs.len() {
        let row = probs.row(i);
        values.extend(from.iter().map(|&c| row[c]));
    }
    source.predictions = Predictions::Probabilities(Probabilities::new(k, values));
    Ok(())
}

/// Rows per slice when reading probabilities from Parquet.
const PARQUET_BATCH_ROWS: usize = 1 << 17;

/// The probability matrix being filled: sized on the first batch.
#[derive(Default)]
struct Matrix {
    classes: usize,
    values: Vec<f64>,
}

/// `p0..pK-1` (numbered from 0 without gaps), in class order.
fn wide_columns(schema: &Schema, prefix: &str) -> Option<Vec<String>> {
    let mut numbered: Vec<(usize, String)> = schema
        .iter_names()
        .filter_map(|name| {
            let rest = name.as_str().strip_prefix(prefix)?;
            (!rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()))
                .then(|| rest.parse().ok().map(|k: usize| (k, name.to_string())))
                .flatten()
        })
        .collect();
    numbered.sort();
    if numbered.is_empty() || numbered.iter().enumerate().any(|(i, (k, _))| *k != i) {
        return None;
    }
    Some(numbered.into_iter().map(|(_, n)| n).collect())
}

/// Probabilities of one batch (source rows `offset..`) from a list column or wide columns,
/// placed at label rows and checked per row: finite, in [0, 1], and (class probabilities)
/// summing to 1.
#[allow(clippy::too_many_arguments)]
fn fill_probabilities(
    frame: &DataFrame,
    file: &str,
    columns: &[String],
    probs_flag: &str,
    positions: &[Option<usize>],
    offset: usize,
    rows: usize,
    must_sum: bool,
    matrix: &mut Matrix,
) -> Result<()> {
    let wide =
        columns.len() > 1 || !matches!(frame.column(&columns[0])?.dtype(), DataType::List(_));
    let width = if wide { columns.len() } else { 0 };
    if wide {
        if matrix.values.is_empty() {
            matrix.classes = width;
            matrix.values = vec![0.0f64; rows * width];
        }
        let classes = matrix.classes;
        let mut arrays = Vec::with_capacity(classes);
        for name in columns {
            let role = ColumnRole::new(name, probs_flag);
            let column = table::require_type(frame, file, role, Expected::Number)?;
            let cast = column.cast(&DataType::Float64)?;
            let array = cast.f64().expect("cast").rechunk().into_owned();
            if array.null_count() > 0 {
                let row = array.iter().position(|v| v.is_none()).expect("has a null");
                return Err(InputError::new(file, "probability is null")
                    .column(name.as_str())
                    .row(offset + row + 1)
                    .into());
            }
            arrays.push(array);
        }
        let slices: Vec<&[f64]> = arrays
            .iter()
            .map(|a| a.cont_slice().expect("one chunk, no nulls"))
            .collect();
        // Columns to rows a tile of rows at a time, so the scattered writes stay in cache.
        const TILE: usize = 256;
        let aligned = positions
            .iter()
            .enumerate()
            .all(|(r, p)| *p == Some(offset + r));
        if aligned {
            // Source rows in label order (the usual case): tiles of the matrix are disjoint,
            // so they fill in parallel.
            use rayon::prelude::*;
            let block = &mut matrix.values[offset * classes..(offset + positions.len()) * classes];
            block
                .par_chunks_mut(TILE * classes)
                .enumerate()
                .for_each(|(t, tile)| {
                    let start = t * TILE;
                    let end = (start + TILE).min(positions.len());
                    let columns: Vec<&[f64]> = slices.iter().map(|c| &c[start..end]).collect();
                    for (k, column) in columns.iter().enumerate() {
                        for (r, &value) in column.iter().enumerate() {
                            tile[r * classes + k] = value;
                        }
                    }
                });
        } else {
            for start in (0..positions.len()).step_by(TILE) {
                let end = (start + TILE).min(positions.len());
                let slices: Vec<&[f64]> = slices.iter().map(|c| &c[start..end]).collect();
                for (k, column) in slices.iter().enumerate() {
                    for (position, &value) in positions[start..end].iter().zip(*column) {
                        if let Some(p) = position {
                            matrix.values[p * classes + k] = value;
                        }
                    }
                }
            }
        }
    } else {
        let name = &columns[0];
        let column = frame.column(name)?;
        let numeric =
            matches!(column.dtype(), DataType::List(inner) if inner.is_primitive_numeric());
        if !numeric {
            return Err(InputError::new(
                file,
                format!("expected lists of numbers, found {}", column.dtype()),
            )
            .column(name.as_str())
            .into());
        }
        let cast = column.cast(&DataType::List(Box::new(DataType::Float64)))?;
        let lists = cast.list().expect("cast");
        for (r, (row, position)) in lists.amortized_iter().zip(positions).enumerate() {
            let at = |message: String| {
                InputError::new(file, message)
                    .column(name.as_str())
                    .row(offset + r + 1)
            };
            let Some(row) = row else {
                return Err(at("probabilities are null".to_string()).into());
            };
            let row = row.as_ref().f64().expect("cast").clone();
            if matrix.values.is_empty() {
                if row.is_empty() {
                    return Err(at("no probabilities".to_string()).into());
                }
                matrix.classes = row.len();
                matrix.values = vec![0.0f64; rows * row.len()];
            }
            let k = matrix.classes;
            if k != row.len() {
                return Err(at(format!(
                    "{} probabilities, earlier rows have {k}",
                    row.len()
                ))
                .into());
            }
            if let Some(p) = position {
                for (slot, v) in matrix.values[p * k..(p + 1) * k].iter_mut().zip(row.iter()) {
                    *slot = v.ok_or_else(|| at("probability is null".to_string()))?;
                }
            }
        }
    }
    // Checks per source row, reported at the source's own row number.
    let classes = matrix.classes;
    for (r, position) in positions.iter().enumerate() {
        let Some(p) = position else { continue };
        let row = &matrix.values[p * classes..(p + 1) * classes];
        let at = |message: String| {
            let column = if wide {
                columns.join(",")
            } else {
                columns[0].clone()
            };
            InputError::new(file, message)
                .column(column)
                .row(offset + r + 1)
        };
        if let Some(problem) = table::probability_problem(row, must_sum, PROBABILITY_SUM_TOLERANCE)
        {
            return Err(at(problem).into());
        }
    }
    Ok(())
}

/// Embeddings placed at label rows (every label row must have one).
pub fn read_embeddings(
    path: &str,
    labels: &Labels,
    columns: &RevealColumns,
) -> Result<(usize, Vec<f32>)> {
    let (id_col, emb_col) = (columns.id.name, columns.embedding.name);
    let input = Input::open(path, None)?;
    let file = input.label().to_string();
    let schema = input.schema()?;
    let mut wanted = vec![col(emb_col)];
    if schema.contains(id_col) {
        wanted.push(col(id_col));
    }
    if !schema.contains(emb_col) {
        return Err(InputError::new(
            &file,
            format!("column not found (see {})", columns.embedding.flag),
        )
        .column(emb_col)
        .into());
    }
    let frame = input.collect(input.scan()?.select(wanted))?;
    table::require_rows(&frame, &file)?;
    let ids = read_ids(&frame, &file, columns.id, 0)?;
    check_unique(&ids, &file, id_col)?;
    let positions = align(&ids, 0, &file, id_col, labels)?;
    require_overlap(&positions, &file, id_col, labels)?;
    require_cover(&positions, labels, &file)?;
    let column = frame.column(emb_col)?;
    let numeric = match column.dtype() {
        DataType::List(inner) => inner.is_primitive_numeric(),
        _ => false,
    };
    if !numeric {
        return Err(InputError::new(
            &file,
            format!("expected lists of numbers, found {}", column.dtype()),
        )
        .column(emb_col)
        .into());
    }
    let cast = column.cast(&DataType::List(Box::new(DataType::Float32)))?;
    let mut dim = None;
    let mut values = Vec::new();
    for (r, (row, position)) in cast
        .list()
        .expect("cast")
        .amortized_iter()
        .zip(&positions)
        .enumerate()
    {
        let at = |message: String| InputError::new(&file, message).column(emb_col).row(r + 1);
        let Some(row) = row else {
            return Err(at("embedding is null".to_string()).into());
        };
        let row = row.as_ref().f32().expect("cast").clone();
        let d = *dim.get_or_insert(row.len());
        if d != row.len() || d == 0 {
            return Err(at(format!("{} values, earlier rows have {d}", row.len())).into());
        }
        if values.is_empty() {
            values = vec![0.0f32; labels.ids.len() * d];
        }
        if let Some(p) = position {
            for (slot, v) in values[p * d..(p + 1) * d].iter_mut().zip(row.iter()) {
                let v = v.ok_or_else(|| at("embedding value is null".to_string()))?;
                if !v.is_finite() {
                    return Err(at(format!("embedding value {v} is not finite")).into());
                }
                *slot = v;
            }
        }
    }
    Ok((dim.expect("rows"), values))
}

/// Class indices of every label row, or the first unknown class as an error.
pub fn label_indices(labels: &Labels, classes: &Classes, column: &str) -> Result<Vec<Vec<usize>>> {
    labels
        .values
        .iter()
        .enumerate()
        .map(|(row, values)| {
            values
                .iter()
                .map(|v| {
                    classes.lookup(v).ok_or_else(|| {
                        InputError::new(
                            &labels.file,
                            format!("unknown class '{}' (classes: {})", v, classes.preview()),
                        )
                        .column(column)
                        .row(row + 1)
                        .into()
                    })
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn source_specs() {
        let s = SourceSpec::from_str("m=a/b.parquet").unwrap();
        assert_eq!(
            (s.path.as_str(), s.kind, s.column),
            ("a/b.parquet", SourceKind::Probs, None)
        );
        let s = SourceSpec::from_str("m=b.parquet:hard").unwrap();
        assert_eq!((s.path.as_str(), s.kind), ("b.parquet", SourceKind::Hard));
        let s = SourceSpec::from_str("m=b.parquet:probs:pp_svc").unwrap();
        assert_eq!(
            (s.path.as_str(), s.kind, s.column.as_deref()),
            ("b.parquet", SourceKind::Probs, Some("pp_svc"))
        );
        let s = SourceSpec::from_str("m=c:/x/b.parquet:set").unwrap();
        assert_eq!(
            (s.path.as_str(), s.kind),
            ("c:/x/b.parquet", SourceKind::Set)
        );
        assert!(SourceSpec::from_str("b.parquet").is_err());
        assert!(SourceSpec::from_str("=b.parquet").is_err());
    }
}
