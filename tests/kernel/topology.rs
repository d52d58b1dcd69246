//! The spec's network (firewalling-docker.md), built from network namespaces
//! for end-to-end tests with real packets.
//!
//! ```text
//!   LAN bridge (namespace `…-lan`)
//!    ├── Docker host    eth0 192.168.122.190/24, docker0 172.17.0.1/16
//!    │     ├── container 1   eth0 172.17.0.2/16, "nginx" on :80
//!    │     └── container 2   eth0 172.17.0.3/16
//!    ├── Host 2         eth0 192.168.122.193/24
//!    └── other host     eth0 192.168.122.194/24
//! ```
//!
//! Every host is a namespace of its own; the Docker host is a
//! [`common::Netns`](super::common::Netns), so that its iptables commands,
//! and pyfw, use the backend the test asked for. The Docker host forwards
//! (`net.ipv4.ip_forward=1`) and runs a userland proxy on :8000 to
//! 172.17.0.2:80 in place of docker-proxy: connections from containers to
//! 172.17.0.1:8000 or 192.168.122.190:8000 are not DNATed (Docker's nat rule
//! `-A DOCKER -i docker0 -j RETURN`), so they reach that proxy through INPUT,
//! which is why the spec sees them break when INPUT drops. It also answers
//! "ssh" on :22 and "other" on :9999. Containers route via 172.17.0.1; LAN
//! hosts only know 192.168.122.0/24.
//!
//! Use it as `use crate::topology;` from a module of `tests/kernel/`. Names
//! carry the test's process id and a counter, so tests run in parallel;
//! everything (processes inside the namespaces, then the namespaces) goes in
//! `Drop`, also when the test panics. Namespaces left by a killed run are removed by the next one.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use wait_timeout::ChildExt;

use super::common::{Backend, Netns, Out, run_command};

/// The Docker host's address on the LAN.
pub const DOCKER_HOST_ETH0: &str = "192.168.122.190";
/// The Docker host's address on `docker0`.
pub const DOCKER0: &str = "172.17.0.1";
/// Container 1, running the "nginx" web server on :80.
pub const CONTAINER1: &str = "172.17.0.2";
/// Container 2.
pub const CONTAINER2: &str = "172.17.0.3";
/// Host 2, the one host allowed to reach nginx.
pub const HOST2: &str = "192.168.122.193";
/// Any other host on the LAN.
pub const OTHER_HOST: &str = "192.168.122.194";

/// The port Docker publishes nginx on (`docker run -p 8000:80`).
pub const PUBLISHED: u16 = 8000;
/// The Docker host's SSH port.
pub const SSH: u16 = 22;
/// Another service on the Docker host, not opened by any wish.
pub const OTHER_PORT: u16 = 9999;

/// Prefix of the namespaces this module creates itself (the Docker host's
/// comes from `common` and starts with `pyfwt-`).
const PREFIX: &str = "pyfwe-";

/// How the Docker host's namespace name starts: `common` names it
/// `pyfwt-` and the first ten letters and digits of the label given to
/// `Netns::new`, which is `e2e_` and the test's name.
const DOCKER_HOST_PREFIX: &str = "pyfwt-e2e";

/// Whatever answers a connection to `port`: the line it sends.
pub fn banner(port: u16) -> Option<&'static str> {
    match port {
        80 | PUBLISHED => Some("nginx"),
        SSH => Some("ssh"),
        OTHER_PORT => Some("other"),
        _ => None,
    }
}

/// A host of the spec's network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Machine {
    DockerHost,
    Container1,
    Container2,
    Host2,
    OtherHost,
}

impl Machine {
    pub const ALL: [Machine; 5] = [
        Machine::DockerHost,
        Machine::Container1,
        Machine::Container2,
        Machine::Host2,
        Machine::OtherHost,
    ];

    fn role(self) -> &'static str {
        match self {
            Machine::DockerHost => "dockerhost",
            Machine::Container1 => "c1",
            Machine::Container2 => "c2",
            Machine::Host2 => "host2",
            Machine::OtherHost => "other",
        }
    }
}

impl fmt::Display for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Machine::DockerHost => "Docker host",
            Machine::Container1 => "container 1",
            Machine::Container2 => "container 2",
            Machine::Host2 => "Host 2",
            Machine::OtherHost => "other host",
        })
    }
}

/// How a TCP connection attempt ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The handshake completed.
    Connected,
    /// Refused: a RST, or an ICMP port-unreachable (iptables `REJECT`).
    Refused,
    /// No answer within the timeout (iptables `DROP`).
    TimedOut,
    /// Anything else (no route, host unreachable, ...), with socat's message.
    Failed(String),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Connected => f.write_str("connected"),
            Outcome::Refused => f.write_str("refused"),
            Outcome::TimedOut => f.write_str("timed out"),
            Outcome::Failed(why) => write!(f, "failed: {why}"),
        }
    }
}

/// One connection attempt and what came of it.
#[derive(Clone, Debug)]
pub struct Probe {
    pub from: Machine,
    pub addr: String,
    pub port: u16,
    pub outcome: Outcome,
    /// What the server sent before closing (trimmed), when connected.
    pub reply: String,
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} -> {}:{}: {}",
            self.from, self.addr, self.port, self.outcome
        )?;
        if self.outcome == Outcome::Connected {
            write!(f, " (reply {:?})", self.reply)?;
        }
        Ok(())
    }
}

/// A process running in the background inside a namespace, its stdout and
/// stderr going to a log file. Stopped (SIGTERM, then SIGKILL) on drop.
pub struct Background {
    child: Child,
    what: String,
    log: PathBuf,
}

impl Background {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything it printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Sends SIGTERM and waits up to `grace` for it to exit; kills it
    /// after that. Returns the status, or `None` if it had to be killed.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.exited() {
            return Some(status);
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .stderr(Stdio::null())
            .status();
        match self.child.wait_timeout(grace).expect("wait for child") {
            Some(status) => Some(status),
            None => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                None
            }
        }
    }
}

impl fmt::Debug for Background {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (pid {})", self.what, self.child.id())
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// The spec's network. See the module documentation.
pub struct Topology {
    /// Background processes: the services, and what tests spawn.
    services: Vec<Background>,
    /// Namespaces this module created (all but the Docker host's).
    namespaces: BTreeMap<Machine, String>,
    lan: Option<String>,
    /// `PATH` inside the Docker host (the backend's iptables first).
    docker_host_path: String,
    /// Logs of background processes.
    tmp: tempfile::TempDir,
    docker_host: Netns,
}

/// Says why the topology cannot be built here: panics under
/// `PYFW_REQUIRE_NETNS=1`, else prints a `SKIP` line past the output capture.
#[track_caller]
fn unavailable(test: &str, reason: &str) {
    if std::env::var("PYFW_REQUIRE_NETNS").as_deref() == Ok("1") {
        panic!(
            "{test}: network namespace tests are required (PYFW_REQUIRE_NETNS=1) but cannot run: {reason}"
        );
    }
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIP {test}: {reason} (set PYFW_REQUIRE_NETNS=1 to make this a failure)"
    );
}

/// `PATH` for commands outside the Docker host (its tools need no backend).
fn plain_path() -> String {
    let mut path = std::env::var("PATH").unwrap_or_default();
    for dir in ["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        if !path.split(':').any(|p| p == dir) {
            if !path.is_empty() {
                path.push(':');
            }
            path.push_str(dir);
        }
    }
    path
}

fn which(tool: &str) -> bool {
    plain_path()
        .split(':')
        .any(|dir| Path::new(dir).join(tool).is_file())
}

/// Runs `ip ARGS` outside any namespace; panics unless it succeeds.
#[track_caller]
fn ip(args: &[&str]) {
    let mut cmd = Command::new("ip");
    cmd.args(args).env("PATH", plain_path());
    let mut argv = vec!["ip".to_string()];
    argv.extend(args.iter().map(|s| s.to_string()));
    run_command(cmd, argv, None).expect_ok("ip");
}

/// Kills every process inside namespace `name` (by pid) and deletes it.
fn destroy_namespace(name: &str) {
    destroy_namespace_processes(name);
    let _ = Command::new("ip")
        .args(["netns", "del", name])
        .env("PATH", plain_path())
        .stderr(Stdio::null())
        .status();
}

/// Removes namespaces left by test processes that no longer exist, and the
/// processes still running in them: ours (`pyfwe-PID-N-ROLE`) and the Docker
/// hosts' (`pyfwt-e2e…-PID-N`, which `common` would delete without
/// stopping their processes).
fn remove_stale() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Ok(entries) = std::fs::read_dir("/run/netns") else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let pid = if let Some(rest) = name.strip_prefix(PREFIX) {
                rest.split('-').next()
            } else if name.starts_with(DOCKER_HOST_PREFIX) {
                name.rsplit('-').nth(1)
            } else {
                continue;
            };
            let Some(pid) = pid.and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                destroy_namespace(&name);
            }
        }
    });
}

impl Topology {
    /// Builds the network for test `test`, the Docker host using `backend`,
    /// and starts its services. Returns `None` after printing why when the
    /// test cannot run here (see `common`), unless `PYFW_REQUIRE_NETNS=1`.
    /// Docker's rules are not loaded yet: see [`Topology::load_docker_rules`].
    #[track_caller]
    pub fn new(test: &str, backend: Backend) -> Option<Topology> {
        let label = format!("{test}[{backend:?}]");
        // Root and a working backend are checked by `Netns::new`.
        remove_stale();
        let docker_host = Netns::new(&format!("e2e_{test}"), backend)?;
        for tool in ["socat", "ss", "ipset"] {
            if !which(tool) {
                unavailable(&label, &format!("{tool} is not installed"));
                return None;
            }
        }
        let docker_host_path = docker_host
            .ok(&["printenv", "PATH"], "PATH in the Docker host")
            .trim()
            .to_string();
        let mut net = Topology {
            services: Vec::new(),
            namespaces: BTreeMap::new(),
            lan: None,
            docker_host_path,
            tmp: tempfile::Builder::new()
                .prefix("pyfw-e2e-")
                .tempdir()
                .expect("temp dir for logs"),
            docker_host,
        };
        net.build();
        Some(net)
    }

    fn build(&mut self) {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let id = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        // Register each name before creating it, so that Drop removes it
        // whatever fails next.
        let lan = format!("{id}-lan");
        self.lan = Some(lan.clone());
        ip(&["netns", "add", &lan]);
        for host in Machine::ALL {
            if host == Machine::DockerHost {
                continue;
            }
            let name = format!("{id}-{}", host.role());
            self.namespaces.insert(host, name.clone());
            ip(&["netns", "add", &name]);
        }
        for ns in self.namespaces.values().chain([&lan]) {
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        let dh = self.docker_host.name.clone();

        // The LAN: one bridge, one port per host.
        ip(&["-n", &lan, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &lan, "link", "set", "br0", "up"]);
        for (ns, port, addr) in [
            (&dh, "dockerhost", DOCKER_HOST_ETH0),
            (&self.namespaces[&Machine::Host2], "host2", HOST2),
            (&self.namespaces[&Machine::OtherHost], "other", OTHER_HOST),
        ] {
            ip(&[
                "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", port, "netns",
                &lan,
            ]);
            ip(&["-n", &lan, "link", "set", port, "master", "br0", "up"]);
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", ns, "link", "set", "eth0", "up"]);
        }

        // Docker's network: the docker0 bridge, one veth per container.
        ip(&["-n", &dh, "link", "add", "docker0", "type", "bridge"]);
        ip(&[
            "-n",
            &dh,
            "addr",
            "add",
            &format!("{DOCKER0}/16"),
            "dev",
            "docker0",
        ]);
        ip(&["-n", &dh, "link", "set", "docker0", "up"]);
        for (host, port, addr) in [
            (Machine::Container1, "veth-c1", CONTAINER1),
            (Machine::Container2, "veth-c2", CONTAINER2),
        ] {
            let ns = &self.namespaces[&host];
            ip(&[
                "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", &dh,
            ]);
            ip(&["-n", &dh, "link", "set", port, "master", "docker0", "up"]);
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/16"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", ns, "link", "set", "eth0", "up"]);
            ip(&["-n", ns, "route", "add", "default", "via", DOCKER0]);
        }
        self.run(
            Machine::DockerHost,
            &["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"],
        )
        .expect_ok("net.ipv4.ip_forward=1 in the Docker host");

        // The services.
        let proxy_target = format!("TCP:{CONTAINER1}:80");
        for (host, port, address) in [
            (Machine::Container1, 80, "SYSTEM:echo nginx"),
            (Machine::DockerHost, PUBLISHED, proxy_target.as_str()),
            (Machine::DockerHost, SSH, "SYSTEM:echo ssh"),
            (Machine::DockerHost, OTHER_PORT, "SYSTEM:echo other"),
        ] {
            let listen = format!("TCP-LISTEN:{port},fork,reuseaddr");
            let service = self.spawn(host, &["socat", &listen, address]);
            self.services.push(service);
            self.wait_listening(host, port);
        }
    }

    /// The Docker host's namespace, for iptables and pyfw.
    pub fn docker_host(&self) -> &Netns {
        &self.docker_host
    }

    /// The namespace name of `host`.
    pub fn ns(&self, host: Machine) -> &str {
        match host {
            Machine::DockerHost => &self.docker_host.name,
            other => &self.namespaces[&other],
        }
    }

    fn command(&self, host: Machine, argv: &[&str]) -> (Command, Vec<String>) {
        let ns = self.ns(host);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .args(argv)
            .env("LC_ALL", "C")
            .env_remove("PYFW_WISHES")
            .env_remove("PYFW_BACKEND");
        if host == Machine::DockerHost {
            cmd.env("PATH", &self.docker_host_path);
        } else {
            cmd.env("PATH", plain_path());
        }
        let mut shown = vec![format!("[{host}: netns {ns}]")];
        shown.extend(argv.iter().map(|s| s.to_string()));
        (cmd, shown)
    }

    /// Runs argv on `host` and waits for it.
    pub fn run(&self, host: Machine, argv: &[&str]) -> Out {
        let (cmd, shown) = self.command(host, argv);
        run_command(cmd, shown, None)
    }

    /// Starts argv on `host` in the background, stdout and stderr to a log
    /// file (see [`Background::log`]).
    pub fn spawn(&self, host: Machine, argv: &[&str]) -> Background {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let log = self.tmp.path().join(format!(
            "{}-{}.log",
            host.role(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let file = File::create(&log).expect("create log file");
        let (mut cmd, shown) = self.command(host, argv);
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone().expect("dup log file"))
            .stderr(file);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{}`: {e}", shown.join(" ")));
        Background {
            child,
            what: shown.join(" "),
            log,
        }
    }

    #[track_caller]
    fn wait_listening(&self, host: Machine, port: u16) {
        let filter = format!("sport = :{port}");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = self.run(host, &["ss", "-Hltn", &filter]);
            if out.success() && !out.stdout.trim().is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nothing listens on {host}:{port} after 10 s\n{out}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Loads Docker's rules after `docker run -d -p 8000:80 nginx`, exactly
    /// as the spec's first `iptables-save` shows them.
    #[track_caller]
    pub fn load_docker_rules(&self) {
        self.docker_host.iptables_restore(&docker_rules_fixture());
    }

    /// Replays `systemctl restart docker.service` as the spec shows it:
    /// Docker flushes its filter DOCKER chain, adds nginx's rule back, and
    /// puts its own FORWARD rules back at the top of FORWARD, one by one
    /// (pushing anything else, such as pyfw's `allow_established`, down).
    #[track_caller]
    pub fn replay_docker_restart(&self) {
        let rules = docker_rules_fixture();
        let dh = &self.docker_host;
        dh.iptables(&["-t", "filter", "-F", "DOCKER"]);
        let mut table = "";
        let mut forward = Vec::new();
        for line in rules.lines() {
            if let Some(t) = line.strip_prefix('*') {
                table = if t == "filter" { "filter" } else { "" };
            } else if table == "filter" {
                if let Some(rule) = line.strip_prefix("-A DOCKER ") {
                    let mut argv = vec!["-t", "filter", "-A", "DOCKER"];
                    argv.extend(rule.split_whitespace());
                    dh.iptables(&argv);
                } else if let Some(rule) = line.strip_prefix("-A FORWARD ") {
                    forward.push(rule);
                }
            }
        }
        assert!(!forward.is_empty(), "the fixture has no FORWARD rules");
        for (i, rule) in forward.iter().enumerate() {
            let mut delete = vec!["-t", "filter", "-D", "FORWARD"];
            delete.extend(rule.split_whitespace());
            dh.iptables(&delete);
            let position = (i + 1).to_string();
            let mut insert = vec!["-t", "filter", "-I", "FORWARD", &position];
            insert.extend(rule.split_whitespace());
            dh.iptables(&insert);
        }
    }

    /// One TCP connection from `from` to `addr:port`, giving up after
    /// `timeout`. Tells "connection refused" (RST or ICMP port-unreachable,
    /// i.e. iptables `REJECT`) from a timeout (`DROP`).
    pub fn connect(&self, from: Machine, addr: &str, port: u16, timeout: Duration) -> Outcome {
        self.probe(from, addr, port, timeout).outcome
    }

    /// [`Topology::connect`], keeping what the server sent.
    pub fn probe(&self, from: Machine, addr: &str, port: u16, timeout: Duration) -> Probe {
        let secs = format!("{:.1}", timeout.as_secs_f64().max(0.1));
        let target = format!("TCP:{addr}:{port},connect-timeout={secs}");
        // stdin is /dev/null: socat half-closes at once, then waits up to -t
        // for the server's reply and its close.
        let out = self.run(
            from,
            &[
                "socat",
                &format!("-T{secs}"),
                &format!("-t{secs}"),
                "-",
                &target,
            ],
        );
        let outcome = if out.success() {
            Outcome::Connected
        } else if out.stderr.contains("Connection refused") {
            Outcome::Refused
        } else if out.stderr.contains("timed out") {
            Outcome::TimedOut
        } else {
            let last = out.stderr.lines().last().unwrap_or("").trim();
            Outcome::Failed(format!("{} ({last})", out.status))
        };
        Probe {
            from,
            addr: addr.to_string(),
            port,
            outcome,
            reply: out.stdout.trim().to_string(),
        }
    }

    /// Probes all `targets` at once, one thread each; results in order.
    pub fn probe_all(&self, targets: &[(Machine, &str, u16)], timeout: Duration) -> Vec<Probe> {
        std::thread::scope(|s| {
            let handles: Vec<_> = targets
                .iter()
                .map(|&(from, addr, port)| s.spawn(move || self.probe(from, addr, port, timeout)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("probe thread panicked"))
                .collect()
        })
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for service in &mut self.services {
            service.stop(Duration::from_secs(2));
        }
        self.services.clear();
        // Anything else still running inside (socat's forked children, or a
        // process a test leaked), then the namespaces. The Docker host's
        // namespace itself goes when `docker_host` drops, right after.
        destroy_namespace_processes(&self.docker_host.name);
        for name in self.namespaces.values().chain(self.lan.as_ref()) {
            destroy_namespace(name);
        }
    }
}

/// Kills every process inside namespace `name` (by pid), keeping it.
fn destroy_namespace_processes(name: &str) {
    if let Ok(out) = Command::new("ip")
        .args(["netns", "pids", name])
        .env("PATH", plain_path())
        .stderr(Stdio::null())
        .output()
    {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("kill")
                .args(["-KILL", pid])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// `tests/data/e2e/docker-nginx.save`: the spec's first `iptables-save`.
pub fn docker_rules_fixture() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/e2e/docker-nginx.save");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read fixture {}: {e}", path.display()))
}
