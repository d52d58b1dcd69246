//! Never lock the operator out: `pyfw apply --confirm` and its revert, on
//! real netfilter in network namespaces, both backends; and the lock-out
//! lint as the CLI prints it.
//!
//! Needs root; see `tests/common/mod.rs` for how a test skips (or, with
//! `PYFW_REQUIRE_NETNS=1`, fails) where namespaces are unavailable.

use crate::common;

use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Backend, Netns, PYFW, assert_text_eq, spec, spec_path};

on_both_backends!(
    an_unconfirmed_apply_is_reverted_byte_for_byte,
    pyfw_confirm_from_another_session_keeps_the_change,
    an_answer_on_stdin_confirms_or_reverts_at_once,
    the_daemon_waits_for_the_answer_and_does_not_reapply_a_revert,
    on_a_crowded_host_the_lint_follows_the_hosts_chains,
    forward_drop_warns_where_docker_runs_with_nftables,
);

/// The state a revert must restore exactly: `iptables-save` and
/// `ip6tables-save` without their `#` lines (dates), and `ipset save`, as
/// printed.
fn exact_state(ns: &Netns) -> String {
    let strip = |text: String| -> String {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect()
    };
    format!(
        "{}--- ip6tables-save ---\n{}--- ipset save ---\n{}",
        strip(ns.ok(&["iptables-save"], "iptables-save")),
        strip(ns.ok(&["ip6tables-save"], "ip6tables-save")),
        ns.ipset_save()
    )
}

/// A host mid-life: Docker's rules, a foreign chain, the wished set with
/// other members than wished (so the apply changes it), a set pyfw does not
/// manage, and IPv6 rules.
fn busy_host(ns: &Netns) {
    ns.iptables_restore(&spec("docker-after-reboot.save"));
    ns.iptables(&["-N", "f2b-sshd"]);
    ns.iptables(&["-A", "f2b-sshd", "-s", "203.0.113.7", "-j", "REJECT"]);
    ns.iptables(&["-A", "f2b-sshd", "-j", "RETURN"]);
    ns.iptables(&[
        "-I", "INPUT", "1", "-p", "tcp", "--dport", "22", "-j", "f2b-sshd",
    ]);
    for args in [
        &["create", "allowed_hosts", "hash:ip", "family", "inet"][..],
        &["add", "allowed_hosts", "10.9.9.9"],
        &["add", "allowed_hosts", "10.9.9.10"],
        &["create", "others", "hash:net", "family", "inet", "comment"],
        &["add", "others", "198.51.100.0/24", "comment", "not pyfw's"],
    ] {
        let mut argv = vec!["ipset"];
        argv.extend_from_slice(args);
        ns.ok(&argv, "ipset");
    }
    ns.ip6tables(&["-A", "INPUT", "-s", "2001:db8::1", "-j", "ACCEPT"]);
}

/// The spec's wishes plus an IPv6 policy and a new chain, so that the apply
/// touches policies of both families, creates a chain, rewrites a set's
/// members and creates pyfw's ownership record.
fn wishes_file(dir: &Path) -> std::path::PathBuf {
    let text = format!(
        "{}  ip6tables:\n    filter:\n      INPUT:\n        default_action: DROP\n        \
         rules:\n        - v6_ssh: -p tcp --dport 22 -j ACCEPT\n",
        spec("wishes.yaml")
    )
    .replace(
        "      DOCKER:\n",
        "      pyfw-extra:\n        rules:\n        - extra: -p udp --dport 53 -j ACCEPT\n      \
         DOCKER:\n",
    );
    let path = dir.join("wishes.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// pyfw running in the background, its output collected as it comes.
struct Running {
    child: Child,
    out: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Running {
    fn spawn(ns: &Netns, argv: &[&str], stdin: Stdio) -> Running {
        let mut child = ns
            .command_for(argv)
            .stdin(stdin)
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
    fn wait_for(&self, needle: &str, limit: Duration) {
        let start = Instant::now();
        while !self.output().contains(needle) {
            assert!(
                start.elapsed() < limit,
                "`{needle}` not printed within {limit:?}:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the exit; returns the code and everything printed.
    #[track_caller]
    fn finish(mut self, limit: Duration) -> (Option<i32>, String) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                for r in self.readers.drain(..) {
                    let _ = r.join();
                }
                return (status.code(), self.output());
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                panic!("pyfw did not exit within {limit:?}:\n{}", self.output());
            }
            std::thread::sleep(Duration::from_millis(50));
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

/// The revert mark the test's namespace may have left; removed so that no
/// other test can ever see it.
fn remove_mark(ns: &Netns) {
    // Marks are named by the namespace's cookie and name the wishes file,
    // which every test here keeps in a directory named after its namespace.
    if let Ok(entries) = std::fs::read_dir("/run/pyfw") {
        for e in entries.flatten() {
            if std::fs::read_to_string(e.path()).is_ok_and(|t| t.contains(&ns.name)) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// The heart of `--confirm`: after an apply that changed rules, policies
/// of both families, a chain, a set's members and pyfw's record, and no
/// confirmation, everything is back exactly as `iptables-save`,
/// `ip6tables-save` and `ipset save` printed it before.
fn an_unconfirmed_apply_is_reverted_byte_for_byte(backend: Backend) {
    let Some(ns) = Netns::new("confirm_revert", backend) else {
        return;
    };
    busy_host(&ns);
    let dir = tempfile::Builder::new().prefix(&ns.name).tempdir().unwrap();
    let wishes = wishes_file(dir.path());
    let before = exact_state(&ns);

    let started = Instant::now();
    let out = ns.run_pyfw(&wishes, &["apply", "--confirm", "2s"]);
    remove_mark(&ns);
    assert_eq!(out.code(), Some(3), "an unconfirmed apply exits 3\n{out}");
    assert!(started.elapsed() < Duration::from_secs(30), "{out}");
    // It did apply: the output shows the change, then the revert.
    assert!(out.stdout.contains("Executing command"), "{out}");
    assert!(
        out.stdout
            .contains("+ -A INPUT -p tcp -m tcp --dport 22 -m comment --comment allow_ssh"),
        "{out}"
    );
    assert!(
        out.stdout
            .contains("Not confirmed: no confirmation within 2s"),
        "{out}"
    );
    assert!(
        out.stdout
            .contains("Reverted: every chain, policy and ipset"),
        "{out}"
    );
    assert_text_eq(
        &exact_state(&ns),
        &before,
        &format!("the state after the revert must be the state before, byte for byte\n{out}"),
    );
}

/// `pyfw confirm` from a second session keeps the change.
fn pyfw_confirm_from_another_session_keeps_the_change(backend: Backend) {
    let Some(ns) = Netns::new("confirm_keep", backend) else {
        return;
    };
    busy_host(&ns);
    let dir = tempfile::tempdir().unwrap();
    let wishes = wishes_file(dir.path());
    // Nothing waits yet: nothing to confirm.
    let none = ns.run(&[PYFW, "confirm"]);
    assert_eq!(none.code(), Some(1), "{none}");
    assert!(none.stderr.contains("nothing to confirm"), "{none}");

    let apply = Running::spawn(
        &ns,
        &[
            PYFW,
            "--wishes",
            path_str(&wishes),
            "apply",
            "--confirm",
            "60s",
        ],
        Stdio::null(),
    );
    apply.wait_for("Keep this change?", Duration::from_secs(60));
    let applied = exact_state(&ns);
    let confirm = ns.run(&[PYFW, "confirm"]);
    assert_eq!(confirm.code(), Some(0), "{confirm}");
    assert!(confirm.stdout.contains("confirmed"), "{confirm}");
    let (code, out) = apply.finish(Duration::from_secs(20));
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("Confirmed by `pyfw confirm`"), "{out}");
    assert_text_eq(&exact_state(&ns), &applied, "a confirmed change stays");
    ns.run_pyfw(&wishes, &["check"])
        .expect_code(0, "in sync after confirming");
}

/// A line on stdin answers: `yes` keeps, anything else reverts at once.
fn an_answer_on_stdin_confirms_or_reverts_at_once(backend: Backend) {
    let Some(ns) = Netns::new("confirm_stdin", backend) else {
        return;
    };
    busy_host(&ns);
    let dir = tempfile::Builder::new().prefix(&ns.name).tempdir().unwrap();
    let wishes = wishes_file(dir.path());
    let before = exact_state(&ns);
    let started = Instant::now();
    let no = ns.run_with_input(
        &[
            PYFW,
            "--wishes",
            path_str(&wishes),
            "apply",
            "--confirm",
            "60s",
        ],
        "n\n",
    );
    remove_mark(&ns);
    assert_eq!(no.code(), Some(3), "{no}");
    assert!(no.stdout.contains("answered \"n\""), "{no}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "did not wait for the timeout"
    );
    assert_text_eq(&exact_state(&ns), &before, &format!("reverted\n{no}"));

    let yes = ns.run_with_input(
        &[
            PYFW,
            "--wishes",
            path_str(&wishes),
            "apply",
            "--confirm",
            "60s",
        ],
        "yes\n",
    );
    assert_eq!(yes.code(), Some(0), "{yes}");
    assert!(yes.stdout.contains("Confirmed on the terminal"), "{yes}");
    ns.run_pyfw(&wishes, &["check"]).expect_code(0, "kept");
}

/// A daemon beside `apply --confirm`: while the answer is pending it does
/// not touch netfilter (it cannot take the writer lock), even with drift to
/// repair; after the revert it goes back to enforcing its own file. And a
/// daemon started on content that a confirm reverted does not apply it
/// until the file changes.
fn the_daemon_waits_for_the_answer_and_does_not_reapply_a_revert(backend: Backend) {
    let Some(ns) = Netns::new("confirm_daemon", backend) else {
        return;
    };
    ns.iptables_restore(&spec("docker-after-reboot.save"));
    let dir = tempfile::Builder::new().prefix(&ns.name).tempdir().unwrap();
    let enforced = spec_path("wishes.yaml");
    let mut daemon = Running::spawn(
        &ns,
        &[
            PYFW,
            "--wishes",
            path_str(&enforced),
            "daemon",
            "--interval",
            "300ms",
        ],
        Stdio::null(),
    );
    daemon.wait_for("ready: netfilter matches", Duration::from_secs(30));
    let in_sync = exact_state(&ns);

    // A candidate with one more rule, under test with --confirm.
    let candidate = dir.path().join("candidate.yaml");
    std::fs::write(
        &candidate,
        spec("wishes.yaml").replace(
            "      FORWARD:\n",
            "        - extra: -p tcp --dport 8080 -j ACCEPT\n      FORWARD:\n",
        ),
    )
    .unwrap();
    let apply = Running::spawn(
        &ns,
        &[
            PYFW,
            "--wishes",
            path_str(&candidate),
            "apply",
            "--confirm",
            "4s",
        ],
        Stdio::null(),
    );
    apply.wait_for("Keep this change?", Duration::from_secs(30));
    // Drift the daemon would repair at once, were it not waiting.
    ns.iptables(&["-I", "FORWARD", "1", "-s", "192.0.2.99", "-j", "DROP"]);
    std::thread::sleep(Duration::from_secs(2));
    let during = ns.iptables_save();
    assert!(
        during.contains("--comment extra"),
        "the change under test stays\n{during}"
    );
    assert!(
        during.contains("-A FORWARD -s 192.0.2.99/32 -j DROP\n-A FORWARD -m conntrack"),
        "the daemon must not touch netfilter while the answer is pending\n{during}\n{}",
        daemon.output()
    );
    let (code, out) = apply.finish(Duration::from_secs(30));
    remove_mark(&ns);
    assert_eq!(code, Some(3), "{out}");
    // Then the daemon repairs its drift and is in sync with its own file.
    let start = Instant::now();
    while !ns.run_pyfw(&enforced, &["check"]).success() {
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "the daemon did not converge after the revert\n{}",
            daemon.output()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = in_sync;
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "{}",
        daemon.output()
    );
    let _ = daemon.child.kill();
    let _ = daemon.child.wait();

    // Reverted content is not re-applied by a daemon started on it.
    let file = dir.path().join("wishes.yaml");
    std::fs::write(&file, std::fs::read_to_string(&candidate).unwrap()).unwrap();
    let out = ns.run_pyfw(&file, &["apply", "--confirm", "1s"]);
    assert_eq!(out.code(), Some(3), "{out}");
    assert!(out.stdout.contains("Marked"), "{out}");
    let reverted = exact_state(&ns);
    let daemon = Running::spawn(
        &ns,
        &[
            PYFW,
            "--wishes",
            path_str(&file),
            "daemon",
            "--interval",
            "300ms",
        ],
        Stdio::null(),
    );
    daemon.wait_for("not enforcing these wishes", Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(1));
    assert_text_eq(
        &exact_state(&ns),
        &reverted,
        "the daemon must not undo the revert",
    );
    // An edit lifts it: the daemon enforces the new content.
    std::fs::write(&file, spec("wishes.yaml")).unwrap();
    let start = Instant::now();
    while !ns.run_pyfw(&file, &["check"]).success() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{}",
            daemon.output()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    remove_mark(&ns);
    drop(daemon);
}

/// The lint as the CLI prints it: before applying wishes that drop INPUT
/// with nothing accepting established traffic or the SSH port, pyfw warns
/// on stderr and names `--confirm`; wishes that keep the way in are quiet.
#[test]
fn apply_warns_before_a_lockout() {
    let Some(ns) = Netns::new("lint_warns", Backend::Nft) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let risky = dir.path().join("risky.yaml");
    std::fs::write(
        &risky,
        "pyfw_wishes:\n  iptables:\n    filter:\n      INPUT:\n        default_action: DROP\n        \
         rules:\n        - web: -p tcp --dport 443 -j ACCEPT\n",
    )
    .unwrap();
    let out = ns.run(&[
        "env",
        "SSH_CONNECTION=192.0.2.1 50000 192.0.2.10 22",
        PYFW,
        "--wishes",
        path_str(&risky),
        "apply",
    ]);
    out.expect_ok("a risky apply still applies");
    let warnings: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("pyfw: warning: filter/INPUT:"))
        .collect();
    assert_eq!(warnings.len(), 2, "{out}");
    assert!(warnings[0].contains("ESTABLISHED"), "{out}");
    assert!(warnings[1].contains("tcp port 22"), "{out}");
    assert!(warnings.iter().all(|w| w.contains("--confirm")), "{out}");

    let safe = spec_path("wishes.yaml");
    let out = ns.run(&[
        "env",
        "SSH_CONNECTION=192.0.2.1 50000 192.0.2.10 22",
        PYFW,
        "--wishes",
        path_str(&safe),
        "apply",
    ]);
    out.expect_ok("the spec's wishes");
    assert!(!out.stderr.contains("warning: filter/INPUT"), "{out}");
}

/// A recorded real dump from `tests/data/` (see the SOURCES.md beside it).
fn real_data(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(path)
}

/// The wishes: INPUT drops, and only tcp 443 is accepted.
const ONLY_443: &str = "pyfw_wishes:\n  iptables:\n    filter:\n      INPUT:\n        \
                        default_action: DROP\n        rules:\n        - web: -p tcp --dport 443 \
                        -j ACCEPT\n";

/// `pyfw ARGS` with an SSH session to port 22.
fn pyfw_over_ssh(ns: &Netns, wishes: &Path, args: &[&str]) -> common::Out {
    let mut argv = vec![
        "env",
        "SSH_CONNECTION=192.0.2.1 50000 192.0.2.10 22",
        PYFW,
        "--wishes",
        path_str(wishes),
    ];
    argv.extend_from_slice(args);
    ns.run(&argv)
}

fn warnings<'a>(out: &'a common::Out, chain: &str) -> Vec<&'a str> {
    let prefix = format!("pyfw: warning: {chain}: ");
    (out.stderr.lines())
        .filter(|l| l.starts_with(&prefix))
        .collect()
}

/// The lock-out, on recorded real rulesets loaded into a namespace:
/// a kubeadm node's INPUT jumps to four KUBE-* chains, a ufw host's to six
/// ufw-* chains and more below them, none accepting port 22, so `plan` and
/// `apply` warn (the apply still runs, as ever); where ufw's user rules
/// accept 22 two chains down, there is no SSH warning.
fn on_a_crowded_host_the_lint_follows_the_hosts_chains(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let wishes = dir.path().join("wishes.yaml");
    std::fs::write(&wishes, ONLY_443).unwrap();
    for (dump, ssh_warned) in [
        ("real/kubeadm-node.save", true),
        ("real/ufw-host.save", true),
        ("real/ufw-host-user-rules.save", false),
    ] {
        let Some(ns) = Netns::new("lint_crowded", backend) else {
            return;
        };
        let text = std::fs::read_to_string(real_data(dump)).unwrap();
        ns.iptables_restore(&text);
        let ssh_warning = |out: &common::Out| {
            warnings(out, "filter/INPUT")
                .iter()
                .any(|w| w.contains("tcp port 22") && w.contains("--confirm"))
        };
        let out = pyfw_over_ssh(&ns, &wishes, &["plan"]);
        out.expect_ok("plan");
        assert_eq!(ssh_warning(&out), ssh_warned, "{dump}: {out}");
        let out = pyfw_over_ssh(&ns, &wishes, &["apply"]);
        out.expect_ok("a risky apply still applies");
        assert_eq!(ssh_warning(&out), ssh_warned, "{dump}: {out}");
        assert!(
            ns.iptables_save().contains(":INPUT DROP"),
            "{dump}: applied"
        );
        if dump == "real/ufw-host.save" {
            assert!(
                out.stderr.contains("`-A ufw-reject-input -j REJECT"),
                "{dump}: the warning names the rule that drops: {out}"
            );
        }
        // The host's chains were only read.
        let save = ns.iptables_save();
        for line in text
            .lines()
            .filter(|l| l.starts_with("-A ") && !l.starts_with("-A INPUT "))
        {
            assert!(
                save.contains(line.trim_end()),
                "{dump}: {line} is gone:\n{save}"
            );
        }
    }
}

/// Docker's nftables backend (its `ip docker-bridges` table as Docker 29
/// writes it, see tests/data/docker-nft/SOURCES.md): wishes that set
/// FORWARD to DROP get a warning naming the table; without the table, or
/// with FORWARD accepting Docker's bridge, none.
fn forward_drop_warns_where_docker_runs_with_nftables(backend: Backend) {
    let Some(ns) = Netns::new("lint_docker_nft", backend) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let drop = dir.path().join("drop.yaml");
    std::fs::write(
        &drop,
        "pyfw_wishes:\n  iptables:\n    filter:\n      FORWARD:\n        default_action: DROP\n",
    )
    .unwrap();
    let bridged = dir.path().join("bridged.yaml");
    std::fs::write(
        &bridged,
        "pyfw_wishes:\n  iptables:\n    filter:\n      FORWARD:\n        default_action: DROP\n        \
         rules:\n        - to_docker: -o docker0 -j ACCEPT\n        - from_docker: -i docker0 -j \
         ACCEPT\n",
    )
    .unwrap();
    let forward_warnings = |wishes: &Path| {
        let out = pyfw_over_ssh(&ns, wishes, &["plan"]);
        out.expect_ok("plan");
        warnings(&out, "filter/FORWARD").len()
    };
    assert_eq!(forward_warnings(&drop), 0, "no Docker table yet");
    let table = real_data("docker-nft/docker-bridges.nft");
    ns.ok(&["nft", "-f", path_str(&table)], "load Docker's table");
    let out = pyfw_over_ssh(&ns, &drop, &["apply"]);
    out.expect_ok("the apply still runs");
    let w = warnings(&out, "filter/FORWARD");
    assert_eq!(w.len(), 1, "{out}");
    assert!(
        w[0].contains("ip docker-bridges") && w[0].contains("--confirm"),
        "{out}"
    );
    assert!(ns.iptables_save().contains(":FORWARD DROP"));
    assert_eq!(forward_warnings(&bridged), 0);
}
