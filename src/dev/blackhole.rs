//! A blackhole 5.x endpoint for benchmarks: serves
//! `apache.rocketmq.v2.MessagingService` to a producer the way a Java 5.x
//! proxy does, answers at once (or after a fixed service time), stores
//! nothing, and counts what it received by message id, so a run can prove
//! that nothing was lost, duplicated or reordered per FIFO group.
//!
//! Owns: the producer-facing protocol of a fast 5.x server and the tally of
//! what arrived. Must not touch: the bridge's own code paths (it is a peer,
//! reached over loopback like any 5.x proxy).
//!
//! What it does, as a Java proxy in cluster mode does (facts from
//! `SendMessageActivity` / `ProducerProcessor` of apache/rocketmq 5.x):
//! - `QueryRoute`: `queues` read-write queues per declared topic, each with
//!   the topic's `accept_message_types`, broker endpoints = the access point
//!   the client sent; an undeclared topic is `TOPIC_NOT_FOUND`.
//! - `Telemetry`: answers every `Settings` with the same settings and the
//!   server's `max_body_size`.
//! - `Heartbeat`, `NotifyClientTermination`: OK (counted).
//! - `SendMessage` with one or many entries: no entry or entries of several
//!   topics is `MESSAGE_CORRUPTED`; the type of the first message (from its
//!   fields: TRANSACTION, a delivery time, a message group, else NORMAL) must
//!   be one the topic accepts, else `MESSAGE_PROPERTY_CONFLICT_WITH_TYPE`;
//!   every entry needs a message id (`ILLEGAL_MESSAGE_ID`), a body
//!   (`MESSAGE_BODY_EMPTY`) within `max_body_size` (`MESSAGE_BODY_TOO_LARGE`)
//!   and no reserved user property (`ILLEGAL_MESSAGE_PROPERTY_KEY`). Batched
//!   transaction or timer messages are refused (`MESSAGE_CORRUPTED`; Java
//!   brokers refuse them too). A request is refused as a whole. Every
//!   message of a packed request keeps its own id (a Java proxy stores a
//!   4.x batch whose messages keep their `UNIQ_KEY`; the rocketmq-rust
//!   1.0.0 peer does not), and, as a Java proxy, the answer to a packed
//!   request is one entry listing the ids comma-separated, with the first
//!   message's offset (the 4.x batch's single `SendResult`).
//! - `EndTransaction`: COMMIT of a prepared message counts it; ROLLBACK drops
//!   it; an unknown transaction id is `INVALID_TRANSACTION_ID`.
//!
//! The tally (per target topic): requests, messages, distinct ids,
//! duplicates (an id seen again), bytes, and for FIFO messages the number of
//! arrivals out of order within their group. Order is judged by the number
//! the message id ends with (benchmark ids end in a per-lane sequence
//! number); ids without trailing digits are not judged.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use crate::grpc::pb;
use crate::grpc::pb::messaging_service_server::{MessagingService, MessagingServiceServer};
use crate::grpc::TopicMessageType;

/// Java proxy default (`ProxyConfig.maxMessageSize`): 4 MiB.
pub const DEFAULT_MAX_BODY_SIZE: usize = 4 * 1024 * 1024;

/// How the blackhole behaves.
#[derive(Debug, Clone)]
pub struct BlackholeConfig {
    /// Writable queues per topic in routes.
    pub queues: i32,
    /// Every SendMessage / EndTransaction is answered after this long.
    pub service_time: Duration,
    /// Announced in the settings and enforced.
    pub max_body_size: usize,
}

impl Default for BlackholeConfig {
    fn default() -> Self {
        BlackholeConfig {
            queues: 8,
            service_time: Duration::ZERO,
            max_body_size: DEFAULT_MAX_BODY_SIZE,
        }
    }
}

/// What arrived for one topic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicTally {
    /// SendMessage requests accepted.
    pub requests: u64,
    /// Messages accepted (transaction messages once committed).
    pub messages: u64,
    /// Distinct message ids among them.
    pub distinct: u64,
    /// Messages whose id had arrived before.
    pub duplicates: u64,
    /// Body bytes accepted.
    pub bytes: u64,
    /// Requests refused, any reason.
    pub refused: u64,
    /// FIFO message groups seen.
    pub fifo_groups: u64,
    /// FIFO arrivals whose id number was not above the group's previous one.
    pub fifo_out_of_order: u64,
}

impl TopicTally {
    /// True when exactly `expected` distinct messages arrived, each once,
    /// and every FIFO group in order.
    pub fn intact(&self, expected: u64) -> bool {
        self.messages == expected
            && self.distinct == expected
            && self.duplicates == 0
            && self.fifo_out_of_order == 0
    }
}

impl std::fmt::Display for TopicTally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} messages in {} requests, {} distinct ids, {} duplicates, {} refused requests",
            self.messages, self.requests, self.distinct, self.duplicates, self.refused
        )?;
        if self.fifo_groups > 0 {
            write!(
                f,
                ", {} FIFO groups with {} out-of-order arrivals",
                self.fifo_groups, self.fifo_out_of_order
            )?;
        }
        Ok(())
    }
}

#[derive(Default)]
struct TopicState {
    accept: Vec<TopicMessageType>,
    tally: TopicTally,
    /// Arrivals per message id.
    ids: HashMap<Box<str>, u32>,
    /// Last id number per FIFO group.
    groups: HashMap<Box<str>, Option<u64>>,
    next_offset: i64,
}

impl TopicState {
    fn count(&mut self, id: &str, group: Option<&str>, bytes: usize) {
        let t = &mut self.tally;
        t.messages += 1;
        t.bytes += bytes as u64;
        match self.ids.get_mut(id) {
            Some(n) => {
                *n += 1;
                t.duplicates += 1;
            }
            None => {
                self.ids.insert(id.into(), 1);
                t.distinct += 1;
            }
        }
        if let Some(group) = group {
            let seq = trailing_number(id);
            let last = match self.groups.get_mut(group) {
                Some(last) => last,
                None => {
                    t.fifo_groups += 1;
                    self.groups.entry(group.into()).or_insert(None)
                }
            };
            if let (Some(prev), Some(seq)) = (*last, seq) {
                if seq <= prev {
                    t.fifo_out_of_order += 1;
                }
            }
            if seq.is_some() {
                *last = seq;
            }
        }
    }
}

/// The number a message id ends with (`ORD00000000000000000042` -> 42).
pub fn trailing_number(id: &str) -> Option<u64> {
    let digits = id.len() - id.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let tail = &id[id.len() - digits..];
    // Keep at most 19 digits so the number fits.
    tail[tail.len().saturating_sub(19)..].parse().ok()
}

struct Prepared {
    topic: String,
    message_id: String,
    group: Option<String>,
    bytes: usize,
}

#[derive(Default)]
struct State {
    topics: HashMap<String, TopicState>,
    prepared: HashMap<String, Prepared>,
}

struct Inner {
    config: BlackholeConfig,
    state: Mutex<State>,
    heartbeats: AtomicU64,
    terminations: AtomicU64,
    settings: AtomicU64,
    next_tx: AtomicU64,
}

/// The blackhole service; clones share one state.
#[derive(Clone)]
pub struct Blackhole {
    inner: Arc<Inner>,
}

/// Session-level counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionCounts {
    pub heartbeats: u64,
    pub terminations: u64,
    pub settings: u64,
    /// Transaction half messages neither committed nor rolled back.
    pub pending_transactions: u64,
}

fn status(code: pb::Code, message: impl Into<String>) -> Option<pb::Status> {
    Some(pb::Status {
        code: code as i32,
        message: message.into(),
    })
}

/// The OK status as 5.x servers spell it.
pub fn ok() -> Option<pb::Status> {
    status(pb::Code::Ok, "OK")
}

/// The route a Java proxy in cluster mode answers: `queues` read-write
/// queues of one broker, each accepting `accept`, reached at `endpoints`
/// (the access point the client asked with).
pub fn route_queues(
    topic: &pb::Resource,
    endpoints: Option<pb::Endpoints>,
    accept: &[pb::MessageType],
    queues: i32,
) -> Vec<pb::MessageQueue> {
    (0..queues)
        .map(|id| pb::MessageQueue {
            topic: Some(topic.clone()),
            id,
            permission: pb::Permission::ReadWrite as i32,
            broker: Some(pb::Broker {
                name: "broker-a".into(),
                id: 0,
                endpoints: endpoints.clone(),
            }),
            accept_message_types: accept.iter().map(|t| *t as i32).collect(),
        })
        .collect()
}

/// The server's answer to a client's settings: the same settings with the
/// server's body limit (publishing only).
pub fn settings_reply(mut settings: pb::Settings, max_body_size: i32) -> pb::TelemetryCommand {
    if let Some(pb::settings::PubSub::Publishing(p)) = &mut settings.pub_sub {
        p.max_body_size = max_body_size;
    }
    pb::TelemetryCommand {
        status: ok(),
        command: Some(pb::telemetry_command::Command::Settings(settings)),
    }
}

/// The type a message claims by its fields, as Java's
/// `TopicMessageType.parseFromMessageProperty` reads the converted message.
fn message_type(sys: &pb::SystemProperties) -> TopicMessageType {
    if sys.message_type == pb::MessageType::Transaction as i32 {
        TopicMessageType::Transaction
    } else if sys.delivery_timestamp.is_some() {
        TopicMessageType::Delay
    } else if sys.message_group.as_deref().is_some_and(|g| !g.is_empty()) {
        TopicMessageType::Fifo
    } else {
        TopicMessageType::Normal
    }
}

fn refusal(code: pb::Code, message: String) -> pb::SendMessageResponse {
    pb::SendMessageResponse {
        status: status(code, message),
        entries: vec![],
    }
}

impl Blackhole {
    pub fn new(config: BlackholeConfig) -> Self {
        Blackhole {
            inner: Arc::new(Inner {
                config,
                state: Mutex::new(State::default()),
                heartbeats: AtomicU64::new(0),
                terminations: AtomicU64::new(0),
                settings: AtomicU64::new(0),
                next_tx: AtomicU64::new(0),
            }),
        }
    }

    fn st(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Declares `topic` accepting exactly `accept` (several: a MIXED topic);
    /// a topic declared again keeps its tally.
    pub fn add_topic(&self, topic: &str, accept: &[TopicMessageType]) {
        self.st().topics.entry(topic.to_owned()).or_default().accept = accept.to_vec();
    }

    /// What arrived for `topic` so far (all zero for an unknown topic).
    pub fn tally(&self, topic: &str) -> TopicTally {
        self.st()
            .topics
            .get(topic)
            .map(|t| t.tally.clone())
            .unwrap_or_default()
    }

    /// Forgets what arrived for `topic` (keeps its declaration).
    pub fn reset(&self, topic: &str) {
        if let Some(t) = self.st().topics.get_mut(topic) {
            let accept = std::mem::take(&mut t.accept);
            *t = TopicState {
                accept,
                ..Default::default()
            };
        }
    }

    pub fn sessions(&self) -> SessionCounts {
        SessionCounts {
            heartbeats: self.inner.heartbeats.load(Ordering::Relaxed),
            terminations: self.inner.terminations.load(Ordering::Relaxed),
            settings: self.inner.settings.load(Ordering::Relaxed),
            pending_transactions: self.st().prepared.len() as u64,
        }
    }

    /// Serves on `addr` (e.g. `127.0.0.1:0`) in a spawned task; returns the
    /// bound address.
    pub async fn start(&self, addr: &str) -> std::io::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let service =
            MessagingServiceServer::new(self.clone()).max_decoding_message_size(256 * 1024 * 1024);
        tokio::spawn(async move {
            if let Err(e) = tonic::transport::Server::builder()
                .serve_with_incoming(service, incoming)
                .await
            {
                tracing::error!(error = %e, "blackhole server stopped");
            }
        });
        Ok(local)
    }

    /// Checks and counts one SendMessage.
    fn accept_send(&self, req: &pb::SendMessageRequest) -> pb::SendMessageResponse {
        let Some(first) = req.messages.first() else {
            return refusal(pb::Code::MessageCorrupted, "no message to send".into());
        };
        let topic = first.topic.clone().unwrap_or_default();
        let mut st = self.st();
        let State { topics, prepared } = &mut *st;
        let Some(t) = topics.get_mut(&topic.name) else {
            return refusal(
                pb::Code::TopicNotFound,
                format!("topic {} does not exist", topic.name),
            );
        };
        let refuse = |t: &mut TopicState, code, message| {
            t.tally.refused += 1;
            refusal(code, message)
        };
        if req
            .messages
            .iter()
            .any(|m| m.topic.as_ref() != Some(&topic))
        {
            return refuse(
                t,
                pb::Code::MessageCorrupted,
                "topic in message is not same".into(),
            );
        }
        let sys0 = first.system_properties.clone().unwrap_or_default();
        let kind = message_type(&sys0);
        if !t.accept.contains(&kind) {
            return refuse(
                t,
                pb::Code::MessagePropertyConflictWithType,
                format!(
                    "topic {} accepts {:?}, the message is {kind}",
                    topic.name, t.accept
                ),
            );
        }
        if req.messages.len() > 1
            && matches!(
                kind,
                TopicMessageType::Transaction | TopicMessageType::Delay
            )
        {
            return refuse(
                t,
                pb::Code::MessageCorrupted,
                format!("batched {kind} messages are not supported"),
            );
        }
        let max = self.inner.config.max_body_size;
        for m in &req.messages {
            let sys = m.system_properties.as_ref();
            let id = sys.map_or("", |s| s.message_id.as_str());
            if id.is_empty() {
                return refuse(t, pb::Code::IllegalMessageId, "message id is empty".into());
            }
            if m.body.is_empty() {
                return refuse(
                    t,
                    pb::Code::MessageBodyEmpty,
                    format!("message {id}: empty body"),
                );
            }
            if m.body.len() > max {
                return refuse(
                    t,
                    pb::Code::MessageBodyTooLarge,
                    format!("message {id}: body of {} bytes above {max}", m.body.len()),
                );
            }
            if let Some(k) = m
                .user_properties
                .keys()
                .find(|k| crate::reserved::is_reserved_property(k))
            {
                return refuse(
                    t,
                    pb::Code::IllegalMessagePropertyKey,
                    format!("property is used by system: {k}"),
                );
            }
        }
        t.tally.requests += 1;
        let first_offset = t.next_offset;
        let mut entries = Vec::with_capacity(req.messages.len());
        for m in &req.messages {
            let sys = m.system_properties.as_ref();
            let id = sys.map_or("", |s| s.message_id.as_str());
            let group = sys
                .and_then(|s| s.message_group.as_deref())
                .filter(|g| !g.is_empty());
            let offset = t.next_offset;
            t.next_offset += 1;
            let mut transaction_id = String::new();
            if kind == TopicMessageType::Transaction {
                let n = self.inner.next_tx.fetch_add(1, Ordering::Relaxed);
                transaction_id = format!("BH-TX-{n}");
                prepared.insert(
                    transaction_id.clone(),
                    Prepared {
                        topic: topic.name.clone(),
                        message_id: id.to_owned(),
                        group: group.map(str::to_owned),
                        bytes: m.body.len(),
                    },
                );
            } else {
                t.count(id, group, m.body.len());
            }
            entries.push(pb::SendResultEntry {
                status: ok(),
                message_id: id.to_owned(),
                transaction_id,
                offset,
                recall_handle: String::new(),
            });
        }
        if entries.len() > 1 {
            // A Java proxy sends a packed request to its broker as one 4.x
            // batch and answers with that batch's single result: the ids
            // joined by commas, the first message's offset.
            let ids: Vec<String> = entries.into_iter().map(|e| e.message_id).collect();
            entries = vec![pb::SendResultEntry {
                status: ok(),
                message_id: ids.join(","),
                transaction_id: String::new(),
                offset: first_offset,
                recall_handle: String::new(),
            }];
        }
        pb::SendMessageResponse {
            status: ok(),
            entries,
        }
    }

    async fn service_time(&self) {
        let t = self.inner.config.service_time;
        if !t.is_zero() {
            tokio::time::sleep(t).await;
        }
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl MessagingService for Blackhole {
    async fn query_route(
        &self,
        request: Request<pb::QueryRouteRequest>,
    ) -> Result<Response<pb::QueryRouteResponse>, Status> {
        let req = request.into_inner();
        let topic = req.topic.unwrap_or_default();
        let accept: Option<Vec<pb::MessageType>> = self
            .st()
            .topics
            .get(&topic.name)
            .map(|t| t.accept.iter().map(|a| a.to_wire()).collect());
        let Some(accept) = accept else {
            return Ok(Response::new(pb::QueryRouteResponse {
                status: status(
                    pb::Code::TopicNotFound,
                    format!("topic {} does not exist", topic.name),
                ),
                message_queues: vec![],
            }));
        };
        Ok(Response::new(pb::QueryRouteResponse {
            status: ok(),
            message_queues: route_queues(&topic, req.endpoints, &accept, self.inner.config.queues),
        }))
    }

    async fn heartbeat(
        &self,
        _request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        self.inner.heartbeats.fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(pb::HeartbeatResponse { status: ok() }))
    }

    async fn send_message(
        &self,
        request: Request<pb::SendMessageRequest>,
    ) -> Result<Response<pb::SendMessageResponse>, Status> {
        self.service_time().await;
        Ok(Response::new(self.accept_send(request.get_ref())))
    }

    type ReceiveMessageStream = BoxStream<pb::ReceiveMessageResponse>;

    async fn receive_message(
        &self,
        _request: Request<pb::ReceiveMessageRequest>,
    ) -> Result<Response<Self::ReceiveMessageStream>, Status> {
        Err(Status::unimplemented(
            "the blackhole keeps nothing to receive",
        ))
    }

    async fn ack_message(
        &self,
        _request: Request<pb::AckMessageRequest>,
    ) -> Result<Response<pb::AckMessageResponse>, Status> {
        Err(Status::unimplemented("the blackhole keeps nothing to ack"))
    }

    async fn end_transaction(
        &self,
        request: Request<pb::EndTransactionRequest>,
    ) -> Result<Response<pb::EndTransactionResponse>, Status> {
        self.service_time().await;
        let req = request.into_inner();
        let mut st = self.st();
        let Some(p) = st.prepared.remove(&req.transaction_id) else {
            return Ok(Response::new(pb::EndTransactionResponse {
                status: status(
                    pb::Code::InvalidTransactionId,
                    format!("unknown transaction id {}", req.transaction_id),
                ),
            }));
        };
        if req.resolution == pb::TransactionResolution::Commit as i32 {
            if let Some(t) = st.topics.get_mut(&p.topic) {
                t.count(&p.message_id, p.group.as_deref(), p.bytes);
            }
        }
        Ok(Response::new(pb::EndTransactionResponse { status: ok() }))
    }

    type TelemetryStream = BoxStream<pb::TelemetryCommand>;

    async fn telemetry(
        &self,
        request: Request<tonic::Streaming<pb::TelemetryCommand>>,
    ) -> Result<Response<Self::TelemetryStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(8);
        let this = self.clone();
        tokio::spawn(async move {
            while let Some(Ok(cmd)) = inbound.next().await {
                if let Some(pb::telemetry_command::Command::Settings(s)) = cmd.command {
                    this.inner.settings.fetch_add(1, Ordering::Relaxed);
                    let max = i32::try_from(this.inner.config.max_body_size).unwrap_or(i32::MAX);
                    if tx.send(Ok(settings_reply(s, max))).await.is_err() {
                        break;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn notify_client_termination(
        &self,
        _request: Request<pb::NotifyClientTerminationRequest>,
    ) -> Result<Response<pb::NotifyClientTerminationResponse>, Status> {
        self.inner.terminations.fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(pb::NotifyClientTerminationResponse {
            status: ok(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::{GrpcClientConfig, MessageKind, OutgoingMessage, PublishError, Publisher};
    use bytes::Bytes;

    fn message(topic: &str, id: &str, kind: MessageKind) -> OutgoingMessage {
        OutgoingMessage {
            topic: topic.into(),
            message_id: id.into(),
            body: Bytes::from_static(b"hello"),
            tag: Some("TagA".into()),
            keys: vec!["k1".into()],
            user_properties: [("gray".to_string(), "true".to_string())].into(),
            born_timestamp_ms: 1_700_000_000_123,
            born_host: "10.1.2.3".into(),
            kind,
        }
    }

    #[test]
    fn trailing_numbers() {
        assert_eq!(trailing_number("ORD0000042"), Some(42));
        assert_eq!(trailing_number("abc"), None);
        assert_eq!(
            trailing_number("x99999999999999999999999"),
            Some(9_999_999_999_999_999_999)
        );
    }

    #[tokio::test]
    async fn our_publisher_round_trips_through_the_blackhole() {
        use TopicMessageType as T;
        let bh = Blackhole::new(BlackholeConfig {
            max_body_size: 64,
            ..Default::default()
        });
        bh.add_topic("normal", &[T::Normal]);
        bh.add_topic("fifo", &[T::Fifo]);
        bh.add_topic("delay", &[T::Delay]);
        bh.add_topic("tx", &[T::Transaction]);
        let addr = bh.start("127.0.0.1:0").await.expect("bind loopback");
        let publisher = Publisher::connect(GrpcClientConfig::new(vec![addr.to_string()]))
            .await
            .expect("connect to the blackhole");
        assert_eq!(publisher.max_body_size(), 64);
        assert_eq!(
            publisher.accepted_types("fifo").await.expect("route"),
            vec![T::Fifo]
        );
        assert!(matches!(
            publisher.accepted_types("nowhere").await,
            Err(PublishError::TopicNotFound { .. })
        ));

        // Single sends and one packed batch keep every id.
        let r = publisher
            .send(&message("normal", "N0", MessageKind::Normal))
            .await
            .expect("single send");
        assert_eq!(r.message_id, "N0");
        let batch: Vec<_> = (1..=4)
            .map(|i| message("normal", &format!("N{i}"), MessageKind::Normal))
            .collect();
        let receipts = publisher.send_batch(&batch).await.expect("packed batch");
        let ids: Vec<_> = receipts.iter().map(|r| r.message_id.as_str()).collect();
        assert_eq!(ids, ["N1", "N2", "N3", "N4"]);
        // A re-send is a duplicate.
        publisher
            .send(&message("normal", "N2", MessageKind::Normal))
            .await
            .expect("re-send");
        let t = bh.tally("normal");
        assert_eq!(
            (t.requests, t.messages, t.distinct, t.duplicates),
            (3, 6, 5, 1)
        );
        assert!(!t.intact(5));

        // FIFO: in order per group, then one arrival out of order.
        for (g, i) in [("g1", 1), ("g2", 1), ("g1", 2), ("g2", 2), ("g1", 3)] {
            let kind = MessageKind::Fifo { group: g.into() };
            publisher
                .send(&message("fifo", &format!("F{g}-{i:04}"), kind))
                .await
                .expect("fifo send");
        }
        assert!(bh.tally("fifo").intact(5));
        let kind = MessageKind::Fifo { group: "g1".into() };
        publisher
            .send(&message("fifo", "Fg1-late-0002", kind))
            .await
            .expect("fifo send");
        let t = bh.tally("fifo");
        assert_eq!((t.fifo_groups, t.fifo_out_of_order), (2, 1));

        // DELAY, and TRANSACTION counted at commit.
        let kind = MessageKind::Delay {
            delivery_timestamp_ms: 1_800_000_000_000,
        };
        publisher
            .send(&message("delay", "D1", kind))
            .await
            .expect("delay send");
        assert!(bh.tally("delay").intact(1));
        let r = publisher
            .send(&message("tx", "T1", MessageKind::Transaction))
            .await
            .expect("transaction");
        assert!(r.transaction_id.is_some());
        assert!(bh.tally("tx").intact(1));
        assert_eq!(bh.sessions().pending_transactions, 0);

        // The server enforces the topic type and its limits on its own (a
        // client that skips local validation).
        let mut raw =
            pb::messaging_service_client::MessagingServiceClient::connect(format!("http://{addr}"))
                .await
                .expect("raw client");
        let wire = |topic: &str, id: &str, kind| message(topic, id, kind).to_wire("", 0);
        let code = |r: pb::SendMessageResponse| r.status.map_or(0, |s| s.code);
        let send = pb::SendMessageRequest {
            messages: vec![wire(
                "normal",
                "X1",
                MessageKind::Fifo { group: "g".into() },
            )],
        };
        let r = raw.send_message(send).await.expect("rpc").into_inner();
        assert_eq!(code(r), pb::Code::MessagePropertyConflictWithType as i32);
        let mut big = wire("normal", "X2", MessageKind::Normal);
        big.body = vec![1; 65].into();
        let r = raw
            .send_message(pb::SendMessageRequest {
                messages: vec![big],
            })
            .await
            .expect("rpc")
            .into_inner();
        assert_eq!(code(r), pb::Code::MessageBodyTooLarge as i32);
        let mixed = pb::SendMessageRequest {
            messages: vec![
                wire("normal", "X3", MessageKind::Normal),
                wire("fifo", "X4", MessageKind::Normal),
            ],
        };
        let r = raw.send_message(mixed).await.expect("rpc").into_inner();
        assert_eq!(code(r), pb::Code::MessageCorrupted as i32);
        assert_eq!(bh.tally("normal").refused, 3);
        assert_eq!(bh.tally("normal").messages, 6);

        publisher.shutdown().await;
        let s = bh.sessions();
        assert!(s.settings >= 1 && s.heartbeats >= 1, "{s:?}");
        assert_eq!(s.terminations, 1);
    }
}
