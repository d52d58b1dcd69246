//! The `pyfw` command: parse the arguments, then run them.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    pyfw::cli::main(pyfw::cli::args::Cli::parse())
}
