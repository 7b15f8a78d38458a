//! How errors read on stderr: the chain on one line, and for library errors that a flag
//! addresses, that flag. The library's own messages never name flags.

use curate::error::{OutputExists, OutputKind};
use curate::influence::UndampedZero;
use curate::model::train::Diverged;
use curate::model::{MismatchKind, TensorMismatch};

/// An error as printed: its chain on one line, then what to change on the command line when
/// a library error has a flag for it.
pub fn error_line(err: &anyhow::Error) -> String {
    // Errors may quote a URL with credentials in it (a base URL, a redirect).
    let line = curate::text::redact_credentials(&curate::error::one_line(&chain_text(err)));
    match flag_advice(err) {
        Some(advice) => format!("{line}; {advice}"),
        None => line,
    }
}

/// The causes joined by `: `, leaving out a cause whose text an outer one already quotes (a
/// library error that includes its I/O error's message, then that I/O error itself).
fn chain_text(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if !parts.iter().any(|part| part.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

/// The flag that addresses a typed library error in `err`'s chain.
fn flag_advice(err: &anyhow::Error) -> Option<&'static str> {
    err.chain().find_map(|cause| {
        if let Some(exists) = cause.downcast_ref::<OutputExists>() {
            return Some(match exists.kind {
                OutputKind::File | OutputKind::Directory => "pass --force to replace it",
            });
        }
        if let Some(mismatch) = cause.downcast_ref::<TensorMismatch>() {
            return Some(match mismatch.kind {
                MismatchKind::Missing => "--allow-partial initialises them",
                MismatchKind::Unused => "--allow-partial ignores them",
            });
        }
        if cause.is::<Diverged>() {
            return Some("lower --lr");
        }
        if cause.is::<UndampedZero>() {
            return Some("give a positive --damping");
        }
        None
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_errors_get_the_flag_that_addresses_them() {
        let exists = anyhow::Error::new(OutputExists::file("o.csv")).context("writing scores");
        assert_eq!(
            error_line(&exists),
            "writing scores: o.csv: already exists; pass --force to replace it"
        );
        let dir = anyhow::Error::new(OutputExists::directory("m"));
        assert_eq!(
            error_line(&dir),
            "m already exists; pass --force to replace it"
        );
        let diverged = anyhow::Error::new(Diverged {
            loss: f64::NAN,
            step: 3,
        })
        .context("retraining");
        assert_eq!(
            error_line(&diverged),
            "retraining: loss became NaN at step 3; lower --lr"
        );
        let plain = anyhow::anyhow!("disk full\nreally");
        assert_eq!(error_line(&plain), "disk full; really");
        // An error that quotes its cause's message does not repeat it.
        let io = std::io::Error::from_raw_os_error(28);
        let quoted = format!("write failed: {io}");
        let repeated = anyhow::Error::new(io)
            .context(quoted)
            .context("x.csv: cannot write");
        let line = error_line(&repeated);
        assert_eq!(line.matches("os error 28").count(), 1, "{line}");
        assert!(
            line.starts_with("x.csv: cannot write: write failed: "),
            "{line}"
        );
    }
}
