//! The `nft` tool and nf_tables' generation counter.
//!
//! - [`tables`]: which nftables tables the host has (`nft list tables`),
//!   for the lock-out lint (Docker's nftables firewall backend keeps its
//!   rules in the tables `ip docker-bridges` and `ip6 docker-bridges`);
//! - [`list`]: one table, as JSON or as text that loads back;
//! - [`load`]: a script, or a dry run of it (`nft -c`: the kernel checks
//!   the whole transaction and commits nothing);
//! - [`learn`]: the kernel's rendering of scripts, in a private network
//!   namespace;
//! - [`generation`]: the ruleset's generation, which every committed
//!   nf_tables transaction (any table's, iptables-nft's too) moves on.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::kernel::backend::{Error, Listing};
use crate::kernel::process::Runner;
use crate::wishes::nft::NftFamily;

/// The host's nftables tables as (family, name), from `nft list tables`;
/// empty when `nft` is missing or fails, which is never an error: the lint
/// then knows of no table.
pub fn tables(runner: &Runner) -> Vec<(String, String)> {
    tables_from(runner, "nft")
}

fn tables_from(runner: &Runner, program: &str) -> Vec<(String, String)> {
    let args = ["list", "tables"].map(String::from);
    match runner.exec(program, &args, None) {
        Ok(out) => parse_tables(&out.stdout),
        Err(e) => {
            tracing::debug!("not knowing the nftables tables: {e}");
            Vec::new()
        }
    }
}

/// The `table FAMILY NAME` lines of `nft list tables`.
pub fn parse_tables(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            match (words.next(), words.next(), words.next(), words.next()) {
                (Some("table"), Some(family), Some(name), None) => {
                    Some((family.to_string(), name.to_string()))
                }
                _ => None,
            }
        })
        .collect()
}

/// One table as `listing` prints it; `None` when the table does not exist.
pub fn list(
    runner: &Runner,
    family: NftFamily,
    name: &str,
    listing: Listing,
) -> Result<Option<String>, Error> {
    let flag = match listing {
        Listing::Json => "-j",
        Listing::Text => "-s",
    };
    let args = [flag, "list", "table", family.word(), name].map(String::from);
    match runner.exec("nft", &args, None) {
        Ok(out) => Ok(Some(out.stdout)),
        Err(Error::Failed { stderr, .. }) if absent(&stderr) => Ok(None),
        Err(e) => Err(e),
    }
}

/// What nft says when the table listed is not there.
fn absent(stderr: &str) -> bool {
    stderr.contains("No such file or directory") && stderr.contains("list table")
}

/// Loads a script (`nft -f -`), or with `check` only asks the kernel
/// whether it would (`nft -c -f -`: the whole transaction is checked, and
/// nothing is committed or announced).
pub fn load(runner: &Runner, script: &str, check: bool) -> Result<(), Error> {
    let mut args: Vec<String> = Vec::new();
    if check {
        args.push("-c".into());
    }
    args.extend(crate::plan::nft::SCRIPT_ARGS.map(String::from));
    runner.exec("nft", &args, Some(script)).map(|_| ())
}

/// What renders a table: the first line of `nft --version` (`nftables
/// v1.0.6 (Lester Gooch #5)`) and the kernel's release, read once per
/// process; parts that cannot be read are empty.
pub fn version(runner: &Runner) -> String {
    static VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    VERSION
        .get_or_init(|| {
            let args = ["--version".to_string()];
            let nft = match runner.exec("nft", &args, None) {
                Ok(out) => out.stdout.lines().next().unwrap_or("").trim().to_string(),
                Err(_) => String::new(),
            };
            let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
            format!("{nft} / Linux {}", kernel.trim())
        })
        .clone()
}

/// The kernel's rendering of each script (`nft -j list table` after `nft
/// -f`), learned in a network namespace of a thread of its own
/// (`unshare(CLONE_NEWNET)`), whose tables are empty and whose packets are
/// none: nothing on the host changes and nothing is announced. Each item
/// is the table's family, name and script. Fails where pyfw may not make
/// a namespace (the systemd unit's `RestrictNamespaces=`), and for rules
/// that need what only the host has (`iif eth0` names an interface the
/// namespace lacks).
pub fn learn(
    runner: &Runner,
    scripts: &[(NftFamily, String, String)],
) -> Result<Vec<String>, Error> {
    let unshare_err = |source: std::io::Error| Error::Spawn {
        command: "unshare(CLONE_NEWNET)".into(),
        source,
    };
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: unshare(2) with CLONE_NEWNET changes the network
                // namespace of the calling thread only (this one, which
                // ends with this closure); the processes it starts inherit
                // it.
                if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                    return Err(unshare_err(std::io::Error::last_os_error()));
                }
                let mut out = Vec::with_capacity(scripts.len());
                for (family, name, script) in scripts {
                    load(runner, script, false)?;
                    let listed = list(runner, *family, name, Listing::Json)?;
                    out.push(listed.ok_or_else(|| Error::Empty {
                        command: format!("nft -j list table {family} {name}"),
                        expected: "table".into(),
                    })?);
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

/// Whether this process may make the private namespace [`learn`] needs:
/// asked once (a thread that calls `unshare(CLONE_NEWNET)` and ends).
pub fn can_learn() -> bool {
    static CAN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CAN.get_or_init(|| {
        std::thread::spawn(|| {
            // SAFETY: unshare(2) with CLONE_NEWNET changes the network
            // namespace of this thread only, which ends at once.
            unsafe { libc::unshare(libc::CLONE_NEWNET) == 0 }
        })
        .join()
        .unwrap_or(false)
    })
}

// From <linux/netlink.h>, <linux/netfilter/nfnetlink.h> and
// <linux/netfilter/nf_tables.h>.
const NETLINK_NETFILTER: libc::c_int = 12;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWGEN: u16 = 15;
const NFT_MSG_GETGEN: u16 = 16;
const NFTA_GEN_ID: u16 = 1;

/// The ruleset's generation in this network namespace (`NFT_MSG_GETGEN`):
/// it moves on with every committed nf_tables transaction, whoever commits
/// it, and with nothing else (counters, packets adding to a set, elements
/// timing out do not move it). One netlink round trip, no process: what
/// lets a poll of an unchanged host skip listing an owned table. `None`
/// when the kernel cannot be asked.
pub fn generation() -> Option<u32> {
    let socket = netlink_socket()?;
    let request = getgen_request();
    // SAFETY: send(2) of a buffer of the length given.
    let sent = unsafe {
        libc::send(
            socket.as_raw_fd(),
            request.as_ptr().cast(),
            request.len(),
            0,
        )
    };
    if sent < 0 {
        return None;
    }
    let mut buf = vec![0u8; 8192];
    for _ in 0..8 {
        // SAFETY: recv(2) into a buffer of the length given.
        let n = unsafe { libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let n = usize::try_from(n).ok()?;
        if let Some(found) = parse_generation(&buf[..n.min(buf.len())]) {
            return found;
        }
    }
    None
}

/// A netlink socket for nf_tables requests, with a receive timeout.
fn netlink_socket() -> Option<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            NETLINK_NETFILTER,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is a new descriptor nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let timeout = libc::timeval {
        tv_sec: 2,
        tv_usec: 0,
    };
    // SAFETY: a zeroed sockaddr_nl is valid; bind(2) and setsockopt(2) read
    // the sizes given.
    let ok = unsafe {
        let mut addr: libc::sockaddr_nl = std::mem::zeroed();
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        ) == 0
            && libc::bind(
                socket.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            ) == 0
    };
    ok.then_some(socket)
}

/// `NFT_MSG_GETGEN`: a netlink header and an nfgenmsg (AF_UNSPEC,
/// NFNETLINK_V0, resource 0).
fn getgen_request() -> Vec<u8> {
    let mut out = Vec::with_capacity(20);
    out.extend_from_slice(&20u32.to_ne_bytes());
    out.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN).to_ne_bytes());
    out.extend_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    out.extend_from_slice(&1u32.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out
}

/// The generation in a datagram: `Some(Some(id))` for the answer,
/// `Some(None)` for an error, `None` when the datagram holds neither.
fn parse_generation(buf: &[u8]) -> Option<Option<u32>> {
    let mut off = 0;
    while off + 16 <= buf.len() {
        let len = u32::from_ne_bytes(buf[off..off + 4].try_into().ok()?) as usize;
        let kind = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().ok()?);
        if len < 16 || off + len > buf.len() {
            return None;
        }
        let body = &buf[off + 16..off + len];
        off += (len + 3) & !3;
        if kind == libc::NLMSG_ERROR as u16 {
            return Some(None);
        }
        if kind != ((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN) || body.len() < 4 {
            continue;
        }
        let mut attrs = &body[4..];
        while attrs.len() >= 4 {
            let alen = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
            let akind = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
            if alen < 4 || alen > attrs.len() {
                break;
            }
            if akind == NFTA_GEN_ID && alen >= 8 {
                let id = attrs[4..8].try_into().ok().map(u32::from_be_bytes);
                return Some(id);
            }
            attrs = &attrs[((alen + 3) & !3).min(attrs.len())..];
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_table_lines_and_nothing_else() {
        let text = "table ip filter\ntable ip docker-bridges\ntable ip6 docker-bridges\n\
                    # Warning: table ip nat is managed by iptables-nft, do not touch!\n\n";
        let pair = |f: &str, n: &str| (f.to_string(), n.to_string());
        assert_eq!(
            parse_tables(text),
            [
                pair("ip", "filter"),
                pair("ip", "docker-bridges"),
                pair("ip6", "docker-bridges")
            ]
        );
    }

    #[test]
    fn the_generation_is_read_from_newgen_and_errors_are_none() {
        let mut msg = Vec::new();
        let body = [
            [0u8, 0, 0, 0].as_slice(),
            &8u16.to_ne_bytes(),
            &1u16.to_ne_bytes(),
            &42u32.to_be_bytes(),
        ]
        .concat();
        msg.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN).to_ne_bytes());
        msg.extend_from_slice(&[0; 10]);
        msg.extend_from_slice(&body);
        assert_eq!(parse_generation(&msg), Some(Some(42)));
        let mut error = Vec::new();
        error.extend_from_slice(&20u32.to_ne_bytes());
        error.extend_from_slice(&(libc::NLMSG_ERROR as u16).to_ne_bytes());
        error.extend_from_slice(&[0; 14]);
        assert_eq!(parse_generation(&error), Some(None));
        assert_eq!(parse_generation(&msg[..10]), None);
    }

    #[test]
    fn a_missing_nft_is_no_table() {
        let missing = tables_from(&Runner::default(), "/nonexistent/pyfw-test/nft");
        assert_eq!(missing, []);
    }
}
