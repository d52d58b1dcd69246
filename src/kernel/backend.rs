//! The I/O edge as a trait: what pyfw asks of the kernel tools, so that
//! tests can script a fake kernel and the planner never sees a process.

use std::time::Duration;

use crate::kernel::scope::Scope;
use crate::plan::{Command, Program};
use crate::state::rule::Rule;
use crate::state::text::escape_untrusted;
use crate::state::{self, Family, State};

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
    #[error("{label}: iptables rejects the rule: {}", escape_untrusted(.message))]
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
}

/// A set as `ipset list -terse` shows it: no members, only their count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetSummary {
    pub kind: String,
    /// Create options, as `ipset save` prints them.
    pub options: Vec<String>,
    pub members: usize,
}

/// A batch that failed, and which of its commands (an index into the
/// batch) the tool named as the one it refused, when it said.
#[derive(Debug)]
pub struct BatchError {
    pub failed_at: Option<usize>,
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
