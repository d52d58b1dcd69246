//! `apply`: run the plan all or nothing, print what ran and what changed,
//! and with `--confirm`, wait for the answer or put everything back.

use std::io::Write as _;
use std::process::ExitCode;

use crate::cli::args::Cli;
use crate::cli::print::{big_set_changes, print_changes};
use crate::kernel::xtlock::Held;
use crate::kernel::{Backend, Rules, Sets, System};
use crate::reconcile::apply::Event;
use crate::reconcile::{Owning, Reconciler};
use crate::state::canon::Comparison;
use crate::wishes::Wishes;

/// Plans, lints, applies and reports; `xtables` is the xtables lock when
/// this apply holds it (legacy).
pub fn apply(
    cli: &Cli,
    reconciler: &mut Reconciler<System>,
    wishes: Wishes,
    owning: Option<Owning>,
    xtables: Option<Held>,
) -> Result<ExitCode, String> {
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
    let ssh = crate::plan::lint::SshConnection::from_env();
    for w in crate::plan::lint::lint(&wishes, &planned.state, ssh.as_ref()) {
        eprintln!("pyfw: warning: {w}");
    }
    let snapshot = crate::plan::revert::Snapshot::of(&planned.plan, planned.state);
    if !(planned.plan.is_empty() && planned.plan.record.is_empty()) {
        let applied = crate::reconcile::apply::apply(
            reconciler.backend_mut(),
            &planned.plan,
            &planned.deferred,
            &mut on,
        );
        // Before the error, if any, goes to stderr.
        let _ = out.flush();
        applied.map_err(|e| crate::reconcile::Error::Apply(e).to_string())?;
    }
    if planned.plan.is_empty() {
        let _ = writeln!(
            out,
            "Nothing to do: netfilter already matches {}",
            wishes.path.display()
        );
        let _ = out.flush();
        crate::reconcile::confirm::clear_mark();
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
        crate::plan::predict::chains_after(&snapshot, &planned.plan)
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
            crate::reconcile::confirm::clear_mark();
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
) -> ExitCode {
    let mut say = |line: String| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    };
    let terminal = crate::reconcile::confirm::stdin_readable();
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
    let answer = crate::reconcile::confirm::wait(timeout, terminal, &mut say);
    let why = match answer {
        Ok(crate::reconcile::confirm::Answer::Confirmed(how)) => {
            say(format!("Confirmed {how}; keeping the change."));
            crate::reconcile::confirm::clear_mark();
            return ExitCode::SUCCESS;
        }
        Ok(crate::reconcile::confirm::Answer::Refused(why)) => why,
        Err(e) => format!("cannot wait for a confirmation ({e})"),
    };
    say(format!(
        "Not confirmed: {why}. Reverting to the previous state."
    ));
    let done = crate::reconcile::confirm::revert(backend, snapshot, &mut say);
    if let Ok(text) = crate::wishes::secure::read_wishes(&wishes.path) {
        match crate::reconcile::confirm::mark_reverted(&text, &wishes.path, &why) {
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
