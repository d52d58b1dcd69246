//! pyfw keeps a host's netfilter state (iptables and ip6tables rules, chain
//! policies, ipsets) equal to a declarative file of wishes, while Docker,
//! libvirt, Kubernetes and fail2ban keep writing their own rules beside it.
//!
//! The modules are layers along the data path, and imports point one way
//! (see `docs/architecture.md`):
//!
//! - [`state`] and [`wishes`] (pure): what the kernel holds and its
//!   parsers; what the operator wants;
//! - [`plan`] (pure): the commands that turn one into the other;
//! - [`kernel`]: the only code that starts processes or touches netfilter;
//! - [`reconcile`]: read, canonicalize, plan, apply, all or nothing;
//! - [`cli`] and [`daemon`]: the one-shot commands and the long-running
//!   reconciler.

#![warn(clippy::too_many_lines)]

pub mod cli;
pub mod daemon;
pub mod kernel;
pub mod plan;
pub mod reconcile;
pub mod state;
pub mod wishes;
