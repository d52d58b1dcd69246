//! One writer per network namespace.
//!
//! netfilter state belongs to a network namespace, so pyfw's locks do too:
//! each lock is a file in pyfw's root-only run directory
//! ([`crate::kernel::run_dir`], `/run/pyfw`) named by the namespace's
//! cookie, which is never reused (`writer-COOKIE.lock`,
//! `daemon-COOKIE.lock`), and taken with flock(2). The kernel releases a
//! flock when the holder's file is closed, which its exit does however it
//! exits: a lock can never be left stale by a crash or a `kill -9`. The
//! files are opened `O_NOFOLLOW`, mode 0600, and not passed on to the tools
//! pyfw runs (`O_CLOEXEC`).
//!
//! (They used to be abstract Unix sockets, `@pyfw-lock` and `@pyfw-daemon`:
//! any user of the namespace could bind one first and so stop pyfw.)
//!
//! There are two locks:
//! - [`WRITER`] is held while netfilter is read, planned against and
//!   changed: by every daemon reconcile and by the one-shot `pyfw apply`,
//!   which therefore take turns and never interleave their commands;
//! - [`DAEMON`] is held by a daemon for its whole life, so that a second
//!   daemon in the same namespace refuses to start.
//!
//! The holder writes its pid and command line into the file, for the
//! message of whoever finds the lock taken (escaped there: a command line
//! is not pyfw's text).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::kernel::run_dir::{self, RunDirError};

/// Held while changing netfilter.
pub const WRITER: &str = "writer";
/// Held by a running daemon.
pub const DAEMON: &str = "daemon";
/// How long `pyfw apply` (and a daemon reconcile) waits for [`WRITER`].
pub const WRITER_WAIT: Duration = Duration::from_secs(10);
/// How often a waiter tries again.
const RETRY: Duration = Duration::from_millis(50);
/// The most of a lock file read back for its holder.
const HOLDER_MAX: usize = 4096;

/// A held lock; dropping it releases the lock.
#[derive(Debug)]
pub struct Lock {
    name: String,
    path: PathBuf,
    file: File,
}

impl Lock {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Lock {
    /// Forgets the holder; closing the file then releases the lock.
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
    }
}

/// The process holding a lock, as it wrote itself into the lock file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    /// Its command line, escaped.
    pub command: Option<String>,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pid {}", self.pid)?;
        if let Some(c) = &self.command {
            write!(f, ": {c}")?;
        }
        Ok(())
    }
}

/// Why a lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "{} holds the {name} lock of this network namespace ({})",
        holder_text(.holder),
        .path.display()
    )]
    Busy {
        name: String,
        path: PathBuf,
        holder: Option<Holder>,
    },
    #[error(
        "gave up after {}: {} still holds the {name} lock of this network namespace ({})",
        humantime::format_duration(Duration::from_secs(.waited.as_secs())),
        holder_text(.holder),
        .path.display()
    )]
    Timeout {
        name: String,
        path: PathBuf,
        waited: Duration,
        holder: Option<Holder>,
    },
    #[error("cannot take the {name} lock: {source}")]
    RunDir {
        name: String,
        #[source]
        source: RunDirError,
    },
    #[error("cannot take the {name} lock: cannot tell which network namespace this is")]
    Namespace { name: String },
    #[error("cannot take the {name} lock {}: {source}", .path.display())]
    Io {
        name: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn holder_text(holder: &Option<Holder>) -> String {
    match holder {
        Some(h) => format!("another pyfw ({h})"),
        None => "another pyfw".to_string(),
    }
}

/// The file of lock `name` of this network namespace, in the run
/// directory (which this neither makes nor checks).
pub fn path(name: &str) -> Result<PathBuf, LockError> {
    Ok(run_dir::path().join(file_name(name)?))
}

fn file_name(name: &str) -> Result<String, LockError> {
    crate::kernel::netns::netns_key()
        .map(|key| format!("{name}-{key}.lock"))
        .ok_or_else(|| LockError::Namespace {
            name: name.to_string(),
        })
}

/// Takes lock `name` now, or says who holds it.
pub fn try_lock(name: &str) -> Result<Lock, LockError> {
    try_lock_in(&run_dir_for(name)?, name)
}

/// Takes lock `name`, waiting up to `timeout` for its holder to let go.
/// `on_wait` is called once, when the first try finds the lock busy.
pub fn wait(
    name: &str,
    timeout: Duration,
    on_wait: &mut dyn FnMut(&LockError),
) -> Result<Lock, LockError> {
    wait_in(&run_dir_for(name)?, name, timeout, on_wait)
}

/// Takes [`WRITER`] for a one-shot command, waiting up to [`WRITER_WAIT`]
/// and saying so on the log (stderr) if it has to wait.
pub fn wait_for_writer() -> Result<Lock, LockError> {
    wait(WRITER, WRITER_WAIT, &mut |busy| {
        tracing::warn!(
            "{busy}; waiting up to {} for it to finish",
            humantime::format_duration(WRITER_WAIT)
        );
    })
}

fn run_dir_for(name: &str) -> Result<PathBuf, LockError> {
    run_dir::ensure().map_err(|source| LockError::RunDir {
        name: name.to_string(),
        source,
    })
}

fn try_lock_in(dir: &Path, name: &str) -> Result<Lock, LockError> {
    let (path, file) = open(dir, name)?;
    match take(name, path, file)? {
        Attempt::Taken(lock) => Ok(lock),
        Attempt::Busy(path, file) => Err(LockError::Busy {
            name: name.to_string(),
            path,
            holder: holder(&file),
        }),
    }
}

fn wait_in(
    dir: &Path,
    name: &str,
    timeout: Duration,
    on_wait: &mut dyn FnMut(&LockError),
) -> Result<Lock, LockError> {
    let start = Instant::now();
    let mut told = false;
    let (mut path, mut file) = open(dir, name)?;
    loop {
        (path, file) = match take(name, path, file)? {
            Attempt::Taken(lock) => return Ok(lock),
            Attempt::Busy(path, file) => (path, file),
        };
        let holder = holder(&file);
        let waited = start.elapsed();
        if waited >= timeout {
            return Err(LockError::Timeout {
                name: name.to_string(),
                path,
                waited,
                holder,
            });
        }
        if !told {
            told = true;
            on_wait(&LockError::Busy {
                name: name.to_string(),
                path: path.clone(),
                holder,
            });
        }
        std::thread::sleep(RETRY.min(timeout - waited));
    }
}

/// Opens (creating) the file of lock `name` in `dir`.
fn open(dir: &Path, name: &str) -> Result<(PathBuf, File), LockError> {
    let path = dir.join(file_name(name)?);
    // std opens with O_CLOEXEC: the tools pyfw runs never inherit a lock.
    let opened = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path);
    match opened {
        Ok(file) => Ok((path, file)),
        Err(source) => Err(LockError::Io {
            name: name.to_string(),
            path,
            source,
        }),
    }
}

/// What one try at a lock came to.
enum Attempt {
    Taken(Lock),
    /// Another open file holds it: the file, to try again.
    Busy(PathBuf, File),
}

/// flock(2)s `file` without waiting.
fn take(name: &str, path: PathBuf, file: File) -> Result<Attempt, LockError> {
    loop {
        // SAFETY: flock(2) on a descriptor `file` keeps open.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            let lock = Lock {
                name: name.to_string(),
                path,
                file,
            };
            write_holder(&lock.file);
            return Ok(Attempt::Taken(lock));
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(Attempt::Busy(path, file)),
            _ => {
                return Err(LockError::Io {
                    name: name.to_string(),
                    path,
                    source: e,
                });
            }
        }
    }
}

/// Writes this process into a lock file it holds: `PID\nCOMMAND LINE\n`.
/// Only messages read it, so a failure to write is not one to take the
/// lock.
fn write_holder(file: &File) {
    let command = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let text = format!("{}\n{command}\n", std::process::id());
    if file.set_len(0).is_ok() {
        let _ = file.write_all_at(text.as_bytes(), 0);
    }
}

/// Who holds a lock, as its holder wrote itself into `file`; `None` if it
/// has not yet (or cannot be read).
fn holder(file: &File) -> Option<Holder> {
    let mut buf = vec![0u8; HOLDER_MAX];
    let n = file.read_at(&mut buf, 0).ok()?;
    let text = String::from_utf8_lossy(&buf[..n]);
    let (pid, command) = text.split_once('\n')?;
    let pid = pid.trim().parse::<u32>().ok().filter(|p| *p > 0)?;
    let command = command.strip_suffix('\n').unwrap_or(command);
    Some(Holder {
        pid,
        command: (!command.is_empty())
            .then(|| crate::state::text::escape_untrusted(command).into_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run directory of the test's own.
    fn dir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn a_held_lock_is_busy_and_names_its_holder() {
        let dir = dir();
        let held = try_lock_in(dir.path(), "busy").unwrap();
        let err = try_lock_in(dir.path(), "busy").unwrap_err();
        let LockError::Busy { holder, .. } = &err else {
            panic!("expected Busy, got {err:?}");
        };
        let holder = holder.as_ref().expect("the holder is this process");
        assert_eq!(holder.pid, std::process::id());
        let command = holder.command.as_deref().unwrap_or_default();
        let me = std::env::args().next().unwrap();
        assert!(command.starts_with(&me), "{command}");
        assert!(
            err.to_string()
                .contains(&format!("pid {}", std::process::id()))
        );
        drop(held);
        try_lock_in(dir.path(), "busy").expect("free again once dropped");
    }

    #[test]
    fn the_lock_file_is_the_namespaces_and_root_only() {
        use std::os::unix::fs::MetadataExt;
        let dir = dir();
        let held = try_lock_in(dir.path(), "file").unwrap();
        let key = crate::kernel::netns::netns_key().unwrap();
        assert_eq!(held.path(), dir.path().join(format!("file-{key}.lock")));
        let meta = std::fs::metadata(held.path()).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
    }

    #[test]
    fn a_holders_command_line_is_escaped() {
        let dir = dir();
        let held = try_lock_in(dir.path(), "escape").unwrap();
        held.file.set_len(0).unwrap();
        held.file
            .write_all_at(b"42\nevil\n2026-01-01 INFO fake\x1b[31m\n", 0)
            .unwrap();
        let err = try_lock_in(dir.path(), "escape").unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with(
                "another pyfw (pid 42: evil\\n2026-01-01 INFO fake\\x1b[31m) holds the escape lock"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_symlink_is_not_followed() {
        let dir = dir();
        let target = dir.path().join("target");
        std::fs::write(&target, "").unwrap();
        let key = crate::kernel::netns::netns_key().unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join(format!("link-{key}.lock"))).unwrap();
        let err = try_lock_in(dir.path(), "link").unwrap_err();
        assert!(matches!(err, LockError::Io { .. }), "{err:?}");
    }

    #[test]
    fn waiting_gets_the_lock_when_it_is_released() {
        let dir = dir();
        let held = try_lock_in(dir.path(), "wait").unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            drop(held);
        });
        let mut waited = 0;
        let lock = wait_in(dir.path(), "wait", Duration::from_secs(10), &mut |_| {
            waited += 1
        })
        .unwrap();
        assert_eq!(lock.name(), "wait");
        assert_eq!(waited, 1, "says once that it waits");
        release.join().unwrap();
    }

    #[test]
    fn waiting_gives_up_after_the_timeout() {
        let dir = dir();
        let _held = try_lock_in(dir.path(), "timeout").unwrap();
        let err = wait_in(
            dir.path(),
            "timeout",
            Duration::from_millis(200),
            &mut |_| {},
        )
        .unwrap_err();
        assert!(matches!(err, LockError::Timeout { .. }), "{err:?}");
        assert!(err.to_string().contains("gave up after"), "{err}");
    }
}
