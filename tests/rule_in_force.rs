//! The rule in force is the rule wished: pyfw installs what the wish says
//! (with its comment) and uses iptables' printed form only to compare.
//! Where iptables' printer loses part of a rule, installing the printed
//! form instead would put a different rule in force (and `check` would
//! still say "in sync"), or would churn forever.

#[macro_use]
mod common;

use common::{Backend, Netns};

on_both_backends!(what_iptables_prints_lossily_is_installed_as_written);

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
