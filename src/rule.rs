//! One iptables rule as an argument vector.
//!
//! Rules are compared token by token rather than as strings, so that quoting
//! differences (`'! -i docker0'` in YAML against `! -i docker0` in
//! `iptables-save`) never look like drift. Rule text from the wishes file is
//! split with shell-like quoting but is never handed to a shell: every token
//! reaches `iptables` as one argv element.

use std::fmt;
use std::sync::Arc;

/// The `-m comment --comment` value that marks a rule as pyfw's temporary copy
/// during a move (the spec's temp-rule trick).
pub const TEMP_PREFIX: &str = "_pyfw_temp_";

/// An iptables rule specification: everything after `-A CHAIN`.
///
/// Shared, not copied: a planner working on a 50,000-rule chain clones
/// rules freely, and a clone is a reference count.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Rule {
    args: Arc<[String]>,
}

/// Why a rule text could not be split into argv.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    #[error("unbalanced quotes or a trailing backslash")]
    Unbalanced,
    #[error("rule text is empty")]
    Empty,
}

impl Rule {
    /// Splits rule text with shell-like quoting (`--comment "a b"`).
    pub fn parse(text: &str) -> Result<Rule, SplitError> {
        let args = shlex::split(text).ok_or(SplitError::Unbalanced)?;
        if args.is_empty() {
            return Err(SplitError::Empty);
        }
        Ok(Rule { args: args.into() })
    }

    /// Builds a rule from tokens that are already split.
    pub fn from_args(args: Vec<String>) -> Rule {
        Rule { args: args.into() }
    }

    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// Indexes of the values of every `-m comment --comment VALUE`.
    fn comment_indexes(&self) -> impl Iterator<Item = usize> + '_ {
        let mut in_comment_match = false;
        self.args.iter().enumerate().filter_map(move |(i, tok)| {
            if tok == "-m" || tok == "--match" {
                in_comment_match = self.args.get(i + 1).is_some_and(|m| m == "comment");
                None
            } else if in_comment_match && tok == "--comment" && i + 1 < self.args.len() {
                Some(i + 1)
            } else {
                None
            }
        })
    }

    /// The rule's name: the value of its first comment match, if any.
    pub fn comment(&self) -> Option<&str> {
        self.comment_indexes().next().map(|i| self.args[i].as_str())
    }

    /// The same rule carrying `name` as its comment: the existing comment is
    /// replaced, or a comment match is added just before the target, where
    /// `iptables-save` prints a comment given in that position.
    pub fn with_comment(&self, name: &str) -> Rule {
        match self.comment_indexes().next() {
            Some(i) => {
                let mut args = self.args.to_vec();
                args[i] = name.to_string();
                Rule { args: args.into() }
            }
            None => self.with_added_comment(name),
        }
    }

    /// The same rule with one more comment match, just before the target.
    fn with_added_comment(&self, name: &str) -> Rule {
        let mut args = self.args.to_vec();
        let at = args
            .iter()
            .position(|t| t == "-j" || t == "--jump" || t == "-g" || t == "--goto")
            .unwrap_or(args.len());
        let comment = ["-m", "comment", "--comment", name].map(String::from);
        args.splice(at..at, comment);
        Rule { args: args.into() }
    }

    /// The ipsets the rule names (`--match-set`, `--add-set`, `--del-set`).
    pub fn sets(&self) -> impl Iterator<Item = &str> {
        self.args.windows(2).filter_map(|w| {
            matches!(w[0].as_str(), "--match-set" | "--add-set" | "--del-set")
                .then_some(w[1].as_str())
        })
    }

    /// The same rule naming set `to` wherever it names set `from`.
    pub fn with_set_renamed(&self, from: &str, to: &str) -> Rule {
        let mut args = self.args.to_vec();
        for i in 1..args.len() {
            let names_set = matches!(
                args[i - 1].as_str(),
                "--match-set" | "--add-set" | "--del-set"
            );
            if names_set && args[i] == from {
                args[i] = to.to_string();
            }
        }
        Rule { args: args.into() }
    }

    /// The chain or extension the rule jumps or goes to.
    pub fn target(&self) -> Option<&str> {
        self.args
            .windows(2)
            .find(|w| matches!(w[0].as_str(), "-j" | "--jump" | "-g" | "--goto"))
            .map(|w| w[1].as_str())
    }

    /// True for pyfw's temporary copies, which may be left behind by an
    /// interrupted move.
    pub fn is_temp(&self) -> bool {
        self.comment_indexes()
            .any(|i| self.args[i].starts_with(TEMP_PREFIX))
    }

    /// The temporary copy pyfw puts in place while it moves this rule. A
    /// wished rule's copy is renamed `_pyfw_temp_NAME`, as in the spec.
    /// Another program's rule keeps its own comment and gains
    /// `_pyfw_temp_~`, so the original can be rebuilt from the copy alone.
    pub fn temp_copy(&self, wished_name: Option<&str>) -> Rule {
        match wished_name {
            Some(name) => self.with_comment(&format!("{TEMP_PREFIX}{name}")),
            None => self.with_added_comment(FOREIGN_TEMP),
        }
    }

    /// For a temporary copy, the rule it stands for.
    pub fn temp_base(&self) -> Option<Rule> {
        let i = self
            .comment_indexes()
            .find(|&i| self.args[i].starts_with(TEMP_PREFIX))?;
        let mut args = self.args.to_vec();
        if args[i] == FOREIGN_TEMP {
            // Drop `-m comment --comment _pyfw_temp_~`.
            args.drain(i - 3..=i);
        } else {
            args[i] = args[i][TEMP_PREFIX.len()..].to_string();
        }
        Some(Rule { args: args.into() })
    }
}

/// The comment of a temporary copy of another program's rule. `~` is not
/// allowed in wish names, so it never collides with `_pyfw_temp_NAME`.
const FOREIGN_TEMP: &str = "_pyfw_temp_~";

/// Joins argv for display: tokens that a shell would read unchanged stay
/// bare (including `!`, as `iptables-save` prints it); others are quoted.
pub fn display_args(args: &[String]) -> String {
    let mut out = String::new();
    for (i, tok) in args.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let safe = !tok.is_empty()
            && tok
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "!-_.,:/=+@%^".contains(c));
        if safe {
            out.push_str(tok);
        } else {
            match shlex::try_quote(tok) {
                Ok(q) => out.push_str(&q),
                // Only a NUL byte makes quoting fail; show it escaped.
                Err(_) => out.push_str(&format!("{tok:?}")),
            }
        }
    }
    out
}

/// Joins argv as a line for `iptables-restore` or `ipset restore`. Those
/// tools read double quotes (with `\"` and `\\` escapes) but not a shell's
/// single quotes, so this is not [`display_args`].
pub fn restore_line(args: &[String]) -> String {
    let mut out = String::new();
    for (i, tok) in args.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        push_restore_word(&mut out, tok);
    }
    out
}

/// Appends one word of a [`restore_line`], quoted when it must be.
pub fn push_restore_word(out: &mut String, tok: &str) {
    let plain = !tok.is_empty()
        && !tok
            .chars()
            .any(|c| c.is_whitespace() || c == '"' || c == '\'' || c == '\\');
    if plain {
        out.push_str(tok);
    } else {
        out.push('"');
        for c in tok.chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&display_args(&self.args))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_quoted_comment() {
        let r = Rule::parse(r#"-p tcp -m comment --comment "a b/c" -j ACCEPT"#).unwrap();
        assert_eq!(r.comment(), Some("a b/c"));
        assert_eq!(
            r.to_string(),
            "-p tcp -m comment --comment 'a b/c' -j ACCEPT"
        );
    }

    #[test]
    fn rejects_unbalanced_and_empty() {
        assert_eq!(Rule::parse("-j 'ACCEPT"), Err(SplitError::Unbalanced));
        assert_eq!(Rule::parse("   "), Err(SplitError::Empty));
    }

    #[test]
    fn adds_comment_before_target() {
        let r = Rule::parse("-p tcp -m tcp --dport 22 -j ACCEPT").unwrap();
        assert_eq!(
            r.with_comment("allow_ssh").to_string(),
            "-p tcp -m tcp --dport 22 -m comment --comment allow_ssh -j ACCEPT"
        );
        let no_target = Rule::parse("-s 10.0.0.1").unwrap();
        assert_eq!(
            no_target.with_comment("x").to_string(),
            "-s 10.0.0.1 -m comment --comment x"
        );
    }

    #[test]
    fn replaces_comment_and_ignores_other_matches() {
        let r = Rule::parse("-m set --match-set s src -m comment --comment old -j DROP").unwrap();
        assert_eq!(
            r.with_comment("_pyfw_temp_old").comment(),
            Some("_pyfw_temp_old")
        );
        assert!(r.with_comment("_pyfw_temp_old").is_temp());
        // A `--comment` token that is not part of a comment match is not a name.
        let odd = Rule::parse("-j LOG --log-prefix --comment").unwrap();
        assert_eq!(odd.comment(), None);
    }

    #[test]
    fn foreign_temp_copies_keep_their_comment() {
        for text in [
            r#"-m comment --comment "svc a" -j RETURN"#,
            "-s 10.0.0.1/32 -j ACCEPT",
            "-s 10.0.0.1/32",
        ] {
            let r = Rule::parse(text).unwrap();
            let temp = r.temp_copy(None);
            assert!(temp.is_temp(), "{temp}");
            assert!(!r.is_temp());
            assert_eq!(temp.comment(), r.comment().or(Some("_pyfw_temp_~")));
            assert_eq!(temp.temp_base(), Some(r));
        }
    }

    #[test]
    fn bang_stays_bare() {
        let r = Rule::parse("'!' -i docker0").unwrap();
        assert_eq!(r.to_string(), "! -i docker0");
    }
}
