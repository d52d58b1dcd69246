//! Every way a wishes file can be wrong, and the message an operator gets:
//! the file, the line and the wish.

use std::path::Path;

use pyfw::wishes::{RuleItem, parse};

fn error(yaml: &str) -> String {
    match parse(yaml, Path::new("/etc/pyfw/wishes.yaml")) {
        Ok(w) => panic!("accepted: {w:#?}"),
        Err(e) => e.to_string(),
    }
}

fn wrap_rules(rules: &str) -> String {
    format!("pyfw_wishes:\n  iptables:\n    filter:\n      INPUT:\n        rules:\n{rules}")
}

#[test]
fn the_spec_file_is_accepted_unchanged() {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/wishes.yaml"))
            .unwrap();
    let w = parse(&text, Path::new("wishes.yaml")).unwrap();
    assert_eq!(w.ipsets.len(), 1);
    assert_eq!(w.chains.len(), 3);
    let docker = w.chains.iter().find(|c| c.chain == "DOCKER").unwrap();
    let Some(RuleItem::Named(r)) = docker.rules.as_ref().unwrap().first() else {
        panic!("DOCKER has no named rule");
    };
    assert_eq!(r.rule.args()[0], "!");
}

#[test]
fn empty_or_truncated_files_are_not_no_wishes() {
    insta::assert_snapshot!(error(""), @r#"/etc/pyfw/wishes.yaml: file is empty; refusing to read it as "no wishes" (a truncated file must not withdraw the firewall)"#);
    insta::assert_snapshot!(error("# just a comment\n"), @r#"/etc/pyfw/wishes.yaml: has no `pyfw_wishes` key; refusing to read it as "no wishes""#);
    insta::assert_snapshot!(error("pyfw_wishes:\n"), @r#"/etc/pyfw/wishes.yaml:1: `pyfw_wishes` is empty; write `pyfw_wishes: {}` to mean "no wishes" on purpose"#);
    assert!(parse("pyfw_wishes: {}\n", Path::new("w")).is_ok());
}

#[test]
fn yaml_errors_carry_the_line() {
    let e = error("pyfw_wishes:\n  iptables:\n    filter: [\n");
    assert!(e.starts_with("/etc/pyfw/wishes.yaml:"), "{e}");
    let e = error("pyfw_wishes:\n  iptabels: {}\n");
    assert!(e.starts_with("/etc/pyfw/wishes.yaml:2:"), "{e}");
    assert!(e.contains("iptabels"), "{e}");
}

#[test]
fn unknown_keys_are_rejected() {
    let e = error("pyfw_wishes:\n  iptables:\n    filter:\n      INPUT:\n        policy: DROP\n");
    assert!(e.contains(":5:") && e.contains("policy"), "{e}");
    let e = error("pyfw_wishes:\n  ipsets:\n    s:\n      type: hash:ip\n      members: []\n");
    assert!(e.contains(":5:") && e.contains("members"), "{e}");
    insta::assert_snapshot!(
        error("pyfw_wishes:\n  iptables:\n    filtre:\n      INPUT: {}\n"),
        @"/etc/pyfw/wishes.yaml:3: unknown table `filtre` (expected one of filter, nat, mangle, raw, security)"
    );
}

#[test]
fn rule_problems_name_the_wish() {
    insta::assert_snapshot!(error(&wrap_rules(
        "        - a: -j ACCEPT\n        - a: -j DROP\n"
    )), @"/etc/pyfw/wishes.yaml:7: filter/INPUT/a: duplicate rule name (first defined on line 6)");
    insta::assert_snapshot!(error(&wrap_rules(
        "        - a: -j ACCEPT\n          b: -j DROP\n"
    )), @"/etc/pyfw/wishes.yaml:6: filter/INPUT: each rule must be a one-key map: `- NAME: RULE TEXT` or `- ~match: REGEX`");
    insta::assert_snapshot!(error(&wrap_rules("        - -j ACCEPT\n")),
        @"/etc/pyfw/wishes.yaml:6: filter/INPUT: each rule must be a one-key map: `- NAME: RULE TEXT` or `- ~match: REGEX`");
    insta::assert_snapshot!(error(&wrap_rules("        - '~match': '(unclosed'\n")),
        @r"
    /etc/pyfw/wishes.yaml:6: filter/INPUT/~match: bad regex: regex parse error:
        (unclosed
        ^
    error: unclosed group
    ");
    insta::assert_snapshot!(error(&wrap_rules("        - bad name: -j ACCEPT\n")),
        @"/etc/pyfw/wishes.yaml:6: filter/INPUT/bad name: bad rule name `bad name` (1-64 characters of A-Z a-z 0-9 _ . : -)");
    insta::assert_snapshot!(error(&wrap_rules("        - _pyfw_temp_x: -j ACCEPT\n")),
        @"/etc/pyfw/wishes.yaml:6: filter/INPUT/_pyfw_temp_x: rule names starting with `_pyfw_` are reserved for pyfw's own temporary rules, chains and sets; pick another name");
    insta::assert_snapshot!(error(&wrap_rules(
        "        - ssh: -p tcp -m comment --comment other -j ACCEPT\n"
    )), @"/etc/pyfw/wishes.yaml:6: filter/INPUT/ssh: the rule's comment `other` differs from its name; pyfw finds its rules by `--comment NAME`");
    insta::assert_snapshot!(error(&wrap_rules(
        "        - ssh: -m comment --comment \"oops -j ACCEPT\n"
    )), @"/etc/pyfw/wishes.yaml:6: filter/INPUT/ssh: bad rule text: unbalanced quotes or a trailing backslash");
    let long = "x".repeat(65);
    let e = error(&wrap_rules(&format!("        - {long}: -j ACCEPT\n")));
    assert!(e.contains("bad rule name"), "{e}");
}

#[test]
fn rules_must_be_a_list() {
    insta::assert_snapshot!(
        error("pyfw_wishes:\n  iptables:\n    filter:\n      INPUT:\n        rules:\n          a: -j ACCEPT\n"),
        @"/etc/pyfw/wishes.yaml:6: filter/INPUT: `rules` must be a list of one-key maps (`- NAME: RULE`)"
    );
}

#[test]
fn policies_only_on_builtin_chains() {
    insta::assert_snapshot!(
        error("pyfw_wishes:\n  iptables:\n    filter:\n      DOCKER:\n        default_action: DROP\n"),
        @"/etc/pyfw/wishes.yaml:5: filter/DOCKER: `default_action` is only for built-in chains (INPUT, FORWARD, OUTPUT); DOCKER is a user chain"
    );
    insta::assert_snapshot!(
        error("pyfw_wishes:\n  ip6tables:\n    filter:\n      INPUT:\n        default_action: REJECT\n"),
        @"/etc/pyfw/wishes.yaml:5: ip6tables:filter/INPUT: `default_action` must be ACCEPT or DROP, not `REJECT`"
    );
}

#[test]
fn chain_names_follow_netfilter() {
    for ok in [
        "f2b-sshd",
        "DOCKER-USER",
        "KUBE-SVC-ABCDEF0123456789",
        "ufw-user-input",
        "LIBVIRT_INP",
    ] {
        let yaml =
            format!("pyfw_wishes:\n  iptables:\n    filter:\n      {ok}:\n        rules: []\n");
        assert!(parse(&yaml, Path::new("w")).is_ok(), "{ok}");
    }
    for bad in ["-x", "ACCEPT", "a-chain-name-that-is-far-too-long"] {
        let yaml =
            format!("pyfw_wishes:\n  iptables:\n    filter:\n      '{bad}':\n        rules: []\n");
        let e = error(&yaml);
        assert!(
            e.contains(":4:") && e.contains("bad chain name"),
            "{bad}: {e}"
        );
    }
}

#[test]
fn ipset_problems() {
    insta::assert_snapshot!(
        error("pyfw_wishes:\n  ipsets:\n    s:\n      type: hash:ipp\n"),
        @"/etc/pyfw/wishes.yaml:4: ipset s: unknown ipset type `hash:ipp` (known: bitmap:ip, bitmap:ip,mac, bitmap:port, hash:ip, hash:mac, hash:ip,mac, hash:net, hash:net,net, hash:ip,port, hash:net,port, hash:ip,port,ip, hash:ip,port,net, hash:ip,mark, hash:net,port,net, hash:net,iface, list:set)"
    );
    insta::assert_snapshot!(
        error("pyfw_wishes:\n  ipsets:\n    s:\n      type: hash:ip\n      members_equal:\n      - 10.0.0.1\n      - not-an-ip\n"),
        @"/etc/pyfw/wishes.yaml:7: ipset s: bad member for hash:ip: `not-an-ip` in `not-an-ip`: not an IP address"
    );
    insta::assert_snapshot!(
        error("pyfw_wishes:\n  ipsets:\n    s:\n      type: hash:ip\n      header: family inet6\n      members_equal:\n      - 10.0.0.1\n"),
        @"/etc/pyfw/wishes.yaml:7: ipset s: bad member for hash:ip: `10.0.0.1` in `10.0.0.1`: an IPv4 address in a `family inet6` set"
    );
    let e = error("pyfw_wishes:\n  ipsets:\n    'bad name':\n      type: hash:ip\n");
    assert!(e.contains(":3: ipset bad name: bad set name"), "{e}");
    let e = error("pyfw_wishes:\n  ipsets:\n    s:\n      type: hash:ip\n      header: sizes 5\n");
    assert!(
        e.contains(":5:") && e.contains("unknown create option `sizes`"),
        "{e}"
    );
    // Port numbers may be written bare in YAML.
    assert!(parse(
        "pyfw_wishes:\n  ipsets:\n    p:\n      type: bitmap:port\n      header: range 0-1024\n      members_equal: [22, 80]\n",
        Path::new("w")
    )
    .is_ok());
}

#[test]
fn all_errors_are_reported_at_once() {
    let e = error(&wrap_rules(
        "        - bad name: -j ACCEPT\n        - ok: -j ACCEPT\n        - '~match': '('\n",
    ));
    assert_eq!(
        e.lines().filter(|l| l.starts_with("/etc/pyfw")).count(),
        2,
        "{e}"
    );
}

/// A member listed twice is named with its line, in a long list too (the
/// first pass looks for duplicates by sorting, the second names them), and
/// however its options differ. Distinct members are accepted.
#[test]
fn members_listed_twice_are_named_with_their_line() {
    let set = |members: &[String]| {
        let mut text = "pyfw_wishes:\n  ipsets:\n    s:\n      type: hash:ip\n      \
                        header: timeout 600\n      members_equal:\n"
            .to_string();
        for m in members {
            text.push_str(&format!("      - {m}\n"));
        }
        text
    };
    let mut members: Vec<String> = (0..10_000u32)
        .map(|i| format!("10.0.{}.{}", i >> 8, i & 255))
        .collect();
    assert!(parse(&set(&members), Path::new("w")).is_ok());
    members.push("10.0.7.1 timeout 60".into());
    let e = error(&set(&members));
    // The header is 6 lines; the member added last is on line 10,007.
    assert!(
        e.contains(":10007:") && e.contains("member `10.0.7.1 timeout 60` listed twice"),
        "{e}"
    );
    assert_eq!(e.lines().count(), 1, "{e}");
}

/// pyfw's own names cannot be wished: its ownership record (a wished set
/// `pyfw-owned` would replace it, and pyfw would forget what it owns), and
/// anything starting with `_pyfw_` (the temporary copies of moved rules,
/// the sets a new set is filled in before its rename, which creating a set
/// `x` would otherwise destroy as `_pyfw_fill_x`, and scratch chains).
#[test]
fn names_pyfw_uses_for_itself_are_refused() {
    insta::assert_snapshot!(
        error("pyfw_wishes:\n  ipsets:\n    pyfw-owned:\n      type: hash:ip\n"),
        @"/etc/pyfw/wishes.yaml:3: ipset pyfw-owned: the set name `pyfw-owned` is pyfw's own: it holds the record of what pyfw owns; pick another name"
    );
    insta::assert_snapshot!(
        error("pyfw_wishes:\n  ipsets:\n    _pyfw_fill_x:\n      type: hash:ip\n"),
        @"/etc/pyfw/wishes.yaml:3: ipset _pyfw_fill_x: set names starting with `_pyfw_` are reserved for pyfw's own temporary rules, chains and sets; pick another name"
    );
    insta::assert_snapshot!(
        error("pyfw_wishes:\n  iptables:\n    filter:\n      _pyfw_canon_1: {}\n"),
        @"/etc/pyfw/wishes.yaml:4: filter/_pyfw_canon_1: chain names starting with `_pyfw_` are reserved for pyfw's own temporary rules, chains and sets; pick another name"
    );
    insta::assert_snapshot!(
        error(&wrap_rules("        - _pyfw_temp_x: -j ACCEPT\n")),
        @"/etc/pyfw/wishes.yaml:6: filter/INPUT/_pyfw_temp_x: rule names starting with `_pyfw_` are reserved for pyfw's own temporary rules, chains and sets; pick another name"
    );
}

/// Names and comments the real tools could not carry back unchanged are
/// refused at load, with the file, the line and the wish, and why.
#[test]
fn names_that_would_not_read_back_are_refused_at_load() {
    insta::assert_snapshot!(
        error("pyfw_wishes:\n  iptables:\n    filter:\n      'x\"y':\n        rules: []\n"),
        @r#"/etc/pyfw/wishes.yaml:4: filter/x"y: bad chain name `x"y`: no `"` (pyfw records its chains in ipset comments, which cannot hold one)"#
    );
    insta::assert_snapshot!(
        error("pyfw_wishes:\n  ipsets:\n    'a\"b':\n      type: hash:ip\n"),
        @r#"/etc/pyfw/wishes.yaml:3: ipset a"b: bad set name (1-31 printable ASCII characters, no blanks, commas or `"`: `ipset restore` reads `"` as a quote, so no set with one can be made)"#
    );
    let member = |m: &str| {
        error(&format!(
            "pyfw_wishes:\n  ipsets:\n    s:\n      type: hash:ip\n      header: comment\n      members_equal:\n      - {m}\n"
        ))
    };
    insta::assert_snapshot!(member(r#"'10.0.0.1 comment "a\"b"'"#), @r#"/etc/pyfw/wishes.yaml:7: ipset s: bad member for hash:ip: a comment with `"` (ipset refuses it)"#);
    insta::assert_snapshot!(member(r#""10.0.0.1 comment 'a\nb'""#), @r#"/etc/pyfw/wishes.yaml:7: ipset s: bad member for hash:ip: a comment with the control character '\n' (`ipset restore` reads a line at a time)"#);
    insta::assert_snapshot!(member(r#"'10.0.0.1 comment ""'"#), @r#"/etc/pyfw/wishes.yaml:7: ipset s: bad member for hash:ip: an empty comment (ipset drops an empty word: give none)"#);
    insta::assert_snapshot!(member(r#"'10.0.0.1 comment "unclosed'"#), @r#"/etc/pyfw/wishes.yaml:7: ipset s: bad member for hash:ip: unbalanced quotes or a trailing backslash in the options"#);
    insta::assert_snapshot!(member(&format!("'10.0.0.1 comment {}'", "c".repeat(256))), @r#"/etc/pyfw/wishes.yaml:7: ipset s: bad member for hash:ip: a comment of more than 255 bytes (ipset keeps no more)"#);
    // What ipset carries unchanged is taken, quoted however the wish did.
    for m in [
        r#"'10.0.0.1 comment "a b"'"#,
        r#""10.0.0.1 comment 'a\\b #c $d'""#,
        "10.0.0.1 comment plain",
        r#"'10.0.0.1 timeout 30 comment " lead  two"'"#,
    ] {
        let yaml = format!(
            "pyfw_wishes:\n  ipsets:\n    s:\n      type: hash:ip\n      header: comment timeout 60\n      members_equal:\n      - {m}\n"
        );
        let w = parse(&yaml, Path::new("w.yaml")).unwrap_or_else(|e| panic!("{m}: {e}"));
        let members = w.ipsets[0].members.clone().unwrap();
        assert!(members[0].ends_with('"'), "{m}: {members:?}");
    }
}

/// A port written with a leading zero loads (iptables takes it), with a
/// warning naming the file, the line and the wish: iptables reads it as
/// octal (`0022` is port 18).
#[test]
fn a_port_written_in_octal_is_named_with_a_warning() {
    let w = parse(
        &wrap_rules("        - ok: -p tcp --dport 22 -j ACCEPT\n        - ssh: -p tcp --dport 0022 -j ACCEPT\n        - multi: -p tcp -m multiport --dports 80,0443 -j ACCEPT\n"),
        Path::new("/etc/pyfw/wishes.yaml"),
    )
    .unwrap();
    let warnings: Vec<String> = w.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        [
            "/etc/pyfw/wishes.yaml:7: filter/INPUT/ssh: `--dport 0022`: iptables reads `0022` as an octal number, port 18; write `22` if you mean port 22",
            "/etc/pyfw/wishes.yaml:8: filter/INPUT/multi: `--dports 80,0443`: iptables reads `0443` as an octal number, port 291; write `443` if you mean port 443",
        ]
    );
}
