//! The spec's story (firewalling-docker.md) told again on a host where
//! Docker keeps its rules in nftables (Docker 29, `--firewall-backend=
//! nftables`), with real packets between network namespaces.
//!
//! The spec's network (`tests/kernel/topology.rs`: a LAN, the Docker host with
//! eth0 192.168.122.190 and docker0 172.17.0.1, container 1 serving "nginx"
//! on :80 behind `-p 8000:80`, container 2, Host 2 192.168.122.193 and
//! another host 192.168.122.194); Docker's own `ip docker-bridges` table for
//! it (`tests/data/docker-nft/docker-bridges.nft`, derived from moby
//! docker-v29.7.2, see SOURCES.md there); and the README's wishes for
//! Docker's nftables backend (`tests/data/docker-nft/wishes.yaml`): an owned
//! table `inet pyfw` whose forward chain, at priority `filter - 1`, rejects
//! traffic to docker0 from hosts outside `@allowed_hosts`, and whose input
//! chain drops what the story does not open. Real TCP connections then say
//! who reaches whom: after `pyfw apply`, across Docker restarts (Docker's
//! table deleted and written again), and after `nft flush ruleset`, which
//! the running `pyfw daemon` repairs. That these wishes are the README's
//! is checked in `tests/offline/docker_nft_story.rs`.
//!
//! Needs root; see `tests/common/mod.rs` for how a test skips (or, with
//! `PYFW_REQUIRE_NETNS=1`, fails) where namespaces are unavailable.

use crate::common;
use crate::topology;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Backend, Netns, Out, PYFW};
use topology::{
    Background, DOCKER_HOST_ETH0, DOCKER0, HOST2, Machine, OTHER_PORT, Outcome, PUBLISHED, SSH,
    Topology, banner,
};

/// How long a probe waits for an answer: far longer than any answer takes
/// on veths, so a timeout means a drop.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The longest wait for a line in the daemon's log (a generous deadline,
/// not a promise about speed).
const WAIT: Duration = Duration::from_secs(30);

/// A file of `tests/data/docker-nft/`.
fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/docker-nft")
        .join(name)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// A connection and how it must end.
type Row = (Machine, &'static str, u16, Outcome);

/// Who reaches whom, as the spec's story wants it on the Docker host, with
/// `other_host` saying how the other host's connection to nginx ends and
/// `input_drops` whether the host's input drops what no rule accepts.
fn the_story_says(other_host: Outcome, input_drops: bool) -> Vec<Row> {
    use Outcome::{Connected, TimedOut};
    let unopened = if input_drops { TimedOut } else { Connected };
    vec![
        // "connect to nginx container from Docker Host - works": Docker's
        // nat-OUTPUT DNATs to 172.17.0.2:80 (no input hook on the way).
        (Machine::DockerHost, DOCKER0, PUBLISHED, Connected),
        (Machine::DockerHost, DOCKER_HOST_ETH0, PUBLISHED, Connected),
        // "... from another Docker container" (via 172.17.0.1:8000 and via
        // 192.168.122.190:8000): not DNATed (`iifname != "docker0"` before
        // Docker's DNAT), so docker-proxy answers, through the input hook:
        // `allow_inter_docker`.
        (Machine::Container2, DOCKER0, PUBLISHED, Connected),
        (Machine::Container2, DOCKER_HOST_ETH0, PUBLISHED, Connected),
        // "... from Host 2 - works": DNATed, forwarded to docker0.
        (Machine::Host2, DOCKER_HOST_ETH0, PUBLISHED, Connected),
        // "... from any host other than Host 2": refused by the wishes'
        // `allowed_hosts_only`, at priority filter - 1, before Docker's
        // forward chain accepts the published port.
        (Machine::OtherHost, DOCKER_HOST_ETH0, PUBLISHED, other_host),
        // A container reaches the outer world (masqueraded by Docker; the
        // wishes' forward chain lets docker0's traffic out).
        (Machine::Container1, HOST2, SSH, Connected),
        // SSH stays open (`allow_ssh`); other ports follow input's policy.
        (Machine::Host2, DOCKER_HOST_ETH0, SSH, Connected),
        (Machine::Host2, DOCKER_HOST_ETH0, OTHER_PORT, unopened),
    ]
}

/// Docker's table alone: everyone reaches nginx, the other host too.
fn docker_only() -> Vec<Row> {
    the_story_says(Outcome::Connected, false)
}

/// Docker's table and pyfw's: the story's goals.
fn wished() -> Vec<Row> {
    the_story_says(Outcome::Refused, true)
}

/// The story's network, Docker's table, the wishes and pyfw's state
/// directory.
struct Story {
    net: Topology,
    dir: tempfile::TempDir,
    /// Host 2's SSH server, for the containers' outgoing connections.
    _host2_ssh: Background,
}

impl Story {
    fn new(test: &str) -> Option<Story> {
        let net = Topology::new(test, Backend::Nft)?;
        let host2_ssh = net.spawn(
            Machine::Host2,
            &["socat", "TCP-LISTEN:22,fork,reuseaddr", "SYSTEM:echo ssh"],
        );
        wait_listening(&net, Machine::Host2, SSH);
        let dir = tempfile::Builder::new()
            .prefix("pyfw-docker-nft-")
            .tempdir()
            .unwrap();
        // A copy: the daemon watches its wishes file.
        std::fs::write(dir.path().join("wishes.yaml"), read(&data("wishes.yaml"))).unwrap();
        Some(Story {
            net,
            dir,
            _host2_ssh: host2_ssh,
        })
    }

    fn host(&self) -> &Netns {
        self.net.docker_host()
    }

    fn wishes(&self) -> PathBuf {
        self.dir.path().join("wishes.yaml")
    }

    /// `pyfw ARGS...` on the Docker host, with this story's wishes and state
    /// directory (never the machine's `/var/lib/pyfw`).
    fn pyfw_argv(&self, args: &[&str]) -> Vec<String> {
        let state = format!("PYFW_STATE_DIR={}", self.dir.path().join("state").display());
        let mut argv = vec![
            "env".to_string(),
            state,
            "PYFW_LOG=info".into(),
            PYFW.into(),
            "--wishes".into(),
            self.wishes().display().to_string(),
        ];
        argv.extend(args.iter().map(|a| a.to_string()));
        argv
    }

    fn pyfw(&self, args: &[&str]) -> Out {
        let argv = self.pyfw_argv(args);
        self.host()
            .run(&argv.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// `pyfw daemon`, polling once an hour: a repair within the test can
    /// only come from nf_tables' change events. Waits until it is ready.
    fn daemon(&self) -> Background {
        let argv = self.pyfw_argv(&["daemon", "--interval", "1h"]);
        let mut daemon = self.net.spawn(
            Machine::DockerHost,
            &argv.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        wait_log(&mut daemon, "ready: netfilter matches");
        daemon
    }

    #[track_caller]
    fn nft(&self, args: &[&str]) -> String {
        let mut argv = vec!["nft"];
        argv.extend_from_slice(args);
        self.host().ok(&argv, "nft")
    }

    #[track_caller]
    fn nft_script(&self, script: &str) {
        self.host()
            .run_with_input(&["nft", "-f", "-"], script)
            .expect_ok("nft -f -");
    }

    /// `nft -s -a list table FAMILY NAME`: rules, sets and every handle,
    /// without counters' values (packets move them), so that equal
    /// listings mean the table was not touched at all.
    fn table_with_handles(&self, family: &str, name: &str) -> String {
        self.nft(&["-s", "-a", "list", "table", family, name])
    }

    /// Docker starts: its table for the story's network.
    fn docker_start(&self) {
        self.nft_script(&read(&data("docker-bridges.nft")));
    }

    /// `systemctl restart docker.service`: Docker's table deleted (on
    /// stop), then written again (on start), as two transactions.
    fn docker_restart(&self) {
        self.nft(&["delete", "table", "ip", "docker-bridges"]);
        self.docker_start();
    }

    /// Docker rewriting its table whole, as moby's own `Table.Reload`
    /// does (internal/nftables/reload.nft.gotmpl): declare, delete and
    /// create it again in one transaction.
    fn docker_reload(&self) {
        let script = format!(
            "table ip docker-bridges {{}}\ndelete table ip docker-bridges\n{}",
            read(&data("docker-bridges.nft"))
        );
        self.nft_script(&script);
    }

    /// Probes every row at once; panics with the whole table and the Docker
    /// host's ruleset unless each connection ends as the row says (and a
    /// connection gets the reply of the service behind the port).
    #[track_caller]
    fn assert_connections(&self, stage: &str, rows: &[Row]) {
        let targets: Vec<(Machine, &str, u16)> = rows.iter().map(|r| (r.0, r.1, r.2)).collect();
        let probes = self.net.probe_all(&targets, PROBE_TIMEOUT);
        let mut table = String::new();
        let mut wrong = 0;
        for (probe, (.., want)) in probes.iter().zip(rows) {
            let ok = probe.outcome == *want
                && (probe.outcome != Outcome::Connected
                    || Some(probe.reply.as_str()) == banner(probe.port));
            wrong += usize::from(!ok);
            let mark = if ok { "ok   " } else { "WRONG" };
            writeln!(table, "  {mark} {probe}; the story says: {want}").unwrap();
        }
        assert!(
            wrong == 0,
            "{stage}: {wrong} connection(s) do not behave as the story says\n{table}\
             --- nft list ruleset in the Docker host ---\n{}",
            self.nft(&["list", "ruleset"])
        );
    }
}

#[track_caller]
fn wait_listening(net: &Topology, host: Machine, port: u16) {
    let filter = format!("sport = :{port}");
    let start = Instant::now();
    while net
        .run(host, &["ss", "-Hltn", &filter])
        .stdout
        .trim()
        .is_empty()
    {
        assert!(start.elapsed() < WAIT, "nothing listens on {host}:{port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `needle` is in the daemon's log; panics with the log if the
/// daemon exits or [`WAIT`] passes first.
#[track_caller]
fn wait_log(daemon: &mut Background, needle: &str) {
    let start = Instant::now();
    while !daemon.log().contains(needle) {
        if let Some(status) = daemon.exited() {
            panic!(
                "`pyfw daemon` exited ({status}) before logging `{needle}`\n{}",
                daemon.log()
            );
        }
        assert!(
            start.elapsed() < WAIT,
            "no `{needle}` in the daemon's log after {WAIT:?}\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The lines of `log` holding `needle`.
fn lines_with<'a>(log: &'a str, needle: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.contains(needle)).collect()
}

#[test]
fn the_docker_story_holds_on_dockers_nftables_backend_across_restarts_and_a_flushed_ruleset() {
    let Some(story) = Story::new("docker_nft_story") else {
        return;
    };

    // 1. Docker only, after `docker run -p 8000:80 nginx`: everyone reaches
    //    nginx, the other host too.
    story.docker_start();
    let docker = story.table_with_handles("ip", "docker-bridges");
    story.assert_connections("1. Docker's table only", &docker_only());

    // 2. `pyfw apply`: pyfw's table beside Docker's, which it never touches.
    let applied = story.pyfw(&["apply"]);
    applied.expect_ok("2. pyfw apply");
    assert!(
        applied.stdout.contains("replaces table inet pyfw"),
        "{applied}"
    );
    assert_eq!(
        story.table_with_handles("ip", "docker-bridges"),
        docker,
        "pyfw touched Docker's table"
    );
    story.assert_connections("2. after pyfw apply", &wished());
    let mine = story.table_with_handles("inet", "pyfw");

    // 3. Docker restarts (its table deleted, then written again), and
    //    rewrites its table whole the way moby's reload does: pyfw's table
    //    is not touched (same rules, same handles), pyfw finds nothing to
    //    do, and the connections still behave.
    story.docker_restart();
    story.docker_reload();
    assert_eq!(story.table_with_handles("inet", "pyfw"), mine);
    story
        .pyfw(&["check"])
        .expect_ok("3. pyfw check after Docker restarts");
    story.assert_connections("3. after Docker restarts", &wished());

    // 4. The daemon runs; Docker restarts under it: nothing to repair.
    let mut daemon = story.daemon();
    story.docker_restart();
    assert_eq!(story.table_with_handles("inet", "pyfw"), mine);
    story.assert_connections("4. after a Docker restart under the daemon", &wished());

    // 5. `nft flush ruleset` empties every table, Docker's too: the daemon
    //    sees its table gone, logs the drift and puts it back. Until Docker
    //    writes its table again, the input hook drops again and nobody
    //    reaches docker-proxy from the LAN.
    story.nft(&["flush", "ruleset"]);
    wait_log(&mut daemon, "drift (drift): nft inet pyfw: table missing");
    wait_log(&mut daemon, "repaired (drift)");
    use Outcome::{Connected, TimedOut};
    story.assert_connections(
        "5. pyfw's table repaired, Docker's not yet back",
        &[
            (Machine::OtherHost, DOCKER_HOST_ETH0, PUBLISHED, TimedOut),
            (Machine::Host2, DOCKER_HOST_ETH0, OTHER_PORT, TimedOut),
            (Machine::Host2, DOCKER_HOST_ETH0, SSH, Connected),
            (Machine::Container2, DOCKER0, PUBLISHED, Connected),
        ],
    );
    let repaired = story.table_with_handles("inet", "pyfw");

    // 6. Docker writes its table again: the story's goals hold again, and
    //    the repaired table is left alone.
    story.docker_start();
    story.assert_connections("6. after the repair and Docker's restart", &wished());
    assert_eq!(story.table_with_handles("inet", "pyfw"), repaired);
    story.pyfw(&["check"]).expect_ok("6. pyfw check at the end");

    // The daemon repaired once, the flushed table, and nothing else: no
    // Docker restart ever looked like drift to it.
    assert!(
        daemon
            .stop(Duration::from_secs(10))
            .is_some_and(|s| s.success()),
        "`pyfw daemon` did not stop cleanly on SIGTERM\n{}",
        daemon.log()
    );
    let log = daemon.log();
    let drift = lines_with(&log, "drift (");
    assert!(
        drift.len() == 1 && drift[0].contains("nft inet pyfw: table missing"),
        "the daemon saw other drift than the flush:\n{log}"
    );
    assert_eq!(lines_with(&log, "repaired (").len(), 1, "{log}");
}
