//! Lock-out lint: warnings before an apply that may cut the operator off.
//!
//! Pure: it looks at the wishes, the state read before the plan and the SSH
//! connection pyfw runs under (`SSH_CONNECTION`), and says, for each family
//! whose `filter/INPUT` will have a DROP policy:
//!
//! - when the wishes set that policy and no rule (wished, or already there
//!   and staying) accepts ESTABLISHED/RELATED traffic: replies to the host's
//!   own connections and open sessions would be dropped;
//! - when no rule accepts a new connection to the port of the SSH session
//!   (or a rule above drops it): the next login would fail.
//!
//! The lint judges only matches it understands (`-p`, `-s`, `-d`, `-i lo`,
//! `--dport`, `--dports`, `--ctstate`/`--state`, jumps to user chains) and
//! gives any other match the benefit of the doubt, so it warns only when a
//! lock-out is certain as far as it can tell; it is a seatbelt, and
//! `--confirm` is the airbag. Every warning suggests `--confirm`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use crate::state::ownership::{self, Owned};
use crate::state::rule::Rule;
use crate::state::{Family, State};
use crate::wishes::{RuleItem, Wishes};

/// The remedy every warning names.
pub const REMEDY: &str = "use `pyfw apply --confirm 30s` to have the change undone unless you \
                          confirm it from a new session";

/// `SSH_CONNECTION`: client address and port, server address and port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SshConnection {
    pub client: IpAddr,
    pub client_port: u16,
    pub server: IpAddr,
    pub server_port: u16,
}

impl SshConnection {
    /// Parses `client_ip client_port server_ip server_port`.
    pub fn parse(text: &str) -> Option<SshConnection> {
        let mut w = text.split_whitespace();
        let conn = SshConnection {
            client: w.next()?.parse().ok()?,
            client_port: w.next()?.parse().ok()?,
            server: w.next()?.parse().ok()?,
            server_port: w.next()?.parse().ok()?,
        };
        w.next().is_none().then_some(conn)
    }

    /// The connection this process runs under, if any.
    pub fn from_env() -> Option<SshConnection> {
        SshConnection::parse(&std::env::var("SSH_CONNECTION").ok()?)
    }

    fn family(&self) -> Family {
        match self.server {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

impl fmt::Display for SshConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |ip: &IpAddr, port: u16| match ip {
            IpAddr::V4(a) => format!("{a}:{port}"),
            IpAddr::V6(a) => format!("[{a}]:{port}"),
        };
        write!(
            f,
            "{} -> {}",
            show(&self.client, self.client_port),
            show(&self.server, self.server_port)
        )
    }
}

/// One warning, about one chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    /// `filter/INPUT` or `ip6tables:filter/INPUT`.
    pub chain: String,
    pub kind: Kind,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// INPUT drops, and nothing accepts ESTABLISHED/RELATED.
    NoEstablished,
    /// INPUT drops new connections to the SSH session's port.
    SshPortClosed,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.chain, self.message)
    }
}

/// The warnings for applying `wishes` to `state` from `ssh`.
pub fn lint(wishes: &Wishes, state: &State, ssh: Option<&SshConnection>) -> Vec<Warning> {
    let mut out = Vec::new();
    for family in [Family::V4, Family::V6] {
        let Some(wish) = wishes
            .chains
            .iter()
            .find(|c| c.family == family && c.table == "filter" && c.chain == "INPUT")
        else {
            continue;
        };
        let chains = Chains::after(wishes, state, family);
        let policy = wish
            .policy
            .clone()
            .or_else(|| {
                state
                    .ruleset(family)
                    .chain("filter", "INPUT")
                    .and_then(|c| c.policy.clone())
            })
            .unwrap_or_else(|| "ACCEPT".into());
        if policy != "DROP" {
            continue;
        }
        let label = wish.label();
        if wish.policy.as_deref() == Some("DROP")
            && !chains.any_rule("INPUT", 0, &mut |r| {
                let m = Matches::of(r);
                m.target.as_deref() == Some("ACCEPT") && m.accepts_established()
            })
        {
            out.push(Warning {
                chain: label.clone(),
                kind: Kind::NoEstablished,
                message: format!(
                    "the wishes set the policy to DROP, and no rule (wished or already there) \
                     accepts ESTABLISHED,RELATED traffic (e.g. `-m conntrack --ctstate \
                     RELATED,ESTABLISHED -j ACCEPT`): open sessions, including an SSH session, \
                     and replies to this host's own connections will be dropped; {REMEDY}"
                ),
            });
        }
        if let Some(conn) = ssh.filter(|c| c.family() == family)
            && chains.verdict("INPUT", conn, 0) != Verdict::Accept
        {
            out.push(Warning {
                chain: label,
                kind: Kind::SshPortClosed,
                message: format!(
                    "no rule accepts new connections to tcp port {port}, the port of the SSH \
                     session pyfw runs under (SSH_CONNECTION {conn}), and the policy will be \
                     DROP: the next SSH login will fail (wish e.g. `-p tcp --dport {port} -j \
                     ACCEPT` above any rule that drops it); {REMEDY}",
                    port = conn.server_port
                ),
            });
        }
    }
    out
}

/// The filter table's chains of one family as the apply leaves them: a
/// wished chain's wished rules first, then the rules already there that
/// stay (not withdrawn wishes).
struct Chains {
    chains: BTreeMap<String, Vec<Rule>>,
}

impl Chains {
    fn after(wishes: &Wishes, state: &State, family: Family) -> Chains {
        let mut chains: BTreeMap<String, Vec<Rule>> = BTreeMap::new();
        let owned: BTreeSet<(String, String)> = ownership::read(state)
            .into_iter()
            .filter_map(|o| match o {
                Owned::Rule {
                    family: f,
                    table,
                    chain,
                    name,
                    ..
                } if f == family && table == "filter" => Some((chain, name)),
                _ => None,
            })
            .collect();
        if let Some(t) = state.ruleset(family).tables.get("filter") {
            for (name, c) in &t.chains {
                chains.insert(name.clone(), c.rules.clone());
            }
        }
        for wish in wishes
            .chains
            .iter()
            .filter(|c| c.family == family && c.table == "filter")
        {
            let Some(items) = &wish.rules else {
                chains.entry(wish.chain.clone()).or_default();
                continue;
            };
            let names: BTreeSet<&str> = wish.rule_names().collect();
            let mut rules: Vec<Rule> = items
                .iter()
                .filter_map(|i| match i {
                    RuleItem::Named(r) => Some(r.rule.clone()),
                    RuleItem::Match(_) => None,
                })
                .collect();
            let existing = chains.remove(&wish.chain).unwrap_or_default();
            rules.extend(existing.into_iter().filter(|r| match r.comment() {
                Some(c) => {
                    !names.contains(c) && !owned.contains(&(wish.chain.clone(), c.to_string()))
                }
                None => true,
            }));
            chains.insert(wish.chain.clone(), rules);
        }
        Chains { chains }
    }

    /// Whether some rule of `chain`, or of a chain it jumps to, satisfies
    /// `f`. A jump to a chain pyfw did not read may: it counts.
    fn any_rule(&self, chain: &str, depth: usize, f: &mut dyn FnMut(&Rule) -> bool) -> bool {
        let Some(rules) = self.chains.get(chain) else {
            return true;
        };
        if depth > 8 {
            return true;
        }
        rules.iter().any(|r| {
            f(r) || Matches::of(r)
                .target
                .as_deref()
                .filter(|t| is_user_chain(t))
                .is_some_and(|t| self.any_rule(t, depth + 1, f))
        })
    }

    /// What `chain` does with the first packet of a new connection like
    /// `conn`'s.
    fn verdict(&self, chain: &str, conn: &SshConnection, depth: usize) -> Verdict {
        let Some(rules) = self.chains.get(chain) else {
            return Verdict::Accept; // Not read: give it the benefit of the doubt.
        };
        if depth > 8 {
            return Verdict::Accept;
        }
        for r in rules {
            let m = Matches::of(r);
            let target = m.target.as_deref().unwrap_or("");
            match (target, m.matches(conn)) {
                ("ACCEPT", Match::Yes | Match::Maybe) => return Verdict::Accept,
                ("DROP" | "REJECT", Match::Yes) => return Verdict::Drop,
                (t, Match::Yes | Match::Maybe) if is_user_chain(t) => {
                    match self.verdict(t, conn, depth + 1) {
                        Verdict::Continue => {}
                        v => return v,
                    }
                }
                ("RETURN", Match::Yes) if depth > 0 => return Verdict::Continue,
                _ => {}
            }
        }
        Verdict::Continue
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Accept,
    Drop,
    /// Fell off the end (the policy decides) or returned.
    Continue,
}

/// Targets that are extensions, not chains.
const EXTENSIONS: &[&str] = &[
    "ACCEPT",
    "DROP",
    "REJECT",
    "RETURN",
    "LOG",
    "NFLOG",
    "MARK",
    "CONNMARK",
    "QUEUE",
    "NFQUEUE",
    "TRACE",
    "AUDIT",
    "CT",
    "NOTRACK",
    "SET",
    "TCPMSS",
    "DNAT",
    "SNAT",
    "MASQUERADE",
    "REDIRECT",
];

fn is_user_chain(target: &str) -> bool {
    !target.is_empty() && !EXTENSIONS.contains(&target)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Match {
    Yes,
    No,
    /// A match the lint does not understand.
    Maybe,
}

/// The matches of a rule the lint understands.
#[derive(Debug, Default)]
struct Matches {
    /// (negated, value)
    protocol: Option<(bool, String)>,
    source: Option<(bool, String)>,
    destination: Option<(bool, String)>,
    in_interface: Option<(bool, String)>,
    /// Destination ports: single, range or list (multiport).
    dports: Option<(bool, String)>,
    states: Option<(bool, String)>,
    target: Option<String>,
    /// Some match or option the lint cannot judge.
    unknown: bool,
}

impl Matches {
    fn of(rule: &Rule) -> Matches {
        let mut m = Matches::default();
        let args = rule.args();
        let mut i = 0;
        let mut negate = false;
        while i < args.len() {
            let a = args[i].as_str();
            if a == "!" {
                negate = true;
                i += 1;
                continue;
            }
            // The value, and a `!` written after the option (old syntax).
            let value = |i: &mut usize| -> (bool, String) {
                let mut neg = negate;
                let mut v = args.get(*i + 1).cloned().unwrap_or_default();
                if v == "!" {
                    neg = !neg;
                    *i += 1;
                    v = args.get(*i + 1).cloned().unwrap_or_default();
                }
                *i += 2;
                (neg, v)
            };
            match a {
                "-p" | "--protocol" => m.protocol = Some(value(&mut i)),
                "-s" | "--source" | "--src" => m.source = Some(value(&mut i)),
                "-d" | "--destination" | "--dst" => m.destination = Some(value(&mut i)),
                "-i" | "--in-interface" => m.in_interface = Some(value(&mut i)),
                "--dport" | "--destination-port" | "--dports" | "--destination-ports" => {
                    m.dports = Some(value(&mut i))
                }
                "--ctstate" | "--state" => m.states = Some(value(&mut i)),
                "-j" | "--jump" | "-g" | "--goto" => m.target = Some(value(&mut i).1),
                "-m" | "--match" => {
                    let (_, name) = value(&mut i);
                    if !matches!(
                        name.as_str(),
                        "tcp" | "udp" | "multiport" | "conntrack" | "state" | "comment"
                    ) {
                        m.unknown = true;
                    }
                }
                "--comment" | "--sport" | "--source-port" | "--sports" => {
                    let _ = value(&mut i);
                }
                _ if a.starts_with('-') => {
                    // Another match's option: skip it and its values.
                    m.unknown = true;
                    i += 1;
                    while i < args.len() && !args[i].starts_with('-') && args[i] != "!" {
                        i += 1;
                    }
                }
                _ => i += 1,
            }
            negate = false;
        }
        m
    }

    fn accepts_established(&self) -> bool {
        matches!(&self.states, Some((false, s)) if s.split(',').any(|x| x == "ESTABLISHED"))
    }

    /// Whether the rule matches the first packet of a new connection like
    /// `conn`'s.
    fn matches(&self, conn: &SshConnection) -> Match {
        let mut result = if self.unknown {
            Match::Maybe
        } else {
            Match::Yes
        };
        let mut judge = |m: Match| match m {
            Match::No => result = Match::No,
            Match::Maybe if result == Match::Yes => result = Match::Maybe,
            _ => {}
        };
        if let Some((neg, p)) = &self.protocol {
            let tcp = matches!(p.as_str(), "tcp" | "6" | "all" | "0");
            judge(yes_if(tcp != *neg));
        }
        if let Some((neg, net)) = &self.source {
            judge(negated(*neg, in_network(&conn.client, net)));
        }
        if let Some((neg, net)) = &self.destination {
            judge(negated(*neg, in_network(&conn.server, net)));
        }
        if let Some((neg, name)) = &self.in_interface {
            // SSH to a non-loopback address never comes in on lo.
            if name == "lo" {
                judge(yes_if(conn.server.is_loopback() != *neg));
            } else {
                judge(Match::Maybe);
            }
        }
        if let Some((neg, ports)) = &self.dports {
            judge(negated(*neg, port_in(conn.server_port, ports)));
        }
        if let Some((neg, states)) = &self.states {
            let new = states.split(',').any(|s| s == "NEW");
            judge(yes_if(new != *neg));
        }
        result
    }
}

fn yes_if(b: bool) -> Match {
    if b { Match::Yes } else { Match::No }
}

fn negated(neg: bool, m: Match) -> Match {
    match (neg, m) {
        (_, Match::Maybe) => Match::Maybe,
        (false, m) => m,
        (true, Match::Yes) => Match::No,
        (true, Match::No) => Match::Yes,
    }
}

/// Whether `ip` is in `net` (`a.b.c.d`, `a.b.c.d/len`, `a.b.c.d/mask`, or
/// a comma-separated list of those).
fn in_network(ip: &IpAddr, net: &str) -> Match {
    let mut any_maybe = false;
    for part in net.split(',') {
        let (addr, len) = part.split_once('/').unwrap_or((part, ""));
        let Ok(addr) = addr.parse::<IpAddr>() else {
            any_maybe = true; // A host name: iptables resolved it.
            continue;
        };
        let bits = |a: &IpAddr| -> (u128, u32) {
            match a {
                IpAddr::V4(v) => (u128::from(u32::from(*v)), 32),
                IpAddr::V6(v) => (u128::from(*v), 128),
            }
        };
        let ((a, width), (b, other)) = (bits(&addr), bits(ip));
        if width != other {
            continue;
        }
        let prefix = match len {
            "" => width,
            l => match l.parse::<u32>() {
                Ok(n) if n <= width => n,
                _ => match l.parse::<IpAddr>() {
                    Ok(mask) => bits(&mask).0.count_ones(),
                    Err(_) => {
                        any_maybe = true;
                        continue;
                    }
                },
            },
        };
        let mask = if prefix == 0 {
            0
        } else {
            (u128::MAX >> (128 - width)) & !((1u128 << (width - prefix)) - 1)
        };
        if a & mask == b & mask {
            return Match::Yes;
        }
    }
    if any_maybe { Match::Maybe } else { Match::No }
}

/// Whether `port` is in `ports` (`22`, `1000:2000`, `22,80,8000:8080`).
fn port_in(port: u16, ports: &str) -> Match {
    let mut any_maybe = false;
    for part in ports.split(',') {
        let num = |s: &str| -> Option<u16> {
            match s {
                "ssh" => Some(22),
                s => s.parse().ok(),
            }
        };
        let (lo, hi) = match part.split_once(':') {
            Some((a, b)) => (
                if a.is_empty() { Some(0) } else { num(a) },
                if b.is_empty() { Some(u16::MAX) } else { num(b) },
            ),
            None => (num(part), num(part)),
        };
        match (lo, hi) {
            (Some(lo), Some(hi)) if (lo..=hi).contains(&port) => return Match::Yes,
            (Some(_), Some(_)) => {}
            _ => any_maybe = true,
        }
    }
    if any_maybe { Match::Maybe } else { Match::No }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::state::parse_iptables_save;

    fn wishes(text: &str) -> Wishes {
        crate::wishes::parse(text, Path::new("w.yaml")).unwrap()
    }

    fn state(save: &str) -> State {
        State {
            v4: parse_iptables_save(save).unwrap(),
            ..State::default()
        }
    }

    fn ssh() -> SshConnection {
        SshConnection::parse("192.0.2.1 50022 192.0.2.10 22").unwrap()
    }

    fn kinds(w: &[Warning]) -> Vec<Kind> {
        w.iter().map(|w| w.kind).collect()
    }

    const EMPTY: &str = "*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n";

    fn input(policy: &str, rules: &[&str]) -> String {
        let mut t = format!(
            "pyfw_wishes:\n  iptables:\n    filter:\n      INPUT:\n        default_action: \
             {policy}\n        rules:\n"
        );
        for (i, r) in rules.iter().enumerate() {
            t.push_str(&format!("        - r{i}: '{r}'\n"));
        }
        if rules.is_empty() {
            t = t.replace("        rules:\n", "");
        }
        t
    }

    const EST: &str = "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT";
    const SSH: &str = "-p tcp --dport 22 -j ACCEPT";

    #[test]
    fn parses_ssh_connection() {
        assert_eq!(
            SshConnection::parse("2001:db8::1 4711 2001:db8::2 2222").map(|c| c.server_port),
            Some(2222)
        );
        assert_eq!(SshConnection::parse("1.2.3.4 1 5.6.7.8"), None);
        assert_eq!(SshConnection::parse("x 1 5.6.7.8 22"), None);
        assert_eq!(ssh().to_string(), "192.0.2.1:50022 -> 192.0.2.10:22");
    }

    #[test]
    fn drop_without_established_or_ssh_warns_twice_and_names_confirm() {
        let w = lint(&wishes(&input("DROP", &[])), &state(EMPTY), Some(&ssh()));
        assert_eq!(kinds(&w), [Kind::NoEstablished, Kind::SshPortClosed]);
        for warning in &w {
            assert!(
                warning.to_string().starts_with("filter/INPUT: "),
                "{warning}"
            );
            assert!(warning.message.contains("--confirm"), "{warning}");
        }
        assert!(w[1].message.contains("tcp port 22"), "{}", w[1]);
    }

    #[test]
    fn a_safe_wish_is_quiet() {
        let w = lint(
            &wishes(&input("DROP", &[EST, SSH])),
            &state(EMPTY),
            Some(&ssh()),
        );
        assert_eq!(w, []);
        // `-m state`, a multiport list and a range count too.
        let rules = [
            "-m state --state ESTABLISHED -j ACCEPT",
            "-p tcp -m multiport --dports 80,443,20:30 -j ACCEPT",
        ];
        let w = lint(&wishes(&input("DROP", &rules)), &state(EMPTY), Some(&ssh()));
        assert_eq!(w, []);
        // ACCEPT policy: nothing to warn about.
        let w = lint(&wishes(&input("ACCEPT", &[])), &state(EMPTY), Some(&ssh()));
        assert_eq!(w, []);
        // No SSH session: only the ESTABLISHED check.
        let w = lint(&wishes(&input("DROP", &[SSH])), &state(EMPTY), None);
        assert_eq!(kinds(&w), [Kind::NoEstablished]);
    }

    #[test]
    fn existing_rules_count() {
        let save = format!(
            "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT {}\n-A INPUT -p tcp -m tcp --dport 22 -j \
             ACCEPT\nCOMMIT\n",
            "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
        );
        let w = lint(&wishes(&input("DROP", &[])), &state(&save), Some(&ssh()));
        assert_eq!(w, []);
    }

    #[test]
    fn the_ssh_port_is_judged_by_what_the_rules_match() {
        let cases: &[(&[&str], bool)] = &[
            (&["-p tcp --dport 2222 -j ACCEPT"], false),
            (&["-p udp --dport 22 -j ACCEPT"], false),
            (&["-i lo -j ACCEPT"], false),
            (&["-s 198.51.100.0/24 -p tcp --dport 22 -j ACCEPT"], false),
            (&["-s 192.0.2.0/24 -p tcp --dport 22 -j ACCEPT"], true),
            (&["-s 192.0.2.0/255.255.255.0 -j ACCEPT"], true),
            (&["! -s 192.0.2.1 -p tcp --dport 22 -j ACCEPT"], false),
            (&["-d 192.0.2.10/32 -p tcp --dport ssh -j ACCEPT"], true),
            (&["-p tcp --dport 22 -j DROP", SSH], false),
            (
                &["-p tcp --dport 22 -m set --match-set ok src -j ACCEPT"],
                true,
            ),
            (
                &["-m conntrack --ctstate ESTABLISHED -p tcp --dport 22 -j ACCEPT"],
                false,
            ),
            (&["-p tcp --dport 1:1024 -j ACCEPT"], true),
        ];
        for (rules, open) in cases {
            let mut all = vec![EST];
            all.extend_from_slice(rules);
            let w = lint(&wishes(&input("DROP", &all)), &state(EMPTY), Some(&ssh()));
            assert_eq!(w.is_empty(), *open, "{rules:?}: {w:?}");
        }
    }

    #[test]
    fn jumps_to_user_chains_are_followed() {
        let text = "pyfw_wishes:\n  iptables:\n    filter:\n      INPUT:\n        \
                    default_action: DROP\n        rules:\n        - est: '-m conntrack \
                    --ctstate ESTABLISHED -j ACCEPT'\n        - mgmt: '-p tcp -j mgmt'\n      \
                    mgmt:\n        rules:\n        - ssh: '-p tcp --dport 22 -j ACCEPT'\n";
        assert_eq!(lint(&wishes(text), &state(EMPTY), Some(&ssh())), []);
        let closed = text.replace("--dport 22", "--dport 23");
        assert_eq!(
            kinds(&lint(&wishes(&closed), &state(EMPTY), Some(&ssh()))),
            [Kind::SshPortClosed]
        );
    }

    #[test]
    fn ipv6_sessions_are_judged_against_ip6tables() {
        let v6 = SshConnection::parse("2001:db8::1 5000 2001:db8::2 22").unwrap();
        // IPv4 INPUT drops everything; the session is IPv6: no SSH warning.
        let w = lint(&wishes(&input("DROP", &[EST])), &state(EMPTY), Some(&v6));
        assert_eq!(w, []);
        let text = "pyfw_wishes:\n  ip6tables:\n    filter:\n      INPUT:\n        \
                    default_action: DROP\n";
        let w = lint(&wishes(text), &State::default(), Some(&v6));
        assert_eq!(kinds(&w), [Kind::NoEstablished, Kind::SshPortClosed]);
        assert!(w[0].chain.starts_with("ip6tables:"), "{w:?}");
    }
}
