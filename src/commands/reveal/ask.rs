//! `curate reveal ask`: ask a model behind an OpenAI-compatible endpoint which classes each
//! row shows, through the shared client (retries, cache, journal, budgets), and write the
//! answers as a prediction source for `curate reveal`.

use anyhow::Result;
use polars::prelude::*;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::ExitStatus;
use crate::cli::{AskQuestionArg, AskScoresArg, RevealAskArgs};
use crate::commands::Context;
use crate::commands::llm::{self, Endpoint};
use curate::error::{InputError, usage};
use curate::llm::ask::{Exchange, Job, fingerprint, reply_bound};
use curate::llm::chat::{ReplyError, cache_key, completion_content, estimate_tokens};
use curate::llm::estimate::{DryRun, estimate};
use curate::llm::journal::{Answer, JournalId};
use curate::reveal::ask::{
    ClassMatcher, Prompt, Question, Subject, YesNo, classes_request, data_url, image_mime,
    read_yes_no, yes_no_request,
};
use curate::table::{self, ColumnRole, Expected, Input, Output, Shard};

/// How a local image is named in a planned request (and so in its cache key and journal):
/// by its digest, so the request holds the image's identity but not its bytes.
const IMAGE_STAND_IN: &str = "curate-image:sha256:";

/// An image the run reads and sends as a data URL.
struct LocalImage {
    source: ImageBytes,
    mime: &'static str,
    /// `curate-image:sha256:DIGEST`, what planned requests carry instead of the bytes.
    stand_in: String,
}

enum ImageBytes {
    File(PathBuf),
    /// Bytes from the table itself.
    Inline(Vec<u8>),
}

impl LocalImage {
    fn new(source: ImageBytes, mime: &'static str, bytes: &[u8]) -> LocalImage {
        LocalImage {
            source,
            mime,
            stand_in: format!("{IMAGE_STAND_IN}{}", digest(bytes)),
        }
    }

    /// The data URL, read again just before sending; a file changed since it was checked is
    /// an error, not a silently different request.
    fn data_url(&self) -> Result<String, String> {
        let bytes = match &self.source {
            ImageBytes::File(path) => Cow::Owned(
                std::fs::read(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?,
            ),
            ImageBytes::Inline(bytes) => Cow::Borrowed(bytes),
        };
        if !self.stand_in.ends_with(&digest(&bytes)) {
            let ImageBytes::File(path) = &self.source else {
                unreachable!("inline bytes do not change")
            };
            return Err(format!(
                "{}: changed while the run was asking; run again",
                path.display()
            ));
        }
        Ok(data_url(self.mime, &bytes))
    }
}

fn digest(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// What a row is, as read from the table.
enum RowSubject {
    Text(String),
    /// A URL the server fetches itself.
    ImageUrl(String),
    Image(LocalImage),
}

impl RowSubject {
    /// The subject as a planned request carries it: a local image by its stand-in.
    fn planned(&self) -> Subject<'_> {
        match self {
            RowSubject::Text(text) => Subject::Text(text),
            RowSubject::ImageUrl(url) => Subject::Image { url },
            RowSubject::Image(image) => Subject::Image {
                url: &image.stand_in,
            },
        }
    }
}

/// One request's side of the exchange.
struct RowAsk<'a> {
    kind: AskKind,
    matcher: &'a ClassMatcher,
    image: Option<&'a LocalImage>,
}

#[derive(Clone, Copy)]
enum AskKind {
    Classes(Question),
    YesNo,
}

impl Exchange for RowAsk<'_> {
    fn body<'b>(&self, planned: &'b Value) -> Result<Cow<'b, Value>, String> {
        let Some(image) = self.image else {
            return Ok(Cow::Borrowed(planned));
        };
        let url = image.data_url()?;
        let mut body = planned.clone();
        for part in body["messages"][1]["content"]
            .as_array_mut()
            .into_iter()
            .flatten()
        {
            if part["image_url"]["url"]
                .as_str()
                .is_some_and(|u| u.starts_with(IMAGE_STAND_IN))
            {
                part["image_url"]["url"] = Value::String(url.clone());
            }
        }
        Ok(Cow::Owned(body))
    }

    fn accept(&self, body: &str) -> Result<String, ReplyError> {
        match self.kind {
            AskKind::Classes(question) => {
                let content = completion_content(body)?;
                let named = self.matcher.read(&content, question)?;
                let classes: Vec<&str> = named
                    .classes
                    .iter()
                    .map(|&c| self.matcher.classes()[c].as_str())
                    .collect();
                Ok(
                    json!({"raw": content, "classes": classes, "unmatched": named.unmatched})
                        .to_string(),
                )
            }
            AskKind::YesNo => read_yes_no(body).map(YesNo::to_json),
        }
    }
}

/// The rows of the shard: ids and subjects.
struct Rows {
    ids: Column,
    subjects: Vec<RowSubject>,
}

pub fn run(args: RevealAskArgs, context: &Context) -> Result<ExitStatus> {
    let models = check_flags(&args)?;
    let shard = crate::commands::shard(args.shard.as_deref(), &context.printer)?;
    let matcher = matcher(&args)?;
    let prompt = match &args.prompt {
        Some(path) => {
            let text = read_small(path)?;
            Prompt::from_template(&text).map_err(|e| InputError::new(path, e))?
        }
        None => Prompt::default_for(question(args.question)),
    };
    let input = Input::open(&args.input, None)?;
    let rows = read_rows(&input, &args, shard)?;
    // Each model's output and rejects paths (`{model}` filled in).
    let paths: Vec<(Option<String>, Option<String>)> = models
        .iter()
        .map(|model| {
            let fill = |path: &Option<String>| {
                path.as_deref()
                    .map(|p| p.replace("{model}", &file_safe(model)))
            };
            (fill(&args.out), fill(&args.rejects))
        })
        .collect();
    // Every model's files are checked (and prepared) before the first request: a later
    // model's existing output must not stop the run after an hour of asking.
    let mut files = Vec::new();
    if !args.llm.dry_run {
        let mut named = Vec::new();
        for (out, rejects) in &paths {
            named.push(("--out", out.as_deref().expect("clap requires --out")));
            named.extend(rejects.as_deref().map(|r| ("--rejects", r)));
        }
        table::require_distinct(&named)?;
        for (out, rejects) in &paths {
            let out = out.as_deref().expect("clap requires --out");
            let rejects = match rejects {
                Some(path) => Some(Output::create(path, None, args.force)?),
                None => None,
            };
            files.push(Some((out, Output::create(out, None, args.force)?, rejects)));
        }
    }
    let endpoint = llm::endpoint(&args.llm, "reveal ask")?;
    for (n, model) in models.iter().enumerate() {
        let ep = Endpoint {
            model: model.clone(),
            url: endpoint.url.clone(),
            api_key: endpoint.api_key.clone(),
        };
        let asking = Asking {
            args: &args,
            ep: &ep,
            matcher: &matcher,
            prompt: &prompt,
            rows: &rows,
        };
        match files.get_mut(n).and_then(Option::take) {
            Some((out, output, rejects)) => asking.ask(out, output, rejects, &input, context)?,
            None => asking.dry_run(paths[n].0.as_deref().unwrap_or("-"), context)?,
        }
    }
    Ok(ExitStatus::Success)
}

/// A model name as part of a file name.
fn file_safe(model: &str) -> String {
    model
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn question(arg: AskQuestionArg) -> Question {
    match arg {
        AskQuestionArg::All => Question::SelectAll,
        AskQuestionArg::Single => Question::Single,
    }
}

/// The flags clap cannot check alone; the models to ask.
fn check_flags(args: &RevealAskArgs) -> Result<Vec<String>> {
    llm::endpoint(&args.llm, "reveal ask")?;
    llm::check_limits(&args.llm)?;
    let models: Vec<String> = args
        .llm
        .model
        .as_deref()
        .unwrap_or_default()
        .split(',')
        .map(|m| m.trim().to_string())
        .collect();
    if models.iter().any(String::is_empty) {
        return Err(usage("--model: an empty model name"));
    }
    if let Some(model) = first_repeat(&models) {
        return Err(usage(format!("--model names {model} twice")));
    }
    if models.len() > 1 {
        for (flag, path) in [("--out", &args.out), ("--rejects", &args.rejects)] {
            if let Some(path) = path
                && !path.contains("{model}")
            {
                return Err(usage(format!(
                    "{flag} {path}: with several --model names, put {{model}} in the path \
                     (one file per model)"
                )));
            }
        }
    }
    if args.classes.iter().any(|c| c.trim().is_empty()) {
        return Err(usage("--classes: an empty class name"));
    }
    if let Some(class) = first_repeat(&args.classes) {
        return Err(usage(format!("--classes names {class} twice")));
    }
    if args.max_image_bytes == 0 {
        return Err(usage("--max-image-bytes must be at least 1"));
    }
    if args.llm.resume && args.out.as_deref().is_none_or(|o| o == "-") {
        return Err(usage(
            "--resume needs --out FILE: the journal it continues lives beside the output",
        ));
    }
    Ok(models)
}

/// The first name that comes again.
fn first_repeat(names: &[String]) -> Option<&String> {
    names
        .iter()
        .enumerate()
        .find_map(|(i, name)| names[..i].contains(name).then_some(name))
}

/// Small text files a user names (prompt, aliases): read whole, bounded.
fn read_small(path: &str) -> Result<String> {
    const MAX: u64 = 1 << 20;
    let size = std::fs::metadata(path)
        .map_err(|e| InputError::new(path, format!("cannot read: {e}")))?
        .len();
    if size > MAX {
        return Err(InputError::new(path, format!("{size} bytes; at most {MAX} are read")).into());
    }
    Ok(std::fs::read_to_string(path)
        .map_err(|e| InputError::new(path, format!("cannot read: {e}")))?)
}

/// The class matcher, with `--aliases` (`CLASS: alias, alias` lines).
fn matcher(args: &RevealAskArgs) -> Result<ClassMatcher> {
    let mut aliases = Vec::new();
    if let Some(path) = &args.aliases {
        for (n, line) in read_small(path)?.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (class, names) = line.split_once(':').ok_or_else(|| {
                InputError::new(
                    path,
                    format!("line {}: expected CLASS: alias, alias", n + 1),
                )
            })?;
            for alias in names.split(',').map(str::trim).filter(|a| !a.is_empty()) {
                aliases.push((alias.to_string(), class.trim().to_string()));
            }
        }
    }
    ClassMatcher::new(&args.classes, &aliases).map_err(|e| match &args.aliases {
        Some(path) => InputError::new(path, e).into(),
        None => usage(format!("--classes: {e}")),
    })
}

/// The shard's rows: ids, and each row's text or image, every image checked now (format, size,
/// readable) so a bad one stops the run before anything is sent.
fn read_rows(input: &Input, args: &RevealAskArgs, shard: Shard) -> Result<Rows> {
    let frame = input.read()?;
    let file = input.label();
    table::require_rows(&frame, file)?;
    let id_role = ColumnRole::new(args.id_col.as_deref().unwrap_or("id"), "--id-col");
    let ids = table::id_column(&frame, file, id_role, args.id_col.is_some())?;
    let range = shard.rows(frame.height());
    let ids = ids.slice(range.start as i64, range.len());
    let (name, flag, expected) = match (&args.text_col, &args.image_col) {
        (Some(text), _) => (text.as_str(), "--text-col", Expected::Text),
        (None, Some(image)) => (image.as_str(), "--image-col", Expected::TextOrBytes),
        (None, None) => unreachable!("clap requires one"),
    };
    let column = table::require_type(&frame, file, ColumnRole::new(name, flag), expected)?
        .slice(range.start as i64, range.len());
    let error = |row: usize, message: String| -> anyhow::Error {
        InputError::new(file, message)
            .column(name)
            .row(range.start + row + 1)
            .into()
    };
    let mut subjects = Vec::with_capacity(range.len());
    if args.text_col.is_some() {
        for (row, text) in column.str().expect("checked text").iter().enumerate() {
            let text = text.ok_or_else(|| error(row, "value is null".to_string()))?;
            subjects.push(RowSubject::Text(text.to_string()));
        }
        return Ok(Rows { ids, subjects });
    }
    let root = match &args.image_root {
        Some(root) => PathBuf::from(root),
        None => input
            .path()
            .and_then(Path::parent)
            .map_or_else(PathBuf::new, Path::to_path_buf),
    };
    let limit = args.max_image_bytes;
    let check = |row: usize, bytes: &[u8], what: &str| -> Result<&'static str> {
        if bytes.len() as u64 > limit {
            return Err(error(
                row,
                format!(
                    "{what}: {} bytes, over --max-image-bytes {limit}",
                    bytes.len()
                ),
            ));
        }
        image_mime(bytes)
            .ok_or_else(|| error(row, format!("{what}: not a PNG, JPEG or WebP image")))
    };
    match column.dtype() {
        DataType::String => {
            for (row, value) in column.str().expect("string").iter().enumerate() {
                let value = value.ok_or_else(|| error(row, "value is null".to_string()))?;
                if value.starts_with("http://") || value.starts_with("https://") {
                    subjects.push(RowSubject::ImageUrl(value.to_string()));
                    continue;
                }
                if let Some(rest) = value.strip_prefix("data:") {
                    let ok = ["image/png;", "image/jpeg;", "image/webp;"]
                        .iter()
                        .any(|m| rest.starts_with(m));
                    if !ok {
                        return Err(error(
                            row,
                            "a data URL that is not a PNG, JPEG or WebP image".into(),
                        ));
                    }
                    if value.len() as u64 > limit.saturating_mul(4) / 3 + 64 {
                        return Err(error(
                            row,
                            format!("data URL over --max-image-bytes {limit}"),
                        ));
                    }
                    subjects.push(RowSubject::ImageUrl(value.to_string()));
                    continue;
                }
                let path = root.join(value);
                let shown = path.display().to_string();
                let size = std::fs::metadata(&path)
                    .map_err(|e| error(row, format!("{shown}: cannot read: {e}")))?
                    .len();
                if size > limit {
                    return Err(error(
                        row,
                        format!("{shown}: {size} bytes, over --max-image-bytes {limit}"),
                    ));
                }
                let bytes = std::fs::read(&path)
                    .map_err(|e| error(row, format!("{shown}: cannot read: {e}")))?;
                let mime = check(row, &bytes, &shown)?;
                subjects.push(RowSubject::Image(LocalImage::new(
                    ImageBytes::File(path),
                    mime,
                    &bytes,
                )));
            }
        }
        DataType::Binary => {
            for (row, value) in column.binary().expect("binary").iter().enumerate() {
                let bytes = value.ok_or_else(|| error(row, "value is null".to_string()))?;
                let mime = check(row, bytes, "image bytes")?;
                subjects.push(RowSubject::Image(LocalImage::new(
                    ImageBytes::Inline(bytes.to_vec()),
                    mime,
                    bytes,
                )));
            }
        }
        _ => unreachable!("checked strings or bytes"),
    }
    Ok(Rows { ids, subjects })
}

/// One model's run over the rows.
struct Asking<'a> {
    args: &'a RevealAskArgs,
    ep: &'a Endpoint,
    matcher: &'a ClassMatcher,
    prompt: &'a Prompt,
    rows: &'a Rows,
}

impl<'a> Asking<'a> {
    /// Requests per row: the classes question, then a yes/no question per class.
    fn per_row(&self) -> usize {
        1 + match self.args.scores {
            Some(AskScoresArg::YesNo) => self.matcher.classes().len(),
            None => 0,
        }
    }

    fn jobs(&self) -> Vec<Job<RowAsk<'a>>> {
        let per_row = self.per_row();
        let classes = self.matcher.classes();
        let mut jobs = Vec::with_capacity(self.rows.subjects.len() * per_row);
        for (row, subject) in self.rows.subjects.iter().enumerate() {
            let planned = subject.planned();
            let image = match subject {
                RowSubject::Image(image) => Some(image),
                _ => None,
            };
            for j in 0..per_row {
                let (mut body, kind, reply_estimate) = if j == 0 {
                    let body = classes_request(
                        &self.ep.model,
                        self.prompt,
                        classes,
                        planned,
                        !self.args.no_json_format,
                    );
                    // Every class named once, in JSON.
                    let estimate = 8 + classes.iter().map(|c| estimate_tokens(c) + 2).sum::<u64>();
                    (
                        body,
                        AskKind::Classes(question(self.args.question)),
                        estimate,
                    )
                } else {
                    (
                        yes_no_request(&self.ep.model, &classes[j - 1], planned),
                        AskKind::YesNo,
                        1,
                    )
                };
                if j == 0 {
                    body["max_tokens"] = self
                        .args
                        .llm
                        .max_tokens
                        .unwrap_or_else(|| reply_bound(reply_estimate))
                        .into();
                }
                jobs.push(Job {
                    row: row * per_row + j,
                    key: cache_key(&self.ep.url, &body),
                    body,
                    reply_estimate,
                    expect: RowAsk {
                        kind,
                        matcher: self.matcher,
                        image,
                    },
                });
            }
        }
        jobs
    }

    /// The requests, and how their replies are read: a journal written under other reading
    /// rules (question, classes, aliases) is not continued.
    fn fingerprint(&self, jobs: &[Job<RowAsk>]) -> String {
        let reading = json!({
            "question": self.args.question as u8,
            "classes": self.matcher.classes(),
            "aliases": self.matcher.aliases(),
        });
        fingerprint(&format!("reveal-ask {reading}"), jobs.iter())
    }

    fn journal_id<'f>(fingerprint: &'f str) -> JournalId<'f> {
        JournalId {
            command: "reveal ask",
            fingerprint,
        }
    }

    fn dry_run(&self, out: &str, context: &Context) -> Result<()> {
        let jobs = self.jobs();
        let fingerprint = self.fingerprint(&jobs);
        let entries = llm::peek_journal(&self.args.llm, out, Self::journal_id(&fingerprint))?;
        let cache = llm::existing_cache(&self.args.llm)?;
        let estimate = estimate(jobs.iter(), &entries, cache.as_ref());
        let shown_endpoint = curate::text::redact_credentials(&self.ep.url);
        let run = DryRun {
            mode: "reveal-ask",
            model: &self.ep.model,
            endpoint: &shown_endpoint,
            records: jobs.len(),
            max_requests: self.args.llm.max_requests,
            max_total_tokens: self.args.llm.max_total_tokens,
            prices: llm::prices(&self.args.llm)?,
            max_cost: self.args.llm.max_cost,
        };
        let mut report = estimate.json(&run);
        report["rows"] = self.rows.subjects.len().into();
        let mut stdout = context.printer.stdout();
        writeln!(stdout, "{report}")?;
        stdout.flush()?;
        writeln!(context.printer.stderr(), "{}", estimate.text(&run))?;
        Ok(())
    }

    fn ask(
        &self,
        out: &str,
        output: Output,
        rejects_output: Option<Output>,
        input: &Input,
        context: &Context,
    ) -> Result<()> {
        let force = self.args.force;
        let jobs = self.jobs();
        let fingerprint = self.fingerprint(&jobs);
        let (mut journal, entries) =
            llm::open_journal(&self.args.llm, out, Self::journal_id(&fingerprint), force)?;
        let mut answers =
            llm::journaled_answers(entries, jobs.iter().map(|j| (j.row, j.key.as_str())));
        let from_journal = answers.len();
        let pending: Vec<&Job<RowAsk>> = jobs
            .iter()
            .filter(|job| !answers.contains_key(&job.row))
            .collect();
        let run = llm::ask_pending(
            &self.args.llm,
            self.ep,
            &pending,
            jobs.len(),
            journal.as_mut(),
            context,
        )?;
        answers.extend(run.answers);

        let settled = self.settle(&answers);
        let mut provenance = context.provenance();
        provenance.add_input(input.digest()?);
        let mut staged = vec![output.stage_frame(&settled.frame, Some(&provenance))?];
        if let Some(rejects_output) = rejects_output {
            staged.push(rejects_output.stage_frame(&settled.rejects, Some(&provenance))?);
        }
        table::commit_all(staged)?;
        if let Some(journal) = journal {
            journal.remove()?;
        }
        let rows = self.rows.subjects.len();
        let mut err = context.printer.stderr();
        writeln!(
            err,
            "asked {} about {}: {} answered, {} rejected{}; {requests} requests ({} retries, {} asked again after an unusable reply, {:.2} requests/s), {} cached, {from_journal} from the journal, {tokens} tokens",
            self.ep.model,
            curate::text::count(rows, "row", "rows"),
            rows - settled.rejected,
            settled.rejected,
            if settled.rejected > 0 && self.args.rejects.is_none() {
                " (name a --rejects file to keep them)"
            } else {
                ""
            },
            run.retries,
            run.repairs,
            run.requests as f64 / run.seconds.max(1e-9),
            run.cache_hits,
            requests = run.requests,
            tokens = run.tokens,
        )?;
        if settled.without_scores > 0 {
            writeln!(
                err,
                "the server sent no log-probabilities for {} of the yes/no answers: those rows' probs are null",
                settled.without_scores
            )?;
        }
        if let Some(cost) = run.cost {
            writeln!(err, "cost: {cost:.4} (at --price-per-mtok)")?;
        }
        if let Some(served) = run.served_model {
            writeln!(err, "note: the server answered as {served}")?;
        }
        if out != "-" {
            writeln!(err, "wrote {out}")?;
        }
        Ok(())
    }

    /// The answers as the output rows and the rejects.
    fn settle(&self, answers: &HashMap<usize, Answer>) -> Settled {
        let per_row = self.per_row();
        let classes = self.matcher.classes();
        let n = self.rows.subjects.len();
        let mut keep = Vec::with_capacity(n);
        let mut pred = ListStringChunkedBuilder::new("pred".into(), n, n * 2);
        let mut raw: Vec<String> = Vec::new();
        let mut unmatched = ListStringChunkedBuilder::new("unmatched".into(), n, n);
        let mut probs = ListPrimitiveChunkedBuilder::<Float64Type>::new(
            "probs".into(),
            n,
            n * classes.len(),
            DataType::Float64,
        );
        let (mut reasons, mut details) = (Vec::new(), Vec::new());
        let mut without_scores = 0;
        for row in 0..n {
            let answer = |j: usize| &answers[&(row * per_row + j)];
            let rejected = (0..per_row).find_map(|j| match answer(j) {
                Answer::Rejected { reason, detail } => Some((j, *reason, detail.clone())),
                Answer::Content(_) => None,
            });
            if let Some((j, reason, detail)) = rejected {
                keep.push(false);
                reasons.push(reason.code());
                let asked = if j == 0 {
                    "the classes".to_string()
                } else {
                    format!("yes/no for {}", classes[j - 1])
                };
                details.push(format!("{asked}: {}", detail.unwrap_or_default()));
                continue;
            }
            keep.push(true);
            let Answer::Content(kept) = answer(0) else {
                unreachable!("checked above")
            };
            let kept: Value = serde_json::from_str(kept).unwrap_or_default();
            let named: Vec<&str> = kept["classes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            pred.append_values_iter(named.into_iter());
            unmatched.append_values_iter(
                kept["unmatched"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str),
            );
            raw.push(kept["raw"].as_str().unwrap_or_default().to_string());
            if per_row > 1 {
                let scores: Option<Vec<f64>> = (1..per_row)
                    .map(|j| match answer(j) {
                        Answer::Content(kept) => YesNo::from_json(kept).and_then(|a| a.p_yes),
                        Answer::Rejected { .. } => None,
                    })
                    .collect();
                match scores {
                    Some(scores) => probs.append_slice(&scores),
                    None => {
                        without_scores += 1;
                        probs.append_null();
                    }
                }
            }
        }
        let mask = BooleanChunked::from_slice("keep".into(), &keep);
        let rejected_mask = !&mask;
        let ids = self.rows.ids.filter(&mask).expect("same length");
        let mut columns = vec![
            ids,
            pred.finish().into_column(),
            Column::new("raw".into(), raw),
            unmatched.finish().into_column(),
        ];
        if per_row > 1 {
            columns.push(probs.finish().into_column());
        }
        let frame = DataFrame::new_infer_height(columns).expect("equal lengths");
        let rejected = reasons.len();
        let rejects = DataFrame::new_infer_height(vec![
            self.rows.ids.filter(&rejected_mask).expect("same length"),
            Column::new("reason".into(), reasons),
            Column::new("detail".into(), details),
        ])
        .expect("equal lengths");
        Settled {
            frame,
            rejects,
            rejected,
            without_scores,
        }
    }
}

struct Settled {
    frame: DataFrame,
    rejects: DataFrame,
    rejected: usize,
    /// Rows whose yes/no answers came without log-probabilities.
    without_scores: usize,
}
