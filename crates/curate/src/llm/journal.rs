//! The journal of an LLM run, `OUT.curate-journal`: one JSON line per request the endpoint
//! answered (what the run keeps of the reply, or why the record was rejected), appended and
//! flushed as answers arrive. An interrupted or budget-stopped run keeps it; `--resume` reads it back and
//! asks only for the records it lacks; a completed run removes it after writing its outputs.
//!
//! The header holds a fingerprint of every request the run makes, so a journal is only ever
//! continued by the same command, input, mode, model, endpoint and prompts.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use serde_json::{Value, json};

use super::Refusal;
use crate::error::InputError;

/// A journal this run may not simply continue or replace.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JournalConflict {
    /// An interrupted run's journal, and neither resuming nor replacing was asked for.
    #[error("{0}: an interrupted run's journal is here")]
    Interrupted(String),
    /// Resuming a journal another run (input, mode, model, endpoint or prompts) wrote.
    #[error("{0}: written by a different run (other input, mode, model, endpoint or prompts)")]
    OtherRun(String),
}

/// What the endpoint gave for one record.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// What the caller keeps of a usable reply (its message content, say).
    Content(String),
    /// Rejected on the endpoint's account (unusable reply, refused request).
    Rejected {
        reason: Refusal,
        detail: Option<String>,
    },
}

/// A journal entry: the request's cache key, and the answer.
pub type Entry = (String, Answer);

pub struct Journal {
    path: PathBuf,
    file: File,
}

/// What a journal is for: the command that writes it, and a fingerprint of every request its
/// run makes.
#[derive(Debug, Clone, Copy)]
pub struct JournalId<'a> {
    pub command: &'a str,
    pub fingerprint: &'a str,
}

/// The journal beside an output file.
pub fn path_for(out: &str) -> PathBuf {
    PathBuf::from(format!("{out}.curate-journal"))
}

/// The reply store beside a journal: `OUT.curate-journal` keeps its replies in
/// `OUT.curate-replies`.
fn replies_for(journal: &Path) -> PathBuf {
    let text = journal.display().to_string();
    let stem = text.strip_suffix(".curate-journal").unwrap_or(&text);
    PathBuf::from(format!("{stem}.curate-replies"))
}

impl Journal {
    /// Start a journal at `path`, or with `resume` continue the one there. An existing journal
    /// is only replaced with `force`.
    pub fn open(
        path: &Path,
        id: JournalId,
        resume: bool,
        force: bool,
    ) -> Result<(Journal, HashMap<usize, Entry>)> {
        let label = path.display().to_string();
        if path.exists() && resume {
            let (entries, good_len) = load(path, id)?;
            // A line cut short by a crash is dropped, so appends start on a fresh line.
            let file = OpenOptions::new()
                .append(true)
                .open(path)
                .with_context(|| format!("{label}: cannot open"))?;
            file.set_len(good_len)
                .with_context(|| format!("{label}: cannot write"))?;
            return Ok((
                Journal {
                    path: path.to_path_buf(),
                    file,
                },
                entries,
            ));
        }
        if path.exists() && !force {
            return Err(JournalConflict::Interrupted(label).into());
        }
        let mut file = File::create(path).with_context(|| format!("{label}: cannot create"))?;
        let header =
            json!({"curate_journal": 1, "command": id.command, "fingerprint": id.fingerprint});
        writeln!(file, "{header}").with_context(|| format!("{label}: cannot write"))?;
        Ok((
            Journal {
                path: path.to_path_buf(),
                file,
            },
            HashMap::new(),
        ))
    }

    /// The entries of the journal at `path` without touching it (for `--dry-run`); none when
    /// there is no journal.
    pub fn peek(path: &Path, id: JournalId) -> Result<HashMap<usize, Entry>> {
        if !path.exists() {
            return Ok(HashMap::new());
        }
        Ok(load(path, id)?.0)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Record the answer for job `row` (0-based; an input row, or a request's index where a row
    /// needs several) and flush it to the file.
    pub(crate) fn append(&mut self, row: usize, key: &str, answer: &Answer) -> Result<()> {
        let line = match answer {
            Answer::Content(content) => json!({"row": row, "key": key, "content": content}),
            Answer::Rejected { reason, detail } => {
                json!({"row": row, "key": key, "reject": reason.code(), "detail": detail})
            }
        };
        writeln!(self.file, "{line}")
            .and_then(|()| self.file.flush())
            .with_context(|| format!("{}: cannot write", self.path.display()))
    }

    /// The run is complete and its outputs are written: the journal goes.
    pub fn remove(self) -> Result<()> {
        drop(self.file);
        super::cache::ReplyCache::remove_private(&replies_for(&self.path))
            .with_context(|| format!("{}: cannot remove", replies_for(&self.path).display()))?;
        std::fs::remove_file(&self.path)
            .with_context(|| format!("{}: cannot remove", self.path.display()))
    }

    /// Where the run keeps every reply as it arrives (see `ReplyCache::open_private`).
    pub fn replies(&self) -> PathBuf {
        replies_for(&self.path)
    }
}

/// Entries by row, and the length of the complete lines.
fn load(path: &Path, id: JournalId) -> Result<(HashMap<usize, Entry>, u64)> {
    let label = path.display().to_string();
    let text = std::fs::read_to_string(path).with_context(|| format!("{label}: cannot read"))?;
    let mut entries = HashMap::new();
    let mut good_len = 0u64;
    let mut complete = text.split_inclusive('\n').filter(|l| l.ends_with('\n'));
    let header: Value = complete
        .next()
        .and_then(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| InputError::new(&label, "not a curate journal (no header line)"))?;
    if header["curate_journal"] != 1 || header["command"] != id.command {
        return Err(InputError::new(&label, format!("not a curate {} journal", id.command)).into());
    }
    if header["fingerprint"] != id.fingerprint {
        return Err(JournalConflict::OtherRun(label).into());
    }
    good_len += text.split_inclusive('\n').next().map_or(0, str::len) as u64;
    for (n, line) in complete.enumerate() {
        let bad = || InputError::new(&label, format!("line {}: not a journal entry", n + 2));
        let value: Value = serde_json::from_str(line).map_err(|_| bad())?;
        let row = value["row"].as_u64().ok_or_else(bad)? as usize;
        let key = value["key"].as_str().ok_or_else(bad)?.to_string();
        let answer = match (value["content"].as_str(), value["reject"].as_str()) {
            (Some(content), None) => Answer::Content(content.to_string()),
            (None, Some(code)) => Answer::Rejected {
                reason: Refusal::from_code(code).ok_or_else(bad)?,
                detail: value["detail"].as_str().map(str::to_string),
            },
            _ => return Err(bad().into()),
        };
        entries.insert(row, (key, answer));
        good_len += line.len() as u64;
    }
    Ok((entries, good_len))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: JournalId = JournalId {
        command: "rephrase",
        fingerprint: "fp",
    };

    #[test]
    fn entries_survive_a_resume_and_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl.curate-journal");
        let (mut journal, entries) = Journal::open(&path, ID, false, false).unwrap();
        assert!(entries.is_empty());
        journal
            .append(3, "k3", &Answer::Content("{\"ends\": [1]}".into()))
            .unwrap();
        let rejected = Answer::Rejected {
            reason: Refusal::UnusableReply,
            detail: Some("not JSON".into()),
        };
        journal.append(0, "k0", &rejected).unwrap();
        drop(journal);
        // A crash in the middle of a line.
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        write!(file, "{{\"row\": 5, \"ke").unwrap();
        drop(file);
        let conflict = |result: Result<(Journal, HashMap<usize, Entry>)>| {
            result.err().unwrap().downcast::<JournalConflict>().unwrap()
        };
        assert!(matches!(
            conflict(Journal::open(&path, ID, false, false)),
            JournalConflict::Interrupted(_)
        ));
        assert!(matches!(
            conflict(Journal::open(
                &path,
                JournalId {
                    fingerprint: "other",
                    ..ID
                },
                true,
                false
            )),
            JournalConflict::OtherRun(_)
        ));
        assert_eq!(Journal::peek(&path, ID).unwrap().len(), 2);
        let (mut journal, entries) = Journal::open(&path, ID, true, false).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[&0], ("k0".to_string(), rejected));
        journal
            .append(5, "k5", &Answer::Content("c".into()))
            .unwrap();
        drop(journal);
        let (journal, entries) = Journal::open(&path, ID, true, false).unwrap();
        assert_eq!(entries.len(), 3);
        journal.remove().unwrap();
        assert!(!path.exists());
    }
}
