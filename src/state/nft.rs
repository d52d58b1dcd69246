//! nftables tables as pyfw reads them: nft's own JSON (`nft -j list table`)
//! reduced to what says whether a table is as wished.
//!
//! The JSON is read as plain [`serde_json::Value`]s, never into typed
//! structs: whatever a newer nft prints, or whatever statement a table
//! holds, is compared as printed (docs/nftables.md says why not the
//! `nftables` crate). What changes without anyone changing the table is
//! left out (see [`normalise`]): handles, counter values, quota use, element
//! expiry, the elements of sets that packets or timers fill, and nft's
//! metainfo. What is left is kept as digests per object, a
//! [`Rendering`]: small enough to keep for every owned table and to store
//! between runs, and fine enough to say which chain, rule or set drifted.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::Hasher;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// An nftables address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NftFamily {
    Ip,
    Ip6,
    Inet,
    Arp,
    Bridge,
    Netdev,
}

impl NftFamily {
    pub const ALL: [NftFamily; 6] = [
        NftFamily::Ip,
        NftFamily::Ip6,
        NftFamily::Inet,
        NftFamily::Arp,
        NftFamily::Bridge,
        NftFamily::Netdev,
    ];

    /// As nft writes it.
    pub fn word(self) -> &'static str {
        match self {
            NftFamily::Ip => "ip",
            NftFamily::Ip6 => "ip6",
            NftFamily::Inet => "inet",
            NftFamily::Arp => "arp",
            NftFamily::Bridge => "bridge",
            NftFamily::Netdev => "netdev",
        }
    }

    pub fn parse(word: &str) -> Option<NftFamily> {
        NftFamily::ALL.into_iter().find(|f| f.word() == word)
    }
}

impl std::fmt::Display for NftFamily {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.word())
    }
}

/// An owned table as `pyfw state` shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct TableState {
    pub family: NftFamily,
    pub name: String,
    /// As `nft -s list table` prints it (text that loads back).
    pub text: String,
    /// As `nft -j list table` prints it, less nft's metainfo: nft's own
    /// JSON objects, handles and counters included.
    pub objects: Vec<Value>,
}

/// A 64-bit FNV-1a digest of a normalised JSON value.
pub type Digest = u64;

/// An owned table as the kernel renders it, reduced to digests.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rendering {
    /// The table object itself (its flags, a comment).
    pub table: Digest,
    /// Chains by name.
    pub chains: BTreeMap<String, ChainRendering>,
    /// Named sets and maps by `set NAME` or `map NAME`.
    pub sets: BTreeMap<String, SetRendering>,
    /// Every other named object (`counter NAME`, `quota NAME`,
    /// `flowtable NAME`, ...).
    pub objects: BTreeMap<String, Digest>,
}

/// A chain: its header (type, hook, priority, policy) and its rules in
/// order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainRendering {
    pub header: Digest,
    pub rules: Vec<Digest>,
}

/// A named set or map: its declaration and, unless packets or timers change
/// them, its elements.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetRendering {
    pub header: Digest,
    /// How many elements, and their digest (sorted); `None` for a set a
    /// rule adds to or whose elements time out.
    pub elements: Option<(usize, Digest)>,
}

/// How a table read differs from the one wished.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Drift {
    /// The table is not there at all.
    TableMissing,
    /// The table's own flags or comment.
    Table,
    ChainMissing(String),
    ChainExtra(String),
    /// Type, hook, priority, policy or device.
    ChainHeader(String),
    /// The `index`-th (0-based) wished rule of the chain is not there.
    RuleMissing {
        chain: String,
        index: usize,
    },
    /// A rule nobody wished, at `position` (0-based) of the chain.
    RuleExtra {
        chain: String,
        position: usize,
    },
    /// Every rule is there, in another order.
    RuleOrder(String),
    SetMissing(String),
    SetExtra(String),
    SetHeader(String),
    /// A set's elements: how many it has and how many are wished.
    SetElements {
        set: String,
        have: usize,
        want: usize,
    },
    ObjectMissing(String),
    ObjectExtra(String),
    ObjectChanged(String),
}

/// The objects of `nft -j list ...` output (`{"nftables": [...]}`),
/// metainfo included.
pub fn objects(json: &str) -> Result<Vec<Value>, String> {
    let mut doc: Value = serde_json::from_str(json)
        .map_err(|e| format!("nft printed JSON pyfw cannot read: {e}"))?;
    match doc.get_mut("nftables").map(Value::take) {
        Some(Value::Array(objects)) => Ok(objects),
        _ => Err("nft printed JSON without an `nftables` list".into()),
    }
}

/// The rendering of one table, from the objects nft lists for it.
pub fn rendering(objects: &[Value]) -> Rendering {
    let dynamic = dynamic_sets(objects);
    let mut out = Rendering::default();
    for object in objects {
        let Some((kind, body)) = object.as_object().and_then(|o| o.iter().next()) else {
            continue;
        };
        let Some(body) = body.as_object() else {
            continue;
        };
        let name = || body.get("name").and_then(Value::as_str).unwrap_or("");
        match kind.as_str() {
            "metainfo" => {}
            "table" => out.table = digest(&normalise_object(kind, body)),
            "chain" => {
                let header = digest(&normalise_object(kind, body));
                out.chains.entry(name().to_string()).or_default().header = header;
            }
            "rule" => {
                let chain = body.get("chain").and_then(Value::as_str).unwrap_or("");
                let rule = digest(&normalise_object(kind, body));
                out.chains
                    .entry(chain.to_string())
                    .or_default()
                    .rules
                    .push(rule);
            }
            "set" | "map" => {
                let mut header = body.clone();
                let elements = header.remove("elem");
                let header = normalise_object(kind, &header);
                let elements = match dynamic.contains(name()) || is_timed(body) {
                    true => None,
                    false => Some(element_digest(elements.as_ref())),
                };
                let set = SetRendering {
                    header: digest(&header),
                    elements,
                };
                out.sets.insert(format!("{kind} {}", name()), set);
            }
            _ => {
                let d = digest(&normalise_object(kind, body));
                out.objects.insert(format!("{kind} {}", name()), d);
            }
        }
    }
    out
}

/// What makes `have` (`None`: no such table) differ from `want`, in the
/// order a reader would look: table, sets, objects, chains.
pub fn drift(want: &Rendering, have: Option<&Rendering>) -> Vec<Drift> {
    let Some(have) = have else {
        return vec![Drift::TableMissing];
    };
    let mut out = Vec::new();
    if want.table != have.table {
        out.push(Drift::Table);
    }
    for (name, w) in &want.sets {
        match have.sets.get(name) {
            None => out.push(Drift::SetMissing(name.clone())),
            Some(h) if h.header != w.header => out.push(Drift::SetHeader(name.clone())),
            Some(h) => {
                if let (Some(we), Some(he)) = (w.elements, h.elements)
                    && we != he
                {
                    out.push(Drift::SetElements {
                        set: name.clone(),
                        have: he.0,
                        want: we.0,
                    });
                }
            }
        }
    }
    extra(&want.sets, &have.sets, Drift::SetExtra, &mut out);
    for (name, w) in &want.objects {
        match have.objects.get(name) {
            None => out.push(Drift::ObjectMissing(name.clone())),
            Some(h) if h != w => out.push(Drift::ObjectChanged(name.clone())),
            Some(_) => {}
        }
    }
    extra(&want.objects, &have.objects, Drift::ObjectExtra, &mut out);
    for (name, w) in &want.chains {
        match have.chains.get(name) {
            None => out.push(Drift::ChainMissing(name.clone())),
            Some(h) => {
                if h.header != w.header {
                    out.push(Drift::ChainHeader(name.clone()));
                }
                out.extend(rule_drift(name, &w.rules, &h.rules));
            }
        }
    }
    extra(&want.chains, &have.chains, Drift::ChainExtra, &mut out);
    out
}

/// Names in `have` that `want` lacks, as `make` says.
fn extra<V>(
    want: &BTreeMap<String, V>,
    have: &BTreeMap<String, V>,
    make: fn(String) -> Drift,
    out: &mut Vec<Drift>,
) {
    out.extend(
        have.keys()
            .filter(|k| !want.contains_key(*k))
            .map(|k| make(k.clone())),
    );
}

/// The wished rules a chain lacks and the rules it has that nobody wished,
/// counted as multisets; when neither, a different order.
fn rule_drift(chain: &str, want: &[Digest], have: &[Digest]) -> Vec<Drift> {
    if want == have {
        return Vec::new();
    }
    let mut left: BTreeMap<Digest, usize> = BTreeMap::new();
    for d in have {
        *left.entry(*d).or_default() += 1;
    }
    let mut out = Vec::new();
    for (index, d) in want.iter().enumerate() {
        match left.get_mut(d) {
            Some(n) if *n > 0 => *n -= 1,
            _ => out.push(Drift::RuleMissing {
                chain: chain.to_string(),
                index,
            }),
        }
    }
    let mut wanted: BTreeMap<Digest, usize> = BTreeMap::new();
    for d in want {
        *wanted.entry(*d).or_default() += 1;
    }
    for (position, d) in have.iter().enumerate() {
        match wanted.get_mut(d) {
            Some(n) if *n > 0 => *n -= 1,
            _ => out.push(Drift::RuleExtra {
                chain: chain.to_string(),
                position,
            }),
        }
    }
    if out.is_empty() {
        out.push(Drift::RuleOrder(chain.to_string()));
    }
    out
}

/// Sets whose elements packets add (`add @set { ... }`, `update @set`,
/// a map's `add`/`update`) or delete: their elements are not compared.
fn dynamic_sets(objects: &[Value]) -> BTreeSet<String> {
    fn walk(v: &Value, out: &mut BTreeSet<String>) {
        match v {
            Value::Object(o) => {
                for (key, field) in [("set", "set"), ("map", "map")] {
                    let Some(Value::Object(stmt)) = o.get(key) else {
                        continue;
                    };
                    let op = stmt.get("op").and_then(Value::as_str);
                    if let (Some("add" | "update" | "delete"), Some(Value::String(name))) =
                        (op, stmt.get(field))
                    {
                        out.insert(name.trim_start_matches('@').to_string());
                    }
                }
                o.values().for_each(|v| walk(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    for o in objects {
        if let Some(rule) = o.get("rule") {
            walk(rule, &mut out);
        }
    }
    out
}

/// A set whose elements time out (`flags timeout`; nft 1.0.6 does not
/// print `dynamic` in JSON).
fn is_timed(set: &serde_json::Map<String, Value>) -> bool {
    match set.get("flags") {
        Some(Value::Array(flags)) => flags
            .iter()
            .any(|f| f.as_str().is_some_and(|f| f == "timeout" || f == "dynamic")),
        Some(Value::String(f)) => f == "timeout" || f == "dynamic",
        _ => false,
    }
}

/// How many elements, and the digest of their normalised forms, sorted.
fn element_digest(elements: Option<&Value>) -> (usize, Digest) {
    let Some(Value::Array(list)) = elements else {
        return (0, digest(&Value::Null));
    };
    let mut forms: Vec<String> = list.iter().map(|e| canonical(&normalise(e))).collect();
    forms.sort_unstable();
    let mut h = fnv::FnvHasher::default();
    for f in &forms {
        h.write(f.as_bytes());
        h.write(&[0]);
    }
    (forms.len(), h.finish())
}

/// One listed object's body without what never says whether it is as
/// wished: where it lives (`family`, `table`; the caller knows) and the
/// object's own state (a named counter's values, a quota's use).
fn normalise_object(kind: &str, body: &serde_json::Map<String, Value>) -> Value {
    let mut body = body.clone();
    for key in ["family", "table"] {
        body.remove(key);
    }
    match kind {
        "counter" => {
            body.remove("packets");
            body.remove("bytes");
        }
        "quota" => {
            body.remove("used");
        }
        _ => {}
    }
    normalise(&Value::Object(body))
}

/// A value without what changes when nobody changes the table: `handle`s
/// (every replace renumbers them), element `expires`, the values of
/// anonymous counters (`{"counter": {"packets": N, "bytes": M}}` becomes
/// `{"counter": null}`; a named counter's reference stays), a quota
/// statement's `used`, a `last` statement's `used`; and with the elements
/// of anonymous sets sorted.
pub fn normalise(v: &Value) -> Value {
    match v {
        Value::Object(o) => {
            let mut out = serde_json::Map::new();
            for (key, field) in o {
                let value = match (key.as_str(), field) {
                    ("handle" | "expires", _) => continue,
                    ("counter", Value::Object(_)) => Value::Null,
                    ("quota" | "last", Value::Object(q)) => {
                        let mut q = q.clone();
                        for k in ["used", "used_unit"] {
                            q.remove(k);
                        }
                        normalise(&Value::Object(q))
                    }
                    ("set", Value::Array(items)) => {
                        let mut items: Vec<Value> = items.iter().map(normalise).collect();
                        items.sort_by_cached_key(canonical);
                        Value::Array(items)
                    }
                    _ => normalise(field),
                };
                out.insert(key.clone(), value);
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(normalise).collect()),
        other => other.clone(),
    }
}

/// The digest of a value's [`canonical`] form.
pub fn digest(v: &Value) -> Digest {
    let mut h = fnv::FnvHasher::default();
    h.write(canonical(v).as_bytes());
    h.finish()
}

/// JSON text with every object's keys in order, whatever order the map
/// type keeps them in.
pub fn canonical(v: &Value) -> String {
    fn write(v: &Value, out: &mut String) {
        match v {
            Value::Object(o) => {
                let mut keys: Vec<&String> = o.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String(k.clone()).to_string());
                    out.push(':');
                    write(&o[k], out);
                }
                out.push('}');
            }
            Value::Array(a) => {
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(x, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut out = String::new();
    write(v, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(body: &str) -> Vec<Value> {
        objects(&format!(
            "{{\"nftables\": [{{\"metainfo\": {{\"version\": \"1.0.6\", \"json_schema_version\": 1}}}}, \
             {{\"table\": {{\"family\": \"inet\", \"name\": \"pyfw\", \"handle\": 3}}}}, {body}]}}"
        ))
        .unwrap()
    }

    const CHAIN: &str = r#"{"chain": {"family": "inet", "table": "pyfw", "name": "input", "handle": 1, "type": "filter", "hook": "input", "prio": -1, "policy": "accept"}}"#;

    fn rule(handle: u32, expr: &str) -> String {
        format!(
            r#"{{"rule": {{"family": "inet", "table": "pyfw", "chain": "input", "handle": {handle}, "expr": {expr}}}}}"#
        )
    }

    #[test]
    fn what_changes_by_itself_is_not_compared() {
        let a = table(&format!(
            "{CHAIN}, {}, {}, {}, {}",
            rule(
                2,
                r#"[{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 22}}, {"counter": {"packets": 0, "bytes": 0}}, {"accept": null}]"#
            ),
            r#"{"counter": {"family": "inet", "name": "hits", "table": "pyfw", "handle": 4, "packets": 0, "bytes": 0}}"#,
            r#"{"quota": {"family": "inet", "name": "q", "table": "pyfw", "handle": 5, "bytes": 5242880000, "used": 0, "inv": true}}"#,
            r#"{"set": {"family": "inet", "name": "allowed", "table": "pyfw", "type": "ipv4_addr", "handle": 6, "elem": ["10.0.0.2", {"elem": {"val": "10.0.0.1", "counter": {"packets": 0, "bytes": 0}}}]}}"#,
        ));
        let b = table(&format!(
            "{}, {}, {}, {}, {}",
            CHAIN.replace("\"handle\": 1", "\"handle\": 9"),
            rule(
                12,
                r#"[{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 22}}, {"counter": {"packets": 5000000000, "bytes": 9}}, {"accept": null}]"#
            ),
            r#"{"counter": {"family": "inet", "name": "hits", "table": "pyfw", "handle": 14, "packets": 7, "bytes": 700}}"#,
            r#"{"quota": {"family": "inet", "name": "q", "table": "pyfw", "handle": 15, "bytes": 5242880000, "used": 8020, "inv": true}}"#,
            r#"{"set": {"family": "inet", "name": "allowed", "table": "pyfw", "type": "ipv4_addr", "handle": 16, "elem": [{"elem": {"val": "10.0.0.1", "counter": {"packets": 10, "bytes": 8020}}}, "10.0.0.2"]}}"#,
        ));
        let (a, b) = (rendering(&a), rendering(&b));
        assert_eq!(a, b);
        assert_eq!(drift(&a, Some(&b)), []);
        assert_eq!(a.sets["set allowed"].elements.map(|e| e.0), Some(2));
    }

    #[test]
    fn dynamic_and_timed_sets_keep_no_elements() {
        let objects = table(&format!(
            "{CHAIN}, {}, {}, {}",
            r#"{"set": {"family": "inet", "name": "dyn", "table": "pyfw", "type": "ipv4_addr", "handle": 4, "size": 65535, "elem": ["7.7.7.7"]}}"#,
            r#"{"set": {"family": "inet", "name": "timed", "table": "pyfw", "type": "ipv4_addr", "handle": 5, "flags": ["timeout"], "timeout": 60, "elem": [{"elem": {"val": "1.2.3.6", "timeout": 3600, "expires": 3596}}]}}"#,
            rule(
                6,
                r#"[{"set": {"op": "add", "elem": {"payload": {"protocol": "ip", "field": "saddr"}}, "set": "@dyn"}}]"#
            ),
        ));
        let r = rendering(&objects);
        assert_eq!(r.sets["set dyn"].elements, None);
        assert_eq!(r.sets["set timed"].elements, None);
    }

    #[test]
    fn drift_names_what_differs() {
        let want = rendering(&table(&format!(
            "{CHAIN}, {}, {}, {}",
            rule(2, r#"[{"accept": null}]"#),
            rule(3, r#"[{"drop": null}]"#),
            r#"{"set": {"family": "inet", "name": "s", "table": "pyfw", "type": "ipv4_addr", "handle": 6, "elem": ["10.0.0.1", "10.0.0.2"]}}"#,
        )));
        assert_eq!(drift(&want, None), [Drift::TableMissing]);
        let have = rendering(&table(&format!(
            "{}, {}, {}, {}",
            CHAIN.replace("\"accept\"}}", "\"drop\"}}"),
            rule(3, r#"[{"drop": null}]"#),
            rule(4, r#"[{"reject": null}]"#),
            r#"{"set": {"family": "inet", "name": "s", "table": "pyfw", "type": "ipv4_addr", "handle": 6, "elem": ["10.0.0.1"]}}"#,
        )));
        let input = || "input".to_string();
        assert_eq!(
            drift(&want, Some(&have)),
            [
                Drift::SetElements {
                    set: "set s".into(),
                    have: 1,
                    want: 2
                },
                Drift::ChainHeader(input()),
                Drift::RuleMissing {
                    chain: input(),
                    index: 0
                },
                Drift::RuleExtra {
                    chain: input(),
                    position: 1
                },
            ]
        );
        let swapped = rendering(&table(&format!(
            "{CHAIN}, {}, {}, {}",
            rule(3, r#"[{"drop": null}]"#),
            rule(2, r#"[{"accept": null}]"#),
            r#"{"set": {"family": "inet", "name": "s", "table": "pyfw", "type": "ipv4_addr", "handle": 6, "elem": ["10.0.0.2", "10.0.0.1"]}}"#,
        )));
        assert_eq!(drift(&want, Some(&swapped)), [Drift::RuleOrder(input())]);
    }

    #[test]
    fn canonical_json_sorts_keys_and_anonymous_sets() {
        let a: Value = serde_json::from_str(r#"{"b": 1, "a": {"set": [3, 1, 2]}}"#).unwrap();
        assert_eq!(canonical(&normalise(&a)), r#"{"a":{"set":[1,2,3]},"b":1}"#);
    }

    /// A table the research built with 70 constructs (tests/data/nft/), as
    /// nft 1.0.6 lists it: read whole, every object kept.
    #[test]
    fn a_realistic_table_is_read_whole() {
        let json = include_str!("../../tests/data/nft/realistic.json");
        let r = rendering(&objects(json).unwrap());
        assert_eq!(r.chains.len(), 6, "{r:?}");
        assert!(r.sets.contains_key("map portmap") && r.objects.contains_key("counter named_ctr"));
        assert_eq!(r.sets["set dyn"].elements, None);
        assert_eq!(r.sets["set allowed"].elements.map(|e| e.0), Some(3));
    }
}
