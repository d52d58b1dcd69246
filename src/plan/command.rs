//! What a plan is: commands, each with its reason, its target, and how to
//! undo it.

use std::fmt;

use crate::state::Family;
use crate::state::rule::display_args;

/// The program a command runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program {
    Iptables(Family),
    Ipset,
}

impl Program {
    pub fn name(self) -> &'static str {
        match self {
            Program::Iptables(f) => f.command(),
            Program::Ipset => "ipset",
        }
    }
}

/// One command of a plan: argv for `program`, why it runs, and how to
/// undo it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    pub program: Program,
    pub args: Vec<String>,
    /// Arguments that reverse this command, for rolling back a failed apply.
    /// `None` for the few that cannot be undone; plans put those last.
    pub undo: Option<Vec<String>>,
    /// Why this command runs, for plan output and audit logs.
    pub reason: String,
    /// The chain (`filter/INPUT`) or set (`ipset NAME`) it changes.
    pub target: String,
    /// The wished rule or set name it serves, if any.
    pub wish: Option<String>,
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.program.name(), display_args(&self.args))
    }
}

/// The commands that make the state match the wishes, in the order they must
/// run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub commands: Vec<Command>,
    /// Updates to pyfw's ownership record, run after `commands` succeed.
    /// They change no rule, so they are not part of what `check` reports.
    pub record: Vec<Command>,
}

impl Plan {
    /// True when netfilter already matches the wishes.
    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }
}

pub(crate) fn ipt_args<'a>(table: &str, rest: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut args = vec!["-w".to_string(), "-t".to_string(), table.to_string()];
    args.extend(rest.into_iter().map(String::from));
    args
}

pub(crate) fn ipset_cmd(
    set: &str,
    args: &[&str],
    undo: Option<&[&str]>,
    reason: String,
) -> Command {
    let owned = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    Command {
        program: Program::Ipset,
        args: owned(args),
        undo: undo.map(owned),
        reason,
        target: format!("ipset {set}"),
        wish: Some(set.to_string()),
    }
}
