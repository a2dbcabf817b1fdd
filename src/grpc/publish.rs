//! Type-aware publishing to 5.x: the `Publisher` the pipeline's sink uses.
//!
//! - NORMAL / DELAY: one SendMessage to a writable queue chosen round robin
//!   (DELAY carries `delivery_timestamp`; clamping a past time is the
//!   translator's job, see SPEC 3).
//! - FIFO: `message_group` set, queue chosen by the Java client's hash of the
//!   group, and never two in-flight sends of one (topic, group): a second
//!   send of the same group waits for the first to finish (retries included).
//! - TRANSACTION: prepare (message_type TRANSACTION) then EndTransaction
//!   COMMIT with the returned transaction id, on the same endpoint, as the
//!   Java 5.x client does.
//! - `send_batch` packs NORMAL messages of one topic in one SendMessage
//!   (servers store such a batch atomically); FIFO, DELAY and TRANSACTION
//!   messages go one by one, in order, because Java proxies only honour the
//!   message group of single-message requests, brokers refuse batched timer
//!   messages, and a transaction covers exactly one message.
//!
//! Before anything is sent, [`validate`] checks the message against the
//! topic's accepted types and the server's limits, so a message that 5.x
//! would reject is reported as the same permanent error without a round trip
//! (and without sending a message of the wrong type, which some servers
//! accept silently).

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::client::{fifo_queue_index, Client, FailureContext, GrpcClientConfig, RpcFailure};
use super::error::PublishError;
use super::message::{MessageKind, OutgoingMessage, ReceivedMessage, TopicMessageType};
use super::pb;

/// What 5.x acknowledged for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendReceipt {
    pub message_id: String,
    /// Set for TRANSACTION messages (already committed).
    pub transaction_id: Option<String>,
    /// Queue offset the server reported (0 when it does not say).
    pub offset: i64,
    /// The queue the message was addressed to.
    pub queue_id: i32,
}

/// Java proxy defaults (`ProxyConfig`): a message group must stay under 64
/// bytes, at most 128 user properties, and properties + tag + keys at most
/// 16 KiB.
const MAX_MESSAGE_GROUP_BYTES: usize = 64;
const MAX_USER_PROPERTIES: usize = 128;
const MAX_PROPERTY_BYTES: usize = 16 * 1024;

/// Is `name` reserved by RocketMQ (and so refused as a user property)?
/// The same list translation uses (`crate::reserved`).
pub use crate::reserved::is_reserved_property;

/// Checks, without sending, whether 5.x would accept `message` on a topic
/// accepting `accepted` types (empty: the server declared none, no type
/// check) with bodies up to `max_body_size` bytes. Returns the same
/// permanent errors a send would.
pub fn validate(
    message: &OutgoingMessage,
    accepted: &[TopicMessageType],
    max_body_size: usize,
) -> Result<(), PublishError> {
    let topic = || message.topic.clone();
    let id = || message.message_id.clone();
    let illegal = |code: &'static str, reason: String| PublishError::IllegalMessage {
        topic: topic(),
        message_id: id(),
        code,
        reason,
    };
    let actual = message.kind.topic_type();
    if !accepted.is_empty() && !accepted.contains(&actual) {
        return Err(PublishError::TypeMismatch {
            topic: topic(),
            message_id: id(),
            actual,
            accepted: accepted.to_vec(),
        });
    }
    if message.message_id.trim().is_empty() {
        return Err(illegal(
            "ILLEGAL_MESSAGE_ID",
            "the message id is empty".into(),
        ));
    }
    if message.body.is_empty() {
        return Err(PublishError::BodyEmpty {
            topic: topic(),
            message_id: id(),
        });
    }
    if message.body.len() > max_body_size {
        return Err(PublishError::BodyTooLarge {
            topic: topic(),
            message_id: id(),
            size: message.body.len(),
            max: max_body_size,
        });
    }
    let has_control = |s: &str| s.chars().any(char::is_control);
    let mut property_bytes = 0usize;
    if let Some(tag) = message.tag.as_deref().filter(|t| !t.is_empty()) {
        if tag.trim().is_empty() || tag.contains('|') || has_control(tag) {
            return Err(illegal(
                "ILLEGAL_MESSAGE_TAG",
                format!("tag {tag:?} is blank or contains '|' or a control character"),
            ));
        }
        property_bytes += tag.len();
    }
    for key in &message.keys {
        if (!key.is_empty() && key.trim().is_empty()) || has_control(key) {
            return Err(illegal(
                "ILLEGAL_MESSAGE_KEY",
                format!("key {key:?} is blank or contains a control character"),
            ));
        }
        property_bytes += key.len();
    }
    if let MessageKind::Fifo { group } = &message.kind {
        if group.trim().is_empty() || group.len() >= MAX_MESSAGE_GROUP_BYTES || has_control(group) {
            return Err(illegal(
                "ILLEGAL_MESSAGE_GROUP",
                format!(
                    "message group {group:?} is blank, {} bytes or longer, or contains a \
                     control character",
                    MAX_MESSAGE_GROUP_BYTES
                ),
            ));
        }
    }
    if message.user_properties.len() > MAX_USER_PROPERTIES {
        return Err(illegal(
            "MESSAGE_PROPERTIES_TOO_LARGE",
            format!(
                "{} user properties, above the limit of {MAX_USER_PROPERTIES}",
                message.user_properties.len()
            ),
        ));
    }
    for (k, v) in &message.user_properties {
        if k.is_empty() || is_reserved_property(k) {
            return Err(illegal(
                "ILLEGAL_MESSAGE_PROPERTY_KEY",
                format!("user property {k:?} is empty or a name reserved by RocketMQ"),
            ));
        }
        if has_control(k) || has_control(v) {
            return Err(illegal(
                "ILLEGAL_MESSAGE_PROPERTY_KEY",
                format!("user property {k:?} contains a control character"),
            ));
        }
        property_bytes += k.len() + v.len();
    }
    if property_bytes > MAX_PROPERTY_BYTES {
        return Err(illegal(
            "MESSAGE_PROPERTIES_TOO_LARGE",
            format!(
                "properties, tag and keys take {property_bytes} bytes, above {MAX_PROPERTY_BYTES}"
            ),
        ));
    }
    Ok(())
}

/// The 5.x producer. Cheap to clone; all clones share one client session.
#[derive(Clone)]
pub struct Publisher {
    client: Arc<Client>,
    _stop: Arc<StopOnDrop>,
}

/// Stops the background sessions when the last `Publisher` clone goes away
/// (they hold the client alive otherwise).
struct StopOnDrop(Arc<Client>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop_tasks();
    }
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("endpoints", &self.client.config().endpoints)
            .field("client_id", &self.client.config().client_id)
            .finish()
    }
}

impl Publisher {
    /// Connects to 5.x: opens the telemetry session on every endpoint and
    /// waits (up to the request timeout) until one answered the settings
    /// handshake; starts heartbeats.
    pub async fn connect(config: GrpcClientConfig) -> Result<Self, PublishError> {
        Self::connect_with(config, None).await
    }

    /// Like [`Publisher::connect`], but every RPC makes exactly one attempt:
    /// the caller owns retries (the pipeline's send layer does, so retries
    /// are never nested and always stop-aware).
    /// It also does not fail when 5.x is unreachable at start: its session
    /// keeps trying in the background (a daemon must stay up, serve its
    /// metrics and say what it waits for).
    pub async fn connect_single_shot(config: GrpcClientConfig) -> Result<Self, PublishError> {
        let mut client = Client::new(config)?;
        if let Some(c) = Arc::get_mut(&mut client) {
            c.retry = super::client::RetryPolicy {
                max_attempts: 1,
                ..Default::default()
            };
        }
        client.start_with(false).await?;
        Ok(Publisher {
            _stop: Arc::new(StopOnDrop(Arc::clone(&client))),
            client,
        })
    }

    pub(crate) async fn connect_with(
        config: GrpcClientConfig,
        retry: Option<super::client::RetryPolicy>,
    ) -> Result<Self, PublishError> {
        let mut client = Client::new(config)?;
        if let Some(r) = retry {
            if let Some(c) = Arc::get_mut(&mut client) {
                c.retry = r;
            }
        }
        client.start().await?;
        Ok(Publisher {
            _stop: Arc::new(StopOnDrop(Arc::clone(&client))),
            client,
        })
    }

    /// The body size limit the server announced (4 MiB until it says).
    pub fn max_body_size(&self) -> usize {
        self.client.max_body_size()
    }

    fn route_error(&self, topic: &str, failure: RpcFailure) -> PublishError {
        self.client.invalidate_route(topic);
        failure.into_publish_error(FailureContext {
            topic,
            message_id: None,
            body_len: 0,
            max_body_size: self.max_body_size(),
            rpc: "QueryRoute",
        })
    }

    async fn route(&self, topic: &str) -> Result<Arc<super::client::TopicRoute>, PublishError> {
        self.client
            .route(topic)
            .await
            .map_err(|f| self.route_error(topic, f))
    }

    /// The message types `topic` accepts, from its route
    /// (`MessageQueue.accept_message_types`). Empty when the server declares
    /// no type (then nothing is checked locally). An empty answer is not
    /// kept: a Java proxy declares UNSPECIFIED while it cannot read the
    /// topic's config from its broker (a broker restart), so the next call
    /// asks again.
    pub async fn accepted_types(&self, topic: &str) -> Result<Vec<TopicMessageType>, PublishError> {
        if self.client.is_shut_down() {
            return Err(PublishError::Shutdown {
                what: format!("QueryRoute for topic {topic}"),
            });
        }
        let accepted = self.route(topic).await?.accepted.clone();
        if accepted.is_empty() {
            self.client.invalidate_route(topic);
        }
        Ok(accepted)
    }

    /// Announces this producer as a publisher of `topic` (settings and a
    /// heartbeat) before any send: the proxy finds the producer that
    /// answers a 5.x broker's transaction check-back by the topic, so a
    /// bridge restarted with nothing left to send there must be listed too.
    pub fn declare_topic(&self, topic: &str) {
        if !self.client.is_shut_down() {
            self.client.ensure_topic(topic);
        }
    }

    /// Like [`validate`], with the topic's accepted types and the server's
    /// body limit looked up (dry run).
    pub async fn check(&self, message: &OutgoingMessage) -> Result<(), PublishError> {
        let accepted = self.accepted_types(&message.topic).await?;
        validate(message, &accepted, self.max_body_size())
    }

    /// Publishes one message according to its kind.
    pub async fn send(&self, message: &OutgoingMessage) -> Result<SendReceipt, PublishError> {
        if self.client.is_shut_down() {
            return Err(PublishError::Shutdown {
                what: format!("message {} to topic {}", message.message_id, message.topic),
            });
        }
        self.client.ensure_topic(&message.topic);
        let route = self.route(&message.topic).await?;
        validate(message, &route.accepted, self.max_body_size())?;
        if route.writable.is_empty() {
            self.client.invalidate_route(&message.topic);
            return Err(PublishError::NoWritableQueue {
                topic: message.topic.clone(),
            });
        }
        // Ordering of FIFO groups is the caller's: the pipeline's
        // `OrderLocks` keeps one send per (topic, group) in flight across
        // every publisher, queue and route.
        self.send_one(message, &route).await
    }

    fn queue_for(
        &self,
        message: &OutgoingMessage,
        route: &super::client::TopicRoute,
        attempt: u32,
    ) -> i32 {
        let queues = &route.writable;
        let n = queues.len().max(1);
        let idx = match &message.kind {
            MessageKind::Fifo { group } => fifo_queue_index(group, n),
            // Round robin; a retry moves on to the next queue.
            _ => {
                if attempt <= 1 {
                    self.client
                        .round_robin
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                        % n
                } else {
                    self.client
                        .round_robin
                        .load(std::sync::atomic::Ordering::Relaxed)
                        .wrapping_add(attempt as usize)
                        % n
                }
            }
        };
        queues.get(idx).map_or(0, |q| q.id)
    }

    async fn send_one(
        &self,
        message: &OutgoingMessage,
        route: &super::client::TopicRoute,
    ) -> Result<SendReceipt, PublishError> {
        let namespace = &self.client.config().namespace;
        // The queue of the last attempt.
        let queue_id = AtomicI32::new(0);
        let build = |attempt: u32| {
            let q = self.queue_for(message, route, attempt);
            queue_id.store(q, Ordering::Relaxed);
            pb::SendMessageRequest {
                messages: vec![message.to_wire(namespace, q)],
            }
        };
        let ctx = |rpc| FailureContext {
            topic: &message.topic,
            message_id: Some(&message.message_id),
            body_len: message.body.len(),
            max_body_size: self.max_body_size(),
            rpc,
        };
        let ids = [message.message_id.as_str()];
        let sent = self
            .client
            .unary(
                self.client.producer_headers(),
                None,
                self.client.request_timeout(),
                build,
                |mut c, r| async move { c.send_message(r).await },
                |r: &pb::SendMessageResponse| send_status(r, &ids),
            )
            .await;
        let (resp, endpoint) = match sent {
            Ok(ok) => ok,
            Err(f) => {
                self.after_failure(&message.topic, &f);
                return Err(f.into_publish_error(ctx("SendMessage")));
            }
        };
        let queue_id = queue_id.load(Ordering::Relaxed);
        let entry = match resp.entries.into_iter().next() {
            Some(e) => e,
            None => {
                return Err(PublishError::Retriable {
                    what: format!(
                        "SendMessage of message {} to topic {}",
                        message.message_id, message.topic
                    ),
                    code: super::error::ServerCode(pb::Code::InternalError as i32),
                    reason: "the server acknowledged no entry".into(),
                    attempts: 1,
                })
            }
        };
        // `send_status` checked that the entry names this message.
        let mut receipt = SendReceipt {
            message_id: message.message_id.clone(),
            transaction_id: None,
            offset: entry.offset,
            queue_id,
        };
        if message.kind == MessageKind::Transaction {
            if entry.transaction_id.is_empty() {
                return Err(PublishError::Retriable {
                    what: format!(
                        "transaction prepare of message {} to topic {}",
                        message.message_id, message.topic
                    ),
                    code: super::error::ServerCode(pb::Code::InvalidTransactionId as i32),
                    reason: "the server returned no transaction id".into(),
                    attempts: 1,
                });
            }
            let request = pb::EndTransactionRequest {
                topic: Some(self.client.resource(&message.topic)),
                message_id: receipt.message_id.clone(),
                transaction_id: entry.transaction_id.clone(),
                resolution: pb::TransactionResolution::Commit as i32,
                source: pb::TransactionSource::SourceClient as i32,
                trace_context: String::new(),
            };
            self.client
                .unary(
                    self.client.producer_headers(),
                    Some(endpoint),
                    self.client.request_timeout(),
                    |_| request.clone(),
                    |mut c, r| async move { c.tonic.end_transaction(r).await },
                    |r: &pb::EndTransactionResponse| r.status.clone(),
                )
                .await
                .map_err(|f| {
                    self.client.commit_failed(&entry.transaction_id);
                    f.into_publish_error(ctx("EndTransaction(COMMIT)"))
                })?;
            receipt.transaction_id = Some(entry.transaction_id);
        }
        Ok(receipt)
    }

    fn after_failure(&self, topic: &str, failure: &RpcFailure) {
        // Anything but a rejection of the message itself may mean the route
        // changed: refresh it next time.
        let message_problem = matches!(
            failure,
            RpcFailure::Server { code, message, .. }
                if matches!(
                    super::error::classify_status(*code, message),
                    super::error::CodeClass::Permanent
                        | super::error::CodeClass::IllegalMessage
                        | super::error::CodeClass::BodyEmpty
                        | super::error::CodeClass::BodyTooLarge
                )
        );
        if !message_problem {
            self.client.invalidate_route(topic);
        }
    }

    /// Publishes several messages, in order. NORMAL messages of one topic
    /// travel in one SendMessage (stored atomically: one error for all);
    /// any other mix is sent message by message, stopping at the first
    /// error. A permanent error of a packed batch does not say which message
    /// was refused: re-send them one by one to find it.
    pub async fn send_batch(
        &self,
        messages: &[OutgoingMessage],
    ) -> Result<Vec<SendReceipt>, PublishError> {
        let Some(first) = messages.first() else {
            return Ok(Vec::new());
        };
        let packable = messages.len() > 1
            && messages
                .iter()
                .all(|m| m.kind == MessageKind::Normal && m.topic == first.topic);
        if !packable {
            let mut receipts = Vec::with_capacity(messages.len());
            for m in messages {
                receipts.push(self.send(m).await?);
            }
            return Ok(receipts);
        }
        if self.client.is_shut_down() {
            return Err(PublishError::Shutdown {
                what: format!(
                    "batch of {} messages to topic {}",
                    messages.len(),
                    first.topic
                ),
            });
        }
        let topic = &first.topic;
        self.client.ensure_topic(topic);
        let route = self.route(topic).await?;
        for m in messages {
            validate(m, &route.accepted, self.max_body_size())?;
        }
        if route.writable.is_empty() {
            self.client.invalidate_route(topic);
            return Err(PublishError::NoWritableQueue {
                topic: topic.clone(),
            });
        }
        let namespace = &self.client.config().namespace;
        let queue_id = AtomicI32::new(0);
        let build = |attempt: u32| {
            let q = self.queue_for(first, &route, attempt);
            queue_id.store(q, Ordering::Relaxed);
            pb::SendMessageRequest {
                messages: messages.iter().map(|m| m.to_wire(namespace, q)).collect(),
            }
        };
        let total: usize = messages.iter().map(|m| m.body.len()).sum();
        let ids: Vec<&str> = messages.iter().map(|m| m.message_id.as_str()).collect();
        let result = self
            .client
            .unary(
                self.client.producer_headers(),
                None,
                self.client.request_timeout(),
                build,
                |mut c, r| async move { c.send_message(r).await },
                |r: &pb::SendMessageResponse| send_status(r, &ids),
            )
            .await;
        let (resp, _) = match result {
            Ok(ok) => ok,
            Err(f) => {
                self.after_failure(topic, &f);
                return Err(f.into_publish_error(FailureContext {
                    topic,
                    message_id: Some(&first.message_id),
                    body_len: total,
                    max_body_size: self.max_body_size(),
                    rpc: "SendMessage(batch)",
                }));
            }
        };
        let queue_id = queue_id.load(Ordering::Relaxed);
        batch_receipts(resp.entries, messages, queue_id).map_err(|reason| PublishError::Retriable {
            what: format!("batch of {} messages to topic {topic}", messages.len()),
            code: super::error::ServerCode(pb::Code::InternalError as i32),
            reason,
            attempts: 1,
        })
    }

    /// Receives up to `max` messages of `topic` as simple-consumer `group`
    /// (filter `*`), hiding them from the group for `invisible_duration`.
    /// For tests and the verifier; the first call opens a consumer session.
    pub async fn receive(
        &self,
        topic: &str,
        group: &str,
        max: usize,
        invisible_duration: Duration,
    ) -> Result<Vec<ReceivedMessage>, PublishError> {
        use tokio_stream::StreamExt;
        let what = |rpc| FailureContext {
            topic,
            message_id: None,
            body_len: 0,
            max_body_size: self.max_body_size(),
            rpc,
        };
        if self.client.is_shut_down() {
            return Err(RpcFailure::Shutdown.into_publish_error(what("ReceiveMessage")));
        }
        let route = self.route(topic).await?;
        let n = route.readable.len();
        let Some(queue) = (n > 0)
            .then(|| {
                route.readable.get(
                    self.client
                        .round_robin
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                        % n,
                )
            })
            .flatten()
            .cloned()
        else {
            return Err(PublishError::NoWritableQueue {
                topic: topic.to_owned(),
            });
        };
        let headers = self.client.consumer_headers(group, topic).await;
        let long_polling = RECEIVE_LONG_POLLING;
        let request = pb::ReceiveMessageRequest {
            group: Some(self.client.resource(group)),
            message_queue: Some(queue),
            filter_expression: Some(pb::FilterExpression {
                r#type: pb::FilterType::Tag as i32,
                expression: "*".into(),
            }),
            batch_size: i32::try_from(max.max(1)).unwrap_or(i32::MAX),
            invisible_duration: Some(super::message::duration_to_wire(invisible_duration)),
            auto_renew: false,
            long_polling_timeout: Some(super::message::duration_to_wire(long_polling)),
            attempt_id: Some(super::metadata::request_id()),
        };
        let mut req = tonic::Request::new(request);
        headers.apply(req.metadata_mut());
        req.set_timeout(self.client.request_timeout() + long_polling);
        let mut stream = self
            .client
            .raw_client(self.client.preferred_endpoint())
            .receive_message(req)
            .await
            .map_err(|s| grpc_failure(self, s).into_publish_error(what("ReceiveMessage")))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(item) = stream.next().await {
            let item =
                item.map_err(|s| grpc_failure(self, s).into_publish_error(what("ReceiveMessage")))?;
            match item.content {
                Some(pb::receive_message_response::Content::Message(m)) => {
                    out.push(ReceivedMessage::from_wire(m))
                }
                Some(pb::receive_message_response::Content::Status(st)) => {
                    let code = st.code;
                    let empty = code == pb::Code::MessageNotFound as i32;
                    if !empty && super::error::classify(code) != super::error::CodeClass::Ok {
                        return Err(RpcFailure::Server {
                            code,
                            message: st.message,
                            attempts: 1,
                        }
                        .into_publish_error(what("ReceiveMessage")));
                    }
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// Acknowledges received messages for `group`.
    pub async fn ack(
        &self,
        topic: &str,
        group: &str,
        messages: &[ReceivedMessage],
    ) -> Result<(), PublishError> {
        if messages.is_empty() {
            return Ok(());
        }
        let headers = self.client.consumer_headers(group, topic).await;
        let request = pb::AckMessageRequest {
            group: Some(self.client.resource(group)),
            topic: Some(self.client.resource(topic)),
            entries: messages
                .iter()
                .map(|m| pb::AckMessageEntry {
                    message_id: m.message_id.clone(),
                    receipt_handle: m.receipt_handle.clone(),
                    lite_topic: None,
                })
                .collect(),
        };
        self.client
            .unary(
                &headers,
                None,
                self.client.request_timeout(),
                |_| request.clone(),
                |mut c, r| async move { c.tonic.ack_message(r).await },
                |r: &pb::AckMessageResponse| {
                    r.entries
                        .iter()
                        .filter_map(|e| e.status.clone())
                        .find(|s| s.code != pb::Code::Ok as i32)
                        .or_else(|| r.status.clone())
                },
            )
            .await
            .map(|_| ())
            .map_err(|f| {
                f.into_publish_error(FailureContext {
                    topic,
                    message_id: None,
                    body_len: 0,
                    max_body_size: self.max_body_size(),
                    rpc: "AckMessage",
                })
            })
    }

    /// Notifies every endpoint that this client leaves and stops the
    /// background sessions. Later sends fail with `PublishError::Shutdown`.
    pub async fn shutdown(&self) {
        self.client.shutdown().await;
    }
}

const RECEIVE_LONG_POLLING: Duration = Duration::from_secs(5);

fn grpc_failure(p: &Publisher, s: tonic::Status) -> RpcFailure {
    RpcFailure::Grpc {
        endpoint: p
            .client
            .config()
            .endpoints
            .get(p.client.preferred_endpoint())
            .cloned()
            .unwrap_or_default(),
        code: s.code(),
        message: s.message().to_owned(),
        attempts: 1,
    }
}

/// Whether `entries` acknowledge exactly the messages `ids`, in order. Two
/// answers are understood:
/// - one entry per message, naming its id;
/// - one entry for the whole request whose message id lists every
///   message's id, comma-separated, in order: a Java 5.x proxy forwards a
///   packed request to its broker as one 4.x batch and answers with that
///   batch's single `SendResult` (`MQClientAPIImpl.processSendResponse`
///   joins the ids).
///
/// Anything else (another message's id, an empty id, one entry too many or
/// too few) does not say that these messages were stored.
fn acknowledges(entries: &[pb::SendResultEntry], ids: &[&str]) -> Result<(), String> {
    let per_entry =
        entries.len() == ids.len() && entries.iter().zip(ids).all(|(e, id)| e.message_id == *id);
    let joined = || match entries {
        [one] => one.message_id.split(',').eq(ids.iter().copied()),
        _ => false,
    };
    if per_entry || joined() {
        return Ok(());
    }
    Err(format!(
        "the answer acknowledges {} entries with ids {:?} for the {} message(s) {:?} sent, \
         so it does not say they were stored (a proxy answering another request?); the \
         bridge sends again",
        entries.len(),
        entries
            .iter()
            .map(|e| e.message_id.as_str())
            .collect::<Vec<_>>(),
        ids.len(),
        ids
    ))
}

/// The receipts of an acknowledged packed SendMessage (see [`acknowledges`]
/// for the answers understood); with one joined entry, its offset is the
/// first message's and the others follow.
fn batch_receipts(
    entries: Vec<pb::SendResultEntry>,
    messages: &[OutgoingMessage],
    queue_id: i32,
) -> Result<Vec<SendReceipt>, String> {
    let ids: Vec<&str> = messages.iter().map(|m| m.message_id.as_str()).collect();
    acknowledges(&entries, &ids)?;
    let first_offset = entries.first().map_or(0, |e| e.offset);
    let per_entry = entries.len() == messages.len();
    Ok(messages
        .iter()
        .zip(0..)
        .map(|(m, i)| SendReceipt {
            message_id: m.message_id.clone(),
            transaction_id: None,
            offset: if per_entry {
                entries.get(i as usize).map_or(0, |e| e.offset)
            } else {
                first_offset + i
            },
            queue_id,
        })
        .collect())
}

/// The status that decides a SendMessage of the messages `ids`: the first
/// non-OK entry, else the response status (as the Java client reads it),
/// else whether the entries acknowledge exactly these messages. An absent
/// status is CODE_UNSPECIFIED (as protobuf gives the Java client), which is
/// a failure; so is an answer that names other messages (INTERNAL_ERROR).
/// Always `Some`: `Client::unary` must never take this answer as OK by
/// default.
fn send_status(r: &pb::SendMessageResponse, ids: &[&str]) -> Option<pb::Status> {
    let failure = |code: pb::Code, message: String| {
        Some(pb::Status {
            code: code as i32,
            message,
        })
    };
    let no_status = |what: &str| {
        failure(
            pb::Code::Unspecified,
            format!(
                "{what} carries no status, which does not say the message was stored (a 5.x \
                 proxy always sets one; check the proxy's version); the bridge sends again"
            ),
        )
    };
    for (i, entry) in r.entries.iter().enumerate() {
        match &entry.status {
            None => return no_status(&format!("entry {i} of the answer")),
            Some(st) if super::error::classify(st.code) != super::error::CodeClass::Ok => {
                return Some(st.clone())
            }
            Some(_) => {}
        }
    }
    match &r.status {
        None => return no_status("the answer"),
        Some(st) if super::error::classify(st.code) != super::error::CodeClass::Ok => {
            return Some(st.clone())
        }
        Some(_) => {}
    }
    match acknowledges(&r.entries, ids) {
        Ok(()) => r.status.clone(),
        Err(reason) => failure(pb::Code::InternalError, reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::collections::BTreeMap;

    fn msg(kind: MessageKind) -> OutgoingMessage {
        OutgoingMessage {
            topic: "t".into(),
            message_id: "ID".into(),
            body: Bytes::from_static(b"x"),
            tag: None,
            keys: vec![],
            user_properties: BTreeMap::new(),
            born_timestamp_ms: 0,
            born_host: String::new(),
            kind,
        }
    }

    #[test]
    fn packed_answers_per_entry_or_one_joined_entry() {
        let ids = ["A1", "A2", "A3"];
        let msgs: Vec<OutgoingMessage> = ids
            .iter()
            .map(|id| OutgoingMessage {
                message_id: (*id).into(),
                ..msg(MessageKind::Normal)
            })
            .collect();
        let entry = |id: &str, offset| pb::SendResultEntry {
            message_id: id.into(),
            offset,
            ..Default::default()
        };
        let per_entry = vec![entry("A1", 7), entry("A2", 8), entry("A3", 9)];
        let r = batch_receipts(per_entry, &msgs, 2).expect("one entry per message");
        assert_eq!(r.iter().map(|r| r.offset).collect::<Vec<_>>(), [7, 8, 9]);
        // A Java proxy: one entry, the ids joined by commas.
        let r = batch_receipts(vec![entry("A1,A2,A3", 40)], &msgs, 2).expect("joined ids");
        assert_eq!(
            r.iter()
                .map(|r| (r.message_id.as_str(), r.offset, r.queue_id))
                .collect::<Vec<_>>(),
            [("A1", 40, 2), ("A2", 41, 2), ("A3", 42, 2)]
        );
        for wrong in ["A1,A2", "A1,A3,A2", "A1,A2,A3,A4", "A1"] {
            assert!(
                batch_receipts(vec![entry(wrong, 0)], &msgs, 0).is_err(),
                "{wrong}"
            );
        }
        assert!(batch_receipts(vec![entry("A1", 0), entry("A2", 1)], &msgs, 0).is_err());
    }

    #[test]
    fn only_an_ok_answer_naming_the_messages_is_ok() {
        let ok = || {
            Some(pb::Status {
                code: pb::Code::Ok as i32,
                message: String::new(),
            })
        };
        let entry = |id: &str| pb::SendResultEntry {
            status: ok(),
            message_id: id.into(),
            ..Default::default()
        };
        let code = |r: &pb::SendMessageResponse, ids: &[&str]| {
            send_status(r, ids)
                .map(|s| s.code)
                .expect("always a status")
        };
        let answer = |status, entries| pb::SendMessageResponse { status, entries };
        let good = answer(ok(), vec![entry("A")]);
        assert_eq!(code(&good, &["A"]), pb::Code::Ok as i32);
        let unspecified = pb::Code::Unspecified as i32;
        assert_eq!(code(&answer(None, vec![entry("A")]), &["A"]), unspecified);
        let mut bare = entry("A");
        bare.status = None;
        assert_eq!(code(&answer(ok(), vec![bare]), &["A"]), unspecified);
        let internal = pb::Code::InternalError as i32;
        assert_eq!(code(&good, &["B"]), internal);
        assert_eq!(code(&answer(ok(), vec![entry("")]), &["A"]), internal);
        assert_eq!(code(&answer(ok(), vec![]), &["A"]), internal);
        assert_eq!(
            code(&answer(ok(), vec![entry("A"), entry("A")]), &["A"]),
            internal
        );
        assert_eq!(
            code(&answer(ok(), vec![entry("A,B")]), &["A", "B"]),
            pb::Code::Ok as i32
        );
        // A refusal is reported as such, whatever the entries.
        let refused = answer(
            Some(pb::Status {
                code: pb::Code::TooManyRequests as i32,
                message: "slow down".into(),
            }),
            vec![],
        );
        assert_eq!(code(&refused, &["A"]), pb::Code::TooManyRequests as i32);
    }

    #[test]
    fn validate_checks_type_size_and_properties() {
        use TopicMessageType as T;
        let normal = msg(MessageKind::Normal);
        assert!(validate(&normal, &[T::Normal], 10).is_ok());
        assert!(validate(&normal, &[], 10).is_ok());
        let e = validate(&normal, &[T::Fifo], 10).unwrap_err();
        assert!(matches!(e, PublishError::TypeMismatch { .. }) && e.is_permanent());

        let mut big = normal.clone();
        big.body = Bytes::from(vec![0u8; 11]);
        assert!(matches!(
            validate(&big, &[T::Normal], 10),
            Err(PublishError::BodyTooLarge {
                size: 11,
                max: 10,
                ..
            })
        ));
        let mut empty = normal.clone();
        empty.body = Bytes::new();
        assert!(matches!(
            validate(&empty, &[], 10),
            Err(PublishError::BodyEmpty { .. })
        ));

        let mut reserved = normal.clone();
        reserved
            .user_properties
            .insert("UNIQ_KEY".into(), "x".into());
        let e = validate(&reserved, &[], 10).unwrap_err();
        assert!(e.is_permanent());
        assert_eq!(e.code_label(), "ILLEGAL_MESSAGE_PROPERTY_KEY");

        let mut tag = normal.clone();
        tag.tag = Some("a|b".into());
        assert_eq!(
            validate(&tag, &[], 10).unwrap_err().code_label(),
            "ILLEGAL_MESSAGE_TAG"
        );

        let fifo = msg(MessageKind::Fifo { group: " ".into() });
        assert_eq!(
            validate(&fifo, &[T::Fifo], 10).unwrap_err().code_label(),
            "ILLEGAL_MESSAGE_GROUP"
        );
        let fifo = msg(MessageKind::Fifo {
            group: "g".repeat(64),
        });
        assert!(validate(&fifo, &[T::Fifo], 10).is_err());
        let fifo = msg(MessageKind::Fifo { group: "g".into() });
        assert!(validate(&fifo, &[T::Fifo], 10).is_ok());

        let mut env = normal.clone();
        env.user_properties.insert("gray".into(), "true".into());
        assert!(validate(&env, &[], 10).is_ok());
    }
}
