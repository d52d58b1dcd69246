//! Text pyfw did not write, made fit for one line of a log or an error.
//!
//! A kernel tool's stderr, the name a process gave itself, another
//! process's command line: any of them may hold a line break (which would
//! start a forged log line of its own) or a terminal escape (which would
//! recolour, hide or rewrite what an operator reads). [`escape_untrusted`]
//! shows such characters as escapes instead, and leaves everything else,
//! non-ASCII text included, as it is.

use std::borrow::Cow;
use std::fmt::Write as _;

/// `text` with every control character (C0, DEL, C1), line or paragraph
/// separator and bidirectional formatting character escaped: `\n`, `\r`,
/// `\t`, `\x1b` (below U+0080), `\u{85}` (above). Text without any is
/// returned as it is, without a copy. (Bytes that were not UTF-8 were
/// already written as `\xNN` by [`from_bytes`], or replaced when the text
/// was read.)
pub fn escape_untrusted(text: &str) -> Cow<'_, str> {
    let Some(first) = text.find(needs_escape) else {
        return Cow::Borrowed(text);
    };
    let mut out = String::with_capacity(text.len() + 8);
    out.push_str(&text[..first]);
    for c in text[first..].chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if !needs_escape(c) => out.push(c),
            c if c.is_ascii() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
        }
    }
    Cow::Owned(out)
}

/// A tool's words as text: valid UTF-8 as it is, each byte that is not
/// written `\xNN`, so that an error shows what the tool printed rather
/// than U+FFFD. (Control characters are left to [`escape_untrusted`].)
pub fn from_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// Whether `c` must not reach a log line as it is.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            // Line and paragraph separators.
            '\u{2028}' | '\u{2029}'
            // Bidirectional marks, embeddings, overrides and isolates
            // ("Trojan Source").
            | '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_that_are_not_utf8_are_written_as_escapes() {
        assert_eq!(
            from_bytes(b"ok \xc3\xa9 \xff\xfe!"),
            "ok \u{e9} \\xff\\xfe!"
        );
        assert_eq!(from_bytes(b"cut \xe2\x82"), "cut \\xe2\\x82");
    }

    #[test]
    fn every_c0_control_and_del_is_escaped() {
        for b in (0u8..=0x1f).chain([0x7f]) {
            let text = format!("a{}b", b as char);
            let escaped = escape_untrusted(&text);
            let want = match b {
                b'\n' => "a\\nb".to_string(),
                b'\r' => "a\\rb".to_string(),
                b'\t' => "a\\tb".to_string(),
                _ => format!("a\\x{b:02x}b"),
            };
            assert_eq!(escaped, want, "byte {b:#04x}");
        }
    }

    #[test]
    fn every_c1_control_is_escaped() {
        for c in '\u{80}'..='\u{9f}' {
            let text = format!("a{c}b");
            assert_eq!(
                escape_untrusted(&text),
                format!("a\\u{{{:x}}}b", c as u32),
                "{:?}",
                c
            );
        }
    }

    #[test]
    fn line_separators_and_bidi_controls_are_escaped() {
        assert_eq!(escape_untrusted("a\u{2028}b"), "a\\u{2028}b");
        assert_eq!(escape_untrusted("a\u{202e}b"), "a\\u{202e}b");
        assert_eq!(escape_untrusted("a\u{2066}b"), "a\\u{2066}b");
    }

    #[test]
    fn a_forged_log_line_stays_on_one_line() {
        let text = "evil\n2026-01-01 INFO fake line\x1b[31m";
        let escaped = escape_untrusted(text);
        assert_eq!(escaped, "evil\\n2026-01-01 INFO fake line\\x1b[31m");
        assert_eq!(escaped.lines().count(), 1);
    }

    #[test]
    fn clean_text_is_borrowed_as_it_is() {
        for text in [
            "",
            "iptables-restore v1.8.9 (nf_tables): line 3: RULE_APPEND failed",
            "pyfw --wishes /etc/pyfw/wishes.yaml daemon",
            "déjà vu, 日本語, emoji 🦀, a \\n that is two characters",
        ] {
            let escaped = escape_untrusted(text);
            assert!(matches!(escaped, Cow::Borrowed(_)), "{text:?} was copied");
            assert_eq!(escaped, text);
        }
    }

    #[test]
    fn text_around_an_escape_is_kept() {
        assert_eq!(escape_untrusted("é\x00日\x7f"), "é\\x00日\\x7f");
    }
}
