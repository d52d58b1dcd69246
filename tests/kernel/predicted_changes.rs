//! On legacy, `apply` works out the "State changes" it prints from its
//! plan (`pyfw::plan::predict`), holding the xtables lock from its first read to
//! its commit; on nft it reads the touched chains back. The same story in
//! three namespaces (nft; legacy; legacy without CAP_SYS_ADMIN, where rule
//! forms are learned in a scratch chain) must print the same changes and
//! leave the same rules: inserts, moves by the temp-rule trick after a
//! Docker restart, withdrawn rules, a policy change, a new chain beside a
//! new set, and the chain's removal.
//!
//! Needs root; see `tests/common/mod.rs` for how a test skips (or, with
//! `PYFW_REQUIRE_NETNS=1`, fails) where namespaces are unavailable.

use crate::common;

use common::{Backend, Netns, Out, PYFW, assert_text_eq, normalize_rules, spec};

/// The chains' lines of the "State changes" an apply printed (sets are
/// read back on both backends, and list their members in a random order).
fn changes(out: &Out) -> String {
    out.expect_ok("apply");
    let (_, changes) = out
        .stdout
        .split_once("State changes:\n")
        .unwrap_or_else(|| panic!("no changes shown:\n{}", out.stdout));
    (changes.lines())
        .filter(|l| {
            l.get(2..)
                .is_some_and(|l| l.starts_with(":") || l.starts_with("-A "))
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
fn legacy_shows_the_changes_that_nft_reads_back() {
    let (Some(nft), Some(legacy), Some(scratch)) = (
        Netns::new("predicted_changes", Backend::Nft),
        Netns::new("predicted_changes", Backend::Legacy),
        Netns::new("predicted_changes_scratch", Backend::Legacy),
    ) else {
        return;
    };
    // Without CAP_SYS_ADMIN (as under the systemd unit) rule forms are
    // learned in a scratch chain, and a rule naming a set the plan creates
    // is not learned before the apply.
    let no_sys_admin = [
        "setpriv",
        "--inh-caps=-sys_admin",
        "--bounding-set=-sys_admin",
        "--",
    ];
    let full = spec("wishes.yaml");
    let less: String = (full.lines())
        .filter(|l| !l.contains("allow_ssh") && !l.contains("allow_inter_docker"))
        .map(|l| format!("{l}\n"))
        .collect();
    // A new set, and a rule naming it written otherwise than iptables
    // prints it: without a private namespace its form cannot be learned
    // before the set exists, and that apply reads the chains back.
    let more = full
        .replace("default_action: DROP", "default_action: ACCEPT")
        .replace(
            "  ipsets:\n",
            "  ipsets:\n    fresh_set:\n      type: hash:ip\n      members_equal: [203.0.113.9]\n",
        )
        + "      PYFW-EXTRA:\n        rules:\n        - extra_one: -s 198.51.100.7 -j DROP\n        \
           - extra_two: -p udp --dport 53 -j ACCEPT\n        \
           - extra_set: -m set --match-set fresh_set src -m conntrack --ctstate \
           ESTABLISHED,RELATED -j ACCEPT\n";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wishes.yaml");
    let runs = [
        (&nft, &[][..]),
        (&legacy, &[][..]),
        (&scratch, &no_sys_admin[..]),
    ];
    for (ns, _) in runs {
        ns.iptables_restore(&spec("docker-after-reboot.save"));
    }
    // (what happens to the host first, the wishes)
    let story: [(Option<&str>, &str, &str); 5] = [
        (None, &full, "first apply: inserts, policies"),
        (
            Some("after-docker-restart.save"),
            &full,
            "after a Docker restart: a move",
        ),
        (None, &less, "two rules withdrawn"),
        (None, &more, "a new chain, policies back to ACCEPT"),
        (None, &full, "the chain withdrawn, policies DROP again"),
    ];
    for (host, wishes, what) in story {
        std::fs::write(&path, wishes).unwrap();
        let mut seen = Vec::new();
        for (ns, prefix) in runs {
            if let Some(save) = host {
                ns.iptables_restore(&spec(save));
            }
            let mut argv = prefix.to_vec();
            argv.extend([PYFW, "--wishes", path.to_str().unwrap(), "apply"]);
            let shown = changes(&ns.run(&argv));
            seen.push((shown, normalize_rules(&ns.iptables_save())));
        }
        let (read_back, nft_rules) = &seen[0];
        assert!(!read_back.is_empty(), "{what}: no chain changed?");
        for ((worked_out, legacy_rules), how) in seen[1..].iter().zip(["", " (scratch chain)"]) {
            assert_text_eq(
                worked_out,
                read_back,
                &format!("{what}{how}: changes shown"),
            );
            assert_text_eq(legacy_rules, nft_rules, &format!("{what}{how}: rules"));
        }
    }
}
