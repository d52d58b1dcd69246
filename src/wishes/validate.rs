//! The second stage of loading: raw YAML structs become checked wishes,
//! every problem collected with its file, line and wish.

use std::path::PathBuf;

use regex::Regex;
use serde_saphyr::Spanned;

use crate::state::ownership::RECORD_SET;
use crate::state::rule::Rule;
use crate::state::set_type::{SetFamily, SetType, valid_set_name};
use crate::state::{Family, TABLES, builtin_chains};
use crate::wishes::checks::{self, Declared};
use crate::wishes::raw::MEMBER_LINES;
use crate::wishes::raw::*;
use crate::wishes::*;

pub(crate) struct Validator {
    pub(crate) path: PathBuf,
    pub(crate) errors: Vec<WishError>,
    pub(crate) warnings: Vec<WishError>,
    /// The sets the file declares, with their type and family once
    /// validated: what its rules and list:set members may name.
    pub(crate) declared: Declared,
    /// A warning is about a member whose line this pass does not know:
    /// the file is read again with every member's line (see
    /// [`crate::wishes::parse`]).
    pub(crate) wants_lines: bool,
}

impl Validator {
    pub(crate) fn new(path: &std::path::Path) -> Validator {
        Validator {
            path: path.to_path_buf(),
            errors: Vec::new(),
            warnings: Vec::new(),
            declared: Declared::new(),
            wants_lines: false,
        }
    }
}

impl Validator {
    /// Notes what loads but is likely not what was meant.
    pub(crate) fn warn(&mut self, line: u64, wish: Option<&str>, message: &str) {
        self.warnings.push(WishError {
            path: self.path.clone(),
            line,
            wish: wish.map(String::from),
            message: message.to_string(),
        });
    }

    pub(crate) fn error(&mut self, line: u64, wish: Option<&str>, message: &str) {
        self.errors.push(WishError {
            path: self.path.clone(),
            line,
            wish: wish.map(String::from),
            message: message.to_string(),
        });
    }

    pub(crate) fn wishes(&mut self, body: RawWishes) -> Wishes {
        let sets: Vec<_> = body.ipsets.into_iter().flat_map(|m| m.0).collect();
        // A list:set may name a set declared after it.
        self.declared = sets.iter().map(|(n, _)| (n.value.clone(), None)).collect();
        let mut ipsets = Vec::new();
        for (name, set) in sets {
            if let Some(wish) = self.ipset(name, set) {
                ipsets.push(wish);
            }
        }
        for set in &ipsets {
            self.declared
                .insert(set.name.clone(), Some((set.kind.clone(), set.family)));
        }
        let mut out = Wishes {
            path: self.path.clone(),
            ipsets: ipsets.into(),
            chains: Vec::new(),
            nftables: Default::default(),
            warnings: Vec::new(),
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
        if let Some(tables) = body.nftables {
            out.nftables = self.nft_tables(tables).into();
        }
        out
    }

    pub(crate) fn ipset(
        &mut self,
        name: Spanned<String>,
        raw: Spanned<RawIpset>,
    ) -> Option<IpsetWish> {
        let line = name.referenced.line();
        let label = format!("ipset {}", name.value);
        let label = Some(label.as_str());
        let mut ok = self.set_name(line, label, &name.value);
        let raw = raw.value;
        let kind = SetType::parse(&raw.kind.value);
        if kind.is_none() {
            let msg = format!(
                "unknown ipset type `{}` (known: {})",
                raw.kind.value,
                crate::state::set_type::KNOWN_TYPES.join(", ")
            );
            self.error(raw.kind.referenced.line(), label, &msg);
        }
        let header: Vec<String> = raw
            .header
            .as_ref()
            .map(|h| h.value.split_whitespace().map(String::from).collect())
            .unwrap_or_default();
        let header_line = raw.header.as_ref().map_or(line, |h| h.referenced.line());
        let options = match header_options(&header) {
            Ok(o) => o,
            Err(msg) => {
                self.error(header_line, label, &msg);
                ok = false;
                Options::default()
            }
        };
        let family = options.family;
        let kind = kind?;
        let range = match (kind.name().starts_with("bitmap:"), options.range) {
            (true, Some(text)) => match checks::bitmap_range(&kind, text, options.netmask) {
                Ok((lo, hi)) => Some((text, lo, hi)),
                Err(msg) => {
                    self.error(header_line, label, &msg);
                    ok = false;
                    None
                }
            },
            _ => None,
        };
        let set = SetShape {
            kind: &kind,
            options: &options,
            range,
            label,
            line,
            header_line,
        };
        let members = raw
            .members_equal
            .map(|list| self.set_members(&set, &list, &mut ok));
        ok.then_some(IpsetWish {
            name: name.value,
            kind,
            family,
            header,
            members,
            line,
        })
    }

    /// Checks a set's name: false when it is bad (said already).
    fn set_name(&mut self, line: u64, label: Option<&str>, name: &str) -> bool {
        let mut ok = true;
        if name.starts_with('-') {
            let msg = format!(
                "bad set name `{name}`: ipset reads a word starting with `-` as an option \
                 (`-exist`, `-q`, ...), so no set name may start with one",
            );
            self.error(line, label, &msg);
            ok = false;
        } else if !valid_set_name(name) {
            self.error(
                line,
                label,
                "bad set name (1-31 printable ASCII characters, no blanks, commas or `\"`: \
                 `ipset restore` reads `\"` as a quote, so no set with one can be made)",
            );
            ok = false;
        }
        if let Err(why) = check_reserved("set", name) {
            self.error(line, label, &why);
            ok = false;
        }
        ok
    }

    /// A set's `members_equal`, each member expanded to the elements it
    /// stands for and checked; `ok` turns false when one is wrong (said
    /// already), and a list of members found twice is looked for only
    /// while it is still true.
    fn set_members(
        &mut self,
        set: &SetShape,
        list: &Spanned<crate::wishes::raw::Members>,
        ok: &mut bool,
    ) -> crate::state::Members {
        // Only the pass with lines indexes members as they come.
        let lines = MEMBER_LINES.get();
        let count = list.value.len();
        let mut seen = Elements::with_capacity(if lines { count } else { 0 });
        // Compactly: a copy per member that is already as ipset prints
        // it, no allocation (see `state::Members`).
        let mut out = crate::state::Members::with_capacity(count, 0);
        let list_line = list.referenced.line();
        for (text, line) in list.value.iter() {
            let mline = line.unwrap_or(list_line);
            let Some(text) = text else {
                self.error(mline, set.label, "a member must be a single value");
                *ok = false;
                continue;
            };
            let seen = lines.then_some(&mut seen);
            *ok &= self.set_member(set, text, (line, mline), &mut out, seen);
        }
        if *ok && !lines && listed_twice(&out) {
            // Only the pass with lines says which member and where.
            self.error(list_line, set.label, "a member is listed twice");
            *ok = false;
        }
        if set.kind.is_hash() {
            let count = element_count(set.kind, &out);
            let options = set.options;
            let full = checks::over_maxelem(count, options.maxelem, options.forceadd);
            if let Some(msg) = full {
                let at = if options.maxelem.is_some() {
                    set.header_line
                } else {
                    set.line
                };
                self.error(at, set.label, &msg);
                *ok = false;
            }
        }
        out.shrink_to_fit();
        out
    }

    /// One member, `text`, expanded into `out` and checked (on its line as
    /// read, if any, and the line it is said to be on); `seen` (the pass
    /// with lines) finds it listed twice. False when it is wrong (said
    /// already).
    fn set_member(
        &mut self,
        set: &SetShape,
        text: &str,
        (line, mline): (Option<u64>, u64),
        out: &mut crate::state::Members,
        seen: Option<&mut Elements>,
    ) -> bool {
        let kind = set.kind;
        let start = out.len();
        let expanded = kind.expand_into(text, set.options.family, out);
        if expanded.is_ok() {
            let elements = || out.iter().skip(start);
            if let Some(why) = self.member_problem(kind, elements(), text, set.range) {
                let msg = format!("bad member for {}: {why}", kind.name());
                self.error(mline, set.label, &msg);
                return false;
            }
            if kind.name() == "list:set" {
                self.listed_set(elements(), line, mline, set.label);
            }
        }
        match (expanded, seen) {
            // Without lines (the first pass), duplicates are looked for
            // once the list is whole (see `listed_twice`).
            (Ok(()), None) => true,
            (Ok(()), Some(seen)) => {
                let mut ok = true;
                for k in start..out.len() {
                    if seen.insert(out, k) {
                        let msg = format!("member `{text}` listed twice");
                        self.error(mline, set.label, &msg);
                        ok = false;
                    }
                }
                ok
            }
            (Err(why), _) => {
                let msg = format!("bad member for {}: {why}", kind.name());
                self.error(mline, set.label, &msg);
                false
            }
        }
    }

    pub(crate) fn chain(
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
        if let Err(why) = check_reserved("chain", &chain.value) {
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
            } else if p.value == "DROP" && table == "nat" {
                let msg = format!(
                    "the nat table takes only `default_action: ACCEPT`: {}",
                    checks::NAT_DROP
                );
                self.error(p.referenced.line(), Some(&label), &msg);
                ok = false;
            }
            p.value
        });
        let rules = raw
            .rules
            .map(|r| self.rules(family, table, &label, r))
            .and_then(|r| {
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

    pub(crate) fn rules(
        &mut self,
        family: Family,
        table: &str,
        label: &str,
        raw: Spanned<Node>,
    ) -> Option<Vec<RuleItem>> {
        let Node::Seq(items) = raw.value else {
            let msg = "`rules` must be a list of one-key maps (`- NAME: RULE`)";
            self.error(raw.referenced.line(), Some(label), msg);
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        let mut names = std::collections::HashMap::new();
        for item in items {
            let item = match self.rule_entry(label, item) {
                Ok(Some(entry)) => match entry.name == MATCH_KEY {
                    true => self.match_rule(entry),
                    false => self.named_rule(family, table, entry, &mut names),
                },
                Ok(None) => continue,
                Err(()) => Err(()),
            };
            match item {
                Ok(item) => out.push(item),
                Err(()) => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// One item of `rules`, a one-key map: its name, text and line; `Err`
    /// when it is not one (said already).
    fn rule_entry(&mut self, label: &str, item: Spanned<Node>) -> Result<Option<RuleEntry>, ()> {
        let line = item.referenced.line();
        let entries = match item.value {
            Node::Map(entries) if entries.len() == 1 => entries,
            _ => {
                let msg =
                    "each rule must be a one-key map: `- NAME: RULE TEXT` or `- ~match: REGEX`";
                self.error(line, Some(label), msg);
                return Err(());
            }
        };
        let Some((key, value)) = entries.into_iter().next() else {
            return Ok(None);
        };
        let name = key.value;
        let line = key.referenced.line();
        let wish = format!("{label}/{name}");
        let Some(text) = value.value.scalar() else {
            self.error(line, Some(&wish), "the value must be text");
            return Err(());
        };
        Ok(Some(RuleEntry {
            name,
            text,
            line,
            wish,
        }))
    }

    /// `- ~match: REGEX`.
    fn match_rule(&mut self, entry: RuleEntry) -> Result<RuleItem, ()> {
        let line = entry.line;
        match Regex::new(&entry.text) {
            Ok(regex) => Ok(RuleItem::Match(MatchRule { regex, line })),
            Err(e) => {
                self.error(line, Some(&entry.wish), &format!("bad regex: {e}"));
                Err(())
            }
        }
    }

    /// `- NAME: RULE TEXT`: its name (good, and not taken already: `names`
    /// holds the names taken, with their lines), its text and what the
    /// rule does checked.
    fn named_rule(
        &mut self,
        family: Family,
        table: &str,
        entry: RuleEntry,
        names: &mut std::collections::HashMap<String, u64>,
    ) -> Result<RuleItem, ()> {
        let RuleEntry {
            name,
            text,
            line,
            wish,
        } = entry;
        if let Err(why) = check_rule_name(&name) {
            self.error(line, Some(&wish), &why);
            return Err(());
        }
        if let Some(first) = names.insert(name.clone(), line) {
            let msg = format!("duplicate rule name (first defined on line {first})");
            self.error(line, Some(&wish), &msg);
            return Err(());
        }
        let rule = self.rule_text(&name, &text, line, &wish)?;
        if let Some(octal) = octal_port(&rule) {
            self.warn(line, Some(&wish), &octal);
        }
        let mut refused = checks::rule_errors(&rule, family, table);
        let (set_errors, set_warnings) = checks::set_names(&rule, family, &self.declared);
        refused.extend(set_errors);
        for msg in &set_warnings {
            self.warn(line, Some(&wish), msg);
        }
        if !refused.is_empty() {
            for msg in &refused {
                self.error(line, Some(&wish), msg);
            }
            return Err(());
        }
        let rule = rule.with_comment(&name);
        Ok(RuleItem::Named(NamedRule {
            name,
            rule,
            printed: None,
            line,
        }))
    }

    /// A named rule's text, split into arguments: none may hold a control
    /// character, and a comment must be the rule's name.
    fn rule_text(&mut self, name: &str, text: &str, line: u64, wish: &str) -> Result<Rule, ()> {
        let rule = match Rule::parse(text) {
            Ok(rule) => rule,
            Err(e) => {
                self.error(line, Some(wish), &format!("bad rule text: {e}"));
                return Err(());
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
            self.error(line, Some(wish), &msg);
            return Err(());
        }
        if let Some(comment) = rule.comment()
            && comment != name
        {
            let msg = format!(
                "the rule's comment `{comment}` differs from its name; pyfw finds its \
                     rules by `--comment NAME`"
            );
            self.error(line, Some(wish), &msg);
            return Err(());
        }
        Ok(rule)
    }
}

/// One item of a chain's `rules`, as written: `NAME: TEXT` on `line`;
/// `wish` labels it.
struct RuleEntry {
    name: String,
    text: String,
    line: u64,
    wish: String,
}

impl Validator {
    /// Why the elements one member stands for do not fit its set (a
    /// bitmap set's `range`), if they do not.
    fn member_problem<'e>(
        &self,
        kind: &SetType,
        mut elements: impl Iterator<Item = &'e str>,
        written: &str,
        range: Option<(&str, u128, u128)>,
    ) -> Option<String> {
        let range = range?;
        elements.find_map(|e| checks::outside_range(kind, e, written, range))
    }

    /// Warns of a list:set member naming a set the file declares nowhere.
    fn listed_set<'e>(
        &mut self,
        elements: impl Iterator<Item = &'e str>,
        line: Option<u64>,
        at: u64,
        label: Option<&str>,
    ) {
        for e in elements {
            let name = element(e);
            if self.declared.contains_key(name) {
                continue;
            }
            if line.is_none() {
                // Said by the pass that knows the member's line.
                self.wants_lines = true;
                return;
            }
            let msg = format!(
                "list:set member `{name}`: no set `{name}` is declared under `ipsets`; ipset \
                 refuses the member unless another program has made that set"
            );
            self.warn(at, label, &msg);
        }
    }
}

/// How many elements the kernel stores for `members` (see
/// [`SetType::element_count`]): one each in a set of single addresses,
/// whose networks and ranges are already expanded.
fn element_count(kind: &SetType, members: &crate::state::Members) -> u128 {
    if kind.name() == "hash:ip" {
        return members.len() as u128;
    }
    members.iter().map(|m| kind.element_count(m)).sum()
}

/// The elements of a set's members seen so far, by hash, each pointing at
/// its first member in the list being built: finding a member listed twice
/// copies no member.
struct Elements(pub(crate) fnv::FnvHashMap<u64, usize>);

impl Elements {
    pub(crate) fn with_capacity(n: usize) -> Elements {
        let mut map = fnv::FnvHashMap::default();
        map.reserve(n);
        Elements(map)
    }

    /// Notes the element of `members[k]`; true when an earlier member has
    /// the same element.
    pub(crate) fn insert(&mut self, members: &crate::state::Members, k: usize) -> bool {
        let Some(member) = members.get(k) else {
            return false;
        };
        let key = crate::state::rule::text_key(element(member).as_bytes());
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
            _ => members
                .iter()
                .take(k)
                .any(|m| element(m) == element(member)),
        }
    }
}

/// Whether two members have the same element, found by sorting their
/// elements' hashes: for a 100,000-member list, sorting an array of words
/// reads memory in order where a hash table misses the cache on nearly
/// every insert. The first pass over a file (without lines) asks this once
/// per list; when it says yes, the pass with lines names each member
/// listed twice by [`Elements`].
fn listed_twice(members: &crate::state::Members) -> bool {
    let mut keys: Vec<(u64, usize)> = (members.iter().enumerate())
        .map(|(i, m)| (crate::state::rule::text_key(element(m).as_bytes()), i))
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

/// What a set's members are checked against: its type, header options and
/// bitmap range (as written, and its ends), and where to point.
struct SetShape<'a> {
    kind: &'a SetType,
    options: &'a Options<'a>,
    range: Option<(&'a str, u128, u128)>,
    label: Option<&'a str>,
    /// The set's line, and its header's (the set's when it has none).
    line: u64,
    header_line: u64,
}

/// What a set's header says that its members must fit.
struct Options<'h> {
    family: SetFamily,
    maxelem: Option<u128>,
    /// A bitmap set's `range`, as written.
    range: Option<&'h str>,
    netmask: bool,
    forceadd: bool,
}

impl Default for Options<'_> {
    fn default() -> Self {
        Options {
            family: SetFamily::Inet,
            maxelem: None,
            range: None,
            netmask: false,
            forceadd: false,
        }
    }
}

fn header_options(header: &[String]) -> Result<Options<'_>, String> {
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
    let mut options = Options::default();
    let mut words = header.iter();
    while let Some(w) = words.next() {
        if FLAGS.contains(&w.as_str()) {
            options.forceadd |= w == "forceadd";
            continue;
        }
        if !VALUED.contains(&w.as_str()) {
            return Err(format!("unknown create option `{w}` in `header`"));
        }
        let Some(value) = words.next() else {
            return Err(format!("create option `{w}` needs a value"));
        };
        match w.as_str() {
            "family" => {
                options.family = match value.as_str() {
                    "inet" => SetFamily::Inet,
                    "inet6" => SetFamily::Inet6,
                    other => return Err(format!("family must be inet or inet6, not `{other}`")),
                };
            }
            "maxelem" => {
                let n = value.parse::<u128>().ok().filter(|n| *n > 0);
                let n = n.ok_or_else(|| format!("`maxelem {value}` is not a positive number"))?;
                options.maxelem = Some(n);
            }
            "range" => options.range = Some(value.as_str()),
            "netmask" => options.netmask = true,
            _ => {}
        }
    }
    Ok(options)
}

/// Chain names follow netfilter's limits: up to 28 characters without blanks,
/// not starting with `-` or `!`, and not a verdict. A `"` is refused too:
/// pyfw records each chain it creates in a member comment of its record
/// set, and ipset refuses `"` in a comment. Every other printable ASCII
/// character reads back (tests/kernel/names_round_trip.rs): iptables prints a
/// chain name as it is, and pyfw quotes it for iptables-restore.
pub fn check_chain_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 28
        && name.chars().all(|c| c.is_ascii_graphic())
        && !name.starts_with(['-', '!'])
        && !["ACCEPT", "DROP", "QUEUE", "RETURN"].contains(&name);
    if !ok {
        return Err(format!(
            "bad chain name `{name}` (1-28 printable characters, no blanks, not starting with \
             `-` or `!`, not a verdict)"
        ));
    }
    if name.contains('"') {
        return Err(format!(
            "bad chain name `{name}`: no `\"` (pyfw records its chains in ipset comments, \
             which cannot hold one)"
        ));
    }
    Ok(())
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
    check_reserved("rule", name)
}

/// A warning for a port written with a leading zero: iptables reads
/// `--dport 0022` as octal, port 18.
fn octal_port(rule: &Rule) -> Option<String> {
    const PORTS: &[&str] = &[
        "--dport",
        "--sport",
        "--dports",
        "--sports",
        "--destination-port",
        "--source-port",
        "--destination-ports",
        "--source-ports",
        "--port",
        "--ports",
        "--to-ports",
    ];
    let tokens: Vec<&str> = rule.tokens().collect();
    tokens.windows(2).find_map(|w| {
        if !PORTS.contains(&w[0]) {
            return None;
        }
        let port = w[1]
            .split([',', ':'])
            .find(|p| p.len() > 1 && p.starts_with('0') && p.bytes().all(|b| b.is_ascii_digit()))?;
        let meant = match port.trim_start_matches('0') {
            "" => "0",
            digits => digits,
        };
        let read = u32::from_str_radix(port, 8)
            .map(|n| format!("port {n}"))
            .unwrap_or_else(|_| "which is no port (not an octal number)".into());
        Some(format!(
            "`{} {}`: iptables reads `{port}` as an octal number, {read}; write `{meant}` if you \
             mean port {meant}",
            w[0], w[1]
        ))
    })
}

/// Names pyfw uses for itself: its ownership record (the set
/// [`RECORD_SET`]) and everything starting with [`RESERVED_PREFIX`]
/// (temporary copies of moved rules, sets filled before a rename or swap,
/// scratch chains). A wish of that name would be overwritten, destroyed or
/// taken for pyfw's own.
pub fn check_reserved(kind: &str, name: &str) -> Result<(), String> {
    if kind == "set" && name == RECORD_SET {
        return Err(format!(
            "the set name `{RECORD_SET}` is pyfw's own: it holds the record of what pyfw owns; \
             pick another name"
        ));
    }
    if name.starts_with(RESERVED_PREFIX) {
        return Err(format!(
            "{kind} names starting with `{RESERVED_PREFIX}` are reserved for pyfw's own \
             temporary rules, chains and sets; pick another name"
        ));
    }
    Ok(())
}

/// The prefix of every name pyfw makes for itself.
pub const RESERVED_PREFIX: &str = "_pyfw_";

// ---- raw serde stage -------------------------------------------------------
