//! systemd integration without libsystemd: `sd_notify` datagrams to
//! `$NOTIFY_SOCKET` (READY, RELOADING, STOPPING, WATCHDOG, STATUS) and the
//! watchdog interval from `$WATCHDOG_USEC`. Outside systemd every call is a
//! no-op, so the daemon runs the same in a terminal.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Sends one notification; returns false when not running under systemd.
pub fn notify(state: &str) -> bool {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return false;
    };
    let Ok(socket) = UnixDatagram::unbound() else {
        return false;
    };
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        // Abstract namespace socket.
        use std::os::linux::net::SocketAddrExt;
        match std::os::unix::net::SocketAddr::from_abstract_name(name) {
            Ok(addr) => socket.send_to_addr(state.as_bytes(), &addr).is_ok(),
            Err(_) => false,
        }
    } else {
        socket.send_to(state.as_bytes(), &path).is_ok()
    };
    if !sent {
        tracing::debug!(state, "sd_notify failed");
    }
    sent
}

pub fn ready(status: &str) {
    notify(&format!("READY=1\nSTATUS={status}"));
}

pub fn reloading() {
    let usec = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    notify(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
}

pub fn stopping() {
    notify("STOPPING=1");
}

pub fn status(text: &str) {
    notify(&format!("STATUS={text}"));
}

/// Half the watchdog interval systemd asked for, if it asked.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    Some(Duration::from_micros(usec / 2))
}

pub fn watchdog_ping() {
    notify("WATCHDOG=1");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_reaches_a_socket_named_by_notify_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        // Environment is process-wide; this is the only test that sets it.
        std::env::set_var("NOTIFY_SOCKET", &path);
        ready("up");
        let mut buf = [0u8; 128];
        let n = server.recv(&mut buf).unwrap();
        std::env::remove_var("NOTIFY_SOCKET");
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=up");
    }
}
