//! The 4.x source: for one topic and tag expression, discovers every source
//! queue (brokerName, queueId) from the name servers, and pulls each queue with
//! long polling from a given offset into a bounded channel (prefetch), yielding
//! decoded records with their queue and offsets.
//!
//! Pulls go to a broker's master first and fall back to its slaves while the
//! master is unreachable. This module knows the Remoting client, not the
//! pipeline: it never decides what to forward and never writes checkpoints.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::checkpoint::SourceQueue;
use crate::remoting::{
    MessageRecord, NameServers, PullRequest, PullStatus, RemotingClient, RemotingError, TopicRoute,
};

/// What one pull of one queue produced.
#[derive(Debug)]
pub enum PullOutcome {
    /// Records in offset order (possibly empty when the tag filter matched none).
    Records {
        records: Vec<MessageRecord>,
        /// Records of this pull that could not be decoded, in offset order.
        undecodable: Vec<crate::remoting::UndecodableRecord>,
        next_offset: i64,
        max_offset: i64,
    },
    /// Long poll ended with nothing new.
    Idle { next_offset: i64, max_offset: i64 },
    /// The requested offset is no longer (or not yet) stored; resume at `next_offset`.
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
    route: Arc<RwLock<Option<TopicRoute>>>,
}

impl TopicSource {
    pub fn new(client: RemotingClient, namesrv: NameServers, settings: SourceSettings) -> Self {
        TopicSource {
            client,
            namesrv,
            settings: Arc::new(settings),
            route: Arc::new(RwLock::new(None)),
        }
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

    /// One long-polling pull of one queue.
    pub async fn pull(
        &self,
        queue: &SourceQueue,
        offset: i64,
        max_messages: u32,
    ) -> Result<PullOutcome, SourceError> {
        let request = PullRequest {
            consumer_group: self.settings.consumer_group.clone(),
            topic: self.settings.topic.clone(),
            queue_id: queue.queue_id,
            queue_offset: offset,
            max_msg_nums: max_messages,
            sub_expression: self.settings.filter.clone(),
            expression_type: "TAG".into(),
            sub_version: 0,
            suspend_timeout: self.settings.long_poll,
            commit_offset: None,
        };
        let result = self
            .on_broker(queue, |addr| {
                let request = request.clone();
                let client = self.client.clone();
                async move { client.pull_message(&addr, &request).await }
            })
            .await?;
        Ok(match result.status {
            PullStatus::Found => PullOutcome::Records {
                records: result.messages,
                undecodable: Vec::new(),
                next_offset: result.next_begin_offset,
                max_offset: result.max_offset,
            },
            PullStatus::NoMatchedMsg => PullOutcome::Records {
                records: Vec::new(),
                undecodable: Vec::new(),
                next_offset: result.next_begin_offset,
                max_offset: result.max_offset,
            },
            // Java's consumer treats RETRY_IMMEDIATELY like "no matched message"
            // and continues at the broker's next begin offset.
            PullStatus::RetryImmediately => PullOutcome::Records {
                records: Vec::new(),
                undecodable: Vec::new(),
                next_offset: result.next_begin_offset.max(offset),
                max_offset: result.max_offset,
            },
            PullStatus::NoNewMsg => PullOutcome::Idle {
                next_offset: result.next_begin_offset.max(offset),
                max_offset: result.max_offset,
            },
            PullStatus::OffsetMoved => PullOutcome::OffsetMoved {
                requested: offset,
                next_offset: result.next_begin_offset,
                min_offset: result.min_offset,
                max_offset: result.max_offset,
            },
        })
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
    ) -> mpsc::Receiver<PulledBatch> {
        let (tx, rx) = mpsc::channel(prefetch.max(1));
        let source = self.clone();
        tokio::spawn(async move {
            let mut offset = start_offset;
            let mut backoff = Duration::from_millis(100);
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
                        offset = next;
                        if idle {
                            // The broker answered without suspending (e.g. retry-immediately);
                            // a short pause keeps an idle queue from spinning.
                            tokio::time::sleep(Duration::from_millis(5)).await;
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
