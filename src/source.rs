//! The 4.x source: for one topic and tag expression, discovers every source
//! queue (brokerName, queueId) from the name servers, and pulls each queue with
//! long polling from a given offset into a bounded channel (prefetch), yielding
//! decoded records with their queue and offsets.
//!
//! Pulls go to a broker's master first and fall back to its slaves while the
//! master is unreachable. This module knows the Remoting client, not the
//! pipeline: it never decides what to forward and never writes checkpoints.
//!
//! It owns what the pipeline may assume of a [`PullOutcome`]: offsets are
//! never negative, and the records and undecodable records of one outcome
//! have distinct offsets, each in `[requested, next_offset)`, increasing in
//! each list. Whatever a broker answers is checked against that here
//! ([`pull_outcome`]); records that break it are dropped with a warning (a
//! later pull reads them again where that is possible).

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::watch;

use crate::checkpoint::SourceQueue;
use crate::handoff;
use crate::remoting::message::DEFAULT_MAX_BODY_BYTES;
use crate::remoting::{
    MessageRecord, NameServers, PullRequest, PullResult, PullStatus, RemotingClient, RemotingError,
    TopicRoute, UndecodableRecord,
};

/// What one pull of one queue produced.
#[derive(Debug)]
pub enum PullOutcome {
    /// Records in offset order (possibly empty when the tag filter matched none).
    Records {
        records: Vec<MessageRecord>,
        /// Records of this pull that could not be decoded, in offset order.
        undecodable: Vec<UndecodableRecord>,
        next_offset: i64,
        max_offset: i64,
    },
    /// Long poll ended with nothing new.
    Idle { next_offset: i64, max_offset: i64 },
    /// The requested offset is no longer (or not yet) stored; resume at
    /// `next_offset`. Also a PULL_RETRY_IMMEDIATELY over a removed range
    /// (Java's `MESSAGE_WAS_REMOVING`, or a slave below its min offset), so
    /// that the pipeline counts `next_offset - requested` as expired.
    OffsetMoved {
        requested: i64,
        next_offset: i64,
        min_offset: i64,
        max_offset: i64,
    },
}

/// A batch delivered by a queue puller.
#[derive(Debug)]
pub struct PulledBatch {
    pub queue: SourceQueue,
    pub outcome: PullOutcome,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("topic `{topic}` does not exist on the 4.x cluster (name servers {namesrv}); create it or fix source_topic")]
    TopicNotFound { topic: String, namesrv: String },
    #[error("4.x broker `{broker}` of topic `{topic}` has no reachable address in the route")]
    NoBrokerAddress { topic: String, broker: String },
    #[error("4.x: {0}")]
    Remoting(#[from] RemotingError),
    #[error(
        "4.x broker answered a pull of topic `{topic}` {queue} at offset {requested} with \
         impossible offsets ({detail}); retrying"
    )]
    BadOffsets {
        topic: String,
        queue: String,
        requested: i64,
        detail: String,
    },
}

/// The largest body the source inflates (see
/// [`crate::remoting::message::decode_pull_body`]); read at every pull, so a
/// limit the 5.x target announces after the route started applies from then.
#[derive(Clone)]
pub struct BodyLimit(Arc<dyn Fn() -> usize + Send + Sync>);

impl BodyLimit {
    pub fn fixed(bytes: usize) -> Self {
        BodyLimit(Arc::new(move || bytes))
    }

    /// Asks `current` at every pull, e.g. the publisher's `max_body_size`.
    pub fn from_fn(current: impl Fn() -> usize + Send + Sync + 'static) -> Self {
        BodyLimit(Arc::new(current))
    }

    pub fn get(&self) -> usize {
        (self.0)()
    }
}

impl Default for BodyLimit {
    /// The 5.x default max body size.
    fn default() -> Self {
        BodyLimit::fixed(DEFAULT_MAX_BODY_BYTES)
    }
}

impl std::fmt::Debug for BodyLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BodyLimit({} bytes now)", self.get())
    }
}

/// Settings for one topic source.
#[derive(Debug, Clone)]
pub struct SourceSettings {
    pub topic: String,
    pub filter: String,
    pub consumer_group: String,
    pub pull_batch_size: u32,
    pub long_poll: Duration,
}

/// One 4.x topic's source. Cheap to clone.
#[derive(Clone)]
pub struct TopicSource {
    client: RemotingClient,
    namesrv: NameServers,
    settings: Arc<SourceSettings>,
    body_limit: BodyLimit,
    route: Arc<RwLock<Option<TopicRoute>>>,
}

impl TopicSource {
    /// A source that inflates bodies up to the 5.x default max body size;
    /// see [`TopicSource::with_body_limit`].
    pub fn new(client: RemotingClient, namesrv: NameServers, settings: SourceSettings) -> Self {
        TopicSource {
            client,
            namesrv,
            settings: Arc::new(settings),
            body_limit: BodyLimit::default(),
            route: Arc::new(RwLock::new(None)),
        }
    }

    /// Inflates no body beyond `limit` (the largest body the 5.x target
    /// accepts): a larger one becomes an undecodable record, and inflating
    /// it stops at the limit.
    pub fn with_body_limit(mut self, limit: BodyLimit) -> Self {
        self.body_limit = limit;
        self
    }

    pub fn topic(&self) -> &str {
        &self.settings.topic
    }

    pub fn client(&self) -> &RemotingClient {
        &self.client
    }

    /// Fetches the route from the name servers and returns every readable queue.
    pub async fn refresh_route(&self) -> Result<Vec<SourceQueue>, SourceError> {
        let route = self
            .namesrv
            .topic_route(&self.client, &self.settings.topic)
            .await?
            .ok_or_else(|| SourceError::TopicNotFound {
                topic: self.settings.topic.clone(),
                namesrv: self.namesrv.to_string(),
            })?;
        let queues: BTreeSet<SourceQueue> = route
            .readable_queues()
            .into_iter()
            .map(|(broker_name, queue_id)| SourceQueue {
                broker_name: broker_name.to_string(),
                queue_id,
            })
            .collect();
        if let Ok(mut slot) = self.route.write() {
            *slot = Some(route);
        }
        Ok(queues.into_iter().collect())
    }

    /// Broker addresses for a broker name, master first, from the cached route.
    pub fn broker_addrs(&self, broker_name: &str) -> Vec<String> {
        match self.route.read() {
            Ok(route) => route
                .as_ref()
                .map(|r| {
                    r.addrs_master_first(broker_name)
                        .into_iter()
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    }

    /// Every broker address of the topic (masters and slaves).
    pub fn all_broker_addrs(&self) -> Vec<String> {
        let Ok(route) = self.route.read() else {
            return Vec::new();
        };
        let Some(route) = route.as_ref() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for b in &route.broker_datas {
            for addr in b.broker_addrs.values() {
                if !out.contains(addr) {
                    out.push(addr.clone());
                }
            }
        }
        out
    }

    /// Master address of a broker name.
    pub fn master_addr(&self, queue: &SourceQueue) -> Result<String, SourceError> {
        self.broker_addrs(&queue.broker_name)
            .into_iter()
            .next()
            .ok_or_else(|| SourceError::NoBrokerAddress {
                topic: self.settings.topic.clone(),
                broker: queue.broker_name.clone(),
            })
    }

    /// Runs `op` against the master, then each slave, returning the first
    /// success; connection-level failures move on to the next address.
    async fn on_broker<T, F, Fut>(&self, queue: &SourceQueue, op: F) -> Result<T, SourceError>
    where
        F: Fn(String) -> Fut,
        Fut: std::future::Future<Output = Result<T, RemotingError>>,
    {
        let addrs = self.broker_addrs(&queue.broker_name);
        if addrs.is_empty() {
            return Err(SourceError::NoBrokerAddress {
                topic: self.settings.topic.clone(),
                broker: queue.broker_name.clone(),
            });
        }
        let mut last = None;
        for addr in addrs {
            match op(addr).await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_connection_error() => last = Some(e),
                Err(e) => return Err(e.into()),
            }
        }
        Err(last
            .map(SourceError::from)
            .unwrap_or_else(|| SourceError::NoBrokerAddress {
                topic: self.settings.topic.clone(),
                broker: queue.broker_name.clone(),
            }))
    }

    /// One long-polling pull of one queue, checked by [`pull_outcome`]. A
    /// negative `offset` is pulled (and reported) as 0.
    pub async fn pull(
        &self,
        queue: &SourceQueue,
        offset: i64,
        max_messages: u32,
    ) -> Result<PullOutcome, SourceError> {
        let requested = offset.max(0);
        if requested != offset {
            tracing::warn!(topic = %self.settings.topic, %queue, offset, "negative pull offset; pulling from 0");
        }
        let request = PullRequest {
            consumer_group: self.settings.consumer_group.clone(),
            topic: self.settings.topic.clone(),
            queue_id: queue.queue_id,
            queue_offset: requested,
            max_msg_nums: max_messages,
            sub_expression: self.settings.filter.clone(),
            expression_type: "TAG".into(),
            sub_version: 0,
            suspend_timeout: self.settings.long_poll,
            commit_offset: None,
        };
        let max_body_bytes = self.body_limit.get();
        let result = self
            .on_broker(queue, |addr| {
                let request = &request;
                let client = &self.client;
                async move {
                    client
                        .pull_message_bounded(&addr, request, max_body_bytes)
                        .await
                }
            })
            .await?;
        let checked =
            pull_outcome(requested, result).map_err(|detail| SourceError::BadOffsets {
                topic: self.settings.topic.clone(),
                queue: queue.to_string(),
                requested,
                detail,
            })?;
        if !checked.dropped.is_empty() {
            metrics::counter!(crate::metrics::SOURCE_ERRORS_TOTAL, "kind" => "bad_offsets")
                .increment(checked.dropped.len() as u64);
            tracing::warn!(
                topic = %self.settings.topic, %queue, requested, dropped = ?checked.dropped,
                "4.x broker returned records outside the pulled range or with repeated offsets; dropped them"
            );
        }
        if let PullOutcome::Records { undecodable, .. } = &checked.outcome {
            for u in undecodable {
                metrics::counter!(crate::metrics::SOURCE_ERRORS_TOTAL, "kind" => "undecodable")
                    .increment(1);
                tracing::warn!(
                    topic = %self.settings.topic, %queue, queue_offset = u.queue_offset,
                    bytes = u.raw.len(), reason = %u.reason,
                    "4.x record cannot be decoded; handing it on for quarantine"
                );
            }
        }
        Ok(checked.outcome)
    }

    pub async fn max_offset(&self, queue: &SourceQueue) -> Result<i64, SourceError> {
        let topic = self.settings.topic.clone();
        self.on_broker(queue, |addr| {
            let client = self.client.clone();
            let topic = topic.clone();
            let id = queue.queue_id;
            async move { client.get_max_offset(&addr, &topic, id).await }
        })
        .await
    }

    pub async fn min_offset(&self, queue: &SourceQueue) -> Result<i64, SourceError> {
        let topic = self.settings.topic.clone();
        self.on_broker(queue, |addr| {
            let client = self.client.clone();
            let topic = topic.clone();
            let id = queue.queue_id;
            async move { client.get_min_offset(&addr, &topic, id).await }
        })
        .await
    }

    pub async fn offset_at(
        &self,
        queue: &SourceQueue,
        timestamp_ms: i64,
    ) -> Result<i64, SourceError> {
        let topic = self.settings.topic.clone();
        self.on_broker(queue, |addr| {
            let client = self.client.clone();
            let topic = topic.clone();
            let id = queue.queue_id;
            async move {
                client
                    .search_offset_by_timestamp(&addr, &topic, id, timestamp_ms)
                    .await
            }
        })
        .await
    }

    /// Committed offset of a 4.x consumer group on a queue (master only: slaves
    /// may hold stale consumer offsets).
    pub async fn group_offset(
        &self,
        queue: &SourceQueue,
        group: &str,
    ) -> Result<Option<i64>, SourceError> {
        let addr = self.master_addr(queue)?;
        Ok(self
            .client
            .query_consumer_offset(&addr, group, &self.settings.topic, queue.queue_id)
            .await?)
    }

    /// Spawns a task that pulls `queue` from `start_offset` and sends each
    /// outcome into a channel holding at most `prefetch` batches, so memory
    /// stays bounded when the consumer is slower than the broker. The task
    /// ends when `stop` turns true or the receiver is dropped.
    pub fn spawn_puller(
        &self,
        queue: SourceQueue,
        start_offset: i64,
        prefetch: usize,
        mut stop: watch::Receiver<bool>,
    ) -> handoff::Receiver<PulledBatch> {
        let (tx, rx) = handoff::channel(prefetch.max(1));
        let source = self.clone();
        tokio::spawn(async move {
            let mut offset = start_offset;
            let mut backoff = Duration::from_millis(100);
            let mut stall = Stall::default();
            loop {
                if *stop.borrow() {
                    return;
                }
                let pull = source.pull(&queue, offset, source.settings.pull_batch_size);
                let outcome = tokio::select! {
                    r = pull => r,
                    _ = stop.changed() => return,
                };
                match outcome {
                    Ok(outcome) => {
                        backoff = Duration::from_millis(100);
                        let next = match &outcome {
                            PullOutcome::Records { next_offset, .. }
                            | PullOutcome::Idle { next_offset, .. }
                            | PullOutcome::OffsetMoved { next_offset, .. } => *next_offset,
                        };
                        let idle = matches!(outcome, PullOutcome::Idle { .. });
                        let batch = PulledBatch {
                            queue: queue.clone(),
                            outcome,
                        };
                        if tx.send(batch).await.is_err() {
                            return;
                        }
                        let pause = if idle {
                            // The broker answered without suspending; a short
                            // pause keeps an idle queue from spinning.
                            stall = Stall::default();
                            Some(Duration::from_millis(5))
                        } else {
                            // No progress (a lagging or unreadable slave answering
                            // RETRY_IMMEDIATELY): wait longer each time, up to 1 s.
                            stall.after(next != offset)
                        };
                        offset = next;
                        if let Some(pause) = pause {
                            tokio::select! {
                                _ = tokio::time::sleep(pause) => {},
                                _ = stop.changed() => return,
                            }
                        }
                    }
                    Err(e) => {
                        metrics::counter!(crate::metrics::SOURCE_ERRORS_TOTAL, "kind" => "pull")
                            .increment(1);
                        tracing::warn!(topic = %source.settings.topic, %queue, offset, error = %e, "pull failed; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {},
                            _ = stop.changed() => return,
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        if let Err(e) = source.refresh_route().await {
                            tracing::debug!(error = %e, "route refresh after pull failure failed");
                        }
                    }
                }
            }
        });
        rx
    }
}

/// Waits between pulls that make no progress: 20 ms, doubling up to 1 s,
/// back to none after the first pull that moves on.
#[derive(Debug, Default)]
struct Stall(Option<Duration>);

impl Stall {
    const FIRST: Duration = Duration::from_millis(20);
    const MAX: Duration = Duration::from_secs(1);

    fn after(&mut self, progressed: bool) -> Option<Duration> {
        self.0 = if progressed {
            None
        } else {
            Some(self.0.map_or(Self::FIRST, |d| (d * 2).min(Self::MAX)))
        };
        self.0
    }
}

/// A checked pull outcome and the offsets of the records dropped from it.
#[derive(Debug)]
pub struct CheckedPull {
    pub outcome: PullOutcome,
    /// Offsets of records (and undecodable records) outside
    /// `[requested, next_offset)` or repeating an earlier offset.
    pub dropped: Vec<i64>,
}

/// Turns the broker's answer to a pull at `requested` (not negative) into
/// what the pipeline may rely on (see the module documentation). `Err`
/// names an answer no broker should give (negative offsets).
///
/// PULL_RETRY_IMMEDIATELY means one of three things on a Java broker, told
/// apart by the store status in the remark and the offsets:
/// - `MESSAGE_WAS_REMOVING`: the commit log under `[requested, next)` was
///   deleted; reported as [`PullOutcome::OffsetMoved`] so the gap is counted
///   as expired (Java's consumer skips it silently);
/// - a slave without offset correction answers a range below its min offset
///   this way (`OFFSET_TOO_SMALL`, next = requested): also moved, to the min;
/// - `NO_MATCHED_MESSAGE`: the broker filtered the range away; continue at
///   `next`, nothing lost;
/// - a slave behind the requested offset (next = requested): no progress,
///   which the puller backs off on.
pub fn pull_outcome(requested: i64, r: PullResult) -> Result<CheckedPull, String> {
    let next = r.next_begin_offset;
    if next < 0 || r.min_offset < 0 || r.max_offset < 0 {
        return Err(format!(
            "next begin offset {next}, min offset {}, max offset {}",
            r.min_offset, r.max_offset
        ));
    }
    let (min_offset, max_offset) = (r.min_offset, r.max_offset);
    let mut dropped = Vec::new();
    let outcome = match r.status {
        PullStatus::Found | PullStatus::NoMatchedMsg => {
            let (records, undecodable, next_offset) =
                check_offsets(requested, next, r.messages, r.undecodable, &mut dropped);
            PullOutcome::Records {
                records,
                undecodable,
                next_offset,
                max_offset,
            }
        }
        PullStatus::RetryImmediately => {
            let removed = r.store_status.as_deref() == Some("MESSAGE_WAS_REMOVING");
            if removed && next > requested {
                PullOutcome::OffsetMoved {
                    requested,
                    next_offset: next,
                    min_offset,
                    max_offset,
                }
            } else if min_offset > requested {
                PullOutcome::OffsetMoved {
                    requested,
                    next_offset: min_offset,
                    min_offset,
                    max_offset,
                }
            } else {
                PullOutcome::Records {
                    records: Vec::new(),
                    undecodable: Vec::new(),
                    next_offset: next.max(requested),
                    max_offset,
                }
            }
        }
        PullStatus::NoNewMsg => PullOutcome::Idle {
            next_offset: next.max(requested),
            max_offset,
        },
        PullStatus::OffsetMoved => PullOutcome::OffsetMoved {
            requested,
            next_offset: next,
            min_offset,
            max_offset,
        },
    };
    Ok(CheckedPull { outcome, dropped })
}

/// Keeps the records with offsets in `[requested, next)`, each above the
/// one before, and the undecodable records likewise that share no offset
/// with a kept record. When the broker's `next` is not past `requested`,
/// the range is open-ended and the next offset follows the last kept
/// record (or stays at `requested`).
fn check_offsets(
    requested: i64,
    next: i64,
    mut records: Vec<MessageRecord>,
    mut undecodable: Vec<UndecodableRecord>,
    dropped: &mut Vec<i64>,
) -> (Vec<MessageRecord>, Vec<UndecodableRecord>, i64) {
    let upper = if next > requested { next } else { i64::MAX };
    let keep = |offset: i64, last: &mut Option<i64>| {
        let ok = offset >= requested && offset < upper && last.map_or(true, |l| offset > l);
        if ok {
            *last = Some(offset);
        }
        ok
    };
    let mut last = None;
    records.retain(|m| {
        let ok = keep(m.queue_offset, &mut last);
        if !ok {
            dropped.push(m.queue_offset);
        }
        ok
    });
    let taken: BTreeSet<i64> = records.iter().map(|m| m.queue_offset).collect();
    let mut last_bad = None;
    undecodable.retain(|u| {
        let ok = !taken.contains(&u.queue_offset) && keep(u.queue_offset, &mut last_bad);
        if !ok {
            dropped.push(u.queue_offset);
        }
        ok
    });
    let next_offset = if next > requested {
        next
    } else {
        // Every kept offset is below i64::MAX, so + 1 cannot overflow.
        last.max(last_bad).map_or(requested, |l| l + 1)
    };
    (records, undecodable, next_offset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn record(offset: i64) -> MessageRecord {
        MessageRecord {
            topic: "t".into(),
            queue_id: 0,
            queue_offset: offset,
            commit_log_offset: 0,
            sys_flag: 0,
            flag: 0,
            body_crc: 0,
            born_timestamp_ms: 0,
            born_host: "127.0.0.1:1".parse().unwrap(),
            store_timestamp_ms: 0,
            store_host: "127.0.0.1:2".parse().unwrap(),
            reconsume_times: 0,
            prepared_transaction_offset: 0,
            body: Bytes::new(),
            properties: Default::default(),
            offset_msg_id: String::new(),
        }
    }

    fn bad(offset: i64) -> UndecodableRecord {
        UndecodableRecord {
            queue_offset: offset,
            raw: Bytes::from_static(b"raw"),
            reason: "test".into(),
        }
    }

    fn result(status: PullStatus, next: i64, records: &[i64], bad_at: &[i64]) -> PullResult {
        PullResult {
            status,
            next_begin_offset: next,
            min_offset: 0,
            max_offset: 100,
            suggest_which_broker_id: 0,
            messages: records.iter().copied().map(record).collect(),
            undecodable: bad_at.iter().copied().map(bad).collect(),
            store_status: None,
        }
    }

    /// (record offsets, undecodable offsets, next offset) of a Records outcome.
    fn records_of(c: &CheckedPull) -> (Vec<i64>, Vec<i64>, i64) {
        match &c.outcome {
            PullOutcome::Records {
                records,
                undecodable,
                next_offset,
                ..
            } => (
                records.iter().map(|r| r.queue_offset).collect(),
                undecodable.iter().map(|u| u.queue_offset).collect(),
                *next_offset,
            ),
            other => panic!("expected records, got {other:?}"),
        }
    }

    fn moved_of(c: &CheckedPull) -> (i64, i64) {
        match c.outcome {
            PullOutcome::OffsetMoved {
                requested,
                next_offset,
                ..
            } => (requested, next_offset),
            ref other => panic!("expected offset moved, got {other:?}"),
        }
    }

    #[test]
    fn undecodable_records_are_handed_on() {
        let c = pull_outcome(10, result(PullStatus::Found, 13, &[10, 12], &[11])).unwrap();
        assert_eq!(records_of(&c), (vec![10, 12], vec![11], 13));
        assert!(c.dropped.is_empty());
    }

    #[test]
    fn overlapping_and_repeated_offsets_are_dropped() {
        let c = pull_outcome(
            10,
            result(
                PullStatus::Found,
                20,
                &[10, 11, 11, 10, 12, 15],
                &[12, 13, 13, 14],
            ),
        )
        .unwrap();
        assert_eq!(records_of(&c), (vec![10, 11, 12, 15], vec![13, 14], 20));
        assert_eq!(c.dropped, vec![11, 10, 12, 13]);
    }

    #[test]
    fn records_outside_the_pulled_range_are_dropped() {
        let c = pull_outcome(
            10,
            result(PullStatus::Found, 13, &[9, 10, 13, 14], &[2, 12]),
        )
        .unwrap();
        assert_eq!(records_of(&c), (vec![10], vec![12], 13));
        assert_eq!(c.dropped, vec![9, 13, 14, 2]);
    }

    #[test]
    fn a_next_offset_not_past_the_request_follows_the_records() {
        let c = pull_outcome(10, result(PullStatus::Found, 5, &[10, 11], &[12])).unwrap();
        assert_eq!(records_of(&c), (vec![10, 11], vec![12], 13));
        let c = pull_outcome(10, result(PullStatus::NoMatchedMsg, 3, &[], &[])).unwrap();
        assert_eq!(records_of(&c), (vec![], vec![], 10));
    }

    #[test]
    fn extreme_offsets_neither_overflow_nor_panic() {
        let top = i64::MAX;
        let c = pull_outcome(top - 1, result(PullStatus::Found, 0, &[top - 1, top], &[])).unwrap();
        assert_eq!(records_of(&c), (vec![top - 1], vec![], top));
        let c = pull_outcome(0, result(PullStatus::Found, top, &[top - 1], &[top])).unwrap();
        assert_eq!(records_of(&c), (vec![top - 1], vec![], top));
        assert!(pull_outcome(5, result(PullStatus::Found, -1, &[5], &[])).is_err());
        let mut r = result(PullStatus::OffsetMoved, 3, &[], &[]);
        r.min_offset = i64::MIN;
        assert!(pull_outcome(5, r).is_err());
    }

    #[test]
    fn retry_immediately_over_a_removed_range_counts_as_moved() {
        let mut r = result(PullStatus::RetryImmediately, 40, &[], &[]);
        r.store_status = Some("MESSAGE_WAS_REMOVING".into());
        assert_eq!(moved_of(&pull_outcome(10, r).unwrap()), (10, 40));

        // A slave that does not correct offsets, below its min offset.
        let mut r = result(PullStatus::RetryImmediately, 10, &[], &[]);
        r.store_status = Some("OFFSET_TOO_SMALL".into());
        r.min_offset = 25;
        assert_eq!(moved_of(&pull_outcome(10, r).unwrap()), (10, 25));
    }

    #[test]
    fn retry_immediately_over_a_filtered_range_moves_on_without_loss() {
        let mut r = result(PullStatus::RetryImmediately, 40, &[], &[]);
        r.store_status = Some("NO_MATCHED_MESSAGE".into());
        assert_eq!(
            records_of(&pull_outcome(10, r).unwrap()),
            (vec![], vec![], 40)
        );
    }

    #[test]
    fn retry_immediately_from_a_lagging_slave_makes_no_progress() {
        let mut r = result(PullStatus::RetryImmediately, 10, &[], &[]);
        r.store_status = Some("OFFSET_OVERFLOW_BADLY".into());
        r.max_offset = 8;
        assert_eq!(
            records_of(&pull_outcome(10, r).unwrap()),
            (vec![], vec![], 10)
        );
    }

    #[test]
    fn stalls_back_off_up_to_a_second_and_reset_on_progress() {
        let mut s = Stall::default();
        let waits: Vec<_> = (0..8).map(|_| s.after(false).unwrap()).collect();
        assert_eq!(waits[0], Duration::from_millis(20));
        assert_eq!(waits[1], Duration::from_millis(40));
        assert_eq!(waits[7], Duration::from_secs(1));
        assert_eq!(s.after(true), None);
        assert_eq!(s.after(false), Some(Duration::from_millis(20)));
    }

    #[test]
    fn body_limit_is_read_at_every_pull() {
        let n = Arc::new(std::sync::atomic::AtomicUsize::new(4));
        let seen = Arc::clone(&n);
        let limit = BodyLimit::from_fn(move || seen.load(std::sync::atomic::Ordering::Relaxed));
        assert_eq!(limit.get(), 4);
        n.store(16, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(limit.get(), 16);
        assert_eq!(BodyLimit::default().get(), DEFAULT_MAX_BODY_BYTES);
    }
}
