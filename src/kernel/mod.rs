//! The I/O edge: the only code that starts processes or touches netfilter.
//!
//! Everything pyfw does to the kernel goes through [`Backend`], so tests can
//! script a fake one and the planner never sees a process. The real backend,
//! [`System`], runs `iptables`, `ip6tables` and `ipset` with an argument
//! vector (never a shell), with `LC_ALL=C` so that messages are stable, with
//! a timeout so a wedged tool cannot hang the daemon, and with stdout and
//! stderr kept apart.
//!
//! - [`backend`]: the trait, its errors, and how a plan's commands group
//!   into transactions;
//! - [`scope`]: what to read;
//! - [`process`]: spawning a tool (timeouts, pipes, caps);
//! - [`restore_script`]: the text of `iptables-restore` and `ipset restore`
//!   batches (pure);
//! - [`system`], [`read`], [`learn`], [`variant`]: the real tools;
//! - [`legacy_cache`], [`fingerprint`], [`xtlock`]: what keeps legacy polls
//!   cheap;
//! - [`netns`], [`run_dir`], [`lock`], [`privilege`]: the namespace, the
//!   root-only directory of pyfw's own locks, the locks,
//!   and whether this process may act;
//! - [`nft`]: the `nft` tool (tables, listings, scripts, a private
//!   namespace to learn renderings in) and nf_tables' generation;
//! - [`state_dir`]: what pyfw keeps between runs (`/var/lib/pyfw`).

pub mod backend;
pub mod fingerprint;
pub mod learn;
pub mod legacy_cache;
pub mod lock;
pub mod netns;
pub mod nft;
pub mod nft_reads;
pub mod privilege;
pub mod process;
pub mod read;
pub mod restore_script;
pub mod run_dir;
pub mod scope;
pub mod state_dir;
pub mod system;
pub mod tool_id;
pub mod variant;
pub mod words;
pub mod xtlock;

pub use backend::{
    Backend, BatchError, Error, Form, Learned, Rejection, RuleCheck, SetShape, SetSummary,
    transactions,
};
pub use process::{COMMAND_TIMEOUT_ENV, MAX_OUTPUT_ENV, Output, REMEMBER_CHILDREN, started_here};
pub use scope::{Rules, Scope, Sets};
pub use system::System;
pub use variant::Variant;
