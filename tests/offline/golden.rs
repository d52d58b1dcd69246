//! The spec's acceptance data, planned offline: no kernel, no root.

use std::path::Path;

use pyfw::plan::plan;
use pyfw::state::{State, parse_ipset_save, parse_iptables_save};
use pyfw::wishes;

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/spec")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn spec_state(save: &str) -> State {
    State {
        v4: parse_iptables_save(&fixture(save)).unwrap(),
        ipsets: parse_ipset_save(&fixture("ipset.save")).unwrap(),
        ..State::default()
    }
}

fn spec_wishes() -> wishes::Wishes {
    wishes::parse(&fixture("wishes.yaml"), Path::new("wishes.yaml")).unwrap()
}

fn lines(plan: &pyfw::plan::Plan) -> String {
    plan.commands.iter().map(|c| format!("{c}\n")).collect()
}

#[test]
fn docker_restart_gives_the_specs_five_commands() {
    let plan = plan(&spec_wishes(), &spec_state("after-docker-restart.save"));
    assert_eq!(lines(&plan), fixture("apply-commands.txt"));
}

#[test]
fn the_specs_result_needs_nothing() {
    let plan = plan(&spec_wishes(), &spec_state("after-apply.save"));
    assert_eq!(lines(&plan), "");
}

#[test]
fn first_apply_after_a_reboot() {
    let state = State {
        v4: parse_iptables_save(&fixture("docker-after-reboot.save")).unwrap(),
        ..State::default()
    };
    let plan = plan(&spec_wishes(), &state);
    insta::assert_snapshot!(lines(&plan), @r"
    ipset create allowed_hosts hash:ip
    ipset add allowed_hosts 192.168.122.193
    iptables -w -t filter -I DOCKER 1 ! -i docker0 -o docker0 -m set ! --match-set allowed_hosts src -m comment --comment allowed_hosts_only -j REJECT --reject-with icmp-port-unreachable
    iptables -w -t filter -I FORWARD 1 -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment allow_established -j ACCEPT
    iptables -w -t filter -I INPUT 1 -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment allow_established -j ACCEPT
    iptables -w -t filter -I INPUT 2 -p tcp -m tcp --dport 22 -m comment --comment allow_ssh -j ACCEPT
    iptables -w -t filter -I INPUT 3 -s 172.17.0.0/24 -i docker0 -m comment --comment allow_inter_docker -j ACCEPT
    iptables -w -t filter -P INPUT DROP
    ");
}

#[test]
fn reasons_name_the_drift() {
    let plan = plan(&spec_wishes(), &spec_state("after-docker-restart.save"));
    let reasons: Vec<&str> = plan.commands.iter().map(|c| c.reason.as_str()).collect();
    assert_eq!(reasons[0], "filter/DOCKER: allowed_hosts_only missing");
    assert_eq!(
        reasons[1],
        "filter/FORWARD: allow_established is at position 6, wished 1"
    );
}

#[test]
fn the_binary_plans_from_dumps_without_root() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/spec");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pyfw"))
        .arg("--wishes")
        .arg(dir.join("wishes.yaml"))
        .arg("plan")
        .arg("--iptables-save")
        .arg(dir.join("after-docker-restart.save"))
        .arg("--ipset-save")
        .arg(dir.join("ipset.save"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let commands: String = stdout
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(commands, fixture("apply-commands.txt"));
}
