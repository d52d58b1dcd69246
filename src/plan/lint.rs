//! Lock-out lint: warnings before an apply that may cut the operator off.
//!
//! Pure: it looks at the wishes and at a [`Host`]: the state read before
//! the plan, with every chain the checked chains jump to, to any depth
//! ([`unread`] names what the state still lacks; `reconcile::reach` reads
//! it), the SSH connection pyfw runs under (`SSH_CONNECTION`) and the
//! host's nftables tables. In each family it checks the built-in filter
//! chains the wishes name, as the apply leaves them (wished rules first,
//! then the rules already there that stay), and warns:
//!
//! - INPUT: when the wishes make it drop (a DROP policy, or a wished
//!   catch-all `-j DROP`/`-j REJECT`) and nothing accepts ESTABLISHED
//!   traffic: replies to the host's own connections and open sessions
//!   would be dropped;
//! - INPUT: when a new connection to the SSH session's port would be
//!   dropped, by the policy or by a rule (a catch-all under an ACCEPT
//!   policy, a fail2ban ban): the next login would fail;
//! - OUTPUT: the same for ESTABLISHED traffic going out, and else for the
//!   SSH session's own packets: the session would hang;
//! - FORWARD: when the wishes make it drop on a host where Docker runs with
//!   its nftables backend (table `ip docker-bridges` or `ip6
//!   docker-bridges`), and nothing accepts Docker's traffic: Docker's
//!   documentation says that iptables' FORWARD then drops the packets its
//!   nftables rules accept, so published ports stop working.
//!
//! Each check follows one kind of traffic (`Traffic`) through the rules,
//! into the chains they jump to and back on RETURN, and counts a jump as
//! accepting only where the rules reached accept that traffic. It judges
//! the matches it understands (`-p`, `-s`, `-d`, `-i`, `-o`, `--sport`,
//! `--dport`, `--dports`, `--ctstate`/`--state`) and gives any other the
//! benefit of the doubt: a rule it cannot judge may accept, but drops
//! nothing for certain, and a chain it was not given may accept. So it
//! warns only when a lock-out is certain as far as it can tell; it is a
//! seatbelt, and `--confirm` is the airbag. Every warning suggests
//! `--confirm`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;

use crate::state::ownership::{self, Owned};
use crate::state::rule::Rule;
use crate::state::{Family, State};
use crate::wishes::{ChainWish, RuleItem, Wishes};

/// The remedy every warning names.
pub const REMEDY: &str = "use `pyfw apply --confirm 30s` to have the change undone unless you \
                          confirm it from a new session";

/// The table Docker's nftables firewall backend keeps its bridges' rules in.
pub const DOCKER_NFT_TABLE: &str = "docker-bridges";

/// What the lint knows of the host.
#[derive(Clone, Copy, Debug)]
pub struct Host<'a> {
    /// The state the plan read, with the chains [`unread`] names read into
    /// it; a chain missing here may accept anything.
    pub state: &'a State,
    /// The SSH connection pyfw runs under, if any.
    pub ssh: Option<&'a SshConnection>,
    /// The host's nftables tables as (family, name), e.g. `("ip",
    /// "docker-bridges")`; empty when unknown.
    pub nft_tables: &'a [(String, String)],
}
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
    /// INPUT or OUTPUT drops, and nothing accepts ESTABLISHED/RELATED.
    NoEstablished,
    /// INPUT drops new connections to the SSH session's port.
    SshPortClosed,
    /// OUTPUT drops the packets the SSH session sends.
    SshSessionCut,
    /// FORWARD drops what Docker's nftables rules accept.
    DockerForward,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.chain, self.message)
    }
}

/// The warnings for applying `wishes` to `host`.
pub fn lint(wishes: &Wishes, host: &Host) -> Vec<Warning> {
    let mut out = Vec::new();
    for checks in families(wishes, host) {
        for wish in &checks.wished {
            checks.check(wish, host, &mut out);
        }
    }
    out
}

/// The chains of the filter table, per family, that the lint would follow
/// a jump into but that `host.state` lacks: read them (read-only) and ask
/// again, until nothing is left or nothing more exists.
pub fn unread(wishes: &Wishes, host: &Host) -> Vec<(Family, BTreeSet<String>)> {
    let mut out = Vec::new();
    for checks in families(wishes, host) {
        let mut missing = BTreeSet::new();
        for wish in &checks.wished {
            checks.chains.unread_from(&wish.chain, &mut missing);
        }
        if !missing.is_empty() {
            out.push((checks.family, missing));
        }
    }
    out
}

/// Whether the lint needs the host's nftables tables: only when the wishes
/// make some FORWARD chain drop (see [`Host::nft_tables`]).
pub fn needs_nft_tables(wishes: &Wishes) -> bool {
    wishes
        .chains
        .iter()
        .any(|w| w.table == "filter" && w.chain == "FORWARD" && wished_drop(w).is_some())
}

/// One family's checked chains, and its filter table as the apply leaves it.
struct Checks<'a> {
    family: Family,
    chains: Chains,
    wished: Vec<&'a ChainWish>,
}

/// The families where the wishes name a chain the lint checks, and where
/// a check could warn: a chain the wishes make drop, and INPUT and OUTPUT
/// in the family of an SSH session.
fn families<'a>(wishes: &'a Wishes, host: &Host) -> Vec<Checks<'a>> {
    let checked = |w: &ChainWish| {
        let ssh = host.ssh.is_some_and(|c| c.family() == w.family);
        match w.chain.as_str() {
            "INPUT" | "OUTPUT" => ssh || wished_drop(w).is_some(),
            "FORWARD" => docker_nft(host.nft_tables, w.family) && wished_drop(w).is_some(),
            _ => false,
        }
    };
    [Family::V4, Family::V6]
        .into_iter()
        .filter_map(|family| {
            let wished: Vec<&ChainWish> = (wishes.chains.iter())
                .filter(|w| w.family == family && w.table == "filter" && checked(w))
                .collect();
            (!wished.is_empty()).then(|| Checks {
                family,
                chains: Chains::after(wishes, host.state, family),
                wished,
            })
        })
        .collect()
}

/// Whether Docker's nftables backend has its table for `family`.
fn docker_nft(tables: &[(String, String)], family: Family) -> bool {
    let want = match family {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    };
    tables
        .iter()
        .any(|(f, name)| f == want && name == DOCKER_NFT_TABLE)
}

/// How the wishes make a chain drop what nothing accepts, if they do.
enum WishedDrop<'a> {
    Policy,
    /// A wished catch-all `-j DROP` or `-j REJECT`, by name.
    Rule(&'a str),
}

fn wished_drop(wish: &ChainWish) -> Option<WishedDrop<'_>> {
    if wish.policy.as_deref() == Some("DROP") {
        return Some(WishedDrop::Policy);
    }
    wish.rules.iter().flatten().find_map(|item| match item {
        RuleItem::Named(r) if Matches::of(&r.rule).is_catch_all_drop() => {
            Some(WishedDrop::Rule(r.name.as_str()))
        }
        _ => None,
    })
}

impl fmt::Display for WishedDrop<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WishedDrop::Policy => write!(f, "the wishes set the policy to DROP"),
            WishedDrop::Rule(name) => write!(
                f,
                "the wished rule `{name}` drops all traffic that reaches it"
            ),
        }
    }
}

impl Checks<'_> {
    /// The checks of one wished chain.
    fn check(&self, wish: &ChainWish, host: &Host, out: &mut Vec<Warning>) {
        let policy = wish
            .policy
            .clone()
            .or_else(|| {
                (host.state.ruleset(self.family))
                    .chain("filter", &wish.chain)
                    .and_then(|c| c.policy.clone())
            })
            .unwrap_or_else(|| "ACCEPT".into());
        let chain = Chain {
            name: &wish.chain,
            policy: &policy,
            chains: &self.chains,
            wished: wished_drop(wish),
        };
        let ssh = host.ssh.filter(|c| c.family() == self.family);
        let found = match wish.chain.as_str() {
            "INPUT" => chain.input(ssh),
            "OUTPUT" => chain.output(ssh),
            "FORWARD" => chain.forward(self.family),
            _ => Vec::new(),
        };
        out.extend(found.into_iter().map(|(kind, message)| Warning {
            chain: wish.label(),
            kind,
            message: format!("{message}; {REMEDY}"),
        }));
    }
}

/// One checked built-in chain as the apply leaves it.
struct Chain<'a> {
    name: &'a str,
    policy: &'a str,
    chains: &'a Chains,
    /// How the wishes make it drop, if they do.
    wished: Option<WishedDrop<'a>>,
}

impl Chain<'_> {
    /// What drops `traffic` for certain, if the chain does.
    fn drops(&self, traffic: &Traffic) -> Option<Cause<'_>> {
        match self.chains.verdict(self.name, traffic, self.policy) {
            Verdict::Drop(cause) => Some(cause),
            _ => None,
        }
    }

    /// Where the wishes make the chain drop, what drops ESTABLISHED
    /// traffic, said after what the wishes do.
    fn drops_established(&self) -> Option<(&WishedDrop<'_>, String)> {
        let why = self.wished.as_ref()?;
        let cause = self.drops(&Traffic::established())?;
        Some((why, cause.besides(why)))
    }

    fn input(&self, ssh: Option<&SshConnection>) -> Vec<(Kind, String)> {
        let mut found = Vec::new();
        if let Some((why, by)) = self.drops_established() {
            found.push((
                Kind::NoEstablished,
                format!(
                    "{why}, and no rule (wished or already there) accepts ESTABLISHED,RELATED \
                     traffic (e.g. `-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`){by}: \
                     open sessions, including an SSH session, and replies to this host's own \
                     connections will be dropped"
                ),
            ));
        }
        if let Some(conn) = ssh
            && let Some(cause) = self.drops(&Traffic::ssh_login(conn))
        {
            found.push((
                Kind::SshPortClosed,
                format!(
                    "no rule accepts new connections to tcp port {port}, the port of the SSH \
                     session pyfw runs under (SSH_CONNECTION {conn}), and {cause}: the next SSH \
                     login will fail (wish e.g. `-p tcp --dport {port} -j ACCEPT` above any rule \
                     that drops it)",
                    port = conn.server_port
                ),
            ));
        }
        found
    }

    /// ESTABLISHED traffic going out; else, the SSH session's packets (a
    /// second warning would say the same).
    fn output(&self, ssh: Option<&SshConnection>) -> Vec<(Kind, String)> {
        if let Some((why, by)) = self.drops_established() {
            return vec![(
                Kind::NoEstablished,
                format!(
                    "{why}, and no rule (wished or already there) accepts ESTABLISHED,RELATED \
                     traffic going out (e.g. `-m conntrack --ctstate RELATED,ESTABLISHED -j \
                     ACCEPT`){by}: this host's replies on connections to it, an SSH session's \
                     included, will be dropped"
                ),
            )];
        }
        let Some(conn) = ssh else {
            return Vec::new();
        };
        let Some(cause) = self.drops(&Traffic::ssh_replies(conn)) else {
            return Vec::new();
        };
        vec![(
            Kind::SshSessionCut,
            format!(
                "no rule accepts the packets this host sends on the SSH session pyfw runs \
                 under (SSH_CONNECTION {conn}, tcp from port {port}), and {cause}: the session \
                 will hang (wish e.g. `-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`)",
                port = conn.server_port
            ),
        )]
    }

    /// Checked only where the wishes make FORWARD drop and Docker's
    /// nftables table is there (see [`families`]).
    fn forward(&self, family: Family) -> Vec<(Kind, String)> {
        let Some(why) = &self.wished else {
            return Vec::new();
        };
        let Some(cause) = self.drops(&Traffic::docker_forward()) else {
            return Vec::new();
        };
        let table = match family {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        };
        vec![(
            Kind::DockerForward,
            format!(
                "{why}, and Docker runs here with its nftables firewall backend (table `{table} \
                 {DOCKER_NFT_TABLE}`) while no rule accepts its containers' traffic{by}: \
                 Docker's documentation says that iptables' FORWARD then drops the packets \
                 Docker's nftables rules accept, and published ports stop working (keep the \
                 policy ACCEPT, or accept Docker's traffic above, e.g. `-o docker0 -j ACCEPT` \
                 and `-i docker0 -j ACCEPT`)",
                by = cause.besides(why)
            ),
        )]
    }
}

/// A rule and the matches the lint understands in it.
struct Parsed {
    rule: Rule,
    matches: Matches,
}

/// The filter table's chains of one family as the apply leaves them: a
/// wished chain's wished rules first, then the rules already there that
/// stay (not withdrawn wishes).
struct Chains {
    chains: BTreeMap<String, Vec<Parsed>>,
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
        let parse = |rule: Rule| Parsed {
            matches: Matches::of(&rule),
            rule,
        };
        Chains {
            chains: (chains.into_iter())
                .map(|(name, rules)| (name, rules.into_iter().map(parse).collect()))
                .collect(),
        }
    }

    /// Adds to `out` the chains reachable from `start` by jumps that are
    /// not here.
    fn unread_from(&self, start: &str, out: &mut BTreeSet<String>) {
        let mut seen: HashSet<&str> = HashSet::new();
        let mut todo = vec![start];
        while let Some(name) = todo.pop() {
            if !seen.insert(name) {
                continue;
            }
            let Some(rules) = self.chains.get(name) else {
                out.insert(name.to_string());
                continue;
            };
            todo.extend(rules.iter().filter_map(|p| p.matches.jump()));
        }
    }

    /// What built-in `chain` with `policy` does with `traffic`: Accept when
    /// it may accept it, Drop when it drops it for certain.
    fn verdict<'a>(&'a self, chain: &'a str, traffic: &Traffic, policy: &str) -> Verdict<'a> {
        let mut walk = Walk {
            chains: self,
            traffic,
            memo: HashMap::new(),
            open: HashSet::new(),
        };
        match walk.chain(chain) {
            Verdict::Continue if policy == "DROP" => Verdict::Drop(Cause::Policy),
            Verdict::Continue => Verdict::Accept,
            v => v,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict<'a> {
    /// May accept (the lint gives the benefit of the doubt).
    Accept,
    /// Drops it for certain.
    Drop(Cause<'a>),
    /// Falls off the end or returns: the caller, or the policy, decides.
    Continue,
}

/// What drops the traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cause<'a> {
    Policy,
    Rule { chain: &'a str, rule: &'a Rule },
}

impl Cause<'_> {
    /// `, so CAUSE` after what the wishes do, unless that says it already.
    fn besides(&self, wished: &WishedDrop) -> String {
        match (self, wished) {
            (Cause::Policy, WishedDrop::Policy) => String::new(),
            (cause, _) => format!(", so {cause}"),
        }
    }
}

impl fmt::Display for Cause<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Policy => write!(f, "the policy will be DROP"),
            Cause::Rule { chain, rule } => write!(f, "the rule `-A {chain} {rule}` drops it"),
        }
    }
}

/// One traffic's way through the chains. A chain's verdict depends on the
/// traffic alone, so each chain is walked once.
struct Walk<'a, 't> {
    chains: &'a Chains,
    traffic: &'t Traffic,
    memo: HashMap<&'a str, Verdict<'a>>,
    /// The chains being walked: a jump back into one is a loop, which
    /// iptables refuses; should one come, it may accept.
    open: HashSet<&'a str>,
}

impl<'a> Walk<'a, '_> {
    fn chain(&mut self, name: &'a str) -> Verdict<'a> {
        if let Some(v) = self.memo.get(name) {
            return *v;
        }
        let Some((name, rules)) = self.chains.chains.get_key_value(name) else {
            return Verdict::Accept; // Not read: it may accept.
        };
        if !self.open.insert(name) {
            return Verdict::Accept;
        }
        let v = self.rules(name, rules);
        self.open.remove(name.as_str());
        self.memo.insert(name, v);
        v
    }

    /// The rules of chain `name` in order. A rule that matches only some
    /// of the traffic (or may match it) lets the rest go on: it can make
    /// the verdict Accept, never Drop, and traffic it sent back to the
    /// caller makes a later Drop a Continue.
    fn rules(&mut self, name: &'a str, rules: &'a [Parsed]) -> Verdict<'a> {
        let mut returned = false;
        for p in rules {
            let judged = p.matches.judge(self.traffic);
            if judged == Match::No {
                continue;
            }
            let Some(v) = self.outcome(name, p, judged) else {
                continue;
            };
            match v {
                Verdict::Accept => return v,
                Verdict::Drop(_) if judged == Match::Yes && returned => {
                    return Verdict::Continue;
                }
                v if judged == Match::Yes => return v,
                Verdict::Continue => returned = true,
                Verdict::Drop(_) => {}
            }
        }
        Verdict::Continue
    }

    /// What rule `p` of chain `chain` does with the traffic it matches:
    /// `None` when that goes on to the next rule.
    fn outcome(&mut self, chain: &'a str, p: &'a Parsed, judged: Match) -> Option<Verdict<'a>> {
        let m = &p.matches;
        match m.target.as_deref()? {
            "ACCEPT" => self.traffic.accepted(m, judged).then_some(Verdict::Accept),
            "DROP" | "REJECT" => Some(Verdict::Drop(Cause::Rule {
                chain,
                rule: &p.rule,
            })),
            "RETURN" => Some(Verdict::Continue),
            // A program decides: it may accept.
            "QUEUE" | "NFQUEUE" => Some(Verdict::Accept),
            target if is_user_chain(target) => match (self.chain(target), m.goto) {
                // Back from a jump: on with this chain. Off the end of a
                // goto: back to this chain's caller.
                (Verdict::Continue, false) => None,
                (v, _) => Some(v),
            },
            _ => None,
        }
    }
}

/// The traffic a check follows: what the lint knows of its packets.
#[derive(Clone, Debug)]
struct Traffic {
    /// tcp, or any protocol.
    tcp: bool,
    src: Field<IpAddr>,
    dst: Field<IpAddr>,
    sport: Field<u16>,
    dport: Field<u16>,
    /// `NEW` or `ESTABLISHED`; `None` for both.
    state: Option<&'static str>,
    /// Whether it passes `lo`; `None` for any interface.
    lo: Option<bool>,
    /// Whether an ACCEPT naming ESTABLISHED counts though it accepts only
    /// some of this traffic (`-i eth0 --ctstate ESTABLISHED`): the
    /// ESTABLISHED check asks whether such a rule is there at all.
    lenient: bool,
}

/// One property of the traffic: known, any value (a match on it takes some
/// of the traffic), or unknown (a match on it may take all of it).
#[derive(Clone, Copy, Debug)]
enum Field<T> {
    Is(T),
    Any,
    Unknown,
}

impl<T> Field<T> {
    fn judge(&self, f: impl FnOnce(&T) -> Match) -> Match {
        match self {
            Field::Is(v) => f(v),
            Field::Any => Match::Part,
            Field::Unknown => Match::Maybe,
        }
    }
}

impl Traffic {
    /// ESTABLISHED traffic, any other way.
    fn established() -> Traffic {
        Traffic {
            tcp: false,
            src: Field::Any,
            dst: Field::Any,
            sport: Field::Any,
            dport: Field::Any,
            state: Some("ESTABLISHED"),
            lo: None,
            lenient: true,
        }
    }

    /// The first packet of a new connection like `conn`'s.
    fn ssh_login(conn: &SshConnection) -> Traffic {
        Traffic {
            tcp: true,
            src: Field::Is(conn.client),
            dst: Field::Is(conn.server),
            sport: Field::Is(conn.client_port),
            dport: Field::Is(conn.server_port),
            state: Some("NEW"),
            lo: Some(conn.server.is_loopback()),
            lenient: false,
        }
    }

    /// The packets this host sends on `conn`.
    fn ssh_replies(conn: &SshConnection) -> Traffic {
        Traffic {
            tcp: true,
            src: Field::Is(conn.server),
            dst: Field::Is(conn.client),
            sport: Field::Is(conn.server_port),
            dport: Field::Is(conn.client_port),
            state: Some("ESTABLISHED"),
            lo: Some(conn.server.is_loopback()),
            lenient: false,
        }
    }

    /// What Docker's nftables rules accept: its containers' traffic, new
    /// and established, any protocol and port, from and to bridges and
    /// subnets the lint does not know (an address or interface match may
    /// be Docker's).
    fn docker_forward() -> Traffic {
        Traffic {
            tcp: false,
            src: Field::Unknown,
            dst: Field::Unknown,
            sport: Field::Any,
            dport: Field::Any,
            state: None,
            lo: Some(false),
            lenient: false,
        }
    }

    /// Whether an ACCEPT rule whose matches judged `judged` counts as
    /// accepting this traffic.
    fn accepted(&self, m: &Matches, judged: Match) -> bool {
        match judged {
            Match::Yes | Match::Maybe => true,
            Match::Part => self.lenient && m.accepts_established(),
            Match::No => false,
        }
    }
}

fn is_user_chain(target: &str) -> bool {
    crate::state::rule::names_a_chain(target)
}

/// How a rule's matches take the traffic in question, from least to most.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Match {
    No,
    /// Some of it, not all.
    Part,
    /// A match the lint cannot judge: maybe all of it.
    Maybe,
    Yes,
}

/// The matches of a rule the lint understands.
#[derive(Debug, Default)]
struct Matches {
    /// (negated, value)
    protocol: Option<(bool, String)>,
    source: Option<(bool, String)>,
    destination: Option<(bool, String)>,
    in_interface: Option<(bool, String)>,
    out_interface: Option<(bool, String)>,
    /// Source and destination ports: single, range or list (multiport).
    sports: Option<(bool, String)>,
    dports: Option<(bool, String)>,
    states: Option<(bool, String)>,
    target: Option<String>,
    /// `-g`: falling off the end of the target returns to this chain's
    /// caller.
    goto: bool,
    /// Some match or option the lint cannot judge.
    unknown: bool,
}

impl Matches {
    fn of(rule: &Rule) -> Matches {
        let mut m = Matches::default();
        // Borrowed tokens: `args()` would keep an owned copy of every
        // rule's words on the rule (50,000 foreign rules reached from
        // INPUT on a Kubernetes node: some 16 MB at the lint's peak).
        let args: Vec<&str> = rule.tokens().collect();
        let args = args.as_slice();
        let mut i = 0;
        let mut negate = false;
        while i < args.len() {
            match args[i] {
                "!" => {
                    negate = true;
                    i += 1;
                    continue;
                }
                a if a.starts_with('-') => i = m.take(args, i, negate),
                _ => i += 1,
            }
            negate = false;
        }
        m
    }

    /// Reads the option `args[i]` and its values (`negate` when a `!` came
    /// before it); returns the index past them.
    fn take(&mut self, args: &[&str], mut i: usize, negate: bool) -> usize {
        // The value, and a `!` written after the option (old syntax).
        let value = |i: &mut usize| -> (bool, String) {
            let mut neg = negate;
            let mut v = args.get(*i + 1).copied().unwrap_or_default();
            if v == "!" {
                neg = !neg;
                *i += 1;
                v = args.get(*i + 1).copied().unwrap_or_default();
            }
            *i += 2;
            (neg, v.to_string())
        };
        let option = args[i];
        if let Some(field) = self.field(option) {
            *field = Some(value(&mut i));
            return i;
        }
        match option {
            "-j" | "--jump" => self.target = Some(value(&mut i).1),
            "-g" | "--goto" => {
                self.target = Some(value(&mut i).1);
                self.goto = true;
            }
            "-m" | "--match" => {
                let (_, name) = value(&mut i);
                self.unknown |= !matches!(
                    name.as_str(),
                    "tcp" | "udp" | "multiport" | "conntrack" | "state" | "comment"
                );
            }
            "--comment" => {
                let _ = value(&mut i);
            }
            _ => {
                // Another match's option, or after the target one of its
                // options (`--reject-with`): skip it and its values.
                self.unknown |= self.target.is_none();
                i += 1;
                while i < args.len() && !args[i].starts_with('-') && args[i] != "!" {
                    i += 1;
                }
            }
        }
        i
    }

    /// Where the value of a match the lint understands goes.
    fn field(&mut self, option: &str) -> Option<&mut Option<(bool, String)>> {
        Some(match option {
            "-p" | "--protocol" => &mut self.protocol,
            "-s" | "--source" | "--src" => &mut self.source,
            "-d" | "--destination" | "--dst" => &mut self.destination,
            "-i" | "--in-interface" => &mut self.in_interface,
            "-o" | "--out-interface" => &mut self.out_interface,
            "--dport" | "--destination-port" | "--dports" | "--destination-ports" => {
                &mut self.dports
            }
            "--sport" | "--source-port" | "--sports" | "--source-ports" => &mut self.sports,
            "--ctstate" | "--state" => &mut self.states,
            _ => return None,
        })
    }

    /// The chain this rule jumps or goes to, if any.
    fn jump(&self) -> Option<&str> {
        self.target.as_deref().filter(|t| is_user_chain(t))
    }

    fn accepts_established(&self) -> bool {
        matches!(&self.states, Some((false, s)) if s.split(',').any(|x| x == "ESTABLISHED"))
    }

    /// `-j DROP` or `-j REJECT` with no match: all traffic that reaches it.
    fn is_catch_all_drop(&self) -> bool {
        matches!(self.target.as_deref(), Some("DROP" | "REJECT"))
            && !self.unknown
            && [
                &self.protocol,
                &self.source,
                &self.destination,
                &self.in_interface,
                &self.out_interface,
                &self.sports,
                &self.dports,
                &self.states,
            ]
            .iter()
            .all(|m| m.is_none())
    }

    /// How the rule takes traffic `t`: the least of its matches.
    fn judge(&self, t: &Traffic) -> Match {
        let mut result = if self.unknown {
            Match::Maybe
        } else {
            Match::Yes
        };
        let mut take = |field: &Option<(bool, String)>, f: &dyn Fn(&str) -> Match| {
            if let Some((neg, value)) = field {
                result = result.min(negated(*neg, f(value)));
            }
        };
        take(&self.protocol, &|p| protocol(t.tcp, p));
        take(&self.source, &|net| t.src.judge(|ip| in_network(ip, net)));
        take(&self.destination, &|net| {
            t.dst.judge(|ip| in_network(ip, net))
        });
        take(&self.in_interface, &|name| interface(t.lo, name));
        take(&self.out_interface, &|name| interface(t.lo, name));
        take(&self.sports, &|ports| t.sport.judge(|p| port_in(*p, ports)));
        take(&self.dports, &|ports| t.dport.judge(|p| port_in(*p, ports)));
        take(&self.states, &|states| match t.state {
            Some(s) => yes_if(states.split(',').any(|x| x == s)),
            None => Match::Part,
        });
        result
    }
}

fn yes_if(b: bool) -> Match {
    if b { Match::Yes } else { Match::No }
}

fn negated(neg: bool, m: Match) -> Match {
    match (neg, m) {
        (false, m) => m,
        (true, Match::Yes) => Match::No,
        (true, Match::No) => Match::Yes,
        (true, m) => m,
    }
}

/// How `-p p` takes tcp (`tcp`), or any protocol.
fn protocol(tcp: bool, p: &str) -> Match {
    match p {
        "all" | "0" => Match::Yes,
        p if tcp => yes_if(matches!(p, "tcp" | "6")),
        _ => Match::Part,
    }
}

/// How `-i name` or `-o name` takes traffic that passes `lo` (`Some(true)`),
/// another interface (`Some(false)`), or any.
fn interface(lo: Option<bool>, name: &str) -> Match {
    let takes_lo = match name.strip_suffix('+') {
        Some(prefix) => "lo".starts_with(prefix),
        None => name == "lo",
    };
    match lo {
        _ if name == "+" => Match::Yes,
        Some(true) => yes_if(takes_lo),
        // Some other interface: maybe this one.
        Some(false) if name != "lo" => Match::Maybe,
        Some(false) => Match::No,
        None => Match::Part,
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

    /// The lint on a host with no nftables tables.
    fn lint(wishes: &Wishes, state: &State, ssh: Option<&SshConnection>) -> Vec<Warning> {
        super::lint(
            wishes,
            &Host {
                state,
                ssh,
                nft_tables: &[],
            },
        )
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

    /// Wishes for iptables filter chains: (chain, policy, rules).
    fn filter(chains: &[(&str, Option<&str>, &[&str])]) -> Wishes {
        let mut t = "pyfw_wishes:\n  iptables:\n    filter:\n".to_string();
        for (chain, policy, rules) in chains {
            t.push_str(&format!("      {chain}:\n"));
            if let Some(p) = policy {
                t.push_str(&format!("        default_action: {p}\n"));
            }
            if !rules.is_empty() {
                t.push_str("        rules:\n");
            }
            for (i, r) in rules.iter().enumerate() {
                t.push_str(&format!("        - r{i}: '{r}'\n"));
            }
        }
        wishes(&t)
    }

    fn lint_with_nft(wishes: &Wishes, tables: &[(&str, &str)]) -> Vec<Warning> {
        let tables: Vec<(String, String)> = (tables.iter())
            .map(|(f, n)| (f.to_string(), n.to_string()))
            .collect();
        super::lint(
            wishes,
            &Host {
                state: &state(EMPTY),
                ssh: Some(&ssh()),
                nft_tables: &tables,
            },
        )
    }

    #[test]
    fn jumps_are_followed_to_any_depth() {
        // INPUT -> c0 -> c1 -> ... -> c11, which accepts the SSH port.
        let deep = |port: u16| {
            let names: Vec<String> = (0..12).map(|i| format!("c{i}")).collect();
            let jumps: Vec<String> = (1..12).map(|i| format!("-j c{i}")).collect();
            let last = format!("-p tcp --dport {port} -j ACCEPT");
            let mut chains: Vec<(&str, Option<&str>, Vec<&str>)> =
                vec![("INPUT", Some("DROP"), vec![EST, "-j c0"])];
            for (i, name) in names.iter().enumerate() {
                let rule = jumps.get(i).map_or(last.as_str(), String::as_str);
                chains.push((name, None, vec![rule]));
            }
            let chains: Vec<(&str, Option<&str>, &[&str])> = chains
                .iter()
                .map(|(c, p, r)| (*c, *p, r.as_slice()))
                .collect();
            lint(&filter(&chains), &state(EMPTY), Some(&ssh()))
        };
        assert_eq!(deep(22), []);
        assert_eq!(kinds(&deep(23)), [Kind::SshPortClosed]);
    }

    #[test]
    fn a_loop_of_jumps_ends_and_is_given_the_benefit_of_the_doubt() {
        // iptables refuses loops; a state holding one must not hang the lint.
        let save = "*filter\n:INPUT ACCEPT [0:0]\n:a - [0:0]\n:b - [0:0]\n-A INPUT -j a\n\
                    -A a -j b\n-A b -j a\nCOMMIT\n";
        let w = lint(&wishes(&input("DROP", &[EST])), &state(save), Some(&ssh()));
        assert_eq!(w, []);
    }

    #[test]
    fn a_chain_not_read_may_accept() {
        let w = lint(
            &wishes(&input("DROP", &["-j KUBE-FIREWALL"])),
            &state(EMPTY),
            Some(&ssh()),
        );
        assert_eq!(w, []);
    }

    #[test]
    fn return_goes_back_to_the_caller_and_in_input_to_the_policy() {
        let w = |chains: &[(&str, Option<&str>, &[&str])]| {
            kinds(&lint(&filter(chains), &state(EMPTY), Some(&ssh())))
        };
        // f2b-like: port 22 returns before the catch-all, and INPUT
        // accepts it after the jump.
        let check: &[&str] = &["-p tcp --dport 22 -j RETURN", "-j DROP"];
        assert_eq!(
            w(&[
                ("INPUT", Some("DROP"), &[EST, "-j check", SSH]),
                ("check", None, check)
            ]),
            []
        );
        // ... and without the accept after it, the policy drops it.
        assert_eq!(
            w(&[
                ("INPUT", Some("DROP"), &[EST, "-j check"]),
                ("check", None, check)
            ]),
            [Kind::SshPortClosed]
        );
        // A RETURN in INPUT itself leaves the rest unread: the policy.
        assert_eq!(
            w(&[("INPUT", Some("DROP"), &[EST, "-p tcp -j RETURN", SSH])]),
            [Kind::SshPortClosed]
        );
        // A RETURN the lint cannot judge may send the traffic back to an
        // accept: a later drop is no longer certain.
        let maybe: &[&str] = &["-m set --match-set ok src -j RETURN", "-j DROP"];
        assert_eq!(
            w(&[
                ("INPUT", Some("DROP"), &[EST, "-j maybe", SSH]),
                ("maybe", None, maybe)
            ]),
            []
        );
        // A goto returns to the caller's caller: for INPUT, the policy.
        let empty: &[&str] = &["-p udp -j ACCEPT"];
        assert_eq!(
            w(&[
                ("INPUT", Some("DROP"), &[EST, "-g empty", SSH]),
                ("empty", None, empty)
            ]),
            [Kind::SshPortClosed]
        );
        assert_eq!(
            w(&[
                ("INPUT", Some("DROP"), &[EST, "-j empty", SSH]),
                ("empty", None, empty)
            ]),
            []
        );
    }

    #[test]
    fn a_jump_taken_by_some_traffic_drops_only_that_traffic() {
        let w = |jump: &str| {
            let chains: &[(&str, Option<&str>, &[&str])] = &[
                ("INPUT", Some("DROP"), &[jump, EST, SSH]),
                ("blocked", None, &["-j DROP"]),
            ];
            kinds(&lint(&filter(chains), &state(EMPTY), Some(&ssh())))
        };
        // Another client network, a match the lint cannot judge, another
        // port: the session's client may still come in.
        assert_eq!(w("-s 198.51.100.0/24 -j blocked"), []);
        assert_eq!(w("-m set --match-set bad src -j blocked"), []);
        assert_eq!(w("-p tcp --dport 25 -j blocked"), []);
        // Its own network: cut, and ESTABLISHED traffic from it too is
        // not all cut (other clients).
        assert_eq!(w("-s 192.0.2.0/24 -j blocked"), [Kind::SshPortClosed]);
        // Everything: both.
        assert_eq!(w("-j blocked"), [Kind::NoEstablished, Kind::SshPortClosed]);
    }

    #[test]
    fn established_traffic_counts_only_where_a_rule_accepts_it() {
        let w = |chains: &[(&str, Option<&str>, &[&str])]| {
            kinds(&lint(&filter(chains), &state(EMPTY), None))
        };
        // Behind a jump taken by tcp only: still counted, as a rule
        // naming ESTABLISHED always was.
        assert_eq!(
            w(&[
                ("INPUT", Some("DROP"), &["-p tcp -j est"]),
                ("est", None, &[EST])
            ]),
            []
        );
        // Behind a jump taken by NEW traffic only: never reached.
        assert_eq!(
            w(&[
                (
                    "INPUT",
                    Some("DROP"),
                    &["-m conntrack --ctstate NEW -j est"]
                ),
                ("est", None, &[EST])
            ]),
            [Kind::NoEstablished]
        );
        // An accept of a port is no accept of ESTABLISHED traffic; an
        // accept of everything is.
        assert_eq!(w(&[("INPUT", Some("DROP"), &[SSH])]), [Kind::NoEstablished]);
        assert_eq!(w(&[("INPUT", Some("DROP"), &["-j ACCEPT"])]), []);
        // A catch-all drop above the accept: it never comes.
        assert_eq!(
            w(&[("INPUT", Some("DROP"), &["-j DROP", EST])]),
            [Kind::NoEstablished]
        );
    }

    #[test]
    fn a_catch_all_drop_under_an_accept_policy_warns_like_a_drop_policy() {
        for catch_all in ["-j DROP", "-j REJECT --reject-with icmp-port-unreachable"] {
            let w = lint(
                &wishes(&input(
                    "ACCEPT",
                    &["-p tcp --dport 443 -j ACCEPT", catch_all],
                )),
                &state(EMPTY),
                Some(&ssh()),
            );
            assert_eq!(kinds(&w), [Kind::NoEstablished, Kind::SshPortClosed]);
            assert!(
                w[0].message
                    .starts_with("the wished rule `r1` drops all traffic"),
                "{}",
                w[0]
            );
            assert!(
                (w[1].message).contains(&format!(
                    "the rule `-A INPUT -m comment --comment r1 {catch_all}`"
                )),
                "{}",
                w[1]
            );
            // Below the accepts, it drops nothing that matters.
            let w = lint(
                &wishes(&input("ACCEPT", &[EST, SSH, catch_all])),
                &state(EMPTY),
                Some(&ssh()),
            );
            assert_eq!(w, []);
        }
        // One already there, under the policy the wishes keep: the SSH
        // check sees it too.
        let save = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j REJECT\nCOMMIT\n";
        let text = "pyfw_wishes:\n  iptables:\n    filter:\n      INPUT:\n        rules:\n        \
                    - web: '-p tcp --dport 443 -j ACCEPT'\n";
        let w = lint(&wishes(text), &state(save), Some(&ssh()));
        assert_eq!(kinds(&w), [Kind::SshPortClosed]);
        // A drop of some traffic only is no catch-all.
        let w = lint(
            &wishes(&input("ACCEPT", &["-p udp -j DROP"])),
            &state(EMPTY),
            Some(&ssh()),
        );
        assert_eq!(w, []);
    }

    #[test]
    fn output_set_to_drop_warns_when_replies_would_be_dropped() {
        let w = |rules: &[&str], policy: &str| {
            let chains: &[(&str, Option<&str>, &[&str])] = &[("OUTPUT", Some(policy), rules)];
            lint(&filter(chains), &state(EMPTY), Some(&ssh()))
        };
        // Nothing accepts replies: one warning (it names the SSH session).
        let out = w(&[], "DROP");
        assert_eq!(kinds(&out), [Kind::NoEstablished]);
        assert_eq!(out[0].chain, "filter/OUTPUT");
        assert!(out[0].message.contains("going out"), "{}", out[0]);
        assert!(out[0].message.contains("--confirm"), "{}", out[0]);
        // The session's own packets are accepted, other replies are not.
        assert_eq!(
            kinds(&w(&["-p tcp --sport 22 -j ACCEPT"], "DROP")),
            [Kind::NoEstablished]
        );
        assert_eq!(w(&[EST], "DROP"), []);
        assert_eq!(w(&[], "ACCEPT"), []);
        // A drop of the packets to the session's client, under ACCEPT.
        let out = w(&["-d 192.0.2.0/24 -j DROP"], "ACCEPT");
        assert_eq!(kinds(&out), [Kind::SshSessionCut]);
        assert!(out[0].message.contains("SSH_CONNECTION"), "{}", out[0]);
        assert_eq!(w(&["-d 198.51.100.0/24 -j DROP"], "ACCEPT"), []);
    }

    #[test]
    fn forward_set_to_drop_warns_where_docker_runs_with_nftables() {
        let docker = [("ip", "docker-bridges"), ("ip", "filter")];
        let forward = |policy: &str, rules: &[&str]| filter(&[("FORWARD", Some(policy), rules)]);
        let w = lint_with_nft(&forward("DROP", &[]), &docker);
        assert_eq!(kinds(&w), [Kind::DockerForward]);
        assert_eq!(w[0].chain, "filter/FORWARD");
        assert!(w[0].message.contains("ip docker-bridges"), "{}", w[0]);
        assert!(w[0].message.contains("--confirm"), "{}", w[0]);
        // A catch-all under ACCEPT is the same.
        assert_eq!(
            kinds(&lint_with_nft(&forward("ACCEPT", &["-j DROP"]), &docker)),
            [Kind::DockerForward]
        );
        // Accepting only replies leaves published ports dropped.
        assert_eq!(
            kinds(&lint_with_nft(&forward("DROP", &[EST]), &docker)),
            [Kind::DockerForward]
        );
        // Accepting Docker's bridges (or what may be them) is enough.
        let bridges = ["-o docker0 -j ACCEPT", "-i docker0 -j ACCEPT"];
        assert_eq!(lint_with_nft(&forward("DROP", &bridges), &docker), []);
        // No Docker nftables table for this family, or none at all: quiet.
        assert_eq!(lint_with_nft(&forward("DROP", &[]), &[]), []);
        assert_eq!(
            lint_with_nft(&forward("DROP", &[]), &[("ip6", "docker-bridges")]),
            []
        );
        assert_eq!(lint_with_nft(&forward("ACCEPT", &[]), &docker), []);
        // Only such wishes need the tables.
        assert!(needs_nft_tables(&forward("DROP", &[])));
        assert!(needs_nft_tables(&forward("ACCEPT", &["-j REJECT"])));
        assert!(!needs_nft_tables(&forward("ACCEPT", &[EST])));
        assert!(!needs_nft_tables(&wishes(&input("DROP", &[]))));
    }

    #[test]
    fn unread_names_the_missing_chains_reachable_from_the_checked_ones() {
        let save = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:known - [0:0]\n\
                    -A INPUT -j known\n-A INPUT -j ACCEPT\n-A known -j deeper\n\
                    -A FORWARD -j DOCKER-USER\nCOMMIT\n";
        let state = state(save);
        let host = Host {
            state: &state,
            ssh: None,
            nft_tables: &[],
        };
        let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect();
        let w = filter(&[("INPUT", Some("DROP"), &["-j wished_jump", "-j LOG"])]);
        assert_eq!(
            unread(&w, &host),
            [(Family::V4, names(&["deeper", "wished_jump"]))]
        );
        // INPUT kept at ACCEPT can warn only about an SSH session's port.
        let w = filter(&[("INPUT", Some("ACCEPT"), &["-j wished_jump"])]);
        assert_eq!(unread(&w, &host), []);
        let session = ssh();
        let over_ssh = Host {
            ssh: Some(&session),
            ..host
        };
        assert_eq!(
            unread(&w, &over_ssh),
            [(Family::V4, names(&["deeper", "wished_jump"]))]
        );
        // FORWARD is checked only where Docker's nftables table is.
        let w = filter(&[("FORWARD", Some("DROP"), &[])]);
        assert_eq!(unread(&w, &host), []);
        let tables = [("ip".to_string(), DOCKER_NFT_TABLE.to_string())];
        let docker = Host {
            nft_tables: &tables,
            ..host
        };
        assert_eq!(unread(&w, &docker), [(Family::V4, names(&["DOCKER-USER"]))]);
    }
}
