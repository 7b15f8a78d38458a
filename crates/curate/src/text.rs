//! Text for people: aligned tables, clipped values and shell-quoted command lines, for the
//! reports commands print (data goes out as tables and JSON; this is only their text form).

/// How a column of a text table is aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// Render rows under a header as aligned text lines (two spaces between columns, no trailing
/// spaces), for the human-readable reports commands print.
/// "1 row", "2 rows": a count and its noun, singular or plural.
pub fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

pub fn text_table(header: &[&str], rows: &[Vec<String>], align: &[Align]) -> Vec<String> {
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|row| row[i].chars().count())
                .chain([header[i].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let text = cells
            .enumerate()
            .map(|(i, cell)| {
                let pad = " ".repeat(widths[i] - cell.chars().count());
                match align[i] {
                    Align::Left => format!("{cell}{pad}"),
                    Align::Right => format!("{pad}{cell}"),
                }
            })
            .collect::<Vec<_>>()
            .join("  ");
        text.trim_end().to_string()
    };
    let mut lines = vec![line(&mut header.iter().copied())];
    lines.extend(
        rows.iter()
            .map(|row| line(&mut row.iter().map(String::as_str))),
    );
    lines
}

/// `text` cut to `max_chars` characters, the cut marked with an ellipsis.
pub(crate) fn clip(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        text.to_string()
    } else {
        let kept: String = text.chars().take(max_chars - 1).collect();
        format!("{kept}…")
    }
}

/// Quote arguments only where a shell would need it, so the line can be pasted back.
pub(crate) fn shell_words(args: &[String]) -> String {
    args.iter()
        .map(|arg| {
            let plain = !arg.is_empty()
                && arg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-./=:,@+%".contains(c));
            if plain {
                arg.clone()
            } else {
                format!("'{}'", arg.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_table_aligns_columns() {
        let rows = vec![
            vec!["a".to_string(), "10".to_string(), "x".to_string()],
            vec!["long".to_string(), "2".to_string(), String::new()],
        ];
        let lines = text_table(
            &["name", "n", "note"],
            &rows,
            &[Align::Left, Align::Right, Align::Left],
        );
        assert_eq!(lines, vec!["name   n  note", "a     10  x", "long   2"]);
    }

    #[test]
    fn shell_words_quote_only_when_needed() {
        let args = ["curate", "convert", "a b.csv", "it's", "--out=x.parquet"].map(String::from);
        assert_eq!(
            shell_words(&args),
            r"curate convert 'a b.csv' 'it'\''s' --out=x.parquet"
        );
    }

    #[test]
    fn clip_marks_cut_text() {
        assert_eq!(clip("abcdef", 4), "abc…");
        assert_eq!(clip("abc", 4), "abc");
    }
}

/// `text` with the credentials of every URL in it (`https://user:secret@host/...`) replaced by
/// `***`, for anything curate echoes: errors, reports, the command line kept as provenance.
pub fn redact_credentials(text: &str) -> String {
    static URL_CREDENTIALS: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let pattern = URL_CREDENTIALS.get_or_init(|| {
        regex::Regex::new(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/\s@?#]+@").expect("a valid regex")
    });
    pattern.replace_all(text, "${1}***@").into_owned()
}

#[cfg(test)]
mod redact_tests {
    use super::redact_credentials;

    #[test]
    fn url_credentials_are_hidden_and_the_rest_kept() {
        assert_eq!(
            redact_credentials("--base-url https://me:s3cret@api.example/v1 --model m"),
            "--base-url https://***@api.example/v1 --model m"
        );
        assert_eq!(
            redact_credentials("http://token@127.0.0.1:8000: HTTP 401"),
            "http://***@127.0.0.1:8000: HTTP 401"
        );
        let plain = "http://127.0.0.1:8000/v1/chat/completions?a=b@c mail me@example.org";
        assert_eq!(redact_credentials(plain), plain);
    }
}
