//! A wished user chain nothing jumps to is named with a warning by a plan
//! from saved dumps, as it is on real netfilter
//! (`tests/kernel/unreached_chains.rs`).

use std::path::{Path, PathBuf};

use crate::common::{self, spec};

fn write_wishes(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("wishes.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A plan from saved dumps (no kernel, no root) holds every chain, and
/// names an unreached chain the same way.
#[test]
fn a_plan_from_dumps_names_unreached_chains_too() {
    let dir = tempfile::tempdir().unwrap();
    let save = dir.path().join("iptables.save");
    let host = spec("docker-after-reboot.save").replace(
        ":DOCKER-ISOLATION - [0:0]\n",
        ":DOCKER-ISOLATION - [0:0]\n:DOCKER-USER - [0:0]\n-A FORWARD -j DOCKER-USER\n",
    );
    std::fs::write(&save, host).unwrap();
    let wishes = write_wishes(
        dir.path(),
        "pyfw_wishes:\n  iptables:\n    filter:\n      DOCKER_USER:\n        rules:\n        \
         - no_telnet: -p tcp --dport 23 -j DROP\n      DOCKER:\n        rules:\n        \
         - a: -p tcp --dport 24 -j DROP\n",
    );
    let out = std::process::Command::new(common::PYFW)
        .arg("--wishes")
        .arg(&wishes)
        .arg("--iptables-save")
        .arg(&save)
        .arg("plan")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(
        lines,
        [format!(
            "pyfw: warning: {}:4: filter/DOCKER_USER: nothing jumps to this chain (no rule in \
             filter, wished or in the kernel, has `-j DOCKER_USER` or `-g DOCKER_USER`), so its \
             rules never see a packet; did you mean DOCKER-USER?",
            wishes.display()
        )],
        "{stderr}"
    );
}
