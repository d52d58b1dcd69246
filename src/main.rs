//! The `pyfw` command: one-shot `plan`, `apply`, `check` and `state`.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use pyfw::apply::Event;
use pyfw::canon::{self, Comparison};
use pyfw::formats::{PlanDoc, PlanFormat, StateFormat};
use pyfw::netfilter::{Backend, Rules, Scope, SetSummary, Sets, System, Variant};
use pyfw::plan::Plan;
use pyfw::reconcile::Reconciler;
use pyfw::state::{self, State};
use pyfw::wishes::{self, Wishes};

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

    /// With `apply`: after applying, wait this long (`30s`, `2m`) for a
    /// confirmation (`yes` typed here, or `pyfw confirm` from another
    /// session); without one, put back exactly what was there before.
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_confirm)]
    confirm: Option<std::time::Duration>,

    /// Use a wishes file even when it or its directory is not owned by root
    /// or is writable by group or others (refused by default, like sshd's
    /// StrictModes).
    #[arg(
        long,
        global = true,
        env = "PYFW_ALLOW_INSECURE_WISHES",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    allow_insecure_wishes: bool,

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
    Plan(PlanArgs),
    /// Run those commands, then print what changed.
    Apply,
    /// Exit 0 when netfilter matches the wishes, 2 when it does not.
    Check,
    /// Print the state pyfw sees.
    State(StateArgs),
    /// Keep netfilter matching the wishes: watch the file, poll for drift,
    /// repair it, and log every correction.
    Daemon(pyfw::daemon::Args),
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
struct PlanArgs {
    /// Output format: `json` is documented in docs/formats.md.
    #[arg(long, value_enum, default_value_t)]
    format: PlanFormat,
}

#[derive(clap::Args, Debug, Clone, Default, PartialEq, Eq)]
struct StateArgs {
    /// Output format: `yaml` and `json` are documented in docs/formats.md.
    #[arg(long, value_enum, default_value_t)]
    format: StateFormat,
}

/// `pyfw completions SHELL` and `pyfw man DIR`: generated from this CLI,
/// so they always match it.
fn assets(command: &Cmd) -> Option<ExitCode> {
    use clap::CommandFactory;
    match command {
        Cmd::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "pyfw", &mut script);
            let mut out = std::io::stdout().lock();
            if let Err(e) = out.write_all(&script).and_then(|()| out.flush()) {
                eprintln!("pyfw: error: cannot write the completions: {e}");
                return Some(ExitCode::from(1));
            }
        }
        Cmd::Man { dir } => {
            let mut cli = Cli::command().disable_help_subcommand(true);
            cli.build();
            if let Err(e) = std::fs::create_dir_all(dir) {
                eprintln!("pyfw: error: {}: {e}", dir.display());
                return Some(ExitCode::from(1));
            }
            let pages = std::iter::once(cli.clone())
                .chain(cli.get_subcommands().filter(|c| !c.is_hide_set()).cloned());
            for page in pages {
                let man = clap_mangen::Man::new(page)
                    .section("8")
                    .source(concat!("pyfw ", env!("CARGO_PKG_VERSION")))
                    .manual("pyfw");
                if let Err(e) = man.generate_to(dir) {
                    eprintln!("pyfw: error: {}: {e}", dir.display());
                    return Some(ExitCode::from(1));
                }
            }
        }
        _ => return None,
    }
    Some(ExitCode::SUCCESS)
}

fn parse_confirm(text: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if d < std::time::Duration::from_secs(1) {
        return Err("must be at least 1s".into());
    }
    Ok(d)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    pyfw::secure::allow_insecure_wishes(cli.allow_insecure_wishes);
    if cli.confirm.is_some() && !(cli.apply || cli.command == Some(Cmd::Apply)) {
        eprintln!("pyfw: error: --confirm is only for `apply`");
        return ExitCode::from(1);
    }
    if let Some(Cmd::Confirm) = &cli.command {
        return match pyfw::confirm::send_confirm() {
            Ok(reply) => {
                println!("{reply}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("pyfw: error: {e}");
                ExitCode::from(1)
            }
        };
    }
    if let Some(Cmd::Daemon(args)) = &cli.command {
        // The daemon sets up its own logging (the journal under systemd).
        return pyfw::daemon::main(&cli.wishes, cli.backend, args);
    }
    if let Some(code) = cli.command.as_ref().and_then(assets) {
        return code;
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
        (false, command) => command.unwrap_or(Cmd::Plan(PlanArgs::default())),
    };
    match run(&cli, &command) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("pyfw: error: {message}");
            ExitCode::from(1)
        }
    }
}

/// The size of wishes file from which the CLI reads what pyfw owns while it
/// parses the file: some 3,500 set members, a few milliseconds of parsing,
/// about what one round of reading processes costs.
const EARLY_READ_FROM: u64 = 64 << 10;

fn run(cli: &Cli, command: &Cmd) -> Result<ExitCode, String> {
    if *command == Cmd::Apply && cli.dumps.given() {
        return Err("`apply` changes the kernel; it cannot plan from saved dumps".into());
    }
    if cli.dumps.given() {
        return offline(cli, command);
    }
    pyfw::secure::require_net_admin()?;
    let (backend, warnings) = System::default()
        .with_variant(cli.backend)
        .map_err(|e| e.to_string())?;
    for w in warnings {
        tracing::warn!("{w}");
    }
    let mut reconciler = Reconciler::new(backend);
    if let Cmd::State(args) = command {
        let state = reconciler
            .backend_mut()
            .read_state(Scope::all())
            .map_err(|e| e.to_string())?;
        print!("{}", pyfw::formats::render_state(&state, args.format)?);
        return Ok(ExitCode::SUCCESS);
    }
    // A big wishes file (a long allow-list) takes longer to parse than a
    // read takes, so what pyfw owns is read meanwhile: in steady state it
    // is all the plan reads (see `Reconciler::read_owned`). A small file
    // parses in less time than that read's extra round of processes
    // would cost, so the plan reads everything in one round after it.
    //
    // An apply reads in its turn as the one writer of this network
    // namespace (taking turns with a running daemon), so it takes that
    // turn first, on the same thread as the read.
    //
    // On legacy, an apply then holds the xtables lock until its commit, so
    // that what it read is what it changes and the changes it shows follow
    // from the plan: reading a chain back copies the whole table again.
    let apply = *command == Cmd::Apply;
    let turn_of = |apply: bool, backend: &mut System| match apply {
        true => {
            let turn = pyfw::lock::wait_for_writer().map_err(|e| e.to_string())?;
            Ok::<_, String>((Some(turn), hold_xtables(backend)))
        }
        false => Ok((None, None)),
    };
    let early = std::fs::metadata(&cli.wishes).is_ok_and(|m| m.len() >= EARLY_READ_FROM);
    let turn = std::thread::Builder::new()
        .name("pyfw-turn".into())
        .spawn(move || {
            let lock = turn_of(apply, reconciler.backend_mut())?;
            let owning = match early {
                true => Some(reconciler.read_owned().map_err(|e| e.to_string())?),
                false => None,
            };
            Ok::<_, String>((reconciler, lock, owning))
        });
    // A bad file is the news, at once: the read still running is dropped
    // with this process.
    let wishes = wishes::load(&cli.wishes).map_err(|e| e.to_string())?;
    let (mut reconciler, (_turn, xtables), owning) = match turn {
        Ok(thread) => thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?,
        // No thread to be had (a TasksMax limit): the same, in turn, with
        // a backend of its own (the first went with the closure).
        Err(e) => {
            tracing::debug!("no thread to read beside the parse ({e}); reading after it");
            let (mut backend, _) = System::default()
                .with_variant(cli.backend)
                .map_err(|e| e.to_string())?;
            let lock = turn_of(apply, &mut backend)?;
            (Reconciler::new(backend), lock, None)
        }
    };
    if *command != Cmd::Apply {
        let planned = reconciler
            .plan_after(&wishes, owning)
            .map_err(|e| e.to_string())?;
        if plan_json(command) {
            let backend = reconciler.backend();
            let doc = PlanDoc::new(
                &wishes.path,
                planned.comparison,
                false,
                &planned.plan,
                |c| backend.binary(c.program),
            );
            print!("{}", doc.to_json()?);
            return Ok(ExitCode::SUCCESS);
        }
        let lines = plan_lines(&planned.plan, |c| {
            pyfw::apply::command_line(reconciler.backend(), c)
        });
        return Ok(report(&wishes, &lines, command, planned.comparison, false));
    }
    // A plan creating a 100,000-member set prints 100,001 lines: one write
    // each (stdout is line-buffered) cost more than the set's restore. The
    // lines are written in blocks instead, flushed before each transaction
    // runs (so that what runs, or hangs, is on the screen) and before any
    // rollback step. Write errors (a closed pipe) must not stop an apply
    // half-way, so they are ignored here, as for the confirm prompt.
    let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout());
    let mut width = 2;
    let mut last_of_transaction = 0;
    let mut on = |e: Event| match e {
        Event::Executing {
            index, total, line, ..
        } => {
            width = width.max(total.checked_ilog10().map_or(1, |d| d as usize + 1));
            let _ = writeln!(out, "Executing command {index:>width$}/{total}: {line}");
            if index == last_of_transaction {
                let _ = out.flush();
            }
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
            last_of_transaction = commands.end - 1;
            let _ = writeln!(out, "# transaction {index}/{total} ({span}): {line}");
        }
        Event::RollingBack { command } => {
            let _ = writeln!(out, "Rolling back: {command}");
            let _ = out.flush();
        }
        Event::Recording { line } => tracing::debug!("recording ownership: {line}"),
        Event::RecordFailed { line, error } => {
            tracing::warn!("could not update the ownership record ({line}): {error}")
        }
        Event::Done { .. } => {}
    };
    let planned = reconciler
        .plan_after(&wishes, owning)
        .map_err(|e| e.to_string())?;
    let ssh = pyfw::lint::SshConnection::from_env();
    for w in pyfw::lint::lint(&wishes, &planned.state, ssh.as_ref()) {
        eprintln!("pyfw: warning: {w}");
    }
    let snapshot = pyfw::confirm::Snapshot::of(&planned.plan, planned.state);
    if !(planned.plan.is_empty() && planned.plan.record.is_empty()) {
        let applied = pyfw::apply::apply(
            reconciler.backend_mut(),
            &planned.plan,
            &planned.deferred,
            &mut on,
        );
        // Before the error, if any, goes to stderr.
        let _ = out.flush();
        applied.map_err(|e| pyfw::reconcile::Error::Apply(e).to_string())?;
    }
    if planned.plan.is_empty() {
        let _ = writeln!(
            out,
            "Nothing to do: netfilter already matches {}",
            wishes.path.display()
        );
        let _ = out.flush();
        pyfw::confirm::clear_mark();
        return Ok(ExitCode::SUCCESS);
    }
    // Everything is applied: failing to read it back is not a failure. Only
    // what the plan touched is read and compared (the snapshot's chains and
    // sets, as they were): reading and diffing whole tables again cost a
    // second on a host with a 50,000-rule foreign chain.
    //
    // Under the xtables lock (legacy), the chains are worked out instead:
    // nothing else wrote them since they were read. That needs every rule
    // the plan adds in the form iptables prints, which a form learned from
    // iptables is; a rule not learned before the apply (it names a set or
    // chain the plan creates, and no private namespace was to be had)
    // carries pyfw's own normal form, so such a plan is read back.
    let exact = planned.deferred.is_empty() && planned.comparison == Comparison::Kernel;
    let predicted = xtables.as_ref().filter(|_| exact).and_then(|_| {
        pyfw::predict::chains_after(&snapshot, &planned.plan)
            .inspect_err(|e| tracing::debug!("{e}; reading the chains back"))
            .ok()
    });
    let big = big_set_changes(&planned.plan);
    let mut scope = snapshot.scope();
    if let Sets::Named(names) = &mut scope.sets {
        names.retain(|n| !big.contains_key(n));
        if names.is_empty() {
            scope.sets = Sets::Skip;
        }
    }
    if predicted.is_some() {
        scope.v4 = Rules::Skip;
        scope.v6 = Rules::Skip;
    }
    let after = reconciler
        .backend_mut()
        .read_state(scope)
        .and_then(|mut after| {
            if let Some(chains) = predicted {
                (after.v4, after.v6) = (chains.v4, chains.v6);
            }
            let mut terse = std::collections::BTreeMap::new();
            for name in big.keys() {
                terse.insert(name.clone(), reconciler.backend().ipset_terse(name)?);
            }
            Ok((after, terse))
        });
    // Others may write again; pyfw's own runs (a revert) wait their turn.
    drop(xtables);
    reconciler.backend_mut().use_lockfile(None);
    match after {
        Ok((after, terse)) => print_changes(&mut out, &snapshot, &after, &big, &terse),
        Err(e) => {
            let _ = out.flush();
            eprintln!(
                "pyfw: warning: applied, but cannot read netfilter back to show the changes: {e}"
            )
        }
    }
    let _ = out.flush();
    drop(out);
    let code = match cli.confirm {
        None => {
            pyfw::confirm::clear_mark();
            ExitCode::SUCCESS
        }
        Some(timeout) => confirm_or_revert(reconciler.backend_mut(), &snapshot, &wishes, timeout),
    };
    // The process ends next: freeing a 100,000-member set's wishes, state,
    // plan and snapshot one allocation at a time only delays the exit (by
    // 50 ms or more); the kernel takes the memory back at once.
    std::mem::forget((planned.plan, snapshot, wishes));
    Ok(code)
}

/// Takes the xtables lock for an apply on legacy (see `run`) and points
/// the backend's own iptables runs elsewhere meanwhile; `None` on nft, or
/// when the lock stays held by another program (the apply then goes on as
/// iptables-restore would, waiting its turn, and reads its result back).
fn hold_xtables(backend: &mut System) -> Option<pyfw::xtlock::Held> {
    if backend.is_nft() {
        return None;
    }
    match pyfw::xtlock::hold(XTABLES_WAIT) {
        Ok(held) => {
            backend.use_lockfile(Some(held.own_runs_path()));
            Some(held)
        }
        Err(e) => {
            tracing::debug!("not holding the xtables lock ({e}); the changes will be read back");
            None
        }
    }
}

/// How long an apply on legacy waits to hold the xtables lock itself.
const XTABLES_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// `apply --confirm`: waits for the answer (the writer lock still held),
/// and puts the snapshot back without one. Writes never panic here: the
/// terminal may be gone, and the revert must still happen.
fn confirm_or_revert(
    backend: &mut dyn Backend,
    snapshot: &pyfw::confirm::Snapshot,
    wishes: &Wishes,
    timeout: std::time::Duration,
) -> ExitCode {
    let mut say = |line: String| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    };
    let terminal = pyfw::confirm::stdin_readable();
    say(format!(
        "Applied. Keep this change? Confirm within {}: {}run `pyfw confirm` from another \
         session. Otherwise the previous state comes back.",
        humantime::format_duration(timeout),
        if terminal {
            "type `yes` and Enter here, or "
        } else {
            ""
        }
    ));
    let answer = pyfw::confirm::wait(timeout, terminal, &mut say);
    let why = match answer {
        Ok(pyfw::confirm::Answer::Confirmed(how)) => {
            say(format!("Confirmed {how}; keeping the change."));
            pyfw::confirm::clear_mark();
            return ExitCode::SUCCESS;
        }
        Ok(pyfw::confirm::Answer::Refused(why)) => why,
        Err(e) => format!("cannot wait for a confirmation ({e})"),
    };
    say(format!(
        "Not confirmed: {why}. Reverting to the previous state."
    ));
    let done = pyfw::confirm::revert(backend, snapshot, &mut say);
    if let Ok(text) = pyfw::secure::read_wishes(&wishes.path) {
        match pyfw::confirm::mark_reverted(&text, &wishes.path, &why) {
            Ok(mark) => say(format!(
                "Marked {} as reverted ({}): a pyfw daemon will not apply this content again \
                 until the file changes or `pyfw apply` runs.",
                wishes.path.display(),
                mark.display()
            )),
            Err(e) => say(format!(
                "warning: cannot mark the revert for the daemon: {e}"
            )),
        }
    }
    if done.failures.is_empty() {
        say(format!(
            "Reverted: every chain, policy and ipset the apply touched is as it was ({} \
             transaction(s)).",
            done.transactions
        ));
        ExitCode::from(3)
    } else {
        let _ = writeln!(
            std::io::stderr(),
            "pyfw: error: the revert failed in part: {}",
            done.failures.join("; ")
        );
        ExitCode::from(1)
    }
}

/// `plan`, `check` and `state` from saved dumps: no kernel, no root.
fn offline(cli: &Cli, command: &Cmd) -> Result<ExitCode, String> {
    let state = read_dumps(&cli.dumps)?;
    if let Cmd::State(args) = command {
        print!("{}", pyfw::formats::render_state(&state, args.format)?);
        return Ok(ExitCode::SUCCESS);
    }
    let wishes = wishes::load(&cli.wishes).map_err(|e| e.to_string())?;
    let normalized = wishes.map_rules(|chain, r| canon::normalize(&r.rule, chain.family));
    let plan = pyfw::plan::plan(&normalized, &state);
    if plan_json(command) {
        let doc = PlanDoc::new(&wishes.path, Comparison::Builtin, true, &plan, |c| {
            c.program.name().to_string()
        });
        print!("{}", doc.to_json()?);
        return Ok(ExitCode::SUCCESS);
    }
    let lines = plan_lines(&plan, |c| c.to_string());
    Ok(report(&wishes, &lines, command, Comparison::Builtin, true))
}

/// True for `plan --format json`, which prints the plan document.
fn plan_json(command: &Cmd) -> bool {
    matches!(
        command,
        Cmd::Plan(PlanArgs {
            format: PlanFormat::Json
        })
    )
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

/// Prints how the chains and sets the plan touched changed, `-`/`+` per
/// line in `iptables-save` and `ipset save` form: `before` holds them as
/// they were, `after` as read back. Chains are compared line by line (order
/// matters); a set's members by value, since a set has no order: a
/// 100,000-member set with 1,000 changes costs two hash lookups per member,
/// where a line diff of its whole listing took a fifth of a second. Every
/// changed line is printed, however many.
///
/// A set whose members the plan changed more than [`LIST_MAX`] times is
/// summarised instead: its `create` line if that changed, then its member
/// count before (the snapshot) and after (read from the kernel with `ipset
/// list -terse`), with how many members the plan added and removed.
/// Listing 100,000 new members one by one again, after their 100,000
/// `Executing` lines, told the operator nothing more and cost a read and
/// parse of the whole set.
fn print_changes(
    out: &mut impl std::io::Write,
    before: &pyfw::confirm::Snapshot,
    after: &State,
    big: &BTreeMap<String, (usize, usize)>,
    terse: &BTreeMap<String, Option<SetSummary>>,
) {
    let _ = writeln!(out, "State changes:");
    for ((family, table, chain), old) in &before.chains {
        let new = after.ruleset(*family).chain(table, chain);
        let render = |c: Option<&state::Chain>| {
            let mut text = String::new();
            if let Some(c) = c {
                let policy = c.policy.as_deref().unwrap_or("-");
                text.push_str(&format!(":{chain} {policy}\n"));
                let name = pyfw::rule::display_args(std::slice::from_ref(chain));
                for rule in &c.rules {
                    text.push_str(&format!("-A {name} {rule}\n"));
                }
            }
            text
        };
        let (old, new) = (render(old.as_ref()), render(new.as_deref()));
        if old == new {
            continue;
        }
        let diff = similar::TextDiff::from_lines(&old, &new);
        for change in diff.iter_all_changes() {
            let sign = match change.tag() {
                similar::ChangeTag::Delete => "-",
                similar::ChangeTag::Insert => "+",
                similar::ChangeTag::Equal => continue,
            };
            let _ = write!(out, "{sign} {change}");
        }
    }
    for (name, old) in &before.sets {
        match (big.get(name), terse.get(name)) {
            (Some(&(added, removed)), Some(now)) => {
                print_set_summary(out, name, old.as_ref(), now.as_ref(), added, removed)
            }
            _ => print_set_changes(out, name, old.as_ref(), after.ipsets.get(name)),
        }
    }
}

/// More member changes than this in one set are summarised in "State
/// changes" rather than listed.
const LIST_MAX: usize = 1000;

/// The sets whose members `plan` changes more than [`LIST_MAX`] times,
/// with how many members it adds and removes.
fn big_set_changes(plan: &Plan) -> BTreeMap<String, (usize, usize)> {
    let mut counts: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for c in &plan.commands {
        if c.program != pyfw::plan::Program::Ipset {
            continue;
        }
        // Counted for the wished set, also when the commands fill its
        // replacement (`_pyfw_temp_NAME`) before a swap.
        let (Some(op), Some(name)) = (c.args.first(), c.wish.as_ref().or(c.args.get(1))) else {
            continue;
        };
        let (added, removed) = match op.as_str() {
            "add" => (1, 0),
            "del" => (0, 1),
            _ => continue,
        };
        // The name is copied once per set, not per member.
        let count = match counts.get_mut(name.as_str()) {
            Some(count) => count,
            None => counts.entry(name.clone()).or_default(),
        };
        count.0 += added;
        count.1 += removed;
    }
    counts.retain(|_, (a, r)| *a + *r > LIST_MAX);
    counts
}

/// One set's changes, summarised: see [`print_changes`].
fn print_set_summary(
    out: &mut impl std::io::Write,
    name: &str,
    old: Option<&state::Ipset>,
    now: Option<&SetSummary>,
    added: usize,
    removed: usize,
) {
    let create = |kind: &str, options: &[String]| {
        let mut line = format!("create {name} {kind}");
        for o in options {
            line.push(' ');
            line.push_str(o);
        }
        line
    };
    let old_create = old.map(|s| create(&s.kind, &s.options));
    let new_create = now.map(|s| create(&s.kind, &s.options));
    if old_create != new_create {
        if let Some(line) = &old_create {
            let _ = writeln!(out, "- {line}");
        }
        if let Some(line) = &new_create {
            let _ = writeln!(out, "+ {line}");
        }
    }
    let count = |n: Option<usize>| match n {
        Some(n) => format!("{n} members"),
        None => "no set".to_string(),
    };
    let _ = writeln!(
        out,
        "# ipset {name}: {} before, {} now; pyfw added {added} and removed {removed} \
         (over {LIST_MAX} changes: not listed; `ipset save {name}` lists them)",
        count(old.map(|s| s.members.len())),
        count(now.map(|s| s.members)),
    );
}

/// One set's changes: its `create` line if it differs, then the members
/// that went (in the order they were listed), then those that came.
fn print_set_changes(
    out: &mut impl std::io::Write,
    name: &str,
    old: Option<&state::Ipset>,
    new: Option<&state::Ipset>,
) {
    let create = |set: &state::Ipset| {
        let mut line = format!("create {name} {}", set.kind);
        for o in &set.options {
            line.push(' ');
            line.push_str(o);
        }
        line
    };
    let (old_create, new_create) = (old.map(create), new.map(create));
    if old_create != new_create {
        if let Some(line) = &old_create {
            let _ = writeln!(out, "- {line}");
        }
        if let Some(line) = &new_create {
            let _ = writeln!(out, "+ {line}");
        }
    }
    fn members(set: Option<&state::Ipset>) -> fnv::FnvHashMap<&str, Option<&str>> {
        set.map(|s| {
            s.members
                .iter()
                .map(|m| (m.as_str(), s.comments.get(m).map(String::as_str)))
                .collect()
        })
        .unwrap_or_default()
    }
    let (was, is) = (members(old), members(new));
    let mut line = |sign: &str, member: &str, comment: Option<&str>| {
        let _ = write!(out, "{sign} add {name} {member}");
        if let Some(c) = comment {
            let _ = write!(
                out,
                " comment {}",
                pyfw::rule::display_args(&[c.to_string()])
            );
        }
        let _ = writeln!(out);
    };
    for m in old.map(|s| s.members.as_slice()).unwrap_or_default() {
        let comment = was.get(m.as_str()).copied().flatten();
        if is.get(m.as_str()) != Some(&comment) {
            line("-", m, comment);
        }
    }
    for m in new.map(|s| s.members.as_slice()).unwrap_or_default() {
        let comment = is.get(m.as_str()).copied().flatten();
        if was.get(m.as_str()) != Some(&comment) {
            line("+", m, comment);
        }
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
