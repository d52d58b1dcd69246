//! `pyfw completions SHELL` and `pyfw man DIR`, for packaging.

use std::io::Write as _;
use std::process::ExitCode;

use crate::cli::args::{Cli, Cmd};

/// `pyfw completions SHELL` and `pyfw man DIR`: generated from this CLI,
/// so they always match it.
pub fn assets(command: &Cmd) -> Option<ExitCode> {
    use clap::CommandFactory;
    match command {
        Cmd::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "pyfw", &mut script);
            let mut out = std::io::stdout().lock();
            if let Err(e) = out.write_all(&script).and_then(|()| out.flush()) {
                eprintln!("pyfw: error: cannot write the completions: {e}");
                return Some(ExitCode::from(1));
            }
        }
        Cmd::Man { dir } => {
            let mut cli = Cli::command().disable_help_subcommand(true);
            cli.build();
            if let Err(e) = std::fs::create_dir_all(dir) {
                eprintln!("pyfw: error: {}: {e}", dir.display());
                return Some(ExitCode::from(1));
            }
            let pages = std::iter::once(cli.clone())
                .chain(cli.get_subcommands().filter(|c| !c.is_hide_set()).cloned());
            for page in pages {
                let man = clap_mangen::Man::new(page)
                    .section("8")
                    .source(concat!("pyfw ", env!("CARGO_PKG_VERSION")))
                    .manual("pyfw");
                if let Err(e) = man.generate_to(dir) {
                    eprintln!("pyfw: error: {}: {e}", dir.display());
                    return Some(ExitCode::from(1));
                }
            }
        }
        _ => return None,
    }
    Some(ExitCode::SUCCESS)
}
