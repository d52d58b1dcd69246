//! pyfw keeps a host's netfilter state (iptables and ip6tables rules, chain
//! policies, ipsets) equal to a declarative file of wishes, while Docker,
//! libvirt, Kubernetes and fail2ban keep writing their own rules beside it.
//!
//! The crate is a functional core with an imperative shell:
//! - pure: [`wishes`] (the file), [`state`] (what the kernel holds, and its
//!   parsers), [`rule`] and [`ipset`] (their pieces), [`plan`] (the
//!   commands that turn one into the other) and [`predict`] (what they
//!   leave behind);
//! - shell: [`netfilter`] (the only place that starts processes) and
//!   [`apply`] (running a plan all or nothing).

pub mod apply;
pub mod canon;
pub mod confirm;
pub mod daemon;
pub mod fingerprint;
pub mod formats;
pub mod ipset;
pub mod lint;
pub mod lock;
pub mod metrics;
pub mod netfilter;
pub mod ownership;
pub mod plan;
pub mod predict;
pub mod reconcile;
pub mod rule;
pub mod secure;
pub mod state;
pub mod wishes;
pub mod xtlock;
