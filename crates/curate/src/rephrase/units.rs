//! Rules mode: cut a reasoning trace into MinD units, each ending in an intermediate answer.
//!
//! Paragraphs keep their separators, so the units concatenate back to the trace byte for byte.
//! A paragraph that opens with a switch or check marker starts a new segment; a unit closes at
//! the end of the first segment that states an answer; segments without one join the next unit,
//! and trailing ones the last.

use std::ops::Range;

use super::answer::{Found, Target, closing_answer, explicit_answer, implicit_answer};

/// What a marker announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkerKind {
    /// Another approach.
    Switch,
    /// Checking the work so far.
    Check,
}

/// Phrases that open a new segment when a paragraph starts with them.
#[derive(Debug, Clone)]
pub struct Markers {
    pub version: String,
    /// Lowercased phrases, longest first so "but wait" wins over "wait".
    phrases: Vec<(String, MarkerKind)>,
}

/// The bundled marker file.
pub(crate) const DEFAULT_MARKERS: &str = include_str!("markers.txt");

impl Markers {
    /// Parse a marker file: `KIND<TAB>PHRASE` lines, `#` comments, `# version: V`.
    pub fn parse(text: &str) -> Result<Markers, String> {
        let mut version = "unversioned".to_string();
        let mut phrases = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim_end();
            if let Some(comment) = line.strip_prefix('#') {
                if let Some(v) = comment.trim().strip_prefix("version:") {
                    version = v.trim().to_string();
                }
                continue;
            }
            if line.trim().is_empty() {
                continue;
            }
            let (kind, phrase) = line
                .split_once('\t')
                .ok_or_else(|| format!("line {}: expected KIND<TAB>PHRASE", n + 1))?;
            let kind = match kind.trim() {
                "switch" => MarkerKind::Switch,
                "check" => MarkerKind::Check,
                other => {
                    return Err(format!(
                        "line {}: unknown marker kind '{other}' (switch or check)",
                        n + 1
                    ));
                }
            };
            let phrase = phrase.trim().to_lowercase();
            if phrase.is_empty() {
                return Err(format!("line {}: empty phrase", n + 1));
            }
            phrases.push((phrase, kind));
        }
        if phrases.is_empty() {
            return Err("no markers".to_string());
        }
        phrases.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
        Ok(Markers { version, phrases })
    }

    pub fn bundled() -> Markers {
        Markers::parse(DEFAULT_MARKERS).expect("the bundled marker file parses")
    }

    /// The marker a paragraph opens with, if any (whole words, case-insensitive, after
    /// leading whitespace and emphasis).
    pub fn opening(&self, paragraph: &str) -> Option<MarkerKind> {
        let head = paragraph
            .trim_start()
            .trim_start_matches(['*', '_', '"', '\''])
            .to_lowercase();
        self.phrases.iter().find_map(|(phrase, kind)| {
            let rest = head.strip_prefix(phrase.as_str())?;
            let boundary = rest.chars().next().is_none_or(|c| !c.is_alphanumeric());
            boundary.then_some(*kind)
        })
    }
}

/// Paragraphs of `text` as byte ranges that cover it exactly: each takes the blank-line
/// separator after it.
pub fn paragraphs(text: &str) -> Vec<Range<usize>> {
    let bytes = text.as_bytes();
    let mut ranges = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\n' {
            // A separator: this newline, then only whitespace up to another newline.
            let mut j = i + 1;
            let mut blank = false;
            while j < bytes.len()
                && (bytes[j] == b' ' || bytes[j] == b'\t' || bytes[j] == b'\r' || bytes[j] == b'\n')
            {
                if bytes[j] == b'\n' {
                    blank = true;
                }
                j += 1;
            }
            if blank {
                // Keep trailing spaces of the last blank line with the separator.
                ranges.push(start..j);
                start = j;
                i = j;
                continue;
            }
        }
        i += 1;
    }
    if start < bytes.len() || ranges.is_empty() {
        ranges.push(start..bytes.len());
    }
    ranges
}

#[derive(Debug, Clone, Copy, Default)]
pub struct UnitOptions {
    /// Units shorter than this (in characters) join the next one (the last joins the one
    /// before).
    pub min_unit_chars: usize,
    /// At most this many units: the ones past it join the last kept unit.
    pub max_units: Option<usize>,
}

/// One unit: a span of the trace and the answer it ends with (none for the last unit when the
/// trace itself states none).
#[derive(Debug, Clone, PartialEq)]
pub struct Unit {
    pub span: Range<usize>,
    pub answer: Option<Found>,
    /// Segments in the unit, and how the first of them opened.
    pub segments: usize,
    pub opened_by: Option<MarkerKind>,
}

/// A run of paragraphs that opens a unit or continues one: cut at markers (rules mode) or
/// at the unit ends an LLM proposed (boundaries mode).
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    pub span: Range<usize>,
    pub opened_by: Option<MarkerKind>,
}

/// Segments of `thinking`: runs of paragraphs, a new one at every paragraph opening with a
/// marker.
pub(crate) fn marker_segments(thinking: &str, markers: &Markers) -> Vec<Segment> {
    let mut segments: Vec<Segment> = Vec::new();
    for range in paragraphs(thinking) {
        let opening = markers.opening(&thinking[range.clone()]);
        match segments.last_mut() {
            Some(last) if opening.is_none() => last.span.end = range.end,
            _ => segments.push(Segment {
                span: range,
                opened_by: opening,
            }),
        }
    }
    segments
}

/// Cut `thinking` into units. With `reference`, a segment whose text holds a value equal to
/// the reference also closes a unit (an implicit conclusion).
pub fn units(
    thinking: &str,
    markers: &Markers,
    reference: Option<&str>,
    options: UnitOptions,
) -> Vec<Unit> {
    close_units(
        thinking,
        marker_segments(thinking, markers),
        reference,
        options,
    )
}

/// Units from segments that cover `thinking` in order: a unit closes at the end of the first
/// segment with an answer candidate; segments without one join the next unit, trailing ones
/// the last. The last segment's candidates include a stated conclusion
/// ([`closing_answer`]): a solution that ends "Therefore, there are 90 ..." has an answer
/// whatever the reference says.
pub(crate) fn close_units(
    thinking: &str,
    segments: Vec<Segment>,
    reference: Option<&str>,
    options: UnitOptions,
) -> Vec<Unit> {
    let target = reference.map(Target::new);
    let mut units: Vec<Unit> = Vec::new();
    let mut open: Option<Unit> = None;
    let count = segments.len();
    for (i, Segment { span, opened_by }) in segments.into_iter().enumerate() {
        let text = &thinking[span.clone()];
        let answer = if i + 1 == count {
            closing_answer(text, target.as_ref())
        } else {
            explicit_answer(text).or_else(|| target.as_ref().and_then(|t| implicit_answer(text, t)))
        };
        let unit = open.get_or_insert(Unit {
            span: span.start..span.start,
            answer: None,
            segments: 0,
            opened_by,
        });
        unit.span.end = span.end;
        unit.segments += 1;
        if answer.is_some() {
            unit.answer = answer;
            units.push(open.take().expect("just filled"));
        }
    }
    if let Some(rest) = open {
        // Trailing segments without an answer join the last unit.
        match units.last_mut() {
            Some(last) => {
                last.span.end = rest.span.end;
                last.segments += rest.segments;
            }
            None => units.push(rest),
        }
    }
    merge_short(&mut units, thinking, options.min_unit_chars);
    if let Some(max) = options.max_units
        && max > 0
        && units.len() > max
    {
        let tail = units.split_off(max);
        let last = units.last_mut().expect("max > 0");
        for unit in tail {
            last.span.end = unit.span.end;
            last.segments += unit.segments;
            last.answer = unit.answer.or(last.answer.take());
        }
    }
    units
}

/// Units under `min_chars` join the next unit (the last one joins the one before).
fn merge_short(units: &mut Vec<Unit>, text: &str, min_chars: usize) {
    if min_chars == 0 {
        return;
    }
    let chars = |u: &Unit| text[u.span.clone()].chars().count();
    let mut i = 0;
    while units.len() > 1 && i < units.len() {
        if chars(&units[i]) >= min_chars {
            i += 1;
            continue;
        }
        if i + 1 < units.len() {
            let short = units.remove(i);
            let next = &mut units[i];
            next.span.start = short.span.start;
            next.segments += short.segments;
            next.opened_by = short.opened_by;
        } else {
            let short = units.remove(i);
            let previous = &mut units[i - 1];
            previous.span.end = short.span.end;
            previous.segments += short.segments;
            previous.answer = short.answer.or(previous.answer.take());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rephrase::answer::AnswerKind;

    #[test]
    fn paragraphs_cover_the_text_exactly() {
        for text in [
            "a\n\nb",
            "a\n\n\nb\n\n",
            "one line",
            "a\nb\n \n\tc",
            "\n\nleading",
            "",
            "x\r\n\r\ny",
        ] {
            let ranges = paragraphs(text);
            let joined: String = ranges.iter().map(|r| &text[r.clone()]).collect();
            assert_eq!(joined, text);
            for w in ranges.windows(2) {
                assert_eq!(w[0].end, w[1].start);
            }
        }
        assert_eq!(paragraphs("a\n\nb\nc\n\nd").len(), 3);
    }

    #[test]
    fn markers_parse_and_match_whole_words() {
        let m = Markers::bundled();
        assert_eq!(m.version, "1");
        assert_eq!(m.opening("Wait, that is wrong."), Some(MarkerKind::Check));
        assert_eq!(
            m.opening("  **Alternatively**, use"),
            Some(MarkerKind::Switch)
        );
        assert_eq!(m.opening("Waiting for it"), None);
        assert_eq!(m.opening("We wait"), None);
        assert!(Markers::parse("switch alternatively").is_err());
        assert!(Markers::parse("maybe\tx").is_err());
    }

    const TRACE: &str = "Let x be the count. Then 3x = 12, so x = 4.\n\nSo the answer is 4.\n\n\
Wait, let me check: 3 * 4 = 12. Yes.\n\nHmm, but the question asks for twice that.\n\n\
So the answer is 8.\n\nAlternatively, count pairs directly: 2 * 4.\n\nStill 8.";

    #[test]
    fn units_close_at_answers_and_merge_the_rest() {
        let units = units(TRACE, &Markers::bundled(), None, UnitOptions::default());
        let texts: Vec<&str> = units.iter().map(|u| &TRACE[u.span.clone()]).collect();
        assert_eq!(texts.concat(), TRACE);
        // 1: up to "the answer is 4"; 2: the check and "twice" segments close at "8";
        // 3: the switch, with no answer, joins the last unit.
        assert_eq!(units.len(), 2);
        assert_eq!(units[0].answer.as_ref().unwrap().text, "4");
        assert_eq!(units[1].answer.as_ref().unwrap().text, "8");
        assert_eq!(units[1].segments, 3);
        assert_eq!(units[1].opened_by, Some(MarkerKind::Check));
        assert!(texts[1].ends_with("Still 8."));
    }

    #[test]
    fn implicit_answers_need_the_reference() {
        let trace = "Add them: 10 + 15 = 25.\n\nWait, recount: 25 indeed.\n\nDone.";
        assert_eq!(
            units(trace, &Markers::bundled(), None, UnitOptions::default()).len(),
            1
        );
        let with = units(
            trace,
            &Markers::bundled(),
            Some("25"),
            UnitOptions::default(),
        );
        assert_eq!(with.len(), 2);
        assert_eq!(with[0].answer.as_ref().unwrap().kind, AnswerKind::Implicit);
    }

    #[test]
    fn short_units_merge_and_max_units_caps() {
        let all = units(TRACE, &Markers::bundled(), None, UnitOptions::default());
        let merged = units(
            TRACE,
            &Markers::bundled(),
            None,
            UnitOptions {
                min_unit_chars: 80,
                max_units: None,
            },
        );
        assert!(merged.len() < all.len() || all.len() == 1);
        let capped = units(
            TRACE,
            &Markers::bundled(),
            None,
            UnitOptions {
                min_unit_chars: 0,
                max_units: Some(1),
            },
        );
        assert_eq!(capped.len(), 1);
        assert_eq!(capped[0].span, 0..TRACE.len());
        assert_eq!(capped[0].answer.as_ref().unwrap().text, "8");
    }
}
