//! Learning how iptables prints a wished rule: load it where no packet
//! sees it, read it back. This is also the kernel's verdict on the wish.
//!
//! Two places to learn in:
//! - **a private network namespace** (`unshare(CLONE_NEWNET)` on a thread
//!   of its own; needs CAP_SYS_ADMIN), whose tables are empty: each rule is
//!   loaded in its real chain (INPUT, PREROUTING, a wished user chain), so
//!   the kernel refuses there all it would refuse on the host for the
//!   rule's own sake, hooks included (`-j MASQUERADE` in PREROUTING,
//!   `-j DNAT` in filter). Nothing sees those rules: the namespace has no
//!   traffic, and goes with the thread;
//! - **a scratch chain** `_pyfw_canon_PID` of the real tables, without
//!   CAP_SYS_ADMIN (the systemd unit does not grant it): no hook jumps to
//!   it, so the kernel checks a rule there for its table but not for its
//!   hook, and iptables checks it in its real chain with `iptables-restore
//!   --test` (which catches `-o` in INPUT, and commits nothing). A target
//!   used in the wrong hook of the right table is refused only at apply.
//!
//! Each place loads a table's rules as one transaction. When the kernel
//! refuses one, every refused rule is found (the one the tool names is
//! left out and the rest tried again; where the tool names none, as
//! legacy does for what the kernel refuses at commit, by halves), so that
//! every rejected wish is reported at once.
//!
//! Each learned form is then loaded again and read back: a form that
//! loads back as another form, or as another rule than the wish (`iptables
//! -D` with the wish's text finds nothing), is said (see [`Form`]).

use std::collections::HashMap;

use crate::kernel::backend::{Error, Form, Learned, RuleCheck, SetShape};
use crate::kernel::restore_script::restore_error_line;
use crate::kernel::system::System;
use crate::kernel::words::check_refused;
use crate::state::rule::{Rule, restore_line};
use crate::state::{self, Family, State};

pub use crate::kernel::backend::SCRATCH_PREFIX;

/// Groups checks by family and table, keeping their order, as indexes.
pub(crate) fn batches(checks: &[RuleCheck]) -> Vec<(Family, &str, Vec<usize>)> {
    let mut out: Vec<(Family, &str, Vec<usize>)> = Vec::new();
    for (i, c) in checks.iter().enumerate() {
        match out
            .iter_mut()
            .find(|(f, t, _)| *f == c.family && *t == c.table)
        {
            Some((_, _, batch)) => batch.push(i),
            None => out.push((c.family, c.table.as_str(), vec![i])),
        }
    }
    out
}

/// What learning said of one rule.
#[derive(Debug)]
enum Verdict {
    Learned(Learned),
    /// The kernel tools refused it: what they said (stderr, as printed,
    /// pyfw's scratch chain named as the rule's chain), and that in words.
    Refused {
        stderr: String,
        message: String,
    },
    /// Not learned here: it names a set or chain only the plan creates.
    Deferred,
}

/// Words that say a refused rule lacks something where it was tried (a
/// chain, a set, an extension or an object of the kernel's), which the
/// host may well have: a private namespace's verdict of this kind is
/// settled in the real tables.
fn lacks(stderr: &str) -> bool {
    [
        "No such file or directory",
        "No chain/target/match by that name",
        "does not exist",
        "doesn't exist",
        "Couldn't load",
    ]
    .iter()
    .any(|w| stderr.contains(w))
}

/// A marker that makes iptables skip a rule of this family without a word
/// (`-6` in an iptables rule, `-4` in an ip6tables one), so the wish would
/// never be in force.
pub(crate) fn skipped_by(rule: &Rule, family: Family) -> Option<String> {
    let (marks, tool, other) = match family {
        Family::V4 => (["-6", "--ipv6"], "iptables", "ip6tables"),
        Family::V6 => (["-4", "--ipv4"], "ip6tables", "iptables"),
    };
    let mark = rule.tokens().find(|t| marks.contains(t))?;
    Some(format!(
        "`{mark}` marks a rule for {other}: {tool} skips such a rule without a word, so it \
         would never be in force; put it under {other}, or leave `{mark}` out"
    ))
}

/// One trial of a transaction: the rule the tool refused, if it did.
enum Outcome {
    Passed,
    /// The tools refused it; `item` is the refused line's item, when the
    /// tool named a line of one.
    Refused {
        item: Option<usize>,
        stderr: String,
    },
}

/// A transaction to try with some of its items: the lines of one table.
struct Trial<'a> {
    system: &'a System,
    family: Family,
    table: &'a str,
    /// Lines before the items' (chain declarations, rules always loaded).
    head: Vec<String>,
    /// `--noflush`, `--test`.
    args: Vec<String>,
}

impl Trial<'_> {
    /// Runs the transaction with `items` (item, line). `Err` for a failure
    /// that is no refusal (a tool that cannot start, times out).
    fn run(&self, items: &[(usize, String)]) -> Result<Outcome, Error> {
        match self.exec(items) {
            Ok(()) => Ok(Outcome::Passed),
            Err(e) if !e.is_refusal() => Err(e),
            Err(Error::Failed { stderr, .. }) => {
                // Line 1 is `*table`, then the head, then the items.
                let line = restore_error_line(&stderr);
                let item = line
                    .and_then(|n| n.checked_sub(2 + self.head.len()))
                    .and_then(|k| items.get(k))
                    .map(|(i, _)| *i);
                let stderr = match (item, line) {
                    (Some(_), Some(n)) => crate::kernel::words::said_of_line(&stderr, n),
                    _ => stderr,
                };
                Ok(Outcome::Refused { item, stderr })
            }
            Err(e) => Err(e),
        }
    }

    /// The transaction with `items`, run.
    fn exec(&self, items: &[(usize, String)]) -> Result<(), Error> {
        let mut text = format!("*{}\n", self.table);
        for line in self.head.iter().chain(items.iter().map(|(_, l)| l)) {
            text.push_str(line);
            text.push('\n');
        }
        text.push_str("COMMIT\n");
        let mut args = self.args.clone();
        args.push("--wait".into());
        let program = self.system.tool(self.family, "-restore");
        self.system.exec(&program, &args, Some(&text)).map(|_| ())
    }

    /// Runs the transaction with `items`; when the tools refuse it, finds
    /// every item they refuse and runs it again without them. Returns the
    /// refused items with what the tools said; the last run, which loaded
    /// the others, passed.
    fn sift(&self, mut items: Vec<(usize, String)>) -> Result<Vec<(usize, String)>, Error> {
        let mut refused = Vec::new();
        let mut probed = false;
        loop {
            let found = match self.run(&items)? {
                Outcome::Passed => return Ok(refused),
                Outcome::Refused {
                    item: Some(i),
                    stderr,
                } => vec![(i, stderr)],
                Outcome::Refused { item: None, stderr } => {
                    // A tool that refuses the transaction without any of
                    // the rules refuses no rule: its failure is said as
                    // it is, not blamed on each rule in turn.
                    if !probed {
                        probed = true;
                        self.exec(&[])?;
                    }
                    self.isolate(&items, stderr)?
                }
            };
            if found.is_empty() {
                // Refused, and no item can be blamed: said as it is.
                return Err(self.unblamed(&items));
            }
            items.retain(|(i, _)| !found.iter().any(|(f, _)| f == i));
            refused.extend(found);
            if items.is_empty() {
                return Ok(refused);
            }
        }
    }

    /// The items of `items` (refused as a whole with `stderr`, no item
    /// named) that the tools refuse: found by halves, or, when each half
    /// passes alone, by leaving one out at a time.
    fn isolate(
        &self,
        items: &[(usize, String)],
        stderr: String,
    ) -> Result<Vec<(usize, String)>, Error> {
        if let [(i, _)] = items {
            return Ok(vec![(*i, stderr)]);
        }
        let (a, b) = items.split_at(items.len() / 2);
        for half in [a, b] {
            match self.run(half)? {
                Outcome::Passed => {}
                Outcome::Refused {
                    item: Some(i),
                    stderr,
                } => return Ok(vec![(i, stderr)]),
                Outcome::Refused { item: None, stderr } => return self.isolate(half, stderr),
            }
        }
        // Refused together only (a jump into a chain whose target the
        // jump's hook does not allow): each item without which the rest
        // passes.
        let mut found = Vec::new();
        for k in 0..items.len() {
            let rest: Vec<(usize, String)> = (items.iter().enumerate())
                .filter(|(j, _)| *j != k)
                .map(|(_, item)| item.clone())
                .collect();
            if let Outcome::Passed = self.run(&rest)? {
                found.push((items[k].0, stderr.clone()));
            }
        }
        Ok(found)
    }

    fn unblamed(&self, items: &[(usize, String)]) -> Error {
        Error::Failed {
            command: format!(
                "{} (learning rule forms)",
                self.system.tool(self.family, "-restore")
            ),
            status: "refused".into(),
            stderr: format!(
                "the {} rules of table {} are refused together, and none of them alone",
                items.len(),
                self.table
            ),
        }
    }
}

/// `-A CHAIN RULE` (or another operation) as a restore line.
fn rule_line(op: &str, chain: &str, rule: &Rule) -> String {
    let args = [
        vec![op.to_string(), chain.to_string()],
        rule.args().to_vec(),
    ]
    .concat();
    restore_line(&args)
}

/// Whether a tool's refusal says nothing but `line N failed` (legacy
/// iptables-restore, for what the kernel refused at commit).
fn unsaid(stderr: &str) -> bool {
    !crate::kernel::words::cleaned(stderr).contains(' ')
}

impl System {
    /// Learns each rule's form: in a private network namespace when pyfw
    /// may make one, each rule in its real chain; else in a scratch chain
    /// of the real tables. What the namespace lacks and the host may have
    /// (a chain pyfw did not read) is settled in the real tables. Every
    /// refused rule comes back in one [`Error::Rejected`].
    pub(crate) fn learn_forms(
        &self,
        rules: &[RuleCheck],
        host: &State,
        new_sets: &[SetShape],
    ) -> Result<Vec<Option<Learned>>, Error> {
        let verdicts = match self.canonicalize_private(rules, host, new_sets) {
            Ok(verdicts) => self.settle_lacking(rules, verdicts)?,
            Err(e) => {
                tracing::debug!(
                    "cannot learn rule forms in a private network namespace ({e}); using a \
                     scratch chain"
                );
                self.canonicalize_scratch(rules)?
            }
        };
        let mut rejected = Vec::new();
        let mut learned = Vec::with_capacity(rules.len());
        for (check, verdict) in rules.iter().zip(verdicts) {
            match verdict {
                Verdict::Learned(l) => learned.push(Some(l)),
                Verdict::Deferred => learned.push(None),
                Verdict::Refused { message, .. } => rejected.push(check.rejection(&message)),
            }
        }
        match rejected.is_empty() {
            true => Ok(learned),
            false => Err(Error::Rejected(rejected)),
        }
    }

    /// The rules the private namespace refused for lacking what the host
    /// may have, learned (or refused) in the real tables instead.
    fn settle_lacking(
        &self,
        rules: &[RuleCheck],
        mut verdicts: Vec<Verdict>,
    ) -> Result<Vec<Verdict>, Error> {
        let again: Vec<usize> = (0..rules.len())
            .filter(|&i| !rules[i].later)
            .filter(|&i| matches!(&verdicts[i], Verdict::Refused { stderr, .. } if lacks(stderr)))
            .collect();
        if again.is_empty() {
            return Ok(verdicts);
        }
        let subset: Vec<RuleCheck> = again.iter().map(|&i| rules[i].clone()).collect();
        for (i, settled) in again.into_iter().zip(self.canonicalize_scratch(&subset)?) {
            verdicts[i] = settled;
        }
        Ok(verdicts)
    }

    /// Asks iptables whether it accepts every rule (`iptables-restore
    /// --test`), changing nothing; every rule it refuses comes back in one
    /// [`Error::Rejected`].
    pub(crate) fn check(&self, checks: &[RuleCheck]) -> Result<(), Error> {
        let mut rejected = Vec::new();
        for (family, table, batch) in batches(checks) {
            // `--test` parses and checks the whole transaction without
            // committing it, so declaring chains here creates nothing.
            let mut head: Vec<String> = Vec::new();
            for chain in batch.iter().flat_map(|&i| checks[i].creates.iter()) {
                let line = format!(":{chain} - [0:0]");
                if !head.contains(&line) {
                    head.push(line);
                }
            }
            let trial = Trial {
                system: self,
                family,
                table,
                head,
                args: vec!["--test".into(), "--noflush".into()],
            };
            let items = (batch.iter())
                .map(|&i| (i, rule_line("-A", &checks[i].chain, &checks[i].rule)))
                .collect();
            for (i, stderr) in trial.sift(items)? {
                rejected.push(checks[i].rejection(&check_refused(&stderr, &checks[i])));
            }
        }
        match rejected.is_empty() {
            true => Ok(()),
            false => Err(Error::Rejected(rejected)),
        }
    }

    pub(crate) fn drop_scratch(
        &self,
        family: Family,
        table: &str,
        chain: &str,
    ) -> Result<(), Error> {
        let text = format!("*{table}\n-F {chain}\n-X {chain}\nCOMMIT\n");
        let args = ["--noflush", "--wait"].map(String::from);
        let Err(e) = self.exec(&self.tool(family, "-restore"), &args, Some(&text)) else {
            return Ok(());
        };
        // A scratch chain must not stay behind: try plain commands too.
        let plain = |op: &str| {
            let args = ["-w", "-t", table, op, chain].map(String::from);
            self.exec(&self.tool(family, ""), &args, None)
        };
        match plain("-F").and_then(|_| plain("-X")) {
            Ok(_) => Ok(()),
            // Not there: every load of it was refused.
            Err(Error::Failed { stderr, .. }) if stderr.contains("No chain/target/match") => Ok(()),
            Err(_) => Err(e),
        }
    }

    /// What the tools say of `rule` alone in `chain`, when a transaction's
    /// refusal said nothing (legacy names only the line of COMMIT):
    /// `iptables -A` says `Invalid argument` or `No chain/target/match by
    /// that name`. Only where the chain holds nothing of anyone's (a scratch
    /// chain, the private namespace).
    fn explain(
        &self,
        family: Family,
        table: &str,
        chain: &str,
        rule: &Rule,
        said: String,
    ) -> String {
        if !unsaid(&said) {
            return said;
        }
        let mut args: Vec<String> = ["-w", "-t", table, "-A", chain].map(String::from).to_vec();
        args.extend(rule.args().iter().cloned());
        match self.exec(&self.tool(family, ""), &args, None) {
            Err(Error::Failed { stderr, .. }) if !stderr.trim().is_empty() => stderr,
            _ => said,
        }
    }

    /// Learns rule forms in a scratch chain of the real tables: load it
    /// (a commit), read it back, check the forms (two commits), drop it (a
    /// commit); then `iptables-restore --test` with each rule in its real
    /// chain. Rules that name a set or chain only the plan creates are
    /// [`Verdict::Deferred`].
    fn canonicalize_scratch(&self, rules: &[RuleCheck]) -> Result<Vec<Verdict>, Error> {
        let mut out: Vec<Verdict> = rules.iter().map(|_| Verdict::Deferred).collect();
        // One scratch chain per process: two pyfw processes never collide,
        // and no hook jumps to it, so its rules never see a packet.
        let scratch = format!("{SCRATCH_PREFIX}{}", std::process::id());
        for (family, table, batch) in batches(rules) {
            let now: Vec<usize> = batch.into_iter().filter(|&i| !rules[i].later).collect();
            if now.is_empty() {
                continue;
            }
            let place = Place {
                system: self,
                family,
                table,
                chains: HashMap::from([(String::new(), scratch.clone())]),
                head: vec![format!(":{scratch} - [0:0]")],
                args: vec!["--noflush".into()],
            };
            let learned = place.learn(rules, &now, &mut out);
            // Remove the scratch chain whatever happened.
            let cleanup = self.drop_scratch(family, table, &scratch);
            learned?;
            cleanup?;
            self.test_in_chains(family, table, rules, &mut out)?;
        }
        Ok(out)
    }

    /// `iptables-restore --test` of the learned rules of one table in their
    /// real chains: what iptables checks for the chain itself (`-o` in
    /// INPUT), which a scratch chain cannot show.
    fn test_in_chains(
        &self,
        family: Family,
        table: &str,
        rules: &[RuleCheck],
        out: &mut [Verdict],
    ) -> Result<(), Error> {
        let learned: Vec<usize> = (0..rules.len())
            .filter(|&i| rules[i].family == family && rules[i].table == table)
            .filter(|&i| matches!(out[i], Verdict::Learned(_)))
            .collect();
        let mut head: Vec<String> = Vec::new();
        for &i in &learned {
            for chain in &rules[i].creates {
                let line = format!(":{chain} - [0:0]");
                if !head.contains(&line) {
                    head.push(line);
                }
            }
        }
        let trial = Trial {
            system: self,
            family,
            table,
            head,
            args: vec!["--test".into(), "--noflush".into()],
        };
        let items = (learned.iter())
            .map(|&i| (i, rule_line("-A", &rules[i].chain, &rules[i].rule)))
            .collect();
        for (i, stderr) in trial.sift(items)? {
            let message = check_refused(&stderr, &rules[i]);
            out[i] = Verdict::Refused { stderr, message };
        }
        Ok(())
    }

    /// Learns rule forms in a network namespace of a thread of its own
    /// (`unshare(CLONE_NEWNET)`), whose tables are empty, each rule in its
    /// real chain: a few commits and reads per table, each as cheap as on
    /// an empty host, and nothing to clean up (the namespace goes with the
    /// thread). The kernel and the tools are the same, so iptables prints
    /// each rule as it would in the real tables, and refuses what it would
    /// refuse there for the rule's own sake.
    ///
    /// The sets the rules name are created there (empty, with their real
    /// type and options, or the wished ones for `new_sets`), and so are the
    /// chains they sit in, and the chains they jump to that pyfw read or
    /// the plan creates. A rule that lacks something there (a chain pyfw
    /// did not read, `DOCKER-USER`; an `nfacct` object, which is per
    /// namespace) comes back [`Verdict::Refused`] with words that
    /// [`lacks`] tells; the caller settles it in the real tables.
    fn canonicalize_private(
        &self,
        rules: &[RuleCheck],
        host: &State,
        new_sets: &[SetShape],
    ) -> Result<Vec<Verdict>, Error> {
        let unshare_err = |source: std::io::Error| Error::Spawn {
            command: "unshare(CLONE_NEWNET)".into(),
            source,
        };
        let sets = set_lines(rules, host, new_sets).map_err(|name| {
            unshare_err(std::io::Error::other(format!("set {name} is not known")))
        })?;
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    // SAFETY: unshare(2) with CLONE_NEWNET changes the network
                    // namespace of the calling thread only (this one, which
                    // ends with this closure); the processes it starts
                    // inherit it.
                    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                        return Err(unshare_err(std::io::Error::last_os_error()));
                    }
                    if !sets.is_empty() {
                        let text = sets.iter().map(|l| format!("{l}\n")).collect::<String>();
                        self.exec("ipset", &["restore".to_string()], Some(&text))?;
                    }
                    let mut out: Vec<Verdict> = rules.iter().map(|_| Verdict::Deferred).collect();
                    for (family, table, batch) in batches(rules) {
                        let head = private_chains(rules, &batch, host, family, table);
                        let place = Place {
                            system: self,
                            family,
                            table,
                            chains: HashMap::new(),
                            head,
                            // The table is replaced whole at each run.
                            args: Vec::new(),
                        };
                        place.learn(rules, &batch, &mut out)?;
                    }
                    Ok(out)
                })
                .join()
                .unwrap_or_else(|_| {
                    Err(unshare_err(std::io::Error::other(
                        "the namespace thread failed",
                    )))
                })
        })
    }
}

/// `create NAME TYPE OPTIONS` for each set the rules name, from the host
/// or from the wishes; the name of one neither has.
fn set_lines(
    rules: &[RuleCheck],
    host: &State,
    new_sets: &[SetShape],
) -> Result<Vec<String>, String> {
    let mut lines: Vec<String> = Vec::new();
    for name in rules.iter().flat_map(|r| r.rule.sets()) {
        let (kind, options) = match (
            host.ipsets.get(name),
            new_sets.iter().find(|s| s.name == name),
        ) {
            (Some(set), _) => (set.kind.as_str(), &set.options),
            (None, Some(shape)) => (shape.kind.as_str(), &shape.options),
            (None, None) => return Err(name.to_string()),
        };
        let mut line = format!("create {name} {kind}");
        for o in options {
            line.push(' ');
            line.push_str(o);
        }
        if !lines.contains(&line) {
            lines.push(line);
        }
    }
    Ok(lines)
}

/// The chain declarations of one table in the private namespace: every
/// user chain the rules sit in, and every one they jump to that the host
/// has (as read) or the plan creates.
fn private_chains(
    rules: &[RuleCheck],
    batch: &[usize],
    host: &State,
    family: Family,
    table: &str,
) -> Vec<String> {
    let builtin = state::builtin_chains(table);
    let known = |chain: &str| {
        host.ruleset(family)
            .tables
            .get(table)
            .is_some_and(|t| t.chain(chain).is_some())
    };
    let mut head: Vec<String> = Vec::new();
    for &i in batch {
        let r = &rules[i];
        let target = (r.rule.target()).filter(|t| known(t) || r.creates.iter().any(|c| c == t));
        for chain in std::iter::once(r.chain.as_str()).chain(target) {
            let line = format!(":{chain} - [0:0]");
            if !builtin.contains(&chain) && !head.contains(&line) {
                head.push(line);
            }
        }
    }
    head
}

/// The lines of `listing` (`iptables -S` of a table) about `chain`.
fn chain_lines(listing: &str, chain: &str) -> String {
    let mut out = String::new();
    for line in listing.lines() {
        let mut words = line.split(' ');
        let (Some(op), Some(name)) = (words.next(), words.next()) else {
            continue;
        };
        if matches!(op, "-P" | "-N" | "-A") && name == chain {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Where one table's rules are learned: the private namespace's real
/// chains, or one scratch chain.
struct Place<'a> {
    system: &'a System,
    family: Family,
    table: &'a str,
    /// The chain each rule's chain is loaded in: `""` maps every chain to
    /// the scratch chain; empty for the real chains.
    chains: HashMap<String, String>,
    /// The chain declarations.
    head: Vec<String>,
    args: Vec<String>,
}

impl Place<'_> {
    fn chain<'c>(&'c self, chain: &'c str) -> &'c str {
        self.chains.get("").map_or(chain, String::as_str)
    }

    fn trial(&self, head: Vec<String>) -> Trial<'_> {
        Trial {
            system: self.system,
            family: self.family,
            table: self.table,
            head,
            args: self.args.clone(),
        }
    }

    /// Learns the forms of `batch` (indexes into `rules`), setting each
    /// one's verdict in `out`.
    fn learn(
        &self,
        rules: &[RuleCheck],
        batch: &[usize],
        out: &mut [Verdict],
    ) -> Result<(), Error> {
        let mut good: Vec<usize> = Vec::new();
        for &i in batch {
            match skipped_by(&rules[i].rule, self.family) {
                Some(message) => {
                    out[i] = Verdict::Refused {
                        stderr: String::new(),
                        message,
                    }
                }
                None => good.push(i),
            }
        }
        let line = |i: usize| rule_line("-A", self.chain(&rules[i].chain), &rules[i].rule);
        let trial = self.trial(self.head.clone());
        let refused = trial.sift(good.iter().map(|&i| (i, line(i))).collect())?;
        let explained = refused.iter().any(|(_, said)| unsaid(said));
        for (i, said) in refused {
            let r = &rules[i];
            let chain = self.chain(&r.chain);
            let said = self
                .system
                .explain(self.family, self.table, chain, &r.rule, said);
            let stderr = self.in_words(&said, &r.chain);
            let message = check_refused(&stderr, r);
            out[i] = Verdict::Refused { stderr, message };
            good.retain(|&g| g != i);
        }
        if good.is_empty() {
            return Ok(());
        }
        // An explanation may have loaded a rule: load the good ones alone
        // again before reading them.
        if explained
            && let Outcome::Refused { stderr, .. } =
                trial.run(&good.iter().map(|&i| (i, line(i))).collect::<Vec<_>>())?
        {
            return Err(Error::Failed {
                command: self.system.tool(self.family, "-restore"),
                status: "refused".into(),
                stderr,
            });
        }
        let printed = self.read(rules, &good)?;
        let forms = self.forms(rules, &good, &printed)?;
        for ((&i, printed), form) in good.iter().zip(printed).zip(forms) {
            out[i] = Verdict::Learned(Learned { printed, form });
        }
        Ok(())
    }

    /// The head of a transaction that starts from the forms just loaded
    /// (`loaded`, their lines). The private namespace's table is replaced
    /// whole at each run: its head declares the chains and loads them
    /// again. A scratch chain of the real tables holds them already, and is
    /// not declared again: that would flush it, and iptables-nft's `-D`
    /// then looks for a rule among the flushed ones (`RULE_DELETE failed`),
    /// which made every form look lossy without CAP_SYS_ADMIN (the unit).
    fn holding_loaded(&self, loaded: impl Iterator<Item = String>) -> Vec<String> {
        if self.chains.contains_key("") {
            return Vec::new();
        }
        let mut head = self.head.clone();
        head.extend(loaded);
        head
    }

    /// `said` with the scratch chain named as the rule's own chain.
    fn in_words(&self, said: &str, chain: &str) -> String {
        match self.chains.get("") {
            Some(scratch) => said.replace(scratch.as_str(), chain),
            None => said.to_string(),
        }
    }

    /// The rules of `good`, loaded, as iptables prints them, in order.
    fn read(&self, rules: &[RuleCheck], good: &[usize]) -> Result<Vec<Rule>, Error> {
        let mut chains: Vec<(&str, usize)> = Vec::new();
        for &i in good {
            let chain = self.chain(&rules[i].chain);
            match chains.iter_mut().find(|(c, _)| *c == chain) {
                Some((_, n)) => *n += 1,
                None => chains.push((chain, 1)),
            }
        }
        // The real chains of the private namespace's table are read in one
        // listing (the table holds nothing else); the scratch chain alone.
        let listing = match self.chains.contains_key("") {
            true => None,
            false => Some(self.list_table()?),
        };
        let mut by_chain: HashMap<&str, std::vec::IntoIter<Rule>> = HashMap::new();
        for (chain, expected) in chains {
            let text = listing.as_ref().map(|all| chain_lines(all, chain));
            by_chain.insert(
                chain,
                self.read_chain(chain, expected, text.as_deref())?
                    .into_iter(),
            );
        }
        let mut printed = Vec::with_capacity(good.len());
        for &i in good {
            let chain = self.chain(&rules[i].chain);
            // Each chain read back exactly as many rules as it was given.
            if let Some(rule) = by_chain.get_mut(chain).and_then(Iterator::next) {
                printed.push(rule);
            }
        }
        Ok(printed)
    }

    /// `iptables -S` of the whole table.
    fn list_table(&self) -> Result<String, Error> {
        let tool = self.system.tool(self.family, "");
        let args = ["-w", "-t", self.table, "-S"].map(String::from);
        Ok(self.system.exec(&tool, &args, None)?.stdout)
    }

    /// The rules of `chain` as iptables prints them (`listed`, from a
    /// listing of the table, or read alone: in the real tables, only the
    /// scratch chain is pyfw's to read); exactly `expected`.
    fn read_chain(
        &self,
        chain: &str,
        expected: usize,
        listed: Option<&str>,
    ) -> Result<Vec<Rule>, Error> {
        let tool = self.system.tool(self.family, "");
        let text = match listed {
            Some(text) => text.to_string(),
            None => {
                let args = ["-w", "-t", self.table, "-S", chain].map(String::from);
                self.system.exec(&tool, &args, None)?.stdout
            }
        };
        let shown = match self.chains.contains_key("") {
            true => "(pyfw's scratch chain)",
            false => chain,
        };
        let command = || format!("{tool} -t {} -S {shown}", self.table);
        // Read as every listing is: names as printed, values as quoted.
        let printed = state::parse_chain_listing(&text, chain)
            .map_err(|source| Error::Parse {
                command: command(),
                source,
            })?
            .rules;
        if printed.len() != expected || printed.iter().any(Rule::is_opaque) {
            return Err(Error::Failed {
                command: command(),
                status: "unexpected output".into(),
                stderr: format!("read back {} rules, wrote {expected}", printed.len()),
            });
        }
        Ok(printed)
    }

    /// Whether each printed form loads back as itself, and as the rule
    /// wished: the printed forms are loaded (each refused one is
    /// [`Form::Unloadable`]) and read back ([`Form::Reloads`] where one
    /// differs); then, with them loaded, `-D CHAIN WISH` for each wish
    /// printed otherwise than written finds it or not ([`Form::Lossy`]).
    fn forms(
        &self,
        rules: &[RuleCheck],
        good: &[usize],
        printed: &[Rule],
    ) -> Result<Vec<Form>, Error> {
        let mut forms: Vec<Form> = good.iter().map(|_| Form::Stable).collect();
        // A rule printed as written loads back as itself (it is what the
        // wish loaded as): only the others are checked.
        let check: Vec<usize> = (0..good.len())
            .filter(|&k| printed[k] != rules[good[k]].rule)
            .collect();
        if check.is_empty() {
            return Ok(forms);
        }
        let line = |k: usize| rule_line("-A", self.chain(&rules[good[k]].chain), &printed[k]);
        let items = check.iter().map(|&k| (k, line(k))).collect();
        for (k, said) in self.trial(self.head.clone()).sift(items)? {
            forms[k] = Form::Unloadable(crate::kernel::words::cleaned(
                &self.in_words(&said, &rules[good[k]].chain),
            ));
        }
        let loads: Vec<usize> = (check.iter().copied())
            .filter(|&k| forms[k] == Form::Stable)
            .collect();
        if loads.is_empty() {
            return Ok(forms);
        }
        let again = self.read(rules, &loads.iter().map(|&k| good[k]).collect::<Vec<_>>())?;
        for (&k, reloaded) in loads.iter().zip(again) {
            if reloaded != printed[k] {
                forms[k] = Form::Reloads(reloaded);
            }
        }
        let head = self.holding_loaded(loads.iter().map(|&k| line(k)));
        let deletes = (loads.iter())
            .filter(|&&k| forms[k] == Form::Stable)
            .map(|&k| {
                (
                    k,
                    rule_line(
                        "-D",
                        self.chain(&rules[good[k]].chain),
                        &rules[good[k]].rule,
                    ),
                )
            })
            .collect::<Vec<_>>();
        if deletes.is_empty() {
            return Ok(forms);
        }
        for (k, _) in self.trial(head).sift(deletes)? {
            forms[k] = Form::Lossy;
        }
        Ok(forms)
    }
}
