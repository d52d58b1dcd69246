//! Carrying out a plan: all of it, or none of it.
//!
//! In order:
//! 1. pyfw's ownership record gains what the plan adds (write-ahead: until
//!    the last commit it names the old and the new), so that a crash at
//!    any point leaves nothing pyfw put in place unrecorded;
//! 2. the wished rules that could not be learned before are checked by the
//!    kernel tools (`iptables-restore --test`) once the sets they name
//!    exist, before any rule changes;
//! 3. each transaction runs: one `iptables-restore --noflush` per family
//!    and table, one `ipset restore` per run of set commands;
//! 4. the record loses what the plan withdrew.
//!
//! Any failure, timeout or interrupt before the last commit is answered by
//! putting back the snapshot (see [`crate::reconcile::rollback`]): the
//! touched chains and sets are read again and restored with the fewest
//! edits, one transaction per table, then read back. The error says which
//! of "nothing was changed", "rolled back" or "could not roll back" is
//! true, and only what was verified is claimed.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::kernel::{self, Backend, RuleCheck, transactions};
use crate::plan::revert::Snapshot;
use crate::plan::{Command, Plan, Program};
use crate::reconcile::rollback::{self, Reverted};

/// Progress reported while applying, for the CLI's output and the daemon's
/// audit log.
#[derive(Debug)]
pub enum Event<'a> {
    /// About to run transaction `index` of `total`, which carries the
    /// plan's commands numbered `commands` (1-based).
    Transaction {
        index: usize,
        total: usize,
        /// How it runs: `iptables-restore --noflush --wait`, ...
        line: String,
        commands: std::ops::Range<usize>,
    },
    /// Command `index` (1-based) of `total` ran: its transaction committed.
    /// A run of member commands ([`Command::members`]) is the commands
    /// `index` to `index + count - 1`, said at once.
    Executing {
        index: usize,
        total: usize,
        /// How many commands this is: a run's members, else 1.
        count: usize,
        command: &'a Command,
        /// The command line as it runs, with the backend's binary (a run's
        /// first and last, and how many).
        line: String,
    },
    /// A command ran (after its `Executing`).
    Done { command: &'a Command },
    /// Putting back the snapshot after a failure: one command of it.
    RollingBack { command: String },
    /// Updating pyfw's ownership record.
    Recording { line: String },
}

/// A request to stop an apply, from a signal: the apply stops before its
/// next transaction and puts back what ran. Shared by clones.
#[derive(Clone, Debug, Default)]
pub struct Interrupt(Arc<AtomicUsize>);

impl Interrupt {
    pub fn new() -> Interrupt {
        Interrupt::default()
    }

    /// The signal number that asked to stop, if any.
    pub fn signal(&self) -> Option<i32> {
        match self.0.load(Ordering::SeqCst) {
            0 => None,
            n => i32::try_from(n).ok(),
        }
    }

    /// Asks to stop, for signal `signo`.
    pub fn raise(&self, signo: i32) {
        self.0
            .store(usize::try_from(signo).unwrap_or(1), Ordering::SeqCst);
    }

    /// The cell a signal handler sets (`signal_hook::flag::register_usize`).
    pub fn cell(&self) -> Arc<AtomicUsize> {
        self.0.clone()
    }
}

/// The name of a signal number, for messages.
pub fn signal_name(signo: i32) -> String {
    match signo {
        libc::SIGHUP => "SIGHUP".into(),
        libc::SIGINT => "SIGINT".into(),
        libc::SIGTERM => "SIGTERM".into(),
        other => format!("signal {other}"),
    }
}

/// The planned command a kernel tool refused, as the plan numbers it.
#[derive(Clone, Debug)]
pub struct Refused {
    /// 1-based, of `total`.
    pub index: usize,
    pub total: usize,
    /// The command line, as printed for `Executing command`.
    pub line: String,
    /// The chain (`filter/INPUT`) or set (`ipset NAME`) it changes.
    pub target: String,
    /// The wished rule or set it serves, if any.
    pub wish: Option<String>,
    /// The commands of its transaction (1-based, as `index`), none of
    /// which took effect.
    pub transaction: std::ops::Range<usize>,
    /// What the tool said, in words (see [`refusal_words`]).
    pub words: String,
}

impl Refused {
    /// The wish as the wishes file names it: `filter/INPUT/allow_ssh`,
    /// `ipset allowed_hosts`, or the chain for a policy.
    pub fn label(&self) -> String {
        match &self.wish {
            Some(name) if !self.target.starts_with("ipset ") => format!("{}/{name}", self.target),
            _ => self.target.clone(),
        }
    }
}

/// Why an apply stopped.
#[derive(Debug, thiserror::Error)]
pub enum Cause {
    #[error("{}", failed_words(.0))]
    Kernel(kernel::Error),
    /// A transaction failed at one command: the tool said which.
    #[error(
        "{}: command {}/{} failed: `{}`: {}; {}",
        .refused.label(), .refused.index, .refused.total, .refused.line, .refused.words,
        untouched(&.refused.transaction)
    )]
    Refused {
        /// Boxed: errors travel in `Result`s, which stay small this way.
        refused: Box<Refused>,
        error: kernel::Error,
    },
    #[error("interrupted by {}", signal_name(*.0))]
    Interrupted(i32),
    #[error("cannot write pyfw's ownership record ahead of the change: {0}")]
    RecordAhead(kernel::Error),
    #[error("cannot trim pyfw's ownership record after the change: {0}")]
    RecordAfter(kernel::Error),
}

/// That a refused transaction took no effect.
fn untouched(commands: &std::ops::Range<usize>) -> String {
    match commands.len() {
        0 | 1 => "it changed nothing".to_string(),
        n => format!(
            "its transaction (commands {}-{}) changed nothing: the {n} commands go to the kernel \
             as one",
            commands.start,
            commands.end - 1
        ),
    }
}

/// What the tools said refusing `command` of `plan`, in words: for a set
/// that is full, its maxelem, how many members the wishes give it, and the
/// header that fits; else the tool's words without restore-input line
/// numbers.
pub fn refusal_words(
    plan: &Plan,
    snapshot: &Snapshot,
    command: &Command,
    error: &kernel::Error,
) -> String {
    let kernel::Error::Failed { stderr, .. } = error else {
        return kernel::words::tool_said(error);
    };
    let set = command.target.strip_prefix("ipset ");
    // A lone command's words are its own; in a transaction, those of the
    // line the tool named (legacy names only COMMIT).
    let single = !stderr.contains("iptables-restore");
    let named = kernel::restore_script::restore_error_line(stderr);
    match (set, command.program) {
        (Some(name), _) if stderr.contains("Hash is full") => {
            let (header, wanted) = set_after(plan, snapshot, name);
            kernel::words::set_full(stderr, &header, wanted)
        }
        (_, Program::Iptables(family)) => match rule_of(command) {
            // Only a named line is this command's: legacy names COMMIT.
            Some((table, chain, rule)) if single || named.is_some() => {
                let said = match named {
                    Some(n) => kernel::words::said_of_line(stderr, n),
                    None => stderr.clone(),
                };
                let at = kernel::words::RuleAt {
                    family,
                    table,
                    chain,
                    rule: &rule,
                };
                kernel::words::rule_refused(&said, at)
            }
            _ => kernel::words::tool_said(error),
        },
        _ => kernel::words::tool_said(error),
    }
}

/// The table, chain and rule of an iptables command that adds a rule
/// (`-w -t TABLE -A|-I CHAIN [N] RULE...`).
fn rule_of(command: &Command) -> Option<(&str, &str, crate::state::rule::Rule)> {
    let args = &command.args;
    let (table, op, chain) = (args.get(2)?, args.get(3)?, args.get(4)?);
    if op != "-A" && op != "-I" {
        return None;
    }
    let mut rest = &args[5..];
    if op == "-I" && rest.first().is_some_and(|n| n.parse::<u64>().is_ok()) {
        rest = &rest[1..];
    }
    let rule = crate::state::rule::Rule::from_tokens(rest.iter().map(String::as_str));
    Some((table.as_str(), chain.as_str(), rule))
}

/// The create options of set `name` as the plan creates it (or as it is),
/// and how many members it holds once the plan ran.
fn set_after(plan: &Plan, snapshot: &Snapshot, name: &str) -> (Vec<String>, usize) {
    let before = snapshot.sets.get(name).and_then(Option::as_ref);
    let mut header: Vec<String> = before.map(|s| s.options.clone()).unwrap_or_default();
    let mut members: usize = before.map_or(0, |s| s.members.len());
    for c in plan.commands.iter().filter(|c| c.program == Program::Ipset) {
        if c.args.get(1).map(String::as_str) != Some(name) {
            continue;
        }
        match c.args.first().map(String::as_str) {
            Some("create") => {
                header = c.args.iter().skip(3).cloned().collect();
                members = 0;
            }
            Some("add") => members += 1,
            Some("del") => members = members.saturating_sub(1),
            Some("flush") => members = 0,
            _ => {}
        }
    }
    (header, members)
}

/// A tool's failure as the user reads it: the command, and the tool's
/// words without restore-input line numbers.
fn failed_words(e: &kernel::Error) -> String {
    match e {
        kernel::Error::Failed {
            command, status, ..
        } => format!(
            "`{command}` failed ({status}): {}",
            kernel::words::tool_said(e)
        ),
        other => other.to_string(),
    }
}

/// What a failed apply left in netfilter.
#[derive(Debug)]
pub enum Left {
    /// Nothing had changed (read back, or nothing had run).
    Unchanged,
    /// What ran was put back, and read back as it was.
    RolledBack { transactions: usize },
    /// Putting it back failed, or could not be verified: netfilter may
    /// hold part of the change.
    Unknown { failures: Vec<String> },
    /// Every change committed: netfilter matches the wishes.
    Applied,
}

impl std::fmt::Display for Left {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Left::Unchanged => write!(f, "nothing was changed"),
            Left::RolledBack { transactions } => write!(
                f,
                "rolled back in {transactions} transaction(s): netfilter is as it was (read back)"
            ),
            Left::Unknown { failures } if failures.is_empty() => write!(
                f,
                "rolled back, but the read-back differs: netfilter may hold part of the change"
            ),
            Left::Unknown { failures } => write!(
                f,
                "rolling back failed, so netfilter may hold part of the change: {}",
                failures.join("; ")
            ),
            Left::Applied => write!(
                f,
                "every change committed and netfilter matches the wishes; the next run retries"
            ),
        }
    }
}

/// A failed apply, after rollback.
#[derive(Debug, thiserror::Error)]
#[error("{cause}; {left}")]
pub struct ApplyError {
    pub cause: Cause,
    pub left: Left,
}

impl ApplyError {
    /// The command a tool refused, when it said which.
    pub fn refused(&self) -> Option<&Refused> {
        match &self.cause {
            Cause::Refused { refused, .. } => Some(refused),
            _ => None,
        }
    }

    /// The kernel tools' error that stopped the apply, if one did.
    pub fn kernel_error(&self) -> Option<&kernel::Error> {
        match &self.cause {
            Cause::Kernel(e) | Cause::RecordAhead(e) | Cause::RecordAfter(e) => Some(e),
            Cause::Refused { error, .. } => Some(error),
            Cause::Interrupted(_) => None,
        }
    }
}

/// Runs `plan`, checking `checks` first; on failure or interrupt puts
/// `snapshot` (the touched chains and sets as the plan found them) back.
/// Returns how many commands ran.
pub fn apply(
    backend: &mut dyn Backend,
    plan: &Plan,
    snapshot: &Snapshot,
    checks: &[RuleCheck],
    interrupt: &Interrupt,
    on: &mut dyn FnMut(Event),
) -> Result<usize, ApplyError> {
    let (ahead, after): (Vec<&Command>, Vec<&Command>) = plan
        .record
        .iter()
        .partition(|c| c.args.first().is_none_or(|op| op != "del"));
    if let Some(signo) = interrupt.signal() {
        return Err(ApplyError {
            cause: Cause::Interrupted(signo),
            left: Left::Unchanged,
        });
    }
    let mut undo = Undo {
        snapshot,
        wrote: false,
    };
    if let Err(e) = record(backend, &ahead, on) {
        return Err(undo.fail(backend, Cause::RecordAhead(e), on));
    }
    undo.wrote = !ahead.is_empty();
    run_transactions(backend, plan, checks, interrupt, &mut undo, on)?;
    record(backend, &after, on).map_err(|e| ApplyError {
        cause: Cause::RecordAfter(e),
        left: Left::Applied,
    })?;
    Ok(plan.count())
}

/// What to put back on failure, and whether anything may have changed.
struct Undo<'s> {
    snapshot: &'s Snapshot,
    /// A write was made (or may have been, half-way): a failure now reads
    /// back and restores the snapshot.
    wrote: bool,
}

impl Undo<'_> {
    /// The error for `cause`, after putting the snapshot back.
    fn fail(
        &self,
        backend: &mut dyn Backend,
        cause: Cause,
        on: &mut dyn FnMut(Event),
    ) -> ApplyError {
        let done = rollback::revert(backend, self.snapshot, &mut |line| {
            let command = line
                .strip_prefix("Reverting: ")
                .unwrap_or(&line)
                .to_string();
            on(Event::RollingBack { command })
        });
        ApplyError {
            cause,
            left: left_after(&done),
        }
    }
}

/// What a revert left, as a failed apply reports it.
fn left_after(done: &Reverted) -> Left {
    match (done.complete(), done.transactions) {
        (true, 0) => Left::Unchanged,
        (true, transactions) => Left::RolledBack { transactions },
        (false, _) => Left::Unknown {
            failures: done.failures.clone(),
        },
    }
}

/// Runs the plan's transactions in order; on the first failure or an
/// interrupt between two, puts the snapshot back. Commands are numbered as
/// the plan counts them, a run as its members.
fn run_transactions(
    backend: &mut dyn Backend,
    plan: &Plan,
    checks: &[RuleCheck],
    interrupt: &Interrupt,
    undo: &mut Undo,
    on: &mut dyn FnMut(Event),
) -> Result<(), ApplyError> {
    let total = plan.count();
    let groups = transactions(&plan.commands);
    let mut checked = false;
    // Numbered commands before this transaction.
    let mut before = 0;
    for (t, range) in groups.iter().enumerate() {
        if let Some(signo) = interrupt.signal() {
            return Err(undo.fail(backend, Cause::Interrupted(signo), on));
        }
        let batch: Vec<&Command> = plan.commands[range.clone()].iter().collect();
        let size: usize = batch.iter().map(|c| c.count()).sum();
        // ipsets come first in a plan and may be what the rules reference,
        // so the check runs once they exist and before any rule changes.
        if !checked && matches!(batch[0].program, Program::Iptables(_)) {
            checked = true;
            if let Err(cause) = backend.check_rules(checks) {
                return Err(undo.fail(backend, Cause::Kernel(cause), on));
            }
        }
        on(Event::Transaction {
            index: t + 1,
            total: groups.len(),
            line: backend.batch_line(&batch),
            commands: before + 1..before + size + 1,
        });
        undo.wrote = true;
        if let Err(e) = backend.run_batch(&batch) {
            let cause = match e
                .failed_at
                .and_then(|k| numbered(&batch, k).map(|c| (k, c)))
            {
                Some((k, command)) => Cause::Refused {
                    refused: Box::new(Refused {
                        index: before + k + 1,
                        total,
                        line: command_line(backend, &command),
                        // nft names the line, and so the wish, it refused:
                        // a rule or set of the table the command replaces.
                        target: match &e.cause {
                            kernel::Error::NftRejected { label, .. } => label.clone(),
                            _ => command.target.clone(),
                        },
                        wish: match &e.cause {
                            kernel::Error::NftRejected { .. } => None,
                            _ => command.wish.clone(),
                        },
                        transaction: before + 1..before + size + 1,
                        words: refusal_words(plan, undo.snapshot, &command, &e.cause),
                    }),
                    error: e.cause,
                },
                None => Cause::Kernel(e.cause),
            };
            return Err(undo.fail(backend, cause, on));
        }
        report_ran(backend, &batch, before, total, on);
        before += size;
    }
    Ok(())
}

/// The `k`th (0-based) of the commands `batch` stands for, a run counting
/// as its members.
fn numbered(batch: &[&Command], mut k: usize) -> Option<Command> {
    for c in batch {
        if k < c.count() {
            return c.nth(k);
        }
        k -= c.count();
    }
    None
}

/// `Executing` and `Done` for each command of a committed batch, numbered
/// after the plan's first `before` commands.
fn report_ran(
    backend: &dyn Backend,
    batch: &[&Command],
    before: usize,
    total: usize,
    on: &mut dyn FnMut(Event),
) {
    // A batch is one program's commands: its binary is asked once, not
    // once per line (100,000 lines for a set filled from nothing).
    let mut binary: Option<(Program, String)> = None;
    let mut index = before + 1;
    for command in batch {
        if binary.as_ref().is_none_or(|(p, _)| *p != command.program) {
            binary = Some((command.program, backend.binary(command.program)));
        }
        let bin = binary.as_ref().map_or("", |(_, b)| b.as_str());
        on(Event::Executing {
            index,
            total,
            count: command.count(),
            command,
            line: command.line(bin),
        });
        on(Event::Done { command });
        index += command.count();
    }
}

/// Runs record commands as one batch (nothing when there are none).
fn record(
    backend: &mut dyn Backend,
    commands: &[&Command],
    on: &mut dyn FnMut(Event),
) -> Result<(), kernel::Error> {
    if commands.is_empty() {
        return Ok(());
    }
    for command in commands {
        on(Event::Recording {
            line: command_line(backend, command),
        });
    }
    backend.run_batch(commands).map_err(|e| e.cause)
}

/// A command as the backend runs it, for output and audit logs.
pub fn command_line(backend: &dyn Backend, command: &Command) -> String {
    command.line(&backend.binary(command.program))
}
