//! The parsers read text from the kernel tools and from operators. On any
//! input they return a value or an error; they never panic.

use std::collections::BTreeMap;
use std::path::Path;

use proptest::prelude::*;
use pyfw::state::rule::Rule;
use pyfw::state::{
    Chain, Ipset, Ruleset, Table, parse_ipset_save, parse_iptables_save, render_ipsets,
    render_ruleset,
};

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
    #![proptest_config(crate::proptest_config(1500))]

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

/// The options after which iptables prints a name as it is (the parser's
/// list): a word there holds no blank.
const RAW_AFTER: &[&str] = &[
    "-j",
    "--jump",
    "-g",
    "--goto",
    "-i",
    "--in-interface",
    "-o",
    "--out-interface",
    "--physdev-in",
    "--physdev-out",
    "--match-set",
    "--add-set",
    "--del-set",
    "--map-set",
];

/// Rule words as iptables may print them: options, names with quotes and
/// backslashes, values with blanks, tabs and line breaks.
fn rule_words() -> impl Strategy<Value = Vec<String>> {
    let word = prop_oneof![
        proptest::sample::select(vec![
            "-j",
            "-i",
            "--match-set",
            "-m",
            "--comment",
            "!",
            "-A"
        ])
        .prop_map(String::from),
        "[a-c\"'\\\\# $;é\t\n-]{0,8}",
    ];
    proptest::collection::vec(word, 0..8).prop_map(|mut words| {
        // A name where iptables prints one: no blank, not empty.
        for i in 1..words.len() {
            if RAW_AFTER.contains(&words[i - 1].as_str()) {
                let name: String = words[i].chars().filter(|c| !c.is_whitespace()).collect();
                words[i] = if name.is_empty() { "x".into() } else { name };
            }
        }
        words
    })
}

proptest! {
    #![proptest_config(crate::proptest_config(500))]

    /// Chains with odd names and rules with odd words, printed as
    /// iptables-save prints them, read back the same.
    #[test]
    fn saved_rules_read_back_as_printed(
        chains in proptest::collection::vec(
            ("[a-c\"'\\\\#$;é!-]{1,8}", proptest::collection::vec(rule_words(), 0..4)),
            1..4,
        )
    ) {
        let mut table = Table::default();
        for (name, rules) in chains {
            if table.chain(&name).is_some() {
                continue;
            }
            let rules = rules.into_iter().map(Rule::from_args).collect();
            table.chains.push((name, Chain { policy: None, rules }));
        }
        let mut rs = Ruleset::default();
        rs.tables.insert("filter".into(), table);
        let text = render_ruleset(&rs);
        prop_assert_eq!(parse_iptables_save(&text).unwrap(), rs, "{}", text);
    }

    /// Sets with odd names and member comments (anything but `"`, which
    /// ipset refuses), printed as ipset prints them, read back the same.
    #[test]
    fn saved_sets_read_back_as_printed(
        sets in proptest::collection::btree_map(
            "[a-c'\\\\#$;é!-]{1,8}",
            proptest::collection::vec(proptest::option::of("[a-c'\\\\# $;é\t\n-]{1,12}"), 0..4),
            1..4,
        )
    ) {
        let mut all = BTreeMap::new();
        for (name, comments) in sets {
            let mut set = Ipset {
                kind: "hash:ip".into(),
                options: vec!["family".into(), "inet".into(), "comment".into()],
                members: Default::default(),
                comments: BTreeMap::new(),
            };
            for (i, c) in comments.into_iter().enumerate() {
                let member = format!("10.0.0.{}", i + 1);
                if let Some(c) = c {
                    set.comments.insert(member.clone(), c);
                }
                set.members.push(&member);
            }
            all.insert(name, set);
        }
        let text = render_ipsets(&all);
        prop_assert_eq!(parse_ipset_save(&text).unwrap(), all, "{}", text);
    }
}
