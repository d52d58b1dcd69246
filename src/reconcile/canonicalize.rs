//! Wishes in the form iptables prints them, learned from iptables itself
//! and cached by wish text, so that a rule never looks like drift.

use std::collections::{HashMap, HashSet};

use crate::kernel::learn::SCRATCH_PREFIX;
use crate::kernel::process::ProcessName;
use crate::kernel::{self, Backend, Form, Learned, Rejection, RuleCheck, SetShape};
use crate::reconcile::{Error, PlanWarning, Reconciler, Refusal, kept_forms};
use crate::state::canon;
use crate::state::rule::Rule;
use crate::state::{Family, State};
use crate::wishes::{ChainWish, NamedRule, RuleItem, Wishes};

/// The wishes in iptables' form, and what learning it found.
pub(crate) struct Canonical {
    pub wishes: Wishes,
    /// Rules that could not be learned before the plan creates what they
    /// name: checked at apply.
    pub deferred: Vec<RuleCheck>,
    /// Rules whose printed form does not load back as the wish.
    pub warnings: Vec<PlanWarning>,
}

impl<B: Backend> Reconciler<B> {
    /// Wishes with every rule in iptables' own form, learned from iptables
    /// (and cached by wish text). Every wish the kernel tools refuse is
    /// reported at once, as [`Error::Rejected`], before anything changes.
    ///
    /// A wished rule written exactly as a rule the kernel printed in the
    /// same table is in iptables' form already (what `iptables-save` prints
    /// loads back to the same rule and prints the same), so it is not
    /// learned: the kernel's rendering of it is its own text.
    pub(crate) fn canonicalize(
        &mut self,
        wishes: &Wishes,
        state: &State,
    ) -> Result<Canonical, Error> {
        let (mut learn, mut rejected) = self.wished_checks(wishes, state);
        let kept_key = self.use_kept_forms(wishes, state, &mut learn);
        let new_sets: Vec<SetShape> = (wishes.ipsets.iter())
            .filter(|w| !state.ipsets.contains_key(&w.name))
            .map(|w| SetShape {
                name: w.name.clone(),
                kind: w.kind.name().to_string(),
                options: w.header.clone(),
            })
            .collect();
        let mut deferred = Vec::new();
        match self.backend.canonicalize(&learn, state, &new_sets) {
            Ok(learned) => {
                let mut any = false;
                for (check, learned) in learn.into_iter().zip(learned) {
                    match learned {
                        Some(l) => {
                            self.canonical.insert(key_of(&check), l);
                            any = true;
                        }
                        None => deferred.push(check),
                    }
                }
                if any {
                    kept_forms::save(&kept_key, wishes, &self.canonical);
                }
            }
            Err(kernel::Error::Rejected(list)) => rejected.extend(list),
            Err(source) => {
                return Err(Error::Learn {
                    path: wishes.path.display().to_string(),
                    source,
                });
            }
        }
        if !rejected.is_empty() {
            return Err(rejected_in(wishes, rejected));
        }
        let canonical = wishes.map_rules(|chain, r| {
            let key = (chain.family, chain.table.clone(), r.rule.args().to_vec());
            match self.canonical.get(&key) {
                Some(l) => l.printed.clone(),
                None => canon::normalize(&r.rule, chain.family),
            }
        });
        let warnings = self.form_warnings(wishes);
        Ok(Canonical {
            wishes: canonical,
            deferred,
            warnings,
        })
    }

    /// Takes what an earlier run learned of the rules in `learn` (see
    /// [`kept_forms`]) and leaves in `learn` only the rules still to learn.
    /// Returns the key the forms are kept under (empty: none are).
    fn use_kept_forms(
        &mut self,
        wishes: &Wishes,
        state: &State,
        learn: &mut Vec<RuleCheck>,
    ) -> String {
        if learn.is_empty() {
            return String::new();
        }
        let key = self.backend.forms_key();
        let kept = kept_forms::load(&key, wishes, state);
        if !kept.is_empty() {
            let before = learn.len();
            self.canonical.extend(kept);
            learn.retain(|check| !self.canonical.contains_key(&key_of(check)));
            tracing::debug!(
                "{} of {before} rule forms kept from an earlier run; {} to learn",
                before - learn.len(),
                learn.len()
            );
        }
        key
    }

    /// The wished rules to learn (not cached, not printed by the kernel as
    /// written), and those refused without asking the kernel: a set that
    /// neither the wishes nor the kernel have.
    fn wished_checks(
        &mut self,
        wishes: &Wishes,
        state: &State,
    ) -> (Vec<RuleCheck>, Vec<Rejection>) {
        let mut learn: Vec<RuleCheck> = Vec::new();
        let mut rejected: Vec<Rejection> = Vec::new();
        // What the kernel printed, by family and table, built on first use.
        // Rules compare by their tokens, so no rule's argv is built here.
        // (`Rule` caches its argv in a cell, which takes no part in its
        // hash or equality: the key cannot change while in the set.)
        #[allow(clippy::mutable_key_type)]
        let mut printed: HashMap<(Family, &str), HashSet<&Rule>> = HashMap::new();
        for chain in &wishes.chains {
            let ruleset = state.ruleset(chain.family);
            for item in chain.rules.iter().flatten() {
                let RuleItem::Named(r) = item else {
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
                    let learned = Learned {
                        printed: r.rule.clone(),
                        form: Form::Stable,
                    };
                    self.canonical.insert(key, learned);
                    continue;
                }
                match rule_check(wishes, state, chain, r) {
                    Ok(check) => learn.push(check),
                    Err(refused) => rejected.push(refused),
                }
            }
        }
        (learn, rejected)
    }

    /// A warning for each wished rule whose printed form does not load
    /// back as itself, or as the wish.
    fn form_warnings(&self, wishes: &Wishes) -> Vec<PlanWarning> {
        let mut out = Vec::new();
        for chain in &wishes.chains {
            for item in chain.rules.iter().flatten() {
                let RuleItem::Named(r) = item else {
                    continue;
                };
                let key = (chain.family, chain.table.clone(), r.rule.args().to_vec());
                let Some(learned) = self.canonical.get(&key) else {
                    continue;
                };
                if let Some(message) = form_words(learned) {
                    out.push(PlanWarning {
                        label: format!("{}/{}", chain.label(), r.name),
                        message,
                    });
                }
            }
        }
        out
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

/// The cache key of a check.
fn key_of(check: &RuleCheck) -> (Family, String, Vec<String>) {
    (
        check.family,
        check.table.clone(),
        check.rule.args().to_vec(),
    )
}

/// What a learned form that does not load back as the wish means.
fn form_words(learned: &Learned) -> Option<String> {
    let l = &learned.printed;
    match &learned.form {
        Form::Stable => None,
        Form::Reloads(again) => Some(format!(
            "iptables prints this rule as `{l}`, which loads back as `{again}`: pyfw installs \
             your text and compares with `{l}`; restoring an iptables-save of this host would \
             change it"
        )),
        Form::Lossy => Some(format!(
            "iptables prints this rule as `{l}`, which is another rule: pyfw installs your \
             text, but cannot tell it from `{l}` when it reads the rules back"
        )),
        Form::Unloadable(said) => Some(format!(
            "iptables prints this rule as `{l}`, which iptables refuses to load ({said}): pyfw \
             installs your text and compares with `{l}`; restoring an iptables-save of this \
             host would fail"
        )),
    }
}

/// The refused wishes, each with its line in `wishes`, in file order.
pub(crate) fn rejected_in(wishes: &Wishes, list: Vec<Rejection>) -> Error {
    let mut refused: Vec<Refusal> = list
        .into_iter()
        .map(|r| Refusal {
            line: wishes.line_of(&r.label),
            label: r.label,
            message: r.message,
        })
        .collect();
    refused.sort_by_key(|r| r.line.unwrap_or(u64::MAX));
    Error::Rejected {
        path: wishes.path.display().to_string(),
        refused,
    }
}

/// What to learn of wished rule `r` of `chain`, or why the kernel is not
/// even asked: it matches a set that neither the wishes nor the kernel
/// have.
fn rule_check(
    wishes: &Wishes,
    state: &State,
    chain: &ChainWish,
    r: &NamedRule,
) -> Result<RuleCheck, Rejection> {
    let label = format!("{}/{}", chain.label(), r.name);
    let wished_set = |s: &str| wishes.ipsets.iter().any(|w| w.name == s);
    if let Some(set) = (r.rule.sets()).find(|s| !state.ipsets.contains_key(*s) && !wished_set(s)) {
        return Err(Rejection {
            label,
            message: format!("matches set {set}, which neither the wishes nor the kernel have"),
        });
    }
    let ruleset = state.ruleset(chain.family);
    let missing_set = r.rule.sets().any(|s| !state.ipsets.contains_key(s));
    let missing_target = r.rule.target().filter(|t| {
        ruleset.chain(&chain.table, t).is_none()
            && (wishes.chains.iter())
                .any(|c| c.family == chain.family && c.table == chain.table && c.chain == *t)
    });
    let mut creates = Vec::new();
    if ruleset.chain(&chain.table, &chain.chain).is_none() {
        creates.push(chain.chain.clone());
    }
    creates.extend(missing_target.map(String::from));
    Ok(RuleCheck {
        family: chain.family,
        table: chain.table.clone(),
        chain: chain.chain.clone(),
        creates,
        rule: r.rule.clone(),
        label,
        later: missing_set || missing_target.is_some(),
    })
}
