//! Watching the wishes file for changes.
//!
//! The directory is watched, not the file: editors save by writing a new
//! file and renaming it over the old one, and Kubernetes ConfigMaps swap a
//! `..data` symlink, so the file's inode (what a watch on the file would
//! follow) is replaced. Watching the directory non-recursively sees both.
//! When the path is a symlink, the directory of the file it resolves to is
//! watched as well, so an edit made through the target is seen; the set of
//! watched directories follows the symlink after every run.
//!
//! Every event is only a hint: the loop debounces it and the run re-reads
//! the file and compares it with what it last loaded.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc::UnboundedSender;

/// The watches on the wishes file's directories.
pub struct Watch {
    watcher: RecommendedWatcher,
    path: PathBuf,
    dirs: BTreeSet<PathBuf>,
    /// Directories already reported as unwatchable.
    failed: BTreeSet<PathBuf>,
}

/// True for events that may mean the file changed. pyfw's own reads of
/// the file (open, close without writing) are not.
fn relevant(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// The directories to watch for `path`.
fn dirs_for(path: &Path) -> BTreeSet<PathBuf> {
    let parent = |p: &Path| match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut dirs = BTreeSet::from([parent(path)]);
    if let Ok(real) = std::fs::canonicalize(path) {
        dirs.insert(parent(&real));
    }
    dirs
}

impl Watch {
    /// Watches `path`'s directories, sending `()` on `hints` for every
    /// relevant event. `None` (after a warning) when watching is impossible;
    /// the poll timer and SIGHUP still pick up changes then.
    pub fn new(path: &Path, hints: UnboundedSender<()>) -> Option<Watch> {
        let handler = move |event: notify::Result<notify::Event>| match event {
            Ok(e) if relevant(&e.kind) => {
                let _ = hints.send(());
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!("file watch error: {e}");
                // A lost event (queue overflow) is a hint too.
                let _ = hints.send(());
            }
        };
        match notify::recommended_watcher(handler) {
            Ok(watcher) => {
                let mut w = Watch {
                    watcher,
                    path: path.to_path_buf(),
                    dirs: BTreeSet::new(),
                    failed: BTreeSet::new(),
                };
                w.update();
                Some(w)
            }
            Err(e) => {
                tracing::warn!(
                    "cannot watch {} for changes ({e}); changes are picked up by the poll and \
                     on SIGHUP",
                    path.display()
                );
                None
            }
        }
    }

    /// The directories watched now.
    pub fn dirs(&self) -> &BTreeSet<PathBuf> {
        &self.dirs
    }

    /// Follows symlink changes: watches the directories `path` resolves to
    /// now and drops the others.
    pub fn update(&mut self) {
        let want = dirs_for(&self.path);
        for gone in self.dirs.difference(&want) {
            let _ = self.watcher.unwatch(gone);
        }
        let mut now = BTreeSet::new();
        for dir in &want {
            if self.dirs.contains(dir) {
                now.insert(dir.clone());
                continue;
            }
            match self.watcher.watch(dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    tracing::debug!("watching {} for changes", dir.display());
                    self.failed.remove(dir);
                    now.insert(dir.clone());
                }
                Err(e) => {
                    if self.failed.insert(dir.clone()) {
                        tracing::warn!(
                            "cannot watch {} for changes ({e}); changes there are picked up by \
                             the poll and on SIGHUP",
                            dir.display()
                        );
                    }
                }
            }
        }
        self.dirs = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlinked_file_watches_both_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("..2026_01");
        std::fs::create_dir(&real).unwrap();
        std::fs::write(real.join("wishes.yaml"), "x").unwrap();
        std::os::unix::fs::symlink("..2026_01", tmp.path().join("..data")).unwrap();
        let link = tmp.path().join("wishes.yaml");
        std::os::unix::fs::symlink("..data/wishes.yaml", &link).unwrap();
        let dirs = dirs_for(&link);
        let top = tmp.path().to_path_buf();
        let canonical_real = std::fs::canonicalize(&real).unwrap();
        assert!(dirs.contains(&top), "{dirs:?}");
        assert!(dirs.contains(&canonical_real), "{dirs:?}");
        assert_eq!(
            dirs_for(Path::new("wishes.yaml")).first(),
            Some(&PathBuf::from("."))
        );
    }

    #[test]
    fn reading_the_file_is_not_a_change() {
        assert!(!relevant(&EventKind::Access(AccessKind::Open(
            AccessMode::Any
        ))));
        assert!(!relevant(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(relevant(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(relevant(&EventKind::Any));
    }
}
