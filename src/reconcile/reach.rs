//! Reading, read-only, the chains the lock-out lint follows: a plan reads
//! only the chains it may change, but whether INPUT accepts the SSH port
//! on a crowded host is decided in the chains it jumps to (`KUBE-*`,
//! `DOCKER-*`, `f2b-*`, `ufw-*`), to any depth.

use std::collections::BTreeSet;

use crate::kernel::scope::merge;
use crate::kernel::{self, Backend, Rules, Scope};
use crate::plan::lint::{self, Host, SshConnection};
use crate::state::{Family, State};
use crate::wishes::Wishes;

/// Reads into `state` the chains [`lint::unread`] names, one level of jumps
/// per read (each read asks for every chain missing at that level), until
/// none is missing or every one missing was asked for already (a target
/// that is gone, or an extension the lint took for a chain, reads as
/// nothing). `ssh` and `nft_tables` are the lint's: they say which chains
/// it checks. On an error, `state` keeps what was read before it.
pub fn read_for_lint<B: Backend>(
    backend: &mut B,
    wishes: &Wishes,
    state: &mut State,
    ssh: Option<&SshConnection>,
    nft_tables: &[(String, String)],
) -> Result<(), kernel::Error> {
    let mut asked: BTreeSet<(Family, String)> = BTreeSet::new();
    loop {
        let host = Host {
            state,
            ssh,
            nft_tables,
        };
        let mut more = Scope::none();
        for (family, chains) in lint::unread(wishes, &host) {
            let new: BTreeSet<(String, String)> = chains
                .into_iter()
                .filter(|c| asked.insert((family, c.clone())))
                .map(|c| ("filter".to_string(), c))
                .collect();
            if !new.is_empty() {
                *more.rules_mut(family) = Rules::Chains(new);
            }
        }
        if more.is_empty() {
            return Ok(());
        }
        let extra = backend.read_state(more.clone())?;
        *state = merge(std::mem::take(state), extra, &more);
    }
}
