//! Where a route's messages go: the one type the pipeline sends through,
//! without knowing the protocol behind it.
//!
//! - [`Sink::Grpc`]: a 5.x cluster over gRPC v2 (forward routes);
//! - [`Sink::Remoting`]: a 4.x cluster over Remoting (reverse routes,
//!   remoting.rs).
//!
//! Both take the same plain [`OutgoingMessage`] and answer with a
//! [`SinkError`] whose [`Disposition`] tells the pipeline's one retry layer
//! (pipeline/send.rs) what the failure means. Owns: nothing but the
//! dispatch; each protocol's rules live in its own module.

pub mod remoting;

use crate::grpc::{Disposition, OutgoingMessage, PublishError, Publisher, TopicMessageType};

pub use remoting::{RemotingSink, RemotingSinkError};

/// A cluster the pipeline publishes to.
#[derive(Clone)]
pub enum Sink {
    Grpc(Publisher),
    Remoting(RemotingSink),
}

impl From<Publisher> for Sink {
    fn from(p: Publisher) -> Self {
        Sink::Grpc(p)
    }
}

impl From<RemotingSink> for Sink {
    fn from(s: RemotingSink) -> Self {
        Sink::Remoting(s)
    }
}

/// A failed send, in the words of the cluster that refused it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SinkError {
    #[error(transparent)]
    Grpc(#[from] PublishError),
    #[error(transparent)]
    Remoting(#[from] RemotingSinkError),
}

impl SinkError {
    pub fn disposition(&self) -> Disposition {
        match self {
            SinkError::Grpc(e) => e.disposition(),
            SinkError::Remoting(e) => e.disposition(),
        }
    }

    /// The server refused a DELAY message's delivery time (see
    /// [`PublishError::refuses_delivery_time`]).
    pub fn refuses_delivery_time(&self) -> bool {
        match self {
            SinkError::Grpc(e) => e.refuses_delivery_time(),
            SinkError::Remoting(_) => false,
        }
    }

    /// A short stable label for `rmq_bridge_target_errors_total{code}`.
    pub fn code_label(&self) -> &'static str {
        match self {
            SinkError::Grpc(e) => e.code_label(),
            SinkError::Remoting(e) => e.code_label(),
        }
    }
}

impl Sink {
    /// One attempt (the pipeline retries).
    pub async fn send(&self, message: &OutgoingMessage) -> Result<(), SinkError> {
        match self {
            Sink::Grpc(p) => p.send(message).await.map(drop).map_err(Into::into),
            Sink::Remoting(s) => s.send(message).await.map_err(Into::into),
        }
    }

    /// NORMAL messages of one topic as one request where the protocol
    /// packs them; one attempt.
    pub async fn send_batch(&self, messages: &[OutgoingMessage]) -> Result<(), SinkError> {
        match self {
            Sink::Grpc(p) => p.send_batch(messages).await.map(drop).map_err(Into::into),
            Sink::Remoting(s) => s.send_batch(messages).await.map_err(Into::into),
        }
    }

    /// The largest body the cluster accepts.
    pub fn max_body_size(&self) -> usize {
        match self {
            Sink::Grpc(p) => p.max_body_size(),
            Sink::Remoting(s) => s.max_body_size(),
        }
    }

    /// The message types `topic` accepts there (a 4.x topic takes any
    /// message; it must exist).
    pub async fn accepted_types(&self, topic: &str) -> Result<Vec<TopicMessageType>, SinkError> {
        match self {
            Sink::Grpc(p) => p.accepted_types(topic).await.map_err(Into::into),
            Sink::Remoting(s) => s.accepted_types(topic).await.map_err(Into::into),
        }
    }

    /// Announces the route's target topic to the cluster before any send
    /// (5.x: so that transaction check-backs reach this process; 4.x
    /// producers need no announcement).
    pub fn declare_topic(&self, topic: &str) {
        match self {
            Sink::Grpc(p) => p.declare_topic(topic),
            Sink::Remoting(_) => {}
        }
    }

    /// The cluster's name for messages and logs ("5.x" or "4.x").
    pub fn cluster(&self) -> &'static str {
        match self {
            Sink::Grpc(_) => "5.x",
            Sink::Remoting(_) => "4.x",
        }
    }

    pub async fn shutdown(&self) {
        match self {
            Sink::Grpc(p) => p.shutdown().await,
            Sink::Remoting(_) => {}
        }
    }

    /// The gRPC publisher, for callers that need 5.x features beyond
    /// sending (the schedule side's lookups).
    pub fn grpc(&self) -> Option<&Publisher> {
        match self {
            Sink::Grpc(p) => Some(p),
            Sink::Remoting(_) => None,
        }
    }
}
