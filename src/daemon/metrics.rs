//! The daemon's metrics, in Prometheus/OpenMetrics text, and the small
//! HTTP server that serves them (`pyfw daemon --metrics ADDR`).
//!
//! [`Metrics`] holds the registry; the daemon reports to it at a few points
//! of each run (see the `observe_*` methods), and [`serve`] answers
//! `GET /metrics` on a loopback TCP address or a Unix socket. A
//! non-loopback address is refused unless the caller explicitly allows it:
//! a firewall daemon must not open a port on every interface by default.
//! The daemon serves through [`Endpoint`], which binds in the background
//! and keeps trying an address that is busy or not there yet: enforcement
//! never waits on metrics.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `pyfw_reconciles_total` | counter | `trigger`, `result` |
//! | `pyfw_corrections_total` | counter | `family`, `table`, `chain`, `wish` |
//! | `pyfw_seconds_since_last_successful_reconcile` | gauge | |
//! | `pyfw_last_successful_reconcile_timestamp_seconds` | gauge | |
//! | `pyfw_apply_duration_seconds` | histogram | |
//! | `pyfw_drift` | gauge (0/1) | `family`, `table`, `chain` |
//! | `pyfw_ipset_drift` | gauge (0/1) | `ipset` |
//! | `pyfw_nft_table_drift` | gauge (0/1) | `table` (`inet pyfw`) |
//! | `pyfw_wishes_loaded` | gauge (0/1) | |
//! | `pyfw_wishes_load_failures_total` | counter | |
//! | `pyfw_build_info` | info | `version` |

use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Metric, Registry, Unit};

use crate::plan::{Command, Plan, Program};
use crate::state::Family as IpFamily;
use crate::wishes::Wishes;

/// The content type of OpenMetrics text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How a reconcile ended, as the `result` label says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReconcileResult {
    /// Nothing to read: a file event that changed nothing.
    Skipped,
    /// netfilter already matched the wishes.
    InSync,
    /// Drift was found and repaired.
    Repaired,
    /// Drift was found but its correction held back (a fight).
    Held,
    /// The run failed (it is retried), or the wishes were rejected.
    Failed,
}

impl ReconcileResult {
    pub fn label(self) -> &'static str {
        match self {
            ReconcileResult::Skipped => "skipped",
            ReconcileResult::InSync => "in-sync",
            ReconcileResult::Repaired => "repaired",
            ReconcileResult::Held => "held",
            ReconcileResult::Failed => "failed",
        }
    }

    /// True when netfilter matched the wishes at the end of the run.
    fn succeeded(self) -> bool {
        matches!(self, ReconcileResult::InSync | ReconcileResult::Repaired)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReconcileLabels {
    trigger: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CorrectionLabels {
    family: String,
    table: String,
    chain: String,
    wish: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct ChainLabels {
    family: String,
    table: String,
    chain: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct SetLabels {
    ipset: String,
}

/// An owned nftables table, as the wishes name it: `inet pyfw`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct TableLabels {
    table: String,
}

/// A new metric (its default), registered under `name` (with `unit`, if
/// any); returns it (a handle to what the registry holds).
fn registered<M: Metric + Clone + Default>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    unit: Option<Unit>,
) -> M {
    let metric = M::default();
    match unit {
        Some(unit) => registry.register_with_unit(name, help, unit, metric.clone()),
        None => registry.register(name, help, metric.clone()),
    }
    metric
}

/// Time since the last success (+Inf before it) and its Unix time.
fn success_gauges(registry: &mut Registry) -> (Gauge<f64, AtomicU64>, Gauge<f64, AtomicU64>) {
    let seconds_since_success = Gauge::<f64, AtomicU64>::default();
    seconds_since_success.set(f64::INFINITY);
    registry.register(
        "seconds_since_last_successful_reconcile",
        "Seconds since netfilter was last seen matching the wishes (+Inf before the first time)",
        seconds_since_success.clone(),
    );
    let last_success_timestamp = registered(
        registry,
        "last_successful_reconcile_timestamp",
        "Unix time netfilter was last seen matching the wishes (0 before the first time)",
        Some(Unit::Seconds),
    );
    (seconds_since_success, last_success_timestamp)
}

/// Each chain's, set's and owned table's drift at the last read.
fn drift_gauges(
    registry: &mut Registry,
) -> (
    Family<ChainLabels, Gauge>,
    Family<SetLabels, Gauge>,
    Family<TableLabels, Gauge>,
) {
    let drift = registered(
        registry,
        "drift",
        "1 when the chain differed from the wishes at the last read, else 0",
        None,
    );
    let ipset_drift = registered(
        registry,
        "ipset_drift",
        "1 when the set differed from the wishes at the last read, else 0",
        None,
    );
    let nft_drift = registered(
        registry,
        "nft_table_drift",
        "1 when the owned nftables table differed from the wishes at the last read, else 0",
        None,
    );
    (drift, ipset_drift, nft_drift)
}

/// How long applies take: 1 ms to about 33 s.
fn apply_histogram(registry: &mut Registry) -> Histogram {
    let apply_duration = Histogram::new(exponential_buckets(0.001, 2.0, 16));
    registry.register_with_unit(
        "apply_duration",
        "Time to apply a plan (all its commands, or up to the failure and its rollback)",
        Unit::Seconds,
        apply_duration.clone(),
    );
    apply_duration
}

/// The daemon's metrics. Cheap to update from any thread.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ReconcileLabels, Counter>,
    corrections: Family<CorrectionLabels, Counter>,
    seconds_since_success: Gauge<f64, AtomicU64>,
    last_success_timestamp: Gauge<f64, AtomicU64>,
    last_success: Mutex<Option<Instant>>,
    apply_duration: Histogram,
    drift: Family<ChainLabels, Gauge>,
    ipset_drift: Family<SetLabels, Gauge>,
    nft_drift: Family<TableLabels, Gauge>,
    /// The chains, sets and tables in `drift`, `ipset_drift` and
    /// `nft_drift`, to zero them.
    known: Mutex<Known>,
    wishes_loaded: Gauge,
    wishes_load_failures: Counter,
    /// Why the metrics are not being served, when they are not.
    unserved: Mutex<Option<String>>,
}

type Known = (
    BTreeSet<ChainLabels>,
    BTreeSet<SetLabels>,
    BTreeSet<TableLabels>,
);

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("pyfw");
        let r = &mut registry;
        let reconciles = registered(
            r,
            "reconciles",
            "Reconciles run, by what triggered them and how they ended",
            None,
        );
        let corrections = registered(
            r,
            "corrections",
            "Commands run to repair drift, by chain (family ipv4/ipv6), set (family ipset) or \
             owned nftables table (family nft, table `inet pyfw`) and the wish they serve",
            None,
        );
        let (seconds_since_success, last_success_timestamp) = success_gauges(r);
        let apply_duration = apply_histogram(r);
        let (drift, ipset_drift, nft_drift) = drift_gauges(r);
        let wishes_loaded = registered(
            r,
            "wishes_loaded",
            "1 when the wishes file loaded and validated at its last read, 0 when it did not \
             (the last good wishes stay in force)",
            None,
        );
        let wishes_load_failures = registered(
            r,
            "wishes_load_failures",
            "Reads of the wishes file that failed to load or validate",
            None,
        );
        r.register(
            "build",
            "pyfw's version",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        Metrics {
            registry,
            reconciles,
            corrections,
            seconds_since_success,
            last_success_timestamp,
            last_success: Mutex::new(None),
            apply_duration,
            drift,
            ipset_drift,
            nft_drift,
            known: Mutex::new(Default::default()),
            wishes_loaded,
            wishes_load_failures,
            unserved: Mutex::new(None),
        }
    }

    /// Why the metrics cannot be scraped (a bad address, or one that
    /// cannot be bound yet), for the daemon's status; `None` once served.
    pub fn unserved(&self) -> Option<String> {
        lock(&self.unserved).clone()
    }

    /// Records why the metrics are not served, or that they are (`None`).
    pub fn set_unserved(&self, why: Option<String>) {
        *lock(&self.unserved) = why;
    }

    /// A run ended. `trigger` is the name the daemon logs (`startup`,
    /// `wishes-changed`, `sighup`, `drift`, `timer`, `event`, `retry`,
    /// `file-event`). A run that ends in sync clears every drift gauge.
    pub fn observe_reconcile(&self, trigger: &str, result: ReconcileResult) {
        self.reconciles
            .get_or_create(&ReconcileLabels {
                trigger: trigger.to_string(),
                result: result.label().to_string(),
            })
            .inc();
        if result.succeeded() {
            *lock(&self.last_success) = Some(Instant::now());
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            self.last_success_timestamp.set(now.as_secs_f64());
            let known = lock(&self.known);
            for chain in &known.0 {
                self.drift.get_or_create(chain).set(0);
            }
            for set in &known.1 {
                self.ipset_drift.get_or_create(set).set(0);
            }
            for table in &known.2 {
                self.nft_drift.get_or_create(table).set(0);
            }
        }
    }

    /// netfilter was read and planned against `wishes`: each wished chain
    /// and set, and each chain the plan touches, gets its drift gauge (1
    /// when the plan changes it). Chains no longer wished drop out.
    pub fn observe_plan(&self, wishes: &Wishes, plan: &Plan) {
        let mut chains: BTreeSet<ChainLabels> = wishes
            .chains
            .iter()
            .map(|c| ChainLabels {
                family: family_label(c.family).to_string(),
                table: c.table.clone(),
                chain: c.chain.clone(),
            })
            .collect();
        let mut sets: BTreeSet<SetLabels> = wishes
            .ipsets
            .iter()
            .map(|s| SetLabels {
                ipset: s.name.clone(),
            })
            .collect();
        let mut tables: BTreeSet<TableLabels> = wishes
            .nftables
            .iter()
            .map(|t| TableLabels {
                table: format!("{} {}", t.family, t.name),
            })
            .collect();
        let mut drifted_chains = BTreeSet::new();
        let mut drifted_sets = BTreeSet::new();
        let mut drifted_tables = BTreeSet::new();
        for c in &plan.commands {
            match target(c) {
                Target::Chain(labels) => {
                    chains.insert(labels.clone());
                    drifted_chains.insert(labels);
                }
                Target::Set(labels) => {
                    sets.insert(labels.clone());
                    drifted_sets.insert(labels);
                }
                Target::Table(labels) => {
                    tables.insert(labels.clone());
                    drifted_tables.insert(labels);
                }
            }
        }
        let mut known = lock(&self.known);
        self.drift.clear();
        for chain in &chains {
            let drifted = drifted_chains.contains(chain);
            self.drift.get_or_create(chain).set(i64::from(drifted));
        }
        self.ipset_drift.clear();
        for set in &sets {
            let drifted = drifted_sets.contains(set);
            self.ipset_drift.get_or_create(set).set(i64::from(drifted));
        }
        self.nft_drift.clear();
        for table in &tables {
            let drifted = drifted_tables.contains(table);
            self.nft_drift.get_or_create(table).set(i64::from(drifted));
        }
        *known = (chains, sets, tables);
    }

    /// One command of a plan ran successfully: one correction.
    pub fn observe_correction(&self, command: &Command) {
        let (family, table, chain) = match target(command) {
            Target::Chain(c) => (c.family, c.table, c.chain),
            Target::Set(_) => ("ipset".to_string(), String::new(), String::new()),
            Target::Table(t) => ("nft".to_string(), t.table, String::new()),
        };
        self.corrections
            .get_or_create(&CorrectionLabels {
                family,
                table,
                chain,
                wish: command.wish.clone().unwrap_or_default(),
            })
            .inc_by(command.count() as u64);
    }

    /// An apply (successful or not) took `took`.
    pub fn observe_apply(&self, took: Duration) {
        self.apply_duration.observe(took.as_secs_f64());
    }

    /// The wishes file was read: `true` when it loaded and validated.
    pub fn observe_wishes_load(&self, ok: bool) {
        self.wishes_loaded.set(i64::from(ok));
        if !ok {
            self.wishes_load_failures.inc();
        }
    }

    /// The metrics as OpenMetrics text, ending with `# EOF`.
    pub fn encode(&self) -> String {
        if let Some(at) = *lock(&self.last_success) {
            self.seconds_since_success.set(at.elapsed().as_secs_f64());
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn family_label(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "ipv4",
        IpFamily::V6 => "ipv6",
    }
}

enum Target {
    Chain(ChainLabels),
    Set(SetLabels),
    Table(TableLabels),
}

/// What a command changes, from its program and its target label
/// (`filter/INPUT`, `ip6tables:filter/INPUT`, `ipset NAME`).
fn target(c: &Command) -> Target {
    match c.program {
        Program::Iptables(family) => {
            let label = c.target.strip_prefix("ip6tables:").unwrap_or(&c.target);
            let (table, chain) = label.split_once('/').unwrap_or(("", label));
            Target::Chain(ChainLabels {
                family: family_label(family).to_string(),
                table: table.to_string(),
                chain: chain.to_string(),
            })
        }
        Program::Ipset => {
            let name = c.target.strip_prefix("ipset ").unwrap_or(&c.target);
            Target::Set(SetLabels {
                ipset: name.to_string(),
            })
        }
        Program::Nft => Target::Table(TableLabels {
            table: c
                .target
                .strip_prefix("nft ")
                .unwrap_or(&c.target)
                .to_string(),
        }),
    }
}

// ---- the HTTP server --------------------------------------------------------

/// Where to serve the metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl Listen {
    /// Reads `127.0.0.1:9983`, `[::1]:9983`, `localhost:9983`,
    /// `unix:/run/pyfw/metrics.sock` or an absolute socket path. An address
    /// that is not loopback (`0.0.0.0:9983`, a host's own address) is an
    /// error unless `allow_remote`.
    pub fn parse(text: &str, allow_remote: bool) -> Result<Listen, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            return Listen::unix(path);
        }
        if text.starts_with('/') {
            return Listen::unix(text);
        }
        let addr = match text.strip_prefix("localhost:") {
            Some(port) => port
                .parse::<u16>()
                .map(|p| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), p))
                .map_err(|_| format!("`{text}`: bad port"))?,
            None => text.parse::<SocketAddr>().map_err(|_| {
                format!(
                    "`{text}`: expected IP:PORT (127.0.0.1:9983, [::1]:9983), localhost:PORT, \
                     or unix:/PATH"
                )
            })?,
        };
        if !allow_remote && !addr.ip().to_canonical().is_loopback() {
            return Err(format!(
                "`{text}` is not a loopback address: metrics are served on 127.0.0.1, ::1 or a \
                 Unix socket unless remote access is explicitly allowed \
                 (--metrics-allow-remote)"
            ));
        }
        Ok(Listen::Tcp(addr))
    }

    fn unix(path: &str) -> Result<Listen, String> {
        if !path.starts_with('/') {
            return Err(format!("`{path}`: a Unix socket path must be absolute"));
        }
        Ok(Listen::Unix(PathBuf::from(path)))
    }
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Tcp(a) => write!(f, "http://{a}/metrics"),
            Listen::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// A running metrics server; stops when dropped.
pub struct Server {
    bound: Listen,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Where it listens, with the port chosen when port 0 was asked for.
    pub fn local_addr(&self) -> &Listen {
        &self.bound
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        match &self.bound {
            Listen::Tcp(addr) => {
                let mut to = *addr;
                if to.ip().is_unspecified() {
                    to.set_ip(match to.ip() {
                        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
                    });
                }
                let _ = TcpStream::connect_timeout(&to, Duration::from_secs(1));
            }
            Listen::Unix(path) => {
                let _ = UnixStream::connect(path);
            }
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Listen::Unix(path) = &self.bound {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// How long one scrape may take to send its request and read the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest request head read.
const MAX_REQUEST: usize = 8 * 1024;

/// Binds `listen` now and serves `metrics` from a thread, one connection
/// at a time. (The daemon binds through [`Endpoint`], which keeps trying.)
pub fn serve(listen: &Listen, metrics: Arc<Metrics>) -> io::Result<Server> {
    let stop = Arc::new(AtomicBool::new(false));
    let (bound, thread) = match listen {
        Listen::Tcp(addr) => {
            let listener = TcpListener::bind(addr)?;
            let bound = Listen::Tcp(listener.local_addr()?);
            let stop = stop.clone();
            let thread = spawn(move || answer_each(listener.incoming(), &stop, &metrics))?;
            (bound, thread)
        }
        Listen::Unix(path) => {
            let listener = bind_unix(path)?;
            let stop = stop.clone();
            let thread = spawn(move || answer_each(listener.incoming(), &stop, &metrics))?;
            (Listen::Unix(path.clone()), thread)
        }
    };
    Ok(Server {
        bound,
        stop,
        thread: Some(thread),
    })
}

/// How soon a bind that failed is tried again; the wait doubles up to
/// [`RETRY_MAX`].
pub const RETRY_FIRST: Duration = Duration::from_secs(5);
/// The longest wait between two tries to bind.
pub const RETRY_MAX: Duration = Duration::from_secs(60);

/// The daemon's metrics server, bound in the background as soon as its
/// address allows: the firewall never waits for it. An address another
/// program holds, a socket directory not made yet or an address not yet on
/// any interface is reported once (ERROR, and in [`Metrics::unserved`]),
/// then tried again every [`RETRY_FIRST`], backing off to [`RETRY_MAX`],
/// until it binds. Stops the server (removing its socket) when dropped.
pub struct Endpoint {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    stopping: Mutex<bool>,
    wake: Condvar,
    server: Mutex<Option<Server>>,
}

impl Shared {
    /// Waits `delay`; false when the endpoint is being dropped.
    fn wait(&self, delay: Duration) -> bool {
        let stopping = lock(&self.stopping);
        let (stopping, _) = self
            .wake
            .wait_timeout_while(stopping, delay, |stopping| !*stopping)
            .unwrap_or_else(|e| e.into_inner());
        !*stopping
    }
}

impl Endpoint {
    /// Starts serving `metrics` on `listen` from a thread of its own.
    pub fn start(listen: Listen, metrics: Arc<Metrics>) -> Endpoint {
        let shared = Arc::new(Shared {
            stopping: Mutex::new(false),
            wake: Condvar::new(),
            server: Mutex::new(None),
        });
        let for_thread = shared.clone();
        let thread = std::thread::Builder::new()
            .name("pyfw-metrics-bind".into())
            .spawn({
                let metrics = metrics.clone();
                let listen = listen.clone();
                move || bind_until_bound(&listen, &metrics, &for_thread)
            });
        let thread = match thread {
            Ok(t) => Some(t),
            Err(e) => {
                let why = format!("cannot serve metrics on {listen}: no thread to serve them: {e}");
                tracing::error!("{why}; the wishes are enforced all the same, without metrics");
                metrics.set_unserved(Some(why));
                None
            }
        };
        Endpoint { shared, thread }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        *lock(&self.shared.stopping) = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        drop(lock(&self.shared.server).take());
    }
}

/// Tries to bind `listen` until it binds or the endpoint is dropped,
/// reporting a failure once (and again only when its reason changes).
fn bind_until_bound(listen: &Listen, metrics: &Arc<Metrics>, shared: &Shared) {
    let mut delay = RETRY_FIRST;
    let mut reported: Option<String> = None;
    loop {
        match serve(listen, metrics.clone()) {
            Ok(server) => {
                let at = server.local_addr();
                let remote = match at {
                    Listen::Tcp(a) => !a.ip().to_canonical().is_loopback(),
                    Listen::Unix(_) => false,
                };
                let after = if reported.is_some() {
                    " (the address is available now)"
                } else {
                    ""
                };
                tracing::info!("serving metrics on {at}{after}");
                if remote {
                    tracing::info!(
                        "metrics on {at} are open to other hosts (--metrics-allow-remote);                          under the shipped systemd unit, IPAddressDeny=any drops their traffic                          unless a drop-in allows them: IPAddressAllow=SCRAPER (docs/metrics.md)"
                    );
                }
                metrics.set_unserved(None);
                *lock(&shared.server) = Some(server);
                return;
            }
            Err(e) => {
                let why = cannot_serve(listen, &e);
                if reported.as_deref() == Some(why.as_str()) {
                    tracing::debug!(
                        "{why}; trying again in {}",
                        humantime::format_duration(delay)
                    );
                } else {
                    tracing::error!(
                        "{why}. The wishes are enforced all the same, without metrics; pyfw \
                         tries the address again in {}, then less and less often, up to every {}",
                        humantime::format_duration(RETRY_FIRST),
                        humantime::format_duration(RETRY_MAX)
                    );
                    reported = Some(why.clone());
                }
                metrics.set_unserved(Some(format!("{why}; trying again")));
            }
        }
        if !shared.wait(delay) {
            return;
        }
        delay = (delay * 2).min(RETRY_MAX);
    }
}

/// Why `listen` cannot be served, with what to do about it.
pub fn cannot_serve(listen: &Listen, e: &io::Error) -> String {
    let hint = match (listen, e.kind()) {
        (Listen::Tcp(_), io::ErrorKind::AddrInUse) => {
            " (another program listens there: stop it, or pick another address)".to_string()
        }
        (Listen::Unix(path), io::ErrorKind::NotFound) => format!(
            " (the directory {} does not exist: create it, or under systemd let \
             RuntimeDirectory=pyfw create /run/pyfw)",
            path.parent().unwrap_or(path).display()
        ),
        (_, io::ErrorKind::AddrNotAvailable) => {
            " (no interface here has that address yet)".to_string()
        }
        _ => String::new(),
    };
    format!("cannot serve metrics on {listen}: {e}{hint}")
}

/// A scrape's connection, TCP or Unix: the same bounded exchange.
trait Conn: Read + Write {
    fn set_timeouts(&self, timeout: Duration) -> io::Result<()>;
}

impl Conn for TcpStream {
    fn set_timeouts(&self, timeout: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(timeout))?;
        self.set_write_timeout(Some(timeout))
    }
}

impl Conn for UnixStream {
    fn set_timeouts(&self, timeout: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(timeout))?;
        self.set_write_timeout(Some(timeout))
    }
}

/// Answers each connection in turn until [`Server`]'s drop sets `stop`
/// (and wakes the loop with a connection of its own).
fn answer_each<C: Conn>(
    incoming: impl Iterator<Item = io::Result<C>>,
    stop: &AtomicBool,
    metrics: &Metrics,
) {
    for conn in incoming {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        if let Ok(mut conn) = conn {
            let _ = conn.set_timeouts(IO_TIMEOUT);
            answer(&mut conn, metrics);
        }
    }
}

fn spawn(f: impl FnOnce() + Send + 'static) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("pyfw-metrics".into())
        .spawn(f)
}

/// Binds a Unix socket, replacing a stale socket file left by a process
/// that died, but never a live socket or a file that is not a socket.
fn bind_unix(path: &Path) -> io::Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{}: another process is listening there", path.display()),
                ));
            }
            std::fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{}: exists and is not a socket", path.display()),
            ));
        }
        Err(_) => {}
    }
    UnixListener::bind(path)
}

/// Answers one HTTP/1.x request and closes the connection.
fn answer(conn: &mut (impl Read + Write), metrics: &Metrics) {
    let head = match read_head(conn) {
        Ok(head) => head,
        Err(_) => {
            return respond(
                conn,
                "400 Bad Request",
                "text/plain",
                b"bad request\n",
                true,
            );
        }
    };
    let mut words = head.split_ascii_whitespace();
    let (Some(method), Some(target)) = (words.next(), words.next()) else {
        return respond(
            conn,
            "400 Bad Request",
            "text/plain",
            b"bad request\n",
            true,
        );
    };
    let path = target.split('?').next().unwrap_or("");
    let body_too = match method {
        "GET" => true,
        "HEAD" => false,
        _ => {
            return respond(
                conn,
                "405 Method Not Allowed",
                "text/plain",
                b"only GET and HEAD\n",
                true,
            );
        }
    };
    if path != "/metrics" {
        return respond(
            conn,
            "404 Not Found",
            "text/plain",
            b"pyfw serves its metrics at /metrics\n",
            body_too,
        );
    }
    let text = metrics.encode();
    respond(conn, "200 OK", CONTENT_TYPE, text.as_bytes(), body_too);
}

/// Reads up to the blank line that ends a request's head.
fn read_head(conn: &mut impl Read) -> io::Result<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_REQUEST {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request too long",
            ));
        }
    }
    String::from_utf8(buf).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not text"))
}

fn respond(conn: &mut impl Write, status: &str, content_type: &str, body: &[u8], body_too: bool) {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    let _ = conn.write_all(head.as_bytes());
    if body_too {
        let _ = conn.write_all(body);
    }
    let _ = conn.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let ok = |s: &str| Listen::parse(s, false).unwrap();
        assert_eq!(
            ok("127.0.0.1:9983"),
            Listen::Tcp("127.0.0.1:9983".parse().unwrap())
        );
        assert_eq!(ok("[::1]:9983"), Listen::Tcp("[::1]:9983".parse().unwrap()));
        assert_eq!(
            ok("localhost:1"),
            Listen::Tcp("127.0.0.1:1".parse().unwrap())
        );
        assert_eq!(
            ok("127.1.2.3:1"),
            Listen::Tcp("127.1.2.3:1".parse().unwrap())
        );
        assert_eq!(
            ok("[::ffff:127.0.0.1]:1"),
            Listen::Tcp("[::ffff:127.0.0.1]:1".parse().unwrap())
        );
        assert_eq!(
            ok("unix:/run/pyfw/m.sock"),
            Listen::Unix("/run/pyfw/m.sock".into())
        );
        assert_eq!(
            ok("/run/pyfw/m.sock"),
            Listen::Unix("/run/pyfw/m.sock".into())
        );
        for remote in [
            "0.0.0.0:9983",
            "[::]:9983",
            "10.0.0.1:9983",
            "[2001:db8::1]:1",
        ] {
            let e = Listen::parse(remote, false).unwrap_err();
            assert!(e.contains("not a loopback address"), "{remote}: {e}");
            assert!(Listen::parse(remote, true).is_ok(), "{remote}");
        }
        for bad in [
            "9983",
            "example.org:9983",
            "localhost:x",
            "unix:relative.sock",
            "",
        ] {
            assert!(Listen::parse(bad, true).is_err(), "{bad}");
        }
    }

    #[test]
    fn answers_only_get_and_head_of_metrics() {
        let m = Metrics::new();
        let ask = |req: &str| {
            let mut conn = io::Cursor::new(req.as_bytes().to_vec());
            let mut out = Vec::new();
            struct Duplex<'a>(&'a mut io::Cursor<Vec<u8>>, &'a mut Vec<u8>);
            impl Read for Duplex<'_> {
                fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
                    self.0.read(b)
                }
            }
            impl Write for Duplex<'_> {
                fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                    self.1.write(b)
                }
                fn flush(&mut self) -> io::Result<()> {
                    Ok(())
                }
            }
            answer(&mut Duplex(&mut conn, &mut out), &m);
            String::from_utf8(out).unwrap()
        };
        let ok = ask("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains(CONTENT_TYPE), "{ok}");
        assert!(ok.ends_with("# EOF\n"), "{ok}");
        let head = ask("HEAD /metrics HTTP/1.0\r\n\r\n");
        assert!(
            head.starts_with("HTTP/1.1 200 OK\r\n") && head.ends_with("\r\n\r\n"),
            "{head}"
        );
        assert!(ask("GET / HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404 "));
        assert!(ask("POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405 "));
        assert!(ask("\r\n\r\n").starts_with("HTTP/1.1 400 "));
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "x".repeat(MAX_REQUEST));
        assert!(ask(&long).starts_with("HTTP/1.1 400 "));
    }
}
