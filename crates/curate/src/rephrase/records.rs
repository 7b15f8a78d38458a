//! Rephrase's tables: the traces read from the input, and the records, rejects and summary
//! written from what was rephrased.

use std::collections::BTreeMap;

use anyhow::Result;
use polars::prelude::*;
use serde_json::{Value, json};

use super::{Reject, Rephrased};
use crate::error::InputError;
use crate::table::{self, ColumnRole, Expected, Format, Input, Shard};

/// One input row.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    pub id: Value,
    pub question: String,
    pub response: String,
    /// The reference answer; blank ones are none.
    pub reference: Option<String>,
}

/// Which columns hold a trace.
pub struct TraceColumns<'a> {
    /// When not `id_explicit`, row indices stand in for a missing id column.
    pub id: ColumnRole<'a>,
    pub id_explicit: bool,
    pub question: ColumnRole<'a>,
    pub response: ColumnRole<'a>,
    /// Read when present (numbers are compared as text).
    pub reference: &'a str,
}

/// How each rephrased trace becomes output rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordFormat {
    /// `{id, prompt, completion}`: every unit rendered in one completion.
    Completion,
    /// `{id, messages: [{role, content}, ...]}`: one assistant turn per unit.
    Messages,
    /// `{id, conversations: [{from, value}, ...]}`.
    Sharegpt,
    /// One row per unit, with its span in the trace, answer and correctness.
    Turns,
}

/// Characters of a response's end kept in its reject row, where a missing or unreadable
/// conclusion would be.
pub const REJECT_TAIL_CHARS: usize = 200;

/// The reject row of a trace.
pub fn reject_record(trace: &Trace, reason: Reject, detail: Option<&str>) -> Value {
    json!({
        "id": trace.id,
        "reason": reason.code(),
        "detail": detail,
        "tail": tail(&trace.response, REJECT_TAIL_CHARS),
        "question": trace.question,
        "response": trace.response,
        "reference": trace.reference,
    })
}

/// The last `chars` characters of `text`.
fn tail(text: &str, chars: usize) -> &str {
    let start = text
        .char_indices()
        .rev()
        .nth(chars.saturating_sub(1))
        .map_or(0, |(at, _)| at);
    if chars == 0 { "" } else { &text[start..] }
}

/// The traces of `shard`, checked over the whole input (ids unique, no nulls).
pub fn read_traces(input: &Input, columns: &TraceColumns, shard: Shard) -> Result<Vec<Trace>> {
    let frame = input.read()?;
    let file = input.label();
    table::require_rows(&frame, file)?;
    let ids = table::id_column(&frame, file, columns.id, columns.id_explicit)?;
    let ids: Vec<Value> = (0..frame.height())
        .map(|i| table::to_json(&ids.get(i).expect("in range")))
        .collect();
    let text = |role: ColumnRole| -> Result<Vec<Option<String>>> {
        let column = table::require_type(&frame, file, role, Expected::Text)?;
        Ok(column
            .str()
            .expect("checked")
            .iter()
            .map(|v| v.map(str::to_string))
            .collect())
    };
    let questions = text(columns.question)?;
    let responses = text(columns.response)?;
    let references = if frame.column(columns.reference).is_ok() {
        let column = frame.column(columns.reference)?;
        // Numeric references are fine: compare their text.
        let cast = column
            .cast(&DataType::String)
            .map_err(|e| InputError::new(file, e.to_string()).column(columns.reference))?;
        cast.str()
            .expect("cast")
            .iter()
            .map(|v| v.map(str::to_string))
            .collect()
    } else {
        vec![None; frame.height()]
    };
    let mut traces = Vec::with_capacity(frame.height());
    for (row, ((id, question), (response, reference))) in ids
        .into_iter()
        .zip(questions)
        .zip(responses.into_iter().zip(references))
        .enumerate()
    {
        let null = |column: &str| {
            InputError::new(file, "value is null")
                .column(column)
                .row(row + 1)
        };
        traces.push(Trace {
            id,
            question: question.ok_or_else(|| null(columns.question.name))?,
            response: response.ok_or_else(|| null(columns.response.name))?,
            reference: reference.filter(|r| !r.trim().is_empty()),
        });
    }
    let rows = shard.rows(traces.len());
    traces.truncate(rows.end);
    traces.drain(..rows.start);
    Ok(traces)
}

/// The output record(s) of one rephrased trace.
pub fn records(
    trace: &Trace,
    done: &Rephrased,
    format: RecordFormat,
    continue_prompt: &str,
) -> Vec<Value> {
    match format {
        RecordFormat::Completion => vec![json!({
            "id": trace.id,
            "prompt": trace.question,
            "completion": done.completion(),
        })],
        RecordFormat::Messages => {
            let mut messages = vec![json!({"role": "user", "content": trace.question})];
            for (i, unit) in done.units.iter().enumerate() {
                if i > 0 {
                    messages.push(json!({"role": "user", "content": continue_prompt}));
                }
                messages.push(json!({"role": "assistant", "content": unit.render()}));
            }
            vec![json!({"id": trace.id, "messages": messages})]
        }
        RecordFormat::Sharegpt => {
            let mut turns = vec![json!({"from": "human", "value": trace.question})];
            for (i, unit) in done.units.iter().enumerate() {
                if i > 0 {
                    turns.push(json!({"from": "human", "value": continue_prompt}));
                }
                turns.push(json!({"from": "gpt", "value": unit.render()}));
            }
            vec![json!({"id": trace.id, "conversations": turns})]
        }
        RecordFormat::Turns => done
            .units
            .iter()
            .enumerate()
            .map(|(i, unit)| {
                let mut row = json!({
                    "id": trace.id,
                    "unit": i + 1,
                    "units": done.units.len(),
                    "span_start": unit.span.as_ref().map(|s| s.start),
                    "span_end": unit.span.as_ref().map(|s| s.end),
                    "final_start": done.final_start,
                    "segments": unit.segments,
                    "opened_by": unit.opened_by.map(|k| format!("{k:?}").to_lowercase()),
                    "thinking": unit.thinking,
                    "answer": unit.answer,
                    "answer_value": unit.value,
                    "answer_kind": unit.answer_kind.map(|k| format!("{k:?}").to_lowercase()),
                    "correct": unit.correct,
                });
                if let Some(drift) = done.drift {
                    row["drift"] = json!(drift);
                }
                row
            })
            .collect(),
    }
}

/// Records as a table: JSON Lines parsed by polars (nested lists of structs included).
/// `label` names the table in errors.
pub fn records_frame(label: &str, records: &[Value]) -> Result<DataFrame> {
    if records.is_empty() {
        // An empty table still needs a schema: a single id column.
        let frame = DataFrame::new_infer_height(vec![Column::new("id".into(), Vec::<i64>::new())])?;
        return Ok(frame);
    }
    let mut bytes = Vec::new();
    for record in records {
        serde_json::to_writer(&mut bytes, record)?;
        bytes.push(b'\n');
    }
    Ok(Input::from_bytes(label, bytes, Format::Jsonl)?.read()?)
}

/// What a run accepted and rejected, for the summary.
#[derive(Debug, Default)]
pub struct Stats {
    pub accepted: usize,
    pub units: Vec<usize>,
    pub before: Vec<usize>,
    pub after: Vec<usize>,
    pub with_reference: usize,
    pub first_correct: BTreeMap<usize, usize>,
    pub never_correct: usize,
    pub rejects: BTreeMap<Reject, usize>,
    /// Rewrite mode: each accepted record's drift from its original thinking.
    pub drift: Vec<f64>,
}

impl Stats {
    /// Count an accepted record.
    pub fn add(&mut self, done: &Rephrased, has_reference: bool) {
        self.accepted += 1;
        self.units.push(done.units.len());
        self.before.push(done.chars_to_first_answer_before);
        self.after.push(done.chars_to_first_answer_after);
        self.drift.extend(done.drift);
        if has_reference {
            self.with_reference += 1;
            match done.first_correct_unit {
                Some(unit) => *self.first_correct.entry(unit).or_default() += 1,
                None => self.never_correct += 1,
            }
        }
    }

    /// The summary document.
    pub fn json(&self, total: usize, markers_version: &str) -> Value {
        let mean = |v: &[usize]| {
            if v.is_empty() {
                0.0
            } else {
                v.iter().sum::<usize>() as f64 / v.len() as f64
            }
        };
        // The middle value, or the mean of the two middle values of an even count.
        let median = |v: &[usize]| -> f64 {
            let mut s = v.to_vec();
            s.sort_unstable();
            match s.len() {
                0 => 0.0,
                n if n % 2 == 1 => s[n / 2] as f64,
                n => (s[n / 2 - 1] + s[n / 2]) as f64 / 2.0,
            }
        };
        let mut histogram: BTreeMap<usize, usize> = BTreeMap::new();
        for &u in &self.units {
            *histogram.entry(u).or_default() += 1;
        }
        let first_already = self.first_correct.get(&1).copied().unwrap_or(0);
        let mut summary = json!({
            "records": total,
            "accepted": self.accepted,
            "rejected": total - self.accepted,
            "rejects_by_reason": self.rejects.iter().map(|(r, n)| (r.code().to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
            "markers_version": markers_version,
            "units_per_example": {
                "mean": mean(&self.units),
                "median": median(&self.units),
                "histogram": histogram.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            },
            "chars_to_first_answer": {
                "before_mean": mean(&self.before),
                "after_mean": mean(&self.after),
                "before_median": median(&self.before),
                "after_median": median(&self.after),
            },
            "with_reference": self.with_reference,
            "first_correct_unit": self.first_correct.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "never_correct": self.never_correct,
            "first_answer_correct_share": if self.with_reference == 0 { Value::Null } else { json!(first_already as f64 / self.with_reference as f64) },
        });
        if !self.drift.is_empty() {
            let max = self.drift.iter().copied().fold(0.0, f64::max);
            summary["drift"] = json!({
                "mean": self.drift.iter().sum::<f64>() / self.drift.len() as f64,
                "max": max,
            });
        }
        summary
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rephrase::units::{Markers, UnitOptions};
    use crate::rephrase::{Settings, rephrase_rules};

    const R1: &str = "<think>\nFirst, 6 * 7 = 42, so the answer is 42.\n\n\
Wait, the question asks for half of it.\n\nHalf of 42 is 21. So the answer is \\boxed{21}.\n</think>\n\nThe answer is $\\boxed{21}$.";

    fn rephrased() -> Rephrased {
        let settings = Settings {
            markers: Markers::bundled(),
            units: UnitOptions::default(),
            think_tags: true,
            require_correct: false,
        };
        rephrase_rules(R1, Some("21"), &settings).unwrap()
    }

    fn columns() -> TraceColumns<'static> {
        TraceColumns {
            id: ColumnRole::new("id", "the id"),
            id_explicit: false,
            question: ColumnRole::new("question", "the question"),
            response: ColumnRole::new("response", "the response"),
            reference: "reference",
        }
    }

    #[test]
    fn reject_tails_count_characters() {
        assert_eq!(tail("abcdef", 3), "def");
        assert_eq!(tail("ab", 3), "ab");
        assert_eq!(tail("été = 90", 7), "té = 90");
        assert_eq!(tail("abc", 0), "");
    }

    #[test]
    fn traces_are_read_checked_and_sharded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        let rows = r#"{"question": "q1", "response": "r1", "reference": 7}
{"question": "q2", "response": "r2", "reference": " "}
{"question": "q3", "response": "r3", "reference": null}
"#;
        std::fs::write(&path, rows).unwrap();
        let input = Input::open(path.to_str().unwrap(), None).unwrap();
        let all = read_traces(&input, &columns(), Shard::WHOLE).unwrap();
        assert_eq!(all.len(), 3);
        // Row indices stand in for ids; numeric references are text; blank ones are none.
        assert_eq!(all[1].id, json!(1));
        assert_eq!(all[0].reference.as_deref(), Some("7"));
        assert_eq!(all[1].reference, None);
        let part = read_traces(&input, &columns(), Shard { index: 1, count: 2 }).unwrap();
        assert_eq!(part[0].question, all[part.len() - 1].question);

        let null_question = "{\"question\": \"q\", \"response\": \"r\"}\n{\"question\": null, \"response\": \"r\"}\n";
        std::fs::write(&path, null_question).unwrap();
        let input = Input::open(path.to_str().unwrap(), None).unwrap();
        let err = read_traces(&input, &columns(), Shard::WHOLE).unwrap_err();
        assert!(
            err.to_string().contains("column 'question', row 2"),
            "{err}"
        );
    }

    #[test]
    fn each_format_shapes_the_units_and_the_table_reads_them() {
        let done = rephrased();
        let trace = Trace {
            id: json!("a"),
            question: "What is half of 6 * 7?".into(),
            response: R1.into(),
            reference: Some("21".into()),
        };
        let units = done.units.len();
        assert!(units >= 2);
        let completion = records(&trace, &done, RecordFormat::Completion, "go on");
        assert_eq!(completion.len(), 1);
        assert!(
            completion[0]["completion"]
                .as_str()
                .unwrap()
                .contains("<think>")
        );
        let messages = records(&trace, &done, RecordFormat::Messages, "go on");
        // The question, then each unit with a continue prompt between units.
        assert_eq!(messages[0]["messages"].as_array().unwrap().len(), 2 * units);
        assert_eq!(messages[0]["messages"][2]["content"], "go on");
        let sharegpt = records(&trace, &done, RecordFormat::Sharegpt, "go on");
        assert_eq!(sharegpt[0]["conversations"][0]["from"], "human");
        let turns = records(&trace, &done, RecordFormat::Turns, "go on");
        assert_eq!(turns.len(), units);
        assert_eq!(turns[units - 1]["correct"], true);

        let frame = records_frame("out", &turns).unwrap();
        assert_eq!(frame.height(), units);
        assert!(records_frame("out", &[]).unwrap().column("id").is_ok());

        let mut stats = Stats::default();
        stats.add(&done, true);
        *stats.rejects.entry(Reject::EmptyThinking).or_default() += 1;
        let summary = stats.json(2, "v1");
        assert_eq!(
            (summary["accepted"].clone(), summary["rejected"].clone()),
            (json!(1), json!(1))
        );
        assert_eq!(summary["with_reference"], 1);
        assert_eq!(
            summary["rejects_by_reason"][Reject::EmptyThinking.code()],
            1
        );
        let reject = reject_record(&trace, Reject::EmptyThinking, None);
        assert_eq!(reject["reason"], Reject::EmptyThinking.code());
    }
}
