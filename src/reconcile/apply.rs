//! Carrying out a plan: all of it, or none of it.
//!
//! Before the first iptables command runs, every wished rule is checked by
//! the kernel tools (`iptables-restore --test`), so a rule iptables rejects
//! stops the apply with the wish's name before any rule changes. If a
//! command fails part-way anyway (another program raced us, the kernel said
//! no), the commands already run are undone in reverse, so the firewall is
//! left as it was.

use crate::kernel::{Backend, BatchError, Error, RuleCheck, transactions};
use crate::plan::{Command, Plan, Program};

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
    /// About to run command `index` (1-based) of `total`.
    Executing {
        index: usize,
        total: usize,
        command: &'a Command,
        /// The command line as it runs, with the backend's binary.
        line: String,
    },
    /// A command ran.
    Done { command: &'a Command },
    /// Undoing a command after a failure.
    RollingBack { command: String },
    /// Updating pyfw's ownership record after the plan ran.
    Recording { line: String },
    /// A record update failed; the next reconcile tries again.
    RecordFailed { line: String, error: String },
}

/// A failed apply, after rollback.
#[derive(Debug, thiserror::Error)]
#[error("{cause}{}", rollback_summary(.undone, .rollback_failures))]
pub struct ApplyError {
    pub cause: Error,
    /// How many commands had run and were undone.
    pub undone: usize,
    /// Undo commands that failed in turn: the firewall may differ from
    /// before in these places.
    pub rollback_failures: Vec<String>,
}

fn rollback_summary(undone: &usize, failures: &[String]) -> String {
    if *undone == 0 && failures.is_empty() {
        return "; nothing was changed".to_string();
    }
    if failures.is_empty() {
        return format!("; rolled back the {undone} command(s) already run");
    }
    format!(
        "; rolling back the {undone} command(s) already run failed for: {}",
        failures.join("; ")
    )
}

/// Runs `plan`, checking `checks` first; on failure undoes what ran.
/// Commands run in transactions (see [`transactions`]): one
/// `iptables-restore --noflush` per table, one `ipset restore` per run of
/// set commands. Returns how many commands ran.
pub fn apply(
    backend: &mut dyn Backend,
    plan: &Plan,
    checks: &[RuleCheck],
    on: &mut dyn FnMut(Event),
) -> Result<usize, ApplyError> {
    let total = plan.commands.len();
    let groups = transactions(&plan.commands);
    let mut done: Vec<&Command> = Vec::new();
    let mut checked = false;
    for (t, range) in groups.iter().enumerate() {
        let batch: Vec<&Command> = plan.commands[range.clone()].iter().collect();
        // ipsets come first in a plan and may be what the rules reference,
        // so the check runs once they exist and before any rule changes.
        if !checked && matches!(batch[0].program, Program::Iptables(_)) {
            checked = true;
            if let Err(cause) = backend.check_rules(checks) {
                return Err(roll_back(backend, &done, cause, on));
            }
        }
        on(Event::Transaction {
            index: t + 1,
            total: groups.len(),
            line: backend.batch_line(&batch),
            commands: range.start + 1..range.end + 1,
        });
        // A batch is one program's commands: its binary is asked once,
        // not once per line (100,000 lines for a set filled from nothing).
        let mut binary: Option<(Program, String)> = None;
        for (k, command) in batch.iter().enumerate() {
            if binary.as_ref().is_none_or(|(p, _)| *p != command.program) {
                binary = Some((command.program, backend.binary(command.program)));
            }
            let bin = binary.as_ref().map_or("", |(_, b)| b.as_str());
            on(Event::Executing {
                index: range.start + k + 1,
                total,
                command,
                line: join_line(bin, command),
            });
        }
        if let Err(BatchError { applied, cause }) = backend.run_batch(&batch) {
            done.extend(&batch[..applied.min(batch.len())]);
            return Err(roll_back(backend, &done, cause, on));
        }
        for command in batch {
            on(Event::Done { command });
            done.push(command);
        }
    }
    // The record changes no rule: a failure here is not worth undoing the
    // plan for, and the next reconcile writes what is missing.
    if !plan.record.is_empty() {
        let record: Vec<&Command> = plan.record.iter().collect();
        for command in &record {
            on(Event::Recording {
                line: command_line(backend, command),
            });
        }
        if let Err(e) = backend.run_batch(&record) {
            on(Event::RecordFailed {
                line: backend.batch_line(&record),
                error: e.cause.to_string(),
            });
        }
    }
    Ok(total)
}

/// A command as the backend runs it, for output and audit logs.
pub fn command_line(backend: &dyn Backend, command: &Command) -> String {
    join_line(&backend.binary(command.program), command)
}

/// [`command_line`] with the binary given.
///
/// Arguments that need no quoting (every one of a set's members, mostly)
/// are joined straight into the line; any other goes through
/// [`crate::state::rule::display_args`]. A test holds the two to the same text.
fn join_line(binary: &str, command: &Command) -> String {
    let plain = !command.args.is_empty()
        && command.args.iter().all(|a| {
            !a.is_empty()
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!-_.,:/=+@%^".contains(&b))
        });
    if !plain {
        let args = crate::state::rule::display_args(&command.args);
        let mut line = String::with_capacity(binary.len() + 1 + args.len());
        line.push_str(binary);
        line.push(' ');
        line.push_str(&args);
        return line;
    }
    let len = command.args.iter().map(|a| a.len() + 1).sum::<usize>();
    let mut line = String::with_capacity(binary.len() + len);
    line.push_str(binary);
    for a in &command.args {
        line.push(' ');
        line.push_str(a);
    }
    line
}

fn roll_back(
    backend: &mut dyn Backend,
    done: &[&Command],
    cause: Error,
    on: &mut dyn FnMut(Event),
) -> ApplyError {
    let mut failures = Vec::new();
    let mut undone = 0;
    // A set this plan created goes with the undo of its creation: its
    // members need no undoing one by one (100,000 of them would take
    // minutes). Other member changes are undone in one `ipset restore`.
    let created: std::collections::HashSet<&str> = done
        .iter()
        .filter(|c| c.program == Program::Ipset && c.args.first().is_some_and(|a| a == "create"))
        .filter_map(|c| c.args.get(1).map(String::as_str))
        .collect();
    let member_op = |c: &Command| {
        c.program == Program::Ipset && c.args.first().is_some_and(|a| a == "add" || a == "del")
    };
    let mut members: Vec<Command> = Vec::new();
    fn flush(backend: &mut dyn Backend, members: &mut Vec<Command>, failures: &mut Vec<String>) {
        let batch: Vec<&Command> = members.iter().collect();
        if !batch.is_empty()
            && let Err(e) = backend.run_batch(&batch)
        {
            failures.push(e.cause.to_string());
        }
        members.clear();
    }
    for command in done.iter().rev() {
        // Past a step that cannot be undone, undoing earlier steps could
        // only make things worse (rules would lose the set they moved to).
        // Stop there: the next reconcile plans from what is.
        let Some(undo) = &command.undo else {
            failures.push(format!(
                "`{command}` cannot be undone, so the {} command(s) before it stay",
                done.len() - undone - 1
            ));
            break;
        };
        undone += 1;
        if member_op(command)
            && command
                .args
                .get(1)
                .is_some_and(|set| created.contains(set.as_str()))
        {
            continue;
        }
        let reverse = Command {
            args: undo.clone(),
            undo: None,
            reason: format!("roll back `{command}`"),
            ..(*command).clone()
        };
        on(Event::RollingBack {
            command: command_line(backend, &reverse),
        });
        if member_op(&reverse) {
            members.push(reverse);
            continue;
        }
        flush(backend, &mut members, &mut failures);
        if let Err(e) = backend.run(&reverse) {
            failures.push(e.to_string());
        }
    }
    flush(backend, &mut members, &mut failures);
    ApplyError {
        cause,
        undone,
        rollback_failures: failures,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plain-argument shortcut writes what `display_args` writes, for
    /// every ASCII character alone, beside others and in a word.
    #[test]
    fn join_line_is_display_args() {
        let mut words: Vec<String> = (0u8..128)
            .flat_map(|b| {
                let c = char::from(b);
                [c.to_string(), format!("a{c}b"), format!("{c}{c}")]
            })
            .collect();
        words.extend(["", "10.0.0.1", "é", "a b", "don't", "--comment"].map(String::from));
        for w in &words {
            for args in [
                Vec::new(),
                vec![w.clone()],
                vec!["add".into(), "s".into(), w.clone()],
            ] {
                let command = Command {
                    program: Program::Ipset,
                    args,
                    undo: None,
                    reason: String::new(),
                    target: String::new(),
                    wish: None,
                };
                let want = format!("ipset {}", crate::state::rule::display_args(&command.args));
                assert_eq!(join_line("ipset", &command), want, "{w:?}");
            }
        }
    }
}
