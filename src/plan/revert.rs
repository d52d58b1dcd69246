//! Putting back what a plan touched: the snapshot of the chains and sets
//! it changes, as they were, and the transactions that restore them.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::Hasher;

use crate::kernel::scope::{Rules, Scope, Sets};
use crate::plan::{Command, Plan, Program};
use crate::state::rule::Rule;
use crate::state::{Chain, Family, Ipset, State};
use crate::wishes::nft::NftFamily;

/// What a plan touched, as it was before it ran.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Each touched chain; `None` when it did not exist.
    pub chains: BTreeMap<(Family, String, String), Option<Chain>>,
    /// Each touched set; `None` when it did not exist.
    pub sets: BTreeMap<String, Option<Ipset>>,
    /// Each owned nftables table a plan replaces or deletes, as `nft -s
    /// list table` printed it before (text that loads back; see
    /// `reconcile::nft`); `None` when it did not exist. Filled by the
    /// reconciler, which read it: a [`State`] holds no nftables tables.
    pub nft: BTreeMap<(NftFamily, String), Option<String>>,
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
                // See `Snapshot::nft`.
                Program::Nft => {}
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
        self.chains.is_empty() && self.sets.is_empty() && self.nft.is_empty()
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
        members: Default::default(),
    }
}

fn create_filled(name: &str, set: &Ipset, why: &str) -> Vec<Command> {
    let mut out = Vec::new();
    let mut create = vec!["create".to_string(), name.to_string(), set.kind.clone()];
    create.extend(set.options.iter().cloned());
    out.push(ipset(create, name, why));
    adds(name, set.members.iter(), set, why, &mut out);
    out
}

/// `add NAME MEMBER` (with the member's comment in `set`, if any) for each
/// of `members`, onto `out`: one run of them when more than
/// [`crate::plan::RUN_OVER`] carry no comment (see [`Command::members`]).
fn adds<'m>(
    name: &str,
    members: impl Iterator<Item = &'m str>,
    set: &Ipset,
    why: &str,
    out: &mut Vec<Command>,
) {
    let mut run = ipset(vec!["add".into(), name.to_string()], name, why);
    let mut each = Vec::new();
    for m in members {
        match set.comments.get(m) {
            None => run.members.push(m),
            Some(c) => {
                let comment = ["comment".to_string(), c.clone()];
                let args = ["add", name, m]
                    .map(String::from)
                    .into_iter()
                    .chain(comment);
                each.push(ipset(args.collect(), name, why));
            }
        }
    }
    if run.members.len() > crate::plan::RUN_OVER {
        out.push(run);
    } else {
        let plain = run
            .members
            .iter()
            .map(|m| ["add", name, m].map(String::from).to_vec());
        out.extend(plain.map(|args| ipset(args, name, why)));
    }
    out.extend(each);
}

fn set_family(set: &Ipset) -> Option<&str> {
    set.options
        .windows(2)
        .find(|w| w[0] == "family")
        .map(|w| w[1].as_str())
}

/// The transactions that put back `snap`, given the state `now` (`None`
/// when it could not be read: then every touched chain is flushed and
/// refilled, blind). Each inner list is one transaction (one family and
/// table, or a run of set commands), to be run in order; a failing one does
/// not stop the others. Nothing to do, when `now` already is `snap`: no
/// transaction at all.
///
/// With `now` known, the edits are the fewest that restore the snapshot:
/// rules in both, in order, stay where they are (so other programs' rules
/// keep their counters and nft handles), a set keeps the members it had.
pub fn revert_steps(snap: &Snapshot, now: Option<&State>) -> Vec<Vec<Command>> {
    let blind = State::default();
    let sets = SetSteps::new(snap, now.unwrap_or(&blind));
    let mut steps: Vec<Vec<Command>> = Vec::new();
    if !sets.first.is_empty() {
        steps.push(sets.first);
    }
    steps.extend(chains_back(snap, now, &sets.retyped));
    if !sets.retyped.is_empty() {
        retyped_back(snap, now, &sets.retyped, &mut steps);
    }
    if !sets.last.is_empty() {
        steps.push(sets.last);
    }
    steps
}

/// The chains' steps back to the snapshot, with the sets `renamed` (name
/// to scratch copy) named by their copies: edits when `now` is known, else
/// blind.
fn chains_back(
    snap: &Snapshot,
    now: Option<&State>,
    renamed: &BTreeMap<String, String>,
) -> Vec<Vec<Command>> {
    match now {
        Some(now) => chain_steps(snap, now, renamed),
        None => blind_chain_steps(snap, renamed),
    }
}

/// The set commands that go before the chains' steps and after them.
struct SetSteps {
    first: Vec<Command>,
    last: Vec<Command>,
    /// Sets whose type changed: the kernel neither swaps nor renames them
    /// while rules use them, so the rules use a scratch copy meanwhile
    /// (name to scratch copy).
    retyped: BTreeMap<String, String>,
}

impl SetSteps {
    fn new(snap: &Snapshot, known: &State) -> SetSteps {
        let mut sets = SetSteps {
            first: Vec::new(),
            last: Vec::new(),
            retyped: BTreeMap::new(),
        };
        for (name, before) in &snap.sets {
            let current = known.ipsets.get(name);
            match (before, current) {
                (None, None) => {}
                (None, Some(_)) => sets.last.push(ipset(
                    vec!["destroy".into(), name.clone()],
                    name,
                    "the apply created it",
                )),
                (Some(b), None) => {
                    sets.first
                        .extend(create_filled(name, b, "the apply removed it"))
                }
                (Some(b), Some(c)) if b == c => {}
                (Some(b), Some(c)) if same_header(b, c) => {
                    sets.first.extend(member_edits(name, b, c))
                }
                (Some(b), Some(c)) => sets.put_back(name, b, c),
            }
        }
        sets
    }

    /// A set whose type or options changed (`b` before, `c` now): a filled
    /// scratch copy, swapped in when the kernel can, else retyped.
    fn put_back(&mut self, name: &str, b: &Ipset, c: &Ipset) {
        let tmp = scratch_set(name);
        let why = "put back its type, options and members";
        self.first.extend(create_filled(&tmp, b, why));
        if b.kind == c.kind && set_family(b) == set_family(c) {
            self.first.push(ipset(
                vec!["swap".into(), tmp.clone(), name.to_string()],
                name,
                why,
            ));
            self.first
                .push(ipset(vec!["destroy".into(), tmp], name, why));
        } else {
            self.retyped.insert(name.to_string(), tmp);
        }
    }
}

/// After the chains use the scratch copies of the `retyped` sets: rebuild
/// each with its old type, name them in the chains again, drop the copies.
fn retyped_back(
    snap: &Snapshot,
    now: Option<&State>,
    retyped: &BTreeMap<String, String>,
    steps: &mut Vec<Vec<Command>>,
) {
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
    // The chains are the snapshot's now, with the scratch copies in
    // them: name the rebuilt sets again.
    let between = snapshot_state(snap, retyped);
    steps.extend(chains_back(snap, now.map(|_| &between), &BTreeMap::new()));
    let drop: Vec<Command> = retyped
        .iter()
        .map(|(name, tmp)| ipset(vec!["destroy".into(), tmp.clone()], name, "scratch copy"))
        .collect();
    steps.push(drop);
}

/// True when two sets differ at most in their members.
fn same_header(a: &Ipset, b: &Ipset) -> bool {
    a.kind == b.kind && a.options == b.options
}

/// The member changes that turn set `now` back into `was` (same type and
/// options): members it lacks, or whose comment changed, are added
/// (`ipset restore -exist` replaces a member's comment), extra ones go.
fn member_edits(name: &str, was: &Ipset, now: &Ipset) -> Vec<Command> {
    let why = "put back its members";
    let had: HashMap<&str, Option<&String>> = (was.members.iter())
        .map(|m| (m, was.comments.get(m)))
        .collect();
    let has: HashMap<&str, Option<&String>> = (now.members.iter())
        .map(|m| (m, now.comments.get(m)))
        .collect();
    let mut out = Vec::new();
    let mut gone = ipset(vec!["del".into(), name.to_string()], name, why);
    gone.members = (now.members.iter())
        .filter(|m| !had.contains_key(m))
        .collect();
    match gone.members.len() > crate::plan::RUN_OVER {
        true => out.push(gone),
        false => out.extend(gone.members.iter().map(|m| {
            let args = ["del", name, m].map(String::from).to_vec();
            ipset(args, name, why)
        })),
    }
    let back = (was.members.iter()).filter(|m| {
        let comment = had.get(m).copied().flatten();
        has.get(m) != Some(&comment)
    });
    adds(name, back, was, why, &mut out);
    out
}

/// The snapshot's chains as state, with the sets `renamed` renamed in
/// their rules (what the first pass of a retyped revert leaves).
fn snapshot_state(snap: &Snapshot, renamed: &BTreeMap<String, String>) -> State {
    let mut state = State::default();
    for ((family, table, chain), before) in &snap.chains {
        let Some(c) = before else { continue };
        let rules = c.rules.iter().map(|r| renamed_rule(r, renamed)).collect();
        state
            .ruleset_mut(*family)
            .tables
            .entry(table.clone())
            .or_default()
            .chains
            .push((
                chain.clone(),
                Chain {
                    policy: c.policy.clone(),
                    rules,
                },
            ));
    }
    state
}

fn renamed_rule(rule: &Rule, renamed: &BTreeMap<String, String>) -> Rule {
    let mut rule = rule.clone();
    for (from, to) in renamed {
        rule = rule.with_set_renamed(from, to);
    }
    rule
}

/// Builds the commands of one family and table.
struct TableCmds<'a> {
    family: Family,
    table: &'a str,
}

impl TableCmds<'_> {
    fn cmd(&self, rest: Vec<String>, chain: &str) -> Command {
        let mut args = vec!["-w".to_string(), "-t".to_string(), self.table.to_string()];
        args.extend(rest);
        let label = crate::wishes::chain_label(self.family, self.table, chain);
        Command {
            program: Program::Iptables(self.family),
            args,
            undo: None,
            reason: format!("revert {label}"),
            target: label,
            wish: None,
            members: Default::default(),
        }
    }
}

type TableChains<'a> = BTreeMap<(Family, &'a str), Vec<(&'a String, &'a Option<Chain>)>>;

fn by_table(snap: &Snapshot) -> TableChains<'_> {
    let mut out: TableChains = BTreeMap::new();
    for ((family, table, chain), before) in &snap.chains {
        out.entry((*family, table.as_str()))
            .or_default()
            .push((chain, before));
    }
    out
}

/// One transaction per family and table, with the fewest edits: each
/// touched chain's rules brought back to the snapshot (see [`chain_edits`]),
/// its policy put back; chains the apply created emptied and removed after
/// every other edit (so that no rule still jumps to them), all at once.
fn chain_steps(
    snap: &Snapshot,
    now: &State,
    renamed: &BTreeMap<String, String>,
) -> Vec<Vec<Command>> {
    let mut out = Vec::new();
    for ((family, table), chains) in by_table(snap) {
        let t = TableCmds { family, table };
        let mut create = Vec::new();
        let mut edits = Vec::new();
        let mut policies = Vec::new();
        let mut delete = Vec::new();
        for (chain, before) in chains {
            let current = now.ruleset(family).chain(table, chain);
            match (before, current) {
                (None, Some(_)) => {
                    delete.push(t.cmd(vec!["-F".into(), chain.clone()], chain));
                    delete.push(t.cmd(vec!["-X".into(), chain.clone()], chain));
                }
                (None, None) => {}
                (Some(c), current) => {
                    let want: Vec<Rule> =
                        c.rules.iter().map(|r| renamed_rule(r, renamed)).collect();
                    let have: &[Rule] = current.as_deref().map_or(&[], |c| &c.rules);
                    if current.is_none() {
                        create.push(t.cmd(vec!["-N".into(), chain.clone()], chain));
                    }
                    for args in chain_edits(chain, have, &want) {
                        edits.push(t.cmd(args, chain));
                    }
                    let policy_now = current.as_ref().and_then(|c| c.policy.clone());
                    if let Some(p) = c
                        .policy
                        .as_ref()
                        .filter(|p| Some(*p) != policy_now.as_ref())
                    {
                        policies.push(t.cmd(vec!["-P".into(), chain.clone(), p.clone()], chain));
                    }
                }
            }
        }
        let all: Vec<Command> = [create, edits, policies, delete].concat();
        if !all.is_empty() {
            out.push(all);
        }
    }
    out
}

/// The `-D CHAIN N` and `-I CHAIN N RULE` that turn `have` into `want`
/// inside one transaction, keeping the longest run of rules that are in
/// both in the same order: deletes first, from the bottom up (so numbers
/// do not shift), then inserts from the top down, each at its final place.
/// No rule is both inserted and deleted (iptables-nft refuses an insert in
/// front of a rule the same transaction inserts and deletes).
pub fn chain_edits(chain: &str, have: &[Rule], want: &[Rule]) -> Vec<Vec<String>> {
    // Each wanted rule's source: the next unused rule of `have` with its
    // text, in order (twins pair up in order).
    // `Rule` caches its argv in a cell that takes no part in its hash or
    // equality: the key cannot change while in the map.
    #[allow(clippy::mutable_key_type)]
    let mut by_text: HashMap<&Rule, VecDeque<usize>> = HashMap::new();
    for (i, r) in have.iter().enumerate() {
        by_text.entry(r).or_default().push_back(i);
    }
    let sources: Vec<Option<usize>> = want
        .iter()
        .map(|r| by_text.get_mut(r).and_then(VecDeque::pop_front))
        .collect();
    let stable = crate::plan::chain::longest_increasing(&sources);
    let mut kept = vec![false; have.len()];
    for (s, keep) in sources.iter().zip(&stable) {
        if let (Some(i), true) = (s, keep) {
            kept[*i] = true;
        }
    }
    let mut out = Vec::new();
    for i in (0..have.len()).rev().filter(|&i| !kept[i]) {
        out.push(vec![
            "-D".to_string(),
            chain.to_string(),
            (i + 1).to_string(),
        ]);
    }
    for (j, rule) in want.iter().enumerate().filter(|(j, _)| !stable[*j]) {
        let mut args = vec!["-I".to_string(), chain.to_string(), (j + 1).to_string()];
        args.extend(rule.args().iter().cloned());
        out.push(args);
    }
    out
}

/// One transaction per family and table, when the state now is unknown:
/// every touched chain flushed and refilled as it was, its policy put
/// back, and chains the apply created removed, all at once.
fn blind_chain_steps(snap: &Snapshot, renamed: &BTreeMap<String, String>) -> Vec<Vec<Command>> {
    let mut out = Vec::new();
    for ((family, table), chains) in by_table(snap) {
        let t = TableCmds { family, table };
        let create: Vec<Command> = Vec::new();
        let mut flush = Vec::new();
        let mut fill = Vec::new();
        let mut policies = Vec::new();
        let mut delete = Vec::new();
        for (chain, before) in chains {
            // Unknown: every touched chain is taken to exist.
            match before {
                None => {
                    flush.push(t.cmd(vec!["-F".into(), chain.clone()], chain));
                    delete.push(t.cmd(vec!["-X".into(), chain.clone()], chain));
                }
                Some(c) => {
                    flush.push(t.cmd(vec!["-F".into(), chain.clone()], chain));
                    for rule in &c.rules {
                        let mut a = vec!["-A".to_string(), chain.clone()];
                        a.extend(renamed_rule(rule, renamed).args().iter().cloned());
                        fill.push(t.cmd(a, chain));
                    }
                    if let Some(p) = &c.policy {
                        policies.push(t.cmd(vec!["-P".into(), chain.clone(), p.clone()], chain));
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
            members: Default::default(),
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
            printed: vec![],
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
        // The fewest edits: the one member and the one rule the apply
        // added go, the policy comes back, and what it created goes; the
        // f2b jump stays where it is (its counters and handle with it).
        assert_eq!(
            lines(&revert_steps(&snap, Some(&after))),
            vec![
                vec!["ipset del keep 10.0.0.3".to_string()],
                vec![
                    "iptables -w -t filter -D INPUT 1".to_string(),
                    "iptables -w -t filter -P INPUT ACCEPT".into(),
                    "iptables -w -t filter -F mine".into(),
                    "iptables -w -t filter -X mine".into(),
                ],
                vec![
                    "ipset destroy new".to_string(),
                    "ipset destroy pyfw-owned".into(),
                ],
            ]
        );
        // The state as it was: nothing to do at all.
        let steps = revert_steps(&snap, Some(&before));
        assert!(steps.is_empty(), "{:?}", lines(&steps));
        // Unknown: every touched chain is rewritten, blind.
        let blind = lines(&revert_steps(&snap, None));
        assert!(
            blind
                .iter()
                .flatten()
                .any(|l| l == "iptables -w -t filter -F INPUT"),
            "{blind:?}"
        );
    }

    #[test]
    fn chain_edits_keep_every_rule_in_both_and_do_the_rest_in_one_pass() {
        let r = |t: &str| Rule::parse(t).unwrap();
        let have = [r("-j A"), r("-j X"), r("-j B"), r("-j C"), r("-j A")];
        let want = [r("-j A"), r("-j B"), r("-j Y"), r("-j C"), r("-j A")];
        let edits: Vec<String> = chain_edits("F", &have, &want)
            .iter()
            .map(|a| a.join(" "))
            .collect();
        assert_eq!(edits, ["-D F 2", "-I F 3 -j Y"]);
        // Twins pair up in order; a reversed chain keeps one and moves the
        // rest, never deleting and inserting the same rule.
        let have = [r("-j A"), r("-j B"), r("-j C")];
        let want = [r("-j C"), r("-j B"), r("-j A")];
        let edits: Vec<String> = chain_edits("F", &have, &want)
            .iter()
            .map(|a| a.join(" "))
            .collect();
        assert_eq!(edits, ["-D F 3", "-D F 2", "-I F 1 -j C", "-I F 2 -j B"]);
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
            printed: vec![],
        };
        let snap = Snapshot::of(&plan, before.clone());
        let now = state(
            "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -m set --match-set s src -j DROP\nCOMMIT\n",
            "create s hash:net family inet\nadd s 10.0.0.0/24\n",
        );
        let tmp = scratch_set("s");
        let got = lines(&revert_steps(&snap, Some(&now)));
        let flat: Vec<&str> = got.iter().flatten().map(String::as_str).collect();
        let at = |needle: &str| {
            flat.iter()
                .position(|l| *l == needle)
                .unwrap_or_else(|| panic!("{needle} not in {flat:#?}"))
        };
        let via_tmp =
            format!("iptables -w -t filter -I INPUT 1 -m set --match-set {tmp} src -j DROP");
        assert!(at(&format!("ipset create {tmp} hash:ip family inet")) < at(&via_tmp));
        assert!(at(&via_tmp) < at("ipset destroy s"));
        assert!(at("ipset destroy s") < at("ipset create s hash:ip family inet"));
        let back = "iptables -w -t filter -I INPUT 1 -m set --match-set s src -j DROP";
        assert!(at("ipset add s 10.0.0.1") < at(back));
        assert!(at(back) < at(&format!("ipset destroy {tmp}")));
    }
}
