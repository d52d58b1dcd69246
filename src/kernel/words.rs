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
        Error::NftRejected { message, .. } => format!(
            "nft refuses it: {}",
            crate::state::text::escape_untrusted(message)
        ),
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

/// What `stderr` says of input line `n`: iptables-nft names each line the
/// kernel refused (`line 3: ...`, `line 4: ...`); the others' words are
/// about other rules.
pub fn said_of_line(stderr: &str, n: usize) -> String {
    let own = format!("line {n}");
    let lines: Vec<&str> = (stderr.lines())
        .filter(|l| {
            let l = l.trim_start();
            !l.starts_with("line ")
                || l.starts_with(&format!("{own}:"))
                || l.starts_with(&format!("{own} "))
        })
        .collect();
    lines.join("\n")
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

    fn at<'a>(table: &'a str, chain: &'a str, rule: &'a Rule) -> RuleAt<'a> {
        RuleAt {
            family: Family::V4,
            table,
            chain,
            rule,
        }
    }

    fn rule(text: &str) -> Rule {
        Rule::from_tokens(text.split(' '))
    }

    /// iptables 1.8.9's words, as each backend prints them.
    #[test]
    fn a_target_in_the_wrong_table_or_hook_says_where_it_belongs() {
        let nft = "iptables-restore v1.8.9 (nf_tables): \nline 3: RULE_APPEND failed (Invalid \
                   argument): rule in chain INPUT\n";
        let dnat = rule("-p tcp -j DNAT --to-destination 10.0.0.1");
        assert_eq!(
            rule_refused(nft, at("filter", "INPUT", &dnat)),
            "`-j DNAT` belongs in the nat table (nat/PREROUTING, nat/OUTPUT), not in \
             filter/INPUT (the kernel tools said: iptables-restore v1.8.9 (nf_tables): \
             RULE_APPEND failed (Invalid argument): rule in chain INPUT)"
        );
        // Legacy names only the line of COMMIT; `iptables -A` says more.
        let masq = rule("-p tcp -j MASQUERADE");
        assert_eq!(
            rule_refused(
                "iptables-restore: line 4 failed",
                at("nat", "PREROUTING", &masq)
            ),
            "`-j MASQUERADE` belongs in nat/POSTROUTING, not in nat/PREROUTING"
        );
        let said = "iptables: Invalid argument. Run `dmesg' for more information.";
        let reject = rule("-j REJECT");
        assert!(
            rule_refused(said, at("nat", "OUTPUT", &reject))
                .starts_with("`-j REJECT` belongs in the filter table (filter/INPUT, filter/FORWARD, filter/OUTPUT), not in nat/OUTPUT (the kernel tools said: iptables: Invalid argument.")
        );
        // In a user chain of the right table, the hook is the jump's.
        assert!(rule_refused(said, at("nat", "MYNAT", &masq)).starts_with(
            "`-j MASQUERADE` belongs in nat/POSTROUTING: nat/MYNAT must be reached from there only"
        ));
        // In its place, the kernel's reason is another.
        let out = rule_refused(nft, at("nat", "POSTROUTING", &masq));
        assert!(
            out.starts_with("the kernel refuses this rule in nat/POSTROUTING (Invalid argument)"),
            "{out}"
        );
    }

    #[test]
    fn what_the_kernel_lacks_is_named_with_its_module() {
        let nfacct = rule("-m nfacct --nfacct-name foo -j ACCEPT");
        let nft = "iptables-restore v1.8.9 (nf_tables): \nline 3: RULE_APPEND failed (No such file \
                   or directory): rule in chain _pyfw_canon_31045\n";
        let out = rule_refused(nft, at("filter", "INPUT", &nfacct));
        assert_eq!(
            out,
            "the kernel lacks an extension this rule uses, or an object it names: -m nfacct \
             (module xt_nfacct); its accounting object `foo` must exist: `nfacct add foo` (the \
             kernel tools said: iptables-restore v1.8.9 (nf_tables): RULE_APPEND failed (No such \
             file or directory): rule in chain pyfw's scratch chain)"
        );
        let legacy = "iptables: No chain/target/match by that name.";
        assert!(rule_refused(legacy, at("filter", "INPUT", &nfacct)).contains("xt_nfacct"));
        let v6 = RuleAt {
            family: Family::V6,
            ..at("filter", "INPUT", &nfacct)
        };
        let rpf = rule("-m rpfilter -j REJECT");
        assert!(
            rule_refused(legacy, RuleAt { rule: &rpf, ..v6 })
                .contains("-m rpfilter (module ip6t_rpfilter), -j REJECT (module ip6t_REJECT)")
        );
    }

    #[test]
    fn a_missing_chain_or_set_is_named() {
        let jump = rule("-j KUBE-NOPE");
        for said in [
            "iptables-restore v1.8.9 (nf_tables): Chain 'KUBE-NOPE' does not exist\nError \
             occurred at line: 4\nTry `iptables-restore -h' or 'iptables-restore --help' for \
             more information.",
            "iptables-restore v1.8.9 (legacy): Couldn't load target `KUBE-NOPE':No such file or \
             directory\n\nError occurred at line: 2",
        ] {
            let out = rule_refused(said, at("filter", "INPUT", &jump));
            assert!(
                out.starts_with(
                    "jumps to chain KUBE-NOPE, which neither the wishes nor the kernel have (the \
                     kernel tools said: iptables-restore v1.8.9"
                ),
                "{out}"
            );
            assert!(!out.contains("line"), "{out}");
        }
        let set = rule("-m set --match-set nope src -j ACCEPT");
        let said = "iptables-restore v1.8.9 (nf_tables): Set nope doesn't exist.\n\nError occurred \
                    at line: 2";
        assert!(
            rule_refused(said, at("filter", "INPUT", &set))
                .starts_with("matches set nope, which neither the wishes nor the kernel have")
        );
    }

    #[test]
    fn other_words_are_the_tools_own() {
        let out = rule("-o lo -j ACCEPT");
        assert_eq!(
            rule_refused(
                "iptables-restore v1.8.9 (legacy): Can't use -o with INPUT\n\nError occurred at \
                 line: 3\nTry `iptables-restore -h' or 'iptables-restore --help' for more \
                 information.",
                at("filter", "INPUT", &out)
            ),
            "iptables-restore v1.8.9 (legacy): Can't use -o with INPUT"
        );
        // Control characters a tool printed are shown escaped.
        assert_eq!(cleaned("bad \u{1b}[31mred\u{7}"), "bad \\x1b[31mred\\x07");
    }

    #[test]
    fn a_full_set_says_its_maxelem_and_the_header_that_fits() {
        let said = "ipset v7.17: Error in line 65539: Hash is full, cannot add more elements";
        let header: Vec<String> = ["family", "inet", "hashsize", "1024", "maxelem", "65536"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            set_full(said, &header, 100_000),
            "the set holds at most 65536 members (maxelem 65536) and the wishes give it 100000: \
             write `header: family inet maxelem 131072` in its wish (ipset said: ipset v7.17: \
             Hash is full, cannot add more elements)"
        );
        // No maxelem written: ipset's default.
        assert!(set_full(said, &[], 70_000).contains("(maxelem 65536)"));
    }
}
