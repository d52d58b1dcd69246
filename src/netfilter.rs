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

    /// Whether this reads nothing.
    pub fn is_empty(&self) -> bool {
        self.v4 == Rules::Skip && self.v6 == Rules::Skip && self.sets == Sets::Skip
    }

    /// What this asks for that `had` did not read. Chains and sets are
    /// subtracted by name; whole tables, or everything, are asked for
    /// again unless `had` read exactly that (or everything).
    pub fn beyond(&self, had: &Scope) -> Scope {
        let rules = |want: &Rules, had: &Rules| match (want, had) {
            (Rules::Skip, _) | (_, Rules::All) => Rules::Skip,
            (want, had) if want == had => Rules::Skip,
            (Rules::Chains(want), Rules::Chains(had)) => {
                rest(want, had).map_or(Rules::Skip, Rules::Chains)
            }
            (want, _) => want.clone(),
        };
        let sets = match (&self.sets, &had.sets) {
            (Sets::Skip, _) | (_, Sets::All) => Sets::Skip,
            (Sets::Named(want), Sets::Named(had)) => {
                rest(want, had).map_or(Sets::Skip, Sets::Named)
            }
            (want, _) => want.clone(),
        };
        Scope {
            v4: rules(&self.v4, &had.v4),
            v6: rules(&self.v6, &had.v6),
            sets,
        }
    }

    /// What two reads read together, when that is a scope: chains with
    /// chains, sets with sets (`None` for whole tables beside single
    /// chains, which no scope says).
    pub fn union(&self, other: &Scope) -> Option<Scope> {
        let rules = |a: &Rules, b: &Rules| match (a, b) {
            (Rules::All, _) | (_, Rules::All) => Some(Rules::All),
            (Rules::Skip, x) | (x, Rules::Skip) => Some(x.clone()),
            (Rules::Chains(a), Rules::Chains(b)) => Some(Rules::Chains(a | b)),
            (Rules::Tables(a), Rules::Tables(b)) => Some(Rules::Tables(a | b)),
            _ => None,
        };
        let sets = match (&self.sets, &other.sets) {
            (Sets::All, _) | (_, Sets::All) => Sets::All,
            (Sets::Skip, x) | (x, Sets::Skip) => x.clone(),
            (Sets::Named(a), Sets::Named(b)) => Sets::Named(a | b),
        };
        Some(Scope {
            v4: rules(&self.v4, &other.v4)?,
            v6: rules(&self.v6, &other.v6)?,
            sets,
        })
    }
}

/// The names in `want` that are not in `had`; `None` when there are none.
fn rest<T: Ord + Clone>(want: &BTreeSet<T>, had: &BTreeSet<T>) -> Option<BTreeSet<T>> {
    let rest: BTreeSet<T> = want.difference(had).cloned().collect();
    (!rest.is_empty()).then_some(rest)
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
    #[error("`{command}` did not finish within {timeout:?}; killed it{detail}")]
    Timeout {
        command: String,
        timeout: Duration,
        /// What it had printed on stderr by then, and whether the xtables
        /// lock was held (`; ...`, or empty).
        detail: String,
    },
    #[error(
        "`{command}` printed more than {limit} bytes; refusing to read it (set \
         PYFW_MAX_OUTPUT to raise the limit)"
    )]
    TooLarge { command: String, limit: usize },
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
    /// [`Error::Rejected`] naming it, and nothing is left behind. `host` is
    /// the state just read: the sets and chains the rules name, as they are.
    fn canonicalize(&mut self, rules: &[RuleCheck], host: &State) -> Result<Vec<Rule>, Error>;
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

/// A set as `ipset list -terse` shows it: no members, only their count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetSummary {
    pub kind: String,
    /// Create options, as `ipset save` prints them.
    pub options: Vec<String>,
    pub members: usize,
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

/// How long one kernel tool may run: `PYFW_COMMAND_TIMEOUT` (`30s`,
/// `500ms`), 30 s by default.
pub const COMMAND_TIMEOUT_ENV: &str = "PYFW_COMMAND_TIMEOUT";
/// How many bytes one kernel tool may print on stdout or stderr:
/// `PYFW_MAX_OUTPUT`, 256 MiB by default (a 50,000-rule chain is ~10 MiB).
pub const MAX_OUTPUT_ENV: &str = "PYFW_MAX_OUTPUT";
const DEFAULT_MAX_OUTPUT: usize = 256 << 20;

fn said(stderr: &str) -> String {
    match stderr.trim() {
        "" => String::new(),
        text => format!(
            "; it said: {}",
            text.lines().take(3).collect::<Vec<_>>().join(" / ")
        ),
    }
}

/// For an iptables tool that timed out: whether another process holds the
/// xtables lock it waits for (`-w`, `--wait`; legacy iptables).
fn xtables_lock_note(program: &str) -> String {
    if !program.contains("tables") {
        return String::new();
    }
    let path = std::env::var("XTABLES_LOCKFILE").unwrap_or_else(|_| "/run/xtables.lock".into());
    let Ok(file) = std::fs::File::open(&path) else {
        return String::new();
    };
    use std::os::fd::AsRawFd;
    // SAFETY: flock(2) on an open fd; a lock taken here is released at once
    // (closing the file releases it too).
    let held = unsafe {
        if libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 {
            libc::flock(file.as_raw_fd(), libc::LOCK_UN);
            false
        } else {
            std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock
        }
    };
    if held {
        format!(
            "; the xtables lock ({path}) is held by another process, and iptables waits for it \
             (see `fuser -v {path}`)"
        )
    } else {
        String::new()
    }
}

/// What [`LegacyCache::lookup`] found.
enum Lookup {
    /// The chains, unchanged since they were read.
    Hit(state::Table),
    /// Read them; keep the read with this ticket (`None`: cannot be kept,
    /// the network namespace being unknown).
    Miss(Option<Ticket>),
}

/// What a [`LegacyCache::lookup`] that missed knew, to keep with the read.
struct Ticket {
    key: (u64, Family, String),
    fingerprint: Option<u64>,
    quiet: Option<Quiet>,
}

impl LegacyCache {
    /// The chains `wanted` of a legacy table, from the cache when the
    /// xtables lock stayed quiet or the fingerprint did not change;
    /// otherwise what the read that follows must be kept with.
    fn lookup(&self, family: Family, table: &str, wanted: &BTreeSet<String>) -> Lookup {
        let Some(ns) = netns_id() else {
            return Lookup::Miss(None);
        };
        let key = (ns, family, table.to_string());
        // The lock's count first: a close counted after it makes the next
        // poll look again.
        let closes = self.lock.as_ref().and_then(|l| l.closes());
        let checked_at = std::time::Instant::now();
        let summary = closes.and_then(|_| {
            crate::fingerprint::legacy_summary(family, table)
                .inspect_err(|e| tracing::debug!("no summary of {family:?} {table}: {e}"))
                .ok()
                .flatten()
        });
        let quiet = closes.zip(summary).map(|(closes, summary)| Quiet {
            closes,
            summary,
            since: checked_at,
        });
        if let Some(t) = quiet.and_then(|q| self.quiet_hit(&key, &q, wanted)) {
            return Lookup::Hit(t);
        }
        let fingerprint = crate::fingerprint::legacy_table(family, table)
            .inspect_err(|e| tracing::debug!("no fingerprint of {family:?} {table}: {e}"))
            .ok()
            .flatten();
        // The lock's next check may use it (see `xtlock::Release`).
        if let (Some(lock), Some(closes), Some(fp)) = (&self.lock, closes, fingerprint) {
            lock.fingerprinted(ns, family, table, closes, fp);
        }
        if let Some(t) = fingerprint.and_then(|fp| self.hit(&key, fp, wanted, quiet)) {
            return Lookup::Hit(t);
        }
        Lookup::Miss(Some(Ticket {
            key,
            fingerprint,
            quiet,
        }))
    }

    /// Keeps what was just read after `ticket`'s lookup missed (`None`:
    /// the table holds none of the chains); without a fingerprint, nothing.
    fn remember(&self, ticket: Ticket, chains: BTreeSet<String>, table: Option<state::Table>) {
        match ticket.fingerprint {
            Some(fp) => self.store(ticket.key, fp, chains, table, ticket.quiet),
            None => self.forget(&ticket.key),
        }
    }

    /// The chains `wanted` of a table, if they were all read when the
    /// table had this fingerprint, and the entry is not due a re-read.
    /// A hit also starts the table's quiet trust again with `quiet`.
    fn hit(
        &self,
        key: &(u64, Family, String),
        fp: u64,
        wanted: &BTreeSet<String>,
        quiet: Option<Quiet>,
    ) -> Option<state::Table> {
        let mut map = self.tables.lock().ok()?;
        let entry = map.get_mut(key)?;
        if entry.fingerprint != fp
            || entry.read_at.elapsed() >= LEGACY_REREAD_AFTER
            || !wanted.is_subset(&entry.chains)
        {
            return None;
        }
        entry.quiet = quiet;
        tracing::debug!(
            "{:?} {}: unchanged since it was read (fingerprint)",
            key.1,
            key.2
        );
        Some(entry.wanted(wanted))
    }

    /// The chains `wanted`, without a fingerprint, if the xtables lock has
    /// seen no close and the table's summary is the same (`now` has both
    /// as they are now) since a fingerprint found them unchanged less than
    /// [`crate::xtlock::TRUST_QUIET_FOR`] ago.
    fn quiet_hit(
        &self,
        key: &(u64, Family, String),
        now: &Quiet,
        wanted: &BTreeSet<String>,
    ) -> Option<state::Table> {
        let map = self.tables.lock().ok()?;
        let entry = map.get(key)?;
        let quiet = entry.quiet.as_ref()?;
        if quiet.closes != now.closes
            || quiet.summary != now.summary
            || quiet.since.elapsed() >= crate::xtlock::TRUST_QUIET_FOR
            || entry.read_at.elapsed() >= LEGACY_REREAD_AFTER
            || !wanted.is_subset(&entry.chains)
        {
            return None;
        }
        tracing::debug!(
            "{:?} {}: unchanged since it was read (the xtables lock stayed quiet)",
            key.1,
            key.2
        );
        Some(entry.wanted(wanted))
    }

    /// Keeps what was just read of a table (`None`: it holds none of the
    /// chains) with the fingerprint taken before the read.
    fn store(
        &self,
        key: (u64, Family, String),
        fp: u64,
        chains: BTreeSet<String>,
        table: Option<state::Table>,
        quiet: Option<Quiet>,
    ) {
        if let Ok(mut map) = self.tables.lock() {
            map.insert(
                key,
                CachedTable {
                    fingerprint: fp,
                    chains,
                    table: table.unwrap_or_default(),
                    read_at: std::time::Instant::now(),
                    quiet,
                },
            );
        }
    }

    /// pyfw ran an iptables tool itself: its release of the xtables lock
    /// may not be counted yet when the next poll looks, so no table is
    /// trusted on the lock's word until a fingerprint has been taken again.
    fn distrust(&self) {
        if let Ok(mut map) = self.tables.lock() {
            for entry in map.values_mut() {
                entry.quiet = None;
            }
        }
    }

    fn forget(&self, key: &(u64, Family, String)) {
        if let Ok(mut map) = self.tables.lock() {
            map.remove(key);
        }
    }
}

/// The real kernel tools, found on `PATH`.
#[derive(Clone, Debug)]
pub struct System {
    pub timeout: Duration,
    /// Most bytes read from one tool's stdout (and stderr).
    pub max_output: usize,
    /// Binary prefix per family: `iptables`, `iptables-legacy`, ...
    v4: String,
    v6: String,
    /// Whether the variant is nft, where reading one chain is cheap.
    nft: bool,
    /// Legacy chains last read, kept with their table's fingerprint; only
    /// for a long-running reader (see [`System::remember_legacy_reads`]).
    legacy_cache: Option<LegacyCache>,
    /// `XTABLES_LOCKFILE` for pyfw's iptables runs while pyfw holds the
    /// host's xtables lock itself (see [`crate::xtlock::Held`]).
    own_lockfile: Option<std::path::PathBuf>,
}

/// On legacy, any read copies the whole table out of the kernel: with a
/// 50,000-rule table, 0.1 s of CPU per chain read, every poll, and more to
/// parse. A table's fingerprint ([`crate::fingerprint`]) costs most of one
/// such copy (0.07 s: the kernel's copy is the floor) but nothing else, and
/// changes with any rule, order or policy change (never with counters), so
/// a poll reads a table's chains again only when it changed, and in any
/// case after [`LEGACY_REREAD_AFTER`], as a safety net. Only the
/// chains asked for are kept, so memory stays small. A clone starts empty,
/// and each entry names the network namespace it was read in.
///
/// When the daemon follows the xtables lock ([`crate::xtlock`]), a poll
/// that finds no close of the lock since a table's last fingerprint, and the
/// table's summary as it was then, skips even the fingerprint, for at most
/// [`crate::xtlock::TRUST_QUIET_FOR`] after it.
#[derive(Debug, Default)]
struct LegacyCache {
    tables: std::sync::Mutex<std::collections::HashMap<(u64, Family, String), CachedTable>>,
    lock: Option<crate::xtlock::LockWatch>,
}

impl Clone for LegacyCache {
    fn clone(&self) -> Self {
        LegacyCache {
            tables: Default::default(),
            lock: self.lock.clone(),
        }
    }
}

/// What a table's quiet trust rests on: the xtables lock's close count and
/// the table's summary, both taken before the fingerprint that found the
/// chains unchanged, and when.
#[derive(Clone, Copy, Debug)]
struct Quiet {
    closes: u64,
    summary: crate::fingerprint::TableInfo,
    since: std::time::Instant,
}

#[derive(Debug)]
struct CachedTable {
    /// The table's fingerprint, taken before it was read.
    fingerprint: u64,
    /// The chains read, as read (a chain absent here did not exist).
    chains: BTreeSet<String>,
    table: state::Table,
    /// When it was read.
    read_at: std::time::Instant,
    /// While the xtables lock is followed: see [`Quiet`].
    quiet: Option<Quiet>,
}

impl CachedTable {
    fn wanted(&self, wanted: &BTreeSet<String>) -> state::Table {
        let chains = self
            .table
            .chains
            .iter()
            .filter(|(name, _)| wanted.contains(name))
            .cloned()
            .collect();
        state::Table { chains }
    }
}

/// How long a legacy table's chains are answered from the cache before
/// they are read again whatever the fingerprint says: a safety net.
const LEGACY_REREAD_AFTER: Duration = Duration::from_secs(300);

/// The calling thread's network namespace, as its inode number.
pub(crate) fn netns_id() -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/thread-self/ns/net")
        .ok()
        .map(|m| m.ino())
}

impl Default for System {
    fn default() -> Self {
        let env = |key: &str| std::env::var(key).ok().filter(|v| !v.trim().is_empty());
        System {
            timeout: env(COMMAND_TIMEOUT_ENV)
                .and_then(|v| humantime::parse_duration(v.trim()).ok())
                .filter(|d| !d.is_zero())
                .unwrap_or(Duration::from_secs(30)),
            max_output: env(MAX_OUTPUT_ENV)
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(DEFAULT_MAX_OUTPUT),
            v4: "iptables".into(),
            v6: "ip6tables".into(),
            nft: true,
            legacy_cache: None,
            own_lockfile: None,
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

/// The program and arguments that run `commands` as one batch.
fn batch_program(system: &System, commands: &[&Command]) -> (String, Vec<String>) {
    match commands[0].program {
        Program::Iptables(family) => (
            system.tool(family, "-restore"),
            ["--noflush", "--wait"].map(String::from).to_vec(),
        ),
        Program::Ipset => (
            "ipset".to_string(),
            ["restore", "-exist"].map(String::from).to_vec(),
        ),
    }
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
            let (program, args) = batch_program(system, commands);
            (
                program,
                args,
                crate::ipset::RestoreScript::new(commands).text,
            )
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

/// On legacy, the most chains of one table read one by one (`iptables -S`)
/// rather than with one `iptables-save -t TABLE` of which pyfw parses only
/// those chains. Each legacy read copies the whole table out of the
/// kernel, and the xtables lock runs them one after the other: with a
/// 50,000-rule table one `-S` cost 0.09-0.12 s, one save 0.14 s.
const LEGACY_LIST_MAX: usize = 1;

/// Scratch chains are named this plus the pid of the pyfw that made them.
pub const SCRATCH_PREFIX: &str = "_pyfw_canon_";

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
    for line in save.lines() {
        let keep = if let Some(rest) = line.strip_prefix("-A ") {
            named(rest)
        } else if let Some(rest) = line.strip_prefix(':') {
            named(rest)
        } else {
            !line.starts_with('#')
        };
        if keep {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

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
    /// For a reader that polls, the daemon: on legacy, a table's chains are
    /// read again only when its fingerprint changed, and not even
    /// fingerprinted while `lock` saw no iptables run (see `LegacyCache`).
    /// A one-shot command gains nothing from it, and would pay a
    /// fingerprint per read.
    pub fn remember_legacy_reads(mut self, lock: Option<crate::xtlock::LockWatch>) -> Self {
        self.legacy_cache = Some(LegacyCache {
            tables: Default::default(),
            lock,
        });
        self
    }

    /// While pyfw holds the xtables lock, its own iptables runs take this
    /// lock file instead (`None` again once it lets go), or they would
    /// wait for pyfw.
    pub fn use_lockfile(&mut self, path: Option<&std::path::Path>) {
        self.own_lockfile = path.map(std::path::Path::to_path_buf);
    }

    /// Runs `program args` with optional input and returns what it printed,
    /// or an error when it fails, hangs or cannot start.
    pub fn exec(
        &self,
        program: &str,
        args: &[String],
        input: Option<&str>,
    ) -> Result<Output, Error> {
        let (mut stdout, stderr) = self.exec_into(program, args, input, Vec::new())?;
        // The buffer grew by doubling: a 15 MB save could hold 30 MB while
        // it is parsed. Shrinking a buffer that size moves pages, not bytes.
        stdout.shrink_to_fit();
        let stdout = String::from_utf8(stdout)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        Ok(Output { stdout, stderr })
    }

    /// [`System::exec`], with stdout handed to `sink` as it arrives rather
    /// than kept: the sink and stderr are returned.
    fn exec_into<S: Sink>(
        &self,
        program: &str,
        args: &[String],
        input: Option<&str>,
        sink: S,
    ) -> Result<(S, String), Error> {
        let command = format!("{program} {}", crate::rule::display_args(args));
        let spawn_err = |source: std::io::Error| Error::Spawn {
            command: command.clone(),
            source: match source.kind() {
                std::io::ErrorKind::NotFound => std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("{program} is not installed or not on PATH ({source})"),
                ),
                _ => source,
            },
        };
        let mut child = std::process::Command::new(program);
        if let Some(lockfile) = self
            .own_lockfile
            .as_ref()
            .filter(|_| program.contains("tables"))
        {
            child.env("XTABLES_LOCKFILE", lockfile);
        }
        let mut child = child
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
        let _mark = ChildMark::new(child.id());
        if program.contains("tables")
            && let Some(cache) = &self.legacy_cache
        {
            cache.distrust();
        }
        // Threads feed and drain the pipes. Where the system gives no
        // thread (a TasksMax limit), the tool is killed and that is the
        // error: never a panic.
        let no_thread = |child: &mut Child, e: std::io::Error| {
            kill(child);
            Error::Spawn {
                command: command.clone(),
                source: std::io::Error::new(e.kind(), format!("no thread for its pipes: {e}")),
            }
        };
        let writer = match (input, child.stdin.take()) {
            (Some(text), Some(mut stdin)) => {
                let text = text.to_string();
                // A tool that exits early closes the pipe; its own error says why.
                let spawned =
                    std::thread::Builder::new()
                        .name("pyfw-stdin".into())
                        .spawn(move || {
                            let _ = stdin.write_all(text.as_bytes());
                        });
                Some(spawned.map_err(|e| no_thread(&mut child, e))?)
            }
            _ => None,
        };
        let stdout = drain(child.stdout.take(), self.max_output, sink)
            .map_err(|e| no_thread(&mut child, e))?;
        let stderr = drain(child.stderr.take(), self.max_output, Vec::new())
            .map_err(|e| no_thread(&mut child, e))?;
        let status = match child.wait_timeout(self.timeout).map_err(spawn_err)? {
            Some(status) => status,
            None => {
                kill(&mut child);
                // What it said may name the cause; do not wait long for it.
                let deadline = std::time::Instant::now() + Duration::from_millis(500);
                while !stderr.is_finished() && std::time::Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
                let stderr = match stderr.is_finished() {
                    true => stderr.join().map(|(s, _)| lossy(&s)).unwrap_or_default(),
                    false => String::new(),
                };
                return Err(Error::Timeout {
                    detail: format!("{}{}", said(&stderr), xtables_lock_note(program)),
                    command,
                    timeout: self.timeout,
                });
            }
        };
        if let Some(w) = writer {
            let _ = w.join();
        }
        let panicked = || Error::Spawn {
            command: command.clone(),
            source: std::io::Error::other("the thread reading its output panicked"),
        };
        let (stdout, too_large) = stdout.join().map_err(|_| panicked())?;
        let stderr = stderr.join().map(|(s, _)| lossy(&s)).unwrap_or_default();
        if too_large {
            return Err(Error::TooLarge {
                command,
                limit: self.max_output,
            });
        }
        if !status.success() {
            return Err(Error::Failed {
                command,
                status: status.to_string(),
                stderr: stderr.trim().to_string(),
            });
        }
        Ok((stdout, stderr))
    }

    /// `iptables`, `iptables-legacy-save`, `ip6tables-nft-restore`, ...
    /// Whether this drives iptables-nft, whose changes the kernel announces
    /// (see `daemon::events`); legacy iptables changes are silent.
    pub fn is_nft(&self) -> bool {
        self.nft
    }

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
                let legacy_loaded = ["/proc/net/ip_tables_names", "/proc/net/ip6_tables_names"]
                    .iter()
                    .any(|p| std::fs::read_to_string(p).is_ok_and(|t| !t.trim().is_empty()));
                // Legacy holds nothing and `iptables` is nft: nft it is,
                // without counting (a full `iptables-nft-save` of a
                // 50,000-rule host takes seconds).
                let plain_nft = || self.plain_variant() == "nft";
                let nft = if !legacy_loaded && plain_nft() {
                    1
                } else {
                    count(&self, "iptables-nft-save") + count(&self, "ip6tables-nft-save")
                };
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
        let plain_is = self.plain_variant();
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

    /// Which variant plain `iptables` is: `nft`, `legacy`, or `""` when it
    /// cannot be run. Read from where its symlinks lead (Debian's
    /// alternatives end at `xtables-nft-multi` or `xtables-legacy-multi`),
    /// which costs no process; else from `iptables --version`.
    fn plain_variant(&self) -> &'static str {
        let found = std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("iptables"))
                .find(|p| p.is_file())
        });
        let target = found.and_then(|p| std::fs::canonicalize(p).ok());
        match target.as_ref().and_then(|t| t.file_name()?.to_str()) {
            Some("xtables-nft-multi") => return "nft",
            Some("xtables-legacy-multi") => return "legacy",
            _ => {}
        }
        match self.exec("iptables", &["--version".to_string()], None) {
            Ok(o) if o.stdout.contains("nf_tables") => "nft",
            Ok(_) => "legacy",
            Err(_) => "",
        }
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
        let head: Vec<String> = chains.iter().map(|c| format!(":{c} - [0:0]")).collect();
        self.restore_lines(family, table, &head, rules, extra)
    }

    /// [`Self::restore_rules`] with the lines before the rules given as
    /// they are (chain declarations, `-N CHAIN`).
    fn restore_lines(
        &self,
        family: Family,
        table: &str,
        head: &[String],
        rules: &[(&str, &RuleCheck)],
        extra: &[&str],
    ) -> Result<(), Error> {
        let mut text = format!("*{table}\n");
        let mut labels: Vec<Option<&str>> = vec![None];
        for line in head {
            text.push_str(line);
            text.push('\n');
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
        let Err(e) = self.exec(&self.tool(family, "-restore"), &args, Some(&text)) else {
            return Ok(());
        };
        // A scratch chain must not stay behind: try plain commands too.
        let plain = |op: &str| {
            let args = ["-w", "-t", table, op, chain].map(String::from);
            self.exec(&self.tool(family, ""), &args, None)
        };
        match plain("-F").and_then(|_| plain("-X")) {
            Ok(_) => Ok(()),
            Err(_) => Err(e),
        }
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
        let out = self.exec(&program, &["-t".into(), table.into()], None)?;
        if out.stderr.contains("incompatible") {
            // Let the full parse say what is wrong, as `save` does.
            return self.save(family, Some(table));
        }
        state::parse_iptables_save(&keep_chains(&out.stdout, wanted)).map_err(|source| {
            Error::Parse {
                command: format!("{program} -t {table}"),
                source,
            }
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

    /// Learns rule forms in a scratch chain of the real tables: load it
    /// (a commit), read it back, drop it (a commit).
    fn canonicalize_scratch(&self, rules: &[RuleCheck]) -> Result<Vec<Rule>, Error> {
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
            let read = self.read_scratch(family, table, &scratch, batch.len());
            // Remove the scratch chain whatever the read said.
            let cleanup = self.drop_scratch(family, table, &scratch);
            let printed = read?;
            cleanup?;
            for (&i, rule) in batch.iter().zip(printed) {
                learned[i] = rule;
            }
        }
        Ok(learned)
    }

    /// The rules of a scratch chain as iptables prints them; exactly
    /// `expected` of them.
    fn read_scratch(
        &self,
        family: Family,
        table: &str,
        scratch: &str,
        expected: usize,
    ) -> Result<Vec<Rule>, Error> {
        let out = self.exec(
            &self.tool(family, ""),
            &["-w", "-t", table, "-S", scratch].map(String::from),
            None,
        )?;
        let prefix = format!("-A {scratch} ");
        let printed: Vec<Rule> = out
            .stdout
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .filter_map(shlex::split)
            .map(Rule::from_args)
            .collect();
        if printed.len() != expected {
            return Err(Error::Failed {
                command: format!("{} -S {scratch}", self.tool(family, "")),
                status: "unexpected output".into(),
                stderr: format!("read back {} rules, wrote {expected}", printed.len()),
            });
        }
        Ok(printed)
    }

    /// Learns rule forms in a network namespace of a thread of its own
    /// (`unshare(CLONE_NEWNET)`), whose tables are empty: one commit and
    /// one read per table, each as cheap as on an empty host, and nothing
    /// to clean up (the namespace goes with the thread). The kernel and
    /// the tools are the same, so iptables prints each rule as it would in
    /// the real tables. The sets the rules name are created there (empty,
    /// with their real type and options) and the chains they jump to that
    /// pyfw read are created too, so that iptables accepts the rules for
    /// the same reasons it would on the host. A jump to a chain pyfw did
    /// not read (`DOCKER-USER`, `f2b-sshd`) fails there, and the caller
    /// then uses the scratch chain, as it does without CAP_SYS_ADMIN, which
    /// the systemd unit does not grant: correct either way, slower.
    fn canonicalize_private(&self, rules: &[RuleCheck], host: &State) -> Result<Vec<Rule>, Error> {
        let unshare_err = |source: std::io::Error| Error::Spawn {
            command: "unshare(CLONE_NEWNET)".into(),
            source,
        };
        let mut sets: Vec<String> = Vec::new();
        for name in rules.iter().flat_map(|r| r.rule.sets()) {
            let Some(set) = host.ipsets.get(name) else {
                return Err(unshare_err(std::io::Error::other(format!(
                    "set {name} is not known"
                ))));
            };
            let mut line = format!("create {name} {}", set.kind);
            for o in &set.options {
                line.push(' ');
                line.push_str(o);
            }
            if !sets.contains(&line) {
                sets.push(line);
            }
        }
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    // SAFETY: unshare(2) with CLONE_NEWNET changes the network
                    // namespace of the calling thread only (this one, which
                    // ends with this closure); the processes it starts
                    // inherit it.
                    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                        return Err(unshare_err(std::io::Error::last_os_error()));
                    }
                    if !sets.is_empty() {
                        let text = sets.iter().map(|l| format!("{l}\n")).collect::<String>();
                        self.exec("ipset", &["restore".to_string()], Some(&text))?;
                    }
                    let scratch = format!("{SCRATCH_PREFIX}{}", std::process::id());
                    let mut learned: Vec<Rule> = rules.iter().map(|r| r.rule.clone()).collect();
                    for (family, table, batch) in batches(rules) {
                        let builtin = state::builtin_chains(table);
                        let mut head = vec![format!(":{scratch} - [0:0]")];
                        for &i in &batch {
                            let Some(target) = rules[i].rule.target() else {
                                continue;
                            };
                            let exists = host
                                .ruleset(family)
                                .tables
                                .get(table)
                                .is_some_and(|t| t.chain(target).is_some());
                            let line = format!("-N {target}");
                            if exists && !builtin.contains(&target) && !head.contains(&line) {
                                head.push(line);
                            }
                        }
                        let lines: Vec<(&str, &RuleCheck)> = batch
                            .iter()
                            .map(|&i| (scratch.as_str(), &rules[i]))
                            .collect();
                        self.restore_lines(family, table, &head, &lines, &[])?;
                        let printed = self.read_scratch(family, table, &scratch, batch.len())?;
                        for (&i, rule) in batch.iter().zip(printed) {
                            learned[i] = rule;
                        }
                    }
                    Ok(learned)
                })
                .join()
                .unwrap_or_else(|_| {
                    Err(unshare_err(std::io::Error::other(
                        "the namespace thread failed",
                    )))
                })
        })
    }

    /// One family's rules in `scope`; `None` when it is not read.
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
            Rules::Chains(chains) => self.list_chains(family, chains)?,
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
        let field = |key: &str| {
            out.stdout
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(str::trim)
        };
        let bad = |what: &str| Error::Failed {
            command: format!("ipset {}", args.join(" ")),
            status: "unexpected output".into(),
            stderr: format!("no {what} in: {}", out.stdout.trim()),
        };
        let kind = field("Type:").ok_or_else(|| bad("Type"))?.to_string();
        let options = field("Header:")
            .unwrap_or("")
            .split_whitespace()
            .map(String::from)
            .collect();
        let members = field("Number of entries:")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| bad("Number of entries"))?;
        Ok(Some(SetSummary {
            kind,
            options,
            members,
        }))
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
        match reading.error {
            None => Ok(Some(reading.reader.finish())),
            Some(source) => Err(Error::Parse {
                command: format!("ipset {}", args.join(" ")),
                source,
            }),
        }
    }
}

/// The processes this pyfw started lately, so that the daemon can tell its
/// own netfilter changes from other programs': the kernel's change
/// notifications name the process that committed each change (see
/// `daemon::events`). Each is remembered while it runs and for
/// [`REMEMBER_CHILDREN`] after it ends.
static CHILDREN: std::sync::Mutex<Vec<(u32, Option<std::time::Instant>)>> =
    std::sync::Mutex::new(Vec::new());

/// How long a finished child is still recognised as pyfw's own.
pub const REMEMBER_CHILDREN: Duration = Duration::from_secs(10);

/// Marks a child as pyfw's from its start until the mark drops, after
/// which it is remembered for [`REMEMBER_CHILDREN`].
struct ChildMark(u32);

impl ChildMark {
    fn new(pid: u32) -> ChildMark {
        if let Ok(mut children) = CHILDREN.lock() {
            children.retain(|(_, end)| end.is_none_or(|e| e.elapsed() < REMEMBER_CHILDREN));
            children.push((pid, None));
        }
        ChildMark(pid)
    }
}

impl Drop for ChildMark {
    fn drop(&mut self) {
        if let Ok(mut children) = CHILDREN.lock() {
            for (pid, end) in children.iter_mut() {
                if *pid == self.0 && end.is_none() {
                    *end = Some(std::time::Instant::now());
                }
            }
        }
    }
}

/// True when `pid` is a process this pyfw started that runs, or ended
/// less than [`REMEMBER_CHILDREN`] ago.
pub fn started_here(pid: u32) -> bool {
    CHILDREN.lock().is_ok_and(|children| {
        children
            .iter()
            .any(|(p, end)| *p == pid && end.is_none_or(|e| e.elapsed() < REMEMBER_CHILDREN))
    })
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Where a tool's output goes, as it arrives, on the thread that drains
/// its pipe.
trait Sink: Send + 'static {
    fn feed(&mut self, bytes: &[u8]);
    /// The output has ended.
    fn end(&mut self) {}
}

/// Kept whole.
impl Sink for Vec<u8> {
    fn feed(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// What a tool printed, as text (bytes that are not UTF-8 replaced).
fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Reads a tool's output a line at a time; see [`Lines`].
trait OnLine: Send + 'static {
    fn line(&mut self, line: &str);
}

/// Hands each whole line to `T` as soon as it has arrived, split as
/// `str::lines` splits text, bytes that are not UTF-8 replaced. Reading a
/// 100,000-member `ipset save` this way overlaps with the tool's own
/// listing, which keeps the whole read and parse to the listing's time.
struct Lines<T> {
    partial: Vec<u8>,
    each: T,
}

impl<T> Lines<T> {
    fn new(each: T) -> Self {
        Lines {
            partial: Vec::new(),
            each,
        }
    }
}

impl<T: OnLine> Lines<T> {
    fn emit(each: &mut T, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        each.line(&String::from_utf8_lossy(line));
    }
}

impl<T: OnLine> Sink for Lines<T> {
    fn feed(&mut self, mut bytes: &[u8]) {
        while let Some(at) = bytes.iter().position(|&b| b == b'\n') {
            let (line, rest) = (&bytes[..at], &bytes[at + 1..]);
            if self.partial.is_empty() {
                Self::emit(&mut self.each, line);
            } else {
                self.partial.extend_from_slice(line);
                Self::emit(&mut self.each, &self.partial);
                self.partial.clear();
            }
            bytes = rest;
        }
        self.partial.extend_from_slice(bytes);
    }

    /// The last line, when it has no line break (nor is `\r` taken off).
    fn end(&mut self) {
        if !self.partial.is_empty() {
            self.each.line(&String::from_utf8_lossy(&self.partial));
            self.partial.clear();
        }
    }
}

/// Drains a pipe into `sink`, feeding it at most `limit` bytes; the flag
/// says whether there was more (the rest is read and dropped, so that the
/// tool is never blocked writing and its timeout still applies).
fn drain<R: Read + Send + 'static, S: Sink>(
    pipe: Option<R>,
    limit: usize,
    mut sink: S,
) -> std::io::Result<JoinHandle<(S, bool)>> {
    std::thread::Builder::new()
        .name("pyfw-drain".into())
        .spawn(move || {
            let mut over = false;
            if let Some(mut p) = pipe {
                let mut buf = vec![0; 64 << 10];
                let mut left = limit;
                loop {
                    match p.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            let keep = n.min(left);
                            sink.feed(&buf[..keep]);
                            left -= keep;
                            over |= keep < n;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                }
            }
            sink.end();
            (sink, over)
        })
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

/// At most this many reads run at once: each is a tool process with its
/// pipes and threads, and a wishes file may name hundreds of sets (one per
/// country), which must not exhaust the descriptors or tasks pyfw may have.
const READERS: usize = 4;

/// Runs the jobs on up to [`READERS`] threads (this one included) and
/// returns their results in order. A read is a tool process whose time goes
/// mostly to starting and to the kernel: two chains or two sets read side by
/// side take the time of one on a machine with two CPUs. Where the system
/// gives fewer threads, fewer work; a job that panics is an error.
fn parallel<T, F>(jobs: impl IntoIterator<Item = F>) -> Vec<Result<T, Error>>
where
    T: Send,
    F: FnOnce() -> Result<T, Error> + Send,
{
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let jobs: Vec<Mutex<Option<F>>> = jobs.into_iter().map(|j| Mutex::new(Some(j))).collect();
    let results: Vec<Mutex<Option<Result<T, Error>>>> =
        jobs.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let panicked = || Error::Spawn {
        command: "a reading thread".into(),
        source: std::io::Error::other("it panicked"),
    };
    let work = || {
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let (Some(slot), Some(out)) = (jobs.get(i), results.get(i)) else {
                break;
            };
            let Some(job) = slot.lock().ok().and_then(|mut j| j.take()) else {
                continue;
            };
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job))
                .unwrap_or_else(|_| Err(panicked()));
            if let Ok(mut out) = out.lock() {
                *out = Some(result);
            }
        }
    };
    let work = &work;
    std::thread::scope(|scope| {
        for _ in 1..READERS.min(jobs.len()) {
            let spawned = std::thread::Builder::new()
                .name("pyfw-read".into())
                .spawn_scoped(scope, work);
            if spawned.is_err() {
                break;
            }
        }
        work();
    });
    results
        .into_iter()
        .map(|r| {
            r.into_inner()
                .ok()
                .flatten()
                .unwrap_or_else(|| Err(panicked()))
        })
        .collect()
}

impl Backend for System {
    /// The families' rules and the sets are read side by side (see
    /// `parallel`).
    fn read_state(&mut self, scope: Scope) -> Result<State, Error> {
        let this = &*self;
        let scope = &scope;
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

    /// In a private network namespace when pyfw may make one (empty tables:
    /// on legacy every commit and read costs the size of the table, and a
    /// 50,000-rule table made this step three quarters of a second), else
    /// in a scratch chain of the real tables.
    fn canonicalize(&mut self, rules: &[RuleCheck], host: &State) -> Result<Vec<Rule>, Error> {
        if rules.is_empty() {
            return Ok(Vec::new());
        }
        match self.canonicalize_private(rules, host) {
            Ok(learned) => return Ok(learned),
            // Any failure, a refused rule included, is settled by the real
            // tables: they give the authoritative verdict.
            Err(e) => tracing::debug!(
                "cannot learn rule forms in a private network namespace ({e}); using a \
                 scratch chain"
            ),
        }
        self.canonicalize_scratch(rules)
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
            // ipset restore stops at the failing line; a set it was
            // filling under a temporary name never got its own name.
            (Program::Ipset, _) => {
                let line = match &cause {
                    Error::Failed { stderr, .. } => stderr
                        .split("Error in line ")
                        .nth(1)
                        .and_then(|r| r.split(':').next())
                        .and_then(|n| n.trim().parse::<usize>().ok()),
                    _ => None,
                };
                let script = crate::ipset::RestoreScript::new(commands);
                for tmp in script.leftovers(line) {
                    let _ = self.exec("ipset", &["-exist", "destroy", tmp].map(String::from), None);
                }
                line.map_or(0, |l| script.applied_before(l))
            }
        };
        Err(BatchError { applied, cause })
    }

    fn batch_line(&self, commands: &[&Command]) -> String {
        match commands {
            [] => String::new(),
            [one] => format!("{} (a single command)", self.binary(one.program)),
            _ => {
                let (program, args) = batch_program(self, commands);
                let fills = commands[0].program == Program::Ipset
                    && crate::ipset::RestoreScript::fills(commands);
                let note = match fills {
                    false => "",
                    true => " (a new set is filled under a temporary name, then renamed)",
                };
                format!("{program} {}{note}", args.join(" "))
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
    use proptest::prelude::*;

    struct Collect(Vec<String>);
    impl super::OnLine for Collect {
        fn line(&mut self, line: &str) {
            self.0.push(line.to_string());
        }
    }

    proptest! {
        /// However the pipe cuts the output, the lines are `str::lines`'s.
        #[test]
        fn lines_arrive_whole_wherever_the_reads_cut(
            text in "([a\\r\\nä€]{0,6}\\n){0,8}[ab\\ré]{0,3}",
            cuts in proptest::collection::vec(0usize..64, 0..6),
        ) {
            use super::Sink;
            let mut lines = super::Lines::new(Collect(Vec::new()));
            let bytes = text.as_bytes();
            let mut at = 0;
            for cut in cuts {
                let to = (at + cut).min(bytes.len());
                lines.feed(&bytes[at..to]);
                at = to;
            }
            lines.feed(&bytes[at..]);
            lines.end();
            let want: Vec<&str> = text.lines().collect();
            prop_assert_eq!(lines.each.0, want);
        }
    }

    #[test]
    fn a_big_save_is_read_as_it_arrives_and_its_first_bad_line_is_the_error() {
        use super::Sink;
        let mut text = String::from("create s hash:ip family inet\n");
        text.extend((0..3000).map(|i| format!("add s 10.0.{}.{}\n", i / 256, i % 256)));
        let mut reading = super::Lines::new(super::SaveReading {
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
        assert_eq!(sets["s"].members[2999], "10.0.11.183");
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
    }

    use super::*;

    /// Hundreds of reads (a set per country) run a few at a time, every
    /// result in its place; a job that panics is an error, not a crash.
    #[test]
    fn parallel_reads_are_bounded_and_ordered() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let running = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        let jobs = (0..300).map(|i| {
            let (running, most) = (&running, &most);
            move || {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(1));
                running.fetch_sub(1, Ordering::SeqCst);
                if i == 7 {
                    panic!("job 7 fails");
                }
                Ok(i)
            }
        });
        let out = parallel(jobs);
        assert_eq!(out.len(), 300);
        for (i, r) in out.iter().enumerate() {
            match (i, r) {
                (7, Err(e)) => assert!(e.to_string().contains("panicked"), "{e}"),
                (_, Ok(v)) => assert_eq!(*v, i),
                (_, other) => panic!("job {i}: {other:?}"),
            }
        }
        let most = most.load(Ordering::SeqCst);
        assert!((1..=READERS).contains(&most), "{most} at once");
        assert!(parallel(std::iter::empty::<fn() -> Result<(), Error>>()).is_empty());
    }

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
