//! What a kernel tool said, as a user should read it: its own words,
//! without the line numbers of an input the user never sees (`Error
//! occurred at line: 4`, `Error in line 65539:`), nor usage hints.

use crate::kernel::backend::Error;

/// What the tool said when `error` is its refusal; the whole error
/// otherwise.
pub fn tool_said(error: &Error) -> String {
    match error {
        Error::Failed { stderr, .. } if !stderr.trim().is_empty() => {
            let words = cleaned(stderr);
            match words.contains(' ') {
                true => words,
                // Legacy iptables-restore says only `line N failed`, the
                // line of COMMIT when the kernel refused the table.
                false => format!(
                    "{words} refused the transaction without saying which of its commands \
                     (the kernel refused the table as a whole when it was committed)"
                ),
            }
        }
        Error::NftRejected { message, .. } => format!(
            "nft refuses it: {}",
            crate::state::text::escape_untrusted(message)
        ),
        other => other.to_string(),
    }
}

/// `stderr` without restore-input line numbers and usage hints, its lines
/// joined with ` / `.
pub fn cleaned(stderr: &str) -> String {
    let lines: Vec<String> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .filter(|l| !l.starts_with("Error occurred at line:"))
        .filter(|l| !l.starts_with("Try `"))
        .map(without_line_number)
        .filter(|l| !l.is_empty())
        .collect();
    lines.join(" / ")
}

/// A line without `line N: ` / `Error in line N: ` / `: line N failed`.
fn without_line_number(line: &str) -> String {
    let mut out = line.to_string();
    for marker in ["Error in line ", "line "] {
        while let Some(at) = out.find(marker) {
            let rest = &out[at + marker.len()..];
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                break;
            }
            let after = &rest[digits..];
            let after = after
                .strip_prefix(": ")
                .or_else(|| after.strip_prefix(" failed"))
                .unwrap_or(after);
            out = format!("{}{}", &out[..at], after);
        }
    }
    out.trim_end_matches([':', ' ']).trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_line_numbers_and_hints_are_left_out() {
        assert_eq!(
            cleaned(
                "iptables-restore v1.8.9 (nf_tables): line 3: RULE_APPEND failed (Invalid \
                 argument): rule in chain INPUT\nError occurred at line: 3\nTry \
                 `iptables-restore -h' or 'iptables-restore --help' for more information."
            ),
            "iptables-restore v1.8.9 (nf_tables): RULE_APPEND failed (Invalid argument): rule in \
             chain INPUT"
        );
        assert_eq!(
            cleaned("iptables-restore: line 5 failed"),
            "iptables-restore"
        );
        assert_eq!(
            cleaned("ipset v7.17: Error in line 65539: Hash is full, cannot add more elements"),
            "ipset v7.17: Hash is full, cannot add more elements"
        );
        // Words that only look like it stay.
        assert_eq!(cleaned("deadline exceeded"), "deadline exceeded");
    }
}
