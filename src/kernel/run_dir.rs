//! pyfw's run directory: `/run/pyfw`, or `$PYFW_RUN_DIR`.
//!
//! pyfw's locks ([`crate::kernel::lock`]), the socket `pyfw confirm` talks
//! to and the marks a revert leaves live there. Whoever can create or open
//! a file in it could take a lock and so stop pyfw, or answer for a
//! waiting apply: it must be this user's (root's) alone. pyfw makes it,
//! mode 0700, when it is missing; one that exists must be a directory (not
//! a symbolic link), owned by root or the user pyfw runs as, and writable
//! by nobody else. systemd's `RuntimeDirectory=pyfw` and an older pyfw's
//! 0755 directory pass; anything else is refused with the fix.

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Overrides the run directory (tests, a second instance).
pub const ENV: &str = "PYFW_RUN_DIR";
/// The run directory unless [`ENV`] says otherwise.
pub const DEFAULT: &str = "/run/pyfw";

/// The run directory's path, checked or not.
pub fn path() -> PathBuf {
    std::env::var_os(ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT))
}

/// Why the run directory cannot be used. Each says how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    #[error(
        "the run directory {} is a symbolic link: whoever owns where it points could take \
         pyfw's locks. Fix: remove it (`rm {}`); pyfw makes the directory itself, mode 0700",
        .path.display(), .path.display()
    )]
    Symlink { path: PathBuf },
    #[error(
        "the run directory {} is not a directory. Fix: remove it; pyfw makes the directory \
         itself, mode 0700",
        .path.display()
    )]
    NotDirectory { path: PathBuf },
    #[error(
        "the run directory {} is owned by uid {owner}, not root or uid {me} (pyfw): that user \
         could take pyfw's locks and stop it. Fix: `chown {me}: {} && chmod 0700 {}`, or \
         remove it (pyfw makes it, mode 0700)",
        .path.display(), .path.display(), .path.display()
    )]
    Owner { path: PathBuf, owner: u32, me: u32 },
    #[error(
        "the run directory {} is writable by {who} (mode {mode:04o}): another user could take \
         pyfw's locks and stop it. Fix: `chmod 0700 {}`",
        .path.display(), .path.display()
    )]
    Writable {
        path: PathBuf,
        who: &'static str,
        mode: u32,
    },
    #[error("cannot use the run directory {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The run directory, made (mode 0700) if missing, and checked.
pub fn ensure() -> Result<PathBuf, RunDirError> {
    let path = path();
    ensure_at(&path)?;
    Ok(path)
}

/// The run directory if it exists, checked; `None` if it does not exist.
pub fn existing() -> Result<Option<PathBuf>, RunDirError> {
    let path = path();
    match check(&path) {
        Ok(()) => Ok(Some(path)),
        Err(RunDirError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// [`ensure`] for `path`. Only the last component is made: a missing
/// parent is an error, as it says nothing about who may write there.
pub fn ensure_at(path: &Path) -> Result<(), RunDirError> {
    match check(path) {
        Err(RunDirError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
        checked => return checked,
    }
    // (A umask only takes bits off: never more than 0700.)
    match std::fs::DirBuilder::new().mode(0o700).create(path) {
        // Made meanwhile by another pyfw: checked below all the same.
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            return Err(RunDirError::Io {
                path: path.to_path_buf(),
                source: e,
            });
        }
        _ => {}
    }
    check(path)
}

/// Whether `path` is a directory only root or this user can write.
pub fn check(path: &Path) -> Result<(), RunDirError> {
    let path_buf = || path.to_path_buf();
    let meta = std::fs::symlink_metadata(path).map_err(|source| RunDirError::Io {
        path: path_buf(),
        source,
    })?;
    if meta.file_type().is_symlink() {
        return Err(RunDirError::Symlink { path: path_buf() });
    }
    if !meta.is_dir() {
        return Err(RunDirError::NotDirectory { path: path_buf() });
    }
    let me = crate::wishes::secure::euid();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(RunDirError::Owner {
            path: path_buf(),
            owner: meta.uid(),
            me,
        });
    }
    let mode = meta.mode() & 0o7777;
    let who = match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (false, false) => return Ok(()),
        (true, false) => "its group",
        (false, true) => "others",
        (true, true) => "its group and others",
    };
    Err(RunDirError::Writable {
        path: path_buf(),
        who,
        mode,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_missing_directory_is_made_0700() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("run");
        ensure_at(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o700);
        // And again: it exists now.
        ensure_at(&dir).unwrap();
    }

    #[test]
    fn a_0755_directory_of_this_user_is_used() {
        let root = tempfile::tempdir().unwrap();
        chmod(root.path(), 0o755);
        check(root.path()).unwrap();
    }

    #[test]
    fn a_directory_others_can_write_is_refused_with_the_fix() {
        let root = tempfile::tempdir().unwrap();
        for (mode, who) in [
            (0o777, "its group and others"),
            (0o1777, "its group and others"),
            (0o770, "its group"),
            (0o703, "others"),
        ] {
            chmod(root.path(), mode);
            let e = check(root.path()).unwrap_err().to_string();
            assert!(
                e.contains(&format!("writable by {who} (mode {mode:04o})"))
                    && e.contains(&format!("chmod 0700 {}", root.path().display())),
                "{e}"
            );
        }
    }

    #[test]
    fn a_symlink_or_a_file_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let good = root.path().join("good");
        ensure_at(&good).unwrap();
        let link = root.path().join("link");
        std::os::unix::fs::symlink(&good, &link).unwrap();
        let e = ensure_at(&link).unwrap_err().to_string();
        assert!(e.contains("symbolic link") && e.contains("rm "), "{e}");
        let file = root.path().join("file");
        std::fs::write(&file, "").unwrap();
        let e = ensure_at(&file).unwrap_err().to_string();
        assert!(e.contains("not a directory"), "{e}");
    }

    #[test]
    fn a_missing_parent_is_not_made() {
        let root = tempfile::tempdir().unwrap();
        let e = ensure_at(&root.path().join("a/b")).unwrap_err();
        assert!(matches!(e, RunDirError::Io { .. }), "{e}");
    }
}
