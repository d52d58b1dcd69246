//! A big wishes file is planned exactly as a small one.
//!
//! From 64 KiB on, the CLI reads what pyfw owns while it parses the file
//! (`Reconciler::read_owned`), and the plan then reads only what the wishes
//! add. Here the same wishes, once as they are and once padded past that
//! size with a comment, go through the same story in two network
//! namespaces, on both backends: a first apply, a check, withdrawing a set
//! and a rule (which makes the plan read everything), and putting them
//! back. Every output and every resulting ruleset and set must be the same
//! byte for byte.
//!
//! Needs root; see `tests/common/mod.rs` for how a test skips (or, with
//! `PYFW_REQUIRE_NETNS=1`, fails) where namespaces are unavailable.

use crate::common;

use std::path::{Path, PathBuf};

use common::{Backend, Netns, Out, assert_text_eq, normalize_rules, spec};

on_both_backends!(a_padded_file_gives_the_same_story);

/// `text` in `dir/wishes.yaml`, padded to well over 64 KiB when `pad`.
fn wishes(dir: &Path, text: &str, pad: bool) -> PathBuf {
    let mut text = text.to_string();
    if pad {
        let line = format!("# {}\n", "padding ".repeat(12));
        text.push_str(&line.repeat((100 << 10) / line.len()));
    }
    let path = dir.join("wishes.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `text` with `dir` made `DIR`, the sets' random hash seeds
/// (`initval 0x...`) left out, and each run of set members sorted (a hash
/// set lists them in the order of its seed): what two namespaces given the
/// same wishes must agree on.
fn comparable(text: &str, dir: Option<&str>) -> String {
    let text = match dir {
        Some(dir) => text.replace(dir, "DIR"),
        None => text.to_string(),
    };
    let mut lines: Vec<&str> = Vec::new();
    let member =
        |l: &str| l.starts_with("add ") || l.starts_with("+ add ") || l.starts_with("- add ");
    for run in text
        .lines()
        .collect::<Vec<_>>()
        .chunk_by(|a, b| member(a) && member(b))
    {
        let mut run = run.to_vec();
        run.sort_unstable();
        lines.extend(run);
    }
    let mut out = String::new();
    for line in lines {
        let mut words = line.split(' ');
        let mut kept = Vec::new();
        while let Some(w) = words.next() {
            match w {
                "initval" => {
                    words.next();
                }
                _ => kept.push(w),
            }
        }
        out.push_str(&kept.join(" "));
        out.push('\n');
    }
    out
}

/// What a run printed, comparable.
fn said(out: &Out, dir: &Path) -> String {
    let dir = dir.to_str().unwrap();
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        out.code(),
        comparable(&out.stdout, Some(dir)),
        comparable(&out.stderr, Some(dir))
    )
}

fn a_padded_file_gives_the_same_story(backend: Backend) {
    let test = format!("big_wishes_{backend:?}");
    let (Some(small), Some(big)) = (Netns::new(&test, backend), Netns::new(&test, backend)) else {
        return;
    };
    let full = spec("wishes.yaml");
    // Without the set (and the rule that names it) and without allow_ssh:
    // pyfw owns both, so withdrawing them reads every rule and set.
    let less: String = full
        .lines()
        .filter(|l| !l.contains("allow_ssh"))
        .collect::<Vec<_>>()
        .join("\n")
        .replace(
            "  ipsets:\n    allowed_hosts:\n      type: hash:ip\n      members_equal:\n      - \
             192.168.122.193\n",
            "",
        )
        .replace("      DOCKER:\n        rules:\n        - allowed_hosts_only: '! -i docker0 -o docker0 -m set ! --match-set allowed_hosts src -m comment --comment allowed_hosts_only -j REJECT --reject-with icmp-port-unreachable'", "");
    assert!(
        !less.contains("allowed_hosts") && !less.contains("allow_ssh"),
        "{less}"
    );
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    for ns in [&small, &big] {
        ns.iptables_restore(&spec("docker-after-reboot.save"));
    }
    let steps: [(&str, &str); 6] = [
        (&full, "plan"),
        (&full, "apply"),
        (&full, "check"),
        (&less, "apply"),
        (&less, "check"),
        (&full, "apply"),
    ];
    for (i, (text, command)) in steps.iter().enumerate() {
        let mut seen = Vec::new();
        for ((ns, dir), pad) in [&small, &big].into_iter().zip(&dirs).zip([false, true]) {
            let path = wishes(dir.path(), text, pad);
            let out = ns.run_pyfw(&path, &[command]);
            seen.push((
                said(&out, dir.path()),
                normalize_rules(&ns.iptables_save()),
                comparable(&ns.ipset_save(), None),
            ));
        }
        let what = format!("step {} (`{command}`), padded file against plain", i + 1);
        assert_text_eq(&seen[1].0, &seen[0].0, &format!("{what}: output"));
        assert_text_eq(&seen[1].1, &seen[0].1, &format!("{what}: rules"));
        assert_text_eq(&seen[1].2, &seen[0].2, &format!("{what}: sets"));
        // The story did happen (in both, being the same).
        let (out, rules, sets) = &seen[0];
        match *command {
            "plan" => assert!(out.contains("iptables -w -t filter -I INPUT 1 "), "{out}"),
            "apply" => assert!(out.contains("Executing command"), "{out}"),
            _ => assert!(out.starts_with("exit Some(0)"), "{out}"),
        }
        let wished = *text == full;
        if i > 0 {
            assert_eq!(rules.contains("allow_ssh"), wished, "{rules}");
            assert_eq!(sets.contains("allowed_hosts"), wished, "{sets}");
        }
    }
}
