//! One chain's plan: the desired order, the rules that stay (a longest
//! increasing subsequence), and the moves that never leave a gap.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet, VecDeque};

use fnv::FnvHashMap;

use crate::plan::command::{Command, Program, ipt_args};
use crate::state::Family;
use crate::state::ownership;
use crate::state::rule::Rule;
use crate::wishes::{ChainWish, MatchRule, NamedRule, RuleItem};

/// Set elements, hashed a word at a time: a 100,000-member set is hashed
/// twice per plan.
pub(crate) type TextSet<'a> = HashSet<&'a str, crate::state::rule::TextHash>;

/// The withdrawn rules of one chain, as pyfw's record names them (name and
/// text hash), in sets: a chain of 50,000 rules is checked against a
/// record of thousands without a scan per rule.
struct Withdrawn<'a> {
    pub(crate) names: TextSet<'a>,
    pub(crate) pairs: HashSet<(&'a str, &'a str), crate::state::rule::TextHash>,
}

impl<'a> Withdrawn<'a> {
    pub(crate) fn new(gone: &'a [(String, String)]) -> Withdrawn<'a> {
        Withdrawn {
            names: gone.iter().map(|(n, _)| n.as_str()).collect(),
            pairs: gone.iter().map(|(n, h)| (n.as_str(), h.as_str())).collect(),
        }
    }

    /// True for a rule pyfw put there and the wishes (named `wished`) no
    /// longer hold.
    pub(crate) fn holds(&self, rule: &Rule, wished: &TextSet) -> bool {
        if self.names.is_empty() {
            return false;
        }
        let Some(name) = rule.comment() else {
            return false;
        };
        // Most rules carry no withdrawn name: settle those without hashing.
        if !self.names.contains(name) || wished.contains(name) {
            return false;
        }
        let hash = ownership::text_hash(rule);
        self.pairs.contains(&(name, hash.as_str()))
    }
}

/// One slot of the simulated chain.
#[derive(Clone, Debug)]
pub(crate) struct Slot {
    pub(crate) id: usize,
    /// `rule.key()`, here so that scanning slots for a text reads no rule.
    pub(crate) key: u64,
    pub(crate) rule: Rule,
}

impl Slot {
    pub(crate) fn new(id: usize, rule: Rule) -> Slot {
        Slot {
            id,
            key: rule.key(),
            rule,
        }
    }
}

/// What the final chain should hold at one position.
struct Target<'a> {
    /// Borrowed: a long chain's rules are not cloned to be planned.
    /// As the kernel prints it: what the chain's rules are compared with.
    pub(crate) rule: &'a Rule,
    /// What is installed where it goes in or moves: what the wish says
    /// (iptables' printed form may lose part of a rule), or the rule as
    /// read for one a `~match` takes.
    pub(crate) install: &'a Rule,
    /// The current rule that already is this element, by slot id.
    pub(crate) source: Option<usize>,
    /// The wished name, for wished rules.
    pub(crate) name: Option<&'a str>,
    /// An existing rule with this wish's name but other text, replaced here.
    pub(crate) replaces: Option<usize>,
}

/// Plans the rule commands for one chain: the order the wishes want
/// ([`desired_order`]), then the moves, inserts and replacements that get
/// there without a gap ([`emit_moves`]), then what is left over (duplicates
/// of wished rules, withdrawn ones) removed.
pub(crate) fn plan_chain(
    wish: &ChainWish,
    current: &[Rule],
    withdrawn: &[(String, String)],
) -> (Vec<Command>, Vec<Rule>) {
    let mut sim = ChainSim::new(wish.family, &wish.table, &wish.chain, current);
    // From here on the chain holds no temporary copies; where there were
    // some, number it afresh (else it is numbered as read already).
    let current: Cow<[Rule]> = if sim.recover_temps() {
        for (id, slot) in sim.slots.iter_mut().enumerate() {
            slot.id = id;
        }
        Cow::Owned(sim.slots.iter().map(|s| s.rule.clone()).collect())
    } else {
        Cow::Borrowed(current)
    };
    sim.next_id = current.len();
    let wished_names: TextSet = wish.rule_names().collect();
    let gone = Withdrawn::new(withdrawn);
    let order = desired_order(wish, &current, &wished_names, &gone);
    let kept = emit_moves(&mut sim, &order, &wish.label(), current.len());
    remove_leftovers(&mut sim, &kept, &wished_names, &gone, &wish.label());
    let result = sim.slots.into_iter().map(|s| s.rule).collect();
    (sim.out, result)
}

/// The chain as the wishes want it: the wished rules in order, each
/// `~match` group where it stands, then every other rule in its current
/// order (from `fixed` on: those stay where they are).
struct Order<'a> {
    targets: Vec<Target<'a>>,
    fixed: usize,
}

/// Which rule of the chain is which: a wished rule's current copies by
/// name, the rules no wish names (withdrawn ones left out: they go).
fn desired_order<'a>(
    wish: &'a ChainWish,
    current: &'a [Rule],
    wished_names: &TextSet,
    gone: &Withdrawn,
) -> Order<'a> {
    let mut by_name: HashMap<&str, Vec<usize>, crate::state::rule::TextHash> = HashMap::default();
    let mut foreign: Vec<usize> = Vec::new();
    for (i, r) in current.iter().enumerate() {
        match r.comment() {
            Some(c) if wished_names.contains(c) => by_name.entry(c).or_default().push(i),
            _ if gone.holds(r, wished_names) => {}
            _ => foreign.push(i),
        }
    }
    let mut taken = vec![false; current.len()];
    let mut targets: Vec<Target> = Vec::with_capacity(current.len() + wished_names.len());
    for item in wish.rules.iter().flatten() {
        match item {
            RuleItem::Named(named) => {
                let found = by_name
                    .get(named.name.as_str())
                    .map_or(&[][..], Vec::as_slice);
                targets.push(wished_target(named, found, current));
            }
            RuleItem::Match(m) => take_matched(m, &foreign, current, &mut taken, &mut targets),
        }
    }
    let fixed = targets.len();
    let rest = foreign.iter().filter(|&&i| !taken[i]);
    targets.extend(rest.map(|&i| Target::foreign(&current[i], i)));
    Order { targets, fixed }
}

/// A wished rule's place: its current copy of the same text (`found` are
/// the current rules with its name), else a new one replacing the first.
fn wished_target<'a>(named: &'a NamedRule, found: &[usize], current: &[Rule]) -> Target<'a> {
    let exact = found
        .iter()
        .copied()
        .find(|&i| current[i] == *named.compare());
    let (source, replaces) = match exact {
        Some(i) => (Some(i), None),
        None => (None, found.first().copied()),
    };
    Target {
        rule: named.compare(),
        install: &named.rule,
        source,
        name: Some(named.name.as_str()),
        replaces,
    }
}

/// The rules no wish names and no earlier `~match` took whose text
/// matches `m`, in their order. A rule kept as text is never moved: pyfw
/// could not hand it back to iptables as it was.
fn take_matched<'a>(
    m: &MatchRule,
    foreign: &[usize],
    current: &'a [Rule],
    taken: &mut [bool],
    targets: &mut Vec<Target<'a>>,
) {
    // One buffer for the text each `~match` reads, so matching a long
    // chain allocates nothing per rule.
    let mut shown = String::new();
    for &i in foreign {
        if taken[i] || current[i].is_opaque() {
            continue;
        }
        shown.clear();
        current[i].display_into(&mut shown);
        if m.regex.is_match(&shown) {
            taken[i] = true;
            targets.push(Target::foreign(&current[i], i));
        }
    }
}

impl<'a> Target<'a> {
    /// A rule as it is, at its place in the chain.
    fn foreign(rule: &'a Rule, at: usize) -> Target<'a> {
        Target {
            rule,
            install: rule,
            source: Some(at),
            name: None,
            replaces: None,
        }
    }
}

/// What of the chain as read the order keeps, by slot id: a target's
/// source, or a rule a wished one replaces.
struct Kept {
    in_target: Vec<bool>,
    replaced: Vec<bool>,
}

/// Runs the chain into the order: rules already in order stay, others
/// move up (the temp-rule trick: never missing) or go in, replacing an old
/// text after the new one is in.
fn emit_moves(sim: &mut ChainSim, order: &Order, label: &str, read: usize) -> Kept {
    let targets = &order.targets;
    let stable = stays(
        &targets.iter().map(|t| t.source).collect::<Vec<_>>(),
        order.fixed,
    );
    // Flags by slot id: every id that is not below `read` is a rule this
    // plan inserts, which is in none of these.
    let mut kept = Kept {
        in_target: vec![false; read],
        replaced: vec![false; read],
    };
    for t in targets {
        if let Some(src) = t.source {
            kept.in_target[src] = true;
        }
        if let Some(old) = t.replaces {
            kept.replaced[old] = true;
        }
    }
    let flag = |flags: &[bool], id: usize| flags.get(id).copied().unwrap_or(false);
    let mut placed: Vec<usize> = Vec::with_capacity(targets.len());
    // Slots that will still move or go: they may sit anywhere meanwhile.
    let mut pending: Vec<bool> = kept.in_target.iter().map(|t| !t).collect();
    for (p, t) in targets.iter().enumerate() {
        if let Some(src) = t.source.filter(|_| !stable[p]) {
            pending[src] = true;
        }
    }
    for (p, t) in targets.iter().enumerate() {
        if let Some(src) = t.source.filter(|_| stable[p]) {
            // Already in order: no lookup, so a long chain costs O(n).
            placed.push(src);
            continue;
        }
        let at = placed.last().map_or(0, |&id| sim.pos(id) + 1);
        let what = t
            .name
            .map_or_else(|| "a rule matched by ~match".to_string(), String::from);
        let Some(src) = t.source else {
            placed.push(insert_new(sim, t, at, label, &what, &mut pending));
            continue;
        };
        pending[src] = false;
        let now = sim.pos(src);
        let in_place = now >= at && sim.slots.range(at..now).all(|s| flag(&pending, s.id));
        if !in_place {
            let reason = format!(
                "{label}: {what} is at position {}, wished {}",
                now + 1,
                at + 1
            );
            let install = (t.install != t.rule).then(|| t.install.clone());
            sim.move_rule(src, at, install, t.name, &reason);
        }
        placed.push(src);
    }
    kept
}

/// A wished rule that is missing, or replaces an old text of its name:
/// the new one goes in first, then the old one goes. Its slot id.
fn insert_new(
    sim: &mut ChainSim,
    t: &Target,
    at: usize,
    label: &str,
    what: &str,
    pending: &mut [bool],
) -> usize {
    let reason = match t.replaces {
        Some(old) => format!(
            "{label}: {what} differs: is `{}`, wished `{}`",
            sim.rule(old),
            t.rule
        ),
        None => format!("{label}: {what} missing"),
    };
    let id = sim.insert(at, t.install.clone(), t.name, &reason);
    if let Some(old) = t.replaces {
        sim.delete(
            old,
            t.name,
            &format!("{label}: {what}: remove the old text"),
        );
        pending[old] = false;
    }
    id
}

/// What is left over: duplicates of wished rules, and withdrawn ones.
fn remove_leftovers(
    sim: &mut ChainSim,
    kept: &Kept,
    wished_names: &TextSet,
    gone: &Withdrawn,
    label: &str,
) {
    let read = kept.in_target.len();
    let leftovers: Vec<usize> = sim
        .slots
        .iter()
        .map(|s| s.id)
        .filter(|&id| id < read && !kept.in_target[id] && !kept.replaced[id])
        .collect();
    for id in leftovers {
        let rule = sim.rule(id).clone();
        let name = rule.comment().unwrap_or("");
        let reason = if gone.holds(&rule, wished_names) {
            format!("{label}: {name} was withdrawn from the wishes; pyfw put it there")
        } else {
            format!("{label}: duplicate of wished rule {name}")
        };
        sim.delete(id, rule.comment(), &reason);
    }
}

/// For each target, whether it stays where it is. The targets from `fixed`
/// on are other programs' rules that no `~match` takes: every one of them
/// stays, so that its packet counters and its nf_tables handle survive the
/// plan; a wished rule or a `~match`'d rule below the first of them moves
/// up instead. Of the rest, those above it that are already in order (one
/// longest run of increasing sources) stay too.
fn stays(sources: &[Option<usize>], fixed: usize) -> Vec<bool> {
    // The fixed rules are in their current order, so the first is the
    // topmost.
    let below = sources[fixed..]
        .iter()
        .flatten()
        .copied()
        .min()
        .unwrap_or(usize::MAX);
    let movable: Vec<Option<usize>> = sources[..fixed]
        .iter()
        .map(|s| s.filter(|&s| s < below))
        .collect();
    let mut stable = longest_increasing(&movable);
    stable.resize(sources.len(), true);
    stable
}

/// For each element, whether it belongs to one longest subsequence whose
/// sources increase (the rules that can stay where they are).
pub(crate) fn longest_increasing(sources: &[Option<usize>]) -> Vec<bool> {
    // Patience sorting: tails[k] is the index of the smallest tail of an
    // increasing run of length k + 1.
    let mut tails: Vec<usize> = Vec::new();
    let mut prev: Vec<Option<usize>> = vec![None; sources.len()];
    for (i, s) in sources.iter().enumerate() {
        let Some(s) = *s else { continue };
        // Chains are mostly in order already: extending the longest run
        // needs no search.
        let extends = tails
            .last()
            .is_none_or(|&t| sources[t].is_some_and(|v| v < s));
        let k = if extends {
            tails.len()
        } else {
            tails.partition_point(|&t| sources[t].is_some_and(|v| v < s))
        };
        prev[i] = k.checked_sub(1).map(|k| tails[k]);
        if k == tails.len() {
            tails.push(i);
        } else {
            tails[k] = i;
        }
    }
    let mut stable = vec![false; sources.len()];
    let mut cur = tails.last().copied();
    while let Some(i) = cur {
        stable[i] = true;
        cur = prev[i];
    }
    stable
}

/// A chain being edited, command by command, so that every position the
/// plan names is the position the kernel will see at that step.
pub(crate) struct ChainSim {
    /// A deque: the plan inserts near the top and takes from anywhere, so
    /// each edit shifts only the shorter side of a long chain.
    pub(crate) slots: VecDeque<Slot>,
    /// How many copies of each rule text the chain holds, so that telling
    /// whether deleting by text hits the intended copy needs no scan in
    /// the usual case of one copy. Counted only once an edit lands deeper
    /// than [`ChainSim::SHALLOW`]: most plans edit near the top, where
    /// looking above is cheaper than counting a 50,000-rule chain.
    /// Keyed by [`Rule::key`]: two texts sharing a key count together,
    /// which only ever sends a question to the scan.
    pub(crate) copies: Option<FnvHashMap<u64, usize>>,
    pub(crate) next_id: usize,
    pub(crate) family: Family,
    pub(crate) table: String,
    pub(crate) chain: String,
    pub(crate) label: String,
    pub(crate) out: Vec<Command>,
}

impl ChainSim {
    /// How deep an edit may land before the copies are counted.
    const SHALLOW: usize = 256;

    pub(crate) fn new(family: Family, table: &str, chain: &str, rules: &[Rule]) -> ChainSim {
        ChainSim {
            copies: None,
            slots: rules
                .iter()
                .enumerate()
                .map(|(id, rule)| Slot::new(id, rule.clone()))
                .collect(),
            next_id: rules.len(),
            family,
            table: table.to_string(),
            chain: chain.to_string(),
            label: crate::wishes::chain_label(family, table, chain),
            out: Vec::new(),
        }
    }

    /// Where slot `id` is, searching from both ends at once: the plan's
    /// slots of interest sit near the top (placed rules) or anywhere
    /// (rules to move), so this costs the distance to the nearer end.
    pub(crate) fn pos(&self, id: usize) -> usize {
        let n = self.slots.len();
        for k in 0..n.div_ceil(2) {
            if self.slots[k].id == id {
                return k;
            }
            if self.slots[n - 1 - k].id == id {
                return n - 1 - k;
            }
        }
        n
    }

    /// True when the first rule with this slot's text is this slot.
    pub(crate) fn first_of_its_text(&mut self, at: usize) -> bool {
        if at >= Self::SHALLOW && self.copies.is_none() {
            let mut copies: FnvHashMap<u64, usize> = FnvHashMap::default();
            copies.reserve(self.slots.len());
            for s in &self.slots {
                *copies.entry(s.key).or_default() += 1;
            }
            self.copies = Some(copies);
        }
        let Slot { key, rule, .. } = &self.slots[at];
        let single = self
            .copies
            .as_ref()
            .is_some_and(|c| c.get(key).copied().unwrap_or(0) <= 1);
        single
            || !self
                .slots
                .range(..at)
                .any(|s| s.key == *key && s.rule == *rule)
    }

    /// Counts one more (`true`) or one fewer copy of `rule`, once counted.
    pub(crate) fn count(&mut self, rule: &Rule, more: bool) {
        let Some(copies) = self.copies.as_mut() else {
            return;
        };
        if more {
            *copies.entry(rule.key()).or_default() += 1;
        } else if let Some(n) = copies.get_mut(&rule.key()) {
            *n = n.saturating_sub(1);
        }
    }

    pub(crate) fn rule(&self, id: usize) -> &Rule {
        &self.slots[self.pos(id)].rule
    }

    pub(crate) fn args(&self, op: &str, extra: Option<usize>, rule: Option<&Rule>) -> Vec<String> {
        let mut a = ipt_args(&self.table, [op, self.chain.as_str()]);
        if let Some(n) = extra {
            a.push(n.to_string());
        }
        if let Some(r) = rule {
            a.extend(r.args().iter().cloned());
        }
        a
    }

    pub(crate) fn emit(
        &mut self,
        args: Vec<String>,
        undo: Vec<String>,
        wish: Option<&str>,
        reason: &str,
    ) {
        self.out.push(Command {
            program: Program::Iptables(self.family),
            args,
            undo: Some(undo),
            reason: reason.to_string(),
            target: self.label.clone(),
            wish: wish.map(String::from),
            members: Default::default(),
        });
    }

    /// Inserts `rule` at 0-based `at`; returns the new slot's id.
    pub(crate) fn insert(
        &mut self,
        at: usize,
        rule: Rule,
        wish: Option<&str>,
        reason: &str,
    ) -> usize {
        let args = self.args("-I", Some(at + 1), Some(&rule));
        // Undoing deletes by text unless an identical rule sits above.
        let id = self.next_id;
        self.next_id += 1;
        self.count(&rule, true);
        self.slots.insert(at, Slot::new(id, rule));
        let undo = if self.first_of_its_text(at) {
            self.args("-D", None, Some(&self.slots[at].rule))
        } else {
            self.args("-D", Some(at + 1), None)
        };
        self.emit(args, undo, wish, reason);
        id
    }

    /// Deletes a slot: by rule text when that text first matches this very
    /// slot (robust against other writers), else by its number.
    pub(crate) fn delete(&mut self, id: usize, wish: Option<&str>, reason: &str) {
        let at = self.pos(id);
        let rule = self.slots[at].rule.clone();
        let args = if self.first_of_its_text(at) {
            self.args("-D", None, Some(&rule))
        } else {
            self.args("-D", Some(at + 1), None)
        };
        let undo = self.args("-I", Some(at + 1), Some(&rule));
        self.emit(args, undo, wish, reason);
        self.slots.remove(at);
        self.count(&rule, false);
    }

    /// Moves slot `id` to 0-based position `at` (counted before the move)
    /// without the rule ever being absent.
    /// Moves rule `id` to `at` without a gap, putting it in again as
    /// `install` (what the wish says) when given, else as it reads.
    pub(crate) fn move_rule(
        &mut self,
        id: usize,
        at: usize,
        install: Option<Rule>,
        wish: Option<&str>,
        reason: &str,
    ) {
        let from = self.pos(id);
        let rule = install.unwrap_or_else(|| self.slots[from].rule.clone());
        if at > from {
            // Moving down: the new copy lands after the old one, so deleting
            // by text removes the old one.
            let new_id = self.insert(at, rule, wish, reason);
            self.delete(id, wish, reason);
            self.rename(new_id, id);
            return;
        }
        let temp = rule.temp_copy(wish);
        let temp_id = self.insert(at, temp, wish, reason);
        self.delete(id, wish, reason);
        let temp_at = self.pos(temp_id);
        let new_id = self.insert(temp_at, rule, wish, reason);
        self.delete(temp_id, wish, reason);
        self.rename(new_id, id);
    }

    /// Removes temporary copies left by an interrupted move. Where the copy
    /// is all that is left of a rule, the rule is put back in its place
    /// first, so that nothing is ever missing.
    /// True when there were any.
    pub(crate) fn recover_temps(&mut self) -> bool {
        let temps: Vec<usize> = self
            .slots
            .iter()
            .filter(|s| s.rule.is_temp())
            .map(|s| s.id)
            .collect();
        let any = !temps.is_empty();
        for id in temps {
            let Some(base) = self.rule(id).temp_base() else {
                continue;
            };
            let wish = base.comment().map(String::from);
            if !self.slots.iter().any(|s| s.rule == base) {
                let at = self.pos(id);
                let reason = format!("{}: restore a rule from an interrupted move", self.label);
                self.insert(at, base, wish.as_deref(), &reason);
            }
            let reason = format!(
                "{}: leftover temporary rule from an interrupted move",
                self.label
            );
            self.delete(id, wish.as_deref(), &reason);
        }
        any
    }

    pub(crate) fn rename(&mut self, from: usize, to: usize) {
        if let Some(s) = self.slots.iter_mut().find(|s| s.id == from) {
            s.id = to;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(crate) fn lis_keeps_the_longest_run() {
        let s = longest_increasing(&[Some(5), Some(0), Some(1), None, Some(2), Some(3)]);
        assert_eq!(s, vec![false, true, true, false, true, true]);
        assert_eq!(longest_increasing(&[]), Vec::<bool>::new());
    }

    #[test]
    fn other_programs_rules_always_stay() {
        // Wished rules at 1, 2, 3 below another program's rule at 0: all
        // three move rather than the one foreign rule.
        let s = stays(&[Some(1), Some(2), Some(3), Some(0)], 3);
        assert_eq!(s, vec![false, false, false, true]);
        // Above the first fixed rule, the longest run in order stays.
        let s = stays(&[Some(0), Some(1), None, Some(4), Some(2), Some(3)], 4);
        assert_eq!(s, vec![true, true, false, false, true, true]);
        assert_eq!(stays(&[Some(0), Some(1)], 2), vec![true, true]);
    }

    fn wish(rules: &[(&str, &str)]) -> ChainWish {
        ChainWish {
            family: Family::V4,
            table: "filter".into(),
            chain: "FORWARD".into(),
            policy: None,
            rules: Some(
                rules
                    .iter()
                    .map(|(name, text)| {
                        RuleItem::Named(crate::wishes::NamedRule {
                            name: name.to_string(),
                            rule: Rule::parse(text).unwrap(),
                            printed: None,
                            line: 1,
                        })
                    })
                    .collect(),
            ),
            line: 1,
        }
    }

    #[test]
    fn dockers_insert_on_top_moves_pyfws_rules_not_dockers() {
        let w = [
            ("a", "-i wg0 -m comment --comment a -j ACCEPT"),
            ("b", "-i wg1 -m comment --comment b -j ACCEPT"),
            ("c", "-i wg2 -m comment --comment c -j ACCEPT"),
        ];
        let docker = Rule::parse("-j DOCKER-USER").unwrap();
        let mut current = vec![docker.clone()];
        // Docker's other rule sits below pyfw's and stays there too.
        current.extend(w.iter().map(|(_, t)| Rule::parse(t).unwrap()));
        current.push(Rule::parse("-o docker0 -j DOCKER").unwrap());
        let (commands, result) = plan_chain(&wish(&w), &current, &[]);
        let docker_text = docker.to_string();
        for c in &commands {
            assert!(
                !c.to_string().contains("DOCKER"),
                "Docker's rule touched: {c}"
            );
        }
        assert_eq!(commands.len(), 12, "three moves up, four commands each");
        let shown: Vec<String> = result.iter().map(Rule::to_string).collect();
        assert_eq!(shown[3], docker_text, "{shown:?}");
        assert_eq!(shown.len(), 5);
    }
}
