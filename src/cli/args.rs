//! The command line: what `pyfw` takes.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::cli::formats::{PlanFormat, StateFormat};
use crate::kernel::Variant;

const EXIT_HELP: &str = "\
Exit status:
  0  success; for `check`, netfilter matches the wishes
  1  error: the wishes file is invalid, a dump cannot be read, or a command failed
     (an apply that fails part-way undoes what it ran)
  2  `check` only: netfilter differs from the wishes (the plan is printed)
  3  `apply --confirm` only: not confirmed in time; the previous state was put back

Output:
  `plan` prints one command per line; every other line starts with `#`.
  `apply` prints `Executing command  i/N: CMD` before each command, then the
  changes to the state it read.";

/// Keeps netfilter (iptables, ip6tables, ipset) equal to a file of wishes,
/// beside the rules Docker, libvirt, Kubernetes and fail2ban write.
#[derive(Parser, Debug)]
#[command(version, after_help = EXIT_HELP)]
pub struct Cli {
    /// The wishes file.
    #[arg(
        long,
        global = true,
        env = "PYFW_WISHES",
        default_value = "/etc/pyfw/wishes.yaml"
    )]
    pub wishes: PathBuf,

    /// Same as the `apply` command (the original pyfw's spelling).
    #[arg(long)]
    pub apply: bool,

    /// Which iptables variant to drive: `auto` picks the one the host's
    /// other programs use (the one holding more rules).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "auto",
        env = "PYFW_BACKEND"
    )]
    pub backend: Variant,

    /// With `apply`: after applying, wait this long (`30s`, `2m`) for a
    /// confirmation (`yes` typed here, or `pyfw confirm` from another
    /// session); without one, put back exactly what was there before.
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_confirm)]
    pub confirm: Option<std::time::Duration>,

    /// Use a wishes file even when it or its directory is not owned by root
    /// or is writable by group or others (refused by default, like sshd's
    /// StrictModes).
    #[arg(
        long,
        global = true,
        env = "PYFW_ALLOW_INSECURE_WISHES",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub allow_insecure_wishes: bool,

    #[command(flatten)]
    pub dumps: Dumps,

    #[command(subcommand)]
    pub command: Option<Cmd>,
}

/// Saved state to plan from instead of the kernel; needs no root.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct Dumps {
    /// Read IPv4 rules from this `iptables-save` output.
    #[arg(long, global = true, value_name = "FILE")]
    pub iptables_save: Option<PathBuf>,
    /// Read IPv6 rules from this `ip6tables-save` output.
    #[arg(long, global = true, value_name = "FILE")]
    pub ip6tables_save: Option<PathBuf>,
    /// Read sets from this `ipset save` output.
    #[arg(long, global = true, value_name = "FILE")]
    pub ipset_save: Option<PathBuf>,
}

impl Dumps {
    pub(crate) fn given(&self) -> bool {
        self.iptables_save.is_some() || self.ip6tables_save.is_some() || self.ipset_save.is_some()
    }
}

#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum Cmd {
    /// Print the commands that would make netfilter match the wishes (default).
    Plan(PlanArgs),
    /// Run those commands, then print what changed.
    Apply,
    /// Exit 0 when netfilter matches the wishes, 2 when it does not.
    Check,
    /// Print the state pyfw sees.
    State(StateArgs),
    /// Keep netfilter matching the wishes: watch the file, poll for drift,
    /// repair it, and log every correction.
    Daemon(crate::daemon::Args),
    /// Confirm the `pyfw apply --confirm` waiting in this network namespace,
    /// so that it keeps its change.
    Confirm,
    /// Print a shell completion script (for packaging).
    #[command(hide = true)]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (pyfw.8, pyfw-SUBCOMMAND.8) into DIR (for
    /// packaging).
    #[command(hide = true)]
    Man { dir: PathBuf },
}

#[derive(clap::Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanArgs {
    /// Output format: `json` is documented in docs/formats.md.
    #[arg(long, value_enum, default_value_t)]
    pub format: PlanFormat,
}

#[derive(clap::Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct StateArgs {
    /// Output format: `yaml` and `json` are documented in docs/formats.md.
    #[arg(long, value_enum, default_value_t)]
    pub format: StateFormat,
}

pub fn parse_confirm(text: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if d < std::time::Duration::from_secs(1) {
        return Err("must be at least 1s".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    #[test]
    pub(crate) fn cli_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
