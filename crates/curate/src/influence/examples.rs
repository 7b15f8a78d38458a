//! Training and query tables as token sequences with the columns carried to the outputs.

use std::ops::Range;

use anyhow::Result;
use polars::prelude::*;

use crate::model::encode::{self as sequences, EncodeHints, Encoding, TextColumns, TextRows};
use crate::model::{ChatTemplate, IGNORE_INDEX, LanguageModel, Sequence};
use crate::table::{self, ColumnRole, Input, InputDigest};

/// One input table, tokenised.
pub struct Examples {
    pub file: String,
    pub digest: InputDigest,
    /// The id column (or row indices), as read.
    pub ids: Column,
    pub sequences: Vec<Sequence>,
    pub truncated: usize,
    /// `domain` and `difficulty` as read (carried to outputs) and as text (for grouping).
    pub domain: Option<(Column, Vec<String>)>,
    pub difficulty: Option<(Column, Vec<String>)>,
    /// The response text, where the table has one (previews).
    pub responses: Option<Vec<String>>,
    /// Reference answers, for segmenting a response at its answer.
    pub answers: Option<Vec<Option<String>>>,
    /// Rows flagged as correctly answered (queries); a null verdict counts as not correct.
    pub correct: Option<Vec<bool>>,
    /// Rows whose verdict is null (no reference answer to check against).
    pub correct_unknown: usize,
}

/// Which columns hold what, and how text becomes tokens.
pub struct ReadOptions<'a> {
    /// The id column; when not `id_explicit`, row indices stand in for a missing one.
    pub id: ColumnRole<'a>,
    pub id_explicit: bool,
    pub text: TextColumns<'a>,
    pub chat: Option<&'a ChatTemplate>,
    pub system: Option<&'a str>,
    pub max_length: Option<usize>,
    /// Reference answers (for segmenting at the answer), read when the column is present.
    pub answer_col: Option<&'a str>,
    /// Correctness verdicts (queries), read when the column is present.
    pub correct: Option<ColumnRole<'a>>,
    /// What sets the knobs messages advise turning.
    pub hints: EncodeHints<'a>,
}

impl Examples {
    pub fn len(&self) -> usize {
        self.sequences.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sequences.is_empty()
    }

    /// The ids of `rows`, in order.
    pub(crate) fn ids_of(&self, rows: &[u32]) -> PolarsResult<Column> {
        take(&self.ids, rows)
    }
}

/// Characters of each response a gradient index keeps, for previews.
const PREVIEW_CHARS: usize = 200;

impl Examples {
    /// The columns outputs carry for `rows`: `train_id`, `domain` and `difficulty` as read,
    /// and `response` cut to a preview. What a gradient index keeps of its training rows.
    pub fn carried_frame(&self, rows: Range<usize>) -> PolarsResult<DataFrame> {
        let index: Vec<u32> = rows.clone().map(|r| r as u32).collect();
        let mut columns = vec![take(&self.ids, &index)?.with_name("train_id".into())];
        for (name, carried) in [("domain", &self.domain), ("difficulty", &self.difficulty)] {
            if let Some((column, _)) = carried {
                columns.push(take(column, &index)?.with_name(name.into()));
            }
        }
        if let Some(responses) = &self.responses {
            let previews: Vec<String> = responses[rows]
                .iter()
                .map(|r| r.chars().take(PREVIEW_CHARS).collect())
                .collect();
            columns.push(Column::new("response".into(), previews));
        }
        DataFrame::new_infer_height(columns)
    }

    /// Training rows known only by their carried columns ([`Examples::carried_frame`]): ids,
    /// domain, difficulty and previews for outputs, no tokens.
    pub fn from_carried(file: &str, digest: InputDigest, frame: &DataFrame) -> Result<Examples> {
        let text = |name: &str| -> Result<Option<(Column, Vec<String>)>> {
            let Ok(column) = frame.column(name) else {
                return Ok(None);
            };
            let values = column
                .cast(&DataType::String)?
                .str()?
                .iter()
                .map(|v| v.unwrap_or("").to_string())
                .collect();
            Ok(Some((column.clone(), values)))
        };
        let ids = frame
            .column("train_id")
            .map_err(|_| anyhow::anyhow!("{file}: no train_id column"))?
            .clone()
            .with_name("id".into());
        Ok(Examples {
            file: file.to_string(),
            digest,
            sequences: vec![
                Sequence {
                    input_ids: Vec::new(),
                    labels: Vec::new(),
                };
                frame.height()
            ],
            ids,
            truncated: 0,
            domain: text("domain")?,
            difficulty: text("difficulty")?,
            responses: text("response")?.map(|(_, values)| values),
            answers: None,
            correct: None,
            correct_unknown: 0,
        })
    }
}

#[cfg(test)]
impl Examples {
    /// Rows with only ids and sequences, for tests of what is built from them.
    pub(crate) fn bare(file: &str, ids: Column, sequences: Vec<Sequence>) -> Examples {
        Examples {
            file: file.into(),
            digest: InputDigest {
                path: file.into(),
                sha256: String::new(),
                bytes: 0,
            },
            ids,
            sequences,
            truncated: 0,
            domain: None,
            difficulty: None,
            responses: None,
            answers: None,
            correct: None,
            correct_unknown: 0,
        }
    }
}

/// The values of `column` at `rows`, in order.
pub fn take(column: &Column, rows: &[u32]) -> PolarsResult<Column> {
    let index = IdxCa::from_vec("".into(), rows.iter().map(|&r| r as IdxSize).collect());
    column.take(&index)
}

/// Read `path`: `input_ids`/`labels` list columns when present, else prompt/response text.
pub fn read(path: &str, lm: &LanguageModel, options: &ReadOptions) -> Result<Examples> {
    let input = Input::open(path, None)?;
    let frame = input.read()?;
    let file = input.label().to_string();
    table::require_rows(&frame, &file)?;
    let ids = table::id_column(&frame, &file, options.id, options.id_explicit)?;
    let encoding = Encoding {
        file: &file,
        prompt_col: options.text.prompt.name,
        response_col: options.text.response.name,
        messages_col: options.text.messages_col,
        max_length: options.max_length,
        chat: options.chat,
        system: options.system,
        skip_long: false,
        hints: options.hints,
    };
    let has = |name: &str| frame.column(name).is_ok();
    let (sequences, truncated, responses) = if has("input_ids") {
        if !has("labels") {
            return Err(table::missing_column(
                &file,
                ColumnRole::new("labels", "labels (with input_ids)"),
                &frame
                    .get_column_names()
                    .iter()
                    .map(|n| n.as_str())
                    .collect::<Vec<_>>(),
            )
            .into());
        }
        let input_ids = sequences::id_list_column(&frame, &file, "input_ids")?;
        let labels = sequences::id_list_column(&frame, &file, "labels")?;
        let crate::model::encode::Encoded {
            sequences,
            truncated,
            ..
        } = encoding.encode_ids(lm, input_ids, labels)?;
        (sequences, truncated, None)
    } else {
        let tok = sequences::require_tokenizer(lm, &file)?;
        let rows = TextRows::read(&frame, &file, &options.text)?;
        let crate::model::encode::Encoded {
            sequences,
            truncated,
            ..
        } = encoding.encode_rows(lm, tok, &rows)?;
        (sequences, truncated, Some(rows.responses()))
    };
    let as_text = |name: &str| -> Result<Option<(Column, Vec<String>)>> {
        let Ok(column) = frame.column(name) else {
            return Ok(None);
        };
        let text = column.cast(&DataType::String)?;
        let values = text
            .str()?
            .iter()
            .map(|v| v.unwrap_or("").to_string())
            .collect();
        Ok(Some((column.clone(), values)))
    };
    let answers = match options.answer_col {
        Some(name) if has(name) => Some(
            frame
                .column(name)?
                .cast(&DataType::String)?
                .str()?
                .iter()
                .map(|v| v.map(str::to_string))
                .collect(),
        ),
        _ => None,
    };
    // A null verdict (`curate eval` writes one where a row has no reference answer) is not
    // known to be correct, so the row is left out like a false one.
    let (correct, correct_unknown) = match options.correct {
        Some(role) if has(role.name) => {
            let column = table::require_type(&frame, &file, role, table::Expected::Boolean)?;
            let values = column.bool()?;
            let flags: Vec<bool> = values.iter().map(|v| v.unwrap_or(false)).collect();
            (Some(flags), values.null_count())
        }
        _ => (None, 0),
    };
    Ok(Examples {
        digest: input.digest()?,
        ids,
        sequences,
        truncated,
        domain: as_text("domain")?,
        difficulty: as_text("difficulty")?,
        responses,
        answers,
        correct,
        correct_unknown,
        file,
    })
}

/// Positions whose token is a prediction target (the response).
pub fn is_response(sequence: &Sequence) -> Vec<bool> {
    sequence.labels.iter().map(|&l| l != IGNORE_INDEX).collect()
}
