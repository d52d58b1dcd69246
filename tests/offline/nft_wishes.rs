//! The `nftables:` section of a wishes file: what loads, and every way it
//! can be wrong, each message with the file, the line and the wish
//! (`nft FAMILY TABLE/CHAIN/RULE`).

use std::path::Path;

use pyfw::wishes::nft::NftFamily;
use pyfw::wishes::parse;

fn error(yaml: &str) -> String {
    match parse(yaml, Path::new("/etc/pyfw/wishes.yaml")) {
        Ok(w) => panic!("accepted: {w:#?}"),
        Err(e) => e.to_string(),
    }
}

fn table(body: &str) -> String {
    format!("pyfw_wishes:\n  nftables:\n    inet pyfw:\n{body}")
}

#[test]
fn a_table_loads_with_its_chains_sets_and_rules_as_typed() {
    let text = table(
        "      sets:
        allowed_hosts:
          type: ipv4_addr
          flags: [interval]
          elements:
          - 192.168.122.193
          - 10.0.0.0/8
        seen:
          typeof: ip saddr
          flags: dynamic, timeout
          timeout: 1h
          size: 65535
      chains:
        forward:
          type: filter
          hook: forward
          priority: filter - 1
          policy: accept
          rules:
          - ct state established,related accept
          - only_allowed: oifname \"docker0\" ip saddr != @allowed_hosts reject
          - 'log prefix \"pyfw: \" drop'
        helper:
",
    );
    let w = parse(&text, Path::new("w.yaml")).unwrap();
    let [t] = &w.nftables[..] else {
        panic!("{w:#?}")
    };
    assert_eq!(
        (t.family, t.name.as_str(), t.line),
        (NftFamily::Inet, "pyfw", 3)
    );
    assert_eq!(t.sets[0].key, "type ipv4_addr");
    assert_eq!(t.sets[0].elements, ["192.168.122.193", "10.0.0.0/8"]);
    assert_eq!(t.sets[1].key, "typeof ip saddr");
    assert_eq!(t.sets[1].flags, ["dynamic", "timeout"]);
    assert_eq!(t.sets[1].options, ["timeout 1h", "size 65535"]);
    let forward = &t.chains[0];
    let base = forward.base.as_ref().unwrap();
    assert_eq!(base.priority, "filter - 1");
    assert_eq!(forward.rules[1].name.as_deref(), Some("only_allowed"));
    assert_eq!(forward.rules[2].text, "log prefix \"pyfw: \" drop");
    assert!(t.chains[1].base.is_none() && t.chains[1].rules.is_empty());
    // Every wish is found again by its label, as messages name it.
    assert_eq!(w.line_of("nft inet pyfw/forward/only_allowed"), Some(24));
    assert_eq!(w.line_of("nft inet pyfw/forward/#1"), Some(23));
    assert_eq!(w.line_of("nft inet pyfw/set seen"), Some(11));
    assert_eq!(w.line_of("nft inet pyfw/helper"), Some(26));
    assert_eq!(w.line_of("nft inet pyfw"), Some(3));
}

#[test]
fn tables_are_family_and_name_and_never_another_programs() {
    insta::assert_snapshot!(error("pyfw_wishes:\n  nftables:\n    pyfw: {}\n"),
        @"/etc/pyfw/wishes.yaml:3: a table is `FAMILY NAME` (such as `inet pyfw`), not `pyfw`");
    insta::assert_snapshot!(error("pyfw_wishes:\n  nftables:\n    ipv4 pyfw: {}\n"),
        @"/etc/pyfw/wishes.yaml:3: nft ipv4 pyfw: unknown family `ipv4` (expected one of ip, ip6, inet, arp, bridge, netdev)");
    insta::assert_snapshot!(error("pyfw_wishes:\n  nftables:\n    ip filter: {}\n"),
        @"/etc/pyfw/wishes.yaml:3: nft ip filter: pyfw cannot own this table: iptables-nft keeps its (and pyfw's iptables wishes') rules there; pick another name");
    insta::assert_snapshot!(error("pyfw_wishes:\n  nftables:\n    ip docker-bridges: {}\n"),
        @"/etc/pyfw/wishes.yaml:3: nft ip docker-bridges: pyfw cannot own this table: it is Docker's (its nftables firewall backend); pick another name");
    insta::assert_snapshot!(error("pyfw_wishes:\n  nftables:\n    inet firewalld: {}\n"),
        @"/etc/pyfw/wishes.yaml:3: nft inet firewalld: pyfw cannot own this table: it is firewalld's; pick another name");
    insta::assert_snapshot!(error("pyfw_wishes:\n  nftables:\n    inet firewalld_policy_drop: {}\n"),
        @"/etc/pyfw/wishes.yaml:3: nft inet firewalld_policy_drop: pyfw cannot own this table: it is firewalld's (its reload and panic mode); pick another name");
    insta::assert_snapshot!(error("pyfw_wishes:\n  nftables:\n    inet 'my table': {}\n"),
        @"/etc/pyfw/wishes.yaml:3: a table is `FAMILY NAME` (such as `inet pyfw`), not `inet 'my table'`");
    insta::assert_snapshot!(error("pyfw_wishes:\n  nftables:\n    inet _pyfw_x: {}\n"),
        @"/etc/pyfw/wishes.yaml:3: nft inet _pyfw_x: table names starting with `_pyfw_` are reserved for pyfw's own temporary rules, chains and sets; pick another name");
    let e = error("pyfw_wishes:\n  nftables:\n    inet pyfw:\n      chain: {}\n");
    assert!(
        e.starts_with("/etc/pyfw/wishes.yaml:4:") && e.contains("chain"),
        "{e}"
    );
}

#[test]
fn base_chains_are_checked_before_nft_sees_them() {
    let chain = |body: &str| error(&table(&format!("      chains:\n        input:\n{body}")));
    insta::assert_snapshot!(chain("          type: filter\n          hook: input\n"),
        @"/etc/pyfw/wishes.yaml:6: nft inet pyfw/input: a base chain needs all of `type`, `hook` and `priority` (a regular chain none of them)");
    insta::assert_snapshot!(chain("          type: filtre\n          hook: input\n          priority: 0\n"),
        @"/etc/pyfw/wishes.yaml:6: nft inet pyfw/input: `type` must be one of filter, nat, route, not `filtre`");
    insta::assert_snapshot!(chain("          type: filter\n          hook: ingres\n          priority: 0\n"),
        @"/etc/pyfw/wishes.yaml:7: nft inet pyfw/input: `hook` must be one of prerouting, input, forward, output, postrouting, ingress, not `ingres`");
    insta::assert_snapshot!(chain("          type: filter\n          hook: input\n          priority: filter -\n"),
        @"/etc/pyfw/wishes.yaml:8: nft inet pyfw/input: bad priority `filter -` (a number, or one of raw, mangle, dstnat, filter, security, srcnat, out with an optional `+ N` or `- N`)");
    insta::assert_snapshot!(chain("          type: filter\n          hook: input\n          priority: 0\n          policy: DROP\n"),
        @"/etc/pyfw/wishes.yaml:9: nft inet pyfw/input: `policy` must be one of accept, drop, not `DROP`");
    insta::assert_snapshot!(chain("          policy: drop\n"),
        @"/etc/pyfw/wishes.yaml:6: nft inet pyfw/input: `policy` is only for base chains (with `type`, `hook` and `priority`)");
    let e = error(&table("      chains:\n        in put: {}\n"));
    assert!(
        e.starts_with("/etc/pyfw/wishes.yaml:5: nft inet pyfw/in put: bad chain name"),
        "{e}"
    );
}

#[test]
fn rules_stay_one_rule_of_their_chain() {
    let rules = |items: &str| {
        error(&table(&format!(
            "      chains:\n        input:\n          rules:\n{items}"
        )))
    };
    insta::assert_snapshot!(rules("          - tcp dport 22 accept\n          - \"accept }\\ntable ip x {\"\n"),
        @r#"/etc/pyfw/wishes.yaml:8: nft inet pyfw/input/#2: bad rule text: holds the control character '\n'; write it on one line"#);
    insta::assert_snapshot!(rules("          - accept; add table ip evil\n"),
        @"/etc/pyfw/wishes.yaml:7: nft inet pyfw/input/#1: bad rule text: holds `;` outside quotes; write one rule or element per list item");
    insta::assert_snapshot!(rules("          - accept } table ip evil {\n"),
        @"/etc/pyfw/wishes.yaml:7: nft inet pyfw/input/#1: bad rule text: closes a brace it did not open");
    insta::assert_snapshot!(rules("          - ssh: tcp dport { 22 accept\n"),
        @"/etc/pyfw/wishes.yaml:7: nft inet pyfw/input/ssh: bad rule text: has an unclosed `{`");
    insta::assert_snapshot!(rules("          - tcp dport 22 log prefix ssh: accept\n"),
        @"/etc/pyfw/wishes.yaml:7: nft inet pyfw/input/tcp dport 22 log prefix ssh: bad rule name `tcp dport 22 log prefix ssh` (1-64 characters of A-Z a-z 0-9 _ . : -); a rule holding `: ` must be quoted, or it reads as `NAME: RULE`");
    insta::assert_snapshot!(rules("          - a: accept\n          - a: drop\n"),
        @"/etc/pyfw/wishes.yaml:8: nft inet pyfw/input/a: duplicate rule name (first defined on line 7)");
    insta::assert_snapshot!(rules("          - [accept]\n"),
        @"/etc/pyfw/wishes.yaml:7: nft inet pyfw/input: each rule must be text (`- RULE`) or a one-key map (`- NAME: RULE`); quote a rule that holds `: `");
}

#[test]
fn sets_are_checked_with_their_elements_lines() {
    let set = |body: &str| error(&table(&format!("      sets:\n        allowed:\n{body}")));
    insta::assert_snapshot!(set("          flags: [interval]\n"),
        @"/etc/pyfw/wishes.yaml:5: nft inet pyfw/set allowed: a set needs `type` or `typeof`");
    insta::assert_snapshot!(set("          type: ipv4_addr\n          typeof: ip saddr\n"),
        @"/etc/pyfw/wishes.yaml:7: nft inet pyfw/set allowed: a set has `type` or `typeof`, not both");
    insta::assert_snapshot!(set("          type: ipv4_addr\n          flags: [intervall]\n"),
        @"/etc/pyfw/wishes.yaml:7: nft inet pyfw/set allowed: a set flag must be one of constant, dynamic, interval, timeout, not `intervall`");
    insta::assert_snapshot!(set("          type: ipv4_addr\n          timeout: 1 hour\n"),
        @"/etc/pyfw/wishes.yaml:7: nft inet pyfw/set allowed: `timeout`: bad duration `1 hour` (such as `30s`, `10m`, `1h30m`, `2d`)");
    insta::assert_snapshot!(set("          type: ipv4_addr\n          elements:\n          - 10.0.0.1\n          - 10.0.0.2, 10.0.0.3\n          - [10.0.0.4]\n"),
        @r"
    /etc/pyfw/wishes.yaml:9: nft inet pyfw/set allowed: bad element `10.0.0.2, 10.0.0.3`: holds `,` outside braces and quotes; write one element per list item
    /etc/pyfw/wishes.yaml:10: nft inet pyfw/set allowed: an element must be a single value
    ");
}

#[test]
fn a_long_element_list_names_the_bad_line() {
    // Long runs of plain elements are read without their lines first (see
    // wishes::lift); an error still names its line.
    let mut items: String = (0..300)
        .map(|i| format!("          - 10.0.{}.{}\n", i / 250, i % 250))
        .collect();
    items.push_str("          - 10.9.9.9,10.9.9.8\n");
    let e = error(&table(&format!(
        "      sets:\n        big:\n          type: ipv4_addr\n          elements:\n{items}"
    )));
    assert!(
        e.starts_with("/etc/pyfw/wishes.yaml:308: nft inet pyfw/set big: bad element"),
        "{e}"
    );
    let ok = table(&format!(
        "      sets:\n        big:\n          type: ipv4_addr\n          elements:\n{}",
        (0..300)
            .map(|i| format!("          - 10.0.{}.{}\n", i / 250, i % 250))
            .collect::<String>()
    ));
    let w = parse(&ok, Path::new("w.yaml")).unwrap();
    assert_eq!(w.nftables[0].sets[0].elements.len(), 300);
}
