//! The changes to pyfw's ownership record that a plan makes.

use std::collections::BTreeSet;

use crate::plan::command::{Command, Program};
use crate::state::State;
use crate::state::ownership::{Owned, RECORD_CREATE, RECORD_SET};

/// The commands that turn the record into `keep`.
pub(crate) fn record_changes(
    record: &[Owned],
    keep: &BTreeSet<Owned>,
    state: &State,
) -> Vec<Command> {
    let mut out = Vec::new();
    let cmd = |args: Vec<String>, reason: String| Command {
        program: Program::Ipset,
        args,
        undo: None,
        reason,
        target: format!("ipset {RECORD_SET}"),
        wish: None,
        members: Default::default(),
    };
    let have: BTreeSet<&Owned> = record.iter().collect();
    if !state.ipsets.contains_key(RECORD_SET) && !keep.is_empty() {
        out.push(cmd(
            RECORD_CREATE.iter().map(|s| s.to_string()).collect(),
            "ownership record missing".into(),
        ));
    }
    for entry in keep {
        if !have.contains(entry) {
            let args = ["add", RECORD_SET, &entry.element(), "comment", &entry.key()];
            out.push(cmd(
                args.map(String::from).to_vec(),
                format!("record: own {}", entry.key()),
            ));
        }
    }
    for entry in record {
        if !keep.contains(entry) {
            let args = ["del", RECORD_SET, &entry.element()];
            out.push(cmd(
                args.map(String::from).to_vec(),
                format!("record: forget {}", entry.key()),
            ));
        }
    }
    out
}
