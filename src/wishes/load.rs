//! Loading a wishes file: read it as pyfw trusts it, parse it with the YAML
//! budgets, validate it.

use std::path::Path;

use crate::wishes::lift;
use crate::wishes::raw::{MEMBER_LINES, RawFile};
use crate::wishes::validate::Validator;
use crate::wishes::{LoadError, WishError, Wishes};

/// Reads and validates a wishes file.
pub fn load(path: &Path) -> Result<Wishes, LoadError> {
    let fail = |message: String| LoadError {
        errors: vec![WishError {
            path: path.to_path_buf(),
            line: 0,
            wish: None,
            message,
        }],
    };
    let text =
        crate::wishes::secure::read_wishes(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    let text = String::from_utf8(text).map_err(|_| fail("is not UTF-8 text".into()))?;
    parse(&text, path)
}

/// Validates wishes from text; `path` is used in messages only.
///
/// Set members are read without their lines first, as plain strings,
/// which saves a third of the parsing time of a 100,000-member set (the
/// line of every value costs more than the value). Only when something is
/// wrong is the file read again with every member's line, so that each
/// error still names its line.
///
/// Long runs of plain members (an allow-list) are lifted out of the first
/// pass's text and handed to its members as they are (see `lift`): a
/// fraction of what parsing them costs. A pass that leaves a run unclaimed
/// counts as failed.
pub fn parse(text: &str, path: &Path) -> Result<Wishes, LoadError> {
    parse_lifting(text, path, lift::MIN_RUN)
}

fn parse_lifting(text: &str, path: &Path, min_run: usize) -> Result<Wishes, LoadError> {
    let first = match lift::lift(text, min_run) {
        Some(lifted) => {
            let options = lifted_options(&lifted);
            lift::with_runs(lifted, |text| parse_with(text, path, false, options))
                .and_then(Result::ok)
        }
        None => parse_with(text, path, false, crate::wishes::secure::yaml_options()).ok(),
    };
    match first {
        Some(wishes) => Ok(wishes),
        None => parse_with(text, path, true, crate::wishes::secure::yaml_options()),
    }
}

/// The YAML budgets, less what `lifted` took out of the parser's sight, so
/// that a file is refused exactly when it would be unlifted (and the pass
/// with lines, which reads everything, then says why).
fn lifted_options(lifted: &lift::Lifted) -> serde_saphyr::Options {
    let mut options = crate::wishes::secure::yaml_options();
    if let Some(budget) = options.budget.as_mut() {
        budget.max_nodes = budget.max_nodes.saturating_sub(lifted.hidden_nodes);
        budget.max_events = budget.max_events.saturating_sub(lifted.hidden_nodes);
        budget.max_total_scalar_bytes =
            (budget.max_total_scalar_bytes).saturating_sub(lifted.hidden_bytes);
    }
    options
}

fn parse_with(
    text: &str,
    path: &Path,
    member_lines: bool,
    options: serde_saphyr::Options,
) -> Result<Wishes, LoadError> {
    let previous = MEMBER_LINES.replace(member_lines);
    let result = parse_once(text, path, options);
    MEMBER_LINES.set(previous);
    result
}

fn parse_once(
    text: &str,
    path: &Path,
    options: serde_saphyr::Options,
) -> Result<Wishes, LoadError> {
    let mut v = Validator::new(path);
    if text.trim().is_empty() {
        v.error(
            0,
            None,
            "file is empty; refusing to read it as \"no wishes\" (a truncated file must not \
             withdraw the firewall)",
        );
        return Err(LoadError { errors: v.errors });
    }
    let raw: RawFile = match serde_saphyr::from_str_with_options(text, options) {
        Ok(raw) => raw,
        Err(e) => {
            let line = e.location().map(|l| l.line()).unwrap_or(0);
            let message = e.without_snippet().to_string();
            v.error(line, None, &message);
            return Err(LoadError { errors: v.errors });
        }
    };
    let Some(top) = raw.pyfw_wishes else {
        v.error(
            0,
            None,
            "has no `pyfw_wishes` key; refusing to read it as \"no wishes\"",
        );
        return Err(LoadError { errors: v.errors });
    };
    let Some(body) = top.value else {
        v.error(
            top.referenced.line(),
            None,
            "`pyfw_wishes` is empty; write `pyfw_wishes: {}` to mean \"no wishes\" on purpose",
        );
        return Err(LoadError { errors: v.errors });
    };
    let wishes = v.wishes(body);
    if v.wants_lines && !MEMBER_LINES.get() {
        // Loads, but a warning needs a member's line: the pass with lines
        // says it.
        return Err(LoadError { errors: v.errors });
    }
    if v.errors.is_empty() {
        let mut wishes = wishes;
        wishes.warnings = std::mem::take(&mut v.warnings);
        Ok(wishes)
    } else {
        Err(LoadError { errors: v.errors })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// How files were parsed before runs were lifted.
    fn unlifted(text: &str) -> Result<Wishes, LoadError> {
        let path = Path::new("w.yaml");
        parse_with(text, path, false, crate::wishes::secure::yaml_options())
            .or_else(|_| parse_with(text, path, true, crate::wishes::secure::yaml_options()))
    }

    fn same(text: &str, min_run: usize) {
        let lifted = parse_lifting(text, Path::new("w.yaml"), min_run);
        assert_eq!(
            format!("{lifted:?}"),
            format!("{:?}", unlifted(text)),
            "{text}"
        );
    }

    #[test]
    fn a_lifted_list_reads_as_the_parser_reads_it() {
        let members: String = (0..200).map(|i| format!("      - 10.0.{i}.1\n")).collect();
        let text = format!(
            "pyfw_wishes:\n  ipsets:\n    a:\n      type: hash:ip\n      members_equal:\n\
             {members}      - \"10.9.9.9\"\n{members}"
        );
        assert!(lift::lift(&text, lift::MIN_RUN).is_some());
        // A duplicate across the two runs, and its line, as without lifting.
        same(&text, lift::MIN_RUN);
        let wishes = parse(&text, Path::new("w.yaml"));
        let err = wishes.expect_err("the two runs repeat each other");
        assert!(
            err.to_string()
                .contains("w.yaml:207: ipset a: member `10.0.0.1` listed twice"),
            "{err}"
        );
        let text = text.replacen(&members, &members.replace("10.0.", "10.1."), 1);
        let wishes = parse(&text, Path::new("w.yaml")).expect("no duplicates now");
        let got = wishes.ipsets[0].members.as_ref().expect("members");
        assert_eq!(got.len(), 401);
        assert_eq!((&got[0], &got[200]), ("10.1.0.1", "10.9.9.9"));
    }

    #[test]
    fn lines_that_only_look_like_a_list_are_read_as_what_they_are() {
        let run: String = (0..80)
            .map(|i| format!("              - 10.0.{i}.1\n"))
            .collect();
        let text = format!(
            "pyfw_wishes:\n  iptables:\n    filter:\n      INPUT:\n        rules:\n\
             \x20         - ~match: |\n{run}"
        );
        let wishes = parse(&text, Path::new("w.yaml")).expect("a pattern");
        assert!(
            format!("{wishes:?}").contains(r"- 10.0.79.1\n"),
            "{wishes:?}"
        );
        same(&text, lift::MIN_RUN);
    }

    /// One line of a generated members list, at the list's indent unless
    /// it says otherwise.
    fn item() -> impl Strategy<Value = String> {
        let value = prop_oneof![
            (0u8..4, 0u8..3).prop_map(|(a, b)| format!("10.0.{a}.{b}")),
            (0u8..4).prop_map(|a| format!("10.{a}.0.0/16")),
            Just("10.0.0.300".to_string()),
            Just("1e5".to_string()),
            Just("ff".to_string()),
            Just("10.0.0.1-10.0.0.2".to_string()),
            Just("10.0.0.1:".to_string()),
            Just("::1".to_string()),
            Just("fe80::1".to_string()),
        ];
        (value, 0u8..12).prop_map(|(v, shape)| match shape {
            0 => format!("- \"{v}\""),
            1 => format!("- {v}  # note"),
            2 => "# a comment".to_string(),
            3 => String::new(),
            4 => format!("  - {v}"),
            5 => format!("-   {v}   "),
            _ => format!("- {v}"),
        })
    }

    fn document() -> impl Strategy<Value = String> {
        let list = proptest::collection::vec(item(), 0..24);
        let trap = proptest::collection::vec(item(), 0..8);
        (list, trap, any::<bool>(), any::<bool>()).prop_map(|(list, trap, net, flow)| {
            let kind = if net { "hash:net" } else { "hash:ip" };
            let mut text = format!(
                "pyfw_wishes:\n  ipsets:\n    s:\n      type: {kind}\n      members_equal:\n"
            );
            for l in &list {
                text.push_str(&format!("      {l}\n"));
            }
            // The same lines as a block scalar's text, and in a flow list.
            text.push_str("  iptables:\n    filter:\n      INPUT:\n        rules:\n");
            text.push_str("          - ~match: |\n              x\n");
            for l in &trap {
                text.push_str(&format!("              {l}\n"));
            }
            if flow {
                text.push_str("          - ~match: [\n");
                for l in &trap {
                    text.push_str(&format!("              {l}\n"));
                }
                text.push_str("            ]\n");
            }
            text
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        #[test]
        fn lifting_never_changes_what_a_file_says(text in document(), min_run in 1usize..4) {
            same(&text, min_run);
        }
    }
}
