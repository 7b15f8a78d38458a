//! Final answers in reasoning text: finding them (`\boxed{}`, "the answer is", `**Final
//! Answer**`) and deciding whether two of them are the same math answer (the usual MATH
//! normalisation: LaTeX clutter, units, percentages, commas, `x =` prefixes, `\frac12`, then
//! numeric comparison with a relative tolerance).

use super::conclusion::{Conclusion, conclusion};

/// Where an answer was found and what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The answer text as written (boxed content, the phrase's tail, ...).
    pub text: String,
    pub kind: AnswerKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerKind {
    Boxed,
    Phrase,
    FinalAnswerHeading,
    /// A value in the text that equals the reference answer.
    Implicit,
    /// A value stated by the closing step's conclusion ("Therefore, there are 90 ...").
    Conclusion,
}

/// The content of the last brace-balanced `\boxed{...}` (or `\fbox{...}`), if any.
pub(crate) fn last_boxed(text: &str) -> Option<String> {
    let mut found = None;
    for marker in ["\\boxed", "\\fbox"] {
        let mut from = 0;
        while let Some(at) = text[from..].find(marker) {
            let start = from + at;
            let mut rest = &text[start + marker.len()..];
            rest = rest.trim_start();
            if let Some(inner) = rest.strip_prefix('{')
                && let Some(end) = balanced_end(inner)
            {
                let candidate = (start, inner[..end].to_string());
                if found.as_ref().is_none_or(|(s, _)| *s < start) {
                    found = Some(candidate);
                }
            }
            from = start + marker.len();
        }
    }
    found.map(|(_, content)| content)
}

/// Byte offset of the `}` closing an already-opened brace.
fn balanced_end(inner: &str) -> Option<usize> {
    let mut depth = 1usize;
    let mut escaped = false;
    for (i, c) in inner.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' => escaped = true,
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// The answer a passage states explicitly: the last `\boxed{}`, else the tail of the last
/// "the (final) answer is ...", else what follows a `**Final Answer**` heading.
pub(crate) fn explicit_answer(text: &str) -> Option<Found> {
    if let Some(text) = last_boxed(text) {
        return Some(Found {
            text,
            kind: AnswerKind::Boxed,
        });
    }
    if let Some(text) = answer_phrase(text).or_else(|| gsm8k_final(text)) {
        return Some(Found {
            text,
            kind: AnswerKind::Phrase,
        });
    }
    final_answer_heading(text).map(|text| Found {
        text,
        kind: AnswerKind::FinalAnswerHeading,
    })
}

/// "the answer is X", "the final answer is: X" (last occurrence): X up to the end of its
/// sentence or line.
fn answer_phrase(text: &str) -> Option<String> {
    let lower = text.to_lowercase();
    // Lowercasing can change byte lengths outside ASCII; only use it when they agree.
    if lower.len() != text.len() {
        return None;
    }
    let mut best: Option<usize> = None;
    for phrase in ["the answer is", "the final answer is", "answer is:"] {
        if let Some(at) = lower.rfind(phrase) {
            let end = at + phrase.len();
            if best.is_none_or(|b| end > b) {
                best = Some(end);
            }
        }
    }
    let start = best?;
    let tail = text[start..].trim_start_matches([':', ' ', '\t']);
    let head = sentence_head(tail).trim();
    // "The answer is **12** apples.": the emphasised part is the value.
    let value = emphasised_head(head).unwrap_or(head);
    // A leading `$...$` span or number is the answer; words after it are prose.
    let value = leading_value(value).unwrap_or(value);
    let value = value.trim().trim_end_matches(['.', ',', ';', ':']).trim();
    (!value.is_empty()).then(|| value.to_string())
}

/// The text inside Markdown emphasis (`**x**`, `__x__`, `*x*`, `_x_`) or code (`` `x` ``) that
/// `text` opens with, when it closes.
pub(crate) fn emphasised_head(text: &str) -> Option<&str> {
    for wrapper in ["**", "__", "*", "_", "`"] {
        if let Some(rest) = text.strip_prefix(wrapper)
            && let Some(end) = rest.find(wrapper)
            && end > 0
        {
            return Some(rest[..end].trim());
        }
    }
    None
}

/// `text` without Markdown emphasis or code wrapped around all of it.
fn strip_emphasis(text: &str) -> &str {
    let mut s = text.trim();
    loop {
        let before = s;
        for wrapper in ["**", "__", "*", "_", "`"] {
            if s.len() > 2 * wrapper.len() && s.starts_with(wrapper) && s.ends_with(wrapper) {
                s = s[wrapper.len()..s.len() - wrapper.len()].trim();
            }
        }
        if s == before {
            return s;
        }
    }
}

/// The `$...$` span or number a phrase starts with, when prose follows it.
fn leading_value(text: &str) -> Option<&str> {
    if let Some(rest) = text.strip_prefix('$') {
        let end = rest.find('$')?;
        return Some(&text[..end + 2]);
    }
    let end = text
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | ',' | '/' | '-' | '%')))
        .unwrap_or(text.len());
    let token = text[..end].trim_end_matches(['.', ',']);
    let prose = text[end..]
        .trim_start()
        .starts_with(|c: char| c.is_alphabetic());
    (token.chars().any(|c| c.is_ascii_digit()) && prose).then_some(token)
}

/// GSM8K's final line `#### 42`.
fn gsm8k_final(text: &str) -> Option<String> {
    let line = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with("####"))?;
    let value = line.trim_start().trim_start_matches('#').trim();
    (!value.is_empty()).then(|| value.to_string())
}

/// Text up to the first line break or sentence end (a period followed by a space or the end,
/// not a decimal point), keeping `$...$` spans whole.
fn sentence_head(text: &str) -> &str {
    let bytes = text.as_bytes();
    let mut in_math = false;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'$' => in_math = !in_math,
            b'\n' if !in_math => return &text[..i],
            b'.' if !in_math => {
                let next = bytes.get(i + 1).copied();
                if next.is_none_or(|n| n == b' ' || n == b'\n') {
                    return &text[..i];
                }
            }
            _ => {}
        }
    }
    text
}

/// The first non-empty line after `**Final Answer**` (or the rest of its own line).
fn final_answer_heading(text: &str) -> Option<String> {
    let at = text.rfind("**Final Answer**")?;
    let rest = &text[at + "**Final Answer**".len()..];
    rest.trim_start_matches([':', ' '])
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(|l| l.trim_matches('$').trim().to_string())
}

/// The answer a closing passage (the last segment of a trace, or its final text) gives: one
/// stated explicitly, else the value its conclusion states, else with a reference an implicit
/// one. The conclusion comes before the implicit match, so that a reference mentioned on the
/// way does not stand in for a different result the passage ends with.
pub(crate) fn closing_answer(text: &str, reference: Option<&Target>) -> Option<Found> {
    explicit_answer(text)
        .or_else(|| match conclusion(text) {
            Conclusion::Stated(text) => Some(Found {
                text,
                kind: AnswerKind::Conclusion,
            }),
            Conclusion::NoValue(_) | Conclusion::Absent => None,
        })
        .or_else(|| reference.and_then(|t| implicit_answer(text, t)))
}

/// A value in `text` equal to `reference` (numbers, `$...$` spans, right-hand sides of `=`),
/// the last one found: an implicit conclusion.
pub(crate) fn implicit_answer(text: &str, reference: &Target) -> Option<Found> {
    let mut hit = None;
    for candidate in candidate_values(text) {
        if reference.matches(&candidate) {
            hit = Some(candidate);
        }
    }
    hit.map(|text| Found {
        text,
        kind: AnswerKind::Implicit,
    })
}

/// A reference answer, normalised once, to compare many candidates with.
#[derive(Debug, Clone)]
pub struct Target {
    normalized: String,
    value: Option<f64>,
}

impl Target {
    pub fn new(reference: &str) -> Target {
        let normalized = normalize(reference);
        let value = numeric_value(&normalized);
        Target { normalized, value }
    }

    /// Whether `answer` is the same after normalisation, or as a number within 1e-6 relative.
    pub fn matches(&self, answer: &str) -> bool {
        if self.normalized.is_empty() {
            return false;
        }
        // Plain numbers (most candidates) compare without the full normalisation; one cannot
        // equal a reference that is not a number.
        if let Some(x) = plain_number(answer) {
            return self.value.is_some_and(|y| close(x, y));
        }
        let normalized = normalize(answer);
        if normalized.is_empty() {
            return false;
        }
        if normalized == self.normalized {
            return true;
        }
        match (numeric_value(&normalized), self.value) {
            (Some(x), Some(y)) => close(x, y),
            _ => false,
        }
    }
}

fn close(x: f64, y: f64) -> bool {
    (x - y).abs() <= 1e-6 * x.abs().max(y.abs()).max(1e-12)
}

/// A bare decimal number, thousands commas allowed ("1,024", "-3.5").
fn plain_number(s: &str) -> Option<f64> {
    let s = s.trim();
    if s.is_empty()
        || !s
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b',' | b'-'))
    {
        return None;
    }
    if s.contains(',') {
        if !is_grouped_number(s) {
            return None;
        }
        return s.replace(',', "").parse().ok();
    }
    s.parse().ok()
}

fn candidate_values(text: &str) -> Vec<String> {
    let mut values = Vec::new();
    // $...$ spans and what follows their last '='.
    let mut parts = text.split('$');
    parts.next();
    for (i, span) in parts.enumerate() {
        if i % 2 == 0 {
            values.push(span.to_string());
            if let Some((_, rhs)) = span.rsplit_once('=') {
                values.push(rhs.to_string());
            }
        }
    }
    // Plain numbers (with thousands commas, decimals, fractions a/b, percentages).
    let mut current = String::new();
    for c in text.chars().chain(std::iter::once(' ')) {
        let continues = !current.is_empty() && matches!(c, '.' | ',' | '/' | '%');
        if c.is_ascii_digit() || continues || (c == '-' && current.is_empty()) {
            current.push(c);
        } else {
            let value = current.trim_end_matches(['.', ',', '/']);
            if value.chars().any(|c| c.is_ascii_digit()) {
                values.push(value.to_string());
            }
            current.clear();
            if c == '-' {
                current.push(c);
            }
        }
    }
    values
}

/// Whether two answers are the same after normalisation, or as numbers within 1e-6 relative.
pub(crate) fn equivalent(a: &str, b: &str) -> bool {
    Target::new(b).matches(a)
}

/// Words dropped as trailing units ("5 cm", "12 dollars").
const UNITS: &[&str] = &[
    "units", "unit", "cm", "m", "km", "mm", "meters", "meter", "inches", "inch", "feet", "foot",
    "ft", "miles", "mile", "hours", "hour", "minutes", "minute", "seconds", "second", "days",
    "day", "degrees", "degree", "dollars", "dollar", "cents", "cent", "kg", "g", "grams", "pounds",
    "lbs", "liters", "ml", "sq", "square", "cubic", "ways", "students", "people", "apples",
    "marbles",
];

/// The MATH normalisation (Hendrycks et al.'s `strip_string`, with a few common additions).
pub(crate) fn normalize(answer: &str) -> String {
    let mut s = strip_emphasis(answer).to_string();
    if let Some(inner) = last_boxed(&s) {
        s = inner;
    }
    s = s.replace(['\n', '\r'], " ").replace("\\!", "");
    s = s.replace("\\\\", "\\");
    s = s.replace("tfrac", "frac").replace("dfrac", "frac");
    s = s.replace("\\left", "").replace("\\right", "");
    s = s
        .replace("^{\\circ}", "")
        .replace("^\\circ", "")
        .replace("°", "");
    s = s.replace("\\$", "").replace('$', "");
    s = unwrap_text(&s);
    s = s.replace("\\%", "").replace('%', "");
    s = s.replace("\\,", "").replace("\\;", "").replace("\\ ", " ");
    // Trailing sentence punctuation.
    s = s.trim().trim_end_matches(['.', ';']).trim().to_string();
    s = strip_units(&s);
    // "x = 3" -> "3" when the left side is a short name.
    if let Some((lhs, rhs)) = s.split_once('=')
        && !rhs.contains('=')
        && lhs.trim().chars().count() <= 2
    {
        s = rhs.to_string();
    }
    s = s.replace(' ', "");
    s = s.replace("{.", "{0.");
    if s.starts_with('.') {
        s.insert(0, '0');
    }
    s = fix_sqrt(&s);
    s = fix_fracs(&s);
    s = fix_slash_fraction(&s);
    if is_grouped_number(&s) {
        s = s.replace(',', "");
    }
    if s == "0.5" {
        s = "\\frac{1}{2}".to_string();
    }
    s
}

/// `\text{abc}` / `\mbox{abc}` / `\textbf{abc}` -> `abc`.
fn unwrap_text(s: &str) -> String {
    let mut out = s.to_string();
    for marker in ["\\text", "\\mbox", "\\textbf", "\\mathrm"] {
        while let Some(at) = out.find(&format!("{marker}{{")) {
            let inner_start = at + marker.len() + 1;
            let Some(end) = balanced_end(&out[inner_start..]) else {
                break;
            };
            let inner = out[inner_start..inner_start + end].to_string();
            out.replace_range(at..inner_start + end + 1, &inner);
        }
    }
    out
}

fn strip_units(s: &str) -> String {
    let mut words: Vec<&str> = s.split_whitespace().collect();
    while words.len() > 1
        && words.last().is_some_and(|w| {
            UNITS.contains(&w.trim_end_matches(['.', ',']).to_lowercase().as_str())
        })
    {
        words.pop();
    }
    words.join(" ")
}

/// `\sqrt3` -> `\sqrt{3}`.
fn fix_sqrt(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(at) = rest.find("\\sqrt") {
        out.push_str(&rest[..at + 5]);
        rest = &rest[at + 5..];
        if let Some(c) = rest.chars().next()
            && c != '{'
            && c != '['
        {
            out.push('{');
            out.push(c);
            out.push('}');
            rest = &rest[c.len_utf8()..];
        }
    }
    out.push_str(rest);
    out
}

/// `\frac12` -> `\frac{1}{2}`, `\frac1{2}` -> `\frac{1}{2}`.
fn fix_fracs(s: &str) -> String {
    let parts: Vec<&str> = s.split("\\frac").collect();
    let mut out = parts[0].to_string();
    for part in &parts[1..] {
        out.push_str("\\frac");
        let chars: Vec<char> = part.chars().collect();
        if chars.first() == Some(&'{') || chars.len() < 2 {
            out.push_str(part);
            continue;
        }
        let (a, b) = (chars[0], chars[1]);
        out.push('{');
        out.push(a);
        out.push('}');
        if b == '{' {
            out.extend(&chars[1..]);
        } else {
            out.push('{');
            out.push(b);
            out.push('}');
            out.extend(&chars[2..]);
        }
    }
    out
}

/// `3/4` -> `\frac{3}{4}` for plain integers.
fn fix_slash_fraction(s: &str) -> String {
    if let Some((a, b)) = s.split_once('/')
        && a.parse::<i64>().is_ok()
        && b.parse::<i64>().is_ok()
    {
        return format!("\\frac{{{a}}}{{{b}}}");
    }
    s.to_string()
}

/// "1,234,567" (commas between groups of three digits).
fn is_grouped_number(s: &str) -> bool {
    let body = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    let groups: Vec<&str> = int.split(',').collect();
    groups.len() > 1
        && !groups[0].is_empty()
        && groups[0].len() <= 3
        && groups.iter().all(|g| g.chars().all(|c| c.is_ascii_digit()))
        && groups[1..].iter().all(|g| g.len() == 3)
        && frac.chars().all(|c| c.is_ascii_digit())
}

/// The number a normalised answer denotes: decimals, `\frac{a}{b}`, `-\frac{a}{b}`.
fn numeric_value(s: &str) -> Option<f64> {
    if let Ok(v) = s.parse::<f64>() {
        return v.is_finite().then_some(v);
    }
    let (sign, body) = match s.strip_prefix('-') {
        Some(rest) => (-1.0, rest),
        None => (1.0, s),
    };
    let inner = body.strip_prefix("\\frac{")?;
    let close = balanced_end(inner)?;
    let numerator: f64 = inner[..close].parse().ok()?;
    let rest = inner[close + 1..].strip_prefix('{')?;
    let close = balanced_end(rest)?;
    if close + 1 != rest.len() {
        return None;
    }
    let denominator: f64 = rest[..close].parse().ok()?;
    (denominator != 0.0).then(|| sign * numerator / denominator)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxed_is_brace_balanced_and_last() {
        let cases = [
            ("so \\boxed{42}.", Some("42")),
            (
                "\\boxed{\\frac{1}{2}} then \\boxed{x^{2}+1}",
                Some("x^{2}+1"),
            ),
            ("\\boxed {7}", Some("7")),
            ("\\fbox{3} and \\boxed{4}", Some("4")),
            ("\\boxed{unclosed", None),
            ("no box", None),
        ];
        for (text, want) in cases {
            assert_eq!(last_boxed(text).as_deref(), want, "{text}");
        }
    }

    #[test]
    fn explicit_answers() {
        let cases = [
            ("Thus the answer is 252.", Some(("252", AnswerKind::Phrase))),
            (
                "So the final answer is: $\\frac{3}{4}$.\nDone",
                Some(("$\\frac{3}{4}$", AnswerKind::Phrase)),
            ),
            (
                "The answer is 3.5 meters. Next",
                Some(("3.5", AnswerKind::Phrase)),
            ),
            (
                "**Final Answer**\n\n$12$",
                Some(("12", AnswerKind::FinalAnswerHeading)),
            ),
            (
                "the answer is 5 but \\boxed{6}",
                Some(("6", AnswerKind::Boxed)),
            ),
            ("We continue.", None),
            ("The answer is **12**.", Some(("12", AnswerKind::Phrase))),
            (
                "The answer is *$\\frac{1}{2}$* cups.",
                Some(("$\\frac{1}{2}$", AnswerKind::Phrase)),
            ),
            (
                "3 + 4 = 7 apples\n\n#### 7",
                Some(("7", AnswerKind::Phrase)),
            ),
        ];
        for (text, want) in cases {
            let got = explicit_answer(text);
            assert_eq!(
                got.as_ref().map(|f| (f.text.as_str(), f.kind)),
                want,
                "{text}"
            );
        }
    }

    #[test]
    fn normalisation_table() {
        let cases = [
            ("\\boxed{42}", "42"),
            ("$\\dfrac{1}{2}$", "\\frac{1}{2}"),
            ("\\frac12", "\\frac{1}{2}"),
            ("\\frac1{2}", "\\frac{1}{2}"),
            ("0.5", "\\frac{1}{2}"),
            ("1/2", "\\frac{1}{2}"),
            ("1,000", "1000"),
            ("12,345.5", "12345.5"),
            ("(1,2)", "(1,2)"),
            ("x = 3", "3"),
            ("50\\%", "50"),
            ("5 cm", "5"),
            ("\\text{12 dollars}", "12"),
            ("90^\\circ", "90"),
            ("\\left( 1, 2 \\right)", "(1,2)"),
            ("\\sqrt3", "\\sqrt{3}"),
            (".25", "0.25"),
            ("  7.  ", "7"),
            ("**12**", "12"),
            ("__$\\frac{1}{2}$__", "\\frac{1}{2}"),
            ("`42`", "42"),
        ];
        for (input, want) in cases {
            assert_eq!(normalize(input), want, "{input}");
        }
    }

    #[test]
    fn equivalence_table() {
        let same = [
            ("\\boxed{\\frac{3}{4}}", "0.75"),
            ("3/4", "\\dfrac{3}{4}"),
            ("1,000", "1000.0"),
            ("$x=7$", "7"),
            ("-\\frac{1}{3}", "-0.3333333333"),
            ("25%", "25"),
            ("12 dollars", "\\$12"),
        ];
        for (a, b) in same {
            assert!(equivalent(a, b), "{a} ~ {b}");
        }
        let different = [
            ("3/4", "0.7"),
            ("(1,2)", "(2,1)"),
            ("", ""),
            ("x", "y"),
            ("100", "1000"),
        ];
        for (a, b) in different {
            assert!(!equivalent(a, b), "{a} !~ {b}");
        }
    }

    #[test]
    fn implicit_conclusions_match_the_reference() {
        let text = "Adding, we get 10 + 15 = 25, so there are 25 apples left.";
        assert_eq!(
            implicit_answer(text, &Target::new("25")).map(|f| f.text),
            Some("25".to_string())
        );
        assert_eq!(
            implicit_answer("the total is $\\frac{6}{8}$", &Target::new("3/4")).map(|f| f.kind),
            Some(AnswerKind::Implicit)
        );
        assert!(implicit_answer("we have 24 so far", &Target::new("25")).is_none());
    }
}
