//! One reconcile: read the kernel, plan against the wishes, apply.
//!
//! This is the contract the one-shot `apply` and the daemon share, in the
//! manner of kube-rs's controller runtime: a reconcile is idempotent, reads
//! fresh state every time and never assumes what the last run left behind,
//! so any trigger (a file change, a signal, a timer, observed drift) can
//! call it, and calling it twice is the same as calling it once.
//!
//! Before planning, each wished rule is put in the form iptables prints it,
//! learned from iptables itself and cached by wish text, so that a rule
//! written `-p tcp --dport 22` is not seen as drift from the
//! `-p tcp -m tcp --dport 22` the kernel reports.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

pub mod apply;
mod canonicalize;
pub mod confirm;
mod kept_forms;
mod kept_record;
pub mod nft;
pub mod reach;
pub mod rollback;
pub mod scope;
pub mod set_checks;

pub use scope::scope_for;

use crate::kernel::scope::merge;
use crate::kernel::{self, Backend, RuleCheck, Rules, Scope, SetSummary, Sets};
use crate::plan::revert::Snapshot;
use crate::plan::{self, Plan};
use crate::reconcile::apply::{ApplyError, Event, Interrupt};
use crate::reconcile::set_checks::{SetChecks, Verdict};
use crate::state::canon::Comparison;
use crate::state::ownership::{self, Owned, RECORD_SET};
use crate::state::{Family, State};
use crate::wishes::Wishes;

/// Why a reconcile did not complete.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading netfilter state: {0}")]
    Read(#[source] kernel::Error),
    /// Learning the wished rules' forms failed, for another reason than a
    /// refusal.
    #[error("{path}: learning how iptables prints the wished rules: {source}")]
    Learn {
        path: String,
        #[source]
        source: kernel::Error,
    },
    /// Wishes the kernel tools refuse: every one, before anything changed.
    #[error("{}", refusals(.path, .refused))]
    Rejected { path: String, refused: Vec<Refusal> },
    #[error(transparent)]
    Apply(#[from] ApplyError),
}

/// A wish the kernel tools refuse, where it is in the file, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// `table/chain/NAME`, `ipset NAME`.
    pub label: String,
    pub line: Option<u64>,
    pub message: String,
}

impl Refusal {
    /// `FILE:LINE: LABEL: MESSAGE`.
    pub fn located(&self, path: &str) -> String {
        let message = crate::state::text::escape_untrusted(&self.message);
        match self.line {
            Some(line) => format!("{path}:{line}: {}: {message}", self.label),
            None => format!("{path}: {}: {message}", self.label),
        }
    }
}

/// Each refusal on a line of its own.
fn refusals(path: &str, refused: &[Refusal]) -> String {
    let lines: Vec<String> = refused.iter().map(|r| r.located(path)).collect();
    lines.join("\n")
}

/// What a plan-only reconcile saw.
#[derive(Debug)]
pub struct Planned {
    pub state: State,
    pub plan: Plan,
    pub comparison: Comparison,
    /// Wished rules iptables could not check yet because they name a set or
    /// chain the plan creates; they are checked once those exist.
    pub deferred: Vec<RuleCheck>,
    /// What was read, to read the same again after an apply.
    pub scope: Scope,
    /// What the wishes say that holds against this kernel but is likely
    /// not what was meant, by the label of the wish it is about.
    pub warnings: Vec<PlanWarning>,
    /// The owned nftables tables' part of the plan.
    pub nft: nft::NftPlanned,
}

pub use crate::plan::warnings::PlanWarning;

/// What an applying reconcile did.
#[derive(Debug)]
pub struct Applied {
    pub plan: Plan,
    /// The chains and sets the plan touched, as they were before.
    pub snapshot: Snapshot,
    /// Wished rules that were checked only once the plan's sets existed.
    pub deferred: Vec<RuleCheck>,
    pub comparison: Comparison,
    /// How many commands ran (0 when in sync).
    pub ran: usize,
}

type CanonKey = (Family, String, Vec<String>);

/// What pyfw owned when its turn began, read before the wishes were
/// known (see [`Reconciler::read_owned`]).
#[derive(Debug)]
pub struct Owning {
    /// What was read.
    scope: Scope,
    state: State,
}

/// What a plan reads first: what the wishes name, every wished set not
/// `trusted` (known to be as wished) and pyfw's record.
fn first_scope(wishes: &Wishes, trusted: Option<&BTreeSet<String>>) -> Scope {
    let mut first = scope_for(wishes, &State::default());
    first.sets = Sets::Named(
        wishes
            .ipsets
            .iter()
            .filter(|s| trusted.is_none_or(|t| !t.contains(&s.name)))
            .map(|s| s.name.clone())
            .chain([RECORD_SET.to_string()])
            .collect(),
    );
    first
}

/// Runs reconciles against one backend, remembering canonical rule forms.
pub struct Reconciler<B: Backend> {
    backend: B,
    canonical: HashMap<CanonKey, kernel::Learned>,
    interrupt: Interrupt,
    /// Wished chains found reached by some jump once (see
    /// [`Reconciler::unreached`]): not looked for again, so that a daemon
    /// does not read a table whole on every run for a chain jumped to from
    /// a chain it does not read.
    reached: HashSet<ChainKey>,
    /// Wished chains that a read of their whole table found nothing jumps
    /// to: warned of again from the chains a plan reads, without reading
    /// the table whole on every poll (a chain that the wishes no longer
    /// leave alone is looked at again; SIGHUP forgets them all).
    lonely: HashSet<ChainKey>,
    /// The kernel's renderings of owned nftables tables, and which were
    /// last found as wished.
    nft: nft::Memory,
    /// For a reader that polls (the daemon): which wished sets need not be
    /// read in full (see [`set_checks`]).
    set_checks: Option<SetChecks>,
    /// For a reader that polls: pyfw's record as last read (see
    /// [`kept_record`]).
    record: kept_record::KeptRecord,
}

/// One plan's use of the [`SetChecks`]: the summaries taken before its
/// read, the sets it trusts, and where its CPU and clock started.
struct Checking {
    summaries: std::collections::BTreeMap<String, SetSummary>,
    trusted: BTreeSet<String>,
    cpu: std::time::Duration,
    now: std::time::Instant,
}

/// What a poll's spot check of the wished sets found.
enum Spotted {
    /// A summary is due: none was tested.
    SummaryDue,
    /// Every tested member there: each set as its last full read found it
    /// (its summary then).
    AllThere(BTreeMap<String, SetSummary>),
    /// These sets lack a tested member, in words: the summaries are taken
    /// now, and each of these is read in full whatever its summary says.
    Missing(BTreeMap<String, String>),
}

type ChainKey = (Family, String, String);

impl<B: Backend> Reconciler<B> {
    pub fn new(backend: B) -> Self {
        Reconciler {
            backend,
            canonical: HashMap::new(),
            interrupt: Interrupt::new(),
            reached: HashSet::new(),
            lonely: HashSet::new(),
            nft: nft::Memory::default(),
            set_checks: None,
            record: kept_record::KeptRecord::default(),
        }
    }

    /// For a reader that polls: wished sets are checked by their summary
    /// and read in full only when it moved or their resync is due (see
    /// [`set_checks`]). A one-shot command reads every set in full.
    pub fn checking_sets(mut self, checks: SetChecks) -> Self {
        self.set_checks = Some(checks);
        self
    }

    /// The next plan reads every wished set in full, and looks again in
    /// whole tables for jumps to the wished chains found lonely (SIGHUP:
    /// the operator asked for a fresh look).
    pub fn read_afresh_next(&mut self) {
        self.lonely.clear();
        self.record.forget();
        if let Some(checks) = &mut self.set_checks {
            checks.read_all_next();
        }
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// Reads pyfw's record, then the sets it names and the chains holding
    /// the rules and chains it names: what a plan reads whatever the wishes
    /// say, since pyfw must withdraw what it owns and no longer wishes.
    ///
    /// The CLI calls this on a second thread while it parses the wishes
    /// file. When pyfw owns what it wishes (every run after the first),
    /// that is all a plan reads, so the two costs overlap: a
    /// 100,000-member set is read from the kernel while its 100,000 wished
    /// members are parsed, which used to take turns.
    pub fn read_owned(&mut self) -> Result<Owning, Error> {
        let mut scope = Scope::none();
        scope.sets = Sets::Named(BTreeSet::from([RECORD_SET.to_string()]));
        let record = self
            .backend
            .read_state(scope.clone())
            .map_err(Error::Read)?;
        let mut owned = Scope::none();
        let mut sets = BTreeSet::new();
        for entry in ownership::read(&record) {
            match entry {
                Owned::Rule {
                    family,
                    table,
                    chain,
                    ..
                }
                | Owned::Chain {
                    family,
                    table,
                    chain,
                } => match owned.rules_mut(family) {
                    Rules::Chains(chains) => {
                        chains.insert((table, chain));
                    }
                    other => *other = Rules::Chains(BTreeSet::from([(table, chain)])),
                },
                Owned::Set { name } => {
                    sets.insert(name);
                }
                // Read by the nftables part of the plan (see `nft`).
                Owned::NftTable { .. } => {}
            }
        }
        if !sets.is_empty() {
            owned.sets = Sets::Named(sets);
        }
        let state = if owned.is_empty() {
            record
        } else {
            let more = self
                .backend
                .read_state(owned.clone())
                .map_err(Error::Read)?;
            merge(record, more, &owned)
        };
        let scope = scope.union(&owned).unwrap_or(scope);
        Ok(Owning { scope, state })
    }

    /// Reads what the wishes touch and plans, changing nothing but a
    /// short-lived scratch chain used to learn canonical rule forms.
    pub fn plan(&mut self, wishes: &Wishes) -> Result<Planned, Error> {
        self.plan_after(wishes, None)
    }

    /// [`Reconciler::plan`], given what [`Reconciler::read_owned`] read
    /// (from the same writer's turn): only what it lacks is read.
    pub fn plan_after(
        &mut self,
        wishes: &Wishes,
        owning: Option<Owning>,
    ) -> Result<Planned, Error> {
        // Sets first: pyfw's record in them says which rules matter. The
        // wished chains are read in any case: they are read beside the sets
        // (see `Backend::read_state`), and only a record naming other
        // chains, or a set that may go, takes a second read.
        let mut checking = self.check_sets(wishes);
        let trusted = checking.as_ref().map(|c| &c.trusted);
        let mut first = first_scope(wishes, trusted);
        let read_at = std::time::Instant::now();
        let known = self.known_record(read_at);
        if known.is_some() {
            kept_record::KeptRecord::leave_out(&mut first);
        }
        let (mut read, had) = self.read_first(first, owning)?;
        match &known {
            Some(record) => kept_record::KeptRecord::stand_in(&mut read, record),
            None if self.set_checks.is_some() => self.record.remember(&read, read_at),
            None => {}
        }
        let mut scope = scope_for(wishes, &read);
        let every_set = scope.sets == Sets::All;
        let mut state = self.read_more(read, &had, &scope)?;
        if scope.sets == Sets::Skip {
            // What was read, sets included, to read the same again.
            scope.sets = had.sets;
        }
        let mut leave = BTreeSet::new();
        if let Some(c) = checking.as_mut() {
            if every_set {
                c.trusted.clear();
            }
            stand_in(&mut state, c);
            leave = c.trusted.clone();
        }
        self.drop_dead_scratch_chains(&state);
        let canonical = self.canonicalize(wishes, &state)?;
        let mut plan = plan::plan_leaving(&canonical.wishes, &state, &leave);
        if let Some(c) = checking {
            self.checked_sets(wishes, &plan, c);
        }
        let mut warnings = canonical.warnings;
        warnings.extend(self.unreached(&canonical.wishes, &state, &scope)?);
        let record = ownership::read(&state);
        let nft = nft::plan_tables(&mut self.backend, &mut self.nft, wishes, &record, &mut plan)
            .map_err(Error::Read)?;
        Ok(Planned {
            state,
            plan,
            comparison: Comparison::Kernel,
            deferred: canonical.deferred,
            scope,
            warnings,
            nft,
        })
    }

    /// Reads the `first` scope, or (given what [`Reconciler::read_owned`]
    /// read) only what of it that lacks; returns what was read and its
    /// scope.
    /// pyfw's record, when a polling reader read it recently enough (see
    /// [`kept_record`]); `None`: read it.
    fn known_record(&self, now: std::time::Instant) -> Option<Option<crate::state::Ipset>> {
        let period = self.set_checks.as_ref()?.resync_period();
        self.record.fresh(period, now).cloned()
    }

    fn read_first(
        &mut self,
        first: Scope,
        owning: Option<Owning>,
    ) -> Result<(State, Scope), Error> {
        match owning.and_then(|o| Some((first.union(&o.scope)?, o))) {
            Some((had, owning)) => {
                let more = first.beyond(&owning.scope);
                let read = if more.is_empty() {
                    owning.state
                } else {
                    let extra = self.backend.read_state(more.clone()).map_err(Error::Read)?;
                    merge(owning.state, extra, &more)
                };
                Ok((read, had))
            }
            None => {
                let read = self
                    .backend
                    .read_state(first.clone())
                    .map_err(Error::Read)?;
                Ok((read, first))
            }
        }
    }

    /// The wished chains nothing jumps to (see
    /// [`plan::warnings::unreached`]). A table where one seems so, and of
    /// which the plan read only some chains, is read whole first: a chain
    /// the plan did not read may jump to it. That read costs one more
    /// `iptables-save -t TABLE`, and only where a wished chain is not
    /// reached from the chains read (a chain jumped to from FORWARD, when
    /// the wishes do not name FORWARD), and once a chain is found reached,
    /// it is not looked for again by this reconciler; once found lonely
    /// in its whole table, it is warned of again without that read.
    fn unreached(
        &mut self,
        wishes: &Wishes,
        state: &State,
        scope: &Scope,
    ) -> Result<Vec<PlanWarning>, Error> {
        let known = |u: &plan::warnings::Unreached| {
            !self
                .reached
                .contains(&(u.family, u.table.clone(), u.chain.clone()))
        };
        let mut found: Vec<_> = (plan::warnings::unreached(wishes, state).into_iter())
            .filter(known)
            .collect();
        let key = |u: &plan::warnings::Unreached| (u.family, u.table.clone(), u.chain.clone());
        let unsure: Vec<_> = (found.iter())
            .filter(|u| !self.lonely.contains(&key(u)))
            .cloned()
            .collect();
        let more = tables_not_read_whole(&unsure, scope);
        if !more.is_empty() {
            let extra = self.backend.read_state(more.clone()).map_err(Error::Read)?;
            // Only the rules and pyfw's record matter here: no copy of the
            // other sets' members.
            let rules = State {
                v4: state.v4.clone(),
                v6: state.v6.clone(),
                ipsets: (state.ipsets.get(RECORD_SET))
                    .map(|r| (RECORD_SET.to_string(), r.clone()))
                    .into_iter()
                    .collect(),
            };
            let view = merge(rules, extra, &more);
            // The view holds all that was read and more: what it finds
            // unreached is all that is.
            found = (plan::warnings::unreached(wishes, &view).into_iter())
                .filter(known)
                .collect();
            self.lonely.extend(found.iter().map(key));
        }
        // Looked at afresh when the partial view finds them reached.
        self.lonely.retain(|k| found.iter().any(|u| key(u) == *k));
        for (family, table, chain) in plan::warnings::checked(wishes) {
            let still = found
                .iter()
                .any(|u| u.family == family && u.table == table && u.chain == chain);
            if !still {
                self.reached
                    .insert((family, table.to_string(), chain.to_string()));
            }
        }
        Ok(found.into_iter().map(|u| u.warning).collect())
    }

    /// Takes every set's summary, or spot checks them when a summary is
    /// not due (see [`SetChecks::summary_due`]), and says which wished sets
    /// this plan need not read in full; `None` when sets are not checked (a
    /// one-shot command), or cannot be (then every set is read, as without
    /// checks).
    fn check_sets(&mut self, wishes: &Wishes) -> Option<Checking> {
        if wishes.ipsets.is_empty() {
            return None;
        }
        let cpu = kernel::process::cpu_used();
        let now = std::time::Instant::now();
        let suspects = match self.spot_check(wishes, now)? {
            Spotted::AllThere(summaries) => {
                let trusted = wishes.ipsets.iter().map(|w| w.name.clone()).collect();
                return Some(Checking {
                    summaries,
                    trusted,
                    cpu,
                    now,
                });
            }
            Spotted::Missing(suspects) => suspects,
            Spotted::SummaryDue => BTreeMap::new(),
        };
        let checks = self.set_checks.as_mut()?;
        let names = wishes.ipsets.iter().map(|s| s.name.clone()).collect();
        // The summary's own cost, without the spot checks' before it.
        let before = kernel::process::cpu_used();
        let summaries = match self.backend.set_summaries(&names) {
            Ok(Some(summaries)) => summaries,
            Ok(None) => return None,
            Err(e) => {
                tracing::debug!("cannot list the sets' summaries ({e}); reading them in full");
                return None;
            }
        };
        checks.summarized(kernel::process::cpu_used().saturating_sub(before), now);
        let mut trusted = BTreeSet::new();
        for (name, mut verdict) in checks.trusted(&wishes.ipsets, &summaries, now) {
            // The summary as it was, a tested member missing all the same
            // (swapped for another): read in full.
            if let (Verdict::Trusted, Some(why)) = (&verdict, suspects.get(&name)) {
                checks.forget(&name);
                verdict = Verdict::Moved(why.clone());
            }
            match verdict {
                Verdict::Trusted => {
                    trusted.insert(name);
                }
                Verdict::Unknown => {}
                Verdict::Moved(why) => {
                    tracing::debug!("ipset {name}: {why} since it was read: reading it in full")
                }
                Verdict::Resync => {
                    tracing::debug!("ipset {name}: full resync: reading it in full")
                }
            }
        }
        Some(Checking {
            summaries,
            trusted,
            cpu,
            now,
        })
    }

    /// Between summaries: tests a few wished members of each set (see
    /// [`SetChecks::spot_checks`]). `None`: sets are not checked.
    fn spot_check(&mut self, wishes: &Wishes, now: std::time::Instant) -> Option<Spotted> {
        let checks = self.set_checks.as_mut()?;
        if checks.summary_due(&wishes.ipsets, now) {
            return Some(Spotted::SummaryDue);
        }
        let Some(picks) = checks.spot_checks(&wishes.ipsets) else {
            return Some(Spotted::SummaryDue);
        };
        let mut missing = BTreeMap::new();
        for (name, element) in picks {
            match self.backend.set_holds(&name, &element) {
                Ok(Some(true)) => {}
                Ok(Some(false)) => {
                    missing
                        .entry(name)
                        .or_insert_with(|| format!("a wished member, {element}, is not in it"));
                }
                Ok(None) => return Some(Spotted::SummaryDue),
                Err(e) => {
                    tracing::debug!("cannot test ipset {name} ({e}); taking the summaries");
                    return Some(Spotted::SummaryDue);
                }
            }
        }
        Some(match missing.is_empty() {
            true => Spotted::AllThere(checks.known_summaries()),
            false => Spotted::Missing(missing),
        })
    }

    /// Notes which wished sets this plan read in full and left alone.
    fn checked_sets(&mut self, wishes: &Wishes, plan: &Plan, c: Checking) {
        let Some(checks) = self.set_checks.as_mut() else {
            return;
        };
        let touched: BTreeSet<&str> = (plan.commands.iter())
            .filter(|c| c.program == plan::Program::Ipset)
            .filter_map(|c| c.target.strip_prefix("ipset "))
            .collect();
        let read = (wishes.ipsets.iter())
            .map(|w| w.name.as_str())
            .filter(|n| !c.trusted.contains(*n));
        let cost = kernel::process::cpu_used().saturating_sub(c.cpu);
        checks.read_in_full(read, &c.summaries, &touched, cost, c.now);
        for name in &c.trusted {
            if let Some(left) = checks.resync_in(name, c.now) {
                tracing::debug!(
                    "ipset {name}: unchanged since its last full read (summary); members not \
                     read, full resync in {}",
                    humantime::format_duration(std::time::Duration::from_secs(left.as_secs()))
                );
            }
        }
    }

    /// `read` (what `had` says was read) completed to `scope`: only what
    /// the first read lacks is read again (the chains pyfw's record adds to
    /// the wished ones; whole tables or every set where something may go).
    fn read_more(&mut self, read: State, had: &Scope, scope: &Scope) -> Result<State, Error> {
        let mut more = scope.beyond(had);
        // The sets were read already unless every set must be.
        more.sets = scope.sets.clone();
        if more.is_empty() {
            return Ok(read);
        }
        let extra = self.backend.read_state(more.clone()).map_err(Error::Read)?;
        Ok(merge(read, extra, &more))
    }

    /// Reads into `state` (what a plan read), read-only, the chains the
    /// lock-out lint follows from the chains it checks and `state` lacks
    /// (see [`reach::read_for_lint`]).
    pub fn read_for_lint(
        &mut self,
        wishes: &Wishes,
        state: &mut State,
        ssh: Option<&plan::lint::SshConnection>,
        nft_tables: &[(String, String)],
    ) -> Result<(), Error> {
        reach::read_for_lint(&mut self.backend, wishes, state, ssh, nft_tables).map_err(Error::Read)
    }

    /// Applies what [`Reconciler::plan`] found, all or nothing: on a
    /// failure or an interrupt (see [`Reconciler::interrupt`]), the touched
    /// chains and sets are put back as they were. Reads nothing more
    /// unless something fails.
    pub fn apply(&mut self, planned: Planned, on: &mut dyn FnMut(Event)) -> Result<Applied, Error> {
        // pyfw writes its record: the next plan reads it.
        self.record.forget();
        let Planned {
            state,
            plan,
            deferred,
            comparison,
            nft: nft_planned,
            ..
        } = planned;
        let mut snapshot = Snapshot::of(&plan, state);
        snapshot.nft = nft_planned.before.clone();
        let ran = match plan.is_empty() && plan.record.is_empty() {
            true => 0,
            false => apply::apply(
                &mut self.backend,
                &plan,
                &snapshot,
                &deferred,
                &self.interrupt,
                on,
            )?,
        };
        nft::applied(&mut self.backend, &mut self.nft, &nft_planned);
        Ok(Applied {
            plan,
            snapshot,
            deferred,
            comparison,
            ran,
        })
    }

    /// Keeps every replaced nftables table's old text in the snapshot, for
    /// a revert after the apply committed (`apply --confirm`).
    pub fn keep_every_nft_snapshot(&mut self) {
        self.nft.keep_every_snapshot();
    }

    /// Asks the kernel whether it takes every owned nftables table the
    /// plan would load (`nft -c`), committing nothing.
    pub fn check_nft(&mut self, planned: &Planned) -> Result<(), kernel::Error> {
        nft::check(&mut self.backend, &planned.plan)
    }

    /// What stops an apply of this reconciler at its next transaction (a
    /// signal handler raises it); shared by clones.
    pub fn interrupt(&self) -> Interrupt {
        self.interrupt.clone()
    }
}

/// A scope reading whole each table of `found` that `scope` did not.
fn tables_not_read_whole(found: &[plan::warnings::Unreached], scope: &Scope) -> Scope {
    let mut more = Scope::none();
    for u in found {
        let whole = match scope.rules(u.family) {
            Rules::All => true,
            Rules::Tables(t) => t.contains(&u.table),
            Rules::Chains(_) | Rules::Skip => false,
        };
        if whole {
            continue;
        }
        match more.rules_mut(u.family) {
            Rules::Tables(t) => {
                t.insert(u.table.clone());
            }
            other => *other = Rules::Tables(BTreeSet::from([u.table.clone()])),
        }
    }
    more
}

/// Each trusted set, in `state`, as its summary says (type and options;
/// no members, which the plan leaves alone): what learning rule forms
/// needs of a set a rule names.
fn stand_in(state: &mut State, c: &Checking) {
    for name in &c.trusted {
        let Some(summary) = c.summaries.get(name) else {
            continue;
        };
        state
            .ipsets
            .entry(name.clone())
            .or_insert_with(|| crate::state::Ipset {
                kind: summary.kind.clone(),
                options: summary.options.clone(),
                members: crate::state::Members::new(),
                comments: Default::default(),
            });
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::state::{Ipset, Ruleset, Table};

    /// A kernel in memory that answers each read with the part of its state
    /// the scope names, as the real tools would, and notes every scope.
    struct Kernel {
        state: State,
        reads: Vec<Scope>,
    }

    fn view(rules: &Ruleset, scope: &Rules) -> Ruleset {
        match scope {
            Rules::Skip => Ruleset::default(),
            Rules::All => rules.clone(),
            Rules::Tables(tables) => Ruleset {
                tables: (rules.tables.iter())
                    .filter(|(name, _)| tables.contains(*name))
                    .map(|(n, t)| (n.clone(), t.clone()))
                    .collect(),
            },
            Rules::Chains(chains) => {
                let mut out = Ruleset::default();
                for (table, chain) in chains {
                    if let Some(c) = rules.tables.get(table).and_then(|t| t.chain(chain)) {
                        let t: &mut Table = out.tables.entry(table.clone()).or_default();
                        t.chains.push((chain.clone(), c.clone()));
                    }
                }
                out
            }
        }
    }

    impl Backend for Kernel {
        fn read_state(&mut self, scope: Scope) -> Result<State, kernel::Error> {
            let ipsets = match &scope.sets {
                Sets::Skip => Default::default(),
                Sets::All => self.state.ipsets.clone(),
                Sets::Named(names) => (self.state.ipsets.iter())
                    .filter(|(n, _)| names.contains(*n))
                    .map(|(n, s)| (n.clone(), s.clone()))
                    .collect(),
            };
            let state = State {
                v4: view(&self.state.v4, &scope.v4),
                v6: view(&self.state.v6, &scope.v6),
                ipsets,
            };
            self.reads.push(scope);
            Ok(state)
        }
        fn check_rules(&mut self, _: &[RuleCheck]) -> Result<(), kernel::Error> {
            Ok(())
        }
        fn canonicalize(
            &mut self,
            rules: &[RuleCheck],
            _: &State,
            _: &[kernel::SetShape],
        ) -> Result<Vec<Option<kernel::Learned>>, kernel::Error> {
            Ok(rules
                .iter()
                .map(|c| {
                    Some(kernel::Learned {
                        printed: c.rule.clone(),
                        form: kernel::Form::Stable,
                    })
                })
                .collect())
        }
        fn drop_chain(&mut self, _: Family, _: &str, _: &str) -> Result<(), kernel::Error> {
            Ok(())
        }
        fn run(&mut self, _: &crate::plan::Command) -> Result<(), kernel::Error> {
            Ok(())
        }
        fn set_summaries(
            &mut self,
            names: &BTreeSet<String>,
        ) -> Result<Option<BTreeMap<String, SetSummary>>, kernel::Error> {
            Ok(Some(
                (self.state.ipsets.iter())
                    .filter(|(n, _)| names.contains(*n))
                    .map(|(n, s)| {
                        let summary = SetSummary {
                            kind: s.kind.clone(),
                            options: s.options.clone(),
                            members: s.members.len(),
                            memory: None,
                        };
                        (n.clone(), summary)
                    })
                    .collect(),
            ))
        }
        fn set_holds(&mut self, name: &str, element: &str) -> Result<Option<bool>, kernel::Error> {
            let set = self.state.ipsets.get(name);
            Ok(Some(
                set.is_some_and(|s| s.members.iter().any(|m| m == element)),
            ))
        }
    }

    fn wishes() -> Wishes {
        let text = include_str!("../../tests/data/spec/wishes.yaml");
        crate::wishes::parse(text, Path::new("wishes.yaml")).unwrap()
    }

    /// The spec's host after pyfw's apply, with a record naming `owned`.
    fn host(owned: &[Owned]) -> State {
        let mut state = State {
            v4: crate::state::parse_iptables_save(include_str!(
                "../../tests/data/spec/after-apply.save"
            ))
            .unwrap(),
            ipsets: crate::state::parse_ipset_save(include_str!(
                "../../tests/data/spec/ipset.save"
            ))
            .unwrap(),
            ..State::default()
        };
        let record = Ipset {
            kind: "hash:ip".into(),
            options: vec!["family".into(), "inet6".into(), "comment".into()],
            members: owned.iter().map(Owned::element).collect(),
            comments: owned.iter().map(|o| (o.element(), o.key())).collect(),
        };
        state.ipsets.insert(RECORD_SET.into(), record);
        state
    }

    fn rule(chain: &str, name: &str) -> Owned {
        Owned::Rule {
            family: Family::V4,
            table: "filter".into(),
            chain: chain.into(),
            name: name.into(),
            hash: "0123456789abcdef".into(),
        }
    }

    fn set(name: &str) -> Owned {
        Owned::Set { name: name.into() }
    }

    /// Plans `wishes` on `state` both ways, asserts they agree, and returns
    /// the reads of the way that read what pyfw owns first.
    fn both_ways(wishes: &Wishes, state: State) -> Vec<Scope> {
        let mut plain = Reconciler::new(Kernel {
            state: state.clone(),
            reads: Vec::new(),
        });
        let want = plain.plan(wishes).unwrap();
        let mut early = Reconciler::new(Kernel {
            state,
            reads: Vec::new(),
        });
        let owning = early.read_owned().unwrap();
        let got = early.plan_after(wishes, Some(owning)).unwrap();
        // Chains read in other turns are listed in another order.
        let sorted = |mut state: State| {
            for rules in [&mut state.v4, &mut state.v6] {
                for table in rules.tables.values_mut() {
                    table.chains.sort_by(|a, b| a.0.cmp(&b.0));
                }
            }
            state
        };
        assert_eq!(sorted(got.state), sorted(want.state));
        assert_eq!(got.plan, want.plan);
        early.backend.reads.clone()
    }

    fn chains(list: &[&str]) -> Rules {
        Rules::Chains(
            list.iter()
                .map(|c| ("filter".to_string(), c.to_string()))
                .collect(),
        )
    }

    fn names(list: &[&str]) -> Sets {
        Sets::Named(list.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn when_pyfw_owns_what_it_wishes_the_early_read_is_all_it_reads() {
        let owned = [
            set("allowed_hosts"),
            rule("INPUT", "allow_ssh"),
            rule("FORWARD", "allow_established"),
            rule("DOCKER", "allowed_hosts_only"),
        ];
        let reads = both_ways(&wishes(), host(&owned));
        let mut owned_scope = Scope::none();
        owned_scope.v4 = chains(&["INPUT", "FORWARD", "DOCKER"]);
        owned_scope.sets = names(&["allowed_hosts"]);
        let mut record = Scope::none();
        record.sets = names(&[RECORD_SET]);
        assert_eq!(reads, [record, owned_scope]);
    }

    #[test]
    fn what_the_wishes_add_is_read_after_the_early_read() {
        // The first run: nothing owned yet, so the wished chains and set
        // are read after the record.
        let reads = both_ways(&wishes(), host(&[]));
        assert_eq!(reads.len(), 2, "{reads:?}");
        assert_eq!(reads[1].v4, chains(&["INPUT", "FORWARD", "DOCKER"]));
        assert_eq!(reads[1].sets, names(&["allowed_hosts"]));
        // One chain owned: only the others are read.
        let reads = both_ways(&wishes(), host(&[rule("INPUT", "allow_ssh")]));
        assert_eq!(reads.len(), 3, "{reads:?}");
        assert_eq!(reads[1].v4, chains(&["INPUT"]));
        assert_eq!(reads[2].v4, chains(&["FORWARD", "DOCKER"]));
        assert_eq!(reads[2].sets, names(&["allowed_hosts"]));
    }

    #[test]
    fn owned_but_unwished_still_reads_what_its_withdrawal_needs() {
        // A rule in a chain no longer wished: its chain is read early.
        let reads = both_ways(&wishes(), host(&[rule("OUTPUT", "old")]));
        assert_eq!(reads[1].v4, chains(&["OUTPUT"]));
        // A set no longer wished: everything is read, as without the
        // early read.
        let reads = both_ways(&wishes(), host(&[set("gone"), set("allowed_hosts")]));
        assert_eq!(reads.last().map(|s| s.sets.clone()), Some(Sets::All));
        // A chain pyfw made and no longer wishes: its whole table.
        let made = Owned::Chain {
            family: Family::V4,
            table: "filter".into(),
            chain: "DOCKER-ISOLATION".into(),
        };
        let reads = both_ways(&wishes(), host(&[made]));
        let tables = Rules::Tables(BTreeSet::from(["filter".to_string()]));
        assert_eq!(reads.last().map(|s| s.v4.clone()), Some(tables));
    }

    /// A wished chain reached only from a chain the plan does not read
    /// costs a read of its table the first time, and no more once found
    /// reached.
    #[test]
    fn a_chain_found_reached_once_is_not_looked_for_again() {
        let wishes = |chain: &str| {
            let text = format!(
                "pyfw_wishes:\n  iptables:\n    filter:\n      {chain}:\n        rules:\n        \
                 - a: -p tcp -j ACCEPT\n"
            );
            crate::wishes::parse(&text, Path::new("w.yaml")).unwrap()
        };
        let state = State {
            v4: crate::state::parse_iptables_save(
                "*filter\n:INPUT ACCEPT [0:0]\n:THEIRS - [0:0]\n:MINE - [0:0]\n\
                 -A INPUT -j THEIRS\n-A THEIRS -j MINE\nCOMMIT\n",
            )
            .unwrap(),
            ..State::default()
        };
        let mut rec = Reconciler::new(Kernel {
            state,
            reads: Vec::new(),
        });
        let whole = |rec: &Reconciler<Kernel>| {
            let reads = &rec.backend.reads;
            reads
                .iter()
                .filter(|s| matches!(s.v4, Rules::Tables(_)))
                .count()
        };
        for _ in 0..3 {
            let planned = rec.plan(&wishes("MINE")).unwrap();
            assert_eq!(planned.warnings, []);
            assert_eq!(whole(&rec), 1);
        }
        // A chain nothing jumps to: its table is read whole once, and it
        // is warned of every time; SIGHUP looks again.
        for _ in 0..3 {
            let planned = rec.plan(&wishes("LONELY")).unwrap();
            assert_eq!(planned.warnings.len(), 1, "{:?}", planned.warnings);
            assert_eq!(whole(&rec), 2);
        }
        rec.read_afresh_next();
        let planned = rec.plan(&wishes("LONELY")).unwrap();
        assert_eq!(planned.warnings.len(), 1, "{:?}", planned.warnings);
        assert_eq!(whole(&rec), 3);
    }

    /// Between summaries a poll tests a few wished members instead: all
    /// there, the set is not read; its members swapped for others, or the
    /// set emptied, the next poll reads it in full and plans it back.
    #[test]
    fn between_summaries_a_spot_check_stands_in_and_sees_a_set_emptied() {
        let text = "pyfw_wishes:\n  ipsets:\n    big:\n      type: hash:ip\n      \
                    members_equal:\n      - 10.0.0.1\n      - 10.0.0.2\n      - 10.0.0.3\n";
        let wishes = crate::wishes::parse(text, Path::new("w.yaml")).unwrap();
        let mut state = host(&[set("big")]);
        state.ipsets.insert(
            "big".into(),
            Ipset {
                kind: "hash:ip".into(),
                options: vec!["family".into(), "inet".into()],
                members: ["10.0.0.3", "10.0.0.1", "10.0.0.2"].into_iter().collect(),
                comments: Default::default(),
            },
        );
        let mut r = Reconciler::new(Kernel {
            state,
            reads: Vec::new(),
        })
        .checking_sets(SetChecks::for_interval(std::time::Duration::from_secs(5)));
        let read_big = |r: &mut Reconciler<Kernel>| {
            let reads = std::mem::take(&mut r.backend_mut().reads);
            (reads.iter()).any(|s| matches!(&s.sets, Sets::Named(n) if n.contains("big")))
        };
        assert!(r.plan(&wishes).unwrap().plan.is_empty());
        assert!(read_big(&mut r), "the first poll reads the set in full");
        // A summary that cost a second: the next is due in 1,000 s.
        let now = std::time::Instant::now();
        r.set_checks
            .as_mut()
            .unwrap()
            .summarized(std::time::Duration::from_secs(1), now);
        for _ in 0..3 {
            assert!(r.plan(&wishes).unwrap().plan.is_empty());
            assert!(!read_big(&mut r), "a spot check found the members there");
        }
        let count = |planned: &Planned, op: &str| -> usize {
            (planned.plan.commands.iter())
                .filter(|c| c.args.first().is_some_and(|a| a == op))
                .map(|c| c.count())
                .sum()
        };
        let set_members = |r: &mut Reconciler<Kernel>, members: &[&str]| {
            let set = r.backend_mut().state.ipsets.get_mut("big").unwrap();
            set.members = members.iter().copied().collect();
        };
        // Every member swapped for another: the count, all a summary of
        // this fake kernel shows, stays; the spot check sees it.
        set_members(&mut r, &["10.9.0.1", "10.9.0.2", "10.9.0.3"]);
        let planned = r.plan(&wishes).unwrap();
        assert!(read_big(&mut r), "the set is read in full");
        assert_eq!(count(&planned, "del"), 3, "{:?}", planned.plan.commands);
        // Repaired (by hand: this kernel runs nothing), read in full once
        // more after pyfw's change, then emptied between summaries.
        set_members(&mut r, &["10.0.0.1", "10.0.0.2", "10.0.0.3"]);
        assert!(r.plan(&wishes).unwrap().plan.is_empty());
        assert!(read_big(&mut r), "read in full after pyfw's change");
        let checks = r.set_checks.as_mut().unwrap();
        checks.summarized(std::time::Duration::from_secs(1), std::time::Instant::now());
        assert!(r.plan(&wishes).unwrap().plan.is_empty());
        assert!(!read_big(&mut r), "a spot check found the members there");
        set_members(&mut r, &[]);
        let planned = r.plan(&wishes).unwrap();
        assert!(read_big(&mut r), "the emptied set is read in full");
        assert_eq!(count(&planned, "add"), 3, "{:?}", planned.plan.commands);
    }

    #[test]
    fn scopes_subtract_and_join_by_name() {
        let mut a = Scope::none();
        a.v4 = chains(&["INPUT", "FORWARD"]);
        a.sets = names(&["x", "y"]);
        let mut b = Scope::none();
        b.v4 = chains(&["INPUT"]);
        b.v6 = Rules::All;
        b.sets = names(&["y"]);
        let beyond = a.beyond(&b);
        assert_eq!(beyond.v4, chains(&["FORWARD"]));
        assert_eq!(beyond.v6, Rules::Skip);
        assert_eq!(beyond.sets, names(&["x"]));
        assert!(a.beyond(&a).is_empty());
        let union = a.union(&b).unwrap();
        assert_eq!(union.v4, chains(&["INPUT", "FORWARD"]));
        assert_eq!(union.v6, Rules::All);
        assert_eq!(union.sets, names(&["x", "y"]));
        // Whole tables beside single chains are no scope.
        let mut t = Scope::none();
        t.v4 = Rules::Tables(BTreeSet::from(["nat".to_string()]));
        assert_eq!(a.union(&t), None);
        // What is not known by name is asked for again.
        assert_eq!(t.beyond(&a).v4, t.v4);
    }
}
