//! Where outputs go: paths compared as the file system sees them, the names of curate's
//! temporary files, and the removal of those that a dead run left behind.

use std::path::{Component, Path, PathBuf};

use crate::error::usage;

/// Suffix of every temporary file or directory curate stages an output in.
pub(crate) const TEMP_SUFFIX: &str = ".curate-tmp";

/// `path` made absolute, with the symbolic links and `..` of its existing part resolved, so two
/// spellings of one file compare equal whether or not the file exists yet.
pub fn resolve(path: &Path) -> PathBuf {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|dir| dir.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    };
    // The longest existing ancestor resolves through the file system; the rest is lexical.
    let mut existing = absolute.clone();
    let mut rest: Vec<std::ffi::OsString> = Vec::new();
    loop {
        if let Ok(mut resolved) = existing.canonicalize() {
            for part in rest.iter().rev() {
                match part.to_str() {
                    Some("..") => {
                        resolved.pop();
                    }
                    Some(".") => {}
                    _ => resolved.push(part),
                }
            }
            return resolved;
        }
        let Some(last) = existing.components().next_back() else {
            return absolute;
        };
        if matches!(last, Component::RootDir | Component::Prefix(_)) {
            return absolute;
        }
        rest.push(last.as_os_str().to_owned());
        if !existing.pop() {
            return absolute;
        }
    }
}

/// True when `inner` is `outer` or lies inside it (both resolved).
pub fn is_within(inner: &Path, outer: &Path) -> bool {
    resolve(inner).starts_with(resolve(outer))
}

/// Refuse two outputs of one run that name the same file, however spelled (`x.csv` and
/// `./x.csv`, a symbolic link, `..`): the second would replace the first. Each output comes
/// with what names it (a flag), for the message.
pub fn require_distinct(outputs: &[(&str, &str)]) -> anyhow::Result<()> {
    let resolved: Vec<(&str, &str, PathBuf)> = outputs
        .iter()
        .filter(|(_, path)| *path != "-")
        .map(|(role, path)| (*role, *path, resolve(Path::new(path))))
        .collect();
    for (i, (role, path, place)) in resolved.iter().enumerate() {
        if let Some((first_role, first_path, _)) =
            resolved[..i].iter().find(|(_, _, other)| other == place)
        {
            return Err(usage(format!(
                "{first_role} {first_path} and {role} {path} are the same file; give each output its own path"
            )));
        }
    }
    Ok(())
}

/// The prefix of a temporary file for `target`: its name, then this host and process, so a
/// later run can tell whether the run that made it is still alive.
pub(crate) fn temp_prefix(target: &Path) -> String {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".to_string());
    format!(".{name}.{}-{}.", host_name(), std::process::id())
}

/// Remove the temporary files and directories that runs on this host left beside `target`
/// when they were killed (SIGKILL, a power cut): only names curate makes (`.NAME.HOST-PID.*`
/// ending in `.curate-tmp` or `.curate-tmp.old`) whose process no longer exists. Returns how
/// many were removed; failures to remove are ignored (the file stays, as before).
pub(crate) fn remove_stale_temps(target: &Path) -> usize {
    let Some(name) = target.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return 0;
    };
    let dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return 0;
    };
    let prefix = format!(".{name}.{}-", host_name());
    let mut removed = 0;
    for entry in entries.flatten() {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = stale_pid(&file_name, &prefix) else {
            continue;
        };
        if process_alive(pid) {
            continue;
        }
        let path = entry.path();
        let gone = match entry.file_type() {
            Ok(kind) if kind.is_dir() => std::fs::remove_dir_all(&path),
            Ok(_) => std::fs::remove_file(&path),
            Err(err) => Err(err),
        };
        if gone.is_ok() {
            tracing::info!("removed {}, left by a run that ended", path.display());
            removed += 1;
        }
    }
    removed
}

/// The process id in a temporary name `PREFIX PID . RANDOM .curate-tmp[.old]`.
fn stale_pid(file_name: &str, prefix: &str) -> Option<u32> {
    let rest = file_name.strip_prefix(prefix)?;
    let stem = rest
        .strip_suffix(".old")
        .unwrap_or(rest)
        .strip_suffix(TEMP_SUFFIX)?;
    let (pid, random) = stem.split_once('.')?;
    if random.is_empty() || random.contains('.') {
        return None;
    }
    pid.parse().ok()
}

fn process_alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        if pid == std::process::id() {
            return true;
        }
        let Ok(pid) = i32::try_from(pid) else {
            return true;
        };
        // SAFETY: signal 0 only checks that the process exists; nothing is sent.
        let result = unsafe { libc::kill(pid, 0) };
        result == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

/// This machine's host name, reduced to characters that are safe in a file name.
fn host_name() -> String {
    static HOST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HOST.get_or_init(|| {
        let mut buf = [0u8; 256];
        #[cfg(unix)]
        // SAFETY: the buffer is writable for its whole length; gethostname NUL-terminates
        // within it or truncates.
        let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
        #[cfg(not(unix))]
        let ok = false;
        let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        let name: String = String::from_utf8_lossy(&buf[..len])
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        if ok && !name.is_empty() {
            name
        } else {
            "host".to_string()
        }
    })
    .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_of_one_file_resolve_alike() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        std::fs::create_dir(base.join("sub")).unwrap();
        let a = resolve(&base.join("x.csv"));
        assert_eq!(a, resolve(&base.join("sub/../x.csv")));
        assert_eq!(a, resolve(&base.join("./x.csv")));
        assert_eq!(a, base.join("x.csv"));
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(base.join("sub"), base.join("link")).unwrap();
            assert_eq!(resolve(&base.join("link/y")), base.join("sub/y"));
            assert!(is_within(&base.join("link/y/z"), &base.join("sub")));
        }
        assert!(!is_within(&base.join("subway"), &base.join("sub")));
    }

    #[test]
    fn two_outputs_naming_one_file_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let x = dir.path().join("x.csv");
        let dotted = dir.path().join(".").join("x.csv");
        let (x, dotted) = (x.to_str().unwrap(), dotted.to_str().unwrap());
        let err = require_distinct(&[("--out", x), ("--report", dotted)]).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("--out") && text.contains("--report"),
            "{text}"
        );
        let y = dir.path().join("y.csv");
        require_distinct(&[
            ("--out", x),
            ("--report", y.to_str().unwrap()),
            ("--a", "-"),
        ])
        .unwrap();
        require_distinct(&[("--out", "-"), ("--report", "-")]).unwrap();
    }

    #[test]
    fn only_dead_runs_temporaries_on_this_host_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.parquet");
        let host = host_name();
        // A pid far above any pid_max: no such process.
        let dead = format!(".out.parquet.{host}-999999999.abc123{TEMP_SUFFIX}");
        let dead_dir = format!(".out.parquet.{host}-999999998.def456{TEMP_SUFFIX}.old");
        let alive = format!(
            ".out.parquet.{host}-{}.ghi789{TEMP_SUFFIX}",
            std::process::id()
        );
        let other_host = format!(".out.parquet.elsewhere-999999999.abc123{TEMP_SUFFIX}");
        let other_target = format!(".other.parquet.{host}-999999999.abc123{TEMP_SUFFIX}");
        let user_file = ".out.parquet.notes".to_string();
        for name in [&dead, &alive, &other_host, &other_target, &user_file] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        std::fs::create_dir(dir.path().join(&dead_dir)).unwrap();
        std::fs::write(dir.path().join(&dead_dir).join("f"), b"x").unwrap();
        assert_eq!(remove_stale_temps(&target), 2);
        for name in [&alive, &other_host, &other_target, &user_file] {
            assert!(dir.path().join(name).exists(), "{name} kept");
        }
        assert!(!dir.path().join(&dead).exists());
        assert!(!dir.path().join(&dead_dir).exists());
        assert!(temp_prefix(&target).starts_with(&format!(".out.parquet.{host}-")));
    }
}
