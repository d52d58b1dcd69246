//! What a wish says that the kernel tools are sure to refuse, or to do
//! otherwise than a wish means, found without asking them: so that `plan`
//! and `check` say it, with the file and the line, rather than an apply
//! half-way through.

use std::collections::HashMap;

use crate::state::Family;
use crate::state::rule::Rule;
use crate::state::set_type::{SetFamily, SetType};

/// The most elements a hash set holds unless its header says otherwise
/// (ipset's default `maxelem`).
pub(crate) const DEFAULT_MAXELEM: u128 = 65_536;

/// The most addresses a `bitmap:ip` set spans (ipset refuses a wider
/// `range`: "The range you specified exceeds the size limit").
const BITMAP_MAX: u128 = 65_536;

/// What the rules of a wishes file may name: its sets, by name.
pub(crate) type Declared = HashMap<String, Option<(SetType, SetFamily)>>;

/// The rule's words with the value of each `--comment` left out: a
/// comment is a name, whatever it looks like (`-6`, `-j`).
fn words(rule: &Rule) -> Vec<&str> {
    let mut out = Vec::new();
    let mut tokens = rule.tokens();
    while let Some(t) = tokens.next() {
        out.push(t);
        if t == "--comment" {
            tokens.next();
        }
    }
    out
}

/// Why the kernel tools would refuse `rule` in `table` of `family`, or
/// make something else of it than one rule, each as a message.
pub(crate) fn rule_errors(rule: &Rule, family: Family, table: &str) -> Vec<String> {
    let words = words(rule);
    let mut out = Vec::new();
    out.extend(other_family(&words, family));
    out.extend(verdict_in_table(&words, table));
    out.extend(address_lists(&words, family));
    out
}

/// `-6` in an IPv4 rule, `-4` in an IPv6 one: `iptables -A` refuses it,
/// and `iptables-restore` skips the line without a word.
fn other_family(words: &[&str], family: Family) -> Option<String> {
    let (flags, other) = match family {
        Family::V4 => (["-6", "--ipv6"], Family::V6),
        Family::V6 => (["-4", "--ipv4"], Family::V4),
    };
    let flag = words.iter().find(|w| flags.contains(w))?;
    let (cmd, version) = match family {
        Family::V4 => ("iptables", "IPv4"),
        Family::V6 => ("ip6tables", "IPv6"),
    };
    Some(format!(
        "`{flag}` in an {cmd} ({version}) rule: {cmd} refuses it, and {cmd}-restore skips the \
         rule without a word; write the rule under `{}`",
        other.command()
    ))
}

/// The rule's verdict where its table does not take it: DROP in nat
/// (iptables: "The nat table is not intended for filtering"), REJECT
/// outside filter (the kernel: a bare `Invalid argument`).
fn verdict_in_table(words: &[&str], table: &str) -> Option<String> {
    let at = words
        .iter()
        .position(|w| matches!(*w, "-j" | "--jump" | "-g" | "--goto"))?;
    let (how, target) = (words[at], *words.get(at + 1)?);
    match target {
        "DROP" if table == "nat" => Some(format!("`{how} DROP` in the nat table: {NAT_DROP}")),
        "REJECT" if table != "filter" => Some(format!(
            "`{how} REJECT` works only in the filter table (elsewhere the kernel refuses it \
             with a bare `Invalid argument`); use DROP here, or reject in filter"
        )),
        _ => None,
    }
}

/// Why nat takes no DROP, and where to drop instead.
pub(crate) const NAT_DROP: &str = "it is not for filtering, and iptables refuses DROP there; \
                                   drop packets in the filter, raw or mangle table";

/// `-s a,b` or `-d a,b`: iptables makes a rule of each address (and of
/// each address a host name resolves to), where a wish is one rule, so
/// the wish could never be found in sync.
fn address_lists(words: &[&str], family: Family) -> Option<String> {
    const SOURCE: &[&str] = &["-s", "--source", "--src"];
    const DEST: &[&str] = &["-d", "--destination", "--dst"];
    let mut i = 0;
    while i < words.len() {
        let w = words[i];
        let (opt, value, shown) = match w.split_once('=') {
            Some((opt, value)) if opt.starts_with("--") => (opt, value, w.to_string()),
            _ => match words.get(i + 1) {
                Some(value) => (w, *value, format!("{w} {value}")),
                None => break,
            },
        };
        i += 1;
        let dir = if SOURCE.contains(&opt) {
            "src"
        } else if DEST.contains(&opt) {
            "dst"
        } else {
            continue;
        };
        if !value.contains(',') {
            continue;
        }
        let members = value.split(',').collect::<Vec<_>>().join(", ");
        let header = match family {
            Family::V4 => String::new(),
            Family::V6 => "`header: family inet6`, ".into(),
        };
        return Some(format!(
            "`{shown}`: {} makes a rule of each address, where a wish is one rule; put the \
             addresses in a set (`type: hash:net`, {header}`members_equal: [{members}]`) and \
             match it with `-m set --match-set NAME {dir}`",
            family.command()
        ));
    }
    None
}

/// What a rule's set names say against the sets the file declares:
/// errors (a name ipset would read as an option; a set of the other
/// family) and warnings (a set declared nowhere, which iptables refuses
/// unless another program made it).
pub(crate) fn set_names(
    rule: &Rule,
    family: Family,
    declared: &Declared,
) -> (Vec<String>, Vec<String>) {
    const OPTIONS: &[&str] = &["--match-set", "--add-set", "--del-set", "--map-set"];
    let (mut errors, mut warnings) = (Vec::new(), Vec::new());
    let words = words(rule);
    for pair in words.windows(2) {
        let (opt, name) = (pair[0], pair[1]);
        if !OPTIONS.contains(&opt) {
            continue;
        }
        if name.starts_with('-') {
            errors.push(format!(
                "`{opt} {name}`: {DASH_NAME}; no such set can be wished"
            ));
            continue;
        }
        match declared.get(name) {
            None => warnings.push(format!(
                "`{opt} {name}`: no set `{name}` is declared under `ipsets`; iptables refuses \
                 the rule unless another program has made that set"
            )),
            Some(Some((kind, set_family))) if kind.holds_addresses() => {
                if let Some(msg) = wrong_family(opt, name, family, *set_family) {
                    errors.push(msg);
                }
            }
            Some(_) => {}
        }
    }
    (errors, warnings)
}

/// Why ipset takes no set name starting with `-`.
pub(crate) const DASH_NAME: &str =
    "ipset reads a set name starting with `-` as an option (`-exist`, `-q`, ...)";

fn wrong_family(opt: &str, name: &str, family: Family, set: SetFamily) -> Option<String> {
    let (holds, version, refused, other) = match (family, set) {
        (Family::V4, SetFamily::Inet6) => ("IPv6", "IPv4", "IPv6", "inet"),
        (Family::V6, SetFamily::Inet) => ("IPv4", "IPv6", "IPv4", "inet6"),
        _ => return None,
    };
    let header = match set {
        SetFamily::Inet => "family inet",
        SetFamily::Inet6 => "family inet6",
    };
    let other_cmd = match family {
        Family::V4 => "ip6tables",
        Family::V6 => "iptables",
    };
    Some(format!(
        "`{opt} {name}`: the set holds {holds} addresses (`{header}`), and {} refuses it in an \
         {version} rule (\"The protocol family of set {name} is {refused}, which is not \
         applicable\"); name it in an {other_cmd} rule, or name a set of family {other}",
        family.command()
    ))
}

/// More elements than a hash set holds: the kernel refuses the rest
/// (`Hash is full`) half-way through an apply. `maxelem` is the header's,
/// if it gives one. Nothing for `forceadd` sets, which make room.
pub(crate) fn over_maxelem(count: u128, maxelem: Option<u128>, forceadd: bool) -> Option<String> {
    let limit = maxelem.unwrap_or(DEFAULT_MAXELEM);
    if forceadd || count <= limit {
        return None;
    }
    let enough = count.checked_next_power_of_two().unwrap_or(count);
    Some(match maxelem {
        None => format!(
            "{count} elements (as the kernel stores them) but the set holds at most {limit} \
             (ipset's default maxelem): the kernel would refuse the rest (`Hash is full`); add \
             `maxelem {enough}` to the header"
        ),
        Some(m) => format!(
            "{count} elements (as the kernel stores them) but `maxelem {m}` holds at most {m}: \
             the kernel would refuse the rest (`Hash is full`); raise it to `maxelem {enough}`"
        ),
    })
}

/// A bitmap set's `range`, checked: the numbers it spans.
pub(crate) fn bitmap_range(
    kind: &SetType,
    range: &str,
    netmask: bool,
) -> Result<(u128, u128), String> {
    let (lo, hi) = kind.bitmap_range(range)?;
    let spans = hi - lo + 1;
    if kind.name() == "bitmap:ip" && !netmask && spans > BITMAP_MAX {
        return Err(format!(
            "`range {range}` spans {spans} addresses, and a bitmap:ip set at most {BITMAP_MAX} \
             (ipset: `The range you specified exceeds the size limit of the set type`); use \
             hash:ip or hash:net"
        ));
    }
    Ok((lo, hi))
}

/// A bitmap member outside its set's range.
pub(crate) fn outside_range(
    kind: &SetType,
    member: &str,
    written: &str,
    range: (&str, u128, u128),
) -> Option<String> {
    let (text, lo, hi) = range;
    let (a, b) = kind.bitmap_span(member)?;
    (a < lo || b > hi).then(|| {
        format!(
            "`{written}` is outside the set's `range {text}` (the kernel refuses it: `Element is \
             out of the range of the set`)"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str, family: Family, table: &str) -> Vec<String> {
        rule_errors(&Rule::parse(text).unwrap(), family, table)
    }

    #[test]
    fn a_comment_is_a_name_whatever_it_looks_like() {
        assert!(errors("-m comment --comment -6 -j ACCEPT", Family::V4, "filter").is_empty());
        assert!(errors("-m comment --comment -j -j ACCEPT", Family::V4, "nat").is_empty());
        assert_eq!(errors("--comment x -6", Family::V4, "filter").len(), 1);
    }

    #[test]
    fn address_lists_in_every_spelling() {
        for text in [
            "-s 1.1.1.1,2.2.2.2",
            "--source 1.1.1.1,2.2.2.2",
            "--src=1.1.1.1,2.2.2.2",
            "! -d 1.1.1.1,2.2.2.2",
            "--destination 1.1.1.1,2.2.2.2",
            "--dst 1.1.1.1,2.2.2.2",
        ] {
            assert_eq!(errors(text, Family::V4, "filter").len(), 1, "{text}");
        }
        for text in ["-s 10.0.0.0/8", "-p tcp -m multiport --dports 1,2", "-s"] {
            assert!(errors(text, Family::V4, "filter").is_empty(), "{text}");
        }
    }

    #[test]
    fn the_fix_for_a_full_set_is_a_power_of_two() {
        assert!(over_maxelem(65_536, None, false).is_none());
        assert!(over_maxelem(65_537, None, true).is_none());
        let msg = over_maxelem(100_000, None, false).unwrap();
        assert!(msg.contains("maxelem 131072"), "{msg}");
        let msg = over_maxelem(u128::MAX, Some(4), false).unwrap();
        assert!(msg.contains("raise it"), "{msg}");
    }
}
