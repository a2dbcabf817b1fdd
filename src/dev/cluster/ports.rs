//! Loopback port allocation for peers. Owns the process-wide set of handed-out
//! ports so parallel tests in one process never get the same port, even after
//! the probe socket is closed and before the peer binds it.

use std::collections::HashSet;
use std::io;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::{Mutex, OnceLock};

use super::DevClusterError;

const ATTEMPTS: usize = 200;

fn handed_out() -> &'static Mutex<HashSet<u16>> {
    static PORTS: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    PORTS.get_or_init(|| Mutex::new(HashSet::new()))
}

fn bind_probe(port: u16) -> io::Result<TcpListener> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port))
}

/// A free TCP port on 127.0.0.1 that this process has not handed out before.
///
/// The kernel picks it (bind to port 0); the port is then remembered for the
/// life of the process. Another process can still take it between this call
/// and the peer's bind; `LocalCluster::start` retries with new ports when a
/// peer reports the address in use.
pub fn free_port() -> Result<u16, DevClusterError> {
    let mut last_error = None;
    for _ in 0..ATTEMPTS {
        let port = match bind_probe(0).and_then(|listener| listener.local_addr()) {
            Ok(addr) => addr.port(),
            Err(error) => {
                last_error = Some(error);
                continue;
            }
        };
        if reserve(&[port]) {
            return Ok(port);
        }
    }
    Err(no_free_port("a free loopback port", last_error))
}

/// A free port `p` for a broker, such that `p - 2` and `p + 1` are free too:
/// the Java brokers also listen on `listenPort - 2` (the "fast" / VIP
/// channel) and `listenPort + 1` (HA), whatever their config says.
pub fn free_broker_port() -> Result<u16, DevClusterError> {
    let mut last_error = None;
    for _ in 0..ATTEMPTS {
        let main = match bind_probe(0) {
            Ok(listener) => listener,
            Err(error) => {
                last_error = Some(error);
                continue;
            }
        };
        let port = match main.local_addr() {
            Ok(addr) => addr.port(),
            Err(error) => {
                last_error = Some(error);
                continue;
            }
        };
        let Some(fast) = port.checked_sub(2).filter(|fast| *fast >= 1024) else {
            continue;
        };
        let Some(ha) = port.checked_add(1) else {
            continue;
        };
        let probes = (bind_probe(fast), bind_probe(ha));
        match probes {
            (Ok(_fast_listener), Ok(_ha_listener)) => {}
            (Err(error), _) | (_, Err(error)) => {
                last_error = Some(error);
                continue;
            }
        }
        drop(main);
        if reserve(&[port, fast, ha]) {
            return Ok(port);
        }
    }
    Err(no_free_port(
        "free loopback ports p, p - 2 and p + 1 for a broker",
        last_error,
    ))
}

/// Marks `ports` as handed out; false (and nothing marked) if any already was.
fn reserve(ports: &[u16]) -> bool {
    let mut set = match handed_out().lock() {
        Ok(set) => set,
        Err(poisoned) => poisoned.into_inner(),
    };
    if ports.iter().any(|port| set.contains(port)) {
        return false;
    }
    set.extend(ports.iter().copied());
    true
}

fn no_free_port(what: &str, error: Option<io::Error>) -> DevClusterError {
    DevClusterError::NoFreePort {
        what: what.to_string(),
        source: error.unwrap_or_else(|| io::Error::other("every candidate was already handed out")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_never_handed_out_twice() {
        let mut seen = HashSet::new();
        for _ in 0..50 {
            let port = free_port().unwrap();
            assert!(seen.insert(port), "port {port} handed out twice");
        }
    }

    #[test]
    fn broker_port_leaves_room_for_the_fast_listener() {
        let port = free_broker_port().unwrap();
        assert!(port >= 1026);
        // Both are reserved now; neither may be handed out again.
        assert!(!reserve(&[port]));
        assert!(!reserve(&[port - 2]));
        assert!(!reserve(&[port + 1]));
        // And all three are bindable right now.
        let _main = bind_probe(port).unwrap();
        let _fast = bind_probe(port - 2).unwrap();
        let _ha = bind_probe(port + 1).unwrap();
    }
}
