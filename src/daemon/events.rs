//! Event-driven repair on the nft backend: the kernel announces every
//! nf_tables change, so drift made by another program is repaired within
//! milliseconds instead of at the next poll.
//!
//! The daemon subscribes to the nf_tables multicast group of a netlink
//! socket (`NETLINK_NETFILTER`, group `NFNLGRP_NFTABLES`), the notifications
//! `nft monitor` prints, read here without a process and without formatting
//! rules: only the table and chain of each rule or chain message, and the
//! generation message that closes every committed transaction, are looked
//! at. The socket belongs to the daemon's network namespace, like the rules.
//!
//! - **Watched chains.** A transaction matters when it touches a wished
//!   chain (a rule or the chain itself, which is how a policy changes) or
//!   adds or deletes a table holding one. Everything else (Kubernetes'
//!   own chains, other tables) is ignored.
//! - **pyfw's own changes are absorbed.** The generation message names the
//!   process that committed the transaction; a transaction committed by a
//!   process pyfw started ([`crate::kernel::started_here`]) is pyfw's own
//!   and triggers nothing. The check is exact: another program's change made
//!   while a reconcile runs still triggers the next one. Where pids cannot
//!   be compared (pyfw in a pid namespace of its own: the kernel reports
//!   the pid as the initial namespace sees it), an own change looks
//!   foreign, and costs one more reconcile that finds nothing to do and so
//!   changes nothing: a reconcile in sync commits nothing, so pyfw never
//!   loops on itself either way.
//! - **Bursts coalesce** in the event loop (see `Config::event_quiet`), and
//!   runs triggered meanwhile are answered by one run, as for any trigger.
//! - **Lost events.** When the socket's buffer overflows (a burst larger
//!   than it, such as a full `iptables-restore` of a 50,000-rule table),
//!   the kernel says so and the daemon reconciles, since it cannot know
//!   what it missed.
//!
//! If the socket cannot be opened (no nf_tables in the kernel, a seccomp
//! filter, too old a kernel), the daemon logs it once and relies on the
//! poll, which also stays on as the safety net with events. Legacy
//! iptables announces nothing; there the closes of the xtables lock, which
//! every iptables command takes, are the hint ([`crate::kernel::xtlock`]), and a
//! table's fingerprint says whether it really changed. ipset announces
//! nothing either, so a set's drift waits for the poll.

use std::collections::BTreeSet;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};

use crate::state::Family;
use crate::state::nft::NftFamily;
use crate::state::text::escape_untrusted;
use crate::wishes::Wishes;

/// The chains whose changes trigger a reconcile: (family, table, chain).
pub type Watched = BTreeSet<(Family, String, String)>;

/// The owned nftables tables whose changes (to anything in them: a rule,
/// a chain, a set, an element, an object, the table) trigger a reconcile.
pub type WatchedTables = BTreeSet<(NftFamily, String)>;

/// The chains `wishes` names.
pub fn watched(wishes: &Wishes) -> Watched {
    wishes
        .chains
        .iter()
        .map(|c| (c.family, c.table.clone(), c.chain.clone()))
        .collect()
}

/// The nftables tables `wishes` owns.
pub fn watched_tables(wishes: &Wishes) -> WatchedTables {
    wishes
        .nftables
        .iter()
        .map(|t| (t.family, t.name.clone()))
        .collect()
}

/// A change another program made to a watched chain, for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A committed transaction touched these chains (`filter/FORWARD`, or
    /// `ip6tables:filter` for a table); `by` is the committing process.
    Touched { what: Vec<String>, by: String },
    /// Notifications were lost: anything may have changed.
    Lost,
    /// A program released the xtables lock, and these wished legacy
    /// tables' fingerprints changed (see [`crate::kernel::xtlock`]).
    XtablesLock { tables: Vec<String> },
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::Touched { what, by } => write!(f, "{} changed by {by}", what.join(", ")),
            Change::Lost => write!(f, "netfilter change notifications were lost"),
            Change::XtablesLock { tables } => write!(
                f,
                "{} changed (an iptables command released the xtables lock)",
                tables.join(", ")
            ),
        }
    }
}

/// The daemon's end of the subscription: changes, and the chains and
/// tables to watch.
pub struct Events {
    changes: UnboundedReceiver<Change>,
    watched: Arc<Mutex<Watched>>,
    tables: Arc<Mutex<WatchedTables>>,
}

impl Events {
    /// Subscribes to nf_tables changes in this network namespace, watching
    /// `watched` and `tables`. The error says why it cannot.
    pub fn start(watched: Watched, tables: WatchedTables) -> Result<Events, String> {
        let (tx, changes) = mpsc::unbounded_channel();
        let watched = Arc::new(Mutex::new(watched));
        let tables = Arc::new(Mutex::new(tables));
        spawn_listener(watched.clone(), tables.clone(), tx)?;
        Ok(Events {
            changes,
            watched,
            tables,
        })
    }

    /// Also follows nf_tables changes to the owned tables (`tables`),
    /// sending them on `tx`: on legacy iptables, whose chains are followed
    /// by the xtables lock instead (see [`Events::from_channel_watching`]).
    pub fn follow_tables(
        &mut self,
        tx: UnboundedSender<Change>,
        tables: WatchedTables,
    ) -> Result<(), String> {
        self.watch_tables(tables);
        spawn_listener(Arc::default(), self.tables.clone(), tx)
    }

    /// Events fed from a channel instead of the nf_tables socket: a
    /// test's script.
    pub fn from_channel(changes: UnboundedReceiver<Change>) -> Events {
        Events::from_channel_watching(changes, Arc::default())
    }

    /// Events fed from a channel whose sender reads `watched` (kept up to
    /// date by [`Events::watch`]): the xtables lock's watch on legacy.
    pub fn from_channel_watching(
        changes: UnboundedReceiver<Change>,
        watched: Arc<Mutex<Watched>>,
    ) -> Events {
        Events {
            changes,
            watched,
            tables: Arc::default(),
        }
    }

    /// Watches these chains from now on.
    pub fn watch(&self, chains: Watched) {
        if let Ok(mut w) = self.watched.lock() {
            *w = chains;
        }
    }

    /// Watches these owned tables from now on.
    pub fn watch_tables(&self, tables: WatchedTables) {
        if let Ok(mut w) = self.tables.lock() {
            *w = tables;
        }
    }

    /// The next change; pending forever once the listener is gone.
    pub async fn recv(&mut self) -> Change {
        match self.changes.recv().await {
            Some(c) => c,
            None => std::future::pending().await,
        }
    }
}

// From <linux/netlink.h>, <linux/netfilter/nfnetlink.h> and
// <linux/netfilter/nf_tables.h>.
const NETLINK_NETFILTER: libc::c_int = 12;
const NFNLGRP_NFTABLES: libc::c_int = 7;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_NEWGEN: u16 = 15;
/// NFTA_TABLE_NAME, NFTA_CHAIN_TABLE and NFTA_RULE_TABLE.
const ATTR_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_GEN_PROC_PID: u16 = 2;
const NFTA_GEN_PROC_NAME: u16 = 3;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
/// The receive buffer asked for: bursts of a few thousand rules fit.
const RCVBUF: libc::c_int = 8 << 20;

/// A netlink socket subscribed to nf_tables notifications.
fn subscribe() -> Result<OwnedFd, String> {
    let os = |what: &str| format!("{what}: {}", std::io::Error::last_os_error());
    // SAFETY: plain socket(2); the fd is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            NETLINK_NETFILTER,
        )
    };
    if fd < 0 {
        return Err(os("cannot open a netfilter netlink socket"));
    }
    // SAFETY: `fd` is a new descriptor nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: a zeroed sockaddr_nl is valid; bind(2) and setsockopt(2) read
    // the sizes given.
    unsafe {
        let mut addr: libc::sockaddr_nl = std::mem::zeroed();
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        if libc::bind(
            socket.as_raw_fd(),
            (&addr as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        ) < 0
        {
            return Err(os("cannot bind the netfilter netlink socket"));
        }
        let group = NFNLGRP_NFTABLES;
        if libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_NETLINK,
            libc::NETLINK_ADD_MEMBERSHIP,
            (&group as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) < 0
        {
            return Err(os("cannot subscribe to nf_tables notifications"));
        }
        // A larger buffer loses fewer bursts; CAP_NET_ADMIN may exceed
        // rmem_max. Not fatal: overflows are reported and handled.
        let size = RCVBUF;
        for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
            if libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            ) == 0
            {
                break;
            }
        }
    }
    Ok(socket)
}

/// Subscribes and starts the thread that listens.
fn spawn_listener(
    watched: Arc<Mutex<Watched>>,
    tables: Arc<Mutex<WatchedTables>>,
    tx: UnboundedSender<Change>,
) -> Result<(), String> {
    let socket = subscribe()?;
    std::thread::Builder::new()
        .name("nf-events".into())
        .spawn(move || listen(socket, watched, tables, tx))
        .map(|_| ())
        .map_err(|e| format!("cannot start the event thread: {e}"))
}

/// Reads notifications until the daemon goes away or the socket fails.
fn listen(
    socket: OwnedFd,
    watched: Arc<Mutex<Watched>>,
    tables: Arc<Mutex<WatchedTables>>,
    tx: UnboundedSender<Change>,
) {
    let mut buf = vec![0u8; 1 << 18];
    let mut filter = Filter::default();
    let mut notes = Vec::new();
    loop {
        // SAFETY: recv(2) into a buffer of the length given.
        let n = unsafe {
            libc::recv(
                socket.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_TRUNC,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::ENOBUFS) => {
                    filter.reset();
                    if tx.send(Change::Lost).is_err() {
                        return;
                    }
                    continue;
                }
                _ => {
                    tracing::warn!(
                        "stopped following netfilter changes ({e}); repairs wait for the poll"
                    );
                    return;
                }
            }
        }
        let n = n as usize;
        if n > buf.len() {
            // Truncated: a message larger than the buffer; treat as lost.
            filter.reset();
            if tx.send(Change::Lost).is_err() {
                return;
            }
            continue;
        }
        notes.clear();
        let (Ok(watched), Ok(tables)) = (
            watched.lock().map(|w| w.clone()),
            tables.lock().map(|t| t.clone()),
        ) else {
            return;
        };
        parse_with(&buf[..n], &mut notes, !tables.is_empty());
        for note in notes.drain(..) {
            let change = filter.note_with(note, &watched, &tables, crate::kernel::started_here);
            if let Some(change) = change
                && tx.send(change).is_err()
            {
                return;
            }
        }
    }
}

/// What one notification says, as far as pyfw cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Note {
    /// A table, chain or rule of `family` changed; `chain` is `None` for a
    /// table.
    Touch {
        family: Family,
        table: String,
        chain: Option<String>,
    },
    /// A transaction was committed, by this process if the kernel says.
    Generation {
        pid: Option<u32>,
        name: Option<String>,
    },
    /// Something in nftables table `table` of `family` changed (a rule,
    /// chain, set, element, object or flowtable, or the table itself).
    Table { family: NftFamily, table: String },
}

/// The notes in one datagram of netlink messages. Messages pyfw has no use
/// for (sets, objects, other families) are skipped.
pub fn parse(buf: &[u8], out: &mut Vec<Note>) {
    parse_with(buf, out, false)
}

/// [`parse`], and with `tables` a [`Note::Table`] for every message about
/// something in a table, of any family.
pub fn parse_with(buf: &[u8], out: &mut Vec<Note>, tables: bool) {
    let mut off = 0;
    while off + 16 <= buf.len() {
        let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap_or_default()) as usize;
        let kind = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().unwrap_or_default());
        if len < 16 || off + len > buf.len() {
            break;
        }
        let payload = &buf[off + 16..off + len];
        off += (len + 3) & !3;
        if kind >> 8 != NFNL_SUBSYS_NFTABLES || payload.len() < 4 {
            continue;
        }
        let message = Message {
            kind: kind & 0xff,
            payload,
        };
        if tables && let Some(note) = message.table_note() {
            out.push(note);
        }
        out.extend(message.note());
    }
}

/// One nf_tables message: its type and its payload (nfgenmsg, then
/// attributes).
struct Message<'b> {
    kind: u16,
    payload: &'b [u8],
}

impl Message<'_> {
    fn attrs(&self) -> impl Iterator<Item = (u16, &[u8])> {
        attributes(&self.payload[4..])
    }

    /// The string attribute `want`, up to its NUL.
    fn text(&self, want: u16) -> Option<String> {
        self.attrs().find(|(t, _)| *t == want).map(|(_, v)| {
            String::from_utf8_lossy(v.split(|b| *b == 0).next().unwrap_or(v)).into_owned()
        })
    }

    /// A [`Note::Table`] for a message about something in a table.
    fn table_note(&self) -> Option<Note> {
        if !TABLE_MESSAGES.contains(&self.kind) {
            return None;
        }
        let family = nft_family(self.payload[0])?;
        let table = self.text(ATTR_TABLE)?;
        Some(Note::Table { family, table })
    }

    /// What the message says of the iptables families: a new generation,
    /// a table, chain or rule touched.
    fn note(&self) -> Option<Note> {
        let family = match self.payload[0] {
            NFPROTO_IPV4 => Some(Family::V4),
            NFPROTO_IPV6 => Some(Family::V6),
            _ => None,
        };
        match self.kind {
            NFT_MSG_NEWGEN => Some(Note::Generation {
                pid: self
                    .attrs()
                    .find(|(t, _)| *t == NFTA_GEN_PROC_PID)
                    .and_then(|(_, v)| v.get(..4)?.try_into().ok())
                    .map(u32::from_be_bytes),
                name: self.text(NFTA_GEN_PROC_NAME),
            }),
            NFT_MSG_NEWTABLE | NFT_MSG_DELTABLE => Some(Note::Touch {
                family: family?,
                table: self.text(ATTR_TABLE)?,
                chain: None,
            }),
            NFT_MSG_NEWCHAIN | NFT_MSG_DELCHAIN | NFT_MSG_NEWRULE | NFT_MSG_DELRULE => {
                let chain = match self.kind >= NFT_MSG_NEWRULE {
                    true => NFTA_RULE_CHAIN,
                    false => NFTA_CHAIN_NAME,
                };
                Some(Note::Touch {
                    family: family?,
                    table: self.text(ATTR_TABLE)?,
                    chain: Some(self.text(chain)?),
                })
            }
            _ => None,
        }
    }
}

/// Messages about something in a table, whose attribute 1 names it:
/// NEWTABLE..DELRULE (0-8), NEWSET..DELSETELEM (9-14), NEWOBJ..DELOBJ
/// (18-20), NEWFLOWTABLE..DELFLOWTABLE (22-24).
const TABLE_MESSAGES: &[u16] = &[0, 2, 3, 5, 6, 8, 9, 11, 12, 14, 18, 20, 22, 24];

/// An nftables family from `nfgen_family` (NFPROTO_*).
fn nft_family(proto: u8) -> Option<NftFamily> {
    match proto {
        1 => Some(NftFamily::Inet),
        2 => Some(NftFamily::Ip),
        3 => Some(NftFamily::Arp),
        5 => Some(NftFamily::Netdev),
        7 => Some(NftFamily::Bridge),
        10 => Some(NftFamily::Ip6),
        _ => None,
    }
}

/// The attributes of a netlink message body: (type, value).
fn attributes(mut body: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if body.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([body[0], body[1]]) as usize;
        let kind = u16::from_ne_bytes([body[2], body[3]]) & 0x3fff;
        if len < 4 || len > body.len() {
            return None;
        }
        let value = &body[4..len];
        body = &body[((len + 3) & !3).min(body.len())..];
        Some((kind, value))
    })
}

/// Turns notes into changes: the watched chains a transaction touched,
/// reported when its generation message shows another program committed
/// it.
#[derive(Debug, Default)]
pub struct Filter {
    touched: BTreeSet<String>,
}

impl Filter {
    /// Forgets a transaction in progress (its notes were lost).
    pub fn reset(&mut self) {
        self.touched.clear();
    }

    /// Takes one note; returns a change when a transaction that touched a
    /// watched chain was committed by a process `own` does not claim.
    pub fn note(
        &mut self,
        note: Note,
        watched: &Watched,
        own: impl Fn(u32) -> bool,
    ) -> Option<Change> {
        self.note_with(note, watched, &WatchedTables::new(), own)
    }

    /// [`Filter::note`], watching owned tables too.
    pub fn note_with(
        &mut self,
        note: Note,
        watched: &Watched,
        tables: &WatchedTables,
        own: impl Fn(u32) -> bool,
    ) -> Option<Change> {
        match note {
            Note::Table { family, table } => {
                if tables.contains(&(family, table.clone())) {
                    self.touched.insert(format!("nft {family} {table}"));
                }
                None
            }
            Note::Touch {
                family,
                table,
                chain,
            } => {
                let hit = match &chain {
                    Some(chain) => watched.contains(&(family, table.clone(), chain.clone())),
                    None => watched.iter().any(|(f, t, _)| *f == family && *t == table),
                };
                if hit {
                    let prefix = match family {
                        Family::V4 => "",
                        Family::V6 => "ip6tables:",
                    };
                    self.touched.insert(match chain {
                        Some(chain) => format!("{prefix}{table}/{chain}"),
                        None => format!("{prefix}{table}"),
                    });
                }
                None
            }
            Note::Generation { pid, name } => {
                let touched = std::mem::take(&mut self.touched);
                if touched.is_empty() || pid.is_some_and(own) {
                    return None;
                }
                // Any process may name itself anything: its name is shown
                // escaped.
                let name = name.map(|n| escape_untrusted(&n).into_owned());
                let by = match (pid, name) {
                    (Some(pid), Some(name)) => format!("{name} (pid {pid})"),
                    (Some(pid), None) => format!("pid {pid}"),
                    (None, Some(name)) => name,
                    (None, None) => "another process".to_string(),
                };
                Some(Change::Touched {
                    what: touched.into_iter().collect(),
                    by,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One netlink message: header, nfgenmsg, attributes.
    fn message(msg: u16, family: u8, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = vec![family, 0, 0, 0];
        for (kind, value) in attrs {
            let len = 4 + value.len();
            body.extend_from_slice(&(len as u16).to_ne_bytes());
            body.extend_from_slice(&kind.to_ne_bytes());
            body.extend_from_slice(value);
            while body.len() % 4 != 0 {
                body.push(0);
            }
        }
        let mut out = Vec::new();
        out.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        out.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | msg).to_ne_bytes());
        out.extend_from_slice(&0u16.to_ne_bytes());
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&body);
        out
    }

    fn rule(family: u8, table: &str, chain: &str) -> Vec<u8> {
        let t = format!("{table}\0");
        let c = format!("{chain}\0");
        message(
            NFT_MSG_NEWRULE,
            family,
            &[
                (ATTR_TABLE, t.as_bytes()),
                (NFTA_RULE_CHAIN, c.as_bytes()),
                (4, &[1, 2, 3]),
            ],
        )
    }

    fn generation(pid: u32, name: &str) -> Vec<u8> {
        let n = format!("{name}\0");
        message(
            NFT_MSG_NEWGEN,
            0,
            &[
                (1, &7u32.to_be_bytes()),
                (NFTA_GEN_PROC_PID, &pid.to_be_bytes()),
                (NFTA_GEN_PROC_NAME, n.as_bytes()),
            ],
        )
    }

    fn watched_forward() -> Watched {
        Watched::from([
            (Family::V4, "filter".to_string(), "FORWARD".to_string()),
            (Family::V4, "filter".to_string(), "DOCKER".to_string()),
        ])
    }

    fn changes(datagram: &[u8], own: &[u32]) -> Vec<Change> {
        let mut notes = Vec::new();
        parse(datagram, &mut notes);
        let mut filter = Filter::default();
        notes
            .into_iter()
            .filter_map(|n| filter.note(n, &watched_forward(), |p| own.contains(&p)))
            .collect()
    }

    #[test]
    fn reads_rules_chains_tables_and_generations() {
        let mut buf = rule(NFPROTO_IPV4, "filter", "FORWARD");
        buf.extend(message(
            NFT_MSG_DELCHAIN,
            NFPROTO_IPV6,
            &[(ATTR_TABLE, b"nat\0"), (NFTA_CHAIN_NAME, b"X\0")],
        ));
        buf.extend(message(
            NFT_MSG_DELTABLE,
            NFPROTO_IPV4,
            &[(ATTR_TABLE, b"raw\0")],
        ));
        // A set element and an arp table: not pyfw's business.
        buf.extend(message(12, NFPROTO_IPV4, &[(ATTR_TABLE, b"filter\0")]));
        buf.extend(message(NFT_MSG_NEWTABLE, 3, &[(ATTR_TABLE, b"filter\0")]));
        buf.extend(generation(4242, "iptables-restor"));
        let mut notes = Vec::new();
        parse(&buf, &mut notes);
        assert_eq!(
            notes,
            [
                Note::Touch {
                    family: Family::V4,
                    table: "filter".into(),
                    chain: Some("FORWARD".into())
                },
                Note::Touch {
                    family: Family::V6,
                    table: "nat".into(),
                    chain: Some("X".into())
                },
                Note::Touch {
                    family: Family::V4,
                    table: "raw".into(),
                    chain: None
                },
                Note::Generation {
                    pid: Some(4242),
                    name: Some("iptables-restor".into())
                },
            ]
        );
        // Truncated input is not read past.
        let mut short = Vec::new();
        parse(&buf[..buf.len() - 3], &mut short);
        assert_eq!(short.len(), 3);
    }

    #[test]
    fn a_foreign_change_to_a_watched_chain_is_one_change_per_transaction() {
        let mut buf = rule(NFPROTO_IPV4, "filter", "FORWARD");
        buf.extend(rule(NFPROTO_IPV4, "filter", "DOCKER"));
        buf.extend(rule(NFPROTO_IPV4, "filter", "FORWARD"));
        buf.extend(generation(100, "dockerd"));
        assert_eq!(
            changes(&buf, &[]),
            [Change::Touched {
                what: vec!["filter/DOCKER".into(), "filter/FORWARD".into()],
                by: "dockerd (pid 100)".into(),
            }]
        );
    }

    #[test]
    fn pyfws_own_transactions_and_unwatched_chains_are_absorbed() {
        // pyfw's own iptables-restore (pid 200) touches FORWARD: nothing.
        let mut own = rule(NFPROTO_IPV4, "filter", "FORWARD");
        own.extend(generation(200, "iptables-restor"));
        assert_eq!(changes(&own, &[200]), []);
        // Kubernetes' chains, another table, the other family: nothing.
        let mut other = rule(NFPROTO_IPV4, "filter", "KUBE-SERVICES");
        other.extend(rule(NFPROTO_IPV4, "nat", "FORWARD"));
        other.extend(rule(NFPROTO_IPV6, "filter", "FORWARD"));
        other.extend(generation(300, "kube-proxy"));
        assert_eq!(changes(&other, &[200]), []);
        // The same change by someone else counts.
        assert_eq!(changes(&own, &[]).len(), 1);
    }

    #[test]
    fn the_committing_process_name_is_escaped() {
        // Any process may name itself: a line break and a terminal escape.
        let mut buf = rule(NFPROTO_IPV4, "filter", "FORWARD");
        buf.extend(generation(100, "evil\n\x1b[31m"));
        assert_eq!(
            changes(&buf, &[]),
            [Change::Touched {
                what: vec!["filter/FORWARD".into()],
                by: "evil\\n\\x1b[31m (pid 100)".into(),
            }]
        );
    }

    #[test]
    fn a_table_deleted_under_a_watched_chain_counts() {
        let mut buf = message(NFT_MSG_DELTABLE, NFPROTO_IPV4, &[(ATTR_TABLE, b"filter\0")]);
        buf.extend(generation(300, "nft"));
        assert_eq!(
            changes(&buf, &[]),
            [Change::Touched {
                what: vec!["filter".into()],
                by: "nft (pid 300)".into()
            }]
        );
    }

    /// Anything in an owned table, in any family, by anyone else: one
    /// change naming the table; other tables, and pyfw's own commits, none.
    #[test]
    fn owned_tables_are_watched_whole() {
        let tables = WatchedTables::from([(NftFamily::Inet, "pyfw".to_string())]);
        let notes = |datagram: &[u8], with_tables: bool| {
            let mut notes = Vec::new();
            parse_with(datagram, &mut notes, with_tables);
            notes
        };
        let changes = |datagram: &[u8], own: &[u32]| {
            let mut filter = Filter::default();
            notes(datagram, true)
                .into_iter()
                .filter_map(|n| filter.note_with(n, &Watched::new(), &tables, |p| own.contains(&p)))
                .collect::<Vec<_>>()
        };
        // NEWSETELEM (12) in inet pyfw, DELOBJ (20), a rule in Docker's
        // table (ip), then the commit.
        let mut buf = message(12, 1, &[(ATTR_TABLE, b"pyfw\0"), (2, b"allowed\0")]);
        buf.extend(message(20, 1, &[(ATTR_TABLE, b"pyfw\0")]));
        buf.extend(rule(NFPROTO_IPV4, "docker-bridges", "filter-FORWARD"));
        buf.extend(generation(300, "nft"));
        assert_eq!(
            changes(&buf, &[]),
            [Change::Touched {
                what: vec!["nft inet pyfw".into()],
                by: "nft (pid 300)".into()
            }]
        );
        assert_eq!(changes(&buf, &[300]), []);
        // The same table name in another family is another table.
        let mut other = message(NFT_MSG_DELTABLE, 10, &[(ATTR_TABLE, b"pyfw\0")]);
        other.extend(generation(301, "nft"));
        assert_eq!(changes(&other, &[]), []);
        // Without owned tables to watch, no table notes are made.
        assert!(
            !notes(&buf, false)
                .iter()
                .any(|n| matches!(n, Note::Table { .. }))
        );
    }

    #[test]
    fn the_registry_knows_pyfws_children() {
        let system = crate::kernel::System::default();
        // `sh` is a child like any tool pyfw runs.
        let out = system.exec("sh", &["-c".to_string(), "echo $$".to_string()], None);
        let pid: u32 = out.unwrap().stdout.trim().parse().unwrap();
        assert!(crate::kernel::started_here(pid));
        assert!(!crate::kernel::started_here(std::process::id()));
    }
}
