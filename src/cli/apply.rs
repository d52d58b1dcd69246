//! `apply`: run the plan all or nothing, print what ran and what changed,
//! and with `--confirm`, wait for the answer or put everything back.

use std::io::Write as _;
use std::process::ExitCode;

use crate::cli::Error;
use crate::cli::args::Cli;
use crate::cli::print::{big_set_changes, print_changes};
use crate::kernel::xtlock::Held;
use crate::kernel::{Backend, Rules, Sets, System};
use crate::plan::lint;
use crate::reconcile::apply::{Cause, Event, Interrupt, signal_name};
use crate::reconcile::{Applied, Owning, Reconciler};
use crate::state::State;
use crate::state::canon::Comparison;
use crate::wishes::Wishes;

/// Plans, lints, applies and reports; `xtables` is the xtables lock when
/// this apply holds it (legacy).
///
/// SIGINT, SIGTERM and SIGHUP are held from just before the first write
/// until the apply has committed or rolled back; then pyfw says which and
/// exits with 128 + the signal's number.
pub fn apply(
    cli: &Cli,
    reconciler: &mut Reconciler<System>,
    wishes: Wishes,
    owning: Option<Owning>,
    xtables: Option<Held>,
) -> Result<ExitCode, Error> {
    let mut out = Printer::new();
    if cli.confirm.is_some() {
        // Unconfirmed, even a table whose replacement committed goes back.
        reconciler.keep_every_nft_snapshot();
    }
    let mut planned = match reconciler.plan_after(&wishes, owning) {
        Ok(planned) => planned,
        Err(e) => return failed(e, &wishes),
    };
    crate::cli::print_plan_warnings(&wishes, &planned.warnings);
    warn_lockouts(reconciler, &wishes, &mut planned.state);
    let signals = HeldSignals::hold(reconciler.interrupt()).map_err(Error::Signals)?;
    let applied = reconciler.apply(planned, &mut |e| out.event(e));
    out.flush();
    let interrupted = signals.release();
    let applied = match applied {
        Ok(applied) => applied,
        Err(e) => return failed(e, &wishes),
    };
    if applied.plan.is_empty() && interrupted.is_none() {
        out.line(&format!(
            "Nothing to do: netfilter already matches {}",
            wishes.path.display()
        ));
        crate::reconcile::confirm::clear_mark();
        return Ok(ExitCode::SUCCESS);
    }
    if let (Some(signo), None) = (interrupted, cli.confirm) {
        return Err(Error::Interrupted {
            signo,
            message: format!(
                "interrupted by {} after the apply committed: netfilter matches {}",
                signal_name(signo),
                wishes.path.display()
            ),
        });
    }
    show_changes(reconciler, &applied, xtables, &mut out);
    let code = match cli.confirm {
        None => {
            crate::reconcile::confirm::clear_mark();
            ExitCode::SUCCESS
        }
        Some(timeout) => {
            let refused = interrupted.map(|s| format!("interrupted by {}", signal_name(s)));
            confirm_or_revert(
                reconciler.backend_mut(),
                &applied.snapshot,
                &wishes,
                timeout,
                refused,
            )
        }
    };
    // The process ends next: freeing a 100,000-member set's wishes, state,
    // plan and snapshot one allocation at a time only delays the exit (by
    // 50 ms or more); the kernel takes the memory back at once.
    std::mem::forget((applied, wishes));
    Ok(code)
}

/// Prints the lock-out lint's warnings (see [`crate::plan::lint`]) for
/// applying `wishes` over `state`, what the plan read. First reads into
/// `state`, read-only, the chains the lint follows that the plan did not
/// need, and, only when the wishes make a FORWARD chain drop, the nftables
/// tables (Docker's nftables backend). A failed read is a warning too: the
/// lint then gives the chains it lacks the benefit of the doubt.
pub fn warn_lockouts(reconciler: &mut Reconciler<System>, wishes: &Wishes, state: &mut State) {
    let nft_tables = match lint::needs_nft_tables(wishes) {
        true => crate::kernel::nft::tables(&reconciler.backend().runner),
        false => Vec::new(),
    };
    let ssh = lint::SshConnection::from_env();
    if let Err(e) = reconciler.read_for_lint(wishes, state, ssh.as_ref(), &nft_tables) {
        eprintln!(
            "pyfw: warning: cannot read the chains the lock-out check follows ({e}); it gives \
             them the benefit of the doubt"
        );
    }
    let host = lint::Host {
        state,
        ssh: ssh.as_ref(),
        nft_tables: &nft_tables,
    };
    for w in lint::lint(wishes, &host) {
        eprintln!("pyfw: warning: {w}");
    }
}

/// A failed apply as the CLI reports it: interrupted (exit 128 + the
/// signal's number), refused at a wish (with its file and line), or failed
/// otherwise, each saying what netfilter holds.
fn failed(e: crate::reconcile::Error, wishes: &Wishes) -> Result<ExitCode, Error> {
    use crate::reconcile::Error as R;
    let a = match &e {
        // Before the first write: nothing can have changed.
        R::Read(_) | R::Learn { .. } => return Err(Error::Unchanged(e)),
        R::Rejected { .. } => return Err(crate::cli::refused(&e, wishes)),
        R::Apply(a) => a,
    };
    if let Cause::Interrupted(signo) = a.cause {
        return Err(Error::Interrupted {
            signo,
            message: e.to_string(),
        });
    }
    // Wishes checked only at apply (they name what the plan created).
    if matches!(a.kernel_error(), Some(crate::kernel::Error::Rejected(_))) {
        return Err(crate::cli::refused(&e, wishes));
    }
    // A command the kernel refused is the wish's: its file and line.
    let Some(refused) = a.refused() else {
        return Err(e.into());
    };
    let label = refused.label();
    let message = e.to_string();
    let message = message
        .strip_prefix(&format!("{label}: "))
        .unwrap_or(&message);
    Err(Error::Apply {
        at: Some(wishes.locate(&label)),
        message: message.to_string(),
    })
}

/// SIGINT, SIGTERM and SIGHUP, caught into an [`Interrupt`] instead of
/// ending the process, for as long as this is held.
struct HeldSignals {
    ids: Vec<signal_hook::SigId>,
    interrupt: Interrupt,
}

impl HeldSignals {
    fn hold(interrupt: Interrupt) -> std::io::Result<HeldSignals> {
        let mut held = HeldSignals {
            ids: Vec::new(),
            interrupt,
        };
        for signo in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            let value = usize::try_from(signo).unwrap_or(1);
            let id = signal_hook::flag::register_usize(signo, held.interrupt.cell(), value)?;
            held.ids.push(id);
        }
        Ok(held)
    }

    /// Lets the signals go back to their default; the one that came, if any.
    fn release(self) -> Option<i32> {
        self.interrupt.signal()
    }
}

impl Drop for HeldSignals {
    fn drop(&mut self) {
        for id in self.ids.drain(..) {
            signal_hook::low_level::unregister(id);
        }
    }
}

/// Prints "State changes": the chains and sets the plan touched, as they
/// are now beside the snapshot. Everything is applied: failing to read it
/// back is not a failure. Only what the plan touched is read and compared:
/// reading and diffing whole tables again cost a second on a host with a
/// 50,000-rule foreign chain.
///
/// Under the xtables lock (legacy), the chains are worked out instead:
/// nothing else wrote them since they were read. That needs every rule the
/// plan adds in the form iptables prints, which a form learned from
/// iptables is; a rule not learned before the apply (it names a set or
/// chain the plan creates, and no private namespace was to be had) carries
/// pyfw's own normal form, so such a plan is read back.
fn show_changes(
    reconciler: &mut Reconciler<System>,
    applied: &Applied,
    xtables: Option<Held>,
    out: &mut Printer,
) {
    let exact = applied.deferred.is_empty() && applied.comparison == Comparison::Kernel;
    let predicted = xtables.as_ref().filter(|_| exact).and_then(|_| {
        crate::plan::predict::chains_after(&applied.snapshot, &applied.plan)
            .inspect_err(|e| tracing::debug!("{e}; reading the chains back"))
            .ok()
    });
    let big = big_set_changes(&applied.plan);
    let mut scope = applied.snapshot.scope();
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
    print_tables(&mut out.out, &applied.plan);
    match after {
        Ok((after, terse)) => print_changes(&mut out.out, &applied.snapshot, &after, &big, &terse),
        Err(e) => {
            out.flush();
            eprintln!(
                "pyfw: warning: applied, but cannot read netfilter back to show the changes: {e}"
            )
        }
    }
    out.flush();
}

/// The owned nftables tables the plan replaced (whole: listing them would
/// cost what loading them did) or deleted, each with why.
fn print_tables(out: &mut impl std::io::Write, plan: &crate::plan::Plan) {
    for c in &plan.commands {
        let Some(script) = crate::plan::nft::script_of(c) else {
            continue;
        };
        let why = c
            .reason
            .strip_prefix(&format!("{}: ", c.target))
            .unwrap_or(&c.reason);
        for (family, name) in crate::plan::nft::tables_of(script) {
            let done = match script.lines().count() <= 2 {
                true => "deleted",
                false => "replaced whole",
            };
            let _ = writeln!(out, "~ nft table {family} {name} {done}: {why}");
        }
    }
}

/// The apply's progress on stdout.
///
/// A plan creating a 100,000-member set prints 100,001 lines: one write
/// each (stdout is line-buffered) cost more than the set's restore. The
/// lines are written in blocks instead, flushed when a transaction starts
/// (so that what runs, or hangs, is on the screen) and before any rollback
/// step. Write errors (a closed pipe) must not stop an apply half-way, so
/// they are ignored here, as for the confirm prompt.
struct Printer {
    out: std::io::BufWriter<std::io::Stdout>,
    width: usize,
}

impl Printer {
    fn new() -> Printer {
        Printer {
            out: std::io::BufWriter::with_capacity(1 << 16, std::io::stdout()),
            width: 2,
        }
    }

    fn line(&mut self, text: &str) {
        let _ = writeln!(self.out, "{text}");
        self.flush();
    }

    fn flush(&mut self) {
        let _ = self.out.flush();
    }

    fn event(&mut self, e: Event) {
        match e {
            Event::Executing {
                index,
                total,
                count,
                line,
                ..
            } => {
                let digits = total.checked_ilog10().map_or(1, |d| d as usize + 1);
                self.width = self.width.max(digits);
                let width = self.width;
                // A run of more than a thousand member commands is one line
                // (`pyfw plan` lists them one by one).
                let _ = match count {
                    0 | 1 => writeln!(
                        self.out,
                        "Executing command {index:>width$}/{total}: {line}"
                    ),
                    n => writeln!(
                        self.out,
                        "Executing commands {index}-{}/{total}: {line}",
                        index + n - 1
                    ),
                };
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
                self.line(&format!("# transaction {index}/{total} ({span}): {line}"));
            }
            Event::RollingBack { command } => self.line(&format!("Rolling back: {command}")),
            Event::Recording { line } => tracing::debug!("recording ownership: {line}"),
            Event::Done { .. } => {}
        }
    }
}

/// Takes the xtables lock for an apply on legacy (see `run`) and points
/// the backend's own iptables runs elsewhere meanwhile; `None` on nft, or
/// when the lock stays held by another program (the apply then goes on as
/// iptables-restore would, waiting its turn, and reads its result back).
pub fn hold_xtables(backend: &mut System) -> Option<crate::kernel::xtlock::Held> {
    if backend.is_nft() {
        return None;
    }
    match crate::kernel::xtlock::hold(XTABLES_WAIT) {
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
    snapshot: &crate::plan::revert::Snapshot,
    wishes: &Wishes,
    timeout: std::time::Duration,
    refused: Option<String>,
) -> ExitCode {
    let mut say = |line: String| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    };
    let terminal = crate::reconcile::confirm::stdin_readable();
    let answer = match refused {
        Some(why) => Ok(crate::reconcile::confirm::Answer::Refused(why)),
        None => ask(timeout, terminal, &mut say),
    };
    let why = match answer {
        Ok(crate::reconcile::confirm::Answer::Confirmed(how)) => {
            say(format!("Confirmed {how}; keeping the change."));
            crate::reconcile::confirm::clear_mark();
            return ExitCode::SUCCESS;
        }
        Ok(crate::reconcile::confirm::Answer::Refused(why)) => why,
        Err(e) => format!("cannot wait for a confirmation ({e})"),
    };
    revert_unconfirmed(backend, snapshot, wishes, &why, &mut say)
}

/// Asks for the confirmation and waits up to `timeout` for it.
fn ask(
    timeout: std::time::Duration,
    terminal: bool,
    say: &mut dyn FnMut(String),
) -> std::io::Result<crate::reconcile::confirm::Answer> {
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
    crate::reconcile::confirm::wait(timeout, terminal, say)
}

/// Puts the snapshot back after `why`, marks the content as reverted for a
/// daemon, and says how it went: exit 3 when every touched chain, policy
/// and set reads back as it was, 1 otherwise.
fn revert_unconfirmed(
    backend: &mut dyn Backend,
    snapshot: &crate::plan::revert::Snapshot,
    wishes: &Wishes,
    why: &str,
    say: &mut dyn FnMut(String),
) -> ExitCode {
    say(format!(
        "Not confirmed: {why}. Reverting to the previous state."
    ));
    let done = crate::reconcile::rollback::revert(backend, snapshot, say);
    if let Ok(text) = crate::wishes::secure::read_wishes(&wishes.path) {
        match crate::reconcile::confirm::mark_reverted(&text, &wishes.path, why) {
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
    if done.complete() {
        say(format!(
            "Reverted: every chain, policy and ipset the apply touched is as it was ({} \
             transaction(s); read back).",
            done.transactions
        ));
        return ExitCode::from(3);
    }
    let why = match done.failures.is_empty() {
        true => "the state read back after it differs from before".to_string(),
        false => done.failures.join("; "),
    };
    let _ = writeln!(
        std::io::stderr(),
        "pyfw: error: the revert failed in part, so netfilter may hold part of the change: {why}"
    );
    ExitCode::from(1)
}
