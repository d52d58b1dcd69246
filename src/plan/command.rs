//! What a plan is: commands, each with its reason, its target, and how to
//! undo it.

use std::fmt;

use crate::state::nft::NftFamily;
use crate::state::rule::{Rule, display_args};
use crate::state::{Family, Members};

/// The program a command runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program {
    Iptables(Family),
    Ipset,
    /// `nft -f -`, a whole script on stdin: the command's last argument
    /// (see [`crate::plan::nft`]).
    Nft,
}

impl Program {
    pub fn name(self) -> &'static str {
        match self {
            Program::Iptables(f) => f.command(),
            Program::Ipset => "ipset",
            Program::Nft => "nft",
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
    /// Empty, but for a run: the commands `args MEMBER` for each of these
    /// members of a set (`add SET` with wished members, `del SET` with
    /// elements), in one. A set's member changes of one kind come in a run
    /// when there are more than [`RUN_OVER`]: 100,000 commands with their
    /// undo, reason and target cost 50 MB, these members 1.6. A run is
    /// numbered, run, and printed where it counts as its members, one
    /// command each ([`Command::count`], [`Command::expand`]); its `undo`
    /// is that of every member, given the member's element (`del SET`
    /// for `add SET`).
    pub members: Members,
}

/// More member changes of one kind than this, in one set, make a run (see
/// [`Command::members`]); "State changes" summarises such a set instead
/// of listing its members, and `apply` prints one line for the run.
pub const RUN_OVER: usize = 1000;

impl Command {
    /// How many commands this stands for: a run's members, else one.
    pub fn count(&self) -> usize {
        self.members.len().max(1)
    }

    /// Whether this is a run of member commands.
    pub fn is_run(&self) -> bool {
        !self.members.is_empty()
    }

    /// The arguments of the command a run's `member` stands for.
    pub fn member_args(&self, member: &str) -> Vec<String> {
        let mut args = self.args.clone();
        args.extend(crate::state::set_type::member_words(member).map(String::from));
        args
    }

    /// The `k`th command this stands for (0-based): a run's member, or
    /// this command itself.
    pub fn nth(&self, k: usize) -> Option<Command> {
        if !self.is_run() {
            return (k == 0).then(|| self.clone());
        }
        let member = self.members.get(k)?;
        let element = element(member);
        Some(Command {
            program: self.program,
            args: self.member_args(member),
            undo: self.undo.as_ref().map(|undo| {
                let mut undo = undo.clone();
                undo.push(element.to_string());
                undo
            }),
            reason: self.reason.clone(),
            target: self.target.clone(),
            wish: self.wish.clone(),
            members: Members::default(),
        })
    }

    /// The commands this stands for, one by one.
    pub fn expand(&self) -> Vec<Command> {
        (0..self.count()).filter_map(|k| self.nth(k)).collect()
    }

    /// The command line as `binary` runs it, for output and audit logs.
    ///
    /// Arguments that need no quoting (every one of a set's members, mostly)
    /// are joined straight into the line; any other goes through
    /// [`crate::state::rule::display_args`]. A test holds the two to the same text.
    pub fn line(&self, binary: &str) -> String {
        if let Some(script) = script_of(self) {
            return line(binary, script);
        }
        if self.is_run() {
            return self.run_line(binary);
        }
        let plain = !self.args.is_empty()
            && self.args.iter().all(|a| {
                !a.is_empty()
                    && a.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!-_.,:/=+@%^".contains(&b))
            });
        if !plain {
            let args = crate::state::rule::display_args(&self.args);
            let mut line = String::with_capacity(binary.len() + 1 + args.len());
            line.push_str(binary);
            line.push(' ');
            line.push_str(&args);
            return line;
        }
        let len = self.args.iter().map(|a| a.len() + 1).sum::<usize>();
        let mut line = String::with_capacity(binary.len() + len);
        line.push_str(binary);
        for a in &self.args {
            line.push(' ');
            line.push_str(a);
        }
        line
    }
}

impl Command {
    /// A run in one line: its first and last commands, and how many.
    fn run_line(&self, binary: &str) -> String {
        let n = self.members.len();
        let one = |k: usize| {
            let member = self.members.get(k).unwrap_or_default();
            let mut line = binary.to_string();
            line.push(' ');
            line.push_str(&display_args(&self.member_args(member)));
            line
        };
        format!(
            "{} ... {} ({n} commands, one per member)",
            one(0),
            one(n.saturating_sub(1))
        )
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if script_of(self).is_some() {
            return f.write_str(&self.line(self.program.name()));
        }
        match self.is_run() {
            true => write!(f, "{}", self.run_line(self.program.name())),
            false => write!(f, "{} {}", self.program.name(), display_args(&self.args)),
        }
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
    /// The wished rules whose text iptables prints otherwise: what the
    /// plan installs, beside what the kernel will show for it (see
    /// [`crate::wishes::NamedRule::printed`]).
    pub printed: Vec<PrintedAs>,
}

/// A rule pyfw installs as written, and how iptables prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrintedAs {
    pub family: Family,
    pub table: String,
    pub installed: Rule,
    pub printed: Rule,
}

impl Plan {
    /// True when netfilter already matches the wishes.
    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    /// How many commands the plan runs, a run counting as its members.
    pub fn count(&self) -> usize {
        self.commands.iter().map(Command::count).sum()
    }

    /// The same plan with each run expanded into its commands, one per
    /// member: what `plan` lists.
    pub fn expanded(&self) -> Plan {
        Plan {
            commands: self.commands.iter().flat_map(Command::expand).collect(),
            record: self.record.clone(),
            printed: self.printed.clone(),
        }
    }
}

// ---- nft commands (see `plan::nft`) ------------------------------------------

/// The arguments of every nft command before its script: the script is
/// the last argument, fed on stdin.
pub const SCRIPT_ARGS: [&str; 2] = ["-f", "-"];

/// The script a command of [`Program::Nft`] feeds nft.
pub fn script_of(c: &Command) -> Option<&str> {
    match (c.program, c.args.as_slice()) {
        (Program::Nft, [f, dash, script]) if *f == SCRIPT_ARGS[0] && *dash == SCRIPT_ARGS[1] => {
            Some(script)
        }
        _ => None,
    }
}

/// The tables a script replaces or deletes, in order: its `delete table`
/// lines.
pub fn tables_of(script: &str) -> Vec<(NftFamily, String)> {
    script
        .lines()
        .filter_map(|l| {
            let mut words = l.strip_prefix("delete table ")?.split_whitespace();
            let family = NftFamily::parse(words.next()?)?;
            Some((family, words.next()?.to_string()))
        })
        .collect()
}

/// How a command line shows an nft command: its script summarised.
pub fn line(binary: &str, script: &str) -> String {
    let tables: Vec<String> = tables_of(script)
        .iter()
        .map(|(f, n)| format!("{f} {n}"))
        .collect();
    let lines = script.lines().count();
    match lines <= 2 {
        true => format!("{binary} -f - (deletes table {})", tables.join(", ")),
        false => format!(
            "{binary} -f - (replaces table {} in one transaction: a script of {lines} lines)",
            tables.join(", ")
        ),
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
        members: Members::default(),
    }
}

/// A set member's element: its first word, before any options
/// (`timeout`, `comment`...).
pub(crate) fn element(member: &str) -> &str {
    member.split(' ').next().unwrap_or(member)
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
                    members: Members::default(),
                };
                let want = format!("ipset {}", display_args(&command.args));
                assert_eq!(command.line("ipset"), want, "{w:?}");
            }
        }
    }
}
