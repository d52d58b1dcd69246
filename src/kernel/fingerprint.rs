//! A fingerprint of an iptables-legacy table, so that an idle daemon can
//! tell "nothing changed" without having the tools read and print the table
//! and pyfw parse and plan it.
//!
//! On the legacy backend every read, even `iptables -S INPUT`, copies the
//! whole table out of the kernel and has libiptc parse all of it, and pyfw
//! then parses the text again: on a host with a 50,000-rule foreign chain a
//! poll every second costs twice the CPU of a full `iptables-save` per
//! second (issue 5, BENCHMARKS.md "idle-cpu, legacy"). The kernel offers no
//! change notification for legacy tables, and the table summary
//! (`IPT_SO_GET_INFO`: entry count, size, hook offsets) does not change when
//! rules are only reordered, which is what a Docker restart does.
//!
//! So this module asks the kernel for the table's raw entries
//! (`IPT_SO_GET_ENTRIES`, the same call libiptc makes, without the parsing)
//! and hashes their bytes, leaving out what changes without the ruleset
//! changing: each rule's packet and byte counters, and `comefrom`, a
//! bitmask of the hooks that reach the rule which the kernel derives from
//! the ruleset (and which old kernels built with `CONFIG_NETFILTER_DEBUG`
//! scribble on while matching packets). The hook entry points and underflows
//! from `IPT_SO_GET_INFO` go into the hash too. Policies live in the entries
//! (the underflow rules' verdicts), and so do chain names (error targets),
//! jump targets (offsets), matches and their options, so any change that
//! `iptables-save` would show changes the fingerprint, up to a 64-bit hash
//! collision. The key of the hash is random per process: fingerprints are
//! only compared within one process, and a program that writes rules cannot
//! aim for a collision without the key (the hash is fast, not
//! cryptographic).
//!
//! What it costs, and why the daemon does not take it every poll: the
//! kernel's copy is most of the price of any legacy read, and this still
//! pays it (so a 1 s poll of fingerprints alone cost 0.47× a save per
//! second; the daemon now takes it only after a release of the xtables
//! lock or every 30 s, see [`crate::kernel::xtlock`]). With
//! the benchmark's 50,000-rule chain (24 MB of entries) a fingerprint took
//! 71 ms of CPU, the `IPT_SO_GET_ENTRIES` call alone 65 ms (nearly all
//! system time: the kernel copies each rule, match and target to user space
//! piece by piece), against 157 ms for `iptables-legacy-save` and 104 ms for
//! `iptables-legacy -S INPUT`; the hash is the other 5 ms. See
//! `cargo bench --bench fingerprint` (as root). What it saves is
//! everything after the copy: libiptc's parse, the text, pyfw's parse and
//! plan.
//!
//! A fingerprint can also change without the ruleset changing (a match
//! whose kernel state is copied out with the rule would do that); the only
//! cost of that is an unneeded read. The reverse, a change the fingerprint
//! misses, is what the daemon must never rely on alone: see the safety net
//! described in [`legacy_table`].
//!
//! Everything here only reads. It never makes the kernel create a table:
//! on kernels since 5.x, asking for a table that a network namespace does
//! not have yet instantiates it (and loads its module), which on an nft host
//! would add legacy hooks in front of every packet. [`legacy_table`]
//! therefore first checks `/proc/net/ip_tables_names` (or
//! `ip6_tables_names`), which lists the tables that exist.

use std::hash::BuildHasher;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::OnceLock;

use crate::state::Family;

/// `XT_TABLE_MAXNAMELEN`: a table name and its terminating NUL.
const TABLE_NAME_LEN: usize = 32;

/// `IPT_SO_GET_INFO` and `IP6T_SO_GET_INFO` (`IPT_BASE_CTL`).
const SO_GET_INFO: libc::c_int = 64;
/// `IPT_SO_GET_ENTRIES` and `IP6T_SO_GET_ENTRIES` (`IPT_BASE_CTL + 1`).
const SO_GET_ENTRIES: libc::c_int = 65;

/// `NF_INET_NUMHOOKS`: prerouting, input, forward, output, postrouting.
const NUM_HOOKS: usize = 5;

/// `sizeof(struct ipt_getinfo)` (same for ip6t): name, `valid_hooks`, five
/// hook entries, five underflows, `num_entries`, `size`; all `u32`.
const GETINFO_LEN: usize = TABLE_NAME_LEN + 4 * (1 + 2 * NUM_HOOKS + 2);

/// How many times to retry when the table changes between the two calls
/// (the kernel answers `EAGAIN` when the size given is no longer the size).
const ATTEMPTS: usize = 3;

/// Rounds `n` up to a multiple of `align` (a power of two).
const fn align_up(n: usize, align: usize) -> usize {
    (n + align - 1) & !(align - 1)
}

/// `offsetof(struct ipt_get_entries, entrytable)`: the name, the `u32`
/// size, then the entries, which hold `u64` counters and are aligned so.
const GET_ENTRIES_HEAD: usize = align_up(TABLE_NAME_LEN + 4, align_of::<u64>());

/// Where the fields of `struct ipt_entry` / `struct ip6t_entry` are, per
/// family (`<linux/netfilter_ipv4/ip_tables.h>`, `.../ip6_tables.h`).
///
/// Both are `{ ip part; u32 nfcache; u16 target_offset; u16 next_offset;
/// u32 comefrom; struct xt_counters { u64 pcnt, bcnt; } counters; elems[] }`
/// and differ only in the size of the ip part: `struct ipt_ip` is 84 bytes,
/// `struct ip6t_ip6` 133 padded to 136. On x86_64 the entry is 112 bytes
/// with the counters at 96 (IPv4), and 168 with them at 152 (IPv6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Layout {
    target_offset: usize,
    next_offset: usize,
    comefrom: usize,
    counters: usize,
    /// `sizeof` the entry: the smallest `next_offset` that makes sense.
    size: usize,
}

impl Layout {
    const fn new(ip_part: usize) -> Layout {
        let nfcache = align_up(ip_part, 4);
        let comefrom = nfcache + 8;
        let counters = align_up(comefrom + 4, align_of::<u64>());
        Layout {
            target_offset: nfcache + 4,
            next_offset: nfcache + 6,
            comefrom,
            counters,
            size: align_up(counters + 16, align_of::<u64>()),
        }
    }

    const fn of(family: Family) -> Layout {
        match family {
            // 4 addresses of 4 bytes, 4 interface fields of 16, proto u16,
            // flags u8, invflags u8.
            Family::V4 => Layout::new(4 * 4 + 4 * 16 + 2 + 1 + 1),
            // 4 addresses of 16 bytes, 4 interface fields of 16, proto u16,
            // tos u8, flags u8, invflags u8.
            Family::V6 => Layout::new(4 * 16 + 4 * 16 + 2 + 1 + 1 + 1),
        }
    }
}

/// What `IPT_SO_GET_INFO` says about a table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableInfo {
    /// Which hooks the table is attached to (bitmask).
    pub valid_hooks: u32,
    /// Offset of each built-in chain's first rule.
    pub hook_entry: [u32; NUM_HOOKS],
    /// Offset of each built-in chain's policy rule.
    pub underflow: [u32; NUM_HOOKS],
    /// Number of entries (rules, policies, chain heads and ends).
    pub num_entries: u32,
    /// Size of the entries in bytes.
    pub size: u32,
}

impl TableInfo {
    /// Reads the kernel's answer to `IPT_SO_GET_INFO`.
    fn parse(raw: &[u8; GETINFO_LEN]) -> TableInfo {
        let word = |i: usize| {
            let at = TABLE_NAME_LEN + 4 * i;
            u32::from_ne_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]])
        };
        TableInfo {
            valid_hooks: word(0),
            hook_entry: std::array::from_fn(|h| word(1 + h)),
            underflow: std::array::from_fn(|h| word(1 + NUM_HOOKS + h)),
            num_entries: word(1 + 2 * NUM_HOOKS),
            size: word(2 + 2 * NUM_HOOKS),
        }
    }
}

/// The fingerprint of a legacy table as the kernel holds it now, or `None`
/// when this network namespace has no such legacy table (never loaded: an
/// nft host, or a table nobody used), checked without making the kernel
/// create it.
///
/// Equal fingerprints within one process mean, up to a 64-bit hash
/// collision, that the table's rules, chains and policies are what they were;
/// packet and byte counters do not count. It costs the kernel's copy of the
/// table and one pass over it (about half of `iptables-legacy-save`'s CPU,
/// see the module comment), and needs `CAP_NET_RAW` (a raw socket) and
/// `CAP_NET_ADMIN`. It answers for the calling thread's network namespace.
///
/// How the daemon uses it (`netfilter::LegacyCache`): it fingerprints each
/// legacy table whose chains a poll reads *before* reading them, keeps the
/// chains read with that fingerprint, and answers the next poll from them
/// while the fingerprint is unchanged, re-reading after five minutes
/// regardless; while the xtables lock stays quiet, it skips even the
/// fingerprint for up to [`crate::kernel::xtlock::TRUST_QUIET_FOR`]. Taken before the read, a change racing the read shows at the
/// next poll; taken after, it could be missed. Any error means a real read.
pub fn legacy_table(family: Family, table: &str) -> io::Result<Option<u64>> {
    if !table_loaded(family, table)? {
        return Ok(None);
    }
    let _one = one_table_copy();
    let Some((info, buf)) = read_table(family, table)? else {
        return Ok(None);
    };
    let entries = buf.get(GET_ENTRIES_HEAD..).unwrap_or_default();
    fingerprint(family, &info, entries).map(Some)
}

/// A whole legacy table in pyfw's memory is big: its kernel copy for a
/// fingerprint takes 24 MB with a 50,000-rule chain, its save 10-20 MB.
/// The daemon's xtables-lock thread fingerprints while a reconcile may be
/// reading the table: one such copy at a time keeps the peak to one of
/// them, which costs a wait of tens of milliseconds at most.
static TABLE_COPY: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Holds [`TABLE_COPY`] until dropped (a poisoned lock is as good: it
/// guards no data).
pub(crate) fn one_table_copy() -> std::sync::MutexGuard<'static, ()> {
    TABLE_COPY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether the legacy table exists in the caller's network namespace, from
/// the kernel's list of them. The list is read through `/proc/thread-self`,
/// which follows the calling thread's namespace (`/proc/net` follows the
/// process's first thread), as the raw socket does. No list at all means
/// the kernel has no legacy tables: no table.
fn table_loaded(family: Family, table: &str) -> io::Result<bool> {
    let name = match family {
        Family::V4 => "ip_tables_names",
        Family::V6 => "ip6_tables_names",
    };
    let dir = if std::path::Path::new("/proc/thread-self/net").exists() {
        "/proc/thread-self/net"
    } else {
        "/proc/net"
    };
    match std::fs::read_to_string(format!("{dir}/{name}")) {
        Ok(names) => Ok(names.lines().any(|l| l == table)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// What `IPT_SO_GET_INFO` says about a legacy table now (its entry count,
/// size and hook offsets), or `None` when this network namespace has no
/// such table; checked, like [`legacy_table`], without making the kernel
/// create it. It costs microseconds whatever the table's size, but only
/// shows a change that adds or removes entries: a reorder, or a rule
/// replaced by one of the same size, leaves it as it was. The daemon uses
/// it between fingerprints when the xtables lock says nobody wrote (see
/// [`crate::kernel::xtlock`]), to catch a writer that does not take the lock.
pub fn legacy_summary(family: Family, table: &str) -> io::Result<Option<TableInfo>> {
    if !table_loaded(family, table)? {
        return Ok(None);
    }
    let socket = Socket::open(family, table)?;
    socket.info()
}

/// The table's info and its entries (after [`GET_ENTRIES_HEAD`] bytes of
/// header), or `None` if the kernel says it has no such table.
fn read_table(family: Family, table: &str) -> io::Result<Option<(TableInfo, Vec<u8>)>> {
    let socket = Socket::open(family, table)?;
    let mut last = None;
    for _ in 0..ATTEMPTS {
        let Some(info) = socket.info()? else {
            return Ok(None);
        };
        let size = usize::try_from(info.size)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "table too large"))?;
        let mut buf = vec![0u8; GET_ENTRIES_HEAD + size];
        buf[..socket.name.len()].copy_from_slice(&socket.name);
        buf[TABLE_NAME_LEN..TABLE_NAME_LEN + 4].copy_from_slice(&info.size.to_ne_bytes());
        match socket.get(SO_GET_ENTRIES, &mut buf) {
            Ok(()) => return Ok(Some((info, buf))),
            // The table changed size between the two calls: ask again.
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => last = Some(e),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::from_raw_os_error(libc::EAGAIN)))
}

/// A raw socket to ask the kernel about one legacy table.
///
/// All of this module's `unsafe` is here: creating the raw socket and the
/// `getsockopt` calls, each into a buffer of exactly the length passed.
struct Socket {
    fd: OwnedFd,
    level: libc::c_int,
    /// The table's name, checked to fit `TABLE_NAME_LEN` with its NUL.
    name: Vec<u8>,
}

impl Socket {
    fn open(family: Family, table: &str) -> io::Result<Socket> {
        let name = table.as_bytes();
        if name.is_empty() || name.len() >= TABLE_NAME_LEN || name.contains(&0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("not a table name: {table:?}"),
            ));
        }
        let (domain, level) = match family {
            Family::V4 => (libc::AF_INET, libc::IPPROTO_IP),
            Family::V6 => (libc::AF_INET6, libc::IPPROTO_IPV6),
        };
        // SAFETY: socket(2) takes no pointers; a negative result is an error.
        let fd = unsafe {
            libc::socket(
                domain,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::IPPROTO_RAW,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a descriptor we just opened and own alone.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Socket {
            fd,
            level,
            name: name.to_vec(),
        })
    }

    /// getsockopt(2) into `buf`, which the kernel fills up to its length.
    fn get(&self, option: libc::c_int, buf: &mut [u8]) -> io::Result<()> {
        let mut len = libc::socklen_t::try_from(buf.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "table too large"))?;
        // SAFETY: `buf` is valid for writes of `len` bytes and `len` is a
        // live socklen_t; the kernel writes at most `len` bytes into it.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                self.level,
                option,
                buf.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// `IPT_SO_GET_INFO`; `None` if the kernel has no such table.
    fn info(&self) -> io::Result<Option<TableInfo>> {
        let mut raw = [0u8; GETINFO_LEN];
        raw[..self.name.len()].copy_from_slice(&self.name);
        match self.get(SO_GET_INFO, &mut raw) {
            Ok(()) => Ok(Some(TableInfo::parse(&raw))),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// The fingerprint of a table from its info and raw entries (the bytes the
/// kernel returns after the `ipt_get_entries` header): a pure function,
/// so that it can be tested on synthetic buffers.
///
/// The walk trusts nothing in the buffer: an entry that does not fit, a
/// `next_offset` smaller than an entry (0 included) or past the end, a
/// `target_offset` outside its entry, or an entry count or size that differ
/// from `info`, is an `InvalidData` error, never a loop or a panic.
pub fn fingerprint(family: Family, info: &TableInfo, entries: &[u8]) -> io::Result<u64> {
    let layout = Layout::of(family);
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    if usize::try_from(info.size).ok() != Some(entries.len()) {
        return Err(bad(format!(
            "table size {} but {} bytes of entries",
            info.size,
            entries.len()
        )));
    }
    let mut hash = Hash::new();
    hash.word(u64::from(info.valid_hooks) | u64::from(info.num_entries) << 32);
    hash.word(u64::from(info.size));
    for (entry, underflow) in info.hook_entry.iter().zip(&info.underflow) {
        hash.word(u64::from(*entry) | u64::from(*underflow) << 32);
    }
    let u16_at = |at: &[u8], i: usize| usize::from(u16::from_ne_bytes([at[i], at[i + 1]]));
    let mut offset = 0;
    let mut count: u64 = 0;
    while offset < entries.len() {
        let rest = &entries[offset..];
        if rest.len() < layout.size {
            return Err(bad(format!(
                "entry at {offset}: {} bytes left, less than an entry",
                rest.len()
            )));
        }
        let next = u16_at(rest, layout.next_offset);
        let target = u16_at(rest, layout.target_offset);
        if next < layout.size || next > rest.len() {
            return Err(bad(format!(
                "entry at {offset}: next_offset {next} out of bounds ({} bytes left)",
                rest.len()
            )));
        }
        if target < layout.size || target > next {
            return Err(bad(format!(
                "entry at {offset}: target_offset {target} outside the entry ({next} bytes)"
            )));
        }
        // The ip part, nfcache, target_offset and next_offset; then the
        // matches and the target. Not comefrom, not the counters.
        hash.bytes(&rest[..layout.comefrom]);
        hash.bytes(&rest[layout.counters + 16..next]);
        offset += next;
        count += 1;
    }
    if count != u64::from(info.num_entries) {
        return Err(bad(format!(
            "{count} entries but the table says {}",
            info.num_entries
        )));
    }
    Ok(hash.finish())
}

/// The per-process random key of the hash (see the module comment).
fn key() -> [u64; 2] {
    static KEY: OnceLock<[u64; 2]> = OnceLock::new();
    *KEY.get_or_init(|| {
        let state = std::collections::hash_map::RandomState::new();
        [state.hash_one(1u8), state.hash_one(2u8)]
    })
}

/// A fast keyed hash over a stream of bytes, 8 at a time: each word is
/// mixed into the state with a folded 64×64→128-bit multiply (as in wyhash
/// and foldhash), so the result depends on every byte and on their order.
/// SipHash (std's `DefaultHasher`) is sturdier but several times slower on
/// tens of megabytes, and this runs every poll.
struct Hash {
    state: u64,
    key: [u64; 2],
    /// Bytes not yet making a whole word, and how many.
    tail: [u8; 8],
    tail_len: usize,
    len: u64,
}

impl Hash {
    fn new() -> Hash {
        let key = key();
        Hash {
            state: key[0],
            key,
            tail: [0; 8],
            tail_len: 0,
            len: 0,
        }
    }

    fn fold(a: u64, b: u64) -> u64 {
        let product = u128::from(a) * u128::from(b);
        (product as u64) ^ ((product >> 64) as u64)
    }

    fn word(&mut self, w: u64) {
        self.state = Hash::fold(self.state ^ w, self.key[1] ^ 0x9e37_79b9_7f4a_7c15);
        self.len += 8;
    }

    fn bytes(&mut self, mut b: &[u8]) {
        if self.tail_len > 0 {
            let take = (8 - self.tail_len).min(b.len());
            self.tail[self.tail_len..self.tail_len + take].copy_from_slice(&b[..take]);
            self.tail_len += take;
            b = &b[take..];
            if self.tail_len < 8 {
                return;
            }
            self.word(u64::from_ne_bytes(self.tail));
            self.tail_len = 0;
        }
        let mut words = b.chunks_exact(8);
        for w in &mut words {
            let mut eight = [0u8; 8];
            eight.copy_from_slice(w);
            self.word(u64::from_ne_bytes(eight));
        }
        let rest = words.remainder();
        self.tail[..rest.len()].copy_from_slice(rest);
        self.tail_len = rest.len();
    }

    fn finish(mut self) -> u64 {
        let mut last = [0u8; 8];
        last[..self.tail_len].copy_from_slice(&self.tail[..self.tail_len]);
        let len = self.len + self.tail_len as u64;
        self.word(u64::from_ne_bytes(last));
        Hash::fold(self.state ^ len, self.key[0] ^ 0xe703_7ed1_a0b4_28db)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// One synthetic entry: an ip part filled with `fill`, the given
    /// comefrom and counters, then `tail` (matches and target) bytes.
    fn entry(family: Family, fill: u8, comefrom: u32, counters: [u64; 2], tail: &[u8]) -> Vec<u8> {
        let l = Layout::of(family);
        let next = l.size + tail.len();
        let mut e = vec![fill; l.comefrom];
        e[l.target_offset..l.target_offset + 2]
            .copy_from_slice(&u16::try_from(l.size).unwrap().to_ne_bytes());
        e[l.next_offset..l.next_offset + 2]
            .copy_from_slice(&u16::try_from(next).unwrap().to_ne_bytes());
        e.extend_from_slice(&comefrom.to_ne_bytes());
        e.resize(l.counters, 0);
        e.extend_from_slice(&counters[0].to_ne_bytes());
        e.extend_from_slice(&counters[1].to_ne_bytes());
        e.resize(l.size, 0);
        e.extend_from_slice(tail);
        assert_eq!(e.len(), next);
        e
    }

    /// A table of `entries` with info that matches them.
    fn table(entries: &[Vec<u8>]) -> (TableInfo, Vec<u8>) {
        let buf = entries.concat();
        let info = TableInfo {
            valid_hooks: 0b1110,
            hook_entry: [0, 0, 0, 0, 0],
            underflow: [0, 0, 0, 0, 0],
            num_entries: u32::try_from(entries.len()).unwrap(),
            size: u32::try_from(buf.len()).unwrap(),
        };
        (info, buf)
    }

    fn three(family: Family, counters: [u64; 2], comefrom: u32) -> Vec<Vec<u8>> {
        vec![
            entry(family, 1, comefrom, counters, &[7; 40]),
            entry(family, 2, comefrom, counters, &[8; 40]),
            entry(family, 3, comefrom, counters, &[9; 48]),
        ]
    }

    fn fp_of(family: Family, entries: &[Vec<u8>]) -> u64 {
        let (info, buf) = table(entries);
        fingerprint(family, &info, &buf).unwrap()
    }

    #[test]
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    fn layouts_match_the_kernel_headers() {
        // From offsetof() in <linux/netfilter_ipv4/ip_tables.h> and
        // <linux/netfilter_ipv6/ip6_tables.h>, compiled on x86_64.
        let v4 = Layout::of(Family::V4);
        assert_eq!(
            (
                v4.target_offset,
                v4.next_offset,
                v4.comefrom,
                v4.counters,
                v4.size
            ),
            (88, 90, 92, 96, 112)
        );
        let v6 = Layout::of(Family::V6);
        assert_eq!(
            (
                v6.target_offset,
                v6.next_offset,
                v6.comefrom,
                v6.counters,
                v6.size
            ),
            (140, 142, 144, 152, 168)
        );
        assert_eq!(GETINFO_LEN, 84);
        assert_eq!(GET_ENTRIES_HEAD, 40);
    }

    #[test]
    fn counters_and_comefrom_do_not_count() {
        for family in [Family::V4, Family::V6] {
            let base = fp_of(family, &three(family, [0, 0], 2));
            assert_eq!(fp_of(family, &three(family, [0, 0], 2)), base);
            assert_eq!(fp_of(family, &three(family, [17, 12345], 2)), base);
            assert_eq!(
                fp_of(family, &three(family, [u64::MAX, 1], 0x57ac_c001)),
                base
            );
        }
    }

    #[test]
    fn every_rule_byte_and_the_order_count() {
        for family in [Family::V4, Family::V6] {
            let l = Layout::of(family);
            let entries = three(family, [0, 0], 2);
            let base = fp_of(family, &entries);
            // Any byte outside comefrom and the counters (but not the
            // offsets, which would make the walk fail).
            let mut checked = 0;
            for i in 0..entries[1].len() {
                let skip = (l.target_offset..l.next_offset + 2).contains(&i)
                    || (l.comefrom..l.counters + 16).contains(&i);
                if skip {
                    continue;
                }
                let mut changed = entries.clone();
                changed[1][i] ^= 0x40;
                assert_ne!(fp_of(family, &changed), base, "byte {i}");
                checked += 1;
            }
            assert!(checked > 100);
            // Two entries of equal size swapped.
            let swapped = vec![entries[1].clone(), entries[0].clone(), entries[2].clone()];
            assert_ne!(fp_of(family, &swapped), base);
            // Hook offsets, which say where each built-in chain starts.
            let (mut info, buf) = table(&entries);
            info.hook_entry[1] = u32::try_from(entries[0].len()).unwrap();
            assert_ne!(fingerprint(family, &info, &buf).unwrap(), base);
            let (mut info, buf) = table(&entries);
            info.underflow[2] = 8;
            assert_ne!(fingerprint(family, &info, &buf).unwrap(), base);
        }
    }

    /// Spoils a good table: its entries and its info.
    type Spoil<'a> = Box<dyn Fn(&mut Vec<u8>, &mut TableInfo) + 'a>;

    fn set_u16(buf: &mut [u8], at: usize, value: u16) {
        buf[at..at + 2].copy_from_slice(&value.to_ne_bytes());
    }

    #[test]
    fn bad_offsets_end_the_walk_with_an_error() {
        for family in [Family::V4, Family::V6] {
            let l = Layout::of(family);
            let entries = three(family, [0, 0], 2);
            let (info, good) = table(&entries);
            let second = entries[0].len();
            let cases: Vec<(&str, Spoil)> = vec![
                (
                    "next_offset 0",
                    Box::new(|b, _| set_u16(b, second + l.next_offset, 0)),
                ),
                (
                    "next_offset below an entry",
                    Box::new(|b, _| {
                        set_u16(
                            b,
                            second + l.next_offset,
                            u16::try_from(l.size - 1).unwrap(),
                        )
                    }),
                ),
                (
                    "next_offset past the end",
                    Box::new(|b, _| set_u16(b, second + l.next_offset, u16::MAX)),
                ),
                (
                    "target_offset past next_offset",
                    Box::new(|b, _| set_u16(b, second + l.target_offset, u16::MAX)),
                ),
                (
                    "target_offset 0",
                    Box::new(|b, _| set_u16(b, second + l.target_offset, 0)),
                ),
                (
                    "truncated",
                    Box::new(|b, i| {
                        b.truncate(b.len() - 8);
                        i.size -= 8;
                    }),
                ),
                (
                    "a partial entry at the end",
                    Box::new(|b, i| {
                        b.extend_from_slice(&[0; 16]);
                        i.size += 16;
                    }),
                ),
                ("wrong entry count", Box::new(|_, i| i.num_entries += 1)),
                ("wrong size", Box::new(|_, i| i.size += 1)),
            ];
            for (what, spoil) in cases {
                let (mut buf, mut info) = (good.clone(), info);
                spoil(&mut buf, &mut info);
                let err = fingerprint(family, &info, &buf).unwrap_err();
                assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{what}: {err}");
            }
            // An empty table with no entries is consistent, if odd.
            assert!(fingerprint(family, &TableInfo::default(), &[]).is_ok());
        }
    }

    #[test]
    fn the_hash_does_not_depend_on_how_bytes_are_split() {
        let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let mut whole = Hash::new();
        whole.bytes(&data);
        let whole = whole.finish();
        for split in [1, 3, 7, 8, 9, 500, 999] {
            let mut parts = Hash::new();
            parts.bytes(&data[..split]);
            parts.bytes(&data[split..]);
            assert_eq!(parts.finish(), whole, "split at {split}");
        }
        // A trailing zero byte is not the same as no byte.
        let mut shorter = Hash::new();
        shorter.bytes(&data[..999]);
        let mut padded = Hash::new();
        padded.bytes(&data[..999]);
        padded.bytes(&[0]);
        assert_ne!(shorter.finish(), padded.finish());
    }

    #[test]
    fn names_are_checked_before_the_kernel_sees_them() {
        for name in ["", "a-name-that-is-far-too-long-for-xt", "fil\0ter"] {
            let err = read_table(Family::V4, name).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{name:?}");
        }
    }

    proptest! {
        #[test]
        fn any_buffer_gives_an_answer_not_a_panic(
            buf in proptest::collection::vec(any::<u8>(), 0..2000),
            num_entries in 0u32..20,
            v6 in any::<bool>(),
        ) {
            let family = if v6 { Family::V6 } else { Family::V4 };
            let info = TableInfo {
                num_entries,
                size: u32::try_from(buf.len()).unwrap(),
                ..TableInfo::default()
            };
            let _ = fingerprint(family, &info, &buf);
        }
    }
}
