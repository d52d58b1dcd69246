//! pyfw's record, kept between a polling daemon's runs: read once, then
//! used as read until pyfw writes it, a SIGHUP, or the sets' resync period
//! (see [`super::set_checks`]) says to read it again.
//!
//! Only pyfw writes its record, so between its own applies what it last
//! read is what the kernel holds, and an idle poll need not run `ipset save
//! pyfw-owned` (a third of its processes with one wished set). Whoever
//! else changes the record (a hand edit, `ipset destroy` of every set) is
//! seen at the next full read, within the resync period; until then pyfw
//! goes by what it knew, which is what it owns. A write made to a record
//! that is no longer there fails, and the apply that made it is rolled
//! back and retried after a fresh read.

use std::time::{Duration, Instant};

use crate::kernel::{Scope, Sets};
use crate::state::ownership::RECORD_SET;
use crate::state::{Ipset, State};

/// The record as last read (`None`: there was none), and when.
#[derive(Debug, Default)]
pub(crate) struct KeptRecord {
    last: Option<(Option<Ipset>, Instant)>,
}

impl KeptRecord {
    /// The record to use instead of reading it, when one was read within
    /// `period` of `now`.
    pub(crate) fn fresh(&self, period: Duration, now: Instant) -> Option<&Option<Ipset>> {
        let (set, at) = self.last.as_ref()?;
        (now.saturating_duration_since(*at) < period).then_some(set)
    }

    /// `first` without the record, which is known.
    pub(crate) fn leave_out(first: &mut Scope) {
        if let Sets::Named(names) = &mut first.sets {
            names.remove(RECORD_SET);
            if names.is_empty() {
                first.sets = Sets::Skip;
            }
        }
    }

    /// Puts the known record into what a read without it found.
    pub(crate) fn stand_in(state: &mut State, record: &Option<Ipset>) {
        if let Some(set) = record {
            state.ipsets.insert(RECORD_SET.to_string(), set.clone());
        }
    }

    /// Keeps the record as `state`, read at `at`, holds it.
    pub(crate) fn remember(&mut self, state: &State, at: Instant) {
        self.last = Some((state.ipsets.get(RECORD_SET).cloned(), at));
    }

    /// The next plan reads the record (pyfw is writing it, or was asked to
    /// look afresh).
    pub(crate) fn forget(&mut self) {
        self.last = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn the_record_is_read_again_after_the_period_or_when_forgotten() {
        let mut kept = KeptRecord::default();
        let now = Instant::now();
        let period = Duration::from_secs(90);
        assert!(kept.fresh(period, now).is_none(), "never read");
        kept.remember(&State::default(), now);
        assert_eq!(
            kept.fresh(period, now + Duration::from_secs(89)),
            Some(&None)
        );
        assert!(
            kept.fresh(period, now + period).is_none(),
            "its resync is due"
        );
        kept.forget();
        assert!(kept.fresh(period, now).is_none(), "pyfw wrote it");
    }

    #[test]
    fn a_scope_without_the_record_reads_no_set_rather_than_every_set() {
        let mut first = Scope::none();
        first.sets = Sets::Named(BTreeSet::from([RECORD_SET.to_string()]));
        KeptRecord::leave_out(&mut first);
        assert_eq!(first.sets, Sets::Skip);
        first.sets = Sets::Named(BTreeSet::from([RECORD_SET.to_string(), "big".into()]));
        KeptRecord::leave_out(&mut first);
        assert_eq!(first.sets, Sets::Named(BTreeSet::from(["big".to_string()])));
    }
}
