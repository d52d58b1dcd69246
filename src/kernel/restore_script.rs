//! The text pyfw hands to `iptables-restore` and `ipset restore`: pure
//! functions of a batch of planned commands.

use crate::plan::{Command, Program};
use crate::state::Family;
use crate::state::rule::Rule;

/// The input line an `iptables-restore` failure names: nft says `Error
/// occurred at line: N` for a rule it cannot parse and `line N:
/// RULE_APPEND failed (Invalid argument): ...` for one the kernel refuses
/// at commit; legacy says `iptables-restore: line N failed`.
pub(crate) fn restore_error_line(stderr: &str) -> Option<usize> {
    stderr.lines().find_map(|l| {
        let n = match l.strip_prefix("Error occurred at line: ") {
            Some(n) => n,
            None => match l.strip_prefix("line ") {
                Some(rest) => rest.split(':').next()?,
                None => l.split(": line ").nth(1)?.strip_suffix(" failed")?,
            },
        };
        n.trim().parse().ok()
    })
}

/// What an `iptables-restore` failure says, in one line: its first line,
/// or, when that is only the version banner (`iptables-restore v1.8.9
/// (nf_tables): ` before a commit error on the next line), the two.
pub(crate) fn restore_error_message(stderr: &str) -> String {
    let mut lines = stderr.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or("");
    match (first.ends_with(':'), lines.next()) {
        (true, Some(next)) => format!("{first} {next}"),
        _ => first.to_string(),
    }
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
    }
}

/// The program, arguments and input that run `commands` as one batch.
pub(crate) fn batch_input(
    restore: impl Fn(Family) -> String,
    commands: &[&Command],
) -> (String, Vec<String>, String) {
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
                    text.push_str(&crate::state::rule::restore_line(
                        c.args.get(3..).unwrap_or(&[]),
                    ));
                    text.push('\n');
                }
            }
            text.push_str("COMMIT\n");
            let args = ["--noflush", "--wait"].map(String::from).to_vec();
            (restore(family), args, text)
        }
        Program::Ipset => {
            let (program, args) = batch_program(restore, commands);
            (
                program,
                args,
                crate::kernel::restore_script::RestoreScript::new(commands).text,
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
#[derive(Clone, Debug, Default)]
pub struct RestoreScript {
    pub text: String,
    /// For each input line, how many of the commands had taken effect
    /// before it.
    done_before: Vec<usize>,
    /// Each temporary set and its lines (0-based), creation to rename.
    fills: Vec<(String, std::ops::Range<usize>)>,
}

impl RestoreScript {
    pub fn new(commands: &[&Command]) -> RestoreScript {
        // Sized up front: a 100,000-member fill is some 3 MB of text, which
        // doubling its way up would copy and fault in several times over.
        let words: usize = commands.iter().map(|c| c.args.len()).sum();
        let bytes: usize = commands.iter().flat_map(|c| &c.args).map(String::len).sum();
        let mut out = RestoreScript {
            text: String::with_capacity(bytes + words + 128),
            done_before: Vec::with_capacity(commands.len() + 2),
            fills: Vec::new(),
        };
        // One line: `args`, with the set name (the second word) replaced by
        // `name` when given.
        let line = |out: &mut RestoreScript, args: &[&str], name: Option<&str>, before: usize| {
            for (i, a) in args.iter().enumerate() {
                if i > 0 {
                    out.text.push(' ');
                }
                let a = match (i, name) {
                    (1, Some(n)) => n,
                    _ => a,
                };
                push_word(&mut out.text, a);
            }
            out.text.push('\n');
            out.done_before.push(before);
        };
        let mut words: Vec<&str> = Vec::new();
        let mut i = 0;
        while i < commands.len() {
            let args = &commands[i].args;
            let op = args.first().map(String::as_str);
            let name = args.get(1).map(String::as_str).unwrap_or("");
            // Only a `create` can start a fill: counting the adds after
            // every add would make a run of n adds cost n² comparisons.
            let adds = match op {
                Some("create") if !name.starts_with("_pyfw_") => commands[i + 1..]
                    .iter()
                    .take_while(|c| {
                        c.args.first().map(String::as_str) == Some("add")
                            && c.args.get(1).map(String::as_str) == Some(name)
                    })
                    .count(),
                _ => 0,
            };
            if adds == 0 {
                words.clear();
                words.extend(args.iter().map(String::as_str));
                line(&mut out, &words, None, i);
                i += 1;
                continue;
            }
            let mut tmp = format!("{FILL_PREFIX}{name}");
            tmp.truncate(31);
            line(&mut out, &["destroy", &tmp], None, i);
            let first = out.done_before.len();
            for c in &commands[i..=i + adds] {
                words.clear();
                words.extend(c.args.iter().map(String::as_str));
                line(&mut out, &words, Some(&tmp), i);
            }
            line(&mut out, &["rename", &tmp, name], None, i);
            out.fills.push((tmp.clone(), first..out.done_before.len()));
            i += adds + 1;
        }
        out
    }

    /// How many commands took effect when the restore stopped at input
    /// line `line` (1-based, as ipset reports it).
    pub fn applied_before(&self, line: usize) -> usize {
        line.checked_sub(1)
            .and_then(|l| self.done_before.get(l))
            .copied()
            .unwrap_or(0)
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

/// [`crate::state::rule::push_restore_word`], with the common case (a word of
/// printable ASCII that needs no quotes: a member, a set name) checked a
/// byte at a time rather than a character at a time.
fn push_word(out: &mut String, word: &str) {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'\'' | b'\\'));
    if plain {
        out.push_str(word);
    } else {
        crate::state::rule::push_restore_word(out, word);
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
            script.text,
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
        // Stopped within the fill (lines 2-6): only the `del` took effect,
        // and the temporary set may be left.
        for line in 2..=6 {
            assert_eq!(script.applied_before(line), 1, "line {line}");
        }
        assert_eq!(script.leftovers(Some(4)), ["_pyfw_fill_allowed"]);
        assert_eq!(script.leftovers(Some(2)), Vec::<&str>::new());
        assert_eq!(script.leftovers(None), ["_pyfw_fill_allowed"]);
        // Stopped after it: the whole set took effect.
        assert_eq!(script.applied_before(7), 4);
        assert_eq!(script.applied_before(8), 5);
        assert_eq!(script.leftovers(Some(8)), Vec::<&str>::new());
        // pyfw's own temporaries (a swap's replacement) are left as they are.
        let swap = [
            "create _pyfw_temp_x hash:net",
            "add _pyfw_temp_x 10.0.0.0/8",
        ]
        .map(ipset);
        let refs: Vec<&Command> = swap.iter().collect();
        assert!(!RestoreScript::new(&refs).text.contains("fill"));
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
        assert_eq!(
            restore_error_line(
                "iptables-restore v1.8.9 (nf_tables): \nline 3: RULE_APPEND failed (Invalid \
                 argument): rule in chain _pyfw_canon_1"
            ),
            Some(3)
        );
        assert_eq!(restore_error_line("something else"), None);
        assert_eq!(
            restore_error_message(
                "iptables-restore v1.8.9 (nf_tables): \nline 3: RULE_APPEND failed (Invalid \
                 argument): rule in chain X\n"
            ),
            "iptables-restore v1.8.9 (nf_tables): line 3: RULE_APPEND failed (Invalid argument): \
             rule in chain X"
        );
        assert_eq!(
            restore_error_message("iptables v1.8.9 (nf_tables): Bad ctstate \"BOGUS\"\nTry"),
            "iptables v1.8.9 (nf_tables): Bad ctstate \"BOGUS\""
        );
    }
}
