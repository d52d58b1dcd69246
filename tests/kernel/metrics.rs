//! The daemon's metrics, scraped over HTTP from the server a daemon starts
//! with `--metrics ADDR`, on loopback TCP and on a Unix socket.
//!
//! The registry and server alone, fed the spec's Docker restart, are in
//! `tests/offline/metrics.rs`. These tests start the real
//! `pyfw daemon --metrics` in a network
//! namespace of its own (see `tests/common`: without root they print SKIP,
//! or fail under `PYFW_REQUIRE_NETNS=1`), make drift and break the wishes
//! file, and read what the daemon says about it. Every wait polls a
//! condition until a deadline; nothing depends on timing.

use crate::common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{Backend, Netns, PYFW};
use pyfw::daemon::metrics::CONTENT_TYPE;
use wait_timeout::ChildExt;

/// The value of the sample `name{labels}` (labels as printed, sorted as
/// the encoder prints them), or of `name` without labels.
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|l| {
        let (s, v) = l.rsplit_once(' ')?;
        (s == series).then(|| v.parse().unwrap())
    })
}

// --- the real daemon -------------------------------------------------------

on_both_backends!(
    a_daemon_reports_over_loopback_tcp,
    a_daemon_reports_over_a_unix_socket,
);

/// Longest wait for any condition.
const WAIT: Duration = Duration::from_secs(30);
/// The daemon's poll interval in these tests.
const INTERVAL: &str = "300ms";

/// Wishes with an INPUT policy of DROP: loopback must be allowed, or the
/// firewall would block its own metrics port.
const WISHES: &str = "\
pyfw_wishes:
  ipsets:
    trusted:
      type: hash:ip
      members_equal:
      - 192.0.2.10
  iptables:
    filter:
      INPUT:
        default_action: DROP
        rules:
        - allow_loopback: -i lo -m comment --comment allow_loopback -j ACCEPT
        - allow_ssh: -p tcp -m tcp --dport 22 -m comment --comment allow_ssh -j ACCEPT
        - allow_trusted: -m set --match-set trusted src -m comment --comment allow_trusted -j ACCEPT
";

/// The rule the tests delete, as `iptables -D` takes it.
const ALLOW_SSH: &[&str] = &[
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
];

const INPUT_DRIFT: &str = "pyfw_drift{family=\"ipv4\",table=\"filter\",chain=\"INPUT\"}";
const SSH_CORRECTIONS: &str = "pyfw_corrections_total{family=\"ipv4\",table=\"filter\",\
                               chain=\"INPUT\",wish=\"allow_ssh\"}";

fn reconciles(trigger: &str, result: &str) -> String {
    format!("pyfw_reconciles_total{{trigger=\"{trigger}\",result=\"{result}\"}}")
}

/// A wishes file in a directory of its own, root-owned and private as
/// pyfw requires.
fn wishes_file() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wishes.yaml");
    std::fs::write(&path, WISHES).unwrap();
    (dir, path)
}

/// Writes `text` the way editors save: a temporary file renamed over.
fn editor_save(path: &Path, text: &str) {
    let tmp = path.with_extension("swp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Where a daemon serves its metrics, and how the test reaches it.
enum Scrape {
    /// Loopback inside the namespace: reached from a thread that joins it.
    Tcp { netns: String, addr: SocketAddr },
    /// A socket file: reached from the test process directly.
    Unix(PathBuf),
}

impl Scrape {
    fn arg(&self) -> String {
        match self {
            Scrape::Tcp { addr, .. } => addr.to_string(),
            Scrape::Unix(path) => format!("unix:{}", path.display()),
        }
    }

    /// One `GET /metrics`: the body of a 200 answer, or why there is none.
    fn get(&self) -> Result<String, String> {
        let request = "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n";
        match self {
            Scrape::Unix(path) => {
                let conn = UnixStream::connect(path).map_err(|e| e.to_string())?;
                conn.set_read_timeout(Some(Duration::from_secs(10)))
                    .map_err(|e| e.to_string())?;
                fetch(conn, request)
            }
            Scrape::Tcp { netns, addr } => {
                let addr = *addr;
                in_netns(netns, move || {
                    let conn = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                        .map_err(|e| e.to_string())?;
                    conn.set_read_timeout(Some(Duration::from_secs(10)))
                        .map_err(|e| e.to_string())?;
                    fetch(conn, request)
                })
            }
        }
    }
}

/// Runs `f` on a thread that has joined network namespace `netns`
/// (setns(2) moves only the calling thread).
fn in_netns<T: Send + 'static>(
    netns: &str,
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    let netns = netns.to_string();
    std::thread::spawn(move || {
        common::enter_netns(&netns).map_err(|e| format!("enter namespace {netns}: {e}"))?;
        f()
    })
    .join()
    .unwrap_or_else(|_| Err("the namespace thread panicked".into()))
}

/// Sends `request` and returns the body of a `200 OK` answer.
fn fetch(mut conn: impl Read + Write, request: &str) -> Result<String, String> {
    conn.write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    conn.read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("incomplete response: {response:?}"))?;
    if !head.starts_with("HTTP/1.1 200 OK\r\n") || !head.contains(CONTENT_TYPE) {
        return Err(format!("unexpected answer: {head}"));
    }
    Ok(body.to_string())
}

/// A `pyfw daemon --metrics` in a namespace, its log collected as it comes.
struct Daemon {
    child: Child,
    log: Arc<Mutex<String>>,
    reader: Option<JoinHandle<()>>,
}

impl Daemon {
    fn spawn(ns: &Netns, wishes: &Path, metrics: &str) -> Daemon {
        Daemon::spawn_with(ns, wishes, metrics, &[], None)
    }

    /// The same, with more arguments to `daemon` and, when given, systemd's
    /// notification socket.
    fn spawn_with(
        ns: &Netns,
        wishes: &Path,
        metrics: &str,
        more: &[&str],
        notify: Option<&Path>,
    ) -> Daemon {
        let backend = match ns.backend {
            Backend::Nft => "nft",
            Backend::Legacy => "legacy",
        };
        let wishes = wishes.to_str().unwrap();
        let mut cmd = ns.command_for(&[
            PYFW,
            "--wishes",
            wishes,
            "--backend",
            backend,
            "daemon",
            "--interval",
            INTERVAL,
            "--metrics",
            metrics,
        ]);
        cmd.args(more);
        cmd.env("PYFW_LOG", "debug")
            .env_remove("PYFW_INTERVAL")
            .env_remove("PYFW_METRICS")
            .env_remove("PYFW_METRICS_ALLOW_REMOTE")
            .env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(socket) = notify {
            cmd.env("NOTIFY_SOCKET", socket);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the daemon: {e}"));
        let log = Arc::new(Mutex::new(String::new()));
        let reader = common::collect(child.stderr.take().unwrap(), &log);
        Daemon {
            child,
            log,
            reader: Some(reader),
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Sends `signal` (`TERM`, `HUP`); `ip netns exec` execs pyfw, so the
    /// child is the daemon itself.
    fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal}");
    }

    #[track_caller]
    fn assert_alive(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("the daemon exited ({status})\n{}", self.log());
        }
    }

    /// Waits for the daemon to exit, within [`WAIT`].
    #[track_caller]
    fn exit_status(&mut self) -> ExitStatus {
        let Some(status) = self.child.wait_timeout(WAIT).unwrap() else {
            panic!("the daemon did not exit within {WAIT:?}\n{}", self.log());
        };
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        status
    }

    /// Scrapes until `ok` holds for the body, within [`WAIT`]; returns that
    /// body.
    #[track_caller]
    fn scrape_until(&mut self, scrape: &Scrape, what: &str, ok: impl Fn(&str) -> bool) -> String {
        self.scrape_while_doing(scrape, what, ok, || {})
    }

    /// The same, doing `meanwhile` before each scrape.
    #[track_caller]
    fn scrape_while_doing(
        &mut self,
        scrape: &Scrape,
        what: &str,
        ok: impl Fn(&str) -> bool,
        mut meanwhile: impl FnMut(),
    ) -> String {
        let start = Instant::now();
        loop {
            self.assert_alive();
            meanwhile();
            let last = match scrape.get() {
                Ok(body) if ok(&body) => return body,
                other => other,
            };
            if start.elapsed() > WAIT {
                let last = match last {
                    Ok(body) => body,
                    Err(e) => format!("(no answer: {e})"),
                };
                panic!(
                    "timed out after {WAIT:?} waiting for {what}\n--- last scrape ---\n{last}\n\
                     --- daemon log ---\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

fn value(body: &str, series: &str) -> f64 {
    sample(body, series).unwrap_or(0.0)
}

/// Starts a daemon on `scrape` and waits for its start-up reconcile to be
/// counted: pyfw's wishes loaded, everything repaired, no drift left.
fn started(ns: &Netns, wishes: &Path, scrape: &Scrape) -> (Daemon, String) {
    let mut daemon = Daemon::spawn(ns, wishes, &scrape.arg());
    let body = daemon.scrape_until(scrape, "the start-up reconcile", |b| {
        value(b, &reconciles("startup", "repaired")) == 1.0
    });
    assert_eq!(sample(&body, "pyfw_wishes_loaded"), Some(1.0), "{body}");
    assert_eq!(
        sample(&body, "pyfw_wishes_load_failures_total"),
        Some(0.0),
        "{body}"
    );
    assert_eq!(sample(&body, SSH_CORRECTIONS), Some(1.0), "{body}");
    assert_eq!(sample(&body, INPUT_DRIFT), Some(0.0), "{body}");
    assert_eq!(
        sample(&body, "pyfw_ipset_drift{ipset=\"trusted\"}"),
        Some(0.0),
        "{body}"
    );
    assert!(
        value(&body, "pyfw_apply_duration_seconds_count") >= 1.0,
        "{body}"
    );
    let since = value(&body, "pyfw_seconds_since_last_successful_reconcile");
    assert!(since.is_finite(), "{body}");
    assert!(body.contains("pyfw_build_info{version=\""), "{body}");
    // The set's creation is a correction too, under family ipset.
    assert!(
        value(
            &body,
            "pyfw_corrections_total{family=\"ipset\",table=\"\",chain=\"\",wish=\"trusted\"}"
        ) >= 1.0,
        "{body}"
    );
    (daemon, body)
}

/// Another program deletes a wished rule: one correction more, counted
/// under its chain and wish, and the drift gauge back at 0.
fn drift_is_counted(ns: &Netns, daemon: &mut Daemon, scrape: &Scrape) {
    let before = daemon.scrape_until(scrape, "a scrape", |_| true);
    let corrected = value(&before, SSH_CORRECTIONS);
    let mut delete = vec!["iptables", "-w"];
    delete.extend_from_slice(ALLOW_SSH);
    ns.ok(&delete, "delete allow_ssh");
    let after = daemon.scrape_until(scrape, "the repair to be counted", |b| {
        value(b, SSH_CORRECTIONS) > corrected && value(b, &reconciles("drift", "repaired")) >= 1.0
    });
    assert_eq!(value(&after, SSH_CORRECTIONS), corrected + 1.0, "{after}");
    assert_eq!(sample(&after, INPUT_DRIFT), Some(0.0), "{after}");
    assert!(
        ns.iptables_save().contains("--comment allow_ssh"),
        "repaired"
    );
}

fn a_daemon_reports_over_loopback_tcp(backend: Backend) {
    let Some(ns) = Netns::new("metrics_tcp", backend) else {
        return;
    };
    let (_dir, wishes) = wishes_file();
    // Loopback of the namespace: no port of the host is involved.
    let scrape = Scrape::Tcp {
        netns: ns.name.clone(),
        addr: "127.0.0.1:9983".parse().unwrap(),
    };
    let (mut daemon, _) = started(&ns, &wishes, &scrape);
    drift_is_counted(&ns, &mut daemon, &scrape);

    // A fight: another program keeps deleting the rule. The daemon backs
    // off, and while it holds its correction back the gauge shows drift.
    let mut delete = vec!["iptables", "-w"];
    delete.extend_from_slice(ALLOW_SSH);
    let during = daemon.scrape_while_doing(
        &scrape,
        "a held-back correction with the drift on the gauge",
        |b| value(b, &reconciles("drift", "held")) >= 1.0 && value(b, INPUT_DRIFT) == 1.0,
        || {
            let _ = ns.run(&delete);
        },
    );
    assert_eq!(
        sample(
            &during,
            "pyfw_drift{family=\"ipv4\",table=\"filter\",chain=\"FORWARD\"}"
        ),
        None,
        "only wished chains have a gauge: {during}"
    );
    // The fight stops: the repair clears the gauge.
    daemon.scrape_until(&scrape, "the drift gauge back at 0", |b| {
        value(b, INPUT_DRIFT) == 0.0 && b.contains(INPUT_DRIFT)
    });

    // A broken edit: the wishes gauge drops, the failure is counted once,
    // and the last good wishes stay in force.
    editor_save(&wishes, "pyfw_wishes:\n  iptables: [oops\n");
    let broken = daemon.scrape_until(&scrape, "the failed load", |b| {
        value(b, "pyfw_wishes_loaded") == 0.0
    });
    assert_eq!(
        sample(&broken, "pyfw_wishes_load_failures_total"),
        Some(1.0),
        "{broken}"
    );
    // Polls go on (the scrape still passes INPUT's DROP policy) and do not
    // count the same bad file again.
    let polls = value(&broken, &reconciles("timer", "in-sync"));
    let later = daemon.scrape_until(&scrape, "two more polls", |b| {
        value(b, &reconciles("timer", "in-sync")) >= polls + 2.0
    });
    assert_eq!(
        sample(&later, "pyfw_wishes_load_failures_total"),
        Some(1.0),
        "{later}"
    );
    assert_eq!(sample(&later, "pyfw_wishes_loaded"), Some(0.0), "{later}");

    // Fixed: loaded again.
    editor_save(&wishes, WISHES);
    daemon.scrape_until(&scrape, "the wishes loaded again", |b| {
        value(b, "pyfw_wishes_loaded") == 1.0
    });

    daemon.signal("TERM");
    let status = daemon.exit_status();
    assert_eq!(status.code(), Some(0), "{}", daemon.log());
    assert!(scrape.get().is_err(), "the server stops with the daemon");
}

fn a_daemon_reports_over_a_unix_socket(backend: Backend) {
    let Some(ns) = Netns::new("metrics_unix", backend) else {
        return;
    };
    let (dir, wishes) = wishes_file();
    let socket = dir.path().join("metrics.sock");
    let scrape = Scrape::Unix(socket.clone());
    let (mut daemon, _) = started(&ns, &wishes, &scrape);
    drift_is_counted(&ns, &mut daemon, &scrape);

    // SIGHUP re-reads the file: a load, and a run under its own trigger.
    daemon.signal("HUP");
    let body = daemon.scrape_until(&scrape, "the SIGHUP run", |b| {
        value(b, &reconciles("sighup", "in-sync")) == 1.0
    });
    assert_eq!(sample(&body, "pyfw_wishes_loaded"), Some(1.0), "{body}");

    // SIGTERM: exit 0, and the socket file goes with the server.
    daemon.signal("TERM");
    let status = daemon.exit_status();
    assert_eq!(status.code(), Some(0), "{}", daemon.log());
    assert!(!socket.exists(), "{} is left behind", socket.display());
}

// --- an address that cannot be served does not stop the firewall ----------

/// sd_notify messages sent to a socket standing in for systemd's.
struct Notified {
    path: PathBuf,
    got: Arc<Mutex<Vec<String>>>,
}

impl Notified {
    fn new(dir: &Path) -> Notified {
        let path = dir.join("notify");
        let sock = UnixDatagram::bind(&path).unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = got.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                sink.lock().unwrap().extend(text.lines().map(String::from));
            }
        });
        Notified { path, got }
    }

    fn messages(&self) -> Vec<String> {
        self.got.lock().unwrap().clone()
    }

    /// The last `STATUS=` sent, without its key.
    fn status(&self) -> String {
        self.messages()
            .iter()
            .rev()
            .find_map(|m| m.strip_prefix("STATUS="))
            .unwrap_or_default()
            .to_string()
    }
}

/// Polls `ok` until it holds, within [`WAIT`].
#[track_caller]
fn wait_until(daemon: &mut Daemon, what: &str, mut ok: impl FnMut(&Daemon) -> bool) {
    let start = Instant::now();
    while !ok(daemon) {
        daemon.assert_alive();
        if start.elapsed() > WAIT {
            panic!(
                "timed out after {WAIT:?} waiting for {what}\n--- daemon log ---\n{}",
                daemon.log()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts a daemon on `metrics`, which cannot be served now, in a
/// namespace whose INPUT chain is empty, and checks that it enforces all
/// the same: READY=1 comes, the wishes are in force and drift is
/// repaired; the log (at ERROR) and systemd's STATUS= both say what is
/// wrong with the address, in the words of `says`.
#[track_caller]
fn enforces_without_metrics(
    ns: &Netns,
    wishes: &Path,
    metrics: &str,
    more: &[&str],
    says: &[&str],
) -> (Daemon, Notified, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let notified = Notified::new(dir.path());
    ns.iptables(&["-F", "INPUT"]);
    ns.iptables(&["-P", "INPUT", "ACCEPT"]);
    let mut daemon = Daemon::spawn_with(ns, wishes, metrics, more, Some(&notified.path));
    wait_until(&mut daemon, "READY=1", |_| {
        notified.messages().iter().any(|m| m == "READY=1")
    });
    let rules = ns.iptables_save();
    assert!(
        rules.contains("--comment allow_ssh") && rules.contains(":INPUT DROP"),
        "{metrics}: READY=1 before the wishes are in force:\n{rules}\n{}",
        daemon.log()
    );
    let log = daemon.log();
    let error = log
        .lines()
        .find(|l| l.contains("ERROR") && l.contains("metrics"))
        .unwrap_or_else(|| panic!("{metrics}: no ERROR about the metrics:\n{log}"));
    for s in says {
        assert!(
            error.contains(s),
            "{metrics}: the ERROR must say `{s}`:\n{log}"
        );
    }
    wait_until(&mut daemon, "the metrics problem in STATUS=", |_| {
        notified.status().contains(says[0])
    });
    assert!(
        notified.status().starts_with("enforcing "),
        "{metrics}: {:?}",
        notified.messages()
    );
    // Drift is repaired as ever.
    let mut delete = vec!["iptables", "-w"];
    delete.extend_from_slice(ALLOW_SSH);
    ns.ok(&delete, "delete allow_ssh");
    wait_until(&mut daemon, "the repair of allow_ssh", |_| {
        ns.iptables_save().contains("--comment allow_ssh")
    });
    (daemon, notified, dir)
}

/// A port another program holds: the daemon enforces, says so, and keeps
/// trying; once the port is free, the metrics are served, the log says
/// so, and STATUS= no longer mentions them.
#[test]
fn a_busy_metrics_port_does_not_stop_enforcement_and_is_served_once_free() {
    let Some(ns) = Netns::new("metrics_busy", Backend::Nft) else {
        return;
    };
    let (_dir, wishes) = wishes_file();
    let holder = in_netns(&ns.name, || {
        TcpListener::bind("127.0.0.1:9984").map_err(|e| e.to_string())
    })
    .unwrap();
    let (mut daemon, notified, _notify_dir) = enforces_without_metrics(
        &ns,
        &wishes,
        "127.0.0.1:9984",
        &[],
        &[
            "cannot serve metrics on http://127.0.0.1:9984/metrics",
            "another program listens there",
        ],
    );
    // Tried again (logged at debug only) while the port is held.
    wait_until(&mut daemon, "a second try", |d| {
        d.log().matches("cannot serve metrics on").count() >= 2
    });
    drop(holder);
    let scrape = Scrape::Tcp {
        netns: ns.name.clone(),
        addr: "127.0.0.1:9984".parse().unwrap(),
    };
    let body = daemon.scrape_until(&scrape, "the metrics once the port is free", |b| {
        value(b, &reconciles("startup", "repaired")) == 1.0
    });
    assert!(value(&body, SSH_CORRECTIONS) >= 2.0, "{body}");
    assert!(
        daemon
            .log()
            .contains("serving metrics on http://127.0.0.1:9984/metrics"),
        "{}",
        daemon.log()
    );
    wait_until(&mut daemon, "STATUS= without the metrics problem", |_| {
        !notified.status().contains("metrics")
    });
    let log = daemon.log();
    assert_eq!(
        log.matches("ERROR").count(),
        1,
        "the busy port is reported once, not at each try:\n{log}"
    );
    daemon.signal("TERM");
    assert_eq!(daemon.exit_status().code(), Some(0), "{}", daemon.log());
}

/// A Unix socket in a directory that does not exist yet: enforced without
/// metrics until the directory appears, then served there.
#[test]
fn a_metrics_socket_is_served_once_its_directory_appears() {
    let Some(ns) = Netns::new("metrics_later", Backend::Nft) else {
        return;
    };
    let (dir, wishes) = wishes_file();
    let socket = dir.path().join("later/metrics.sock");
    let (mut daemon, _notified, _notify_dir) = enforces_without_metrics(
        &ns,
        &wishes,
        &format!("unix:{}", socket.display()),
        &[],
        &[
            &format!("cannot serve metrics on unix:{}", socket.display()),
            "does not exist",
            "RuntimeDirectory=pyfw",
        ],
    );
    std::fs::create_dir(dir.path().join("later")).unwrap();
    let scrape = Scrape::Unix(socket.clone());
    daemon.scrape_until(&scrape, "the metrics once the directory exists", |b| {
        value(b, &reconciles("startup", "repaired")) == 1.0
    });
    daemon.signal("TERM");
    assert_eq!(daemon.exit_status().code(), Some(0), "{}", daemon.log());
    assert!(!socket.exists(), "{} is left behind", socket.display());
}

/// An address that no restart of another program can fix (mistyped, or
/// remote without --metrics-allow-remote): the daemon enforces without
/// metrics, says what to fix, and does not try again.
#[test]
fn a_bad_metrics_address_does_not_stop_enforcement() {
    let Some(ns) = Netns::new("metrics_bad", Backend::Nft) else {
        return;
    };
    let (_dir, wishes) = wishes_file();
    for (metrics, says) in [
        (
            "0.0.0.0:9983",
            &["not a loopback address", "--metrics-allow-remote"][..],
        ),
        ("9983", &["expected IP:PORT", "restart"][..]),
    ] {
        let (mut daemon, _notified, _notify_dir) =
            enforces_without_metrics(&ns, &wishes, metrics, &[], says);
        // Polls go on, and no try to serve follows.
        std::thread::sleep(Duration::from_secs(1));
        daemon.assert_alive();
        let log = daemon.log();
        assert!(!log.contains("serving metrics"), "{metrics}: {log}");
        assert_eq!(log.matches("ERROR").count(), 1, "{metrics}: {log}");
        daemon.signal("TERM");
        assert_eq!(daemon.exit_status().code(), Some(0), "{}", daemon.log());
    }
    // Allowed on purpose, the same remote address is served.
    let mut daemon = Daemon::spawn_with(
        &ns,
        &wishes,
        "0.0.0.0:9983",
        &["--metrics-allow-remote"],
        None,
    );
    let scrape = Scrape::Tcp {
        netns: ns.name.clone(),
        addr: "127.0.0.1:9983".parse().unwrap(),
    };
    daemon.scrape_until(&scrape, "the metrics on 0.0.0.0", |b| {
        value(b, "pyfw_wishes_loaded") == 1.0
    });
}

/// A second daemon is refused for being a second daemon, whatever its
/// metrics address; the first goes on serving.
#[test]
fn a_second_daemon_is_refused_for_the_lock_not_the_port() {
    let Some(ns) = Netns::new("metrics_second", Backend::Nft) else {
        return;
    };
    let (_dir, wishes) = wishes_file();
    let scrape = Scrape::Tcp {
        netns: ns.name.clone(),
        addr: "127.0.0.1:9983".parse().unwrap(),
    };
    let (mut first, _) = started(&ns, &wishes, &scrape);
    let mut second = Daemon::spawn(&ns, &wishes, &scrape.arg());
    let status = second.exit_status();
    let log = second.log();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("already running in this network namespace")
            && !log.contains("cannot serve metrics"),
        "refused for the lock, not the port:\n{log}"
    );
    first.scrape_until(&scrape, "the first daemon still serving", |b| {
        value(b, "pyfw_wishes_loaded") == 1.0
    });
}
