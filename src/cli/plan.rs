//! `plan` and `check`: what would run, and whether anything would.

use std::process::ExitCode;

use crate::cli::Error;
use crate::cli::args::{Cmd, PlanArgs};
use crate::cli::formats::{PlanDoc, PlanFormat};
use crate::kernel::{Backend, System};
use crate::plan::Plan;
use crate::reconcile::{Owning, Reconciler};
use crate::state::canon::Comparison;
use crate::wishes::Wishes;

/// Plans against the kernel and prints the plan (`plan`, after the
/// lock-out lint's warnings on stderr, as `apply` would print them) or the
/// verdict (`check`).
pub fn show(
    reconciler: &mut Reconciler<System>,
    wishes: &Wishes,
    owning: Option<Owning>,
    command: &Cmd,
) -> Result<ExitCode, Error> {
    let mut planned = match reconciler.plan_after(wishes, owning) {
        Ok(planned) => planned,
        Err(e @ crate::reconcile::Error::Rejected { .. }) => {
            return Err(crate::cli::refused(&e, wishes));
        }
        Err(e) => return Err(e.into()),
    };
    // What an apply would load, checked by the kernel without a commit:
    // a table nft refuses is the news, with its wish's file and line.
    reconciler
        .check_nft(&planned)
        .map_err(|e| nft_refused(wishes, e))?;
    crate::cli::print_plan_warnings(wishes, &planned.warnings);
    if matches!(command, Cmd::Plan(_)) {
        crate::cli::apply::warn_lockouts(reconciler, wishes, &mut planned.state);
    }
    if plan_json(command) {
        let backend = reconciler.backend();
        let plan = planned.plan.expanded();
        let doc = PlanDoc::new(&wishes.path, planned.comparison, false, &plan, |c| {
            backend.binary(c.program)
        });
        print!("{}", doc.to_json()?);
        return Ok(ExitCode::SUCCESS);
    }
    let lines = plan_lines(&planned.plan, |c| match crate::plan::nft::script_of(c) {
        Some(script) => crate::plan::nft::heredoc(&reconciler.backend().binary(c.program), script),
        None => crate::reconcile::apply::command_line(reconciler.backend(), c),
    });
    Ok(report(wishes, &lines, command, planned.comparison, false))
}

/// An error of nft's check, with the file and line of the wish it is
/// about when nft named one.
pub fn nft_refused(wishes: &Wishes, e: crate::kernel::Error) -> Error {
    match e {
        crate::kernel::Error::NftRejected { label, message } => Error::Apply {
            at: Some(wishes.locate(&label)),
            message: format!(
                "nft refuses it: {}; nothing was changed",
                crate::state::text::escape_untrusted(&message)
            ),
        },
        other => Error::Apply {
            at: None,
            message: format!("{other}; nothing was changed"),
        },
    }
}

/// True for `plan --format json`, which prints the plan document.
pub fn plan_json(command: &Cmd) -> bool {
    matches!(
        command,
        Cmd::Plan(PlanArgs {
            format: PlanFormat::Json
        })
    )
}

/// A plan as printed: each command's reason (when it changes) as a `#`
/// line, then the command as the backend would run it: an nft script on
/// the lines after its command, as one entry; a run of member commands one
/// by one.
pub fn plan_lines(plan: &Plan, show: impl Fn(&crate::plan::Command) -> String) -> Vec<String> {
    let plan = plan.expanded();
    let mut out = Vec::new();
    let mut last_reason = "";
    for c in &plan.commands {
        if c.reason != last_reason {
            out.push(format!("# {}", c.reason));
            last_reason = &c.reason;
        }
        out.push(show(c));
    }
    out
}

/// Prints a plan for `plan` or `check` and picks the exit status.
pub fn report(
    wishes: &Wishes,
    lines: &[String],
    command: &Cmd,
    comparison: Comparison,
    offline: bool,
) -> ExitCode {
    let count = lines.iter().filter(|l| !l.starts_with('#')).count();
    if *command == Cmd::Check && count == 0 {
        println!("# in sync: netfilter matches {}", wishes.path.display());
        return ExitCode::SUCCESS;
    }
    println!(
        "# pyfw plan for {}: {count} command(s)",
        wishes.path.display()
    );
    if offline {
        println!("# planned from saved dumps; a dump not given is read as empty");
    }
    println!("# {}", comparison.describe());
    if count == 0 {
        println!("# nothing to do: netfilter matches the wishes");
    }
    for l in lines {
        println!("{l}");
    }
    if *command == Cmd::Check {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}
