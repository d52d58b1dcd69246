//! Owned nftables tables: the script that puts one in place, and the
//! commands that run it.
//!
//! A table is replaced whole, in one transaction: one `nft -f -` reads
//!
//! ```text
//! table inet pyfw {}          # makes the next line valid if it is absent
//! delete table inet pyfw
//! table inet pyfw { ... }     # the whole table as wished
//! ```
//!
//! and the kernel commits all three or none: no reader ever sees the table
//! missing or half-built, a script nft refuses leaves the old table in
//! force, and no other table is touched. The script is pyfw's own text
//! around the wishes' rules and elements, one per line: each rule's line
//! carries its name as an nft comment (`# allow_ssh`), so that the line nft
//! names in an error leads back to the wish ([`label_at`]).
//!
//! A replace resets the table's counters and its dynamic sets, so it runs
//! only when the table read differs from the kernel's rendering of the
//! wishes (see `state::nft` and `reconcile::nft`).

use std::fmt::Write as _;
use std::hash::Hasher;

use crate::plan::command::{Command, Program};
pub use crate::plan::command::{SCRIPT_ARGS, line, script_of, tables_of};
use crate::state::nft::Drift;
use crate::wishes::nft::{NftChainWish, NftFamily, NftSetWish, NftTableWish, table_label};

/// The script that replaces `table` with what its wish says.
pub fn script(table: &NftTableWish) -> String {
    let head = format!("table {} {}", table.family, table.name);
    let elements: usize = table.sets.iter().map(|s| s.elements.len()).sum();
    let mut out = String::with_capacity(256 + elements * 20);
    let _ = writeln!(out, "{head} {{}}");
    let _ = writeln!(out, "delete {head}");
    let _ = writeln!(out, "{head} {{");
    for set in &table.sets {
        write_set(&mut out, set);
    }
    for chain in &table.chains {
        write_chain(&mut out, chain);
    }
    out.push_str("}\n");
    out
}

fn write_set(out: &mut String, set: &NftSetWish) {
    let _ = writeln!(out, "\tset {} {{", set.name);
    let _ = writeln!(out, "\t\t{}", set.key);
    if !set.flags.is_empty() {
        let _ = writeln!(out, "\t\tflags {}", set.flags.join(","));
    }
    for option in &set.options {
        let _ = writeln!(out, "\t\t{option}");
    }
    if !set.elements.is_empty() {
        out.push_str("\t\telements = {\n");
        for e in &set.elements {
            out.push_str("\t\t\t");
            out.push_str(e);
            out.push_str(",\n");
        }
        out.push_str("\t\t}\n");
    }
    out.push_str("\t}\n");
}

fn write_chain(out: &mut String, chain: &NftChainWish) {
    let _ = writeln!(out, "\tchain {} {{", chain.name);
    if let Some(base) = &chain.base {
        let device = base
            .device
            .as_ref()
            .map(|d| format!(" device \"{d}\""))
            .unwrap_or_default();
        let _ = write!(
            out,
            "\t\ttype {} hook {}{device} priority {};",
            base.kind, base.hook, base.priority
        );
        if let Some(policy) = &base.policy {
            let _ = write!(out, " policy {policy};");
        }
        out.push('\n');
    }
    for rule in &chain.rules {
        let _ = match &rule.name {
            Some(name) => writeln!(out, "\t\t{} # {name}", rule.text),
            None => writeln!(out, "\t\t{}", rule.text),
        };
    }
    out.push_str("\t}\n");
}

/// The script that deletes a table pyfw no longer wishes (and is a no-op
/// when it is gone already).
pub fn delete_script(family: NftFamily, name: &str) -> String {
    format!("table {family} {name} {{}}\ndelete table {family} {name}\n")
}

/// The wish a line (1-based) of a pyfw script is about, as messages label
/// it: `nft inet pyfw/input/NAME` (or `/#N`) for a rule, `.../set NAME`
/// for a set and its elements, `nft inet pyfw/CHAIN` for a chain's header,
/// `nft inet pyfw` for the rest. Read off the script's own shape, so that
/// it needs nothing but the text nft was fed.
pub fn label_at(script: &str, line: usize) -> Option<String> {
    let mut table = None;
    let mut inside: Option<String> = None;
    let mut rule = 0;
    for (n, text) in script.lines().enumerate().take(line) {
        let here = n + 1 == line;
        let t = text.trim();
        if let Some(rest) = t.strip_prefix("table ") {
            let mut words = rest.split_whitespace();
            if let (Some(f), Some(name)) = (words.next(), words.next()) {
                let family = NftFamily::parse(f)?;
                table = Some(table_label(family, name));
            }
            inside = None;
        } else if let Some(rest) = t.strip_prefix("delete table ") {
            let mut words = rest.split_whitespace();
            let family = NftFamily::parse(words.next()?)?;
            table = Some(table_label(family, words.next()?));
        } else if text.starts_with("\tset ") || text.starts_with("\tchain ") {
            let mut words = t.split_whitespace();
            let (kind, name) = (words.next()?, words.next()?);
            let table = table.as_deref()?;
            inside = Some(match kind {
                "set" => format!("{table}/set {name}"),
                _ => format!("{table}/{name}"),
            });
            rule = 0;
        } else if text == "\t}" {
            if here {
                return inside.or(table);
            }
            inside = None;
        } else if let (true, Some(chain)) = (text.starts_with("\t\t"), &inside)
            && !chain.contains("/set ")
            && !t.starts_with("type ")
        {
            rule += 1;
            if here {
                let tag = match t.rsplit_once(" # ") {
                    Some((_, name)) if !name.contains('"') => name.to_string(),
                    _ => format!("#{rule}"),
                };
                return Some(format!("{chain}/{tag}"));
            }
            continue;
        }
        if here {
            return inside.or(table);
        }
    }
    None
}

/// The line nft names first in its error output (`/dev/stdin:LINE:COL...:
/// Error: ...`).
pub fn error_line(stderr: &str) -> Option<usize> {
    stderr.lines().find_map(|l| {
        let rest = l.strip_prefix("/dev/stdin:")?;
        rest.split(':').next()?.parse().ok()
    })
}

/// nft's first error message, without its location (`Error: Could not
/// process rule: No such file or directory`), with the text it points at.
pub fn error_message(stderr: &str) -> String {
    let mut lines = stderr.lines();
    let Some(first) = lines.by_ref().find(|l| l.contains("Error: ")) else {
        return stderr.trim().to_string();
    };
    let message = first
        .split_once("Error: ")
        .map_or(first, |(_, m)| m)
        .trim()
        .to_string();
    match lines.next().map(str::trim) {
        Some(at) if !at.is_empty() && !at.starts_with('^') => format!("{message}: `{at}`"),
        _ => message,
    }
}

/// A command that feeds `script` to `nft -f -`, for `target` (a table's
/// label).
pub fn command(script: String, reason: String, target: String) -> Command {
    Command {
        program: Program::Nft,
        args: vec![SCRIPT_ARGS[0].into(), SCRIPT_ARGS[1].into(), script],
        // Undone by the snapshot: the table's old text, put back whole.
        undo: None,
        reason,
        target,
        wish: None,
        members: Default::default(),
    }
}

/// How `plan` prints an nft command: the script itself, as a shell would
/// take it.
pub fn heredoc(binary: &str, script: &str) -> String {
    format!("{binary} -f - <<'EOF'\n{script}EOF")
}

/// A short digest of a script and the nft that renders it: the key of the
/// kernel's rendering of that script (see `reconcile::nft`).
pub fn key(script: &str, nft_version: &str) -> String {
    let mut h = fnv::FnvHasher::default();
    h.write(nft_version.as_bytes());
    h.write(&[0]);
    h.write(script.as_bytes());
    format!("{:016x}-{}", h.finish(), script.len())
}

/// Why a table is replaced: its label, then what drifted, each named by its
/// wish where there is one.
pub fn reason(table: &NftTableWish, drift: &[Drift]) -> String {
    let label = table.label();
    let rule = |chain: &str, index: usize| {
        table
            .chains
            .iter()
            .find(|c| c.name == chain)
            .and_then(|c| c.rules.get(index).map(|r| r.tag(index)))
            .unwrap_or_else(|| format!("#{}", index + 1))
    };
    let words: Vec<String> = drift
        .iter()
        .take(8)
        .map(|d| match d {
            Drift::TableMissing => "table missing".into(),
            Drift::Table => "the table's flags differ".into(),
            Drift::ChainMissing(c) => format!("chain {c} missing"),
            Drift::ChainExtra(c) => format!("chain {c} not wished"),
            Drift::ChainHeader(c) => format!("chain {c}: type, hook, priority or policy differs"),
            Drift::RuleMissing { chain, index } => {
                format!("chain {chain}: rule {} missing", rule(chain, *index))
            }
            Drift::RuleExtra { chain, position } => {
                format!(
                    "chain {chain}: a rule not wished at position {}",
                    position + 1
                )
            }
            Drift::RuleOrder(c) => format!("chain {c}: rules out of order"),
            Drift::SetMissing(s) => format!("{s} missing"),
            Drift::SetExtra(s) => format!("{s} not wished"),
            Drift::SetHeader(s) => format!("{s}: type, flags or options differ"),
            Drift::SetElements { set, have, want } => {
                format!("{set}: elements differ ({have} there, {want} wished)")
            }
            Drift::ObjectMissing(o) => format!("{o} missing"),
            Drift::ObjectExtra(o) => format!("{o} not wished"),
            Drift::ObjectChanged(o) => format!("{o} differs"),
        })
        .collect();
    let more = match drift.len() > 8 {
        true => format!(" and {} more", drift.len() - 8),
        false => String::new(),
    };
    format!("{label}: {}{more}", words.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn wishes() -> crate::wishes::Wishes {
        crate::wishes::parse(
            "pyfw_wishes:
  nftables:
    inet pyfw:
      sets:
        allowed:
          type: ipv4_addr
          flags: [interval, timeout]
          timeout: 1h
          elements: [10.0.0.1, 10.0.0.0/24]
      chains:
        input:
          type: filter
          hook: input
          priority: filter - 1
          policy: drop
          rules:
          - ct state established,related accept
          - ssh: tcp dport 22 accept
        other:
          rules:
          - 'log prefix \"x # y\" accept'
",
            Path::new("w.yaml"),
        )
        .unwrap()
    }

    #[test]
    fn the_script_replaces_the_table_whole_one_wish_per_line() {
        let w = wishes();
        let text = script(&w.nftables[0]);
        insta::assert_snapshot!(text, @r#"
        table inet pyfw {}
        delete table inet pyfw
        table inet pyfw {
        	set allowed {
        		type ipv4_addr
        		flags interval,timeout
        		timeout 1h
        		elements = {
        			10.0.0.1,
        			10.0.0.0/24,
        		}
        	}
        	chain input {
        		type filter hook input priority filter - 1; policy drop;
        		ct state established,related accept
        		tcp dport 22 accept # ssh
        	}
        	chain other {
        		log prefix "x # y" accept
        	}
        }
        "#);
        let labels: Vec<Option<String>> = (1..=21).map(|l| label_at(&text, l)).collect();
        let at = |l: usize| labels[l - 1].as_deref();
        assert_eq!(at(1), Some("nft inet pyfw"));
        assert_eq!(at(2), Some("nft inet pyfw"));
        assert_eq!(at(5), Some("nft inet pyfw/set allowed"));
        assert_eq!(at(10), Some("nft inet pyfw/set allowed"));
        assert_eq!(at(14), Some("nft inet pyfw/input"));
        assert_eq!(at(15), Some("nft inet pyfw/input/#1"));
        assert_eq!(at(16), Some("nft inet pyfw/input/ssh"));
        assert_eq!(at(19), Some("nft inet pyfw/other/#1"));
        assert_eq!(at(21), Some("nft inet pyfw"));
        // Every label leads back to its wish's line.
        for (line, label) in labels.iter().enumerate() {
            let label = label
                .as_deref()
                .unwrap_or_else(|| panic!("line {}", line + 1));
            assert!(w.line_of(label).is_some(), "{label}");
        }
        assert_eq!(tables_of(&text), [(NftFamily::Inet, "pyfw".to_string())]);
    }

    #[test]
    fn nft_errors_are_read_for_line_and_words() {
        let stderr = "/dev/stdin:16:21-26: Error: Could not process rule: No such file or \
                      directory\n\t\ttcp dport 22 jump nosuch\n\t\t                  ^^^^^^\n\
                      /dev/stdin:17:3-5: Error: another\n";
        assert_eq!(error_line(stderr), Some(16));
        assert_eq!(
            error_message(stderr),
            "Could not process rule: No such file or directory: `tcp dport 22 jump nosuch`"
        );
    }

    #[test]
    fn commands_show_their_script_summed_up_or_whole() {
        let w = wishes();
        let c = command(script(&w.nftables[0]), "r".into(), "nft inet pyfw".into());
        assert_eq!(
            c.line("nft"),
            "nft -f - (replaces table inet pyfw in one transaction: a script of 21 lines)"
        );
        assert_eq!(c.to_string(), c.line("nft"));
        let d = command(delete_script(NftFamily::Ip6, "x"), "r".into(), "t".into());
        assert_eq!(d.line("nft"), "nft -f - (deletes table ip6 x)");
        assert!(heredoc("nft", script_of(&d).unwrap()).ends_with("delete table ip6 x\nEOF"));
    }
}
