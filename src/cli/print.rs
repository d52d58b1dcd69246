//! "State changes": what an apply changed in the chains and sets it
//! touched.

use std::collections::BTreeMap;

use crate::kernel::SetSummary;
use crate::plan::Plan;
use crate::state::{self, State};

/// Prints how the chains and sets the plan touched changed, `-`/`+` per
/// line in `iptables-save` and `ipset save` form: `before` holds them as
/// they were, `after` as read back. Chains are compared line by line (order
/// matters); a set's members by value, since a set has no order: a
/// 100,000-member set with 1,000 changes costs two hash lookups per member,
/// where a line diff of its whole listing took a fifth of a second. Every
/// changed line is printed, however many.
///
/// A set whose members the plan changed more than [`LIST_MAX`] times is
/// summarised instead: its `create` line if that changed, then its member
/// count before (the snapshot) and after (read from the kernel with `ipset
/// list -terse`), with how many members the plan added and removed.
/// Listing 100,000 new members one by one again, after their 100,000
/// `Executing` lines, told the operator nothing more and cost a read and
/// parse of the whole set.
pub fn print_changes(
    out: &mut impl std::io::Write,
    before: &crate::plan::revert::Snapshot,
    after: &State,
    big: &BTreeMap<String, (usize, usize)>,
    terse: &BTreeMap<String, Option<SetSummary>>,
) {
    let _ = writeln!(out, "State changes:");
    for ((family, table, chain), old) in &before.chains {
        let new = after.ruleset(*family).chain(table, chain);
        let render = |c: Option<&state::Chain>| {
            let mut text = String::new();
            if let Some(c) = c {
                let policy = c.policy.as_deref().unwrap_or("-");
                text.push_str(&format!(":{chain} {policy}\n"));
                let name = crate::state::rule::display_args(std::slice::from_ref(chain));
                for rule in &c.rules {
                    text.push_str(&format!("-A {name} {rule}\n"));
                }
            }
            text
        };
        let (old, new) = (render(old.as_ref()), render(new.as_deref()));
        if old == new {
            continue;
        }
        let diff = similar::TextDiff::from_lines(&old, &new);
        for change in diff.iter_all_changes() {
            let sign = match change.tag() {
                similar::ChangeTag::Delete => "-",
                similar::ChangeTag::Insert => "+",
                similar::ChangeTag::Equal => continue,
            };
            let _ = write!(out, "{sign} {change}");
        }
    }
    for (name, old) in &before.sets {
        match (big.get(name), terse.get(name)) {
            (Some(&(added, removed)), Some(now)) => {
                print_set_summary(out, name, old.as_ref(), now.as_ref(), added, removed)
            }
            _ => print_set_changes(out, name, old.as_ref(), after.ipsets.get(name)),
        }
    }
}

/// More member changes than this in one set are summarised in "State
/// changes" rather than listed (as many as make a run of commands).
const LIST_MAX: usize = crate::plan::RUN_OVER;

/// The sets whose members `plan` changes more than [`LIST_MAX`] times,
/// with how many members it adds and removes.
pub fn big_set_changes(plan: &Plan) -> BTreeMap<String, (usize, usize)> {
    let mut counts: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for c in &plan.commands {
        if c.program != crate::plan::Program::Ipset {
            continue;
        }
        // Counted for the wished set, also when the commands fill its
        // replacement (`_pyfw_temp_NAME`) before a swap.
        let (Some(op), Some(name)) = (c.args.first(), c.wish.as_ref().or(c.args.get(1))) else {
            continue;
        };
        let (added, removed) = match op.as_str() {
            "add" => (c.count(), 0),
            "del" => (0, c.count()),
            _ => continue,
        };
        // The name is copied once per set, not per member.
        let count = match counts.get_mut(name.as_str()) {
            Some(count) => count,
            None => counts.entry(name.clone()).or_default(),
        };
        count.0 += added;
        count.1 += removed;
    }
    counts.retain(|_, (a, r)| *a + *r > LIST_MAX);
    counts
}

/// One set's changes, summarised: see [`print_changes`].
fn print_set_summary(
    out: &mut impl std::io::Write,
    name: &str,
    old: Option<&state::Ipset>,
    now: Option<&SetSummary>,
    added: usize,
    removed: usize,
) {
    let create = |kind: &str, options: &[String]| {
        let mut line = format!("create {name} {kind}");
        for o in options {
            line.push(' ');
            line.push_str(o);
        }
        line
    };
    let old_create = old.map(|s| create(&s.kind, &s.options));
    let new_create = now.map(|s| create(&s.kind, &s.options));
    if old_create != new_create {
        if let Some(line) = &old_create {
            let _ = writeln!(out, "- {line}");
        }
        if let Some(line) = &new_create {
            let _ = writeln!(out, "+ {line}");
        }
    }
    let count = |n: Option<usize>| match n {
        Some(n) => format!("{n} members"),
        None => "no set".to_string(),
    };
    let _ = writeln!(
        out,
        "# ipset {name}: {} before, {} now; pyfw added {added} and removed {removed} \
         (over {LIST_MAX} changes: not listed; `ipset save {name}` lists them)",
        count(old.map(|s| s.members.len())),
        count(now.map(|s| s.members)),
    );
}

/// One set's changes: its `create` line if it differs, then the members
/// that went (in the order they were listed), then those that came.
fn print_set_changes(
    out: &mut impl std::io::Write,
    name: &str,
    old: Option<&state::Ipset>,
    new: Option<&state::Ipset>,
) {
    let create = |set: &state::Ipset| {
        let mut line = format!("create {name} {}", set.kind);
        for o in &set.options {
            line.push(' ');
            line.push_str(o);
        }
        line
    };
    let (old_create, new_create) = (old.map(create), new.map(create));
    if old_create != new_create {
        if let Some(line) = &old_create {
            let _ = writeln!(out, "- {line}");
        }
        if let Some(line) = &new_create {
            let _ = writeln!(out, "+ {line}");
        }
    }
    fn members(set: Option<&state::Ipset>) -> fnv::FnvHashMap<&str, Option<&str>> {
        set.map(|s| {
            s.members
                .iter()
                .map(|m| (m, s.comments.get(m).map(String::as_str)))
                .collect()
        })
        .unwrap_or_default()
    }
    let (was, is) = (members(old), members(new));
    let mut line = |sign: &str, member: &str, comment: Option<&str>| {
        let _ = write!(out, "{sign} add {name} {member}");
        if let Some(c) = comment {
            let _ = write!(
                out,
                " comment {}",
                crate::state::rule::display_args(&[c.to_string()])
            );
        }
        let _ = writeln!(out);
    };
    for m in old.iter().flat_map(|s| s.members.iter()) {
        let comment = was.get(m).copied().flatten();
        if is.get(m) != Some(&comment) {
            line("-", m, comment);
        }
    }
    for m in new.iter().flat_map(|s| s.members.iter()) {
        let comment = is.get(m).copied().flatten();
        if was.get(m) != Some(&comment) {
            line("+", m, comment);
        }
    }
}
