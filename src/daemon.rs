//! The reconciliation daemon (`pyfw daemon`).

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use crate::netfilter::Variant;

/// Options of `pyfw daemon`.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct Args {
    /// How often to read netfilter and repair drift (500ms, 10s, 1m).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn main(wishes: &Path, backend: Variant, args: &Args) -> ExitCode {
    let _ = (wishes, backend, args);
    eprintln!("pyfw: error: the daemon is not built yet");
    ExitCode::from(1)
}
