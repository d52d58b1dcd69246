//! The first stage of loading: the YAML as serde reads it, every value
//! with its line, unknown keys refused.

use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

use crate::wishes::lift;

thread_local! {
    /// Whether [`Members`] keeps each member's line (see
    /// [`crate::wishes::parse`]).
    pub(crate) static MEMBER_LINES: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFile {
    // A present but empty `pyfw_wishes:` must stay distinguishable from a
    // missing key: plain `Option` would read both as `None`.
    #[serde(default, deserialize_with = "present")]
    pub(crate) pyfw_wishes: Option<Spanned<Option<RawWishes>>>,
}

fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWishes {
    pub(crate) ipsets: Option<Map<Spanned<RawIpset>>>,
    pub(crate) iptables: Option<Map<Map<Spanned<Option<RawChain>>>>>,
    pub(crate) ip6tables: Option<Map<Map<Spanned<Option<RawChain>>>>>,
    pub(crate) nftables: Option<Map<Spanned<Option<RawNftTable>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawIpset {
    #[serde(rename = "type")]
    pub(crate) kind: Spanned<String>,
    pub(crate) header: Option<Spanned<String>>,
    pub(crate) members_equal: Option<Spanned<Members>>,
}

/// A set's members: each a single value (`text`), or `None` for a nested
/// list or mapping; with its line when [`MEMBER_LINES`] asks for it.
pub(crate) enum Members {
    /// The pass without lines: every member a plain string, kept compactly
    /// (a lifted run of them moves in whole: `lift`).
    Plain(crate::state::Members),
    /// The pass with lines.
    Each(Vec<Member>),
}

pub(crate) struct Member {
    pub(crate) text: Option<String>,
    pub(crate) line: Option<u64>,
}

impl Members {
    pub(crate) fn len(&self) -> usize {
        match self {
            Members::Plain(m) => m.len(),
            Members::Each(m) => m.len(),
        }
    }

    /// Each member's text (`None`: not a single value) and line.
    pub(crate) fn iter(&self) -> Box<dyn Iterator<Item = (Option<&str>, Option<u64>)> + '_> {
        match self {
            Members::Plain(m) => Box::new(m.iter().map(|t| (Some(t), None))),
            Members::Each(m) => Box::new(m.iter().map(|m| (m.text.as_deref(), m.line))),
        }
    }
}

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if MEMBER_LINES.get() {
            let Seq(items) = Seq::deserialize(d)?;
            return Ok(Members::Each(
                items
                    .into_iter()
                    .map(|m| Member {
                        line: Some(m.referenced.line()),
                        text: m.value.scalar(),
                    })
                    .collect(),
            ));
        }
        struct Fast;
        impl<'de> Visitor<'de> for Fast {
            type Value = Members;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Members, E> {
                Ok(Members::Plain(Default::default()))
            }
            fn visit_none<E: de::Error>(self) -> Result<Members, E> {
                Ok(Members::Plain(Default::default()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Members, A::Error> {
                let mut out = crate::state::Members::new();
                // A plain string each: anything else fails here, and the
                // file is read again with lines to say what and where.
                while let Some(text) = seq.next_element::<String>()? {
                    match lift::claim(&text) {
                        // The commonest list: one lifted run, moved in.
                        Some(run) if out.is_empty() => out = run,
                        Some(run) => out.extend(run.iter()),
                        None => out.push(&text),
                    }
                }
                Ok(Members::Plain(out))
            }
        }
        d.deserialize_any(Fast)
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawChain {
    pub(crate) default_action: Option<Spanned<String>>,
    pub(crate) rules: Option<Spanned<Node>>,
}

/// A table of the `nftables:` section (see `wishes::nft`).

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNftTable {
    pub(crate) sets: Option<Map<Spanned<Option<RawNftSet>>>>,
    pub(crate) chains: Option<Map<Spanned<Option<RawNftChain>>>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNftChain {
    #[serde(rename = "type")]
    pub(crate) kind: Option<Spanned<String>>,
    pub(crate) hook: Option<Spanned<String>>,
    pub(crate) device: Option<Spanned<String>>,
    pub(crate) priority: Option<Spanned<String>>,
    pub(crate) policy: Option<Spanned<String>>,
    pub(crate) rules: Option<Spanned<Node>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNftSet {
    #[serde(rename = "type")]
    pub(crate) kind: Option<Spanned<String>>,
    #[serde(rename = "typeof")]
    pub(crate) type_of: Option<Spanned<String>>,
    pub(crate) flags: Option<Spanned<Node>>,
    pub(crate) timeout: Option<Spanned<String>>,
    pub(crate) gc_interval: Option<Spanned<String>>,
    pub(crate) size: Option<Spanned<String>>,
    pub(crate) policy: Option<Spanned<String>>,
    pub(crate) counter: Option<Spanned<bool>>,
    pub(crate) auto_merge: Option<Spanned<bool>>,
    pub(crate) comment: Option<Spanned<String>>,
    pub(crate) elements: Option<Spanned<Members>>,
}

/// A YAML mapping that keeps its keys' order and lines.
pub(crate) struct Map<V>(pub(crate) Vec<(Spanned<String>, V)>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Map<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct MapVisitor<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for MapVisitor<V> {
            type Value = Map<V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Map(Vec::new()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut entries: Vec<(Spanned<String>, V)> = Vec::new();
                // A set, not a scan of `entries`: thousands of chains or
                // sets must not cost a comparison per pair.
                let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
                while let Some(key) = access.next_key::<Spanned<String>>()? {
                    if !seen.insert(key.value.clone()) {
                        return Err(de::Error::custom(format!(
                            "duplicate key `{}` on line {}",
                            key.value,
                            key.referenced.line()
                        )));
                    }
                    let value = access.next_value()?;
                    entries.push((key, value));
                }
                Ok(Map(entries))
            }
        }
        d.deserialize_map(MapVisitor(PhantomData))
    }
}

/// A YAML sequence of arbitrary nodes.
pub(crate) struct Seq(pub(crate) Vec<Spanned<Node>>);

impl<'de> Deserialize<'de> for Seq {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Node::deserialize(d)? {
            Node::Seq(items) => Ok(Seq(items)),
            Node::Null => Ok(Seq(Vec::new())),
            _ => Err(de::Error::custom("expected a list")),
        }
    }
}

/// Any YAML value, for the free-form parts (`rules`) whose shape we check
/// ourselves so that the message can name the chain.
pub(crate) enum Node {
    Null,
    Scalar(String),
    Seq(Vec<Spanned<Node>>),
    Map(Vec<(Spanned<String>, Spanned<Node>)>),
}

impl Node {
    pub(crate) fn scalar(&self) -> Option<String> {
        match self {
            Node::Scalar(s) => Some(s.clone()),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct NodeVisitor;
        impl<'de> Visitor<'de> for NodeVisitor {
            type Value = Node;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
                Ok(Node::Scalar(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
                Ok(Node::Scalar(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
                Ok(Node::Scalar(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
                Ok(Node::Scalar(v.to_string()))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
                Ok(Node::Scalar(v.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Spanned<Node>>()? {
                    items.push(item);
                }
                Ok(Node::Seq(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<Spanned<String>>()? {
                    entries.push((key, map.next_value::<Spanned<Node>>()?));
                }
                Ok(Node::Map(entries))
            }
        }
        d.deserialize_any(NodeVisitor)
    }
}
