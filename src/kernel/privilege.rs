//! Whether this process may read and change netfilter.

use crate::wishes::secure::euid;

/// Whether this process holds CAP_NET_ADMIN (which root has, unless its
/// capabilities were dropped); `None` when `/proc` does not say.
pub fn has_net_admin() -> Option<bool> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    let caps = u64::from_str_radix(hex.trim(), 16).ok()?;
    // CAP_NET_ADMIN is capability 12 (linux/capability.h).
    Some(caps & (1 << 12) != 0)
}

/// This process may not read or change netfilter.
#[derive(Debug, thiserror::Error)]
#[error(
    "reading and changing netfilter needs root (CAP_NET_ADMIN), and this process (euid {euid}) \
     does not have it; run pyfw as root, or use `plan`/`check`/`state` with saved dumps \
     (--iptables-save, --ipset-save), which need no privilege"
)]
pub struct NoPrivilege {
    pub euid: u32,
}

/// An error for commands that read or change netfilter, when this process
/// cannot.
pub fn require_net_admin() -> Result<(), NoPrivilege> {
    match has_net_admin() {
        Some(false) => Err(NoPrivilege { euid: euid() }),
        _ => Ok(()),
    }
}
