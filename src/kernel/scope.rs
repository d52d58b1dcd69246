//! What to read: the rules and sets a plan can touch, and no more.

use std::collections::BTreeSet;

use crate::state::{Family, State};

/// What to read: the rules and sets a plan can touch, and no more, since a
/// full `iptables-save` of a host with a 50,000-rule Kubernetes chain costs
/// a second and a half of CPU where one chain costs milliseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    pub v4: Rules,
    pub v6: Rules,
    pub sets: Sets,
}

/// Which rules of one family to read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rules {
    Skip,
    All,
    /// These tables whole.
    Tables(BTreeSet<String>),
    /// These (table, chain) pairs, with their policies.
    Chains(BTreeSet<(String, String)>),
}

/// Which sets to read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sets {
    Skip,
    All,
    Named(BTreeSet<String>),
}

impl Scope {
    /// Everything: every table of both families and every set.
    pub fn all() -> Scope {
        Scope {
            v4: Rules::All,
            v6: Rules::All,
            sets: Sets::All,
        }
    }

    /// Nothing; fill in what is wanted.
    pub fn none() -> Scope {
        Scope {
            v4: Rules::Skip,
            v6: Rules::Skip,
            sets: Sets::Skip,
        }
    }

    pub fn rules(&self, family: Family) -> &Rules {
        match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }

    pub fn rules_mut(&mut self, family: Family) -> &mut Rules {
        match family {
            Family::V4 => &mut self.v4,
            Family::V6 => &mut self.v6,
        }
    }

    /// Whether this reads nothing.
    pub fn is_empty(&self) -> bool {
        self.v4 == Rules::Skip && self.v6 == Rules::Skip && self.sets == Sets::Skip
    }

    /// What this asks for that `had` did not read. Chains and sets are
    /// subtracted by name; whole tables, or everything, are asked for
    /// again unless `had` read exactly that (or everything).
    pub fn beyond(&self, had: &Scope) -> Scope {
        let rules = |want: &Rules, had: &Rules| match (want, had) {
            (Rules::Skip, _) | (_, Rules::All) => Rules::Skip,
            (want, had) if want == had => Rules::Skip,
            (Rules::Chains(want), Rules::Chains(had)) => {
                rest(want, had).map_or(Rules::Skip, Rules::Chains)
            }
            (want, _) => want.clone(),
        };
        let sets = match (&self.sets, &had.sets) {
            (Sets::Skip, _) | (_, Sets::All) => Sets::Skip,
            (Sets::Named(want), Sets::Named(had)) => {
                rest(want, had).map_or(Sets::Skip, Sets::Named)
            }
            (want, _) => want.clone(),
        };
        Scope {
            v4: rules(&self.v4, &had.v4),
            v6: rules(&self.v6, &had.v6),
            sets,
        }
    }

    /// What two reads read together, when that is a scope: chains with
    /// chains, sets with sets (`None` for whole tables beside single
    /// chains, which no scope says).
    pub fn union(&self, other: &Scope) -> Option<Scope> {
        let rules = |a: &Rules, b: &Rules| match (a, b) {
            (Rules::All, _) | (_, Rules::All) => Some(Rules::All),
            (Rules::Skip, x) | (x, Rules::Skip) => Some(x.clone()),
            (Rules::Chains(a), Rules::Chains(b)) => Some(Rules::Chains(a | b)),
            (Rules::Tables(a), Rules::Tables(b)) => Some(Rules::Tables(a | b)),
            _ => None,
        };
        let sets = match (&self.sets, &other.sets) {
            (Sets::All, _) | (_, Sets::All) => Sets::All,
            (Sets::Skip, x) | (x, Sets::Skip) => x.clone(),
            (Sets::Named(a), Sets::Named(b)) => Sets::Named(a | b),
        };
        Some(Scope {
            v4: rules(&self.v4, &other.v4)?,
            v6: rules(&self.v6, &other.v6)?,
            sets,
        })
    }
}

/// The names in `want` that are not in `had`; `None` when there are none.
fn rest<T: Ord + Clone>(want: &BTreeSet<T>, had: &BTreeSet<T>) -> Option<BTreeSet<T>> {
    let rest: BTreeSet<T> = want.difference(had).cloned().collect();
    (!rest.is_empty()).then_some(rest)
}

/// `state` with `extra` (what `more` asked for) in it: chains and sets
/// replace their namesakes or join them; whole tables, or everything,
/// replace what was there.
pub fn merge(mut state: State, extra: State, more: &Scope) -> State {
    for (family, mut got) in [(Family::V4, extra.v4), (Family::V6, extra.v6)] {
        let have = state.ruleset_mut(family);
        match more.rules(family) {
            Rules::Skip => {}
            Rules::All => *have = got,
            Rules::Tables(tables) => {
                for name in tables {
                    match got.tables.remove(name) {
                        Some(table) => have.tables.insert(name.clone(), table),
                        None => have.tables.remove(name),
                    };
                }
            }
            Rules::Chains(_) => {
                for (name, table) in std::mem::take(&mut got.tables) {
                    let have = have.tables.entry(name).or_default();
                    for (chain, rules) in table.chains {
                        match have.chains.iter_mut().find(|(n, _)| *n == chain) {
                            Some(slot) => slot.1 = rules,
                            None => have.chains.push((chain, rules)),
                        }
                    }
                }
            }
        }
    }
    match &more.sets {
        Sets::Skip => {}
        Sets::All => state.ipsets = extra.ipsets,
        Sets::Named(_) => state.ipsets.extend(extra.ipsets),
    }
    state
}
