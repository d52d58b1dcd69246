//! The wishes file as the daemon reads it: when new content may be trusted,
//! and how a version of it is named in the log.
//!
//! A file can be read half-written: an editor or a script that writes in
//! place (`cat > wishes.yaml`, `cp`, a slow configuration tool) truncates it,
//! writes the first lines, and only later the rest. Read between the two,
//! the first half is often valid YAML that lacks wishes, and enforcing it
//! would withdraw them, then put them back. So new content is taken only
//! once it is finished:
//!
//! - **With the file watch** ([`FileView::Watched`]), inotify says when the
//!   file is written to (`IN_MODIFY`) and when a writer closes it
//!   (`IN_CLOSE_WRITE`) or a finished file is renamed into place
//!   (`IN_MOVED_TO`). Between the two the file is being written, and its
//!   content is not read at all, by a file event, a poll or SIGHUP. After
//!   the close or the rename the loop waits for the directory to be quiet
//!   (the debounce), and the content must then be at least that old
//!   (`settle`): a write that began a moment ago, whose event has not
//!   reached the loop yet, is not taken either.
//! - **Without it** ([`FileView::Unwatched`]: inotify's limits reached, a
//!   directory that cannot be watched, events lost), nothing says a writer
//!   is busy, so the content must not have changed for a longer `settle`
//!   (its modification time, or, for a time in the future, the daemon's own
//!   sightings), and two reads in a row must agree. A writer that pauses for
//!   longer than that in the middle of a file can still be read half-way:
//!   that is what the watch is for.
//!
//! Content that is not taken yet is looked at again after the time it
//! still needs (the run returns it to the loop), and by every poll.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

/// What the loop knows of writes to the wishes file, for one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileView {
    /// Every write is seen. `writing`: the file was written to and not
    /// closed since. `settle`: how old new content must be.
    Watched { writing: bool, settle: Duration },
    /// Writes may go unseen: new content must be unchanged for `settle`
    /// and read twice alike.
    Unwatched { settle: Duration },
}

/// One read of the wishes file.
#[derive(Clone, Debug)]
pub struct Read {
    pub text: Vec<u8>,
    /// The file's identity and size, and when it was last modified, from
    /// the open file.
    key: Key,
    pub modified: Option<SystemTime>,
    /// When it was read.
    read_at: SystemTime,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Key {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    /// The inode's change time: any write or `touch -d` moves it, and no
    /// user can set it back.
    ctime: (i64, i64),
}

impl Key {
    fn of(meta: &std::fs::Metadata) -> Key {
        Key {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    fn changed(&self) -> SystemTime {
        let (secs, nanos) = self.ctime;
        let since_epoch = Duration::new(secs.max(0) as u64, nanos.clamp(0, 999_999_999) as u32);
        SystemTime::UNIX_EPOCH + since_epoch
    }
}

impl Read {
    /// Reads `path` as pyfw trusts it (see `crate::wishes::secure`).
    pub fn from(path: &Path) -> std::io::Result<Read> {
        let (text, meta) = crate::wishes::secure::read_wishes_with_metadata(path)?;
        Ok(Read {
            text,
            key: Key::of(&meta),
            modified: meta.modified().ok(),
            read_at: SystemTime::now(),
        })
    }

    /// What this read found, to tell later that the file is still the same
    /// without reading it (see [`Stamp::unchanged`]).
    pub fn stamp(&self) -> Stamp {
        Stamp {
            key: self.key,
            read_at: self.read_at,
        }
    }

    /// How this content is named in the log: `content HASH, modified TIME`.
    pub fn version(&self) -> String {
        version(&self.text, self.modified)
    }
}

/// How long before a read the file's last change must be for the read's
/// [`Stamp`] to vouch for it: the clock that stamps a file's changes ticks
/// every few milliseconds, so a write within the same tick as the one
/// before could leave the modification time as it was.
const STAMP_QUIET: Duration = Duration::from_secs(2);

/// A read's file identity, size and modification time, and when it was
/// read.
#[derive(Clone, Copy, Debug)]
pub struct Stamp {
    key: Key,
    read_at: SystemTime,
}

impl Stamp {
    /// True when `path` still names the file this read read (same device
    /// and inode: no rename into place), of the same size, modification and
    /// change time, and that change was [`STAMP_QUIET`] or more before the
    /// read: any write since would have moved the change time (or, renamed
    /// into place, the inode). A poll then need not read the content again (22
    /// MB for a 1,000,000-member blocklist, a third of such a poll's CPU);
    /// file events, SIGHUP and retries always read it.
    pub fn unchanged(&self, path: &Path) -> bool {
        self.unchanged_after(path, STAMP_QUIET)
    }

    fn unchanged_after(&self, path: &Path, quiet: Duration) -> bool {
        let Ok(meta) = std::fs::metadata(path) else {
            return false;
        };
        let settled = self
            .read_at
            .duration_since(self.key.changed())
            .is_ok_and(|age| age >= quiet);
        Key::of(&meta) == self.key && settled
    }
}

/// `content 0123456789abcdef` (the hash `pyfw apply --confirm` marks use
/// too) and, when known, `, modified 2026-01-01T12:00:00Z`.
pub fn version(text: &[u8], modified: Option<SystemTime>) -> String {
    let hash = crate::reconcile::confirm::content_hash(text);
    match modified {
        Some(t) => format!(
            "content {hash}, modified {}",
            humantime::format_rfc3339_seconds(t)
        ),
        None => format!("content {hash}"),
    }
}

/// Whether new content may be taken now.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Finished,
    /// Not yet: look again after this long.
    Wait(Duration),
    /// The watch says a writer has not closed the file yet.
    Writing,
}

/// New content seen before, to tell how long it has stayed the same.
#[derive(Debug, Default)]
pub struct Settling {
    seen: Option<(Key, u64, Instant)>,
}

impl Settling {
    /// Whether `read`, new content, is finished, given `view`; `again`
    /// reads the file once more (only without the watch).
    pub fn check(
        &mut self,
        read: &Read,
        view: FileView,
        again: impl FnOnce() -> std::io::Result<Read>,
    ) -> Verdict {
        let settle = match view {
            FileView::Watched { writing: true, .. } => return Verdict::Writing,
            FileView::Watched { settle, .. } => settle,
            FileView::Unwatched { settle } => {
                let agree = again().is_ok_and(|r| r.key == read.key && r.text == read.text);
                if !agree {
                    self.seen = None;
                    return Verdict::Wait(settle);
                }
                settle
            }
        };
        let hash = crate::state::rule::text_key(&read.text);
        let now = Instant::now();
        let since = match self.seen {
            Some((key, h, since)) if key == read.key && h == hash => since,
            _ => {
                self.seen = Some((read.key, hash, now));
                now
            }
        };
        // Unchanged for `settle`, by its modification time or, for a time
        // ahead of the clock, since this daemon first saw it.
        let age = read
            .modified
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .unwrap_or_default()
            .max(now.duration_since(since));
        if age >= settle {
            self.seen = None;
            Verdict::Finished
        } else {
            Verdict::Wait(settle - age)
        }
    }

    /// The content in force is back: nothing is settling.
    pub fn clear(&mut self) {
        self.seen = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn file(text: &str, age: Duration) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wishes.yaml");
        std::fs::write(&path, text).unwrap();
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(SystemTime::now() - age).unwrap();
        (dir, path)
    }

    #[test]
    fn a_stamp_vouches_only_for_a_quiet_untouched_file() {
        // Its modification time set an hour back: the change time, which
        // no user can set, still says "just now".
        let (_d, path) = file("x: 1\n", Duration::from_secs(3600));
        let stamp = Read::from(&path).unwrap().stamp();
        assert!(!stamp.unchanged(&path), "changed moments before the read");
        assert!(stamp.unchanged_after(&path, Duration::ZERO));
        // Same length, modification time put back: the change time moved.
        std::fs::write(&path, "x: 2\n").unwrap();
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(3600))
            .unwrap();
        assert!(!stamp.unchanged_after(&path, Duration::ZERO));
        // The same text renamed into place: another inode.
        let stamp = Read::from(&path).unwrap().stamp();
        let next = path.with_extension("new");
        std::fs::write(&next, "x: 2\n").unwrap();
        std::fs::rename(&next, &path).unwrap();
        assert!(!stamp.unchanged_after(&path, Duration::ZERO));
        std::fs::remove_file(&path).unwrap();
        assert!(!stamp.unchanged_after(&path, Duration::ZERO));
    }

    #[test]
    fn a_file_being_written_is_never_taken() {
        let (_d, path) = file("x: 1\n", Duration::from_secs(3600));
        let read = Read::from(&path).unwrap();
        let mut s = Settling::default();
        let view = FileView::Watched {
            writing: true,
            settle: 200 * MS,
        };
        assert_eq!(s.check(&read, view, || unreachable!()), Verdict::Writing);
    }

    #[test]
    fn watched_content_is_taken_once_it_is_as_old_as_the_settle_time() {
        let view = FileView::Watched {
            writing: false,
            settle: 200 * MS,
        };
        let (_d, path) = file("x: 1\n", Duration::from_secs(1));
        let mut s = Settling::default();
        let read = Read::from(&path).unwrap();
        assert_eq!(s.check(&read, view, || unreachable!()), Verdict::Finished);
        // Just written: wait for the rest of the settle time.
        let (_d, path) = file("x: 2\n", Duration::ZERO);
        let read = Read::from(&path).unwrap();
        match s.check(&read, view, || unreachable!()) {
            Verdict::Wait(d) => assert!(d <= 200 * MS && d > 100 * MS, "{d:?}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn without_the_watch_two_reads_must_agree_and_the_content_settle() {
        let view = FileView::Unwatched { settle: 2000 * MS };
        let (_d, path) = file("x: 1\n", Duration::from_secs(10));
        let mut s = Settling::default();
        let read = Read::from(&path).unwrap();
        let again = || Read::from(&path);
        assert_eq!(s.check(&read, view, again), Verdict::Finished);
        // The second read differs: a writer is busy.
        let moved = || {
            std::fs::write(&path, "x: 1\ny: 2\n")?;
            Read::from(&path)
        };
        assert_eq!(s.check(&read, view, moved), Verdict::Wait(2000 * MS));
        // Written a moment ago: not yet.
        let (_d2, fresh) = file("x: 3\n", 500 * MS);
        let read = Read::from(&fresh).unwrap();
        match s.check(&read, view, || Read::from(&fresh)) {
            Verdict::Wait(d) => assert!(d <= 1500 * MS && d > 1000 * MS, "{d:?}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_modification_time_in_the_future_settles_by_the_daemons_own_clock() {
        let view = FileView::Watched {
            writing: false,
            settle: 50 * MS,
        };
        let (_d, path) = file("x: 1\n", Duration::ZERO);
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(SystemTime::now() + Duration::from_secs(3600))
            .unwrap();
        let read = Read::from(&path).unwrap();
        let mut s = Settling::default();
        assert_eq!(
            s.check(&read, view, || unreachable!()),
            Verdict::Wait(50 * MS)
        );
        std::thread::sleep(60 * MS);
        assert_eq!(s.check(&read, view, || unreachable!()), Verdict::Finished);
    }

    #[test]
    fn versions_name_the_content_hash_and_the_time() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600);
        assert_eq!(
            version(b"x", Some(t)),
            format!(
                "content {}, modified 2026-01-01T00:00:00Z",
                crate::reconcile::confirm::content_hash(b"x")
            )
        );
    }
}
