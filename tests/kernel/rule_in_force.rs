//! The rule in force is the rule wished: pyfw installs what the wish says
//! (with its comment) and uses iptables' printed form only to compare.
//! Where iptables' printer loses part of a rule, installing the printed
//! form instead would put a different rule in force (and `check` would
//! still say "in sync"), or would churn forever.

use crate::common;

use common::{Backend, Netns};

on_both_backends!(
    what_iptables_prints_lossily_is_installed_as_written,
    set_members_written_as_ranges_are_in_sync,
);

/// `-p tcp -m tcp ! --dport :` matches no packet; iptables prints it as
/// `-p tcp -m tcp`, which accepts every TCP packet. `--ipcompspi :` prints
/// as nothing, which loads back otherwise. Both are in force as written
/// after one apply (`iptables -C` with the wish's own text finds them),
/// and in sync: a second apply changes nothing.
fn what_iptables_prints_lossily_is_installed_as_written(backend: Backend) {
    let Some(ns) = Netns::new("lossy", backend) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let wishes = dir.path().join("wishes.yaml");
    std::fs::write(
        &wishes,
        "pyfw_wishes:\n  iptables:\n    filter:\n      INPUT:\n        rules:\n        \
         - nodport: '-p tcp -m tcp ! --dport : -j ACCEPT'\n        \
         - ipcomp: '-p ipcomp -m ipcomp --ipcompspi : -j ACCEPT'\n",
    )
    .unwrap();
    ns.run_pyfw(&wishes, &["apply"]).expect_ok("apply");
    for (name, wished) in [
        ("nodport", "-p tcp -m tcp ! --dport :"),
        ("ipcomp", "-p ipcomp -m ipcomp --ipcompspi :"),
    ] {
        let mut argv = vec!["iptables", "-w", "-C", "INPUT"];
        argv.extend(wished.split(' '));
        argv.extend(["-m", "comment", "--comment", name, "-j", "ACCEPT"]);
        let out = ns.run(&argv);
        assert!(
            out.success(),
            "{name}: the rule in force is not the wished one\n{out}\n{}",
            ns.iptables_save()
        );
    }
    ns.run_pyfw(&wishes, &["check"])
        .expect_ok("in sync after one apply");
    let again = ns.run_pyfw(&wishes, &["apply"]);
    again.expect_ok("a second apply");
    assert!(again.stdout.contains("Nothing to do"), "no churn\n{again}");
}

/// Members written as ranges or networks where ipset stores something else
/// (each port of a port range, the networks that cover an address range in
/// a `hash:net` part) are in sync after one apply: compared as ipset
/// stores them, they never churn.
fn set_members_written_as_ranges_are_in_sync(backend: Backend) {
    let Some(ns) = Netns::new("set_ranges", backend) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let wishes = dir.path().join("wishes.yaml");
    std::fs::write(
        &wishes,
        "pyfw_wishes:\n  ipsets:\n    ports:\n      type: hash:ip,port\n      \
         members_equal: ['10.0.0.1,tcp:80-82', '10.0.0.0/31,udp:53']\n    nets:\n      \
         type: hash:net\n      members_equal: [10.0.0.1-10.0.0.10, 192.168.1.0/24]\n    \
         netports:\n      type: hash:net,port\n      members_equal: ['10.2.0.1-10.2.0.3,tcp:22-23']\n    \
         bports:\n      type: bitmap:port\n      header: range 1-1000\n      members_equal: [80-82]\n",
    )
    .unwrap();
    ns.run_pyfw(&wishes, &["apply"]).expect_ok("apply");
    ns.run_pyfw(&wishes, &["check"])
        .expect_ok("in sync after one apply");
}
