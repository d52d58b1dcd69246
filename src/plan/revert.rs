//! Putting back what a plan touched: the snapshot of the chains and sets
//! it changes, as they were, and the transactions that restore them.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::Hasher;

use crate::kernel::scope::{Rules, Scope, Sets};
use crate::plan::{Command, Plan, Program};
use crate::state::{Chain, Family, Ipset, State, builtin_chains};

/// What a plan touched, as it was before it ran.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Each touched chain; `None` when it did not exist.
    pub chains: BTreeMap<(Family, String, String), Option<Chain>>,
    /// Each touched set; `None` when it did not exist.
    pub sets: BTreeMap<String, Option<Ipset>>,
}

impl Snapshot {
    /// The chains and sets `plan` changes, as `before` (the state it was
    /// planned from) holds them.
    /// `before` is taken, not borrowed: its sets are moved into the
    /// snapshot rather than copied (a 100,000-member set).
    pub fn of(plan: &Plan, mut before: State) -> Snapshot {
        let mut snap = Snapshot::default();
        // The set the last command named: a set's members come in runs
        // (100,000 adds), each looked up once rather than per command.
        let mut last_set: Option<&str> = None;
        for c in plan.commands.iter().chain(&plan.record) {
            match c.program {
                Program::Iptables(family) => {
                    let (Some(table), Some(chain)) = (c.args.get(2), c.args.get(4)) else {
                        continue;
                    };
                    // Copied once per chain, not per command (a 50,000-rule
                    // chain, a 100,000-member set).
                    snap.chains
                        .entry((family, table.clone(), chain.clone()))
                        .or_insert_with(|| {
                            before
                                .ruleset(family)
                                .chain(table, chain)
                                .map(|c| c.into_owned())
                        });
                }
                Program::Ipset => {
                    let names: &[String] = match c.args.first().map(String::as_str) {
                        Some("swap" | "rename") => c.args.get(1..3).unwrap_or(&[]),
                        _ => c.args.get(1..2).unwrap_or(&[]),
                    };
                    if let [name] = names
                        && last_set == Some(name.as_str())
                    {
                        continue;
                    }
                    last_set = names.last().map(String::as_str);
                    for name in names {
                        if !snap.sets.contains_key(name) {
                            snap.sets.insert(name.clone(), before.ipsets.remove(name));
                        }
                    }
                }
            }
        }
        snap
    }

    /// What to read to revert: the touched chains and sets.
    pub fn scope(&self) -> Scope {
        let mut scope = Scope::none();
        for (family, table, chain) in self.chains.keys() {
            let rules = scope.rules_mut(*family);
            if let Rules::Skip = rules {
                *rules = Rules::Chains(BTreeSet::new());
            }
            if let Rules::Chains(set) = rules {
                set.insert((table.clone(), chain.clone()));
            }
        }
        if !self.sets.is_empty() {
            scope.sets = Sets::Named(self.sets.keys().cloned().collect());
        }
        scope
    }

    pub fn is_empty(&self) -> bool {
        self.chains.is_empty() && self.sets.is_empty()
    }
}

/// A set name for the revert's scratch copy of `name`, within ipset's 31
/// characters.
fn scratch_set(name: &str) -> String {
    let mut h = fnv::FnvHasher::default();
    h.write(name.as_bytes());
    format!("_pyfw_rv_{:016x}", h.finish())
}

fn ipset(args: Vec<String>, set: &str, why: &str) -> Command {
    Command {
        program: Program::Ipset,
        args,
        undo: None,
        reason: format!("revert ipset {set}: {why}"),
        target: format!("ipset {set}"),
        wish: None,
    }
}

fn create_filled(name: &str, set: &Ipset, why: &str) -> Vec<Command> {
    let mut out = Vec::new();
    let mut create = vec!["create".to_string(), name.to_string(), set.kind.clone()];
    create.extend(set.options.iter().cloned());
    out.push(ipset(create, name, why));
    for m in &set.members {
        let mut add = vec!["add".to_string(), name.to_string(), m.clone()];
        if let Some(c) = set.comments.get(m) {
            add.extend(["comment".to_string(), c.clone()]);
        }
        out.push(ipset(add, name, why));
    }
    out
}

fn set_family(set: &Ipset) -> Option<&str> {
    set.options
        .windows(2)
        .find(|w| w[0] == "family")
        .map(|w| w[1].as_str())
}

/// The transactions that put back `snap`, given the state `now`. Each inner
/// list is one transaction (one family and table, or a run of set
/// commands), to be run in order; a failing one does not stop the others.
pub fn revert_steps(snap: &Snapshot, now: &State) -> Vec<Vec<Command>> {
    let mut steps: Vec<Vec<Command>> = Vec::new();
    // Sets whose type changed: the kernel neither swaps nor renames them
    // while rules use them, so the rules use a scratch copy meanwhile.
    let mut retyped: BTreeMap<String, String> = BTreeMap::new();
    let mut sets_first = Vec::new();
    let mut sets_last = Vec::new();
    for (name, before) in &snap.sets {
        let current = now.ipsets.get(name);
        match (before, current) {
            (None, None) => {}
            (None, Some(_)) => sets_last.push(ipset(
                vec!["destroy".into(), name.clone()],
                name,
                "the apply created it",
            )),
            (Some(b), None) => sets_first.extend(create_filled(name, b, "the apply removed it")),
            (Some(b), Some(c)) if b == c => {}
            (Some(b), Some(c)) => {
                let tmp = scratch_set(name);
                let why = "put back its type, options and members";
                sets_first.extend(create_filled(&tmp, b, why));
                if b.kind == c.kind && set_family(b) == set_family(c) {
                    sets_first.push(ipset(
                        vec!["swap".into(), tmp.clone(), name.clone()],
                        name,
                        why,
                    ));
                    sets_first.push(ipset(vec!["destroy".into(), tmp], name, why));
                } else {
                    retyped.insert(name.clone(), tmp);
                }
            }
        }
    }
    if !sets_first.is_empty() {
        steps.push(sets_first);
    }
    steps.extend(chain_steps(snap, now, &retyped));
    if !retyped.is_empty() {
        let mut rebuild = Vec::new();
        for name in retyped.keys() {
            let Some(Some(b)) = snap.sets.get(name) else {
                continue;
            };
            let why = "rebuild with its old type";
            rebuild.push(ipset(vec!["destroy".into(), name.clone()], name, why));
            rebuild.extend(create_filled(name, b, why));
        }
        steps.push(rebuild);
        steps.extend(chain_steps(snap, now, &BTreeMap::new()));
        let drop: Vec<Command> = retyped
            .iter()
            .map(|(name, tmp)| ipset(vec!["destroy".into(), tmp.clone()], name, "scratch copy"))
            .collect();
        steps.push(drop);
    }
    if !sets_last.is_empty() {
        steps.push(sets_last);
    }
    steps
}

/// One transaction per family and table: every touched chain flushed and
/// refilled as it was, its policy put back, and chains the apply created
/// removed, all at once.
fn chain_steps(
    snap: &Snapshot,
    now: &State,
    renamed: &BTreeMap<String, String>,
) -> Vec<Vec<Command>> {
    type Chains<'a> = Vec<(&'a String, &'a Option<Chain>)>;
    let mut by_table: BTreeMap<(Family, String), Chains> = BTreeMap::new();
    for ((family, table, chain), before) in &snap.chains {
        by_table
            .entry((*family, table.clone()))
            .or_default()
            .push((chain, before));
    }
    let mut out = Vec::new();
    for ((family, table), chains) in by_table {
        let exists_now = |chain: &str| {
            now.ruleset(family)
                .tables
                .get(&table)
                .and_then(|t| t.chain(chain))
                .is_some()
                || builtin_chains(&table).contains(&chain)
        };
        let cmd = |rest: Vec<String>, chain: &str| {
            let mut args = vec!["-w".to_string(), "-t".to_string(), table.clone()];
            args.extend(rest);
            Command {
                program: Program::Iptables(family),
                args,
                undo: None,
                reason: format!(
                    "revert {}",
                    crate::wishes::chain_label(family, &table, chain)
                ),
                target: crate::wishes::chain_label(family, &table, chain),
                wish: None,
            }
        };
        let mut create = Vec::new();
        let mut flush = Vec::new();
        let mut fill = Vec::new();
        let mut policies = Vec::new();
        let mut delete = Vec::new();
        for (chain, before) in chains {
            let exists = exists_now(chain);
            match before {
                None if exists => {
                    flush.push(cmd(vec!["-F".into(), chain.clone()], chain));
                    delete.push(cmd(vec!["-X".into(), chain.clone()], chain));
                }
                None => {}
                Some(c) => {
                    if exists {
                        flush.push(cmd(vec!["-F".into(), chain.clone()], chain));
                    } else {
                        create.push(cmd(vec!["-N".into(), chain.clone()], chain));
                    }
                    for rule in &c.rules {
                        let mut rule = rule.clone();
                        for (from, to) in renamed {
                            rule = rule.with_set_renamed(from, to);
                        }
                        let mut a = vec!["-A".to_string(), chain.clone()];
                        a.extend(rule.args().iter().cloned());
                        fill.push(cmd(a, chain));
                    }
                    if let Some(p) = &c.policy {
                        policies.push(cmd(vec!["-P".into(), chain.clone(), p.clone()], chain));
                    }
                }
            }
        }
        let all: Vec<Command> = [create, flush, fill, policies, delete].concat();
        if !all.is_empty() {
            out.push(all);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Ruleset, parse_ipset_save, parse_iptables_save};

    fn state(save: &str, sets: &str) -> State {
        State {
            v4: parse_iptables_save(save).unwrap(),
            v6: Ruleset::default(),
            ipsets: parse_ipset_save(sets).unwrap(),
        }
    }

    fn lines(steps: &[Vec<Command>]) -> Vec<Vec<String>> {
        steps
            .iter()
            .map(|s| s.iter().map(|c| c.to_string()).collect())
            .collect()
    }

    fn cmd(args: &str) -> Command {
        Command {
            program: if args.starts_with("-w") {
                Program::Iptables(Family::V4)
            } else {
                Program::Ipset
            },
            args: shlex::split(args).unwrap(),
            undo: None,
            reason: String::new(),
            target: String::new(),
            wish: None,
        }
    }

    const BEFORE: &str = "*filter\n:INPUT ACCEPT [0:0]\n:f2b - [0:0]\n\
        -A INPUT -s 10.0.0.1/32 -j f2b\n-A f2b -j RETURN\nCOMMIT\n";
    const SETS: &str = "create keep hash:ip family inet hashsize 1024 maxelem 65536\n\
        add keep 10.0.0.1\nadd keep 10.0.0.2\n";

    fn plan() -> Plan {
        Plan {
            commands: vec![
                cmd("create new hash:net"),
                cmd("add keep 10.0.0.3"),
                cmd("-w -t filter -N mine"),
                cmd("-w -t filter -I INPUT 1 -j mine"),
                cmd("-w -t filter -P INPUT DROP"),
            ],
            record: vec![cmd("create pyfw-owned hash:ip family inet6 comment")],
        }
    }

    #[test]
    fn a_snapshot_holds_what_the_plan_touches_as_it_was() {
        let snap = Snapshot::of(&plan(), state(BEFORE, SETS));
        let chains: Vec<_> = snap
            .chains
            .iter()
            .map(|(k, v)| (k.2.as_str(), v.is_some()))
            .collect();
        assert_eq!(chains, [("INPUT", true), ("mine", false)]);
        let sets: Vec<_> = snap
            .sets
            .iter()
            .map(|(k, v)| (k.as_str(), v.is_some()))
            .collect();
        assert_eq!(
            sets,
            [("keep", true), ("new", false), ("pyfw-owned", false)]
        );
        assert!(!snap.chains.keys().any(|k| k.2 == "f2b"), "untouched");
    }

    #[test]
    fn revert_refills_sets_then_rewrites_chains_then_drops_what_was_new() {
        let before = state(BEFORE, SETS);
        let snap = Snapshot::of(&plan(), before.clone());
        let after = state(
            "*filter\n:INPUT DROP [0:0]\n:f2b - [0:0]\n:mine - [0:0]\n-A INPUT -j mine\n\
             -A INPUT -s 10.0.0.1/32 -j f2b\n-A f2b -j RETURN\nCOMMIT\n",
            &format!(
                "{SETS}add keep 10.0.0.3\ncreate new hash:net family inet\n\
                 create pyfw-owned hash:ip family inet6 comment\n"
            ),
        );
        let tmp = scratch_set("keep");
        assert_eq!(
            lines(&revert_steps(&snap, &after)),
            vec![
                vec![
                    format!("ipset create {tmp} hash:ip family inet hashsize 1024 maxelem 65536"),
                    format!("ipset add {tmp} 10.0.0.1"),
                    format!("ipset add {tmp} 10.0.0.2"),
                    format!("ipset swap {tmp} keep"),
                    format!("ipset destroy {tmp}"),
                ],
                vec![
                    "iptables -w -t filter -F INPUT".to_string(),
                    "iptables -w -t filter -F mine".into(),
                    "iptables -w -t filter -A INPUT -s 10.0.0.1/32 -j f2b".into(),
                    "iptables -w -t filter -P INPUT ACCEPT".into(),
                    "iptables -w -t filter -X mine".into(),
                ],
                vec![
                    "ipset destroy new".to_string(),
                    "ipset destroy pyfw-owned".into(),
                ],
            ]
        );
        // Reverting the state as it was is nothing to do but rewriting the
        // touched chains as they are.
        let steps = revert_steps(&snap, &before);
        assert_eq!(steps.len(), 1, "{:?}", lines(&steps));
    }

    #[test]
    fn a_set_whose_type_changed_is_rebuilt_while_rules_use_a_copy() {
        let before = state(
            "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -m set --match-set s src -j DROP\nCOMMIT\n",
            "create s hash:ip family inet\nadd s 10.0.0.1\n",
        );
        let plan = Plan {
            commands: vec![
                cmd("create s2 hash:net"),
                cmd("-w -t filter -I INPUT 1 -m set --match-set s2 src -j DROP"),
                cmd("destroy s"),
                cmd("rename s2 s"),
            ],
            record: vec![],
        };
        let snap = Snapshot::of(&plan, before.clone());
        let now = state(
            "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -m set --match-set s src -j DROP\nCOMMIT\n",
            "create s hash:net family inet\nadd s 10.0.0.0/24\n",
        );
        let tmp = scratch_set("s");
        let got = lines(&revert_steps(&snap, &now));
        let flat: Vec<&str> = got.iter().flatten().map(String::as_str).collect();
        let at = |needle: &str| {
            flat.iter()
                .position(|l| *l == needle)
                .unwrap_or_else(|| panic!("{needle} not in {flat:#?}"))
        };
        let via_tmp =
            format!("iptables -w -t filter -A INPUT -m set --match-set {tmp} src -j DROP");
        assert!(at(&format!("ipset create {tmp} hash:ip family inet")) < at(&via_tmp));
        assert!(at(&via_tmp) < at("ipset destroy s"));
        assert!(at("ipset destroy s") < at("ipset create s hash:ip family inet"));
        let back = "iptables -w -t filter -A INPUT -m set --match-set s src -j DROP";
        assert!(at("ipset add s 10.0.0.1") < at(back));
        assert!(at(back) < at(&format!("ipset destroy {tmp}")));
    }
}
