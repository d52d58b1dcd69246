//! One iptables rule as an argument vector.
//!
//! Rules are compared token by token rather than as strings, so that quoting
//! differences (`'! -i docker0'` in YAML against `! -i docker0` in
//! `iptables-save`) never look like drift. Rule text from the wishes file is
//! split with shell-like quoting but is never handed to a shell: every token
//! reaches `iptables` as one argv element.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, OnceLock};

/// The `-m comment --comment` value that marks a rule as pyfw's temporary copy
/// during a move (the spec's temp-rule trick).
pub const TEMP_PREFIX: &str = "_pyfw_temp_";

/// An iptables rule specification: everything after `-A CHAIN`.
///
/// Shared, not copied: a planner working on a 50,000-rule chain clones
/// rules freely, and a clone is a reference count.
///
/// The tokens are kept as one string, joined by NUL, rather than one
/// `String` each: reading a 50,000-rule `iptables-save` (the daemon does it
/// on every poll) then costs two allocations per rule, not a dozen, and
/// comparing or hashing a rule is comparing or hashing one string. The
/// argv as `String`s ([`Rule::args`]) is built on first use: a rule handed
/// to a program is one of a few, not one of 50,000.
///
/// The handle is one pointer: a planner copies chains of rules about, and
/// a small handle keeps those copies small.
#[derive(Clone)]
pub struct Rule(Arc<Inner>);

struct Inner {
    /// The tokens joined by NUL. `None` when that would not read back
    /// unambiguously (no tokens at all, or a token holding a NUL, which no
    /// C argv can): such rules keep their tokens in `args` only.
    joined: Option<Box<str>>,
    /// A hash of the tokens, taken once, so that maps keyed by rule cost
    /// no rehashing of text and unequal rules mostly differ here.
    key: u64,
    /// The tokens as `String`s, built when [`Rule::args`] is first called.
    args: OnceLock<Box<[String]>>,
    /// True for another program's rule that could not be split into
    /// tokens unambiguously: its one "token" is the text the tool printed
    /// (see [`Rule::opaque`]).
    opaque: bool,
}

impl PartialEq for Rule {
    fn eq(&self, other: &Rule) -> bool {
        if Arc::ptr_eq(&self.0, &other.0) {
            return true;
        }
        if self.0.key != other.0.key {
            return false;
        }
        match (&self.0.joined, &other.0.joined) {
            (Some(a), Some(b)) => a == b,
            (None, None) => self.0.opaque == other.0.opaque && self.args() == other.args(),
            _ => false,
        }
    }
}

impl Eq for Rule {}

impl Hash for Rule {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0.key);
    }
}

impl fmt::Debug for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_opaque() {
            return f.debug_tuple("Opaque").field(&self.args()[0]).finish();
        }
        f.debug_struct("Rule")
            .field("args", &self.tokens().collect::<Vec<_>>())
            .finish()
    }
}

/// A quick hash of text, eight bytes at a time (as rustc's FxHash): rules
/// are hashed only to find equal ones, so speed matters more than mixing.
pub(crate) fn text_key(bytes: &[u8]) -> u64 {
    const K: u64 = 0xf135_7aea_2e62_a9c5;
    let mix = |h: u64, w: u64| (h.rotate_left(26) ^ w).wrapping_mul(K);
    let mut h = bytes.len() as u64;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = mix(h, u64::from_le_bytes(w));
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        h = mix(h, u64::from_le_bytes(w));
    }
    h
}

/// A [`Hasher`] over `text_key`, for maps and sets of many short
/// strings (set members): several times faster than the default.
#[derive(Default)]
pub struct TextHasher(u64);

impl Hasher for TextHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0 = (self.0.rotate_left(26) ^ text_key(bytes)).wrapping_mul(0xf135_7aea_2e62_a9c5);
    }

    fn finish(&self) -> u64 {
        // The product's entropy is in its high bits; tables index by low.
        self.0.rotate_left(26)
    }
}

/// Builds [`TextHasher`]s.
pub type TextHash = std::hash::BuildHasherDefault<TextHasher>;

/// The tokens of a rule, borrowed.
#[derive(Clone)]
pub struct Tokens<'a>(TokensInner<'a>);

#[derive(Clone)]
enum TokensInner<'a> {
    /// What is left of the joined text; `None` once it is all read.
    Joined(Option<&'a str>),
    Args(std::slice::Iter<'a, String>),
}

impl<'a> Iterator for Tokens<'a> {
    type Item = &'a str;
    fn next(&mut self) -> Option<&'a str> {
        match &mut self.0 {
            // By hand rather than `split('\0')`: tokens are a few bytes
            // long, too short for a searcher to pay for itself.
            TokensInner::Joined(rest) => {
                let r = (*rest)?;
                match r.bytes().position(|b| b == 0) {
                    Some(i) => {
                        *rest = r.get(i + 1..);
                        r.get(..i)
                    }
                    None => {
                        *rest = None;
                        Some(r)
                    }
                }
            }
            TokensInner::Args(iter) => iter.next().map(String::as_str),
        }
    }
}

/// Why a rule text could not be split into argv.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    #[error("unbalanced quotes or a trailing backslash")]
    Unbalanced,
    #[error("rule text is empty")]
    Empty,
}

/// Splits `text` as `shlex::split` does (POSIX shell words: quotes,
/// backslashes, `#` comments), appending the words to `out` joined by NUL
/// rather than allocating each. Returns how many words there were, or
/// `None` for unbalanced quotes or a trailing backslash. Text holding a
/// NUL must not come here (a word could then not be told from two).
pub(crate) fn split_joined(text: &str, out: &mut Vec<u8>) -> Option<usize> {
    let text = text.as_bytes();
    let mut count = 0;
    let mut i = 0;
    loop {
        // Blanks and comments between words.
        loop {
            match text.get(i) {
                None => return Some(count),
                Some(b' ' | b'\t' | b'\n') => i += 1,
                Some(b'#') => {
                    while text.get(i).is_some_and(|&c| c != b'\n') {
                        i += 1;
                    }
                }
                Some(_) => break,
            }
        }
        if count > 0 {
            out.push(0);
        }
        count += 1;
        while let Some(&c) = text.get(i) {
            i += 1;
            match c {
                b'"' => loop {
                    let c2 = *text.get(i)?;
                    i += 1;
                    match c2 {
                        b'\\' => {
                            let c3 = *text.get(i)?;
                            i += 1;
                            match c3 {
                                b'$' | b'`' | b'"' | b'\\' => out.push(c3),
                                b'\n' => {}
                                _ => out.extend_from_slice(&[b'\\', c3]),
                            }
                        }
                        b'"' => break,
                        _ => out.push(c2),
                    }
                },
                b'\'' => loop {
                    let c2 = *text.get(i)?;
                    i += 1;
                    if c2 == b'\'' {
                        break;
                    }
                    out.push(c2);
                },
                b'\\' => {
                    let c2 = *text.get(i)?;
                    i += 1;
                    if c2 != b'\n' {
                        out.push(c2);
                    }
                }
                b' ' | b'\t' | b'\n' => break,
                _ => out.push(c),
            }
        }
    }
}

impl Rule {
    /// Splits rule text with shell-like quoting (`--comment "a b"`).
    pub fn parse(text: &str) -> Result<Rule, SplitError> {
        if text.contains('\0') {
            let args = shlex::split(text).ok_or(SplitError::Unbalanced)?;
            if args.is_empty() {
                return Err(SplitError::Empty);
            }
            return Ok(Rule::from_args(args));
        }
        let mut buf = Vec::with_capacity(text.len());
        match split_joined(text, &mut buf) {
            None => Err(SplitError::Unbalanced),
            Some(0) => Err(SplitError::Empty),
            Some(_) => match String::from_utf8(buf) {
                Ok(joined) => Ok(Rule::from_joined(joined.into_boxed_str())),
                // Splitting cuts only at ASCII bytes; this cannot happen.
                Err(_) => Err(SplitError::Unbalanced),
            },
        }
    }

    /// Builds a rule from tokens that are already split.
    pub fn from_args(args: Vec<String>) -> Rule {
        if args.is_empty() || args.iter().any(|a| a.contains('\0')) {
            return Rule::from_args_raw(args);
        }
        Rule::from_joined(args.join("\0").into_boxed_str())
    }

    /// Builds a rule from borrowed tokens, copying them into one string.
    pub fn from_tokens<'a>(tokens: impl IntoIterator<Item = &'a str>) -> Rule {
        let tokens: Vec<&str> = tokens.into_iter().collect();
        if tokens.is_empty() || tokens.iter().any(|t| t.contains('\0')) {
            return Rule::from_args_raw(tokens.into_iter().map(String::from).collect());
        }
        Rule::from_joined(tokens.join("\0").into_boxed_str())
    }

    /// A rule kept as `String`s (no tokens, or a token holding a NUL).
    fn from_args_raw(args: Vec<String>) -> Rule {
        let mut bytes = Vec::new();
        for a in &args {
            bytes.extend_from_slice(a.as_bytes());
            bytes.push(0);
        }
        // Marks these keys apart from the joined form's.
        bytes.push(1);
        let key = text_key(&bytes);
        Rule(Arc::new(Inner {
            joined: None,
            key,
            args: OnceLock::from(args.into_boxed_slice()),
            opaque: false,
        }))
    }

    /// Another program's rule that cannot be split into tokens without
    /// guessing (a quote that never closes, a word that may or may not be
    /// quoted), kept as `text`, the rule as the tool printed it after
    /// `-A CHAIN`. It keeps its place in its chain, so the positions pyfw
    /// works out stay right, and it equals only the same text. It has no
    /// comment, target or sets, and pyfw never hands it to a program: no
    /// `~match` takes it, so it is never moved.
    pub fn opaque(text: &str) -> Rule {
        let mut bytes = Vec::with_capacity(text.len() + 2);
        bytes.extend_from_slice(text.as_bytes());
        // Marks these keys apart from both other forms'.
        bytes.extend_from_slice(&[0, 2]);
        Rule(Arc::new(Inner {
            joined: None,
            key: text_key(&bytes),
            args: OnceLock::from(vec![text.to_string()].into_boxed_slice()),
            opaque: true,
        }))
    }

    /// True for a rule kept as text (see [`Rule::opaque`]).
    pub fn is_opaque(&self) -> bool {
        self.0.opaque
    }

    /// A rule from tokens already joined by NUL (at least one token, none
    /// holding a NUL).
    pub(crate) fn from_joined(joined: Box<str>) -> Rule {
        Rule(Arc::new(Inner {
            key: text_key(joined.as_bytes()),
            joined: Some(joined),
            args: OnceLock::new(),
            opaque: false,
        }))
    }

    /// The tokens as `String`s, for callers that hand them to a program.
    pub fn args(&self) -> &[String] {
        self.0.args.get_or_init(|| match &self.0.joined {
            Some(j) => j.split('\0').map(String::from).collect(),
            None => Box::new([]),
        })
    }

    /// The tokens, borrowed: no allocation.
    pub fn tokens(&self) -> Tokens<'_> {
        match &self.0.joined {
            Some(j) => Tokens(TokensInner::Joined(Some(j))),
            None => Tokens(TokensInner::Args(self.args().iter())),
        }
    }

    /// A hash of the tokens, the one [`Hash`] uses: equal rules have equal
    /// keys, so unequal keys tell rules apart without reading them.
    pub(crate) fn key(&self) -> u64 {
        self.0.key
    }

    /// The tokens joined by NUL, for the common form; `None` otherwise.
    pub(crate) fn joined(&self) -> Option<&str> {
        self.0.joined.as_deref()
    }

    /// Appends the rule as [`fmt::Display`] shows it, without allocating
    /// when no token needs quoting (most rules): `~match` patterns read
    /// this text for every rule of a chain.
    pub fn display_into(&self, out: &mut String) {
        if self.is_opaque() {
            out.push_str(&self.args()[0]);
            return;
        }
        if let Some(j) = self.joined()
            && j.bytes().all(|b| SAFE_OR_NUL[usize::from(b)])
        {
            // Every byte safe: the text is the tokens with blanks between,
            // unless a token is empty (shown quoted), which is rare.
            let start = out.len();
            out.reserve(j.len());
            let mut plain = true;
            for (i, tok) in self.tokens().enumerate() {
                if tok.is_empty() {
                    plain = false;
                    break;
                }
                if i > 0 {
                    out.push(' ');
                }
                out.push_str(tok);
            }
            if plain {
                return;
            }
            out.truncate(start);
        }
        push_display(out, self.tokens());
    }

    /// Indexes and values of every `-m comment --comment VALUE`.
    fn comments(&self) -> impl Iterator<Item = (usize, &str)> + '_ {
        // An opaque rule's one token is its whole text: no comment match.
        let skip = if self.is_opaque() { usize::MAX } else { 0 };
        let mut tokens = self.tokens().skip(skip).enumerate().peekable();
        let mut in_comment_match = false;
        std::iter::from_fn(move || {
            while let Some((_, tok)) = tokens.next() {
                if tok == "-m" || tok == "--match" {
                    in_comment_match = tokens.peek().is_some_and(|(_, m)| *m == "comment");
                } else if in_comment_match
                    && tok == "--comment"
                    && let Some(&value) = tokens.peek()
                {
                    return Some(value);
                }
            }
            None
        })
    }

    /// The rule's name: the value of its first comment match, if any.
    pub fn comment(&self) -> Option<&str> {
        if self.is_opaque() {
            return None;
        }
        if let Some(found) = self.joined().and_then(comment_in_joined) {
            return found;
        }
        self.comments().next().map(|(_, c)| c)
    }

    /// The same rule carrying `name` as its comment: the existing comment is
    /// replaced, or a comment match is added just before the target, where
    /// `iptables-save` prints a comment given in that position.
    pub fn with_comment(&self, name: &str) -> Rule {
        match self.comments().next() {
            Some((i, _)) => Rule::from_tokens(
                self.tokens()
                    .enumerate()
                    .map(|(k, t)| if k == i { name } else { t }),
            ),
            None => self.with_added_comment(name),
        }
    }

    /// The same rule with one more comment match, just before the target.
    fn with_added_comment(&self, name: &str) -> Rule {
        let mut args: Vec<&str> = self.tokens().collect();
        let at = args
            .iter()
            .position(|&t| t == "-j" || t == "--jump" || t == "-g" || t == "--goto")
            .unwrap_or(args.len());
        args.splice(at..at, ["-m", "comment", "--comment", name]);
        Rule::from_tokens(args)
    }

    /// The ipsets the rule names (`--match-set`, `--add-set`, `--del-set`).
    pub fn sets(&self) -> impl Iterator<Item = &str> {
        let mut prev: Option<&str> = None;
        self.tokens().filter(move |tok| {
            let names_set = prev.is_some_and(names_a_set);
            prev = Some(tok);
            names_set
        })
    }

    /// The same rule naming set `to` wherever it names set `from`.
    pub fn with_set_renamed(&self, from: &str, to: &str) -> Rule {
        let mut prev: Option<&str> = None;
        Rule::from_tokens(self.tokens().map(|tok| {
            let names_set = prev.is_some_and(names_a_set);
            prev = Some(tok);
            if names_set && tok == from { to } else { tok }
        }))
    }

    /// The chain or extension the rule jumps or goes to.
    pub fn target(&self) -> Option<&str> {
        let mut tokens = self.tokens();
        while let Some(tok) = tokens.next() {
            if matches!(tok, "-j" | "--jump" | "-g" | "--goto") {
                return tokens.next();
            }
        }
        None
    }

    /// True for pyfw's temporary copies, which may be left behind by an
    /// interrupted move.
    pub fn is_temp(&self) -> bool {
        // Most rules hold no temporary comment anywhere: settle those with
        // one substring search.
        if let Some(j) = self.joined()
            && !j.contains(TEMP_PREFIX)
        {
            return false;
        }
        self.comments().any(|(_, c)| c.starts_with(TEMP_PREFIX))
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
        let (i, value) = self.comments().find(|(_, c)| c.starts_with(TEMP_PREFIX))?;
        let mut args: Vec<&str> = self.tokens().collect();
        if value == FOREIGN_TEMP {
            // Drop `-m comment --comment _pyfw_temp_~`.
            args.drain(i - 3..=i);
        } else {
            args[i] = &value[TEMP_PREFIX.len()..];
        }
        Some(Rule::from_tokens(args))
    }
}

/// True for an option whose value is a set's name: the set match, and the
/// SET target's three options.
fn names_a_set(option: &str) -> bool {
    matches!(
        option,
        "--match-set" | "--add-set" | "--del-set" | "--map-set"
    )
}

/// [`Rule::comment`] read straight off the joined text, for the common
/// shapes: no `--comment` token at all, or a first one right after
/// `-m comment`. `None` leaves other shapes to the token walk. The planner
/// asks this of every rule of every chain it plans.
fn comment_in_joined(j: &str) -> Option<Option<&str>> {
    const OPT: &str = "--comment";
    let bytes = j.as_bytes();
    let mut from = 0;
    let at = loop {
        let Some(at) = j.get(from..).and_then(|rest| rest.find(OPT)) else {
            return Some(None);
        };
        let at = from + at;
        let starts = at == 0 || bytes.get(at - 1) == Some(&0);
        let end = at + OPT.len();
        if starts && (end == bytes.len() || bytes.get(end) == Some(&0)) {
            break at;
        }
        from = at + 1;
    };
    let before = j.get(..at)?;
    let in_match = ["-m\0comment\0", "--match\0comment\0"].iter().any(|m| {
        before
            .strip_suffix(m)
            .is_some_and(|b| b.is_empty() || b.ends_with('\0'))
    });
    if !in_match {
        return None;
    }
    match j.get(at + OPT.len() + 1..) {
        None => Some(None),
        Some(rest) => Some(Some(rest.split('\0').next().unwrap_or(rest))),
    }
}

/// The comment of a temporary copy of another program's rule. `~` is not
/// allowed in wish names, so it never collides with `_pyfw_temp_NAME`.
const FOREIGN_TEMP: &str = "_pyfw_temp_~";

/// Joins argv for display: tokens that a shell would read unchanged stay
/// bare (including `!`, as `iptables-save` prints it); others are quoted.
pub fn display_args(args: &[String]) -> String {
    display_tokens(args.iter().map(String::as_str))
}

/// [`display_args`] over borrowed tokens.
fn display_tokens<'a>(tokens: impl Iterator<Item = &'a str>) -> String {
    let mut out = String::new();
    push_display(&mut out, tokens);
    out
}

/// True for a byte that never needs quoting in displayed rule text.
fn safe_byte(b: u8) -> bool {
    SAFE[usize::from(b)]
}

/// [`safe_byte`] as a table: it is asked of every byte of every rule a
/// `~match` reads.
const SAFE: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric();
        b += 1;
    }
    let extra = b"!-_.,:/=+@%^";
    let mut i = 0;
    while i < extra.len() {
        t[extra[i] as usize] = true;
        i += 1;
    }
    t
};

/// [`SAFE`], and NUL too: the separator of joined tokens.
const SAFE_OR_NUL: [bool; 256] = {
    let mut t = SAFE;
    t[0] = true;
    t
};

fn push_display<'a>(out: &mut String, tokens: impl Iterator<Item = &'a str>) {
    for (i, tok) in tokens.enumerate() {
        if i > 0 {
            out.push(' ');
        }
        // Bytewise: a multi-byte character is never safe, nor is any of
        // its bytes.
        let safe = !tok.is_empty() && tok.bytes().all(safe_byte);
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
        if self.is_opaque() {
            return f.write_str(&self.args()[0]);
        }
        f.write_str(&display_tokens(self.tokens()))
    }
}

/// Targets that are verdicts or extensions, not chains.
pub const NOT_CHAINS: &[&str] = &[
    "ACCEPT",
    "DROP",
    "REJECT",
    "RETURN",
    "LOG",
    "NFLOG",
    "ULOG",
    "MARK",
    "CONNMARK",
    "QUEUE",
    "NFQUEUE",
    "TRACE",
    "AUDIT",
    "CT",
    "NOTRACK",
    "SET",
    "TCPMSS",
    "DNAT",
    "SNAT",
    "MASQUERADE",
    "REDIRECT",
    "NETMAP",
    "CHECKSUM",
    "CLASSIFY",
    "DSCP",
    "TOS",
    "TTL",
    "HL",
    "ECN",
    "TEE",
    "TPROXY",
    "SECMARK",
    "CONNSECMARK",
    "IDLETIMER",
    "LED",
    "RATEEST",
    "SYNPROXY",
    "TCPOPTSTRIP",
    "HMARK",
    "CLUSTERIP",
];

/// Whether a `-j`/`-g` target names a chain: anything but a verdict or an
/// extension target.
pub fn names_a_chain(target: &str) -> bool {
    !target.is_empty() && !NOT_CHAINS.contains(&target)
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

    proptest::proptest! {
        /// The shortcut to a rule's comment finds what the token walk finds.
        #[test]
        fn comment_shortcut_agrees(picks in proptest::collection::vec(0usize..8, 0..8)) {
            const WORDS: [&str; 8] =
                ["-m", "--match", "comment", "--comment", "x", "", "a--comment", "-j"];
            let rule = Rule::from_tokens(picks.iter().map(|&i| WORDS[i]));
            proptest::prop_assert_eq!(rule.comment(), rule.comments().next().map(|(_, c)| c));
        }

        /// The NUL-joined splitter is `shlex::split`, word for word.
        #[test]
        fn splits_like_shlex(text in "[ a-c#\"'\\\\\t\n-]{0,24}") {
            let mut buf = Vec::new();
            let ours = split_joined(&text, &mut buf).map(|n| {
                let joined = String::from_utf8(buf.clone()).unwrap();
                if n == 0 { Vec::new() } else { joined.split('\0').map(String::from).collect() }
            });
            proptest::prop_assert_eq!(ours, shlex::split(&text));
        }

        /// However a rule was built, equal tokens make equal rules with
        /// equal hashes, and its argv and display are the tokens'.
        #[test]
        fn one_rule_whatever_its_making(args in proptest::collection::vec("[a-c\0 ]{0,3}", 0..4)) {
            use std::hash::BuildHasher;
            let a = Rule::from_args(args.clone());
            let b = Rule::from_tokens(args.iter().map(String::as_str));
            proptest::prop_assert_eq!(&a, &b);
            let h = std::collections::hash_map::RandomState::new();
            proptest::prop_assert_eq!(h.hash_one(&a), h.hash_one(&b));
            proptest::prop_assert_eq!(a.args(), &args[..]);
            proptest::prop_assert_eq!(a.tokens().collect::<Vec<_>>(), args.iter().map(String::as_str).collect::<Vec<_>>());
            let mut shown = String::new();
            a.display_into(&mut shown);
            proptest::prop_assert_eq!(&shown, &display_args(&args));
            proptest::prop_assert_eq!(a.to_string(), display_args(&args));
            let mut other = args.clone();
            other.push(String::new());
            proptest::prop_assert_ne!(a, Rule::from_args(other));
        }
    }

    #[test]
    fn bang_stays_bare() {
        let r = Rule::parse("'!' -i docker0").unwrap();
        assert_eq!(r.to_string(), "! -i docker0");
    }

    /// Every option that names a set is seen, `--map-set` (the SET
    /// target's) too: the planner retargets and keeps such sets.
    #[test]
    fn every_option_naming_a_set_names_it() {
        let r = Rule::parse(
            "-m set --match-set a src -j SET --map-set b dst --map-mark --add-set c src",
        )
        .unwrap();
        assert_eq!(r.sets().collect::<Vec<_>>(), ["a", "b", "c"]);
        let moved = r.with_set_renamed("b", "t");
        assert_eq!(moved.sets().collect::<Vec<_>>(), ["a", "t", "c"]);
    }
}
