//! Why a one-shot command failed, as one type: each layer's error, and
//! what the CLI adds, mapped to the process's exit status in one place
//! ([`Error::exit_code`]).

use std::path::PathBuf;
use std::process::ExitCode;

use crate::kernel;
use crate::reconcile;
use crate::wishes::LoadError;

/// A failed command. Its `Display` is the whole message the user reads
/// after `pyfw: error: ` (or `pyfw: ` for an interrupt).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command line asks for something that cannot be.
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Wishes(#[from] LoadError),
    #[error(transparent)]
    Privilege(#[from] kernel::privilege::NoPrivilege),
    #[error(transparent)]
    Kernel(#[from] kernel::Error),
    #[error(transparent)]
    Lock(#[from] kernel::lock::LockError),
    /// A read or a plan that failed (`plan`, `check`).
    #[error(transparent)]
    Reconcile(reconcile::Error),
    /// An apply that failed before any write: nothing can have changed.
    #[error("{0}; nothing was changed")]
    Unchanged(reconcile::Error),
    /// An apply that failed, with what netfilter holds now; `at` is the
    /// refused wish's `FILE:LINE: label`, when a tool named one.
    #[error("{}{}", .at.as_deref().map(|a| format!("{a}: ")).unwrap_or_default(), .message)]
    Apply { at: Option<String>, message: String },
    /// Wishes the kernel tools refuse: each `FILE:LINE: wish: words`, then
    /// what that left. Each line is a message of its own.
    #[error("{}", refused_lines(.lines, .summary))]
    Refused { lines: Vec<String>, summary: String },
    /// An apply a signal stopped: what happened, and the signal's number.
    #[error("{message}")]
    Interrupted { signo: i32, message: String },
    /// A saved dump given with `--iptables-save` and friends.
    #[error("{}: {what}", .path.display())]
    Dump { path: PathBuf, what: String },
    /// Writing a `--format` document.
    #[error("cannot write {format}: {reason}")]
    Format {
        format: &'static str,
        reason: String,
    },
    #[error("cannot hold signals during the apply: {0}")]
    Signals(std::io::Error),
    #[error("{0}")]
    Confirm(String),
}

/// Each refused wish on a line of its own, as `pyfw: error: ` begins the
/// first, then the summary.
fn refused_lines(lines: &[String], summary: &str) -> String {
    let mut out = String::new();
    for line in lines {
        out.push_str(line);
        out.push_str("\npyfw: error: ");
    }
    out.push_str(summary);
    out
}

impl Error {
    /// The exit status: 128 + the signal's number for an interrupt, 1 for
    /// everything else (2 is `check`'s "not in sync", not an error).
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Error::Interrupted { signo, .. } => {
                ExitCode::from(u8::try_from(128 + signo).unwrap_or(1))
            }
            _ => ExitCode::from(1),
        }
    }

    /// How the message starts: `pyfw: error: `, or `pyfw: ` for an
    /// interrupt (which says itself what happened).
    pub fn prefix(&self) -> &'static str {
        match self {
            Error::Interrupted { .. } => "pyfw: ",
            _ => "pyfw: error: ",
        }
    }
}

impl From<reconcile::Error> for Error {
    /// A reconcile error as the CLI reports it; an apply's says itself
    /// what netfilter holds.
    fn from(e: reconcile::Error) -> Error {
        match e {
            reconcile::Error::Apply(a) => Error::Apply {
                at: None,
                message: a.to_string(),
            },
            other => Error::Reconcile(other),
        }
    }
}
