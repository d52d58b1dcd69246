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
    /// What each table was last known to be, and when.
    marks: HashMap<TableId, Option<Mark>>,
    /// Keep every replaced table's text, even when nothing after its
    /// replacement can fail (see [`Memory::keep_every_snapshot`]).
    every_snapshot: bool,
}

impl Memory {
    /// Keeps the text of every table a plan replaces, for a revert asked
    /// for after the apply committed (`apply --confirm`). Without it, a
    /// replacement that is a plan's last transaction keeps none: nft
    /// commits it whole or not at all, and nothing after it can fail.
    pub fn keep_every_snapshot(&mut self) {
        self.every_snapshot = true;
    }

    /// The table's mark, from memory or its file.
    fn mark(&mut self, id: &TableId) -> Option<Mark> {
        self.marks
            .entry(id.clone())
            .or_insert_with(|| load(&mark_file(id.0, &id.1)))
            .clone()
    }

    /// Notes (and keeps in the state directory) what the table is now.
    fn set_mark(&mut self, id: &TableId, mark: Option<Mark>) {
        if self.mark(id) == mark {
            return;
        }
        match &mark {
            Some(m) => save(&mark_file(id.0, &id.1), m, &id.1),
            None => kernel::state_dir::remove(&mark_file(id.0, &id.1)),
        }
        self.marks.insert(id.clone(), mark);
    }

    /// The kernel's rendering of the script of `key`, from memory or the
    /// table's file.
    fn rendering(&mut self, id: &TableId, key: &str) -> Option<Rendering> {
        if let Some(r) = self.renderings.get(key) {
            return Some(r.clone());
        }
        let entry: Entry = load(&rendering_file(id.0, &id.1))?;
        let r = entry.rendering.filter(|_| entry.key == key)?;
        self.renderings.insert(key.to_string(), r.clone());
        Some(r)
    }

    /// Keeps the rendering of `key`'s script, in memory and in the table's
    /// file.
    fn keep(&mut self, id: &TableId, key: &str, rendering: Rendering) {
        let entry = Entry {
            key: key.to_string(),
            rendering: Some(rendering),
        };
        save(&rendering_file(id.0, &id.1), &entry, &id.1);
        self.renderings
            .insert(key.to_string(), entry.rendering.unwrap_or_default());
    }

    fn forget(&mut self, id: &TableId) {
        self.marks.insert(id.clone(), None);
        kernel::state_dir::remove(&mark_file(id.0, &id.1));
        kernel::state_dir::remove(&rendering_file(id.0, &id.1));
    }
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
    /// The digest of its script.
    pub script: String,
    /// The key of its rendering (the script's digest and its renderer).
    pub key: String,
    /// The kernel's rendering of its wish was known when planned.
    pub known: bool,
}

/// The kernel's rendering of a table's script, as its file keeps it.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Entry {
    key: String,
    rendering: Option<Rendering>,
}

/// What a table was at a generation: exactly what loading the script of
/// this digest makes, whether pyfw had just committed it or had read it
/// and found it so. While the generation stays, no transaction has been
/// committed since, so it still is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Mark {
    script: String,
    /// The network namespace (a generation means nothing in another).
    netns: String,
    generation: u32,
}

fn rendering_file(family: NftFamily, name: &str) -> String {
    format!("nft-{family}-{name}.json")
}

fn mark_file(family: NftFamily, name: &str) -> String {
    format!("nft-{family}-{name}.mark")
}

fn load<T: serde::de::DeserializeOwned>(file: &str) -> Option<T> {
    serde_json::from_str(&kernel::state_dir::read(file)?).ok()
}

fn save(file: &str, value: &impl Serialize, table: &str) {
    let saved = serde_json::to_string(value)
        .map_err(|e| e.to_string())
        .and_then(|text| kernel::state_dir::write(file, &text));
    if let Err(e) = saved {
        tracing::warn!(
            "cannot keep what pyfw knows of nftables table {table} for the next run ({e}); \
             a restart learns it again"
        );
    }
}

/// This boot and the network namespace this thread is in: where a
/// generation means something (a namespace's cookie, and its generations,
/// start over at a reboot).
fn netns() -> String {
    static BOOT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let boot = BOOT.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|b| b.trim().to_string())
            .unwrap_or_default()
    });
    format!("{boot}/{}", kernel::netns::netns_key().unwrap_or_default())
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
    let withdrawn = withdrawn_tables(wishes, record);
    let mut out = NftPlanned::default();
    if wishes.nftables.is_empty() && withdrawn.is_empty() {
        return Ok(out);
    }
    let generation = backend.nft_generation();
    let renderer = backend.nft_version();
    let mut replace = Vec::new();
    let mut present = Vec::new();
    for table in wishes.nftables.iter() {
        let mut planner = TablePlanner {
            backend: &mut *backend,
            memory: &mut *memory,
            table,
            id: (table.family, table.name.clone()),
            generation,
        };
        if let Some((c, exists)) = planner.plan(&renderer, &mut out)? {
            replace.push(c);
            present.push((table.family, table.name.clone(), exists));
        }
    }
    let delete = delete_withdrawn(backend, memory, withdrawn, &mut out)?;
    let at = plan
        .commands
        .iter()
        .position(|c| c.program != Program::Ipset)
        .unwrap_or(plan.commands.len());
    // What a rollback needs: the replaced tables' text, unless their
    // replacement is the plan's last transaction (a 10,000-rule table's
    // listing costs about what its replacement does).
    let later = at < plan.commands.len() || !delete.is_empty() || memory.every_snapshot;
    for (family, name, exists) in present {
        if exists && !later {
            continue;
        }
        let text = match exists {
            true => backend.nft_list(family, &name, Listing::Text)?,
            false => None,
        };
        out.before.insert((family, name), text);
    }
    plan.commands.splice(at..at, replace);
    plan.commands.extend(delete);
    Ok(out)
}

/// The tables pyfw's record names that are no longer wished.
fn withdrawn_tables(wishes: &Wishes, record: &[Owned]) -> Vec<TableId> {
    record
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
        .collect()
}

/// The commands that delete the `withdrawn` tables still there, each
/// table's text kept in `out` for a rollback; those gone already are
/// forgotten.
fn delete_withdrawn(
    backend: &mut dyn Backend,
    memory: &mut Memory,
    withdrawn: Vec<TableId>,
    out: &mut NftPlanned,
) -> Result<Vec<Command>, kernel::Error> {
    let mut delete = Vec::new();
    for (family, name) in withdrawn {
        let Some(text) = backend.nft_list(family, &name, Listing::Text)? else {
            // Gone already: nothing to delete, nothing to remember.
            memory.forget(&(family, name));
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
    Ok(delete)
}

/// One wished table's part of a plan.
struct TablePlanner<'a> {
    backend: &'a mut dyn Backend,
    memory: &'a mut Memory,
    table: &'a NftTableWish,
    id: TableId,
    /// The generation read before any table was listed.
    generation: Option<u32>,
}

impl TablePlanner<'_> {
    /// The command that replaces the table, if it differs from its wish,
    /// and whether the table is there now.
    fn plan(
        &mut self,
        renderer: &str,
        out: &mut NftPlanned,
    ) -> Result<Option<(Command, bool)>, kernel::Error> {
        let t = self.table;
        let text = plan::nft::script(t);
        let script = plan::nft::key(&text, "");
        let key = plan::nft::key(&text, renderer);
        let replace = |reason: String, known: bool, exists: bool, out: &mut NftPlanned| {
            out.replaced.push(Replaced {
                family: t.family,
                name: t.name.clone(),
                script: script.clone(),
                key: key.clone(),
                known,
            });
            let command = plan::nft::command(text.clone(), reason, t.label());
            Ok(Some((command, exists)))
        };
        // Nothing committed since the table was last known: no listing.
        if let Some(mark) = self.unchanged() {
            if mark.script == script {
                return Ok(None);
            }
            let known = self.memory.rendering(&self.id, &key).is_some();
            let reason = format!("{}: the wishes changed", t.label());
            return replace(reason, known, true, out);
        }
        let live = self.read()?;
        let expected = self.expected(&text, &key, live.is_some());
        let reason = match &expected {
            Some(want) => {
                let drift = drift(want, live.as_ref());
                if drift.is_empty() {
                    let mark = self.generation.map(|generation| Mark {
                        script,
                        netns: netns(),
                        generation,
                    });
                    self.memory.set_mark(&self.id, mark);
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
        replace(reason, expected.is_some(), live.is_some(), out)
    }

    /// The table's mark, when the generation says nothing was committed
    /// since it was made.
    fn unchanged(&mut self) -> Option<Mark> {
        let now = self.generation?;
        self.memory
            .mark(&self.id)
            .filter(|m| m.generation == now && m.netns == netns())
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

    /// The kernel's rendering of `text` (the table's script), when kept or
    /// learned; not learned for a table that is not there (it is made
    /// whatever the rendering, and learned after).
    fn expected(&mut self, text: &str, key: &str, exists: bool) -> Option<Rendering> {
        if let Some(r) = self.memory.rendering(&self.id, key) {
            return Some(r);
        }
        if !exists {
            return None;
        }
        let learned = self.learn(text)?;
        self.memory.keep(&self.id, key, learned.clone());
        Some(learned)
    }

    /// The kernel's rendering of `text`, learned in a private namespace.
    fn learn(&mut self, text: &str) -> Option<Rendering> {
        let t = self.table;
        if !self.backend.nft_can_learn() {
            return None;
        }
        let scripts = [(t.family, t.name.clone(), text.to_string())];
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
}

/// After an apply that committed `planned`: marks each replaced table as
/// its script's at the generation pyfw's commit made (when the generation
/// proves the commit was pyfw's alone), learns the rendering of a table
/// replaced without one where it cannot be learned in a namespace later
/// (by reading it back now, while that generation stands), and forgets
/// deleted tables. Never fails: what it cannot learn, a later run learns.
pub fn applied(backend: &mut dyn Backend, memory: &mut Memory, planned: &NftPlanned) {
    let committed = backend.nft_committed();
    for r in &planned.replaced {
        let id = (r.family, r.name.clone());
        let mark = committed.map(|generation| Mark {
            script: r.script.clone(),
            netns: netns(),
            generation,
        });
        memory.set_mark(&id, mark);
        if r.known || backend.nft_can_learn() {
            continue;
        }
        if let Some(rendering) = committed.and_then(|g| read_back(backend, r, g)) {
            memory.keep(&id, &r.key, rendering);
        }
    }
    for id in &planned.deleted {
        memory.forget(id);
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
