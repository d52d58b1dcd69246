//! The planner on arbitrary state, shared by the cargo-fuzz target
//! `planner` (`fuzz/fuzz_targets/planner.rs`) and the proptest run in
//! `tests/offline/fuzz_props.rs`.
//!
//! [`scenario`] decodes any byte string into valid wishes and a host state
//! (several chains in two tables and both families, foreign rules, wished
//! rules in and out of place, stale and temporary copies, jumps, sets of
//! several types, identical twins, an ownership record naming some of
//! it). [`check`] plans, then runs the plan command by command on a model
//! of netfilter that refuses what the kernel refuses, and checks the
//! planner's promises after every step:
//!
//! - every command is one the kernel accepts at that point;
//! - a wished rule that existed is never missing (a temporary copy counts);
//! - another program's rule is never lost; one that no `~match` takes is
//!   never deleted or inserted again (followed by identity, [`Kernel`]),
//!   but for a set rebuilt under a new type while rules use it;
//! - the plan's transactions, run as the text `iptables-restore` reads
//!   (with iptables-nft's insert pitfall, see [`Kernel::line`]), are
//!   accepted and leave what the commands one by one leave;
//! - a set exists before any rule naming it is added, and is destroyed
//!   only when no rule names it;
//! - a chain's DROP policy is set only once its wished rules are in place;
//! - afterwards, planning again finds nothing to do.

use std::collections::BTreeMap;
use std::path::PathBuf;

use pyfw::plan::{Command, Program, plan};
use pyfw::state::ownership::{Owned, RECORD_SET};
use pyfw::state::rule::Rule;
use pyfw::state::set_type::SetType;
use pyfw::state::{Chain, Family, Ipset, State, Table, builtin_chains};
use pyfw::wishes::{ChainWish, IpsetWish, MatchRule, NamedRule, RuleItem, Wishes};

/// Reads bytes as small choices; past the end, every choice is 0.
struct Bytes<'a> {
    data: &'a [u8],
    at: usize,
}

impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        let b = self.data.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        b
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { self.byte() as usize % n }
    }
    fn chance(&mut self, percent: u8) -> bool {
        self.byte() % 100 < percent
    }
}

/// (family, table, chain)
const CHAINS: &[(Family, &str, &str)] = &[
    (Family::V4, "filter", "INPUT"),
    (Family::V4, "filter", "FORWARD"),
    (Family::V4, "filter", "DOCKER"),
    (Family::V4, "filter", "f2b-sshd"),
    (Family::V4, "nat", "PREROUTING"),
    (Family::V6, "filter", "INPUT"),
];

const SETS: &[(&str, &str)] = &[
    ("allowed", "hash:ip"),
    ("nets", "hash:net"),
    ("ports", "bitmap:port"),
];

fn set_members(kind: &str, pick: usize) -> Vec<String> {
    let all: Vec<String> = match kind {
        "hash:ip" => (1..=4).map(|i| format!("10.0.0.{i}")).collect(),
        "hash:net" => (1..=4).map(|i| format!("10.{i}.0.0/16")).collect(),
        _ => ["22", "80", "443", "8080"].map(String::from).to_vec(),
    };
    all.into_iter()
        .enumerate()
        .filter(|(i, _)| pick & (1 << i) != 0)
        .map(|(_, m)| m)
        .collect()
}

fn set_options(kind: &str) -> Vec<String> {
    match kind {
        "bitmap:port" => "range 0-65535".split(' ').map(String::from).collect(),
        _ => "family inet hashsize 1024 maxelem 65536"
            .split(' ')
            .map(String::from)
            .collect(),
    }
}

/// The text of wished rule `i` in a chain, in iptables' own form.
fn wished_text(i: usize, b: &mut Bytes, jump_to: Option<&str>) -> String {
    let name = format!("w{i}");
    let target = jump_to.unwrap_or(["ACCEPT", "DROP", "RETURN"][i % 3]);
    match b.below(3) {
        0 => format!("-s 192.0.2.{i}/32 -m comment --comment {name} -j {target}"),
        1 => format!(
            "-p tcp -m tcp --dport {} -m comment --comment {name} -j {target}",
            20 + i
        ),
        _ => format!(
            "-m set --match-set {} src -m comment --comment {name} -j {target}",
            SETS[i % 2].0
        ),
    }
}

fn rule(text: &str) -> Rule {
    Rule::parse(text).unwrap()
}

pub struct Scenario {
    pub wishes: Wishes,
    pub state: State,
}

/// Decodes any bytes into a scenario.
pub fn scenario(data: &[u8]) -> Scenario {
    let mut b = Bytes { data, at: 0 };
    let mut state = State::default();
    // Sets that exist.
    for (name, kind) in SETS {
        if b.chance(50) {
            let kind = if b.chance(15) { "hash:net" } else { kind };
            let kind = if *name == "ports" {
                "bitmap:port"
            } else {
                kind
            };
            state.ipsets.insert(
                name.to_string(),
                Ipset {
                    kind: kind.to_string(),
                    options: set_options(kind),
                    members: set_members(kind, b.below(16)).into_iter().collect(),
                    comments: BTreeMap::new(),
                },
            );
        }
    }
    // Set wishes.
    let mut ipsets = Vec::new();
    for (name, kind) in SETS {
        if b.chance(60) {
            let kind = if *name != "ports" && b.chance(15) {
                "hash:net"
            } else {
                kind
            };
            let members = b
                .chance(80)
                .then(|| set_members(kind, b.below(16)).into_iter().collect());
            ipsets.push(IpsetWish {
                name: name.to_string(),
                kind: SetType::parse(kind).unwrap(),
                family: pyfw::state::set_type::SetFamily::Inet,
                header: match kind {
                    "bitmap:port" => vec!["range".into(), "0-65535".into()],
                    _ => Vec::new(),
                },
                members,
                line: 1,
            });
        }
    }
    let set_ok = |name: &str, ipsets: &[IpsetWish], state: &State| {
        ipsets.iter().any(|w| w.name == name) || state.ipsets.contains_key(name)
    };
    // Chain wishes and existing chains.
    let mut chains = Vec::new();
    let mut record: Vec<Owned> = Vec::new();
    for &(family, table, chain) in CHAINS {
        let builtin = builtin_chains(table).contains(&chain);
        let exists = builtin || b.chance(70);
        let wished = b.chance(70);
        let mut rules_now: Vec<Rule> = Vec::new();
        let mut items: Vec<RuleItem> = Vec::new();
        let mut texts: Vec<String> = Vec::new();
        let jump =
            (table == "filter" && chain == "INPUT" && family == Family::V4).then_some("f2b-sshd");
        for i in 0..6 {
            let mut t = wished_text(i, &mut b, if i == 5 { jump } else { None });
            if t.contains("--match-set") && !set_ok(SETS[i % 2].0, &ipsets, &state) {
                t = format!("-s 192.0.2.{i}/32 -m comment --comment w{i} -j ACCEPT");
            }
            texts.push(t);
        }
        if wished {
            for _ in 0..b.below(6) {
                match b.below(5) {
                    0 => items.push(RuleItem::Match(MatchRule {
                        regex: regex::Regex::new(["10\\.9\\.", "svc", "RETURN"][b.below(3)])
                            .unwrap(),
                        line: 1,
                    })),
                    _ => {
                        let i = b.below(6);
                        let name = format!("w{i}");
                        if items
                            .iter()
                            .any(|it| matches!(it, RuleItem::Named(n) if n.name == name))
                        {
                            continue;
                        }
                        items.push(RuleItem::Named(NamedRule {
                            name,
                            rule: rule(&texts[i]),
                            printed: None,
                            line: 1,
                        }));
                    }
                }
            }
        }
        if exists {
            for _ in 0..b.below(9) {
                let r = match b.below(9) {
                    0 | 1 => rule(&format!("-s 10.9.{}.0/24 -j RETURN", b.below(4))),
                    2 => rule(&format!(
                        "-m comment --comment \"svc {}\" -j ACCEPT",
                        b.below(3)
                    )),
                    3 | 4 => rule(&texts[b.below(6)]),
                    5 => rule(&format!(
                        "-s 198.51.100.1/32 -m comment --comment w{} -j DROP",
                        b.below(6)
                    )),
                    6 => {
                        let i = b.below(6);
                        rule(&texts[i]).temp_copy(Some(&format!("w{i}")))
                    }
                    7 => rule("-m comment --comment \"svc 9\" -j ACCEPT").temp_copy(None),
                    // A ban list holding the same rule twice (here, or
                    // again further down): identical twins.
                    _ => {
                        let ban = rule(&format!("-s 10.9.{}.7/32 -j DROP", b.below(2)));
                        rules_now.push(ban.clone());
                        ban
                    }
                };
                // A rule naming a set that does not exist could not be there.
                if r.sets().all(|s| state.ipsets.contains_key(s)) {
                    rules_now.push(r);
                }
            }
            // Jumps to f2b-sshd only if it exists.
            let ruleset = match family {
                Family::V4 => &mut state.v4,
                Family::V6 => &mut state.v6,
            };
            ruleset
                .tables
                .entry(table.to_string())
                .or_insert_with(Table::default)
                .chains
                .push((
                    chain.to_string(),
                    Chain {
                        policy: builtin.then(|| ["ACCEPT", "DROP"][b.below(2)].to_string()),
                        rules: rules_now.clone(),
                    },
                ));
        }
        // The record: some wished or stale rules pyfw owns, maybe the chain.
        for (i, text) in texts.iter().enumerate() {
            if b.chance(20) {
                let r = if b.chance(50) {
                    rule(text)
                } else {
                    rule(&format!(
                        "-s 198.51.100.1/32 -m comment --comment w{i} -j DROP"
                    ))
                };
                record.push(Owned::rule(family, table, chain, &format!("w{i}"), &r));
            }
        }
        if !builtin && b.chance(30) {
            record.push(Owned::Chain {
                family,
                table: table.to_string(),
                chain: chain.to_string(),
            });
        }
        if wished {
            chains.push(ChainWish {
                family,
                table: table.to_string(),
                chain: chain.to_string(),
                policy: match (builtin, b.below(3)) {
                    (true, 1) => Some("DROP".into()),
                    (true, 2) => Some("ACCEPT".into()),
                    _ => None,
                },
                rules: (b.below(5) != 0).then_some(items),
                line: 1,
            });
        }
    }
    for (name, _) in SETS {
        if b.chance(20) {
            record.push(Owned::Set {
                name: name.to_string(),
            });
        }
    }
    // Jumps to f2b-sshd need it to exist or be wished; drop them otherwise.
    let f2b_ok = state.v4.chain("filter", "f2b-sshd").is_some()
        || chains.iter().any(|c| c.chain == "f2b-sshd");
    if !f2b_ok {
        for c in &mut chains {
            if let Some(items) = &mut c.rules {
                items.retain(
                    |i| !matches!(i, RuleItem::Named(n) if n.rule.target() == Some("f2b-sshd")),
                );
            }
        }
        if let Some(t) = state.v4.tables.get_mut("filter") {
            for (_, c) in &mut t.chains {
                c.rules.retain(|r| r.target() != Some("f2b-sshd"));
            }
        }
    }
    if !record.is_empty() || b.chance(10) {
        let mut set = Ipset {
            kind: "hash:ip".into(),
            options: "family inet6 hashsize 1024 maxelem 1048576 comment"
                .split(' ')
                .map(String::from)
                .collect(),
            members: Default::default(),
            comments: BTreeMap::new(),
        };
        for o in &record {
            set.members.push(&o.element());
            set.comments.insert(o.element(), o.key());
        }
        state.ipsets.insert(RECORD_SET.to_string(), set);
    }
    Scenario {
        wishes: Wishes {
            path: PathBuf::from("fuzz.yaml"),
            ipsets: ipsets.into(),
            chains,
            nftables: Default::default(),
            warnings: Vec::new(),
        },
        state,
    }
}

fn chain_mut<'a>(
    state: &'a mut State,
    f: Family,
    table: &str,
    chain: &str,
) -> Option<&'a mut Chain> {
    let rs = state.ruleset_mut(f);
    if !rs.tables.contains_key(table) && builtin_chains(table).contains(&chain) {
        let mut t = Table::default();
        for c in builtin_chains(table) {
            t.chains.push((
                c.to_string(),
                Chain {
                    policy: Some("ACCEPT".into()),
                    rules: Vec::new(),
                },
            ));
        }
        rs.tables.insert(table.to_string(), t);
    }
    let t = rs.tables.get_mut(table)?;
    if builtin_chains(table).contains(&chain) && t.chain(chain).is_none() {
        t.chains.push((
            chain.to_string(),
            Chain {
                policy: Some("ACCEPT".into()),
                rules: Vec::new(),
            },
        ));
    }
    t.chains
        .iter_mut()
        .find(|(n, _)| n == chain)
        .map(|(_, c)| c)
}

fn set_used(state: &State, name: &str) -> bool {
    [&state.v4, &state.v6].iter().any(|rs| {
        rs.tables.values().any(|t| {
            t.chains
                .iter()
                .any(|(_, c)| c.rules.iter().any(|r| r.sets().any(|s| s == name)))
        })
    }) || state
        .ipsets
        .values()
        .any(|s| s.kind == "list:set" && s.members.iter().any(|m| m == name))
}

/// Runs one command on the model, or says why the kernel would refuse it.
fn step(state: &mut State, c: &Command) -> Result<(), String> {
    let a = &c.args;
    match c.program {
        Program::Iptables(f) => {
            let (table, op, chain) = (a[2].as_str(), a[3].as_str(), a[4].as_str());
            let exists = |s: &State| {
                s.ruleset(f)
                    .tables
                    .get(table)
                    .and_then(|t| t.chain(chain))
                    .is_some()
                    || builtin_chains(table).contains(&chain)
            };
            match op {
                "-N" => {
                    if exists(state) {
                        return Err(format!("chain exists: {c}"));
                    }
                    state
                        .ruleset_mut(f)
                        .tables
                        .entry(table.into())
                        .or_default()
                        .chains
                        .push((
                            chain.into(),
                            Chain {
                                policy: None,
                                rules: Vec::new(),
                            },
                        ));
                }
                "-X" => {
                    let t = state
                        .ruleset_mut(f)
                        .tables
                        .get_mut(table)
                        .ok_or("no table")?;
                    let at = t
                        .chains
                        .iter()
                        .position(|(n, _)| n == chain)
                        .ok_or(format!("no chain: {c}"))?;
                    if !t.chains[at].1.rules.is_empty() {
                        return Err(format!("chain not empty: {c}"));
                    }
                    if t.chains
                        .iter()
                        .any(|(_, ch)| ch.rules.iter().any(|r| r.target() == Some(chain)))
                    {
                        return Err(format!("chain referenced: {c}"));
                    }
                    t.chains.remove(at);
                }
                "-P" => {
                    let ch = chain_mut(state, f, table, chain).ok_or(format!("no chain: {c}"))?;
                    ch.policy = Some(a[5].clone());
                }
                "-I" | "-A" | "-D" => {
                    let numbered = a.get(5).and_then(|n| n.parse::<usize>().ok());
                    let spec_at = if op == "-A" || (op == "-D" && numbered.is_none()) {
                        5
                    } else {
                        6
                    };
                    let r = Rule::from_args(a.get(spec_at..).unwrap_or(&[]).to_vec());
                    if op != "-D" {
                        for s in r.sets() {
                            if !state.ipsets.contains_key(s) {
                                return Err(format!("set {s} does not exist yet: {c}"));
                            }
                        }
                        if let Some(t) = r
                            .target()
                            .filter(|t| !["ACCEPT", "DROP", "RETURN", "REJECT"].contains(t))
                        {
                            let there = state
                                .ruleset(f)
                                .tables
                                .get(table)
                                .and_then(|tb| tb.chain(t))
                                .is_some();
                            if !there {
                                return Err(format!("jump to missing chain {t}: {c}"));
                            }
                        }
                    }
                    let ch = chain_mut(state, f, table, chain).ok_or(format!("no chain: {c}"))?;
                    match (op, numbered) {
                        ("-I", Some(n)) => {
                            if n == 0 || n > ch.rules.len() + 1 {
                                return Err(format!("index too big: {c}"));
                            }
                            ch.rules.insert(n - 1, r);
                        }
                        ("-A", _) => ch.rules.push(r),
                        ("-D", Some(n)) => {
                            if n == 0 || n > ch.rules.len() {
                                return Err(format!("index too big: {c}"));
                            }
                            ch.rules.remove(n - 1);
                        }
                        ("-D", None) => {
                            let at = ch
                                .rules
                                .iter()
                                .position(|x| *x == r)
                                .ok_or(format!("no such rule: {c}"))?;
                            ch.rules.remove(at);
                        }
                        _ => return Err(format!("bad command: {c}")),
                    }
                }
                other => return Err(format!("unexpected {other}: {c}")),
            }
        }
        // The planner makes none: nftables wishes are not modelled.
        Program::Nft => return Err(format!("unexpected nft command: {c}")),
        Program::Ipset => {
            let name = a.get(1).cloned().unwrap_or_default();
            match a[0].as_str() {
                "create" => {
                    if state.ipsets.contains_key(&name) {
                        return Err(format!("set exists: {c}"));
                    }
                    state.ipsets.insert(
                        name,
                        Ipset {
                            kind: a[2].clone(),
                            options: a[3..].to_vec(),
                            members: Default::default(),
                            comments: BTreeMap::new(),
                        },
                    );
                }
                "add" => {
                    let s = state.ipsets.get_mut(&name).ok_or(format!("no set: {c}"))?;
                    let m = a[2].clone();
                    if let Some(at) = a.iter().position(|x| x == "comment") {
                        s.comments.insert(m.clone(), a[at + 1].clone());
                    }
                    if !s.members.contains(&m) {
                        s.members.push(&m);
                    }
                }
                "del" => {
                    let s = state.ipsets.get_mut(&name).ok_or(format!("no set: {c}"))?;
                    s.members.retain(|m| m != a[2]);
                    s.comments.remove(&a[2]);
                }
                "destroy" => {
                    if !state.ipsets.contains_key(&name) {
                        return Err(format!("no set: {c}"));
                    }
                    if set_used(state, &name) {
                        return Err(format!("set in use: {c}"));
                    }
                    state.ipsets.remove(&name);
                }
                "swap" => {
                    let other = a[2].clone();
                    let (x, y) = (
                        state.ipsets.remove(&name).ok_or(format!("no set: {c}"))?,
                        state.ipsets.remove(&other).ok_or(format!("no set: {c}"))?,
                    );
                    if x.kind != y.kind
                        && !(x.kind.starts_with("hash:") && y.kind.starts_with("hash:"))
                    {
                        return Err(format!("swap of unlike types: {c}"));
                    }
                    state.ipsets.insert(name, y);
                    state.ipsets.insert(other, x);
                }
                "rename" => {
                    let to = a[2].clone();
                    if state.ipsets.contains_key(&to) {
                        return Err(format!("rename onto an existing set: {c}"));
                    }
                    if set_used(state, &name) {
                        return Err(format!("rename of a set in use: {c}"));
                    }
                    let s = state.ipsets.remove(&name).ok_or(format!("no set: {c}"))?;
                    state.ipsets.insert(to, s);
                }
                other => return Err(format!("unexpected ipset {other}: {c}")),
            }
        }
    }
    Ok(())
}

/// A chain: (family, table, chain).
pub type ChainKey = (Family, String, String);

/// The model with an identity for every rule, as a kernel keeps a rule's
/// counters and nf_tables handle: the rules of the first state are numbered
/// in [`all_rules`] order, and each insert makes a new one. Deleting a rule
/// and inserting the same text again gives it a new identity.
pub struct Kernel {
    pub state: State,
    ids: BTreeMap<ChainKey, Vec<u64>>,
    next: u64,
}

/// One transaction: the first identity it gives (every rule it inserts
/// has this one or a later one), and the rules it inserted that an insert
/// then named as its position, with that insert.
struct Transaction {
    first: u64,
    named: BTreeMap<u64, String>,
}

impl Kernel {
    pub fn new(state: &State) -> Kernel {
        let mut ids: BTreeMap<ChainKey, Vec<u64>> = BTreeMap::new();
        let mut next = 0;
        for (f, t, c, _) in all_rules(state) {
            ids.entry((f, t, c)).or_default().push(next);
            next += 1;
        }
        Kernel {
            state: state.clone(),
            ids,
            next,
        }
    }

    /// The identities of a chain's rules, in order.
    pub fn ids(&self, key: &ChainKey) -> &[u64] {
        self.ids.get(key).map_or(&[], Vec::as_slice)
    }

    /// Runs one command as a transaction of its own.
    pub fn run(&mut self, c: &Command) -> Result<(), String> {
        let mut t = Transaction {
            first: self.next,
            named: BTreeMap::new(),
        };
        self.line(c, &mut t)
    }

    /// Runs a plan's commands as pyfw hands them to the tools
    /// ([`pyfw::kernel::transactions`]): a transaction of several iptables
    /// commands as the text `iptables-restore --noflush` reads, with the
    /// pitfall of iptables-nft (see [`Kernel::line`]); everything else one
    /// command at a time. A failed transaction changes nothing.
    pub fn run_transactions(&mut self, commands: &[Command]) -> Result<(), String> {
        for range in pyfw::kernel::transactions(commands) {
            let batch: Vec<&Command> = commands[range].iter().collect();
            let Program::Iptables(family) = batch[0].program else {
                for c in batch {
                    self.run(c)?;
                }
                continue;
            };
            if batch.len() == 1 {
                self.run(batch[0])?;
                continue;
            }
            let text = pyfw::kernel::restore_script::iptables_restore_input(&batch);
            let before = (self.state.clone(), self.ids.clone(), self.next);
            if let Err(e) = self.transaction(family, &text) {
                (self.state, self.ids, self.next) = before;
                return Err(format!("{e}\ntransaction:\n{text}"));
            }
        }
        Ok(())
    }

    /// Runs the text of one `iptables-restore --noflush` transaction.
    fn transaction(&mut self, family: Family, text: &str) -> Result<(), String> {
        let mut lines = text.lines();
        let table = lines
            .next()
            .and_then(|l| l.strip_prefix('*'))
            .ok_or("no table line")?;
        let mut t = Transaction {
            first: self.next,
            named: BTreeMap::new(),
        };
        for (n, line) in lines.enumerate() {
            if line == "COMMIT" {
                return Ok(());
            }
            let words = Rule::parse(line).map_err(|e| format!("line {}: {e}", n + 2))?;
            let mut args: Vec<String> = ["-w", "-t", table].map(String::from).to_vec();
            args.extend(words.args().iter().cloned());
            let c = Command {
                program: Program::Iptables(family),
                args,
                undo: None,
                reason: String::new(),
                target: String::new(),
                wish: None,
                members: Default::default(),
            };
            self.line(&c, &mut t)
                .map_err(|e| format!("line {}: {e}", n + 2))?;
        }
        Err("no COMMIT".into())
    }

    /// One command of transaction `t`, on the model and on the identities.
    ///
    /// iptables-nft 1.8.9, tried in a network namespace: a transaction
    /// fails as a whole, with `line L: RULE_INSERT failed (No such file or
    /// directory): rule in chain C` naming the insert, when an `-I C N`
    /// with N > 1 lands just in front of a rule that the same transaction
    /// inserted earlier and deletes later (by text or by number): the
    /// insert names that rule as its position, and the delete takes that
    /// rule out of the batch before it reaches the kernel. It fails the
    /// same with that rule last in the chain (N = rules). These pass:
    /// `-I C 1` in front of it (the head is no position); `-I C N` with N
    /// = rules + 1, or `-A`, after it; any insert in front of it once it
    /// is deleted; an insert in front of a rule the transaction inserted
    /// and keeps, or in front of a rule that was there before, deleted
    /// later or not. iptables-legacy-restore runs the failing case fine.
    fn line(&mut self, c: &Command, t: &mut Transaction) -> Result<(), String> {
        let Program::Iptables(f) = c.program else {
            return step(&mut self.state, c);
        };
        let a = &c.args;
        let (table, op, chain) = (a[2].as_str(), a[3].as_str(), a[4].as_str());
        let key = (f, table.to_string(), chain.to_string());
        let numbered = a.get(5).and_then(|n| n.parse::<usize>().ok());
        // Where a delete by text acts: the first rule with that text.
        let by_text = (op == "-D" && numbered.is_none()).then(|| {
            let spec = Rule::from_args(a.get(5..).unwrap_or(&[]).to_vec());
            self.state
                .ruleset(f)
                .chain(table, chain)
                .and_then(|ch| ch.rules.iter().position(|r| *r == spec))
        });
        step(&mut self.state, c)?;
        if op == "-X" {
            self.ids.remove(&key);
            return Ok(());
        }
        let ids = self.ids.entry(key).or_default();
        let gone = match (op, numbered) {
            ("-I", Some(n)) => {
                if n > 1
                    && let Some(&there) = ids.get(n - 1)
                    && there >= t.first
                {
                    t.named.entry(there).or_insert_with(|| c.to_string());
                }
                ids.insert(n - 1, self.next);
                self.next += 1;
                None
            }
            ("-A", _) => {
                ids.push(self.next);
                self.next += 1;
                None
            }
            ("-D", Some(n)) => Some(ids.remove(n - 1)),
            ("-D", None) => by_text.flatten().map(|at| ids.remove(at)),
            ("-F", _) => {
                ids.clear();
                None
            }
            _ => None,
        };
        if let Some(insert) = gone.and_then(|id| t.named.get(&id)) {
            return Err(format!(
                "RULE_INSERT failed (No such file or directory): `{insert}` lands in front of \
                 a rule this transaction inserted and `{c}` deletes"
            ));
        }
        Ok(())
    }
}

fn all_rules(state: &State) -> Vec<(Family, String, String, Rule)> {
    let mut out = Vec::new();
    for (f, rs) in [(Family::V4, &state.v4), (Family::V6, &state.v6)] {
        for (t, table) in &rs.tables {
            for (c, chain) in &table.chains {
                for r in &chain.rules {
                    out.push((f, t.clone(), c.clone(), r.clone()));
                }
            }
        }
    }
    out
}

/// The rule as it stands for: a set renamed while its type changes
/// (`_pyfw_temp_NAME`) is NAME.
fn base_sets(r: &Rule) -> Rule {
    let mut out = r.clone();
    for s in r.sets() {
        if let Some(base) = s.strip_prefix(pyfw::state::rule::TEMP_PREFIX) {
            out = out.with_set_renamed(s, base);
        }
    }
    out
}

fn present(state: &State, f: Family, t: &str, c: &str, r: &Rule) -> usize {
    state
        .ruleset(f)
        .tables
        .get(t)
        .and_then(|tb| tb.chain(c))
        .map_or(0, |ch| {
            ch.rules
                .iter()
                .map(base_sets)
                .filter(|x| x == r || x.temp_base().as_ref() == Some(r))
                .count()
        })
}

/// Plans and checks every promise; `Err` names the broken one.
pub fn check(s: &Scenario) -> Result<(), String> {
    let p = plan(&s.wishes, &s.state);
    let shown = || {
        p.commands
            .iter()
            .chain(&p.record)
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    };
    // Wished rules that exist, and foreign rules (not wished by name, not
    // pyfw's own withdrawn ones, not temporary copies), as before.
    let owned = pyfw::state::ownership::read(&s.state);
    let mut guarded = Vec::new();
    let mut foreign = Vec::new();
    // Foreign rules that no `~match` takes, by identity ([`Kernel`]): no
    // plan deletes or inserts them again (their counters and nf_tables
    // handles survive), but for a set rebuilt under a new type while
    // rules use it, which moves every rule naming it.
    let rebuilt: Vec<&str> = (p.commands.iter())
        .filter(|c| c.program == Program::Ipset && c.args[0] == "destroy")
        .map(|c| c.args[1].as_str())
        .filter(|n| !n.starts_with("_pyfw_"))
        .collect();
    let mut untouchable: Vec<(ChainKey, u64, Rule)> = Vec::new();
    for (id, (f, t, c, r)) in all_rules(&s.state).into_iter().enumerate() {
        if r.is_temp() {
            continue;
        }
        let wish = s
            .wishes
            .chains
            .iter()
            .find(|w| w.family == f && w.table == t && w.chain == c);
        let wished_name = r.comment().is_some_and(|n| {
            wish.is_some_and(|w| w.rules.is_some() && w.rule_names().any(|x| x == n))
        });
        let is_owned = r
            .comment()
            .is_some_and(|n| owned.contains(&Owned::rule(f, &t, &c, n, &r)));
        if wished_name {
            let exact = wish
                .unwrap()
                .rules
                .iter()
                .flatten()
                .any(|i| matches!(i, RuleItem::Named(nr) if nr.rule == r));
            if exact {
                guarded.push((f, t, c, r));
            }
        } else if !is_owned {
            let shown = r.to_string();
            let taken = wish.and_then(|w| w.rules.as_ref()).is_some_and(|items| {
                items
                    .iter()
                    .any(|i| matches!(i, RuleItem::Match(m) if m.regex.is_match(&shown)))
            });
            if !taken && !r.sets().any(|set| rebuilt.contains(&set)) {
                untouchable.push(((f, t.clone(), c.clone()), id as u64, r.clone()));
            }
            foreign.push((f, t, c, r));
        }
    }
    // As the kernel gets them: transaction by transaction, each iptables
    // one as the text iptables-restore reads.
    let mut batched = Kernel::new(&s.state);
    batched
        .run_transactions(&p.commands)
        .map_err(|e| format!("{e}\nplan:\n{}", shown()))?;
    // And command by command, as the plan lists them.
    let mut kernel = Kernel::new(&s.state);
    for c in &p.commands {
        kernel
            .run(c)
            .map_err(|e| format!("{e}\nplan:\n{}", shown()))?;
        let model = &kernel.state;
        for (f, t, ch, r) in &guarded {
            if present(model, *f, t, ch, r) == 0 {
                return Err(format!(
                    "wished rule {r} missing in {t}/{ch} after `{c}`\nplan:\n{}",
                    shown()
                ));
            }
        }
        for (f, t, ch, r) in &foreign {
            // At least as many exact copies as before, or one if only a
            // temporary copy stood for it.
            let exact = s
                .state
                .ruleset(*f)
                .tables
                .get(t.as_str())
                .and_then(|tb| tb.chain(ch))
                .map_or(0, |c| c.rules.iter().filter(|x| *x == r).count());
            let before = present(&s.state, *f, t, ch, r).min(1).max(exact);
            if present(model, *f, t, ch, r) < before {
                return Err(format!(
                    "foreign rule {r} lost in {t}/{ch} after `{c}`\nplan:\n{}",
                    shown()
                ));
            }
        }
        // A DROP policy only once the chain's wished rules are in place.
        if let (Program::Iptables(f), Some("-P")) = (c.program, c.args.get(3).map(String::as_str))
            && c.args.get(5).map(String::as_str) == Some("DROP")
        {
            let (t, ch) = (&c.args[2], &c.args[4]);
            let wish = s
                .wishes
                .chains
                .iter()
                .find(|w| w.family == f && &w.table == t && &w.chain == ch);
            for item in wish.and_then(|w| w.rules.as_ref()).into_iter().flatten() {
                if let RuleItem::Named(nr) = item
                    && present(model, f, t, ch, &nr.rule) == 0
                {
                    return Err(format!(
                        "DROP policy before wished rule {} in {t}/{ch}\nplan:\n{}",
                        nr.name,
                        shown()
                    ));
                }
            }
        }
    }
    for (k, run) in [
        (&kernel, "command by command"),
        (&batched, "in transactions"),
    ] {
        for (key, id, r) in &untouchable {
            if !k.ids(key).contains(id) {
                return Err(format!(
                    "foreign rule {r} in {}/{} deleted or inserted again ({run})\nplan:\n{}",
                    key.1,
                    key.2,
                    shown()
                ));
            }
        }
    }
    if all_rules(&batched.state) != all_rules(&kernel.state) {
        return Err(format!(
            "the transactions left other rules than the commands:\n{:?}\n{:?}\nplan:\n{}",
            all_rules(&batched.state),
            all_rules(&kernel.state),
            shown()
        ));
    }
    let mut model = kernel.state;
    for c in &p.record {
        step(&mut model, c).map_err(|e| format!("record: {e}\nplan:\n{}", shown()))?;
    }
    // What `apply` shows on legacy is worked out from the plan rather than
    // read back: it must be what the commands left.
    let snapshot = pyfw::plan::revert::Snapshot::of(&p, s.state.clone());
    let predicted = pyfw::plan::predict::chains_after(&snapshot, &p)
        .map_err(|e| format!("prediction: {e}\nplan:\n{}", shown()))?;
    for (f, t, ch) in snapshot.chains.keys() {
        let left = model.ruleset(*f).chain(t, ch).map(|c| c.into_owned());
        let worked_out = predicted.ruleset(*f).chain(t, ch).map(|c| c.into_owned());
        if left != worked_out {
            return Err(format!(
                "{t}/{ch} worked out as {worked_out:?}, the commands left {left:?}\nplan:\n{}",
                shown()
            ));
        }
    }
    let again = plan(&s.wishes, &model);
    if !again.is_empty() {
        return Err(format!(
            "not converged; second plan:\n{}\nfirst plan:\n{}",
            again
                .commands
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join("\n"),
            shown()
        ));
    }
    Ok(())
}

// ---- the fuzz targets' bodies (cargo-fuzz and proptest share them) -------

/// The wishes loader: any text loads or fails with errors that each name
/// the file; what loads holds only valid names and rules whose comment is
/// their name.
pub fn wishes_target(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = std::path::Path::new("fuzz.yaml");
    match pyfw::wishes::parse(text, path) {
        Ok(w) => {
            for c in &w.chains {
                assert!(
                    pyfw::wishes::check_chain_name(&c.chain).is_ok(),
                    "{}",
                    c.chain
                );
                for item in c.rules.iter().flatten() {
                    if let RuleItem::Named(r) = item {
                        assert!(pyfw::wishes::check_rule_name(&r.name).is_ok());
                        assert_eq!(r.rule.comment(), Some(r.name.as_str()));
                        assert!(
                            r.rule
                                .args()
                                .iter()
                                .all(|a| !a.chars().any(char::is_control))
                        );
                    }
                }
            }
            for s in w.ipsets.iter() {
                assert!(pyfw::state::set_type::valid_set_name(&s.name), "{}", s.name);
            }
        }
        Err(e) => {
            assert!(!e.errors.is_empty());
            for err in &e.errors {
                assert!(err.to_string().starts_with("fuzz.yaml"), "{err}");
            }
        }
    }
}

/// The iptables-save parser: never panics; what parses renders to text
/// that parses to the same thing.
pub fn iptables_save_target(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    // A NUL cannot be printed back as text (nor be an argument to any
    // process): the identity is checked for text without one.
    let printable = !text.contains('\0');
    if let Ok(rs) = pyfw::state::parse_iptables_save(&text)
        && printable
    {
        let again = pyfw::state::parse_iptables_save(&pyfw::state::render_ruleset(&rs))
            .expect("rendered rules parse");
        assert_eq!(again, rs);
    }
    let _ = pyfw::state::parse_chain_listing(&text, "INPUT");
}

/// The ipset save parser: never panics; what parses renders to text that
/// parses to the same thing.
pub fn ipset_save_target(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(sets) = pyfw::state::parse_ipset_save(&text)
        && !text.contains('\0')
    {
        let again = pyfw::state::parse_ipset_save(&pyfw::state::render_ipsets(&sets))
            .expect("rendered sets parse");
        assert_eq!(again, sets);
    }
}

/// Rule-text splitting: never panics; a rule prints as text that splits
/// back into the same arguments.
pub fn rule_split_target(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(r) = Rule::parse(&text) {
        assert!(!r.args().is_empty());
        if r.args().iter().all(|a| !a.chars().any(char::is_control)) {
            let again = Rule::parse(&r.to_string()).expect("a printed rule splits");
            assert_eq!(again, r, "{}", r);
        }
        let _ = r.with_comment("x");
        let _ = r.temp_copy(None).temp_base();
        let _ = pyfw::state::rule::restore_line(r.args());
    }
}

/// The planner on arbitrary state: no panic, no hang, every promise kept.
pub fn planner_target(data: &[u8]) {
    let s = scenario(data);
    let start = std::time::Instant::now();
    if let Err(e) = check(&s) {
        panic!("{e}");
    }
    assert!(
        start.elapsed() < std::time::Duration::from_secs(5),
        "planning took {:?}",
        start.elapsed()
    );
}
