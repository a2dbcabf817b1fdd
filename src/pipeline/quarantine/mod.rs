//! Quarantine: a message that can never be accepted as it is leaves its
//! queue's way into the store, with the reason and a replayable copy (the
//! translated message, or the raw 4.x record when translation or decoding
//! failed), and only then counts as done.
//!
//! Owns: "a checkpoint never passes a message that is neither sent nor
//! kept". The write runs on a blocking thread (RocksDB), is retried while the
//! disk is full, and gives up only when the bridge stops, in which case the
//! message is not done and is read again after the restart.
//! Must not touch: the decision to quarantine (health.rs and send.rs).

pub mod codec;

use std::time::Duration;

use crate::checkpoint::{now_ms, CheckpointStore, QuarantineEntry, SourceQueue};
use crate::grpc::OutgoingMessage;
use crate::metrics as m;
use crate::shutdown::{Backoff, Shutdown};

/// What is kept for replay.
pub enum Payload<'a> {
    Translated(&'a OutgoingMessage),
    /// The 4.x record bytes.
    Raw(&'a [u8]),
}

/// One route's quarantine writer.
#[derive(Clone)]
pub struct Quarantine {
    store: CheckpointStore,
    route: String,
    counter: metrics::Counter,
    size: metrics::Gauge,
}

impl Quarantine {
    pub fn new(store: CheckpointStore, route: &str, counter: metrics::Counter) -> Self {
        Quarantine {
            store,
            route: route.to_string(),
            counter,
            size: metrics::gauge!(m::QUARANTINE_SIZE, "route" => route.to_string()),
        }
    }

    /// Keeps the message; true once written. False only when stopping
    /// before the write could land: the message then stays not done.
    pub async fn put(
        &self,
        queue: &SourceQueue,
        offset: i64,
        message_id: &str,
        payload: Payload<'_>,
        reason: &str,
        stop: &mut Shutdown,
    ) -> bool {
        let entry = QuarantineEntry {
            route: self.route.clone(),
            queue: queue.clone(),
            offset,
            message_id: message_id.to_string(),
            reason: reason.to_string(),
            quarantined_at_ms: now_ms(),
            message_json: match payload {
                Payload::Translated(message) => codec::encode(message),
                Payload::Raw(raw) => codec::encode_raw(raw),
            },
        };
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut attempt = 0u32;
        loop {
            let store = self.store.clone();
            let to_write = entry.clone();
            let written =
                tokio::task::spawn_blocking(move || store.quarantine_put(&to_write)).await;
            match written {
                Ok(Ok(())) => break,
                Ok(Err(e)) => {
                    attempt += 1;
                    if attempt == 1 || attempt % 20 == 0 {
                        tracing::error!(route = %self.route, %queue, offset, error = %e,
                            "cannot write quarantine entry; the queue holds at this message until it can");
                    }
                    metrics::counter!(m::SOURCE_ERRORS_TOTAL, "kind" => "quarantine_write")
                        .increment(1);
                }
                Err(e) => {
                    tracing::error!(route = %self.route, %queue, offset, error = %e,
                        "quarantine write task failed; retrying");
                }
            }
            if !backoff.wait(stop).await {
                tracing::warn!(route = %self.route, %queue, offset,
                    "stopping before the quarantine entry could be written; the message is read again after restart");
                return false;
            }
        }
        self.counter.increment(1);
        self.size.increment(1.0);
        tracing::error!(route = %self.route, %queue, offset, msg_id = %entry.message_id,
            reason, "message quarantined; see `rmq-bridge quarantine list`");
        true
    }
}
