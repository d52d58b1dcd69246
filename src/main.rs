//! The `pyfw` command: parse the arguments, then run them.

#![warn(clippy::too_many_lines)]

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    match pyfw::cli::main(pyfw::cli::args::Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{}{e}", e.prefix());
            e.exit_code()
        }
    }
}
