//! The xtables lock as legacy iptables' change hint.
//!
//! Legacy iptables announces no changes (nft does, see
//! `daemon::events`), and any read of a legacy table, even its
//! fingerprint ([`crate::fingerprint`]), copies the whole table out of the
//! kernel: with a 50,000-rule table that is 70 ms of CPU, so a daemon that
//! fingerprints every second spends nearly half of an `iptables-save` per
//! second doing nothing (issue 5, BENCHMARKS.md "idle-cpu").
//!
//! But every program that changes a legacy table through iptables takes
//! the xtables lock first: `iptables`, `ip6tables`, their `-restore` and
//! `-save` (since iptables 1.6.2 with or without `-w`; 1.8 always waits),
//! and so Docker, kube-proxy, fail2ban, firewalld and libvirt. The lock is
//! an `flock` on one file, `/run/xtables.lock` (or `$XTABLES_LOCKFILE`),
//! which each of them opens and closes again when done, after its commit.
//! inotify reports each close of the file, to any process watching it,
//! whatever network namespace the writer is in. So:
//!
//! - a close is a hint that a table may have changed: the daemon runs a
//!   reconcile, whose fingerprint says whether it did (event-driven repair
//!   on legacy, as nft's notifications give on nft);
//! - while no close has been seen since a table's fingerprint, a poll
//!   trusts the table as it was read and skips the fingerprint, checking
//!   only the table's summary (`IPT_SO_GET_INFO`, microseconds: entry count,
//!   size, hook offsets), which any writer that adds or removes a rule
//!   changes, lock or not.
//!
//! What the lock cannot show: a program that writes the table without the
//! lock and without changing its size (a libiptc user such as miniupnpd,
//! an iptables older than 1.6.2, iptables in a container with its own
//! `/run`). The fingerprint is therefore still taken at least every
//! [`TRUST_QUIET_FOR`], and the chains read again every five minutes; see
//! `netfilter::LegacyCache`. Closes by pyfw's own iptables runs are hints
//! too (inotify does not say who closed), which costs one more fingerprint
//! after each of pyfw's own reads or writes, never a loop: a fingerprint
//! does not take the lock.
//!
//! If the file cannot be watched (no inotify, a read-only `/run` without the
//! file), the daemon says so once and fingerprints every poll as before.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use inotify::{EventMask, Inotify, WatchMask};

/// How long a poll may trust a legacy table whose lock stayed quiet and
/// whose summary did not change, before it takes the fingerprint anyway:
/// the longest a same-size rewrite by a program that bypasses the lock
/// can go unnoticed.
pub const TRUST_QUIET_FOR: Duration = Duration::from_secs(30);

/// The lock file iptables uses: `$XTABLES_LOCKFILE` if set, as iptables
/// itself reads it, else its compiled-in default.
pub fn path() -> PathBuf {
    std::env::var_os("XTABLES_LOCKFILE")
        .filter(|p| !p.is_empty())
        .map_or_else(|| PathBuf::from("/run/xtables.lock"), PathBuf::from)
}

/// Counts the closes of the lock file since the watch began. Clones share
/// the count.
#[derive(Clone, Debug)]
pub struct LockWatch {
    closes: Arc<AtomicU64>,
    live: Arc<AtomicBool>,
}

impl LockWatch {
    /// Watches the lock file at `path`, creating it as iptables does if it
    /// does not exist yet, and calls `on_close` after each batch of closes
    /// (a burst of iptables commands is read as one batch or a few) once
    /// the count has moved. `on_close` returning `false` ends the watch.
    pub fn start(
        path: &Path,
        mut on_close: impl FnMut() -> bool + Send + 'static,
    ) -> io::Result<LockWatch> {
        let mut inotify = Inotify::init()?;
        watch(&mut inotify, path)?;
        let closes = Arc::new(AtomicU64::new(0));
        let live = Arc::new(AtomicBool::new(true));
        let lock = LockWatch {
            closes: closes.clone(),
            live: live.clone(),
        };
        let path = path.to_path_buf();
        std::thread::Builder::new()
            .name("xtables-lock".into())
            .spawn(move || {
                let why = follow(&mut inotify, &path, &closes, &mut on_close);
                live.store(false, Ordering::SeqCst);
                if let Some(why) = why {
                    tracing::warn!(
                        "stopped following the xtables lock {} ({why}); legacy tables are \
                         fingerprinted every poll",
                        path.display()
                    );
                }
            })?;
        Ok(lock)
    }

    /// The number of closes seen so far, or `None` once the watch has
    /// stopped (nothing can be trusted to have stayed quiet then). Read it
    /// *before* looking at a table: a close counted after that may or may
    /// not be in what was seen, so it must make the next poll look again.
    pub fn closes(&self) -> Option<u64> {
        let n = self.closes.load(Ordering::SeqCst);
        self.live.load(Ordering::SeqCst).then_some(n)
    }
}

/// Creates the lock file if needed (as iptables does: read-only, 0600) and
/// watches it for closes, and for its removal or replacement.
fn watch(inotify: &mut Inotify, path: &Path) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if !path.exists() {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
    }
    inotify.watches().add(
        path,
        WatchMask::CLOSE_WRITE
            | WatchMask::CLOSE_NOWRITE
            | WatchMask::DELETE_SELF
            | WatchMask::MOVE_SELF,
    )?;
    Ok(())
}

/// Reads events until `on_close` says stop (`None`) or the watch fails
/// (why).
fn follow(
    inotify: &mut Inotify,
    path: &Path,
    closes: &AtomicU64,
    on_close: &mut impl FnMut() -> bool,
) -> Option<String> {
    let mut buf = [0u8; 4096];
    loop {
        let mut gone = false;
        match inotify.read_events_blocking(&mut buf) {
            Ok(events) => {
                for event in events {
                    // The file was removed or replaced (the watch ends
                    // with IGNORED); an overflow lost events: either way,
                    // count it as a close.
                    if event
                        .mask
                        .intersects(EventMask::DELETE_SELF | EventMask::MOVE_SELF)
                        || event.mask.contains(EventMask::IGNORED)
                    {
                        gone = true;
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Some(e.to_string()),
        }
        closes.fetch_add(1, Ordering::SeqCst);
        if gone {
            // iptables creates the file again on its next run; a new
            // watch must follow that file, not the removed one.
            if let Err(e) = watch(inotify, path) {
                return Some(format!("cannot watch it again after it was removed: {e}"));
            }
        }
        if !on_close() {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn started(path: &Path) -> (LockWatch, mpsc::Receiver<()>) {
        let (tx, rx) = mpsc::channel();
        let watch = LockWatch::start(path, move || tx.send(()).is_ok()).expect("watch");
        (watch, rx)
    }

    fn wait(rx: &mpsc::Receiver<()>) {
        rx.recv_timeout(Duration::from_secs(10))
            .expect("a close is reported");
    }

    #[test]
    fn counts_closes_by_readers_and_follows_a_replaced_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("xtables.lock");
        let (watch, rx) = started(&path);
        assert!(path.exists(), "the lock file is created");
        assert_eq!(watch.closes(), Some(0));

        // As iptables opens it: read-only, then closed when done.
        drop(std::fs::File::open(&path).expect("open"));
        wait(&rx);
        let after_one = watch.closes().expect("live");
        assert!(after_one >= 1);

        // Removed and created again (a reboot's tmpfs, an operator): the
        // removal counts, and closes of the new file are still seen.
        std::fs::remove_file(&path).expect("rm");
        wait(&rx);
        while rx.try_recv().is_ok() {}
        let before = watch.closes().expect("still live");
        drop(std::fs::File::open(&path).expect("open the new file"));
        wait(&rx);
        assert!(watch.closes().expect("live") > before);
    }

    #[test]
    fn stops_when_told() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("lock");
        let watch = LockWatch::start(&path, || false).expect("watch");
        drop(std::fs::File::open(&path).expect("open"));
        for _ in 0..1000 {
            if watch.closes().is_none() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the watch did not stop");
    }

    #[test]
    fn the_path_follows_xtables_lockfile_as_iptables_does() {
        // Not set in the test environment unless a developer set it.
        if std::env::var_os("XTABLES_LOCKFILE").is_none() {
            assert_eq!(path(), PathBuf::from("/run/xtables.lock"));
        }
    }
}
