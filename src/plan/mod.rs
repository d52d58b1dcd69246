//! The planner: a pure function from wishes and state to ordered commands.
//!
//! The desired order of a wished chain is: the wished rules in order, with
//! each `~match` group where it stands, then every other rule in its current
//! order. The planner keeps the rules that are already in the right relative
//! order (a longest increasing subsequence) and moves only the rest, so a
//! Docker restart that pushes one rule down costs one move, not a rewrite.
//!
//! **Other programs' rules never move.** A rule pyfw does not own and no
//! `~match` takes is never deleted, inserted again or moved by a chain's
//! plan: only pyfw's own rules (wished, replaced, duplicated or withdrawn
//! ones, and temporary copies) and the rules a `~match` takes are. When
//! pyfw's rules and such a rule are out of order (Docker's `-I FORWARD 1
//! -j DOCKER-USER` on top of them), pyfw's rules move, however many there
//! are, so the other rule keeps its packet counters and its nf_tables
//! handle, and another program deleting it by its handle never misses.
//! The one exception is a set whose type changes (`sets::retarget`): every
//! rule naming the set, whoever owns it, is replaced by one naming a scratch
//! copy and back, since the kernel keeps a set in use.
//!
//! Commands are chosen so that a wished rule that exists is never missing,
//! even for an instant: a rule moved up is first copied as
//! `_pyfw_temp_NAME` at its new place (the spec's temp-rule trick), and a
//! replaced rule is inserted before its old text is deleted. Every command
//! carries its inverse so that the shell can roll back a plan that fails
//! half-way.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::plan::chain::plan_chain;
use crate::plan::command::{element, ipset_cmd, ipt_args};
use crate::plan::record::record_changes;
use crate::plan::sets::{
    MemberCmds, SetChange, create_args, hash_size, plan_ipset, retarget, spare_name,
};
use crate::state::ownership::{self, Owned};
use crate::state::rule::Rule;
use crate::state::{Family, State, builtin_chains};
use crate::wishes::{ChainWish, IpsetWish, RuleItem, Wishes};

pub mod chain;
pub mod command;
pub mod lint;
pub mod nft;
pub mod predict;
pub mod record;
pub mod revert;
pub mod sets;
pub mod warnings;

pub use command::{Command, Plan, PrintedAs, Program, RUN_OVER};

/// Plans the commands that make `state` match `wishes`: sets (and the
/// owned nftables tables' record entries), then chains
/// and their rules, then sets whose type changes under their rules, then
/// chains withdrawn, policies, sets withdrawn, and the record's changes.
pub fn plan(wishes: &Wishes, state: &State) -> Plan {
    plan_leaving(wishes, state, &BTreeSet::new())
}

/// [`plan`], leaving alone the wished sets `trusted` (known to be as
/// wished; `state` holds their type and options, not their members: see
/// `reconcile::set_checks`).
pub fn plan_leaving(wishes: &Wishes, state: &State, trusted: &BTreeSet<String>) -> Plan {
    let mut p = Planner::new(wishes, state, trusted);
    let retargets = p.sets();
    p.nft_tables();
    let (chains, withdrawn) = p.chains_to_plan();
    p.create_chains(&chains);
    p.chain_rules(&chains, &withdrawn);
    p.retargets(&retargets);
    p.withdrawn_chains();
    p.policies(&chains);
    p.withdrawn_sets();
    p.finish()
}

/// A chain's key: family, table, name.
type ChainKey = (Family, String, String);

/// The withdrawn rules of each chain, as the record names them (name,
/// text hash).
type Withdrawals = HashMap<ChainKey, Vec<(String, String)>>;

/// One plan being made: what it read, what it has planned so far.
struct Planner<'a> {
    wishes: &'a Wishes,
    state: &'a State,
    /// Wished sets known to be as wished, left alone.
    trusted: &'a BTreeSet<String>,
    /// pyfw's ownership record as read.
    record: Vec<Owned>,
    /// What pyfw owns once the plan has run.
    keep: BTreeSet<Owned>,
    out: Plan,
    /// Commands that go after every other (sets destroyed once unused).
    last: Vec<Command>,
    /// Each planned chain's rules as the plan leaves them (every chain
    /// whose withdrawn rules go is planned, so the chains not here lose no
    /// rule).
    planned: HashMap<ChainKey, Vec<Rule>>,
}

impl<'a> Planner<'a> {
    fn new(wishes: &'a Wishes, state: &'a State, trusted: &'a BTreeSet<String>) -> Planner<'a> {
        Planner {
            wishes,
            state,
            trusted,
            record: ownership::read(state),
            keep: BTreeSet::new(),
            out: Plan::default(),
            last: Vec::new(),
            planned: HashMap::new(),
        }
    }

    /// Owned nftables tables: planned by `reconcile::nft`, recorded here
    /// with the rest (written ahead, trimmed after).
    fn nft_tables(&mut self) {
        for table in self.wishes.nftables.iter() {
            self.keep.insert(Owned::NftTable {
                family: table.family,
                name: table.name.clone(),
            });
        }
    }

    /// The wished sets (a list:set after the sets it names); returns the
    /// sets whose type changes to one the kernel cannot swap with, and the
    /// filled replacement each one's rules move to meanwhile.
    fn sets(&mut self) -> Vec<(&'a IpsetWish, String)> {
        let mut retargets = Vec::new();
        let mut sets: Vec<&IpsetWish> = self.wishes.ipsets.iter().collect();
        sets.sort_by_key(|s| s.kind.name() == "list:set");
        for set in sets {
            self.keep.insert(Owned::Set {
                name: set.name.clone(),
            });
            if self.trusted.contains(&set.name) {
                continue;
            }
            let have = self.state.ipsets.get(&set.name);
            if let SetChange::Retarget { tmp } =
                plan_ipset(set, have, &mut self.out.commands, &mut self.last)
            {
                retargets.push((set, tmp));
            }
        }
        retargets
    }

    /// Every chain the plan touches: the wished ones, and those holding a
    /// withdrawn rule pyfw owns (planned with no rules of their own: only
    /// the withdrawn rules go, nothing else moves). User chains come first
    /// so that a chain is filled before a jump to it lands; then names in
    /// order, so plans read the same every time.
    fn chains_to_plan(&self) -> (Vec<ChainWish>, Withdrawals) {
        let wishes = &self.wishes.chains;
        let mut chains: Vec<ChainWish> = wishes.clone();
        let mut withdrawn: Withdrawals = HashMap::new();
        // Looked up once per record entry: sets, so that a record of
        // thousands of rules costs no scan of the wishes per entry.
        let key = |c: &'a ChainWish| (c.family, c.table.as_str(), c.chain.as_str());
        let wished_chains: HashSet<(Family, &str, &str)> = wishes.iter().map(key).collect();
        let with_rules: HashSet<(Family, &str, &str)> = wishes
            .iter()
            .filter(|c| c.rules.is_some())
            .map(key)
            .collect();
        let wished_rules: HashSet<(Family, &str, &str, &str)> = wishes
            .iter()
            .filter(|c| c.rules.is_some())
            .flat_map(|c| {
                c.rule_names()
                    .map(|n| (c.family, c.table.as_str(), c.chain.as_str(), n))
            })
            .collect();
        let mut added: HashSet<ChainKey> = HashSet::new();
        for entry in &self.record {
            let Owned::Rule {
                family,
                table,
                chain,
                name,
                hash,
            } = entry
            else {
                continue;
            };
            let at = (*family, table.as_str(), chain.as_str());
            let wished = with_rules.contains(&at);
            if wished && wished_rules.contains(&(*family, table, chain, name)) {
                continue;
            }
            let owner = (*family, table.clone(), chain.clone());
            withdrawn
                .entry(owner.clone())
                .or_default()
                .push((name.clone(), hash.clone()));
            if !wished && !wished_chains.contains(&at) && added.insert(owner) {
                chains.push(ChainWish {
                    family: *family,
                    table: table.clone(),
                    chain: chain.clone(),
                    policy: None,
                    rules: Some(Vec::new()),
                    line: 0,
                });
            }
        }
        chains.sort_by_key(|c| {
            let builtin = builtin_chains(&c.table).contains(&c.chain.as_str());
            (c.family, c.table.clone(), builtin, c.chain.clone())
        });
        (chains, withdrawn)
    }

    /// True for a chain the wishes name (not one planned only for its
    /// withdrawn rules).
    fn is_wished(&self, c: &ChainWish) -> bool {
        self.wishes
            .chains
            .iter()
            .any(|w| w.family == c.family && w.table == c.table && w.chain == c.chain)
    }

    /// `-N` for each wished chain that does not exist; pyfw owns it.
    fn create_chains(&mut self, chains: &[ChainWish]) {
        for wish in chains {
            if !self.is_wished(wish) {
                continue;
            }
            let exists = (self.state.ruleset(wish.family))
                .chain(&wish.table, &wish.chain)
                .is_some();
            let owned = Owned::Chain {
                family: wish.family,
                table: wish.table.clone(),
                chain: wish.chain.clone(),
            };
            if !exists {
                self.out.commands.push(Command {
                    program: Program::Iptables(wish.family),
                    args: ipt_args(&wish.table, ["-N", wish.chain.as_str()]),
                    undo: Some(ipt_args(&wish.table, ["-X", wish.chain.as_str()])),
                    reason: format!("{}: chain missing", wish.label()),
                    target: wish.label(),
                    wish: None,
                    members: Default::default(),
                });
                self.keep.insert(owned);
            } else if self.record.contains(&owned) {
                self.keep.insert(owned);
            }
        }
    }

    /// Each chain's rules ([`plan_chain`]); what pyfw owns of them, and how
    /// iptables prints the rules installed as written.
    fn chain_rules(&mut self, chains: &[ChainWish], withdrawn: &Withdrawals) {
        for wish in chains {
            for item in wish.rules.iter().flatten() {
                if let RuleItem::Named(r) = item {
                    self.own_rule(wish, r);
                }
            }
            let Some(_) = wish.rules else { continue };
            let chain = self
                .state
                .ruleset(wish.family)
                .chain(&wish.table, &wish.chain);
            let current: &[Rule] = chain.as_deref().map_or(&[], |c| &c.rules);
            let key = (wish.family, wish.table.clone(), wish.chain.clone());
            let gone = withdrawn.get(&key).map(Vec::as_slice).unwrap_or(&[]);
            let (commands, result) = plan_chain(wish, current, gone);
            self.out.commands.extend(commands);
            self.planned.insert(key, result);
        }
    }

    /// A wished rule: pyfw owns it (by its text as iptables prints it), and
    /// the plan lists that printed form when it differs from what pyfw
    /// installs.
    fn own_rule(&mut self, wish: &ChainWish, r: &crate::wishes::NamedRule) {
        self.keep.insert(Owned::rule(
            wish.family,
            &wish.table,
            &wish.chain,
            &r.name,
            r.compare(),
        ));
        if let Some(printed) = &r.printed {
            self.out.printed.push(PrintedAs {
                family: wish.family,
                table: wish.table.clone(),
                installed: r.rule.clone(),
                printed: printed.clone(),
            });
        }
    }

    /// Sets whose type changes to one the kernel will neither swap with
    /// nor rename while in use: every rule moves to the filled replacement,
    /// the set is rebuilt under a spare name and takes its own, and the
    /// rules move back.
    fn retargets(&mut self, retargets: &[(&IpsetWish, String)]) {
        if retargets.is_empty() {
            return;
        }
        // Every chain as the plan leaves it so far.
        let mut chains_now: BTreeMap<ChainKey, Vec<Rule>> = BTreeMap::new();
        for family in [Family::V4, Family::V6] {
            for (table, t) in &self.state.ruleset(family).tables {
                for (chain, c) in &t.chains {
                    chains_now.insert((family, table.clone(), chain.clone()), c.rules.clone());
                }
            }
        }
        chains_now.extend(self.planned.clone());
        for (wish, tmp) in retargets {
            let name = wish.name.as_str();
            self.out
                .commands
                .extend(retarget(&mut chains_now, name, tmp));
            self.rebuild(wish);
            self.out
                .commands
                .extend(retarget(&mut chains_now, tmp, name));
            self.out.commands.push(ipset_cmd(
                name,
                &["destroy", tmp],
                None,
                format!("ipset {name}: drop the replacement"),
            ));
        }
    }

    /// Rebuilds a retargeted set under a spare name, so that its own name
    /// is without a full set only between two commands, and gives it the
    /// name: filled with the wished members, or (when the wish leaves
    /// membership alone) the set's own.
    fn rebuild(&mut self, wish: &IpsetWish) {
        let name = wish.name.as_str();
        let fresh = spare_name("_pyfw_new_", name);
        let none = crate::state::Members::new();
        let have = self.state.ipsets.get(name).map_or(&none, |h| &h.members);
        let members = wish.members.as_ref().unwrap_or(have);
        let sized = hash_size(wish, members.len());
        let create = create_args(&fresh, wish, &sized);
        let commands = &mut self.out.commands;
        commands.push(ipset_cmd(
            name,
            &create,
            Some(&["destroy", &fresh]),
            format!("ipset {name}: rebuild as {}", wish.kind.name()),
        ));
        let rebuild = MemberCmds::new(&fresh, &fresh, "rebuild");
        rebuild.adds(members.iter(), commands);
        commands.push(ipset_cmd(
            name,
            &["destroy", name],
            None,
            format!("ipset {name}: drop the old set; every rule uses the replacement"),
        ));
        commands.push(ipset_cmd(
            name,
            &["rename", &fresh, name],
            Some(&["rename", name, &fresh]),
            format!("ipset {name}: the rebuilt set takes the name"),
        ));
    }

    /// Chains pyfw created and no longer wishes, once empty and
    /// unreferenced as the plan leaves things.
    fn withdrawn_chains(&mut self) {
        let mut jumps = None;
        for entry in self.record.clone() {
            let Owned::Chain {
                family,
                table,
                chain,
            } = &entry
            else {
                continue;
            };
            if self.keep.contains(&entry) {
                continue;
            }
            let ruleset = self.state.ruleset(*family);
            let Some(current) = ruleset.tables.get(table).and_then(|t| t.chain(chain)) else {
                continue; // Gone already: forget it.
            };
            // What the plan leaves in it: a planned chain's final rules (its
            // leftover temporary copies gone too), else the rules as read.
            let key = (*family, table.clone(), chain.clone());
            let left = self.planned.get(&key).map_or(current.rules.len(), Vec::len);
            // Referenced as the plan leaves things: a planned chain by its
            // final rules (a wished rule may jump here), any other as read.
            let jumps = jumps.get_or_insert_with(|| jump_targets(self.state, &self.planned));
            let referenced = jumps.contains(&(*family, table.as_str(), chain.as_str()));
            if left > 0 || referenced {
                self.keep.insert(entry.clone());
                continue;
            }
            let label = crate::wishes::chain_label(*family, table, chain);
            self.out.commands.push(Command {
                program: Program::Iptables(*family),
                args: ipt_args(table, ["-X", chain.as_str()]),
                undo: Some(ipt_args(table, ["-N", chain.as_str()])),
                reason: format!(
                    "{label}: withdrawn from the wishes; pyfw created it, and it is empty and \
                     unreferenced"
                ),
                target: label,
                wish: None,
                members: Default::default(),
            });
        }
    }

    /// Policies last, so that a DROP policy never lands before its allow
    /// rules.
    fn policies(&mut self, chains: &[ChainWish]) {
        for wish in chains {
            let Some(policy) = &wish.policy else { continue };
            let current = (self.state.ruleset(wish.family))
                .chain(&wish.table, &wish.chain)
                .and_then(|c| c.policy.clone())
                .unwrap_or_else(|| "ACCEPT".to_string());
            if &current != policy {
                self.out.commands.push(Command {
                    program: Program::Iptables(wish.family),
                    args: ipt_args(&wish.table, ["-P", &wish.chain, policy]),
                    undo: Some(ipt_args(&wish.table, ["-P", &wish.chain, &current])),
                    reason: format!("{}: policy is {current}, wished {policy}", wish.label()),
                    target: wish.label(),
                    wish: None,
                    members: Default::default(),
                });
            }
        }
    }

    /// Sets pyfw managed and no longer wishes, once no rule names them.
    fn withdrawn_sets(&mut self) {
        let mut used_sets = None;
        for entry in self.record.clone() {
            let Owned::Set { name } = &entry else {
                continue;
            };
            if self.keep.contains(&entry) || !self.state.ipsets.contains_key(name) {
                continue;
            }
            let used = used_sets
                .get_or_insert_with(|| sets_in_use(self.wishes, self.state, &self.planned))
                .contains(name.as_str());
            if used {
                self.keep.insert(entry.clone());
                continue;
            }
            self.last.push(ipset_cmd(
                name,
                &["destroy", name],
                None,
                format!("ipset {name}: withdrawn from the wishes, and no rule uses it"),
            ));
        }
    }

    /// The plan: the commands that go last appended, each table's
    /// commands brought together, and the record's changes.
    fn finish(mut self) -> Plan {
        self.out.commands.append(&mut self.last);
        group_tables(&mut self.out.commands);
        self.out.record = record_changes(&self.record, &self.keep, self.state);
        self.out
    }
}

/// Every chain some rule of another chain jumps or goes to, by family and
/// table, with the rules as the plan leaves them: a planned chain's final
/// rules, any other chain's as read. Gathered once for all the chains pyfw
/// may drop, so that asking costs no pass over every rule per chain.
fn jump_targets<'a>(
    state: &'a State,
    planned: &'a HashMap<(Family, String, String), Vec<Rule>>,
) -> HashSet<(Family, &'a str, &'a str)> {
    let mut out = HashSet::new();
    for family in [Family::V4, Family::V6] {
        for (table, t) in &state.ruleset(family).tables {
            for (name, c) in &t.chains {
                if planned.contains_key(&(family, table.clone(), name.clone())) {
                    continue;
                }
                for target in c.rules.iter().filter_map(Rule::target) {
                    if target != name {
                        out.insert((family, table.as_str(), target));
                    }
                }
            }
        }
    }
    for ((family, table, name), rules) in planned {
        for target in rules.iter().filter_map(Rule::target) {
            if target != name {
                out.insert((*family, table.as_str(), target));
            }
        }
    }
    out
}

/// Every set a rule or a list:set names, as the plan leaves things: rules
/// of the planned chains as planned, every other chain's as read; a
/// wished list:set's members as wished, any other's as read. Gathered once
/// for all the sets pyfw may drop.
fn sets_in_use<'a>(
    wishes: &'a Wishes,
    state: &'a State,
    planned: &'a HashMap<(Family, String, String), Vec<Rule>>,
) -> HashSet<&'a str> {
    let mut used = HashSet::new();
    for family in [Family::V4, Family::V6] {
        for (table, t) in &state.ruleset(family).tables {
            for (chain, c) in &t.chains {
                let key = (family, table.clone(), chain.clone());
                let rules = planned.get(&key).unwrap_or(&c.rules);
                used.extend(rules.iter().flat_map(Rule::sets));
            }
        }
    }
    for (key, rules) in planned {
        let read = state
            .ruleset(key.0)
            .tables
            .get(&key.1)
            .and_then(|t| t.chain(&key.2));
        if read.is_none() {
            used.extend(rules.iter().flat_map(Rule::sets));
        }
    }
    for (list, set) in &state.ipsets {
        if set.kind != "list:set" {
            continue;
        }
        let wished = wishes.ipsets.iter().find(|w| w.name == *list);
        let members = wished
            .and_then(|w| w.members.as_ref())
            .unwrap_or(&set.members);
        used.extend(members.iter().map(element));
    }
    used
}

/// Within each run of iptables commands, brings each table's commands
/// together (keeping their order), so each table's changes can go to the
/// kernel as one transaction. Tables are independent, so this reorders
/// nothing that matters.
fn group_tables(commands: &mut [Command]) {
    let table = |c: &Command| match c.program {
        Program::Iptables(f) => Some((f, c.args.get(2).cloned().unwrap_or_default())),
        Program::Ipset | Program::Nft => None,
    };
    let mut start = 0;
    while start < commands.len() {
        if table(&commands[start]).is_none() {
            start += 1;
            continue;
        }
        let end = (start..commands.len())
            .find(|&i| table(&commands[i]).is_none())
            .unwrap_or(commands.len());
        let mut order: Vec<(Family, String)> = Vec::new();
        for c in &commands[start..end] {
            if let Some(t) = table(c).filter(|t| !order.contains(t)) {
                order.push(t);
            }
        }
        commands[start..end]
            .sort_by_key(|c| table(c).and_then(|t| order.iter().position(|o| *o == t)));
        start = end;
    }
}
