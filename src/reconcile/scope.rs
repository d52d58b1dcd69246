//! What a reconcile must read, given the wishes and pyfw's record.

use std::collections::{BTreeSet, HashMap};

use crate::kernel::scope::{Rules, Scope};
use crate::state::ownership::{self, Owned};
use crate::state::{Family, State};
use crate::wishes::Wishes;

/// What a reconcile must read, given the wishes and the sets (with pyfw's
/// record) already read: the wished chains, the chains holding rules pyfw
/// owns but no longer wishes, whole tables where a chain pyfw created may go
/// (its references must be known), and everything when a set may go or
/// change type (every rule using it must be known).
pub fn scope_for(wishes: &Wishes, sets: &State) -> Scope {
    let mut chains: HashMap<Family, BTreeSet<(String, String)>> = HashMap::new();
    let mut tables: HashMap<Family, BTreeSet<String>> = HashMap::new();
    for c in &wishes.chains {
        let chain = (c.table.clone(), c.chain.clone());
        chains.entry(c.family).or_default().insert(chain);
    }
    let wished_chain = |f: Family, t: &str, ch: &str| {
        (wishes.chains.iter()).find(|c| c.family == f && c.table == t && c.chain == ch)
    };
    for entry in ownership::read(sets) {
        match entry {
            Owned::Rule {
                family,
                table,
                chain,
                name,
                ..
            } => {
                let wished = wished_chain(family, &table, &chain)
                    .is_some_and(|c| c.rule_names().any(|n| n == name));
                if !wished {
                    chains.entry(family).or_default().insert((table, chain));
                }
            }
            Owned::Chain {
                family,
                table,
                chain,
            } => {
                if wished_chain(family, &table, &chain).is_none() {
                    tables.entry(family).or_default().insert(table);
                }
            }
            Owned::Set { name } => {
                if !wishes.ipsets.iter().any(|s| s.name == name) {
                    return Scope::all();
                }
            }
            // Read by the nftables part of a plan (`reconcile::nft`).
            Owned::NftTable { .. } => {}
        }
    }
    let type_change = wishes.ipsets.iter().any(|w| {
        sets.ipsets
            .get(&w.name)
            .is_some_and(|have| have.kind != w.kind.name())
    });
    if type_change {
        return Scope::all();
    }
    let mut scope = Scope::none();
    for family in [Family::V4, Family::V6] {
        *scope.rules_mut(family) = rules(
            tables.remove(&family).unwrap_or_default(),
            chains.remove(&family).unwrap_or_default(),
        );
    }
    scope
}

/// What to read of one family: `whole` tables (with the tables of the
/// chains, which they hold), else `some` chains, else nothing.
fn rules(mut whole: BTreeSet<String>, some: BTreeSet<(String, String)>) -> Rules {
    if !whole.is_empty() {
        whole.extend(some.into_iter().map(|(t, _)| t));
        Rules::Tables(whole)
    } else if !some.is_empty() {
        Rules::Chains(some)
    } else {
        Rules::Skip
    }
}
