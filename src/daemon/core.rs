//! One daemon run, synchronous: re-read the wishes file, reconcile, and say
//! what drifted and what was run.
//!
//! [`Core`] owns the reconciler and the wishes being enforced. The event
//! loop moves it into a blocking thread for each run and gets it back with
//! the [`Outcome`]; all timing decisions stay in the loop.
//!
//! The wishes follow these rules:
//! - new content is read only once it is finished: never while a writer
//!   has the file open, and only once it has settled (see `daemon::file`);
//! - a file that does not load (YAML, validation, unreadable, not a
//!   regular file) changes nothing: one error is logged, naming file, line
//!   and wish, and the wishes in force stay in force;
//! - new wishes that the kernel tools refuse are treated the same way: a
//!   rule iptables cannot parse, or refuses in its chain (`-o` in INPUT); a
//!   set ipset refuses (more members than its `maxelem`, a member out of a
//!   bitmap's range). The plan is all or nothing, so nothing changed; one
//!   error names the file's version (content hash and modification time)
//!   and the wish, and pyfw goes back to the last wishes that did apply and
//!   goes on enforcing them (drift is repaired, polls go on). The same
//!   content would be refused again, so it is tried again only when the
//!   file changes, or on SIGHUP ("try again");
//! - new wishes that fail for a reason that may pass (a timeout, a held
//!   lock, a busy kernel: see `kernel::Error::is_refusal`) are tried again
//!   with backoff (`Outcome::retry_new`), and meanwhile the last wishes
//!   that applied are enforced, so that the host is never left without
//!   them between tries;
//! - at start-up there are no earlier wishes: wishes refused then stop the
//!   daemon (exit 1), as a file that does not load does. netfilter keeps
//!   what it had (a stop leaves the rules in place), and a unit that fails
//!   to start says so where an operator looks; a daemon that stayed up
//!   enforcing nothing would say it runs while it protects nothing. A
//!   passing failure at start-up is retried with backoff;
//! - the same bad content is reported once, not on every poll; SIGHUP
//!   reports it again, since the operator asked.

use std::collections::{HashSet, VecDeque};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::daemon::metrics::{Metrics, ReconcileResult};
use crate::kernel::{self, Backend};
use crate::plan::{Command, Plan};
use crate::reconcile::apply::{Cause, Event, Interrupt, Left};
use crate::reconcile::{self, Planned, Reconciler};
use crate::wishes::{self, LoadError, RuleItem, WishError, Wishes};

use super::file::{self, FileView, Read, Settling, Verdict};
use super::timing::{Fix, Trigger, Triggers};

/// What the daemon needs of a reconciler; [`Reconciler`] is the real one.
pub trait Reconcile: Send + 'static {
    /// Reads netfilter and plans, changing nothing.
    fn plan(&mut self, wishes: &Wishes) -> Result<Planned, reconcile::Error>;
    /// Applies that plan, all or nothing (reading nothing more unless it
    /// fails); returns how many commands ran.
    fn apply(
        &mut self,
        planned: Planned,
        on: &mut dyn FnMut(Event),
    ) -> Result<usize, reconcile::Error>;
    /// What stops an apply in flight at its next transaction, putting back
    /// what ran.
    fn interrupt(&self) -> Interrupt;
    /// The next plan reads every wished set in full, not trusting any
    /// summary, nor any chain found lonely before (SIGHUP: the operator
    /// asked for a fresh look).
    fn read_afresh_next(&mut self) {}
}

impl<B: Backend + Send + 'static> Reconcile for Reconciler<B> {
    fn plan(&mut self, wishes: &Wishes) -> Result<Planned, reconcile::Error> {
        Reconciler::plan(self, wishes)
    }

    fn apply(
        &mut self,
        planned: Planned,
        on: &mut dyn FnMut(Event),
    ) -> Result<usize, reconcile::Error> {
        Reconciler::apply(self, planned, on).map(|a| a.ran)
    }

    fn interrupt(&self) -> Interrupt {
        Reconciler::interrupt(self)
    }

    fn read_afresh_next(&mut self) {
        Reconciler::read_afresh_next(self)
    }
}

/// Wishes and the bytes they were read from.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub wishes: Wishes,
    pub text: Vec<u8>,
    /// The file's modification time when it was read.
    pub modified: Option<SystemTime>,
    /// What the read found, to skip reading an unchanged file on a poll
    /// (see [`file::Stamp`]); `None` for wishes not read from the file.
    pub stamp: Option<file::Stamp>,
    /// `file::version` without the time, worked out once: hashing a 22 MB
    /// file for `STATUS=` after every poll was a third of the poll's CPU.
    enforced: String,
}

impl Loaded {
    /// The wishes read by `read`.
    fn new(wishes: Wishes, read: Read) -> Loaded {
        Loaded {
            wishes,
            stamp: Some(read.stamp()),
            enforced: file::version(&read.text, None),
            text: read.text,
            modified: read.modified,
        }
    }

    /// `content HASH, modified TIME`, for the log.
    fn version(&self) -> String {
        match self.modified {
            Some(t) => format!(
                "{}, modified {}",
                self.enforced,
                humantime::format_rfc3339_seconds(t)
            ),
            None => self.enforced.clone(),
        }
    }
}

/// Reads and validates the wishes file, keeping its bytes for comparing
/// with later reads.
pub fn load(path: &Path) -> Result<Loaded, LoadError> {
    let read = Read::from(path).map_err(|e| file_error(path, format!("cannot read: {e}")))?;
    let wishes = parse(path, &read.text)?;
    Ok(Loaded::new(wishes, read))
}

fn parse(path: &Path, text: &[u8]) -> Result<Wishes, LoadError> {
    let s = std::str::from_utf8(text).map_err(|_| file_error(path, "is not UTF-8 text".into()))?;
    wishes::parse(s, path)
}

fn file_error(path: &Path, message: String) -> LoadError {
    LoadError {
        errors: vec![WishError {
            path: path.to_path_buf(),
            line: 0,
            wish: None,
            message,
        }],
    }
}

/// Logs a wishes file that does not load: one event, every problem in it.
/// The fields name the first problem's place.
pub fn log_invalid(e: &LoadError, path: &Path, what: &str) {
    let first = e.errors.first();
    let line = first.map(|w| w.line).filter(|l| *l > 0);
    let at = Label::parse(first.and_then(|w| w.wish.as_deref()).unwrap_or(""));
    let all: Vec<String> = e.errors.iter().map(ToString::to_string).collect();
    tracing::error!(
        file = %path.display(),
        line,
        family = at.family,
        table = at.table,
        chain = at.chain,
        ipset = at.ipset,
        wish = at.wish,
        "{what}: {}",
        all.join("; ")
    );
}

/// A wish's label (`table/chain/NAME`, `ip6tables:table/chain`,
/// `ipset NAME`) as log fields; `wish` is always the bare name, as in the
/// command logs, so that `journalctl WISH=NAME` finds both.
#[derive(Debug, Default, PartialEq, Eq)]
struct Label<'a> {
    family: Option<&'static str>,
    table: Option<&'a str>,
    chain: Option<&'a str>,
    ipset: Option<&'a str>,
    wish: Option<&'a str>,
}

impl<'a> Label<'a> {
    fn parse(label: &'a str) -> Label<'a> {
        if label.is_empty() {
            return Label::default();
        }
        if let Some(set) = label.strip_prefix("ipset ") {
            return Label {
                ipset: Some(set),
                wish: Some(set),
                ..Label::default()
            };
        }
        let (family, rest) = match (label.strip_prefix("ip6tables:"), label.strip_prefix("nft ")) {
            (Some(rest), _) => ("ipv6", rest),
            // An owned nftables table: `nft inet pyfw/CHAIN/RULE`.
            (_, Some(rest)) => ("nft", rest),
            _ => ("ipv4", label),
        };
        let mut parts = rest.splitn(3, '/');
        Label {
            family: Some(family),
            table: parts.next(),
            chain: parts.next(),
            ipset: None,
            wish: parts.next(),
        }
    }
}

/// One run's instructions from the loop.
#[derive(Clone, Debug)]
pub struct Job {
    pub triggers: Triggers,
    /// Corrections on hold because of a fight (see `timing::Fights`).
    pub held: HashSet<String>,
    /// What the file watch knows of writes to the wishes file.
    pub file: FileView,
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunResult {
    /// A file event that changed nothing; netfilter was not read.
    Skipped,
    InSync,
    Repaired {
        fixes: Vec<Fix>,
        ran: usize,
    },
    /// Drift found, but its correction is held back during a fight.
    Held,
    /// Retry later. The message is for the log.
    Failed(String),
    /// The daemon cannot go on (new wishes rejected at start-up, with no
    /// earlier wishes to fall back to). Already logged.
    Fatal(String),
}

/// A run's result and the trigger it is reported under.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub trigger: &'static str,
    pub result: RunResult,
    /// New wishes failed for a reason that may pass, and the last wishes
    /// that applied were enforced instead: try the new ones again later.
    pub retry_new: bool,
    /// The file has new content that has not settled: read it again after
    /// this long.
    pub recheck: Option<Duration>,
}

impl Outcome {
    fn new(trigger: &'static str, result: RunResult) -> Outcome {
        Outcome {
            trigger,
            result,
            retry_new: false,
            recheck: None,
        }
    }
}

/// Content that was reported as bad, so that it is reported once.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Bad {
    /// Content that does not load.
    Invalid(Vec<u8>),
    /// Content whose wishes the kernel tools refused.
    Refused(Vec<u8>),
    /// Content whose wishes failed for a reason that may pass: tried again
    /// on a retry.
    Waiting(Vec<u8>),
    Unreadable(String),
}

impl Bad {
    fn text(&self) -> Option<&[u8]> {
        match self {
            Bad::Invalid(t) | Bad::Refused(t) | Bad::Waiting(t) => Some(t),
            Bad::Unreadable(_) => None,
        }
    }
}

/// New (unproven) wishes the kernel tools did not take.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Untaken {
    /// The tools refused them: the same content would be refused again.
    refused: bool,
    /// iptables refused rules while pyfw learned their forms (or checked
    /// them): each is a wish of its own, said on a line of its own.
    rejected: bool,
    /// Each wish the tools named, or whose commands failed (`table/chain/
    /// NAME`, `ipset NAME`) when known, with the tools' words (and what
    /// the apply left).
    wishes: Vec<(Option<String>, String)>,
}

/// The wishes in force and the reconciler that enforces them.
pub struct Core<R> {
    rec: R,
    path: PathBuf,
    active: Loaded,
    /// True once `active` applied (or was found in force).
    proven: bool,
    /// What to go back to if iptables rejects `active` before it ever
    /// applied: the last wishes that applied (`true`) or, if none did yet,
    /// the ones loaded before (`false`).
    fallback: Option<(Loaded, bool)>,
    reported: Option<Bad>,
    /// The content (its hash) whose plan warnings were logged: they are
    /// said once per content (and again on SIGHUP).
    warned: Option<String>,
    /// New content waiting to settle.
    settling: Settling,
    /// The lock held while netfilter is read and changed (`kernel::lock`).
    writer_lock: Option<String>,
    /// Where to report what runs find and do (`pyfw daemon --metrics`);
    /// `None` costs nothing.
    metrics: Option<Arc<Metrics>>,
}

impl<R: Reconcile> Core<R> {
    pub fn new(rec: R, path: PathBuf, loaded: Loaded, writer_lock: Option<String>) -> Core<R> {
        Core {
            rec,
            path,
            active: loaded,
            proven: false,
            fallback: None,
            reported: None,
            warned: None,
            settling: Settling::default(),
            writer_lock,
            metrics: None,
        }
    }

    /// Reports to `metrics` from now on. The wishes the core starts with
    /// loaded (that is how it got them), so the wishes gauge starts at 1.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Core<R> {
        metrics.observe_wishes_load(true);
        self.metrics = Some(metrics);
        self
    }

    /// Reports that the wishes file was read: `ok` when it loaded.
    fn observe_wishes_load(&self, ok: bool) {
        if let Some(m) = &self.metrics {
            m.observe_wishes_load(ok);
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn reconciler(&self) -> &R {
        &self.rec
    }

    /// The wishes in force.
    pub fn wishes(&self) -> &Wishes {
        &self.active.wishes
    }

    /// True while new wishes that failed for a passing reason wait to be
    /// tried again.
    pub fn waiting(&self) -> bool {
        matches!(self.reported, Some(Bad::Waiting(_)))
    }

    /// What is enforced, in words: "the last wishes that applied" once
    /// they have.
    fn enforced(&self, proven: bool, loaded: &Loaded) -> String {
        let what = match proven {
            true => "the last wishes that applied",
            false => "the wishes loaded before",
        };
        format!("{what} ({})", loaded.version())
    }

    /// A one-line status for `systemctl status`: which wishes are enforced
    /// (by content hash), and what is wrong with the file, if anything.
    pub fn status(&self) -> String {
        let enforcing = self.enforcing();
        match self.metrics.as_ref().and_then(|m| m.unserved()) {
            Some(why) => format!("{enforcing}; metrics not served: {why}"),
            None => enforcing,
        }
    }

    /// Which wishes are enforced, and what is wrong with the file.
    fn enforcing(&self) -> String {
        let path = self.path.display();
        let enforced = &self.active.enforced;
        let what = match self.proven {
            true => "the last wishes that applied",
            false => "the last good wishes",
        };
        let new = |t: &[u8]| file::version(t, None);
        match &self.reported {
            None => format!("enforcing {path} ({enforced})"),
            Some(Bad::Invalid(_)) => {
                format!("{path} is invalid; enforcing {what} ({enforced})")
            }
            Some(Bad::Refused(t)) => format!(
                "{path} ({}) is refused by the kernel; enforcing {what} ({enforced})",
                new(t)
            ),
            Some(Bad::Waiting(t)) => format!(
                "{path} ({}) could not be applied yet and is tried again; enforcing {what} \
                 ({enforced})",
                new(t)
            ),
            Some(Bad::Unreadable(_)) => {
                format!("{path} cannot be read; enforcing {what} ({enforced})")
            }
        }
    }

    /// One run: re-read the file, then reconcile unless nothing can have
    /// changed. Its end is reported to the metrics, if any.
    pub fn run(&mut self, job: &Job) -> Outcome {
        let outcome = self.run_once(job);
        if let Some(m) = &self.metrics {
            let result = match &outcome.result {
                RunResult::Skipped => ReconcileResult::Skipped,
                RunResult::InSync => ReconcileResult::InSync,
                RunResult::Repaired { .. } => ReconcileResult::Repaired,
                RunResult::Held => ReconcileResult::Held,
                RunResult::Failed(_) | RunResult::Fatal(_) => ReconcileResult::Failed,
            };
            m.observe_reconcile(outcome.trigger, result);
        }
        outcome
    }

    fn run_once(&mut self, job: &Job) -> Outcome {
        let startup = job.triggers.contains(Trigger::Startup);
        let sighup = job.triggers.contains(Trigger::Sighup);
        let mut recheck = None;
        let changed = self.refresh(job, &mut recheck);
        if !changed && job.triggers.only(Trigger::FileEvent) {
            let mut o = Outcome::new("file-event", RunResult::Skipped);
            o.recheck = recheck;
            return o;
        }
        let named = if startup {
            Some("startup")
        } else if sighup {
            Some("sighup")
        } else if changed {
            Some("wishes-changed")
        } else {
            None
        };
        let quiet = if job.triggers.contains(Trigger::Retry) {
            "retry"
        } else if job.triggers.contains(Trigger::Netfilter) {
            "event"
        } else {
            "timer"
        };
        if sighup {
            self.rec.read_afresh_next();
        }
        let mut retry_new = false;
        loop {
            match self.reconcile(named, &job.held) {
                Ok(result) => {
                    let trigger = match &result {
                        RunResult::Repaired { .. } | RunResult::Held => named.unwrap_or("drift"),
                        _ => named.unwrap_or(quiet),
                    };
                    let mut o = Outcome::new(trigger, result);
                    o.retry_new = retry_new;
                    o.recheck = recheck;
                    return o;
                }
                Err(untaken) => {
                    // New wishes the kernel did not take: nothing changed
                    // (all or nothing). Back to the last good ones, or give
                    // up if there are none (only a refusal comes here then).
                    let Some((previous, proven)) = self.fallback.take() else {
                        let message = self.refuse_active(&untaken, None, startup);
                        return Outcome::new(named.unwrap_or(quiet), RunResult::Fatal(message));
                    };
                    if untaken.refused {
                        self.refuse_active(&untaken, Some((&previous, proven)), startup);
                    } else {
                        self.defer_active(&untaken, &previous, proven);
                        retry_new = true;
                    }
                    self.active = previous;
                    self.proven = proven;
                }
            }
        }
    }

    /// Re-reads the wishes file; true when new wishes were loaded. New
    /// content is taken only once it is finished (see `daemon::file`);
    /// until then `recheck` says when to look again.
    fn refresh(&mut self, job: &Job, recheck: &mut Option<Duration>) -> bool {
        let force = job.triggers.contains(Trigger::Sighup);
        let path = self.path.clone();
        if let FileView::Watched { writing: true, .. } = job.file {
            self.say_writing(force);
            return false;
        }
        // A run with nothing reported or settling need not read a file
        // its stamp vouches for (no signal, no retry: those always read).
        // File events included: the watch wakes a run for anything in the
        // file's directory (another file created, renamed, a log written
        // beside it), and reading a 22 MB blocklist for each was most of
        // an idle daemon's CPU.
        let quiet = !force && !job.triggers.contains(Trigger::Retry);
        if quiet && self.reported.is_none() && self.active.stamp.is_some_and(|s| s.unchanged(&path))
        {
            self.settling.clear();
            return false;
        }
        let read = match Read::from(&path) {
            Ok(read) => read,
            Err(e) => {
                self.unreadable(&e, force);
                return false;
            }
        };
        if read.text == self.active.text {
            self.active.stamp = Some(read.stamp());
            self.settling.clear();
            self.back_in_force(force);
            return false;
        }
        // A retry (after new wishes failed for a passing reason) tries
        // them again; other bad content waits for a change, or SIGHUP.
        let retrying = job.triggers.contains(Trigger::Retry)
            && matches!(&self.reported, Some(Bad::Waiting(t)) if *t == read.text);
        let reported = self.reported.as_ref().and_then(Bad::text);
        if !force && !retrying && reported == Some(read.text.as_slice()) {
            return false;
        }
        match self.settling.check(&read, job.file, || Read::from(&path)) {
            Verdict::Finished => {}
            Verdict::Writing => {
                self.say_writing(force);
                return false;
            }
            Verdict::Wait(after) => {
                self.say_settling(&read, after, force);
                *recheck = Some(after);
                return false;
            }
        }
        self.take(read, retrying)
    }

    /// The file cannot be read: said once per problem (and on SIGHUP).
    fn unreadable(&mut self, e: &std::io::Error, force: bool) {
        let shown = self.path.display();
        let bad = Bad::Unreadable(e.to_string());
        if force || self.reported.as_ref() != Some(&bad) {
            tracing::error!(
                file = %shown,
                "{shown}: cannot read: {e}; nothing changed, still enforcing {}",
                self.enforced(self.proven, &self.active)
            );
            self.reported = Some(bad);
            // Counted as often as it is reported: once per problem, and
            // again on SIGHUP.
            self.observe_wishes_load(false);
        }
    }

    /// The file holds the wishes in force again.
    fn back_in_force(&mut self, force: bool) {
        let shown = self.path.display();
        if self.reported.take().is_some() {
            tracing::info!(file = %shown, "{shown} is back to the wishes in force");
            self.observe_wishes_load(true);
        } else if force {
            tracing::info!(file = %shown, "{shown} is unchanged");
            self.observe_wishes_load(true);
        }
    }

    /// The watch says a writer has the file open: its content waits.
    fn say_writing(&self, force: bool) {
        let shown = self.path.display();
        let message = format!(
            "{shown} is being written (written to, not closed yet): it is read once the \
             writer closes it; still enforcing {}",
            self.enforced(self.proven, &self.active)
        );
        match force {
            true => tracing::info!(file = %shown, "{message}"),
            false => tracing::debug!(file = %shown, "{message}"),
        }
    }

    /// New content that has not settled yet.
    fn say_settling(&self, read: &Read, after: Duration, force: bool) {
        let shown = self.path.display();
        let message = format!(
            "{shown} has new content ({}) that has not settled; reading it again in {}",
            read.version(),
            humantime::format_duration(Duration::from_millis(after.as_millis() as u64))
        );
        match force {
            true => tracing::info!(file = %shown, "{message}"),
            false => tracing::debug!(file = %shown, "{message}"),
        }
    }

    /// Loads finished new content: it becomes the wishes in force (not
    /// proven yet), or, if it does not load, is reported. True when loaded.
    fn take(&mut self, read: Read, retrying: bool) -> bool {
        let path = self.path.clone();
        let shown = path.display();
        match parse(&path, &read.text) {
            Ok(wishes) => {
                let (chains, sets) = (wishes.chains.len(), wishes.ipsets.len());
                let loaded = Loaded::new(wishes, read);
                match retrying {
                    true => tracing::info!(
                        file = %shown,
                        "{shown}: trying the new wishes ({}) again",
                        loaded.version()
                    ),
                    false => tracing::info!(
                        file = %shown,
                        "{shown} changed: read {chains} chain wish(es) and {sets} ipset wish(es) \
                         ({})",
                        loaded.version()
                    ),
                }
                let previous = std::mem::replace(&mut self.active, loaded);
                if self.proven || self.fallback.is_none() {
                    self.fallback = Some((previous, self.proven));
                }
                self.proven = false;
                if !retrying {
                    self.reported = None;
                    self.observe_wishes_load(true);
                }
                true
            }
            Err(e) => {
                let what = format!(
                    "invalid wishes ({}); nothing changed, still enforcing {}",
                    read.version(),
                    self.enforced(self.proven, &self.active)
                );
                log_invalid(&e, &path, &what);
                self.reported = Some(Bad::Invalid(read.text));
                self.observe_wishes_load(false);
                false
            }
        }
    }

    /// Logs that the kernel tools refused the active (unproven) wishes and
    /// marks their content as reported; `fallback` is what is enforced
    /// instead, if anything. Returns the message.
    fn refuse_active(
        &mut self,
        untaken: &Untaken,
        fallback: Option<(&Loaded, bool)>,
        startup: bool,
    ) -> String {
        let consequence = match (fallback, startup) {
            (Some((previous, proven)), _) => format!(
                "these wishes ({}) are not applied: nothing changed, still enforcing {}; they \
                 are tried again when the file changes, or on SIGHUP",
                self.active.version(),
                self.enforced(proven, previous)
            ),
            (None, true) => format!(
                "cannot start: there are no earlier wishes to fall back to ({})",
                self.active.version()
            ),
            (None, false) => format!(
                "exiting: there are no earlier wishes to fall back to ({})",
                self.active.version()
            ),
        };
        let message = self.log_untaken(untaken, &consequence);
        self.reported = Some(Bad::Refused(self.active.text.clone()));
        // The file loaded, but its wishes cannot be enforced: to whoever
        // watches, as bad as a file that does not load.
        self.observe_wishes_load(false);
        message
    }

    /// Logs that the active (unproven) wishes failed for a reason that may
    /// pass, and that `previous` is enforced until they are tried again.
    fn defer_active(&mut self, untaken: &Untaken, previous: &Loaded, proven: bool) {
        let consequence = format!(
            "these wishes ({}) are not applied yet: nothing changed, still enforcing {} \
             meanwhile; they are tried again shortly",
            self.active.version(),
            self.enforced(proven, previous)
        );
        self.log_untaken(untaken, &consequence);
        let waiting = Bad::Waiting(self.active.text.clone());
        if self.reported.as_ref() != Some(&waiting) {
            self.observe_wishes_load(false);
        }
        self.reported = Some(waiting);
    }

    /// One error for wishes the kernel did not take, for each wish it
    /// names: the file and line, the wish, the tools' words, then
    /// `consequence`. Returns them, a line each.
    fn log_untaken(&self, untaken: &Untaken, consequence: &str) -> String {
        let path = self.path.display().to_string();
        let what = match (untaken.rejected, untaken.refused) {
            (true, _) => "the kernel refuses this wish",
            (false, true) => "the kernel refused the new wishes",
            (false, false) => "the new wishes could not be applied",
        };
        let mut all = Vec::new();
        for (label, words) in &untaken.wishes {
            let label_text = label.as_deref().unwrap_or("");
            let line = locate_wish(&self.active.wishes, label_text);
            let at = match line {
                Some(l) => format!("{path}:{l}"),
                None => path.clone(),
            };
            let message = match label {
                Some(label) => format!("{at}: {label}: {what}: {words}; {consequence}"),
                None => format!("{at}: {what}: {words}; {consequence}"),
            };
            let at = Label::parse(label_text.split(", ").next().unwrap_or(""));
            tracing::error!(
                file = %path,
                line,
                family = at.family,
                table = at.table,
                chain = at.chain,
                ipset = at.ipset,
                wish = at.wish,
                "{message}"
            );
            all.push(message);
        }
        all.join("\n")
    }

    /// Reads, plans and, unless held back, applies. `Err` only for new
    /// wishes the kernel did not take (see [`Core::failure`]).
    fn reconcile(
        &mut self,
        named: Option<&'static str>,
        held: &HashSet<String>,
    ) -> Result<RunResult, Untaken> {
        let _lock = match self.writer_turn() {
            Ok(lock) => lock,
            Err(e) => return Ok(RunResult::Failed(e)),
        };
        // `pyfw apply --confirm` reverted this very content: applying it
        // again would undo the revert (see `crate::reconcile::confirm`).
        if crate::reconcile::confirm::daemon_holds_back(&self.active.text) {
            return Ok(RunResult::Held);
        }
        let planned = match self.rec.plan(&self.active.wishes) {
            Ok(planned) => planned,
            Err(e) => return self.failure(e, None),
        };
        self.warn_once(&planned.warnings, named == Some("sighup"));
        let plan = &planned.plan;
        if let Some(m) = &self.metrics {
            m.observe_plan(&self.active.wishes, plan);
        }
        if plan.is_empty() {
            return self.in_sync(planned);
        }
        let fixes = fixes(plan);
        let urgent = named.is_some();
        if !urgent && fixes.iter().any(|f| held.contains(&f.key)) {
            tracing::debug!(
                "drift held back during a fight: {}",
                reasons(plan).join("; ")
            );
            return Ok(RunResult::Held);
        }
        let trigger = named.unwrap_or("drift");
        log_drift(trigger, plan);
        self.repair(planned, trigger, fixes)
    }

    /// Waits for the writer's turn when the daemon takes it (see
    /// [`crate::kernel::lock`]); `Err` says why it could not.
    fn writer_turn(&self) -> Result<Option<crate::kernel::lock::Lock>, String> {
        let Some(name) = &self.writer_lock else {
            return Ok(None);
        };
        crate::kernel::lock::wait(name, crate::kernel::lock::WRITER_WAIT, &mut |busy| {
            tracing::info!("{busy}; waiting for it to finish");
        })
        .map(Some)
        .map_err(|e| e.to_string())
    }

    /// Applies a plan that changes netfilter, logging each transaction and
    /// command as it goes (see [`Progress`]).
    fn repair(
        &mut self,
        planned: Planned,
        trigger: &'static str,
        fixes: Vec<Fix>,
    ) -> Result<RunResult, Untaken> {
        // New wishes: what each command serves, to name the wish whose
        // transaction the kernel refuses.
        let serves: Vec<(usize, String)> = match self.proven {
            true => Vec::new(),
            false => numbered(&planned.plan)
                .map(|(at, c)| (at, serves(c)))
                .collect(),
        };
        let started = Instant::now();
        let metrics = self.metrics.as_deref();
        let mut progress = Progress::new(trigger, metrics);
        let result = self.rec.apply(planned, &mut |event| progress.on(event));
        if let Some(m) = metrics {
            m.observe_apply(started.elapsed());
        }
        match result {
            Ok(ran) => {
                self.proved();
                tracing::info!(
                    trigger,
                    "repaired ({trigger}): ran {ran} command(s) in {} ms; netfilter matches {}",
                    started.elapsed().as_millis(),
                    self.path.display()
                );
                Ok(RunResult::Repaired { fixes, ran })
            }
            Err(e) => {
                // One line for the attempt (see `Core::failure`), not one
                // for each command of the transaction that failed: the
                // tools named the one they refused, or said none.
                tracing::debug!(
                    trigger,
                    "the apply failed{}: {e}",
                    (progress.transaction.as_deref())
                        .map(|t| format!(" (in `{t}`)"))
                        .unwrap_or_default()
                );
                let in_flight = progress.in_flight;
                drop(progress.pending);
                // Commands are numbered from 1 in the events.
                let failing = in_flight.start.saturating_sub(1)..in_flight.end.saturating_sub(1);
                let named: Vec<String> = (serves.into_iter())
                    .filter(|(at, _)| failing.contains(at))
                    .map(|(_, label)| label)
                    .collect();
                self.failure(e, name_wishes(&named))
            }
        }
    }

    /// Logs what the plan found likely not meant, each with its wish's
    /// file and line: once per content of the file, and again when the
    /// operator asks (`again`, SIGHUP).
    fn warn_once(&mut self, warnings: &[reconcile::PlanWarning], again: bool) {
        if warnings.is_empty() {
            return;
        }
        // By content hash: comparing the text itself cost a poll the
        // length of a big wishes file in memcmp.
        let content = &self.active.enforced;
        if !again && self.warned.as_ref() == Some(content) {
            return;
        }
        let path = self.path.display().to_string();
        for w in warnings {
            let at = Label::parse(&w.label);
            tracing::warn!(
                file = %path,
                line = self.active.wishes.line_of(&w.label),
                family = at.family,
                table = at.table,
                chain = at.chain,
                ipset = at.ipset,
                wish = at.wish,
                "{}: {}",
                self.active.wishes.locate(&w.label),
                w.message
            );
        }
        self.warned = Some(content.clone());
    }

    /// Netfilter matches the wishes. Changes to pyfw's record alone (what a
    /// run that died between its commit and its record left) are made
    /// quietly: they change no rule.
    fn in_sync(&mut self, planned: Planned) -> Result<RunResult, Untaken> {
        if !planned.plan.record.is_empty() {
            let mut on = |e: Event| {
                if let Event::Recording { line } = e {
                    tracing::debug!(command = %line, "recording ownership: {line}");
                }
            };
            if let Err(e) = self.rec.apply(planned, &mut on) {
                return self.failure(e, None);
            }
        }
        self.proved();
        Ok(RunResult::InSync)
    }

    /// The active wishes are in force.
    fn proved(&mut self) {
        self.proven = true;
        // Compared in place: a clone of the text for this, on every poll
        // in sync, cost a 22 MB blocklist's copy each time.
        if matches!(&self.reported, Some(Bad::Waiting(t)) if *t == self.active.text) {
            tracing::info!(
                file = %self.path.display(),
                "the new wishes ({}) applied",
                self.active.version()
            );
            self.reported = None;
            self.observe_wishes_load(true);
        }
    }

    /// A failed run: `Err` when new (unproven) wishes were not taken and
    /// the run should go back to the last good ones; a refusal always
    /// does (at worst, with nothing to go back to, the daemon stops), a
    /// passing failure only when there is something to go back to. Wishes
    /// that applied before are never abandoned: what fails them now is in
    /// the host, and the run is retried with backoff. `label` names the
    /// wish whose commands failed, when known.
    fn failure(&self, e: reconcile::Error, label: Option<String>) -> Result<RunResult, Untaken> {
        if self.proven {
            return Ok(RunResult::Failed(self.located(&e)));
        }
        match untaken(&e, label) {
            Some(u) if u.refused || self.fallback.is_some() => Err(u),
            _ => Ok(RunResult::Failed(self.located(&e))),
        }
    }

    /// A reconcile error with the file and line of each wish it names.
    fn located(&self, e: &reconcile::Error) -> String {
        let wishes = &self.active.wishes;
        match e {
            reconcile::Error::Rejected { .. } => one_line(&e.to_string().replace('\n', "; ")),
            reconcile::Error::Apply(a) => match (a.refused(), a.kernel_error()) {
                (Some(refused), _) => {
                    let label = refused.label();
                    let text = e.to_string();
                    let rest = text.strip_prefix(&format!("{label}: ")).unwrap_or(&text);
                    one_line(&format!("{}: {rest}", wishes.locate(&label)))
                }
                (None, Some(kernel::Error::Rejected(list))) => {
                    let each: Vec<String> = (list.iter())
                        .map(|r| format!("{}: {}", wishes.locate(&r.label), r.message))
                        .collect();
                    one_line(&format!("{}; {}", each.join("; "), a.left))
                }
                _ => one_line(&e.to_string()),
            },
            _ => one_line(&e.to_string()),
        }
    }
}

/// Why the kernel did not take new wishes, if a reconcile error says so:
/// not for an interrupt (the daemon is stopping), nor for an apply that
/// committed (only pyfw's record trim failed: the wishes are in force).
fn untaken(e: &reconcile::Error, label: Option<String>) -> Option<Untaken> {
    if let reconcile::Error::Rejected { refused, .. } = e {
        return Some(Untaken {
            refused: true,
            rejected: true,
            wishes: (refused.iter())
                .map(|r| (Some(r.label.clone()), one_line(&r.message)))
                .collect(),
        });
    }
    let cause = cause_of(e)?;
    if let reconcile::Error::Apply(a) = e
        && (matches!(a.left, Left::Applied) || matches!(a.cause, Cause::RecordAfter(_)))
    {
        return None;
    }
    if let kernel::Error::Rejected(list) = cause {
        return Some(Untaken {
            refused: true,
            rejected: true,
            wishes: (list.iter())
                .map(|r| (Some(r.label.clone()), one_line(&r.message)))
                .collect(),
        });
    }
    if let reconcile::Error::Apply(a) = e
        && let Some(refused) = a.refused()
    {
        // The command the tools refused names its wish.
        let label = refused.label();
        let text = e.to_string();
        let rest = text.strip_prefix(&format!("{label}: ")).unwrap_or(&text);
        return Some(Untaken {
            refused: cause.is_refusal(),
            rejected: false,
            wishes: vec![(Some(label), one_line(rest))],
        });
    }
    let message = match e {
        // The apply's error says what it left; the learn step's names the
        // file, which the log line does already.
        reconcile::Error::Apply(_) => e.to_string(),
        _ => cause.to_string(),
    };
    Some(Untaken {
        refused: cause.is_refusal(),
        rejected: false,
        wishes: vec![(label, one_line(&message))],
    })
}

/// The tools' words on one line, without iptables' "Try `iptables -h' or
/// 'iptables --help' for more information." advice.
fn one_line(text: &str) -> String {
    let said: Vec<&str> = (text.lines().map(str::trim))
        .map(|l| match l.strip_prefix("Try `") {
            Some(advice) => advice
                .split_once("information.")
                .map_or("", |(_, rest)| rest),
            None => l,
        })
        .filter(|l| !l.is_empty())
        .collect();
    said.join(" ").replace(" ;", ";")
}

/// The wish a command serves, as labels name it: `table/chain/NAME` for a
/// rule, `ipset NAME` for a set, the chain for a policy.
fn serves(c: &Command) -> String {
    match &c.wish {
        Some(w) if !c.target.starts_with("ipset ") => format!("{}/{w}", c.target),
        _ => c.target.clone(),
    }
}

/// Logs what a plan corrects, a line per reason (commands in a row with
/// the same reason share it).
fn log_drift(trigger: &str, plan: &Plan) {
    let mut last_reason = "";
    for c in &plan.commands {
        if c.reason != last_reason {
            let at = Label::parse(&c.target);
            tracing::info!(
                trigger,
                family = at.family,
                table = at.table,
                chain = at.chain,
                ipset = at.ipset,
                wish = c.wish.as_deref(),
                "drift ({trigger}): {}",
                c.reason
            );
            last_reason = &c.reason;
        }
    }
}

/// An apply's progress as its events tell it, logged as it goes.
struct Progress<'m> {
    trigger: &'static str,
    metrics: Option<&'m Metrics>,
    /// Commands announced and not yet reported: a transaction announces
    /// all its commands, runs them at once, then reports each as done.
    /// Each is known by its command's address: a run of 100,000 members is
    /// not copied to be matched.
    pending: VecDeque<Announced>,
    /// The transaction in flight, as it runs, and its commands (numbered
    /// from 1).
    transaction: Option<String>,
    in_flight: Range<usize>,
}

impl<'m> Progress<'m> {
    fn new(trigger: &'static str, metrics: Option<&'m Metrics>) -> Progress<'m> {
        Progress {
            trigger,
            metrics,
            pending: VecDeque::new(),
            transaction: None,
            in_flight: 0..0,
        }
    }

    fn on(&mut self, event: Event) {
        let trigger = self.trigger;
        match event {
            Event::Transaction {
                index,
                total,
                line,
                commands,
            } => {
                tracing::info!(
                    trigger,
                    transaction = %line,
                    "transaction {index}/{total} (commands {}-{}): {line}",
                    commands.start,
                    commands.end.saturating_sub(1)
                );
                self.transaction = Some(line);
                self.in_flight = commands;
            }
            Event::Executing {
                index,
                total,
                count,
                command,
                line,
            } => self.pending.push_back(Announced {
                address: std::ptr::from_ref(command) as usize,
                numbers: numbers(index, count, total),
                line,
                target: command.target.clone(),
                wish: command.wish.clone(),
            }),
            Event::Done { command } => self.done(command),
            Event::RollingBack { command } => {
                tracing::warn!(trigger, command = %command, "rolling back: {command}");
            }
            Event::Recording { line } => {
                tracing::debug!(trigger, command = %line, "recording ownership: {line}");
            }
            // Progress events added later are logged, if only for debugging.
            #[allow(unreachable_patterns)]
            other => tracing::debug!(trigger, "{other:?}"),
        }
    }

    /// A command ran: the one announced at its address (else the first
    /// announced).
    fn done(&mut self, command: &Command) {
        if let Some(m) = self.metrics {
            m.observe_correction(command);
        }
        let address = std::ptr::from_ref(command) as usize;
        let at = self.pending.iter().position(|p| p.address == address);
        if let Some(done) = self.pending.remove(at.unwrap_or(0)) {
            let at = Label::parse(&done.target);
            let (numbers, line) = (&done.numbers, &done.line);
            tracing::info!(
                trigger = self.trigger,
                family = at.family,
                table = at.table,
                chain = at.chain,
                ipset = at.ipset,
                wish = done.wish.as_deref(),
                command = %line,
                result = "ok",
                exit_status = 0,
                "ran {numbers}: {line}"
            );
        }
    }
}

/// A command announced by an apply and not yet reported done: known by
/// its address, with what its log line says.
struct Announced {
    address: usize,
    /// `i/N`, or `i-j/N` for a run.
    numbers: String,
    line: String,
    target: String,
    wish: Option<String>,
}

/// `index/total`, or `index-last/total` for a run of `count` commands.
fn numbers(index: usize, count: usize, total: usize) -> String {
    match count {
        0 | 1 => format!("{index}/{total}"),
        n => format!("{index}-{}/{total}", index + n - 1),
    }
}

/// Each command of `plan` with the number (0-based) of the first command
/// it stands for, a run counting as its members.
fn numbered(plan: &Plan) -> impl Iterator<Item = (usize, &Command)> {
    plan.commands.iter().scan(0, |next, c| {
        let at = *next;
        *next += c.count();
        Some((at, c))
    })
}

/// The distinct wishes `serves` names, as one label (`a, b, c and 2
/// more`); `None` for none.
fn name_wishes(serves: &[String]) -> Option<String> {
    let mut names: Vec<&str> = Vec::new();
    for s in serves {
        if !names.contains(&s.as_str()) {
            names.push(s);
        }
    }
    match names.len() {
        0 => None,
        1..=3 => Some(names.join(", ")),
        n => Some(format!("{} and {} more", names[..3].join(", "), n - 3)),
    }
}

/// The I/O error at the bottom of a reconcile error.
fn cause_of(e: &reconcile::Error) -> Option<&kernel::Error> {
    if let reconcile::Error::Apply(a) = e {
        return a.kernel_error();
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(n) = s.downcast_ref::<kernel::Error>() {
            return Some(n);
        }
        source = s.source();
    }
    None
}

/// The line of rule `table/chain/NAME` (or `ip6tables:table/chain/NAME`),
/// or of set `ipset NAME`, in `wishes`; of the first, when `label` names
/// several.
fn locate_wish(wishes: &Wishes, label: &str) -> Option<u64> {
    let label = label.split(", ").next().unwrap_or("");
    if let Some(name) = label.strip_prefix("ipset ") {
        return (wishes.ipsets.iter())
            .find(|s| s.name == name)
            .map(|s| s.line);
    }
    if label.starts_with("nft ") {
        return wishes.line_of(label);
    }
    wishes.chains.iter().find_map(|chain| {
        chain.rules.iter().flatten().find_map(|item| match item {
            RuleItem::Named(r) if format!("{}/{}", chain.label(), r.name) == label => Some(r.line),
            _ => None,
        })
    })
}

/// The distinct corrections of a plan, keyed for fight detection.
pub fn fixes(plan: &Plan) -> Vec<Fix> {
    let mut out: Vec<Fix> = Vec::new();
    for c in &plan.commands {
        let key = format!(
            "{} {}",
            c.target,
            c.wish.as_deref().unwrap_or(c.reason.as_str())
        );
        if !out.iter().any(|f| f.key == key) {
            out.push(Fix {
                key,
                reason: c.reason.clone(),
            });
        }
    }
    out
}

fn reasons(plan: &Plan) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for c in &plan.commands {
        if !out.contains(&c.reason.as_str()) {
            out.push(&c.reason);
        }
    }
    out
}

/// A scripted reconciler for the daemon's unit tests: a "kernel" that holds
/// the names of the wished rules applied so far.
#[cfg(test)]
pub(crate) mod fake {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::plan::Program;
    use crate::reconcile::apply::{ApplyError, Cause, Left};
    use crate::state::Family;

    #[derive(Default)]
    pub struct World {
        /// Rule names in the kernel.
        pub kernel: Vec<String>,
        /// Another program deletes `allow_ssh` before every read.
        pub fighting: bool,
        /// How many of the next reads fail.
        pub fail_reads: usize,
        /// A read waits for this to receive (or close) first.
        pub gate: Option<std::sync::mpsc::Receiver<()>>,
        pub plans: usize,
        pub applies: usize,
        /// How many of the next applies of the wish `busy` fail for a
        /// passing reason (the xtables lock held).
        pub busy: usize,
        /// Applies that failed, by the wish that failed them.
        pub failed: Vec<String>,
    }

    #[derive(Clone, Default)]
    pub struct Fake(pub Arc<Mutex<World>>);

    impl Fake {
        pub fn world(&self) -> std::sync::MutexGuard<'_, World> {
            self.0.lock().unwrap()
        }
    }

    fn names(wishes: &Wishes) -> Vec<String> {
        wishes
            .chains
            .iter()
            .flat_map(|c| c.rule_names().map(String::from).collect::<Vec<_>>())
            .collect()
    }

    fn drift(world: &World, wishes: &Wishes) -> Plan {
        let commands = names(wishes)
            .into_iter()
            .filter(|n| !world.kernel.contains(n))
            .map(|name| Command {
                program: Program::Iptables(Family::V4),
                args: [
                    "-w",
                    "-t",
                    "filter",
                    "-A",
                    "INPUT",
                    "-m",
                    "comment",
                    "--comment",
                ]
                .iter()
                .map(|s| s.to_string())
                .chain([name.clone(), "-j".into(), "ACCEPT".into()])
                .collect(),
                undo: None,
                reason: format!("filter/INPUT: {name} missing"),
                target: "filter/INPUT".into(),
                wish: Some(name),
                members: Default::default(),
            })
            .collect();
        Plan {
            commands,
            ..Plan::default()
        }
    }

    /// The failure a wish named to fail scripts: `bad` (rejected), `refused`
    /// (the tool's error), `refused_tx` (a command refused in a
    /// transaction), `busy` (the xtables lock, while `busy` lasts).
    fn scripted_failure(w: &mut World, plan: &Plan, added: &[String]) -> Option<reconcile::Error> {
        let total = plan.commands.len();
        let failing = |w: &mut World, wish: &str, cause: kernel::Error| {
            w.failed.push(wish.to_string());
            reconcile::Error::Apply(ApplyError {
                cause: Cause::Kernel(cause),
                left: Left::RolledBack { transactions: 1 },
            })
        };
        let failed = |status: &str, stderr: &str| kernel::Error::Failed {
            command: "iptables-restore --noflush --wait".into(),
            status: status.into(),
            stderr: stderr.into(),
        };
        if added.iter().any(|n| n == "bad") {
            let e = kernel::Error::Rejected(vec![kernel::Rejection {
                label: "filter/INPUT/bad".into(),
                message: "iptables v1.8.9 (nf_tables): Bad ctstate \"BOGUS\"".into(),
            }]);
            return Some(failing(w, "bad", e));
        }
        if added.iter().any(|n| n == "refused") {
            let e = failed(
                "exit status: 2",
                "iptables v1.8.9 (nf_tables): Can't use -o with INPUT",
            );
            return Some(failing(w, "refused", e));
        }
        if let Some(k) = added.iter().position(|n| n == "refused_tx") {
            // The tool named the command it refused, in a transaction
            // of all the plan's commands.
            w.failed.push("refused_tx".into());
            let command = &plan.commands[k];
            return Some(reconcile::Error::Apply(ApplyError {
                cause: Cause::Refused {
                    refused: Box::new(crate::reconcile::apply::Refused {
                        index: k + 1,
                        total,
                        line: command.to_string(),
                        target: command.target.clone(),
                        wish: command.wish.clone(),
                        transaction: 1..total + 1,
                        words: "RULE_INSERT failed (Invalid argument)".into(),
                    }),
                    error: failed(
                        "exit status: 4",
                        "iptables-restore v1.8.9 (nf_tables): \nline 3: RULE_INSERT failed \
                         (Invalid argument): rule in chain INPUT",
                    ),
                },
                left: Left::RolledBack { transactions: 1 },
            }));
        }
        if added.iter().any(|n| n == "busy") && w.busy > 0 {
            w.busy -= 1;
            let e = failed(
                "exit status: 4",
                "Another app is currently holding the xtables lock. Stopped waiting after \
                 10s.",
            );
            return Some(failing(w, "busy", e));
        }
        None
    }

    impl Reconcile for Fake {
        fn plan(&mut self, wishes: &Wishes) -> Result<Planned, reconcile::Error> {
            let gate = self.world().gate.take();
            if let Some(g) = gate {
                let _ = g.recv();
            }
            let mut w = self.world();
            w.plans += 1;
            if w.fail_reads > 0 {
                w.fail_reads -= 1;
                return Err(reconcile::Error::Read(kernel::Error::Failed {
                    command: "iptables-save".into(),
                    status: "exit status: 4".into(),
                    stderr: "resource temporarily unavailable".into(),
                }));
            }
            if w.fighting {
                w.kernel.retain(|n| n != "allow_ssh");
            }
            let plan = drift(&w, wishes);
            // A wish named `lossy` is printed as another rule.
            let warnings = names(wishes)
                .into_iter()
                .filter(|n| n == "lossy")
                .map(|n| reconcile::PlanWarning {
                    label: format!("filter/INPUT/{n}"),
                    message: "iptables prints this rule as `-p tcp`, which is another rule".into(),
                })
                .collect();
            Ok(Planned {
                state: Default::default(),
                plan,
                comparison: crate::state::canon::Comparison::Kernel,
                deferred: Vec::new(),
                scope: crate::kernel::Scope::none(),
                warnings,
                nft: Default::default(),
            })
        }

        fn apply(
            &mut self,
            planned: Planned,
            on: &mut dyn FnMut(Event),
        ) -> Result<usize, reconcile::Error> {
            let mut w = self.world();
            let plan = planned.plan;
            let added: Vec<String> = plan
                .commands
                .iter()
                .filter_map(|c| c.wish.clone())
                .collect();
            let total = plan.commands.len();
            on(Event::Transaction {
                index: 1,
                total: 1,
                line: "iptables-restore --noflush --wait".into(),
                commands: 1..total + 1,
            });
            if let Some(e) = scripted_failure(&mut w, &plan, &added) {
                return Err(e);
            }
            for (i, command) in plan.commands.iter().enumerate() {
                on(Event::Executing {
                    index: i + 1,
                    total,
                    count: 1,
                    command,
                    line: command.to_string(),
                });
                on(Event::Done { command });
            }
            w.kernel.extend(added);
            w.applies += 1;
            Ok(total)
        }

        fn interrupt(&self) -> Interrupt {
            Interrupt::new()
        }
    }

    /// A wishes file with INPUT rules named `rules`.
    pub fn wishes_text(rules: &[&str]) -> String {
        let mut text =
            String::from("pyfw_wishes:\n  iptables:\n    filter:\n      INPUT:\n        rules:\n");
        for r in rules {
            let matcher = if *r == "bad" {
                "-m conntrack --ctstate BOGUS"
            } else {
                "-p tcp -m tcp --dport 22"
            };
            text.push_str(&format!(
                "        - {r}: {matcher} -m comment --comment {r} -j ACCEPT\n"
            ));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::fake::{Fake, wishes_text};
    use super::*;

    /// Log output captured for one test.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }
        fn errors(&self) -> Vec<String> {
            self.text()
                .lines()
                .filter(|l| l.contains("ERROR"))
                .map(String::from)
                .collect()
        }
    }

    /// Runs `f` with the log captured.
    fn logged<T>(f: impl FnOnce(&Captured) -> T) -> T {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .finish();
        tracing::subscriber::with_default(subscriber, || f(&captured))
    }

    struct Setup {
        _dir: tempfile::TempDir,
        path: PathBuf,
        fake: Fake,
        core: Core<Fake>,
    }

    fn setup(rules: &[&str]) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wishes.yaml");
        std::fs::write(&path, wishes_text(rules)).unwrap();
        let fake = Fake::default();
        let core = Core::new(fake.clone(), path.clone(), load(&path).unwrap(), None);
        Setup {
            _dir: dir,
            path,
            fake,
            core,
        }
    }

    /// A watched file that no one is writing; new content is taken at once.
    const WATCHED: FileView = FileView::Watched {
        writing: false,
        settle: Duration::ZERO,
    };

    fn job(triggers: &[Trigger]) -> Job {
        Job {
            triggers: Triggers::of(triggers),
            held: HashSet::new(),
            file: WATCHED,
        }
    }

    fn save(path: &Path, text: &str) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    fn fixes_of(result: &RunResult) -> Vec<String> {
        match result {
            RunResult::Repaired { fixes, .. } => fixes.iter().map(|f| f.key.clone()).collect(),
            other => panic!("expected a repair, got {other:?}"),
        }
    }

    #[test]
    fn runs_are_reported_under_the_trigger_that_explains_them() {
        let mut s = setup(&["allow_ssh"]);
        let o = s.core.run(&job(&[Trigger::Startup, Trigger::Timer]));
        assert_eq!(o.trigger, "startup");
        assert_eq!(fixes_of(&o.result), ["filter/INPUT allow_ssh"]);
        let o = s.core.run(&job(&[Trigger::Timer]));
        assert_eq!((o.trigger, o.result), ("timer", RunResult::InSync));
        // Another program removes the rule: the poll finds drift.
        s.fake.world().kernel.clear();
        let o = s.core.run(&job(&[Trigger::Timer]));
        assert_eq!(o.trigger, "drift");
        assert_eq!(fixes_of(&o.result), ["filter/INPUT allow_ssh"]);
        // A file event that changed nothing reads nothing.
        let plans = s.fake.world().plans;
        let o = s.core.run(&job(&[Trigger::FileEvent]));
        assert_eq!(o.result, RunResult::Skipped);
        assert_eq!(s.fake.world().plans, plans);
        // An edit is a wishes change.
        save(&s.path, &wishes_text(&["allow_ssh", "allow_http"]));
        let o = s.core.run(&job(&[Trigger::FileEvent, Trigger::Timer]));
        assert_eq!(o.trigger, "wishes-changed");
        assert_eq!(fixes_of(&o.result), ["filter/INPUT allow_http"]);
        // SIGHUP reconciles even with the file unchanged.
        let o = s.core.run(&job(&[Trigger::Sighup]));
        assert_eq!((o.trigger, o.result), ("sighup", RunResult::InSync));
    }

    #[test]
    fn the_log_names_the_drift_then_each_command_with_its_result() {
        let mut s = setup(&["allow_ssh"]);
        let log = logged(|log| {
            s.core.run(&job(&[Trigger::Startup]));
            log.text()
        });
        let drift = log
            .find("drift (startup): filter/INPUT: allow_ssh missing")
            .expect(&log);
        let ran = log
            .find(
                "ran 1/1: iptables -w -t filter -A INPUT -m comment --comment allow_ssh -j ACCEPT",
            )
            .expect(&log);
        assert!(drift < ran, "{log}");
        assert!(log.contains("result=\"ok\""), "{log}");
        assert!(log.contains("wish=\"allow_ssh\""), "{log}");
        assert!(log.contains("chain=\"INPUT\""), "{log}");
    }

    #[test]
    fn a_bad_edit_is_reported_once_and_changes_nothing() {
        let mut s = setup(&["allow_ssh"]);
        s.core.run(&job(&[Trigger::Startup]));
        logged(|log| {
            save(&s.path, "pyfw_wishes:\n  iptables: [oops\n");
            let o = s.core.run(&job(&[Trigger::FileEvent]));
            assert_eq!(o.result, RunResult::Skipped, "nothing to reconcile");
            assert_eq!(log.errors().len(), 1, "{}", log.text());
            assert!(
                log.errors()[0].contains(&format!("{}:2", s.path.display())),
                "names file and line: {}",
                log.text()
            );
            assert!(s.core.status().contains("invalid"));
            // Polls and more events: still enforcing, no new error.
            s.fake.world().kernel.clear();
            let o = s.core.run(&job(&[Trigger::Timer]));
            assert_eq!(fixes_of(&o.result), ["filter/INPUT allow_ssh"]);
            s.core.run(&job(&[Trigger::FileEvent]));
            s.core.run(&job(&[Trigger::Timer]));
            assert_eq!(log.errors().len(), 1, "{}", log.text());
            // SIGHUP asks again, so it is told again.
            s.core.run(&job(&[Trigger::Sighup]));
            assert_eq!(log.errors().len(), 2, "{}", log.text());
            // An unreadable file is no different.
            std::fs::remove_file(&s.path).unwrap();
            s.core.run(&job(&[Trigger::Timer]));
            s.core.run(&job(&[Trigger::Timer]));
            assert_eq!(log.errors().len(), 3, "{}", log.text());
            // Fixed: picked up.
            save(&s.path, &wishes_text(&["allow_ssh", "allow_http"]));
            let o = s.core.run(&job(&[Trigger::FileEvent]));
            assert_eq!(o.trigger, "wishes-changed");
            assert_eq!(s.fake.world().kernel, ["allow_ssh", "allow_http"]);
            assert!(!s.core.status().contains("invalid"));
        });
    }

    #[test]
    fn wishes_iptables_rejects_fall_back_to_the_last_good_ones() {
        let mut s = setup(&["allow_ssh"]);
        s.core.run(&job(&[Trigger::Startup]));
        logged(|log| {
            save(&s.path, &wishes_text(&["allow_ssh", "bad"]));
            let o = s.core.run(&job(&[Trigger::FileEvent]));
            assert_eq!(o.trigger, "wishes-changed");
            assert_eq!(o.result, RunResult::InSync, "back on the last good wishes");
            let errors = log.errors();
            assert_eq!(errors.len(), 1, "{}", log.text());
            assert!(
                errors[0].contains(&format!("{}:7: filter/INPUT/bad", s.path.display()))
                    && errors[0].contains("Bad ctstate")
                    && errors[0].contains("still enforcing the last wishes that applied"),
                "{}",
                errors[0]
            );
            // The last good wishes stay enforced; the error is not repeated.
            s.fake.world().kernel.clear();
            let o = s.core.run(&job(&[Trigger::Timer]));
            assert_eq!(fixes_of(&o.result), ["filter/INPUT allow_ssh"]);
            assert_eq!(log.errors().len(), 1, "{}", log.text());
            // Fixed: picked up.
            save(&s.path, &wishes_text(&["allow_ssh", "allow_http"]));
            let o = s.core.run(&job(&[Trigger::FileEvent]));
            assert_eq!(fixes_of(&o.result), ["filter/INPUT allow_http"]);
        });
    }

    #[test]
    fn wishes_rejected_at_startup_are_fatal() {
        for bad in ["bad", "refused"] {
            let mut s = setup(&["allow_ssh", bad]);
            let o = logged(|_| s.core.run(&job(&[Trigger::Startup])));
            let RunResult::Fatal(message) = o.result else {
                panic!("expected Fatal, got {:?}", o.result);
            };
            assert!(
                message.contains(&format!("filter/INPUT/{bad}")),
                "{message}"
            );
            assert!(message.contains("cannot start"), "{message}");
            assert!(s.fake.world().kernel.is_empty());
        }
    }

    /// `content HASH` of what `path` holds.
    fn content_of(path: &Path) -> String {
        file::version(&std::fs::read(path).unwrap(), None)
    }

    /// A transaction the kernel refuses at one command is one error line
    /// for the attempt, naming that command's wish with its file and line:
    /// for new wishes (which fall back to the last good ones) and for the
    /// wishes in force (retried).
    #[test]
    fn a_refused_transaction_is_one_error_naming_the_refused_wish() {
        let mut s = setup(&["allow_ssh"]);
        s.core.run(&job(&[Trigger::Startup]));
        logged(|log| {
            save(
                &s.path,
                &wishes_text(&["allow_ssh", "other", "refused_tx", "third"]),
            );
            let o = s.core.run(&job(&[Trigger::FileEvent]));
            assert_eq!(o.result, RunResult::InSync, "back on the last good wishes");
            let errors = log.errors();
            assert_eq!(errors.len(), 1, "one line for the attempt\n{}", log.text());
            for needle in [
                &format!("{}:8: filter/INPUT/refused_tx: ", s.path.display()),
                "command 2/3 failed",
                "RULE_INSERT failed (Invalid argument)",
                "its transaction (commands 1-3) changed nothing",
                "wish=\"refused_tx\"",
            ] {
                assert!(errors[0].contains(needle), "{needle}: {}", errors[0]);
            }
            assert!(!errors[0].contains("other") && !errors[0].contains("third"));
        });
        // In force already (the fake's kernel took them some other way):
        // the retried failure names the wish with its file and line too.
        let mut s = setup(&["allow_ssh"]);
        s.core.run(&job(&[Trigger::Startup]));
        save(&s.path, &wishes_text(&["allow_ssh", "refused_tx"]));
        s.fake.world().kernel.push("refused_tx".into());
        s.core.run(&job(&[Trigger::FileEvent]));
        s.fake.world().kernel.clear();
        let o = s.core.run(&job(&[Trigger::Timer]));
        let RunResult::Failed(message) = o.result else {
            panic!("{o:?}");
        };
        assert!(
            message.starts_with(&format!(
                "{}:7: filter/INPUT/refused_tx: command",
                s.path.display()
            )),
            "{message}"
        );
    }

    /// What a plan finds likely not meant is logged once per content of
    /// the file, with the wish's file and line, and again on SIGHUP.
    #[test]
    fn plan_warnings_are_logged_once_per_content() {
        let mut s = setup(&["allow_ssh", "lossy"]);
        logged(|log| {
            let warned = || {
                log.text()
                    .lines()
                    .filter(|l| l.contains("WARN") && l.contains("which is another rule"))
                    .map(String::from)
                    .collect::<Vec<_>>()
            };
            s.core.run(&job(&[Trigger::Startup]));
            s.core.run(&job(&[Trigger::Timer]));
            s.core.run(&job(&[Trigger::Timer]));
            assert_eq!(warned().len(), 1, "{}", log.text());
            let at = format!(
                "{}:7: filter/INPUT/lossy: iptables prints",
                s.path.display()
            );
            assert!(warned()[0].contains(&at), "{}", warned()[0]);
            s.core.run(&job(&[Trigger::Sighup]));
            assert_eq!(warned().len(), 2, "{}", log.text());
            save(&s.path, &wishes_text(&["allow_http", "lossy"]));
            s.core.run(&job(&[Trigger::FileEvent]));
            s.core.run(&job(&[Trigger::Timer]));
            assert_eq!(warned().len(), 3, "{}", log.text());
        });
    }

    #[test]
    fn wishes_the_kernel_refuses_are_tried_again_only_on_a_change_or_sighup() {
        let mut s = setup(&["allow_ssh"]);
        s.core.run(&job(&[Trigger::Startup]));
        let good = content_of(&s.path);
        logged(|log| {
            save(&s.path, &wishes_text(&["allow_ssh", "refused"]));
            let new = content_of(&s.path);
            let o = s.core.run(&job(&[Trigger::FileEvent]));
            assert_eq!(o.trigger, "wishes-changed");
            assert_eq!(o.result, RunResult::InSync, "back on the last good wishes");
            assert!(!o.retry_new, "a refusal is not retried by itself");
            let errors = log.errors();
            assert_eq!(errors.len(), 1, "{}", log.text());
            for needle in [
                &format!("{}:7: filter/INPUT/refused", s.path.display()),
                "the kernel refused the new wishes",
                "Can't use -o with INPUT",
                &format!("these wishes ({new}, modified "),
                &format!("still enforcing the last wishes that applied ({good}, modified "),
                "tried again when the file changes, or on SIGHUP",
                "wish=\"refused\"",
            ] {
                assert!(errors[0].contains(needle), "{needle}: {}", errors[0]);
            }
            let status = s.core.status();
            assert!(
                status.contains(&format!("({new}) is refused by the kernel"))
                    && status.contains(&format!("enforcing the last wishes that applied ({good})")),
                "{status}"
            );
            // Enforcing the last good wishes; polls and retries do not try
            // the refused ones again.
            s.fake.world().kernel.clear();
            let o = s.core.run(&job(&[Trigger::Timer]));
            assert_eq!(fixes_of(&o.result), ["filter/INPUT allow_ssh"]);
            s.core.run(&job(&[Trigger::Retry]));
            s.core.run(&job(&[Trigger::FileEvent]));
            assert_eq!(s.fake.world().failed, ["refused"]);
            assert_eq!(log.errors().len(), 1, "{}", log.text());
            // SIGHUP does, and says it again.
            let o = s.core.run(&job(&[Trigger::Sighup]));
            assert_eq!(o.result, RunResult::InSync);
            assert_eq!(s.fake.world().failed, ["refused", "refused"]);
            assert_eq!(log.errors().len(), 2, "{}", log.text());
            // Fixed: picked up.
            save(&s.path, &wishes_text(&["allow_ssh", "allow_http"]));
            let o = s.core.run(&job(&[Trigger::FileEvent]));
            assert_eq!(fixes_of(&o.result), ["filter/INPUT allow_http"]);
            assert!(
                s.core.status().starts_with("enforcing "),
                "{}",
                s.core.status()
            );
        });
    }

    #[test]
    fn wishes_that_fail_for_a_passing_reason_are_retried_and_the_last_good_ones_enforced() {
        let mut s = setup(&["allow_ssh"]);
        s.core.run(&job(&[Trigger::Startup]));
        s.fake.world().busy = 2;
        logged(|log| {
            save(&s.path, &wishes_text(&["allow_ssh", "busy"]));
            let o = s.core.run(&job(&[Trigger::FileEvent]));
            assert_eq!(o.result, RunResult::InSync, "the last good wishes");
            assert!(o.retry_new);
            assert!(s.core.waiting());
            assert!(
                s.core.status().contains("tried again"),
                "{}",
                s.core.status()
            );
            let errors = log.errors();
            assert_eq!(errors.len(), 1, "{}", log.text());
            assert!(
                errors[0].contains("the new wishes could not be applied")
                    && errors[0].contains("xtables lock")
                    && errors[0].contains("still enforcing the last wishes that applied"),
                "{}",
                errors[0]
            );
            // Meanwhile polls enforce the last good wishes, without trying
            // the new ones.
            s.fake.world().kernel.clear();
            let o = s.core.run(&job(&[Trigger::Timer]));
            assert_eq!(fixes_of(&o.result), ["filter/INPUT allow_ssh"]);
            assert!(!o.retry_new);
            assert_eq!(s.fake.world().failed, ["busy"]);
            // A retry tries them: still busy, then through.
            let o = s.core.run(&job(&[Trigger::Retry]));
            assert!(o.retry_new);
            assert_eq!(s.fake.world().failed, ["busy", "busy"]);
            let o = s.core.run(&job(&[Trigger::Retry]));
            assert!(!o.retry_new);
            assert_eq!(fixes_of(&o.result), ["filter/INPUT busy"]);
            assert!(!s.core.waiting());
            assert!(
                s.core.status().starts_with("enforcing "),
                "{}",
                s.core.status()
            );
            assert!(log.text().contains("applied"), "{}", log.text());
        });
    }

    #[test]
    fn a_file_being_written_is_not_read_until_the_writer_closes_it() {
        let mut s = setup(&["allow_ssh"]);
        s.core.run(&job(&[Trigger::Startup]));
        // The first half of a file written in place.
        std::fs::write(&s.path, wishes_text(&[])).unwrap();
        let writing = |triggers: &[Trigger]| Job {
            file: FileView::Watched {
                writing: true,
                settle: Duration::ZERO,
            },
            ..job(triggers)
        };
        for triggers in [
            &[Trigger::Timer][..],
            &[Trigger::FileEvent],
            &[Trigger::Sighup],
        ] {
            let o = logged(|_| s.core.run(&writing(triggers)));
            assert!(
                matches!(o.result, RunResult::InSync | RunResult::Skipped),
                "{o:?}"
            );
            assert_eq!(s.core.wishes().chains[0].rule_names().count(), 1);
        }
        // Closed, with the rest.
        std::fs::write(&s.path, wishes_text(&["allow_ssh", "allow_http"])).unwrap();
        let o = logged(|_| s.core.run(&job(&[Trigger::FileEvent])));
        assert_eq!(fixes_of(&o.result), ["filter/INPUT allow_http"]);
    }

    #[test]
    fn without_the_watch_new_content_waits_until_it_has_settled() {
        let mut s = setup(&["allow_ssh"]);
        s.core.run(&job(&[Trigger::Startup]));
        let unwatched = |triggers: &[Trigger]| Job {
            file: FileView::Unwatched {
                settle: Duration::from_secs(60),
            },
            ..job(triggers)
        };
        save(&s.path, &wishes_text(&["allow_ssh", "allow_http"]));
        let o = logged(|_| s.core.run(&unwatched(&[Trigger::Timer])));
        assert_eq!(o.result, RunResult::InSync, "not taken yet");
        let after = o.recheck.expect("a time to look again");
        assert!(after > Duration::from_secs(50), "{after:?}");
        // The same content, a minute old: taken.
        let f = std::fs::File::options().write(true).open(&s.path).unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(61))
            .unwrap();
        let o = logged(|_| s.core.run(&unwatched(&[Trigger::Timer])));
        assert_eq!(fixes_of(&o.result), ["filter/INPUT allow_http"]);
        assert_eq!(o.recheck, None);
    }

    #[test]
    fn a_rejected_edit_before_the_first_success_falls_back_too() {
        let mut s = setup(&["allow_ssh"]);
        s.fake.world().fail_reads = 1;
        let o = s.core.run(&job(&[Trigger::Startup]));
        assert!(matches!(o.result, RunResult::Failed(_)), "{o:?}");
        save(&s.path, &wishes_text(&["allow_ssh", "bad"]));
        let o = logged(|_| s.core.run(&job(&[Trigger::FileEvent, Trigger::Retry])));
        assert_eq!(o.trigger, "wishes-changed");
        assert_eq!(fixes_of(&o.result), ["filter/INPUT allow_ssh"]);
        assert_eq!(s.fake.world().kernel, ["allow_ssh"]);
    }

    #[test]
    fn a_failed_read_is_a_failure_to_retry() {
        let mut s = setup(&["allow_ssh"]);
        s.fake.world().fail_reads = 1;
        let o = s.core.run(&job(&[Trigger::Startup]));
        let RunResult::Failed(message) = &o.result else {
            panic!("expected Failed, got {:?}", o.result);
        };
        assert!(
            message.contains("resource temporarily unavailable"),
            "{message}"
        );
        let o = s.core.run(&job(&[Trigger::Retry]));
        assert_eq!(o.trigger, "drift");
        assert_eq!(fixes_of(&o.result), ["filter/INPUT allow_ssh"]);
    }

    #[test]
    fn held_corrections_wait_unless_the_operator_asks() {
        let mut s = setup(&["allow_ssh"]);
        s.core.run(&job(&[Trigger::Startup]));
        s.fake.world().kernel.clear();
        let held = Job {
            triggers: Triggers::of(&[Trigger::Timer]),
            held: HashSet::from(["filter/INPUT allow_ssh".to_string()]),
            file: WATCHED,
        };
        let o = s.core.run(&held);
        assert_eq!((o.trigger, o.result), ("drift", RunResult::Held));
        assert!(s.fake.world().kernel.is_empty());
        let sighup = Job {
            triggers: Triggers::of(&[Trigger::Sighup]),
            ..held
        };
        let o = s.core.run(&sighup);
        assert_eq!(fixes_of(&o.result), ["filter/INPUT allow_ssh"]);
    }

    /// The value of one sample in OpenMetrics text.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|l| {
            let (s, v) = l.rsplit_once(' ')?;
            (s == series).then(|| v.parse().unwrap())
        })
    }

    // A scenario script read top to bottom: each step's metrics follow it.
    #[allow(clippy::too_many_lines)]
    #[test]
    fn runs_report_to_the_metrics() {
        let Setup {
            _dir,
            path,
            fake,
            core,
        } = setup(&["allow_ssh"]);
        let metrics = Arc::new(Metrics::new());
        let mut core = core.with_metrics(metrics.clone());
        let text = || metrics.encode();
        assert_eq!(sample(&text(), "pyfw_wishes_loaded"), Some(1.0));
        let correction = "pyfw_corrections_total{family=\"ipv4\",table=\"filter\",\
                          chain=\"INPUT\",wish=\"allow_ssh\"}";
        let drift = "pyfw_drift{family=\"ipv4\",table=\"filter\",chain=\"INPUT\"}";
        core.run(&job(&[Trigger::Startup]));
        let t = text();
        assert_eq!(
            sample(
                &t,
                "pyfw_reconciles_total{trigger=\"startup\",result=\"repaired\"}"
            ),
            Some(1.0),
            "{t}"
        );
        assert_eq!(sample(&t, correction), Some(1.0), "{t}");
        assert_eq!(sample(&t, drift), Some(0.0), "{t}");
        assert_eq!(sample(&t, "pyfw_apply_duration_seconds_count"), Some(1.0));
        // Drift held back in a fight stays on the gauge.
        fake.world().kernel.clear();
        let held = Job {
            triggers: Triggers::of(&[Trigger::Timer]),
            held: HashSet::from(["filter/INPUT allow_ssh".to_string()]),
            file: WATCHED,
        };
        core.run(&held);
        let t = text();
        assert_eq!(sample(&t, drift), Some(1.0), "{t}");
        assert_eq!(
            sample(
                &t,
                "pyfw_reconciles_total{trigger=\"drift\",result=\"held\"}"
            ),
            Some(1.0)
        );
        core.run(&job(&[Trigger::Timer]));
        let t = text();
        assert_eq!(sample(&t, drift), Some(0.0), "{t}");
        assert_eq!(sample(&t, correction), Some(2.0), "{t}");
        // A bad edit: counted once, however many polls see it.
        logged(|_| {
            save(&path, "pyfw_wishes:\n  iptables: [oops\n");
            core.run(&job(&[Trigger::FileEvent]));
            core.run(&job(&[Trigger::Timer]));
        });
        let t = text();
        assert_eq!(sample(&t, "pyfw_wishes_loaded"), Some(0.0), "{t}");
        assert_eq!(sample(&t, "pyfw_wishes_load_failures_total"), Some(1.0));
        assert_eq!(
            sample(
                &t,
                "pyfw_reconciles_total{trigger=\"file-event\",result=\"skipped\"}"
            ),
            Some(1.0),
            "{t}"
        );
        // Wishes iptables rejects count as a failed load too.
        logged(|_| {
            save(&path, &wishes_text(&["allow_ssh", "bad"]));
            core.run(&job(&[Trigger::FileEvent]));
        });
        let t = text();
        assert_eq!(sample(&t, "pyfw_wishes_loaded"), Some(0.0), "{t}");
        assert_eq!(sample(&t, "pyfw_wishes_load_failures_total"), Some(2.0));
        // Fixed.
        save(&path, &wishes_text(&["allow_ssh", "allow_http"]));
        core.run(&job(&[Trigger::FileEvent]));
        let t = text();
        assert_eq!(sample(&t, "pyfw_wishes_loaded"), Some(1.0), "{t}");
        assert_eq!(
            sample(
                &t,
                "pyfw_reconciles_total{trigger=\"wishes-changed\",result=\"repaired\"}"
            ),
            Some(1.0),
            "{t}"
        );
    }

    #[test]
    fn labels_become_fields_with_the_bare_wish_name() {
        let l = Label::parse("ip6tables:filter/INPUT/allow_ssh");
        assert_eq!(
            l,
            Label {
                family: Some("ipv6"),
                table: Some("filter"),
                chain: Some("INPUT"),
                ipset: None,
                wish: Some("allow_ssh"),
            }
        );
        assert_eq!(Label::parse("filter/INPUT").wish, None);
        assert_eq!(
            Label::parse("ipset allowed_hosts").wish,
            Some("allowed_hosts")
        );
        assert_eq!(Label::parse(""), Label::default());
    }

    #[test]
    fn the_tools_words_are_logged_on_one_line() {
        assert_eq!(
            one_line(
                "`iptables -w -I INPUT 1 -o lo` failed (exit status: 2): iptables v1.8.9 \
                 (nf_tables): Can't use -o with INPUT\n\nTry `iptables -h' or 'iptables --help' \
                 for more information.; rolled back in 1 transaction(s)"
            ),
            "`iptables -w -I INPUT 1 -o lo` failed (exit status: 2): iptables v1.8.9 (nf_tables): \
             Can't use -o with INPUT; rolled back in 1 transaction(s)"
        );
    }
}
