//! The ordering promises, each on a concrete plan (the fuzz model in
//! `tests/fuzz_model/mod.rs` checks them on arbitrary state too):
//!
//! 1. allow rules land before a DROP policy, in the same transaction;
//! 2. a moved rule is never missing (see also
//!    `tests/offline/planner_props.rs` and
//!    `tests/kernel/netns.rs::a_move_inside_one_transaction_never_shows_a_gap`);
//! 3. every table and family is one transaction: all or nothing (see also
//!    `tests/kernel/faults.rs::a_failure_at_any_step_leaves_nothing_half_applied`);
//! 4. ipsets exist before the rules that use them, and are destroyed only
//!    after those rules are gone.

use std::path::Path;

use pyfw::kernel::transactions;
use pyfw::plan::{Command, Plan, Program, plan};
use pyfw::state::{State, parse_ipset_save, parse_iptables_save};
use pyfw::wishes::Wishes;

fn spec(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/spec")
            .join(name),
    )
    .unwrap()
}

fn wishes(text: &str) -> Wishes {
    let w = pyfw::wishes::parse(text, Path::new("w.yaml")).unwrap();
    w.map_rules(|c, r| pyfw::state::canon::normalize(&r.rule, c.family))
}

fn state(save: &str, sets: &str) -> State {
    State {
        v4: parse_iptables_save(save).unwrap(),
        ipsets: parse_ipset_save(sets).unwrap(),
        ..State::default()
    }
}

fn lines(p: &Plan) -> Vec<String> {
    p.commands.iter().map(Command::to_string).collect()
}

fn position(p: &Plan, needle: &str) -> usize {
    lines(p)
        .iter()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("`{needle}` not in the plan:\n{}", lines(p).join("\n")))
}

/// The transaction (index) that carries command `i`.
fn transaction_of(p: &Plan, i: usize) -> usize {
    transactions(&p.commands)
        .iter()
        .position(|r| r.contains(&i))
        .unwrap()
}

#[test]
fn allow_rules_land_before_a_drop_policy_in_the_same_transaction() {
    let p = plan(
        &wishes(&spec("wishes.yaml")),
        &state(&spec("docker-after-reboot.save"), ""),
    );
    let policy = position(&p, "-P INPUT DROP");
    for name in ["allow_established", "allow_ssh", "allow_inter_docker"] {
        let insert = position(
            &p,
            &format!(
                "-I INPUT {} ",
                1 + ["allow_established", "allow_ssh", "allow_inter_docker"]
                    .iter()
                    .position(|n| *n == name)
                    .unwrap()
            ),
        );
        assert!(insert < policy, "{name} must land before the DROP policy");
        assert!(lines(&p)[insert].contains(name));
        assert_eq!(
            transaction_of(&p, insert),
            transaction_of(&p, policy),
            "the rules and the policy go in one transaction: no instant of DROP without them"
        );
    }
}

#[test]
fn each_family_and_table_is_one_transaction() {
    let text = format!(
        "{}  ip6tables:\n    filter:\n      INPUT:\n        default_action: DROP\n        \
         rules:\n        - v6_ssh: -p tcp --dport 22 -j ACCEPT\n    nat:\n      PREROUTING:\n        \
         rules:\n        - redirect: -p tcp --dport 8080 -j REDIRECT --to-ports 80\n",
        spec("wishes.yaml")
    );
    let mut st = state(&spec("docker-after-reboot.save"), "");
    st.v6 = parse_iptables_save(
        "*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n",
    )
    .unwrap();
    let p = plan(&wishes(&text), &st);
    let mut seen: Vec<(String, String)> = Vec::new();
    for range in transactions(&p.commands) {
        let first = &p.commands[range.start];
        let key = match first.program {
            Program::Iptables(f) => (format!("{f:?}"), first.args[2].clone()),
            Program::Ipset => ("ipset".into(), String::new()),
            Program::Nft => ("nft".into(), String::new()),
        };
        for c in &p.commands[range.clone()] {
            let k = match c.program {
                Program::Iptables(f) => (format!("{f:?}"), c.args[2].clone()),
                Program::Ipset => ("ipset".into(), String::new()),
                Program::Nft => ("nft".into(), String::new()),
            };
            assert_eq!(k, key, "one transaction holds one family and table");
        }
        if key.0 != "ipset" {
            assert!(!seen.contains(&key), "{key:?} split over two transactions");
            seen.push(key);
        }
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
}

#[test]
fn sets_exist_before_rules_use_them_and_go_after_the_rules() {
    // Created first.
    let p = plan(
        &wishes(&spec("wishes.yaml")),
        &state(&spec("docker-after-reboot.save"), ""),
    );
    let create = position(&p, "ipset create allowed_hosts");
    let member = position(&p, "ipset add allowed_hosts 192.168.122.193");
    let rule = position(&p, "--match-set allowed_hosts");
    assert!(create < member && member < rule, "{:#?}", lines(&p));

    // Withdrawn: the rule goes, then the set.
    let applied = state(&spec("after-apply.save"), "");
    let mut sets = String::from(
        "create allowed_hosts hash:ip family inet hashsize 1024 maxelem 65536\nadd allowed_hosts 192.168.122.193\n",
    );
    sets.push_str("create pyfw-owned hash:ip family inet6 hashsize 1024 maxelem 1048576 comment\n");
    let full = wishes(&spec("wishes.yaml"));
    let record_state = State {
        ipsets: parse_ipset_save(&sets).unwrap(),
        ..applied.clone()
    };
    // Take the record the first apply writes.
    let record = plan(&full, &record_state).record;
    let mut with_record = record_state.clone();
    let owned = with_record.ipsets.get_mut("pyfw-owned").unwrap();
    for c in &record {
        if c.args[0] == "add" {
            owned.members.push(&c.args[2]);
            owned.comments.insert(c.args[2].clone(), c.args[4].clone());
        }
    }
    // The same wishes without the set and the DOCKER rule that uses it.
    let without = spec("wishes.yaml")
        .split("      DOCKER:\n")
        .next()
        .unwrap()
        .replace(
            "  ipsets:\n    allowed_hosts:\n      type: hash:ip\n      members_equal:\n      - \
             192.168.122.193\n",
            "",
        );
    let p = plan(&wishes(&without), &with_record);
    let delete = position(&p, "-D DOCKER");
    let destroy = position(&p, "ipset destroy allowed_hosts");
    assert!(delete < destroy, "{:#?}", lines(&p));
}

/// Found by the planner fuzz target: a chain pyfw created and no longer
/// wishes is not deleted while a wished rule (added by the same plan) jumps
/// to it; the kernel would refuse, and the whole apply would fail forever.
#[test]
fn a_withdrawn_chain_stays_while_a_new_wished_rule_jumps_to_it() {
    let st = state(
        "*filter\n:INPUT ACCEPT [0:0]\n:f2b-sshd - [0:0]\nCOMMIT\n",
        &format!(
            "create pyfw-owned hash:ip family inet6 comment\nadd pyfw-owned {} comment \"chain v4 filter f2b-sshd\"\n",
            pyfw::state::ownership::Owned::Chain {
                family: pyfw::state::Family::V4,
                table: "filter".into(),
                chain: "f2b-sshd".into()
            }
            .element()
        ),
    );
    let w = wishes(
        "pyfw_wishes:\n  iptables:\n    filter:\n      INPUT:\n        rules:\n        - jump: -p tcp --dport 22 -j f2b-sshd\n",
    );
    let p = plan(&w, &st);
    assert!(
        !lines(&p).iter().any(|l| l.contains("-X f2b-sshd")),
        "{:#?}",
        lines(&p)
    );
}

/// A rule of another program's that pyfw keeps as text (it cannot be
/// split into arguments without guessing) is never moved, whatever a
/// `~match` takes around it: pyfw could not hand it back to iptables. The
/// rules the `~match` takes move above it instead.
#[test]
fn a_rule_kept_as_text_never_moves() {
    let save = "*filter\n:INPUT ACCEPT [0:0]\n\
                -A INPUT -m recent --set --name \"r -j DROP\n\
                -A INPUT -s 10.0.0.1/32 -j ACCEPT\n\
                -A INPUT -s 10.0.0.2/32 -j ACCEPT\n\
                COMMIT\n";
    let s = state(save, "");
    assert!(s.v4.tables["filter"].chains[0].1.rules[0].is_opaque());
    let w = wishes(concat!(
        "pyfw_wishes:\n  iptables:\n    filter:\n      INPUT:\n        rules:\n",
        "        - ~match: '10\\.0\\.0\\.|recent'\n",
        "        - allow_x: -s 10.0.0.9/32 -j ACCEPT\n",
    ));
    let p = plan(&w, &s);
    let text = lines(&p).join("\n");
    assert!(!text.contains("recent"), "the opaque rule moved:\n{text}");
    assert!(
        text.contains("10.0.0.1/32"),
        "the matched rules move up:\n{text}"
    );
    assert!(text.contains("allow_x"), "{text}");
}
