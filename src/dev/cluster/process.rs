//! One peer process: spawn it with a clean environment, wait until it is
//! really ready, stop it gracefully or kill it, and read its log. Owns the
//! `Child`; knows nothing of clusters or config contents.

use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{DevClusterError, PeerLog};

const POLL: Duration = Duration::from_millis(100);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(300);
/// Lines of a peer's log quoted in errors.
pub const LOG_TAIL_LINES: usize = 40;
/// ERROR lines of a failed start quoted in errors.
const ERROR_LINES: usize = 8;
/// Starts every start's section of a peer log.
const BANNER: &str = "===== devcluster: starting ";

/// Everything needed to (re)start one peer the same way every time.
#[derive(Debug, Clone)]
pub struct PeerSpec {
    /// For messages: `cluster/peer`, e.g. `src/broker`.
    pub label: String,
    /// The `java` executable.
    pub binary: PathBuf,
    pub args: Vec<String>,
    /// Working directory, `HOME` and `ROCKETMQ_HOME` of the peer.
    pub home: PathBuf,
    pub log_path: PathBuf,
    pub pid_path: PathBuf,
    /// The service ports; each must accept TCP connections before the peer
    /// counts as ready.
    pub addrs: Vec<SocketAddr>,
    /// The line the server prints on stdout once it serves
    /// (`settings::ready_marker`).
    pub ready_marker: &'static str,
}

#[derive(Debug)]
pub struct PeerProcess {
    pub spec: PeerSpec,
    child: Option<Child>,
    /// Length of the log when the latest start's banner was written: the
    /// ready marker counts only after it.
    start_offset: u64,
}

impl PeerProcess {
    pub fn new(spec: PeerSpec) -> Self {
        Self {
            spec,
            child: None,
            start_offset: 0,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// True while the process exists (reaps it if it has exited).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(Ok(Some(_))) | Some(Err(_)) => {
                self.child = None;
                let _ = fs::remove_file(&self.spec.pid_path);
                false
            }
            None => false,
        }
    }

    /// Spawns the peer and blocks until it is ready, it exits, or `timeout`
    /// passes (then it is killed). Returns how long it took to become ready.
    pub fn start(&mut self, timeout: Duration) -> Result<Duration, DevClusterError> {
        if self.is_running() {
            return Ok(Duration::ZERO);
        }
        let started = Instant::now();
        self.spawn()?;
        match self.wait_ready(started, timeout) {
            Ok(()) => Ok(started.elapsed()),
            Err(error) => {
                self.kill();
                Err(error)
            }
        }
    }

    fn spawn(&mut self) -> Result<(), DevClusterError> {
        let spec = &self.spec;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log_path)
            .map_err(|source| DevClusterError::io("open peer log", &spec.log_path, source))?;
        let banner = format!(
            "\n{BANNER}{} at unix time {}: {} {} =====\n",
            spec.label,
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            spec.binary.display(),
            spec.args.join(" ")
        );
        log.write_all(banner.as_bytes())
            .map_err(|source| DevClusterError::io("write peer log", &spec.log_path, source))?;
        let start_offset = log
            .metadata()
            .map(|meta| meta.len())
            .map_err(|source| DevClusterError::io("read peer log", &spec.log_path, source))?;
        let stderr = log.try_clone().map_err(|source| {
            DevClusterError::io("duplicate peer log handle", &spec.log_path, source)
        })?;

        let mut command = Command::new(&spec.binary);
        command
            .args(&spec.args)
            .current_dir(&spec.home)
            .env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
            )
            // Every default path a peer derives from $HOME (~/store,
            // ~/rocketmq-namesrv, ~/config, ...) lands inside its own dir.
            .env("HOME", &spec.home)
            .env("ROCKETMQ_HOME", &spec.home)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(stderr));
        for passthrough in ["JAVA_HOME", "TMPDIR", "LANG", "LC_ALL", "TZ"] {
            if let Some(value) = std::env::var_os(passthrough) {
                command.env(passthrough, value);
            }
        }
        let child = command.spawn().map_err(|source| DevClusterError::Spawn {
            peer: spec.label.clone(),
            binary: spec.binary.clone(),
            source,
        })?;
        let pid = child.id();
        self.child = Some(child);
        self.start_offset = start_offset;
        fs::write(&self.spec.pid_path, format!("{pid}\n"))
            .map_err(|source| DevClusterError::io("write pid file", &self.spec.pid_path, source))?;
        Ok(())
    }

    fn wait_ready(&mut self, started: Instant, timeout: Duration) -> Result<(), DevClusterError> {
        let deadline = started + timeout;
        loop {
            if let Some(status) = self.exit_status() {
                return Err(DevClusterError::PeerExited {
                    peer: self.spec.label.clone(),
                    status,
                    log: self.failed_start_log(),
                });
            }
            let announced =
                log_since(&self.spec.log_path, self.start_offset).contains(self.spec.ready_marker);
            let closed = if announced {
                self.spec
                    .addrs
                    .iter()
                    .find(|addr| TcpStream::connect_timeout(addr, CONNECT_TIMEOUT).is_err())
                    .copied()
            } else {
                None
            };
            if announced && closed.is_none() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let detail = match closed {
                    Some(addr) => format!("{addr} does not accept TCP connections"),
                    None => format!("it never printed `{}`", self.spec.ready_marker),
                };
                return Err(DevClusterError::NotReady {
                    peer: self.spec.label.clone(),
                    waited: timeout,
                    detail,
                    log: self.failed_start_log(),
                });
            }
            thread::sleep(POLL);
        }
    }

    fn failed_start_log(&self) -> Box<PeerLog> {
        Box::new(PeerLog {
            path: self.spec.log_path.clone(),
            errors: startup_errors(&self.spec.log_path, ERROR_LINES),
            tail: self.log_tail(LOG_TAIL_LINES),
        })
    }

    fn exit_status(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => {
                self.child = None;
                Some(describe(status))
            }
            Ok(None) => None,
            Err(error) => {
                self.child = None;
                Some(format!("unknown ({error})"))
            }
        }
    }

    /// Asks the peer to shut down (SIGTERM: the JVM runs the server's
    /// shutdown hooks) without waiting.
    pub fn request_stop(&mut self) {
        let Some(pid) = self.pid() else {
            return;
        };
        // The child is not reaped yet, so its pid cannot have been reused.
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// Waits until the process has exited or `deadline` passes; true if it exited.
    pub fn wait_exit(&mut self, deadline: Instant) -> bool {
        loop {
            if !self.is_running() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(25));
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_file(&self.spec.pid_path);
    }

    /// Graceful stop: SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        if !self.is_running() {
            return;
        }
        self.request_stop();
        if !self.wait_exit(Instant::now() + grace) {
            self.kill();
        }
    }

    /// The last `lines` lines of the peer's log, colour codes removed.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.spec.log_path, lines)
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => status.to_string(),
    }
}

/// What the log holds from byte `offset` on (at most its last 4 MiB).
fn log_since(path: &std::path::Path, offset: u64) -> String {
    const WINDOW: u64 = 4 * 1024 * 1024;
    let read = || -> io::Result<Vec<u8>> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(offset.max(len.saturating_sub(WINDOW))))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(bytes)
    };
    read()
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

/// The last `lines` lines of a log file (reads at most its last 256 KiB).
pub fn log_tail(path: &std::path::Path, lines: usize) -> String {
    const WINDOW: u64 = 256 * 1024;
    let read = || -> io::Result<Vec<u8>> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(WINDOW)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(bytes)
    };
    match read() {
        Ok(bytes) => {
            let text = strip_ansi(&String::from_utf8_lossy(&bytes));
            let all: Vec<&str> = text.lines().collect();
            let mut out = String::new();
            for line in &all[all.len().saturating_sub(lines)..] {
                let _ = writeln!(out, "    {line}");
            }
            out
        }
        Err(error) => format!("    (cannot read {}: {error})\n", path.display()),
    }
}

/// The first `lines` ERROR (or panic) lines the peer logged since its last
/// start banner (with Java exceptions), indented like [`log_tail`];
/// `    (none)` if there are none.
pub fn startup_errors(path: &std::path::Path, lines: usize) -> String {
    let tail = log_tail(path, usize::MAX);
    let section = tail.rfind(BANNER).map_or(tail.as_str(), |at| &tail[at..]);
    let mut out = String::new();
    for line in section
        .lines()
        .filter(|line| {
            line.contains(" ERROR ") || line.contains("Exception") || line.contains("Error:")
        })
        .take(lines)
    {
        let _ = writeln!(out, "{line}");
    }
    if out.is_empty() {
        out.push_str("    (none)\n");
    }
    out
}

/// Removes ANSI escape sequences (the peers colour their console logs).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&'[') {
            chars.next();
            // Parameters and intermediates, then one final byte in '@'..='~'.
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        } else {
            chars.next();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ansi_sequences_are_removed() {
        let coloured = "\u{1b}[2m2026-01-01\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m started";
        assert_eq!(strip_ansi(coloured), "2026-01-01  INFO started");
    }

    #[test]
    fn startup_errors_are_those_of_the_last_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peer.log");
        let mut text = format!("{BANNER}x/broker at 1 =====\nt ERROR old failure\n");
        text.push_str(&format!("{BANNER}x/broker at 2 =====\n"));
        text.push_str("t  INFO fine\nt ERROR Register broker to name server failed\n");
        text.push_str(&"t  INFO rollback\n".repeat(100));
        std::fs::write(&path, &text).unwrap();
        let errors = startup_errors(&path, 8);
        assert_eq!(
            errors,
            "    t ERROR Register broker to name server failed\n"
        );
        std::fs::write(&path, format!("{BANNER}x at 3 =====\nfine\n")).unwrap();
        assert_eq!(startup_errors(&path, 8), "    (none)\n");
        std::fs::write(
            &path,
            format!("{BANNER}x at 4 =====\njava.net.BindException: Address already in use\n"),
        )
        .unwrap();
        assert!(startup_errors(&path, 8).contains("BindException"));
    }

    #[test]
    fn log_tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peer.log");
        let text: String = (1..=100).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, text).unwrap();
        let tail = log_tail(&path, 3);
        assert_eq!(tail, "    line 98\n    line 99\n    line 100\n");
        assert!(log_tail(&dir.path().join("missing.log"), 3).contains("cannot read"));
    }
}
