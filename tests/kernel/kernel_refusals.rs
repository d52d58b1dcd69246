//! What the kernel refuses is said by wish: every rejected wish at once,
//! each as `FILE:LINE: table/chain/NAME: what the kernel said, in words`,
//! before anything changes. No scratch chain name, no line of a restore
//! input the user never sees.
//!
//! Needs root; see `tests/common/mod.rs` for how a test skips (or, with
//! `PYFW_REQUIRE_NETNS=1`, fails) where namespaces are unavailable.

use crate::common;

use std::path::{Path, PathBuf};

use common::{Backend, Netns, Out};

on_both_backends!(
    every_refused_wish_is_named_with_its_file_and_line_before_anything_changes,
    without_a_private_namespace_what_the_scratch_chain_can_tell_is_named,
    a_rule_marked_for_ipv6_in_an_ipv4_chain_is_named,
    a_set_over_its_maxelem_names_the_set_and_the_fix,
    printed_forms_that_do_not_load_back_as_themselves_are_warned_about,
    a_form_kept_from_an_earlier_run_is_trusted_only_while_what_it_names_is_there,
    ordinary_rules_learned_in_a_scratch_chain_are_not_called_lossy,
);

fn write_wishes(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("wishes.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The 1-based line of `wishes` holding `needle`.
fn line_of(wishes: &Path, needle: &str) -> usize {
    1 + std::fs::read_to_string(wishes)
        .unwrap()
        .lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line holds {needle}"))
}

/// The stderr line that names `FILE:LINE: LABEL: `, which must exist: the
/// error if there is one (a load-time warning about the same wish may come
/// first), else the warning.
#[track_caller]
fn said_about(out: &Out, wishes: &Path, name: &str, label: &str) -> String {
    let at = format!("{}:{}: {label}: ", wishes.display(), line_of(wishes, name));
    let mut said = out.stderr.lines().filter(|l| l.contains(&at));
    let first = said.clone().next();
    said.find(|l| l.starts_with("pyfw: error"))
        .or(first)
        .map(String::from)
        .unwrap_or_else(|| panic!("no message names `{at}`\n{out}"))
}

/// Nothing of pyfw's own scratch work, nor of its restore inputs, reaches
/// the user.
#[track_caller]
fn nothing_internal(out: &Out) {
    for bad in [
        "_pyfw_",
        "Error occurred at line",
        "line 2",
        "line 3",
        "line 4",
    ] {
        assert!(!out.stderr.contains(bad), "`{bad}` reached the user\n{out}");
    }
}

/// `pyfw ARGS` without CAP_SYS_ADMIN, as under the systemd unit: rule
/// forms are learned in a scratch chain of the real tables.
fn pyfw_without_sys_admin(ns: &Netns, wishes: &Path, args: &[&str]) -> Out {
    let mut argv = vec![
        "setpriv",
        "--inh-caps=-sys_admin",
        "--bounding-set=-sys_admin",
        "--",
        "env",
        "PYFW_LOG=pyfw=debug",
        common::PYFW,
        "--wishes",
        wishes.to_str().unwrap(),
    ];
    argv.extend_from_slice(args);
    ns.run(&argv)
}

/// The wishes of the test below, with a rule the kernel refuses only in a
/// hooked chain (`masquerade_early`) when `hooked`.
fn refused_wishes(hooked: bool) -> String {
    let mut text = String::from(
        "pyfw_wishes:\n  ipsets:\n    trusted:\n      type: hash:ip\n      members_equal: [10.0.0.1]\n  \
         iptables:\n    filter:\n      INPUT:\n        rules:\n        \
         - allow_ssh: -p tcp --dport 22 -j ACCEPT\n        \
         - dnat_in_filter: -p tcp --dport 80 -j DNAT --to-destination 10.0.0.1\n        \
         - count_it: -m nfacct --nfacct-name foo -j ACCEPT\n        \
         - to_kube: -j KUBE-NOPE\n        \
         - unknown_set: -m set --match-set nosuch src -j ACCEPT\n        \
         - trusted_ok: -m set --match-set trusted src -j ACCEPT\n    \
         mangle:\n      PREROUTING:\n        rules:\n        \
         - redirect_in_mangle: -p tcp --dport 81 -j REDIRECT --to-ports 8081\n    \
         nat:\n      PREROUTING:\n        rules:\n",
    );
    if hooked {
        text.push_str("        - masquerade_early: -p tcp --dport 82 -j MASQUERADE\n");
    }
    text.push_str("        - redirect_ok: -p tcp --dport 83 -j REDIRECT --to-ports 8083\n");
    text
}

/// Each refused wish of [`refused_wishes`] but the hooked one, with the
/// words its message must hold.
const REFUSED: &[(&str, &str, &str)] = &[
    (
        "dnat_in_filter",
        "filter/INPUT/dnat_in_filter",
        "`-j DNAT` belongs in the nat table (nat/PREROUTING, nat/OUTPUT)",
    ),
    ("count_it", "filter/INPUT/count_it", "xt_nfacct"),
    (
        "to_kube",
        "filter/INPUT/to_kube",
        "jumps to chain KUBE-NOPE, which neither the wishes nor the kernel have",
    ),
    (
        "unknown_set",
        "filter/INPUT/unknown_set",
        "matches set nosuch, which neither the wishes nor the kernel have",
    ),
    (
        "redirect_in_mangle",
        "mangle/PREROUTING/redirect_in_mangle",
        "`-j REDIRECT` belongs in the nat table (nat/PREROUTING, nat/OUTPUT)",
    ),
];

/// Without CAP_SYS_ADMIN, rules are learned in an unhooked scratch chain
/// of the real tables: every wish refused for its table, its extensions,
/// its jump or its set is still named at once with its file and line,
/// before anything changes, and no scratch chain is named or left behind.
/// A target in the wrong hook of the right table (MASQUERADE in
/// PREROUTING) shows only when the kernel commits it: the apply fails
/// there and changes nothing.
fn without_a_private_namespace_what_the_scratch_chain_can_tell_is_named(backend: Backend) {
    let Some(ns) = Netns::new("refused_scratch", backend) else {
        return;
    };
    ns.iptables_restore(
        "*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n*mangle\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n\
         *nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n",
    );
    let dir = tempfile::tempdir().unwrap();
    let wishes = write_wishes(dir.path(), &refused_wishes(true));
    let (rules, sets) = (ns.iptables_save(), ns.ipset_save());
    for args in [&["plan"][..], &["apply"]] {
        let out = pyfw_without_sys_admin(&ns, &wishes, args);
        assert_eq!(out.code(), Some(1), "{args:?} must fail\n{out}");
        assert!(out.stderr.contains("using a scratch chain"), "{out}");
        let said: String = (out.stderr.lines())
            .filter(|l| l.starts_with("pyfw: error"))
            .collect();
        for bad in ["_pyfw_", "Error occurred at line", "line 3"] {
            assert!(!said.contains(bad), "`{bad}` reached the user\n{out}");
        }
        for (name, label, words) in REFUSED {
            let said = said_about(&out, &wishes, name, label);
            assert!(said.contains(words), "want `{words}` in:\n{said}\n{out}");
        }
        assert!(!said.contains("masquerade_early"), "{out}");
        assert!(!out.stdout.contains("Executing"), "{out}");
        common::assert_rules_eq(&ns.iptables_save(), &rules, &format!("{args:?}\n{out}"));
        common::assert_text_eq(&ns.ipset_save(), &sets, &format!("{args:?}\n{out}"));
    }
    // With the others gone, the hooked one fails the apply at commit.
    let only_hooked = refused_wishes(true)
        .lines()
        .filter(|l| {
            !REFUSED
                .iter()
                .any(|(name, _, _)| l.contains(&format!("- {name}:")))
        })
        .map(|l| format!("{l}\n"))
        .collect::<String>();
    std::fs::write(&wishes, only_hooked).unwrap();
    let out = pyfw_without_sys_admin(&ns, &wishes, &["apply"]);
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(out.stderr.contains("netfilter is as it was"), "{out}");
    if backend == Backend::Nft {
        said_about(
            &out,
            &wishes,
            "masquerade_early",
            "nat/PREROUTING/masquerade_early",
        );
    }
    common::assert_rules_eq(&ns.iptables_save(), &rules, &format!("{out}"));
    assert!(
        !ns.iptables_save().contains("_pyfw_"),
        "{}",
        ns.iptables_save()
    );
}

/// Wishes the kernel refuses for six reasons, beside good ones: a target
/// in a table it does not belong to (DNAT in filter, REDIRECT in mangle), one
/// in a hook it does not belong to (MASQUERADE in PREROUTING: refused
/// only in a hooked chain), a match whose object the kernel lacks
/// (`-m nfacct`), a jump to a chain that does not exist, and a set that
/// neither the wishes nor the kernel have. `plan` and `apply` both exit 1
/// naming every one of them with its file and line and the fix in words;
/// nothing changes.
fn every_refused_wish_is_named_with_its_file_and_line_before_anything_changes(backend: Backend) {
    let Some(ns) = Netns::new("refused_wishes", backend) else {
        return;
    };
    // The tables exist before (a read makes them on legacy).
    ns.iptables_restore(
        "*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n*mangle\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n\
         *nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n",
    );
    let dir = tempfile::tempdir().unwrap();
    let wishes = write_wishes(dir.path(), &refused_wishes(true));
    let (rules, sets) = (ns.iptables_save(), ns.ipset_save());
    for args in [&["plan"][..], &["apply"]] {
        let out = ns.run_pyfw(&wishes, args);
        assert_eq!(out.code(), Some(1), "{args:?} must fail\n{out}");
        nothing_internal(&out);
        let hooked = (
            "masquerade_early",
            "nat/PREROUTING/masquerade_early",
            "`-j MASQUERADE` belongs in nat/POSTROUTING",
        );
        for (name, label, words) in REFUSED.iter().chain([&hooked]) {
            let said = said_about(&out, &wishes, name, label);
            assert!(said.contains(words), "want `{words}` in:\n{said}\n{out}");
        }
        for good in ["allow_ssh", "trusted_ok", "redirect_ok"] {
            assert!(!out.stderr.contains(good), "{good} is not refused\n{out}");
        }
        assert!(out.stderr.contains("nothing was changed"), "{out}");
        assert!(
            !out.stdout.contains("Executing"),
            "refused before anything ran\n{out}"
        );
        common::assert_rules_eq(&ns.iptables_save(), &rules, &format!("{args:?}\n{out}"));
        common::assert_text_eq(&ns.ipset_save(), &sets, &format!("{args:?}\n{out}"));
    }
}

/// `-6` marks a line for ip6tables; iptables skips it without a word, so
/// the wish would never be in force. It is named, not "read back 0 rules".
fn a_rule_marked_for_ipv6_in_an_ipv4_chain_is_named(backend: Backend) {
    let Some(ns) = Netns::new("v6_in_v4", backend) else {
        return;
    };
    ns.iptables_restore("*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n");
    let dir = tempfile::tempdir().unwrap();
    let wishes = write_wishes(
        dir.path(),
        "pyfw_wishes:\n  iptables:\n    filter:\n      INPUT:\n        rules:\n        \
         - allow_ssh: -p tcp --dport 22 -j ACCEPT\n        \
         - only_v6: -6 -s ::1 -j ACCEPT\n",
    );
    let rules = ns.iptables_save();
    let out = ns.run_pyfw(&wishes, &["plan"]);
    assert_eq!(out.code(), Some(1), "{out}");
    nothing_internal(&out);
    let said = said_about(&out, &wishes, "only_v6", "filter/INPUT/only_v6");
    assert!(said.contains("-6"), "{said}");
    assert!(!out.stderr.contains("read back"), "{out}");
    common::assert_rules_eq(&ns.iptables_save(), &rules, "nothing changed");
}

/// A set with more members than its `maxelem`, which ipset would refuse
/// with `Hash is full` at a line of its restore input, is refused when the
/// file is read: pyfw names the set's wish with its file and line, its
/// maxelem, and the header that fits, and changes nothing.
fn a_set_over_its_maxelem_names_the_set_and_the_fix(backend: Backend) {
    let Some(ns) = Netns::new("set_full", backend) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let members: String = (1..=10).map(|i| format!("      - 10.0.0.{i}\n")).collect();
    let wishes = write_wishes(
        dir.path(),
        &format!(
            "pyfw_wishes:\n  ipsets:\n    small:\n      type: hash:ip\n      \
             header: family inet maxelem 4\n      members_equal:\n{members}"
        ),
    );
    let sets = ns.ipset_save();
    let out = ns.run_pyfw(&wishes, &["apply"]);
    assert_eq!(out.code(), Some(1), "{out}");
    nothing_internal(&out);
    let said = said_about(&out, &wishes, "header:", "ipset small");
    for words in [
        "Hash is full",
        "10 elements (as the kernel stores them)",
        "`maxelem 4` holds at most 4",
        "raise it to `maxelem 16`",
    ] {
        assert!(said.contains(words), "want `{words}` in:\n{said}");
    }
    assert!(
        !said.contains("65539") && !said.contains("in line"),
        "{said}"
    );
    common::assert_text_eq(&ns.ipset_save(), &sets, &format!("{out}"));
}

/// What iptables prints for a rule is what pyfw compares with. Where that
/// printed form loads back as another form (`--ipcompspi :` prints as
/// nothing, which loads as `--ipcompspi 0`), or is another rule
/// (`! --dport :` is left out), pyfw says so with the wish's file and line,
/// and still installs the wish and stays in sync. A rule printed stably
/// gets no warning. The verdicts are learned once: a second plan says the
/// same.
fn printed_forms_that_do_not_load_back_as_themselves_are_warned_about(backend: Backend) {
    let Some(ns) = Netns::new("loads_back", backend) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let wishes = write_wishes(
        dir.path(),
        "pyfw_wishes:\n  iptables:\n    filter:\n      INPUT:\n        rules:\n        \
         - allow_ssh: -p tcp --dport 22 -j ACCEPT\n        \
         - nodport: '-p tcp -m tcp ! --dport : -j ACCEPT'\n        \
         - ipcomp: '-p ipcomp -m ipcomp --ipcompspi : -j ACCEPT'\n",
    );
    let out = ns.run_pyfw(&wishes, &["plan"]);
    out.expect_ok("plan");
    nothing_internal(&out);
    // Legacy keeps `! --dport :` in the kernel's rule and prints it
    // without; iptables-nft leaves it out of the kernel's rule already (the
    // rule in force accepts every TCP packet), so the printed form is the
    // rule in force there and nothing tells them apart.
    let lossy_words = "which is another rule: pyfw installs your text, but cannot tell it from";
    match backend {
        Backend::Legacy => {
            let lossy = said_about(&out, &wishes, "nodport:", "filter/INPUT/nodport");
            assert!(lossy.starts_with("pyfw: warning: "), "{lossy}");
            assert!(lossy.contains(lossy_words), "{lossy}");
        }
        Backend::Nft => assert!(!out.stderr.contains("nodport"), "{out}"),
    }
    let unstable = said_about(&out, &wishes, "ipcomp:", "filter/INPUT/ipcomp");
    assert!(unstable.starts_with("pyfw: warning: "), "{unstable}");
    assert!(
        unstable.contains("-p ipcomp -m ipcomp -m comment --comment ipcomp -j ACCEPT`, which loads back as `-p ipcomp -m ipcomp --ipcompspi 0"),
        "{unstable}"
    );
    assert!(
        unstable.contains("restoring an iptables-save of this host would change it"),
        "{unstable}"
    );
    assert!(!out.stderr.contains("allow_ssh"), "{out}");
    ns.run_pyfw(&wishes, &["apply"]).expect_ok("apply");
    let check = ns.run_pyfw(&wishes, &["check"]);
    check.expect_ok("in sync after one apply");
    assert!(
        check.stderr.contains("which loads back as"),
        "said on every run\n{check}"
    );
    let again = ns.run_pyfw(&wishes, &["apply"]);
    again.expect_ok("a second apply");
    assert!(again.stdout.contains("Nothing to do"), "no churn\n{again}");
}

/// A second run with the same wishes takes the rule forms the first
/// learned (kept in pyfw's state directory) instead of loading its rules
/// again; but a kept verdict on a rule holds only while what the rule
/// names is surely there: a jump to a chain pyfw does not read is asked of
/// the kernel again, and once that chain is gone the rule is refused by
/// wish, as on a first run.
fn a_form_kept_from_an_earlier_run_is_trusted_only_while_what_it_names_is_there(backend: Backend) {
    let Some(ns) = Netns::new("kept_forms", backend) else {
        return;
    };
    ns.iptables(&["-N", "FOREIGN"]);
    let dir = tempfile::tempdir().unwrap();
    let wishes = write_wishes(
        dir.path(),
        "pyfw_wishes:\n  iptables:\n    filter:\n      INPUT:\n        rules:\n        \
         - allow_ssh: -p tcp --dport 22 -j ACCEPT\n        \
         - to_foreign: -p tcp --dport 80 -j FOREIGN\n",
    );
    let debug = |args: &[&str]| {
        let mut argv = vec![common::PYFW, "--wishes", wishes.to_str().unwrap()];
        argv.extend_from_slice(args);
        let mut cmd = ns.command_for(&argv);
        cmd.env("PYFW_LOG", "debug");
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.success(), text)
    };
    let (ok, first) = debug(&["plan"]);
    assert!(ok, "first plan\n{first}");
    assert!(!first.contains("kept from an earlier run"), "{first}");
    let (ok, second) = debug(&["plan"]);
    assert!(ok, "second plan\n{second}");
    // The jump to a chain pyfw does not read is asked again each run.
    assert!(
        second.contains("1 of 2 rule forms kept from an earlier run; 1 to learn"),
        "the second run learns only the jump again\n{second}"
    );
    ns.iptables(&["-X", "FOREIGN"]);
    let out = ns.run_pyfw(&wishes, &["plan"]);
    assert_ne!(out.code(), Some(0), "a jump to a chain that is gone\n{out}");
    let said = said_about(&out, &wishes, "to_foreign", "filter/INPUT/to_foreign");
    assert!(
        said.contains("jumps to chain FOREIGN, which neither the wishes nor the kernel have"),
        "{said}\n{out}"
    );
    nothing_internal(&out);
}

/// Rules that iptables prints otherwise than written (`--dport` gains
/// `-m tcp`) but that load back as themselves draw no warning where their
/// forms are learned in a scratch chain of the real tables: without
/// CAP_SYS_ADMIN (the systemd unit), and for a jump to a chain of the host
/// that pyfw does not read. (On nft, declaring the scratch chain again to
/// check the forms flushed it, and `-D` then missed: every such rule was
/// said to be one pyfw "cannot tell" from another.)
fn ordinary_rules_learned_in_a_scratch_chain_are_not_called_lossy(backend: Backend) {
    let Some(ns) = Netns::new("scratch_forms", backend) else {
        return;
    };
    ns.iptables(&["-N", "FOREIGN"]);
    let dir = tempfile::tempdir().unwrap();
    let wishes = write_wishes(
        dir.path(),
        "pyfw_wishes:\n  iptables:\n    filter:\n      INPUT:\n        rules:\n        \
         - web: -p tcp --dport 81 -j ACCEPT\n        \
         - to_mine: -p tcp --dport 82 -j MINE\n        \
         - to_foreign: -p tcp --dport 80 -j FOREIGN\n      \
         MINE:\n        rules:\n        - mine: -p udp --dport 53 -j ACCEPT\n",
    );
    // The scratch chain first: a form learned once is kept for the next
    // run (see the test above), which would then learn nothing.
    for (how, out) in [
        (
            "without CAP_SYS_ADMIN",
            pyfw_without_sys_admin(&ns, &wishes, &["plan"]),
        ),
        ("with a private namespace", ns.run_pyfw(&wishes, &["plan"])),
    ] {
        out.expect_ok(how);
        assert!(
            !out.stderr.contains("warning"),
            "{how}: no rule is lossy\n{out}"
        );
    }
}
