//! Owned nftables tables (`nftables:` wishes) against real nf_tables, each
//! test in its own network namespace: applied whole in one transaction, in
//! sync with rules typed otherwise than nft prints them, repaired when
//! changed by hand, rolled back with the rest, never a window without the
//! table, and never a touch to Docker's or firewalld's tables beside it.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{Backend, Netns, Out, PYFW, run_command};

/// Docker 29's `ip docker-bridges` and firewalld's `inet firewalld`, with
/// their provenance (tests/data/*/SOURCES.md).
fn foreign_tables() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
    read("docker-nft/docker-bridges.nft") + &read("firewalld/firewalld.nft")
}

/// The wishes of these tests: a table with rules typed otherwise than nft
/// prints them, a set, and counters to see whether a table was replaced.
const WISHES: &str = "pyfw_wishes:
  nftables:
    inet pyfw:
      sets:
        allowed_hosts:
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
          - ct state { related, established } accept
          - ssh: tcp dport ssh accept
          - ip saddr 10.0.0.1/32 accept
          - tcp dport { 443, 80 } accept
          - meta l4proto 6 tcp dport 8080 drop
          - allowed: ip saddr @allowed_hosts counter accept
        output:
          type: filter
          hook: output
          priority: 0
          rules:
          - oif lo counter accept
";

/// A namespace, a directory for the wishes and pyfw's state directory.
struct Host {
    ns: Netns,
    dir: tempfile::TempDir,
    /// Runs pyfw without CAP_SYS_ADMIN, as the systemd unit does: it
    /// cannot make a private network namespace to learn renderings in.
    confined: bool,
}

impl Host {
    fn new(test: &str) -> Option<Host> {
        Host::on(test, Backend::Nft)
    }

    fn on(test: &str, backend: Backend) -> Option<Host> {
        let ns = Netns::new(test, backend)?;
        // Named after the namespace: a revert's mark names the wishes file.
        let dir = tempfile::Builder::new().prefix(&ns.name).tempdir().unwrap();
        Some(Host {
            ns,
            dir,
            confined: false,
        })
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Writes the wishes file; its path.
    fn wishes(&self, text: &str) -> PathBuf {
        let path = self.dir.path().join("wishes.yaml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// `pyfw ARGS` with the wishes file and this host's state directory.
    fn pyfw(&self, args: &[&str]) -> Out {
        let wishes = self.dir.path().join("wishes.yaml");
        let mut argv = match self.confined {
            true => vec!["setpriv", "--bounding-set=-sys_admin", "--"],
            false => Vec::new(),
        };
        argv.extend([PYFW, "--wishes", wishes.to_str().unwrap()]);
        argv.extend_from_slice(args);
        let mut cmd = self.ns.command_for(&argv);
        cmd.env("PYFW_STATE_DIR", self.state_dir());
        let shown = argv.iter().map(|s| s.to_string()).collect();
        run_command(cmd, shown, None)
    }

    #[track_caller]
    fn apply(&self) -> Out {
        let out = self.pyfw(&["apply"]);
        out.expect_ok("pyfw apply");
        out
    }

    #[track_caller]
    fn nft(&self, args: &[&str]) -> String {
        let mut argv = vec!["nft"];
        argv.extend_from_slice(args);
        self.ns.ok(&argv, "nft")
    }

    /// Loads an nft script.
    #[track_caller]
    fn load(&self, script: &str) {
        self.ns
            .run_with_input(&["nft", "-f", "-"], script)
            .expect_ok("nft -f");
    }

    /// A table as `nft list table` prints it, counters included; `None`
    /// when absent.
    fn table(&self, family: &str, name: &str) -> Option<String> {
        let out = self.ns.run(&["nft", "list", "table", family, name]);
        out.success().then_some(out.stdout)
    }

    /// pyfw's table.
    fn pyfw_table(&self) -> Option<String> {
        self.table("inet", "pyfw")
    }

    /// Some packets through `output` (a refused connection on loopback).
    fn traffic(&self) {
        let _ = self
            .ns
            .run(&["curl", "-s", "--max-time", "1", "http://127.0.0.1:9/"]);
    }

    /// The packet count of `output`'s rule.
    fn output_packets(&self) -> u64 {
        let text = self.nft(&["list", "chain", "inet", "pyfw", "output"]);
        let at = text.find("counter packets ").expect("a counter") + 16;
        text[at..]
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .expect("a count")
    }
}

/// The rules of a listing (counters dropped), for comparing what is in
/// force without the counts.
fn without_counters(text: &str) -> String {
    text.lines()
        .map(|l| match l.find(" counter packets ") {
            Some(at) => {
                let rest = &l[at + 17..];
                let after = rest.splitn(4, ' ').nth(3).unwrap_or("");
                format!("{} counter {after}", &l[..at])
            }
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Applied whole, then left alone however often pyfw looks: applies that
/// find the generation unchanged, and applies after other programs'
/// commits, which list the table and compare it with the kernel's
/// rendering of the wishes (learned in a private namespace, or, `confined`
/// as under the systemd unit, read back after pyfw's own commit).
fn applied_whole_then_in_sync(test: &str, confined: bool) {
    let Some(mut host) = Host::new(test) else {
        return;
    };
    host.confined = confined;
    if confined {
        // The confinement holds: no namespace of its own.
        let out = host.ns.run(&[
            "setpriv",
            "--bounding-set=-sys_admin",
            "--",
            "unshare",
            "-n",
            "true",
        ]);
        assert!(!out.success(), "{out}");
    }
    host.wishes(WISHES);
    let first = host.apply();
    assert!(
        first.stdout.contains("nft -f - (replaces table inet pyfw"),
        "{first}"
    );
    assert!(
        first
            .stdout
            .contains("~ nft table inet pyfw replaced whole: table missing"),
        "{first}"
    );
    let table = host.pyfw_table().expect("the table is there");
    // nft prints what was typed otherwise.
    for printed in [
        "type filter hook input priority filter - 1; policy accept;",
        "tcp dport 22 accept",
        "ip saddr 10.0.0.1 accept",
        "tcp dport { 80, 443 } accept",
        "elements = { 10.0.0.1, 192.168.122.0/24 }",
    ] {
        assert!(table.contains(printed), "{printed} not in\n{table}");
    }
    host.traffic();
    let counted = host.output_packets();
    assert!(counted > 0, "{}", host.pyfw_table().unwrap());
    // Nothing to do, again and again: the table is not replaced (its
    // counters would start over).
    for k in 0..4 {
        if k % 2 == 1 {
            // Another program commits: the generation moves on.
            host.nft(&["add", "table", "ip", &format!("other{k}")]);
        }
        let again = host.apply();
        assert!(again.stdout.contains("Nothing to do"), "{again}");
    }
    host.pyfw(&["check"]).expect_ok("check in sync");
    assert_eq!(host.output_packets(), counted, "the table was replaced");
    if confined {
        return;
    }
    // A pyfw with no memory of the table (another state directory) learns
    // its rendering again, and still leaves it alone.
    std::fs::remove_dir_all(host.state_dir()).unwrap();
    let fresh = host.apply();
    assert!(fresh.stdout.contains("Nothing to do"), "{fresh}");
    assert_eq!(host.output_packets(), counted, "the table was replaced");
}

#[test]
fn a_table_is_applied_whole_then_stays_in_sync_with_rules_typed_otherwise() {
    applied_whole_then_in_sync("nft_sync", false);
}

#[test]
fn without_cap_sys_admin_the_table_stays_in_sync_too() {
    applied_whole_then_in_sync("nft_sync_conf", true);
}

#[test]
fn plan_prints_the_script_and_state_shows_the_table() {
    let Some(host) = Host::new("nft_plan") else {
        return;
    };
    host.wishes(WISHES);
    let plan = host.pyfw(&["plan"]);
    plan.expect_ok("plan");
    assert!(
        plan.stdout.contains("# nft inet pyfw: table missing"),
        "{plan}"
    );
    assert!(
        plan.stdout.contains(
            "nft -f - <<'EOF'\ntable inet pyfw {}\ndelete table inet pyfw\ntable inet pyfw {\n"
        ),
        "{plan}"
    );
    assert!(
        plan.stdout.contains("\t\ttcp dport ssh accept # ssh\n"),
        "{plan}"
    );
    assert!(plan.stdout.contains("\nEOF\n"), "{plan}");
    let doc: serde_json::Value =
        serde_json::from_str(&host.pyfw(&["plan", "--format", "json"]).stdout).unwrap();
    let command = &doc["commands"][0];
    assert_eq!(command["argv"], serde_json::json!(["nft", "-f", "-"]));
    assert!(
        command["input"]
            .as_str()
            .unwrap()
            .starts_with("table inet pyfw {}\n")
    );
    assert_eq!(command["target"], "nft inet pyfw");
    host.apply();
    let state = host.pyfw(&["state", "--format", "json"]);
    state.expect_ok("state");
    let doc: serde_json::Value = serde_json::from_str(&state.stdout).unwrap();
    let table = &doc["nftables"]["inet pyfw"];
    assert_eq!(table["family"], "inet");
    assert!(
        table["text"]
            .as_str()
            .unwrap()
            .contains("tcp dport 22 accept")
    );
    let chains: Vec<&str> = table["objects"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o["chain"]["name"].as_str())
        .collect();
    assert_eq!(chains, ["input", "output"]);
    let text = host.pyfw(&["state"]);
    assert!(text.stdout.contains("# nftables"), "{text}");
}

#[test]
fn docker_and_firewalld_tables_beside_it_are_never_touched() {
    let Some(host) = Host::new("nft_beside") else {
        return;
    };
    host.load(&foreign_tables());
    let docker = host.table("ip", "docker-bridges").unwrap();
    let firewalld = host.table("inet", "firewalld").unwrap();
    host.wishes(WISHES);
    host.apply();
    // A change, and a withdrawal.
    host.wishes(&WISHES.replace("tcp dport ssh accept", "tcp dport 2222 accept"));
    host.apply();
    host.wishes("pyfw_wishes: {}\n");
    let gone = host.apply();
    assert!(gone.stdout.contains("deletes table inet pyfw"), "{gone}");
    assert_eq!(host.pyfw_table(), None);
    assert_eq!(host.table("ip", "docker-bridges").unwrap(), docker);
    assert_eq!(host.table("inet", "firewalld").unwrap(), firewalld);
}

#[test]
fn a_table_pyfw_never_owned_is_not_deleted() {
    let Some(host) = Host::new("nft_notmine") else {
        return;
    };
    host.load("table inet pyfw {\n\tchain c {\n\t\taccept\n\t}\n}\n");
    host.wishes("pyfw_wishes: {}\n");
    host.apply();
    assert!(
        host.pyfw_table().is_some(),
        "a table pyfw never owned was deleted"
    );
}

#[test]
fn a_ruleset_nft_refuses_leaves_the_old_table_and_names_the_wish() {
    let Some(host) = Host::new("nft_refused") else {
        return;
    };
    host.wishes(WISHES);
    host.apply();
    let before = host.pyfw_table().unwrap();
    let bad = WISHES.replace(
        "          - ip saddr 10.0.0.1/32 accept\n",
        "          - ip saddr 10.0.0.1/32 accept\n          - tcp dport 23 jump nosuchchain\n",
    );
    let path = host.wishes(&bad);
    let line = bad.lines().position(|l| l.contains("nosuchchain")).unwrap() + 1;
    let at = format!("{}:{line}: nft inet pyfw/input/#4: ", path.display());
    // plan and check ask nft first (a dry run): the wish, nothing changed.
    for command in ["plan", "check"] {
        let out = host.pyfw(&[command]);
        out.expect_code(1, command);
        assert!(out.stderr.contains(&at), "{at}\n{out}");
        assert!(out.stderr.contains("nothing was changed"), "{out}");
    }
    let out = host.pyfw(&["apply"]);
    out.expect_code(1, "apply of a table nft refuses");
    assert!(out.stderr.contains(&at), "{at}\n{out}");
    assert!(
        out.stderr
            .contains("nft refuses it: Could not process rule"),
        "{out}"
    );
    assert_eq!(host.pyfw_table().unwrap(), before, "{out}");
}

/// Fake `iptables` and `iptables-restore` first on `PATH`: they refuse to
/// insert the rule commented `boom` (as the apply does: learning appends,
/// in a private namespace or a scratch chain), and pass everything else
/// (reads, dry runs, learning) to the real ones.
fn refusing_iptables(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let iptables = "#!/bin/sh\n\
         real=$(PATH=${PATH#*:} command -v iptables)\n\
         case \"$*\" in *boom*) echo 'fake iptables: refused' >&2; exit 1 ;; esac\n\
         exec \"$real\" \"$@\"\n";
    let restore = "#!/bin/sh\n\
         input=$(cat)\n\
         real=$(PATH=${PATH#*:} command -v iptables-restore)\n\
         case \"$* $input\" in\n\
         *--test*|*_pyfw_canon_*) ;;\n\
         *\"-I INPUT \"*boom*) echo 'fake iptables-restore: refused' >&2; exit 1 ;;\n\
         esac\n\
         printf '%s\\n' \"$input\" | exec \"$real\" \"$@\"\n";
    for (name, text) in [("iptables", iptables), ("iptables-restore", restore)] {
        let fake = bin.join(name);
        std::fs::write(&fake, text).unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    bin
}

#[test]
fn a_later_iptables_failure_rolls_the_table_back_too() {
    let Some(host) = Host::new("nft_rollback") else {
        return;
    };
    host.wishes(WISHES);
    host.apply();
    let before = host.nft(&["-s", "list", "table", "inet", "pyfw"]);
    let changed = WISHES.replace("tcp dport ssh accept", "tcp dport 2222 accept")
        + "  iptables:\n    filter:\n      INPUT:\n        rules:\n        - boom: -p tcp --dport 4242 -j ACCEPT\n";
    let wishes = host.wishes(&changed);
    let bin = refusing_iptables(host.dir.path());
    let argv = [PYFW, "--wishes", wishes.to_str().unwrap(), "apply"];
    let mut cmd = host.ns.command_for(&argv);
    let path = std::env::var("PATH").unwrap_or_default();
    cmd.env("PYFW_STATE_DIR", host.state_dir()).env(
        "PATH",
        format!(
            "{}:{}:/usr/sbin:/sbin:{path}",
            bin.display(),
            common::base_path()
        ),
    );
    let out = run_command(cmd, argv.iter().map(|s| s.to_string()).collect(), None);
    out.expect_code(1, "an apply whose iptables transaction fails");
    assert!(out.stdout.contains("replaces table inet pyfw"), "{out}");
    assert!(out.stderr.contains("rolled back"), "{out}");
    assert!(out.stderr.contains("netfilter is as it was"), "{out}");
    assert_eq!(host.nft(&["-s", "list", "table", "inet", "pyfw"]), before);
}

#[test]
fn an_unconfirmed_apply_puts_the_table_back() {
    let Some(host) = Host::new("nft_confirm") else {
        return;
    };
    host.wishes(WISHES);
    host.apply();
    let before = host.nft(&["-s", "list", "table", "inet", "pyfw"]);
    host.wishes(&WISHES.replace("tcp dport ssh accept", "tcp dport 2222 accept"));
    let out = host.pyfw(&["apply", "--confirm", "1s"]);
    // The revert's mark (for the daemon) names the wishes file.
    if let Ok(entries) = std::fs::read_dir("/run/pyfw") {
        for e in entries.flatten() {
            if std::fs::read_to_string(e.path()).is_ok_and(|t| t.contains(&host.ns.name)) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    assert_eq!(out.code(), Some(3), "an unconfirmed apply exits 3\n{out}");
    assert!(out.stdout.contains("replaces table inet pyfw"), "{out}");
    assert_eq!(
        host.nft(&["-s", "list", "table", "inet", "pyfw"]),
        before,
        "{out}"
    );
}

#[test]
fn a_reader_never_sees_the_table_missing_or_half_built() {
    let Some(host) = Host::new("nft_window") else {
        return;
    };
    // Two versions of 200 rules each, and a set.
    let version = |port: u32| {
        let rules: String = (0..200)
            .map(|i| format!("          - tcp dport {} counter accept\n", port + i))
            .collect();
        format!(
            "pyfw_wishes:\n  nftables:\n    inet pyfw:\n      sets:\n        s:\n          type: ipv4_addr\n          elements: [10.0.0.1, 10.0.0.2]\n      chains:\n        input:\n          type: filter\n          hook: input\n          priority: 0\n          rules:\n{rules}"
        )
    };
    host.wishes(&version(1000));
    host.apply();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let bad = Arc::new(Mutex::new(Vec::new()));
    let reads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let reader = {
        let (stop, bad, reads) = (stop.clone(), bad.clone(), reads.clone());
        let cmd = host
            .ns
            .command_for(&["nft", "list", "table", "inet", "pyfw"]);
        let program = cmd.get_program().to_owned();
        let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let out = std::process::Command::new(&program)
                    .args(&args)
                    .output()
                    .unwrap();
                let text = String::from_utf8_lossy(&out.stdout);
                // A listing that straddled a commit (nft 1.0.6 lists a
                // table in several netlink dumps): it shows the old and
                // the new chain both, which the kernel never held at
                // once. Such a torn read tells nothing of the table.
                if text.matches("chain input {").count() > 1 {
                    continue;
                }
                let rules = text.matches("counter packets").count();
                let whole = out.status.success()
                    && rules == 200
                    && text.contains("elements = { 10.0.0.1, 10.0.0.2 }");
                if !whole {
                    let head: String = text.lines().take(12).collect::<Vec<_>>().join(" / ");
                    let stderr = String::from_utf8_lossy(&out.stderr);
                    bad.lock()
                        .unwrap()
                        .push(format!("{rules} rules: {}: {head} [{stderr}]", out.status));
                }
                reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        })
    };
    for k in 0..12 {
        host.wishes(&version(if k % 2 == 0 { 2000 } else { 1000 }));
        host.apply();
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    reader.join().unwrap();
    let reads = reads.load(std::sync::atomic::Ordering::SeqCst);
    assert!(reads > 10, "only {reads} reads");
    assert_eq!(
        *bad.lock().unwrap(),
        Vec::<String>::new(),
        "of {reads} reads"
    );
}

// --- the daemon ------------------------------------------------------------

/// A `pyfw daemon` in a namespace, its stderr collected as it comes.
struct Daemon {
    child: Child,
    log: Arc<Mutex<String>>,
    reader: Option<JoinHandle<()>>,
}

impl Daemon {
    /// Starts a daemon that polls once an hour: a repair within the test's
    /// time can only come from netfilter's change events.
    fn start(host: &Host) -> Daemon {
        let wishes = host.dir.path().join("wishes.yaml");
        let argv = [
            PYFW,
            "--wishes",
            wishes.to_str().unwrap(),
            "daemon",
            "--interval",
            "1h",
        ];
        let mut cmd = host.ns.command_for(&argv);
        cmd.env("PYFW_STATE_DIR", host.state_dir())
            .env("PYFW_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start the daemon");
        let log = Arc::new(Mutex::new(String::new()));
        let reader = common::collect(child.stderr.take().unwrap(), &log);
        let d = Daemon {
            child,
            log,
            reader: Some(reader),
        };
        d.wait_log("ready: netfilter matches");
        d
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    #[track_caller]
    fn wait_until(&self, what: &str, mut ok: impl FnMut() -> bool) {
        let start = Instant::now();
        while !ok() {
            if start.elapsed() > Duration::from_secs(30) {
                panic!(
                    "timed out waiting for {what}\n--- daemon log ---\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[track_caller]
    fn wait_log(&self, needle: &str) {
        self.wait_until(&format!("`{needle}` in the log"), || {
            self.log().contains(needle)
        });
    }

    /// Stops the daemon (SIGTERM) and waits for it.
    fn stop(mut self) -> String {
        // SAFETY: kill(2) of our own child with SIGTERM.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        self.log()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The daemon repairs a rule deleted by hand, a deleted table and a
/// flushed ruleset, each within moments through nf_tables' change events
/// (it polls once an hour), logs what drifted, and leaves Docker's and
/// firewalld's tables beside it as they were.
fn hand_changes_are_repaired_by_the_daemon(backend: Backend) {
    let Some(host) = Host::on("nft_daemon", backend) else {
        return;
    };
    host.load(&foreign_tables());
    let docker = host.table("ip", "docker-bridges").unwrap();
    let firewalld = host.table("inet", "firewalld").unwrap();
    host.wishes(WISHES);
    let daemon = Daemon::start(&host);
    let wished = without_counters(&host.pyfw_table().unwrap());
    let repaired = |daemon: &Daemon, what: &str| {
        daemon.wait_until(what, || {
            host.pyfw_table()
                .is_some_and(|t| without_counters(&t) == wished)
        });
    };
    // A rule deleted by its handle.
    let listed = host.nft(&["-a", "list", "chain", "inet", "pyfw", "input"]);
    let handle = listed
        .lines()
        .find(|l| l.contains("tcp dport 22 accept"))
        .and_then(|l| l.rsplit("handle ").next())
        .unwrap()
        .trim()
        .to_string();
    host.nft(&["delete", "rule", "inet", "pyfw", "input", "handle", &handle]);
    repaired(&daemon, "the deleted rule back");
    daemon.wait_log("drift (drift): nft inet pyfw: chain input: rule ssh missing");
    // The whole table.
    host.nft(&["delete", "table", "inet", "pyfw"]);
    repaired(&daemon, "the deleted table back");
    daemon.wait_log("drift (drift): nft inet pyfw: table missing");
    // An element of its set.
    host.nft(&[
        "delete",
        "element",
        "inet",
        "pyfw",
        "allowed_hosts",
        "{ 10.0.0.1 }",
    ]);
    repaired(&daemon, "the set's element back");
    daemon.wait_log("set allowed_hosts: elements differ (1 there, 2 wished)");
    assert_eq!(host.table("ip", "docker-bridges").unwrap(), docker);
    assert_eq!(host.table("inet", "firewalld").unwrap(), firewalld);
    // Everything at once.
    host.nft(&["flush", "ruleset"]);
    repaired(&daemon, "the table back after `nft flush ruleset`");
    let log = daemon.stop();
    let repairs = log.matches("repaired (drift)").count();
    assert!(repairs >= 4, "{log}");
    assert!(!log.contains("repaired (timer)"), "{log}");
}

#[test]
fn hand_changes_are_repaired_by_the_daemon_nft() {
    hand_changes_are_repaired_by_the_daemon(Backend::Nft);
}

#[test]
fn hand_changes_are_repaired_by_the_daemon_legacy() {
    hand_changes_are_repaired_by_the_daemon(Backend::Legacy);
}

#[test]
fn a_restarted_daemon_leaves_an_unchanged_table_and_its_counters() {
    let Some(host) = Host::new("nft_restart") else {
        return;
    };
    host.wishes(WISHES);
    let daemon = Daemon::start(&host);
    host.traffic();
    let counted = host.output_packets();
    assert!(counted > 0, "{:?}\n{}", host.pyfw_table(), daemon.log());
    daemon.stop();
    let again = Daemon::start(&host);
    let log = again.stop();
    assert!(!log.contains("drift ("), "{log}");
    assert_eq!(
        host.output_packets(),
        counted,
        "the table was replaced\n{log}"
    );
}

/// The metrics count an owned table's drift and its replacement by table.
#[test]
fn metrics_say_which_owned_table_drifted() {
    use pyfw::daemon::metrics::{Metrics, ReconcileResult};
    let wishes = pyfw::wishes::parse(WISHES, Path::new("w.yaml")).unwrap();
    let table = &wishes.nftables[0];
    let mut plan = pyfw::plan::Plan::default();
    plan.commands.push(pyfw::plan::nft::command(
        pyfw::plan::nft::script(table),
        "nft inet pyfw: table missing".into(),
        table.label(),
    ));
    let metrics = Metrics::new();
    metrics.observe_plan(&wishes, &plan);
    let series = "pyfw_nft_table_drift{table=\"inet pyfw\"} 1";
    assert!(metrics.encode().contains(series), "{}", metrics.encode());
    metrics.observe_correction(&plan.commands[0]);
    metrics.observe_reconcile("startup", ReconcileResult::Repaired);
    let after = metrics.encode();
    assert!(
        after.contains("pyfw_nft_table_drift{table=\"inet pyfw\"} 0"),
        "{after}"
    );
    assert!(
        after.contains(
            "pyfw_corrections_total{family=\"nft\",table=\"inet pyfw\",chain=\"\",wish=\"\"} 1"
        ),
        "{after}"
    );
}

/// New wishes nft refuses change nothing in the daemon: one error names the
/// file, the line and the wish, and the last wishes stay enforced.
#[test]
fn the_daemon_keeps_the_last_table_when_nft_refuses_new_wishes() {
    let Some(host) = Host::new("nft_drefuse") else {
        return;
    };
    host.wishes(WISHES);
    let daemon = Daemon::start(&host);
    let before = host.nft(&["-s", "list", "table", "inet", "pyfw"]);
    let bad = WISHES.replace(
        "          - ip saddr 10.0.0.1/32 accept\n",
        "          - ip saddr 10.0.0.1/32 accept\n          - tcp dport 23 jump nosuchchain\n",
    );
    let line = bad.lines().position(|l| l.contains("nosuchchain")).unwrap() + 1;
    // Written beside, then renamed: one finished version of the file.
    let path = host.dir.path().join("wishes.yaml");
    std::fs::write(host.dir.path().join("new.yaml"), &bad).unwrap();
    std::fs::rename(host.dir.path().join("new.yaml"), &path).unwrap();
    daemon.wait_log(&format!(
        "{}:{line}: nft inet pyfw/input/#4",
        path.display()
    ));
    // The old table stays, and is still enforced: a deleted rule comes back.
    assert_eq!(host.nft(&["-s", "list", "table", "inet", "pyfw"]), before);
    host.nft(&["flush", "chain", "inet", "pyfw", "output"]);
    daemon.wait_until("the old wishes enforced", || {
        host.nft(&["-s", "list", "table", "inet", "pyfw"]) == before
    });
    daemon.stop();
}
