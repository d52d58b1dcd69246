//! Where the daemon's log goes.
//!
//! Under systemd (`JOURNAL_STREAM` set) events go to the journal natively,
//! with their fields as journal fields named exactly as in the code,
//! upper-cased and without a prefix: `TRIGGER`, `WISH`, `TABLE`, `CHAIN`,
//! `IPSET`, `FAMILY`, `COMMAND`, `RESULT`, `EXIT_STATUS`, `FILE`, `LINE`.
//! So `journalctl -u pyfw TRIGGER=drift` lists the drift corrections and
//! `journalctl -u pyfw WISH=allow_ssh` everything about one wish. (The
//! journald layer also sets `TARGET` to the Rust module, so no field of
//! pyfw's is called `target`.)
//!
//! Elsewhere, readable text goes to stderr. `PYFW_LOG` is an `EnvFilter`
//! (`debug`, `pyfw=trace`, ...); the default is `info`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

fn filter() -> EnvFilter {
    EnvFilter::try_from_env("PYFW_LOG").unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Sets up logging for the daemon process. Safe to call more than once.
pub fn init() {
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        match tracing_journald::layer() {
            Ok(layer) => {
                let layer = layer
                    .with_field_prefix(None)
                    .with_syslog_identifier("pyfw".to_string());
                let _ = tracing_subscriber::registry()
                    .with(filter())
                    .with(layer)
                    .try_init();
                return;
            }
            Err(e) => {
                eprintln!("pyfw: cannot write to the journal ({e}); logging to stderr");
            }
        }
    }
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter())
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
