//! The wishes file: what the operator wants netfilter to look like.
//!
//! Loading happens in two stages. First serde reads the YAML into raw
//! structs that reject unknown keys and keep every value's line. Then
//! `validate` turns them into checked types, collecting every problem with
//! its file, line and wish (`table/chain/NAME`), so an operator can fix a
//! whole file in one pass. Nothing is read from or written to the kernel
//! until a file has passed both stages.

use std::fmt;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use regex::Regex;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

use crate::ipset::{SetFamily, SetType, valid_set_name};
use crate::rule::{Rule, TEMP_PREFIX};
use crate::state::{Family, TABLES, builtin_chains};

mod lift;

/// The key that makes a rules item a pattern over other programs' rules.
pub const MATCH_KEY: &str = "~match";

/// A validated wishes file.
#[derive(Clone, Debug)]
pub struct Wishes {
    pub path: PathBuf,
    /// Shared: a clone (the daemon keeps the last good wishes; a run maps
    /// the rules to canonical form) must not copy 100,000 members.
    pub ipsets: std::sync::Arc<[IpsetWish]>,
    pub chains: Vec<ChainWish>,
}

impl Wishes {
    /// The same wishes with each named rule's text replaced by `f`'s, for
    /// comparing in canonical form.
    pub fn map_rules(&self, mut f: impl FnMut(&ChainWish, &NamedRule) -> Rule) -> Wishes {
        let mut out = self.clone();
        for (chain, orig) in out.chains.iter_mut().zip(&self.chains) {
            for (item, orig_item) in chain
                .rules
                .iter_mut()
                .flatten()
                .zip(orig.rules.iter().flatten())
            {
                if let (RuleItem::Named(r), RuleItem::Named(o)) = (item, orig_item) {
                    r.rule = f(orig, o);
                }
            }
        }
        out
    }
}

/// An ipset with exact membership.
#[derive(Clone, Debug)]
pub struct IpsetWish {
    pub name: String,
    pub kind: SetType,
    pub family: SetFamily,
    /// Create options as written (`family inet6 maxelem 1048576`), split.
    pub header: Vec<String>,
    /// Members as `ipset save` prints them; `None` leaves membership alone.
    pub members: Option<Vec<String>>,
    pub line: u64,
}

/// What one chain should look like.
#[derive(Clone, Debug)]
pub struct ChainWish {
    pub family: Family,
    pub table: String,
    pub chain: String,
    pub policy: Option<String>,
    /// `None` when the wish only sets a policy: the rules are left alone.
    pub rules: Option<Vec<RuleItem>>,
    pub line: u64,
}

impl ChainWish {
    /// `filter/INPUT`, prefixed by `ip6tables:` for IPv6.
    pub fn label(&self) -> String {
        chain_label(self.family, &self.table, &self.chain)
    }

    /// Names of the wished rules, for telling them from other rules.
    pub fn rule_names(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().flatten().filter_map(|item| match item {
            RuleItem::Named(r) => Some(r.name.as_str()),
            RuleItem::Match(_) => None,
        })
    }
}

/// How a chain is named in messages.
pub fn chain_label(family: Family, table: &str, chain: &str) -> String {
    match family {
        Family::V4 => format!("{table}/{chain}"),
        Family::V6 => format!("ip6tables:{table}/{chain}"),
    }
}

/// One entry of a chain's `rules` list.
#[derive(Clone, Debug)]
pub enum RuleItem {
    Named(NamedRule),
    Match(MatchRule),
}

/// `NAME: RULE TEXT`. The rule always carries `--comment NAME`.
#[derive(Clone, Debug)]
pub struct NamedRule {
    pub name: String,
    pub rule: Rule,
    pub line: u64,
}

/// `~match: REGEX`, matched against a rule's `iptables-save` text.
#[derive(Clone, Debug)]
pub struct MatchRule {
    pub regex: Regex,
    pub line: u64,
}

/// One problem in a wishes file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WishError {
    pub path: PathBuf,
    /// 1-based; 0 when the problem is the file as a whole.
    pub line: u64,
    /// `table/chain/NAME` or `ipset NAME`, where there is one.
    pub wish: Option<String>,
    pub message: String,
}

impl fmt::Display for WishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        if let Some(wish) = &self.wish {
            write!(f, ": {wish}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in a wishes file, in file order.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct LoadError {
    pub errors: Vec<WishError>,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Reads and validates a wishes file.
pub fn load(path: &Path) -> Result<Wishes, LoadError> {
    let fail = |message: String| LoadError {
        errors: vec![WishError {
            path: path.to_path_buf(),
            line: 0,
            wish: None,
            message,
        }],
    };
    let text = crate::secure::read_wishes(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    let text = String::from_utf8(text).map_err(|_| fail("is not UTF-8 text".into()))?;
    parse(&text, path)
}

/// Validates wishes from text; `path` is used in messages only.
///
/// Set members are read without their lines first, as plain strings,
/// which saves a third of the parsing time of a 100,000-member set (the
/// line of every value costs more than the value). Only when something is
/// wrong is the file read again with every member's line, so that each
/// error still names its line.
///
/// Long runs of plain members (an allow-list) are lifted out of the first
/// pass's text and handed to its members as they are (see `lift`): a
/// fraction of what parsing them costs. A pass that leaves a run unclaimed
/// counts as failed.
pub fn parse(text: &str, path: &Path) -> Result<Wishes, LoadError> {
    parse_lifting(text, path, lift::MIN_RUN)
}

fn parse_lifting(text: &str, path: &Path, min_run: usize) -> Result<Wishes, LoadError> {
    let first = match lift::lift(text, min_run) {
        Some(lifted) => {
            let options = lifted_options(&lifted);
            lift::with_runs(lifted, |text| parse_with(text, path, false, options))
                .and_then(Result::ok)
        }
        None => parse_with(text, path, false, crate::secure::yaml_options()).ok(),
    };
    match first {
        Some(wishes) => Ok(wishes),
        None => parse_with(text, path, true, crate::secure::yaml_options()),
    }
}

/// The YAML budgets, less what `lifted` took out of the parser's sight, so
/// that a file is refused exactly when it would be unlifted (and the pass
/// with lines, which reads everything, then says why).
fn lifted_options(lifted: &lift::Lifted) -> serde_saphyr::Options {
    let mut options = crate::secure::yaml_options();
    if let Some(budget) = options.budget.as_mut() {
        budget.max_nodes = budget.max_nodes.saturating_sub(lifted.hidden_nodes);
        budget.max_events = budget.max_events.saturating_sub(lifted.hidden_nodes);
        budget.max_total_scalar_bytes =
            (budget.max_total_scalar_bytes).saturating_sub(lifted.hidden_bytes);
    }
    options
}

thread_local! {
    /// Whether [`Members`] keeps each member's line (see [`parse`]).
    static MEMBER_LINES: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
}

fn parse_with(
    text: &str,
    path: &Path,
    member_lines: bool,
    options: serde_saphyr::Options,
) -> Result<Wishes, LoadError> {
    let previous = MEMBER_LINES.replace(member_lines);
    let result = parse_once(text, path, options);
    MEMBER_LINES.set(previous);
    result
}

fn parse_once(
    text: &str,
    path: &Path,
    options: serde_saphyr::Options,
) -> Result<Wishes, LoadError> {
    let mut v = Validator {
        path: path.to_path_buf(),
        errors: Vec::new(),
    };
    if text.trim().is_empty() {
        v.error(
            0,
            None,
            "file is empty; refusing to read it as \"no wishes\" (a truncated file must not \
             withdraw the firewall)",
        );
        return Err(LoadError { errors: v.errors });
    }
    let raw: RawFile = match serde_saphyr::from_str_with_options(text, options) {
        Ok(raw) => raw,
        Err(e) => {
            let line = e.location().map(|l| l.line()).unwrap_or(0);
            let message = e.without_snippet().to_string();
            v.error(line, None, &message);
            return Err(LoadError { errors: v.errors });
        }
    };
    let Some(top) = raw.pyfw_wishes else {
        v.error(
            0,
            None,
            "has no `pyfw_wishes` key; refusing to read it as \"no wishes\"",
        );
        return Err(LoadError { errors: v.errors });
    };
    let Some(body) = top.value else {
        v.error(
            top.referenced.line(),
            None,
            "`pyfw_wishes` is empty; write `pyfw_wishes: {}` to mean \"no wishes\" on purpose",
        );
        return Err(LoadError { errors: v.errors });
    };
    let wishes = v.wishes(body);
    if v.errors.is_empty() {
        Ok(wishes)
    } else {
        Err(LoadError { errors: v.errors })
    }
}

struct Validator {
    path: PathBuf,
    errors: Vec<WishError>,
}

impl Validator {
    fn error(&mut self, line: u64, wish: Option<&str>, message: &str) {
        self.errors.push(WishError {
            path: self.path.clone(),
            line,
            wish: wish.map(String::from),
            message: message.to_string(),
        });
    }

    fn wishes(&mut self, body: RawWishes) -> Wishes {
        let mut ipsets = Vec::new();
        for (name, set) in body.ipsets.into_iter().flat_map(|m| m.0) {
            if let Some(wish) = self.ipset(name, set) {
                ipsets.push(wish);
            }
        }
        let mut out = Wishes {
            path: self.path.clone(),
            ipsets: ipsets.into(),
            chains: Vec::new(),
        };
        for (family, tables) in [(Family::V4, body.iptables), (Family::V6, body.ip6tables)] {
            for (table, chains) in tables.into_iter().flat_map(|m| m.0) {
                if !TABLES.contains(&table.value.as_str()) {
                    let msg = format!(
                        "unknown table `{}` (expected one of {})",
                        table.value,
                        TABLES.join(", ")
                    );
                    self.error(table.referenced.line(), None, &msg);
                    continue;
                }
                for (chain, wish) in chains.0 {
                    if let Some(c) = self.chain(family, &table.value, chain, wish) {
                        out.chains.push(c);
                    }
                }
            }
        }
        out
    }

    fn ipset(&mut self, name: Spanned<String>, raw: Spanned<RawIpset>) -> Option<IpsetWish> {
        let line = name.referenced.line();
        let label = format!("ipset {}", name.value);
        let label = Some(label.as_str());
        let mut ok = true;
        if !valid_set_name(&name.value) {
            self.error(
                line,
                label,
                "bad set name (1-31 characters, no blanks or commas)",
            );
            ok = false;
        }
        let raw = raw.value;
        let kind = SetType::parse(&raw.kind.value);
        if kind.is_none() {
            let msg = format!(
                "unknown ipset type `{}` (known: {})",
                raw.kind.value,
                crate::ipset::KNOWN_TYPES.join(", ")
            );
            self.error(raw.kind.referenced.line(), label, &msg);
        }
        let header: Vec<String> = raw
            .header
            .as_ref()
            .map(|h| h.value.split_whitespace().map(String::from).collect())
            .unwrap_or_default();
        let family = match header_family(&header) {
            Ok(f) => f,
            Err(msg) => {
                let hl = raw.header.as_ref().map_or(line, |h| h.referenced.line());
                self.error(hl, label, &msg);
                ok = false;
                SetFamily::Inet
            }
        };
        let kind = kind?;
        let mut members = None;
        if let Some(list) = raw.members_equal {
            // Only the pass with lines indexes members as they come.
            let lines = MEMBER_LINES.get();
            let mut seen = Elements::with_capacity(if lines { list.value.0.len() } else { 0 });
            let mut out: Vec<String> = Vec::with_capacity(list.value.0.len());
            let list_line = list.referenced.line();
            for m in list.value.0 {
                let mline = m.line.unwrap_or(list_line);
                let Some(text) = m.text else {
                    self.error(mline, label, "a member must be a single value");
                    ok = false;
                    continue;
                };
                // The text is needed again only for a message, and only
                // messages from the pass with lines are shown.
                let start = out.len();
                let (expanded, text) = if m.line.is_some() {
                    let expanded = kind.expand_member(&text, family);
                    (expanded.map(|e| out.extend(e)), Some(text))
                } else {
                    (kind.expand_into(text, family, &mut out), None)
                };
                match expanded {
                    // Without lines (the first pass), duplicates are looked
                    // for once the list is whole (see `listed_twice`).
                    Ok(()) if !lines => {}
                    Ok(()) => {
                        for k in start..out.len() {
                            if seen.insert(&out, k) {
                                let text = text.as_deref().unwrap_or(out[k].as_str());
                                self.error(mline, label, &format!("member `{text}` listed twice"));
                                ok = false;
                            }
                        }
                    }
                    Err(why) => {
                        let msg = format!("bad member for {}: {why}", kind.name());
                        self.error(mline, label, &msg);
                        ok = false;
                    }
                }
            }
            if ok && !lines && listed_twice(&out) {
                // Only the pass with lines says which member and where.
                self.error(list_line, label, "a member is listed twice");
                ok = false;
            }
            members = Some(out);
        }
        ok.then_some(IpsetWish {
            name: name.value,
            kind,
            family,
            header,
            members,
            line,
        })
    }

    fn chain(
        &mut self,
        family: Family,
        table: &str,
        chain: Spanned<String>,
        raw: Spanned<Option<RawChain>>,
    ) -> Option<ChainWish> {
        let line = chain.referenced.line();
        let label = chain_label(family, table, &chain.value);
        let mut ok = true;
        if let Err(why) = check_chain_name(&chain.value) {
            self.error(line, Some(&label), &why);
            ok = false;
        }
        let raw = raw.value.unwrap_or_default();
        let builtin = builtin_chains(table).contains(&chain.value.as_str());
        let policy = raw.default_action.map(|p| {
            if !builtin {
                let msg = format!(
                    "`default_action` is only for built-in chains ({}); {} is a user chain",
                    builtin_chains(table).join(", "),
                    chain.value
                );
                self.error(p.referenced.line(), Some(&label), &msg);
                ok = false;
            } else if p.value != "ACCEPT" && p.value != "DROP" {
                let msg = format!("`default_action` must be ACCEPT or DROP, not `{}`", p.value);
                self.error(p.referenced.line(), Some(&label), &msg);
                ok = false;
            }
            p.value
        });
        let rules = raw.rules.map(|r| self.rules(&label, r)).and_then(|r| {
            ok &= r.is_some();
            r
        });
        ok.then(|| ChainWish {
            family,
            table: table.to_string(),
            chain: chain.value,
            policy,
            rules,
            line,
        })
    }

    fn rules(&mut self, label: &str, raw: Spanned<Node>) -> Option<Vec<RuleItem>> {
        let Node::Seq(items) = raw.value else {
            let msg = "`rules` must be a list of one-key maps (`- NAME: RULE`)";
            self.error(raw.referenced.line(), Some(label), msg);
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        let mut names = std::collections::HashMap::new();
        for item in items {
            let line = item.referenced.line();
            let entries = match item.value {
                Node::Map(entries) if entries.len() == 1 => entries,
                _ => {
                    let msg =
                        "each rule must be a one-key map: `- NAME: RULE TEXT` or `- ~match: REGEX`";
                    self.error(line, Some(label), msg);
                    ok = false;
                    continue;
                }
            };
            let Some((key, value)) = entries.into_iter().next() else {
                continue;
            };
            let name = key.value;
            let line = key.referenced.line();
            let wish = format!("{label}/{name}");
            let Some(text) = value.value.scalar() else {
                self.error(line, Some(&wish), "the value must be text");
                ok = false;
                continue;
            };
            if name == MATCH_KEY {
                match Regex::new(&text) {
                    Ok(regex) => out.push(RuleItem::Match(MatchRule { regex, line })),
                    Err(e) => {
                        self.error(line, Some(&wish), &format!("bad regex: {e}"));
                        ok = false;
                    }
                }
                continue;
            }
            if let Err(why) = check_rule_name(&name) {
                self.error(line, Some(&wish), &why);
                ok = false;
                continue;
            }
            if let Some(first) = names.insert(name.clone(), line) {
                let msg = format!("duplicate rule name (first defined on line {first})");
                self.error(line, Some(&wish), &msg);
                ok = false;
                continue;
            }
            let rule = match Rule::parse(&text) {
                Ok(rule) => rule,
                Err(e) => {
                    self.error(line, Some(&wish), &format!("bad rule text: {e}"));
                    ok = false;
                    continue;
                }
            };
            if let Some(bad) = rule
                .tokens()
                .find_map(|a| a.chars().find(|c| c.is_control()))
            {
                let msg = format!(
                    "bad rule text: an argument holds the control character {bad:?}; no iptables \
                     argument can"
                );
                self.error(line, Some(&wish), &msg);
                ok = false;
                continue;
            }
            if let Some(comment) = rule.comment()
                && comment != name
            {
                let msg = format!(
                    "the rule's comment `{comment}` differs from its name; pyfw finds its \
                         rules by `--comment NAME`"
                );
                self.error(line, Some(&wish), &msg);
                ok = false;
                continue;
            }
            let rule = rule.with_comment(&name);
            out.push(RuleItem::Named(NamedRule { name, rule, line }));
        }
        ok.then_some(out)
    }
}

/// The elements of a set's members seen so far, by hash, each pointing at
/// its first member in the list being built: finding a member listed twice
/// copies no member.
struct Elements(fnv::FnvHashMap<u64, usize>);

impl Elements {
    fn with_capacity(n: usize) -> Elements {
        let mut map = fnv::FnvHashMap::default();
        map.reserve(n);
        Elements(map)
    }

    /// Notes the element of `members[k]`; true when an earlier member has
    /// the same element.
    fn insert(&mut self, members: &[String], k: usize) -> bool {
        let Some(member) = members.get(k) else {
            return false;
        };
        let key = crate::rule::text_key(element(member).as_bytes());
        // One probe of the map per member, not a lookup then an insert.
        let first = match self.0.entry(key) {
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(k);
                return false;
            }
            std::collections::hash_map::Entry::Occupied(slot) => *slot.get(),
        };
        match members.get(first) {
            Some(m) if element(m) == element(member) => true,
            // Two elements with one hash: rare enough to settle by a scan.
            _ => members[..k].iter().any(|m| element(m) == element(member)),
        }
    }
}

/// Whether two members have the same element, found by sorting their
/// elements' hashes: for a 100,000-member list, sorting an array of words
/// reads memory in order where a hash table misses the cache on nearly
/// every insert. The first pass over a file (without lines) asks this once
/// per list; when it says yes, the pass with lines names each member
/// listed twice by [`Elements`].
fn listed_twice(members: &[String]) -> bool {
    let mut keys: Vec<(u64, usize)> = (members.iter().enumerate())
        .map(|(i, m)| (crate::rule::text_key(element(m).as_bytes()), i))
        .collect();
    keys.sort_unstable();
    // Within each run of equal hashes (nearly always one member), compare
    // the elements themselves.
    keys.chunk_by(|a, b| a.0 == b.0).any(|run| {
        run.iter().enumerate().any(|(i, a)| {
            (run[i + 1..].iter()).any(|b| element(&members[a.1]) == element(&members[b.1]))
        })
    })
}

/// A member's element: its first word, before any options.
fn element(member: &str) -> &str {
    member.split(' ').next().unwrap_or("")
}

fn header_family(header: &[String]) -> Result<SetFamily, String> {
    // Options that take a value, and flags that do not (ipset(8)).
    const VALUED: &[&str] = &[
        "family",
        "hashsize",
        "maxelem",
        "netmask",
        "timeout",
        "range",
        "markmask",
        "size",
        "bucketsize",
        "initval",
    ];
    const FLAGS: &[&str] = &["counters", "comment", "skbinfo", "forceadd"];
    let mut family = SetFamily::Inet;
    let mut words = header.iter();
    while let Some(w) = words.next() {
        if FLAGS.contains(&w.as_str()) {
            continue;
        }
        if !VALUED.contains(&w.as_str()) {
            return Err(format!("unknown create option `{w}` in `header`"));
        }
        let Some(value) = words.next() else {
            return Err(format!("create option `{w}` needs a value"));
        };
        if w == "family" {
            family = match value.as_str() {
                "inet" => SetFamily::Inet,
                "inet6" => SetFamily::Inet6,
                other => return Err(format!("family must be inet or inet6, not `{other}`")),
            };
        }
    }
    Ok(family)
}

/// Chain names follow netfilter's limits: up to 28 characters without blanks,
/// not starting with `-` or `!`, and not a verdict.
pub fn check_chain_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 28
        && name.chars().all(|c| c.is_ascii_graphic())
        && !name.starts_with(['-', '!'])
        && !["ACCEPT", "DROP", "QUEUE", "RETURN"].contains(&name);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "bad chain name `{name}` (1-28 printable characters, no blanks, not starting with \
             `-` or `!`, not a verdict)"
        ))
    }
}

/// Rule names are 1-64 characters of `[A-Za-z0-9_.:-]`, and `_pyfw_temp_`
/// is reserved for pyfw's own temporary rules.
pub fn check_rule_name(name: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.:-".contains(c));
    if !ok {
        return Err(format!(
            "bad rule name `{name}` (1-64 characters of A-Z a-z 0-9 _ . : -)"
        ));
    }
    if name.starts_with(TEMP_PREFIX) {
        return Err(format!(
            "rule names starting with `{TEMP_PREFIX}` are reserved for pyfw"
        ));
    }
    Ok(())
}

// ---- raw serde stage -------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    // A present but empty `pyfw_wishes:` must stay distinguishable from a
    // missing key: plain `Option` would read both as `None`.
    #[serde(default, deserialize_with = "present")]
    pyfw_wishes: Option<Spanned<Option<RawWishes>>>,
}

fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWishes {
    ipsets: Option<Map<Spanned<RawIpset>>>,
    iptables: Option<Map<Map<Spanned<Option<RawChain>>>>>,
    ip6tables: Option<Map<Map<Spanned<Option<RawChain>>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIpset {
    #[serde(rename = "type")]
    kind: Spanned<String>,
    header: Option<Spanned<String>>,
    members_equal: Option<Spanned<Members>>,
}

/// A set's members: each a single value (`text`), or `None` for a nested
/// list or mapping; with its line when [`MEMBER_LINES`] asks for it.
struct Members(Vec<Member>);

struct Member {
    text: Option<String>,
    line: Option<u64>,
}

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if MEMBER_LINES.get() {
            let Seq(items) = Seq::deserialize(d)?;
            return Ok(Members(
                items
                    .into_iter()
                    .map(|m| Member {
                        line: Some(m.referenced.line()),
                        text: m.value.scalar(),
                    })
                    .collect(),
            ));
        }
        struct Fast;
        impl<'de> Visitor<'de> for Fast {
            type Value = Members;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Members, E> {
                Ok(Members(Vec::new()))
            }
            fn visit_none<E: de::Error>(self) -> Result<Members, E> {
                Ok(Members(Vec::new()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Members, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                // A plain string each: anything else fails here, and the
                // file is read again with lines to say what and where.
                while let Some(text) = seq.next_element::<String>()? {
                    let Some(run) = lift::claim(&text) else {
                        out.push(Member {
                            text: Some(text),
                            line: None,
                        });
                        continue;
                    };
                    out.reserve(run.len());
                    out.extend(run.into_iter().map(|text| Member {
                        text: Some(text),
                        line: None,
                    }));
                }
                Ok(Members(out))
            }
        }
        d.deserialize_any(Fast)
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawChain {
    default_action: Option<Spanned<String>>,
    rules: Option<Spanned<Node>>,
}

/// A YAML mapping that keeps its keys' order and lines.
struct Map<V>(Vec<(Spanned<String>, V)>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Map<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct MapVisitor<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for MapVisitor<V> {
            type Value = Map<V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Map(Vec::new()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut entries: Vec<(Spanned<String>, V)> = Vec::new();
                // A set, not a scan of `entries`: thousands of chains or
                // sets must not cost a comparison per pair.
                let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
                while let Some(key) = access.next_key::<Spanned<String>>()? {
                    if !seen.insert(key.value.clone()) {
                        return Err(de::Error::custom(format!(
                            "duplicate key `{}` on line {}",
                            key.value,
                            key.referenced.line()
                        )));
                    }
                    let value = access.next_value()?;
                    entries.push((key, value));
                }
                Ok(Map(entries))
            }
        }
        d.deserialize_map(MapVisitor(PhantomData))
    }
}

/// A YAML sequence of arbitrary nodes.
struct Seq(Vec<Spanned<Node>>);

impl<'de> Deserialize<'de> for Seq {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Node::deserialize(d)? {
            Node::Seq(items) => Ok(Seq(items)),
            Node::Null => Ok(Seq(Vec::new())),
            _ => Err(de::Error::custom("expected a list")),
        }
    }
}

/// Any YAML value, for the free-form parts (`rules`) whose shape we check
/// ourselves so that the message can name the chain.
enum Node {
    Null,
    Scalar(String),
    Seq(Vec<Spanned<Node>>),
    Map(Vec<(Spanned<String>, Spanned<Node>)>),
}

impl Node {
    fn scalar(&self) -> Option<String> {
        match self {
            Node::Scalar(s) => Some(s.clone()),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct NodeVisitor;
        impl<'de> Visitor<'de> for NodeVisitor {
            type Value = Node;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
                Ok(Node::Scalar(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
                Ok(Node::Scalar(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
                Ok(Node::Scalar(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
                Ok(Node::Scalar(v.to_string()))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
                Ok(Node::Scalar(v.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Spanned<Node>>()? {
                    items.push(item);
                }
                Ok(Node::Seq(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<Spanned<String>>()? {
                    entries.push((key, map.next_value::<Spanned<Node>>()?));
                }
                Ok(Node::Map(entries))
            }
        }
        d.deserialize_any(NodeVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// How files were parsed before runs were lifted.
    fn unlifted(text: &str) -> Result<Wishes, LoadError> {
        let path = Path::new("w.yaml");
        parse_with(text, path, false, crate::secure::yaml_options())
            .or_else(|_| parse_with(text, path, true, crate::secure::yaml_options()))
    }

    fn same(text: &str, min_run: usize) {
        let lifted = parse_lifting(text, Path::new("w.yaml"), min_run);
        assert_eq!(
            format!("{lifted:?}"),
            format!("{:?}", unlifted(text)),
            "{text}"
        );
    }

    #[test]
    fn a_lifted_list_reads_as_the_parser_reads_it() {
        let members: String = (0..200).map(|i| format!("      - 10.0.{i}.1\n")).collect();
        let text = format!(
            "pyfw_wishes:\n  ipsets:\n    a:\n      type: hash:ip\n      members_equal:\n\
             {members}      - \"10.9.9.9\"\n{members}"
        );
        assert!(lift::lift(&text, lift::MIN_RUN).is_some());
        // A duplicate across the two runs, and its line, as without lifting.
        same(&text, lift::MIN_RUN);
        let wishes = parse(&text, Path::new("w.yaml"));
        let err = wishes.expect_err("the two runs repeat each other");
        assert!(
            err.to_string()
                .contains("w.yaml:207: ipset a: member `10.0.0.1` listed twice"),
            "{err}"
        );
        let text = text.replacen(&members, &members.replace("10.0.", "10.1."), 1);
        let wishes = parse(&text, Path::new("w.yaml")).expect("no duplicates now");
        let got = wishes.ipsets[0].members.as_ref().expect("members");
        assert_eq!(got.len(), 401);
        assert_eq!(
            (got[0].as_str(), got[200].as_str()),
            ("10.1.0.1", "10.9.9.9")
        );
    }

    #[test]
    fn lines_that_only_look_like_a_list_are_read_as_what_they_are() {
        let run: String = (0..80)
            .map(|i| format!("              - 10.0.{i}.1\n"))
            .collect();
        let text = format!(
            "pyfw_wishes:\n  iptables:\n    filter:\n      INPUT:\n        rules:\n\
             \x20         - ~match: |\n{run}"
        );
        let wishes = parse(&text, Path::new("w.yaml")).expect("a pattern");
        assert!(
            format!("{wishes:?}").contains(r"- 10.0.79.1\n"),
            "{wishes:?}"
        );
        same(&text, lift::MIN_RUN);
    }

    /// One line of a generated members list, at the list's indent unless
    /// it says otherwise.
    fn item() -> impl Strategy<Value = String> {
        let value = prop_oneof![
            (0u8..4, 0u8..3).prop_map(|(a, b)| format!("10.0.{a}.{b}")),
            (0u8..4).prop_map(|a| format!("10.{a}.0.0/16")),
            Just("10.0.0.300".to_string()),
            Just("1e5".to_string()),
            Just("ff".to_string()),
            Just("10.0.0.1-10.0.0.2".to_string()),
            Just("10.0.0.1:".to_string()),
            Just("::1".to_string()),
            Just("fe80::1".to_string()),
        ];
        (value, 0u8..12).prop_map(|(v, shape)| match shape {
            0 => format!("- \"{v}\""),
            1 => format!("- {v}  # note"),
            2 => "# a comment".to_string(),
            3 => String::new(),
            4 => format!("  - {v}"),
            5 => format!("-   {v}   "),
            _ => format!("- {v}"),
        })
    }

    fn document() -> impl Strategy<Value = String> {
        let list = proptest::collection::vec(item(), 0..24);
        let trap = proptest::collection::vec(item(), 0..8);
        (list, trap, any::<bool>(), any::<bool>()).prop_map(|(list, trap, net, flow)| {
            let kind = if net { "hash:net" } else { "hash:ip" };
            let mut text = format!(
                "pyfw_wishes:\n  ipsets:\n    s:\n      type: {kind}\n      members_equal:\n"
            );
            for l in &list {
                text.push_str(&format!("      {l}\n"));
            }
            // The same lines as a block scalar's text, and in a flow list.
            text.push_str("  iptables:\n    filter:\n      INPUT:\n        rules:\n");
            text.push_str("          - ~match: |\n              x\n");
            for l in &trap {
                text.push_str(&format!("              {l}\n"));
            }
            if flow {
                text.push_str("          - ~match: [\n");
                for l in &trap {
                    text.push_str(&format!("              {l}\n"));
                }
                text.push_str("            ]\n");
            }
            text
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        #[test]
        fn lifting_never_changes_what_a_file_says(text in document(), min_run in 1usize..4) {
            same(&text, min_run);
        }
    }
}
