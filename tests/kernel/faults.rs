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

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Backend, Netns, Out, PYFW, assert_text_eq, run_command, spec, spec_path};

on_both_backends!(
    a_failure_at_any_step_leaves_nothing_half_applied,
    a_hanging_tool_times_out_and_changes_nothing,
    output_that_cannot_be_parsed_is_an_error,
    a_set_change_cut_half_way_is_put_back,
    an_interrupt_mid_apply_is_held_then_rolled_back,
    a_kill_9_between_commit_and_record_leaves_nothing_unrecorded,
    a_refused_command_is_named_with_its_wish_and_line,
    a_read_that_prints_nothing_is_an_error_not_an_empty_state,
    a_tools_binary_stderr_reaches_the_user_as_text,
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
# MODE, MODE-at-K or MODE-once: the fault at every call, at call K only,
# or once (then the tool passes again).
action=$mode; once=
case "$mode" in *-once) action=${mode%-once}; once=1 ;; esac
case "$mode" in *-at-*) action=${mode%-at-*}
    [ "$n" -eq "${mode##*-at-}" ] || action=pass ;; esac
# A fault that cuts input short is for calls that read input (restores).
case "$action" in die-half|half-hang)
    case "$tool $1" in *restore*) ;; *) action=pass ;; esac ;; esac
[ -n "$once" ] && [ "$action" != pass ] && echo pass > "$ctl/$tool.mode"
real() { PATH=${PATH#*:} "$tool" "$@"; }
case "$action" in
fail) echo "fake $tool: injected failure at call $n" >&2; exit 4 ;;
# Fails with an escape sequence, a bell and bytes that are not UTF-8.
fail-binary) printf 'fake %s: bad \033[31mred\007 \377\376 bytes\n' "$tool" >&2; exit 4 ;;
hang) exec sleep 600 ;;
garbage) case "$tool $*" in
    *-save*|*" -S"*|"ipset save"*) echo "this is not what $tool prints"; exit 0 ;; esac ;;
# Dies half-way through its input: the first half reaches the real tool,
# which applies what it can of it, and no line number says where it stopped.
die-half) input=$(cat); lines=$(printf '%s\n' "$input" | wc -l)
    printf '%s\n' "$input" | head -n $((lines / 2)) | real "$@" >/dev/null 2>&1
    echo "fake $tool: died half-way (call $n)" >&2; exit 137 ;;
# The same, then hangs until the timeout kills it.
half-hang) input=$(cat); lines=$(printf '%s\n' "$input" | wc -l)
    printf '%s\n' "$input" | head -n $((lines / 2)) | real "$@" >/dev/null 2>&1
    exec sleep 600 ;;
# Takes its time, then does the real work.
slow) sleep 3 ;;
# Refuses input line N as iptables-restore (nf_tables) does.
refuse-line-*) cat >/dev/null; line=${action#refuse-line-}
    echo "$tool v1.8.9 (nf_tables): line $line: RULE_INSERT failed (Invalid argument): rule in chain INPUT" >&2
    echo "Error occurred at line: $line" >&2; exit 1 ;;
# Does the real work, then kill -9 of the pyfw that ran it.
kill-parent) real "$@"; status=$?; kill -9 "$PPID"; exit $status ;;
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

    /// Sets `tool`'s behaviour (`pass`, `fail`, `hang`, `garbage`, `empty`:
    /// a read that prints nothing and exits 0, `die-half`, `half-hang`,
    /// `slow`, `refuse-line-N`, `kill-parent`; each also as `MODE-at-K`, for
    /// call K only, or `MODE-once`) and resets its count.
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
        // Each run through the fakes learns every rule form, as the first
        // run with its wishes does: the calls counted in a clean run are
        // then the calls of the next, and a fault at any of them, learning
        // included, is tried.
        let state = self.ctl.join("state");
        let _ = std::fs::remove_file(state.join("iptables-forms.json"));
        cmd.env("PYFW_STATE_DIR", &state);
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

/// A tool that fails with an escape sequence, a bell and bytes that are
/// not UTF-8 in its stderr, at a read and at a commit: pyfw's message
/// quotes it as text (`\x1b`, `\x07`, `\xff`), never the raw bytes, which
/// would paint or beep the user's terminal and forge log lines.
fn a_tools_binary_stderr_reaches_the_user_as_text(backend: Backend) {
    let Some(ns) = Netns::new("binary_stderr", backend) else {
        return;
    };
    let fakes = Fakes::new();
    let dir = tempfile::tempdir().unwrap();
    let wishes = wishes(dir.path());
    reset(&ns);
    let before = exact_state(&ns);
    let (reader, writer) = match backend {
        Backend::Nft => ("iptables", "iptables-restore"),
        Backend::Legacy => ("iptables-save", "iptables-restore"),
    };
    for tool in [reader, writer, "ipset"] {
        fakes.set_all("pass");
        fakes.set(tool, "fail-binary");
        let argv = [PYFW, "--wishes", arg(&wishes), "apply"];
        let out = fakes.command(&ns, &argv, &[]).output().unwrap();
        let stderr = &out.stderr;
        let shown = String::from_utf8_lossy(stderr);
        assert_eq!(out.status.code(), Some(1), "{tool}\n{shown}");
        assert!(
            std::str::from_utf8(stderr).is_ok(),
            "{tool}: stderr must be UTF-8 text\n{shown}"
        );
        for raw in [0x1b_u8, 0x07] {
            assert!(!stderr.contains(&raw), "{tool}: raw byte {raw:#x}\n{shown}");
        }
        assert!(
            shown.contains("bad \\x1b[31mred\\x07 \\xff\\xfe bytes"),
            "{tool}: the tool's words must be quoted as text\n{shown}"
        );
        assert_text_eq(&exact_state(&ns), &before, &format!("{tool}\n{shown}"));
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
/// the state before (the ownership record included: it is written ahead
/// of the change); or, when the record's trim after the last commit fails,
/// the apply exits 1 saying that every change committed, and every rule is
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
            if out.code() == Some(1) && out.stderr.contains("every change committed") {
                // The record's trim after the last commit failed: every
                // rule is in place, the record still names the old too
                // (the next run trims it), and the apply says so.
                failed_runs += 1;
                assert!(
                    out.stderr.contains("ownership record after the change")
                        && out.stderr.contains("netfilter matches the wishes"),
                    "{what}: must say the change committed\n{out}"
                );
                assert_text_eq(
                    now.split("--- ipset ---").next().unwrap(),
                    &rules_after,
                    &format!("{what}: every rule in place\n{out}"),
                );
            } else if out.code() == Some(1) {
                failed_runs += 1;
                assert!(
                    out.stderr
                        .contains(&format!("injected failure at call {k}")),
                    "{what}: the error must name the cause\n{out}"
                );
                assert!(
                    out.stderr.contains("nothing was changed")
                        || out.stderr.contains("netfilter is as it was (read back)"),
                    "{what}: the error must say netfilter is as it was\n{out}"
                );
                assert_text_eq(
                    &now,
                    &before,
                    &format!("{what}: nothing half-applied\n{out}"),
                );
            } else {
                // A failure pyfw may survive: probing the variant.
                out.expect_ok(&what);
                assert_text_eq(&now, &after, &format!("{what}: all applied\n{out}"));
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
        // Another program deletes two wished rules at once (with the real
        // tools, in one transaction: two deletes in a row can be repaired
        // one at a time, each by a single `iptables`): their repair is one
        // iptables-restore transaction.
        ns.run_with_input(
            &["iptables-restore", "-w", "--noflush"],
            "*filter\n\
             -D INPUT -p tcp -m tcp --dport 22 -m comment --comment allow_ssh -j ACCEPT\n\
             -D INPUT -s 172.17.0.0/24 -i docker0 -m comment --comment allow_inter_docker \
             -j ACCEPT\nCOMMIT\n",
        )
        .expect_ok("iptables-restore --noflush");
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

/// How many times a clean apply of `wishes` calls `tool`; the state is
/// reset before and after.
fn clean_calls(ns: &Netns, fakes: &Fakes, wishes: &Path, tool: &str) -> usize {
    reset(ns);
    fakes.set_all("pass");
    fakes
        .run(ns, &[PYFW, "--wishes", arg(wishes), "apply"], &[])
        .expect_ok("a clean apply through the fakes");
    let calls = fakes.calls(tool);
    reset(ns);
    calls
}

/// Wishes of one set of 2,000 members, `10.N.x.y`.
fn big_set_wishes(dir: &Path, n: u8) -> PathBuf {
    let path = dir.join(format!("set-{n}.yaml"));
    let members: String = (0..2000)
        .map(|i| format!("      - 10.{n}.{}.{}\n", i / 250, i % 250 + 1))
        .collect();
    let text = format!(
        "pyfw_wishes:\n  ipsets:\n    big:\n      type: hash:ip\n      members_equal:\n{members}"
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// A member change of a set with `ipset restore` cut half-way: it dies
/// (every old member deleted, a part of the new ones added, and no line
/// number to say where it stopped), or hangs there until the timeout
/// kills it. Either way the set is put back exactly as it was, and the
/// error says so because the set was read back, not assumed.
fn a_set_change_cut_half_way_is_put_back(backend: Backend) {
    let Some(ns) = Netns::new("set_cut", backend) else {
        return;
    };
    let fakes = Fakes::new();
    let dir = tempfile::tempdir().unwrap();
    reset(&ns);
    ns.run_pyfw(&big_set_wishes(dir.path(), 1), &["apply"])
        .expect_ok("the first set");
    let before = exact_state(&ns);
    let change = big_set_wishes(dir.path(), 2);
    let apply = [PYFW, "--wishes", arg(&change), "apply"];
    for (mode, env, cause) in [
        ("die-half-once", vec![], "died half-way"),
        (
            "half-hang-once",
            vec![("PYFW_COMMAND_TIMEOUT", "2s")],
            "did not finish within 2s",
        ),
    ] {
        fakes.set_all("pass");
        fakes.set("ipset", mode);
        let out = fakes.run(&ns, &apply, &env);
        assert_eq!(out.code(), Some(1), "{mode}\n{out}");
        assert!(out.stderr.contains(cause), "{mode}: names the cause\n{out}");
        assert!(
            out.stderr.contains("netfilter is as it was (read back)"),
            "{mode}: says the set was put back\n{out}"
        );
        assert_text_eq(&exact_state(&ns), &before, &format!("{mode}\n{out}"));
    }
    fakes.set_all("pass");
    fakes
        .run(&ns, &apply, &[])
        .expect_ok("the change, once ipset works");
}

/// SIGINT to pyfw's process group (Ctrl-C on its terminal), SIGTERM, or
/// SIGHUP (the SSH session dropped) while a transaction runs: the tool is
/// not killed with pyfw (its own process group), pyfw waits for it, does
/// not start the next transaction, puts back what ran, says so, and exits
/// with 128 + the signal's number.
fn an_interrupt_mid_apply_is_held_then_rolled_back(backend: Backend) {
    let Some(ns) = Netns::new("interrupt", backend) else {
        return;
    };
    let fakes = Fakes::new();
    let dir = tempfile::tempdir().unwrap();
    let wishes = wishes(dir.path());
    // The IPv4 filter transaction is the last `iptables-restore` call (the
    // ip6tables one, and the record's trim, come after it).
    let k = clean_calls(&ns, &fakes, &wishes, "iptables-restore");
    let before = exact_state(&ns);
    for (signo, name) in [
        (libc::SIGINT, "SIGINT"),
        (libc::SIGTERM, "SIGTERM"),
        (libc::SIGHUP, "SIGHUP"),
    ] {
        reset(&ns);
        fakes.set_all("pass");
        fakes.set("iptables-restore", &format!("slow-at-{k}"));
        let mut cmd = fakes.command(&ns, &[PYFW, "--wishes", arg(&wishes), "apply"], &[]);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = Arc::new(Mutex::new(String::new()));
        common::collect(child.stdout.take().unwrap(), &out);
        common::collect(child.stderr.take().unwrap(), &out);
        let start = Instant::now();
        while fakes.calls("iptables-restore") < k {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{name}: no transaction"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(300));
        let pgid = i32::try_from(child.id()).unwrap();
        // SAFETY: kill(2) of a process group this test made.
        assert_eq!(unsafe { libc::kill(-pgid, signo) }, 0);
        let status = child.wait().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let said = out.lock().unwrap().clone();
        assert_eq!(status.code(), Some(128 + signo), "{name}: {status}\n{said}");
        assert!(
            said.contains(&format!("interrupted by {name}"))
                && said.contains("netfilter is as it was (read back)"),
            "{name}: says what happened\n{said}"
        );
        assert_text_eq(&exact_state(&ns), &before, &format!("{name}\n{said}"));
    }
}

/// `kill -9` of pyfw right after its transaction committed: what it added
/// is in pyfw's record already (written ahead), so that withdrawing the
/// wish later removes it; nothing is left in place forever.
fn a_kill_9_between_commit_and_record_leaves_nothing_unrecorded(backend: Backend) {
    let Some(ns) = Netns::new("kill9", backend) else {
        return;
    };
    let fakes = Fakes::new();
    let dir = tempfile::tempdir().unwrap();
    let with_extra = dir.path().join("extra.yaml");
    std::fs::write(
        &with_extra,
        spec("wishes.yaml").replace(
            "        - allow_ssh:",
            "        - extra: -p tcp --dport 2222 -j ACCEPT\n        - allow_ssh:",
        ),
    )
    .unwrap();
    let k = clean_calls(&ns, &fakes, &with_extra, "iptables-restore");
    fakes.set_all("pass");
    fakes.set("iptables-restore", &format!("kill-parent-at-{k}"));
    let out = fakes.run(&ns, &[PYFW, "--wishes", arg(&with_extra), "apply"], &[]);
    assert_eq!(out.code(), None, "killed by the fake\n{out}");
    assert!(
        ns.iptables_save().contains("--comment extra"),
        "the transaction committed before the kill\n{out}"
    );
    let without = spec_path("wishes.yaml");
    ns.run_pyfw(&without, &["apply"])
        .expect_ok("withdraw `extra`");
    let rules = ns.iptables_save();
    assert!(!rules.contains("--comment extra"), "withdrawn\n{rules}");
    ns.run_pyfw(&without, &["check"]).expect_ok("in sync");
}

/// A transaction the kernel refuses at one command: the error names that
/// command, its wish with the wishes file's line, and the tool's words
/// without restore-input line numbers; `Executing command` is printed only
/// for what ran (the set, put back since); the state is as before.
fn a_refused_command_is_named_with_its_wish_and_line(backend: Backend) {
    let Some(ns) = Netns::new("refused", backend) else {
        return;
    };
    let fakes = Fakes::new();
    let dir = tempfile::tempdir().unwrap();
    let wishes = wishes(dir.path());
    let k = clean_calls(&ns, &fakes, &wishes, "iptables-restore");
    let before = exact_state(&ns);
    // Input line 5 of the IPv4 filter transaction: `*filter`, then DOCKER's,
    // FORWARD's and INPUT's first insert, then allow_ssh's.
    fakes.set_all("pass");
    fakes.set("iptables-restore", &format!("refuse-line-5-at-{k}"));
    let out = fakes.run(&ns, &[PYFW, "--wishes", arg(&wishes), "apply"], &[]);
    assert_eq!(out.code(), Some(1), "{out}");
    let text = std::fs::read_to_string(&wishes).unwrap();
    let line = 1 + text
        .lines()
        .position(|l| l.contains("- allow_ssh:"))
        .unwrap();
    let want = format!(
        "pyfw: error: {}:{line}: filter/INPUT/allow_ssh: command ",
        wishes.display()
    );
    assert!(
        out.stderr.lines().any(|l| l.starts_with(&want)),
        "want `{want}...`\n{out}"
    );
    assert!(
        out.stderr
            .contains(" failed: `iptables -w -t filter -I INPUT 2 -p tcp -m tcp --dport 22")
            && out.stderr.contains("RULE_INSERT failed (Invalid argument)")
            && out.stderr.contains("netfilter is as it was (read back)"),
        "{out}"
    );
    assert!(
        !out.stderr.contains("line 5") && !out.stderr.contains("Error occurred"),
        "no restore-input line numbers\n{out}"
    );
    assert!(
        !out.stdout.contains("Executing command") || !out.stdout.contains("-I INPUT"),
        "only what ran is printed as executing\n{out}"
    );
    assert_text_eq(&exact_state(&ns), &before, &format!("refused\n{out}"));
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
