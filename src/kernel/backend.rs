//! The I/O edge as a trait: what pyfw asks of the kernel tools, so that
//! tests can script a fake kernel and the planner never sees a process.

use std::time::Duration;

use crate::kernel::scope::Scope;
use crate::plan::{Command, Program};
use crate::state::rule::Rule;
use crate::state::text::escape_untrusted;
use crate::state::{self, Family, State};
use crate::wishes::nft::NftFamily;

/// Scratch chains are named this plus the pid of the pyfw that made them.
pub const SCRATCH_PREFIX: &str = "_pyfw_canon_";

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
    /// It names a set or chain that only the plan creates: the real tables
    /// cannot load it before the plan ran (a private namespace can).
    pub later: bool,
}

impl RuleCheck {
    /// This rule refused with `message`.
    pub fn rejection(&self, message: &str) -> Rejection {
        Rejection {
            label: self.label.clone(),
            message: message.to_string(),
        }
    }
}

/// A wish the kernel tools refuse, in words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// `table/chain/NAME`, `ip6tables:table/chain/NAME`.
    pub label: String,
    pub message: String,
}

/// How iptables prints a rule, and what that form does when loaded again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Learned {
    /// What pyfw compares the kernel's rules with.
    pub printed: Rule,
    pub form: Form,
}

/// What the printed form of a rule loads back as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Form {
    /// The same rule, printed the same.
    Stable,
    /// A rule printed otherwise: this.
    Reloads(Rule),
    /// Another rule than the one wished: reading the rules back cannot
    /// tell the wish from it.
    Lossy,
    /// Nothing: iptables refuses it, with these words.
    Unloadable(String),
}

/// A set as it is created: what a private namespace needs to create a
/// wished set the host does not have yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetShape {
    pub name: String,
    pub kind: String,
    pub options: Vec<String>,
}

/// How to list a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listing {
    /// `nft -j list table`: what pyfw compares.
    Json,
    /// `nft -s list table`: text that `nft -f` loads back as it was (JSON
    /// does not always: docs/nftables.md), without counter values: what a
    /// rollback puts back.
    Text,
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
    /// `stderr` is the tool's words as printed; shown escaped, on one line.
    #[error("`{command}` failed ({status}): {}", escape_untrusted(.stderr))]
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
    /// A read that must print a header (`*TABLE`, `-P`/`-N CHAIN`,
    /// `create SET`) printed none and still exited 0: an empty result
    /// would have pyfw add every wished rule again.
    #[error("`{command}` exited 0 but printed no {expected}; refusing to read that as empty")]
    Empty { command: String, expected: String },
    /// Wishes the kernel tools refuse, each in words; never empty.
    #[error("{}", rejections(.0))]
    Rejected(Vec<Rejection>),
    /// nft refused a script pyfw wrote for owned tables; `label` is the
    /// wish on the line nft named (`nft inet pyfw/input/NAME`).
    #[error("{label}: nft refuses it: {}", escape_untrusted(.message))]
    NftRejected { label: String, message: String },
}

/// `label: message` for each, joined with `; `.
fn rejections(list: &[Rejection]) -> String {
    let each: Vec<String> = list
        .iter()
        .map(|r| format!("{}: {}", r.label, escape_untrusted(&r.message)))
        .collect();
    each.join("; ")
}

/// Words of the kernel tools that mean "not now" rather than "no": the
/// same change may well go through when tried again (lower case).
const PASSING: &[&str] = &[
    // EAGAIN: legacy iptables when the table changed under it; netlink.
    "resource temporarily unavailable",
    "try again",
    // iptables -w giving up on the xtables lock.
    "xtables lock",
    "another app is currently holding",
    "stopped waiting",
    // ENOMEM, ENOBUFS, EINTR, EBUSY.
    "cannot allocate memory",
    "out of memory",
    "no buffer space available",
    "interrupted system call",
    "device or resource busy",
    // ipset: a set still referenced by a rule another program has not
    // removed yet.
    "in use by a kernel component",
];

impl Error {
    /// True when the kernel tools refused the change itself: the tool ran
    /// to its end and said no (`Hash is full`, `Element is out of the
    /// range of the set`, `Can't use -o with INPUT`, `RULE_APPEND failed
    /// (Invalid argument)`, a rule iptables cannot parse), so that the same
    /// change would be refused again. False for what may pass: a tool that
    /// could not start, timed out or was killed, output pyfw could not
    /// read, and the tools' own words for a busy or short-of-memory kernel
    /// or a held lock ([`PASSING`]).
    ///
    /// The exit status alone cannot say it: `iptables-restore` exits 4
    /// (its "resource problem") both for a held lock and, on nf_tables, for
    /// a rule the kernel refuses with EINVAL; `ipset` exits 1 for all of
    /// its kernel's errors. So any exit status counts, unless the words
    /// name a passing cause.
    pub fn is_refusal(&self) -> bool {
        match self {
            Error::Rejected(_) | Error::NftRejected { .. } => true,
            Error::Failed { status, stderr, .. } => {
                let exited = status.starts_with("exit status: ");
                let said = stderr.to_lowercase();
                exited && !PASSING.iter().any(|p| said.contains(p))
            }
            // An empty read is a tool misbehaving, not a verdict on a
            // change.
            Error::Spawn { .. }
            | Error::Timeout { .. }
            | Error::TooLarge { .. }
            | Error::Parse { .. }
            | Error::Empty { .. } => false,
        }
    }
}

/// Reads netfilter state and changes it one command at a time.
pub trait Backend {
    /// Reads the rulesets and sets in `scope`.
    fn read_state(&mut self, scope: Scope) -> Result<State, Error>;
    /// Asks the kernel tools whether they accept every rule, changing
    /// nothing. Sets the rules name must exist already.
    fn check_rules(&mut self, checks: &[RuleCheck]) -> Result<(), Error>;
    /// Learns how iptables prints each rule, in order (`None` for one that
    /// cannot be learned before the plan runs: see [`RuleCheck::later`]).
    /// This is also the kernel's verdict on each wish: the rules iptables
    /// refuses come back together as [`Error::Rejected`], and nothing is
    /// left behind. `host` is the state just read: the sets and chains the
    /// rules name, as they are; `new_sets` the wished sets it lacks.
    fn canonicalize(
        &mut self,
        rules: &[RuleCheck],
        host: &State,
        new_sets: &[SetShape],
    ) -> Result<Vec<Option<Learned>>, Error>;
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
            self.run(c).map_err(|cause| BatchError {
                failed_at: Some(applied),
                cause,
            })?;
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
    /// The summaries, without members, of the sets `names` that exist
    /// (`ipset list -terse`), by name; `None` when this backend cannot
    /// tell, and the sets must be read.
    fn set_summaries(
        &mut self,
        names: &std::collections::BTreeSet<String>,
    ) -> Result<Option<std::collections::BTreeMap<String, SetSummary>>, Error> {
        let _ = names;
        Ok(None)
    }
    /// Whether set `name` holds `element` (`ipset test`); `None` when this
    /// backend cannot tell, and the summaries must be taken.
    fn set_holds(&mut self, name: &str, element: &str) -> Result<Option<bool>, Error> {
        let _ = (name, element);
        Ok(None)
    }
    /// The owned nftables table `family name` as `listing` prints it;
    /// `None` when it does not exist. A backend without nftables has none
    /// to read, and says so.
    fn nft_list(
        &mut self,
        family: NftFamily,
        name: &str,
        listing: Listing,
    ) -> Result<Option<String>, Error> {
        let _ = (family, name, listing);
        Err(no_nft())
    }
    /// Asks the kernel whether it takes `script` (`nft -c`), committing
    /// nothing; a refusal names the wish on the line nft names.
    fn nft_check(&mut self, script: &str) -> Result<(), Error> {
        let _ = script;
        Err(no_nft())
    }
    /// The kernel's rendering of each (family, name, script), as `nft -j
    /// list table` prints it, learned where no packet sees it.
    fn nft_learn(&mut self, scripts: &[(NftFamily, String, String)]) -> Result<Vec<String>, Error> {
        let _ = scripts;
        Err(no_nft())
    }
    /// The nf_tables ruleset's generation (see [`crate::kernel::nft::generation`]);
    /// `None` when it cannot be read.
    fn nft_generation(&mut self) -> Option<u32> {
        None
    }
    /// What renders the tables: nft's version and the kernel's release.
    fn nft_version(&mut self) -> String {
        String::new()
    }
    /// What learned forms depend on (see [`Backend::canonicalize`]): the
    /// variant, the iptables tools as the files they are, and the kernel's
    /// release. Empty (the default, and for fakes): learned forms are not
    /// kept beyond this process.
    fn forms_key(&mut self) -> String {
        String::new()
    }
    /// The generation pyfw's last nft script committed, when nothing else
    /// committed between the generations read before and after it.
    fn nft_committed(&mut self) -> Option<u32> {
        None
    }
    /// Whether [`Backend::nft_learn`] can make its private namespace here.
    fn nft_can_learn(&mut self) -> bool {
        false
    }
}

/// What a backend without nftables answers.
fn no_nft() -> Error {
    Error::Spawn {
        command: "nft".into(),
        source: std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "this backend has no nftables",
        ),
    }
}

/// A set as `ipset list -terse` shows it: no members, only their count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetSummary {
    pub kind: String,
    /// Create options, as `ipset save` prints them. A set made again has
    /// another `initval` (the kernel picks one at random), so this tells
    /// a recreated set from the one before.
    pub options: Vec<String>,
    pub members: usize,
    /// The kernel's `Size in memory`: it moves with most member changes,
    /// and never on its own.
    pub memory: Option<u64>,
}

/// A batch that failed, and which of its commands (an index into the
/// batch) the tool named as the one it refused, when it said.
#[derive(Debug)]
pub struct BatchError {
    pub failed_at: Option<usize>,
    pub cause: Error,
}

/// Groups a plan's commands into transactions: each maximal run of
/// iptables commands for one family and table, each run of ipset
/// commands, and each run of nft scripts. Returns index ranges into `commands`.
pub fn transactions(commands: &[Command]) -> Vec<std::ops::Range<usize>> {
    // nft scripts of consecutive commands go to one `nft -f`: one
    // transaction for every table they replace.
    let key = |c: &Command| match c.program {
        Program::Iptables(f) => (0, Some(f), c.args.get(2).cloned().unwrap_or_default()),
        Program::Ipset => (1, None, String::new()),
        Program::Nft => (2, None, String::new()),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(status: &str, stderr: &str) -> Error {
        Error::Failed {
            command: "x".into(),
            status: status.into(),
            stderr: stderr.into(),
        }
    }

    /// The tools' words as they print them (ipset 7.17, iptables 1.8.9).
    #[test]
    fn refusals_are_told_from_passing_failures() {
        let refused = [
            failed(
                "exit status: 1",
                "ipset v7.17: Error in line 7: Hash is full, cannot add more elements",
            ),
            failed(
                "exit status: 1",
                "ipset v7.17: Error in line 3: Element is out of the range of the set",
            ),
            failed(
                "exit status: 2",
                "iptables v1.8.9 (nf_tables): Can't use -o with INPUT\n\nTry `iptables -h' \
                 or 'iptables --help' for more information.",
            ),
            failed(
                "exit status: 4",
                "iptables-restore v1.8.9 (nf_tables): \nline 3: RULE_APPEND failed (Invalid \
                 argument): rule in chain INPUT",
            ),
            failed("exit status: 1", "iptables-restore: line 4 failed"),
            Error::Rejected(vec![Rejection {
                label: "filter/INPUT/bad".into(),
                message: "Bad ctstate".into(),
            }]),
        ];
        for e in &refused {
            assert!(e.is_refusal(), "{e}");
        }
        let passing = [
            failed(
                "exit status: 4",
                "Another app is currently holding the xtables lock. Stopped waiting after 10s.",
            ),
            failed(
                "exit status: 4",
                "iptables: Resource temporarily unavailable.",
            ),
            failed(
                "exit status: 1",
                "ipset v7.17: Set cannot be destroyed: it is in use by a kernel component",
            ),
            failed("signal: 9 (SIGKILL)", ""),
            failed("unexpected output", "read back 1 rules, wrote 2"),
            Error::Timeout {
                command: "ipset restore".into(),
                timeout: Duration::from_secs(30),
                detail: String::new(),
            },
            Error::Spawn {
                command: "ipset".into(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            },
        ];
        for e in &passing {
            assert!(!e.is_refusal(), "{e}");
        }
    }
}
