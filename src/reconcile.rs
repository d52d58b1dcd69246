//! One reconcile: read the kernel, plan against the wishes, apply.
//!
//! This is the contract the one-shot `apply` and the daemon share, in the
//! manner of kube-rs's controller runtime: a reconcile is idempotent, reads
//! fresh state every time and never assumes what the last run left behind,
//! so any trigger (a file change, a signal, a timer, observed drift) can
//! call it, and calling it twice is the same as calling it once.

use crate::apply::{self, ApplyError, Event};
use crate::netfilter::{self, Backend};
use crate::plan::{self, Plan};
use crate::state::State;
use crate::wishes::Wishes;

/// Why a reconcile did not complete.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading netfilter state: {0}")]
    Read(#[source] netfilter::Error),
    #[error(transparent)]
    Apply(#[from] ApplyError),
}

/// What a plan-only reconcile saw.
#[derive(Debug)]
pub struct Planned {
    pub state: State,
    pub plan: Plan,
}

/// What an applying reconcile did.
#[derive(Debug)]
pub struct Applied {
    /// The state read before the plan ran.
    pub before: State,
    pub plan: Plan,
    /// How many commands ran (0 when in sync).
    pub ran: usize,
}

/// Runs reconciles against one backend.
pub struct Reconciler<B: Backend> {
    backend: B,
}

impl<B: Backend> Reconciler<B> {
    pub fn new(backend: B) -> Self {
        Reconciler { backend }
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// Reads what the wishes touch and plans, changing nothing.
    pub fn plan(&mut self, wishes: &Wishes) -> Result<Planned, Error> {
        let state = self
            .backend
            .read_state(apply::scope(wishes))
            .map_err(Error::Read)?;
        let plan = plan::plan(wishes, &state);
        Ok(Planned { state, plan })
    }

    /// Reads, plans and applies; all or nothing.
    pub fn apply(&mut self, wishes: &Wishes, on: &mut dyn FnMut(Event)) -> Result<Applied, Error> {
        let Planned { state, plan } = self.plan(wishes)?;
        if plan.is_empty() {
            return Ok(Applied {
                before: state,
                plan,
                ran: 0,
            });
        }
        let checks = apply::rule_checks(wishes, &state);
        let ran = apply::apply(&mut self.backend, &plan, &checks, on)?;
        Ok(Applied {
            before: state,
            plan,
            ran,
        })
    }
}
