//! Anyone can stop it? No (issue 16, section 3).
//!
//! - pyfw's locks, and the socket `pyfw confirm` talks to, are files in a
//!   root-only run directory (`/run/pyfw`, or `PYFW_RUN_DIR`), not abstract
//!   Unix sockets that any user of the network namespace may bind: an
//!   unprivileged squatter on the old names (`@pyfw-daemon`, `@pyfw-lock`,
//!   `@pyfw-confirm`) stops nothing, and cannot create or lock a file in
//!   the run directory.
//! - The default run directory is made mode 0700; a run directory that
//!   another user could write, or a symbolic link, is refused, naming the
//!   fix.
//! - Text pyfw did not write (a tool's stderr, the name of the process
//!   that changed netfilter) reaches errors and the log on one line, its
//!   control characters escaped: no forged log line, no terminal escape.
//!
//! The locks do not depend on the iptables backend, so these tests run on
//! the nft one only. They need root (see `tests/common/mod.rs`).

use crate::common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{Backend, Netns, Out, PYFW, assert_rules_eq, run_command, spec, spec_path};
use wait_timeout::ChildExt;

/// How long to wait for what must happen (a bound, not a speed promise).
const WAIT: Duration = Duration::from_secs(60);

/// Runs the rest of an argv as `nobody`, with no groups.
const NOBODY: &[&str] = &[
    "setpriv",
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
    "--",
];

/// The names the locks used to be: abstract sockets anyone could bind.
const OLD_NAMES: &[&str] = &["pyfw-daemon", "pyfw-lock", "pyfw-confirm"];

/// The text a hostile tool prints: a line break that would start a forged
/// log line, and a terminal escape.
const EVIL: &str = "evil\n2026-01-01 INFO fake line\x1b[31m";
/// [`EVIL`] as it must show: on one line, escaped.
const EVIL_ESCAPED: &str = "evil\\n2026-01-01 INFO fake line\\x1b[31m";

fn arg(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

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

/// A run directory of this test's own: a root-owned tempdir, mode 0700.
fn run_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    chmod(dir.path(), 0o700);
    dir
}

/// `pyfw ARGS` in `ns` with `PYFW_RUN_DIR=run`.
fn pyfw(ns: &Netns, run: &Path, args: &[&str]) -> Command {
    let mut argv = vec![PYFW];
    argv.extend_from_slice(args);
    let mut cmd = ns.command_for(&argv);
    cmd.env("PYFW_RUN_DIR", run);
    cmd
}

fn output_of(cmd: Command, what: &str) -> Out {
    run_command(cmd, vec![what.to_string()], None)
}

/// pyfw in the background, what it prints collected as it comes.
struct Running {
    child: Child,
    out: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

impl Running {
    fn spawn(mut cmd: Command) -> Running {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn pyfw");
        let out = Arc::new(Mutex::new(String::new()));
        let readers = vec![
            common::collect(child.stdout.take().unwrap(), &out),
            common::collect(child.stderr.take().unwrap(), &out),
        ];
        Running {
            child,
            out,
            readers,
        }
    }

    fn output(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    #[track_caller]
    fn wait_for(&mut self, needle: &str) {
        let start = Instant::now();
        while !self.output().contains(needle) {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.join();
                panic!("exited ({status}) before `{needle}`:\n{}", self.output());
            }
            assert!(
                start.elapsed() < WAIT,
                "`{needle}` not printed within {WAIT:?}:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    #[track_caller]
    fn assert_alive(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            self.join();
            panic!("exited ({status}):\n{}", self.output());
        }
    }

    /// Waits for the exit (killing it after [`WAIT`]).
    #[track_caller]
    fn finish(mut self) -> (ExitStatus, String) {
        match self.child.wait_timeout(WAIT).unwrap() {
            Some(status) => {
                self.join();
                (status, self.output())
            }
            None => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("did not exit within {WAIT:?}:\n{}", self.output());
            }
        }
    }

    fn join(&mut self) {
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `nobody` listening on every old lock name of `ns`, until dropped.
struct Squatters(Vec<Child>);

impl Squatters {
    fn start(ns: &Netns) -> Squatters {
        let mut children = Vec::new();
        for name in OLD_NAMES {
            let mut argv = NOBODY.to_vec();
            let listen = format!("ABSTRACT-LISTEN:{name},fork");
            argv.extend(["socat", &listen, "EXEC:true"]);
            children.push(
                ns.command_for(&argv)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("socat"),
            );
        }
        let squatters = Squatters(children);
        wait_until(
            "nobody to hold every old lock name",
            || squatters.listening(ns),
            || ns.run(&["ss", "-xlpH"]).stdout,
        );
        squatters.assert_nobody();
        squatters
    }

    fn listening(&self, ns: &Netns) -> bool {
        let listening = ns.run(&["ss", "-xlH"]).stdout;
        OLD_NAMES
            .iter()
            .all(|name| listening.contains(&format!("@{name} ")))
    }

    /// Each squatter is still there and runs as uid 65534 (`ip netns exec`
    /// and setpriv exec: the child's pid is socat's).
    #[track_caller]
    fn assert_nobody(&self) {
        for child in &self.0 {
            let status = std::fs::read_to_string(format!("/proc/{}/status", child.id()))
                .unwrap_or_else(|e| panic!("squatter {} is gone: {e}", child.id()));
            let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
            assert_eq!(
                uid.split_whitespace().collect::<Vec<_>>(),
                ["Uid:", "65534", "65534", "65534", "65534"],
                "the squatter must be unprivileged"
            );
        }
    }
}

impl Drop for Squatters {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// An unprivileged user of the namespace squats every name pyfw used as a
/// lock, and tries to create and lock files in the run directory: the
/// confirm flow, a daemon and a plain apply all work as if nobody were
/// there, and the squatter's every try at the run directory is refused.
#[test]
fn an_unprivileged_squatter_stops_nothing() {
    let Some(ns) = Netns::new("squatter", Backend::Nft) else {
        return;
    };
    let dir = run_dir();
    let run = dir.path();
    let wishes = spec_path("wishes.yaml");
    ns.iptables_restore(&spec("docker-after-reboot.save"));
    let squatters = Squatters::start(&ns);

    // apply --confirm, then `pyfw confirm`: nobody may not confirm, root may.
    let mut apply = Running::spawn(pyfw(
        &ns,
        run,
        &["--wishes", arg(&wishes), "apply", "--confirm", "5min"],
    ));
    apply.wait_for("Keep this change?");
    let mut argv = NOBODY.to_vec();
    argv.extend([PYFW, "confirm"]);
    let mut as_nobody = ns.command_for(&argv);
    as_nobody.env("PYFW_RUN_DIR", run);
    let refused = output_of(as_nobody, "pyfw confirm as nobody");
    assert_eq!(
        refused.code(),
        Some(1),
        "nobody must not confirm\n{refused}"
    );
    assert!(
        refused
            .stderr
            .contains("only root (or the user running the apply) may confirm"),
        "{refused}"
    );
    apply.assert_alive();
    let confirm = output_of(pyfw(&ns, run, &["confirm"]), "pyfw confirm");
    confirm.expect_ok("root confirms");
    let (status, out) = apply.finish();
    assert!(status.success(), "the confirmed apply: {status}\n{out}");
    assert!(out.contains("Confirmed by `pyfw confirm`"), "{out}");
    assert_rules_eq(
        &ns.iptables_save(),
        &spec("after-apply.save"),
        "a confirmed apply",
    );

    // A daemon starts and applies every wish.
    ns.iptables_restore(&spec("docker-after-reboot.save"));
    let mut daemon = Running::spawn(pyfw(
        &ns,
        run,
        &["--wishes", arg(&wishes), "daemon", "--interval", "1h"],
    ));
    daemon.wait_for("ready: netfilter matches");
    assert_rules_eq(
        &ns.iptables_save(),
        &spec("after-apply.save"),
        "the daemon's first reconcile",
    );
    // A one-shot apply takes its turn beside it.
    output_of(
        pyfw(&ns, run, &["--wishes", arg(&wishes), "apply"]),
        "apply",
    )
    .expect_ok("apply beside the daemon");
    daemon.assert_alive();

    // The run directory: nobody can create a file there, nor open (so
    // nor lock) the lock files the daemon holds.
    let mut files: Vec<PathBuf> = std::fs::read_dir(run)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(
        files.iter().any(|f| arg(f).ends_with(".lock")),
        "the locks are files in the run directory: {files:?}"
    );
    files.push(run.join("squatted.lock"));
    for file in &files {
        let mut argv = NOBODY.to_vec();
        argv.extend(["flock", "--nonblock", "--exclusive", arg(file), "true"]);
        let out = ns.run(&argv);
        assert_ne!(
            out.code(),
            Some(0),
            "nobody locked {}\n{out}",
            file.display()
        );
        assert!(out.stderr.contains("Permission denied"), "{out}");
    }
    assert!(!run.join("squatted.lock").exists());
    daemon.assert_alive();
    // The squatters held the old names all along.
    assert!(squatters.listening(&ns), "a squatter let go");
    squatters.assert_nobody();
}

/// Without `PYFW_RUN_DIR`, the run directory is `/run/pyfw`, made mode
/// 0700 when missing, its lock files mode 0600; an existing root-owned
/// 0755 one (systemd's `RuntimeDirectory=` default mode, or an older pyfw)
/// is used as it is. Each case runs with a fresh tmpfs on `/run` in a
/// private mount namespace, so the host's `/run/pyfw` is not touched.
#[test]
fn the_default_run_directory_is_made_root_only() {
    let Some(ns) = Netns::new("default_run_dir", Backend::Nft) else {
        return;
    };
    let wishes = spec_path("wishes.yaml");
    let on_fresh_run = |setup: &str| {
        let script = format!(
            "mount -t tmpfs -o mode=0755 pyfw-test-run /run && {setup} \"$@\" && \
             stat -c 'dir %a %u %F' /run/pyfw && stat -c 'file %a %u %F %n' /run/pyfw/*"
        );
        let mut cmd = ns.command_for(&[
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
            "sh",
            PYFW,
            "--wishes",
            arg(&wishes),
            "apply",
        ]);
        cmd.env_remove("PYFW_RUN_DIR");
        output_of(cmd, &format!("pyfw apply on a fresh /run ({setup})"))
    };
    let out = on_fresh_run("");
    out.expect_ok("apply with the default run directory");
    assert!(
        out.stdout.contains("dir 700 0 directory\n"),
        "/run/pyfw is made 0700, owned by root\n{out}"
    );
    let files: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("file "))
        .collect();
    assert!(
        files.iter().any(|l| l.ends_with(".lock")),
        "the writer lock is a file in /run/pyfw\n{out}"
    );
    for line in &files {
        assert!(
            line.starts_with("file 600 0 regular"),
            "lock files are 0600, root's: {line}\n{out}"
        );
    }

    let out = on_fresh_run("mkdir -m 0755 /run/pyfw &&");
    out.expect_ok("apply with a root-owned 0755 /run/pyfw");
    assert!(out.stdout.contains("dir 755 0 directory\n"), "{out}");
}

/// A run directory another user could write (or take: owned by them, or a
/// symbolic link to wherever) would let them take pyfw's locks: the
/// daemon, `apply` and `confirm` refuse it, name it and say how to fix it,
/// and nothing changes.
#[test]
fn an_unsafe_run_directory_is_refused_naming_the_fix() {
    let Some(ns) = Netns::new("unsafe_run_dir", Backend::Nft) else {
        return;
    };
    let wishes = spec_path("wishes.yaml");
    let before = ns.iptables_save();
    let root = run_dir();
    let good = root.path().join("good");
    std::fs::create_dir(&good).unwrap();
    chmod(&good, 0o700);
    let cases: Vec<(&str, PathBuf, &[&str])> = vec![
        (
            "mode 0777",
            root.path().join("world"),
            &["writable by", "chmod 0700"],
        ),
        (
            "mode 1777",
            root.path().join("sticky"),
            &["writable by", "chmod 0700"],
        ),
        (
            "mode 0770",
            root.path().join("group"),
            &["writable by", "chmod 0700"],
        ),
        (
            "owned by nobody",
            root.path().join("nobody"),
            &["owned by uid 65534", "chown"],
        ),
        (
            "a symlink",
            root.path().join("link"),
            &["symbolic link", "rm "],
        ),
    ];
    for (what, dir, _) in &cases {
        match *what {
            "a symlink" => std::os::unix::fs::symlink(&good, dir).unwrap(),
            _ => std::fs::create_dir(dir).unwrap(),
        }
        match *what {
            "mode 0777" => chmod(dir, 0o777),
            "mode 1777" => chmod(dir, 0o1777),
            "mode 0770" => chmod(dir, 0o770),
            "owned by nobody" => {
                chmod(dir, 0o700);
                std::os::unix::fs::chown(dir, Some(65534), Some(65534)).unwrap();
            }
            _ => {}
        }
    }
    for (what, dir, needles) in &cases {
        let check = |out: &str, command: &str| {
            assert!(
                out.contains(arg(dir)) && needles.iter().all(|n| out.contains(n)),
                "{what}: `{command}` must name {} and the fix ({needles:?}):\n{out}",
                dir.display()
            );
        };
        let daemon = Running::spawn(pyfw(
            &ns,
            dir,
            &["--wishes", arg(&wishes), "daemon", "--interval", "1h"],
        ));
        let (status, out) = daemon.finish();
        assert_eq!(
            status.code(),
            Some(1),
            "{what}: the daemon must not start\n{out}"
        );
        check(&out, "pyfw daemon");
        let out = output_of(
            pyfw(&ns, dir, &["--wishes", arg(&wishes), "apply"]),
            "apply",
        );
        assert_eq!(out.code(), Some(1), "{what}\n{out}");
        check(&out.stderr, "pyfw apply");
        let out = output_of(pyfw(&ns, dir, &["confirm"]), "confirm");
        assert_eq!(out.code(), Some(1), "{what}\n{out}");
        check(&out.stderr, "pyfw confirm");
        assert_eq!(ns.iptables_save(), before, "{what}: nothing may change");
    }
}

/// Fake `*tables-restore` tools that fail printing [`EVIL`] on stderr;
/// anything else they are asked (a version probe) goes to the real tool.
fn evil_restore() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    chmod(dir.path(), 0o755);
    let script = dir.path().join("evil-restore");
    std::fs::write(
        &script,
        "#!/bin/sh\ncase \"$*\" in *--version*|*-V*) PATH=${PATH#*:}; exec \"${0##*/}\" \"$@\" ;; \
         esac\nprintf 'evil\\n2026-01-01 INFO fake line\\033[31m\\n' >&2\nexit 2\n",
    )
    .unwrap();
    chmod(&script, 0o755);
    for family in ["iptables", "ip6tables"] {
        for variant in ["", "-nft", "-legacy"] {
            let tool = dir.path().join(format!("{family}{variant}-restore"));
            std::os::unix::fs::symlink(&script, tool).unwrap();
        }
    }
    dir
}

/// `cmd` with `bin` first on its `PATH` inside the namespace.
fn with_first_on_path(mut cmd: Command, bin: &Path) -> Command {
    let path = cmd
        .get_envs()
        .find(|(k, _)| *k == "PATH")
        .and_then(|(_, v)| v.map(|v| v.to_string_lossy().into_owned()))
        .unwrap_or_default();
    cmd.env("PATH", format!("{}:{path}", bin.display()));
    cmd
}

/// Asserts `text` shows [`EVIL`] escaped on one line, and never raw.
#[track_caller]
fn assert_escaped(text: &str, what: &str) {
    assert!(
        text.contains(EVIL_ESCAPED),
        "{what}: the tool's words must show, escaped\n{text}"
    );
    assert!(!text.contains(EVIL), "{what}: raw\n{text}");
    assert!(!text.contains('\x1b'), "{what}: a raw ESC\n{text:?}");
    assert!(
        !text.lines().any(|l| l.starts_with("2026-01-01")),
        "{what}: a forged log line\n{text}"
    );
}

/// A kernel tool's stderr is text pyfw did not write: the apply's error
/// and the daemon's log show it on one line, escaped.
#[test]
fn a_tools_words_are_escaped_in_errors_and_the_log() {
    let Some(ns) = Netns::new("tool_words", Backend::Nft) else {
        return;
    };
    let run_dir = run_dir();
    let run_dir = run_dir.path();
    let bin = evil_restore();
    let wishes = spec_path("wishes.yaml");
    let apply = with_first_on_path(
        pyfw(&ns, run_dir, &["--wishes", arg(&wishes), "apply"]),
        bin.path(),
    );
    let out = output_of(apply, "apply with an evil iptables-restore");
    assert_eq!(out.code(), Some(1), "{out}");
    assert_escaped(&out.stderr, "the apply's error");

    let mut daemon = Running::spawn(with_first_on_path(
        pyfw(
            &ns,
            run_dir,
            &["--wishes", arg(&wishes), "daemon", "--interval", "1h"],
        ),
        bin.path(),
    ));
    // At its first start, a daemon whose wishes the tools refuse has no
    // earlier wishes to fall back to and exits (docs/daemon.md); what it
    // logged on the way is the point here.
    daemon.wait_for("fake line");
    // The whole line, not half of it.
    std::thread::sleep(Duration::from_millis(200));
    assert_escaped(&daemon.output(), "the daemon's log");
}

/// Any process may name itself: the name the kernel reports for a change
/// to a wished chain reaches the daemon's log escaped.
#[test]
fn a_process_name_in_a_change_event_is_escaped() {
    let Some(ns) = Netns::new("event_name", Backend::Nft) else {
        return;
    };
    let run_dir = run_dir();
    let wishes = spec_path("wishes.yaml");
    let mut daemon = Running::spawn({
        let mut cmd = pyfw(
            &ns,
            run_dir.path(),
            &["--wishes", arg(&wishes), "daemon", "--interval", "1h"],
        );
        cmd.env("PYFW_LOG", "debug");
        cmd
    });
    daemon.wait_for("ready: netfilter matches");
    // The kernel names a process after the file it executed: a link to
    // iptables' multi-call binary, named with a line break and an escape,
    // adds a rule to INPUT.
    let names = tempfile::tempdir().unwrap();
    let evil = names.path().join("evil\n\x1b[31m");
    std::os::unix::fs::symlink("/usr/sbin/xtables-nft-multi", &evil).unwrap();
    ns.run(&[
        arg(&evil),
        "iptables",
        "-w",
        "-A",
        "INPUT",
        "-p",
        "tcp",
        "--dport",
        "4444",
        "-j",
        "ACCEPT",
    ])
    .expect_ok("iptables under an evil name");
    daemon.wait_for("filter/INPUT changed by");
    daemon.wait_for("(pid ");
    std::thread::sleep(Duration::from_millis(200));
    let log = daemon.output();
    assert!(
        log.contains("filter/INPUT changed by evil\\n\\x1b[31m (pid "),
        "the name, escaped\n{log}"
    );
    assert!(!log.contains('\x1b'), "a raw ESC\n{log:?}");
    assert!(
        !log.lines()
            .any(|l| l.starts_with("[31m") || l.starts_with("\\x1b[31m")),
        "a line break from the name\n{log}"
    );
}
