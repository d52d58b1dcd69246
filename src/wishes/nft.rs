//! The `nftables:` section: tables pyfw owns wholly, written in nft's own
//! syntax (see docs/nftables.md).
//!
//! ```yaml
//! nftables:
//!   inet pyfw:
//!     sets:
//!       allowed_hosts:
//!         type: ipv4_addr
//!         flags: [interval]
//!         elements: [192.168.122.193, 10.0.0.0/8]
//!     chains:
//!       forward:
//!         type: filter
//!         hook: forward
//!         priority: filter - 1
//!         policy: accept
//!         rules:
//!         - ct state established,related accept
//!         - allowed_only: oifname "docker0" ip saddr != @allowed_hosts reject
//! ```
//!
//! Rules and set elements are nft's own text, checked here only for what
//! could make them more than one rule or element of their table (a line
//! break, a `;`, an unbalanced brace or quote): nft itself judges the rest,
//! and its verdict names the wish (see `plan::nft`). Each wish is labelled
//! `nft FAMILY TABLE`, `nft FAMILY TABLE/CHAIN`, `nft FAMILY TABLE/CHAIN/NAME`
//! (or `/#N` for the N-th rule, when it has no name) and
//! `nft FAMILY TABLE/set NAME`.

use serde_saphyr::Spanned;

use crate::wishes::raw::{Map, Members, Node, RawNftChain, RawNftSet, RawNftTable};
use crate::wishes::validate::{Validator, check_rule_name};

pub use crate::state::nft::NftFamily;

/// The hooks a base chain of `family` may use.
fn hooks(family: NftFamily) -> &'static [&'static str] {
    match family {
        NftFamily::Ip | NftFamily::Ip6 | NftFamily::Bridge => {
            &["prerouting", "input", "forward", "output", "postrouting"]
        }
        NftFamily::Inet => &[
            "prerouting",
            "input",
            "forward",
            "output",
            "postrouting",
            "ingress",
        ],
        NftFamily::Arp => &["input", "output"],
        NftFamily::Netdev => &["ingress", "egress"],
    }
}

/// One table pyfw owns wholly: it is exactly what the wish says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NftTableWish {
    pub family: NftFamily,
    pub name: String,
    pub sets: Vec<NftSetWish>,
    pub chains: Vec<NftChainWish>,
    pub line: u64,
}

impl NftTableWish {
    /// `nft inet pyfw`: how messages name the table.
    pub fn label(&self) -> String {
        table_label(self.family, &self.name)
    }
}

/// `nft FAMILY NAME`.
pub fn table_label(family: NftFamily, name: &str) -> String {
    format!("nft {family} {name}")
}

/// A chain of an owned table: a base chain when it has a hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NftChainWish {
    pub name: String,
    pub base: Option<NftBaseChain>,
    pub rules: Vec<NftRuleWish>,
    pub line: u64,
}

/// `type T hook H [device D] priority P; [policy X;]`, as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NftBaseChain {
    pub kind: String,
    pub hook: String,
    pub device: Option<String>,
    pub priority: String,
    pub policy: Option<String>,
}

/// One rule, in nft's syntax as typed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NftRuleWish {
    /// `- NAME: RULE`; `None` for a bare `- RULE`.
    pub name: Option<String>,
    pub text: String,
    pub line: u64,
}

impl NftRuleWish {
    /// The last part of the rule's label: its name, or `#N` (1-based).
    pub fn tag(&self, index: usize) -> String {
        match &self.name {
            Some(name) => name.clone(),
            None => format!("#{}", index + 1),
        }
    }
}

/// A named set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NftSetWish {
    pub name: String,
    /// `type ipv4_addr` or `typeof ip saddr`, as the set's first line.
    pub key: String,
    pub flags: Vec<String>,
    /// Further lines of the set (`timeout 1h`, `size 65535`, `counter`...).
    pub options: Vec<String>,
    /// Elements as written, each with options if any (`10.0.0.1 timeout 1h`).
    pub elements: Vec<String>,
    pub line: u64,
}

impl NftSetWish {
    /// Whether packets or timers change its elements, so that they are not
    /// compared (see `state::nft`).
    pub fn dynamic(&self) -> bool {
        self.flags.iter().any(|f| f == "dynamic" || f == "timeout")
    }
}

/// The line of the nftables wish `label` names (`nft inet pyfw`,
/// `nft inet pyfw/input`, `nft inet pyfw/input/NAME`, `.../#N`,
/// `nft inet pyfw/set NAME`), or of its table when only that is found.
pub fn line_of(tables: &[NftTableWish], label: &str) -> Option<u64> {
    let (table, rest) = label.split_once('/').unwrap_or((label, ""));
    let t = tables.iter().find(|t| t.label() == table)?;
    if rest.is_empty() {
        return Some(t.line);
    }
    if let Some(set) = rest.strip_prefix("set ") {
        return Some(
            t.sets
                .iter()
                .find(|s| s.name == set)
                .map_or(t.line, |s| s.line),
        );
    }
    let (chain, rule) = rest.split_once('/').unwrap_or((rest, ""));
    let Some(c) = t.chains.iter().find(|c| c.name == chain) else {
        return Some(t.line);
    };
    let found = c
        .rules
        .iter()
        .enumerate()
        .find(|(i, r)| !rule.is_empty() && r.tag(*i) == rule);
    Some(found.map_or(c.line, |(_, r)| r.line))
}

// ---- checks ----------------------------------------------------------------

/// Set flags nft 1.0 knows.
const SET_FLAGS: &[&str] = &["constant", "dynamic", "interval", "timeout"];

/// The priority names nft accepts (`filter`, `filter - 1`, ...).
const PRIORITY_NAMES: &[&str] = &[
    "raw", "mangle", "dstnat", "filter", "security", "srcnat", "out",
];

/// Tables other programs write, which pyfw must never own: iptables-nft's
/// (pyfw's own iptables wishes live there), ebtables-nft's, arptables-nft's,
/// Docker's nftables backend's and firewalld's.
fn foreign_table(family: NftFamily, name: &str) -> Option<&'static str> {
    use NftFamily::*;
    match (family, name) {
        (Ip | Ip6, "filter" | "nat" | "mangle" | "raw" | "security") => {
            Some("iptables-nft keeps its (and pyfw's iptables wishes') rules there")
        }
        (Arp, "filter") => Some("arptables-nft keeps its rules there"),
        (Bridge, "filter" | "nat" | "broute") => Some("ebtables-nft keeps its rules there"),
        (Ip | Ip6, "docker-bridges") => Some("it is Docker's (its nftables firewall backend)"),
        (Inet | Ip | Ip6, "firewalld") => Some("it is firewalld's"),
        // The drop-everything table firewalld holds during a reload and in
        // panic mode.
        (Inet, "firewalld_policy_drop") => Some("it is firewalld's (its reload and panic mode)"),
        _ => None,
    }
}

/// A table, chain or set name pyfw writes into nft's syntax unquoted.
pub fn check_nft_name(kind: &str, name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = name.len() <= 255
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    match ok {
        true => Ok(()),
        false => Err(format!(
            "bad {kind} name `{name}` (1-255 characters of A-Z a-z 0-9 _ . -, starting with a \
             letter or `_`)"
        )),
    }
}

/// Text pyfw puts into a table's script as it is (a rule, an element, a
/// set's type): on one line, with balanced quotes and, outside quotes,
/// balanced braces (none at all unless `braces`) and no `;` or `#`, so that
/// it stays one rule or element of its table and cannot end the block it
/// is written in. nft judges everything else.
pub fn check_nft_text(text: &str, braces: bool, commas: bool) -> Result<(), String> {
    if text.trim().is_empty() {
        return Err("is empty".into());
    }
    if let Some(c) = text.chars().find(|c| c.is_control()) {
        return Err(format!(
            "holds the control character {c:?}; write it on one line"
        ));
    }
    let mut quoted = false;
    let mut depth = 0usize;
    for c in text.chars() {
        match c {
            '"' => quoted = !quoted,
            _ if quoted => {}
            ';' | '#' => {
                return Err(format!(
                    "holds `{c}` outside quotes; write one rule or element per list item"
                ));
            }
            '{' | '}' if !braces => {
                return Err(format!("holds `{c}` outside quotes"));
            }
            ',' if !commas && depth == 0 => {
                return Err(
                    "holds `,` outside braces and quotes; write one element per list item".into(),
                );
            }
            '{' => depth += 1,
            '}' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or("closes a brace it did not open")?;
            }
            _ => {}
        }
    }
    if quoted {
        return Err("has an unclosed `\"`".into());
    }
    if depth > 0 {
        return Err("has an unclosed `{`".into());
    }
    Ok(())
}

/// A priority as nft takes it: a number, or a name (`filter`), or a name
/// plus or minus a number (`filter - 1`).
fn check_priority(text: &str) -> Result<(), String> {
    let bad = || {
        format!(
            "bad priority `{text}` (a number, or one of {} with an optional `+ N` or `- N`)",
            PRIORITY_NAMES.join(", ")
        )
    };
    let t = text.trim();
    if t.strip_prefix('-')
        .unwrap_or(t)
        .bytes()
        .all(|b| b.is_ascii_digit())
        && !t.trim_start_matches('-').is_empty()
    {
        return Ok(());
    }
    let (name, rest) = t
        .find(['+', '-', ' '])
        .map_or((t, ""), |i| (&t[..i], t[i..].trim()));
    if !PRIORITY_NAMES.contains(&name) {
        return Err(bad());
    }
    if rest.is_empty() {
        return Ok(());
    }
    let number = rest
        .strip_prefix(['+', '-'])
        .map(str::trim)
        .ok_or_else(bad)?;
    match !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit()) {
        true => Ok(()),
        false => Err(bad()),
    }
}

/// A word from `allowed`, or a message saying which are.
fn one_of(what: &str, value: &str, allowed: &[&str]) -> Result<(), String> {
    match allowed.contains(&value) {
        true => Ok(()),
        false => Err(format!(
            "{what} must be one of {}, not `{value}`",
            allowed.join(", ")
        )),
    }
}

/// A duration as nft writes one (`1h`, `30m`, `1d2h`, `500ms`).
fn check_duration(text: &str) -> Result<(), String> {
    let mut rest = text;
    let mut parts = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let unit = ["ms", "d", "h", "m", "s"]
            .into_iter()
            .find(|u| rest[digits..].starts_with(u));
        let (true, Some(unit)) = (digits > 0, unit) else {
            return Err(format!(
                "bad duration `{text}` (such as `30s`, `10m`, `1h30m`, `2d`)"
            ));
        };
        rest = &rest[digits + unit.len()..];
        parts += 1;
    }
    match parts {
        0 => Err("is empty".into()),
        _ => Ok(()),
    }
}

// ---- validation --------------------------------------------------------------

impl Validator {
    /// The `nftables:` section: tables by `FAMILY NAME`.
    pub(crate) fn nft_tables(
        &mut self,
        raw: Map<Spanned<Option<RawNftTable>>>,
    ) -> Vec<NftTableWish> {
        let mut out = Vec::new();
        for (key, table) in raw.0 {
            if let Some(t) = self.nft_table(key, table) {
                out.push(t);
            }
        }
        out
    }

    fn nft_table(
        &mut self,
        key: Spanned<String>,
        raw: Spanned<Option<RawNftTable>>,
    ) -> Option<NftTableWish> {
        let line = key.referenced.line();
        let words: Vec<&str> = key.value.split_whitespace().collect();
        let [family, name] = words.as_slice() else {
            let msg = format!(
                "a table is `FAMILY NAME` (such as `inet pyfw`), not `{}`",
                key.value
            );
            self.error(line, None, &msg);
            return None;
        };
        let label = format!("nft {family} {name}");
        let Some(family) = NftFamily::parse(family) else {
            let all: Vec<&str> = NftFamily::ALL.iter().map(|f| f.word()).collect();
            let msg = format!(
                "unknown family `{family}` (expected one of {})",
                all.join(", ")
            );
            self.error(line, Some(&label), &msg);
            return None;
        };
        let mut ok = true;
        if let Err(why) = check_nft_name("table", name) {
            self.error(line, Some(&label), &why);
            ok = false;
        }
        if let Some(why) = foreign_table(family, name) {
            let msg = format!("pyfw cannot own this table: {why}; pick another name");
            self.error(line, Some(&label), &msg);
            ok = false;
        }
        if let Err(why) = crate::wishes::validate::check_reserved("table", name) {
            self.error(line, Some(&label), &why);
            ok = false;
        }
        let raw = raw.value.unwrap_or_default();
        let mut sets = Vec::new();
        for (set, body) in raw.sets.into_iter().flat_map(|m| m.0) {
            let wish = self.nft_set(&label, set, body);
            ok &= wish.is_some();
            sets.extend(wish);
        }
        let mut chains = Vec::new();
        for (chain, body) in raw.chains.into_iter().flat_map(|m| m.0) {
            let wish = self.nft_chain(family, &label, chain, body);
            ok &= wish.is_some();
            chains.extend(wish);
        }
        ok.then(|| NftTableWish {
            family,
            name: name.to_string(),
            sets,
            chains,
            line,
        })
    }

    fn nft_chain(
        &mut self,
        family: NftFamily,
        table: &str,
        name: Spanned<String>,
        raw: Spanned<Option<RawNftChain>>,
    ) -> Option<NftChainWish> {
        let line = name.referenced.line();
        let label = format!("{table}/{}", name.value);
        let mut ok = true;
        if let Err(why) = check_nft_name("chain", &name.value) {
            self.error(line, Some(&label), &why);
            ok = false;
        }
        let raw = raw.value.unwrap_or_default();
        let base = self.nft_base(family, &label, line, &raw);
        ok &= base.is_ok();
        let rules = match raw.rules {
            None => Some(Vec::new()),
            Some(rules) => self.nft_rules(&label, rules),
        };
        ok &= rules.is_some();
        ok.then(|| NftChainWish {
            name: name.value,
            base: base.ok().flatten(),
            rules: rules.unwrap_or_default(),
            line,
        })
    }

    /// The base chain's header, `None` for a regular chain; `Err` when
    /// something was wrong (said already).
    fn nft_base(
        &mut self,
        family: NftFamily,
        label: &str,
        line: u64,
        raw: &RawNftChain,
    ) -> Result<Option<NftBaseChain>, ()> {
        let values_ok = self.nft_base_values(family, label, raw);
        let base = self.nft_base_header(label, line, raw);
        match (values_ok, base) {
            (true, Ok(base)) => Ok(base),
            _ => Err(()),
        }
    }

    /// Checks each value a base chain's header states: false when one was
    /// wrong (said already).
    fn nft_base_values(&mut self, family: NftFamily, label: &str, raw: &RawNftChain) -> bool {
        let mut ok = true;
        let mut check = |v: &Option<Spanned<String>>, f: &dyn Fn(&str) -> Result<(), String>| {
            if let Some(v) = v
                && let Err(why) = f(&v.value)
            {
                self.error(v.referenced.line(), Some(label), &why);
                ok = false;
            }
        };
        check(&raw.kind, &|v| {
            one_of("`type`", v, &["filter", "nat", "route"])
        });
        check(&raw.hook, &|v| one_of("`hook`", v, hooks(family)));
        check(&raw.priority, &check_priority);
        check(&raw.policy, &|v| one_of("`policy`", v, &["accept", "drop"]));
        check(&raw.device, &|v| {
            check_nft_text(v, false, false)
                .and_then(|()| match v.contains(char::is_whitespace) {
                    true => Err("a device name has no blanks".into()),
                    false => Ok(()),
                })
                .map_err(|why| format!("bad `device`: {why}"))
        });
        ok
    }

    /// A base chain's header as `type`, `hook` and `priority` make it (all
    /// three, or none for a regular chain, which then has no `policy` or
    /// `device` either); `Err` when they do not fit (said already).
    fn nft_base_header(
        &mut self,
        label: &str,
        line: u64,
        raw: &RawNftChain,
    ) -> Result<Option<NftBaseChain>, ()> {
        let at = |s: &Option<Spanned<String>>| s.as_ref().map(|s| s.referenced.line());
        match (&raw.kind, &raw.hook, &raw.priority) {
            (None, None, None) => {
                let mut ok = true;
                for (key, v) in [("policy", &raw.policy), ("device", &raw.device)] {
                    if let Some(l) = at(v) {
                        let msg = format!(
                            "`{key}` is only for base chains (with `type`, `hook` and `priority`)"
                        );
                        self.error(l, Some(label), &msg);
                        ok = false;
                    }
                }
                if ok { Ok(None) } else { Err(()) }
            }
            (Some(kind), Some(hook), Some(priority)) => Ok(Some(NftBaseChain {
                kind: kind.value.clone(),
                hook: hook.value.clone(),
                device: raw.device.as_ref().map(|d| d.value.clone()),
                priority: priority.value.trim().to_string(),
                policy: raw.policy.as_ref().map(|p| p.value.clone()),
            })),
            _ => {
                let l = at(&raw.kind)
                    .or(at(&raw.hook))
                    .or(at(&raw.priority))
                    .unwrap_or(line);
                let msg = "a base chain needs all of `type`, `hook` and `priority` (a regular \
                           chain none of them)";
                self.error(l, Some(label), msg);
                Err(())
            }
        }
    }

    fn nft_rules(&mut self, label: &str, raw: Spanned<Node>) -> Option<Vec<NftRuleWish>> {
        let items = match raw.value {
            Node::Seq(items) => items,
            Node::Null => Vec::new(),
            _ => {
                let msg = "`rules` must be a list of rules in nft's syntax (`- RULE` or \
                           `- NAME: RULE`)";
                self.error(raw.referenced.line(), Some(label), msg);
                return None;
            }
        };
        let mut out = Vec::new();
        let mut ok = true;
        let mut names = std::collections::HashMap::new();
        for (index, item) in items.into_iter().enumerate() {
            let rule = match self.nft_rule(label, item) {
                Ok(Some(rule)) => rule,
                Ok(None) => continue,
                Err(()) => {
                    ok = false;
                    continue;
                }
            };
            if self.nft_rule_fits(label, index, &rule, &mut names) {
                out.push(rule);
            } else {
                ok = false;
            }
        }
        ok.then_some(out)
    }

    /// One item of `rules`: `- RULE` or `- NAME: RULE`; `Err` when it is
    /// neither (said already).
    fn nft_rule(&mut self, label: &str, item: Spanned<Node>) -> Result<Option<NftRuleWish>, ()> {
        let line = item.referenced.line();
        let (name, text, line) = match item.value {
            Node::Scalar(text) => (None, text, line),
            Node::Map(entries) if entries.len() == 1 => {
                let Some((key, value)) = entries.into_iter().next() else {
                    return Ok(None);
                };
                let Some(text) = value.value.scalar() else {
                    let wish = format!("{label}/{}", key.value);
                    self.error(key.referenced.line(), Some(&wish), "the value must be text");
                    return Err(());
                };
                (Some(key.value), text, key.referenced.line())
            }
            _ => {
                let msg = "each rule must be text (`- RULE`) or a one-key map (`- NAME: \
                           RULE`); quote a rule that holds `: `";
                self.error(line, Some(label), msg);
                return Err(());
            }
        };
        Ok(Some(NftRuleWish { name, text, line }))
    }

    /// Checks a rule's name (good, and not taken already: `names` holds
    /// the names taken, with their lines) and its text; false when one is
    /// wrong (said already).
    fn nft_rule_fits(
        &mut self,
        label: &str,
        index: usize,
        rule: &NftRuleWish,
        names: &mut std::collections::HashMap<String, u64>,
    ) -> bool {
        let line = rule.line;
        let wish = format!("{label}/{}", rule.tag(index));
        if let Some(name) = &rule.name {
            if let Err(why) = check_rule_name(name) {
                let why = format!(
                    "{why}; a rule holding `: ` must be quoted, or it reads as `NAME: RULE`"
                );
                self.error(line, Some(&wish), &why);
                return false;
            }
            if let Some(first) = names.insert(name.clone(), line) {
                let msg = format!("duplicate rule name (first defined on line {first})");
                self.error(line, Some(&wish), &msg);
                return false;
            }
        }
        if let Err(why) = check_nft_text(&rule.text, true, true) {
            self.error(line, Some(&wish), &format!("bad rule text: {why}"));
            return false;
        }
        true
    }

    fn nft_set(
        &mut self,
        table: &str,
        name: Spanned<String>,
        raw: Spanned<Option<RawNftSet>>,
    ) -> Option<NftSetWish> {
        let line = name.referenced.line();
        let label = format!("{table}/set {}", name.value);
        let wish = Some(label.as_str());
        let mut ok = true;
        if let Err(why) = check_nft_name("set", &name.value) {
            self.error(line, wish, &why);
            ok = false;
        }
        let raw = raw.value.unwrap_or_default();
        let key = match (&raw.kind, &raw.type_of) {
            (Some(t), None) => Some(("type", t)),
            (None, Some(t)) => Some(("typeof", t)),
            (None, None) => {
                self.error(line, wish, "a set needs `type` or `typeof`");
                ok = false;
                None
            }
            (Some(_), Some(t)) => {
                let msg = "a set has `type` or `typeof`, not both";
                self.error(t.referenced.line(), wish, msg);
                ok = false;
                None
            }
        };
        let key = key.and_then(|(word, t)| {
            match check_nft_text(&t.value, false, false) {
                Ok(()) => return Some(format!("{word} {}", t.value.trim())),
                Err(why) => {
                    self.error(t.referenced.line(), wish, &format!("bad `{word}`: {why}"));
                    ok = false;
                }
            }
            None
        });
        let options = self.nft_set_options(&label, &raw);
        ok &= options.is_some();
        let flags = self.nft_set_flags(&label, raw.flags);
        ok &= flags.is_some();
        let elements = self.nft_elements(&label, raw.elements);
        ok &= elements.is_some();
        Some(NftSetWish {
            name: name.value,
            key: key?,
            flags: flags?,
            options: options?,
            elements: elements?,
            line,
        })
        .filter(|_| ok)
    }

    fn nft_set_flags(&mut self, label: &str, raw: Option<Spanned<Node>>) -> Option<Vec<String>> {
        let Some(raw) = raw else {
            return Some(Vec::new());
        };
        let line = raw.referenced.line();
        let words: Vec<String> = match raw.value {
            Node::Scalar(s) => s
                .split(',')
                .map(|w| w.trim().to_string())
                .filter(|w| !w.is_empty())
                .collect(),
            Node::Seq(items) => {
                let mut words = Vec::new();
                for item in items {
                    match item.value.scalar() {
                        Some(s) => words.push(s.trim().to_string()),
                        None => {
                            let msg = "`flags` is a list of words";
                            self.error(item.referenced.line(), Some(label), msg);
                            return None;
                        }
                    }
                }
                words
            }
            Node::Null => Vec::new(),
            Node::Map(_) => {
                self.error(line, Some(label), "`flags` is a list of words");
                return None;
            }
        };
        let mut ok = true;
        for w in &words {
            if let Err(why) = one_of("a set flag", w, SET_FLAGS) {
                self.error(line, Some(label), &why);
                ok = false;
            }
        }
        ok.then_some(words)
    }

    /// The set's other lines, in the order nft prints them.
    fn nft_set_options(&mut self, label: &str, raw: &RawNftSet) -> Option<Vec<String>> {
        let mut out = Vec::new();
        let mut ok = true;
        let mut take = |key: &str,
                        v: &Option<Spanned<String>>,
                        check: &dyn Fn(&str) -> Result<(), String>| {
            if let Some(v) = v {
                match check(v.value.trim()) {
                    Ok(()) => out.push(format!("{key} {}", v.value.trim())),
                    Err(why) => {
                        self.error(v.referenced.line(), Some(label), &format!("`{key}`: {why}"));
                        ok = false;
                    }
                }
            }
        };
        take("timeout", &raw.timeout, &check_duration);
        take("gc-interval", &raw.gc_interval, &check_duration);
        take("size", &raw.size, &|v| match v.parse::<u32>() {
            Ok(n) if n > 0 => Ok(()),
            _ => Err(format!("must be a positive number, not `{v}`")),
        });
        take("policy", &raw.policy, &|v| {
            one_of("`policy`", v, &["performance", "memory"])
        });
        if raw.counter.as_ref().is_some_and(|c| c.value) {
            out.push("counter".into());
        }
        if let Some(merge) = &raw.auto_merge
            && merge.value
        {
            out.push("auto-merge".into());
        }
        if let Some(c) = &raw.comment {
            if c.value.contains('"') || c.value.chars().any(char::is_control) {
                let msg = "`comment`: no `\"` or control characters";
                self.error(c.referenced.line(), Some(label), msg);
                ok = false;
            } else {
                out.push(format!("comment \"{}\"", c.value));
            }
        }
        ok.then_some(out)
    }

    fn nft_elements(&mut self, label: &str, raw: Option<Spanned<Members>>) -> Option<Vec<String>> {
        let Some(list) = raw else {
            return Some(Vec::new());
        };
        let list_line = list.referenced.line();
        let mut out = Vec::with_capacity(list.value.len());
        let mut ok = true;
        for (text, line) in list.value.iter() {
            let line = line.unwrap_or(list_line);
            let Some(text) = text else {
                self.error(line, Some(label), "an element must be a single value");
                ok = false;
                continue;
            };
            if let Err(why) = check_nft_text(text, false, false) {
                self.error(line, Some(label), &format!("bad element `{text}`: {why}"));
                ok = false;
                continue;
            }
            out.push(text.to_string());
        }
        ok.then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_stays_one_rule() {
        for good in [
            "tcp dport { 22, 80 } accept",
            "ct state established,related accept",
            "log prefix \"a; b {\" accept",
            "iifname \"docker0\" oifname != \"docker0\" drop",
        ] {
            assert_eq!(check_nft_text(good, true, true), Ok(()), "{good}");
        }
        for bad in [
            "accept }\ntable ip x {",
            "accept; add table ip x",
            "accept } table ip x {",
            "tcp dport { 22 accept",
            "log prefix \"x accept",
            "accept # comment",
            "",
        ] {
            assert!(check_nft_text(bad, true, true).is_err(), "{bad:?}");
        }
        assert!(check_nft_text("10.0.0.1, 10.0.0.2", false, false).is_err());
        assert!(check_nft_text("\"eth0\"", false, false).is_ok());
        assert!(check_nft_text("{ 10.0.0.1 }", false, false).is_err());
    }

    #[test]
    fn priorities() {
        for good in [
            "0",
            "-1",
            "filter",
            "filter - 1",
            "mangle+10",
            "srcnat + 5",
            "-300",
        ] {
            assert_eq!(check_priority(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "-",
            "filtre",
            "filter -",
            "filter * 2",
            "1.5",
            "filter - x",
        ] {
            assert!(check_priority(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        for good in ["1h", "30m", "1h30m", "500ms", "2d"] {
            assert_eq!(check_duration(good), Ok(()), "{good}");
        }
        for bad in ["", "h", "1x", "1 h", "-1h"] {
            assert!(check_duration(bad).is_err(), "{bad}");
        }
    }
}
