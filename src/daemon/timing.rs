//! The daemon's timing decisions, apart from any I/O, so that they can be
//! tested on tokio's paused clock:
//! - [`Schedule`]: which triggers are waiting, when the next reconcile may
//!   start, and coalescing everything that arrives meanwhile into one run;
//! - [`Debounce`]: a burst of file events becomes one hint;
//! - [`Backoff`]: exponential delays with a cap, for failed runs;
//! - [`Fights`]: the same correction needed again and again means another
//!   program keeps undoing it; pyfw then holds that correction back for
//!   longer and longer instead of spinning.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;

use tokio::time::{Duration, Instant};

/// Why a reconcile runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Trigger {
    /// The daemon started.
    Startup,
    /// SIGHUP: re-read the wishes and reconcile, whatever changed.
    Sighup,
    /// Something happened in a watched directory: re-read the wishes.
    FileEvent,
    /// A failed run is retried.
    Retry,
    /// The poll interval passed.
    Timer,
    /// Another program changed a watched chain (nft backend; see
    /// `daemon::events`).
    Netfilter,
}

impl Trigger {
    const ALL: [Trigger; 6] = [
        Trigger::Startup,
        Trigger::Sighup,
        Trigger::FileEvent,
        Trigger::Retry,
        Trigger::Timer,
        Trigger::Netfilter,
    ];

    fn bit(self) -> u8 {
        1 << (self as u8)
    }

    pub fn name(self) -> &'static str {
        match self {
            Trigger::Startup => "startup",
            Trigger::Sighup => "sighup",
            Trigger::FileEvent => "file-event",
            Trigger::Retry => "retry",
            Trigger::Timer => "timer",
            Trigger::Netfilter => "netfilter",
        }
    }

    /// Runs at once, even while a failure backs off: the start, and what
    /// the operator does (a signal, an edit that may be the fix).
    pub fn urgent(self) -> bool {
        matches!(
            self,
            Trigger::Startup | Trigger::Sighup | Trigger::FileEvent
        )
    }
}

/// A set of triggers: what one run answers.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct Triggers(u8);

impl Triggers {
    pub fn of(list: &[Trigger]) -> Triggers {
        let mut t = Triggers::default();
        for &x in list {
            t.insert(x);
        }
        t
    }

    pub fn insert(&mut self, t: Trigger) {
        self.0 |= t.bit();
    }

    pub fn contains(self, t: Trigger) -> bool {
        self.0 & t.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// True when this holds `t` and nothing else.
    pub fn only(self, t: Trigger) -> bool {
        self.0 == t.bit()
    }

    pub fn iter(self) -> impl Iterator<Item = Trigger> {
        Trigger::ALL.into_iter().filter(move |t| self.contains(*t))
    }

    fn urgent(self) -> Triggers {
        Triggers(
            self.iter()
                .filter(|t| t.urgent())
                .fold(0, |acc, t| acc | t.bit()),
        )
    }

    fn remove_all(&mut self, other: Triggers) {
        self.0 &= !other.0;
    }
}

impl fmt::Display for Triggers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(Trigger::name).collect();
        write!(f, "{}", names.join("+"))
    }
}

impl fmt::Debug for Triggers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Triggers({self})")
    }
}

/// Exponential delays, `base` doubling up to `cap`.
#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap: cap.max(base),
            failures: 0,
        }
    }

    /// The delay before the next try, counting one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let factor = 1u32 << self.failures.min(20);
        self.failures = self.failures.saturating_add(1);
        self.base.saturating_mul(factor).min(self.cap)
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// How a run ended, for the schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finished {
    /// Netfilter was read (and repaired, or found in sync, or left alone
    /// during a fight).
    Ok,
    /// It failed; retry after a backoff.
    Failed,
    /// Nothing was read: a file event that changed nothing.
    Skipped,
}

/// When to run the next reconcile, and for which triggers.
///
/// At most one run is in flight. Triggers that arrive meanwhile (or
/// together) wait in one set and are answered by the next run together.
/// The poll timer counts from the end of the last run that read
/// netfilter, since every run reads fresh state. After a failure, only
/// urgent triggers run before the backoff delay is over.
#[derive(Debug)]
pub struct Schedule {
    interval: Duration,
    pending: Triggers,
    next_poll: Instant,
    backoff: Backoff,
    retry_at: Option<Instant>,
    running: bool,
    /// New wishes that failed for a reason that may pass wait for their
    /// next try here, with a backoff of their own, while runs go on (and
    /// enforce the last good wishes).
    retry_new: Option<Instant>,
    new_backoff: Backoff,
}

impl Schedule {
    /// A schedule whose first run is the start-up.
    pub fn new(now: Instant, interval: Duration, backoff: Backoff) -> Schedule {
        Schedule {
            interval,
            pending: Triggers::of(&[Trigger::Startup]),
            next_poll: now + interval,
            new_backoff: backoff.clone(),
            backoff,
            retry_at: None,
            running: false,
            retry_new: None,
        }
    }

    pub fn add(&mut self, t: Trigger) {
        self.pending.insert(t);
    }

    pub fn is_running(&self) -> bool {
        self.running
    }

    fn backing_off(&self, now: Instant) -> Option<Instant> {
        self.retry_at.filter(|r| *r > now)
    }

    /// Starts a run if one is due: returns the triggers it answers.
    pub fn start(&mut self, now: Instant) -> Option<Triggers> {
        if self.running {
            return None;
        }
        if now >= self.next_poll {
            self.pending.insert(Trigger::Timer);
        }
        if self.retry_new.is_some_and(|at| now >= at) {
            self.retry_new = None;
            self.pending.insert(Trigger::Retry);
        }
        let take = if self.backing_off(now).is_some() {
            self.pending.urgent()
        } else {
            self.pending
        };
        if take.is_empty() {
            return None;
        }
        self.pending.remove_all(take);
        self.running = true;
        Some(take)
    }

    /// When [`Schedule::start`] may next return a run; `None` while one is
    /// in flight (its end is the next event).
    pub fn wake_at(&self, now: Instant) -> Option<Instant> {
        if self.running {
            return None;
        }
        if !self.pending.urgent().is_empty() {
            return Some(now);
        }
        let poll = if self.pending.is_empty() {
            self.retry_new
                .map_or(self.next_poll, |r| r.min(self.next_poll))
        } else {
            now
        };
        Some(match self.backing_off(now) {
            Some(retry) => retry.max(poll),
            None => poll,
        })
    }

    /// Records the end of the run in flight. After a failure, returns the
    /// delay before it is retried.
    pub fn finish(&mut self, now: Instant, how: Finished) -> Option<Duration> {
        self.running = false;
        match how {
            Finished::Ok => {
                self.backoff.reset();
                self.retry_at = None;
                self.next_poll = now + self.interval;
                None
            }
            Finished::Failed => {
                let delay = self.backoff.next_delay();
                self.retry_at = Some(now + delay);
                self.pending.insert(Trigger::Retry);
                self.next_poll = now + self.interval;
                Some(delay)
            }
            Finished::Skipped => None,
        }
    }

    /// New wishes failed for a reason that may pass, and the run enforced
    /// the last good ones instead: they are tried again (a run with
    /// [`Trigger::Retry`]) after a backoff of their own, returned here.
    /// Polls go on meanwhile.
    pub fn retry_new_wishes(&mut self, now: Instant) -> Duration {
        let delay = self.new_backoff.next_delay();
        self.retry_new = Some(now + delay);
        delay
    }

    /// No new wishes wait for a try (they applied, were refused, or the
    /// file changed): their backoff starts again.
    pub fn no_new_wishes_waiting(&mut self) {
        self.retry_new = None;
        self.new_backoff.reset();
    }
}

/// Turns a burst of file events into one hint, once the directory has been
/// quiet for `quiet`, or at the latest `max_wait` after the first event (so
/// that a file rewritten non-stop is still picked up).
#[derive(Clone, Debug)]
pub struct Debounce {
    quiet: Duration,
    max_wait: Duration,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Debounce {
    pub fn new(quiet: Duration, max_wait: Duration) -> Debounce {
        Debounce {
            quiet,
            max_wait: max_wait.max(quiet),
            first: None,
            last: None,
        }
    }

    /// An event happened.
    pub fn hint(&mut self, now: Instant) {
        self.first.get_or_insert(now);
        self.last = Some(now);
    }

    /// When the hint is due, if there is one.
    pub fn deadline(&self) -> Option<Instant> {
        let (first, last) = (self.first?, self.last?);
        Some((last + self.quiet).min(first + self.max_wait))
    }

    /// True (once) when the hint is due at `now`.
    pub fn fire(&mut self, now: Instant) -> bool {
        match self.deadline() {
            Some(d) if d <= now => {
                self.first = None;
                self.last = None;
                true
            }
            _ => false,
        }
    }
}

/// One correction a run made: its key (what was corrected) and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fix {
    /// The chain or set, and the wish (or the reason, for a policy).
    pub key: String,
    /// The plan's reason, naming the other side's effect.
    pub reason: String,
}

/// When corrections count as a fight and how long they are held back.
#[derive(Clone, Copy, Debug)]
pub struct FightPolicy {
    /// A correction needed this many times within `window` is a fight.
    pub threshold: usize,
    pub window: Duration,
    /// The first hold; each correction during the fight doubles it.
    pub first_hold: Duration,
    pub max_hold: Duration,
    /// Corrections of one thing closer together than this count once, so
    /// that the count is in polls even when netfilter events trigger
    /// repairs: a Docker restart that pushes a rule down five times within
    /// a second is one correction, not a fight.
    pub min_gap: Duration,
}

impl FightPolicy {
    /// Scaled to the poll interval: a fight is the same correction three
    /// times within 30 polls; holds start at 2 polls and double up to 12
    /// (1 minute at the default 5 s interval). Corrections less than half
    /// an interval apart count once.
    pub fn for_interval(interval: Duration) -> FightPolicy {
        FightPolicy {
            threshold: 3,
            window: interval.saturating_mul(30),
            first_hold: interval.saturating_mul(2),
            max_hold: interval.saturating_mul(12),
            min_gap: interval / 2,
        }
    }

    fn hold(&self, level: u32) -> Duration {
        let factor = 1u32 << level.saturating_sub(1).min(20);
        self.first_hold.saturating_mul(factor).min(self.max_hold)
    }
}

#[derive(Clone, Debug)]
struct Fight {
    reason: String,
    level: u32,
    since: Instant,
    until: Instant,
}

/// News about fights, for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FightNews {
    /// A correction became a fight: `count` times within the window.
    Started {
        key: String,
        reason: String,
        count: usize,
        window: Duration,
        hold: Duration,
    },
    /// The fight goes on: the hold grows.
    Escalated {
        key: String,
        reason: String,
        hold: Duration,
    },
    /// The correction has not been needed for a whole window.
    Ended {
        key: String,
        reason: String,
        lasted: Duration,
    },
}

/// Tracks corrections to spot fights with other programs.
#[derive(Debug)]
pub struct Fights {
    policy: FightPolicy,
    seen: HashMap<String, VecDeque<Instant>>,
    active: HashMap<String, Fight>,
}

impl Fights {
    pub fn new(policy: FightPolicy) -> Fights {
        Fights {
            policy,
            seen: HashMap::new(),
            active: HashMap::new(),
        }
    }

    fn prune(times: &mut VecDeque<Instant>, now: Instant, window: Duration) {
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= window)
        {
            times.pop_front();
        }
    }

    /// Records the corrections a run made at `now`.
    pub fn corrected(&mut self, now: Instant, fixes: &[Fix]) -> Vec<FightNews> {
        let mut news = Vec::new();
        let mut done = HashSet::new();
        for fix in fixes {
            if !done.insert(fix.key.as_str()) {
                continue;
            }
            let times = self.seen.entry(fix.key.clone()).or_default();
            if times
                .back()
                .is_some_and(|last| now.duration_since(*last) < self.policy.min_gap)
            {
                continue;
            }
            times.push_back(now);
            Fights::prune(times, now, self.policy.window);
            let count = times.len();
            if count < self.policy.threshold {
                continue;
            }
            match self.active.get_mut(&fix.key) {
                Some(f) => {
                    f.level = f.level.saturating_add(1);
                    let hold = self.policy.hold(f.level);
                    f.until = now + hold;
                    f.reason = fix.reason.clone();
                    news.push(FightNews::Escalated {
                        key: fix.key.clone(),
                        reason: fix.reason.clone(),
                        hold,
                    });
                }
                None => {
                    let hold = self.policy.hold(1);
                    self.active.insert(
                        fix.key.clone(),
                        Fight {
                            reason: fix.reason.clone(),
                            level: 1,
                            since: now,
                            until: now + hold,
                        },
                    );
                    news.push(FightNews::Started {
                        key: fix.key.clone(),
                        reason: fix.reason.clone(),
                        count,
                        window: self.policy.window,
                        hold,
                    });
                }
            }
        }
        news
    }

    /// The corrections on hold at `now`: a drift-only run that needs one of
    /// them waits.
    pub fn held(&self, now: Instant) -> HashSet<String> {
        self.active
            .iter()
            .filter(|(_, f)| f.until > now)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Forgets corrections older than the window and ends the fights whose
    /// correction was not needed within it.
    pub fn sweep(&mut self, now: Instant) -> Vec<FightNews> {
        let window = self.policy.window;
        self.seen.retain(|_, times| {
            Fights::prune(times, now, window);
            !times.is_empty()
        });
        let ended: Vec<String> = self
            .active
            .keys()
            .filter(|k| !self.seen.contains_key(*k))
            .cloned()
            .collect();
        ended
            .into_iter()
            .filter_map(|key| {
                let f = self.active.remove(&key)?;
                Some(FightNews::Ended {
                    key,
                    reason: f.reason,
                    lasted: now.duration_since(f.since),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    const MS: Duration = Duration::from_millis(1);

    fn schedule(now: Instant) -> Schedule {
        Schedule::new(
            now,
            Duration::from_secs(5),
            Backoff::new(Duration::from_secs(1), Duration::from_secs(8)),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn startup_runs_first_then_the_timer_every_interval() {
        let mut s = schedule(Instant::now());
        assert_eq!(s.wake_at(Instant::now()), Some(Instant::now()));
        assert_eq!(
            s.start(Instant::now()),
            Some(Triggers::of(&[Trigger::Startup]))
        );
        assert_eq!(s.wake_at(Instant::now()), None, "one run at a time");
        assert_eq!(s.start(Instant::now()), None);
        advance(300 * MS).await;
        s.finish(Instant::now(), Finished::Ok);
        let poll = Instant::now() + Duration::from_secs(5);
        assert_eq!(
            s.wake_at(Instant::now()),
            Some(poll),
            "interval counts from the end"
        );
        advance(Duration::from_secs(4)).await;
        assert_eq!(s.start(Instant::now()), None, "not yet");
        advance(Duration::from_secs(1)).await;
        assert_eq!(
            s.start(Instant::now()),
            Some(Triggers::of(&[Trigger::Timer]))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn triggers_arriving_during_a_run_coalesce_into_one_run() {
        let mut s = schedule(Instant::now());
        s.start(Instant::now()).unwrap();
        // While the start-up runs: a SIGHUP, two file hints, the timer.
        s.add(Trigger::Sighup);
        s.add(Trigger::FileEvent);
        s.add(Trigger::FileEvent);
        advance(Duration::from_secs(6)).await;
        assert_eq!(s.start(Instant::now()), None, "still running");
        s.finish(Instant::now(), Finished::Ok);
        assert_eq!(s.wake_at(Instant::now()), Some(Instant::now()));
        let run = s.start(Instant::now()).unwrap();
        assert_eq!(run, Triggers::of(&[Trigger::Sighup, Trigger::FileEvent]));
        assert_eq!(run.to_string(), "sighup+file-event");
        s.finish(Instant::now(), Finished::Ok);
        assert_eq!(s.start(Instant::now()), None, "all answered by one run");
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_exponentially_up_to_the_cap_and_reset() {
        let mut s = schedule(Instant::now());
        let mut delays = Vec::new();
        for _ in 0..6 {
            // Run whenever the schedule says, and fail.
            let at = s.wake_at(Instant::now()).unwrap();
            tokio::time::sleep_until(at).await;
            let run = s.start(Instant::now()).expect("due");
            assert!(!run.is_empty());
            delays.push(s.finish(Instant::now(), Finished::Failed).unwrap());
        }
        let secs: Vec<u64> = delays.iter().map(|d| d.as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 8, 8]);
        // The timer does not cut a backoff short...
        let retry_at = s.wake_at(Instant::now()).unwrap();
        assert_eq!(retry_at, Instant::now() + Duration::from_secs(8));
        advance(Duration::from_secs(7)).await;
        assert_eq!(s.start(Instant::now()), None);
        // ...but an urgent trigger does.
        s.add(Trigger::Sighup);
        assert_eq!(
            s.start(Instant::now()),
            Some(Triggers::of(&[Trigger::Sighup])),
            "the retry and the timer stay pending until the backoff ends"
        );
        s.finish(Instant::now(), Finished::Ok);
        // A success resets the backoff.
        s.add(Trigger::Timer);
        s.start(Instant::now()).unwrap();
        assert_eq!(
            s.finish(Instant::now(), Finished::Failed),
            Some(Duration::from_secs(1))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn new_wishes_are_retried_with_their_own_backoff_while_polls_go_on() {
        let mut s = schedule(Instant::now());
        s.start(Instant::now()).unwrap();
        s.finish(Instant::now(), Finished::Ok);
        // A run enforced the last good wishes, the new ones failed.
        assert_eq!(s.retry_new_wishes(Instant::now()), Duration::from_secs(1));
        assert_eq!(
            s.wake_at(Instant::now()),
            Some(Instant::now() + Duration::from_secs(1)),
            "before the poll"
        );
        advance(Duration::from_secs(1)).await;
        assert_eq!(
            s.start(Instant::now()),
            Some(Triggers::of(&[Trigger::Retry]))
        );
        s.finish(Instant::now(), Finished::Ok);
        // Failed again: twice as long. Polls are not held back meanwhile
        // (unlike after a failed run).
        assert_eq!(s.retry_new_wishes(Instant::now()), Duration::from_secs(2));
        s.add(Trigger::Netfilter);
        assert_eq!(
            s.start(Instant::now()),
            Some(Triggers::of(&[Trigger::Netfilter]))
        );
        s.finish(Instant::now(), Finished::Ok);
        advance(Duration::from_secs(2)).await;
        assert_eq!(
            s.start(Instant::now()),
            Some(Triggers::of(&[Trigger::Retry]))
        );
        s.finish(Instant::now(), Finished::Ok);
        assert_eq!(s.retry_new_wishes(Instant::now()), Duration::from_secs(4));
        advance(Duration::from_secs(4)).await;
        assert_eq!(
            s.start(Instant::now()),
            Some(Triggers::of(&[Trigger::Retry]))
        );
        s.finish(Instant::now(), Finished::Ok);
        advance(Duration::from_secs(5)).await;
        assert_eq!(
            s.start(Instant::now()),
            Some(Triggers::of(&[Trigger::Timer]))
        );
        s.finish(Instant::now(), Finished::Ok);
        // Nothing waits any more: the backoff starts again.
        s.no_new_wishes_waiting();
        assert_eq!(s.retry_new_wishes(Instant::now()), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_skipped_run_keeps_the_backoff_and_the_poll_time() {
        let mut s = schedule(Instant::now());
        s.start(Instant::now()).unwrap();
        s.finish(Instant::now(), Finished::Failed);
        advance(200 * MS).await;
        s.add(Trigger::FileEvent);
        assert_eq!(
            s.start(Instant::now()),
            Some(Triggers::of(&[Trigger::FileEvent]))
        );
        assert_eq!(s.finish(Instant::now(), Finished::Skipped), None);
        let retry = s.wake_at(Instant::now()).unwrap();
        assert_eq!(retry, Instant::now() + 800 * MS, "still the first retry");
    }

    #[tokio::test(start_paused = true)]
    async fn the_schedule_never_asks_to_wake_in_the_past_while_backing_off() {
        let mut s = schedule(Instant::now());
        s.start(Instant::now()).unwrap();
        for _ in 0..5 {
            s.finish(Instant::now(), Finished::Failed);
            // Let the timer come due while backing off.
            advance(Duration::from_secs(5)).await;
            let now = Instant::now();
            if s.start(now).is_none() {
                let wake = s.wake_at(now).unwrap();
                assert!(wake > now, "would spin: wake {wake:?} <= now {now:?}");
                tokio::time::sleep_until(wake).await;
                s.start(Instant::now()).unwrap();
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn debounce_waits_for_quiet_but_not_forever() {
        let mut d = Debounce::new(200 * MS, Duration::from_secs(1));
        assert_eq!(d.deadline(), None);
        let start = Instant::now();
        d.hint(start);
        assert_eq!(d.deadline(), Some(start + 200 * MS));
        advance(150 * MS).await;
        d.hint(Instant::now());
        assert!(!d.fire(Instant::now()));
        assert_eq!(d.deadline(), Some(start + 350 * MS), "quiet restarts");
        advance(200 * MS).await;
        assert!(d.fire(Instant::now()), "one hint for the burst");
        assert!(!d.fire(Instant::now()), "and only one");
        assert_eq!(d.deadline(), None);

        // Events every 100 ms without pause: due 1 s after the first.
        let start = Instant::now();
        let mut fired_at = None;
        for _ in 0..30 {
            d.hint(Instant::now());
            advance(100 * MS).await;
            if d.fire(Instant::now()) {
                fired_at = Some(Instant::now());
                break;
            }
        }
        assert_eq!(fired_at, Some(start + Duration::from_secs(1)));
    }

    fn fix(key: &str) -> Fix {
        Fix {
            key: key.to_string(),
            reason: format!("filter/INPUT: {key} missing"),
        }
    }

    fn policy() -> FightPolicy {
        FightPolicy::for_interval(Duration::from_secs(1))
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_event_driven_corrections_counts_once() {
        let mut f = Fights::new(policy());
        // A Docker restart pushes the rule down five times within 400 ms;
        // each push is repaired at once (netfilter events).
        for _ in 0..5 {
            assert_eq!(
                f.corrected(Instant::now(), &[fix("allow_established")]),
                vec![]
            );
            advance(100 * MS).await;
        }
        // Twice more, a poll apart: now it is a fight.
        advance(Duration::from_secs(1)).await;
        assert_eq!(
            f.corrected(Instant::now(), &[fix("allow_established")]),
            vec![]
        );
        advance(Duration::from_secs(1)).await;
        let news = f.corrected(Instant::now(), &[fix("allow_established")]);
        assert!(
            matches!(&news[..], [FightNews::Started { count: 3, .. }]),
            "{news:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn occasional_corrections_are_no_fight() {
        let mut f = Fights::new(policy());
        for _ in 0..10 {
            // Twice within the 30 s window, never three times.
            assert_eq!(f.corrected(Instant::now(), &[fix("allow_ssh")]), vec![]);
            advance(Duration::from_secs(16)).await;
            f.sweep(Instant::now());
        }
        assert!(f.held(Instant::now()).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_fight_is_detected_held_back_escalated_and_ended() {
        let mut f = Fights::new(policy());
        let ssh = fix("allow_ssh");
        // Another program deletes the rule every poll.
        assert!(
            f.corrected(Instant::now(), std::slice::from_ref(&ssh))
                .is_empty()
        );
        advance(Duration::from_secs(1)).await;
        // Several commands of one correction count once.
        assert!(
            f.corrected(Instant::now(), &[ssh.clone(), ssh.clone()])
                .is_empty()
        );
        advance(Duration::from_secs(1)).await;
        let news = f.corrected(Instant::now(), &[ssh.clone(), fix("other")]);
        assert_eq!(
            news,
            vec![FightNews::Started {
                key: "allow_ssh".into(),
                reason: "filter/INPUT: allow_ssh missing".into(),
                count: 3,
                window: Duration::from_secs(30),
                hold: Duration::from_secs(2),
            }]
        );
        let held = f.held(Instant::now());
        assert!(held.contains("allow_ssh") && !held.contains("other"));
        advance(Duration::from_secs(2)).await;
        assert!(f.held(Instant::now()).is_empty(), "the hold ends");

        // Still fighting: each correction doubles the hold, up to 12 s.
        let mut holds = Vec::new();
        let mut last = Instant::now();
        for _ in 0..5 {
            last = Instant::now();
            for news in f.corrected(last, std::slice::from_ref(&ssh)) {
                let FightNews::Escalated { hold, .. } = news else {
                    panic!("expected escalation, got {news:?}");
                };
                holds.push(hold.as_secs());
                advance(hold).await;
            }
        }
        assert_eq!(holds, [4, 8, 12, 12, 12]);

        // The other side stops: after a window without corrections, over.
        tokio::time::sleep_until(last + Duration::from_secs(29)).await;
        assert!(f.sweep(Instant::now()).is_empty(), "not yet a full window");
        tokio::time::sleep_until(last + Duration::from_secs(30)).await;
        let ended = f.sweep(Instant::now());
        assert!(
            matches!(&ended[..], [FightNews::Ended { key, .. }] if key == "allow_ssh"),
            "{ended:?}"
        );
        assert!(f.held(Instant::now()).is_empty());
    }
}
