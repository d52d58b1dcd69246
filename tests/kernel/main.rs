//! The kernel tests: pyfw against real iptables, ip6tables, ipset and nft,
//! each test in network namespaces of its own (see `tests/common/mod.rs`),
//! on both iptables backends where it matters.
//!
//! They need root. Without it, or where namespaces cannot be made, each
//! test prints a `SKIP` line and passes, unless `PYFW_REQUIRE_NETNS=1`,
//! which makes that a failure: `PYFW_REQUIRE_NETNS=1 cargo test --test
//! kernel` as root. The tests that need neither are in `tests/offline/`.

#[macro_use]
#[path = "../common/mod.rs"]
mod common;
mod topology;

mod big_wishes;
mod daemon;
mod docker_nft_story;
mod e2e;
mod faults;
mod fingerprint;
mod firewalld_coexistence;
mod foreign_rules;
mod hardening;
mod iptables_extensions;
mod kernel_refusals;
mod metrics;
mod names_round_trip;
mod netns;
mod nftables;
mod predicted_changes;
mod rule_in_force;
mod safety;
mod security;
mod squatters;
mod stress;
mod transactions;
mod unreached_chains;
mod wishes_in_practice;
