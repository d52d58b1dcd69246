//! Wishes in the form iptables prints them, learned from iptables itself
//! and cached by wish text, so that a rule never looks like drift.

use std::collections::{HashMap, HashSet};

use crate::kernel::learn::SCRATCH_PREFIX;
use crate::kernel::process::ProcessName;
use crate::kernel::{Backend, RuleCheck};
use crate::reconcile::{Error, Reconciler};
use crate::state::canon;
use crate::state::rule::Rule;
use crate::state::{Family, State};
use crate::wishes::Wishes;

impl<B: Backend> Reconciler<B> {
    /// Wishes with every rule in iptables' own form. Rules that name a set
    /// or chain that does not exist yet cannot be in the kernel either; they
    /// go through the built-in normaliser and are checked later.
    ///
    /// A wished rule written exactly as a rule the kernel printed in the
    /// same table is in iptables' form already (what `iptables-save` prints
    /// loads back to the same rule and prints the same), so it is not
    /// learned: the kernel's rendering of it is its own text.
    pub(crate) fn canonicalize(
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
    pub(crate) fn drop_dead_scratch_chains(&mut self, state: &State) {
        for family in [Family::V4, Family::V6] {
            for (table, t) in &state.ruleset(family).tables {
                for (name, _) in &t.chains {
                    let Some(pid) = name.strip_prefix(SCRATCH_PREFIX) else {
                        continue;
                    };
                    // A live pyfw with that pid still owns it; so may a
                    // live process /proc hides (ProtectProc=invisible).
                    let alive = pid.parse::<u32>().is_ok_and(|pid| {
                        match crate::kernel::process::process_name(pid) {
                            ProcessName::Named(name) => name == "pyfw",
                            ProcessName::Hidden => true,
                            ProcessName::Gone => false,
                        }
                    });
                    if !alive && let Err(e) = self.backend.drop_chain(family, table, name) {
                        tracing::warn!("cannot remove stale scratch chain {table}/{name}: {e}");
                    }
                }
            }
        }
    }
}
