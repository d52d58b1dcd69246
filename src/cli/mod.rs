//! The one-shot commands: `plan`, `apply`, `check`, `state`, `confirm`,
//! and the packaging helpers. `main.rs` parses the arguments and calls
//! [`main`].

use std::process::ExitCode;

use crate::cli::apply::hold_xtables;
use crate::cli::args::{Cli, Cmd, PlanArgs};
use crate::kernel::{Backend, Scope, System};
use crate::reconcile::Reconciler;
use crate::wishes;

pub use error::Error;

pub mod apply;
pub mod args;
pub mod assets;
pub mod error;
pub mod formats;
pub mod offline;
pub mod plan;
pub mod print;

/// Loads the wishes file and says what in it loads but is likely not what
/// was meant, each warning with its file, line and wish.
pub fn load_wishes(path: &std::path::Path) -> Result<wishes::Wishes, Error> {
    let wishes = wishes::load(path)?;
    for w in &wishes.warnings {
        eprintln!("pyfw: warning: {w}");
    }
    Ok(wishes)
}

/// Says what a plan found likely not meant, each with its wish's file and
/// line.
pub fn print_plan_warnings(wishes: &wishes::Wishes, warnings: &[crate::reconcile::PlanWarning]) {
    for w in warnings {
        eprintln!("pyfw: warning: {}: {}", wishes.locate(&w.label), w.message);
    }
}

/// Every wish the kernel tools refused in `e`, each `FILE:LINE:
/// table/chain/NAME: words` on a line of its own, then what that left.
/// Any other error, as it is.
pub fn refused(e: &crate::reconcile::Error, wishes: &wishes::Wishes) -> Error {
    use crate::reconcile::Error as R;
    let as_it_is = || Error::Apply {
        at: None,
        message: e.to_string(),
    };
    let (lines, left): (Vec<String>, String) = match e {
        R::Rejected { path, refused } => (
            refused.iter().map(|r| r.located(path)).collect(),
            "nothing was changed".to_string(),
        ),
        R::Apply(a) => match a.kernel_error() {
            Some(crate::kernel::Error::Rejected(list)) => (
                list.iter()
                    .map(|r| format!("{}: {}", wishes.locate(&r.label), r.message))
                    .collect(),
                a.left.to_string(),
            ),
            _ => return as_it_is(),
        },
        _ => return as_it_is(),
    };
    let summary = format!(
        "the kernel refuses {} of the wishes in {}; {left}",
        lines.len(),
        wishes.path.display()
    );
    Error::Refused { lines, summary }
}

/// Runs the command `cli` names: the exit status of a command that ran,
/// or why it failed (`main.rs` maps that to its status).
pub fn main(cli: Cli) -> Result<ExitCode, Error> {
    crate::wishes::secure::allow_insecure_wishes(cli.allow_insecure_wishes);
    if cli.confirm.is_some() && !(cli.apply || cli.command == Some(Cmd::Apply)) {
        return Err(Error::Usage("--confirm is only for `apply`".into()));
    }
    if let Some(Cmd::Confirm) = &cli.command {
        let reply = crate::reconcile::confirm::send_confirm().map_err(Error::Confirm)?;
        println!("{reply}");
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(Cmd::Daemon(args)) = &cli.command {
        // The daemon sets up its own logging (the journal under systemd).
        return Ok(crate::daemon::main(&cli.wishes, cli.backend, args));
    }
    if let Some(code) = cli.command.as_ref().and_then(assets::assets) {
        return Ok(code);
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PYFW_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .without_time()
        // Colours only for a terminal: an escape sequence in a log file or
        // a pipe is noise, or worse (see `crate::state::text`).
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let command = match (cli.apply, cli.command.clone()) {
        (true, Some(other)) if other != Cmd::Apply => {
            return Err(Error::Usage(format!(
                "--apply cannot be combined with the `{other:?}` command"
            )));
        }
        (true, _) => Cmd::Apply,
        (false, command) => command.unwrap_or(Cmd::Plan(PlanArgs::default())),
    };
    run(&cli, &command)
}

/// The size of wishes file from which the CLI reads what pyfw owns while it
/// parses the file: some 3,500 set members, a few milliseconds of parsing,
/// about what one round of reading processes costs.
const EARLY_READ_FROM: u64 = 64 << 10;

fn run(cli: &Cli, command: &Cmd) -> Result<ExitCode, Error> {
    if *command == Cmd::Apply && cli.dumps.given() {
        return Err(Error::Usage(
            "`apply` changes the kernel; it cannot plan from saved dumps".into(),
        ));
    }
    if cli.dumps.given() {
        return offline::offline(cli, command);
    }
    crate::kernel::privilege::require_net_admin()?;
    let (backend, warnings) = System::default().with_variant(cli.backend)?;
    for w in warnings {
        tracing::warn!("{w}");
    }
    let mut reconciler = Reconciler::new(backend);
    if let Cmd::State(args) = command {
        let state = reconciler.backend_mut().read_state(Scope::all())?;
        let tables = crate::reconcile::nft::owned_tables(reconciler.backend_mut(), &state)?;
        print!(
            "{}",
            crate::cli::formats::render_state_with(&state, &tables, args.format)?
        );
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
            let turn = crate::kernel::lock::wait_for_writer()?;
            Ok::<_, Error>((Some(turn), hold_xtables(backend)))
        }
        false => Ok((None, None)),
    };
    let early = std::fs::metadata(&cli.wishes).is_ok_and(|m| m.len() >= EARLY_READ_FROM);
    let turn = std::thread::Builder::new()
        .name("pyfw-turn".into())
        .spawn(move || {
            let lock = turn_of(apply, reconciler.backend_mut())?;
            let owning = match early {
                true => Some(reconciler.read_owned()?),
                false => None,
            };
            Ok::<_, Error>((reconciler, lock, owning))
        });
    // A bad file is the news, at once: the read still running is dropped
    // with this process.
    let wishes = load_wishes(&cli.wishes)?;
    let (mut reconciler, (_turn, xtables), owning) = match turn {
        Ok(thread) => thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?,
        // No thread to be had (a TasksMax limit): the same, in turn, with
        // a backend of its own (the first went with the closure).
        Err(e) => {
            tracing::debug!("no thread to read beside the parse ({e}); reading after it");
            let (mut backend, _) = System::default().with_variant(cli.backend)?;
            let lock = turn_of(apply, &mut backend)?;
            (Reconciler::new(backend), lock, None)
        }
    };
    if *command != Cmd::Apply {
        return plan::show(&mut reconciler, &wishes, owning, command);
    }
    apply::apply(cli, &mut reconciler, wishes, owning, xtables)
}
