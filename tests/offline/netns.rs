//! `pyfw plan` and `check` from saved dumps, with no kernel tool on `PATH`:
//! the offline half of `tests/kernel/netns.rs`.

use std::path::Path;

use crate::common::{self, PYFW, assert_text_eq, run_command, spec, spec_path};

/// Runs pyfw outside any namespace with an empty `PATH`: with saved dumps it
/// must not need any kernel tool.
fn pyfw_offline(args: &[&str]) -> common::Out {
    let empty = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(PYFW);
    cmd.args(args)
        .env("PATH", empty.path())
        .env("LC_ALL", "C")
        .env_remove("PYFW_WISHES")
        .env_remove("PYFW_BACKEND");
    let mut argv = vec![PYFW.to_string()];
    argv.extend(args.iter().map(|s| s.to_string()));
    run_command(cmd, argv, None)
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("fixture path is UTF-8")
}

/// `plan` from saved dumps prints the spec's commands; `check` from saved
/// dumps tells drift (2) from sync (0). No root, no namespace.
#[test]
fn offline_plan_needs_no_kernel() {
    let wishes = spec_path("wishes.yaml");
    let restart = spec_path("after-docker-restart.save");
    let applied = spec_path("after-apply.save");
    let ipsets = spec_path("ipset.save");
    let (wishes, restart, applied, ipsets) = (
        path_str(&wishes),
        path_str(&restart),
        path_str(&applied),
        path_str(&ipsets),
    );

    let plan = pyfw_offline(&[
        "--wishes",
        wishes,
        "plan",
        "--iptables-save",
        restart,
        "--ipset-save",
        ipsets,
    ]);
    plan.expect_ok("offline `pyfw plan`");
    assert_text_eq(
        &plan.lines_not_starting_with("#"),
        &spec("apply-commands.txt"),
        &format!("offline plan must be the spec's commands\n{plan}"),
    );

    pyfw_offline(&[
        "--wishes",
        wishes,
        "check",
        "--iptables-save",
        restart,
        "--ipset-save",
        ipsets,
    ])
    .expect_code(2, "offline `pyfw check` after the Docker restart");
    pyfw_offline(&[
        "--wishes",
        wishes,
        "check",
        "--iptables-save",
        applied,
        "--ipset-save",
        ipsets,
    ])
    .expect_code(0, "offline `pyfw check` after apply");
}
