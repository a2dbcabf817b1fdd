//! The producer clients a route's sends take turns over: the
//! `target.clients` gRPC publishers of a forward route, the one Remoting
//! sink of a reverse route (crate::sink; the pipeline knows no protocol).
//!
//! Owns: which client carries the next send. Must not touch: ordering
//! (order.rs) or retries (send.rs).

use std::sync::Arc;

use crate::grpc::Publisher;
use crate::sink::Sink;

/// Producer clients that sends take turns over. Per message rather than per
/// queue: whichever queues are busy, every client carries a share. Ordering
/// does not depend on the client (a FIFO group's next send starts only after
/// the previous one was acknowledged).
#[derive(Clone)]
pub struct PublisherPool {
    publishers: Arc<[Sink]>,
    next: Arc<std::sync::atomic::AtomicUsize>,
}

impl PublisherPool {
    /// None when `publishers` is empty.
    pub fn new(publishers: Vec<Publisher>) -> Option<Self> {
        Self::of_sinks(publishers.into_iter().map(Sink::from).collect())
    }

    /// None when `publishers` is empty.
    pub fn of_sinks(publishers: Vec<Sink>) -> Option<Self> {
        if publishers.is_empty() {
            return None;
        }
        Some(PublisherPool {
            publishers: publishers.into(),
            next: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        })
    }

    /// The client for the next send.
    pub fn next(&self) -> &Sink {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        &self.publishers[i % self.publishers.len()]
    }

    /// For lookups that are not sends (routes, limits).
    pub fn first(&self) -> &Sink {
        &self.publishers[0]
    }

    pub fn all(&self) -> &[Sink] {
        &self.publishers
    }
}
