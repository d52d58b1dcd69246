//! The wishes file: what the operator wants netfilter to look like.
//!
//! Loading happens in two stages. First serde reads the YAML into raw
//! structs that reject unknown keys and keep every value's line. Then
//! `validate` turns them into checked types, collecting every problem with
//! its file, line and wish (`table/chain/NAME`), so an operator can fix a
//! whole file in one pass. Nothing is read from or written to the kernel
//! until a file has passed both stages.

use std::fmt;
use std::path::PathBuf;

use regex::Regex;

use crate::state::Family;
use crate::state::rule::Rule;
use crate::state::set_type::{SetFamily, SetType};

mod checks;
pub(crate) mod lift;
mod load;
pub mod nft;
mod raw;
pub mod secure;
mod validate;

pub use load::{load, parse};
pub use validate::{check_chain_name, check_rule_name};

/// The key that makes a rules item a pattern over other programs' rules.
pub const MATCH_KEY: &str = "~match";

/// A validated wishes file.
#[derive(Clone, Debug)]
pub struct Wishes {
    pub path: PathBuf,
    /// Shared: a clone (the daemon keeps the last good wishes; a run maps
    /// the rules to canonical form) must not copy 100,000 members.
    pub ipsets: std::sync::Arc<[IpsetWish]>,
    pub chains: Vec<ChainWish>,
    /// The nftables tables pyfw owns wholly (`nftables:`); shared, as
    /// `ipsets` is.
    pub nftables: std::sync::Arc<[nft::NftTableWish]>,
    /// What the file says that loads, but is likely not what was meant
    /// (a chain nothing jumps to, a port written in octal): said with the
    /// file, the line and the wish, and applied all the same.
    pub warnings: Vec<WishError>,
}

impl Wishes {
    /// The same wishes with each named rule's printed form (see
    /// [`NamedRule::printed`]) set to `f`'s, for comparing in the kernel's
    /// form while installing what the wish says.
    pub fn map_rules(&self, mut f: impl FnMut(&ChainWish, &NamedRule) -> Rule) -> Wishes {
        let mut out = self.clone();
        for (chain, orig) in out.chains.iter_mut().zip(&self.chains) {
            for (item, orig_item) in chain
                .rules
                .iter_mut()
                .flatten()
                .zip(orig.rules.iter().flatten())
            {
                if let (RuleItem::Named(r), RuleItem::Named(o)) = (item, orig_item) {
                    let printed = f(orig, o);
                    r.printed = (printed != r.rule).then_some(printed);
                }
            }
        }
        out
    }

    /// The line of the wish a message names by its label:
    /// `table/chain/NAME` (or `ip6tables:table/chain/NAME`) for a rule,
    /// `table/chain` for a chain, `ipset NAME` for a set, and
    /// `nft FAMILY TABLE[/...]` for an nftables wish (see [`nft`]).
    pub fn line_of(&self, label: &str) -> Option<u64> {
        if label.starts_with("nft ") {
            return nft::line_of(&self.nftables, label);
        }
        if let Some(name) = label.strip_prefix("ipset ") {
            return self.ipsets.iter().find(|s| s.name == name).map(|s| s.line);
        }
        self.chains.iter().find_map(|chain| {
            let chain_label = chain.label();
            if chain_label == label {
                return Some(chain.line);
            }
            let name = label.strip_prefix(&chain_label)?.strip_prefix('/')?;
            chain.rules.iter().flatten().find_map(|item| match item {
                RuleItem::Named(r) if r.name == name => Some(r.line),
                _ => None,
            })
        })
    }

    /// `FILE:LINE: LABEL` for a message about the wish `label`, or
    /// `FILE: LABEL` when no wish of that label is in the file.
    pub fn locate(&self, label: &str) -> String {
        match self.line_of(label) {
            Some(line) => format!("{}:{line}: {label}", self.path.display()),
            None => format!("{}: {label}", self.path.display()),
        }
    }
}

/// An ipset with exact membership.
#[derive(Clone, Debug)]
pub struct IpsetWish {
    pub name: String,
    pub kind: SetType,
    pub family: SetFamily,
    /// Create options as written (`family inet6 maxelem 1048576`), split.
    pub header: Vec<String>,
    /// Members as `ipset save` prints them; `None` leaves membership alone.
    pub members: Option<crate::state::Members>,
    pub line: u64,
}

/// What one chain should look like.
#[derive(Clone, Debug)]
pub struct ChainWish {
    pub family: Family,
    pub table: String,
    pub chain: String,
    pub policy: Option<String>,
    /// `None` when the wish only sets a policy: the rules are left alone.
    pub rules: Option<Vec<RuleItem>>,
    pub line: u64,
}

impl ChainWish {
    /// `filter/INPUT`, prefixed by `ip6tables:` for IPv6.
    pub fn label(&self) -> String {
        chain_label(self.family, &self.table, &self.chain)
    }

    /// Names of the wished rules, for telling them from other rules.
    pub fn rule_names(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().flatten().filter_map(|item| match item {
            RuleItem::Named(r) => Some(r.name.as_str()),
            RuleItem::Match(_) => None,
        })
    }
}

/// How a chain is named in messages.
pub fn chain_label(family: Family, table: &str, chain: &str) -> String {
    match family {
        Family::V4 => format!("{table}/{chain}"),
        Family::V6 => format!("ip6tables:{table}/{chain}"),
    }
}

/// One entry of a chain's `rules` list.
#[derive(Clone, Debug)]
pub enum RuleItem {
    Named(NamedRule),
    Match(MatchRule),
}

/// `NAME: RULE TEXT`. The rule always carries `--comment NAME`.
#[derive(Clone, Debug)]
pub struct NamedRule {
    pub name: String,
    /// What the wish says, `--comment NAME` added: what pyfw installs.
    pub rule: Rule,
    /// How iptables prints that rule, when it prints it otherwise
    /// (`-p tcp --dport 22` as `-p tcp -m tcp --dport 22`): what pyfw
    /// compares the kernel's rules with. `None` until learned, and when it
    /// is printed as written.
    pub printed: Option<Rule>,
    pub line: u64,
}

impl NamedRule {
    /// The rule as the kernel prints it, as far as pyfw knows: what a rule
    /// read from the kernel is compared with.
    pub fn compare(&self) -> &Rule {
        self.printed.as_ref().unwrap_or(&self.rule)
    }
}

/// `~match: REGEX`, matched against a rule's `iptables-save` text.
#[derive(Clone, Debug)]
pub struct MatchRule {
    pub regex: Regex,
    pub line: u64,
}

/// One problem in a wishes file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WishError {
    pub path: PathBuf,
    /// 1-based; 0 when the problem is the file as a whole.
    pub line: u64,
    /// `table/chain/NAME` or `ipset NAME`, where there is one.
    pub wish: Option<String>,
    pub message: String,
}

impl fmt::Display for WishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        if let Some(wish) = &self.wish {
            write!(f, ": {wish}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in a wishes file, in file order.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct LoadError {
    pub errors: Vec<WishError>,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}
