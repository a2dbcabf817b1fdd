//! Publishing to a 4.x cluster over Remoting (reverse routes, 5.x -> 4.x).
//!
//! Owns: turning the plain message into a 4.x SEND_MESSAGE_V2 (byte-exact
//! body, `UNIQ_KEY`, `TAGS`, `KEYS`, user properties), which queue it goes
//! to, and what each broker answer means for the pipeline.
//!
//! Queue choice: a FIFO message goes to the writable queue that scores
//! highest for its group ([`fifo_queue`], rendezvous hashing), so a group
//! stays on one queue, and stays there when another broker leaves, and a
//! 4.x orderly consumer sees it in order (the pipeline keeps one send per
//! group in flight); any other
//! message takes the next queue in turn. DELAY and TRANSACTION messages
//! never reach here as such: a 4.x topic is offered as NORMAL and FIFO only
//! (see [`RemotingSink::accepted_types`]), so translation sends a due timer
//! message or a committed transaction as NORMAL, without the 5.x timer
//! properties. The route lookups are cached for 30 s and dropped on a
//! failure, so a moved or re-created topic is found again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::grpc::{Disposition, MessageKind, OutgoingMessage, TopicMessageType};
use crate::remoting::codes::response;
use crate::remoting::{
    names, BatchEntry, NameServers, Properties, RemotingClient, RemotingError, SendBatchRequest,
    SendRequest,
};

/// A 4.x broker's default `maxMessageSize` (4 MiB).
pub const MAX_BODY_SIZE: usize = 4 * 1024 * 1024;
/// Bodies above this are zlib-compressed, as Java producers do by default.
const COMPRESS_OVER: usize = 4096;
const ROUTE_TTL: Duration = Duration::from_secs(30);
/// A packed send carries at most this many body bytes; more go one by one.
const BATCH_MAX_BYTES: usize = 1024 * 1024;

/// One writable queue: (broker name, queue id, master address).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct WritableQueue {
    pub broker: String,
    pub queue_id: i32,
    pub addr: String,
}

/// Writable queues per topic, with when they were looked up.
type RouteCache = HashMap<String, (Instant, Arc<Vec<WritableQueue>>)>;

/// A 4.x cluster as a sink. Cheap to clone.
#[derive(Clone)]
pub struct RemotingSink {
    client: RemotingClient,
    namesrv: NameServers,
    producer_group: String,
    routes: Arc<Mutex<RouteCache>>,
    next: Arc<AtomicUsize>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum RemotingSinkError {
    #[error(
        "topic `{topic}` does not exist on 4.x — create it on the 4.x cluster before the \
         reverse route forwards to it; the bridge keeps retrying"
    )]
    TopicNotFound { topic: String },
    #[error(
        "4.x has no writable queue with a master for topic `{topic}` — check the topic's \
         permission and that its brokers' masters are up; the bridge keeps retrying"
    )]
    NoWritableQueue { topic: String },
    #[error(
        "4.x broker {addr} refused message `{message_id}` for topic `{topic}` with code {code}: \
         {remark} — {remedy}",
        remedy = remedy(*code)
    )]
    Refused {
        topic: String,
        message_id: String,
        addr: String,
        code: i32,
        remark: String,
    },
    #[error("message `{message_id}` cannot be sent to 4.x topic `{topic}`: {reason}")]
    Invalid {
        topic: String,
        message_id: String,
        reason: String,
    },
    #[error(
        "4.x broker {addr} failed for `{what}`: {reason} — check that the 4.x brokers are up \
         and reachable; the bridge retries"
    )]
    Unreachable {
        what: String,
        addr: String,
        reason: String,
    },
}

fn remedy(code: i32) -> &'static str {
    match code {
        response::MESSAGE_ILLEGAL => "the message breaks a 4.x limit (size, properties); it is quarantined",
        response::NO_PERMISSION => "grant the bridge's 4.x access key publish on this topic ([source] credentials)",
        response::TOPIC_NOT_EXIST => "create the topic on 4.x",
        response::SYSTEM_BUSY | response::SERVICE_NOT_AVAILABLE => "the broker is busy or stopping; the bridge retries",
        _ => "the bridge retries, and quarantines the message if it keeps being refused while others are accepted",
    }
}

impl RemotingSinkError {
    pub fn disposition(&self) -> Disposition {
        match self {
            RemotingSinkError::TopicNotFound { .. } | RemotingSinkError::NoWritableQueue { .. } => {
                Disposition::Route
            }
            RemotingSinkError::Invalid { .. } => Disposition::Message,
            RemotingSinkError::Unreachable { .. } => Disposition::Transient,
            RemotingSinkError::Refused { code, .. } => match *code {
                response::MESSAGE_ILLEGAL => Disposition::Message,
                response::NO_PERMISSION | response::TOPIC_NOT_EXIST => Disposition::Route,
                response::SYSTEM_BUSY | response::SERVICE_NOT_AVAILABLE => Disposition::Transient,
                _ => Disposition::Suspect,
            },
        }
    }

    pub fn code_label(&self) -> &'static str {
        match self {
            RemotingSinkError::TopicNotFound { .. } => "TOPIC_NOT_EXIST",
            RemotingSinkError::NoWritableQueue { .. } => "NO_WRITABLE_QUEUE",
            RemotingSinkError::Invalid { .. } => "MESSAGE_ILLEGAL",
            RemotingSinkError::Unreachable { .. } => "REMOTING_UNREACHABLE",
            RemotingSinkError::Refused { code, .. } => match *code {
                response::MESSAGE_ILLEGAL => "MESSAGE_ILLEGAL",
                response::NO_PERMISSION => "NO_PERMISSION",
                response::TOPIC_NOT_EXIST => "TOPIC_NOT_EXIST",
                response::SYSTEM_BUSY => "SYSTEM_BUSY",
                response::SERVICE_NOT_AVAILABLE => "SERVICE_NOT_AVAILABLE",
                _ => "REMOTING_REFUSED",
            },
        }
    }
}

/// The queue a FIFO group's messages go to: of the topic's writable
/// queues, the one with the highest score for (group, broker, queue id)
/// (rendezvous hashing). Every instance and every restart picks the same
/// one, and the choice does not depend on the other queues: when a broker
/// leaves the route, only the groups whose queue went away move, while the
/// others stay where their earlier messages wait for a 4.x orderly consumer
/// (a hash modulo the number of queues moved most groups). A queue that
/// joins takes over the groups that score highest on it. None when there
/// is no queue.
pub fn fifo_queue<'q>(group: &str, queues: &'q [WritableQueue]) -> Option<&'q WritableQueue> {
    queues.iter().max_by_key(|q| {
        (
            fifo_score(group, &q.broker, q.queue_id),
            std::cmp::Reverse(*q),
        )
    })
}

/// FNV-1a over the group, the broker name and the queue id (separated so
/// that no two triples share their bytes), then SplitMix64's finaliser to
/// spread the bits.
fn fifo_score(group: &str, broker: &str, queue_id: i32) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    eat(group.as_bytes());
    eat(&[0xff]);
    eat(broker.as_bytes());
    eat(&[0xff]);
    eat(&queue_id.to_le_bytes());
    let mut z = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The 4.x properties of `message`: user properties, then the reserved
/// names the message's fields map to (they win over a user property of the
/// same name, which translation never lets through anyway).
pub fn properties(message: &OutgoingMessage) -> Properties {
    let mut props = Properties::new();
    for (k, v) in &message.user_properties {
        props.insert(k, v);
    }
    props.insert(names::UNIQ_KEY, &message.message_id);
    if let Some(tag) = &message.tag {
        props.insert(names::TAGS, tag);
    }
    if !message.keys.is_empty() {
        props.insert(names::KEYS, message.keys.join(" "));
    }
    if let MessageKind::Fifo { group } = &message.kind {
        props.insert(names::SHARDING_KEY, group);
    }
    props
}

impl RemotingSink {
    /// `client` signs with the 4.x credentials where configured.
    pub fn new(client: RemotingClient, namesrv: NameServers, producer_group: &str) -> Self {
        RemotingSink {
            client,
            namesrv,
            producer_group: producer_group.to_string(),
            routes: Default::default(),
            next: Default::default(),
        }
    }

    pub fn max_body_size(&self) -> usize {
        MAX_BODY_SIZE
    }

    /// NORMAL and FIFO: translation then sends due timers and committed
    /// transactions as NORMAL, and ordered messages as FIFO.
    pub async fn accepted_types(
        &self,
        topic: &str,
    ) -> Result<Vec<TopicMessageType>, RemotingSinkError> {
        self.queues(topic).await?;
        Ok(vec![TopicMessageType::Normal, TopicMessageType::Fifo])
    }

    async fn queues(&self, topic: &str) -> Result<Arc<Vec<WritableQueue>>, RemotingSinkError> {
        if let Ok(routes) = self.routes.lock() {
            if let Some((at, queues)) = routes.get(topic) {
                if at.elapsed() < ROUTE_TTL {
                    return Ok(queues.clone());
                }
            }
        }
        let route = self
            .namesrv
            .topic_route(&self.client, topic)
            .await
            .map_err(|e| RemotingSinkError::Unreachable {
                what: format!("route of topic {topic}"),
                addr: "4.x name servers".into(),
                reason: e.to_string(),
            })?
            .ok_or_else(|| RemotingSinkError::TopicNotFound {
                topic: topic.to_string(),
            })?;
        let mut queues: Vec<WritableQueue> = route
            .queue_datas
            .iter()
            .filter(|q| q.perm & crate::remoting::route::perm::WRITE != 0)
            .filter_map(|q| {
                let addr = route.master_addr(&q.broker_name)?.to_string();
                Some((0..q.write_queue_nums.max(0)).map(move |id| WritableQueue {
                    broker: q.broker_name.clone(),
                    queue_id: id,
                    addr: addr.clone(),
                }))
            })
            .flatten()
            .collect();
        queues.sort();
        queues.dedup();
        if queues.is_empty() {
            return Err(RemotingSinkError::NoWritableQueue {
                topic: topic.to_string(),
            });
        }
        let queues = Arc::new(queues);
        if let Ok(mut routes) = self.routes.lock() {
            routes.insert(topic.to_string(), (Instant::now(), queues.clone()));
        }
        Ok(queues)
    }

    fn forget(&self, topic: &str) {
        if let Ok(mut routes) = self.routes.lock() {
            routes.remove(topic);
        }
    }

    fn pick<'q>(&self, queues: &'q [WritableQueue], kind: &MessageKind) -> &'q WritableQueue {
        if let MessageKind::Fifo { group } = kind {
            if let Some(q) = fifo_queue(group, queues) {
                return q;
            }
        }
        &queues[self.next.fetch_add(1, Ordering::Relaxed) % queues.len()]
    }

    /// One attempt.
    pub async fn send(&self, message: &OutgoingMessage) -> Result<(), RemotingSinkError> {
        let queues = self.queues(&message.topic).await?;
        let queue = self.pick(&queues, &message.kind);
        let mut req = SendRequest::new(
            &self.producer_group,
            &message.topic,
            queue.queue_id,
            message.body.clone(),
        );
        req.properties = properties(message);
        req.born_timestamp_ms = message.born_timestamp_ms;
        req.compress_over = Some(COMPRESS_OVER);
        let result = self.client.send_message_v2(&queue.addr, &req).await;
        self.settle(
            result.map(drop),
            &message.topic,
            &message.message_id,
            &queue.addr,
        )
    }

    /// NORMAL messages of one topic to one queue as SEND_BATCH_MESSAGE
    /// (at most [`BATCH_MAX_BYTES`] of bodies; larger batches go one by
    /// one); one attempt.
    pub async fn send_batch(&self, messages: &[OutgoingMessage]) -> Result<(), RemotingSinkError> {
        for run in born_runs(messages) {
            self.send_run(run).await?;
        }
        Ok(())
    }

    /// Messages of one born time as one SEND_BATCH_MESSAGE where they can go
    /// so; one attempt.
    async fn send_run(&self, messages: &[OutgoingMessage]) -> Result<(), RemotingSinkError> {
        let Some(first) = messages.first() else {
            return Ok(());
        };
        let bytes: usize = messages.iter().map(|m| m.body.len()).sum();
        if messages.len() == 1
            || bytes > BATCH_MAX_BYTES
            || messages
                .iter()
                .any(|m| m.topic != first.topic || m.kind != MessageKind::Normal)
        {
            for m in messages {
                self.send(m).await?;
            }
            return Ok(());
        }
        let queues = self.queues(&first.topic).await?;
        let queue = self.pick(&queues, &first.kind);
        let req = SendBatchRequest {
            producer_group: self.producer_group.clone(),
            topic: first.topic.clone(),
            queue_id: queue.queue_id,
            entries: messages
                .iter()
                .map(|m| BatchEntry {
                    body: m.body.clone(),
                    properties: properties(m),
                    flag: 0,
                })
                .collect(),
            born_timestamp_ms: first.born_timestamp_ms,
        };
        let what = format!("{} messages from {}", messages.len(), first.message_id);
        let result = self.client.send_batch(&queue.addr, &req).await;
        self.settle(result.map(drop), &first.topic, &what, &queue.addr)
    }

    fn settle(
        &self,
        result: Result<(), RemotingError>,
        topic: &str,
        message_id: &str,
        addr: &str,
    ) -> Result<(), RemotingSinkError> {
        let e = match result {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        self.forget(topic);
        Err(match e {
            RemotingError::Broker { code, remark, addr } => RemotingSinkError::Refused {
                topic: topic.to_string(),
                message_id: message_id.to_string(),
                addr,
                code,
                remark: remark.unwrap_or_default(),
            },
            RemotingError::InvalidRequest(reason) => RemotingSinkError::Invalid {
                topic: topic.to_string(),
                message_id: message_id.to_string(),
                reason,
            },
            other => RemotingSinkError::Unreachable {
                what: format!("message {message_id} to topic {topic}"),
                addr: addr.to_string(),
                reason: other.to_string(),
            },
        })
    }
}

/// `messages` cut where the born time changes: a 4.x batch has one born
/// time (the request header's) for every message in it, and each message
/// keeps its own (SPEC section 3), so only messages born in the same
/// millisecond share a batch.
pub fn born_runs(messages: &[OutgoingMessage]) -> impl Iterator<Item = &[OutgoingMessage]> {
    messages.chunk_by(|a, b| a.born_timestamp_ms == b.born_timestamp_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::collections::BTreeMap;

    fn message(kind: MessageKind) -> OutgoingMessage {
        OutgoingMessage {
            topic: "orders".into(),
            message_id: "7F0000010001".into(),
            body: Bytes::from_static(b"\x00body\xff"),
            tag: Some("paid".into()),
            keys: vec!["k1".into(), "k2".into()],
            user_properties: BTreeMap::from([
                ("env".into(), "gray".into()),
                ("bridge_origin".into(), "5.x".into()),
            ]),
            born_timestamp_ms: 1_700_000_000_000,
            born_host: "10.0.0.1".into(),
            kind,
        }
    }

    /// Issue 30, item 8: a batch carries one born time for all of its
    /// messages, so only messages born in one millisecond share one.
    #[test]
    fn a_batch_never_spans_two_born_times() {
        let at = |ms: i64| {
            let mut m = message(MessageKind::Normal);
            m.born_timestamp_ms = ms;
            m
        };
        let messages = [at(1), at(1), at(2), at(1), at(3), at(3), at(3)];
        let runs: Vec<Vec<i64>> = born_runs(&messages)
            .map(|r| r.iter().map(|m| m.born_timestamp_ms).collect())
            .collect();
        assert_eq!(runs, vec![vec![1, 1], vec![2], vec![1], vec![3, 3, 3]]);
        assert_eq!(born_runs(&[]).count(), 0);
    }

    #[test]
    fn every_field_becomes_its_4x_property() {
        let props = properties(&message(MessageKind::Fifo { group: "g1".into() }));
        assert_eq!(props.get("UNIQ_KEY"), Some("7F0000010001"));
        assert_eq!(props.get("TAGS"), Some("paid"));
        assert_eq!(props.get("KEYS"), Some("k1 k2"));
        assert_eq!(props.get("env"), Some("gray"));
        assert_eq!(props.get("bridge_origin"), Some("5.x"));
        assert_eq!(props.get("__SHARDINGKEY"), Some("g1"));
        let plain = properties(&message(MessageKind::Normal));
        assert_eq!(plain.get("__SHARDINGKEY"), None);
    }

    fn queues(brokers: &[&str], per_broker: i32) -> Vec<WritableQueue> {
        let mut out = Vec::new();
        for b in brokers {
            for q in 0..per_broker {
                out.push(WritableQueue {
                    broker: b.to_string(),
                    queue_id: q,
                    addr: format!("{b}:10911"),
                });
            }
        }
        out
    }

    fn placement(groups: &[String], qs: &[WritableQueue]) -> Vec<(String, i32)> {
        groups
            .iter()
            .map(|g| {
                let q = fifo_queue(g, qs).expect("a queue");
                (q.broker.clone(), q.queue_id)
            })
            .collect()
    }

    #[test]
    fn a_fifo_group_always_picks_the_same_queue_and_groups_spread() {
        let qs = queues(&["broker-a", "broker-b"], 4);
        let groups: Vec<String> = (0..400).map(|g| format!("order-{g}")).collect();
        let first = placement(&groups, &qs);
        assert_eq!(first, placement(&groups, &qs), "stable");
        let mut reversed = qs.clone();
        reversed.reverse();
        assert_eq!(
            first,
            placement(&groups, &reversed),
            "whatever the order listed"
        );
        let mut count = std::collections::BTreeMap::new();
        for p in &first {
            *count.entry(p.clone()).or_insert(0) += 1;
        }
        assert_eq!(count.len(), 8, "400 groups use every one of 8 queues");
        assert!(count.values().all(|n| (25..=75).contains(n)), "{count:?}");
        assert!(fifo_queue("anything", &[]).is_none());
    }

    /// Issue 30 item 6: when a broker leaves a reverse route, only the
    /// groups whose queue went away move; every other group stays on its
    /// queue, where its earlier messages may still wait for a 4.x orderly
    /// consumer. (With a hash modulo the queue count, most groups moved.)
    #[test]
    fn only_the_groups_of_a_queue_that_left_move() {
        let all = queues(&["broker-a", "broker-b", "broker-c"], 4);
        let groups: Vec<String> = (0..600).map(|g| format!("g{g}")).collect();
        let before = placement(&groups, &all);
        for gone in ["broker-a", "broker-b", "broker-c"] {
            let left: Vec<WritableQueue> =
                all.iter().filter(|q| q.broker != gone).cloned().collect();
            let after = placement(&groups, &left);
            let mut moved = 0;
            for (b, a) in before.iter().zip(&after) {
                if b.0 == gone {
                    moved += 1;
                    assert_ne!(a.0, gone);
                } else {
                    assert_eq!(b, a, "a group on a remaining queue moved");
                }
            }
            assert!(moved > 0);
        }
        // A queue that joins takes groups only onto itself.
        let grown = queues(&["broker-a", "broker-b", "broker-c"], 5);
        for (b, a) in before.iter().zip(&placement(&groups, &grown)) {
            assert!(a == b || a.1 == 4, "{b:?} -> {a:?}");
        }
    }

    #[test]
    fn broker_answers_map_to_what_the_pipeline_does() {
        let refused = |code| RemotingSinkError::Refused {
            topic: "t".into(),
            message_id: "m".into(),
            addr: "a".into(),
            code,
            remark: String::new(),
        };
        assert_eq!(
            refused(response::MESSAGE_ILLEGAL).disposition(),
            Disposition::Message
        );
        assert_eq!(
            refused(response::NO_PERMISSION).disposition(),
            Disposition::Route
        );
        assert_eq!(
            refused(response::TOPIC_NOT_EXIST).disposition(),
            Disposition::Route
        );
        assert_eq!(
            refused(response::SYSTEM_BUSY).disposition(),
            Disposition::Transient
        );
        assert_eq!(refused(1).disposition(), Disposition::Suspect);
        let msg = refused(response::NO_PERMISSION).to_string();
        assert!(
            msg.contains("4.x broker a") && msg.contains("publish"),
            "{msg}"
        );
    }
}
