//! pyfw's owned table beside firewalld's `inet firewalld`
//! (`tests/data/firewalld/firewalld.nft`: firewalld 1.3.3's default table,
//! recorded from the unmodified program; see SOURCES.md there), in a network
//! namespace of its own. firewalld reloads, stops and starts as its own code
//! does it, while `pyfw daemon` runs: pyfw's table is never disturbed (same
//! rules, same handles, no repair logged), and pyfw never touches
//! firewalld's table, not even when it repairs its own.
//!
//! That pyfw refuses to own `inet firewalld` at all is
//! `tests/offline/nft_wishes.rs` (the message); here it is refused beside the
//! real table, which stays as it was.
//!
//! Needs root; see `tests/common/mod.rs` for how a test skips (or, with
//! `PYFW_REQUIRE_NETNS=1`, fails) where namespaces are unavailable.

use crate::common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{Backend, Netns, Out, PYFW, run_command};

/// The longest wait for a line in the daemon's log (a generous deadline,
/// not a promise about speed).
const WAIT: Duration = Duration::from_secs(30);

/// An owned table as a host with firewalld might want it: a set, a base
/// chain ordered before firewalld's (which hook at `filter + 10`) and one
/// after.
const WISHES: &str = "pyfw_wishes:
  nftables:
    inet pyfw:
      sets:
        admins:
          type: ipv4_addr
          flags: [interval]
          elements:
          - 192.168.122.0/24
          - 10.0.0.1
      chains:
        input:
          type: filter
          hook: input
          priority: filter - 1
          policy: accept
          rules:
          - ct state established,related accept
          - ssh_admins_only: tcp dport ssh ip saddr != @admins drop
        output:
          type: filter
          hook: output
          priority: filter + 20
          rules:
          - meta l4proto tcp counter accept
";

/// firewalld's table, as recorded (file header comments and all).
fn firewalld_table() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/firewalld/firewalld.nft");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// A namespace with firewalld's table, the wishes and pyfw's state
/// directory.
struct Host {
    ns: Netns,
    dir: tempfile::TempDir,
}

impl Host {
    fn new(test: &str) -> Option<Host> {
        let ns = Netns::new(test, Backend::Nft)?;
        let dir = tempfile::Builder::new().prefix(&ns.name).tempdir().unwrap();
        Some(Host { ns, dir })
    }

    fn wishes(&self, text: &str) -> PathBuf {
        let path = self.dir.path().join("wishes.yaml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// `pyfw ARGS...` with this host's wishes and state directory (never
    /// the machine's `/var/lib/pyfw`).
    fn pyfw_command(&self, args: &[&str]) -> (std::process::Command, Vec<String>) {
        let wishes = self.dir.path().join("wishes.yaml");
        let mut argv = vec![PYFW, "--wishes", wishes.to_str().unwrap()];
        argv.extend_from_slice(args);
        let mut cmd = self.ns.command_for(&argv);
        cmd.env("PYFW_STATE_DIR", self.dir.path().join("state"))
            .env("PYFW_LOG", "info");
        (cmd, argv.iter().map(|s| s.to_string()).collect())
    }

    fn pyfw(&self, args: &[&str]) -> Out {
        let (cmd, shown) = self.pyfw_command(args);
        run_command(cmd, shown, None)
    }

    #[track_caller]
    fn nft(&self, args: &[&str]) -> String {
        let mut argv = vec!["nft"];
        argv.extend_from_slice(args);
        self.ns.ok(&argv, "nft")
    }

    #[track_caller]
    fn nft_script(&self, script: &str) {
        self.ns
            .run_with_input(&["nft", "-f", "-"], script)
            .expect_ok("nft -f -");
    }

    /// `nft -s -a list table inet NAME`: every rule, set and handle,
    /// without counters' values, so that equal listings mean the table was
    /// not touched at all.
    fn table_with_handles(&self, name: &str) -> String {
        self.nft(&["-s", "-a", "list", "table", "inet", name])
    }

    /// A table's rules without handles.
    fn table(&self, name: &str) -> String {
        self.nft(&["-s", "list", "table", "inet", name])
    }

    /// firewalld starts: `_start_apply_objects` in
    /// src/firewall/core/fw.py (v1.3.3) commits `add table inet firewalld`
    /// (`build_default_tables`), then the default rules, zones and
    /// policies in one more transaction.
    fn firewalld_start(&self) {
        self.nft(&["add", "table", "inet", "firewalld"]);
        self.nft_script(&firewalld_table());
    }

    /// firewalld stops (CleanupOnExit): `flush()`, whose
    /// `build_flush_rules` (src/firewall/core/nftables.py) is `delete
    /// table inet firewalld`.
    fn firewalld_stop(&self) {
        self.nft(&["delete", "table", "inet", "firewalld"]);
    }

    /// `firewall-cmd --reload`, as `Firewall.reload()` in
    /// src/firewall/core/fw.py (v1.3.3) commits it: `set_policy("DROP")`
    /// (a table `inet firewalld_policy_drop` of drop base chains at
    /// priority filter + 9 that let established traffic through), the
    /// flush (delete its table), the start (above), then
    /// `set_policy("ACCEPT")` (the established rules and the drop table
    /// deleted, in one transaction; deleting the table deletes its rules).
    fn firewalld_reload(&self) {
        let mut drop = String::from("table inet firewalld_policy_drop {\n");
        for hook in ["input", "forward", "output"] {
            drop += &format!(
                "\tchain filter_{hook} {{\n\t\ttype filter hook {hook} priority filter + 9; policy drop;\n\t\tct state established,related accept\n\t}}\n"
            );
        }
        drop += "}\n";
        self.nft_script(&drop);
        self.firewalld_stop();
        self.firewalld_start();
        self.nft(&["delete", "table", "inet", "firewalld_policy_drop"]);
    }
}

/// A `pyfw daemon` in the namespace, its output going to a log file.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    /// Starts a daemon that polls once an hour (nothing in the test comes
    /// from the poll), and waits until it is ready.
    fn start(host: &Host) -> Daemon {
        let log = host.dir.path().join("daemon.log");
        let file = File::create(&log).unwrap();
        let (mut cmd, shown) = host.pyfw_command(&["daemon", "--interval", "1h"]);
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{}`: {e}", shown.join(" ")));
        let mut daemon = Daemon { child, log };
        daemon.wait_log("ready: netfilter matches");
        daemon
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `needle` is in the log; panics with the log if the
    /// daemon exits or [`WAIT`] passes first.
    #[track_caller]
    fn wait_log(&mut self, needle: &str) {
        let start = Instant::now();
        while !self.log().contains(needle) {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "`pyfw daemon` exited ({status}) before logging `{needle}`\n{}",
                    self.log()
                );
            }
            assert!(
                start.elapsed() < WAIT,
                "no `{needle}` in the daemon's log after {WAIT:?}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then its exit status and its whole log.
    fn stop(mut self) -> (ExitStatus, String) {
        // SAFETY: kill(2) of our own child with SIGTERM.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        (status, self.log())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The lines of `log` holding `needle`.
fn lines_with<'a>(log: &'a str, needle: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.contains(needle)).collect()
}

#[test]
fn firewalld_reloading_its_table_never_disturbs_pyfws_and_pyfw_never_touches_firewallds() {
    let Some(host) = Host::new("fwd_coexist") else {
        return;
    };
    host.firewalld_start();
    let firewalld = host.table_with_handles("firewalld");
    let firewalld_rules = host.table("firewalld");

    // pyfw applies its table, then its daemon runs: firewalld's table is
    // as it was, handles and all.
    host.wishes(WISHES);
    let applied = host.pyfw(&["apply"]);
    applied.expect_ok("pyfw apply beside firewalld");
    assert!(
        applied.stdout.contains("replaces table inet pyfw"),
        "{applied}"
    );
    let mut daemon = Daemon::start(&host);
    assert_eq!(
        host.table_with_handles("firewalld"),
        firewalld,
        "pyfw touched firewalld's table"
    );
    let mine = host.table_with_handles("pyfw");

    // firewalld reloads twice, stops and starts: each time its table is
    // deleted and made again, and once a drop table of its own comes and
    // goes. pyfw's table is not touched, and pyfw finds nothing to do.
    host.firewalld_reload();
    host.firewalld_reload();
    host.firewalld_stop();
    host.firewalld_start();
    assert_eq!(
        host.table("firewalld"),
        firewalld_rules,
        "the replayed reload did not make firewalld's table again"
    );
    assert_eq!(
        host.table_with_handles("pyfw"),
        mine,
        "a firewalld reload disturbed pyfw's table"
    );
    host.pyfw(&["check"])
        .expect_ok("pyfw check after firewalld reloads");

    // A rule of pyfw's deleted by hand: the daemon repairs it, and in doing
    // so leaves firewalld's new table alone. Events come in order, so once
    // this drift is logged, the daemon has seen every reload before it.
    let firewalld = host.table_with_handles("firewalld");
    let handle = mine
        .lines()
        .find(|l| l.contains("!= @admins drop"))
        .and_then(|l| l.rsplit("# handle ").next())
        .unwrap_or_else(|| panic!("no ssh_admins_only rule in\n{mine}"))
        .trim()
        .to_string();
    host.nft(&["delete", "rule", "inet", "pyfw", "input", "handle", &handle]);
    daemon.wait_log("drift (drift): nft inet pyfw: chain input: rule ssh_admins_only missing");
    daemon.wait_log("repaired (drift)");
    assert_eq!(
        host.table_with_handles("firewalld"),
        firewalld,
        "pyfw's repair touched firewalld's table"
    );
    host.pyfw(&["check"])
        .expect_ok("pyfw check after the repair");

    // The daemon repaired that rule, and nothing else: no firewalld reload
    // ever looked like drift to it.
    let (status, log) = daemon.stop();
    assert!(status.success(), "{status}\n{log}");
    let drift = lines_with(&log, "drift (");
    assert!(
        !drift.is_empty()
            && drift
                .iter()
                .all(|l| l.contains("nft inet pyfw: chain input: rule ssh_admins_only missing")),
        "the daemon saw other drift than the deleted rule:\n{log}"
    );
    assert_eq!(lines_with(&log, "repaired (").len(), 1, "{log}");
}

#[test]
fn pyfw_refuses_to_own_firewallds_table_and_leaves_it_as_it_is() {
    let Some(host) = Host::new("fwd_refuse") else {
        return;
    };
    host.firewalld_start();
    let firewalld = host.table_with_handles("firewalld");
    let path = host.wishes(
        "pyfw_wishes:\n  nftables:\n    inet firewalld:\n      chains:\n        input:\n          type: filter\n          hook: input\n          priority: filter\n          rules:\n          - accept\n",
    );
    let out = host.pyfw(&["apply"]);
    assert!(
        !out.success(),
        "pyfw applied a wish for inet firewalld\n{out}"
    );
    let expected = format!(
        "{}:3: nft inet firewalld: pyfw cannot own this table: it is firewalld's",
        path.display()
    );
    assert!(out.stderr.contains(&expected), "{expected}\n{out}");
    assert_eq!(host.table_with_handles("firewalld"), firewalld);
}
