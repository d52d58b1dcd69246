//! Other programs' rules are never touched: pyfw moves only its own rules
//! (and the rules a `~match` takes), so every other rule keeps its packet
//! counters and, on nf_tables, its handle, whatever pushes pyfw's rules
//! around. And a `~match` over identical rules (a ban list holding the same
//! `-s X -j DROP` twice) applies on both backends.
//!
//! Needs root; see `tests/common/mod.rs` for how a test skips (or, with
//! `PYFW_REQUIRE_NETNS=1`, fails) where namespaces are unavailable.

use crate::common;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Backend, Netns, PYFW};

on_both_backends!(
    foreign_rules_keep_their_counters_and_handles_when_pyfw_repairs,
    a_match_over_twin_bans_applies_and_is_then_in_sync,
    the_daemon_becomes_ready_beside_twin_bans,
);

/// A Docker host's filter table, every rule with counters of its own
/// (`iptables-restore -c` input).
const DOCKER_HOST: &str = "\
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:DOCKER-ISOLATION-STAGE-1 - [0:0]
:DOCKER-USER - [0:0]
[101:10100] -A INPUT -i lo -j ACCEPT
[102:10200] -A INPUT -p tcp -m tcp --dport 22 -j ACCEPT
[201:20100] -A FORWARD -j DOCKER-ISOLATION-STAGE-1
[202:20200] -A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
[203:20300] -A FORWARD -o docker0 -j DOCKER
[204:20400] -A FORWARD -i docker0 ! -o docker0 -j ACCEPT
[205:20500] -A FORWARD -i docker0 -o docker0 -j ACCEPT
[301:30100] -A DOCKER-ISOLATION-STAGE-1 -j RETURN
[401:40100] -A DOCKER-USER -j RETURN
COMMIT
";

/// Three wished FORWARD rules, so that Docker's one rule pushed on top of
/// them is the cheaper one to move, and pyfw must not.
const DOCKER_HOST_WISHES: &str = "\
pyfw_wishes:
  iptables:
    filter:
      INPUT:
        rules:
        - allow_established: -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment allow_established -j ACCEPT
        - allow_web: -p tcp -m tcp --dport 443 -m comment --comment allow_web -j ACCEPT
      FORWARD:
        rules:
        - allow_established: -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment allow_established -j ACCEPT
        - allow_vpn: -i wg0 -m comment --comment allow_vpn -j ACCEPT
        - block_metadata: -d 169.254.169.254/32 -m comment --comment block_metadata -j DROP
";

/// A host whose ban script appended its bans below the hand-written
/// rules, one address twice (the script ran twice).
const TWIN_BANS: &str = "\
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -i lo -j ACCEPT
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT
-A INPUT -p tcp -m tcp --dport 443 -j ACCEPT
-A INPUT -s 203.0.113.7/32 -j DROP
-A INPUT -s 198.51.100.23/32 -j DROP
-A INPUT -s 203.0.113.7/32 -j DROP
COMMIT
";

/// The bans first (grouped by `~match`), then pyfw's rule, then the rest.
const TWIN_BANS_WISHES: &str = "\
pyfw_wishes:
  iptables:
    filter:
      INPUT:
        rules:
        - ~match: ' -j DROP$'
        - allow_dns: -p udp -m udp --dport 53 -m comment --comment allow_dns -j ACCEPT
";

/// INPUT as the twin-ban wishes leave it.
const TWIN_BANS_AFTER: &[&str] = &[
    "-A INPUT -s 203.0.113.7/32 -j DROP",
    "-A INPUT -s 198.51.100.23/32 -j DROP",
    "-A INPUT -s 203.0.113.7/32 -j DROP",
    "-A INPUT -p udp -m udp --dport 53 -m comment --comment allow_dns -j ACCEPT",
    "-A INPUT -i lo -j ACCEPT",
    "-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    "-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT",
    "-A INPUT -p tcp -m tcp --dport 443 -j ACCEPT",
];

/// Writes `text` as a wishes file only root can write; keep the directory.
fn wishes_file(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wishes.yaml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

/// Other programs' rules with their counters: the `iptables-save -c` lines
/// without a comment (every pyfw rule carries one).
fn foreign_with_counters(ns: &Netns) -> Vec<String> {
    let save = ns.ok(&["iptables-save", "-c", "-t", "filter"], "iptables-save -c");
    save.lines()
        .filter(|l| l.starts_with('[') && !l.contains("--comment"))
        .map(String::from)
        .collect()
}

/// On nf_tables, other programs' rules as `nft -a` lists them: text,
/// counters and handle (a rule deleted and inserted again gets a new one).
/// `nft` does not print the comment of an iptables rule, so each listed
/// rule is told apart by the `iptables-save` line at its place.
fn foreign_with_handles(ns: &Netns) -> Vec<String> {
    if ns.backend != Backend::Nft {
        return Vec::new();
    }
    let mut out = Vec::new();
    for chain in [
        "INPUT",
        "FORWARD",
        "DOCKER-ISOLATION-STAGE-1",
        "DOCKER-USER",
    ] {
        let argv = ["nft", "-a", "list", "chain", "ip", "filter", chain];
        let list = ns.ok(&argv, "nft list chain");
        let listed: Vec<&str> = list
            .lines()
            .map(str::trim)
            .filter(|l| l.contains("# handle") && !l.starts_with("chain "))
            .collect();
        let saved = chain_rules(ns, chain);
        assert_eq!(listed.len(), saved.len(), "{list}\n{saved:?}");
        for (nft, save) in listed.iter().zip(&saved) {
            if !save.contains("--comment") {
                out.push(format!("{chain}: {nft}"));
            }
        }
    }
    out
}

/// The rule lines of one chain, `-A CHAIN ...`, in order.
fn chain_rules(ns: &Netns, chain: &str) -> Vec<String> {
    let prefix = format!("-A {chain} ");
    ns.iptables_save()
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .map(String::from)
        .collect()
}

#[track_caller]
fn assert_all_kept(before: &[String], after: &[String], what: &str, out: &common::Out) {
    let lost: Vec<&String> = before.iter().filter(|l| !after.contains(l)).collect();
    assert!(
        lost.is_empty(),
        "{what}: other programs' rules lost their counters or handles:\n{}\n--- after ---\n{}\n\
         --- pyfw ---\n{out}",
        lost.iter()
            .map(|l| l.as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        after.join("\n")
    );
}

/// Docker's `-I FORWARD 1 -j DOCKER-USER` pushes pyfw's three FORWARD rules
/// down; `pyfw apply` puts them back on top by moving them, not Docker's
/// rule: every other program's rule keeps its packet counters (set with
/// `iptables-restore -c`) and, on nf_tables, its handle.
fn foreign_rules_keep_their_counters_and_handles_when_pyfw_repairs(backend: Backend) {
    let Some(ns) = Netns::new("foreign_counters", backend) else {
        return;
    };
    ns.run_with_input(&["iptables-restore", "-w", "-c"], DOCKER_HOST)
        .expect_ok("iptables-restore -c");
    let (_dir, wishes) = wishes_file(DOCKER_HOST_WISHES);
    let counters = foreign_with_counters(&ns);
    assert_eq!(counters.len(), 9, "every foreign rule loads\n{counters:?}");
    assert!(counters.iter().all(|l| !l.starts_with("[0:0]")));
    let handles = foreign_with_handles(&ns);

    let out = ns.run_pyfw(&wishes, &["apply"]);
    out.expect_ok("first `pyfw apply`");
    assert_all_kept(&counters, &foreign_with_counters(&ns), "first apply", &out);
    assert_all_kept(&handles, &foreign_with_handles(&ns), "first apply", &out);

    // Docker starts: its jump lands on top of pyfw's rules.
    ns.iptables(&["-I", "FORWARD", "1", "-c", "7", "700", "-j", "DOCKER-USER"]);
    let counters = foreign_with_counters(&ns);
    assert!(counters.contains(&"[7:700] -A FORWARD -j DOCKER-USER".to_string()));
    let handles = foreign_with_handles(&ns);

    let out = ns.run_pyfw(&wishes, &["apply"]);
    out.expect_ok("`pyfw apply` after Docker's insert");
    ns.run_pyfw(&wishes, &["check"])
        .expect_code(0, "`pyfw check` after the repair");
    assert_all_kept(&counters, &foreign_with_counters(&ns), "repair", &out);
    assert_all_kept(&handles, &foreign_with_handles(&ns), "repair", &out);
    let forward = chain_rules(&ns, "FORWARD");
    assert!(
        forward[..3].iter().all(|l| l.contains("--comment"))
            && forward[3] == "-A FORWARD -j DOCKER-USER",
        "pyfw's rules first, then Docker's jump\n{}",
        forward.join("\n")
    );
}

/// A ban list holding the same `-s X -j DROP` twice, grouped by a
/// `~match`: the plan moves both twins, and applies on nf_tables as on
/// legacy; `pyfw check` then finds nothing to do.
fn a_match_over_twin_bans_applies_and_is_then_in_sync(backend: Backend) {
    let Some(ns) = Netns::new("twin_bans", backend) else {
        return;
    };
    ns.iptables_restore(TWIN_BANS);
    let (_dir, wishes) = wishes_file(TWIN_BANS_WISHES);
    let out = ns.run_pyfw(&wishes, &["apply"]);
    out.expect_ok("`pyfw apply` with a ~match over twin bans");
    ns.run_pyfw(&wishes, &["check"])
        .expect_code(0, "`pyfw check` after the apply");
    assert_eq!(
        chain_rules(&ns, "INPUT"),
        TWIN_BANS_AFTER,
        "the bans first, both twins kept\n{out}"
    );
}

/// With a ~match over twin bans to apply, the daemon's first repair
/// succeeds and it becomes ready (while the apply failed, no wish of the
/// table was enforced and it never did).
fn the_daemon_becomes_ready_beside_twin_bans(backend: Backend) {
    let Some(ns) = Netns::new("twin_daemon", backend) else {
        return;
    };
    ns.iptables_restore(TWIN_BANS);
    let (_dir, wishes) = wishes_file(TWIN_BANS_WISHES);
    let mut daemon = ns
        .command_for(&[
            PYFW,
            "--wishes",
            wishes.to_str().unwrap(),
            "daemon",
            "--interval",
            "200ms",
        ])
        .env("PYFW_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the daemon");
    let log = Arc::new(Mutex::new(String::new()));
    let reader = common::collect(daemon.stderr.take().unwrap(), &log);
    let log_text = || log.lock().unwrap().clone();
    let start = Instant::now();
    let ready = loop {
        if log_text().contains("ready: netfilter matches") {
            break true;
        }
        // A deadline against waiting forever, not a speed check.
        if start.elapsed() > Duration::from_secs(30) || daemon.try_wait().unwrap().is_some() {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // SAFETY: kill(2) on our own child with SIGTERM.
    unsafe { libc::kill(daemon.id() as libc::pid_t, libc::SIGTERM) };
    let status = daemon.wait().unwrap();
    let _ = reader.join();
    assert!(ready, "the daemon never became ready\n{}", log_text());
    assert!(status.success(), "exit {status}\n{}", log_text());
    assert_eq!(chain_rules(&ns, "INPUT"), TWIN_BANS_AFTER, "{}", log_text());
}
