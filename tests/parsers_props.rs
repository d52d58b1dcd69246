//! The parsers read text from the kernel tools and from operators. On any
//! input they return a value or an error; they never panic.

use std::path::Path;

use proptest::prelude::*;
use pyfw::state::rule::Rule;
use pyfw::state::{parse_ipset_save, parse_iptables_save, render_ruleset};

/// Lines that look like `iptables-save` output, with damage mixed in.
fn save_line() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("*filter".to_string()),
        Just("*nat".to_string()),
        Just("COMMIT".to_string()),
        Just("# Warning: iptables-legacy tables present".to_string()),
        "[A-Za-z0-9_./-]{1,30}".prop_map(|c| format!(":{c} - [0:0]")),
        "(INPUT|FORWARD|OUTPUT)".prop_map(|c| format!(":{c} DROP [12:345]")),
        ("[A-Za-z0-9_./-]{1,30}", "[ -~]{0,60}").prop_map(|(c, r)| format!("-A {c} {r}")),
        ("(INPUT|FORWARD)", "[ -~]{0,40}")
            .prop_map(|(c, r)| format!("[1:2] -A {c} -m comment --comment \"{r}\" -j ACCEPT")),
        "\\PC{0,80}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    #[test]
    fn iptables_save_never_panics(lines in proptest::collection::vec(save_line(), 0..40)) {
        let text = lines.join("\n");
        if let Ok(rs) = parse_iptables_save(&text) {
            // Whatever parses renders to text that parses to the same thing.
            prop_assert_eq!(parse_iptables_save(&render_ruleset(&rs)).unwrap(), rs);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(text in "\\PC{0,400}") {
        let _ = parse_iptables_save(&text);
        let _ = parse_ipset_save(&text);
        let _ = Rule::parse(&text);
        let _ = pyfw::wishes::parse(&text, Path::new("fuzz.yaml"));
    }

    #[test]
    fn ipset_save_never_panics(lines in proptest::collection::vec(prop_oneof![
        "[a-z_]{1,8}".prop_map(|n| format!("create {n} hash:ip family inet hashsize 1024 maxelem 65536")),
        ("[a-z_]{1,8}", "[0-9.:/a-f,]{0,20}").prop_map(|(n, m)| format!("add {n} {m}")),
        "\\PC{0,60}",
    ], 0..30)) {
        let _ = parse_ipset_save(&lines.join("\n"));
    }

    #[test]
    fn wishes_like_yaml_never_panics(
        chain in "[ -~]{0,20}",
        name in "[ -~]{0,20}",
        rule in "[ -~]{0,40}",
        member in "[ -~]{0,20}",
        kind in "(hash:ip|hash:net|hash:ip,port|bitmap:port|list:set|[a-z:,]{0,12})",
    ) {
        let yaml = format!(
            "pyfw_wishes:\n  ipsets:\n    s:\n      type: {kind}\n      members_equal:\n      - {member:?}\n  iptables:\n    filter:\n      {chain:?}:\n        rules:\n        - {name:?}: {rule:?}\n"
        );
        let _ = pyfw::wishes::parse(&yaml, Path::new("fuzz.yaml"));
    }
}
