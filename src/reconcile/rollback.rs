//! Putting back what a plan touched, as it was: after a failed or
//! interrupted apply, and when `apply --confirm` is not confirmed.
//!
//! The chains and sets in the snapshot are read again, the fewest edits
//! that restore them are worked out ([`revert_steps`]), and each family and
//! table gets one `iptables-restore --noflush` transaction, the sets one
//! `ipset restore`, like the forward apply; owned nftables tables that
//! changed are put back whole, in one `nft -f`. Then they are read once
//! more: only a revert that reads back as the snapshot is called complete.

use crate::kernel::Backend;
use crate::kernel::backend::Listing;
use crate::plan::Command;
use crate::plan::revert::{Snapshot, revert_steps};
use crate::state::State;
use crate::wishes::nft::{NftFamily, table_label};

/// How a revert went.
#[derive(Debug, Default)]
pub struct Reverted {
    /// Transactions run.
    pub transactions: usize,
    /// Transactions that failed, and reads that could not be made.
    pub failures: Vec<String>,
    /// The read after the revert found every touched chain and set as in
    /// the snapshot.
    pub verified: bool,
}

impl Reverted {
    /// True when netfilter is known to be as it was.
    pub fn complete(&self) -> bool {
        self.failures.is_empty() && self.verified
    }
}

/// Reads of the state to revert, tried this many times: a failed apply
/// often failed because a tool misbehaved, and one more read may work.
const READS: usize = 3;

/// Reads what the snapshot names and puts it back. Never stops at the
/// first failure: what can be put back is.
pub fn revert(backend: &mut dyn Backend, snap: &Snapshot, say: &mut dyn FnMut(String)) -> Reverted {
    let mut result = Reverted::default();
    let tables_back = revert_tables(backend, snap, say, &mut result);
    let mut rest = revert_rules(backend, snap, say);
    rest.transactions += result.transactions;
    rest.failures.extend(result.failures);
    rest.verified &= tables_back;
    rest
}

/// Puts back the snapshot's chains and sets.
fn revert_rules(
    backend: &mut dyn Backend,
    snap: &Snapshot,
    say: &mut dyn FnMut(String),
) -> Reverted {
    let mut result = Reverted::default();
    if snap.chains.is_empty() && snap.sets.is_empty() {
        result.verified = true;
        return result;
    }
    let now = read(backend, snap, &mut result);
    if now.is_none() {
        say("cannot read the state to revert; reverting blind".into());
    }
    let steps = revert_steps(snap, now.as_ref());
    if steps.is_empty() {
        // Read, and found as it was: nothing to put back.
        result.verified = true;
        return result;
    }
    for step in steps {
        let refs: Vec<&Command> = step.iter().collect();
        for c in &step {
            say(format!("Reverting: {}", c.line(&backend.binary(c.program))));
        }
        match backend.run_batch(&refs) {
            Ok(()) => result.transactions += 1,
            Err(e) => {
                let msg = format!("{} ({})", e.cause, backend.batch_line(&refs));
                say(format!("revert step failed: {msg}"));
                result.failures.push(msg);
            }
        }
    }
    result.verified = read(backend, snap, &mut result)
        .is_some_and(|after| revert_steps(snap, Some(&after)).is_empty());
    result
}

/// Puts back the snapshot's owned nftables tables, each as `nft -s list
/// table` printed it before (or deleted, if it was absent), all in one
/// `nft -f` transaction; only those that read otherwise now. True when
/// every table then reads as it did (or there was none).
fn revert_tables(
    backend: &mut dyn Backend,
    snap: &Snapshot,
    say: &mut dyn FnMut(String),
    result: &mut Reverted,
) -> bool {
    if snap.nft.is_empty() {
        return true;
    }
    let Some(now) = read_tables(backend, snap, result) else {
        return false;
    };
    let commands: Vec<Command> = (snap.nft.iter().zip(&now))
        .filter(|((_, before), now)| before != now)
        .map(|(((family, name), before), _)| put_back(*family, name, before.as_deref()))
        .collect();
    if commands.is_empty() {
        return true;
    }
    let refs: Vec<&Command> = commands.iter().collect();
    for c in &commands {
        say(format!("Reverting: {}", c.line(&backend.binary(c.program))));
    }
    match backend.run_batch(&refs) {
        Ok(()) => result.transactions += 1,
        Err(e) => {
            let msg = format!("{} ({})", e.cause, backend.batch_line(&refs));
            say(format!("revert step failed: {msg}"));
            result.failures.push(msg);
        }
    }
    read_tables(backend, snap, result).is_some_and(|after| {
        snap.nft
            .values()
            .zip(&after)
            .all(|(before, after)| before == after)
    })
}

/// The command that makes table `family name` read `before` again.
fn put_back(family: NftFamily, name: &str, before: Option<&str>) -> Command {
    let label = table_label(family, name);
    let script = match before {
        Some(text) => format!("{}{text}", crate::plan::nft::delete_script(family, name)),
        None => crate::plan::nft::delete_script(family, name),
    };
    crate::plan::nft::command(script, format!("revert {label}"), label)
}

/// The snapshot's tables as `nft -s list table` prints them now, in its
/// order, or `None` (the failure noted) when one cannot be read.
fn read_tables(
    backend: &mut dyn Backend,
    snap: &Snapshot,
    result: &mut Reverted,
) -> Option<Vec<Option<String>>> {
    let mut out = Vec::with_capacity(snap.nft.len());
    for (family, name) in snap.nft.keys() {
        match backend.nft_list(*family, name, Listing::Text) {
            Ok(text) => out.push(text),
            Err(e) => {
                result
                    .failures
                    .push(format!("cannot read {}: {e}", table_label(*family, name)));
                return None;
            }
        }
    }
    Some(out)
}

/// The snapshot's chains and sets as they are now, or `None` (the
/// failures noted) when no read works.
fn read(backend: &mut dyn Backend, snap: &Snapshot, result: &mut Reverted) -> Option<State> {
    let mut last = None;
    for _ in 0..READS {
        match backend.read_state(snap.scope()) {
            Ok(state) => return Some(state),
            Err(e) => last = Some(e),
        }
    }
    if let Some(e) = last {
        result
            .failures
            .push(format!("cannot read the touched chains and sets: {e}"));
    }
    None
}
