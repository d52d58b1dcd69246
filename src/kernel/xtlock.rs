//! The xtables lock as legacy iptables' change hint.
//!
//! Legacy iptables announces no changes (nft does, see
//! `daemon::events`), and any read of a legacy table, even its
//! fingerprint ([`crate::kernel::fingerprint`]), copies the whole table out of the
//! kernel: with a 50,000-rule table that is 70 ms of CPU, so a daemon that
//! fingerprints every second spends nearly half of an `iptables-save` per
//! second doing nothing (issue 5, BENCHMARKS.md "idle-cpu").
//!
//! But every program that changes a legacy table through iptables takes
//! the xtables lock first: `iptables`, `ip6tables` and their `-restore`
//! (since iptables 1.6.2 with or without `-w`; 1.8 always waits), and so
//! Docker, kube-proxy, fail2ban, firewalld and libvirt. Reads such as
//! `iptables -S` and `-L` take it too; `iptables-save` does not. The lock
//! is an `flock` on one file, `/run/xtables.lock` (or `$XTABLES_LOCKFILE`),
//! which each of them opens and closes again when done, after its commit.
//! inotify reports each close of the file, to any process watching it,
//! whatever network namespace the writer is in. So:
//!
//! - a close is a hint that a table may have changed: the daemon
//!   fingerprints the wished tables (within the [`CHECK_SHARE`] of a CPU)
//!   and runs a reconcile only if one of them changed (event-driven repair
//!   on legacy, as nft's notifications give on nft; a read, or a change to
//!   a table nothing wishes, costs the fingerprints and nothing more);
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
//! too (inotify does not say who closed): a change pyfw made wakes one
//! more reconcile that finds the table as pyfw left it, never a loop (a
//! fingerprint takes no lock, and an unchanged one wakes nothing). And
//! since pyfw's own close may not be counted yet when the next poll looks,
//! running an iptables tool withdraws the quiet trust of every table until
//! its next fingerprint.
//!
//! If the file cannot be watched (no inotify, a read-only `/run` without the
//! file), the daemon says so once and fingerprints every poll as before.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use inotify::{EventMask, Inotify, WatchMask};

use crate::state::Family;

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

/// The xtables lock, held by pyfw itself; released when dropped (or when
/// the process ends). While pyfw holds it, no program that honours the
/// lock writes a legacy table, and pyfw's own iptables runs take a lock
/// file of their own ([`Held::own_runs_path`], given them as
/// `XTABLES_LOCKFILE`) so that they do not wait for it.
///
/// `apply` on legacy holds it from its first read to its commit: what it
/// read is then what it changed, and the result follows from the plan
/// (see `predict`) instead of another copy of the whole table.
#[derive(Debug)]
pub struct Held {
    _file: std::fs::File,
    own_runs: PathBuf,
}

impl Held {
    /// The lock file pyfw's own iptables runs use while this is held.
    pub fn own_runs_path(&self) -> &Path {
        &self.own_runs
    }
}

/// Takes the xtables lock as iptables does (an exclusive `flock` on
/// [`path`], created if missing), waiting up to `wait` for its holder.
pub fn hold(wait: Duration) -> io::Result<Held> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let path = path();
    // Opened as iptables opens it (read-only, created 0600), so that a
    // watcher counts its close like any iptables run's.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CREAT)
        .mode(0o600)
        .open(&path)?;
    let deadline = Instant::now() + wait;
    loop {
        // SAFETY: flock on a descriptor this function owns; no memory is
        // passed.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            break;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Some(libc::EINTR) => {}
            Some(libc::EWOULDBLOCK) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{} stayed held for {wait:?}", path.display()),
                ));
            }
            _ => return Err(e),
        }
    }
    let mut own_runs = path.into_os_string();
    own_runs.push(".pyfw");
    Ok(Held {
        _file: file,
        own_runs: own_runs.into(),
    })
}

/// After each call of a watch's `on_close`, no call for this many times as
/// long as the call took: closes that arrive meanwhile are counted at once
/// and answered together by the next call. Every iptables run on the host
/// releases the lock, reads included, and a check costs a fingerprint per
/// wished table, so however busy the lock (kube-proxy, a monitoring agent
/// running `iptables -L`), checks take at most a twentieth of a CPU: with a
/// 50,000-rule table (70 ms a check) one check every 1.4 s, with a Docker
/// host's few hundred rules one every few milliseconds. A close after a
/// quiet spell is answered at once.
pub const CHECK_SHARE: u32 = 20;

/// What a check of the lock's releases answered (see [`LockWatch::start`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Checked: the next close is answered as the spacing allows.
    Checked,
    /// Cannot look now (the daemon is running a reconcile): asked again
    /// after [`BUSY_RETRY`], the closes meanwhile still counted.
    Busy,
    /// Stop watching.
    Stop,
}

/// How soon a check that answered [`Answer::Busy`] is asked again.
pub const BUSY_RETRY: Duration = Duration::from_millis(50);

/// Counts the closes of the lock file since the watch began. Clones share
/// the count, and the fingerprints reads took (see [`Release`]).
#[derive(Clone, Debug)]
pub struct LockWatch {
    closes: Arc<AtomicU64>,
    live: Arc<AtomicBool>,
    fresh: Arc<Fresh>,
}

/// The latest fingerprint a read took of each legacy table (by network
/// namespace, family and name), with the count of closes read just before
/// it: it holds every change whose close had been counted by then.
#[derive(Debug, Default)]
struct Fresh(std::sync::Mutex<HashMap<TableKey, (u64, u64)>>);

/// A table: its network namespace's inode, its family and its name.
type TableKey = (u64, Family, String);

/// What a call of a watch's `on_close` answers: the closes counted so far.
pub struct Release<'a> {
    closes: u64,
    fresh: &'a Fresh,
}

impl Release<'_> {
    /// A fingerprint of the table that a read took after every close this
    /// check answers had been counted, if there is one: it already holds
    /// whatever those releases changed, so the check need not copy the
    /// table again. After pyfw's own apply, the reconcile that follows has
    /// usually taken one (with a 50,000-rule table, 70 ms saved per apply).
    pub fn fingerprinted_since(&self, family: Family, table: &str) -> Option<u64> {
        // The table of this thread's network namespace, as the check's own
        // fingerprint would be.
        let ns = crate::kernel::netns::netns_id()?;
        let map = self.fresh.0.lock().ok()?;
        let &(closes, fp) = map.get(&(ns, family, table.to_string()))?;
        (closes >= self.closes).then_some(fp)
    }
}

impl LockWatch {
    /// Watches the lock file at `path`, creating it as iptables does if it
    /// does not exist yet, and calls `on_close` after closes, once the
    /// count has moved, spaced as [`CHECK_SHARE`] says; see [`Answer`] for
    /// what `on_close` may answer.
    pub fn start(
        path: &Path,
        mut on_close: impl FnMut(&Release) -> Answer + Send + 'static,
    ) -> io::Result<LockWatch> {
        let mut inotify = Inotify::init()?;
        watch(&mut inotify, path)?;
        let closes = Arc::new(AtomicU64::new(0));
        let live = Arc::new(AtomicBool::new(true));
        let fresh = Arc::new(Fresh::default());
        let lock = LockWatch {
            closes: closes.clone(),
            live: live.clone(),
            fresh: fresh.clone(),
        };
        let path = path.to_path_buf();
        std::thread::Builder::new()
            .name("xtables-lock".into())
            .spawn(move || {
                // Whichever way the thread ends, a panic included, the
                // count stops being trusted.
                struct Dead(Arc<AtomicBool>);
                impl Drop for Dead {
                    fn drop(&mut self) {
                        self.0.store(false, Ordering::SeqCst);
                    }
                }
                let _dead = Dead(live);
                let mut on_close = |closes: u64| {
                    on_close(&Release {
                        closes,
                        fresh: &fresh,
                    })
                };
                let why = follow(&mut inotify, &path, &closes, &mut on_close);
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

    /// Notes a fingerprint a read took of a table in network namespace
    /// `ns`, after reading [`LockWatch::closes`] as `closes` (see
    /// [`Release`]).
    pub fn fingerprinted(
        &self,
        ns: u64,
        family: Family,
        table: &str,
        closes: u64,
        fingerprint: u64,
    ) {
        // A read that began before another's (fewer closes) never replaces it.
        if let Ok(mut map) = self.fresh.0.lock() {
            let key = (ns, family, table.to_string());
            if map.get(&key).is_none_or(|&(seen, _)| closes >= seen) {
                map.insert(key, (closes, fingerprint));
            }
        }
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
/// (why). Each read of events counts as a close at once; `on_close` is
/// owed after it, and called once the spacing after the last call (see
/// [`CHECK_SHARE`]) has passed, events meanwhile still being read and
/// counted.
fn follow(
    inotify: &mut Inotify,
    path: &Path,
    closes: &AtomicU64,
    on_close: &mut impl FnMut(u64) -> Answer,
) -> Option<String> {
    let mut buf = [0u8; 4096];
    // When the next call may be made.
    let mut next_call: Option<Instant> = None;
    let mut owed = false;
    loop {
        let due = match (owed, next_call) {
            (false, _) => None,
            (true, None) => Some(Duration::ZERO),
            (true, Some(at)) => Some(at.saturating_duration_since(Instant::now())),
        };
        if due == Some(Duration::ZERO) {
            owed = false;
            let started = Instant::now();
            match on_close(closes.load(Ordering::SeqCst)) {
                Answer::Stop => return None,
                Answer::Checked => {
                    next_call =
                        Instant::now().checked_add(started.elapsed().saturating_mul(CHECK_SHARE));
                }
                // Still owed; the events meanwhile are read and counted.
                Answer::Busy => {
                    owed = true;
                    next_call = Instant::now().checked_add(BUSY_RETRY);
                }
            }
            continue;
        }
        match readable(inotify, due) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => return Some(e),
        }
        let gone = match read_events(inotify, &mut buf) {
            Ok(Some(gone)) => gone,
            Ok(None) => continue,
            Err(e) => return Some(e),
        };
        closes.fetch_add(1, Ordering::SeqCst);
        owed = true;
        if gone {
            // iptables creates the file again on its next run; a new
            // watch must follow that file, not the removed one.
            if let Err(e) = watch(inotify, path) {
                return Some(format!("cannot watch it again after it was removed: {e}"));
            }
        }
    }
}

/// Waits up to `due` (for ever when `None`) for events: whether there are
/// any (`false` also when a signal cut the wait short).
fn readable(inotify: &Inotify, due: Option<Duration>) -> Result<bool, String> {
    use std::os::fd::AsRawFd;
    let timeout = due.map_or(-1, |d| {
        libc::c_int::try_from(d.as_millis().saturating_add(1)).unwrap_or(libc::c_int::MAX)
    });
    let mut fds = libc::pollfd {
        fd: inotify.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll(2) on one pollfd that lives across the call.
    let ready = unsafe { libc::poll(&mut fds, 1, timeout) };
    if ready < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::Interrupted => Ok(false),
            _ => Err(e.to_string()),
        };
    }
    Ok(ready > 0)
}

/// Reads the pending events: `Some(gone)` when there were some, `gone`
/// when the file was removed or replaced (the watch ends with IGNORED) or
/// an overflow lost events; `None` when a signal or a spurious wake-up
/// left nothing to read.
fn read_events(inotify: &mut Inotify, buf: &mut [u8]) -> Result<Option<bool>, String> {
    match inotify.read_events(buf) {
        Ok(events) => Ok(Some(events.into_iter().any(|event| {
            (event.mask).intersects(EventMask::DELETE_SELF | EventMask::MOVE_SELF)
                || event.mask.contains(EventMask::IGNORED)
        }))),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn started(path: &Path) -> (LockWatch, mpsc::Receiver<()>) {
        let (tx, rx) = mpsc::channel();
        let watch = LockWatch::start(path, move |_| match tx.send(()) {
            Ok(()) => Answer::Checked,
            Err(_) => Answer::Stop,
        })
        .expect("watch");
        (watch, rx)
    }

    fn wait(rx: &mpsc::Receiver<()>) {
        rx.recv_timeout(Duration::from_secs(10))
            .expect("a close is reported");
    }

    /// A check that cannot look now (a run under way) is asked again
    /// without a new close, and closes meanwhile are still counted: a
    /// blocked check would leave the count behind, and a run would take
    /// the table for quiet.
    #[test]
    fn a_busy_check_is_asked_again_while_closes_are_still_counted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("xtables.lock");
        let busy = Arc::new(AtomicBool::new(true));
        let (tx, rx) = mpsc::channel();
        let answer = busy.clone();
        let watch = LockWatch::start(&path, move |r: &Release| {
            let busy = answer.load(Ordering::SeqCst);
            match tx.send((r.closes, busy)) {
                Ok(()) if busy => Answer::Busy,
                Ok(()) => Answer::Checked,
                Err(_) => Answer::Stop,
            }
        })
        .expect("watch");
        let release = || drop(std::fs::File::open(&path).expect("open"));
        let call = || rx.recv_timeout(Duration::from_secs(10)).expect("a call");
        release();
        assert!(call().1, "the first call finds the check busy");
        assert!(call().1, "and is asked again with no new close");
        let counted = watch.closes().expect("live");
        release();
        let mut seen = call();
        while seen.0 <= counted {
            seen = call();
        }
        assert!(seen.1, "the second close is counted while still busy");
        busy.store(false, Ordering::SeqCst);
        while call().1 {}
        // Checked: no call without a new close.
        assert_eq!(rx.recv_timeout(Duration::from_millis(300)).ok(), None);
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
    fn a_check_uses_a_fingerprint_only_if_taken_after_its_releases() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("xtables.lock");
        // Each check says what it could use, as (closes, fingerprint).
        let (tx, rx) = mpsc::channel();
        let watch = LockWatch::start(&path, move |r: &Release| {
            let used = r.fingerprinted_since(Family::V4, "filter");
            match tx.send((r.closes, used)) {
                Ok(()) => Answer::Checked,
                Err(_) => Answer::Stop,
            }
        })
        .expect("watch");
        let release = || drop(std::fs::File::open(&path).expect("open"));
        let check = || rx.recv_timeout(Duration::from_secs(10)).expect("a check");
        let settle = || {
            std::thread::sleep(Duration::from_millis(100));
            while rx.try_recv().is_ok() {}
        };
        // A read took a fingerprint with the count as it is: the next
        // release was counted after it, so its check cannot use it.
        let ns = crate::kernel::netns::netns_id().expect("a network namespace");
        let before = watch.closes().expect("live");
        watch.fingerprinted(ns, Family::V4, "filter", before, 7);
        release();
        let (closes, used) = check();
        assert!(closes > before);
        assert_eq!(used, None);
        settle();
        // A fingerprint taken after the release was counted: used, for
        // that table only; an older one never replaces it.
        let now = watch.closes().expect("live");
        watch.fingerprinted(ns, Family::V4, "filter", now, 8);
        watch.fingerprinted(ns, Family::V4, "filter", before, 9);
        // Another namespace's table is another table.
        watch.fingerprinted(ns + 1, Family::V4, "filter", now + 5, 10);
        let r = Release {
            closes: now,
            fresh: &watch.fresh,
        };
        assert_eq!(r.fingerprinted_since(Family::V4, "filter"), Some(8));
        assert_eq!(r.fingerprinted_since(Family::V4, "nat"), None);
        assert_eq!(r.fingerprinted_since(Family::V6, "filter"), None);
        let later = Release {
            closes: now + 1,
            fresh: &watch.fresh,
        };
        assert_eq!(later.fingerprinted_since(Family::V4, "filter"), None);
    }

    #[test]
    fn stops_when_told() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("lock");
        let watch = LockWatch::start(&path, |_| Answer::Stop).expect("watch");
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
