//! The reconciliation daemon (`pyfw daemon`).
//!
//! One loop, one idempotent reconcile. Every trigger (the start, a change
//! of the wishes file, SIGHUP, the poll timer, a retry after a failure, a
//! change another program made to a wished chain) only marks a run as
//! wanted; triggers that arrive together, or while a
//! run is in flight, are answered by one run. A run re-reads the wishes
//! file and reads fresh netfilter state, names what drifted, and repairs
//! it with the shared [`Reconciler`]. Runs happen on a blocking thread, so
//! the loop stays free to take signals and ping the watchdog.
//!
//! - [`timing`]: when to run (coalescing, debounce, backoff, fights);
//! - [`core`]: what one run does, and how bad wishes are kept out;
//! - [`file`]: when new content of the wishes file is finished;
//! - [`watch`]: the file watch; [`events`]: netfilter's change
//!   notifications (nft backend); [`log`]: the journal or stderr.
//!
//! See `docs/daemon.md` for running it under systemd.

pub mod core;
pub mod events;
pub mod file;
pub mod log;
pub mod metrics;
pub mod timing;
pub mod watch;

use std::ops::ControlFlow;
use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use sd_notify::NotifyState;
use tokio::sync::mpsc::{self, UnboundedReceiver};
use tokio::task::JoinHandle;
use tokio::time::{Duration, Instant};

use self::metrics::{Endpoint, Listen, Metrics};
use crate::kernel::xtlock::Answer;
use crate::kernel::{Backend, System, Variant};
use crate::plan::Program;
use crate::reconcile::Reconciler;
use crate::reconcile::apply::Interrupt;
use crate::state::Family;

use self::core::{Core, Job, Outcome, Reconcile, RunResult};
use self::events::Events;
use self::file::FileView;
use self::timing::{
    Backoff, Debounce, FightNews, FightPolicy, Fights, Finished, Schedule, Trigger,
};
use self::watch::{Hint, Watch};

/// The default poll interval; see `docs/daemon.md` for why.
pub const DEFAULT_INTERVAL: &str = "5s";

/// Options of `pyfw daemon`.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct Args {
    /// How often to read netfilter and repair drift (500ms, 10s, 1m; at
    /// least 100ms). Changes to the wishes file are followed at once,
    /// whatever the interval.
    #[arg(
        long,
        env = "PYFW_INTERVAL",
        default_value = DEFAULT_INTERVAL,
        value_parser = parse_interval
    )]
    pub interval: Duration,

    /// Serve Prometheus/OpenMetrics metrics at `GET /metrics` on ADDR: a
    /// loopback address (127.0.0.1:9983, `[::1]:9983`, localhost:9983) or a
    /// Unix socket (unix:/run/pyfw/metrics.sock). Off by default, and when
    /// empty; see docs/metrics.md.
    #[arg(long, env = "PYFW_METRICS", value_name = "ADDR")]
    pub metrics: Option<String>,

    /// Allow --metrics on an address that is not loopback (0.0.0.0:9983, a
    /// host address): a firewall daemon does not open a port on the network
    /// unless told to in so many words. Without --metrics, it does nothing.
    #[arg(
        long,
        env = "PYFW_METRICS_ALLOW_REMOTE",
        value_parser = parse_switch
    )]
    pub metrics_allow_remote: bool,
}

/// yes/no, true/false, on/off, 1/0; empty is no, so that
/// `PYFW_METRICS_ALLOW_REMOTE=` in /etc/default/pyfw cannot stop a firewall
/// from starting.
fn parse_switch(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "" | "n" | "no" | "f" | "false" | "off" | "0" => Ok(false),
        "y" | "yes" | "t" | "true" | "on" | "1" => Ok(true),
        other => Err(format!("`{other}` is not yes or no")),
    }
}

fn parse_interval(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if d < Duration::from_millis(100) {
        return Err("must be at least 100ms".into());
    }
    Ok(d)
}

/// What the loop gets from the signal thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Hup,
    Term,
    Int,
}

impl Signal {
    /// The signal's number, for an [`Interrupt`].
    fn number(self) -> i32 {
        match self {
            Signal::Hup => libc::SIGHUP,
            Signal::Term => libc::SIGTERM,
            Signal::Int => libc::SIGINT,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Signal::Hup => "SIGHUP",
            Signal::Term => "SIGTERM",
            Signal::Int => "SIGINT",
        }
    }
}

/// Where service-manager notifications go.
pub trait Notifier: Send + Sync {
    fn notify(&self, states: &[NotifyState]);
}

/// systemd's `NOTIFY_SOCKET` (nothing when it is not set).
pub struct Systemd;

impl Notifier for Systemd {
    fn notify(&self, states: &[NotifyState]) {
        if let Err(e) = sd_notify::notify(states) {
            tracing::debug!("cannot notify systemd: {e}");
        }
    }
}

/// Notifications kept in memory, for tests.
#[derive(Default, Clone)]
pub struct Recorded(pub Arc<Mutex<Vec<String>>>);

impl Notifier for Recorded {
    fn notify(&self, states: &[NotifyState]) {
        if let Ok(mut v) = self.0.lock() {
            v.extend(states.iter().map(ToString::to_string));
        }
    }
}

/// The loop's settings.
#[derive(Clone, Debug)]
pub struct Config {
    pub interval: Duration,
    /// Quiet time after a file event before the file is re-read; new
    /// content must also be this old (see `daemon::file`).
    pub debounce: Duration,
    /// How long new content must stay unchanged when the file watch cannot
    /// say whether a writer is busy (see `daemon::file`).
    pub settle_unwatched: Duration,
    /// Longest wait for quiet.
    pub debounce_max: Duration,
    /// Quiet time after another program's netfilter change before the
    /// repair: a burst (Docker putting back its rules one by one) is
    /// answered once, after it.
    pub event_quiet: Duration,
    /// Longest wait for netfilter to be quiet.
    pub event_max: Duration,
    pub backoff: Backoff,
    pub fights: FightPolicy,
    /// systemd's watchdog period (`WATCHDOG_USEC`), if enabled.
    pub watchdog: Option<Duration>,
}

impl Config {
    pub fn new(interval: Duration) -> Config {
        Config {
            interval,
            debounce: Duration::from_millis(200),
            debounce_max: Duration::from_secs(2),
            settle_unwatched: Duration::from_secs(2),
            event_quiet: Duration::from_millis(30),
            event_max: Duration::from_millis(500),
            backoff: Backoff::new(
                interval.min(Duration::from_secs(1)),
                Duration::from_secs(60),
            ),
            fights: FightPolicy::for_interval(interval),
            watchdog: None,
        }
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn main(wishes: &Path, backend: Variant, args: &Args) -> ExitCode {
    log::init();
    match start(wishes, backend, args) {
        Ok(code) => code,
        Err(message) => {
            tracing::error!("cannot start: {message}");
            ExitCode::from(1)
        }
    }
}

fn start(path: &Path, variant: Variant, args: &Args) -> Result<ExitCode, String> {
    one_heap();
    // First of all, so that SIGTERM is ours to handle from here on.
    let signals = forward_signals()?;
    let daemon_lock = lock_the_namespace(path)?;
    // After the lock, so that a second daemon is refused for being a second
    // daemon, not for a busy port.
    let served = serve_metrics(args);
    let loaded = match core::load(path) {
        Ok(l) => l,
        Err(e) => {
            core::log_invalid(
                &e,
                path,
                "cannot start: the wishes file is invalid, and there are no earlier wishes to \
                 fall back to",
            );
            return Ok(ExitCode::from(1));
        }
    };
    let (system, warnings) = System::default()
        .with_variant(variant)
        .map_err(|e| e.to_string())?;
    for w in warnings {
        tracing::warn!("{w}");
    }
    let mut config = Config::new(args.interval);
    config.watchdog = sd_notify::watchdog_enabled();
    log_start(path, args, &system, &config);
    let (events, lock) = follow_netfilter(&system, &loaded.wishes, args.interval);
    // Polls of an unchanged legacy table skip the read (its fingerprint),
    // and while the xtables lock stays quiet, the fingerprint too.
    let system = system.remember_legacy_reads(lock).remember_nft_reads();
    let mut core = daemon_core(system, path, loaded, args);
    if let Some((metrics, _)) = &served {
        core = core.with_metrics(metrics.clone());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let (hint_tx, hints) = mpsc::unbounded_channel();
    let watch = Watch::new(path, hint_tx);
    let code = runtime.block_on(run(core, config, signals, hints, watch, events, Systemd));
    // A run still in flight after the stop grace is abandoned, not waited
    // for: the rules stay as they are, and the next start finishes the job.
    runtime.shutdown_background();
    // Stops the metrics server and removes its Unix socket, while the lock
    // still keeps another daemon from binding the same address.
    drop(served);
    drop(daemon_lock);
    Ok(code)
}

/// Takes the daemon's lock: one daemon per network namespace.
fn lock_the_namespace(path: &Path) -> Result<crate::kernel::lock::Lock, String> {
    crate::kernel::lock::try_lock(crate::kernel::lock::DAEMON).map_err(|e| match e {
        crate::kernel::lock::LockError::Busy { holder, .. } => format!(
            "a pyfw daemon is already running in this network namespace{}. One daemon per \
             namespace: stop it first, or make it re-read {} with SIGHUP \
             (`systemctl reload pyfw`)",
            holder.map(|h| format!(" ({h})")).unwrap_or_default(),
            path.display()
        ),
        other => other.to_string(),
    })
}

/// Says what the daemon enforces, how often it polls, with which tools.
fn log_start(path: &Path, args: &Args, system: &System, config: &Config) {
    let binaries: Vec<String> = [
        Program::Iptables(Family::V4),
        Program::Iptables(Family::V6),
        Program::Ipset,
    ]
    .into_iter()
    .map(|p| system.binary(p))
    .collect();
    tracing::info!(
        "pyfw daemon starting: wishes {}, poll every {}, tools {}{}",
        path.display(),
        humantime::format_duration(args.interval),
        binaries.join(", "),
        config
            .watchdog
            .map(|w| format!(", watchdog {}", humantime::format_duration(w)))
            .unwrap_or_default()
    );
}

/// The daemon's core: the real reconciler, taking the writer's turn.
fn daemon_core(
    system: System,
    path: &Path,
    loaded: core::Loaded,
    args: &Args,
) -> Core<Reconciler<System>> {
    // Big sets are checked by their summary each poll, and read in full on
    // a longer period (see `reconcile::set_checks`).
    let checks = crate::reconcile::set_checks::SetChecks::for_interval(args.interval);
    Core::new(
        Reconciler::new(system).checking_sets(checks),
        path.to_path_buf(),
        loaded,
        Some(crate::kernel::lock::WRITER.to_string()),
    )
}

/// The metrics of `--metrics ADDR`, served in the background (see
/// [`Endpoint`]): enforcement never depends on them. An address that cannot
/// be read (mistyped, or remote without `--metrics-allow-remote`) is
/// reported and not served, since only a restart can change it; the
/// daemon still counts, so that its status says what is wrong. (Empty,
/// `PYFW_METRICS=`, is off, like the variable unset.)
fn serve_metrics(args: &Args) -> Option<(Arc<Metrics>, Option<Endpoint>)> {
    let text = args.metrics.as_deref().filter(|t| !t.trim().is_empty())?;
    let metrics = Arc::new(Metrics::new());
    match Listen::parse(text, args.metrics_allow_remote) {
        Ok(listen) => {
            let endpoint = Endpoint::start(listen, metrics.clone());
            Some((metrics, Some(endpoint)))
        }
        Err(e) => {
            let why = format!("cannot serve metrics: --metrics {e}");
            tracing::error!(
                "{why}. The wishes are enforced all the same, without metrics: fix --metrics \
                 (PYFW_METRICS in /etc/default/pyfw) and restart pyfw"
            );
            metrics.set_unserved(Some(format!("{why}; fix it and restart")));
            Some((metrics, None))
        }
    }
}

/// One malloc arena for the whole daemon, before any thread starts. Each
/// run happens on a pool thread and each tool's output is read on a thread
/// of its own; with glibc's default of an arena per thread, the memory a
/// run frees (a 100,000-member set read and planned) stays held in several
/// arenas: 170 MB resident instead of 30 MB, measured. pyfw's threads
/// barely contend, so one arena costs nothing.
///
/// Blocks of 1 MiB or more (a table's save, a legacy table's copy for its
/// fingerprint) are mapped of their own and given back as soon as they are
/// freed: glibc's default threshold rises to the largest block freed, after
/// which such blocks come from the heap and stay there until the run ends,
/// so that two of them in one run (a fingerprint, then a save) held both.
fn one_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt(3) only sets allocator parameters.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// Returns the memory a run freed to the system, so that the daemon's
/// resident size between runs is what it holds, not what a run needed.
fn give_back_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim(3) only releases free heap memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Subscribes to netfilter's change notifications on nft; on legacy,
/// follows the xtables lock instead (the watch is also the legacy reads'
/// reason to skip a fingerprint). `None`, said once in the log, where
/// neither works.
fn follow_netfilter(
    system: &System,
    wishes: &crate::wishes::Wishes,
    interval: Duration,
) -> (Option<Events>, Option<crate::kernel::xtlock::LockWatch>) {
    if !system.is_nft() {
        return follow_xtables_lock(wishes, interval);
    }
    let every = humantime::format_duration(interval);
    match Events::start(events::watched(wishes), events::watched_tables(wishes)) {
        Ok(events) => {
            tracing::info!(
                "following netfilter changes: drift in a wished chain is repaired at once (and \
                 the poll every {every} stays on)"
            );
            (Some(events), None)
        }
        Err(e) => {
            tracing::warn!(
                "cannot follow netfilter changes ({e}); drift is found by the poll every {every}"
            );
            (None, None)
        }
    }
}

/// On legacy iptables, which announces no changes: the xtables lock's
/// releases (see [`LockReleases`]), and nf_tables' changes to the owned
/// nftables tables.
fn follow_xtables_lock(
    wishes: &crate::wishes::Wishes,
    interval: Duration,
) -> (Option<Events>, Option<crate::kernel::xtlock::LockWatch>) {
    let every = humantime::format_duration(interval);
    let path = crate::kernel::xtlock::path();
    let (tx, rx) = mpsc::unbounded_channel();
    let tables_tx = tx.clone();
    let watched = Arc::new(std::sync::Mutex::new(events::watched(wishes)));
    let mut releases = LockReleases {
        tables: watched.clone(),
        last: std::collections::HashMap::new(),
        tx,
    };
    match crate::kernel::xtlock::LockWatch::start(&path, move |r| releases.check(r)) {
        Ok(lock) => {
            tracing::info!(
                "iptables-legacy announces no changes; following the xtables lock {} that \
                 iptables commands take: a wished legacy table is checked when it is \
                 released, and by the poll every {every}",
                path.display()
            );
            let mut events = Events::from_channel_watching(rx, watched);
            follow_owned_tables(&mut events, tables_tx, wishes, interval);
            (Some(events), Some(lock))
        }
        Err(e) => {
            tracing::warn!(
                "iptables-legacy announces no changes, and the xtables lock {} cannot be \
                 followed ({e}): drift is found by the poll every {every}",
                path.display()
            );
            (None, None)
        }
    }
}

/// A run and the xtables-lock thread's fingerprint take turns. The
/// fingerprint copies a whole legacy table out of the kernel (24 MB with a
/// 50,000-rule chain); a run holds the wishes it reads, what it reads and
/// its plan (new wishes of 100,000 members, their text and the old ones'
/// at once). Side by side, the daemon's peak memory was their sum (42 MB
/// on the benchmark's host, BENCHMARKS.md "rss"); in turn, it is the
/// larger. A check that finds a run under way is asked again shortly
/// (`xtlock::Answer::Busy`), the lock's closes meanwhile still counted, and
/// a run that read the table spares it the copy
/// (`Release::fingerprinted_since`).
static RUN_OR_COPY: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Holds [`RUN_OR_COPY`] until dropped (a poisoned lock is as good: it
/// guards no data).
fn run_or_copy() -> std::sync::MutexGuard<'static, ()> {
    RUN_OR_COPY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// [`RUN_OR_COPY`] if no run holds it.
fn copy_if_no_run() -> Option<std::sync::MutexGuard<'static, ()>> {
    match RUN_OR_COPY.try_lock() {
        Ok(guard) => Some(guard),
        Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
}

/// Every iptables run on the host releases the xtables lock, reads
/// included: a release wakes a reconcile only when a wished table's
/// fingerprint moved since the last check. (A fingerprint that cannot be
/// taken stays `None`, so it never wakes one in a loop.)
struct LockReleases {
    /// The wished chains, as the events follow them.
    tables: Arc<Mutex<events::Watched>>,
    /// Each wished legacy table's fingerprint at the last release.
    last: std::collections::HashMap<(Family, String), Option<u64>>,
    tx: mpsc::UnboundedSender<events::Change>,
}

impl LockReleases {
    /// One release: sends the wished tables that changed, if any; stops
    /// once nothing listens; busy while a run is under way and a table
    /// must be copied (see [`RUN_OR_COPY`]).
    fn check(&mut self, release: &crate::kernel::xtlock::Release) -> Answer {
        let Ok(now) = self.tables.lock().map(|w| {
            w.iter()
                .map(|(family, table, _)| (*family, table.clone()))
                .collect::<std::collections::BTreeSet<_>>()
        }) else {
            return Answer::Stop;
        };
        // A reconcile's read since these releases (the one after pyfw's
        // own apply, say) already copied the table.
        let taken: Vec<_> = (now.into_iter())
            .map(|(family, table)| {
                let fp = release.fingerprinted_since(family, &table);
                (family, table, fp)
            })
            .collect();
        let _turn = match taken.iter().any(|(_, _, fp)| fp.is_none()) {
            true => match copy_if_no_run() {
                Some(turn) => Some(turn),
                None => return Answer::Busy,
            },
            false => None,
        };
        let mut changed = Vec::new();
        for (family, table, taken) in taken {
            let fp = match taken {
                Some(fp) => {
                    tracing::debug!(
                        "xtables lock released; {family:?} {table} was fingerprinted by a read \
                         since"
                    );
                    Some(fp)
                }
                None => crate::kernel::fingerprint::legacy_table(family, &table)
                    .ok()
                    .flatten(),
            };
            if self.last.insert((family, table.clone()), fp) != Some(fp) {
                changed.push(match family {
                    Family::V4 => table,
                    Family::V6 => format!("ip6tables:{table}"),
                });
            }
        }
        if changed.is_empty() {
            tracing::debug!("xtables lock released; the wished legacy tables are unchanged");
            return Answer::Checked;
        }
        match self
            .tx
            .send(events::Change::XtablesLock { tables: changed })
        {
            Ok(()) => Answer::Checked,
            Err(_) => Answer::Stop,
        }
    }
}

/// On legacy iptables: nf_tables still announces its changes to the owned
/// nftables tables, which the events follow as on nft.
fn follow_owned_tables(
    events: &mut Events,
    tx: mpsc::UnboundedSender<events::Change>,
    wishes: &crate::wishes::Wishes,
    interval: Duration,
) {
    if let Err(e) = events.follow_tables(tx, events::watched_tables(wishes)) {
        tracing::warn!(
            "cannot follow nf_tables changes to the owned nftables tables ({e}); their drift \
             is found by the poll every {}",
            humantime::format_duration(interval)
        );
    }
}

async fn next_change(events: &mut Option<Events>) -> events::Change {
    match events {
        Some(e) => e.recv().await,
        None => std::future::pending().await,
    }
}

/// Forwards SIGHUP, SIGTERM and SIGINT from a signal-hook thread.
fn forward_signals() -> Result<UnboundedReceiver<Signal>, String> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGHUP, SIGTERM, SIGINT])
        .map_err(|e| format!("cannot handle signals: {e}"))?;
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                let s = match sig {
                    SIGHUP => Signal::Hup,
                    SIGINT => Signal::Int,
                    _ => Signal::Term,
                };
                if tx.send(s).is_err() {
                    break;
                }
            }
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    Ok(rx)
}

/// Takes in a file event: true when it calls for a (debounced) re-read.
/// Without a watch (the loop's tests send hints of their own), every hint
/// does.
fn noted(watch: &mut Option<Watch>, hint: &Hint) -> bool {
    match watch {
        Some(w) => w.note(hint),
        None => true,
    }
}

/// What a run may assume about writes to the wishes file.
fn file_view(watch: &Option<Watch>, config: &Config) -> FileView {
    match watch {
        Some(w) => w.view(config.debounce, config.settle_unwatched),
        None => FileView::Unwatched {
            settle: config.settle_unwatched,
        },
    }
}

/// A run in flight.
struct Running<R> {
    handle: JoinHandle<(Core<R>, Outcome)>,
    since: Instant,
    job: Job,
}

async fn join<R: Reconcile>(
    running: &mut Option<Running<R>>,
) -> Result<(Core<R>, Outcome), tokio::task::JoinError> {
    match running {
        Some(r) => (&mut r.handle).await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The event loop. Returns the process's exit status.
pub async fn run<R: Reconcile, N: Notifier>(
    core: Core<R>,
    config: Config,
    signals: UnboundedReceiver<Signal>,
    hints: UnboundedReceiver<Hint>,
    watch: Option<Watch>,
    events: Option<Events>,
    notifier: N,
) -> ExitCode {
    let interrupt = core.reconciler().interrupt();
    let mut daemon = EventLoop::new(core, config, signals, hints, watch, events, notifier);
    let stop = loop {
        match daemon.tick().await {
            ControlFlow::Continue(()) => {}
            ControlFlow::Break(End::Stop(signal)) => break signal,
            ControlFlow::Break(End::Exit(code)) => return code,
        }
    };
    tracing::info!(
        "stopping on {}; the netfilter rules stay in place",
        stop.name()
    );
    daemon.notifier.notify(&[NotifyState::Stopping]);
    if let Some(r) = daemon.running {
        finish_in_flight(r, &interrupt, stop).await;
    }
    ExitCode::SUCCESS
}

/// Why the event loop ends: a signal to stop on (a run in flight is then
/// finished), or an exit status right away.
enum End {
    Stop(Signal),
    Exit(ExitCode),
}

/// The event loop's state: its inputs, the schedule of runs, the core
/// (idle, or in a run in flight), and what systemd was told.
struct EventLoop<R, N> {
    config: Config,
    notifier: N,
    /// The wishes file, for the log.
    path: String,
    signals: UnboundedReceiver<Signal>,
    hints: UnboundedReceiver<Hint>,
    watch: Option<Watch>,
    events: Option<Events>,
    schedule: Schedule,
    /// File events, waiting for quiet.
    debounce: Debounce,
    /// Other programs' netfilter changes, waiting for quiet.
    changes: Debounce,
    fights: Fights,
    idle: Option<Core<R>>,
    running: Option<Running<R>>,
    ready: bool,
    /// RELOADING=1 was sent; READY=1 is owed after the SIGHUP run.
    reloading: bool,
    ping_every: Option<Duration>,
    next_ping: Option<Instant>,
    stuck_warned: bool,
    /// The STATUS= last sent, to send it again only when it changes.
    last_status: String,
    /// When to look again at new content of the file that had not settled.
    recheck_at: Option<Instant>,
}

impl<R: Reconcile, N: Notifier> EventLoop<R, N> {
    fn new(
        core: Core<R>,
        config: Config,
        signals: UnboundedReceiver<Signal>,
        hints: UnboundedReceiver<Hint>,
        watch: Option<Watch>,
        events: Option<Events>,
        notifier: N,
    ) -> EventLoop<R, N> {
        let ping_every = config.watchdog.map(|w| w / 2);
        EventLoop {
            path: core.path().display().to_string(),
            schedule: Schedule::new(Instant::now(), config.interval, config.backoff.clone()),
            debounce: Debounce::new(config.debounce, config.debounce_max),
            changes: Debounce::new(config.event_quiet, config.event_max),
            fights: Fights::new(config.fights),
            idle: Some(core),
            running: None,
            ready: false,
            reloading: false,
            ping_every,
            next_ping: ping_every.map(|p| Instant::now() + p),
            stuck_warned: false,
            last_status: String::new(),
            recheck_at: None,
            config,
            notifier,
            signals,
            hints,
            watch,
            events,
        }
    }

    /// One turn: what has arrived already, a run started if one is due,
    /// then the first thing to happen, each kind of it to its own method.
    async fn tick(&mut self) -> ControlFlow<End> {
        let now = Instant::now();
        self.tick_arrived(now)?;
        self.start_due(now);
        let wake = self.schedule.wake_at(now);
        tokio::select! {
            signal = self.signals.recv() => self.tick_signal(signal),
            joined = join(&mut self.running) => self.tick_joined(joined),
            Some(hint) = self.hints.recv() => self.tick_hint(&hint),
            () = sleep_until(self.recheck_at) => self.tick_recheck(),
            change = next_change(&mut self.events) => self.tick_netfilter(&change),
            () = sleep_until(self.changes.deadline()) => self.tick_netfilter_quiet(),
            () = sleep_until(self.debounce.deadline()) => self.tick_file_quiet(),
            () = sleep_until(wake) => ControlFlow::Continue(()),
            () = sleep_until(self.next_ping) => self.tick_watchdog(),
        }
    }

    /// Whatever has arrived already is answered together.
    fn tick_arrived(&mut self, now: Instant) -> ControlFlow<End> {
        while let Ok(signal) = self.signals.try_recv() {
            match signal {
                Signal::Hup => self.on_sighup(),
                other => return ControlFlow::Break(End::Stop(other)),
            }
        }
        while let Ok(hint) = self.hints.try_recv() {
            if noted(&mut self.watch, &hint) {
                self.debounce.hint(now);
            }
        }
        ControlFlow::Continue(())
    }

    /// Starts a run on a pool thread when one is due and the core is idle.
    fn start_due(&mut self, now: Instant) {
        if self.running.is_none()
            && self.idle.is_some()
            && let Some(triggers) = self.schedule.start(now)
            && let Some(mut core) = self.idle.take()
        {
            let job = Job {
                triggers,
                held: self.fights.held(now),
                file: file_view(&self.watch, &self.config),
            };
            tracing::debug!("run for {triggers}");
            let for_thread = job.clone();
            self.running = Some(Running {
                handle: tokio::task::spawn_blocking(move || {
                    let _turn = run_or_copy();
                    let outcome = core.run(&for_thread);
                    (core, outcome)
                }),
                since: now,
                job,
            });
        }
    }

    fn tick_signal(&mut self, signal: Option<Signal>) -> ControlFlow<End> {
        match signal {
            Some(Signal::Hup) => {
                self.on_sighup();
                ControlFlow::Continue(())
            }
            Some(s) => ControlFlow::Break(End::Stop(s)),
            // The signal thread is gone: without it the daemon could not be
            // stopped, so stop now.
            None => ControlFlow::Break(End::Stop(Signal::Term)),
        }
    }

    /// A run ended: its result taken in, the next runs scheduled, systemd
    /// told, the core idle again.
    fn tick_joined(
        &mut self,
        joined: Result<(Core<R>, Outcome), tokio::task::JoinError>,
    ) -> ControlFlow<End> {
        let Some(done) = self.running.take() else {
            return ControlFlow::Continue(());
        };
        let (core, outcome) = match joined {
            Ok(pair) => pair,
            Err(e) => {
                tracing::error!("the reconcile thread died: {e}; exiting");
                return ControlFlow::Break(End::Exit(ExitCode::from(1)));
            }
        };
        let now = Instant::now();
        let ok = self.take_result(now, &outcome)?;
        for news in self.fights.sweep(now) {
            log_fight(&news);
        }
        self.schedule_after(now, &outcome, &core);
        self.tell_status(ok, &core, &outcome, &done);
        if let Some(e) = &self.events {
            e.watch(events::watched(core.wishes()));
            e.watch_tables(events::watched_tables(core.wishes()));
        }
        give_back_memory();
        self.idle = Some(core);
        if let Some(w) = self.watch.as_mut() {
            w.update();
        }
        ControlFlow::Continue(())
    }

    /// A run's result, for the schedule, the fights and the log: whether
    /// it went well (a failure is told here, with its retry).
    fn take_result(&mut self, now: Instant, outcome: &Outcome) -> ControlFlow<End, bool> {
        match &outcome.result {
            RunResult::Fatal(_) => {
                (self.notifier).notify(&[NotifyState::Status("wishes rejected; exiting")]);
                ControlFlow::Break(End::Exit(ExitCode::from(1)))
            }
            RunResult::Failed(message) => {
                let delay = self.schedule.finish(now, Finished::Failed);
                let delay = humantime::format_duration(delay.unwrap_or_default());
                tracing::error!(
                    trigger = outcome.trigger,
                    "reconcile failed: {message}; retrying in {delay} with a fresh read",
                );
                let status = format!("reconcile failed, retrying in {delay}: {message}");
                self.notifier.notify(&[NotifyState::Status(&status)]);
                self.last_status = status;
                ControlFlow::Continue(false)
            }
            RunResult::Skipped => {
                self.schedule.finish(now, Finished::Skipped);
                ControlFlow::Continue(true)
            }
            RunResult::InSync | RunResult::Held => {
                self.schedule.finish(now, Finished::Ok);
                tracing::debug!(trigger = outcome.trigger, "in sync with {}", self.path);
                ControlFlow::Continue(true)
            }
            RunResult::Repaired { fixes, .. } => {
                self.schedule.finish(now, Finished::Ok);
                // Only drift counts towards a fight: what a start, a reload
                // or an edit corrects is pyfw's own change.
                if outcome.trigger == "drift" {
                    for news in self.fights.corrected(now, fixes) {
                        log_fight(&news);
                    }
                }
                ControlFlow::Continue(true)
            }
        }
    }

    /// New wishes that failed for a reason that may pass are tried again
    /// soon; new content that had not settled is looked at again.
    fn schedule_after(&mut self, now: Instant, outcome: &Outcome, core: &Core<R>) {
        if outcome.retry_new {
            let delay = self.schedule.retry_new_wishes(now);
            tracing::info!(
                "trying the new wishes again in {}",
                humantime::format_duration(delay)
            );
        } else if !core.waiting() {
            self.schedule.no_new_wishes_waiting();
        }
        if let Some(after) = outcome.recheck {
            let at = now + after;
            self.recheck_at = Some(self.recheck_at.map_or(at, |r| r.min(at)));
        }
    }

    /// READY=1 after the first good run and after a SIGHUP's run, and
    /// STATUS= when it changes.
    fn tell_status(&mut self, ok: bool, core: &Core<R>, outcome: &Outcome, done: &Running<R>) {
        let status = if ok {
            core.status()
        } else {
            self.last_status.clone()
        };
        if !self.ready && ok && outcome.result != RunResult::Skipped {
            self.ready = true;
            tracing::info!("ready: netfilter matches {}", self.path);
            (self.notifier).notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
        } else if self.reloading && done.job.triggers.contains(Trigger::Sighup) {
            self.reloading = false;
            (self.notifier).notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
        } else if status != self.last_status {
            self.notifier.notify(&[NotifyState::Status(&status)]);
        }
        self.last_status = status;
    }

    fn tick_hint(&mut self, hint: &Hint) -> ControlFlow<End> {
        if noted(&mut self.watch, hint) {
            self.debounce.hint(Instant::now());
        }
        ControlFlow::Continue(())
    }

    fn tick_recheck(&mut self) -> ControlFlow<End> {
        self.recheck_at = None;
        self.schedule.add(Trigger::FileEvent);
        ControlFlow::Continue(())
    }

    fn tick_netfilter(&mut self, change: &events::Change) -> ControlFlow<End> {
        tracing::debug!(trigger = "netfilter", "netfilter change: {change}");
        self.changes.hint(Instant::now());
        ControlFlow::Continue(())
    }

    fn tick_netfilter_quiet(&mut self) -> ControlFlow<End> {
        if self.changes.fire(Instant::now()) {
            self.schedule.add(Trigger::Netfilter);
        }
        ControlFlow::Continue(())
    }

    fn tick_file_quiet(&mut self) -> ControlFlow<End> {
        if self.debounce.fire(Instant::now()) {
            self.schedule.add(Trigger::FileEvent);
        }
        ControlFlow::Continue(())
    }

    /// Pings systemd's watchdog, unless a run has been stuck for a whole
    /// watchdog period: then the pings stop, so that systemd restarts the
    /// daemon.
    fn tick_watchdog(&mut self) -> ControlFlow<End> {
        let now = Instant::now();
        self.next_ping = self.ping_every.map(|p| now + p);
        let stuck = match (&self.running, self.config.watchdog) {
            (Some(r), Some(w)) => now.duration_since(r.since) >= w,
            _ => false,
        };
        if !stuck {
            self.stuck_warned = false;
            self.notifier.notify(&[NotifyState::Watchdog]);
        } else if !self.stuck_warned {
            self.stuck_warned = true;
            tracing::warn!(
                "a reconcile has been running for {}; not pinging the watchdog",
                humantime::format_duration(
                    now.duration_since(self.running.as_ref().map_or(now, |r| r.since))
                )
            );
        }
        ControlFlow::Continue(())
    }

    /// SIGHUP: a run that re-reads the wishes; systemd hears RELOADING=1
    /// (with the MONOTONIC_USEC that systemd 253+ requires) until the run is
    /// done.
    fn on_sighup(&mut self) {
        tracing::info!(trigger = "sighup", "SIGHUP: re-reading {}", self.path);
        self.schedule.add(Trigger::Sighup);
        if self.ready && !self.reloading {
            self.reloading = true;
            let mut states = vec![NotifyState::Reloading];
            if let Ok(m) = NotifyState::monotonic_usec_now() {
                states.push(m);
            }
            self.notifier.notify(&states);
        }
    }
}

/// A stop with a run in flight: the run is asked to stop before its next
/// change (an apply puts back what it changed), and the stop waits for it,
/// so that the daemon never exits half-way through a change. Each kernel
/// tool has its own timeout, so this wait ends.
async fn finish_in_flight<R: Reconcile>(r: Running<R>, interrupt: &Interrupt, stop: Signal) {
    interrupt.raise(stop.number());
    tracing::info!(
        "waiting for the reconcile in flight: it stops before its next change and puts back \
         what it changed, or commits what it has begun"
    );
    match r.handle.await {
        Ok((_, outcome)) => match outcome.result {
            RunResult::Repaired { ran, .. } => {
                tracing::info!("the reconcile in flight committed ({ran} command(s))")
            }
            RunResult::Failed(message) => {
                tracing::info!("the reconcile in flight stopped: {message}")
            }
            _ => tracing::info!("the reconcile in flight changed nothing"),
        },
        Err(e) => tracing::error!("the reconcile thread died while stopping: {e}"),
    }
}

fn log_fight(news: &FightNews) {
    match news {
        FightNews::Started {
            key,
            reason,
            count,
            window,
            hold,
        } => tracing::warn!(
            trigger = "drift",
            fight = %key,
            "fight: another program keeps undoing pyfw's correction: {reason} (corrected {count} \
             times within {}); backing off: this correction waits {} before it is made again",
            humantime::format_duration(*window),
            humantime::format_duration(*hold)
        ),
        FightNews::Escalated { key, reason, hold } => tracing::warn!(
            trigger = "drift",
            fight = %key,
            "fight goes on: {reason}; next correction waits {}",
            humantime::format_duration(*hold)
        ),
        FightNews::Ended {
            key,
            reason,
            lasted,
        } => tracing::info!(
            fight = %key,
            "fight over after {}: {reason} has held",
            humantime::format_duration(*lasted)
        ),
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc::UnboundedSender;
    use tokio::time::sleep;

    use super::core::fake::{Fake, wishes_text};
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const S: Duration = Duration::from_secs(1);

    /// The event loop on a fake reconciler, on tokio's paused clock.
    struct Harness {
        _dir: tempfile::TempDir,
        fake: Fake,
        notes: Recorded,
        signals: UnboundedSender<Signal>,
        hints: UnboundedSender<Hint>,
        changes: UnboundedSender<events::Change>,
        done: tokio::task::JoinHandle<ExitCode>,
    }

    impl Harness {
        fn start(config: Config, fake: Fake) -> Harness {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("wishes.yaml");
            std::fs::write(&path, wishes_text(&["allow_ssh"])).unwrap();
            let core = Core::new(fake.clone(), path.clone(), core::load(&path).unwrap(), None);
            let (signals, signal_rx) = mpsc::unbounded_channel();
            let (hints, hint_rx) = mpsc::unbounded_channel();
            let notes = Recorded::default();
            let (changes, change_rx) = mpsc::unbounded_channel();
            let events = Some(Events::from_channel(change_rx));
            let done = tokio::spawn(run(
                core,
                config,
                signal_rx,
                hint_rx,
                None,
                events,
                notes.clone(),
            ));
            Harness {
                _dir: dir,
                fake,
                notes,
                signals,
                hints,
                changes,
                done,
            }
        }

        fn count(&self, note: &str) -> usize {
            self.notes
                .0
                .lock()
                .unwrap()
                .iter()
                .filter(|n| *n == note)
                .count()
        }

        fn plans(&self) -> usize {
            self.fake.world().plans
        }

        fn applies(&self) -> usize {
            self.fake.world().applies
        }

        async fn stop(self) -> ExitCode {
            self.signals.send(Signal::Term).unwrap();
            let code = (&mut { self.done }).await.unwrap();
            let stopping = self
                .notes
                .0
                .lock()
                .unwrap()
                .iter()
                .filter(|n| *n == "STOPPING=1")
                .count();
            assert_eq!(stopping, 1);
            code
        }
    }

    fn config(interval: Duration) -> Config {
        Config::new(interval)
    }

    #[tokio::test(start_paused = true)]
    async fn ready_after_the_first_run_then_polls_and_watchdog_pings() {
        let mut cfg = config(5 * S);
        cfg.watchdog = Some(2 * S);
        let h = Harness::start(cfg, Fake::default());
        sleep(100 * MS).await;
        assert_eq!(h.count("READY=1"), 1);
        assert_eq!(h.applies(), 1);
        sleep(10 * S).await;
        assert_eq!(h.plans(), 3, "startup, then a poll every 5 s");
        // A ping every second (half the watchdog period).
        assert!(
            (9..=11).contains(&h.count("WATCHDOG=1")),
            "{}",
            h.count("WATCHDOG=1")
        );
        assert_eq!(h.stop().await, ExitCode::SUCCESS);
    }

    #[tokio::test(start_paused = true)]
    async fn triggers_arriving_during_a_run_are_answered_by_one_run() {
        let fake = Fake::default();
        let (open, gate) = std::sync::mpsc::channel::<()>();
        fake.world().gate = Some(gate);
        let h = Harness::start(config(60 * S), fake);
        // The start-up run is stuck reading; meanwhile two SIGHUPs arrive.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        h.signals.send(Signal::Hup).unwrap();
        h.signals.send(Signal::Hup).unwrap();
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        drop(open);
        sleep(S).await;
        assert_eq!(h.plans(), 2, "the start-up, then one run for both SIGHUPs");
        assert_eq!(h.count("READY=1"), 1, "RELOADING is only sent once ready");
        // Once ready, a SIGHUP is RELOADING=1 ... READY=1.
        h.signals.send(Signal::Hup).unwrap();
        h.signals.send(Signal::Hup).unwrap();
        sleep(S).await;
        assert_eq!(h.plans(), 3);
        assert_eq!(h.count("RELOADING=1"), 1);
        assert_eq!(h.count("READY=1"), 2);
        // A burst of file events is one (skipped: unchanged) re-read.
        for _ in 0..5 {
            h.hints.send(Hint::Changed(Vec::new())).unwrap();
            sleep(50 * MS).await;
        }
        sleep(S).await;
        assert_eq!(h.plans(), 3, "the file did not change: nothing read");
        assert_eq!(h.stop().await, ExitCode::SUCCESS);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_runs_are_retried_with_exponential_backoff() {
        let fake = Fake::default();
        fake.world().fail_reads = 3;
        let h = Harness::start(config(60 * S), fake);
        let start = Instant::now();
        let mut seen = Vec::new();
        while h.applies() == 0 {
            let plans = h.plans();
            sleep(10 * MS).await;
            if h.plans() != plans {
                seen.push((Instant::now() - start).as_millis() / 100);
            }
            assert!(Instant::now() - start < 60 * S, "never recovered");
        }
        // Tries at 0, 1 s, 3 s and 7 s (tenths of seconds, rounded up by
        // the 10 ms steps).
        assert_eq!(seen, [0, 10, 30, 70]);
        assert_eq!(h.count("READY=1"), 1, "ready after the first success");
        assert_eq!(h.stop().await, ExitCode::SUCCESS);
    }

    #[tokio::test(start_paused = true)]
    async fn a_fight_is_backed_off_and_converges_when_it_stops() {
        let fake = Fake::default();
        let h = Harness::start(config(S), fake);
        sleep(100 * MS).await;
        h.fake.world().fighting = true;
        sleep(30 * S).await;
        // Without backing off: a correction every poll, 30 of them.
        let during = h.applies() - 1;
        assert!(
            (4..=8).contains(&during),
            "{during} corrections in 30 s of fighting"
        );
        h.fake.world().fighting = false;
        // Converges within the longest hold (12 polls) and a poll.
        sleep(14 * S).await;
        assert_eq!(h.fake.world().kernel, ["allow_ssh"]);
        let applies = h.applies();
        sleep(10 * S).await;
        assert_eq!(h.applies(), applies, "in sync: nothing more to do");
        assert_eq!(h.stop().await, ExitCode::SUCCESS);
    }

    fn foreign_change() -> events::Change {
        events::Change::Touched {
            what: vec!["filter/INPUT".into()],
            by: "iptables (pid 1)".into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_netfilter_changes_is_repaired_once_after_it() {
        let h = Harness::start(config(3600 * S), Fake::default());
        sleep(100 * MS).await;
        assert_eq!((h.plans(), h.applies()), (1, 1));
        // Another program deletes the rule, then keeps editing the chain
        // every 10 ms for 100 ms: one repair, 30 ms after the last change.
        h.fake.world().kernel.clear();
        let start = Instant::now();
        for _ in 0..10 {
            h.changes.send(foreign_change()).unwrap();
            sleep(10 * MS).await;
        }
        assert_eq!(h.plans(), 1, "nothing before the burst is over");
        sleep(25 * MS).await;
        assert_eq!(h.plans(), 2);
        assert_eq!(h.applies(), 2, "repaired");
        assert!(Instant::now() - start < 150 * MS);
        assert_eq!(h.fake.world().kernel, ["allow_ssh"]);
        // Changes that never stop are answered within `event_max`.
        let start = Instant::now();
        while h.plans() == 2 {
            h.changes.send(foreign_change()).unwrap();
            sleep(10 * MS).await;
        }
        assert!(
            Instant::now() - start <= 510 * MS,
            "{:?}",
            Instant::now() - start
        );
        // Quiet again: once the last changes are answered, nothing more.
        sleep(S).await;
        let plans = h.plans();
        sleep(60 * S).await;
        assert_eq!(h.plans(), plans);
        assert_eq!(h.stop().await, ExitCode::SUCCESS);
    }

    #[tokio::test(start_paused = true)]
    async fn changes_during_a_run_are_answered_by_one_more_run() {
        let fake = Fake::default();
        let (open, gate) = std::sync::mpsc::channel::<()>();
        fake.world().gate = Some(gate);
        let h = Harness::start(config(3600 * S), fake);
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        // The start-up run is stuck reading; meanwhile, changes. (Time
        // stands still while a blocking run is in flight.)
        for _ in 0..5 {
            h.changes.send(foreign_change()).unwrap();
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
        }
        drop(open);
        sleep(S).await;
        assert_eq!(h.plans(), 2, "the start-up, then one run for the changes");
        assert_eq!(h.stop().await, ExitCode::SUCCESS);
    }

    #[tokio::test(start_paused = true)]
    async fn new_wishes_that_fail_for_a_passing_reason_are_retried_while_polls_enforce() {
        let fake = Fake::default();
        let h = Harness::start(config(S), fake);
        sleep(100 * MS).await;
        h.fake.world().busy = 2;
        let path = h._dir.path().join("wishes.yaml");
        std::fs::write(&path, wishes_text(&["allow_ssh", "busy"])).unwrap();
        // Settled (the loop runs without a watch here).
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(std::time::SystemTime::now() - 3600 * S)
            .unwrap();
        h.hints.send(Hint::Changed(Vec::new())).unwrap();
        sleep(300 * MS).await;
        assert_eq!(h.fake.world().failed, ["busy"]);
        // The last good wishes are enforced meanwhile: the next run (a
        // poll, and the retry 1 s later) repairs them.
        h.fake.world().kernel.clear();
        sleep(1100 * MS).await;
        assert_eq!(h.fake.world().kernel, ["allow_ssh"]);
        assert_eq!(h.fake.world().failed, ["busy", "busy"]);
        // Tried again 2 s later: through.
        sleep(2 * S).await;
        assert_eq!(h.fake.world().kernel, ["allow_ssh", "busy"]);
        let plans = h.plans();
        sleep(10 * S).await;
        assert_eq!(h.plans(), plans + 10, "polls, and no more retries");
        assert_eq!(h.stop().await, ExitCode::SUCCESS);
    }

    #[tokio::test(start_paused = true)]
    async fn wishes_rejected_at_startup_exit_1() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wishes.yaml");
        std::fs::write(&path, wishes_text(&["bad"])).unwrap();
        let fake = Fake::default();
        let core = Core::new(fake.clone(), path.clone(), core::load(&path).unwrap(), None);
        let (_signals, signal_rx) = mpsc::unbounded_channel();
        let (_hints, hint_rx) = mpsc::unbounded_channel();
        let notes = Recorded::default();
        let code = run(
            core,
            config(S),
            signal_rx,
            hint_rx,
            None,
            None,
            notes.clone(),
        )
        .await;
        assert_eq!(code, ExitCode::from(1));
        assert!(!notes.0.lock().unwrap().iter().any(|n| n == "READY=1"));
    }

    #[test]
    fn switches_read_yes_and_no_and_empty_is_no() {
        for yes in ["yes", "true", "1", "On", "y"] {
            assert_eq!(parse_switch(yes), Ok(true), "{yes}");
        }
        for no in ["", " ", "no", "false", "0", "OFF"] {
            assert_eq!(parse_switch(no), Ok(false), "{no:?}");
        }
        assert!(parse_switch("maybe").is_err());
    }

    #[test]
    fn intervals_below_100ms_are_refused() {
        assert!(parse_interval("50ms").is_err());
        assert_eq!(parse_interval("1m"), Ok(Duration::from_secs(60)));
    }
}
