//! What a kernel tool said, as a user should read it: what to do about
//! it where pyfw can tell, then the tool's own words, without the line
//! numbers of an input the user never sees (`Error occurred at line: 4`,
//! `Error in line 65539:`), pyfw's scratch chains, usage hints, or raw
//! control characters.

use crate::kernel::backend::{Error, RuleCheck, SCRATCH_PREFIX};
use crate::state::Family;
use crate::state::rule::Rule;
use crate::state::text::escape_untrusted;

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
        other => other.to_string(),
    }
}

/// `stderr` without restore-input line numbers, usage hints and pyfw's
/// scratch chain names, its lines joined with ` / `, escaped for one line
/// of a terminal or a log.
pub fn cleaned(stderr: &str) -> String {
    let mut lines: Vec<String> = Vec::new();
    // A banner (`iptables-restore v1.8.9 (nf_tables): `) heads the next line.
    let mut banner: Option<String> = None;
    for raw in stderr.lines().map(str::trim) {
        if raw.is_empty() || raw.starts_with("Error occurred at line:") || raw.starts_with("Try `")
        {
            continue;
        }
        let line = without_scratch_names(&without_line_number(raw));
        if line.is_empty() {
            continue;
        }
        let line = match banner.take() {
            Some(head) => format!("{head}: {line}"),
            None => line,
        };
        match raw.ends_with(':') && raw.contains(" v") {
            true => banner = Some(line),
            false => lines.push(line),
        }
    }
    lines.extend(banner);
    escape_untrusted(&lines.join(" / ")).into_owned()
}

/// `line` with any `_pyfw_canon_PID` said as what it is.
fn without_scratch_names(line: &str) -> String {
    let mut out = line.to_string();
    while let Some(at) = out.find(SCRATCH_PREFIX) {
        let rest = &out[at + SCRATCH_PREFIX.len()..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        out = format!("{}pyfw's scratch chain{}", &out[..at], &rest[digits..]);
    }
    out
}

/// What the kernel tools said refusing `check`'s rule (`stderr`), in words.
pub fn check_refused(stderr: &str, check: &RuleCheck) -> String {
    rule_refused(
        stderr,
        RuleAt {
            family: check.family,
            table: &check.table,
            chain: &check.chain,
            rule: &check.rule,
        },
    )
}

/// Where a refused rule was to go, for the words about it.
#[derive(Clone, Copy, Debug)]
pub struct RuleAt<'a> {
    pub family: Family,
    pub table: &'a str,
    pub chain: &'a str,
    pub rule: &'a Rule,
}

/// Targets that belong in one table, and there in some chains only (the
/// kernel's own limits, on both backends): used anywhere else, the kernel
/// refuses the rule with `Invalid argument`.
const PLACES: &[(&str, &str, &[&str])] = &[
    ("DNAT", "nat", &["PREROUTING", "OUTPUT"]),
    ("REDIRECT", "nat", &["PREROUTING", "OUTPUT"]),
    ("SNAT", "nat", &["POSTROUTING", "INPUT"]),
    ("MASQUERADE", "nat", &["POSTROUTING"]),
    ("REJECT", "filter", &["INPUT", "FORWARD", "OUTPUT"]),
    ("TPROXY", "mangle", &["PREROUTING"]),
];

/// Targets iptables itself provides, which are no chain.
const TARGETS: &[&str] = &[
    "ACCEPT",
    "DROP",
    "RETURN",
    "QUEUE",
    "AUDIT",
    "CHECKSUM",
    "CLASSIFY",
    "CONNMARK",
    "CT",
    "DNAT",
    "DSCP",
    "ECN",
    "HMARK",
    "IDLETIMER",
    "LED",
    "LOG",
    "MARK",
    "MASQUERADE",
    "NETMAP",
    "NFLOG",
    "NFQUEUE",
    "NOTRACK",
    "REDIRECT",
    "REJECT",
    "SECMARK",
    "SET",
    "SNAT",
    "SYNPROXY",
    "TCPMSS",
    "TCPOPTSTRIP",
    "TEE",
    "TOS",
    "TPROXY",
    "TRACE",
    "TTL",
];

/// What the kernel tools said refusing the rule `at`, in words the user
/// can act on where pyfw can tell what is wrong, followed by the tool's
/// own words (`stderr` as printed).
pub fn rule_refused(stderr: &str, at: RuleAt) -> String {
    let said = cleaned(stderr);
    match rule_hint(stderr, at) {
        Some(hint) => match said.contains(' ') {
            true => format!("{hint} (the kernel tools said: {said})"),
            false => hint,
        },
        None => said,
    }
}

fn rule_hint(stderr: &str, at: RuleAt) -> Option<String> {
    if let Some(set) = quoted_after(stderr, "Set ", " doesn't exist") {
        return Some(format!(
            "matches set {set}, which neither the wishes nor the kernel have"
        ));
    }
    let chain = quoted_after(stderr, "Chain '", "' does not exist")
        .or_else(|| quoted_after(stderr, "Couldn't load target `", "'"));
    if let Some(chain) = chain {
        return Some(format!(
            "jumps to chain {chain}, which neither the wishes nor the kernel have"
        ));
    }
    let invalid = stderr.contains("(Invalid argument)") || stderr.contains("Invalid argument.");
    let missing = stderr.contains("(No such file or directory)")
        || stderr.contains("No chain/target/match by that name");
    // Legacy iptables-restore names only the line of COMMIT for what the
    // kernel refused: no reason given.
    let unsaid = !cleaned(stderr).contains(' ');
    if (invalid || unsaid)
        && let Some(place) = misplaced(at)
    {
        return Some(place);
    }
    let extensions = extensions(at);
    match (invalid, missing || unsaid) {
        (true, _) => Some(format!(
            "the kernel refuses this rule in {}/{} (Invalid argument): a value out of range, \
             or a match or target that does not fit this table or chain{}",
            at.table,
            at.chain,
            listed(", among", &extensions)
        )),
        (false, true) if !extensions.is_empty() => Some(format!(
            "the kernel lacks an extension this rule uses, or an object it names:{}",
            listed("", &extensions)
        )),
        _ => None,
    }
}

/// `text`'s word between `before` and `after`, if any.
fn quoted_after<'t>(text: &'t str, before: &str, after: &str) -> Option<&'t str> {
    let rest = &text[text.find(before)? + before.len()..];
    let end = rest.find(after)?;
    Some(&rest[..end]).filter(|w| !w.is_empty() && !w.contains(char::is_whitespace))
}

/// Where the rule's target belongs, when it is used elsewhere.
fn misplaced(at: RuleAt) -> Option<String> {
    let target = at.rule.target()?;
    let (_, table, chains) = PLACES.iter().find(|(t, _, _)| *t == target)?;
    let places: Vec<String> = chains.iter().map(|c| format!("{table}/{c}")).collect();
    if *table != at.table {
        return Some(format!(
            "`-j {target}` belongs in the {table} table ({}), not in {}/{}",
            places.join(", "),
            at.table,
            at.chain
        ));
    }
    let builtin = crate::state::builtin_chains(at.table).contains(&at.chain);
    match (builtin, chains.contains(&at.chain)) {
        (true, false) => Some(format!(
            "`-j {target}` belongs in {}, not in {}/{}",
            places.join(" or "),
            at.table,
            at.chain
        )),
        (false, _) => Some(format!(
            "`-j {target}` belongs in {}: {}/{} must be reached from there only",
            places.join(" or "),
            at.table,
            at.chain
        )),
        (true, true) => None,
    }
}

/// The rule's extensions, each with the kernel module that provides it:
/// `-m nfacct (module xt_nfacct)`.
fn extensions(at: RuleAt) -> Vec<String> {
    let tokens: Vec<&str> = at.rule.tokens().collect();
    let mut out = Vec::new();
    for pair in tokens.windows(2) {
        let (flag, name) = (pair[0], pair[1]);
        let item = match flag {
            "-m" | "--match" if name != "comment" => format!("-m {name}"),
            "-j" | "--jump" if TARGETS.contains(&name) && !is_verdict(name) => {
                format!("-j {name}")
            }
            _ => continue,
        };
        let mut said = format!("{item} (module {})", module(name, at.family));
        if name == "nfacct"
            && let Some(object) = after(&tokens, "--nfacct-name")
        {
            said.push_str(&format!(
                "; its accounting object `{object}` must exist: `nfacct add {object}`"
            ));
        }
        if !out.contains(&said) {
            out.push(said);
        }
    }
    out
}

fn is_verdict(target: &str) -> bool {
    matches!(target, "ACCEPT" | "DROP" | "RETURN" | "QUEUE")
}

/// The token after `flag`.
fn after<'t>(tokens: &[&'t str], flag: &str) -> Option<&'t str> {
    let i = tokens.iter().position(|t| *t == flag)?;
    tokens.get(i + 1).copied()
}

/// The kernel module of extension `name`.
fn module(name: &str, family: Family) -> String {
    let prefix = match family {
        Family::V4 => "ipt_",
        Family::V6 => "ip6t_",
    };
    match name {
        "REJECT" | "rpfilter" | "ah" => format!("{prefix}{name}"),
        _ => format!("xt_{name}"),
    }
}

/// `items` after `head` and a blank, joined; nothing for none.
fn listed(head: &str, items: &[String]) -> String {
    match items.is_empty() {
        true => String::new(),
        false => format!("{head} {}", items.join(", ")),
    }
}

/// ipset refusing to add a member to set `name`, whose create options are
/// `header` (`family inet maxelem 4`), because it is full: how many it
/// holds, how many the wishes give it, and the header that fits them.
pub fn set_full(stderr: &str, header: &[String], wanted: usize) -> String {
    let maxelem = header
        .iter()
        .position(|o| o == "maxelem")
        .and_then(|i| header.get(i + 1))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(65536);
    let fits = (wanted as u64).max(maxelem + 1).next_power_of_two();
    let mut fixed: Vec<String> = Vec::new();
    let mut options = header.iter();
    while let Some(o) = options.next() {
        match o.as_str() {
            // What ipset chose, or what is replaced.
            "maxelem" | "hashsize" | "bucketsize" | "initval" => {
                options.next();
            }
            _ => fixed.push(o.clone()),
        }
    }
    fixed.extend(["maxelem".to_string(), fits.to_string()]);
    format!(
        "the set holds at most {maxelem} members (maxelem {maxelem}) and the wishes give it \
         {wanted}: write `header: {}` in its wish (ipset said: {})",
        fixed.join(" "),
        cleaned(stderr)
    )
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
