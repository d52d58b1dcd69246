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
//! - a poll takes one summary of all sets (every poll while summaries cost
//!   little; spot checks stand in between, see below). A wished set whose summary
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
//! The summary is not free either: for a hash set the kernel walks every
//! bucket to count the members (20 ms of CPU for 1,000,000 members, 0.4% of
//! a core at one a poll). Summaries are therefore taken at most once per
//! [`SUMMARY_COST_FACTOR`] times the CPU the last one took (0.1% of a
//! core): every poll for 100,000 members, every fourth poll at 5 s for
//! 1,000,000. The polls between test [`SPOT_CHECKS`] wished members of each
//! set, picked at random each poll (`ipset test`, a lookup in the hash):
//! a set emptied, destroyed, or made again and not yet refilled lacks
//! them, and that poll takes the summaries and reads the set in full. What
//! a spot check cannot see (a set made again and refilled with the members
//! tested, but other options; a count moved by a member added) waits for
//! the next summary; a member swapped for another is found by a test that
//! picks it, or by the resync. A wish with no member to test (membership
//! left alone, or an empty set) is summarised every poll.
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

/// Summaries are taken at most once per this many times the CPU the last
/// one took: at most 1/1000 = 0.1% of a core. A 100,000-member set's
/// summary (3 ms with its process) is taken every poll; a
/// 1,000,000-member set's (20 ms of the kernel walking its hash) every
/// fourth poll at 5 s, and spot checks stand in between.
pub const SUMMARY_COST_FACTOR: u32 = 1000;

/// How many wished members of each set a spot check tests.
pub const SPOT_CHECKS: usize = 2;

/// How far a spot check looks past `nomatch` members for one to test.
const NOMATCH_SCAN: usize = 64;

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
    /// When the last summary was taken, and how long until the next one
    /// is due (its cost times [`SUMMARY_COST_FACTOR`]).
    summarized: Option<(Instant, Duration)>,
    /// Picks the members a spot check tests: keyed at random per process,
    /// so that no other program can tell which members the next poll
    /// tests.
    picks: std::collections::hash_map::RandomState,
    picked: u64,
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

impl Checked {
    /// Whether its full resync is due at `now`.
    fn resync_due(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.read_at) >= self.resync_after
    }
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
            summarized: None,
            picks: Default::default(),
            picked: 0,
        }
    }

    /// The longest a set goes unread in full: [`RESYNC_POLLS`] intervals.
    pub fn resync_period(&self) -> Duration {
        self.min_resync
    }

    /// Whether this poll must take the sets' summaries, rather than spot
    /// check them: when the last summary's cost allows one (see
    /// [`SUMMARY_COST_FACTOR`]), and always when a set is to be read in
    /// full (first, after a change, new wishes, SIGHUP, its resync due: a
    /// full read is kept with the summary taken before it), or a wished set
    /// has no member to test (a wish that leaves membership alone, or an
    /// empty one).
    pub fn summary_due(&self, wishes: &Arc<[IpsetWish]>, now: Instant) -> bool {
        let aligned = self.wishes.as_ref().is_some_and(|w| Arc::ptr_eq(w, wishes));
        let Some((at, every)) = self.summarized else {
            return true;
        };
        let unsure = |wish: &IpsetWish| match (self.sets.get(&wish.name), &wish.members) {
            (Some(known), Some(members)) if !members.is_empty() => known.resync_due(now),
            _ => true,
        };
        self.full_next
            || !aligned
            || now.saturating_duration_since(at) >= every
            || wishes.iter().any(unsure)
    }

    /// A summary was taken at `now`, costing `cost` of CPU.
    pub fn summarized(&mut self, cost: Duration, now: Instant) {
        self.summarized = Some((now, cost.saturating_mul(SUMMARY_COST_FACTOR)));
    }

    /// The members a spot check tests instead of a summary: for each
    /// wished set, [`SPOT_CHECKS`] of its wished members' elements, picked
    /// at random each poll. Only when [`SetChecks::summary_due`] said no:
    /// every set then has members and an entry. A member wished `nomatch`
    /// (an exception carved out of a network) is never tested: `ipset test`
    /// says it is not in the set. `None` when a set's picks found only
    /// such members: take the summaries.
    pub fn spot_checks(&mut self, wishes: &[IpsetWish]) -> Option<Vec<(String, String)>> {
        use std::hash::BuildHasher as _;
        let mut out = Vec::new();
        for wish in wishes {
            let Some(members) = wish.members.as_ref().filter(|m| !m.is_empty()) else {
                continue;
            };
            let mut tested = 0;
            for _ in 0..SPOT_CHECKS.min(members.len()) {
                self.picked += 1;
                let start = self.picks.hash_one(self.picked) as usize;
                // From a random member on, the first not wished `nomatch`.
                let testable = (0..members.len().min(NOMATCH_SCAN))
                    .filter_map(|k| members.get((start + k) % members.len()))
                    .find(|m| !m.split(' ').any(|word| word == "nomatch"));
                if let Some(m) = testable {
                    let element = crate::plan::command::element(m).to_string();
                    out.push((wish.name.clone(), element));
                    tested += 1;
                }
            }
            if tested == 0 {
                return None;
            }
        }
        Some(out)
    }

    /// The summaries the entries hold, as the last full reads found them:
    /// what a poll that spot checked stands in for the sets.
    pub fn known_summaries(&self) -> BTreeMap<String, SetSummary> {
        (self.sets.iter())
            .map(|(name, known)| (name.clone(), known.summary.clone()))
            .collect()
    }

    /// Set `name` is to be read in full (a spot check found a wished member
    /// missing).
    pub fn forget(&mut self, name: &str) {
        self.sets.remove(name);
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
                Some(_) if known.resync_due(now) => Verdict::Resync,
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

    /// A summary is taken again once its cost times the factor has
    /// passed: a 20 ms summary every 20 s, spot checks between; sooner when
    /// a set is due a full read.
    #[test]
    fn a_costly_summary_is_taken_again_later_and_spot_checks_stand_in() {
        let mut checks = SetChecks::for_interval(5 * S);
        let w = wishes(true);
        let t0 = Instant::now();
        assert!(checks.summary_due(&w, t0), "nothing known yet");
        checks.summarized(Duration::from_millis(20), t0);
        assert!(checks.summary_due(&w, t0 + S), "the set is not known yet");
        checks.trusted(&w, &all(summary(2, "0x1")), t0);
        checks.read_in_full(["big"], &all(summary(2, "0x1")), &BTreeSet::new(), S, t0);
        for at in [5 * S, 10 * S, 15 * S] {
            assert!(!checks.summary_due(&w, t0 + at), "{at:?}");
        }
        assert!(checks.summary_due(&w, t0 + 20 * S));
        checks.forget("big");
        assert!(checks.summary_due(&w, t0 + 5 * S), "a forgotten set");
        checks.read_in_full(["big"], &all(summary(2, "0x1")), &BTreeSet::new(), S, t0);
        checks.read_all_next();
        assert!(checks.summary_due(&w, t0 + 5 * S), "SIGHUP");
        // Other wishes (the same text loaded again): summaries first.
        let mut checks = SetChecks::for_interval(5 * S);
        checks.summarized(Duration::from_millis(20), t0);
        checks.trusted(&w, &all(summary(2, "0x1")), t0);
        checks.read_in_full(["big"], &all(summary(2, "0x1")), &BTreeSet::new(), S, t0);
        assert!(!checks.summary_due(&w, t0 + 5 * S));
        assert!(checks.summary_due(&wishes(true), t0 + 5 * S));
        // The resync due (500 s after a read that cost 1 s), though the
        // next summary is not (1,000 s after one that cost 1 s): a summary
        // before the full read.
        checks.summarized(S, t0);
        assert!(!checks.summary_due(&w, t0 + 499 * S));
        assert!(checks.summary_due(&w, t0 + 500 * S));
    }

    /// A wish without members to test is summarised every poll.
    #[test]
    fn a_set_without_wished_members_is_summarised_every_poll() {
        let mut checks = SetChecks::for_interval(5 * S);
        let w = wishes(false);
        let t0 = Instant::now();
        checks.summarized(Duration::from_millis(20), t0);
        checks.trusted(&w, &all(summary(2, "0x1")), t0);
        checks.read_in_full(["big"], &all(summary(2, "0x1")), &BTreeSet::new(), S, t0);
        assert!(checks.summary_due(&w, t0 + 5 * S));
        assert_eq!(checks.spot_checks(&w), Some(Vec::new()));
    }

    /// Spot checks test elements (no options), [`SPOT_CHECKS`] a set,
    /// picked anew each poll: over polls, every member comes up.
    #[test]
    fn spot_checks_pick_elements_at_random_each_poll() {
        let text = "pyfw_wishes:\n  ipsets:\n    big:\n      type: hash:ip\n      header: \
                    timeout 600\n      members_equal:\n      - 10.0.0.1 timeout 60\n      \
                    - 10.0.0.2\n      - 10.0.0.3\n";
        let w = crate::wishes::parse(text, std::path::Path::new("w.yaml"))
            .unwrap()
            .ipsets;
        let mut checks = SetChecks::for_interval(5 * S);
        let mut seen = BTreeSet::new();
        for _ in 0..40 {
            let picks = checks.spot_checks(&w).expect("members to test");
            assert_eq!(picks.len(), SPOT_CHECKS);
            for (set, element) in picks {
                assert_eq!(set, "big");
                seen.insert(element);
            }
        }
        let all: BTreeSet<String> = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
            .map(String::from)
            .into();
        assert_eq!(seen, all);
    }

    /// `nomatch` members are never tested (`ipset test` says they are not
    /// in the set); a set with only such members is summarised instead.
    #[test]
    fn nomatch_members_are_not_spot_checked() {
        let parse = |members: &str| {
            let text = format!(
                "pyfw_wishes:\n  ipsets:\n    nets:\n      type: hash:net\n      \
                 members_equal:\n{members}"
            );
            crate::wishes::parse(&text, std::path::Path::new("w.yaml"))
                .unwrap()
                .ipsets
        };
        let mut checks = SetChecks::for_interval(5 * S);
        let w = parse("      - 10.0.0.0/8\n      - 10.1.0.0/16 nomatch\n");
        for _ in 0..20 {
            for (_, element) in checks.spot_checks(&w).expect("one member to test") {
                assert_eq!(element, "10.0.0.0/8");
            }
        }
        let only = parse("      - 10.1.0.0/16 nomatch\n");
        assert_eq!(checks.spot_checks(&only), None);
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
