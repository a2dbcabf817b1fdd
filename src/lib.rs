//! rmq-bridge: carries traffic from an Apache RocketMQ 4.x cluster (Remoting)
//! to a 5.x cluster (gRPC v2), with durable per-queue checkpoints and a phased,
//! hot-reloadable cutover. See README.md and docs/ for the operator's view.
//!
//! Layout, from the wire inwards:
//! - `remoting`: the 4.x Remoting protocol client (frames, headers, commands,
//!   message records). Knows nothing of the pipeline.
//! - `grpc`: the 5.x gRPC v2 client and type-aware publisher. Knows nothing of
//!   the pipeline.
//! - `source`: pulls every queue of a 4.x topic (built on `remoting`).
//! - `translate`, `cutover`: pure functions from a 4.x record to a 5.x message
//!   and to a forward / skip decision.
//! - `checkpoint`: the RocksDB store of positions, journal and quarantine.
//! - `pipeline`: wires source, translation, cutover and sink per route; owns
//!   flow control, in-flight windows and checkpoint advancement.
//! - `config`, `metrics`, `systemd`, `cli`: the edges.
//! - `dev` (cargo feature `dev` only): test-peer launcher, test helpers and
//!   the `demo` quick start; not part of the daemon.

pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod cutover;
pub mod decommission;
#[cfg(feature = "dev")]
pub mod dev;
pub mod estate;
pub mod groups;
pub mod grpc;
pub mod handoff;
pub mod metrics;
pub mod pipeline;
pub mod remoting;
pub mod reserved;
pub mod shutdown;
pub mod sink;
pub mod source;
pub mod systemd;
pub mod translate;
pub mod verify;
