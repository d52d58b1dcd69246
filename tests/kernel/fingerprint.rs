//! The legacy-table fingerprint against real netfilter, each test in its
//! own network namespace: what must not change it (a second look, traffic
//! through counting rules) and what must (a reorder of equal size, a policy,
//! a rule added or removed), and that it never makes a table appear.
//!
//! `pyfw::kernel::fingerprint` works in the calling thread's namespace, so each call
//! runs on a thread that first joins the test's namespace with setns(2).
//!
//! What a fingerprint costs is measured, not tested: `cargo bench --bench
//! fingerprint` (benches/fingerprint.rs).

// The fingerprint is for the legacy backend only: no `on_both_backends!`.
use crate::common;

use std::net::UdpSocket;

use common::{Backend, Netns};
use pyfw::kernel::fingerprint::legacy_table;
use pyfw::state::Family;

/// The fingerprint of a legacy table in `ns`, which must not fail.
#[track_caller]
fn fp(ns: &Netns, family: Family, table: &str) -> Option<u64> {
    ns.within(|| legacy_table(family, table))
        .unwrap_or_else(|e| panic!("fingerprint of {family:?} {table}: {e}"))
}

/// The legacy tables that exist in `ns`, from the kernel's list.
fn tables_in(ns: &Netns, family: Family) -> String {
    let list = match family {
        Family::V4 => "/proc/net/ip_tables_names",
        Family::V6 => "/proc/net/ip6_tables_names",
    };
    let mut names: Vec<String> = ns
        .ok(&["cat", list], "list legacy tables")
        .lines()
        .map(String::from)
        .collect();
    names.sort();
    names.join(",")
}

const RULES: &str = "*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:FOREIGN - [0:0]
-A INPUT -i lo -p udp -m comment --comment \"counts datagrams\" -j ACCEPT
-A INPUT -j FOREIGN
-A FOREIGN -s 10.0.0.1/32 -j ACCEPT
-A FOREIGN -s 10.0.0.2/32 -j ACCEPT
-A FOREIGN -s 10.0.0.3/32 -p tcp -m tcp --dport 22 -j DROP
COMMIT
";

/// A legacy namespace holding [`RULES`] in filter, or `None` (skipped).
fn legacy_ns(test: &str) -> Option<Netns> {
    let ns = Netns::new(test, Backend::Legacy)?;
    ns.iptables_restore(RULES);
    Some(ns)
}

/// Sends `n` UDP datagrams over `lo` inside `ns` (to the discard port,
/// where nothing listens: the kernel answers each with an ICMP error, more
/// traffic still).
fn send_datagrams(ns: &Netns, to: &str, n: usize) {
    ns.within(|| {
        let from = if to.starts_with('[') {
            "[::1]:0"
        } else {
            "127.0.0.1:0"
        };
        let socket = UdpSocket::bind(from).expect("bind a UDP socket");
        for _ in 0..n {
            socket.send_to(b"traffic", to).expect("send a datagram");
        }
    });
}

/// Packets and bytes of INPUT's first rule, from `iptables -L -v -x`
/// (`command` is iptables or ip6tables).
fn first_input_counters(ns: &Netns, command: &str) -> (u64, u64) {
    let out = ns.ok(
        &[command, "-w", "-L", "INPUT", "-v", "-x", "-n"],
        "list INPUT with counters",
    );
    let line = out
        .lines()
        .nth(2)
        .unwrap_or_else(|| panic!("no first rule in:\n{out}"));
    let mut fields = line.split_whitespace();
    let mut number = || -> u64 {
        fields
            .next()
            .and_then(|f| f.parse().ok())
            .unwrap_or_else(|| panic!("no counters in {line:?}"))
    };
    (number(), number())
}

#[test]
fn same_fingerprint_twice() {
    let Some(ns) = legacy_ns("fpsame") else {
        return;
    };
    let first = fp(&ns, Family::V4, "filter");
    assert!(first.is_some(), "filter is loaded");
    assert_eq!(fp(&ns, Family::V4, "filter"), first);
}

#[test]
fn traffic_does_not_change_it() {
    let Some(ns) = legacy_ns("fptraffic") else {
        return;
    };
    let before = fp(&ns, Family::V4, "filter");
    let counters = first_input_counters(&ns, "iptables");
    send_datagrams(&ns, "127.0.0.1:9", 5);
    let after = first_input_counters(&ns, "iptables");
    assert!(
        after.0 >= counters.0 + 5 && after.1 > counters.1,
        "the datagrams went through the counting rule: {counters:?} -> {after:?}"
    );
    assert_eq!(fp(&ns, Family::V4, "filter"), before);
}

#[test]
fn reorder_of_equal_size_changes_it() {
    let Some(ns) = legacy_ns("fpreorder") else {
        return;
    };
    let before = fp(&ns, Family::V4, "filter");
    let size_before = ns.iptables_save().len();
    // Swap the first two FOREIGN rules: same rules, same sizes, new order,
    // as a Docker restart does to FORWARD.
    ns.iptables(&["-D", "FOREIGN", "1"]);
    ns.iptables(&["-I", "FOREIGN", "2", "-s", "10.0.0.1/32", "-j", "ACCEPT"]);
    let swapped = ns.iptables_save();
    assert_eq!(swapped.len(), size_before);
    assert!(swapped.contains("-A FOREIGN -s 10.0.0.2/32 -j ACCEPT\n-A FOREIGN -s 10.0.0.1/32"));
    let after = fp(&ns, Family::V4, "filter");
    assert_ne!(after, before, "a reorder must change the fingerprint");
    // Swapped back, the table is what it was, and so is its fingerprint.
    ns.iptables(&["-D", "FOREIGN", "1"]);
    ns.iptables(&["-I", "FOREIGN", "2", "-s", "10.0.0.2/32", "-j", "ACCEPT"]);
    assert_eq!(fp(&ns, Family::V4, "filter"), before);
}

#[test]
fn policy_change_changes_it() {
    let Some(ns) = legacy_ns("fppolicy") else {
        return;
    };
    let before = fp(&ns, Family::V4, "filter");
    ns.iptables(&["-P", "FORWARD", "DROP"]);
    assert_ne!(fp(&ns, Family::V4, "filter"), before);
    ns.iptables(&["-P", "FORWARD", "ACCEPT"]);
    assert_eq!(fp(&ns, Family::V4, "filter"), before);
}

#[test]
fn adding_or_removing_a_rule_changes_it() {
    let Some(ns) = legacy_ns("fpaddrm") else {
        return;
    };
    let before = fp(&ns, Family::V4, "filter");
    ns.iptables(&["-A", "OUTPUT", "-d", "192.0.2.1/32", "-j", "DROP"]);
    let added = fp(&ns, Family::V4, "filter");
    assert_ne!(added, before);
    ns.iptables(&["-D", "FOREIGN", "3"]);
    let removed = fp(&ns, Family::V4, "filter");
    assert_ne!(removed, added);
    assert_ne!(removed, before);
    ns.iptables(&["-D", "OUTPUT", "1"]);
    ns.iptables(&[
        "-A",
        "FOREIGN",
        "-s",
        "10.0.0.3/32",
        "-p",
        "tcp",
        "-m",
        "tcp",
        "--dport",
        "22",
        "-j",
        "DROP",
    ]);
    assert_eq!(fp(&ns, Family::V4, "filter"), before);
}

#[test]
fn ipv6_tables_too() {
    let Some(ns) = Netns::new("fpipv6", Backend::Legacy) else {
        return;
    };
    assert_eq!(fp(&ns, Family::V6, "filter"), None, "not loaded yet");
    ns.ip6tables(&["-A", "INPUT", "-i", "lo", "-p", "udp", "-j", "ACCEPT"]);
    ns.ip6tables(&["-A", "INPUT", "-s", "2001:db8::1/128", "-j", "ACCEPT"]);
    ns.ip6tables(&["-A", "INPUT", "-s", "2001:db8::2/128", "-j", "ACCEPT"]);
    let before = fp(&ns, Family::V6, "filter");
    assert!(before.is_some());
    assert_eq!(fp(&ns, Family::V6, "filter"), before);
    let counters = first_input_counters(&ns, "ip6tables");
    send_datagrams(&ns, "[::1]:9", 5);
    let after = first_input_counters(&ns, "ip6tables");
    assert!(after.0 >= counters.0 + 5, "{counters:?} -> {after:?}");
    assert_eq!(fp(&ns, Family::V6, "filter"), before, "traffic");
    ns.ip6tables(&["-D", "INPUT", "2"]);
    ns.ip6tables(&["-A", "INPUT", "-s", "2001:db8::1/128", "-j", "ACCEPT"]);
    assert_ne!(fp(&ns, Family::V6, "filter"), before, "reorder");
    assert_eq!(fp(&ns, Family::V4, "filter"), None, "IPv4 was never used");
}

#[test]
fn none_for_a_table_not_loaded_and_it_stays_unloaded() {
    let Some(ns) = legacy_ns("fpabsent") else {
        return;
    };
    assert_eq!(tables_in(&ns, Family::V4), "filter");
    for table in ["nat", "mangle", "raw", "security", "nosuchtable"] {
        assert_eq!(fp(&ns, Family::V4, table), None, "{table}");
    }
    assert_eq!(
        tables_in(&ns, Family::V4),
        "filter",
        "asking must not create tables"
    );
    // Once nat exists, it has a fingerprint of its own.
    ns.iptables(&["-t", "nat", "-A", "POSTROUTING", "-j", "MASQUERADE"]);
    let nat = fp(&ns, Family::V4, "nat");
    assert!(nat.is_some());
    assert_ne!(nat, fp(&ns, Family::V4, "filter"));
}

/// On an nft host the legacy tables do not exist: `None` for every table,
/// and asking must not create any (which would hook legacy tables in front
/// of the nft ones).
#[test]
fn nft_host_has_no_legacy_tables() {
    let Some(ns) = Netns::new("fpnft", Backend::Nft) else {
        return;
    };
    ns.iptables_restore(RULES);
    ns.iptables(&["-t", "nat", "-A", "POSTROUTING", "-j", "MASQUERADE"]);
    for family in [Family::V4, Family::V6] {
        for table in pyfw::state::TABLES {
            assert_eq!(fp(&ns, family, table), None, "{family:?} {table}");
        }
        assert_eq!(tables_in(&ns, family), "", "{family:?}");
    }
}
