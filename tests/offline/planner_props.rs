//! Property tests of the planner against an independent model of a chain.
//!
//! The model interprets plan commands the way iptables does (`-I CHAIN N`
//! inserts before rule N, `-D CHAIN SPEC` deletes the first rule with that
//! exact specification, `-D CHAIN N` deletes rule N) and checks, after every
//! single command, the promises pyfw makes to a busy host. The plan also
//! runs as the kernel gets it, in transactions ([`fuzz_model::Kernel`],
//! which knows iptables-nft's pitfall), with every rule's identity
//! followed: another program's rule that no `~match` takes is never
//! deleted or inserted again, so its counters and nf_tables handle stay.

use crate::fuzz_model;

use std::collections::BTreeMap;
use std::path::PathBuf;

use proptest::prelude::*;
use pyfw::plan::{Command, plan};
use pyfw::state::rule::Rule;
use pyfw::state::{Chain, Family, Ruleset, State, Table};
use pyfw::wishes::{ChainWish, MatchRule, NamedRule, RuleItem, Wishes};
use regex::Regex;

const CHAIN: &str = "FORWARD";

fn wished_rule(i: usize) -> Rule {
    Rule::parse(&format!(
        "-s 192.0.2.{i}/32 -m comment --comment w{i} -j ACCEPT"
    ))
    .unwrap()
}

/// A rule in the current chain, before the plan.
#[derive(Clone, Debug)]
enum Existing {
    /// Another program's rule without a comment (duplicates allowed).
    Plain(u8),
    /// Another program's rule with a comment containing a space.
    Commented(u8),
    /// A ban: the same text often twice (identical twins).
    Ban(u8),
    /// A wished rule with the wished text.
    Wished(usize),
    /// A rule carrying a wished name but other text.
    Stale(usize),
    /// A temp copy of a wished rule left by an interrupted move.
    Temp(usize),
    /// A temp copy of another program's rule left by an interrupted move.
    ForeignTemp(u8),
}

impl Existing {
    fn rule(&self) -> Rule {
        match self {
            Existing::Plain(n) => Rule::parse(&format!("-s 10.0.0.{n}/32 -j ACCEPT")).unwrap(),
            Existing::Commented(n) => Rule::parse(&format!(
                "-s 10.0.1.{n}/32 -m comment --comment \"svc {n}\" -j RETURN"
            ))
            .unwrap(),
            Existing::Ban(n) => Rule::parse(&format!("-s 203.0.113.{n}/32 -j DROP")).unwrap(),
            Existing::Wished(i) => wished_rule(*i),
            Existing::Stale(i) => Rule::parse(&format!(
                "-s 198.51.100.{i}/32 -m comment --comment w{i} -j DROP"
            ))
            .unwrap(),
            Existing::Temp(i) => wished_rule(*i).temp_copy(Some(&format!("w{i}"))),
            Existing::ForeignTemp(n) => Existing::Commented(*n).rule().temp_copy(None),
        }
    }
}

fn existing() -> impl Strategy<Value = Existing> {
    prop_oneof![
        4 => (0u8..4).prop_map(Existing::Plain),
        2 => (0u8..3).prop_map(Existing::Commented),
        2 => (0u8..2).prop_map(Existing::Ban),
        4 => (0usize..6).prop_map(Existing::Wished),
        1 => (0usize..6).prop_map(Existing::Stale),
        1 => (0usize..6).prop_map(Existing::Temp),
        1 => (0u8..3).prop_map(Existing::ForeignTemp),
    ]
}

const PATTERNS: &[&str] = &[
    r"10\.0\.0\.[0-1]/",
    r"svc [0-2]",
    r"10\.0\.0\.3/",
    r"RETURN",
    r" -j DROP$",
];

#[derive(Clone, Debug)]
enum Item {
    Named(usize),
    Match(usize),
}

fn items() -> impl Strategy<Value = Vec<Item>> {
    // Distinct names, in random order, with ~match items mixed in.
    (
        Just((0usize..6).collect::<Vec<_>>()).prop_shuffle(),
        0usize..=6,
        proptest::collection::vec((0usize..PATTERNS.len(), 0usize..8), 0..3),
    )
        .prop_map(|(names, n, matches)| {
            let mut out: Vec<Item> = names[..n].iter().map(|&i| Item::Named(i)).collect();
            for (pat, at) in matches {
                let at = at.min(out.len());
                out.insert(at, Item::Match(pat));
            }
            out
        })
}

fn wishes_of(items: &[Item]) -> Wishes {
    let rules = items
        .iter()
        .map(|it| match it {
            Item::Named(i) => RuleItem::Named(NamedRule {
                name: format!("w{i}"),
                rule: wished_rule(*i),
                printed: None,
                line: 1,
            }),
            Item::Match(p) => RuleItem::Match(MatchRule {
                regex: Regex::new(PATTERNS[*p]).unwrap(),
                line: 1,
            }),
        })
        .collect();
    Wishes {
        path: PathBuf::from("props.yaml"),
        nftables: Default::default(),
        warnings: Vec::new(),
        ipsets: Vec::new().into(),
        chains: vec![ChainWish {
            family: Family::V4,
            table: "filter".into(),
            chain: CHAIN.into(),
            policy: None,
            rules: Some(rules),
            line: 1,
        }],
    }
}

fn state_of(rules: &[Rule]) -> State {
    let mut tables = BTreeMap::new();
    tables.insert(
        "filter".to_string(),
        Table {
            chains: vec![(
                CHAIN.to_string(),
                Chain {
                    policy: Some("ACCEPT".into()),
                    rules: rules.to_vec(),
                },
            )],
        },
    );
    State {
        v4: Ruleset { tables },
        ..State::default()
    }
}

/// The chain as it stands once leftover temporary copies are dealt with: a
/// copy whose rule is gone becomes that rule again, other copies go.
fn recovered(current: &[Rule]) -> Vec<Rule> {
    let mut out: Vec<Rule> = current.to_vec();
    let mut i = 0;
    while i < out.len() {
        match out[i].temp_base() {
            Some(base) if !out.contains(&base) => {
                out[i] = base;
                i += 1;
            }
            Some(_) => {
                out.remove(i);
            }
            None => i += 1,
        }
    }
    out
}

/// The desired order, computed from the rules of the wishes language alone.
fn desired(items: &[Item], current: &[Rule]) -> Vec<Rule> {
    let names: Vec<String> = items
        .iter()
        .filter_map(|i| match i {
            Item::Named(n) => Some(format!("w{n}")),
            Item::Match(_) => None,
        })
        .collect();
    let foreign: Vec<&Rule> = current
        .iter()
        .filter(|r| !r.is_temp() && !r.comment().is_some_and(|c| names.iter().any(|n| n == c)))
        .collect();
    let mut taken = vec![false; foreign.len()];
    let mut out = Vec::new();
    for item in items {
        match item {
            Item::Named(i) => out.push(wished_rule(*i)),
            Item::Match(p) => {
                let re = Regex::new(PATTERNS[*p]).unwrap();
                for (k, r) in foreign.iter().enumerate() {
                    if !taken[k] && re.is_match(&r.to_string()) {
                        taken[k] = true;
                        out.push((*r).clone());
                    }
                }
            }
        }
    }
    for (k, r) in foreign.iter().enumerate() {
        if !taken[k] {
            out.push((*r).clone());
        }
    }
    out
}

/// Applies one command to the model the way iptables would, or says why
/// iptables would refuse it.
fn step(chain: &mut Vec<Rule>, initial: Option<&[Rule]>, c: &Command) -> Result<(), String> {
    let a = &c.args;
    assert_eq!(&a[..3], &["-w", "-t", "filter"], "{c}");
    assert_eq!(a[4], CHAIN, "{c}");
    match a[3].as_str() {
        "-I" => {
            let n: usize = a[5].parse().map_err(|_| format!("no position: {c}"))?;
            if n == 0 || n > chain.len() + 1 {
                return Err(format!("Index of insertion too big: {c}"));
            }
            chain.insert(n - 1, Rule::from_args(a[6..].to_vec()));
        }
        "-D" if a.len() == 6 && a[5].parse::<usize>().is_ok() => {
            let n: usize = a[5].parse().unwrap();
            if n == 0 || n > chain.len() {
                return Err(format!("Index of deletion too big: {c}"));
            }
            // Numbers shift when another program edits the chain, so pyfw
            // deletes by number only where the host itself holds identical
            // copies of a rule and deleting by text would hit the wrong one.
            // (A rollback may delete by number: it runs only after a failure.)
            let base = chain[n - 1]
                .temp_base()
                .unwrap_or_else(|| chain[n - 1].clone());
            if initial.is_some_and(|i| count(i, &base) + count(i, &base.temp_copy(None)) < 2) {
                return Err(format!("deleted by number where text was unambiguous: {c}"));
            }
            chain.remove(n - 1);
        }
        "-D" => {
            let spec = Rule::from_args(a[5..].to_vec());
            let at = chain.iter().position(|r| *r == spec).ok_or_else(|| {
                format!("Bad rule (does a matching rule exist in that chain?): {c}")
            })?;
            chain.remove(at);
        }
        other => return Err(format!("unexpected operation {other}: {c}")),
    }
    Ok(())
}

fn count(chain: &[Rule], r: &Rule) -> usize {
    chain.iter().filter(|x| *x == r).count()
}

/// A rule or a temp copy of it.
fn present(chain: &[Rule], r: &Rule) -> usize {
    chain
        .iter()
        .filter(|x| *x == r || x.temp_base().as_ref() == Some(r))
        .count()
}

proptest! {
    #![proptest_config(crate::proptest_config(2000))]

    #[test]
    fn plans_converge_without_gaps(
        current in proptest::collection::vec(existing(), 0..14),
        items in items(),
    ) {
        let current: Vec<Rule> = current.iter().map(Existing::rule).collect();
        let wishes = wishes_of(&items);
        let want = desired(&items, &recovered(&current));
        let plan = plan(&wishes, &state_of(&current));

        let wished: Vec<Rule> = items.iter().filter_map(|i| match i {
            Item::Named(n) => Some(wished_rule(*n)),
            Item::Match(_) => None,
        }).collect();
        let names: Vec<String> = wished.iter().map(|r| r.comment().unwrap().to_string()).collect();
        let guarded: Vec<&Rule> = wished.iter().filter(|r| current.contains(r)).collect();
        let foreign: Vec<&Rule> = current.iter()
            .filter(|r| !r.is_temp() && !r.comment().is_some_and(|c| names.iter().any(|n| n == c)))
            .collect();
        // A copy left by an interrupted move is all that is left of its rule.
        let base_chain = recovered(&current);
        let rescued: Vec<&Rule> = base_chain.iter()
            .filter(|b| !current.contains(b) && !b.comment().is_some_and(|c| names.iter().any(|n| n == c)))
            .collect();

        let mut chain = current.clone();
        for c in &plan.commands {
            if let Err(e) = step(&mut chain, Some(&current), c) {
                return Err(TestCaseError::fail(format!("{e}\nplan: {:#?}", plan.commands.iter().map(|c| c.to_string()).collect::<Vec<_>>())));
            }
            for r in &guarded {
                prop_assert!(present(&chain, r) >= 1, "wished rule {} missing after `{}`", r, c);
            }
            for r in foreign.iter().chain(&rescued) {
                let before = present(&current, r).min(1).max(count(&current, r));
                prop_assert!(present(&chain, r) >= before, "foreign rule {} lost after `{}`", r, c);
            }
        }
        prop_assert_eq!(&chain, &want);
        for r in foreign.iter().chain(&rescued) {
            prop_assert_eq!(count(&chain, r), count(&base_chain, r));
        }

        // Every rule followed by identity, command by command and in the
        // transactions the kernel gets: other programs' rules that no
        // `~match` takes (twins included) keep theirs.
        let shown = || plan.commands.iter().map(|c| c.to_string()).collect::<Vec<_>>().join("\n");
        let untouchable: Vec<u64> = (0..current.len() as u64)
            .filter(|&i| {
                let r = &current[i as usize];
                let text = r.to_string();
                foreign.contains(&r)
                    && !items.iter().any(|it| matches!(it, Item::Match(p) if Regex::new(PATTERNS[*p]).unwrap().is_match(&text)))
            })
            .collect();
        let key = (Family::V4, "filter".to_string(), CHAIN.to_string());
        let mut by_command = fuzz_model::Kernel::new(&state_of(&current));
        for c in &plan.commands {
            by_command.run(c).map_err(|e| TestCaseError::fail(format!("{e}\nplan:\n{}", shown())))?;
        }
        let mut batched = fuzz_model::Kernel::new(&state_of(&current));
        batched.run_transactions(&plan.commands).map_err(|e| TestCaseError::fail(format!("{e}\nplan:\n{}", shown())))?;
        for k in [&by_command, &batched] {
            let rules = k.state.v4.chain("filter", CHAIN).map(|c| c.rules.clone()).unwrap_or_default();
            prop_assert_eq!(&rules, &want);
            for id in &untouchable {
                prop_assert!(k.ids(&key).contains(id), "foreign rule {} deleted or inserted again\nplan:\n{}", current[*id as usize], shown());
            }
        }
        let again = pyfw::plan::plan(&wishes, &state_of(&chain));
        prop_assert!(again.is_empty(), "second plan not empty: {:?}", again.commands.iter().map(|c| c.to_string()).collect::<Vec<_>>());
    }

    #[test]
    fn undo_commands_restore_the_chain(
        current in proptest::collection::vec(existing(), 0..10),
        items in items(),
    ) {
        let current: Vec<Rule> = current.iter().map(Existing::rule).collect();
        let plan = plan(&wishes_of(&items), &state_of(&current));
        let mut chain = current.clone();
        for c in &plan.commands {
            step(&mut chain, Some(&current), c).map_err(TestCaseError::fail)?;
        }
        for c in plan.commands.iter().rev() {
            let undo = Command { args: c.undo.clone().expect("rule commands can be undone"), ..c.clone() };
            step(&mut chain, None, &undo).map_err(TestCaseError::fail)?;
        }
        prop_assert_eq!(chain, current);
    }
}
