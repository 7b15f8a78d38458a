//! Token sequences from a table: prompt/response text tokenised with the model's tokenizer, or
//! `input_ids`/`labels` lists; each row checked against the model (length, vocabulary, loss).

use anyhow::Result;
use polars::prelude::*;
use tokenizers::Tokenizer;

use crate::error::{InputError, usage};
use crate::model::{IGNORE_INDEX, LanguageModel, Sequence, tokenizer};
use crate::table::{self, ColumnRole, Expected};

/// A text column without nulls.
pub fn text_column(frame: &DataFrame, file: &str, name: &str, flag: &str) -> Result<Vec<String>> {
    let column = table::require_type(frame, file, ColumnRole::new(name, flag), Expected::Text)?;
    let values = column.str().expect("checked string type");
    let mut texts = Vec::with_capacity(values.len());
    for (index, value) in values.iter().enumerate() {
        let text = value.ok_or_else(|| {
            InputError::new(file, "missing text (null)")
                .column(name)
                .row(index + 1)
        })?;
        texts.push(text.to_string());
    }
    Ok(texts)
}

/// An integer-list column without nulls.
pub fn id_list_column(frame: &DataFrame, file: &str, name: &str) -> Result<Vec<Vec<i64>>> {
    let column = table::require_type(
        frame,
        file,
        ColumnRole::new(name, name),
        Expected::IntegerList,
    )?;
    let cast = column
        .cast(&DataType::List(Box::new(DataType::Int64)))
        .map_err(|e| InputError::new(file, e.to_string()).column(name))?;
    let mut rows = Vec::with_capacity(cast.len());
    let lists = cast.list().expect("cast to list");
    for index in 0..lists.len() {
        let series = lists.get_as_series(index).ok_or_else(|| {
            InputError::new(file, "missing list (null)")
                .column(name)
                .row(index + 1)
        })?;
        let values = series.i64().expect("cast to i64");
        if values.null_count() > 0 {
            return Err(InputError::new(file, "null inside the list")
                .column(name)
                .row(index + 1)
                .into());
        }
        rows.push(values.into_no_null_iter().collect());
    }
    Ok(rows)
}

/// How rows become sequences, and the names used in errors.
pub struct Encoding<'a> {
    pub file: &'a str,
    pub prompt_col: &'a str,
    pub response_col: &'a str,
    /// Cut longer sequences to this many tokens; without it a row longer than the model's
    /// positions is an error.
    pub max_length: Option<usize>,
}

impl Encoding<'_> {
    fn limit(&self, lm: &LanguageModel) -> Result<usize> {
        let limit = lm.config.max_position_embeddings;
        if let Some(max_length) = self.max_length
            && max_length > limit
        {
            return Err(usage(format!(
                "--max-length {max_length} exceeds the model's {limit} positions (max_position_embeddings)"
            )));
        }
        Ok(self.max_length.unwrap_or(limit))
    }

    /// Prompt tokens without loss, response tokens and the end-of-text token with loss. Returns
    /// the sequences and how many were cut.
    pub fn encode_texts(
        &self,
        lm: &LanguageModel,
        tok: &Tokenizer,
        prompts: &[String],
        responses: &[String],
    ) -> Result<(Vec<Sequence>, usize)> {
        let eos = lm.config.eos_token_id;
        let mut sequences = Vec::with_capacity(prompts.len());
        let mut truncated = 0;
        for (index, (prompt, response)) in prompts.iter().zip(responses).enumerate() {
            let row = index + 1;
            let sequence = tokenizer::prompt_response(tok, prompt, response, eos).map_err(|e| {
                InputError::new(self.file, format!("cannot tokenise: {e}")).row(row)
            })?;
            if response.is_empty() || sequence.loss_tokens() == 0 {
                return Err(
                    InputError::new(self.file, "empty response (no tokens to train on)")
                        .column(self.response_col)
                        .row(row)
                        .into(),
                );
            }
            let (sequence, cut) = self.check(lm, sequence, row, self.prompt_col)?;
            truncated += usize::from(cut);
            sequences.push(sequence);
        }
        Ok((sequences, truncated))
    }

    /// `input_ids`/`labels` rows in the Hugging Face convention (equal lengths, -100 = no loss).
    pub fn encode_ids(
        &self,
        lm: &LanguageModel,
        input_ids: Vec<Vec<i64>>,
        labels: Vec<Vec<i64>>,
    ) -> Result<(Vec<Sequence>, usize)> {
        let mut sequences = Vec::with_capacity(input_ids.len());
        let mut truncated = 0;
        for (index, (ids, labels)) in input_ids.into_iter().zip(labels).enumerate() {
            let row = index + 1;
            if ids.len() != labels.len() {
                return Err(InputError::new(
                    self.file,
                    format!(
                        "{} labels for {} input_ids (they must have equal lengths)",
                        labels.len(),
                        ids.len()
                    ),
                )
                .column("labels")
                .row(row)
                .into());
            }
            if let Some(&bad) = labels
                .iter()
                .find(|&&l| l != IGNORE_INDEX && (l < 0 || l as usize >= lm.config.vocab_size))
            {
                return Err(InputError::new(
                    self.file,
                    format!(
                        "label {bad} is neither -100 nor a token id below vocab_size {}",
                        lm.config.vocab_size
                    ),
                )
                .column("labels")
                .row(row)
                .into());
            }
            let sequence = Sequence {
                input_ids: ids,
                labels,
            };
            if sequence.loss_tokens() == 0 {
                return Err(InputError::new(
                    self.file,
                    "no label carries loss (all -100 after the first position)",
                )
                .column("labels")
                .row(row)
                .into());
            }
            let (sequence, cut) = self.check(lm, sequence, row, "input_ids")?;
            truncated += usize::from(cut);
            sequences.push(sequence);
        }
        Ok((sequences, truncated))
    }

    /// Cut to the length limit (or fail), and check the ids against the vocabulary.
    fn check(
        &self,
        lm: &LanguageModel,
        mut sequence: Sequence,
        row: usize,
        prompt_col: &str,
    ) -> Result<(Sequence, bool)> {
        let limit = self.limit(lm)?;
        let positions = lm.config.max_position_embeddings;
        let mut cut = false;
        if sequence.len() > limit {
            if self.max_length.is_none() {
                return Err(InputError::new(
                    self.file,
                    format!(
                        "{} tokens, more than the model's {positions} positions \
                         (max_position_embeddings); cut long rows with --max-length",
                        sequence.len()
                    ),
                )
                .row(row)
                .into());
            }
            sequence.truncate(limit);
            cut = true;
            if sequence.loss_tokens() == 0 {
                return Err(InputError::new(
                    self.file,
                    format!(
                        "the prompt fills all {limit} tokens of --max-length; \
                         no response token is left"
                    ),
                )
                .column(prompt_col)
                .row(row)
                .into());
            }
        }
        if let Some(&bad) = sequence
            .input_ids
            .iter()
            .find(|&&t| t < 0 || t as usize >= lm.config.vocab_size)
        {
            return Err(InputError::new(
                self.file,
                format!(
                    "token id {bad} is outside the model's vocab_size {}",
                    lm.config.vocab_size
                ),
            )
            .row(row)
            .into());
        }
        Ok((sequence, cut))
    }
}
