//! A harness for integration tests against real netfilter.
//!
//! Every test gets its own network namespace ([`Netns`]), so tests run in
//! parallel and never touch the host's firewall: every `iptables`, `ipset`
//! and `pyfw` call goes through `ip netns exec NAME ...`, with an argument
//! vector (no shell).
//!
//! Each scenario runs against both iptables backends ([`Backend`]): the
//! nf_tables one (`iptables` on a current Debian) and the legacy one, which
//! the harness puts first on `PATH` as `iptables`, `iptables-save`, ... so
//! that pyfw, which runs the tools from `PATH`, uses it too.
//!
//! Without root, or where namespaces cannot be created, a test prints a
//! `SKIP` line and returns, unless `PYFW_REQUIRE_NETNS=1`, in which case it
//! panics with the reason. It never skips silently.
//!
//! Both test targets include this file (`#[path = "../common/mod.rs"]`), as
//! does `benches/fingerprint.rs`. `tests/kernel/` uses all of it; the
//! offline target and the bench use a part, and say so where they include it.

/// Runs a scenario `fn(Backend)` as two tests, `NAME::nft` and
/// `NAME::legacy` (with `#[macro_use]` on the `mod common;` of the target).
macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[test]
            fn nft() {
                super::$scenario(super::Backend::Nft);
            }
            #[test]
            fn legacy() {
                super::$scenario(super::Backend::Legacy);
            }
        }
    )*};
}

use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use wait_timeout::ChildExt;

/// The pyfw binary under test.
pub const PYFW: &str = env!("CARGO_BIN_EXE_pyfw");

/// How long any one command may take before the test fails.
const TIMEOUT: Duration = Duration::from_secs(120);

/// Where Debian keeps the iptables binaries.
const SBIN_DIRS: &[&str] = &["/usr/sbin", "/sbin", "/usr/local/sbin"];

/// Prefix of every namespace this harness creates, for stale clean-up.
const PREFIX: &str = "pyfwt-";

/// A fixture from `tests/data/spec/`, by file name.
pub fn spec_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/spec")
        .join(name)
}

/// The text of a fixture from `tests/data/spec/`.
pub fn spec(name: &str) -> String {
    let path = spec_path(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read fixture {}: {e}", path.display()))
}

/// Which iptables implementation the namespace's commands use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// `iptables` as installed (nf_tables on Debian).
    Nft,
    /// `iptables-legacy` and friends, put first on `PATH` under the plain names.
    Legacy,
}

impl Backend {
    fn tag(self) -> &'static str {
        match self {
            Backend::Nft => "n",
            Backend::Legacy => "l",
        }
    }

    /// What `iptables -V` prints in parentheses for this backend.
    fn version_marker(self) -> &'static str {
        match self {
            Backend::Nft => "(nf_tables)",
            Backend::Legacy => "(legacy)",
        }
    }
}

/// What a finished command printed.
pub struct Out {
    /// The command, for messages.
    pub argv: Vec<String>,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Panics with everything the command printed unless it exited `code`.
    #[track_caller]
    pub fn expect_code(&self, code: i32, what: &str) -> &Self {
        assert_eq!(
            self.code(),
            Some(code),
            "{what}: expected exit {code}\n{self}"
        );
        self
    }

    /// Panics with everything the command printed unless it succeeded.
    #[track_caller]
    pub fn expect_ok(&self, what: &str) -> &Self {
        self.expect_code(0, what)
    }

    /// The stdout lines starting with `prefix`, byte for byte, each with the
    /// line ending it had (so a `\r` or a missing final newline shows).
    pub fn lines_starting_with(&self, prefix: &str) -> String {
        self.stdout
            .split_inclusive('\n')
            .filter(|l| l.starts_with(prefix))
            .collect()
    }

    /// The stdout lines not starting with `prefix`, byte for byte.
    #[allow(dead_code)] // only tests/offline/netns.rs uses it, so tests/kernel/ does not
    pub fn lines_not_starting_with(&self, prefix: &str) -> String {
        self.stdout
            .split_inclusive('\n')
            .filter(|l| !l.starts_with(prefix))
            .collect()
    }
}

impl fmt::Display for Out {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "command: {}", self.argv.join(" "))?;
        writeln!(f, "status:  {}", self.status)?;
        writeln!(f, "--- stdout ---\n{}", self.stdout)?;
        write!(f, "--- stderr ---\n{}", self.stderr)
    }
}

impl fmt::Debug for Out {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Runs `cmd` (argv already set) with optional stdin, with a timeout.
pub fn run_command(mut cmd: Command, argv: Vec<String>, input: Option<&str>) -> Out {
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `{}`: {e}", argv.join(" ")));
    let writer = input.map(|text| {
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let text = text.to_string();
        std::thread::spawn(move || {
            // A tool that exits early closes the pipe; its status says why.
            let _ = stdin.write_all(text.as_bytes());
        })
    });
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let status = match child.wait_timeout(TIMEOUT).expect("wait for child") {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`{}` did not finish within {TIMEOUT:?}", argv.join(" "));
        }
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    Out {
        argv,
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// `PATH` with the system directories that hold the netfilter tools.
pub fn base_path() -> String {
    let mut parts: Vec<String> = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .filter(|p| !p.is_empty())
        .map(String::from)
        .collect();
    for dir in SBIN_DIRS.iter().chain(&["/usr/bin", "/bin"]) {
        if !parts.iter().any(|p| p == dir) {
            parts.push(dir.to_string());
        }
    }
    parts.join(":")
}

/// Says why a test cannot run here: panics under `PYFW_REQUIRE_NETNS=1`,
/// else prints a `SKIP` line straight to stderr (past the test harness's
/// output capture, so that it shows even for a passing test).
#[track_caller]
pub fn unavailable(test: &str, reason: &str) {
    if std::env::var("PYFW_REQUIRE_NETNS").as_deref() == Ok("1") {
        panic!(
            "{test}: network namespace tests are required (PYFW_REQUIRE_NETNS=1) but cannot run: {reason}"
        );
    }
    let _ = writeln!(
        std::io::stderr(),
        "SKIP {test}: {reason} (set PYFW_REQUIRE_NETNS=1 to make this a failure)"
    );
}

pub fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Deletes namespaces left behind by test processes that no longer exist
/// (a run killed before `Drop` could clean up).
fn remove_stale_namespaces() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Ok(entries) = std::fs::read_dir("/run/netns") else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(PREFIX) else {
                continue;
            };
            // pyfwt-TAG-PID-N
            let mut parts = rest.rsplit('-');
            let (_n, pid) = (parts.next(), parts.next());
            let Some(pid) = pid.and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = Command::new("ip")
                    .args(["netns", "del", &name])
                    .env("PATH", base_path())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
    });
}

/// Finds a legacy tool (`iptables-legacy-save`, ...) in the sbin directories.
fn find_sbin(name: &str) -> Option<PathBuf> {
    SBIN_DIRS
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}

/// A private network namespace with `lo` up, deleted on drop.
pub struct Netns {
    pub name: String,
    pub backend: Backend,
    /// `PATH` for every command run inside.
    path: String,
    /// The legacy symlinks and the namespace's xtables lock, kept as long
    /// as the namespace.
    bin: Option<tempfile::TempDir>,
    /// pyfw's state directory for the runs in this namespace (learned rule
    /// forms, nft renderings): a test's own, never the host's
    /// `/var/lib/pyfw` nor another test's. A test may still set another.
    state: tempfile::TempDir,
}

impl Netns {
    /// Creates a namespace for test `test` using `backend`, or returns
    /// `None` after printing why the test is skipped (see [`unavailable`]).
    #[track_caller]
    pub fn new(test: &str, backend: Backend) -> Option<Netns> {
        let label = format!("{test}[{backend:?}]");
        match effective_uid() {
            Some(0) => {}
            Some(uid) => {
                unavailable(&label, &format!("not root (euid {uid})"));
                return None;
            }
            None => {
                unavailable(
                    &label,
                    "cannot tell the effective uid from /proc/self/status",
                );
                return None;
            }
        }
        remove_stale_namespaces();

        let mut path = base_path();
        let bin = match backend {
            Backend::Nft => None,
            Backend::Legacy => {
                let dir = tempfile::Builder::new()
                    .prefix("pyfw-legacy-bin-")
                    .tempdir()
                    .expect("create temp dir for legacy symlinks");
                for tool in [
                    "iptables",
                    "iptables-save",
                    "iptables-restore",
                    "ip6tables",
                    "ip6tables-save",
                    "ip6tables-restore",
                ] {
                    // iptables-save -> iptables-legacy-save
                    let legacy = tool.replacen("tables", "tables-legacy", 1);
                    let Some(target) = find_sbin(&legacy) else {
                        unavailable(&label, &format!("{legacy} is not installed"));
                        return None;
                    };
                    std::os::unix::fs::symlink(&target, dir.path().join(tool)).unwrap_or_else(
                        |e| {
                            panic!(
                                "symlink {} in {}: {e}",
                                target.display(),
                                dir.path().display()
                            )
                        },
                    );
                }
                path = format!("{}:{path}", dir.path().display());
                Some(dir)
            }
        };

        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let short: String = test
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(10)
            .collect();
        let name = format!(
            "{PREFIX}{short}{}-{}-{}",
            backend.tag(),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let mut add = Command::new("ip");
        add.args(["netns", "add", &name]).env("PATH", &path);
        let added = match add.output() {
            Ok(o) if o.status.success() => true,
            Ok(o) => {
                unavailable(
                    &label,
                    &format!(
                        "`ip netns add {name}` failed ({}): {}",
                        o.status,
                        String::from_utf8_lossy(&o.stderr).trim()
                    ),
                );
                false
            }
            Err(e) => {
                unavailable(&label, &format!("cannot run `ip netns add {name}`: {e}"));
                false
            }
        };
        if !added {
            return None;
        }
        let state = tempfile::Builder::new()
            .prefix("pyfw-state-")
            .tempdir()
            .expect("create temp dir for pyfw's state");
        let ns = Netns {
            name,
            backend,
            state,
            path,
            bin,
        };
        ns.ok(&["ip", "link", "set", "lo", "up"], "bring lo up");

        // The backend must be the one asked for, or the test proves nothing.
        let version = ns.run(&["iptables", "-V"]);
        if !version.success() || !version.stdout.contains(backend.version_marker()) {
            unavailable(
                &label,
                &format!(
                    "`iptables -V` in the namespace does not report {}:\n{version}",
                    backend.version_marker()
                ),
            );
            return None;
        }
        let save = ns.run(&["iptables-save"]);
        if !save.success() {
            unavailable(
                &label,
                &format!("iptables does not work in a namespace:\n{save}"),
            );
            return None;
        }
        Some(ns)
    }

    fn command(&self, argv: &[&str]) -> (Command, Vec<String>) {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name])
            .args(argv)
            .env("PATH", &self.path)
            .env("LC_ALL", "C")
            // pyfw picks its wishes and its iptables variant itself (the
            // default `--backend auto` must find the namespace's variant).
            .env_remove("PYFW_WISHES")
            .env_remove("PYFW_BACKEND");
        // A legacy namespace has an xtables lock of its own: its tables are
        // its own, so tests need not wait for each other's locks, and a
        // daemon that follows the lock (src/xtlock.rs) hears its own test's
        // iptables runs only. A test may still set another.
        if let Some(bin) = &self.bin {
            cmd.env("XTABLES_LOCKFILE", bin.path().join("xtables.lock"));
        }
        cmd.env("PYFW_STATE_DIR", self.state.path());
        let mut shown = vec![format!("[netns {}]", self.name)];
        shown.extend(argv.iter().map(|s| s.to_string()));
        (cmd, shown)
    }

    /// The command that runs argv inside the namespace, to spawn it and
    /// manage it yourself (in the background, with its own environment).
    pub fn command_for(&self, argv: &[&str]) -> Command {
        self.command(argv).0
    }

    /// Runs argv inside the namespace.
    pub fn run(&self, argv: &[&str]) -> Out {
        let (cmd, shown) = self.command(argv);
        run_command(cmd, shown, None)
    }

    /// Runs argv inside the namespace with `input` on stdin.
    pub fn run_with_input(&self, argv: &[&str], input: &str) -> Out {
        let (cmd, shown) = self.command(argv);
        run_command(cmd, shown, Some(input))
    }

    /// Runs argv inside the namespace; panics unless it succeeds.
    #[track_caller]
    pub fn ok(&self, argv: &[&str], what: &str) -> String {
        let out = self.run(argv);
        out.expect_ok(what);
        out.stdout
    }

    /// `iptables -w ARGS`, which must succeed.
    #[track_caller]
    pub fn iptables(&self, args: &[&str]) {
        let mut argv = vec!["iptables", "-w"];
        argv.extend_from_slice(args);
        self.ok(&argv, "iptables");
    }

    /// `ip6tables -w ARGS`, which must succeed.
    #[track_caller]
    pub fn ip6tables(&self, args: &[&str]) {
        let mut argv = vec!["ip6tables", "-w"];
        argv.extend_from_slice(args);
        self.ok(&argv, "ip6tables");
    }

    /// Runs `f` on a thread inside this namespace, for what must ask the
    /// kernel directly rather than through a command.
    pub fn within<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                enter_netns(&self.name)
                    .unwrap_or_else(|e| panic!("enter namespace {}: {e}", self.name));
                f()
            })
            .join()
            .expect("thread in the namespace panicked")
        })
    }

    /// Loads an `iptables-save` dump (flushing the tables it names).
    #[track_caller]
    pub fn iptables_restore(&self, text: &str) {
        self.run_with_input(&["iptables-restore", "-w"], text)
            .expect_ok("iptables-restore");
    }

    /// The namespace's `iptables-save` output, as printed.
    #[track_caller]
    pub fn iptables_save(&self) -> String {
        self.ok(&["iptables-save"], "iptables-save")
    }

    /// The namespace's `ipset save` output, as printed.
    #[track_caller]
    pub fn ipset_save(&self) -> String {
        self.ok(&["ipset", "save"], "ipset save")
    }

    /// Runs `pyfw --wishes WISHES ARGS...` inside the namespace.
    pub fn run_pyfw(&self, wishes: &Path, args: &[&str]) -> Out {
        let wishes = wishes.to_str().expect("wishes path is UTF-8");
        let mut argv = vec![PYFW, "--wishes", wishes];
        argv.extend_from_slice(args);
        self.run(&argv)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let out = Command::new("ip")
            .args(["netns", "del", &self.name])
            .env("PATH", &self.path)
            .output();
        let failed = match &out {
            Ok(o) if o.status.success() => None,
            Ok(o) => Some(String::from_utf8_lossy(&o.stderr).into_owned()),
            Err(e) => Some(e.to_string()),
        };
        if let Some(why) = failed {
            let _ = writeln!(
                std::io::stderr(),
                "warning: cannot delete network namespace {}: {why}",
                self.name
            );
        }
    }
}

/// Moves the calling thread (only it: setns(2)) into the network namespace
/// `name`, so a test can open sockets or ask the kernel there directly.
pub fn enter_netns(name: &str) -> std::io::Result<()> {
    let file = std::fs::File::open(format!("/run/netns/{name}"))?;
    rustix::thread::move_into_link_name_space(
        std::os::fd::AsFd::as_fd(&file),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )?;
    Ok(())
}

/// Collects what a child prints on `pipe` into `into` as it comes, on a
/// thread of its own, so a test can read a running daemon's log; join the
/// handle to have all of it once the child is gone.
pub fn collect(
    mut pipe: impl std::io::Read + Send + 'static,
    into: &std::sync::Arc<std::sync::Mutex<String>>,
) -> std::thread::JoinHandle<()> {
    let sink = into.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    })
}

/// An `iptables-save` dump as pyfw's parser reads it, rendered back: counters,
/// `#` lines and quoting differences drop out; policies stay.
#[track_caller]
pub fn normalize_rules(text: &str) -> String {
    let ruleset = pyfw::state::parse_iptables_save(text)
        .unwrap_or_else(|e| panic!("cannot parse iptables-save output: {e}\n{text}"));
    pyfw::state::render_ruleset(&ruleset)
}

/// An `ipset save` dump as pyfw's parser reads it, rendered back.
#[track_caller]
pub fn normalize_ipsets(text: &str) -> String {
    let sets = pyfw::state::parse_ipset_save(text)
        .unwrap_or_else(|e| panic!("cannot parse ipset save output: {e}\n{text}"));
    pyfw::state::render_ipsets(&sets)
}

/// A unified diff from `expected` to `actual`, for failure messages.
pub fn diff(expected: &str, actual: &str) -> String {
    similar::TextDiff::from_lines(expected, actual)
        .unified_diff()
        .context_radius(3)
        .header("expected", "actual")
        .to_string()
}

/// `assert_eq!` on two texts, with a line diff in the message as well.
#[track_caller]
pub fn assert_text_eq(actual: &str, expected: &str, what: &str) {
    assert_eq!(
        actual,
        expected,
        "{what} (left: actual, right: expected)\n{}",
        diff(expected, actual)
    );
}

/// Asserts two `iptables-save` dumps hold the same rules and policies.
#[track_caller]
pub fn assert_rules_eq(actual: &str, expected: &str, what: &str) {
    assert_text_eq(
        &normalize_rules(actual),
        &normalize_rules(expected),
        &format!("{what}: iptables-save differs"),
    );
}
