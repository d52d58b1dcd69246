//! The parsers of what the kernel tools print: `iptables-save`,
//! `iptables -S CHAIN` and `ipset save`.

use std::borrow::Cow;
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
pub fn parse_iptables_save(text: &str) -> Result<Ruleset, ParseError> {
    let mut ruleset = Ruleset::default();
    let mut current: Option<(String, Table)> = None;
    // Chain name to index in the current table: hosts have thousands of
    // chains, so a linear search per rule line would be quadratic.
    let mut index: HashMap<String, usize, crate::state::rule::TextHash> = HashMap::default();
    // One buffer for splitting every rule line.
    let mut buf: Vec<u8> = Vec::new();
    for (idx, raw) in text.lines().enumerate() {
        let n = idx + 1;
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
            if current.is_some() {
                return Err(err(n, line, "table starts before the previous COMMIT"));
            }
            if name.is_empty() || name.contains(char::is_whitespace) {
                return Err(err(n, line, "bad table name"));
            }
            current = Some((name.to_string(), Table::default()));
            index.clear();
            continue;
        }
        let Some((table_name, table)) = current.as_mut() else {
            return Err(err(n, line, "expected `*TABLE` before this line"));
        };
        if line == "COMMIT" {
            if let Some((name, table)) = current.take() {
                ruleset.tables.insert(name, table);
            }
        } else if let Some(decl) = line.strip_prefix(':') {
            let mut words = decl.split_whitespace();
            let (Some(name), Some(policy)) = (words.next(), words.next()) else {
                return Err(err(n, line, "chain line needs a name and a policy"));
            };
            if index.insert(name.to_string(), table.chains.len()).is_some() {
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
        } else if line.starts_with("-A ") || line.starts_with("[") {
            // `[pkts:bytes] -A CHAIN ...` is the `iptables-save -c` form.
            let body = match line.strip_prefix('[') {
                Some(rest) => match rest.split_once("] ") {
                    Some((_, body)) => body,
                    None => return Err(err(n, line, "unterminated counters")),
                },
                None => line,
            };
            let split =
                split_rule_line(body, &mut buf).ok_or_else(|| err(n, line, "unbalanced quotes"))?;
            let Some((chain_name, rule)) = split else {
                return Err(err(n, line, "expected `-A CHAIN ...`"));
            };
            match index
                .get(&*chain_name)
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
        } else {
            return Err(err(n, line, "not an iptables-save line"));
        }
    }
    if let Some((name, _)) = current {
        return Err(err(
            text.lines().count(),
            "",
            format!("table {name} has no COMMIT (truncated output?)"),
        ));
    }
    Ok(ruleset)
}

/// Splits a saved rule line (`-A CHAIN ...`) into its chain and its rule
/// (`Some(None)` when the line does not start with `-A CHAIN`); `None` for
/// unbalanced quotes. Most lines hold no quotes or escapes and split on
/// blanks; the rest split as a shell would. Either way the words go into
/// `buf` joined by NUL, and the rule costs two allocations (its text and
/// the `Arc`), the chain none.
fn split_rule_line<'b>(line: &str, buf: &'b mut Vec<u8>) -> Option<Option<(Cow<'b, str>, Rule)>> {
    if line.as_bytes().contains(&0) {
        // No real rule holds a NUL; odd input takes the general path.
        let mut args = split_line(line)?;
        if args.len() < 2 || args[0] != "-A" {
            return Some(None);
        }
        let chain = std::mem::take(&mut args[1]);
        args.drain(..2);
        return Some(Some((Cow::Owned(chain), Rule::from_args(args))));
    }
    buf.clear();
    // The usual line, words apart by one blank and nothing to unquote,
    // is copied whole with NULs for blanks, in one pass.
    buf.extend_from_slice(line.as_bytes());
    let mut after_blank = true;
    let mut simple = true;
    for b in buf.iter_mut() {
        match *b {
            b' ' if !after_blank => {
                *b = 0;
                after_blank = true;
            }
            b'"' | b'\'' | b'\\' | 0 => simple = false,
            c if c.is_ascii_whitespace() => simple = false,
            _ => after_blank = false,
        }
        if !simple {
            break;
        }
    }
    if !simple || after_blank {
        buf.clear();
        if line.bytes().any(|b| matches!(b, b'"' | b'\'' | b'\\')) {
            crate::state::rule::split_joined(line, buf)?;
        } else {
            for word in line.split_ascii_whitespace() {
                if !buf.is_empty() {
                    buf.push(0);
                }
                buf.extend_from_slice(word.as_bytes());
            }
        }
    }
    // Splitting cuts only at ASCII bytes, so this is the line's own UTF-8.
    let joined = std::str::from_utf8(buf).ok()?;
    let mut words = joined.splitn(3, '\0');
    let (Some("-A"), Some(chain)) = (words.next(), words.next()) else {
        return Some(None);
    };
    let rule = match words.next() {
        Some(rest) => Rule::from_joined(rest.into()),
        None => Rule::from_tokens([]),
    };
    Some(Some((Cow::Borrowed(chain), rule)))
}

/// Splits a saved rule line into arguments. Most lines hold no quotes or
/// escapes and split on blanks; the rest go through shell-like splitting.
fn split_line(line: &str) -> Option<Vec<String>> {
    if line.contains(['"', '\'', '\\']) {
        return shlex::split(line);
    }
    Some(line.split_ascii_whitespace().map(String::from).collect())
}

/// Reads `iptables -S CHAIN` output: `-P`/`-N` lines, then `-A CHAIN ...`.
pub fn parse_chain_listing(text: &str, chain: &str) -> Result<Chain, ParseError> {
    let mut out = Chain {
        policy: None,
        rules: Vec::new(),
    };
    for (idx, raw) in text.lines().enumerate() {
        let n = idx + 1;
        let line = raw.trim_end();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let args = shlex::split(line).ok_or_else(|| err(n, line, "unbalanced quotes"))?;
        match args.as_slice() {
            [op, name, policy] if op == "-P" && name == chain => out.policy = Some(policy.clone()),
            [op, name] if op == "-N" && name == chain => {}
            [op, name, ..] if op == "-A" && name == chain => {
                out.rules.push(Rule::from_args(args[2..].to_vec()));
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
pub struct IpsetSaveReader {
    sets: BTreeMap<String, Ipset>,
    /// The number of the last line read.
    n: usize,
    shortcut: bool,
}

impl Default for IpsetSaveReader {
    fn default() -> Self {
        IpsetSaveReader {
            sets: BTreeMap::new(),
            n: 0,
            shortcut: true,
        }
    }
}

impl IpsetSaveReader {
    /// Reads the next line, without its line break (as `str::lines` gives
    /// it).
    pub fn line(&mut self, raw: &str) -> Result<(), ParseError> {
        self.n += 1;
        let (n, sets) = (self.n, &mut self.sets);
        // Nearly every line of a big set: `add`, the name and the element,
        // one space apart, nothing to trim, no fourth word (so no comment:
        // see below). Read as the general case below reads it.
        if self.shortcut
            && let Some((name, element)) = plain_add(raw)
            && name != "comment"
        {
            return match sets.get_mut(name) {
                Some(set) => {
                    set.members.push(element.to_string());
                    Ok(())
                }
                None => Err(err(n, raw, format!("member for unknown set {name}"))),
            };
        }
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            return Ok(());
        }
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("create"), Some(name), Some(kind)) => {
                let set = Ipset {
                    kind: kind.to_string(),
                    options: words.map(String::from).collect(),
                    members: Vec::new(),
                    comments: BTreeMap::new(),
                };
                if sets.insert(name.to_string(), set).is_some() {
                    return Err(err(n, line, format!("set {name} created twice")));
                }
            }
            (Some("add"), Some(name), Some(element)) => match sets.get_mut(name) {
                Some(set) => {
                    set.members.push(element.to_string());
                    // ` comment ` can only be in a line of three words as
                    // its second (the set's name): most lines skip the
                    // search.
                    let more = words.next().is_some();
                    if (more || name == "comment") && line.contains(" comment ") {
                        let words =
                            shlex::split(line).ok_or_else(|| err(n, line, "unbalanced quotes"))?;
                        if words.get(2).map(String::as_str) != Some(element) {
                            return Err(err(n, line, "unexpected characters around the member"));
                        }
                        // After the element, which may itself be `comment`
                        // (a list:set member).
                        if let Some(at) = words
                            .iter()
                            .skip(3)
                            .position(|w| w == "comment")
                            .map(|at| at + 3)
                            && let Some(c) = words.get(at + 1)
                        {
                            set.comments.insert(element.to_string(), c.clone());
                        }
                    }
                }
                None => return Err(err(n, line, format!("member for unknown set {name}"))),
            },
            _ => {
                return Err(err(
                    n,
                    line,
                    "expected `create NAME TYPE` or `add NAME MEMBER`",
                ));
            }
        }
        Ok(())
    }

    /// The sets read.
    pub fn finish(self) -> BTreeMap<String, Ipset> {
        self.sets
    }
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

    proptest::proptest! {
        /// The one-pass splitter reads every line as the plain one did:
        /// `split_line`, then `-A CHAIN` off the front.
        #[test]
        fn rule_lines_split_as_before(rest in "[ a-c\"'\\\\\t\0#]{0,16}", chain in "[A-Z\" ]{1,3}") {
            let line = format!("-A {chain} {rest}");
            let want = split_line(&line).map(|args| {
                (args.len() >= 2 && args[0] == "-A")
                    .then(|| (args[1].clone(), Rule::from_args(args[2..].to_vec())))
            });
            let mut buf = Vec::new();
            let got = split_rule_line(&line, &mut buf)
                .map(|split| split.map(|(chain, rule)| (chain.into_owned(), rule)));
            proptest::prop_assert_eq!(got, want);
        }
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
