//! The built-in normaliser: rule text as `iptables-save` would print it.
//!
//! People write `-p tcp --dport 22 -j ACCEPT`; iptables prints
//! `-p tcp -m tcp --dport 22 -j ACCEPT`. Comparing the two as written would
//! see drift on every poll. When a kernel is at hand, pyfw learns each
//! wish's canonical text from iptables itself (see
//! [`crate::kernel::Backend::canonicalize`]); this module covers the
//! common forms for offline planning from saved dumps, where there is no
//! kernel to ask.

use std::net::IpAddr;

use crate::state::Family;
use crate::state::rule::Rule;

/// How rule text was compared, for the plan's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Comparison {
    /// Canonical forms learned from iptables itself.
    Kernel,
    /// The built-in normaliser of common forms.
    Builtin,
}

impl Comparison {
    pub fn describe(self) -> &'static str {
        match self {
            Comparison::Kernel => "rule text is compared in the canonical form iptables prints",
            Comparison::Builtin => {
                "rule text is compared through pyfw's built-in normaliser (no kernel to ask)"
            }
        }
    }
}

/// Options iptables prints first, in this order, whatever order they were
/// written in: `[!] -s`, `[!] -d`, `[!] -i`, `[!] -o`, `[!] -p`.
const LEADING: &[(&str, &[&str])] = &[
    ("-s", &["-s", "--source", "--src"]),
    ("-d", &["-d", "--destination", "--dst"]),
    ("-i", &["-i", "--in-interface"]),
    ("-o", &["-o", "--out-interface"]),
    ("-p", &["-p", "--protocol"]),
];

/// Options that make iptables load the protocol's match implicitly.
const PROTO_OPTS: &[(&str, &str)] = &[
    ("--dport", "--dport"),
    ("--destination-port", "--dport"),
    ("--sport", "--sport"),
    ("--source-port", "--sport"),
    ("--tcp-flags", "--tcp-flags"),
    ("--syn", "--syn"),
    ("--tcp-option", "--tcp-option"),
    ("--icmp-type", "--icmp-type"),
    ("--icmpv6-type", "--icmpv6-type"),
];

const CT_STATES: &[&str] = &[
    "INVALID",
    "NEW",
    "RELATED",
    "ESTABLISHED",
    "UNTRACKED",
    "SNAT",
    "DNAT",
];

const ICMP_TYPES: &[(&str, &str)] = &[
    ("echo-reply", "0"),
    ("destination-unreachable", "3"),
    ("source-quench", "4"),
    ("redirect", "5"),
    ("echo-request", "8"),
    ("time-exceeded", "11"),
    ("parameter-problem", "12"),
    ("timestamp-request", "13"),
    ("timestamp-reply", "14"),
    ("any", "any"),
];

/// Normalises a rule to the form `iptables-save` prints for the common cases.
pub fn normalize(rule: &Rule, family: Family) -> Rule {
    let args = rule.args();
    let mut leading: Vec<Option<Vec<String>>> = vec![None; LEADING.len()];
    let mut rest: Vec<String> = Vec::with_capacity(args.len());
    let mut i = 0;
    while i < args.len() {
        let negated = args[i] == "!";
        let at = if negated { i + 1 } else { i };
        let slot = args.get(at).and_then(|opt| {
            LEADING
                .iter()
                .position(|(_, names)| names.contains(&opt.as_str()))
        });
        match (slot, args.get(at + 1)) {
            (Some(k), Some(value)) if leading[k].is_none() => {
                let mut v = Vec::new();
                if negated {
                    v.push("!".to_string());
                }
                v.push(LEADING[k].0.to_string());
                v.push(match k {
                    0 | 1 => address(value, family),
                    4 => value.to_ascii_lowercase(),
                    _ => value.clone(),
                });
                leading[k] = Some(v);
                i = at + 2;
            }
            _ => {
                rest.push(args[i].clone());
                i += 1;
            }
        }
    }
    let proto = leading[4].as_ref().map(|v| v[v.len() - 1].clone());
    let rest = implicit_match(rest, proto.as_deref());
    let rest = fix_values(rest, family);
    let mut out: Vec<String> = leading.into_iter().flatten().flatten().collect();
    out.extend(rest);
    Rule::from_args(out)
}

/// `10.0.0.1` is printed `10.0.0.1/32`, and a network by its first address.
fn address(value: &str, family: Family) -> String {
    let (addr, prefix) = match value.split_once('/') {
        Some((a, p)) => (a, p.parse::<u32>().ok()),
        None => (value, None),
    };
    let Ok(ip) = addr.parse::<IpAddr>() else {
        // A host name or a dotted mask: leave it to iptables.
        return value.to_string();
    };
    let max = match (ip, family) {
        (IpAddr::V4(_), _) => 32,
        (IpAddr::V6(_), _) => 128,
    };
    let prefix = prefix.unwrap_or(max).min(max);
    let masked = match ip {
        IpAddr::V4(v4) => {
            let mask = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - prefix)
            };
            IpAddr::from(std::net::Ipv4Addr::from(u32::from(v4) & mask))
        }
        IpAddr::V6(v6) => {
            let mask = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - prefix)
            };
            IpAddr::from(std::net::Ipv6Addr::from(u128::from(v6) & mask))
        }
    };
    format!("{masked}/{prefix}")
}

/// Adds `-m tcp` (udp, icmp, ...) before the first option that loads it,
/// where iptables does, unless the rule names the match itself.
fn implicit_match(mut rest: Vec<String>, proto: Option<&str>) -> Vec<String> {
    let Some(proto) = proto else { return rest };
    let module = match proto {
        "tcp" | "udp" | "udplite" | "sctp" | "dccp" | "icmp" => proto,
        "ipv6-icmp" | "icmpv6" => "icmp6",
        _ => return rest,
    };
    for (from, to) in PROTO_OPTS {
        for tok in rest.iter_mut() {
            if tok == from {
                *tok = to.to_string();
            }
        }
    }
    let named = rest
        .windows(2)
        .any(|w| (w[0] == "-m" || w[0] == "--match") && w[1] == module);
    if named {
        return rest;
    }
    let first = rest.iter().position(|t| {
        PROTO_OPTS.iter().any(|(_, o)| t == o)
        // `! --dport 22`: the match goes before the `!`.
    });
    if let Some(mut at) = first {
        if at > 0 && rest[at - 1] == "!" {
            at -= 1;
        }
        rest.splice(at..at, ["-m".to_string(), module.to_string()]);
    }
    rest
}

/// Values iptables prints in a fixed form: state lists in kernel order,
/// ICMP type names as numbers, REJECT's default reply spelled out.
fn fix_values(mut rest: Vec<String>, family: Family) -> Vec<String> {
    for i in 0..rest.len() {
        let Some(value) = rest.get(i + 1).cloned() else {
            break;
        };
        match rest[i].as_str() {
            "--state" | "--ctstate" => {
                let mut states: Vec<String> =
                    value.split(',').map(|s| s.to_ascii_uppercase()).collect();
                states.sort_by_key(|s| CT_STATES.iter().position(|k| k == s).unwrap_or(99));
                rest[i + 1] = states.join(",");
            }
            "--icmp-type" if family == Family::V4 => {
                if let Some((_, n)) = ICMP_TYPES.iter().find(|(name, _)| *name == value) {
                    rest[i + 1] = n.to_string();
                }
            }
            _ => {}
        }
    }
    let target = rest
        .iter()
        .position(|t| t == "-j" || t == "--jump")
        .and_then(|i| rest.get(i + 1));
    if target.is_some_and(|t| t == "REJECT") && !rest.iter().any(|t| t == "--reject-with") {
        rest.push("--reject-with".into());
        rest.push(
            match family {
                Family::V4 => "icmp-port-unreachable",
                Family::V6 => "icmp6-port-unreachable",
            }
            .into(),
        );
    }
    rest
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(text: &str) -> String {
        normalize(&Rule::parse(text).unwrap(), Family::V4).to_string()
    }

    /// Each pair was checked against iptables 1.8.9, nft and legacy.
    #[test]
    fn matches_what_iptables_prints() {
        for (written, printed) in [
            (
                "-p tcp --dport 22 -j ACCEPT",
                "-p tcp -m tcp --dport 22 -j ACCEPT",
            ),
            (
                "-m state --state ESTABLISHED,RELATED -j ACCEPT",
                "-m state --state RELATED,ESTABLISHED -j ACCEPT",
            ),
            ("-s 10.0.0.1 -j ACCEPT", "-s 10.0.0.1/32 -j ACCEPT"),
            (
                "-p icmp --icmp-type echo-request -j ACCEPT",
                "-p icmp -m icmp --icmp-type 8 -j ACCEPT",
            ),
            (
                "--source 10.0.0.0/8 -i eth0 -j DROP",
                "-s 10.0.0.0/8 -i eth0 -j DROP",
            ),
            ("-j REJECT", "-j REJECT --reject-with icmp-port-unreachable"),
            (
                "-p udp --sport 53 -j ACCEPT",
                "-p udp -m udp --sport 53 -j ACCEPT",
            ),
            (
                "-m conntrack --ctstate NEW,ESTABLISHED -j ACCEPT",
                "-m conntrack --ctstate NEW,ESTABLISHED -j ACCEPT",
            ),
            (
                "-p tcp -m multiport --dports 80,443 -j ACCEPT",
                "-p tcp -m multiport --dports 80,443 -j ACCEPT",
            ),
            (
                "-i docker0 -s 172.17.0.0/24 -j ACCEPT",
                "-s 172.17.0.0/24 -i docker0 -j ACCEPT",
            ),
        ] {
            assert_eq!(n(written), printed, "{written}");
        }
    }

    #[test]
    fn leaves_canonical_text_alone() {
        for line in std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/spec/after-apply.save"
        ))
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("-A "))
        {
            let rule = line.split_once(' ').unwrap().1;
            assert_eq!(n(rule), rule);
        }
    }
}
