//! pyfw.service's sandbox lets pyfw, iptables (nft and legacy), ip6tables,
//! ipset and nft work.
//!
//! systemd is not the init where these tests run (a container, CI), so the
//! unit cannot be started, nor `systemd-run -p ...` used. Instead the parts
//! of its sandbox that decide what a process may do are rebuilt here from
//! `systemd/pyfw.service` itself, with the kernel mechanisms systemd uses,
//! around pyfw (one-shot and daemon) and the tools, in a network namespace
//! of their own:
//!
//! - `SystemCallFilter=`, `SystemCallErrorNumber=`,
//!   `SystemCallArchitectures=native`: a seccomp filter allowing exactly
//!   the system calls that `systemd-analyze syscall-filter` lists for the
//!   unit's groups (the allowed groups less the `~` ones); any other call
//!   fails with the unit's errno;
//! - `RestrictNamespaces=yes`: `unshare`/`clone` with a namespace flag and
//!   `setns` fail with EPERM, `clone3` with ENOSYS (as under systemd);
//! - `RestrictAddressFamilies=`: `socket()` of another family fails with
//!   EAFNOSUPPORT;
//! - `MemoryDenyWriteExecute=yes`: writable and executable mappings fail;
//! - `ProtectProc=` (and `ProcSubset=`, when the unit sets it): a new
//!   `/proc` mounted with `hidepid=` (`subset=`) in a mount namespace of
//!   its own;
//! - `CapabilityBoundingSet=`: the bounding set cut to the unit's;
//! - `NoNewPrivileges=yes`.
//!
//! Not rebuilt: the file system views (`ProtectSystem=strict` and its
//! writable paths, `PrivateTmp=`, `ProtectHome=`, `PrivateDevices=`,
//! `ProtectKernel*=`), and `IPAddressDeny=` (a cgroup BPF program on IP
//! packets, which netlink and socket options do not go through). Where
//! systemd is missing the tests print SKIP, even under
//! `PYFW_REQUIRE_NETNS=1` (as
//! `tests/offline/daemon.rs::the_unit_files_pass_systemd_checks` does).

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Backend, Netns, Out, PYFW, base_path, run_command};
use wait_timeout::ChildExt;

fn unit() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/pyfw.service");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The values of `key=` in the unit, in order.
fn settings(unit: &str, key: &str) -> Vec<String> {
    let prefix = format!("{key}=");
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix(&prefix))
        .map(|v| v.trim().to_string())
        .collect()
}

/// The one value of `key=`, if set.
fn setting(unit: &str, key: &str) -> Option<String> {
    let all = settings(unit, key);
    assert!(all.len() <= 1, "{key}= is set {} times", all.len());
    all.into_iter().next()
}

/// The members of a system call group, as systemd lists them.
fn group(name: &str) -> Vec<String> {
    let out = Command::new("systemd-analyze")
        .args(["syscall-filter", "--no-pager", name])
        .env("PATH", base_path())
        .output()
        .expect("systemd-analyze");
    assert!(
        out.status.success(),
        "systemd-analyze syscall-filter {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with(' '))
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

/// `name`, a system call or a `@group`, as the system calls it stands for.
fn expand(name: &str, into: &mut BTreeSet<String>) {
    if name.starts_with('@') {
        for member in group(name) {
            expand(&member, into);
        }
    } else {
        into.insert(name.to_string());
    }
}

/// The system calls the unit's `SystemCallFilter=` lines allow: the first
/// lists what is allowed, each `~` line takes some away.
fn allowed_syscalls(unit: &str) -> BTreeSet<String> {
    let lines = settings(unit, "SystemCallFilter");
    let (first, rest) = lines.split_first().expect("SystemCallFilter= in the unit");
    assert!(!first.starts_with('~'), "an allow list first: {first}");
    let mut allowed = BTreeSet::new();
    for name in first.split_whitespace() {
        expand(name, &mut allowed);
    }
    for line in rest {
        let denied = line.strip_prefix('~').expect("later lines deny");
        let mut out = BTreeSet::new();
        for name in denied.split_whitespace() {
            expand(name, &mut out);
        }
        allowed.retain(|s| !out.contains(s));
    }
    allowed
}

/// System call numbers by name, from the kernel's headers.
fn syscall_numbers() -> BTreeMap<String, u32> {
    let header = "/usr/include/x86_64-linux-gnu/asm/unistd_64.h";
    let text = std::fs::read_to_string(header)
        .unwrap_or_else(|e| panic!("{header} (package linux-libc-dev): {e}"));
    text.lines()
        .filter_map(|l| {
            let mut words = l.strip_prefix("#define __NR_")?.split_whitespace();
            Some((words.next()?.to_string(), words.next()?.parse().ok()?))
        })
        .collect()
}

fn errno(name: &str) -> u32 {
    let n = match name {
        "EPERM" => libc::EPERM,
        "EACCES" => libc::EACCES,
        "ENOSYS" => libc::ENOSYS,
        other => panic!("SystemCallErrorNumber={other}: add it here"),
    };
    n as u32
}

fn address_family(name: &str) -> u32 {
    let n = match name {
        "AF_UNIX" => libc::AF_UNIX,
        "AF_NETLINK" => libc::AF_NETLINK,
        "AF_INET" => libc::AF_INET,
        "AF_INET6" => libc::AF_INET6,
        "AF_PACKET" => libc::AF_PACKET,
        other => panic!("RestrictAddressFamilies={other}: add it here"),
    };
    n as u32
}

fn capability(name: &str) -> u32 {
    match name {
        "CAP_NET_ADMIN" => 12,
        "CAP_NET_RAW" => 13,
        "CAP_NET_BIND_SERVICE" => 10,
        "CAP_SYS_ADMIN" => 21,
        other => panic!("CapabilityBoundingSet={other}: add it here"),
    }
}

// --- a seccomp filter, in classic BPF ----------------------------------------

// (linux/bpf_common.h: class | size | mode, or class | op | source.)
/// BPF_LD | BPF_W | BPF_ABS
const BPF_LD_W_ABS: u16 = 0x20;
/// BPF_JMP | BPF_JEQ | BPF_K
const BPF_JEQ_K: u16 = 0x05 | 0x10;
/// BPF_JMP | BPF_JGE | BPF_K
const BPF_JGE_K: u16 = 0x05 | 0x30;
/// BPF_JMP | BPF_JSET | BPF_K
const BPF_JSET_K: u16 = 0x05 | 0x40;
/// BPF_ALU | BPF_AND | BPF_K
const BPF_AND_K: u16 = 0x04 | 0x50;
/// BPF_RET | BPF_K
const BPF_RET_K: u16 = 0x06;
const RET_ALLOW: u32 = 0x7fff_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
/// Offsets in `struct seccomp_data`.
const NR: u32 = 0;
const ARCH: u32 = 4;
fn arg(i: u32) -> u32 {
    16 + 8 * i
}

fn op(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

fn ret_errno(e: u32) -> libc::sock_filter {
    op(BPF_RET_K, RET_ERRNO | e)
}

/// `body` runs for system call `nr` only; a body that does not return
/// falls through to what follows.
fn on_syscall(nr: u32, body: Vec<libc::sock_filter>) -> Vec<libc::sock_filter> {
    let len = u8::try_from(body.len()).expect("a short body");
    let mut out = vec![op(BPF_LD_W_ABS, NR), jump(BPF_JEQ_K, nr, 0, len)];
    out.extend(body);
    out
}

/// Fails (errno `e`) when the 32 low bits of argument `i` have any of
/// `bits`.
fn deny_bits(i: u32, bits: u32, e: u32) -> Vec<libc::sock_filter> {
    vec![
        op(BPF_LD_W_ABS, arg(i)),
        jump(BPF_JSET_K, bits, 0, 1),
        ret_errno(e),
    ]
}

/// The unit's sandbox, as far as it is rebuilt here (see the top).
struct Sandbox {
    filter: Vec<libc::sock_filter>,
    /// Capabilities kept in the bounding set.
    keep: u64,
    /// `/proc`'s mount options.
    proc_options: String,
}

impl Sandbox {
    /// The sandbox of `systemd/pyfw.service`, or `None` (SKIP) where
    /// systemd-analyze is missing.
    fn of_the_unit(test: &str) -> Option<Sandbox> {
        if !cfg!(target_arch = "x86_64") {
            let _ = writeln!(
                std::io::stderr(),
                "SKIP {test}: the filter is built for x86_64"
            );
            return None;
        }
        let found = Command::new("systemd-analyze")
            .arg("--version")
            .env("PATH", base_path())
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            let _ = writeln!(
                std::io::stderr(),
                "SKIP {test}: systemd-analyze is not installed (package systemd)"
            );
            return None;
        }
        let unit = unit();
        for (key, value) in [
            ("NoNewPrivileges", "yes"),
            ("SystemCallArchitectures", "native"),
            ("RestrictNamespaces", "yes"),
            ("MemoryDenyWriteExecute", "yes"),
        ] {
            assert_eq!(setting(&unit, key).as_deref(), Some(value), "{key}=");
        }
        let e = errno(&setting(&unit, "SystemCallErrorNumber").unwrap_or("EPERM".into()));
        let numbers = syscall_numbers();
        let nr = |name: &str| numbers[name];
        let allowed = allowed_syscalls(&unit);
        assert!(
            allowed.contains("execve") && !allowed.contains("mount"),
            "{allowed:?}"
        );

        let mut f = vec![
            op(BPF_LD_W_ABS, ARCH),
            jump(BPF_JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
            op(BPF_RET_K, RET_KILL_PROCESS),
            op(BPF_LD_W_ABS, NR),
            jump(BPF_JGE_K, X32_SYSCALL_BIT, 0, 1),
            ret_errno(e),
        ];
        // RestrictAddressFamilies=
        let families: Vec<u32> = setting(&unit, "RestrictAddressFamilies")
            .expect("RestrictAddressFamilies=")
            .split_whitespace()
            .map(address_family)
            .collect();
        let mut socket = vec![op(BPF_LD_W_ABS, arg(0))];
        for (i, family) in families.iter().enumerate() {
            let to_end = u8::try_from(families.len() - i).unwrap();
            socket.push(jump(BPF_JEQ_K, *family, to_end, 0));
        }
        socket.push(ret_errno(libc::EAFNOSUPPORT as u32));
        f.extend(on_syscall(nr("socket"), socket));
        // RestrictNamespaces=yes
        let namespaces = (libc::CLONE_NEWNS
            | libc::CLONE_NEWCGROUP
            | libc::CLONE_NEWUTS
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUSER
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWNET
            | 0x80) as u32; // CLONE_NEWTIME
        let eperm = libc::EPERM as u32;
        f.extend(on_syscall(nr("clone"), deny_bits(0, namespaces, eperm)));
        f.extend(on_syscall(nr("unshare"), deny_bits(0, namespaces, eperm)));
        f.extend(on_syscall(nr("setns"), vec![ret_errno(eperm)]));
        f.extend(on_syscall(
            nr("clone3"),
            vec![ret_errno(libc::ENOSYS as u32)],
        ));
        // MemoryDenyWriteExecute=yes
        let wx = (libc::PROT_WRITE | libc::PROT_EXEC) as u32;
        f.extend(on_syscall(
            nr("mmap"),
            vec![
                op(BPF_LD_W_ABS, arg(2)),
                op(BPF_AND_K, wx),
                jump(BPF_JEQ_K, wx, 0, 1),
                ret_errno(eperm),
            ],
        ));
        for name in ["mprotect", "pkey_mprotect"] {
            f.extend(on_syscall(
                nr(name),
                deny_bits(2, libc::PROT_EXEC as u32, eperm),
            ));
        }
        // SystemCallFilter=
        f.push(op(BPF_LD_W_ABS, NR));
        for name in &allowed {
            if let Some(&n) = numbers.get(name) {
                f.push(jump(BPF_JEQ_K, n, 0, 1));
                f.push(op(BPF_RET_K, RET_ALLOW));
            }
        }
        f.push(ret_errno(e));
        assert!(f.len() < 4096, "BPF_MAXINSNS");

        let keep = setting(&unit, "CapabilityBoundingSet")
            .expect("CapabilityBoundingSet=")
            .split_whitespace()
            .map(|c| 1u64 << capability(c))
            .fold(0, |a, b| a | b);
        let mut proc_options = vec![format!(
            "hidepid={}",
            setting(&unit, "ProtectProc").expect("ProtectProc=")
        )];
        if let Some(subset) = setting(&unit, "ProcSubset")
            && subset != "all"
        {
            proc_options.push(format!("subset={subset}"));
        }
        Some(Sandbox {
            filter: f,
            keep,
            proc_options: proc_options.join(","),
        })
    }

    /// `argv` in `ns` and in the sandbox, with the environment `ns` gives
    /// its commands.
    fn command(&self, ns: &Netns, argv: &[&str]) -> Command {
        let mut cmd = Command::new(argv[0]);
        cmd.args(&argv[1..]);
        for (key, value) in ns.command_for(&[]).get_envs() {
            match value {
                Some(v) => cmd.env(key, v),
                None => cmd.env_remove(key),
            };
        }
        let netns = std::fs::File::open(format!("/run/netns/{}", ns.name)).unwrap();
        let filter = self.filter.clone();
        let keep = self.keep;
        let last_cap: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let proc_ = CString::new("proc").unwrap();
        let slash_proc = CString::new("/proc").unwrap();
        let slash = CString::new("/").unwrap();
        let options = CString::new(self.proc_options.clone()).unwrap();
        let check = |r: libc::c_int| {
            if r == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        };
        // SAFETY: between fork and exec, only system calls on memory and
        // descriptors prepared before the fork; nothing allocates.
        unsafe {
            cmd.pre_exec(move || {
                check(libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET))?;
                check(libc::unshare(libc::CLONE_NEWNS))?;
                check(libc::mount(
                    std::ptr::null(),
                    slash.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ))?;
                check(libc::mount(
                    proc_.as_ptr(),
                    slash_proc.as_ptr(),
                    proc_.as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    options.as_ptr().cast(),
                ))?;
                for cap in 0..=last_cap {
                    if keep & (1 << cap) == 0 {
                        check(libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong))?;
                    }
                }
                check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
                let prog = libc::sock_fprog {
                    len: filter.len() as u16,
                    filter: filter.as_ptr().cast_mut(),
                };
                check(libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &prog as *const libc::sock_fprog,
                ))
            });
        }
        cmd
    }

    fn run(&self, ns: &Netns, argv: &[&str]) -> Out {
        let mut shown = vec![format!("[sandbox, netns {}]", ns.name)];
        shown.extend(argv.iter().map(|s| s.to_string()));
        run_command(self.command(ns, argv), shown, None)
    }
}

/// The sandbox is real: what the unit forbids fails in it, what pyfw needs
/// does not.
#[test]
fn the_sandbox_forbids_what_the_unit_forbids() {
    let Some(ns) = Netns::new("sandbox", Backend::Nft) else {
        return;
    };
    let Some(sandbox) = Sandbox::of_the_unit("the_sandbox_forbids_what_the_unit_forbids") else {
        return;
    };
    let status = sandbox.run(&ns, &["cat", "/proc/self/status"]);
    status.expect_ok("cat /proc/self/status");
    let caps = status
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap());
    assert_eq!(caps, Some(sandbox.keep), "{status}");
    assert!(status.stdout.contains("NoNewPrivs:\t1"), "{status}");
    assert!(status.stdout.contains("Seccomp:\t2"), "{status}");
    // Allowed without any capability, forbidden by the filter
    // (@resources), the namespace rules and ProtectProc=.
    // (nice(1) only warns when it cannot.)
    let nice = ns.run(&["nice", "-n", "5", "true"]);
    assert!(nice.success() && nice.stderr.is_empty(), "{nice}");
    let nice = sandbox.run(&ns, &["nice", "-n", "5", "true"]);
    assert!(
        nice.stderr
            .contains("cannot set niceness: Operation not permitted"),
        "{nice}"
    );
    assert!(!sandbox.run(&ns, &["unshare", "--net", "true"]).success());
    // PID 1 is root with every capability: invisible to pyfw.
    assert!(
        sandbox
            .run(&ns, &["test", "-e", "/proc/self/comm"])
            .success()
    );
    assert!(!sandbox.run(&ns, &["test", "-e", "/proc/1/comm"]).success());
}

on_both_backends!(pyfw_and_the_tools_work_in_the_units_sandbox);

const WISHES: &str = "\
pyfw_wishes:
  ipsets:
    trusted:
      type: hash:net
      members_equal:
      - 192.0.2.0/24
  iptables:
    filter:
      INPUT:
        default_action: DROP
        rules:
        - allow_loopback: -i lo -m comment --comment allow_loopback -j ACCEPT
        - allow_ssh: -p tcp -m tcp --dport 22 -m comment --comment allow_ssh -j ACCEPT
        - allow_trusted: -m set --match-set trusted src -m comment --comment allow_trusted -j ACCEPT
        - to_checks: -p udp -j CHECKS
      CHECKS:
        rules:
        - dns_back: -p udp -m udp --dport 53 -m comment --comment dns_back -j RETURN
  ip6tables:
    filter:
      INPUT:
        default_action: DROP
        rules:
        - allow_ssh6: -p tcp -m tcp --dport 22 -m comment --comment allow_ssh6 -j ACCEPT
";

/// `pyfw apply`, `check` and the daemon, and the tools by themselves, in
/// the sandbox: everything applied, drift repaired. A scratch chain named
/// for a process the sandbox cannot see (this test's, with every
/// capability) is kept: it may belong to a live pyfw.
fn pyfw_and_the_tools_work_in_the_units_sandbox(backend: Backend) {
    let Some(ns) = Netns::new("sandboxed", backend) else {
        return;
    };
    let Some(sandbox) = Sandbox::of_the_unit("pyfw_and_the_tools_work_in_the_units_sandbox") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let wishes = dir.path().join("wishes.yaml");
    std::fs::write(&wishes, WISHES).unwrap();
    let wishes = wishes.to_str().unwrap();
    let tool = match backend {
        Backend::Nft => "nft",
        Backend::Legacy => "legacy",
    };
    let pyfw = |args: &[&str]| {
        let mut argv = vec![PYFW, "--wishes", wishes, "--backend", tool];
        argv.extend_from_slice(args);
        sandbox.run(&ns, &argv)
    };
    let invisible = format!("_pyfw_canon_{}", std::process::id());
    ns.iptables(&["-N", &invisible]);

    pyfw(&["apply"]).expect_ok("pyfw apply in the sandbox");
    let rules = ns.iptables_save();
    for wish in ["allow_loopback", "allow_ssh", "allow_trusted", "dns_back"] {
        assert!(rules.contains(&format!("--comment {wish}")), "{rules}");
    }
    assert!(rules.contains(":INPUT DROP"), "{rules}");
    assert!(
        rules.contains(&format!(":{invisible} ")),
        "the scratch chain of a process pyfw cannot see was removed:\n{rules}"
    );
    let rules6 = ns.ok(&["ip6tables-save"], "ip6tables-save");
    assert!(
        rules6.contains(":INPUT DROP") && rules6.contains("--comment allow_ssh6"),
        "{rules6}"
    );
    assert!(ns.ipset_save().contains("add trusted 192.0.2.0/24"));
    let check = pyfw(&["check"]);
    assert_eq!(check.code(), Some(0), "in sync: {check}");

    // The tools by themselves.
    let in_nft = match backend {
        Backend::Nft => "chain CHECKS",
        Backend::Legacy => "",
    };
    for (argv, says) in [
        (&["iptables-save"][..], "allow_trusted"),
        (&["ip6tables-save"], "allow_ssh6"),
        (&["iptables", "-w", "-S", "INPUT"], "allow_ssh"),
        (&["ipset", "list", "trusted"], "192.0.2.0/24"),
        (&["nft", "list", "ruleset"], in_nft),
    ] {
        let out = sandbox.run(&ns, argv);
        out.expect_ok(&argv.join(" "));
        assert!(out.stdout.contains(says), "{out}");
    }
    sandbox
        .run(&ns, &["iptables", "-w", "-D", "CHECKS", "1"])
        .expect_ok("iptables -D in the sandbox");
    sandbox
        .run(&ns, &["ipset", "add", "trusted", "198.51.100.0/24"])
        .expect_ok("ipset add in the sandbox");

    // The daemon repairs what the tools changed, then drift.
    let mut daemon = Daemon::spawn(
        &sandbox,
        &ns,
        &[
            PYFW,
            "--wishes",
            wishes,
            "--backend",
            tool,
            "daemon",
            "--interval",
            "300ms",
        ],
    );
    daemon.wait_for("ready: netfilter matches");
    let repaired = || {
        let rules = ns.iptables_save();
        rules.contains("--comment dns_back") && rules.contains("--comment allow_ssh")
    };
    assert!(repaired(), "{}", daemon.log());
    assert!(!ns.ipset_save().contains("198.51.100.0/24"));
    ns.iptables(&[
        "-D",
        "INPUT",
        "-p",
        "tcp",
        "-m",
        "tcp",
        "--dport",
        "22",
        "-m",
        "comment",
        "--comment",
        "allow_ssh",
        "-j",
        "ACCEPT",
    ]);
    daemon.wait_until("the repair of allow_ssh", repaired);
    daemon.stop();
}

/// An owned nftables table in the unit's sandbox: applied, then in sync
/// after another program's commit. The sandbox forbids private network
/// namespaces, so pyfw reads the table back after its own commit to learn
/// the kernel's rendering, and never replaces it again for that.
#[test]
fn an_owned_nftables_table_works_in_the_units_sandbox() {
    let Some(ns) = Netns::new("sandboxnft", Backend::Nft) else {
        return;
    };
    let Some(sandbox) = Sandbox::of_the_unit("an_owned_nftables_table_works_in_the_units_sandbox")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let wishes = dir.path().join("wishes.yaml");
    std::fs::write(
        &wishes,
        "pyfw_wishes:\n  nftables:\n    inet pyfw:\n      chains:\n        input:\n          \
         type: filter\n          hook: input\n          priority: filter - 1\n          \
         rules:\n          - tcp dport ssh counter accept\n",
    )
    .unwrap();
    let state = format!("PYFW_STATE_DIR={}", dir.path().join("state").display());
    let pyfw = |args: &[&str]| {
        let mut argv = vec!["env", &state, PYFW, "--wishes", wishes.to_str().unwrap()];
        argv.extend_from_slice(args);
        sandbox.run(&ns, &argv)
    };
    let unshare = sandbox.run(&ns, &["unshare", "-n", "true"]);
    assert!(
        !unshare.success(),
        "the sandbox makes namespaces: {unshare}"
    );
    pyfw(&["apply"]).expect_ok("pyfw apply of an nftables table in the sandbox");
    let table = ns.ok(&["nft", "list", "table", "inet", "pyfw"], "nft list");
    assert!(table.contains("tcp dport 22 counter"), "{table}");
    ns.ok(
        &["nft", "add", "table", "ip", "other"],
        "another program's commit",
    );
    let again = pyfw(&["apply"]);
    again.expect_ok("pyfw apply again");
    assert!(again.stdout.contains("Nothing to do"), "{again}");
}

/// A daemon in the sandbox, its log collected as it comes.
struct Daemon {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Daemon {
    fn spawn(sandbox: &Sandbox, ns: &Netns, argv: &[&str]) -> Daemon {
        let mut cmd = sandbox.command(ns, argv);
        cmd.env("PYFW_LOG", "debug")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM")
            .env_remove("WATCHDOG_USEC")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start the daemon");
        let log = Arc::new(Mutex::new(String::new()));
        common::collect(child.stderr.take().unwrap(), &log);
        Daemon { child, log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    #[track_caller]
    fn wait_until(&mut self, what: &str, mut ok: impl FnMut() -> bool) {
        let start = Instant::now();
        while !ok() {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the daemon exited ({status}) before {what}\n{}", self.log());
            }
            if start.elapsed() > Duration::from_secs(30) {
                panic!("timed out waiting for {what}\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    #[track_caller]
    fn wait_for(&mut self, line: &str) {
        let log = self.log.clone();
        self.wait_until(line, || log.lock().unwrap().contains(line));
    }

    #[track_caller]
    fn stop(mut self) {
        // SAFETY: kill(2) of our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self
            .child
            .wait_timeout(Duration::from_secs(30))
            .unwrap()
            .expect("the daemon stops on SIGTERM");
        assert_eq!(status.code(), Some(0), "{}", self.log());
        let log = self.log();
        assert!(!log.contains("ERROR"), "{log}");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
