//! The legacy reads' cache: a legacy table's chains are read again only
//! when the table's fingerprint changed (see [`LegacyCache`]).

use std::collections::BTreeSet;
use std::time::Duration;

use crate::kernel::netns::netns_id;
use crate::state::{self, Family};

/// What [`LegacyCache::lookup`] found.
pub(crate) enum Lookup {
    /// The chains, unchanged since they were read.
    Hit(state::Table),
    /// Read them; keep the read with this ticket (`None`: cannot be kept,
    /// the network namespace being unknown).
    Miss(Option<Ticket>),
}

/// What a [`LegacyCache::lookup`] that missed knew, to keep with the read.
pub(crate) struct Ticket {
    pub(crate) key: (u64, Family, String),
    pub(crate) fingerprint: Option<u64>,
    pub(crate) quiet: Option<Quiet>,
}

impl LegacyCache {
    /// The chains `wanted` of a legacy table, from the cache when the
    /// xtables lock stayed quiet or the fingerprint did not change;
    /// otherwise what the read that follows must be kept with.
    pub(crate) fn lookup(&self, family: Family, table: &str, wanted: &BTreeSet<String>) -> Lookup {
        let Some(ns) = netns_id() else {
            return Lookup::Miss(None);
        };
        let key = (ns, family, table.to_string());
        // The lock's count first: a close counted after it makes the next
        // poll look again.
        let closes = self.lock.as_ref().and_then(|l| l.closes());
        let checked_at = std::time::Instant::now();
        let summary = closes.and_then(|_| {
            crate::kernel::fingerprint::legacy_summary(family, table)
                .inspect_err(|e| tracing::debug!("no summary of {family:?} {table}: {e}"))
                .ok()
                .flatten()
        });
        let quiet = closes.zip(summary).map(|(closes, summary)| Quiet {
            closes,
            summary,
            since: checked_at,
        });
        if let Some(t) = quiet.and_then(|q| self.quiet_hit(&key, &q, wanted)) {
            return Lookup::Hit(t);
        }
        let fingerprint = crate::kernel::fingerprint::legacy_table(family, table)
            .inspect_err(|e| tracing::debug!("no fingerprint of {family:?} {table}: {e}"))
            .ok()
            .flatten();
        // The lock's next check may use it (see `xtlock::Release`).
        if let (Some(lock), Some(closes), Some(fp)) = (&self.lock, closes, fingerprint) {
            lock.fingerprinted(ns, family, table, closes, fp);
        }
        if let Some(t) = fingerprint.and_then(|fp| self.hit(&key, fp, wanted, quiet)) {
            return Lookup::Hit(t);
        }
        Lookup::Miss(Some(Ticket {
            key,
            fingerprint,
            quiet,
        }))
    }

    /// Keeps what was just read after `ticket`'s lookup missed (`None`:
    /// the table holds none of the chains); without a fingerprint, nothing.
    pub(crate) fn remember(
        &self,
        ticket: Ticket,
        chains: BTreeSet<String>,
        table: Option<state::Table>,
    ) {
        match ticket.fingerprint {
            Some(fp) => self.store(ticket.key, fp, chains, table, ticket.quiet),
            None => self.forget(&ticket.key),
        }
    }

    /// The chains `wanted` of a table, if they were all read when the
    /// table had this fingerprint, and the entry is not due a re-read.
    /// A hit also starts the table's quiet trust again with `quiet`.
    pub(crate) fn hit(
        &self,
        key: &(u64, Family, String),
        fp: u64,
        wanted: &BTreeSet<String>,
        quiet: Option<Quiet>,
    ) -> Option<state::Table> {
        let mut map = self.tables.lock().ok()?;
        let entry = map.get_mut(key)?;
        if entry.fingerprint != fp
            || entry.read_at.elapsed() >= LEGACY_REREAD_AFTER
            || !wanted.is_subset(&entry.chains)
        {
            return None;
        }
        entry.quiet = quiet;
        tracing::debug!(
            "{:?} {}: unchanged since it was read (fingerprint)",
            key.1,
            key.2
        );
        Some(entry.wanted(wanted))
    }

    /// The chains `wanted`, without a fingerprint, if the xtables lock has
    /// seen no close and the table's summary is the same (`now` has both
    /// as they are now) since a fingerprint found them unchanged less than
    /// [`crate::kernel::xtlock::TRUST_QUIET_FOR`] ago.
    pub(crate) fn quiet_hit(
        &self,
        key: &(u64, Family, String),
        now: &Quiet,
        wanted: &BTreeSet<String>,
    ) -> Option<state::Table> {
        let map = self.tables.lock().ok()?;
        let entry = map.get(key)?;
        let quiet = entry.quiet.as_ref()?;
        if quiet.closes != now.closes
            || quiet.summary != now.summary
            || quiet.since.elapsed() >= crate::kernel::xtlock::TRUST_QUIET_FOR
            || entry.read_at.elapsed() >= LEGACY_REREAD_AFTER
            || !wanted.is_subset(&entry.chains)
        {
            return None;
        }
        tracing::debug!(
            "{:?} {}: unchanged since it was read (the xtables lock stayed quiet)",
            key.1,
            key.2
        );
        Some(entry.wanted(wanted))
    }

    /// Keeps what was just read of a table (`None`: it holds none of the
    /// chains) with the fingerprint taken before the read.
    pub(crate) fn store(
        &self,
        key: (u64, Family, String),
        fp: u64,
        chains: BTreeSet<String>,
        table: Option<state::Table>,
        quiet: Option<Quiet>,
    ) {
        if let Ok(mut map) = self.tables.lock() {
            map.insert(
                key,
                CachedTable {
                    fingerprint: fp,
                    chains,
                    table: table.unwrap_or_default(),
                    read_at: std::time::Instant::now(),
                    quiet,
                },
            );
        }
    }

    /// pyfw ran an iptables tool itself: its release of the xtables lock
    /// may not be counted yet when the next poll looks, so no table is
    /// trusted on the lock's word until a fingerprint has been taken again.
    pub(crate) fn distrust(&self) {
        if let Ok(mut map) = self.tables.lock() {
            for entry in map.values_mut() {
                entry.quiet = None;
            }
        }
    }

    pub(crate) fn forget(&self, key: &(u64, Family, String)) {
        if let Ok(mut map) = self.tables.lock() {
            map.remove(key);
        }
    }
}

/// On legacy, any read copies the whole table out of the kernel: with a
/// 50,000-rule table, 0.1 s of CPU per chain read, every poll, and more to
/// parse. A table's fingerprint ([`crate::kernel::fingerprint`]) costs most of one
/// such copy (0.07 s: the kernel's copy is the floor) but nothing else, and
/// changes with any rule, order or policy change (never with counters), so
/// a poll reads a table's chains again only when it changed, and in any
/// case after [`LEGACY_REREAD_AFTER`], as a safety net. Only the
/// chains asked for are kept, so memory stays small. A clone starts empty,
/// and each entry names the network namespace it was read in.
///
/// When the daemon follows the xtables lock ([`crate::kernel::xtlock`]), a poll
/// that finds no close of the lock since a table's last fingerprint, and the
/// table's summary as it was then, skips even the fingerprint, for at most
/// [`crate::kernel::xtlock::TRUST_QUIET_FOR`] after it.
#[derive(Debug, Default)]
pub(crate) struct LegacyCache {
    pub(crate) tables:
        std::sync::Mutex<std::collections::HashMap<(u64, Family, String), CachedTable>>,
    pub(crate) lock: Option<crate::kernel::xtlock::LockWatch>,
}

impl Clone for LegacyCache {
    fn clone(&self) -> Self {
        LegacyCache {
            tables: Default::default(),
            lock: self.lock.clone(),
        }
    }
}

/// What a table's quiet trust rests on: the xtables lock's close count and
/// the table's summary, both taken before the fingerprint that found the
/// chains unchanged, and when.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Quiet {
    pub(crate) closes: u64,
    pub(crate) summary: crate::kernel::fingerprint::TableInfo,
    pub(crate) since: std::time::Instant,
}

#[derive(Debug)]
pub(crate) struct CachedTable {
    /// The table's fingerprint, taken before it was read.
    pub(crate) fingerprint: u64,
    /// The chains read, as read (a chain absent here did not exist).
    pub(crate) chains: BTreeSet<String>,
    pub(crate) table: state::Table,
    /// When it was read.
    pub(crate) read_at: std::time::Instant,
    /// While the xtables lock is followed: see [`Quiet`].
    pub(crate) quiet: Option<Quiet>,
}

impl CachedTable {
    pub(crate) fn wanted(&self, wanted: &BTreeSet<String>) -> state::Table {
        let chains = self
            .table
            .chains
            .iter()
            .filter(|(name, _)| wanted.contains(name))
            .cloned()
            .collect();
        state::Table { chains }
    }
}

/// How long a legacy table's chains are answered from the cache before
/// they are read again whatever the fingerprint says: a safety net.
const LEGACY_REREAD_AFTER: Duration = Duration::from_secs(300);
