//! The I/O edge: the only module that starts processes.
//!
//! Everything pyfw does to the kernel goes through [`Backend`], so tests can
//! script a fake one and the planner never sees a process. The real backend
//! runs `iptables`, `ip6tables` and `ipset` with an argument vector (never a
//! shell), with `LC_ALL=C` so that messages are stable, with a timeout so a
//! wedged tool cannot hang the daemon, and with stdout and stderr kept apart.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::process::{Child, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

use wait_timeout::ChildExt;

use crate::plan::{Command, Program};
use crate::rule::Rule;
use crate::state::{self, Family, State};

/// What to read: the rules and sets a plan can touch, and no more, since a
/// full `iptables-save` of a host with a 50,000-rule Kubernetes chain costs
/// a second and a half of CPU where one chain costs milliseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    pub v4: Rules,
    pub v6: Rules,
    pub sets: Sets,
}

/// Which rules of one family to read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rules {
    Skip,
    All,
    /// These tables whole.
    Tables(BTreeSet<String>),
    /// These (table, chain) pairs, with their policies.
    Chains(BTreeSet<(String, String)>),
}

/// Which sets to read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sets {
    Skip,
    All,
    Named(BTreeSet<String>),
}

impl Scope {
    /// Everything: every table of both families and every set.
    pub fn all() -> Scope {
        Scope {
            v4: Rules::All,
            v6: Rules::All,
            sets: Sets::All,
        }
    }

    /// Nothing; fill in what is wanted.
    pub fn none() -> Scope {
        Scope {
            v4: Rules::Skip,
            v6: Rules::Skip,
            sets: Sets::Skip,
        }
    }

    pub fn rules(&self, family: Family) -> &Rules {
        match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }

    pub fn rules_mut(&mut self, family: Family) -> &mut Rules {
        match family {
            Family::V4 => &mut self.v4,
            Family::V6 => &mut self.v6,
        }
    }
}

/// A wished rule for the kernel tools to check before anything changes.
#[derive(Clone, Debug)]
pub struct RuleCheck {
    pub family: Family,
    pub table: String,
    pub chain: String,
    /// Chains the plan creates that this rule sits in or jumps to: a check
    /// declares them first.
    pub creates: Vec<String>,
    pub rule: Rule,
    /// `table/chain/NAME`, for the message.
    pub label: String,
}

/// A failure at the I/O edge. Each names the command and the tool's words.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("`{command}` did not finish within {timeout:?}; killed it")]
    Timeout { command: String, timeout: Duration },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("cannot read the output of `{command}`: {source}")]
    Parse {
        command: String,
        source: state::ParseError,
    },
    #[error("{label}: iptables rejects the rule: {message}")]
    Rejected { label: String, message: String },
}

/// Reads netfilter state and changes it one command at a time.
pub trait Backend {
    /// Reads the rulesets and sets in `scope`.
    fn read_state(&mut self, scope: Scope) -> Result<State, Error>;
    /// Asks the kernel tools whether they accept every rule, changing
    /// nothing. Sets the rules name must exist already.
    fn check_rules(&mut self, checks: &[RuleCheck]) -> Result<(), Error>;
    /// Learns how iptables prints each rule, in order. This is also the
    /// kernel's verdict on each wish: a rule iptables refuses comes back as
    /// [`Error::Rejected`] naming it, and nothing is left behind.
    fn canonicalize(&mut self, rules: &[RuleCheck]) -> Result<Vec<Rule>, Error>;
    /// Flushes and deletes a chain pyfw made for itself (a scratch chain
    /// left by a pyfw that died).
    fn drop_chain(&mut self, family: Family, table: &str, chain: &str) -> Result<(), Error>;
    /// Runs one planned command.
    fn run(&mut self, command: &Command) -> Result<(), Error>;
    /// Runs commands that [`transactions`] grouped together, in one
    /// process where the tools allow: `iptables-restore --noflush` for one
    /// table (all or nothing), `ipset restore` for sets. The default runs
    /// them one by one.
    fn run_batch(&mut self, commands: &[&Command]) -> Result<(), BatchError> {
        for (applied, c) in commands.iter().enumerate() {
            self.run(c).map_err(|cause| BatchError { applied, cause })?;
        }
        Ok(())
    }
    /// How a batch of these commands runs, for the log.
    fn batch_line(&self, commands: &[&Command]) -> String {
        match commands {
            [one] => format!("{} (alone)", self.binary(one.program)),
            _ => format!("{} commands one by one", commands.len()),
        }
    }
    /// The binary that runs `program`'s commands, for output and logs.
    fn binary(&self, program: Program) -> String {
        program.name().to_string()
    }
}

/// Which iptables variant to drive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Variant {
    /// Whichever variant the host's other programs use.
    Auto,
    /// iptables-nft (the nf_tables kernel API).
    Nft,
    /// iptables-legacy (the x_tables kernel API).
    Legacy,
}

/// A batch that failed: `applied` of its commands took effect first (0 for
/// an atomic iptables transaction).
#[derive(Debug)]
pub struct BatchError {
    pub applied: usize,
    pub cause: Error,
}

/// Groups a plan's commands into transactions: each maximal run of
/// iptables commands for one family and table, and each run of ipset
/// commands. Returns index ranges into `commands`.
pub fn transactions(commands: &[Command]) -> Vec<std::ops::Range<usize>> {
    let key = |c: &Command| match c.program {
        Program::Iptables(f) => Some((f, c.args.get(2).cloned().unwrap_or_default())),
        Program::Ipset => None,
    };
    let mut out: Vec<std::ops::Range<usize>> = Vec::new();
    for (i, c) in commands.iter().enumerate() {
        match out.last_mut() {
            Some(r) if key(&commands[r.start]) == key(c) => r.end = i + 1,
            _ => out.push(i..i + 1),
        }
    }
    out
}

/// The real kernel tools, found on `PATH`.
#[derive(Clone, Debug)]
pub struct System {
    pub timeout: Duration,
    /// Binary prefix per family: `iptables`, `iptables-legacy`, ...
    v4: String,
    v6: String,
    /// Whether the variant is nft, where reading one chain is cheap.
    nft: bool,
}

impl Default for System {
    fn default() -> Self {
        System {
            timeout: Duration::from_secs(30),
            v4: "iptables".into(),
            v6: "ip6tables".into(),
            nft: true,
        }
    }
}

/// The input line an `iptables-restore` failure names: nft says `Error
/// occurred at line: N`, legacy says `iptables-restore: line N failed`.
fn restore_error_line(stderr: &str) -> Option<usize> {
    stderr.lines().find_map(|l| {
        let n = match l.strip_prefix("Error occurred at line: ") {
            Some(n) => n,
            None => l.split(": line ").nth(1)?.strip_suffix(" failed")?,
        };
        n.trim().parse().ok()
    })
}

/// The program, arguments and input that run `commands` as one batch.
fn batch_input(system: &System, commands: &[&Command]) -> (String, Vec<String>, String) {
    let mut text = String::new();
    match commands[0].program {
        Program::Iptables(family) => {
            // Commands are `-w -t TABLE OP ...`; a restore file names the
            // table once and takes the rest of each line as is.
            let table = commands[0].args.get(2).cloned().unwrap_or_default();
            text.push_str(&format!("*{table}\n"));
            let mut k = 0;
            while k < commands.len() {
                // Inside one atomic transaction nothing sees the steps, so
                // a move's temporary copy is left out. It must be: nft
                // refuses to insert next to a rule the same transaction
                // deletes ("RULE_INSERT failed").
                let step = match commands.get(k..k + 4) {
                    Some(four) if is_temp_move(four) => {
                        k += 4;
                        &four[1..3]
                    }
                    _ => {
                        k += 1;
                        &commands[k - 1..k]
                    }
                };
                for c in step {
                    text.push_str(&crate::rule::restore_line(c.args.get(3..).unwrap_or(&[])));
                    text.push('\n');
                }
            }
            text.push_str("COMMIT\n");
            let args = ["--noflush", "--wait"].map(String::from).to_vec();
            (system.tool(family, "-restore"), args, text)
        }
        Program::Ipset => {
            for c in commands {
                text.push_str(&crate::rule::restore_line(&c.args));
                text.push('\n');
            }
            let args = ["restore", "-exist"].map(String::from).to_vec();
            ("ipset".to_string(), args, text)
        }
    }
}

/// True for the four commands of the spec's temp-rule trick, moving a rule
/// up: `-I C N temp`, `-D C rule`, `-I C N rule`, `-D C temp`, where the
/// second insert lands exactly where the copy stood. Without the copy, the
/// middle two alone give the same chain.
fn is_temp_move(four: &[&Command]) -> bool {
    let parts = |c: &Command| -> Option<(String, String, Option<String>, Rule)> {
        let a = &c.args;
        let (op, chain) = (a.get(3)?.clone(), a.get(4)?.clone());
        let numbered = a.get(5).filter(|n| n.parse::<usize>().is_ok()).cloned();
        let rest = if op == "-I" || numbered.is_some() && op == "-D" {
            a.get(6..)?
        } else {
            a.get(5..)?
        };
        Some((op, chain, numbered, Rule::from_args(rest.to_vec())))
    };
    let (Some(a), Some(b), Some(c), Some(d)) = (
        parts(four[0]),
        parts(four[1]),
        parts(four[2]),
        parts(four[3]),
    ) else {
        return false;
    };
    let same_chain = [&b.1, &c.1, &d.1].iter().all(|ch| **ch == a.1);
    a.0 == "-I"
        && b.0 == "-D"
        && c.0 == "-I"
        && d.0 == "-D"
        && same_chain
        && b.2.is_none()
        && d.2.is_none()
        && a.2.is_some()
        && a.2 == c.2
        && a.3.is_temp()
        && a.3.temp_base().as_ref() == Some(&c.3)
        && b.3 == c.3
        && d.3 == a.3
}

/// Scratch chains are named this plus the pid of the pyfw that made them.
pub const SCRATCH_PREFIX: &str = "_pyfw_canon_";

/// Groups checks by family and table, keeping their order, as indexes.
fn batches(checks: &[RuleCheck]) -> Vec<(Family, &str, Vec<usize>)> {
    let mut out: Vec<(Family, &str, Vec<usize>)> = Vec::new();
    for (i, c) in checks.iter().enumerate() {
        match out
            .iter_mut()
            .find(|(f, t, _)| *f == c.family && *t == c.table)
        {
            Some((_, _, batch)) => batch.push(i),
            None => out.push((c.family, c.table.as_str(), vec![i])),
        }
    }
    out
}

/// What a finished process printed.
pub struct Output {
    pub stdout: String,
    pub stderr: String,
}

impl System {
    /// Runs `program args` with optional input and returns what it printed,
    /// or an error when it fails, hangs or cannot start.
    pub fn exec(
        &self,
        program: &str,
        args: &[String],
        input: Option<&str>,
    ) -> Result<Output, Error> {
        let command = format!("{program} {}", crate::rule::display_args(args));
        let spawn_err = |source| Error::Spawn {
            command: command.clone(),
            source,
        };
        let mut child = std::process::Command::new(program)
            .args(args)
            .env("LC_ALL", "C")
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_err)?;
        let writer = input.and_then(|text| {
            let mut stdin = child.stdin.take()?;
            let text = text.to_string();
            // A tool that exits early closes the pipe; its own error says why.
            Some(std::thread::spawn(move || {
                let _ = stdin.write_all(text.as_bytes());
            }))
        });
        let stdout = drain(child.stdout.take());
        let stderr = drain(child.stderr.take());
        let status = match child.wait_timeout(self.timeout).map_err(spawn_err)? {
            Some(status) => status,
            None => {
                kill(&mut child);
                return Err(Error::Timeout {
                    command,
                    timeout: self.timeout,
                });
            }
        };
        if let Some(w) = writer {
            let _ = w.join();
        }
        let stdout = stdout.join().unwrap_or_default();
        let stderr = stderr.join().unwrap_or_default();
        if !status.success() {
            return Err(Error::Failed {
                command,
                status: status.to_string(),
                stderr: stderr.trim().to_string(),
            });
        }
        Ok(Output { stdout, stderr })
    }

    /// `iptables`, `iptables-legacy-save`, `ip6tables-nft-restore`, ...
    fn tool(&self, family: Family, suffix: &str) -> String {
        match family {
            Family::V4 => format!("{}{suffix}", self.v4),
            Family::V6 => format!("{}{suffix}", self.v6),
        }
    }

    /// Picks the iptables variant. `Auto` follows the heuristics of
    /// Kubernetes' iptables-wrapper and Calico: the variant holding more
    /// rules wins, and legacy is only probed when its modules are already
    /// loaded (`/proc/net/ip_tables_names`), since probing would load them.
    pub fn with_variant(mut self, variant: Variant) -> Result<(System, Vec<String>), Error> {
        let mut warnings = Vec::new();
        let chosen = match variant {
            Variant::Nft => "nft",
            Variant::Legacy => "legacy",
            Variant::Auto => {
                let count = |s: &System, prog: &str| -> usize {
                    s.exec(prog, &[], None)
                        .map(|o| o.stdout.lines().filter(|l| l.starts_with("-A ")).count())
                        .unwrap_or(0)
                };
                let nft = count(&self, "iptables-nft-save") + count(&self, "ip6tables-nft-save");
                let legacy_loaded = ["/proc/net/ip_tables_names", "/proc/net/ip6_tables_names"]
                    .iter()
                    .any(|p| std::fs::read_to_string(p).is_ok_and(|t| !t.trim().is_empty()));
                let legacy = if legacy_loaded {
                    count(&self, "iptables-legacy-save") + count(&self, "ip6tables-legacy-save")
                } else {
                    0
                };
                if nft > 0 && legacy > 0 {
                    warnings.push(format!(
                        "both iptables variants hold rules (nft: {nft}, legacy: {legacy}); \
                         using {}. Pass --backend to choose.",
                        if legacy > nft { "legacy" } else { "nft" }
                    ));
                }
                if legacy > nft {
                    "legacy"
                } else if nft > 0 {
                    "nft"
                } else {
                    // Nothing anywhere: use what `iptables` itself is.
                    ""
                }
            }
        };
        // Keep the plain name when it already is the chosen variant, so
        // that output reads as the spec's `iptables -w ...`.
        let plain_is = self
            .exec("iptables", &["--version".to_string()], None)
            .map(|o| {
                let v = o.stdout;
                if v.contains("nf_tables") {
                    "nft"
                } else {
                    "legacy"
                }
            })
            .unwrap_or("");
        if !chosen.is_empty() && plain_is != chosen {
            self.v4 = format!("iptables-{chosen}");
            self.v6 = format!("ip6tables-{chosen}");
        }
        self.nft = match chosen {
            "" => plain_is != "legacy",
            other => other == "nft",
        };
        Ok((self, warnings))
    }

    /// Loads `rules` (chain, rule) into `table` in one `iptables-restore
    /// --noflush` transaction, declaring `chains` first. A rule iptables
    /// refuses fails the whole transaction, reported by the rule's label.
    fn restore_rules(
        &self,
        family: Family,
        table: &str,
        chains: &[&str],
        rules: &[(&str, &RuleCheck)],
        extra: &[&str],
    ) -> Result<(), Error> {
        let mut text = format!("*{table}\n");
        let mut labels: Vec<Option<&str>> = vec![None];
        for chain in chains {
            text.push_str(&format!(":{chain} - [0:0]\n"));
            labels.push(None);
        }
        for (chain, check) in rules {
            let args = [
                vec!["-A".to_string(), chain.to_string()],
                check.rule.args().to_vec(),
            ]
            .concat();
            text.push_str(&crate::rule::restore_line(&args));
            text.push('\n');
            labels.push(Some(check.label.as_str()));
        }
        text.push_str("COMMIT\n");
        let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        args.extend(["--noflush", "--wait"].map(String::from));
        let Err(e) = self.exec(&self.tool(family, "-restore"), &args, Some(&text)) else {
            return Ok(());
        };
        let Error::Failed { stderr, .. } = &e else {
            return Err(e);
        };
        let label = restore_error_line(stderr)
            .and_then(|n| n.checked_sub(1))
            .and_then(|i| labels.get(i).copied().flatten());
        let message = stderr
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .to_string();
        Err(match label {
            Some(label) => Error::Rejected {
                label: label.to_string(),
                message,
            },
            None => e,
        })
    }

    fn drop_scratch(&self, family: Family, table: &str, chain: &str) -> Result<(), Error> {
        let text = format!("*{table}\n-F {chain}\n-X {chain}\nCOMMIT\n");
        let args = ["--noflush", "--wait"].map(String::from);
        self.exec(&self.tool(family, "-restore"), &args, Some(&text))
            .map(|_| ())
    }

    fn save(&self, family: Family, table: Option<&str>) -> Result<state::Ruleset, Error> {
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
        state::parse_iptables_save(&text).map_err(|source| Error::Parse {
            command: program,
            source,
        })
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
        for (table, chain) in chains {
            if whole.contains(table.as_str()) {
                continue;
            }
            let args = ["-w", "-t", table.as_str(), "-S", chain.as_str()].map(String::from);
            let out = match self.exec(&self.tool(family, ""), &args, None) {
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
            let parsed =
                state::parse_chain_listing(&out.stdout, chain).map_err(|source| Error::Parse {
                    command: format!("{} -t {table} -S {chain}", self.tool(family, "")),
                    source,
                })?;
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

    /// `ipset save [NAME]`; `None` when the named set does not exist.
    fn ipset_save(
        &self,
        name: Option<&str>,
    ) -> Result<Option<std::collections::BTreeMap<String, state::Ipset>>, Error> {
        let mut args = vec!["save".to_string()];
        args.extend(name.map(String::from));
        let out = match self.exec("ipset", &args, None) {
            Ok(out) => out,
            Err(Error::Failed { stderr, .. })
                if name.is_some() && stderr.contains("does not exist") =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        state::parse_ipset_save(&out.stdout)
            .map(Some)
            .map_err(|source| Error::Parse {
                command: format!("ipset {}", args.join(" ")),
                source,
            })
    }
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
}

impl Backend for System {
    fn read_state(&mut self, scope: Scope) -> Result<State, Error> {
        let mut state = State::default();
        for family in [Family::V4, Family::V6] {
            let ruleset = match &scope.rules(family) {
                Rules::Skip => continue,
                Rules::All => self.save(family, None)?,
                Rules::Tables(tables) => {
                    let mut rs = state::Ruleset::default();
                    for t in tables {
                        rs.tables.extend(self.save(family, Some(t))?.tables);
                    }
                    rs
                }
                // Legacy returns a whole table for any read: one save per
                // table is its cheapest. nft reads a chain alone.
                Rules::Chains(chains) if !self.nft => {
                    let tables: BTreeSet<&String> = chains.iter().map(|(t, _)| t).collect();
                    let mut rs = state::Ruleset::default();
                    for t in tables {
                        rs.tables.extend(self.save(family, Some(t))?.tables);
                    }
                    rs
                }
                Rules::Chains(chains) => self.list_chains(family, chains)?,
            };
            match family {
                Family::V4 => state.v4 = ruleset,
                Family::V6 => state.v6 = ruleset,
            }
        }
        match &scope.sets {
            Sets::Skip => {}
            Sets::All => state.ipsets = self.ipset_save(None)?.unwrap_or_default(),
            Sets::Named(names) => {
                for name in names {
                    if let Some(sets) = self.ipset_save(Some(name))? {
                        state.ipsets.extend(sets);
                    }
                }
            }
        }
        Ok(state)
    }

    fn check_rules(&mut self, checks: &[RuleCheck]) -> Result<(), Error> {
        for (family, table, batch) in batches(checks) {
            // `--test` parses and checks the whole transaction without
            // committing it, so declaring chains here creates nothing.
            let batch: Vec<&RuleCheck> = batch.iter().map(|&i| &checks[i]).collect();
            let mut declared = std::collections::HashSet::new();
            let chains: Vec<&str> = batch
                .iter()
                .flat_map(|c| c.creates.iter())
                .filter(|c| declared.insert(c.as_str()))
                .map(String::as_str)
                .collect();
            let rules: Vec<(&str, &RuleCheck)> =
                batch.iter().map(|c| (c.chain.as_str(), *c)).collect();
            self.restore_rules(family, table, &chains, &rules, &["--test"])?;
        }
        Ok(())
    }

    fn canonicalize(&mut self, rules: &[RuleCheck]) -> Result<Vec<Rule>, Error> {
        let mut learned: Vec<Rule> = rules.iter().map(|r| r.rule.clone()).collect();
        // One scratch chain per process: two pyfw processes never collide,
        // and no hook jumps to it, so its rules never see a packet.
        let scratch = format!("{SCRATCH_PREFIX}{}", std::process::id());
        for (family, table, batch) in batches(rules) {
            let lines: Vec<(&str, &RuleCheck)> = batch
                .iter()
                .map(|&i| (scratch.as_str(), &rules[i]))
                .collect();
            self.restore_rules(family, table, &[scratch.as_str()], &lines, &[])?;
            let read = self.exec(
                &self.tool(family, ""),
                &["-w", "-t", table, "-S", &scratch].map(String::from),
                None,
            );
            // Remove the scratch chain whatever the read said.
            let cleanup = self.drop_scratch(family, table, &scratch);
            let out = read?;
            cleanup?;
            let prefix = format!("-A {scratch} ");
            let printed: Vec<Rule> = out
                .stdout
                .lines()
                .filter_map(|l| l.strip_prefix(&prefix))
                .filter_map(shlex::split)
                .map(Rule::from_args)
                .collect();
            if printed.len() != batch.len() {
                return Err(Error::Failed {
                    command: format!("{} -S {scratch}", self.tool(family, "")),
                    status: "unexpected output".into(),
                    stderr: format!("read back {} rules, wrote {}", printed.len(), batch.len()),
                });
            }
            for (&i, rule) in batch.iter().zip(printed) {
                learned[i] = rule;
            }
        }
        Ok(learned)
    }

    fn drop_chain(&mut self, family: Family, table: &str, chain: &str) -> Result<(), Error> {
        self.drop_scratch(family, table, chain)
    }

    fn run(&mut self, command: &Command) -> Result<(), Error> {
        self.exec(&self.binary(command.program), &command.args, None)
            .map(|_| ())
    }

    fn run_batch(&mut self, commands: &[&Command]) -> Result<(), BatchError> {
        let Some(first) = commands.first() else {
            return Ok(());
        };
        if commands.len() == 1 {
            return self
                .run(first)
                .map_err(|cause| BatchError { applied: 0, cause });
        }
        let (program, args, text) = batch_input(self, commands);
        let Err(cause) = self.exec(&program, &args, Some(&text)) else {
            return Ok(());
        };
        let applied = match (&first.program, &cause) {
            // One transaction: nothing took effect.
            (Program::Iptables(_), _) => 0,
            // ipset restore stops at the failing line.
            (Program::Ipset, Error::Failed { stderr, .. }) => stderr
                .split("Error in line ")
                .nth(1)
                .and_then(|r| r.split(':').next())
                .and_then(|n| n.trim().parse::<usize>().ok())
                .map_or(0, |n| n.saturating_sub(1)),
            (Program::Ipset, _) => 0,
        };
        Err(BatchError { applied, cause })
    }

    fn batch_line(&self, commands: &[&Command]) -> String {
        match commands {
            [] => String::new(),
            [one] => format!("{} (a single command)", self.binary(one.program)),
            _ => {
                let (program, args, _) = batch_input(self, commands);
                format!("{program} {}", args.join(" "))
            }
        }
    }

    /// The variant's binary: `iptables`, or `iptables-legacy` where plain
    /// `iptables` is the other variant.
    fn binary(&self, program: Program) -> String {
        match program {
            Program::Iptables(f) => self.tool(f, ""),
            Program::Ipset => "ipset".to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_restore_error_formats() {
        assert_eq!(
            restore_error_line(
                "iptables-restore v1.8.9 (nf_tables): unknown option\nError occurred at line: 3\nTry"
            ),
            Some(3)
        );
        assert_eq!(
            restore_error_line("iptables-restore: line 5 failed"),
            Some(5)
        );
        assert_eq!(restore_error_line("something else"), None);
    }
}
