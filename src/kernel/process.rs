//! Starting the kernel tools: argv (never a shell), `LC_ALL=C`, stdout
//! and stderr apart, a timeout, and a cap on what is read.
//!
//! [`Runner`] runs one tool; [`parallel`] runs a few reads side by side;
//! [`started_here`] tells the daemon's change events which commits were
//! pyfw's own.

use std::io::{Read, Write};
use std::process::{Child, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

use wait_timeout::ChildExt;

use crate::kernel::backend::Error;

/// How long one kernel tool may run: `PYFW_COMMAND_TIMEOUT` (`30s`,
/// `500ms`), 30 s by default.
pub const COMMAND_TIMEOUT_ENV: &str = "PYFW_COMMAND_TIMEOUT";
/// How many bytes one kernel tool may print on stdout or stderr:
/// `PYFW_MAX_OUTPUT`, 256 MiB by default (a 50,000-rule chain is ~10 MiB).
pub const MAX_OUTPUT_ENV: &str = "PYFW_MAX_OUTPUT";
const DEFAULT_MAX_OUTPUT: usize = 256 << 20;

/// The first lines a tool printed on stderr, for an error: on one line,
/// escaped (the tool's words are not pyfw's).
fn said(stderr: &str) -> String {
    match stderr.trim() {
        "" => String::new(),
        text => format!(
            "; it said: {}",
            crate::state::text::escape_untrusted(
                &text.lines().take(3).collect::<Vec<_>>().join(" / ")
            )
        ),
    }
}

/// For an iptables tool that timed out: whether another process holds the
/// xtables lock it waits for (`-w`, `--wait`; legacy iptables).
fn xtables_lock_note(program: &str) -> String {
    if !program.contains("tables") {
        return String::new();
    }
    let path = std::env::var("XTABLES_LOCKFILE").unwrap_or_else(|_| "/run/xtables.lock".into());
    let Ok(file) = std::fs::File::open(&path) else {
        return String::new();
    };
    use std::os::fd::AsRawFd;
    // SAFETY: flock(2) on an open fd; a lock taken here is released at once
    // (closing the file releases it too).
    let held = unsafe {
        if libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 {
            libc::flock(file.as_raw_fd(), libc::LOCK_UN);
            false
        } else {
            std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock
        }
    };
    if held {
        format!(
            "; the xtables lock ({path}) is held by another process, and iptables waits for it \
             (see `fuser -v {path}`)"
        )
    } else {
        String::new()
    }
}
/// What a finished process printed.
pub struct Output {
    pub stdout: String,
    pub stderr: String,
}

/// How the tools are run: the limits every run has, and the xtables lock
/// file pyfw's own iptables runs take while pyfw holds the host's.
#[derive(Clone, Debug)]
pub struct Runner {
    pub timeout: Duration,
    /// Most bytes read from one tool's stdout (and stderr).
    pub max_output: usize,
    /// `XTABLES_LOCKFILE` for iptables runs while pyfw holds the host's
    /// xtables lock itself (see [`crate::kernel::xtlock::Held`]).
    pub lockfile: Option<std::path::PathBuf>,
}

impl Default for Runner {
    /// `PYFW_COMMAND_TIMEOUT` and `PYFW_MAX_OUTPUT`, or their defaults.
    fn default() -> Self {
        let env = |key: &str| std::env::var(key).ok().filter(|v| !v.trim().is_empty());
        Runner {
            timeout: env(COMMAND_TIMEOUT_ENV)
                .and_then(|v| humantime::parse_duration(v.trim()).ok())
                .filter(|d| !d.is_zero())
                .unwrap_or(Duration::from_secs(30)),
            max_output: env(MAX_OUTPUT_ENV)
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(DEFAULT_MAX_OUTPUT),
            lockfile: None,
        }
    }
}

impl Runner {
    /// Runs `program args` with optional input and returns what it printed,
    /// or an error when it fails, hangs or cannot start.
    pub fn exec(
        &self,
        program: &str,
        args: &[String],
        input: Option<&str>,
    ) -> Result<Output, Error> {
        let (mut stdout, stderr) = self.exec_into(program, args, input, Vec::new())?;
        // The buffer grew by doubling: a 15 MB save could hold 30 MB while
        // it is parsed. Shrinking a buffer that size moves pages, not bytes.
        stdout.shrink_to_fit();
        Ok(Output {
            stdout: stdout_text(stdout),
            stderr,
        })
    }

    /// [`Runner::exec`], with the input written by `feed` as the tool
    /// reads it (on a thread of its own), never held whole.
    pub fn exec_fed(&self, program: &str, args: &[String], feed: &Feed) -> Result<Output, Error> {
        let (stdout, stderr) = self.exec_feeding(program, args, Some(feed), Vec::new())?;
        Ok(Output {
            stdout: stdout_text(stdout),
            stderr,
        })
    }

    /// [`System::exec`], with stdout handed to `sink` as it arrives rather
    /// than kept: the sink and stderr are returned.
    pub(crate) fn exec_into<S: Sink>(
        &self,
        program: &str,
        args: &[String],
        input: Option<&str>,
        sink: S,
    ) -> Result<(S, String), Error> {
        match input {
            Some(text) => {
                let feed = |w: &mut dyn Write| w.write_all(text.as_bytes());
                self.exec_feeding(program, args, Some(&feed), sink)
            }
            None => self.exec_feeding(program, args, None, sink),
        }
    }

    /// Runs the tool, its input written by `feed`, its stdout handed to
    /// `sink`.
    fn exec_feeding<S: Sink>(
        &self,
        program: &str,
        args: &[String],
        feed: Option<&Feed>,
        sink: S,
    ) -> Result<(S, String), Error> {
        let command = format!("{program} {}", crate::state::rule::display_args(args));
        let spawn_err = |source: std::io::Error| Error::Spawn {
            command: command.clone(),
            source: match source.kind() {
                std::io::ErrorKind::NotFound => std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("{program} is not installed or not on PATH ({source})"),
                ),
                _ => source,
            },
        };
        let mut child = std::process::Command::new(program);
        if let Some(lockfile) = self
            .lockfile
            .as_ref()
            .filter(|_| program.contains("tables"))
        {
            child.env("XTABLES_LOCKFILE", lockfile);
        }
        // A process group of its own: a Ctrl-C on pyfw's terminal (sent to
        // the terminal's foreground group) must not kill a tool half-way
        // through its transaction; pyfw itself decides what an interrupt
        // does (see `reconcile::apply::Interrupt`).
        use std::os::unix::process::CommandExt as _;
        let mut child = child
            .process_group(0)
            .args(args)
            .env("LC_ALL", "C")
            .stdin(if feed.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_err)?;
        let _mark = ChildMark::new(child.id());
        // Threads feed and drain the pipes. Where the system gives no
        // thread (a TasksMax limit), the tool is killed and that is the
        // error: never a panic.
        let no_thread = |child: &mut Child, e: std::io::Error| {
            kill(child);
            Error::Spawn {
                command: command.clone(),
                source: std::io::Error::new(e.kind(), format!("no thread for its pipes: {e}")),
            }
        };
        let stdin = child.stdin.take();
        // The input is written on a thread of this scope, from what the
        // caller holds: no copy of it is made.
        std::thread::scope(|scope| {
            let writer = match (feed, stdin) {
                (Some(feed), Some(mut stdin)) => {
                    // A tool that exits early closes the pipe; its own
                    // error says why.
                    let spawned = std::thread::Builder::new()
                        .name("pyfw-stdin".into())
                        .spawn_scoped(scope, move || {
                            let _ = feed(&mut stdin);
                        });
                    Some(spawned.map_err(|e| no_thread(&mut child, e))?)
                }
                _ => None,
            };
            self.wait_for(&command, program, child, writer, sink)
        })
    }

    /// Drains the started tool's output into `sink` and waits for it (and
    /// for the thread writing its input, if any), within the timeout.
    fn wait_for<S: Sink>(
        &self,
        command: &str,
        program: &str,
        mut child: Child,
        writer: Option<std::thread::ScopedJoinHandle<'_, ()>>,
        sink: S,
    ) -> Result<(S, String), Error> {
        let command = command.to_string();
        let spawn_err = |source: std::io::Error| Error::Spawn {
            command: command.clone(),
            source,
        };
        let no_thread = |child: &mut Child, e: std::io::Error| {
            kill(child);
            Error::Spawn {
                command: command.clone(),
                source: std::io::Error::new(e.kind(), format!("no thread for its pipes: {e}")),
            }
        };
        let stdout = drain(child.stdout.take(), self.max_output, sink)
            .map_err(|e| no_thread(&mut child, e))?;
        let stderr = drain(child.stderr.take(), self.max_output, Vec::new())
            .map_err(|e| no_thread(&mut child, e))?;
        let status = match child.wait_timeout(self.timeout).map_err(spawn_err)? {
            Some(status) => status,
            None => {
                kill(&mut child);
                // What it said may name the cause; do not wait long for it.
                let deadline = std::time::Instant::now() + Duration::from_millis(500);
                while !stderr.is_finished() && std::time::Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
                let stderr = match stderr.is_finished() {
                    true => stderr.join().map(|(s, _)| as_text(&s)).unwrap_or_default(),
                    false => String::new(),
                };
                return Err(Error::Timeout {
                    detail: format!("{}{}", said(&stderr), xtables_lock_note(program)),
                    command,
                    timeout: self.timeout,
                });
            }
        };
        if let Some(w) = writer {
            let _ = w.join();
        }
        let panicked = || Error::Spawn {
            command: command.clone(),
            source: std::io::Error::other("the thread reading its output panicked"),
        };
        let (stdout, too_large) = stdout.join().map_err(|_| panicked())?;
        let stderr = stderr.join().map(|(s, _)| as_text(&s)).unwrap_or_default();
        if too_large {
            return Err(Error::TooLarge {
                command,
                limit: self.max_output,
            });
        }
        if !status.success() {
            return Err(Error::Failed {
                command,
                status: status.to_string(),
                stderr: stderr.trim().to_string(),
            });
        }
        Ok((stdout, stderr))
    }
}

/// The CPU this process has used so far, with that of the children it has
/// waited for (user and system time): what a daemon's poll costs, tools
/// included.
pub fn cpu_used() -> Duration {
    let of = |who| {
        // SAFETY: getrusage(2) only fills the struct it is given.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(who, &mut usage) } != 0 {
            return Duration::ZERO;
        }
        let time = |t: libc::timeval| {
            Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
                + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
        };
        time(usage.ru_utime) + time(usage.ru_stime)
    };
    of(libc::RUSAGE_SELF) + of(libc::RUSAGE_CHILDREN)
}

/// The processes this pyfw started lately, so that the daemon can tell its
/// own netfilter changes from other programs': the kernel's change
/// notifications name the process that committed each change (see
/// `daemon::events`). Each is remembered while it runs and for
/// [`REMEMBER_CHILDREN`] after it ends.
static CHILDREN: std::sync::Mutex<Vec<(u32, Option<std::time::Instant>)>> =
    std::sync::Mutex::new(Vec::new());

/// How long a finished child is still recognised as pyfw's own.
pub const REMEMBER_CHILDREN: Duration = Duration::from_secs(10);

/// Marks a child as pyfw's from its start until the mark drops, after
/// which it is remembered for [`REMEMBER_CHILDREN`].
struct ChildMark(u32);

impl ChildMark {
    fn new(pid: u32) -> ChildMark {
        if let Ok(mut children) = CHILDREN.lock() {
            children.retain(|(_, end)| end.is_none_or(|e| e.elapsed() < REMEMBER_CHILDREN));
            children.push((pid, None));
        }
        ChildMark(pid)
    }
}

impl Drop for ChildMark {
    fn drop(&mut self) {
        if let Ok(mut children) = CHILDREN.lock() {
            for (pid, end) in children.iter_mut() {
                if *pid == self.0 && end.is_none() {
                    *end = Some(std::time::Instant::now());
                }
            }
        }
    }
}

/// True when `pid` is a process this pyfw started that runs, or ended
/// less than [`REMEMBER_CHILDREN`] ago.
pub fn started_here(pid: u32) -> bool {
    CHILDREN.lock().is_ok_and(|children| {
        children
            .iter()
            .any(|(p, end)| *p == pid && end.is_none_or(|e| e.elapsed() < REMEMBER_CHILDREN))
    })
}

/// What `/proc` says of process `pid`'s name: `Some(name)`, or `None` when
/// the process does not exist, or exists but `/proc` hides it (mounted
/// `hidepid=`, as under pyfw.service's `ProtectProc=invisible`: root's
/// processes with more capabilities than pyfw's are hidden from it). A
/// hidden process that lives is `Hidden`, so that a caller deciding from
/// the name never takes it for dead.
pub fn process_name(pid: u32) -> ProcessName {
    match std::fs::read_to_string(format!("/proc/{pid}/comm")) {
        Ok(name) => ProcessName::Named(name.trim_end_matches('\n').to_string()),
        Err(_) if lives(pid) => ProcessName::Hidden,
        Err(_) => ProcessName::Gone,
    }
}

/// See [`process_name`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProcessName {
    Named(String),
    /// It lives, but `/proc` does not show it.
    Hidden,
    Gone,
}

/// True when a process `pid` exists, whether or not pyfw may signal it
/// (kill(2) with signal 0 only checks).
fn lives(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 sends nothing; kill(2) only checks that the process
    // exists and may be signalled.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// What writes a tool's input, as the tool reads it.
pub type Feed<'a> = dyn Fn(&mut dyn Write) -> std::io::Result<()> + Sync + 'a;

/// Where a tool's output goes, as it arrives, on the thread that drains
/// its pipe.
pub(crate) trait Sink: Send + 'static {
    fn feed(&mut self, bytes: &[u8]);
    /// The output has ended.
    fn end(&mut self) {}
}

/// Kept whole.
impl Sink for Vec<u8> {
    fn feed(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// What a tool printed on stdout, as text: no copy when it is UTF-8, as
/// it always is under `LC_ALL=C` (the parsers refuse the odd byte).
fn stdout_text(stdout: Vec<u8>) -> String {
    String::from_utf8(stdout).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// What a tool printed on stderr, as text (bytes that are not UTF-8
/// written `\xNN`).
pub(crate) fn as_text(bytes: &[u8]) -> String {
    crate::state::text::from_bytes(bytes)
}

/// Reads a tool's output a line at a time; see [`Lines`].
pub(crate) trait OnLine: Send + 'static {
    fn line(&mut self, line: &str);
}

/// Hands each whole line to `T` as soon as it has arrived, split as
/// `str::lines` splits text, bytes that are not UTF-8 replaced. Reading a
/// 100,000-member `ipset save` this way overlaps with the tool's own
/// listing, which keeps the whole read and parse to the listing's time.
pub(crate) struct Lines<T> {
    partial: Vec<u8>,
    pub(crate) each: T,
}

impl<T> Lines<T> {
    pub(crate) fn new(each: T) -> Self {
        Lines {
            partial: Vec::new(),
            each,
        }
    }
}

impl<T: OnLine> Lines<T> {
    fn emit(each: &mut T, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        each.line(&String::from_utf8_lossy(line));
    }
}

impl<T: OnLine> Sink for Lines<T> {
    fn feed(&mut self, mut bytes: &[u8]) {
        while let Some(at) = bytes.iter().position(|&b| b == b'\n') {
            let (line, rest) = (&bytes[..at], &bytes[at + 1..]);
            if self.partial.is_empty() {
                Self::emit(&mut self.each, line);
            } else {
                self.partial.extend_from_slice(line);
                Self::emit(&mut self.each, &self.partial);
                self.partial.clear();
            }
            bytes = rest;
        }
        self.partial.extend_from_slice(bytes);
    }

    /// The last line, when it has no line break (nor is `\r` taken off).
    fn end(&mut self) {
        if !self.partial.is_empty() {
            self.each.line(&String::from_utf8_lossy(&self.partial));
            self.partial.clear();
        }
    }
}

/// Drains a pipe into `sink`, feeding it at most `limit` bytes; the flag
/// says whether there was more (the rest is read and dropped, so that the
/// tool is never blocked writing and its timeout still applies).
fn drain<R: Read + Send + 'static, S: Sink>(
    pipe: Option<R>,
    limit: usize,
    mut sink: S,
) -> std::io::Result<JoinHandle<(S, bool)>> {
    std::thread::Builder::new()
        .name("pyfw-drain".into())
        .spawn(move || {
            let mut over = false;
            if let Some(mut p) = pipe {
                let mut buf = vec![0; 64 << 10];
                let mut left = limit;
                loop {
                    match p.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            let keep = n.min(left);
                            sink.feed(&buf[..keep]);
                            left -= keep;
                            over |= keep < n;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                }
            }
            sink.end();
            (sink, over)
        })
}

/// At most this many reads run at once: each is a tool process with its
/// pipes and threads, and a wishes file may name hundreds of sets (one per
/// country), which must not exhaust the descriptors or tasks pyfw may have.
const READERS: usize = 4;

/// Runs the jobs on up to [`READERS`] threads (this one included) and
/// returns their results in order. A read is a tool process whose time goes
/// mostly to starting and to the kernel: two chains or two sets read side by
/// side take the time of one on a machine with two CPUs. Where the system
/// gives fewer threads, fewer work; a job that panics is an error.
pub(crate) fn parallel<T, F>(jobs: impl IntoIterator<Item = F>) -> Vec<Result<T, Error>>
where
    T: Send,
    F: FnOnce() -> Result<T, Error> + Send,
{
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let jobs: Vec<Mutex<Option<F>>> = jobs.into_iter().map(|j| Mutex::new(Some(j))).collect();
    let results: Vec<Mutex<Option<Result<T, Error>>>> =
        jobs.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let panicked = || Error::Spawn {
        command: "a reading thread".into(),
        source: std::io::Error::other("it panicked"),
    };
    let work = || {
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let (Some(slot), Some(out)) = (jobs.get(i), results.get(i)) else {
                break;
            };
            let Some(job) = slot.lock().ok().and_then(|mut j| j.take()) else {
                continue;
            };
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job))
                .unwrap_or_else(|_| Err(panicked()));
            if let Ok(mut out) = out.lock() {
                *out = Some(result);
            }
        }
    };
    let work = &work;
    std::thread::scope(|scope| {
        for _ in 1..READERS.min(jobs.len()) {
            let spawned = std::thread::Builder::new()
                .name("pyfw-read".into())
                .spawn_scoped(scope, work);
            if spawned.is_err() {
                break;
            }
        }
        work();
    });
    results
        .into_iter()
        .map(|r| {
            r.into_inner()
                .ok()
                .flatten()
                .unwrap_or_else(|| Err(panicked()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_process_is_named_and_an_ended_one_is_gone() {
        assert!(matches!(
            process_name(std::process::id()),
            ProcessName::Named(n) if !n.is_empty() && !n.ends_with('\n')
        ));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert_eq!(process_name(pid), ProcessName::Gone);
        assert_eq!(process_name(0), ProcessName::Gone);
        assert_eq!(process_name(u32::MAX), ProcessName::Gone);
    }

    struct Collect(Vec<String>);
    impl OnLine for Collect {
        fn line(&mut self, line: &str) {
            self.0.push(line.to_string());
        }
    }

    proptest! {
        /// However the pipe cuts the output, the lines are `str::lines`'s.
        #[test]
        fn lines_arrive_whole_wherever_the_reads_cut(
            text in "([a\\r\\nä€]{0,6}\\n){0,8}[ab\\ré]{0,3}",
            cuts in proptest::collection::vec(0usize..64, 0..6),
        ) {
            use Sink;
            let mut lines = Lines::new(Collect(Vec::new()));
            let bytes = text.as_bytes();
            let mut at = 0;
            for cut in cuts {
                let to = (at + cut).min(bytes.len());
                lines.feed(&bytes[at..to]);
                at = to;
            }
            lines.feed(&bytes[at..]);
            lines.end();
            let want: Vec<&str> = text.lines().collect();
            prop_assert_eq!(lines.each.0, want);
        }
    }

    /// Hundreds of reads (a set per country) run a few at a time, every
    /// result in its place; a job that panics is an error, not a crash.
    #[test]
    fn parallel_reads_are_bounded_and_ordered() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let running = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        let jobs = (0..300).map(|i| {
            let (running, most) = (&running, &most);
            move || {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(1));
                running.fetch_sub(1, Ordering::SeqCst);
                if i == 7 {
                    panic!("job 7 fails");
                }
                Ok(i)
            }
        });
        let out = parallel(jobs);
        assert_eq!(out.len(), 300);
        for (i, r) in out.iter().enumerate() {
            match (i, r) {
                (7, Err(e)) => assert!(e.to_string().contains("panicked"), "{e}"),
                (_, Ok(v)) => assert_eq!(*v, i),
                (_, other) => panic!("job {i}: {other:?}"),
            }
        }
        let most = most.load(Ordering::SeqCst);
        assert!((1..=READERS).contains(&most), "{most} at once");
        assert!(parallel(std::iter::empty::<fn() -> Result<(), Error>>()).is_empty());
    }
}
