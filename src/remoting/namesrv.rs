//! [`NameServers`]: the `;`-separated name server list of a 4.x cluster,
//! validated once, queried in rotation with failover.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::client::validate_addr;
use super::error::{RemotingError, Result};
use super::route::TopicRoute;
use super::RemotingClient;

#[derive(Debug, Clone)]
pub struct NameServers {
    addrs: Arc<Vec<String>>,
    /// Index of the server that answered last; queries start there.
    current: Arc<AtomicUsize>,
}

impl NameServers {
    /// Parses `host:port;host:port`. Blank entries (a trailing `;`) are
    /// ignored; a malformed entry is an error naming it.
    pub fn parse(list: &str) -> Result<NameServers> {
        let addrs: Vec<String> = list
            .split(';')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        if addrs.is_empty() {
            return Err(RemotingError::InvalidAddress {
                addr: list.to_string(),
                reason: "the name server list is empty".to_string(),
            });
        }
        for a in &addrs {
            validate_addr(a)?;
        }
        Ok(NameServers {
            addrs: Arc::new(addrs),
            current: Arc::new(AtomicUsize::new(0)),
        })
    }

    pub fn addrs(&self) -> &[String] {
        &self.addrs
    }

    /// Asks each name server in turn, starting with the last one that
    /// answered, until one answers. TOPIC_NOT_EXIST is an answer (`None`).
    pub async fn topic_route(
        &self,
        client: &RemotingClient,
        topic: &str,
    ) -> Result<Option<TopicRoute>> {
        let n = self.addrs.len();
        let start = self.current.load(Ordering::Relaxed) % n;
        let mut errors = Vec::new();
        for i in 0..n {
            let idx = (start + i) % n;
            let addr = &self.addrs[idx];
            match client.get_topic_route(addr, topic).await {
                Ok(route) => {
                    self.current.store(idx, Ordering::Relaxed);
                    return Ok(route);
                }
                Err(e) => {
                    tracing::warn!(namesrv = %addr, topic, error = %e, "name server failed; trying the next");
                    errors.push(format!("{addr}: {e}"));
                }
            }
        }
        Err(RemotingError::AllNameServersFailed {
            topic: topic.to_string(),
            errors: errors.join("; "),
        })
    }
}

/// The list as configured: `host:port;host:port`.
impl std::fmt::Display for NameServers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.addrs.join(";"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_validates_each_entry() {
        let ns = NameServers::parse("a:9876; b:9876;").unwrap();
        assert_eq!(ns.addrs(), &["a:9876".to_string(), "b:9876".to_string()]);
        assert_eq!(ns.to_string(), "a:9876;b:9876");
        let err = NameServers::parse("a:9876;b9876").unwrap_err();
        assert!(err.to_string().contains("`b9876`"), "{err}");
        assert!(NameServers::parse(" ; ").is_err());
    }
}
