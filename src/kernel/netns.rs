//! The network namespace a thread is in: netfilter state, and so every
//! lock, mark and cache of pyfw's, belongs to one.

use std::os::fd::AsRawFd;

/// The calling thread's network namespace, as its inode number.
pub fn netns_id() -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/thread-self/ns/net")
        .ok()
        .map(|m| m.ino())
}

/// This network namespace's cookie (never reused, unlike its inode).
pub fn netns_cookie() -> Option<u64> {
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

/// A name for this network namespace that no other namespace has while
/// it lives, for the files pyfw keeps per namespace: its cookie, or where
/// the kernel has none (before Linux 5.14) the device and inode number of
/// `/proc/thread-self/ns/net`.
pub fn netns_key() -> Option<String> {
    if let Some(cookie) = netns_cookie() {
        return Some(cookie.to_string());
    }
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata("/proc/thread-self/ns/net").ok()?;
    Some(format!("dev{}-ino{}", meta.dev(), meta.ino()))
}
