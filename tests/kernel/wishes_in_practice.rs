//! Wishes as people write them, against real netfilter (issue 3): rules in
//! shell style, rejected wishes, withdrawn wishes beside foreign rules,
//! ownership per namespace, IPv6, ipsets of every kind, set changes under
//! traffic, and a host crowded with other programs' chains.
//!
//! Each scenario runs in its own network namespace on both iptables
//! backends; see `tests/common/mod.rs` for how a test skips (or, with
//! `PYFW_REQUIRE_NETNS=1`, fails) where namespaces are unavailable.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Backend, Netns, Out, assert_text_eq, spec};

on_both_backends!(
    shell_style_wishes_read_as_fulfilled,
    rejected_wish_names_itself_and_changes_nothing,
    withdrawn_wishes_leave_foreign_rules,
    jump_to_a_chain_pyfw_creates,
    set_withdrawn_while_its_rule_changes,
    withdrawn_set_still_listed_elsewhere,
    ownership_belongs_to_one_namespace,
    ipv6_end_to_end,
    ipsets_in_full,
    list_set_wished_before_its_members,
    stated_option_the_kernel_rounds,
    set_option_change_keeps_traffic_matched,
    set_type_change_keeps_traffic_matched,
    crowded_host,
);

// ---- helpers ---------------------------------------------------------------

/// Writes a wishes file into `dir` and returns its path.
fn write_wishes(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

/// `iptables -w ARGS`, the arguments written as in a shell.
#[track_caller]
fn ipt(ns: &Netns, args: &str) {
    let args = shlex::split(args).unwrap_or_else(|| panic!("bad quoting: {args}"));
    ns.iptables(&args.iter().map(String::as_str).collect::<Vec<_>>());
}

/// `pyfw apply`, which must succeed.
#[track_caller]
fn apply(ns: &Netns, wishes: &Path, what: &str) -> Out {
    let out = ns.run_pyfw(wishes, &["apply"]);
    out.expect_ok(what);
    out
}

/// How many commands an apply ran.
fn executed(out: &Out) -> usize {
    out.stdout
        .lines()
        .filter(|l| l.starts_with("Executing"))
        .count()
}

/// A second apply runs nothing and says so, and `check` exits 0.
#[track_caller]
fn assert_in_sync(ns: &Netns, wishes: &Path, what: &str) {
    let again = apply(ns, wishes, &format!("{what}: apply again"));
    assert!(
        executed(&again) == 0 && !again.stdout.contains("Executing"),
        "{what}: an apply in sync must run nothing\n{again}"
    );
    assert!(
        again.stdout.contains("Nothing to do"),
        "{what}: an apply in sync must print the `Nothing to do` line\n{again}"
    );
    ns.run_pyfw(wishes, &["check"])
        .expect_code(0, &format!("{what}: `pyfw check` in sync"));
}

/// A dump without its `#` lines and with chain counters zeroed: what stays
/// the same when nothing changed. Rule lines are kept byte for byte.
fn stable(save: &str) -> String {
    let mut out = String::new();
    for line in save.lines().filter(|l| !l.starts_with('#')) {
        match (line.starts_with(':'), line.rfind(" [")) {
            (true, Some(at)) if line.ends_with(']') => {
                out.push_str(&line[..at]);
                out.push_str(" [0:0]");
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

fn ip6tables_save(ns: &Netns) -> String {
    ns.ok(&["ip6tables-save"], "ip6tables-save")
}

/// Everything a namespace holds: IPv4 and IPv6 rules, and sets.
fn snapshot(ns: &Netns) -> String {
    format!(
        "{}--- ip6tables ---\n{}--- ipset ---\n{}",
        stable(&ns.iptables_save()),
        stable(&ip6tables_save(ns)),
        ns.ipset_save()
    )
}

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

/// The chains a dump declares, per table.
fn chain_names(save: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut table = String::new();
    for line in save.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.to_string();
            out.entry(table.clone()).or_default();
        } else if let Some(rest) = line.strip_prefix(':') {
            let chain = rest.split(' ').next().unwrap_or("").to_string();
            out.entry(table.clone()).or_default().insert(chain);
        }
    }
    out
}

/// One chain's `-A` lines.
fn chain_lines(save: &str, table: &str, chain: &str) -> Vec<String> {
    rule_lines(save)
        .remove(&(table.to_string(), chain.to_string()))
        .unwrap_or_default()
}

/// A chain's policy as the dump declares it, `None` if the chain is absent.
fn policy(save: &str, table: &str, chain: &str) -> Option<String> {
    let mut in_table = false;
    for line in save.lines() {
        if let Some(t) = line.strip_prefix('*') {
            in_table = t == table;
        } else if in_table && let Some(rest) = line.strip_prefix(':') {
            let mut words = rest.split(' ');
            if words.next() == Some(chain) {
                return words.next().map(String::from);
            }
        }
    }
    None
}

/// Whether a rule line carries `--comment NAME` (unquoted, as iptables
/// prints a one-word comment).
fn has_comment(line: &str, name: &str) -> bool {
    let needle = format!("--comment {name}");
    line.match_indices(&needle)
        .any(|(at, _)| matches!(line.as_bytes().get(at + needle.len()), None | Some(b' ')))
}

/// The wish names found in a chain's lines, in order.
fn names_in(lines: &[String], names: &[&str]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|l| names.iter().find(|n| has_comment(l, n)))
        .map(|n| n.to_string())
        .collect()
}

/// A set's members as `ipset save` prints them, `None` when it does not exist.
fn members(ns: &Netns, set: &str) -> Option<BTreeSet<String>> {
    let sets = pyfw::state::parse_ipset_save(&ns.ipset_save()).expect("parse ipset save");
    sets.get(set)
        .map(|s| s.members.iter().map(String::from).collect::<BTreeSet<_>>())
}

/// A set's type and create options, `None` when it does not exist.
fn header(ns: &Netns, set: &str) -> Option<(String, Vec<String>)> {
    let sets = pyfw::state::parse_ipset_save(&ns.ipset_save()).expect("parse ipset save");
    sets.get(set).map(|s| (s.kind.clone(), s.options.clone()))
}

fn strings(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The keys of pyfw's ownership record in the namespace.
fn record(ns: &Netns) -> Vec<String> {
    let sets = pyfw::state::parse_ipset_save(&ns.ipset_save()).expect("parse ipset save");
    pyfw::state::ownership::read(&pyfw::state::State {
        ipsets: sets,
        ..Default::default()
    })
    .iter()
    .map(|o| o.key())
    .collect()
}

/// Deletes a rule by hand, by the `-A CHAIN ...` line `iptables-save`
/// printed for it.
#[track_caller]
fn delete_by_hand(ns: &Netns, tool: &str, table: &str, line: &str) {
    let words = shlex::split(line).unwrap_or_else(|| panic!("bad quoting: {line}"));
    assert_eq!(words.first().map(String::as_str), Some("-A"), "{line}");
    let mut argv = vec![tool, "-w", "-t", table, "-D"];
    argv.extend(words[1..].iter().map(String::as_str));
    ns.ok(&argv, &format!("delete `{line}` by hand"));
}

/// No scratch chain of pyfw's is left in any table of either family.
#[track_caller]
fn assert_no_scratch_chain(ns: &Netns, what: &str) {
    for save in [ns.iptables_save(), ip6tables_save(ns)] {
        assert!(
            !save.contains(pyfw::kernel::learn::SCRATCH_PREFIX),
            "{what}: a scratch chain was left behind\n{save}"
        );
    }
}

/// A plan as `pyfw plan` prints it: each command with the `#` reason line
/// above it.
fn plan_commands(out: &Out) -> Vec<(String, String)> {
    let mut reason = String::new();
    let mut cmds = Vec::new();
    for line in out.stdout.lines() {
        if let Some(r) = line.strip_prefix("# ") {
            reason = r.to_string();
        } else if !line.trim().is_empty() {
            cmds.push((reason.clone(), line.to_string()));
        }
    }
    cmds
}

// ---- 1. shell-style wishes -------------------------------------------------

const SHELL_STYLE: &str = r#"pyfw_wishes:
  iptables:
    filter:
      INPUT:
        rules:
        - allow_ssh: -p tcp --dport 22 -j ACCEPT
        - allow_state: -m state --state ESTABLISHED,RELATED -j ACCEPT
        - allow_host: -s 10.0.0.1 -j ACCEPT
        - allow_web: -p tcp -m multiport --dports 80,443 -j ACCEPT
        - allow_ping: -p icmp --icmp-type echo-request -j ACCEPT
        - allow_lo_net: -i lo -s 10.0.0.0/8 -j ACCEPT
        - allow_dns: --protocol udp --destination-port 53 -j ACCEPT
        - reject_telnet: -p tcp --dport 23 -j REJECT
"#;

const SHELL_NAMES: &[&str] = &[
    "allow_ssh",
    "allow_state",
    "allow_host",
    "allow_web",
    "allow_ping",
    "allow_lo_net",
    "allow_dns",
    "reject_telnet",
];

/// Rules written the way people write them apply once, then read as
/// fulfilled; a rule deleted by hand is drift that `apply` repairs.
fn shell_style_wishes_read_as_fulfilled(backend: Backend) {
    let Some(ns) = Netns::new("shell_style", backend) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let wishes = write_wishes(dir.path(), "wishes.yaml", SHELL_STYLE);

    let first = apply(&ns, &wishes, "first apply");
    assert_eq!(
        executed(&first),
        SHELL_NAMES.len(),
        "the first apply inserts each rule once\n{first}"
    );
    let applied = ns.iptables_save();
    let input = chain_lines(&applied, "filter", "INPUT");
    assert_eq!(
        names_in(&input, SHELL_NAMES),
        SHELL_NAMES,
        "INPUT holds every wished rule, in order, once\n{applied}"
    );
    assert_eq!(input.len(), SHELL_NAMES.len(), "{applied}");
    for (name, printed) in [
        ("allow_host", "-s 10.0.0.1/32 "),
        ("allow_ssh", "-m tcp --dport 22 "),
        ("allow_lo_net", "-s 10.0.0.0/8 -i lo "),
    ] {
        let line = input.iter().find(|l| has_comment(l, name)).unwrap();
        assert!(
            line.contains(printed),
            "{name} as iptables prints it: {line}"
        );
    }
    assert_in_sync(&ns, &wishes, "after the first apply");

    // Deleting one rule by hand, by its iptables-save text, is drift.
    let web = input
        .iter()
        .find(|l| has_comment(l, "allow_web"))
        .unwrap()
        .clone();
    delete_by_hand(&ns, "iptables", "filter", &web);
    let check = ns.run_pyfw(&wishes, &["check"]);
    check.expect_code(2, "`pyfw check` after deleting allow_web by hand");
    assert!(
        check.stdout.contains("allow_web"),
        "the plan `check` prints restores allow_web\n{check}"
    );
    let repair = apply(&ns, &wishes, "apply after the hand deletion");
    assert_eq!(
        executed(&repair),
        1,
        "the repair puts back exactly the deleted rule\n{repair}"
    );
    assert_text_eq(
        &stable(&ns.iptables_save()),
        &stable(&applied),
        "the repair restores the rules as the first apply left them",
    );
    assert_in_sync(&ns, &wishes, "after the repair");
    assert_no_scratch_chain(&ns, "shell-style wishes");
}

// ---- 2. a wish iptables rejects -------------------------------------------

/// Valid wishes with room for a bad rules item in INPUT, in MYCHAIN (which
/// pyfw would create) and in ip6tables' INPUT.
fn rejected_wishes(bad_input: &str, bad_mychain: &str, bad_v6: &str) -> String {
    format!(
        r#"pyfw_wishes:
  ipsets:
    known_hosts:
      type: hash:ip
      members_equal:
      - 192.0.2.10
    newset:
      type: hash:ip
      members_equal:
      - 192.0.2.11
  iptables:
    filter:
      INPUT:
        default_action: DROP
        rules:
        - allow_ssh: -p tcp --dport 22 -j ACCEPT
        - allow_known: -m set --match-set known_hosts src -j ACCEPT
{bad_input}
        - allow_dns: -p udp --dport 53 -j ACCEPT
      MYCHAIN:
        rules:
        - my_first: -s 10.0.0.0/8 -j RETURN
{bad_mychain}
  ip6tables:
    filter:
      INPUT:
        rules:
        - allow_ssh6: -p tcp --dport 22 -j ACCEPT
{bad_v6}
"#
    )
}

/// A wish iptables rejects is reported by its `table/chain/NAME` with
/// iptables' own message; pyfw exits 1 and nothing changes.
fn rejected_wish_names_itself_and_changes_nothing(backend: Backend) {
    let Some(ns) = Netns::new("rejected_port", backend) else {
        return;
    };
    // Something to keep: a foreign rule and set, and a set pyfw would manage.
    ipt(&ns, "-A INPUT -s 198.51.100.7/32 -j DROP");
    ns.ok(&["ipset", "create", "foreign", "hash:ip"], "ipset create");
    ns.ok(
        &["ipset", "create", "known_hosts", "hash:ip"],
        "ipset create",
    );
    // IPv6 holds a foreign rule too (and so a filter table to compare).
    ns.ip6tables(&["-A", "INPUT", "-s", "2001:db8::7", "-j", "DROP"]);
    let dir = tempfile::tempdir().unwrap();
    let bad = "        - bad_port: -p tcp --dport 99999 -j ACCEPT";
    let bad_set = "        - bad_port: -m set --match-set newset src -p tcp --dport 99999 -j DROP";
    let bad6 = "        - bad_port6: -p tcp --dport 99999 -j ACCEPT";
    // `names_new_set`: the rule names a set that only the apply creates,
    // so iptables can judge it only once the set exists: `plan` cannot tell,
    // and the apply creates the sets, then fails and removes them again.
    for (case, text, label, names_new_set) in [
        (
            "in a built-in chain",
            rejected_wishes(bad, "", ""),
            "filter/INPUT/bad_port",
            false,
        ),
        (
            "in a chain pyfw would create",
            rejected_wishes("", bad, ""),
            "filter/MYCHAIN/bad_port",
            false,
        ),
        (
            "naming a set pyfw would create",
            rejected_wishes(bad_set, "", ""),
            "filter/INPUT/bad_port",
            true,
        ),
        (
            "in ip6tables",
            rejected_wishes("", "", bad6),
            "ip6tables:filter/INPUT/bad_port6",
            false,
        ),
    ] {
        let wishes = write_wishes(dir.path(), "wishes.yaml", &text);
        let before = snapshot(&ns);
        let out = ns.run_pyfw(&wishes, &["apply"]);
        out.expect_code(1, &format!("apply with a rejected wish {case}"));
        assert!(
            out.stderr.contains(label),
            "{case}: the error names the wish {label}\n{out}"
        );
        assert!(
            out.stderr.contains("invalid port/service") && out.stderr.contains("99999"),
            "{case}: the error carries iptables' own message\n{out}"
        );
        assert!(
            !out.stdout.contains("Executing command") || names_new_set,
            "{case}: nothing runs before the wish is checked\n{out}"
        );
        assert!(
            !out.stdout
                .lines()
                .any(|l| l.starts_with("Executing") && l.contains("tables")),
            "{case}: no rule command runs before the wish is checked\n{out}"
        );
        assert_text_eq(
            &snapshot(&ns),
            &before,
            &format!("{case}: a rejected wish changes nothing\n{out}"),
        );
        assert_no_scratch_chain(&ns, case);
        // `plan` and `check` say the same, and change nothing either.
        for cmd in ["plan", "check"] {
            let out = ns.run_pyfw(&wishes, &[cmd]);
            if names_new_set {
                assert!(out.code().is_some(), "{case}: {cmd}\n{out}");
                continue;
            }
            out.expect_code(1, &format!("`pyfw {cmd}` with a rejected wish {case}"));
            assert!(out.stderr.contains(label), "{case}: {cmd}\n{out}");
        }
        assert_text_eq(&snapshot(&ns), &before, case);
        assert_no_scratch_chain(&ns, case);
    }
}

// ---- 3. withdrawn wishes ---------------------------------------------------

const WITHDRAW_A: &str = r#"pyfw_wishes:
  ipsets:
    blocked:
      type: hash:net
      members_equal:
      - 192.0.2.0/24
  iptables:
    filter:
      INPUT:
        rules:
        - keep_ssh: -p tcp --dport 22 -j ACCEPT
        - drop_telnet: -p tcp --dport 23 -j DROP
        - to_mychain: -j MYCHAIN
        - old_web: -p tcp -m multiport --dports 80,443 -j ACCEPT
        - keep_dns: -p udp --dport 53 -j ACCEPT
      MYCHAIN:
        rules:
        - block_listed: -m set --match-set blocked src -j DROP
      DOCKER:
        rules:
        - docker_guard: -s 10.9.0.0/16 -j RETURN
"#;

const WITHDRAW_B: &str = r#"pyfw_wishes:
  iptables:
    filter:
      INPUT:
        rules:
        - keep_ssh: -p tcp --dport 22 -j ACCEPT
        - keep_dns: -p udp --dport 53 -j ACCEPT
"#;

/// The lines of `after` that are not in `before`, per chain.
fn added_lines(before: &str, after: &str) -> BTreeMap<(String, String), Vec<String>> {
    let before = rule_lines(before);
    rule_lines(after)
        .into_iter()
        .map(|(key, lines)| {
            let old = before.get(&key).cloned().unwrap_or_default();
            let new: Vec<String> = lines.into_iter().filter(|l| !old.contains(l)).collect();
            (key, new)
        })
        .collect()
}

/// A withdrawn wish disappears on the next apply, with the chain and set
/// pyfw made for it, while every foreign rule stays where it was, even
/// one whose comment is a withdrawn wish's name.
fn withdrawn_wishes_leave_foreign_rules(backend: Backend) {
    let Some(ns) = Netns::new("withdrawn", backend) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let a = write_wishes(dir.path(), "a.yaml", WITHDRAW_A);
    let b = write_wishes(dir.path(), "b.yaml", WITHDRAW_B);

    // Other programs' rules, there before pyfw: uncommented, commented with
    // spaces, and rules in FORWARD named like pyfw's wishes (one with the
    // very text pyfw's drop_telnet gets in INPUT). And DOCKER, a chain that
    // pyfw did not create.
    ipt(&ns, "-A INPUT -s 198.51.100.7/32 -j DROP");
    ipt(
        &ns,
        r#"-A INPUT -p tcp -m tcp --dport 8080 -m comment --comment "kept by ops team" -j ACCEPT"#,
    );
    ipt(
        &ns,
        r#"-A FORWARD -p tcp -m tcp --dport 23 -m comment --comment drop_telnet -j DROP"#,
    );
    ipt(
        &ns,
        r#"-A FORWARD -p tcp -m multiport --dports 80,443 -m comment --comment old_web -j ACCEPT"#,
    );
    ipt(&ns, "-N DOCKER");
    let before_a = ns.iptables_save();

    apply(&ns, &a, "apply wishes A");
    assert_in_sync(&ns, &a, "after wishes A");
    let after_a = ns.iptables_save();
    assert!(
        after_a.contains(":MYCHAIN"),
        "pyfw created MYCHAIN\n{after_a}"
    );
    assert!(members(&ns, "blocked").is_some(), "pyfw created the set");
    // pyfw's own lines: what apply A added.
    let owned = added_lines(&before_a, &after_a);

    // Later, other programs add rules: one in INPUT named like a wish but
    // with other text (pyfw never owned it), one between pyfw's rules.
    ipt(
        &ns,
        r#"-A INPUT -p tcp -m tcp --dport 2323 -m comment --comment drop_telnet -j DROP"#,
    );
    ipt(
        &ns,
        r#"-I INPUT 3 -s 198.51.100.9/32 -m comment --comment "inserted later, between pyfw's rules" -j DROP"#,
    );
    let before_b = ns.iptables_save();
    let foreign = |save: &str| -> BTreeMap<(String, String), Vec<String>> {
        rule_lines(save)
            .into_iter()
            .map(|(key, lines)| {
                let mine = owned.get(&key).cloned().unwrap_or_default();
                let lines = lines.into_iter().filter(|l| !mine.contains(l)).collect();
                (key, lines)
            })
            .filter(|(_, lines): &(_, Vec<String>)| !lines.is_empty())
            .collect()
    };
    let foreign_before = foreign(&before_b);
    assert_eq!(
        foreign_before.values().map(Vec::len).sum::<usize>(),
        6,
        "six foreign rules\n{before_b}"
    );

    // The plan names why each removal happens.
    let plan = ns.run_pyfw(&b, &["plan"]);
    plan.expect_ok("`pyfw plan` for wishes B");
    let cmds = plan_commands(&plan);
    let removals: &[(&str, &[&str])] = &[
        (
            "drop_telnet",
            &["-D INPUT", "--dport 23 ", "--comment drop_telnet"],
        ),
        (
            "to_mychain",
            &["-D INPUT", "--comment to_mychain", "-j MYCHAIN"],
        ),
        ("old_web", &["-D INPUT", "--comment old_web"]),
        ("block_listed", &["-D MYCHAIN", "--comment block_listed"]),
        ("docker_guard", &["-D DOCKER", "--comment docker_guard"]),
        ("chain MYCHAIN", &["-X MYCHAIN"]),
        ("set blocked", &["destroy blocked"]),
    ];
    for (what, parts) in removals {
        let found: Vec<&(String, String)> = cmds
            .iter()
            .filter(|(_, c)| parts.iter().all(|p| c.contains(p)))
            .collect();
        assert_eq!(found.len(), 1, "one command removes {what}\n{plan}");
        assert!(
            found[0].0.contains("withdrawn"),
            "the plan says why {what} goes (\"withdrawn\"): `{}`\n{plan}",
            found[0].0
        );
    }
    for (_, c) in &cmds {
        for foreign_text in [
            "-X DOCKER",
            "2323",
            "kept by ops team",
            "198.51.100.7",
            "FORWARD",
        ] {
            assert!(
                !c.contains(foreign_text),
                "the plan must not touch `{foreign_text}`: {c}\n{plan}"
            );
        }
    }

    let applied_b = apply(&ns, &b, "apply wishes B");
    let after_b = ns.iptables_save();
    let ctx = format!("{applied_b}\n--- before ---\n{before_b}\n--- after ---\n{after_b}");
    assert_eq!(
        foreign(&after_b),
        foreign_before,
        "every foreign rule stays, byte for byte and in its order\n{ctx}"
    );
    let input = chain_lines(&after_b, "filter", "INPUT");
    let mut wanted: Vec<String> = owned[&("filter".to_string(), "INPUT".to_string())]
        .iter()
        .filter(|l| has_comment(l, "keep_ssh") || has_comment(l, "keep_dns"))
        .cloned()
        .collect();
    wanted.extend(foreign_before[&("filter".to_string(), "INPUT".to_string())].clone());
    assert_eq!(
        input, wanted,
        "INPUT: the kept wishes, then the foreign rules\n{ctx}"
    );
    assert!(
        chain_lines(&after_b, "filter", "MYCHAIN").is_empty() && !after_b.contains(":MYCHAIN "),
        "MYCHAIN, made by pyfw and now empty and unreferenced, is deleted\n{ctx}"
    );
    assert_eq!(
        policy(&after_b, "filter", "DOCKER").as_deref(),
        Some("-"),
        "DOCKER existed before pyfw: it stays, even empty and unreferenced\n{ctx}"
    );
    assert!(
        chain_lines(&after_b, "filter", "DOCKER").is_empty(),
        "{ctx}"
    );
    assert_eq!(
        members(&ns, "blocked"),
        None,
        "the withdrawn set is destroyed"
    );
    let keys = record(&ns);
    for gone in [
        "drop_telnet",
        "to_mychain",
        "old_web",
        "block_listed",
        "docker_guard",
        "MYCHAIN",
        "blocked",
        "DOCKER",
    ] {
        assert!(
            !keys.iter().any(|k| k.split(' ').any(|w| w == gone)),
            "the record forgets {gone}: {keys:#?}"
        );
    }
    assert_in_sync(&ns, &b, "after wishes B");
}

const JUMP: &str = r#"pyfw_wishes:
  iptables:
    filter:
      INPUT:
        rules:
        - to_new: -p tcp --dport 8080 -j NEWCHAIN
      NEWCHAIN:
        rules:
        - in_new: -s 10.0.0.0/8 -j RETURN
"#;

/// The commonest use of a user chain: a jump from a built-in chain to a
/// chain the same wishes create.
fn jump_to_a_chain_pyfw_creates(backend: Backend) {
    let Some(ns) = Netns::new("jump_new", backend) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let wishes = write_wishes(dir.path(), "wishes.yaml", JUMP);
    let out = apply(&ns, &wishes, "apply a jump to a new chain");
    let save = ns.iptables_save();
    assert_eq!(
        names_in(&chain_lines(&save, "filter", "INPUT"), &["to_new"]),
        ["to_new"],
        "{out}\n{save}"
    );
    assert_eq!(
        names_in(&chain_lines(&save, "filter", "NEWCHAIN"), &["in_new"]),
        ["in_new"],
        "{out}\n{save}"
    );
    assert_in_sync(&ns, &wishes, "jump to a new chain");
}

const SET_RULE_A: &str = r#"pyfw_wishes:
  ipsets:
    admins:
      type: hash:ip
      members_equal:
      - 192.0.2.1
  iptables:
    filter:
      INPUT:
        rules:
        - admin_ssh: -p tcp --dport 22 -m set --match-set admins src -j ACCEPT
"#;

const SET_RULE_B: &str = r#"pyfw_wishes:
  iptables:
    filter:
      INPUT:
        rules:
        - admin_ssh: -p tcp --dport 22 -s 192.0.2.1 -j ACCEPT
"#;

/// A set is withdrawn in the same edit that makes the only rule using it
/// stop using it: after one apply nothing references the set, so it is
/// gone, and a second apply has nothing to do.
fn set_withdrawn_while_its_rule_changes(backend: Backend) {
    let Some(ns) = Netns::new("set_rule_change", backend) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let a = write_wishes(dir.path(), "a.yaml", SET_RULE_A);
    let b = write_wishes(dir.path(), "b.yaml", SET_RULE_B);
    apply(&ns, &a, "apply the set and its rule");
    assert_in_sync(&ns, &a, "set and rule");
    let out = apply(&ns, &b, "withdraw the set, change the rule");
    let save = ns.iptables_save();
    let input = chain_lines(&save, "filter", "INPUT");
    assert_eq!(input.len(), 1, "{out}\n{save}");
    assert!(input[0].contains("-s 192.0.2.1/32 "), "{out}\n{save}");
    assert_eq!(
        members(&ns, "admins"),
        None,
        "the withdrawn set, unreferenced after the apply, is destroyed by it\n{out}"
    );
    assert_in_sync(&ns, &b, "after withdrawing the set");
}

const LISTED_A: &str = r#"pyfw_wishes:
  ipsets:
    old_hosts:
      type: hash:ip
      members_equal:
      - 192.0.2.1
    kept_hosts:
      type: hash:ip
      members_equal:
      - 192.0.2.2
  iptables:
    filter:
      INPUT:
        rules:
        - old: -m set --match-set old_hosts src -j ACCEPT
"#;

const LISTED_B: &str = r#"pyfw_wishes:
  ipsets:
    kept_hosts:
      type: hash:ip
      members_equal:
      - 192.0.2.2
"#;

/// A withdrawn set that another program still lists in its own list:set is
/// in use: the apply succeeds and keeps it, and once the listing is gone
/// the next apply destroys it.
fn withdrawn_set_still_listed_elsewhere(backend: Backend) {
    let Some(ns) = Netns::new("set_listed", backend) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let a = write_wishes(dir.path(), "a.yaml", LISTED_A);
    let b = write_wishes(dir.path(), "b.yaml", LISTED_B);
    apply(&ns, &a, "apply the sets");
    ns.ok(
        &["ipset", "create", "their_list", "list:set"],
        "ipset create",
    );
    ns.ok(&["ipset", "add", "their_list", "old_hosts"], "ipset add");

    let out = apply(&ns, &b, "withdraw a set another program lists");
    assert!(
        chain_lines(&ns.iptables_save(), "filter", "INPUT").is_empty(),
        "the withdrawn rule goes\n{out}"
    );
    assert_eq!(
        members(&ns, "old_hosts"),
        Some(strings(&["192.0.2.1"])),
        "a set still listed elsewhere is in use: kept\n{out}"
    );
    assert_eq!(members(&ns, "their_list"), Some(strings(&["old_hosts"])));
    assert_in_sync(&ns, &b, "while the set is listed elsewhere");

    ns.ok(&["ipset", "del", "their_list", "old_hosts"], "ipset del");
    let out = apply(&ns, &b, "apply once the listing is gone");
    assert_eq!(members(&ns, "old_hosts"), None, "{out}");
    assert_eq!(members(&ns, "kept_hosts"), Some(strings(&["192.0.2.2"])));
    assert_in_sync(&ns, &b, "after the set is gone");
}

// ---- 4. ownership per namespace -------------------------------------------

const NS1_WISHES: &str = r#"pyfw_wishes:
  ipsets:
    web_hosts:
      type: hash:ip
      members_equal:
      - 192.0.2.1
  iptables:
    filter:
      INPUT:
        rules:
        - web: -p tcp --dport 80 -m set --match-set web_hosts src -j ACCEPT
        - ssh: -p tcp --dport 22 -j ACCEPT
"#;

const NS1_WITHDRAWN: &str = r#"pyfw_wishes:
  iptables:
    filter:
      INPUT:
        rules:
        - ssh: -p tcp --dport 22 -j ACCEPT
"#;

const NS2_WISHES: &str = r#"pyfw_wishes:
  ipsets:
    web_hosts:
      type: hash:ip
      members_equal:
      - 192.0.2.2
    dns_hosts:
      type: hash:ip
      members_equal:
      - 192.0.2.53
  iptables:
    filter:
      INPUT:
        rules:
        - web: -p tcp --dport 80 -m set --match-set web_hosts src -j ACCEPT
        - dns: -p udp --dport 53 -m set --match-set dns_hosts src -j ACCEPT
      MINE:
        rules:
        - mine: -s 10.0.0.0/8 -j RETURN
"#;

const NS2_WITHDRAWN: &str = r#"pyfw_wishes:
  ipsets:
    web_hosts:
      type: hash:ip
      members_equal:
      - 192.0.2.2
  iptables:
    filter:
      INPUT:
        rules:
        - web: -p tcp --dport 80 -m set --match-set web_hosts src -j ACCEPT
"#;

/// Two namespaces side by side: what pyfw owns in one is nothing to pyfw
/// in the other, even rules and sets of the same name and text.
fn ownership_belongs_to_one_namespace(backend: Backend) {
    let Some(ns1) = Netns::new("owner_one", backend) else {
        return;
    };
    let Some(ns2) = Netns::new("owner_two", backend) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let w1 = write_wishes(dir.path(), "one.yaml", NS1_WISHES);
    let w1b = write_wishes(dir.path(), "one-withdrawn.yaml", NS1_WITHDRAWN);
    let w2 = write_wishes(dir.path(), "two.yaml", NS2_WISHES);
    let w2b = write_wishes(dir.path(), "two-withdrawn.yaml", NS2_WITHDRAWN);

    apply(&ns1, &w1, "apply in namespace one");
    apply(&ns2, &w2, "apply in namespace two");
    assert_in_sync(&ns1, &w1, "namespace one");
    assert_in_sync(&ns2, &w2, "namespace two");

    // In namespace one, someone else makes exactly what pyfw owns in
    // namespace two (the rule `dns`, its set, an empty chain MINE): pyfw in
    // namespace one never owned them, so a record shared between the
    // namespaces would take them for withdrawn wishes.
    let save2 = ns2.iptables_save();
    let dns = chain_lines(&save2, "filter", "INPUT")
        .into_iter()
        .find(|l| has_comment(l, "dns"))
        .expect("dns in namespace two");
    ns1.ok(&["ipset", "create", "dns_hosts", "hash:ip"], "ipset create");
    ipt(&ns1, &dns);
    ipt(&ns1, "-N MINE");

    let two_before = snapshot(&ns2);
    let one_before = ns1.iptables_save();
    let out = apply(&ns1, &w1b, "withdraw in namespace one");
    let one_after = ns1.iptables_save();
    assert_eq!(
        names_in(
            &chain_lines(&one_after, "filter", "INPUT"),
            &["web", "ssh", "dns"]
        ),
        ["ssh", "dns"],
        "namespace one: `web` withdrawn, the hand-made `dns` kept\n{out}\n{one_before}\n{one_after}"
    );
    assert_eq!(
        members(&ns1, "web_hosts"),
        None,
        "namespace one's set is withdrawn"
    );
    assert_eq!(
        members(&ns1, "dns_hosts"),
        Some(BTreeSet::new()),
        "namespace one: the hand-made set stays\n{out}"
    );
    assert!(
        one_after.contains(":MINE - "),
        "namespace one: the hand-made chain MINE stays\n{out}\n{one_after}"
    );
    assert_text_eq(
        &snapshot(&ns2),
        &two_before,
        "withdrawing in namespace one leaves namespace two alone",
    );
    assert_in_sync(&ns2, &w2, "namespace two after namespace one withdrew");

    // And the other way round.
    let one_before = snapshot(&ns1);
    apply(&ns2, &w2b, "withdraw in namespace two");
    let two_after = ns2.iptables_save();
    assert_eq!(
        names_in(&chain_lines(&two_after, "filter", "INPUT"), &["web", "dns"]),
        ["web"],
        "namespace two: only `web` is left\n{two_after}"
    );
    assert!(
        !two_after.contains(":MINE "),
        "namespace two: MINE is deleted\n{two_after}"
    );
    assert_eq!(
        members(&ns2, "dns_hosts"),
        None,
        "namespace two: dns_hosts is withdrawn"
    );
    assert_eq!(members(&ns2, "web_hosts"), Some(strings(&["192.0.2.2"])));
    assert_text_eq(
        &snapshot(&ns1),
        &one_before,
        "withdrawing in namespace two leaves namespace one alone",
    );
    assert_in_sync(&ns1, &w1b, "namespace one at the end");
    assert_in_sync(&ns2, &w2b, "namespace two at the end");
}

// ---- 5. IPv6 ---------------------------------------------------------------

const IPV6: &str = r#"pyfw_wishes:
  ipsets:
    v6hosts:
      type: hash:ip
      header: family inet6
      members_equal:
      - 2001:db8::1
      - 2001:db8:0:0::2
      - 2001:0DB8::3/128
    v6nets:
      type: hash:net
      header: family inet6
      members_equal:
      - 2001:db8:1::/48
      - 2001:DB8:2:0:0::/64
  iptables:
    filter:
      FORWARD:
        default_action: DROP
  ip6tables:
    filter:
      INPUT:
        default_action: DROP
        rules:
        - allow_established: -m state --state ESTABLISHED,RELATED -j ACCEPT
        - allow_icmpv6: -p ipv6-icmp -j ACCEPT
        - allow_ssh: -p tcp --dport 22 -j ACCEPT
        - allow_admin: -s 2001:db8::10 -p tcp --dport 443 -j ACCEPT
        - allow_hosts: -m set --match-set v6hosts src -j ACCEPT
        - allow_nets: -p udp --dport 53 -m set --match-set v6nets src -j ACCEPT
"#;

const IPV6_NAMES: &[&str] = &[
    "allow_established",
    "allow_icmpv6",
    "allow_ssh",
    "allow_admin",
    "allow_hosts",
    "allow_nets",
];

/// ip6tables wishes, a DROP policy and inet6 sets, end to end; policies
/// stay per family.
fn ipv6_end_to_end(backend: Backend) {
    let Some(ns) = Netns::new("ipv6", backend) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let wishes = write_wishes(dir.path(), "wishes.yaml", IPV6);
    let out = apply(&ns, &wishes, "apply IPv6 wishes");

    let v6 = ip6tables_save(&ns);
    let v4 = ns.iptables_save();
    let ctx = format!("{out}\n--- ip6tables-save ---\n{v6}\n--- iptables-save ---\n{v4}");
    let input6 = chain_lines(&v6, "filter", "INPUT");
    assert_eq!(names_in(&input6, IPV6_NAMES), IPV6_NAMES, "{ctx}");
    assert_eq!(input6.len(), IPV6_NAMES.len(), "{ctx}");
    let admin = input6
        .iter()
        .find(|l| has_comment(l, "allow_admin"))
        .unwrap();
    assert!(admin.contains("-s 2001:db8::10/128 "), "{ctx}");
    assert!(
        input6
            .iter()
            .any(|l| has_comment(l, "allow_icmpv6") && l.contains("-p ipv6-icmp ")),
        "{ctx}"
    );
    assert_eq!(
        policy(&v6, "filter", "INPUT").as_deref(),
        Some("DROP"),
        "{ctx}"
    );
    assert_eq!(
        policy(&v6, "filter", "FORWARD").as_deref(),
        Some("ACCEPT"),
        "an IPv4 policy wish leaves IPv6 alone\n{ctx}"
    );
    assert_eq!(
        policy(&v4, "filter", "INPUT").as_deref(),
        Some("ACCEPT"),
        "an IPv6 policy wish leaves IPv4 alone\n{ctx}"
    );
    assert_eq!(
        policy(&v4, "filter", "FORWARD").as_deref(),
        Some("DROP"),
        "{ctx}"
    );
    assert!(
        chain_lines(&v4, "filter", "INPUT").is_empty(),
        "no IPv6 rule lands in iptables\n{ctx}"
    );

    assert_eq!(
        members(&ns, "v6hosts"),
        Some(strings(&["2001:db8::1", "2001:db8::2", "2001:db8::3"])),
        "{}",
        ns.ipset_save()
    );
    assert_eq!(
        members(&ns, "v6nets"),
        Some(strings(&["2001:db8:1::/48", "2001:db8:2::/64"])),
        "{}",
        ns.ipset_save()
    );
    for set in ["v6hosts", "v6nets"] {
        let (_, options) = header(&ns, set).unwrap();
        assert!(
            options.windows(2).any(|w| w == ["family", "inet6"]),
            "{set} is an inet6 set: {options:?}"
        );
    }
    assert_in_sync(&ns, &wishes, "IPv6 after apply");

    // Drift in IPv6 is seen and repaired.
    let ssh = input6.iter().find(|l| has_comment(l, "allow_ssh")).unwrap();
    let args = shlex::split(ssh.strip_prefix("-A INPUT ").unwrap()).unwrap();
    let mut argv = vec!["ip6tables", "-w", "-D", "INPUT"];
    argv.extend(args.iter().map(String::as_str));
    ns.ok(&argv, "ip6tables -D");
    ns.ok(&["ipset", "del", "v6hosts", "2001:db8::2"], "ipset del");
    ns.run_pyfw(&wishes, &["check"])
        .expect_code(2, "`check` after IPv6 drift");
    let repair = apply(&ns, &wishes, "repair IPv6 drift");
    assert_eq!(executed(&repair), 2, "{repair}");
    assert_text_eq(&stable(&ip6tables_save(&ns)), &stable(&v6), "IPv6 repaired");
    assert_in_sync(&ns, &wishes, "IPv6 after the repair");
}

// ---- 6. ipsets in full -----------------------------------------------------

const IPSETS: &str = r#"pyfw_wishes:
  ipsets:
    hosts:
      type: hash:ip
      members_equal:
      - 10.0.0.1
      - 10.0.0.9/32
      - 10.0.0.3
    nets:
      type: hash:net
      members_equal:
      - 10.1.0.0/16
      - 10.2.3.4/24
      - 192.0.2.1/32
    svc:
      type: hash:ip,port
      members_equal:
      - 10.0.0.1,80
      - 10.0.0.2,udp:53
    ifnets:
      type: hash:net,iface
      members_equal:
      - 10.0.0.0/8,eth0
      - 192.168.1.0/24,lo
    ports:
      type: bitmap:port
      header: range 1-1024
      members_equal:
      - 22
      - 80
      - 443
    sized:
      type: hash:ip
      header: family inet maxelem 4096
      members_equal:
      - 10.5.0.1
    all:
      type: list:set
      members_equal:
      - hosts
      - nets
"#;

/// The members `ipset save` prints for [`IPSETS`].
fn ipsets_wanted() -> Vec<(&'static str, BTreeSet<String>)> {
    vec![
        ("hosts", strings(&["10.0.0.1", "10.0.0.9", "10.0.0.3"])),
        (
            "nets",
            strings(&["10.1.0.0/16", "10.2.3.0/24", "192.0.2.1"]),
        ),
        ("svc", strings(&["10.0.0.1,tcp:80", "10.0.0.2,udp:53"])),
        ("ifnets", strings(&["10.0.0.0/8,eth0", "192.168.1.0/24,lo"])),
        ("ports", strings(&["22", "80", "443"])),
        ("sized", strings(&["10.5.0.1"])),
        ("all", strings(&["hosts", "nets"])),
    ]
}

#[track_caller]
fn assert_ipsets_as_wished(ns: &Netns, what: &str) {
    let save = ns.ipset_save();
    for (set, wanted) in ipsets_wanted() {
        assert_eq!(
            members(ns, set).as_ref(),
            Some(&wanted),
            "{what}: members of {set}\n{save}"
        );
    }
}

/// Sets of every common type get exact membership; equal sets never churn,
/// whatever options ipset chose; a hand edit is corrected by exactly the
/// difference.
fn ipsets_in_full(backend: Backend) {
    let Some(ns) = Netns::new("ipsets_full", backend) else {
        return;
    };
    // A set that exists already, with options the wish does not state.
    for argv in [
        &[
            "ipset", "create", "nets", "hash:net", "hashsize", "4096", "maxelem", "131072",
        ][..],
        &["ipset", "add", "nets", "10.1.0.0/16"],
        &["ipset", "add", "nets", "10.99.0.0/16"],
    ] {
        ns.ok(argv, "prepare nets");
    }
    let dir = tempfile::tempdir().unwrap();
    let wishes = write_wishes(dir.path(), "wishes.yaml", IPSETS);
    let out = apply(&ns, &wishes, "apply the sets");
    assert_ipsets_as_wished(&ns, &format!("after apply\n{out}"));
    let (kind, options) = header(&ns, "nets").unwrap();
    assert_eq!(kind, "hash:net");
    for pair in [["hashsize", "4096"], ["maxelem", "131072"]] {
        assert!(
            options.windows(2).any(|w| w == pair),
            "options the wish does not state are not a change: nets was rebuilt: {options:?}\n{out}"
        );
    }
    let sized = header(&ns, "sized").unwrap().1;
    assert!(
        sized.windows(2).any(|w| w == ["maxelem", "4096"]),
        "{sized:?}"
    );
    let ports = header(&ns, "ports").unwrap();
    assert_eq!(ports.0, "bitmap:port");
    assert!(
        ports.1.windows(2).any(|w| w == ["range", "1-1024"]),
        "{ports:?}"
    );
    assert_in_sync(&ns, &wishes, "sets after apply");

    // Hand edits: one extra and one missing member here and there.
    for argv in [
        &["ipset", "add", "hosts", "10.0.0.77"][..],
        &["ipset", "del", "nets", "10.2.3.0/24"],
        &["ipset", "add", "svc", "10.0.0.5,udp:5353"],
        &["ipset", "del", "ports", "443"],
        &["ipset", "del", "all", "nets"],
    ] {
        ns.ok(argv, "hand edit");
    }
    let plan = ns.run_pyfw(&wishes, &["check"]);
    plan.expect_code(2, "`check` after hand edits");
    let planned: BTreeSet<String> = plan_commands(&plan)
        .into_iter()
        .map(|(_, c)| {
            c.split_once(' ')
                .map_or(c.clone(), |(_, rest)| rest.to_string())
        })
        .collect();
    assert_eq!(
        planned,
        strings(&[
            "del hosts 10.0.0.77",
            "add nets 10.2.3.0/24",
            "del svc 10.0.0.5,udp:5353",
            "add ports 443",
            "add all nets",
        ]),
        "the plan corrects exactly the difference\n{plan}"
    );
    let repair = apply(&ns, &wishes, "repair the sets");
    assert_eq!(executed(&repair), 5, "{repair}");
    assert_ipsets_as_wished(&ns, &format!("after the repair\n{repair}"));
    assert_in_sync(&ns, &wishes, "sets after the repair");
}

const LIST_SET_FIRST: &str = r#"pyfw_wishes:
  ipsets:
    all:
      type: list:set
      members_equal:
      - first
      - second
    first:
      type: hash:ip
      members_equal:
      - 10.0.0.1
    second:
      type: hash:net
      members_equal:
      - 10.1.0.0/16
  iptables:
    filter:
      INPUT:
        rules:
        - listed: -m set --match-set all src -j DROP
"#;

/// A list:set may be wished before the sets it lists: YAML maps have no
/// order people think about.
fn list_set_wished_before_its_members(backend: Backend) {
    let Some(ns) = Netns::new("list_set_first", backend) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let wishes = write_wishes(dir.path(), "wishes.yaml", LIST_SET_FIRST);
    let out = apply(&ns, &wishes, "apply a list:set listed before its members");
    assert_eq!(
        members(&ns, "all"),
        Some(strings(&["first", "second"])),
        "{out}"
    );
    assert_eq!(members(&ns, "first"), Some(strings(&["10.0.0.1"])), "{out}");
    assert_eq!(
        members(&ns, "second"),
        Some(strings(&["10.1.0.0/16"])),
        "{out}"
    );
    assert_in_sync(&ns, &wishes, "list:set");
}

const ROUNDED: &str = r#"pyfw_wishes:
  ipsets:
    rounded:
      type: hash:ip
      header: hashsize 1000 maxelem 1000
      members_equal:
      - 10.0.0.1
"#;

/// ipset rounds a stated `hashsize` up to a power of two (1000 is saved as
/// 1024): an option as the kernel keeps it is not a change, or the set
/// would be rebuilt on every apply.
fn stated_option_the_kernel_rounds(backend: Backend) {
    let Some(ns) = Netns::new("set_rounded", backend) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let wishes = write_wishes(dir.path(), "wishes.yaml", ROUNDED);
    let out = apply(&ns, &wishes, "apply a set with hashsize 1000");
    let options = header(&ns, "rounded").unwrap().1;
    assert!(
        options.windows(2).any(|w| w == ["maxelem", "1000"]),
        "{options:?}\n{out}"
    );
    assert_eq!(members(&ns, "rounded"), Some(strings(&["10.0.0.1"])));
    assert_in_sync(&ns, &wishes, "a set whose hashsize the kernel rounded");
}

// ---- 7. set changes under traffic ------------------------------------------

/// The probe set and a rule matching it; `header` and `kind` vary.
fn probe_wishes(kind: &str, header: &str) -> String {
    let header = if header.is_empty() {
        String::new()
    } else {
        format!("      header: {header}\n")
    };
    format!(
        r#"pyfw_wishes:
  ipsets:
    probe:
      type: {kind}
{header}      members_equal:
      - 10.0.0.1
      - 10.0.0.2
  iptables:
    filter:
      INPUT:
        rules:
        - probe_hit: -p udp --dport 9 -m set --match-set probe src -j ACCEPT
"#
    )
}

/// What the probes saw while pyfw applied.
#[derive(Debug, Default)]
struct Probed {
    /// `ipset test probe 10.0.0.1` runs.
    tests: usize,
    /// Runs that said the member is missing.
    not_in_set: Vec<String>,
    /// Runs that said the set does not exist.
    missing: Vec<String>,
    /// Runs that failed otherwise.
    other: Vec<String>,
    /// UDP packets sent from 10.0.0.1 to port 9.
    sent: u64,
}

/// How many threads run `ipset test` side by side.
const PROBE_THREADS: usize = 4;

/// How long a probe may run at most, whatever happens.
const PROBE_LIMIT: Duration = Duration::from_secs(60);

/// Runs `pyfw apply` while one thread runs `ipset test probe 10.0.0.1` in a
/// tight loop and another sends packets from 10.0.0.1 that the wished rule
/// must accept; both stop when the apply ends (or after [`PROBE_LIMIT`]).
fn apply_while_probing(ns: &Netns, wishes: &Path) -> (Out, Probed) {
    let stop = AtomicBool::new(false);
    let sent = AtomicU64::new(0);
    let deadline = Instant::now() + PROBE_LIMIT;
    let (stop, sent) = (&stop, &sent);
    std::thread::scope(|s| {
        let (ready, started) = mpsc::channel::<Result<(), String>>();
        let ready2 = ready.clone();
        let tester = |ready: mpsc::Sender<Result<(), String>>| {
            let mut p = Probed::default();
            loop {
                let out = ns.run(&["ipset", "test", "probe", "10.0.0.1"]);
                p.tests += 1;
                let text = format!("{}{}", out.stdout, out.stderr).trim().to_string();
                if text.contains("is NOT in set") {
                    p.not_in_set.push(text);
                } else if text.contains("does not exist") {
                    p.missing.push(text);
                } else if !out.success() {
                    p.other.push(text);
                }
                if p.tests == 1 {
                    let _ = ready.send(Ok(()));
                }
                if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
                    return p;
                }
            }
        };
        // Several at once: each `ip netns exec ipset test` takes a few ms.
        let testers: Vec<_> = (0..PROBE_THREADS)
            .map(|_| {
                let ready = ready.clone();
                s.spawn(move || tester(ready))
            })
            .collect();
        drop(ready);
        let sender = s.spawn(move || {
            let socket = common::enter_netns(&ns.name)
                .and_then(|()| std::net::UdpSocket::bind("10.0.0.1:0"));
            let socket = match socket {
                Ok(socket) => socket,
                Err(e) => {
                    let _ = ready2.send(Err(format!("packet probe: {e}")));
                    return;
                }
            };
            let mut first = true;
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                if socket.send_to(b"probe", "10.0.0.1:9").is_ok() {
                    sent.fetch_add(1, Ordering::SeqCst);
                }
                if first {
                    first = false;
                    let _ = ready2.send(Ok(()));
                }
            }
        });
        for _ in 0..PROBE_THREADS + 1 {
            match started.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    stop.store(true, Ordering::SeqCst);
                    panic!("{e}");
                }
                Err(_) => {
                    stop.store(true, Ordering::SeqCst);
                    panic!("a probe thread died before it started");
                }
            }
        }
        let out = ns.run_pyfw(wishes, &["apply"]);
        stop.store(true, Ordering::SeqCst);
        let mut probed = Probed::default();
        for t in testers {
            let p = t.join().expect("ipset test thread");
            probed.tests += p.tests;
            probed.not_in_set.extend(p.not_in_set);
            probed.missing.extend(p.missing);
            probed.other.extend(p.other);
        }
        sender.join().expect("packet thread");
        probed.sent = sent.load(Ordering::SeqCst);
        (out, probed)
    })
}

/// A packet counter from `iptables-save -c`, by a word in the rule's comment.
fn counter(ns: &Netns, chain: &str, comment: &str) -> u64 {
    let save = ns.ok(&["iptables-save", "-c", "-t", "filter"], "iptables-save -c");
    let line = save
        .lines()
        .find(|l| l.contains(&format!("-A {chain} ")) && l.contains(comment))
        .unwrap_or_else(|| panic!("no rule `{comment}` in {chain}\n{save}"));
    let counts = line
        .strip_prefix('[')
        .and_then(|l| l.split_once(']'))
        .map(|(c, _)| c)
        .unwrap_or_else(|| panic!("no counters on `{line}`"));
    counts
        .split(':')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("bad counters on `{line}`"))
}

/// A namespace with 10.0.0.1 on lo, counting probe packets sent (OUTPUT) and
/// probe packets that the wished rule failed to accept (INPUT, after it),
/// and the probe set applied in its first form.
fn probe_setup(test: &str, backend: Backend, dir: &Path) -> Option<Netns> {
    let ns = Netns::new(test, backend)?;
    ns.ok(
        &["ip", "addr", "add", "10.0.0.1/32", "dev", "lo"],
        "ip addr add",
    );
    ipt(
        &ns,
        r#"-A OUTPUT -s 10.0.0.1/32 -p udp -m udp --dport 9 -m comment --comment "probe sent""#,
    );
    ipt(
        &ns,
        r#"-A INPUT -s 10.0.0.1/32 -p udp -m udp --dport 9 -m comment --comment "probe missed" -j DROP"#,
    );
    let wishes = write_wishes(dir, "wishes.yaml", &probe_wishes("hash:ip", ""));
    apply(&ns, &wishes, "apply the probe set");
    assert_in_sync(&ns, &wishes, "probe set");
    Some(ns)
}

/// After a set change: the set has its members, the rule still names
/// `probe`, nothing temporary is left, and the state is in sync.
#[track_caller]
fn assert_probe_after(ns: &Netns, wishes: &Path, kind: &str, out: &Out) {
    let (have, _) = header(ns, "probe").expect("probe exists");
    assert_eq!(have, kind, "{out}\n{}", ns.ipset_save());
    assert_eq!(
        members(ns, "probe"),
        Some(strings(&["10.0.0.1", "10.0.0.2"])),
        "{out}"
    );
    let sets = ns.ipset_save();
    assert!(
        !sets.contains(pyfw::state::rule::TEMP_PREFIX),
        "no temporary set is left\n{sets}"
    );
    let input = chain_lines(&ns.iptables_save(), "filter", "INPUT");
    let hit: Vec<&String> = input
        .iter()
        .filter(|l| has_comment(l, "probe_hit"))
        .collect();
    assert_eq!(hit.len(), 1, "{input:#?}");
    assert!(
        hit[0].contains("--match-set probe src"),
        "the rule still references `probe`: {}",
        hit[0]
    );
    assert_in_sync(ns, wishes, &format!("probe as {kind}"));
}

#[track_caller]
fn assert_probes_clean(ns: &Netns, probed: &Probed, out: &Out, strict_name: bool) {
    assert!(probed.tests > 0 && probed.sent > 0, "{probed:?}");
    assert!(
        probed.not_in_set.is_empty() && probed.other.is_empty(),
        "`ipset test probe 10.0.0.1` saw the member missing during the apply: {probed:#?}\n{out}"
    );
    if strict_name {
        assert!(
            probed.missing.is_empty(),
            "`ipset test probe 10.0.0.1` saw the set missing during the apply: {probed:#?}\n{out}"
        );
    }
    let missed = counter(ns, "INPUT", "probe missed");
    assert_eq!(
        missed, 0,
        "{missed} probe packet(s) fell past the set rule during the apply ({} sent)\n{out}",
        probed.sent
    );
    assert!(counter(ns, "OUTPUT", "probe sent") > 0);
}

/// A compatible option change (`maxelem`) swaps a rebuilt set in: the set
/// never lacks a member, and no packet misses the rule.
fn set_option_change_keeps_traffic_matched(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(ns) = probe_setup("probe_option", backend, dir.path()) else {
        return;
    };
    let wishes = write_wishes(
        dir.path(),
        "wishes.yaml",
        &probe_wishes("hash:ip", "maxelem 1024"),
    );
    let (out, probed) = apply_while_probing(&ns, &wishes);
    out.expect_ok("apply a maxelem change");
    assert!(executed(&out) > 0, "the change runs\n{out}");
    let options = header(&ns, "probe").unwrap().1;
    assert!(
        options.windows(2).any(|w| w == ["maxelem", "1024"]),
        "{options:?}\n{out}"
    );
    assert_probes_clean(&ns, &probed, &out, true);
    assert_probe_after(&ns, &wishes, "hash:ip", &out);
}

/// An incompatible type change (hash:ip to hash:net, which `ipset swap`
/// refuses) still keeps every packet matched.
///
/// The name `probe` itself cannot stay: no ipset operation turns a set of
/// one type into another kind under the same name (rename needs the new name
/// free, swap needs compatible types), so `ipset test probe` may briefly
/// report "does not exist". What must hold: when the set exists it has the
/// member, the rule always matches through some set holding it, and
/// afterwards the rule names `probe` again.
fn set_type_change_keeps_traffic_matched(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(ns) = probe_setup("probe_type", backend, dir.path()) else {
        return;
    };
    let wishes = write_wishes(dir.path(), "wishes.yaml", &probe_wishes("hash:net", ""));
    let (out, probed) = apply_while_probing(&ns, &wishes);
    out.expect_ok("apply a type change");
    assert!(executed(&out) > 0, "the change runs\n{out}");
    if !probed.missing.is_empty() {
        // Past the test harness's capture, so that it shows on success too.
        let _ = writeln!(
            std::io::stderr(),
            "note: `ipset test probe` saw the name missing {} of {} times during the type change",
            probed.missing.len(),
            probed.tests
        );
    }
    assert_probes_clean(&ns, &probed, &out, false);
    assert_probe_after(&ns, &wishes, "hash:net", &out);
}

// ---- 8. a crowded host -----------------------------------------------------

fn crowded_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/crowded")
        .join(name)
}

/// How many rules the generated Kubernetes chain holds.
const KUBE_RULES: usize = 3000;

/// A Kubernetes chain of thousands of rules with comments holding spaces
/// and slashes, as `iptables-restore --noflush` input.
fn kube_chain() -> String {
    let mut text = String::from("*filter\n:KUBE-SVC-TEST - [0:0]\n");
    text.push_str(
        "-A KUBE-SERVICES -m comment --comment \"kube/svc-test: cluster IPs\" -j KUBE-SVC-TEST\n",
    );
    for i in 0..KUBE_RULES {
        text.push_str(&format!(
            "-A KUBE-SVC-TEST -d 10.96.{}.{}/32 -p tcp -m comment --comment \"default/svc-{i}:http cluster IP\" -m tcp --dport {} -j REJECT --reject-with icmp-port-unreachable\n",
            i / 250,
            i % 250 + 1,
            8000 + i % 1000,
        ));
    }
    text.push_str("COMMIT\n");
    text
}

/// The spec's wishes, with `~match: f2b-` in INPUT after `allow_ssh`.
fn crowded_wishes() -> String {
    let mut out = String::new();
    let mut chain = String::new();
    let mut added = false;
    for line in spec("wishes.yaml").lines() {
        out.push_str(line);
        out.push('\n');
        let t = line.trim();
        let indent = line.len() - line.trim_start().len();
        if indent == 6 && t.ends_with(':') {
            chain = t.trim_end_matches(':').to_string();
        }
        if chain == "INPUT" && t.starts_with("- allow_ssh:") {
            out.push_str(&format!("{}- ~match: f2b-\n", &line[..indent]));
            added = true;
        }
    }
    assert!(added, "the spec's wishes have allow_ssh in INPUT");
    out
}

const SPEC_NAMES: &[&str] = &[
    "allow_established",
    "allow_ssh",
    "allow_inter_docker",
    "allowed_hosts_only",
];

fn is_pyfw_line(line: &str) -> bool {
    SPEC_NAMES.iter().any(|n| has_comment(line, n))
}

/// The spec's wishes on a host crowded with ufw, fail2ban, libvirt, Docker
/// and Kubernetes chains: every foreign rule stays byte-identical and in
/// place, except the `~match` group, which moves as one, in its order.
fn crowded_host(backend: Backend) {
    let Some(ns) = Netns::new("crowded", backend) else {
        return;
    };
    let fixture = std::fs::read_to_string(crowded_path("host.save")).expect("read host.save");
    ns.iptables_restore(&fixture);
    ns.run_with_input(&["iptables-restore", "-w", "--noflush"], &kube_chain())
        .expect_ok("load the Kubernetes chain");
    let before = ns.iptables_save();
    let before_lines = rule_lines(&before);
    let count: usize = before_lines.values().map(Vec::len).sum();
    assert_eq!(
        count,
        fixture.lines().filter(|l| l.starts_with("-A ")).count() + KUBE_RULES + 1,
        "every foreign rule loads"
    );

    let dir = tempfile::tempdir().unwrap();
    let wishes = write_wishes(dir.path(), "wishes.yaml", &crowded_wishes());
    let out = apply(&ns, &wishes, "apply the spec's wishes on a crowded host");
    let after = ns.iptables_save();
    let after_lines = rule_lines(&after);
    let ctx = || format!("{out}\n--- before ---\n{before}\n--- after ---\n{after}");

    assert_eq!(
        chain_names(&after),
        chain_names(&before),
        "no chain is created or deleted (DOCKER exists already)"
    );
    for (key, wanted) in &before_lines {
        let kept: Vec<String> = after_lines
            .get(key)
            .map(|lines| lines.iter().filter(|l| !is_pyfw_line(l)).cloned().collect())
            .unwrap_or_default();
        if key.0 == "filter" && key.1 == "INPUT" {
            continue;
        }
        assert!(
            kept == *wanted,
            "{}/{}: foreign rules must stay, byte for byte and in order\n{}",
            key.0,
            key.1,
            common::diff(&wanted.join("\n"), &kept.join("\n"))
        );
    }
    // INPUT: the wished rules, with the f2b- jumps where `~match` stands, in
    // their original order; every other rule after them, in its order.
    let old_input = &before_lines[&("filter".to_string(), "INPUT".to_string())];
    let (matched, rest): (Vec<String>, Vec<String>) =
        old_input.iter().cloned().partition(|l| l.contains("f2b-"));
    assert_eq!(matched.len(), 2, "two fail2ban jumps in the fixture");
    let input = &after_lines[&("filter".to_string(), "INPUT".to_string())];
    let mut wanted: Vec<String> = Vec::new();
    let mine = |name: &str| {
        input
            .iter()
            .find(|l| has_comment(l, name))
            .unwrap_or_else(|| panic!("{name} is in INPUT\n{}", ctx()))
            .clone()
    };
    wanted.push(mine("allow_established"));
    wanted.push(mine("allow_ssh"));
    wanted.extend(matched);
    wanted.push(mine("allow_inter_docker"));
    wanted.extend(rest);
    assert!(
        *input == wanted,
        "INPUT: wished rules, the f2b- group in place, then the rest in order\n{}",
        common::diff(&wanted.join("\n"), &input.join("\n"))
    );
    let forward = &after_lines[&("filter".to_string(), "FORWARD".to_string())];
    assert!(has_comment(&forward[0], "allow_established"), "{}", ctx());
    let docker = &after_lines[&("filter".to_string(), "DOCKER".to_string())];
    assert!(has_comment(&docker[0], "allowed_hosts_only"), "{}", ctx());

    assert_in_sync(&ns, &wishes, "crowded host");
    assert_text_eq(
        &stable(&ns.iptables_save()),
        &stable(&after),
        "the second apply changes nothing",
    );
}
