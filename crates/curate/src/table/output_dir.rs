//! Directory outputs (model directories, checkpoints) written the way table outputs are: into
//! a temporary directory beside the target, renamed into place only when complete.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use crate::error::{OutputExists, usage};

/// A directory being written; it replaces the target only on [`OutputDir::commit`].
pub struct OutputDir {
    target: PathBuf,
    staging: tempfile::TempDir,
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
        let name = target.file_name().unwrap_or_default().to_string_lossy();
        let staging = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".curate-tmp")
            .tempdir_in(&parent)
            .with_context(|| format!("cannot create a directory in {}", parent.display()))?;
        Ok(OutputDir {
            target: target.to_path_buf(),
            staging,
        })
    }

    /// Where to write the contents.
    pub fn path(&self) -> &Path {
        self.staging.path()
    }

    /// Move the finished directory into place, replacing an earlier one.
    pub fn commit(self) -> Result<()> {
        let staged = self.staging.keep();
        // Temporary directories are private (0700); a finished output is an ordinary one.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755))
                .with_context(|| format!("cannot set permissions of {}", staged.display()))?;
        }
        if self.target.exists() {
            // Keep the old directory until the new one is in place.
            let mut old = staged.clone().into_os_string();
            old.push(".old");
            let old = PathBuf::from(old);
            std::fs::rename(&self.target, &old)
                .with_context(|| format!("cannot move {} aside", self.target.display()))?;
            std::fs::rename(&staged, &self.target)
                .with_context(|| format!("cannot write {}", self.target.display()))?;
            std::fs::remove_dir_all(&old)
                .with_context(|| format!("cannot remove {}", old.display()))?;
        } else {
            std::fs::rename(&staged, &self.target)
                .with_context(|| format!("cannot write {}", self.target.display()))?;
        }
        Ok(())
    }
}
