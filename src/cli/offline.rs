//! `plan`, `check` and `state` from saved dumps: no kernel, no root.

use std::path::Path;
use std::process::ExitCode;

use crate::cli::args::{Cli, Cmd, Dumps};
use crate::cli::formats::PlanDoc;
use crate::cli::plan::{plan_json, plan_lines, report};
use crate::state::canon::{self, Comparison};
use crate::state::{self, State};

/// `plan`, `check` and `state` from saved dumps: no kernel, no root.
pub fn offline(cli: &Cli, command: &Cmd) -> Result<ExitCode, String> {
    let state = read_dumps(&cli.dumps)?;
    if let Cmd::State(args) = command {
        print!(
            "{}",
            crate::cli::formats::render_state(&state, args.format)?
        );
        return Ok(ExitCode::SUCCESS);
    }
    let wishes = crate::cli::load_wishes(&cli.wishes)?;
    let normalized = wishes.map_rules(|chain, r| canon::normalize(&r.rule, chain.family));
    let plan = crate::plan::plan(&normalized, &state);
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

fn read_dumps(dumps: &Dumps) -> Result<State, String> {
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))
    };
    let mut state = State::default();
    if let Some(p) = &dumps.iptables_save {
        state.v4 =
            state::parse_iptables_save(&read(p)?).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    if let Some(p) = &dumps.ip6tables_save {
        state.v6 =
            state::parse_iptables_save(&read(p)?).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    if let Some(p) = &dumps.ipset_save {
        state.ipsets =
            state::parse_ipset_save(&read(p)?).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    Ok(state)
}
