//! What a legacy table's fingerprint costs (`pyfw::kernel::fingerprint`, the
//! daemon's idle legacy poll), in CPU, beside `iptables-legacy-save` and
//! `iptables-legacy -S INPUT`, on the benchmark's 50,000-rule host
//! (BENCHMARKS.md, issue 5). Each figure is measured in a throwaway network
//! namespace; root is needed.
//!
//! `cargo bench --bench fingerprint` measures. `cargo test --all-targets`
//! builds this and returns at once: a measurement is not a check.

#[path = "../tests/common/mod.rs"]
#[allow(dead_code, unused_macros)] // the bench needs only Netns from the tests' harness
mod common;

use std::time::{Duration, Instant};

use common::{Backend, Netns};
use pyfw::kernel::fingerprint::legacy_table;
use pyfw::state::Family;

fn main() {
    // `cargo bench` passes --bench; `cargo test` does not.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    cost_on_50k_rules();
}

/// CPU time of this thread (user + system).
fn thread_cpu() -> Duration {
    rusage(libc::RUSAGE_THREAD)
}

/// CPU time of this process's waited-for children (user + system).
fn children_cpu() -> Duration {
    rusage(libc::RUSAGE_CHILDREN)
}

fn rusage(who: libc::c_int) -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage(2) fills the struct it is given.
    let rc = unsafe { libc::getrusage(who, usage.as_mut_ptr()) };
    assert_eq!(rc, 0, "getrusage: {}", std::io::Error::last_os_error());
    // SAFETY: zeroed, then filled by a successful getrusage.
    let usage = unsafe { usage.assume_init() };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Measures, in `ns`, the CPU of `runs` fingerprints of each of `tables`
/// against `runs` runs of each command (started from the same thread, so in
/// the namespace, without `ip netns exec`).
fn measure(ns: &Netns, runs: u32, tables: &[&str], commands: &[&[&str]]) {
    ns.within(|| {
        let start = (thread_cpu(), Instant::now());
        for _ in 0..runs {
            for table in tables {
                let fp = legacy_table(Family::V4, table).expect("fingerprint");
                assert!(fp.is_some(), "{table} is loaded");
            }
        }
        let (cpu, wall) = (thread_cpu() - start.0, start.1.elapsed());
        println!(
            "fingerprint {tables:?}: {runs} runs, CPU {:.1} ms per run, wall {:.1} ms per run",
            cpu.as_secs_f64() * 1e3 / f64::from(runs),
            wall.as_secs_f64() * 1e3 / f64::from(runs)
        );
        for argv in commands {
            let start = (children_cpu(), Instant::now());
            for _ in 0..runs {
                let out = std::process::Command::new(argv[0])
                    .args(&argv[1..])
                    .stdout(std::process::Stdio::null())
                    .status()
                    .expect("run tool");
                assert!(out.success(), "{argv:?}");
            }
            let (cpu, wall) = (children_cpu() - start.0, start.1.elapsed());
            println!(
                "{}: {runs} runs, CPU {:.1} ms per run, wall {:.1} ms per run",
                argv.join(" "),
                cpu.as_secs_f64() * 1e3 / f64::from(runs),
                wall.as_secs_f64() * 1e3 / f64::from(runs)
            );
        }
    });
}

/// The benchmark's idle host: a 50,000-rule foreign chain (a Kubernetes
/// service chain with comments), plus small nat, mangle and raw tables.
fn cost_on_50k_rules() {
    let Some(ns) = Netns::new("fpcost", Backend::Legacy) else {
        return;
    };
    let mut text = String::from(
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
         :KUBE-SVC-BIG - [0:0]\n",
    );
    for i in 0..50_000u32 {
        text.push_str(&format!(
            "-A KUBE-SVC-BIG -d 10.{}.{}.{}/32 -p tcp -m comment --comment \
             \"default/svc-{i}:http cluster IP\" -m tcp --dport 80 -j ACCEPT\n",
            i >> 16,
            (i >> 8) & 255,
            i & 255
        ));
    }
    text.push_str("-A INPUT -j KUBE-SVC-BIG\nCOMMIT\n");
    text.push_str(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
         :POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE\n\
         COMMIT\n*mangle\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n\
         :OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n\
         *raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n",
    );
    ns.run_with_input(&["iptables-legacy-restore", "-w"], &text)
        .expect_ok("load the 50,000-rule host");
    let runs = 10;
    measure(
        &ns,
        runs,
        &["filter"],
        &[
            &["iptables-legacy-save"],
            &["iptables-legacy-save", "-t", "filter"],
            &["iptables-legacy", "-w", "-S", "INPUT"],
        ],
    );
    measure(&ns, runs, &["filter", "nat", "mangle", "raw"], &[]);
    measure(&ns, runs, &["nat"], &[]);
    drop(ns);

    // The smallest rules a foreign chain can hold (`-s ADDR -j ACCEPT`,
    // 152 bytes each, 7.6 MB), for how the cost scales with rule size.
    println!("-- 50,000 rules of the form -A BIG -s 10.x.y.z/32 -j ACCEPT --");
    let Some(ns) = Netns::new("fpcostplain", Backend::Legacy) else {
        return;
    };
    let mut text = String::from(
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:BIG - [0:0]\n",
    );
    for i in 0..50_000u32 {
        text.push_str(&format!(
            "-A BIG -s 10.{}.{}.{}/32 -j ACCEPT\n",
            i >> 16,
            (i >> 8) & 255,
            i & 255
        ));
    }
    text.push_str("-A INPUT -j BIG\nCOMMIT\n");
    ns.run_with_input(&["iptables-legacy-restore", "-w"], &text)
        .expect_ok("load the plain 50,000-rule host");
    measure(
        &ns,
        runs,
        &["filter"],
        &[
            &["iptables-legacy-save"],
            &["iptables-legacy", "-w", "-S", "INPUT"],
        ],
    );
}
