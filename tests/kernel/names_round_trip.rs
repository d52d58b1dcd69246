//! What pyfw accepts in wishes reads back unchanged through the real tools.
//!
//! Chain names, rule names, set names and member comments are drawn from a
//! wide alphabet (quotes, backslashes, `#`, `$`, `;`, blanks, tabs, non-ASCII
//! letters). What pyfw's validation refuses must be refused by `pyfw` at
//! load, naming the file and line; everything it accepts is applied in a
//! real network namespace, on both backends, and then `pyfw check` says in
//! sync, and `iptables -S`, `iptables-save`, `ipset list -n` and `ipset save`
//! show exactly the wished names and comments.
//!
//! What another program alone can create (a chain `x"y`), pyfw reads but
//! cannot wish for: see
//! `tests/kernel/daemon.rs::odd_foreign_names_never_stop_the_daemon`.

use crate::common;

use std::collections::BTreeSet;
use std::path::Path;

use common::{Backend, Netns};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use pyfw::state::set_type::{check_member_comment, valid_set_name};
use pyfw::wishes::{check_chain_name, check_rule_name};

on_both_backends!(wished_names_and_comments_read_back_unchanged);

/// Characters that have broken a parser or a quoting somewhere.
const WIDE: &str = "ab\"'\\#$;`!-_.:/=,*%~é ";

fn word(max: usize) -> impl Strategy<Value = String> {
    let chars: Vec<char> = WIDE.chars().chain(['\t', 'Z', '0']).collect();
    proptest::collection::vec(proptest::sample::select(chars), 1..=max)
        .prop_map(|cs| cs.into_iter().collect())
}

/// One case: chains, each with a rule name; sets, each with a member
/// comment.
#[derive(Clone, Debug)]
struct Case {
    chains: Vec<(String, String)>,
    sets: Vec<(String, String)>,
}

fn case() -> impl Strategy<Value = Case> {
    // Each drawn wide, or from an alphabet more of whose words pass, so
    // that most cases apply something.
    let name = || prop_oneof![word(10), "[!-~]{1,10}"];
    let rule = prop_oneof![1 => word(8), 3 => "[A-Za-z0-9_.:-]{1,8}"];
    let comment = prop_oneof![word(16), "[ -~]{1,16}", "\\PC{1,8}"];
    (
        proptest::collection::vec((name(), rule), 1..6),
        proptest::collection::vec((name(), comment), 1..6),
    )
        .prop_map(|(chains, sets)| Case { chains, sets })
}

/// A YAML scalar holding `text` exactly (a JSON string is YAML).
fn y(text: &str) -> String {
    serde_json::to_string(text).unwrap()
}

/// `text` as one word of rule or member text (split as a shell would).
fn sh(text: &str) -> String {
    shlex::try_quote(text).unwrap().into_owned()
}

/// The wishes file for chains and sets, one rule and one member each; the
/// chains' rules and INPUT's jumps to them name each chain in rule text.
fn wishes_text(chains: &[(String, String)], sets: &[(String, String)]) -> String {
    let mut out = String::from("pyfw_wishes:\n  ipsets:\n");
    for (i, (set, comment)) in sets.iter().enumerate() {
        out.push_str(&format!(
            "    {}:\n      type: hash:ip\n      header: comment\n      members_equal:\n      - {}\n",
            y(set),
            y(&format!("10.0.0.{} comment {}", i + 1, sh(comment)))
        ));
    }
    out.push_str("  iptables:\n    filter:\n      INPUT:\n        rules:\n");
    for (i, (chain, _)) in chains.iter().enumerate() {
        out.push_str(&format!(
            "        - {}: {}\n",
            y(&format!("jump{i}")),
            y(&format!("-s 10.2.0.{}/32 -j {}", i + 1, sh(chain)))
        ));
    }
    for (i, (chain, rule)) in chains.iter().enumerate() {
        out.push_str(&format!(
            "      {}:\n        rules:\n        - {}: {}\n",
            y(chain),
            y(rule),
            y(&format!("-s 10.1.0.{}/32 -j ACCEPT", i + 1))
        ));
    }
    out
}

/// Splits a case into what validation takes and what it refuses. Names
/// that are equal are kept once.
fn split(case: &Case) -> (Case, Case) {
    let mut ok = Case {
        chains: Vec::new(),
        sets: Vec::new(),
    };
    let mut bad = ok.clone();
    let mut seen = BTreeSet::new();
    for (chain, rule) in &case.chains {
        if !seen.insert(format!("chain {chain}")) || chain.starts_with("jump") {
            continue;
        }
        let good = check_chain_name(chain).is_ok() && check_rule_name(rule).is_ok();
        let to = if good { &mut ok } else { &mut bad };
        to.chains.push((chain.clone(), rule.clone()));
    }
    for (set, comment) in &case.sets {
        if !seen.insert(format!("set {set}")) || set == "pyfw-owned" {
            continue;
        }
        let good = valid_set_name(set) && check_member_comment(comment).is_ok();
        let to = if good { &mut ok } else { &mut bad };
        to.sets.push((set.clone(), comment.clone()));
    }
    (ok, bad)
}

/// Back to nothing: empty tables, no sets.
fn reset(ns: &Netns) {
    ns.iptables_restore(
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n",
    );
    ns.ok(&["ipset", "destroy"], "ipset destroy");
}

fn check_case(ns: &Netns, dir: &Path, case: &Case) -> Result<(), TestCaseError> {
    let (ok, bad) = split(case);
    let path = dir.join("wishes.yaml");
    // Refused: each name or comment, with the file and a line.
    if !bad.chains.is_empty() || !bad.sets.is_empty() {
        std::fs::write(&path, wishes_text(&bad.chains, &bad.sets)).unwrap();
        let out = ns.run_pyfw(&path, &["check"]);
        prop_assert_eq!(out.code(), Some(1), "refused names\n{}", out);
        let at = format!("{}:", path.display());
        prop_assert!(out.stderr.contains(&at), "no file:line\n{}", out);
        // Nothing was applied.
        prop_assert!(!ns.ipset_save().contains("create"), "{}", ns.ipset_save());
    }
    if ok.chains.is_empty() && ok.sets.is_empty() {
        return Ok(());
    }
    std::fs::write(&path, wishes_text(&ok.chains, &ok.sets)).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let out = ns.run_pyfw(&path, &["apply"]);
    prop_assert!(out.success(), "apply\n{}\n{}", text, out);
    let out = ns.run_pyfw(&path, &["check"]);
    prop_assert_eq!(out.code(), Some(0), "check after apply\n{}\n{}", text, out);
    // The chains, their rules and INPUT's jumps, as iptables prints them:
    // names as they are, the rule names as comments.
    let save = ns.iptables_save();
    for (i, (chain, rule)) in ok.chains.iter().enumerate() {
        let listing = ns.ok(&["iptables", "-w", "-S", chain], "iptables -S CHAIN");
        prop_assert!(listing.starts_with(&format!("-N {chain}\n")), "{}", listing);
        let shown = listing.lines().nth(1).unwrap_or_default();
        let plain = rule
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        let comment = if plain {
            rule.clone()
        } else {
            format!("\"{rule}\"")
        };
        prop_assert_eq!(
            shown,
            format!(
                "-A {chain} -s 10.1.0.{}/32 -m comment --comment {comment} -j ACCEPT",
                i + 1
            )
        );
        let jump = format!("-j {chain}\n");
        prop_assert!(save.contains(&jump), "no `{}` in\n{}", jump, save);
    }
    let names: BTreeSet<String> = ns
        .ok(&["ipset", "list", "-n"], "ipset list -n")
        .lines()
        .map(String::from)
        .collect();
    for (i, (set, comment)) in ok.sets.iter().enumerate() {
        prop_assert!(names.contains(set), "no set {:?} in {:?}", set, names);
        let saved = ns.ok(&["ipset", "save", set], "ipset save NAME");
        let line = format!("add {set} 10.0.0.{} comment \"{comment}\"\n", i + 1);
        prop_assert!(saved.contains(&line), "no {:?} in\n{}", line, saved);
    }
    Ok(())
}

/// Generated wishes either are refused at load, naming the file and line,
/// or apply, check in sync and read back exactly.
fn wished_names_and_comments_read_back_unchanged(backend: Backend) {
    let Some(ns) = Netns::new("names", backend) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut runner = TestRunner::new(Config {
        cases: 24,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&case(), |case| {
        reset(&ns);
        check_case(&ns, dir.path(), &case)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    // The shapes that broke pyfw before, whatever the runner drew.
    let fixed = Case {
        chains: vec![
            ("a'b".into(), "r.1".into()),
            ("a\\b".into(), "r:2".into()),
            ("#x".into(), "r-3".into()),
            ("a$b;c".into(), "r_4".into()),
        ],
        sets: vec![
            ("s'q".into(), "a b".into()),
            ("s\\q".into(), "a\\".into()),
            ("#s".into(), "x'y #z $w \\\\".into()),
            ("t".into(), " lead  two".into()),
        ],
    };
    reset(&ns);
    if let Err(e) = check_case(&ns, dir.path(), &fixed) {
        panic!("{e}");
    }
}
