//! The reply cache of an LLM run: one JSON file per reply (usable or not, so re-ask chains
//! replay), addressed by the hash of the endpoint and the exact request
//! (`DIR/ab/abcdef....json`), written atomically, so runs, shards and interrupted runs share
//! it safely.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde_json::{Value, json};

/// A cache directory that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{0}: is not a directory")]
    NotADirectory(String),
    #[error("{0}: cannot create: {1}")]
    Create(String, std::io::Error),
}

pub struct ReplyCache {
    dir: PathBuf,
}

impl ReplyCache {
    /// Use (and create) `dir`.
    pub fn open(dir: &str) -> Result<ReplyCache, CacheError> {
        let path = PathBuf::from(dir);
        if path.exists() && !path.is_dir() {
            return Err(CacheError::NotADirectory(dir.to_string()));
        }
        std::fs::create_dir_all(&path).map_err(|e| CacheError::Create(dir.to_string(), e))?;
        Ok(ReplyCache { dir: path })
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(&key[..2]).join(format!("{key}.json"))
    }

    /// The response body cached under `key`. An unreadable or foreign entry is a miss.
    pub fn get(&self, key: &str) -> Option<String> {
        let bytes = std::fs::read(self.path(key)).ok()?;
        let entry: Value = serde_json::from_slice(&bytes).ok()?;
        (entry["key"] == key)
            .then(|| entry["response"].as_str().map(str::to_string))
            .flatten()
    }

    /// Keep `response` (the raw body) for `request` under `key`.
    pub fn put(&self, key: &str, request: &Value, response: &str) -> Result<()> {
        let path = self.path(key);
        let dir = path.parent().expect("entries live in a subdirectory");
        std::fs::create_dir_all(dir)?;
        let entry = json!({"key": key, "request": request, "response": response});
        write_atomically(dir, &path, &serde_json::to_vec(&entry)?)
    }
}

/// Marks a reply store a run keeps beside its journal, so only such a directory is removed.
const PRIVATE_MARKER: &str = ".curate-replies";

impl ReplyCache {
    /// The reply store of one run (beside its journal, when no `--cache-dir` is given): every
    /// reply is kept as it arrives, so a resumed run replays unfinished re-ask chains instead
    /// of asking again. `fresh` empties one an earlier run left.
    pub fn open_private(dir: &Path, fresh: bool) -> Result<ReplyCache> {
        if fresh {
            ReplyCache::remove_private(dir)?;
        }
        // Never mark (and so later empty) a directory of someone else's files.
        let foreign = !dir.join(PRIVATE_MARKER).is_file()
            && std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some());
        if foreign {
            anyhow::bail!(
                "{}: holds files that are not curate's; move them, or name a --cache-dir",
                dir.display()
            );
        }
        let cache = ReplyCache::open(&dir.display().to_string())?;
        std::fs::write(
            dir.join(PRIVATE_MARKER),
            "Replies of an unfinished curate run; removed with its journal.\n",
        )?;
        Ok(cache)
    }

    /// Remove a run's reply store: only a directory carrying the marker, and in it only the
    /// entries (and temporary files) a cache writes; the directory goes when nothing else is
    /// left.
    pub fn remove_private(dir: &Path) -> Result<()> {
        if !dir.join(PRIVATE_MARKER).is_file() {
            return Ok(());
        }
        for entry in std::fs::read_dir(dir)?.flatten() {
            let sub = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let bucket = name.len() == 2 && name.chars().all(|c| c.is_ascii_hexdigit());
            if !(bucket && sub.is_dir()) {
                continue;
            }
            for file in std::fs::read_dir(&sub)?.flatten() {
                let file_name = file.file_name().to_string_lossy().into_owned();
                if file_name.ends_with(".json") || file_name.ends_with(".curate-tmp") {
                    std::fs::remove_file(file.path())?;
                }
            }
            let _ = std::fs::remove_dir(&sub);
        }
        std::fs::remove_file(dir.join(PRIVATE_MARKER))?;
        let _ = std::fs::remove_dir(dir);
        Ok(())
    }
}

fn write_atomically(dir: &Path, path: &Path, bytes: &[u8]) -> Result<()> {
    let mut temp = tempfile::Builder::new()
        .prefix(".entry.")
        .suffix(".curate-tmp")
        .tempfile_in(dir)?;
    temp.write_all(bytes)?;
    temp.persist(path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_runs_private_store_is_removed_without_what_it_did_not_write() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("out.curate-replies");
        let cache = ReplyCache::open_private(&dir, true).unwrap();
        let key = "cd".repeat(32);
        cache.put(&key, &json!({"m": 1}), "{}").unwrap();
        assert_eq!(
            ReplyCache::open_private(&dir, false)
                .unwrap()
                .get(&key)
                .as_deref(),
            Some("{}")
        );
        std::fs::write(dir.join("mine.txt"), "keep").unwrap();
        ReplyCache::remove_private(&dir).unwrap();
        assert!(!dir.join("cd").exists());
        assert!(dir.join("mine.txt").is_file());
        // A fresh run starts empty; a directory without the marker is never touched.
        std::fs::remove_file(dir.join("mine.txt")).unwrap();
        let cache = ReplyCache::open_private(&dir, false).unwrap();
        cache.put(&key, &json!({"m": 1}), "{}").unwrap();
        let cache = ReplyCache::open_private(&dir, true).unwrap();
        assert_eq!(cache.get(&key), None);
        let foreign = root.path().join("foreign");
        std::fs::create_dir_all(foreign.join("ab")).unwrap();
        std::fs::write(foreign.join("ab/x.json"), "{}").unwrap();
        ReplyCache::remove_private(&foreign).unwrap();
        assert!(ReplyCache::open_private(&foreign, true).is_err());
        ReplyCache::remove_private(&foreign).unwrap();
        assert!(foreign.join("ab/x.json").is_file());
        assert!(!foreign.join(PRIVATE_MARKER).exists());
    }

    #[test]
    fn entries_round_trip_and_misses_are_quiet() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ReplyCache::open(dir.path().join("c").to_str().unwrap()).unwrap();
        let key = "ab".repeat(32);
        assert_eq!(cache.get(&key), None);
        cache
            .put(&key, &json!({"m": 1}), "{\"choices\": []}")
            .unwrap();
        assert_eq!(cache.get(&key).as_deref(), Some("{\"choices\": []}"));
        // A damaged entry is a miss, not an error.
        std::fs::write(cache.path(&key), "{trunc").unwrap();
        assert_eq!(cache.get(&key), None);
        let file = dir.path().join("f");
        std::fs::write(&file, "").unwrap();
        assert!(matches!(
            ReplyCache::open(file.to_str().unwrap()),
            Err(CacheError::NotADirectory(_))
        ));
    }
}
