//! What the wishes say that holds against the kernel but is likely not
//! what was meant, found beside a plan: said with the wish's file and
//! line, and applied all the same.
//!
//! [`unreached`]: a wished user chain with rules that no rule jumps or
//! goes to never sees a packet. `filter: PREROUTING:` or the typo
//! `DOCKER_USER:` make such a chain, so the warning names the near name
//! where there is one.

use std::collections::HashSet;

use crate::state::ownership::{self, Owned};
use crate::state::rule::Rule;
use crate::state::{Family, State, TABLES, builtin_chains};
use crate::wishes::{ChainWish, RuleItem, Wishes};

/// A finding about one wish, against the state read: said with the wish's
/// file and line (see [`Wishes::locate`]), and applied all the same.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanWarning {
    /// `table/chain/NAME`, `table/chain` or `ipset NAME`.
    pub label: String,
    pub message: String,
}

/// A wished chain that nothing jumps to, and what to say of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unreached {
    pub family: Family,
    pub table: String,
    pub chain: String,
    pub warning: PlanWarning,
}

/// Each wished user chain with rules that no rule jumps or goes to
/// (`-j`/`-g`): none of the wished rules, and none of the rules in `state`
/// but those of pyfw's the wishes withdraw. Built-in chains are hooked; a
/// chain wished without rules (to make it, or to withdraw pyfw's rules
/// from it) is not checked.
///
/// A rule in a chain `state` lacks is not seen: a caller that read only
/// some chains of a table reads the tables named here whole, and asks
/// again.
pub fn unreached(wishes: &Wishes, state: &State) -> Vec<Unreached> {
    candidates(wishes)
        .filter(|chain| !Jumps::new(wishes, state, chain).reach(&chain.chain))
        .map(|chain| Unreached {
            family: chain.family,
            table: chain.table.clone(),
            chain: chain.chain.clone(),
            warning: PlanWarning {
                label: chain.label(),
                message: unreached_message(wishes, state, chain),
            },
        })
        .collect()
}

/// The wished user chains [`unreached`] checks, by family, table and name.
pub fn checked(wishes: &Wishes) -> impl Iterator<Item = (Family, &str, &str)> {
    candidates(wishes).map(|c| (c.family, c.table.as_str(), c.chain.as_str()))
}

/// The wished user chains that hold rules.
fn candidates(wishes: &Wishes) -> impl Iterator<Item = &ChainWish> {
    wishes.chains.iter().filter(|c| {
        !builtin_chains(&c.table).contains(&c.chain.as_str())
            && c.rules.as_ref().is_some_and(|r| !r.is_empty())
    })
}

/// The rules of one family and table that may jump: the wished ones and
/// the kernel's, less pyfw's that the wishes withdraw.
struct Jumps<'a> {
    wishes: &'a Wishes,
    state: &'a State,
    family: Family,
    table: &'a str,
}

impl<'a> Jumps<'a> {
    fn new(wishes: &'a Wishes, state: &'a State, chain: &'a ChainWish) -> Jumps<'a> {
        Jumps {
            wishes,
            state,
            family: chain.family,
            table: &chain.table,
        }
    }

    /// Whether a rule outside `chain` jumps or goes to it.
    fn reach(&self, chain: &str) -> bool {
        let wished = self.wished_chains().any(|c| {
            c.chain != chain
                && c.rules.iter().flatten().any(|item| match item {
                    RuleItem::Named(r) => target(&r.rule) == Some(chain),
                    RuleItem::Match(_) => false,
                })
        });
        wished || self.in_kernel(chain)
    }

    fn wished_chains(&self) -> impl Iterator<Item = &'a ChainWish> {
        let (family, table) = (self.family, self.table);
        (self.wishes.chains.iter()).filter(move |c| c.family == family && c.table == table)
    }

    fn in_kernel(&self, chain: &str) -> bool {
        let Some(table) = self.state.ruleset(self.family).tables.get(self.table) else {
            return false;
        };
        let mut withdrawn = None;
        table.chains.iter().any(|(name, c)| {
            name != chain
                && c.rules.iter().any(|r| {
                    if target(r) != Some(chain) {
                        return false;
                    }
                    let gone = withdrawn.get_or_insert_with(|| self.withdrawn());
                    !r.comment()
                        .is_some_and(|n| gone.contains(&(name.clone(), n.to_string())))
                })
        })
    }

    /// pyfw's rules in this table that the wishes no longer hold, by chain
    /// and name: the plan removes them.
    fn withdrawn(&self) -> HashSet<(String, String)> {
        let wished: HashSet<(&str, &str)> = self
            .wished_chains()
            .filter(|c| c.rules.is_some())
            .flat_map(|c| c.rule_names().map(|n| (c.chain.as_str(), n)))
            .collect();
        let mut out = HashSet::new();
        for owned in ownership::read(self.state) {
            if let Owned::Rule {
                family,
                table,
                chain,
                name,
                ..
            } = owned
                && family == self.family
                && table == self.table
                && !wished.contains(&(chain.as_str(), name.as_str()))
            {
                out.insert((chain, name));
            }
        }
        out
    }
}

/// The chain a rule jumps or goes to: the word after the first `-j`,
/// `--jump`, `-g` or `--goto` that is not a comment's value.
fn target(rule: &Rule) -> Option<&str> {
    let mut tokens = rule.tokens();
    while let Some(t) = tokens.next() {
        match t {
            "--comment" => {
                tokens.next();
            }
            "-j" | "--jump" | "-g" | "--goto" => return tokens.next(),
            _ => {}
        }
    }
    None
}

/// Tables in the order a packet meets them at a hook (by priority): how a
/// built-in chain's tables are listed.
const HOOK_ORDER: &[&str] = &["raw", "mangle", "nat", "filter", "security"];

fn unreached_message(wishes: &Wishes, state: &State, chain: &ChainWish) -> String {
    let name = &chain.chain;
    let table = &chain.table;
    let none =
        format!("no rule in {table}, wished or in the kernel, has `-j {name}` or `-g {name}`");
    let elsewhere: Vec<&str> = (HOOK_ORDER.iter().copied())
        .filter(|t| TABLES.contains(t) && builtin_chains(t).contains(&name.as_str()))
        .collect();
    if !elsewhere.is_empty() {
        return format!(
            "{table} has no built-in {name} ({name} is in {}), so this is a user chain, and \
             nothing jumps to it ({none}): its rules never see a packet",
            and_list(&elsewhere)
        );
    }
    let mut message =
        format!("nothing jumps to this chain ({none}), so its rules never see a packet");
    if let Some(near) = near_name(wishes, state, chain) {
        message.push_str(&format!("; did you mean {near}?"));
    }
    message
}

/// `a`, `a and b`, `a, b and c`.
fn and_list(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => one.to_string(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// The chain of the same table `chain` was likely meant to be: one that
/// differs only in case or in `_` for `-`, else the closest by a small
/// edit distance, among the table's built-in chains, its chains in the
/// kernel and the wished ones.
fn near_name(wishes: &Wishes, state: &State, chain: &ChainWish) -> Option<String> {
    let mut names: Vec<&str> = builtin_chains(&chain.table).to_vec();
    if let Some(t) = state.ruleset(chain.family).tables.get(&chain.table) {
        names.extend(t.chains.iter().map(|(n, _)| n.as_str()));
    }
    names.extend(
        (wishes.chains.iter())
            .filter(|c| c.family == chain.family && c.table == chain.table)
            .map(|c| c.chain.as_str()),
    );
    let fold = |s: &str| s.to_ascii_uppercase().replace('_', "-");
    let me = fold(&chain.chain);
    let mut best: Option<(usize, &str)> = None;
    for name in names {
        if name == chain.chain {
            continue;
        }
        let d = edit_distance(&me, &fold(name));
        // At most one edit in three characters, two at most: a near
        // name, not merely another short one.
        let near = d == 0 || (d <= 2 && d * 3 <= me.len().min(name.len()));
        if near && best.is_none_or(|(bd, bn)| (d, name) < (bd, bn)) {
            best = Some((d, name));
        }
    }
    best.map(|(_, n)| n.to_string())
}

/// Levenshtein distance between two ASCII words.
fn edit_distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.bytes().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let up = row[j + 1];
            row[j + 1] = (diag + usize::from(ca != *cb)).min(up + 1).min(row[j] + 1);
            diag = up;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn wishes(text: &str) -> Wishes {
        crate::wishes::parse(text, Path::new("w.yaml")).unwrap()
    }

    fn host(save: &str) -> State {
        State {
            v4: crate::state::parse_iptables_save(save).unwrap(),
            ..State::default()
        }
    }

    #[test]
    fn near_names_fold_case_and_dashes_or_differ_by_an_edit_or_two() {
        assert_eq!(edit_distance("DOCKER-USER", "DOCKER-USER"), 0);
        assert_eq!(edit_distance("DOCKR", "DOCKER"), 1);
        assert_eq!(edit_distance("ab", "ba"), 2);
        let w = wishes(
            "pyfw_wishes:\n  iptables:\n    filter:\n      INPUTT:\n        rules:\n        - a: -j ACCEPT\n      \
             f2b_ssh:\n        rules:\n        - b: -j ACCEPT\n      LONE:\n        rules:\n        - c: -j ACCEPT\n",
        );
        let state =
            host("*filter\n:INPUT ACCEPT [0:0]\n:f2b-sshd - [0:0]\n:MINE - [0:0]\nCOMMIT\n");
        let got: Vec<String> = unreached(&w, &state)
            .into_iter()
            .map(|u| format!("{}: {}", u.warning.label, u.warning.message))
            .collect();
        assert!(got[0].ends_with("did you mean INPUT?"), "{got:?}");
        assert!(got[1].ends_with("did you mean f2b-sshd?"), "{got:?}");
        assert!(got[2].ends_with("never see a packet"), "{got:?}");
        assert_eq!(got.len(), 3);
    }

    #[test]
    fn a_jump_pyfw_withdraws_reaches_nothing() {
        let w = wishes(
            "pyfw_wishes:\n  iptables:\n    filter:\n      INPUT:\n        rules: []\n      MINE:\n        rules:\n        - a: -j ACCEPT\n",
        );
        let mut state = host(
            "*filter\n:INPUT ACCEPT [0:0]\n:MINE - [0:0]\n-A INPUT -m comment --comment to_mine -j MINE\nCOMMIT\n",
        );
        assert!(unreached(&w, &state).is_empty());
        let owned = Owned::rule(
            Family::V4,
            "filter",
            "INPUT",
            "to_mine",
            &Rule::parse("-m comment --comment to_mine -j MINE").unwrap(),
        );
        let record = crate::state::Ipset {
            kind: "hash:ip".into(),
            options: Vec::new(),
            members: [owned.element()].into_iter().collect(),
            comments: [(owned.element(), owned.key())].into(),
        };
        state
            .ipsets
            .insert(crate::state::ownership::RECORD_SET.into(), record);
        let got = unreached(&w, &state);
        assert_eq!(got.len(), 1);
        assert_eq!(
            (got[0].family, got[0].table.as_str()),
            (Family::V4, "filter")
        );
    }

    #[test]
    fn a_comment_that_looks_like_a_jump_is_no_jump() {
        let r = Rule::parse("-m comment --comment -j -j ACCEPT").unwrap();
        assert_eq!(target(&r), Some("ACCEPT"));
    }
}
