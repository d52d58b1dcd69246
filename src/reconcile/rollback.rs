//! Putting back what a plan touched, as it was: after a failed or
//! interrupted apply, and when `apply --confirm` is not confirmed.
//!
//! The chains and sets in the snapshot are read again, the fewest edits
//! that restore them are worked out ([`revert_steps`]), and each family and
//! table gets one `iptables-restore --noflush` transaction, the sets one
//! `ipset restore`, like the forward apply. Then they are read once more:
//! only a revert that reads back as the snapshot is called complete.

use crate::kernel::Backend;
use crate::plan::Command;
use crate::plan::revert::{Snapshot, revert_steps};
use crate::state::State;

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
