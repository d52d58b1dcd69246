//! The `pyfw` command: one-shot `plan`, `apply`, `check` and `state`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use pyfw::apply::Event;
use pyfw::canon::{self, Comparison};
use pyfw::netfilter::{Backend, Scope, System, Variant};
use pyfw::plan::Plan;
use pyfw::reconcile::Reconciler;
use pyfw::state::{self, State, render_ipsets, render_ruleset};
use pyfw::wishes::{self, Wishes};

const EXIT_HELP: &str = "\
Exit status:
  0  success; for `check`, netfilter matches the wishes
  1  error: the wishes file is invalid, a dump cannot be read, or a command failed
     (an apply that fails part-way undoes what it ran)
  2  `check` only: netfilter differs from the wishes (the plan is printed)

Output:
  `plan` prints one command per line; every other line starts with `#`.
  `apply` prints `Executing command  i/N: CMD` before each command, then the
  changes to the state it read.";

/// Keeps netfilter (iptables, ip6tables, ipset) equal to a file of wishes,
/// beside the rules Docker, libvirt, Kubernetes and fail2ban write.
#[derive(Parser, Debug)]
#[command(version, after_help = EXIT_HELP)]
struct Cli {
    /// The wishes file.
    #[arg(
        long,
        global = true,
        env = "PYFW_WISHES",
        default_value = "/etc/pyfw/wishes.yaml"
    )]
    wishes: PathBuf,

    /// Same as the `apply` command (the original pyfw's spelling).
    #[arg(long)]
    apply: bool,

    /// Which iptables variant to drive: `auto` picks the one the host's
    /// other programs use (the one holding more rules).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "auto",
        env = "PYFW_BACKEND"
    )]
    backend: Variant,

    #[command(flatten)]
    dumps: Dumps,

    #[command(subcommand)]
    command: Option<Cmd>,
}

/// Saved state to plan from instead of the kernel; needs no root.
#[derive(clap::Args, Debug, Default, Clone)]
struct Dumps {
    /// Read IPv4 rules from this `iptables-save` output.
    #[arg(long, global = true, value_name = "FILE")]
    iptables_save: Option<PathBuf>,
    /// Read IPv6 rules from this `ip6tables-save` output.
    #[arg(long, global = true, value_name = "FILE")]
    ip6tables_save: Option<PathBuf>,
    /// Read sets from this `ipset save` output.
    #[arg(long, global = true, value_name = "FILE")]
    ipset_save: Option<PathBuf>,
}

impl Dumps {
    fn given(&self) -> bool {
        self.iptables_save.is_some() || self.ip6tables_save.is_some() || self.ipset_save.is_some()
    }
}

#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
enum Cmd {
    /// Print the commands that would make netfilter match the wishes (default).
    Plan,
    /// Run those commands, then print what changed.
    Apply,
    /// Exit 0 when netfilter matches the wishes, 2 when it does not.
    Check,
    /// Print the state pyfw sees.
    State,
    /// Keep netfilter matching the wishes: watch the file, poll for drift,
    /// repair it, and log every correction.
    Daemon(pyfw::daemon::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Cmd::Daemon(args)) = &cli.command {
        // The daemon sets up its own logging (the journal under systemd).
        return pyfw::daemon::main(&cli.wishes, cli.backend, args);
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PYFW_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .without_time()
        .init();
    let command = match (cli.apply, cli.command.clone()) {
        (true, Some(other)) if other != Cmd::Apply => {
            eprintln!("pyfw: error: --apply cannot be combined with the `{other:?}` command");
            return ExitCode::from(1);
        }
        (true, _) => Cmd::Apply,
        (false, command) => command.unwrap_or(Cmd::Plan),
    };
    match run(&cli, &command) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("pyfw: error: {message}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: &Cli, command: &Cmd) -> Result<ExitCode, String> {
    if *command == Cmd::Apply && cli.dumps.given() {
        return Err("`apply` changes the kernel; it cannot plan from saved dumps".into());
    }
    if cli.dumps.given() {
        return offline(cli, command);
    }
    let (backend, warnings) = System::default()
        .with_variant(cli.backend)
        .map_err(|e| e.to_string())?;
    for w in warnings {
        tracing::warn!("{w}");
    }
    let mut reconciler = Reconciler::new(backend);
    if *command == Cmd::State {
        let state = reconciler
            .backend_mut()
            .read_state(Scope::all())
            .map_err(|e| e.to_string())?;
        print!("{state}");
        return Ok(ExitCode::SUCCESS);
    }
    let wishes = wishes::load(&cli.wishes).map_err(|e| e.to_string())?;
    if *command != Cmd::Apply {
        let planned = reconciler.plan(&wishes).map_err(|e| e.to_string())?;
        let lines = plan_lines(&planned.plan, |c| {
            pyfw::apply::command_line(reconciler.backend(), c)
        });
        return Ok(report(&wishes, &lines, command, planned.comparison, false));
    }
    // One writer per network namespace: take turns with a running daemon.
    let _lock = pyfw::lock::wait_for_writer().map_err(|e| e.to_string())?;
    let mut width = 2;
    let mut on = |e: Event| match e {
        Event::Executing {
            index, total, line, ..
        } => {
            width = width.max(total.to_string().len());
            println!("Executing command {index:>width$}/{total}: {line}");
        }
        Event::Transaction {
            index,
            total,
            line,
            commands,
        } => {
            let span = match commands.len() {
                1 => format!("command {}", commands.start),
                _ => format!("commands {}-{}", commands.start, commands.end - 1),
            };
            println!("# transaction {index}/{total} ({span}): {line}");
        }
        Event::RollingBack { command } => println!("Rolling back: {command}"),
        Event::Recording { line } => tracing::debug!("recording ownership: {line}"),
        Event::RecordFailed { line, error } => {
            tracing::warn!("could not update the ownership record ({line}): {error}")
        }
        Event::Done { .. } => {}
    };
    let applied = reconciler
        .apply(&wishes, &mut on)
        .map_err(|e| e.to_string())?;
    if applied.plan.is_empty() {
        println!(
            "Nothing to do: netfilter already matches {}",
            wishes.path.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let after = reconciler
        .backend_mut()
        .read_state(applied.scope.clone())
        .map_err(|e| e.to_string())?;
    print_diff(&applied.before, &after);
    Ok(ExitCode::SUCCESS)
}

/// `plan`, `check` and `state` from saved dumps: no kernel, no root.
fn offline(cli: &Cli, command: &Cmd) -> Result<ExitCode, String> {
    let state = read_dumps(&cli.dumps)?;
    if *command == Cmd::State {
        print!("{state}");
        return Ok(ExitCode::SUCCESS);
    }
    let wishes = wishes::load(&cli.wishes).map_err(|e| e.to_string())?;
    let normalized = wishes.map_rules(|chain, r| canon::normalize(&r.rule, chain.family));
    let plan = pyfw::plan::plan(&normalized, &state);
    let lines = plan_lines(&plan, |c| c.to_string());
    Ok(report(&wishes, &lines, command, Comparison::Builtin, true))
}

/// A plan as printed: each command's reason (when it changes) as a `#`
/// line, then the command as the backend would run it.
fn plan_lines(plan: &Plan, show: impl Fn(&pyfw::plan::Command) -> String) -> Vec<String> {
    let mut out = Vec::new();
    let mut last_reason = "";
    for c in &plan.commands {
        if c.reason != last_reason {
            out.push(format!("# {}", c.reason));
            last_reason = &c.reason;
        }
        out.push(show(c));
    }
    out
}

/// Prints a plan for `plan` or `check` and picks the exit status.
fn report(
    wishes: &Wishes,
    lines: &[String],
    command: &Cmd,
    comparison: Comparison,
    offline: bool,
) -> ExitCode {
    let count = lines.iter().filter(|l| !l.starts_with('#')).count();
    if *command == Cmd::Check && count == 0 {
        println!("# in sync: netfilter matches {}", wishes.path.display());
        return ExitCode::SUCCESS;
    }
    println!(
        "# pyfw plan for {}: {count} command(s)",
        wishes.path.display()
    );
    if offline {
        println!("# planned from saved dumps; a dump not given is read as empty");
    }
    println!("# {}", comparison.describe());
    if count == 0 {
        println!("# nothing to do: netfilter matches the wishes");
    }
    for l in lines {
        println!("{l}");
    }
    if *command == Cmd::Check {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}

fn read_dumps(dumps: &Dumps) -> Result<State, String> {
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))
    };
    let mut state = State::default();
    if let Some(p) = &dumps.iptables_save {
        state.v4 =
            state::parse_iptables_save(&read(p)?).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    if let Some(p) = &dumps.ip6tables_save {
        state.v6 =
            state::parse_iptables_save(&read(p)?).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    if let Some(p) = &dumps.ipset_save {
        state.ipsets =
            state::parse_ipset_save(&read(p)?).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    Ok(state)
}

/// Prints how the rules and sets pyfw read changed, `-`/`+` per line.
fn print_diff(before: &State, after: &State) {
    let render = |s: &State| {
        format!(
            "{}{}{}",
            render_ruleset(&s.v4),
            render_ruleset(&s.v6),
            render_ipsets(&s.ipsets)
        )
    };
    let (old, new) = (render(before), render(after));
    let diff = similar::TextDiff::from_lines(&old, &new);
    println!("State changes:");
    for change in diff.iter_all_changes() {
        let sign = match change.tag() {
            similar::ChangeTag::Delete => "-",
            similar::ChangeTag::Insert => "+",
            similar::ChangeTag::Equal => continue,
        };
        print!("{sign} {change}");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
