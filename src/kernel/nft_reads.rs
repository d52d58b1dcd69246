//! The nft variant's chain reads, remembered for a reader that polls (the
//! daemon): chains read at a generation of the ruleset are not read again
//! while it stays. nf_tables moves its generation on with every committed
//! transaction in the network namespace, whoever commits it (iptables-nft,
//! nft, Docker, firewalld, pyfw itself), and with nothing else (see
//! [`crate::kernel::nft::generation`]): while it stays, no chain changed.
//! Asking costs one netlink round trip; reading the chains costs a process
//! per chain, most of an idle poll's CPU. ipsets are not nf_tables: their
//! reads are not remembered here (see `reconcile::set_checks`).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use crate::kernel::backend::Error;
use crate::kernel::netns::netns_id;
use crate::state::{Family, Ruleset};

/// The last read of each family's chains, with its generation (shared by
/// the clones of a [`crate::kernel::system::System`]).
#[derive(Clone, Default)]
pub struct NftReads {
    last: Arc<Mutex<HashMap<(u64, Family), Kept>>>,
}

impl std::fmt::Debug for NftReads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NftReads")
    }
}

struct Kept {
    generation: u32,
    chains: BTreeSet<(String, String)>,
    read: Ruleset,
}

impl NftReads {
    /// `chains` of `family` as `read` reads them, or as they were last read
    /// when the generation has not moved since. A read is kept only when
    /// the generation was the same before and after it (no commit landed
    /// while it listed the chains).
    pub(crate) fn read(
        &self,
        family: Family,
        chains: &BTreeSet<(String, String)>,
        read: impl FnOnce() -> Result<Ruleset, Error>,
        generation: impl Fn() -> Option<u32>,
    ) -> Result<Ruleset, Error> {
        let Some(ns) = netns_id() else {
            return read();
        };
        let key = (ns, family);
        let before = generation();
        if let Some(g) = before {
            let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(kept) = last.get(&key)
                && kept.generation == g
                && kept.chains == *chains
            {
                tracing::debug!(
                    "{} chains unchanged since nf_tables generation {g}: not read again",
                    family.command()
                );
                return Ok(kept.read.clone());
            }
        }
        let result = read();
        let after = generation();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        match (&result, before, after) {
            (Ok(rs), Some(b), Some(a)) if a == b => {
                let kept = Kept {
                    generation: b,
                    chains: chains.clone(),
                    read: rs.clone(),
                };
                last.insert(key, kept);
            }
            _ => {
                last.remove(&key);
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;
    use crate::state::parse_iptables_save;

    fn ruleset(rule: &str) -> Ruleset {
        parse_iptables_save(&format!(
            "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT {rule}\nCOMMIT\n"
        ))
        .unwrap()
    }

    #[test]
    fn chains_are_read_again_only_when_the_generation_moved() {
        let reads = NftReads::default();
        let chains = BTreeSet::from([("filter".to_string(), "INPUT".to_string())]);
        let generation = Cell::new(7);
        let count = Cell::new(0);
        let read = |rule: &'static str| {
            let count = &count;
            move || {
                count.set(count.get() + 1);
                Ok(ruleset(rule))
            }
        };
        let now = || Some(generation.get());
        let first = reads
            .read(Family::V4, &chains, read("-j ACCEPT"), now)
            .unwrap();
        let again = reads
            .read(Family::V4, &chains, read("-j DROP"), now)
            .unwrap();
        assert_eq!(
            (count.get(), &again),
            (1, &first),
            "same generation: not read"
        );
        // Other chains, or the other family, are read.
        let more = BTreeSet::from([("filter".to_string(), "FORWARD".to_string())]);
        reads
            .read(Family::V4, &more, read("-j ACCEPT"), now)
            .unwrap();
        reads
            .read(Family::V6, &chains, read("-j ACCEPT"), now)
            .unwrap();
        assert_eq!(count.get(), 3);
        // A commit anywhere: read again.
        generation.set(8);
        let after = reads
            .read(Family::V6, &chains, read("-j DROP"), now)
            .unwrap();
        assert_eq!((count.get(), after), (4, ruleset("-j DROP")));
    }

    #[test]
    fn a_read_a_commit_landed_in_is_not_kept() {
        let reads = NftReads::default();
        let chains = BTreeSet::from([("filter".to_string(), "INPUT".to_string())]);
        let generation = Cell::new(1);
        let count = Cell::new(0);
        let moving = || {
            count.set(count.get() + 1);
            // Someone commits while the chain is listed.
            generation.set(generation.get() + 1);
            Ok(ruleset("-j ACCEPT"))
        };
        let now = || Some(generation.get());
        reads.read(Family::V4, &chains, moving, now).unwrap();
        let steady = || {
            count.set(count.get() + 1);
            Ok(ruleset("-j DROP"))
        };
        let next = reads.read(Family::V4, &chains, steady, now).unwrap();
        assert_eq!((count.get(), next), (2, ruleset("-j DROP")));
        // Without a generation, every read is a read.
        let none = || None;
        reads
            .read(Family::V4, &chains, || Ok(ruleset("-j ACCEPT")), none)
            .unwrap();
        let last = reads.read(Family::V4, &chains, || Ok(ruleset("-j REJECT")), none);
        assert_eq!(last.unwrap(), ruleset("-j REJECT"));
    }
}
