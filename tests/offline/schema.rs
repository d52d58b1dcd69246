//! config/wishes.schema.json against the loader: every wishes file the
//! project shows validates under both; every kind of broken file the schema
//! can express is rejected by both; and the kinds only the loader can catch
//! are listed, so that the schema's description of its limits stays true.

use std::path::{Path, PathBuf};

use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn validator() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(&read("config/wishes.schema.json")).unwrap();
    assert!(
        jsonschema::meta::is_valid(&schema),
        "the schema itself is not valid JSON Schema"
    );
    jsonschema::validator_for(&schema).expect("the schema compiles")
}

/// The YAML document as a JSON value, as a YAML language server sees it.
fn to_json(yaml: &str) -> Value {
    if yaml
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        return Value::Null;
    }
    serde_saphyr::from_str(yaml).unwrap_or_else(|e| panic!("not YAML: {e}\n{yaml}"))
}

/// The schema's complaints, empty when it accepts.
fn schema_errors(v: &jsonschema::Validator, yaml: &str) -> Vec<String> {
    let doc = to_json(yaml);
    v.iter_errors(&doc)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

fn loader_accepts(yaml: &str) -> Result<(), String> {
    pyfw::wishes::parse(yaml, Path::new("w.yaml"))
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Fenced YAML blocks holding `pyfw_wishes` in a Markdown file.
fn markdown_examples(rel: &str) -> Vec<(String, String)> {
    let text = read(rel);
    let mut out = Vec::new();
    let mut block: Option<(usize, String)> = None;
    for (n, line) in text.lines().enumerate() {
        let fence = line.trim_start().starts_with("```");
        match block.take() {
            None if line.trim_start().starts_with("```yaml") => {
                block = Some((n + 1, String::new()))
            }
            None => {}
            Some((start, body)) if fence && body.contains("pyfw_wishes:") => {
                out.push((format!("{rel}:{start}"), body));
            }
            Some(_) if fence => {}
            Some((start, mut body)) => {
                body.push_str(line);
                body.push('\n');
                block = Some((start, body));
            }
        }
    }
    out
}

/// Every wishes file the project shows or ships.
fn valid_examples() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for rel in ["config/wishes.yaml", "tests/data/spec/wishes.yaml"] {
        out.push((rel.to_string(), read(rel)));
    }
    let readme = markdown_examples("README.md");
    assert!(!readme.is_empty(), "README's wishes example not found");
    out.extend(readme);
    for doc in std::fs::read_dir(root().join("docs")).unwrap() {
        let path = doc.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            let rel = path.strip_prefix(root()).unwrap().display().to_string();
            out.extend(markdown_examples(&rel));
        }
    }
    // The Kubernetes ConfigMap's file.
    let cm: Value = serde_saphyr::from_str(&read("deploy/kubernetes/configmap.yaml")).unwrap();
    let wishes = cm["data"]["wishes.yaml"]
        .as_str()
        .expect("data.wishes.yaml");
    out.push((
        "deploy/kubernetes/configmap.yaml".into(),
        wishes.to_string(),
    ));
    // The Ansible role's default wishes, as its template writes them.
    let defaults: Value =
        serde_saphyr::from_str(&read("deploy/ansible/roles/pyfw/defaults/main.yml")).unwrap();
    let wishes = serde_json::json!({ "pyfw_wishes": defaults["pyfw_wishes"] });
    out.push((
        "deploy/ansible/roles/pyfw/defaults/main.yml".into(),
        serde_json::to_string(&wishes).unwrap(),
    ));
    // Valid corners of the language, from tests/offline/wishes_errors.rs.
    for (name, yaml) in [
        ("nothing on purpose", "pyfw_wishes: {}\n"),
        (
            "rules left empty",
            "pyfw_wishes:\n  iptables:\n    filter:\n      INPUT:\n        rules:\n",
        ),
        (
            "empty parts",
            "pyfw_wishes:\n  ipsets:\n  iptables:\n  ip6tables: {}\n",
        ),
        (
            "a chain with nothing",
            "pyfw_wishes:\n  iptables:\n    filter:\n      f2b-sshd:\n      DOCKER-USER: {}\n",
        ),
        (
            "policy only, every table",
            "pyfw_wishes:\n  iptables:\n    nat:\n      POSTROUTING:\n        default_action: ACCEPT\n    mangle:\n      FORWARD:\n        default_action: ACCEPT\n    raw:\n      PREROUTING:\n        default_action: ACCEPT\n    security:\n      OUTPUT:\n        default_action: ACCEPT\n  ip6tables:\n    filter:\n      INPUT:\n        default_action: DROP\n        rules: []\n",
        ),
        (
            "odd chain names",
            "pyfw_wishes:\n  iptables:\n    filter:\n      KUBE-SVC-ABCDEF0123456789:\n        rules: []\n      LIBVIRT_INP: {}\n      'a/b:c': {}\n      abcdefghijklmnopqrstuvwxyz12: {}\n",
        ),
        (
            "names and matches",
            "pyfw_wishes:\n  iptables:\n    filter:\n      INPUT:\n        rules:\n        - a.b:c-d_e: -j ACCEPT\n        - '~match': '^-m comment --comment \"?f2b'\n        - x: -p tcp -m comment --comment x -j ACCEPT\n",
        ),
        (
            "sets",
            "pyfw_wishes:\n  ipsets:\n    p:\n      type: bitmap:port\n      header: range 0-1024\n      members_equal: [22, 80]\n    v6:\n      type: hash:net\n      header: ' family inet6  maxelem 1048576 counters '\n      members_equal: ['2001:db8::/64']\n    empty:\n      type: hash:ip\n      header: ''\n      members_equal: []\n    exists-only:\n      type: list:set\n",
        ),
        (
            "nftables tables",
            "pyfw_wishes:\n  nftables:\n    inet pyfw:\n      sets:\n        allowed:\n          type: ipv4_addr\n          flags: [interval]\n          elements: [10.0.0.0/8, 192.168.1.1]\n        seen:\n          typeof: ip saddr\n          flags: dynamic, timeout\n          timeout: 1h\n          size: 65535\n          counter: true\n        ports:\n          type: inet_service\n          elements: [22, 80]\n      chains:\n        forward:\n          type: filter\n          hook: forward\n          priority: filter - 1\n          policy: accept\n          rules:\n          - ct state established,related accept\n          - named: ip saddr != @allowed drop\n        other:\n        empty: {}\n        input:\n          type: filter\n          hook: input\n          priority: -1\n          rules: []\n    netdev edge:\n      chains:\n        in:\n          type: filter\n          hook: ingress\n          device: eth0\n          priority: 0\n    ip6 pyfw6:\n",
        ),
    ] {
        out.push((name.to_string(), yaml.to_string()));
    }
    out
}

#[test]
fn every_example_validates_under_schema_and_loader() {
    let v = validator();
    let examples = valid_examples();
    for (name, yaml) in &examples {
        if let Err(e) = loader_accepts(yaml) {
            panic!("{name}: the loader rejects an example: {e}\n{yaml}");
        }
        let errors = schema_errors(&v, yaml);
        assert!(
            errors.is_empty(),
            "{name}: the schema rejects an example: {errors:#?}\n{yaml}"
        );
    }
    assert!(examples.len() >= 15, "{}", examples.len());
}

fn rules(items: &str) -> String {
    format!("pyfw_wishes:\n  iptables:\n    filter:\n      INPUT:\n        rules:\n{items}")
}

fn set(body: &str) -> String {
    format!("pyfw_wishes:\n  ipsets:\n    s:\n{body}")
}

fn chain(table: &str, name: &str, body: &str) -> String {
    format!("pyfw_wishes:\n  iptables:\n    {table}:\n      '{name}':\n{body}")
}

/// Each kind of file the loader rejects and JSON Schema can express.
fn broken_examples() -> Vec<(&'static str, String)> {
    let long_name = "x".repeat(65);
    vec![
        ("empty file", String::new()),
        ("only a comment", "# nothing\n".into()),
        ("no pyfw_wishes key", "wishes: {}\n".into()),
        ("empty pyfw_wishes", "pyfw_wishes:\n".into()),
        ("pyfw_wishes not a map", "pyfw_wishes: [1]\n".into()),
        ("unknown top key", "pyfw_wishes: {}\nextra: 1\n".into()),
        ("unknown part", "pyfw_wishes:\n  iptabels: {}\n".into()),
        (
            "unknown table",
            "pyfw_wishes:\n  iptables:\n    filtre:\n      INPUT: {}\n".into(),
        ),
        (
            "unknown chain key",
            chain("filter", "INPUT", "        policy: DROP\n"),
        ),
        (
            "default_action on a user chain",
            chain("filter", "DOCKER", "        default_action: DROP\n"),
        ),
        (
            "default_action on a chain built into another table",
            chain("nat", "FORWARD", "        default_action: ACCEPT\n"),
        ),
        (
            "default_action DROP in nat",
            chain("nat", "PREROUTING", "        default_action: DROP\n"),
        ),
        (
            "default_action not ACCEPT or DROP",
            "pyfw_wishes:\n  ip6tables:\n    filter:\n      INPUT:\n        default_action: REJECT\n"
                .into(),
        ),
        ("chain name starting with -", chain("filter", "-x", "        rules: []\n")),
        ("chain name starting with !", chain("filter", "!x", "        rules: []\n")),
        ("chain name a verdict", chain("filter", "ACCEPT", "        rules: []\n")),
        (
            "chain name too long",
            chain("filter", &"c".repeat(29), "        rules: []\n"),
        ),
        ("chain name with a blank", chain("filter", "a b", "        rules: []\n")),
        ("chain name with a double quote", chain("filter", "a\"b", "        rules: []\n")),
        (
            "rules a map",
            "pyfw_wishes:\n  iptables:\n    filter:\n      INPUT:\n        rules:\n          a: -j ACCEPT\n"
                .into(),
        ),
        ("rule not a map", rules("        - -j ACCEPT\n")),
        ("rule with two keys", rules("        - a: -j ACCEPT\n          b: -j DROP\n")),
        ("rule with no key", rules("        - {}\n")),
        ("rule name with a blank", rules("        - bad name: -j ACCEPT\n")),
        ("rule name too long", rules(&format!("        - {long_name}: -j ACCEPT\n"))),
        ("rule name not ASCII", rules("        - règle: -j ACCEPT\n")),
        ("rule name reserved", rules("        - _pyfw_temp_x: -j ACCEPT\n")),
        ("rule text a list", rules("        - a: [-j, ACCEPT]\n")),
        ("rule text missing", rules("        - a:\n")),
        ("rule text empty", rules("        - a: ''\n")),
        ("rule text blank", rules("        - a: '   '\n")),
        ("~match not text", rules("        - '~match': {a: 1}\n")),
        ("ipsets a list", "pyfw_wishes:\n  ipsets: [s]\n".into()),
        ("set without a type", set("      header: family inet\n")),
        ("unknown set type", set("      type: hash:ipp\n")),
        ("unknown set key", set("      type: hash:ip\n      members: []\n")),
        (
            "set name with a blank",
            "pyfw_wishes:\n  ipsets:\n    'bad name':\n      type: hash:ip\n".into(),
        ),
        (
            "set name with a double quote",
            "pyfw_wishes:\n  ipsets:\n    'a\"b':\n      type: hash:ip\n".into(),
        ),
        (
            "set name with a comma",
            "pyfw_wishes:\n  ipsets:\n    'a,b':\n      type: hash:ip\n".into(),
        ),
        (
            "set name starting with -",
            "pyfw_wishes:\n  ipsets:\n    -exist:\n      type: hash:ip\n".into(),
        ),
        (
            "set name too long",
            format!(
                "pyfw_wishes:\n  ipsets:\n    {}:\n      type: hash:ip\n",
                "s".repeat(32)
            ),
        ),
        (
            "unknown create option",
            set("      type: hash:ip\n      header: sizes 5\n"),
        ),
        (
            "create option without its value",
            set("      type: hash:ip\n      header: family inet maxelem\n"),
        ),
        (
            "family neither inet nor inet6",
            set("      type: hash:ip\n      header: family inet7\n"),
        ),
        (
            "members not a list",
            set("      type: hash:ip\n      members_equal: 10.0.0.1\n"),
        ),
        (
            "member not a single value",
            set("      type: hash:ip\n      members_equal:\n      - [10.0.0.1, 10.0.0.2]\n"),
        ),
        ("nft table without a family", nft("pyfw", "")),
        ("nft table of an unknown family", nft("ipv4 pyfw", "")),
        ("nft table name with a blank", nft("inet 'a b'", "")),
        ("nft table iptables-nft's", nft("ip filter", "")),
        ("nft table Docker's", nft("ip6 docker-bridges", "")),
        ("nft table firewalld's", nft("inet firewalld", "")),
        ("nft table reserved", nft("inet _pyfw_x", "")),
        ("nft unknown table key", nft("inet pyfw", "      rules: []\n")),
        ("nft chain name with a blank", nft("inet pyfw", "      chains:\n        'a b': {}\n")),
        (
            "nft base chain without a priority",
            nft_chain("          type: filter\n          hook: input\n"),
        ),
        (
            "nft policy on a regular chain",
            nft_chain("          policy: drop\n"),
        ),
        (
            "nft unknown chain type",
            nft_chain("          type: filtre\n          hook: input\n          priority: 0\n"),
        ),
        (
            "nft bad priority",
            nft_chain("          type: filter\n          hook: input\n          priority: filtre\n"),
        ),
        (
            "nft policy in capitals",
            nft_chain("          type: filter\n          hook: input\n          priority: 0\n          policy: DROP\n"),
        ),
        ("nft rules a map", nft_chain("          rules:\n            a: accept\n")),
        ("nft rule a list", nft_chain("          rules:\n          - [accept]\n")),
        ("nft rule with two names", nft_chain("          rules:\n          - a: accept\n            b: drop\n")),
        ("nft rule name with a blank", nft_chain("          rules:\n          - 'a b': accept\n")),
        ("nft rule empty", nft_chain("          rules:\n          - ''\n")),
        ("nft set without a type", nft_set("          flags: [interval]\n")),
        ("nft set with type and typeof", nft_set("          type: ipv4_addr\n          typeof: ip saddr\n")),
        ("nft unknown set flag", nft_set("          type: ipv4_addr\n          flags: [intervall]\n")),
        ("nft bad set timeout", nft_set("          type: ipv4_addr\n          timeout: 1 hour\n")),
        ("nft unknown set key", nft_set("          type: ipv4_addr\n          members: []\n")),
        ("nft element not a single value", nft_set("          type: ipv4_addr\n          elements:\n          - [10.0.0.1]\n")),
    ]
}

fn nft(table: &str, body: &str) -> String {
    format!("pyfw_wishes:\n  nftables:\n    {table}:\n{body}")
}

fn nft_chain(body: &str) -> String {
    nft(
        "inet pyfw",
        &format!("      chains:\n        input:\n{body}"),
    )
}

fn nft_set(body: &str) -> String {
    nft(
        "inet pyfw",
        &format!("      sets:\n        allowed:\n{body}"),
    )
}

#[test]
fn broken_examples_are_rejected_by_schema_and_loader() {
    let v = validator();
    let mut failures = Vec::new();
    for (kind, yaml) in broken_examples() {
        let loader = loader_accepts(&yaml).is_err();
        let schema = !schema_errors(&v, &yaml).is_empty();
        if !(loader && schema) {
            failures.push(format!(
                "{kind}: loader rejects: {loader}, schema rejects: {schema}\n{yaml}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// What only the loader can catch. The schema's description names these;
/// if the schema learns one of them, move it to `broken_examples`.
#[test]
fn what_only_the_loader_catches() {
    let v = validator();
    for (kind, yaml) in [
        (
            "duplicate rule name",
            rules("        - a: -j ACCEPT\n        - a: -j DROP\n"),
        ),
        ("bad regex", rules("        - '~match': '(unclosed'\n")),
        (
            "unbalanced quotes",
            rules("        - ssh: -m comment --comment \"oops -j ACCEPT\n"),
        ),
        (
            "comment differs from the name",
            rules("        - ssh: -p tcp -m comment --comment other -j ACCEPT\n"),
        ),
        (
            "member not of the set's type",
            set("      type: hash:ip\n      members_equal: [not-an-ip]\n"),
        ),
        (
            "IPv4 member of an inet6 set",
            set(
                "      type: hash:ip\n      header: family inet6\n      members_equal: [10.0.0.1]\n",
            ),
        ),
        (
            "member listed twice",
            set("      type: hash:ip\n      members_equal: [10.0.0.1, 10.0.0.1]\n"),
        ),
        (
            "nft rule that would end its chain",
            nft_chain("          rules:\n          - accept } table ip evil {\n"),
        ),
        (
            "nft rule with a `;`",
            nft_chain("          rules:\n          - accept; add table ip evil\n"),
        ),
        (
            "nft element with a comma",
            nft_set("          type: ipv4_addr\n          elements: ['10.0.0.1, 10.0.0.2']\n"),
        ),
        (
            "nft hook the family lacks",
            nft(
                "arp pyfw",
                "      chains:\n        f:\n          type: filter\n          hook: forward\n          priority: 0\n",
            ),
        ),
        (
            "nft duplicate rule name",
            nft_chain("          rules:\n          - a: accept\n          - a: drop\n"),
        ),
        (
            "member comment with a double quote",
            set(
                "      type: hash:ip\n      header: comment\n      members_equal: ['10.0.0.1 comment \"a\\\\\"b\"']\n",
            ),
        ),
        ("-6 in an IPv4 rule", rules("        - a: -6 -j ACCEPT\n")),
        (
            "several addresses after -s",
            rules("        - a: -s 10.0.0.1,10.0.0.2 -j ACCEPT\n"),
        ),
        (
            "DROP in a nat rule",
            chain(
                "nat",
                "PREROUTING",
                "        rules:\n        - a: -j DROP\n",
            ),
        ),
        (
            "REJECT outside filter",
            chain("raw", "OUTPUT", "        rules:\n        - a: -j REJECT\n"),
        ),
        (
            "a rule naming a set starting with -",
            rules("        - a: -m set --match-set -x src -j ACCEPT\n"),
        ),
        (
            "a rule naming a set of the other family",
            "pyfw_wishes:\n  ipsets:\n    s:\n      type: hash:ip\n      header: family inet6\n  iptables:\n    filter:\n      INPUT:\n        rules:\n        - a: -m set --match-set s src -j ACCEPT\n".into(),
        ),
        (
            "more members than maxelem",
            set("      type: hash:ip\n      header: maxelem 1\n      members_equal: [10.0.0.1, 10.0.0.2]\n"),
        ),
        (
            "a bitmap member outside the range",
            set("      type: bitmap:port\n      header: range 0-1024\n      members_equal: [2000]\n"),
        ),
    ] {
        assert!(loader_accepts(&yaml).is_err(), "{kind}: loader accepts");
        let errors = schema_errors(&v, &yaml);
        assert!(
            errors.is_empty(),
            "{kind}: the schema now rejects it ({errors:?}): move it to broken_examples"
        );
    }
    let described = read("config/wishes.schema.json");
    for limit in [
        "duplicate rule names",
        "regex syntax",
        "quoting",
        "--comment",
        "set members",
        "the other family",
        "more than one address",
        "DROP in nat",
        "REJECT outside filter",
        "sets a rule names",
        "maxelem",
        "range",
        "nftables tables",
        "rule and element text",
    ] {
        assert!(
            described.contains(limit),
            "schema description lacks {limit}"
        );
    }
}

/// The schema's enumerations are the loader's own lists.
#[test]
fn schema_lists_match_the_code() {
    let schema: Value = serde_json::from_str(&read("config/wishes.schema.json")).unwrap();
    let defs = &schema["$defs"];
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    let types = strings(&defs["ipset"]["properties"]["type"]["enum"]);
    assert_eq!(types, pyfw::state::set_type::KNOWN_TYPES);
    let tables: Vec<&String> = defs["tables"]["properties"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(tables.len(), pyfw::state::TABLES.len());
    for table in pyfw::state::TABLES {
        let chains: Vec<&String> = defs[format!("table-{table}")]["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("no table-{table}"))
            .keys()
            .collect();
        let mut chains: Vec<&str> = chains.iter().map(|s| s.as_str()).collect();
        let mut builtin = pyfw::state::builtin_chains(table).to_vec();
        chains.sort();
        builtin.sort();
        assert_eq!(chains, builtin, "{table}");
    }
}

/// The line docs/wishes.md tells editors to use points at the shipped
/// schema.
#[test]
fn the_docs_show_the_language_server_line() {
    let doc = read("docs/wishes.md");
    assert!(
        doc.contains("# yaml-language-server: $schema=/usr/share/pyfw/wishes.schema.json"),
        "docs/wishes.md lacks the yaml-language-server line"
    );
    let cargo = read("Cargo.toml");
    assert!(
        cargo.contains("\"config/wishes.schema.json\", \"usr/share/pyfw/wishes.schema.json\""),
        "the package does not ship the schema where docs/wishes.md says"
    );
}
