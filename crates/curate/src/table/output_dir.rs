//! Directory outputs (model directories, checkpoints) written the way table outputs are: into
//! a temporary directory beside the target, renamed into place only when complete.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use crate::error::{OutputExists, usage};

/// A directory being written; it replaces the target only on [`OutputDir::commit`].
pub struct OutputDir {
    target: PathBuf,
    staging: tempfile::TempDir,
    force: bool,
}

impl OutputDir {
    /// Refuses an existing target unless `force`; nothing is touched until [`commit`].
    pub fn create(target: &Path, force: bool) -> Result<Self> {
        if target.exists() && !force {
            return Err(OutputExists::directory(target.display().to_string()).into());
        }
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !parent.is_dir() {
            return Err(usage(format!(
                "{}: the parent directory does not exist",
                target.display()
            )));
        }
        super::place::remove_stale_temps(target);
        let staging = tempfile::Builder::new()
            .prefix(&super::place::temp_prefix(target))
            .suffix(super::place::TEMP_SUFFIX)
            .tempdir_in(&parent)
            .with_context(|| format!("cannot create a directory in {}", parent.display()))?;
        Ok(OutputDir {
            target: target.to_path_buf(),
            staging,
            force,
        })
    }

    /// Where to write the contents.
    pub fn path(&self) -> &Path {
        self.staging.path()
    }

    /// Move the finished directory into place. Without `force`, a target that appeared since
    /// [`OutputDir::create`] (a concurrent run) is never replaced: the rename itself refuses an
    /// existing target, so two runs cannot both succeed. With `force`, an earlier directory is
    /// replaced, kept aside until the new one is in place.
    pub fn commit(self) -> Result<()> {
        let staged = self.staging.keep();
        // Temporary directories are private (0700); a finished output is an ordinary one.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755))
                .with_context(|| format!("cannot set permissions of {}", staged.display()))?;
        }
        let label = self.target.display().to_string();
        if !self.force {
            return match rename_no_replace(&staged, &self.target) {
                Ok(()) => Ok(()),
                Err(err) => {
                    let _ = std::fs::remove_dir_all(&staged);
                    if err.kind() == std::io::ErrorKind::AlreadyExists {
                        Err(OutputExists::directory(label).into())
                    } else {
                        Err(anyhow::Error::new(err).context(format!("cannot write {label}")))
                    }
                }
            };
        }
        if self.target.exists() {
            // Keep the old directory until the new one is in place.
            let mut old = staged.clone().into_os_string();
            old.push(".old");
            let old = PathBuf::from(old);
            std::fs::rename(&self.target, &old)
                .with_context(|| format!("cannot move {label} aside"))?;
            std::fs::rename(&staged, &self.target)
                .with_context(|| format!("cannot write {label}"))?;
            std::fs::remove_dir_all(&old)
                .with_context(|| format!("cannot remove {}", old.display()))?;
        } else {
            std::fs::rename(&staged, &self.target)
                .with_context(|| format!("cannot write {label}"))?;
        }
        Ok(())
    }
}

/// Rename `from` to `to` only if `to` does not exist, atomically where the file system can
/// (Linux's `renameat2` with `RENAME_NOREPLACE`); elsewhere a check just before the rename,
/// which a plain rename backs up for non-empty directories.
pub(crate) fn rename_no_replace(from: &Path, to: &Path) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let c = |p: &Path| {
            CString::new(p.as_os_str().as_bytes())
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
        };
        let (from_c, to_c) = (c(from)?, c(to)?);
        // SAFETY: both paths are NUL-terminated strings that outlive the call.
        let result = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                from_c.as_ptr(),
                libc::AT_FDCWD,
                to_c.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        };
        if result == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        // File systems without the flag answer EINVAL; fall back below.
        if err.raw_os_error() != Some(libc::EINVAL) {
            return Err(err);
        }
    }
    if std::fs::symlink_metadata(to).is_ok() {
        return Err(std::io::Error::from(std::io::ErrorKind::AlreadyExists));
    }
    std::fs::rename(from, to)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_that_appears_meanwhile_is_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("model");
        let first = OutputDir::create(&target, false).unwrap();
        let second = OutputDir::create(&target, false).unwrap();
        std::fs::write(first.path().join("a"), b"first").unwrap();
        std::fs::write(second.path().join("a"), b"second").unwrap();
        first.commit().unwrap();
        let err = second.commit().unwrap_err();
        assert!(err.downcast_ref::<OutputExists>().is_some(), "{err:#}");
        assert_eq!(std::fs::read(target.join("a")).unwrap(), b"first");
        // An empty directory made meanwhile is not replaced either.
        let empty = dir.path().join("empty");
        let third = OutputDir::create(&empty, false).unwrap();
        std::fs::create_dir(&empty).unwrap();
        assert!(third.commit().is_err());
        assert!(empty.is_dir(), "the directory made meanwhile is kept");
        // Nothing of the refused runs is left behind.
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.iter().all(|n| !n.ends_with(".curate-tmp")),
            "{names:?}"
        );
        // With force, the directory is replaced.
        let forced = OutputDir::create(&target, true).unwrap();
        std::fs::write(forced.path().join("b"), b"forced").unwrap();
        forced.commit().unwrap();
        assert!(!target.join("a").exists() && target.join("b").is_file());
    }
}
