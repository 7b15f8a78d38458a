//! Token sequences from a table: prompt/response text or whole conversations tokenised with the
//! model's tokenizer (through its chat template when one is in use), or `input_ids`/`labels`
//! lists; each row checked against the model (length, vocabulary, loss).

use anyhow::Result;
use polars::prelude::*;
use tokenizers::Tokenizer;

use crate::error::{InputError, usage};
use crate::model::chat::{self, ChatTemplate, Message};
use crate::model::{IGNORE_INDEX, LanguageModel, Sequence, tokenizer};
use crate::table::{self, ColumnRole, Expected};

/// The model's tokenizer, which text rows of `file` need (a usage error saying why it has none).
pub(crate) fn require_tokenizer<'a>(lm: &'a LanguageModel, file: &str) -> Result<&'a Tokenizer> {
    lm.tokenizer.as_ref().ok_or_else(|| {
        let why = lm
            .tokenizer_note
            .clone()
            .unwrap_or_else(|| "it has no tokenizer.json".to_string());
        usage(format!(
            "{file}: text rows need the model's tokenizer, but {why} (give input_ids/labels columns)"
        ))
    })
}

/// Text rows: prompt/response pairs, or whole conversations.
pub enum TextRows {
    PromptResponse {
        prompts: Vec<String>,
        responses: Vec<String>,
    },
    Conversations(Vec<Vec<Message>>),
}

impl TextRows {
    /// The conversations column when the table has it, else the prompt and response columns.
    pub fn read(frame: &DataFrame, file: &str, columns: &TextColumns) -> Result<TextRows> {
        if frame.column(columns.messages_col).is_ok() {
            return Ok(TextRows::Conversations(messages_column(
                frame,
                file,
                columns.messages_col,
            )?));
        }
        Ok(TextRows::PromptResponse {
            prompts: text_column(frame, file, columns.prompt.name, columns.prompt.flag)?,
            responses: text_column(frame, file, columns.response.name, columns.response.flag)?,
        })
    }

    pub fn len(&self) -> usize {
        match self {
            TextRows::PromptResponse { prompts, .. } => prompts.len(),
            TextRows::Conversations(rows) => rows.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The rows where `keep` is true, in order.
    pub fn select(self, keep: &[bool]) -> TextRows {
        fn pick<T>(items: Vec<T>, keep: &[bool]) -> Vec<T> {
            items
                .into_iter()
                .zip(keep)
                .filter_map(|(item, &k)| k.then_some(item))
                .collect()
        }
        match self {
            TextRows::PromptResponse { prompts, responses } => TextRows::PromptResponse {
                prompts: pick(prompts, keep),
                responses: pick(responses, keep),
            },
            TextRows::Conversations(rows) => TextRows::Conversations(pick(rows, keep)),
        }
    }

    /// Every text, for training a tokenizer.
    pub fn texts(&self) -> Box<dyn Iterator<Item = &str> + Send + '_> {
        match self {
            TextRows::PromptResponse { prompts, responses } => {
                Box::new(prompts.iter().chain(responses).map(String::as_str))
            }
            TextRows::Conversations(rows) => {
                Box::new(rows.iter().flatten().map(|m| m.content.as_str()))
            }
        }
    }

    /// The text that carries loss in each row: the response, or the assistant messages joined
    /// by blank lines.
    pub fn responses(&self) -> Vec<String> {
        match self {
            TextRows::PromptResponse { responses, .. } => responses.clone(),
            TextRows::Conversations(rows) => rows
                .iter()
                .map(|messages| {
                    messages
                        .iter()
                        .filter(|m| m.role == "assistant")
                        .map(|m| m.content.as_str())
                        .collect::<Vec<_>>()
                        .join("\n\n")
                })
                .collect(),
        }
    }
}

/// The text columns, with what names them (for hints in messages).
pub struct TextColumns<'a> {
    pub prompt: ColumnRole<'a>,
    pub response: ColumnRole<'a>,
    pub messages_col: &'a str,
}

/// What sets the knobs messages advise turning (the flags, for the command line).
#[derive(Debug, Clone, Copy)]
pub struct EncodeHints<'a> {
    pub max_length: &'a str,
    pub system: &'a str,
    pub chat_template: &'a str,
}

/// A column of conversations: lists of `{role, content}` structs, no nulls.
pub(crate) fn messages_column(
    frame: &DataFrame,
    file: &str,
    name: &str,
) -> Result<Vec<Vec<Message>>> {
    let column = frame.column(name)?;
    let not_messages = || {
        InputError::new(
            file,
            format!(
                "expected a list of {{role, content}} messages, found {}",
                column.dtype()
            ),
        )
        .column(name)
    };
    let DataType::List(inner) = column.dtype() else {
        return Err(not_messages().into());
    };
    let DataType::Struct(fields) = inner.as_ref() else {
        return Err(not_messages().into());
    };
    for field in ["role", "content"] {
        if !fields.iter().any(|f| f.name() == field) {
            return Err(not_messages().into());
        }
    }
    let lists = column.list()?;
    let mut rows = Vec::with_capacity(lists.len());
    for index in 0..lists.len() {
        let row = index + 1;
        let at = |message: String| InputError::new(file, message).column(name).row(row);
        let series = lists
            .get_as_series(index)
            .ok_or_else(|| at("missing conversation (null)".into()))?;
        let messages = series.struct_()?;
        let text = |field: &str| -> Result<Vec<Option<String>>> {
            let values = messages.field_by_name(field)?.cast(&DataType::String)?;
            Ok(values
                .str()?
                .iter()
                .map(|v| v.map(str::to_string))
                .collect())
        };
        let roles = text("role")?;
        let contents = text("content")?;
        let mut conversation = Vec::with_capacity(roles.len());
        for (position, (role, content)) in roles.into_iter().zip(contents).enumerate() {
            match (role, content) {
                (Some(role), Some(content)) if !role.is_empty() => {
                    conversation.push(Message { role, content })
                }
                _ => {
                    return Err(at(format!(
                        "message {} has no role or no content",
                        position + 1
                    ))
                    .into());
                }
            }
        }
        rows.push(conversation);
    }
    Ok(rows)
}

/// A text column without nulls.
pub(crate) fn text_column(
    frame: &DataFrame,
    file: &str,
    name: &str,
    flag: &str,
) -> Result<Vec<String>> {
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
pub(crate) fn id_list_column(frame: &DataFrame, file: &str, name: &str) -> Result<Vec<Vec<i64>>> {
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
    pub messages_col: &'a str,
    /// Cut longer sequences to this many tokens; without it a row longer than the model's
    /// positions is an error.
    pub max_length: Option<usize>,
    /// Rows are rendered as conversations with this template (loss on assistant messages).
    pub chat: Option<&'a ChatTemplate>,
    /// System message for conversations that have none.
    pub system: Option<&'a str>,
    /// Leave out rows whose prompt fills all of `max_length` (no response token would be
    /// left) instead of failing on them.
    pub skip_long: bool,
    pub hints: EncodeHints<'a>,
}

/// Encoded rows: the sequences, how many were cut to the length limit, and (with
/// `skip_long`) the 0-based rows left out because their prompt filled the limit.
#[derive(Debug, Default)]
pub struct Encoded {
    pub sequences: Vec<Sequence>,
    pub truncated: usize,
    pub skipped: Vec<usize>,
}

impl Encoded {
    fn add(&mut self, index: usize, checked: Option<(Sequence, bool)>) {
        match checked {
            Some((sequence, cut)) => {
                self.truncated += usize::from(cut);
                self.sequences.push(sequence);
            }
            None => self.skipped.push(index),
        }
    }
}

impl Encoding<'_> {
    fn limit(&self, lm: &LanguageModel) -> Result<usize> {
        let limit = lm.config.max_position_embeddings;
        if let Some(max_length) = self.max_length
            && max_length > limit
        {
            return Err(usage(format!(
                "{} {max_length} exceeds the model's {limit} positions (max_position_embeddings)",
                self.hints.max_length
            )));
        }
        Ok(self.max_length.unwrap_or(limit))
    }

    /// Text rows as sequences: through the chat template when there is one, else prompt then
    /// response. Returns the sequences and how many were cut.
    pub fn encode_rows(
        &self,
        lm: &LanguageModel,
        tok: &Tokenizer,
        rows: &TextRows,
    ) -> Result<Encoded> {
        let template = self.hints.chat_template;
        let no_template = format!(
            "no chat template is in use (the model has none, or {template} none); give {template} FILE"
        );
        if self.system.is_some() && self.chat.is_none() {
            return Err(usage(format!(
                "{} needs a chat template: {no_template}",
                self.hints.system
            )));
        }
        match (rows, self.chat) {
            (TextRows::PromptResponse { prompts, responses }, None) => {
                self.encode_texts(lm, tok, prompts, responses)
            }
            (TextRows::Conversations(_), None) => Err(usage(format!(
                "{}: column '{}' holds conversations, which need a chat template: {no_template}",
                self.file, self.messages_col
            ))),
            (TextRows::PromptResponse { prompts, responses }, Some(template)) => {
                let conversations = prompts
                    .iter()
                    .zip(responses)
                    .map(|(p, r)| vec![Message::new("user", p), Message::new("assistant", r)])
                    .collect();
                self.encode_conversations(lm, tok, template, conversations, false)
            }
            (TextRows::Conversations(conversations), Some(template)) => {
                self.encode_conversations(lm, tok, template, conversations.clone(), true)
            }
        }
    }

    /// What each row prompts the model with when it is to answer: the prompt (through the
    /// chat template with its generation prompt, when one is in use), or a conversation up to
    /// its last assistant message.
    pub(crate) fn encode_prompts(&self, tok: &Tokenizer, rows: &TextRows) -> Result<Vec<Vec<i64>>> {
        let ids = |ids: Vec<u32>| ids.into_iter().map(i64::from).collect::<Vec<_>>();
        let mut prompts = Vec::with_capacity(rows.len());
        match (rows, self.chat) {
            (TextRows::PromptResponse { prompts: texts, .. }, None) => {
                for (index, text) in texts.iter().enumerate() {
                    let encoded = tokenizer::encode(tok, text).map_err(|e| {
                        InputError::new(self.file, format!("cannot tokenise: {e}"))
                            .column(self.prompt_col)
                            .row(index + 1)
                    })?;
                    prompts.push(ids(encoded));
                }
            }
            (TextRows::Conversations(_), None) => {
                return Err(usage(format!(
                    "{}: column '{}' holds conversations, which need a chat template",
                    self.file, self.messages_col
                )));
            }
            (rows, Some(template)) => {
                let (column, conversations) = match rows {
                    TextRows::PromptResponse { prompts: texts, .. } => (
                        self.prompt_col,
                        texts
                            .iter()
                            .map(|p| vec![Message::new("user", p)])
                            .collect(),
                    ),
                    TextRows::Conversations(all) => (
                        self.messages_col,
                        all.iter()
                            .map(|messages| {
                                let last = messages.iter().rposition(|m| m.role == "assistant");
                                messages[..last.unwrap_or(messages.len())].to_vec()
                            })
                            .collect::<Vec<_>>(),
                    ),
                };
                for (index, messages) in conversations.into_iter().enumerate() {
                    let messages = self.with_system(messages);
                    let encoded = chat::encode_prompt(tok, template, &messages)
                        .map_err(|e| self.chat_error(template, e, column, index + 1))?;
                    prompts.push(ids(encoded));
                }
            }
        }
        Ok(prompts)
    }

    /// A failure to encode a row through the chat template: a fault of the template itself
    /// names the template (where it came from) and the row it was rendering; anything else
    /// names the row.
    fn chat_error(
        &self,
        template: &ChatTemplate,
        err: chat::ChatError,
        column: &str,
        row: usize,
    ) -> InputError {
        match err {
            chat::ChatError::Template(_) => InputError::new(
                template.origin(),
                format!("{err} (while rendering row {row} of {})", self.file),
            ),
            other => InputError::new(self.file, other.to_string())
                .column(column)
                .row(row),
        }
    }

    /// The system message first, where the conversation has none.
    fn with_system(&self, mut messages: Vec<Message>) -> Vec<Message> {
        if let Some(system) = self.system
            && messages.first().is_none_or(|m| m.role != "system")
        {
            messages.insert(0, Message::new("system", system));
        }
        messages
    }

    fn encode_conversations(
        &self,
        lm: &LanguageModel,
        tok: &Tokenizer,
        template: &ChatTemplate,
        conversations: Vec<Vec<Message>>,
        from_messages: bool,
    ) -> Result<Encoded> {
        let mut encoded = Encoded {
            sequences: Vec::with_capacity(conversations.len()),
            ..Encoded::default()
        };
        for (index, messages) in conversations.into_iter().enumerate() {
            let row = index + 1;
            let messages = self.with_system(messages);
            let column = if from_messages {
                self.messages_col
            } else {
                self.response_col
            };
            let (_, sequence) = chat::encode_conversation(tok, template, &messages)
                .map_err(|e| self.chat_error(template, e, column, row))?;
            if sequence.loss_tokens() == 0 {
                return Err(InputError::new(
                    self.file,
                    "empty assistant message (no tokens to train on)",
                )
                .column(column)
                .row(row)
                .into());
            }
            let prompt_col = if from_messages {
                self.messages_col
            } else {
                self.prompt_col
            };
            encoded.add(index, self.check(lm, sequence, row, prompt_col)?);
        }
        Ok(encoded)
    }

    /// Prompt tokens without loss, response tokens and the end-of-text token with loss. Returns
    /// the sequences and how many were cut.
    pub(crate) fn encode_texts(
        &self,
        lm: &LanguageModel,
        tok: &Tokenizer,
        prompts: &[String],
        responses: &[String],
    ) -> Result<Encoded> {
        let eos = lm.config.eos_token_id;
        let mut encoded = Encoded {
            sequences: Vec::with_capacity(prompts.len()),
            ..Encoded::default()
        };
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
            encoded.add(index, self.check(lm, sequence, row, self.prompt_col)?);
        }
        Ok(encoded)
    }

    /// `input_ids`/`labels` rows in the Hugging Face convention (equal lengths, -100 = no loss).
    pub(crate) fn encode_ids(
        &self,
        lm: &LanguageModel,
        input_ids: Vec<Vec<i64>>,
        labels: Vec<Vec<i64>>,
    ) -> Result<Encoded> {
        let mut encoded = Encoded {
            sequences: Vec::with_capacity(input_ids.len()),
            ..Encoded::default()
        };
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
            encoded.add(index, self.check(lm, sequence, row, "input_ids")?);
        }
        Ok(encoded)
    }

    /// Cut to the length limit (or fail), and check the ids against the vocabulary; `None`
    /// for a row left out by `skip_long`.
    fn check(
        &self,
        lm: &LanguageModel,
        mut sequence: Sequence,
        row: usize,
        prompt_col: &str,
    ) -> Result<Option<(Sequence, bool)>> {
        let limit = self.limit(lm)?;
        let positions = lm.config.max_position_embeddings;
        let mut cut = false;
        if sequence.len() > limit {
            if self.max_length.is_none() {
                return Err(InputError::new(
                    self.file,
                    format!(
                        "{} tokens, more than the model's {positions} positions \
                         (max_position_embeddings); cut long rows with {}",
                        sequence.len(),
                        self.hints.max_length
                    ),
                )
                .row(row)
                .into());
            }
            sequence.truncate(limit);
            cut = true;
            if sequence.loss_tokens() == 0 {
                if self.skip_long {
                    return Ok(None);
                }
                return Err(InputError::new(
                    self.file,
                    format!(
                        "the prompt fills all {limit} tokens of {0}; no response token is left \
                         (raise {0}, shorten or leave out the row (train's --skip-long leaves \
                         out every such row), or use a larger vocabulary, which makes fewer \
                         tokens: train's --vocab-size)",
                        self.hints.max_length
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
        Ok(Some((sequence, cut)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame() -> DataFrame {
        df!(
            "prompt" => ["1+1?", "2+2?", "3+3?"],
            "response" => ["2", "4", "6"],
        )
        .unwrap()
    }

    fn columns() -> TextColumns<'static> {
        TextColumns {
            prompt: ColumnRole::new("prompt", "--prompt-col"),
            response: ColumnRole::new("response", "--response-col"),
            messages_col: "messages",
        }
    }

    #[test]
    fn prompt_response_rows_are_read_selected_and_their_responses_kept() {
        let rows = TextRows::read(&frame(), "t.jsonl", &columns()).unwrap();
        assert_eq!(rows.len(), 3);
        let kept = rows.select(&[true, false, true]);
        assert_eq!(kept.responses(), ["2", "6"]);
        assert_eq!(kept.texts().collect::<Vec<_>>(), ["1+1?", "3+3?", "2", "6"]);
    }

    #[test]
    fn conversations_keep_their_assistant_turns_as_responses() {
        let rows = TextRows::Conversations(vec![vec![
            Message::new("user", "hi"),
            Message::new("assistant", "a"),
            Message::new("user", "more"),
            Message::new("assistant", "b"),
        ]]);
        assert_eq!(rows.responses(), ["a\n\nb"]);
        assert!(!rows.is_empty());
    }

    #[test]
    fn text_and_id_columns_name_the_null_row() {
        let nulls = df!("prompt" => [Some("a"), None]).unwrap();
        assert_eq!(
            text_column(&nulls, "t.csv", "prompt", "--prompt-col")
                .unwrap_err()
                .to_string(),
            "t.csv: column 'prompt', row 2: missing text (null)"
        );
        let ids = df!("input_ids" => [Series::new("".into(), [1i64, 2])]).unwrap();
        assert_eq!(
            id_list_column(&ids, "t.parquet", "input_ids").unwrap(),
            [vec![1, 2]]
        );
    }
}
