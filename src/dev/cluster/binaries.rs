//! Finding the installed peer binaries (`scripts/install-peers.sh` puts them
//! in `~/.cargo/bin`). Owns the search order; knows nothing of processes.

use std::env;
use std::path::{Path, PathBuf};

use super::DevClusterError;

/// File names of the three peer executables (crates `rocketmq-namesrv`,
/// `rocketmq-broker`, `rocketmq-proxy`, version 1.0.0).
pub const NAMESRV_BINARY: &str = "rocketmq-namesrv-rust";
pub const BROKER_BINARY: &str = "rocketmq-broker-rust";
pub const PROXY_BINARY: &str = "rocketmq-proxy-rust";

/// Absolute paths of the peer executables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerBinaries {
    pub namesrv: PathBuf,
    pub broker: PathBuf,
    pub proxy: PathBuf,
}

impl PeerBinaries {
    /// Finds the peers.
    ///
    /// If `$RMQ_PEERS_BIN` is set, all three must be in that directory (an
    /// explicit choice is never silently replaced by another install).
    /// Otherwise each binary is looked up in `$RMQ_PEERS_ROOT/bin`,
    /// `$CARGO_HOME/bin`, `~/.cargo/bin`, then every `$PATH` entry.
    pub fn locate() -> Result<Self, DevClusterError> {
        Self::locate_in(&search_dirs())
    }

    /// Finds each binary in the first of `dirs` that has it.
    pub fn locate_in(dirs: &[PathBuf]) -> Result<Self, DevClusterError> {
        Ok(Self {
            namesrv: find_in(dirs, NAMESRV_BINARY)?,
            broker: find_in(dirs, BROKER_BINARY)?,
            proxy: find_in(dirs, PROXY_BINARY)?,
        })
    }
}

/// Finds one peer binary with the search order of [`PeerBinaries::locate`].
pub fn locate_binary(binary: &'static str) -> Result<PathBuf, DevClusterError> {
    find_in(&search_dirs(), binary)
}

fn find_in(dirs: &[PathBuf], binary: &'static str) -> Result<PathBuf, DevClusterError> {
    dirs.iter()
        .map(|dir| dir.join(binary))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| DevClusterError::MissingBinary {
            binary,
            searched: dirs
                .iter()
                .map(|dir| dir.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

fn search_dirs() -> Vec<PathBuf> {
    match env::var_os("RMQ_PEERS_BIN").filter(|dir| !dir.is_empty()) {
        Some(dir) => vec![PathBuf::from(dir)],
        None => default_search_dirs(),
    }
}

fn default_search_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(root) = env::var_os("RMQ_PEERS_ROOT").filter(|root| !root.is_empty()) {
        dirs.push(PathBuf::from(root).join("bin"));
    }
    if let Some(cargo_home) = env::var_os("CARGO_HOME").filter(|home| !home.is_empty()) {
        dirs.push(PathBuf::from(cargo_home).join("bin"));
    }
    if let Some(home) = env::var_os("HOME").filter(|home| !home.is_empty()) {
        dirs.push(PathBuf::from(home).join(".cargo").join("bin"));
    }
    if let Some(path) = env::var_os("PATH") {
        dirs.extend(env::split_paths(&path).filter(|dir| !dir.as_os_str().is_empty()));
    }
    let mut unique = Vec::with_capacity(dirs.len());
    for dir in dirs {
        if !unique.contains(&dir) {
            unique.push(dir);
        }
    }
    unique
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_binary(dir: &Path, name: &str) {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn missing_binary_is_named_with_the_remedy() {
        let dir = tempfile::tempdir().unwrap();
        fake_binary(dir.path(), NAMESRV_BINARY);
        let error = PeerBinaries::locate_in(&[dir.path().to_path_buf()]).unwrap_err();
        let message = error.to_string();
        assert!(message.contains(BROKER_BINARY), "{message}");
        assert!(message.contains("scripts/install-peers.sh"), "{message}");
        assert!(
            message.contains(&dir.path().display().to_string()),
            "{message}"
        );
    }

    #[test]
    fn each_binary_comes_from_the_first_directory_that_has_it() {
        let first = tempfile::tempdir().unwrap();
        let second = tempfile::tempdir().unwrap();
        fake_binary(first.path(), BROKER_BINARY);
        for name in [NAMESRV_BINARY, BROKER_BINARY, PROXY_BINARY] {
            fake_binary(second.path(), name);
        }
        // Not executable: must be skipped.
        std::fs::write(first.path().join(PROXY_BINARY), "").unwrap();
        let dirs = [first.path().to_path_buf(), second.path().to_path_buf()];
        let found = PeerBinaries::locate_in(&dirs).unwrap();
        assert_eq!(found.broker, first.path().join(BROKER_BINARY));
        assert_eq!(found.namesrv, second.path().join(NAMESRV_BINARY));
        assert_eq!(found.proxy, second.path().join(PROXY_BINARY));
    }
}
