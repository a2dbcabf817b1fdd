//! The 5.x side: our own gRPC v2 (`apache.rocketmq.v2.MessagingService`)
//! client and the type-aware [`Publisher`]. Knows nothing of the pipeline;
//! the pipeline hands it plain [`OutgoingMessage`]s and gets receipts or
//! typed [`PublishError`]s back.
//!
//! - `message`: the plain message types and their wire mapping.
//! - `metadata`: per-call headers and the request signature.
//! - `client`: channels, retries, routes, telemetry, heartbeats.
//! - `direct`: SendMessage straight on an h2 connection (the hot call).
//! - `publish`: the publisher (NORMAL, FIFO, DELAY, TRANSACTION, batches,
//!   local validation) and the read-back used by tests and the verifier.
//! - `error`: permanent versus retriable errors.
//!
//! The protobuf definitions are our own trimmed, wire-identical copy in
//! `proto/apache/rocketmq/v2/`, compiled by `build.rs`.

/// Code generated from `proto/apache/rocketmq/v2/*.proto`.
#[allow(
    clippy::all,
    clippy::pedantic,
    missing_docs,
    rustdoc::all,
    unreachable_pub
)]
pub mod pb {
    tonic::include_proto!("apache.rocketmq.v2");
}

mod client;
mod direct;
mod error;
mod message;
mod metadata;
mod publish;

#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
mod tests;

pub use client::{default_client_id, GrpcClientConfig};
pub use error::{Disposition, PublishError, ServerCode};
#[cfg(test)]
pub(crate) use message::millis_from_timestamp;
pub use message::{MessageKind, OutgoingMessage, ReceivedMessage, TopicMessageType};
pub use metadata::GrpcCredentials;
pub use publish::{is_reserved_property, validate, Publisher, SendReceipt};
