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
//!
//! The watch also tells the run whether the file is being written (see
//! `daemon::file`): a write to the file itself (`IN_MODIFY`) starts a write,
//! which only a close after writing (`IN_CLOSE_WRITE`), or the path being
//! replaced (a rename, a delete), finishes. Writes are not hints: the file
//! is read once the write is finished, not in the middle of it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc::UnboundedSender;

use super::file::FileView;

/// The watches on the wishes file's directories.
pub struct Watch {
    watcher: RecommendedWatcher,
    path: PathBuf,
    dirs: BTreeSet<PathBuf>,
    /// Directories already reported as unwatchable.
    failed: BTreeSet<PathBuf>,
    /// The names events give the wishes file: its path, and the file the
    /// path resolves to, both absolute (as the watcher reports them).
    targets: BTreeSet<PathBuf>,
    /// Targets written to and not closed since.
    writing: BTreeSet<PathBuf>,
    /// Events were lost (the kernel's queue overflowed): until a write of
    /// the file is seen to finish, the watch may have missed one starting.
    unsure: bool,
}

/// What one event in a watched directory says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hint {
    /// Data was written to these files (`IN_MODIFY`).
    Written(Vec<PathBuf>),
    /// A writer closed these files (`IN_CLOSE_WRITE`).
    Closed(Vec<PathBuf>),
    /// Created (`IN_CREATE`): being written, if an `open(O_CREAT)` made it.
    Created(Vec<PathBuf>),
    /// A change of owner, mode or times (`IN_ATTRIB`): it may make the file
    /// trusted or not, but ends no write (`cp -p` sets them before closing).
    Touched(Vec<PathBuf>),
    /// Anything else that may change what the path holds: a rename, a
    /// delete.
    Changed(Vec<PathBuf>),
    /// Events were lost, or the watch failed.
    Lost,
}

/// The hint an event gives, if any. pyfw's own reads of the file (open,
/// close without writing) give none.
fn hint(event: notify::Event) -> Option<Hint> {
    let lost = event.flag() == Some(notify::event::Flag::Rescan);
    let paths = event.paths;
    Some(match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => Hint::Closed(paths),
        EventKind::Access(_) => return None,
        EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any) => Hint::Written(paths),
        EventKind::Modify(ModifyKind::Metadata(_)) => Hint::Touched(paths),
        EventKind::Create(_) => Hint::Created(paths),
        // A queue overflow (notify sets the rescan flag on it).
        _ if lost => Hint::Lost,
        _ => Hint::Changed(paths),
    })
}

/// True when `path` is a file an `open(O_CREAT)` has just made and may be
/// writing: regular, empty, with no other name. A hard link, a symlink or
/// a FIFO made at the path is complete as it is.
fn freshly_opened(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file() && m.len() == 0 && m.nlink() == 1)
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

/// The names events give the file at `path`: the path made absolute as the
/// watcher makes a watched directory absolute (joined to the working
/// directory), and the file it resolves to.
fn targets_for(path: &Path) -> BTreeSet<PathBuf> {
    let absolute = match std::env::current_dir() {
        Ok(cwd) if path.is_relative() => cwd.join(path),
        _ => path.to_path_buf(),
    };
    let mut out = BTreeSet::from([absolute]);
    if let Ok(real) = std::fs::canonicalize(path) {
        out.insert(real);
    }
    out
}

impl Watch {
    /// Watches `path`'s directories, sending `()` on `hints` for every
    /// relevant event. `None` (after a warning) when watching is impossible;
    /// the poll timer and SIGHUP still pick up changes then.
    pub fn new(path: &Path, hints: UnboundedSender<Hint>) -> Option<Watch> {
        let handler = move |event: notify::Result<notify::Event>| match event {
            Ok(e) => {
                if let Some(h) = hint(e) {
                    let _ = hints.send(h);
                }
            }
            Err(e) => {
                tracing::debug!("file watch error: {e}");
                // A lost event (queue overflow) is a hint too.
                let _ = hints.send(Hint::Lost);
            }
        };
        match notify::recommended_watcher(handler) {
            Ok(watcher) => {
                let mut w = Watch {
                    watcher,
                    path: path.to_path_buf(),
                    dirs: BTreeSet::new(),
                    failed: BTreeSet::new(),
                    targets: BTreeSet::new(),
                    writing: BTreeSet::new(),
                    unsure: false,
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

    /// Takes in an event: true when it calls for a (debounced) re-read.
    /// Writes to the file are not: its close is.
    pub fn note(&mut self, hint: &Hint) -> bool {
        let targets = |paths: &[PathBuf]| -> Vec<PathBuf> {
            (paths.iter())
                .filter(|p| self.targets.contains(*p))
                .cloned()
                .collect()
        };
        match hint {
            Hint::Written(paths) => {
                let hit = targets(paths);
                if !hit.is_empty() && self.writing.is_empty() {
                    tracing::debug!(
                        "{} is being written; it is read once the writer closes it",
                        self.path.display()
                    );
                }
                self.writing.extend(hit);
                false
            }
            Hint::Created(paths) => {
                for t in targets(paths) {
                    if freshly_opened(&t) {
                        self.writing.insert(t);
                    } else {
                        self.writing.remove(&t);
                    }
                }
                true
            }
            Hint::Closed(paths) => {
                let hit = targets(paths);
                for t in &hit {
                    self.writing.remove(t);
                }
                self.unsure &= hit.is_empty();
                !hit.is_empty()
            }
            Hint::Touched(_) => true,
            Hint::Changed(paths) => {
                // Renamed over, deleted: whatever was being written there is
                // no longer the file.
                let hit = targets(paths);
                for t in &hit {
                    self.writing.remove(t);
                }
                self.unsure &= hit.is_empty();
                true
            }
            Hint::Lost => {
                self.unsure = true;
                true
            }
        }
    }

    /// What a run may assume about writes to the file: `settle` is how old
    /// new content must be when every write is seen; without the watch of
    /// every directory, or after lost events, `unwatched` applies instead.
    /// A write the watch did see is honoured even then.
    pub fn view(&self, settle: std::time::Duration, unwatched: std::time::Duration) -> FileView {
        let writing = !self.writing.is_empty();
        if !writing && (self.unsure || !self.failed.is_empty()) {
            return FileView::Unwatched { settle: unwatched };
        }
        FileView::Watched { writing, settle }
    }

    /// Follows symlink changes: watches the directories `path` resolves to
    /// now and drops the others.
    pub fn update(&mut self) {
        self.targets = targets_for(&self.path);
        let targets = &self.targets;
        self.writing.retain(|t| targets.contains(t));
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

    fn event(kind: EventKind, path: &Path) -> notify::Event {
        notify::Event::new(kind).add_path(path.to_path_buf())
    }

    #[test]
    fn reading_the_file_is_not_a_change() {
        let p = Path::new("/etc/pyfw/wishes.yaml");
        let open = event(EventKind::Access(AccessKind::Open(AccessMode::Any)), p);
        assert_eq!(hint(open), None);
        let read = event(EventKind::Access(AccessKind::Close(AccessMode::Read)), p);
        assert_eq!(hint(read), None);
        let closed = event(EventKind::Access(AccessKind::Close(AccessMode::Write)), p);
        assert_eq!(hint(closed), Some(Hint::Closed(vec![p.into()])));
        let written = event(
            EventKind::Modify(ModifyKind::Data(notify::event::DataChange::Any)),
            p,
        );
        assert_eq!(hint(written), Some(Hint::Written(vec![p.into()])));
        let renamed = event(
            EventKind::Modify(ModifyKind::Name(notify::event::RenameMode::To)),
            p,
        );
        assert_eq!(hint(renamed), Some(Hint::Changed(vec![p.into()])));
        let attrib = event(
            EventKind::Modify(ModifyKind::Metadata(notify::event::MetadataKind::Any)),
            p,
        );
        assert_eq!(hint(attrib), Some(Hint::Touched(vec![p.into()])));
        let overflow = notify::Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan);
        assert_eq!(hint(overflow), Some(Hint::Lost));
    }

    const SETTLE: std::time::Duration = std::time::Duration::from_millis(200);
    const UNWATCHED: std::time::Duration = std::time::Duration::from_secs(2);

    fn writing(w: &Watch) -> bool {
        match w.view(SETTLE, UNWATCHED) {
            FileView::Watched { writing, .. } => writing,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_write_lasts_from_the_first_modify_to_the_close_or_a_rename() {
        let tmp = tempfile::tempdir().unwrap();
        let path = std::fs::canonicalize(tmp.path())
            .unwrap()
            .join("wishes.yaml");
        std::fs::write(&path, "x").unwrap();
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let mut w = Watch::new(&path, tx).unwrap();
        let other = path.with_file_name(".wishes.yaml.swp");
        // Writing the file: no hint, and the run must not read it.
        assert!(!w.note(&Hint::Written(vec![path.clone()])));
        assert!(writing(&w));
        // Another file's events change nothing about it.
        assert!(!w.note(&Hint::Closed(vec![other.clone()])));
        assert!(writing(&w));
        // Its mode changed half-way: still being written.
        assert!(w.note(&Hint::Touched(vec![path.clone()])));
        assert!(writing(&w));
        // Closed: a hint, and done.
        assert!(w.note(&Hint::Closed(vec![path.clone()])));
        assert!(!writing(&w));
        // A write ended by a rename over the file (the writer's file is
        // not the file any more).
        w.note(&Hint::Written(vec![path.clone()]));
        assert!(w.note(&Hint::Changed(vec![other.clone(), path.clone()])));
        assert!(!writing(&w));
        // Created empty by open(O_CREAT): being written until closed. A
        // FIFO made there is not.
        std::fs::remove_file(&path).unwrap();
        std::fs::File::create(&path).unwrap();
        assert!(w.note(&Hint::Created(vec![path.clone()])));
        assert!(writing(&w));
        w.note(&Hint::Closed(vec![path.clone()]));
        std::fs::remove_file(&path).unwrap();
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo(3) with a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(w.note(&Hint::Created(vec![path.clone()])));
        assert!(!writing(&w));
        // Lost events: unsure until a write of the file is seen to finish.
        assert!(w.note(&Hint::Lost));
        assert_eq!(
            w.view(SETTLE, UNWATCHED),
            FileView::Unwatched { settle: UNWATCHED }
        );
        w.note(&Hint::Changed(vec![other]));
        assert!(matches!(
            w.view(SETTLE, UNWATCHED),
            FileView::Unwatched { .. }
        ));
        // A write it does see is honoured even then.
        w.note(&Hint::Written(vec![path.clone()]));
        assert!(writing(&w));
        w.note(&Hint::Closed(vec![path]));
        assert!(!writing(&w));
    }
}
