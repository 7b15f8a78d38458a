//! Chat templates: a model's Jinja `chat_template` rendered as transformers'
//! `apply_chat_template` renders it, and conversations tokenised with loss on the assistant
//! messages only.
//!
//! The environment matches transformers': trimmed and left-stripped blocks, loop controls,
//! `raise_exception`, `strftime_now`, a `tojson` that writes what Python's `json.dumps` writes,
//! Python's string and dict methods, and the special tokens (`bos_token`, `eos_token`, ...) as
//! variables.

use std::fmt::Write as _;

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Environment, Error, ErrorKind, Value};
use tokenizers::Tokenizer;

use super::batch::{IGNORE_INDEX, Sequence};

const TEMPLATE_NAME: &str = "chat_template";

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }

    /// A template map with the keys in Python's order (role, then content), which `tojson`
    /// and `items()` show.
    fn to_value(&self) -> Value {
        Value::from_pairs([
            ("role", Value::from(self.role.as_str())),
            ("content", Value::from(self.content.as_str())),
        ])
    }
}

/// The special token texts a template may refer to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialTokenText {
    pub bos: Option<String>,
    pub eos: Option<String>,
    pub unk: Option<String>,
    pub pad: Option<String>,
}

/// Instructions one render may run: a chat template formats a conversation in thousands; a
/// template from a model file is untrusted input and must not run for ever.
const RENDER_FUEL: u64 = 20_000_000;
/// Bytes one render may write.
const MAX_RENDERED_BYTES: usize = 64 << 20;

/// A compiled chat template.
pub struct ChatTemplate {
    source: String,
    special: SpecialTokenText,
    env: Environment<'static>,
    origin: String,
}

/// Why a render failed: the template rejected the conversation (its own `raise_exception`,
/// about the data), or the template itself failed (an error in it, or it ran past its bounds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenderFailure {
    Rejected(String),
    Template(String),
}

impl std::fmt::Display for RenderFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RenderFailure::Rejected(m) | RenderFailure::Template(m) => f.write_str(m),
        }
    }
}

/// Marks an error a template raised on purpose.
#[derive(Debug)]
struct Raised;

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("raised by the template")
    }
}

impl std::error::Error for Raised {}

/// Collects a render's output, failing once it passes [`MAX_RENDERED_BYTES`].
struct BoundedOutput<'a> {
    text: &'a mut Vec<u8>,
    exceeded: &'a mut bool,
}

impl std::io::Write for BoundedOutput<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.text.len() + buf.len() > MAX_RENDERED_BYTES {
            *self.exceeded = true;
            return Err(std::io::Error::other("the rendered text is too long"));
        }
        self.text.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source", &self.source)
            .field("special", &self.special)
            .finish()
    }
}

impl ChatTemplate {
    /// Compile `source`. The error is the template engine's message.
    pub fn new(source: impl Into<String>, special: SpecialTokenText) -> Result<Self, String> {
        let source = source.into();
        let mut env = Environment::new();
        env.set_syntax(
            SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .expect("default delimiters"),
        );
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_fuel(Some(RENDER_FUEL));
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, without_generation_tags(&source))
            .map_err(|e| describe(&e))?;
        Ok(ChatTemplate {
            source,
            special,
            env,
            origin: "the chat template".to_string(),
        })
    }

    /// Name where the template came from (a file, a model's tokenizer_config.json), for
    /// errors that are the template's fault.
    pub fn with_origin(mut self, origin: impl Into<String>) -> Self {
        self.origin = origin.into();
        self
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// The conversation as text; with `add_generation_prompt`, followed by what opens the
    /// assistant's turn.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, RenderFailure> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .expect("added at construction");
        let token = |t: &Option<String>| Value::from(t.clone());
        let context = minijinja::context! {
            messages => messages.iter().map(Message::to_value).collect::<Vec<_>>(),
            add_generation_prompt => add_generation_prompt,
            tools => Value::from(()),
            documents => Value::from(()),
            bos_token => token(&self.special.bos),
            eos_token => token(&self.special.eos),
            unk_token => token(&self.special.unk),
            pad_token => token(&self.special.pad),
        };
        let mut out = Vec::new();
        let mut exceeded = false;
        let output = BoundedOutput {
            text: &mut out,
            exceeded: &mut exceeded,
        };
        match template.render_captured_to(context, output) {
            Ok(_) => String::from_utf8(out)
                .map_err(|_| RenderFailure::Template("the rendered text is not UTF-8".into())),
            Err(err) => {
                let raised = std::error::Error::source(&err).is_some_and(|s| s.is::<Raised>());
                let text = describe(&err);
                Err(if raised {
                    RenderFailure::Rejected(text)
                } else if exceeded {
                    RenderFailure::Template(format!(
                        "the rendered text passed {} MiB",
                        MAX_RENDERED_BYTES >> 20
                    ))
                } else if err.kind() == ErrorKind::OutOfFuel {
                    RenderFailure::Template(format!(
                        "it ran past {RENDER_FUEL} steps without finishing (a loop too large?)"
                    ))
                } else {
                    RenderFailure::Template(text)
                })
            }
        }
    }
}

/// transformers' `{% generation %}...{% endgeneration %}` marks assistant text for its own
/// masks; here it is a block that always renders (keeping any `-` whitespace control), since the
/// assistant spans are found from the messages.
fn without_generation_tags(source: &str) -> String {
    let tag = regex::Regex::new(r"\{%(-?)\s*(end)?generation\s*(-?)%\}").expect("a valid regex");
    tag.replace_all(source, |caps: &regex::Captures| {
        let statement = if caps.get(2).is_some() {
            "endif"
        } else {
            "if true"
        };
        format!("{{%{} {statement} {}%}}", &caps[1], &caps[3])
    })
    .into_owned()
}

/// The engine's error on one line: a template's own `raise_exception` message as it is,
/// anything else with its kind and template line.
fn describe(err: &Error) -> String {
    let detail = err.detail().unwrap_or_default();
    if err.kind() == ErrorKind::InvalidOperation && !detail.is_empty() {
        return detail.to_string();
    }
    let mut text = err.kind().to_string();
    if !detail.is_empty() {
        let _ = write!(text, ": {detail}");
    }
    if let Some(line) = err.line() {
        let _ = write!(text, " (template line {line})");
    }
    text
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message).with_source(Raised))
}

/// The local time formatted by C's `strftime`, as Python's `datetime.now().strftime`.
fn strftime_now(format: String) -> Result<String, Error> {
    let bad = || Error::new(ErrorKind::InvalidOperation, "strftime_now: bad format");
    let c_format = std::ffi::CString::new(format).map_err(|_| bad())?;
    let mut buffer = vec![0u8; 256];
    // SAFETY: `time` and `localtime_r` fill the zeroed `tm`; `strftime` writes at most
    // `buffer.len()` bytes and returns how many it wrote (0 when the result does not fit).
    let written = unsafe {
        let now = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&now, &mut tm);
        libc::strftime(
            buffer.as_mut_ptr().cast(),
            buffer.len(),
            c_format.as_ptr(),
            &tm,
        )
    };
    buffer.truncate(written);
    String::from_utf8(buffer).map_err(|_| bad())
}

/// Python's `json.dumps(value, ensure_ascii=False, indent=indent, separators=separators,
/// sort_keys=sort_keys)`, which transformers installs as the `tojson` filter.
fn tojson(value: Value, kwargs: Kwargs) -> Result<String, Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let separators: Option<Value> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match v.kind() {
            ValueKind::Number => Some(" ".repeat(i64::try_from(v)?.max(0) as usize)),
            ValueKind::String => Some(v.as_str().unwrap_or_default().to_string()),
            _ => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: bad indent",
                ));
            }
        },
    };
    let (item, key) = match separators {
        Some(v) if !v.is_none() => {
            let parts: Vec<Value> = v.try_iter()?.collect();
            match parts.as_slice() {
                [a, b] => (
                    a.as_str().unwrap_or(",").to_string(),
                    b.as_str().unwrap_or(":").to_string(),
                ),
                _ => {
                    return Err(Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: bad separators",
                    ));
                }
            }
        }
        _ if indent.is_some() => (",".to_string(), ": ".to_string()),
        _ => (", ".to_string(), ": ".to_string()),
    };
    let style = JsonStyle {
        indent,
        item,
        key,
        sort_keys: sort_keys.unwrap_or(false),
        ensure_ascii: ensure_ascii.unwrap_or(false),
    };
    let mut out = String::new();
    style.write(&value, 0, &mut out)?;
    Ok(out)
}

struct JsonStyle {
    indent: Option<String>,
    item: String,
    key: String,
    sort_keys: bool,
    ensure_ascii: bool,
}

impl JsonStyle {
    fn write(&self, value: &Value, depth: usize, out: &mut String) -> Result<(), Error> {
        match value.kind() {
            ValueKind::Undefined | ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
            ValueKind::Number => out.push_str(&python_number(value)),
            ValueKind::String => self.string(value.as_str().unwrap_or_default(), out),
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = value.try_iter()?.collect();
                self.container('[', ']', depth, out, items.len(), |i, out| {
                    self.write(&items[i], depth + 1, out)
                })?;
            }
            ValueKind::Map => {
                let mut keys: Vec<Value> = value.try_iter()?.collect();
                if self.sort_keys {
                    keys.sort_by_key(|k| k.to_string());
                }
                self.container('{', '}', depth, out, keys.len(), |i, out| {
                    self.string(&keys[i].to_string(), out);
                    out.push_str(&self.key);
                    self.write(&value.get_item(&keys[i])?, depth + 1, out)
                })?;
            }
            _ => self.string(&value.to_string(), out),
        }
        Ok(())
    }

    fn container(
        &self,
        open: char,
        close: char,
        depth: usize,
        out: &mut String,
        len: usize,
        mut item: impl FnMut(usize, &mut String) -> Result<(), Error>,
    ) -> Result<(), Error> {
        out.push(open);
        if len == 0 {
            out.push(close);
            return Ok(());
        }
        for i in 0..len {
            if i > 0 {
                out.push_str(&self.item);
            }
            if let Some(indent) = &self.indent {
                out.push('\n');
                out.push_str(&indent.repeat(depth + 1));
            }
            item(i, out)?;
        }
        if let Some(indent) = &self.indent {
            out.push('\n');
            out.push_str(&indent.repeat(depth));
        }
        out.push(close);
        Ok(())
    }

    fn string(&self, text: &str, out: &mut String) {
        out.push('"');
        for c in text.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 || (self.ensure_ascii && !c.is_ascii()) => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        let _ = write!(out, "\\u{unit:04x}");
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

/// Numbers as Python's `json.dumps` prints them: integers plainly, floats as `repr` does
/// (shortest digits; `1.0`, `0.001`, `1e-05`, `1e+16`).
fn python_number(value: &Value) -> String {
    if value.is_integer() {
        return value.to_string();
    }
    let float = f64::try_from(value.clone()).unwrap_or(f64::NAN);
    if float.is_nan() {
        return "NaN".to_string();
    }
    if float.is_infinite() {
        return if float > 0.0 { "Infinity" } else { "-Infinity" }.to_string();
    }
    let scientific = format!("{float:e}");
    let (mantissa, exponent) = scientific.split_once('e').expect("{:e} has an exponent");
    let exponent: i32 = exponent.parse().expect("an integer exponent");
    if (-4..16).contains(&exponent) {
        let fixed = float.to_string();
        if fixed.contains('.') {
            fixed
        } else {
            format!("{fixed}.0")
        }
    } else {
        let sign = if exponent < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exponent.abs())
    }
}

/// Why a conversation could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatError {
    /// The template rejected the conversation (its own `raise_exception`).
    Render(String),
    /// The template itself failed: an error in it, or it ran past its bounds.
    Template(String),
    Tokenize(String),
    NoAssistant,
    /// An assistant message the rendered text does not contain (as given or trimmed): the
    /// template rewrites it, so its tokens cannot be told apart.
    NotVerbatim(usize),
}

impl std::fmt::Display for ChatError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChatError::Render(e) => write!(f, "the chat template failed: {e}"),
            ChatError::Template(e) => write!(f, "the chat template failed: {e}"),
            ChatError::Tokenize(e) => write!(f, "cannot tokenise: {e}"),
            ChatError::NoAssistant => f.write_str("no assistant message (nothing carries loss)"),
            ChatError::NotVerbatim(index) => write!(
                f,
                "the chat template does not write assistant message {} as given (or trimmed), \
                 so its tokens cannot be found",
                index + 1
            ),
        }
    }
}

impl From<RenderFailure> for ChatError {
    fn from(failure: RenderFailure) -> Self {
        match failure {
            RenderFailure::Rejected(m) => ChatError::Render(m),
            RenderFailure::Template(m) => ChatError::Template(m),
        }
    }
}

/// The rendered conversation, its token ids, and labels that carry loss on the assistant
/// messages only:
/// 1. the text is the template's rendering, tokenised whole with no special tokens added (as
///    `apply_chat_template(tokenize=True)`);
/// 2. an assistant message's span starts where its content appears in the text, searched after
///    the rendering of the conversation before it with the generation prompt (when the text
///    starts with that rendering) and after the previous span; content the template trims is
///    searched trimmed;
/// 3. a special token written right after the content (the end-of-turn token) joins the span,
///    so the model learns to stop;
/// 4. a token carries loss when its bytes overlap an assistant span.
pub fn encode_conversation(
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    messages: &[Message],
) -> Result<(String, Sequence), ChatError> {
    if !messages.iter().any(|m| m.role == "assistant") {
        return Err(ChatError::NoAssistant);
    }
    let text = template.render(messages, false).map_err(ChatError::from)?;
    let encoding = tokenizer
        .encode(text.as_str(), false)
        .map_err(|e| ChatError::Tokenize(e.to_string()))?;
    let mut specials: Vec<String> = tokenizer
        .get_added_tokens_decoder()
        .into_values()
        .filter(|t| t.special)
        .map(|t| t.content)
        .collect();
    specials.sort_by_key(|s| std::cmp::Reverse(s.len()));

    let mut spans = Vec::new();
    let mut cursor = 0;
    for (index, message) in messages.iter().enumerate() {
        if message.role != "assistant" {
            continue;
        }
        let mut from = cursor;
        if index > 0 {
            let prefix = template
                .render(&messages[..index], true)
                .map_err(ChatError::from)?;
            if text.starts_with(&prefix) {
                from = from.max(prefix.len());
            }
        }
        let find = |needle: &str| {
            (!needle.is_empty())
                .then(|| {
                    text[from..]
                        .find(needle)
                        .map(|at| (from + at, needle.len()))
                })
                .flatten()
        };
        let (start, len) = find(&message.content)
            .or_else(|| find(message.content.trim()))
            .ok_or(ChatError::NotVerbatim(index))?;
        let mut end = start + len;
        if let Some(special) = specials
            .iter()
            .find(|s| text[end..].starts_with(s.as_str()))
        {
            end += special.len();
        }
        spans.push(start..end);
        cursor = end;
    }
    let ids = encoding.get_ids();
    let labels = ids
        .iter()
        .zip(encoding.get_offsets())
        .map(|(&id, &(a, b))| {
            if spans.iter().any(|s| a < s.end && b > s.start) {
                id as i64
            } else {
                IGNORE_INDEX
            }
        })
        .collect();
    let sequence = Sequence {
        input_ids: ids.iter().map(|&id| id as i64).collect(),
        labels,
    };
    Ok((text, sequence))
}

/// The token ids that prompt the model for the next assistant message: `messages` rendered
/// with the generation prompt, tokenised whole with no special tokens added.
pub(crate) fn encode_prompt(
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    messages: &[Message],
) -> Result<Vec<u32>, ChatError> {
    let text = template.render(messages, true).map_err(ChatError::from)?;
    tokenizer
        .encode(text.as_str(), false)
        .map(|e| e.get_ids().to_vec())
        .map_err(|e| ChatError::Tokenize(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chatml() -> ChatTemplate {
        let source = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' \
                      + message['content'] | trim + '<|im_end|>' + '\\n' }}{% endfor %}\
                      {% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
        ChatTemplate::new(
            source,
            SpecialTokenText {
                eos: Some("<|im_end|>".into()),
                ..Default::default()
            },
        )
        .unwrap()
    }

    #[test]
    fn renders_like_transformers() {
        let template = chatml();
        let messages = [
            Message::new("user", " Hi "),
            Message::new("assistant", "Hello"),
        ];
        assert_eq!(
            template.render(&messages, false).unwrap(),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n"
        );
        assert_eq!(
            template.render(&messages[..1], true).unwrap(),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn python_features_and_errors() {
        let special = SpecialTokenText {
            bos: Some("<s>".into()),
            ..Default::default()
        };
        let source = "{{ bos_token }}{% for m in messages %}{% if m.role == 'tool' %}\
                      {{ raise_exception('no tools') }}{% endif %}\
                      {{ m.content.strip().upper() }}|{{ m | tojson }}\n{% endfor %}";
        let template = ChatTemplate::new(source, special).unwrap();
        let text = template
            .render(&[Message::new("user", " é\"x ")], false)
            .unwrap();
        // As transformers renders it: json.dumps(..., ensure_ascii=False) spacing and escapes.
        assert_eq!(
            text,
            "<s>É\"X|{\"role\": \"user\", \"content\": \" é\\\"x \"}\n"
        );
        let err = template
            .render(&[Message::new("tool", "x")], false)
            .unwrap_err();
        assert_eq!(err, RenderFailure::Rejected("no tools".into()));
        assert!(ChatTemplate::new("{% for %}", SpecialTokenText::default()).is_err());
    }

    #[test]
    fn a_template_that_runs_too_long_or_writes_too_much_is_stopped() {
        let special = SpecialTokenText::default;
        let looping =
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}";
        let template = ChatTemplate::new(looping, special()).unwrap();
        let started = std::time::Instant::now();
        let err = template.render(&[], false).unwrap_err();
        assert!(
            matches!(&err, RenderFailure::Template(m) if m.contains("ran past")),
            "{err:?}"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
        let huge = "{% for i in range(100) %}{{ 'x' * 10000000 }}{% endfor %}";
        let err = ChatTemplate::new(huge, special())
            .unwrap()
            .render(&[], false)
            .unwrap_err();
        assert!(
            matches!(&err, RenderFailure::Template(m) if m.contains("MiB")),
            "{err:?}"
        );
        // An error in the template itself is the template's, not the row's.
        let broken = ChatTemplate::new("{{ messages[0].content.nope() }}", special())
            .unwrap()
            .with_origin("t.jinja");
        let err = broken
            .render(&[Message::new("user", "x")], false)
            .unwrap_err();
        assert!(matches!(err, RenderFailure::Template(_)), "{err:?}");
        assert_eq!(broken.origin(), "t.jinja");
    }

    #[test]
    fn generation_tags_render_their_content() {
        let source = "{% for m in messages %}{% if m.role == 'assistant' %}A: \
                      {%- generation -%}  {{ m.content }}  {%- endgeneration %}|\
                      {% else %}U: {{ m.content }}|{% endif %}{% endfor %}";
        let template = ChatTemplate::new(source, SpecialTokenText::default()).unwrap();
        let messages = [Message::new("user", "q"), Message::new("assistant", "a")];
        assert_eq!(template.render(&messages, false).unwrap(), "U: q|A:a|");
        assert_eq!(template.source(), source);
    }

    #[test]
    fn floats_print_as_python_repr() {
        let cases = [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (1.5e16, "1.5e+16"),
            (123456789.25, "123456789.25"),
            (-2.5e-7, "-2.5e-07"),
        ];
        for (value, python) in cases {
            assert_eq!(python_number(&Value::from(value)), python);
        }
        assert_eq!(python_number(&Value::from(7)), "7");
    }

    #[test]
    fn tojson_indent_and_sort() {
        let template = ChatTemplate::new(
            "{{ {'b': 1, 'a': [1.0, none, true]} | tojson(indent=2, sort_keys=true) }}",
            SpecialTokenText::default(),
        )
        .unwrap();
        assert_eq!(
            template.render(&[], false).unwrap(),
            "{\n  \"a\": [\n    1.0,\n    null,\n    true\n  ],\n  \"b\": 1\n}"
        );
    }
}
