//! The spec's story (firewalling-docker.md) with real packets: the spec's
//! network built from namespaces (`tests/kernel/topology.rs`), Docker's rules
//! for `docker run -d -p 8000:80 nginx`, and at each stage of the story the
//! spec's "check what works" list, asserted with real TCP connections that
//! tell "connection refused" from a timeout. On both iptables backends.
//!
//! Needs root; see `tests/common/mod.rs` for how a test skips (or, with
//! `PYFW_REQUIRE_NETNS=1`, fails) where namespaces are unavailable.

use crate::common;
use crate::topology;

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Backend, PYFW, spec_path};
use topology::{
    DOCKER_HOST_ETH0, DOCKER0, Machine, OTHER_PORT, Outcome, PUBLISHED, SSH, Topology, banner,
};

/// Who repairs the Docker restarts in stages 5 and 6: `pyfw daemon` (true)
/// or a `pyfw --apply` the test runs (false, while the daemon is not built).
const REPAIR_WITH_DAEMON: bool = true;

/// How long a probe waits for an answer: far longer than any answer takes
/// on veths, so a timeout means a DROP.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long the daemon may take to repair drift (it polls every 500 ms).
const REPAIR_DEADLINE: Duration = Duration::from_secs(10);

on_both_backends!(spec_story_with_packets);

/// A connection and how it must end.
type Row = (Machine, &'static str, u16, Outcome);

/// What changes from one stage of the story to the next.
struct Firewall {
    /// INPUT drops what no rule accepts.
    input_drops: bool,
    /// INPUT lets containers reach docker-proxy (`allow_inter_docker`).
    containers_in: bool,
    /// How the other host's connection to nginx ends.
    other_host: Outcome,
}

/// Docker's rules alone.
const DOCKER_ONLY: Firewall = Firewall {
    input_drops: false,
    containers_in: true,
    other_host: Outcome::Connected,
};

/// Docker's rules and pyfw's (the spec's wishes).
const WISHED: Firewall = Firewall {
    input_drops: true,
    containers_in: true,
    other_host: Outcome::Refused,
};

/// The spec's "check what works" list, and the ports beside it.
fn the_spec_says(fw: &Firewall) -> Vec<Row> {
    use Outcome::{Connected, TimedOut};
    let via_input = |open: bool| if open { Connected } else { TimedOut };
    let input_open = !fw.input_drops;
    vec![
        // "connect to nginx container from Docker Host - works": Docker's
        // nat OUTPUT rule DNATs these straight to 172.17.0.2:80.
        (Machine::DockerHost, DOCKER0, PUBLISHED, Connected),
        (Machine::DockerHost, DOCKER_HOST_ETH0, PUBLISHED, Connected),
        // Not in the spec: 127.0.0.1 is not DNATed; it goes to docker-proxy
        // through INPUT, and the spec's wishes accept nothing on `lo`.
        (
            Machine::DockerHost,
            "127.0.0.1",
            PUBLISHED,
            via_input(input_open),
        ),
        // "... from another Docker container on Docker Host" (both via
        // 172.17.0.1:8000 and via 192.168.122.190:8000): not DNATed
        // (`-A DOCKER -i docker0 -j RETURN`), so docker-proxy, through INPUT.
        (
            Machine::Container2,
            DOCKER0,
            PUBLISHED,
            via_input(input_open || fw.containers_in),
        ),
        (
            Machine::Container2,
            DOCKER_HOST_ETH0,
            PUBLISHED,
            via_input(input_open || fw.containers_in),
        ),
        // "... from Host 2 - works": DNATed, FORWARDed through DOCKER.
        (Machine::Host2, DOCKER_HOST_ETH0, PUBLISHED, Connected),
        // "... from any host other than Host 2": the same way, unless
        // DOCKER's allowed_hosts_only rejects it.
        (
            Machine::OtherHost,
            DOCKER_HOST_ETH0,
            PUBLISHED,
            fw.other_host.clone(),
        ),
        // SSH stays open (allow_ssh); other ports follow INPUT's policy.
        (Machine::Host2, DOCKER_HOST_ETH0, SSH, Connected),
        (
            Machine::Host2,
            DOCKER_HOST_ETH0,
            OTHER_PORT,
            via_input(input_open),
        ),
    ]
}

/// Probes every row at once; panics with the whole table, and the Docker
/// host's rules, unless each connection ends as the row says (a connection
/// must also get the reply of the service behind the port).
#[track_caller]
fn assert_connections(net: &Topology, stage: &str, rows: &[Row]) {
    let targets: Vec<(Machine, &str, u16)> = rows.iter().map(|r| (r.0, r.1, r.2)).collect();
    let probes = net.probe_all(&targets, PROBE_TIMEOUT);
    let mut table = String::new();
    let mut wrong = 0;
    for (probe, (.., want)) in probes.iter().zip(rows) {
        let ok = probe.outcome == *want
            && (probe.outcome != Outcome::Connected
                || Some(probe.reply.as_str()) == banner(probe.port));
        if !ok {
            wrong += 1;
        }
        let mark = if ok { "ok   " } else { "WRONG" };
        writeln!(table, "  {mark} {probe}; the spec says: {want}").unwrap();
    }
    assert!(
        wrong == 0,
        "{stage}: {wrong} connection(s) do not behave as the spec says\n{table}\
         --- iptables-save in the Docker host ---\n{}",
        net.docker_host().iptables_save()
    );
}

/// Waits until drift is repaired without the test running any command that
/// changes netfilter: the other host is refused again and `pyfw check` finds
/// nothing to do. Panics after [`REPAIR_DEADLINE`] or if the daemon exits.
#[track_caller]
fn wait_repaired(
    net: &Topology,
    wishes: &Path,
    daemon: &mut topology::Background,
    stage: &str,
) -> Duration {
    let start = Instant::now();
    loop {
        if let Some(status) = daemon.exited() {
            panic!(
                "{stage}: `pyfw daemon` exited ({status})\n--- its log ---\n{}",
                daemon.log()
            );
        }
        let other = net.connect(
            Machine::OtherHost,
            DOCKER_HOST_ETH0,
            PUBLISHED,
            PROBE_TIMEOUT,
        );
        if other == Outcome::Refused
            && net
                .docker_host()
                .run_pyfw(wishes, &["check"])
                .code()
                .is_some_and(|c| c == 0)
        {
            return start.elapsed();
        }
        if start.elapsed() > REPAIR_DEADLINE {
            panic!(
                "{stage}: not repaired within {REPAIR_DEADLINE:?} (other host: {other})\n\
                 --- `pyfw check` ---\n{}\n--- the daemon's log ---\n{}",
                net.docker_host().run_pyfw(wishes, &["check"]),
                daemon.log()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn spec_story_with_packets(backend: Backend) {
    let Some(net) = Topology::new("spec_story_with_packets", backend) else {
        return;
    };
    let wishes = spec_path("wishes.yaml");
    let dh = net.docker_host();
    let iptables = |rule: &str| dh.iptables(&rule.split(' ').collect::<Vec<_>>());

    // 1. Docker only, after `docker run -d -p 8000:80 nginx`: everyone
    //    reaches nginx, the other host too "(but we don't want that)".
    net.load_docker_rules();
    assert_connections(&net, "1. Docker only", &the_spec_says(&DOCKER_ONLY));

    // 2. The spec's first attempt, by hand: INPUT drops, but for established
    //    connections and SSH. Containers lose nginx; the other host does not.
    iptables("-I INPUT 1 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT");
    iptables("-I INPUT 2 -p tcp -m tcp --dport 22 -j ACCEPT");
    iptables("-P INPUT DROP");
    assert_connections(
        &net,
        "2. INPUT DROP by hand",
        &the_spec_says(&Firewall {
            input_drops: true,
            containers_in: false,
            other_host: Outcome::Connected,
        }),
    );
    // "after a reboot to clean up our experimental iptables rules"
    net.load_docker_rules();

    // 3. `pyfw --apply` with the spec's wishes: INPUT drops by default, so a
    //    port no wish opens times out; SSH and containers get in; DOCKER's
    //    allowed_hosts_only rejects the other host's DNATed connection.
    dh.run_pyfw(&wishes, &["--apply"])
        .expect_ok("3. `pyfw --apply`");
    assert_connections(&net, "3. after `pyfw --apply`", &the_spec_says(&WISHED));

    // 4. `systemctl restart docker.service`, replayed: DOCKER is flushed, so
    //    the other host gets through again, and `pyfw check` sees the drift.
    net.replay_docker_restart();
    dh.run_pyfw(&wishes, &["check"])
        .expect_code(2, "4. `pyfw check` after the Docker restart");
    assert_connections(
        &net,
        "4. after a Docker restart",
        &the_spec_says(&Firewall {
            other_host: Outcome::Connected,
            ..WISHED
        }),
    );

    // 5. The repair: refused again, without anyone running a command.
    // 6. Docker restarts once more while the daemon runs: repaired live.
    if REPAIR_WITH_DAEMON {
        let wishes_arg = wishes.to_str().expect("wishes path is UTF-8");
        let mut daemon = net.spawn(
            Machine::DockerHost,
            &[
                PYFW,
                "--wishes",
                wishes_arg,
                "daemon",
                "--interval",
                "500ms",
            ],
        );
        let took = wait_repaired(&net, &wishes, &mut daemon, "5. the daemon repairs");
        eprintln!("[{backend:?}] the daemon repaired the restart {took:?} after it started");
        assert_connections(
            &net,
            "5. after the daemon's repair",
            &the_spec_says(&WISHED),
        );

        net.replay_docker_restart();
        let took = wait_repaired(&net, &wishes, &mut daemon, "6. a live Docker restart");
        eprintln!("[{backend:?}] the daemon repaired a live restart within {took:?}");
        assert_connections(
            &net,
            "6. after the daemon's live repair",
            &the_spec_says(&WISHED),
        );
        assert!(
            daemon.stop(Duration::from_secs(10)).is_some(),
            "`pyfw daemon` did not exit within 10 s of SIGTERM\n{}",
            daemon.log()
        );
    } else {
        dh.run_pyfw(&wishes, &["--apply"])
            .expect_ok("5. `pyfw --apply` after the Docker restart");
        assert_connections(
            &net,
            "5. after `pyfw --apply` repaired the restart",
            &the_spec_says(&WISHED),
        );

        net.replay_docker_restart();
        dh.run_pyfw(&wishes, &["--apply"])
            .expect_ok("6. `pyfw --apply` after a second Docker restart");
        assert_connections(
            &net,
            "6. after `pyfw --apply` repaired a second restart",
            &the_spec_says(&WISHED),
        );
    }
    dh.run_pyfw(&wishes, &["check"])
        .expect_code(0, "`pyfw check` at the end");
}
