//! One reconcile: read the kernel, plan against the wishes, apply.
//!
//! This is the contract the one-shot `apply` and the daemon share, in the
//! manner of kube-rs's controller runtime: a reconcile is idempotent, reads
//! fresh state every time and never assumes what the last run left behind,
//! so any trigger (a file change, a signal, a timer, observed drift) can
//! call it, and calling it twice is the same as calling it once.
//!
//! Before planning, each wished rule is put in the form iptables prints it,
//! learned from iptables itself and cached by wish text, so that a rule
//! written `-p tcp --dport 22` is not seen as drift from the
//! `-p tcp -m tcp --dport 22` the kernel reports.

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::apply::{self, ApplyError, Event};
use crate::canon::{self, Comparison};
use crate::netfilter::{self, Backend, RuleCheck, Rules, SCRATCH_PREFIX, Scope, Sets};
use crate::ownership::{self, Owned, RECORD_SET};
use crate::plan::{self, Plan};
use crate::rule::Rule;
use crate::state::{Family, State};
use crate::wishes::Wishes;

/// Why a reconcile did not complete.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading netfilter state: {0}")]
    Read(#[source] netfilter::Error),
    #[error("{path}: {source}")]
    Rejected {
        path: String,
        #[source]
        source: netfilter::Error,
    },
    #[error(transparent)]
    Apply(#[from] ApplyError),
}

/// What a plan-only reconcile saw.
#[derive(Debug)]
pub struct Planned {
    pub state: State,
    pub plan: Plan,
    pub comparison: Comparison,
    /// Wished rules iptables could not check yet because they name a set or
    /// chain the plan creates; they are checked once those exist.
    pub deferred: Vec<RuleCheck>,
    /// What was read, to read the same again after an apply.
    pub scope: Scope,
}

/// What an applying reconcile did.
#[derive(Debug)]
pub struct Applied {
    /// The state read before the plan ran.
    pub before: State,
    pub plan: Plan,
    /// How many commands ran (0 when in sync).
    pub ran: usize,
    /// What was read.
    pub scope: Scope,
}

type CanonKey = (Family, String, Vec<String>);

/// What a reconcile must read, given the wishes and the sets (with pyfw's
/// record) already read: the wished chains, the chains holding rules pyfw
/// owns but no longer wishes, whole tables where a chain pyfw created may go
/// (its references must be known), and everything when a set may go or
/// change type (every rule using it must be known).
pub fn scope_for(wishes: &Wishes, sets: &State) -> Scope {
    let mut chains: HashMap<Family, BTreeSet<(String, String)>> = HashMap::new();
    let mut tables: HashMap<Family, BTreeSet<String>> = HashMap::new();
    for c in &wishes.chains {
        chains
            .entry(c.family)
            .or_default()
            .insert((c.table.clone(), c.chain.clone()));
    }
    let wished_chain = |f: Family, t: &str, ch: &str| {
        wishes
            .chains
            .iter()
            .find(|c| c.family == f && c.table == t && c.chain == ch)
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
        let mut whole = tables.remove(&family).unwrap_or_default();
        let some = chains.remove(&family).unwrap_or_default();
        *scope.rules_mut(family) = if !whole.is_empty() {
            whole.extend(some.into_iter().map(|(t, _)| t));
            Rules::Tables(whole)
        } else if !some.is_empty() {
            Rules::Chains(some)
        } else {
            Rules::Skip
        };
    }
    scope
}

/// Runs reconciles against one backend, remembering canonical rule forms.
pub struct Reconciler<B: Backend> {
    backend: B,
    canonical: HashMap<CanonKey, Rule>,
}

impl<B: Backend> Reconciler<B> {
    pub fn new(backend: B) -> Self {
        Reconciler {
            backend,
            canonical: HashMap::new(),
        }
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// Reads what the wishes touch and plans, changing nothing but a
    /// short-lived scratch chain used to learn canonical rule forms.
    pub fn plan(&mut self, wishes: &Wishes) -> Result<Planned, Error> {
        // Sets first: pyfw's record in them says which rules matter. The
        // wished chains are read in any case: they are read beside the sets
        // (see `Backend::read_state`), and only a record naming other
        // chains, or a set that may go, takes a second read.
        let mut first = scope_for(wishes, &State::default());
        first.sets = Sets::Named(
            wishes
                .ipsets
                .iter()
                .map(|s| s.name.clone())
                .chain([RECORD_SET.to_string()])
                .collect(),
        );
        let read = self
            .backend
            .read_state(first.clone())
            .map_err(Error::Read)?;
        let mut scope = scope_for(wishes, &read);
        let state = self.read_more(read, &first, &scope)?;
        if scope.sets == Sets::Skip {
            // What was read, sets included, to read the same again.
            scope.sets = first.sets;
        }
        self.drop_dead_scratch_chains(&state);
        let (canonical, deferred) = self.canonicalize(wishes, &state)?;
        let plan = plan::plan(&canonical, &state);
        Ok(Planned {
            state,
            plan,
            comparison: Comparison::Kernel,
            deferred,
            scope,
        })
    }

    /// `read` (what `first` asked for) completed to `scope`: only what the
    /// first read lacks is read again (the chains pyfw's record adds to the
    /// wished ones; whole tables or every set where something may go).
    fn read_more(&mut self, read: State, first: &Scope, scope: &Scope) -> Result<State, Error> {
        let mut more = Scope::none();
        for family in [Family::V4, Family::V6] {
            *more.rules_mut(family) = match (first.rules(family), scope.rules(family)) {
                (had, want) if had == want => Rules::Skip,
                (Rules::Chains(had), Rules::Chains(want)) => {
                    Rules::Chains(want.difference(had).cloned().collect())
                }
                (_, want) => want.clone(),
            };
        }
        more.sets = scope.sets.clone();
        if more.v4 == Rules::Skip && more.v6 == Rules::Skip && more.sets == Sets::Skip {
            return Ok(read);
        }
        let extra = self.backend.read_state(more.clone()).map_err(Error::Read)?;
        let mut state = read;
        for (family, mut got) in [(Family::V4, extra.v4), (Family::V6, extra.v6)] {
            let have = match family {
                Family::V4 => &mut state.v4,
                Family::V6 => &mut state.v6,
            };
            match more.rules(family) {
                Rules::Skip => {}
                // Other chains than those read: add them.
                Rules::Chains(_) => {
                    for (name, table) in std::mem::take(&mut got.tables) {
                        have.tables
                            .entry(name)
                            .or_default()
                            .chains
                            .extend(table.chains);
                    }
                }
                Rules::Tables(_) | Rules::All => *have = got,
            }
        }
        if more.sets != Sets::Skip {
            state.ipsets = extra.ipsets;
        }
        Ok(state)
    }

    /// Reads, plans and applies; all or nothing.
    pub fn apply(&mut self, wishes: &Wishes, on: &mut dyn FnMut(Event)) -> Result<Applied, Error> {
        let Planned {
            state,
            plan,
            deferred,
            scope,
            ..
        } = self.plan(wishes)?;
        if plan.is_empty() && plan.record.is_empty() {
            return Ok(Applied {
                before: state,
                plan,
                ran: 0,
                scope,
            });
        }
        let ran = apply::apply(&mut self.backend, &plan, &deferred, on)?;
        Ok(Applied {
            before: state,
            plan,
            ran,
            scope,
        })
    }

    /// Wishes with every rule in iptables' own form. Rules that name a set
    /// or chain that does not exist yet cannot be in the kernel either; they
    /// go through the built-in normaliser and are checked later.
    ///
    /// A wished rule written exactly as a rule the kernel printed in the
    /// same table is in iptables' form already (what `iptables-save` prints
    /// loads back to the same rule and prints the same), so it is not
    /// learned: the kernel's rendering of it is its own text.
    fn canonicalize(
        &mut self,
        wishes: &Wishes,
        state: &State,
    ) -> Result<(Wishes, Vec<RuleCheck>), Error> {
        let mut learn: Vec<RuleCheck> = Vec::new();
        let mut deferred: Vec<RuleCheck> = Vec::new();
        // What the kernel printed, by family and table, built on first use.
        // Rules compare by their tokens, so no rule's argv is built here.
        // (`Rule` caches its argv in a cell, which takes no part in its
        // hash or equality: the key cannot change while in the set.)
        #[allow(clippy::mutable_key_type)]
        let mut printed: HashMap<(Family, &str), HashSet<&Rule>> = HashMap::new();
        for chain in &wishes.chains {
            let ruleset = state.ruleset(chain.family);
            let chain_missing = ruleset.chain(&chain.table, &chain.chain).is_none();
            for item in chain.rules.iter().flatten() {
                let crate::wishes::RuleItem::Named(r) = item else {
                    continue;
                };
                let key = (chain.family, chain.table.clone(), r.rule.args().to_vec());
                if self.canonical.contains_key(&key) {
                    continue;
                }
                #[allow(clippy::mutable_key_type)]
                let kernel = printed
                    .entry((chain.family, chain.table.as_str()))
                    .or_insert_with(|| {
                        ruleset
                            .tables
                            .get(&chain.table)
                            .into_iter()
                            .flat_map(|t| t.chains.iter())
                            .flat_map(|(_, c)| c.rules.iter())
                            .collect()
                    });
                if kernel.contains(&r.rule) {
                    self.canonical.insert(key, r.rule.clone());
                    continue;
                }
                let missing_set = r.rule.sets().any(|s| !state.ipsets.contains_key(s));
                let missing_target = r.rule.target().filter(|t| {
                    ruleset.chain(&chain.table, t).is_none()
                        && wishes.chains.iter().any(|c| {
                            c.family == chain.family && c.table == chain.table && c.chain == *t
                        })
                });
                let mut creates = Vec::new();
                if chain_missing {
                    creates.push(chain.chain.clone());
                }
                creates.extend(missing_target.map(String::from));
                let check = RuleCheck {
                    family: chain.family,
                    table: chain.table.clone(),
                    chain: chain.chain.clone(),
                    creates,
                    rule: r.rule.clone(),
                    label: format!("{}/{}", chain.label(), r.name),
                };
                if missing_set || missing_target.is_some() {
                    deferred.push(check);
                } else {
                    learn.push(check);
                }
            }
        }
        let learned =
            self.backend
                .canonicalize(&learn, state)
                .map_err(|source| Error::Rejected {
                    path: wishes.path.display().to_string(),
                    source,
                })?;
        for (check, rule) in learn.iter().zip(learned) {
            let key = (
                check.family,
                check.table.clone(),
                check.rule.args().to_vec(),
            );
            self.canonical.insert(key, rule);
        }
        let canonical = wishes.map_rules(|chain, r| {
            let key = (chain.family, chain.table.clone(), r.rule.args().to_vec());
            match self.canonical.get(&key) {
                Some(rule) => rule.clone(),
                None => canon::normalize(&r.rule, chain.family),
            }
        });
        Ok((canonical, deferred))
    }

    /// Removes scratch chains whose pyfw died before it could.
    fn drop_dead_scratch_chains(&mut self, state: &State) {
        for family in [Family::V4, Family::V6] {
            for (table, t) in &state.ruleset(family).tables {
                for (name, _) in &t.chains {
                    let Some(pid) = name.strip_prefix(SCRATCH_PREFIX) else {
                        continue;
                    };
                    // A live pyfw with that pid still owns it.
                    let comm = std::path::Path::new("/proc").join(pid).join("comm");
                    let alive = std::fs::read_to_string(comm).is_ok_and(|c| c.trim() == "pyfw");
                    if !alive && let Err(e) = self.backend.drop_chain(family, table, name) {
                        tracing::warn!("cannot remove stale scratch chain {table}/{name}: {e}");
                    }
                }
            }
        }
    }
}
