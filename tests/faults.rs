//! Fault injection: what pyfw does when the kernel tools misbehave.
//!
//! Each test runs pyfw in its own network namespace with fake `iptables*`
//! and `ipset` first on `PATH`: shell scripts (test code; pyfw never runs a
//! shell) that pass every call through to the real tool unless a control
//! file says to fail the k-th call, hang, or print what no parser reads.
//! Other faults are real: the xtables lock held with flock(1), the tools
//! missing from `PATH`, and no CAP_NET_ADMIN (setpriv(1)).
//!
//! In each case: a clear error that names the cause; nothing half-applied
//! (the state afterwards is the state before, byte for byte, or the whole
//! change); the one-shot CLI exits non-zero; and the daemon keeps running,
//! retries with backoff and converges once the fault is gone.

#[macro_use]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Backend, Netns, Out, PYFW, assert_text_eq, run_command, spec, spec_path};

on_both_backends!(
    a_failure_at_any_step_leaves_nothing_half_applied,
    a_hanging_tool_times_out_and_changes_nothing,
    output_that_cannot_be_parsed_is_an_error,
    a_read_that_prints_nothing_is_an_error_not_an_empty_state,
);

/// The tools the fakes stand in for.
const TOOLS: &[&str] = &[
    "iptables",
    "iptables-save",
    "iptables-restore",
    "ip6tables",
    "ip6tables-save",
    "ip6tables-restore",
    "iptables-nft",
    "iptables-nft-save",
    "iptables-nft-restore",
    "ip6tables-nft",
    "ip6tables-nft-save",
    "ip6tables-nft-restore",
    "iptables-legacy",
    "iptables-legacy-save",
    "iptables-legacy-restore",
    "ip6tables-legacy",
    "ip6tables-legacy-save",
    "ip6tables-legacy-restore",
    "ipset",
];

/// The fake: counts its calls in `$CTL/TOOL.count`, then does what
/// `$CTL/TOOL.mode` says, else runs the real tool (the next on `PATH`).
const FAKE: &str = r#"#!/bin/sh
tool=${0##*/}
ctl=${PYFW_FAKE_CTL:?}
# Version probes pass through uncounted: faults are for real work.
case "$*" in --version|-V) PATH=${PATH#*:}; exec "$tool" "$@" ;; esac
n=$(( $(cat "$ctl/$tool.count" 2>/dev/null || echo 0) + 1 ))
echo "$n" > "$ctl/$tool.count"
mode=$(cat "$ctl/$tool.mode" 2>/dev/null || echo pass)
case "$mode" in
fail) echo "fake $tool: injected failure (call $n)" >&2; exit 4 ;;
fail-at-*) if [ "$n" -eq "${mode#fail-at-}" ]; then
        echo "fake $tool: injected failure at call $n" >&2; exit 4; fi ;;
hang) exec sleep 600 ;;
garbage) case "$tool $*" in
    *-save*|*" -S"*|"ipset save"*) echo "this is not what $tool prints"; exit 0 ;; esac ;;
empty) case "$tool $*" in
    *-save*|*" -S"*|"ipset save"*) exit 0 ;; esac ;;
esac
PATH=${PATH#*:}
exec "$tool" "$@"
"#;

/// Fake tools for one test, and their control directory.
struct Fakes {
    dir: tempfile::TempDir,
    ctl: PathBuf,
}

impl Fakes {
    fn new() -> Fakes {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        let ctl = dir.path().join("ctl");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&ctl).unwrap();
        let script = bin.join("fake");
        std::fs::write(&script, FAKE).unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        for tool in TOOLS {
            std::os::unix::fs::symlink(&script, bin.join(tool)).unwrap();
        }
        Fakes { dir, ctl }
    }

    fn bin(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    /// Sets `tool`'s behaviour (`pass`, `fail`, `fail-at-K`, `hang`,
    /// `garbage`, `empty`: a read that prints nothing and exits 0) and
    /// resets its count.
    fn set(&self, tool: &str, mode: &str) {
        std::fs::write(self.ctl.join(format!("{tool}.mode")), mode).unwrap();
        let _ = std::fs::remove_file(self.ctl.join(format!("{tool}.count")));
    }

    fn set_all(&self, mode: &str) {
        for tool in TOOLS {
            self.set(tool, mode);
        }
    }

    fn calls(&self, tool: &str) -> usize {
        std::fs::read_to_string(self.ctl.join(format!("{tool}.count")))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// A command that runs argv in `ns` with the fakes first on `PATH`.
    fn command(&self, ns: &Netns, argv: &[&str], env: &[(&str, &str)]) -> Command {
        let mut cmd = ns.command_for(argv);
        let path = cmd
            .get_envs()
            .find(|(k, _)| *k == "PATH")
            .and_then(|(_, v)| v.map(|v| v.to_string_lossy().into_owned()))
            .unwrap_or_default();
        // `ip` itself must still be found: the new PATH only matters inside.
        cmd.env("PATH", format!("{}:{path}", self.bin().display()))
            .env("PYFW_FAKE_CTL", &self.ctl);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }

    fn run(&self, ns: &Netns, argv: &[&str], env: &[(&str, &str)]) -> Out {
        let cmd = self.command(ns, argv, env);
        run_command(cmd, argv.iter().map(|s| s.to_string()).collect(), None)
    }
}

/// `iptables-save`, `ip6tables-save` (without `#` lines) and `ipset save`,
/// as printed, read with the real tools.
fn exact_state(ns: &Netns) -> String {
    let strip = |text: String| -> String {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect()
    };
    // A set's hash seed is random per set: two runs that create the same
    // set print different `initval`s, and list members in another order.
    let mut sets: Vec<String> = ns
        .ipset_save()
        .lines()
        .map(|l| match l.find(" initval ") {
            Some(at) => format!("{} initval *\n", &l[..at]),
            None => format!("{l}\n"),
        })
        .collect();
    sets.sort_by_key(|l| {
        (
            l.split(' ').nth(1).map(String::from),
            !l.starts_with("create"),
            l.clone(),
        )
    });
    let sets = sets.concat();
    format!(
        "{}--- ip6tables ---\n{}--- ipset ---\n{sets}",
        strip(ns.ok(&["iptables-save"], "iptables-save")),
        strip(ns.ok(&["ip6tables-save"], "ip6tables-save")),
    )
}

/// The tools of `candidates` that a clean apply of `wishes` calls.
fn tools_used<'a>(
    ns: &Netns,
    fakes: &Fakes,
    wishes: &Path,
    candidates: &[&'a str],
) -> Vec<&'a str> {
    reset(ns);
    fakes.set_all("pass");
    fakes
        .run(ns, &[PYFW, "--wishes", arg(wishes), "apply"], &[])
        .expect_ok("a clean apply through the fakes");
    let used = candidates
        .iter()
        .copied()
        .filter(|t| fakes.calls(t) > 0)
        .collect();
    reset(ns);
    used
}

/// Back to Docker's rules after a reboot, with no sets.
fn reset(ns: &Netns) {
    ns.iptables_restore(&spec("docker-after-reboot.save"));
    ns.run_with_input(
        &["ip6tables-restore", "-w"],
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n",
    )
    .expect_ok("ip6tables-restore");
    ns.ok(&["ipset", "destroy"], "ipset destroy");
}

/// Wishes touching a set, three chains, a policy and IPv6: every kind of
/// transaction a plan has.
fn wishes(dir: &Path) -> PathBuf {
    let path = dir.join("wishes.yaml");
    let text = format!(
        "{}  ip6tables:\n    filter:\n      INPUT:\n        default_action: DROP\n        \
         rules:\n        - v6_ssh: -p tcp --dport 22 -j ACCEPT\n",
        spec("wishes.yaml")
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn arg(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Fails the k-th call of each tool, for every k an apply makes: each time
/// the apply exits 1 naming the injected failure, and the state is exactly
/// the state before; or, for a failure of the ownership record's update
/// (which changes no rule), the apply succeeds, says so, and every rule is
/// in place.
fn a_failure_at_any_step_leaves_nothing_half_applied(backend: Backend) {
    let Some(ns) = Netns::new("fail_at_k", backend) else {
        return;
    };
    let fakes = Fakes::new();
    let dir = tempfile::tempdir().unwrap();
    let wishes = wishes(dir.path());
    let apply = [PYFW, "--wishes", arg(&wishes), "apply"];

    // A clean run, to learn how often each tool is called and the result.
    reset(&ns);
    let before = exact_state(&ns);
    fakes.set_all("pass");
    fakes
        .run(&ns, &apply, &[])
        .expect_ok("apply through the fakes");
    let after = exact_state(&ns);
    let rules_after = after.split("--- ipset ---").next().unwrap().to_string();
    let counts: Vec<(&str, usize)> = TOOLS
        .iter()
        .map(|t| (*t, fakes.calls(t)))
        .filter(|(_, n)| *n > 0)
        .collect();
    assert!(
        counts.iter().any(|(t, _)| t.contains("restore"))
            && counts.iter().any(|(t, _)| *t == "ipset"),
        "the apply must use restore transactions and ipset: {counts:?}"
    );
    let mut failed_runs = 0;
    for (tool, n) in &counts {
        for k in 1..=*n {
            reset(&ns);
            fakes.set_all("pass");
            fakes.set(tool, &format!("fail-at-{k}"));
            let out = fakes.run(&ns, &apply, &[]);
            let what = format!("{tool} failing at call {k} of {n}");
            let now = exact_state(&ns);
            if out.code() == Some(1) {
                failed_runs += 1;
                assert!(
                    out.stderr
                        .contains(&format!("injected failure at call {k}")),
                    "{what}: the error must name the cause\n{out}"
                );
                assert_text_eq(
                    &now,
                    &before,
                    &format!("{what}: nothing half-applied\n{out}"),
                );
            } else {
                // A failure pyfw may survive: probing the variant, or
                // updating the ownership record, which changes no rule.
                out.expect_ok(&what);
                assert_text_eq(
                    now.split("--- ipset ---").next().unwrap(),
                    &rules_after,
                    &format!("{what}: every rule in place\n{out}"),
                );
                if now != after {
                    assert!(
                        out.stderr.contains("could not update the ownership record"),
                        "{what}: sets differ from a clean run's, so the record failed; it \
                         must say so\n{out}"
                    );
                }
            }
        }
    }
    assert!(
        failed_runs >= 5,
        "only {failed_runs} injected failures stopped an apply"
    );
}

/// A tool that never returns is killed after `PYFW_COMMAND_TIMEOUT`; the
/// apply fails naming the command and the timeout, and nothing changed.
fn a_hanging_tool_times_out_and_changes_nothing(backend: Backend) {
    let Some(ns) = Netns::new("hang", backend) else {
        return;
    };
    let fakes = Fakes::new();
    let dir = tempfile::tempdir().unwrap();
    let wishes = wishes(dir.path());
    let tools = tools_used(
        &ns,
        &fakes,
        &wishes,
        &[
            "iptables-restore",
            "ipset",
            "iptables-save",
            "iptables",
            "ip6tables-restore",
        ],
    );
    assert!(tools.len() >= 3, "{tools:?}");
    let before = exact_state(&ns);
    for tool in tools {
        fakes.set_all("pass");
        fakes.set(tool, "hang");
        let start = Instant::now();
        let out = fakes.run(
            &ns,
            &[PYFW, "--wishes", arg(&wishes), "apply"],
            &[("PYFW_COMMAND_TIMEOUT", "1s")],
        );
        assert_eq!(out.code(), Some(1), "{tool} hanging\n{out}");
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{tool} hanging: took {:?}",
            start.elapsed()
        );
        assert!(
            out.stderr.contains("did not finish within 1s; killed it"),
            "{tool} hanging: the error must say so\n{out}"
        );
        assert_text_eq(
            &exact_state(&ns),
            &before,
            &format!("{tool} hanging\n{out}"),
        );
    }
}

/// Output the parsers cannot read stops pyfw before any change, with an
/// error naming the command and the line.
fn output_that_cannot_be_parsed_is_an_error(backend: Backend) {
    let Some(ns) = Netns::new("garbage", backend) else {
        return;
    };
    let fakes = Fakes::new();
    let dir = tempfile::tempdir().unwrap();
    let wishes = wishes(dir.path());
    reset(&ns);
    // nft reads chains with `iptables -S`, legacy whole tables with
    // `iptables-save`; both read sets with `ipset save`.
    let readers = match backend {
        Backend::Nft => ["iptables", "ipset"],
        Backend::Legacy => ["iptables-save", "ipset"],
    };
    let before = exact_state(&ns);
    for tool in readers {
        fakes.set_all("pass");
        fakes.set(tool, "garbage");
        let out = fakes.run(&ns, &[PYFW, "--wishes", arg(&wishes), "apply"], &[]);
        assert_eq!(out.code(), Some(1), "{tool} printing garbage\n{out}");
        assert!(
            out.stderr.contains("cannot read the output of")
                && out.stderr.contains("this is not what"),
            "{tool}: the error must name the command and quote the line\n{out}"
        );
        assert_text_eq(&exact_state(&ns), &before, &format!("{tool}\n{out}"));
    }
    // More output than pyfw reads is refused, not parsed.
    fakes.set_all("pass");
    let out = fakes.run(
        &ns,
        &[PYFW, "--wishes", arg(&wishes), "state"],
        &[("PYFW_MAX_OUTPUT", "100")],
    );
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(out.stderr.contains("printed more than 100 bytes"), "{out}");
}

/// A read that must print a header (`*TABLE` for `iptables-save -t
/// TABLE`, `-P`/`-N CHAIN` for `iptables -S CHAIN`, `create NAME` for
/// `ipset save NAME`) and prints nothing, exiting 0, is an error naming
/// the command, never an empty chain, table or set: read as empty, every
/// wished rule would be added again beside itself.
fn a_read_that_prints_nothing_is_an_error_not_an_empty_state(backend: Backend) {
    let Some(ns) = Netns::new("empty_read", backend) else {
        return;
    };
    let fakes = Fakes::new();
    let dir = tempfile::tempdir().unwrap();
    let wishes = wishes(dir.path());
    reset(&ns);
    fakes.set_all("pass");
    fakes
        .run(&ns, &[PYFW, "--wishes", arg(&wishes), "apply"], &[])
        .expect_ok("a clean apply");
    let before = exact_state(&ns);
    let readers: &[(&str, &str)] = match backend {
        Backend::Nft => &[("iptables", " -S "), ("ipset", "ipset save ")],
        Backend::Legacy => &[
            ("iptables-save", "-save -t "),
            // One chain of a table is read with `-S` (the wishes' IPv6
            // INPUT), more with one save of the table.
            ("ip6tables", " -S "),
            ("ipset", "ipset save "),
        ],
    };
    for &(tool, command) in readers {
        fakes.set_all("pass");
        fakes.set(tool, "empty");
        let out = fakes.run(&ns, &[PYFW, "--wishes", arg(&wishes), "apply"], &[]);
        assert!(fakes.calls(tool) > 0, "{tool} was not called\n{out}");
        assert_eq!(out.code(), Some(1), "{tool} printing nothing\n{out}");
        assert!(
            out.stderr.contains("exited 0 but printed no") && out.stderr.contains(command),
            "{tool}: the error must name the command and what it lacked\n{out}"
        );
        assert_text_eq(&exact_state(&ns), &before, &format!("{tool}\n{out}"));
    }
}

/// Legacy iptables waits for the xtables lock (`-w`): held by another
/// process for longer than pyfw's timeout, the apply fails naming the lock,
/// and nothing changed. The lock file is this test's own
/// (`XTABLES_LOCKFILE`), so the host's `/run/xtables.lock` is never held.
#[test]
fn the_xtables_lock_held_elsewhere_is_named() {
    let Some(ns) = Netns::new("xtables_lock", Backend::Legacy) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("xtables.lock");
    std::fs::write(&lock, "").unwrap();
    let wishes = wishes(dir.path());
    reset(&ns);
    let before = exact_state(&ns);
    // `-o`: flock itself holds the lock, so killing it frees the lock.
    let mut holder = Command::new("flock")
        .args(["-o", arg(&lock), "sleep", "60"])
        .stdin(Stdio::null())
        .spawn()
        .expect("flock");
    std::thread::sleep(Duration::from_millis(300));
    let out = ns.run(&[
        "env",
        &format!("XTABLES_LOCKFILE={}", lock.display()),
        "PYFW_COMMAND_TIMEOUT=2s",
        PYFW,
        "--wishes",
        arg(&wishes),
        "apply",
    ]);
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(
        out.stderr.contains(&format!(
            "the xtables lock ({}) is held by another process",
            lock.display()
        )),
        "{out}"
    );
    assert_text_eq(&exact_state(&ns), &before, &format!("lock held\n{out}"));
    // Free again: the same apply goes through.
    ns.run(&[
        "env",
        &format!("XTABLES_LOCKFILE={}", lock.display()),
        PYFW,
        "--wishes",
        arg(&wishes),
        "apply",
    ])
    .expect_ok("apply once the lock is free");
}

/// No `iptables` or `ipset` on `PATH`: the error says which tool is missing.
#[test]
fn missing_tools_are_named() {
    let Some(ns) = Netns::new("missing_tools", Backend::Nft) else {
        return;
    };
    let empty = tempfile::tempdir().unwrap();
    let wishes = spec_path("wishes.yaml");
    for cmd in ["apply", "plan", "state"] {
        let out = ns.run(&[
            "env",
            &format!("PATH={}", empty.path().display()),
            PYFW,
            "--wishes",
            arg(&wishes),
            cmd,
        ]);
        assert_eq!(out.code(), Some(1), "{cmd}\n{out}");
        assert!(
            out.stderr.contains("is not installed or not on PATH"),
            "{cmd}: the error must say a tool is missing\n{out}"
        );
    }
    let rules = ns.iptables_save();
    assert!(!rules.contains("-A "), "nothing applied\n{rules}");
}

/// Without CAP_NET_ADMIN (root with its capabilities dropped, or nobody),
/// every kernel command stops at once and says why.
#[test]
fn no_root_no_cap_net_admin_is_a_clear_error() {
    let Some(ns) = Netns::new("no_caps", Backend::Nft) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let wishes = dir.path().join("wishes.yaml");
    std::fs::write(&wishes, spec("wishes.yaml")).unwrap();
    let before = ns.iptables_save();
    let drop_caps = ["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--"];
    let nobody = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--",
    ];
    for who in [&drop_caps[..], &nobody[..]] {
        for cmd in ["apply", "plan", "check", "state"] {
            let mut argv: Vec<&str> = who.to_vec();
            argv.extend([PYFW, "--wishes", arg(&wishes), cmd]);
            let out = ns.run(&argv);
            assert_eq!(out.code(), Some(1), "{argv:?}\n{out}");
            assert!(
                out.stderr.contains("needs root (CAP_NET_ADMIN)"),
                "{argv:?}: the error must name the missing privilege\n{out}"
            );
        }
    }
    assert_eq!(
        ns.iptables_save()
            .lines()
            .filter(|l| l.starts_with("-A"))
            .count(),
        0
    );
    let _ = before;
}

/// The daemon under every fault: it logs the cause, keeps running, retries
/// with backoff, and converges once the fault is gone.
#[test]
fn the_daemon_survives_faults_and_converges() {
    let Some(ns) = Netns::new("daemon_faults", Backend::Nft) else {
        return;
    };
    let fakes = Fakes::new();
    fakes.set_all("pass");
    ns.iptables_restore(&spec("docker-after-reboot.save"));
    let wishes = spec_path("wishes.yaml");
    let mut daemon = Daemon::spawn(fakes.command(
        &ns,
        &[
            PYFW,
            "--wishes",
            arg(&wishes),
            "daemon",
            "--interval",
            "200ms",
        ],
        &[("PYFW_COMMAND_TIMEOUT", "1s")],
    ));
    daemon.wait_for("ready: netfilter matches", 1);
    let drift = || {
        // Another program deletes two wished rules (with the real tools):
        // their repair is one iptables-restore transaction.
        for rule in [
            "-p tcp -m tcp --dport 22 -m comment --comment allow_ssh -j ACCEPT",
            "-s 172.17.0.0/24 -i docker0 -m comment --comment allow_inter_docker -j ACCEPT",
        ] {
            let mut args = vec!["-D", "INPUT"];
            args.extend(rule.split(' '));
            ns.iptables(&args);
        }
    };
    for (tool, mode, cause) in [
        ("iptables", "fail", "injected failure"),
        ("iptables-restore", "fail", "injected failure"),
        ("iptables", "hang", "did not finish within 1s"),
        ("iptables", "garbage", "cannot read the output of"),
        ("ipset", "fail", "injected failure"),
    ] {
        fakes.set_all("pass");
        fakes.set(tool, mode);
        drift();
        let seen = daemon.count(cause);
        daemon.wait_for(cause, seen + 2);
        assert!(
            daemon.output().contains("retrying in"),
            "{tool} {mode}: the daemon must say it retries\n{}",
            daemon.output()
        );
        daemon.assert_alive();
        fakes.set_all("pass");
        let start = Instant::now();
        while !ns.run_pyfw(&wishes, &["check"]).success() {
            assert!(
                start.elapsed() < Duration::from_secs(90),
                "{tool} {mode}: no convergence after the fault went\n{}",
                daemon.output()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        daemon.assert_alive();
    }
    // The backoff grew: consecutive failures wait 200ms, 400ms, ...
    assert!(
        daemon.output().contains("retrying in 400ms"),
        "{}",
        daemon.output()
    );
}

/// A background pyfw with its output collected.
struct Daemon {
    child: Child,
    out: Arc<Mutex<String>>,
}

impl Daemon {
    fn spawn(mut cmd: Command) -> Daemon {
        let mut child = cmd
            .env("PYFW_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the daemon");
        let out = Arc::new(Mutex::new(String::new()));
        common::collect(child.stderr.take().unwrap(), &out);
        Daemon { child, out }
    }

    fn output(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    fn count(&self, needle: &str) -> usize {
        self.output().matches(needle).count()
    }

    #[track_caller]
    fn wait_for(&self, needle: &str, times: usize) {
        let start = Instant::now();
        while self.count(needle) < times {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "`{needle}` not logged {times} times\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    #[track_caller]
    fn assert_alive(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("the daemon exited ({status})\n{}", self.output());
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
