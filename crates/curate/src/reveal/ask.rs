//! REVEAL's first step: ask a model (a vision-language model for images, a language model for
//! text) which classes a row shows, and read its answer into classes.
//!
//! Two questions: one request per row naming every class that applies (or the single best),
//! answered as JSON when the server honours `response_format`, else read from prose; or one
//! yes/no request per row and class whose token log-probabilities give a presence score.
//! Answers are matched to classes tolerantly: case, punctuation, plurals and aliases; a
//! class named after "no" or "not" in prose is not taken.

use std::collections::HashMap;

use base64::Engine as _;
use serde_json::{Value, json};

use crate::llm::chat::ReplyError;

/// What each row is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Question {
    /// Every class the row shows ("select all that apply"); none is an answer too.
    SelectAll,
    /// The one class that fits best.
    Single,
}

/// What the row is: its text, or an image (a URL the request carries).
#[derive(Debug, Clone, Copy)]
pub enum Subject<'a> {
    Text(&'a str),
    Image { url: &'a str },
}

/// Image formats a request may carry, by their first bytes.
pub fn image_mime(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("image/jpeg")
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some("image/webp")
    } else {
        None
    }
}

/// The `data:` URL of an image's bytes.
pub fn data_url(mime: &str, bytes: &[u8]) -> String {
    format!(
        "data:{mime};base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// The default system prompt.
const SYSTEM: &str = "You label data for a classification data set. You answer only with the \
                      classes asked for, in exactly the format asked for.";

/// The default question; `{classes}`, `{subject}` and `{text}` are replaced. The reply's form
/// is described rather than shown: small models copy an example's placeholder as an answer.
pub const DEFAULT_PROMPT_SELECT: &str = "Classes: {classes}\n\nWhich of these classes does \
     the {subject} show? Select all that apply.\nReply with JSON only: an object whose \
     \"classes\" member lists the names of the classes that apply (an empty list if none \
     does), each one of: {classes}.";

pub const DEFAULT_PROMPT_SINGLE: &str = "Classes: {classes}\n\nWhich one of these classes \
     does the {subject} show? Choose the single best one.\nReply with JSON only: an object \
     whose \"classes\" member lists the name of that one class, one of: {classes}.";

/// A prompt a user wrote (`--prompt FILE`) is untrusted input: bound what it can make a run
/// send.
pub const MAX_PROMPT_BYTES: usize = 64 << 10;

/// The question as the user side of the request says it.
#[derive(Debug, Clone)]
pub struct Prompt {
    /// With `{classes}` (required) and `{text}` (the row's text; appended when absent).
    template: String,
}

impl Prompt {
    pub fn default_for(question: Question) -> Prompt {
        Prompt {
            template: match question {
                Question::SelectAll => DEFAULT_PROMPT_SELECT,
                Question::Single => DEFAULT_PROMPT_SINGLE,
            }
            .to_string(),
        }
    }

    /// A template a user wrote; it must name `{classes}`.
    pub fn from_template(template: &str) -> Result<Prompt, String> {
        if template.len() > MAX_PROMPT_BYTES {
            return Err(format!(
                "{} bytes; a prompt may have at most {MAX_PROMPT_BYTES}",
                template.len()
            ));
        }
        if !template.contains("{classes}") {
            return Err("the prompt must say {classes} where the class list goes".to_string());
        }
        Ok(Prompt {
            template: template.to_string(),
        })
    }

    /// The user text for one row. Placeholders are replaced once, left to right, so a row's
    /// text that contains `{classes}` stays as it is.
    fn render(&self, classes: &[String], subject: Subject) -> String {
        let class_list = classes.join(", ");
        let (kind, text) = match subject {
            Subject::Text(text) => ("text", Some(text)),
            Subject::Image { .. } => ("image", None),
        };
        let mut out = String::with_capacity(self.template.len() + text.map_or(0, str::len));
        let mut rest = self.template.as_str();
        let mut text_placed = false;
        while let Some(at) = rest.find('{') {
            out.push_str(&rest[..at]);
            let tail = &rest[at..];
            let (value, len) = if tail.starts_with("{classes}") {
                (class_list.as_str(), "{classes}".len())
            } else if tail.starts_with("{subject}") {
                (kind, "{subject}".len())
            } else if tail.starts_with("{text}") {
                text_placed = true;
                (text.unwrap_or(""), "{text}".len())
            } else {
                ("{", 1)
            };
            out.push_str(value);
            rest = &tail[len..];
        }
        out.push_str(rest);
        match text {
            Some(text) if !text_placed => format!("Text:\n{text}\n\n{out}"),
            _ => out,
        }
    }
}

/// The user message's content: the text, or the text and the image.
fn user_content(text: String, subject: Subject) -> Value {
    match subject {
        Subject::Text(_) => Value::String(text),
        Subject::Image { url } => json!([
            {"type": "text", "text": text},
            {"type": "image_url", "image_url": {"url": url}},
        ]),
    }
}

/// The request asking one row's classes. `json_format` asks the server for a JSON reply
/// (`response_format`), which servers that constrain their output honour.
pub fn classes_request(
    model: &str,
    prompt: &Prompt,
    classes: &[String],
    subject: Subject,
    json_format: bool,
) -> Value {
    let text = prompt.render(classes, subject);
    let mut body = json!({
        "model": model,
        "temperature": 0,
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": user_content(text, subject)},
        ],
    });
    if json_format {
        body["response_format"] = json!({"type": "json_object"});
    }
    body
}

/// Alternatives a yes/no request's top log-probabilities are read from.
const TOP_LOGPROBS: u64 = 10;

/// The request asking whether a row shows one class, answered in one word, with the first
/// token's log-probabilities.
pub fn yes_no_request(model: &str, class: &str, subject: Subject) -> Value {
    let question = match subject {
        Subject::Text(text) => format!(
            "Text:\n{text}\n\nDoes this text belong to the class \"{class}\"? Answer yes or no."
        ),
        Subject::Image { .. } => {
            format!("Does this image show \"{class}\"? Answer yes or no.")
        }
    };
    json!({
        "model": model,
        "temperature": 0,
        // Room for a leading space or "Yes." without inviting an essay.
        "max_tokens": 4,
        "logprobs": true,
        "top_logprobs": TOP_LOGPROBS,
        "messages": [
            {"role": "system", "content": "You answer questions about data with one word: yes or no."},
            {"role": "user", "content": user_content(question, subject)},
        ],
    })
}

/// Class names as answers write them: lower case, words separated by single spaces.
fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        if !out.is_empty() {
            out.push(' ');
        }
        out.extend(word.chars().flat_map(char::to_lowercase));
    }
    out
}

/// English plurals of a (normalized) name's last word.
fn plurals(name: &str) -> Vec<String> {
    let mut forms = vec![format!("{name}s"), format!("{name}es")];
    if let Some(stem) = name.strip_suffix('y') {
        forms.push(format!("{stem}ies"));
    }
    forms
}

/// Words that, just before a class in prose, say it is absent.
const NEGATIONS: [&str; 6] = ["no", "not", "without", "neither", "nor", "none"];

/// Reads answers into classes.
#[derive(Debug, Clone)]
pub struct ClassMatcher {
    classes: Vec<String>,
    /// Normalized names (classes, their plurals, aliases) to class index.
    names: HashMap<String, usize>,
    /// The same names, longest first, for prose.
    by_length: Vec<(String, usize)>,
}

/// What an answer named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    /// Class indices, in class order, each once.
    pub classes: Vec<usize>,
    /// Names in a JSON answer that are no class (candidates for `--aliases`).
    pub unmatched: Vec<String>,
}

impl ClassMatcher {
    /// `aliases` are (alias, class) pairs: another name the answers may use for a class.
    pub fn new(classes: &[String], aliases: &[(String, String)]) -> Result<ClassMatcher, String> {
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut add = |name: &str, class: usize, explicit: bool| -> Result<(), String> {
            let key = normalize(name);
            if key.is_empty() {
                return Err(format!("'{name}' has no letters or digits"));
            }
            match names.get(&key) {
                Some(&other) if other != class && explicit => Err(format!(
                    "'{name}' would name both '{}' and '{}'",
                    classes[other], classes[class]
                )),
                Some(_) => Ok(()),
                None => {
                    names.insert(key, class);
                    Ok(())
                }
            }
        };
        for (i, class) in classes.iter().enumerate() {
            add(class, i, true)?;
        }
        for (alias, class) in aliases {
            let i = classes
                .iter()
                .position(|c| c == class)
                .ok_or_else(|| format!("alias '{alias}' names '{class}', which is not a class"))?;
            add(alias, i, true)?;
        }
        // Plurals last: a class or alias spelled like another's plural wins.
        let explicit: Vec<(String, usize)> = names.iter().map(|(k, &v)| (k.clone(), v)).collect();
        for (name, class) in explicit {
            for plural in plurals(&name) {
                names.entry(plural).or_insert(class);
            }
        }
        let mut by_length: Vec<(String, usize)> =
            names.iter().map(|(k, &v)| (k.clone(), v)).collect();
        by_length.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
        Ok(ClassMatcher {
            classes: classes.to_vec(),
            names,
            by_length,
        })
    }

    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// Every name an answer may use and the class it names, sorted (plurals included).
    pub fn aliases(&self) -> Vec<(&str, &str)> {
        let mut names: Vec<(&str, &str)> = self
            .names
            .iter()
            .map(|(name, &class)| (name.as_str(), self.classes[class].as_str()))
            .collect();
        names.sort_unstable();
        names
    }

    /// Read a reply's content. JSON (`{"classes": [...]}`, a list, or a string) is read item
    /// by item; anything else as prose, taking every class named and not negated.
    pub fn read(&self, content: &str, question: Question) -> Result<Named, ReplyError> {
        let json = json_answer(content);
        let named = match &json {
            Some(items) => self.read_items(items)?,
            None => {
                let mut classes = self.in_prose(content);
                // "It is about math. It has no code, only ...": a single answer is what the
                // first sentence says when it names one class.
                if question == Question::Single && classes.len() > 1 {
                    let first = content
                        .split_inclusive(['.', '!', '?', '\n'])
                        .find(|s| !s.trim().is_empty())
                        .unwrap_or(content);
                    let in_first = self.in_prose(first);
                    if in_first.len() == 1 {
                        classes = in_first;
                    }
                }
                Named {
                    classes,
                    unmatched: Vec::new(),
                }
            }
        };
        let invalid = |detail: String| ReplyError::Invalid {
            what: "classes",
            detail,
        };
        match question {
            Question::SelectAll if named.classes.is_empty() && json.is_none() => Err(invalid(
                format!("names none of the classes ({})", self.classes.join(", ")),
            )),
            Question::Single if named.classes.len() != 1 => Err(invalid(format!(
                "names {} classes{}; exactly one was asked for",
                named.classes.len(),
                self.listed(&named.classes)
            ))),
            _ => Ok(named),
        }
    }

    fn listed(&self, classes: &[usize]) -> String {
        if classes.is_empty() {
            return String::new();
        }
        let names: Vec<&str> = classes.iter().map(|&c| self.classes[c].as_str()).collect();
        format!(" ({})", names.join(", "))
    }

    fn read_items(&self, items: &[String]) -> Result<Named, ReplyError> {
        let mut classes = Vec::new();
        let mut unmatched = Vec::new();
        for item in items {
            match self.names.get(&normalize(item)) {
                Some(&class) => classes.push(class),
                // "a cat", "Cat (the animal)": a class inside the item.
                None => match self.in_prose(item).as_slice() {
                    [class] => classes.push(*class),
                    _ => unmatched.push(item.clone()),
                },
            }
        }
        if classes.is_empty() && !unmatched.is_empty() {
            return Err(ReplyError::Invalid {
                what: "classes",
                detail: format!(
                    "{} is not a class (the classes are {})",
                    unmatched.join(", "),
                    self.classes.join(", ")
                ),
            });
        }
        classes.sort_unstable();
        classes.dedup();
        Ok(Named { classes, unmatched })
    }

    /// Classes named in prose, whole words only, longest names first; a name preceded within
    /// two words by a negation is not taken.
    fn in_prose(&self, text: &str) -> Vec<usize> {
        let words: Vec<String> = normalize(text).split(' ').map(str::to_string).collect();
        let mut taken = vec![false; words.len()];
        let mut found = Vec::new();
        for (name, class) in &self.by_length {
            let parts: Vec<&str> = name.split(' ').collect();
            if parts.len() > words.len() {
                continue;
            }
            for start in 0..=words.len() - parts.len() {
                let span = start..start + parts.len();
                if taken[span.clone()].iter().any(|&t| t)
                    || !words[span.clone()].iter().zip(&parts).all(|(w, p)| w == p)
                {
                    continue;
                }
                taken[span].iter_mut().for_each(|t| *t = true);
                let negated = words[start.saturating_sub(2)..start]
                    .iter()
                    .any(|w| NEGATIONS.contains(&w.as_str()));
                if !negated {
                    found.push(*class);
                }
            }
        }
        found.sort_unstable();
        found.dedup();
        found
    }
}

/// The items of a JSON answer: `{"classes": [...]}` (or `labels`, `class`, `label`,
/// `answer`, `categories`), a list, or a string; inside a code fence or prose around it too.
/// None when the content holds no JSON.
fn json_answer(content: &str) -> Option<Vec<String>> {
    let trimmed = content.trim();
    let value: Value = serde_json::from_str(trimmed).ok().or_else(|| {
        let start = trimmed.find(['{', '['])?;
        let end = trimmed.rfind(['}', ']'])?;
        (start < end)
            .then(|| serde_json::from_str(&trimmed[start..=end]).ok())
            .flatten()
    })?;
    let items = |value: &Value| -> Option<Vec<String>> {
        match value {
            Value::String(s) => Some(vec![s.clone()]),
            Value::Array(list) => list
                .iter()
                .map(|v| match v {
                    Value::String(s) => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    _ => None,
                })
                .collect(),
            Value::Null => Some(Vec::new()),
            _ => None,
        }
    };
    match &value {
        Value::Object(map) => [
            "classes",
            "labels",
            "class",
            "label",
            "answer",
            "categories",
        ]
        .iter()
        .find_map(|key| map.get(*key).and_then(items)),
        other => items(other),
    }
}

/// A yes/no reply: the answer, and the probability of yes from the first token's
/// log-probabilities when the server sent them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct YesNo {
    pub yes: bool,
    pub p_yes: Option<f64>,
}

impl YesNo {
    /// What a run keeps of it.
    pub fn to_json(self) -> String {
        json!({"yes": self.yes, "p_yes": self.p_yes}).to_string()
    }

    pub fn from_json(text: &str) -> Option<YesNo> {
        let value: Value = serde_json::from_str(text).ok()?;
        Some(YesNo {
            yes: value["yes"].as_bool()?,
            p_yes: value["p_yes"].as_f64(),
        })
    }
}

/// Whether a word is yes or no.
fn yes_or_no(word: &str) -> Option<bool> {
    match normalize(word).split(' ').next()? {
        "yes" | "y" | "true" => Some(true),
        "no" | "n" | "false" => Some(false),
        _ => None,
    }
}

/// Read a yes/no reply body. A reply cut at its few tokens is still read (it was only asked
/// for one word).
pub fn read_yes_no(body: &str) -> Result<YesNo, ReplyError> {
    let value: Value =
        serde_json::from_str(body).map_err(|e| ReplyError::NotCompletion(e.to_string()))?;
    let choice = &value["choices"][0];
    let content = choice["message"]["content"]
        .as_str()
        .ok_or_else(|| ReplyError::NotCompletion("no choices[0].message.content".to_string()))?;
    let yes = yes_or_no(content).ok_or_else(|| ReplyError::Invalid {
        what: "yes/no answer",
        detail: format!("'{}' is neither yes nor no", content.trim()),
    })?;
    Ok(YesNo {
        yes,
        p_yes: p_yes(&choice["logprobs"]),
    })
}

/// P(yes) / (P(yes) + P(no)) over the first token's top alternatives (every spelling of yes
/// and no counts), from OpenAI's `logprobs.content` or the older `top_logprobs` maps.
fn p_yes(logprobs: &Value) -> Option<f64> {
    let mut alternatives: Vec<(String, f64)> = Vec::new();
    if let Some(first) = logprobs["content"].get(0) {
        if let Some(top) = first["top_logprobs"].as_array() {
            for alt in top {
                if let (Some(token), Some(lp)) = (alt["token"].as_str(), alt["logprob"].as_f64()) {
                    alternatives.push((token.to_string(), lp));
                }
            }
        }
        if alternatives.is_empty()
            && let (Some(token), Some(lp)) = (first["token"].as_str(), first["logprob"].as_f64())
        {
            alternatives.push((token.to_string(), lp));
        }
    } else if let Some(map) = logprobs["top_logprobs"].get(0).and_then(Value::as_object) {
        for (token, lp) in map {
            if let Some(lp) = lp.as_f64() {
                alternatives.push((token.clone(), lp));
            }
        }
    }
    let (mut yes, mut no) = (0.0f64, 0.0f64);
    let mut seen = false;
    for (token, lp) in &alternatives {
        if !lp.is_finite() {
            continue;
        }
        match yes_or_no(token) {
            Some(true) => (yes, seen) = (yes + lp.exp(), true),
            Some(false) => (no, seen) = (no + lp.exp(), true),
            None => {}
        }
    }
    if !seen {
        return None;
    }
    if yes + no > 0.0 {
        Some(yes / (yes + no))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher() -> ClassMatcher {
        let classes: Vec<String> = ["cat", "dog", "traffic light", "butterfly"]
            .map(String::from)
            .to_vec();
        ClassMatcher::new(&classes, &[("kitten".into(), "cat".into())]).unwrap()
    }

    fn read(content: &str) -> Result<Named, ReplyError> {
        matcher().read(content, Question::SelectAll)
    }

    #[test]
    fn json_answers_are_read_item_by_item() {
        assert_eq!(
            read(r#"{"classes": ["Dog", "cat"]}"#).unwrap().classes,
            [0, 1]
        );
        assert_eq!(read(r#"["Traffic-Lights"]"#).unwrap().classes, [2]);
        assert_eq!(
            read("```json\n{\"labels\": [\"a kitten\", \"butterflies\"]}\n```")
                .unwrap()
                .classes,
            [0, 3]
        );
        // No class is an answer to select-all.
        assert_eq!(
            read(r#"{"classes": []}"#).unwrap().classes,
            Vec::<usize>::new()
        );
        let partly = read(r#"{"classes": ["dog", "horse"]}"#).unwrap();
        assert_eq!(
            (partly.classes, partly.unmatched),
            (vec![1], vec!["horse".into()])
        );
        let err = read(r#"{"classes": ["horse"]}"#).unwrap_err().to_string();
        assert!(err.contains("horse is not a class"), "{err}");
    }

    #[test]
    fn prose_answers_take_named_classes_but_not_negated_ones() {
        assert_eq!(
            read("I can see two dogs and a traffic light.")
                .unwrap()
                .classes,
            [1, 2]
        );
        assert_eq!(read("There is no cat, only a dog.").unwrap().classes, [1]);
        // "catalogue" is not "cat".
        assert!(read("A catalogue of things.").is_err());
        let err = matcher()
            .read("a cat and a dog", Question::Single)
            .unwrap_err()
            .to_string();
        assert!(err.contains("names 2 classes (cat, dog)"), "{err}");
        // One answer: the first sentence's, when it names one class.
        let single = |text: &str| matcher().read(text, Question::Single).map(|n| n.classes);
        assert_eq!(single("It is a dog. Cats look different.").unwrap(), [1]);
        assert!(single("A dog or a cat. Hard to say.").is_err());
        assert_eq!(
            matcher().read("Kitten.", Question::Single).unwrap().classes,
            [0]
        );
    }

    #[test]
    fn aliases_are_checked() {
        let classes = vec!["cat".to_string(), "dog".to_string()];
        assert!(ClassMatcher::new(&classes, &[("puppy".into(), "wolf".into())]).is_err());
        assert!(ClassMatcher::new(&classes, &[("cat".into(), "dog".into())]).is_err());
        assert!(ClassMatcher::new(&classes, &[("!!".into(), "dog".into())]).is_err());
    }

    #[test]
    fn prompts_place_classes_and_text_once() {
        let classes = vec!["a".to_string(), "b".to_string()];
        let prompt = Prompt::from_template("Pick from {classes}: {text} {other}").unwrap();
        let text = prompt.render(&classes, Subject::Text("x {classes} y"));
        assert_eq!(text, "Pick from a, b: x {classes} y {other}");
        let default = Prompt::default_for(Question::SelectAll);
        let text = default.render(&classes, Subject::Text("hello"));
        assert!(
            text.starts_with("Text:\nhello\n\nClasses: a, b\n"),
            "{text}"
        );
        assert!(Prompt::from_template("no placeholder").is_err());
        assert!(Prompt::from_template(&"x{classes}".repeat(MAX_PROMPT_BYTES)).is_err());
        let image = classes_request(
            "m",
            &default,
            &classes,
            Subject::Image { url: "data:x" },
            true,
        );
        let parts = image["messages"][1]["content"].as_array().unwrap();
        assert!(
            parts[0]["text"]
                .as_str()
                .unwrap()
                .contains("the image show")
        );
        assert_eq!(parts[1]["image_url"]["url"], "data:x");
        assert_eq!(image["response_format"]["type"], "json_object");
    }

    #[test]
    fn yes_no_replies_give_a_presence_probability() {
        let body = json!({"choices": [{"message": {"content": "Yes"}, "finish_reason": "length",
            "logprobs": {"content": [{"token": "Yes", "logprob": -0.1, "top_logprobs": [
                {"token": "Yes", "logprob": (0.6f64).ln()}, {"token": " yes", "logprob": (0.1f64).ln()},
                {"token": "No", "logprob": (0.3f64).ln()}, {"token": "Maybe", "logprob": -5.0}]}]}}]});
        let read = read_yes_no(&body.to_string()).unwrap();
        assert!(read.yes);
        assert!((read.p_yes.unwrap() - 0.7).abs() < 1e-12);
        assert_eq!(YesNo::from_json(&read.to_json()), Some(read));
        let legacy = json!({"choices": [{"message": {"content": "no."},
            "logprobs": {"top_logprobs": [{"no": (0.8f64).ln(), "yes": (0.2f64).ln()}]}}]});
        let read = read_yes_no(&legacy.to_string()).unwrap();
        assert!(!read.yes && (read.p_yes.unwrap() - 0.2).abs() < 1e-12);
        let plain = json!({"choices": [{"message": {"content": "No"}}]});
        assert_eq!(
            read_yes_no(&plain.to_string()).unwrap(),
            YesNo {
                yes: false,
                p_yes: None
            }
        );
        let neither = json!({"choices": [{"message": {"content": "Perhaps"}}]});
        assert!(read_yes_no(&neither.to_string()).is_err());
    }

    #[test]
    fn images_are_known_by_their_first_bytes() {
        assert_eq!(image_mime(b"\x89PNG\r\n\x1a\nrest"), Some("image/png"));
        assert_eq!(image_mime(&[0xFF, 0xD8, 0xFF, 0xE0]), Some("image/jpeg"));
        assert_eq!(image_mime(b"RIFF\0\0\0\0WEBPVP8 "), Some("image/webp"));
        assert_eq!(image_mime(b"GIF89a"), None);
        assert_eq!(data_url("image/png", b"abc"), "data:image/png;base64,YWJj");
    }
}
