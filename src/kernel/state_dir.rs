//! pyfw's state directory: `/var/lib/pyfw` (the unit's
//! `StateDirectory=pyfw`), or `$PYFW_STATE_DIR`.
//!
//! What pyfw keeps there outlives a restart: the kernel's rendering of each
//! owned nftables table's wishes (see `reconcile::nft`), so that a restart
//! finds an unchanged table in sync instead of replacing it (and resetting
//! its counters); and the forms iptables prints the wished rules in (see
//! `reconcile::kept_forms`), so that a run need not learn them again.
//! Whoever can write there could make pyfw take a changed
//! table for the wished one, so the directory must be root's (or this
//! user's) alone, as the run directory must: pyfw makes it, mode 0700,
//! when it is missing, and refuses one that others can write. A directory
//! it cannot use costs only that memory: pyfw then learns again.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Overrides the state directory (tests, a second instance).
pub const ENV: &str = "PYFW_STATE_DIR";
/// The state directory unless [`ENV`] says otherwise.
pub const DEFAULT: &str = "/var/lib/pyfw";

/// The state directory's path, checked or not.
pub fn path() -> PathBuf {
    std::env::var_os(ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT))
}

/// The state directory, made (mode 0700) if missing, and checked: a
/// directory, not a symbolic link, owned by root or this user, writable by
/// no one else.
pub fn ensure() -> Result<PathBuf, String> {
    let path = path();
    if let Err(e) = std::fs::DirBuilder::new().mode(0o700).create(&path)
        && e.kind() != std::io::ErrorKind::AlreadyExists
    {
        return Err(format!("cannot make {}: {e}", path.display()));
    }
    check(&path)?;
    Ok(path)
}

fn check(path: &Path) -> Result<(), String> {
    let shown = path.display();
    let meta = std::fs::symlink_metadata(path).map_err(|e| format!("cannot use {shown}: {e}"))?;
    if meta.file_type().is_symlink() || !meta.is_dir() {
        return Err(format!(
            "{shown} is not a directory (or is a symbolic link)"
        ));
    }
    let me = crate::wishes::secure::euid();
    if meta.uid() != 0 && meta.uid() != me {
        return Err(format!(
            "{shown} is owned by uid {}, not root or uid {me}: that user could make pyfw take \
             a changed table for the wished one. Fix: `chown {me}: {shown} && chmod 0700 {shown}`",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "{shown} is writable by others (mode {:04o}). Fix: `chmod 0700 {shown}`",
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// A file of the state directory, if it exists and can be read.
pub fn read(name: &str) -> Option<String> {
    let dir = path();
    check(&dir).ok()?;
    std::fs::read_to_string(dir.join(name)).ok()
}

/// Writes a file of the state directory whole: a reader sees the old or
/// the new text, never part of one (written beside it, then renamed).
pub fn write(name: &str, text: &str) -> Result<(), String> {
    use std::io::Write as _;
    let dir = ensure()?;
    let tmp = dir.join(format!(".{name}.{}", std::process::id()));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(name))
    })();
    written.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot write {}: {e}", dir.join(name).display())
    })
}

/// Removes a file of the state directory, if it is there.
pub fn remove(name: &str) {
    if check(&path()).is_ok() {
        let _ = std::fs::remove_file(path().join(name));
    }
}
