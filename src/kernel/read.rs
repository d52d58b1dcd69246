//! Reading netfilter: the rules and sets a [`Scope`] names, as cheaply as
//! each variant allows (a chain alone on nft; one save per table, or the
//! legacy cache, on legacy), and `ipset save` parsed while it prints.

use std::collections::{BTreeMap, BTreeSet};

use crate::kernel::backend::{Error, SetSummary};
use crate::kernel::legacy_cache::Lookup;
use crate::kernel::process::{Lines, OnLine, parallel};
use crate::kernel::scope::{Rules, Scope, Sets};
use crate::kernel::system::System;
use crate::state::{self, Family, State};

/// On legacy, the most chains of one table read one by one (`iptables -S`)
/// rather than with one `iptables-save -t TABLE` of which pyfw parses only
/// those chains. Each legacy read copies the whole table out of the
/// kernel, and the xtables lock runs them one after the other: with a
/// 50,000-rule table one `-S` cost 0.09-0.12 s, one save 0.14 s.
const LEGACY_LIST_MAX: usize = 1;

/// The lines of an `iptables-save` that a parse of the chains `wanted`
/// needs: everything but comments and other chains' declarations and
/// rules, which are left out unread. Any other line is kept, so that the
/// parser still refuses output that is not a save.
fn keep_chains(save: &str, wanted: &BTreeSet<String>) -> String {
    let named = |rest: &str| {
        let name = rest.split(' ').next().unwrap_or_default();
        wanted.contains(name)
    };
    let mut out = String::new();
    let mut lines = save.lines();
    let mut buf = Vec::new();
    while let Some(line) = lines.next() {
        // A rule whose quoted value holds a line break runs on over lines,
        // which go with it, kept or left out whole.
        let more = if line.starts_with("-A ") {
            state::lines_after(line, &lines, &mut buf)
        } else {
            0
        };
        let keep = if let Some(rest) = line.strip_prefix("-A ") {
            named(rest)
        } else if let Some(rest) = line.strip_prefix(':') {
            named(rest)
        } else {
            !line.starts_with('#')
        };
        for line in std::iter::once(line).chain(lines.by_ref().take(more)) {
            if keep {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// An error unless a save of `table` printed it: `iptables-save -t TABLE`
/// prints every table it is asked for, loaded or not, empty or not.
fn has_table(rs: &state::Ruleset, table: &str, command: &str) -> Result<(), Error> {
    if rs.tables.contains_key(table) {
        return Ok(());
    }
    Err(Error::Empty {
        command: command.to_string(),
        expected: format!("`*{table}` ... `COMMIT`"),
    })
}

/// Whether `iptables -S CHAIN` printed the line it always starts with:
/// `-P CHAIN POLICY` for a built-in chain, `-N CHAIN` for another.
fn lists_chain(text: &str, chain: &str) -> bool {
    text.lines().any(|l| {
        let l = l.trim_end();
        l.strip_prefix("-N ") == Some(chain)
            || l.strip_prefix("-P ")
                .and_then(|rest| rest.strip_prefix(chain))
                .is_some_and(|rest| rest.starts_with(' '))
    })
}

impl System {
    /// The families' rules and the sets in `scope`, read side by side (see
    /// [`parallel`]).
    pub(crate) fn read_scope(&self, scope: &Scope) -> Result<State, Error> {
        let this = self;
        let mut parts = Vec::new();
        for family in [Family::V4, Family::V6] {
            if *scope.rules(family) != Rules::Skip {
                parts.push(Part::Rules(family));
            }
        }
        if scope.sets != Sets::Skip {
            parts.push(Part::Sets);
        }
        let got = parallel(parts.into_iter().map(|what| {
            move || match what {
                Part::Rules(family) => this
                    .read_rules(family, scope)
                    .map(|rs| Got::Rules(family, rs)),
                Part::Sets => this.read_sets(&scope.sets).map(Got::Sets),
            }
        }));
        let mut state = State::default();
        for part in got {
            match part? {
                Got::Rules(Family::V4, Some(rs)) => state.v4 = rs,
                Got::Rules(Family::V6, Some(rs)) => state.v6 = rs,
                Got::Rules(_, None) => {}
                Got::Sets(sets) => state.ipsets = sets,
            }
        }
        Ok(state)
    }

    fn save(&self, family: Family, table: Option<&str>) -> Result<state::Ruleset, Error> {
        let _one = (!self.nft).then(crate::kernel::fingerprint::one_table_copy);
        let program = self.tool(family, "-save");
        let args: Vec<String> = match table {
            Some(t) => vec!["-t".into(), t.into()],
            None => Vec::new(),
        };
        let out = self.exec(&program, &args, None)?;
        // Newer iptables print the warning on stderr; read both.
        let text = if out.stderr.contains("incompatible") {
            format!("{}\n{}", out.stderr, out.stdout)
        } else {
            out.stdout
        };
        let command = match table {
            Some(t) => format!("{program} -t {t}"),
            None => program,
        };
        let rs = state::parse_iptables_save(&text).map_err(|source| Error::Parse {
            command: command.clone(),
            source,
        })?;
        if let Some(t) = table {
            has_table(&rs, t, &command)?;
        }
        Ok(rs)
    }

    /// Reads some chains of a table with one `iptables-save -t TABLE`,
    /// parsing only their lines: on legacy one save costs about one
    /// `iptables -S` (both copy the whole table out of the kernel; the save
    /// also prints it), and parsing a 50,000-rule save costs as much again
    /// as the save, where skipping the other chains' lines costs almost
    /// nothing.
    fn save_chains(
        &self,
        family: Family,
        table: &str,
        wanted: &BTreeSet<String>,
    ) -> Result<state::Ruleset, Error> {
        let program = self.tool(family, "-save");
        let one = (!self.nft).then(crate::kernel::fingerprint::one_table_copy);
        let out = self.exec(&program, &["-t".into(), table.into()], None)?;
        if out.stderr.contains("incompatible") {
            // Let the full parse say what is wrong, as `save` does.
            drop(one);
            return self.save(family, Some(table));
        }
        let command = format!("{program} -t {table}");
        let rs =
            state::parse_iptables_save(&keep_chains(&out.stdout, wanted)).map_err(|source| {
                Error::Parse {
                    command: command.clone(),
                    source,
                }
            })?;
        has_table(&rs, table, &command)?;
        Ok(rs)
    }

    /// Reads single chains with `iptables -S CHAIN`: on nft this touches
    /// only that chain. A chain that does not exist is left out.
    fn list_chains(
        &self,
        family: Family,
        chains: &BTreeSet<(String, String)>,
    ) -> Result<state::Ruleset, Error> {
        let mut rs = state::Ruleset::default();
        let mut whole: BTreeSet<&str> = BTreeSet::new();
        let tool = self.tool(family, "");
        let outputs = parallel(chains.iter().map(|(table, chain)| {
            let args = ["-w", "-t", table.as_str(), "-S", chain.as_str()].map(String::from);
            let tool = &tool;
            move || self.exec(tool, &args, None)
        }));
        for ((table, chain), out) in chains.iter().zip(outputs) {
            if whole.contains(table.as_str()) {
                continue;
            }
            let out = match out {
                Ok(out) => out,
                Err(Error::Failed { stderr, .. })
                    if stderr.contains("No chain/target/match by that name")
                        || stderr.contains("does not exist") =>
                {
                    continue;
                }
                // iptables-nft 1.8 says a missing chain "is incompatible".
                // Read the table whole: that tells a missing chain from a
                // truly incompatible table.
                Err(Error::Failed { stderr, .. }) if stderr.contains("incompatible") => {
                    whole.insert(table);
                    rs.tables.remove(table);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let command = format!("{} -t {table} -S {chain}", self.tool(family, ""));
            let parsed =
                state::parse_chain_listing(&out.stdout, chain).map_err(|source| Error::Parse {
                    command: command.clone(),
                    source,
                })?;
            if !lists_chain(&out.stdout, chain) {
                return Err(Error::Empty {
                    command,
                    expected: format!("`-P {chain}` or `-N {chain}` line"),
                });
            }
            rs.tables
                .entry(table.clone())
                .or_default()
                .chains
                .push((chain.clone(), parsed));
        }
        for table in whole {
            rs.tables.extend(self.save(family, Some(table))?.tables);
        }
        Ok(rs)
    }

    /// One family's rules in `scope`; `None` when it is not read.
    /// Some chains on nft, each read alone; while the ruleset's generation
    /// stays, a poll need not read them again (see
    /// [`crate::kernel::nft_reads::NftReads`]).
    fn nft_chains(
        &self,
        family: Family,
        chains: &BTreeSet<(String, String)>,
    ) -> Result<state::Ruleset, Error> {
        match &self.nft_reads {
            Some(reads) => reads.read(
                family,
                chains,
                || self.list_chains(family, chains),
                crate::kernel::nft::generation,
            ),
            None => self.list_chains(family, chains),
        }
    }

    fn read_rules(&self, family: Family, scope: &Scope) -> Result<Option<state::Ruleset>, Error> {
        Ok(Some(match &scope.rules(family) {
            Rules::Skip => return Ok(None),
            Rules::All => self.save(family, None)?,
            Rules::Tables(tables) => {
                let mut rs = state::Ruleset::default();
                for t in tables {
                    rs.tables.extend(self.save(family, Some(t))?.tables);
                }
                rs
            }
            // Legacy copies the whole table out of the kernel for any
            // read, even `iptables -S CHAIN` (0.1 s of CPU with a
            // 50,000-rule table), so `-S` for one chain of a table, and
            // for more one save per table, of which only the chains
            // wanted are parsed. nft reads a chain alone.
            // A table whose fingerprint has not changed since its chains
            // were read is not read again (see [`LegacyCache`]).
            Rules::Chains(chains) if !self.nft => {
                let mut by_table: std::collections::BTreeMap<&String, BTreeSet<String>> =
                    std::collections::BTreeMap::new();
                for (t, c) in chains {
                    by_table.entry(t).or_default().insert(c.clone());
                }
                let mut rs = state::Ruleset::default();
                for (table, wanted) in by_table {
                    let cache = self.legacy_cache.as_ref();
                    let ticket = match cache.map(|c| c.lookup(family, table, &wanted)) {
                        Some(Lookup::Hit(t)) => {
                            // As a read gives it: no table when none of
                            // the chains exists.
                            if !t.chains.is_empty() {
                                rs.tables.insert(table.clone(), t);
                            }
                            continue;
                        }
                        Some(Lookup::Miss(ticket)) => ticket,
                        None => None,
                    };
                    let read = if wanted.len() <= LEGACY_LIST_MAX {
                        let pairs = wanted.iter().map(|c| (table.clone(), c.clone())).collect();
                        self.list_chains(family, &pairs)?
                    } else {
                        self.save_chains(family, table, &wanted)?
                    };
                    let mut t = read
                        .tables
                        .into_iter()
                        .find(|(n, _)| n == table)
                        .map(|(_, t)| t);
                    if let Some(t) = t.as_mut() {
                        t.chains.retain(|(name, _)| wanted.contains(name));
                    }
                    if let (Some(cache), Some(ticket)) = (cache, ticket) {
                        cache.remember(ticket, wanted, t.clone());
                    }
                    if let Some(t) = t.filter(|t| !t.chains.is_empty()) {
                        rs.tables.insert(table.clone(), t);
                    }
                }
                rs
            }
            Rules::Chains(chains) => self.nft_chains(family, chains)?,
        }))
    }

    /// The sets in `sets`, each named one read by its own `ipset save`,
    /// side by side.
    fn read_sets(
        &self,
        sets: &Sets,
    ) -> Result<std::collections::BTreeMap<String, state::Ipset>, Error> {
        let names = match sets {
            Sets::Skip => return Ok(Default::default()),
            Sets::All => return Ok(self.ipset_save(None)?.unwrap_or_default()),
            Sets::Named(names) => names,
        };
        let mut out = std::collections::BTreeMap::new();
        let saved = parallel(names.iter().map(|name| move || self.ipset_save(Some(name))));
        for sets in saved {
            out.extend(sets?.unwrap_or_default());
        }
        Ok(out)
    }

    /// A set's type, create options and member count, without its
    /// members (`ipset list -terse NAME`: a few milliseconds where listing
    /// 100,000 members and parsing them costs a tenth of a second); `None`
    /// when it does not exist.
    pub fn ipset_terse(&self, name: &str) -> Result<Option<SetSummary>, Error> {
        let args = ["list", "-terse", name].map(String::from);
        let out = match self.exec("ipset", &args, None) {
            Ok(out) => out,
            Err(Error::Failed { stderr, .. }) if stderr.contains("does not exist") => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let command = format!("ipset {}", args.join(" "));
        let mut sets = parse_terse(&out.stdout, &command)?;
        Ok(sets.remove(name))
    }

    /// Whether set `name` holds `element` (`ipset test NAME ELEMENT`): a
    /// lookup in the set's hash, where its summary walks every member.
    /// False also when the set is gone or no longer takes such an element
    /// (made again with another type): whatever the tool refuses, the
    /// caller reads the set in full next, and that read says what is wrong.
    pub fn ipset_test(&self, name: &str, element: &str) -> Result<bool, Error> {
        let args = ["test", name, element].map(String::from);
        match self.exec("ipset", &args, None) {
            Ok(_) => Ok(true),
            Err(Error::Failed { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The summaries of the sets `names` that exist, by name: a few sets
    /// each by its own `ipset list -terse NAME`, in turn, more by one
    /// `ipset list -terse` of every set. A summary is not free: for a hash
    /// set the kernel walks every bucket to count the members and their
    /// memory (some 15 ms for 1,000,000 members), so other programs' big
    /// sets are left out where that takes no more processes than a few.
    pub fn ipset_summaries(
        &self,
        names: &BTreeSet<String>,
    ) -> Result<BTreeMap<String, SetSummary>, Error> {
        const ONE_BY_ONE: usize = 4;
        if names.len() > ONE_BY_ONE {
            let args = ["list", "-terse"].map(String::from);
            let out = self.exec("ipset", &args, None)?;
            let mut all = parse_terse(&out.stdout, "ipset list -terse")?;
            all.retain(|name, _| names.contains(name));
            return Ok(all);
        }
        // One after another: side by side, each walk waits for the
        // other's on the ipset subsystem's mutex, spinning (a sixth of an
        // idle poll's CPU with two sets).
        let mut out = BTreeMap::new();
        for name in names {
            if let Some(summary) = self.ipset_terse(name)? {
                out.insert(name.clone(), summary);
            }
        }
        Ok(out)
    }

    /// `ipset save [NAME]`; `None` when the named set does not exist.
    fn ipset_save(
        &self,
        name: Option<&str>,
    ) -> Result<Option<std::collections::BTreeMap<String, state::Ipset>>, Error> {
        let mut args = vec!["save".to_string()];
        args.extend(name.map(String::from));
        let reading = Lines::new(SaveReading {
            reader: state::IpsetSaveReader::default(),
            error: None,
        });
        let reading = match self.exec_into("ipset", &args, None, reading) {
            Ok((reading, _)) => reading.each,
            Err(Error::Failed { stderr, .. })
                if name.is_some() && stderr.contains("does not exist") =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let command = || format!("ipset {}", args.join(" "));
        match reading.error {
            None => {
                let sets = reading.reader.finish();
                if let Some(name) = name
                    && !sets.contains_key(name)
                {
                    return Err(Error::Empty {
                        command: command(),
                        expected: format!("`create {name}` line"),
                    });
                }
                Ok(Some(sets))
            }
            Some(source) => Err(Error::Parse {
                command: command(),
                source,
            }),
        }
    }
}

/// The sets `ipset list -terse` lists: blocks of `Key: value` lines, each
/// from its `Name:` on. A block without its type or member count is an
/// error: read as a summary, it would be taken for a set that changed.
fn parse_terse(text: &str, command: &str) -> Result<BTreeMap<String, SetSummary>, Error> {
    let bad = |what: &str, name: &str| Error::Failed {
        command: command.to_string(),
        status: "unexpected output".into(),
        stderr: format!("no {what} for set `{name}` in: {}", text.trim()),
    };
    let mut out = BTreeMap::new();
    let mut block: Vec<(&str, &str)> = Vec::new();
    let mut finish = |block: &mut Vec<(&str, &str)>| -> Result<(), Error> {
        let field = |key: &str| block.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
        let Some(name) = field("Name") else {
            block.clear();
            return Ok(());
        };
        let kind = field("Type").ok_or_else(|| bad("Type", name))?;
        let members = field("Number of entries")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| bad("Number of entries", name))?;
        let summary = SetSummary {
            kind: kind.to_string(),
            options: (field("Header").unwrap_or("").split_whitespace())
                .map(String::from)
                .collect(),
            members,
            memory: field("Size in memory").and_then(|n| n.parse().ok()),
        };
        out.insert(name.to_string(), summary);
        block.clear();
        Ok(())
    };
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        if key == "Name" {
            finish(&mut block)?;
        }
        block.push((key, value.trim()));
    }
    finish(&mut block)?;
    Ok(out)
}

/// `ipset save` read as it is printed; the first line that does not read
/// is the error, and the lines after it are not read.
struct SaveReading {
    reader: state::IpsetSaveReader,
    error: Option<state::ParseError>,
}

impl OnLine for SaveReading {
    fn line(&mut self, line: &str) {
        if self.error.is_none()
            && let Err(e) = self.reader.line(line)
        {
            self.error = Some(e);
        }
    }
}

/// What [`Backend::read_state`] reads side by side.
#[derive(Clone, Copy)]
enum Part {
    Rules(Family),
    Sets,
}

/// What one [`Part`] gave.
enum Got {
    Rules(Family, Option<state::Ruleset>),
    Sets(std::collections::BTreeMap<String, state::Ipset>),
}

#[cfg(test)]
mod tests {
    use crate::kernel::process::{Lines, Sink};

    #[test]
    fn a_big_save_is_read_as_it_arrives_and_its_first_bad_line_is_the_error() {
        let mut text = String::from("create s hash:ip family inet\n");
        text.extend((0..3000).map(|i| format!("add s 10.0.{}.{}\n", i / 256, i % 256)));
        let mut reading = Lines::new(super::SaveReading {
            reader: crate::state::IpsetSaveReader::default(),
            error: None,
        });
        text.as_bytes().chunks(4096).for_each(|c| reading.feed(c));
        reading.feed(b"add nope 10.0.0.1\nadd s 10.9.9.9\nnot a line");
        reading.end();
        let error = reading.each.error.expect("the set nope is unknown");
        assert_eq!(
            (error.line, error.text.as_str()),
            (3002, "add nope 10.0.0.1")
        );
        let sets = reading.each.reader.finish();
        assert_eq!(sets["s"].members.len(), 3000);
        assert_eq!(&sets["s"].members[2999], "10.0.11.183");
    }

    #[test]
    fn keep_chains_drops_other_chains_but_not_what_is_not_a_save() {
        let save = "# Generated by iptables-save\n*filter\n:INPUT ACCEPT [0:0]\n\
                    :FORWARD DROP [5:300]\n:DOCKER - [0:0]\n:DOCKER-USER - [0:0]\n\
                    -A INPUT -j ACCEPT\n-A FORWARD -j DOCKER-USER\n\
                    -A DOCKER -d 172.17.0.2/32 -j ACCEPT\n-A DOCKER-USER -j RETURN\n\
                    COMMIT\n# Completed\nthis is not a save\n";
        let wanted: std::collections::BTreeSet<String> =
            ["FORWARD", "DOCKER"].map(String::from).into();
        assert_eq!(
            super::keep_chains(save, &wanted),
            "*filter\n:FORWARD DROP [5:300]\n:DOCKER - [0:0]\n-A FORWARD -j DOCKER-USER\n\
             -A DOCKER -d 172.17.0.2/32 -j ACCEPT\nCOMMIT\nthis is not a save\n"
        );
        // A comment holding a line break goes with its rule, left out or
        // kept whole, whatever its next line looks like.
        let save = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n\
                    -A INPUT -m comment --comment \"a\n-A FORWARD -j DROP\n# b\" -j ACCEPT\n\
                    -A FORWARD -m comment --comment \"c\n:INPUT\nd\" -j ACCEPT\nCOMMIT\n";
        let wanted: std::collections::BTreeSet<String> = ["FORWARD".to_string()].into();
        let kept = super::keep_chains(save, &wanted);
        assert_eq!(
            kept,
            "*filter\n:FORWARD DROP [0:0]\n\
             -A FORWARD -m comment --comment \"c\n:INPUT\nd\" -j ACCEPT\nCOMMIT\n"
        );
        let rs = crate::state::parse_iptables_save(&kept).unwrap();
        let forward = rs.chain("filter", "FORWARD").unwrap();
        assert_eq!(forward.rules.len(), 1);
        assert_eq!(forward.rules[0].comment(), Some("c\n:INPUT\nd"));
    }
}
