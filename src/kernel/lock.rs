//! One writer per network namespace.
//!
//! netfilter state belongs to a network namespace, so pyfw's locks do too:
//! each lock is an abstract Unix socket (`@pyfw-lock`, `@pyfw-daemon`).
//! Abstract socket names live in the network namespace, need no file (so
//! `ProtectSystem=strict` does not matter), and the kernel frees them when
//! the process that bound them exits, however it exits: a lock can never
//! be left stale by a crash or a `kill -9`.
//!
//! There are two locks:
//! - [`WRITER`] is held while netfilter is read, planned against and
//!   changed: by every daemon reconcile and by the one-shot `pyfw apply`,
//!   which therefore take turns and never interleave their commands;
//! - [`DAEMON`] is held by a daemon for its whole life, so that a second
//!   daemon in the same namespace refuses to start.

use std::io;
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Held while changing netfilter.
pub const WRITER: &str = "pyfw-lock";
/// Held by a running daemon.
pub const DAEMON: &str = "pyfw-daemon";
/// How long `pyfw apply` (and a daemon reconcile) waits for [`WRITER`].
pub const WRITER_WAIT: Duration = Duration::from_secs(10);
/// How often a waiter tries again.
const RETRY: Duration = Duration::from_millis(50);

/// A held lock; dropping it releases the lock.
#[derive(Debug)]
pub struct Lock {
    name: String,
    listener: UnixListener,
    server: Option<Server>,
}

/// The thread that answers probes, and how to stop it.
#[derive(Debug)]
struct Server {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Lock {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Accepts and drops connections in a background thread, for locks held
    /// for a long time: every refused process probes the lock once to learn
    /// who holds it, and unaccepted probes would pile up in the backlog.
    pub fn serve_probes(&mut self) {
        if self.server.is_some() {
            return;
        }
        let Ok(listener) = self.listener.try_clone() else {
            return;
        };
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("lock-{}", self.name))
            .spawn(move || {
                for conn in listener.incoming() {
                    drop(conn);
                    if flag.load(Ordering::SeqCst) {
                        break;
                    }
                }
            });
        if let Ok(thread) = spawned {
            self.server = Some(Server { stop, thread });
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let Some(server) = self.server.take() else {
            return;
        };
        // Wake the thread with one last connection, so that its copy of the
        // socket is closed too and the name is free when this returns.
        server.stop.store(true, Ordering::SeqCst);
        if let Ok(addr) = address(&self.name)
            && UnixStream::connect_addr(&addr).is_ok()
        {
            let _ = server.thread.join();
        }
    }
}

/// The process holding a lock, as far as it can be seen from here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    /// Its command line, when `/proc` shows it.
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
    #[error("{} holds the lock @{name} of this network namespace", holder_text(.holder))]
    Busy {
        name: String,
        holder: Option<Holder>,
    },
    #[error(
        "gave up after {}: {} still holds the lock @{name} of this network namespace",
        humantime::format_duration(Duration::from_secs(.waited.as_secs())),
        holder_text(.holder)
    )]
    Timeout {
        name: String,
        waited: Duration,
        holder: Option<Holder>,
    },
    #[error("cannot take the lock @{name}: {source}")]
    Io {
        name: String,
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

fn address(name: &str) -> Result<SocketAddr, LockError> {
    SocketAddr::from_abstract_name(name.as_bytes()).map_err(|source| LockError::Io {
        name: name.to_string(),
        source,
    })
}

/// Takes lock `name` now, or says who holds it.
pub fn try_lock(name: &str) -> Result<Lock, LockError> {
    let addr = address(name)?;
    match UnixListener::bind_addr(&addr) {
        Ok(listener) => Ok(Lock {
            name: name.to_string(),
            listener,
            server: None,
        }),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(LockError::Busy {
            name: name.to_string(),
            holder: holder(&addr),
        }),
        Err(source) => Err(LockError::Io {
            name: name.to_string(),
            source,
        }),
    }
}

/// Takes lock `name`, waiting up to `timeout` for its holder to let go.
/// `on_wait` is called once, when the first try finds the lock busy.
pub fn wait(
    name: &str,
    timeout: Duration,
    on_wait: &mut dyn FnMut(&LockError),
) -> Result<Lock, LockError> {
    let start = Instant::now();
    let mut told = false;
    loop {
        match try_lock(name) {
            Err(LockError::Busy { holder, .. }) => {
                let waited = start.elapsed();
                if waited >= timeout {
                    return Err(LockError::Timeout {
                        name: name.to_string(),
                        waited,
                        holder,
                    });
                }
                if !told {
                    told = true;
                    on_wait(&LockError::Busy {
                        name: name.to_string(),
                        holder,
                    });
                }
                std::thread::sleep(RETRY.min(timeout - waited));
            }
            other => return other,
        }
    }
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

/// The pid and uid of a connected peer (`SO_PEERCRED`); the lock and
/// `pyfw confirm` both ask who is on the other end of a socket.
pub(crate) fn peer(stream: &UnixStream) -> Option<(i32, u32)> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes and `len` is the size of
    // `cred`, as SO_PEERCRED requires; the fd is open for the whole call.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some((cred.pid, cred.uid))
}

/// Asks the kernel who is listening on `addr` (`SO_PEERCRED` of a
/// connection to it), then `/proc` what that process is.
fn holder(addr: &SocketAddr) -> Option<Holder> {
    let stream = UnixStream::connect_addr(addr).ok()?;
    let (pid, _uid) = peer(&stream)?;
    // pid 0: the holder is in a pid namespace this process cannot see.
    let pid = u32::try_from(pid).ok().filter(|p| *p > 0)?;
    let command = std::fs::read(format!("/proc/{pid}/cmdline"))
        .ok()
        .map(|raw| {
            raw.split(|b| *b == 0)
                .filter(|part| !part.is_empty())
                .map(|part| String::from_utf8_lossy(part).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter(|c| !c.is_empty());
    Some(Holder { pid, command })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lock name no real pyfw uses, unique per test.
    fn name(test: &str) -> String {
        format!("pyfw-test-{}-{test}", std::process::id())
    }

    #[test]
    fn a_held_lock_is_busy_and_names_its_holder() {
        let name = name("busy");
        let mut held = try_lock(&name).unwrap();
        held.serve_probes();
        let err = try_lock(&name).unwrap_err();
        let LockError::Busy { holder, .. } = &err else {
            panic!("expected Busy, got {err:?}");
        };
        let holder = holder.as_ref().expect("the holder is this process");
        assert_eq!(holder.pid, std::process::id());
        assert!(
            err.to_string()
                .contains(&format!("pid {}", std::process::id()))
        );
        drop(held);
        try_lock(&name).expect("free again once dropped");
    }

    #[test]
    fn waiting_gets_the_lock_when_it_is_released() {
        let name = name("wait");
        let held = try_lock(&name).unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            drop(held);
        });
        let mut waited = 0;
        let lock = wait(&name, Duration::from_secs(10), &mut |_| waited += 1).unwrap();
        assert_eq!(lock.name(), name);
        assert_eq!(waited, 1, "says once that it waits");
        release.join().unwrap();
    }

    #[test]
    fn waiting_gives_up_after_the_timeout() {
        let name = name("timeout");
        let _held = try_lock(&name).unwrap();
        let err = wait(&name, Duration::from_millis(200), &mut |_| {}).unwrap_err();
        assert!(matches!(err, LockError::Timeout { .. }), "{err:?}");
        assert!(err.to_string().contains("gave up after"), "{err}");
    }
}
