//! The systemd unit files, checked with `systemd-analyze verify` against
//! the binary under test (and, as root, `systemd-tmpfiles --create` into a
//! scratch root). The daemon itself runs in `tests/kernel/daemon.rs`.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::common::{PYFW, base_path, effective_uid};

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .env("PATH", base_path())
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn the_unit_files_pass_systemd_checks() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    if !have("systemd-analyze") {
        // Not a namespace matter: a skip, even under PYFW_REQUIRE_NETNS=1.
        let _ = writeln!(
            std::io::stderr(),
            "SKIP the_unit_files_pass_systemd_checks: systemd-analyze is not installed"
        );
        return;
    }
    let unit = std::fs::read_to_string(root.join("systemd/pyfw.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/sbin/pyfw daemon"));
    // `verify` wants the binary to exist: point it at the one under test.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("pyfw.service");
    std::fs::write(&copy, unit.replace("/usr/local/sbin/pyfw", PYFW)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .env("PATH", base_path())
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    assert!(
        !said.contains("pyfw.service"),
        "systemd-analyze verify complains about the unit:\n{said}"
    );
    // (Creating a root-owned file needs root.)
    if have("systemd-tmpfiles") && effective_uid() == Some(0) {
        let fake_root = tempfile::tempdir().unwrap();
        let out = Command::new("systemd-tmpfiles")
            .arg("--create")
            .arg(format!("--root={}", fake_root.path().display()))
            .arg(root.join("systemd/pyfw.conf"))
            .env("PATH", base_path())
            .output()
            .unwrap();
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(fake_root.path().join("run/xtables.lock").is_file());
        let run_dir = std::fs::symlink_metadata(fake_root.path().join("run/pyfw")).unwrap();
        assert!(run_dir.is_dir());
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&run_dir.permissions()) & 0o7777,
            0o700,
            "/run/pyfw holds pyfw's locks: root's alone"
        );
    }
}
