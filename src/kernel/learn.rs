//! Learning how iptables prints a wished rule: load it where no packet
//! sees it, read it back. This is also the kernel's verdict on the wish.

use crate::kernel::backend::{Error, RuleCheck};
use crate::kernel::restore_script::{restore_error_line, restore_error_message};
use crate::kernel::system::System;
use crate::state::rule::Rule;
use crate::state::{self, Family, State};

/// Scratch chains are named this plus the pid of the pyfw that made them.
pub const SCRATCH_PREFIX: &str = "_pyfw_canon_";

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

impl System {
    /// Asks iptables whether it accepts every rule (`iptables-restore
    /// --test`), changing nothing.
    pub(crate) fn check(&self, checks: &[RuleCheck]) -> Result<(), Error> {
        for (family, table, batch) in batches(checks) {
            // `--test` parses and checks the whole transaction without
            // committing it, so declaring chains here creates nothing.
            let batch: Vec<&RuleCheck> = batch.iter().map(|&i| &checks[i]).collect();
            let mut declared = std::collections::HashSet::new();
            let chains: Vec<&str> = batch
                .iter()
                .flat_map(|c| c.creates.iter())
                .filter(|c| declared.insert(c.as_str()))
                .map(String::as_str)
                .collect();
            let rules: Vec<(&str, &RuleCheck)> =
                batch.iter().map(|c| (c.chain.as_str(), *c)).collect();
            self.restore_rules(family, table, &chains, &rules, &["--test"])?;
        }
        Ok(())
    }

    /// Loads `rules` (chain, rule) into `table` in one `iptables-restore
    /// --noflush` transaction, declaring `chains` first. A rule iptables
    /// refuses fails the whole transaction, reported by the rule's label.
    pub(crate) fn restore_rules(
        &self,
        family: Family,
        table: &str,
        chains: &[&str],
        rules: &[(&str, &RuleCheck)],
        extra: &[&str],
    ) -> Result<(), Error> {
        let head: Vec<String> = chains.iter().map(|c| format!(":{c} - [0:0]")).collect();
        self.restore_lines(family, table, &head, rules, extra)
    }

    /// [`Self::restore_rules`] with the lines before the rules given as
    /// they are (chain declarations, `-N CHAIN`).
    fn restore_lines(
        &self,
        family: Family,
        table: &str,
        head: &[String],
        rules: &[(&str, &RuleCheck)],
        extra: &[&str],
    ) -> Result<(), Error> {
        let mut text = format!("*{table}\n");
        let mut labels: Vec<Option<&str>> = vec![None];
        for line in head {
            text.push_str(line);
            text.push('\n');
            labels.push(None);
        }
        for (chain, check) in rules {
            let args = [
                vec!["-A".to_string(), chain.to_string()],
                check.rule.args().to_vec(),
            ]
            .concat();
            text.push_str(&crate::state::rule::restore_line(&args));
            text.push('\n');
            labels.push(Some(check.label.as_str()));
        }
        text.push_str("COMMIT\n");
        let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        args.extend(["--noflush", "--wait"].map(String::from));
        let Err(e) = self.exec(&self.tool(family, "-restore"), &args, Some(&text)) else {
            return Ok(());
        };
        let Error::Failed { stderr, .. } = &e else {
            return Err(e);
        };
        let label = restore_error_line(stderr)
            .and_then(|n| n.checked_sub(1))
            .and_then(|i| labels.get(i).copied().flatten());
        let message = restore_error_message(stderr);
        Err(match label {
            Some(label) => Error::Rejected {
                label: label.to_string(),
                message,
            },
            None => e,
        })
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
            Err(_) => Err(e),
        }
    }

    /// Learns rule forms in a scratch chain of the real tables: load it
    /// (a commit), read it back, drop it (a commit).
    pub(crate) fn canonicalize_scratch(&self, rules: &[RuleCheck]) -> Result<Vec<Rule>, Error> {
        let mut learned: Vec<Rule> = rules.iter().map(|r| r.rule.clone()).collect();
        // One scratch chain per process: two pyfw processes never collide,
        // and no hook jumps to it, so its rules never see a packet.
        let scratch = format!("{SCRATCH_PREFIX}{}", std::process::id());
        for (family, table, batch) in batches(rules) {
            let lines: Vec<(&str, &RuleCheck)> = batch
                .iter()
                .map(|&i| (scratch.as_str(), &rules[i]))
                .collect();
            self.restore_rules(family, table, &[scratch.as_str()], &lines, &[])?;
            let read = self.read_scratch(family, table, &scratch, batch.len());
            // Remove the scratch chain whatever the read said.
            let cleanup = self.drop_scratch(family, table, &scratch);
            let printed = read?;
            cleanup?;
            for (&i, rule) in batch.iter().zip(printed) {
                learned[i] = rule;
            }
        }
        Ok(learned)
    }

    /// The rules of a scratch chain as iptables prints them; exactly
    /// `expected` of them.
    fn read_scratch(
        &self,
        family: Family,
        table: &str,
        scratch: &str,
        expected: usize,
    ) -> Result<Vec<Rule>, Error> {
        let out = self.exec(
            &self.tool(family, ""),
            &["-w", "-t", table, "-S", scratch].map(String::from),
            None,
        )?;
        let command = || format!("{} -t {table} -S {scratch}", self.tool(family, ""));
        // Read as every listing is: names as printed, values as quoted.
        let printed = crate::state::parse_chain_listing(&out.stdout, scratch)
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

    /// Learns rule forms in a network namespace of a thread of its own
    /// (`unshare(CLONE_NEWNET)`), whose tables are empty: one commit and
    /// one read per table, each as cheap as on an empty host, and nothing
    /// to clean up (the namespace goes with the thread). The kernel and
    /// the tools are the same, so iptables prints each rule as it would in
    /// the real tables. The sets the rules name are created there (empty,
    /// with their real type and options) and the chains they jump to that
    /// pyfw read are created too, so that iptables accepts the rules for
    /// the same reasons it would on the host. A jump to a chain pyfw did
    /// not read (`DOCKER-USER`, `f2b-sshd`) fails there, and the caller
    /// then uses the scratch chain, as it does without CAP_SYS_ADMIN, which
    /// the systemd unit does not grant: correct either way, slower.
    pub(crate) fn canonicalize_private(
        &self,
        rules: &[RuleCheck],
        host: &State,
    ) -> Result<Vec<Rule>, Error> {
        let unshare_err = |source: std::io::Error| Error::Spawn {
            command: "unshare(CLONE_NEWNET)".into(),
            source,
        };
        let mut sets: Vec<String> = Vec::new();
        for name in rules.iter().flat_map(|r| r.rule.sets()) {
            let Some(set) = host.ipsets.get(name) else {
                return Err(unshare_err(std::io::Error::other(format!(
                    "set {name} is not known"
                ))));
            };
            let mut line = format!("create {name} {}", set.kind);
            for o in &set.options {
                line.push(' ');
                line.push_str(o);
            }
            if !sets.contains(&line) {
                sets.push(line);
            }
        }
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
                    let scratch = format!("{SCRATCH_PREFIX}{}", std::process::id());
                    let mut learned: Vec<Rule> = rules.iter().map(|r| r.rule.clone()).collect();
                    for (family, table, batch) in batches(rules) {
                        let builtin = state::builtin_chains(table);
                        let mut head = vec![format!(":{scratch} - [0:0]")];
                        for &i in &batch {
                            let Some(target) = rules[i].rule.target() else {
                                continue;
                            };
                            let exists = host
                                .ruleset(family)
                                .tables
                                .get(table)
                                .is_some_and(|t| t.chain(target).is_some());
                            let line = format!("-N {target}");
                            if exists && !builtin.contains(&target) && !head.contains(&line) {
                                head.push(line);
                            }
                        }
                        let lines: Vec<(&str, &RuleCheck)> = batch
                            .iter()
                            .map(|&i| (scratch.as_str(), &rules[i]))
                            .collect();
                        self.restore_lines(family, table, &head, &lines, &[])?;
                        let printed = self.read_scratch(family, table, &scratch, batch.len())?;
                        for (&i, rule) in batch.iter().zip(printed) {
                            learned[i] = rule;
                        }
                    }
                    Ok(learned)
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
