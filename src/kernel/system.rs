//! [`System`]: the real kernel tools behind the [`Backend`] trait.
//!
//! Its reads live in `read.rs`, the learning of rule forms in `learn.rs`,
//! the choice of iptables variant in `variant.rs`; this file holds the
//! struct and the trait's implementation.

use crate::kernel::backend::{Backend, BatchError, Error, Learned, Listing, RuleCheck, SetShape};
use crate::kernel::legacy_cache::LegacyCache;
use crate::kernel::process::{Output, Runner, Sink};
use crate::kernel::restore_script::{
    RestoreScript, batch_program, command_at_line, ipset_error_line, iptables_restore_input,
    restore_error_line,
};
use crate::kernel::scope::Scope;
use crate::plan::{Command, Program};
use crate::state::{Family, State};
use crate::wishes::nft::NftFamily;

/// The real kernel tools, found on `PATH`.
#[derive(Clone, Debug)]
pub struct System {
    /// Limits and environment of every tool run.
    pub runner: Runner,
    /// Binary prefix per family: `iptables`, `iptables-legacy`, ...
    pub(crate) v4: String,
    pub(crate) v6: String,
    /// Whether the variant is nft, where reading one chain is cheap.
    pub(crate) nft: bool,
    /// Legacy chains last read, kept with their table's fingerprint; only
    /// for a long-running reader (see [`System::remember_legacy_reads`]).
    pub(crate) legacy_cache: Option<LegacyCache>,
    /// The generation pyfw's last nft script committed (see
    /// [`Backend::nft_committed`]).
    nft_commit: Option<u32>,
    /// nft chains last read, kept with the ruleset's generation; only for
    /// a long-running reader (see [`System::remember_nft_reads`]).
    pub(crate) nft_reads: Option<crate::kernel::nft_reads::NftReads>,
}

impl Default for System {
    fn default() -> Self {
        System {
            runner: Runner::default(),
            v4: "iptables".into(),
            v6: "ip6tables".into(),
            nft: true,
            legacy_cache: None,
            nft_commit: None,
            nft_reads: None,
        }
    }
}

impl System {
    /// For a reader that polls, the daemon: on legacy, a table's chains are
    /// read again only when its fingerprint changed, and not even
    /// fingerprinted while `lock` saw no iptables run (see `LegacyCache`).
    /// A one-shot command gains nothing from it, and would pay a
    /// fingerprint per read.
    pub fn remember_legacy_reads(mut self, lock: Option<crate::kernel::xtlock::LockWatch>) -> Self {
        self.legacy_cache = Some(LegacyCache {
            tables: Default::default(),
            lock,
        });
        self
    }

    /// For a reader that polls, the daemon: on nft, chains are read again
    /// only when the ruleset's generation moved (see `NftReads`). A
    /// one-shot command reads once anyway.
    pub fn remember_nft_reads(mut self) -> Self {
        if self.nft {
            self.nft_reads = Some(Default::default());
        }
        self
    }

    /// While pyfw holds the xtables lock, its own iptables runs take this
    /// lock file instead (`None` again once it lets go), or they would
    /// wait for pyfw.
    pub fn use_lockfile(&mut self, path: Option<&std::path::Path>) {
        self.runner.lockfile = path.map(std::path::Path::to_path_buf);
    }

    /// Runs `program args` with optional input and returns what it printed,
    /// or an error when it fails, hangs or cannot start.
    pub fn exec(
        &self,
        program: &str,
        args: &[String],
        input: Option<&str>,
    ) -> Result<Output, Error> {
        self.ran(program);
        self.runner.exec(program, args, input)
    }

    /// [`System::exec`], with the input written by `feed` as the tool
    /// reads it.
    pub fn exec_fed(
        &self,
        program: &str,
        args: &[String],
        feed: &crate::kernel::process::Feed,
    ) -> Result<Output, Error> {
        self.ran(program);
        self.runner.exec_fed(program, args, feed)
    }

    /// [`System::exec`], with stdout handed to `sink` as it arrives.
    pub(crate) fn exec_into<S: Sink>(
        &self,
        program: &str,
        args: &[String],
        input: Option<&str>,
        sink: S,
    ) -> Result<(S, String), Error> {
        self.ran(program);
        self.runner.exec_into(program, args, input, sink)
    }

    /// pyfw is about to run an iptables tool itself: its release of the
    /// xtables lock must not be taken for a quiet table's.
    fn ran(&self, program: &str) {
        if program.contains("tables")
            && let Some(cache) = &self.legacy_cache
        {
            cache.distrust();
        }
    }

    /// `iptables`, `iptables-legacy-save`, `ip6tables-nft-restore`, ...
    /// Whether this drives iptables-nft, whose changes the kernel announces
    /// (see `daemon::events`); legacy iptables changes are silent.
    pub fn is_nft(&self) -> bool {
        self.nft
    }

    pub(crate) fn tool(&self, family: Family, suffix: &str) -> String {
        match family {
            Family::V4 => format!("{}{suffix}", self.v4),
            Family::V6 => format!("{}{suffix}", self.v6),
        }
    }
}

impl Backend for System {
    /// The families' rules and the sets are read side by side (see
    /// `parallel`).
    fn read_state(&mut self, scope: Scope) -> Result<State, Error> {
        self.read_scope(&scope)
    }

    fn check_rules(&mut self, checks: &[RuleCheck]) -> Result<(), Error> {
        self.check(checks)
    }

    /// In a private network namespace when pyfw may make one (empty tables:
    /// on legacy every commit and read costs the size of the table, and a
    /// 50,000-rule table made this step three quarters of a second), each
    /// rule in its real chain; else in a scratch chain of the real tables
    /// (see `learn.rs` for what each catches). What the namespace lacks and
    /// the host may have (a chain pyfw did not read) is settled in the real
    /// tables.
    fn canonicalize(
        &mut self,
        rules: &[RuleCheck],
        host: &State,
        new_sets: &[SetShape],
    ) -> Result<Vec<Option<Learned>>, Error> {
        if rules.is_empty() {
            return Ok(Vec::new());
        }
        self.learn_forms(rules, host, new_sets)
    }

    fn drop_chain(&mut self, family: Family, table: &str, chain: &str) -> Result<(), Error> {
        self.drop_scratch(family, table, chain)
    }

    fn run(&mut self, command: &Command) -> Result<(), Error> {
        if command.program == Program::Nft || command.is_run() {
            return self.run_batch(&[command]).map_err(|e| e.cause);
        }
        self.exec(&self.binary(command.program), &command.args, None)
            .map(|_| ())
    }

    fn run_batch(&mut self, commands: &[&Command]) -> Result<(), BatchError> {
        let Some(first) = commands.first() else {
            return Ok(());
        };
        if first.program == Program::Nft {
            return self.run_nft(commands);
        }
        if let [one] = commands
            && !one.is_run()
        {
            return self.run(first).map_err(|cause| BatchError {
                failed_at: Some(0),
                cause,
            });
        }
        let (program, args) = batch_program(|f| self.tool(f, "-restore"), commands);
        match first.program {
            Program::Iptables(_) => {
                let text = iptables_restore_input(commands);
                let Err(cause) = self.exec(&program, &args, Some(&text)) else {
                    return Ok(());
                };
                let failed_at = restore_error_line(stderr_of(&cause))
                    .and_then(|n| command_at_line(&text, n, commands));
                Err(BatchError { failed_at, cause })
            }
            // Written as ipset reads it (a 100,000-member fill is never
            // held as text). ipset restore stops at the failing line; a
            // set it was filling under a temporary name never got its own
            // name.
            Program::Ipset => {
                let script = RestoreScript::new(commands);
                let feed = |w: &mut dyn std::io::Write| script.write(w);
                let Err(cause) = self.exec_fed(&program, &args, &feed) else {
                    return Ok(());
                };
                let line = ipset_error_line(stderr_of(&cause));
                for tmp in script.leftovers(line) {
                    let _ = self.exec("ipset", &["-exist", "destroy", tmp].map(String::from), None);
                }
                let failed_at = line.and_then(|l| script.command_at(l));
                Err(BatchError { failed_at, cause })
            }
            Program::Nft => self.run_nft(commands),
        }
    }

    fn batch_line(&self, commands: &[&Command]) -> String {
        match commands {
            [] => String::new(),
            [one] if !one.is_run() => format!("{} (a single command)", self.binary(one.program)),
            _ => {
                let (program, args) = batch_program(|f| self.tool(f, "-restore"), commands);
                let fills = commands[0].program == Program::Ipset && RestoreScript::fills(commands);
                let note = match fills {
                    false => "",
                    true => " (a new set is filled under a temporary name, then renamed)",
                };
                format!("{program} {}{note}", args.join(" "))
            }
        }
    }

    fn set_summaries(
        &mut self,
        names: &std::collections::BTreeSet<String>,
    ) -> Result<Option<std::collections::BTreeMap<String, crate::kernel::SetSummary>>, Error> {
        self.ipset_summaries(names).map(Some)
    }

    fn set_holds(&mut self, name: &str, element: &str) -> Result<Option<bool>, Error> {
        self.ipset_test(name, element).map(Some)
    }

    /// The variant's binary: `iptables`, or `iptables-legacy` where plain
    /// `iptables` is the other variant.
    fn binary(&self, program: Program) -> String {
        match program {
            Program::Iptables(f) => self.tool(f, ""),
            Program::Ipset => "ipset".to_string(),
            Program::Nft => "nft".to_string(),
        }
    }

    fn nft_list(
        &mut self,
        family: NftFamily,
        name: &str,
        listing: Listing,
    ) -> Result<Option<String>, Error> {
        crate::kernel::nft::list(&self.runner, family, name, listing)
    }

    fn nft_check(&mut self, script: &str) -> Result<(), Error> {
        crate::kernel::nft::load(&self.runner, script, true)
            .map_err(|e| nft_refusal(&[script], e).1)
    }

    fn nft_learn(&mut self, scripts: &[(NftFamily, String, String)]) -> Result<Vec<String>, Error> {
        crate::kernel::nft::learn(&self.runner, scripts)
    }

    fn nft_generation(&mut self) -> Option<u32> {
        crate::kernel::nft::generation()
    }

    fn nft_version(&mut self) -> String {
        crate::kernel::nft::version(&self.runner)
    }

    fn forms_key(&mut self) -> String {
        let mut key = format!("kernel {}", kernel_release());
        for family in [Family::V4, Family::V6] {
            for suffix in ["", "-restore"] {
                let id = crate::kernel::tool_id::identity(&self.tool(family, suffix));
                if id.is_empty() {
                    return String::new();
                }
                key.push(' ');
                key.push_str(&id);
            }
        }
        key
    }

    fn nft_committed(&mut self) -> Option<u32> {
        self.nft_commit
    }

    fn nft_can_learn(&mut self) -> bool {
        crate::kernel::nft::can_learn()
    }
}

impl System {
    /// Runs nft commands' scripts as one `nft -f -`: one transaction for
    /// every table they replace. A refusal names the command and the wish
    /// on the line nft names.
    fn run_nft(&mut self, commands: &[&Command]) -> Result<(), BatchError> {
        let scripts: Vec<&str> = commands
            .iter()
            .filter_map(|c| crate::plan::nft::script_of(c))
            .collect();
        let text: String = scripts.concat();
        let before = crate::kernel::nft::generation();
        let loaded = crate::kernel::nft::load(&self.runner, &text, false);
        // One commit, and only this one, since `before`: its generation.
        let after = crate::kernel::nft::generation();
        self.nft_commit = match (before, after) {
            (Some(b), Some(a)) if loaded.is_ok() && a == b.wrapping_add(1) => Some(a),
            _ => None,
        };
        let Err(e) = loaded else {
            return Ok(());
        };
        let (failed_at, cause) = nft_refusal(&scripts, e);
        Err(BatchError { failed_at, cause })
    }
}

/// The script (an index into `scripts`, fed to nft one after the other)
/// and the wish nft's error is about, from the line it names: the error
/// as [`Error::NftRejected`], or as it was when nft named no line.
fn nft_refusal(scripts: &[&str], e: Error) -> (Option<usize>, Error) {
    let Error::Failed { stderr, .. } = &e else {
        return (None, e);
    };
    let Some(mut line) = crate::plan::nft::error_line(stderr) else {
        return (None, e);
    };
    for (k, script) in scripts.iter().enumerate() {
        let lines = script.lines().count();
        if line <= lines {
            let label = crate::plan::nft::label_at(script, line);
            let message = crate::plan::nft::error_message(stderr);
            return match label {
                Some(label) => (Some(k), Error::NftRejected { label, message }),
                None => (Some(k), e),
            };
        }
        line -= lines;
    }
    (None, e)
}

/// The words a failed tool printed on stderr.
fn stderr_of(cause: &Error) -> &str {
    match cause {
        Error::Failed { stderr, .. } => stderr.as_str(),
        _ => "",
    }
}

/// The running kernel's release (what it accepts and how it renders).
fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|r| r.trim().to_string())
        .unwrap_or_default()
}
