//! `pyfw daemon` against real netfilter: the binary runs in a private
//! network namespace per test, on a short poll interval (or a very long one
//! where a test must prove that something other than the poll acted).
//!
//! Needs root. Without root, or where namespaces cannot be created, each
//! test prints a `SKIP` line and passes, unless `PYFW_REQUIRE_NETNS=1`,
//! which makes that a failure. Every wait is bounded: a condition is
//! polled until it holds, and the test fails with the daemon's log if it
//! does not within [`WAIT`].

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::common;

use common::{
    Backend, Netns, PYFW, base_path, normalize_rules as normalize, spec, spec_path, unavailable,
};

/// Longest wait for any condition.
const WAIT: Duration = Duration::from_secs(20);
/// The poll interval of most tests.
const FAST: &str = "300ms";
/// A poll interval that never comes due during a test.
const NEVER: &str = "1h";

// --- fixtures --------------------------------------------------------------

/// The spec's wishes with one more INPUT rule after `allow_ssh`.
fn wishes_with(name: &str, port: u16) -> String {
    let text = spec("wishes.yaml");
    let anchor =
        "        - allow_ssh: -p tcp -m tcp --dport 22 -m comment --comment allow_ssh -j ACCEPT\n";
    assert!(text.contains(anchor), "the spec's wishes changed");
    text.replacen(
        anchor,
        &format!(
            "{anchor}        - {name}: -p tcp -m tcp --dport {port} -m comment --comment {name} -j ACCEPT\n"
        ),
        1,
    )
}

/// The line (1-based) of `needle` in `text`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("`{needle}` not in:\n{text}"))
}

/// Writes `text` the way editors save: a temporary file renamed over.
fn editor_save(path: &Path, text: &str) {
    let tmp = path.with_file_name(format!(
        ".{}.swp",
        path.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Polls `ok` until it holds; panics with `context()` after [`WAIT`].
#[track_caller]
fn wait_until(what: &str, mut ok: impl FnMut() -> bool, context: impl Fn() -> String) {
    let start = Instant::now();
    while !ok() {
        if start.elapsed() > WAIT {
            panic!("timed out after {WAIT:?} waiting for {what}\n{}", context());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// --- namespaces ------------------------------------------------------------

/// A namespace from the shared harness ([`common::Netns`]), with the
/// daemon's environment (interval, systemd's variables) kept out of every
/// command, and helpers that return what these tests compare.
struct Ns {
    inner: Netns,
}

impl Ns {
    #[track_caller]
    fn new(test: &str) -> Option<Ns> {
        Ns::with_backend(test, false)
    }

    #[track_caller]
    fn with_backend(test: &str, legacy: bool) -> Option<Ns> {
        let backend = if legacy {
            Backend::Legacy
        } else {
            Backend::Nft
        };
        Netns::new(test, backend).map(|inner| Ns { inner })
    }

    fn command(&self, argv: &[&str]) -> Command {
        let mut c = self.inner.command_for(argv);
        c.env_remove("PYFW_INTERVAL")
            .env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID");
        c
    }

    fn run(&self, argv: &[&str]) -> Output {
        self.command(argv)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {argv:?}: {e}"))
    }

    #[track_caller]
    fn ok(&self, argv: &[&str]) -> String {
        let out = self.run(argv);
        assert!(
            out.status.success(),
            "{argv:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[track_caller]
    fn restore(&self, tool: &str, args: &[&str], text: &str) {
        let mut child = self
            .command(&[&[tool], args].concat())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{tool} {args:?} failed: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The rules, normalised, as `tool` (`iptables-save`, ...) shows them.
    fn rules_with(&self, tool: &str) -> String {
        normalize(&self.ok(&[tool]))
    }

    fn rules(&self) -> String {
        self.rules_with("iptables-save")
    }

    fn ipsets(&self) -> String {
        self.ok(&["ipset", "save"])
    }
}

// --- the daemon ------------------------------------------------------------

/// A `pyfw daemon` in a namespace, its stderr collected as it comes.
struct Daemon {
    child: Child,
    log: Arc<Mutex<String>>,
    reader: Option<JoinHandle<()>>,
    status: Option<ExitStatus>,
}

struct Start<'a> {
    wishes: &'a Path,
    interval: &'a str,
    global: Vec<&'a str>,
    env: Vec<(&'a str, String)>,
    /// Program and arguments put before `pyfw` (e.g. `unshare -m ...`).
    wrapper: Vec<String>,
}

impl<'a> Start<'a> {
    fn new(wishes: &'a Path, interval: &'a str) -> Start<'a> {
        Start {
            wishes,
            interval,
            global: Vec::new(),
            env: vec![("PYFW_LOG", "debug".to_string())],
            wrapper: Vec::new(),
        }
    }

    fn env(mut self, key: &'a str, value: impl Into<String>) -> Self {
        self.env.push((key, value.into()));
        self
    }

    fn global(mut self, args: &[&'a str]) -> Self {
        self.global.extend_from_slice(args);
        self
    }

    fn spawn(self, ns: &Ns) -> Daemon {
        let wishes = self.wishes.to_str().unwrap();
        let mut argv: Vec<&str> = self.wrapper.iter().map(String::as_str).collect();
        argv.extend([PYFW, "--wishes", wishes]);
        argv.extend(self.global.iter().copied());
        argv.extend(["daemon", "--interval", self.interval]);
        let mut cmd = ns.command(&argv);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the daemon: {e}"));
        let log = Arc::new(Mutex::new(String::new()));
        let reader = common::collect(child.stderr.take().unwrap(), &log);
        Daemon {
            child,
            log,
            reader: Some(reader),
            status: None,
        }
    }
}

impl Daemon {
    fn start(ns: &Ns, wishes: &Path, interval: &str) -> Daemon {
        Start::new(wishes, interval).spawn(ns)
    }

    fn pid(&self) -> u32 {
        // `ip netns exec` execs the program: same process.
        self.child.id()
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn log_lines_with(&self, needle: &str) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains(needle))
            .map(String::from)
            .collect()
    }

    #[track_caller]
    fn wait_log(&self, needle: &str) {
        wait_until(
            &format!("`{needle}` in the daemon's log"),
            || self.log().contains(needle),
            || self.log(),
        );
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) with our child's pid and a valid signal number.
        let rc = unsafe { libc::kill(self.pid() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill({}, {sig})", self.pid());
    }

    /// The exit status, once the daemon has exited.
    fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().unwrap();
        }
        self.status
    }

    #[track_caller]
    fn assert_alive(&mut self) {
        if let Some(status) = self.exited() {
            panic!("the daemon exited ({status})\n{}", self.log());
        }
    }

    /// Waits for the daemon to exit within `limit`.
    #[track_caller]
    fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(s) = self.exited() {
                if let Some(r) = self.reader.take() {
                    let _ = r.join();
                }
                return s;
            }
            if start.elapsed() > limit {
                panic!("the daemon did not exit within {limit:?}\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the namespace's rules equal `expected` (normalised).
    #[track_caller]
    fn wait_rules(&self, ns: &Ns, expected: &str, what: &str) {
        self.wait_rules_with(ns, "iptables-save", expected, what);
    }

    #[track_caller]
    fn wait_rules_with(&self, ns: &Ns, tool: &str, expected: &str, what: &str) {
        let expected = normalize(expected);
        wait_until(
            what,
            || ns.rules_with(tool) == expected,
            || {
                format!(
                    "--- expected ---\n{expected}--- actual ---\n{}--- daemon log ---\n{}",
                    ns.rules_with(tool),
                    self.log()
                )
            },
        );
    }

    /// Waits for `n` more in-sync polls (logged at debug) than now.
    #[track_caller]
    fn wait_polls(&self, n: usize) {
        let count = || self.log().matches("in sync with").count();
        let target = count() + n;
        wait_until(
            &format!("{n} more polls"),
            || count() >= target,
            || self.log(),
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// A namespace holding Docker's rules after a reboot, and a daemon that
/// has firewalled it as the spec says.
fn started(test: &str, wishes: &Path, interval: &str) -> Option<(Ns, Daemon)> {
    let ns = Ns::new(test)?;
    ns.restore(
        "iptables-restore",
        &["-w"],
        &spec("docker-after-reboot.save"),
    );
    let daemon = Daemon::start(&ns, wishes, interval);
    daemon.wait_rules(&ns, &spec("after-apply.save"), "the first reconcile");
    daemon.wait_log("ready: netfilter matches");
    Some((ns, daemon))
}

/// Like [`started`], on a chosen backend (`--backend legacy` or `nft`).
fn started_on(test: &str, interval: &str, legacy: bool) -> Option<(Ns, Daemon)> {
    let ns = Ns::with_backend(test, legacy)?;
    ns.restore(
        "iptables-restore",
        &["-w"],
        &spec("docker-after-reboot.save"),
    );
    let backend = if legacy { "legacy" } else { "nft" };
    let daemon = Start::new(&spec_path("wishes.yaml"), interval)
        .global(&["--backend", backend])
        .spawn(&ns);
    daemon.wait_rules(&ns, &spec("after-apply.save"), "the first reconcile");
    daemon.wait_log("ready: netfilter matches");
    Some((ns, daemon))
}

/// `systemctl restart docker.service`, in one transaction so that the
/// daemon sees all of it at once: Docker flushes its DOCKER chain and puts
/// its own FORWARD rules back on top.
fn replay_docker_restart(ns: &Ns, restore: &str) {
    let rs = pyfw::state::parse_iptables_save(&spec("docker-after-reboot.save")).unwrap();
    let forward = rs.tables["filter"].chain("FORWARD").unwrap();
    let mut script = String::from("*filter\n-F DOCKER\n");
    for (i, rule) in forward.rules.iter().enumerate() {
        let args = pyfw::state::rule::display_args(rule.args());
        script.push_str(&format!("-D FORWARD {args}\n-I FORWARD {} {args}\n", i + 1));
    }
    script.push_str("COMMIT\n");
    ns.restore(restore, &["-w", "--noflush"], &script);
}

/// The spec's five repair commands, as `binary` runs them.
fn spec_repair_commands(binary: &str) -> Vec<String> {
    spec("apply-output.txt")
        .lines()
        .map(|l| {
            let cmd = l.split_once(": ").expect("Executing command i/N: CMD").1;
            let rest = cmd.strip_prefix("iptables ").expect("an iptables command");
            format!("{binary} {rest}")
        })
        .collect()
}

// --- tests -----------------------------------------------------------------

#[test]
fn firewalls_on_start() {
    let Some((ns, mut daemon)) = started("firewalls_on_start", &spec_path("wishes.yaml"), FAST)
    else {
        return;
    };
    let sets = pyfw::state::parse_ipset_save(&ns.ipsets()).unwrap();
    assert_eq!(sets["allowed_hosts"].members, ["192.168.122.193"]);
    let log = daemon.log();
    assert!(
        log.contains("drift (startup): filter/INPUT: allow_ssh missing"),
        "{log}"
    );
    assert!(log.contains("trigger=\"startup\""), "{log}");
    daemon.wait_polls(2);
    daemon.assert_alive();
}

fn docker_restart_is_repaired(legacy: bool) {
    let test = format!("docker_restart_is_repaired[legacy={legacy}]");
    let Some((ns, mut daemon)) = started_on(&test, FAST, legacy) else {
        return;
    };
    let (save, restore, binary) = ("iptables-save", "iptables-restore", "iptables");

    replay_docker_restart(&ns, restore);
    daemon.wait_rules_with(&ns, save, &spec("after-apply.save"), "the repair");
    daemon.wait_log("repaired (drift)");
    let log = daemon.log();
    for drift in [
        "drift (drift): filter/FORWARD: allow_established is at position 6, wished 1",
        "drift (drift): filter/DOCKER: allowed_hosts_only missing",
    ] {
        assert!(log.contains(drift), "the log must name `{drift}`:\n{log}");
    }
    // Drift is named before any command runs.
    let named = log.find("drift (drift): ").unwrap();
    let first_run = log[named..].find("ran 1/").map(|i| i + named);
    assert!(first_run.is_some(), "{log}");
    for command in spec_repair_commands(binary) {
        let ran: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(&format!(": {command} ")) && l.contains("ran "))
            .collect();
        assert!(
            ran.iter()
                .any(|l| l.contains("result=\"ok\"") && l.contains("trigger=\"drift\"")),
            "the log must show `{command}` run with its result:\n{log}"
        );
    }
    daemon.wait_polls(2);
    if legacy {
        // While the xtables lock stays quiet, polls of an unchanged table
        // skip even its fingerprint; once another program runs iptables (a
        // read that changes nothing, releasing the lock), the next poll
        // takes the fingerprint, which says nothing changed, and skips the
        // read.
        daemon.wait_log("filter: unchanged since it was read (the xtables lock stayed quiet)");
        ns.ok(&["iptables", "-w", "-S", "INPUT"]);
        daemon.wait_log("filter: unchanged since it was read (fingerprint)");
        // A change of order alone, same size, is still seen:
        // allow_established moved to the end of FORWARD in one transaction.
        let repairs = || daemon.log().matches("repaired (drift)").count();
        let before = repairs();
        let rule = "-m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment \
                    allow_established -j ACCEPT";
        ns.restore(
            restore,
            &["-w", "--noflush"],
            &format!("*filter\n-D FORWARD {rule}\n-A FORWARD {rule}\nCOMMIT\n"),
        );
        wait_until(
            "the reorder repaired",
            || repairs() > before,
            || daemon.log(),
        );
        daemon.wait_rules_with(&ns, save, &spec("after-apply.save"), "the reorder's repair");
    }
    daemon.assert_alive();
}

/// On legacy, a change made through iptables is repaired when the xtables
/// lock is released, without waiting for a poll: none comes due here.
#[test]
fn legacy_drift_is_repaired_when_the_xtables_lock_is_released() {
    let Some((ns, mut daemon)) = started_on("legacy_lock_release", NEVER, true) else {
        return;
    };
    daemon.wait_log("following the xtables lock");

    // A release that changes no wished table (a read takes the lock too)
    // is checked, and wakes no reconcile. The daemon's own start-up runs
    // settle first.
    let unchanged = "xtables lock released; the wished legacy tables are unchanged";
    std::thread::sleep(Duration::from_secs(2));
    let checks = daemon.log().matches(unchanged).count();
    let changes = daemon.log().matches("netfilter change:").count();
    for _ in 0..3 {
        ns.ok(&["iptables", "-w", "-L", "-n"]);
    }
    wait_until(
        "the reads' release checked",
        || daemon.log().matches(unchanged).count() > checks,
        || daemon.log(),
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        daemon.log().matches("netfilter change:").count(),
        changes,
        "a read woke a reconcile:\n{}",
        daemon.log()
    );

    replay_docker_restart(&ns, "iptables-restore");
    daemon.wait_rules_with(
        &ns,
        "iptables-save",
        &spec("after-apply.save"),
        "the repair",
    );
    daemon.wait_log("repaired (drift)");
    let log = daemon.log();
    assert!(
        log.contains(
            "netfilter change: filter changed (an iptables command released the xtables lock)"
        ),
        "{log}"
    );
    assert!(
        !log.contains("trigger=\"timer\""),
        "no poll was due:\n{log}"
    );
    daemon.assert_alive();
}

/// A program that writes a legacy table without taking the xtables lock
/// pyfw follows (its own `XTABLES_LOCKFILE` here; a libiptc user, or
/// iptables in a container with its own `/run`, in life) is still found:
/// adding or removing a rule changes the table's summary, which every poll
/// checks; a reorder of the same size, at the latest when the quiet
/// table's fingerprint is taken again ([`pyfw::kernel::xtlock::TRUST_QUIET_FOR`]).
#[test]
fn legacy_writers_that_bypass_the_lock_are_found_by_the_poll() {
    let Some((ns, mut daemon)) = started_on("legacy_lock_bypass", FAST, true) else {
        return;
    };
    daemon.wait_log("filter: unchanged since it was read (the xtables lock stayed quiet)");
    let elsewhere = tempfile::tempdir().unwrap();
    let lock = format!(
        "XTABLES_LOCKFILE={}",
        elsewhere.path().join("xtables.lock").display()
    );
    let bypass = |script: &str| {
        ns.restore(
            "env",
            &[&lock, "iptables-restore", "-w", "--noflush"],
            script,
        )
    };
    let rule = "-m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment \
                allow_established -j ACCEPT";
    let repairs = || daemon.log().matches("repaired (drift)").count();

    // Removed: the summary changes, the next poll repairs it.
    let before = repairs();
    bypass(&format!("*filter\n-D FORWARD {rule}\nCOMMIT\n"));
    wait_until(
        "the removal repaired",
        || repairs() > before,
        || daemon.log(),
    );
    daemon.wait_rules_with(&ns, "iptables-save", &spec("after-apply.save"), "removal");

    // Reordered, same size: found by the fingerprint, which a quiet table
    // still gets every TRUST_QUIET_FOR. The table is quiet again first (a
    // poll after the repair trusted it), so nothing else can find it.
    let quiet = "filter: unchanged since it was read (the xtables lock stayed quiet)";
    let trusted = daemon.log().matches(quiet).count();
    wait_until(
        "a quiet poll after the repair",
        || daemon.log().matches(quiet).count() > trusted,
        || daemon.log(),
    );
    let before = repairs();
    bypass(&format!(
        "*filter\n-D FORWARD {rule}\n-A FORWARD {rule}\nCOMMIT\n"
    ));
    let deadline = Instant::now() + pyfw::kernel::xtlock::TRUST_QUIET_FOR + WAIT;
    while repairs() == before {
        assert!(
            Instant::now() < deadline,
            "the same-size reorder was not repaired within {:?}:\n{}",
            pyfw::kernel::xtlock::TRUST_QUIET_FOR + WAIT,
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    daemon.wait_rules_with(&ns, "iptables-save", &spec("after-apply.save"), "reorder");
    daemon.assert_alive();
}

/// Another program's odd names and rules, which pyfw reads but cannot
/// wish for (`iptables -N 'x"y'; iptables -A INPUT -j 'x"y'`, chains `#x`
/// and `a\b`, a comment holding a line break, a value printed with a quote
/// that never closes, a member comment with quotes and a backslash), never
/// stop the daemon: it becomes ready and repairs a deleted wished rule,
/// and every foreign rule stays in its place.
fn odd_foreign_names_never_stop_the_daemon(legacy: bool) {
    let test = format!("odd_foreign[legacy={legacy}]");
    let Some(ns) = Ns::with_backend(&test, legacy) else {
        return;
    };
    for chain in ["x\"y", "#x", "a\\b"] {
        ns.ok(&["iptables", "-w", "-N", chain]);
        ns.ok(&["iptables", "-w", "-A", "INPUT", "-j", chain]);
    }
    let comment = "nl\n-A INPUT -j DROP";
    ns.ok(&[
        "iptables",
        "-w",
        "-A",
        "INPUT",
        "-m",
        "comment",
        "--comment",
        comment,
        "-j",
        "ACCEPT",
    ]);
    // Printed `--name "r`: a quote that never closes.
    ns.ok(&[
        "iptables", "-w", "-A", "INPUT", "-m", "recent", "--name", "\"r", "--set",
    ]);
    ns.ok(&["ipset", "create", "foreign", "hash:ip", "comment"]);
    ns.ok(&["ipset", "add", "foreign", "10.9.9.9", "comment", "it's a\\"]);
    let dir = tempfile::tempdir().unwrap();
    let wishes = dir.path().join("wishes.yaml");
    std::fs::write(
        &wishes,
        "pyfw_wishes:\n  ipsets:\n    mine:\n      type: hash:ip\n      header: comment\n      \
         members_equal:\n      - '10.0.0.1 comment \"a b\"'\n  iptables:\n    filter:\n      \
         INPUT:\n        rules:\n        - allow_ssh: -p tcp --dport 22 -m set --match-set mine \
         src -j ACCEPT\n        - ~match: 'x|#|a|recent'\n",
    )
    .unwrap();
    // Read as printed: the harness's normaliser is pyfw's own parser.
    let saved = || ns.ok(&["iptables-save"]);
    let foreign = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| l.starts_with("-A ") && !l.contains("allow_ssh"))
            .map(String::from)
            .collect()
    };
    let before = saved();
    let daemon = Daemon::start(&ns, &wishes, FAST);
    daemon.wait_log("ready: netfilter matches");
    let applied = saved();
    assert!(applied.contains("allow_ssh"), "{applied}");
    assert_eq!(foreign(&applied), foreign(&before), "{}", daemon.log());
    let members = ns.ok(&["ipset", "save", "mine"]);
    assert!(
        members.contains("add mine 10.0.0.1 comment \"a b\"\n"),
        "{members}"
    );
    // A wished rule deleted by hand comes back.
    ns.ok(&[
        "iptables",
        "-w",
        "-D",
        "INPUT",
        "-p",
        "tcp",
        "-m",
        "tcp",
        "--dport",
        "22",
        "-m",
        "set",
        "--match-set",
        "mine",
        "src",
        "-m",
        "comment",
        "--comment",
        "allow_ssh",
        "-j",
        "ACCEPT",
    ]);
    wait_until(
        "the repair beside odd foreign rules",
        || saved().contains("allow_ssh"),
        || daemon.log(),
    );
    assert_eq!(foreign(&saved()), foreign(&before));
    let log = daemon.log();
    assert!(!log.contains("unbalanced quotes"), "{log}");
    assert!(log.contains("repaired"), "{log}");
}

#[test]
fn odd_foreign_names_never_stop_the_daemon_nft() {
    odd_foreign_names_never_stop_the_daemon(false);
}

#[test]
fn odd_foreign_names_never_stop_the_daemon_legacy() {
    odd_foreign_names_never_stop_the_daemon(true);
}

#[test]
fn docker_restart_is_repaired_nft() {
    docker_restart_is_repaired(false);
}

#[test]
fn docker_restart_is_repaired_legacy() {
    docker_restart_is_repaired(true);
}

#[test]
fn an_editor_save_is_followed_without_a_signal() {
    let dir = tempfile::tempdir().unwrap();
    let wishes = dir.path().join("wishes.yaml");
    std::fs::write(&wishes, spec("wishes.yaml")).unwrap();
    // No poll during the test: only the file watch can see the edit.
    let Some((ns, mut daemon)) = started("editor_save", &wishes, NEVER) else {
        return;
    };
    editor_save(&wishes, &wishes_with("allow_http", 80));
    wait_until(
        "allow_http in INPUT",
        || ns.rules().contains("--comment allow_http"),
        || daemon.log(),
    );
    daemon.wait_log("drift (wishes-changed): filter/INPUT: allow_http missing");
    daemon.wait_log("repaired (wishes-changed)");
    // An event that changes nothing (touching the file) is only a hint.
    let runs = daemon.log().matches("repaired (").count();
    std::fs::write(dir.path().join("unrelated"), "x").unwrap();
    editor_save(&wishes, &wishes_with("allow_http", 80));
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(daemon.log().matches("repaired (").count(), runs);
    daemon.assert_alive();
}

#[test]
fn a_configmap_symlink_swap_is_followed() {
    let dir = tempfile::tempdir().unwrap();
    let top = dir.path();
    let version = |name: &str, text: &str| {
        std::fs::create_dir(top.join(name)).unwrap();
        std::fs::write(top.join(name).join("wishes.yaml"), text).unwrap();
    };
    // How the kubelet lays out a ConfigMap volume.
    version("..2026_01_01_00_00_00.1", &spec("wishes.yaml"));
    std::os::unix::fs::symlink("..2026_01_01_00_00_00.1", top.join("..data")).unwrap();
    let wishes = top.join("wishes.yaml");
    std::os::unix::fs::symlink("..data/wishes.yaml", &wishes).unwrap();
    // ...and how it updates one: a new directory, `..data` swapped
    // atomically by renaming a new symlink over it, the old one removed.
    let swap = |old: &str, new: &str, text: &str| {
        version(new, text);
        std::os::unix::fs::symlink(new, top.join("..data_tmp")).unwrap();
        std::fs::rename(top.join("..data_tmp"), top.join("..data")).unwrap();
        std::fs::remove_dir_all(top.join(old)).unwrap();
    };
    let Some((ns, mut daemon)) = started("configmap_swap", &wishes, NEVER) else {
        return;
    };
    swap(
        "..2026_01_01_00_00_00.1",
        "..2026_01_02_00_00_00.2",
        &wishes_with("allow_http", 80),
    );
    wait_until(
        "allow_http after the first swap",
        || ns.rules().contains("--comment allow_http"),
        || daemon.log(),
    );
    swap(
        "..2026_01_02_00_00_00.2",
        "..2026_01_03_00_00_00.3",
        &wishes_with("allow_https", 443),
    );
    wait_until(
        "allow_https after the second swap",
        || ns.rules().contains("--comment allow_https"),
        || daemon.log(),
    );
    daemon.wait_log("drift (wishes-changed): filter/INPUT: allow_https missing");
    daemon.assert_alive();
}

#[test]
fn invalid_edits_change_nothing_and_the_fix_is_picked_up() {
    let dir = tempfile::tempdir().unwrap();
    let wishes = dir.path().join("wishes.yaml");
    std::fs::write(&wishes, spec("wishes.yaml")).unwrap();
    let Some((ns, mut daemon)) = started("invalid_edits", &wishes, FAST) else {
        return;
    };
    let good = spec("after-apply.save");
    let shown = wishes.display().to_string();

    let yaml = spec("wishes.yaml").replacen("default_action: DROP", "default_action: [DROP", 1);
    let policy = spec("wishes.yaml").replacen("default_action: DROP", "default_action: DRUP", 1);
    let rejected = wishes_with("bad_state", 0).replace(
        "-p tcp -m tcp --dport 0 -m comment --comment bad_state",
        "-m conntrack --ctstate BOGUS -m comment --comment bad_state",
    );
    // What each error must say, besides the file and line: the wish in the
    // message and as log fields.
    let cases: [(&str, &String, &str, &[&str]); 3] = [
        ("bad YAML", &yaml, "default_action: [DROP", &[]),
        (
            "a failed validation",
            &policy,
            "DRUP",
            &["filter/INPUT", "table=\"filter\" chain=\"INPUT\""],
        ),
        (
            "a rule iptables rejects",
            &rejected,
            "bad_state",
            &["filter/INPUT/bad_state", "wish=\"bad_state\""],
        ),
    ];
    for (what, text, needle, names) in cases {
        let at = format!("{shown}:{}", line_of(text, needle));
        let mark = daemon.log().len();
        editor_save(&wishes, text);
        let errors = || {
            daemon.log()[mark..]
                .lines()
                .filter(|l| l.contains("ERROR") && l.contains(&at))
                .map(String::from)
                .collect::<Vec<_>>()
        };
        wait_until(
            &format!("an error naming {at} for {what}"),
            || !errors().is_empty(),
            || daemon.log(),
        );
        for name in names {
            assert!(
                errors()[0].contains(name),
                "the error for {what} must name {name}: {:?}",
                errors()
            );
        }
        // Several polls later: still one error, nothing changed, alive.
        daemon.wait_polls(3);
        assert_eq!(errors().len(), 1, "one error for {what}:\n{}", daemon.log());
        assert_eq!(ns.rules(), normalize(&good), "{what} changed netfilter");
        daemon.assert_alive();
    }

    // Fixed: picked up.
    editor_save(&wishes, &wishes_with("allow_http", 80));
    wait_until(
        "the fixed file to be applied",
        || ns.rules().contains("--comment allow_http"),
        || daemon.log(),
    );
    daemon.wait_polls(1);
    daemon.assert_alive();
}

#[test]
fn invalid_wishes_at_startup_exit_nonzero() {
    let Some(ns) = Ns::new("invalid_at_startup") else {
        return;
    };
    ns.restore(
        "iptables-restore",
        &["-w"],
        &spec("docker-after-reboot.save"),
    );
    let dir = tempfile::tempdir().unwrap();
    let wishes = dir.path().join("wishes.yaml");
    let bad_yaml = spec("wishes.yaml").replacen("default_action: DROP", "default_action: [DROP", 1);
    let rejected = wishes_with("bad_state", 0).replace(
        "-p tcp -m tcp --dport 0 -m comment --comment bad_state",
        "-m conntrack --ctstate BOGUS -m comment --comment bad_state",
    );
    for (text, needle) in [
        (&bad_yaml, "default_action: [DROP"),
        (&rejected, "bad_state"),
    ] {
        std::fs::write(&wishes, text).unwrap();
        let mut daemon = Daemon::start(&ns, &wishes, FAST);
        let status = daemon.wait_exit(WAIT);
        assert_eq!(status.code(), Some(1), "{}", daemon.log());
        let at = format!("{}:{}", wishes.display(), line_of(text, needle));
        assert!(
            daemon.log().contains(&at),
            "must name {at}:\n{}",
            daemon.log()
        );
        assert_eq!(
            ns.rules(),
            normalize(&spec("docker-after-reboot.save")),
            "nothing may change\n{}",
            daemon.log()
        );
    }
}

#[test]
fn sighup_reloads() {
    let Some(ns) = Ns::new("sighup_reloads") else {
        return;
    };
    ns.restore(
        "iptables-restore",
        &["-w"],
        &spec("docker-after-reboot.save"),
    );
    // The daemon's path is a hard link into a directory it does not watch:
    // an edit made in place there raises no event it can see, so only the
    // SIGHUP can make it re-read the file (and the poll never comes).
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("real")).unwrap();
    std::fs::create_dir(dir.path().join("etc")).unwrap();
    let real = dir.path().join("real/wishes.yaml");
    std::fs::write(&real, spec("wishes.yaml")).unwrap();
    let wishes = dir.path().join("etc/wishes.yaml");
    std::fs::hard_link(&real, &wishes).unwrap();
    let mut daemon = Daemon::start(&ns, &wishes, NEVER);
    daemon.wait_rules(&ns, &spec("after-apply.save"), "the first reconcile");
    daemon.wait_log("ready: netfilter matches");

    std::fs::write(&real, wishes_with("allow_http", 80)).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !ns.rules().contains("allow_http"),
        "the edit was seen without SIGHUP; this test proves nothing\n{}",
        daemon.log()
    );
    daemon.signal(libc::SIGHUP);
    wait_until(
        "allow_http after SIGHUP",
        || ns.rules().contains("--comment allow_http"),
        || daemon.log(),
    );
    daemon.wait_log("SIGHUP: re-reading");
    daemon.wait_log("drift (sighup): filter/INPUT: allow_http missing");

    // SIGHUP also repairs drift at once, without waiting for a poll.
    delete_allow_ssh(&ns);
    daemon.signal(libc::SIGHUP);
    wait_until(
        "allow_ssh back after SIGHUP",
        || ns.rules().contains("--comment allow_ssh"),
        || daemon.log(),
    );
    daemon.assert_alive();
}

#[test]
fn sigterm_and_sigint_exit_0_and_leave_the_rules() {
    for (sig, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT")] {
        let Some((ns, mut daemon)) = started("sigterm_exits_0", &spec_path("wishes.yaml"), FAST)
        else {
            return;
        };
        daemon.signal(sig);
        // "Within a second or two"; generous for a loaded machine.
        let status = daemon.wait_exit(Duration::from_secs(5));
        assert_eq!(status.code(), Some(0), "{name}\n{}", daemon.log());
        assert!(
            daemon.log().contains(&format!("stopping on {name}")),
            "{}",
            daemon.log()
        );
        assert_eq!(
            ns.rules(),
            normalize(&spec("after-apply.save")),
            "the rules must stay after {name}"
        );
    }
}

#[test]
fn one_daemon_per_network_namespace() {
    let wishes = spec_path("wishes.yaml");
    let Some((ns, mut first)) = started("one_daemon_per_netns", &wishes, FAST) else {
        return;
    };
    let mut second = Daemon::start(&ns, &wishes, FAST);
    let status = second.wait_exit(WAIT);
    assert_eq!(status.code(), Some(1), "{}", second.log());
    let log = second.log();
    assert!(
        log.contains("already running in this network namespace")
            && log.contains(&format!("pid {}", first.pid())),
        "the refusal must say why and name the running daemon:\n{log}"
    );
    first.assert_alive();

    // Another namespace is another firewall: a daemon starts there.
    let Some((_other_ns, mut other)) = started("one_daemon_per_netns", &wishes, FAST) else {
        return;
    };
    other.assert_alive();
    first.assert_alive();
}

/// Whether the writer lock of `ns` is free (taking it for an instant).
fn writer_lock_free(ns: &Ns) -> bool {
    ns.inner
        .within(|| pyfw::kernel::lock::try_lock(pyfw::kernel::lock::WRITER).is_ok())
}

/// Holds the writer lock of `ns` until killed: a shell that opens the lock
/// file (in /run/pyfw: the tests set no PYFW_RUN_DIR), flock(1)s it and
/// becomes `sleep`, one process keeping the lock until it dies.
fn hold_writer_lock(ns: &Ns) -> Child {
    assert!(writer_lock_free(ns), "the writer lock is free at first");
    let path = ns
        .inner
        .within(|| pyfw::kernel::lock::path(pyfw::kernel::lock::WRITER))
        .expect("the writer lock's path");
    let child = ns
        .command(&[
            "sh",
            "-c",
            r#"exec 9>>"$1" && flock --exclusive 9 && exec sleep 3600"#,
            "sh",
            path.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sh");
    wait_until(
        "a process to hold the writer lock",
        || !writer_lock_free(ns),
        String::new,
    );
    child
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .env("PATH", base_path())
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn apply_takes_turns_with_the_writer_lock() {
    let Some(ns) = Ns::new("apply_takes_turns") else {
        return;
    };
    if !have("flock") {
        unavailable("apply_takes_turns", "flock is not installed");
        return;
    }
    ns.restore(
        "iptables-restore",
        &["-w"],
        &spec("docker-after-reboot.save"),
    );
    let wishes = spec_path("wishes.yaml");
    let mut holder = hold_writer_lock(&ns);
    let mut apply = ns
        .command(&[PYFW, "--wishes", wishes.to_str().unwrap(), "apply"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let seen = Arc::new(Mutex::new(String::new()));
    let reader = common::collect(apply.stderr.take().unwrap(), &seen);
    wait_until(
        "apply to say it waits",
        || seen.lock().unwrap().contains("waiting up to"),
        || seen.lock().unwrap().clone(),
    );
    assert!(apply.try_wait().unwrap().is_none(), "apply must wait");
    assert_eq!(
        ns.rules(),
        normalize(&spec("docker-after-reboot.save")),
        "apply changed netfilter while another pyfw held the lock"
    );
    let _ = holder.kill();
    let _ = holder.wait();
    let out = apply.wait_with_output().unwrap();
    reader.join().unwrap();
    assert!(
        out.status.success(),
        "apply after the lock was freed: {}",
        seen.lock().unwrap()
    );
    assert_eq!(ns.rules(), normalize(&spec("after-apply.save")));

    // With a daemon running, a one-shot apply takes its turn.
    let mut daemon = Daemon::start(&ns, &wishes, FAST);
    daemon.wait_log("ready: netfilter matches");
    for _ in 0..3 {
        let out = ns.run(&[PYFW, "--wishes", wishes.to_str().unwrap(), "apply"]);
        assert!(
            out.status.success(),
            "apply beside the daemon: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    daemon.assert_alive();
}

#[test]
fn apply_gives_up_when_the_writer_lock_stays_held() {
    let Some(ns) = Ns::new("apply_gives_up") else {
        return;
    };
    if !have("flock") {
        unavailable("apply_gives_up", "flock is not installed");
        return;
    }
    let mut holder = hold_writer_lock(&ns);
    // A bad file is reported at once, not after the wait for the turn
    // (the turn is taken beside the parse, for the early read).
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("wishes.yaml");
    std::fs::write(
        &bad,
        "pyfw_wishes:\n  iptables:\n    filter:\n      INPUT: {rulez: []}\n",
    )
    .unwrap();
    let out = ns.run(&[PYFW, "--wishes", bad.to_str().unwrap(), "apply"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(bad.to_str().unwrap()) && stderr.contains("rulez"),
        "{stderr}"
    );
    assert!(!stderr.contains("gave up"), "{stderr}");
    let wishes = spec_path("wishes.yaml");
    let out = ns.run(&[PYFW, "--wishes", wishes.to_str().unwrap(), "apply"]);
    let _ = holder.kill();
    let _ = holder.wait();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("gave up after") && stderr.contains("holds the writer lock"),
        "{stderr}"
    );
}

#[test]
fn a_fight_is_survived_and_state_converges_after_it() {
    let Some((ns, mut daemon)) = started("fight", &spec_path("wishes.yaml"), FAST) else {
        return;
    };
    // Another program deletes a wished rule, again and again, for 4 s.
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        let _ = ns.run(&[
            "iptables",
            "-w",
            "-D",
            "INPUT",
            "-p",
            "tcp",
            "-m",
            "tcp",
            "--dport",
            "22",
            "-m",
            "comment",
            "--comment",
            "allow_ssh",
            "-j",
            "ACCEPT",
        ]);
        std::thread::sleep(Duration::from_millis(50));
    }
    daemon.assert_alive();
    daemon.wait_rules(
        &ns,
        &spec("after-apply.save"),
        "convergence after the fight",
    );
    let fights = daemon.log_lines_with("fight: another program keeps undoing");
    assert!(
        fights
            .iter()
            .any(|l| l.contains("filter/INPUT: allow_ssh missing") && l.contains("WARN")),
        "a warning must name the other side's effect:\n{}",
        daemon.log()
    );
    daemon.wait_polls(2);
    daemon.assert_alive();
}

/// One journal entry: each field's values.
type Entry = BTreeMap<String, Vec<String>>;

/// Journal entries sent to a socket standing in for journald.
struct FakeJournal {
    entries: Arc<Mutex<Vec<Entry>>>,
}

impl FakeJournal {
    /// Binds `DIR/systemd/journal/socket`; `DIR` is bind-mounted over
    /// `/run` for the daemon.
    fn new(dir: &Path) -> FakeJournal {
        std::fs::create_dir_all(dir.join("systemd/journal")).unwrap();
        let sock = UnixDatagram::bind(dir.join("systemd/journal/socket")).unwrap();
        let entries = Arc::new(Mutex::new(Vec::new()));
        let sink = entries.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 20];
            while let Ok(n) = sock.recv(&mut buf) {
                if n > 0 {
                    sink.lock().unwrap().push(parse_journal(&buf[..n]));
                }
            }
        });
        FakeJournal { entries }
    }

    fn find(&self, fields: &[(&str, &str)]) -> bool {
        self.entries.lock().unwrap().iter().any(|e| {
            fields
                .iter()
                .all(|(k, v)| e.get(*k).is_some_and(|vals| vals.iter().any(|x| x == v)))
        })
    }

    fn dump(&self) -> String {
        format!("{:#?}", self.entries.lock().unwrap())
    }
}

/// The journal's native protocol: `NAME=value\n`, or `NAME\n`, a 64-bit
/// little-endian length, the value and `\n`.
fn parse_journal(mut data: &[u8]) -> Entry {
    let mut out = Entry::new();
    while !data.is_empty() {
        let Some(nl) = data.iter().position(|b| *b == b'\n') else {
            break;
        };
        let line = &data[..nl];
        if let Some(eq) = line.iter().position(|b| *b == b'=') {
            let (k, v) = (&line[..eq], &line[eq + 1..]);
            out.entry(String::from_utf8_lossy(k).into_owned())
                .or_default()
                .push(String::from_utf8_lossy(v).into_owned());
            data = &data[nl + 1..];
        } else {
            let name = String::from_utf8_lossy(line).into_owned();
            let rest = &data[nl + 1..];
            let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
            let value = &rest[8..8 + len];
            out.entry(name)
                .or_default()
                .push(String::from_utf8_lossy(value).into_owned());
            data = &rest[8 + len + 1..];
        }
    }
    out
}

#[test]
fn journal_entries_carry_trigger_wish_and_command_fields() {
    let Some(ns) = Ns::new("journal_fields") else {
        return;
    };
    if !have("unshare") {
        unavailable("journal_fields", "unshare is not installed");
        return;
    }
    ns.restore(
        "iptables-restore",
        &["-w"],
        &spec("docker-after-reboot.save"),
    );
    let run = tempfile::tempdir().unwrap();
    let journal = FakeJournal::new(run.path());
    let wishes = spec_path("wishes.yaml");
    let mut start = Start::new(&wishes, FAST).env("JOURNAL_STREAM", "1:1");
    start.wrapper = vec![
        "unshare".into(),
        "-m".into(),
        "sh".into(),
        "-c".into(),
        r#"mount --bind "$0" /run && exec "$@""#.into(),
        run.path().display().to_string(),
    ];
    let mut daemon = start.spawn(&ns);
    let ready = || {
        journal.entries.lock().unwrap().iter().any(|e| {
            e.get("MESSAGE")
                .is_some_and(|m| m.iter().any(|m| m.starts_with("ready:")))
        })
    };
    wait_until("READY in the journal", ready, || {
        format!("{}\n{}", daemon.log(), journal.dump())
    });
    assert!(
        journal.find(&[
            ("TRIGGER", "startup"),
            ("WISH", "allow_ssh"),
            ("TABLE", "filter"),
            ("CHAIN", "INPUT"),
            ("RESULT", "ok"),
            ("EXIT_STATUS", "0"),
            ("SYSLOG_IDENTIFIER", "pyfw"),
            (
                "COMMAND",
                "iptables -w -t filter -I INPUT 2 -p tcp -m tcp --dport 22 -m comment --comment allow_ssh -j ACCEPT"
            ),
        ]),
        "{}",
        journal.dump()
    );
    replay_docker_restart(&ns, "iptables-restore");
    wait_until(
        "a drift entry for allowed_hosts_only",
        || journal.find(&[("TRIGGER", "drift"), ("WISH", "allowed_hosts_only")]),
        || format!("{}\n{}", daemon.log(), journal.dump()),
    );
    // Fields carry no prefix (tracing-journald's default is `F_`).
    let prefixed = journal
        .entries
        .lock()
        .unwrap()
        .iter()
        .any(|e| e.keys().any(|k| k.starts_with("F_")));
    assert!(!prefixed, "{}", journal.dump());
    assert_eq!(daemon.log(), "", "nothing on stderr in journal mode");
    daemon.assert_alive();
}

/// sd_notify messages sent to a socket standing in for systemd.
fn notify_socket(dir: &Path) -> (PathBuf, Arc<Mutex<Vec<String>>>) {
    let path = dir.join("notify");
    let sock = UnixDatagram::bind(&path).unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = sock.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            sink.lock().unwrap().extend(text.lines().map(String::from));
        }
    });
    (path, got)
}

#[test]
fn systemd_hears_ready_reloading_watchdog_and_stopping() {
    let Some(ns) = Ns::new("systemd_notify") else {
        return;
    };
    ns.restore(
        "iptables-restore",
        &["-w"],
        &spec("docker-after-reboot.save"),
    );
    let dir = tempfile::tempdir().unwrap();
    let (socket, got) = notify_socket(dir.path());
    let wishes = spec_path("wishes.yaml");
    let mut daemon = Start::new(&wishes, FAST)
        .env("NOTIFY_SOCKET", socket.display().to_string())
        .env("WATCHDOG_USEC", "400000")
        .spawn(&ns);
    let messages = || got.lock().unwrap().clone();
    let count = |m: &str| messages().iter().filter(|x| *x == m).count();
    wait_until("READY=1", || count("READY=1") == 1, || daemon.log());
    // READY=1 comes after the first reconcile, never before.
    assert_eq!(ns.rules(), normalize(&spec("after-apply.save")));
    wait_until(
        "watchdog pings",
        || count("WATCHDOG=1") >= 3,
        || daemon.log(),
    );

    daemon.signal(libc::SIGHUP);
    wait_until(
        "READY=1 after the reload",
        || count("READY=1") == 2,
        || format!("{:?}\n{}", messages(), daemon.log()),
    );
    let m = messages();
    let reloading = m
        .iter()
        .position(|x| x == "RELOADING=1")
        .expect("RELOADING=1");
    let ready_again = m.iter().rposition(|x| x == "READY=1").unwrap();
    assert!(reloading < ready_again, "{m:?}");
    assert!(
        m[reloading + 1].starts_with("MONOTONIC_USEC="),
        "RELOADING=1 carries MONOTONIC_USEC: {m:?}"
    );

    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.wait_exit(Duration::from_secs(5)).code(), Some(0));
    assert!(count("STOPPING=1") == 1, "{:?}", messages());
}

// --- netfilter events (nft) ------------------------------------------------

/// The reconciles the daemon has started so far (logged at debug).
fn runs(daemon: &Daemon) -> usize {
    daemon.log_lines_with("run for ").len()
}

/// On the nft backend a Docker restart is repaired from the kernel's change
/// notification alone: the poll is an hour away.
#[test]
fn netfilter_changes_are_repaired_without_waiting_for_the_poll() {
    let Some((ns, mut daemon)) = started("events_repair", &spec_path("wishes.yaml"), NEVER) else {
        return;
    };
    daemon.wait_log("following netfilter changes");
    replay_docker_restart(&ns, "iptables-restore");
    daemon.wait_rules(&ns, &spec("after-apply.save"), "the event-driven repair");
    daemon.wait_log("repaired (drift)");
    let log = daemon.log();
    assert!(
        log.contains("netfilter change: filter/DOCKER, filter/FORWARD changed by "),
        "the log must say what changed, and who changed it:\n{log}"
    );
    assert!(log.contains("run for netfilter"), "{log}");
    daemon.assert_alive();
}

/// pyfw's own transactions trigger nothing: after the first reconcile and
/// after an event-driven repair, an idle daemon (its poll an hour away)
/// starts no reconcile at all, and changes to chains nobody wished (nat,
/// Kubernetes' chains) do not wake it.
#[test]
fn an_idle_daemon_does_not_trigger_itself() {
    let Some((ns, mut daemon)) = started("events_idle", &spec_path("wishes.yaml"), NEVER) else {
        return;
    };
    daemon.wait_log("following netfilter changes");
    let quiet = |what: &str, expected: usize| {
        std::thread::sleep(Duration::from_secs(3));
        assert_eq!(
            runs(&daemon),
            expected,
            "{what}: no reconcile may follow\n{}",
            daemon.log()
        );
    };
    assert_eq!(runs(&daemon), 1, "the start-up run\n{}", daemon.log());
    quiet("after the start-up run", 1);

    ns.ok(&[
        "iptables",
        "-w",
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-j",
        "RETURN",
    ]);
    ns.ok(&["iptables", "-w", "-N", "KUBE-SERVICES"]);
    ns.ok(&["iptables", "-w", "-A", "KUBE-SERVICES", "-j", "RETURN"]);
    ns.ok(&[
        "iptables",
        "-w",
        "-t",
        "nat",
        "-D",
        "POSTROUTING",
        "-j",
        "RETURN",
    ]);
    ns.ok(&["iptables", "-w", "-F", "KUBE-SERVICES"]);
    ns.ok(&["iptables", "-w", "-X", "KUBE-SERVICES"]);
    quiet("after changes to chains nobody wished", 1);

    replay_docker_restart(&ns, "iptables-restore");
    daemon.wait_rules(&ns, &spec("after-apply.save"), "the event-driven repair");
    daemon.wait_log("repaired (drift)");
    let after_repair = runs(&daemon);
    assert_eq!(
        after_repair,
        2,
        "one run for the Docker restart\n{}",
        daemon.log()
    );
    quiet("after the repair", after_repair);
    daemon.assert_alive();
}

/// On nft, an idle poll reads no chain while nothing commits in the
/// namespace (the ruleset's generation stays); any commit makes the next
/// read real, so drift is still found and repaired, and then the polls
/// are quiet again.
#[test]
fn an_idle_nft_poll_reads_no_chain_until_something_commits() {
    let Some((ns, mut daemon)) = started_on("nft_reads", "1s", false) else {
        return;
    };
    let skipped = |d: &Daemon| {
        d.log_lines_with("chains unchanged since nf_tables generation")
            .len()
    };
    wait_until(
        "polls that read no chain",
        || skipped(&daemon) >= 4,
        || daemon.log(),
    );
    delete_allow_ssh(&ns);
    daemon.wait_rules(&ns, &spec("after-apply.save"), "the repair");
    daemon.wait_log("repaired (drift)");
    let after = skipped(&daemon);
    wait_until(
        "quiet polls after the repair",
        || skipped(&daemon) >= after + 2,
        || daemon.log(),
    );
    daemon.assert_alive();
}

/// pyfw's record is read once and kept between polls (only pyfw writes
/// it); one destroyed by hand is still seen and made again, by the next
/// full read within the sets' resync period (18 intervals), and at once
/// on SIGHUP.
#[test]
fn a_record_destroyed_by_hand_is_made_again() {
    let Some((ns, mut daemon)) = started_on("record_kept", "1s", false) else {
        return;
    };
    let record = |ns: &Ns| {
        ns.ok(&["ipset", "list", "-n"])
            .lines()
            .any(|l| l == "pyfw-owned")
    };
    let back = |ns: &Ns, what: &str, limit: Duration| {
        let start = Instant::now();
        while !record(ns) {
            assert!(start.elapsed() < limit, "{what}\n{}", daemon.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    assert!(record(&ns), "the first apply wrote the record");
    // Quiet polls: the record is read and kept by now.
    wait_until(
        "quiet polls",
        || daemon.log_lines_with("not read again").len() >= 2,
        || daemon.log(),
    );
    let quiet_polls = daemon.log_lines_with("run for timer").len();
    ns.ok(&["ipset", "destroy", "pyfw-owned"]);
    back(
        &ns,
        "made again within the resync period",
        Duration::from_secs(60),
    );
    assert!(
        daemon.log_lines_with("run for timer").len() > quiet_polls + 1,
        "kept between polls, not read by every one\n{}",
        daemon.log()
    );
    ns.ok(&["ipset", "destroy", "pyfw-owned"]);
    daemon.signal(libc::SIGHUP);
    back(&ns, "made again after SIGHUP", WAIT);
    daemon.assert_alive();
}

// --- whatever happens to the wishes file -----------------------------------

/// Deletes the wished `allow_ssh` rule by hand: drift to repair.
fn delete_allow_ssh(ns: &Ns) {
    ns.ok(&[
        "iptables",
        "-w",
        "-D",
        "INPUT",
        "-p",
        "tcp",
        "-m",
        "tcp",
        "--dport",
        "22",
        "-m",
        "comment",
        "--comment",
        "allow_ssh",
        "-j",
        "ACCEPT",
    ]);
}

/// The spec's wishes plus a set `small` whose last member is `0.0.0.0`:
/// valid to pyfw, refused by the kernel half-way through the set
/// (`Null-valued element, cannot be stored in a hash type of set`). (A set
/// over its `maxelem` is refused at load.)
fn wishes_with_a_null_member() -> String {
    let members: String = (1..=9).map(|i| format!("      - 10.0.0.{i}\n")).collect();
    spec("wishes.yaml").replacen(
        "  ipsets:\n",
        &format!(
            "  ipsets:\n    small:\n      type: hash:ip\n      header: family inet\n      \
             members_equal:\n{members}      - 0.0.0.0\n"
        ),
        1,
    )
}

/// The spec's wishes plus an INPUT rule with `-o`: iptables learns its form
/// in a chain of its own, then refuses it in INPUT (`Can't use -o with
/// INPUT`, exit status 2).
fn wishes_with_out_in_input() -> String {
    wishes_with("out_lo", 0).replace(
        "-p tcp -m tcp --dport 0 -m comment --comment out_lo",
        "-o lo -m comment --comment out_lo",
    )
}

/// The version of a wishes file's content that the daemon names.
fn content_hash(text: &str) -> String {
    pyfw::reconcile::confirm::content_hash(text.as_bytes())
}

/// A valid edit the kernel refuses (a set member it cannot store, a rule
/// iptables refuses only in its chain) is logged once with the file's
/// version, and the last wishes that applied stay enforced: drift is
/// repaired, the status says so, SIGHUP tries (and reports) it again, and
/// the fix is applied.
fn a_valid_edit_the_kernel_refuses_keeps_the_last_wishes_enforced(legacy: bool) {
    let test = format!("kernel_refuses[legacy={legacy}]");
    let Some(ns) = Ns::with_backend(&test, legacy) else {
        return;
    };
    ns.restore(
        "iptables-restore",
        &["-w"],
        &spec("docker-after-reboot.save"),
    );
    let dir = tempfile::tempdir().unwrap();
    let wishes = dir.path().join("wishes.yaml");
    std::fs::write(&wishes, spec("wishes.yaml")).unwrap();
    let (socket, notes) = notify_socket(dir.path());
    let mut daemon = Start::new(&wishes, FAST)
        .global(&["--backend", if legacy { "legacy" } else { "nft" }])
        .env("NOTIFY_SOCKET", socket.display().to_string())
        .spawn(&ns);
    daemon.wait_rules(&ns, &spec("after-apply.save"), "the first reconcile");
    daemon.wait_log("ready: netfilter matches");
    let good = content_hash(&spec("wishes.yaml"));
    let shown = wishes.display().to_string();

    let null = wishes_with_a_null_member();
    let out = wishes_with_out_in_input();
    for (text, wish, words) in [
        (&null, "small", "Null-valued element"),
        (&out, "out_lo", "Can't use -o with INPUT"),
    ] {
        let version = content_hash(text);
        let refusals = || daemon.log_lines_with(&format!("content {version}"));
        let errors = || {
            refusals()
                .into_iter()
                .filter(|l| l.contains("ERROR"))
                .collect::<Vec<_>>()
        };
        editor_save(&wishes, text);
        wait_until(
            &format!("an error naming version {version} of {shown}"),
            || !errors().is_empty(),
            || daemon.log(),
        );
        let error = &errors()[0];
        for needle in [
            shown.as_str(),
            wish,
            words,
            "still enforcing the last wishes that applied",
            &good,
        ] {
            assert!(
                error.contains(needle),
                "the error must name `{needle}`: {error}"
            );
        }
        // The status says which wishes are enforced, and that the new ones
        // are refused.
        wait_until(
            "a STATUS naming the refusal",
            || {
                notes
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|n| n.starts_with("STATUS=") && n.contains("refused") && n.contains(&good))
            },
            || format!("{:?}\n{}", notes.lock().unwrap(), daemon.log()),
        );
        // Enforcing: drift is repaired, polls go on, nothing more is said.
        delete_allow_ssh(&ns);
        daemon.wait_rules(&ns, &spec("after-apply.save"), "the repair");
        daemon.wait_polls(3);
        assert_eq!(errors().len(), 1, "one error:\n{}", daemon.log());
        assert!(!ns.ipsets().contains("small"), "{}", ns.ipsets());
        // SIGHUP means "try again": tried, refused, said again.
        daemon.signal(libc::SIGHUP);
        wait_until(
            "the refusal said again after SIGHUP",
            || errors().len() == 2,
            || daemon.log(),
        );
        daemon.wait_polls(2);
        assert_eq!(ns.rules(), normalize(&spec("after-apply.save")));
        daemon.assert_alive();
    }

    // Fixed: applied.
    editor_save(&wishes, &wishes_with("allow_http", 80));
    wait_until(
        "the fixed file applied",
        || ns.rules().contains("--comment allow_http"),
        || daemon.log(),
    );
    wait_until(
        "a STATUS without the refusal",
        || {
            notes
                .lock()
                .unwrap()
                .last()
                .is_some_and(|n| n.starts_with("STATUS=enforcing") && !n.contains("refused"))
        },
        || format!("{:?}\n{}", notes.lock().unwrap(), daemon.log()),
    );
    daemon.assert_alive();
}

#[test]
fn a_valid_edit_the_kernel_refuses_keeps_the_last_wishes_enforced_nft() {
    a_valid_edit_the_kernel_refuses_keeps_the_last_wishes_enforced(false);
}

#[test]
fn a_valid_edit_the_kernel_refuses_keeps_the_last_wishes_enforced_legacy() {
    a_valid_edit_the_kernel_refuses_keeps_the_last_wishes_enforced(true);
}

/// A file written in place slowly (its first half, a pause longer than the
/// debounce and several polls, the rest) is read only once it is closed:
/// the wishes missing from the first half are never withdrawn.
#[test]
fn a_slow_in_place_write_withdraws_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let wishes = dir.path().join("wishes.yaml");
    std::fs::write(&wishes, spec("wishes.yaml")).unwrap();
    let Some((ns, mut daemon)) = started("slow_write", &wishes, FAST) else {
        return;
    };
    let full = wishes_with("allow_http", 80);
    let (first, rest) = full.split_at(full.find("      FORWARD:").unwrap());
    // The first half alone is valid and would withdraw FORWARD's and
    // DOCKER's wishes: otherwise this test proves nothing.
    let half = dir.path().join("half.yaml");
    std::fs::write(&half, first).unwrap();
    let plan = ns.run(&[PYFW, "--wishes", half.to_str().unwrap(), "plan"]);
    let said = String::from_utf8_lossy(&plan.stdout);
    assert!(
        said.contains("allow_established") && said.contains("allowed_hosts_only"),
        "the first half must withdraw wishes:\n{said}{}",
        String::from_utf8_lossy(&plan.stderr)
    );

    let wished = [
        "--comment allow_established",
        "--comment allowed_hosts_only",
    ];
    let done = std::sync::atomic::AtomicBool::new(false);
    let missing = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut missing = Vec::new();
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let rules = ns.rules();
                for w in wished {
                    if !rules.contains(w) {
                        missing.push(rules.clone());
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            missing
        });
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&wishes)
            .unwrap();
        file.write_all(first.as_bytes()).unwrap();
        // Longer than the debounce (200 ms, at most 2 s) and several polls.
        std::thread::sleep(Duration::from_millis(2500));
        file.write_all(rest.as_bytes()).unwrap();
        drop(file);
        wait_until(
            "the complete file applied",
            || ns.rules().contains("--comment allow_http"),
            || daemon.log(),
        );
        daemon.wait_polls(2);
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        sampler.join().unwrap()
    });
    assert!(
        missing.is_empty(),
        "wishes were withdrawn while the file was written:\n{}\n--- daemon log ---\n{}",
        missing[0],
        daemon.log()
    );
    assert_eq!(
        daemon.log_lines_with("changed: read").len(),
        1,
        "only the finished file is read:\n{}",
        daemon.log()
    );
    daemon.assert_alive();
}

/// Makes a FIFO at `path`.
fn mkfifo(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: mkfifo(3) with a NUL-terminated path.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o644) };
    assert_eq!(rc, 0, "mkfifo {}", path.display());
}

/// A FIFO in place of the wishes file: refused once, clearly; drift is
/// still repaired, SIGHUP still answered, and a regular file put back is
/// applied.
#[test]
fn a_fifo_at_the_wishes_path_is_refused_and_enforcement_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let wishes = dir.path().join("wishes.yaml");
    std::fs::write(&wishes, spec("wishes.yaml")).unwrap();
    let Some((ns, mut daemon)) = started("fifo", &wishes, FAST) else {
        return;
    };
    let refused = format!(
        "{}: cannot read: not a regular file (a FIFO); pyfw reads wishes only from regular \
         files",
        wishes.display()
    );
    let refusals = || daemon.log_lines_with(&refused).len();
    std::fs::remove_file(&wishes).unwrap();
    mkfifo(&wishes);
    wait_until("the FIFO refused", || refusals() == 1, || daemon.log());
    daemon.wait_polls(3);
    assert_eq!(refusals(), 1, "said once:\n{}", daemon.log());

    delete_allow_ssh(&ns);
    daemon.wait_rules(&ns, &spec("after-apply.save"), "the repair");

    daemon.signal(libc::SIGHUP);
    wait_until(
        "SIGHUP answered with a read",
        || refusals() == 2,
        || daemon.log(),
    );
    daemon.wait_log("SIGHUP: re-reading");
    daemon.wait_polls(1);

    // A regular file again (renamed over the FIFO): applied.
    editor_save(&wishes, &wishes_with("allow_http", 80));
    wait_until(
        "allow_http applied",
        || ns.rules().contains("--comment allow_http"),
        || daemon.log(),
    );
    daemon.assert_alive();
}

/// A valid edit with two wishes the kernel refuses (DNAT in filter, and
/// MASQUERADE in PREROUTING, which only a hooked chain refuses): one error
/// line for each, with the file, the line and the wish in words, and none
/// naming pyfw's scratch chain or a restore-input line; nothing changes,
/// and the last good wishes stay enforced.
#[test]
fn each_wish_of_a_refused_edit_is_logged_with_its_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let wishes = dir.path().join("wishes.yaml");
    std::fs::write(&wishes, spec("wishes.yaml")).unwrap();
    let Some((ns, mut daemon)) = started("refused_edit_lines", &wishes, FAST) else {
        return;
    };
    let good = spec("after-apply.save");
    let text = wishes_with("dnat_here", 80).replace(
        "-p tcp -m tcp --dport 80 -m comment --comment dnat_here -j ACCEPT",
        "-p tcp --dport 80 -j DNAT --to-destination 10.0.0.1",
    ) + "    nat:\n      PREROUTING:\n        rules:\n        \
         - masquerade_early: -p tcp --dport 82 -j MASQUERADE\n";
    let shown = wishes.display().to_string();
    let mark = daemon.log().len();
    editor_save(&wishes, &text);
    let errors = || {
        daemon.log()[mark..]
            .lines()
            .filter(|l| l.contains("ERROR"))
            .map(String::from)
            .collect::<Vec<_>>()
    };
    wait_until("two errors", || errors().len() >= 2, || daemon.log());
    for (needle, label, words) in [
        (
            "dnat_here",
            "filter/INPUT/dnat_here",
            "`-j DNAT` belongs in the nat table",
        ),
        (
            "masquerade_early",
            "nat/PREROUTING/masquerade_early",
            "`-j MASQUERADE` belongs in nat/POSTROUTING",
        ),
    ] {
        let at = format!("{shown}:{}: {label}: ", line_of(&text, needle));
        let line = errors()
            .into_iter()
            .find(|l| l.contains(&at))
            .unwrap_or_else(|| panic!("no error names `{at}`\n{}", daemon.log()));
        assert!(line.contains(words), "{line}");
        assert!(
            line.contains("still enforcing the last wishes that applied"),
            "{line}"
        );
    }
    daemon.wait_polls(2);
    let errors = errors();
    assert_eq!(errors.len(), 2, "one line per refused wish:\n{errors:#?}");
    for e in &errors {
        assert!(!e.contains("_pyfw_") && !e.contains("line 3"), "{e}");
    }
    assert_eq!(ns.rules(), normalize(&good), "nothing changed");
    daemon.assert_alive();
}

/// The spec's wishes with an unreferenced set `blocked` of three networks.
fn wishes_with_blocked() -> String {
    spec("wishes.yaml").replacen(
        "  ipsets:\n",
        "  ipsets:\n    blocked:\n      type: hash:net\n      members_equal:\n      \
         - 192.0.2.0/24\n      - 198.51.100.0/24\n      - 203.0.113.0/24\n",
        1,
    )
}

/// The members of set `name`, sorted (empty when it does not exist).
fn members_of(ns: &Ns, name: &str) -> Vec<String> {
    let prefix = format!("add {name} ");
    let mut members: Vec<String> = (ns.ipsets().lines())
        .filter_map(|l| l.strip_prefix(&prefix).map(String::from))
        .collect();
    members.sort();
    members
}

/// `Size in memory` of set `name`, as `ipset list -terse` says it.
fn set_memory(ns: &Ns, name: &str) -> String {
    let out = ns.ok(&["ipset", "list", "-terse", name]);
    let line = out.lines().find(|l| l.starts_with("Size in memory:"));
    line.unwrap_or_default().to_string()
}

/// What the seconds of the last "full resync in ..." the daemon logged
/// for set `name` say (humantime: `1m 30s`, `54s`).
fn resync_in(daemon: &Daemon, name: &str) -> Duration {
    let needle = format!("ipset {name}: unchanged since its last full read");
    let lines = daemon.log_lines_with(&needle);
    let last = lines.last().expect("a poll that trusted the set");
    let text = last.rsplit("full resync in ").next().unwrap_or_default();
    let text = text
        .split_whitespace()
        .take_while(|w| w.ends_with(['s', 'm', 'h']));
    humantime::parse_duration(&text.collect::<Vec<_>>().join(" ")).expect("a duration")
}

/// The spot check's test of a member against the real `ipset`: there,
/// missing, the set gone, an element the set's type does not take (a set
/// made again with another type), or wished `nomatch`.
#[test]
fn ipset_test_says_whether_a_set_holds_an_element() {
    let Some(ns) = Ns::new("ipset_test") else {
        return;
    };
    ns.ok(&["ipset", "create", "nets", "hash:net", "family", "inet"]);
    ns.ok(&["ipset", "add", "nets", "192.0.2.0/24"]);
    let holds = |set: &str, element: &str| {
        let (set, element) = (set.to_string(), element.to_string());
        ns.inner.within(move || {
            pyfw::kernel::System::default()
                .ipset_test(&set, &element)
                .unwrap_or_else(|e| panic!("ipset test {set} {element}: {e}"))
        })
    };
    assert!(holds("nets", "192.0.2.0/24"));
    assert!(!holds("nets", "198.51.100.0/24"));
    assert!(!holds("gone", "192.0.2.0/24"));
    assert!(!holds("nets", "192.0.2.1,tcp:80"));
    // A `nomatch` member tests as missing: spot checks never pick one.
    ns.ok(&["ipset", "add", "nets", "10.0.0.0/8"]);
    ns.ok(&["ipset", "add", "nets", "10.1.0.0/16", "nomatch"]);
    assert!(holds("nets", "10.0.0.0/8"));
    assert!(!holds("nets", "10.1.0.0/16"));
    ns.ok(&["ipset", "flush", "nets"]);
    assert!(!holds("nets", "192.0.2.0/24"));
}

/// Each poll checks a wished set by its summary (`ipset list -terse`), not
/// its members, or, between summaries (at most 0.1% of a core of them),
/// by testing two of its wished members: a set emptied, destroyed, or made
/// again (even with as many members) is seen by the next poll, which reads
/// it in full and repairs it (the log says what moved); a member swapped
/// for another (the count and size unchanged) is seen by a test that picks
/// it or by the full resync, which the daemon says when it comes. Between,
/// the members are not read.
#[test]
fn a_set_is_checked_each_poll_by_its_summary_and_resynced_in_full() {
    let Some(ns) = Ns::new("set_checks") else {
        return;
    };
    ns.restore(
        "iptables-restore",
        &["-w"],
        &spec("docker-after-reboot.save"),
    );
    let dir = tempfile::tempdir().unwrap();
    let wishes = dir.path().join("wishes.yaml");
    std::fs::write(&wishes, wishes_with_blocked()).unwrap();
    let daemon = Daemon::start(&ns, &wishes, FAST);
    daemon.wait_log("ready: netfilter matches");
    let wished = ["192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"].map(String::from);
    let trusted_polls = || {
        daemon
            .log_lines_with("ipset blocked: unchanged since its last full read")
            .len()
    };
    // A poll after the last change that trusted the set by its summary.
    let wait_trusted = || {
        let n = trusted_polls();
        wait_until(
            "a poll that trusts `blocked` by its summary",
            || trusted_polls() > n,
            || daemon.log(),
        );
    };
    let wait_repaired = |what: &str, within: Duration| {
        let start = Instant::now();
        while members_of(&ns, "blocked") != wished {
            assert!(
                start.elapsed() < within,
                "{what}: not repaired within {within:?}\n{}",
                daemon.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let said = |needle: &str| {
        assert!(
            daemon.log().contains(needle),
            "the log does not say `{needle}`:\n{}",
            daemon.log()
        );
    };
    wait_trusted();

    ns.ok(&["ipset", "flush", "blocked"]);
    wait_repaired("emptied", WAIT);
    said("ipset blocked: 0 members now, 3 before since it was read: reading it in full");
    wait_trusted();

    ns.ok(&["ipset", "destroy", "blocked"]);
    wait_repaired("destroyed", WAIT);
    said("ipset blocked: it is gone since it was read: reading it in full");
    wait_trusted();

    // Made again by another program, as many members, one of them other.
    ns.ok(&["ipset", "destroy", "blocked"]);
    ns.ok(&["ipset", "create", "blocked", "hash:net", "family", "inet"]);
    for m in ["192.0.2.0/24", "198.51.99.0/24", "203.0.113.0/24"] {
        ns.ok(&["ipset", "add", "blocked", m]);
    }
    wait_repaired("made again", WAIT);
    said("ipset blocked: it is `hash:net family inet");
    wait_trusted();

    // A member swapped for another: the summary stays as it was, and a
    // spot check or the full resync finds it.
    let resyncs = || daemon.log_lines_with("ipset blocked: full resync").len();
    let spotted = || {
        (daemon.log_lines_with("ipset blocked: a wished member, 198.51.100.0/24, is not in it"))
            .len()
    };
    let spotted_before = spotted();
    let (before, memory) = (resyncs(), set_memory(&ns, "blocked"));
    let halfway = || daemon.log_lines_with("ipset blocked: 2 members now").len();
    let halfway_before = halfway();
    let due = resync_in(&daemon, "blocked");
    ns.restore(
        "ipset",
        &["restore"],
        "del blocked 198.51.100.0/24\nadd blocked 198.51.101.0/24\n",
    );
    let unchanged = set_memory(&ns, "blocked") == memory;
    wait_repaired("swapped", due + WAIT);
    // (Unless a poll fell between the two lines of the swap, or the size
    // in memory moved: then the summary found it.)
    if unchanged && halfway() == halfway_before {
        assert!(
            resyncs() > before || spotted() > spotted_before,
            "the swap was found by a spot check or the full resync:\n{}",
            daemon.log()
        );
    }
}
