//! Provenance metadata: what made an output, from which inputs, with which seed.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const VERSION_KEY: &str = "curate.version";
const COMMAND_KEY: &str = "curate.command";
const INPUTS_KEY: &str = "curate.inputs";
const SEED_KEY: &str = "curate.seed";
const SHARD_KEY: &str = "curate.shard";

/// One input as it was when read: its path as given and a hash of its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputDigest {
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
}

impl InputDigest {
    pub(crate) fn of_bytes(path: impl Into<String>, bytes: &[u8]) -> Self {
        InputDigest {
            path: path.into(),
            sha256: hex(&Sha256::digest(bytes)),
            bytes: bytes.len() as u64,
        }
    }

    /// Hash a file by streaming it, so inputs larger than memory are fine.
    pub fn of_file(label: impl Into<String>, path: &Path) -> io::Result<Self> {
        let mut file = File::open(path)?;
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = file.read(&mut buffer)?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
            total += n as u64;
        }
        Ok(InputDigest {
            path: label.into(),
            sha256: hex(&hasher.finalize()),
            bytes: total,
        })
    }
}

/// The metadata every curate output carries (Parquet and Arrow IPC, which store key-value
/// metadata; CSV and JSON Lines have nowhere to put it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provenance {
    pub version: String,
    pub command: Vec<String>,
    pub inputs: Vec<InputDigest>,
    pub seed: u64,
    /// Which shard of which run this output is, for the outputs of `--shard` runs.
    pub shard: Option<ShardRecord>,
}

/// What the output of one `--shard` run records so that a merge can check its shards belong
/// together, cover every row once, and put them in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRecord {
    /// `I/N` as resolved (never `auto`).
    pub shard: String,
    /// The rows of the split table this shard covers, `[start, end)`.
    pub rows: [usize; 2],
    /// Rows in the whole split table.
    pub of_rows: usize,
    /// How rows were split between shards: `rows`, or `work` (by each row's estimated cost).
    pub split: String,
    /// A digest of everything the shards of one run share (see [`settings_digest`]).
    pub run: String,
}

/// A digest of named settings and input digests, in order: two runs with the same digest
/// computed the same thing on the same data.
pub fn settings_digest<'a>(settings: impl IntoIterator<Item = (&'a str, String)>) -> String {
    let mut hash = Sha256::new();
    for (name, value) in settings {
        for part in [name, value.as_str()] {
            hash.update((part.len() as u64).to_le_bytes());
            hash.update(part.as_bytes());
        }
    }
    hex(&hash.finalize())
}

impl Provenance {
    pub fn new(command: Vec<String>, seed: u64) -> Self {
        Provenance {
            version: env!("CARGO_PKG_VERSION").to_string(),
            command,
            inputs: Vec::new(),
            seed,
            shard: None,
        }
    }

    pub fn add_input(&mut self, digest: InputDigest) {
        self.inputs.push(digest);
    }

    /// The key-value pairs written into the file footer. `command` and `inputs` are JSON so
    /// they survive arguments with spaces and paths with any characters.
    pub fn key_values(&self) -> Vec<(String, String)> {
        vec![
            (VERSION_KEY.to_string(), self.version.clone()),
            (
                COMMAND_KEY.to_string(),
                serde_json::to_string(&self.command).expect("strings serialise"),
            ),
            (
                INPUTS_KEY.to_string(),
                serde_json::to_string(&self.inputs).expect("digests serialise"),
            ),
            (SEED_KEY.to_string(), self.seed.to_string()),
        ]
        .into_iter()
        .chain(self.shard.as_ref().map(|record| {
            (
                SHARD_KEY.to_string(),
                serde_json::to_string(record).expect("records serialise"),
            )
        }))
        .collect()
    }

    /// Read provenance back from key-value metadata; `None` when the file was not written
    /// by curate.
    pub(crate) fn from_key_values<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Option<Self> {
        let mut version = None;
        let mut command = None;
        let mut inputs = None;
        let mut seed = None;
        let mut shard = None;
        for (key, value) in pairs {
            match key {
                VERSION_KEY => version = Some(value.to_string()),
                COMMAND_KEY => command = serde_json::from_str(value).ok(),
                INPUTS_KEY => inputs = serde_json::from_str(value).ok(),
                SEED_KEY => seed = value.parse().ok(),
                SHARD_KEY => shard = serde_json::from_str(value).ok(),
                _ => {}
            }
        }
        Some(Provenance {
            version: version?,
            command: command.unwrap_or_default(),
            inputs: inputs.unwrap_or_default(),
            seed: seed.unwrap_or_default(),
            shard,
        })
    }
}

/// Bytes (a digest) as lowercase hexadecimal.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_of_known_bytes() {
        let digest = InputDigest::of_bytes("-", b"abc");
        assert_eq!(
            digest.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(digest.bytes, 3);
    }

    #[test]
    fn file_digest_equals_bytes_digest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.bin");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let from_file = InputDigest::of_file("x.bin", &path).unwrap();
        assert_eq!(from_file, InputDigest::of_bytes("x.bin", &data));
    }

    #[test]
    fn key_values_round_trip() {
        let mut provenance = Provenance::new(vec!["curate".into(), "a b".into()], 7);
        provenance.add_input(InputDigest::of_bytes("in.csv", b"x"));
        let pairs = provenance.key_values();
        let back = Provenance::from_key_values(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .unwrap();
        assert_eq!(back, provenance);
        provenance.shard = Some(ShardRecord {
            shard: "1/3".into(),
            rows: [4, 9],
            of_rows: 12,
            split: "tokens".into(),
            run: settings_digest([("model", "abc".to_string())]),
        });
        let pairs = provenance.key_values();
        let back = Provenance::from_key_values(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .unwrap();
        assert_eq!(back, provenance);
        assert!(Provenance::from_key_values([("other", "1")]).is_none());
    }

    #[test]
    fn settings_digests_tell_settings_apart() {
        let digest = |pairs: &[(&'static str, &str)]| {
            settings_digest(pairs.iter().map(|&(k, v)| (k, v.to_string())))
        };
        assert_eq!(digest(&[("a", "1")]), digest(&[("a", "1")]));
        assert_ne!(digest(&[("a", "1")]), digest(&[("a", "2")]));
        // Lengths are hashed, so moving a boundary changes the digest.
        assert_ne!(digest(&[("ab", "c")]), digest(&[("a", "bc")]));
    }
}
