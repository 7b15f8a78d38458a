//! Evaluation results summed up: per-domain summaries of row losses and answer checks, and
//! arms (training recipes) compared over seeds with the gain of one over another.

use std::io::Write;

use anyhow::Result;
use polars::prelude::*;
use tokenizers::Tokenizer;

use crate::error::InputError;
use crate::model::encode::{self, Encoding, TextColumns, TextRows};
use crate::model::generate::greedy;
use crate::model::{IGNORE_INDEX, LanguageModel, Sequence};
use crate::rephrase::answer::{Target, explicit_answer};
use crate::table::{self, ColumnRole};
use crate::text::{Align, text_table};

/// What one row's evaluation gives.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RowResult {
    /// Summed loss and loss tokens, when the row has a response.
    pub loss: Option<(f64, usize)>,
    pub generation: Option<String>,
    pub predicted: Option<String>,
    /// None without a reference answer (or when nothing was generated).
    pub correct: Option<bool>,
}

/// One summary row: a domain (or `all`).
#[derive(Debug, Clone, PartialEq)]
pub struct SummaryRow {
    pub domain: String,
    pub rows: usize,
    pub loss_tokens: usize,
    /// Token-weighted mean loss: summed losses over summed loss tokens.
    pub mean_loss: Option<f64>,
    /// Rows with a reference answer, and how many were answered correctly.
    pub checked: usize,
    pub correct: usize,
}

/// Per domain in order of first appearance, then `all`.
pub fn summarize(
    results: &[RowResult],
    domains: Option<&[String]>,
    generated: bool,
) -> Vec<SummaryRow> {
    let mut names: Vec<String> = Vec::new();
    if let Some(domains) = domains {
        for d in domains {
            if !names.contains(d) {
                names.push(d.clone());
            }
        }
    }
    let row_of = |name: &str, keep: &dyn Fn(usize) -> bool| {
        let mut row = SummaryRow {
            domain: name.to_string(),
            rows: 0,
            loss_tokens: 0,
            mean_loss: None,
            checked: 0,
            correct: 0,
        };
        let mut total = 0.0;
        for (_, result) in results.iter().enumerate().filter(|&(i, _)| keep(i)) {
            row.rows += 1;
            if let Some((loss, tokens)) = result.loss {
                total += loss;
                row.loss_tokens += tokens;
            }
            if generated && let Some(correct) = result.correct {
                row.checked += 1;
                row.correct += usize::from(correct);
            }
        }
        if row.loss_tokens > 0 {
            row.mean_loss = Some(total / row.loss_tokens as f64);
        }
        row
    };
    let mut summary: Vec<SummaryRow> = names
        .iter()
        .map(|name| {
            let domains = domains.expect("names come from domains");
            row_of(name, &|i| domains[i] == *name)
        })
        .collect();
    summary.push(row_of("all", &|_| true));
    summary
}

/// One arm's runs: per run, the summed loss and loss tokens per domain (`all` last).
pub struct Arm {
    pub name: String,
    pub runs: Vec<Vec<(String, f64, f64)>>,
}

/// One row of the comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct ArmStats {
    pub arm: String,
    pub domain: String,
    pub runs: usize,
    pub mean: f64,
    pub std: Option<f64>,
    pub min: f64,
    pub max: f64,
}

/// Per domain: the token-mean loss of each run, then their mean, spread and range.
pub fn arm_stats(arm: &Arm) -> Vec<ArmStats> {
    let mut domains: Vec<String> = Vec::new();
    for run in &arm.runs {
        for (domain, _, _) in run {
            if !domains.contains(domain) {
                domains.push(domain.clone());
            }
        }
    }
    // `all` last.
    domains.sort_by_key(|d| d == "all");
    domains
        .into_iter()
        .map(|domain| {
            let values: Vec<f64> = arm
                .runs
                .iter()
                .filter_map(|run| run.iter().find(|(d, _, _)| *d == domain))
                .filter(|(_, _, tokens)| *tokens > 0.0)
                .map(|(_, loss, tokens)| loss / tokens)
                .collect();
            let n = values.len();
            let mean = values.iter().sum::<f64>() / n.max(1) as f64;
            let std = (n > 1).then(|| {
                (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
            });
            ArmStats {
                arm: arm.name.clone(),
                domain,
                runs: n,
                mean,
                std,
                min: values.iter().cloned().fold(f64::INFINITY, f64::min),
                max: values.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
            }
        })
        .collect()
}

/// Per domain the control's mean loss minus the candidate's (positive: the candidate is better).
pub fn gains(stats: &[ArmStats], candidate: &str, control: &str) -> Vec<(String, f64)> {
    stats
        .iter()
        .filter(|s| s.arm == candidate)
        .filter_map(|c| {
            stats
                .iter()
                .find(|s| s.arm == control && s.domain == c.domain)
                .map(|k| (c.domain.clone(), k.mean - c.mean))
        })
        .collect()
}

/// Sequences to score (absent when the rows have no response) and generation prompts.
pub struct EvalRows {
    pub sequences: Option<Vec<Sequence>>,
    pub prompts: Vec<Vec<i64>>,
    pub truncated: usize,
}

/// The rows of `frame` to score and, with `generate`, to answer: `input_ids`/`labels` lists,
/// or text in `columns`; generation alone needs no response.
pub fn read_rows(
    frame: &DataFrame,
    encoding: &Encoding,
    columns: &TextColumns,
    lm: &LanguageModel,
    generate: bool,
) -> Result<EvalRows> {
    let file = encoding.file;
    let has = |name: &str| frame.column(name).is_ok();
    if has("input_ids") {
        let input_ids = encode::id_list_column(frame, file, "input_ids")?;
        let labels = encode::id_list_column(frame, file, "labels")?;
        let crate::model::encode::Encoded {
            sequences,
            truncated,
            ..
        } = encoding.encode_ids(lm, input_ids, labels)?;
        // The prompt of an id row is what precedes its first label.
        let prompts = sequences
            .iter()
            .map(|s| {
                let first = s.labels.iter().skip(1).position(|&l| l != IGNORE_INDEX);
                s.input_ids[..first.map_or(s.len(), |p| p + 1)].to_vec()
            })
            .collect();
        return Ok(EvalRows {
            sequences: Some(sequences),
            prompts,
            truncated,
        });
    }
    let tok = encode::require_tokenizer(lm, file)?;
    // Generation alone needs no response.
    let answers_only = generate && !has(encoding.messages_col) && !has(encoding.response_col);
    let text_rows = if answers_only {
        let prompts = encode::text_column(frame, file, columns.prompt.name, columns.prompt.flag)?;
        TextRows::PromptResponse {
            responses: vec![String::new(); prompts.len()],
            prompts,
        }
    } else {
        TextRows::read(frame, file, columns)?
    };
    let (sequences, truncated) = if answers_only {
        (None, 0)
    } else {
        let crate::model::encode::Encoded {
            sequences,
            truncated,
            ..
        } = encoding.encode_rows(lm, tok, &text_rows)?;
        (Some(sequences), truncated)
    };
    let prompts = if generate {
        encoding.encode_prompts(tok, &text_rows)?
    } else {
        Vec::new()
    };
    Ok(EvalRows {
        sequences,
        prompts,
        truncated,
    })
}

/// Greedy answers, their extracted final answers, and the verdict against each reference.
/// How answers are generated.
pub struct Generation<'a> {
    /// Names the rows in errors.
    pub file: &'a str,
    pub max_new_tokens: usize,
    pub batch_size: usize,
    /// What sets `max_new_tokens` (for the hint in messages).
    pub max_new_tokens_hint: &'a str,
}

/// Refuse the first prompt with no room for its answer in the model's positions (before any
/// other work, so a run does not fail after its loss pass).
pub fn check_prompts(
    lm: &LanguageModel,
    prompts: &[Vec<i64>],
    generation: &Generation,
) -> Result<()> {
    let positions = lm.config.max_position_embeddings;
    for (index, prompt) in prompts.iter().enumerate() {
        if prompt.len() + generation.max_new_tokens > positions {
            return Err(InputError::new(
                generation.file,
                format!(
                    "a prompt of {} tokens and {} {} exceed the model's {positions} positions",
                    prompt.len(),
                    generation.max_new_tokens_hint,
                    generation.max_new_tokens
                ),
            )
            .row(index + 1)
            .into());
        }
    }
    Ok(())
}

/// Answer every prompt greedily, extract the final answers and check them against the
/// references; `on_batch` sees each batch's row count and may stop the run.
pub fn generate_answers(
    lm: &LanguageModel,
    tok: &Tokenizer,
    prompts: &[Vec<i64>],
    references: &[Option<String>],
    generation: &Generation,
    results: &mut [RowResult],
    on_batch: &mut dyn FnMut(usize) -> Result<()>,
) -> Result<()> {
    check_prompts(lm, prompts, generation)?;
    // Decoding stops at the end-of-text token and at any special token (the template's
    // end-of-turn marker).
    let mut stop: Vec<i64> = tok
        .get_added_tokens_decoder()
        .into_iter()
        .filter(|(_, token)| token.special)
        .map(|(id, _)| id as i64)
        .collect();
    stop.extend(lm.config.eos_token_id.map(i64::from));
    let mut order: Vec<usize> = (0..prompts.len()).collect();
    order.sort_by_key(|&i| (prompts[i].len(), i));
    for chunk in order.chunks(generation.batch_size.max(1)) {
        let batch: Vec<Vec<i64>> = chunk.iter().map(|&i| prompts[i].clone()).collect();
        for (&row, generated) in
            chunk
                .iter()
                .zip(greedy(lm, &batch, generation.max_new_tokens, &stop))
        {
            let text = tok
                .decode(&generated.tokens, true)
                .map_err(|e| anyhow::anyhow!("cannot decode a generation: {e}"))?;
            let predicted = explicit_answer(&text).map(|found| found.text);
            let result = &mut results[row];
            result.correct = references[row].as_deref().map(|reference| {
                predicted
                    .as_deref()
                    .is_some_and(|p| Target::new(reference).matches(p))
            });
            result.predicted = predicted;
            result.generation = Some(text);
        }
        on_batch(chunk.len())?;
    }
    Ok(())
}

/// The domain of each row as text, when the table has the column.
pub fn domain_names(frame: &DataFrame, name: &str) -> PolarsResult<Option<Vec<String>>> {
    let Ok(column) = frame.column(name) else {
        return Ok(None);
    };
    let text = column.cast(&DataType::String)?;
    Ok(Some(
        text.str()?
            .iter()
            .map(|v| v.unwrap_or("").to_string())
            .collect(),
    ))
}

/// The evaluated table with each row's loss and, when `generated`, its answer and verdict.
pub fn with_results(
    mut frame: DataFrame,
    results: &[RowResult],
    generated: bool,
) -> PolarsResult<DataFrame> {
    let loss: Vec<Option<f64>> = results.iter().map(|r| r.loss.map(|(l, _)| l)).collect();
    let tokens: Vec<Option<u32>> = results
        .iter()
        .map(|r| r.loss.map(|(_, t)| t as u32))
        .collect();
    let mean: Vec<Option<f64>> = results
        .iter()
        .map(|r| r.loss.and_then(|(l, t)| (t > 0).then(|| l / t as f64)))
        .collect();
    let mut columns = vec![
        Column::new("loss".into(), loss),
        Column::new("loss_tokens".into(), tokens),
        Column::new("mean_loss".into(), mean),
    ];
    if generated {
        let text = |f: fn(&RowResult) -> Option<String>| -> Vec<Option<String>> {
            results.iter().map(f).collect()
        };
        columns.push(Column::new(
            "generation".into(),
            text(|r| r.generation.clone()),
        ));
        columns.push(Column::new(
            "predicted_answer".into(),
            text(|r| r.predicted.clone()),
        ));
        let correct: Vec<Option<bool>> = results.iter().map(|r| r.correct).collect();
        columns.push(Column::new("correct".into(), correct));
    }
    for column in columns {
        frame.with_column(column)?;
    }
    Ok(frame)
}

/// The per-domain summary as a table.
pub fn summary_frame(summary: &[SummaryRow], generated: bool) -> PolarsResult<DataFrame> {
    let mut columns = vec![
        Column::new(
            "domain".into(),
            summary.iter().map(|r| r.domain.clone()).collect::<Vec<_>>(),
        ),
        Column::new(
            "rows".into(),
            summary.iter().map(|r| r.rows as u64).collect::<Vec<_>>(),
        ),
        Column::new(
            "loss_tokens".into(),
            summary
                .iter()
                .map(|r| r.loss_tokens as u64)
                .collect::<Vec<_>>(),
        ),
        Column::new(
            "mean_loss".into(),
            summary.iter().map(|r| r.mean_loss).collect::<Vec<_>>(),
        ),
    ];
    if generated {
        columns.push(Column::new(
            "checked".into(),
            summary.iter().map(|r| r.checked as u64).collect::<Vec<_>>(),
        ));
        columns.push(Column::new(
            "correct".into(),
            summary.iter().map(|r| r.correct as u64).collect::<Vec<_>>(),
        ));
        columns.push(Column::new(
            "accuracy".into(),
            summary
                .iter()
                .map(|r| (r.checked > 0).then(|| r.correct as f64 / r.checked as f64))
                .collect::<Vec<_>>(),
        ));
    }
    DataFrame::new(summary.len(), columns)
}

/// Summed `loss` and `loss_tokens` of an eval output per domain (in order of first
/// appearance) and over all rows.
pub fn domain_losses(
    frame: &DataFrame,
    file: &str,
    domain_col: &str,
) -> Result<Vec<(String, f64, f64)>> {
    table::require_rows(frame, file)?;
    let role = |name: &'static str| ColumnRole::new(name, name);
    let losses = table::number_column(frame, file, role("loss"), "loss")?;
    let tokens = table::number_column(frame, file, role("loss_tokens"), "loss_tokens")?;
    let domains: Vec<String> = match frame.column(domain_col) {
        Ok(column) => column
            .cast(&DataType::String)?
            .str()?
            .iter()
            .map(|v| v.unwrap_or("").to_string())
            .collect(),
        Err(_) => vec![String::new(); frame.height()],
    };
    let mut out: Vec<(String, f64, f64)> = Vec::new();
    for ((domain, loss), tokens) in domains.iter().zip(&losses).zip(&tokens) {
        if domain.is_empty() {
            continue;
        }
        match out.iter_mut().find(|(d, _, _)| d == domain) {
            Some(entry) => {
                entry.1 += loss;
                entry.2 += tokens;
            }
            None => out.push((domain.clone(), *loss, *tokens)),
        }
    }
    let total_tokens: f64 = tokens.iter().sum();
    if total_tokens <= 0.0 {
        return Err(InputError::new(file, "no row carries loss tokens")
            .column("loss_tokens")
            .into());
    }
    out.push(("all".to_string(), losses.iter().sum(), total_tokens));
    Ok(out)
}

/// The comparison as a table; the `candidate` arm's rows carry its gain over the control.
pub fn comparison_frame(
    stats: &[ArmStats],
    gains: Option<&[(String, f64)]>,
    candidate: Option<&str>,
) -> PolarsResult<DataFrame> {
    let gain: Vec<Option<f64>> = stats
        .iter()
        .map(|s| {
            (Some(s.arm.as_str()) == candidate)
                .then(|| {
                    gains.and_then(|g| g.iter().find(|(d, _)| *d == s.domain).map(|(_, v)| *v))
                })
                .flatten()
        })
        .collect();
    DataFrame::new(
        stats.len(),
        vec![
            Column::new(
                "arm".into(),
                stats.iter().map(|s| s.arm.clone()).collect::<Vec<_>>(),
            ),
            Column::new(
                "domain".into(),
                stats.iter().map(|s| s.domain.clone()).collect::<Vec<_>>(),
            ),
            Column::new(
                "runs".into(),
                stats.iter().map(|s| s.runs as u32).collect::<Vec<_>>(),
            ),
            Column::new(
                "mean_loss".into(),
                stats.iter().map(|s| s.mean).collect::<Vec<_>>(),
            ),
            Column::new(
                "std_loss".into(),
                stats.iter().map(|s| s.std).collect::<Vec<_>>(),
            ),
            Column::new(
                "min_loss".into(),
                stats.iter().map(|s| s.min).collect::<Vec<_>>(),
            ),
            Column::new(
                "max_loss".into(),
                stats.iter().map(|s| s.max).collect::<Vec<_>>(),
            ),
            Column::new("gain_over_control".into(), gain),
        ],
    )
}

/// The per-domain summary as an aligned text table for people.
pub fn write_summary_text(
    out: &mut impl Write,
    summary: &[SummaryRow],
    generated: bool,
) -> std::io::Result<()> {
    let mut header = vec!["domain", "rows", "loss tokens", "mean loss"];
    if generated {
        header.push("correct");
    }
    let rows: Vec<Vec<String>> = summary
        .iter()
        .map(|r| {
            let mut row = vec![
                r.domain.clone(),
                r.rows.to_string(),
                r.loss_tokens.to_string(),
                r.mean_loss.map_or("-".into(), |l| format!("{l:.4}")),
            ];
            if generated {
                row.push(if r.checked > 0 {
                    format!("{}/{}", r.correct, r.checked)
                } else {
                    "-".into()
                });
            }
            row
        })
        .collect();
    let mut align = vec![Align::Left, Align::Right, Align::Right, Align::Right];
    if generated {
        align.push(Align::Right);
    }
    for line in text_table(&header, &rows, &align) {
        writeln!(out, "{line}")?;
    }
    Ok(())
}

/// The comparison as an aligned text table for people.
pub fn write_comparison_text(out: &mut impl Write, stats: &[ArmStats]) -> std::io::Result<()> {
    let rows: Vec<Vec<String>> = stats
        .iter()
        .map(|s| {
            vec![
                s.arm.clone(),
                s.domain.clone(),
                s.runs.to_string(),
                format!("{:.4}", s.mean),
                s.std.map_or("-".into(), |v| format!("{v:.4}")),
            ]
        })
        .collect();
    let align = [
        Align::Left,
        Align::Left,
        Align::Right,
        Align::Right,
        Align::Right,
    ];
    for line in text_table(
        &["arm", "domain", "runs", "mean loss", "std"],
        &rows,
        &align,
    ) {
        writeln!(out, "{line}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_lm() -> LanguageModel {
        use crate::model::{Architecture, LmConfig};
        let texts = ["What is 2 + 2? The answer is 4.", "Name a colour. Red."];
        let tokenizer =
            crate::model::tokenizer::train_byte_level_bpe(texts.iter().copied(), 300).unwrap();
        let mut config = LmConfig::new(
            Architecture::Llama,
            tokenizer.get_vocab_size(true),
            8,
            16,
            1,
            2,
            1,
        );
        config.max_position_embeddings = 64;
        config.eos_token_id = tokenizer.token_to_id(crate::model::tokenizer::END_OF_TEXT);
        let device = burn::tensor::Device::flex();
        LanguageModel::init(
            config,
            Some(tokenizer),
            0,
            &device,
            burn::tensor::DType::F32,
            false,
        )
        .unwrap()
    }

    #[test]
    fn rows_are_read_scored_and_answered() {
        let lm = tiny_lm();
        let frame = df!(
            "prompt" => ["What is 2 + 2?", "Name a colour."],
            "response" => ["The answer is 4.", "Red."],
            "reference" => [Some("4"), None],
        )
        .unwrap();
        let columns = TextColumns {
            prompt: ColumnRole::new("prompt", "the prompt"),
            response: ColumnRole::new("response", "the response"),
            messages_col: "messages",
        };
        let encoding = Encoding {
            file: "rows",
            prompt_col: "prompt",
            response_col: "response",
            messages_col: "messages",
            max_length: None,
            chat: None,
            system: None,
            skip_long: false,
            hints: encode::EncodeHints {
                max_length: "max",
                system: "system",
                chat_template: "template",
            },
        };
        let rows = read_rows(&frame, &encoding, &columns, &lm, true).unwrap();
        assert_eq!(rows.sequences.as_ref().unwrap().len(), 2);
        assert_eq!(rows.prompts.len(), 2);
        // Generation alone needs no response column.
        let prompts_only = frame.select(["prompt"]).unwrap();
        let rows_only = read_rows(&prompts_only, &encoding, &columns, &lm, true).unwrap();
        assert!(rows_only.sequences.is_none());
        assert_eq!(rows_only.prompts, rows.prompts);

        let mut results = vec![RowResult::default(); 2];
        let references = [Some("4".to_string()), None];
        let generation = Generation {
            file: "rows",
            max_new_tokens: 3,
            batch_size: 1,
            max_new_tokens_hint: "new tokens",
        };
        let mut batches = 0;
        generate_answers(
            &lm,
            lm.tokenizer.as_ref().unwrap(),
            &rows.prompts,
            &references,
            &generation,
            &mut results,
            &mut |n| {
                batches += n;
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(batches, 2);
        // An untrained model answers nothing checkable: a verdict where there is a reference.
        assert_eq!(results[0].correct, Some(false));
        assert_eq!(results[1].correct, None);
        assert!(results[0].generation.is_some());
        let too_long = Generation {
            max_new_tokens: 1000,
            ..generation
        };
        let err = generate_answers(
            &lm,
            lm.tokenizer.as_ref().unwrap(),
            &rows.prompts,
            &references,
            &too_long,
            &mut results,
            &mut |_| Ok(()),
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("rows, row 1: a prompt of"), "{err}");
        assert!(err.contains("new tokens 1000"), "{err}");

        results[0].loss = Some((2.0, 4));
        let out = with_results(frame.clone(), &results, true).unwrap();
        assert_eq!(
            out.column("mean_loss").unwrap().f64().unwrap().get(0),
            Some(0.5)
        );
        assert_eq!(out.column("correct").unwrap().bool().unwrap().get(1), None);
        let domains = domain_names(&frame, "prompt").unwrap().unwrap();
        assert_eq!(domains[1], "Name a colour.");
        assert!(domain_names(&frame, "domain").unwrap().is_none());
        let summary = summarize(&results, None, true);
        let table = summary_frame(&summary, true).unwrap();
        let mut text = Vec::new();
        write_summary_text(&mut text, &summary, true).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(text.lines().next().unwrap().ends_with("correct"), "{text}");
        assert!(text.contains("0/1"), "{text}");
        assert!(table.column("accuracy").is_ok());
    }

    #[test]
    fn domain_losses_sum_per_domain_and_compare_arms() {
        let frame = df!(
            "domain" => ["math", "code", "math"],
            "loss" => [1.0, 2.0, 3.0],
            "loss_tokens" => [1.0, 2.0, 2.0],
        )
        .unwrap();
        let sums = domain_losses(&frame, "eval", "domain").unwrap();
        assert_eq!(
            sums,
            [
                ("math".to_string(), 4.0, 3.0),
                ("code".to_string(), 2.0, 2.0),
                ("all".to_string(), 6.0, 5.0)
            ]
        );
        let no_tokens = df!("loss" => [1.0], "loss_tokens" => [0.0]).unwrap();
        assert!(domain_losses(&no_tokens, "eval", "domain").is_err());
        let arm = Arm {
            name: "a".into(),
            runs: vec![sums],
        };
        let stats = arm_stats(&arm);
        let gains = [("all".to_string(), 0.5)];
        let table = comparison_frame(&stats, Some(&gains), Some("a")).unwrap();
        let mut text = Vec::new();
        write_comparison_text(&mut text, &stats).unwrap();
        assert_eq!(
            String::from_utf8(text).unwrap().lines().count(),
            1 + stats.len()
        );
        let gain = table
            .column("gain_over_control")
            .unwrap()
            .f64()
            .unwrap()
            .clone();
        let domain = table.column("domain").unwrap().str().unwrap().clone();
        for (g, d) in gain.iter().zip(domain.iter()) {
            assert_eq!(g.is_some(), d == Some("all"));
        }
    }

    #[test]
    fn summary_weighs_losses_by_tokens_and_counts_checked_answers() {
        let results = [
            RowResult {
                loss: Some((6.0, 3)),
                correct: Some(true),
                ..Default::default()
            },
            RowResult {
                loss: Some((2.0, 2)),
                correct: Some(false),
                ..Default::default()
            },
            RowResult {
                loss: Some((1.0, 1)),
                correct: None,
                ..Default::default()
            },
        ];
        let domains = ["math", "code", "math"].map(String::from);
        let summary = summarize(&results, Some(&domains), true);
        assert_eq!(summary.len(), 3);
        assert_eq!(summary[0].domain, "math");
        assert_eq!(summary[0].rows, 2);
        assert_eq!(summary[0].mean_loss, Some(7.0 / 4.0));
        assert_eq!((summary[0].checked, summary[0].correct), (1, 1));
        assert_eq!(summary[2].domain, "all");
        assert_eq!(summary[2].mean_loss, Some(9.0 / 6.0));
        assert_eq!((summary[2].checked, summary[2].correct), (2, 1));
    }

    #[test]
    fn stats_are_per_run_token_means_and_gains_favour_lower_loss() {
        let candidate = Arm {
            name: "influence".into(),
            runs: vec![
                vec![("math".into(), 10.0, 5.0), ("all".into(), 10.0, 5.0)],
                vec![("math".into(), 12.0, 4.0), ("all".into(), 12.0, 4.0)],
            ],
        };
        let control = Arm {
            name: "random".into(),
            runs: vec![vec![("math".into(), 16.0, 4.0), ("all".into(), 16.0, 4.0)]],
        };
        let stats: Vec<ArmStats> = [&candidate, &control]
            .into_iter()
            .flat_map(arm_stats)
            .collect();
        assert_eq!(stats[0].domain, "math");
        assert_eq!(stats[0].mean, 2.5);
        assert!((stats[0].std.unwrap() - (0.5f64).sqrt()).abs() < 1e-12);
        assert_eq!((stats[0].min, stats[0].max), (2.0, 3.0));
        assert_eq!(stats[2].std, None);
        let gains = gains(&stats, "influence", "random");
        assert_eq!(gains, vec![("math".into(), 1.5), ("all".into(), 1.5)]);
    }
}
