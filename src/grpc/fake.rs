//! An in-process fake `MessagingService` (a tonic server built from our own
//! proto on 127.0.0.1:0) for tests of the publisher and of the pipeline. It
//! records every request with its metadata and can be scripted to fail,
//! hold sends, or declare topic types. Tests against the real peers live in
//! `tests/`. Routes and the settings answer are the blackhole's
//! (`crate::dev::blackhole`), so the two fakes answer a producer alike.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::metadata::MetadataMap;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use super::client::RetryPolicy;
use super::pb;
use super::pb::messaging_service_server::{MessagingService, MessagingServiceServer};
use super::*;

/// What the fake does with the next SendMessage.
#[derive(Debug, Clone)]
pub(crate) enum Script {
    Grpc(tonic::Code),
    V2(pb::Code),
    /// Accept the send, then spoil the answer this way.
    Mangle(Mangle),
}

/// A non-conforming SendMessage answer (the message is stored all the same).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Mangle {
    /// No top-level status and no entry status.
    NoStatus,
    /// Top-level OK, the entries without status.
    EntryWithoutStatus,
    /// Top-level OK, the entries CODE_UNSPECIFIED.
    EntryUnspecified,
    /// The entries name another message id.
    OtherMessageId,
    /// One entry more than messages sent.
    ExtraEntry,
}

impl Mangle {
    fn apply(self, answer: &mut pb::SendMessageResponse) {
        match self {
            Mangle::NoStatus => {
                answer.status = None;
                answer.entries.iter_mut().for_each(|e| e.status = None);
            }
            Mangle::EntryWithoutStatus => answer.entries.iter_mut().for_each(|e| e.status = None),
            Mangle::EntryUnspecified => answer.entries.iter_mut().for_each(|e| {
                e.status = Some(pb::Status {
                    code: pb::Code::Unspecified as i32,
                    message: String::new(),
                })
            }),
            Mangle::OtherMessageId => answer
                .entries
                .iter_mut()
                .for_each(|e| e.message_id = format!("OTHER-{}", e.message_id)),
            Mangle::ExtraEntry => {
                if let Some(last) = answer.entries.last().cloned() {
                    answer.entries.push(last);
                }
            }
        }
    }
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) calls: Vec<(&'static str, MetadataMap)>,
    pub(crate) sends: Vec<pb::SendMessageRequest>,
    pub(crate) end_transactions: Vec<pb::EndTransactionRequest>,
    pub(crate) heartbeats: Vec<pb::HeartbeatRequest>,
    pub(crate) settings: Vec<pb::Settings>,
    pub(crate) terminations: Vec<MetadataMap>,
    pub(crate) route_queries: usize,
    pub(crate) accept: Vec<pb::MessageType>,
    pub(crate) script: VecDeque<Script>,
    pub(crate) hold: Duration,
    /// EndTransaction answers this gRPC error (the call fails) while set.
    pub(crate) refuse_end_transaction: Option<tonic::Code>,
    /// The open telemetry stream, to push server commands (check-backs).
    pub(crate) telemetry: Option<mpsc::Sender<Result<pb::TelemetryCommand, Status>>>,
    pub(crate) in_flight: HashMap<String, usize>,
    pub(crate) max_in_flight_per_group: usize,
    pub(crate) total_in_flight: usize,
    pub(crate) max_total_in_flight: usize,
    pub(crate) max_body_size: i32,
    /// Sends of these message ids are always answered with this code.
    pub(crate) refuse: HashMap<String, pb::Code>,
    /// Every send is answered with this code.
    pub(crate) refuse_all: Option<pb::Code>,
    /// Sends to these topics are answered with this code.
    pub(crate) refuse_topics: HashMap<String, pb::Code>,
    /// Sends of these message ids are refused this many more times.
    pub(crate) refuse_n: HashMap<String, (pb::Code, usize)>,
    /// Message ids of acknowledged sends, in acknowledgement order.
    pub(crate) acked: Vec<String>,
    pub(crate) offset: i64,
}

#[derive(Clone, Default)]
pub(crate) struct Fake {
    pub(crate) state: Arc<Mutex<State>>,
}

impl Fake {
    pub(crate) fn st(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

// The protocol answers shared with the benchmark blackhole (`dev` feature,
// which every test build has through the crate's dev-dependency on itself).
pub(crate) use crate::dev::blackhole::ok;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl MessagingService for Fake {
    async fn query_route(
        &self,
        request: Request<pb::QueryRouteRequest>,
    ) -> Result<Response<pb::QueryRouteResponse>, Status> {
        let mut st = self.st();
        st.calls.push(("QueryRoute", request.metadata().clone()));
        st.route_queries += 1;
        let req = request.into_inner();
        let queues = crate::dev::blackhole::route_queues(
            &req.topic.unwrap_or_default(),
            req.endpoints,
            &st.accept,
            4,
        );
        Ok(Response::new(pb::QueryRouteResponse {
            status: ok(),
            message_queues: queues,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let mut st = self.st();
        st.calls.push(("Heartbeat", request.metadata().clone()));
        st.heartbeats.push(request.into_inner());
        Ok(Response::new(pb::HeartbeatResponse { status: ok() }))
    }

    async fn send_message(
        &self,
        request: Request<pb::SendMessageRequest>,
    ) -> Result<Response<pb::SendMessageResponse>, Status> {
        let req = request.get_ref().clone();
        let group = req
            .messages
            .first()
            .and_then(|m| m.system_properties.as_ref())
            .and_then(|s| s.message_group.clone())
            .unwrap_or_default();
        let (script, hold) = {
            let mut st = self.st();
            st.calls.push(("SendMessage", request.metadata().clone()));
            st.sends.push(req.clone());
            let n = st.in_flight.entry(group.clone()).or_default();
            *n += 1;
            let n = *n;
            st.max_in_flight_per_group = st.max_in_flight_per_group.max(n);
            st.total_in_flight += 1;
            st.max_total_in_flight = st.max_total_in_flight.max(st.total_in_flight);
            let topic = req
                .messages
                .first()
                .and_then(|m| m.topic.as_ref())
                .map(|t| t.name.clone())
                .unwrap_or_default();
            // A packed request is refused as a whole when any entry is.
            let ids: Vec<String> = req
                .messages
                .iter()
                .filter_map(|m| m.system_properties.as_ref())
                .map(|s| s.message_id.clone())
                .collect();
            let mut counted = None;
            for id in &ids {
                if let Some((code, n)) = st.refuse_n.get_mut(id) {
                    if *n > 0 {
                        *n -= 1;
                        counted = Some(*code);
                    }
                }
            }
            let refused = st
                .refuse_all
                .or_else(|| st.refuse_topics.get(&topic).copied())
                .or(counted)
                .or_else(|| ids.iter().find_map(|id| st.refuse.get(id).copied()));
            let script = match refused {
                Some(code) => Some(Script::V2(code)),
                None => st.script.pop_front(),
            };
            (script, st.hold)
        };
        if !hold.is_zero() {
            tokio::time::sleep(hold).await;
        }
        let mut st = self.st();
        if let Some(n) = st.in_flight.get_mut(&group) {
            *n -= 1;
        }
        st.total_in_flight -= 1;
        match script {
            Some(Script::Grpc(code)) => return Err(Status::new(code, "scripted failure")),
            Some(Script::V2(code)) => {
                return Ok(Response::new(pb::SendMessageResponse {
                    status: Some(pb::Status {
                        code: code as i32,
                        message: format!("scripted {}", code.as_str_name()),
                    }),
                    entries: vec![],
                }))
            }
            Some(Script::Mangle(_)) | None => {}
        }
        let entries = req
            .messages
            .iter()
            .map(|m| {
                st.offset += 1;
                let sys = m.system_properties.clone().unwrap_or_default();
                st.acked.push(sys.message_id.clone());
                pb::SendResultEntry {
                    status: ok(),
                    message_id: sys.message_id.clone(),
                    transaction_id: if sys.message_type == pb::MessageType::Transaction as i32 {
                        format!("tx-{}", sys.message_id)
                    } else {
                        String::new()
                    },
                    offset: st.offset,
                    recall_handle: String::new(),
                }
            })
            .collect();
        let mut answer = pb::SendMessageResponse {
            status: ok(),
            entries,
        };
        if let Some(Script::Mangle(mangle)) = script {
            mangle.apply(&mut answer);
        }
        Ok(Response::new(answer))
    }

    type ReceiveMessageStream = BoxStream<pb::ReceiveMessageResponse>;

    async fn receive_message(
        &self,
        request: Request<pb::ReceiveMessageRequest>,
    ) -> Result<Response<Self::ReceiveMessageStream>, Status> {
        self.st()
            .calls
            .push(("ReceiveMessage", request.metadata().clone()));
        let topic = request
            .get_ref()
            .message_queue
            .as_ref()
            .and_then(|q| q.topic.clone());
        let message = pb::Message {
            topic,
            user_properties: Default::default(),
            system_properties: Some(pb::SystemProperties {
                message_id: "RECEIVED-1".into(),
                receipt_handle: Some("handle-1".into()),
                body_digest: Some(pb::Digest {
                    r#type: pb::DigestType::Crc32 as i32,
                    checksum: "3610A686".into(),
                }),
                ..Default::default()
            }),
            body: bytes::Bytes::from_static(b"hello"),
        };
        let items = vec![
            Ok(pb::ReceiveMessageResponse {
                content: Some(pb::receive_message_response::Content::Message(message)),
            }),
            Ok(pb::ReceiveMessageResponse {
                content: ok().map(pb::receive_message_response::Content::Status),
            }),
        ];
        Ok(Response::new(Box::pin(tokio_stream::iter(items))))
    }

    async fn ack_message(
        &self,
        request: Request<pb::AckMessageRequest>,
    ) -> Result<Response<pb::AckMessageResponse>, Status> {
        self.st()
            .calls
            .push(("AckMessage", request.metadata().clone()));
        Ok(Response::new(pb::AckMessageResponse {
            status: ok(),
            entries: vec![],
        }))
    }

    async fn end_transaction(
        &self,
        request: Request<pb::EndTransactionRequest>,
    ) -> Result<Response<pb::EndTransactionResponse>, Status> {
        let mut st = self.st();
        st.calls
            .push(("EndTransaction", request.metadata().clone()));
        st.end_transactions.push(request.into_inner());
        if let Some(code) = st.refuse_end_transaction {
            return Err(Status::new(code, "scripted EndTransaction failure"));
        }
        Ok(Response::new(pb::EndTransactionResponse { status: ok() }))
    }

    type TelemetryStream = BoxStream<pb::TelemetryCommand>;

    async fn telemetry(
        &self,
        request: Request<tonic::Streaming<pb::TelemetryCommand>>,
    ) -> Result<Response<Self::TelemetryStream>, Status> {
        self.st()
            .calls
            .push(("Telemetry", request.metadata().clone()));
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(8);
        self.st().telemetry = Some(tx.clone());
        let state = Arc::clone(&self.state);
        tokio::spawn(async move {
            while let Some(Ok(cmd)) = inbound.next().await {
                if let Some(pb::telemetry_command::Command::Settings(s)) = cmd.command {
                    let max = {
                        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
                        st.settings.push(s.clone());
                        st.max_body_size
                    };
                    let frame = crate::dev::blackhole::settings_reply(s, max);
                    if tx.send(Ok(frame)).await.is_err() {
                        break;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn notify_client_termination(
        &self,
        request: Request<pb::NotifyClientTerminationRequest>,
    ) -> Result<Response<pb::NotifyClientTerminationResponse>, Status> {
        self.st().terminations.push(request.metadata().clone());
        Ok(Response::new(pb::NotifyClientTerminationResponse {
            status: ok(),
        }))
    }
}

pub(crate) async fn start_fake(fake: Fake) -> SocketAddr {
    start_fake_on(fake, "127.0.0.1:0").await
}

/// Serves `fake` on `addr` (a fixed port: a server that comes up late).
pub(crate) async fn start_fake_on(fake: Fake, addr: &str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let incoming = TcpIncoming::from(listener);
    tokio::spawn(async move {
        // A single service needs no router (tonic's `router` feature is off).
        let _ = tonic::transport::Server::builder()
            .serve_with_incoming(MessagingServiceServer::new(fake), incoming)
            .await;
    });
    addr
}

/// A TCP relay in front of a server, to play a half-open connection: while
/// `forward` is off it accepts connections and never answers nor closes
/// them (a black hole: a lost host, a NAT or load balancer that forgot the
/// flow); while on it relays new connections to the server. `silence()`
/// turns every relayed connection open now into a black hole as well.
pub(crate) struct Relay {
    pub(crate) addr: SocketAddr,
    /// Connections accepted so far.
    pub(crate) accepted: Arc<std::sync::atomic::AtomicUsize>,
    forward: Arc<std::sync::atomic::AtomicBool>,
    silence: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Relay {
    pub(crate) fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub(crate) fn forward(&self, on: bool) {
        self.forward.store(on, std::sync::atomic::Ordering::SeqCst);
    }

    pub(crate) fn silence(&self) {
        self.silence.send_modify(|n| *n += 1);
    }
}

/// Starts a [`Relay`] to `server`, forwarding from the start if `forward`.
pub(crate) async fn start_relay(server: SocketAddr, forward: bool) -> Relay {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let relay = Relay {
        addr: listener.local_addr().expect("local addr"),
        accepted: Arc::new(AtomicUsize::new(0)),
        forward: Arc::new(AtomicBool::new(forward)),
        silence: Arc::new(tokio::sync::watch::channel(0).0),
    };
    let (accepted, forwarding, silence) = (
        Arc::clone(&relay.accepted),
        Arc::clone(&relay.forward),
        Arc::clone(&relay.silence),
    );
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            accepted.fetch_add(1, Ordering::SeqCst);
            let relayed = forwarding.load(Ordering::SeqCst);
            let mut silenced = silence.subscribe();
            tokio::spawn(async move {
                if relayed {
                    let Ok(mut upstream) = tokio::net::TcpStream::connect(server).await else {
                        return;
                    };
                    let went_silent = {
                        let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
                        tokio::select! {
                            _ = copy => false,
                            _ = silenced.changed() => true,
                        }
                    };
                    if !went_silent {
                        return;
                    }
                }
                // Hold the socket open and say nothing, for good.
                std::future::pending::<()>().await;
                drop(client);
            });
        }
    });
    relay
}

pub(crate) fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
    }
}

pub(crate) async fn setup(accept: &[pb::MessageType]) -> (Fake, Publisher, GrpcClientConfig) {
    let fake = Fake::default();
    {
        let mut st = fake.st();
        st.accept = accept.to_vec();
        st.max_body_size = 1024 * 1024;
    }
    let addr = start_fake(fake.clone()).await;
    let mut config = GrpcClientConfig::new(vec![addr.to_string()]);
    config.client_id = "test-host@1@0@abc".into();
    let publisher = Publisher::connect_with(config.clone(), Some(fast_retry()))
        .await
        .expect("connect to fake");
    (fake, publisher, config)
}

pub(crate) fn message(topic: &str, id: &str, kind: MessageKind) -> OutgoingMessage {
    OutgoingMessage {
        topic: topic.into(),
        message_id: id.into(),
        body: Bytes::from_static(b"hello"),
        tag: Some("TagA".into()),
        keys: vec!["k1".into()],
        user_properties: BTreeMap::from([("gray".into(), "true".into())]),
        born_timestamp_ms: 1_700_000_000_123,
        born_host: "10.1.2.3".into(),
        kind,
    }
}

pub(crate) const ALL: [pb::MessageType; 4] = [
    pb::MessageType::Normal,
    pb::MessageType::Fifo,
    pb::MessageType::Delay,
    pb::MessageType::Transaction,
];

pub(crate) fn header<'a>(m: &'a MetadataMap, key: &str) -> &'a str {
    m.get(key).and_then(|v| v.to_str().ok()).unwrap_or("")
}
