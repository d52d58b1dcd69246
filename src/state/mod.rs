//! The netfilter state pyfw sees, and the parsers that read it.
//!
//! The parsers take the text of `iptables-save`, `ip6tables-save` and
//! `ipset save` exactly as the kernel tools print it, on hosts full of other
//! programs' rules. They accept any chain name and any quoting those tools
//! emit, skip counters and comment lines, and never panic: a line they cannot
//! read is an error that names the line.

use std::borrow::Cow;
use std::collections::BTreeMap;

pub mod canon;
pub mod members;
pub mod nft;
pub mod ownership;
pub mod parse;
pub mod render;
pub mod rule;
pub mod set_type;
pub mod text;

pub use members::Members;
pub use parse::{
    IpsetSaveReader, ParseError, lines_after, parse_chain_listing, parse_ipset_save,
    parse_iptables_save,
};
pub use render::{render_ipsets, render_ruleset};
pub use rule::Rule;

/// iptables or ip6tables: each has its own tables, chains and policies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// The command a plan prints for this family.
    pub fn command(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }
}

/// The tables netfilter offers to iptables.
pub const TABLES: &[&str] = &["filter", "nat", "mangle", "raw", "security"];

/// Built-in chains of a table: these have policies and always exist.
pub fn builtin_chains(table: &str) -> &'static [&'static str] {
    match table {
        "filter" => &["INPUT", "FORWARD", "OUTPUT"],
        "nat" => &["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"],
        "mangle" => &["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"],
        "raw" => &["PREROUTING", "OUTPUT"],
        "security" => &["INPUT", "FORWARD", "OUTPUT"],
        _ => &[],
    }
}

/// One chain: its policy (built-in chains only) and its rules in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    pub policy: Option<String>,
    pub rules: Vec<Rule>,
}

/// One table's chains, in the order `iptables-save` listed them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Table {
    pub chains: Vec<(String, Chain)>,
}

impl Table {
    pub fn chain(&self, name: &str) -> Option<&Chain> {
        self.chains.iter().find(|(n, _)| n == name).map(|(_, c)| c)
    }
}

/// All tables of one family. A table that is not loaded is absent; its
/// built-in chains are then empty with an ACCEPT policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub tables: BTreeMap<String, Table>,
}

impl Ruleset {
    /// A chain as netfilter would show it, treating a missing table's
    /// built-in chains as empty and accepting. Borrowed where it exists:
    /// chains run to tens of thousands of rules.
    pub fn chain(&self, table: &str, chain: &str) -> Option<Cow<'_, Chain>> {
        if let Some(c) = self.tables.get(table).and_then(|t| t.chain(chain)) {
            return Some(Cow::Borrowed(c));
        }
        builtin_chains(table).contains(&chain).then(|| {
            Cow::Owned(Chain {
                policy: Some("ACCEPT".to_string()),
                rules: Vec::new(),
            })
        })
    }
}

/// One ipset: its type, create options and members.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipset {
    pub kind: String,
    /// Create options as `ipset save` prints them (`family inet hashsize ...`).
    pub options: Vec<String>,
    /// Elements only (the first word of each `add` line), in saved order.
    pub members: Members,
    /// `comment "..."` of the members that carry one, by element.
    pub comments: BTreeMap<String, String>,
}

/// Everything pyfw reads from the kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    pub v4: Ruleset,
    pub v6: Ruleset,
    pub ipsets: BTreeMap<String, Ipset>,
}

impl State {
    pub fn ruleset(&self, family: Family) -> &Ruleset {
        match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }

    pub fn ruleset_mut(&mut self, family: Family) -> &mut Ruleset {
        match family {
            Family::V4 => &mut self.v4,
            Family::V6 => &mut self.v6,
        }
    }
}
