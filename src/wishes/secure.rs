//! What pyfw trusts, and how much it reads.
//!
//! pyfw runs as root and turns the wishes file into firewall rules, so the
//! file is as powerful as root: whoever can write it (or rename things in
//! its directory) decides what reaches the host. Like sshd's `StrictModes`,
//! pyfw refuses a wishes file unless the file and its directory are owned
//! by root (or by the user running pyfw, for offline plans) and are not
//! writable by group or others; `--allow-insecure-wishes` (or
//! `PYFW_ALLOW_INSECURE_WISHES=1`) overrides that, for the CLI and the
//! daemon alike.
//!
//! Budgets: a wishes file larger than [`MAX_WISHES_BYTES`] is refused before
//! it is parsed, and the YAML parser runs with [`yaml_options`]' limits
//! (nodes, depth, aliases, scalar bytes), so a hostile or broken file cannot
//! exhaust memory. What the kernel tools print is capped in
//! [`crate::kernel::System::exec`].

use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// The largest wishes file pyfw reads: 64 MiB, room for a set of a few
/// million members (a 1,000,000-network blocklist is some 22 MB of YAML).
pub const MAX_WISHES_BYTES: u64 = 64 << 20;

/// The environment variable that has the same effect as
/// `--allow-insecure-wishes`.
pub const ALLOW_INSECURE_ENV: &str = "PYFW_ALLOW_INSECURE_WISHES";

static ALLOW_INSECURE: AtomicBool = AtomicBool::new(false);

/// Sets, for this process, whether a wishes file that fails the ownership
/// and mode checks is read anyway (with a warning).
pub fn allow_insecure_wishes(allow: bool) {
    ALLOW_INSECURE.store(allow, Ordering::SeqCst);
}

fn insecure_allowed() -> bool {
    ALLOW_INSECURE.load(Ordering::SeqCst)
}

/// The effective uid of this process.
pub fn euid() -> u32 {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

/// Checks that `path` may be trusted by a process running as `euid`: the
/// file it resolves to, its directory, and the directory of `path` itself
/// (when it is a symlink) are owned by root or `euid` and not writable by
/// group or others. Returns every problem found.
pub fn check_wishes_path(path: &Path, euid: u32) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    let real = match std::fs::canonicalize(path) {
        Ok(p) => p,
        // Unreadable or missing: the read reports that with its own words.
        Err(_) => return Ok(()),
    };
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(d) = real.parent() {
        dirs.push(d.to_path_buf());
    }
    let link_dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if let Ok(d) = std::fs::canonicalize(link_dir)
        && !dirs.contains(&d)
    {
        dirs.push(d);
    }
    let mut check = |p: &Path, what: &str| match std::fs::metadata(p) {
        Ok(meta) => {
            if meta.uid() != 0 && meta.uid() != euid {
                problems.push(format!(
                    "{what} {} is owned by uid {}, not root (fix: chown root {})",
                    p.display(),
                    meta.uid(),
                    p.display()
                ));
            }
            let mode = meta.mode() & 0o7777;
            if mode & 0o022 != 0 && !(trust_read_only_mounts() && read_only_mount(p)) {
                problems.push(format!(
                    "{what} {} is writable by {} (mode {mode:04o}; fix: chmod go-w {})",
                    p.display(),
                    match (mode & 0o020 != 0, mode & 0o002 != 0) {
                        (true, true) => "group and others",
                        (true, false) => "its group",
                        _ => "others",
                    },
                    p.display()
                ));
            }
        }
        Err(e) => problems.push(format!("cannot check {what} {}: {e}", p.display())),
    };
    check(&real, "the file");
    for d in &dirs {
        check(d, "the directory");
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// The environment variable that lets a read-only mount count as not
/// writable, whatever its mode bits (see `read_only_mount`).
pub const TRUST_READ_ONLY_MOUNTS_ENV: &str = "PYFW_TRUST_READ_ONLY_MOUNTS";

fn trust_read_only_mounts() -> bool {
    std::env::var(TRUST_READ_ONLY_MOUNTS_ENV).is_ok_and(|v| v.trim() == "1")
}

/// Whether `path` lies on a read-only mount, where mode bits that say
/// "writable" are moot for this mount: nothing writes through it. This is
/// how a Kubernetes ConfigMap volume looks from inside the pod (the kubelet
/// makes its directory 0777, kubernetes/kubernetes#125876, and mounts it
/// read-only). It is an opt-in ([`TRUST_READ_ONLY_MOUNTS_ENV`]=1), not the
/// default: a read-only bind mount says nothing of other mounts of the same
/// directory, and a world-writable directory bind-mounted read-only would
/// still be writable through its other path. Ownership is still checked.
fn read_only_mount(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a NUL-terminated path and `st` is valid for writes of
    // one statvfs, which statvfs(3) fills on success; it is read only then.
    let ok = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) } == 0;
    // SAFETY: initialised by the successful call above.
    ok && unsafe { st.assume_init() }.f_flag & libc::ST_RDONLY != 0
}

/// Reads the wishes file with the checks above and the size budget. The
/// error's text is complete (it names the file).
pub fn read_wishes(path: &Path) -> io::Result<Vec<u8>> {
    read_wishes_with_metadata(path).map(|(text, _)| text)
}

/// [`read_wishes`], with the metadata of the file that was read (taken from
/// the open file, so it describes these bytes even if the path is replaced
/// meanwhile): the daemon compares modification times and inodes.
pub fn read_wishes_with_metadata(path: &Path) -> io::Result<(Vec<u8>, std::fs::Metadata)> {
    if let Err(problems) = check_wishes_path(path, euid()) {
        if insecure_allowed() {
            tracing::warn!(
                "{}: insecure, read anyway (--allow-insecure-wishes): {}",
                path.display(),
                problems.join("; ")
            );
        } else {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "refusing to use it: whoever can write it controls the firewall: {}; or pass \
                     --allow-insecure-wishes",
                    problems.join("; ")
                ),
            ));
        }
    }
    let file = open_regular(path)?;
    let too_large = || {
        io::Error::new(
            io::ErrorKind::FileTooLarge,
            format!(
                "is larger than {} MiB; refusing to read it",
                MAX_WISHES_BYTES >> 20
            ),
        )
    };
    let meta = file.metadata()?;
    if meta.len() > MAX_WISHES_BYTES {
        return Err(too_large());
    }
    // Sized from the file: a 22 MB file read into a growing buffer took
    // 34 MB. (It may grow or shrink meanwhile: that is only slower.)
    let mut text = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0).saturating_add(1));
    file.take(MAX_WISHES_BYTES + 1).read_to_end(&mut text)?;
    if text.len() as u64 > MAX_WISHES_BYTES {
        return Err(too_large());
    }
    Ok((text, meta))
}

/// Opens `path` for reading if it is a regular file, without ever waiting.
///
/// A plain `open(2)` of a FIFO blocks until a writer opens it: a FIFO put
/// at the wishes path (by mistake, or by someone who wants pyfw stuck)
/// would hang the CLI and the daemon's reconcile thread for good. So the
/// file is opened with `O_NONBLOCK` (an open that cannot wait; `O_CLOEXEC`
/// as every Rust open), its type is taken from the open descriptor
/// (`fstat`, so that it is the type of what was opened, not of what the
/// path names a moment later), anything but a regular file is refused, and
/// `O_NONBLOCK` is cleared again before reading. Not `O_NOFOLLOW`: the
/// path may be a symlink (a Kubernetes ConfigMap's `..data` link), which
/// [`check_wishes_path`] checks where it points.
fn open_regular(path: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    use std::os::unix::io::AsRawFd;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let kind = file.metadata()?.file_type();
    let what = if kind.is_file() {
        None
    } else if kind.is_fifo() {
        Some("a FIFO")
    } else if kind.is_dir() {
        Some("a directory")
    } else if kind.is_socket() {
        Some("a socket")
    } else if kind.is_char_device() {
        Some("a character device")
    } else if kind.is_block_device() {
        Some("a block device")
    } else {
        Some("of an unknown type")
    };
    if let Some(what) = what {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not a regular file ({what}); pyfw reads wishes only from regular files"),
        ));
    }
    let fd = file.as_raw_fd();
    // SAFETY: fcntl(2) on a descriptor this function owns (open above),
    // reading then setting its status flags; no memory is passed.
    let cleared = unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) == 0
    };
    if !cleared {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

/// The YAML parser's limits for a wishes file: generous for any real file
/// (three million nodes are some 1,000,000 rules, or a set of 3,000,000
/// members), small enough that no file makes pyfw use more than a few
/// hundred MiB, or a GiB for the largest file read node by node (the long
/// runs of plain members that make most big files are lifted out of the
/// parser's sight: `wishes::lift`).
pub fn yaml_options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_documents = 1;
    budget.max_depth = 32;
    budget.max_nodes = 3_000_000;
    budget.max_events = 12_000_000;
    budget.max_aliases = 1_000;
    budget.max_anchors = 1_000;
    budget.max_recorded_anchor_events = 100_000;
    budget.max_total_scalar_bytes = MAX_WISHES_BYTES as usize;
    budget.max_recorded_anchor_bytes = MAX_WISHES_BYTES as usize;
    budget.max_reader_input_bytes = Some(MAX_WISHES_BYTES as usize);
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn group_or_world_writable_files_and_directories_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        chmod(dir.path(), 0o755);
        let file = dir.path().join("wishes.yaml");
        std::fs::write(&file, "pyfw_wishes: {}\n").unwrap();
        chmod(&file, 0o644);
        let me = euid();
        assert_eq!(check_wishes_path(&file, me), Ok(()));

        chmod(&file, 0o664);
        let e = check_wishes_path(&file, me).unwrap_err();
        assert!(
            e[0].contains("writable by its group") && e[0].contains("0664"),
            "{e:?}"
        );
        chmod(&file, 0o646);
        let e = check_wishes_path(&file, me).unwrap_err();
        assert!(e[0].contains("writable by others"), "{e:?}");
        chmod(&file, 0o600);

        // A sticky world-writable directory (like /tmp) is no better: anyone
        // may create the file before root does.
        chmod(dir.path(), 0o1777);
        let e = check_wishes_path(&file, me).unwrap_err();
        assert!(e[0].contains("the directory"), "{e:?}");
        chmod(dir.path(), 0o755);

        // Owned by someone else: 4242 is neither root nor this process.
        assert!(check_wishes_path(&file, me).is_ok());
        if me == 0 {
            std::os::unix::fs::chown(&file, Some(4242), None).unwrap();
            let e = check_wishes_path(&file, 0).unwrap_err();
            assert!(e[0].contains("owned by uid 4242"), "{e:?}");
        }
    }

    #[test]
    fn a_symlink_is_checked_where_it_points_and_where_it_lives() {
        let dir = tempfile::tempdir().unwrap();
        chmod(dir.path(), 0o755);
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        chmod(&data, 0o777);
        std::fs::write(data.join("wishes.yaml"), "pyfw_wishes: {}\n").unwrap();
        let link = dir.path().join("wishes.yaml");
        std::os::unix::fs::symlink("data/wishes.yaml", &link).unwrap();
        let e = check_wishes_path(&link, euid()).unwrap_err();
        assert!(e.iter().any(|p| p.contains("/data is writable")), "{e:?}");
        chmod(&data, 0o755);
        assert_eq!(check_wishes_path(&link, euid()), Ok(()));
    }

    #[test]
    fn reading_refuses_insecure_and_oversized_files() {
        let dir = tempfile::tempdir().unwrap();
        chmod(dir.path(), 0o700);
        let file = dir.path().join("wishes.yaml");
        std::fs::write(&file, "pyfw_wishes: {}\n").unwrap();
        chmod(&file, 0o666);
        let e = read_wishes(&file).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert!(e.to_string().contains("--allow-insecure-wishes"), "{e}");
        chmod(&file, 0o600);
        assert_eq!(read_wishes(&file).unwrap(), b"pyfw_wishes: {}\n");
        let f = std::fs::File::create(&file).unwrap();
        f.set_len(MAX_WISHES_BYTES + 1).unwrap();
        let e = read_wishes(&file).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::FileTooLarge);
        assert!(e.to_string().contains("64 MiB"), "{e}");
    }

    #[test]
    fn only_regular_files_are_read_and_a_fifo_is_never_waited_on() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        chmod(dir.path(), 0o700);
        let fifo = dir.path().join("wishes.yaml");
        let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: mkfifo(3) with a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // A blocking open would wait here for a writer, for ever.
        let e = read_wishes(&fifo).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(
            e.to_string(),
            "not a regular file (a FIFO); pyfw reads wishes only from regular files"
        );
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        chmod(&sub, 0o700);
        let e = read_wishes(&sub).unwrap_err();
        assert!(e.to_string().contains("(a directory)"), "{e}");
        // A symlink to a regular file is read (a ConfigMap's `..data`).
        let real = sub.join("real.yaml");
        std::fs::write(&real, "pyfw_wishes: {}\n").unwrap();
        chmod(&real, 0o600);
        let link = dir.path().join("link.yaml");
        std::os::unix::fs::symlink("sub/real.yaml", &link).unwrap();
        let (text, meta) = read_wishes_with_metadata(&link).unwrap();
        assert_eq!(text, b"pyfw_wishes: {}\n");
        assert!(meta.is_file());
    }

    #[test]
    fn the_yaml_budget_stops_an_alias_bomb() {
        // A billion laughs inside `rules`, which pyfw reads as free-form YAML.
        let mut items = vec!["&a [x, x, x, x, x, x, x, x, x, x]".to_string()];
        for i in 0..9 {
            let prev = if i == 0 {
                "a".to_string()
            } else {
                format!("l{}", i - 1)
            };
            let refs = vec![format!("*{prev}"); 10].join(", ");
            items.push(format!("&l{i} [{refs}]"));
        }
        let bomb = format!(
            "pyfw_wishes:\n  iptables:\n    filter:\n      INPUT:\n        rules: [{}]\n",
            items.join(", ")
        );
        // Stopped by the budget (not by running out of memory or time,
        // which a test could not tell apart from a slow machine).
        let r = crate::wishes::parse(&bomb, Path::new("bomb.yaml"));
        let e = r.expect_err("a billion laughs must not load").to_string();
        assert!(e.contains("bomb.yaml:5") && e.contains("budget"), "{e}");
    }
}
