//! Big sets in a polling daemon: each poll checks a wished set by its
//! summary, and reads its members only when the summary moved, or when its
//! full resync is due.
//!
//! `ipset` announces no changes, so the daemon's only way to see a set
//! drift is to look. Reading a 100,000-member set in full (`ipset save`,
//! parsed, planned) costs 0.1-0.2 s of CPU, and every 5 s poll did it: 3.5%
//! of a core. `ipset list -terse` lists every set's type, create options
//! (with the `initval` the kernel picks at random for each set it makes),
//! member count and size in memory, without a member, in a few
//! milliseconds. So, in the manner of Felix (Calico), which resyncs its
//! ipsets in full on a longer period than it checks them:
//!
//! - every poll takes one summary of all sets. A wished set whose summary
//!   is what it was when a full read last found it as wished is trusted:
//!   its members are not read, and the plan leaves them alone. Any member
//!   added or removed (the count moves), the set emptied, destroyed, made
//!   again (another `initval`) or given other options is seen by the next
//!   poll, which reads it in full and repairs it: within one interval;
//! - a set is read in full again at the latest [`RESYNC_POLLS`] intervals
//!   after its last full read (90 s at the default 5 s), or later when a
//!   full read costs more: at least [`RESYNC_COST_FACTOR`] times the CPU
//!   that read took, so that resyncs cost at most 0.2% of a core (a
//!   1,000,000-member set, some 2 s of CPU to read and plan, is read every
//!   15-20 minutes). A member swapped for another (the count unchanged, and
//!   the size in memory too) is seen by that resync: the one change the
//!   summary cannot see;
//! - new wishes, a SIGHUP and the start read every set in full.
//!
//! A summary is taken before the read it is kept with, so a change made
//! between the two makes the next poll's summary differ: it is read again.
//! After pyfw's own change to a set, the next poll reads it in full.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::kernel::SetSummary;
use crate::wishes::IpsetWish;

/// A set is read in full at least this many poll intervals after its last
/// full read: 90 s at the default 5 s, Felix's own ipset resync period.
pub const RESYNC_POLLS: u32 = 18;

/// A set is read in full at most once per this many times the CPU its last
/// full read took: resyncs take at most 1/500 = 0.2% of a core.
pub const RESYNC_COST_FACTOR: u32 = 500;

/// What the polls know of the wished sets; see the module's text.
#[derive(Debug)]
pub struct SetChecks {
    /// The wished sets the entries were earned against: shared with the
    /// wishes, compared by address, and held so that the address is not
    /// reused by other wishes while an entry names it.
    wishes: Option<Arc<[IpsetWish]>>,
    sets: HashMap<String, Checked>,
    /// The shortest time between two full reads of a set.
    min_resync: Duration,
    /// The next poll reads every set in full.
    full_next: bool,
}

/// A set a full read found as wished.
#[derive(Clone, Debug)]
struct Checked {
    /// Its summary, taken just before that read.
    summary: SetSummary,
    read_at: Instant,
    /// When it is read in full again, after `read_at`.
    resync_after: Duration,
}

/// What [`SetChecks::trusted`] decided for one wished set, for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Unchanged: the members are not read.
    Trusted,
    /// Read in full: the first time, or after pyfw changed it.
    Unknown,
    /// Its summary moved since the last full read.
    Moved(String),
    /// Its full resync is due.
    Resync,
}

impl SetChecks {
    /// Checks for polls every `interval`.
    pub fn for_interval(interval: Duration) -> SetChecks {
        SetChecks {
            wishes: None,
            sets: HashMap::new(),
            min_resync: interval.saturating_mul(RESYNC_POLLS),
            full_next: true,
        }
    }

    /// The longest a set goes unread in full: [`RESYNC_POLLS`] intervals.
    pub fn resync_period(&self) -> Duration {
        self.min_resync
    }

    /// The next poll reads every set in full (SIGHUP).
    pub fn read_all_next(&mut self) {
        self.full_next = true;
    }

    /// Forgets what other wishes earned: an entry says a set held exactly
    /// what these wishes ask.
    fn align(&mut self, wishes: &Arc<[IpsetWish]>) {
        let same = self.wishes.as_ref().is_some_and(|w| Arc::ptr_eq(w, wishes));
        if !same {
            self.sets.clear();
            self.wishes = Some(wishes.clone());
        }
    }

    /// The wished sets whose members this poll need not read, given every
    /// set's summary as it is now, each with why (trusted or not).
    pub fn trusted(
        &mut self,
        wishes: &Arc<[IpsetWish]>,
        summaries: &BTreeMap<String, SetSummary>,
        now: Instant,
    ) -> Vec<(String, Verdict)> {
        self.align(wishes);
        if std::mem::take(&mut self.full_next) {
            self.sets.clear();
        }
        let mut out = Vec::new();
        for wish in wishes.iter() {
            let Some(known) = self.sets.get(&wish.name) else {
                out.push((wish.name.clone(), Verdict::Unknown));
                continue;
            };
            let verdict = match summaries.get(&wish.name) {
                None => Verdict::Moved("it is gone".into()),
                Some(now_is) if !same(wish, &known.summary, now_is) => {
                    Verdict::Moved(moved(&known.summary, now_is))
                }
                Some(_) if now.saturating_duration_since(known.read_at) >= known.resync_after => {
                    Verdict::Resync
                }
                Some(_) => Verdict::Trusted,
            };
            if verdict != Verdict::Trusted {
                self.sets.remove(&wish.name);
            }
            out.push((wish.name.clone(), verdict));
        }
        out
    }

    /// After a poll read the wished sets `read` in full, `summaries` having
    /// been taken before that read, its plan changing the sets `touched`,
    /// the read and plan costing `cost` of CPU: each set read and left
    /// alone is trusted from now on, until its summary moves or its resync
    /// is due; a set the plan changes is read in full again.
    pub fn read_in_full<'a>(
        &mut self,
        read: impl IntoIterator<Item = &'a str>,
        summaries: &BTreeMap<String, SetSummary>,
        touched: &BTreeSet<&str>,
        cost: Duration,
        now: Instant,
    ) {
        let resync_after = self.min_resync.max(cost.saturating_mul(RESYNC_COST_FACTOR));
        for name in read {
            match summaries.get(name) {
                Some(summary) if !touched.contains(name) => {
                    let checked = Checked {
                        summary: summary.clone(),
                        read_at: now,
                        resync_after,
                    };
                    self.sets.insert(name.to_string(), checked);
                }
                _ => {
                    self.sets.remove(name);
                }
            }
        }
    }

    /// When set `name` is read in full again at the latest.
    pub fn resync_in(&self, name: &str, now: Instant) -> Option<Duration> {
        let known = self.sets.get(name)?;
        Some((known.read_at + known.resync_after).saturating_duration_since(now))
    }
}

/// Whether a set's summary still says what a full read found. A wish that
/// leaves membership alone needs only the type and options it states.
fn same(wish: &IpsetWish, then: &SetSummary, now: &SetSummary) -> bool {
    match wish.members {
        Some(_) => then == now,
        None => then.kind == now.kind && then.options == now.options,
    }
}

/// What moved between two summaries, in words.
fn moved(then: &SetSummary, now: &SetSummary) -> String {
    if then.kind != now.kind || then.options != now.options {
        return format!(
            "it is `{} {}` now, was `{} {}`",
            now.kind,
            now.options.join(" "),
            then.kind,
            then.options.join(" ")
        );
    }
    if then.members != now.members {
        return format!("{} members now, {} before", now.members, then.members);
    }
    "its size in memory changed".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wishes(members: bool) -> Arc<[IpsetWish]> {
        let text = match members {
            true => {
                "pyfw_wishes:\n  ipsets:\n    big:\n      type: hash:ip\n      members_equal:\n      \
                 - 10.0.0.1\n      - 10.0.0.2\n"
            }
            false => "pyfw_wishes:\n  ipsets:\n    big:\n      type: hash:ip\n",
        };
        crate::wishes::parse(text, std::path::Path::new("w.yaml"))
            .unwrap()
            .ipsets
    }

    fn summary(members: usize, initval: &str) -> SetSummary {
        SetSummary {
            kind: "hash:ip".into(),
            options: ["family", "inet", "initval", initval]
                .map(String::from)
                .to_vec(),
            members,
            memory: Some(200 + members as u64),
        }
    }

    fn all(s: SetSummary) -> BTreeMap<String, SetSummary> {
        BTreeMap::from([("big".to_string(), s)])
    }

    const S: Duration = Duration::from_secs(1);

    /// A set read in full and found as wished is trusted until its summary
    /// moves (a count, a set made again, a set gone) or its resync is due;
    /// then it is read in full, and trusted again after.
    #[test]
    fn a_set_is_trusted_until_its_summary_moves_or_its_resync_is_due() {
        let mut checks = SetChecks::for_interval(5 * S);
        let w = wishes(true);
        let t0 = Instant::now();
        let verdict =
            |c: &mut SetChecks, s: SetSummary, at: Instant| c.trusted(&w, &all(s), at).remove(0).1;
        let read = |c: &mut SetChecks, s: SetSummary, at: Instant, cost: Duration| {
            c.read_in_full(["big"], &all(s), &BTreeSet::new(), cost, at)
        };
        assert_eq!(
            verdict(&mut checks, summary(2, "0x1"), t0),
            Verdict::Unknown
        );
        read(
            &mut checks,
            summary(2, "0x1"),
            t0,
            10 * Duration::from_millis(1),
        );
        // 90 s: 18 polls of 5 s (the read's 10 ms of CPU asks for 5 s).
        assert_eq!(checks.resync_in("big", t0), Some(90 * S));
        for at in [S, 30 * S, 89 * S] {
            assert_eq!(
                verdict(&mut checks, summary(2, "0x1"), t0 + at),
                Verdict::Trusted
            );
        }
        assert_eq!(
            verdict(&mut checks, summary(2, "0x1"), t0 + 90 * S),
            Verdict::Resync
        );
        // Not trusted until the next full read.
        assert_eq!(
            verdict(&mut checks, summary(2, "0x1"), t0 + 91 * S),
            Verdict::Unknown
        );
        read(
            &mut checks,
            summary(2, "0x1"),
            t0 + 91 * S,
            Duration::from_millis(1),
        );
        let moves = [
            (summary(3, "0x1"), "3 members now, 2 before"),
            (summary(0, "0x1"), "0 members now, 2 before"),
            (
                summary(2, "0x2"),
                "it is `hash:ip family inet initval 0x2` now",
            ),
        ];
        for (now, why) in moves {
            let at = t0 + 95 * S;
            read(&mut checks, summary(2, "0x1"), at, Duration::from_millis(1));
            match verdict(&mut checks, now, at) {
                Verdict::Moved(said) => assert!(said.starts_with(why), "{said}"),
                other => panic!("{other:?}"),
            }
        }
        read(&mut checks, summary(2, "0x1"), t0, Duration::ZERO);
        let gone = checks.trusted(&w, &BTreeMap::new(), t0).remove(0).1;
        assert_eq!(gone, Verdict::Moved("it is gone".into()));
    }

    /// A costly read pushes the next resync out: at most 0.2% of a core.
    #[test]
    fn a_costly_set_is_read_again_later() {
        let mut checks = SetChecks::for_interval(5 * S);
        let w = wishes(true);
        let t0 = Instant::now();
        checks.trusted(&w, &all(summary(2, "0x1")), t0);
        checks.read_in_full(
            ["big"],
            &all(summary(2, "0x1")),
            &BTreeSet::new(),
            2 * S,
            t0,
        );
        assert_eq!(checks.resync_in("big", t0), Some(1000 * S));
    }

    /// A set the plan changes, new wishes, and a SIGHUP: read in full.
    #[test]
    fn changed_sets_new_wishes_and_sighup_read_in_full() {
        let mut checks = SetChecks::for_interval(5 * S);
        let w = wishes(true);
        let t0 = Instant::now();
        let s = || all(summary(2, "0x1"));
        checks.trusted(&w, &s(), t0);
        checks.read_in_full(["big"], &s(), &BTreeSet::from(["big"]), S, t0);
        assert_eq!(checks.trusted(&w, &s(), t0 + S)[0].1, Verdict::Unknown);
        checks.read_in_full(["big"], &s(), &BTreeSet::new(), S, t0);
        assert_eq!(checks.trusted(&w, &s(), t0 + S)[0].1, Verdict::Trusted);
        // The same text loaded again is other wishes.
        let again = wishes(true);
        assert_eq!(checks.trusted(&again, &s(), t0 + S)[0].1, Verdict::Unknown);
        checks.read_in_full(["big"], &s(), &BTreeSet::new(), S, t0);
        checks.read_all_next();
        assert_eq!(checks.trusted(&again, &s(), t0 + S)[0].1, Verdict::Unknown);
    }

    /// A wish that leaves membership alone needs only the type and options
    /// it had: another program filling the set reads nothing.
    #[test]
    fn membership_left_alone_needs_only_the_header() {
        let mut checks = SetChecks::for_interval(5 * S);
        let w = wishes(false);
        let t0 = Instant::now();
        checks.trusted(&w, &all(summary(2, "0x1")), t0);
        checks.read_in_full(["big"], &all(summary(2, "0x1")), &BTreeSet::new(), S, t0);
        let at = t0 + S;
        assert_eq!(
            checks.trusted(&w, &all(summary(900, "0x1")), at)[0].1,
            Verdict::Trusted
        );
        assert!(matches!(
            checks.trusted(&w, &all(summary(900, "0x2")), at)[0].1,
            Verdict::Moved(_)
        ));
    }
}
