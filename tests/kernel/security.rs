//! The security pass: what a wishes file can and cannot make pyfw do.
//!
//! - Every string from the wishes file reaches a process as one argv
//!   element (or one quoted token of a restore file), never a shell: shell
//!   payloads in each field create no file, and the errors are clean.
//! - A wishes file or directory that others could write is refused, unless
//!   `--allow-insecure-wishes`, for the CLI and the daemon.
//! - A wishes file over the size budget is refused before it is parsed.
//! - Only regular files are read: a FIFO (or a directory, a device) at the
//!   wishes path is refused at once, never waited on.
//!
//! The namespace tests need root (see `tests/common/mod.rs`).

use crate::common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Backend, Netns, PYFW, spec};

on_both_backends!(shell_payloads_in_every_field_stay_data);

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn arg(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Payloads that would create `marker` if any shell ever saw them.
fn payloads(marker: &Path) -> Vec<String> {
    let m = marker.display();
    vec![
        format!("$(touch {m})"),
        format!("`touch {m}`"),
        format!("; touch {m}"),
        format!("| touch {m}"),
        format!("&& touch {m}"),
        format!("\ntouch {m}"),
        format!("'; touch {m}; echo '"),
        format!("\"; touch {m}; echo \""),
        format!("$(touch${{IFS}}{m})"),
        // A restore-file injection: a newline, then a command of its own.
        "x\n-P OUTPUT DROP\n-A INPUT -j DROP".to_string(),
    ]
}

/// One wishes file per field, with `payload` in it.
fn wishes_with(field: &str, payload: &str) -> String {
    let q = |s: &str| format!("{s:?}"); // a YAML double-quoted string
    let chain_ok = "INPUT";
    match field {
        "rule text" => format!(
            "pyfw_wishes:\n  iptables:\n    filter:\n      {chain_ok}:\n        rules:\n        \
             - logged: {}\n",
            q(&format!(
                "-j LOG --log-prefix {}",
                shlex::try_quote(payload).unwrap_or_default()
            ))
        ),
        "rule text (raw)" => format!(
            "pyfw_wishes:\n  iptables:\n    filter:\n      {chain_ok}:\n        rules:\n        \
             - raw: {}\n",
            q(&format!("-p tcp {payload} -j ACCEPT"))
        ),
        "rule name" => format!(
            "pyfw_wishes:\n  iptables:\n    filter:\n      {chain_ok}:\n        rules:\n        \
             - {}: -j ACCEPT\n",
            q(payload)
        ),
        "chain name" => format!(
            "pyfw_wishes:\n  iptables:\n    filter:\n      {}:\n        rules:\n        \
             - r: -j RETURN\n",
            q(payload)
        ),
        "~match" => format!(
            "pyfw_wishes:\n  iptables:\n    filter:\n      {chain_ok}:\n        rules:\n        \
             - '~match': {}\n",
            q(&regex::escape(payload))
        ),
        "set name" => format!(
            "pyfw_wishes:\n  ipsets:\n    {}:\n      type: hash:ip\n      members_equal: \
             [10.0.0.1]\n",
            q(payload)
        ),
        "set member" => format!(
            "pyfw_wishes:\n  ipsets:\n    s:\n      type: hash:ip\n      members_equal: [{}]\n",
            q(payload)
        ),
        "set header" => format!(
            "pyfw_wishes:\n  ipsets:\n    s:\n      type: hash:ip\n      header: {}\n",
            q(&format!("comment {payload}"))
        ),
        "set type" => format!(
            "pyfw_wishes:\n  ipsets:\n    s:\n      type: {}\n",
            q(payload)
        ),
        "set in a rule" => format!(
            "pyfw_wishes:\n  iptables:\n    filter:\n      {chain_ok}:\n        rules:\n        \
             - m: {}\n",
            q(&format!(
                "-m set --match-set {} src -j ACCEPT",
                shlex::try_quote(payload).unwrap_or_default()
            ))
        ),
        other => panic!("unknown field {other}"),
    }
}

const FIELDS: &[&str] = &[
    "rule text",
    "rule text (raw)",
    "rule name",
    "chain name",
    "~match",
    "set name",
    "set member",
    "set header",
    "set type",
    "set in a rule",
];

/// Applies wishes with a payload in every field, on real netfilter: no
/// marker file appears, pyfw exits 0 or 1 (never a signal or a panic), an
/// error names the file, and what iptables stored is the payload as text.
fn shell_payloads_in_every_field_stay_data(backend: Backend) {
    let Some(ns) = Netns::new("shell_payloads", backend) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let markers = tempfile::tempdir().unwrap();
    let mut applied = 0;
    for field in FIELDS {
        for (i, payload) in payloads(&markers.path().join("pwned")).iter().enumerate() {
            let marker = markers.path().join("pwned");
            let payload = payload.replace(arg(&markers.path().join("pwned")), arg(&marker));
            let wishes = dir.path().join("wishes.yaml");
            std::fs::write(&wishes, wishes_with(field, &payload)).unwrap();
            let what = format!("{field} #{i} {payload:?}");
            let out = ns.run_pyfw(&wishes, &["apply"]);
            assert!(
                matches!(out.code(), Some(0 | 1)),
                "{what}: exit 0 or 1, not a signal\n{out}"
            );
            assert!(!out.stderr.contains("panicked"), "{what}\n{out}");
            if out.code() == Some(1) {
                assert!(
                    out.stderr.contains("pyfw: error: ")
                        && (out.stderr.contains(arg(&wishes))
                            || out.stderr.contains("filter/INPUT/")),
                    "{what}: the error names the file or the wish\n{out}"
                );
            } else {
                applied += 1;
            }
            assert!(!marker.exists(), "{what}: a shell ran the payload\n{out}");
            // Never a command smuggled into a restore file.
            let rules = ns.iptables_save();
            assert!(
                !rules.contains(":OUTPUT DROP") && !rules.contains("-A INPUT -j DROP"),
                "{what}: a restore-file injection took effect\n{rules}\n{out}"
            );
            // Start the next payload from a clean namespace.
            ns.iptables_restore("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n");
            ns.ok(&["ipset", "destroy"], "ipset destroy");
        }
    }
    // Some payloads are valid text for iptables (a log prefix, a regex):
    // those went in as data.
    assert!(applied >= 10, "only {applied} payloads applied");
    let wishes = dir.path().join("wishes.yaml");
    std::fs::write(&wishes, wishes_with("rule text", "$(touch /nonexistent/x)")).unwrap();
    ns.run_pyfw(&wishes, &["apply"])
        .expect_ok("a log prefix with a payload");
    let rules = ns.iptables_save();
    assert!(
        rules.contains("--log-prefix \"$(touch /nonexistent/x)\""),
        "stored as text\n{rules}"
    );
}

/// Rule text with a control character inside an argument is refused at
/// validation, naming the line: no such argument is valid for iptables,
/// and a newline could end a line of a restore file.
#[test]
fn control_characters_in_rule_text_are_refused() {
    for (text, bad) in [
        ("-j LOG --log-prefix \"a\\nb\"", "newline"),
        ("-j LOG --log-prefix \"a\\rb\"", "carriage return"),
        ("-j LOG --log-prefix \"a\\u0000b\"", "NUL"),
    ] {
        let yaml = format!(
            "pyfw_wishes:\n  iptables:\n    filter:\n      INPUT:\n        rules:\n        - \
             logged: \"{}\"\n",
            text.replace('"', "\\\"").replace("\\\\", "\\")
        );
        let e = pyfw::wishes::parse(&yaml, Path::new("w.yaml")).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("w.yaml:6: filter/INPUT/logged") && msg.contains("control character"),
            "{bad}: {msg}"
        );
    }
}

fn secure_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    chmod(dir.path(), 0o755);
    dir
}

fn write_wishes(dir: &Path, mode: u32) -> PathBuf {
    let path = dir.join("wishes.yaml");
    std::fs::write(&path, spec("wishes.yaml")).unwrap();
    chmod(&path, mode);
    path
}

/// Offline: no root needed, the same checks apply to `plan`.
fn offline(args: &[&str], env: &[(&str, &str)]) -> common::Out {
    let mut cmd = std::process::Command::new(PYFW);
    cmd.args(args)
        .env_remove("PYFW_WISHES")
        .env_remove("PYFW_ALLOW_INSECURE_WISHES");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let argv = args.iter().map(|s| s.to_string()).collect();
    common::run_command(cmd, argv, None)
}

#[test]
fn insecure_wishes_are_refused_unless_allowed() {
    let empty = tempfile::NamedTempFile::new().unwrap();
    let dump = arg(empty.path()).to_string();
    let plan = |wishes: &Path, extra: &[&str], env: &[(&str, &str)]| {
        let mut args = vec!["--wishes", arg(wishes), "plan", "--iptables-save", &dump];
        args.extend_from_slice(extra);
        offline(&args, env)
    };
    let dir = secure_dir();
    let wishes = write_wishes(dir.path(), 0o644);
    plan(&wishes, &[], &[]).expect_ok("a root-owned 0644 file in a 0755 directory");

    for (file_mode, dir_mode, needle) in [
        (0o664, 0o755, "writable by its group"),
        (0o646, 0o755, "writable by others"),
        (0o644, 0o775, "the directory"),
        (0o644, 0o1777, "the directory"),
    ] {
        chmod(&wishes, file_mode);
        chmod(dir.path(), dir_mode);
        let out = plan(&wishes, &[], &[]);
        assert_eq!(out.code(), Some(1), "{file_mode:o}/{dir_mode:o}\n{out}");
        assert!(
            out.stderr.contains(needle)
                && out.stderr.contains("refusing to use it")
                && out.stderr.contains("--allow-insecure-wishes")
                && out.stderr.contains(arg(&wishes)),
            "{file_mode:o}/{dir_mode:o}: a clear error\n{out}"
        );
        let out = plan(&wishes, &["--allow-insecure-wishes"], &[]);
        out.expect_ok("with --allow-insecure-wishes");
        assert!(out.stderr.contains("insecure, read anyway"), "{out}");
        plan(&wishes, &[], &[("PYFW_ALLOW_INSECURE_WISHES", "1")])
            .expect_ok("with PYFW_ALLOW_INSECURE_WISHES=1");
    }
    chmod(dir.path(), 0o755);
    chmod(&wishes, 0o644);
    // Owned by another user: refused when running as root.
    if common_euid() == 0 {
        std::os::unix::fs::chown(&wishes, Some(4242), None).unwrap();
        let out = plan(&wishes, &[], &[]);
        assert_eq!(out.code(), Some(1), "{out}");
        assert!(out.stderr.contains("owned by uid 4242, not root"), "{out}");
    }
}

/// A Kubernetes ConfigMap's directory is mode 0777 but mounted read-only:
/// with `PYFW_TRUST_READ_ONLY_MOUNTS=1` (the DaemonSet sets it) pyfw trusts
/// it without `--allow-insecure-wishes`. Without the opt-in, or mounted
/// read-write, it is refused.
#[test]
fn a_read_only_mount_counts_as_not_writable_when_opted_in() {
    let test = "a_read_only_mount_counts_as_not_writable_when_opted_in";
    if common_euid() != 0 {
        assert_ne!(
            std::env::var("PYFW_REQUIRE_NETNS").as_deref(),
            Ok("1"),
            "{test} needs root for a mount namespace"
        );
        eprintln!("SKIP {test}: not root");
        return;
    }
    let empty = tempfile::NamedTempFile::new().unwrap();
    let dir = secure_dir();
    let wishes = write_wishes(dir.path(), 0o644);
    chmod(dir.path(), 0o777);
    let trust = [("PYFW_TRUST_READ_ONLY_MOUNTS", "1")];
    let plan = [
        "--wishes",
        arg(&wishes),
        "plan",
        "--iptables-save",
        arg(empty.path()),
    ];
    let out = offline(&plan, &trust);
    assert_eq!(out.code(), Some(1), "writable, mounted read-write\n{out}");
    assert!(out.stderr.contains("writable by group and others"), "{out}");

    // The same directory, bind-mounted read-only in a private mount
    // namespace (the host's mounts are not touched).
    let read_only = |env: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(r#"mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@""#)
            .args(["sh", arg(dir.path()), PYFW])
            .args(plan)
            .env_remove("PYFW_WISHES")
            .env_remove("PYFW_ALLOW_INSECURE_WISHES")
            .env_remove("PYFW_TRUST_READ_ONLY_MOUNTS");
        for (k, v) in env {
            cmd.env(k, v);
        }
        common::run_command(cmd, vec!["unshare ... pyfw plan".into()], None)
    };
    let out = read_only(&[]);
    assert_eq!(out.code(), Some(1), "read-only, not opted in\n{out}");
    assert!(out.stderr.contains("writable by group and others"), "{out}");
    let out = read_only(&trust);
    out.expect_ok("a 0777 directory on a read-only mount, opted in");
    assert!(!out.stderr.contains("insecure"), "{out}");
}

fn common_euid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(String::from))
        })
        .and_then(|u| u.parse().ok())
        .unwrap_or(u32::MAX)
}

/// The daemon refuses to start on an insecure file unless allowed, and an
/// edit that makes the file insecure changes nothing.
#[test]
fn the_daemon_refuses_insecure_wishes_unless_allowed() {
    let Some(ns) = Netns::new("daemon_insecure", Backend::Nft) else {
        return;
    };
    let dir = secure_dir();
    let wishes = write_wishes(dir.path(), 0o666);
    let out = ns.run(&[PYFW, "--wishes", arg(&wishes), "daemon", "--interval", "1h"]);
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(
        out.stderr.contains("refusing to use it") && out.stderr.contains("writable by"),
        "{out}"
    );
    // Allowed: it starts and enforces.
    let mut daemon = ns
        .command_for(&[
            PYFW,
            "--wishes",
            arg(&wishes),
            "daemon",
            "--interval",
            "300ms",
            "--allow-insecure-wishes",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !ns
        .run_pyfw(&wishes, &["--allow-insecure-wishes", "check"])
        .success()
    {
        assert!(start.elapsed() < Duration::from_secs(30), "never in sync");
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = daemon.kill();
    let _ = daemon.wait();
}

/// A wishes file over 64 MiB is refused at once, without being parsed.
#[test]
fn an_oversized_wishes_file_is_refused() {
    let dir = secure_dir();
    let wishes = dir.path().join("wishes.yaml");
    let mut text = spec("wishes.yaml");
    text.push_str(&format!("# {}\n", "x".repeat(65 << 20)));
    std::fs::write(&wishes, text).unwrap();
    chmod(&wishes, 0o644);
    let empty = tempfile::NamedTempFile::new().unwrap();
    let out = offline(
        &[
            "--wishes",
            arg(&wishes),
            "plan",
            "--iptables-save",
            arg(empty.path()),
        ],
        &[],
    );
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(out.stderr.contains("larger than 64 MiB"), "{out}");
}

/// A FIFO at the wishes path is refused at once with a clear error, by
/// `plan` (offline) and `apply` alike: opening it never waits for a writer.
/// (Each command runs under the harness's timeout, which a hang would hit.)
#[test]
fn a_fifo_at_the_wishes_path_is_refused_at_once() {
    use std::os::unix::ffi::OsStrExt;
    let dir = secure_dir();
    let wishes = dir.path().join("wishes.yaml");
    let c = std::ffi::CString::new(wishes.as_os_str().as_bytes()).unwrap();
    // SAFETY: mkfifo(3) with a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let refused = format!(
        "{}: cannot read: not a regular file (a FIFO); pyfw reads wishes only from regular files",
        wishes.display()
    );
    let empty = tempfile::NamedTempFile::new().unwrap();
    let out = offline(
        &[
            "--wishes",
            arg(&wishes),
            "plan",
            "--iptables-save",
            arg(empty.path()),
        ],
        &[],
    );
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(out.stderr.contains(&refused), "{out}");

    let Some(ns) = Netns::new("fifo_apply", Backend::Nft) else {
        return;
    };
    let before = ns.iptables_save();
    let out = ns.run_pyfw(&wishes, &["apply"]);
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(out.stderr.contains(&refused), "{out}");
    assert_eq!(
        common::normalize_rules(&ns.iptables_save()),
        common::normalize_rules(&before)
    );
}
