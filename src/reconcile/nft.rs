//! The owned nftables tables in a reconcile: read each, compare it with
//! the kernel's rendering of its wish, and replace it whole when they
//! differ (see `plan::nft` for the script, `state::nft` for the
//! comparison).
//!
//! The wishes are nft's text as people type it (`tcp dport ssh`,
//! `ip saddr 10.0.0.1/32`); the kernel prints it otherwise (`tcp dport 22`,
//! `ip saddr 10.0.0.1`). So a table is never compared with its wish, only
//! with the kernel's own rendering of the wish, by the key of the script
//! (its digest and the nft and kernel that render it). That rendering is,
//! in order of preference:
//!
//! 1. remembered, or kept in the state directory
//!    (`kernel::state_dir`) from an earlier run: a restart of the daemon
//!    finds an unchanged table in sync and leaves it (and its counters);
//! 2. learned in a private network namespace, where pyfw may make one
//!    (not under the systemd unit's `RestrictNamespaces=`): the script is
//!    loaded there and listed, and nothing on the host changes;
//! 3. read back from the host after pyfw's own commit, proven to be that
//!    commit's by the ruleset's generation (it moved by exactly one over
//!    pyfw's `nft -f`, and not since). Where pyfw can learn in a namespace
//!    this read is left to the next run, which lists the table anyway; a
//!    table found with its rendering unknown and nothing to learn it from
//!    is replaced once, and read back.
//!
//! A poll of an unchanged host lists nothing: a table found as wished is
//! remembered with the generation read before it was listed, and while the
//! generation stays, no transaction has been committed since, by anyone
//! (what moves without one, counters and the elements packets add, is not
//! compared). Listing a 10,000-rule table costs nft about as much as
//! loading it.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::kernel::backend::Listing;
use crate::kernel::{self, Backend};
use crate::plan::{self, Command, Plan, Program};
use crate::state::nft::{Rendering, drift, objects, rendering};
use crate::state::ownership::Owned;
use crate::wishes::Wishes;
use crate::wishes::nft::{NftFamily, NftTableWish, table_label};

type TableId = (NftFamily, String);

/// What the reconciler remembers of owned tables between runs.
#[derive(Debug, Default)]
pub struct Memory {
    /// Renderings by key.
    renderings: HashMap<String, Rendering>,
    /// Tables last found as wished: the generation read before they were
    /// listed, and their wish's key.
    in_sync: HashMap<TableId, (u32, String)>,
}

/// What a plan found for the owned tables.
#[derive(Debug, Default)]
pub struct NftPlanned {
    /// The wished tables the plan replaces, with their keys and whether
    /// their rendering is known.
    pub replaced: Vec<Replaced>,
    /// Each table the plan replaces or deletes, as `nft -s list table`
    /// printed it (`None`: absent): the snapshot a rollback puts back.
    pub before: BTreeMap<TableId, Option<String>>,
    /// Withdrawn tables the plan deletes.
    pub deleted: Vec<TableId>,
}

/// A wished table a plan replaces.
#[derive(Debug)]
pub struct Replaced {
    pub family: NftFamily,
    pub name: String,
    pub key: String,
    /// The kernel's rendering of its wish was known when planned.
    pub known: bool,
}

/// What a table's state file holds.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Entry {
    key: String,
    rendering: Option<Rendering>,
    /// pyfw committed this key's script at this generation and has not
    /// read it back yet.
    pending: Option<Pending>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Pending {
    /// The network namespace it was committed in (a generation means
    /// nothing in another).
    netns: String,
    generation: u32,
}

fn file_name(family: NftFamily, name: &str) -> String {
    format!("nft-{family}-{name}.json")
}

fn load_entry(family: NftFamily, name: &str) -> Option<Entry> {
    let text = kernel::state_dir::read(&file_name(family, name))?;
    serde_json::from_str(&text).ok()
}

fn save_entry(family: NftFamily, name: &str, entry: &Entry) {
    let saved = serde_json::to_string(entry)
        .map_err(|e| e.to_string())
        .and_then(|text| kernel::state_dir::write(&file_name(family, name), &text));
    if let Err(e) = saved {
        tracing::warn!(
            "cannot keep the kernel's rendering of nft {family} {name} for the next run ({e}); \
             a restart learns it again"
        );
    }
}

/// The key of the network namespace this thread is in.
fn netns() -> String {
    kernel::netns::netns_key().unwrap_or_default()
}

/// Reads the owned tables (the wished ones, and those pyfw's record names
/// that are no longer wished) and adds to `plan` the commands that make
/// them as wished: replacements after the plan's first set commands (sets
/// come first in a plan, and no table refers to an ipset) and before any
/// iptables change, deletions last.
pub fn plan_tables(
    backend: &mut dyn Backend,
    memory: &mut Memory,
    wishes: &Wishes,
    record: &[Owned],
    plan: &mut Plan,
) -> Result<NftPlanned, kernel::Error> {
    let withdrawn: Vec<TableId> = record
        .iter()
        .filter_map(|o| match o {
            Owned::NftTable { family, name } => Some((*family, name.clone())),
            _ => None,
        })
        .filter(|(f, n)| {
            !wishes
                .nftables
                .iter()
                .any(|t| t.family == *f && t.name == *n)
        })
        .collect();
    let mut out = NftPlanned::default();
    if wishes.nftables.is_empty() && withdrawn.is_empty() {
        return Ok(out);
    }
    let generation = backend.nft_generation();
    let renderer = backend.nft_version();
    let mut replace = Vec::new();
    for table in wishes.nftables.iter() {
        let mut planner = TablePlanner {
            backend: &mut *backend,
            memory: &mut *memory,
            table,
            generation,
        };
        if let Some(c) = planner.plan(&renderer, &mut out)? {
            replace.push(c);
        }
    }
    let mut delete = Vec::new();
    for (family, name) in withdrawn {
        let Some(text) = backend.nft_list(family, &name, Listing::Text)? else {
            continue;
        };
        delete.push(plan::nft::command(
            plan::nft::delete_script(family, &name),
            format!("{}: withdrawn from the wishes", table_label(family, &name)),
            table_label(family, &name),
        ));
        out.before.insert((family, name.clone()), Some(text));
        out.deleted.push((family, name));
    }
    let at = plan
        .commands
        .iter()
        .position(|c| c.program != Program::Ipset)
        .unwrap_or(plan.commands.len());
    plan.commands.splice(at..at, replace);
    plan.commands.extend(delete);
    Ok(out)
}

/// One wished table's part of a plan.
struct TablePlanner<'a> {
    backend: &'a mut dyn Backend,
    memory: &'a mut Memory,
    table: &'a NftTableWish,
    /// The generation read before any table was listed.
    generation: Option<u32>,
}

impl TablePlanner<'_> {
    /// The command that replaces the table, if it differs from its wish.
    fn plan(
        &mut self,
        renderer: &str,
        out: &mut NftPlanned,
    ) -> Result<Option<Command>, kernel::Error> {
        let t = self.table;
        let id = (t.family, t.name.clone());
        let script = plan::nft::script(t);
        let key = plan::nft::key(&script, renderer);
        if let (Some(now), Some((seen, seen_key))) = (self.generation, self.memory.in_sync.get(&id))
            && now == *seen
            && key == *seen_key
        {
            return Ok(None);
        }
        self.memory.in_sync.remove(&id);
        let live = self.read()?;
        let expected = self.expected(&script, &key, live.as_ref());
        let reason = match &expected {
            Some(want) => {
                let drift = drift(want, live.as_ref());
                if drift.is_empty() {
                    if let Some(g) = self.generation {
                        self.memory.in_sync.insert(id, (g, key));
                    }
                    return Ok(None);
                }
                plan::nft::reason(t, &drift)
            }
            None if live.is_none() => format!("{}: table missing", t.label()),
            None => format!(
                "{}: replaced to learn how the kernel renders these wishes (none is kept for \
                 them, and there is no private network namespace to learn it in)",
                t.label()
            ),
        };
        let before = match live {
            Some(_) => self.backend.nft_list(t.family, &t.name, Listing::Text)?,
            None => None,
        };
        out.before.insert(id, before);
        out.replaced.push(Replaced {
            family: t.family,
            name: t.name.clone(),
            key,
            known: expected.is_some(),
        });
        Ok(Some(plan::nft::command(script, reason, t.label())))
    }

    /// The table as the kernel renders it now; `None` when absent.
    fn read(&mut self) -> Result<Option<Rendering>, kernel::Error> {
        let t = self.table;
        let Some(json) = self.backend.nft_list(t.family, &t.name, Listing::Json)? else {
            return Ok(None);
        };
        let objects = objects(&json).map_err(|message| kernel::Error::Failed {
            command: format!("nft -j list table {} {}", t.family, t.name),
            status: "unexpected output".into(),
            stderr: message,
        })?;
        Ok(Some(rendering(&objects)))
    }

    /// The kernel's rendering of `script` (the table's wish), when known
    /// or learned; `live` is the table as read.
    fn expected(&mut self, script: &str, key: &str, live: Option<&Rendering>) -> Option<Rendering> {
        let t = self.table;
        if let Some(r) = self.memory.renderings.get(key) {
            return Some(r.clone());
        }
        let entry = load_entry(t.family, &t.name).filter(|e| e.key == key);
        if let Some(r) = entry.as_ref().and_then(|e| e.rendering.clone()) {
            self.memory.renderings.insert(key.to_string(), r.clone());
            return Some(r);
        }
        // Absent: replaced whatever its rendering; learned after.
        let live = live?;
        let adopted = match entry.and_then(|e| e.pending) {
            Some(p) => self.own_commit(&p).then(|| live.clone()),
            None => None,
        };
        let learned = adopted.or_else(|| self.learn(script));
        if let Some(r) = &learned {
            self.keep(key, r.clone());
        }
        learned
    }

    /// Whether the table as just listed is exactly what pyfw committed at
    /// `pending`: no transaction was committed since, before or after the
    /// listing.
    fn own_commit(&mut self, pending: &Pending) -> bool {
        let after = self.backend.nft_generation();
        pending.netns == netns()
            && Some(pending.generation) == self.generation
            && after == self.generation
    }

    /// The kernel's rendering of `script`, learned in a private namespace.
    fn learn(&mut self, script: &str) -> Option<Rendering> {
        let t = self.table;
        if !self.backend.nft_can_learn() {
            return None;
        }
        let scripts = [(t.family, t.name.clone(), script.to_string())];
        let learned = self.backend.nft_learn(&scripts).and_then(|mut json| {
            let json = json.pop().unwrap_or_default();
            objects(&json).map_err(|message| kernel::Error::Failed {
                command: "nft -j list table (private namespace)".into(),
                status: "unexpected output".into(),
                stderr: message,
            })
        });
        match learned {
            Ok(objects) => Some(rendering(&objects)),
            Err(e) => {
                tracing::debug!(
                    "cannot learn how the kernel renders {} in a private network namespace \
                     ({e}); the table is replaced and read back",
                    t.label()
                );
                None
            }
        }
    }

    fn keep(&mut self, key: &str, r: Rendering) {
        let t = self.table;
        let entry = Entry {
            key: key.to_string(),
            rendering: Some(r.clone()),
            pending: None,
        };
        save_entry(t.family, &t.name, &entry);
        self.memory.renderings.insert(key.to_string(), r);
    }
}

/// After an apply that committed `planned`: learns the rendering of each
/// table replaced without one (now, by reading it back, where pyfw cannot
/// learn in a namespace; else at the next run), and forgets deleted
/// tables. Never fails: what it cannot learn, a later run learns.
pub fn applied(backend: &mut dyn Backend, memory: &mut Memory, planned: &NftPlanned) {
    let committed = backend.nft_committed();
    for r in planned.replaced.iter().filter(|r| !r.known) {
        let pending = committed.map(|generation| Pending {
            netns: netns(),
            generation,
        });
        let read_back = match (backend.nft_can_learn(), committed) {
            (false, Some(g)) => read_back(backend, r, g),
            _ => None,
        };
        let entry = match read_back {
            Some(rendering) => {
                memory.renderings.insert(r.key.clone(), rendering.clone());
                Entry {
                    key: r.key.clone(),
                    rendering: Some(rendering),
                    pending: None,
                }
            }
            None => Entry {
                key: r.key.clone(),
                rendering: None,
                pending,
            },
        };
        save_entry(r.family, &r.name, &entry);
    }
    for (family, name) in &planned.deleted {
        memory.in_sync.remove(&(*family, name.clone()));
        kernel::state_dir::remove(&file_name(*family, name));
    }
}

/// The table as pyfw's commit at `generation` left it, if nothing was
/// committed since, before or after it was listed.
fn read_back(backend: &mut dyn Backend, r: &Replaced, generation: u32) -> Option<Rendering> {
    if backend.nft_generation() != Some(generation) {
        return None;
    }
    let json = backend.nft_list(r.family, &r.name, Listing::Json).ok()??;
    if backend.nft_generation() != Some(generation) {
        return None;
    }
    objects(&json).ok().map(|o| rendering(&o))
}

/// The tables pyfw's record (in `state`) says it owns, as they are: for
/// `pyfw state`. A table owned but absent is not shown.
pub fn owned_tables(
    backend: &mut dyn Backend,
    state: &crate::state::State,
) -> Result<Vec<crate::state::nft::TableState>, kernel::Error> {
    let mut out = Vec::new();
    for entry in crate::state::ownership::read(state) {
        let Owned::NftTable { family, name } = entry else {
            continue;
        };
        let (Some(json), Some(text)) = (
            backend.nft_list(family, &name, Listing::Json)?,
            backend.nft_list(family, &name, Listing::Text)?,
        ) else {
            continue;
        };
        let objects = objects(&json)
            .map_err(|message| kernel::Error::Failed {
                command: format!("nft -j list table {family} {name}"),
                status: "unexpected output".into(),
                stderr: message,
            })?
            .into_iter()
            .filter(|o| o.get("metainfo").is_none())
            .collect();
        out.push(crate::state::nft::TableState {
            family,
            name,
            text,
            objects,
        });
    }
    Ok(out)
}

/// Asks the kernel whether it takes each planned table (`nft -c`),
/// committing nothing: what `plan` and `check` ask before saying what an
/// apply would do. A refusal names the wish.
pub fn check(backend: &mut dyn Backend, plan: &Plan) -> Result<(), kernel::Error> {
    for c in &plan.commands {
        if let Some(script) = plan::nft::script_of(c) {
            backend.nft_check(script)?;
        }
    }
    Ok(())
}
