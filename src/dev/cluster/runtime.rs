//! Finding the installed peers: a Java 17 runtime and the classpaths of the
//! two server lines that `scripts/install-peers.sh` resolves from Maven
//! Central into `$RMQ_PEERS_DIR/{v4,v5}` (default `~/.cache/rmq-bridge-peers`).
//! Owns the search order; knows nothing of processes.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

use super::DevClusterError;

/// The two Apache RocketMQ lines a test cluster can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerLine {
    /// 4.9.x: `NamesrvStartup` + `BrokerStartup` (the bridge's source side).
    V4,
    /// 5.x: `NamesrvStartup` + `BrokerStartup` + `ProxyStartup -pm cluster`.
    V5,
}

impl PeerLine {
    /// Directory name under the peers' cache.
    pub fn dir_name(self) -> &'static str {
        match self {
            Self::V4 => "v4",
            Self::V5 => "v5",
        }
    }
}

/// A Java runtime and the classpath of one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRuntime {
    pub line: PeerLine,
    pub java: PathBuf,
    /// `:`-separated jar paths, as written by the install script.
    pub classpath: String,
    /// The line's version (`4.9.7`, `5.5.0`).
    pub version: String,
}

impl PeerRuntime {
    /// Finds the runtime of `line`: `java` from `$RMQ_PEERS_JAVA`, else
    /// `$JAVA_HOME/bin/java`, else `$PATH`; the classpath from
    /// `$RMQ_PEERS_DIR/<line>/classpath`.
    pub fn locate(line: PeerLine) -> Result<Self, DevClusterError> {
        Self::locate_in(&peers_dir(), line)
    }

    pub fn locate_in(dir: &Path, line: PeerLine) -> Result<Self, DevClusterError> {
        let line_dir = dir.join(line.dir_name());
        let missing = |what: String| DevClusterError::MissingPeers {
            what,
            dir: line_dir.clone(),
        };
        let classpath = fs::read_to_string(line_dir.join("classpath"))
            .map(|text| text.trim().to_string())
            .map_err(|error| {
                missing(format!("the {} classpath file ({error})", line.dir_name()))
            })?;
        if classpath.is_empty() {
            return Err(missing(format!("jars of the {} line", line.dir_name())));
        }
        if let Some(jar) = classpath.split(':').find(|jar| !Path::new(jar).is_file()) {
            return Err(missing(format!("{jar}, listed in its classpath file,")));
        }
        let version = fs::read_to_string(line_dir.join("version"))
            .map(|text| text.trim().to_string())
            .unwrap_or_default();
        Ok(Self {
            line,
            java: locate_java()?,
            classpath,
            version,
        })
    }
}

/// The peers' cache: `$RMQ_PEERS_DIR`, else `~/.cache/rmq-bridge-peers`.
pub fn peers_dir() -> PathBuf {
    if let Some(dir) = env::var_os("RMQ_PEERS_DIR").filter(|dir| !dir.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    home.join(".cache").join("rmq-bridge-peers")
}

fn locate_java() -> Result<PathBuf, DevClusterError> {
    let mut candidates = Vec::new();
    if let Some(java) = env::var_os("RMQ_PEERS_JAVA").filter(|v| !v.is_empty()) {
        candidates.push(PathBuf::from(java));
    } else {
        if let Some(home) = env::var_os("JAVA_HOME").filter(|v| !v.is_empty()) {
            candidates.push(PathBuf::from(home).join("bin").join("java"));
        }
        if let Some(path) = env::var_os("PATH") {
            candidates.extend(env::split_paths(&path).map(|dir| dir.join("java")));
        }
    }
    candidates
        .iter()
        .find(|candidate| is_executable(candidate))
        .cloned()
        .ok_or_else(|| DevClusterError::MissingPeers {
            what: "a `java` executable (Java 17 or newer)".to_string(),
            dir: candidates
                .first()
                .cloned()
                .unwrap_or_else(|| PathBuf::from("$PATH")),
        })
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

    #[test]
    fn missing_line_is_named_with_the_remedy() {
        let dir = tempfile::tempdir().unwrap();
        let error = PeerRuntime::locate_in(dir.path(), PeerLine::V5).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("v5"), "{message}");
        assert!(message.contains("scripts/install-peers.sh"), "{message}");
    }

    #[test]
    fn a_jar_gone_from_the_cache_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let line = dir.path().join("v4");
        fs::create_dir_all(&line).unwrap();
        let jar = line.join("a.jar");
        fs::write(&jar, "").unwrap();
        let gone = line.join("gone.jar");
        fs::write(
            line.join("classpath"),
            format!("{}:{}\n", jar.display(), gone.display()),
        )
        .unwrap();
        let message = PeerRuntime::locate_in(dir.path(), PeerLine::V4)
            .unwrap_err()
            .to_string();
        assert!(message.contains("gone.jar"), "{message}");
    }
}
