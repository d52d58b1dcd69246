//! Stress: the daemon beside a busy second writer.
//!
//! For several seconds a second process replays Docker restarts (flushing
//! DOCKER, putting Docker's FORWARD rules back on top, both as one
//! transaction and command by command) and adds and removes rules of its own
//! in the chains pyfw manages, many times per second, while `pyfw daemon`
//! polls every 200 ms and follows netfilter events. Afterwards the state
//! converges to the wishes, every rule the other writer left is there
//! exactly once, none it removed is back, Docker's rules are there exactly
//! once, no temporary copy is left, and the daemon is still running (and
//! stops cleanly). Needs root (see `tests/common/mod.rs`).

use crate::common;

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Backend, Netns, PYFW, spec, spec_path};

on_both_backends!(a_busy_second_writer_loses_nothing_and_state_converges);

/// How long the other writer runs.
const BUSY: Duration = Duration::from_secs(6);

fn a_busy_second_writer_loses_nothing_and_state_converges(backend: Backend) {
    let Some(ns) = Netns::new("stress", backend) else {
        return;
    };
    ns.iptables_restore(&spec("docker-after-reboot.save"));
    let wishes = spec_path("wishes.yaml");
    let mut daemon = ns
        .command_for(&[
            PYFW,
            "--wishes",
            wishes.to_str().unwrap(),
            "daemon",
            "--interval",
            "200ms",
        ])
        .env("PYFW_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the daemon");
    let log = Arc::new(Mutex::new(String::new()));
    let reader = common::collect(daemon.stderr.take().unwrap(), &log);
    let log_text = || log.lock().unwrap().clone();
    let start = Instant::now();
    while !log_text().contains("ready: netfilter matches") {
        assert!(start.elapsed() < Duration::from_secs(30), "{}", log_text());
        std::thread::sleep(Duration::from_millis(50));
    }

    let docker = pyfw::state::parse_iptables_save(&spec("docker-after-reboot.save")).unwrap();
    let docker_forward: Vec<String> = docker.tables["filter"]
        .chain("FORWARD")
        .unwrap()
        .rules
        .iter()
        .map(|r| pyfw::state::rule::display_args(r.args()))
        .collect();

    // The other writer, with the real tools, straight into the namespace.
    let mut live: Vec<(String, String)> = Vec::new(); // (chain, spec)
    let mut removed: Vec<String> = Vec::new();
    let mut flushed: Vec<String> = Vec::new();
    let (mut commands, mut restarts, mut failures) = (0usize, 0usize, Vec::<String>::new());
    let iptables = |args: &str| -> Result<(), String> {
        let argv: Vec<String> = shlex::split(args).unwrap();
        let mut full = vec!["iptables", "-w"];
        full.extend(argv.iter().map(String::as_str));
        let out = ns.run(&full);
        if out.success() {
            Ok(())
        } else {
            Err(format!("iptables {args}: {}", out.stderr.trim()))
        }
    };
    let busy_start = Instant::now();
    let mut i = 0usize;
    while busy_start.elapsed() < BUSY {
        i += 1;
        if i.is_multiple_of(5) {
            restarts += 1;
            // Docker flushes DOCKER: the rules there go, by Docker's doing.
            flushed.extend(
                live.iter()
                    .filter(|(c, _)| c == "DOCKER")
                    .map(|(_, s)| s.clone()),
            );
            live.retain(|(c, _)| c != "DOCKER");
            if restarts.is_multiple_of(2) {
                // One transaction, as `systemctl restart docker` leaves it.
                let mut script = String::from("*filter\n-F DOCKER\n");
                for (k, r) in docker_forward.iter().enumerate() {
                    script.push_str(&format!("-D FORWARD {r}\n-I FORWARD {} {r}\n", k + 1));
                }
                script.push_str("COMMIT\n");
                let out = ns.run_with_input(&["iptables-restore", "-w", "--noflush"], &script);
                commands += 1;
                if !out.success() {
                    failures.push(format!("docker restart: {}", out.stderr.trim()));
                }
            } else {
                // Command by command, as Docker's daemon does it.
                commands += 1;
                if let Err(e) = iptables("-F DOCKER") {
                    failures.push(e);
                }
                for (k, r) in docker_forward.iter().enumerate() {
                    commands += 2;
                    for step in [
                        format!("-D FORWARD {r}"),
                        format!("-I FORWARD {} {r}", k + 1),
                    ] {
                        if let Err(e) = iptables(&step) {
                            failures.push(e);
                        }
                    }
                }
            }
        }
        // A rule of its own, at the top or the bottom of a chain pyfw
        // manages.
        let chain = ["FORWARD", "INPUT", "DOCKER"][i % 3];
        let spec = format!(
            "-s 10.99.{}.{}/32 -m comment --comment other-{i} -j RETURN",
            i / 250,
            i % 250
        );
        let op = if i.is_multiple_of(2) { "-I" } else { "-A" };
        let at = if op == "-I" {
            format!("{chain} 1")
        } else {
            chain.to_string()
        };
        commands += 1;
        match iptables(&format!("{op} {at} {spec}")) {
            Ok(()) => live.push((chain.to_string(), spec)),
            Err(e) => failures.push(e),
        }
        // And removes an older one, which must still be there.
        if i.is_multiple_of(3) && live.len() > 4 {
            let (chain, spec) = live.remove(live.len() / 2);
            commands += 1;
            match iptables(&format!("-D {chain} {spec}")) {
                Ok(()) => removed.push(spec),
                Err(e) => failures.push(format!("lost before removal: {e}")),
            }
        }
    }
    let busy = busy_start.elapsed();
    let rate = commands as f64 / busy.as_secs_f64();
    eprintln!(
        "stress[{backend:?}]: {commands} commands ({rate:.0}/s), {restarts} Docker restarts, {} \
         rules left, {} removed, in {busy:?}",
        live.len(),
        removed.len()
    );
    assert!(
        failures.is_empty(),
        "the other writer's commands failed (a rule of its own went missing?):\n{}\n--- daemon \
         ---\n{}",
        failures.join("\n"),
        log_text()
    );
    assert!(rate >= 20.0, "only {rate:.0} commands per second");
    assert!(restarts >= 5, "only {restarts} Docker restarts");

    // Converges.
    let start = Instant::now();
    loop {
        let check = ns.run_pyfw(&wishes, &["check"]);
        if check.code() == Some(0) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no convergence within 60 s after the writer stopped\n{check}\n--- daemon ---\n{}",
            log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Nothing of the other writer's lost or doubled; nothing it removed
    // (or Docker flushed) back.
    let save = ns.iptables_save();
    let count = |needle: &str| save.matches(needle).count();
    for (chain, spec) in &live {
        let name = spec
            .split("--comment ")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap();
        let n = count(&format!("--comment {name} "));
        assert_eq!(n, 1, "{chain}: {name} lost or doubled\n{save}");
    }
    for spec in removed.iter().chain(&flushed) {
        let name = spec
            .split("--comment ")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap();
        assert_eq!(
            count(&format!("--comment {name} ")),
            0,
            "{name} came back\n{save}"
        );
    }
    for r in &docker_forward {
        assert_eq!(
            count(&format!("-A FORWARD {r}\n")),
            1,
            "Docker's `{r}` lost or doubled\n{save}"
        );
    }
    assert!(
        !save.contains("_pyfw_temp_"),
        "a temporary copy was left\n{save}"
    );
    // The daemon did work during the storm, not only after it.
    let repairs = log_text().matches("repaired (").count();
    assert!(repairs >= 3, "only {repairs} repairs\n{}", log_text());

    // Alive, and stops cleanly.
    assert!(
        daemon.try_wait().unwrap().is_none(),
        "the daemon died\n{}",
        log_text()
    );
    // SAFETY: kill(2) on our own child with SIGTERM.
    unsafe { libc::kill(daemon.id() as libc::pid_t, libc::SIGTERM) };
    let start = Instant::now();
    let status = loop {
        if let Some(s) = daemon.try_wait().unwrap() {
            break s;
        }
        // A deadline against a hang, not a speed check.
        assert!(start.elapsed() < Duration::from_secs(60), "{}", log_text());
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = reader.join();
    assert!(status.success(), "exit {status}\n{}", log_text());
    let panics = log_text().matches("panicked").count();
    assert_eq!(panics, 0, "{}", log_text());
}
