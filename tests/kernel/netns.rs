//! pyfw against real netfilter, each test in its own network namespace and
//! each scenario on both iptables backends (nf_tables and legacy).
//!
//! Needs root; see `tests/common/mod.rs` for how a test skips (or, with
//! `PYFW_REQUIRE_NETNS=1`, fails) where namespaces are unavailable.
//! `offline_plan_needs_no_kernel`, which needs neither, is in
//! `tests/offline/netns.rs`.

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{
    Backend, Netns, PYFW, assert_rules_eq, assert_text_eq, normalize_ipsets, normalize_rules, spec,
    spec_path,
};

on_both_backends!(
    spec_story,
    rejected_wish_changes_nothing,
    rejected_target_rolls_back,
    foreign_rules_untouched,
    a_move_inside_one_transaction_never_shows_a_gap,
    rule_forms_are_the_same_without_a_private_namespace,
    a_chain_no_longer_wished_is_read_and_cleared,
);

/// Docker's five FORWARD rules, as argv after `-A FORWARD`.
fn docker_forward_rules() -> Vec<Vec<String>> {
    let rs = pyfw::state::parse_iptables_save(&spec("docker-after-reboot.save")).unwrap();
    let forward = rs.tables["filter"].chain("FORWARD").unwrap();
    let rules: Vec<Vec<String>> = forward.rules.iter().map(|r| r.args().to_vec()).collect();
    assert_eq!(rules.len(), 5, "the spec shows five Docker FORWARD rules");
    rules
}

/// The spec's story: a Docker host after a reboot, `pyfw --apply`, a Docker
/// restart that pushes pyfw's rule down and flushes the DOCKER chain, and
/// `pyfw --apply` again.
fn spec_story(backend: Backend) {
    let Some(ns) = Netns::new("spec_story", backend) else {
        return;
    };
    let wishes = spec_path("wishes.yaml");
    ns.iptables_restore(&spec("docker-after-reboot.save"));

    // After the reboot: `pyfw --apply`, spelled as in the spec.
    let first = ns.run_pyfw(&wishes, &["--apply"]);
    first.expect_ok("first `pyfw --apply`");
    assert_rules_eq(
        &ns.iptables_save(),
        &spec("after-apply.save"),
        "after the first apply",
    );
    let sets = pyfw::state::parse_ipset_save(&ns.ipset_save()).unwrap();
    assert_eq!(
        sets.keys().collect::<Vec<_>>(),
        ["allowed_hosts", pyfw::state::ownership::RECORD_SET],
        "ipsets after the first apply: the wished one, and pyfw's ownership record"
    );
    let record = pyfw::state::ownership::read(&pyfw::state::State {
        ipsets: sets.clone(),
        ..Default::default()
    });
    let keys: Vec<String> = record.iter().map(|o| o.key()).collect();
    assert_eq!(record.len(), 6, "5 rules and 1 set: {keys:#?}");
    assert!(
        keys.iter()
            .any(|k| k.starts_with("rule v4 filter DOCKER allowed_hosts_only ")),
        "{keys:#?}"
    );
    assert!(keys.contains(&"set allowed_hosts".to_string()), "{keys:#?}");
    assert_eq!(sets["allowed_hosts"].kind, "hash:ip");
    assert_eq!(sets["allowed_hosts"].members, ["192.168.122.193"]);

    // `systemctl restart docker.service`: Docker flushes its DOCKER chain and
    // puts its own FORWARD rules back at the top, one by one.
    ns.iptables(&["-t", "filter", "-F", "DOCKER"]);
    for (i, rule) in docker_forward_rules().iter().enumerate() {
        let rule: Vec<&str> = rule.iter().map(String::as_str).collect();
        let mut delete = vec!["-t", "filter", "-D", "FORWARD"];
        delete.extend(&rule);
        ns.iptables(&delete);
        let position = (i + 1).to_string();
        let mut insert = vec!["-t", "filter", "-I", "FORWARD", &position];
        insert.extend(&rule);
        ns.iptables(&insert);
    }
    assert_rules_eq(
        &ns.iptables_save(),
        &spec("after-docker-restart.save"),
        "after the replayed Docker restart",
    );

    // `pyfw --apply` runs exactly the spec's five commands.
    let second = ns.run_pyfw(&wishes, &["--apply"]);
    second.expect_ok("second `pyfw --apply`");
    assert_text_eq(
        &second.lines_starting_with("Executing command"),
        &spec("apply-output.txt"),
        &format!(
            "`pyfw --apply` after the Docker restart must print the spec's commands\n{second}"
        ),
    );
    assert_rules_eq(
        &ns.iptables_save(),
        &spec("after-apply.save"),
        "after the second apply",
    );

    // In sync: nothing to run, and `check` agrees.
    let third = ns.run_pyfw(&wishes, &["apply"]);
    third.expect_ok("third `pyfw apply`");
    assert!(
        !third.stdout.contains("Executing"),
        "an apply in sync must run nothing\n{third}"
    );
    assert!(
        third.stdout.to_lowercase().contains("nothing to do"),
        "an apply in sync must say there is nothing to do\n{third}"
    );
    ns.run_pyfw(&wishes, &["check"])
        .expect_code(0, "`pyfw check` in sync");

    // A wished rule deleted by hand is drift.
    ns.iptables(&[
        "-t",
        "filter",
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
    let check = ns.run_pyfw(&wishes, &["check"]);
    check.expect_code(2, "`pyfw check` after deleting allow_ssh by hand");
    assert!(
        check.stdout.contains("allow_ssh"),
        "the plan `check` prints must restore allow_ssh\n{check}"
    );
}

/// The spec's wishes with one more INPUT rule after `allow_inter_docker`.
fn spec_wishes_plus_input_rule(extra: &str) -> String {
    let wishes = spec("wishes.yaml");
    let mut out = String::new();
    let mut added = false;
    for line in wishes.lines() {
        out.push_str(line);
        out.push('\n');
        if line.trim_start().starts_with("- allow_inter_docker:") {
            let indent = &line[..line.len() - line.trim_start().len()];
            out.push_str(&format!("{indent}{extra}\n"));
            added = true;
        }
    }
    assert!(
        added,
        "wishes.yaml has no allow_inter_docker rule to follow"
    );
    out
}

/// Loads Docker's rules, applies wishes with `extra` in INPUT, and asserts
/// the apply fails and leaves rules and sets exactly as they were.
/// Returns the failed run.
fn apply_fails_and_changes_nothing(
    test: &str,
    backend: Backend,
    extra: &str,
) -> Option<common::Out> {
    let ns = Netns::new(test, backend)?;
    ns.iptables_restore(&spec("docker-after-reboot.save"));
    let dir = tempfile::tempdir().unwrap();
    let wishes = dir.path().join("wishes.yaml");
    std::fs::write(&wishes, spec_wishes_plus_input_rule(extra)).unwrap();

    let rules_before = normalize_rules(&ns.iptables_save());
    let sets_before = normalize_ipsets(&ns.ipset_save());
    let out = ns.run_pyfw(&wishes, &["apply"]);
    assert!(
        !out.success() && out.code().is_some(),
        "`pyfw apply` with a rule iptables rejects must fail\n{out}"
    );
    assert_text_eq(
        &normalize_rules(&ns.iptables_save()),
        &rules_before,
        &format!("a failed apply must leave the rules as they were\n{out}"),
    );
    assert_text_eq(
        &normalize_ipsets(&ns.ipset_save()),
        &sets_before,
        &format!("a failed apply must leave the ipsets as they were\n{out}"),
    );
    Some(out)
}

/// A rule iptables cannot parse stops the apply before any change, and the
/// error names the wish.
fn rejected_wish_changes_nothing(backend: Backend) {
    let Some(out) = apply_fails_and_changes_nothing(
        "rejected_wish",
        backend,
        "- bad_rule: -p tcp --dport 22 --no-such-option -j ACCEPT",
    ) else {
        return;
    };
    assert!(
        out.stderr.contains("filter/INPUT/bad_rule"),
        "the error must name the wish filter/INPUT/bad_rule\n{out}"
    );
}

/// A jump to a chain that does not exist: `iptables-restore --test` may
/// accept it (nf_tables), so the failure can come mid-apply, after other
/// commands ran; pyfw must undo them.
fn rejected_target_rolls_back(backend: Backend) {
    let Some(out) = apply_fails_and_changes_nothing(
        "rejected_target",
        backend,
        "- bad_target: -p tcp --dport 23 -j NO_SUCH_CHAIN_X",
    ) else {
        return;
    };
    assert!(
        out.stderr.contains("NO_SUCH_CHAIN_X") || out.stderr.contains("bad_target"),
        "the error must say what failed\n{out}"
    );
}

/// Rules of other programs, as `iptables-restore` input: fail2ban,
/// Kubernetes (comments with spaces and slashes), DOCKER-USER, and Docker's
/// own rules including a container's.
const FOREIGN: &str = r#"*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-X - [0:0]
:KUBE-SEP-ABC - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A DOCKER -i docker0 -j RETURN
-A DOCKER ! -i docker0 -p tcp -m tcp --dport 8000 -j DNAT --to-destination 172.17.0.2:80
-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -m comment --comment "default/kubernetes:https cluster IP" -m tcp --dport 443 -j KUBE-SVC-X
-A KUBE-SVC-X -m comment --comment "default/kubernetes:https -> 10.0.0.1:6443" -j KUBE-SEP-ABC
-A KUBE-SEP-ABC -p tcp -m comment --comment default/kubernetes:https -m tcp -j DNAT --to-destination 10.0.0.1:6443
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:DOCKER-ISOLATION - [0:0]
:DOCKER-USER - [0:0]
:KUBE-SVC-X - [0:0]
:f2b-sshd - [0:0]
-A INPUT -p tcp -m multiport --dports 22 -j f2b-sshd
-A INPUT -m comment --comment "default/kubernetes:https cluster IP" -j KUBE-SVC-X
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-ISOLATION
-A FORWARD -o docker0 -j DOCKER
-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -i docker0 ! -o docker0 -j ACCEPT
-A FORWARD -i docker0 -o docker0 -j ACCEPT
-A DOCKER -d 172.17.0.2/32 ! -i docker0 -o docker0 -p tcp -m tcp --dport 80 -j ACCEPT
-A DOCKER-ISOLATION -j RETURN
-A DOCKER-USER -s 198.51.100.0/24 -m comment --comment "blocked by ops/ticket 42" -j DROP
-A DOCKER-USER -j RETURN
-A KUBE-SVC-X -d 10.96.0.1/32 -p tcp -m comment --comment "default/kubernetes:https cluster IP" -m tcp --dport 443 -j ACCEPT
-A KUBE-SVC-X -j RETURN
-A f2b-sshd -s 203.0.113.7/32 -j REJECT --reject-with icmp-port-unreachable
-A f2b-sshd -s 203.0.113.8/32 -j REJECT --reject-with icmp-port-unreachable
-A f2b-sshd -j RETURN
COMMIT
"#;

/// The `-A` lines of a dump, exactly as printed, per table and chain.
fn rule_lines(save: &str) -> BTreeMap<(String, String), Vec<String>> {
    let mut out: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let mut table = String::new();
    for line in save.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.to_string();
        } else if let Some(rest) = line.strip_prefix("-A ") {
            let chain = rest.split(' ').next().unwrap_or("").to_string();
            out.entry((table.clone(), chain))
                .or_default()
                .push(line.to_string());
        }
    }
    out
}

/// Applying the spec's wishes beside other programs' rules keeps every one
/// of them, byte for byte, in its order.
fn foreign_rules_untouched(backend: Backend) {
    let Some(ns) = Netns::new("foreign_rules", backend) else {
        return;
    };
    let wishes = spec_path("wishes.yaml");
    ns.iptables_restore(FOREIGN);
    let before = ns.iptables_save();
    let before_lines = rule_lines(&before);
    let count: usize = before_lines.values().map(Vec::len).sum();
    assert_eq!(
        count,
        FOREIGN.lines().filter(|l| l.starts_with("-A ")).count(),
        "every foreign rule must load\n{before}"
    );

    ns.run_pyfw(&wishes, &["apply"]).expect_ok("`pyfw apply`");
    ns.run_pyfw(&wishes, &["check"])
        .expect_code(0, "`pyfw check` after apply");

    let after = ns.iptables_save();
    let after_lines = rule_lines(&after);
    for ((table, chain), wanted) in &before_lines {
        let kept: Vec<&String> = after_lines
            .get(&(table.clone(), chain.clone()))
            .map(|lines| lines.iter().filter(|l| wanted.contains(l)).collect())
            .unwrap_or_default();
        assert_eq!(
            kept,
            wanted.iter().collect::<Vec<_>>(),
            "{table}/{chain}: foreign rules must stay, byte for byte and in order\n\
             --- before ---\n{before}\n--- after ---\n{after}"
        );
    }
    // And pyfw's rules went where the spec puts them: first in their chains.
    let filter = |chain: &str| {
        after_lines
            .get(&("filter".to_string(), chain.to_string()))
            .cloned()
            .unwrap_or_default()
    };
    assert!(
        filter("FORWARD")[0].contains("--comment allow_established"),
        "allow_established must be first in FORWARD\n{after}"
    );
    assert!(
        filter("DOCKER")[0].contains("--comment allowed_hosts_only"),
        "allowed_hosts_only must be first in DOCKER\n{after}"
    );
    assert!(
        filter("INPUT")[..3]
            .iter()
            .zip(["allow_established", "allow_ssh", "allow_inter_docker"])
            .all(|(line, name)| line.contains(&format!("--comment {name} "))),
        "the wished INPUT rules must come first, in order\n{after}"
    );
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("fixture path is UTF-8")
}

/// Whether the temp-rule trick is still needed inside one atomic
/// `iptables-restore` transaction: it is not, since no reader sees a
/// transaction half done; and on nft it cannot even run there (an insert
/// in front of a rule the same transaction inserted and deletes again
/// fails), so pyfw leaves the copy out of the transaction while still
/// listing the spec's commands.
/// This test moves a wished rule to position 3 of a busy chain while a
/// reader lists the chain in a loop: the reader must never miss the rule,
/// and the move must work on both backends.
fn a_move_inside_one_transaction_never_shows_a_gap(backend: Backend) {
    let Some(ns) = Netns::new("move_in_txn", backend) else {
        return;
    };
    for i in 0..40 {
        let src = format!("10.0.0.{i}");
        ns.iptables(&["-A", "FORWARD", "-s", &src, "-j", "RETURN"]);
    }
    ns.iptables(&[
        "-A",
        "FORWARD",
        "-p",
        "tcp",
        "-m",
        "tcp",
        "--dport",
        "22",
        "-m",
        "comment",
        "--comment",
        "keep_ssh",
        "-j",
        "ACCEPT",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let wishes = dir.path().join("wishes.yaml");
    std::fs::write(
        &wishes,
        "pyfw_wishes:\n  iptables:\n    filter:\n      FORWARD:\n        rules:\n        \
         - '~match': '^-s 10\\.0\\.0\\.[01]/'\n        \
         - keep_ssh: -p tcp --dport 22 -j ACCEPT\n",
    )
    .unwrap();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        let argv: Vec<String> = ns_command_argv(&ns, &["iptables", "-w", "-S", "FORWARD"]);
        std::thread::spawn(move || {
            let (mut reads, mut misses) = (0, 0);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && std::time::Instant::now() < deadline
            {
                let out = std::process::Command::new(&argv[0])
                    .args(&argv[1..])
                    .output()
                    .unwrap();
                let text = String::from_utf8_lossy(&out.stdout);
                reads += 1;
                if !text.contains("--comment keep_ssh -j ACCEPT") {
                    misses += 1;
                }
            }
            (reads, misses)
        })
    };
    let out = ns.run_pyfw(&wishes, &["apply"]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (reads, misses) = reader.join().unwrap();
    out.expect_ok("apply moving keep_ssh to position 3");
    // The log lists the spec's four steps of a move...
    assert_eq!(
        out.lines_starting_with("Executing command").lines().count(),
        4,
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("_pyfw_temp_keep_ssh"), "{}", out.stdout);
    // ...and the rule is where it belongs, with no copy left behind.
    let listing = ns.ok(&["iptables", "-w", "-S", "FORWARD"], "list FORWARD");
    let rules: Vec<&str> = listing.lines().filter(|l| l.starts_with("-A ")).collect();
    assert_eq!(rules.len(), 41, "{listing}");
    assert!(rules[2].contains("--comment keep_ssh"), "{listing}");
    assert!(!listing.contains("_pyfw_temp_"), "{listing}");
    assert_eq!(
        misses, 0,
        "the reader saw keep_ssh missing {misses} times in {reads} reads"
    );
    ns.run_pyfw(&wishes, &["check"])
        .expect_code(0, "check after the move");
}

/// The argv that runs `argv` inside the namespace, for a thread of its own.
fn ns_command_argv(ns: &Netns, argv: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = ["ip", "netns", "exec", ns.name.as_str()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    if ns.backend == Backend::Legacy {
        // The harness puts legacy first on PATH; name the binary directly.
        let mut rest: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        if rest[0] == "iptables" {
            rest[0] = "iptables-legacy".into();
        }
        out.extend(rest);
    } else {
        out.extend(argv.iter().map(|s| s.to_string()));
    }
    out
}

/// `--backend legacy` on a host whose plain `iptables` is nft must drive
/// iptables-legacy for every read and write, and say so in its output.
#[test]
fn an_explicit_backend_drives_that_variant() {
    let Some(ns) = Netns::new("explicit_backend", Backend::Nft) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let wishes = dir.path().join("wishes.yaml");
    std::fs::write(
        &wishes,
        "pyfw_wishes:\n  iptables:\n    filter:\n      INPUT:\n        rules:\n        - ssh: -p tcp --dport 22 -j ACCEPT\n",
    )
    .unwrap();
    let out = ns.run_pyfw(&wishes, &["--backend", "legacy", "apply"]);
    out.expect_ok("apply with --backend legacy");
    assert!(
        out.stdout
            .contains("Executing command  1/1: iptables-legacy -w -t filter -I INPUT 1"),
        "{}",
        out.stdout
    );
    let legacy = ns.ok(&["iptables-legacy-save"], "iptables-legacy-save");
    assert!(legacy.contains("--comment ssh"), "{legacy}");
    let nft = ns.ok(&["iptables-nft-save"], "iptables-nft-save");
    assert!(!nft.contains("--comment ssh"), "{nft}");
    ns.run_pyfw(&wishes, &["--backend", "legacy", "check"])
        .expect_code(0, "check with --backend legacy");
}

/// pyfw learns how iptables prints the wished rules in a private network
/// namespace when it may make one, else in a scratch chain of the real
/// tables (without CAP_SYS_ADMIN, as under the systemd unit). Both must
/// give the same result, with rules that name a set and jump to an
/// existing chain, and leave no scratch chain behind.
fn rule_forms_are_the_same_without_a_private_namespace(backend: Backend) {
    let (Some(private), Some(scratch)) = (
        Netns::new("forms_private", backend),
        Netns::new("forms_scratch", backend),
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let wishes = dir.path().join("wishes.yaml");
    std::fs::write(
        &wishes,
        "pyfw_wishes:\n  ipsets:\n    allowed_hosts:\n      type: hash:ip\n      \
         members_equal: [192.168.122.193]\n  iptables:\n    filter:\n      INPUT:\n        \
         rules:\n        - allow_ssh: -p tcp --dport 22 -j ACCEPT\n      FORWARD:\n        \
         rules:\n        - to_docker: -o docker1 -j DOCKER\n      DOCKER:\n        rules:\n        \
         - allowed_hosts_only: '! -i docker0 -o docker0 -m set ! --match-set allowed_hosts src \
         -j REJECT'\n",
    )
    .unwrap();
    let wishes = path_str(&wishes);
    let no_sys_admin = [
        "setpriv",
        "--inh-caps=-sys_admin",
        "--bounding-set=-sys_admin",
        "--",
    ];
    let mut saves = Vec::new();
    for (ns, prefix) in [(&private, &[][..]), (&scratch, &no_sys_admin[..])] {
        ns.iptables_restore(&spec("docker-after-reboot.save"));
        // The set exists, so the rule naming it is learned, not deferred.
        ns.ok(
            &["ipset", "create", "allowed_hosts", "hash:ip"],
            "ipset create",
        );
        let mut argv: Vec<&str> = prefix.to_vec();
        argv.extend([
            "env",
            "PYFW_LOG=pyfw=debug",
            PYFW,
            "--wishes",
            wishes,
            "apply",
        ]);
        let out = ns.run(&argv);
        out.expect_ok("apply");
        let fell_back = out.stderr.contains("using a scratch chain");
        assert_eq!(fell_back, !prefix.is_empty(), "{argv:?}\n{out}");
        let again = ns.run(&argv);
        again.expect_ok("apply again");
        assert!(again.stdout.contains("Nothing to do"), "{argv:?}\n{again}");
        let save = ns.iptables_save();
        assert!(
            !save.contains(pyfw::kernel::learn::SCRATCH_PREFIX),
            "a scratch chain was left behind\n{save}"
        );
        assert!(save.contains("--match-set allowed_hosts src"), "{save}");
        saves.push(normalize_rules(&save));
    }
    assert_text_eq(&saves[1], &saves[0], "without CAP_SYS_ADMIN, as with it");
}

/// A wish withdrawn from a chain that is no longer wished at all: pyfw's
/// record names that chain, so the reconcile reads it beside the wished
/// ones (only it is read a second time) and removes pyfw's rule there,
/// leaving the foreign rule beside it and the wished chain as it was.
fn a_chain_no_longer_wished_is_read_and_cleared(backend: Backend) {
    let Some(ns) = Netns::new("unwished_chain", backend) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let both = write(
        "both.yaml",
        "pyfw_wishes:\n  iptables:\n    filter:\n      INPUT:\n        rules:\n\
         \x20       - keep_ssh: -p tcp --dport 22 -j ACCEPT\n      FORWARD:\n        rules:\n\
         \x20       - old_fwd: -s 10.1.0.0/16 -j ACCEPT\n",
    );
    let input_only = write(
        "input.yaml",
        "pyfw_wishes:\n  iptables:\n    filter:\n      INPUT:\n        rules:\n\
         \x20       - keep_ssh: -p tcp --dport 22 -j ACCEPT\n",
    );
    ns.iptables(&["-A", "FORWARD", "-s", "10.2.0.0/16", "-j", "DROP"]);
    ns.run_pyfw(&both, &["apply"])
        .expect_ok("apply both chains");
    let forward = || ns.ok(&["iptables", "-w", "-S", "FORWARD"], "list FORWARD");
    assert!(forward().contains("--comment old_fwd"), "{}", forward());

    let out = ns.run_pyfw(&input_only, &["apply"]);
    out.expect_ok("apply INPUT only");
    let now = forward();
    assert!(
        !now.contains("old_fwd"),
        "the withdrawn rule is gone\n{out}\n{now}"
    );
    assert!(now.contains("-A FORWARD -s 10.2.0.0/16 -j DROP"), "{now}");
    let input = ns.ok(&["iptables", "-w", "-S", "INPUT"], "list INPUT");
    assert!(input.contains("--comment keep_ssh"), "{input}");
    ns.run_pyfw(&input_only, &["check"])
        .expect_ok("in sync after the withdrawal");
}
