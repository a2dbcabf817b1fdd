//! Where a coordinated queue's shared position lives (issue 18): the one
//! position a new owner starts from, written by the owner only while its
//! fence is open and only after every estate record made before it is on
//! 5.x (coordinate.rs).
//!
//! - A route's topic queues: committed offsets (UPDATE_CONSUMER_OFFSET) of
//!   a 4.x group of the route's own, [`route_group`], read back after the
//!   last write of a release (a broker answers success and writes nothing
//!   while a reset is pending). Offsets are kept per (group, topic, queue):
//!   two routes reading one topic each need their own group, as two Java
//!   consumer groups of one topic each have their own offsets (issue 30).
//!   The instances' membership and queue locks stay in the shared
//!   `[source] consumer_group`.
//! - A route's schedule queues (`scheduled = "forward"`): the estate state
//!   topic on 5.x. Every such route reads the same `SCHEDULE_TOPIC_XXXX`
//!   queues with a position of its own, which one group offset per queue
//!   could not hold; the topic's fold keeps the highest position written.
//!
//! Must not touch: leases and locks (coordinate.rs, ownership.rs).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::checkpoint::shared::{Replica, SharedRecord};
use crate::checkpoint::SourceQueue;
use crate::estate::{LiveView, Outbox};
use crate::source::TopicSource;

pub use crate::config::route_position_group as route_group;

/// Routes of `routes` that are the only forward route reading their source
/// topic. Before issue 30 every route's positions were in the shared
/// group; for such a route that position was its own and can be read while
/// its own group has none yet (an upgrade). Where two routes read a topic
/// the shared group's position was the faster one's and is never read.
pub fn sole_readers(routes: &[crate::config::RouteConfig]) -> BTreeSet<String> {
    let mut readers: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for r in routes {
        if r.direction == crate::config::Direction::Forward {
            readers.entry(&r.source_topic).or_default().push(&r.name);
        }
    }
    readers
        .into_values()
        .filter(|names| names.len() == 1)
        .flatten()
        .map(str::to_string)
        .collect()
}

#[derive(Clone)]
pub enum PositionHome {
    Group {
        /// The route's own group ([`route_group`]).
        group: String,
        /// The shared group, read where `group` has no position yet, for a
        /// route that was its topic's only reader ([`sole_readers`]).
        legacy: Option<String>,
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
            PositionHome::Group { group, .. } => write!(f, "group `{group}`"),
            PositionHome::StateTopic { route, .. } => {
                write!(f, "estate state topic (route `{route}`)")
            }
        }
    }
}

impl PositionHome {
    /// Route `route`'s topic positions, the instances sharing `group`;
    /// `sole`: it was its topic's only reader ([`sole_readers`]).
    pub fn of_route(group: &str, route: &str, sole: bool) -> Self {
        PositionHome::Group {
            group: route_group(group, route),
            legacy: sole.then(|| group.to_string()),
        }
    }

    /// The same for a route of `cfg` (the commands reporting on the estate).
    pub fn of_configured_route(cfg: &crate::config::BridgeConfig, route: &str) -> Self {
        let sole = sole_readers(&cfg.routes).contains(route);
        Self::of_route(&cfg.source.consumer_group, route, sole)
    }

    /// The shared position of `queue` (None: none yet). The state topic is
    /// read up to now first: a position written before this call is seen.
    pub async fn read(
        &self,
        source: &TopicSource,
        queue: &SourceQueue,
    ) -> Result<Option<i64>, String> {
        match self {
            PositionHome::Group { group, legacy } => {
                let own = group_position(source, queue, group).await?;
                match (own, legacy) {
                    (None, Some(legacy)) => group_position(source, queue, legacy).await,
                    (own, _) => Ok(own),
                }
            }
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
            PositionHome::Group { group, .. } => {
                let addr = source.master_addr(queue).map_err(|e| e.to_string())?;
                let client = source.client();
                let write = || {
                    client.update_consumer_offset(
                        &addr,
                        group,
                        source.topic(),
                        queue.queue_id,
                        offset,
                    )
                };
                match write().await {
                    // 5.x brokers keep offsets only of groups they know (a
                    // reverse route's, issue 30 item 7); 4.x ones keep any.
                    Err(crate::remoting::RemotingError::Broker { code, .. })
                        if code
                            == crate::remoting::codes::response::SUBSCRIPTION_GROUP_NOT_EXIST =>
                    {
                        client
                            .create_subscription_group(&addr, group)
                            .await
                            .map_err(|e| format!("creating group `{group}` on {addr}: {e}"))?;
                        write().await
                    }
                    other => other,
                }
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

/// `group`'s committed offset on `queue` (None: none yet).
async fn group_position(
    source: &TopicSource,
    queue: &SourceQueue,
    group: &str,
) -> Result<Option<i64>, String> {
    source
        .group_offset(queue, group)
        .await
        .map(|o| o.filter(|o| *o >= 0))
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Direction, RouteConfig};

    fn route(name: &str, topic: &str, direction: Direction) -> RouteConfig {
        RouteConfig {
            name: name.into(),
            source_topic: topic.into(),
            target_topic: topic.into(),
            filter: "*".into(),
            cutover_percent: 100,
            routing_key: crate::cutover::RoutingKeyMode::Auto,
            environments: vec![],
            start: crate::config::StartPosition::Earliest,
            commit_as_group: None,
            scheduled: Default::default(),
            direction,
            keep_translated: Vec::new(),
        }
    }

    #[test]
    fn only_a_topics_single_forward_reader_may_read_the_shared_group() {
        let routes = [
            route("pay", "pay", Direction::Forward),
            route("audit", "pay", Direction::Forward),
            route("orders", "orders", Direction::Forward),
            route("orders_back", "orders", Direction::Reverse),
        ];
        let sole = sole_readers(&routes);
        assert_eq!(sole, BTreeSet::from(["orders".to_string()]));
    }

    #[test]
    fn every_route_has_a_group_of_its_own() {
        assert_ne!(
            route_group("rmq_bridge", "pay"),
            route_group("rmq_bridge", "audit")
        );
        assert_ne!(route_group("rmq_bridge", "pay"), "rmq_bridge");
    }
}
