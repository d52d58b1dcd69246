//! `plan`, `check` and `state` from saved dumps: no kernel, no root.

use std::path::Path;
use std::process::ExitCode;

use crate::cli::Error;
use crate::cli::args::{Cli, Cmd, Dumps};
use crate::cli::formats::PlanDoc;
use crate::cli::plan::{plan_json, plan_lines, report};
use crate::state::canon::{self, Comparison};
use crate::state::{self, State};

/// `plan`, `check` and `state` from saved dumps: no kernel, no root.
pub fn offline(cli: &Cli, command: &Cmd) -> Result<ExitCode, Error> {
    let state = read_dumps(&cli.dumps)?;
    if let Cmd::State(args) = command {
        print!(
            "{}",
            crate::cli::formats::render_state(&state, args.format)?
        );
        return Ok(ExitCode::SUCCESS);
    }
    let wishes = crate::cli::load_wishes(&cli.wishes)?;
    if !wishes.nftables.is_empty() {
        eprintln!(
            "pyfw: warning: the nftables tables of {} are not planned from saved dumps (there \
             is no dump of them)",
            wishes.path.display()
        );
    }
    let normalized = wishes.map_rules(|chain, r| canon::normalize(&r.rule, chain.family));
    let plan = crate::plan::plan(&normalized, &state);
    // The dumps hold every chain: nothing more to read.
    let warnings: Vec<_> = crate::plan::warnings::unreached(&normalized, &state)
        .into_iter()
        .map(|u| u.warning)
        .collect();
    crate::cli::print_plan_warnings(&wishes, &warnings);
    if plan_json(command) {
        let plan = plan.expanded();
        let doc = PlanDoc::new(&wishes.path, Comparison::Builtin, true, &plan, |c| {
            c.program.name().to_string()
        });
        print!("{}", doc.to_json()?);
        return Ok(ExitCode::SUCCESS);
    }
    let lines = plan_lines(&plan, |c| c.to_string());
    Ok(report(&wishes, &lines, command, Comparison::Builtin, true))
}

fn read_dumps(dumps: &Dumps) -> Result<State, Error> {
    let dump = |path: &Path, what: String| Error::Dump {
        path: path.to_path_buf(),
        what,
    };
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|e| dump(path, format!("cannot read: {e}")))
    };
    let mut state = State::default();
    if let Some(p) = &dumps.iptables_save {
        state.v4 = state::parse_iptables_save(&read(p)?).map_err(|e| dump(p, e.to_string()))?;
    }
    if let Some(p) = &dumps.ip6tables_save {
        state.v6 = state::parse_iptables_save(&read(p)?).map_err(|e| dump(p, e.to_string()))?;
    }
    if let Some(p) = &dumps.ipset_save {
        state.ipsets = state::parse_ipset_save(&read(p)?).map_err(|e| dump(p, e.to_string()))?;
    }
    Ok(state)
}
