//! The lock-out lint on recorded real rulesets, offline (no root): a
//! kubeadm node (kube-proxy, flannel, Docker), a ufw host (with and without
//! `ufw allow` rules) and a fail2ban host, from `tests/data/real/` (see its
//! SOURCES.md for where each dump came from).
//!
//! Each test plans the wishes against an in-memory kernel holding
//! the dump, which answers each read with what its scope names, as the real
//! tools do: the lint sees exactly what `pyfw apply` would read.

use std::collections::BTreeSet;
use std::path::Path;

use pyfw::kernel::{self, Backend, RuleCheck, Rules, Scope, Sets};
use pyfw::plan::lint::{self, Kind, SshConnection};
use pyfw::reconcile::Reconciler;
use pyfw::state::{Family, Ruleset, State, Table, parse_iptables_save};
use pyfw::wishes::Wishes;

/// A kernel in memory: each read gets the part of `state` its scope names.
struct Kernel {
    state: State,
    reads: Vec<Scope>,
}

fn view(rules: &Ruleset, scope: &Rules) -> Ruleset {
    match scope {
        Rules::Skip => Ruleset::default(),
        Rules::All => rules.clone(),
        Rules::Tables(tables) => Ruleset {
            tables: (rules.tables.iter())
                .filter(|(name, _)| tables.contains(*name))
                .map(|(n, t)| (n.clone(), t.clone()))
                .collect(),
        },
        Rules::Chains(chains) => {
            let mut out = Ruleset::default();
            for (table, chain) in chains {
                if let Some(c) = rules.tables.get(table).and_then(|t| t.chain(chain)) {
                    let t: &mut Table = out.tables.entry(table.clone()).or_default();
                    t.chains.push((chain.clone(), c.clone()));
                }
            }
            out
        }
    }
}

impl Backend for Kernel {
    fn read_state(&mut self, scope: Scope) -> Result<State, kernel::Error> {
        let state = State {
            v4: view(&self.state.v4, &scope.v4),
            v6: view(&self.state.v6, &scope.v6),
            ipsets: match &scope.sets {
                Sets::Skip => Default::default(),
                Sets::All => self.state.ipsets.clone(),
                Sets::Named(names) => (self.state.ipsets.iter())
                    .filter(|(n, _)| names.contains(*n))
                    .map(|(n, s)| (n.clone(), s.clone()))
                    .collect(),
            },
        };
        self.reads.push(scope);
        Ok(state)
    }
    fn check_rules(&mut self, _: &[RuleCheck]) -> Result<(), kernel::Error> {
        Ok(())
    }
    fn canonicalize(
        &mut self,
        rules: &[RuleCheck],
        _: &State,
        _: &[kernel::SetShape],
    ) -> Result<Vec<Option<kernel::Learned>>, kernel::Error> {
        let learned = |c: &RuleCheck| kernel::Learned {
            printed: c.rule.clone(),
            form: kernel::Form::Stable,
        };
        Ok(rules.iter().map(|c| Some(learned(c))).collect())
    }
    fn drop_chain(&mut self, _: Family, _: &str, _: &str) -> Result<(), kernel::Error> {
        Ok(())
    }
    fn run(&mut self, _: &pyfw::plan::Command) -> Result<(), kernel::Error> {
        Ok(())
    }
}

fn dump(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/real")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn host(save: &str) -> State {
    State {
        v4: parse_iptables_save(save).unwrap(),
        ..State::default()
    }
}

fn wishes(text: &str) -> Wishes {
    pyfw::wishes::parse(text, Path::new("wishes.yaml")).unwrap()
}

/// The wishes: INPUT drops, and only tcp 443 is accepted.
const ONLY_443: &str = "pyfw_wishes:\n  iptables:\n    filter:\n      INPUT:\n        \
                        default_action: DROP\n        rules:\n        - web: -p tcp --dport \
                        443 -j ACCEPT\n";

fn ssh_from(client: &str) -> SshConnection {
    SshConnection::parse(&format!("{client} 50022 192.0.2.10 22")).unwrap()
}

/// What `pyfw apply` would warn on `state` with `wishes`, from `ssh`, and
/// the reads it took after the plan's.
fn warnings_and_reads(
    state: State,
    wishes: &Wishes,
    ssh: &SshConnection,
) -> (Vec<lint::Warning>, Vec<Scope>) {
    let mut reconciler = Reconciler::new(Kernel {
        state,
        reads: Vec::new(),
    });
    let mut planned = reconciler.plan(wishes).unwrap();
    let planned_reads = reconciler.backend().reads.len();
    reconciler
        .read_for_lint(wishes, &mut planned.state, Some(ssh), &[])
        .unwrap();
    let host = lint::Host {
        state: &planned.state,
        ssh: Some(ssh),
        nft_tables: &[],
    };
    let reads = reconciler.backend().reads[planned_reads..].to_vec();
    (lint::lint(wishes, &host), reads)
}

fn warnings(state: State, wishes: &Wishes, ssh: &SshConnection) -> Vec<lint::Warning> {
    warnings_and_reads(state, wishes, ssh).0
}

fn kinds(w: &[lint::Warning]) -> Vec<Kind> {
    w.iter().map(|w| w.kind).collect()
}

/// The node: INPUT jumps to four KUBE-* chains, none of which
/// accepts port 22, so the SSH login is cut; nothing accepts ESTABLISHED
/// either (KUBE-FIREWALL only drops).
#[test]
fn a_kubeadm_node_warns_that_ssh_and_established_traffic_are_cut() {
    let w = warnings(
        host(&dump("kubeadm-node.save")),
        &wishes(ONLY_443),
        &ssh_from("192.0.2.1"),
    );
    assert_eq!(
        kinds(&w),
        [Kind::NoEstablished, Kind::SshPortClosed],
        "{w:#?}"
    );
}

/// The same node with wishes that keep the way in: quiet. The verdict is
/// the wishes' own here, but the KUBE-FIREWALL rule that drops traffic to
/// 127.0.0.0/8 must not be taken for a drop of the SSH port.
#[test]
fn a_kubeadm_node_is_quiet_when_the_wishes_keep_ssh_open() {
    let text = ONLY_443.replace(
        "        - web:",
        "        - est: -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n        \
         - ssh: -p tcp --dport 22 -j ACCEPT\n        - web:",
    );
    let w = warnings(
        host(&dump("kubeadm-node.save")),
        &wishes(&text),
        &ssh_from("192.0.2.1"),
    );
    assert_eq!(w, []);
}

/// Reading stays cheap: after the plan's reads, one read for the four
/// chains INPUT jumps to (they jump nowhere), and nothing of FORWARD's,
/// OUTPUT's or the nat table's.
#[test]
fn on_a_kubeadm_node_one_read_gets_the_chains_input_jumps_to() {
    let (_, reads) = warnings_and_reads(
        host(&dump("kubeadm-node.save")),
        &wishes(ONLY_443),
        &ssh_from("192.0.2.1"),
    );
    let mut want = Scope::none();
    want.v4 = filter_chains(&[
        "KUBE-EXTERNAL-SERVICES",
        "KUBE-FIREWALL",
        "KUBE-NODEPORTS",
        "KUBE-PROXY-FIREWALL",
    ]);
    assert_eq!(reads, [want]);
}

fn filter_chains(names: &[&str]) -> Rules {
    Rules::Chains(
        names
            .iter()
            .map(|c| ("filter".to_string(), c.to_string()))
            .collect::<BTreeSet<_>>(),
    )
}

/// ufw with no `ufw allow` rule: INPUT goes through six ufw chains and two
/// levels below them; ufw-before-input accepts ESTABLISHED, and nothing
/// accepts port 22 before ufw-reject-input's catch-all REJECT, which the
/// warning names. One read per level of jumps.
#[test]
fn a_ufw_host_without_user_rules_warns_that_ssh_is_cut_by_ufw_reject_input() {
    let (w, reads) = warnings_and_reads(
        host(&dump("ufw-host.save")),
        &wishes(ONLY_443),
        &ssh_from("192.0.2.1"),
    );
    assert_eq!(kinds(&w), [Kind::SshPortClosed], "{w:#?}");
    assert!(
        w[0].message
            .contains("`-A ufw-reject-input -j REJECT --reject-with icmp-port-unreachable`"),
        "{}",
        w[0]
    );
    let level = |names: &[&str]| {
        let mut s = Scope::none();
        s.v4 = filter_chains(names);
        s
    };
    assert_eq!(
        reads,
        [
            level(&[
                "ufw-after-input",
                "ufw-after-logging-input",
                "ufw-before-input",
                "ufw-before-logging-input",
                "ufw-reject-input",
                "ufw-track-input",
            ]),
            level(&[
                "ufw-logging-deny",
                "ufw-not-local",
                "ufw-skip-to-policy-input",
                "ufw-user-input",
            ]),
        ]
    );
}

/// ufw with `ufw allow 22` and more, on a host without conntrack rules:
/// port 22 is accepted two chains down (ufw-before-input jumps to
/// ufw-user-input), so no SSH warning; but nothing accepts ESTABLISHED
/// (the very trouble of the forum thread the dump comes from).
#[test]
fn a_ufw_host_whose_user_rules_accept_22_gets_no_ssh_warning() {
    let w = warnings(
        host(&dump("ufw-host-user-rules.save")),
        &wishes(ONLY_443),
        &ssh_from("192.0.2.1"),
    );
    assert_eq!(kinds(&w), [Kind::NoEstablished], "{w:#?}");
}

/// The fail2ban host accepts 22 on one interface and ESTABLISHED on
/// another: the lint cannot tell the interface, so it is quiet. A client
/// in a network INPUT rejects, or one fail2ban banned (a ban added to the
/// recorded f2b-sshd, which had none), would not get in again: the jump to
/// f2b-sshd is taken by tcp port 22 only, and the ban by that client only.
#[test]
fn a_fail2ban_host_warns_only_for_a_client_that_is_rejected_or_banned() {
    let save = dump("fail2ban-host.save");
    assert_eq!(
        warnings(host(&save), &wishes(ONLY_443), &ssh_from("192.0.2.1")),
        []
    );
    let w = warnings(host(&save), &wishes(ONLY_443), &ssh_from("58.241.0.9"));
    assert_eq!(kinds(&w), [Kind::SshPortClosed], "{w:#?}");
    assert!(
        w[0].message.contains("-s 58.240.0.0/15 -j REJECT"),
        "{}",
        w[0]
    );

    let ban = "-A f2b-sshd -s 192.0.2.1/32 -j REJECT --reject-with icmp-port-unreachable\n";
    let banned = save.replace(
        "-A f2b-sshd -j RETURN\n",
        &format!("{ban}-A f2b-sshd -j RETURN\n"),
    );
    assert_ne!(banned, save);
    let w = warnings(host(&banned), &wishes(ONLY_443), &ssh_from("192.0.2.1"));
    assert_eq!(kinds(&w), [Kind::SshPortClosed], "{w:#?}");
    assert!(
        w[0].message
            .contains("`-A f2b-sshd -s 192.0.2.1/32 -j REJECT"),
        "{}",
        w[0]
    );
    assert_eq!(
        warnings(host(&banned), &wishes(ONLY_443), &ssh_from("192.0.2.2")),
        []
    );
}
