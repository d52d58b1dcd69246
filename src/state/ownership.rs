//! What pyfw owns: the record that lets it withdraw what it put in place.
//!
//! A rule's comment alone cannot prove pyfw put it there: another program
//! may use the same word. So pyfw keeps a record of every rule, chain and
//! set it owns, and removes only what the record names.
//!
//! The record lives in the kernel beside the rules, as the comments of an
//! ipset named [`RECORD_SET`]. That makes it belong to exactly one network
//! namespace (two pyfw runs in two namespaces never see each other's), lets
//! it survive a restart of pyfw, and keeps it true across a reboot: it is
//! gone when the rules are gone, and restored when a tool such as
//! netfilter-persistent restores them with their sets.

use std::hash::Hasher;
use std::net::Ipv6Addr;

use crate::state::nft::NftFamily;
use crate::state::rule::Rule;
use crate::state::{Family, State};

/// The ipset that holds the record.
pub const RECORD_SET: &str = "pyfw-owned";

/// How the record set is created: one element per owned item, the item
/// written out in the element's comment.
pub const RECORD_CREATE: &[&str] = &[
    "create", RECORD_SET, "hash:ip", "family", "inet6", "comment", "maxelem", "1048576",
];

/// One thing pyfw owns.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Owned {
    /// A rule, known by its chain, name and text (as a hash), so that a
    /// foreign rule reusing the name is never taken for it.
    Rule {
        family: Family,
        table: String,
        chain: String,
        name: String,
        hash: String,
    },
    /// A chain pyfw created.
    Chain {
        family: Family,
        table: String,
        chain: String,
    },
    /// A set pyfw manages.
    Set { name: String },
    /// An nftables table pyfw owns wholly (`nftables:` wishes): deleted
    /// when no longer wished.
    NftTable { family: NftFamily, name: String },
}

fn family_word(f: Family) -> &'static str {
    match f {
        Family::V4 => "v4",
        Family::V6 => "v6",
    }
}

impl Owned {
    pub fn rule(family: Family, table: &str, chain: &str, name: &str, rule: &Rule) -> Owned {
        Owned::Rule {
            family,
            table: table.to_string(),
            chain: chain.to_string(),
            name: name.to_string(),
            hash: text_hash(rule),
        }
    }

    /// The entry as written in the record: readable in `ipset list`.
    pub fn key(&self) -> String {
        match self {
            Owned::Rule {
                family,
                table,
                chain,
                name,
                hash,
            } => format!(
                "rule {} {table} {chain} {name} {hash}",
                family_word(*family)
            ),
            Owned::Chain {
                family,
                table,
                chain,
            } => format!("chain {} {table} {chain}", family_word(*family)),
            Owned::Set { name } => format!("set {name}"),
            Owned::NftTable { family, name } => format!("nft {family} {name}"),
        }
    }

    /// Reads an entry back; `None` for text pyfw did not write.
    pub fn parse(key: &str) -> Option<Owned> {
        let words: Vec<&str> = key.split(' ').collect();
        let family = |w: &str| match w {
            "v4" => Some(Family::V4),
            "v6" => Some(Family::V6),
            _ => None,
        };
        match words.as_slice() {
            ["rule", f, table, chain, name, hash] => Some(Owned::Rule {
                family: family(f)?,
                table: table.to_string(),
                chain: chain.to_string(),
                name: name.to_string(),
                hash: hash.to_string(),
            }),
            ["chain", f, table, chain] => Some(Owned::Chain {
                family: family(f)?,
                table: table.to_string(),
                chain: chain.to_string(),
            }),
            ["set", name] => Some(Owned::Set {
                name: name.to_string(),
            }),
            ["nft", family, name] => Some(Owned::NftTable {
                family: NftFamily::parse(family)?,
                name: name.to_string(),
            }),
            _ => None,
        }
    }

    /// The set element that carries this entry: an address in the unique
    /// local range derived from the entry's text.
    pub fn element(&self) -> String {
        let mut h = fnv::FnvHasher::default();
        h.write(self.key().as_bytes());
        let bits = (0xfd00u128 << 112) | u128::from(h.finish());
        Ipv6Addr::from(bits).to_string()
    }
}

/// A short, stable fingerprint of a rule's text.
pub fn text_hash(rule: &Rule) -> String {
    let mut h = fnv::FnvHasher::default();
    // Each token then a NUL: the joined form is exactly that, less the
    // last NUL, so most rules hash without building their argv.
    match rule.joined() {
        Some(joined) => {
            h.write(joined.as_bytes());
            h.write(&[0]);
        }
        None => {
            for arg in rule.tokens() {
                h.write(arg.as_bytes());
                h.write(&[0]);
            }
        }
    }
    format!("{:016x}", h.finish())
}

/// The record as read from the kernel.
pub fn read(state: &State) -> Vec<Owned> {
    let Some(set) = state.ipsets.get(RECORD_SET) else {
        return Vec::new();
    };
    let mut out: Vec<Owned> = set
        .comments
        .values()
        .filter_map(|c| Owned::parse(c))
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_hash_is_the_recorded_one() {
        // The record in the kernel holds these: the fast path over the
        // joined text must hash exactly as each token then a NUL did.
        for r in [
            Rule::parse("-p tcp -m comment --comment 'a b' -j ACCEPT").unwrap(),
            Rule::from_args(vec!["x\0y".into(), String::new()]),
            Rule::from_args(vec![]),
        ] {
            let mut h = fnv::FnvHasher::default();
            for arg in r.args() {
                h.write(arg.as_bytes());
                h.write(&[0]);
            }
            assert_eq!(text_hash(&r), format!("{:016x}", h.finish()), "{r}");
        }
        let r = Rule::parse("-s 10.0.0.1/32 -j DROP").unwrap();
        // FNV-1a of `-s 10.0.0.1/32 -j DROP`, each token NUL-terminated.
        assert_eq!(text_hash(&r), "849ce40835f963e7");
    }

    #[test]
    fn keys_round_trip() {
        let r = Rule::parse("-p tcp -m tcp --dport 22 -m comment --comment allow_ssh -j ACCEPT")
            .unwrap();
        for o in [
            Owned::rule(Family::V4, "filter", "INPUT", "allow_ssh", &r),
            Owned::Chain {
                family: Family::V6,
                table: "filter".into(),
                chain: "f2b-x".into(),
            },
            Owned::Set {
                name: "allowed_hosts".into(),
            },
            Owned::NftTable {
                family: NftFamily::Inet,
                name: "pyfw".into(),
            },
        ] {
            assert_eq!(Owned::parse(&o.key()), Some(o.clone()));
            assert!(o.element().starts_with("fd00::"), "{}", o.element());
        }
        assert_eq!(Owned::parse("something else"), None);
    }
}
