//! Planning at the scale of a Kubernetes host: a 50,000-rule chain and
//! 1,000 wishes. This asserts the result, not the time (CI machines are
//! noisy); the time is printed, and `scripts/bench` reports it against a
//! floor.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use pyfw::plan::plan;
use pyfw::state::{State, parse_iptables_save};

#[test]
fn a_50k_rule_chain_with_1000_wishes() {
    let mut save = String::from(
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:KUBE-SVC-BIG - [0:0]\n",
    );
    for i in 0..50_000u32 {
        let _ = writeln!(
            save,
            "-A FORWARD -s 10.{}.{}.{}/32 -m comment --comment \"default/svc-{i}:http cluster IP\" -j KUBE-SVC-BIG",
            i >> 16,
            (i >> 8) & 255,
            i & 255
        );
    }
    // Half the wishes exist already, at the bottom, in order.
    for i in 0..500u32 {
        let _ = writeln!(
            save,
            "-A FORWARD -s 192.0.{}.{}/32 -m comment --comment w{i} -j ACCEPT",
            i >> 8,
            i & 255
        );
    }
    save.push_str("COMMIT\n");
    let mut yaml =
        String::from("pyfw_wishes:\n  iptables:\n    filter:\n      FORWARD:\n        rules:\n");
    for i in 0..1000u32 {
        let _ = writeln!(
            yaml,
            "        - w{i}: -s 192.0.{}.{}/32 -m comment --comment w{i} -j ACCEPT",
            i >> 8,
            i & 255
        );
    }

    let t = Instant::now();
    let ruleset = parse_iptables_save(&save).unwrap();
    let parsed = t.elapsed();
    let wishes = pyfw::wishes::parse(&yaml, Path::new("scale.yaml")).unwrap();
    let state = State {
        v4: ruleset,
        ..State::default()
    };
    let t = Instant::now();
    let p = plan(&wishes, &state);
    let planned = t.elapsed();
    eprintln!("parse 50,500 rules: {parsed:?}; plan 1,000 wishes: {planned:?}");

    // 500 present rules move up (4 commands each), 500 are inserted.
    assert_eq!(p.commands.len(), 500 * 4 + 500);
    assert!(
        p.commands
            .iter()
            .all(|c| !c.args.contains(&"KUBE-SVC-BIG".to_string())
                || c.args.iter().any(|a| a.starts_with("_pyfw_temp_"))),
        "no foreign rule is touched"
    );
}
