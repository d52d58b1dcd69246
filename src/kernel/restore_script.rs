//! The text pyfw hands to `iptables-restore` and `ipset restore`: pure
//! functions of a batch of planned commands.

use crate::plan::{Command, Program};
use crate::state::Family;

/// The input line an `iptables-restore` failure names: nft says `Error
/// occurred at line: N` for a line it cannot parse and `line N: ...` for
/// one the kernel refuses at commit, legacy says `iptables-restore: line N
/// failed`.
pub(crate) fn restore_error_line(stderr: &str) -> Option<usize> {
    stderr.lines().find_map(|l| {
        let n = match (
            l.strip_prefix("Error occurred at line: "),
            l.strip_prefix("line "),
        ) {
            (Some(n), _) => n,
            (None, Some(rest)) => rest.split(':').next()?,
            (None, None) => l.split(": line ").nth(1)?.strip_suffix(" failed")?,
        };
        n.trim().parse().ok()
    })
}

/// The input line an `ipset restore` failure names (`Error in line N: ...`).
pub(crate) fn ipset_error_line(stderr: &str) -> Option<usize> {
    stderr
        .split("Error in line ")
        .nth(1)
        .and_then(|r| r.split(':').next())
        .and_then(|n| n.trim().parse().ok())
}

/// The command of an `iptables-restore` batch that input line `line`
/// (1-based) of `text` came from: the first whose restore line it is.
pub(crate) fn command_at_line(text: &str, line: usize, commands: &[&Command]) -> Option<usize> {
    let wanted = text.lines().nth(line.checked_sub(1)?)?;
    commands
        .iter()
        .position(|c| crate::state::rule::restore_line(c.args.get(3..).unwrap_or(&[])) == wanted)
}

/// The program and arguments that run `commands` as one batch.
pub(crate) fn batch_program(
    restore: impl Fn(Family) -> String,
    commands: &[&Command],
) -> (String, Vec<String>) {
    match commands[0].program {
        Program::Iptables(family) => (
            restore(family),
            ["--noflush", "--wait"].map(String::from).to_vec(),
        ),
        Program::Ipset => (
            "ipset".to_string(),
            ["restore", "-exist"].map(String::from).to_vec(),
        ),
        Program::Nft => (
            "nft".to_string(),
            crate::plan::nft::SCRIPT_ARGS.map(String::from).to_vec(),
        ),
    }
}

/// The input of one `iptables-restore --noflush` transaction running
/// `commands` (one family and table, as [`crate::kernel::transactions`]
/// groups them).
///
/// Inside one atomic transaction nothing sees the steps, so any sequence
/// that leaves each chain the same is as good, and this one leaves out
/// every rule the batch inserts and deletes again (a move's temporary
/// copy), numbering the other commands as that chain stands without it.
/// It must: iptables-nft 1.8.9 refuses a whole transaction in which an
/// `-I CHAIN N` (N > 1) lands just in front of a rule that the same
/// transaction inserted and deletes later (`RULE_INSERT failed (No such
/// file or directory)`): the insert names that rule as its position, and
/// the delete takes the rule out of the batch before it reaches the kernel.
/// The plan still shows its commands as they are (the temp-rule trick of
/// the spec); only the kernel's input is shorter.
pub fn iptables_restore_input(commands: &[&Command]) -> String {
    // Commands are `-w -t TABLE OP ...`; a restore file names the table
    // once and takes the rest of each line as is.
    let table = commands
        .first()
        .and_then(|c| c.args.get(2))
        .map_or("", String::as_str);
    let mut text = format!("*{table}\n");
    for line in net_edit(commands) {
        text.push_str(&crate::state::rule::restore_line(&line));
        text.push('\n');
    }
    text.push_str("COMMIT\n");
    text
}

/// What one command does to the numbers of its chain's rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Edit {
    /// Inserts a rule in front of rule N (1-based).
    Insert(usize),
    /// Deletes rule N, by its number or by its text.
    Delete(usize),
    /// Leaves every rule where it is (`-N`, `-X`, `-P`).
    Still,
    /// Anything else (`-A`, `-F`, a delete whose place is not known): its
    /// chain's commands are left as they are.
    Unknown,
}

/// A command's edit, and the text of the rule it inserts or deletes.
/// The undo of a planned delete puts the rule back where it stood
/// (`-I CHAIN N RULE`): that is where the delete acts, and what it deletes.
fn edit(c: &Command) -> (Edit, Option<&[String]>) {
    let a = &c.args;
    let number = |v: &[String], i: usize| {
        v.get(i)
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|&n| n > 0)
    };
    let undo = c.undo.as_deref().unwrap_or(&[]);
    let put_back = (undo.get(3).map(String::as_str) == Some("-I") && undo.get(4) == a.get(4))
        .then(|| number(undo, 5))
        .flatten();
    match a.get(3).map(String::as_str) {
        Some("-I") => match number(a, 5) {
            Some(n) => (Edit::Insert(n), a.get(6..)),
            None => (Edit::Unknown, None),
        },
        Some("-D") => match (number(a, 5), a.len(), put_back) {
            (Some(n), 6, Some(m)) if m == n => (Edit::Delete(n), undo.get(6..)),
            (None, _, Some(m)) if a.len() > 5 && undo.get(6..) == a.get(5..) => {
                (Edit::Delete(m), a.get(5..))
            }
            _ => (Edit::Unknown, None),
        },
        Some("-N" | "-X" | "-P") => (Edit::Still, None),
        _ => (Edit::Unknown, None),
    }
}

/// The arguments (after `-w -t TABLE`) of the commands that reach the same
/// chains as `commands`, without the rules inserted and deleted again. A
/// chain with a command of unknown effect is left as it is.
fn net_edit<'a>(commands: &[&'a Command]) -> Vec<std::borrow::Cow<'a, [String]>> {
    let edits: Vec<(Edit, Option<&[String]>)> = commands.iter().map(|c| edit(c)).collect();
    let fleeting = fleeting(commands, &edits);
    renumbered(commands, &edits, &fleeting)
}

/// The chain a command (`-w -t TABLE OP CHAIN ...`) edits.
fn chain_of(c: &Command) -> &str {
    c.args.get(4).map_or("", String::as_str)
}

/// Which inserts and deletes are of a rule the batch inserts and deletes
/// again: each followed rule's place, as commands run.
fn fleeting(commands: &[&Command], edits: &[(Edit, Option<&[String]>)]) -> Vec<bool> {
    use std::collections::HashMap;
    // The last delete of each text in each chain: only a rule inserted
    // before a delete of its own text can be deleted again, so only those
    // are followed (a chain of 50,000 new rules is not scanned per rule).
    let mut last_delete: HashMap<(&str, &[String]), usize> = HashMap::new();
    for (k, (c, (e, text))) in commands.iter().zip(edits).enumerate() {
        if let (Edit::Delete(_), Some(text)) = (e, text) {
            last_delete.insert((chain_of(c), text), k);
        }
    }
    let mut fleeting = vec![false; commands.len()];
    let mut followed: HashMap<&str, Vec<(usize, usize)>> = HashMap::new();
    for (k, (c, (e, text))) in commands.iter().zip(edits).enumerate() {
        let here = followed.entry(chain_of(c)).or_default();
        match *e {
            Edit::Insert(n) => {
                shift(here.iter_mut().map(|(_, at)| at), n, true);
                let again = text.and_then(|t| last_delete.get(&(chain_of(c), t)));
                if again.is_some_and(|&d| d > k) {
                    here.push((k, n));
                }
            }
            Edit::Delete(n) => {
                if let Some(i) = here.iter().position(|&(_, at)| at == n) {
                    let (inserted, _) = here.swap_remove(i);
                    fleeting[inserted] = true;
                    fleeting[k] = true;
                }
                shift(here.iter_mut().map(|(_, at)| at), n, false);
            }
            Edit::Still | Edit::Unknown => {}
        }
    }
    fleeting
}

/// The commands that stay (not `fleeting`), numbered as if the fleeting
/// rules were never there: less one for each of them above. A chain with a
/// command of unknown effect is left as it is.
fn renumbered<'a>(
    commands: &[&'a Command],
    edits: &[(Edit, Option<&[String]>)],
    fleeting: &[bool],
) -> Vec<std::borrow::Cow<'a, [String]>> {
    use std::borrow::Cow;
    use std::collections::{HashMap, HashSet};
    let unknown: HashSet<&str> = (commands.iter().zip(edits))
        .filter(|(_, (e, _))| *e == Edit::Unknown)
        .map(|(c, _)| chain_of(c))
        .collect();
    let mut out = Vec::with_capacity(commands.len());
    let mut present: HashMap<&str, Vec<usize>> = HashMap::new();
    for (k, (c, (e, _))) in commands.iter().zip(edits).enumerate() {
        let args = c.args.get(3..).unwrap_or(&[]);
        if unknown.contains(chain_of(c)) {
            out.push(Cow::Borrowed(args));
            continue;
        }
        let here = present.entry(chain_of(c)).or_default();
        let (n, insert) = match *e {
            Edit::Insert(n) => (n, true),
            Edit::Delete(n) => (n, false),
            Edit::Still | Edit::Unknown => {
                out.push(Cow::Borrowed(args));
                continue;
            }
        };
        let above = here.iter().filter(|&&at| at < n).count();
        if !insert && fleeting[k] {
            here.retain(|&at| at != n);
        }
        shift(here.iter_mut(), n, insert);
        if fleeting[k] {
            if insert {
                here.push(n);
            }
            continue;
        }
        let numbered = insert || c.args.len() == 6;
        if numbered && above > 0 {
            let mut line = args.to_vec();
            line[2] = (n - above).to_string();
            out.push(Cow::Owned(line));
        } else {
            out.push(Cow::Borrowed(args));
        }
    }
    out
}

/// The new places of rules at `places` once a rule is inserted in front
/// of rule `n` (`insert`), or rule `n` is deleted.
fn shift<'p>(places: impl Iterator<Item = &'p mut usize>, n: usize, insert: bool) {
    for at in places {
        if insert && *at >= n {
            *at += 1;
        } else if !insert && *at > n {
            *at -= 1;
        }
    }
}

/// How many `add`s to the set that command `i` creates follow it: a fill.
/// Only a `create` can start one (counting the adds after every add would
/// make a run of n adds cost n² comparisons), and not of a set of pyfw's
/// own making (`_pyfw_...`).
fn fill_adds(commands: &[&Command], i: usize) -> usize {
    let args = &commands[i].args;
    let op = args.first().map(String::as_str);
    let name = args.get(1).map(String::as_str).unwrap_or("");
    match op {
        Some("create") if !name.starts_with("_pyfw_") => commands[i + 1..]
            .iter()
            .take_while(|c| {
                c.args.first().map(String::as_str) == Some("add")
                    && c.args.get(1).map(String::as_str) == Some(name)
            })
            .count(),
        _ => 0,
    }
}

/// New sets are filled under this prefix, then renamed into place.
pub const FILL_PREFIX: &str = "_pyfw_fill_";

/// A run of ipset commands as the input of one `ipset restore -exist`.
///
/// A set the run creates and fills is created under a temporary name
/// ([`FILL_PREFIX`]), filled, and only then renamed to its own name, so the
/// wished name never names a half-filled set: if the restore stops
/// part-way, that name does not exist at all and nothing of the set needs
/// undoing, and a set of 100,000 members is never rolled back member by
/// member. A leftover temporary set (from a pyfw killed mid-restore) is
/// destroyed first; `-exist` makes that a no-op when there is none. Sets
/// that change type or options are rebuilt the same way by the planner and
/// swapped in (`plan::plan_ipset`). The plan still lists the commands as
/// the spec writes them (`ipset create NAME`, `ipset add NAME ...`).
///
/// The input is written as the tool reads it ([`RestoreScript::write`]),
/// from the commands themselves: a 100,000-member fill is some 3 MB of
/// text, which is never held whole. A run of member commands
/// ([`Command::members`]) is a line per member. Input lines are numbered
/// as the plan numbers commands, a run counting as its members
/// ([`RestoreScript::command_at`]).
#[derive(Clone, Debug)]
pub struct RestoreScript<'a> {
    commands: &'a [&'a Command],
    /// What each stretch of input lines is, in order.
    spans: Vec<Span>,
    /// Each temporary set and its lines (0-based), creation to rename.
    fills: Vec<(String, std::ops::Range<usize>)>,
}

/// A stretch of input lines.
#[derive(Clone, Debug)]
struct Span {
    /// Its lines (0-based).
    lines: std::ops::Range<usize>,
    /// The batch's numbered commands that had taken effect before it (a
    /// run's member counts as one; a fill's lines all count from its
    /// `create`), and whether each line of it adds one (a command's lines)
    /// or none (a fill's lines).
    done_before: usize,
    each: bool,
    what: Piece,
}

#[derive(Clone, Debug)]
enum Piece {
    /// Command `index`'s line, or lines (a run), with the set name (the
    /// second word) replaced by `rename` when given.
    Command {
        index: usize,
        rename: Option<String>,
    },
    /// A line of the script's own (a fill's `destroy` and `rename`).
    Own(Vec<String>),
}

impl<'a> RestoreScript<'a> {
    pub fn new(commands: &'a [&'a Command]) -> RestoreScript<'a> {
        let mut out = RestoreScript {
            commands,
            spans: Vec::with_capacity(commands.len() + 2),
            fills: Vec::new(),
        };
        // Numbered commands before each command.
        let mut numbered = Vec::with_capacity(commands.len());
        let mut n = 0;
        for c in commands {
            numbered.push(n);
            n += c.count();
        }
        let mut i = 0;
        while i < commands.len() {
            let adds = fill_adds(commands, i);
            if adds == 0 {
                let piece = Piece::Command {
                    index: i,
                    rename: None,
                };
                out.push(commands[i].count(), numbered[i], true, piece);
                i += 1;
                continue;
            }
            out.push_fill(i, adds, numbered[i]);
            i += adds + 1;
        }
        out
    }

    /// The next `lines` input lines are `what`; returns the line after
    /// them.
    fn push(&mut self, lines: usize, done_before: usize, each: bool, what: Piece) -> usize {
        let line = self.spans.last().map_or(0, |s| s.lines.end);
        self.spans.push(Span {
            lines: line..line + lines,
            done_before,
            each,
            what,
        });
        line + lines
    }

    /// Commands `i..=i + adds`, a `create` and the `add`s that fill it,
    /// under the set's temporary name: destroyed first, renamed last.
    fn push_fill(&mut self, i: usize, adds: usize, done: usize) {
        let commands = self.commands;
        let name = commands[i].args.get(1).map(String::as_str).unwrap_or("");
        let mut tmp = format!("{FILL_PREFIX}{name}");
        tmp.truncate(31);
        let own = |words: &[&str]| Piece::Own(words.iter().map(|w| w.to_string()).collect());
        // A restore stopped at the `destroy` left no temporary set: the
        // set's lines start after it.
        let first = self.push(1, done, false, own(&["destroy", &tmp]));
        for (k, c) in commands[i..=i + adds].iter().enumerate() {
            let piece = Piece::Command {
                index: i + k,
                rename: Some(tmp.clone()),
            };
            self.push(c.count(), done, false, piece);
        }
        let end = self.push(1, done, false, own(&["rename", &tmp, name]));
        self.fills.push((tmp, first..end));
    }

    /// Writes the input, a line at a time, into `to` (buffered here).
    pub fn write(&self, to: &mut dyn std::io::Write) -> std::io::Result<()> {
        let mut out = std::io::BufWriter::with_capacity(1 << 16, to);
        let mut line = String::new();
        let mut words: Vec<&str> = Vec::new();
        for span in &self.spans {
            match &span.what {
                Piece::Own(own) => {
                    words.clear();
                    words.extend(own.iter().map(String::as_str));
                    write_line(&mut out, &mut line, &words)?;
                }
                Piece::Command { index, rename } => {
                    let c = self.commands[*index];
                    words.clear();
                    words.extend(c.args.iter().map(String::as_str));
                    if let (Some(name), Some(word)) = (rename, words.get_mut(1)) {
                        *word = name;
                    }
                    if !c.is_run() {
                        write_line(&mut out, &mut line, &words)?;
                        continue;
                    }
                    let ops = words.len();
                    for member in c.members.iter() {
                        words.truncate(ops);
                        words.extend(crate::state::set_type::member_words(member));
                        write_line(&mut out, &mut line, &words)?;
                    }
                }
            }
        }
        std::io::Write::flush(&mut out)
    }

    /// The whole input as text (for tests and small batches).
    pub fn text(&self) -> String {
        let mut bytes = Vec::new();
        // Writing into memory does not fail.
        let _ = self.write(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// How many of the batch's numbered commands took effect when the
    /// restore stopped at input line `line` (1-based, as ipset reports
    /// it).
    pub fn applied_before(&self, line: usize) -> usize {
        self.command_at(line).unwrap_or(0)
    }

    /// The numbered command (0-based, within the batch, a run counting as
    /// its members) that input line `line` (1-based, as ipset reports it)
    /// came from; a fill's lines all come from its `create`.
    pub fn command_at(&self, line: usize) -> Option<usize> {
        let l = line.checked_sub(1)?;
        let at = self.spans.partition_point(|s| s.lines.end <= l);
        let span = self.spans.get(at).filter(|s| s.lines.contains(&l))?;
        Some(match span.each {
            true => span.done_before + (l - span.lines.start),
            false => span.done_before,
        })
    }

    /// Temporary sets a restore that stopped at `line` (1-based; `None`:
    /// unknown) may have left behind.
    pub fn leftovers(&self, line: Option<usize>) -> Vec<&str> {
        self.fills
            .iter()
            .filter(|(_, lines)| line.is_none_or(|l| lines.contains(&(l.saturating_sub(1)))))
            .map(|(tmp, _)| tmp.as_str())
            .collect()
    }

    /// Whether a run of commands fills a new set under a temporary name.
    pub fn fills(commands: &[&Command]) -> bool {
        commands.windows(2).any(|w| {
            let (a, b) = (&w[0].args, &w[1].args);
            a.first().is_some_and(|op| op == "create")
                && b.first().is_some_and(|op| op == "add")
                && a.get(1).is_some_and(|n| !n.starts_with("_pyfw_"))
                && a.get(1) == b.get(1)
        })
    }
}

/// One `ipset restore` line of `words`, through the reused `line`.
fn write_line(
    out: &mut impl std::io::Write,
    line: &mut String,
    words: &[&str],
) -> std::io::Result<()> {
    line.clear();
    for (i, w) in words.iter().enumerate() {
        if i > 0 {
            line.push(' ');
        }
        push_word(line, w);
    }
    line.push('\n');
    out.write_all(line.as_bytes())
}

/// One word of an `ipset restore` line. ipset reads a line as words apart
/// by blanks, where each `"` opens or closes a quoted run and nothing is
/// escaped (a backslash is itself): a word with blanks goes in double
/// quotes, and a word is otherwise written as it is. No word can hold a
/// `"` (ipset refuses it in a comment; the wishes refuse it in a set
/// name), nor be empty (ipset drops an empty word).
fn push_word(out: &mut String, word: &str) {
    let plain = !word.is_empty() && !word.bytes().any(|b| b.is_ascii_whitespace());
    if plain {
        out.push_str(word);
    } else {
        out.push('"');
        out.push_str(word);
        out.push('"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipset(args: &str) -> Command {
        Command {
            program: Program::Ipset,
            args: args.split(' ').map(String::from).collect(),
            undo: None,
            reason: String::new(),
            target: String::new(),
            wish: None,
            members: Default::default(),
        }
    }

    #[test]
    fn a_new_set_is_filled_under_a_temporary_name_then_renamed() {
        let commands: Vec<_> = [
            "del old 10.0.0.9",
            "create allowed hash:ip maxelem 131072",
            "add allowed 10.0.0.1",
            "add allowed 10.0.0.2",
            "create empty hash:ip",
            "add other 10.0.0.3",
        ]
        .map(ipset)
        .to_vec();
        let refs: Vec<&Command> = commands.iter().collect();
        let script = RestoreScript::new(&refs);
        assert_eq!(
            script.text(),
            "del old 10.0.0.9\n\
             destroy _pyfw_fill_allowed\n\
             create _pyfw_fill_allowed hash:ip maxelem 131072\n\
             add _pyfw_fill_allowed 10.0.0.1\n\
             add _pyfw_fill_allowed 10.0.0.2\n\
             rename _pyfw_fill_allowed allowed\n\
             create empty hash:ip\n\
             add other 10.0.0.3\n"
        );
        assert!(RestoreScript::fills(&refs));
        assert!(!RestoreScript::fills(&refs[4..]));
        // Stopped within the fill (lines 2-6): the `create` (command 1)
        // failed; only the `del` took effect, and the temporary set may be
        // left.
        for line in 2..=6 {
            assert_eq!(script.command_at(line), Some(1), "line {line}");
        }
        assert_eq!(script.leftovers(Some(4)), ["_pyfw_fill_allowed"]);
        assert_eq!(script.leftovers(Some(2)), Vec::<&str>::new());
        assert_eq!(script.leftovers(None), ["_pyfw_fill_allowed"]);
        // Stopped after it: the whole set took effect.
        assert_eq!(script.command_at(7), Some(4));
        assert_eq!(script.command_at(8), Some(5));
        assert_eq!(script.command_at(99), None);
        assert_eq!(script.leftovers(Some(8)), Vec::<&str>::new());
        // pyfw's own temporaries (a swap's replacement) are left as they are.
        let swap = [
            "create _pyfw_temp_x hash:net",
            "add _pyfw_temp_x 10.0.0.0/8",
        ]
        .map(ipset);
        let refs: Vec<&Command> = swap.iter().collect();
        assert!(!RestoreScript::new(&refs).text().contains("fill"));
    }

    /// A run of member commands is written, and its lines numbered, as
    /// the commands it stands for, inside a fill and out of one.
    #[test]
    fn a_run_is_written_and_numbered_as_its_members() {
        let run = |args: &str, members: &[&str]| {
            let mut c = ipset(args);
            c.members = members.iter().copied().collect();
            c
        };
        let commands = [
            ipset("create allowed hash:ip"),
            run(
                "add allowed",
                &["10.0.0.1", "10.0.0.2 comment \"a b\"", "10.0.0.3"],
            ),
            ipset("add other 10.9.9.9"),
            run("del other", &["10.0.1.1", "10.0.1.2"]),
            ipset("del other 10.0.2.1"),
        ];
        let runs: Vec<&Command> = commands.iter().collect();
        let each: Vec<Command> = commands.iter().flat_map(Command::expand).collect();
        assert_eq!(each.len(), 8);
        let each: Vec<&Command> = each.iter().collect();
        let (script, plain) = (RestoreScript::new(&runs), RestoreScript::new(&each));
        assert_eq!(script.text(), plain.text());
        assert!(
            script
                .text()
                .contains("add _pyfw_fill_allowed 10.0.0.2 comment \"a b\"\n"),
            "{}",
            script.text()
        );
        let lines = script.text().lines().count();
        for line in 0..=lines + 1 {
            assert_eq!(
                script.command_at(line),
                plain.command_at(line),
                "line {line}"
            );
            assert_eq!(script.leftovers(Some(line)), plain.leftovers(Some(line)));
        }
        // The second member deleted is numbered 7 (0-based 6), on line 9.
        assert_eq!(script.command_at(9), Some(6));
    }

    /// A planned iptables command on filter/INPUT: `line` after `-w -t
    /// filter`, its undo likewise.
    fn ipt(line: &str, undo: &str) -> Command {
        let words = |l: &str| -> Vec<String> {
            ["-w", "-t", "filter"]
                .into_iter()
                .map(String::from)
                .chain(crate::state::rule::Rule::parse(l).unwrap().args().to_vec())
                .collect()
        };
        Command {
            program: Program::Iptables(Family::V4),
            args: words(line),
            undo: Some(words(undo)),
            reason: String::new(),
            target: String::new(),
            wish: None,
            members: Default::default(),
        }
    }

    fn restore_text(commands: &[Command]) -> String {
        iptables_restore_input(&commands.iter().collect::<Vec<_>>())
    }

    const T: &str = "-s 10.0.0.1/32 -m comment --comment _pyfw_temp_a -j ACCEPT";
    const A: &str = "-s 10.0.0.1/32 -m comment --comment a -j ACCEPT";
    const BAN: &str = "-s 203.0.113.7/32 -j DROP";
    const BAN_T: &str = "-s 203.0.113.7/32 -m comment --comment _pyfw_temp_~ -j DROP";

    #[test]
    fn a_moves_temporary_copy_never_reaches_the_kernel() {
        // The spec's move up: rule 6 to 1.
        let spec = [
            ipt(&format!("-I INPUT 1 {T}"), &format!("-D INPUT {T}")),
            ipt(&format!("-D INPUT {A}"), &format!("-I INPUT 7 {A}")),
            ipt(&format!("-I INPUT 1 {A}"), &format!("-D INPUT {A}")),
            ipt(&format!("-D INPUT {T}"), &format!("-I INPUT 2 {T}")),
        ];
        assert_eq!(
            restore_text(&spec),
            format!("*filter\n-D INPUT {A}\n-I INPUT 1 {A}\nCOMMIT\n")
        );
    }

    #[test]
    fn a_twin_moved_up_is_deleted_by_its_number_without_the_copy() {
        // Rules 1-2 placed; the twin of rule 1 moves from 8 to 3, its copy
        // in between: `-I INPUT 3 BAN` would land in front of the copy,
        // which nft refuses.
        let twin = [
            ipt(&format!("-I INPUT 3 {BAN_T}"), &format!("-D INPUT {BAN_T}")),
            ipt("-D INPUT 8", &format!("-I INPUT 8 {BAN}")),
            ipt(&format!("-I INPUT 3 {BAN}"), "-D INPUT 3"),
            ipt(&format!("-D INPUT {BAN_T}"), &format!("-I INPUT 4 {BAN_T}")),
            ipt("-I INPUT 4 -p udp -j ACCEPT", "-D INPUT -p udp -j ACCEPT"),
        ];
        assert_eq!(
            restore_text(&twin),
            format!("*filter\n-D INPUT 7\n-I INPUT 3 {BAN}\n-I INPUT 4 -p udp -j ACCEPT\nCOMMIT\n")
        );
    }

    #[test]
    fn commands_between_a_copy_and_its_removal_are_numbered_without_it() {
        let cmds = [
            // A copy at 2; another rule goes in front of it, then one
            // below it; a rule above it goes; then the copy.
            ipt(&format!("-I INPUT 2 {T}"), &format!("-D INPUT {T}")),
            ipt("-I INPUT 2 -p tcp -j ACCEPT", "-D INPUT -p tcp -j ACCEPT"),
            ipt("-I INPUT 5 -p udp -j ACCEPT", "-D INPUT -p udp -j ACCEPT"),
            ipt("-D INPUT 1", "-I INPUT 1 -p icmp -j ACCEPT"),
            ipt(&format!("-D INPUT {T}"), &format!("-I INPUT 2 {T}")),
            ipt("-I INPUT 3 -p sctp -j ACCEPT", "-D INPUT -p sctp -j ACCEPT"),
        ];
        assert_eq!(
            restore_text(&cmds),
            "*filter\n-I INPUT 2 -p tcp -j ACCEPT\n-I INPUT 4 -p udp -j ACCEPT\n\
             -D INPUT 1\n-I INPUT 3 -p sctp -j ACCEPT\nCOMMIT\n"
        );
    }

    #[test]
    fn a_chain_with_a_command_of_unknown_effect_is_left_as_it_is() {
        let mut append = ipt("-A INPUT -p tcp -j ACCEPT", "-D INPUT -p tcp -j ACCEPT");
        append.undo = None;
        let cmds = [
            ipt(&format!("-I INPUT 2 {T}"), &format!("-D INPUT {T}")),
            append,
            ipt(&format!("-D INPUT {T}"), &format!("-I INPUT 2 {T}")),
        ];
        assert_eq!(
            restore_text(&cmds),
            format!("*filter\n-I INPUT 2 {T}\n-A INPUT -p tcp -j ACCEPT\n-D INPUT {T}\nCOMMIT\n")
        );
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
        // nft, a rule the kernel refuses when the transaction commits.
        assert_eq!(
            restore_error_line(
                "iptables-restore v1.8.9 (nf_tables): \nline 3: RULE_INSERT failed (Invalid \
                 argument): rule in chain PREROUTING"
            ),
            Some(3)
        );
        assert_eq!(restore_error_line("something else"), None);
    }
}
