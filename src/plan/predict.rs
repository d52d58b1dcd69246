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
//! That is exact when every rule the plan adds is in the form iptables
//! prints, which the caller checks (forms learned from iptables, nothing
//! deferred); otherwise, or when a command cannot be followed here (an
//! error), the caller reads back after all.

use crate::plan::revert::Snapshot;
use crate::plan::{Plan, Program};
use crate::state::rule::Rule;
use crate::state::{Chain, State, Table, builtin_chains};

/// The touched chains after `plan`, in a `State` that holds only them (no
/// sets), or why they cannot be worked out.
pub fn chains_after(before: &Snapshot, plan: &Plan) -> Result<State, String> {
    let mut chains = before.chains.clone();
    for c in plan.commands.iter().chain(&plan.record) {
        let Program::Iptables(family) = c.program else {
            continue;
        };
        let a = &c.args;
        let cannot = |why: &str| format!("cannot follow `{c}`: {why}");
        let (Some(table), Some(op), Some(name)) = (a.get(2), a.get(3), a.get(4)) else {
            return Err(cannot("too few arguments"));
        };
        let key = (family, table.clone(), name.clone());
        let slot = chains
            .get_mut(&key)
            .ok_or_else(|| cannot("its chain is not in the snapshot"))?;
        if op == "-N" {
            if slot.is_some() {
                return Err(cannot("the chain exists"));
            }
            *slot = Some(Chain {
                policy: None,
                rules: Vec::new(),
            });
            continue;
        }
        if op == "-X" {
            match slot.take() {
                Some(chain) if chain.rules.is_empty() => continue,
                _ => return Err(cannot("the chain is missing or not empty")),
            }
        }
        // A built-in chain of a table not yet in use comes with the table.
        if slot.is_none() && builtin_chains(table).contains(&name.as_str()) {
            *slot = Some(Chain {
                policy: Some("ACCEPT".into()),
                rules: Vec::new(),
            });
        }
        let chain = slot.as_mut().ok_or_else(|| cannot("no such chain"))?;
        let number = |at: usize| -> Result<Option<usize>, String> {
            match a.get(at).map(|n| n.parse::<usize>()) {
                Some(Ok(n)) if n >= 1 => Ok(Some(n - 1)),
                Some(Ok(_)) => Err(cannot("rule numbers start at 1")),
                _ => Ok(None),
            }
        };
        let rule_from = |at: usize| Rule::from_args(a.get(at..).unwrap_or_default().to_vec());
        match op.as_str() {
            "-P" => {
                let policy = a.get(5).ok_or_else(|| cannot("no policy"))?;
                chain.policy = Some(policy.clone());
            }
            "-A" => chain.rules.push(rule_from(5)),
            "-I" => {
                let (at, spec) = match number(5)? {
                    Some(at) => (at, 6),
                    None => (0, 5),
                };
                if at > chain.rules.len() {
                    return Err(cannot("the position is past the chain's end"));
                }
                chain.rules.insert(at, rule_from(spec));
            }
            "-D" => {
                let at = match number(5)? {
                    Some(at) => at,
                    None => {
                        let rule = rule_from(5);
                        (chain.rules.iter().position(|r| *r == rule))
                            .ok_or_else(|| cannot("no such rule"))?
                    }
                };
                if at >= chain.rules.len() {
                    return Err(cannot("no rule at that number"));
                }
                chain.rules.remove(at);
            }
            _ => return Err(cannot("not a command pyfw plans")),
        }
    }
    let mut state = State::default();
    for ((family, table, name), chain) in chains {
        let Some(chain) = chain else { continue };
        let table: &mut Table = state.ruleset_mut(family).tables.entry(table).or_default();
        table.chains.push((name, chain));
    }
    Ok(state)
}
