//! Segmenters: split a response into consecutive pieces (reasoning steps, sentences, the part
//! before and after the answer) that cover it completely, so segment scores sum to the example.

use std::ops::Range;

use regex::Regex;

#[derive(Debug, Clone)]
pub enum Segmenter {
    /// Blank-line separated paragraphs (the blank lines end the paragraph before them).
    Paragraph,
    /// Sentences ending in `.`, `!` or `?` before whitespace, and line breaks.
    Sentence,
    /// Reasoning steps: a line that starts with `Step N`, `N.`, `N)` or a bullet opens a step;
    /// other lines continue it. Text without such markers is split into lines.
    Step,
    /// A new segment at every match of the pattern.
    Pattern(Regex),
    /// Up to the end of the first occurrence of the reference answer, and the rest.
    Answer,
}

impl std::str::FromStr for Segmenter {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        match spec {
            "paragraph" => Ok(Segmenter::Paragraph),
            "sentence" => Ok(Segmenter::Sentence),
            "step" => Ok(Segmenter::Step),
            "answer" => Ok(Segmenter::Answer),
            _ => match spec.strip_prefix("regex:") {
                Some(pattern) => Regex::new(pattern)
                    .map(Segmenter::Pattern)
                    .map_err(|e| e.to_string()),
                None => {
                    Err("expected paragraph, sentence, step, answer or regex:PATTERN".to_string())
                }
            },
        }
    }
}

/// A piece of the text: byte range and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub bytes: Range<usize>,
    pub kind: &'static str,
}

impl Segmenter {
    /// Consecutive segments covering `text` (none for empty text). `answer` is the reference
    /// answer for `Segmenter::Answer`.
    pub fn split(&self, text: &str, answer: Option<&str>) -> Vec<Segment> {
        if text.is_empty() {
            return Vec::new();
        }
        let step = |kind| move |bytes| Segment { bytes, kind };
        match self {
            Segmenter::Paragraph => {
                let breaks = Regex::new(r"\n[ \t]*\n(?:[ \t]*\n)*").expect("valid pattern");
                cut(text, breaks.find_iter(text).map(|m| m.end()))
                    .map(step("paragraph"))
                    .collect()
            }
            Segmenter::Sentence => {
                let ends = Regex::new(r"[.!?]+[\s]+|\n+").expect("valid pattern");
                cut(text, ends.find_iter(text).map(|m| m.end()))
                    .map(step("sentence"))
                    .collect()
            }
            Segmenter::Step => {
                let marker = Regex::new(r"(?m)^[ \t]*(?:[Ss]tep\s*\d+|\d+[.)]\s|[-*•]\s)")
                    .expect("valid pattern");
                let starts: Vec<usize> = marker.find_iter(text).map(|m| m.start()).collect();
                let starts = if starts.iter().any(|&s| s > 0) {
                    starts
                } else {
                    // No markers: every line is a step.
                    let lines = Regex::new(r"\n+").expect("valid pattern");
                    lines.find_iter(text).map(|m| m.end()).collect()
                };
                cut(text, starts.into_iter()).map(step("step")).collect()
            }
            Segmenter::Pattern(pattern) => cut(text, pattern.find_iter(text).map(|m| m.start()))
                .map(step("match"))
                .collect(),
            Segmenter::Answer => {
                let found = answer
                    .map(str::trim)
                    .filter(|a| !a.is_empty())
                    .and_then(|a| text.find(a).map(|at| at + a.len()));
                match found {
                    Some(end) if end < text.len() => vec![
                        Segment {
                            bytes: 0..end,
                            kind: "to_answer",
                        },
                        Segment {
                            bytes: end..text.len(),
                            kind: "after_answer",
                        },
                    ],
                    Some(_) => vec![Segment {
                        bytes: 0..text.len(),
                        kind: "to_answer",
                    }],
                    None => vec![Segment {
                        bytes: 0..text.len(),
                        kind: "no_answer",
                    }],
                }
            }
        }
    }
}

/// Ranges between cut points (empty pieces dropped), covering `0..text.len()`.
fn cut(text: &str, points: impl Iterator<Item = usize>) -> impl Iterator<Item = Range<usize>> {
    let mut bounds: Vec<usize> = std::iter::once(0)
        .chain(points.filter(|&p| p > 0 && p < text.len()))
        .chain(std::iter::once(text.len()))
        .collect();
    bounds.dedup();
    bounds
        .windows(2)
        .map(|w| w[0]..w[1])
        .collect::<Vec<_>>()
        .into_iter()
}

/// The segment of each token, given the byte offset where each token's text starts in the
/// segmented text: the segment containing that offset (tokens past the end go to the last).
pub(crate) fn assign(token_starts: &[usize], segments: &[Segment]) -> Vec<usize> {
    token_starts
        .iter()
        .map(|&start| {
            segments
                .iter()
                .position(|s| s.bytes.contains(&start))
                .unwrap_or(segments.len().saturating_sub(1))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces<'t>(text: &'t str, segmenter: &str, answer: Option<&str>) -> Vec<&'t str> {
        let segmenter: Segmenter = segmenter.parse().unwrap();
        let segments = segmenter.split(text, answer);
        // Always a cover of the text, in order.
        let joined: String = segments.iter().map(|s| &text[s.bytes.clone()]).collect();
        assert_eq!(joined, text);
        segments.iter().map(|s| &text[s.bytes.clone()]).collect()
    }

    #[test]
    fn paragraphs_keep_their_blank_lines() {
        assert_eq!(
            pieces("First idea.\n\nSecond one.\n \n\nThird.", "paragraph", None),
            ["First idea.\n\n", "Second one.\n \n\n", "Third."]
        );
        assert_eq!(pieces("one line", "paragraph", None), ["one line"]);
    }

    #[test]
    fn sentences_split_at_terminal_punctuation_and_lines() {
        assert_eq!(
            pieces("So 3.5 apples. Then 2! Why? Done\nnext", "sentence", None),
            ["So 3.5 apples. ", "Then 2! ", "Why? ", "Done\n", "next"]
        );
    }

    #[test]
    fn steps_follow_markers_or_lines() {
        assert_eq!(
            pieces("Plan.\nStep 1: add\nmore\nStep 2: done", "step", None),
            ["Plan.\n", "Step 1: add\nmore\n", "Step 2: done"]
        );
        assert_eq!(
            pieces("1. a\n2) b\n- c", "step", None),
            ["1. a\n", "2) b\n", "- c"]
        );
        assert_eq!(
            pieces("a = 1\nb = 2\n", "step", None),
            ["a = 1\n", "b = 2\n"]
        );
    }

    #[test]
    fn regex_opens_a_segment_at_each_match() {
        assert_eq!(
            pieces("x Wait y Wait z", "regex:Wait", None),
            ["x ", "Wait y ", "Wait z"]
        );
        assert!("regex:(".parse::<Segmenter>().is_err());
        assert!("words".parse::<Segmenter>().is_err());
    }

    #[test]
    fn answer_splits_after_its_first_occurrence() {
        assert_eq!(
            pieces("so 42 it is. Check: 42 again", "answer", Some("42")),
            ["so 42", " it is. Check: 42 again"]
        );
        let segments = Segmenter::Answer.split("no number", Some("42"));
        assert_eq!(segments[0].kind, "no_answer");
        assert_eq!(
            Segmenter::Answer.split("is 42", Some("42"))[0].kind,
            "to_answer"
        );
    }

    #[test]
    fn tokens_go_to_the_segment_holding_their_start() {
        let segments = Segmenter::Paragraph.split("ab\n\ncd", None);
        assert_eq!(assign(&[0, 1, 3, 4, 5, 6], &segments), [0, 0, 0, 1, 1, 1]);
    }
}
