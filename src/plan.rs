//! The planner: a pure function from wishes and state to ordered commands.
//!
//! The desired order of a wished chain is: the wished rules in order, with
//! each `~match` group where it stands, then every other rule in its current
//! order. The planner keeps the rules that are already in the right relative
//! order (a longest increasing subsequence) and moves only the rest, so a
//! Docker restart that pushes one rule down costs one move, not a rewrite.
//!
//! Commands are chosen so that a wished rule that exists is never missing,
//! even for an instant: a rule moved up is first copied as
//! `_pyfw_temp_NAME` at its new place (the spec's temp-rule trick), and a
//! replaced rule is inserted before its old text is deleted. Every command
//! carries its inverse so that the shell can roll back a plan that fails
//! half-way.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt;

use fnv::FnvHashMap;

use crate::ownership::{self, Owned, RECORD_CREATE, RECORD_SET};
use crate::rule::{Rule, TEMP_PREFIX, display_args};
use crate::state::{Family, Ipset, State, builtin_chains};
use crate::wishes::{ChainWish, IpsetWish, RuleItem, Wishes};

/// The program a command runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program {
    Iptables(Family),
    Ipset,
}

impl Program {
    pub fn name(self) -> &'static str {
        match self {
            Program::Iptables(f) => f.command(),
            Program::Ipset => "ipset",
        }
    }
}

/// One command of a plan: argv for `program`, why it runs, and how to
/// undo it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    pub program: Program,
    pub args: Vec<String>,
    /// Arguments that reverse this command, for rolling back a failed apply.
    /// `None` for the few that cannot be undone; plans put those last.
    pub undo: Option<Vec<String>>,
    /// Why this command runs, for plan output and audit logs.
    pub reason: String,
    /// The chain (`filter/INPUT`) or set (`ipset NAME`) it changes.
    pub target: String,
    /// The wished rule or set name it serves, if any.
    pub wish: Option<String>,
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.program.name(), display_args(&self.args))
    }
}

/// The commands that make the state match the wishes, in the order they must
/// run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub commands: Vec<Command>,
    /// Updates to pyfw's ownership record, run after `commands` succeed.
    /// They change no rule, so they are not part of what `check` reports.
    pub record: Vec<Command>,
}

impl Plan {
    /// True when netfilter already matches the wishes.
    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }
}

/// Plans the commands that make `state` match `wishes`.
pub fn plan(wishes: &Wishes, state: &State) -> Plan {
    let mut out = Plan::default();
    let mut last = Vec::new();
    let record = ownership::read(state);
    let mut keep: BTreeSet<Owned> = BTreeSet::new();
    let mut retargets = Vec::new();
    // A list:set names other sets: those come first.
    let mut sets: Vec<&IpsetWish> = wishes.ipsets.iter().collect();
    sets.sort_by_key(|s| s.kind.name() == "list:set");
    for set in sets {
        if let SetChange::Retarget { tmp } = plan_ipset(
            set,
            state.ipsets.get(&set.name),
            &mut out.commands,
            &mut last,
        ) {
            retargets.push((set, tmp));
        }
        keep.insert(Owned::Set {
            name: set.name.clone(),
        });
    }

    // Every chain the plan touches: the wished ones, and those holding a
    // withdrawn rule pyfw owns. User chains come first so that a chain is
    // filled before a jump to it lands; then names in order, so plans read
    // the same every time.
    let mut chains: Vec<ChainWish> = wishes.chains.clone();
    let mut withdrawn: HashMap<(Family, String, String), Vec<(String, String)>> = HashMap::new();
    // Looked up once per record entry: sets, so that a record of thousands
    // of rules costs no scan of the wishes per entry.
    let wished_chains: HashSet<(Family, &str, &str)> = wishes
        .chains
        .iter()
        .map(|c| (c.family, c.table.as_str(), c.chain.as_str()))
        .collect();
    let with_rules: HashSet<(Family, &str, &str)> = wishes
        .chains
        .iter()
        .filter(|c| c.rules.is_some())
        .map(|c| (c.family, c.table.as_str(), c.chain.as_str()))
        .collect();
    let wished_rules: HashSet<(Family, &str, &str, &str)> = wishes
        .chains
        .iter()
        .filter(|c| c.rules.is_some())
        .flat_map(|c| {
            c.rule_names()
                .map(|n| (c.family, c.table.as_str(), c.chain.as_str(), n))
        })
        .collect();
    let mut added: HashSet<(Family, String, String)> = HashSet::new();
    for entry in &record {
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
        let key = (*family, table.as_str(), chain.as_str());
        let wished = with_rules.contains(&key);
        if wished && wished_rules.contains(&(*family, table, chain, name)) {
            continue;
        }
        withdrawn
            .entry((*family, table.clone(), chain.clone()))
            .or_default()
            .push((name.clone(), hash.clone()));
        if !wished
            && !wished_chains.contains(&key)
            && added.insert((*family, table.clone(), chain.clone()))
        {
            // Not wished: only its withdrawn rules go; nothing else moves.
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
    let is_wished =
        |c: &ChainWish| wished_chains.contains(&(c.family, c.table.as_str(), c.chain.as_str()));

    for wish in &chains {
        let exists = state
            .ruleset(wish.family)
            .chain(&wish.table, &wish.chain)
            .is_some();
        let owned = Owned::Chain {
            family: wish.family,
            table: wish.table.clone(),
            chain: wish.chain.clone(),
        };
        if !exists && is_wished(wish) {
            out.commands.push(Command {
                program: Program::Iptables(wish.family),
                args: ipt_args(&wish.table, ["-N", wish.chain.as_str()]),
                undo: Some(ipt_args(&wish.table, ["-X", wish.chain.as_str()])),
                reason: format!("{}: chain missing", wish.label()),
                target: wish.label(),
                wish: None,
            });
            keep.insert(owned);
        } else if record.contains(&owned) && is_wished(wish) {
            keep.insert(owned);
        }
    }
    // Each planned chain as the plan leaves it (every chain whose withdrawn
    // rules go is planned, so the chains not here lose no rule).
    let mut planned: HashMap<(Family, String, String), Vec<Rule>> = HashMap::new();
    for wish in &chains {
        for item in wish.rules.iter().flatten() {
            if let RuleItem::Named(r) = item {
                keep.insert(Owned::rule(
                    wish.family,
                    &wish.table,
                    &wish.chain,
                    &r.name,
                    &r.rule,
                ));
            }
        }
        let chain = state.ruleset(wish.family).chain(&wish.table, &wish.chain);
        let current: &[Rule] = chain.as_deref().map_or(&[], |c| &c.rules);
        let gone = withdrawn
            .get(&(wish.family, wish.table.clone(), wish.chain.clone()))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        if wish.rules.is_some() {
            let (commands, result) = plan_chain(wish, current, gone);
            out.commands.extend(commands);
            planned.insert(
                (wish.family, wish.table.clone(), wish.chain.clone()),
                result,
            );
        }
    }
    if !retargets.is_empty() {
        // Every chain as the plan leaves it so far.
        let mut chains_now: BTreeMap<(Family, String, String), Vec<Rule>> = BTreeMap::new();
        for family in [Family::V4, Family::V6] {
            for (table, t) in &state.ruleset(family).tables {
                for (chain, c) in &t.chains {
                    chains_now.insert((family, table.clone(), chain.clone()), c.rules.clone());
                }
            }
        }
        chains_now.extend(planned.clone());
        for (wish, tmp) in &retargets {
            let name = wish.name.as_str();
            // The kernel will neither swap sets of unlike types nor rename a
            // set in use: move every rule to the filled replacement, rebuild
            // the set under its own name, and move the rules back.
            out.commands.extend(retarget(&mut chains_now, name, tmp));
            // Build the final set under a spare name, so that the name
            // `name` is without a full set only between two commands.
            let fresh = spare_name("_pyfw_new_", name);
            // The members the replacement was filled with: the wished
            // ones, or (when the wish leaves membership alone) the set's.
            let have = state.ipsets.get(name).map_or(&[][..], |h| &h.members);
            let keep = wish.members.as_deref().unwrap_or(have);
            let sized = hash_size(wish, keep.len());
            let create = create_args(&fresh, wish, &sized);
            out.commands.push(ipset_cmd(
                name,
                &create,
                Some(&["destroy", &fresh]),
                format!("ipset {name}: rebuild as {}", wish.kind.name()),
            ));
            let rebuild = MemberCmds::new(&fresh, &fresh, "rebuild");
            for m in keep {
                out.commands.push(rebuild.add(m));
            }
            out.commands.push(ipset_cmd(
                name,
                &["destroy", name],
                None,
                format!("ipset {name}: drop the old set; every rule uses the replacement"),
            ));
            out.commands.push(ipset_cmd(
                name,
                &["rename", &fresh, name],
                Some(&["rename", name, &fresh]),
                format!("ipset {name}: the rebuilt set takes the name"),
            ));
            out.commands.extend(retarget(&mut chains_now, tmp, name));
            out.commands.push(ipset_cmd(
                name,
                &["destroy", tmp],
                None,
                format!("ipset {name}: drop the replacement"),
            ));
        }
    }

    // Chains pyfw created and no longer wishes, once empty and unreferenced.
    let mut jumps = None;
    for entry in &record {
        let Owned::Chain {
            family,
            table,
            chain,
        } = entry
        else {
            continue;
        };
        if keep.contains(entry) {
            continue;
        }
        let ruleset = state.ruleset(*family);
        let Some(current) = ruleset.tables.get(table).and_then(|t| t.chain(chain)) else {
            continue; // Gone already: forget it.
        };
        // What the plan leaves in it: a planned chain's final rules (its
        // leftover temporary copies gone too), else the rules as read.
        let left = match planned.get(&(*family, table.clone(), chain.clone())) {
            Some(rules) => rules.len(),
            None => current.rules.len(),
        };
        // Referenced as the plan leaves things: a planned chain by its
        // final rules (a wished rule may jump here), any other as read.
        let jumps = jumps.get_or_insert_with(|| jump_targets(state, &planned));
        let referenced = jumps.contains(&(*family, table.as_str(), chain.as_str()));
        if left > 0 || referenced {
            keep.insert(entry.clone());
            continue;
        }
        let label = crate::wishes::chain_label(*family, table, chain);
        out.commands.push(Command {
            program: Program::Iptables(*family),
            args: ipt_args(table, ["-X", chain.as_str()]),
            undo: Some(ipt_args(table, ["-N", chain.as_str()])),
            reason: format!("{label}: withdrawn from the wishes; pyfw created it, and it is empty and unreferenced"),
            target: label,
            wish: None,
        });
    }

    // Policies last, so that a DROP policy never lands before its allow rules.
    for wish in &chains {
        let Some(policy) = &wish.policy else { continue };
        let current = state
            .ruleset(wish.family)
            .chain(&wish.table, &wish.chain)
            .and_then(|c| c.policy.clone())
            .unwrap_or_else(|| "ACCEPT".to_string());
        if &current != policy {
            out.commands.push(Command {
                program: Program::Iptables(wish.family),
                args: ipt_args(&wish.table, ["-P", &wish.chain, policy]),
                undo: Some(ipt_args(&wish.table, ["-P", &wish.chain, &current])),
                reason: format!("{}: policy is {current}, wished {policy}", wish.label()),
                target: wish.label(),
                wish: None,
            });
        }
    }

    // Sets pyfw managed and no longer wishes, once no rule names them.
    let mut used_sets = None;
    for entry in &record {
        let Owned::Set { name } = entry else { continue };
        if keep.contains(entry) || !state.ipsets.contains_key(name) {
            continue;
        }
        let used = used_sets
            .get_or_insert_with(|| sets_in_use(wishes, state, &planned))
            .contains(name.as_str());
        if used {
            keep.insert(entry.clone());
            continue;
        }
        last.push(ipset_cmd(
            name,
            &["destroy", name],
            None,
            format!("ipset {name}: withdrawn from the wishes, and no rule uses it"),
        ));
    }
    out.commands.append(&mut last);
    group_tables(&mut out.commands);
    out.record = record_changes(&record, &keep, state);
    out
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
        used.extend(members.iter().map(|m| element(m)));
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
        Program::Ipset => None,
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

/// Points every rule that names set `from` at set `to` instead: each copy
/// is inserted just above its original before the original goes, so
/// matching never lapses. `chains` holds every chain as the plan leaves it.
fn retarget(
    chains: &mut BTreeMap<(Family, String, String), Vec<Rule>>,
    from: &str,
    to: &str,
) -> Vec<Command> {
    let mut out = Vec::new();
    for ((family, table, chain), rules) in chains.iter_mut() {
        if !rules.iter().any(|r| r.sets().any(|s| s == from)) {
            continue;
        }
        let mut sim = ChainSim::new(*family, table, chain, rules);
        for (id, rule) in rules.iter().enumerate() {
            if !rule.sets().any(|s| s == from) {
                continue;
            }
            let moved = rule.with_set_renamed(from, to);
            let reason = format!("ipset {from}: rules move to {to}");
            let wish = rule.comment().map(String::from);
            let at = sim.pos(id);
            sim.insert(at, moved, wish.as_deref(), &reason);
            sim.delete(id, wish.as_deref(), &reason);
        }
        *rules = sim.slots.iter().map(|s| s.rule.clone()).collect();
        out.extend(sim.out);
    }
    out
}

/// The withdrawn rules of one chain, as pyfw's record names them (name and
/// text hash), in sets: a chain of 50,000 rules is checked against a
/// record of thousands without a scan per rule.
struct Withdrawn<'a> {
    names: TextSet<'a>,
    pairs: HashSet<(&'a str, &'a str), crate::rule::TextHash>,
}

impl<'a> Withdrawn<'a> {
    fn new(gone: &'a [(String, String)]) -> Withdrawn<'a> {
        Withdrawn {
            names: gone.iter().map(|(n, _)| n.as_str()).collect(),
            pairs: gone.iter().map(|(n, h)| (n.as_str(), h.as_str())).collect(),
        }
    }

    /// True for a rule pyfw put there and the wishes (named `wished`) no
    /// longer hold.
    fn holds(&self, rule: &Rule, wished: &TextSet) -> bool {
        if self.names.is_empty() {
            return false;
        }
        let Some(name) = rule.comment() else {
            return false;
        };
        // Most rules carry no withdrawn name: settle those without hashing.
        if !self.names.contains(name) || wished.contains(name) {
            return false;
        }
        let hash = ownership::text_hash(rule);
        self.pairs.contains(&(name, hash.as_str()))
    }
}

/// The commands that turn the record into `keep`.
fn record_changes(record: &[Owned], keep: &BTreeSet<Owned>, state: &State) -> Vec<Command> {
    let mut out = Vec::new();
    let cmd = |args: Vec<String>, reason: String| Command {
        program: Program::Ipset,
        args,
        undo: None,
        reason,
        target: format!("ipset {RECORD_SET}"),
        wish: None,
    };
    let have: BTreeSet<&Owned> = record.iter().collect();
    if !state.ipsets.contains_key(RECORD_SET) && !keep.is_empty() {
        out.push(cmd(
            RECORD_CREATE.iter().map(|s| s.to_string()).collect(),
            "ownership record missing".into(),
        ));
    }
    for entry in keep {
        if !have.contains(entry) {
            let args = ["add", RECORD_SET, &entry.element(), "comment", &entry.key()];
            out.push(cmd(
                args.map(String::from).to_vec(),
                format!("record: own {}", entry.key()),
            ));
        }
    }
    for entry in record {
        if !keep.contains(entry) {
            let args = ["del", RECORD_SET, &entry.element()];
            out.push(cmd(
                args.map(String::from).to_vec(),
                format!("record: forget {}", entry.key()),
            ));
        }
    }
    out
}

fn ipt_args<'a>(table: &str, rest: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut args = vec!["-w".to_string(), "-t".to_string(), table.to_string()];
    args.extend(rest.into_iter().map(String::from));
    args
}

fn ipset_cmd(set: &str, args: &[&str], undo: Option<&[&str]>, reason: String) -> Command {
    let owned = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    Command {
        program: Program::Ipset,
        args: owned(args),
        undo: undo.map(owned),
        reason,
        target: format!("ipset {set}"),
        wish: Some(set.to_string()),
    }
}

/// The temporary set a type or option change is built in before the swap.
fn swap_name(name: &str) -> String {
    spare_name(TEMP_PREFIX, name)
}

/// `prefix` + `name`, cut to ipset's 31-character limit.
fn spare_name(prefix: &str, name: &str) -> String {
    let mut tmp = format!("{prefix}{name}");
    tmp.truncate(31);
    tmp
}

/// The `hashsize` to create a big hash set with, when the wish names none:
/// the size the kernel would grow the set to (a power of two, some four
/// members a bucket), so that filling it does not rehash it again and again
/// on the way (a tenth of the time of filling 100,000 members). Sets of up
/// to 4,096 members start at the kernel's own default of 1,024 and get
/// none.
fn hash_size(wish: &IpsetWish, members: usize) -> Option<String> {
    const DEFAULT: usize = 1024;
    let hash = wish.kind.name().starts_with("hash:");
    let stated = wish.header.iter().any(|w| w == "hashsize");
    let size = members.div_ceil(4).next_power_of_two();
    (hash && !stated && size > DEFAULT).then(|| size.to_string())
}

/// `create NAME TYPE HEADER...`, and the `hashsize` of [`hash_size`] when
/// there is one.
fn create_args<'a>(name: &'a str, wish: &'a IpsetWish, size: &'a Option<String>) -> Vec<&'a str> {
    let mut create = vec!["create", name, wish.kind.name()];
    create.extend(wish.header.iter().map(String::as_str));
    create.extend(size.iter().flat_map(|size| ["hashsize", size.as_str()]));
    create
}

/// True when every option the wish states is what the set has. Options the
/// wish leaves out (ipset's defaults and its own choices) never count.
fn options_match(wish: &IpsetWish, have: &Ipset) -> bool {
    let mut words = wish.header.iter();
    while let Some(w) = words.next() {
        let valued = !matches!(w.as_str(), "counters" | "comment" | "skbinfo" | "forceadd");
        let ok = if valued {
            let value = words.next().map(String::as_str).unwrap_or("");
            // The kernel rounds a hash size up to a power of two.
            let value = match (w.as_str(), value.parse::<u32>()) {
                ("hashsize", Ok(n)) => n.max(64).next_power_of_two().to_string(),
                _ => value.to_string(),
            };
            have.options
                .windows(2)
                .any(|pair| pair[0] == *w && pair[1] == value)
        } else {
            have.options.contains(w)
        };
        if !ok {
            return false;
        }
    }
    // list:set and bitmap:port have no family.
    have_family(have).is_none_or(|f| f == family_word(wish))
}

/// A set change that must wait until the rules are planned.
enum SetChange {
    None,
    /// The set's type changes to one the kernel cannot swap with; its rules
    /// move to the filled replacement `tmp` while it is rebuilt.
    Retarget {
        tmp: String,
    },
}

fn have_family(have: &Ipset) -> Option<&str> {
    have.options
        .windows(2)
        .find(|p| p[0] == "family")
        .map(|p| p[1].as_str())
}

fn family_word(wish: &IpsetWish) -> &'static str {
    match wish.family {
        crate::ipset::SetFamily::Inet => "inet",
        crate::ipset::SetFamily::Inet6 => "inet6",
    }
}

fn plan_ipset(
    wish: &IpsetWish,
    have: Option<&Ipset>,
    out: &mut Vec<Command>,
    last: &mut Vec<Command>,
) -> SetChange {
    let name = wish.name.as_str();
    let members = wish.members.as_deref().unwrap_or(&[]);
    // What a created set is filled with: the wished members, or (when the
    // wish leaves membership alone) the set's own.
    let fill = wish
        .members
        .as_deref()
        .or(have.map(|h| h.members.as_slice()));
    let sized = hash_size(wish, fill.map_or(0, <[String]>::len));
    let create = create_args(name, wish, &sized);
    let Some(have) = have else {
        out.push(ipset_cmd(
            name,
            &create,
            Some(&["destroy", name]),
            format!("ipset {name}: missing"),
        ));
        out.reserve(members.len());
        let missing = MemberCmds::new(name, name, "missing");
        for m in members {
            out.push(missing.add(m));
        }
        return SetChange::None;
    };
    if have.kind != wish.kind.name() || !options_match(wish, have) {
        // Build the new set beside the old one, filled, so that rules
        // referencing the set never see it missing or empty.
        let tmp = swap_name(name);
        let tmp_create = create_args(&tmp, wish, &sized);
        let why = format!(
            "ipset {name}: is `{} {}`, wished `{} {}`",
            have.kind,
            have.options.join(" "),
            wish.kind.name(),
            wish.header.join(" ")
        );
        out.push(ipset_cmd(
            name,
            &tmp_create,
            Some(&["destroy", &tmp]),
            why.clone(),
        ));
        let keep = fill.unwrap_or(&have.members);
        out.reserve(keep.len());
        let fill = MemberCmds::new(&tmp, name, "fill the replacement");
        for m in keep {
            out.push(fill.add(m));
        }
        let same_family = have_family(have).is_none_or(|f| f == family_word(wish));
        if same_family && wish.kind.swappable_with(&have.kind) {
            out.push(ipset_cmd(
                name,
                &["swap", &tmp, name],
                Some(&["swap", &tmp, name]),
                why,
            ));
            last.push(ipset_cmd(
                name,
                &["destroy", &tmp],
                None,
                format!("ipset {name}: drop the old set"),
            ));
            return SetChange::None;
        }
        // The kernel will not swap sets of unlike types: point every rule at
        // the replacement instead, then give it the old name.
        return SetChange::Retarget { tmp };
    }
    let Some(wished) = &wish.members else {
        return SetChange::None;
    };
    let (gone, missing) = member_diff(&have.members, wished);
    let cmds = MemberCmds::new(name, name, "member missing");
    for i in gone {
        out.push(cmds.del(&have.members[i]));
    }
    for i in missing {
        out.push(cmds.add(&wished[i]));
    }
    SetChange::None
}

/// Which of the kernel's members (`have`, elements only) no wished member
/// names, and which wished members (`wished`, an element and perhaps its
/// options) the kernel lacks: indices, each list in its own order.
fn member_diff(have: &[String], wished: &[String]) -> (Vec<usize>, Vec<usize>) {
    ipv4_member_diff(have, wished).unwrap_or_else(|| index_member_diff(have, wished))
}

/// [`member_diff`] for members of any kind, by an index of their elements.
fn index_member_diff(have: &[String], wished: &[String]) -> (Vec<usize>, Vec<usize>) {
    // One pass over each list, each member read as few times as can be:
    // with 100,000 members scattered over the heap, reading them is the
    // cost. `first[i]` is the first member with member `i`'s element.
    let mut have_at = ElementIndex::for_members(have);
    let first: Vec<usize> = (have.iter().enumerate())
        .map(|(i, m)| have_at.first(m, i))
        .collect();
    let mut wished_here = vec![false; have.len()];
    let mut missing = Vec::new();
    for (k, m) in wished.iter().enumerate() {
        match have_at.get(element(m)) {
            Some(i) => wished_here[i] = true,
            None => missing.push(k),
        }
    }
    let gone = (first.iter().enumerate())
        .filter(|(_, f)| !wished_here[**f])
        .map(|(i, _)| i)
        .collect();
    (gone, missing)
}

/// [`member_diff`] for lists of plain IPv4 addresses only (the commonest
/// big set), `None` for any other: each list's addresses as 32 bits beside
/// their index, sorted, then walked side by side. Sorting two arrays of
/// 100,000 words reads memory in order, where a hash table of 100,000
/// entries misses the cache on nearly every insert and lookup (a 1% change
/// of a 100,000-member set planned in 14 ms that way, 9.5 ms this way).
/// The standard parser takes plain dotted quads only, so equal addresses
/// are equal texts.
fn ipv4_member_diff(have: &[String], wished: &[String]) -> Option<(Vec<usize>, Vec<usize>)> {
    let keys = |list: &[String], whole: bool| -> Option<Vec<u64>> {
        let mut keys = Vec::with_capacity(list.len());
        for (i, m) in list.iter().enumerate() {
            let text = if whole { m.as_str() } else { element(m) };
            let ip = text.parse::<std::net::Ipv4Addr>().ok()?;
            keys.push(u64::from(u32::from(ip)) << 32 | i as u64);
        }
        keys.sort_unstable();
        Some(keys)
    };
    let (have_keys, wished_keys) = (keys(have, true)?, keys(wished, false)?);
    let ip = |k: u64| k >> 32;
    let index = |k: u64| (k & u64::from(u32::MAX)) as usize;
    let (mut gone, mut missing) = (Vec::new(), Vec::new());
    let (mut h, mut w) = (0, 0);
    while h < have_keys.len() || w < wished_keys.len() {
        match (have_keys.get(h), wished_keys.get(w)) {
            (Some(&a), Some(&b)) if ip(a) == ip(b) => {
                // Every member of either list with this address matches.
                let at = ip(a);
                while have_keys.get(h).is_some_and(|&k| ip(k) == at) {
                    h += 1;
                }
                while wished_keys.get(w).is_some_and(|&k| ip(k) == at) {
                    w += 1;
                }
            }
            (Some(&a), Some(&b)) if ip(a) < ip(b) => {
                gone.push(index(a));
                h += 1;
            }
            (Some(&a), None) => {
                gone.push(index(a));
                h += 1;
            }
            (_, Some(&b)) => {
                missing.push(index(b));
                w += 1;
            }
            (None, None) => break,
        }
    }
    gone.sort_unstable();
    missing.sort_unstable();
    Some((gone, missing))
}

fn element(member: &str) -> &str {
    member.split(' ').next().unwrap_or(member)
}

/// Where each of a set's elements first appears in its member list.
///
/// A plain IPv4 address (the commonest element) is keyed by its 32 bits:
/// the standard parser takes dotted quads only, without leading zeros, so
/// two such texts are equal exactly when their addresses are, and finding
/// one compares no text (with 100,000 members scattered over the heap,
/// reading each member's text again to compare it was a third of the cost).
/// Other elements are keyed by their text.
struct ElementIndex<'a> {
    v4: HashMap<u32, usize, crate::rule::TextHash>,
    text: HashMap<&'a str, usize, crate::rule::TextHash>,
}

impl<'a> ElementIndex<'a> {
    /// Room for `members`, in the map their first one goes to (a set's
    /// members are mostly of one shape).
    fn for_members(members: &[String]) -> ElementIndex<'a> {
        let mut index = ElementIndex {
            v4: HashMap::default(),
            text: HashMap::default(),
        };
        match members.first().map(|m| m.parse::<std::net::Ipv4Addr>()) {
            Some(Ok(_)) => index.v4.reserve(members.len()),
            _ => index.text.reserve(members.len()),
        }
        index
    }

    /// Notes `element` at index `i`; returns the index it first appeared at.
    fn first(&mut self, element: &'a str, i: usize) -> usize {
        match element.parse::<std::net::Ipv4Addr>() {
            Ok(ip) => *self.v4.entry(u32::from(ip)).or_insert(i),
            Err(_) => *self.text.entry(element).or_insert(i),
        }
    }

    fn get(&self, element: &str) -> Option<usize> {
        match element.parse::<std::net::Ipv4Addr>() {
            Ok(ip) => self.v4.get(&u32::from(ip)).copied(),
            Err(_) => self.text.get(element).copied(),
        }
    }
}

/// Set elements, hashed a word at a time: a 100,000-member set is hashed
/// twice per plan.
type TextSet<'a> = HashSet<&'a str, crate::rule::TextHash>;

/// Commands for the members of one set, one each: what they all share is
/// made once, not per member.
struct MemberCmds<'a> {
    /// The set the commands change.
    set: &'a str,
    /// The wished set they serve (a replacement is filled for its set).
    wish: &'a str,
    reason: String,
    target: String,
}

impl<'a> MemberCmds<'a> {
    fn new(set: &'a str, wish: &'a str, why: &str) -> MemberCmds<'a> {
        MemberCmds {
            set,
            wish,
            reason: format!("ipset {wish}: {why}"),
            target: format!("ipset {wish}"),
        }
    }

    fn command(&self, args: Vec<String>, undo: Vec<String>, reason: String) -> Command {
        Command {
            program: Program::Ipset,
            args,
            undo: Some(undo),
            reason,
            target: self.target.clone(),
            wish: Some(self.wish.to_string()),
        }
    }

    /// `add SET MEMBER...`, undone by deleting its element.
    ///
    /// Each string is allocated once: `Vec::from` moves an array's strings
    /// where `to_vec` would copy them (and free the originals), which for
    /// 100,000 members was a third of the allocations here.
    fn add(&self, member: &str) -> Command {
        let args = match member.split_once(' ') {
            None => Vec::from(["add", self.set, member].map(String::from)),
            Some(_) => {
                let mut args = Vec::with_capacity(3);
                args.extend(["add", self.set].map(String::from));
                args.extend(member.split(' ').map(String::from));
                args
            }
        };
        let undo = Vec::from(["del", self.set, element(member)].map(String::from));
        self.command(args, undo, self.reason.clone())
    }

    /// `del SET ELEMENT`, undone by adding it back.
    fn del(&self, element: &str) -> Command {
        let args = Vec::from(["del", self.set, element].map(String::from));
        let undo = Vec::from(["add", self.set, element].map(String::from));
        let reason = format!("ipset {}: member {element} not wished", self.wish);
        self.command(args, undo, reason)
    }
}

/// One slot of the simulated chain.
#[derive(Clone, Debug)]
struct Slot {
    id: usize,
    /// `rule.key()`, here so that scanning slots for a text reads no rule.
    key: u64,
    rule: Rule,
}

impl Slot {
    fn new(id: usize, rule: Rule) -> Slot {
        Slot {
            id,
            key: rule.key(),
            rule,
        }
    }
}

/// What the final chain should hold at one position.
struct Target<'a> {
    /// Borrowed: a long chain's rules are not cloned to be planned.
    rule: &'a Rule,
    /// The current rule that already is this element, by slot id.
    source: Option<usize>,
    /// The wished name, for wished rules.
    name: Option<&'a str>,
    /// An existing rule with this wish's name but other text, replaced here.
    replaces: Option<usize>,
}

/// Plans the rule commands for one chain.
fn plan_chain(
    wish: &ChainWish,
    current: &[Rule],
    withdrawn: &[(String, String)],
) -> (Vec<Command>, Vec<Rule>) {
    let label = wish.label();
    let mut sim = ChainSim::new(wish.family, &wish.table, &wish.chain, current);
    // From here on the chain holds no temporary copies; where there were
    // some, number it afresh (else it is numbered as read already).
    let current: Cow<[Rule]> = if sim.recover_temps() {
        for (id, slot) in sim.slots.iter_mut().enumerate() {
            slot.id = id;
        }
        Cow::Owned(sim.slots.iter().map(|s| s.rule.clone()).collect())
    } else {
        Cow::Borrowed(current)
    };
    sim.next_id = current.len();
    let wished_names: TextSet = wish.rule_names().collect();
    let gone = Withdrawn::new(withdrawn);
    let mut by_name: HashMap<&str, Vec<usize>, crate::rule::TextHash> = HashMap::default();
    let mut foreign: Vec<usize> = Vec::new();
    for (i, r) in current.iter().enumerate() {
        match r.comment() {
            Some(c) if wished_names.contains(c) => by_name.entry(c).or_default().push(i),
            _ if gone.holds(r, &wished_names) => {}
            _ => foreign.push(i),
        }
    }

    // The desired order.
    let mut taken = vec![false; current.len()];
    let mut targets: Vec<Target> = Vec::with_capacity(current.len() + wished_names.len());
    // One buffer for the text each `~match` reads, so matching a long
    // chain allocates nothing per rule.
    let mut shown = String::new();
    for item in wish.rules.iter().flatten() {
        match item {
            RuleItem::Named(named) => {
                let found = by_name
                    .get(named.name.as_str())
                    .map(Vec::as_slice)
                    .unwrap_or(&[]);
                let exact = found.iter().copied().find(|&i| current[i] == named.rule);
                let (source, replaces) = match exact {
                    Some(i) => (Some(i), None),
                    None => (None, found.first().copied()),
                };
                targets.push(Target {
                    rule: &named.rule,
                    source,
                    name: Some(named.name.as_str()),
                    replaces,
                });
            }
            RuleItem::Match(m) => {
                for &i in &foreign {
                    if taken[i] {
                        continue;
                    }
                    shown.clear();
                    current[i].display_into(&mut shown);
                    if m.regex.is_match(&shown) {
                        taken[i] = true;
                        targets.push(Target {
                            rule: &current[i],
                            source: Some(i),
                            name: None,
                            replaces: None,
                        });
                    }
                }
            }
        }
    }
    for &i in &foreign {
        if !taken[i] {
            targets.push(Target {
                rule: &current[i],
                source: Some(i),
                name: None,
                replaces: None,
            });
        }
    }

    let stable = longest_increasing(&targets.iter().map(|t| t.source).collect::<Vec<_>>());
    // Flags by slot id: every id that is not below `current.len()` is a
    // rule this plan inserts, which is in none of these.
    let mut in_target = vec![false; current.len()];
    let mut replaced = vec![false; current.len()];
    for t in &targets {
        if let Some(src) = t.source {
            in_target[src] = true;
        }
        if let Some(old) = t.replaces {
            replaced[old] = true;
        }
    }
    let flag = |flags: &[bool], id: usize| flags.get(id).copied().unwrap_or(false);
    let mut placed: Vec<usize> = Vec::with_capacity(targets.len());
    // Slots that will still move or go: they may sit anywhere meanwhile.
    let mut pending: Vec<bool> = in_target.iter().map(|t| !t).collect();
    for (p, t) in targets.iter().enumerate() {
        if let Some(src) = t.source.filter(|_| !stable[p]) {
            pending[src] = true;
        }
    }

    for (p, t) in targets.iter().enumerate() {
        if let Some(src) = t.source.filter(|_| stable[p]) {
            // Already in order: no lookup, so a long chain costs O(n).
            placed.push(src);
            continue;
        }
        let pred = placed.last().copied();
        let at = pred.map_or(0, |id| sim.pos(id) + 1);
        let what = t
            .name
            .map_or_else(|| "a rule matched by ~match".to_string(), String::from);
        match t.source {
            Some(src) => {
                pending[src] = false;
                let now = sim.pos(src);
                let in_place = now >= at && sim.slots.range(at..now).all(|s| flag(&pending, s.id));
                if !in_place {
                    let reason = format!(
                        "{label}: {what} is at position {}, wished {}",
                        now + 1,
                        at + 1
                    );
                    sim.move_rule(src, at, t.name, &reason);
                }
                placed.push(src);
            }
            None => {
                let reason = match t.replaces {
                    Some(old) => format!(
                        "{label}: {what} differs: is `{}`, wished `{}`",
                        sim.rule(old),
                        t.rule
                    ),
                    None => format!("{label}: {what} missing"),
                };
                let id = sim.insert(at, t.rule.clone(), t.name, &reason);
                if let Some(old) = t.replaces {
                    sim.delete(
                        old,
                        t.name,
                        &format!("{label}: {what}: remove the old text"),
                    );
                    pending[old] = false;
                }
                placed.push(id);
            }
        }
    }
    // What is left over: duplicates of wished rules, and withdrawn ones.
    let leftovers: Vec<usize> = sim
        .slots
        .iter()
        .map(|s| s.id)
        .filter(|&id| id < current.len() && !in_target[id] && !replaced[id])
        .collect();
    for id in leftovers {
        let rule = sim.rule(id).clone();
        let name = rule.comment().unwrap_or("");
        let reason = if gone.holds(&rule, &wished_names) {
            format!("{label}: {name} was withdrawn from the wishes; pyfw put it there")
        } else {
            format!("{label}: duplicate of wished rule {name}")
        };
        sim.delete(id, rule.comment(), &reason);
    }
    let result = sim.slots.into_iter().map(|s| s.rule).collect();
    (sim.out, result)
}

/// For each element, whether it belongs to one longest subsequence whose
/// sources increase (the rules that can stay where they are).
fn longest_increasing(sources: &[Option<usize>]) -> Vec<bool> {
    // Patience sorting: tails[k] is the index of the smallest tail of an
    // increasing run of length k + 1.
    let mut tails: Vec<usize> = Vec::new();
    let mut prev: Vec<Option<usize>> = vec![None; sources.len()];
    for (i, s) in sources.iter().enumerate() {
        let Some(s) = *s else { continue };
        // Chains are mostly in order already: extending the longest run
        // needs no search.
        let extends = tails
            .last()
            .is_none_or(|&t| sources[t].is_some_and(|v| v < s));
        let k = if extends {
            tails.len()
        } else {
            tails.partition_point(|&t| sources[t].is_some_and(|v| v < s))
        };
        prev[i] = k.checked_sub(1).map(|k| tails[k]);
        if k == tails.len() {
            tails.push(i);
        } else {
            tails[k] = i;
        }
    }
    let mut stable = vec![false; sources.len()];
    let mut cur = tails.last().copied();
    while let Some(i) = cur {
        stable[i] = true;
        cur = prev[i];
    }
    stable
}

/// A chain being edited, command by command, so that every position the
/// plan names is the position the kernel will see at that step.
struct ChainSim {
    /// A deque: the plan inserts near the top and takes from anywhere, so
    /// each edit shifts only the shorter side of a long chain.
    slots: VecDeque<Slot>,
    /// How many copies of each rule text the chain holds, so that telling
    /// whether deleting by text hits the intended copy needs no scan in
    /// the usual case of one copy. Counted only once an edit lands deeper
    /// than [`ChainSim::SHALLOW`]: most plans edit near the top, where
    /// looking above is cheaper than counting a 50,000-rule chain.
    /// Keyed by [`Rule::key`]: two texts sharing a key count together,
    /// which only ever sends a question to the scan.
    copies: Option<FnvHashMap<u64, usize>>,
    next_id: usize,
    family: Family,
    table: String,
    chain: String,
    label: String,
    out: Vec<Command>,
}

impl ChainSim {
    /// How deep an edit may land before the copies are counted.
    const SHALLOW: usize = 256;

    fn new(family: Family, table: &str, chain: &str, rules: &[Rule]) -> ChainSim {
        ChainSim {
            copies: None,
            slots: rules
                .iter()
                .enumerate()
                .map(|(id, rule)| Slot::new(id, rule.clone()))
                .collect(),
            next_id: rules.len(),
            family,
            table: table.to_string(),
            chain: chain.to_string(),
            label: crate::wishes::chain_label(family, table, chain),
            out: Vec::new(),
        }
    }

    /// Where slot `id` is, searching from both ends at once: the plan's
    /// slots of interest sit near the top (placed rules) or anywhere
    /// (rules to move), so this costs the distance to the nearer end.
    fn pos(&self, id: usize) -> usize {
        let n = self.slots.len();
        for k in 0..n.div_ceil(2) {
            if self.slots[k].id == id {
                return k;
            }
            if self.slots[n - 1 - k].id == id {
                return n - 1 - k;
            }
        }
        n
    }

    /// True when the first rule with this slot's text is this slot.
    fn first_of_its_text(&mut self, at: usize) -> bool {
        if at >= Self::SHALLOW && self.copies.is_none() {
            let mut copies: FnvHashMap<u64, usize> = FnvHashMap::default();
            copies.reserve(self.slots.len());
            for s in &self.slots {
                *copies.entry(s.key).or_default() += 1;
            }
            self.copies = Some(copies);
        }
        let Slot { key, rule, .. } = &self.slots[at];
        let single = self
            .copies
            .as_ref()
            .is_some_and(|c| c.get(key).copied().unwrap_or(0) <= 1);
        single
            || !self
                .slots
                .range(..at)
                .any(|s| s.key == *key && s.rule == *rule)
    }

    /// Counts one more (`true`) or one fewer copy of `rule`, once counted.
    fn count(&mut self, rule: &Rule, more: bool) {
        let Some(copies) = self.copies.as_mut() else {
            return;
        };
        if more {
            *copies.entry(rule.key()).or_default() += 1;
        } else if let Some(n) = copies.get_mut(&rule.key()) {
            *n = n.saturating_sub(1);
        }
    }

    fn rule(&self, id: usize) -> &Rule {
        &self.slots[self.pos(id)].rule
    }

    fn args(&self, op: &str, extra: Option<usize>, rule: Option<&Rule>) -> Vec<String> {
        let mut a = ipt_args(&self.table, [op, self.chain.as_str()]);
        if let Some(n) = extra {
            a.push(n.to_string());
        }
        if let Some(r) = rule {
            a.extend(r.args().iter().cloned());
        }
        a
    }

    fn emit(&mut self, args: Vec<String>, undo: Vec<String>, wish: Option<&str>, reason: &str) {
        self.out.push(Command {
            program: Program::Iptables(self.family),
            args,
            undo: Some(undo),
            reason: reason.to_string(),
            target: self.label.clone(),
            wish: wish.map(String::from),
        });
    }

    /// Inserts `rule` at 0-based `at`; returns the new slot's id.
    fn insert(&mut self, at: usize, rule: Rule, wish: Option<&str>, reason: &str) -> usize {
        let args = self.args("-I", Some(at + 1), Some(&rule));
        // Undoing deletes by text unless an identical rule sits above.
        let id = self.next_id;
        self.next_id += 1;
        self.count(&rule, true);
        self.slots.insert(at, Slot::new(id, rule));
        let undo = if self.first_of_its_text(at) {
            self.args("-D", None, Some(&self.slots[at].rule))
        } else {
            self.args("-D", Some(at + 1), None)
        };
        self.emit(args, undo, wish, reason);
        id
    }

    /// Deletes a slot: by rule text when that text first matches this very
    /// slot (robust against other writers), else by its number.
    fn delete(&mut self, id: usize, wish: Option<&str>, reason: &str) {
        let at = self.pos(id);
        let rule = self.slots[at].rule.clone();
        let args = if self.first_of_its_text(at) {
            self.args("-D", None, Some(&rule))
        } else {
            self.args("-D", Some(at + 1), None)
        };
        let undo = self.args("-I", Some(at + 1), Some(&rule));
        self.emit(args, undo, wish, reason);
        self.slots.remove(at);
        self.count(&rule, false);
    }

    /// Moves slot `id` to 0-based position `at` (counted before the move)
    /// without the rule ever being absent.
    fn move_rule(&mut self, id: usize, at: usize, wish: Option<&str>, reason: &str) {
        let from = self.pos(id);
        let rule = self.slots[from].rule.clone();
        if at > from {
            // Moving down: the new copy lands after the old one, so deleting
            // by text removes the old one.
            let new_id = self.insert(at, rule, wish, reason);
            self.delete(id, wish, reason);
            self.rename(new_id, id);
            return;
        }
        let temp = rule.temp_copy(wish);
        let temp_id = self.insert(at, temp, wish, reason);
        self.delete(id, wish, reason);
        let temp_at = self.pos(temp_id);
        let new_id = self.insert(temp_at, rule, wish, reason);
        self.delete(temp_id, wish, reason);
        self.rename(new_id, id);
    }

    /// Removes temporary copies left by an interrupted move. Where the copy
    /// is all that is left of a rule, the rule is put back in its place
    /// first, so that nothing is ever missing.
    /// True when there were any.
    fn recover_temps(&mut self) -> bool {
        let temps: Vec<usize> = self
            .slots
            .iter()
            .filter(|s| s.rule.is_temp())
            .map(|s| s.id)
            .collect();
        let any = !temps.is_empty();
        for id in temps {
            let Some(base) = self.rule(id).temp_base() else {
                continue;
            };
            let wish = base.comment().map(String::from);
            if !self.slots.iter().any(|s| s.rule == base) {
                let at = self.pos(id);
                let reason = format!("{}: restore a rule from an interrupted move", self.label);
                self.insert(at, base, wish.as_deref(), &reason);
            }
            let reason = format!(
                "{}: leftover temporary rule from an interrupted move",
                self.label
            );
            self.delete(id, wish.as_deref(), &reason);
        }
        any
    }

    fn rename(&mut self, from: usize, to: usize) {
        if let Some(s) = self.slots.iter_mut().find(|s| s.id == from) {
            s.id = to;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A wished set `big` of `n` addresses, with `header` lines.
    fn big_set(kind: &str, header: &str, n: usize) -> Wishes {
        let members: String = (0..n)
            .map(|i| format!("      - 10.{}.{}.{}\n", i >> 16, (i >> 8) & 255, i & 255))
            .collect();
        let text = format!(
            "pyfw_wishes:\n  ipsets:\n    big:\n      type: {kind}\n{header}      \
             members_equal:\n{members}"
        );
        crate::wishes::parse(&text, std::path::Path::new("w.yaml")).unwrap()
    }

    /// The `create` commands of a plan, as text.
    fn creates(plan: &Plan) -> Vec<String> {
        (plan.commands.iter())
            .filter(|c| c.args.first().is_some_and(|a| a == "create"))
            .map(|c| c.args.join(" "))
            .collect()
    }

    /// A kernel holding one `hash:net` set, `name`, with `members`.
    fn hash_net(name: &str, members: &[&str]) -> State {
        let mut have = State::default();
        let set = Ipset {
            kind: "hash:net".into(),
            options: vec!["family".into(), "inet".into()],
            members: members.iter().map(|m| m.to_string()).collect(),
            comments: Default::default(),
        };
        have.ipsets.insert(name.into(), set);
        have
    }

    #[test]
    fn big_hash_sets_are_created_at_their_size() {
        let none = State::default();
        let plan = |w: &Wishes, s: &State| creates(&super::plan(w, s));
        assert_eq!(
            plan(&big_set("hash:ip", "", 5000), &none),
            ["create big hash:ip hashsize 2048"]
        );
        assert_eq!(
            plan(&big_set("hash:ip", "", 4096), &none),
            ["create big hash:ip"]
        );
        assert_eq!(
            plan(
                &big_set("hash:ip", "      header: hashsize 4096\n", 5000),
                &none
            ),
            ["create big hash:ip hashsize 4096"]
        );
        assert_eq!(
            plan(
                &big_set("bitmap:ip", "      header: range 10.0.0.0/16\n", 5000),
                &none
            ),
            ["create big bitmap:ip range 10.0.0.0/16"]
        );
        // A replacement is filled at its size too.
        let got = plan(&big_set("hash:ip", "", 100_000), &hash_net("big", &[]));
        assert_eq!(got.len(), 2, "{got:?}");
        for create in got {
            assert!(create.ends_with(" hash:ip hashsize 32768"), "{create}");
        }
    }

    /// A wish that changes a set's type and leaves its membership alone
    /// keeps the members, in the replacement and in the rebuilt set alike.
    #[test]
    fn a_rebuilt_set_keeps_members_the_wish_leaves_alone() {
        let wishes = crate::wishes::parse(
            "pyfw_wishes:\n  ipsets:\n    s:\n      type: hash:ip\n",
            std::path::Path::new("w.yaml"),
        )
        .unwrap();
        let plan = super::plan(&wishes, &hash_net("s", &["10.0.0.1", "10.0.0.2"]));
        let adds: Vec<String> = (plan.commands.iter())
            .filter(|c| c.args.first().is_some_and(|a| a == "add"))
            .map(|c| c.args.join(" "))
            .collect();
        assert_eq!(
            adds,
            [
                "add _pyfw_temp_s 10.0.0.1",
                "add _pyfw_temp_s 10.0.0.2",
                "add _pyfw_new_s 10.0.0.1",
                "add _pyfw_new_s 10.0.0.2"
            ]
        );
    }

    proptest::proptest! {
        /// The sorted walk over IPv4 addresses and the index agree, with
        /// members listed twice and wished members with options.
        #[test]
        fn the_ipv4_walk_agrees_with_the_index(
            have in proptest::collection::vec(0u8..40, 0..60),
            wished in proptest::collection::vec((0u8..40, proptest::bool::ANY), 0..60),
        ) {
            let have: Vec<String> = have.iter().map(|i| format!("10.0.{i}.1")).collect();
            let wished: Vec<String> = (wished.iter())
                .map(|(i, options)| match options {
                    true => format!("10.0.{i}.1 timeout 5"),
                    false => format!("10.0.{i}.1"),
                })
                .collect();
            let walk = ipv4_member_diff(&have, &wished);
            proptest::prop_assert_eq!(walk, Some(index_member_diff(&have, &wished)));
        }
    }

    #[test]
    fn only_plain_ipv4_lists_take_the_walk() {
        let list = |l: &[&str]| l.iter().map(|m| m.to_string()).collect::<Vec<_>>();
        let v4 = list(&["10.0.0.2", "10.0.0.1"]);
        assert_eq!(
            ipv4_member_diff(&v4, &list(&["10.0.0.1", "10.0.0.3"])),
            Some((vec![0], vec![1]))
        );
        for other in ["10.0.0.0/24", "::1", "10.0.0.01", "10.0.0.1,tcp:80"] {
            assert_eq!(ipv4_member_diff(&v4, &list(&[other])), None, "{other}");
            assert_eq!(ipv4_member_diff(&list(&[other]), &v4), None, "{other}");
        }
    }

    #[test]
    fn lis_keeps_the_longest_run() {
        let s = longest_increasing(&[Some(5), Some(0), Some(1), None, Some(2), Some(3)]);
        assert_eq!(s, vec![false, true, true, false, true, true]);
        assert_eq!(longest_increasing(&[]), Vec::<bool>::new());
    }

    /// Two elements share an index entry exactly when their texts are
    /// equal, however an address may be spelled.
    #[test]
    fn element_index_keys_equal_texts_only() {
        let elements = [
            "10.0.0.1",
            "10.0.0.01",
            "010.0.0.1",
            "10.0.0.1/32",
            "10.0.0.1,tcp:80",
            "0.0.0.0",
            "0.0.0.00",
            "255.255.255.255",
            "256.0.0.1",
            "1.2.3",
            "1.2.3.4.5",
            "+1.2.3.4",
            "1.2.3.4 ",
            "::ffff:10.0.0.1",
            "10.0.0.1\0",
            "",
        ];
        let owned: Vec<String> = elements.iter().map(|e| e.to_string()).collect();
        let mut index = ElementIndex::for_members(&owned);
        for (i, e) in elements.iter().enumerate() {
            assert_eq!(index.first(e, i), i, "{e:?} taken for an earlier element");
        }
        for (i, e) in elements.iter().enumerate() {
            assert_eq!(index.first(e, 99), i, "{e:?}");
            assert_eq!(index.get(e), Some(i), "{e:?}");
        }
        assert_eq!(index.get("10.0.0.2"), None);
        assert_eq!(index.get("10.0.0.001"), None);
    }
}
