//! The reply cache of the LLM modes: one JSON file per reply (usable or not, so re-ask chains
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
