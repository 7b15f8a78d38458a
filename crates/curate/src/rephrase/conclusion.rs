//! Results stated in a solution's closing step without an answer phrase: "8. Therefore, there
//! are 90 valid strings.", "Thus, the total is 10 * 9 * 8 = 720.", "Answer: 42", or a last line
//! that is only an expression. Found without the reference, so the reference decides only
//! whether an answer is correct, never whether a record has one.

/// Words that open a concluding sentence, lowercased (English, then a few common forms in
/// French, Spanish, Portuguese, German, Chinese and Japanese).
pub const CONCLUSION_MARKERS: &[&str] = &[
    "therefore",
    "thus",
    "so",
    "hence",
    "in total",
    "in conclusion",
    "in summary",
    "in all",
    "overall",
    "consequently",
    "finally",
    "altogether",
    "as a result",
    "this gives",
    "we conclude",
    "we can conclude",
    "we get",
    "we obtain",
    "we find",
    "in other words",
    "donc",
    "ainsi",
    "par conséquent",
    "en conclusion",
    "au total",
    "finalement",
    "por lo tanto",
    "por tanto",
    "así que",
    "en conclusión",
    "en total",
    "entonces",
    "portanto",
    "assim",
    "no total",
    "daher",
    "somit",
    "folglich",
    "insgesamt",
    "schließlich",
    "因此",
    "所以",
    "综上",
    "总之",
    "したがって",
    "よって",
];

/// Words after which a concluding sentence states its value ("is 90", "there are 90 ...").
const COPULAS: &[&str] = &[
    "is", "are", "was", "were", "be", "equals", "equal", "gives", "yields", "makes", "get", "gets",
    "obtain", "est", "sont", "vaut", "égale", "es", "son", "vale", "igual", "é", "são", "ist",
    "sind", "beträgt", "gleich", "ergibt", "是", "为", "等于", "有",
];

/// Filler between a copula and its value ("is exactly 4", "is given by 2n").
const FILLERS: &[&str] = &[
    "exactly",
    "approximately",
    "about",
    "only",
    "a total of",
    "equal to",
    "given by",
    "at most",
    "at least",
    "precisely",
    "just",
];

/// Labels of a closing answer line ("Answer: 42").
const ANSWER_LABELS: &[&str] = &[
    "final answer",
    "answer",
    "réponse",
    "respuesta",
    "resposta",
    "antwort",
    "答案",
];

/// How a closing sentence with no marker opens when it states the result all the same ("The
/// total number of strings is 771."): "the" and one of these words.
const RESULT_NOUNS: &[&str] = &[
    "total",
    "number",
    "answer",
    "result",
    "sum",
    "value",
    "final",
    "probability",
    "maximum",
    "minimum",
    "smallest",
    "largest",
    "least",
    "greatest",
    "count",
    "remainder",
];

/// A last line that only points back at the step before it ("This is the final answer.").
const POINTER_REMARKS: &[&str] = &[
    "this is the",
    "this is our",
    "this completes",
    "this concludes",
    "this proves",
    "that is the",
    "which is the",
    "and this is",
    "qed",
    "q.e.d",
    "∎",
];

const NUMBER_WORDS: &[&str] = &[
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
    "negative infinity",
    "positive infinity",
    "infinity",
];

/// How a conclusion says that nothing qualifies ("there are no such numbers"): its value is
/// `none`.
const NONE_PHRASES: &[&str] = &[
    "there is no",
    "there are no",
    "there can be no",
    "there cannot be",
    "there can't be",
    "there exists no",
    "there exist no",
    "no such",
    "there is none",
    "there are none",
];

/// The longest value read from a conclusion, in bytes: a longer span is prose, not a value.
const MAX_VALUE_BYTES: usize = 160;

/// What a text's closing step concludes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conclusion {
    /// A value stated in the closing step.
    Stated(String),
    /// The closing step opens with a conclusion marker but states no value that can be read:
    /// the sentence, as written.
    NoValue(String),
    /// The closing step is no conclusion.
    Absent,
}

/// The conclusion of `text`: its last step (last non-empty line, with a display-math block
/// taken whole), read as an answer label, a concluding sentence or a bare expression.
pub fn conclusion(text: &str) -> Conclusion {
    let Some(step) = last_step(text) else {
        return Conclusion::Absent;
    };
    let step = strip_step_label(step);
    if let Some(value) = labelled_answer(step) {
        return Conclusion::Stated(value);
    }
    let mut without_value = None;
    for (i, sentence) in sentences(step).into_iter().rev().enumerate() {
        let Some(rest) =
            after_marker(sentence).or_else(|| (i == 0).then(|| states_result(sentence)).flatten())
        else {
            continue;
        };
        match nonexistence(rest).or_else(|| stated_value(rest)) {
            Some(value) => return Conclusion::Stated(value),
            None => {
                without_value.get_or_insert(sentence.trim().to_string());
            }
        }
    }
    if let Some(sentence) = without_value {
        return Conclusion::NoValue(sentence);
    }
    match bare_expression(step) {
        Some(value) => Conclusion::Stated(value),
        None => Conclusion::Absent,
    }
}

/// Why `text` has no answer, in words for a reject's detail.
pub fn missing_answer_detail(text: &str) -> String {
    match conclusion(text) {
        Conclusion::NoValue(sentence) => format!(
            "the closing step concludes without a value that can be read: \"{}\"",
            clip(&sentence, 160)
        ),
        Conclusion::Stated(value) => format!("the closing step states {value:?}"),
        Conclusion::Absent => "no conclusion: the last step states no answer (\\boxed{}, \
             \"the answer is\", \"Answer:\") and does not open with a conclusion marker \
             (therefore, thus, so, hence, in total, ...)"
            .to_string(),
    }
}

/// The first `max` characters of `text`, with an ellipsis when cut.
fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_string(),
    }
}

/// The last non-empty line; a closing `\]` or `$$` line takes the block it closes.
fn last_step(text: &str) -> Option<&str> {
    let text = text.trim_end();
    let lines: Vec<(usize, &str)> = line_starts(text)
        .filter(|(_, line)| !line.trim().is_empty())
        .collect();
    let mut lines = lines.as_slice();
    // "This is the final answer." after the result: the result's line is the closing step.
    if let [.., _, (_, last)] = lines
        && is_pointer_remark(last)
    {
        lines = &lines[..lines.len() - 1];
    }
    let &(start, last) = lines.last()?;
    let closer = last.trim();
    let opener = match closer {
        "\\]" => Some("\\["),
        "$$" => Some("$$"),
        _ => None,
    };
    if let Some(opener) = opener {
        for &(at, line) in lines.iter().rev().skip(1).take(20) {
            if line.contains(opener) {
                return Some(&text[at..start + last.len()]);
            }
        }
    }
    Some(&text[start..start + last.len()])
}

fn is_pointer_remark(line: &str) -> bool {
    let line = strip_step_label(line).to_lowercase();
    !line.contains(|c: char| c.is_ascii_digit() || c == '=')
        && POINTER_REMARKS.iter().any(|r| {
            line.starts_with(r)
                && line[r.len()..]
                    .chars()
                    .next()
                    .is_none_or(|c| !c.is_alphanumeric())
        })
}

fn line_starts(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let mut at = 0;
    text.split('\n').map(move |line| {
        let start = at;
        at += line.len() + 1;
        (start, line)
    })
}

/// A step without its numbering, bullet or emphasis: "8. ", "Step 3: ", "- ", "**".
fn strip_step_label(step: &str) -> &str {
    let mut s = step.trim_start();
    loop {
        let before = s;
        s = s.trim_start_matches(['*', '#', ' ', '\t']);
        for bullet in ["- ", "• ", "> "] {
            s = s.strip_prefix(bullet).unwrap_or(s);
        }
        if s.get(..5).is_some_and(|w| w.eq_ignore_ascii_case("step "))
            && s[5..].starts_with(|c: char| c.is_ascii_digit())
        {
            s = &s[5..];
        }
        let digits = s.len() - s.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if (1..=3).contains(&digits)
            && let Some(rest) = s[digits..]
                .strip_prefix(['.', ')', ':'])
                .filter(|r| r.is_empty() || r.starts_with([' ', '\t', '*']))
        {
            s = rest;
        }
        if s == before {
            return s;
        }
    }
}

/// "Answer: 42", "**Final answer:** $\frac{1}{2}$": what follows the label, as a value when it
/// opens with one or states one, else as written.
fn labelled_answer(step: &str) -> Option<String> {
    let lower = step.to_lowercase();
    if lower.len() != step.len() {
        // Case folding moved byte offsets; only the CJK label is safe to look for.
        let rest = step.strip_prefix("答案")?;
        return label_value(rest.trim_start_matches(['：', ':', ' ']));
    }
    let label = ANSWER_LABELS
        .iter()
        .find(|label| lower.starts_with(*label))?;
    let rest = step.get(label.len()..)?.trim_start_matches(['*', ' ']);
    let rest = rest.strip_prefix([':', '：'])?;
    label_value(rest.trim_start_matches(['*', ' ']))
}

fn label_value(rest: &str) -> Option<String> {
    let rest = rest.trim().trim_end_matches(['.', '。']).trim();
    let rest = super::answer::emphasised_head(rest).unwrap_or(rest);
    if rest.is_empty() {
        return None;
    }
    Some(
        value_at(rest)
            .or_else(|| stated_value(rest))
            .unwrap_or_else(|| rest.to_string()),
    )
}

/// Sentences of a step: cut after `.`, `!`, `?` followed by a space (not decimal points), and
/// after `。`, never inside `$...$`.
fn sentences(step: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut in_math = false;
    let mut chars = step.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '$' => in_math = !in_math,
            '.' | '!' | '?' if !in_math => {
                // An ellipsis ("x^35 + ... + 1") ends no sentence.
                let ellipsis = c == '.' && step[..i].ends_with('.');
                if !ellipsis && chars.peek().is_some_and(|&(_, n)| n.is_whitespace()) {
                    out.push(&step[start..i + 1]);
                    start = i + 1;
                }
            }
            '。' if !in_math => {
                out.push(&step[start..i + c.len_utf8()]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    if !step[start..].trim().is_empty() {
        out.push(&step[start..]);
    }
    out
}

/// The sentence after its conclusion marker, when it opens with one, or when its first clause
/// ends in one ("Adding up the cases, we get ...", "This is a contradiction, so ...").
fn after_marker(sentence: &str) -> Option<&str> {
    let head = strip_step_label(sentence);
    opening_marker(head).or_else(|| {
        let comma = head.find(", ")?;
        (head[..comma].split_whitespace().count() <= 12)
            .then(|| opening_marker(&head[comma + 2..]))
            .flatten()
    })
}

/// What follows a conclusion marker `head` opens with.
fn opening_marker(head: &str) -> Option<&str> {
    let lower = head.to_lowercase();
    if lower.len() != head.len() {
        // Case folding moved byte offsets: match the markers that need none.
        return CONCLUSION_MARKERS
            .iter()
            .find_map(|m| head.strip_prefix(m).filter(|rest| word_ends(m, rest)));
    }
    CONCLUSION_MARKERS.iter().find_map(|m| {
        let rest = head.get(m.len()..)?;
        (lower.starts_with(m) && word_ends(m, rest)).then_some(rest)
    })
}

/// `none` when a conclusion says nothing qualifies.
fn nonexistence(rest: &str) -> Option<String> {
    let lower = rest.trim_start_matches([',', ' ', '\t']).to_lowercase();
    let lower = lower.strip_prefix("we see that ").unwrap_or(&lower);
    let lower = lower.strip_prefix("that ").unwrap_or(lower);
    NONE_PHRASES
        .iter()
        .any(|p| lower.starts_with(p))
        .then(|| "none".to_string())
}

/// A sentence that opens "The total ...", "The number of ...": all of it, as a conclusion.
fn states_result(sentence: &str) -> Option<&str> {
    let head = strip_step_label(sentence);
    let mut words = head.split_whitespace();
    let first = words.next()?;
    let second = words.next()?.to_ascii_lowercase();
    (first.eq_ignore_ascii_case("the") && RESULT_NOUNS.contains(&second.as_str())).then_some(head)
}

/// Whether a marker ends at a word boundary (CJK markers need none).
fn word_ends(marker: &str, rest: &str) -> bool {
    is_cjk_word(marker) || rest.chars().next().is_none_or(|c| !c.is_alphanumeric())
}

fn is_cjk_word(word: &str) -> bool {
    word.chars().all(is_cjk)
}

fn is_cjk(c: char) -> bool {
    matches!(c as u32, 0x3040..=0x30ff | 0x3400..=0x4dbf | 0x4e00..=0x9fff | 0xff00..=0xffef)
}

/// The value a concluding sentence states: at the last `=` or copula that a value follows.
fn stated_value(sentence: &str) -> Option<String> {
    let copulas = copula_ends(sentence);
    let mut anchors: Vec<usize> = equals_signs(sentence)
        .into_iter()
        .filter(|&end| !is_assumed_equation(&sentence[..end - 1], &copulas))
        .collect();
    anchors.extend(copulas);
    anchors.extend(
        sentence
            .match_indices(':')
            .map(|(at, _)| at + 1)
            .filter(|&end| !in_math_span(sentence, end)),
    );
    anchors.sort_unstable();
    anchors.dedup();
    anchors
        .into_iter()
        .rev()
        .find_map(|end| value_after(sentence, end))
}

/// Words before an equation that the sentence names rather than solves ("solutions to the
/// equation x^2 + y^2 = 2xyz").
const EQUATION_NOUNS: &[&str] = &[
    "equation",
    "equations",
    "inequality",
    "inequalities",
    "identity",
    "relation",
    "condition",
    "recurrence",
];

/// Words that open a condition: an equation after one is assumed, not concluded ("triples
/// such that a+b+c=99", "is 7, when m = 1 and n = 1").
const CONDITION_WORDS: &[&str] = &[
    "that", "where", "when", "whenever", "for", "if", "unless", "given",
];

/// Whether the `=` ending `before` belongs to what the sentence talks about rather than to
/// its result: the equation it names (the last prose word before it, LaTeX commands aside,
/// names an equation), or one inside a condition that no copula has closed.
fn is_assumed_equation(before: &str, copulas: &[usize]) -> bool {
    let words: Vec<(usize, &str)> = before
        .split(|c: char| !(c.is_alphabetic() || c == '\\'))
        .map(|w| (w.as_ptr() as usize - before.as_ptr() as usize, w))
        .filter(|(_, w)| !w.starts_with('\\') && w.chars().count() >= 3)
        .collect();
    let names_it = words
        .last()
        .is_some_and(|(_, w)| EQUATION_NOUNS.contains(&w.to_lowercase().as_str()));
    let condition = words
        .iter()
        .rev()
        .find(|(_, w)| CONDITION_WORDS.contains(&w.to_lowercase().as_str()))
        .is_some_and(|&(at, _)| !copulas.iter().any(|&end| end > at && end <= before.len()));
    names_it || condition
}

/// Byte offsets just after each `=` that is an equation's (not `<=`, `>=`, `!=`, `==`).
fn equals_signs(sentence: &str) -> Vec<usize> {
    let bytes = sentence.as_bytes();
    sentence
        .match_indices('=')
        .map(|(at, _)| at)
        .filter(|&at| {
            let before = at.checked_sub(1).map(|i| bytes[i]);
            let after = bytes.get(at + 1).copied();
            !matches!(before, Some(b'<' | b'>' | b'!' | b'=')) && after != Some(b'=')
        })
        .map(|at| at + 1)
        .collect()
}

/// Byte offsets just after each copula (whole words; CJK copulas anywhere).
fn copula_ends(sentence: &str) -> Vec<usize> {
    let mut ends = Vec::new();
    for copula in COPULAS {
        for (at, _) in sentence.match_indices(copula) {
            let end = at + copula.len();
            let whole = is_cjk_word(copula)
                || (sentence[..at]
                    .chars()
                    .next_back()
                    .is_none_or(|c| !c.is_alphanumeric())
                    && sentence[end..]
                        .chars()
                        .next()
                        .is_none_or(|c| !c.is_alphanumeric()));
            let lower_ok = sentence[at..end].chars().all(|c| !c.is_uppercase());
            if whole && lower_ok && !in_math_span(sentence, at) {
                ends.push(end);
            }
        }
    }
    ends
}

/// Whether byte `at` lies inside a `$...$` span.
fn in_math_span(text: &str, at: usize) -> bool {
    text[..at].matches('$').count() % 2 == 1
}

/// The value right after byte `end`: inside a `$` span up to its close, else from the text.
fn value_after(sentence: &str, end: usize) -> Option<String> {
    if in_math_span(sentence, end) {
        let rest = &sentence[end..];
        let close = rest.find('$')?;
        let value = rest[..close].trim();
        return (!value.is_empty() && value.len() <= MAX_VALUE_BYTES).then(|| value.to_string());
    }
    // Inside `\(...\)` or `\[...\]`, a value ends where the span does.
    let rest = &sentence[end..];
    let before = &sentence[..end];
    let close = [("\\(", "\\)"), ("\\[", "\\]")]
        .iter()
        .filter(|(open, close)| before.matches(open).count() > before.matches(close).count())
        .filter_map(|(_, close)| rest.find(close))
        .min()
        .unwrap_or(rest.len());
    value_at(&rest[..close])
}

/// A value opening `text` (after filler words): a `$...$`, `\(...\)` or `\[...\]` span, or a
/// run of math-like words (numbers, operators, single letters, LaTeX), or a number word.
fn value_at(text: &str) -> Option<String> {
    let mut rest = text.trim_start_matches([' ', '\t', ':', '：', ',']);
    loop {
        let lower = rest.to_ascii_lowercase();
        let Some(filler) = FILLERS.iter().find(|f| {
            lower.starts_with(*f)
                && rest[f.len()..]
                    .chars()
                    .next()
                    .is_none_or(|c| !c.is_alphanumeric())
        }) else {
            break;
        };
        rest = rest[filler.len()..].trim_start();
    }
    for (open, close) in [("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")] {
        if let Some(inner) = rest.strip_prefix(open) {
            let value = inner[..inner.find(close)?].trim();
            return (!value.is_empty() && value.len() <= MAX_VALUE_BYTES)
                .then(|| value.to_string());
        }
    }
    if let Some(word) = NUMBER_WORDS.iter().find(|w| {
        rest.get(..w.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(w))
            && rest[w.len()..]
                .chars()
                .next()
                .is_none_or(|c| !c.is_alphanumeric())
    }) {
        return Some(rest[..word.len()].to_string());
    }
    let value = math_run(rest);
    let value = value
        .trim()
        .trim_end_matches(['.', ',', ';', ':', '。', '，']);
    let readable = value.chars().any(|c| c.is_ascii_digit())
        || value.contains('\\')
        || value.chars().any(|c| matches!(c, 'π' | '∞' | '√'));
    (readable && value.len() <= MAX_VALUE_BYTES).then(|| value.to_string())
}

/// The leading run of math-like words of `text`: "(1 + √(1 + 4a)) / 2", "1, 16, and 81", "90"
/// of "90 valid strings". A CJK character ends it.
fn math_run(text: &str) -> &str {
    let text = text.trim_start();
    let cut = text.find(is_cjk).unwrap_or(text.len());
    let text = &text[..cut];
    let words: Vec<(usize, &str)> = text
        .split_whitespace()
        .map(|w| (w.as_ptr() as usize - text.as_ptr() as usize, w))
        .collect();
    let mut end = 0;
    let mut i = 0;
    while i < words.len() {
        let (at, word) = words[i];
        if is_math_word(word) {
            end = at + word.len();
        } else if matches!(word, "and" | "or")
            && words.get(i + 1).is_some_and(|w| is_math_word(w.1))
        {
            // "1, 16, and 81": a list of values goes on.
        } else {
            break;
        }
        // A value that ends its sentence ends the run: "is 21. This completes ..." is 21.
        if is_math_word(word) && word.ends_with(['.', '!', '?']) && !word.ends_with("..") {
            break;
        }
        i += 1;
    }
    &text[..end]
}

/// A word of a formula: it has a digit, LaTeX or a bracket, or its letters are single-letter
/// names.
fn is_math_word(word: &str) -> bool {
    let core = word.trim_end_matches(['.', ',', ';', ':', '!', '?']);
    if core.is_empty() {
        // An ellipsis inside a formula: "x^42 + x^35 + ... + 1".
        return word.starts_with("...");
    }
    // Letters alone make a formula only as single-letter names ("a+b", "x/y", "n"): "km/h"
    // is a unit.
    let single_letters = core
        .split(|c: char| !c.is_alphabetic())
        .all(|run| run.chars().count() <= 1);
    core.chars().any(|c| c.is_ascii_digit())
        || core.contains('\\')
        || core
            .chars()
            .any(|c| matches!(c, '^' | '_' | '(' | ')' | '√' | 'π' | '∞'))
        || single_letters
}

/// A last step that is only an expression (`$2^6 - 2 = 62$`, `\[ L = \frac{1}{2} \]`,
/// `10 * 9 * 8 = 720`): its right-hand side, else the whole of it.
fn bare_expression(step: &str) -> Option<String> {
    let inner = step
        .trim()
        .trim_end_matches(['.', '。'])
        .trim_start_matches("\\[")
        .trim_end_matches("\\]")
        .trim_matches('$')
        .trim_start_matches("\\(")
        .trim_end_matches("\\)")
        .trim();
    if inner.is_empty() || inner.len() > MAX_VALUE_BYTES * 2 || !balanced(step) {
        return None;
    }
    // The right side of the last equation, or the whole step, if it is math, not prose.
    let value = match equals_signs(inner).last() {
        Some(&end) => inner[end..].trim(),
        None => inner,
    };
    let value = value
        .trim_matches('$')
        .trim()
        .trim_end_matches(['.', ','])
        .trim();
    let readable = value.chars().any(|c| c.is_ascii_digit()) || value.contains('\\');
    (readable && !is_prose(value)).then(|| value.to_string())
}

/// Whether a step's `$` signs pair up and its braces and `\\[ \\]` close: a cut-off formula
/// is no answer.
fn balanced(step: &str) -> bool {
    let mut braces = 0i32;
    let mut parens = 0i32;
    for c in step.chars() {
        match c {
            '{' => braces += 1,
            '}' => braces -= 1,
            '(' => parens += 1,
            ')' => parens -= 1,
            _ => {}
        }
        if braces < 0 || parens < 0 {
            return false;
        }
    }
    braces == 0
        && parens == 0
        && step.matches('$').count().is_multiple_of(2)
        && step.matches("\\[").count() == step.matches("\\]").count()
}

/// Whether `text` has words of three or more letters that are not LaTeX commands, or CJK.
fn is_prose(text: &str) -> bool {
    text.chars().any(is_cjk)
        || text
            .split(|c: char| !(c.is_alphabetic() || c == '\\'))
            .any(|w| !w.starts_with('\\') && w.chars().filter(|c| c.is_alphabetic()).count() >= 3)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stated(text: &str) -> Option<String> {
        match conclusion(text) {
            Conclusion::Stated(value) => Some(value),
            _ => None,
        }
    }

    #[test]
    fn numbered_closing_steps_state_their_result() {
        let cases = [
            (
                "7. Sum the cases.\n8. Therefore, there are 90 valid strings of length 6 with \
                 adjacent digits differing by less than or equal to 1.",
                "90",
            ),
            (
                "5. Thus, the total number of strings is 10 * 9 * 8 * 7 * 6 = 30,240.",
                "30,240",
            ),
            ("So, a_50 = 1048576.", "1048576"),
            ("Therefore, $x = 58$.", "58"),
            (
                "Therefore, the largest integer $n$ for which $n^3+100$ is divisible by $n+10$ \
                 is 100.",
                "100",
            ),
            (
                "Therefore, the limit of the sequence defined by a_0 = √a and a_(n+1) = \
                 √(a + a_n) exists and is given by (1 + √(1 + 4a)) / 2.",
                "(1 + √(1 + 4a)) / 2",
            ),
            (
                "Therefore, the number of times is $\\frac{n(n-1)(2n-1)}{6}$.",
                "\\frac{n(n-1)(2n-1)}{6}",
            ),
            (
                "So, the integer solutions to the equation are x = 1, 16, and 81.",
                "1, 16, and 81",
            ),
            (
                "Therefore, we must have $a_{k+1} = \\binom{k+2}{2}$. This completes the \
                 inductive step.",
                "\\binom{k+2}{2}",
            ),
            ("Step 4: In total, we get 45 handshakes.", "45"),
            ("**Hence**, the remainder is -1.", "-1"),
            ("Thus the count is exactly two.", "two"),
            ("Donc, le résultat est 12.", "12"),
            ("Por lo tanto, la respuesta es 7.", "7"),
            ("Insgesamt sind es 30 Wege.", "30"),
            ("因此，答案是42。", "42"),
            ("Answer: 42", "42"),
            ("**Final answer:** $\\frac{1}{2}$", "\\frac{1}{2}"),
            ("Answer: There are 12 ways.", "12"),
            ("**Final Answer:** __12__", "12"),
            ("We add them up.\n$2^6 - 2 = 62$", "62"),
            ("10 * 9 * 8 = 720", "720"),
            (
                "Therefore,\n\\[\nL = \\frac{1 + \\sqrt{5}}{2}\n\\]",
                "\\frac{1 + \\sqrt{5}}{2}",
            ),
            (
                "So the smallest value of \\( a^2 + ab \\) for real \\( a \\) is \\( -9 \\).",
                "-9",
            ),
            ("Therefore, \\( x = 5 \\) works.", "5"),
            (
                "The total number of such strings is a + b = 230 + 311 = 541.",
                "541",
            ),
            (
                "Total number of ways = (n(n+1)/2)^2\nThis is the final answer.",
                "(n(n+1)/2)^2",
            ),
            (
                "which is\n$$\\binom{n+1}{2} - 1 = \\binom{n+2}{2}.$$\nThis completes the proof.",
                "\\binom{n+2}{2}",
            ),
            ("So, the largest value is infinity.", "infinity"),
            (
                "Therefore, the smallest value of f(x) is negative infinity.",
                "negative infinity",
            ),
            (
                "Adding up all these cases, we get a total of 243 + 405 = 648 strings.",
                "648",
            ),
            (
                "Therefore, there are no four-digit automorphic numbers.",
                "none",
            ),
            (
                "This is a contradiction, so there is no five-digit number abcde.",
                "none",
            ),
            (
                "In conclusion, there are no positive integer solutions to the equation \
                 x^2 + y^2 + z^2 = 2xyz.",
                "none",
            ),
            (
                "Therefore, the solutions of the equation $x^2 = 4$ are 2 and -2.",
                "2 and -2",
            ),
            (
                "So, there are 5050 ordered triples (a, b, c) such that a+b+c=99.",
                "5050",
            ),
            (
                "Therefore, the smallest value is $0$, which occurs when $a=b$.",
                "0",
            ),
            (
                "So, the smallest value of |12^m - 5^n| is 7, when m = 1 and n = 1.",
                "7",
            ),
            ("Thus, if we add them, we get 10 + 5 = 15.", "15"),
            ("So, for n = 5, the value is 3.", "3"),
            (
                "Therefore, the remainder is x^42 + x^35 + ... + x^7 + 1.",
                "x^42 + x^35 + ... + x^7 + 1",
            ),
            (
                "In other words, the smallest value of $f(x)$ is $f(-3) = 0$.",
                "0",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(stated(text).as_deref(), Some(want), "{text}");
        }
    }

    #[test]
    fn what_is_no_conclusion_says_so() {
        assert_eq!(
            conclusion("Therefore, the given expression is not a prime number."),
            Conclusion::NoValue("Therefore, the given expression is not a prime number.".into())
        );
        for text in [
            "This is the final expression for the sum S in terms of n.",
            "We continue with the next case.",
            "Also, 5 is odd.",
            "Sorting the list takes time.",
            "The proof is complete.",
            "This is the final answer.",
            "$$\\left( \\sum_{1 \\leq",
            "= (2n",
            "",
        ] {
            assert_eq!(conclusion(text), Conclusion::Absent, "{text}");
        }
        let named = "Therefore, there exist integer solutions to the equation \
                     $(x^2-1)(y^2-1)+1981=z^2$.";
        assert_eq!(conclusion(named), Conclusion::NoValue(named.into()));
        // Only the last step counts: an earlier conclusion is not the closing one.
        assert_eq!(
            conclusion("Therefore, x = 4.\nWe now look at the other case."),
            Conclusion::Absent
        );
        assert!(missing_answer_detail("We stop here.").starts_with("no conclusion"));
        assert!(
            missing_answer_detail("Thus, it is odd.").contains("\"Thus, it is odd.\""),
            "{}",
            missing_answer_detail("Thus, it is odd.")
        );
    }

    #[test]
    fn markers_are_whole_words() {
        assert_eq!(after_marker("Solve it: x = 2"), None);
        assert_eq!(after_marker("Thusly 3"), None);
        assert_eq!(after_marker("So 3 remain"), Some(" 3 remain"));
        assert_eq!(after_marker("所以x=3"), Some("x=3"));
    }
}
