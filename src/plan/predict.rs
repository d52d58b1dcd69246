//! What the chains a plan touches hold once it has run, worked out from
//! the snapshot they were planned from rather than read back.
//!
//! `apply` shows the operator what changed ("State changes"). On the nft
//! backend it reads the touched chains back: a chain is read alone, in
//! milliseconds. On legacy every read copies the whole table out of the
//! kernel, and with a 50,000-rule table that read-back was a third of an
//! apply (0.2 s). There `apply` holds the xtables lock from its first read
//! to its commit, so no other writer can come between (see
//! `main::run`), and the chains' new contents follow from the commands
//! alone: this module runs them on the snapshot, as the kernel ran them.
//! That is exact when the form iptables prints is known for every rule the
//! plan adds: the plan installs what the wishes say, and lists how iptables
//! prints each rule it prints otherwise ([`Plan::printed`]); the caller
//! checks that those forms were learned from iptables and nothing was
//! deferred. Otherwise, or when a command cannot be followed here (an
//! error), the caller reads back after all.

use crate::plan::revert::Snapshot;
use crate::plan::{Plan, Program};
use crate::state::rule::Rule;
use std::collections::{BTreeMap, HashMap};

use crate::state::{Chain, Family, State, Table, builtin_chains};

/// How iptables prints each rule the plan installs as written.
struct Printed<'p>(HashMap<(Family, &'p str, &'p [String]), &'p Rule>);

impl<'p> Printed<'p> {
    fn of(plan: &'p Plan) -> Printed<'p> {
        Printed(
            (plan.printed.iter())
                .map(|p| ((p.family, p.table.as_str(), p.installed.args()), &p.printed))
                .collect(),
        )
    }

    /// `rule` as iptables prints it: its learned form, and for a move's
    /// temporary copy, the learned form of the rule it copies.
    fn as_printed(&self, family: Family, table: &str, rule: Rule) -> Rule {
        if self.0.is_empty() {
            return rule;
        }
        let known = |r: &Rule| self.0.get(&(family, table, r.args())).map(|p| (*p).clone());
        if let Some(p) = known(&rule) {
            return p;
        }
        if let Some(base) = rule.temp_base()
            && let Some(p) = known(&base)
            && let Some(name) = base.comment()
        {
            return p.temp_copy(Some(name));
        }
        rule
    }
}

/// The touched chains after `plan`, in a `State` that holds only them (no
/// sets), or why they cannot be worked out.
pub fn chains_after(before: &Snapshot, plan: &Plan) -> Result<State, String> {
    let printed = Printed::of(plan);
    let mut chains = before.chains.clone();
    for c in plan.commands.iter().chain(&plan.record) {
        let Program::Iptables(family) = c.program else {
            continue;
        };
        follow(&mut chains, &printed, family, &c.args)
            .map_err(|why| format!("cannot follow `{c}`: {why}"))?;
    }
    let mut state = State::default();
    for ((family, table, name), chain) in chains {
        let Some(chain) = chain else { continue };
        let table: &mut Table = state.ruleset_mut(family).tables.entry(table).or_default();
        table.chains.push((name, chain));
    }
    Ok(state)
}

/// The chains of a snapshot: present (`Some`) or known to be absent.
type Chains = BTreeMap<(Family, String, String), Option<Chain>>;

/// Runs one iptables command (`-w -t TABLE OP CHAIN ...`) on `chains`.
fn follow(
    chains: &mut Chains,
    printed: &Printed,
    family: Family,
    a: &[String],
) -> Result<(), &'static str> {
    let (Some(table), Some(op), Some(name)) = (a.get(2), a.get(3), a.get(4)) else {
        return Err("too few arguments");
    };
    let slot = (chains.get_mut(&(family, table.clone(), name.clone())))
        .ok_or("its chain is not in the snapshot")?;
    match op.as_str() {
        "-N" if slot.is_some() => return Err("the chain exists"),
        "-N" => {
            *slot = Some(Chain {
                policy: None,
                rules: Vec::new(),
            });
            return Ok(());
        }
        "-X" => {
            return match slot.take() {
                Some(chain) if chain.rules.is_empty() => Ok(()),
                _ => Err("the chain is missing or not empty"),
            };
        }
        _ => {}
    }
    // A built-in chain of a table not yet in use comes with the table.
    if slot.is_none() && builtin_chains(table).contains(&name.as_str()) {
        *slot = Some(Chain {
            policy: Some("ACCEPT".into()),
            rules: Vec::new(),
        });
    }
    let chain = slot.as_mut().ok_or("no such chain")?;
    let rule_from = |at: usize| {
        let rule = Rule::from_args(a.get(at..).unwrap_or_default().to_vec());
        printed.as_printed(family, table, rule)
    };
    edit(chain, op, a, rule_from)
}

/// Runs a command on one chain's policy or rules: `-P`, `-A`, `-I [N]`,
/// `-D N` or `-D RULE`. `rule_from(i)` is the rule spelled from argument
/// `i` on, as iptables prints it.
fn edit(
    chain: &mut Chain,
    op: &str,
    a: &[String],
    rule_from: impl Fn(usize) -> Rule,
) -> Result<(), &'static str> {
    let number = |at: usize| -> Result<Option<usize>, &'static str> {
        match a.get(at).map(|n| n.parse::<usize>()) {
            Some(Ok(n)) if n >= 1 => Ok(Some(n - 1)),
            Some(Ok(_)) => Err("rule numbers start at 1"),
            _ => Ok(None),
        }
    };
    match op {
        "-P" => chain.policy = Some(a.get(5).ok_or("no policy")?.clone()),
        "-A" => chain.rules.push(rule_from(5)),
        "-I" => {
            let (at, spec) = number(5)?.map_or((0, 5), |at| (at, 6));
            if at > chain.rules.len() {
                return Err("the position is past the chain's end");
            }
            chain.rules.insert(at, rule_from(spec));
        }
        "-D" => {
            let at = match number(5)? {
                Some(at) => at,
                None => {
                    let rule = rule_from(5);
                    (chain.rules.iter().position(|r| *r == rule)).ok_or("no such rule")?
                }
            };
            if at >= chain.rules.len() {
                return Err("no rule at that number");
            }
            chain.rules.remove(at);
        }
        _ => return Err("not a command pyfw plans"),
    }
    Ok(())
}
