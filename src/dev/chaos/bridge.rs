//! The bridge daemon (`rmq-bridge run`) as a child process, for fault tests
//! and the soak: start, SIGKILL, SIGTERM, SIGHUP, pause, and what it used.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::dev::machine::{cpu_time, peak_rss_kib};

/// `rmq-bridge run -c CONFIG`, stdout and stderr appended to a log file.
/// Dropping it SIGKILLs the process (and prints the log tail while a test
/// panics).
pub struct BridgeProcess {
    child: Option<Child>,
    bin: PathBuf,
    log: PathBuf,
    config: PathBuf,
}

impl BridgeProcess {
    /// Starts `bin run -c config`. Panics if the binary cannot be spawned:
    /// every caller is a test or the soak, where that is a setup error.
    pub fn start(bin: &Path, config: &Path, log: &Path) -> BridgeProcess {
        let mut b = BridgeProcess {
            child: None,
            bin: bin.to_path_buf(),
            log: log.to_path_buf(),
            config: config.to_path_buf(),
        };
        b.restart();
        b
    }

    /// Starts the process again (after [`Self::kill9`] or [`Self::terminate`]).
    pub fn restart(&mut self) {
        self.kill9();
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("open bridge log {}: {e}", self.log.display()));
        let err = out
            .try_clone()
            .unwrap_or_else(|e| panic!("clone bridge log handle: {e}"));
        // `RMQ_BRIDGE_WRAPPER` (e.g. `valgrind --tool=dhat`): a command the
        // bridge runs under, for profiling a benchmark's bridge.
        let wrapper = std::env::var("RMQ_BRIDGE_WRAPPER").unwrap_or_default();
        let mut words = wrapper.split_whitespace();
        let mut command = match words.next() {
            Some(program) => {
                let mut command = Command::new(program);
                command.args(words).arg(&self.bin);
                command
            }
            None => Command::new(&self.bin),
        };
        let child = command
            .args(["run", "-c"])
            .arg(&self.config)
            .env(
                "RUST_LOG",
                std::env::var("RMQ_CHAOS_BRIDGE_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.bin.display()));
        self.child = Some(child);
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still alive (not reaped).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The exit status if the process has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGKILL and reap, like a crash or power loss.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait up to `grace`; returns whether it exited with success
    /// in time (SIGKILLed otherwise).
    pub fn terminate_within(&mut self, grace: Duration) -> bool {
        let Some(mut c) = self.child.take() else {
            return false;
        };
        signal(c.id(), "TERM");
        let deadline = Instant::now() + grace;
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// [`Self::terminate_within`] 30 s.
    pub fn terminate(&mut self) -> bool {
        self.terminate_within(Duration::from_secs(30))
    }

    pub fn sighup(&self) {
        if let Some(pid) = self.pid() {
            signal(pid, "HUP");
        }
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// CPU time (user + system) the running process used so far.
    pub fn cpu_time(&self) -> Option<Duration> {
        self.pid().and_then(cpu_time)
    }

    /// Peak resident memory of the running process, in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        self.pid().and_then(peak_rss_kib)
    }
}

impl Drop for BridgeProcess {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            let text = self.log_text();
            let tail: Vec<&str> = text.lines().rev().take(60).collect();
            eprintln!(
                "--- bridge log tail ({}) ---\n{}",
                self.config.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}

/// Sends `SIG<name>` (e.g. "STOP", "CONT", "TERM") to `pid`.
pub fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status();
}

/// A process stopped with SIGSTOP until this guard is dropped (SIGCONT), so
/// a failing test never leaves a peer frozen.
pub struct Paused(u32);

impl Paused {
    pub fn new(pid: u32) -> Paused {
        signal(pid, "STOP");
        Paused(pid)
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        signal(self.0, "CONT");
    }
}

/// The bridge's Prometheus text at `addr` (empty if it does not answer).
pub fn scrape(addr: &str) -> String {
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
    let _ = write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}
