//! Long runs of plain set members, lifted out of a wishes file before the
//! YAML parse.
//!
//! serde-saphyr spends about 5,700 instructions on each `- 10.0.0.1` line
//! (callgrind: scanning, events, budget, spans), so a 100,000-address
//! allow-list took 90-130 ms to parse, more than the kernel took to list
//! the set. Such a line needs none of that: a run of them says one thing.
//!
//! A run is only what it looks like if the parser agrees, so the parser
//! still decides. Each run of [`MIN_RUN`] or more lines, at one indent,
//! each a `- ` entry holding a plain value made of the characters of an
//! address (hex digits, `.`, `:`, `/`, `,`, `-`), is replaced by one entry
//! holding a marker, followed by blank lines, so that every line keeps its
//! number. The members visitor puts a run back where it meets its marker.
//! A marker found anywhere else (the lines were a block scalar's text, say)
//! or not at all leaves its run unclaimed, and the file is then read again
//! in full (see `wishes::parse`).
//!
//! Such a value reads the same whatever the schema: serde-saphyr hands a
//! plain scalar to a `String` verbatim (`010` stays `010`), and none of
//! these characters can start a comment, a mapping key (a value ending in
//! `:` is refused), an anchor, an alias or a tag.

use std::cell::RefCell;

use crate::state::Members;

/// What a marker starts with; a file that contains it is not lifted.
const MARK: &str = "pyfw-lifted-members-";

/// Shorter runs are left to the parser: lifting them saves less than the
/// scan costs.
pub(super) const MIN_RUN: usize = 64;

/// A wishes file with its long runs of members replaced by markers.
pub(super) struct Lifted {
    /// The text the parser reads.
    pub text: String,
    /// Each run's values, in order, found by its marker's number.
    runs: Vec<Members>,
    /// Entries the parser no longer sees (each run less its marker).
    pub hidden_nodes: usize,
    /// The bytes of the values it no longer sees.
    pub hidden_bytes: usize,
}

thread_local! {
    /// The runs of the parse under way on this thread (see [`with_runs`]).
    static RUNS: RefCell<Vec<Option<Members>>> = const { RefCell::new(Vec::new()) };
}

/// `text` with every run of at least `min_run` plain members lifted out;
/// `None` when there is none. The values are gathered compactly as the
/// text is scanned (a 1,000,000-member list took 100 MB as a line list,
/// an entry list and a string per value; it takes 23 MB as [`Members`]).
pub(super) fn lift(text: &str, min_run: usize) -> Option<Lifted> {
    if text.contains(MARK) {
        return None;
    }
    let line_at = |pos: usize| {
        let end = text[pos..].find('\n').map_or(text.len(), |at| pos + at + 1);
        (&text[pos..end], end)
    };
    let mut out = String::with_capacity(text.len());
    let mut runs = Vec::new();
    let (mut hidden_nodes, mut hidden_bytes) = (0, 0);
    let mut pos = 0;
    while pos < text.len() {
        let (line, mut end) = line_at(pos);
        let Some((indent, value)) = entry(line) else {
            out.push_str(line);
            pos = end;
            continue;
        };
        let first_end = end;
        let mut run = Members::new();
        run.push(value);
        while end < text.len() {
            let (next, next_end) = line_at(end);
            match entry(next) {
                Some((at, value)) if at == indent => run.push(value),
                _ => break,
            }
            end = next_end;
        }
        if run.len() < min_run {
            out.push_str(&text[pos..end]);
            pos = end;
            continue;
        }
        hidden_nodes += run.len() - 1;
        hidden_bytes += run.bytes();
        out.push_str(&" ".repeat(indent));
        out.push_str(&format!("- {MARK}{}\n", runs.len()));
        // Every line keeps its number.
        let breaks = text[first_end..end].bytes().filter(|&b| b == b'\n').count();
        out.extend(std::iter::repeat_n('\n', breaks));
        run.shrink_to_fit();
        runs.push(run);
        pos = end;
    }
    (!runs.is_empty()).then_some(Lifted {
        text: out,
        runs,
        hidden_nodes,
        hidden_bytes,
    })
}

/// A line `INDENT- VALUE` (spaces only, trailing spaces allowed) whose
/// value is plain and made of an address's characters: its indent and
/// value.
fn entry(line: &str) -> Option<(usize, &str)> {
    let line = line
        .strip_suffix('\n')
        .unwrap_or(line)
        .trim_end_matches(' ');
    let rest = line.trim_start_matches(' ');
    let indent = line.len() - rest.len();
    let value = rest.strip_prefix("- ")?.trim_start_matches(' ');
    let first = value.bytes().next()?;
    let plain = first.is_ascii_hexdigit()
        && !value.ends_with(':')
        && value
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b".:/,-".contains(&b));
    plain.then_some((indent, value))
}

/// Runs `parse` with `lifted`'s runs at hand for [`claim`]; `None` when it
/// left a run unclaimed, whatever it returned, since its result then does
/// not hold every member.
pub(super) fn with_runs<T>(lifted: Lifted, parse: impl FnOnce(&str) -> T) -> Option<T> {
    let Lifted { text, runs, .. } = lifted;
    RUNS.with(|r| *r.borrow_mut() = runs.into_iter().map(Some).collect());
    let result = parse(&text);
    let whole = RUNS
        .with(|r| std::mem::take(&mut *r.borrow_mut()))
        .iter()
        .all(Option::is_none);
    whole.then_some(result)
}

/// The run a list entry marks, taken (a run is claimed once); `None` when
/// `value` is not a marker of the parse under way.
pub(super) fn claim(value: &str) -> Option<Members> {
    let number: usize = value.strip_prefix(MARK)?.parse().ok()?;
    RUNS.with(|r| r.borrow_mut().get_mut(number)?.take())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_becomes_one_marked_entry_and_keeps_its_lines() {
        let text = "a:\n  - 10.0.0.1\n  - 10.0.0.2  \n  -   10.0.0.3\nb: 1\n";
        let l = lift(text, 3).expect("a run of three");
        assert_eq!(l.text, "a:\n  - pyfw-lifted-members-0\n\n\nb: 1\n");
        assert_eq!(
            l.runs,
            vec![Members::from_iter(["10.0.0.1", "10.0.0.2", "10.0.0.3"])]
        );
        assert_eq!((l.hidden_nodes, l.hidden_bytes), (2, 24));
        assert_eq!(text.lines().count(), l.text.lines().count());
    }

    #[test]
    fn short_runs_and_other_values_are_left_alone() {
        for text in [
            "a:\n  - 10.0.0.1\n  - 10.0.0.2\n",
            "a:\n  - 10.0.0.1\n  - 10.0.0.2 # x\n  - 10.0.0.3\n",
            "a:\n  - 10.0.0.1\n   - 10.0.0.2\n  - 10.0.0.3\n",
            "a:\n  - 10.0.0.1\n  - \"10.0.0.2\"\n  - 10.0.0.3\n",
            "a:\n  - 10.0.0.1\n  - 10.0.0.2:\n  - 10.0.0.3\n",
            "a:\n  - 10.0.0.1\n  - ::1\n  - 10.0.0.3\n",
            "a:\n  - 10.0.0.1\n\t- 10.0.0.2\n  - 10.0.0.3\n",
            "a:\n  - 10.0.0.1\r\n  - 10.0.0.2\r\n  - 10.0.0.3\r\n",
            "a:\n  - 10.0.0.1\n  - null\n  - 10.0.0.3\n",
            "pyfw-lifted-members-0\na:\n  - 1\n  - 2\n  - 3\n",
        ] {
            assert!(lift(text, 3).is_none(), "{text:?}");
        }
    }

    #[test]
    fn runs_are_claimed_once_and_all_must_be() {
        let text = "a:\n  - 1\n  - 2\n# between\n  - 3\n  - 4\n";
        let l = lift(text, 2).expect("two runs");
        let got = with_runs(l, |_| {
            let first = claim("pyfw-lifted-members-1");
            (first, claim("pyfw-lifted-members-1"), claim("10.0.0.1"))
        });
        assert_eq!(got, None, "run 0 was never claimed");
        let l = lift(text, 2).expect("two runs");
        let got = with_runs(l, |_| {
            (
                claim("pyfw-lifted-members-0"),
                claim("pyfw-lifted-members-1"),
            )
        });
        assert_eq!(
            got,
            Some((
                Some(Members::from_iter(["1", "2"])),
                Some(Members::from_iter(["3", "4"]))
            ))
        );
        // Nothing is left behind for the next parse on this thread.
        assert_eq!(claim("pyfw-lifted-members-0"), None);
    }
}
