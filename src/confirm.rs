//! Confirm or revert: `pyfw apply --confirm 30s`.
//!
//! Like `iptables-apply` and `ferm --interactive`, an apply with `--confirm`
//! puts the wishes in force, then waits for the operator to prove they can
//! still reach the host: a line typed on the terminal (`yes`), or `pyfw
//! confirm` from a second session. Without it, when the time is up (or on
//! Ctrl-C, SIGTERM, or an answer other than yes), pyfw puts back exactly
//! what was there before in every chain, policy and ipset the plan touched,
//! and says so.
//!
//! - [`Snapshot`] is what the plan touched, as it was: taken from the state
//!   the plan was made from, under the writer lock.
//! - [`revert_steps`] (pure) turns a snapshot and the state now into
//!   transactions: sets refilled or recreated first (swapped in whole, so a
//!   rule never sees a set half full), then every touched chain of a table
//!   rewritten in one `iptables-restore --noflush` transaction (flush, the
//!   old rules, the old policy: no instant without a rule), then the sets
//!   and chains the plan created are removed, once no rule uses them.
//! - The wait listens on the abstract socket `@pyfw-confirm` of the network
//!   namespace (like `src/lock.rs`), answering only root or the user who
//!   runs the apply. SIGHUP (the SSH session dropped) is ignored: the wait
//!   goes on and the revert still comes.
//!
//! With a daemon: the apply holds the writer lock (`@pyfw-lock`) from the
//! read until the answer or the end of the revert, so the daemon neither
//! undoes the change under test nor fights the revert; it waits, retries
//! with backoff and reconciles when the lock is free. A revert leaves a mark
//! (`/run/pyfw/reverted-COOKIE`, by network namespace) naming the reverted
//! wishes' content, so that the daemon does not apply that same content
//! again; it enforces again once the file changes, or after a plain or
//! confirmed `pyfw apply` clears the mark.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::Hasher;
use std::io::{self, BufRead, Read, Write};
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::netfilter::{Backend, Rules, Scope, Sets};
use crate::plan::{Command, Plan, Program};
use crate::state::{Chain, Family, Ipset, State, builtin_chains};

/// The abstract socket an apply waiting for confirmation listens on.
pub const SOCKET: &str = "pyfw-confirm";

/// What a plan touched, as it was before it ran.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Each touched chain; `None` when it did not exist.
    pub chains: BTreeMap<(Family, String, String), Option<Chain>>,
    /// Each touched set; `None` when it did not exist.
    pub sets: BTreeMap<String, Option<Ipset>>,
}

impl Snapshot {
    /// The chains and sets `plan` changes, as `before` (the state it was
    /// planned from) holds them.
    /// `before` is taken, not borrowed: its sets are moved into the
    /// snapshot rather than copied (a 100,000-member set).
    pub fn of(plan: &Plan, mut before: State) -> Snapshot {
        let mut snap = Snapshot::default();
        // The set the last command named: a set's members come in runs
        // (100,000 adds), each looked up once rather than per command.
        let mut last_set: Option<&str> = None;
        for c in plan.commands.iter().chain(&plan.record) {
            match c.program {
                Program::Iptables(family) => {
                    let (Some(table), Some(chain)) = (c.args.get(2), c.args.get(4)) else {
                        continue;
                    };
                    // Copied once per chain, not per command (a 50,000-rule
                    // chain, a 100,000-member set).
                    snap.chains
                        .entry((family, table.clone(), chain.clone()))
                        .or_insert_with(|| {
                            before
                                .ruleset(family)
                                .chain(table, chain)
                                .map(|c| c.into_owned())
                        });
                }
                Program::Ipset => {
                    let names: &[String] = match c.args.first().map(String::as_str) {
                        Some("swap" | "rename") => c.args.get(1..3).unwrap_or(&[]),
                        _ => c.args.get(1..2).unwrap_or(&[]),
                    };
                    if let [name] = names
                        && last_set == Some(name.as_str())
                    {
                        continue;
                    }
                    last_set = names.last().map(String::as_str);
                    for name in names {
                        if !snap.sets.contains_key(name) {
                            snap.sets.insert(name.clone(), before.ipsets.remove(name));
                        }
                    }
                }
            }
        }
        snap
    }

    /// What to read to revert: the touched chains and sets.
    pub fn scope(&self) -> Scope {
        let mut scope = Scope::none();
        for (family, table, chain) in self.chains.keys() {
            let rules = scope.rules_mut(*family);
            if let Rules::Skip = rules {
                *rules = Rules::Chains(BTreeSet::new());
            }
            if let Rules::Chains(set) = rules {
                set.insert((table.clone(), chain.clone()));
            }
        }
        if !self.sets.is_empty() {
            scope.sets = Sets::Named(self.sets.keys().cloned().collect());
        }
        scope
    }

    pub fn is_empty(&self) -> bool {
        self.chains.is_empty() && self.sets.is_empty()
    }
}

/// A set name for the revert's scratch copy of `name`, within ipset's 31
/// characters.
fn scratch_set(name: &str) -> String {
    let mut h = fnv::FnvHasher::default();
    h.write(name.as_bytes());
    format!("_pyfw_rv_{:016x}", h.finish())
}

fn ipset(args: Vec<String>, set: &str, why: &str) -> Command {
    Command {
        program: Program::Ipset,
        args,
        undo: None,
        reason: format!("revert ipset {set}: {why}"),
        target: format!("ipset {set}"),
        wish: None,
    }
}

fn create_filled(name: &str, set: &Ipset, why: &str) -> Vec<Command> {
    let mut out = Vec::new();
    let mut create = vec!["create".to_string(), name.to_string(), set.kind.clone()];
    create.extend(set.options.iter().cloned());
    out.push(ipset(create, name, why));
    for m in &set.members {
        let mut add = vec!["add".to_string(), name.to_string(), m.clone()];
        if let Some(c) = set.comments.get(m) {
            add.extend(["comment".to_string(), c.clone()]);
        }
        out.push(ipset(add, name, why));
    }
    out
}

fn set_family(set: &Ipset) -> Option<&str> {
    set.options
        .windows(2)
        .find(|w| w[0] == "family")
        .map(|w| w[1].as_str())
}

/// The transactions that put back `snap`, given the state `now`. Each inner
/// list is one transaction (one family and table, or a run of set
/// commands), to be run in order; a failing one does not stop the others.
pub fn revert_steps(snap: &Snapshot, now: &State) -> Vec<Vec<Command>> {
    let mut steps: Vec<Vec<Command>> = Vec::new();
    // Sets whose type changed: the kernel neither swaps nor renames them
    // while rules use them, so the rules use a scratch copy meanwhile.
    let mut retyped: BTreeMap<String, String> = BTreeMap::new();
    let mut sets_first = Vec::new();
    let mut sets_last = Vec::new();
    for (name, before) in &snap.sets {
        let current = now.ipsets.get(name);
        match (before, current) {
            (None, None) => {}
            (None, Some(_)) => sets_last.push(ipset(
                vec!["destroy".into(), name.clone()],
                name,
                "the apply created it",
            )),
            (Some(b), None) => sets_first.extend(create_filled(name, b, "the apply removed it")),
            (Some(b), Some(c)) if b == c => {}
            (Some(b), Some(c)) => {
                let tmp = scratch_set(name);
                let why = "put back its type, options and members";
                sets_first.extend(create_filled(&tmp, b, why));
                if b.kind == c.kind && set_family(b) == set_family(c) {
                    sets_first.push(ipset(
                        vec!["swap".into(), tmp.clone(), name.clone()],
                        name,
                        why,
                    ));
                    sets_first.push(ipset(vec!["destroy".into(), tmp], name, why));
                } else {
                    retyped.insert(name.clone(), tmp);
                }
            }
        }
    }
    if !sets_first.is_empty() {
        steps.push(sets_first);
    }
    steps.extend(chain_steps(snap, now, &retyped));
    if !retyped.is_empty() {
        let mut rebuild = Vec::new();
        for name in retyped.keys() {
            let Some(Some(b)) = snap.sets.get(name) else {
                continue;
            };
            let why = "rebuild with its old type";
            rebuild.push(ipset(vec!["destroy".into(), name.clone()], name, why));
            rebuild.extend(create_filled(name, b, why));
        }
        steps.push(rebuild);
        steps.extend(chain_steps(snap, now, &BTreeMap::new()));
        let drop: Vec<Command> = retyped
            .iter()
            .map(|(name, tmp)| ipset(vec!["destroy".into(), tmp.clone()], name, "scratch copy"))
            .collect();
        steps.push(drop);
    }
    if !sets_last.is_empty() {
        steps.push(sets_last);
    }
    steps
}

/// One transaction per family and table: every touched chain flushed and
/// refilled as it was, its policy put back, and chains the apply created
/// removed, all at once.
fn chain_steps(
    snap: &Snapshot,
    now: &State,
    renamed: &BTreeMap<String, String>,
) -> Vec<Vec<Command>> {
    type Chains<'a> = Vec<(&'a String, &'a Option<Chain>)>;
    let mut by_table: BTreeMap<(Family, String), Chains> = BTreeMap::new();
    for ((family, table, chain), before) in &snap.chains {
        by_table
            .entry((*family, table.clone()))
            .or_default()
            .push((chain, before));
    }
    let mut out = Vec::new();
    for ((family, table), chains) in by_table {
        let exists_now = |chain: &str| {
            now.ruleset(family)
                .tables
                .get(&table)
                .and_then(|t| t.chain(chain))
                .is_some()
                || builtin_chains(&table).contains(&chain)
        };
        let cmd = |rest: Vec<String>, chain: &str| {
            let mut args = vec!["-w".to_string(), "-t".to_string(), table.clone()];
            args.extend(rest);
            Command {
                program: Program::Iptables(family),
                args,
                undo: None,
                reason: format!(
                    "revert {}",
                    crate::wishes::chain_label(family, &table, chain)
                ),
                target: crate::wishes::chain_label(family, &table, chain),
                wish: None,
            }
        };
        let mut create = Vec::new();
        let mut flush = Vec::new();
        let mut fill = Vec::new();
        let mut policies = Vec::new();
        let mut delete = Vec::new();
        for (chain, before) in chains {
            let exists = exists_now(chain);
            match before {
                None if exists => {
                    flush.push(cmd(vec!["-F".into(), chain.clone()], chain));
                    delete.push(cmd(vec!["-X".into(), chain.clone()], chain));
                }
                None => {}
                Some(c) => {
                    if exists {
                        flush.push(cmd(vec!["-F".into(), chain.clone()], chain));
                    } else {
                        create.push(cmd(vec!["-N".into(), chain.clone()], chain));
                    }
                    for rule in &c.rules {
                        let mut rule = rule.clone();
                        for (from, to) in renamed {
                            rule = rule.with_set_renamed(from, to);
                        }
                        let mut a = vec!["-A".to_string(), chain.clone()];
                        a.extend(rule.args().iter().cloned());
                        fill.push(cmd(a, chain));
                    }
                    if let Some(p) = &c.policy {
                        policies.push(cmd(vec!["-P".into(), chain.clone(), p.clone()], chain));
                    }
                }
            }
        }
        let all: Vec<Command> = [create, flush, fill, policies, delete].concat();
        if !all.is_empty() {
            out.push(all);
        }
    }
    out
}

/// How a revert went.
#[derive(Debug, Default)]
pub struct Reverted {
    pub transactions: usize,
    pub failures: Vec<String>,
}

/// Reads what the snapshot names and puts it back. Never stops at the
/// first failure: what can be put back is.
pub fn revert(backend: &mut dyn Backend, snap: &Snapshot, say: &mut dyn FnMut(String)) -> Reverted {
    let mut result = Reverted::default();
    let now = match backend.read_state(snap.scope()) {
        Ok(s) => s,
        Err(e) => {
            // Without a fresh read, assume every touched thing exists: the
            // flush-and-refill transactions still put the old rules back.
            say(format!(
                "cannot read the state to revert ({e}); reverting blind"
            ));
            let mut s = State::default();
            for (family, table, chain) in snap.chains.keys() {
                s.ruleset_mut(*family)
                    .tables
                    .entry(table.clone())
                    .or_default()
                    .chains
                    .push((
                        chain.clone(),
                        Chain {
                            policy: None,
                            rules: Vec::new(),
                        },
                    ));
            }
            s
        }
    };
    for step in revert_steps(snap, &now) {
        let refs: Vec<&Command> = step.iter().collect();
        for c in &step {
            say(format!(
                "Reverting: {}",
                crate::apply::command_line(backend, c)
            ));
        }
        match backend.run_batch(&refs) {
            Ok(()) => result.transactions += 1,
            Err(e) => {
                let msg = format!("{} ({})", e.cause, backend.batch_line(&refs));
                say(format!("revert step failed: {msg}"));
                result.failures.push(msg);
            }
        }
    }
    result
}

/// The operator's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Confirmed; how (`on the terminal`, `by pyfw confirm (pid N)`).
    Confirmed(String),
    /// Not confirmed; why (`no confirmation within 30s`, `answered "n"`,
    /// `SIGINT`).
    Refused(String),
}

/// Waits up to `timeout` for a confirmation on `@pyfw-confirm` or, when
/// `terminal` is set, a line on stdin.
pub fn wait(timeout: Duration, terminal: bool, say: &mut dyn FnMut(String)) -> io::Result<Answer> {
    let addr = SocketAddr::from_abstract_name(SOCKET.as_bytes())?;
    let listener = UnixListener::bind_addr(&addr).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot listen on @{SOCKET} for `pyfw confirm`: {e}"),
        )
    })?;
    listener.set_nonblocking(true)?;
    // SIGHUP: the terminal went away (the very lock-out this guards
    // against); keep waiting. SIGINT, SIGTERM: revert now.
    let stop = Arc::new(AtomicBool::new(false));
    let hup = Arc::new(AtomicBool::new(false));
    let mut ids = Vec::new();
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        ids.push(signal_hook::flag::register(sig, stop.clone())?);
    }
    ids.push(signal_hook::flag::register(
        signal_hook::consts::SIGHUP,
        hup.clone(),
    )?);
    let result = wait_loop(&listener, timeout, terminal, &stop, &hup, say);
    for id in ids {
        signal_hook::low_level::unregister(id);
    }
    result
}

fn wait_loop(
    listener: &UnixListener,
    timeout: Duration,
    mut terminal: bool,
    stop: &AtomicBool,
    hup: &AtomicBool,
    say: &mut dyn FnMut(String),
) -> io::Result<Answer> {
    let deadline = Instant::now() + timeout;
    let stdin = io::stdin();
    let mut told_hup = false;
    loop {
        if stop.load(Ordering::SeqCst) {
            return Ok(Answer::Refused("interrupted (SIGINT or SIGTERM)".into()));
        }
        if hup.load(Ordering::SeqCst) && !told_hup {
            told_hup = true;
            terminal = false;
            say("the terminal hung up; still waiting for `pyfw confirm`".into());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(Answer::Refused(format!(
                "no confirmation within {}",
                humantime::format_duration(timeout)
            )));
        }
        let mut fds = vec![libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        if terminal {
            fds.push(libc::pollfd {
                fd: stdin.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let ms = left.as_millis().clamp(1, 250) as libc::c_int;
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs that
        // lives for the whole call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if fds[0].revents != 0
            && let Some(answer) = answer_client(listener)
        {
            return Ok(answer);
        }
        if terminal && fds.get(1).is_some_and(|f| f.revents != 0) {
            let mut line = String::new();
            match stdin.lock().read_line(&mut line) {
                // End of input: nobody can type here; wait for `pyfw confirm`.
                Ok(0) | Err(_) => terminal = false,
                Ok(_) => {
                    let word = line.trim().to_ascii_lowercase();
                    if matches!(word.as_str(), "y" | "yes" | "confirm") {
                        return Ok(Answer::Confirmed("on the terminal".into()));
                    }
                    return Ok(Answer::Refused(format!("answered {:?}", line.trim())));
                }
            }
        }
    }
}

/// Whether an answer can be read from stdin without harm: a pipe, or the
/// terminal when pyfw is in its foreground (reading it from the background
/// would stop pyfw with SIGTTIN, and then nothing would revert).
pub fn stdin_readable() -> bool {
    let stdin = io::stdin();
    if !std::io::IsTerminal::is_terminal(&stdin) {
        return true;
    }
    // SAFETY: plain syscalls on fd 0 and this process; no memory is passed.
    unsafe { libc::tcgetpgrp(stdin.as_raw_fd()) == libc::getpgrp() }
}

/// Accepts one `pyfw confirm`; returns the answer if it confirmed.
fn answer_client(listener: &UnixListener) -> Option<Answer> {
    let (mut stream, _) = listener.accept().ok()?;
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    let (pid, uid) = crate::lock::peer(&stream)?;
    let mut buf = [0u8; 64];
    let n = stream.read(&mut buf).ok()?;
    if !buf[..n].starts_with(b"confirm") {
        let _ = stream.write_all(b"refused: unknown request\n");
        return None;
    }
    let me = crate::secure::euid();
    if uid != 0 && uid != me {
        let _ = stream.write_all(
            format!("refused: only root (or uid {me}) may confirm; you are uid {uid}\n").as_bytes(),
        );
        return None;
    }
    let _ = stream.write_all(
        format!(
            "confirmed: pyfw apply (pid {}) keeps the change\n",
            std::process::id()
        )
        .as_bytes(),
    );
    Some(Answer::Confirmed(format!(
        "by `pyfw confirm` (pid {pid}, uid {uid})"
    )))
}

/// `pyfw confirm`: confirms the apply waiting in this network namespace.
/// Returns its reply, or why there is nothing to confirm.
pub fn send_confirm() -> Result<String, String> {
    let addr = SocketAddr::from_abstract_name(SOCKET.as_bytes()).map_err(|e| e.to_string())?;
    let mut stream = UnixStream::connect_addr(&addr).map_err(|e| match e.kind() {
        io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound => {
            "nothing to confirm: no `pyfw apply --confirm` is waiting in this network namespace"
                .to_string()
        }
        _ => format!("cannot reach @{SOCKET}: {e}"),
    })?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    stream
        .write_all(b"confirm\n")
        .map_err(|e| format!("cannot send the confirmation: {e}"))?;
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    let reply = reply.trim().to_string();
    if reply.starts_with("confirmed") {
        Ok(reply)
    } else if reply.is_empty() {
        Err("the waiting apply did not answer (it may have just timed out)".into())
    } else {
        Err(reply)
    }
}

// ---- the mark a revert leaves for the daemon -------------------------------

/// Where reverts are marked: `/run/pyfw` (or `$PYFW_RUN_DIR`).
fn run_dir() -> PathBuf {
    std::env::var_os("PYFW_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/pyfw"))
}

/// This network namespace's cookie (never reused, unlike its inode).
fn netns_cookie() -> Option<u64> {
    let sock = std::os::unix::net::UnixDatagram::unbound().ok()?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` and `len` are valid for writes and `len` is its
    // size; the fd is open for the whole call.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(cookie)
}

/// The file marking a revert in this network namespace.
pub fn mark_path() -> Option<PathBuf> {
    netns_cookie().map(|c| run_dir().join(format!("reverted-{c}")))
}

/// A fingerprint of a wishes file's content.
pub fn content_hash(text: &[u8]) -> String {
    let mut h = fnv::FnvHasher::default();
    h.write(text);
    format!("{:016x}", h.finish())
}

/// Marks `text` as reverted in this network namespace; returns the mark.
pub fn mark_reverted(text: &[u8], wishes: &std::path::Path, why: &str) -> io::Result<PathBuf> {
    let path = mark_path().ok_or_else(|| io::Error::other("cannot tell the network namespace"))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let body = format!(
        "{}\n{}: reverted by `pyfw apply --confirm` (pid {}): {why}\n",
        content_hash(text),
        wishes.display(),
        std::process::id()
    );
    std::fs::write(&path, body)?;
    Ok(path)
}

/// Clears the mark (a plain or confirmed apply went through).
pub fn clear_mark() {
    if let Some(p) = mark_path() {
        let _ = std::fs::remove_file(p);
    }
}

/// The mark's words when `text` is the content it names.
pub fn reverted(text: &[u8]) -> Option<String> {
    let body = std::fs::read_to_string(mark_path()?).ok()?;
    let mut lines = body.lines();
    (lines.next()? == content_hash(text)).then(|| lines.next().unwrap_or("").to_string())
}

/// For the daemon: true when `text` was reverted and must not be applied;
/// says so once per mark.
pub fn daemon_holds_back(text: &[u8]) -> bool {
    static TOLD: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);
    let Some(why) = reverted(text) else {
        return false;
    };
    let mut told = TOLD.lock().unwrap_or_else(|e| e.into_inner());
    if told.as_deref() != Some(why.as_str()) {
        tracing::warn!(
            "not enforcing these wishes: {why}; pyfw enforces again when the file changes or \
             after `pyfw apply`"
        );
        *told = Some(why);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Ruleset, parse_ipset_save, parse_iptables_save};

    fn state(save: &str, sets: &str) -> State {
        State {
            v4: parse_iptables_save(save).unwrap(),
            v6: Ruleset::default(),
            ipsets: parse_ipset_save(sets).unwrap(),
        }
    }

    fn lines(steps: &[Vec<Command>]) -> Vec<Vec<String>> {
        steps
            .iter()
            .map(|s| s.iter().map(|c| c.to_string()).collect())
            .collect()
    }

    fn cmd(args: &str) -> Command {
        Command {
            program: if args.starts_with("-w") {
                Program::Iptables(Family::V4)
            } else {
                Program::Ipset
            },
            args: shlex::split(args).unwrap(),
            undo: None,
            reason: String::new(),
            target: String::new(),
            wish: None,
        }
    }

    const BEFORE: &str = "*filter\n:INPUT ACCEPT [0:0]\n:f2b - [0:0]\n\
        -A INPUT -s 10.0.0.1/32 -j f2b\n-A f2b -j RETURN\nCOMMIT\n";
    const SETS: &str = "create keep hash:ip family inet hashsize 1024 maxelem 65536\n\
        add keep 10.0.0.1\nadd keep 10.0.0.2\n";

    fn plan() -> Plan {
        Plan {
            commands: vec![
                cmd("create new hash:net"),
                cmd("add keep 10.0.0.3"),
                cmd("-w -t filter -N mine"),
                cmd("-w -t filter -I INPUT 1 -j mine"),
                cmd("-w -t filter -P INPUT DROP"),
            ],
            record: vec![cmd("create pyfw-owned hash:ip family inet6 comment")],
        }
    }

    #[test]
    fn a_snapshot_holds_what_the_plan_touches_as_it_was() {
        let snap = Snapshot::of(&plan(), state(BEFORE, SETS));
        let chains: Vec<_> = snap
            .chains
            .iter()
            .map(|(k, v)| (k.2.as_str(), v.is_some()))
            .collect();
        assert_eq!(chains, [("INPUT", true), ("mine", false)]);
        let sets: Vec<_> = snap
            .sets
            .iter()
            .map(|(k, v)| (k.as_str(), v.is_some()))
            .collect();
        assert_eq!(
            sets,
            [("keep", true), ("new", false), ("pyfw-owned", false)]
        );
        assert!(!snap.chains.keys().any(|k| k.2 == "f2b"), "untouched");
    }

    #[test]
    fn revert_refills_sets_then_rewrites_chains_then_drops_what_was_new() {
        let before = state(BEFORE, SETS);
        let snap = Snapshot::of(&plan(), before.clone());
        let after = state(
            "*filter\n:INPUT DROP [0:0]\n:f2b - [0:0]\n:mine - [0:0]\n-A INPUT -j mine\n\
             -A INPUT -s 10.0.0.1/32 -j f2b\n-A f2b -j RETURN\nCOMMIT\n",
            &format!(
                "{SETS}add keep 10.0.0.3\ncreate new hash:net family inet\n\
                 create pyfw-owned hash:ip family inet6 comment\n"
            ),
        );
        let tmp = scratch_set("keep");
        assert_eq!(
            lines(&revert_steps(&snap, &after)),
            vec![
                vec![
                    format!("ipset create {tmp} hash:ip family inet hashsize 1024 maxelem 65536"),
                    format!("ipset add {tmp} 10.0.0.1"),
                    format!("ipset add {tmp} 10.0.0.2"),
                    format!("ipset swap {tmp} keep"),
                    format!("ipset destroy {tmp}"),
                ],
                vec![
                    "iptables -w -t filter -F INPUT".to_string(),
                    "iptables -w -t filter -F mine".into(),
                    "iptables -w -t filter -A INPUT -s 10.0.0.1/32 -j f2b".into(),
                    "iptables -w -t filter -P INPUT ACCEPT".into(),
                    "iptables -w -t filter -X mine".into(),
                ],
                vec![
                    "ipset destroy new".to_string(),
                    "ipset destroy pyfw-owned".into(),
                ],
            ]
        );
        // Reverting the state as it was is nothing to do but rewriting the
        // touched chains as they are.
        let steps = revert_steps(&snap, &before);
        assert_eq!(steps.len(), 1, "{:?}", lines(&steps));
    }

    #[test]
    fn a_set_whose_type_changed_is_rebuilt_while_rules_use_a_copy() {
        let before = state(
            "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -m set --match-set s src -j DROP\nCOMMIT\n",
            "create s hash:ip family inet\nadd s 10.0.0.1\n",
        );
        let plan = Plan {
            commands: vec![
                cmd("create s2 hash:net"),
                cmd("-w -t filter -I INPUT 1 -m set --match-set s2 src -j DROP"),
                cmd("destroy s"),
                cmd("rename s2 s"),
            ],
            record: vec![],
        };
        let snap = Snapshot::of(&plan, before.clone());
        let now = state(
            "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -m set --match-set s src -j DROP\nCOMMIT\n",
            "create s hash:net family inet\nadd s 10.0.0.0/24\n",
        );
        let tmp = scratch_set("s");
        let got = lines(&revert_steps(&snap, &now));
        let flat: Vec<&str> = got.iter().flatten().map(String::as_str).collect();
        let at = |needle: &str| {
            flat.iter()
                .position(|l| *l == needle)
                .unwrap_or_else(|| panic!("{needle} not in {flat:#?}"))
        };
        let via_tmp =
            format!("iptables -w -t filter -A INPUT -m set --match-set {tmp} src -j DROP");
        assert!(at(&format!("ipset create {tmp} hash:ip family inet")) < at(&via_tmp));
        assert!(at(&via_tmp) < at("ipset destroy s"));
        assert!(at("ipset destroy s") < at("ipset create s hash:ip family inet"));
        let back = "iptables -w -t filter -A INPUT -m set --match-set s src -j DROP";
        assert!(at("ipset add s 10.0.0.1") < at(back));
        assert!(at(back) < at(&format!("ipset destroy {tmp}")));
    }

    #[test]
    fn content_hashes_differ_by_content() {
        assert_ne!(content_hash(b"a"), content_hash(b"b"));
        assert_eq!(content_hash(b"a"), content_hash(b"a"));
    }
}
