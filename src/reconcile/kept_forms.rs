//! Learned rule forms kept between runs, in the state directory, so that a
//! one-shot `pyfw apply` or `check` of wishes learned before need not load
//! its rules in a private namespace again (three commits and two reads,
//! most of such a run's time beside the kernel tools' own).
//!
//! A form is the iptables tools' and the kernel's doing: the file holds the
//! key they make ([`crate::kernel::Backend::forms_key`]: the tools as the
//! files they are, the kernel's release), and is used only under the same
//! key. A form is also the kernel's verdict on the wish, in its chain; the
//! verdict holds only while what the rule names does, so a kept form is
//! used only for a rule that names no set, and jumps nowhere or to a
//! verdict, an extension target, or a chain there now. Only what the wishes
//! of the run name is kept: the file stays the size of the wishes.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::kernel::{self, Form, Learned};
use crate::reconcile::CanonKey;
use crate::state::rule::Rule;
use crate::state::{Family, State};
use crate::wishes::{ChainWish, RuleItem, Wishes};

/// The file in the state directory.
const FILE: &str = "iptables-forms.json";

#[derive(Serialize, Deserialize)]
struct Kept {
    key: String,
    forms: Vec<Entry>,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    v6: bool,
    table: String,
    chain: String,
    wish: Vec<String>,
    printed: Vec<String>,
    form: KeptForm,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum KeptForm {
    Stable,
    Reloads(Vec<String>),
    Lossy,
    Unloadable(String),
}

type Place = (bool, String, String, Vec<String>);

/// The kept forms of the wished rules that may use one, by the cache key
/// of [`super::Reconciler`]'s memory; nothing when `key` is empty or is
/// not the file's.
pub(crate) fn load(key: &str, wishes: &Wishes, state: &State) -> Vec<(CanonKey, Learned)> {
    if key.is_empty() {
        return Vec::new();
    }
    let Some(kept) = kernel::state_dir::read(FILE)
        .and_then(|text| serde_json::from_str::<Kept>(&text).ok())
        .filter(|kept| kept.key == key)
    else {
        return Vec::new();
    };
    let mut by_place: HashMap<Place, Entry> = (kept.forms.into_iter())
        .map(|e| ((e.v6, e.table.clone(), e.chain.clone(), e.wish.clone()), e))
        .collect();
    let mut out = Vec::new();
    for (chain, rule) in named_rules(wishes) {
        if !may_keep(rule, chain, wishes, state) {
            continue;
        }
        let place = place(chain, rule);
        if let Some(entry) = by_place.remove(&place) {
            let key = (chain.family, chain.table.clone(), rule.args().to_vec());
            out.push((key, learned(entry)));
        }
    }
    out
}

/// Keeps the forms `known` holds of the wished rules, under `key`. A state
/// directory pyfw cannot use costs only this memory.
pub(crate) fn save(key: &str, wishes: &Wishes, known: &HashMap<CanonKey, Learned>) {
    if key.is_empty() {
        return;
    }
    let mut forms = Vec::new();
    for (chain, rule) in named_rules(wishes) {
        let k = (chain.family, chain.table.clone(), rule.args().to_vec());
        if let Some(l) = known.get(&k) {
            let (v6, table, chain, wish) = place(chain, rule);
            forms.push(Entry {
                v6,
                table,
                chain,
                wish,
                printed: l.printed.args().to_vec(),
                form: kept_form(&l.form),
            });
        }
    }
    let kept = Kept {
        key: key.to_string(),
        forms,
    };
    let saved = serde_json::to_string(&kept)
        .map_err(|e| e.to_string())
        .and_then(|text| kernel::state_dir::write(FILE, &text));
    if let Err(e) = saved {
        tracing::debug!("cannot keep learned rule forms for the next run ({e})");
    }
}

fn named_rules(wishes: &Wishes) -> impl Iterator<Item = (&ChainWish, &Rule)> {
    wishes.chains.iter().flat_map(|chain| {
        (chain.rules.iter().flatten()).filter_map(move |item| match item {
            RuleItem::Named(r) => Some((chain, &r.rule)),
            _ => None,
        })
    })
}

fn place(chain: &ChainWish, rule: &Rule) -> Place {
    (
        chain.family == Family::V6,
        chain.table.clone(),
        chain.chain.clone(),
        rule.args().to_vec(),
    )
}

/// Whether a kept verdict on `rule` still holds: it names no set, and
/// jumps nowhere, to no chain, or to a chain there now.
fn may_keep(rule: &Rule, chain: &ChainWish, wishes: &Wishes, state: &State) -> bool {
    if rule.sets().next().is_some() {
        return false;
    }
    let Some(target) = rule.target() else {
        return true;
    };
    if !crate::state::rule::names_a_chain(target) {
        return true;
    }
    let wished = (wishes.chains.iter())
        .any(|w| w.family == chain.family && w.table == chain.table && w.chain == target);
    let there = (state.ruleset(chain.family).tables.get(&chain.table))
        .is_some_and(|t| t.chains.iter().any(|(name, _)| name == target));
    wished || there
}

fn kept_form(form: &Form) -> KeptForm {
    match form {
        Form::Stable => KeptForm::Stable,
        Form::Reloads(r) => KeptForm::Reloads(r.args().to_vec()),
        Form::Lossy => KeptForm::Lossy,
        Form::Unloadable(s) => KeptForm::Unloadable(s.clone()),
    }
}

fn learned(entry: Entry) -> Learned {
    let form = match entry.form {
        KeptForm::Stable => Form::Stable,
        KeptForm::Reloads(args) => Form::Reloads(Rule::from_args(args)),
        KeptForm::Lossy => Form::Lossy,
        KeptForm::Unloadable(s) => Form::Unloadable(s),
    };
    Learned {
        printed: Rule::from_args(entry.printed),
        form,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wishes(rule: &str) -> Wishes {
        let text = format!(
            "pyfw_wishes:\n  iptables:\n    filter:\n      INPUT:\n        rules:\n        - r: '{rule}'\n"
        );
        crate::wishes::parse(&text, std::path::Path::new("w.yaml")).expect("wishes")
    }

    fn verdict(rule: &str, state: &State) -> bool {
        let w = wishes(rule);
        let (chain, r) = named_rules(&w).next().expect("a rule");
        may_keep(r, chain, &w, state)
    }

    #[test]
    fn a_kept_verdict_is_used_only_while_what_the_rule_names_is_there() {
        let empty = State::default();
        assert!(verdict("-p tcp --dport 22 -j ACCEPT", &empty));
        assert!(verdict("-p tcp -j REJECT --reject-with tcp-reset", &empty));
        assert!(verdict("-m conntrack --ctstate INVALID", &empty));
        // A chain that is gone, or a set that may be, is asked again.
        assert!(!verdict("-j KUBE-NOPE", &empty));
        assert!(!verdict("-m set --match-set allowed src -j ACCEPT", &empty));
        let host = crate::state::parse_iptables_save(
            "*filter\n:INPUT ACCEPT [0:0]\n:KUBE-NOPE - [0:0]\nCOMMIT\n",
        )
        .expect("save");
        let state = State {
            v4: host,
            ..State::default()
        };
        assert!(verdict("-j KUBE-NOPE", &state));
    }

    #[test]
    fn every_form_reads_back_as_kept() {
        let rule = |t: &str| Rule::parse(t).expect("rule");
        for form in [
            Form::Stable,
            Form::Reloads(rule("-p tcp -m tcp --dport 22 -j ACCEPT")),
            Form::Lossy,
            Form::Unloadable("iptables: bad".into()),
        ] {
            let entry = Entry {
                v6: false,
                table: "filter".into(),
                chain: "INPUT".into(),
                wish: vec!["-j".into(), "ACCEPT".into()],
                printed: rule("-s 10.0.0.1/32 -j ACCEPT").args().to_vec(),
                form: kept_form(&form),
            };
            let text = serde_json::to_string(&entry).expect("json");
            let back = learned(serde_json::from_str(&text).expect("read back"));
            assert_eq!(back.form, form);
            assert_eq!(back.printed, rule("-s 10.0.0.1/32 -j ACCEPT"));
        }
    }
}
