//! Rendering state back as the kernel tools print it, without counters.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

use crate::state::{Ipset, Ruleset, State};

/// Prints a ruleset in `iptables-save` form without counters or timestamps,
/// so that two readings compare and diff cleanly.
pub fn render_ruleset(ruleset: &Ruleset) -> String {
    let mut out = String::new();
    for (name, table) in &ruleset.tables {
        let _ = writeln!(out, "*{name}");
        for (chain, c) in &table.chains {
            let _ = writeln!(out, ":{chain} {}", c.policy.as_deref().unwrap_or("-"));
        }
        for (chain, c) in &table.chains {
            for rule in &c.rules {
                let _ = writeln!(
                    out,
                    "-A {chain} {}",
                    crate::state::parse::saved_rule_text(rule)
                );
            }
        }
        out.push_str("COMMIT\n");
    }
    out
}

/// Prints ipsets in `ipset save` form.
pub fn render_ipsets(sets: &BTreeMap<String, Ipset>) -> String {
    let mut out = String::new();
    for (name, set) in sets {
        let _ = write!(out, "create {name} {}", set.kind);
        for o in &set.options {
            let _ = write!(out, " {o}");
        }
        out.push('\n');
        for m in &set.members {
            let _ = write!(out, "add {name} {m}");
            if let Some(c) = set.comments.get(m) {
                // As ipset prints it: in double quotes, nothing escaped.
                let _ = write!(out, " comment \"{c}\"");
            }
            out.push('\n');
        }
    }
    out
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "# iptables")?;
        f.write_str(&render_ruleset(&self.v4))?;
        writeln!(f, "# ip6tables")?;
        f.write_str(&render_ruleset(&self.v6))?;
        writeln!(f, "# ipset")?;
        f.write_str(&render_ipsets(&self.ipsets))
    }
}
