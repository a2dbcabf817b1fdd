//! Our own Apache RocketMQ 4.x Remoting client (TCP, tokio + bytes), speaking
//! the Java dialect of the protocol. Knows nothing of the pipeline.
//!
//! From the wire inwards:
//! - `frame`: length-prefixed frame codec (bytes only).
//! - `header`: [`RemotingCommand`] and its JSON / binary header forms.
//! - `connection`: one TCP connection, correlation of responses by opaque.
//! - `client`: [`RemotingClient`], a connection per address with backoff.
//! - `cmd/`: typed requests (route, pull, offsets, consumers, send, topic).
//! - `route`, `namesrv`: topic routes and the name server list.
//! - `message`, `properties`: decoding 4.x message records.
//! - `acl`: request signing. `codes`, `error`: numbers and error types.

pub mod acl;
pub mod client;
pub mod cmd;
pub mod codes;
pub mod connection;
pub mod error;
pub mod frame;
pub mod header;
pub mod message;
pub mod namesrv;
pub mod properties;
pub mod route;
pub mod scan;

#[cfg(test)]
mod fake_server_tests;
#[cfg(test)]
mod fuzz_tests;

pub use acl::AclCredentials;
pub use client::{RemotingClient, RemotingClientConfig};
pub use cmd::consumer::{
    ConsumeFromWhere, ConsumeType, ConsumerData, HeartbeatData, LiveConsumers, MessageModel,
    ProducerData, SubscriptionData,
};
pub use cmd::lock::LockQueue;
pub use cmd::pull::{PullRequest, PullResult, PullStatus};
pub use cmd::send::{BatchEntry, SendBatchRequest, SendRequest, SendResult, SendStatus};
pub use cmd::topic::TopicConfig;
pub use connection::{Connection, ServerRequest};
pub use error::{DecodeError, FrameError, RemotingError};
pub use header::RemotingCommand;
pub use message::{MessageRecord, TransactionType, UndecodableRecord};
pub use namesrv::NameServers;
pub use properties::{names, Properties};
pub use route::{BrokerData, QueueData, TopicRoute};
