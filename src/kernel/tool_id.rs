//! Which binaries the iptables tools are: the identity of each program as
//! PATH resolves it (its path, inode, size and change time), so that what
//! pyfw learned from one build of a tool is never taken for another's.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The file `program` runs as, found on PATH as `execvp(3)` would.
pub fn resolve(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
}

/// `program`'s identity: its resolved path and the file it finally is
/// (symbolic links followed, as exec follows them); empty when it cannot
/// be found.
pub fn identity(program: &str) -> String {
    let Some(path) = resolve(program) else {
        return String::new();
    };
    let real = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
    match std::fs::metadata(&real) {
        Ok(m) => format!(
            "{}={}:{}:{}:{}.{}",
            path.display(),
            real.display(),
            m.ino(),
            m.size(),
            m.ctime(),
            m.ctime_nsec()
        ),
        Err(_) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tool_is_known_by_the_file_it_runs_and_changes_with_it() {
        let dir = std::env::temp_dir().join(format!("pyfw-tool-id-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let tool = dir.join("iptables");
        std::fs::write(&tool, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        let name = tool.to_str().unwrap();
        let before = identity(name);
        assert!(before.starts_with(name), "{before}");
        std::fs::write(&tool, "#!/bin/sh\necho changed\n").unwrap();
        assert_ne!(identity(name), before, "a rewritten tool is another tool");
        assert_eq!(identity(&format!("{name}-missing")), "");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
