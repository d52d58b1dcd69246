//! Fuzzing as part of the test suite: the cargo-fuzz targets' bodies
//! (`tests/fuzz_model/mod.rs`, also run by `fuzz/`) under proptest, with a
//! modest number of cases (`PYFW_FUZZ_CASES` raises it for a long run), and
//! every input of the kept corpus (`fuzz/corpus/TARGET/`) replayed.

use crate::fuzz_model;

use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("PYFW_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

/// Runs `target` on every file of `fuzz/corpus/NAME/`; returns how many.
fn replay(name: &str, target: fn(&[u8])) -> usize {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(name);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let data = std::fs::read(entry.path()).unwrap();
        target(&data);
        n += 1;
    }
    n
}

#[test]
fn the_kept_corpus_replays_cleanly() {
    let mut total = 0;
    for (name, target) in [
        ("wishes", fuzz_model::wishes_target as fn(&[u8])),
        ("iptables_save", fuzz_model::iptables_save_target),
        ("ipset_save", fuzz_model::ipset_save_target),
        ("rule_split", fuzz_model::rule_split_target),
        ("planner", fuzz_model::planner_target),
    ] {
        let n = replay(name, target);
        assert!(n > 0, "fuzz/corpus/{name} is empty");
        total += n;
    }
    eprintln!("replayed {total} corpus inputs");
}

/// YAML that looks like wishes, from fragments, so that the loader's
/// validation is reached and not only its parser.
fn wishes_yaml() -> impl Strategy<Value = String> {
    let word = "[ -~]{0,12}";
    let rule = prop_oneof![
        Just("-p tcp --dport 22 -j ACCEPT".to_string()),
        Just("-m comment --comment other -j ACCEPT".to_string()),
        Just("-j LOG --log-prefix 'a b'".to_string()),
        "[ -~]{0,30}",
    ];
    (
        proptest::collection::vec((word, rule), 0..5),
        proptest::collection::vec(word, 0..3),
        "(DROP|ACCEPT|[A-Z]{0,5})",
        "(INPUT|FORWARD|DOCKER|[ -~]{0,10})",
        "(hash:ip|hash:net|bitmap:port|list:set|[a-z:]{0,8})",
    )
        .prop_map(|(rules, members, policy, chain, kind)| {
            let mut y = String::from("pyfw_wishes:\n  ipsets:\n    s1:\n");
            y.push_str(&format!("      type: {kind:?}\n      members_equal:\n"));
            for m in members {
                y.push_str(&format!("      - {m:?}\n"));
            }
            y.push_str(&format!(
                "  iptables:\n    filter:\n      {chain:?}:\n        default_action: {policy}\n        rules:\n"
            ));
            for (name, text) in rules {
                y.push_str(&format!("        - {name:?}: {text:?}\n"));
            }
            y
        })
}

proptest! {
    #![proptest_config(crate::proptest_config(cases()))]

    #[test]
    fn fuzz_wishes_loader(text in prop_oneof![wishes_yaml(), "\\PC{0,300}"]) {
        fuzz_model::wishes_target(text.as_bytes());
    }

    #[test]
    fn fuzz_iptables_save(data in proptest::collection::vec(any::<u8>(), 0..400)) {
        fuzz_model::iptables_save_target(&data);
    }

    #[test]
    fn fuzz_ipset_save(lines in proptest::collection::vec(prop_oneof![
        "[a-z_]{1,8}".prop_map(|n| format!("create {n} hash:ip family inet hashsize 1024")),
        ("[a-z_]{1,8}", "[0-9.:/a-f,]{1,20}").prop_map(|(n, m)| format!("add {n} {m}")),
        ("[a-z_]{1,8}", "[ -~]{0,20}").prop_map(|(n, c)| format!("add {n} 10.0.0.1 comment {c:?}")),
        "\\PC{0,60}",
    ], 0..20)) {
        fuzz_model::ipset_save_target(lines.join("\n").as_bytes());
    }

    #[test]
    fn fuzz_rule_split(text in prop_oneof!["[ -~]{0,80}", "\\PC{0,80}"]) {
        fuzz_model::rule_split_target(text.as_bytes());
    }

    #[test]
    fn fuzz_planner(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        fuzz_model::planner_target(&data);
    }
}

/// Inputs the fuzzers found, kept whatever `cargo fuzz cmin` keeps: each
/// broke a property once (the planner's two are in
/// `tests/offline/ordering.rs`).
#[test]
fn fuzz_findings_stay_fixed() {
    // A list:set member named `comment`: the member's comment is the one
    // after it, not the member itself.
    let sets = pyfw::state::parse_ipset_save(
        "create l list:set size 8 comment\nadd l comment comment \"the comment\"\n",
    )
    .unwrap();
    assert_eq!(sets["l"].comments["comment"], "the comment");
    fuzz_model::ipset_save_target(b"create l list:set size 8 comment\nadd l comment comment x\n");
    // Whitespace the two tokenizers disagree on is an error, not a wrong
    // comment.
    assert!(
        pyfw::state::parse_ipset_save("create s hash:ip\nadd s\x0bx 1.2.3.4 comment c\n").is_err()
    );
    // A NUL in saved rules: parsed, but not printable as text.
    fuzz_model::iptables_save_target(
        b"*filter\n:INPUT ACCEPT [0:0]\n-A INPUT --sport\x0067 -j ACCEPT\nCOMMIT\n",
    );
}
