//! Where a coordinated queue's shared position lives (issue 18): the one
//! position a new owner starts from, written by the owner only while its
//! fence is open and only after every estate record made before it is on
//! 5.x (coordinate.rs).
//!
//! - A route's topic queues: the instances' 4.x group's committed offsets
//!   (UPDATE_CONSUMER_OFFSET), read back after the last write of a release
//!   (a broker answers success and writes nothing while a reset is pending).
//! - A route's schedule queues (`scheduled = "forward"`): the estate state
//!   topic on 5.x. Every such route reads the same `SCHEDULE_TOPIC_XXXX`
//!   queues with a position of its own, which one group offset per queue
//!   could not hold; the topic's fold keeps the highest position written.
//!
//! Must not touch: leases and locks (coordinate.rs, ownership.rs).

use std::sync::Arc;

use crate::checkpoint::shared::{Replica, SharedRecord};
use crate::checkpoint::SourceQueue;
use crate::estate::{LiveView, Outbox};
use crate::source::TopicSource;

#[derive(Clone)]
pub enum PositionHome {
    Group {
        group: String,
    },
    StateTopic {
        /// The route's name (its schedule side is `<route>#scheduled`).
        route: String,
        outbox: Arc<Outbox>,
        live: Arc<LiveView>,
    },
}

impl std::fmt::Debug for PositionHome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PositionHome::Group { group } => write!(f, "group `{group}`"),
            PositionHome::StateTopic { route, .. } => {
                write!(f, "estate state topic (route `{route}`)")
            }
        }
    }
}

impl PositionHome {
    /// The shared position of `queue` (None: none yet). The state topic is
    /// read up to now first: a position written before this call is seen.
    pub async fn read(
        &self,
        source: &TopicSource,
        queue: &SourceQueue,
    ) -> Result<Option<i64>, String> {
        match self {
            PositionHome::Group { group } => source
                .group_offset(queue, group)
                .await
                .map(|o| o.filter(|o| *o >= 0))
                .map_err(|e| e.to_string()),
            PositionHome::StateTopic { route, live, .. } => {
                live.catch_up().await.map_err(|e| e.to_string())?;
                Ok(live.with(|v| v.schedule().get_position(route, queue)))
            }
        }
    }

    /// Writes `offset` as the shared position of `queue`. The caller has
    /// flushed the estate records made before (for the state topic the
    /// position is queued behind them and flushed here).
    pub async fn write(
        &self,
        source: &TopicSource,
        queue: &SourceQueue,
        offset: i64,
    ) -> Result<(), String> {
        match self {
            PositionHome::Group { group } => {
                let addr = source.master_addr(queue).map_err(|e| e.to_string())?;
                source
                    .client()
                    .update_consumer_offset(&addr, group, source.topic(), queue.queue_id, offset)
                    .await
                    .map_err(|e| e.to_string())
            }
            PositionHome::StateTopic { route, outbox, .. } => {
                outbox.enqueue(SharedRecord::SchedulePosition {
                    route: route.clone(),
                    queue: queue.clone(),
                    offset,
                });
                outbox.flush().await
            }
        }
    }

    /// After the last write of a release: whether the position took.
    pub async fn took(&self, source: &TopicSource, queue: &SourceQueue, offset: i64) -> bool {
        match self {
            PositionHome::Group { .. } => {
                let read = self.read(source, queue).await;
                if read != Ok(Some(offset)) {
                    tracing::warn!(%queue, offset, read_back = ?read,
                        "the group's position did not take (a reset pending on the broker?); the next owner may re-send from an older offset");
                    return false;
                }
                true
            }
            // Published (flushed) means stored; the fold never moves it back.
            PositionHome::StateTopic { .. } => true,
        }
    }
}
