//! Confirm or revert: `pyfw apply --confirm 30s`.
//!
//! Like `iptables-apply` and `ferm --interactive`, an apply with `--confirm`
//! puts the wishes in force, then waits for the operator to prove they can
//! still reach the host: a line typed on the terminal (`yes`), or `pyfw
//! confirm` from a second session. Without it, when the time is up (or on
//! Ctrl-C, SIGTERM, or an answer other than yes), pyfw puts back exactly
//! what was there before in every chain, policy and ipset the plan touched,
//! and says so.
//!
//! - [`crate::plan::revert::Snapshot`] is what the plan touched, as it
//!   was: taken from the state the plan was made from, under the writer
//!   lock; [`crate::reconcile::rollback::revert`] puts it back with the
//!   fewest edits, one transaction per table, and reads it back (the same
//!   revert a failed apply uses).
//! - The wait listens on a Unix socket in pyfw's root-only run directory,
//!   by network namespace (`/run/pyfw/confirm-COOKIE.sock`, beside the locks
//!   of [`crate::kernel::lock`]), and answers only root or the user who runs
//!   the apply. (It was the abstract socket `@pyfw-confirm`, which any user
//!   of the namespace could bind first.) SIGHUP (the SSH session dropped)
//!   is ignored: the wait goes on and the revert still comes.
//!
//! With a daemon: the apply holds the writer lock from the read until the
//! answer or the end of the revert, so the daemon neither undoes the change
//! under test nor fights the revert; it waits, retries with backoff and
//! reconciles when the lock is free. A revert leaves a mark
//! (`/run/pyfw/reverted-COOKIE`, by network namespace) naming the reverted
//! wishes' content, so that the daemon does not apply that same content
//! again; it enforces again once the file changes, or after a plain or
//! confirmed `pyfw apply` clears the mark.

use std::hash::Hasher;
use std::io::{self, BufRead, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::kernel::run_dir;

/// The name of the socket an apply waiting for confirmation in this
/// network namespace listens on, in the run directory.
fn socket_name() -> io::Result<String> {
    crate::kernel::netns::netns_key()
        .map(|key| format!("confirm-{key}.sock"))
        .ok_or_else(|| io::Error::other("cannot tell which network namespace this is"))
}

/// The socket file, removed when the wait ends.
struct Bound(PathBuf);

impl Drop for Bound {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The operator's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Confirmed; how (`on the terminal`, `by pyfw confirm (pid N)`).
    Confirmed(String),
    /// Not confirmed; why (`no confirmation within 30s`, `answered "n"`,
    /// `SIGINT`).
    Refused(String),
}

/// Waits up to `timeout` for a confirmation on the confirm socket or, when
/// `terminal` is set, a line on stdin. The caller holds the writer lock, so
/// no other apply waits in this namespace: a socket file already there is
/// a dead apply's, and is replaced.
pub fn wait(timeout: Duration, terminal: bool, say: &mut dyn FnMut(String)) -> io::Result<Answer> {
    let dir = run_dir::ensure().map_err(io::Error::other)?;
    let path = dir.join(socket_name()?);
    let cannot = |e: io::Error| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot listen on {} for `pyfw confirm`: {e}",
                path.display()
            ),
        )
    };
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(cannot(e)),
        _ => {}
    }
    let listener = UnixListener::bind(&path).map_err(cannot)?;
    let _bound = Bound(path.clone());
    listener.set_nonblocking(true)?;
    // SIGHUP: the terminal went away (the very lock-out this guards
    // against); keep waiting. SIGINT, SIGTERM: revert now.
    let stop = Arc::new(AtomicBool::new(false));
    let hup = Arc::new(AtomicBool::new(false));
    let mut ids = Vec::new();
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        ids.push(signal_hook::flag::register(sig, stop.clone())?);
    }
    ids.push(signal_hook::flag::register(
        signal_hook::consts::SIGHUP,
        hup.clone(),
    )?);
    let result = wait_loop(&listener, timeout, terminal, &stop, &hup, say);
    for id in ids {
        signal_hook::low_level::unregister(id);
    }
    result
}

fn wait_loop(
    listener: &UnixListener,
    timeout: Duration,
    mut terminal: bool,
    stop: &AtomicBool,
    hup: &AtomicBool,
    say: &mut dyn FnMut(String),
) -> io::Result<Answer> {
    let deadline = Instant::now() + timeout;
    let stdin = io::stdin();
    let mut told_hup = false;
    loop {
        if stop.load(Ordering::SeqCst) {
            return Ok(Answer::Refused("interrupted (SIGINT or SIGTERM)".into()));
        }
        if hup.load(Ordering::SeqCst) && !told_hup {
            told_hup = true;
            terminal = false;
            say("the terminal hung up; still waiting for `pyfw confirm`".into());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(Answer::Refused(format!(
                "no confirmation within {}",
                humantime::format_duration(timeout)
            )));
        }
        let mut fds = vec![libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        if terminal {
            fds.push(libc::pollfd {
                fd: stdin.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let ms = left.as_millis().clamp(1, 250) as libc::c_int;
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs that
        // lives for the whole call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if fds[0].revents != 0
            && let Some(answer) = answer_client(listener)
        {
            return Ok(answer);
        }
        if terminal && fds.get(1).is_some_and(|f| f.revents != 0) {
            let mut line = String::new();
            match stdin.lock().read_line(&mut line) {
                // End of input: nobody can type here; wait for `pyfw confirm`.
                Ok(0) | Err(_) => terminal = false,
                Ok(_) => {
                    let word = line.trim().to_ascii_lowercase();
                    if matches!(word.as_str(), "y" | "yes" | "confirm") {
                        return Ok(Answer::Confirmed("on the terminal".into()));
                    }
                    return Ok(Answer::Refused(format!("answered {:?}", line.trim())));
                }
            }
        }
    }
}

/// Whether an answer can be read from stdin without harm: a pipe, or the
/// terminal when pyfw is in its foreground (reading it from the background
/// would stop pyfw with SIGTTIN, and then nothing would revert).
pub fn stdin_readable() -> bool {
    let stdin = io::stdin();
    if !std::io::IsTerminal::is_terminal(&stdin) {
        return true;
    }
    // SAFETY: plain syscalls on fd 0 and this process; no memory is passed.
    unsafe { libc::tcgetpgrp(stdin.as_raw_fd()) == libc::getpgrp() }
}

/// Accepts one `pyfw confirm`; returns the answer if it confirmed.
fn answer_client(listener: &UnixListener) -> Option<Answer> {
    let (mut stream, _) = listener.accept().ok()?;
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    let (pid, uid) = peer(&stream)?;
    let mut buf = [0u8; 64];
    let n = stream.read(&mut buf).ok()?;
    if !buf[..n].starts_with(b"confirm") {
        let _ = stream.write_all(b"refused: unknown request\n");
        return None;
    }
    let me = crate::wishes::secure::euid();
    if uid != 0 && uid != me {
        let _ = stream.write_all(
            format!("refused: only root (or uid {me}) may confirm; you are uid {uid}\n").as_bytes(),
        );
        return None;
    }
    let _ = stream.write_all(
        format!(
            "confirmed: pyfw apply (pid {}) keeps the change\n",
            std::process::id()
        )
        .as_bytes(),
    );
    Some(Answer::Confirmed(format!(
        "by `pyfw confirm` (pid {pid}, uid {uid})"
    )))
}

/// The pid and uid of a connected peer (`SO_PEERCRED`).
fn peer(stream: &UnixStream) -> Option<(i32, u32)> {
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

/// `pyfw confirm`: confirms the apply waiting in this network namespace.
/// Returns its reply, or why there is nothing to confirm. A run directory
/// that others could write is refused here too: whoever listened there
/// could answer for the apply.
pub fn send_confirm() -> Result<String, String> {
    const NOTHING: &str =
        "nothing to confirm: no `pyfw apply --confirm` is waiting in this network namespace";
    let denied = |path: &std::path::Path, e: &io::Error| {
        format!(
            "cannot reach {}: {e}; only root (or the user running the apply) may confirm",
            path.display()
        )
    };
    let dir = match run_dir::existing() {
        Ok(Some(dir)) => dir,
        Ok(None) => return Err(NOTHING.to_string()),
        Err(run_dir::RunDirError::Io { path, source })
            if source.kind() == io::ErrorKind::PermissionDenied =>
        {
            return Err(denied(&path, &source));
        }
        Err(e) => return Err(e.to_string()),
    };
    let path = dir.join(socket_name().map_err(|e| e.to_string())?);
    let mut stream = UnixStream::connect(&path).map_err(|e| match e.kind() {
        io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound => NOTHING.to_string(),
        io::ErrorKind::PermissionDenied => denied(&path, &e),
        _ => format!("cannot reach {}: {e}", path.display()),
    })?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    stream
        .write_all(b"confirm\n")
        .map_err(|e| format!("cannot send the confirmation: {e}"))?;
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    let reply = reply.trim().to_string();
    if reply.starts_with("confirmed") {
        Ok(reply)
    } else if reply.is_empty() {
        Err("the waiting apply did not answer (it may have just timed out)".into())
    } else {
        Err(reply)
    }
}

// ---- the mark a revert leaves for the daemon -------------------------------

/// The file marking a revert in this network namespace, in the run
/// directory.
pub fn mark_path() -> Option<PathBuf> {
    crate::kernel::netns::netns_key().map(|key| run_dir::path().join(format!("reverted-{key}")))
}

/// A fingerprint of a wishes file's content.
pub fn content_hash(text: &[u8]) -> String {
    let mut h = fnv::FnvHasher::default();
    h.write(text);
    format!("{:016x}", h.finish())
}

/// Marks `text` as reverted in this network namespace; returns the mark.
pub fn mark_reverted(text: &[u8], wishes: &std::path::Path, why: &str) -> io::Result<PathBuf> {
    let path = mark_path().ok_or_else(|| io::Error::other("cannot tell the network namespace"))?;
    run_dir::ensure().map_err(io::Error::other)?;
    let body = format!(
        "{}\n{}: reverted by `pyfw apply --confirm` (pid {}): {why}\n",
        content_hash(text),
        wishes.display(),
        std::process::id()
    );
    std::fs::write(&path, body)?;
    Ok(path)
}

/// Clears the mark (a plain or confirmed apply went through).
pub fn clear_mark() {
    if let Some(p) = mark_path() {
        let _ = std::fs::remove_file(p);
    }
}

/// The mark's words when `text` is the content it names.
pub fn reverted(text: &[u8]) -> Option<String> {
    let body = std::fs::read_to_string(mark_path()?).ok()?;
    let mut lines = body.lines();
    (lines.next()? == content_hash(text)).then(|| lines.next().unwrap_or("").to_string())
}

/// For the daemon: true when `text` was reverted and must not be applied;
/// says so once per mark.
pub fn daemon_holds_back(text: &[u8]) -> bool {
    static TOLD: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);
    let Some(why) = reverted(text) else {
        return false;
    };
    let mut told = TOLD.lock().unwrap_or_else(|e| e.into_inner());
    if told.as_deref() != Some(why.as_str()) {
        tracing::warn!(
            "not enforcing these wishes: {why}; pyfw enforces again when the file changes or \
             after `pyfw apply`"
        );
        *told = Some(why);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_hashes_differ_by_content() {
        assert_ne!(content_hash(b"a"), content_hash(b"b"));
        assert_eq!(content_hash(b"a"), content_hash(b"a"));
    }
}
