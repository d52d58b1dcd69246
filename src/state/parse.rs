//! The parsers of what the kernel tools print: `iptables-save`,
//! `iptables -S CHAIN` and `ipset save`.

use std::collections::{BTreeMap, HashMap};

use crate::state::rule::Rule;
use crate::state::text::escape_untrusted;
use crate::state::{Chain, Ipset, Ruleset, Table};

/// A line of saved state that could not be read. The line, and the names
/// from it that the message quotes, are the tool's text: shown escaped.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {}: {}", escape_untrusted(.message), escape_untrusted(.text))]
pub struct ParseError {
    pub line: usize,
    pub message: String,
    pub text: String,
}

fn err(line: usize, text: &str, message: impl Into<String>) -> ParseError {
    ParseError {
        line,
        message: message.into(),
        text: text.chars().take(200).collect(),
    }
}

/// Reads `iptables-save` or `ip6tables-save` output.
///
/// Names are printed as they are (a chain `x"y` is `-A x"y` and `-j x"y`),
/// other values that need it in double quotes with `\"`, `\\` and `\'`
/// escaped, and a value holding a line break runs on over lines: see
/// [`split_saved`]. A rule that cannot be split without guessing is kept
/// as [`Rule::opaque`], in its place: one odd rule of another program's
/// never stops the read.
pub fn parse_iptables_save(text: &str) -> Result<Ruleset, ParseError> {
    let mut tables = SavedTables::default();
    // One buffer for splitting every rule line.
    let mut buf: Vec<u8> = Vec::new();
    let mut lines = text.lines();
    let mut n = 0;
    while let Some(raw) = lines.next() {
        n += 1;
        let line = raw.trim_end();
        if line.starts_with('#') && line.contains("incompatible") && line.contains("'nft' tool") {
            // nft holds rules there that iptables cannot show: reading the
            // table as empty would have pyfw fight them blind.
            return Err(err(
                n,
                line,
                "a table holds rules iptables cannot represent",
            ));
        }
        if line.trim_start().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('*') {
            tables.start(n, line, name)?;
            continue;
        }
        if tables.current.is_none() {
            return Err(err(n, line, "expected `*TABLE` before this line"));
        }
        if line == "COMMIT" {
            tables.commit();
        } else if let Some(decl) = line.strip_prefix(':') {
            tables.declare(n, line, decl)?;
        } else if line.starts_with("-A ") || line.starts_with("[") {
            let skip = counters_width(n, line)?;
            let Some((chain_name, rule, more)) = read_rule(raw, skip, &lines, &mut buf) else {
                return Err(err(n, line, "expected `-A CHAIN ...`"));
            };
            skip_lines(&mut lines, &mut n, more);
            tables.append(n, line, chain_name, rule)?;
        } else {
            return Err(err(n, line, "not an iptables-save line"));
        }
    }
    tables.finish(text)
}

/// What [`parse_iptables_save`] has read so far: the tables committed, the
/// table being read.
#[derive(Default)]
struct SavedTables {
    ruleset: Ruleset,
    current: Option<(String, Table)>,
    /// Chain name to index in the current table: hosts have thousands of
    /// chains, so a linear search per rule line would be quadratic.
    index: HashMap<String, usize, crate::state::rule::TextHash>,
}

impl SavedTables {
    /// `*NAME`: a table starts.
    fn start(&mut self, n: usize, line: &str, name: &str) -> Result<(), ParseError> {
        if self.current.is_some() {
            return Err(err(n, line, "table starts before the previous COMMIT"));
        }
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(err(n, line, "bad table name"));
        }
        self.current = Some((name.to_string(), Table::default()));
        self.index.clear();
        Ok(())
    }

    /// `COMMIT`: the current table is done.
    fn commit(&mut self) {
        if let Some((name, table)) = self.current.take() {
            self.ruleset.tables.insert(name, table);
        }
    }

    /// `:NAME POLICY [p:b]` (`decl` without the colon): a chain name holds
    /// no blank.
    fn declare(&mut self, n: usize, line: &str, decl: &str) -> Result<(), ParseError> {
        let Some((table_name, table)) = self.current.as_mut() else {
            return Err(err(n, line, "expected `*TABLE` before this line"));
        };
        let mut words = decl.split_ascii_whitespace();
        let (Some(name), Some(policy)) = (words.next(), words.next()) else {
            return Err(err(n, line, "chain line needs a name and a policy"));
        };
        if self
            .index
            .insert(name.to_string(), table.chains.len())
            .is_some()
        {
            return Err(err(
                n,
                line,
                format!("chain {name} declared twice in {table_name}"),
            ));
        }
        let policy = (policy != "-").then(|| policy.to_string());
        table.chains.push((
            name.to_string(),
            Chain {
                policy,
                rules: Vec::new(),
            },
        ));
        Ok(())
    }

    /// A rule of the chain `chain_name`, declared earlier in this table.
    fn append(
        &mut self,
        n: usize,
        line: &str,
        chain_name: &str,
        rule: Rule,
    ) -> Result<(), ParseError> {
        let Some((_, table)) = self.current.as_mut() else {
            return Err(err(n, line, "expected `*TABLE` before this line"));
        };
        match self
            .index
            .get(chain_name)
            .and_then(|&i| table.chains.get_mut(i))
        {
            Some((_, chain)) => chain.rules.push(rule),
            None => {
                return Err(err(
                    n,
                    line,
                    format!("rule for undeclared chain {chain_name}"),
                ));
            }
        }
        Ok(())
    }

    /// The end of the text: every table committed.
    fn finish(self, text: &str) -> Result<Ruleset, ParseError> {
        if let Some((name, _)) = self.current {
            return Err(err(
                text.lines().count(),
                "",
                format!("table {name} has no COMMIT (truncated output?)"),
            ));
        }
        Ok(self.ruleset)
    }
}

/// How far a rule line's `-A` is from its start: past `[pkts:bytes] ` in
/// the `iptables-save -c` form, else 0.
fn counters_width(n: usize, line: &str) -> Result<usize, ParseError> {
    match line.strip_prefix('[') {
        Some(rest) => match rest.split_once("] ") {
            Some((counters, _)) => Ok(counters.len() + 3),
            None => Err(err(n, line, "unterminated counters")),
        },
        None => Ok(0),
    }
}

fn skip_lines(lines: &mut std::str::Lines<'_>, n: &mut usize, more: usize) {
    for _ in 0..more {
        lines.next();
        *n += 1;
    }
}

/// Options after which iptables prints a name as it is, never quoted: a
/// chain (`-j`, `-g`), an interface, a set. Such a word runs to the next
/// blank whatever it holds, a leading `"` included.
const RAW_AFTER: &[&[u8]] = &[
    b"-j",
    b"--jump",
    b"-g",
    b"--goto",
    b"-i",
    b"--in-interface",
    b"-o",
    b"--out-interface",
    b"--physdev-in",
    b"--physdev-out",
    b"--match-set",
    b"--add-set",
    b"--del-set",
    b"--map-set",
];

/// How splitting a saved rule went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Saved {
    /// Every word read: as many as the count.
    Words(usize),
    /// The text ends inside a quoted value: it runs on the next line.
    Open,
    /// A word that cannot be read without guessing.
    Unclear,
}

/// Splits the rule text of a saved line (after `-A CHAIN`) into words as
/// iptables printed them, appending them to `out` joined by NUL. Words
/// are apart by spaces. A word that starts with `"` is a quoted value
/// (`xtables_save_string`): up to the next `"` that is not escaped, a
/// backslash taking the next character as it is, and the closing quote
/// must end the word. Any other word is taken as it is printed: iptables
/// prints names (chains, interfaces, sets) without quotes, so `x"y`, `a\b`
/// and `#x` are words of their own, and after the options in [`RAW_AFTER`]
/// even a word starting with `"` is. A NUL, which no argument can hold,
/// makes the rule [`Saved::Unclear`].
fn split_saved(text: &str, out: &mut Vec<u8>) -> Saved {
    let b = text.as_bytes();
    let mut i = 0;
    let mut count = 0;
    let mut raw_next = false;
    loop {
        while b.get(i) == Some(&b' ') {
            i += 1;
        }
        if i >= b.len() {
            return Saved::Words(count);
        }
        if count > 0 {
            out.push(0);
        }
        count += 1;
        let start = out.len();
        if b[i] == b'"' && !raw_next {
            i += 1;
            loop {
                match b.get(i) {
                    None => return Saved::Open,
                    Some(0) => return Saved::Unclear,
                    Some(b'\\') => match b.get(i + 1) {
                        None => return Saved::Open,
                        Some(0) => return Saved::Unclear,
                        Some(&c) => {
                            out.push(c);
                            i += 2;
                        }
                    },
                    Some(b'"') => {
                        i += 1;
                        if !matches!(b.get(i), None | Some(b' ')) {
                            return Saved::Unclear;
                        }
                        break;
                    }
                    Some(&c) => {
                        out.push(c);
                        i += 1;
                    }
                }
            }
        } else {
            while let Some(&c) = b.get(i) {
                match c {
                    b' ' => break,
                    0 => return Saved::Unclear,
                    _ => out.push(c),
                }
                i += 1;
            }
        }
        raw_next = out.get(start..).is_some_and(|w| RAW_AFTER.contains(&w));
    }
}

/// A saved rule line, `-A CHAIN ...` from byte `skip` of `first` on (past
/// any counters), read with as many of the lines after it (`next`) as a
/// value that runs over lines takes: the chain, the rule and how many more
/// lines it took. `None` when the line does not start with `-A CHAIN`.
///
/// A rule that cannot be split without guessing is [`Rule::opaque`]; so is
/// one whose quote never closes, alone on its line.
fn read_rule<'a>(
    first: &'a str,
    skip: usize,
    next: &std::str::Lines<'_>,
    buf: &mut Vec<u8>,
) -> Option<(&'a str, Rule, usize)> {
    let body = first.get(skip..)?.strip_prefix("-A ")?;
    // A chain name holds no blank (iptables refuses one).
    let (chain, rest) = match body.find(|c: char| c.is_ascii_whitespace()) {
        Some(at) => (&body[..at], &body[at + 1..]),
        None => (body, ""),
    };
    if chain.is_empty() {
        return None;
    }
    let rule = match split_rule(rest.trim_end(), buf) {
        Saved::Words(count) => words_rule(buf, count),
        Saved::Unclear => Rule::opaque(rest.trim_end()),
        Saved::Open => {
            // A quoted value with a line break in it: read on.
            let mut text = rest.to_string();
            let mut ahead = next.clone();
            let mut more = 0;
            let rule = loop {
                let Some(line) = ahead.next() else {
                    break None;
                };
                more += 1;
                text.push('\n');
                text.push_str(line);
                match split_rule(text.trim_end(), buf) {
                    Saved::Words(count) => break Some(words_rule(buf, count)),
                    Saved::Open => {}
                    Saved::Unclear => break None,
                }
            };
            return Some(match rule {
                Some(rule) => (chain, rule, more),
                None => (chain, Rule::opaque(rest.trim_end()), 0),
            });
        }
    };
    Some((chain, rule, 0))
}

/// A rule as iptables-save prints it (after `-A CHAIN `), as
/// [`split_saved`] reads it back: names after [`RAW_AFTER`] options as
/// they are, other words bare when they hold nothing to quote, else in
/// double quotes with `"`, `\\` and `'` escaped. An opaque rule is its
/// text.
pub(crate) fn saved_rule_text(rule: &Rule) -> String {
    if rule.is_opaque() {
        return rule.to_string();
    }
    let mut out = String::new();
    let mut raw_next = false;
    for (i, tok) in rule.tokens().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let bare = !tok.is_empty()
            && !tok.starts_with('"')
            && !tok.bytes().any(|b| b.is_ascii_whitespace() || b == 0);
        if raw_next || bare {
            out.push_str(tok);
        } else {
            out.push('"');
            for c in tok.chars() {
                if matches!(c, '"' | '\\' | '\'') {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('"');
        }
        raw_next = RAW_AFTER.contains(&tok.as_bytes());
    }
    out
}

/// How many of the lines after it (`next`) the saved rule line `line`
/// (`-A CHAIN ...`) takes, as [`parse_iptables_save`] reads it: more than
/// none only for a quoted value holding a line break. For a reader that
/// skips some chains' lines unparsed, so that it skips or keeps a rule
/// whole.
pub fn lines_after(line: &str, next: &std::str::Lines<'_>, buf: &mut Vec<u8>) -> usize {
    if !line.contains('"') {
        return 0;
    }
    // Only a value left open takes more lines: the rule itself is made
    // only then (a Kubernetes save quotes a comment in each of 200,000
    // rules, and making each rule to throw it away was most of the cost of
    // skipping them).
    let rest = line.strip_prefix("-A ").and_then(|body| {
        let at = body.find(|c: char| c.is_ascii_whitespace())?;
        Some(&body[at + 1..])
    });
    match rest.map(|rest| split_rule(rest.trim_end(), buf)) {
        Some(Saved::Open) => read_rule(line, 0, next, buf).map_or(0, |(_, _, more)| more),
        _ => 0,
    }
}

/// [`split_saved`] into `buf`, emptied first.
fn split_rule(text: &str, buf: &mut Vec<u8>) -> Saved {
    buf.clear();
    if !text.as_bytes().contains(&b'"') && !text.as_bytes().contains(&0) {
        // The usual line: words apart by blanks, nothing quoted.
        let mut count = 0;
        for word in text.split(' ').filter(|w| !w.is_empty()) {
            if count > 0 {
                buf.push(0);
            }
            buf.extend_from_slice(word.as_bytes());
            count += 1;
        }
        return Saved::Words(count);
    }
    split_saved(text, buf)
}

/// The rule of the `count` words [`split_rule`] left in `buf`.
fn words_rule(buf: &[u8], count: usize) -> Rule {
    if count == 0 {
        return Rule::from_tokens([]);
    }
    // Splitting cuts only at ASCII bytes, so this is the line's own UTF-8.
    match std::str::from_utf8(buf) {
        Ok(joined) => Rule::from_joined(joined.into()),
        Err(_) => Rule::opaque(&String::from_utf8_lossy(buf)),
    }
}

/// Reads `iptables -S CHAIN` output: `-P`/`-N` lines, then `-A CHAIN ...`,
/// read as [`parse_iptables_save`] reads them.
pub fn parse_chain_listing(text: &str, chain: &str) -> Result<Chain, ParseError> {
    let mut out = Chain {
        policy: None,
        rules: Vec::new(),
    };
    let mut buf = Vec::new();
    let mut lines = text.lines();
    let mut n = 0;
    while let Some(raw) = lines.next() {
        n += 1;
        let line = raw.trim_end();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let policy = line
            .strip_prefix("-P ")
            .and_then(|rest| rest.strip_prefix(chain))
            .and_then(|rest| rest.strip_prefix(' '))
            .filter(|p| !p.is_empty() && !p.contains(' '));
        if let Some(policy) = policy {
            out.policy = Some(policy.to_string());
            continue;
        }
        if line.strip_prefix("-N ") == Some(chain) {
            continue;
        }
        match read_rule(raw, 0, &lines, &mut buf) {
            Some((name, rule, more)) if name == chain => {
                out.rules.push(rule);
                skip_lines(&mut lines, &mut n, more);
            }
            _ => return Err(err(n, line, format!("not a line of chain {chain}"))),
        }
    }
    Ok(out)
}

/// Reads `ipset save` output.
pub fn parse_ipset_save(text: &str) -> Result<BTreeMap<String, Ipset>, ParseError> {
    parse_ipset_save_with(text, true)
}

/// [`parse_ipset_save`]; `shortcut` reads a plain `add SET ELEMENT` line
/// without the general word splitting (off only to test that both read
/// alike).
fn parse_ipset_save_with(
    text: &str,
    shortcut: bool,
) -> Result<BTreeMap<String, Ipset>, ParseError> {
    let mut reader = IpsetSaveReader {
        shortcut,
        ..IpsetSaveReader::default()
    };
    for raw in text.lines() {
        reader.line(raw)?;
    }
    Ok(reader.finish())
}

/// Reads `ipset save` output a line at a time, as the tool prints it: a
/// 100,000-member set is then read while `ipset` is still listing it,
/// rather than after.
///
/// ipset prints names as they are, blanks and quotes included (`create q r
/// hash:ip`, `add x"y 10.0.0.1`), so a line's set is found among the sets
/// created before it, and a member's comment as ipset prints it: `comment
/// "TEXT"`, with nothing escaped (a comment cannot hold a `"`), running on
/// over lines if it holds a line break.
pub struct IpsetSaveReader {
    sets: BTreeMap<String, Ipset>,
    /// The number of the last line read.
    n: usize,
    shortcut: bool,
    /// A comment whose closing quote is still to come: its set, its
    /// member's element and the text so far.
    open_comment: Option<(String, String, String)>,
}

impl Default for IpsetSaveReader {
    fn default() -> Self {
        IpsetSaveReader {
            sets: BTreeMap::new(),
            n: 0,
            shortcut: true,
            open_comment: None,
        }
    }
}

impl IpsetSaveReader {
    /// Reads the next line, without its line break (as `str::lines` gives
    /// it).
    pub fn line(&mut self, raw: &str) -> Result<(), ParseError> {
        self.n += 1;
        if self.open_comment.is_some() {
            self.comment_goes_on(raw);
            return Ok(());
        }
        // Nearly every line of a big set: `add`, the name and the element,
        // one space apart, nothing to trim, no fourth word (so no comment:
        // see below). Read as the general case below reads it.
        if self.shortcut
            && let Some((name, element)) = plain_add(raw)
            && let Some(set) = self.sets.get_mut(name)
        {
            set.members.push(element);
            return Ok(());
        }
        // `body` keeps what a comment running on over lines ends with.
        let body = raw.trim_start();
        let line = body.trim_end();
        if line.is_empty() || line.starts_with('#') {
            return Ok(());
        }
        match line.strip_prefix("create ") {
            Some(rest) => self.create(line, rest),
            None => self.add(line, body),
        }
    }

    /// `create NAME TYPE OPTIONS...` (`rest` after `create `).
    fn create(&mut self, line: &str, rest: &str) -> Result<(), ParseError> {
        let n = self.n;
        let (name, kind, options) =
            create_parts(rest).ok_or_else(|| err(n, line, "expected `create NAME TYPE`"))?;
        let set = Ipset {
            kind: kind.to_string(),
            options: options.map(String::from).collect(),
            members: crate::state::Members::new(),
            comments: BTreeMap::new(),
        };
        if self.sets.insert(name.to_string(), set).is_some() {
            return Err(err(n, line, format!("set {name} created twice")));
        }
        Ok(())
    }

    /// `add NAME MEMBER...`, perhaps with a comment (`body` is the line
    /// with its trailing blanks, which a comment running on keeps).
    fn add(&mut self, line: &str, body: &str) -> Result<(), ParseError> {
        let (n, sets) = (self.n, &mut self.sets);
        let Some(rest) = line.strip_prefix("add ") else {
            return Err(err(
                n,
                line,
                "expected `create NAME TYPE` or `add NAME MEMBER`",
            ));
        };
        let Some((name, rest)) = known_set(sets, rest) else {
            let name = rest.split(' ').next().unwrap_or_default();
            return Err(err(n, line, format!("member for unknown set {name}")));
        };
        let rest = rest.trim_start_matches(' ');
        let element = rest.split(' ').next().unwrap_or_default();
        if element.is_empty() {
            return Err(err(n, line, "expected `add NAME MEMBER`"));
        }
        let name = name.to_string();
        let Some(set) = sets.get_mut(&name) else {
            return Err(err(n, line, format!("member for unknown set {name}")));
        };
        set.members.push(element);
        // ` comment "` follows the element and its plain options
        // (`timeout 30 packets 0 bytes 0`): the first one after the
        // element is it.
        let element_end = offset_in(line, element) + element.len();
        const OPEN: &str = " comment \"";
        let Some(found) = line[element_end..].find(OPEN) else {
            return Ok(());
        };
        let after = &body[element_end + found + OPEN.len()..];
        match after.find('"') {
            Some(end) => {
                set.comments
                    .insert(element.to_string(), after[..end].to_string());
            }
            None => {
                self.open_comment = Some((name, element.to_string(), after.to_string()));
            }
        }
        Ok(())
    }

    /// A line of a comment that runs on over lines (it holds a line
    /// break).
    fn comment_goes_on(&mut self, raw: &str) {
        let Some((set, element, mut text)) = self.open_comment.take() else {
            return;
        };
        text.push('\n');
        match raw.find('"') {
            Some(end) => {
                text.push_str(&raw[..end]);
                if let Some(s) = self.sets.get_mut(&set) {
                    s.comments.insert(element, text);
                }
            }
            None => {
                text.push_str(raw);
                self.open_comment = Some((set, element, text));
            }
        }
    }

    /// The sets read.
    pub fn finish(self) -> BTreeMap<String, Ipset> {
        self.sets
    }
}

/// A `create` line's name, type and options (the text after `create `):
/// the type is the first word that names one (`hash:...`, `bitmap:...`,
/// `list:...`), and the name all before it, blanks and all.
fn create_parts(rest: &str) -> Option<(&str, &str, impl Iterator<Item = &str>)> {
    let is_type = |w: &str| {
        w.split_once(':').is_some_and(|(method, parts)| {
            matches!(method, "hash" | "bitmap" | "list") && !parts.is_empty()
        })
    };
    let mut at = 0;
    let (name, tail) = loop {
        let space = rest.get(at..)?.find(' ')? + at;
        let tail = rest.get(space + 1..)?;
        if is_type(tail.split(' ').next().unwrap_or_default()) {
            break (rest.get(..space)?, tail);
        }
        at = space + 1;
    };
    let mut words = tail.split(' ').filter(|w| !w.is_empty());
    let kind = words.next()?;
    (!name.is_empty()).then_some((name, kind, words))
}

/// The set an `add` line names (`rest` is the text after `add `) and the
/// text after its name: a set created before, its name alone as the first
/// word, or the longest name with blanks that the line starts with.
fn known_set<'t>(sets: &BTreeMap<String, Ipset>, rest: &'t str) -> Option<(&'t str, &'t str)> {
    if let Some((first, after)) = rest.split_once(' ')
        && sets.contains_key(first)
    {
        return Some((first, after));
    }
    sets.keys()
        .filter(|name| name.contains(' '))
        .filter_map(|name| {
            let after = rest.strip_prefix(name.as_str())?.strip_prefix(' ')?;
            Some((&rest[..name.len()], after))
        })
        .max_by_key(|(name, _)| name.len())
}

/// Where `inner`, a part of `outer`, starts in it.
fn offset_in(outer: &str, inner: &str) -> usize {
    (inner.as_ptr() as usize).saturating_sub(outer.as_ptr() as usize)
}

/// `add NAME ELEMENT` with single spaces and words of printable ASCII
/// (no blank anywhere): its name and element.
fn plain_add(line: &str) -> Option<(&str, &str)> {
    let (name, element) = line.strip_prefix("add ")?.split_once(' ')?;
    let word = |w: &str| !w.is_empty() && w.bytes().all(|b| b.is_ascii_graphic());
    (word(name) && word(element)).then_some((name, element))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{render_ipsets, render_ruleset};

    /// The `add SET ELEMENT` shortcut reads what the general case reads,
    /// errors included, for lines around its edges.
    #[test]
    fn plain_add_lines_read_as_any_line() {
        let create = "create s hash:ip family inet\ncreate comment list:set\n";
        let lines = [
            "add s 10.0.0.1",
            "add s 10.0.0.1 ",
            " add s 10.0.0.1",
            "add  s 10.0.0.1",
            "add s  10.0.0.1",
            "add s 10.0.0.1 comment \"x y\"",
            "add s\t10.0.0.1",
            "add s 10.0.0.1\r",
            "add s \"10.0.0.1",
            "add comment s",
            "add comment comment",
            "add nope 10.0.0.1",
            "add s",
            "add s é",
            "add s \u{a0}10.0.0.1",
            "adds 10.0.0.1",
            "add s 10.0.0.1\u{7f}",
        ];
        for line in lines {
            for text in [format!("{create}{line}\n"), format!("{line}\n{create}")] {
                assert_eq!(
                    parse_ipset_save_with(&text, true),
                    parse_ipset_save_with(&text, false),
                    "{line:?}"
                );
            }
        }
    }

    const SAVE: &str = r#"# Generated by iptables-save v1.8.9 (nf_tables) on Sat Nov 28 14:31:08 2026
# Warning: iptables-legacy tables present, use iptables-legacy-save to see them
*filter
:INPUT DROP [39:2172]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [35:3776]
:f2b-sshd - [0:0]
:KUBE-SVC-ABC/x - [0:0]
[5:300] -A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A f2b-sshd -s 1.2.3.4/32 -j REJECT --reject-with icmp-port-unreachable
-A KUBE-SVC-ABC/x -m comment --comment "default/kubernetes:https cluster IP" -j RETURN
COMMIT
# Completed on Sat Nov 28 14:31:08 2026
"#;

    #[test]
    fn reads_counters_comments_and_odd_names() {
        let rs = parse_iptables_save(SAVE).unwrap();
        let filter = &rs.tables["filter"];
        assert_eq!(filter.chains.len(), 5);
        assert_eq!(
            filter.chain("INPUT").unwrap().policy.as_deref(),
            Some("DROP")
        );
        assert_eq!(filter.chain("f2b-sshd").unwrap().policy, None);
        let kube = filter.chain("KUBE-SVC-ABC/x").unwrap();
        assert_eq!(
            kube.rules[0].comment(),
            Some("default/kubernetes:https cluster IP")
        );
        assert_eq!(
            rs.chain("INPUT", "INPUT"),
            None,
            "a table name is not a chain"
        );
        assert_eq!(
            rs.chain("nat", "PREROUTING").unwrap().policy.as_deref(),
            Some("ACCEPT")
        );
    }

    /// What iptables 1.8.9 printed, nft and legacy alike, for another
    /// program's odd names and values.
    const ODD: &str = r##"*filter
:INPUT ACCEPT [0:0]
:#x - [0:0]
:a\b - [0:0]
:x"y - [0:0]
:x'y - [0:0]
:é - [0:0]
-A INPUT -j x"y
-A INPUT -j x'y
-A INPUT -j a\b
-A INPUT -j #x
-A INPUT -i "q -j ACCEPT
-A INPUT -m set --match-set s"q src -j ACCEPT
-A INPUT -m hashlimit --hashlimit-upto 1/sec --hashlimit-burst 5 --hashlimit-name h"q -j ACCEPT
-A INPUT -m comment --comment "c\"q" -j ACCEPT
-A INPUT -m comment --comment "c\'q" -j ACCEPT
-A INPUT -m comment --comment "c\\q" -j ACCEPT
-A INPUT -m comment --comment "c\\\"q" -j ACCEPT
-A INPUT -m comment --comment "#c" -j ACCEPT
-A INPUT -m comment --comment "" -j ACCEPT
-A INPUT -j LOG --log-prefix "p \"q\\ r\'"
-A INPUT -m comment --comment "nl
-A INPUT -j DROP" -j ACCEPT
-A INPUT -m recent --set --name "r -j ACCEPT
-A x"y -j RETURN
-A #x -j RETURN
-A é -j RETURN
COMMIT
"##;

    #[test]
    fn reads_names_as_printed_and_values_as_quoted() {
        let rs = parse_iptables_save(ODD).unwrap();
        let filter = &rs.tables["filter"];
        let names: Vec<&str> = filter.chains.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["INPUT", "#x", "a\\b", "x\"y", "x'y", "é"]);
        let input = &filter.chain("INPUT").unwrap().rules;
        let targets: Vec<_> = input[..4].iter().map(|r| r.target().unwrap()).collect();
        assert_eq!(targets, ["x\"y", "x'y", "a\\b", "#x"]);
        assert_eq!(input[4].args(), ["-i", "\"q", "-j", "ACCEPT"]);
        assert_eq!(input[5].sets().collect::<Vec<_>>(), ["s\"q"]);
        assert!(input[6].args().contains(&"h\"q".to_string()));
        let comments: Vec<_> = input[7..13].iter().map(|r| r.comment().unwrap()).collect();
        assert_eq!(comments, ["c\"q", "c'q", "c\\q", "c\\\"q", "#c", ""]);
        assert_eq!(input[13].args()[3], "p \"q\\ r'");
        // A comment holding a line break runs on over the next line.
        assert_eq!(input[14].comment(), Some("nl\n-A INPUT -j DROP"));
        // A quote that never closes: the rule is kept as text, in place,
        // and the lines after it are read as ever.
        assert!(input[15].is_opaque(), "{:?}", input[15]);
        assert_eq!(
            input[15].to_string(),
            "-m recent --set --name \"r -j ACCEPT"
        );
        assert_eq!(input[15].comment(), None);
        assert_eq!(input.len(), 16);
        assert_eq!(filter.chain("x\"y").unwrap().rules.len(), 1);
        assert_eq!(filter.chain("é").unwrap().rules.len(), 1);
        // `iptables -S` prints the same lines.
        let listing: String = ODD
            .lines()
            .filter(|l| l.starts_with("-A INPUT") || !l.starts_with(['-', ':', '*', 'C']))
            .map(|l| format!("{l}\n"))
            .collect();
        let chain = parse_chain_listing(&format!("-P INPUT ACCEPT\n{listing}"), "INPUT").unwrap();
        assert_eq!(&chain.rules, input);
        let odd = parse_chain_listing("-N x\"y\n-A x\"y -j RETURN\n", "x\"y").unwrap();
        assert_eq!(odd.rules[0].target(), Some("RETURN"));
        assert_eq!(parse_iptables_save(&render_ruleset(&rs)).unwrap(), rs);
    }

    #[test]
    fn a_rule_that_cannot_be_split_is_kept_as_text_not_an_error() {
        for rest in ["--foo \"a\"b -j ACCEPT", "--foo \"a", "--x a\0b"] {
            let text = format!(
                "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT {rest}\n-A INPUT -j DROP\nCOMMIT\n"
            );
            let rs = parse_iptables_save(&text).unwrap();
            let rules = &rs.tables["filter"].chain("INPUT").unwrap().rules;
            assert_eq!(rules.len(), 2, "{rest:?}");
            assert!(rules[0].is_opaque(), "{rest:?}");
            assert_eq!(rules[0], Rule::opaque(rest));
            assert_ne!(rules[0], Rule::from_tokens([rest]));
            assert_eq!(rules[1].target(), Some("DROP"));
            assert_eq!(parse_iptables_save(&render_ruleset(&rs)).unwrap(), rs);
        }
    }

    #[test]
    fn reads_member_comments_as_ipset_prints_them() {
        // ipset 7.17: no escapes in a comment (it cannot hold `"`), names
        // as they are, the comment after timeout and counters, before
        // skbinfo.
        let text = "create c hash:ip family inet hashsize 1024 maxelem 65536 comment bucketsize 12\n\
                    add c 10.0.0.1 comment \"a\\\"\n\
                    add c 10.0.0.2 comment \"a\\\\b c\"\n\
                    add c 10.0.0.3 comment \"x'y #z $w\"\n\
                    add c 10.0.0.4 comment \" lead  two\"\n\
                    add c 10.0.0.5\n\
                    add c 10.0.0.6 comment \"comment\"\n\
                    add c 10.0.0.7 comment \"two\nlines\"\n\
                    add c 10.0.0.8 timeout 49 packets 3 bytes 4 comment \"a b\" skbmark 0x1\n\
                    create q r hash:ip family inet\n\
                    add q r 1.1.1.1\n\
                    create x\"y hash:ip family inet\n\
                    add x\"y 1.1.1.2\n\
                    create comment list:set size 8 comment\n\
                    add comment c comment \"x y\"\n";
        let sets = parse_ipset_save(text).unwrap();
        let c = &sets["c"];
        assert_eq!(c.members.len(), 8);
        let got: Vec<(&str, &str)> = c
            .comments
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("10.0.0.1", "a\\"),
                ("10.0.0.2", "a\\\\b c"),
                ("10.0.0.3", "x'y #z $w"),
                ("10.0.0.4", " lead  two"),
                ("10.0.0.6", "comment"),
                ("10.0.0.7", "two\nlines"),
                ("10.0.0.8", "a b"),
            ]
        );
        assert_eq!(sets["q r"].members, ["1.1.1.1"]);
        assert_eq!(sets["q r"].kind, "hash:ip");
        assert_eq!(sets["x\"y"].members, ["1.1.1.2"]);
        assert_eq!(sets["comment"].comments["c"], "x y");
        assert_eq!(parse_ipset_save(&render_ipsets(&sets)).unwrap(), sets);
    }

    #[test]
    fn round_trips_through_render() {
        let rs = parse_iptables_save(SAVE).unwrap();
        assert_eq!(parse_iptables_save(&render_ruleset(&rs)).unwrap(), rs);
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse_iptables_save("*filter\n:INPUT ACCEPT [0:0]\nbogus\nCOMMIT\n").unwrap_err();
        assert_eq!(e.line, 3);
        let e = parse_iptables_save("*filter\n:INPUT ACCEPT [0:0]\n").unwrap_err();
        assert!(e.message.contains("no COMMIT"));
        let e = parse_iptables_save("*filter\n-A X -j ACCEPT\nCOMMIT\n").unwrap_err();
        assert_eq!(e.line, 2);
        let e = parse_ipset_save("add s 1.2.3.4\n").unwrap_err();
        assert_eq!(e.line, 1);
    }

    #[test]
    fn an_incompatible_table_is_an_error_not_an_empty_table() {
        let e =
            parse_iptables_save("# Table `filter' is incompatible, use 'nft' tool.\n").unwrap_err();
        assert_eq!(e.line, 1);
        assert!(e.message.contains("cannot represent"), "{e}");
    }

    #[test]
    fn reads_one_chain() {
        let c = parse_chain_listing(
            "-P INPUT DROP\n-A INPUT -m comment --comment \"a b\" -j ACCEPT\n",
            "INPUT",
        )
        .unwrap();
        assert_eq!(c.policy.as_deref(), Some("DROP"));
        assert_eq!(c.rules[0].comment(), Some("a b"));
        let user = parse_chain_listing("-N f2b-sshd\n", "f2b-sshd").unwrap();
        assert_eq!(
            user,
            Chain {
                policy: None,
                rules: vec![]
            }
        );
        assert!(parse_chain_listing("-A OTHER -j ACCEPT\n", "INPUT").is_err());
    }

    #[test]
    fn reads_ipset_save() {
        let sets = parse_ipset_save(
            "create allowed_hosts hash:ip family inet hashsize 1024 maxelem 65536\n\
             add allowed_hosts 192.168.122.193\nadd allowed_hosts 10.0.0.1 timeout 30\n",
        )
        .unwrap();
        let s = &sets["allowed_hosts"];
        assert_eq!(s.kind, "hash:ip");
        assert_eq!(s.members, vec!["192.168.122.193", "10.0.0.1"]);
        assert_eq!(render_ipsets(&sets).lines().count(), 3);
    }
}
