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

/// The warnings a file loads with, as printed.
fn warnings(yaml: &str) -> Vec<String> {
    let w =
        parse(yaml, Path::new("/etc/pyfw/wishes.yaml")).unwrap_or_else(|e| panic!("refused: {e}"));
    w.warnings.iter().map(ToString::to_string).collect()
}

/// Policies and verdicts a table does not take are refused at load, so
/// that `plan` and `check` say so too: iptables refuses DROP in nat (`-P`
/// and `-j`), and the kernel REJECT outside filter (a bare `Invalid
/// argument`). raw, mangle and security take DROP.
#[test]
fn policies_and_verdicts_a_table_does_not_take_are_refused() {
    insta::assert_snapshot!(
        error("pyfw_wishes:\n  iptables:\n    nat:\n      PREROUTING:\n        default_action: DROP\n"),
        @"/etc/pyfw/wishes.yaml:5: nat/PREROUTING: the nat table takes only `default_action: ACCEPT`: it is not for filtering, and iptables refuses DROP there; drop packets in the filter, raw or mangle table"
    );
    insta::assert_snapshot!(
        error("pyfw_wishes:\n  ip6tables:\n    nat:\n      OUTPUT:\n        rules:\n        - no: -p tcp -j DROP\n"),
        @"/etc/pyfw/wishes.yaml:6: ip6tables:nat/OUTPUT/no: `-j DROP` in the nat table: it is not for filtering, and iptables refuses DROP there; drop packets in the filter, raw or mangle table"
    );
    insta::assert_snapshot!(
        error("pyfw_wishes:\n  iptables:\n    raw:\n      PREROUTING:\n        rules:\n        - no: -p tcp -j REJECT --reject-with tcp-reset\n"),
        @"/etc/pyfw/wishes.yaml:6: raw/PREROUTING/no: `-j REJECT` works only in the filter table (elsewhere the kernel refuses it with a bare `Invalid argument`); use DROP here, or reject in filter"
    );
    for table in ["raw", "mangle", "security"] {
        let chain = pyfw::state::builtin_chains(table)[0];
        let yaml = format!(
            "pyfw_wishes:\n  iptables:\n    {table}:\n      {chain}:\n        default_action: DROP\n        rules:\n        - d: -p udp -j DROP\n"
        );
        assert!(parse(&yaml, Path::new("w")).is_ok(), "{yaml}");
    }
}

/// A set a rule names is checked against the wishes: a name ipset would
/// read as an option is refused, as is a set of the other family; one
/// declared nowhere loads with a warning (another program may have made
/// it; iptables refuses the rule otherwise).
#[test]
fn sets_named_in_rules_are_checked_at_load() {
    let sets = "pyfw_wishes:\n  ipsets:\n    v6hosts:\n      type: hash:ip\n      header: family inet6\n    ports:\n      type: bitmap:port\n      header: range 0-1024\n";
    insta::assert_snapshot!(
        error(&format!("{sets}  iptables:\n    filter:\n      INPUT:\n        rules:\n        - a: -m set --match-set v6hosts src -j ACCEPT\n        - b: -m set --match-set ports dst -j ACCEPT\n")),
        @r#"/etc/pyfw/wishes.yaml:13: filter/INPUT/a: `--match-set v6hosts`: the set holds IPv6 addresses (`family inet6`), and iptables refuses it in an IPv4 rule ("The protocol family of set v6hosts is IPv6, which is not applicable"); name it in an ip6tables rule, or name a set of family inet"#
    );
    insta::assert_snapshot!(
        error("pyfw_wishes:\n  iptables:\n    filter:\n      INPUT:\n        rules:\n        - a: -m set --match-set -x src -j ACCEPT\n        - b: -j SET --add-set -exist src\n"),
        @r"
    /etc/pyfw/wishes.yaml:6: filter/INPUT/a: `--match-set -x`: ipset reads a set name starting with `-` as an option (`-exist`, `-q`, ...); no such set can be wished
    /etc/pyfw/wishes.yaml:7: filter/INPUT/b: `--add-set -exist`: ipset reads a set name starting with `-` as an option (`-exist`, `-q`, ...); no such set can be wished
    "
    );
    assert_eq!(
        warnings(
            "pyfw_wishes:\n  ipsets:\n    known:\n      type: hash:ip\n      header: family inet6\n    all:\n      type: list:set\n      members_equal: [known, f2b-sshd]\n  ip6tables:\n    filter:\n      INPUT:\n        rules:\n        - a: -m set --match-set known src -j ACCEPT\n        - b: -m set --match-set blocklist src -j DROP\n        - c: -j SET --map-set blocklist src --map-mark\n"
        ),
        [
            "/etc/pyfw/wishes.yaml:8: ipset all: list:set member `f2b-sshd`: no set `f2b-sshd` is declared under `ipsets`; ipset refuses the member unless another program has made that set",
            "/etc/pyfw/wishes.yaml:14: ip6tables:filter/INPUT/b: `--match-set blocklist`: no set `blocklist` is declared under `ipsets`; iptables refuses the rule unless another program has made that set",
            "/etc/pyfw/wishes.yaml:15: ip6tables:filter/INPUT/c: `--map-set blocklist`: no set `blocklist` is declared under `ipsets`; iptables refuses the rule unless another program has made that set",
        ]
    );
}

/// A list:set member declared nowhere is named with its own line, in a
/// block list too (the first pass over a file keeps no member's line).
#[test]
fn a_listed_set_declared_nowhere_is_named_with_its_line() {
    assert_eq!(
        warnings(
            "pyfw_wishes:\n  ipsets:\n    all:\n      type: list:set\n      members_equal:\n      - elsewhere\n      - missing\n    elsewhere:\n      type: hash:net\n"
        ),
        [
            "/etc/pyfw/wishes.yaml:7: ipset all: list:set member `missing`: no set `missing` is declared under `ipsets`; ipset refuses the member unless another program has made that set"
        ]
    );
}

/// Set names ipset would read as options (`-exist`, `-q`, `-s`: in an
/// argument vector and in `ipset restore` lines alike) are refused where
/// the set is declared and where a list:set names it.
#[test]
fn set_names_starting_with_a_dash_are_refused() {
    insta::assert_snapshot!(
        error("pyfw_wishes:\n  ipsets:\n    -exist:\n      type: hash:ip\n"),
        @"/etc/pyfw/wishes.yaml:3: ipset -exist: bad set name `-exist`: ipset reads a word starting with `-` as an option (`-exist`, `-q`, ...), so no set name may start with one"
    );
    insta::assert_snapshot!(
        error("pyfw_wishes:\n  ipsets:\n    all:\n      type: list:set\n      members_equal:\n      - -q\n"),
        @"/etc/pyfw/wishes.yaml:6: ipset all: bad member for list:set: `-q` in `-q`: not a set name"
    );
}

/// A set holds at most `maxelem` elements (65,536 unless the header says
/// otherwise), counted as the kernel stores them: each address of a
/// network or range in an address set, each network a range of a
/// `hash:net` set splits into, each port of a port range. More is refused
/// at load, naming the fix, rather than by the kernel half-way through an
/// apply (`Hash is full`).
#[test]
fn members_over_maxelem_are_refused_with_the_fix() {
    let set = |kind: &str, header: &str, members: &[&str]| {
        let mut text = format!(
            "pyfw_wishes:\n  ipsets:\n    s:\n      type: {kind}\n      header: '{header}'\n      members_equal:\n"
        );
        for m in members {
            text.push_str(&format!("      - '{m}'\n"));
        }
        text
    };
    let mut many: Vec<String> = (0..65_537u32)
        .map(|i| format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255))
        .collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    insta::assert_snapshot!(
        error(&set("hash:ip", "family inet", &refs)),
        @"/etc/pyfw/wishes.yaml:3: ipset s: 65537 elements (as the kernel stores them) but the set holds at most 65536 (ipset's default maxelem): the kernel would refuse the rest (`Hash is full`); add `maxelem 131072` to the header"
    );
    many.pop();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    assert!(parse(&set("hash:ip", "family inet", &refs), Path::new("w")).is_ok());
    insta::assert_snapshot!(
        error(&set("hash:ip", "maxelem 4", &["10.0.0.0/30", "10.0.1.1"])),
        @"/etc/pyfw/wishes.yaml:5: ipset s: 5 elements (as the kernel stores them) but `maxelem 4` holds at most 4: the kernel would refuse the rest (`Hash is full`); raise it to `maxelem 8`"
    );
    insta::assert_snapshot!(
        error(&set("hash:net", "maxelem 4", &["10.0.0.1-10.0.0.10"])),
        @"/etc/pyfw/wishes.yaml:5: ipset s: 5 elements (as the kernel stores them) but `maxelem 4` holds at most 4: the kernel would refuse the rest (`Hash is full`); raise it to `maxelem 8`"
    );
    insta::assert_snapshot!(
        error(&set("hash:ip,port", "maxelem 10", &["10.0.0.1,tcp:80-90"])),
        @"/etc/pyfw/wishes.yaml:5: ipset s: 11 elements (as the kernel stores them) but `maxelem 10` holds at most 10: the kernel would refuse the rest (`Hash is full`); raise it to `maxelem 16`"
    );
    assert!(
        parse(
            &set("hash:ip,port", "maxelem 11", &["10.0.0.1,tcp:80-90"]),
            Path::new("w")
        )
        .is_ok()
    );
    assert!(
        parse(
            &set("hash:net", "maxelem 5", &["10.0.0.1-10.0.0.10"]),
            Path::new("w")
        )
        .is_ok()
    );
}

/// A bitmap set holds what its `range` says: a member outside it, or a
/// `bitmap:ip` range of more than 65,536 addresses, is refused at load.
#[test]
fn bitmap_ranges_bound_their_members() {
    insta::assert_snapshot!(
        error("pyfw_wishes:\n  ipsets:\n    p:\n      type: bitmap:port\n      header: range 0-1024\n      members_equal: [22, 2000]\n"),
        @"/etc/pyfw/wishes.yaml:6: ipset p: bad member for bitmap:port: `2000` is outside the set's `range 0-1024` (the kernel refuses it: `Element is out of the range of the set`)"
    );
    insta::assert_snapshot!(
        error("pyfw_wishes:\n  ipsets:\n    b:\n      type: bitmap:ip\n      header: range 10.0.0.0/24\n      members_equal:\n      - 10.0.0.7\n      - 10.0.1.0/30\n"),
        @"/etc/pyfw/wishes.yaml:8: ipset b: bad member for bitmap:ip: `10.0.1.0/30` is outside the set's `range 10.0.0.0/24` (the kernel refuses it: `Element is out of the range of the set`)"
    );
    insta::assert_snapshot!(
        error("pyfw_wishes:\n  ipsets:\n    b:\n      type: bitmap:ip\n      header: range 10.0.0.0/8\n"),
        @"/etc/pyfw/wishes.yaml:5: ipset b: `range 10.0.0.0/8` spans 16777216 addresses, and a bitmap:ip set at most 65536 (ipset: `The range you specified exceeds the size limit of the set type`); use hash:ip or hash:net"
    );
}

/// `-6` in an iptables rule (and `-4` in an ip6tables one): `iptables -A`
/// refuses it, and `iptables-restore` skips the rule without a word.
#[test]
fn a_rule_for_the_other_family_is_refused() {
    insta::assert_snapshot!(
        error(&wrap_rules("        - v6: -6 -p tcp --dport 22 -j ACCEPT\n")),
        @"/etc/pyfw/wishes.yaml:6: filter/INPUT/v6: `-6` in an iptables (IPv4) rule: iptables refuses it, and iptables-restore skips the rule without a word; write the rule under `ip6tables`"
    );
    insta::assert_snapshot!(
        error("pyfw_wishes:\n  ip6tables:\n    filter:\n      INPUT:\n        rules:\n        - v4: -p tcp --ipv4 -j ACCEPT\n"),
        @"/etc/pyfw/wishes.yaml:6: ip6tables:filter/INPUT/v4: `--ipv4` in an ip6tables (IPv6) rule: ip6tables refuses it, and ip6tables-restore skips the rule without a word; write the rule under `iptables`"
    );
    // The family's own flag is harmless (iptables drops it).
    assert!(
        parse(
            &wrap_rules("        - v4: -4 -p tcp -j ACCEPT\n"),
            Path::new("w")
        )
        .is_ok()
    );
}

/// `-s a,b` makes iptables add one rule per address, where a wish is one
/// rule: refused, suggesting a set.
#[test]
fn several_addresses_in_one_rule_are_refused_with_a_set_suggested() {
    insta::assert_snapshot!(
        error(&wrap_rules("        - two: -s 10.0.0.1,10.0.0.2 -j ACCEPT\n")),
        @"/etc/pyfw/wishes.yaml:6: filter/INPUT/two: `-s 10.0.0.1,10.0.0.2`: iptables makes a rule of each address, where a wish is one rule; put the addresses in a set (`type: hash:net`, `members_equal: [10.0.0.1, 10.0.0.2]`) and match it with `-m set --match-set NAME src`"
    );
    insta::assert_snapshot!(
        error("pyfw_wishes:\n  ip6tables:\n    filter:\n      OUTPUT:\n        rules:\n        - two: --dst=2001:db8::1,2001:db8::/64 -j ACCEPT\n"),
        @"/etc/pyfw/wishes.yaml:6: ip6tables:filter/OUTPUT/two: `--dst=2001:db8::1,2001:db8::/64`: ip6tables makes a rule of each address, where a wish is one rule; put the addresses in a set (`type: hash:net`, `header: family inet6`, `members_equal: [2001:db8::1, 2001:db8::/64]`) and match it with `-m set --match-set NAME dst`"
    );
    // A comma elsewhere is no address list.
    assert!(
        parse(
            &wrap_rules("        - c: -p tcp -m multiport --dports 1,2 -s 10.0.0.0/8 -j ACCEPT\n"),
            Path::new("w")
        )
        .is_ok()
    );
}
