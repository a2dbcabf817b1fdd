//! [`RemotingClient`]: cheap-to-clone handle holding one multiplexed
//! [`Connection`] per address, created lazily and replaced after failure:
//! when it closed, or when a request on it timed out (it is then suspect;
//! requests still in flight on it finish there, and it closes when the last
//! of them lets go).
//! After a failed connect the address backs off exponentially (up to
//! [`MAX_BACKOFF`]) and calls fail fast with [`RemotingError::Backoff`]
//! meanwhile, so a dead broker is not hammered.
//!
//! Owns connection management, ACL signing and `invoke` / `invoke_oneway`;
//! the typed requests live in `cmd/`, one file per concern.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

use super::acl::AclCredentials;
use super::connection::{Connection, ServerRequest};
use super::error::{RemotingError, Result};
use super::header::RemotingCommand;

/// First pause after a failed connect; doubles per failure.
pub const BASE_BACKOFF: Duration = Duration::from_millis(200);
/// Longest pause between connect attempts to one address.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct RemotingClientConfig {
    /// Default time a request may take (pulls add their suspend time).
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    pub credentials: Option<AclCredentials>,
    /// Java's `clientID` (`ip@instance`), used in heartbeats.
    pub client_id: String,
}

impl Default for RemotingClientConfig {
    fn default() -> Self {
        RemotingClientConfig {
            request_timeout: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(3),
            credentials: None,
            client_id: format!("rmq-bridge@{}", std::process::id()),
        }
    }
}

#[derive(Default)]
struct Slot {
    conn: Option<Arc<Connection>>,
    failures: u32,
    retry_at: Option<Instant>,
    last_error: String,
}

struct Inner {
    config: RemotingClientConfig,
    slots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot>>>>,
    server_requests: broadcast::Sender<ServerRequest>,
}

/// Remoting client for name servers and brokers. Clone freely.
#[derive(Clone)]
pub struct RemotingClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RemotingClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemotingClient")
            .field("config", &self.inner.config)
            .finish()
    }
}

/// Checks `addr` is `host:port` with a valid, non-zero port.
pub fn validate_addr(addr: &str) -> Result<()> {
    let bad = |reason: &str| RemotingError::InvalidAddress {
        addr: addr.to_string(),
        reason: reason.to_string(),
    };
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.chars().any(char::is_whitespace) {
        return Err(bad("empty or malformed host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(bad("port is not a number in 1..=65535")),
    }
}

fn backoff_for(failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    BASE_BACKOFF.saturating_mul(factor).min(MAX_BACKOFF)
}

impl RemotingClient {
    pub fn new(config: RemotingClientConfig) -> Self {
        let (server_requests, _) = broadcast::channel(256);
        RemotingClient {
            inner: Arc::new(Inner {
                config,
                slots: Mutex::new(HashMap::new()),
                server_requests,
            }),
        }
    }

    pub fn config(&self) -> &RemotingClientConfig {
        &self.inner.config
    }

    /// Requests servers send us (NOTIFY_CONSUMER_IDS_CHANGED, ...), for
    /// whoever wants to react (e.g. rebalancing).
    pub fn subscribe_server_requests(&self) -> broadcast::Receiver<ServerRequest> {
        self.inner.server_requests.subscribe()
    }

    /// The live connection to `addr`, connecting if needed.
    async fn connection(&self, addr: &str) -> Result<Arc<Connection>> {
        validate_addr(addr)?;
        let slot = {
            let mut slots = self.inner.slots.lock().unwrap_or_else(|e| e.into_inner());
            slots.entry(addr.to_string()).or_default().clone()
        };
        let mut slot = slot.lock().await;
        if let Some(conn) = &slot.conn {
            if !conn.is_closed() && !conn.is_suspect() {
                return Ok(conn.clone());
            }
            if conn.is_suspect() {
                tracing::info!(addr, "replacing a connection on which a request timed out");
            }
            slot.conn = None;
        }
        let now = Instant::now();
        if let Some(at) = slot.retry_at {
            if at > now {
                return Err(RemotingError::Backoff {
                    addr: addr.to_string(),
                    retry_in: at - now,
                    last_error: slot.last_error.clone(),
                });
            }
        }
        match Connection::connect(
            addr,
            self.inner.config.connect_timeout,
            Some(self.inner.server_requests.clone()),
        )
        .await
        {
            Ok(conn) => {
                if slot.failures > 0 {
                    tracing::info!(addr, after_failures = slot.failures, "reconnected");
                }
                let conn = Arc::new(conn);
                *slot = Slot {
                    conn: Some(conn.clone()),
                    ..Slot::default()
                };
                Ok(conn)
            }
            Err(e) => {
                slot.failures = slot.failures.saturating_add(1);
                let pause = backoff_for(slot.failures);
                slot.retry_at = Some(Instant::now() + pause);
                slot.last_error = e.to_string();
                tracing::warn!(addr, failures = slot.failures, backoff = ?pause, error = %e, "connect failed");
                Err(e)
            }
        }
    }

    fn sign(&self, cmd: &mut RemotingCommand) {
        if let Some(creds) = &self.inner.config.credentials {
            creds.sign(cmd);
        }
    }

    /// Sends `cmd` to `addr` and returns the response, whatever its code.
    pub async fn invoke(
        &self,
        addr: &str,
        mut cmd: RemotingCommand,
        timeout: Duration,
    ) -> Result<RemotingCommand> {
        self.sign(&mut cmd);
        let conn = self.connection(addr).await?;
        conn.request(cmd, timeout).await
    }

    /// Sends `cmd` to `addr` without waiting for a response.
    pub async fn invoke_oneway(&self, addr: &str, mut cmd: RemotingCommand) -> Result<()> {
        self.sign(&mut cmd);
        let conn = self.connection(addr).await?;
        conn.oneway(cmd, self.inner.config.request_timeout).await
    }

    /// Drops every connection (pending requests fail) and forgets backoffs.
    pub fn shutdown(&self) {
        let slots: Vec<_> = {
            let mut map = self.inner.slots.lock().unwrap_or_else(|e| e.into_inner());
            map.drain().map(|(_, s)| s).collect()
        };
        for slot in slots {
            if let Ok(mut s) = slot.try_lock() {
                if let Some(c) = s.conn.take() {
                    c.close();
                }
            }
        }
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        self.inner.config.request_timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_validated() {
        assert!(validate_addr("127.0.0.1:9876").is_ok());
        assert!(validate_addr("broker-a.internal:10911").is_ok());
        assert!(validate_addr("[::1]:10911").is_ok());
        for bad in [
            "", "host", "host:", ":9876", "h:0", "h:70000", "h:x", "a b:1",
        ] {
            let err = validate_addr(bad).unwrap_err();
            assert!(err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff_for(1), Duration::from_millis(200));
        assert_eq!(backoff_for(2), Duration::from_millis(400));
        assert_eq!(backoff_for(5), Duration::from_millis(3200));
        assert_eq!(backoff_for(6), MAX_BACKOFF);
        assert_eq!(backoff_for(1000), MAX_BACKOFF);
    }
}
