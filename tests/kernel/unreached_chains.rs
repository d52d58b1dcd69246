//! A wished user chain that nothing jumps to is named with a warning by
//! `pyfw plan` (and `check`, `apply`): its rules would never see a packet.
//! `filter: PREROUTING:` or the typo `DOCKER_USER:` make such a chain
//! without a word otherwise. The warning names the near name where there
//! is one. A chain reached from a chain the plan did not read (the wishes
//! name only the chain itself) is found reached all the same, and the
//! spec's own wishes (a DOCKER chain only Docker's rules jump to) get no
//! warning on the spec's host. The same from saved dumps, without root:
//! `tests/offline/unreached_chains.rs`.

use crate::common;

use std::path::{Path, PathBuf};

use common::{Backend, Netns, Out, spec};

on_both_backends!(
    the_specs_wishes_get_no_warning_on_the_specs_host,
    a_typo_in_a_chain_name_is_named_with_the_near_name,
    a_builtin_chain_of_another_table_is_named,
    a_chain_reached_from_a_chain_not_wished_is_reached,
);

fn write_wishes(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("wishes.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The `pyfw: warning:` lines a command printed.
fn warnings(out: &Out) -> Vec<String> {
    out.stderr
        .lines()
        .filter(|l| l.starts_with("pyfw: warning:"))
        .map(String::from)
        .collect()
}

/// The spec's host (Docker's rules, FORWARD jumping to DOCKER) with
/// modern Docker's DOCKER-USER chain, jumped to from FORWARD.
fn docker_host(ns: &Netns) {
    ns.iptables_restore(&spec("docker-after-reboot.save"));
    ns.iptables(&["-N", "DOCKER-USER"]);
    ns.iptables(&["-I", "FORWARD", "1", "-j", "DOCKER-USER"]);
    ns.ip6tables(&["-N", "DOCKER-USER"]);
    ns.ip6tables(&["-I", "FORWARD", "1", "-j", "DOCKER-USER"]);
}

fn the_specs_wishes_get_no_warning_on_the_specs_host(backend: Backend) {
    let Some(ns) = Netns::new("unreached_spec", backend) else {
        return;
    };
    ns.iptables_restore(&spec("docker-after-reboot.save"));
    let dir = tempfile::tempdir().unwrap();
    let wishes = write_wishes(dir.path(), &spec("wishes.yaml"));
    for (what, args) in [
        ("plan", ["plan"]),
        ("apply", ["apply"]),
        ("check", ["check"]),
    ] {
        let out = ns.run_pyfw(&wishes, &args);
        out.expect_ok(what);
        assert_eq!(warnings(&out), Vec::<String>::new(), "{what}\n{out}");
    }
}

fn a_typo_in_a_chain_name_is_named_with_the_near_name(backend: Backend) {
    let Some(ns) = Netns::new("unreached_typo", backend) else {
        return;
    };
    docker_host(&ns);
    let dir = tempfile::tempdir().unwrap();
    // Only the typo is wished: FORWARD, which jumps to DOCKER-USER, is
    // not, so the plan reads the table to know what jumps where.
    let wishes = write_wishes(
        dir.path(),
        "pyfw_wishes:\n  iptables:\n    filter:\n      DOCKER_USER:\n        rules:\n        \
         - no_telnet: -p tcp --dport 23 -j DROP\n  ip6tables:\n    filter:\n      \
         docker-user:\n        rules:\n        - no_telnet: -p tcp --dport 23 -j DROP\n",
    );
    let shown = wishes.display();
    let expected = [
        format!(
            "pyfw: warning: {shown}:4: filter/DOCKER_USER: nothing jumps to this chain (no \
             rule in filter, wished or in the kernel, has `-j DOCKER_USER` or `-g \
             DOCKER_USER`), so its rules never see a packet; did you mean DOCKER-USER?"
        ),
        format!(
            "pyfw: warning: {shown}:9: ip6tables:filter/docker-user: nothing jumps to this \
             chain (no rule in filter, wished or in the kernel, has `-j docker-user` or `-g \
             docker-user`), so its rules never see a packet; did you mean DOCKER-USER?"
        ),
    ];
    for args in [&["plan"][..], &["apply"], &["check"]] {
        let out = ns.run_pyfw(&wishes, args);
        assert!(out.code() == Some(0) || out.code() == Some(2), "{out}");
        assert_eq!(warnings(&out), expected, "{args:?}\n{out}");
    }
    // Fixed: the rule goes where Docker's jump leads, and nothing is said.
    let fixed = write_wishes(
        dir.path(),
        "pyfw_wishes:\n  iptables:\n    filter:\n      DOCKER-USER:\n        rules:\n        \
         - no_telnet: -p tcp --dport 23 -j DROP\n",
    );
    let out = ns.run_pyfw(&fixed, &["plan"]);
    out.expect_ok("plan the fixed wishes");
    assert_eq!(warnings(&out), Vec::<String>::new(), "{out}");
}

fn a_builtin_chain_of_another_table_is_named(backend: Backend) {
    let Some(ns) = Netns::new("unreached_builtin", backend) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let wishes = write_wishes(
        dir.path(),
        "pyfw_wishes:\n  iptables:\n    filter:\n      INPUT:\n        rules:\n        \
         - ssh: -p tcp --dport 22 -j ACCEPT\n      PREROUTING:\n        rules:\n        \
         - early: -p tcp --dport 80 -j ACCEPT\n    nat:\n      FORWARD:\n        rules:\n        \
         - nothing: -j RETURN\n",
    );
    let out = ns.run_pyfw(&wishes, &["plan"]);
    out.expect_ok("plan");
    let shown = wishes.display();
    assert_eq!(
        warnings(&out),
        [
            format!(
                "pyfw: warning: {shown}:7: filter/PREROUTING: filter has no built-in PREROUTING \
                 (PREROUTING is in raw, mangle and nat), so this is a user chain, and nothing \
                 jumps to it (no rule in filter, wished or in the kernel, has `-j PREROUTING` or \
                 `-g PREROUTING`): its rules never see a packet"
            ),
            format!(
                "pyfw: warning: {shown}:11: nat/FORWARD: nat has no built-in FORWARD (FORWARD is \
                 in mangle, filter and security), so this is a user chain, and nothing jumps to \
                 it (no rule in nat, wished or in the kernel, has `-j FORWARD` or `-g FORWARD`): \
                 its rules never see a packet"
            ),
        ],
        "{out}"
    );
}

fn a_chain_reached_from_a_chain_not_wished_is_reached(backend: Backend) {
    let Some(ns) = Netns::new("unreached_deep", backend) else {
        return;
    };
    // INPUT -> THEIRS -> MINE, where the wishes name only MINE: the plan
    // reads neither INPUT nor THEIRS for the wishes' sake.
    ns.iptables(&["-N", "MINE"]);
    ns.iptables(&["-N", "THEIRS"]);
    ns.iptables(&["-A", "INPUT", "-j", "THEIRS"]);
    ns.iptables(&["-A", "THEIRS", "-p", "udp", "-g", "MINE"]);
    let dir = tempfile::tempdir().unwrap();
    let wishes = write_wishes(
        dir.path(),
        "pyfw_wishes:\n  iptables:\n    filter:\n      MINE:\n        rules:\n        \
         - a: -p tcp --dport 1 -j ACCEPT\n      LONELY:\n        rules:\n        \
         - b: -p tcp --dport 2 -j ACCEPT\n      EMPTY: {}\n",
    );
    // LONELY is reached by nothing; EMPTY holds no rules to miss packets.
    let shown = wishes.display();
    let expected = [format!(
        "pyfw: warning: {shown}:7: filter/LONELY: nothing jumps to this chain (no rule in \
         filter, wished or in the kernel, has `-j LONELY` or `-g LONELY`), so its rules never \
         see a packet"
    )];
    let out = ns.run_pyfw(&wishes, &["apply"]);
    out.expect_ok("apply");
    assert_eq!(warnings(&out), expected, "{out}");
    // Once applied, pyfw owns MINE's rule and LONELY: the same.
    let out = ns.run_pyfw(&wishes, &["check"]);
    out.expect_ok("check");
    assert_eq!(warnings(&out), expected, "{out}");
}
